// SocketWatch: wakes a reconnecting client as soon as a restarted server
// creates its socket again, instead of at the client's next backoff.
//
// It watches the socket's directory with inotify for the socket's name
// being created, moved in or touched (IN_CREATE, IN_MOVED_TO, IN_ATTRIB),
// and Wait() sleeps until such an event, a write to the owner's wake
// eventfd, or a deadline. Where the directory cannot be watched (no inotify,
// no permission), Wait() sleeps until the deadline or the wake-up: the
// backoff alone then paces the attempts.
//
// A watch is meant to be kept: setting one up and closing it each cost
// time proportional to the directory's entries (the kernel flags each).
//
// Thread-safety: Wait() and DiscardEvents() from one thread at a time.
#ifndef VFIO_USER_CLIENT_SOCKET_WATCH_H_
#define VFIO_USER_CLIENT_SOCKET_WATCH_H_

#include <string>

#include "absl/time/time.h"
#include "core/unique_fd.h"

namespace vfio_user {

class SocketWatch {
 public:
  enum class Woken { kDeadline, kSocketEvent, kWake };

  // `wake_fd`: an eventfd owned by the caller (it must outlive this), or
  // -1. A write to it makes Wait() return kWake; it is never read here, so
  // one write (Client::Close) keeps every later Wait() returning at once.
  SocketWatch(const std::string& socket_path, int wake_fd);
  SocketWatch(const SocketWatch&) = delete;
  SocketWatch& operator=(const SocketWatch&) = delete;

  // True if the socket's directory is being watched.
  bool watching() const { return inotify_.valid(); }

  // Sleeps until the socket's name shows up in the directory, `wake_fd`
  // becomes readable, or `deadline`.
  Woken Wait(absl::Time deadline);

  // Forgets the events queued so far (a later Wait() sees only newer ones).
  void DiscardEvents();

 private:
  // Reads every queued event; true if one named the socket (or the queue
  // overflowed, which may have hidden one).
  bool DrainEvents();

  UniqueFd inotify_;
  const int wake_fd_;
  std::string name_;  // the socket's file name in its directory
};

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_SOCKET_WATCH_H_
