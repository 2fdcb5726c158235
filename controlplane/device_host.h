// DeviceHost: serves one hosted device on an event loop and reports what
// happens as WorkerReport messages (controlplane/worker.proto).
//
// The same code runs the device in both isolation modes: inside a worker
// process (vfio-userd-worker sends the reports over its control channel)
// and inside the daemon in dense mode (the reports are posted to the
// daemon's supervisor loop). It creates the device through its DeviceType,
// serves it with a DeviceServer on the listening socket it is given (the
// daemon owns the socket file; DeviceHost never creates or removes it),
// turns ServerEvents into reports, sends a heartbeat with the counters every
// heartbeat interval from the loop thread (a hung loop stops the heartbeats,
// which is how the daemon detects a hang), and executes commands.
//
// Threading: created, used and destroyed on the loop thread (or while the
// loop is not running). `report` is called on the loop thread.
#ifndef VFIO_USER_CONTROLPLANE_DEVICE_HOST_H_
#define VFIO_USER_CONTROLPLANE_DEVICE_HOST_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "controlplane/device_types.h"
#include "controlplane/worker.pb.h"
#include "core/unique_fd.h"
#include "server/device_server.h"
#include "server/event_loop.h"

namespace vfio_user::controlplane {

class DeviceHost {
 public:
  using ReportFn = std::function<void(WorkerReport report)>;

  // Creates and serves the device of `start.spec` on `listen_fd`.
  static absl::StatusOr<std::unique_ptr<DeviceHost>> Start(
      EventLoop* loop, UniqueFd listen_fd, const StartCommand& start, ReportFn report);
  // Disconnects the client (it sees EOF) and stops serving.
  ~DeviceHost();
  DeviceHost(const DeviceHost&) = delete;
  DeviceHost& operator=(const DeviceHost&) = delete;

  // Executes a reset or action command; returns its result (reply_to set).
  WorkerReport Execute(const WorkerCommand& command);

 private:
  DeviceHost(EventLoop* loop, ReportFn report, absl::Duration heartbeat);
  void ScheduleHeartbeat();
  DeviceSnapshot Snapshot();
  // Reports an attach once per client.
  void ReportAttached(const PeerCredentials& peer);
  // Fallback for a DeviceServer that does not call on_client_attached
  // (server/device_server.cc at the time of writing): notices the attach at
  // the next heartbeat or command instead.
  void CheckAttached();

  EventLoop* loop_;
  ReportFn report_;
  absl::Duration heartbeat_interval_;
  EventLoop::TimerId heartbeat_timer_ = 0;
  bool attach_reported_ = false;
  std::unique_ptr<HostedDevice> hosted_;
  std::unique_ptr<DeviceServer> server_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Fills a WorkerReport's CommandResult from a status.
void SetResult(const absl::Status& status, CommandResult* result);
// The status a CommandResult carries.
absl::Status ResultStatus(const CommandResult& result);

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_DEVICE_HOST_H_
