// Plays QEMU's vfio-user-pci client (hw/vfio-user, PROTOCOL.md §4.3 and §9)
// against the real sample server, byte for byte where QEMU is strict: the
// exact VERSION request (0.0, QEMU's JSON), reply sizes within the receive
// buffers QEMU allocates, chunked SET_IRQS, posted writes, unmap-all, reset.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/protocol.h"
#include "core/version.h"
#include "gtest/gtest.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::testing {
namespace {

// hw/vfio-user/proxy.c caps_json, as QEMU's QDict/JSON writer prints it.
constexpr char kQemuVersionJson[] =
    "{\"capabilities\": {\"migration\": {\"pgsize\": 4096, \"max_bitmap_size\": 268435456}, "
    "\"max_msg_fds\": 16, \"max_data_xfer_size\": 1048576, \"pgsizes\": 4096, "
    "\"max_dma_maps\": 65535, \"write_multiple\": true}}";

class QemuInteropTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = UniqueSocketPath("vfu-qi");
    auto server = Subprocess::Start({RunfilePath("server/devices/vfio-user-sample-server"),
                                     absl::StrCat("--idio16_socket=", path_),
                                     "--dma_socket="});
    ASSERT_TRUE(server.ok());
    server_ = std::make_unique<Subprocess>(std::move(*server));
    auto c = RawClient::Connect(path_);
    ASSERT_TRUE(c.ok());
    client_ = std::move(*c);
  }

  // Sends like QEMU's vfio_user_send_wait and checks the reply fits the
  // buffer QEMU would have allocated (`max_reply` bytes, header included).
  Message CallWithin(Command cmd, const Bytes& payload, size_t max_reply,
                     std::vector<int> fds = {}) {
    auto reply = client_->Call(cmd, payload, std::move(fds));
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok()) return Message();
    EXPECT_LE(reply->header.msg_size, max_reply) << CommandName(cmd);
    EXPECT_EQ(reply->header.msg_size, kHeaderSize + reply->payload.size());
    return std::move(*reply);
  }

  std::string path_;
  std::unique_ptr<Subprocess> server_;
  std::unique_ptr<RawClient> client_;
};

TEST_F(QemuInteropTest, AttachSequenceLikeQemu) {
  // 1. VERSION 0.0; QEMU's receive buffer equals the size of its request.
  VersionPayload v;
  v.major = 0;
  v.minor = 0;
  v.json = kQemuVersionJson;
  const Bytes request = EncodeVersion(v);
  Message reply = CallWithin(Command::kVersion, request, kHeaderSize + request.size());
  ASSERT_FALSE(reply.header.is_error());
  auto version = DecodeVersion(ByteSpan(reply.payload));
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(version->major, 0);
  EXPECT_EQ(version->minor, 0);  // QEMU rejects any minor > 0
  auto caps = ParseCapabilitiesJson(version->json);
  ASSERT_TRUE(caps.ok()) << caps.status();
  // Advertised explicitly (QEMU would assume 8) and within QEMU's bounds.
  EXPECT_TRUE(caps->has_max_msg_fds);
  EXPECT_LE(caps->max_msg_fds, 16u);
  EXPECT_LE(caps->max_data_xfer_size, 64u << 20);
  EXPECT_LE(caps->max_dma_maps, 65535u);
  EXPECT_EQ(caps->pgsizes & 0xfff, 0u);
  EXPECT_FALSE(caps->twin_socket_supported);

  // 2. DMA_MAP of fd-backed guest RAM (memory-backend-memfd,share=on).
  int memfd = ::memfd_create("qemu-ram", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(memfd, 2 << 20), 0);
  DmaMapRequest map;
  map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
  map.offset = 0;
  map.address = 0;
  map.size = 2 << 20;
  reply = CallWithin(Command::kDmaMap, EncodeDmaMap(map), 48, {memfd});
  EXPECT_FALSE(reply.header.is_error()) << reply.header.error;
  ::close(memfd);

  // 3. DEVICE_GET_INFO (reply buffer 32 bytes).
  DeviceInfo info_req;
  reply = CallWithin(Command::kDeviceGetInfo, EncodeDeviceInfo(info_req), 32);
  auto info = DecodeDeviceInfoReply(ByteSpan(reply.payload));
  ASSERT_TRUE(info.ok());
  EXPECT_GE(info->num_regions, 8u);
  EXPECT_LE(info->num_regions, 100u);
  EXPECT_LE(info->num_irqs, 50u);
  EXPECT_TRUE(info->flags & kDeviceFlagsReset);

  // 4. GET_REGION_INFO for BAR0-5 and CONFIG, retrying with the argsz the
  //    server asks for; at most one fd per reply; cap_offset sane.
  for (uint32_t index : {0u, 1u, 2u, 3u, 4u, 5u, 7u}) {
    RegionInfoRequest rreq;
    rreq.index = index;
    rreq.argsz = 32;
    for (int attempt = 0; attempt < 2; ++attempt) {
      reply = CallWithin(Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(rreq),
                         kHeaderSize + rreq.argsz);
      ASSERT_FALSE(reply.header.is_error());
      EXPECT_LE(client_->last_reply_fd_count(), 1);
      auto region = DecodeRegionInfo(ByteSpan(reply.payload));
      ASSERT_TRUE(region.ok());
      if (region->flags & kRegionInfoFlagCaps) {
        EXPECT_GE(region->cap_offset, 32u);
        EXPECT_LE(region->cap_offset, rreq.argsz);
      }
      if (region->argsz <= rreq.argsz) break;
      rreq.argsz = region->argsz;
    }
  }

  // 5. GET_IRQ_INFO for MSI-X and ERR (reply buffer 32 bytes).
  for (uint32_t index : {kPciMsixIrqIndex, kPciErrIrqIndex, kPciReqIrqIndex}) {
    IrqInfo ireq;
    ireq.index = index;
    reply = CallWithin(Command::kDeviceGetIrqInfo, EncodeIrqInfo(ireq), 32);
    EXPECT_FALSE(reply.header.is_error());
  }

  // 6. The initial config-space read (256 bytes; buffer 32 + count).
  reply = CallWithin(Command::kRegionRead,
                     EncodeRegionAccessHeader(0, kPciConfigRegionIndex, 256), 32 + 256);
  ASSERT_FALSE(reply.header.is_error());
  auto access = DecodeRegionReadReply(ByteSpan(reply.payload), 256);
  ASSERT_TRUE(access.ok());
  uint16_t vendor;
  std::memcpy(&vendor, access->data.data(), 2);
  EXPECT_EQ(vendor, 0x494f);

  // 7. INTx: trigger eventfd (argsz 20) and unmask (resample) eventfd.
  int trigger = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int resample = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  SetIrqs irq;
  irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  irq.index = kPciIntxIrqIndex;
  irq.count = 1;
  Bytes set = EncodeSetIrqs(irq);
  reply = CallWithin(Command::kDeviceSetIrqs, set, kHeaderSize + set.size(), {trigger});
  EXPECT_FALSE(reply.header.is_error()) << reply.header.error;
  irq.flags = kIrqSetDataEventfd | kIrqSetActionUnmask;
  set = EncodeSetIrqs(irq);
  reply = CallWithin(Command::kDeviceSetIrqs, set, kHeaderSize + set.size(), {resample});
  EXPECT_FALSE(reply.header.is_error()) << reply.header.error;
  ::close(trigger);
  ::close(resample);

  // 8. Posted (No_reply) BAR writes, then a read proves they were applied in
  //    order before it.
  ASSERT_TRUE(client_->Call(Command::kRegionWrite,
                            EncodeRegionAccessWithData(0, 2, Bytes{0x5a}), {}, true).ok());
  ASSERT_TRUE(client_->Call(Command::kRegionWrite,
                            EncodeRegionAccessWithData(4, 2, Bytes{0xa5}), {}, true).ok());
  reply = CallWithin(Command::kRegionRead, EncodeRegionAccessHeader(0, 2, 1), 32 + 1);
  ASSERT_FALSE(reply.header.is_error());
  EXPECT_EQ(reply.payload.back(), 0x5a);

  // 9. DEVICE_RESET: QEMU's buffer is the bare header.
  reply = CallWithin(Command::kDeviceReset, {}, 16);
  EXPECT_FALSE(reply.header.is_error());

  // 10. Teardown: unmap everything (address 0, size 0, flag ALL).
  DmaUnmapRequest unmap;
  unmap.flags = kDmaUnmapFlagAll;
  reply = CallWithin(Command::kDmaUnmap, EncodeDmaUnmap(unmap), 40);
  EXPECT_FALSE(reply.header.is_error()) << reply.header.error;
}

}  // namespace
}  // namespace vfio_user::testing
