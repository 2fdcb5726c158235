// InProcessRunner: the device runs inside the daemon on the shared device
// loop (dense mode; see runner.h).
#include <fcntl.h>

#include <memory>
#include <utility>

#include "controlplane/device_host.h"
#include "controlplane/runner.h"
#include "core/errno_status.h"

namespace vfio_user::controlplane {
namespace {

class InProcessRunner : public DeviceRunner {
 public:
  InProcessRunner(const RunnerEnvironment& env, std::string name, RunnerObserver* observer)
      : env_(env), name_(std::move(name)), observer_(observer) {}

  ~InProcessRunner() override {
    Stop(absl::Now());
    *alive_ = false;
  }

  absl::Status Start(int listen_fd, const StartCommand& start) override {
    UniqueFd fd(::fcntl(listen_fd, F_DUPFD_CLOEXEC, 0));
    if (!fd) return ErrnoError(errno, "dup of the listening socket failed");
    EventLoop* supervisor = env_.supervisor;
    auto alive = alive_;
    RunnerObserver* observer = observer_;
    // Reports are produced on the device loop; the observer lives on the
    // supervisor loop.
    DeviceHost::ReportFn report = [supervisor, alive, observer](WorkerReport r) {
      supervisor->Post([alive, observer, r = std::move(r)] {
        if (*alive) DispatchReport(r, observer);
      });
    };
    absl::Status status;
    auto slot = slot_;
    EventLoop* device_loop = env_.device_loop;
    device_loop->RunSync([&] {
      auto host = DeviceHost::Start(device_loop, std::move(fd), start, report);
      if (host.ok()) {
        slot->host = std::move(*host);
      } else {
        status = host.status();
      }
    });
    if (!status.ok()) return status;
    started_ = true;
    supervisor->Post([alive, observer] {
      if (*alive) observer->OnRunnerReady();
    });
    return absl::OkStatus();
  }

  void Execute(WorkerCommand command, CommandDone done) override {
    if (!started_) {
      done(absl::UnavailableError("the device is not running"));
      return;
    }
    command.set_id(next_id_++);
    EventLoop* supervisor = env_.supervisor;
    auto alive = alive_;
    RunnerObserver* observer = observer_;
    auto slot = slot_;
    env_.device_loop->Post([=, command = std::move(command), done = std::move(done)]() {
      absl::StatusOr<DeviceSnapshot> result =
          absl::UnavailableError("the device is not running");
      if (slot->host) {
        WorkerReport reply = slot->host->Execute(command);
        absl::Status st = ResultStatus(reply.result());
        if (st.ok()) {
          result = reply.result().snapshot();
        } else {
          result = st;
        }
      }
      supervisor->Post([alive, observer, done, result] {
        if (*alive && result.ok()) observer->OnSnapshot(*result);
        done(result);
      });
    });
  }

  void RequestStop() override {}

  void Stop(absl::Time deadline) override {
    (void)deadline;
    if (!started_) return;
    started_ = false;
    auto slot = slot_;
    env_.device_loop->RunSync([slot] { slot->host.reset(); });
  }

  pid_t pid() const override { return 0; }

 private:
  // The host, touched on the device loop only (commands posted there may
  // outlive the runner).
  struct Slot {
    std::unique_ptr<DeviceHost> host;
  };

  RunnerEnvironment env_;
  std::string name_;
  RunnerObserver* observer_;
  bool started_ = false;
  uint64_t next_id_ = 1;
  std::shared_ptr<Slot> slot_ = std::make_shared<Slot>();
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<DeviceRunner> NewInProcessRunner(const RunnerEnvironment& env,
                                                 const std::string& device_name,
                                                 RunnerObserver* observer) {
  return std::make_unique<InProcessRunner>(env, device_name, observer);
}

}  // namespace vfio_user::controlplane
