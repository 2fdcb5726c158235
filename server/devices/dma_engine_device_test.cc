// DmaTestDevice driven through the engine-side Device API on a running
// EventLoop. The device is served by a real DeviceServer and a raw client
// completes VERSION on a real socket, so that the device has a client
// attached (Device::DmaRead/DmaWrite need one) and the message path
// (DMA_READ/DMA_WRITE to the client) can be exercised. Guest memory is a
// memfd mapped into the device's DMA table directly, standing in for the
// client's DMA_MAP; interrupts arrive on real eventfds.
#include "server/devices/dma_engine_device.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/transport.h"
#include "gtest/gtest.h"
#include "server/device_server.h"
#include "server/devices/register_io.h"
#include "server/event_loop.h"
#include "server/pci/pci_ids.h"

namespace vfio_user {
namespace {

using namespace dma_test;  // NOLINT(build/namespaces)

constexpr uint32_t kConfig = kPciConfigRegionIndex;
// Guest RAM (a memfd) at this IOVA, and a second range with no fd (served
// by the test client over DMA_READ/DMA_WRITE).
constexpr uint64_t kGuestIova = 0x100000;
constexpr size_t kGuestSize = 4 << 20;
constexpr uint64_t kMessageIova = 0x10000000;
constexpr size_t kMessageSize = 256 << 10;
constexpr int kWaitMs = 10000;  // safety net only; every wait has a condition

// Answers the server's DMA_READ/DMA_WRITE from a local buffer on its own
// thread. Requests can be held back (to keep an operation in flight).
class MessageMemory {
 public:
  MessageMemory(Connection* conn, uint64_t iova, size_t size)
      : conn_(conn), iova_(iova), bytes_(size) {}
  ~MessageMemory() { Stop(); }

  void Start() { thread_ = std::thread([this] { Serve(); }); }
  // Shuts the connection down (the server sees the client go) and joins.
  void Stop() {
    Release();
    ShutdownAndJoin();
  }
  void ShutdownAndJoin() {
    if (thread_.joinable()) {
      conn_->Shutdown();
      thread_.join();
    }
  }
  // Holds every request until Release(); WaitForHeldRequest() returns once
  // one is waiting.
  void Hold() {
    absl::MutexLock lock(&mu_);
    hold_ = true;
  }
  void WaitForHeldRequest() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&held_));
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    hold_ = false;
  }
  // Lets a held request go unanswered: the client "crashes" with it.
  void Abandon() {
    absl::MutexLock lock(&mu_);
    abandon_ = true;
    hold_ = false;
  }
  uint8_t* data() { return bytes_.data(); }
  int requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  void Serve() {
    for (;;) {
      auto received = conn_->Receive();
      if (!received.ok()) return;  // shut down
      if (!received->has_value()) continue;
      Message msg = std::move(**received);
      {
        absl::MutexLock lock(&mu_);
        ++requests_;
        held_ = hold_;
        auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !hold_; };
        mu_.Await(absl::Condition(&released));
        held_ = false;
        if (abandon_) return;
      }
      Message reply = Answer(msg);
      if (!conn_->Send(reply).ok()) return;
    }
  }

  Message Answer(const Message& msg) {
    const DecodeLimits limits;
    if (msg.command() == Command::kDmaRead) {
      auto req = DecodeDmaReadRequest(msg.payload, limits);
      if (!req.ok() || !Inside(req->address, req->count)) {
        return MakeErrorReply(msg.header, EFAULT);
      }
      const uint8_t* at = bytes_.data() + (req->address - iova_);
      return MakeReply(msg.header,
                       EncodeDmaAccessWithData(req->address, ByteSpan(at, req->count)));
    }
    if (msg.command() == Command::kDmaWrite) {
      auto req = DecodeDmaWriteRequest(msg.payload, limits);
      if (!req.ok() || !Inside(req->address, req->count)) {
        return MakeErrorReply(msg.header, EFAULT);
      }
      std::memcpy(bytes_.data() + (req->address - iova_), req->data.data(), req->count);
      return MakeReply(msg.header, EncodeDmaAccessHeader(req->address, req->count));
    }
    return MakeErrorReply(msg.header, ENOSYS);
  }

  bool Inside(uint64_t address, uint64_t count) const {
    return address >= iova_ && count <= bytes_.size() &&
           address - iova_ <= bytes_.size() - count;
  }

  Connection* conn_;
  const uint64_t iova_;
  std::vector<uint8_t> bytes_;
  std::thread thread_;
  absl::Mutex mu_;
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  bool abandon_ ABSL_GUARDED_BY(mu_) = false;
  int requests_ ABSL_GUARDED_BY(mu_) = 0;
};

class DmaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = std::move(*loop);
    loop_->StartThread("dma-test-loop");
    dma_ = std::make_unique<DmaTestDevice>();
    // Short (sun_path) and unique: sandboxed test runs may share /tmp and
    // even the pid.
    path_ = absl::StrCat("/tmp/dmat.", ::getpid(), ".", std::random_device{}(), ".sock");
    ::unlink(path_.c_str());
    Run([&] {
      DeviceServerOptions options;
      options.socket_path = path_;
      options.events.on_client_detached = [this](const absl::Status&) {
        absl::MutexLock lock(&detach_mu_);
        ++detaches_;
      };
      auto server = DeviceServer::Create(loop_.get(), dev(), std::move(options));
      ASSERT_TRUE(server.ok()) << server.status();
      server_ = std::move(*server);
    });
    ASSERT_NO_FATAL_FAILURE(ConnectClient());

    // Guest RAM.
    guest_fd_ = UniqueFd(::memfd_create("dma-test-guest", MFD_CLOEXEC));
    ASSERT_TRUE(guest_fd_.valid());
    ASSERT_EQ(::ftruncate(guest_fd_.get(), kGuestSize), 0);
    void* p = ::mmap(nullptr, kGuestSize, PROT_READ | PROT_WRITE, MAP_SHARED,
                     guest_fd_.get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    guest_ = static_cast<uint8_t*>(p);
    ASSERT_NO_FATAL_FAILURE(MapGuestMemory());
    ASSERT_NO_FATAL_FAILURE(WireVectors(kPciMsixIrqIndex, kNumVectors));
    ASSERT_NO_FATAL_FAILURE(EnableMsix(true));
    EnableBusMaster(true);
    WriteReg(kRegControl, kControlEnable | kControlIntEnable);
  }

  void TearDown() override {
    messages_.reset();
    client_.reset();
    Run([&] {
      server_.reset();
      dma_.reset();
    });
    loop_->Stop();
    loop_->Join();
    if (guest_ != nullptr) ::munmap(guest_, kGuestSize);
  }

  Device* dev() { return dma_->device(); }
  void Run(std::function<void()> fn) { loop_->RunSync(std::move(fn)); }

  void ConnectClient() {
    auto fd = ConnectUnix(path_);
    ASSERT_TRUE(fd.ok()) << fd.status();
    client_ = std::make_unique<Connection>(std::move(*fd));
    VersionPayload version;  // no JSON: spec defaults, no twin socket
    ASSERT_TRUE(client_->Send(MakeCommand(1, Command::kVersion, EncodeVersion(version))).ok());
    auto reply = client_->Receive();
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_TRUE(reply->has_value());
    ASSERT_EQ((*reply)->header.flags & kFlagsError, 0u);
    bool attached = false;
    Run([&] { attached = dev()->client_attached(); });
    ASSERT_TRUE(attached);
  }

  void MapGuestMemory() {
    DmaMapRequest map;
    map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
    map.address = kGuestIova;
    map.size = kGuestSize;
    ASSERT_TRUE(dev()->dma().Map(map, UniqueFd(::dup(guest_fd_.get()))).ok());
  }

  // Maps [kMessageIova, +kMessageSize) without an fd and serves it from the
  // client thread.
  void MapMessageMemory() {
    DmaMapRequest map;
    map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
    map.address = kMessageIova;
    map.size = kMessageSize;
    ASSERT_TRUE(dev()->dma().Map(map, UniqueFd()).ok());
    messages_ = std::make_unique<MessageMemory>(client_.get(), kMessageIova, kMessageSize);
    messages_->Start();
  }

  // Fresh eventfds for vectors [0, count) of `index`.
  void WireVectors(uint32_t index, uint32_t count) {
    std::vector<UniqueFd>& mine = vectors_[index];
    mine.clear();
    std::vector<UniqueFd> theirs;
    for (uint32_t v = 0; v < count; ++v) {
      mine.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      ASSERT_TRUE(mine.back().valid());
      theirs.emplace_back(::dup(mine.back().get()));
    }
    SetIrqs req;
    req.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    req.index = index;
    req.start = 0;
    req.count = count;
    Run([&] { ASSERT_TRUE(dev()->irqs().SetIrqs(req, std::move(theirs)).ok()); });
  }

  // Waits for `index`/`vector` to fire; returns the number of signals.
  uint64_t WaitForVector(uint32_t vector, uint32_t index = kPciMsixIrqIndex) {
    const int fd = vectors_[index].at(vector).get();
    struct pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, kWaitMs) != 1) {
      ADD_FAILURE() << "vector " << vector << " of index " << index << " never fired";
      return 0;
    }
    uint64_t count = 0;
    EXPECT_EQ(::read(fd, &count, sizeof(count)), 8);
    return count;
  }
  bool VectorPending(uint32_t vector, uint32_t index = kPciMsixIrqIndex) {
    struct pollfd p = {vectors_[index].at(vector).get(), POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  }

  // Polls `condition` on the loop thread until it holds (for states that
  // raise no interrupt by design). Each poll is a loop round trip.
  void WaitUntil(std::function<bool()> condition) {
    const absl::Time deadline = absl::Now() + absl::Milliseconds(kWaitMs);
    bool met = false;
    while (!met && absl::Now() < deadline) {
      Run([&] { met = condition(); });
      if (!met) std::this_thread::yield();
    }
    EXPECT_TRUE(met) << "condition not reached";
  }
  uint32_t CompletedCount() { return ReadReg(kRegCompletedCount); }

  uint32_t ReadBar(uint32_t bar, uint32_t offset) {
    std::array<uint8_t, 4> out{};
    Run([&] { EXPECT_TRUE(dev()->RegionRead(bar, offset, absl::MakeSpan(out)).ok()); });
    return static_cast<uint32_t>(LoadLe(out));
  }
  void WriteBar(uint32_t bar, uint32_t offset, uint32_t value) {
    std::array<uint8_t, 4> in{};
    StoreLe(value, absl::MakeSpan(in));
    Run([&] { EXPECT_TRUE(dev()->RegionWrite(bar, offset, in).ok()); });
  }
  uint32_t ReadReg(uint32_t offset) { return ReadBar(kRegisterBar, offset); }
  void WriteReg(uint32_t offset, uint32_t value) { WriteBar(kRegisterBar, offset, value); }
  uint32_t ConfigRead(uint32_t offset, size_t width) {
    std::vector<uint8_t> out(width);
    Run([&] { EXPECT_TRUE(dev()->RegionRead(kConfig, offset, absl::MakeSpan(out)).ok()); });
    return static_cast<uint32_t>(LoadLe(out));
  }
  void ConfigWrite(uint32_t offset, uint32_t value, size_t width) {
    std::vector<uint8_t> in(width);
    StoreLe(value, absl::MakeSpan(in));
    Run([&] { EXPECT_TRUE(dev()->RegionWrite(kConfig, offset, in).ok()); });
  }
  void EnableBusMaster(bool on) {
    ConfigWrite(kPciCommand, kPciCommandMemory | (on ? kPciCommandMaster : 0), 2);
  }
  void EnableMsix(bool on) {
    const uint16_t cap = dev()->config().msix_offset();
    ASSERT_NE(cap, 0);
    ConfigWrite(cap + kPciMsixFlags, on ? kPciMsixFlagsEnable : 0, 2);
  }
  void EnableMsi(bool on, uint32_t log2_vectors) {
    const uint16_t cap = dev()->config().msi_offset();
    ASSERT_NE(cap, 0);
    ConfigWrite(cap + kPciMsiFlags, on ? (kPciMsiFlagsEnable | (log2_vectors << 4)) : 0, 2);
  }

  void Program(uint32_t opcode, uint64_t src, uint64_t dst, uint32_t length,
               uint32_t vector, uint32_t tag, uint32_t pattern = 0) {
    WriteReg(kRegOpcode, opcode);
    WriteReg(kRegSrcLo, static_cast<uint32_t>(src));
    WriteReg(kRegSrcHi, static_cast<uint32_t>(src >> 32));
    WriteReg(kRegDstLo, static_cast<uint32_t>(dst));
    WriteReg(kRegDstHi, static_cast<uint32_t>(dst >> 32));
    WriteReg(kRegLength, length);
    WriteReg(kRegVector, vector);
    WriteReg(kRegTag, tag);
    WriteReg(kRegFillPattern, pattern);
  }
  void RingDoorbell() { WriteBar(kDoorbellBar, kRegDoorbell, 1); }
  // Programs, rings and waits for the completion interrupt.
  void RunOp(uint32_t opcode, uint64_t src, uint64_t dst, uint32_t length,
             uint32_t vector, uint32_t tag, uint32_t pattern = 0) {
    Program(opcode, src, dst, length, vector, tag, pattern);
    RingDoorbell();
    EXPECT_EQ(WaitForVector(vector), 1u);
  }
  uint64_t Result() {
    return ReadReg(kRegResultLo) | (uint64_t{ReadReg(kRegResultHi)} << 32);
  }
  void ExpectError(uint32_t error, int err_no = 0) {
    EXPECT_EQ(ReadReg(kRegStatus) & ~kStatusBusy, kStatusError);
    EXPECT_EQ(ReadReg(kRegErrorCode), error);
    EXPECT_EQ(ReadReg(kRegErrorErrno), static_cast<uint32_t>(err_no));
    EXPECT_EQ(ReadReg(kRegIntStatus) & kIntError, kIntError);
    WriteReg(kRegIntStatus, kIntDone | kIntError);
  }

  void FillGuest(uint64_t offset, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; ++i) {
      guest_[offset + i] = static_cast<uint8_t>((i * 131 + seed) ^ (i >> 8));
    }
  }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<DmaTestDevice> dma_;
  std::unique_ptr<DeviceServer> server_;
  std::string path_;
  std::unique_ptr<Connection> client_;
  std::unique_ptr<MessageMemory> messages_;
  absl::Mutex detach_mu_;
  int detaches_ ABSL_GUARDED_BY(detach_mu_) = 0;
  UniqueFd guest_fd_;
  uint8_t* guest_ = nullptr;
  std::array<std::vector<UniqueFd>, kPciNumIrqs> vectors_;
};

TEST(Crc32cTest, KnownVectors) {
  const std::string check = "123456789";
  EXPECT_EQ(Crc32c(0, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(check.data()),
                                          check.size())),
            0xe3069283u);
  EXPECT_EQ(Crc32c(0, {}), 0u);
  const std::vector<uint8_t> zeros(32, 0);
  EXPECT_EQ(Crc32c(0, zeros), 0x8a9136aau);  // RFC 3720 B.4
  // Incremental == one shot.
  const auto span = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(check.data()), 9);
  EXPECT_EQ(Crc32c(Crc32c(0, span.subspan(0, 4)), span.subspan(4)), 0xe3069283u);
}

TEST_F(DmaDeviceTest, ConfigSpaceAndRegions) {
  EXPECT_EQ(ConfigRead(kPciVendorId, 2), kVendorId);
  EXPECT_EQ(ConfigRead(kPciDeviceId, 2), kDeviceId);
  EXPECT_EQ(ConfigRead(kPciRevisionId, 4) >> 8, kClassCode);
  EXPECT_EQ(dev()->config().size(), 4096u);
  EXPECT_NE(dev()->config().pm_offset(), 0);
  EXPECT_NE(dev()->config().msi_offset(), 0);
  EXPECT_NE(dev()->config().pcie_offset(), 0);
  const uint16_t msix = dev()->config().msix_offset();
  ASSERT_NE(msix, 0);
  EXPECT_EQ(ConfigRead(msix + kPciMsixFlags, 2) & kPciMsixFlagsQsize, kNumVectors - 1);
  EXPECT_EQ(ConfigRead(msix + kPciMsixTable, 4), kMsixTableOffset | kRegisterBar);
  EXPECT_EQ(ConfigRead(msix + kPciMsixPba, 4), kMsixPbaOffset | kRegisterBar);

  // BAR0: 64-bit, 4 KiB. BAR2: 32-bit, 16 KiB.
  ConfigWrite(PciBarOffset(0), 0xffffffff, 4);
  ConfigWrite(PciBarOffset(1), 0xffffffff, 4);
  EXPECT_EQ(ConfigRead(PciBarOffset(0), 4), 0xfffff004u);
  EXPECT_EQ(ConfigRead(PciBarOffset(1), 4), 0xffffffffu);
  ConfigWrite(PciBarOffset(2), 0xffffffff, 4);
  EXPECT_EQ(ConfigRead(PciBarOffset(2), 4), 0xffffc000u);

  auto bar2 = dev()->GetRegionInfo(kDoorbellBar);
  ASSERT_TRUE(bar2.ok());
  EXPECT_EQ(bar2->size, kDoorbellBarSize);
  EXPECT_TRUE(bar2->flags & kRegionInfoFlagMmap);
  ASSERT_TRUE(bar2->sparse_areas.has_value());
  EXPECT_EQ(*bar2->sparse_areas,
            (std::vector<SparseMmapArea>{{kPageSize, kDoorbellBarSize - kPageSize}}));
  EXPECT_GE(dev()->RegionFd(kDoorbellBar), 0);
  auto bar0 = dev()->GetRegionInfo(kRegisterBar);
  ASSERT_TRUE(bar0.ok());
  EXPECT_EQ(bar0->size, kRegisterBarSize);
  EXPECT_FALSE(bar0->flags & kRegionInfoFlagMmap);

  EXPECT_EQ(ReadReg(kRegId), kIdValue);
  EXPECT_EQ(ReadReg(kRegVersion), kVersionValue);
  EXPECT_EQ(ReadReg(kRegRingSize), kRingEntries);
  EXPECT_EQ(ReadReg(kRegMaxLength), kMaxLength);
  EXPECT_EQ(ReadReg(0x400), 0u);  // unused
  // Byte reads of a register; writes must be aligned 32/64-bit.
  std::array<uint8_t, 2> two{};
  Run([&] {
    EXPECT_TRUE(dev()->RegionRead(kRegisterBar, kRegId + 1, absl::MakeSpan(two)).ok());
    EXPECT_FALSE(dev()->RegionWrite(kRegisterBar, kRegTag + 1, two).ok());
    std::array<uint8_t, 8> eight{};
    StoreLe(0x1122334455667788, absl::MakeSpan(eight));
    EXPECT_TRUE(dev()->RegionWrite(kRegisterBar, kRegSrcLo, eight).ok());
    // Accesses crossing from the doorbell page into the ring are refused.
    EXPECT_FALSE(dev()->RegionWrite(kDoorbellBar, kPageSize - 4, eight).ok());
  });
  EXPECT_EQ(two[0], static_cast<uint8_t>(kIdValue >> 8));
  EXPECT_EQ(ReadReg(kRegSrcLo), 0x55667788u);
  EXPECT_EQ(ReadReg(kRegSrcHi), 0x11223344u);
}

TEST_F(DmaDeviceTest, CopyThroughMsix) {
  const size_t len = 200 * 1024 + 3;  // several chunks, odd tail
  FillGuest(0, len, 7);
  RunOp(kOpCopy, kGuestIova, kGuestIova + 0x200000, len, /*vector=*/1, /*tag=*/0xabc);
  EXPECT_EQ(std::memcmp(guest_, guest_ + 0x200000, len), 0);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);
  EXPECT_EQ(ReadReg(kRegErrorCode), kErrorNone);
  EXPECT_EQ(Result(), len);
  EXPECT_EQ(ReadReg(kRegCompletedTag), 0xabcu);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 1u);
  EXPECT_EQ(ReadReg(kRegIntStatus), kIntDone);
  WriteReg(kRegIntStatus, kIntDone);
  EXPECT_EQ(ReadReg(kRegIntStatus), 0u);
  for (uint32_t v : {0u, 2u, 3u}) EXPECT_FALSE(VectorPending(v));
}

TEST_F(DmaDeviceTest, FillWritesThePattern) {
  RunOp(kOpFill, 0, kGuestIova + 10, 4099, /*vector=*/0, /*tag=*/1, 0xdeadbeef);
  const uint8_t pattern[4] = {0xef, 0xbe, 0xad, 0xde};
  for (size_t i = 0; i < 4099; ++i) ASSERT_EQ(guest_[10 + i], pattern[i % 4]) << i;
  EXPECT_EQ(guest_[9], 0);
  EXPECT_EQ(guest_[10 + 4099], 0);
  EXPECT_EQ(Result(), 4099u);
}

TEST_F(DmaDeviceTest, ChecksumIsCrc32c) {
  std::memcpy(guest_ + 0x1000, "123456789", 9);
  RunOp(kOpChecksum, kGuestIova + 0x1000, 0, 9, 2, 2);
  EXPECT_EQ(Result(), 0xe3069283u);

  const size_t len = 1 << 20;
  FillGuest(0x100000, len, 99);
  RunOp(kOpChecksum, kGuestIova + 0x100000, 0, len, 3, 3);
  EXPECT_EQ(Result(), Crc32c(0, absl::MakeConstSpan(guest_ + 0x100000, len)));

  RunOp(kOpChecksum, kGuestIova, 0, 0, 0, 4);  // empty
  EXPECT_EQ(Result(), 0u);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);
}

TEST_F(DmaDeviceTest, ErrorsStillInterrupt) {
  // Source not mapped: nothing is written.
  RunOp(kOpCopy, 0x40000000, kGuestIova, 4096, 1, 10);
  ExpectError(kErrorReadFault, EFAULT);
  EXPECT_EQ(guest_[0], 0);
  // Destination straddles the end of the map: nothing is written either.
  FillGuest(0, 8192, 1);
  RunOp(kOpCopy, kGuestIova, kGuestIova + kGuestSize - 4096, 8192, 1, 11);
  ExpectError(kErrorWriteFault, EFAULT);
  EXPECT_EQ(guest_[kGuestSize - 4096], 0);
  // Too long.
  RunOp(kOpFill, 0, kGuestIova, kMaxLength + 1, 2, 12);
  ExpectError(kErrorBadLength);
  // Unknown opcode.
  RunOp(77, kGuestIova, kGuestIova, 16, 3, 13);
  ExpectError(kErrorBadOpcode);
  // Out-of-range vector: reported on vector 0.
  Program(kOpFill, 0, kGuestIova, 16, 9, 14);
  RingDoorbell();
  EXPECT_EQ(WaitForVector(0), 1u);
  ExpectError(kErrorBadVector);
  EXPECT_EQ(ReadReg(kRegCompletedTag), 14u);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 5u);
}

TEST_F(DmaDeviceTest, BusMasterEnableIsRequired) {
  EnableBusMaster(false);
  RunOp(kOpFill, 0, kGuestIova, 64, 0, 1, 0x01010101);
  ExpectError(kErrorBusMaster);
  EXPECT_EQ(guest_[0], 0);
  EnableBusMaster(true);
  RunOp(kOpFill, 0, kGuestIova, 64, 0, 2, 0x01010101);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);
  EXPECT_EQ(guest_[63], 1);
}

TEST_F(DmaDeviceTest, DisabledEngineRejectsSubmissions) {
  WriteReg(kRegControl, kControlIntEnable);
  RunOp(kOpFill, 0, kGuestIova, 64, 1, 5);
  ExpectError(kErrorNotEnabled);
  EXPECT_EQ(guest_[0], 0);
  // Without INT_ENABLE there is no interrupt, but the status is recorded.
  WriteReg(kRegControl, kControlEnable);
  Program(kOpFill, 0, kGuestIova, 64, 1, 6, 0x02020202);
  RingDoorbell();
  WaitUntil([&] { return CompletedCount() == 2; });
  EXPECT_EQ(ReadReg(kRegCompletedTag), 6u);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);
  EXPECT_EQ(ReadReg(kRegIntStatus), kIntDone);
  EXPECT_FALSE(VectorPending(1));
  EXPECT_EQ(guest_[0], 2);
}

TEST_F(DmaDeviceTest, DescriptorRingThroughSharedMemory) {
  // Map the BAR's mappable pages like a client would (from the region fd).
  void* p = ::mmap(nullptr, kDoorbellBarSize - kPageSize, PROT_READ | PROT_WRITE,
                   MAP_SHARED, dev()->RegionFd(kDoorbellBar), kPageSize);
  ASSERT_NE(p, MAP_FAILED);
  uint8_t* ring = static_cast<uint8_t*>(p);  // BAR2 + 0x1000
  uint8_t* status_block = ring + (kStatusBlockOffset - kRingOffset);
  auto put = [&](uint32_t index, uint32_t field, uint64_t value, size_t width) {
    StoreLe(value, absl::MakeSpan(ring + (index % kRingEntries) * kDescriptorSize + field, width));
  };
  auto get = [&](uint32_t index, uint32_t field, size_t width) {
    return LoadLe(absl::MakeConstSpan(ring + (index % kRingEntries) * kDescriptorSize + field,
                                      width));
  };
  FillGuest(0, 4096, 3);
  std::memcpy(guest_ + 0x3000, "123456789", 9);
  // 0: copy, 1: fill, 2: bad opcode (error: interrupts although not asked),
  // 3: checksum with an interrupt on vector 2.
  put(0, kDescOpcode, kOpCopy, 4);
  put(0, kDescSrc, kGuestIova, 8);
  put(0, kDescDst, kGuestIova + 0x1000, 8);
  put(0, kDescLength, 4096, 4);
  put(0, kDescTag, 100, 4);
  put(1, kDescOpcode, kOpFill, 4);
  put(1, kDescDst, kGuestIova + 0x2000, 8);
  put(1, kDescLength, 8, 4);
  put(1, kDescFillPattern, 0x55555555, 4);
  put(1, kDescTag, 101, 4);
  put(2, kDescOpcode, 0, 4);
  put(2, kDescVector, 1, 4);
  put(2, kDescTag, 102, 4);
  put(3, kDescOpcode, kOpChecksum, 4);
  put(3, kDescFlags, kDescFlagInterrupt, 4);
  put(3, kDescSrc, kGuestIova + 0x3000, 8);
  put(3, kDescLength, 9, 4);
  put(3, kDescVector, 2, 4);
  put(3, kDescTag, 103, 4);

  WriteBar(kDoorbellBar, kRegRingDoorbell, 4);
  EXPECT_EQ(WaitForVector(1), 1u);  // descriptor 2's error
  EXPECT_EQ(WaitForVector(2), 1u);  // descriptor 3
  EXPECT_FALSE(VectorPending(0));

  EXPECT_EQ(get(0, kDescStatus, 4), kDescStatusDone);
  EXPECT_EQ(get(0, kDescResult, 8), 4096u);
  EXPECT_EQ(std::memcmp(guest_, guest_ + 0x1000, 4096), 0);
  EXPECT_EQ(get(1, kDescStatus, 4), kDescStatusDone);
  EXPECT_EQ(guest_[0x2007], 0x55);
  EXPECT_EQ(get(2, kDescStatus, 4), kDescStatusError);
  EXPECT_EQ(get(2, kDescErrorCode, 4), kErrorBadOpcode);
  EXPECT_EQ(get(3, kDescStatus, 4), kDescStatusDone);
  EXPECT_EQ(get(3, kDescResult, 8), 0xe3069283u);
  EXPECT_EQ(LoadLe(absl::MakeConstSpan(status_block + kStatusBlockRingHead, 4)), 4u);
  EXPECT_EQ(LoadLe(absl::MakeConstSpan(status_block + kStatusBlockCompletedCount, 4)), 4u);
  EXPECT_EQ(ReadReg(kRegRingHead), 4u);
  EXPECT_EQ(ReadReg(kRegRingTail), 4u);
  EXPECT_EQ(ReadBar(kDoorbellBar, kRegDoorbellRingHead), 4u);
  EXPECT_EQ(ReadBar(kDoorbellBar, kRegRingDoorbell), 4u);
  EXPECT_EQ(ReadReg(kRegCompletedTag), 103u);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);

  // The ring wraps: 64 more descriptors (indexes 4..67) in one doorbell.
  for (uint32_t i = 4; i < 4 + kRingEntries; ++i) {
    put(i, kDescOpcode, kOpFill, 4);
    put(i, kDescFlags, i == 3 + kRingEntries ? kDescFlagInterrupt : 0, 4);
    put(i, kDescDst, kGuestIova + 0x10000 + 4 * i, 8);
    put(i, kDescLength, 4, 4);
    put(i, kDescFillPattern, i, 4);
    put(i, kDescVector, 3, 4);
    put(i, kDescStatus, kDescStatusPending, 4);
  }
  WriteBar(kDoorbellBar, kRegRingDoorbell, 4 + kRingEntries);
  EXPECT_EQ(WaitForVector(3), 1u);
  for (uint32_t i = 4; i < 4 + kRingEntries; ++i) {
    EXPECT_EQ(get(i, kDescStatus, 4), kDescStatusDone) << i;
    EXPECT_EQ(LoadLe(absl::MakeConstSpan(guest_ + 0x10000 + 4 * i, 4)), i);
  }
  EXPECT_EQ(ReadReg(kRegRingHead), 4 + kRingEntries);

  // Moving the tail backwards, or more than a ring ahead, is an error.
  WriteBar(kDoorbellBar, kRegRingDoorbell, 2);
  EXPECT_EQ(WaitForVector(0), 1u);
  ExpectError(kErrorRingOverflow);
  WriteBar(kDoorbellBar, kRegRingDoorbell, 4 + 2 * kRingEntries + 1);
  EXPECT_EQ(WaitForVector(0), 1u);
  ExpectError(kErrorRingOverflow);
  EXPECT_EQ(ReadReg(kRegRingTail), 4 + kRingEntries);
  ::munmap(p, kDoorbellBarSize - kPageSize);
}

TEST_F(DmaDeviceTest, MaskedMsixVectorIsPendingUntilUnmasked) {
  // Mask vector 1 through the MSI-X table in BAR0 (as a guest does).
  const uint32_t control = kMsixTableOffset + 16 * 1 + kPciMsixEntryVectorCtrl;
  WriteReg(control, kPciMsixEntryCtrlMaskBit);
  Program(kOpFill, 0, kGuestIova, 16, 1, 1);
  RingDoorbell();
  RunOp(kOpFill, 0, kGuestIova + 16, 16, 0, 2);  // completes after the first
  EXPECT_FALSE(VectorPending(1));
  EXPECT_EQ(ReadReg(kMsixPbaOffset) & 0x2u, 0x2u);
  WriteReg(control, 0);
  EXPECT_EQ(WaitForVector(1), 1u);
  EXPECT_EQ(ReadReg(kMsixPbaOffset) & 0x2u, 0u);
}

TEST_F(DmaDeviceTest, FallsBackToMsiThenIntx) {
  ASSERT_NO_FATAL_FAILURE(WireVectors(kPciMsiIrqIndex, kNumVectors));
  ASSERT_NO_FATAL_FAILURE(WireVectors(kPciIntxIrqIndex, 1));
  ASSERT_NO_FATAL_FAILURE(EnableMsix(false));
  ASSERT_NO_FATAL_FAILURE(EnableMsi(true, /*log2_vectors=*/2));
  Program(kOpFill, 0, kGuestIova, 16, 2, 1);
  RingDoorbell();
  EXPECT_EQ(WaitForVector(2, kPciMsiIrqIndex), 1u);

  // With 2 vectors allocated, vector 3 falls back to vector 0.
  ASSERT_NO_FATAL_FAILURE(EnableMsi(true, /*log2_vectors=*/1));
  Program(kOpFill, 0, kGuestIova, 16, 3, 2);
  RingDoorbell();
  EXPECT_EQ(WaitForVector(0, kPciMsiIrqIndex), 1u);
  WriteReg(kRegIntStatus, kIntDone);

  ASSERT_NO_FATAL_FAILURE(EnableMsi(false, 0));
  Program(kOpFill, 0, kGuestIova, 16, 0, 3);
  RingDoorbell();
  EXPECT_EQ(WaitForVector(0, kPciIntxIrqIndex), 1u);
  EXPECT_TRUE(dev()->irqs().IntxAsserted());
  EXPECT_TRUE(ConfigRead(kPciStatus, 2) & kPciStatusInterrupt);
  WriteReg(kRegIntStatus, kIntDone);  // the level drops with the status
  EXPECT_FALSE(dev()->irqs().IntxAsserted());
  EXPECT_FALSE(ConfigRead(kPciStatus, 2) & kPciStatusInterrupt);
  for (uint32_t v = 0; v < kNumVectors; ++v) EXPECT_FALSE(VectorPending(v));
}

TEST_F(DmaDeviceTest, GuestMemoryWithoutFdGoesThroughMessages) {
  ASSERT_NO_FATAL_FAILURE(MapMessageMemory());
  FillGuest(0, 100000, 5);
  // fd-backed -> message-backed, then a checksum and a copy back.
  RunOp(kOpCopy, kGuestIova, kMessageIova + 1000, 100000, 1, 1);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);
  EXPECT_EQ(std::memcmp(messages_->data() + 1000, guest_, 100000), 0);
  RunOp(kOpChecksum, kMessageIova + 1000, 0, 100000, 2, 2);
  EXPECT_EQ(Result(), Crc32c(0, absl::MakeConstSpan(guest_, 100000)));
  RunOp(kOpCopy, kMessageIova + 1000, kGuestIova + 0x200000, 100000, 3, 3);
  EXPECT_EQ(std::memcmp(guest_ + 0x200000, guest_, 100000), 0);
  EXPECT_GT(messages_->requests(), 2);
}

TEST_F(DmaDeviceTest, ResetCancelsQueuedAndInFlightWork) {
  ASSERT_NO_FATAL_FAILURE(MapMessageMemory());
  std::memset(messages_->data(), 0xaa, kMessageSize);
  messages_->Hold();
  // A: in flight, stuck on its first DMA_READ. B..: queued behind it.
  Program(kOpCopy, kMessageIova, kGuestIova, 128 * 1024, 0, 1);
  RingDoorbell();
  messages_->WaitForHeldRequest();
  for (uint32_t tag = 2; tag < 2 + kMaxQueuedOps; ++tag) {
    Program(kOpFill, 0, kGuestIova + 0x100000 + 16 * tag, 16, 0, tag, 0xffffffff);
    RingDoorbell();
  }
  EXPECT_EQ(ReadReg(kRegStatus), kStatusBusy);
  // One more than the queue holds fails at once.
  Program(kOpFill, 0, kGuestIova, 16, 1, 999);
  RingDoorbell();
  EXPECT_EQ(WaitForVector(1), 1u);
  ExpectError(kErrorQueueFull);

  Run([&] { dev()->Reset(ResetReason::kClientRequest); });
  EXPECT_EQ(ReadReg(kRegControl), 0u);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 0u);
  messages_->Release();  // A aborts at its next chunk; its result is dropped

  // Bring the function back up; the next operation is the only completion.
  EnableBusMaster(true);
  ASSERT_NO_FATAL_FAILURE(EnableMsix(true));
  WriteReg(kRegControl, kControlEnable | kControlIntEnable);
  RunOp(kOpFill, 0, kGuestIova + 0x300000, 16, 2, 1234, 0x77777777);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 1u);
  EXPECT_EQ(ReadReg(kRegCompletedTag), 1234u);
  EXPECT_EQ(ReadReg(kRegStatus), kStatusDone);
  EXPECT_FALSE(VectorPending(0));
  for (uint32_t tag = 2; tag < 2 + kMaxQueuedOps; ++tag) {
    ASSERT_EQ(guest_[0x100000 + 16 * tag], 0) << "queued op " << tag << " ran";
  }
  EXPECT_EQ(guest_[0x300000], 0x77);
  EXPECT_EQ(guest_[0], 0) << "the cancelled copy wrote after the reset";
}

TEST_F(DmaDeviceTest, SoftResetClearsTheEngine) {
  RunOp(kOpFill, 0, kGuestIova, 16, 0, 5);
  WriteReg(kRegControl, kControlSoftReset);
  EXPECT_EQ(ReadReg(kRegControl), 0u);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 0u);
  EXPECT_EQ(ReadReg(kRegIntStatus), 0u);
  EXPECT_EQ(ReadReg(kRegStatus), 0u);
  EXPECT_EQ(ReadReg(kRegTag), 0u);
  // Config space is untouched: MSI-X and bus mastering still work.
  WriteReg(kRegControl, kControlEnable | kControlIntEnable);
  RunOp(kOpFill, 0, kGuestIova, 16, 0, 6);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 1u);
}

TEST_F(DmaDeviceTest, DisconnectDropsWorkAndKeepsState) {
  ASSERT_NO_FATAL_FAILURE(MapMessageMemory());
  RunOp(kOpFill, 0, kGuestIova, 16, 0, 41);
  messages_->Hold();
  Program(kOpCopy, kMessageIova, kGuestIova + 0x1000, 4096, 0, 42);
  RingDoorbell();
  messages_->WaitForHeldRequest();
  // Queued behind it (into client memory, so that it cannot land even if
  // the worker reaches it before the device learns of the disconnect).
  Program(kOpFill, 0, kMessageIova, 16, 0, 43, 0xffffffff);
  RingDoorbell();

  messages_->Abandon();  // the client goes away with a request unanswered
  messages_->ShutdownAndJoin();
  {
    absl::MutexLock lock(&detach_mu_);
    auto detached = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(detach_mu_) {
      return detaches_ == 1;
    };
    ASSERT_TRUE(detach_mu_.AwaitWithTimeout(absl::Condition(&detached),
                                            absl::Milliseconds(kWaitMs)));
  }
  messages_.reset();
  client_.reset();

  // Device state is kept; the next client starts from there.
  EXPECT_EQ(ReadReg(kRegControl), kControlEnable | kControlIntEnable);
  ASSERT_NO_FATAL_FAILURE(ConnectClient());
  ASSERT_NO_FATAL_FAILURE(MapGuestMemory());
  ASSERT_NO_FATAL_FAILURE(WireVectors(kPciMsixIrqIndex, kNumVectors));
  RunOp(kOpFill, 0, kGuestIova + 0x3000, 16, 0, 44, 0x11111111);
  EXPECT_EQ(ReadReg(kRegCompletedTag), 44u);
  EXPECT_EQ(ReadReg(kRegCompletedCount), 2u);  // 41 and 44: 42 and 43 dropped
  EXPECT_EQ(guest_[0x3000], 0x11);
  EXPECT_FALSE(VectorPending(1));
}

TEST_F(DmaDeviceTest, MigrationRoundTrip) {
  RunOp(kOpChecksum, kGuestIova, 0, 64, 1, 77);
  uint8_t* bar2 = dev()->RegionMemory(kDoorbellBar);
  std::memcpy(bar2 + kScratchOffset, "scratch", 7);
  WriteReg(kRegTag, 0x1234);

  std::vector<uint8_t> state;
  Run([&] {
    dev()->migration().set_running(false);
    auto saved = dev()->SaveMigrationState();
    ASSERT_TRUE(saved.ok()) << saved.status();
    state = std::move(*saved);
  });

  auto destination = std::make_unique<DmaTestDevice>("dma-test-destination");
  Device* dst = destination->device();
  std::array<uint8_t, 8> regs{};
  Run([&] {
    ASSERT_TRUE(dst->Finalize(loop_.get()).ok());
    std::vector<uint8_t> truncated(state.begin(), state.end() - 1);
    EXPECT_FALSE(dst->LoadMigrationState(truncated).ok());
    ASSERT_TRUE(dst->LoadMigrationState(state).ok());
    ASSERT_TRUE(dst->RegionRead(kRegisterBar, kRegTag, absl::MakeSpan(regs)).ok());
  });
  EXPECT_EQ(LoadLe(absl::MakeConstSpan(regs.data(), 4)), 0x1234u);
  EXPECT_EQ(LoadLe(absl::MakeConstSpan(regs.data() + 4, 4)), 77u);  // completed tag
  EXPECT_EQ(std::memcmp(dst->RegionMemory(kDoorbellBar) + kScratchOffset, "scratch", 7), 0);
  EXPECT_TRUE(dst->config().MsixEnabled());
  Run([&] {
    dev()->migration().set_running(true);
    destination.reset();
  });
}

}  // namespace
}  // namespace vfio_user
