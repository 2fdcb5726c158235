// Subprocess: starts a program of this repository as a real child process
// for multi-process tests, and stops it (SIGTERM, SIGKILL) on demand.
#ifndef VFIO_USER_TESTS_INTEGRATION_SUBPROCESS_H_
#define VFIO_USER_TESTS_INTEGRATION_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace vfio_user::testing {

// Path of a binary built by Bazel and listed in the test's `data`, given its
// workspace-relative path (e.g. "server/devices/vfio-user-sample-server").
std::string RunfilePath(const std::string& workspace_relative);

// A socket path short enough for sun_path (/tmp/<tag>.<pid>.<random>.sock).
// Sandboxed tests all see themselves as the same pid, so the random part
// keeps concurrent test processes apart.
std::string UniqueSocketPath(const std::string& tag);

class Subprocess {
 public:
  // Starts `argv[0]` with `argv`; stdout/stderr go to the test log.
  static absl::StatusOr<Subprocess> Start(std::vector<std::string> argv);
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&& other) noexcept;
  ~Subprocess();  // SIGKILLs and reaps a still-running child

  pid_t pid() const { return pid_; }
  // Sends `sig`; then waits up to `timeout` for the exit. Returns the wait
  // status (as waitpid reports it).
  absl::StatusOr<int> Stop(int sig, absl::Duration timeout = absl::Seconds(10));
  bool Running();

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

}  // namespace vfio_user::testing

#endif  // VFIO_USER_TESTS_INTEGRATION_SUBPROCESS_H_
