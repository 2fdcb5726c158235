// FaultInjectingOs: an Os for tests that makes the real syscalls misbehave on
// cue, so partial-message, retry and disconnect paths of the transport run
// deterministically over real sockets.
//
// It wraps a real Os (the kernel still moves the bytes and the fds) and, per
// direction (send = SendMsg, receive = RecvMsg), can:
//   - cap every call to N bytes (N = 1 visits every byte boundary);
//   - fail K consecutive calls with an errno (EINTR / EAGAIN storms), either
//     from the next call on or once the stream reaches byte B;
//   - hang up at byte B: from then on a receive returns 0 (EOF) or -1 with an
//     errno such as ECONNRESET; a send returns -1 with EPIPE (or the errno
//     given);
// and it can fail Close() (the fd is still closed, as Linux does) and Poll().
//
// Byte offsets count the bytes that went through this Os in one direction,
// over all fds, since construction. A call that would cross a scheduled
// offset is shortened to end exactly at it, so the fault hits the call that
// starts at that byte. Give each FaultInjectingOs to a single Connection (and
// drive each direction from one thread) for offsets to mean stream offsets.
//
// Thread-safety: all methods are thread-safe. The wrapped syscall runs
// without the internal lock held.
#ifndef VFIO_USER_CORE_FAULT_INJECTING_OS_H_
#define VFIO_USER_CORE_FAULT_INJECTING_OS_H_

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/os.h"

namespace vfio_user {

class FaultInjectingOs final : public Os {
 public:
  enum class Direction { kSend = 0, kRecv = 1 };

  // `base` performs the real calls; nullptr = Os::Default(). It must outlive
  // this object.
  explicit FaultInjectingOs(Os* base = nullptr);
  FaultInjectingOs(const FaultInjectingOs&) = delete;
  FaultInjectingOs& operator=(const FaultInjectingOs&) = delete;

  // Caps each call in `dir` to at most `max_bytes` bytes; 0 removes the cap.
  void SetMaxBytesPerCall(Direction dir, size_t max_bytes);

  // Makes `count` consecutive calls in `dir` return -1 with `err` (> 0)
  // without reaching the kernel. Without `at_byte` the storm starts with the
  // next call; with it, with the first call made once the stream has reached
  // byte `at_byte` (earlier calls are shortened to stop exactly there).
  // When several storms are due, the one scheduled first runs first.
  void InjectErrors(Direction dir, int err, int count,
                    std::optional<uint64_t> at_byte = std::nullopt);

  // From stream byte `at_byte` on, every call in `dir` behaves as if the peer
  // were gone: a receive returns 0 when `err` == 0 (orderly EOF), otherwise
  // -1 with `err`; a send returns -1 with `err` (EPIPE when `err` == 0).
  void HangUpAt(Direction dir, uint64_t at_byte, int err = 0);

  // The next `count` Close() calls return -1 with `err` after closing the fd.
  void FailCloses(int count, int err = EIO);

  // The next `count` Poll() calls return -1 with `err` (default EINTR).
  void InjectPollErrors(int count, int err = EINTR);

  // Removes every scheduled fault and cap (counters are kept).
  void Clear();

  // Bytes and calls that went through in `dir` (injected failures included
  // in calls).
  uint64_t bytes(Direction dir) const;
  uint64_t calls(Direction dir) const;
  // Number of failures this object made up (errors, hang-ups, closes, polls).
  uint64_t injected_faults() const;

  ssize_t SendMsg(int fd, const struct msghdr* msg, int flags) override;
  ssize_t RecvMsg(int fd, struct msghdr* msg, int flags) override;
  int Poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) override;
  int Close(int fd) override;

 private:
  struct ErrorStorm {
    std::optional<uint64_t> at_byte;  // nullopt: applies to the next call
    int err;
    int remaining;
  };
  struct DirectionState {
    size_t max_bytes_per_call = 0;
    std::vector<ErrorStorm> storms;  // applied in order
    std::optional<uint64_t> hang_up_at;
    int hang_up_err = 0;
    uint64_t bytes = 0;
    uint64_t calls = 0;
  };
  // What a call may do after the fault script has been consulted.
  struct CallPlan {
    bool fail = false;          // return -1 (errno = err), or 0 if err == 0
    int err = 0;
    size_t max_bytes = SIZE_MAX;  // cap for a call that goes through
  };

  CallPlan PlanCall(Direction dir);
  ssize_t Transfer(Direction dir, int fd, struct msghdr* msg, int flags);
  DirectionState& state(Direction dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return dirs_[static_cast<int>(dir)];
  }

  Os* const base_;
  mutable absl::Mutex mu_;
  DirectionState dirs_[2] ABSL_GUARDED_BY(mu_);
  int close_failures_ ABSL_GUARDED_BY(mu_) = 0;
  int close_err_ ABSL_GUARDED_BY(mu_) = EIO;
  int poll_failures_ ABSL_GUARDED_BY(mu_) = 0;
  int poll_err_ ABSL_GUARDED_BY(mu_) = EINTR;
  uint64_t injected_faults_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_FAULT_INJECTING_OS_H_
