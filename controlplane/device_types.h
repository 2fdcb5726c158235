// Device types the daemon can host, behind one small factory interface.
//
// Each `type` of DeviceSpec (proto/vfio_user/v1/device.proto) has one
// DeviceType: it validates and normalizes its parameters, creates the
// device (a HostedDevice wrapping the server/devices class) and runs the
// type's actions. Adding a device type = one DeviceType subclass in
// device_types.cc plus its oneof member in the proto; nothing else in the
// daemon knows about concrete devices.
//
// Threading: DeviceType objects are immutable singletons (any thread).
// A HostedDevice follows server/device.h: Apply() runs on the device's loop
// thread; Snapshot() may be called from any thread.
#ifndef VFIO_USER_CONTROLPLANE_DEVICE_TYPES_H_
#define VFIO_USER_CONTROLPLANE_DEVICE_TYPES_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "controlplane/worker.pb.h"
#include "proto/vfio_user/v1/device.pb.h"
#include "server/device.h"

namespace vfio_user::controlplane {

// A device instance being served.
class HostedDevice {
 public:
  virtual ~HostedDevice() = default;
  // The device to serve. Owned by the HostedDevice.
  virtual Device* device() = 0;
  // A device-specific action. REQUIRES: loop thread (or not yet served).
  virtual absl::Status Apply(const DeviceAction& action);
  // Counters and type-specific runtime state (any thread).
  void Snapshot(DeviceSnapshot* out);

 protected:
  virtual void FillTypeState(DeviceSnapshot* out) { (void)out; }
};

class DeviceType {
 public:
  virtual ~DeviceType() = default;
  // "idio16", "dma_test": the oneof member name.
  virtual const char* name() const = 0;
  // Validates and normalizes the type's parameters in `spec` (INVALID_ARGUMENT
  // naming "spec.<type>.<field>").
  virtual absl::Status Normalize(vfio_user::v1::DeviceSpec* spec) const = 0;
  // Creates the device for a normalized spec. `runtime` is state the daemon
  // kept across restarts of the emulation (e.g. the idio-16 input lines).
  virtual absl::StatusOr<std::unique_ptr<HostedDevice>> Create(
      const vfio_user::v1::DeviceSpec& spec, const RuntimeState& runtime) const = 0;
  // Whether this type has `action`.
  virtual bool Accepts(DeviceAction::ActionCase action) const { (void)action; return false; }
  // Folds the effect of a successful action (its result snapshot) into the
  // runtime state the daemon keeps.
  virtual void RecordRuntime(const DeviceSnapshot& after, RuntimeState* runtime) const {
    (void)after;
    (void)runtime;
  }
};

// nullptr for TYPE_NOT_SET or an unknown case.
const DeviceType* FindDeviceType(vfio_user::v1::DeviceSpec::TypeCase type);

// The action's name for messages ("set_idio16_inputs").
std::string ActionName(const DeviceAction& action);

// Copies the engine's counters into the API's message (refused connections
// are counted by the daemon, not here).
void FillCounters(const DeviceCounters& in, vfio_user::v1::DeviceCounters* out);

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_DEVICE_TYPES_H_
