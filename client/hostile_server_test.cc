// A hostile or buggy server cannot crash or hang the client: wrong-size
// replies, wrong msg_ids and commands, huge counts, silence, garbage bytes,
// hanging up mid-message. Every case ends in a clean error (EPROTO, E2BIG,
// ETIMEDOUT, ECONNRESET, ...), within the request timeout.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "client/client.h"
#include "client/client_test_util.h"
#include "client/fake_server.h"
#include "core/codec.h"
#include "core/message.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace testing {
namespace {

using Misbehave = std::function<void(FakeServer::Session&, Message&)>;

// A reply header for `request` (msg_size is set by Send()).
Header ReplyHeader(const Message& request) {
  Header h;
  h.msg_id = request.header.msg_id;
  h.cmd = request.header.cmd;
  h.flags = kFlagsTypeReply;
  return h;
}

Message RawReply(const Message& request, std::vector<uint8_t> payload) {
  Message reply;
  reply.header = ReplyHeader(request);
  reply.payload = std::move(payload);
  return reply;
}

std::vector<uint8_t> HeaderBytes(const Header& h) {
  std::vector<uint8_t> bytes(kHeaderSize);
  EncodeHeader(h, bytes.data());
  return bytes;
}

// Answers the first request for `cmd` with `misbehave`; the rest normally.
void MisbehaveOnce(FakeServer& server, Command cmd, Misbehave misbehave) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  server.SetHook([cmd, misbehave, done](FakeServer::Session& session,
                                        Message& request) {
    if (request.command() != cmd || done->exchange(true)) {
      return FakeServer::HookResult::kDefault;
    }
    misbehave(session, request);
    return FakeServer::HookResult::kHandled;
  });
}

ClientOptions HostileOptions(const FakeServer& server) {
  ClientOptions options = OptionsFor(server);
  options.request_timeout = absl::Milliseconds(300);
  options.reconnect.enabled = false;  // do not keep dialing a hostile server
  return options;
}

// ---- Attach ----

struct AttachCase {
  std::string name;
  Command cmd;
  Misbehave misbehave;
  int expected_errno;
};

class HostileAttachTest : public ::testing::TestWithParam<AttachCase> {};

TEST_P(HostileAttachTest, ConnectFailsCleanly) {
  const AttachCase& c = GetParam();
  FakeServer server(TestSocketPath("hostile"), DefaultDevice());
  MisbehaveOnce(server, c.cmd, c.misbehave);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(HostileOptions(server));
  EXPECT_EQ(ErrnoOf(client.status()), c.expected_errno) << client.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

Message VersionReply(const Message& request, uint16_t major,
                     const std::string& json) {
  VersionPayload v;
  v.major = major;
  v.minor = 0;
  v.json = json;
  return RawReply(request, EncodeVersion(v));
}

std::vector<AttachCase> AttachCases() {
  std::vector<AttachCase> cases;
  cases.push_back({"VersionNeverAnswered", Command::kVersion,
                   [](FakeServer::Session&, Message&) {}, ETIMEDOUT});
  cases.push_back({"VersionBadJson", Command::kVersion,
                   [](FakeServer::Session& s, Message& r) {
                     s.Send(VersionReply(r, 0, "{\"capabilities\":")).IgnoreError();
                   },
                   EINVAL});
  cases.push_back({"VersionWrongMajor", Command::kVersion,
                   [](FakeServer::Session& s, Message& r) {
                     s.Send(VersionReply(r, 1, "{}")).IgnoreError();
                   },
                   ENOTSUP});
  cases.push_back({"VersionHugeXferSize", Command::kVersion,
                   [](FakeServer::Session& s, Message& r) {
                     s.Send(VersionReply(r, 0,
                                         "{\"capabilities\":{\"max_data_xfer_"
                                         "size\":1099511627776}}"))
                         .IgnoreError();
                   },
                   EINVAL});
  cases.push_back({"VersionTwinIsNotASocket", Command::kVersion,
                   [](FakeServer::Session& s, Message& r) {
                     Message reply = VersionReply(
                         r, 0,
                         "{\"capabilities\":{\"twin_socket\":{\"supported\":"
                         "true,\"fd_index\":0}}}");
                     reply.fds.emplace_back(::memfd_create("x", MFD_CLOEXEC));
                     s.Send(reply).IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"VersionTwinFdMissing", Command::kVersion,
                   [](FakeServer::Session& s, Message& r) {
                     s.Send(VersionReply(
                                r, 0,
                                "{\"capabilities\":{\"twin_socket\":{"
                                "\"supported\":true,\"fd_index\":0}}}"))
                         .IgnoreError();
                   },
                   EINVAL});
  cases.push_back({"DeviceInfoShort", Command::kDeviceGetInfo,
                   [](FakeServer::Session& s, Message& r) {
                     s.Send(RawReply(r, std::vector<uint8_t>(8))).IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"DeviceInfoHugeRegionCount", Command::kDeviceGetInfo,
                   [](FakeServer::Session& s, Message& r) {
                     DeviceInfo info;
                     info.flags = kDeviceFlagsPci;
                     info.num_regions = 1000000;
                     info.num_irqs = 5;
                     s.Send(RawReply(r, EncodeDeviceInfo(info))).IgnoreError();
                   },
                   E2BIG});
  cases.push_back({"DeviceInfoHugeIrqCount", Command::kDeviceGetInfo,
                   [](FakeServer::Session& s, Message& r) {
                     DeviceInfo info;
                     info.num_regions = 9;
                     info.num_irqs = 0xffffffff;
                     s.Send(RawReply(r, EncodeDeviceInfo(info))).IgnoreError();
                   },
                   E2BIG});
  cases.push_back({"PciWithoutConfigSpace", Command::kDeviceGetInfo,
                   [](FakeServer::Session& s, Message& r) {
                     DeviceInfo info;
                     info.flags = kDeviceFlagsPci;
                     info.num_regions = 3;
                     s.Send(RawReply(r, EncodeDeviceInfo(info))).IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"RegionInfoWrongIndex", Command::kDeviceGetRegionInfo,
                   [](FakeServer::Session& s, Message& r) {
                     RegionInfo info;
                     info.index = 5;
                     s.Send(RawReply(r, EncodeRegionInfo(info, 32))).IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"RegionInfoTwoFds", Command::kDeviceGetRegionInfo,
                   [](FakeServer::Session& s, Message& r) {
                     RegionInfo info;
                     info.flags = kRegionInfoFlagRead | kRegionInfoFlagMmap;
                     info.size = 4096;
                     Message reply = RawReply(r, EncodeRegionInfo(info, 32));
                     reply.fds.emplace_back(::memfd_create("a", MFD_CLOEXEC));
                     reply.fds.emplace_back(::memfd_create("b", MFD_CLOEXEC));
                     s.Send(reply).IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"RegionInfoLargerThanArgsz", Command::kDeviceGetRegionInfo,
                   [](FakeServer::Session& s, Message& r) {
                     RegionInfo info;
                     info.sparse_areas =
                         std::vector<SparseMmapArea>(40, SparseMmapArea{0, 0});
                     s.Send(RawReply(r, EncodeRegionInfo(info, 100000)))
                         .IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"RegionInfoHugeArgsz", Command::kDeviceGetRegionInfo,
                   [](FakeServer::Session& s, Message& r) {
                     std::vector<uint8_t> payload = EncodeRegionInfo({}, 32);
                     const uint32_t argsz = 1u << 30;
                     std::memcpy(payload.data(), &argsz, 4);
                     s.Send(RawReply(r, payload)).IgnoreError();
                   },
                   E2BIG});
  cases.push_back({"RegionInfoCapLoop", Command::kDeviceGetRegionInfo,
                   [](FakeServer::Session& s, Message& r) {
                     // CAPS at 32 whose `next` points back at itself.
                     std::vector<uint8_t> p(64, 0);
                     const uint32_t argsz = 64, flags = kRegionInfoFlagCaps,
                                    cap_offset = 32;
                     std::memcpy(p.data(), &argsz, 4);
                     std::memcpy(p.data() + 4, &flags, 4);
                     std::memcpy(p.data() + 12, &cap_offset, 4);
                     const uint16_t id = 99;
                     std::memcpy(p.data() + 32, &id, 2);
                     std::memcpy(p.data() + 36, &cap_offset, 4);
                     s.Send(RawReply(r, p)).IgnoreError();
                   },
                   EPROTO});
  cases.push_back({"IrqInfoHugeCount", Command::kDeviceGetIrqInfo,
                   [](FakeServer::Session& s, Message& r) {
                     IrqInfo info;
                     info.count = 0x7fffffff;
                     s.Send(RawReply(r, EncodeIrqInfo(info))).IgnoreError();
                   },
                   E2BIG});
  cases.push_back({"IrqInfoNoReply", Command::kDeviceGetIrqInfo,
                   [](FakeServer::Session&, Message&) {}, ETIMEDOUT});
  cases.push_back({"HangUpDuringAttach", Command::kDeviceGetRegionInfo,
                   [](FakeServer::Session& s, Message&) { s.Close(); },
                   ECONNRESET});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, HostileAttachTest,
                         ::testing::ValuesIn(AttachCases()),
                         [](const ::testing::TestParamInfo<AttachCase>& info) {
                           return info.param.name;
                         });

TEST(HostileAttachTest, GrowingArgszGivesUp) {
  FakeServer server(TestSocketPath("argszgrow"), DefaultDevice());
  // The attach asks for every region in one window, then for region 0
  // alone with the larger argsz its reply asked for, twice more.
  std::atomic<int> region0_asked{0};
  server.SetHook([&region0_asked](FakeServer::Session& s, Message& r) {
    if (r.command() != Command::kDeviceGetRegionInfo) {
      return FakeServer::HookResult::kDefault;
    }
    absl::StatusOr<RegionInfoRequest> asked = DecodeRegionInfoRequest(r.payload);
    if (asked->index == 0) region0_asked.fetch_add(1);
    std::vector<uint8_t> payload = EncodeRegionInfo({}, 32);
    const uint32_t argsz = asked->argsz + 100;  // never enough
    std::memcpy(payload.data(), &argsz, 4);
    s.Send(RawReply(r, payload)).IgnoreError();
    return FakeServer::HookResult::kHandled;
  });
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(HostileOptions(server));
  EXPECT_EQ(ErrnoOf(client.status()), EPROTO) << client.status();
  EXPECT_EQ(region0_asked.load(), 3);
}

// ---- After attach ----

class HostileRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<FakeServer>(TestSocketPath("hreq"),
                                           DefaultDevice());
    server_->SetRegionBytes(2, 0, std::vector<uint8_t>{1, 2, 3, 4});
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(HostileOptions(*server_));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  // A read the server answers with `misbehave`; returns its status.
  absl::Status ReadWith(Misbehave misbehave) {
    MisbehaveOnce(*server_, Command::kRegionRead, std::move(misbehave));
    return client_->Read(2, 0, 4).status();
  }
  // The client still works afterwards (the stream stayed in sync).
  void ExpectStillWorks() {
    absl::StatusOr<std::vector<uint8_t>> got = client_->Read(2, 0, 4);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, (std::vector<uint8_t>{1, 2, 3, 4}));
  }
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(HostileRequestTest, ReadReplyLongerThanAsked) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 s.Send(RawReply(r, EncodeRegionAccessWithData(
                                        0, 2, std::vector<uint8_t>(64, 7))))
                     .IgnoreError();
               }),
               EPROTO);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, ReadReplyTooShort) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 s.Send(RawReply(r, {1, 2, 3})).IgnoreError();
               }),
               EPROTO);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, ReadReplyForAnotherOffset) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 s.Send(RawReply(r, EncodeRegionAccessWithData(
                                        64, 2, std::vector<uint8_t>(4, 7))))
                     .IgnoreError();
               }),
               EPROTO);
  ExpectStillWorks();
}

// The reply has the expected size, so its data is received straight into
// the caller's buffer; its access header still has to match.
TEST_F(HostileRequestTest, ReadReplyOfTheRightSizeWithAWrongCount) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 std::vector<uint8_t> payload =
                     EncodeRegionAccessHeader(0, 2, /*count=*/2);
                 payload.insert(payload.end(), 4, 7);
                 s.Send(RawReply(r, payload)).IgnoreError();
               }),
               EPROTO);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, ReplyWithFdsIsRejected) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 Message reply = RawReply(
                     r, EncodeRegionAccessWithData(0, 2,
                                                   std::vector<uint8_t>(4, 7)));
                 reply.fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
                 s.Send(reply).IgnoreError();
               }),
               EPROTO);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, WrongMsgIdTimesOutAndIsCounted) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 Message reply = RawReply(
                     r, EncodeRegionAccessWithData(0, 2,
                                                   std::vector<uint8_t>(4, 7)));
                 reply.header.msg_id ^= 0x5555;
                 s.Send(reply).IgnoreError();
               }),
               ETIMEDOUT);
  ExpectStillWorks();
  EXPECT_EQ(client_->counters().unexpected_messages, 1u);
}

TEST_F(HostileRequestTest, WrongCommandTimesOut) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 Message reply = RawReply(
                     r, EncodeRegionAccessWithData(0, 2,
                                                   std::vector<uint8_t>(4, 7)));
                 reply.header.cmd = static_cast<uint16_t>(Command::kRegionWrite);
                 s.Send(reply).IgnoreError();
               }),
               ETIMEDOUT);
  ExpectStillWorks();
  EXPECT_EQ(client_->counters().unexpected_messages, 1u);
}

TEST_F(HostileRequestTest, NoReplyAtAll) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session&, Message&) {}), ETIMEDOUT);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, ErrorRepliesAreSanitized) {
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 Message reply = RawReply(r, {1, 2, 3, 4, 5});  // lvu-style
                 reply.header.flags |= kFlagsError;
                 reply.header.error = EIO;
                 s.Send(reply).IgnoreError();
               }),
               EIO);
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 Message reply = RawReply(r, {});
                 reply.header.flags |= kFlagsError;
                 reply.header.error = 0;
                 s.Send(reply).IgnoreError();
               }),
               EINVAL);
  EXPECT_ERRNO(ReadWith([](FakeServer::Session& s, Message& r) {
                 Message reply = RawReply(r, {});
                 reply.header.flags |= kFlagsError;
                 reply.header.error = 0x7fffffff;
                 s.Send(reply).IgnoreError();
               }),
               EINVAL);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, FloodOfUnknownRepliesIsDropped) {
  EXPECT_OK(ReadWith([](FakeServer::Session& s, Message& r) {
    for (int i = 0; i < 1000; ++i) {
      Message junk = RawReply(r, std::vector<uint8_t>(i % 64, 0xaa));
      junk.header.msg_id = static_cast<uint16_t>(r.header.msg_id + 1 + i);
      s.Send(junk).IgnoreError();
    }
    s.Send(RawReply(r, EncodeRegionAccessWithData(0, 2,
                                                  std::vector<uint8_t>{1, 2, 3, 4})))
        .IgnoreError();
  }));
  EXPECT_EQ(client_->counters().unexpected_messages, 1000u);
  ExpectStillWorks();
}

TEST_F(HostileRequestTest, ServerRequestFlood) {
  // Requests the client must refuse, as fast as the socket takes them.
  for (int i = 0; i < 200; ++i) {
    EXPECT_FALSE(server_->DmaRead(0xdead0000 + i, 8).ok());
  }
  EXPECT_EQ(client_->counters().dma_errors, 200u);
  ExpectStillWorks();
}

// Framing errors cannot be recovered on a byte stream: the connection is
// dropped and the waiting request fails with ECONNRESET.
struct FramingCase {
  std::string name;
  Misbehave misbehave;
};

class HostileFramingTest : public ::testing::TestWithParam<FramingCase> {};

TEST_P(HostileFramingTest, DropsTheConnection) {
  FakeServer server(TestSocketPath("framing"), DefaultDevice());
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(HostileOptions(server));
  ASSERT_TRUE(client.ok()) << client.status();
  MisbehaveOnce(server, Command::kRegionRead, GetParam().misbehave);
  absl::Status read = (*client)->Read(2, 0, 4).status();
  EXPECT_TRUE(IsDisconnectError(read)) << read;
  EXPECT_EQ((*client)->AwaitState(ClientState::kFailed, absl::Seconds(10)).state,
            ClientState::kFailed);
  EXPECT_ERRNO((*client)->Read(2, 0, 4).status(), ENOTCONN);
}

std::vector<FramingCase> FramingCases() {
  std::vector<FramingCase> cases;
  cases.push_back({"MsgSizeBelowHeader", [](FakeServer::Session& s, Message& r) {
                     Header h = ReplyHeader(r);
                     h.msg_size = 4;
                     s.SendRaw(HeaderBytes(h)).IgnoreError();
                   }});
  cases.push_back({"MsgSizeHuge", [](FakeServer::Session& s, Message& r) {
                     Header h = ReplyHeader(r);
                     h.msg_size = 0xffffffff;
                     s.SendRaw(HeaderBytes(h)).IgnoreError();
                   }});
  cases.push_back({"BadTypeBits", [](FakeServer::Session& s, Message& r) {
                     Header h = ReplyHeader(r);
                     h.flags = 0x7;
                     h.msg_size = kHeaderSize;
                     s.SendRaw(HeaderBytes(h)).IgnoreError();
                   }});
  cases.push_back({"Garbage", [](FakeServer::Session& s, Message&) {
                     s.SendRaw(std::vector<uint8_t>(100, 0xff)).IgnoreError();
                   }});
  cases.push_back({"HangUpMidMessage", [](FakeServer::Session& s, Message& r) {
                     Header h = ReplyHeader(r);
                     h.msg_size = kHeaderSize + 1000;
                     std::vector<uint8_t> bytes = HeaderBytes(h);
                     bytes.resize(bytes.size() + 10, 0);
                     s.SendRaw(bytes).IgnoreError();
                     s.Close();
                   }});
  cases.push_back({"HangUp", [](FakeServer::Session& s, Message&) { s.Close(); }});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, HostileFramingTest,
                         ::testing::ValuesIn(FramingCases()),
                         [](const ::testing::TestParamInfo<FramingCase>& info) {
                           return info.param.name;
                         });

TEST(HostileReconnectTest, GarbageOnceThenTheReadIsRetriedAfterReconnect) {
  FakeServer server(TestSocketPath("garbreco"), DefaultDevice());
  server.SetRegionBytes(2, 0, std::vector<uint8_t>{5, 6, 7, 8});
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(OptionsFor(server));
  ASSERT_TRUE(client.ok()) << client.status();
  MisbehaveOnce(server, Command::kRegionRead,
                [](FakeServer::Session& s, Message&) {
                  s.SendRaw(std::vector<uint8_t>(64, 0xee)).IgnoreError();
                });
  absl::StatusOr<std::vector<uint8_t>> got = (*client)->Read(2, 0, 4);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<uint8_t>{5, 6, 7, 8}));
  EXPECT_EQ((*client)->counters().reconnects, 1u);
  EXPECT_EQ(server.connections(), 2u);
}

}  // namespace
}  // namespace testing
}  // namespace vfio_user
