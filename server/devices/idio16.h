// Idio16Device: an emulated ACCES PCI-IDIO-16 (16 isolated digital inputs,
// 16 FET outputs), the card Linux drives with gpio-pci-idio-16.
//
// What the guest sees (as on the real card, and as the in-tree driver
// expects):
//   * PCI ids 494f:0dc8 (subsystem the same), conventional 256-byte config
//     space, interrupt pin INTA, no capabilities.
//   * BAR2: I/O space, 256 bytes; byte-wide registers at 0..7 (the rest read
//     0 and ignore writes):
//       off  read                              write
//       0    outputs 0-7                       outputs 0-7
//       1    inputs 0-7                        clear interrupt
//       2    enable IRQ (returns 0)            disable IRQ
//       3    activate input filters 0-15       deactivate input filters 0-15
//       4    outputs 8-15                      outputs 8-15
//       5    inputs 8-15                       (unused)
//       6    interrupt status                  (unused)
//       7    input filter status 0-7           control input filters 0-7
//     Wider accesses (2/4/8 bytes, or bulk) are split into byte accesses in
//     ascending address order, side effects included.
//   * Interrupt status (offset 6): bit 0 = a change of state latched on
//     inputs 0-7, bit 1 = on inputs 8-15, bit 2 = interrupt pending. The old
//     driver claims the interrupt only if (status & 0x3) && (status & 0x4);
//     the regmap-irq driver (Linux >= 6.3) tests bit 2. A change is latched
//     only while IRQs are enabled; writing offset 1 clears the latch.
//   * INTx (level): asserted while a change is latched, IRQs are enabled
//     and the Command register's Interrupt Disable bit is clear. Disabling
//     IRQs (or Interrupt Disable) drops the line but keeps the latch, so a
//     re-enable with a latched change interrupts again (the manual of the
//     sibling PCI-IDI-48 says the same: enabling/disabling does not clear
//     the latch).
//   * The input filters (a 5 ms debounce on the card) are kept as state
//     only: inputs set through the API are already clean.
// Not emulated: the card's PLX PCI9050 bridge registers (BAR0/BAR1 of the
// real card), which no driver touches.
//
// Class code: the card's own value could not be confirmed; we report 0x118000
// (data acquisition / signal processing controller, "other"), the category
// ACCES installs its cards under. Drivers match on the ids only.
//
// Threading (server/device.h): region callbacks, reset and migration run on
// the device's loop thread, which owns the register state. SetInputs() and
// SetInputLine() may be called from any thread; once the device is served
// they are posted to the loop (apply order = call order per thread). The
// outputs()/inputs() getters are safe from any thread (atomic mirrors). The
// output callback runs on the loop thread.
//
// Destruction: on the loop thread, or after the loop stopped (as for Device).
#ifndef VFIO_USER_SERVER_DEVICES_IDIO16_H_
#define VFIO_USER_SERVER_DEVICES_IDIO16_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "server/device.h"

namespace vfio_user {

class Idio16Device {
 public:
  static constexpr uint16_t kVendorId = 0x494f;  // ACCES I/O Products
  static constexpr uint16_t kDeviceId = 0x0dc8;  // PCI-IDIO-16
  static constexpr uint32_t kClassCode = 0x118000;
  static constexpr uint32_t kRegisterBar = 2;
  static constexpr uint32_t kRegisterBarSize = 256;

  // BAR2 register offsets.
  static constexpr uint32_t kRegOutputs0To7 = 0;
  static constexpr uint32_t kRegInputs0To7 = 1;     // write: clear interrupt
  static constexpr uint32_t kRegIrqControl = 2;     // read: enable; write: disable
  static constexpr uint32_t kRegFilterControl = 3;  // read: activate; write: deactivate
  static constexpr uint32_t kRegOutputs8To15 = 4;
  static constexpr uint32_t kRegInputs8To15 = 5;
  static constexpr uint32_t kRegIrqStatus = 6;
  static constexpr uint32_t kRegFilterStatus0To7 = 7;

  // Interrupt status bits (kRegIrqStatus).
  static constexpr uint8_t kStatusChangeLow = 0x01;   // inputs 0-7 changed
  static constexpr uint8_t kStatusChangeHigh = 0x02;  // inputs 8-15 changed
  static constexpr uint8_t kStatusPending = 0x04;     // interrupt pending

  // Runs on the loop thread after the guest changed the outputs (new state).
  using OutputCallback = std::function<void(uint16_t outputs)>;

  explicit Idio16Device(std::string name = "pci-idio-16");
  ~Idio16Device();
  Idio16Device(const Idio16Device&) = delete;
  Idio16Device& operator=(const Idio16Device&) = delete;

  // The device to serve (DeviceServer::Create(loop, idio.device(), ...)).
  Device* device() { return &device_; }

  // ---- The outside world (any thread) ----
  // Drives the 16 input lines (bit n = line n; 1 = energized).
  void SetInputs(uint16_t lines);
  // Drives one input line; `line` >= 16 is ignored.
  void SetInputLine(unsigned line, bool energized);
  uint16_t inputs() const { return inputs_mirror_.load(std::memory_order_acquire); }
  // The FET outputs the guest drives (bit n = output n).
  uint16_t outputs() const { return outputs_mirror_.load(std::memory_order_acquire); }
  // REQUIRES: called before the device is served.
  void SetOutputCallback(OutputCallback fn) { on_outputs_ = std::move(fn); }

 private:
  // The guest-visible register state (loop thread).
  struct Registers {
    uint16_t outputs = 0;
    uint16_t inputs = 0;  // the lines; not reset (they are the outside world)
    bool irq_enabled = false;
    bool filters_all = false;   // activated by a read of offset 3
    uint8_t filter_mask = 0;    // individual filters 0-7 (offset 7)
    uint8_t irq_status = 0;     // kStatus* bits
  };

  absl::Status ReadBar(uint64_t offset, absl::Span<uint8_t> out);
  absl::Status WriteBar(uint64_t offset, absl::Span<const uint8_t> in);
  uint8_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint8_t value);

  // Applies `update` to the input lines on the loop thread (or now, if the
  // device is not served yet).
  void UpdateInputs(std::function<uint16_t(uint16_t)> update);
  void ApplyInputs(uint16_t lines);
  void SetOutputs(uint16_t outputs);
  // Drives INTx from the latch, the IRQ enable and Command.INTx Disable
  // (only on a change of level unless `force`).
  void UpdateIntx(bool force = false);
  void OnReset();

  absl::StatusOr<std::vector<uint8_t>> SaveState() const;
  absl::Status LoadState(absl::Span<const uint8_t> state);

  Device device_;
  Registers regs_;
  bool intx_level_ = false;  // what we last told the engine
  std::atomic<uint16_t> inputs_mirror_{0};
  std::atomic<uint16_t> outputs_mirror_{0};
  OutputCallback on_outputs_;
  // Guards callbacks posted to the loop against use after destruction
  // (checked and cleared on the loop thread).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DEVICES_IDIO16_H_
