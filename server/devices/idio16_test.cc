// Idio16Device driven through the engine-side Device API on a running
// EventLoop, the way a session would, following what the Linux drivers
// (gpio-pci-idio-16, old and regmap-based) do.
#include "server/devices/idio16.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "server/event_loop.h"
#include "server/pci/pci_ids.h"

namespace vfio_user {
namespace {

constexpr uint32_t kBar = Idio16Device::kRegisterBar;
constexpr uint32_t kConfig = kPciConfigRegionIndex;

class Idio16Test : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = std::move(*loop);
    loop_->StartThread("idio16-test");
    idio_ = std::make_unique<Idio16Device>();
    idio_->SetOutputCallback([this](uint16_t v) { output_events_.push_back(v); });
    Run([&] { ASSERT_TRUE(dev()->Finalize(loop_.get()).ok()); });
  }

  void TearDown() override {
    Run([&] {
      idio_.reset();
      second_.reset();
    });
    loop_->Stop();
    loop_->Join();
  }

  Device* dev() { return idio_->device(); }
  void Run(std::function<void()> fn) { loop_->RunSync(std::move(fn)); }
  // Waits until everything posted to the loop so far has run.
  void Flush() { Run([] {}); }

  uint8_t Inb(uint32_t offset) { return Read(offset, 1)[0]; }
  void Outb(uint32_t offset, uint8_t v) { Write(offset, {v}); }
  std::vector<uint8_t> Read(uint32_t offset, size_t n, Device* d = nullptr) {
    std::vector<uint8_t> out(n);
    Run([&] { EXPECT_TRUE((d ? d : dev())->RegionRead(kBar, offset, absl::MakeSpan(out)).ok()); });
    return out;
  }
  void Write(uint32_t offset, std::vector<uint8_t> bytes) {
    Run([&] { EXPECT_TRUE(dev()->RegionWrite(kBar, offset, bytes).ok()); });
  }
  uint32_t ConfigRead(uint32_t offset, size_t width, Device* d = nullptr) {
    std::vector<uint8_t> out(width);
    Run([&] {
      EXPECT_TRUE((d ? d : dev())->RegionRead(kConfig, offset, absl::MakeSpan(out)).ok());
    });
    uint32_t v = 0;
    for (size_t i = 0; i < width; ++i) v |= uint32_t{out[i]} << (8 * i);
    return v;
  }
  void ConfigWrite(uint32_t offset, uint32_t value, size_t width) {
    std::vector<uint8_t> in(width);
    for (size_t i = 0; i < width; ++i) in[i] = static_cast<uint8_t>(value >> (8 * i));
    Run([&] { EXPECT_TRUE(dev()->RegionWrite(kConfig, offset, in).ok()); });
  }
  bool Intx(Device* d = nullptr) { return (d ? d : dev())->irqs().IntxAsserted(); }
  bool StatusInterruptBit(Device* d = nullptr) {
    return ConfigRead(kPciStatus, 2, d) & kPciStatusInterrupt;
  }

  // The gpio-pci-idio-16 probe: deactivate filters, disable the IRQ, clear
  // any pending interrupt; then the first unmask enables the IRQ.
  void ProbeAndUnmask() {
    Outb(Idio16Device::kRegFilterControl, 0);
    Outb(Idio16Device::kRegIrqControl, 0);
    Outb(Idio16Device::kRegInputs0To7, 0);
    Inb(Idio16Device::kRegIrqControl);
  }

  // What the old driver's handler tests.
  static bool DriverClaims(uint8_t status) { return (status & 0x3) && (status & 0x4); }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Idio16Device> idio_;
  std::unique_ptr<Idio16Device> second_;
  std::vector<uint16_t> output_events_;  // loop thread only (read after Run)
};

TEST_F(Idio16Test, ConfigSpaceMatchesTheCard) {
  EXPECT_EQ(ConfigRead(kPciVendorId, 2), 0x494f);
  EXPECT_EQ(ConfigRead(kPciDeviceId, 2), 0x0dc8);
  EXPECT_EQ(ConfigRead(kPciSubsystemVendorId, 2), 0x494f);
  EXPECT_EQ(ConfigRead(kPciSubsystemId, 2), 0x0dc8);
  EXPECT_EQ(ConfigRead(kPciRevisionId, 4) >> 8, Idio16Device::kClassCode);
  EXPECT_EQ(ConfigRead(kPciInterruptPin, 1), 1u);  // INTA
  EXPECT_EQ(ConfigRead(kPciHeaderType, 1), 0u);
  EXPECT_EQ(ConfigRead(kPciStatus, 2) & kPciStatusCapList, 0u);
  EXPECT_EQ(dev()->config().size(), 256u);

  // BAR2 is a 256-byte I/O BAR; the others are unimplemented.
  EXPECT_EQ(ConfigRead(PciBarOffset(2), 4) & 1u, 1u);
  ConfigWrite(PciBarOffset(2), 0xffffffff, 4);
  EXPECT_EQ(ConfigRead(PciBarOffset(2), 4), 0xffffff01u);
  for (int bar : {0, 1, 3, 4, 5}) {
    ConfigWrite(PciBarOffset(bar), 0xffffffff, 4);
    EXPECT_EQ(ConfigRead(PciBarOffset(bar), 4), 0u) << "BAR" << bar;
  }
  // No bus mastering on this card; I/O decode is there.
  ConfigWrite(kPciCommand, kPciCommandIo | kPciCommandMaster, 2);
  EXPECT_EQ(ConfigRead(kPciCommand, 2), kPciCommandIo);

  auto info = dev()->GetRegionInfo(kBar);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->size, 256u);
  EXPECT_EQ(info->flags, kRegionInfoFlagRead | kRegionInfoFlagWrite);
  EXPECT_EQ(dev()->RegionFd(kBar), -1);
  EXPECT_EQ(dev()->irqs().Info(kPciIntxIrqIndex)->count, 1u);
}

TEST_F(Idio16Test, OutputsAreReadWriteAndObservable) {
  Outb(Idio16Device::kRegOutputs0To7, 0x5a);
  Outb(Idio16Device::kRegOutputs8To15, 0xa5);
  EXPECT_EQ(idio_->outputs(), 0xa55a);
  EXPECT_EQ(Inb(Idio16Device::kRegOutputs0To7), 0x5a);
  EXPECT_EQ(Inb(Idio16Device::kRegOutputs8To15), 0xa5);
  Outb(Idio16Device::kRegOutputs0To7, 0x5a);  // no change: no event
  Flush();
  EXPECT_EQ(output_events_, (std::vector<uint16_t>{0x005a, 0xa55a}));
  // The output registers do not touch the inputs.
  EXPECT_EQ(Inb(Idio16Device::kRegInputs0To7), 0);
  EXPECT_EQ(Inb(Idio16Device::kRegInputs8To15), 0);
}

TEST_F(Idio16Test, InputsFollowTheLines) {
  idio_->SetInputs(0x1234);
  Flush();
  EXPECT_EQ(Inb(Idio16Device::kRegInputs0To7), 0x34);
  EXPECT_EQ(Inb(Idio16Device::kRegInputs8To15), 0x12);
  idio_->SetInputLine(0, true);
  idio_->SetInputLine(4, false);
  idio_->SetInputLine(15, true);
  idio_->SetInputLine(16, true);  // no such line: ignored
  Flush();
  EXPECT_EQ(idio_->inputs(), 0x9225);
  EXPECT_EQ(Inb(Idio16Device::kRegInputs0To7), 0x25);
  EXPECT_EQ(Inb(Idio16Device::kRegInputs8To15), 0x92);
  // Writes to the input registers do not change them.
  Outb(Idio16Device::kRegInputs8To15, 0);
  EXPECT_EQ(Inb(Idio16Device::kRegInputs8To15), 0x92);
}

TEST_F(Idio16Test, InputChangeInterruptsOnlyWhenEnabled) {
  idio_->SetInputLine(3, true);
  Flush();
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0);
  EXPECT_FALSE(Intx());

  Inb(Idio16Device::kRegIrqControl);  // enable
  EXPECT_FALSE(Intx());               // enabling alone does not interrupt
  idio_->SetInputLine(3, false);
  Flush();
  const uint8_t status = Inb(Idio16Device::kRegIrqStatus);
  EXPECT_EQ(status, Idio16Device::kStatusChangeLow | Idio16Device::kStatusPending);
  EXPECT_TRUE(DriverClaims(status));
  EXPECT_TRUE(status & 0x4);  // what the regmap-irq driver tests
  EXPECT_TRUE(Intx());
  EXPECT_TRUE(StatusInterruptBit());

  idio_->SetInputLine(12, true);
  Flush();
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0x07);

  Outb(Idio16Device::kRegInputs0To7, 0);  // clear interrupt
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0);
  EXPECT_FALSE(Intx());
  EXPECT_FALSE(StatusInterruptBit());

  // Setting the lines to their current value is no change.
  idio_->SetInputs(idio_->inputs());
  Flush();
  EXPECT_FALSE(Intx());
}

TEST_F(Idio16Test, HighByteChangeSetsBitOne) {
  ProbeAndUnmask();
  idio_->SetInputLine(9, true);
  Flush();
  const uint8_t status = Inb(Idio16Device::kRegIrqStatus);
  EXPECT_EQ(status, Idio16Device::kStatusChangeHigh | Idio16Device::kStatusPending);
  EXPECT_TRUE(DriverClaims(status));
}

TEST_F(Idio16Test, DisableDropsTheLineButKeepsTheLatch) {
  ProbeAndUnmask();
  idio_->SetInputLine(1, true);
  Flush();
  ASSERT_TRUE(Intx());
  Outb(Idio16Device::kRegIrqControl, 0);  // disable
  EXPECT_FALSE(Intx());
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0x05);
  // Changes while disabled are not latched.
  idio_->SetInputLine(10, true);
  Flush();
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0x05);
  Inb(Idio16Device::kRegIrqControl);  // re-enable: the latch interrupts again
  EXPECT_TRUE(Intx());
}

TEST_F(Idio16Test, CommandInterruptDisableGatesTheLine) {
  ProbeAndUnmask();
  idio_->SetInputLine(2, true);
  Flush();
  ASSERT_TRUE(Intx());
  ConfigWrite(kPciCommand, kPciCommandIo | kPciCommandIntxDisable, 2);
  EXPECT_FALSE(Intx());
  ConfigWrite(kPciCommand, kPciCommandIo, 2);
  EXPECT_TRUE(Intx());
}

TEST_F(Idio16Test, InterruptReachesTheClientEventfd) {
  UniqueFd trigger(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(trigger.valid());
  SetIrqs req;
  req.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  req.index = kPciIntxIrqIndex;
  req.start = 0;
  req.count = 1;
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup(trigger.get()));
  Run([&] { ASSERT_TRUE(dev()->irqs().SetIrqs(req, std::move(fds)).ok()); });

  ProbeAndUnmask();
  idio_->SetInputLine(7, true);
  Flush();
  struct pollfd p = {trigger.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  uint64_t count = 0;
  ASSERT_EQ(::read(trigger.get(), &count, sizeof(count)), 8);
  EXPECT_EQ(count, 1u);
  EXPECT_TRUE(dev()->irqs().IsMasked(kPciIntxIrqIndex, 0));  // automasked
}

TEST_F(Idio16Test, InputFilters) {
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0);
  Outb(Idio16Device::kRegFilterStatus0To7, 0x0f);  // individual filters 0-3
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0x0f);
  Inb(Idio16Device::kRegFilterControl);  // activate all
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0xff);
  Outb(Idio16Device::kRegFilterStatus0To7, 0x01);  // ignored while all are on
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0xff);
  Outb(Idio16Device::kRegFilterControl, 0x42);  // any value deactivates
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0);
}

TEST_F(Idio16Test, WideAccessesSplitIntoBytes) {
  idio_->SetInputs(0xbeef);
  Flush();
  Write(Idio16Device::kRegOutputs0To7, {0x11, 0x00});  // outputs 0-7, clear irq
  Write(Idio16Device::kRegOutputs8To15, {0x22, 0x00, 0x00, 0x00});
  EXPECT_EQ(idio_->outputs(), 0x2211);
  EXPECT_EQ(Read(0, 2), (std::vector<uint8_t>{0x11, 0xef}));
  // A dword at 4: outputs 8-15, inputs 8-15, status, filter status.
  EXPECT_EQ(Read(4, 4), (std::vector<uint8_t>{0x22, 0xbe, 0x00, 0x00}));
  // A dword at 0 includes offset 2 (enable IRQ) and 3 (activate filters).
  Read(0, 4);
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0xff);
  idio_->SetInputs(0);
  Flush();
  EXPECT_TRUE(Intx());
  // Unused offsets read 0 and ignore writes.
  Write(8, std::vector<uint8_t>(248, 0xff));
  EXPECT_EQ(Read(8, 248), std::vector<uint8_t>(248, 0));
  EXPECT_EQ(idio_->outputs(), 0x2211);
}

TEST_F(Idio16Test, ResetRestoresPowerOnValues) {
  ProbeAndUnmask();
  Outb(Idio16Device::kRegOutputs0To7, 0xff);
  Inb(Idio16Device::kRegFilterControl);
  idio_->SetInputs(0x00f0);
  Flush();
  ASSERT_TRUE(Intx());
  Run([&] { dev()->Reset(ResetReason::kClientRequest); });
  EXPECT_EQ(idio_->outputs(), 0);
  EXPECT_EQ(Inb(Idio16Device::kRegOutputs0To7), 0);
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0);
  EXPECT_EQ(Inb(Idio16Device::kRegFilterStatus0To7), 0);
  EXPECT_FALSE(Intx());
  EXPECT_FALSE(StatusInterruptBit());
  // The lines are the outside world: they keep their level.
  EXPECT_EQ(Inb(Idio16Device::kRegInputs0To7), 0xf0);
  // IRQs are disabled again.
  idio_->SetInputs(0);
  Flush();
  EXPECT_FALSE(Intx());
  EXPECT_EQ(Inb(Idio16Device::kRegIrqStatus), 0);
  Flush();
  EXPECT_EQ(output_events_.back(), 0);
}

TEST_F(Idio16Test, MigrationCarriesTheRegisters) {
  ProbeAndUnmask();
  Outb(Idio16Device::kRegOutputs0To7, 0x81);
  Outb(Idio16Device::kRegOutputs8To15, 0x42);
  Outb(Idio16Device::kRegFilterStatus0To7, 0x33);
  idio_->SetInputs(0x0100);
  Flush();
  ASSERT_TRUE(Intx());

  std::vector<uint8_t> state;
  Run([&] {
    auto saved = dev()->SaveMigrationState();
    ASSERT_TRUE(saved.ok()) << saved.status();
    state = std::move(*saved);
  });

  second_ = std::make_unique<Idio16Device>("idio16-destination");
  Device* dst = second_->device();
  Run([&] {
    ASSERT_TRUE(dst->Finalize(loop_.get()).ok());
    // Truncated or altered states are refused without effect.
    std::vector<uint8_t> truncated(state.begin(), state.end() - 1);
    EXPECT_FALSE(dst->LoadMigrationState(truncated).ok());
    ASSERT_TRUE(dst->LoadMigrationState(state).ok());
  });
  EXPECT_EQ(second_->outputs(), 0x4281);
  EXPECT_EQ(second_->inputs(), 0x0100);
  EXPECT_EQ(Read(Idio16Device::kRegIrqStatus, 2, dst), (std::vector<uint8_t>{0x06, 0x33}));
  EXPECT_TRUE(Intx(dst));
  EXPECT_TRUE(StatusInterruptBit(dst));

  // The device-specific part is validated too: a bad status byte.
  Run([&] {
    auto own = dst->migration().save();
    ASSERT_TRUE(own.ok());
    std::vector<uint8_t> bad = *own;
    bad.back() = 0x80;
    EXPECT_FALSE(dst->migration().load(bad).ok());
    bad = *own;
    bad[0] = 99;  // unknown format
    EXPECT_FALSE(dst->migration().load(bad).ok());
  });
  EXPECT_EQ(second_->outputs(), 0x4281);
}

TEST_F(Idio16Test, InputsFromManyThreads) {
  std::vector<std::thread> threads;
  for (unsigned line = 0; line < 16; ++line) {
    threads.emplace_back([this, line] { idio_->SetInputLine(line, true); });
  }
  for (std::thread& t : threads) t.join();
  Flush();
  EXPECT_EQ(idio_->inputs(), 0xffff);
  EXPECT_EQ(Read(Idio16Device::kRegInputs0To7, 1)[0], 0xff);
  EXPECT_EQ(Read(Idio16Device::kRegInputs8To15, 1)[0], 0xff);
}

}  // namespace
}  // namespace vfio_user
