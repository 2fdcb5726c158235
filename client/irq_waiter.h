// IrqWaiter: a set of eventfds, one per interrupt vector, and a way to wait
// for them.
//
// Wire the fds to a device with Client::SetIrqEventfds(index, start, fds());
// the server then writes to vector i's eventfd when it raises that
// interrupt, and Wait() reports it. Each eventfd is a counter: several
// interrupts raised before a Wait() are reported once, with their count.
//
// Thread-safety: Wait() and Take() may be called from one thread at a time;
// fds() from any thread.
#ifndef VFIO_USER_CLIENT_IRQ_WAITER_H_
#define VFIO_USER_CLIENT_IRQ_WAITER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/unique_fd.h"

namespace vfio_user {

class IrqWaiter {
 public:
  struct Event {
    uint32_t vector = 0;  // 0-based, relative to the fds() array
    uint64_t count = 0;   // interrupts since the last report
  };

  // Creates `vectors` non-blocking eventfds (vectors >= 1) and an epoll set.
  static absl::StatusOr<std::unique_ptr<IrqWaiter>> Create(uint32_t vectors);
  IrqWaiter(const IrqWaiter&) = delete;
  IrqWaiter& operator=(const IrqWaiter&) = delete;

  // The eventfds, vector i at [i]. Owned by the waiter.
  absl::Span<const int> fds() const { return raw_fds_; }
  uint32_t vectors() const { return static_cast<uint32_t>(raw_fds_.size()); }

  // Waits up to `timeout` (InfiniteDuration = forever) for any vector to
  // fire; returns every vector that fired (each counter is read, which
  // resets it), in vector order. Empty on timeout.
  absl::StatusOr<std::vector<Event>> Wait(absl::Duration timeout);

  // Reads and resets vector `vector`'s counter without waiting (0 if it has
  // not fired).
  uint64_t Take(uint32_t vector);

 private:
  IrqWaiter() = default;
  std::vector<UniqueFd> fds_;
  std::vector<int> raw_fds_;
  UniqueFd epoll_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_IRQ_WAITER_H_
