#include "server/pci/config_space.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/errno_status.h"
#include "server/pci/le_bytes.h"

namespace vfio_user {
namespace {

using pci_internal::LoadLe;
using pci_internal::StoreLe;

// Snapshot: u32 magic, u16 version, u16 reserved (0), u32 size, image.
constexpr uint32_t kSnapshotMagic = 0x47464350;  // "PCFG"
constexpr uint16_t kSnapshotVersion = 1;
constexpr size_t kSnapshotHeaderSize = 12;

constexpr uint16_t kOptionalCommandBits = kPciCommandMaster | kPciCommandParity | kPciCommandSerr;
constexpr uint16_t kPcieDevStaErrorBits =
    kPciExpDevStaCed | kPciExpDevStaNfed | kPciExpDevStaFed | kPciExpDevStaUrd;
// ASPM Control (1:0), Read Completion Boundary, Common Clock, Extended Synch.
constexpr uint16_t kPcieLinkControlWritable = 0x00cb;

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

int Log2(uint64_t power_of_two) {
  int n = 0;
  while (power_of_two > 1) power_of_two >>= 1, ++n;
  return n;
}

uint32_t AlignUp4(uint32_t x) { return (x + 3) & ~3u; }

PciPowerState PowerStateOf(uint16_t pmcsr) {
  return (pmcsr & kPciPmCtrlStateMask) == 3 ? PciPowerState::kD3Hot : PciPowerState::kD0;
}

bool IsLegalPowerState(uint16_t pmcsr) {
  const uint16_t state = pmcsr & kPciPmCtrlStateMask;
  return state == 0 || state == 3;  // D1 and D2 are not supported
}

// Multiple Message Enable, clamped to Multiple Message Capable.
uint16_t ClampMsiFlags(uint16_t flags) {
  const uint16_t capable = (flags & kPciMsiFlagsQmask) >> 1;
  const uint16_t enabled = (flags & kPciMsiFlagsQsize) >> 4;
  if (enabled <= capable) return flags;
  return (flags & ~kPciMsiFlagsQsize) | capable << 4;
}

absl::Status CheckBounds(uint64_t offset, size_t length, size_t area) {
  if (offset > area || length > area - offset) {
    return ErrnoError(EINVAL, absl::StrFormat("config access [%#x, +%u) outside %u bytes",
                                              offset, length, area));
  }
  return absl::OkStatus();
}

}  // namespace

struct PciConfigSpace::WatchedRegisters {
  uint16_t command = 0;
  uint16_t pmcsr = 0;
  uint16_t msix_control = 0;
  std::array<uint8_t, 24> msi{};  // the MSI capability (msi_length_ bytes)
};

PciConfigSpace::PciConfigSpace(PciConfigSize size)
    : config_(static_cast<size_t>(size)),
      power_on_(config_.size()),
      write_mask_(config_.size()),
      rw1c_mask_(config_.size()),
      volatile_(config_.size()) {
  InitRegister(kPciStatus, 2, 0, 0, kPciStatusErrorBits);
  MarkVolatile(kPciStatus, 2, kPciStatusInterrupt);
  InitRegister(kPciCacheLineSize, 1, 0, 0xff);
  InitRegister(kPciInterruptLine, 1, 0, 0xff);
  UpdateCommandMask();
}

// ---- Register helpers ----

uint64_t PciConfigSpace::GetRaw(uint32_t offset, int width) const {
  if (offset > config_.size() || static_cast<size_t>(width) > config_.size() - offset) return 0;
  return LoadLe(&config_[offset], width);
}

void PciConfigSpace::Store(uint32_t offset, int width, uint64_t value) {
  StoreLe(&config_[offset], width, value);
}

void PciConfigSpace::SetRaw(uint32_t offset, int width, uint64_t value) {
  if (offset > config_.size() || static_cast<size_t>(width) > config_.size() - offset) return;
  Store(offset, width, value);
  MarkVolatile(offset, width, ~uint64_t{0});
}

void PciConfigSpace::InitRegister(uint32_t offset, int width, uint64_t value,
                                  uint64_t write_mask, uint64_t rw1c_mask) {
  StoreLe(&config_[offset], width, value);
  StoreLe(&power_on_[offset], width, value);
  StoreLe(&write_mask_[offset], width, write_mask);
  StoreLe(&rw1c_mask_[offset], width, rw1c_mask);
}

void PciConfigSpace::MarkVolatile(uint32_t offset, int width, uint64_t bits) {
  for (int i = 0; i < width; ++i, bits >>= 8) volatile_[offset + i] |= bits & 0xff;
}

// ---- Description ----

void PciConfigSpace::SetIds(const PciIds& ids) {
  InitRegister(kPciVendorId, 2, ids.vendor_id);
  InitRegister(kPciDeviceId, 2, ids.device_id);
  InitRegister(kPciRevisionId, 1, ids.revision);
  InitRegister(kPciClassProg, 3, ids.class_code & 0xffffff);
  InitRegister(kPciHeaderType, 1,
               ids.multifunction ? kPciHeaderTypeMultifunction : kPciHeaderTypeNormal);
  InitRegister(kPciSubsystemVendorId, 2, ids.subsystem_vendor_id);
  InitRegister(kPciSubsystemId, 2, ids.subsystem_id);
}

void PciConfigSpace::SetInterruptPin(PciIntxPin pin) {
  InitRegister(kPciInterruptPin, 1, static_cast<uint8_t>(pin));
  UpdateCommandMask();
}

void PciConfigSpace::SetOptionalCommandBits(uint16_t bits) {
  optional_command_bits_ = bits & kOptionalCommandBits;
  UpdateCommandMask();
}

void PciConfigSpace::UpdateCommandMask() {
  uint16_t writable = optional_command_bits_;
  for (const auto& bar : bars_) {
    if (bar) writable |= bar->kind == PciBarKind::kIo ? kPciCommandIo : kPciCommandMemory;
  }
  if (rom_size_ != 0) writable |= kPciCommandMemory;
  if (interrupt_pin() != PciIntxPin::kNone) writable |= kPciCommandIntxDisable;
  InitRegister(kPciCommand, 2, 0, writable);
}

absl::Status PciConfigSpace::AddBar(int index, const PciBar& bar) {
  const bool is_io = bar.kind == PciBarKind::kIo;
  const bool is_64 = bar.kind == PciBarKind::kMemory64;
  if (index < 0 || index >= kPciNumBars || (is_64 && index == kPciNumBars - 1)) {
    return ErrnoError(EINVAL, absl::StrFormat("bad BAR index %d", index));
  }
  if (bar_slot_used_[index] || (is_64 && bar_slot_used_[index + 1])) {
    return ErrnoError(EINVAL, absl::StrFormat("BAR %d is already declared", index));
  }
  const uint64_t min_size = is_io ? 4 : 16;
  const uint64_t max_size = is_io ? 256 : is_64 ? uint64_t{1} << 63 : uint64_t{1} << 31;
  if (!IsPowerOfTwo(bar.size) || bar.size < min_size || bar.size > max_size) {
    return ErrnoError(EINVAL, absl::StrFormat("bad size %#x for BAR %d", bar.size, index));
  }
  if (is_io && bar.prefetchable) return ErrnoError(EINVAL, "I/O BARs are not prefetchable");

  const uint32_t type_bits = is_io ? kPciBaseAddressSpaceIo
                                   : (is_64 ? kPciBaseAddressMemType64 : 0) |
                                         (bar.prefetchable ? kPciBaseAddressMemPrefetch : 0);
  const uint64_t type_field = is_io ? ~uint64_t{kPciBaseAddressIoMask} & 0xffffffff
                                    : ~uint64_t{kPciBaseAddressMemMask} & 0xffffffff;
  const uint64_t address_mask = ~(bar.size - 1) & ~type_field;
  InitRegister(PciBarOffset(index), 4, type_bits, address_mask & 0xffffffff);
  if (is_64) InitRegister(PciBarOffset(index + 1), 4, 0, address_mask >> 32);
  bars_[index] = bar;
  bar_slot_used_[index] = true;
  if (is_64) bar_slot_used_[index + 1] = true;
  UpdateCommandMask();
  return absl::OkStatus();
}

absl::Status PciConfigSpace::AddRom(uint32_t size) {
  if (rom_size_ != 0) return ErrnoError(EINVAL, "expansion ROM already declared");
  if (!IsPowerOfTwo(size) || size < 2048 || size > (16u << 20)) {
    return ErrnoError(EINVAL, absl::StrFormat("bad expansion ROM size %#x", size));
  }
  InitRegister(kPciRomAddress, 4, 0, (~(size - 1) & kPciRomAddressMask) | kPciRomAddressEnable);
  rom_size_ = size;
  UpdateCommandMask();
  return absl::OkStatus();
}

// ---- Capabilities ----

absl::StatusOr<uint16_t> PciConfigSpace::AppendCapability(uint8_t id, size_t length) {
  const uint16_t start = next_cap_free_;
  if (start + length > kPciConfigSpaceSize) {
    return ErrnoError(ENOSPC, absl::StrFormat("no room for capability %#x", id));
  }
  InitRegister(start + kPciCapListId, 1, id);
  InitRegister(start + kPciCapListNext, 1, 0);
  InitRegister(last_cap_ ? last_cap_ + kPciCapListNext : kPciCapabilityList, 1, start);
  config_[kPciStatus] |= kPciStatusCapList;
  power_on_[kPciStatus] |= kPciStatusCapList;
  last_cap_ = start;
  next_cap_free_ = AlignUp4(start + length);
  return start;
}

absl::StatusOr<uint16_t> PciConfigSpace::AppendExtendedCapability(uint16_t id, uint8_t version,
                                                                  size_t length) {
  if (!is_express_size()) {
    return ErrnoError(EINVAL, "extended capabilities need the 4 KiB config space");
  }
  if (version > 0xf) return ErrnoError(EINVAL, "extended capability version is 4 bits");
  const uint32_t start = next_ext_cap_free_;
  if (start + length > kPciExpressConfigSpaceSize) {
    return ErrnoError(ENOSPC, absl::StrFormat("no room for extended capability %#x", id));
  }
  InitRegister(start, 4, PciExtCapHeader(id, version, 0));
  if (last_ext_cap_ != 0) {
    const uint32_t last = LoadLe(&power_on_[last_ext_cap_], 4);
    InitRegister(last_ext_cap_, 4,
                 PciExtCapHeader(PciExtCapId(last), PciExtCapVersion(last), start));
  }
  last_ext_cap_ = start;
  next_ext_cap_free_ = AlignUp4(start + length);
  return static_cast<uint16_t>(start);
}

void PciConfigSpace::FillBody(uint16_t start, absl::Span<const uint8_t> body,
                              absl::Span<const uint8_t> write_mask) {
  for (size_t i = 0; i < body.size(); ++i) {
    InitRegister(start + i, 1, body[i], write_mask.empty() ? 0 : write_mask[i]);
  }
}

absl::StatusOr<uint16_t> PciConfigSpace::AddCapability(uint8_t id, absl::Span<const uint8_t> body,
                                                       absl::Span<const uint8_t> write_mask) {
  if (!write_mask.empty() && write_mask.size() != body.size()) {
    return ErrnoError(EINVAL, "capability write mask must match the body length");
  }
  auto start = AppendCapability(id, 2 + body.size());
  if (start.ok()) FillBody(*start + 2, body, write_mask);
  return start;
}

absl::StatusOr<uint16_t> PciConfigSpace::AddExtendedCapability(
    uint16_t id, uint8_t version, absl::Span<const uint8_t> body,
    absl::Span<const uint8_t> write_mask) {
  if (!write_mask.empty() && write_mask.size() != body.size()) {
    return ErrnoError(EINVAL, "capability write mask must match the body length");
  }
  auto start = AppendExtendedCapability(id, version, 4 + body.size());
  if (start.ok()) FillBody(*start + 4, body, write_mask);
  return start;
}

absl::StatusOr<uint16_t> PciConfigSpace::AddPowerManagement(const PciPmOptions& options) {
  if (pm_ != 0) return ErrnoError(EINVAL, "power management capability already added");
  auto start = AppendCapability(kPciCapIdPm, kPciPmSizeof);
  if (!start.ok()) return start;
  pm_ = *start;
  pm_no_soft_reset_ = options.no_soft_reset;
  InitRegister(pm_ + kPciPmPmc, 2, 3);  // version 3 (PM 1.2); no D1/D2, no PME
  InitRegister(pm_ + kPciPmCtrl, 2, options.no_soft_reset ? kPciPmCtrlNoSoftReset : 0,
               kPciPmCtrlStateMask);
  return start;
}

uint16_t PciConfigSpace::MsiRegister(uint16_t reg_32bit_layout) const {
  // Registers from the data register on move down 4 bytes with a 64-bit address.
  return msi_ + reg_32bit_layout + (msi_64_ && reg_32bit_layout >= kPciMsiData32 ? 4 : 0);
}

absl::StatusOr<uint16_t> PciConfigSpace::AddMsi(const PciMsiOptions& options) {
  if (msi_ != 0) return ErrnoError(EINVAL, "MSI capability already added");
  if (!IsPowerOfTwo(options.vectors) || options.vectors > 32) {
    return ErrnoError(EINVAL, "MSI vectors must be 1, 2, 4, 8, 16 or 32");
  }
  const uint16_t length = options.per_vector_mask ? (options.address_64 ? 24 : 20)
                                                  : (options.address_64 ? 14 : 10);
  auto start = AppendCapability(kPciCapIdMsi, length);
  if (!start.ok()) return start;
  msi_ = *start;
  msi_length_ = length;
  msi_vectors_ = options.vectors;
  msi_64_ = options.address_64;
  msi_per_vector_mask_ = options.per_vector_mask;
  const uint16_t flags = Log2(options.vectors) << 1 |
                         (options.address_64 ? kPciMsiFlags64Bit : 0) |
                         (options.per_vector_mask ? kPciMsiFlagsMaskBit : 0);
  InitRegister(msi_ + kPciMsiFlags, 2, flags, kPciMsiFlagsEnable | kPciMsiFlagsQsize);
  InitRegister(msi_ + kPciMsiAddressLo, 4, 0, 0xfffffffc);
  if (msi_64_) InitRegister(msi_ + kPciMsiAddressHi, 4, 0, 0xffffffff);
  InitRegister(MsiRegister(kPciMsiData32), 2, 0, 0xffff);
  if (msi_per_vector_mask_) {
    const uint32_t vector_bits = options.vectors == 32 ? ~0u : (1u << options.vectors) - 1;
    InitRegister(MsiRegister(kPciMsiMask32), 4, 0, vector_bits);
    InitRegister(MsiRegister(kPciMsiPending32), 4, 0);
    MarkVolatile(MsiRegister(kPciMsiPending32), 4, vector_bits);
  }
  return start;
}

absl::StatusOr<uint16_t> PciConfigSpace::AddMsix(const MsixLayout& layout) {
  if (msix_ != 0) return ErrnoError(EINVAL, "MSI-X capability already added");
  if (auto status = ValidateMsixLayout(layout); !status.ok()) return status;
  auto fits = [&](int index, uint64_t offset, uint64_t bytes) {
    const auto& b = bars_[index];
    return b && b->kind != PciBarKind::kIo && offset <= b->size && bytes <= b->size - offset;
  };
  if (!fits(layout.table_bar, layout.table_offset, layout.table_bytes()) ||
      !fits(layout.pba_bar, layout.pba_offset, layout.pba_bytes())) {
    return ErrnoError(EINVAL, "MSI-X table and PBA must fit in declared memory BARs");
  }
  auto start = AppendCapability(kPciCapIdMsix, kPciMsixSizeof);
  if (!start.ok()) return start;
  msix_ = *start;
  InitRegister(msix_ + kPciMsixFlags, 2, layout.table_size - 1,
               kPciMsixFlagsEnable | kPciMsixFlagsMaskAll);
  InitRegister(msix_ + kPciMsixTable, 4, layout.table_offset | layout.table_bar);
  InitRegister(msix_ + kPciMsixPba, 4, layout.pba_offset | layout.pba_bar);
  return start;
}

absl::StatusOr<uint16_t> PciConfigSpace::AddPciExpress(const PcieOptions& options) {
  if (pcie_ != 0) return ErrnoError(EINVAL, "PCI Express capability already added");
  const uint32_t payload = options.max_payload_bytes;
  if (!IsPowerOfTwo(payload) || payload < 128 || payload > 4096) {
    return ErrnoError(EINVAL, "max payload must be a power of two in 128..4096");
  }
  if (options.link_speed < 1 || options.link_speed > 6) {
    return ErrnoError(EINVAL, "link speed must be 1..6");
  }
  switch (options.link_width) {
    case 1: case 2: case 4: case 8: case 12: case 16: case 32: break;
    default: return ErrnoError(EINVAL, "link width must be 1, 2, 4, 8, 12, 16 or 32");
  }
  switch (options.type) {
    case PcieDeviceType::kEndpoint: case PcieDeviceType::kLegacyEndpoint:
    case PcieDeviceType::kRootComplexIntegratedEndpoint: break;
    default: return ErrnoError(EINVAL, "unsupported PCIe device/port type");
  }
  auto start = AppendCapability(kPciCapIdExp, kPciExpSizeofV2);
  if (!start.ok()) return start;
  pcie_ = *start;
  const uint8_t type = static_cast<uint8_t>(options.type);
  InitRegister(pcie_ + kPciExpFlags, 2, 2 | type << kPciExpFlagsTypeShift);  // version 2
  InitRegister(pcie_ + kPciExpDevCap, 4,
               Log2(payload / 128) | (options.extended_tag ? kPciExpDevCapExtTag : 0) |
                   kPciExpDevCapRoleBasedError | (options.flr ? kPciExpDevCapFlr : 0));
  const uint16_t devctl_writable =
      kPciExpDevCtlCere | kPciExpDevCtlNfere | kPciExpDevCtlFere | kPciExpDevCtlUrre |
      kPciExpDevCtlRelaxEn | kPciExpDevCtlPayloadMask | kPciExpDevCtlNoSnoopEn |
      kPciExpDevCtlReadrqMask | (options.extended_tag ? kPciExpDevCtlExtTag : 0) |
      (options.flr ? kPciExpDevCtlBcrFlr : 0);
  InitRegister(pcie_ + kPciExpDevCtl, 2,
               kPciExpDevCtlRelaxEn | kPciExpDevCtlNoSnoopEn | kPciExpDevCtlReadrq512,
               devctl_writable);
  InitRegister(pcie_ + kPciExpDevSta, 2, 0, 0, kPcieDevStaErrorBits);
  MarkVolatile(pcie_ + kPciExpDevSta, 2, kPciExpDevStaTransPending);
  if (options.type != PcieDeviceType::kRootComplexIntegratedEndpoint) {
    const uint32_t link = options.link_speed | uint32_t{options.link_width} << 4;
    InitRegister(pcie_ + kPciExpLnkCap, 4, link);
    InitRegister(pcie_ + kPciExpLnkCtl, 2, 0, kPcieLinkControlWritable);
    InitRegister(pcie_ + kPciExpLnkSta, 2, link | kPciExpLnkStaSlotClock);
    InitRegister(pcie_ + kPciExpLnkCap2, 4, ((1u << options.link_speed) - 1) << 1);
    InitRegister(pcie_ + kPciExpLnkCtl2, 2, options.link_speed);
  }
  return start;
}

// ---- Guest access ----

absl::Status PciConfigSpace::Read(uint64_t offset, absl::Span<uint8_t> out) const {
  if (auto status = CheckBounds(offset, out.size(), config_.size()); !status.ok()) return status;
  if (!out.empty()) std::memcpy(out.data(), &config_[offset], out.size());
  return absl::OkStatus();
}

absl::Status PciConfigSpace::Write(uint64_t offset, absl::Span<const uint8_t> data) {
  if (auto status = CheckBounds(offset, data.size(), config_.size()); !status.ok()) return status;
  const WatchedRegisters before = Capture();
  for (size_t i = 0; i < data.size(); ++i) {
    const size_t at = offset + i;
    const uint8_t kept = config_[at] & ~write_mask_[at];
    config_[at] = (kept | (data[i] & write_mask_[at])) & ~(data[i] & rw1c_mask_[at]);
  }
  AfterWrite(before);
  return absl::OkStatus();
}

PciConfigSpace::WatchedRegisters PciConfigSpace::Capture() const {
  WatchedRegisters r;
  r.command = command();
  if (pm_) r.pmcsr = Get16(pm_ + kPciPmCtrl);
  if (msix_) r.msix_control = Get16(msix_ + kPciMsixFlags);
  if (msi_) std::copy_n(&config_[msi_], msi_length_, r.msi.begin());
  return r;
}

void PciConfigSpace::AfterWrite(const WatchedRegisters& before) {
  // Keep registers legal: the write completes but illegal values are dropped.
  if (msi_) Store(msi_ + kPciMsiFlags, 2, ClampMsiFlags(Get16(msi_ + kPciMsiFlags)));
  if (pm_ && !IsLegalPowerState(Get16(pm_ + kPciPmCtrl))) {
    Store(pm_ + kPciPmCtrl, 2,
          (Get16(pm_ + kPciPmCtrl) & ~kPciPmCtrlStateMask) | (before.pmcsr & kPciPmCtrlStateMask));
  }
  bool flr = false;
  if (pcie_ && (Get16(pcie_ + kPciExpDevCtl) & kPciExpDevCtlBcrFlr)) {
    Store(pcie_ + kPciExpDevCtl, 2, Get16(pcie_ + kPciExpDevCtl) & ~kPciExpDevCtlBcrFlr);
    flr = true;  // Initiate FLR always reads 0
  }

  // Decide every notification before running any callback (they may reenter).
  const WatchedRegisters after = Capture();
  const PciPowerState old_state = PowerStateOf(before.pmcsr);
  const PciPowerState new_state = PowerStateOf(after.pmcsr);
  const bool soft_reset = old_state == PciPowerState::kD3Hot &&
                          new_state == PciPowerState::kD0 && !pm_no_soft_reset_;
  const auto& cb = callbacks_;
  if (before.command != after.command && cb.command_changed) {
    cb.command_changed(before.command, after.command);
  }
  if (before.msi != after.msi && cb.msi_changed) cb.msi_changed();
  if (before.msix_control != after.msix_control && cb.msix_control_changed) {
    cb.msix_control_changed(after.msix_control & kPciMsixFlagsEnable,
                            after.msix_control & kPciMsixFlagsMaskAll);
  }
  if (old_state != new_state) {
    if (soft_reset) Reset();
    if (cb.power_state_changed) cb.power_state_changed(old_state, new_state);
  }
  if (flr) {
    Reset();
    if (cb.function_level_reset) cb.function_level_reset();
  }
}

// ---- Device side ----

void PciConfigSpace::SetIntxAsserted(bool asserted) {
  const uint16_t status = Get16(kPciStatus);
  Store(kPciStatus, 2,
        asserted ? status | kPciStatusInterrupt : status & ~kPciStatusInterrupt);
}

void PciConfigSpace::RaiseStatusBits(uint16_t error_bits) {
  Store(kPciStatus, 2, Get16(kPciStatus) | (error_bits & kPciStatusErrorBits));
}

PciPowerState PciConfigSpace::power_state() const {
  return pm_ ? PowerStateOf(Get16(pm_ + kPciPmCtrl)) : PciPowerState::kD0;
}

bool PciConfigSpace::IoDecodeEnabled() const {
  return (command() & kPciCommandIo) && power_state() == PciPowerState::kD0;
}

bool PciConfigSpace::MemoryDecodeEnabled() const {
  return (command() & kPciCommandMemory) && power_state() == PciPowerState::kD0;
}

std::optional<PciBar> PciConfigSpace::bar(int index) const {
  if (index < 0 || index >= kPciNumBars) return std::nullopt;
  return bars_[index];
}

uint64_t PciConfigSpace::BarAddress(int index) const {
  const std::optional<PciBar> b = bar(index);
  if (!b) return 0;
  const uint32_t low = Get32(PciBarOffset(index));
  switch (b->kind) {
    case PciBarKind::kIo: return low & kPciBaseAddressIoMask;
    case PciBarKind::kMemory32: return low & kPciBaseAddressMemMask;
    case PciBarKind::kMemory64:
      return (low & kPciBaseAddressMemMask) | uint64_t{Get32(PciBarOffset(index + 1))} << 32;
  }
  return 0;
}

bool PciConfigSpace::BarDecodeEnabled(int index) const {
  const std::optional<PciBar> b = bar(index);
  if (!b) return false;
  return b->kind == PciBarKind::kIo ? IoDecodeEnabled() : MemoryDecodeEnabled();
}

bool PciConfigSpace::RomEnabled() const {
  return rom_size_ != 0 && (Get32(kPciRomAddress) & kPciRomAddressEnable) &&
         MemoryDecodeEnabled();
}

uint32_t PciConfigSpace::msi_vectors() const { return msi_vectors_; }

bool PciConfigSpace::MsiEnabled() const {
  return msi_ && (Get16(msi_ + kPciMsiFlags) & kPciMsiFlagsEnable);
}

uint32_t PciConfigSpace::MsiVectorsEnabled() const {
  return msi_ ? 1u << ((Get16(msi_ + kPciMsiFlags) & kPciMsiFlagsQsize) >> 4) : 0;
}

PciMsiMessage PciConfigSpace::MsiMessage(uint32_t vector) const {
  if (!msi_) return {};
  PciMsiMessage message;
  message.address = Get32(msi_ + kPciMsiAddressLo);
  if (msi_64_) message.address |= uint64_t{Get32(msi_ + kPciMsiAddressHi)} << 32;
  const uint32_t low_bits = MsiVectorsEnabled() - 1;  // the function sets these
  message.data = (Get16(MsiRegister(kPciMsiData32)) & ~low_bits) | (vector & low_bits);
  return message;
}

bool PciConfigSpace::MsiVectorMasked(uint32_t vector) const {
  return msi_per_vector_mask_ && vector < msi_vectors_ &&
         (Get32(MsiRegister(kPciMsiMask32)) >> vector & 1);
}

bool PciConfigSpace::MsiPending(uint32_t vector) const {
  return msi_per_vector_mask_ && vector < msi_vectors_ &&
         (Get32(MsiRegister(kPciMsiPending32)) >> vector & 1);
}

void PciConfigSpace::SetMsiPending(uint32_t vector, bool pending) {
  if (!msi_per_vector_mask_ || vector >= msi_vectors_) return;
  const uint16_t reg = MsiRegister(kPciMsiPending32);
  const uint32_t bit = 1u << vector;
  Store(reg, 4, pending ? Get32(reg) | bit : Get32(reg) & ~bit);
}

bool PciConfigSpace::MsixEnabled() const {
  return msix_ && (Get16(msix_ + kPciMsixFlags) & kPciMsixFlagsEnable);
}

bool PciConfigSpace::MsixFunctionMasked() const {
  return msix_ && (Get16(msix_ + kPciMsixFlags) & kPciMsixFlagsMaskAll);
}

// ---- Reset and migration ----

void PciConfigSpace::Reset() { config_ = power_on_; }

std::vector<uint8_t> PciConfigSpace::Snapshot() const {
  std::vector<uint8_t> out(kSnapshotHeaderSize);
  StoreLe(&out[0], 4, kSnapshotMagic);
  StoreLe(&out[4], 2, kSnapshotVersion);
  StoreLe(&out[8], 4, size());
  out.insert(out.end(), config_.begin(), config_.end());
  return out;
}

absl::Status PciConfigSpace::Restore(absl::Span<const uint8_t> snapshot) {
  if (snapshot.size() != kSnapshotHeaderSize + config_.size() ||
      LoadLe(&snapshot[0], 4) != kSnapshotMagic ||
      LoadLe(&snapshot[4], 2) != kSnapshotVersion || LoadLe(&snapshot[6], 2) != 0 ||
      LoadLe(&snapshot[8], 4) != size()) {
    return ErrnoError(EINVAL, "config space snapshot does not match this function");
  }
  const absl::Span<const uint8_t> image = snapshot.subspan(kSnapshotHeaderSize);
  for (size_t i = 0; i < image.size(); ++i) {
    const uint8_t fixed = ~(write_mask_[i] | rw1c_mask_[i] | volatile_[i]);
    if ((image[i] ^ power_on_[i]) & fixed) {
      return ErrnoError(EINVAL, absl::StrFormat("snapshot changes read-only bits at %#x", i));
    }
  }
  auto load16 = [&](uint32_t offset) { return static_cast<uint16_t>(LoadLe(&image[offset], 2)); };
  if ((pm_ && !IsLegalPowerState(load16(pm_ + kPciPmCtrl))) ||
      (msi_ && ClampMsiFlags(load16(msi_ + kPciMsiFlags)) != load16(msi_ + kPciMsiFlags)) ||
      (pcie_ && (load16(pcie_ + kPciExpDevCtl) & kPciExpDevCtlBcrFlr))) {
    return ErrnoError(EINVAL, "snapshot holds illegal register values");
  }
  config_.assign(image.begin(), image.end());
  return absl::OkStatus();
}

}  // namespace vfio_user
