// The DMA test device served by a separate process, driven end to end: a
// client with guest RAM in a memfd programs copy / fill / checksum, gets
// MSI-X completions on eventfds, uses the mmap'ed descriptor ring behind the
// sparse-mmap doorbell BAR, and DMA through messages for fd-less memory.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/protocol.h"
#include "gtest/gtest.h"
#include "server/devices/dma_engine_device.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::testing {
namespace {

namespace dt = ::vfio_user::dma_test;

constexpr uint64_t kGuestIova = 0x100000;
constexpr size_t kGuestSize = 1 << 20;
constexpr uint64_t kMessageIova = 0x4000000;  // fd-less guest memory

class DmaDeviceTest : public ::testing::TestWithParam<uint16_t> {
 protected:
  void SetUp() override {
    path_ = UniqueSocketPath("vfu-dd");
    auto server = Subprocess::Start({RunfilePath("server/devices/vfio-user-sample-server"),
                                     "--idio16_socket=", absl::StrCat("--dma_socket=", path_)});
    ASSERT_TRUE(server.ok());
    server_ = std::make_unique<Subprocess>(std::move(*server));
    auto c = RawClient::Connect(path_);
    ASSERT_TRUE(c.ok());
    client_ = std::move(*c);
    // Minor 0 makes the server treat us as QEMU (draft DMA layout).
    ASSERT_TRUE(client_->Negotiate(R"({"capabilities":{"max_msg_fds":16}})", GetParam()).ok());

    // Guest RAM.
    memfd_ = ::memfd_create("guest", MFD_CLOEXEC);
    ASSERT_EQ(::ftruncate(memfd_, kGuestSize), 0);
    void* p = ::mmap(nullptr, kGuestSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
    ASSERT_NE(p, MAP_FAILED);
    guest_ = static_cast<uint8_t*>(p);
    DmaMapRequest map;
    map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
    map.address = kGuestIova;
    map.size = kGuestSize;
    auto reply = client_->Call(Command::kDmaMap, EncodeDmaMap(map), {memfd_});
    ASSERT_TRUE(reply.ok());
    ASSERT_FALSE(reply->header.is_error());

    // Memory space + bus master; MSI-X on with four eventfds.
    uint32_t cmd = *client_->ConfigRead32(0x04);
    ASSERT_TRUE(client_->ConfigWrite32(0x04, (cmd & 0xffff0000u) | 0x0006).ok());
    auto cfg = client_->RegionRead(kPciConfigRegionIndex, 0, 256);
    ASSERT_TRUE(cfg.ok());
    uint8_t cap = (*cfg)[0x34];
    while (cap != 0 && (*cfg)[cap] != 0x11) cap = (*cfg)[cap + 1];
    ASSERT_NE(cap, 0) << "no MSI-X capability";
    ASSERT_TRUE(client_->RegionWrite(kPciConfigRegionIndex, cap + 3, {0x80}).ok());
    SetIrqs irq;
    irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    irq.index = kPciMsixIrqIndex;
    irq.count = dt::kNumVectors;
    std::vector<int> fds;
    for (uint32_t v = 0; v < dt::kNumVectors; ++v) {
      vectors_[v] = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      fds.push_back(vectors_[v]);
    }
    reply = client_->Call(Command::kDeviceSetIrqs, EncodeSetIrqs(irq), fds);
    ASSERT_TRUE(reply.ok());
    ASSERT_FALSE(reply->header.is_error()) << reply->header.error;
    // The guest unmasks the vectors in the MSI-X table (vector control = 0).
    for (uint32_t v = 0; v < dt::kNumVectors; ++v) {
      ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kMsixTableOffset + 16 * v + 12, 0));
    }
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegControl,
                        dt::kControlEnable | dt::kControlIntEnable));
  }
  void TearDown() override {
    for (int fd : vectors_) ::close(fd);
    if (guest_) ::munmap(guest_, kGuestSize);
    ::close(memfd_);
    client_.reset();
    (void)server_->Stop(SIGTERM);
  }

  bool Write32(uint32_t bar, uint64_t offset, uint32_t value) {
    Bytes b(4);
    std::memcpy(b.data(), &value, 4);
    return client_->RegionWrite(bar, offset, b).ok();
  }
  uint32_t Read32(uint32_t bar, uint64_t offset) {
    auto b = client_->RegionRead(bar, offset, 4);
    EXPECT_TRUE(b.ok());
    uint32_t v = 0;
    if (b.ok()) std::memcpy(&v, b->data(), 4);
    return v;
  }
  void Program(uint32_t op, uint64_t src, uint64_t dst, uint32_t len, uint32_t vector,
               uint32_t tag, uint32_t pattern = 0) {
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegSrcLo, static_cast<uint32_t>(src)));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegSrcHi, static_cast<uint32_t>(src >> 32)));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegDstLo, static_cast<uint32_t>(dst)));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegDstHi, static_cast<uint32_t>(dst >> 32)));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegLength, len));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegOpcode, op));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegFillPattern, pattern));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegVector, vector));
    ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegTag, tag));
    ASSERT_TRUE(Write32(dt::kDoorbellBar, dt::kRegDoorbell, 1));
  }
  // Waits for an interrupt on `vector`, keeping the connection serviced
  // (DMA_READ/WRITE requests are answered while a round trip is pending).
  bool WaitVector(uint32_t vector) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      uint64_t n;
      if (::read(vectors_[vector], &n, 8) == 8) return true;
      pollfd p{vectors_[vector], POLLIN, 0};
      if (::poll(&p, 1, 5) > 0) continue;
      if (!client_->ConfigRead32(0).ok()) return false;
    }
    return false;
  }

  std::string path_;
  std::unique_ptr<Subprocess> server_;
  std::unique_ptr<RawClient> client_;
  int memfd_ = -1;
  uint8_t* guest_ = nullptr;
  int vectors_[dt::kNumVectors] = {-1, -1, -1, -1};
};

TEST_P(DmaDeviceTest, CopyFillChecksumThroughMmapWithMsixCompletion) {
  for (size_t i = 0; i < 8192; ++i) guest_[i] = static_cast<uint8_t>(i * 13 + 1);
  Program(dt::kOpCopy, kGuestIova, kGuestIova + 0x10000, 8192, 1, 42);
  ASSERT_TRUE(WaitVector(1));
  EXPECT_EQ(std::memcmp(guest_, guest_ + 0x10000, 8192), 0);
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegCompletedTag), 42u);
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegResultLo), 8192u);
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegStatus) & dt::kStatusDone, dt::kStatusDone);

  Program(dt::kOpFill, 0, kGuestIova + 0x20000, 4096, 2, 43, 0xdeadbeef);
  ASSERT_TRUE(WaitVector(2));
  uint32_t word;
  std::memcpy(&word, guest_ + 0x20000 + 4092, 4);
  EXPECT_EQ(word, 0xdeadbeefu);

  Program(dt::kOpChecksum, kGuestIova, 0, 8192, 3, 44);
  ASSERT_TRUE(WaitVector(3));
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegResultLo),
            Crc32c(0, absl::MakeConstSpan(guest_, 8192)));
}

TEST_P(DmaDeviceTest, UnmappedAddressReportsFaultAndStillInterrupts) {
  Program(dt::kOpCopy, 0x7000000000, kGuestIova, 4096, 0, 7);
  ASSERT_TRUE(WaitVector(0));
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegErrorCode), dt::kErrorReadFault);
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegErrorErrno), static_cast<uint32_t>(EFAULT));
}

TEST_P(DmaDeviceTest, DmaByMessageForMemoryWithoutFd) {
  std::vector<uint8_t> remote(0x20000);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<uint8_t>(i ^ 0x5a);
  client_->set_dma_window(MessageDmaWindow{kMessageIova, &remote});
  DmaMapRequest map;
  map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
  map.address = kMessageIova;
  map.size = remote.size();
  auto reply = client_->Call(Command::kDmaMap, EncodeDmaMap(map));
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  // fd-less -> fd-backed, then fd-backed -> fd-less.
  Program(dt::kOpCopy, kMessageIova, kGuestIova, 0x18000, 1, 1);
  ASSERT_TRUE(WaitVector(1));
  ASSERT_EQ(Read32(dt::kRegisterBar, dt::kRegErrorCode), dt::kErrorNone);
  EXPECT_EQ(std::memcmp(guest_, remote.data(), 0x18000), 0);
  std::memset(guest_ + 0x40000, 0x77, 0x1000);
  Program(dt::kOpCopy, kGuestIova + 0x40000, kMessageIova + 0x1000, 0x1000, 2, 2);
  ASSERT_TRUE(WaitVector(2));
  EXPECT_EQ(remote[0x1000], 0x77);
  EXPECT_EQ(remote[0x1fff], 0x77);
  EXPECT_GT(client_->dma_requests_served(), 0u);
}

TEST_P(DmaDeviceTest, DescriptorRingThroughSparseMmap) {
  RegionInfoRequest req;
  req.index = dt::kDoorbellBar;
  req.argsz = 256;
  auto reply = client_->Call(Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(req));
  ASSERT_TRUE(reply.ok());
  auto info = DecodeRegionInfo(ByteSpan(reply->payload));
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(info->sparse_areas.has_value());
  ASSERT_EQ(info->sparse_areas->size(), 1u);
  EXPECT_EQ((*info->sparse_areas)[0].offset, dt::kPageSize);
  UniqueFd region_fd = client_->TakeLastReplyFd();
  ASSERT_TRUE(region_fd.valid());
  void* p = ::mmap(nullptr, 3 * dt::kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED,
                   region_fd.get(), info->offset + dt::kPageSize);
  ASSERT_NE(p, MAP_FAILED);
  uint8_t* ring = static_cast<uint8_t*>(p);  // page 1 of BAR2

  for (size_t i = 0; i < 4096; ++i) guest_[0x8000 + i] = static_cast<uint8_t>(i);
  // Fill two descriptors through shared memory: no socket traffic.
  auto put32 = [](uint8_t* d, uint32_t off, uint32_t v) { std::memcpy(d + off, &v, 4); };
  auto put64 = [](uint8_t* d, uint32_t off, uint64_t v) { std::memcpy(d + off, &v, 8); };
  for (uint32_t i = 0; i < 2; ++i) {
    uint8_t* d = ring + i * dt::kDescriptorSize;
    std::memset(d, 0, dt::kDescriptorSize);
    put32(d, dt::kDescOpcode, i == 0 ? dt::kOpCopy : dt::kOpChecksum);
    put32(d, dt::kDescFlags, i == 1 ? dt::kDescFlagInterrupt : 0);
    put64(d, dt::kDescSrc, kGuestIova + 0x8000);
    put64(d, dt::kDescDst, kGuestIova + 0x9000);
    put32(d, dt::kDescLength, 4096);
    put32(d, dt::kDescVector, 3);
    put32(d, dt::kDescTag, 100 + i);
  }
  ASSERT_TRUE(Write32(dt::kDoorbellBar, dt::kRegRingDoorbell, 2));
  ASSERT_TRUE(WaitVector(3));
  uint32_t status0, status1;
  uint64_t crc;
  std::memcpy(&status0, ring + dt::kDescStatus, 4);
  std::memcpy(&status1, ring + dt::kDescriptorSize + dt::kDescStatus, 4);
  std::memcpy(&crc, ring + dt::kDescriptorSize + dt::kDescResult, 8);
  EXPECT_EQ(status0, dt::kDescStatusDone);
  EXPECT_EQ(status1, dt::kDescStatusDone);
  EXPECT_EQ(crc, Crc32c(0, absl::MakeConstSpan(guest_ + 0x8000, 4096)));
  EXPECT_EQ(std::memcmp(guest_ + 0x8000, guest_ + 0x9000, 4096), 0);
  uint32_t head;
  std::memcpy(&head, ring + dt::kPageSize + dt::kStatusBlockRingHead, 4);  // page 2
  EXPECT_EQ(head, 2u);
  ::munmap(p, 3 * dt::kPageSize);
}

TEST_P(DmaDeviceTest, ResetRestoresPowerOnState) {
  auto reply = client_->Call(Command::kDeviceReset, {});
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(reply->header.is_error());
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegControl), 0u);
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegId), dt::kIdValue);
  // Bus master is off after reset: a submission fails with BUS_MASTER.
  ASSERT_TRUE(Write32(dt::kRegisterBar, dt::kRegControl, dt::kControlEnable));
  Program(dt::kOpFill, 0, kGuestIova, 64, 0, 9);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Read32(dt::kRegisterBar, dt::kRegCompletedCount) == 0 && absl::Now() < deadline) {
  }
  EXPECT_EQ(Read32(dt::kRegisterBar, dt::kRegErrorCode), dt::kErrorBusMaster);
}

INSTANTIATE_TEST_SUITE_P(QemuAndSpecPeers, DmaDeviceTest, ::testing::Values(0, 2),
                         [](const ::testing::TestParamInfo<uint16_t>& info) {
                           return info.param == 0 ? std::string("QemuLayout")
                                                  : std::string("SpecLayout");
                         });

}  // namespace
}  // namespace vfio_user::testing
