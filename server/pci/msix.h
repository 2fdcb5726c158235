// MsixTable: emulation of a function's MSI-X table and Pending Bit Array.
//
// The table (16 bytes per vector: message address low/high, message data,
// vector control with the mask bit) and the PBA (one bit per vector, in
// 64-bit words) live inside memory BARs described by an MsixLayout; the
// MSI-X capability in config space (PciConfigSpace::AddMsix) points at them.
// The device's BAR handlers route guest accesses here (Covers / BarRead /
// BarWrite), the capability's Message Control is mirrored with SetControl(),
// and the interrupt layer asks RequestInterrupt() before signalling a vector.
//
// Guest access rules: an access must lie inside the table (or the PBA) and be
// a naturally aligned 1-, 2-, 4- or 8-byte access, or a dword-aligned bulk
// access longer than 8 bytes whose length is a multiple of 4; anything else
// fails with EINVAL.
// Reserved bits (address bits 1:0, vector control bits 31:1) read 0 and
// ignore writes. The PBA is read-only to the guest: writes are ignored.
//
// Callbacks run synchronously, after the access that caused them has been
// fully applied, so they may call any method (e.g. ClearPending). Reset() and
// Restore() never invoke callbacks.
//
// Thread-safety: not thread-safe. The device's event-loop thread owns it.
#ifndef VFIO_USER_SERVER_PCI_MSIX_H_
#define VFIO_USER_SERVER_PCI_MSIX_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace vfio_user {

// One MSI / MSI-X message: the guest-programmed address and data.
struct PciMsiMessage {
  uint64_t address = 0;
  uint32_t data = 0;
};

// Where the MSI-X table and PBA live.
struct MsixLayout {
  uint32_t table_size = 1;    // number of vectors, 1..2048
  int table_bar = 0;          // BAR index (BIR) 0..5
  uint32_t table_offset = 0;  // byte offset in that BAR, 8-byte aligned
  int pba_bar = 0;
  uint32_t pba_offset = 0;    // 8-byte aligned

  uint64_t table_bytes() const { return uint64_t{16} * table_size; }
  uint64_t pba_bytes() const { return 8 * ((uint64_t{table_size} + 63) / 64); }
};

// Checks what can be checked without the BARs: vector count, BIR range,
// alignment, no table/PBA overlap. EINVAL on failure.
// (PciConfigSpace::AddMsix also checks both areas fit their memory BARs.)
absl::Status ValidateMsixLayout(const MsixLayout& layout);

struct MsixCallbacks {
  // A pending vector became deliverable (its mask bit, the function mask or
  // the enable changed). The callee normally signals it and ClearPending()s
  // it; a vector left pending fires again at its next unmask.
  std::function<void(uint32_t vector)> pending_unmasked;
  // The guest changed a vector's own mask bit (not the function mask).
  std::function<void(uint32_t vector, bool masked)> vector_mask_changed;
};

class MsixTable {
 public:
  // REQUIRES: ValidateMsixLayout(layout).ok() (a table_size outside 1..2048
  // is clamped). Starts as after Reset().
  explicit MsixTable(const MsixLayout& layout);

  const MsixLayout& layout() const { return layout_; }
  uint32_t size() const { return layout_.table_size; }
  MsixCallbacks& callbacks() { return callbacks_; }

  // Guest accesses; offsets relative to the table / PBA start.
  absl::Status ReadTable(uint64_t offset, absl::Span<uint8_t> out) const;
  absl::Status WriteTable(uint64_t offset, absl::Span<const uint8_t> data);
  absl::Status ReadPba(uint64_t offset, absl::Span<uint8_t> out) const;
  absl::Status WritePba(uint64_t offset, absl::Span<const uint8_t> data);  // ignored

  // BAR routing: whether [offset, offset+length) of BAR `bar` overlaps the
  // table or the PBA, and the access itself at a BAR offset (it must lie
  // entirely inside one of the two areas, else EINVAL).
  bool Covers(int bar, uint64_t offset, uint64_t length) const;
  absl::Status BarRead(int bar, uint64_t offset, absl::Span<uint8_t> out) const;
  absl::Status BarWrite(int bar, uint64_t offset, absl::Span<const uint8_t> data);

  // Mirrors the capability's Message Control (wire it to
  // PciConfigCallbacks::msix_control_changed). Vectors that become
  // deliverable while pending get pending_unmasked.
  void SetControl(bool enabled, bool function_masked);
  bool enabled() const { return enabled_; }
  bool function_masked() const { return function_masked_; }

  // Device/interrupt-layer side. Out-of-range vectors read as masked and not
  // pending, and are otherwise ignored.
  // Effective mask: vector mask bit || function mask || !enabled.
  bool IsMasked(uint32_t vector) const;
  bool VectorMaskBit(uint32_t vector) const;  // the entry's own mask bit
  bool IsPending(uint32_t vector) const;
  void SetPending(uint32_t vector);
  void ClearPending(uint32_t vector);
  // The device wants to raise `vector`: returns true if it must be signalled
  // now; otherwise marks it pending (and returns false) for delivery through
  // pending_unmasked once unmasked.
  bool RequestInterrupt(uint32_t vector);
  PciMsiMessage Message(uint32_t vector) const;

  // Power-on state: every vector masked with zero address/data, nothing
  // pending, MSI-X disabled, function not masked.
  void Reset();

  // Migration: the table, PBA and control state; Restore() checks the format,
  // the vector count and reserved bits (EINVAL) and changes nothing on error.
  std::vector<uint8_t> Snapshot() const;
  absl::Status Restore(absl::Span<const uint8_t> snapshot);

 private:
  uint32_t VectorControl(uint32_t vector) const;
  bool Deliverable(uint32_t vector) const;  // !IsMasked
  void NotifyPendingUnmasked(uint32_t vector);

  MsixLayout layout_;
  std::vector<uint8_t> table_;  // table_bytes()
  std::vector<uint8_t> pba_;    // pba_bytes(); bit v = byte v/8, bit v%8
  bool enabled_ = false;
  bool function_masked_ = false;
  MsixCallbacks callbacks_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_PCI_MSIX_H_
