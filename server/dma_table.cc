#include "server/dma_table.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"
#include "core/errno_status.h"
#include "core/protocol.h"
#include "server/mapped_memory_guard.h"

namespace vfio_user {
namespace {

// Process-wide usage and test overrides of the budgets (see dma_table.h).
std::atomic<uint64_t> g_mmap_maps{0};
std::atomic<uint64_t> g_fd_maps{0};
std::atomic<uint64_t> g_mmap_budget_override{0};
std::atomic<uint64_t> g_fd_budget_override{0};

uint64_t MmapBudget() {
  const uint64_t override = g_mmap_budget_override.load();
  return override != 0 ? override : DmaTable::kProcessMmapBudget;
}

uint64_t FdBudget() {
  const uint64_t override = g_fd_budget_override.load();
  if (override != 0) return override;
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
    return 1u << 20;
  }
  return static_cast<uint64_t>(rl.rlim_cur) / 2;
}

// Takes one unit of `counter` if that stays within `budget`.
bool Reserve(std::atomic<uint64_t>* counter, uint64_t budget) {
  uint64_t used = counter->load(std::memory_order_relaxed);
  do {
    if (used >= budget) return false;
  } while (!counter->compare_exchange_weak(used, used + 1, std::memory_order_relaxed));
  return true;
}

absl::Status VanishedError(uint64_t iova) {
  return ErrnoError(
      EFAULT, absl::StrFormat("guest memory of the DMA mapping at 0x%x vanished "
                              "(the client shrank its file)",
                              iova));
}

constexpr char kMessageOnlyPayloadUrl[] = "vfio-user/dma-message-only";
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
constexpr uint64_t kOffMax = std::numeric_limits<off_t>::max();
constexpr uint32_t kKnownMapFlags = kDmaMapFlagRead | kDmaMapFlagWrite |
                                    kDmaMapFlagMmapLvu | kDmaMapFlagFileIoLvu;

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

bool IsValidLoggingPageSize(uint64_t page_size) {
  return IsPowerOfTwo(page_size) && page_size >= DmaTable::kMinLoggingPageSize;
}

unsigned Log2(uint64_t power_of_two) {
  return static_cast<unsigned>(__builtin_ctzll(power_of_two));
}

// True if [first, first + len) wraps u64. REQUIRES: len > 0.
bool Wraps(uint64_t first, uint64_t len) { return first > kU64Max - (len - 1); }

uint64_t LowestSetBit(uint64_t v) { return v & (~v + 1); }

uint64_t HostPageSize() {
  long page = sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<uint64_t>(page) : 4096;
}

// Calls fn(word_index, mask) for each 64-bit word of a bitmap that holds bits
// [from, to] (inclusive), with the mask of those bits within the word.
template <typename Fn>
void ForEachWordMask(uint64_t from, uint64_t to, Fn fn) {
  const uint64_t first_word = from / 64, last_word = to / 64;
  for (uint64_t w = first_word; w <= last_word; ++w) {
    const unsigned lo = w == first_word ? from % 64 : 0;
    const unsigned hi = w == last_word ? to % 64 : 63;
    const uint64_t upto_hi = hi == 63 ? kU64Max : (uint64_t{1} << (hi + 1)) - 1;
    fn(w, upto_hi & (kU64Max << lo));
  }
}

uint64_t WordsForPages(uint64_t first_page, uint64_t last_page) {
  return (last_page - first_page) / 64 + 1;
}

// pread()/pwrite() of exactly `len` bytes at `offset`, retrying on EINTR and
// short transfers. Hitting end of file is EFAULT (the client shrank it).
absl::Status FileIo(int fd, uint8_t* buf, size_t len, uint64_t offset,
                    bool write) {
  while (len > 0) {
    const ssize_t n = write ? ::pwrite(fd, buf, len, static_cast<off_t>(offset))
                            : ::pread(fd, buf, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno,
                        write ? "DMA pwrite failed" : "DMA pread failed");
    }
    if (n == 0) return ErrnoError(EFAULT, "DMA file I/O reached end of file");
    buf += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status MessageOnlyError(uint64_t iova) {
  absl::Status status = ErrnoError(
      EREMOTE,
      absl::StrFormat("DMA range at 0x%x is mapped without an fd: use messages",
                      iova));
  status.SetPayload(kMessageOnlyPayloadUrl, absl::Cord("1"));
  return status;
}

}  // namespace

bool IsMessageOnly(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kMessageOnlyPayloadUrl).has_value();
}

const char* DmaBackingName(DmaBacking backing) {
  switch (backing) {
    case DmaBacking::kMmap:
      return "mmap";
    case DmaBacking::kFileIo:
      return "file-io";
    case DmaBacking::kMessage:
      return "message";
  }
  return "unknown";
}

// ---- HostMapping ----

DmaTable::HostMapping::~HostMapping() {
  if (base_ != nullptr) ::munmap(base_, length_);
}

DmaTable::HostMapping::HostMapping(HostMapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      length_(std::exchange(other.length_, 0)),
      poisoned_(other.poisoned()) {}

DmaTable::HostMapping& DmaTable::HostMapping::operator=(
    HostMapping&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) ::munmap(base_, length_);
    base_ = std::exchange(other.base_, nullptr);
    length_ = std::exchange(other.length_, 0);
    poisoned_.store(other.poisoned(), std::memory_order_relaxed);
  }
  return *this;
}

// ---- DmaTable ----

DmaTable::DmaTable(uint64_t max_maps, uint64_t pgsizes,
                   uint64_t max_dirty_bitmap_bytes)
    : max_maps_(max_maps),
      min_page_size_(pgsizes != 0 ? LowestSetBit(pgsizes) : HostPageSize()),
      host_page_size_(HostPageSize()),
      max_dirty_bitmap_bytes_(max_dirty_bitmap_bytes) {
  InstallMappedMemoryFaultHandler();
}

void DmaTable::SetProcessBudgetsForTesting(uint64_t max_mmaps, uint64_t max_fds) {
  g_mmap_budget_override = max_mmaps;
  g_fd_budget_override = max_fds;
}

DmaTable::~DmaTable() = default;  // Region and LoggedRange members clean up.

absl::StatusOr<DmaTable::Region> DmaTable::CreateRegion(
    const DmaMapRequest& req, UniqueFd fd) const {
  if ((req.flags & ~kKnownMapFlags) != 0) {
    return ErrnoError(EINVAL, absl::StrFormat("unknown DMA_MAP flags 0x%x",
                                              req.flags & ~kKnownMapFlags));
  }
  if ((req.flags & (kDmaMapFlagRead | kDmaMapFlagWrite)) == 0) {
    return ErrnoError(EINVAL, "DMA_MAP grants neither READ nor WRITE");
  }
  const bool file_io = (req.flags & kDmaMapFlagFileIoLvu) != 0;
  const bool mmap_flag = (req.flags & kDmaMapFlagMmapLvu) != 0;
  if (file_io && mmap_flag) {
    return ErrnoError(EINVAL, "DMA_MAP with both MMAP and FILE_IO");
  }
  if ((file_io || mmap_flag) && !fd.valid()) {
    return ErrnoError(EINVAL, "DMA_MAP MMAP/FILE_IO flag without an fd");
  }
  if (req.size == 0) return ErrnoError(EINVAL, "DMA_MAP of size 0");
  if (((req.address | req.size) & (min_page_size_ - 1)) != 0) {
    return ErrnoError(
        EINVAL, absl::StrFormat("DMA_MAP 0x%x+0x%x not aligned to page size %u",
                                req.address, req.size, min_page_size_));
  }
  if (Wraps(req.address, req.size)) {
    return ErrnoError(EINVAL, "DMA_MAP range wraps the address space");
  }

  Region region;
  region.iova = req.address;
  region.size = req.size;
  region.last = req.address + (req.size - 1);
  region.flags = req.flags;
  if (!fd.valid()) {
    region.backing = DmaBacking::kMessage;  // the offset is meaningless
    return region;
  }

  region.backing = file_io ? DmaBacking::kFileIo : DmaBacking::kMmap;
  region.offset = req.offset;
  if (req.size > kOffMax || req.offset > kOffMax - req.size) {
    return ErrnoError(EINVAL, "DMA_MAP offset + size exceeds the file range");
  }
  if (region.backing == DmaBacking::kMmap &&
      req.offset % host_page_size_ != 0) {
    return ErrnoError(
        EINVAL,
        absl::StrFormat("DMA_MAP offset 0x%x not page aligned", req.offset));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoError(errno, "fstat of the DMA_MAP fd failed");
  }
  if (S_ISREG(st.st_mode) &&
      req.offset + req.size > static_cast<uint64_t>(st.st_size)) {
    return ErrnoError(
        EINVAL,
        absl::StrFormat("DMA_MAP offset 0x%x + size 0x%x beyond file size 0x%x",
                        req.offset, req.size, st.st_size));
  }
  region.has_fd = true;
  std::atomic<uint64_t>* counter =
      region.backing == DmaBacking::kMmap ? &g_mmap_maps : &g_fd_maps;
  const uint64_t budget = region.backing == DmaBacking::kMmap ? MmapBudget() : FdBudget();
  if (!Reserve(counter, budget)) {
    return ErrnoError(
        ENOSPC, absl::StrFormat("this process already holds %u %s DMA mappings",
                                budget, DmaBackingName(region.backing)));
  }
  region.budget = BudgetSlot(counter);
  if (region.backing == DmaBacking::kMmap) {
    int prot = 0;
    if ((req.flags & kDmaMapFlagRead) != 0) prot |= PROT_READ;
    if ((req.flags & kDmaMapFlagWrite) != 0) prot |= PROT_WRITE;
    void* base = ::mmap(nullptr, req.size, prot, MAP_SHARED, fd.get(),
                        static_cast<off_t>(req.offset));
    if (base == MAP_FAILED) {
      return ErrnoError(errno, "mmap of the DMA_MAP fd failed");
    }
    // Guest memory has no place in this process's core dumps (best effort).
    ::madvise(base, req.size, MADV_DONTDUMP);
    region.mapping = HostMapping(static_cast<uint8_t*>(base), req.size);
    return region;  // the mapping keeps the memory; `fd` is closed here
  }
  region.fd = std::move(fd);
  return region;
}

DmaTable::RegionMap::const_iterator DmaTable::FindLocked(uint64_t iova) const {
  auto it = regions_.upper_bound(iova);
  if (it == regions_.begin()) return regions_.end();
  --it;
  return it->second.last >= iova ? it : regions_.end();
}

bool DmaTable::OverlapsLocked(uint64_t first, uint64_t last) const {
  // Maps are disjoint, so only the last one starting at or before `last`
  // can reach into [first, last].
  auto it = regions_.upper_bound(last);
  if (it == regions_.begin()) return false;
  --it;
  return it->second.last >= first;
}

absl::Status DmaTable::Map(const DmaMapRequest& req, UniqueFd fd) {
  // mmap() and fstat() run unlocked; a rejected region is destroyed (munmap,
  // close) after the lock is released, as `region` outlives `lock`.
  absl::StatusOr<Region> region = CreateRegion(req, std::move(fd));
  if (!region.ok()) return region.status();
  absl::MutexLock lock(&mu_);
  if (OverlapsLocked(region->iova, region->last)) {
    return ErrnoError(EEXIST,
                      absl::StrFormat("DMA_MAP 0x%x+0x%x overlaps a mapping",
                                      req.address, req.size));
  }
  if (regions_.size() >= max_maps_) {
    return ErrnoError(ENOSPC,
                      absl::StrFormat("DMA map limit (%u) reached", max_maps_));
  }
  if (logging_ && logging_everything_) {
    absl::Status status = CoverLocked(region->iova, region->last);
    if (!status.ok()) return status;
  }
  const uint64_t iova = region->iova;
  regions_.emplace(iova, *std::move(region));
  maps_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status DmaTable::Unmap(uint64_t address, uint64_t size) {
  RegionMap::node_type removed;
  {
    absl::MutexLock lock(&mu_);  // waits for in-flight accesses
    auto it = regions_.find(address);
    if (it == regions_.end() || it->second.size != size) {
      return ErrnoError(ENOENT,
                        absl::StrFormat("no DMA mapping is exactly 0x%x+0x%x",
                                        address, size));
    }
    removed = regions_.extract(it);
  }
  removed = RegionMap::node_type();  // munmap and close before returning
  unmaps_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

void DmaTable::UnmapAll() {
  RegionMap removed;
  {
    absl::MutexLock lock(&mu_);  // waits for in-flight accesses
    removed.swap(regions_);
  }
  unmaps_.fetch_add(removed.size(), std::memory_order_relaxed);
  removed.clear();  // munmap and close before returning
}

// ---- Access ----

absl::Status DmaTable::CollectLocked(uint64_t iova, uint64_t len,
                                     uint32_t needed, Pieces* pieces) const {
  pieces->clear();
  if (len == 0) return absl::OkStatus();
  if (Wraps(iova, len)) {
    return ErrnoError(EFAULT, "DMA access wraps the address space");
  }
  const uint64_t last = iova + (len - 1);
  uint64_t cursor = iova;
  auto it = FindLocked(iova);
  while (true) {
    if (it == regions_.end() || it->second.iova > cursor) {
      return ErrnoError(
          EFAULT, absl::StrFormat("DMA address 0x%x is not mapped", cursor));
    }
    const Region& region = it->second;
    const uint64_t piece_last = std::min(region.last, last);
    pieces->push_back(Piece{&region, cursor, piece_last - cursor + 1});
    if (piece_last == last) break;
    cursor = piece_last + 1;  // region.last < last: cannot wrap
    ++it;
  }
  for (const Piece& piece : *pieces) {
    if ((piece.region->flags & needed) == 0) {
      return ErrnoError(
          EPERM, absl::StrFormat(
                     "DMA mapping at 0x%x is not %s", piece.region->iova,
                     needed == kDmaMapFlagWrite ? "writable" : "readable"));
    }
  }
  return absl::OkStatus();
}

absl::Status DmaTable::CollectDirectLocked(uint64_t iova, uint64_t len,
                                           uint32_t needed,
                                           Pieces* pieces) const {
  absl::Status status = CollectLocked(iova, len, needed, pieces);
  if (!status.ok()) return status;
  for (const Piece& piece : *pieces) {
    if (piece.region->backing == DmaBacking::kMessage) {
      return MessageOnlyError(piece.iova);
    }
  }
  return absl::OkStatus();
}

const DmaTable::Region* DmaTable::SingleMmapRegionLocked(uint64_t iova,
                                                         uint64_t len,
                                                         bool write) const {
  if (len == 0) return nullptr;
  const auto it = FindLocked(iova);
  if (it == regions_.end()) return nullptr;
  const Region& region = it->second;
  const uint32_t needed = write ? kDmaMapFlagWrite : kDmaMapFlagRead;
  // iova <= region.last, so the subtraction is exact and nothing wraps.
  if (region.backing != DmaBacking::kMmap || (region.flags & needed) == 0 ||
      len - 1 > region.last - iova) {
    return nullptr;
  }
  return &region;
}

bool DmaTable::CopyMapped(const Region& region, uint64_t iova, uint8_t* buf,
                          size_t len, bool write) {
  if (region.mapping.poisoned()) return false;
  uint8_t* host = region.mapping.base() + (iova - region.iova);
  ScopedMappedAccess guard(host, len);
  if (write) {
    std::memcpy(host, buf, len);
  } else {
    std::memcpy(buf, host, len);
  }
  if (guard.faulted()) {
    region.mapping.Poison();
    return false;
  }
  return true;
}

absl::Status DmaTable::AccessPiecesLocked(uint64_t iova, uint8_t* buf,
                                          size_t len, bool write,
                                          size_t* done) const {
  Pieces pieces;
  absl::Status status = CollectDirectLocked(
      iova, len, write ? kDmaMapFlagWrite : kDmaMapFlagRead, &pieces);
  if (!status.ok()) return status;
  for (const Piece& piece : pieces) {
    const Region& region = *piece.region;
    uint8_t* chunk = buf + *done;
    if (region.backing == DmaBacking::kMmap) {
      if (!CopyMapped(region, piece.iova, chunk, piece.length, write)) {
        return VanishedError(region.iova);
      }
    } else {
      status = FileIo(region.fd.get(), chunk, piece.length,
                      region.offset + (piece.iova - region.iova), write);
      if (!status.ok()) return status;
    }
    *done += piece.length;
  }
  return absl::OkStatus();
}

absl::Status DmaTable::Access(uint64_t iova, uint8_t* buf, size_t len,
                              bool write) const {
  absl::ReaderMutexLock lock(&mu_);
  absl::Status status;
  size_t done = 0;
  // The common case -- the whole access inside one mmap-backed map with the
  // right protection -- needs no piece list; anything else (several maps,
  // file I/O, messages, errors) takes the general path.
  const Region* region = SingleMmapRegionLocked(iova, len, write);
  if (region != nullptr) {
    if (CopyMapped(*region, iova, buf, len, write)) {
      done = len;
    } else {
      status = VanishedError(region->iova);
    }
  } else {
    status = AccessPiecesLocked(iova, buf, len, write, &done);
  }
  if (write) {
    // The whole range, conservatively: a failed pwrite may have changed part
    // of what follows `done`.
    MarkDirtyLocked(iova, len);
    bytes_written_.fetch_add(done, std::memory_order_relaxed);
  } else {
    bytes_read_.fetch_add(done, std::memory_order_relaxed);
  }
  return status;
}

absl::Status DmaTable::Read(uint64_t iova, absl::Span<uint8_t> dst) const {
  return Access(iova, dst.data(), dst.size(), /*write=*/false);
}

absl::Status DmaTable::Write(uint64_t iova, absl::Span<const uint8_t> src) {
  // Access() only reads from `buf` when writing.
  return Access(iova, const_cast<uint8_t*>(src.data()), src.size(),
                /*write=*/true);
}

absl::StatusOr<std::vector<DmaSegment>> DmaTable::Resolve(uint64_t iova,
                                                          uint64_t len,
                                                          bool write) const {
  if (len == 0) return ErrnoError(EINVAL, "DMA resolve of length 0");
  absl::ReaderMutexLock lock(&mu_);
  Pieces pieces;
  absl::Status status = CollectLocked(
      iova, len, write ? kDmaMapFlagWrite : kDmaMapFlagRead, &pieces);
  if (!status.ok()) return status;
  std::vector<DmaSegment> segments;
  segments.reserve(pieces.size());
  for (const Piece& piece : pieces) {
    segments.push_back(
        DmaSegment{piece.iova, piece.length, piece.region->backing});
  }
  return segments;
}

absl::Status DmaTable::WithMappedRange(
    uint64_t iova, size_t len, bool write,
    absl::FunctionRef<void(absl::Span<uint8_t>)> fn) {
  if (len == 0) return ErrnoError(EINVAL, "DMA range of length 0");
  absl::ReaderMutexLock lock(&mu_);
  const Region* single = SingleMmapRegionLocked(iova, len, write);
  if (single == nullptr) {
    // Not one mmap-backed map with the right protection: find out why.
    Pieces pieces;
    absl::Status status = CollectDirectLocked(
        iova, len, write ? kDmaMapFlagWrite : kDmaMapFlagRead, &pieces);
    if (!status.ok()) return status;
    return ErrnoError(
        EFAULT, absl::StrFormat("DMA range 0x%x+0x%x is not one host mapping",
                                iova, len));
  }
  const Region& region = *single;
  if (region.mapping.poisoned()) return VanishedError(region.iova);
  uint8_t* host = region.mapping.base() + (iova - region.iova);
  {
    ScopedMappedAccess guard(host, len);
    fn(absl::MakeSpan(host, len));
    if (guard.faulted()) {
      region.mapping.Poison();
      return VanishedError(region.iova);
    }
  }
  if (write) {
    MarkDirtyLocked(iova, len);
    bytes_written_.fetch_add(len, std::memory_order_relaxed);
  } else {
    bytes_read_.fetch_add(len, std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

// ---- Dirty logging ----

absl::Status DmaTable::AddLoggedRangesLocked(
    const std::vector<std::pair<uint64_t, uint64_t>>& page_spans) {
  uint64_t new_bytes = 0;
  for (const auto& [first, last] : page_spans) {
    const uint64_t bytes = WordsForPages(first, last) * sizeof(uint64_t);
    if (bytes > max_dirty_bitmap_bytes_ - logging_bitmap_bytes_ - new_bytes) {
      return ErrnoError(ENOMEM,
                        absl::StrFormat("dirty logging would need more than %u "
                                        "bitmap bytes",
                                        max_dirty_bitmap_bytes_));
    }
    new_bytes += bytes;
  }
  for (const auto& [first, last] : page_spans) {
    LoggedRange range;
    range.first_page = first;
    range.last_page = last;
    // Value-initialized: every bit starts clean.
    range.words.reset(new std::atomic<uint64_t>[WordsForPages(first, last)]());
    logged_.emplace(first, std::move(range));
  }
  logging_bitmap_bytes_ += new_bytes;
  return absl::OkStatus();
}

absl::Status DmaTable::CoverLocked(uint64_t first, uint64_t last) {
  const uint64_t first_page = first >> logging_page_shift_;
  const uint64_t last_page = last >> logging_page_shift_;
  std::vector<std::pair<uint64_t, uint64_t>> gaps;
  uint64_t cursor = first_page;
  bool covered = false;
  auto it = logged_.upper_bound(first_page);
  if (it != logged_.begin() && std::prev(it)->second.last_page >= first_page) {
    --it;
  }
  for (; it != logged_.end() && it->first <= last_page; ++it) {
    if (it->first > cursor) gaps.emplace_back(cursor, it->first - 1);
    if (it->second.last_page >= last_page) {
      covered = true;
      break;
    }
    cursor = it->second.last_page + 1;  // pages < 2^52: cannot wrap
  }
  if (!covered) gaps.emplace_back(cursor, last_page);
  return AddLoggedRangesLocked(gaps);
}

bool DmaTable::CoveredByLoggingLocked(uint64_t first_page,
                                      uint64_t last_page) const {
  auto it = logged_.upper_bound(first_page);
  if (it == logged_.begin()) return false;
  --it;
  uint64_t cursor = first_page;
  for (; it != logged_.end(); ++it) {
    if (it->first > cursor || it->second.last_page < cursor) return false;
    if (it->second.last_page >= last_page) return true;
    cursor = it->second.last_page + 1;
  }
  return false;
}

absl::Status DmaTable::StartLogging(uint64_t page_size,
                                    absl::Span<const DmaLoggingRange> ranges) {
  if (!IsValidLoggingPageSize(page_size)) {
    return ErrnoError(
        EINVAL, absl::StrFormat("bad dirty logging page size %u", page_size));
  }
  const unsigned shift = Log2(page_size);
  std::vector<std::pair<uint64_t, uint64_t>> page_spans;  // sorted, disjoint
  if (!ranges.empty()) {
    std::vector<DmaLoggingRange> sorted(ranges.begin(), ranges.end());
    std::sort(sorted.begin(), sorted.end(),
              [](const DmaLoggingRange& a, const DmaLoggingRange& b) {
                return a.iova < b.iova;
              });
    for (const DmaLoggingRange& range : sorted) {
      if (range.length == 0 || Wraps(range.iova, range.length) ||
          ((range.iova | range.length) & (page_size - 1)) != 0) {
        return ErrnoError(EINVAL,
                          absl::StrFormat("bad dirty logging range 0x%x+0x%x",
                                          range.iova, range.length));
      }
      const uint64_t first = range.iova >> shift;
      const uint64_t last = (range.iova + (range.length - 1)) >> shift;
      if (!page_spans.empty() && first <= page_spans.back().second) {
        return ErrnoError(EINVAL, "dirty logging ranges overlap");
      }
      page_spans.emplace_back(first, last);
    }
  }

  absl::MutexLock lock(&mu_);
  if (logging_) return ErrnoError(EBUSY, "dirty logging already started");
  if (ranges.empty()) {
    // Everything mapped; maps sharing a logging page share a span.
    for (const auto& [iova, region] : regions_) {
      const uint64_t first = region.iova >> shift;
      const uint64_t last = region.last >> shift;
      if (!page_spans.empty() && first <= page_spans.back().second + 1) {
        page_spans.back().second = std::max(page_spans.back().second, last);
      } else {
        page_spans.emplace_back(first, last);
      }
    }
  }
  logging_page_shift_ = shift;
  absl::Status status = AddLoggedRangesLocked(page_spans);
  if (!status.ok()) {
    logged_.clear();
    logging_bitmap_bytes_ = 0;
    return status;
  }
  logging_ = true;
  logging_everything_ = ranges.empty();
  return absl::OkStatus();
}

void DmaTable::StopLogging() {
  LoggedRangeMap freed;
  {
    absl::MutexLock lock(&mu_);
    freed.swap(logged_);
    logging_ = false;
    logging_everything_ = false;
    logging_bitmap_bytes_ = 0;
  }
}

bool DmaTable::logging() const {
  absl::ReaderMutexLock lock(&mu_);
  return logging_;
}

void DmaTable::MarkDirtyLocked(uint64_t iova, uint64_t len) const {
  if (!logging_ || len == 0) return;
  const uint64_t last = Wraps(iova, len) ? kU64Max : iova + (len - 1);
  const uint64_t first_page = iova >> logging_page_shift_;
  const uint64_t last_page = last >> logging_page_shift_;
  auto it = logged_.upper_bound(first_page);
  if (it != logged_.begin() && std::prev(it)->second.last_page >= first_page) {
    --it;
  }
  for (; it != logged_.end() && it->first <= last_page; ++it) {
    const LoggedRange& range = it->second;
    const uint64_t lo = std::max(first_page, range.first_page);
    const uint64_t hi = std::min(last_page, range.last_page);
    ForEachWordMask(lo - range.first_page, hi - range.first_page,
                    [&](uint64_t w, uint64_t mask) {
                      range.words[w].fetch_or(mask, std::memory_order_release);
                    });
  }
}

void DmaTable::MarkDirty(uint64_t iova, uint64_t len) {
  absl::ReaderMutexLock lock(&mu_);
  MarkDirtyLocked(iova, len);
}

absl::StatusOr<std::vector<uint64_t>> DmaTable::Report(uint64_t iova,
                                                       uint64_t length,
                                                       uint64_t page_size) {
  if (!IsValidLoggingPageSize(page_size)) {
    return ErrnoError(
        EINVAL, absl::StrFormat("bad dirty report page size %u", page_size));
  }
  if (length == 0 || Wraps(iova, length)) {
    return ErrnoError(
        EINVAL,
        absl::StrFormat("bad dirty report range 0x%x+0x%x", iova, length));
  }
  const uint64_t last = iova + (length - 1);
  const unsigned report_shift = Log2(page_size);
  const uint64_t num_bits = ((last - iova) >> report_shift) + 1;
  const uint64_t num_words = (num_bits - 1) / 64 + 1;
  if (num_words > max_dirty_bitmap_bytes_ / sizeof(uint64_t)) {
    return ErrnoError(E2BIG, "dirty report bitmap too large");
  }

  absl::ReaderMutexLock lock(&mu_);
  if (!logging_) return ErrnoError(EINVAL, "dirty logging is not started");
  const unsigned shift = logging_page_shift_;
  const uint64_t logging_page = uint64_t{1} << shift;
  const uint64_t first_page = iova >> shift;
  const uint64_t last_page = last >> shift;
  if (!logging_everything_ && !CoveredByLoggingLocked(first_page, last_page)) {
    return ErrnoError(
        EINVAL, absl::StrFormat("dirty report 0x%x+0x%x outside the logged "
                                "ranges",
                                iova, length));
  }
  // Logging pages only partly inside the report are reported, not cleared.
  const bool first_partial = (iova & (logging_page - 1)) != 0;
  const bool last_partial = (last & (logging_page - 1)) != logging_page - 1;

  std::vector<uint64_t> bitmap(num_words, 0);
  auto report_page = [&](uint64_t page) {
    const uint64_t page_first = std::max(page << shift, iova);
    const uint64_t page_last =
        std::min((page << shift) + (logging_page - 1), last);
    ForEachWordMask((page_first - iova) >> report_shift,
                    (page_last - iova) >> report_shift,
                    [&](uint64_t w, uint64_t mask) { bitmap[w] |= mask; });
  };

  auto it = logged_.upper_bound(first_page);
  if (it != logged_.begin() && std::prev(it)->second.last_page >= first_page) {
    --it;
  }
  for (; it != logged_.end() && it->first <= last_page; ++it) {
    const LoggedRange& range = it->second;
    const uint64_t lo = std::max(first_page, range.first_page);
    const uint64_t hi = std::min(last_page, range.last_page);
    // Bits of the partial edge pages, relative to the range.
    auto edge_bit = [&](bool partial, uint64_t page, uint64_t w) -> uint64_t {
      if (!partial || page < lo || page > hi) return 0;
      const uint64_t bit = page - range.first_page;
      return bit / 64 == w ? uint64_t{1} << (bit % 64) : 0;
    };
    ForEachWordMask(
        lo - range.first_page, hi - range.first_page,
        [&](uint64_t w, uint64_t mask) {
          const uint64_t keep = edge_bit(first_partial, first_page, w) |
                                edge_bit(last_partial, last_page, w);
          const uint64_t clear = mask & ~keep;
          const uint64_t old =
              clear != 0
                  ? range.words[w].fetch_and(~clear, std::memory_order_acq_rel)
                  : range.words[w].load(std::memory_order_acquire);
          uint64_t dirty = old & mask;
          while (dirty != 0) {
            const unsigned b = static_cast<unsigned>(__builtin_ctzll(dirty));
            dirty &= dirty - 1;
            report_page(range.first_page + w * 64 + b);
          }
        });
  }
  return bitmap;
}

// ---- Introspection ----

size_t DmaTable::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return regions_.size();
}

std::vector<DmaMapInfo> DmaTable::Snapshot() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<DmaMapInfo> maps;
  maps.reserve(regions_.size());
  for (const auto& [iova, region] : regions_) {
    maps.push_back(DmaMapInfo{region.iova, region.size, region.flags,
                              region.offset, region.has_fd,
                              region.backing});
  }
  return maps;
}

DmaTableCounters DmaTable::counters() const {
  DmaTableCounters c;
  c.maps = maps_.load(std::memory_order_relaxed);
  c.unmaps = unmaps_.load(std::memory_order_relaxed);
  c.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  c.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace vfio_user
