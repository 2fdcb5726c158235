#include "controlplane/device_host.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/transport.h"

namespace vfio_user::controlplane {

namespace {

void SetPeer(const PeerCredentials& peer, PeerCredentialsProto* out) {
  out->set_pid(peer.pid);
  out->set_uid(peer.uid);
  out->set_gid(peer.gid);
}

std::string DescribeDetach(const absl::Status& why) {
  if (IsPeerClosed(why)) return "client closed the connection";
  return absl::StrCat("connection closed: ", why.message());
}

}  // namespace

void SetResult(const absl::Status& status, CommandResult* result) {
  result->set_code(static_cast<int32_t>(status.code()));
  result->set_message(std::string(status.message()));
}

absl::Status ResultStatus(const CommandResult& result) {
  if (result.code() == 0) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kUnknown;
  if (result.code() > 0 && result.code() <= static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    code = static_cast<absl::StatusCode>(result.code());
  }
  return absl::Status(code, result.message());
}

DeviceHost::DeviceHost(EventLoop* loop, ReportFn report, absl::Duration heartbeat)
    : loop_(loop), report_(std::move(report)), heartbeat_interval_(heartbeat) {}

absl::StatusOr<std::unique_ptr<DeviceHost>> DeviceHost::Start(
    EventLoop* loop, UniqueFd listen_fd, const StartCommand& start, ReportFn report) {
  const DeviceType* type = FindDeviceType(start.spec().type_case());
  if (type == nullptr) return absl::InvalidArgumentError("unknown device type");
  const absl::Duration heartbeat =
      absl::Milliseconds(start.heartbeat_interval_ms() > 0 ? start.heartbeat_interval_ms() : 250);
  std::unique_ptr<DeviceHost> host(new DeviceHost(loop, std::move(report), heartbeat));
  auto hosted = type->Create(start.spec(), start.runtime());
  if (!hosted.ok()) return hosted.status();
  host->hosted_ = std::move(*hosted);

  DeviceServerOptions options;
  options.socket_path = start.spec().socket().path();  // informational
  options.listen_fd = std::move(listen_fd);
  options.unlink_on_close = false;  // the daemon owns the socket file
  DeviceHost* raw = host.get();
  std::weak_ptr<bool> alive = host->alive_;
  options.events.on_client_attached = [raw, alive](const PeerCredentials& peer) {
    if (!alive.expired()) raw->ReportAttached(peer);
  };
  options.events.on_client_detached = [raw, alive](const absl::Status& why) {
    if (alive.expired()) return;
    raw->attach_reported_ = false;
    WorkerReport r;
    r.set_client_detached(DescribeDetach(why));
    raw->report_(std::move(r));
  };
  options.events.on_client_refused = [raw, alive](const PeerCredentials& peer) {
    if (alive.expired()) return;
    WorkerReport r;
    SetPeer(peer, r.mutable_client_refused());
    raw->report_(std::move(r));
  };
  auto server = DeviceServer::Create(loop, host->hosted_->device(), std::move(options));
  if (!server.ok()) return server.status();
  host->server_ = std::move(*server);
  host->ScheduleHeartbeat();
  return host;
}

DeviceHost::~DeviceHost() {
  alive_.reset();
  if (heartbeat_timer_ != 0) loop_->CancelTimer(heartbeat_timer_);
  server_.reset();  // closes the client's connection
  hosted_.reset();
}

void DeviceHost::ScheduleHeartbeat() {
  std::weak_ptr<bool> alive = alive_;
  heartbeat_timer_ = loop_->RunAfter(heartbeat_interval_, [this, alive] {
    if (alive.expired()) return;
    CheckAttached();
    WorkerReport r;
    *r.mutable_heartbeat() = Snapshot();
    report_(std::move(r));
    ScheduleHeartbeat();
  });
}

void DeviceHost::ReportAttached(const PeerCredentials& peer) {
  if (attach_reported_) return;
  attach_reported_ = true;
  WorkerReport r;
  SetPeer(peer, r.mutable_client_attached());
  report_(std::move(r));
}

void DeviceHost::CheckAttached() {
  if (!attach_reported_ && hosted_->device()->client_attached()) {
    ReportAttached(server_->client());
  }
}

DeviceSnapshot DeviceHost::Snapshot() {
  DeviceSnapshot s;
  hosted_->Snapshot(&s);
  return s;
}

WorkerReport DeviceHost::Execute(const WorkerCommand& command) {
  CheckAttached();
  WorkerReport reply;
  reply.set_reply_to(command.id());
  absl::Status status;
  switch (command.command_case()) {
    case WorkerCommand::kReset:
      if (command.reset().disconnect_client()) server_->DisconnectClient();
      hosted_->device()->Reset(ResetReason::kClientRequest);
      break;
    case WorkerCommand::kAction:
      status = hosted_->Apply(command.action());
      break;
    case WorkerCommand::kStart:
      status = absl::FailedPreconditionError("already started");
      break;
    case WorkerCommand::COMMAND_NOT_SET:
      status = absl::InvalidArgumentError("empty command");
      break;
  }
  if (!status.ok()) {
    Log(LogLevel::kWarn, "worker", "command failed",
        {{"device", hosted_->device()->name()}, {"error", status.ToString()}});
  }
  SetResult(status, reply.mutable_result());
  *reply.mutable_result()->mutable_snapshot() = Snapshot();
  return reply;
}

}  // namespace vfio_user::controlplane
