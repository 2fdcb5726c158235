// RequestTracker: id allocation, reply matching by msg_id and cmd, error
// replies, timeouts with late replies dropped, FailAll, callbacks, many
// concurrent waiters over a real socketpair; and the SendReply helpers.
#include "core/request_tracker.h"

#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/errno_status.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "core/transport_test_util.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

using test_util::ConnectionPair;
using test_util::MakeConnectionPair;
using test_util::MakeEventfd;
using test_util::Pattern;
using test_util::ReceiveOne;

// The reply a peer would send to request (`msg_id`, `cmd`).
Message Reply(uint16_t msg_id, Command cmd, std::vector<uint8_t> payload) {
  Header request;
  request.msg_id = msg_id;
  request.cmd = static_cast<uint16_t>(cmd);
  return MakeReply(request, std::move(payload));
}

Message ErrorReply(uint16_t msg_id, Command cmd, uint32_t wire_errno) {
  Message m = Reply(msg_id, cmd, {});
  m.header.flags |= kFlagsError;
  m.header.error = wire_errno;
  return m;
}

const absl::Time kPast = absl::UnixEpoch();

TEST(RequestTrackerTest, RepliesGoToTheirOwnRequests) {
  RequestTracker tracker;
  auto first = tracker.Start(Command::kDeviceGetInfo);
  auto second = tracker.Start(Command::kDeviceGetInfo);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_NE(first->msg_id(), second->msg_id());
  EXPECT_EQ(tracker.outstanding(), 2u);

  // Replies in the other order.
  ASSERT_TRUE(tracker
                  .Complete(Reply(second->msg_id(), Command::kDeviceGetInfo,
                                  Pattern(16, 2)))
                  .ok());
  ASSERT_TRUE(tracker
                  .Complete(Reply(first->msg_id(), Command::kDeviceGetInfo,
                                  Pattern(16, 1)))
                  .ok());
  absl::StatusOr<Message> got1 = first->Wait();
  absl::StatusOr<Message> got2 = second->Wait();
  ASSERT_TRUE(got1.ok() && got2.ok());
  EXPECT_EQ(got1->payload, Pattern(16, 1));
  EXPECT_EQ(got2->payload, Pattern(16, 2));
  EXPECT_EQ(tracker.outstanding(), 0u);
  EXPECT_EQ(tracker.stats().delivered, 2u);
}

TEST(RequestTrackerTest, ReplyFdsReachTheWaiter) {
  RequestTracker tracker;
  auto pending = tracker.Start(Command::kDeviceGetRegionInfo);
  ASSERT_TRUE(pending.ok());
  Message reply =
      Reply(pending->msg_id(), Command::kDeviceGetRegionInfo, Pattern(32, 1));
  reply.fds.push_back(MakeEventfd());
  ASSERT_TRUE(tracker.Complete(std::move(reply)).ok());
  absl::StatusOr<Message> got = pending->Wait();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->fds.size(), 1u);
}

TEST(RequestTrackerTest, MismatchedCommandIsRejectedAndRequestStaysOpen) {
  RequestTracker tracker;
  auto pending = tracker.Start(Command::kRegionRead);
  ASSERT_TRUE(pending.ok());
  absl::Status wrong = tracker.Complete(
      Reply(pending->msg_id(), Command::kRegionWrite, Pattern(16, 1)));
  EXPECT_EQ(ErrnoOf(wrong), EPROTO) << wrong;
  EXPECT_EQ(tracker.outstanding(), 1u);
  ASSERT_TRUE(tracker
                  .Complete(Reply(pending->msg_id(), Command::kRegionRead,
                                  Pattern(20, 2)))
                  .ok());
  absl::StatusOr<Message> got = pending->Wait();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->payload, Pattern(20, 2));
  EXPECT_EQ(tracker.stats().unexpected, 1u);
}

TEST(RequestTrackerTest, UnknownIdsAndNonRepliesAreRejected) {
  RequestTracker tracker;
  EXPECT_EQ(ErrnoOf(tracker.Complete(Reply(42, Command::kVersion, {}))),
            EPROTO);
  EXPECT_EQ(ErrnoOf(tracker.Complete(MakeCommand(1, Command::kDmaRead, {}))),
            EINVAL);
  EXPECT_EQ(tracker.stats().unexpected, 2u);
}

TEST(RequestTrackerTest, ErrorRepliesBecomeErrnoErrors) {
  RequestTracker tracker;
  struct Case {
    uint32_t wire;
    int expected;
  } cases[] = {{ENOENT, ENOENT}, {ENOSPC, ENOSPC}, {0, EINVAL},
               {99999, EINVAL}, {0xFFFFFFFF, EINVAL}};
  for (const Case& c : cases) {
    auto pending = tracker.Start(Command::kDmaMap);
    ASSERT_TRUE(pending.ok());
    Message reply = ErrorReply(pending->msg_id(), Command::kDmaMap, c.wire);
    reply.payload = Pattern(8, 1);  // lvu sometimes sends one: ignored
    ASSERT_TRUE(tracker.Complete(std::move(reply)).ok());
    absl::StatusOr<Message> got = pending->Wait();
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(ErrnoOf(got.status()), c.expected) << c.wire;
  }
}

TEST(RequestTrackerTest, TruncatedFdsFailTheRequest) {
  RequestTracker tracker;
  auto pending = tracker.Start(Command::kDeviceGetRegionIoFds);
  ASSERT_TRUE(pending.ok());
  Message reply = Reply(pending->msg_id(), Command::kDeviceGetRegionIoFds,
                        Pattern(16, 1));
  reply.fds_truncated = true;
  ASSERT_TRUE(tracker.Complete(std::move(reply)).ok());
  EXPECT_EQ(ErrnoOf(pending->Wait().status()), EINVAL);
}

TEST(RequestTrackerTest, LateReplyIsDroppedNotGivenToTheNextRequest) {
  RequestTracker tracker;
  auto stale = tracker.Start(Command::kRegionRead, kPast);
  ASSERT_TRUE(stale.ok());
  const uint16_t stale_id = stale->msg_id();
  absl::StatusOr<Message> timed_out = stale->Wait();
  ASSERT_FALSE(timed_out.ok());
  EXPECT_EQ(ErrnoOf(timed_out.status()), ETIMEDOUT);
  EXPECT_EQ(tracker.outstanding(), 0u);

  // Go once around the whole id space: the abandoned id is never handed out
  // while its reply may still come.
  std::optional<RequestTracker::Pending> next;
  for (uint32_t i = 0; i < 65535; ++i) {
    auto pending = tracker.Start(Command::kRegionRead);
    ASSERT_TRUE(pending.ok());
    ASSERT_NE(pending->msg_id(), stale_id);
    ASSERT_TRUE(tracker
                    .Complete(Reply(pending->msg_id(), Command::kRegionRead,
                                    Pattern(4, 0)))
                    .ok());
    ASSERT_TRUE(pending->Wait().ok());
  }
  next.emplace(*tracker.Start(Command::kRegionRead));
  EXPECT_NE(next->msg_id(), stale_id);

  // The late reply arrives: dropped, counted, not delivered to `next`.
  ASSERT_TRUE(tracker
                  .Complete(Reply(stale_id, Command::kRegionRead,
                                  Pattern(4, 66)))
                  .ok());
  EXPECT_EQ(tracker.stats().late_dropped, 1u);
  EXPECT_EQ(tracker.outstanding(), 1u);
  ASSERT_TRUE(tracker
                  .Complete(Reply(next->msg_id(), Command::kRegionRead,
                                  Pattern(4, 7)))
                  .ok());
  absl::StatusOr<Message> got = next->Wait();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->payload, Pattern(4, 7));

  // A second reply with that id is no longer "late": nobody asked for it.
  EXPECT_EQ(ErrnoOf(tracker.Complete(
                Reply(stale_id, Command::kRegionRead, Pattern(4, 66)))),
            EPROTO);
}

TEST(RequestTrackerTest, AbandonedIdIsReusedOnceItsLateReplyCame) {
  RequestTracker tracker;
  auto stale = tracker.Start(Command::kDmaRead, kPast);
  ASSERT_TRUE(stale.ok());
  const uint16_t stale_id = stale->msg_id();
  EXPECT_EQ(ErrnoOf(stale->Wait().status()), ETIMEDOUT);
  ASSERT_TRUE(tracker.Complete(Reply(stale_id, Command::kDmaRead, {})).ok());
  // Cycle until the id comes round again: now it is an ordinary id.
  for (uint32_t i = 0; i < 65536; ++i) {
    auto pending = tracker.Start(Command::kDmaRead);
    ASSERT_TRUE(pending.ok());
    if (pending->msg_id() != stale_id) continue;
    ASSERT_TRUE(
        tracker.Complete(Reply(stale_id, Command::kDmaRead, Pattern(3, 3)))
            .ok());
    absl::StatusOr<Message> got = pending->Wait();
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->payload, Pattern(3, 3));
    return;
  }
  FAIL() << "id " << stale_id << " was never reused";
}

TEST(RequestTrackerTest, CancelledAndDroppedHandlesAbandonTheirIds) {
  RequestTracker tracker;
  uint16_t cancelled_id, dropped_id;
  {
    auto cancelled = tracker.Start(Command::kDeviceReset);
    ASSERT_TRUE(cancelled.ok());
    cancelled_id = cancelled->msg_id();
    cancelled->Cancel();
    EXPECT_EQ(ErrnoOf(cancelled->Wait().status()), EINVAL);  // empty handle
    auto dropped = tracker.Start(Command::kDeviceReset);
    ASSERT_TRUE(dropped.ok());
    dropped_id = dropped->msg_id();
  }
  EXPECT_EQ(tracker.outstanding(), 0u);
  EXPECT_TRUE(
      tracker.Complete(Reply(cancelled_id, Command::kDeviceReset, {})).ok());
  EXPECT_TRUE(
      tracker.Complete(Reply(dropped_id, Command::kDeviceReset, {})).ok());
  EXPECT_EQ(tracker.stats().late_dropped, 2u);
}

TEST(RequestTrackerTest, AbandonedIdsAreBounded) {
  RequestTracker::Options options;
  options.max_abandoned = 2;
  RequestTracker tracker(options);
  std::vector<uint16_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto pending = tracker.Start(Command::kRegionRead, kPast);
    ASSERT_TRUE(pending.ok());
    ids.push_back(pending->msg_id());
    EXPECT_EQ(ErrnoOf(pending->Wait().status()), ETIMEDOUT);
  }
  // The oldest abandonment was forgotten: its reply is now unexpected.
  EXPECT_EQ(ErrnoOf(tracker.Complete(Reply(ids[0], Command::kRegionRead, {}))),
            EPROTO);
  EXPECT_TRUE(tracker.Complete(Reply(ids[1], Command::kRegionRead, {})).ok());
  EXPECT_TRUE(tracker.Complete(Reply(ids[2], Command::kRegionRead, {})).ok());
}

TEST(RequestTrackerTest, IdExhaustionFails) {
  RequestTracker tracker;
  std::vector<RequestTracker::Pending> all;
  all.reserve(65536);
  absl::flat_hash_set<uint16_t> ids;
  for (uint32_t i = 0; i < 65536; ++i) {
    auto pending = tracker.Start(Command::kRegionWrite);
    ASSERT_TRUE(pending.ok()) << i;
    ids.insert(pending->msg_id());
    all.push_back(*std::move(pending));
  }
  EXPECT_EQ(ids.size(), 65536u);
  EXPECT_EQ(ErrnoOf(tracker.Start(Command::kRegionWrite).status()), EAGAIN);
  tracker.FailAll(ErrnoError(ECONNRESET, "gone"));
}

TEST(RequestTrackerTest, CallbacksExpireAndLateRepliesAreDropped) {
  RequestTracker tracker;
  std::vector<absl::Status> results;
  auto record = [&](absl::StatusOr<Message> r) {
    results.push_back(r.status());
  };
  const absl::Time soon = absl::Now() + absl::Hours(1);
  auto overdue = tracker.StartAsync(Command::kDmaRead, kPast, record);
  auto later = tracker.StartAsync(Command::kDmaWrite, soon, record);
  ASSERT_TRUE(overdue.ok() && later.ok());
  EXPECT_EQ(tracker.NextDeadline(), kPast);

  tracker.ExpireOverdue(absl::Now());
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(ErrnoOf(results[0]), ETIMEDOUT);
  EXPECT_EQ(tracker.NextDeadline(), soon);
  EXPECT_EQ(tracker.stats().timed_out, 1u);

  ASSERT_TRUE(tracker.Complete(Reply(*overdue, Command::kDmaRead, {})).ok());
  EXPECT_EQ(results.size(), 1u);  // dropped
  ASSERT_TRUE(tracker.Complete(Reply(*later, Command::kDmaWrite, {})).ok());
  ASSERT_EQ(results.size(), 2u);
  EXPECT_TRUE(results[1].ok());
  EXPECT_EQ(tracker.NextDeadline(), absl::InfiniteFuture());
}

TEST(RequestTrackerTest, CallbackMayStartANewRequest) {
  RequestTracker tracker;
  std::optional<uint16_t> second;
  auto first = tracker.StartAsync(
      Command::kDmaRead, absl::InfiniteFuture(),
      [&](absl::StatusOr<Message> r) {
        ASSERT_TRUE(r.ok());
        auto id = tracker.StartAsync(Command::kDmaRead, absl::InfiniteFuture(),
                                     [](absl::StatusOr<Message>) {});
        ASSERT_TRUE(id.ok());
        second = *id;
      });
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(tracker.Complete(Reply(*first, Command::kDmaRead, {})).ok());
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(tracker.outstanding(), 1u);
}

TEST(RequestTrackerTest, FailAllWakesEveryWaiter) {
  RequestTracker tracker;
  constexpr int kThreads = 6;
  std::vector<absl::Status> blocking(kThreads);
  std::vector<std::thread> threads;
  absl::Mutex mu;
  int started = 0;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto pending = tracker.Start(Command::kDeviceGetIrqInfo);
      ASSERT_TRUE(pending.ok());
      {
        absl::MutexLock lock(&mu);
        ++started;
      }
      blocking[i] = pending->Wait().status();
    });
  }
  absl::Status async_result;
  ASSERT_TRUE(tracker
                  .StartAsync(Command::kDmaWrite, absl::InfiniteFuture(),
                              [&](absl::StatusOr<Message> r) {
                                async_result = r.status();
                              })
                  .ok());
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == kThreads; }, &started));
  }
  tracker.FailAll(ErrnoError(ECONNRESET, "peer closed"));
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : blocking) EXPECT_EQ(ErrnoOf(s), ECONNRESET);
  EXPECT_EQ(ErrnoOf(async_result), ECONNRESET);
  EXPECT_EQ(tracker.outstanding(), 0u);
  // Usable afterwards (e.g. after a reconnect).
  auto again = tracker.Start(Command::kVersion);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(tracker.Complete(Reply(again->msg_id(), Command::kVersion, {}))
                  .ok());
  EXPECT_TRUE(again->Wait().ok());
}

// Several client threads issue requests over one real connection; a reader
// thread feeds replies to the tracker; the "server" echoes every command.
TEST(RequestTrackerTest, ConcurrentWaitersOverARealConnection) {
  ConnectionPair pair = MakeConnectionPair();
  Connection& client = *pair.a;
  Connection& server = *pair.b;
  RequestTracker tracker;

  std::thread server_thread([&] {
    for (;;) {
      auto got = server.Receive();
      if (!got.ok()) {
        EXPECT_TRUE(IsPeerClosed(got.status())) << got.status();
        return;
      }
      const Message& cmd = **got;
      if (cmd.payload.size() == 1) {  // "fail this one"
        ASSERT_TRUE(SendReply(server, cmd.header,
                              ErrnoError(ENODEV, "no such thing"))
                        .ok());
      } else {
        ASSERT_TRUE(SendReply(server, cmd.header, cmd.payload).ok());
      }
    }
  });
  std::thread reader([&] {
    for (;;) {
      auto got = client.Receive();
      if (!got.ok()) {
        tracker.FailAll(got.status());
        return;
      }
      ASSERT_TRUE(tracker.Complete(std::move(**got)).ok());
    }
  });

  constexpr int kThreads = 8;
  constexpr int kPerThread = 300;
  absl::Mutex send_mu;  // one sender at a time (Connection contract)
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const bool fail = i % 17 == 0;
        const std::vector<uint8_t> payload =
            fail ? std::vector<uint8_t>(1) : Pattern(8 + i % 32, t * 1000 + i);
        auto pending = tracker.Start(Command::kRegionRead);
        ASSERT_TRUE(pending.ok());
        Header h;
        h.msg_id = pending->msg_id();
        h.cmd = static_cast<uint16_t>(Command::kRegionRead);
        h.flags = kFlagsTypeCommand;
        {
          absl::MutexLock lock(&send_mu);
          ASSERT_TRUE(client.SendParts(h, payload).ok());
        }
        absl::StatusOr<Message> reply = pending->Wait();
        if (fail) {
          ASSERT_EQ(ErrnoOf(reply.status()), ENODEV);
        } else {
          ASSERT_TRUE(reply.ok()) << reply.status();
          ASSERT_EQ(reply->payload, payload);
        }
      }
    });
  }
  for (std::thread& c : clients) c.join();
  EXPECT_EQ(tracker.stats().delivered, uint64_t{kThreads * kPerThread});
  EXPECT_EQ(tracker.stats().unexpected, 0u);
  client.Shutdown();  // ends both the reader and the server
  reader.join();
  server_thread.join();
}

// ---- Replying side ----

TEST(RequestTrackerTest, ClaimTakesAnAsyncRequestWithoutItsCallback) {
  RequestTracker tracker;
  int callbacks = 0;
  auto on_done = [&callbacks](absl::StatusOr<Message>) { ++callbacks; };
  absl::StatusOr<uint16_t> id =
      tracker.StartAsync(Command::kRegionRead, absl::InfiniteFuture(), on_done);
  ASSERT_TRUE(id.ok());
  // Another command with the same id is not ours: nothing changes.
  EXPECT_FALSE(tracker.Claim(*id, static_cast<uint16_t>(Command::kRegionWrite)));
  EXPECT_EQ(tracker.outstanding(), 1u);
  EXPECT_TRUE(tracker.Claim(*id, static_cast<uint16_t>(Command::kRegionRead)));
  EXPECT_EQ(tracker.outstanding(), 0u);
  EXPECT_EQ(callbacks, 0);  // the claimer has the reply
  EXPECT_EQ(tracker.stats().delivered, 1u);
  // Claimed once: a second claim (or a duplicate reply) finds nothing.
  EXPECT_FALSE(tracker.Claim(*id, static_cast<uint16_t>(Command::kRegionRead)));
  EXPECT_EQ(ErrnoOf(tracker.Complete(Reply(*id, Command::kRegionRead, {}))),
            EPROTO);
  EXPECT_EQ(callbacks, 0);
}

TEST(RequestTrackerTest, ClaimLeavesBlockingAndResolvedRequestsAlone) {
  RequestTracker tracker;
  auto blocking = tracker.Start(Command::kDeviceGetInfo);
  ASSERT_TRUE(blocking.ok());
  // A blocking waiter is woken only through Complete().
  EXPECT_FALSE(tracker.Claim(blocking->msg_id(),
                             static_cast<uint16_t>(Command::kDeviceGetInfo)));
  ASSERT_TRUE(tracker
                  .Complete(Reply(blocking->msg_id(), Command::kDeviceGetInfo,
                                  Pattern(8, 1)))
                  .ok());
  EXPECT_TRUE(blocking->Wait().ok());

  // Timed out (abandoned): the claimer must hand the late reply to
  // Complete(), which drops it.
  std::optional<absl::Status> outcome;
  absl::StatusOr<uint16_t> id = tracker.StartAsync(
      Command::kRegionRead, kPast,
      [&outcome](absl::StatusOr<Message> m) { outcome = m.status(); });
  ASSERT_TRUE(id.ok());
  tracker.ExpireOverdue(absl::Now());
  ASSERT_TRUE(outcome.has_value());
  EXPECT_EQ(ErrnoOf(*outcome), ETIMEDOUT);
  EXPECT_FALSE(tracker.Claim(*id, static_cast<uint16_t>(Command::kRegionRead)));
  EXPECT_TRUE(tracker.Complete(Reply(*id, Command::kRegionRead, {})).ok());
  EXPECT_EQ(tracker.stats().late_dropped, 1u);
}

TEST(RequestTrackerTest, ReplyStatusReadsErrorsAndTruncatedFds) {
  EXPECT_TRUE(ReplyStatus(Reply(1, Command::kRegionRead, Pattern(4, 1))).ok());
  EXPECT_EQ(ErrnoOf(ReplyStatus(ErrorReply(1, Command::kRegionRead, EACCES))),
            EACCES);
  Message truncated = Reply(1, Command::kRegionRead, {});
  truncated.fds_truncated = true;
  EXPECT_EQ(ErrnoOf(ReplyStatus(truncated)), EINVAL);
}

// Slots are pooled: many generations of requests of every kind (blocking
// waited, blocking cancelled, async completed, async expired, async
// claimed, failed all at once) reuse them without mixing up their state.
TEST(RequestTrackerTest, PooledSlotsStartCleanEveryGeneration) {
  RequestTracker tracker;
  for (int round = 0; round < 300; ++round) {
    auto waited = tracker.Start(Command::kDeviceGetInfo);
    auto cancelled = tracker.Start(Command::kDeviceGetInfo);
    ASSERT_TRUE(waited.ok() && cancelled.ok());
    std::vector<absl::Status> async_results;
    auto record = [&async_results](absl::StatusOr<Message> m) {
      async_results.push_back(m.status());
    };
    absl::StatusOr<uint16_t> completed =
        tracker.StartAsync(Command::kRegionRead, absl::InfiniteFuture(), record);
    absl::StatusOr<uint16_t> expired =
        tracker.StartAsync(Command::kRegionRead, kPast, record);
    absl::StatusOr<uint16_t> claimed =
        tracker.StartAsync(Command::kRegionWrite, absl::InfiniteFuture(), record);
    absl::StatusOr<uint16_t> failed =
        tracker.StartAsync(Command::kRegionWrite, absl::InfiniteFuture(), record);
    ASSERT_TRUE(completed.ok() && expired.ok() && claimed.ok() && failed.ok());

    ASSERT_TRUE(tracker
                    .Complete(Reply(waited->msg_id(), Command::kDeviceGetInfo,
                                    Pattern(8, round)))
                    .ok());
    cancelled->Cancel();
    ASSERT_TRUE(
        tracker.Complete(Reply(*completed, Command::kRegionRead, {})).ok());
    tracker.ExpireOverdue(absl::Now());
    EXPECT_TRUE(
        tracker.Claim(*claimed, static_cast<uint16_t>(Command::kRegionWrite)));
    // The abandoned ids of `cancelled` and `expired` go back into
    // circulation with FailAll.
    tracker.FailAll(ErrnoError(ECONNRESET, "gone"));

    absl::StatusOr<Message> got = waited->Wait();
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->payload, Pattern(8, round));
    ASSERT_EQ(async_results.size(), 3u);  // completed, expired, failed
    EXPECT_TRUE(async_results[0].ok());
    EXPECT_EQ(ErrnoOf(async_results[1]), ETIMEDOUT);
    EXPECT_EQ(ErrnoOf(async_results[2]), ECONNRESET);
    EXPECT_EQ(tracker.outstanding(), 0u);
  }
}

TEST(SendReplyTest, SuccessErrorAndNoReply) {
  TransportOptions nonblocking;
  nonblocking.nonblocking = true;
  ConnectionPair pair = MakeConnectionPair({}, nonblocking);
  Message request = MakeCommand(12, Command::kRegionRead, Pattern(16, 1));

  ASSERT_TRUE(SendReply(*pair.a, request.header, Pattern(24, 2)).ok());
  Message ok = ReceiveOne(*pair.b);
  EXPECT_TRUE(ok.header.is_reply());
  EXPECT_FALSE(ok.header.is_error());
  EXPECT_EQ(ok.header.msg_id, 12);
  EXPECT_EQ(ok.command(), Command::kRegionRead);
  EXPECT_EQ(ok.payload, Pattern(24, 2));

  ASSERT_TRUE(
      SendReply(*pair.a, request.header, ErrnoError(EFAULT, "bad range")).ok());
  Message err = ReceiveOne(*pair.b);
  EXPECT_TRUE(err.header.is_reply());
  EXPECT_TRUE(err.header.is_error());
  EXPECT_EQ(err.header.error, static_cast<uint32_t>(EFAULT));
  EXPECT_EQ(err.header.msg_size, kHeaderSize);
  EXPECT_TRUE(err.payload.empty());

  // No_reply: neither a success nor an error reply goes out.
  Message posted = MakeCommand(13, Command::kRegionWrite, Pattern(8, 3),
                               /*no_reply=*/true);
  ASSERT_TRUE(SendReply(*pair.a, posted.header, std::vector<uint8_t>()).ok());
  ASSERT_TRUE(
      SendReply(*pair.a, posted.header, ErrnoError(EINVAL, "bad")).ok());
  ASSERT_TRUE(SendReplyParts(*pair.a, posted.header, Pattern(4, 4)).ok());
  auto nothing = pair.b->Receive();
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value());
}

TEST(SendReplyTest, PartsAndFds) {
  ConnectionPair pair = MakeConnectionPair();
  Message request = MakeCommand(3, Command::kDeviceGetRegionInfo, {});
  UniqueFd region = MakeEventfd();
  const int fds[] = {region.get()};
  ASSERT_TRUE(SendReplyParts(*pair.a, request.header, Pattern(16, 1),
                             Pattern(8, 2), fds)
                  .ok());
  Message got = ReceiveOne(*pair.b);
  std::vector<uint8_t> expected = Pattern(16, 1);
  const std::vector<uint8_t> tail = Pattern(8, 2);
  expected.insert(expected.end(), tail.begin(), tail.end());
  EXPECT_EQ(got.payload, expected);
  EXPECT_EQ(got.fds.size(), 1u);
  EXPECT_TRUE(got.header.is_reply());
}

}  // namespace
}  // namespace vfio_user
