// DeviceRunner: what runs one device's emulation for the daemon.
//
// Two implementations:
//  * WorkerRunner (isolation, the default): a vfio-userd-worker process per
//    device. It inherits the daemon-owned listening socket, so a crash never
//    removes the socket path and clients reconnecting meanwhile wait in the
//    backlog. Crashes are seen through SIGCHLD, hangs through missing
//    heartbeats (the worker is then SIGKILLed).
//  * InProcessRunner (dense): the device runs on a shared event loop thread
//    inside the daemon: cheaper (no process, no IPC), but a crash takes the
//    daemon down and a hang stalls every dense device.
// Both run the device with DeviceHost and report the same WorkerReports.
//
// A runner is one incarnation: once it reports OnRunnerExited it is dead and
// the daemon creates a new one to restart the device.
//
// Threading: every method and every RunnerObserver callback runs on the
// daemon's supervisor loop thread.
#ifndef VFIO_USER_CONTROLPLANE_RUNNER_H_
#define VFIO_USER_CONTROLPLANE_RUNNER_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "controlplane/worker.pb.h"
#include "server/event_loop.h"
#include "server/session.h"

namespace vfio_user::controlplane {

class RunnerObserver {
 public:
  virtual ~RunnerObserver() = default;
  // The device is being served on its socket.
  virtual void OnRunnerReady() = 0;
  virtual void OnClientAttached(const PeerCredentials& peer) = 0;
  virtual void OnClientDetached(const std::string& why) = 0;
  virtual void OnClientRefused(const PeerCredentials& peer) = 0;
  // Counters and type state (every heartbeat and after every command).
  virtual void OnSnapshot(const DeviceSnapshot& snapshot) = 0;
  // The runner died (crash, hang, failed start). Final: no further calls.
  virtual void OnRunnerExited(const absl::Status& why) = 0;
};

// Called once with the command's outcome (the device's state after it), on
// the supervisor loop. UNAVAILABLE if the runner died first.
using CommandDone = std::function<void(absl::StatusOr<DeviceSnapshot>)>;

class DeviceRunner {
 public:
  // Kills the runner if it still runs; no observer call after this.
  virtual ~DeviceRunner() = default;

  // Starts serving `start.spec` on `listen_fd` (borrowed: the runner keeps
  // its own duplicate). OnRunnerReady or OnRunnerExited follows.
  virtual absl::Status Start(int listen_fd, const StartCommand& start) = 0;
  // Sends a reset or action command (the id is assigned here).
  virtual void Execute(WorkerCommand command, CommandDone done) = 0;
  // Asks the device to stop (its client is disconnected) without waiting.
  virtual void RequestStop() = 0;
  // Stops it, forcibly once `deadline` passes. No observer call after this.
  virtual void Stop(absl::Time deadline) = 0;
  // The worker process (0 when the device runs inside the daemon).
  virtual pid_t pid() const = 0;
};

// Child processes of the daemon, by pid, and what to do when they exit.
// Supervisor loop thread only.
class ChildRegistry {
 public:
  using ExitFn = std::function<void(int wait_status)>;
  void Add(pid_t pid, ExitFn on_exit) { children_[pid] = std::move(on_exit); }
  void Remove(pid_t pid) { children_.erase(pid); }
  // Reaps every exited child and runs its callback.
  void ReapAndDispatch();
  size_t size() const { return children_.size(); }

 private:
  absl::flat_hash_map<pid_t, ExitFn> children_;
};

// What runners need from the daemon.
struct RunnerEnvironment {
  EventLoop* supervisor = nullptr;  // the daemon's supervisor loop
  ChildRegistry* children = nullptr;
  // Isolation mode.
  std::string worker_binary;
  absl::Duration heartbeat_interval = absl::Milliseconds(250);
  // A worker silent for this long is considered hung and is killed.
  absl::Duration heartbeat_timeout = absl::Seconds(3);
  // Dense mode: the loop the devices run on (nullptr in isolation mode).
  EventLoop* device_loop = nullptr;
};

std::unique_ptr<DeviceRunner> NewWorkerRunner(const RunnerEnvironment& env,
                                              const std::string& device_name,
                                              RunnerObserver* observer);
std::unique_ptr<DeviceRunner> NewInProcessRunner(const RunnerEnvironment& env,
                                                 const std::string& device_name,
                                                 RunnerObserver* observer);

// Delivers a spontaneous report (not a command reply) to `observer`.
void DispatchReport(const WorkerReport& report, RunnerObserver* observer);

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_RUNNER_H_
