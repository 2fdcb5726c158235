// DeviceManager: the heart of vfio-userd. Owns every hosted device, its
// listening socket, its runner (worker process or in-process), its
// lifecycle state machine and its persisted spec, and publishes device
// events. The gRPC service (controlplane/device_service.h) is a thin
// adapter over this class; every method returns an absl::Status whose code
// is the gRPC code to answer with.
//
// State machine of a device (docs/CONTROLPLANE.md has the diagram). Two
// orthogonal parts:
//   emulation health: STARTING -> RUNNING -> (crash/hang) RESTARTING ->
//                     RUNNING ...; repeated quick failures -> FAILED
//                     (still retried with backoff unless permanent)
//   client phase:     NONE -> CONNECTED -> GONE_WAITING -(window)-> TIMED_OUT
//                     (any client attaching -> CONNECTED)
// The reported DeviceState is FAILED or RESTARTING when the health says so,
// otherwise the client phase (NONE reads LISTENING). A crash with a client
// attached counts as a disconnect and starts the reconnect window.
//
// Threading: all device state lives on one supervisor EventLoop thread
// (also where runner callbacks, timers and SIGCHLD handling run). Public
// methods are thread-safe: they run their work on that loop and, for
// commands the emulation must execute (reset, actions), wait for its answer
// up to ManagerOptions::command_timeout on the calling thread.
#ifndef VFIO_USER_CONTROLPLANE_DEVICE_MANAGER_H_
#define VFIO_USER_CONTROLPLANE_DEVICE_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "controlplane/event_hub.h"
#include "controlplane/runner.h"
#include "controlplane/spec.h"
#include "controlplane/state_store.h"
#include "core/unique_fd.h"
#include "proto/vfio_user/v1/device.pb.h"
#include "proto/vfio_user/v1/device_service.pb.h"
#include "server/event_loop.h"

namespace vfio_user::controlplane {

enum class Isolation {
  kProcess,  // a vfio-userd-worker process per device (default)
  kDense,    // every device on one event loop inside the daemon
};

struct ManagerOptions {
  SpecPolicy spec_policy;
  size_t max_devices = 64;
  Isolation isolation = Isolation::kProcess;
  std::string worker_binary;  // absolute path (isolation mode)
  absl::Duration heartbeat_interval = absl::Milliseconds(250);
  absl::Duration heartbeat_timeout = absl::Seconds(3);
  // How long Reset and actions wait for the emulation.
  absl::Duration command_timeout = absl::Seconds(5);
  // How long a stopping worker gets before it is SIGKILLed.
  absl::Duration stop_grace = absl::Seconds(2);
  // Restart backoff: the first restart after a healthy run is immediate,
  // then initial, doubling up to max.
  absl::Duration restart_backoff_initial = absl::Milliseconds(100);
  absl::Duration restart_backoff_max = absl::Seconds(5);
  // An incarnation that ran at least this long resets the backoff.
  absl::Duration healthy_after = absl::Seconds(10);
  // Quick failures in a row before the state reads FAILED.
  int failures_before_failed = 5;
  size_t watch_history = 4096;
};

class DeviceManager {
 public:
  // Starts the supervisor loop. `signal_fd` (from BlockSignalsIntoFd) must
  // deliver SIGCHLD; SIGTERM/SIGINT/SIGHUP arriving on it are passed to
  // `on_terminate` (on the loop thread; it must not call Shutdown()).
  static absl::StatusOr<std::unique_ptr<DeviceManager>> Start(
      ManagerOptions options, std::unique_ptr<StateStore> store, UniqueFd signal_fd,
      std::function<void(int signal)> on_terminate);
  // Shutdown() if not done yet.
  ~DeviceManager();
  DeviceManager(const DeviceManager&) = delete;
  DeviceManager& operator=(const DeviceManager&) = delete;

  // Recreates every device of the state directory (on the same sockets).
  // Files that cannot be used are logged; specs that are no longer valid
  // show up as FAILED devices. Returns the number of devices loaded.
  size_t RecreatePersisted();

  // ---- The API (codes as documented in device_service.proto) ----
  // `created` (optional) tells whether a new device was made (false: an
  // identical one existed).
  absl::StatusOr<vfio_user::v1::Device> Create(const vfio_user::v1::DeviceSpec& spec,
                                               bool* created = nullptr);
  absl::StatusOr<vfio_user::v1::Device> Get(const std::string& name);
  absl::StatusOr<vfio_user::v1::ListDevicesResponse> List(int32_t page_size,
                                                          const std::string& page_token);
  absl::StatusOr<vfio_user::v1::Device> Reset(const std::string& name,
                                              bool disconnect_client);
  // Returns the revision of the DELETED event (0 if nothing was deleted).
  absl::StatusOr<uint64_t> Delete(const std::string& name, bool allow_missing);
  absl::StatusOr<vfio_user::v1::Idio16State> SetIdio16Inputs(
      const std::string& name, uint32_t inputs, std::optional<uint32_t> mask);

  // Every device and the revision they reflect, taken atomically.
  struct Snapshot {
    std::vector<vfio_user::v1::Device> devices;
    uint64_t revision = 0;
  };
  absl::StatusOr<Snapshot> TakeSnapshot();
  EventHub& events() { return *events_; }

  // Stops every device (clients are disconnected, sockets removed; the
  // persisted specs stay), then the supervisor loop. API calls made after
  // this fail with UNAVAILABLE.
  void Shutdown();

  // Number of devices (for tests and logs).
  size_t device_count();

 private:
  class ManagedDevice;
  friend class ManagedDevice;

  DeviceManager(ManagerOptions options, std::unique_ptr<StateStore> store,
                std::unique_ptr<EventLoop> loop, std::unique_ptr<EventLoop> device_loop);

  // Runs `fn` on the supervisor loop unless shutting down (UNAVAILABLE).
  absl::Status OnLoop(std::function<void()> fn);
  // Runs a command on device `name`'s emulation and waits for the outcome.
  absl::StatusOr<DeviceSnapshot> RunCommand(
      const std::string& name, std::function<absl::Status(ManagedDevice&)> check,
      WorkerCommand command, std::function<void(ManagedDevice&, const DeviceSnapshot&)> on_ok);

  // Loop thread.
  ManagedDevice* Find(const std::string& name);
  absl::StatusOr<vfio_user::v1::Device> CreateOnLoop(const vfio_user::v1::DeviceSpec& spec,
                                                     bool* created);
  void OnSignals();
  void Publish(ManagedDevice& device, vfio_user::v1::DeviceEventType type,
               const std::string& reason);
  std::unique_ptr<DeviceRunner> NewRunner(ManagedDevice* device);

  const ManagerOptions options_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<EventHub> events_;
  std::unique_ptr<EventLoop> loop_;         // supervisor
  std::unique_ptr<EventLoop> device_loop_;  // dense mode only
  UniqueFd signal_fd_;
  std::function<void(int)> on_terminate_;
  ChildRegistry children_;  // loop thread
  RunnerEnvironment runner_env_;
  // Loop thread: devices by name (sorted, for List).
  std::map<std::string, std::unique_ptr<ManagedDevice>> devices_;

  absl::Mutex api_mu_;
  bool accepting_ ABSL_GUARDED_BY(api_mu_) = true;
  bool shut_down_ = false;  // Shutdown() completed (caller's thread)
};

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_DEVICE_MANAGER_H_
