#include "client/pci_config.h"

#include <cerrno>
#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/errno_status.h"

namespace vfio_user {
namespace {

// Register offsets and bits used here (PCI 3.0 / PM 1.2 / PCIe Base).
constexpr uint32_t kHeaderSize = 0x40;
constexpr uint32_t kConventionalSize = 0x100;
constexpr uint32_t kExtCapStart = 0x100;
constexpr uint32_t kCommand = 0x04;
constexpr uint32_t kStatus = 0x06;
constexpr uint32_t kBar0 = 0x10;
constexpr uint32_t kCapPointer = 0x34;
constexpr uint16_t kCommandIo = 0x1;
constexpr uint16_t kCommandMemory = 0x2;
constexpr uint16_t kStatusCapList = 0x10;
constexpr uint8_t kCapPm = 0x01;
constexpr uint8_t kCapMsi = 0x05;
constexpr uint8_t kCapVendor = 0x09;
constexpr uint8_t kCapExp = 0x10;
constexpr uint8_t kCapMsix = 0x11;
// At most this many capabilities are walked (48 fit in 192 bytes).
constexpr int kMaxCaps = 48;
constexpr int kMaxExtCaps = 960;  // 3840 bytes / 4

// Bounds-checked little-endian reads from the config bytes.
class ConfigReader {
 public:
  explicit ConfigReader(absl::Span<const uint8_t> bytes) : bytes_(bytes) {}
  bool Has(uint32_t offset, uint32_t width) const {
    return offset <= bytes_.size() && width <= bytes_.size() - offset;
  }
  uint32_t Get(uint32_t offset, uint32_t width) const {
    if (!Has(offset, width)) return 0;
    uint32_t v = 0;
    for (uint32_t i = width; i-- > 0;) v = (v << 8) | bytes_[offset + i];
    return v;
  }
  uint8_t U8(uint32_t o) const { return static_cast<uint8_t>(Get(o, 1)); }
  uint16_t U16(uint32_t o) const { return static_cast<uint16_t>(Get(o, 2)); }
  uint32_t U32(uint32_t o) const { return Get(o, 4); }
  size_t size() const { return bytes_.size(); }

 private:
  absl::Span<const uint8_t> bytes_;
};

std::string Hex(uint64_t v) { return absl::StrCat("0x", absl::Hex(v)); }

std::string YesNo(bool b) { return b ? "yes" : "no"; }

void DecodePm(const ConfigReader& r, uint32_t at, PciCapability* cap) {
  const uint16_t pmc = r.U16(at + 2);
  const uint16_t pmcsr = r.U16(at + 4);
  static const char* const kStates[] = {"D0", "D1", "D2", "D3hot"};
  cap->fields = {
      {"version", absl::StrCat(pmc & 0x7)},
      {"d1_support", YesNo(pmc & 0x200)},
      {"d2_support", YesNo(pmc & 0x400)},
      {"pme_support", Hex((pmc >> 11) & 0x1f)},
      {"power_state", kStates[pmcsr & 0x3]},
      {"no_soft_reset", YesNo(pmcsr & 0x8)},
  };
}

void DecodeMsi(const ConfigReader& r, uint32_t at, PciCapability* cap) {
  const uint16_t control = r.U16(at + 2);
  const bool is64 = (control & 0x80) != 0;
  const bool masking = (control & 0x100) != 0;
  uint64_t address = r.U32(at + 4);
  if (is64) address |= uint64_t{r.U32(at + 8)} << 32;
  const uint32_t data_at = at + (is64 ? 12 : 8);
  cap->fields = {
      {"enabled", YesNo(control & 0x1)},
      {"vectors_capable", absl::StrCat(1u << ((control >> 1) & 0x7))},
      {"vectors_enabled", absl::StrCat(1u << ((control >> 4) & 0x7))},
      {"64bit", YesNo(is64)},
      {"per_vector_masking", YesNo(masking)},
      {"address", Hex(address)},
      {"data", Hex(r.U16(data_at))},
  };
  if (masking) {
    cap->fields.push_back({"mask", Hex(r.U32(data_at + 4))});
    cap->fields.push_back({"pending", Hex(r.U32(data_at + 8))});
  }
}

void DecodeMsix(const ConfigReader& r, uint32_t at, PciCapability* cap) {
  const uint16_t control = r.U16(at + 2);
  const uint32_t table = r.U32(at + 4);
  const uint32_t pba = r.U32(at + 8);
  cap->fields = {
      {"enabled", YesNo(control & 0x8000)},
      {"function_mask", YesNo(control & 0x4000)},
      {"table_size", absl::StrCat((control & 0x7ff) + 1)},
      {"table", absl::StrCat("BAR", table & 0x7, " + ", Hex(table & ~7u))},
      {"pba", absl::StrCat("BAR", pba & 0x7, " + ", Hex(pba & ~7u))},
  };
}

std::string PcieTypeName(uint32_t type) {
  switch (type) {
    case 0: return "Endpoint";
    case 1: return "Legacy Endpoint";
    case 4: return "Root Port";
    case 5: return "Upstream Port";
    case 6: return "Downstream Port";
    case 7: return "PCIe to PCI/PCI-X Bridge";
    case 8: return "PCI/PCI-X to PCIe Bridge";
    case 9: return "Root Complex Integrated Endpoint";
    case 10: return "Root Complex Event Collector";
  }
  return absl::StrCat("type ", type);
}

std::string LinkSpeed(uint32_t code) {
  static const char* const kSpeeds[] = {"?",       "2.5GT/s", "5GT/s", "8GT/s",
                                        "16GT/s", "32GT/s",  "64GT/s"};
  return code < 7 ? kSpeeds[code] : absl::StrCat("speed ", code);
}

void DecodePcie(const ConfigReader& r, uint32_t at, PciCapability* cap) {
  const uint16_t caps = r.U16(at + 2);
  const uint32_t devcap = r.U32(at + 4);
  const uint16_t devctl = r.U16(at + 8);
  const uint32_t lnkcap = r.U32(at + 12);
  const uint16_t lnksta = r.U16(at + 18);
  cap->fields = {
      {"version", absl::StrCat(caps & 0xf)},
      {"type", PcieTypeName((caps >> 4) & 0xf)},
      {"max_payload_supported", absl::StrCat(128u << (devcap & 0x7))},
      {"max_payload", absl::StrCat(128u << ((devctl >> 5) & 0x7))},
      {"max_read_request", absl::StrCat(128u << ((devctl >> 12) & 0x7))},
      {"flr", YesNo(devcap & (1u << 28))},
      {"link_capable", absl::StrCat(LinkSpeed(lnkcap & 0xf), " x",
                                    (lnkcap >> 4) & 0x3f)},
      {"link_status", absl::StrCat(LinkSpeed(lnksta & 0xf), " x",
                                   (lnksta >> 4) & 0x3f)},
  };
}

void WalkStandard(const ConfigReader& r, PciConfig* config) {
  if ((config->status & kStatusCapList) == 0) return;
  const uint32_t limit = std::min<size_t>(r.size(), kConventionalSize);
  std::set<uint32_t> visited;
  uint32_t at = r.U8(kCapPointer) & 0xfc;
  for (int n = 0; at != 0; ++n) {
    if (n == kMaxCaps) {
      config->problems.push_back("capability list too long; walk stopped");
      return;
    }
    if (at < kHeaderSize || at + 2 > limit) {
      config->problems.push_back(absl::StrCat(
          "capability pointer ", Hex(at), " is outside ", Hex(kHeaderSize),
          "..", Hex(limit - 1)));
      return;
    }
    if (!visited.insert(at).second) {
      config->problems.push_back(
          absl::StrCat("capability list loops back to ", Hex(at)));
      return;
    }
    PciCapability cap;
    cap.offset = static_cast<uint16_t>(at);
    cap.id = r.U8(at);
    cap.name = PciCapabilityName(cap.id, false);
    switch (cap.id) {
      case kCapPm: DecodePm(r, at, &cap); break;
      case kCapMsi: DecodeMsi(r, at, &cap); break;
      case kCapMsix: DecodeMsix(r, at, &cap); break;
      case kCapExp: DecodePcie(r, at, &cap); break;
      case kCapVendor:
        cap.fields = {{"length", absl::StrCat(r.U8(at + 2))}};
        break;
    }
    config->capabilities.push_back(std::move(cap));
    at = r.U8(at + 1) & 0xfc;
  }
}

void WalkExtended(const ConfigReader& r, PciConfig* config) {
  if (r.size() <= kExtCapStart) return;
  const uint32_t first = r.U32(kExtCapStart);
  if (first == 0 || first == 0xffffffff) return;
  std::set<uint32_t> visited;
  uint32_t at = kExtCapStart;
  for (int n = 0; at != 0; ++n) {
    if (n == kMaxExtCaps) {
      config->problems.push_back("extended capability list too long");
      return;
    }
    if (at < kExtCapStart || !r.Has(at, 4)) {
      config->problems.push_back(absl::StrCat(
          "extended capability pointer ", Hex(at), " is out of range"));
      return;
    }
    if (!visited.insert(at).second) {
      config->problems.push_back(
          absl::StrCat("extended capability list loops back to ", Hex(at)));
      return;
    }
    const uint32_t header = r.U32(at);
    PciCapability cap;
    cap.offset = static_cast<uint16_t>(at);
    cap.id = static_cast<uint16_t>(header & 0xffff);
    cap.extended = true;
    cap.version = static_cast<uint8_t>((header >> 16) & 0xf);
    cap.name = PciCapabilityName(cap.id, true);
    config->capabilities.push_back(std::move(cap));
    at = (header >> 20) & 0xffc;
  }
}

}  // namespace

absl::StatusOr<PciConfig> DecodePciConfig(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < kHeaderSize) {
    return ErrnoError(EINVAL, absl::StrCat("config space of ", bytes.size(),
                                           " bytes; need at least 64"));
  }
  const ConfigReader r(bytes);
  PciConfig c;
  c.vendor_id = r.U16(0x00);
  c.device_id = r.U16(0x02);
  c.command = r.U16(kCommand);
  c.status = r.U16(kStatus);
  c.revision = r.U8(0x08);
  c.class_code = r.U32(0x08) >> 8;
  c.header_type = r.U8(0x0e);
  if ((c.header_type & 0x7f) == 0) {
    c.subsystem_vendor_id = r.U16(0x2c);
    c.subsystem_id = r.U16(0x2e);
  }
  c.interrupt_line = r.U8(0x3c);
  c.interrupt_pin = r.U8(0x3d);
  WalkStandard(r, &c);
  WalkExtended(r, &c);
  return c;
}

absl::StatusOr<std::vector<SizedPciBar>> SizePciBars(const PciConfigAccess& access,
                                                int bar_count) {
  absl::StatusOr<uint32_t> command = access.read(kCommand, 2);
  if (!command.ok()) return command.status();
  const uint16_t decode = kCommandIo | kCommandMemory;
  absl::Status first_error;
  auto note = [&first_error](const absl::Status& s) {
    if (first_error.ok() && !s.ok()) first_error = s;
    return s.ok();
  };
  if (*command & decode) note(access.write(kCommand, 2, *command & ~decode));

  // Writes all-ones to the BAR at `offset`, returns what reads back and
  // restores the original value.
  auto probe = [&](uint32_t offset, uint32_t original) -> uint32_t {
    uint32_t mask = 0;
    if (note(access.write(offset, 4, 0xffffffff))) {
      absl::StatusOr<uint32_t> readback = access.read(offset, 4);
      if (note(readback.status())) mask = *readback;
    }
    note(access.write(offset, 4, original));
    return mask;
  };

  std::vector<SizedPciBar> bars;
  for (int i = 0; i < bar_count && first_error.ok(); ++i) {
    SizedPciBar bar;
    bar.index = i;
    const uint32_t offset = kBar0 + 4 * i;
    absl::StatusOr<uint32_t> original = access.read(offset, 4);
    if (!note(original.status())) break;
    bar.io = (*original & 0x1) != 0;
    if (bar.io) {
      uint32_t mask = probe(offset, *original) & ~0x3u;
      if ((mask & 0xffff0000) == 0 && mask != 0) mask |= 0xffff0000;  // 16-bit
      bar.address = *original & ~0x3u;
      bar.size = mask == 0 ? 0 : uint64_t{~mask + 1u} & 0xffffffff;
    } else {
      bar.is64 = ((*original >> 1) & 0x3) == 0x2 && i + 1 < bar_count;
      bar.prefetchable = (*original & 0x8) != 0;
      uint64_t mask = probe(offset, *original) & ~0xfu;
      bar.address = *original & ~0xfu;
      if (bar.is64) {
        absl::StatusOr<uint32_t> high = access.read(offset + 4, 4);
        if (!note(high.status())) break;
        mask |= uint64_t{probe(offset + 4, *high)} << 32;
        bar.address |= uint64_t{*high} << 32;
      } else if (mask != 0) {
        mask |= 0xffffffff00000000ull;  // a 32-bit BAR decodes below 4 GiB
      }
      bar.size = mask == 0 ? 0 : ~mask + 1;
    }
    bar.implemented = bar.size != 0;
    bars.push_back(bar);
    if (bar.is64) {
      SizedPciBar upper;
      upper.index = ++i;
      bars.push_back(upper);
    }
  }
  if (*command & decode) note(access.write(kCommand, 2, *command));
  if (!first_error.ok()) return first_error;
  return bars;
}

std::string PciClassName(uint32_t class_code) {
  const uint32_t base = class_code >> 16;
  const uint32_t sub = (class_code >> 8) & 0xff;
  switch (base) {
    case 0x00: return "Unclassified device";
    case 0x01:
      if (sub == 0x08) return "Non-Volatile memory controller";
      if (sub == 0x06) return "SATA controller";
      return "Mass storage controller";
    case 0x02: return sub == 0x00 ? "Ethernet controller" : "Network controller";
    case 0x03: return "Display controller";
    case 0x04: return "Multimedia controller";
    case 0x05: return "Memory controller";
    case 0x06: return "Bridge";
    case 0x07: return sub == 0x00 ? "Serial controller" : "Communication controller";
    case 0x08: return "System peripheral";
    case 0x09: return "Input device controller";
    case 0x0b: return "Processor";
    case 0x0c: return sub == 0x03 ? "USB controller" : "Serial bus controller";
    case 0x0d: return "Wireless controller";
    case 0x10: return "Encryption controller";
    case 0x11: return "Signal processing controller";
    case 0x12: return "Processing accelerator";
    case 0xff: return "Unassigned class";
  }
  return absl::StrCat("Class ", Hex(base));
}

std::string PciCapabilityName(uint16_t id, bool extended) {
  if (extended) {
    switch (id) {
      case 0x0001: return "Advanced Error Reporting";
      case 0x0002: return "Virtual Channel";
      case 0x0003: return "Device Serial Number";
      case 0x0004: return "Power Budgeting";
      case 0x000b: return "Vendor Specific";
      case 0x000d: return "Access Control Services";
      case 0x000e: return "Alternative Routing-ID";
      case 0x0010: return "SR-IOV";
      case 0x0015: return "Resizable BAR";
      case 0x0018: return "Latency Tolerance Reporting";
      case 0x001e: return "L1 PM Substates";
    }
    return absl::StrCat("Extended capability ", Hex(id));
  }
  switch (id) {
    case kCapPm: return "Power Management";
    case 0x03: return "VPD";
    case kCapMsi: return "MSI";
    case kCapVendor: return "Vendor Specific";
    case 0x0d: return "Bridge Subsystem Vendor ID";
    case kCapExp: return "PCI Express";
    case kCapMsix: return "MSI-X";
    case 0x12: return "SATA";
    case 0x13: return "Advanced Features";
  }
  return absl::StrCat("Capability ", Hex(id));
}

std::string PciCommandText(uint16_t command) {
  std::vector<std::string> bits;
  if (command & 0x001) bits.push_back("I/O");
  if (command & 0x002) bits.push_back("Mem");
  if (command & 0x004) bits.push_back("BusMaster");
  if (command & 0x040) bits.push_back("ParErr");
  if (command & 0x100) bits.push_back("SERR");
  if (command & 0x400) bits.push_back("DisINTx");
  return bits.empty() ? "-" : absl::StrJoin(bits, " ");
}

std::string PciStatusText(uint16_t status) {
  std::vector<std::string> bits;
  if (status & 0x0008) bits.push_back("INTx");
  if (status & 0x0010) bits.push_back("Cap");
  if (status & 0x0020) bits.push_back("66MHz");
  if (status & 0x0800) bits.push_back("SigTAbort");
  if (status & 0x1000) bits.push_back("RecTAbort");
  if (status & 0x2000) bits.push_back("RecMAbort");
  if (status & 0x4000) bits.push_back("SigSERR");
  if (status & 0x8000) bits.push_back("ParityErr");
  return bits.empty() ? "-" : absl::StrJoin(bits, " ");
}

}  // namespace vfio_user
