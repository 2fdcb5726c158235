#include "server/device_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/transport.h"

namespace vfio_user {

namespace {
// How long a refused connection may take to send its VERSION before we just
// close it.
constexpr absl::Duration kRefusalGrace = absl::Seconds(2);
// Connections being refused at once; more are closed without an answer, so a
// connect flood cannot pin fds for kRefusalGrace each.
constexpr size_t kMaxRefusals = 16;
// How long accepting pauses when the process is out of fds or memory.
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);

bool IsResourceExhaustion(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}
}  // namespace

struct DeviceServer::Refusal {
  std::unique_ptr<Connection> conn;
  EventLoop::TimerId timer = 0;
};

absl::StatusOr<std::unique_ptr<DeviceServer>> DeviceServer::Create(
    EventLoop* loop, Device* device, DeviceServerOptions options) {
  std::unique_ptr<DeviceServer> server(
      new DeviceServer(loop, device, std::move(options)));
  DeviceServerOptions& o = server->options_;
  if (o.listen_fd.valid() == !o.socket_path.empty()) {
    if (o.listen_fd.valid() && !o.socket_path.empty()) {
      // Both given: the fd is authoritative; the path is informational.
    } else {
      return ErrnoError(EINVAL, "DeviceServer needs a socket path or a listening fd");
    }
  }
  if (o.listen_fd.valid()) {
    server->listen_fd_ = std::move(o.listen_fd);
  } else {
    auto fd = ListenUnix(o.socket_path);
    if (!fd.ok()) return fd.status();
    server->listen_fd_ = std::move(*fd);
    server->created_path_ = true;
  }
  // Accepted sockets must not block the loop.
  int flags = ::fcntl(server->listen_fd_.get(), F_GETFL);
  if (flags < 0 || ::fcntl(server->listen_fd_.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError(errno, "fcntl(O_NONBLOCK) on listening socket failed");
  }
  if (absl::Status st = device->Finalize(loop); !st.ok()) return st;
  if (absl::Status st = server->WatchListener(); !st.ok()) return st;
  Log(LogLevel::kInfo, "server", "device listening",
      {{"device", device->name()}, {"socket", server->options_.socket_path}});
  return server;
}

DeviceServer::DeviceServer(EventLoop* loop, Device* device,
                           DeviceServerOptions options)
    : loop_(loop), device_(device), options_(std::move(options)) {}

absl::Status DeviceServer::WatchListener() {
  return loop_->WatchFd(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAcceptable(); });
}

void DeviceServer::PauseAccepting(int err) {
  // The connection stays in the backlog; the listening socket stays
  // readable. Watching it now would spin the loop (level-triggered), so
  // look again a little later.
  if (accept_pauses_++ % 100 == 0) {  // a long shortage logs now and then
    Log(LogLevel::kWarn, "server", "out of resources; accepting paused",
        {{"device", device_->name()},
         {"errno", absl::StrCat(err)},
         {"pauses", absl::StrCat(accept_pauses_)}});
  }
  loop_->UnwatchFd(listen_fd_.get());
  accept_paused_ = true;
  auto alive = alive_;
  accept_timer_ = loop_->RunAfter(kAcceptBackoff, [this, alive] {
    if (!*alive) return;
    accept_paused_ = false;
    if (absl::Status st = WatchListener(); !st.ok()) {
      Log(LogLevel::kError, "server", "cannot watch the listening socket",
          {{"device", device_->name()}, {"error", st.ToString()}});
      return;
    }
    OnAcceptable();
  });
}

DeviceServer::~DeviceServer() {
  *alive_ = false;
  if (accept_paused_) loop_->CancelTimer(accept_timer_);
  if (listen_fd_) loop_->UnwatchFd(listen_fd_.get());
  for (auto& [fd, refusal] : refusals_) {
    loop_->UnwatchFd(fd);
    loop_->CancelTimer(refusal->timer);
  }
  refusals_.clear();
  if (session_) {
    std::unique_ptr<Session> session = std::move(session_);
    session->Close(ErrnoError(ESHUTDOWN, "device server shutting down"));
    device_->Detach();
  }
  if (created_path_ && options_.unlink_on_close && !options_.socket_path.empty()) {
    ::unlink(options_.socket_path.c_str());
  }
}

PeerCredentials DeviceServer::client() const {
  return session_ ? session_->peer() : PeerCredentials{};
}

void DeviceServer::DisconnectClient() {
  if (session_) session_->Close(ErrnoError(ECONNABORTED, "disconnected by the server"));
}

void DeviceServer::OnAcceptable() {
  for (;;) {
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr,
                          SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      const int err = errno;
      if (err == EINTR) continue;
      if (IsResourceExhaustion(err)) {
        PauseAccepting(err);
      } else if (err != EAGAIN && err != EWOULDBLOCK) {
        Log(LogLevel::kWarn, "server", "accept failed",
            {{"device", device_->name()}, {"errno", absl::StrCat(err)}});
      }
      return;
    }
    accept_pauses_ = 0;
    // A client that hung up must not get its successor refused just because
    // its EOF is still queued behind this accept.
    if (session_) session_->ReapIfPeerGone();
    if (session_) {
      RefuseConnection(std::move(fd));
      continue;
    }
    device_->mutable_counters().connections++;
    auto alive = alive_;
    session_ = std::make_unique<Session>(
        device_, loop_, std::move(fd), options_.session,
        [this, alive](Session* s, const absl::Status& why) {
          if (*alive) OnSessionClosed(s, why);
        });
    if (options_.events.on_client_attached) {
      session_->set_on_attached(options_.events.on_client_attached);
    }
    if (absl::Status st = session_->Start(); !st.ok()) {
      Log(LogLevel::kWarn, "server", "cannot serve connection",
          {{"device", device_->name()}, {"error", st.ToString()}});
      std::unique_ptr<Session> dead = std::move(session_);
      dead->Close(st);
    }
  }
}

void DeviceServer::OnSessionClosed(Session* session, const absl::Status& why) {
  if (session != session_.get()) return;
  const bool was_attached = session->negotiated();
  device_->Detach();
  device_->mutable_counters().disconnects++;
  if (was_attached && options_.events.on_client_detached) {
    options_.events.on_client_detached(why);
  }
  // Destroy the session after the current callback stack unwinds.
  std::shared_ptr<Session> doomed(session_.release());
  loop_->Post([doomed] {});
}

void DeviceServer::RefuseConnection(UniqueFd fd) {
  if (refusals_.size() >= kMaxRefusals) return;  // closes `fd` unanswered
  auto refusal = std::make_unique<Refusal>();
  TransportOptions topts;
  topts.nonblocking = true;
  topts.max_fds_in = 0;
  topts.max_msg_size = 64 * 1024;
  PeerCredentials creds;
  {
    struct ucred uc {};
    socklen_t len = sizeof(uc);
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0) {
      creds = {uc.pid, uc.uid, uc.gid};
    }
  }
  Log(LogLevel::kWarn, "server", "refusing second client",
      {{"device", device_->name()}, {"pid", absl::StrCat(creds.pid)}});
  if (options_.events.on_client_refused) options_.events.on_client_refused(creds);
  refusal->conn = std::make_unique<Connection>(std::move(fd), topts);
  const int key = refusal->conn->fd();
  auto finish = [this, key] {
    auto it = refusals_.find(key);
    if (it == refusals_.end()) return;
    loop_->UnwatchFd(key);
    loop_->CancelTimer(it->second->timer);
    std::shared_ptr<Refusal> doomed(it->second.release());
    refusals_.erase(it);
    loop_->Post([doomed] {});
  };
  Connection* conn = refusal->conn.get();
  absl::Status st = loop_->WatchFd(key, EPOLLIN | EPOLLRDHUP, [conn, finish](uint32_t) {
    auto got = conn->Receive();
    if (got.ok() && !got->has_value()) return;  // wait for the whole VERSION
    if (got.ok() && (*got)->header.is_command() && !(*got)->header.no_reply()) {
      (void)conn->Send(MakeErrorReply((*got)->header, EBUSY));
    }
    finish();
  });
  if (!st.ok()) return;  // the connection is closed when `refusal` dies
  auto alive = alive_;
  refusal->timer = loop_->RunAfter(kRefusalGrace, [alive, finish] {
    if (*alive) finish();
  });
  refusals_[key] = std::move(refusal);
}

}  // namespace vfio_user
