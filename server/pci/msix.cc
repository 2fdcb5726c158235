#include "server/pci/msix.h"

#include <algorithm>
#include <cstring>

#include "core/errno_status.h"
#include "server/pci/le_bytes.h"
#include "server/pci/pci_ids.h"

namespace vfio_user {
namespace {

using pci_internal::LoadLe;
using pci_internal::StoreLe;

// Snapshot: magic, u16 version, u16 control flags, u32 table_size, table, PBA.
constexpr uint32_t kSnapshotMagic = 0x5849534d;  // "MSIX"
constexpr uint16_t kSnapshotVersion = 1;
constexpr size_t kSnapshotHeaderSize = 12;
constexpr uint16_t kSnapshotEnabled = 0x1;
constexpr uint16_t kSnapshotFunctionMasked = 0x2;

// Guest-writable bits of each byte of a table entry.
constexpr uint8_t kEntryWriteMask[kPciMsixEntrySize] = {
    0xfc, 0xff, 0xff, 0xff,  // address low: bits 1:0 reserved
    0xff, 0xff, 0xff, 0xff,  // address high
    0xff, 0xff, 0xff, 0xff,  // data
    0x01, 0x00, 0x00, 0x00,  // vector control: mask bit only
};

// An access of `len` bytes at `offset` inside an area of `area` bytes.
absl::Status CheckAccess(uint64_t offset, size_t len, uint64_t area) {
  if (len == 0 || offset > area || len > area - offset) {
    return ErrnoError(EINVAL, "MSI-X access out of range");
  }
  const bool natural = (len == 1 || len == 2 || len == 4 || len == 8) && offset % len == 0;
  const bool bulk = len > 8 && len % 4 == 0 && offset % 4 == 0;
  if (!natural && !bulk) return ErrnoError(EINVAL, "misaligned MSI-X access");
  return absl::OkStatus();
}

// Whether [offset, offset+len) intersects [start, start+size), without
// computing offset+len (which may wrap).
bool Overlaps(uint64_t offset, uint64_t len, uint64_t start, uint64_t size) {
  if (len == 0 || size == 0) return false;
  return offset >= start ? offset - start < size : start - offset < len;
}

}  // namespace

absl::Status ValidateMsixLayout(const MsixLayout& layout) {
  if (layout.table_size < 1 || layout.table_size > kPciMsixMaxVectors) {
    return ErrnoError(EINVAL, "MSI-X table size must be 1..2048");
  }
  if (layout.table_bar < 0 || layout.table_bar >= kPciNumBars || layout.pba_bar < 0 ||
      layout.pba_bar >= kPciNumBars) {
    return ErrnoError(EINVAL, "MSI-X BAR index must be 0..5");
  }
  if (layout.table_offset % 8 != 0 || layout.pba_offset % 8 != 0) {
    return ErrnoError(EINVAL, "MSI-X table and PBA offsets must be 8-byte aligned");
  }
  if (layout.table_bar == layout.pba_bar &&
      Overlaps(layout.table_offset, layout.table_bytes(), layout.pba_offset,
               layout.pba_bytes())) {
    return ErrnoError(EINVAL, "MSI-X table and PBA overlap");
  }
  return absl::OkStatus();
}

MsixTable::MsixTable(const MsixLayout& layout) : layout_(layout) {
  layout_.table_size = std::clamp<uint32_t>(layout_.table_size, 1, kPciMsixMaxVectors);
  table_.resize(layout_.table_bytes());
  pba_.resize(layout_.pba_bytes());
  Reset();
}

void MsixTable::Reset() {
  std::fill(table_.begin(), table_.end(), 0);
  for (uint32_t v = 0; v < size(); ++v) {
    table_[v * kPciMsixEntrySize + kPciMsixEntryVectorCtrl] = kPciMsixEntryCtrlMaskBit;
  }
  std::fill(pba_.begin(), pba_.end(), 0);
  enabled_ = false;
  function_masked_ = false;
}

absl::Status MsixTable::ReadTable(uint64_t offset, absl::Span<uint8_t> out) const {
  if (auto status = CheckAccess(offset, out.size(), table_.size()); !status.ok()) {
    return status;
  }
  std::memcpy(out.data(), table_.data() + offset, out.size());
  return absl::OkStatus();
}

absl::Status MsixTable::WriteTable(uint64_t offset, absl::Span<const uint8_t> data) {
  if (auto status = CheckAccess(offset, data.size(), table_.size()); !status.ok()) {
    return status;
  }
  const uint32_t first = offset / kPciMsixEntrySize;
  const uint32_t last = (offset + data.size() - 1) / kPciMsixEntrySize;
  std::vector<bool> was_deliverable, old_mask_bit;
  for (uint32_t v = first; v <= last; ++v) {
    was_deliverable.push_back(Deliverable(v));
    old_mask_bit.push_back(VectorMaskBit(v));
  }
  for (size_t i = 0; i < data.size(); ++i) {
    uint8_t& byte = table_[offset + i];
    const uint8_t mask = kEntryWriteMask[(offset + i) % kPciMsixEntrySize];
    byte = (byte & ~mask) | (data[i] & mask);
  }
  for (uint32_t v = first; v <= last; ++v) {
    const bool mask_bit = VectorMaskBit(v);
    if (mask_bit != old_mask_bit[v - first] && callbacks_.vector_mask_changed) {
      callbacks_.vector_mask_changed(v, mask_bit);
    }
    if (!was_deliverable[v - first]) NotifyPendingUnmasked(v);
  }
  return absl::OkStatus();
}

absl::Status MsixTable::ReadPba(uint64_t offset, absl::Span<uint8_t> out) const {
  if (auto status = CheckAccess(offset, out.size(), pba_.size()); !status.ok()) {
    return status;
  }
  std::memcpy(out.data(), pba_.data() + offset, out.size());
  return absl::OkStatus();
}

absl::Status MsixTable::WritePba(uint64_t offset, absl::Span<const uint8_t> data) {
  return CheckAccess(offset, data.size(), pba_.size());  // read-only: ignored
}

bool MsixTable::Covers(int bar, uint64_t offset, uint64_t length) const {
  return (bar == layout_.table_bar &&
          Overlaps(offset, length, layout_.table_offset, layout_.table_bytes())) ||
         (bar == layout_.pba_bar &&
          Overlaps(offset, length, layout_.pba_offset, layout_.pba_bytes()));
}

absl::Status MsixTable::BarRead(int bar, uint64_t offset, absl::Span<uint8_t> out) const {
  if (bar == layout_.table_bar && Overlaps(offset, 1, layout_.table_offset, table_.size())) {
    return ReadTable(offset - layout_.table_offset, out);
  }
  if (bar == layout_.pba_bar && Overlaps(offset, 1, layout_.pba_offset, pba_.size())) {
    return ReadPba(offset - layout_.pba_offset, out);
  }
  return ErrnoError(EINVAL, "access is not inside the MSI-X table or PBA");
}

absl::Status MsixTable::BarWrite(int bar, uint64_t offset, absl::Span<const uint8_t> data) {
  if (bar == layout_.table_bar && Overlaps(offset, 1, layout_.table_offset, table_.size())) {
    return WriteTable(offset - layout_.table_offset, data);
  }
  if (bar == layout_.pba_bar && Overlaps(offset, 1, layout_.pba_offset, pba_.size())) {
    return WritePba(offset - layout_.pba_offset, data);
  }
  return ErrnoError(EINVAL, "access is not inside the MSI-X table or PBA");
}

void MsixTable::SetControl(bool enabled, bool function_masked) {
  const bool was_open = enabled_ && !function_masked_;
  enabled_ = enabled;
  function_masked_ = function_masked;
  if (was_open || !enabled_ || function_masked_) return;  // nothing got unmasked
  for (uint32_t v = 0; v < size(); ++v) NotifyPendingUnmasked(v);
}

uint32_t MsixTable::VectorControl(uint32_t vector) const {
  return static_cast<uint32_t>(
      LoadLe(&table_[vector * kPciMsixEntrySize + kPciMsixEntryVectorCtrl], 4));
}

bool MsixTable::VectorMaskBit(uint32_t vector) const {
  return vector >= size() || (VectorControl(vector) & kPciMsixEntryCtrlMaskBit) != 0;
}

bool MsixTable::Deliverable(uint32_t vector) const {
  return enabled_ && !function_masked_ && !VectorMaskBit(vector);
}

bool MsixTable::IsMasked(uint32_t vector) const { return !Deliverable(vector); }

bool MsixTable::IsPending(uint32_t vector) const {
  return vector < size() && (pba_[vector / 8] >> (vector % 8) & 1) != 0;
}

void MsixTable::SetPending(uint32_t vector) {
  if (vector < size()) pba_[vector / 8] |= static_cast<uint8_t>(1u << (vector % 8));
}

void MsixTable::ClearPending(uint32_t vector) {
  if (vector < size()) pba_[vector / 8] &= static_cast<uint8_t>(~(1u << (vector % 8)));
}

bool MsixTable::RequestInterrupt(uint32_t vector) {
  if (vector >= size()) return false;
  if (Deliverable(vector)) return true;
  SetPending(vector);
  return false;
}

PciMsiMessage MsixTable::Message(uint32_t vector) const {
  if (vector >= size()) return {};
  const uint8_t* entry = &table_[vector * kPciMsixEntrySize];
  return {LoadLe(entry + kPciMsixEntryLowerAddr, 8),
          static_cast<uint32_t>(LoadLe(entry + kPciMsixEntryData, 4))};
}

// Called for a vector that was masked before the change that led here.
void MsixTable::NotifyPendingUnmasked(uint32_t vector) {
  if (Deliverable(vector) && IsPending(vector) && callbacks_.pending_unmasked) {
    callbacks_.pending_unmasked(vector);
  }
}

std::vector<uint8_t> MsixTable::Snapshot() const {
  std::vector<uint8_t> out(kSnapshotHeaderSize);
  StoreLe(&out[0], 4, kSnapshotMagic);
  StoreLe(&out[4], 2, kSnapshotVersion);
  StoreLe(&out[6], 2,
          (enabled_ ? kSnapshotEnabled : 0) | (function_masked_ ? kSnapshotFunctionMasked : 0));
  StoreLe(&out[8], 4, size());
  out.insert(out.end(), table_.begin(), table_.end());
  out.insert(out.end(), pba_.begin(), pba_.end());
  return out;
}

absl::Status MsixTable::Restore(absl::Span<const uint8_t> snapshot) {
  if (snapshot.size() != kSnapshotHeaderSize + table_.size() + pba_.size() ||
      LoadLe(&snapshot[0], 4) != kSnapshotMagic ||
      LoadLe(&snapshot[4], 2) != kSnapshotVersion || LoadLe(&snapshot[8], 4) != size()) {
    return ErrnoError(EINVAL, "MSI-X snapshot does not match this table");
  }
  const uint64_t flags = LoadLe(&snapshot[6], 2);
  if (flags & ~uint64_t{kSnapshotEnabled | kSnapshotFunctionMasked}) {
    return ErrnoError(EINVAL, "MSI-X snapshot has unknown flags");
  }
  const auto table = snapshot.subspan(kSnapshotHeaderSize, table_.size());
  const auto pba = snapshot.subspan(kSnapshotHeaderSize + table_.size());
  for (size_t i = 0; i < table.size(); ++i) {
    if (table[i] & ~kEntryWriteMask[i % kPciMsixEntrySize]) {
      return ErrnoError(EINVAL, "MSI-X snapshot sets reserved table bits");
    }
  }
  for (uint32_t bit = size(); bit < pba.size() * 8; ++bit) {
    if (pba[bit / 8] >> (bit % 8) & 1) {
      return ErrnoError(EINVAL, "MSI-X snapshot has pending bits past the table");
    }
  }
  table_.assign(table.begin(), table.end());
  pba_.assign(pba.begin(), pba.end());
  enabled_ = flags & kSnapshotEnabled;
  function_masked_ = flags & kSnapshotFunctionMasked;
  return absl::OkStatus();
}

}  // namespace vfio_user
