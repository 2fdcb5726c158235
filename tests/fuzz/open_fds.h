// The fuzz harnesses' leak check: how many fds this process has open, and
// what they are (for the report when the count does not come back).
#ifndef VFIO_USER_TESTS_FUZZ_OPEN_FDS_H_
#define VFIO_USER_TESTS_FUZZ_OPEN_FDS_H_

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace vfio_user {
namespace fuzz {

// Open fds of this process (not counting the one used to list them), or -1.
inline int CountOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (struct dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory's own fd
}

// Prints every open fd and what it refers to on stderr.
inline void PrintOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return;
  while (struct dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    char target[256] = {};
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
    std::fprintf(stderr, "  fd %s -> %s\n", e->d_name, n > 0 ? target : "?");
  }
  ::closedir(dir);
}

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_OPEN_FDS_H_
