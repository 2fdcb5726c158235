// Os: the small set of OS calls the transport makes, behind an interface.
//
// Production code uses Os::Default() (the real syscalls). Tests substitute a
// FaultInjectingOs (core/fault_injecting_os.h) that returns short reads and
// writes, EINTR, EAGAIN or a hang-up at a chosen byte, so partial-message and
// disconnect behaviour is testable deterministically (the LevelDB Env idea).
// Implementations must be thread-safe.
#ifndef VFIO_USER_CORE_OS_H_
#define VFIO_USER_CORE_OS_H_

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>

// 1 when the hot socket calls (sendmsg, recvmsg, epoll_wait) bypass libc
// (raw syscall(2): no cancellation-point wrappers). ThreadSanitizer learns
// happens-before edges through fds from libc's wrappers, so its builds keep
// them (--config=tsan defines VFIO_USER_TSAN).
#if defined(VFIO_USER_TSAN) || defined(__SANITIZE_THREAD__)
#define VFIO_USER_RAW_SOCKET_SYSCALLS 0
#else
#define VFIO_USER_RAW_SOCKET_SYSCALLS 1
#endif

namespace vfio_user {

class Os {
 public:
  virtual ~Os() = default;
  // Same contracts as the syscalls: return -1 and set errno on failure.
  virtual ssize_t SendMsg(int fd, const struct msghdr* msg, int flags) = 0;
  virtual ssize_t RecvMsg(int fd, struct msghdr* msg, int flags) = 0;
  virtual int Poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) = 0;
  virtual int Close(int fd) = 0;

  // The process-wide real implementation. Never null; never destroyed.
  static Os* Default();
};

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_OS_H_
