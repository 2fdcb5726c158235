// Multi-process tests of the device server: the sample server runs as a real
// child process; this test talks to it over real sockets with real fds.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "core/protocol.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::testing {
namespace {

constexpr uint32_t kIdioBar = 2;

class ServerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    idio_path_ = UniqueSocketPath("vfu-it-idio");
    dma_path_ = UniqueSocketPath("vfu-it-dma");
    auto server = Subprocess::Start(
        {RunfilePath("server/devices/vfio-user-sample-server"),
         absl::StrCat("--idio16_socket=", idio_path_),
         absl::StrCat("--dma_socket=", dma_path_)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::make_unique<Subprocess>(std::move(*server));
  }
  void TearDown() override {
    if (server_ && server_->Running()) {
      auto status = server_->Stop(SIGTERM);
      EXPECT_TRUE(status.ok()) << status.status();
    }
    // A clean shutdown removes the sockets.
    EXPECT_NE(::access(idio_path_.c_str(), F_OK), 0);
  }

  std::unique_ptr<RawClient> Attach(const std::string& path) {
    auto client = RawClient::Connect(path);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) return nullptr;
    auto v = (*client)->Negotiate();
    EXPECT_TRUE(v.ok()) << v.status();
    return std::move(*client);
  }

  std::string idio_path_, dma_path_;
  std::unique_ptr<Subprocess> server_;
};

TEST_F(ServerIntegrationTest, Idio16ConfigSpaceAndBarSizing) {
  auto c = Attach(idio_path_);
  ASSERT_NE(c, nullptr);
  auto id = c->ConfigRead32(0);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id & 0xffff, 0x494fu);
  EXPECT_EQ(*id >> 16, 0x0dc8u);
  // BAR2 is an I/O BAR of 256 bytes: sizing reads back ~0xff | IO.
  ASSERT_TRUE(c->ConfigWrite32(0x18, 0xffffffff).ok());
  auto size_mask = c->ConfigRead32(0x18);
  ASSERT_TRUE(size_mask.ok());
  EXPECT_EQ(*size_mask, 0xffffff01u);
  // Unused BAR0 reads 0 and ignores the sizing write.
  ASSERT_TRUE(c->ConfigWrite32(0x10, 0xffffffff).ok());
  EXPECT_EQ(*c->ConfigRead32(0x10), 0u);
  // Interrupt pin A.
  auto pin = c->RegionRead(kPciConfigRegionIndex, 0x3d, 1);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ((*pin)[0], 1);
}

TEST_F(ServerIntegrationTest, DeviceAndRegionInfo) {
  auto c = Attach(idio_path_);
  ASSERT_NE(c, nullptr);
  DeviceInfo req;
  auto reply = c->Call(Command::kDeviceGetInfo, EncodeDeviceInfo(req));
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  auto info = DecodeDeviceInfoReply(ByteSpan(reply->payload));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->flags, kDeviceFlagsPci | kDeviceFlagsReset);
  EXPECT_GE(info->num_regions, 9u);
  EXPECT_EQ(info->num_irqs, 5u);

  RegionInfoRequest rreq;
  rreq.index = kIdioBar;
  reply = c->Call(Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(rreq));
  ASSERT_TRUE(reply.ok());
  auto region = DecodeRegionInfo(ByteSpan(reply->payload));
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ(region->size, 256u);
  EXPECT_EQ(region->flags & (kRegionInfoFlagRead | kRegionInfoFlagWrite),
            kRegionInfoFlagRead | kRegionInfoFlagWrite);

  rreq.index = 500;
  reply = c->Call(Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(rreq));
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->header.is_error());
  EXPECT_EQ(reply->header.error, static_cast<uint32_t>(EINVAL));
}

TEST_F(ServerIntegrationTest, Idio16OutputsKeptAcrossReconnect) {
  {
    auto c = Attach(idio_path_);
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->RegionWrite(kIdioBar, 0, {0xa5}).ok());
    ASSERT_TRUE(c->RegionWrite(kIdioBar, 4, {0x3c}).ok());
    auto out = c->RegionRead(kIdioBar, 0, 1);
    ASSERT_TRUE(out.ok());
    EXPECT_EQ((*out)[0], 0xa5);
  }  // disconnect
  auto c = Attach(idio_path_);
  ASSERT_NE(c, nullptr);
  auto lo = c->RegionRead(kIdioBar, 0, 1);
  auto hi = c->RegionRead(kIdioBar, 4, 1);
  ASSERT_TRUE(lo.ok() && hi.ok());
  EXPECT_EQ((*lo)[0], 0xa5);
  EXPECT_EQ((*hi)[0], 0x3c);
  // DEVICE_RESET restores power-on values.
  auto reply = c->Call(Command::kDeviceReset, {});
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(reply->header.is_error());
  EXPECT_EQ((*c->RegionRead(kIdioBar, 0, 1))[0], 0);
}

// An input line changes outside the guest (SIGUSR1 makes the sample server
// toggle line 0): with IRQs enabled the card raises INTx, the status register
// says which bank changed, and clearing + UNMASK re-arms it.
TEST_F(ServerIntegrationTest, Idio16InputChangeRaisesIntx) {
  auto c = Attach(idio_path_);
  ASSERT_NE(c, nullptr);
  int trigger = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  SetIrqs irq;
  irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  irq.index = kPciIntxIrqIndex;
  irq.count = 1;
  auto reply = c->Call(Command::kDeviceSetIrqs, EncodeSetIrqs(irq), {trigger});
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  auto wait_irq = [&] {
    for (int i = 0; i < 1000; ++i) {
      uint64_t n;
      if (::read(trigger, &n, 8) == 8) return true;
      ::usleep(2000);
    }
    return false;
  };
  // SIGUSR1 is asynchronous: wait until the input register shows the toggle.
  bool line0 = false;
  auto toggle = [&] {
    line0 = !line0;
    if (::kill(server_->pid(), SIGUSR1) != 0) return false;
    for (int i = 0; i < 1000; ++i) {
      auto in = c->RegionRead(kIdioBar, 1, 1);
      if (in.ok() && (((*in)[0] & 1) != 0) == line0) return true;
      ::usleep(2000);
    }
    return false;
  };
  uint64_t n;
  // IRQs disabled (power-on): a change raises nothing.
  ASSERT_TRUE(toggle());
  EXPECT_NE(::read(trigger, &n, 8), 8);
  // Enable IRQs (reading register 2), then toggle the line again.
  ASSERT_TRUE(c->RegionRead(kIdioBar, 2, 1).ok());
  ASSERT_TRUE(toggle());
  ASSERT_TRUE(wait_irq());
  auto status = c->RegionRead(kIdioBar, 6, 1);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)[0] & 0x5, 0x5) << "bank 0 changed, interrupt pending";
  // The Interrupt Status bit of the config space mirrors the line.
  EXPECT_TRUE(*c->ConfigRead32(0x04) & (0x08u << 16));
  // Clear (write register 1) and unmask: no new interrupt.
  ASSERT_TRUE(c->RegionWrite(kIdioBar, 1, {0}).ok());
  SetIrqs unmask;
  unmask.flags = kIrqSetDataNone | kIrqSetActionUnmask;
  unmask.index = kPciIntxIrqIndex;
  unmask.count = 1;
  reply = c->Call(Command::kDeviceSetIrqs, EncodeSetIrqs(unmask));
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  EXPECT_NE(::read(trigger, &n, 8), 8);
  EXPECT_EQ((*c->RegionRead(kIdioBar, 6, 1))[0] & 0x4, 0);
  // Next change interrupts again.
  ASSERT_TRUE(toggle());
  ASSERT_TRUE(wait_irq());
  ::close(trigger);
}

TEST_F(ServerIntegrationTest, SecondClientRefusedWhileFirstContinues) {
  auto first = Attach(idio_path_);
  ASSERT_NE(first, nullptr);
  auto second = RawClient::Connect(idio_path_);
  ASSERT_TRUE(second.ok());
  auto v = (*second)->Negotiate();
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(ErrnoOf(v.status()), EBUSY) << v.status();
  // The first client is unaffected.
  ASSERT_TRUE(first->RegionWrite(kIdioBar, 0, {0x11}).ok());
  EXPECT_EQ((*first->RegionRead(kIdioBar, 0, 1))[0], 0x11);
}

TEST_F(ServerIntegrationTest, ThousandConnectDisconnectCyclesDoNotLeakFds) {
  // Warm up (lazy allocations), then measure.
  { auto c = Attach(idio_path_); ASSERT_NE(c, nullptr); }
  int before = -1;
  for (int i = 0; i < 1000; ++i) {
    auto c = Attach(idio_path_);
    ASSERT_NE(c, nullptr) << "cycle " << i;
    if (i % 100 == 0) {
      // Map guest memory and wire an eventfd so the cycle exercises cleanup.
      int memfd = ::memfd_create("guest", MFD_CLOEXEC);
      ASSERT_GE(memfd, 0);
      ASSERT_EQ(::ftruncate(memfd, 1 << 20), 0);
      DmaMapRequest map;
      map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
      map.address = 0x100000;
      map.size = 1 << 20;
      auto r = c->Call(Command::kDmaMap, EncodeDmaMap(map), {memfd});
      ASSERT_TRUE(r.ok());
      EXPECT_FALSE(r->header.is_error());
      ::close(memfd);
      int efd = ::eventfd(0, EFD_CLOEXEC);
      SetIrqs irq;
      irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
      irq.index = kPciIntxIrqIndex;
      irq.count = 1;
      r = c->Call(Command::kDeviceSetIrqs, EncodeSetIrqs(irq), {efd});
      ASSERT_TRUE(r.ok());
      EXPECT_FALSE(r->header.is_error()) << r->header.error;
      ::close(efd);
    }
    // A round trip proves the server finished with the previous client.
    ASSERT_TRUE(c->RegionRead(kIdioBar, 0, 1).ok());
    if (i == 1) before = CountOpenFds(server_->pid());  // no maps held at i == 1
  }
  { auto c = Attach(idio_path_); ASSERT_NE(c, nullptr); ASSERT_TRUE(c->RegionRead(kIdioBar, 0, 1).ok()); }
  const int after = CountOpenFds(server_->pid());
  // Both samples are taken with one client attached (and at most one
  // previous session still being torn down), so a leak shows as growth.
  EXPECT_LE(after, before) << "server fds grew over 1000 connections";
}

}  // namespace
}  // namespace vfio_user::testing
