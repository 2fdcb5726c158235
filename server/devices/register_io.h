// Little-endian helpers shared by the sample devices: register access
// assembly (a guest access of any width over 32-bit registers) and a small
// bounds-checked serializer for migration state.
//
// Everything here is byte-oriented (memcpy-free shifts), so it is correct on
// any host and never reads past a span. Thread-safety: pure functions; the
// reader/writer objects are not shared.
#ifndef VFIO_USER_SERVER_DEVICES_REGISTER_IO_H_
#define VFIO_USER_SERVER_DEVICES_REGISTER_IO_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/errno_status.h"

namespace vfio_user {

// Reads up to 8 bytes as a little-endian value (bytes.size() <= 8).
inline uint64_t LoadLe(absl::Span<const uint8_t> bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes.size() && i < 8; ++i) {
    v |= uint64_t{bytes[i]} << (8 * i);
  }
  return v;
}

// Writes the low out.size() (<= 8) bytes of `v` little-endian.
inline void StoreLe(uint64_t v, absl::Span<uint8_t> out) {
  for (size_t i = 0; i < out.size() && i < 8; ++i) {
    out[i] = static_cast<uint8_t>(v >> (8 * i));
  }
}

// Serves a read of [offset, offset + out.size()) from a file of 32-bit
// registers: each dword the access touches is fetched once with
// read_dword(dword_offset) and the requested bytes are copied out. Suits
// devices whose register reads have no side effects (any width and
// alignment then reads like the hardware would).
inline void ReadDwordRegisters(uint64_t offset, absl::Span<uint8_t> out,
                               absl::FunctionRef<uint32_t(uint64_t)> read_dword) {
  size_t done = 0;
  while (done < out.size()) {
    const uint64_t at = offset + done;
    const uint64_t dword = at & ~uint64_t{3};
    const uint32_t value = read_dword(dword);
    for (uint64_t b = at - dword; b < 4 && done < out.size(); ++b) {
      out[done++] = static_cast<uint8_t>(value >> (8 * b));
    }
  }
}

// Serves a write of `in` at `offset` to a file of 32-bit registers: an
// aligned 32-bit write, or an aligned 64-bit write taken as two 32-bit
// writes (low dword first), each applied with write_dword(dword_offset,
// value). Anything else fails with EINVAL and writes nothing: registers
// with side effects have no meaning for a partial write.
inline absl::Status WriteDwordRegisters(
    uint64_t offset, absl::Span<const uint8_t> in,
    absl::FunctionRef<void(uint64_t, uint32_t)> write_dword) {
  const bool dword = in.size() == 4 && offset % 4 == 0;
  const bool qword = in.size() == 8 && offset % 8 == 0;
  if (!dword && !qword) {
    return ErrnoError(EINVAL, "registers take aligned 32- or 64-bit writes");
  }
  for (size_t i = 0; i < in.size(); i += 4) {
    write_dword(offset + i, static_cast<uint32_t>(LoadLe(in.subspan(i, 4))));
  }
  return absl::OkStatus();
}

// Appends fixed-width little-endian fields (migration state).
class StateWriter {
 public:
  void U8(uint8_t v) { bytes_.push_back(v); }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void Bytes(absl::Span<const uint8_t> b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); }
  std::vector<uint8_t> Take() { return std::move(bytes_); }

 private:
  void Le(uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::vector<uint8_t> bytes_;
};

// Reads fields written by StateWriter. Every getter returns false (and
// leaves the output untouched) when the input is exhausted; ok() stays
// false from then on, so a parse can check once at the end.
class StateReader {
 public:
  explicit StateReader(absl::Span<const uint8_t> in) : in_(in) {}
  bool U8(uint8_t* v) { return Get(1, v); }
  bool U16(uint16_t* v) { return Get(2, v); }
  bool U32(uint32_t* v) { return Get(4, v); }
  bool U64(uint64_t* v) { return Get(8, v); }
  bool Bytes(absl::Span<uint8_t> out) {
    if (!ok_ || in_.size() - pos_ < out.size()) return ok_ = false;
    for (size_t i = 0; i < out.size(); ++i) out[i] = in_[pos_ + i];
    pos_ += out.size();
    return true;
  }
  bool ok() const { return ok_; }
  // True when everything was consumed and nothing failed.
  bool AtEnd() const { return ok_ && pos_ == in_.size(); }

 private:
  template <typename T>
  bool Get(size_t n, T* v) {
    if (!ok_ || in_.size() - pos_ < n) return ok_ = false;
    *v = static_cast<T>(LoadLe(in_.subspan(pos_, n)));
    pos_ += n;
    return true;
  }
  absl::Span<const uint8_t> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DEVICES_REGISTER_IO_H_
