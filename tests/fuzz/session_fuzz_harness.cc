#include "tests/fuzz/session_fuzz_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "core/unique_fd.h"
#include "server/device.h"
#include "server/device_server.h"
#include "server/devices/dma_engine_device.h"
#include "server/devices/idio16.h"
#include "server/event_loop.h"
#include "server/session.h"
#include "tests/fuzz/open_fds.h"
#include "tests/fuzz/session_fuzz_input.h"

namespace vfio_user {
namespace fuzz {
namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "session fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

// VFU_FUZZ_TRACE=1 prints what the client sends and gets (to debug a finding).
bool Tracing() {
  static const bool on = [] {
    const char* v = std::getenv("VFU_FUZZ_TRACE");
    return v != nullptr && v[0] == '1';
  }();
  return on;
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
  // A u16 length and that many bytes (fewer if the input ends).
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

// How many fds the client keeps for later mischief (the rest are closed
// once sent), so long scripts do not run the process out of fds.
constexpr size_t kMaxKeptFds = 16;

class SessionFuzzRun {
 public:
  explicit SessionFuzzRun(uint8_t config) : config_(config) {}
  ~SessionFuzzRun() { Teardown(); }

  bool Setup();
  void Execute(Reader& in);
  const SessionRunStats& stats() const { return stats_; }

 private:
  struct ServerRequest {
    bool on_twin = false;
    Header header;
    Bytes payload;
  };

  // ---- client side ----
  bool Connect();
  void CloseClient();
  // Sends `bytes` (and `fds` with the first piece) on `fd`, in chunk_-sized
  // pieces with the server running in between. Gives up when the server
  // stops reading (its backpressure) or the connection is gone.
  // Returns whether everything went out.
  bool SendBytes(int fd, ByteSpan bytes, const std::vector<UniqueFd>& fds);
  std::vector<UniqueFd> MakeFds(uint8_t spec);
  UniqueFd MakeFd(FdKind kind);
  Bytes Frame(uint16_t cmd, uint8_t flags, ByteSpan payload);
  // Reads everything the server sent; returns whether anything came.
  bool Drain();
  bool DrainConnection(Connection* conn, bool twin);
  void Pump();

  // ---- ops ----
  void OpMessage(Reader& in, bool twin);
  void OpRaw(Reader& in);
  void OpReplyToServer(Reader& in);
  void OpServerDma(Reader& in);
  void OpDeviceEvent(Reader& in);
  void OpSecondClient(Reader& in);
  void OpClientMischief(Reader& in);

  // Liveness: on a connection still open and in step (every sent message
  // whole), a well-formed command must get its reply. A server that neither
  // answers nor closes has stalled the client.
  void ProbeLiveness();

  void Teardown();

  const uint8_t config_;
  SessionRunStats stats_;

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Idio16Device> idio_;
  std::unique_ptr<DmaTestDevice> dma_device_;
  Device* device_ = nullptr;
  std::unique_ptr<DeviceServer> server_;
  struct sockaddr_un address_ {};
  socklen_t address_len_ = 0;

  std::unique_ptr<Connection> client_;
  std::unique_ptr<Connection> twin_;
  bool client_dead_ = false;
  bool stop_reading_ = false;
  size_t chunk_ = 0;
  uint16_t next_msg_id_ = 1;
  std::deque<ServerRequest> server_requests_;
  bool aligned_ = true;            // every byte sent on the main socket was a whole message
  bool half_closed_ = false;
  std::optional<uint16_t> probe_id_;
  bool probe_answered_ = false;
  // The last whole command sent on the main socket that expects a reply.
  std::optional<uint16_t> last_command_id_;
  bool last_command_answered_ = false;

  std::vector<UniqueFd> kept_memfds_;
  std::vector<UniqueFd> kept_pipe_writers_;
  // Buffers of server-initiated DMA; the session may write into them until
  // it closes.
  std::vector<std::shared_ptr<std::vector<uint8_t>>> dma_buffers_;
  bool torn_down_ = false;
};

bool SessionFuzzRun::Setup() {
  auto loop = EventLoop::Create();
  if (!loop.ok()) return false;
  loop_ = std::move(*loop);

  if (config_ & kConfigDmaDevice) {
    dma_device_ = std::make_unique<DmaTestDevice>("fuzz-dma");
    device_ = dma_device_->device();
  } else {
    idio_ = std::make_unique<Idio16Device>("fuzz-idio16");
    device_ = idio_->device();
  }
  if (config_ & kConfigFewMaps) device_->set_max_dma_maps(4);
  if (config_ & kConfigResetOnDisconnect) device_->set_reset_on_disconnect(true);

  // A listening socket with an autobound abstract address: no files.
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return false;
  struct sockaddr_un any {};
  any.sun_family = AF_UNIX;
  if (::bind(listener.get(), reinterpret_cast<struct sockaddr*>(&any),
             sizeof(sa_family_t)) != 0 ||
      ::listen(listener.get(), 8) != 0) {
    return false;
  }
  address_len_ = sizeof(address_);
  if (::getsockname(listener.get(), reinterpret_cast<struct sockaddr*>(&address_),
                    &address_len_) != 0) {
    return false;
  }

  DeviceServerOptions options;
  options.listen_fd = std::move(listener);
  options.session.offer_twin_socket = !(config_ & kConfigNoTwin);
  options.session.advertise_write_multiple = (config_ & kConfigWriteMulti) != 0;
  if (config_ & kConfigSmallXfer) options.session.max_data_xfer_size = 4096;
  if (config_ & kConfigFewFds) options.session.max_msg_fds = 2;
  auto server = DeviceServer::Create(loop_.get(), device_, std::move(options));
  if (!server.ok()) return false;
  server_ = std::move(*server);
  return Connect();
}

bool SessionFuzzRun::Connect() {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  if (::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&address_),
                address_len_) != 0) {
    return false;
  }
  TransportOptions topts;
  topts.nonblocking = true;
  topts.max_msg_size = 64u << 20;
  topts.max_fds_in = 8;
  client_ = std::make_unique<Connection>(std::move(fd), topts);
  client_dead_ = false;
  Pump();  // the server accepts
  return true;
}

void SessionFuzzRun::CloseClient() {
  twin_.reset();
  client_.reset();
  server_requests_.clear();
  Pump();
}

UniqueFd SessionFuzzRun::MakeFd(FdKind kind) {
  switch (kind) {
    case FdKind::kMemfd:
    case FdKind::kSealedMemfd: {
      UniqueFd fd(::memfd_create("fuzz-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING));
      if (!fd || ::ftruncate(fd.get(), kFuzzMemfdSize) != 0) return UniqueFd();
      if (kind == FdKind::kSealedMemfd) {
        (void)::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
      } else if (kept_memfds_.size() < kMaxKeptFds) {
        kept_memfds_.emplace_back(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
      }
      return fd;
    }
    case FdKind::kEventfd:
      return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    case FdKind::kPipe: {
      int p[2];
      if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return UniqueFd();
      UniqueFd writer(p[1]);
      if (kept_pipe_writers_.size() < kMaxKeptFds) {
        kept_pipe_writers_.push_back(std::move(writer));
      }
      return UniqueFd(p[0]);
    }
  }
  return UniqueFd();
}

std::vector<UniqueFd> SessionFuzzRun::MakeFds(uint8_t spec) {
  std::vector<UniqueFd> fds;
  if (spec == kManyFds) {
    for (int i = 0; i < kManyFdsCount; ++i) fds.push_back(MakeFd(FdKind::kEventfd));
  } else {
    for (int i = 0; i < (spec & 3); ++i) {
      fds.push_back(MakeFd(static_cast<FdKind>((spec >> (2 + 2 * i)) & 3)));
    }
  }
  fds.erase(std::remove_if(fds.begin(), fds.end(),
                           [](const UniqueFd& fd) { return !fd.valid(); }),
            fds.end());
  return fds;
}

Bytes SessionFuzzRun::Frame(uint16_t cmd, uint8_t flags, ByteSpan payload) {
  Header h;
  h.msg_id = next_msg_id_++;
  h.cmd = cmd;
  h.flags = flags;
  h.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
  Bytes bytes(kHeaderSize + payload.size());
  EncodeHeader(h, bytes.data());
  if (!payload.empty()) {
    std::memcpy(bytes.data() + kHeaderSize, payload.data(), payload.size());
  }
  return bytes;
}

bool SessionFuzzRun::SendBytes(int fd, ByteSpan bytes,
                               const std::vector<UniqueFd>& fds) {
  size_t offset = 0;
  bool fds_pending = !fds.empty();
  int stalls = 0;
  while (offset < bytes.size() || fds_pending) {
    size_t n = bytes.size() - offset;
    if (chunk_ != 0) n = std::min(n, chunk_);
    struct iovec iov {};
    iov.iov_base = const_cast<uint8_t*>(bytes.data() + offset);
    iov.iov_len = n;
    struct msghdr mh {};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(struct cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * kManyFdsCount)];
    if (fds_pending) {
      const size_t fd_bytes = sizeof(int) * fds.size();
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(fd_bytes);
      std::memset(control, 0, sizeof(control));
      struct cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(fd_bytes);
      for (size_t i = 0; i < fds.size(); ++i) {
        const int raw = fds[i].get();
        std::memcpy(CMSG_DATA(cm) + i * sizeof(int), &raw, sizeof(int));
      }
    }
    const ssize_t sent = ::sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) && ++stalls < 4) {
        Pump();
        continue;
      }
      return false;  // the server does not read (backpressure) or is gone
    }
    stalls = 0;
    fds_pending = false;
    offset += static_cast<size_t>(sent);
    if (chunk_ != 0 || n == 0) Pump();
  }
  return true;
}

bool SessionFuzzRun::DrainConnection(Connection* conn, bool twin) {
  bool any = false;
  for (;;) {
    absl::StatusOr<std::optional<Message>> got = conn->Receive();
    if (!got.ok()) {
      const int err = ErrnoOf(got.status());
      Check(IsPeerClosed(got.status()) || err == EPIPE || err == ECONNRESET,
            "the server sent a message that is not well framed");
      if (!twin) client_dead_ = true;
      return any;
    }
    if (!got->has_value()) return any;
    any = true;
    Message& msg = **got;
    ++stats_.messages_from_server;
    if (Tracing()) {
      std::fprintf(stderr, "trace: got%s id=%u cmd=%u flags=0x%x error=%u len=%zu fds=%zu\n",
                   twin ? " (twin)" : "", msg.header.msg_id, msg.header.cmd,
                   msg.header.flags, msg.header.error, msg.payload.size(), msg.fds.size());
    }
    if (msg.header.is_reply()) {
      if (!twin && probe_id_ && msg.header.msg_id == *probe_id_) probe_answered_ = true;
      if (!twin && last_command_id_ && msg.header.msg_id == *last_command_id_) {
        last_command_answered_ = true;
      }
      if (msg.header.is_error()) ++stats_.error_replies;
      if (msg.header.cmd == static_cast<uint16_t>(Command::kVersion) &&
          !msg.header.is_error()) {
        stats_.attached = true;
        if (!twin && twin_ == nullptr && !msg.fds.empty()) {
          TransportOptions topts = client_->options();
          twin_ = std::make_unique<Connection>(std::move(msg.fds[0]), topts);
        }
      }
    } else {
      ++stats_.server_requests;
      server_requests_.push_back({twin, msg.header, std::move(msg.payload)});
    }
  }
}

bool SessionFuzzRun::Drain() {
  if (stop_reading_) return false;
  bool any = false;
  if (client_ != nullptr && !client_dead_) any |= DrainConnection(client_.get(), false);
  if (twin_ != nullptr) any |= DrainConnection(twin_.get(), true);
  return any;
}

void SessionFuzzRun::Pump() {
  for (int i = 0; i < 64; ++i) {
    Check(loop_->RunUntilIdle(), "the server loop never becomes idle");
    if (!Drain()) break;
  }
}

void SessionFuzzRun::OpMessage(Reader& in, bool twin) {
  const uint16_t cmd = in.U16();
  const uint8_t flags = in.U8();
  const uint8_t fd_spec = in.U8();
  const ByteSpan payload = in.Blob();
  Connection* conn = twin ? twin_.get() : client_.get();
  if (conn == nullptr) return;
  const uint16_t id = next_msg_id_;
  const Bytes bytes = Frame(cmd, flags, payload);
  std::vector<UniqueFd> fds;
  if (!twin) fds = MakeFds(fd_spec);
  // Tracked before sending: with chunking the reply can arrive meanwhile.
  if (!twin && (flags & kFlagsTypeMask) == kFlagsTypeCommand && !(flags & kFlagsNoReply)) {
    last_command_id_ = id;
    last_command_answered_ = false;
  }
  const bool whole = SendBytes(conn->fd(), ByteSpan(bytes), fds);
  if (Tracing()) {
    std::fprintf(stderr, "trace: sent%s id=%u cmd=%u flags=0x%x len=%zu fds=%zu%s\n",
                 twin ? " (twin)" : "", id, cmd, flags, payload.size(), fds.size(),
                 whole ? "" : " (incomplete)");
  }
  if (!twin && !whole) aligned_ = false;
  Pump();
}

void SessionFuzzRun::OpRaw(Reader& in) {
  const uint8_t fd_spec = in.U8();
  const ByteSpan bytes = in.Blob();
  if (client_ == nullptr) return;
  // Raw bytes keep the stream in step only if they are whole messages; the
  // last one is then the command whose answer proves the rest were served.
  std::optional<Header> last;
  size_t pos = 0;
  while (pos + kHeaderSize <= bytes.size()) {
    Header h;
    std::memcpy(&h.msg_id, bytes.data() + pos, 2);
    std::memcpy(&h.cmd, bytes.data() + pos + 2, 2);
    std::memcpy(&h.msg_size, bytes.data() + pos + 4, 4);
    std::memcpy(&h.flags, bytes.data() + pos + 8, 4);
    if (h.msg_size < kHeaderSize || h.msg_size > bytes.size() - pos) break;
    pos += h.msg_size;
    last = h;
  }
  if (pos == bytes.size() && last && last->is_command() && !last->no_reply()) {
    last_command_id_ = last->msg_id;  // before sending: see OpMessage
    last_command_answered_ = false;
  }
  const bool sent = SendBytes(client_->fd(), bytes, MakeFds(fd_spec));
  if (!sent || pos != bytes.size()) aligned_ = false;
  Pump();
}

void SessionFuzzRun::OpReplyToServer(Reader& in) {
  const uint8_t mode = in.U8();
  const uint32_t err = in.U32();
  const ByteSpan bytes = in.Blob();
  if (server_requests_.empty()) return;
  ServerRequest req = std::move(server_requests_.front());
  server_requests_.pop_front();
  Connection* conn = req.on_twin ? twin_.get() : client_.get();
  if (conn == nullptr) return;
  Bytes payload(bytes.begin(), bytes.end());
  if (mode & 2) {
    // A well-formed answer, in whichever layout the request decodes in.
    const bool write = req.header.cmd == static_cast<uint16_t>(Command::kDmaWrite);
    DecodeLimits limits;
    limits.max_data_xfer_size = 1u << 26;
    for (DmaLayout layout : {DmaLayout::kSpec, DmaLayout::kQemuLegacy}) {
      absl::StatusOr<DmaAccess> access =
          write ? DecodeDmaWriteRequest(ByteSpan(req.payload), limits, layout)
                : DecodeDmaReadRequest(ByteSpan(req.payload), limits, layout);
      if (!access.ok()) continue;
      if (write) {
        payload = EncodeDmaAccessHeader(access->address, access->count, layout);
      } else {
        Bytes data(access->count, 0xa5);
        payload = EncodeDmaAccessWithData(access->address, ByteSpan(data), layout);
      }
      break;
    }
  }
  Header h;
  h.msg_id = static_cast<uint16_t>(req.header.msg_id + ((mode & 4) ? 1 : 0));
  h.cmd = req.header.cmd;
  h.flags = kFlagsTypeReply | ((mode & 1) ? kFlagsError : 0);
  h.error = (mode & 1) ? err : 0;
  h.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
  Bytes out(kHeaderSize);
  EncodeHeader(h, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  if (!SendBytes(conn->fd(), ByteSpan(out), {}) && !req.on_twin) aligned_ = false;
  Pump();
}

void SessionFuzzRun::OpServerDma(Reader& in) {
  const uint8_t mode = in.U8();
  const uint32_t iova = in.U32();
  const uint16_t len = in.U16();
  auto buffer = std::make_shared<std::vector<uint8_t>>(len, 0x5a);
  dma_buffers_.push_back(buffer);
  Device* device = device_;
  loop_->Post([device, mode, iova, buffer] {
    if (mode & 2) {
      absl::Status st = (mode & 1) ? device->DmaWrite(iova, *buffer)
                                   : device->DmaRead(iova, absl::MakeSpan(*buffer));
      (void)st;
      return;
    }
    Session* session = device->session();
    if (session == nullptr) return;
    auto done = [buffer](absl::Status) {};
    if (mode & 1) {
      session->DmaWriteByMessage(iova, buffer->data(), buffer->size(), done);
    } else {
      session->DmaReadByMessage(iova, buffer->data(), buffer->size(), done);
    }
  });
  Pump();
}

void SessionFuzzRun::OpDeviceEvent(Reader& in) {
  const uint8_t what = in.U8();
  const uint32_t arg = in.U32();
  Device* device = device_;
  Idio16Device* idio = idio_.get();
  DeviceServer* server = server_.get();
  loop_->Post([=] {
    switch (what % 4) {
      case 0:
        (void)device->TriggerIrq(arg & 7, arg >> 8);
        break;
      case 1:
        device->SetIntxLevel((arg & 1) != 0);
        break;
      case 2:
        if (idio != nullptr) idio->SetInputs(static_cast<uint16_t>(arg));
        break;
      case 3:
        server->DisconnectClient();
        break;
    }
  });
  Pump();
}

void SessionFuzzRun::OpSecondClient(Reader& in) {
  const ByteSpan bytes = in.Blob();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&address_),
                       address_len_) != 0) {
    return;
  }
  Pump();
  SendBytes(fd.get(), bytes, {});
  Pump();
  fd.Reset();
  Pump();
}

void SessionFuzzRun::OpClientMischief(Reader& in) {
  const uint8_t what = in.U8();
  if (what % 2 == 0) {
    for (const UniqueFd& fd : kept_memfds_) (void)::ftruncate(fd.get(), 0);
  } else {
    kept_pipe_writers_.clear();
  }
  Pump();
}

void SessionFuzzRun::Execute(Reader& in) {
  while (!in.done()) {
    const auto op = static_cast<SessionOp>(in.U8() % kSessionOpCount);
    switch (op) {
      case SessionOp::kMessage:
        OpMessage(in, /*twin=*/false);
        break;
      case SessionOp::kRaw:
        OpRaw(in);
        break;
      case SessionOp::kPump:
        Pump();
        break;
      case SessionOp::kReplyToServer:
        OpReplyToServer(in);
        break;
      case SessionOp::kServerDma:
        OpServerDma(in);
        break;
      case SessionOp::kChunk:
        chunk_ = in.U16();
        break;
      case SessionOp::kStopReading:
        stop_reading_ = (in.U8() & 1) != 0;
        Pump();
        break;
      case SessionOp::kHalfClose:
        if (client_ != nullptr) ::shutdown(client_->fd(), SHUT_WR);
        half_closed_ = true;
        Pump();
        break;
      case SessionOp::kReconnect:
        CloseClient();
        if (!Connect()) return;
        aligned_ = true;
        half_closed_ = false;
        last_command_id_.reset();
        break;
      case SessionOp::kSecondClient:
        OpSecondClient(in);
        break;
      case SessionOp::kTwinMessage:
        OpMessage(in, /*twin=*/true);
        break;
      case SessionOp::kDeviceEvent:
        OpDeviceEvent(in);
        break;
      case SessionOp::kClientMischief:
        OpClientMischief(in);
        break;
    }
  }
  ProbeLiveness();
}

void SessionFuzzRun::ProbeLiveness() {
  stop_reading_ = false;
  Pump();
  if (client_ == nullptr || client_dead_ || half_closed_ || !aligned_) return;
  // A well-behaved client answers what the server asked (a server may hold
  // back later commands while its own request on the same socket waits;
  // its timeout cannot expire here, no time passes).
  for (int i = 0; i < 64 && !server_requests_.empty() && !client_dead_; ++i) {
    const uint8_t answer[] = {/*mode: well formed*/ 2, 0, 0, 0, 0, 0, 0};
    Reader well_formed(answer, sizeof(answer));
    OpReplyToServer(well_formed);
  }
  if (client_dead_ || !aligned_) return;
  // Commands are answered in order: the last one answered means all were.
  // (Checked before sending anything new, which would wake a stuck session.)
  Check(!last_command_id_ || last_command_answered_,
        "a command sent earlier was neither answered nor was the connection closed");
  DeviceInfo info;
  probe_id_ = next_msg_id_;
  probe_answered_ = false;
  const Bytes probe =
      Frame(static_cast<uint16_t>(Command::kDeviceGetInfo), 0, ByteSpan(EncodeDeviceInfo(info)));
  if (!SendBytes(client_->fd(), ByteSpan(probe), {})) return;  // gone
  for (int i = 0; i < 16 && !probe_answered_ && !client_dead_; ++i) Pump();
  Check(probe_answered_ || client_dead_,
        "the server neither answered a command nor closed the connection");
}

void SessionFuzzRun::Teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  stop_reading_ = false;
  if (loop_ != nullptr) {
    CloseClient();
    server_.reset();
    Check(loop_->RunUntilIdle(), "the server loop never becomes idle");
  }
  // The devices join their workers; the loop outlives them (their destructors
  // may unwatch fds).
  dma_device_.reset();
  idio_.reset();
  if (loop_ != nullptr) loop_->RunUntilIdle();
  loop_.reset();
  kept_memfds_.clear();
  kept_pipe_writers_.clear();
  dma_buffers_.clear();
}

}  // namespace

SessionRunStats RunSessionFuzzInput(const uint8_t* data, size_t size) {
  static const bool sigpipe_ignored = [] {
    ::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)sigpipe_ignored;
  if (size == 0) return {};
  const int fds_before = CountOpenFds();
  SessionRunStats stats;
  {
    SessionFuzzRun run(data[0]);
    if (run.Setup()) {
      Reader in(data + 1, size - 1);
      run.Execute(in);
    }
    stats = run.stats();
  }
  Check(CountOpenFds() == fds_before, "file descriptors leaked");
  return stats;
}

}  // namespace fuzz
}  // namespace vfio_user
