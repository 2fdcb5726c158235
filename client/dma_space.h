// DmaSpace: the guest memory a vfio-user client has registered with DMA_MAP,
// and the service of the server's DMA_READ / DMA_WRITE requests against it.
//
// Each range is remembered with what the client needs to (a) replay the
// DMA_MAP after a reconnect -- its own dup of the fd that was passed -- and
// (b) serve DMA-by-message: a host pointer to the memory if the caller gave
// one, else pread/pwrite on the fd. Every access is bounds-checked against
// the registered ranges and their protection: an address outside every range
// is EFAULT, a direction the range does not allow is EPERM. An access may
// span several ranges when they are contiguous (as guest RAM split into
// sections is).
//
// Thread-safety: all methods are thread-safe. Read() and Write() hold a
// reader lock while they copy, so once Remove() or Clear() returns no copy
// into or out of the removed memory is in progress or can start.
#ifndef VFIO_USER_CLIENT_DMA_SPACE_H_
#define VFIO_USER_CLIENT_DMA_SPACE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/protocol.h"
#include "core/unique_fd.h"

namespace vfio_user {

// One guest-memory range to map for the device (DMA_MAP, PROTOCOL.md §3.2).
struct DmaRegion {
  uint64_t iova = 0;  // DMA address the device uses
  uint64_t size = 0;
  // What the DEVICE may do: kDmaMapFlagRead (device reads guest memory,
  // i.e. DMA_READ) and/or kDmaMapFlagWrite.
  uint32_t prot = kDmaMapFlagRead | kDmaMapFlagWrite;
  // Borrowed: the client dups it. With an fd the server may mmap the range;
  // without one (-1) it must use DMA_READ/DMA_WRITE messages.
  int fd = -1;
  uint64_t fd_offset = 0;  // where the range starts in `fd`
  // Where this process can access the range. Required without an fd. With an
  // fd it is optional (messages are then served with pread/pwrite on the fd).
  // REQUIRES: stays valid until the range is unmapped.
  void* host = nullptr;
};

class DmaSpace {
 public:
  // A registered range, as kept for replay and service.
  struct Entry {
    DmaRegion region;                // region.fd is entry-owned (see `fd`)
    std::shared_ptr<UniqueFd> fd;    // our dup; null without an fd
  };

  DmaSpace() = default;
  DmaSpace(const DmaSpace&) = delete;
  DmaSpace& operator=(const DmaSpace&) = delete;

  // Checks `region` for local validity: size > 0, no u64 wrap of iova+size or
  // fd_offset+size, prot only READ|WRITE and not 0, a host pointer or an fd.
  static absl::Status Validate(const DmaRegion& region);

  // Registers `region`, taking `fd` (a dup of region.fd, or invalid). EEXIST
  // if it overlaps a registered range; Validate()'s errors.
  absl::Status Add(const DmaRegion& region, UniqueFd fd);
  // True if [iova, iova+size) overlaps a registered range.
  bool Overlaps(uint64_t iova, uint64_t size) const;
  // Removes the range registered with exactly this iova and size (ENOENT
  // otherwise).
  absl::Status Remove(uint64_t iova, uint64_t size);
  void Clear();
  size_t size() const;

  // The registered ranges in iova order; the shared fds stay open while the
  // caller holds the snapshot (for replay).
  std::vector<Entry> Snapshot() const;

  // Serves a DMA_READ: copies guest memory at [iova, iova+out.size()) into
  // `out`. Errors (carrying the errno for the reply): EFAULT when any byte is
  // not mapped, EPERM when a range does not allow device reads, EIO when
  // pread fails or comes up short.
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> out) const;
  // Serves a DMA_READ without copying, when it can: if [iova, iova+length)
  // lies within one range that allows device reads and has a host pointer,
  // calls `use` with that memory (under the reader lock, so the range stays
  // registered until `use` returns) and returns true. Otherwise returns
  // false without calling it (Read() then serves the request, or reports
  // why it cannot). REQUIRES: length > 0.
  bool ReadInPlace(uint64_t iova, uint64_t length,
                   absl::FunctionRef<void(absl::Span<const uint8_t>)> use) const;
  // Serves a DMA_WRITE: copies `data` into guest memory at iova. EPERM when
  // a range does not allow device writes; otherwise as Read().
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> data) const;

 private:
  // Calls `copy(entry, offset_in_entry, done, length)` for each piece of
  // [iova, iova+length) after checking the whole span is mapped with `prot`.
  template <typename CopyFn>
  absl::Status ForEachPiece(uint64_t iova, uint64_t length, uint32_t prot,
                            const CopyFn& copy) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);  // key: iova
};

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_DMA_SPACE_H_
