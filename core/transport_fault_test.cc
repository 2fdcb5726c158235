// Transport under injected faults (FaultInjectingOs over real sockets): short
// reads and writes down to one byte, a pause at every byte boundary, EINTR
// and EAGAIN storms, hang-ups at chosen bytes, failing close().
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "core/errno_status.h"
#include "core/fault_injecting_os.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "core/transport_test_util.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

using Direction = FaultInjectingOs::Direction;
using test_util::ConnectionPair;
using test_util::CountOpenFds;
using test_util::MakeConnectionPair;
using test_util::MakeEventfd;
using test_util::MakeMemfd;
using test_util::Pattern;
using test_util::ReceiveOne;

TransportOptions Nonblocking() {
  TransportOptions options;
  options.nonblocking = true;
  return options;
}

// A message with `payload_size` pattern bytes and, if `with_memfd`, one memfd
// holding Pattern(64, id) so the receiver can tell which fd it got.
Message TestMessage(uint16_t id, size_t payload_size, bool with_memfd) {
  Message msg = MakeCommand(id, Command::kRegionWrite, Pattern(payload_size, id));
  if (with_memfd) msg.fds.push_back(MakeMemfd(Pattern(64, id)));
  return msg;
}

void ExpectTestMessage(const Message& msg, uint16_t id, size_t payload_size,
                       bool with_memfd) {
  EXPECT_EQ(msg.header.msg_id, id);
  EXPECT_EQ(msg.header.msg_size, kHeaderSize + payload_size);
  EXPECT_TRUE(msg.payload == Pattern(payload_size, id)) << "message " << id;
  EXPECT_FALSE(msg.fds_truncated);
  ASSERT_EQ(msg.fds.size(), with_memfd ? 1u : 0u) << "message " << id;
  if (with_memfd) {
    std::vector<uint8_t> content(64);
    ASSERT_EQ(::pread(msg.fds[0].get(), content.data(), 64, 0), 64);
    EXPECT_EQ(content, Pattern(64, id)) << "fd of message " << id;
  }
}

struct Spec {
  uint16_t id;
  size_t payload_size;
  bool with_memfd;
};

// Sizes around the header and the read-ahead buffer (68 KiB).
static_assert(Connection::kReadAheadBytes == 69632, "update the sizes below");
const Spec kStream[] = {
    {1, 0, false},  {2, 1, true},      {3, 15, false},    {4, 16, true},
    {5, 100, true}, {6, 75000, false}, {7, 69700, true},  {8, 3, true},
    {9, 0, true},   {10, 200, false},
};

TEST(TransportFaultTest, OneByteReadsAndWritesHitEveryByteBoundary) {
  FaultInjectingOs send_os, recv_os;
  send_os.SetMaxBytesPerCall(Direction::kSend, 1);
  recv_os.SetMaxBytesPerCall(Direction::kRecv, 1);
  // A byte per syscall is slow on a loaded machine: the writer may wait for
  // the reader far longer than the default send_timeout.
  TransportOptions patient;
  patient.send_timeout = absl::Minutes(5);
  ConnectionPair pair = MakeConnectionPair(patient, {}, &send_os, &recv_os);

  // One message just over the read-ahead buffer (68 KiB) is enough for the
  // large-message path; every byte costs two syscalls here.
  const Spec stream[] = {{1, 0, false}, {2, 1, true},     {3, 15, false},
                         {4, 16, true}, {5, 69620, true}, {6, 3, true},
                         {7, 0, true},  {8, 200, false}};
  uint64_t total = 0;
  for (const Spec& s : stream) total += kHeaderSize + s.payload_size;
  std::thread writer([&] {
    for (const Spec& s : stream) {
      ASSERT_TRUE(
          pair.a->Send(TestMessage(s.id, s.payload_size, s.with_memfd)).ok());
    }
  });
  for (const Spec& s : stream) {
    ExpectTestMessage(ReceiveOne(*pair.b), s.id, s.payload_size, s.with_memfd);
  }
  writer.join();
  EXPECT_EQ(send_os.bytes(Direction::kSend), total);
  EXPECT_EQ(recv_os.bytes(Direction::kRecv), total);
  EXPECT_GE(recv_os.calls(Direction::kRecv), total);
}

// Writes `specs` through a normal sender, then receives them with a
// non-blocking receiver whose stream pauses (EAGAIN) once at byte `pause`.
void ReceiveWithPauseAt(absl::Span<const Spec> specs, uint64_t pause) {
  FaultInjectingOs recv_os;
  recv_os.InjectErrors(Direction::kRecv, EAGAIN, 1, pause);
  ConnectionPair pair = MakeConnectionPair({}, Nonblocking(), nullptr, &recv_os);
  for (const Spec& s : specs) {
    ASSERT_TRUE(
        pair.a->Send(TestMessage(s.id, s.payload_size, s.with_memfd)).ok());
  }
  size_t next = 0;
  int pauses = 0;
  while (next < specs.size()) {
    auto got = pair.b->Receive();
    ASSERT_TRUE(got.ok()) << got.status();
    if (!got->has_value()) {
      ++pauses;
      ASSERT_LE(pauses, 1);
      continue;
    }
    const Spec& s = specs[next++];
    ExpectTestMessage(**got, s.id, s.payload_size, s.with_memfd);
  }
  EXPECT_EQ(pauses, 1);
  EXPECT_EQ(recv_os.injected_faults(), 1u);
}

TEST(TransportFaultTest, NonblockingReceiveResumesAtEveryByte) {
  const Spec small[] = {{1, 20, true}, {2, 0, false}, {3, 10, true}};
  uint64_t total = 0;
  for (const Spec& s : small) total += kHeaderSize + s.payload_size;
  for (uint64_t pause = 0; pause < total; ++pause) {
    SCOPED_TRACE(pause);
    ReceiveWithPauseAt(small, pause);
  }
}

TEST(TransportFaultTest, NonblockingReceiveResumesInsideALargeMessage) {
  const Spec large[] = {{1, 8, false}, {2, 100000, true}, {3, 8, true}};
  const uint64_t start = kHeaderSize + 8;  // first byte of message 2
  for (uint64_t pause :
       {start, start + 1, start + 15, start + 16, start + 17, start + 69631,
        start + 69632, start + 69633, start + 100015, start + 100016}) {
    SCOPED_TRACE(pause);
    ReceiveWithPauseAt(large, pause);
  }
}

TEST(TransportFaultTest, EintrStormsOnBothSides) {
  FaultInjectingOs send_os, recv_os;
  send_os.InjectErrors(Direction::kSend, EINTR, 500);
  recv_os.InjectErrors(Direction::kRecv, EINTR, 500);
  // A second storm in the middle of a message, on short reads.
  recv_os.SetMaxBytesPerCall(Direction::kRecv, 7);
  recv_os.InjectErrors(Direction::kRecv, EINTR, 100, /*at_byte=*/20);
  ConnectionPair pair = MakeConnectionPair({}, {}, &send_os, &recv_os);
  for (const Spec& s : kStream) {
    ASSERT_TRUE(
        pair.a->Send(TestMessage(s.id, s.payload_size, s.with_memfd)).ok());
    ExpectTestMessage(ReceiveOne(*pair.b), s.id, s.payload_size, s.with_memfd);
  }
  EXPECT_EQ(send_os.injected_faults(), 500u);
  EXPECT_EQ(recv_os.injected_faults(), 600u);
}

TEST(TransportFaultTest, EagainAndPollEintrStormsInBlockingMode) {
  FaultInjectingOs send_os, recv_os;
  send_os.InjectErrors(Direction::kSend, EAGAIN, 200);
  send_os.InjectPollErrors(50);
  recv_os.InjectErrors(Direction::kRecv, EAGAIN, 200);
  recv_os.InjectErrors(Direction::kRecv, EAGAIN, 200, /*at_byte=*/9);
  recv_os.InjectPollErrors(50);
  ConnectionPair pair = MakeConnectionPair({}, {}, &send_os, &recv_os);
  for (const Spec& s : kStream) {
    ASSERT_TRUE(
        pair.a->Send(TestMessage(s.id, s.payload_size, s.with_memfd)).ok());
    ExpectTestMessage(ReceiveOne(*pair.b), s.id, s.payload_size, s.with_memfd);
  }
  EXPECT_EQ(send_os.injected_faults(), 250u);
  EXPECT_EQ(recv_os.injected_faults(), 450u);
}

TEST(TransportFaultTest, NonblockingSenderQueuesAfterShortWrite) {
  FaultInjectingOs send_os;
  // The socket takes 10 bytes of the first message (with its fd), then is
  // "full" until the faults are cleared.
  send_os.SetMaxBytesPerCall(Direction::kSend, 10);
  send_os.InjectErrors(Direction::kSend, EAGAIN, 1000, /*at_byte=*/10);
  TransportOptions sender = Nonblocking();
  ConnectionPair pair = MakeConnectionPair(sender, Nonblocking(), &send_os);

  ASSERT_TRUE(pair.a->Send(TestMessage(1, 40, true)).ok());
  EXPECT_TRUE(pair.a->HasPendingOutput());
  // Queued behind: fd-less and fd-carrying messages. The caller's fds are
  // closed at once; the queue holds duplicates.
  const Spec queued[] = {{2, 5, false}, {3, 30, true}, {4, 0, false},
                         {5, 12, true}, {6, 1, true}};
  for (const Spec& s : queued) {
    Message msg = TestMessage(s.id, s.payload_size, s.with_memfd);
    ASSERT_TRUE(pair.a->Send(msg).ok());
  }
  send_os.Clear();
  ASSERT_TRUE(pair.a->FlushPending().ok());
  EXPECT_FALSE(pair.a->HasPendingOutput());

  // Read-ahead may gather several messages per recvmsg; fds must still land
  // on their own message.
  ExpectTestMessage(ReceiveOne(*pair.b), 1, 40, true);
  for (const Spec& s : queued) {
    ExpectTestMessage(ReceiveOne(*pair.b), s.id, s.payload_size, s.with_memfd);
  }
}

TEST(TransportFaultTest, HangUpBetweenMessagesIsACleanClose) {
  for (int err : {0, ECONNRESET}) {
    SCOPED_TRACE(err);
    FaultInjectingOs recv_os;
    recv_os.HangUpAt(Direction::kRecv, kHeaderSize + 10, err);
    ConnectionPair pair = MakeConnectionPair({}, {}, nullptr, &recv_os);
    ASSERT_TRUE(pair.a->Send(TestMessage(1, 10, true)).ok());
    ASSERT_TRUE(pair.a->Send(TestMessage(2, 10, false)).ok());
    ExpectTestMessage(ReceiveOne(*pair.b), 1, 10, true);
    absl::Status closed = pair.b->Receive().status();
    EXPECT_TRUE(IsPeerClosed(closed)) << closed;
  }
}

TEST(TransportFaultTest, HangUpMidMessageIsAnError) {
  const uint64_t large_start = kHeaderSize + 10;
  for (int err : {0, ECONNRESET}) {
    for (uint64_t at : {uint64_t{kHeaderSize + 10 + 5},
                        uint64_t{kHeaderSize + 10 + 16},
                        large_start + 70000}) {
      SCOPED_TRACE(::testing::Message() << "err " << err << " at " << at);
      FaultInjectingOs recv_os;
      recv_os.HangUpAt(Direction::kRecv, at, err);
      ConnectionPair pair = MakeConnectionPair({}, {}, nullptr, &recv_os);
      std::thread writer([&] {
        // The peer's bytes beyond `at` are never read; do not wait on them.
        pair.a->Send(TestMessage(1, 10, false)).IgnoreError();
        pair.a->Send(TestMessage(2, 100000, true)).IgnoreError();
      });
      ExpectTestMessage(ReceiveOne(*pair.b), 1, 10, false);
      absl::Status broken = pair.b->Receive().status();
      EXPECT_FALSE(IsPeerClosed(broken)) << broken;
      EXPECT_EQ(ErrnoOf(broken), EPIPE) << broken;
      pair.b.reset();  // unblocks the writer (EPIPE)
      writer.join();
    }
  }
}

TEST(TransportFaultTest, SendHangUpMidMessageBreaksTheStream) {
  FaultInjectingOs send_os;
  send_os.HangUpAt(Direction::kSend, 10);
  ConnectionPair pair = MakeConnectionPair({}, Nonblocking(), &send_os);
  absl::Status status = pair.a->Send(TestMessage(1, 40, true));
  EXPECT_EQ(ErrnoOf(status), EPIPE) << status;
  send_os.Clear();
  // Ten bytes of a message went out: nothing more may follow.
  EXPECT_EQ(ErrnoOf(pair.a->Send(TestMessage(2, 0, false))), EPIPE);
  auto got = pair.b->Receive();
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value());
  EXPECT_TRUE(pair.b->HasBufferedInput());
}

TEST(TransportFaultTest, SendErrorBeforeAnyByteIsNotFinal) {
  FaultInjectingOs send_os;
  send_os.InjectErrors(Direction::kSend, ENOBUFS, 1);
  ConnectionPair pair = MakeConnectionPair({}, {}, &send_os);
  EXPECT_EQ(ErrnoOf(pair.a->Send(TestMessage(1, 4, true))), ENOBUFS);
  ASSERT_TRUE(pair.a->Send(TestMessage(2, 4, true)).ok());
  ExpectTestMessage(ReceiveOne(*pair.b), 2, 4, true);
}

TEST(TransportFaultTest, ReceiveErrorIsFinal) {
  FaultInjectingOs recv_os;
  recv_os.InjectErrors(Direction::kRecv, EIO, 1);
  ConnectionPair pair = MakeConnectionPair({}, {}, nullptr, &recv_os);
  ASSERT_TRUE(pair.a->Send(TestMessage(1, 4, false)).ok());
  EXPECT_EQ(ErrnoOf(pair.b->Receive().status()), EIO);
  EXPECT_EQ(ErrnoOf(pair.b->Receive().status()), EIO);
}

TEST(TransportFaultTest, FailingCloseStillReleasesTheSocket) {
  const int fds_before = CountOpenFds();
  FaultInjectingOs os;
  os.FailCloses(2, EINTR);
  {
    ConnectionPair pair = MakeConnectionPair({}, {}, &os, &os);
  }
  EXPECT_EQ(os.injected_faults(), 2u);
  EXPECT_EQ(CountOpenFds(), fds_before);
}

}  // namespace
}  // namespace vfio_user
