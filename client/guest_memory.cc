#include "client/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user {

absl::StatusOr<std::unique_ptr<GuestMemory>> GuestMemory::Create(
    uint64_t size, const std::string& name) {
  if (size == 0) return ErrnoError(EINVAL, "guest memory of size 0");
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (size > UINT64_MAX - page) return ErrnoError(EINVAL, "size too large");
  size = (size + page - 1) / page * page;
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd.valid()) return ErrnoError(errno, "memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoError(errno, absl::StrCat("ftruncate guest memory to ", size));
  }
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                      fd.get(), 0);
  if (data == MAP_FAILED) return ErrnoError(errno, "mmap guest memory");
  return std::unique_ptr<GuestMemory>(
      new GuestMemory(std::move(fd), static_cast<uint8_t*>(data), size));
}

GuestMemory::~GuestMemory() { ::munmap(data_, size_); }

DmaRegion GuestMemory::Region(uint64_t iova, uint64_t offset, uint64_t length,
                              uint32_t prot, bool pass_fd) const {
  DmaRegion region;
  region.iova = iova;
  region.size = length == 0 ? size_ - offset : length;
  region.prot = prot;
  region.fd = pass_fd ? fd_.get() : -1;
  region.fd_offset = pass_fd ? offset : 0;
  region.host = data_ + offset;
  return region;
}

}  // namespace vfio_user
