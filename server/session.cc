#include "server/session.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"

namespace vfio_user {

// One server->client DMA transfer, split into chunks of at most the client's
// max_data_xfer_size, one chunk in flight at a time.
struct Session::PendingDma {
  bool write = false;
  uint64_t iova = 0;
  uint8_t* out = nullptr;       // DMA_READ destination
  const uint8_t* in = nullptr;  // DMA_WRITE source
  size_t len = 0;
  size_t done_bytes = 0;
  size_t chunk = 0;  // size of the chunk in flight
  DmaDone done;
  EventLoop::TimerId timer = 0;
};

namespace {

PeerCredentials ReadPeerCredentials(int fd) {
  PeerCredentials creds;
  struct ucred uc {};
  socklen_t len = sizeof(uc);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0) {
    creds.pid = uc.pid;
    creds.uid = uc.uid;
    creds.gid = uc.gid;
  }
  return creds;
}

// Fails a command that must not carry fds if it did (closing them).
absl::Status RejectFds(Message& msg) {
  if (!msg.fds.empty() || msg.fds_truncated) {
    msg.fds.clear();
    return ErrnoError(EINVAL, absl::StrCat(CommandName(msg.header.cmd),
                                           " must not carry file descriptors"));
  }
  return absl::OkStatus();
}

}  // namespace

Session::Session(Device* device, EventLoop* loop, UniqueFd socket,
                 SessionOptions options, CloseCallback on_close)
    : device_(device),
      loop_(loop),
      options_(options),
      on_close_(std::move(on_close)) {
  peer_ = ReadPeerCredentials(socket.get());
  TransportOptions topts;
  topts.nonblocking = true;
  topts.max_fds_in = options_.max_msg_fds;
  topts.max_fds_out = 1;  // until VERSION tells us the client's limit
  // Largest legal message: a max-size REGION_WRITE (16 + 16 + data).
  topts.max_msg_size =
      static_cast<uint32_t>(std::min<uint64_t>(options_.max_data_xfer_size + 64, 1u << 30));
  conn_ = std::make_unique<Connection>(std::move(socket), topts, options_.os);
}

Session::~Session() {
  *alive_ = false;
  if (!closed_) Close(absl::CancelledError("session destroyed"));
}

absl::Status Session::Start() {
  Connection* conn = conn_.get();
  return loop_->WatchFd(conn->fd(), EPOLLIN | EPOLLRDHUP,
                        [this, conn](uint32_t ev) { OnSocketEvent(conn, ev); });
}

DecodeLimits Session::limits() const {
  DecodeLimits l;
  l.max_data_xfer_size = options_.max_data_xfer_size;
  return l;
}

Connection* Session::dma_connection() {
  return twin_ ? twin_.get() : conn_.get();
}

void Session::Close(const absl::Status& why) {
  if (closed_) return;
  closed_ = true;
  loop_->UnwatchFd(conn_->fd());
  if (twin_) loop_->UnwatchFd(twin_->fd());
  twin_owned_ = false;
  if (dma_channel_) {
    // No new device-thread accesses; the Shutdown below ends a running one.
    dma_channel_->Close();
    device_->SetDmaChannel(nullptr);
  }
  conn_->Shutdown();
  if (twin_) twin_->Shutdown();
  FailPendingDma(ErrnoError(ECONNRESET, "client disconnected"));
  if (mig_state_ != MigrationState::kRunning && device_->migration().set_running) {
    device_->migration().set_running(true);
  }
  Log(IsPeerClosed(why) ? LogLevel::kInfo : LogLevel::kWarn, "session",
      "client disconnected",
      {{"device", device_->name()},
       {"pid", absl::StrCat(peer_.pid)},
       {"reason", why.ToString()}});
  if (on_close_) on_close_(this, why);
}

bool Session::ReapIfPeerGone() {
  if (closed_) return false;
  pollfd p{conn_->fd(), POLLRDHUP, 0};
  if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
    // Drain whatever is left (bounded by the per-wakeup budget each round).
    for (int i = 0; i < 1024 && !closed_; ++i) {
      OnSocketEvent(conn_.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP);
    }
  }
  return !closed_;
}

void Session::OnSocketEvent(Connection* conn, uint32_t events) {
  if (closed_) return;
  bool drained = false;
  if (events & EPOLLOUT) {
    absl::Status st = conn->FlushPending();
    if (!st.ok()) {
      Close(st);
      return;
    }
    UpdateInterest(conn);
    if (closed_) return;
    drained = !conn->HasPendingOutput();
  }
  const bool readable = (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) != 0;
  // Commands read ahead before the output backed up may still sit in the
  // connection's buffer: the socket will not report them again, so serve
  // them as soon as the output has drained.
  if ((readable || (drained && conn->HasBufferedInput())) && !conn->HasPendingOutput()) {
    ReadMessages(conn);
  }
}

void Session::UpdateInterest(Connection* conn) {
  // While replies are queued, stop reading commands (backpressure).
  const uint32_t events = conn->HasPendingOutput() ? EPOLLOUT : (EPOLLIN | EPOLLRDHUP);
  absl::Status st = loop_->ModifyFd(conn->fd(), events);
  if (!st.ok()) Close(st);
}

void Session::ReadMessages(Connection* conn) {
  for (int i = 0; i < options_.max_messages_per_wakeup && !closed_; ++i) {
    // One reused Message: no allocation per message once warmed up.
    absl::StatusOr<bool> got = conn->ReceiveInto(&in_msg_);
    if (!got.ok()) {
      if (auto bad = conn->last_bad_header(); bad && !bad->is_reply() &&
                                              !bad->no_reply()) {
        // Best effort: tell the client why before closing.
        (void)conn->Send(MakeErrorReply(*bad, ErrnoOf(got.status())));
      }
      device_->mutable_counters().errors++;
      Close(got.status());
      return;
    }
    if (!*got) return;  // EAGAIN: wait for more bytes
    // More requests arrived with this one (a pipelining client): queue the
    // small replies and send the burst's replies in one sendmsg(). The last
    // request of a burst finds the others' replies queued: its reply joins
    // them (queued output here is only ever coalesced replies: with output
    // backed up the session does not read).
    const bool more = conn->HasBufferedMessage();
    conn->set_coalescing(more || conn->HasPendingOutput());
    HandleMessage(conn, in_msg_);
    conn->set_coalescing(false);
    in_msg_.fds.clear();  // whatever a handler did not take is closed now
    if (closed_) return;
    if (more && i + 1 < options_.max_messages_per_wakeup) continue;
    if (conn->HasPendingOutput()) {
      absl::Status flushed = conn->FlushPending();
      if (!flushed.ok()) {
        Close(flushed);
        return;
      }
    }
    if (conn->HasPendingOutput()) {
      UpdateInterest(conn);
      return;
    }
    // The socket was empty at the last read and no whole message is
    // buffered: back to epoll (level-triggered, so bytes that arrive
    // meanwhile wake us) rather than a recvmsg() that finds nothing.
    if (conn->InputDrained()) return;
  }
  // Budget exhausted with data possibly still buffered: come back later
  // without waiting for a new edge (level-triggered epoll covers the socket;
  // bytes already in our buffer need an explicit re-run).
  if (!closed_ && conn->HasBufferedInput()) {
    loop_->Post([this, conn, alive = alive_] {
      if (*alive && !closed_) ReadMessages(conn);
    });
  }
}

void Session::HandleMessage(Connection* conn, Message& msg) {
  device_->mutable_counters().messages++;
  if (msg.header.is_reply()) {
    HandleReply(msg);
    return;
  }
  if (conn != conn_.get()) {
    // The twin socket carries only our requests and the client's replies.
    Close(ErrnoError(EPROTO, "command received on the twin socket"));
    return;
  }
  HandleCommand(msg);
}

void Session::SendOrClose(Connection* conn, const Message& msg) {
  absl::Status st = conn->Send(msg);
  if (!st.ok()) Close(st);
}

void Session::SendReplyOrClose(const Header& request,
                               absl::Span<const uint8_t> part1,
                               absl::Span<const uint8_t> part2,
                               bool reference_part2) {
  Header reply;
  reply.msg_id = request.msg_id;
  reply.cmd = request.cmd;
  reply.flags = kFlagsTypeReply;
  absl::Status st = reference_part2
                        ? conn_->SendPartsReferencing(reply, part1, part2)
                        : conn_->SendParts(reply, part1, part2);
  if (!st.ok()) Close(st);
}

void Session::HandleCommand(Message& msg) {
  const Header request = msg.header;
  if (!negotiated_ && msg.command() != Command::kVersion) {
    if (!request.no_reply()) {
      (void)conn_->Send(MakeErrorReply(request, EINVAL));
    }
    Close(ErrnoError(EPROTO, absl::StrCat(CommandName(request.cmd),
                                          " before VERSION")));
    return;
  }
  // The hot path: region accesses reply from the stack (no Reply vector).
  if (msg.command() == Command::kRegionRead ||
      msg.command() == Command::kRegionWrite) {
    const bool is_read = msg.command() == Command::kRegionRead;
    absl::Status st = is_read ? HandleRegionRead(msg) : HandleRegionWrite(msg);
    if (!st.ok()) {
      device_->mutable_counters().errors++;
      // Reads of unimplemented registers are routine: debug level for them.
      Log(is_read ? LogLevel::kDebug : LogLevel::kWarn, "session",
          is_read ? "REGION_READ failed" : "command failed",
          {{"device", device_->name()},
           {"cmd", CommandName(request.cmd)},
           {"error", st.ToString()}});
      if (!request.no_reply()) SendOrClose(conn_.get(), MakeErrorReply(request, ErrnoOf(st)));
    }
    return;
  }
  absl::StatusOr<Reply> reply = Dispatch(msg);
  msg.fds.clear();  // anything not consumed by the handler is closed here
  if (!reply.ok()) {
    device_->mutable_counters().errors++;
    Log(LogLevel::kWarn, "session", "command failed",
        {{"device", device_->name()},
         {"cmd", CommandName(request.cmd)},
         {"error", reply.status().ToString()}});
    if (!request.no_reply()) {
      SendOrClose(conn_.get(), MakeErrorReply(request, ErrnoOf(reply.status())));
    }
    if (request.cmd == static_cast<uint16_t>(Command::kVersion)) {
      Close(reply.status());  // a failed handshake ends the connection
    }
    return;
  }
  if (request.no_reply()) return;
  if (!reply->owned_fd && reply->fd < 0) {
    SendReplyOrClose(request, reply->payload);
    return;
  }
  Message out = MakeReply(request, std::move(reply->payload));
  if (reply->owned_fd) {
    out.fds.push_back(std::move(reply->owned_fd));
  }
  if (reply->fd >= 0) {
    // Borrowed fd: Connection sends fds by value; hand it a dup so the
    // region's own fd stays ours.
    int dup = ::fcntl(reply->fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      SendOrClose(conn_.get(), MakeErrorReply(request, errno));
      return;
    }
    out.fds.emplace_back(dup);
  }
  SendOrClose(conn_.get(), out);
}

absl::StatusOr<Session::Reply> Session::Dispatch(Message& msg) {
  const ByteSpan payload(msg.payload);
  switch (msg.command()) {
    case Command::kVersion:
      return HandleVersion(msg);
    case Command::kDmaMap:
      return HandleDmaMap(msg);
    case Command::kDmaUnmap:
      return HandleDmaUnmap(msg);
    case Command::kDeviceGetInfo: {
      if (absl::Status st = RejectFds(msg); !st.ok()) return st;
      auto req = DecodeDeviceInfoRequest(payload);
      if (!req.ok()) return req.status();
      return Reply{EncodeDeviceInfo(device_->GetInfo())};
    }
    case Command::kDeviceGetRegionInfo:
      return HandleRegionInfo(msg);
    case Command::kDeviceGetRegionIoFds:
      return HandleRegionIoFds(msg);
    case Command::kDeviceGetIrqInfo: {
      if (absl::Status st = RejectFds(msg); !st.ok()) return st;
      auto req = DecodeIrqInfoRequest(payload);
      if (!req.ok()) return req.status();
      auto info = device_->irqs().Info(req->index);
      if (!info.ok()) return info.status();
      return Reply{EncodeIrqInfo(*info)};
    }
    case Command::kDeviceSetIrqs:
      return HandleSetIrqs(msg);
    case Command::kDeviceReset: {
      if (absl::Status st = RejectFds(msg); !st.ok()) return st;
      if (absl::Status st = DecodeEmptyPayload(payload); !st.ok()) return st;
      device_->Reset(ResetReason::kClientRequest);
      if (mig_state_ != MigrationState::kRunning) {
        mig_state_ = MigrationState::kRunning;  // reset leaves ERROR etc.
        mig_buffer_.clear();
        mig_offset_ = 0;
      }
      return Reply{};
    }
    case Command::kRegionWriteMulti:
      return HandleWriteMulti(msg);
    case Command::kDeviceFeature:
      return HandleDeviceFeature(msg);
    case Command::kMigDataRead:
      return HandleMigDataRead(msg);
    case Command::kMigDataWrite:
      return HandleMigDataWrite(msg);
    case Command::kDmaRead:
    case Command::kDmaWrite:
      return ErrnoError(EINVAL, "DMA_READ/DMA_WRITE are server-to-client requests");
    case Command::kRegionRead:
    case Command::kRegionWrite:
      break;  // handled before Dispatch
  }
  return ErrnoError(ENOSYS, absl::StrCat("unknown command ", msg.header.cmd));
}

absl::StatusOr<Session::Reply> Session::HandleVersion(Message& msg) {
  if (negotiated_) return ErrnoError(EINVAL, "VERSION sent twice");
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto request = DecodeVersion(ByteSpan(msg.payload));
  if (!request.ok()) return request.status();
  ServerVersionPolicy policy;
  policy.own.max_msg_fds = options_.max_msg_fds;
  policy.own.has_max_msg_fds = true;
  policy.own.max_data_xfer_size = options_.max_data_xfer_size;
  policy.own.max_dma_maps = device_->max_dma_maps();
  policy.own.pgsizes = kDefaultPgsizes;
  policy.own.write_multiple = options_.advertise_write_multiple;
  policy.offer_twin_socket = options_.offer_twin_socket;
  auto negotiation = ServerNegotiate(*request, msg.payload.size(), policy);
  if (!negotiation.ok()) return negotiation.status();
  peer_caps_ = negotiation->peer;
  conn_->set_max_fds_out(peer_caps_.max_msg_fds);
  // DMA_READ/WRITE use the spec layout (count u64, data @16) with every
  // peer, QEMU included: QEMU 11.1 reads and writes that layout (measured,
  // docs/QEMU-INTEROP.md); the count-u32/data-@12 layout PROTOCOL.md §3.10
  // read in older QEMU source is rejected by it (DMA_READ EINVAL, DMA_WRITE
  // E2BIG).
  dma_layout_ = DmaLayout::kSpec;
  Reply reply;
  reply.payload = EncodeVersion(negotiation->reply);
  if (negotiation->twin_local) {
    TransportOptions topts = conn_->options();
    twin_ = std::make_shared<Connection>(std::move(negotiation->twin_local), topts,
                                         options_.os);
    twin_->set_max_fds_in(0);
    DmaChannel::Options channel_options;
    channel_options.layout = dma_layout_;
    channel_options.max_chunk = peer_caps_.max_data_xfer_size;
    channel_options.timeout = options_.dma_timeout;
    // Both callbacks come from device threads: hop to the loop, where the
    // session may already be gone.
    EventLoop* loop = loop_;
    dma_channel_ = std::make_shared<DmaChannel>(
        twin_, channel_options, device_,
        [loop, alive = alive_, this](const absl::Status& why) {
          loop->Post([alive, this, why] {
            if (*alive) Close(why);
          });
        },
        [loop, alive = alive_, this] {
          loop->Post([alive, this] {
            if (*alive) ResumeDeferredDma();
          });
        });
    reply.owned_fd = std::move(negotiation->twin_remote);
  }
  negotiated_ = true;
  Log(LogLevel::kInfo, "session", "client attached",
      {{"device", device_->name()},
       {"pid", absl::StrCat(peer_.pid)},
       {"uid", absl::StrCat(peer_.uid)},
       {"version", absl::StrCat(request->major, ".", negotiation->minor)},
       {"twin_socket", twin_ ? "yes" : "no"}});
  device_->Attach(this);
  if (dma_channel_) device_->SetDmaChannel(dma_channel_);
  if (on_attached_) on_attached_(peer_);
  return reply;
}

absl::StatusOr<Session::Reply> Session::HandleDmaMap(Message& msg) {
  if (msg.fds_truncated || msg.fds.size() > 1) {
    return ErrnoError(EINVAL, "DMA_MAP carries at most one fd");
  }
  auto req = DecodeDmaMap(ByteSpan(msg.payload));
  if (!req.ok()) return req.status();
  UniqueFd fd = msg.fds.empty() ? UniqueFd() : std::move(msg.fds[0]);
  absl::Status st = device_->dma().Map(*req, std::move(fd));
  if (!st.ok()) return st;
  device_->mutable_counters().dma_maps++;
  return Reply{};
}

absl::StatusOr<Session::Reply> Session::HandleDmaUnmap(Message& msg) {
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto req = DecodeDmaUnmap(ByteSpan(msg.payload));
  if (!req.ok()) return req.status();
  if (req->flags & kDmaUnmapFlagAll) {
    device_->dma().UnmapAll();
  } else {
    absl::Status st = device_->dma().Unmap(req->address, req->size);
    if (!st.ok()) return st;
  }
  device_->mutable_counters().dma_unmaps++;
  DmaUnmapRequest echo = *req;
  echo.argsz = sizeof(uint32_t) * 2 + sizeof(uint64_t) * 2;
  return Reply{EncodeDmaUnmap(echo)};
}

absl::StatusOr<Session::Reply> Session::HandleRegionInfo(Message& msg) {
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto req = DecodeRegionInfoRequest(ByteSpan(msg.payload));
  if (!req.ok()) return req.status();
  auto info = device_->GetRegionInfo(req->index);
  if (!info.ok()) return info.status();
  bool caps_fit = false;
  Reply reply;
  reply.payload = EncodeRegionInfo(*info, req->argsz, &caps_fit);
  if ((info->flags & kRegionInfoFlagMmap) && caps_fit) {
    reply.fd = device_->RegionFd(req->index);
  }
  return reply;
}

absl::StatusOr<Session::Reply> Session::HandleRegionIoFds(Message& msg) {
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto req = DecodeRegionIoFdsRequest(ByteSpan(msg.payload));
  if (!req.ok()) return req.status();
  if (req->index >= device_->num_regions() || device_->region(req->index) == nullptr) {
    return ErrnoError(EINVAL, absl::StrCat("no region ", req->index));
  }
  // No region of ours is backed by ioeventfds: report zero entries.
  RegionIoFdsReply reply;
  reply.index = req->index;
  return Reply{EncodeRegionIoFdsReply(reply, req->argsz)};
}

absl::StatusOr<Session::Reply> Session::HandleSetIrqs(Message& msg) {
  if (msg.fds_truncated) {
    msg.fds.clear();
    return ErrnoError(EINVAL, "SET_IRQS carried more fds than max_msg_fds");
  }
  auto req = DecodeSetIrqs(ByteSpan(msg.payload));
  if (!req.ok()) return req.status();
  absl::Status st = device_->irqs().SetIrqs(*req, std::move(msg.fds));
  if (!st.ok()) return st;
  return Reply{};
}

absl::Status Session::HandleRegionRead(Message& msg) {
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto req = DecodeRegionReadRequest(ByteSpan(msg.payload), limits());
  if (!req.ok()) return req.status();
  if (read_buf_.size() < req->count) read_buf_.resize(req->count);
  absl::Span<uint8_t> data(read_buf_.data(), req->count);
  absl::Status st = device_->RegionRead(req->region, req->offset, data);
  if (!st.ok()) return st;
  device_->mutable_counters().region_reads++;
  if (msg.header.no_reply()) return absl::OkStatus();
  uint8_t access[16];
  EncodeRegionAccessHeaderTo(req->offset, req->region, req->count, access);
  // The data is read_buf_: a large reply the socket cannot take at once is
  // queued without copying it.
  SendReplyOrClose(msg.header, ByteSpan(access, sizeof(access)), data,
                   /*reference_part2=*/true);
  return absl::OkStatus();
}

absl::Status Session::HandleRegionWrite(Message& msg) {
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto req = DecodeRegionWriteRequest(ByteSpan(msg.payload), limits());
  if (!req.ok()) return req.status();
  absl::Status st = device_->RegionWrite(req->region, req->offset, req->data);
  if (!st.ok()) return st;
  device_->mutable_counters().region_writes++;
  if (msg.header.no_reply()) return absl::OkStatus();
  uint8_t access[16];
  EncodeRegionAccessHeaderTo(req->offset, req->region, req->count, access);
  SendReplyOrClose(msg.header, ByteSpan(access, sizeof(access)));
  return absl::OkStatus();
}

absl::StatusOr<Session::Reply> Session::HandleWriteMulti(Message& msg) {
  if (absl::Status st = RejectFds(msg); !st.ok()) return st;
  auto entries = DecodeRegionWriteMulti(ByteSpan(msg.payload), limits());
  if (!entries.ok()) return entries.status();
  uint64_t completed = 0;
  for (const WriteMultiEntry& e : *entries) {
    absl::Status st = device_->RegionWrite(e.region, e.offset,
                                           absl::Span<const uint8_t>(e.data, e.count));
    if (!st.ok()) {
      if (completed == 0) return st;
      break;  // report how many were applied, in order
    }
    ++completed;
    device_->mutable_counters().region_writes++;
  }
  return Reply{EncodeRegionWriteMultiReply(completed)};
}

void Session::HandleReply(Message& msg) {
  auto it = pending_dma_.find(msg.header.msg_id);
  if (it == pending_dma_.end() ||
      (msg.header.cmd != static_cast<uint16_t>(Command::kDmaRead) &&
       msg.header.cmd != static_cast<uint16_t>(Command::kDmaWrite))) {
    // A reply nobody waits for: the stream is not trustworthy any more.
    Close(ErrnoError(EPROTO, absl::StrCat("unexpected reply msg_id=", msg.header.msg_id,
                                          " cmd=", CommandName(msg.header.cmd))));
    return;
  }
  std::shared_ptr<PendingDma> op = it->second;
  pending_dma_.erase(it);
  loop_->CancelTimer(op->timer);
  msg.fds.clear();
  absl::Status result;
  const bool want_write = op->write;
  if ((msg.header.cmd == static_cast<uint16_t>(Command::kDmaWrite)) != want_write) {
    result = ErrnoError(EPROTO, "DMA reply command mismatch");
  } else if (msg.header.is_error()) {
    result = ErrnoError(SanitizePeerErrno(msg.header.error), "client failed DMA request");
  } else if (!want_write) {
    auto reply = DecodeDmaReadReply(ByteSpan(msg.payload), op->chunk);
    if (!reply.ok()) {
      result = reply.status();
    } else if (reply->address != op->iova + op->done_bytes ||
               reply->data.size() != op->chunk) {
      result = ErrnoError(EPROTO, "DMA_READ reply does not match the request");
    } else {
      std::memcpy(op->out + op->done_bytes, reply->data.data(), op->chunk);
    }
  } else {
    result = CheckDmaWriteReply(ByteSpan(msg.payload), op->iova + op->done_bytes,
                                op->chunk);
  }
  if (!result.ok()) {
    op->done(result);
    return;
  }
  if (want_write) device_->dma().MarkDirty(op->iova + op->done_bytes, op->chunk);
  op->done_bytes += op->chunk;
  if (op->done_bytes == op->len) {
    op->done(absl::OkStatus());
    return;
  }
  StartDmaChunk(op);
}

void Session::DmaReadByMessage(uint64_t iova, uint8_t* out, size_t len, DmaDone done) {
  auto op = std::make_shared<PendingDma>();
  op->iova = iova;
  op->out = out;
  op->len = len;
  op->done = std::move(done);
  StartDmaChunk(std::move(op));
}

void Session::DmaWriteByMessage(uint64_t iova, const uint8_t* in, size_t len,
                                DmaDone done) {
  auto op = std::make_shared<PendingDma>();
  op->write = true;
  op->iova = iova;
  op->in = in;
  op->len = len;
  op->done = std::move(done);
  StartDmaChunk(std::move(op));
}

void Session::StartDmaChunk(std::shared_ptr<PendingDma> op) {
  if (closed_ || !negotiated_) {
    op->done(ErrnoError(ENOTCONN, "no client"));
    return;
  }
  if (op->len == 0) {
    op->done(absl::OkStatus());
    return;
  }
  if (twin_ && !TakeTwinForLoop()) {
    deferred_dma_.push_back(std::move(op));  // a device thread has it now
    return;
  }
  const uint64_t max_chunk = std::max<uint64_t>(1, peer_caps_.max_data_xfer_size);
  op->chunk = static_cast<size_t>(std::min<uint64_t>(op->len - op->done_bytes, max_chunk));
  // Ids come from the channel when there is one: device threads number
  // their requests on the same socket.
  const auto next_id = [this] {
    return dma_channel_ ? dma_channel_->NextMsgId() : next_dma_msg_id_++;
  };
  uint16_t id = next_id();
  while (pending_dma_.contains(id)) id = next_id();
  const uint64_t address = op->iova + op->done_bytes;
  Header h;
  h.msg_id = id;
  h.flags = kFlagsTypeCommand;
  uint8_t access[16];
  const size_t access_size = DmaAccessHeaderSize(dma_layout_);
  EncodeDmaAccessHeaderTo(address, op->chunk, dma_layout_, access);
  absl::Status st;
  Connection* conn = dma_connection();
  if (op->write) {
    h.cmd = static_cast<uint16_t>(Command::kDmaWrite);
    st = conn->SendParts(h, ByteSpan(access, access_size),
                         ByteSpan(op->in + op->done_bytes, op->chunk));
  } else {
    h.cmd = static_cast<uint16_t>(Command::kDmaRead);
    st = conn->SendParts(h, ByteSpan(access, access_size));
  }
  if (!st.ok()) {
    op->done(st);
    Close(st);
    return;
  }
  device_->mutable_counters().dma_messages++;
  pending_dma_[id] = op;
  op->timer = loop_->RunAfter(options_.dma_timeout, [this, id] {
    auto it = pending_dma_.find(id);
    if (it == pending_dma_.end()) return;
    std::shared_ptr<PendingDma> timed_out = it->second;
    pending_dma_.erase(it);
    timed_out->done(ErrnoError(ETIMEDOUT, "client did not answer a DMA request"));
    // A late reply would now be unmatched; the stream cannot be trusted.
    Close(ErrnoError(ETIMEDOUT, "DMA request timed out"));
  });
  if (conn->HasPendingOutput()) UpdateInterest(conn);
}

void Session::FailPendingDma(const absl::Status& why) {
  auto pending = std::move(pending_dma_);
  pending_dma_.clear();
  for (auto& [id, op] : pending) {
    loop_->CancelTimer(op->timer);
    op->done(why);
  }
  std::vector<std::shared_ptr<PendingDma>> deferred = std::move(deferred_dma_);
  deferred_dma_.clear();
  for (const std::shared_ptr<PendingDma>& op : deferred) op->done(why);
}

bool Session::TakeTwinForLoop() {
  if (twin_owned_) return true;
  if (!dma_channel_->TryAcquireForLoop()) return false;
  Connection* twin = twin_.get();
  absl::Status st = loop_->WatchFd(twin->fd(), EPOLLIN | EPOLLRDHUP,
                                   [this, twin](uint32_t ev) {
                                     OnSocketEvent(twin, ev);
                                     ReleaseTwinIfIdle();
                                   });
  if (!st.ok()) {
    dma_channel_->ReleaseFromLoop();
    Close(st);
    return false;
  }
  twin_owned_ = true;
  return true;
}

void Session::ReleaseTwinIfIdle() {
  // Every pending request is on the twin socket when there is one.
  if (closed_ || !twin_owned_ || !pending_dma_.empty() ||
      !deferred_dma_.empty() || twin_->HasPendingOutput()) {
    return;
  }
  loop_->UnwatchFd(twin_->fd());
  twin_owned_ = false;
  dma_channel_->ReleaseFromLoop();
}

void Session::ResumeDeferredDma() {
  std::vector<std::shared_ptr<PendingDma>> deferred = std::move(deferred_dma_);
  deferred_dma_.clear();
  for (std::shared_ptr<PendingDma>& op : deferred) {
    if (closed_) {
      op->done(ErrnoError(ECONNRESET, "client disconnected"));
    } else {
      StartDmaChunk(std::move(op));
    }
  }
}

}  // namespace vfio_user
