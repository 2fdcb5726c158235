// EventHub: the daemon's ordered stream of device events, with revisions,
// a bounded history for resuming watches, and blocking waits for watchers.
//
// Revisions are assigned here, strictly increasing. The first revision of a
// daemon instance is the wall-clock time in microseconds at startup, so a
// restarted daemon starts above every revision its predecessor handed out
// (a watcher resuming from an old instance's revision then gets
// FAILED_PRECONDITION instead of silently wrong events).
//
// Thread-safety: thread-safe. Publish() is called by the supervisor loop;
// watchers (gRPC handler threads) block in WaitForEvents().
#ifndef VFIO_USER_CONTROLPLANE_EVENT_HUB_H_
#define VFIO_USER_CONTROLPLANE_EVENT_HUB_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/vfio_user/v1/device.pb.h"

namespace vfio_user::controlplane {

class EventHub {
 public:
  // Keeps the last `history_limit` events. `first_revision` - 1 is the
  // revision before any event.
  EventHub(size_t history_limit, uint64_t first_revision);

  // Assigns the next revision to `event` (and to event.device.revision),
  // stores it and wakes the watchers. Returns the revision.
  uint64_t Publish(vfio_user::v1::DeviceEvent event);

  // The revision of the last event (first_revision - 1 before any).
  uint64_t current_revision() const;

  // Events with revision > `after`, in order, at most `max`. Waits until
  // there is at least one, `deadline` passes (empty result) or Shutdown().
  // FAILED_PRECONDITION if events after `after` were already dropped from
  // the history; INVALID_ARGUMENT if `after` is in the future; UNAVAILABLE
  // after Shutdown().
  absl::StatusOr<std::vector<vfio_user::v1::DeviceEvent>> WaitForEvents(
      uint64_t after, absl::Time deadline, size_t max);

  // Wakes every watcher; later waits fail with UNAVAILABLE.
  void Shutdown();

 private:
  mutable absl::Mutex mu_;
  const size_t history_limit_;
  uint64_t last_revision_ ABSL_GUARDED_BY(mu_);
  std::deque<vfio_user::v1::DeviceEvent> history_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

// The first revision for a daemon starting now.
uint64_t InitialRevision();

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_EVENT_HUB_H_
