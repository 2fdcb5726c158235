// Figure 6: scale -- (a) the vfio-userd daemon in dense mode (every device
// on one event loop inside the daemon): creating 1000 devices over gRPC,
// its RSS and threads with 1000 idle devices, ListDevices of 1000, and 1000
// clients attached at once; (b) the same engine as a library: 1000
// DeviceServers on one EventLoop in a process of their own.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/harness.h"
#include "client/client.h"
#include "core/log.h"
#include "grpcpp/grpcpp.h"
#include "proto/vfio_user/v1/device_service.grpc.pb.h"
#include "server/device_server.h"
#include "server/devices/idio16.h"
#include "server/event_loop.h"

namespace vfio_user {
namespace bench {
namespace {

namespace v1 = ::vfio_user::v1;

// Attaches `count` clients to `sockets` (one each) and keeps them; returns
// the wall time it took. Clients do not ask for a twin socket (one thread
// fewer each: 1000 clients are 2000 threads in this process).
absl::Duration AttachClients(const std::vector<std::string>& sockets,
                             std::vector<std::unique_ptr<Client>>* clients) {
  const absl::Time start = absl::Now();
  for (const std::string& socket : sockets) {
    ClientOptions options;
    options.socket_path = socket;
    options.offer_twin_socket = false;
    options.reconnect.enabled = false;
    clients->push_back(Check(Client::Connect(std::move(options)), "Connect"));
  }
  return absl::Now() - start;
}

std::string FormatUsage(const ProcessUsage& usage) {
  return absl::StrFormat("%.1f MiB RSS, %d threads", usage.rss_kib / 1024.0,
                         usage.threads);
}

// ---- (a) the daemon ----

std::string FindDaemon() {
  if (const char* env = std::getenv("BENCH_VFIO_USERD")) return env;
  std::error_code ec;
  for (const char* candidate :
       {"controlplane/vfio-userd", "bazel-bin/controlplane/vfio-userd"}) {
    if (std::filesystem::exists(candidate, ec)) {
      return std::filesystem::absolute(candidate, ec).string();
    }
  }
  return "";
}

class DaemonProcess {
 public:
  // Starts vfio-userd in dense mode; waits until its gRPC answers.
  static std::unique_ptr<DaemonProcess> Start(const std::string& binary,
                                              int max_devices) {
    std::unique_ptr<DaemonProcess> d(new DaemonProcess());
    const std::string base = TmpPrefix("daemon");
    d->grpc_socket_ = base + ".grpc.sock";
    d->state_dir_ = base + ".state";
    ::mkdir(d->state_dir_.c_str(), 0700);
    std::vector<std::string> args = {
        binary,
        absl::StrCat("--grpc_listen=unix:", d->grpc_socket_),
        absl::StrCat("--state_dir=", d->state_dir_),
        absl::StrCat("--runtime_dir=", base, ".run"),
        "--isolation=dense",
        "--default_devices=false",
        absl::StrCat("--max_devices=", max_devices),
        "--log_level=warn"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Its own output (start-up hints, logs) must not mix with the report.
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null",
                                       O_WRONLY, 0);
    ::posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null",
                                       O_WRONLY, 0);
    const int err = ::posix_spawn(&d->pid_, binary.c_str(), &actions, nullptr,
                                  argv.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    errno = err;
    CheckErrno(err == 0, "posix_spawn vfio-userd");
    d->channel_ = grpc::CreateChannel("unix:" + d->grpc_socket_,
                                      grpc::InsecureChannelCredentials());
    d->stub_ = v1::DeviceService::NewStub(d->channel_);
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    for (;;) {
      grpc::ClientContext context;
      v1::ListDevicesRequest request;
      v1::ListDevicesResponse response;
      if (d->stub_->ListDevices(&context, request, &response).ok()) break;
      int status = 0;
      if (::waitpid(d->pid_, &status, WNOHANG) == d->pid_) {
        d->pid_ = -1;
        Check(absl::InternalError("vfio-userd exited at start-up"),
              "daemon start");
      }
      if (absl::Now() > give_up) {
        Check(absl::DeadlineExceededError("vfio-userd did not come up"),
              "daemon start");
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return d;
  }
  ~DaemonProcess() {
    StopChild(pid_, 10000);
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
    std::filesystem::remove(grpc_socket_, ec);
  }

  pid_t pid() const { return pid_; }
  v1::DeviceService::Stub& stub() { return *stub_; }

 private:
  DaemonProcess() = default;
  pid_t pid_ = -1;
  std::string grpc_socket_;
  std::string state_dir_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DeviceService::Stub> stub_;
};

void DaemonFigures(const BenchConfig& config, const std::string& binary,
                   int devices, Report* report) {
  std::unique_ptr<DaemonProcess> daemon =
      DaemonProcess::Start(binary, devices + 16);
  const ProcessUsage empty = ReadProcessUsage(daemon->pid());

  std::vector<std::string> sockets;
  const std::string prefix = TmpPrefix("dev") + ".";
  const absl::Time start = absl::Now();
  for (int i = 0; i < devices; ++i) {
    v1::CreateDeviceRequest request;
    v1::DeviceSpec* spec = request.mutable_spec();
    spec->set_name(absl::StrCat("dev", i));
    spec->mutable_idio16();
    sockets.push_back(absl::StrCat(prefix, i, ".sock"));
    spec->mutable_socket()->set_path(sockets.back());
    grpc::ClientContext context;
    v1::Device device;
    const grpc::Status status =
        daemon->stub().CreateDevice(&context, request, &device);
    if (!status.ok()) {
      Check(absl::InternalError(status.error_message()), "CreateDevice");
    }
  }
  const absl::Duration create = absl::Now() - start;
  const ProcessUsage idle = ReadProcessUsage(daemon->pid());

  std::vector<double> list_ns;
  for (int i = 0; i < config.Iters(20); ++i) {
    v1::ListDevicesRequest request;
    request.set_page_size(1000);
    v1::ListDevicesResponse response;
    grpc::ClientContext context;
    const int64_t t0 = NowNs();
    const grpc::Status status =
        daemon->stub().ListDevices(&context, request, &response);
    list_ns.push_back(static_cast<double>(NowNs() - t0));
    if (!status.ok() || response.devices_size() != std::min(devices, 1000)) {
      Check(absl::InternalError("ListDevices"), "ListDevices");
    }
  }
  const Summary list = Summarize(list_ns);

  std::vector<std::unique_ptr<Client>> clients;
  const absl::Duration attach = AttachClients(sockets, &clients);
  const ProcessUsage attached = ReadProcessUsage(daemon->pid());
  for (std::unique_ptr<Client>& c : clients) c->Close();
  clients.clear();

  const std::string n = absl::StrCat(devices);
  report->Value(absl::StrCat("Daemon: create ", n, " devices over gRPC"),
                FormatNs(absl::ToDoubleNanoseconds(create)),
                absl::StrCat(FormatNs(absl::ToDoubleNanoseconds(create) /
                                      devices),
                             " per CreateDevice (sequential; each persists "
                             "the spec and starts the device)"));
  report->Value("Daemon: no device", FormatUsage(empty), "");
  report->Value(absl::StrCat("Daemon: ", n, " idle devices"),
                FormatUsage(idle),
                absl::StrFormat("%.1f KiB per device",
                                (idle.rss_kib - empty.rss_kib) /
                                    static_cast<double>(devices)));
  report->Value(absl::StrCat("Daemon: ListDevices of ", n, " (page of 1000)"),
                absl::StrCat(FormatNs(list.median_ns), " median, ",
                             FormatNs(list.p99_ns), " p99"),
                "");
  report->Value(absl::StrCat("Daemon: ", n, " clients attached at once"),
                FormatUsage(attached),
                absl::StrCat("attaching them all took ",
                             FormatNs(absl::ToDoubleNanoseconds(attach)), " (",
                             FormatNs(absl::ToDoubleNanoseconds(attach) /
                                      devices),
                             " per client: connect, VERSION, GET_INFO, "
                             "region and IRQ info)"));
}

// ---- (b) the library ----

// The server process: `devices` idio-16s on one loop; reports readiness on
// `ready_fd` and runs until its stdin-like `control_fd` closes.
int LibraryServerMain(int devices, const std::string& prefix, int ready_fd,
                      int control_fd) {
  SetLogLevel(LogLevel::kWarn);
  std::unique_ptr<EventLoop> loop = Check(EventLoop::Create(), "EventLoop");
  std::vector<std::unique_ptr<Idio16Device>> models;
  std::vector<std::unique_ptr<DeviceServer>> servers;
  const int64_t start = NowNs();
  for (int i = 0; i < devices; ++i) {
    models.push_back(std::make_unique<Idio16Device>(absl::StrCat("dev", i)));
    DeviceServerOptions options;
    options.socket_path = absl::StrCat(prefix, i, ".sock");
    servers.push_back(Check(
        DeviceServer::Create(loop.get(), models.back()->device(),
                             std::move(options)),
        "DeviceServer::Create"));
  }
  const int64_t created = NowNs() - start;
  loop->StartThread("scale-loop");
  WriteFull(ready_fd, &created, sizeof(created));
  char byte;
  while (::read(control_fd, &byte, 1) < 0 && errno == EINTR) {
  }
  loop->RunSync([&] { servers.clear(); });
  loop->Stop();
  loop->Join();
  return 0;
}

void LibraryFigures(int devices, Report* report) {
  int ready[2], control[2];
  CheckErrno(::pipe(ready) == 0 && ::pipe(control) == 0, "pipe");
  const std::string prefix = TmpPrefix("lib") + ".";
  // Forked before any thread of ours exists (see ForkChild).
  const pid_t pid = ForkChild([&] {
    ::close(ready[0]);
    ::close(control[1]);
    return LibraryServerMain(devices, prefix, ready[1], control[0]);
  });
  ::close(ready[1]);
  ::close(control[0]);
  int64_t created_ns = 0;
  ReadFull(ready[0], &created_ns, sizeof(created_ns));
  const ProcessUsage idle = ReadProcessUsage(pid);

  std::vector<std::string> sockets;
  for (int i = 0; i < devices; ++i) {
    sockets.push_back(absl::StrCat(prefix, i, ".sock"));
  }
  std::vector<std::unique_ptr<Client>> clients;
  const absl::Duration attach = AttachClients(sockets, &clients);
  const ProcessUsage attached = ReadProcessUsage(pid);
  const ProcessUsage client_side = ReadProcessUsage(0);
  for (std::unique_ptr<Client>& c : clients) c->Close();
  clients.clear();
  ::close(control[1]);
  WaitChild(pid);
  ::close(ready[0]);

  const std::string n = absl::StrCat(devices);
  report->Value(absl::StrCat("Library: ", n, " DeviceServers on one EventLoop"),
                FormatUsage(idle),
                absl::StrCat("created in ", FormatNs(created_ns),
                             "; idle devices cost an epoll registration and "
                             "a listening socket each, no thread"));
  report->Value(absl::StrCat("Library: ", n, " clients attached"),
                FormatUsage(attached),
                absl::StrCat("attaching took ",
                             FormatNs(absl::ToDoubleNanoseconds(attach)),
                             "; the client process: ",
                             FormatUsage(client_side)));
}

int Main(int argc, char** argv) {
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);
  const int devices = config.smoke ? 8 : 1000;
  Report report("6. Scale", "//bench:scale_bench", config);
  LibraryFigures(devices, &report);
  const std::string daemon = FindDaemon();
  if (daemon.empty()) {
    report.Note(
        "vfio-userd was not found (BENCH_VFIO_USERD or controlplane/ in the "
        "runfiles): the daemon figures are missing from this run.");
  } else {
    DaemonFigures(config, daemon, devices, &report);
  }
  report.Note(
      "No floor applies here; these are absolute costs. Dense mode runs every "
      "device on one event-loop thread in the daemon (the default isolation "
      "mode runs a worker process per device instead, ~13 MB RSS each). The "
      "clients are this benchmark's process (no twin socket: two threads "
      "each). Sockets carry 68 KiB read-ahead buffers only once a client "
      "talks.");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
