#include "controlplane/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

extern char** environ;

namespace vfio_user::controlplane {

absl::StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv,
                                   const std::vector<InheritedFd>& fds) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
    return absl::InvalidArgumentError("SpawnProcess needs an absolute program path");
  }
  // Move the fds out of the way first, so that no dup2 below overwrites a
  // source another one still needs (e.g. parent fd 4 -> child 3 while parent
  // fd 3 -> child 4).
  int max_child_fd = 2;
  std::vector<UniqueFd> staged;
  for (const InheritedFd& f : fds) {
    UniqueFd high(::fcntl(f.parent_fd, F_DUPFD_CLOEXEC, 64));
    if (!high) return ErrnoError(errno, "dup of an fd for the child failed");
    staged.push_back(std::move(high));
    max_child_fd = std::max(max_child_fd, f.child_fd);
  }

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  if (int err = posix_spawn_file_actions_init(&actions); err != 0) {
    return ErrnoError(err, "posix_spawn_file_actions_init");
  }
  absl::Cleanup free_actions = [&] { posix_spawn_file_actions_destroy(&actions); };
  if (int err = posix_spawnattr_init(&attr); err != 0) {
    return ErrnoError(err, "posix_spawnattr_init");
  }
  absl::Cleanup free_attr = [&] { posix_spawnattr_destroy(&attr); };

  for (size_t i = 0; i < fds.size(); ++i) {
    if (int err = posix_spawn_file_actions_adddup2(&actions, staged[i].get(),
                                                   fds[i].child_fd);
        err != 0) {
      return ErrnoError(err, "posix_spawn_file_actions_adddup2");
    }
  }
  if (int err = posix_spawn_file_actions_addclosefrom_np(&actions, max_child_fd + 1);
      err != 0) {
    return ErrnoError(err, "posix_spawn_file_actions_addclosefrom_np");
  }

  sigset_t empty;
  sigemptyset(&empty);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) {
    sigaddset(&defaults, sig);
  }
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);

  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (int err = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, args.data(), environ);
      err != 0) {
    return ErrnoError(err, absl::StrCat("cannot start ", argv[0]));
  }
  return pid;
}

absl::StatusOr<UniqueFd> BlockSignalsIntoFd(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : signals) sigaddset(&set, sig);
  if (int err = pthread_sigmask(SIG_BLOCK, &set, nullptr); err != 0) {
    return ErrnoError(err, "pthread_sigmask");
  }
  UniqueFd fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!fd) return ErrnoError(errno, "signalfd");
  return fd;
}

std::vector<int> ReadSignals(int signal_fd) {
  std::vector<int> out;
  for (;;) {
    struct signalfd_siginfo info;
    const ssize_t n = ::read(signal_fd, &info, sizeof(info));
    if (n == static_cast<ssize_t>(sizeof(info))) {
      out.push_back(static_cast<int>(info.ssi_signo));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;  // EAGAIN: drained
  }
  return out;
}

std::vector<std::pair<pid_t, int>> ReapExitedChildren() {
  std::vector<std::pair<pid_t, int>> out;
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      out.emplace_back(pid, status);
      continue;
    }
    if (pid < 0 && errno == EINTR) continue;
    break;  // 0: none exited; ECHILD: no children
  }
  return out;
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) {
    return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  }
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = ::strsignal(sig);
    return absl::StrCat("killed by signal ", sig, name ? absl::StrCat(" (", name, ")") : "",
                        WCOREDUMP(wait_status) ? ", core dumped" : "");
  }
  return absl::StrCat("wait status ", wait_status);
}

std::string ExecutableDir() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

}  // namespace vfio_user::controlplane
