// vfio-userd-worker: runs one device's emulation for vfio-userd, isolated in
// its own process. Started by the daemon only (controlplane/worker_runner.h):
// it inherits the device's listening socket as fd 3 and the control channel
// (controlplane/worker.proto, framed by controlplane/framed_channel.h) as
// fd 4, receives its StartCommand, serves the device until the daemon closes
// the channel or sends SIGTERM, and dies with the daemon (PR_SET_PDEATHSIG).
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "controlplane/device_host.h"
#include "controlplane/framed_channel.h"
#include "controlplane/process.h"
#include "controlplane/worker.pb.h"
#include "core/log.h"
#include "server/event_loop.h"

ABSL_FLAG(int, listen_fd, 3, "Inherited listening socket of the device.");
ABSL_FLAG(int, control_fd, 4, "Inherited control channel to the daemon.");
ABSL_FLAG(int, daemon_pid, 0,
          "The daemon's pid; the worker exits at once if its parent is not that "
          "process (the daemon died before the worker started).");
ABSL_FLAG(std::string, device, "", "Device name (informational; shows in ps).");

namespace vfio_user::controlplane {
namespace {

// How long the worker waits for its StartCommand, and for the daemon to take
// a report.
constexpr absl::Duration kStartTimeout = absl::Seconds(10);
constexpr absl::Duration kSendTimeout = absl::Seconds(5);

int RunWorker() {
  // Die with the daemon, even if it is SIGKILLed. (The signal is tied to the
  // daemon thread that spawned us; the daemon spawns from its long-lived
  // supervisor thread.)
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  const int daemon_pid = absl::GetFlag(FLAGS_daemon_pid);
  if (daemon_pid != 0 && ::getppid() != daemon_pid) return 1;
  ::signal(SIGPIPE, SIG_IGN);
  const std::string name = absl::GetFlag(FLAGS_device);

  auto signal_fd = BlockSignalsIntoFd({SIGTERM, SIGINT});
  if (!signal_fd.ok()) {
    Log(LogLevel::kError, "worker", "signal setup failed",
        {{"device", name}, {"error", signal_fd.status().ToString()}});
    return 2;
  }
  FramedChannel channel{UniqueFd(absl::GetFlag(FLAGS_control_fd))};
  UniqueFd listen_fd(absl::GetFlag(FLAGS_listen_fd));

  auto frame = channel.ReadFrame(kStartTimeout);
  WorkerCommand start;
  if (!frame.ok() || !start.ParseFromString(*frame) || !start.has_start()) {
    Log(LogLevel::kError, "worker", "no start command from the daemon",
        {{"device", name},
         {"error", frame.ok() ? "malformed command" : frame.status().ToString()}});
    return 2;
  }

  auto loop = EventLoop::Create();
  if (!loop.ok()) return 2;
  EventLoop* const l = loop->get();
  auto report = [&channel, l, &name](WorkerReport r) {
    absl::Status st = channel.Send(r, kSendTimeout);
    if (!st.ok()) {
      Log(LogLevel::kError, "worker", "lost the daemon", {{"device", name}, {"error", st.ToString()}});
      l->Stop();
    }
  };

  auto host = DeviceHost::Start(l, std::move(listen_fd), start.start(), report);
  WorkerReport started;
  started.set_reply_to(start.id());
  SetResult(host.ok() ? absl::OkStatus() : host.status(), started.mutable_result());
  report(started);
  if (!host.ok()) {
    Log(LogLevel::kError, "worker", "cannot serve the device",
        {{"device", name}, {"error", host.status().ToString()}});
    return 2;
  }

  absl::Status watched = l->WatchFd(channel.fd(), EPOLLIN, [&](uint32_t) {
    std::vector<std::string> frames;
    absl::Status st = channel.ReadAvailable(&frames);
    for (const std::string& f : frames) {
      WorkerCommand command;
      if (!command.ParseFromString(f)) {
        st = absl::DataLossError("malformed command");
        break;
      }
      report((*host)->Execute(command));
    }
    if (!st.ok()) {
      // EOF: the daemon stopped us (or died). Either way, we are done.
      Log(LogLevel::kInfo, "worker", "control channel closed",
          {{"device", name}, {"reason", st.ToString()}});
      l->UnwatchFd(channel.fd());
      l->Stop();
    }
  });
  if (!watched.ok()) return 2;
  const int sfd = signal_fd->get();
  watched = l->WatchFd(sfd, EPOLLIN, [&, sfd](uint32_t) {
    for (int sig : ReadSignals(sfd)) {
      Log(LogLevel::kInfo, "worker", "stopping", {{"device", name}, {"signal", absl::StrCat(sig)}});
      l->Stop();
    }
  });
  if (!watched.ok()) return 2;

  Log(LogLevel::kInfo, "worker", "serving", {{"device", name}, {"pid", absl::StrCat(::getpid())}});
  l->Run();
  l->UnwatchFd(channel.fd());
  l->UnwatchFd(sfd);
  host->reset();  // the loop is stopped: safe to tear down here
  return 0;
}

}  // namespace
}  // namespace vfio_user::controlplane

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs one vfio-user device for vfio-userd. Started by the daemon, not by hand.");
  absl::ParseCommandLine(argc, argv);
  return vfio_user::controlplane::RunWorker();
}
