// FdWatcher: lets device-layer components ask the event loop to tell them
// when a file descriptor becomes readable (e.g. the INTx unmask/resample
// eventfd a client registers with SET_IRQS).
//
// Callbacks run on the event-loop thread that serves the device. Watch() on
// an fd that is already watched replaces the callback. Unwatch() must be
// called before the fd is closed; after it returns, the callback for that fd
// will not run again.
#ifndef VFIO_USER_SERVER_FD_WATCHER_H_
#define VFIO_USER_SERVER_FD_WATCHER_H_

#include <functional>

#include "absl/status/status.h"

namespace vfio_user {

class FdWatcher {
 public:
  virtual ~FdWatcher() = default;
  virtual absl::Status Watch(int fd, std::function<void()> on_readable) = 0;
  virtual void Unwatch(int fd) = 0;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_FD_WATCHER_H_
