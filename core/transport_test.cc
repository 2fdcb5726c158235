// Transport over real AF_UNIX sockets with real fds crossing (memfd, eventfd,
// socketpair ends): framing, large and pipelined messages, fd limits, EOF,
// framing errors, non-blocking queueing, timeouts, and Unix socket paths.
#include "core/transport.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/fault_injecting_os.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport_test_util.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

using test_util::CommandHeader;
using test_util::ConnectionPair;
using test_util::CountOpenFds;
using test_util::HeaderBytes;
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

// A Connection on one end of a socketpair; the other end stays a raw fd so
// tests can write arbitrary (malformed) bytes.
struct RawPeer {
  std::unique_ptr<Connection> conn;
  UniqueFd raw;
};

RawPeer MakeRawPeer(TransportOptions options = {}) {
  RawPeer peer;
  auto fds = MakeSocketPair();
  EXPECT_TRUE(fds.ok()) << fds.status();
  peer.conn = std::make_unique<Connection>(std::move(fds->first), options);
  peer.raw = std::move(fds->second);
  return peer;
}

void WriteRaw(int fd, const std::vector<uint8_t>& bytes) {
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
}

TEST(TransportTest, SmallMessageRoundTrip) {
  ConnectionPair pair = MakeConnectionPair();
  Message sent = MakeCommand(7, Command::kDeviceGetInfo, Pattern(16, 1));
  sent.header.msg_size = 3;  // recomputed by Send
  ASSERT_TRUE(pair.a->Send(sent).ok());

  Message got = ReceiveOne(*pair.b);
  EXPECT_EQ(got.header.msg_id, 7);
  EXPECT_EQ(got.command(), Command::kDeviceGetInfo);
  EXPECT_EQ(got.header.msg_size, kHeaderSize + 16);
  EXPECT_TRUE(got.header.is_command());
  EXPECT_EQ(got.payload, Pattern(16, 1));
  EXPECT_TRUE(got.fds.empty());
  EXPECT_FALSE(got.fds_truncated);
  EXPECT_FALSE(pair.b->HasBufferedInput());
}

TEST(TransportTest, HeaderOnlyMessage) {
  ConnectionPair pair = MakeConnectionPair();
  ASSERT_TRUE(pair.a->Send(MakeCommand(1, Command::kDeviceReset, {})).ok());
  Message got = ReceiveOne(*pair.b);
  EXPECT_EQ(got.header.msg_size, kHeaderSize);
  EXPECT_TRUE(got.payload.empty());
}

TEST(TransportTest, SendPartsGathersPieces) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> first = Pattern(16, 2);
  const std::vector<uint8_t> second = Pattern(100, 3);
  ASSERT_TRUE(pair.a
                  ->SendParts(CommandHeader(9, Command::kRegionWrite), first,
                              second)
                  .ok());
  Message got = ReceiveOne(*pair.b);
  std::vector<uint8_t> expected = first;
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(got.payload, expected);
  EXPECT_EQ(got.header.msg_size, kHeaderSize + 116);
}

TEST(TransportTest, MemfdCrossesAndIsShared) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> content = Pattern(8192, 4);
  UniqueFd memfd = MakeMemfd(content);
  ASSERT_TRUE(memfd.valid());

  Message map = MakeCommand(1, Command::kDmaMap, Pattern(32, 5));
  map.fds.push_back(std::move(memfd));
  ASSERT_TRUE(pair.a->Send(map).ok());

  Message got = ReceiveOne(*pair.b);
  ASSERT_EQ(got.fds.size(), 1u);
  EXPECT_NE(got.fds[0].get(), map.fds[0].get());
  EXPECT_TRUE(::fcntl(got.fds[0].get(), F_GETFD) & FD_CLOEXEC);
  void* mem = ::mmap(nullptr, content.size(), PROT_READ | PROT_WRITE,
                     MAP_SHARED, got.fds[0].get(), 0);
  ASSERT_NE(mem, MAP_FAILED);
  EXPECT_EQ(std::memcmp(mem, content.data(), content.size()), 0);
  // A write through the receiver's mapping is seen through the sender's fd.
  static_cast<uint8_t*>(mem)[100] = static_cast<uint8_t>(~content[100]);
  ::munmap(mem, content.size());
  uint8_t byte = 0;
  ASSERT_EQ(::pread(map.fds[0].get(), &byte, 1, 100), 1);
  EXPECT_EQ(byte, static_cast<uint8_t>(~content[100]));
}

TEST(TransportTest, EventfdCrossesAndSignals) {
  ConnectionPair pair = MakeConnectionPair();
  Message set_irqs = MakeCommand(2, Command::kDeviceSetIrqs, Pattern(20, 6));
  set_irqs.fds.push_back(MakeEventfd());
  set_irqs.fds.push_back(MakeEventfd());
  ASSERT_TRUE(pair.a->Send(set_irqs).ok());

  Message got = ReceiveOne(*pair.b);
  ASSERT_EQ(got.fds.size(), 2u);
  const uint64_t one = 1, three = 3;
  ASSERT_EQ(::write(got.fds[0].get(), &one, 8), 8);
  ASSERT_EQ(::write(got.fds[1].get(), &three, 8), 8);
  uint64_t value = 0;
  ASSERT_EQ(::read(set_irqs.fds[0].get(), &value, 8), 8);
  EXPECT_EQ(value, 1u);
  ASSERT_EQ(::read(set_irqs.fds[1].get(), &value, 8), 8);
  EXPECT_EQ(value, 3u);
}

TEST(TransportTest, FdsStayWithTheirMessageUnderReadAhead) {
  // Everything is in the socket before the first read, so one recvmsg may
  // cover several messages: Linux ends it right after an fd-carrying skb,
  // so the fds belong to the message holding the read's last byte.
  ConnectionPair pair = MakeConnectionPair();
  const bool has_fd[] = {false, true, false, false, true, true, false};
  for (uint16_t i = 0; i < 7; ++i) {
    Message msg = MakeCommand(i, Command::kDmaMap, Pattern(4 + i, i));
    if (has_fd[i]) msg.fds.push_back(MakeMemfd(Pattern(8, i)));
    ASSERT_TRUE(pair.a->Send(msg).ok());
  }
  for (uint16_t i = 0; i < 7; ++i) {
    Message got = ReceiveOne(*pair.b);
    ASSERT_EQ(got.header.msg_id, i);
    EXPECT_EQ(got.payload, Pattern(4 + i, i));
    ASSERT_EQ(got.fds.size(), has_fd[i] ? 1u : 0u) << "message " << i;
    if (has_fd[i]) {
      std::vector<uint8_t> content(8);
      ASSERT_EQ(::pread(got.fds[0].get(), content.data(), 8, 0), 8);
      EXPECT_EQ(content, Pattern(8, i));
    }
  }
}

TEST(TransportTest, LargeMessagesWithConcurrentWriter) {
  ConnectionPair pair = MakeConnectionPair();
  constexpr int kRounds = 4;
  const size_t big = 1u << 20;  // + 16 bytes of header <= max_msg_size
  std::thread writer([&] {
    for (int i = 0; i < kRounds; ++i) {
      Message large = MakeCommand(static_cast<uint16_t>(2 * i),
                                  Command::kRegionWrite, Pattern(big, i));
      if (i == 1) large.fds.push_back(MakeEventfd());
      ASSERT_TRUE(pair.a->Send(large).ok());
      ASSERT_TRUE(pair.a
                      ->Send(MakeCommand(static_cast<uint16_t>(2 * i + 1),
                                         Command::kRegionRead,
                                         Pattern(24, 100 + i)))
                      .ok());
    }
  });
  for (int i = 0; i < kRounds; ++i) {
    Message large = ReceiveOne(*pair.b);
    EXPECT_EQ(large.header.msg_id, 2 * i);
    EXPECT_EQ(large.header.msg_size, kHeaderSize + big);
    EXPECT_TRUE(large.payload == Pattern(big, i)) << "round " << i;
    EXPECT_EQ(large.fds.size(), i == 1 ? 1u : 0u);
    Message small = ReceiveOne(*pair.b);
    EXPECT_EQ(small.header.msg_id, 2 * i + 1);
    EXPECT_EQ(small.payload, Pattern(24, 100 + i));
  }
  writer.join();
}

TEST(TransportTest, PipelinedSmallMessagesCostOneReceive) {
  FaultInjectingOs counting;  // no faults scheduled: only counts calls
  ConnectionPair pair = MakeConnectionPair({}, {}, nullptr, &counting);
  constexpr int kCount = 200;
  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(pair.a
                    ->Send(MakeCommand(static_cast<uint16_t>(i),
                                       Command::kRegionRead,
                                       Pattern(i % 40, i)))
                    .ok());
  }
  for (int i = 0; i < kCount; ++i) {
    Message got = ReceiveOne(*pair.b);
    ASSERT_EQ(got.header.msg_id, i);
    ASSERT_EQ(got.payload, Pattern(i % 40, i));
  }
  // ~7 KiB were queued before the first Receive: one recvmsg read them all.
  EXPECT_EQ(counting.calls(FaultInjectingOs::Direction::kRecv), 1u);
}

TEST(TransportTest, PipelinedMessagesFromAThread) {
  ConnectionPair pair = MakeConnectionPair();
  constexpr int kCount = 20000;
  std::thread writer([&] {
    for (int i = 0; i < kCount; ++i) {
      ASSERT_TRUE(pair.a
                      ->Send(MakeCommand(static_cast<uint16_t>(i),
                                         Command::kRegionWrite,
                                         Pattern(i % 64, i)))
                      .ok());
    }
  });
  for (int i = 0; i < kCount; ++i) {
    Message got = ReceiveOne(*pair.b);
    ASSERT_EQ(got.header.msg_id, static_cast<uint16_t>(i));
    ASSERT_EQ(got.payload, Pattern(i % 64, i));
  }
  writer.join();
}

// Sends `fd_count` eventfds to a receiver accepting `max_fds_in`, followed
// by a normal message; checks truncation and that nothing leaks.
void ExpectFdsTruncated(uint32_t max_fds_in, size_t fd_count) {
  const int fds_before = CountOpenFds();
  {
    TransportOptions sender;
    sender.max_fds_out = 64;
    TransportOptions receiver;
    receiver.max_fds_in = max_fds_in;
    ConnectionPair pair = MakeConnectionPair(sender, receiver);
    Message many = MakeCommand(1, Command::kDeviceSetIrqs, Pattern(20, 7));
    for (size_t i = 0; i < fd_count; ++i) many.fds.push_back(MakeEventfd());
    ASSERT_TRUE(pair.a->Send(many).ok());
    Message next = MakeCommand(2, Command::kDmaMap, Pattern(32, 8));
    next.fds.push_back(MakeEventfd());
    ASSERT_TRUE(pair.a->Send(next).ok());

    Message got = ReceiveOne(*pair.b);
    EXPECT_EQ(got.header.msg_id, 1);
    EXPECT_TRUE(got.fds_truncated);
    EXPECT_TRUE(got.fds.empty());  // closed by the transport
    EXPECT_EQ(got.payload, Pattern(20, 7));

    Message after = ReceiveOne(*pair.b);  // the stream is intact
    EXPECT_EQ(after.header.msg_id, 2);
    EXPECT_FALSE(after.fds_truncated);
    EXPECT_EQ(after.fds.size(), max_fds_in >= 1 ? 1u : 0u);
  }
  EXPECT_EQ(CountOpenFds(), fds_before);
}

TEST(TransportTest, MoreFdsThanMaxFdsInAreTruncatedWithoutLeak) {
  ExpectFdsTruncated(/*max_fds_in=*/4, /*fd_count=*/10);
}

TEST(TransportTest, OneFdOverTheLimitIsTruncatedDespiteCmsgPadding) {
  // CMSG_SPACE(1 fd) has room for 2 fds on x86-64; still a truncation.
  ExpectFdsTruncated(/*max_fds_in=*/1, /*fd_count=*/2);
}

TEST(TransportTest, FdsToAReceiverAcceptingNone) {
  const int fds_before = CountOpenFds();
  {
    TransportOptions receiver;
    receiver.max_fds_in = 0;
    ConnectionPair pair = MakeConnectionPair({}, receiver);
    Message msg = MakeCommand(1, Command::kVersion, Pattern(8, 9));
    msg.fds.push_back(MakeEventfd());
    ASSERT_TRUE(pair.a->Send(msg).ok());
    Message got = ReceiveOne(*pair.b);
    EXPECT_TRUE(got.fds_truncated);
    EXPECT_TRUE(got.fds.empty());
  }
  EXPECT_EQ(CountOpenFds(), fds_before);
}

TEST(TransportTest, SendingMoreFdsThanMaxFdsOutFailsBeforeSending) {
  TransportOptions sender;
  sender.max_fds_out = 1;
  ConnectionPair pair = MakeConnectionPair(sender, Nonblocking());
  Message msg = MakeCommand(1, Command::kDeviceSetIrqs, Pattern(20, 1));
  msg.fds.push_back(MakeEventfd());
  msg.fds.push_back(MakeEventfd());
  absl::Status status = pair.a->Send(msg);
  EXPECT_EQ(ErrnoOf(status), EINVAL) << status;
  auto got = pair.b->Receive();
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value());
  // The connection is still usable.
  msg.fds.pop_back();
  ASSERT_TRUE(pair.a->Send(msg).ok());
  EXPECT_EQ(ReceiveOne(*pair.b).fds.size(), 1u);
}

TEST(TransportTest, EofBetweenMessagesIsACleanClose) {
  ConnectionPair pair = MakeConnectionPair();
  ASSERT_TRUE(pair.a->Send(MakeCommand(1, Command::kDeviceReset, {})).ok());
  pair.a.reset();
  EXPECT_EQ(ReceiveOne(*pair.b).header.msg_id, 1);
  absl::StatusOr<std::optional<Message>> eof = pair.b->Receive();
  ASSERT_FALSE(eof.ok());
  EXPECT_TRUE(IsPeerClosed(eof.status())) << eof.status();
  EXPECT_EQ(eof.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoOf(eof.status()), ECONNRESET);
  EXPECT_EQ(eof.status().message(), "peer closed");
  // Final: asking again gives the same answer.
  EXPECT_TRUE(IsPeerClosed(pair.b->Receive().status()));
}

TEST(TransportTest, EofBetweenMessagesNonblocking) {
  ConnectionPair pair = MakeConnectionPair({}, Nonblocking());
  pair.a.reset();
  EXPECT_TRUE(IsPeerClosed(pair.b->Receive().status()));
}

TEST(TransportTest, EofMidMessageIsAnError) {
  for (size_t cut : {size_t{5}, size_t{16}, size_t{30}}) {
    SCOPED_TRACE(cut);
    RawPeer peer = MakeRawPeer();
    std::vector<uint8_t> bytes =
        HeaderBytes(CommandHeader(1, Command::kRegionWrite, 40));
    const std::vector<uint8_t> body = Pattern(40, 1);
    bytes.insert(bytes.end(), body.begin(), body.end());
    bytes.resize(cut);
    WriteRaw(peer.raw.get(), bytes);
    peer.raw.Reset();
    absl::StatusOr<std::optional<Message>> got = peer.conn->Receive();
    ASSERT_FALSE(got.ok());
    EXPECT_FALSE(IsPeerClosed(got.status()));
    EXPECT_EQ(ErrnoOf(got.status()), EPIPE) << got.status();
    EXPECT_FALSE(peer.conn->last_bad_header().has_value());
  }
}

TEST(TransportTest, EofMidLargeMessageIsAnError) {
  RawPeer peer = MakeRawPeer();
  std::thread writer([&] {
    std::vector<uint8_t> bytes =
        HeaderBytes(CommandHeader(1, Command::kRegionWrite, 500000));
    const std::vector<uint8_t> body = Pattern(300000, 1);
    bytes.insert(bytes.end(), body.begin(), body.end());
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(peer.raw.get(), bytes.data() + off,
                         bytes.size() - off, MSG_NOSIGNAL);
      ASSERT_GT(n, 0);
      off += static_cast<size_t>(n);
    }
    peer.raw.Reset();
  });
  absl::StatusOr<std::optional<Message>> got = peer.conn->Receive();
  writer.join();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(ErrnoOf(got.status()), EPIPE) << got.status();
}

struct FramingCase {
  const char* name;
  uint32_t msg_size;
  uint32_t flags;
  int expected_errno;
};

TEST(TransportTest, FramingErrorsPoisonTheReceiveSide) {
  const FramingCase cases[] = {
      {"msg_size below 16", 8, kFlagsTypeCommand, EINVAL},
      {"msg_size zero", 0, kFlagsTypeCommand, EINVAL},
      {"msg_size above max", 4097, kFlagsTypeCommand, E2BIG},
      {"msg_size huge", 0xFFFFFFFF, kFlagsTypeReply, E2BIG},
      {"type 2", 16, 0x2, EINVAL},
      {"type 15", 16, 0xF | kFlagsNoReply, EINVAL},
  };
  for (const FramingCase& c : cases) {
    SCOPED_TRACE(c.name);
    TransportOptions options;
    options.max_msg_size = 4096;
    RawPeer peer = MakeRawPeer(options);
    // A good message first: it must still come out whole.
    std::vector<uint8_t> bytes =
        HeaderBytes(CommandHeader(1, Command::kDeviceGetInfo, 0));
    Header bad = CommandHeader(0xBEEF, Command::kRegionRead);
    bad.msg_size = c.msg_size;
    bad.flags = c.flags;
    const std::vector<uint8_t> bad_bytes = HeaderBytes(bad);
    bytes.insert(bytes.end(), bad_bytes.begin(), bad_bytes.end());
    // What follows looks like a valid message: it must never be parsed.
    const std::vector<uint8_t> decoy =
        HeaderBytes(CommandHeader(3, Command::kDeviceReset, 0));
    bytes.insert(bytes.end(), decoy.begin(), decoy.end());
    WriteRaw(peer.raw.get(), bytes);

    EXPECT_EQ(ReceiveOne(*peer.conn).header.msg_id, 1);
    absl::StatusOr<std::optional<Message>> got = peer.conn->Receive();
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(ErrnoOf(got.status()), c.expected_errno) << got.status();
    EXPECT_FALSE(IsPeerClosed(got.status()));
    ASSERT_TRUE(peer.conn->last_bad_header().has_value());
    EXPECT_EQ(peer.conn->last_bad_header()->msg_id, 0xBEEF);
    EXPECT_EQ(peer.conn->last_bad_header()->cmd,
              static_cast<uint16_t>(Command::kRegionRead));
    EXPECT_EQ(peer.conn->last_bad_header()->msg_size, c.msg_size);
    EXPECT_EQ(peer.conn->last_bad_header()->flags, c.flags);
    // Every later Receive fails the same way; the decoy is never parsed.
    absl::StatusOr<std::optional<Message>> again = peer.conn->Receive();
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status(), got.status());
    // Sending still works (the best-effort error reply).
    ASSERT_TRUE(
        peer.conn->Send(MakeErrorReply(*peer.conn->last_bad_header(), EINVAL))
            .ok());
    uint8_t reply[kHeaderSize];
    ASSERT_EQ(::recv(peer.raw.get(), reply, sizeof(reply), 0),
              static_cast<ssize_t>(kHeaderSize));
    absl::StatusOr<Header> decoded = DecodeHeader(reply, 4096);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(decoded->msg_id, 0xBEEF);
    EXPECT_TRUE(decoded->is_error());
  }
}

TEST(TransportTest, NonblockingReceiveAssemblesAcrossCalls) {
  TransportOptions options = Nonblocking();
  RawPeer peer = MakeRawPeer(options);
  std::vector<uint8_t> bytes =
      HeaderBytes(CommandHeader(4, Command::kRegionWrite, 50));
  const std::vector<uint8_t> body = Pattern(50, 4);
  bytes.insert(bytes.end(), body.begin(), body.end());

  auto nothing = peer.conn->Receive();
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value());
  size_t sent = 0;
  for (size_t cut : {size_t{7}, size_t{16}, size_t{40}}) {
    WriteRaw(peer.raw.get(),
             std::vector<uint8_t>(bytes.begin() + sent, bytes.begin() + cut));
    sent = cut;
    auto partial = peer.conn->Receive();
    ASSERT_TRUE(partial.ok());
    EXPECT_FALSE(partial->has_value());
    EXPECT_TRUE(peer.conn->HasBufferedInput());
  }
  WriteRaw(peer.raw.get(),
           std::vector<uint8_t>(bytes.begin() + 40, bytes.end()));
  Message got = ReceiveOne(*peer.conn);
  EXPECT_EQ(got.payload, body);
  EXPECT_FALSE(peer.conn->HasBufferedInput());
}

TEST(TransportTest, NonblockingSendQueuesAndFlushes) {
  TransportOptions sender = Nonblocking();
  sender.max_fds_out = 4;
  ConnectionPair pair = MakeConnectionPair(sender, Nonblocking());
  const size_t kPayload = 60000;

  // The peer does not read: fill the socket until the sender queues.
  int sent = 0;
  while (!pair.a->HasPendingOutput()) {
    ASSERT_TRUE(pair.a
                    ->Send(MakeCommand(static_cast<uint16_t>(sent),
                                       Command::kRegionWrite,
                                       Pattern(kPayload, sent)))
                    .ok());
    ++sent;
    ASSERT_LT(sent, 10000) << "the socket never filled up";
  }
  // More messages while queued, one with fds that are closed by the caller
  // right after Send (the queue keeps its own duplicates).
  const int first_queued_with_fds = sent;
  {
    Message with_fds = MakeCommand(static_cast<uint16_t>(sent),
                                   Command::kDmaMap, Pattern(32, sent));
    with_fds.fds.push_back(MakeMemfd(Pattern(4096, 77)));
    with_fds.fds.push_back(MakeEventfd());
    ASSERT_TRUE(pair.a->Send(with_fds).ok());
    ++sent;
  }
  for (int i = 0; i < 3; ++i, ++sent) {
    ASSERT_TRUE(pair.a
                    ->Send(MakeCommand(static_cast<uint16_t>(sent),
                                       Command::kRegionWrite,
                                       Pattern(kPayload, sent)))
                    .ok());
  }
  EXPECT_TRUE(pair.a->HasPendingOutput());

  // The peer resumes: read everything, flushing whenever it runs dry.
  int received = 0;
  while (received < sent) {
    auto got = pair.b->Receive();
    ASSERT_TRUE(got.ok()) << got.status();
    if (!got->has_value()) {
      ASSERT_TRUE(pair.a->HasPendingOutput()) << "lost messages";
      ASSERT_TRUE(pair.a->FlushPending().ok());
      continue;
    }
    Message& msg = **got;
    ASSERT_EQ(msg.header.msg_id, received);
    if (received == first_queued_with_fds) {
      EXPECT_EQ(msg.payload, Pattern(32, received));
      ASSERT_EQ(msg.fds.size(), 2u);
      std::vector<uint8_t> content(4096);
      ASSERT_EQ(::pread(msg.fds[0].get(), content.data(), 4096, 0), 4096);
      EXPECT_EQ(content, Pattern(4096, 77));
    } else {
      EXPECT_TRUE(msg.fds.empty());
      EXPECT_TRUE(msg.payload == Pattern(kPayload, received));
    }
    ++received;
  }
  EXPECT_FALSE(pair.a->HasPendingOutput());
  EXPECT_TRUE(pair.a->FlushPending().ok());
}

TEST(TransportTest, BlockingSendTimesOutWhenPeerNeverReads) {
  TransportOptions sender;
  sender.send_timeout = absl::Milliseconds(20);
  ConnectionPair pair = MakeConnectionPair(sender);
  absl::Status status;
  for (int i = 0; i < 10000 && status.ok(); ++i) {
    status = pair.a->Send(
        MakeCommand(1, Command::kRegionWrite, Pattern(100000, 1)));
  }
  ASSERT_FALSE(status.ok()) << "the socket never filled up";
  EXPECT_EQ(ErrnoOf(status), ETIMEDOUT) << status;
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  // Either part of that message went out (the stream cannot carry another
  // one: final) or the socket is still full; both time out.
  EXPECT_EQ(ErrnoOf(pair.a->Send(MakeCommand(2, Command::kDeviceReset, {}))),
            ETIMEDOUT);
}

TEST(TransportTest, ReceiveTimeoutIsNotFinal) {
  TransportOptions receiver;
  receiver.receive_timeout = absl::Milliseconds(10);
  ConnectionPair pair = MakeConnectionPair({}, receiver);
  absl::StatusOr<std::optional<Message>> got = pair.b->Receive();
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(ErrnoOf(got.status()), ETIMEDOUT);
  ASSERT_TRUE(pair.a->Send(MakeCommand(5, Command::kDeviceReset, {})).ok());
  EXPECT_EQ(ReceiveOne(*pair.b).header.msg_id, 5);
}

TEST(TransportTest, ReceiveTimeoutKeepsAPartialMessage) {
  TransportOptions options;
  options.receive_timeout = absl::Milliseconds(10);
  RawPeer peer = MakeRawPeer(options);
  std::vector<uint8_t> bytes =
      HeaderBytes(CommandHeader(6, Command::kRegionWrite, 8));
  const std::vector<uint8_t> body = Pattern(8, 6);
  bytes.insert(bytes.end(), body.begin(), body.end());
  WriteRaw(peer.raw.get(), std::vector<uint8_t>(bytes.begin(),
                                                bytes.begin() + 20));
  EXPECT_EQ(ErrnoOf(peer.conn->Receive().status()), ETIMEDOUT);
  WriteRaw(peer.raw.get(), std::vector<uint8_t>(bytes.begin() + 20,
                                                bytes.end()));
  EXPECT_EQ(ReceiveOne(*peer.conn).payload, body);
}

TEST(TransportTest, ShutdownWakesABlockedReceiver) {
  ConnectionPair pair = MakeConnectionPair();
  absl::Status result;
  std::thread receiver([&] { result = pair.b->Receive().status(); });
  pair.b->Shutdown();
  receiver.join();
  EXPECT_TRUE(IsPeerClosed(result)) << result;
}

TEST(TransportTest, SendToAClosedPeerIsEpipeNotSigpipe) {
  ConnectionPair pair = MakeConnectionPair();
  pair.b.reset();
  absl::Status status =
      pair.a->Send(MakeCommand(1, Command::kDeviceReset, {}));
  EXPECT_EQ(ErrnoOf(status), EPIPE) << status;
  EXPECT_EQ(ErrnoOf(pair.a->Send(MakeCommand(2, Command::kDeviceReset, {}))),
            EPIPE);
}

TEST(TransportTest, ConnectionClosesItsSocket) {
  const int fds_before = CountOpenFds();
  { ConnectionPair pair = MakeConnectionPair(); }
  EXPECT_EQ(CountOpenFds(), fds_before);
}

TEST(TransportTest, TwinSocketEndCrossesAndCarriesMessages) {
  ConnectionPair main = MakeConnectionPair();
  auto twin = MakeSocketPair();
  ASSERT_TRUE(twin.ok());

  // The server hands one end of a fresh socketpair over in its reply.
  Message reply = MakeReply(CommandHeader(0, Command::kVersion), Pattern(40, 1));
  reply.fds.push_back(std::move(twin->second));
  ASSERT_TRUE(main.a->Send(reply).ok());
  reply.fds.clear();  // the server keeps only its own end
  Connection server_twin(std::move(twin->first));

  Message got = ReceiveOne(*main.b);
  ASSERT_EQ(got.fds.size(), 1u);
  Connection client_twin(std::move(got.fds[0]));

  // DMA_READ goes server -> client on the twin; the reply comes back on it.
  ASSERT_TRUE(server_twin
                  .Send(MakeCommand(9, Command::kDmaRead, Pattern(16, 2)))
                  .ok());
  Message dma = ReceiveOne(client_twin);
  EXPECT_EQ(dma.command(), Command::kDmaRead);
  EXPECT_EQ(dma.payload, Pattern(16, 2));
  ASSERT_TRUE(client_twin.Send(MakeReply(dma.header, Pattern(80, 3))).ok());
  Message dma_reply = ReceiveOne(server_twin);
  EXPECT_TRUE(dma_reply.header.is_reply());
  EXPECT_EQ(dma_reply.header.msg_id, 9);
  EXPECT_EQ(dma_reply.payload, Pattern(80, 3));
  // The main socket is unaffected.
  ASSERT_TRUE(main.b->Send(MakeCommand(1, Command::kDeviceGetInfo, {})).ok());
  EXPECT_EQ(ReceiveOne(*main.a).command(), Command::kDeviceGetInfo);
}

// ---- Unix socket paths ----

class UnixPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = absl::StrCat("/tmp/vu-tt.", ::getpid(), ".sock");
    other_ = absl::StrCat("/tmp/vu-tt.", ::getpid(), ".other");
    ::unlink(path_.c_str());
    ::unlink(other_.c_str());
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    ::unlink(other_.c_str());
  }

  // Leaves a socket file at `path` that nobody listens on.
  static void MakeStaleSocket(const std::string& path) {
    absl::StatusOr<UniqueFd> fd = ListenUnix(path);
    ASSERT_TRUE(fd.ok()) << fd.status();
  }

  static void ExpectConnectable(const std::string& path, int listen_fd) {
    absl::StatusOr<UniqueFd> client = ConnectUnix(path);
    ASSERT_TRUE(client.ok()) << client.status();
    UniqueFd accepted(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(accepted.valid());
    Connection server(std::move(accepted));
    Connection conn(*std::move(client));
    ASSERT_TRUE(conn.Send(MakeCommand(1, Command::kVersion, {})).ok());
    EXPECT_EQ(ReceiveOne(server).command(), Command::kVersion);
  }

  std::string path_;
  std::string other_;
};

TEST_F(UnixPathTest, ListenAndConnect) {
  absl::StatusOr<UniqueFd> listener = ListenUnix(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  ExpectConnectable(path_, listener->get());
}

TEST_F(UnixPathTest, StaleSocketIsReplaced) {
  MakeStaleSocket(path_);
  struct stat st;
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  ASSERT_TRUE(S_ISSOCK(st.st_mode));
  absl::StatusOr<UniqueFd> listener = ListenUnix(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  ExpectConnectable(path_, listener->get());
}

TEST_F(UnixPathTest, LiveSocketIsNotTakenOver) {
  absl::StatusOr<UniqueFd> first = ListenUnix(path_);
  ASSERT_TRUE(first.ok());
  absl::StatusOr<UniqueFd> second = ListenUnix(path_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(ErrnoOf(second.status()), EADDRINUSE) << second.status();
  // The first server still owns the path. (Drain the probe connection.)
  UniqueFd probe(::accept4(first->get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(probe.valid());
  ExpectConnectable(path_, first->get());
}

TEST_F(UnixPathTest, RegularFileIsNotClobbered) {
  {
    UniqueFd file(::open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    ASSERT_TRUE(file.valid());
    ASSERT_EQ(::write(file.get(), "keep", 4), 4);
  }
  absl::StatusOr<UniqueFd> listener = ListenUnix(path_);
  ASSERT_FALSE(listener.ok());
  EXPECT_EQ(ErrnoOf(listener.status()), EEXIST) << listener.status();
  struct stat st;
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 4);
}

TEST_F(UnixPathTest, DirectoryIsNotClobbered) {
  ASSERT_EQ(::mkdir(path_.c_str(), 0700), 0);
  absl::StatusOr<UniqueFd> listener = ListenUnix(path_);
  EXPECT_EQ(ErrnoOf(listener.status()), EEXIST) << listener.status();
  ASSERT_EQ(::rmdir(path_.c_str()), 0);
}

TEST_F(UnixPathTest, SymlinkIsNeverFollowed) {
  // Even a symlink to a stale socket: neither the link nor its target is
  // removed, and nothing is created through it.
  MakeStaleSocket(other_);
  ASSERT_EQ(::symlink(other_.c_str(), path_.c_str()), 0);
  absl::StatusOr<UniqueFd> listener = ListenUnix(path_);
  ASSERT_FALSE(listener.ok());
  EXPECT_EQ(ErrnoOf(listener.status()), EEXIST) << listener.status();
  struct stat st;
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  ASSERT_EQ(::lstat(other_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));

  // A dangling symlink is not followed either.
  ASSERT_EQ(::unlink(other_.c_str()), 0);
  listener = ListenUnix(path_);
  EXPECT_EQ(ErrnoOf(listener.status()), EEXIST) << listener.status();
  EXPECT_NE(::lstat(other_.c_str(), &st), 0);  // nothing created there
}

TEST_F(UnixPathTest, PathLengthIsChecked) {
  const std::string longest = "/tmp/" + std::string(102, 'x');  // 107 bytes
  ASSERT_EQ(longest.size(), 107u);
  absl::StatusOr<UniqueFd> ok = ListenUnix(longest);
  EXPECT_TRUE(ok.ok()) << ok.status();
  ::unlink(longest.c_str());

  const std::string too_long = longest + "y";
  EXPECT_EQ(ErrnoOf(ListenUnix(too_long).status()), ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(ConnectUnix(too_long).status()), ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(ListenUnix("").status()), EINVAL);
}

TEST_F(UnixPathTest, ConnectToNothingFails) {
  EXPECT_EQ(ErrnoOf(ConnectUnix(path_).status()), ENOENT);
  MakeStaleSocket(path_);
  EXPECT_EQ(ErrnoOf(ConnectUnix(path_).status()), ECONNREFUSED);
}


// ---- ReceivePlacement ----

// The bytes of a reply (msg_id, cmd) with `head` then `data` as payload.
std::vector<uint8_t> ReplyBytes(uint16_t msg_id, Command cmd,
                                const std::vector<uint8_t>& head,
                                const std::vector<uint8_t>& data,
                                uint32_t extra_flags = 0) {
  Header h;
  h.msg_id = msg_id;
  h.cmd = static_cast<uint16_t>(cmd);
  h.flags = kFlagsTypeReply | extra_flags;
  h.msg_size = static_cast<uint32_t>(kHeaderSize + head.size() + data.size());
  std::vector<uint8_t> bytes = HeaderBytes(h);
  bytes.insert(bytes.end(), head.begin(), head.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

ReceivePlacement PlaceReply(uint16_t msg_id, Command cmd, size_t keep,
                            std::vector<uint8_t>& into) {
  ReceivePlacement p;
  p.msg_id = msg_id;
  p.cmd = static_cast<uint16_t>(cmd);
  p.keep = keep;
  p.into = absl::MakeSpan(into);
  return p;
}

TEST(TransportPlacementTest, SmallReplyIsPlacedAndOthersAreNot) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> head = Pattern(16, 1);
  const std::vector<uint8_t> data = Pattern(100, 2);
  // Another message first (read ahead with ours in one recvmsg).
  std::vector<uint8_t> stream =
      ReplyBytes(6, Command::kRegionRead, head, data);
  const std::vector<uint8_t> ours =
      ReplyBytes(7, Command::kRegionRead, head, data);
  stream.insert(stream.end(), ours.begin(), ours.end());
  ASSERT_TRUE(pair.a->SendFramed(stream).ok());

  std::vector<uint8_t> into(100, 0);
  const ReceivePlacement place = PlaceReply(7, Command::kRegionRead, 16, into);
  Message msg;
  ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
  EXPECT_EQ(msg.header.msg_id, 6);
  EXPECT_FALSE(msg.payload_placed);
  EXPECT_EQ(msg.payload.size(), 116u);
  EXPECT_EQ(into, std::vector<uint8_t>(100, 0));  // untouched

  ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
  EXPECT_EQ(msg.header.msg_id, 7);
  EXPECT_TRUE(msg.payload_placed);
  EXPECT_EQ(msg.payload, head);
  EXPECT_EQ(into, data);
  EXPECT_FALSE(pair.b->HasBufferedInput());
}

TEST(TransportPlacementTest, OnlyAnExactSuccessReplyIsPlaced) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> head = Pattern(16, 1);
  std::vector<uint8_t> into(64, 0);
  const ReceivePlacement place = PlaceReply(9, Command::kRegionRead, 16, into);
  struct Case {
    const char* what;
    std::vector<uint8_t> bytes;
  };
  const std::vector<Case> cases = {
      {"shorter", ReplyBytes(9, Command::kRegionRead, head, Pattern(63, 3))},
      {"longer", ReplyBytes(9, Command::kRegionRead, head, Pattern(65, 3))},
      {"other cmd", ReplyBytes(9, Command::kRegionWrite, head, Pattern(64, 3))},
      {"error", ReplyBytes(9, Command::kRegionRead, head, Pattern(64, 3),
                           kFlagsError)},
      {"command", [&] {
         std::vector<uint8_t> b =
             HeaderBytes(CommandHeader(9, Command::kRegionRead, 80));
         const std::vector<uint8_t> body = Pattern(80, 3);
         b.insert(b.end(), body.begin(), body.end());
         return b;
       }()},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ASSERT_TRUE(pair.a->SendFramed(c.bytes).ok());
    Message msg;
    ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
    EXPECT_FALSE(msg.payload_placed);
    EXPECT_EQ(msg.payload.size() + kHeaderSize, c.bytes.size());
    EXPECT_EQ(into, std::vector<uint8_t>(64, 0));
  }
}

TEST(TransportPlacementTest, LargeReplyIsReceivedStraightIntoTheBuffer) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> head = Pattern(16, 4);
  // Larger than the read-ahead buffer, and a size that fits in it.
  for (size_t size : {Connection::kReadAheadBytes * 3 + 5, size_t{4096},
                      Connection::kReadAheadBytes - 100}) {
    SCOPED_TRACE(size);
    const std::vector<uint8_t> data = Pattern(size, 5);
    const std::vector<uint8_t> bytes =
        ReplyBytes(11, Command::kDmaRead, head, data);
    std::thread writer([&] { ASSERT_TRUE(pair.a->SendFramed(bytes).ok()); });
    std::vector<uint8_t> into(size, 0);
    const ReceivePlacement place = PlaceReply(11, Command::kDmaRead, 16, into);
    Message msg;
    ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
    writer.join();
    EXPECT_TRUE(msg.payload_placed);
    EXPECT_EQ(msg.payload, head);
    EXPECT_EQ(msg.header.msg_size, bytes.size());
    EXPECT_TRUE(into == data);
    // The stream goes on normally.
    ASSERT_TRUE(pair.a->SendParts(CommandHeader(12, Command::kDeviceGetInfo),
                                  Pattern(8, 6))
                    .ok());
    EXPECT_EQ(ReceiveOne(*pair.b).payload, Pattern(8, 6));
  }
}

// A placement of kPlacementPeekBytes or more reads the head of the next
// message alone first: messages ahead of the expected reply (split by that
// short read), the reply itself and what follows it all arrive intact.
TEST(TransportPlacementTest, PeekingForALargeReplyKeepsTheStreamIntact) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> head = Pattern(16, 11);
  const std::vector<uint8_t> data = Pattern(Connection::kPlacementPeekBytes + 7, 12);
  std::vector<uint8_t> stream =
      ReplyBytes(30, Command::kRegionRead, {}, Pattern(4, 13));  // 20 bytes
  const std::vector<uint8_t> ours = ReplyBytes(31, Command::kRegionRead, head, data);
  const std::vector<uint8_t> after = ReplyBytes(32, Command::kRegionRead, head, Pattern(9, 14));
  stream.insert(stream.end(), ours.begin(), ours.end());
  stream.insert(stream.end(), after.begin(), after.end());
  std::thread writer([&] { ASSERT_TRUE(pair.a->SendFramed(stream).ok()); });
  std::vector<uint8_t> into(data.size(), 0);
  const ReceivePlacement place = PlaceReply(31, Command::kRegionRead, 16, into);
  Message msg;
  ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
  EXPECT_EQ(msg.header.msg_id, 30);
  EXPECT_EQ(msg.payload, Pattern(4, 13));
  ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
  EXPECT_EQ(msg.header.msg_id, 31);
  EXPECT_TRUE(msg.payload_placed);
  EXPECT_EQ(msg.payload, head);
  EXPECT_TRUE(into == data);
  // The next one: a large placement again, for a reply that is not it.
  ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
  writer.join();
  EXPECT_EQ(msg.header.msg_id, 32);
  EXPECT_FALSE(msg.payload_placed);
  EXPECT_EQ(msg.payload.size(), 16u + 9u);
  EXPECT_FALSE(pair.b->HasBufferedInput());
}

// A call that returns before the placed reply is complete (timeout, or
// non-blocking with the socket empty) hands the placed bytes back: the
// caller's buffer may go away, the message completes as an ordinary one.
TEST(TransportPlacementTest, AnUnfinishedPlacementIsDetachedWhenTheCallReturns) {
  for (bool nonblocking : {false, true}) {
    SCOPED_TRACE(nonblocking);
    TransportOptions options;
    options.nonblocking = nonblocking;
    options.receive_timeout = absl::Milliseconds(10);
    RawPeer peer = MakeRawPeer(options);
    const std::vector<uint8_t> head = Pattern(16, 7);
    const std::vector<uint8_t> data = Pattern(Connection::kReadAheadBytes + 500, 8);
    const std::vector<uint8_t> bytes =
        ReplyBytes(13, Command::kRegionRead, head, data);
    // Header, head and part of the data.
    const size_t cut = kHeaderSize + 16 + 300;
    WriteRaw(peer.raw.get(),
             std::vector<uint8_t>(bytes.begin(), bytes.begin() + cut));
    {
      auto into = std::make_unique<std::vector<uint8_t>>(data.size(), 0);
      const ReceivePlacement place =
          PlaceReply(13, Command::kRegionRead, 16, *into);
      Message msg;
      absl::StatusOr<bool> got = peer.conn->ReceiveInto(
          &msg, nonblocking ? std::nullopt
                            : std::optional<absl::Time>(absl::Now() +
                                                        absl::Milliseconds(5)),
          &place);
      if (nonblocking) {
        ASSERT_TRUE(got.ok());
        EXPECT_FALSE(*got);
      } else {
        EXPECT_EQ(ErrnoOf(got.status()), ETIMEDOUT);
      }
      // `into` is freed here: ASan would catch a later write into it.
    }
    WriteRaw(peer.raw.get(), std::vector<uint8_t>(bytes.begin() + cut,
                                                  bytes.begin() + cut + 1000));
    WriteRaw(peer.raw.get(),
             std::vector<uint8_t>(bytes.begin() + cut + 1000, bytes.end()));
    Message msg;
    if (nonblocking) {
      // Poll until the whole message is assembled.
      absl::StatusOr<bool> got;
      do {
        got = peer.conn->ReceiveInto(&msg);
        ASSERT_TRUE(got.ok());
      } while (!*got);
    } else {
      ASSERT_TRUE(*peer.conn->ReceiveInto(&msg));
    }
    EXPECT_FALSE(msg.payload_placed);
    ASSERT_EQ(msg.payload.size(), 16 + data.size());
    EXPECT_TRUE(std::equal(head.begin(), head.end(), msg.payload.begin()));
    EXPECT_TRUE(std::equal(data.begin(), data.end(), msg.payload.begin() + 16));
  }
}

TEST(TransportPlacementTest, FdsComeWithAPlacedReply) {
  ConnectionPair pair = MakeConnectionPair();
  const std::vector<uint8_t> head = Pattern(16, 9);
  const std::vector<uint8_t> data = Pattern(32, 10);
  Header h;
  h.msg_id = 21;
  h.cmd = static_cast<uint16_t>(Command::kRegionRead);
  h.flags = kFlagsTypeReply;
  UniqueFd fd = MakeEventfd();
  const int fds[] = {fd.get()};
  ASSERT_TRUE(pair.a->SendParts(h, head, data, fds).ok());
  std::vector<uint8_t> into(32, 0);
  const ReceivePlacement place = PlaceReply(21, Command::kRegionRead, 16, into);
  Message msg;
  ASSERT_TRUE(*pair.b->ReceiveInto(&msg, std::nullopt, &place));
  EXPECT_TRUE(msg.payload_placed);
  EXPECT_EQ(into, data);
  EXPECT_EQ(msg.fds.size(), 1u);
}

TEST(TransportTest, SendFramedSendsABatchOfMessagesInOneSendmsg) {
  FaultInjectingOs send_os;
  ConnectionPair pair = MakeConnectionPair({}, {}, &send_os);
  std::vector<uint8_t> wire;
  for (uint16_t id = 1; id <= 3; ++id) {
    const std::vector<uint8_t> payload = Pattern(8 * id, id);
    const std::vector<uint8_t> header =
        HeaderBytes(CommandHeader(id, Command::kRegionRead, payload.size()));
    wire.insert(wire.end(), header.begin(), header.end());
    wire.insert(wire.end(), payload.begin(), payload.end());
  }
  ASSERT_TRUE(pair.a->SendFramed(wire).ok());
  EXPECT_EQ(send_os.calls(FaultInjectingOs::Direction::kSend), 1u);
  for (uint16_t id = 1; id <= 3; ++id) {
    Message m = ReceiveOne(*pair.b);
    EXPECT_EQ(m.header.msg_id, id);
    EXPECT_EQ(m.payload, Pattern(8 * id, id));
  }
  EXPECT_TRUE(pair.a->SendFramed({}).ok());
}

TEST(TransportTest, CoalescingQueuesSmallMessagesUntilFlushed) {
  FaultInjectingOs send_os;
  TransportOptions nonblocking;
  nonblocking.nonblocking = true;
  ConnectionPair pair = MakeConnectionPair(nonblocking, nonblocking, &send_os);
  pair.a->set_coalescing(true);
  const std::vector<uint8_t> small = Pattern(20, 1);
  const std::vector<uint8_t> large =
      Pattern(Connection::kMaxCoalescedMessage, 2);  // + header: too big
  for (uint16_t id = 1; id <= 3; ++id) {
    Header h = CommandHeader(id, Command::kRegionWrite);
    // Referenced parts are coalesced too (copied: they are small).
    ASSERT_TRUE((id == 2 ? pair.a->SendPartsReferencing(h, {}, small)
                         : pair.a->SendParts(h, small))
                    .ok());
  }
  // Nothing left yet: the peer sees no message.
  EXPECT_EQ(send_os.calls(FaultInjectingOs::Direction::kSend), 0u);
  EXPECT_TRUE(pair.a->HasPendingOutput());
  absl::StatusOr<std::optional<Message>> none = pair.b->Receive();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  pair.a->set_coalescing(false);
  ASSERT_TRUE(pair.a->FlushPending().ok());
  EXPECT_FALSE(pair.a->HasPendingOutput());
  EXPECT_EQ(send_os.calls(FaultInjectingOs::Direction::kSend), 1u);  // the whole burst at once
  // A large message is not held back; it keeps its place in the stream (a
  // burst queued before it goes first).
  pair.a->set_coalescing(true);
  ASSERT_TRUE(pair.a->SendParts(CommandHeader(4, Command::kRegionWrite), large)
                  .ok());
  pair.a->set_coalescing(false);
  EXPECT_FALSE(pair.a->HasPendingOutput());
  EXPECT_EQ(send_os.calls(FaultInjectingOs::Direction::kSend), 2u);
  for (uint16_t id = 1; id <= 4; ++id) {
    Message m = ReceiveOne(*pair.b);
    EXPECT_EQ(m.header.msg_id, id);
    EXPECT_EQ(m.payload, id == 4 ? large : small);
  }
  // Off again: a message goes out at once.
  ASSERT_TRUE(pair.a->SendParts(CommandHeader(5, Command::kRegionWrite), small)
                  .ok());
  EXPECT_FALSE(pair.a->HasPendingOutput());
  EXPECT_EQ(ReceiveOne(*pair.b).header.msg_id, 5);
}

}  // namespace
}  // namespace vfio_user
