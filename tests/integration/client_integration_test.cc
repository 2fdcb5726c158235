// The client library against the real sample server in another process:
// attach, config decode and BAR sizing, DMA both ways (fd-backed and
// fd-less guest memory), MSI-X delivery, reset; the server killed with
// SIGKILL and restarted while the client is busy (reconnect, replay,
// continue); and a server that never comes back (failed at the deadline).
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/guest_memory.h"
#include "client/irq_waiter.h"
#include "client/pci_config.h"
#include "gtest/gtest.h"
#include "server/devices/dma_engine_device.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::testing {
namespace {

namespace dt = ::vfio_user::dma_test;

constexpr uint64_t kFdIova = 0x100000;
constexpr uint64_t kMsgIova = 0x8000000;
constexpr uint64_t kGuestSize = 1 << 20;

class ClientIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = UniqueSocketPath("vfu-ci");
    StartServer();
  }
  void TearDown() override {
    client_.reset();
    if (server_) (void)server_->Stop(SIGTERM);
  }
  void StartServer() {
    auto server = Subprocess::Start({RunfilePath("server/devices/vfio-user-sample-server"),
                                     "--idio16_socket=", absl::StrCat("--dma_socket=", path_)});
    ASSERT_TRUE(server.ok());
    server_ = std::make_unique<Subprocess>(std::move(*server));
  }
  void ConnectClient(absl::Duration reconnect_deadline = absl::Seconds(10)) {
    ClientOptions o;
    o.socket_path = path_;
    o.connect_timeout = absl::Seconds(10);
    o.request_timeout = absl::Seconds(5);
    o.reconnect.deadline = reconnect_deadline;
    o.reconnect.initial_backoff = absl::Milliseconds(5);
    o.reconnect.max_backoff = absl::Milliseconds(100);
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  // Guest-driver bring-up: memory decode + bus master, MSI-X enabled, all
  // vectors unmasked in the table, engine enabled with interrupts.
  void BringUpDevice() {
    auto cmd = client_->ReadValue(kPciConfigRegionIndex, 0x04, 2);
    ASSERT_TRUE(cmd.ok());
    ASSERT_TRUE(client_->WriteValue(kPciConfigRegionIndex, 0x04, 2, *cmd | 0x6).ok());
    auto cfg = client_->Read(kPciConfigRegionIndex, 0, 256);
    ASSERT_TRUE(cfg.ok());
    auto decoded = DecodePciConfig(*cfg);
    ASSERT_TRUE(decoded.ok());
    uint16_t msix = 0;
    for (const PciCapability& cap : decoded->capabilities) {
      if (!cap.extended && cap.id == 0x11) msix = cap.offset;
    }
    ASSERT_NE(msix, 0);
    ASSERT_TRUE(client_->WriteValue(kPciConfigRegionIndex, msix + 2, 2, 0x8000 | 3).ok());
    for (uint32_t v = 0; v < dt::kNumVectors; ++v) {
      ASSERT_TRUE(client_->WriteValue(dt::kRegisterBar, dt::kMsixTableOffset + 16 * v + 12,
                                      4, 0).ok());
    }
    ASSERT_TRUE(client_->WriteValue(dt::kRegisterBar, dt::kRegControl, 4,
                                    dt::kControlEnable | dt::kControlIntEnable).ok());
  }
  absl::Status Copy(uint64_t src, uint64_t dst, uint32_t len, uint32_t vector) {
    const std::pair<uint32_t, uint64_t> regs[] = {
        {dt::kRegSrcLo, src & 0xffffffff}, {dt::kRegSrcHi, src >> 32},
        {dt::kRegDstLo, dst & 0xffffffff}, {dt::kRegDstHi, dst >> 32},
        {dt::kRegLength, len},             {dt::kRegOpcode, dt::kOpCopy},
        {dt::kRegVector, vector}};
    for (const auto& [reg, value] : regs) {
      absl::Status st = client_->WriteValue(dt::kRegisterBar, reg, 4, value);
      if (!st.ok()) return st;
    }
    return client_->WriteValue(dt::kDoorbellBar, dt::kRegDoorbell, 4, 1);
  }

  std::string path_;
  std::unique_ptr<Subprocess> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientIntegrationTest, AttachDecodeDmaBothWaysMsixAndReset) {
  ConnectClient();
  const DeviceDescription dev = client_->device();
  EXPECT_GE(dev.regions.size(), 9u);
  EXPECT_EQ(dev.regions[dt::kDoorbellBar].info.size, dt::kDoorbellBarSize);
  ASSERT_TRUE(dev.regions[dt::kDoorbellBar].info.sparse_areas.has_value());
  EXPECT_EQ(dev.irqs[kPciMsixIrqIndex].count, dt::kNumVectors);

  // Config decode and BAR sizing through the library.
  auto cfg = client_->Read(kPciConfigRegionIndex, 0, 4096);
  ASSERT_TRUE(cfg.ok());
  auto decoded = DecodePciConfig(*cfg);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->vendor_id, dt::kVendorId);
  EXPECT_EQ(decoded->device_id, dt::kDeviceId);
  PciConfigAccess access;
  access.read = [&](uint32_t off, int width) -> absl::StatusOr<uint32_t> {
    auto v = client_->ReadValue(kPciConfigRegionIndex, off, width);
    if (!v.ok()) return v.status();
    return static_cast<uint32_t>(*v);
  };
  access.write = [&](uint32_t off, int width, uint32_t value) {
    return client_->WriteValue(kPciConfigRegionIndex, off, width, value);
  };
  auto bars = SizePciBars(access, 6);
  ASSERT_TRUE(bars.ok());
  EXPECT_TRUE((*bars)[0].is64);
  EXPECT_EQ((*bars)[0].size, dt::kRegisterBarSize);
  EXPECT_EQ((*bars)[2].size, dt::kDoorbellBarSize);

  // Guest memory: one range the server mmaps, one it must reach by message.
  auto fd_mem = GuestMemory::Create(kGuestSize);
  auto msg_mem = GuestMemory::Create(kGuestSize);
  ASSERT_TRUE(fd_mem.ok() && msg_mem.ok());
  ASSERT_TRUE(client_->DmaMap((*fd_mem)->Region(kFdIova)).ok());
  ASSERT_TRUE(client_->DmaMap((*msg_mem)->Region(kMsgIova, 0, 0,
                                                 kDmaMapFlagRead | kDmaMapFlagWrite,
                                                 /*pass_fd=*/false)).ok());
  auto irqs = IrqWaiter::Create(dt::kNumVectors);
  ASSERT_TRUE(irqs.ok());
  ASSERT_TRUE(client_->SetIrqEventfds(kPciMsixIrqIndex, 0, (*irqs)->fds()).ok());
  BringUpDevice();

  for (size_t i = 0; i < 65536; ++i) (*msg_mem)->data()[i] = static_cast<uint8_t>(i * 3);
  ASSERT_TRUE(Copy(kMsgIova, kFdIova + 0x1000, 65536, 2).ok());  // message -> mmap
  auto events = (*irqs)->Wait(absl::Seconds(10));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].vector, 2u);
  EXPECT_EQ(std::memcmp((*fd_mem)->data() + 0x1000, (*msg_mem)->data(), 65536), 0);
  ASSERT_TRUE(Copy(kFdIova + 0x1000, kMsgIova + 0x40000, 65536, 1).ok());  // mmap -> message
  events = (*irqs)->Wait(absl::Seconds(10));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ(std::memcmp((*msg_mem)->data() + 0x40000, (*msg_mem)->data(), 65536), 0);
  EXPECT_GT(client_->counters().dma_reads_served, 0u);
  EXPECT_GT(client_->counters().dma_writes_served, 0u);

  ASSERT_TRUE(client_->Reset().ok());
  auto control = client_->ReadValue(dt::kRegisterBar, dt::kRegControl, 4);
  ASSERT_TRUE(control.ok());
  EXPECT_EQ(*control, 0u);
}

TEST_F(ClientIntegrationTest, ServerKilledAndRestartedWhileBusy) {
  ConnectClient();
  auto mem = GuestMemory::Create(kGuestSize);
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE(client_->DmaMap((*mem)->Region(kFdIova)).ok());
  auto irqs = IrqWaiter::Create(dt::kNumVectors);
  ASSERT_TRUE(irqs.ok());
  ASSERT_TRUE(client_->SetIrqEventfds(kPciMsixIrqIndex, 0, (*irqs)->fds()).ok());
  BringUpDevice();

  // A busy reader: reads keep succeeding, or fail only while the server is
  // gone (idempotent reads are retried after the reconnect).
  std::atomic<bool> stop{false};
  std::atomic<int> reads_ok{0}, reads_failed{0};
  std::thread busy([&] {
    while (!stop) {
      auto id = client_->ReadValue(dt::kRegisterBar, dt::kRegId, 4);
      if (id.ok() && *id == dt::kIdValue) {
        ++reads_ok;
      } else {
        ++reads_failed;
      }
    }
  });
  while (reads_ok < 20) std::this_thread::yield();
  ASSERT_TRUE(server_->Stop(SIGKILL).ok());
  StartServer();  // same socket path: the stale socket is replaced
  ClientStateInfo s = client_->AwaitState(ClientState::kConnected, absl::Seconds(10));
  // Wait for the reconnect to have happened (the state may not have left
  // kConnected yet when we looked).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (client_->state().reconnects == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  s = client_->state();
  ASSERT_EQ(s.state, ClientState::kConnected) << s.last_error;
  EXPECT_EQ(s.reconnects, 1u);
  const int ok_before = reads_ok;
  while (reads_ok < ok_before + 20) std::this_thread::yield();
  stop = true;
  busy.join();

  // The replayed journal works on the new server: its DMA map and MSI-X
  // wiring are in place. The device was reset on reconnect (the spec's
  // advice), so the guest driver brings it up again.
  BringUpDevice();
  for (size_t i = 0; i < 4096; ++i) (*mem)->data()[i] = static_cast<uint8_t>(i + 7);
  ASSERT_TRUE(Copy(kFdIova, kFdIova + 0x10000, 4096, 3).ok());
  auto events = (*irqs)->Wait(absl::Seconds(10));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].vector, 3u);
  EXPECT_EQ(std::memcmp((*mem)->data(), (*mem)->data() + 0x10000, 4096), 0);
}

TEST_F(ClientIntegrationTest, ServerNeverComesBackFailsAtTheDeadline) {
  ConnectClient(/*reconnect_deadline=*/absl::Seconds(1));
  ASSERT_TRUE(server_->Stop(SIGKILL).ok());
  const absl::Time killed = absl::Now();
  ClientStateInfo s = client_->AwaitState(ClientState::kFailed, absl::Seconds(10));
  EXPECT_EQ(s.state, ClientState::kFailed);
  const absl::Duration took = absl::Now() - killed;
  EXPECT_GE(took, absl::Milliseconds(900));
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_GT(client_->counters().reconnect_attempts, 0u);
  auto read = client_->ReadValue(dt::kRegisterBar, dt::kRegId, 4);
  EXPECT_FALSE(read.ok());
  server_.reset();
}

}  // namespace
}  // namespace vfio_user::testing
