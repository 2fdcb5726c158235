// Bounds-checked cursors over wire bytes.
//
// WireReader walks a read-only byte span and hands out host-order integers and
// sub-spans; any read that would run past the end fails (returns false) and
// leaves the reader where it was, so a decoder never does offset arithmetic of
// its own and never touches a byte it has not checked. WireWriter appends
// host-order integers and bytes to a growing vector, or writes them into a
// fixed caller buffer (for gather I/O headers).
//
// Both are cheap value types that do not own the bytes they point at: the
// caller keeps the span/vector alive. Not thread-safe (no shared state).
#ifndef VFIO_USER_CORE_WIRE_BUFFER_H_
#define VFIO_USER_CORE_WIRE_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "absl/types/span.h"

namespace vfio_user {

class WireReader {
 public:
  explicit WireReader(absl::Span<const uint8_t> bytes) : bytes_(bytes) {}

  size_t size() const { return bytes_.size(); }
  size_t position() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  // Reads one host-order unsigned integer (uint8_t ... uint64_t) and advances.
  // Returns false, consuming nothing, if fewer than sizeof(T) bytes remain.
  template <typename T>
  [[nodiscard]] bool Read(T* out) {
    static_assert(std::is_integral<T>::value && std::is_unsigned<T>::value,
                  "WireReader::Read takes unsigned integers");
    if (remaining() < sizeof(T)) return false;
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }

  // Sets *out to the next `n` bytes (a view into the underlying span) and
  // advances. Returns false, consuming nothing, if fewer than n remain.
  [[nodiscard]] bool ReadBytes(uint64_t n, absl::Span<const uint8_t>* out) {
    if (n > remaining()) return false;
    *out = bytes_.subspan(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return true;
  }

  // Copies the next `n` bytes into dst[0..n). Same failure rule as ReadBytes.
  [[nodiscard]] bool CopyBytes(size_t n, uint8_t* dst) {
    if (n > remaining()) return false;
    if (n != 0) std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return true;
  }

  // Advances by `n` bytes; false (no move) if fewer than n remain.
  [[nodiscard]] bool Skip(uint64_t n) {
    if (n > remaining()) return false;
    pos_ += static_cast<size_t>(n);
    return true;
  }

  // Moves to absolute `position`; false (no move) if position > size().
  [[nodiscard]] bool Seek(uint64_t position) {
    if (position > bytes_.size()) return false;
    pos_ = static_cast<size_t>(position);
    return true;
  }

  // Everything from the current position to the end (not consumed).
  absl::Span<const uint8_t> Rest() const { return bytes_.subspan(pos_); }

 private:
  absl::Span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

class WireWriter {
 public:
  // Appends to *out, which must outlive the writer.
  explicit WireWriter(std::vector<uint8_t>* out) : vec_(out) {}
  // Writes into fixed[0..). Writing past fixed.size() is a programming error
  // and aborts the process.
  explicit WireWriter(absl::Span<uint8_t> fixed) : fixed_(fixed) {}

  // Bytes written so far by this writer.
  size_t written() const { return written_; }

  template <typename T>
  void Write(T value) {
    static_assert(std::is_integral<T>::value && std::is_unsigned<T>::value,
                  "WireWriter::Write takes unsigned integers");
    std::memcpy(Claim(sizeof(T)), &value, sizeof(T));
  }
  void WriteBytes(absl::Span<const uint8_t> bytes);
  void WriteZeros(size_t n);

 private:
  // Returns a pointer to the next `n` writable bytes and advances.
  uint8_t* Claim(size_t n);

  std::vector<uint8_t>* vec_ = nullptr;
  absl::Span<uint8_t> fixed_;
  size_t written_ = 0;
};

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_WIRE_BUFFER_H_
