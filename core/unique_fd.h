// UniqueFd: sole owner of one file descriptor; closes it on destruction.
//
// Every fd that crosses the vfio-user socket (guest-RAM memfds, eventfds,
// region fds, the twin socket) is held in a UniqueFd from the moment it is
// received, so an early return on a malformed message can never leak it.
// Not thread-safe; move-only.
#ifndef VFIO_USER_CORE_UNIQUE_FD_H_
#define VFIO_USER_CORE_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace vfio_user {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives up ownership without closing; returns the fd (or -1).
  int Release() { return std::exchange(fd_, -1); }

  // Closes the owned fd (if any) and takes ownership of `fd`.
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_UNIQUE_FD_H_
