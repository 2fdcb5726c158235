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

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace vfio_user {

// Installs the SIGBUS handler (idempotent, thread-safe).
void InstallMappedMemoryFaultHandler();

namespace mapped_memory_internal {
// The range the current thread is touching (end == 0: none). Plain data,
// so the signal handler may read and write it; `__thread` (not
// thread_local) because it is constant-initialized: no TLS init wrapper on
// the access path.
struct GuardState {
  uintptr_t begin;
  uintptr_t end;
  bool faulted;
};
extern __thread GuardState t_guard;
// Set once the handler is installed.
extern std::atomic<bool> g_handler_installed;
}  // namespace mapped_memory_internal

// Inline: a guard costs a few thread-local stores (no syscall, no lock), so
// that it stays cheap beside a 4 KiB copy (bench/shm_bench).
class ScopedMappedAccess {
 public:
  // The calling thread is about to touch [begin, begin + len) of a client
  // mapping.
  ScopedMappedAccess(const void* begin, size_t len) {
    if (!mapped_memory_internal::g_handler_installed.load(
            std::memory_order_acquire)) {
      InstallMappedMemoryFaultHandler();
    }
    mapped_memory_internal::GuardState& guard = mapped_memory_internal::t_guard;
    saved_ = guard;
    guard.begin = reinterpret_cast<uintptr_t>(begin);
    guard.end = guard.begin + len;
    guard.faulted = false;
    // The handler must see the range before the first access.
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~ScopedMappedAccess() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    mapped_memory_internal::t_guard = saved_;
  }
  ScopedMappedAccess(const ScopedMappedAccess&) = delete;
  ScopedMappedAccess& operator=(const ScopedMappedAccess&) = delete;

  // True if a page of the range vanished (SIGBUS) since construction; the
  // data read or written is then meaningless.
  bool faulted() const {
    // The handler writes this on the same thread: no reordering across here.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return mapped_memory_internal::t_guard.faulted;
  }

 private:
  mapped_memory_internal::GuardState saved_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_MAPPED_MEMORY_GUARD_H_
