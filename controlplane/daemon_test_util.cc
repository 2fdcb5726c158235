#include "controlplane/daemon_test_util.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/transport.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace vfio_user::controlplane::testing {

using ::vfio_user::testing::RunfilePath;
using ::vfio_user::testing::Subprocess;

bool Eventually(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string TempSocketPath(const std::string& tag) {
  // Tests run in parallel sandboxes with their own pid namespaces but one
  // shared /tmp: the pid alone is not unique.
  static const std::string* const unique = [] {
    absl::BitGen gen;
    return new std::string(absl::StrCat(::getpid(), "-", absl::Hex(absl::Uniform<uint32_t>(gen),
                                                                    absl::kZeroPad8)));
  }();
  return absl::StrCat("/tmp/vfud.", *unique, ".", tag, ".sock");
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

namespace {

std::string MakeTempDir(const std::string& tag) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern = absl::StrCat(base ? base : "/tmp", "/vfud-", tag, "-XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

// RunfilePath is relative when a test is run by hand; the daemon needs
// absolute program paths.
std::string AbsoluteRunfile(const std::string& workspace_relative) {
  std::error_code ec;
  return std::filesystem::absolute(RunfilePath(workspace_relative), ec).string();
}

}  // namespace

Daemon::Daemon(std::string tag)
    : tag_(std::move(tag)),
      grpc_socket_(TempSocketPath(absl::StrCat(tag_, ".grpc"))),
      state_dir_(absl::StrCat(MakeTempDir(tag_), "/state")),
      // Short: the default devices' sockets go in here.
      runtime_dir_(TempSocketPath(tag_) + ".d") {}

Daemon::~Daemon() {
  if (process_ && process_->Running()) (void)process_->Stop(SIGKILL);
  std::error_code ec;
  std::filesystem::remove_all(std::filesystem::path(state_dir_).parent_path(), ec);
  // Every /tmp path of this daemon (gRPC socket, runtime dir, the stale
  // device sockets a SIGKILLed daemon leaves) starts with this prefix.
  const std::string prefix = TempSocketPath(tag_).substr(5);  // "vfud.<id>.<tag>.sock"
  const std::string mine = prefix.substr(0, prefix.size() - 4);  // "vfud.<id>.<tag>."
  for (const auto& entry : std::filesystem::directory_iterator("/tmp", ec)) {
    if (entry.path().filename().string().rfind(mine, 0) == 0) {
      std::filesystem::remove_all(entry.path(), ec);
    }
  }
}

std::string Daemon::DeviceSocket(const std::string& device) const {
  return TempSocketPath(absl::StrCat(tag_, ".", device));
}

absl::Status Daemon::Start(std::vector<std::string> extra_flags) {
  std::vector<std::string> argv = {
      AbsoluteRunfile("controlplane/vfio-userd"),
      absl::StrCat("--worker_binary=", AbsoluteRunfile("controlplane/vfio-userd-worker")),
      absl::StrCat("--grpc_listen=unix:", grpc_socket_),
      absl::StrCat("--state_dir=", state_dir_),
      absl::StrCat("--runtime_dir=", runtime_dir_),
      "--default_devices=false",
      "--heartbeat_interval=100ms",
      "--heartbeat_timeout=1s",
  };
  for (std::string& f : extra_flags) argv.push_back(std::move(f));
  auto process = Subprocess::Start(argv);
  if (!process.ok()) return process.status();
  process_ = std::make_unique<Subprocess>(std::move(*process));

  // Create the channel only once the daemon listens (a stale socket file of
  // a killed predecessor refuses connections): a channel whose first
  // attempts fail backs off for seconds (gRPC's default reconnect backoff).
  Eventually([&] { return !process_->Running() || ConnectUnix(grpc_socket_).ok(); });
  grpc::ChannelArguments args;
  // A fresh connection for each daemon instance (no subchannel shared with
  // the channel to a previous, killed instance at the same path).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  channel_ = grpc::CreateCustomChannel(absl::StrCat("unix:", grpc_socket_),
                                       grpc::InsecureChannelCredentials(), args);
  stub_ = v1::DeviceService::NewStub(channel_);
  auto health = grpc::health::v1::Health::NewStub(channel_);
  const bool serving = Eventually([&] {
    if (!process_->Running()) return true;  // reported below
    // The service's own status: the daemon sets it once its setup (socket
    // permissions included) is complete.
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(v1::DeviceService::service_full_name());
    grpc::health::v1::HealthCheckResponse response;
    auto context = Context(absl::Seconds(1));
    grpc::Status st = health->Check(context.get(), request, &response);
    return st.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  });
  if (!process_->Running()) return absl::InternalError("vfio-userd exited during startup");
  if (!serving) return absl::DeadlineExceededError("vfio-userd did not become SERVING");
  return absl::OkStatus();
}

absl::StatusOr<int> Daemon::Stop(int sig) {
  if (!process_) return absl::FailedPreconditionError("not started");
  return process_->Stop(sig);
}

bool Daemon::running() { return process_ && process_->Running(); }

pid_t Daemon::pid() const { return process_ ? process_->pid() : -1; }

grpc::Status Daemon::Create(const v1::DeviceSpec& spec, v1::Device* out) {
  v1::CreateDeviceRequest request;
  *request.mutable_spec() = spec;
  v1::Device device;
  auto context = Context();
  grpc::Status st = stub_->CreateDevice(context.get(), request, &device);
  if (out != nullptr) *out = device;
  return st;
}

absl::StatusOr<v1::Device> Daemon::Get(const std::string& name) {
  v1::GetDeviceRequest request;
  request.set_name(name);
  v1::Device device;
  auto context = Context();
  grpc::Status st = stub_->GetDevice(context.get(), request, &device);
  if (!st.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  }
  return device;
}

grpc::Status Daemon::Delete(const std::string& name) {
  v1::DeleteDeviceRequest request;
  request.set_name(name);
  v1::DeleteDeviceResponse response;
  auto context = Context();
  return stub_->DeleteDevice(context.get(), request, &response);
}

absl::StatusOr<v1::Device> Daemon::WaitFor(
    const std::string& name, const std::function<bool(const v1::Device&)>& condition,
    absl::Duration timeout) {
  absl::StatusOr<v1::Device> last = absl::UnknownError("never polled");
  const bool met = Eventually(
      [&] {
        last = Get(name);
        return last.ok() && condition(*last);
      },
      timeout);
  if (met) return last;
  if (!last.ok()) return last.status();
  return absl::DeadlineExceededError(
      absl::StrCat("condition not met; last status: ", last->status().DebugString()));
}

absl::StatusOr<v1::Device> Daemon::WaitForState(const std::string& name, v1::DeviceState state,
                                                absl::Duration timeout) {
  return WaitFor(
      name, [state](const v1::Device& d) { return d.status().state() == state; }, timeout);
}

v1::DeviceSpec Idio16Spec(const std::string& name, const std::string& socket_path,
                          absl::Duration reconnect_window) {
  v1::DeviceSpec spec;
  spec.set_name(name);
  spec.mutable_idio16();
  spec.mutable_socket()->set_path(socket_path);
  spec.mutable_reconnect_window()->set_seconds(
      absl::IDivDuration(reconnect_window, absl::Seconds(1), &reconnect_window));
  spec.mutable_reconnect_window()->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(reconnect_window)));
  return spec;
}

v1::DeviceSpec DmaTestSpec(const std::string& name, const std::string& socket_path,
                           absl::Duration reconnect_window) {
  v1::DeviceSpec spec = Idio16Spec(name, socket_path, reconnect_window);
  spec.mutable_dma_test();
  return spec;
}

}  // namespace vfio_user::controlplane::testing
