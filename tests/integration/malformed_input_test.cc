// Hostile input against a real server process: every malformed class gets an
// error reply (or a clean disconnect, for framing errors) and the server
// keeps serving this and every other device.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "core/protocol.h"
#include "gtest/gtest.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::testing {
namespace {

Bytes RawMessage(uint16_t id, uint16_t cmd, uint32_t msg_size, uint32_t flags,
                 const Bytes& payload) {
  Bytes out(kHeaderSize);
  Header h;
  h.msg_id = id;
  h.cmd = cmd;
  h.msg_size = msg_size;
  h.flags = flags;
  EncodeHeader(h, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

class MalformedInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    idio_path_ = new std::string(UniqueSocketPath("vfu-mi-idio"));
    dma_path_ = new std::string(UniqueSocketPath("vfu-mi-dma"));
    auto server = Subprocess::Start({RunfilePath("server/devices/vfio-user-sample-server"),
                                     absl::StrCat("--idio16_socket=", *idio_path_),
                                     absl::StrCat("--dma_socket=", *dma_path_)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = new Subprocess(std::move(*server));
  }
  static void TearDownTestSuite() {
    delete server_;
    delete idio_path_;
    delete dma_path_;
  }
  void TearDown() override {
    // After every hostile case: the server is alive and serves both devices.
    ASSERT_TRUE(server_->Running()) << "server process died";
    for (const std::string* path : {idio_path_, dma_path_}) {
      auto c = RawClient::Connect(*path);
      ASSERT_TRUE(c.ok()) << c.status();
      auto v = (*c)->Negotiate();
      ASSERT_TRUE(v.ok()) << *path << ": " << v.status();
      EXPECT_TRUE((*c)->ConfigRead32(0).ok());
    }
  }

  std::unique_ptr<RawClient> Attach() {
    auto c = RawClient::Connect(*idio_path_);
    EXPECT_TRUE(c.ok());
    auto v = (*c)->Negotiate();
    EXPECT_TRUE(v.ok()) << v.status();
    return std::move(*c);
  }

  // Sends `bytes` and expects an error reply with `err`; then, if
  // `expect_close`, EOF, else a working connection.
  void ExpectError(RawClient& c, const Bytes& bytes, int err, bool expect_close) {
    ASSERT_TRUE(c.SendRaw(bytes).ok());
    auto reply = c.Receive();
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_TRUE(reply->header.is_reply());
    EXPECT_TRUE(reply->header.is_error());
    EXPECT_EQ(reply->header.error, static_cast<uint32_t>(err));
    if (expect_close) {
      auto eof = c.Receive();
      EXPECT_FALSE(eof.ok());
    } else {
      EXPECT_TRUE(c.ConfigRead32(0).ok()) << "connection should still work";
    }
  }

  static std::string* idio_path_;
  static std::string* dma_path_;
  static Subprocess* server_;
};
std::string* MalformedInputTest::idio_path_;
std::string* MalformedInputTest::dma_path_;
Subprocess* MalformedInputTest::server_;

TEST_F(MalformedInputTest, MsgSizeBelowHeaderClosesWithEinval) {
  auto c = Attach();
  ExpectError(*c, RawMessage(7, 4, 8, 0, {}), EINVAL, /*expect_close=*/true);
}

TEST_F(MalformedInputTest, OversizedMessageClosesWithE2big) {
  auto c = Attach();
  ExpectError(*c, RawMessage(7, 10, 512u << 20, 0, {}), E2BIG, true);
}

TEST_F(MalformedInputTest, BadTypeBitsClose) {
  auto c = Attach();
  ExpectError(*c, RawMessage(7, 4, 32, 0x3, Bytes(16, 0)), EINVAL, true);
}

TEST_F(MalformedInputTest, UnknownCommandIsEnosysAndContinues) {
  auto c = Attach();
  ExpectError(*c, RawMessage(7, 99, 16, 0, {}), ENOSYS, false);
  ExpectError(*c, RawMessage(8, 14, 16, 0, {}), ENOSYS, false);  // retired DIRTY_PAGES
}

TEST_F(MalformedInputTest, TruncatedPayloadsAreEinvalAndContinue) {
  auto c = Attach();
  for (uint16_t cmd : {2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17, 18}) {
    for (size_t len : {1, 3, 7}) {
      Bytes body(len, 0xff);
      ExpectError(*c, RawMessage(100 + cmd, cmd, 16 + len, 0, body),
                  EINVAL, false);
    }
  }
}

TEST_F(MalformedInputTest, WrappingAndOversizedCounts) {
  auto c = Attach();
  // offset + count wraps u64.
  ExpectError(*c, RawMessage(1, 9, 32, 0,
                             EncodeRegionAccessHeader(~0ull - 1, 2, 4)),
              ERANGE, false);
  // count above max_data_xfer_size.
  ExpectError(*c, RawMessage(2, 9, 32, 0,
                             EncodeRegionAccessHeader(0, 2, 64u << 20)),
              E2BIG, false);
  // Access beyond the region.
  ExpectError(*c, RawMessage(3, 9, 32, 0, EncodeRegionAccessHeader(250, 2, 16)),
              EINVAL, false);
  // DMA map whose end wraps.
  DmaMapRequest map;
  map.flags = kDmaMapFlagRead;
  map.address = ~0ull - 4095;
  map.size = 8192;
  ExpectError(*c, RawMessage(4, 2, 48, 0, EncodeDmaMap(map)), ERANGE, false);
}

TEST_F(MalformedInputTest, UnexpectedFdsAreClosedAndRejected) {
  auto c = Attach();
  const int before = CountOpenFds(server_->pid());
  for (int i = 0; i < 20; ++i) {
    int efd = ::eventfd(0, EFD_CLOEXEC);
    DeviceInfo info;
    auto reply = c->Call(Command::kDeviceGetInfo, EncodeDeviceInfo(info), {efd});
    ::close(efd);
    ASSERT_TRUE(reply.ok());
    EXPECT_TRUE(reply->header.is_error());
    EXPECT_EQ(reply->header.error, static_cast<uint32_t>(EINVAL));
  }
  // More fds than max_msg_fds: the kernel drops the excess; still rejected.
  std::vector<int> many;
  for (int i = 0; i < 40; ++i) many.push_back(::eventfd(0, EFD_CLOEXEC));
  SetIrqs irq;
  irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  irq.index = kPciIntxIrqIndex;
  irq.count = 40;
  Bytes payload = EncodeSetIrqs(irq);
  ASSERT_TRUE(c->SendRawWithFds(RawMessage(77, 8, 16 + payload.size(), 0, payload), many).ok());
  for (int fd : many) ::close(fd);
  auto reply = c->Receive();
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->header.msg_id, 77);
  EXPECT_TRUE(reply->header.is_error());
  ASSERT_TRUE(c->ConfigRead32(0).ok());
  EXPECT_EQ(CountOpenFds(server_->pid()), before);
}

TEST_F(MalformedInputTest, CommandBeforeVersionCloses) {
  auto c = RawClient::Connect(*idio_path_);
  ASSERT_TRUE(c.ok());
  ExpectError(**c, RawMessage(1, 9, 32, 0, EncodeRegionAccessHeader(0, 2, 1)), EINVAL, true);
}

TEST_F(MalformedInputTest, BadVersionsClose) {
  {
    auto c = RawClient::Connect(*idio_path_);
    ASSERT_TRUE(c.ok());
    auto v = (*c)->Negotiate(R"({"capabilities":{"max_msg_fds":"many"}})");
    EXPECT_FALSE(v.ok());
    EXPECT_EQ(ErrnoOf(v.status()), EINVAL);
  }
  {
    auto c = RawClient::Connect(*idio_path_);
    ASSERT_TRUE(c.ok());
    VersionPayload bad;
    bad.major = 7;
    bad.json = "{}";
    auto reply = (*c)->Call(Command::kVersion, EncodeVersion(bad));
    ASSERT_TRUE(reply.ok());
    EXPECT_TRUE(reply->header.is_error());
    EXPECT_FALSE((*c)->Receive().ok());  // closed
  }
  {
    auto c = RawClient::Connect(*idio_path_);
    ASSERT_TRUE(c.ok());
    ExpectError(**c, RawMessage(1, 1, 16 + 9, 0, Bytes{0, 0, 0, 0, '{', '}', 'x', 'y', 'z'}),
                EINVAL, true);  // JSON without its NUL
  }
}

TEST_F(MalformedInputTest, UnsolicitedReplyCloses) {
  auto c = Attach();
  ASSERT_TRUE(c->SendRaw(RawMessage(9, 11, 32, kFlagsTypeReply, Bytes(16, 0))).ok());
  EXPECT_FALSE(c->Receive().ok());
}

TEST_F(MalformedInputTest, HangUpMidMessage) {
  for (size_t cut : {1, 8, 15, 16, 20, 31}) {
    auto c = Attach();
    Bytes msg = RawMessage(1, 10, 16 + 16 + 64, 0, Bytes(16 + 64, 0));
    msg.resize(cut);
    ASSERT_TRUE(c->SendRaw(msg).ok());
  }  // each client closes with a partial message in flight
}

TEST_F(MalformedInputTest, GarbageStream) {
  for (int seed = 1; seed <= 20; ++seed) {
    auto c = Attach();
    Bytes junk(4096);
    uint32_t x = seed * 2654435761u;
    for (auto& b : junk) {
      x ^= x << 13; x ^= x >> 17; x ^= x << 5;
      b = static_cast<uint8_t>(x);
    }
    (void)c->SendRaw(junk);
    // Whatever the server answers, it must stay up (checked in TearDown).
    for (int i = 0; i < 4; ++i) {
      if (!c->Receive().ok()) break;
    }
  }
}

}  // namespace
}  // namespace vfio_user::testing
