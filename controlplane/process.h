// Process plumbing for the daemon and its workers: spawning a child with a
// chosen set of fds, signals as an fd (signalfd) for an event loop, reaping.
//
// The daemon is multi-threaded (gRPC), so children are started with
// posix_spawn (no code runs between fork and exec in our address space) and
// receive exactly the fds they are given: everything else is closed.
#ifndef VFIO_USER_CONTROLPLANE_PROCESS_H_
#define VFIO_USER_CONTROLPLANE_PROCESS_H_

#include <sys/types.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/unique_fd.h"

namespace vfio_user::controlplane {

// `parent_fd` of this process becomes `child_fd` of the child.
struct InheritedFd {
  int parent_fd;
  int child_fd;
};

// Starts argv[0] (an absolute path) with `argv`, this process's environment,
// an empty signal mask, default dispositions for the usual signals and its
// own process group (so a terminal's Ctrl-C reaches only the daemon, which
// then stops its workers in order). The child gets the `fds` listed and no
// other descriptor. Returns its pid.
absl::StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv,
                                   const std::vector<InheritedFd>& fds);

// Blocks `signals` in the calling thread and returns a non-blocking signalfd
// for them. Call it from main() before any thread starts, so that every
// thread inherits the mask and the signals are only delivered through the fd.
absl::StatusOr<UniqueFd> BlockSignalsIntoFd(std::initializer_list<int> signals);

// Drains a signalfd; returns the signal numbers read.
std::vector<int> ReadSignals(int signal_fd);

// Reaps every exited child without blocking: (pid, wait status) pairs.
std::vector<std::pair<pid_t, int>> ReapExitedChildren();

// "exited with status 1", "killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int wait_status);

// The directory of the running executable (/proc/self/exe), or "".
std::string ExecutableDir();

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_PROCESS_H_
