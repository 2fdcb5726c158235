#include "bench/raw_peer.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "bench/harness.h"

namespace vfio_user {
namespace bench {
namespace {

constexpr size_t kReadChunk = 1 << 20;

// The child: answer until EOF.
int AnswerLoop(int fd, size_t request_bytes, size_t reply_bytes,
               size_t reply_every) {
  std::vector<uint8_t> in(std::max(kReadChunk, request_bytes));
  std::vector<uint8_t> out;
  uint64_t received = 0;   // bytes of the current partial request
  uint64_t unanswered = 0;  // whole requests not answered yet
  for (;;) {
    const ssize_t n = ::read(fd, in.data(), in.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    received += static_cast<uint64_t>(n);
    unanswered += received / request_bytes;
    received %= request_bytes;
    const uint64_t replies = unanswered / reply_every;
    unanswered %= reply_every;
    if (replies == 0 || reply_bytes == 0) continue;
    const size_t total = static_cast<size_t>(replies * reply_bytes);
    if (out.size() < total) out.resize(total);
    WriteFull(fd, out.data(), total);
  }
}

}  // namespace

std::unique_ptr<RawPeer> RawPeer::Start(size_t request_bytes,
                                        size_t reply_bytes,
                                        size_t reply_every) {
  int fds[2];
  CheckErrno(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0,
             "socketpair");
  const pid_t pid = ForkChild([&] {
    // Keep only our end: inherited ends of other peers' sockets would keep
    // them from seeing EOF when their parent closes.
    const int fd = fds[1];
    ::close_range(3, static_cast<unsigned>(fd) - 1, 0);
    ::close_range(static_cast<unsigned>(fd) + 1, ~0u, 0);
    return AnswerLoop(fd, request_bytes, reply_bytes,
                      std::max<size_t>(1, reply_every));
  });
  ::close(fds[1]);
  return std::unique_ptr<RawPeer>(
      new RawPeer(fds[0], pid, request_bytes, reply_bytes));
}

RawPeer::RawPeer(int fd, pid_t pid, size_t request_bytes, size_t reply_bytes)
    : fd_(fd),
      pid_(pid),
      request_bytes_(request_bytes),
      reply_bytes_(reply_bytes),
      out_(request_bytes),
      in_(reply_bytes) {}

RawPeer::~RawPeer() {
  ::close(fd_);
  WaitChild(pid_);
}

void RawPeer::RoundTrip() {
  WriteFull(fd_, out_.data(), request_bytes_);
  ReadFull(fd_, in_.data(), reply_bytes_);
}

void RawPeer::SendRequests(size_t n) {
  const size_t total = n * request_bytes_;
  if (out_.size() < total) out_.resize(total);
  WriteFull(fd_, out_.data(), total);
}

void RawPeer::ReceiveReplies(size_t n) {
  const size_t total = n * reply_bytes_;
  if (in_.size() < total) in_.resize(total);
  ReadFull(fd_, in_.data(), total);
}

}  // namespace bench
}  // namespace vfio_user
