// In-process tests of the protocol engine (Session + DeviceServer + Device)
// over real sockets, with a small test device: config space, trapped and
// memory-backed (sparse) regions, MSI-X routing, DMA through mmap and by
// message (plain and twin socket), migration state machine, DMA logging.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "core/fault_injecting_os.h"
#include "gtest/gtest.h"
#include "server/device.h"
#include "server/device_server.h"
#include "server/event_loop.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user {
namespace {

using ::vfio_user::testing::MessageDmaWindow;
using ::vfio_user::testing::RawClient;
using ::vfio_user::testing::UniqueSocketPath;

constexpr uint32_t kRegsBar = 0;
constexpr uint32_t kMemBar = 2;
constexpr uint64_t kMsixTableOffset = 0x800;
constexpr uint64_t kMsixPbaOffset = 0xc00;

class TestDevice {
 public:
  TestDevice() : device_("test-device", /*pcie=*/true) {
    PciConfigSpace& c = device_.config();
    c.SetIds({.vendor_id = 0x1234, .device_id = 0x5678, .class_code = 0xff0000});
    c.SetInterruptPin(PciIntxPin::kA);
    EXPECT_TRUE(c.AddBar(0, PciBar::Memory32(0x1000)).ok());
    EXPECT_TRUE(c.AddBar(2, PciBar::Memory64(0x4000)).ok());
    MsixLayout layout;
    layout.table_size = 4;
    layout.table_bar = 0;
    layout.table_offset = kMsixTableOffset;
    layout.pba_bar = 0;
    layout.pba_offset = kMsixPbaOffset;
    EXPECT_TRUE(c.AddMsix(layout).ok());
    EXPECT_TRUE(c.AddPciExpress({.flr = true}).ok());
    EXPECT_TRUE(device_
                    .SetupRegion(kRegsBar, RegionSpec::Trapped(
                                               0x1000,
                                               [this](uint64_t off, absl::Span<uint8_t> out) {
                                                 std::memcpy(out.data(), regs_ + off, out.size());
                                                 return absl::OkStatus();
                                               },
                                               [this](uint64_t off, absl::Span<const uint8_t> in) {
                                                 std::memcpy(regs_ + off, in.data(), in.size());
                                                 return absl::OkStatus();
                                               }))
                    .ok());
    EXPECT_TRUE(device_
                    .SetupRegion(kMemBar, RegionSpec::Memory(
                                              0x4000, {{0x1000, 0x3000}},
                                              [](uint64_t, absl::Span<uint8_t> out) {
                                                std::memset(out.data(), 0xdb, out.size());
                                                return absl::OkStatus();
                                              },
                                              [this](uint64_t off, absl::Span<const uint8_t>) {
                                                doorbells_.push_back(off);
                                                return absl::OkStatus();
                                              }))
                    .ok());
    device_.SetResetCallback([this](ResetReason) { std::memset(regs_, 0, sizeof(regs_)); });
    MigrationCallbacks m;
    m.set_running = [this](bool r) { running_ = r; };
    m.save = [this]() -> absl::StatusOr<std::vector<uint8_t>> {
      return std::vector<uint8_t>(regs_, regs_ + 64);
    };
    m.load = [this](absl::Span<const uint8_t> s) -> absl::Status {
      if (s.size() != 64) return ErrnoError(EINVAL, "bad state");
      std::memcpy(regs_, s.data(), 64);
      return absl::OkStatus();
    };
    device_.SetMigrationCallbacks(std::move(m));
  }
  Device& device() { return device_; }
  uint8_t regs_[0x1000] = {};
  std::vector<uint64_t> doorbells_;
  bool running_ = true;

 private:
  Device device_;
};

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = UniqueSocketPath("vfu-st");
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    dev_ = std::make_unique<TestDevice>();
    DeviceServerOptions o;
    o.socket_path = path_;
    o.session.dma_timeout = absl::Seconds(2);
    o.session.os = &os_;  // counts the sessions' syscalls, injects nothing
    o.events.on_client_attached = [this](const PeerCredentials& peer) {
      attached_pids_.push_back(peer.pid);
    };
    o.events.on_client_detached = [this](const absl::Status&) { ++detached_; };
    o.events.on_client_refused = [this](const PeerCredentials&) { ++refused_; };
    auto server = DeviceServer::Create(loop_.get(), &dev_->device(), std::move(o));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    loop_->StartThread();
  }
  void TearDown() override {
    loop_->RunSync([this] { server_.reset(); });
    loop_->Stop();
    loop_->Join();
    dev_.reset();
  }
  std::unique_ptr<RawClient> Attach(const std::string& json =
      R"({"capabilities":{"max_msg_fds":16}})", uint16_t minor = 2) {
    auto c = RawClient::Connect(path_);
    EXPECT_TRUE(c.ok());
    auto v = (*c)->Negotiate(json, minor);
    EXPECT_TRUE(v.ok()) << v.status();
    return std::move(*c);
  }

  std::string path_;
  FaultInjectingOs os_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<TestDevice> dev_;
  std::unique_ptr<DeviceServer> server_;
  // ServerEvents, recorded on the loop thread.
  std::vector<pid_t> attached_pids_;
  int detached_ = 0;
  int refused_ = 0;
};

TEST_F(SessionTest, ServerEventsReportAttachDetachAndRefusal) {
  {
    auto c = Attach();
    auto second = RawClient::Connect(path_);
    ASSERT_TRUE(second.ok());
    EXPECT_FALSE((*second)->Negotiate().ok());
    loop_->RunSync([&] {
      ASSERT_EQ(attached_pids_.size(), 1u);
      EXPECT_EQ(attached_pids_[0], ::getpid());
      EXPECT_EQ(refused_, 1);
      EXPECT_EQ(detached_, 0);
    });
  }
  // The detach is seen once the server reads the EOF.
  for (int i = 0; i < 1000; ++i) {
    int detached = 0;
    loop_->RunSync([&] { detached = detached_; });
    if (detached == 1) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  loop_->RunSync([&] { EXPECT_EQ(detached_, 1); });
}

TEST_F(SessionTest, TrappedRegionRoundTrip) {
  auto c = Attach();
  ASSERT_TRUE(c->RegionWrite(kRegsBar, 0x10, {1, 2, 3, 4}).ok());
  auto r = c->RegionRead(kRegsBar, 0x10, 4);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, (Bytes{1, 2, 3, 4}));
  // Bounds: past the end of the region.
  EXPECT_FALSE(c->RegionRead(kRegsBar, 0xffe, 4).ok());
}

TEST_F(SessionTest, RepliesToABurstOfRequestsLeaveInOneSendmsg) {
  auto c = Attach();
  ASSERT_TRUE(c->RegionWrite(kRegsBar, 0x10, {1, 2, 3, 4}).ok());
  // Eight REGION_READs in one write: the session finds them together and
  // coalesces the replies (server/session.cc, Connection::set_coalescing).
  constexpr uint16_t kBurst = 8;
  constexpr uint16_t kFirstId = 1000;
  Bytes burst;
  for (uint16_t i = 0; i < kBurst; ++i) {
    const Bytes access = EncodeRegionAccessHeader(0x10, kRegsBar, 4);
    Header h;
    h.msg_id = kFirstId + i;
    h.cmd = static_cast<uint16_t>(Command::kRegionRead);
    h.flags = kFlagsTypeCommand;
    h.msg_size = static_cast<uint32_t>(kHeaderSize + access.size());
    uint8_t header[kHeaderSize];
    EncodeHeader(h, header);
    burst.insert(burst.end(), header, header + kHeaderSize);
    burst.insert(burst.end(), access.begin(), access.end());
  }
  loop_->RunSync([] {});
  const uint64_t sends_before = os_.calls(FaultInjectingOs::Direction::kSend);
  ASSERT_TRUE(c->SendRaw(burst).ok());
  for (uint16_t i = 0; i < kBurst; ++i) {
    absl::StatusOr<Message> reply = c->Receive();
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->header.msg_id, kFirstId + i);  // in order
    absl::StatusOr<RegionAccess> access =
        DecodeRegionReadReply(ByteSpan(reply->payload), 4);
    ASSERT_TRUE(access.ok()) << access.status();
    EXPECT_EQ(Bytes(access->data.begin(), access->data.end()),
              (Bytes{1, 2, 3, 4}));
  }
  loop_->RunSync([] {});
  EXPECT_EQ(os_.calls(FaultInjectingOs::Direction::kSend) - sends_before, 1u);
}

TEST_F(SessionTest, SparseMmapRegionInfoAndFd) {
  auto c = Attach();
  // First ask with a too-small argsz: full argsz comes back, no caps, no fd.
  RegionInfoRequest req;
  req.index = kMemBar;
  req.argsz = 32;
  auto reply = c->Call(Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(req));
  ASSERT_TRUE(reply.ok());
  auto info = DecodeRegionInfo(ByteSpan(reply->payload));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->argsz, 32u);
  EXPECT_EQ(c->last_reply_fd_count(), 0);
  req.argsz = info->argsz;
  reply = c->Call(Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(req));
  ASSERT_TRUE(reply.ok());
  info = DecodeRegionInfo(ByteSpan(reply->payload));
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(info->sparse_areas.has_value());
  ASSERT_EQ(info->sparse_areas->size(), 1u);
  EXPECT_EQ((*info->sparse_areas)[0], (SparseMmapArea{0x1000, 0x3000}));
  EXPECT_TRUE(info->flags & kRegionInfoFlagMmap);
  ASSERT_EQ(c->last_reply_fd_count(), 1);
  UniqueFd fd = c->TakeLastReplyFd();
  // mmap the mappable area; writes through it are seen by REGION_READ with
  // no callback, and the trapped doorbell page goes to the callback.
  void* p = ::mmap(nullptr, 0x3000, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(),
                   info->offset + 0x1000);
  ASSERT_NE(p, MAP_FAILED);
  std::memcpy(p, "hello", 5);
  auto r = c->RegionRead(kMemBar, 0x1000, 5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::string(r->begin(), r->end()), "hello");
  EXPECT_EQ(std::memcmp(dev_->device().RegionMemory(kMemBar) + 0x1000, "hello", 5), 0);
  ::munmap(p, 0x3000);
  ASSERT_TRUE(c->RegionWrite(kMemBar, 0x8, {1, 0, 0, 0}).ok());
  loop_->RunSync([&] { EXPECT_EQ(dev_->doorbells_, std::vector<uint64_t>{0x8}); });
}

TEST_F(SessionTest, MsixThroughEventfdAndTableMasking) {
  auto c = Attach();
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  SetIrqs irq;
  irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  irq.index = kPciMsixIrqIndex;
  irq.start = 1;
  irq.count = 1;
  auto reply = c->Call(Command::kDeviceSetIrqs, EncodeSetIrqs(irq), {efd});
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error()) << reply->header.error;
  ASSERT_TRUE(dev_->device().TriggerIrq(kPciMsixIrqIndex, 1).ok());
  uint64_t count = 0;
  ASSERT_EQ(::read(efd, &count, 8), 8);
  EXPECT_EQ(count, 1u);
  // The guest masks vector 1 in the table (vector control at +12): a
  // trigger becomes pending (PBA bit 1), unmasking delivers it.
  ASSERT_TRUE(c->RegionWrite(kRegsBar, kMsixTableOffset + 16 + 12, {1, 0, 0, 0}).ok());
  loop_->RunSync([] {});
  EXPECT_TRUE(dev_->device().TriggerIrq(kPciMsixIrqIndex, 1).ok());
  EXPECT_LT(::read(efd, &count, 8), 0);
  auto pba = c->RegionRead(kRegsBar, kMsixPbaOffset, 8);
  ASSERT_TRUE(pba.ok());
  EXPECT_EQ((*pba)[0], 0x2);
  ASSERT_TRUE(c->RegionWrite(kRegsBar, kMsixTableOffset + 16 + 12, {0, 0, 0, 0}).ok());
  ASSERT_EQ(::read(efd, &count, 8), 8);
  ::close(efd);
}

TEST_F(SessionTest, IntxHonorsCommandInterruptDisable) {
  auto c = Attach();
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  SetIrqs irq;
  irq.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  irq.index = kPciIntxIrqIndex;
  irq.count = 1;
  auto reply = c->Call(Command::kDeviceSetIrqs, EncodeSetIrqs(irq), {efd});
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  // Interrupt Disable (Command bit 10) set: the line is asserted (Status bit
  // 3) but nothing reaches the client.
  ASSERT_TRUE(c->ConfigWrite32(0x04, 0x0400).ok());
  dev_->device().SetIntxLevel(true);
  loop_->RunSync([] {});
  uint64_t n;
  EXPECT_LT(::read(efd, &n, 8), 0);
  EXPECT_TRUE(*c->ConfigRead32(0x04) & (0x08u << 16));
  // Clearing it delivers the pending level.
  ASSERT_TRUE(c->ConfigWrite32(0x04, 0x0000).ok());
  EXPECT_EQ(::read(efd, &n, 8), 8);
  dev_->device().SetIntxLevel(false);
  loop_->RunSync([] {});
  EXPECT_FALSE(*c->ConfigRead32(0x04) & (0x08u << 16));
  ::close(efd);
}

TEST_F(SessionTest, DmaThroughMmapAndByMessage) {
  // No client yet: no guest memory.
  EXPECT_EQ(ErrnoOf(dev_->device().WithDmaMapping(
                0x10000, 4, false, [](absl::Span<uint8_t>) { ADD_FAILURE(); })),
            ENOTCONN);
  for (bool twin : {false, true}) {
    SCOPED_TRACE(twin ? "twin socket" : "main socket");
    auto c = Attach(twin ? R"({"capabilities":{"max_msg_fds":16,"twin_socket":{"supported":true}}})"
                         : R"({"capabilities":{"max_msg_fds":16}})");
    EXPECT_EQ(c->has_twin(), twin);
    // fd-backed guest RAM at 0x10000.
    int memfd = ::memfd_create("guest", MFD_CLOEXEC);
    ASSERT_EQ(::ftruncate(memfd, 0x10000), 0);
    DmaMapRequest map;
    map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
    map.address = 0x10000;
    map.size = 0x10000;
    auto reply = c->Call(Command::kDmaMap, EncodeDmaMap(map), {memfd});
    ASSERT_TRUE(reply.ok());
    ASSERT_FALSE(reply->header.is_error()) << reply->header.error;
    // fd-less guest RAM at 0x100000, served by message.
    std::vector<uint8_t> guest(0x10000, 0);
    for (size_t i = 0; i < guest.size(); ++i) guest[i] = static_cast<uint8_t>(i * 7);
    c->set_dma_window(MessageDmaWindow{0x100000, &guest});
    map.address = 0x100000;
    reply = c->Call(Command::kDmaMap, EncodeDmaMap(map));
    ASSERT_TRUE(reply.ok());
    ASSERT_FALSE(reply->header.is_error());

    // Device side, from a worker thread: read message-backed memory and
    // write it to fd-backed memory.
    absl::Notification done;
    absl::Status worker_status;
    std::thread worker([&] {
      std::vector<uint8_t> buf(0x3000);
      worker_status = dev_->device().DmaRead(0x100000 + 0x100, absl::MakeSpan(buf));
      if (worker_status.ok()) {
        worker_status = dev_->device().DmaWrite(0x10000 + 0x200, buf);
      }
      if (worker_status.ok()) {
        const uint8_t tag[4] = {9, 8, 7, 6};
        worker_status = dev_->device().DmaWrite(0x100000, tag);
      }
      done.Notify();
    });
    // The client must keep reading to serve DMA requests: a round trip
    // drives RawClient's loop until the worker is done.
    while (!done.HasBeenNotified()) ASSERT_TRUE(c->ConfigRead32(0).ok());
    worker.join();
    ASSERT_TRUE(worker_status.ok()) << worker_status;
    EXPECT_GT(c->dma_requests_served(), 0u);
    void* p = ::mmap(nullptr, 0x10000, PROT_READ, MAP_SHARED, memfd, 0);
    ASSERT_NE(p, MAP_FAILED);
    EXPECT_EQ(std::memcmp(static_cast<uint8_t*>(p) + 0x200, guest.data() + 0x100, 0x3000), 0);
    ::munmap(p, 0x10000);
    EXPECT_EQ(guest[0], 9);
    EXPECT_EQ(guest[3], 6);
    // From the loop thread, message DMA is refused rather than deadlocking.
    loop_->RunSync([&] {
      uint8_t b[4];
      EXPECT_EQ(ErrnoOf(dev_->device().DmaRead(0x100000, absl::MakeSpan(b))), EDEADLK);
      EXPECT_TRUE(dev_->device().DmaRead(0x10000, absl::MakeSpan(b)).ok());
    });
    // Outside every map.
    uint8_t b[4];
    EXPECT_EQ(ErrnoOf(dev_->device().DmaRead(0x900000, absl::MakeSpan(b))), EFAULT);
    // A held mapping: the device sees the fd-backed memory itself, and is
    // sent to DmaRead/DmaWrite for the message-backed one.
    bool ran = false;
    ASSERT_TRUE(dev_->device()
                    .WithDmaMapping(0x10000 + 0x200, 0x3000, /*write=*/true,
                                    [&](absl::Span<uint8_t> m) {
                                      ran = true;
                                      EXPECT_EQ(std::memcmp(m.data(), guest.data() + 0x100, m.size()), 0);
                                      m[0] = 0x5e;
                                    })
                    .ok());
    EXPECT_TRUE(ran);
    ASSERT_TRUE(dev_->device().DmaRead(0x10000 + 0x200, absl::MakeSpan(b, 1)).ok());
    EXPECT_EQ(b[0], 0x5e);
    auto never = [](absl::Span<uint8_t>) { ADD_FAILURE() << "must not run"; };
    EXPECT_TRUE(IsMessageOnly(dev_->device().WithDmaMapping(0x100000, 4, false, never)));
    EXPECT_EQ(ErrnoOf(dev_->device().WithDmaMapping(0x900000, 4, false, never)), EFAULT);
    // Unmap-all drops everything.
    DmaUnmapRequest unmap;
    unmap.flags = kDmaUnmapFlagAll;
    reply = c->Call(Command::kDmaUnmap, EncodeDmaUnmap(unmap));
    ASSERT_TRUE(reply.ok());
    EXPECT_FALSE(reply->header.is_error());
    EXPECT_EQ(ErrnoOf(dev_->device().DmaRead(0x10000, absl::MakeSpan(b))), EFAULT);
    ::close(memfd);
  }
}

TEST_F(SessionTest, MigrationStateMachineSavesAndLoads) {
  auto c = Attach();
  ASSERT_TRUE(c->RegionWrite(kRegsBar, 0, {0xaa, 0xbb}).ok());
  auto set_state = [&](MigrationState s) {
    MigDeviceState st;
    st.device_state = static_cast<uint32_t>(s);
    Bytes data = EncodeMigDeviceState(st);
    auto reply = c->Call(Command::kDeviceFeature,
                         EncodeDeviceFeature(16, kDeviceFeatureSet | kDeviceFeatureMigDeviceState, data));
    EXPECT_TRUE(reply.ok());
    return reply.ok() && !reply->header.is_error();
  };
  // MIGRATION GET reports STOP_COPY.
  auto reply = c->Call(Command::kDeviceFeature,
                       EncodeDeviceFeature(16, kDeviceFeatureGet | kDeviceFeatureMigration, {}));
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  auto feature = DecodeDeviceFeature(ByteSpan(reply->payload));
  ASSERT_TRUE(feature.ok());
  EXPECT_EQ(*DecodeMigrationFlags(feature->data), kMigrationStopCopy);
  // RUNNING -> STOP_COPY goes through STOP; the stream is then read.
  ASSERT_TRUE(set_state(MigrationState::kStopCopy));
  loop_->RunSync([&] { EXPECT_FALSE(dev_->running_); });
  Bytes stream;
  for (;;) {
    reply = c->Call(Command::kMigDataRead, EncodeMigDataHeader(8 + 100, 100));
    ASSERT_TRUE(reply.ok());
    ASSERT_FALSE(reply->header.is_error());
    auto data = DecodeMigDataReadReply(ByteSpan(reply->payload), 100);
    ASSERT_TRUE(data.ok());
    stream.insert(stream.end(), data->data.begin(), data->data.end());
    if (data->size < 100) break;
  }
  EXPECT_GT(stream.size(), 64u);
  // STOP_COPY -> PRE_COPY is not supported; -> RUNNING works.
  EXPECT_FALSE(set_state(MigrationState::kPreCopy));
  ASSERT_TRUE(set_state(MigrationState::kRunning));
  // Change the device, then resume the saved stream.
  ASSERT_TRUE(c->RegionWrite(kRegsBar, 0, {0x00, 0x00}).ok());
  ASSERT_TRUE(set_state(MigrationState::kResuming));
  reply = c->Call(Command::kMigDataWrite, EncodeMigDataWithData(8 + stream.size(), stream));
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  ASSERT_TRUE(set_state(MigrationState::kRunning));
  auto r = c->RegionRead(kRegsBar, 0, 2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, (Bytes{0xaa, 0xbb}));
  // A corrupt stream leaves the device in ERROR until DEVICE_RESET.
  ASSERT_TRUE(set_state(MigrationState::kResuming));
  Bytes junk(20, 0x5a);
  reply = c->Call(Command::kMigDataWrite, EncodeMigDataWithData(8 + junk.size(), junk));
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(set_state(MigrationState::kRunning));
  EXPECT_FALSE(set_state(MigrationState::kStop));
  reply = c->Call(Command::kDeviceReset, {});
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(reply->header.is_error());
  EXPECT_TRUE(set_state(MigrationState::kStop));
}

TEST_F(SessionTest, WriteMultiAppliesInOrder) {
  auto c = Attach();
  std::vector<WriteMultiEntry> entries(3);
  for (int i = 0; i < 3; ++i) {
    entries[i].region = kRegsBar;
    entries[i].offset = 0x40;
    entries[i].count = 1;
    entries[i].data[0] = static_cast<uint8_t>(i + 1);
  }
  entries[1].offset = 0x41;
  auto reply = c->Call(Command::kRegionWriteMulti, EncodeRegionWriteMulti(entries));
  ASSERT_TRUE(reply.ok());
  ASSERT_FALSE(reply->header.is_error());
  EXPECT_EQ(*DecodeRegionWriteMultiReply(ByteSpan(reply->payload)), 3u);
  EXPECT_EQ(*c->RegionRead(kRegsBar, 0x40, 2), (Bytes{3, 2}));
}

TEST_F(SessionTest, FunctionLevelResetThroughPcieCapability) {
  auto c = Attach();
  ASSERT_TRUE(c->RegionWrite(kRegsBar, 0, {0x77}).ok());
  // Find the PCIe capability (id 0x10) and set Initiate FLR (DevCtl bit 15).
  auto cfg = c->RegionRead(kPciConfigRegionIndex, 0, 256);
  ASSERT_TRUE(cfg.ok());
  uint8_t ptr = (*cfg)[0x34];
  while (ptr != 0 && (*cfg)[ptr] != 0x10) ptr = (*cfg)[ptr + 1];
  ASSERT_NE(ptr, 0);
  ASSERT_TRUE(c->RegionWrite(kPciConfigRegionIndex, ptr + 8, {0x00, 0x80}).ok());
  EXPECT_EQ((*c->RegionRead(kRegsBar, 0, 1))[0], 0);
  EXPECT_EQ(dev_->device().counters().resets.load(), 1u);
}

}  // namespace
}  // namespace vfio_user
