#include "core/wire_buffer.h"

#include <cstdio>
#include <cstdlib>

namespace vfio_user {

uint8_t* WireWriter::Claim(size_t n) {
  uint8_t* at;
  if (vec_ != nullptr) {
    const size_t start = vec_->size();
    vec_->resize(start + n);
    at = vec_->data() + start;
  } else {
    if (n > fixed_.size() - written_) {
      std::fprintf(stderr, "WireWriter: write of %zu bytes past a %zu-byte buffer\n",
                   n, fixed_.size());
      std::abort();
    }
    at = fixed_.data() + written_;
  }
  written_ += n;
  return at;
}

void WireWriter::WriteBytes(absl::Span<const uint8_t> bytes) {
  uint8_t* at = Claim(bytes.size());
  if (!bytes.empty()) std::memcpy(at, bytes.data(), bytes.size());
}

void WireWriter::WriteZeros(size_t n) {
  uint8_t* at = Claim(n);
  if (n != 0) std::memset(at, 0, n);
}

}  // namespace vfio_user
