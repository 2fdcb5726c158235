// vfio-user-sample-server: serves the sample devices, each on its own
// socket, from one process and one event loop (until the gRPC daemon hosts
// them).
//
//   vfio-user-sample-server [--idio16_socket=PATH] [--dma_socket=PATH]
//                           [--idio16_inputs=0xNNNN] [--idio16_toggle_line=N]
//                           [--log_level=debug|info|warn|error]
//
// An empty socket path disables that device. The sockets' directories are
// created if missing (mode 0755); a stale socket file left by a crashed run
// is replaced.
//
// Signals:
//   SIGTERM, SIGINT  clean shutdown: clients are disconnected, the sockets
//                    removed, the DMA engine's worker joined.
//   SIGUSR1          toggles IDIO-16 input line --idio16_toggle_line; with
//                    IRQs enabled by the guest this raises INTx, so a guest
//                    can watch an input change (e.g. with gpiomon).
//   SIGUSR2          logs the IDIO-16 input and output lines.
// The guest's output changes are logged as they happen.
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/unique_fd.h"
#include "server/device_server.h"
#include "server/devices/dma_engine_device.h"
#include "server/devices/idio16.h"
#include "server/event_loop.h"

ABSL_FLAG(std::string, idio16_socket, "/tmp/vfio-user/idio16.sock",
          "Socket serving the ACCES PCI-IDIO-16 (empty: do not serve it)");
ABSL_FLAG(std::string, dma_socket, "/tmp/vfio-user/dma.sock",
          "Socket serving the DMA test device (empty: do not serve it)");
ABSL_FLAG(std::string, idio16_inputs, "0x0000",
          "Initial level of the IDIO-16's 16 input lines (bit n = line n)");
ABSL_FLAG(int, idio16_toggle_line, 0, "IDIO-16 input line SIGUSR1 toggles (0-15)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");

namespace vfio_user {
namespace {

absl::Status ParseLogLevel(const std::string& name, LogLevel* level) {
  if (name == "debug") {
    *level = LogLevel::kDebug;
  } else if (name == "info") {
    *level = LogLevel::kInfo;
  } else if (name == "warn") {
    *level = LogLevel::kWarn;
  } else if (name == "error") {
    *level = LogLevel::kError;
  } else {
    return ErrnoError(EINVAL, absl::StrCat("unknown log level '", name, "'"));
  }
  return absl::OkStatus();
}

absl::Status ParseInputs(const std::string& text, uint16_t* lines) {
  char* end = nullptr;
  errno = 0;
  const unsigned long value = std::strtoul(text.c_str(), &end, 0);
  if (text.empty() || errno != 0 || *end != '\0' || value > 0xffff) {
    return ErrnoError(EINVAL, absl::StrCat("--idio16_inputs: '", text,
                                           "' is not a 16-bit value"));
  }
  *lines = static_cast<uint16_t>(value);
  return absl::OkStatus();
}

// mkdir -p of the directory holding `path`.
absl::Status MakeParentDirectories(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoError(errno, absl::StrCat("mkdir ", dir));
    }
  }
  return absl::OkStatus();
}

std::string Hex16(uint16_t v) { return absl::StrFormat("0x%04x", v); }

// Everything the process serves, torn down in reverse order.
class SampleServer {
 public:
  absl::Status Start() {
    LogLevel level;
    if (absl::Status st = ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level); !st.ok()) {
      return st;
    }
    SetLogLevel(level);
    uint16_t inputs = 0;
    if (absl::Status st = ParseInputs(absl::GetFlag(FLAGS_idio16_inputs), &inputs);
        !st.ok()) {
      return st;
    }
    toggle_line_ = absl::GetFlag(FLAGS_idio16_toggle_line);
    if (toggle_line_ < 0 || toggle_line_ > 15) {
      return ErrnoError(EINVAL, "--idio16_toggle_line must be 0..15");
    }
    const std::string idio16_socket = absl::GetFlag(FLAGS_idio16_socket);
    const std::string dma_socket = absl::GetFlag(FLAGS_dma_socket);
    if (idio16_socket.empty() && dma_socket.empty()) {
      return ErrnoError(EINVAL, "nothing to serve: both socket paths are empty");
    }

    // Signals are delivered through a signalfd on the loop; block them in
    // every thread (threads created later inherit the mask).
    sigset_t signals;
    sigemptyset(&signals);
    for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) sigaddset(&signals, sig);
    if (::pthread_sigmask(SIG_BLOCK, &signals, nullptr) != 0) {
      return ErrnoError(EINVAL, "pthread_sigmask failed");
    }
    ::signal(SIGPIPE, SIG_IGN);
    signal_fd_ = UniqueFd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!signal_fd_) return ErrnoError(errno, "signalfd failed");

    auto loop = EventLoop::Create();
    if (!loop.ok()) return loop.status();
    loop_ = std::move(*loop);
    absl::Status watched = loop_->WatchFd(signal_fd_.get(), EPOLLIN,
                                          [this](uint32_t) { OnSignal(); });
    if (!watched.ok()) return watched;

    if (!idio16_socket.empty()) {
      idio16_ = std::make_unique<Idio16Device>("idio16");
      idio16_->SetInputs(inputs);  // not served yet: applied now
      idio16_->SetOutputCallback([](uint16_t outputs) {
        Log(LogLevel::kInfo, "idio16", "outputs changed", {{"outputs", Hex16(outputs)}});
      });
      auto server = Serve(idio16_->device(), idio16_socket);
      if (!server.ok()) return server.status();
      idio16_server_ = std::move(*server);
    }
    if (!dma_socket.empty()) {
      dma_ = std::make_unique<DmaTestDevice>("dma-test");
      auto server = Serve(dma_->device(), dma_socket);
      if (!server.ok()) return server.status();
      dma_server_ = std::move(*server);
    }
    return absl::OkStatus();
  }

  // Serves until SIGTERM/SIGINT.
  void Run() { loop_->Run(); }

  // The loop has stopped: servers go first (they disconnect their clients
  // and remove the sockets), then the devices they serve.
  ~SampleServer() {
    idio16_server_.reset();
    dma_server_.reset();
    dma_.reset();
    idio16_.reset();
    if (loop_ && signal_fd_) loop_->UnwatchFd(signal_fd_.get());
  }

 private:
  absl::StatusOr<std::unique_ptr<DeviceServer>> Serve(Device* device,
                                                      const std::string& path) {
    if (absl::Status st = MakeParentDirectories(path); !st.ok()) return st;
    DeviceServerOptions options;
    options.socket_path = path;
    return DeviceServer::Create(loop_.get(), device, std::move(options));
  }

  void OnSignal() {
    struct signalfd_siginfo info;
    while (::read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
      switch (info.ssi_signo) {
        case SIGTERM:
        case SIGINT:
          Log(LogLevel::kInfo, "sample-server", "shutting down",
              {{"signal", strsignal(static_cast<int>(info.ssi_signo))}});
          loop_->Stop();
          break;
        case SIGUSR1:
          if (idio16_) {
            const bool level = !(idio16_->inputs() & (1u << toggle_line_));
            idio16_->SetInputLine(static_cast<unsigned>(toggle_line_), level);
            Log(LogLevel::kInfo, "idio16", "input line toggled",
                {{"line", absl::StrCat(toggle_line_)}, {"level", level ? "1" : "0"}});
          }
          break;
        case SIGUSR2:
          if (idio16_) {
            Log(LogLevel::kInfo, "idio16", "lines",
                {{"inputs", Hex16(idio16_->inputs())},
                 {"outputs", Hex16(idio16_->outputs())}});
          }
          break;
        default:
          break;
      }
    }
  }

  UniqueFd signal_fd_;
  std::unique_ptr<EventLoop> loop_;
  int toggle_line_ = 0;
  std::unique_ptr<Idio16Device> idio16_;
  std::unique_ptr<DmaTestDevice> dma_;
  std::unique_ptr<DeviceServer> idio16_server_;
  std::unique_ptr<DeviceServer> dma_server_;
};

}  // namespace
}  // namespace vfio_user

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves the sample vfio-user devices (ACCES PCI-IDIO-16, DMA test device).\n"
      "SIGUSR1 toggles an IDIO-16 input line, SIGUSR2 logs the lines, "
      "SIGTERM/SIGINT shut down.");
  absl::ParseCommandLine(argc, argv);
  vfio_user::SampleServer server;
  if (absl::Status st = server.Start(); !st.ok()) {
    std::fprintf(stderr, "vfio-user-sample-server: %s\n", st.ToString().c_str());
    return 1;
  }
  server.Run();
  return 0;
}
