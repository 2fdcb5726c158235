#include "controlplane/event_hub.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace vfio_user::controlplane {

uint64_t InitialRevision() {
  return static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
}

EventHub::EventHub(size_t history_limit, uint64_t first_revision)
    : history_limit_(std::max<size_t>(history_limit, 1)),
      last_revision_(first_revision - 1) {}

uint64_t EventHub::Publish(vfio_user::v1::DeviceEvent event) {
  absl::MutexLock lock(&mu_);
  const uint64_t revision = ++last_revision_;
  event.set_revision(revision);
  if (event.has_device()) event.mutable_device()->set_revision(revision);
  history_.push_back(std::move(event));
  while (history_.size() > history_limit_) history_.pop_front();
  return revision;
}

uint64_t EventHub::current_revision() const {
  absl::MutexLock lock(&mu_);
  return last_revision_;
}

absl::StatusOr<std::vector<vfio_user::v1::DeviceEvent>> EventHub::WaitForEvents(
    uint64_t after, absl::Time deadline, size_t max) {
  absl::MutexLock lock(&mu_);
  if (after > last_revision_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "since_revision: ", after, " is newer than the current revision ", last_revision_));
  }
  // The history holds revisions [oldest, last_revision_]; checked before
  // and after waiting, as the wait may push old events out.
  auto oldest = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return history_.empty() ? last_revision_ + 1 : history_.front().revision();
  };
  auto compacted = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "since_revision: events after ", after, " are no longer retained (oldest is ",
        oldest(), "); list the devices (or watch with since_revision 0) and resume "
        "from the revision you get"));
  };
  if (after + 1 < oldest()) return compacted();
  auto ready = [this, after]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shutdown_ || last_revision_ > after;
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  if (shutdown_) return absl::UnavailableError("the daemon is shutting down");
  std::vector<vfio_user::v1::DeviceEvent> out;
  if (last_revision_ <= after) return out;
  if (after + 1 < oldest()) return compacted();
  const uint64_t first = oldest();
  for (size_t i = after + 1 - first; i < history_.size() && out.size() < max; ++i) {
    out.push_back(history_[i]);
  }
  return out;
}

void EventHub::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

}  // namespace vfio_user::controlplane
