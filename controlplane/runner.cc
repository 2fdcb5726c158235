#include "controlplane/runner.h"

#include "controlplane/process.h"

namespace vfio_user::controlplane {

void ChildRegistry::ReapAndDispatch() {
  for (const auto& [pid, status] : ReapExitedChildren()) {
    auto it = children_.find(pid);
    if (it == children_.end()) continue;  // not ours any more (stopped)
    ExitFn fn = std::move(it->second);
    children_.erase(it);
    fn(status);
  }
}

void DispatchReport(const WorkerReport& report, RunnerObserver* observer) {
  switch (report.report_case()) {
    case WorkerReport::kClientAttached: {
      const auto& p = report.client_attached();
      observer->OnClientAttached(PeerCredentials{p.pid(), p.uid(), p.gid()});
      break;
    }
    case WorkerReport::kClientDetached:
      observer->OnClientDetached(report.client_detached());
      break;
    case WorkerReport::kClientRefused: {
      const auto& p = report.client_refused();
      observer->OnClientRefused(PeerCredentials{p.pid(), p.uid(), p.gid()});
      break;
    }
    case WorkerReport::kHeartbeat:
      observer->OnSnapshot(report.heartbeat());
      break;
    case WorkerReport::kResult:  // replies are matched by the runner
    case WorkerReport::REPORT_NOT_SET:
      break;
  }
}

}  // namespace vfio_user::controlplane
