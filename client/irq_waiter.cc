#include "client/irq_waiter.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user {

absl::StatusOr<std::unique_ptr<IrqWaiter>> IrqWaiter::Create(uint32_t vectors) {
  if (vectors == 0) return ErrnoError(EINVAL, "IrqWaiter needs >= 1 vector");
  std::unique_ptr<IrqWaiter> waiter(new IrqWaiter());
  waiter->epoll_.Reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!waiter->epoll_.valid()) return ErrnoError(errno, "epoll_create1");
  for (uint32_t i = 0; i < vectors; ++i) {
    UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd.valid()) return ErrnoError(errno, "eventfd");
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    if (::epoll_ctl(waiter->epoll_.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
      return ErrnoError(errno, "epoll_ctl ADD");
    }
    waiter->raw_fds_.push_back(fd.get());
    waiter->fds_.push_back(std::move(fd));
  }
  return waiter;
}

uint64_t IrqWaiter::Take(uint32_t vector) {
  if (vector >= raw_fds_.size()) return 0;
  uint64_t count = 0;
  ssize_t n;
  do {
    n = ::read(raw_fds_[vector], &count, sizeof(count));
  } while (n < 0 && errno == EINTR);
  return n == sizeof(count) ? count : 0;
}

absl::StatusOr<std::vector<IrqWaiter::Event>> IrqWaiter::Wait(
    absl::Duration timeout) {
  const absl::Time deadline = timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + timeout;
  std::vector<struct epoll_event> ready(std::min<size_t>(raw_fds_.size(), 64));
  for (;;) {
    int timeout_ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      const absl::Duration left = deadline - absl::Now();
      timeout_ms = left <= absl::ZeroDuration()
                       ? 0
                       : static_cast<int>(std::min<int64_t>(
                             absl::ToInt64Milliseconds(
                                 absl::Ceil(left, absl::Milliseconds(1))),
                             INT_MAX));
    }
    const int n = ::epoll_wait(epoll_.get(), ready.data(),
                               static_cast<int>(ready.size()), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "epoll_wait");
    }
    std::vector<Event> events;
    for (int i = 0; i < n; ++i) {
      const uint32_t vector = ready[i].data.u32;
      const uint64_t count = Take(vector);
      if (count > 0) events.push_back({vector, count});
    }
    if (!events.empty() || timeout_ms == 0) {
      std::sort(events.begin(), events.end(),
                [](const Event& a, const Event& b) { return a.vector < b.vector; });
      return events;
    }
  }
}

}  // namespace vfio_user
