// DeviceServer: serves one Device on one listening socket.
//
// Accepts one client at a time (PROTOCOL.md §6.1). A second concurrent
// connection is refused cleanly: its VERSION request is answered with an
// EBUSY error reply and the connection is closed, while the first client
// continues undisturbed (at most 16 refusals are pending at once; beyond,
// connections are closed without an answer). When the client goes (clean close, crash, or a
// protocol violation) its DMA maps and interrupt fds are dropped, the device
// state is kept (unless the device asked for reset_on_disconnect), and the
// next client is accepted.
//
// When the process runs out of fds (EMFILE/ENFILE) or memory, accepting
// pauses for 100 ms at a time (connections wait in the backlog) instead of
// spinning the loop; it resumes by itself.
//
// Observers (the control plane) learn about connection changes through
// ServerEvents, delivered on the loop thread.
//
// Threading: created, used and destroyed on the device's loop thread (use
// EventLoop::RunSync from elsewhere).
#ifndef VFIO_USER_SERVER_DEVICE_SERVER_H_
#define VFIO_USER_SERVER_DEVICE_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/unique_fd.h"
#include "server/device.h"
#include "server/event_loop.h"
#include "server/session.h"

namespace vfio_user {

struct ServerEvents {
  // A client finished VERSION and is attached.
  std::function<void(const PeerCredentials&)> on_client_attached;
  // The attached client went away; `why` says how (IsPeerClosed for EOF).
  std::function<void(const absl::Status& why)> on_client_detached;
  // A connection was refused because a client is already attached.
  std::function<void(const PeerCredentials&)> on_client_refused;
};

struct DeviceServerOptions {
  // Either a path to create the listening socket at, or an already-listening
  // socket (e.g. handed over by the daemon, so a restarted worker keeps the
  // path and the backlog). Exactly one must be set.
  std::string socket_path;
  UniqueFd listen_fd;
  // Remove the socket file when the server is destroyed (only if we created it).
  bool unlink_on_close = true;
  SessionOptions session;
  ServerEvents events;
};

class DeviceServer {
 public:
  // REQUIRES: `device` outlives the server; loop thread (or loop not running).
  static absl::StatusOr<std::unique_ptr<DeviceServer>> Create(
      EventLoop* loop, Device* device, DeviceServerOptions options);
  ~DeviceServer();

  const std::string& socket_path() const { return options_.socket_path; }
  Device* device() const { return device_; }
  bool has_client() const { return session_ != nullptr; }
  // The attached client's credentials (zero if none).
  PeerCredentials client() const;
  // Drops the current client (if any); the device keeps its state.
  void DisconnectClient();

 private:
  DeviceServer(EventLoop* loop, Device* device, DeviceServerOptions options);
  absl::Status WatchListener();
  void OnAcceptable();
  // Out of fds (EMFILE/ENFILE) or memory: stops watching the listening
  // socket for a short while instead of spinning on it.
  void PauseAccepting(int err);
  void RefuseConnection(UniqueFd fd);
  void OnSessionClosed(Session* session, const absl::Status& why);

  EventLoop* loop_;
  Device* device_;
  DeviceServerOptions options_;
  UniqueFd listen_fd_;
  bool created_path_ = false;
  bool accept_paused_ = false;
  uint64_t accept_pauses_ = 0;  // in a row
  EventLoop::TimerId accept_timer_ = 0;
  std::unique_ptr<Session> session_;
  // Connections being refused: waiting for their VERSION (or a timeout).
  struct Refusal;
  absl::flat_hash_map<int, std::unique_ptr<Refusal>> refusals_;
  // Guards callbacks posted to the loop against use after destruction.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DEVICE_SERVER_H_
