#include "core/os.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace vfio_user {
namespace {

// The real syscalls. Stateless, hence thread-safe.
class RealOs final : public Os {
 public:
  ssize_t SendMsg(int fd, const struct msghdr* msg, int flags) override {
    // A vanished peer must surface as EPIPE, never as a process-killing
    // SIGPIPE.
#if VFIO_USER_RAW_SOCKET_SYSCALLS
    // Raw syscalls: libc's wrappers are pthread cancellation points, which
    // costs two calls around every message (we never cancel threads).
    return ::syscall(SYS_sendmsg, fd, msg, flags | MSG_NOSIGNAL);
#else
    return ::sendmsg(fd, msg, flags | MSG_NOSIGNAL);
#endif
  }
  ssize_t RecvMsg(int fd, struct msghdr* msg, int flags) override {
#if VFIO_USER_RAW_SOCKET_SYSCALLS
    return ::syscall(SYS_recvmsg, fd, msg, flags);
#else
    return ::recvmsg(fd, msg, flags);
#endif
  }
  int Poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) override {
    return ::poll(fds, nfds, timeout_ms);
  }
  int Close(int fd) override { return ::close(fd); }
};

}  // namespace

Os* Os::Default() {
  static Os* const os = new RealOs();  // never destroyed
  return os;
}

}  // namespace vfio_user
