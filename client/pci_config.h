// PCI configuration-space decoding for tools (the CLI's `lspci`): header
// fields, the capability lists (standard and extended) with PM, MSI, MSI-X
// and PCI Express decoded, and BAR sizing through the standard protocol
// (write all-ones, read back, restore).
//
// The bytes come from a device we do not trust: every read is bounds
// checked, and a capability chain that loops, points outside the space or
// into the header ends the walk with a note in `problems`, never a crash or
// an endless loop. Register layouts follow the PCI Local Bus 3.0, PCI PM 1.2
// and PCI Express Base specifications (offsets as in Linux's pci_regs.h).
//
// Thread-safety: pure functions (SizeBars calls the accessor it is given).
#ifndef VFIO_USER_CLIENT_PCI_CONFIG_H_
#define VFIO_USER_CLIENT_PCI_CONFIG_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vfio_user {

struct PciField {
  std::string name;
  std::string value;
};

struct PciCapability {
  uint16_t offset = 0;
  uint16_t id = 0;
  bool extended = false;
  uint8_t version = 0;  // extended capabilities only
  std::string name;
  std::vector<PciField> fields;  // decoded registers, in order
};

struct PciConfig {
  uint16_t vendor_id = 0;
  uint16_t device_id = 0;
  uint16_t command = 0;
  uint16_t status = 0;
  uint8_t revision = 0;
  uint32_t class_code = 0;  // base << 16 | sub << 8 | prog-if
  uint8_t header_type = 0;  // bit 7 = multi-function
  uint16_t subsystem_vendor_id = 0;  // type-0 headers only
  uint16_t subsystem_id = 0;
  uint8_t interrupt_line = 0;
  uint8_t interrupt_pin = 0;  // 0 none, 1..4 = INTA..INTD
  std::vector<PciCapability> capabilities;
  std::vector<std::string> problems;  // malformed chains etc.

  int bar_count() const { return (header_type & 0x7f) == 1 ? 2 : 6; }
};

// Decodes `config` (at least the 64-byte header; 256 for conventional, 4096
// for PCIe extended capabilities). EINVAL if shorter than 64 bytes.
absl::StatusOr<PciConfig> DecodePciConfig(absl::Span<const uint8_t> config);

struct SizedPciBar {
  int index = 0;
  bool implemented = false;  // sizing found writable address bits
  bool io = false;
  bool is64 = false;         // this BAR and the next form one 64-bit BAR
  bool prefetchable = false;
  uint64_t address = 0;
  uint64_t size = 0;
};

// Config-space access for BAR sizing (offset, width 2 or 4, little-endian).
struct PciConfigAccess {
  std::function<absl::StatusOr<uint32_t>(uint32_t offset, int width)> read;
  std::function<absl::Status(uint32_t offset, int width, uint32_t value)> write;
};

// Sizes the first `bar_count` BARs: clears memory/IO decode in the command
// register, writes all-ones to each BAR (both halves of a 64-bit one),
// reads the mask back, restores the BAR, then restores the command
// register. Restores are attempted even after a failure. The upper half of
// a 64-bit BAR is reported as not implemented.
absl::StatusOr<std::vector<SizedPciBar>> SizePciBars(const PciConfigAccess& access,
                                                int bar_count);

// Names for display.
std::string PciClassName(uint32_t class_code);
std::string PciCapabilityName(uint16_t id, bool extended);
std::string PciCommandText(uint16_t command);
std::string PciStatusText(uint16_t status);

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_PCI_CONFIG_H_
