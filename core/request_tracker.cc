#include "core/request_tracker.h"

#include <algorithm>
#include <cerrno>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"

namespace vfio_user {

// One outstanding (or just resolved) request. Pooled: see AllocateSlotLocked.
struct RequestTracker::Slot {
  uint16_t msg_id = 0;
  uint16_t cmd = 0;
  absl::Time deadline;
  Callback callback;  // empty for a blocking request
  // A blocking request's Pending handle still refers to the slot: it goes
  // back to the pool only once the handle let go of it (WaitFor, GiveUp).
  bool handle_alive = false;
  // Written once under the tracker's mutex; then read by the waiter.
  bool resolved = false;
  std::optional<absl::StatusOr<Message>> result;  // blocking requests only
  absl::CondVar resolved_cv;
};

namespace {

constexpr uint32_t kIdSpace = 1u << 16;
// Idle slots kept for reuse; more are freed (a burst of thousands of
// outstanding requests does not pin their slots forever).
constexpr size_t kMaxPooledSlots = 256;

}  // namespace

// A callback with its argument, run once the tracker's mutex is released.
struct RequestTracker::Delivery {
  Callback callback;
  std::optional<absl::StatusOr<Message>> result;
  void Run() {
    if (callback) callback(*std::move(result));
  }
};

// ---------------------------------------------------------------------------
// Pending

RequestTracker::Pending& RequestTracker::Pending::operator=(Pending&& other) {
  if (this != &other) {
    Cancel();
    tracker_ = other.tracker_;
    slot_ = other.slot_;
    other.slot_ = nullptr;
  }
  return *this;
}

RequestTracker::Pending::~Pending() { Cancel(); }

uint16_t RequestTracker::Pending::msg_id() const {
  return slot_ ? slot_->msg_id : 0;
}

uint16_t RequestTracker::Pending::cmd() const { return slot_ ? slot_->cmd : 0; }

absl::StatusOr<Message> RequestTracker::Pending::Wait(absl::Time deadline) {
  if (!slot_) return ErrnoError(EINVAL, "Wait() on an empty request handle");
  Slot* slot = slot_;
  slot_ = nullptr;
  return tracker_->WaitFor(slot, deadline);
}

void RequestTracker::Pending::Cancel() {
  if (!slot_) return;
  Slot* slot = slot_;
  slot_ = nullptr;
  tracker_->GiveUp(slot, ErrnoError(ECANCELED,
                                    absl::StrCat(CommandName(slot->cmd),
                                                 " request cancelled")));
}

// ---------------------------------------------------------------------------
// RequestTracker

RequestTracker::RequestTracker(Options options) : options_(options) {}

RequestTracker::~RequestTracker() {
  FailAll(ErrnoError(ECANCELED, "request tracker destroyed"));
  absl::MutexLock lock(&mu_);
  for (Slot* slot : free_slots_) delete slot;
  free_slots_.clear();
}

RequestTracker::Slot* RequestTracker::AllocateSlotLocked() {
  if (free_slots_.empty()) return new Slot();
  Slot* slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

void RequestTracker::RecycleSlotLocked(Slot* slot) {
  if (free_slots_.size() >= kMaxPooledSlots) {
    delete slot;
    return;
  }
  slot->callback = nullptr;
  slot->result.reset();
  slot->handle_alive = false;
  slot->resolved = false;
  free_slots_.push_back(slot);
}

absl::StatusOr<RequestTracker::Pending> RequestTracker::Start(
    Command cmd, absl::Time deadline) {
  absl::StatusOr<Slot*> slot = Register(static_cast<uint16_t>(cmd), deadline,
                                        Callback(), /*blocking=*/true);
  if (!slot.ok()) return slot.status();
  return Pending(this, *slot);
}

absl::StatusOr<uint16_t> RequestTracker::StartAsync(Command cmd,
                                                    absl::Time deadline,
                                                    Callback done) {
  if (!done) return ErrnoError(EINVAL, "StartAsync() needs a callback");
  absl::StatusOr<Slot*> slot = Register(static_cast<uint16_t>(cmd), deadline,
                                        std::move(done), /*blocking=*/false);
  if (!slot.ok()) return slot.status();
  return (*slot)->msg_id;
}

absl::StatusOr<RequestTracker::Slot*> RequestTracker::Register(
    uint16_t cmd, absl::Time deadline, Callback done, bool blocking) {
  absl::MutexLock lock(&mu_);
  if (outstanding_.size() + abandoned_.size() >= kIdSpace) {
    return ErrnoError(EAGAIN, "every msg_id is in use");
  }
  // Some id is free (checked above): take the next one in cyclic order
  // (one hash operation per id tried).
  uint16_t id = next_id_;
  Slot** entry = nullptr;
  for (;; ++id) {
    if (!abandoned_.empty() && abandoned_.contains(id)) continue;
    auto [it, inserted] = outstanding_.try_emplace(id, nullptr);
    if (inserted) {
      entry = &it->second;
      break;
    }
  }
  next_id_ = static_cast<uint16_t>(id + 1);

  Slot* slot = AllocateSlotLocked();
  slot->msg_id = id;
  slot->cmd = cmd;
  slot->deadline = deadline;
  slot->callback = std::move(done);
  slot->handle_alive = blocking;
  *entry = slot;
  ++stats_.started;
  return slot;
}

RequestTracker::Delivery RequestTracker::ResolveLocked(
    Slot* slot, absl::StatusOr<Message> result) {
  auto it = outstanding_.find(slot->msg_id);
  if (it != outstanding_.end() && it->second == slot) outstanding_.erase(it);
  return FinishLocked(slot, std::move(result));
}

RequestTracker::Delivery RequestTracker::FinishLocked(
    Slot* slot, absl::StatusOr<Message> result) {
  slot->resolved = true;
  Delivery delivery;
  if (slot->callback) {
    delivery.callback = std::move(slot->callback);
    delivery.result.emplace(std::move(result));
    RecycleSlotLocked(slot);
  } else {
    slot->result.emplace(std::move(result));
    slot->resolved_cv.SignalAll();
    if (!slot->handle_alive) RecycleSlotLocked(slot);
  }
  return delivery;
}

void RequestTracker::AbandonLocked(uint16_t msg_id) {
  if (options_.max_abandoned == 0) return;
  const uint64_t sequence = ++abandon_sequence_;
  abandoned_[msg_id] = sequence;
  abandoned_fifo_.emplace_back(msg_id, sequence);
  // Entries of ids whose late reply came (or that were abandoned again) are
  // stale; drop them in bulk before they outnumber the live ones.
  if (abandoned_fifo_.size() > 2 * options_.max_abandoned) {
    std::deque<std::pair<uint16_t, uint64_t>> live;
    for (const auto& entry : abandoned_fifo_) {
      if (IsLiveAbandonmentLocked(entry)) live.push_back(entry);
    }
    abandoned_fifo_.swap(live);
  }
  while (abandoned_.size() > options_.max_abandoned) {
    const auto oldest = abandoned_fifo_.front();
    abandoned_fifo_.pop_front();
    if (IsLiveAbandonmentLocked(oldest)) abandoned_.erase(oldest.first);
  }
}

bool RequestTracker::IsLiveAbandonmentLocked(
    const std::pair<uint16_t, uint64_t>& entry) const {
  auto it = abandoned_.find(entry.first);
  return it != abandoned_.end() && it->second == entry.second;
}

void RequestTracker::GiveUp(Slot* slot, absl::Status failure) {
  Delivery delivery;
  {
    absl::MutexLock lock(&mu_);
    slot->handle_alive = false;  // only Pending handles give up
    if (slot->resolved) {
      RecycleSlotLocked(slot);
      return;
    }
    AbandonLocked(slot->msg_id);
    delivery = ResolveLocked(slot, std::move(failure));  // recycles it
  }
  delivery.Run();
}

absl::StatusOr<Message> RequestTracker::WaitFor(Slot* slot,
                                                absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  const absl::Time until = std::min(deadline, slot->deadline);
  while (!slot->resolved) {
    if (slot->resolved_cv.WaitWithDeadline(&mu_, until) && !slot->resolved &&
        absl::Now() >= until) {
      ++stats_.timed_out;
      AbandonLocked(slot->msg_id);
      ResolveLocked(slot, ErrnoError(ETIMEDOUT,
                                     absl::StrCat(CommandName(slot->cmd),
                                                  " request ", slot->msg_id,
                                                  " timed out")));
    }
  }
  absl::StatusOr<Message> result = *std::move(slot->result);
  slot->handle_alive = false;
  RecycleSlotLocked(slot);
  return result;
}

bool RequestTracker::Claim(uint16_t msg_id, uint16_t cmd) {
  absl::MutexLock lock(&mu_);
  auto it = outstanding_.find(msg_id);
  if (it == outstanding_.end()) return false;
  Slot* slot = it->second;
  if (slot->cmd != cmd || !slot->callback) return false;
  outstanding_.erase(it);
  ++stats_.delivered;
  RecycleSlotLocked(slot);  // drops the callback unrun
  return true;
}

absl::Status RequestTracker::Complete(Message reply) {
  const Header h = reply.header;  // copied: `reply` may be moved out below
  if (!h.is_reply()) {
    absl::MutexLock lock(&mu_);
    ++stats_.unexpected;
    return ErrnoError(EINVAL, absl::StrCat(CommandName(h.cmd), " message ",
                                           h.msg_id, " is not a reply"));
  }
  Delivery delivery;
  bool late = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = outstanding_.find(h.msg_id);
    if (it == outstanding_.end()) {
      if (abandoned_.erase(h.msg_id) == 0) {
        ++stats_.unexpected;
        return ErrnoError(EPROTO, absl::StrCat("reply ", h.msg_id, " (",
                                               CommandName(h.cmd),
                                               ") matches no request"));
      }
      ++stats_.late_dropped;  // its requester gave up; the id is free again
      late = true;
    } else {
      Slot* slot = it->second;
      if (slot->cmd != h.cmd) {
        ++stats_.unexpected;
        return ErrnoError(EPROTO, absl::StrCat("reply ", h.msg_id, " is for ",
                                               CommandName(h.cmd),
                                               " but the request was ",
                                               CommandName(slot->cmd)));
      }
      ++stats_.delivered;
      outstanding_.erase(it);  // one lookup
      absl::Status status = ReplyStatus(reply);
      if (status.ok()) {
        delivery = FinishLocked(slot, std::move(reply));
      } else {
        delivery = FinishLocked(slot, std::move(status));
      }
    }
  }
  if (late) {
    Log(LogLevel::kWarn, "request_tracker",
        "dropped the late reply of a request that was given up",
        {{"msg_id", absl::StrCat(h.msg_id)}, {"cmd", CommandName(h.cmd)}});
    return absl::OkStatus();  // `reply` (and its fds) is dropped here
  }
  delivery.Run();
  return absl::OkStatus();
}

void RequestTracker::ExpireOverdue(absl::Time now) {
  std::vector<Delivery> deliveries;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Slot*> overdue;
    for (const auto& [id, slot] : outstanding_) {
      if (slot->deadline <= now) overdue.push_back(slot);
    }
    for (Slot* slot : overdue) {
      ++stats_.timed_out;
      AbandonLocked(slot->msg_id);
      const std::string what = absl::StrCat(
          CommandName(slot->cmd), " request ", slot->msg_id, " timed out");
      deliveries.push_back(ResolveLocked(slot, ErrnoError(ETIMEDOUT, what)));
    }
  }
  for (Delivery& delivery : deliveries) delivery.Run();
}

absl::Time RequestTracker::NextDeadline() const {
  absl::MutexLock lock(&mu_);
  absl::Time earliest = absl::InfiniteFuture();
  for (const auto& [id, slot] : outstanding_) {
    earliest = std::min(earliest, slot->deadline);
  }
  return earliest;
}

void RequestTracker::FailAll(const absl::Status& status) {
  const absl::Status failure =
      status.ok() ? ErrnoError(ECANCELED, "FailAll() with an OK status")
                  : status;
  std::vector<Delivery> deliveries;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Slot*> all;
    all.reserve(outstanding_.size());
    for (const auto& [id, slot] : outstanding_) all.push_back(slot);
    for (Slot* slot : all) {
      deliveries.push_back(ResolveLocked(slot, failure));
    }
    abandoned_.clear();
    abandoned_fifo_.clear();
  }
  for (Delivery& delivery : deliveries) delivery.Run();
}

size_t RequestTracker::outstanding() const {
  absl::MutexLock lock(&mu_);
  return outstanding_.size();
}

RequestTracker::Stats RequestTracker::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

// ---------------------------------------------------------------------------
// Free functions

absl::Status ReplyStatus(const Message& reply) {
  // An error reply's payload (libvfio-user sends some) is ignored.
  if (reply.header.is_error()) return ErrorFromReply(reply.header);
  if (reply.fds_truncated) {
    return ErrnoError(EINVAL, absl::StrCat(CommandName(reply.header.cmd),
                                           " reply carried too many fds"));
  }
  return absl::OkStatus();
}

absl::Status ErrorFromReply(const Header& reply) {
  const int err = SanitizePeerErrno(reply.error);
  return ErrnoError(err, absl::StrCat(CommandName(reply.cmd),
                                      " failed on the peer: errno ", err));
}

absl::Status SendReplyParts(Connection& conn, const Header& request,
                            absl::Span<const uint8_t> part1,
                            absl::Span<const uint8_t> part2,
                            absl::Span<const int> fds) {
  if (request.no_reply()) return absl::OkStatus();
  Header reply;
  reply.msg_id = request.msg_id;
  reply.cmd = request.cmd;
  reply.flags = kFlagsTypeReply;
  return conn.SendParts(reply, part1, part2, fds);
}

absl::Status SendErrorReply(Connection& conn, const Header& request,
                            const absl::Status& error) {
  if (request.no_reply()) return absl::OkStatus();
  const Message reply = MakeErrorReply(request, ErrnoOf(error));
  return conn.SendParts(reply.header, {});
}

absl::Status SendReply(Connection& conn, const Header& request,
                       const absl::StatusOr<std::vector<uint8_t>>& result) {
  if (!result.ok()) return SendErrorReply(conn, request, result.status());
  return SendReplyParts(conn, request, *result);
}

}  // namespace vfio_user
