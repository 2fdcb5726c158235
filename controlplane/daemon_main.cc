// vfio-userd: the vfio-user device daemon, managed over gRPC
// (vfio_user.v1.DeviceService, plus grpc.health.v1 and server reflection).
// docs/CONTROLPLANE.md is the manual; --help lists the flags.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "controlplane/daemon.pb.h"
#include "controlplane/defaults.h"
#include "controlplane/device_manager.h"
#include "controlplane/device_service.h"
#include "controlplane/process.h"
#include "controlplane/socket_path.h"
#include "controlplane/spec.h"
#include "controlplane/state_store.h"
#include "core/log.h"
#include "google/protobuf/text_format.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

ABSL_FLAG(std::string, grpc_listen, "",
          "gRPC endpoint: unix:/absolute/path (default unix:<runtime_dir>/grpc.sock), "
          "or a loopback TCP address (localhost:PORT, 127.0.0.1:PORT, [::1]:PORT). "
          "Other TCP addresses are refused: the API has no authentication.");
ABSL_FLAG(std::string, grpc_socket_mode, "0600",
          "Permissions of the gRPC unix socket (octal). Whoever can connect can manage "
          "every device.");
ABSL_FLAG(std::string, grpc_socket_group, "",
          "Group of the gRPC unix socket (name or gid), e.g. with --grpc_socket_mode=0660.");
ABSL_FLAG(std::string, runtime_dir, "",
          "Directory for the gRPC socket and the default devices' sockets. Default: "
          "/run/vfio-userd as root, else $XDG_RUNTIME_DIR/vfio-userd or /tmp/vfio-userd-<uid>.");
ABSL_FLAG(std::string, state_dir, "",
          "Where device specs are persisted. Default: /var/lib/vfio-userd as root, else "
          "$XDG_STATE_HOME/vfio-userd or ~/.local/state/vfio-userd.");
ABSL_FLAG(std::string, isolation, "process",
          "process: each device runs in its own vfio-userd-worker process (a crash or "
          "hang is contained and the device restarted); dense: all devices run on one "
          "thread inside the daemon (cheaper, no containment).");
ABSL_FLAG(std::string, worker_binary, "",
          "Path of vfio-userd-worker (default: next to this binary).");
ABSL_FLAG(bool, default_devices, true,
          "At startup, make sure the embedded default exists: an idio-16 (idio16-0) and a "
          "DMA test device (dma-test-0) with sockets in --runtime_dir. Ignored with --config.");
ABSL_FLAG(std::string, config, "",
          "A DaemonConfig file (protobuf text format, controlplane/daemon.proto) listing "
          "the devices to make sure exist at startup, instead of the embedded default.");
ABSL_FLAG(std::string, allowed_socket_dir, "",
          "If set, device sockets may only be created below this directory.");
ABSL_FLAG(int, max_devices, 64, "Most devices the daemon hosts (RESOURCE_EXHAUSTED beyond).");
ABSL_FLAG(int, max_watchers, 16, "Most concurrent WatchDevices streams.");
ABSL_FLAG(int, grpc_max_message_bytes, 64 * 1024,
          "Largest gRPC request accepted (RESOURCE_EXHAUSTED beyond).");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Milliseconds(250),
          "How often each worker reports (isolation mode).");
ABSL_FLAG(absl::Duration, heartbeat_timeout, absl::Seconds(3),
          "A worker silent for this long is considered hung, killed and restarted.");
ABSL_FLAG(absl::Duration, command_timeout, absl::Seconds(5),
          "How long ResetDevice and device actions wait for the device.");
ABSL_FLAG(absl::Duration, stop_grace, absl::Seconds(2),
          "How long a stopping worker (delete, shutdown) gets before SIGKILL.");
ABSL_FLAG(int, watch_history, 4096,
          "Events kept for resuming watches (older revisions: FAILED_PRECONDITION).");
ABSL_FLAG(std::string, log_level, "",
          "debug, info, warn or error (default: $VFIO_USER_LOG_LEVEL or info).");

namespace vfio_user::controlplane {
namespace {

namespace v1 = ::vfio_user::v1;
constexpr char kLog[] = "vfio-userd";

bool IsDaemonFlagFile(absl::string_view file) {
  return absl::StrContains(file, "controlplane/daemon_main");
}

// mkdir -p with 0700 for what it creates.
absl::Status MakeDirs(const std::string& path) {
  std::string so_far;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    absl::StrAppend(&so_far, "/", part);
    if (::mkdir(so_far.c_str(), 0700) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", so_far, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// A private directory of ours: created 0700 if missing; an existing one
// must be a real directory owned by us (the /tmp default could otherwise
// be planted by someone else).
absl::Status EnsurePrivateDir(const std::string& dir) {
  if (absl::Status st = MakeDirs(dir); !st.ok()) return st;
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is owned by uid ", st.st_uid,
                                                      ", not by us"));
  }
  return absl::OkStatus();
}

struct GrpcEndpoint {
  std::string uri;        // what gRPC binds
  std::string unix_path;  // set for unix sockets
};

absl::StatusOr<GrpcEndpoint> ParseGrpcListen(const std::string& listen) {
  GrpcEndpoint out;
  if (absl::StartsWith(listen, "unix:")) {
    std::string path = listen.substr(5);
    if (absl::StartsWith(path, "//")) path = path.substr(2);  // unix:///abs
    if (absl::Status st = CheckSocketPathSyntax(path, "", "--grpc_listen"); !st.ok()) return st;
    out.unix_path = path;
    out.uri = absl::StrCat("unix:", path);
    return out;
  }
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError("--grpc_listen: expected unix:/path or HOST:PORT");
  }
  const std::string host = listen.substr(0, colon);
  uint32_t port = 0;
  if (!absl::SimpleAtoi(listen.substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError("--grpc_listen: bad port");
  }
  const bool loopback = host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
  if (!loopback) {
    return absl::InvalidArgumentError(
        "--grpc_listen: TCP is only served on loopback (localhost, 127.0.0.1, [::1]); the API "
        "has no authentication. Use a unix socket to control access.");
  }
  out.uri = listen;
  return out;
}

std::vector<v1::DeviceSpec> EmbeddedDefaultDevices(const std::string& runtime_dir) {
  std::vector<v1::DeviceSpec> out(2);
  out[0].set_name("idio16-0");
  out[0].mutable_idio16();
  out[0].mutable_socket()->set_path(absl::StrCat(runtime_dir, "/idio16-0.sock"));
  out[1].set_name("dma-test-0");
  out[1].mutable_dma_test();
  out[1].mutable_socket()->set_path(absl::StrCat(runtime_dir, "/dma-test-0.sock"));
  return out;
}

absl::StatusOr<std::vector<v1::DeviceSpec>> ReadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --config ", path));
  std::stringstream text;
  text << in.rdbuf();
  DaemonConfig config;
  if (!google::protobuf::TextFormat::ParseFromString(text.str(), &config)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a valid DaemonConfig (protobuf text format)"));
  }
  return std::vector<v1::DeviceSpec>(config.device().begin(), config.device().end());
}

void PrintBanner(const GrpcEndpoint& endpoint, size_t devices) {
  std::string target = endpoint.unix_path.empty()
                           ? absl::StrCat(endpoint.uri)
                           : absl::StrCat("-unix ", endpoint.unix_path);
  std::string ctl = absl::StrCat("--grpc=", endpoint.uri);
  std::printf(
      "vfio-userd is serving %zu device(s); gRPC at %s\n"
      "Try (grpcurl is not packaged in Debian: see docs/CONTROLPLANE.md; vfio-userctl is "
      "the bundled alternative):\n"
      "  grpcurl -plaintext %s list\n"
      "  grpcurl -plaintext %s describe vfio_user.v1.DeviceService\n"
      "  grpcurl -plaintext %s vfio_user.v1.DeviceService/ListDevices\n"
      "  grpcurl -plaintext %s -d '{\"name\":\"idio16-0\",\"inputs\":5}' "
      "vfio_user.v1.DeviceService/SetIdio16Inputs\n"
      "  grpcurl -plaintext %s vfio_user.v1.DeviceService/WatchDevices\n"
      "  grpcurl -plaintext %s grpc.health.v1.Health/Check\n"
      "  vfio-userctl %s list\n",
      devices, endpoint.uri.c_str(), target.c_str(), target.c_str(), target.c_str(),
      target.c_str(), target.c_str(), target.c_str(), ctl.c_str());
  std::fflush(stdout);
}

int Fail(const absl::Status& status) {
  Log(LogLevel::kError, kLog, "cannot start", {{"error", status.ToString()}});
  return 1;
}

int RunDaemon() {
  // Signals are only delivered through the supervisor loop's signalfd:
  // block them before any thread exists so every thread inherits the mask.
  auto signal_fd = BlockSignalsIntoFd({SIGCHLD, SIGTERM, SIGINT, SIGHUP});
  if (!signal_fd.ok()) return Fail(signal_fd.status());
  ::signal(SIGPIPE, SIG_IGN);
  // Everything we create starts owner-only; modes are widened explicitly.
  ::umask(0077);

  if (const std::string level = absl::GetFlag(FLAGS_log_level); !level.empty()) {
    if (level == "debug") SetLogLevel(LogLevel::kDebug);
    else if (level == "info") SetLogLevel(LogLevel::kInfo);
    else if (level == "warn") SetLogLevel(LogLevel::kWarn);
    else if (level == "error") SetLogLevel(LogLevel::kError);
    else return Fail(absl::InvalidArgumentError("--log_level: debug, info, warn or error"));
  }

  ManagerOptions options;
  const std::string isolation = absl::GetFlag(FLAGS_isolation);
  if (isolation == "process") {
    options.isolation = Isolation::kProcess;
  } else if (isolation == "dense") {
    options.isolation = Isolation::kDense;
  } else {
    return Fail(absl::InvalidArgumentError("--isolation: process or dense"));
  }
  options.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  if (options.worker_binary.empty()) {
    options.worker_binary = absl::StrCat(ExecutableDir(), "/vfio-userd-worker");
  }
  if (options.isolation == Isolation::kProcess &&
      ::access(options.worker_binary.c_str(), X_OK) != 0) {
    return Fail(absl::NotFoundError(absl::StrCat(
        "worker binary ", options.worker_binary, " is not executable (--worker_binary)")));
  }
  options.spec_policy.allowed_socket_dir = absl::GetFlag(FLAGS_allowed_socket_dir);
  if (const std::string& dir = options.spec_policy.allowed_socket_dir; !dir.empty()) {
    if (absl::Status st = CheckSocketPathSyntax(dir, "", "--allowed_socket_dir"); !st.ok()) {
      return Fail(st);
    }
  }
  if (absl::GetFlag(FLAGS_max_devices) < 0 || absl::GetFlag(FLAGS_max_watchers) < 0 ||
      absl::GetFlag(FLAGS_grpc_max_message_bytes) < 1024) {
    return Fail(absl::InvalidArgumentError("limits must be positive (message size >= 1024)"));
  }
  options.max_devices = static_cast<size_t>(absl::GetFlag(FLAGS_max_devices));
  options.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  options.heartbeat_timeout = absl::GetFlag(FLAGS_heartbeat_timeout);
  options.command_timeout = absl::GetFlag(FLAGS_command_timeout);
  options.stop_grace = absl::GetFlag(FLAGS_stop_grace);
  if (absl::GetFlag(FLAGS_watch_history) < 1) {
    return Fail(absl::InvalidArgumentError("--watch_history must be at least 1"));
  }
  options.watch_history = static_cast<size_t>(absl::GetFlag(FLAGS_watch_history));
  if (options.heartbeat_interval <= absl::ZeroDuration() ||
      options.heartbeat_timeout <= options.heartbeat_interval) {
    return Fail(absl::InvalidArgumentError(
        "--heartbeat_timeout must be longer than --heartbeat_interval (> 0)"));
  }

  std::string runtime_dir = absl::GetFlag(FLAGS_runtime_dir);
  if (runtime_dir.empty()) runtime_dir = DefaultRuntimeDir();
  std::string state_dir = absl::GetFlag(FLAGS_state_dir);
  if (state_dir.empty()) state_dir = DefaultStateDir(runtime_dir);
  std::string listen = absl::GetFlag(FLAGS_grpc_listen);
  if (listen.empty()) listen = DefaultGrpcListen(runtime_dir);
  auto endpoint = ParseGrpcListen(listen);
  if (!endpoint.ok()) return Fail(endpoint.status());
  auto grpc_mode = ParseSocketMode(absl::GetFlag(FLAGS_grpc_socket_mode), "--grpc_socket_mode");
  if (!grpc_mode.ok()) return Fail(grpc_mode.status());
  v1::SocketSpec grpc_socket_owner;
  grpc_socket_owner.set_group(absl::GetFlag(FLAGS_grpc_socket_group));
  auto grpc_ownership = ResolveSocketOwnership(grpc_socket_owner);
  if (!grpc_ownership.ok()) return Fail(grpc_ownership.status());

  std::vector<v1::DeviceSpec> wanted;
  if (const std::string config = absl::GetFlag(FLAGS_config); !config.empty()) {
    auto specs = ReadConfig(config);
    if (!specs.ok()) return Fail(specs.status());
    wanted = std::move(*specs);
  } else if (absl::GetFlag(FLAGS_default_devices)) {
    if (absl::Status st = EnsurePrivateDir(runtime_dir); !st.ok()) return Fail(st);
    wanted = EmbeddedDefaultDevices(runtime_dir);
  }
  if (!endpoint->unix_path.empty() &&
      absl::StartsWith(endpoint->unix_path, absl::StrCat(runtime_dir, "/"))) {
    if (absl::Status st = EnsurePrivateDir(runtime_dir); !st.ok()) return Fail(st);
  }
  // Refuse early if another server holds the gRPC socket (gRPC itself would
  // unlink it).
  if (!endpoint->unix_path.empty()) {
    if (absl::Status st = PrepareSocketPath(endpoint->unix_path, "--grpc_listen"); !st.ok()) {
      return Fail(st);
    }
  }
  if (absl::Status st = MakeDirs(state_dir); !st.ok()) return Fail(st);
  auto store = StateStore::Open(state_dir);
  if (!store.ok()) return Fail(store.status());

  absl::Notification terminate;
  std::atomic<int> terminate_signal{0};
  auto manager = DeviceManager::Start(
      options, std::move(*store), std::move(*signal_fd), [&](int sig) {
        if (terminate_signal.exchange(sig) == 0) terminate.Notify();
      });
  if (!manager.ok()) return Fail(manager.status());
  DeviceManager* m = manager->get();

  const size_t recreated = m->RecreatePersisted();
  for (const v1::DeviceSpec& spec : wanted) {
    bool created = false;
    auto device = m->Create(spec, &created);
    if (!device.ok()) {
      Log(LogLevel::kWarn, kLog, "configured device not created",
          {{"device", spec.name()}, {"error", device.status().ToString()}});
    }
  }

  // gRPC.
  DeviceServiceImpl service(m, absl::GetFlag(FLAGS_max_watchers));
  // grpc++'s built-in health service carries no protobuf descriptors; using
  // the compiled health.proto here links them in, so that reflection can
  // describe grpc.health.v1.Health (grpcurl needs that to call it).
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(endpoint->uri, grpc::InsecureServerCredentials(), &bound_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_grpc_max_message_bytes));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (endpoint->unix_path.empty() && bound_port == 0)) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", endpoint->uri)));
  }
  if (!endpoint->unix_path.empty()) {
    const std::string& path = endpoint->unix_path;
    if (grpc_ownership->gid.has_value() && ::lchown(path.c_str(), -1, *grpc_ownership->gid) != 0) {
      return Fail(absl::FailedPreconditionError(
          absl::StrCat("cannot chgrp ", path, ": ", std::strerror(errno))));
    }
    if (::chmod(path.c_str(), *grpc_mode) != 0) {
      return Fail(absl::FailedPreconditionError(
          absl::StrCat("cannot chmod ", path, ": ", std::strerror(errno))));
    }
  }
  // Ready: the service's own health status says so only now (its socket
  // has its final permissions).
  server->GetHealthCheckService()->SetServingStatus(
      v1::DeviceService::service_full_name(), true);
  const size_t devices = m->device_count();
  Log(LogLevel::kInfo, kLog, "serving",
      {{"grpc", endpoint->uri}, {"port", absl::StrCat(bound_port)},
       {"devices", absl::StrCat(devices)}, {"recreated", absl::StrCat(recreated)},
       {"state_dir", state_dir}, {"isolation", isolation},
       {"pid", absl::StrCat(::getpid())}});
  PrintBanner(*endpoint, devices);

  terminate.WaitForNotification();
  Log(LogLevel::kInfo, kLog, "shutting down",
      {{"signal", absl::StrCat(terminate_signal.load())}});
  server->GetHealthCheckService()->SetServingStatus(false);
  m->events().Shutdown();  // watchers return at once
  // In-flight calls get a moment to finish. (grpc++ 1.51 also waits out the
  // whole deadline while a client merely holds an idle connection, so keep
  // it short.)
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
  server->Wait();
  m->Shutdown();
  if (!endpoint->unix_path.empty()) ::unlink(endpoint->unix_path.c_str());
  Log(LogLevel::kInfo, kLog, "stopped", {});
  return 0;
}

}  // namespace
}  // namespace vfio_user::controlplane

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = vfio_user::controlplane::IsDaemonFlagFile;
  usage.contains_helpshort_flags = vfio_user::controlplane::IsDaemonFlagFile;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "hosts vfio-user devices and manages them over gRPC.\n"
      "  vfio-userd [flags]        (docs/CONTROLPLANE.md)\n"
      "With no flags it serves the embedded default (an idio-16 and a DMA test device) "
      "and prints grpcurl lines to try.");
  absl::ParseCommandLine(argc, argv);
  return vfio_user::controlplane::RunDaemon();
}
