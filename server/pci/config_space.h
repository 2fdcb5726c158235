// PciConfigSpace: emulated PCI configuration space of one function.
//
// The device author describes the function with the builder calls (ids,
// BARs, expansion ROM, capabilities); the engine serves the client's
// REGION_READ/WRITE of region 7 with Read()/Write(). Emulation follows the
// hardware rules a guest driver (and QEMU) relies on:
//
//  * Accesses of any width (1/2/4/8 bytes or bulk) and alignment inside the
//    space; anything reaching past its end fails with EINVAL.
//  * Every byte has a write mask (read-only bits keep their value) and an
//    RW1C mask (writing 1 clears). An access spanning registers is applied
//    byte by byte with each byte's masks.
//  * BARs size like hardware: writing all-ones and reading back yields the
//    size mask with the read-only type bits; undeclared BARs read 0.
//  * Command: only implemented bits are writable (I/O / memory space follow
//    the declared BARs, INTx Disable follows the interrupt pin, the rest from
//    SetOptionalCommandBits()). Status: Capabilities List is set when a
//    capability exists, Interrupt Status mirrors SetIntxAsserted(), and the
//    error bits are RW1C.
//  * Capabilities are chained in the order added, from 0x40 (dword aligned,
//    pointer at 0x34); extended capabilities from 0x100 (4 KiB space only;
//    with none, the zero header at 0x100 marks an empty list).
//
// Callbacks (callbacks()) run synchronously at the end of the Write() that
// caused them, after the whole access has been applied, so they may call any
// method, including Write() and Reset(). Reset() and Restore() never invoke
// callbacks: whoever calls them resets / reloads the rest of the device too.
//
// Typical use:
//   PciConfigSpace config(PciConfigSize::kExpress);
//   config.SetIds({.vendor_id = 0x1af4, .device_id = 0x10f0, .class_code = 0xff0000});
//   config.SetInterruptPin(PciIntxPin::kA);
//   // Each Add*() returns a status (or the capability offset): check it.
//   config.AddBar(0, PciBar::Memory32(0x4000));
//   config.AddPowerManagement();
//   const MsixLayout layout = {.table_size = 4, .table_bar = 0, .table_offset = 0x2000,
//                              .pba_bar = 0, .pba_offset = 0x3000};
//   config.AddMsix(layout);  // after the BARs it lives in
//   config.AddPciExpress({.flr = true});
//   MsixTable msix(layout);
//   config.callbacks().msix_control_changed = [&](bool on, bool masked) {
//     msix.SetControl(on, masked);
//   };
//
// Thread-safety: not thread-safe. The device's event-loop thread owns it
// (describe the device before serving it; afterwards only that thread may
// touch it).
#ifndef VFIO_USER_SERVER_PCI_CONFIG_SPACE_H_
#define VFIO_USER_SERVER_PCI_CONFIG_SPACE_H_

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/pci/msix.h"
#include "server/pci/pci_ids.h"

namespace vfio_user {

enum class PciConfigSize : uint32_t {
  kConventional = kPciConfigSpaceSize,     // 256 bytes
  kExpress = kPciExpressConfigSpaceSize,   // 4096 bytes, extended caps at 0x100
};

enum class PciIntxPin : uint8_t { kNone = 0, kA = 1, kB = 2, kC = 3, kD = 4 };

enum class PciPowerState : uint8_t { kD0 = 0, kD3Hot = 3 };

struct PciIds {
  uint16_t vendor_id = 0;
  uint16_t device_id = 0;
  uint16_t subsystem_vendor_id = 0;
  uint16_t subsystem_id = 0;
  uint32_t class_code = 0;  // 24 bits: base class << 16 | sub-class << 8 | prog-if
  uint8_t revision = 0;
  bool multifunction = false;  // header type bit 7
};

enum class PciBarKind : uint8_t { kIo, kMemory32, kMemory64 };

struct PciBar {
  PciBarKind kind = PciBarKind::kMemory32;
  uint64_t size = 0;          // power of two; I/O 4..256, memory >= 16
  bool prefetchable = false;  // memory only

  static PciBar Io(uint32_t size) { return {PciBarKind::kIo, size, false}; }
  static PciBar Memory32(uint32_t size, bool prefetchable = false) {
    return {PciBarKind::kMemory32, size, prefetchable};
  }
  static PciBar Memory64(uint64_t size, bool prefetchable = false) {
    return {PciBarKind::kMemory64, size, prefetchable};
  }
};

struct PciPmOptions {
  // PMCSR No_Soft_Reset: when false, the D3hot -> D0 transition resets the
  // function (config space as Reset(); the device must reset its own state
  // in power_state_changed).
  bool no_soft_reset = true;
};

struct PciMsiOptions {
  uint32_t vectors = 1;          // 1, 2, 4, 8, 16 or 32
  bool address_64 = true;        // 64-bit message address
  bool per_vector_mask = false;  // mask and pending bits
};

enum class PcieDeviceType : uint8_t {
  kEndpoint = kPciExpTypeEndpoint,
  kLegacyEndpoint = kPciExpTypeLegacyEndpoint,
  kRootComplexIntegratedEndpoint = kPciExpTypeRcEndpoint,  // no link registers
};

struct PcieOptions {
  PcieDeviceType type = PcieDeviceType::kEndpoint;
  bool flr = false;                // Function Level Reset capable
  uint32_t max_payload_bytes = 256;  // supported: 128..4096, power of two
  bool extended_tag = false;
  uint8_t link_speed = 1;          // 1 = 2.5 GT/s ... 6 = 64 GT/s
  uint8_t link_width = 1;          // lanes: 1, 2, 4, 8, 12, 16 or 32
};

// Hooks for the device layer; any may be empty.
struct PciConfigCallbacks {
  std::function<void(uint16_t old_command, uint16_t new_command)> command_changed;
  // Any MSI capability register changed (enable, vector count, address,
  // data, mask bits); query MsiEnabled()/MsiMessage()/... for the new state.
  std::function<void()> msi_changed;
  std::function<void(bool enabled, bool function_masked)> msix_control_changed;
  // Runs after the power state changed (and after the soft reset, if any).
  std::function<void(PciPowerState old_state, PciPowerState new_state)> power_state_changed;
  // The guest initiated an FLR. The config space has already been Reset();
  // the callee resets the rest of the function.
  std::function<void()> function_level_reset;
};

class PciConfigSpace {
 public:
  explicit PciConfigSpace(PciConfigSize size = PciConfigSize::kConventional);

  PciConfigSpace(PciConfigSpace&&) = default;
  PciConfigSpace& operator=(PciConfigSpace&&) = default;

  uint32_t size() const { return static_cast<uint32_t>(config_.size()); }
  bool is_express_size() const { return size() == kPciExpressConfigSpaceSize; }
  PciConfigCallbacks& callbacks() { return callbacks_; }

  // ---- Description (before serving) ----
  // Builder calls set power-on values: they take effect now and after Reset().
  void SetIds(const PciIds& ids);  // class_code is truncated to 24 bits
  void SetInterruptPin(PciIntxPin pin);
  // Which of Bus Master, Parity Error Response and SERR# Enable are
  // implemented (writable); default all three. Other bits are ignored.
  void SetOptionalCommandBits(uint16_t bits);
  // Declares BAR `index` (a 64-bit BAR also takes index + 1). EINVAL for a
  // bad index/size/flag or an occupied slot.
  absl::Status AddBar(int index, const PciBar& bar);
  // Expansion ROM: power of two, 2 KiB..16 MiB.
  absl::Status AddRom(uint32_t size);

  // Capabilities; each returns its offset. EINVAL for bad options, ENOSPC
  // when the capability area is full.
  absl::StatusOr<uint16_t> AddPowerManagement(const PciPmOptions& options = {});
  absl::StatusOr<uint16_t> AddMsi(const PciMsiOptions& options);
  // REQUIRES the table and PBA BARs to be declared memory BARs they fit in.
  absl::StatusOr<uint16_t> AddMsix(const MsixLayout& layout);
  absl::StatusOr<uint16_t> AddPciExpress(const PcieOptions& options = {});
  // Generic capability: `body` is everything after the 2-byte id/next
  // header; `write_mask` is empty (read-only) or as long as `body`.
  absl::StatusOr<uint16_t> AddCapability(uint8_t id, absl::Span<const uint8_t> body,
                                         absl::Span<const uint8_t> write_mask = {});
  // Extended capability (4 KiB space only); `body` follows the 4-byte header.
  absl::StatusOr<uint16_t> AddExtendedCapability(uint16_t id, uint8_t version,
                                                 absl::Span<const uint8_t> body,
                                                 absl::Span<const uint8_t> write_mask = {});

  // ---- Client (guest) access: region 7 ----
  absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) const;
  absl::Status Write(uint64_t offset, absl::Span<const uint8_t> data);

  // ---- Device side ----
  // Raw little-endian register access that bypasses the write masks and
  // invokes no callback. Out-of-range accesses read 0 / are ignored.
  // Set*() also exempts the bytes written from Restore()'s check that
  // read-only bits match the power-on image (the device owns them now).
  uint8_t Get8(uint32_t offset) const { return static_cast<uint8_t>(GetRaw(offset, 1)); }
  uint16_t Get16(uint32_t offset) const { return static_cast<uint16_t>(GetRaw(offset, 2)); }
  uint32_t Get32(uint32_t offset) const { return static_cast<uint32_t>(GetRaw(offset, 4)); }
  void Set8(uint32_t offset, uint8_t value) { SetRaw(offset, 1, value); }
  void Set16(uint32_t offset, uint16_t value) { SetRaw(offset, 2, value); }
  void Set32(uint32_t offset, uint32_t value) { SetRaw(offset, 4, value); }

  // Mirrors the INTx line in Status.Interrupt (0x08).
  void SetIntxAsserted(bool asserted);
  bool IntxAsserted() const { return Get16(kPciStatus) & kPciStatusInterrupt; }
  // Records errors in Status (only kPciStatusErrorBits; the guest clears them).
  void RaiseStatusBits(uint16_t error_bits);

  uint16_t command() const { return Get16(kPciCommand); }
  bool BusMasterEnabled() const { return command() & kPciCommandMaster; }
  bool IntxDisabled() const { return command() & kPciCommandIntxDisable; }
  PciIntxPin interrupt_pin() const { return static_cast<PciIntxPin>(Get8(kPciInterruptPin)); }
  // Decode also requires D0: in D3hot a function answers config cycles only.
  bool IoDecodeEnabled() const;
  bool MemoryDecodeEnabled() const;

  // The declared BAR (nullopt for an unused slot or a 64-bit BAR's upper half).
  std::optional<PciBar> bar(int index) const;
  // Current guest-programmed address (for information; 0 if unused).
  uint64_t BarAddress(int index) const;
  bool BarDecodeEnabled(int index) const;  // I/O or memory decode, as its kind
  uint32_t rom_size() const { return rom_size_; }
  uint32_t RomAddress() const { return Get32(kPciRomAddress) & kPciRomAddressMask; }
  bool RomEnabled() const;  // enable bit and memory decode

  // Capability offsets (0 when absent).
  uint16_t pm_offset() const { return pm_; }
  uint16_t msi_offset() const { return msi_; }
  uint16_t msix_offset() const { return msix_; }
  uint16_t pcie_offset() const { return pcie_; }

  PciPowerState power_state() const;

  // MSI (all false/0 without the capability).
  uint32_t msi_vectors() const;          // capable
  bool MsiEnabled() const;
  uint32_t MsiVectorsEnabled() const;    // allocated by the guest (MME)
  // Message for `vector`: the data's low bits carry the vector number.
  PciMsiMessage MsiMessage(uint32_t vector) const;
  bool MsiVectorMasked(uint32_t vector) const;  // per-vector mask bit
  bool MsiPending(uint32_t vector) const;
  void SetMsiPending(uint32_t vector, bool pending);  // needs per-vector masking

  // MSI-X Message Control.
  bool MsixEnabled() const;
  bool MsixFunctionMasked() const;

  // Power-on values: everything the builder calls set, nothing the guest or
  // the device wrote (INTx deasserted, errors and pending bits clear).
  void Reset();

  // Migration: the full register image, validated on Restore() (format,
  // size, read-only bits equal to this function's power-on values, legal
  // power state and MSI vector count). Nothing changes on error (EINVAL).
  std::vector<uint8_t> Snapshot() const;
  absl::Status Restore(absl::Span<const uint8_t> snapshot);

 private:
  // Registers whose writes have side effects, captured before a Write().
  struct WatchedRegisters;

  uint64_t GetRaw(uint32_t offset, int width) const;
  void SetRaw(uint32_t offset, int width, uint64_t value);
  // Current value only; REQUIRES offset + width <= size().
  void Store(uint32_t offset, int width, uint64_t value);
  // Sets a register's power-on and current value and its masks.
  void InitRegister(uint32_t offset, int width, uint64_t value, uint64_t write_mask = 0,
                    uint64_t rw1c_mask = 0);
  void MarkVolatile(uint32_t offset, int width, uint64_t bits);
  void UpdateCommandMask();
  // Reserve `length` bytes (header included) and link them into the list.
  absl::StatusOr<uint16_t> AppendCapability(uint8_t id, size_t length);
  absl::StatusOr<uint16_t> AppendExtendedCapability(uint16_t id, uint8_t version,
                                                    size_t length);
  void FillBody(uint16_t start, absl::Span<const uint8_t> body,
                absl::Span<const uint8_t> write_mask);
  uint16_t MsiRegister(uint16_t reg_32bit_layout) const;
  WatchedRegisters Capture() const;
  void AfterWrite(const WatchedRegisters& before);

  std::vector<uint8_t> config_;      // current register image
  std::vector<uint8_t> power_on_;    // image restored by Reset()
  std::vector<uint8_t> write_mask_;  // guest-writable bits
  std::vector<uint8_t> rw1c_mask_;   // guest write-1-to-clear bits
  std::vector<uint8_t> volatile_;    // read-only bits the device may change
  std::array<std::optional<PciBar>, kPciNumBars> bars_{};
  std::array<bool, kPciNumBars> bar_slot_used_{};
  uint32_t rom_size_ = 0;
  uint16_t optional_command_bits_ = kPciCommandMaster | kPciCommandParity | kPciCommandSerr;
  uint16_t last_cap_ = 0;       // 0: none yet
  uint16_t next_cap_free_ = kPciStdHeaderSize;
  uint16_t last_ext_cap_ = 0;
  uint32_t next_ext_cap_free_ = kPciExtCapStart;
  uint16_t pm_ = 0, msi_ = 0, msix_ = 0, pcie_ = 0;
  bool pm_no_soft_reset_ = true;
  uint32_t msi_vectors_ = 0;
  uint16_t msi_length_ = 0;
  bool msi_64_ = false;
  bool msi_per_vector_mask_ = false;
  PciConfigCallbacks callbacks_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_PCI_CONFIG_SPACE_H_
