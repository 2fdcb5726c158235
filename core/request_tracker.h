// RequestTracker: message ids and reply matching for the side of a
// connection that issues requests (the client library; the server for
// DMA_READ/DMA_WRITE).
//
// Start() picks a msg_id that no outstanding request uses and registers the
// request with its command and deadline; the caller then sends the command
// with that id. Whoever reads the socket hands every reply to Complete(),
// which matches it by msg_id AND cmd and delivers it to the requester:
//   - blocking form: Pending::Wait() returns the reply (or the failure);
//   - callback form: StartAsync()'s callback runs with it (event loops call
//     ExpireOverdue() from a timer armed for NextDeadline()).
// An error reply is delivered as ErrnoError(SanitizePeerErrno(error)); a
// reply whose fds were truncated as EINVAL.
//
// A request that times out (or is cancelled) fails with ETIMEDOUT
// (ECANCELED) and its id is remembered as abandoned: a late reply carrying it
// is dropped and counted, never taken as the answer to a later request, and
// Start() does not reuse the id until that late reply arrived or
// max_abandoned younger abandonments pushed it out. FailAll() fails every
// outstanding request at once (disconnect) and forgets abandoned ids (the
// stream that could carry their replies is gone).
//
// Thread-safety: all methods are thread-safe. Callbacks run on the thread
// that resolved the request (Complete, ExpireOverdue, FailAll, Cancel), with
// no internal lock held; they may call back into the tracker.
#ifndef VFIO_USER_CORE_REQUEST_TRACKER_H_
#define VFIO_USER_CORE_REQUEST_TRACKER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"

namespace vfio_user {

class RequestTracker {
 public:
  struct Options {
    // Abandoned ids remembered at most (oldest forgotten first). Bounds how
    // many ids a silent peer can take out of circulation.
    size_t max_abandoned = 4096;
  };

  struct Stats {
    uint64_t started = 0;
    uint64_t delivered = 0;    // replies handed to their requester
    uint64_t timed_out = 0;    // requests failed with ETIMEDOUT
    uint64_t late_dropped = 0; // replies to abandoned requests, dropped
    uint64_t unexpected = 0;   // replies Complete() rejected
  };

  using Callback = absl::AnyInvocable<void(absl::StatusOr<Message>)>;

 private:
  struct Slot;
  struct Delivery;

 public:
  // A blocking request's handle. Move-only. Destroying it (or calling
  // Cancel) before the reply was received abandons the request.
  // REQUIRES: it does not outlive its tracker.
  class Pending {
   public:
    Pending(Pending&& other) noexcept
        : tracker_(other.tracker_), slot_(other.slot_) {
      other.slot_ = nullptr;
    }
    Pending& operator=(Pending&& other);
    Pending(const Pending&) = delete;
    Pending& operator=(const Pending&) = delete;
    ~Pending();

    uint16_t msg_id() const;
    uint16_t cmd() const;

    // Blocks until the reply or a failure arrives, or until the request's
    // deadline or `deadline` (whichever is first) passes; a timeout fails
    // and abandons the request (ETIMEDOUT). May be called once.
    absl::StatusOr<Message> Wait(absl::Time deadline = absl::InfiniteFuture());

    // Gives up on the request (e.g. because sending it failed): it is
    // resolved with ECANCELED and its id abandoned if still outstanding.
    void Cancel();

   private:
    friend class RequestTracker;
    Pending(RequestTracker* tracker, Slot* slot)
        : tracker_(tracker), slot_(slot) {}
    RequestTracker* tracker_ = nullptr;
    // Held (see Slot::handle_alive) until waited on, cancelled or moved from.
    Slot* slot_ = nullptr;
  };

  RequestTracker() : RequestTracker(Options()) {}
  explicit RequestTracker(Options options);
  ~RequestTracker();  // fails whatever is still outstanding (ECANCELED)
  RequestTracker(const RequestTracker&) = delete;
  RequestTracker& operator=(const RequestTracker&) = delete;

  // Registers a request for `cmd` that fails with ETIMEDOUT at `deadline`.
  // Fails with EAGAIN when all 65536 ids are outstanding or abandoned.
  absl::StatusOr<Pending> Start(Command cmd,
                                absl::Time deadline = absl::InfiniteFuture());
  // Callback form: `done` runs exactly once, with the reply or the failure.
  // Deadlines are enforced by ExpireOverdue(). If this fails, `done` is not
  // run.
  absl::StatusOr<uint16_t> StartAsync(Command cmd, absl::Time deadline,
                                      Callback done);

  // For a requester that read its own reply: when request `msg_id` is
  // outstanding for `cmd`, takes it out WITHOUT running its callback (the
  // caller keeps the reply it holds) and returns true. Returns false, and
  // changes nothing, when it is not outstanding (already resolved: then the
  // reply must go to Complete(), which drops it as late) or was for another
  // command (Complete() reports that). Error replies and truncated fds are
  // the caller's to interpret (see ReplyStatus()).
  bool Claim(uint16_t msg_id, uint16_t cmd);

  // Hands a received reply to its requester. OK when it was delivered or
  // dropped as the late reply of an abandoned request. Fails (EPROTO) when
  // nobody asked for it -- unknown msg_id, or a cmd that differs from the
  // request's (which stays outstanding) -- and (EINVAL) for a message that
  // is not a reply: the owner should treat both as a protocol violation.
  absl::Status Complete(Message reply);

  // Fails requests whose deadline is <= `now` with ETIMEDOUT (abandoning
  // their ids). Blocking waiters also expire by themselves.
  void ExpireOverdue(absl::Time now);
  // Earliest deadline of an outstanding request (InfiniteFuture if none).
  absl::Time NextDeadline() const;

  // Fails every outstanding request with `status` (REQUIRES: !status.ok())
  // and forgets the abandoned ids. New requests may be started afterwards.
  void FailAll(const absl::Status& status);

  size_t outstanding() const;
  Stats stats() const;

 private:
  absl::StatusOr<Slot*> Register(uint16_t cmd, absl::Time deadline,
                                 Callback done, bool blocking)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Removes `slot` from the outstanding set and hands it `result`: stored
  // for a blocking waiter (woken), or returned with the callback to run once
  // the mutex is released.
  Delivery ResolveLocked(Slot* slot, absl::StatusOr<Message> result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The second half of ResolveLocked, for a slot already taken out of
  // outstanding_ (Complete's hot path: one hash lookup per reply). An async
  // slot goes back to the pool here.
  Delivery FinishLocked(Slot* slot, absl::StatusOr<Message> result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Slots are pooled: registering a request allocates nothing once the pool
  // holds as many slots as were ever outstanding at once (capped).
  Slot* AllocateSlotLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecycleSlotLocked(Slot* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AbandonLocked(uint16_t msg_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True if the abandoned_fifo_ `entry` still describes a remembered id.
  bool IsLiveAbandonmentLocked(const std::pair<uint16_t, uint64_t>& entry)
      const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Resolves `slot` with `failure` if it is still outstanding, abandoning
  // its id.
  // Both end a Pending handle's hold on `slot`.
  void GiveUp(Slot* slot, absl::Status failure) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Message> WaitFor(Slot* slot, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint16_t, Slot*> outstanding_ ABSL_GUARDED_BY(mu_);
  // Idle slots, at most kMaxPooledSlots (owned; deleted by the destructor).
  std::vector<Slot*> free_slots_ ABSL_GUARDED_BY(mu_);
  // Abandoned id -> the sequence number of its abandonment; the FIFO of
  // (id, sequence) bounds the set (stale FIFO entries are skipped).
  absl::flat_hash_map<uint16_t, uint64_t> abandoned_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<uint16_t, uint64_t>> abandoned_fifo_
      ABSL_GUARDED_BY(mu_);
  uint64_t abandon_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  uint16_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

// What a reply means for its requester: OK, the error of an error reply
// (ErrorFromReply), or EINVAL when its fds were truncated.
absl::Status ReplyStatus(const Message& reply);

// The error a requester sees for an error reply: ErrnoError with the peer's
// errno (sanitized), naming the command.
absl::Status ErrorFromReply(const Header& reply);

// ---- Replying side ----

// Answers `request` with `result`: a success reply carrying the payload, or
// a header-only error reply carrying ErrnoOf(status). Sends nothing (and
// returns OK) when the request has No_reply set. Errors are the transport's.
absl::Status SendReply(Connection& conn, const Header& request,
                       const absl::StatusOr<std::vector<uint8_t>>& result);
// Same for a reply built from pieces (e.g. an echoed access header and the
// data read), sent without concatenating them; `fds` are borrowed.
absl::Status SendReplyParts(Connection& conn, const Header& request,
                            absl::Span<const uint8_t> part1,
                            absl::Span<const uint8_t> part2 = {},
                            absl::Span<const int> fds = {});
absl::Status SendErrorReply(Connection& conn, const Header& request,
                            const absl::Status& error);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_REQUEST_TRACKER_H_
