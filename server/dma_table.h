// DmaTable: the device side's view of guest memory — the client's DMA maps
// (PROTOCOL.md §3.2 DMA_MAP, §3.3 DMA_UNMAP), access to them, and DMA dirty
// logging (§3.13 DEVICE_FEATURE DMA_LOGGING_START/STOP/REPORT).
//
// Each map covers [iova, iova + size) and has one of three backings:
//   - mmap:      the client passed an fd; it is mmap()ed MAP_SHARED with the
//                protection the map's flags grant, and accesses are memcpy.
//   - file I/O:  the client passed an fd with the libvfio-user FILE_IO flag
//                (0x8); accesses use pread()/pwrite() on the fd.
//   - message:   no fd; the memory is reachable only through DMA_READ /
//                DMA_WRITE messages, which the session layer sends. The table
//                only says so (IsMessageOnly()); it never talks to the client.
// The fd of a map is owned by the table until the map is removed.
//
// Validation policy (the peer is untrusted):
//   - size > 0; address and size aligned to the smallest page size in
//     `pgsizes` (QEMU only maps page-aligned sections); the range and
//     offset + size must not wrap u64 (offset + size must also fit off_t).
//   - flags: only READ|WRITE|MMAP|FILE_IO; at least one of READ/WRITE (as
//     the kernel's VFIO_IOMMU_MAP_DMA requires); MMAP and FILE_IO are
//     exclusive and need an fd. Without an fd the offset is ignored.
//   - mmap backing: offset aligned to the host page size; for regular files
//     (memfd included) offset + size must lie within the file when mapped,
//     so that a bogus map fails with EINVAL now instead of SIGBUS later.
//   - any overlap with an existing map, identical re-maps included, fails
//     with EEXIST (the spec; libvfio-user is lenient, PROTOCOL.md §10.5).
//   - more than max_maps maps fails with ENOSPC, as the kernel's VFIO type1
//     IOMMU does at its dma_entry_limit: the request itself is well formed,
//     the table is full (libvfio-user's EINVAL would blame the request).
//   - resources a client cannot exhaust (docs/SECURITY.md): an mmap-backed
//     map keeps no fd (it is closed once mapped); the process as a whole
//     holds at most kProcessMmapBudget mmap-backed maps (each is a VMA, and
//     the kernel's vm.max_map_count covers the whole process) and at most
//     half of RLIMIT_NOFILE in FILE_IO fds; beyond, DMA_MAP fails with
//     ENOSPC and the rest of the process keeps working.
// A client can shrink a memfd (or any file) after it was mapped. Touching a
// vanished page would raise SIGBUS; accesses run inside a
// ScopedMappedAccess (server/mapped_memory_guard.h) instead, so they fail
// with EFAULT, and the map is poisoned: every later access to it fails with
// EFAULT until it is unmapped.
//
// Thread-safety: all methods are thread-safe. Map/Unmap/UnmapAll and
// Start/StopLogging take the table's lock exclusively; accesses (Read, Write,
// Resolve, WithMappedRange, MarkDirty, Report) take it shared, so device
// worker threads access memory concurrently while the event-loop thread
// maps and unmaps. Unmap/UnmapAll return only after every access that could
// see the removed maps has finished, and the memory is unmapped and the fd
// closed before they return (the spec: drop every reference before the
// DMA_UNMAP reply).
#ifndef VFIO_USER_SERVER_DMA_TABLE_H_
#define VFIO_USER_SERVER_DMA_TABLE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/codec.h"
#include "core/unique_fd.h"

namespace vfio_user {

// True if `status` is the table's answer for an access that touches a map
// without an fd: nothing was copied and the caller must use DMA_READ/WRITE
// messages instead. (Its errno, should it leak to the wire, is EREMOTE.)
bool IsMessageOnly(const absl::Status& status);

enum class DmaBacking {
  kMmap,     // host memory (mmap of the client's fd)
  kFileIo,   // pread/pwrite on the client's fd (lvu FILE_IO)
  kMessage,  // no fd: DMA_READ/DMA_WRITE messages only
};
const char* DmaBackingName(DmaBacking backing);

// One piece of an access, inside a single map (Resolve()).
struct DmaSegment {
  uint64_t iova = 0;
  uint64_t length = 0;
  DmaBacking backing = DmaBacking::kMessage;
};

// One map, for status reporting (Snapshot()).
struct DmaMapInfo {
  uint64_t iova = 0;
  uint64_t size = 0;
  uint32_t flags = 0;  // as requested (kDmaMapFlag*)
  uint64_t offset = 0;
  bool has_fd = false;
  DmaBacking backing = DmaBacking::kMessage;
};

struct DmaTableCounters {
  uint64_t maps = 0;           // successful Map() calls
  uint64_t unmaps = 0;         // maps removed by Unmap() or UnmapAll()
  uint64_t bytes_read = 0;     // by Read() and read WithMappedRange()
  uint64_t bytes_written = 0;  // by Write() and write WithMappedRange()
};

class DmaTable {
 public:
  // Smallest dirty-logging page size accepted.
  static constexpr uint64_t kMinLoggingPageSize = 4096;
  // Default cap on the memory held by dirty bitmaps, and on one report.
  static constexpr uint64_t kDefaultMaxDirtyBitmapBytes = uint64_t{256} << 20;
  // Process-wide cap on mmap-backed maps over all tables: half of the
  // kernel's default vm.max_map_count (65530), so that the rest of the
  // process (malloc, thread stacks) always finds VMAs.
  static constexpr uint64_t kProcessMmapBudget = 32768;

  // Tests: overrides the process-wide budgets (mmap-backed maps, fds held
  // by FILE_IO maps); 0 restores the default.
  static void SetProcessBudgetsForTesting(uint64_t max_mmaps, uint64_t max_fds);

  // `max_maps`: the most maps held at once (the max_dma_maps capability).
  // `pgsizes`: bitmask of supported IOMMU page sizes (the pgsizes
  // capability); maps must be aligned to its smallest one. 0 means the host
  // page size. `max_dirty_bitmap_bytes` bounds the memory dirty logging may
  // allocate (every 8 bytes track 64 logging pages) and the size of one
  // report bitmap.
  DmaTable(uint64_t max_maps, uint64_t pgsizes,
           uint64_t max_dirty_bitmap_bytes = kDefaultMaxDirtyBitmapBytes);
  // Unmaps everything and closes every fd.
  ~DmaTable();
  DmaTable(const DmaTable&) = delete;
  DmaTable& operator=(const DmaTable&) = delete;

  // ---- Maps (the event-loop thread, normally) ----

  // Adds the map `req` describes; `fd` (possibly invalid: no fd) is taken
  // over whatever the outcome. Errors: EINVAL (see the validation policy
  // above), EEXIST, ENOSPC, ENOMEM (dirty logging of everything is on and
  // the map would exceed the bitmap budget), or the errno of a failing
  // fstat()/mmap() (e.g. EACCES: PROT_WRITE on a read-only fd; ENODEV: the
  // fd cannot be mapped).
  absl::Status Map(const DmaMapRequest& req, UniqueFd fd);

  // Removes the map that starts at `address` and has exactly `size` bytes
  // (ENOENT otherwise). Waits for in-flight accesses; when it returns the
  // memory is unmapped and the fd closed.
  absl::Status Unmap(uint64_t address, uint64_t size);

  // Removes every map (DMA_UNMAP with the ALL flag, client disconnect).
  // Same waiting guarantee as Unmap(). Dirty logging state is kept.
  void UnmapAll();

  // ---- Access (any thread) ----
  // An access to [iova, iova + len) may span several adjacent maps. It fails
  // before copying anything with:
  //   EFAULT  if any byte is not mapped, or the range wraps u64;
  //   EPERM   if a map lacks READ (for reads) or WRITE (for writes);
  //   IsMessageOnly() if any piece is in a map without an fd (the caller
  //           transfers the whole range by message, or splits it with
  //           Resolve()).
  // An I/O error of a FILE_IO map (pread/pwrite) can leave a partial copy.
  // A zero-length access succeeds and does nothing. Writes are recorded for
  // dirty logging.
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) const;
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src);

  // Splits [iova, iova + len) into per-map segments in address order,
  // checking coverage and permission as above (EFAULT, EPERM); message-only
  // segments are reported, not failed. Host pointers are deliberately not
  // returned: they would dangle after an Unmap. Use WithMappedRange() for
  // zero-copy access. EINVAL if len == 0.
  absl::StatusOr<std::vector<DmaSegment>> Resolve(uint64_t iova, uint64_t len,
                                                  bool write) const;

  // Zero-copy access: runs fn(span) on the host memory of [iova, iova + len)
  // while holding the table's shared lock, so the memory cannot be unmapped
  // under fn. The range must lie within ONE mmap-backed map: EFAULT if it is
  // not mapped, crosses into another map, or is FILE_IO-backed; EPERM on a
  // protection mismatch; IsMessageOnly() for a map without an fd. With
  // write == true the range is recorded as dirty after fn returns. When
  // write == false the span is writable memory the caller must not write.
  // If a page vanishes under fn (the client truncated its file), fn sees
  // zeros there and the call fails with EFAULT afterwards.
  // REQUIRES: len > 0; fn must not call into this DmaTable (it would
  // deadlock against a waiting Unmap) and should be short: it delays maps
  // and unmaps.
  absl::Status WithMappedRange(uint64_t iova, size_t len, bool write,
                               absl::FunctionRef<void(absl::Span<uint8_t>)> fn);

  // ---- Dirty logging (PROTOCOL.md §3.13) ----

  // Starts logging device writes at `page_size` granularity (a power of two
  // >= 4096) over `ranges`, or over everything mapped (now and later) when
  // `ranges` is empty. Ranges must be non-empty, not wrap, be aligned to
  // page_size and not overlap (EINVAL, as the kernel checks them). EBUSY if
  // logging is already on; ENOMEM if the bitmaps would exceed the budget.
  absl::Status StartLogging(uint64_t page_size,
                            absl::Span<const DmaLoggingRange> ranges);
  // Stops logging and frees the bitmaps. A no-op when logging is off.
  void StopLogging();
  bool logging() const;

  // Returns the dirty bitmap of [iova, iova + length) in units of
  // `page_size` (a power of two >= 4096, independent of the logging page
  // size): bit k % 64 of word k / 64 is set if any byte of
  // [iova + k * page_size, iova + (k + 1) * page_size) was logged dirty.
  // Logged pages lying entirely inside the range are cleared (as VFIO
  // does); a logging page only partly inside stays dirty, so it is reported
  // again rather than lost. Errors: EINVAL if logging is off, page_size is
  // bad, length == 0, the range wraps, or (explicit ranges only) it is not
  // covered by the logged ranges; E2BIG if the bitmap would exceed the
  // budget.
  absl::StatusOr<std::vector<uint64_t>> Report(uint64_t iova, uint64_t length,
                                               uint64_t page_size);

  // Records device writes done by message (DMA_WRITE) for dirty logging.
  // Ignores bytes outside the logged ranges; clamps a range that wraps.
  void MarkDirty(uint64_t iova, uint64_t len);

  // ---- Introspection ----
  size_t size() const;  // number of maps
  std::vector<DmaMapInfo> Snapshot() const;
  DmaTableCounters counters() const;
  uint64_t min_page_size() const { return min_page_size_; }

 private:
  // An mmap() of a client fd; munmap()s it on destruction. Move-only.
  class HostMapping {
   public:
    HostMapping() = default;
    HostMapping(uint8_t* base, size_t length) : base_(base), length_(length) {}
    ~HostMapping();
    HostMapping(HostMapping&& other) noexcept;
    HostMapping& operator=(HostMapping&& other) noexcept;
    uint8_t* base() const { return base_; }
    // A page vanished under an access (the client truncated the file):
    // the mapping is no longer trusted. Any thread.
    void Poison() const { poisoned_.store(true, std::memory_order_relaxed); }
    bool poisoned() const { return poisoned_.load(std::memory_order_relaxed); }

   private:
    uint8_t* base_ = nullptr;
    size_t length_ = 0;
    mutable std::atomic<bool> poisoned_{false};
  };

  // One unit of a process-wide budget, returned on destruction. Move-only.
  class BudgetSlot {
   public:
    BudgetSlot() = default;
    explicit BudgetSlot(std::atomic<uint64_t>* counter) : counter_(counter) {}
    ~BudgetSlot() {
      if (counter_ != nullptr) counter_->fetch_sub(1, std::memory_order_relaxed);
    }
    BudgetSlot(BudgetSlot&& other) noexcept
        : counter_(std::exchange(other.counter_, nullptr)) {}
    BudgetSlot& operator=(BudgetSlot&& other) noexcept {
      std::swap(counter_, other.counter_);
      return *this;
    }

   private:
    std::atomic<uint64_t>* counter_ = nullptr;
  };

  struct Region {
    uint64_t iova = 0;
    uint64_t last = 0;  // inclusive: [iova, last], so the top page fits
    uint64_t size = 0;
    uint32_t flags = 0;
    uint64_t offset = 0;  // into fd
    DmaBacking backing = DmaBacking::kMessage;
    bool has_fd = false;  // the client passed one (kMmap closes it once mapped)
    UniqueFd fd;          // kFileIo only
    HostMapping mapping;  // kMmap only: offset..offset+size of the fd
    BudgetSlot budget;    // kMmap / kFileIo: the process-wide budget used
  };

  // Dirty bits of logging pages [first_page, last_page] (page = iova >>
  // logging_page_shift_), bit i of the range = page first_page + i.
  struct LoggedRange {
    uint64_t first_page = 0;
    uint64_t last_page = 0;
    std::unique_ptr<std::atomic<uint64_t>[]> words;
  };

  struct Piece {
    const Region* region;
    uint64_t iova;
    uint64_t length;
  };
  using Pieces = absl::InlinedVector<Piece, 4>;
  using RegionMap = std::map<uint64_t, Region>;            // by iova
  using LoggedRangeMap = std::map<uint64_t, LoggedRange>;  // by first_page

  absl::StatusOr<Region> CreateRegion(const DmaMapRequest& req,
                                      UniqueFd fd) const;
  // Iterator to the map containing `iova`, or end().
  RegionMap::const_iterator FindLocked(uint64_t iova) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool OverlapsLocked(uint64_t first, uint64_t last) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Splits an access into per-map pieces, checking coverage and protection
  // (`needed` is kDmaMapFlagRead or kDmaMapFlagWrite).
  absl::Status CollectLocked(uint64_t iova, uint64_t len, uint32_t needed,
                             Pieces* pieces) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Collects and then fails with IsMessageOnly() if any piece needs messages.
  absl::Status CollectDirectLocked(uint64_t iova, uint64_t len, uint32_t needed,
                                   Pieces* pieces) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Read() and Write(): copies between `buf` and [iova, iova + len).
  absl::Status Access(uint64_t iova, uint8_t* buf, size_t len,
                      bool write) const;
  // Access() of a range that is not inside one mmap-backed map: splits it
  // into pieces and copies them in order; `*done` counts the bytes copied.
  absl::Status AccessPiecesLocked(uint64_t iova, uint8_t* buf, size_t len,
                                  bool write, size_t* done) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The map holding all of [iova, iova + len) if it is mmap-backed and
  // grants the access (READ, or WRITE if `write`); nullptr otherwise (also
  // for len == 0). The common case of an access: no piece list needed.
  const Region* SingleMmapRegionLocked(uint64_t iova, uint64_t len,
                                       bool write) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Copies between `buf` and [iova, iova + len) of the mmap-backed `region`
  // (which holds the range) under a ScopedMappedAccess. False if the map is
  // poisoned or a page vanished during the copy (the map is poisoned then).
  static bool CopyMapped(const Region& region, uint64_t iova, uint8_t* buf,
                         size_t len, bool write);

  // Adds logged ranges covering the pages of [first, last] not yet covered
  // (logging everything). ENOMEM over budget; nothing is added then.
  absl::Status CoverLocked(uint64_t first, uint64_t last)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AddLoggedRangesLocked(
      const std::vector<std::pair<uint64_t, uint64_t>>& page_spans)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CoveredByLoggingLocked(uint64_t first_page, uint64_t last_page) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void MarkDirtyLocked(uint64_t iova, uint64_t len) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const uint64_t max_maps_;
  const uint64_t min_page_size_;
  const uint64_t host_page_size_;
  const uint64_t max_dirty_bitmap_bytes_;

  mutable absl::Mutex mu_;
  RegionMap regions_ ABSL_GUARDED_BY(mu_);

  bool logging_ ABSL_GUARDED_BY(mu_) = false;
  bool logging_everything_ ABSL_GUARDED_BY(mu_) = false;
  unsigned logging_page_shift_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t logging_bitmap_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Bits are set and cleared atomically under the shared lock.
  LoggedRangeMap logged_ ABSL_GUARDED_BY(mu_);

  std::atomic<uint64_t> maps_{0};
  std::atomic<uint64_t> unmaps_{0};
  mutable std::atomic<uint64_t> bytes_read_{0};
  mutable std::atomic<uint64_t> bytes_written_{0};
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DMA_TABLE_H_
