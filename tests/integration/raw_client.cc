#include "tests/integration/raw_client.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/errno_status.h"

namespace vfio_user::testing {

absl::StatusOr<std::unique_ptr<RawClient>> RawClient::Connect(
    const std::string& path, absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    auto fd = ConnectUnix(path);
    if (fd.ok()) return std::unique_ptr<RawClient>(new RawClient(std::move(*fd)));
    if (absl::Now() > deadline) return fd.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

RawClient::RawClient(UniqueFd fd) {
  TransportOptions o;
  o.max_msg_size = (8u << 20);
  o.max_fds_in = 16;
  o.max_fds_out = 16;
  o.receive_timeout = absl::Seconds(10);
  conn_ = std::make_unique<Connection>(std::move(fd), o);
}

absl::StatusOr<VersionPayload> RawClient::Negotiate(const std::string& json,
                                                    uint16_t minor) {
  VersionPayload v;
  v.major = 0;
  v.minor = minor;
  v.json = json;
  // Every peer, QEMU (minor 0) included, uses the spec DMA_READ/WRITE layout
  // (QEMU 11.1 measured: docs/QEMU-INTEROP.md).
  dma_layout_ = DmaLayout::kSpec;
  auto reply = Call(Command::kVersion, EncodeVersion(v));
  if (!reply.ok()) return reply.status();
  if (reply->header.is_error()) {
    return ErrnoError(SanitizePeerErrno(reply->header.error), "VERSION refused");
  }
  auto decoded = DecodeVersion(ByteSpan(reply->payload));
  if (!decoded.ok()) return decoded.status();
  auto caps = ParseCapabilitiesJson(decoded->json);
  if (!caps.ok()) return caps.status();
  if (caps->twin_socket_supported && caps->twin_socket_fd_index &&
      *caps->twin_socket_fd_index < last_reply_fds_.size()) {
    TransportOptions o = conn_->options();
    twin_ = std::make_unique<Connection>(
        std::move(last_reply_fds_[*caps->twin_socket_fd_index]), o);
  }
  return decoded;
}

absl::Status RawClient::SendRaw(const Bytes& bytes) {
  // Connection sends whole messages; raw bytes go straight to the socket.
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(conn_->fd(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{conn_->fd(), POLLOUT, 0};
        ::poll(&p, 1, 1000);
        continue;
      }
      return ErrnoError(errno, "send failed");
    }
    off += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status RawClient::SendRawWithFds(const Bytes& bytes, const std::vector<int>& fds) {
  std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * fds.size()));
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  ssize_t n = ::sendmsg(conn_->fd(), &msg, MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(bytes.size())) return ErrnoError(errno ? errno : EIO, "sendmsg");
  return absl::OkStatus();
}

absl::StatusOr<Message> RawClient::Call(Command cmd, const Bytes& payload,
                                        std::vector<int> fds, bool no_reply) {
  const uint16_t id = next_id_++;
  Message m = MakeCommand(id, cmd, payload, no_reply);
  for (int fd : fds) {
    int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return ErrnoError(errno, "dup failed");
    m.fds.emplace_back(dup);
  }
  if (absl::Status st = conn_->Send(m); !st.ok()) return st;
  if (no_reply) return Message();
  return WaitReply(id);
}

absl::StatusOr<Message> RawClient::Receive() {
  auto got = conn_->Receive();
  if (!got.ok()) return got.status();
  if (!got->has_value()) return ErrnoError(EAGAIN, "no message");
  return std::move(**got);
}

absl::StatusOr<Message> RawClient::WaitReply(uint16_t msg_id) {
  for (;;) {
    // Serve twin-socket requests first if any are waiting.
    Connection* sources[2] = {conn_.get(), twin_.get()};
    pollfd pfds[2];
    int n = 0;
    for (Connection* c : sources) {
      if (c != nullptr) pfds[n++] = pollfd{c->fd(), POLLIN, 0};
    }
    if (!conn_->HasBufferedInput() && !(twin_ && twin_->HasBufferedInput())) {
      int r = ::poll(pfds, n, 10000);
      if (r == 0) return ErrnoError(ETIMEDOUT, "no reply within 10 s");
      if (r < 0 && errno != EINTR) return ErrnoError(errno, "poll failed");
    }
    for (int i = 0; i < n; ++i) {
      Connection* c = sources[i];
      if (!(pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) && !c->HasBufferedInput()) {
        continue;
      }
      auto got = c->Receive();
      if (!got.ok()) return got.status();
      if (!got->has_value()) continue;
      Message msg = std::move(**got);
      if (msg.header.is_command()) {
        if (absl::Status st = ServeDmaRequest(*c, msg); !st.ok()) return st;
        continue;
      }
      if (msg.header.msg_id != msg_id) {
        return ErrnoError(EPROTO, absl::StrCat("reply for msg_id ", msg.header.msg_id,
                                               ", expected ", msg_id));
      }
      last_reply_fd_count_ = static_cast<int>(msg.fds.size());
      last_reply_fds_ = std::move(msg.fds);
      msg.fds.clear();
      return msg;
    }
  }
}

UniqueFd RawClient::TakeLastReplyFd() {
  if (last_reply_fds_.empty()) return UniqueFd();
  UniqueFd fd = std::move(last_reply_fds_.front());
  last_reply_fds_.erase(last_reply_fds_.begin());
  return fd;
}

absl::Status RawClient::ServeDmaRequest(Connection& conn, Message& req) {
  ++dma_requests_served_;
  const DecodeLimits limits;
  std::vector<uint8_t>* mem = dma_window_.memory;
  auto in_window = [&](uint64_t addr, uint64_t count) {
    return mem != nullptr && addr >= dma_window_.iova &&
           count <= mem->size() && addr - dma_window_.iova <= mem->size() - count;
  };
  if (req.command() == Command::kDmaRead) {
    auto r = DecodeDmaReadRequest(ByteSpan(req.payload), limits, dma_layout_);
    if (!r.ok() || !in_window(r->address, r->count)) {
      return conn.Send(MakeErrorReply(req.header, r.ok() ? EFAULT : ErrnoOf(r.status())));
    }
    ByteSpan data(mem->data() + (r->address - dma_window_.iova), r->count);
    return conn.Send(
        MakeReply(req.header, EncodeDmaAccessWithData(r->address, data, dma_layout_)));
  }
  if (req.command() == Command::kDmaWrite) {
    auto r = DecodeDmaWriteRequest(ByteSpan(req.payload), limits, dma_layout_);
    if (!r.ok() || !in_window(r->address, r->count)) {
      return conn.Send(MakeErrorReply(req.header, r.ok() ? EFAULT : ErrnoOf(r.status())));
    }
    std::memcpy(mem->data() + (r->address - dma_window_.iova), r->data.data(), r->count);
    // QEMU 11.1 and lvu-style peers echo 16 bytes (address, count); a
    // legacy-layout peer would answer with a bare header.
    return conn.Send(MakeReply(req.header, dma_layout_ == DmaLayout::kQemuLegacy
                                               ? Bytes()
                                               : EncodeDmaAccessHeader(r->address, r->count)));
  }
  return conn.Send(MakeErrorReply(req.header, ENOSYS));
}

absl::StatusOr<Bytes> RawClient::RegionRead(uint32_t region, uint64_t offset,
                                            uint32_t count) {
  auto reply = Call(Command::kRegionRead, EncodeRegionAccessHeader(offset, region, count));
  if (!reply.ok()) return reply.status();
  if (reply->header.is_error()) {
    return ErrnoError(SanitizePeerErrno(reply->header.error), "REGION_READ failed");
  }
  auto access = DecodeRegionReadReply(ByteSpan(reply->payload), count);
  if (!access.ok()) return access.status();
  return Bytes(access->data.begin(), access->data.end());
}

absl::Status RawClient::RegionWrite(uint32_t region, uint64_t offset, const Bytes& data) {
  auto reply = Call(Command::kRegionWrite, EncodeRegionAccessWithData(offset, region, data));
  if (!reply.ok()) return reply.status();
  if (reply->header.is_error()) {
    return ErrnoError(SanitizePeerErrno(reply->header.error), "REGION_WRITE failed");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> RawClient::ConfigRead32(uint64_t offset) {
  auto bytes = RegionRead(kPciConfigRegionIndex, offset, 4);
  if (!bytes.ok()) return bytes.status();
  uint32_t v;
  std::memcpy(&v, bytes->data(), 4);
  return v;
}

absl::Status RawClient::ConfigWrite32(uint64_t offset, uint32_t value) {
  Bytes b(4);
  std::memcpy(b.data(), &value, 4);
  return RegionWrite(kPciConfigRegionIndex, offset, b);
}

int CountOpenFds(int pid) {
  std::string dir = absl::StrCat("/proc/", pid, "/fd");
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return pid == ::getpid() ? n - 1 : n;  // our own listing holds one fd
}

long ProcStatusField(int pid, const std::string& key) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view value(line);
    if (!absl::ConsumePrefix(&value, key) || !absl::ConsumePrefix(&value, ":")) {
      continue;
    }
    value = absl::StripLeadingAsciiWhitespace(value);
    const size_t digits = value.find_first_not_of("0123456789");
    long number = -1;
    if (!absl::SimpleAtoi(value.substr(0, digits), &number)) return -1;
    return number;
  }
  return -1;
}

}  // namespace vfio_user::testing
