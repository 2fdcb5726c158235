#include "client/dma_space.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user {
namespace {

std::string RangeText(uint64_t iova, uint64_t size) {
  return absl::StrCat("[0x", absl::Hex(iova), ", +0x", absl::Hex(size), ")");
}

// pread/pwrite of exactly `length` bytes at `offset` (EINTR and short
// transfers retried); EIO if the file ends first.
template <typename Syscall, typename Pointer>
absl::Status FullFileIo(Syscall syscall, int fd, Pointer data, uint64_t length,
                        uint64_t offset, const char* what) {
  uint64_t done = 0;
  while (done < length) {
    const ssize_t n = syscall(fd, data + done, length - done,
                              static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(EIO, absl::StrCat(what, ": ", strerror(errno)));
    if (n == 0) return ErrnoError(EIO, absl::StrCat(what, ": end of file"));
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DmaSpace::Validate(const DmaRegion& r) {
  if (r.size == 0) return ErrnoError(EINVAL, "DMA region of size 0");
  if (r.iova + r.size < r.iova) {
    return ErrnoError(ERANGE, absl::StrCat("DMA region ",
                                           RangeText(r.iova, r.size),
                                           " wraps the address space"));
  }
  if (r.fd >= 0 && r.fd_offset + r.size < r.fd_offset) {
    return ErrnoError(ERANGE, "DMA region fd offset + size wraps");
  }
  const uint32_t known = kDmaMapFlagRead | kDmaMapFlagWrite;
  if ((r.prot & ~known) != 0 || r.prot == 0) {
    return ErrnoError(EINVAL, absl::StrCat("DMA region prot 0x",
                                           absl::Hex(r.prot),
                                           ": want READ and/or WRITE"));
  }
  if (r.fd < 0 && r.host == nullptr) {
    return ErrnoError(EINVAL,
                      "DMA region without an fd needs a host pointer to "
                      "serve DMA_READ/DMA_WRITE");
  }
  return absl::OkStatus();
}

bool DmaSpace::Overlaps(uint64_t iova, uint64_t size) const {
  absl::ReaderMutexLock lock(&mu_);
  const uint64_t end = iova + size;
  // The first entry starting at or after `end` cannot overlap; look at the
  // one before it.
  auto it = entries_.lower_bound(end);
  if (it == entries_.begin()) return false;
  --it;
  const DmaRegion& r = it->second.region;
  return r.iova + r.size > iova;
}

absl::Status DmaSpace::Add(const DmaRegion& region, UniqueFd fd) {
  absl::Status valid = Validate(region);
  if (!valid.ok()) return valid;
  if (Overlaps(region.iova, region.size)) {
    return ErrnoError(EEXIST, absl::StrCat("DMA region ",
                                           RangeText(region.iova, region.size),
                                           " overlaps a mapped one"));
  }
  absl::MutexLock lock(&mu_);
  Entry entry;
  entry.region = region;
  if (fd.valid()) {
    entry.region.fd = fd.get();
    entry.fd = std::make_shared<UniqueFd>(std::move(fd));
  } else {
    entry.region.fd = -1;
  }
  // Overlaps() ran without the writer lock; the client serializes DMA_MAP
  // calls, but check again so this class stays correct on its own.
  auto next = entries_.lower_bound(region.iova);
  if ((next != entries_.end() && next->first < region.iova + region.size) ||
      (next != entries_.begin() &&
       std::prev(next)->second.region.iova +
               std::prev(next)->second.region.size >
           region.iova)) {
    return ErrnoError(EEXIST, "DMA region overlaps a mapped one");
  }
  entries_.emplace(region.iova, std::move(entry));
  return absl::OkStatus();
}

absl::Status DmaSpace::Remove(uint64_t iova, uint64_t size) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(iova);
  if (it == entries_.end() || it->second.region.size != size) {
    return ErrnoError(ENOENT, absl::StrCat("no DMA region mapped at exactly ",
                                           RangeText(iova, size)));
  }
  entries_.erase(it);
  return absl::OkStatus();
}

void DmaSpace::Clear() {
  absl::MutexLock lock(&mu_);
  entries_.clear();
}

size_t DmaSpace::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return entries_.size();
}

std::vector<DmaSpace::Entry> DmaSpace::Snapshot() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<Entry> out;
  out.reserve(entries_.size());
  for (const auto& [iova, entry] : entries_) out.push_back(entry);
  return out;
}

template <typename CopyFn>
absl::Status DmaSpace::ForEachPiece(uint64_t iova, uint64_t length,
                                    uint32_t prot, const CopyFn& copy) const {
  if (length == 0) return absl::OkStatus();
  if (iova + length < iova) {
    return ErrnoError(EFAULT, absl::StrCat("DMA access ",
                                           RangeText(iova, length),
                                           " wraps the address space"));
  }
  // Pass 1 checks the whole span (so a failing write changes nothing);
  // pass 2 copies.
  for (int pass = 0; pass < 2; ++pass) {
    uint64_t pos = iova;
    while (pos < iova + length) {
      auto it = entries_.upper_bound(pos);
      if (it == entries_.begin()) {
        return ErrnoError(EFAULT, absl::StrCat("DMA access ",
                                               RangeText(iova, length),
                                               ": 0x", absl::Hex(pos),
                                               " is not mapped"));
      }
      --it;
      const Entry& entry = it->second;
      const uint64_t entry_end = entry.region.iova + entry.region.size;
      if (pos >= entry_end) {
        return ErrnoError(EFAULT, absl::StrCat("DMA access ",
                                               RangeText(iova, length),
                                               ": 0x", absl::Hex(pos),
                                               " is not mapped"));
      }
      if ((entry.region.prot & prot) != prot) {
        return ErrnoError(
            EPERM, absl::StrCat("DMA access ", RangeText(iova, length),
                                ": the range at 0x",
                                absl::Hex(entry.region.iova), " does not allow ",
                                prot == kDmaMapFlagRead ? "device reads"
                                                        : "device writes"));
      }
      const uint64_t piece = std::min(entry_end, iova + length) - pos;
      if (pass == 1) {
        absl::Status s = copy(entry, pos - entry.region.iova, pos - iova, piece);
        if (!s.ok()) return s;
      }
      pos += piece;
    }
  }
  return absl::OkStatus();
}

absl::Status DmaSpace::Read(uint64_t iova, absl::Span<uint8_t> out) const {
  absl::ReaderMutexLock lock(&mu_);
  return ForEachPiece(
      iova, out.size(), kDmaMapFlagRead,
      [&](const Entry& e, uint64_t offset, uint64_t done, uint64_t length) {
        if (e.region.host != nullptr) {
          std::memcpy(out.data() + done,
                      static_cast<const uint8_t*>(e.region.host) + offset,
                      length);
          return absl::OkStatus();
        }
        return FullFileIo(::pread, e.fd->get(), out.data() + done, length,
                          e.region.fd_offset + offset, "DMA_READ pread");
      });
}

bool DmaSpace::ReadInPlace(
    uint64_t iova, uint64_t length,
    absl::FunctionRef<void(absl::Span<const uint8_t>)> use) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = entries_.upper_bound(iova);
  if (it == entries_.begin()) return false;
  --it;
  const DmaRegion& region = it->second.region;
  const uint64_t offset = iova - region.iova;  // iova >= region.iova here
  if (region.host == nullptr || (region.prot & kDmaMapFlagRead) == 0 ||
      length == 0 || offset >= region.size || length > region.size - offset) {
    return false;
  }
  use(absl::Span<const uint8_t>(
      static_cast<const uint8_t*>(region.host) + offset, length));
  return true;
}

absl::Status DmaSpace::Write(uint64_t iova,
                             absl::Span<const uint8_t> data) const {
  absl::ReaderMutexLock lock(&mu_);
  return ForEachPiece(
      iova, data.size(), kDmaMapFlagWrite,
      [&](const Entry& e, uint64_t offset, uint64_t done, uint64_t length) {
        if (e.region.host != nullptr) {
          std::memcpy(static_cast<uint8_t*>(e.region.host) + offset,
                      data.data() + done, length);
          return absl::OkStatus();
        }
        return FullFileIo(::pwrite, e.fd->get(), data.data() + done, length,
                          e.region.fd_offset + offset, "DMA_WRITE pwrite");
      });
}

}  // namespace vfio_user
