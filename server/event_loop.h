// EventLoop: one epoll thread that serves many devices' sockets.
//
// The server's threading model (docs/ARCHITECTURE.md): every device is bound
// to one EventLoop; all of its protocol handling and device callbacks run on
// that loop's thread, so device state needs no locks against the protocol.
// Slow work (a DMA engine, anything that may wait for the client) moves to a
// worker thread and comes back with Post(). Idle devices cost one epoll
// registration each, no thread.
//
// Thread-safety: Post(), RunAfter() and Stop() may be called from any thread.
// WatchFd()/UnwatchFd()/FdWatcher methods must be called on the loop thread
// (or before Run() starts).
#ifndef VFIO_USER_SERVER_EVENT_LOOP_H_
#define VFIO_USER_SERVER_EVENT_LOOP_H_

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/unique_fd.h"
#include "server/fd_watcher.h"

namespace vfio_user {

class EventLoop : public FdWatcher {
 public:
  // `events` passed to callbacks are EPOLLIN/EPOLLOUT/EPOLLHUP/EPOLLERR bits.
  using FdCallback = std::function<void(uint32_t events)>;
  using TimerId = uint64_t;

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  ~EventLoop() override;

  // Runs the loop on the calling thread until Stop().
  void Run();
  // Runs the loop on the calling thread until nothing is left to do now: no
  // fd reports an event, nothing is posted and no timer is due (timers due
  // later do not keep it running), or for at most `max_rounds` rounds of
  // epoll; returns whether it became idle (false: something stays busy, e.g.
  // an fd that is always ready). For single-threaded tests and fuzzers that
  // drive a loop step by step. REQUIRES: the loop is not running on another
  // thread.
  bool RunUntilIdle(int max_rounds = 100000);
  // Starts a dedicated thread running Run(); Join()/destructor stop it.
  void StartThread(std::string name = "vfio-user-loop");
  void Stop();
  void Join();
  bool IsLoopThread() const;

  // Queues `fn` to run on the loop thread (FIFO). Safe from any thread.
  void Post(std::function<void()> fn);
  // Runs `fn` on the loop thread and waits for it (runs inline when already
  // on the loop thread). REQUIRES: the loop is running or about to run.
  void RunSync(std::function<void()> fn);

  // Registers `fd` for `events` (level-triggered). Replaces an existing
  // registration. The callback may unwatch or re-watch any fd, itself too.
  absl::Status WatchFd(int fd, uint32_t events, FdCallback callback);
  absl::Status ModifyFd(int fd, uint32_t events);
  void UnwatchFd(int fd);

  // FdWatcher (readable-only convenience used by device components).
  absl::Status Watch(int fd, std::function<void()> on_readable) override;
  void Unwatch(int fd) override;

  // One-shot timer. Safe from any thread. Cancel is a no-op if it ran.
  TimerId RunAfter(absl::Duration delay, std::function<void()> fn);
  void CancelTimer(TimerId id);

 private:
  EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd);
  void Wake();
  // Runs the callbacks of `n` epoll events; returns how many were fd events
  // (the wake-up eventfd not counted).
  int DispatchEvents(const epoll_event* events, int n);
  // Runs what was posted; returns whether there was anything.
  bool DrainPosted();
  // Runs the timers that are due; returns whether there were any.
  bool RunDueTimers();
  int NextTimeoutMs();

  struct Watch_ {
    uint32_t events = 0;
    std::shared_ptr<FdCallback> callback;
  };
  struct Timer {
    absl::Time due;
    std::function<void()> fn;
  };

  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  std::atomic<bool> stop_{false};
  std::atomic<std::thread::id> loop_thread_id_{};
  std::thread thread_;

  absl::flat_hash_map<int, Watch_> watches_;  // loop thread only

  absl::Mutex mu_;
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TimerId, Timer> timers_ ABSL_GUARDED_BY(mu_);
  TimerId next_timer_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Lock-free hints for the loop's per-iteration checks (written under mu_):
  // a loop iteration with nothing posted and no timers takes no lock. A
  // stale "nothing" is harmless: whoever adds work from another thread
  // wakes the loop afterwards.
  std::atomic<bool> has_posted_{false};
  std::atomic<bool> has_timers_{false};
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_EVENT_LOOP_H_
