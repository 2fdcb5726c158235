// GuestMemory: memfd-backed "guest RAM" for tests, tools and simple VMMs.
//
// The memory is a memfd mapped MAP_SHARED into this process, so it can be
// handed to a vfio-user server with its fd (the server mmaps it: zero-copy
// DMA) or without (the client then serves DMA_READ/DMA_WRITE from data()).
// Either way both sides see the same bytes.
//
// Thread-safety: the object is immutable after Create(); the bytes are plain
// shared memory (synchronize accesses yourself).
#ifndef VFIO_USER_CLIENT_GUEST_MEMORY_H_
#define VFIO_USER_CLIENT_GUEST_MEMORY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/dma_space.h"
#include "core/unique_fd.h"

namespace vfio_user {

class GuestMemory {
 public:
  // Allocates `size` bytes (rounded up to the page size), zero-filled.
  static absl::StatusOr<std::unique_ptr<GuestMemory>> Create(
      uint64_t size, const std::string& name = "vfio-user-guest-ram");
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  int fd() const { return fd_.get(); }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  absl::Span<uint8_t> bytes() const { return absl::MakeSpan(data_, size_); }

  // A DmaRegion for [offset, offset + length) of this memory at `iova`
  // (length 0 = to the end). With `pass_fd` the server gets the memfd and
  // can mmap it; without, it must use DMA messages. The host pointer is set
  // either way. REQUIRES: offset + length <= size().
  DmaRegion Region(uint64_t iova, uint64_t offset = 0, uint64_t length = 0,
                   uint32_t prot = kDmaMapFlagRead | kDmaMapFlagWrite,
                   bool pass_fd = true) const;

 private:
  GuestMemory(UniqueFd fd, uint8_t* data, uint64_t size)
      : fd_(std::move(fd)), data_(data), size_(size) {}
  UniqueFd fd_;
  uint8_t* data_;
  uint64_t size_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_GUEST_MEMORY_H_
