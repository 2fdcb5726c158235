// WorkerRunner: one vfio-userd-worker process per device (see runner.h).
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "controlplane/device_host.h"
#include "controlplane/framed_channel.h"
#include "controlplane/process.h"
#include "controlplane/runner.h"
#include "core/log.h"
#include "core/transport.h"

namespace vfio_user::controlplane {
namespace {

// Fds the worker finds its listening socket and control channel at.
constexpr int kWorkerListenFd = 3;
constexpr int kWorkerControlFd = 4;

class WorkerRunner : public DeviceRunner {
 public:
  WorkerRunner(const RunnerEnvironment& env, std::string name, RunnerObserver* observer)
      : env_(env), name_(std::move(name)), observer_(observer) {}

  ~WorkerRunner() override {
    if (pid_ > 0 && !exited_) Stop(absl::Now());
    *alive_ = false;
  }

  absl::Status Start(int listen_fd, const StartCommand& start) override {
    auto pair = MakeSocketPair();
    if (!pair.ok()) return pair.status();
    std::vector<std::string> argv = {
        env_.worker_binary,
        absl::StrCat("--listen_fd=", kWorkerListenFd),
        absl::StrCat("--control_fd=", kWorkerControlFd),
        absl::StrCat("--daemon_pid=", ::getpid()),
        absl::StrCat("--device=", name_),
    };
    auto pid = SpawnProcess(argv, {{listen_fd, kWorkerListenFd},
                                   {pair->second.get(), kWorkerControlFd}});
    if (!pid.ok()) return pid.status();
    pid_ = *pid;
    pair->second.Reset();  // the worker's end lives in the worker only
    channel_ = std::make_unique<FramedChannel>(std::move(pair->first));

    auto alive = alive_;
    env_.children->Add(pid_, [this, alive](int wait_status) {
      if (*alive) OnExit(wait_status);
    });
    absl::Status watched = env_.supervisor->WatchFd(
        channel_->fd(), EPOLLIN, [this, alive](uint32_t) {
          if (*alive) OnReadable();
        });
    if (!watched.ok()) {
      Stop(absl::Now());
      return watched;
    }
    channel_watched_ = true;
    last_heard_ = absl::Now();
    ScheduleWatchdog();

    WorkerCommand command;
    *command.mutable_start() = start;
    Send(std::move(command), [this, alive](absl::StatusOr<DeviceSnapshot> result) {
      if (!*alive || exited_) return;
      if (result.ok()) {
        ready_ = true;
        observer_->OnRunnerReady();
      } else {
        Kill(absl::StrCat("could not start the device: ", result.status().message()));
      }
    });
    Log(LogLevel::kInfo, "vfio-userd", "worker started",
        {{"device", name_}, {"pid", absl::StrCat(pid_)}});
    return absl::OkStatus();
  }

  void Execute(WorkerCommand command, CommandDone done) override {
    if (exited_ || !ready_) {
      done(absl::UnavailableError("the device's worker is not running"));
      return;
    }
    Send(std::move(command), std::move(done));
  }

  void RequestStop() override {
    if (pid_ <= 0 || exited_ || stop_requested_) return;
    stop_requested_ = true;
    ::kill(pid_, SIGTERM);
  }

  void Stop(absl::Time deadline) override {
    if (pid_ <= 0 || exited_) return;
    RequestStop();
    int status = 0;
    bool reaped = false;
    while (absl::Now() < deadline) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno == ECHILD)) {
        reaped = true;
        break;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    if (!reaped) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
    env_.children->Remove(pid_);
    Finish();
  }

  pid_t pid() const override { return exited_ ? 0 : pid_; }

 private:
  void Send(WorkerCommand command, CommandDone done) {
    const uint64_t id = next_id_++;
    command.set_id(id);
    pending_[id] = std::move(done);
    // Never wait on the supervisor loop: a worker that does not read its
    // commands is broken.
    absl::Status st = channel_->Send(command, absl::ZeroDuration());
    if (!st.ok()) BreakChannel(st);
  }

  void OnReadable() {
    std::vector<std::string> frames;
    absl::Status st = channel_->ReadAvailable(&frames);
    if (!frames.empty()) last_heard_ = absl::Now();
    for (const std::string& frame : frames) {
      WorkerReport report;
      if (!report.ParseFromString(frame)) {
        st = absl::DataLossError("malformed report from the worker");
        break;
      }
      if (report.reply_to() != 0) {
        HandleReply(report);
      } else {
        DispatchReport(report, observer_);
      }
      if (exited_) return;
    }
    if (!st.ok()) BreakChannel(st);
  }

  void HandleReply(const WorkerReport& report) {
    auto it = pending_.find(report.reply_to());
    if (it == pending_.end()) return;
    CommandDone done = std::move(it->second);
    pending_.erase(it);
    absl::Status status = ResultStatus(report.result());
    if (status.ok() && report.result().has_snapshot()) {
      observer_->OnSnapshot(report.result().snapshot());
    }
    if (status.ok()) {
      done(report.result().snapshot());
    } else {
      done(status);
    }
  }

  void BreakChannel(const absl::Status& why) {
    if (channel_watched_) {
      env_.supervisor->UnwatchFd(channel_->fd());
      channel_watched_ = false;
    }
    Kill(IsPeerClosedStatus(why) ? "the worker closed its control channel"
                                 : absl::StrCat("control channel failed: ", why.message()));
  }

  static bool IsPeerClosedStatus(const absl::Status& st) {
    return absl::IsUnavailable(st) && st.message() == "peer closed";
  }

  // SIGKILLs the worker; OnExit (from SIGCHLD) then reports `why`.
  void Kill(const std::string& why) {
    if (exit_note_.empty()) exit_note_ = why;
    if (pid_ > 0 && !exited_) ::kill(pid_, SIGKILL);
  }

  void ScheduleWatchdog() {
    auto alive = alive_;
    watchdog_ = env_.supervisor->RunAfter(env_.heartbeat_interval, [this, alive] {
      if (!*alive || exited_) return;
      const absl::Duration silent = absl::Now() - last_heard_;
      if (silent > env_.heartbeat_timeout) {
        Log(LogLevel::kWarn, "vfio-userd", "worker hung; killing it",
            {{"device", name_}, {"pid", absl::StrCat(pid_)},
             {"silent", absl::FormatDuration(silent)}});
        Kill(absl::StrCat("worker hung (no heartbeat for ",
                          absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(1))),
                          "); killed"));
        return;
      }
      ScheduleWatchdog();
    });
  }

  void OnExit(int wait_status) {
    const std::string how = DescribeWaitStatus(wait_status);
    Finish();
    const std::string why =
        exit_note_.empty() ? absl::StrCat("worker ", how)
                           : absl::StrCat(exit_note_, " (worker ", how, ")");
    Log(LogLevel::kWarn, "vfio-userd", "worker exited",
        {{"device", name_}, {"pid", absl::StrCat(pid_)}, {"reason", why}});
    observer_->OnRunnerExited(absl::UnavailableError(why));  // may destroy us
  }

  // Releases everything tied to the running process and fails the commands
  // still waiting for it.
  void Finish() {
    exited_ = true;
    env_.supervisor->CancelTimer(watchdog_);
    if (channel_ && channel_watched_) {
      env_.supervisor->UnwatchFd(channel_->fd());
      channel_watched_ = false;
    }
    channel_.reset();
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [id, done] : pending) {
      done(absl::UnavailableError("the device's worker exited"));
    }
  }

  RunnerEnvironment env_;
  std::string name_;
  RunnerObserver* observer_;
  pid_t pid_ = 0;
  std::unique_ptr<FramedChannel> channel_;
  bool channel_watched_ = false;
  bool ready_ = false;
  bool exited_ = false;
  bool stop_requested_ = false;
  std::string exit_note_;
  absl::Time last_heard_;
  EventLoop::TimerId watchdog_ = 0;
  uint64_t next_id_ = 1;
  absl::flat_hash_map<uint64_t, CommandDone> pending_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<DeviceRunner> NewWorkerRunner(const RunnerEnvironment& env,
                                              const std::string& device_name,
                                              RunnerObserver* observer) {
  return std::make_unique<WorkerRunner>(env, device_name, observer);
}

}  // namespace vfio_user::controlplane
