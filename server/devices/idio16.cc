#include "server/devices/idio16.h"

#include <cerrno>
#include <utility>

#include "core/errno_status.h"
#include "server/devices/register_io.h"
#include "server/event_loop.h"
#include "server/pci/pci_ids.h"

namespace vfio_user {
namespace {

// Migration state: format byte, then the registers (see SaveState).
constexpr uint8_t kStateFormat = 1;
constexpr uint8_t kStatusBits = Idio16Device::kStatusChangeLow |
                                Idio16Device::kStatusChangeHigh |
                                Idio16Device::kStatusPending;

}  // namespace

Idio16Device::Idio16Device(std::string name) : device_(std::move(name)) {
  PciConfigSpace& config = device_.config();
  config.SetIds({.vendor_id = kVendorId,
                 .device_id = kDeviceId,
                 .subsystem_vendor_id = kVendorId,
                 .subsystem_id = kDeviceId,
                 .class_code = kClassCode,
                 .revision = 0});
  config.SetInterruptPin(PciIntxPin::kA);
  // A target-only card: no bus mastering.
  config.SetOptionalCommandBits(kPciCommandParity | kPciCommandSerr);
  // Cannot fail: a free slot and a legal I/O size.
  (void)config.AddBar(kRegisterBar, PciBar::Io(kRegisterBarSize));
  config.callbacks().command_changed = [this](uint16_t, uint16_t) { UpdateIntx(); };

  (void)device_.SetupRegion(
      kRegisterBar,
      RegionSpec::Trapped(
          kRegisterBarSize,
          [this](uint64_t offset, absl::Span<uint8_t> out) { return ReadBar(offset, out); },
          [this](uint64_t offset, absl::Span<const uint8_t> in) {
            return WriteBar(offset, in);
          }));
  device_.SetResetCallback([this](ResetReason) { OnReset(); });
  device_.SetMigrationCallbacks(MigrationCallbacks{
      .set_running = nullptr,  // nothing runs in the background
      .save = [this] { return SaveState(); },
      .load = [this](absl::Span<const uint8_t> state) { return LoadState(state); },
  });
}

Idio16Device::~Idio16Device() { *alive_ = false; }

// ---- Guest accesses (loop thread) ----

absl::Status Idio16Device::ReadBar(uint64_t offset, absl::Span<uint8_t> out) {
  for (size_t i = 0; i < out.size(); ++i) out[i] = ReadRegister(offset + i);
  return absl::OkStatus();
}

absl::Status Idio16Device::WriteBar(uint64_t offset, absl::Span<const uint8_t> in) {
  for (size_t i = 0; i < in.size(); ++i) WriteRegister(offset + i, in[i]);
  return absl::OkStatus();
}

uint8_t Idio16Device::ReadRegister(uint64_t offset) {
  switch (offset) {
    case kRegOutputs0To7:
      return static_cast<uint8_t>(regs_.outputs);
    case kRegInputs0To7:
      return static_cast<uint8_t>(regs_.inputs);
    case kRegIrqControl:
      regs_.irq_enabled = true;
      UpdateIntx();
      return 0;
    case kRegFilterControl:
      regs_.filters_all = true;
      return 0;
    case kRegOutputs8To15:
      return static_cast<uint8_t>(regs_.outputs >> 8);
    case kRegInputs8To15:
      return static_cast<uint8_t>(regs_.inputs >> 8);
    case kRegIrqStatus:
      return regs_.irq_status;
    case kRegFilterStatus0To7:
      return regs_.filters_all ? 0xff : regs_.filter_mask;
    default:
      return 0;
  }
}

void Idio16Device::WriteRegister(uint64_t offset, uint8_t value) {
  switch (offset) {
    case kRegOutputs0To7:
      SetOutputs(static_cast<uint16_t>((regs_.outputs & 0xff00) | value));
      break;
    case kRegInputs0To7:  // clear interrupt
      regs_.irq_status = 0;
      UpdateIntx();
      break;
    case kRegIrqControl:  // disable IRQ
      regs_.irq_enabled = false;
      UpdateIntx();
      break;
    case kRegFilterControl:  // deactivate every filter
      regs_.filters_all = false;
      regs_.filter_mask = 0;
      break;
    case kRegOutputs8To15:
      SetOutputs(static_cast<uint16_t>((regs_.outputs & 0x00ff) | (value << 8)));
      break;
    case kRegFilterStatus0To7:
      // Individual control works only while the global enable is off.
      if (!regs_.filters_all) regs_.filter_mask = value;
      break;
    default:  // inputs 8-15, status and unused offsets: writes are ignored
      break;
  }
}

void Idio16Device::SetOutputs(uint16_t outputs) {
  if (outputs == regs_.outputs) return;
  regs_.outputs = outputs;
  outputs_mirror_.store(outputs, std::memory_order_release);
  if (on_outputs_) on_outputs_(outputs);
}

// ---- Input lines ----

void Idio16Device::SetInputs(uint16_t lines) {
  UpdateInputs([lines](uint16_t) { return lines; });
}

void Idio16Device::SetInputLine(unsigned line, bool energized) {
  if (line >= 16) return;
  const uint16_t bit = static_cast<uint16_t>(1u << line);
  UpdateInputs([bit, energized](uint16_t lines) {
    return static_cast<uint16_t>(energized ? (lines | bit) : (lines & ~bit));
  });
}

void Idio16Device::UpdateInputs(std::function<uint16_t(uint16_t)> update) {
  EventLoop* loop = device_.loop();
  if (loop == nullptr || loop->IsLoopThread()) {
    ApplyInputs(update(regs_.inputs));
    return;
  }
  loop->Post([this, alive = alive_, update = std::move(update)] {
    if (*alive) ApplyInputs(update(regs_.inputs));
  });
}

void Idio16Device::ApplyInputs(uint16_t lines) {
  const uint16_t changed = lines ^ regs_.inputs;
  regs_.inputs = lines;
  inputs_mirror_.store(lines, std::memory_order_release);
  if (changed == 0 || !regs_.irq_enabled) return;
  if (changed & 0x00ff) regs_.irq_status |= kStatusChangeLow;
  if (changed & 0xff00) regs_.irq_status |= kStatusChangeHigh;
  regs_.irq_status |= kStatusPending;
  UpdateIntx();
}

void Idio16Device::UpdateIntx(bool force) {
  const bool level = (regs_.irq_status & kStatusPending) && regs_.irq_enabled &&
                     !device_.config().IntxDisabled();
  if (level == intx_level_ && !force) return;
  intx_level_ = level;
  device_.SetIntxLevel(level);
}

// ---- Reset and migration (loop thread) ----

void Idio16Device::OnReset() {
  // The engine already deasserted INTx (IrqController::Reset) and reset the
  // config space. The input lines are the outside world: they stay.
  intx_level_ = false;
  const uint16_t inputs = regs_.inputs;
  SetOutputs(0);
  regs_ = Registers{};
  regs_.inputs = inputs;
}

absl::StatusOr<std::vector<uint8_t>> Idio16Device::SaveState() const {
  StateWriter w;
  w.U8(kStateFormat);
  w.U16(regs_.outputs);
  w.U16(regs_.inputs);
  w.U8(regs_.irq_enabled ? 1 : 0);
  w.U8(regs_.filters_all ? 1 : 0);
  w.U8(regs_.filter_mask);
  w.U8(regs_.irq_status);
  return w.Take();
}

absl::Status Idio16Device::LoadState(absl::Span<const uint8_t> state) {
  StateReader r(state);
  uint8_t format = 0, irq_enabled = 0, filters_all = 0;
  Registers loaded;
  r.U8(&format);
  r.U16(&loaded.outputs);
  r.U16(&loaded.inputs);
  r.U8(&irq_enabled);
  r.U8(&filters_all);
  r.U8(&loaded.filter_mask);
  r.U8(&loaded.irq_status);
  if (!r.AtEnd() || format != kStateFormat) {
    return ErrnoError(EINVAL, "pci-idio-16: malformed migration state");
  }
  if (irq_enabled > 1 || filters_all > 1 || (loaded.irq_status & ~kStatusBits) != 0) {
    return ErrnoError(EINVAL, "pci-idio-16: invalid register values in migration state");
  }
  loaded.irq_enabled = irq_enabled != 0;
  loaded.filters_all = filters_all != 0;
  const uint16_t old_outputs = regs_.outputs;
  regs_ = loaded;
  inputs_mirror_.store(regs_.inputs, std::memory_order_release);
  outputs_mirror_.store(regs_.outputs, std::memory_order_release);
  if (regs_.outputs != old_outputs && on_outputs_) on_outputs_(regs_.outputs);
  // The engine's line may differ from our cached level: drive it anew.
  UpdateIntx(/*force=*/true);
  return absl::OkStatus();
}

}  // namespace vfio_user
