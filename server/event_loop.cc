#include "server/event_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <utility>

#include "absl/synchronization/notification.h"
#include "core/errno_status.h"
#include "core/os.h"

namespace vfio_user {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd epoll_fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd) return ErrnoError(errno, "epoll_create1 failed");
  UniqueFd wake_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd) return ErrnoError(errno, "eventfd failed");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd.get();
  if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, wake_fd.get(), &ev) != 0) {
    return ErrnoError(errno, "epoll_ctl(wake fd) failed");
  }
  return std::unique_ptr<EventLoop>(
      new EventLoop(std::move(epoll_fd), std::move(wake_fd)));
}

EventLoop::EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd)
    : epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)) {}

EventLoop::~EventLoop() {
  Stop();
  Join();
}

bool EventLoop::IsLoopThread() const {
  return loop_thread_id_.load() == std::this_thread::get_id();
}

void EventLoop::Wake() {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(wake_fd_.get(), &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
}

void EventLoop::Stop() {
  stop_ = true;
  Wake();
}

void EventLoop::StartThread(std::string name) {
  stop_ = false;
  thread_ = std::thread([this, name] {
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    Run();
  });
}

void EventLoop::Join() {
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) {
    thread_.join();
  }
}

void EventLoop::Post(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    posted_.push_back(std::move(fn));
    has_posted_.store(true, std::memory_order_release);
  }
  // The loop thread drains posted work before it waits again: no wake-up
  // (two syscalls) needed from there.
  if (!IsLoopThread()) Wake();
}

void EventLoop::RunSync(std::function<void()> fn) {
  if (IsLoopThread()) {
    fn();
    return;
  }
  absl::Notification done;
  Post([&] {
    fn();
    done.Notify();
  });
  done.WaitForNotification();
}

bool EventLoop::DrainPosted() {
  if (!has_posted_.load(std::memory_order_acquire)) return false;
  std::vector<std::function<void()>> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(posted_);
    has_posted_.store(false, std::memory_order_release);
  }
  for (auto& fn : batch) fn();
  return !batch.empty();
}

EventLoop::TimerId EventLoop::RunAfter(absl::Duration delay,
                                       std::function<void()> fn) {
  TimerId id;
  {
    absl::MutexLock lock(&mu_);
    id = next_timer_id_++;
    timers_[id] = Timer{absl::Now() + delay, std::move(fn)};
    has_timers_.store(true, std::memory_order_release);
  }
  // The loop thread recomputes its timeout before it waits again.
  if (!IsLoopThread()) Wake();
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  absl::MutexLock lock(&mu_);
  timers_.erase(id);
  has_timers_.store(!timers_.empty(), std::memory_order_release);
}

int EventLoop::NextTimeoutMs() {
  if (!has_posted_.load(std::memory_order_acquire) &&
      !has_timers_.load(std::memory_order_acquire)) {
    return -1;
  }
  absl::MutexLock lock(&mu_);
  if (!posted_.empty()) return 0;
  if (timers_.empty()) return -1;
  absl::Time earliest = absl::InfiniteFuture();
  for (const auto& [id, t] : timers_) earliest = std::min(earliest, t.due);
  absl::Duration left = earliest - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

bool EventLoop::RunDueTimers() {
  if (!has_timers_.load(std::memory_order_acquire)) return false;
  std::vector<std::function<void()>> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (auto it = timers_.begin(); it != timers_.end();) {
      if (it->second.due <= now) {
        due.push_back(std::move(it->second.fn));
        timers_.erase(it++);
      } else {
        ++it;
      }
    }
    has_timers_.store(!timers_.empty(), std::memory_order_release);
  }
  for (auto& fn : due) fn();
  return !due.empty();
}

void EventLoop::Run() {
  loop_thread_id_ = std::this_thread::get_id();
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  while (!stop_.load()) {
#if VFIO_USER_RAW_SOCKET_SYSCALLS
    // The raw syscall: libc's epoll_wait() is a pthread cancellation point
    // (two extra calls per wake-up; we never cancel threads).
    int n = static_cast<int>(::syscall(SYS_epoll_wait, epoll_fd_.get(), events,
                                       kMaxEvents, NextTimeoutMs()));
#else
    int n = ::epoll_wait(epoll_fd_.get(), events, kMaxEvents, NextTimeoutMs());
#endif
    if (n < 0) {
      if (errno == EINTR) continue;
      break;  // epoll fd broken: nothing sensible left to do
    }
    DispatchEvents(events, n);
    RunDueTimers();
    DrainPosted();
  }
  DrainPosted();
  loop_thread_id_ = std::thread::id();
}

bool EventLoop::RunUntilIdle(int max_rounds) {
  loop_thread_id_ = std::this_thread::get_id();
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  bool idle = false;
  for (int round = 0; round < max_rounds && !idle; ++round) {
    int n = ::epoll_wait(epoll_fd_.get(), events, kMaxEvents, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    const int fd_events = DispatchEvents(events, n);
    const bool timers = RunDueTimers();
    const bool posted = DrainPosted();
    idle = fd_events == 0 && !timers && !posted;
  }
  loop_thread_id_ = std::thread::id();
  return idle;
}

int EventLoop::DispatchEvents(const epoll_event* events, int n) {
  int fd_events = 0;
  for (int i = 0; i < n; ++i) {
    const int fd = events[i].data.fd;
    if (fd == wake_fd_.get()) {
      uint64_t count;
      while (::read(wake_fd_.get(), &count, sizeof(count)) > 0) {
      }
      continue;
    }
    auto it = watches_.find(fd);
    if (it == watches_.end()) continue;  // unwatched by an earlier callback
    ++fd_events;
    // Hold the callback alive even if it unwatches itself.
    std::shared_ptr<FdCallback> cb = it->second.callback;
    (*cb)(events[i].events);
  }
  return fd_events;
}

absl::Status EventLoop::WatchFd(int fd, uint32_t events, FdCallback callback) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  auto it = watches_.find(fd);
  const int op = it == watches_.end() ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  if (::epoll_ctl(epoll_fd_.get(), op, fd, &ev) != 0) {
    return ErrnoError(errno, "epoll_ctl(watch) failed");
  }
  watches_[fd] = Watch_{events, std::make_shared<FdCallback>(std::move(callback))};
  return absl::OkStatus();
}

absl::Status EventLoop::ModifyFd(int fd, uint32_t events) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return ErrnoError(ENOENT, "fd not watched");
  if (it->second.events == events) return absl::OkStatus();
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return ErrnoError(errno, "epoll_ctl(modify) failed");
  }
  it->second.events = events;
  return absl::OkStatus();
}

void EventLoop::UnwatchFd(int fd) {
  if (watches_.erase(fd) > 0) {
    ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
}

absl::Status EventLoop::Watch(int fd, std::function<void()> on_readable) {
  return WatchFd(fd, EPOLLIN,
                 [cb = std::move(on_readable)](uint32_t) { cb(); });
}

void EventLoop::Unwatch(int fd) { UnwatchFd(fd); }

}  // namespace vfio_user
