#include "tests/fuzz/client_fuzz_harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "core/unique_fd.h"
#include "tests/fuzz/client_exercise.h"
#include "tests/fuzz/client_fuzz_input.h"
#include "tests/fuzz/open_fds.h"

namespace vfio_user {
namespace fuzz {
namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "client fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

// Reads operands; past the end everything reads as zero.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ >= size_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    uint16_t lo = U8();
    return static_cast<uint16_t>(lo | (U8() << 8));
  }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(U8()) << (8 * i);
    return v;
  }
  ByteSpan Blob() {
    size_t n = U16();
    n = std::min(n, size_ - std::min(pos_, size_));
    ByteSpan out(data_ + pos_, n);
    pos_ += n;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// The listening socket, made once per process (the path is unlinked at
// exit).
struct Listener {
  std::string path;
  UniqueFd fd;
};

const Listener& SharedListener() {
  static const Listener* listener = [] {
    auto* l = new Listener;
    std::random_device rd;
    l->path = absl::StrCat("/tmp/vfu-cfz.", ::getpid(), ".", rd() % 1000000, ".sock");
    absl::StatusOr<UniqueFd> fd = ListenUnix(l->path, 8);
    Check(fd.ok(), "cannot listen");
    l->fd = std::move(*fd);
    ::fcntl(l->fd.get(), F_SETFL, ::fcntl(l->fd.get(), F_GETFL) | O_NONBLOCK);
    static std::string path_copy = l->path;
    std::atexit([] { ::unlink(path_copy.c_str()); });
    return l;
  }();
  return *listener;
}

constexpr absl::Duration kAwaitRequest = absl::Milliseconds(50);

// The scripted server (its own thread).
class FuzzServer {
 public:
  FuzzServer(int listen_fd, const uint8_t* data, size_t size, bool reconnects)
      : listen_fd_(listen_fd), in_(data, size), reconnects_(reconnects) {}

  void Run();
  void Finish() { finished_ = true; }
  int requests_seen() const { return requests_seen_; }

 private:
  bool Accept(absl::Duration wait);
  void HangUp();
  // Reads what the client sent, waiting up to `wait` for something.
  void DrainClient(absl::Duration wait);
  void DrainConnection(Connection* conn);
  std::vector<UniqueFd> MakeFds(uint8_t spec);
  // Sends header + payload (+ fds) on `conn`; gives up when the client
  // stops reading for a while.
  void Send(Connection* conn, Header header, ByteSpan payload, uint8_t fd_spec);
  void SendRaw(Connection* conn, ByteSpan bytes, std::vector<UniqueFd> fds);

  void OpReply();
  void OpRequest();
  void OpRaw();

  const int listen_fd_;
  Reader in_;
  const bool reconnects_;
  std::atomic<bool> finished_{false};
  std::unique_ptr<Connection> main_;
  std::unique_ptr<Connection> twin_;
  std::deque<Header> pending_;  // client requests awaiting a reply
  uint16_t next_msg_id_ = 0x8000;
  int requests_seen_ = 0;
};

bool FuzzServer::Accept(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    UniqueFd fd(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC));
    if (fd) {
      TransportOptions topts;
      topts.nonblocking = true;
      topts.max_msg_size = 64u << 20;
      topts.max_fds_in = 16;
      main_ = std::make_unique<Connection>(std::move(fd), topts);
      return true;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration() || finished_) return false;
    struct pollfd p {listen_fd_, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::min<int64_t>(
                      10, absl::ToInt64Milliseconds(left) + 1)));
  }
}

void FuzzServer::HangUp() {
  twin_.reset();
  main_.reset();
  pending_.clear();
}

void FuzzServer::DrainConnection(Connection* conn) {
  for (;;) {
    absl::StatusOr<std::optional<Message>> got = conn->Receive();
    if (!got.ok() || !got->has_value()) return;
    const Header& h = (**got).header;
    if (h.is_command()) {
      ++requests_seen_;
      if (!h.no_reply()) pending_.push_back(h);
    }
  }
}

void FuzzServer::DrainClient(absl::Duration wait) {
  if (main_ == nullptr) return;
  struct pollfd p[2] = {{main_->fd(), POLLIN, 0}, {-1, POLLIN, 0}};
  if (twin_ != nullptr) p[1].fd = twin_->fd();
  if (!main_->HasBufferedInput()) {
    ::poll(p, 2, static_cast<int>(absl::ToInt64Milliseconds(wait)));
  }
  DrainConnection(main_.get());
  if (twin_ != nullptr) DrainConnection(twin_.get());
}

std::vector<UniqueFd> FuzzServer::MakeFds(uint8_t spec) {
  std::vector<UniqueFd> fds;
  for (int i = 0; i < (spec & 3); ++i) {
    switch (static_cast<ServerFdKind>((spec >> (2 + 2 * i)) & 3)) {
      case ServerFdKind::kMemfd: {
        UniqueFd fd(::memfd_create("fuzz-region", MFD_CLOEXEC));
        if (fd && ::ftruncate(fd.get(), 64 * 1024) == 0) fds.push_back(std::move(fd));
        break;
      }
      case ServerFdKind::kEventfd:
        fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        break;
      case ServerFdKind::kSocket: {
        absl::StatusOr<std::pair<UniqueFd, UniqueFd>> pair = MakeSocketPair();
        if (!pair.ok()) break;
        if (twin_ == nullptr) {
          TransportOptions topts = main_->options();
          twin_ = std::make_unique<Connection>(std::move(pair->first), topts);
        }
        fds.push_back(std::move(pair->second));
        break;
      }
      case ServerFdKind::kPipe: {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) break;
        ::close(p[1]);
        fds.emplace_back(p[0]);
        break;
      }
    }
  }
  fds.erase(std::remove_if(fds.begin(), fds.end(),
                           [](const UniqueFd& fd) { return !fd.valid(); }),
            fds.end());
  return fds;
}

void FuzzServer::SendRaw(Connection* conn, ByteSpan bytes, std::vector<UniqueFd> fds) {
  size_t offset = 0;
  bool fds_pending = !fds.empty();
  int stalls = 0;
  while (offset < bytes.size() || fds_pending) {
    struct iovec iov {};
    iov.iov_base = const_cast<uint8_t*>(bytes.data() + offset);
    iov.iov_len = bytes.size() - offset;
    struct msghdr mh {};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(struct cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * 3)];
    if (fds_pending) {
      const size_t fd_bytes = sizeof(int) * fds.size();
      std::memset(control, 0, sizeof(control));
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(fd_bytes);
      struct cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(fd_bytes);
      for (size_t i = 0; i < fds.size(); ++i) {
        const int raw = fds[i].get();
        std::memcpy(CMSG_DATA(cm) + i * sizeof(int), &raw, sizeof(int));
      }
    }
    const ssize_t sent = ::sendmsg(conn->fd(), &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) && ++stalls < 20) {
        struct pollfd p {conn->fd(), POLLOUT, 0};
        ::poll(&p, 1, 10);
        continue;
      }
      return;
    }
    stalls = 0;
    fds_pending = false;
    offset += static_cast<size_t>(sent);
  }
}

void FuzzServer::Send(Connection* conn, Header header, ByteSpan payload,
                      uint8_t fd_spec) {
  header.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
  Bytes bytes(kHeaderSize);
  EncodeHeader(header, bytes.data());
  bytes.insert(bytes.end(), payload.begin(), payload.end());
  SendRaw(conn, ByteSpan(bytes), MakeFds(fd_spec));
}

void FuzzServer::OpReply() {
  const uint8_t mode = in_.U8();
  const uint32_t err = in_.U32();
  const uint8_t fd_spec = in_.U8();
  const ByteSpan payload = in_.Blob();
  if (main_ == nullptr) return;
  DrainClient(absl::ZeroDuration());
  if (pending_.empty()) DrainClient(kAwaitRequest);
  if (pending_.empty()) return;
  // Answered in the order they came, as a real server does (the client
  // sends windows of requests, e.g. its attach); a request the script never
  // answered gets its reply late, which the client must drop.
  const Header request = pending_.front();
  if (!(mode & 8)) pending_.pop_front();
  Header h;
  h.msg_id = static_cast<uint16_t>(request.msg_id + ((mode & 2) ? 1 : 0));
  h.cmd = static_cast<uint16_t>(request.cmd + ((mode & 4) ? 1 : 0));
  h.flags = kFlagsTypeReply | ((mode & 1) ? kFlagsError : 0) |
            ((mode & 16) ? kFlagsNoReply : 0);
  h.error = (mode & 1) ? err : 0;
  Send(main_.get(), h, payload, fd_spec);
}

void FuzzServer::OpRequest() {
  const uint8_t where = in_.U8();
  const uint16_t cmd = in_.U16();
  const uint8_t flags = in_.U8();
  const uint8_t fd_spec = in_.U8();
  const ByteSpan payload = in_.Blob();
  if (main_ == nullptr) return;
  Connection* conn = ((where & 1) && twin_ != nullptr) ? twin_.get() : main_.get();
  Header h;
  h.msg_id = next_msg_id_++;
  h.cmd = cmd;
  h.flags = flags;
  Send(conn, h, payload, fd_spec);
}

void FuzzServer::OpRaw() {
  const uint8_t fd_spec = in_.U8();
  const ByteSpan bytes = in_.Blob();
  if (main_ == nullptr) return;
  SendRaw(main_.get(), bytes, MakeFds(fd_spec));
}

void FuzzServer::Run() {
  if (Accept(absl::Seconds(5))) {
    while (!in_.done() && !finished_) {
      switch (static_cast<ClientFuzzOp>(in_.U8() % kClientFuzzOpCount)) {
        case ClientFuzzOp::kReply:
          OpReply();
          break;
        case ClientFuzzOp::kRequest:
          OpRequest();
          break;
        case ClientFuzzOp::kRaw:
          OpRaw();
          break;
        case ClientFuzzOp::kHangUp:
          HangUp();
          if (reconnects_) Accept(absl::Milliseconds(300));
          break;
        case ClientFuzzOp::kAwait:
          DrainClient(kAwaitRequest);
          break;
      }
    }
  }
  // Script over: hang up and turn away reconnecting clients until the
  // client is done.
  HangUp();
  while (!finished_) {
    if (Accept(absl::Milliseconds(10))) HangUp();
  }
}

}  // namespace

ClientRunStats RunClientFuzzInput(const uint8_t* data, size_t size) {
  static const bool sigpipe_ignored = [] {
    ::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)sigpipe_ignored;
  if (size == 0) return {};
  const Listener& listener = SharedListener();
  // A connection left in the backlog by the previous run must not stand in
  // for this run's client.
  while (UniqueFd stale{::accept4(listener.fd.get(), nullptr, nullptr, SOCK_CLOEXEC)}) {
  }
  const int fds_before = CountOpenFds();
  const uint8_t config = data[0];

  ClientRunStats stats;
  FuzzServer server(listener.fd.get(), data + 1, size - 1,
                    (config & kClientConfigReconnect) != 0);
  std::thread server_thread([&server] { server.Run(); });
  {
    ClientOptions options;
    options.socket_path = listener.path;
    options.request_timeout = kFuzzRequestTimeout;
    options.offer_twin_socket = (config & kClientConfigTwin) != 0;
    if (config & kClientConfigSmallChunks) options.transfer_chunk_size = 64;
    options.reconnect.enabled = (config & kClientConfigReconnect) != 0;
    options.reconnect.deadline = absl::Milliseconds(300);
    options.reconnect.initial_backoff = absl::Milliseconds(1);
    options.reconnect.max_backoff = absl::Milliseconds(10);
    options.reconnect.retry_idempotent = !(config & kClientConfigNoRetry);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (client.ok()) {
      stats.connected = true;
      ExerciseClient(client->get());
      (*client)->Close();
    }
  }
  server.Finish();
  server_thread.join();
  stats.requests_seen = server.requests_seen();
  Check(CountOpenFds() == fds_before, "file descriptors leaked");
  return stats;
}

}  // namespace fuzz
}  // namespace vfio_user
