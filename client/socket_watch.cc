#include "client/socket_watch.h"

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/time/clock.h"

namespace vfio_user {

SocketWatch::SocketWatch(const std::string& socket_path, int wake_fd)
    : wake_fd_(wake_fd) {
  const size_t slash = socket_path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : socket_path.substr(0, std::max<size_t>(slash, 1));
  name_ = slash == std::string::npos ? socket_path : socket_path.substr(slash + 1);
  if (name_.empty()) return;
  UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd.valid()) return;
  if (::inotify_add_watch(fd.get(), dir.c_str(),
                          IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_ONLYDIR) < 0) {
    return;
  }
  inotify_ = std::move(fd);
}

SocketWatch::Woken SocketWatch::Wait(absl::Time deadline) {
  for (;;) {
    struct pollfd fds[2];
    nfds_t count = 0;
    if (wake_fd_ >= 0) fds[count++] = {wake_fd_, POLLIN, 0};
    const nfds_t inotify_at = count;
    if (inotify_.valid()) fds[count++] = {inotify_.get(), POLLIN, 0};
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return Woken::kDeadline;
    // Round up: never wake a little early and spin.
    const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
    const int n = ::poll(fds, count, static_cast<int>(std::min<int64_t>(ms, 60'000)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Woken::kDeadline;  // cannot wait on the fds: treat as a timeout
    }
    if (n == 0) continue;  // the loop re-checks the deadline
    if (wake_fd_ >= 0 && (fds[0].revents & POLLIN) != 0) return Woken::kWake;
    if (inotify_.valid() && fds[inotify_at].revents != 0 && DrainEvents()) {
      return Woken::kSocketEvent;
    }
  }
}

void SocketWatch::DiscardEvents() {
  if (inotify_.valid()) DrainEvents();
}

bool SocketWatch::DrainEvents() {
  bool named = false;
  alignas(struct inotify_event) char buf[4096];
  for (;;) {
    const ssize_t n = ::read(inotify_.get(), buf, sizeof(buf));
    if (n <= 0) break;  // EAGAIN: drained (errors: nothing more to learn)
    for (ssize_t at = 0; at + static_cast<ssize_t>(sizeof(struct inotify_event)) <= n;) {
      struct inotify_event event;
      std::memcpy(&event, buf + at, sizeof(event));
      if ((event.mask & IN_Q_OVERFLOW) != 0) named = true;
      if (event.len > 0 &&
          at + static_cast<ssize_t>(sizeof(event) + event.len) <= n) {
        const char* name = buf + at + sizeof(event);
        if (::strnlen(name, event.len) == name_.size() &&
            std::memcmp(name, name_.data(), name_.size()) == 0) {
          named = true;
        }
      }
      at += static_cast<ssize_t>(sizeof(event) + event.len);
    }
  }
  return named;
}

}  // namespace vfio_user
