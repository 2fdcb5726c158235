// MappedMemoryGuard: survives a client pulling guest memory out from under
// the server.
//
// DMA maps with an fd are mmap()ed MAP_SHARED (server/dma_table.h). The
// client still owns the file: if it truncates it (a memfd without
// F_SEAL_SHRINK, a tmpfs or hugetlbfs file), the next touch of a vanished
// page raises SIGBUS in the server, which would kill every device the
// process serves. Instead, accesses to client mappings run inside a
// ScopedMappedAccess: a SIGBUS on an address of the range the current
// thread declared is repaired by mapping an anonymous zero page over the
// vanished one (so the faulting instruction completes, reading zeros or
// writing into a private page), and the guard reports faulted(); the caller
// then fails the access with EFAULT and stops trusting that mapping. A
// SIGBUS anywhere else is passed on to the previous handler (or kills the
// process as before): real bugs are not hidden.
//
// The handler is installed once per process, on the first
// ScopedMappedAccess (or by InstallMappedMemoryFaultHandler()); it chains
// to whatever handler was installed before it (e.g. AddressSanitizer's).
//
// Thread-safety: each thread has its own guard state; the handler only
// looks at the faulting thread's. Guards nest (the innermost wins).
#ifndef VFIO_USER_SERVER_MAPPED_MEMORY_GUARD_H_
#define VFIO_USER_SERVER_MAPPED_MEMORY_GUARD_H_

#include <cstddef>
#include <cstdint>

namespace vfio_user {

// Installs the SIGBUS handler (idempotent, thread-safe).
void InstallMappedMemoryFaultHandler();

class ScopedMappedAccess {
 public:
  // The calling thread is about to touch [begin, begin + len) of a client
  // mapping.
  ScopedMappedAccess(const void* begin, size_t len);
  ~ScopedMappedAccess();
  ScopedMappedAccess(const ScopedMappedAccess&) = delete;
  ScopedMappedAccess& operator=(const ScopedMappedAccess&) = delete;

  // True if a page of the range vanished (SIGBUS) since construction; the
  // data read or written is then meaningless.
  bool faulted() const;

 private:
  uintptr_t saved_begin_;
  uintptr_t saved_end_;
  bool saved_faulted_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_MAPPED_MEMORY_GUARD_H_
