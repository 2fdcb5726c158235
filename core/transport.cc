#include "core/transport.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstring>

#include "absl/container/inlined_vector.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/protocol.h"

namespace vfio_user {
namespace {

// The output queue is compacted once this many sent bytes sit in front.
constexpr size_t kOutputCompactBytes = 64 * 1024;
// Linux never passes more fds in one SCM_RIGHTS message (SCM_MAX_FD).
constexpr uint32_t kKernelMaxFds = 253;
// Longest single wait inside a blocking recvmsg() (SO_RCVTIMEO). Deadlines
// further away keep this value, so setsockopt() is called only when a
// deadline comes within a slice.
constexpr absl::Duration kReceiveSlice = absl::Seconds(1);

constexpr char kPeerClosedPayloadUrl[] = "vfio-user/peer-closed";

absl::Status PeerClosedError() {
  absl::Status status = ErrnoError(ECONNRESET, "peer closed");
  status.SetPayload(kPeerClosedPayloadUrl, absl::Cord("1"));
  return status;
}

bool IsWouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

bool IsDisconnect(int err) {
  return err == EPIPE || err == ECONNRESET || err == ENOTCONN;
}

// Poll timeout for `deadline`: -1 = forever, else whole milliseconds rounded
// up (so a wait never ends just before the deadline), clamped to int.
int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  const int64_t ms = absl::ToInt64Milliseconds(
      absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

// The fields of a header that failed validation, for last_bad_header().
// REQUIRES: bytes.size() >= kHeaderSize.
Header RawHeader(absl::Span<const uint8_t> bytes) {
  Header h;
  std::memcpy(&h.msg_id, bytes.data() + 0, 2);
  std::memcpy(&h.cmd, bytes.data() + 2, 2);
  std::memcpy(&h.msg_size, bytes.data() + 4, 4);
  std::memcpy(&h.flags, bytes.data() + 8, 4);
  std::memcpy(&h.error, bytes.data() + 12, 4);
  return h;
}

// Fills `addr` for `path`. ENAMETOOLONG if it does not fit with its NUL.
absl::Status MakeUnixAddress(const std::string& path, struct sockaddr_un* addr,
                             socklen_t* len) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (path.empty()) return ErrnoError(EINVAL, "empty socket path");
  if (path.size() >= sizeof(addr->sun_path)) {
    return ErrnoError(ENAMETOOLONG,
                      absl::StrCat("socket path is ", path.size(),
                                   " bytes; the limit is ",
                                   sizeof(addr->sun_path) - 1, ": ", path));
  }
  if (path.find('\0') != std::string::npos) {
    return ErrnoError(EINVAL, "socket path contains a NUL byte");
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) +
                                path.size() + 1);
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> NewUnixSocket() {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError(errno, "socket(AF_UNIX)");
  return fd;
}

// connect() that finishes the connection when interrupted by a signal.
int ConnectRetryingEintr(int fd, const struct sockaddr_un& addr,
                         socklen_t len) {
  if (::connect(fd, reinterpret_cast<const struct sockaddr*>(&addr), len) ==
      0) {
    return 0;
  }
  if (errno != EINTR) return -1;
  // The connection proceeds asynchronously; wait for it and fetch the result.
  struct pollfd p = {fd, POLLOUT, 0};
  while (::poll(&p, 1, -1) < 0) {
    if (errno != EINTR) return -1;
  }
  int err = 0;
  socklen_t err_len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) return -1;
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

// Removes `path` if it is a socket nobody listens on. OK if there is
// nothing at `path` afterwards; EEXIST for a file of another type (symlinks
// included: never followed) and EADDRINUSE for a live socket.
absl::Status RemoveStaleSocket(const std::string& path,
                               const struct sockaddr_un& addr, socklen_t len) {
  struct stat before;
  if (::lstat(path.c_str(), &before) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(errno, absl::StrCat("lstat ", path));
  }
  if (!S_ISSOCK(before.st_mode)) {
    return ErrnoError(EEXIST,
                      absl::StrCat(path, " exists and is not a socket"));
  }
  absl::StatusOr<UniqueFd> probe = NewUnixSocket();
  if (!probe.ok()) return probe.status();
  if (ConnectRetryingEintr(probe->get(), addr, len) == 0) {
    return ErrnoError(EADDRINUSE,
                      absl::StrCat("a server is listening on ", path));
  }
  const int err = errno;
  if (err == ENOENT) return absl::OkStatus();  // removed meanwhile
  if (err != ECONNREFUSED) {
    return ErrnoError(err, absl::StrCat("probing existing socket ", path));
  }
  // Stale. Unlink only if it is still the very socket we probed.
  struct stat now;
  if (::lstat(path.c_str(), &now) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(errno, absl::StrCat("lstat ", path));
  }
  if (now.st_dev != before.st_dev || now.st_ino != before.st_ino) {
    return ErrnoError(EEXIST, absl::StrCat(path, " was replaced meanwhile"));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(errno, absl::StrCat("unlink stale socket ", path));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// OutputCursor

class Connection::OutputCursor {
 public:
  OutputCursor(absl::Span<const uint8_t> a, absl::Span<const uint8_t> b,
               absl::Span<const uint8_t> c) {
    for (absl::Span<const uint8_t> part : {a, b, c}) {
      if (part.empty()) continue;
      iov_[count_].iov_base = const_cast<uint8_t*>(part.data());
      iov_[count_].iov_len = part.size();
      remaining_ += part.size();
      ++count_;
    }
  }

  bool done() const { return remaining_ == 0; }
  bool sent_any() const { return sent_any_; }
  const struct iovec* iov() const { return iov_ + first_; }
  size_t iov_count() const { return count_ - first_; }

  // Marks `n` more bytes as sent. REQUIRES: n <= remaining bytes.
  void Advance(size_t n) {
    if (n > 0) sent_any_ = true;
    remaining_ -= n;
    while (n > 0) {
      struct iovec& v = iov_[first_];
      const size_t step = std::min(n, v.iov_len);
      v.iov_base = static_cast<uint8_t*>(v.iov_base) + step;
      v.iov_len -= step;
      n -= step;
      if (v.iov_len == 0) ++first_;
    }
  }

 private:
  struct iovec iov_[3] = {};
  size_t first_ = 0;
  size_t count_ = 0;
  size_t remaining_ = 0;
  bool sent_any_ = false;
};

// ---------------------------------------------------------------------------
// Connection: setup and teardown

Connection::Connection(UniqueFd socket, TransportOptions options, Os* os)
    : socket_(std::move(socket)),
      options_(options),
      os_(os != nullptr ? os : Os::Default()) {
  if (!socket_.valid()) {
    receive_error_ = send_error_ = ErrnoError(EBADF, "no socket");
    return;
  }
  // Non-blocking mode passes MSG_DONTWAIT on every call and leaves the fd's
  // flags alone; blocking mode needs a blocking fd to wait inside recvmsg().
  if (options_.nonblocking) return;
  const int flags = ::fcntl(socket_.get(), F_GETFL);
  if (flags < 0 || ((flags & O_NONBLOCK) != 0 &&
                    ::fcntl(socket_.get(), F_SETFL, flags & ~O_NONBLOCK) != 0)) {
    receive_error_ = send_error_ = ErrnoError(errno, "clearing O_NONBLOCK");
  }
}

Connection::~Connection() {
  // Queued and received fds close with their UniqueFds. Nothing useful can
  // be done about a failing close() of the socket here.
  if (socket_.valid()) os_->Close(socket_.Release());
}

void Connection::Shutdown() {
  if (socket_.valid()) ::shutdown(socket_.get(), SHUT_RDWR);
}

absl::Status Connection::WaitForSocket(short events, absl::Time deadline,
                                       const char* what) {
  for (;;) {
    const int timeout_ms = PollTimeoutMs(deadline);
    if (timeout_ms == 0) {
      return ErrnoError(ETIMEDOUT, absl::StrCat(what, " timed out"));
    }
    struct pollfd p = {socket_.get(), events, 0};
    const int ready = os_->Poll(&p, 1, timeout_ms);
    if (ready > 0) return absl::OkStatus();  // the next syscall tells more
    if (ready < 0 && errno != EINTR) {
      return ErrnoError(errno, absl::StrCat("poll while waiting to ", what));
    }
    // Timed out or interrupted: the deadline is checked again above.
  }
}

// ---------------------------------------------------------------------------
// Receiving

absl::StatusOr<std::optional<Message>> Connection::Receive() {
  Message msg;
  absl::StatusOr<bool> got = ReceiveInto(&msg);
  if (!got.ok()) return got.status();
  if (!*got) return std::optional<Message>();
  return std::optional<Message>(std::move(msg));
}

absl::StatusOr<bool> Connection::ReceiveInto(
    Message* msg, std::optional<absl::Time> deadline_override,
    const ReceivePlacement* placement) {
  absl::StatusOr<bool> got = ReceiveIntoImpl(msg, deadline_override, placement);
  // The caller's buffer is only ours during the call.
  if (!in_place_.empty()) DetachPlacement();
  return got;
}

absl::StatusOr<bool> Connection::ReceiveIntoImpl(
    Message* msg, std::optional<absl::Time> deadline_override,
    const ReceivePlacement* placement) {
  if (!receive_error_.ok()) return receive_error_;
  // Waits in blocking mode, and in non-blocking mode when given a deadline.
  const bool wait = !options_.nonblocking || deadline_override.has_value();
  absl::Time deadline = absl::InfinitePast();  // non-blocking: never wait
  if (deadline_override.has_value()) {
    deadline = *deadline_override;
  } else if (!options_.nonblocking) {
    if (options_.receive_timeout == absl::InfiniteDuration()) {
      deadline = absl::InfiniteFuture();  // spares a clock read
    } else {
      deadline = absl::Now() + options_.receive_timeout;
    }
  }
  for (;;) {
    absl::StatusOr<bool> ready = TakeBufferedMessage(msg, placement);
    if (!ready.ok()) {
      receive_error_ = ready.status();
      return receive_error_;
    }
    if (*ready) return true;

    if (wait) {
      absl::Status prepared = PrepareBlockingReceive(deadline);
      if (!prepared.ok()) return prepared;  // not final: bytes are kept
    }
    uint64_t stream_offset = 0;
    absl::Span<uint8_t> window = NextReadWindow(&stream_offset);
    if (placement != nullptr && !in_large_.has_value() && in_end_ == 0 &&
        placement->into.size() >= kPlacementPeekBytes) {
      // Nothing buffered: read the expected reply's head alone (see
      // kPlacementPeekBytes).
      window = window.first(
          std::min(window.size(), kHeaderSize + placement->keep));
    }
    const ssize_t n = ReceiveOnce(window, stream_offset, /*dont_wait=*/!wait);
    if (n > 0) {
      last_read_short_ = static_cast<size_t>(n) < window.size();
      if (in_large_.has_value()) {
        in_large_filled_ += static_cast<size_t>(n);
      } else {
        in_end_ += static_cast<size_t>(n);
      }
      continue;
    }
    const int err = n == 0 ? 0 : errno;
    if (n < 0 && IsWouldBlock(err)) {
      last_read_short_ = true;
      if (!wait) return false;
      // A timeout slice passed (or the fd was made non-blocking behind our
      // back): wait with poll, which honors the deadline exactly.
      absl::Status waited = WaitForSocket(POLLIN, deadline, "receive");
      if (!waited.ok()) return waited;  // not final: buffered bytes are kept
      continue;
    }
    if (n == 0 || err == ECONNRESET) {
      receive_error_ = HasPartialInput()
                           ? ErrnoError(EPIPE, "peer closed mid-message")
                           : PeerClosedError();
    } else {
      receive_error_ = ErrnoError(err, "recvmsg");
    }
    return receive_error_;
  }
}

absl::Status Connection::PrepareBlockingReceive(absl::Time deadline) {
  return PrepareBlockingWait(SO_RCVTIMEO, deadline, &receive_slice_);
}

absl::Status Connection::PrepareBlockingWait(int option, absl::Time deadline,
                                             absl::Duration* current) {
  absl::Duration slice = kReceiveSlice;
  if (deadline != absl::InfiniteFuture()) {
    // Integer nanoseconds: this runs before every blocking receive.
    const int64_t left_ns =
        absl::ToUnixNanos(deadline) - absl::GetCurrentTimeNanos();
    if (left_ns <= 0) {
      return ErrnoError(ETIMEDOUT, option == SO_RCVTIMEO ? "receive timed out"
                                                         : "send timed out");
    }
    if (left_ns < absl::ToInt64Nanoseconds(kReceiveSlice)) {
      // Whole microseconds, rounded up: never wake before the deadline.
      slice = absl::Microseconds((left_ns + 999) / 1000);
    }
  }
  if (slice == *current) return absl::OkStatus();
  const struct timeval tv = absl::ToTimeval(slice);
  if (::setsockopt(socket_.get(), SOL_SOCKET, option, &tv, sizeof(tv)) != 0) {
    *current = absl::ZeroDuration();  // unknown now: set it next time
    return ErrnoError(errno, "setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
  }
  *current = slice;
  return absl::OkStatus();
}

bool Connection::InputDrained() const {
  if (!options_.nonblocking || !receive_error_.ok() || !last_read_short_) {
    return false;
  }
  return !HasBufferedMessage();
}

bool Connection::HasBufferedMessage() const {
  if (in_large_.has_value()) {
    return in_large_filled_ == (in_place_.empty() ? in_large_->payload.size()
                                                  : in_place_.size());
  }
  const size_t buffered = in_end_ - in_start_;
  if (buffered < kHeaderSize) return false;
  uint32_t msg_size = 0;
  std::memcpy(&msg_size, in_buf_.get() + in_start_ + 4, sizeof(msg_size));
  // A bad msg_size (< 16) reads as "complete": Receive() reports it.
  return buffered >= msg_size;
}

absl::Span<uint8_t> Connection::LargeDestination() {
  return in_place_.empty() ? absl::MakeSpan(in_large_->payload) : in_place_;
}

uint64_t Connection::LargeDestinationOffset() const {
  return in_large_offset_ + kHeaderSize +
         (in_place_.empty() ? 0 : in_large_->payload.size());
}

void Connection::DetachPlacement() {
  std::vector<uint8_t>& payload = in_large_->payload;
  const size_t keep = payload.size();
  payload.resize(keep + in_place_.size());
  std::memcpy(payload.data() + keep, in_place_.data(), in_large_filled_);
  in_large_filled_ += keep;
  in_large_->payload_placed = false;
  in_place_ = {};
}

absl::StatusOr<bool> Connection::TakeBufferedMessage(
    Message* out, const ReceivePlacement* placement) {
  if (in_large_.has_value()) {
    if (in_large_filled_ < LargeDestination().size()) return false;
    *out = std::move(*in_large_);
    out->payload_placed = !in_place_.empty();
    in_place_ = {};
    in_large_.reset();
    const uint64_t end = in_large_offset_ + out->header.msg_size;
    AttachReceivedFds(end, out);
    // The read-ahead buffer stayed empty meanwhile; it resumes after `msg`.
    in_buf_offset_ = end;
    return true;
  }

  const size_t buffered = in_end_ - in_start_;
  if (buffered < kHeaderSize) return false;
  const absl::Span<const uint8_t> bytes(in_buf_.get() + in_start_, buffered);
  absl::StatusOr<Header> header =
      DecodeHeader(bytes.first(kHeaderSize), options_.max_msg_size);
  if (!header.ok()) {
    last_bad_header_ = RawHeader(bytes);
    return header.status();
  }
  const uint64_t msg_offset = in_buf_offset_ + in_start_;
  const size_t msg_size = header->msg_size;

  if (placement != nullptr && !placement->into.empty() &&
      header->msg_id == placement->msg_id && header->cmd == placement->cmd &&
      header->is_reply() && !header->is_error() &&
      msg_size == kHeaderSize + placement->keep + placement->into.size()) {
    const size_t head = kHeaderSize + placement->keep;
    if (buffered < head) return false;  // read on into the buffer
    out->header = *header;
    out->payload.assign(bytes.begin() + kHeaderSize, bytes.begin() + head);
    out->fds.clear();
    out->fds_truncated = false;
    out->payload_placed = true;
    const size_t have = std::min(buffered, msg_size) - head;
    std::memcpy(placement->into.data(), bytes.data() + head, have);
    if (have == placement->into.size()) {
      ConsumeInput(msg_size);
      AttachReceivedFds(msg_offset + msg_size, out);
      return true;
    }
    // The rest is received straight into the caller's buffer. All that is
    // buffered belongs to this message (buffered < msg_size).
    ConsumeInput(buffered);
    Message partial;
    partial.header = *header;
    partial.payload = std::move(out->payload);
    in_large_ = std::move(partial);
    in_large_filled_ = have;
    in_large_offset_ = msg_offset;
    in_place_ = placement->into;
    return false;
  }

  if (msg_size > in_buf_size_) {
    // Larger than the read-ahead buffer: the rest of it is received straight
    // into its payload. What is buffered is all its own (buffered <= buffer
    // size < msg_size). The payload is the caller's vector: a caller that
    // reuses its Message gets large messages without allocating (and
    // zero-filling) a buffer each time.
    Message msg;
    msg.header = *header;
    msg.payload = std::move(out->payload);
    msg.payload.resize(msg_size - kHeaderSize);
    const size_t have = buffered - kHeaderSize;
    std::memcpy(msg.payload.data(), bytes.data() + kHeaderSize, have);
    ConsumeInput(buffered);
    in_large_ = std::move(msg);
    in_large_filled_ = have;
    in_large_offset_ = msg_offset;
    return false;
  }

  if (buffered < msg_size) return false;
  out->header = *header;
  // assign() keeps the vectors' capacity: no allocation once warmed up.
  out->payload.assign(bytes.begin() + kHeaderSize, bytes.begin() + msg_size);
  out->fds.clear();
  out->fds_truncated = false;
  out->payload_placed = false;
  ConsumeInput(msg_size);
  AttachReceivedFds(msg_offset + msg_size, out);
  return true;
}

void Connection::ConsumeInput(size_t n) {
  in_start_ += n;
  if (in_start_ == in_end_) {  // empty: restart at the front for free
    in_buf_offset_ += in_end_;
    in_start_ = in_end_ = 0;
  }
}

bool Connection::HasPartialInput() const {
  return in_large_.has_value() || in_end_ > in_start_;
}

absl::Span<uint8_t> Connection::NextReadWindow(uint64_t* stream_offset) {
  if (in_large_.has_value()) {
    *stream_offset = LargeDestinationOffset() + in_large_filled_;
    return LargeDestination().subspan(in_large_filled_);
  }
  if (in_buf_ == nullptr) {
    // Not value-initialized: pages the socket never writes into stay
    // untouched (an idle connection costs no resident read-ahead memory).
    in_buf_.reset(new uint8_t[Connection::kReadAheadBytes]);
    in_buf_size_ = Connection::kReadAheadBytes;
  }
  if (in_start_ > 0) {
    // Only part of one message is left (a whole one would have been taken):
    // move it to the front so the window is as large as possible.
    const size_t left = in_end_ - in_start_;
    std::memmove(in_buf_.get(), in_buf_.get() + in_start_, left);
    in_buf_offset_ += in_start_;
    in_start_ = 0;
    in_end_ = left;
  }
  *stream_offset = in_buf_offset_ + in_end_;
  return absl::MakeSpan(in_buf_.get(), in_buf_size_).subspan(in_end_);
}

ssize_t Connection::ReceiveOnce(absl::Span<uint8_t> window,
                                uint64_t stream_offset, bool dont_wait) {
  const size_t max_fds = std::min(options_.max_fds_in, kKernelMaxFds);
  const size_t control_len =
      max_fds == 0 ? 0 : CMSG_SPACE(max_fds * sizeof(int));
  const size_t control_words = (control_len + 7) / 8;
  if (in_control_.size() < control_words) in_control_.resize(control_words);

  struct iovec iov = {window.data(), window.size()};
  struct msghdr mh;
  ssize_t n;
  do {
    std::memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control_len == 0 ? nullptr : in_control_.data();
    mh.msg_controllen = control_len;
    n = os_->RecvMsg(socket_.get(), &mh,
                     MSG_CMSG_CLOEXEC | (dont_wait ? MSG_DONTWAIT : 0));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  if (mh.msg_controllen == 0 && (mh.msg_flags & MSG_CTRUNC) == 0) return n;

  // The fds belong to the message holding the read's last byte (FdBatch).
  FdBatch batch;
  batch.offset = stream_offset + static_cast<uint64_t>(n > 0 ? n - 1 : 0);
  batch.truncated = (mh.msg_flags & MSG_CTRUNC) != 0;
  if (mh.msg_controllen > 0) {
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr;
         c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
          c->cmsg_len < CMSG_LEN(0)) {
        continue;
      }
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(c);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
        batch.fds.emplace_back(fd);
      }
    }
  }
  if (n > 0 && (batch.truncated || !batch.fds.empty())) {
    in_fds_.push_back(std::move(batch));
  }
  return n;  // fds that came with nothing (n == 0) are closed by `batch`
}

void Connection::AttachReceivedFds(uint64_t end, Message* msg) {
  // Batches are in stream order and earlier messages took theirs, so every
  // batch before `end` belongs to this message.
  size_t taken = 0;
  for (; taken < in_fds_.size() && in_fds_[taken].offset < end; ++taken) {
    FdBatch& batch = in_fds_[taken];
    msg->fds_truncated |= batch.truncated;
    for (UniqueFd& fd : batch.fds) msg->fds.push_back(std::move(fd));
  }
  if (taken == 0) return;
  in_fds_.erase(in_fds_.begin(), in_fds_.begin() + taken);
  // CMSG_SPACE padding may let the kernel pass one more fd than asked for.
  if (msg->fds.size() > options_.max_fds_in) msg->fds_truncated = true;
  // The message must be failed anyway: close what did arrive now.
  if (msg->fds_truncated) msg->fds.clear();
}

bool Connection::HasBufferedInput() const { return HasPartialInput(); }

// ---------------------------------------------------------------------------
// Sending

absl::Status Connection::Send(const Message& msg) {
  absl::InlinedVector<int, 8> fds;
  fds.reserve(msg.fds.size());
  for (const UniqueFd& fd : msg.fds) fds.push_back(fd.get());
  return SendParts(msg.header, msg.payload, {}, fds);
}

absl::Status Connection::SendParts(const Header& header,
                                   absl::Span<const uint8_t> part1,
                                   absl::Span<const uint8_t> part2,
                                   absl::Span<const int> fds) {
  return SendPartsImpl(header, part1, part2, fds, /*reference_part2=*/false,
                       std::nullopt);
}

absl::Status Connection::SendPartsReferencing(const Header& header,
                                              absl::Span<const uint8_t> part1,
                                              absl::Span<const uint8_t> part2) {
  return SendPartsImpl(header, part1, part2, {},
                       /*reference_part2=*/!part2.empty(), std::nullopt);
}

absl::Status Connection::SendPartsWaiting(const Header& header,
                                          absl::Span<const uint8_t> part1,
                                          absl::Span<const uint8_t> part2,
                                          absl::Time deadline) {
  return SendPartsImpl(header, part1, part2, {}, /*reference_part2=*/false,
                       deadline);
}

absl::Status Connection::SendPartsImpl(const Header& header,
                                       absl::Span<const uint8_t> part1,
                                       absl::Span<const uint8_t> part2,
                                       absl::Span<const int> fds,
                                       bool reference_part2,
                                       std::optional<absl::Time> wait_until) {
  if (!send_error_.ok()) return send_error_;
  if (fds.size() > options_.max_fds_out) {
    return ErrnoError(EINVAL,
                      absl::StrCat(CommandName(header.cmd), " carries ",
                                   fds.size(), " fds; the peer accepts ",
                                   options_.max_fds_out));
  }
  const uint64_t total =
      uint64_t{kHeaderSize} + part1.size() + part2.size();
  if (total > UINT32_MAX) {
    return ErrnoError(E2BIG, absl::StrCat("message of ", total,
                                          " bytes does not fit msg_size"));
  }
  Header wire = header;
  wire.msg_size = static_cast<uint32_t>(total);
  uint8_t header_bytes[kHeaderSize];
  EncodeHeader(wire, header_bytes);
  if (coalescing_ && options_.nonblocking && fds.empty() &&
      !wait_until.has_value() && total <= kMaxCoalescedMessage) {
    // Sent with the rest of the burst by the owner's FlushPending(). Copied
    // (even a part the caller let us reference: it is small).
    return Enqueue(OutputCursor(header_bytes, part1, part2), {});
  }
  if (fds.empty() && !HasPendingOutput()) {
    // The common case: one sendmsg() takes the whole message. Anything else
    // (a short write, EAGAIN, an error) continues on the general path below.
    struct iovec iov[3];
    size_t count = 0;
    iov[count++] = {header_bytes, kHeaderSize};
    if (!part1.empty()) {
      iov[count++] = {const_cast<uint8_t*>(part1.data()), part1.size()};
    }
    if (!part2.empty()) {
      iov[count++] = {const_cast<uint8_t*>(part2.data()), part2.size()};
    }
    // Blocking mode waits inside sendmsg() (one syscall even for a message
    // larger than the socket buffer), bounded by SO_SNDTIMEO.
    std::optional<absl::Time> deadline = wait_until;
    bool wait = false;
    if (!options_.nonblocking || wait_until.has_value()) {
      if (!deadline.has_value() && options_.send_timeout < kReceiveSlice) {
        deadline = absl::Now() + options_.send_timeout;
      }
      // With no deadline yet, a whole slice fits before it: no clock read
      // on this path (the deadline starts at the first wait that times out,
      // so a stuck send may take up to one slice longer than send_timeout).
      wait = PrepareBlockingWait(SO_SNDTIMEO,
                                 deadline.value_or(absl::InfiniteFuture()),
                                 &send_slice_)
                 .ok();
    }
    const ssize_t n = SendOnce(iov, count, {}, wait);
    if (n == static_cast<ssize_t>(total)) return absl::OkStatus();
    OutputCursor out(header_bytes, part1, part2);
    if (n > 0) out.Advance(static_cast<size_t>(n));
    return SendNow(out, fds, deadline, reference_part2,
                   wait_until.has_value());
  }
  OutputCursor out(header_bytes, part1, part2);

  if (HasPendingOutput()) {
    // Order: queued bytes go first. Whatever does not fit joins the queue.
    absl::Status flushed = FlushPending();
    if (!flushed.ok()) return flushed;
    if (HasPendingOutput()) return Enqueue(out, fds, reference_part2);
  }
  return SendNow(out, fds, std::nullopt, reference_part2);
}

absl::Status Connection::SendFramed(absl::Span<const uint8_t> messages) {
  if (!send_error_.ok()) return send_error_;
  if (messages.empty()) return absl::OkStatus();
  OutputCursor out(messages, {}, {});
  if (options_.nonblocking && HasPendingOutput()) return Enqueue(out, {});
  return SendNow(out, {});
}

absl::Status Connection::SendNow(OutputCursor& out, absl::Span<const int> fds,
                                 std::optional<absl::Time> deadline,
                                 bool reference_last, bool wait) {
  // Blocking mode: without a deadline from the caller it starts at the
  // first wait (the common case, a socket with room, reads no clock).
  while (!out.done()) {
    // The fds ride the first sendmsg that takes any byte, i.e. the header's.
    const absl::Span<const int> attach =
        out.sent_any() ? absl::Span<const int>() : fds;
    const ssize_t n = SendOnce(out.iov(), out.iov_count(), attach, false);
    if (n > 0) {
      out.Advance(static_cast<size_t>(n));
      continue;
    }
    const int err = n < 0 ? errno : EAGAIN;  // 0 bytes: no room after all
    if (IsWouldBlock(err)) {
      if (options_.nonblocking && !wait) {
        return Enqueue(out, attach, reference_last);
      }
      if (!deadline.has_value()) deadline = absl::Now() + options_.send_timeout;
      absl::Status waited = WaitForSocket(POLLOUT, *deadline, "send");
      if (!waited.ok()) return FailSend(std::move(waited), out.sent_any());
      continue;
    }
    return FailSend(ErrnoError(err, IsDisconnect(err)
                                        ? "sendmsg: peer closed"
                                        : "sendmsg"),
                    out.sent_any() || IsDisconnect(err));
  }
  return absl::OkStatus();
}

ssize_t Connection::SendOnce(const struct iovec* iov, size_t iov_count,
                             absl::Span<const int> fds, bool wait) {
  absl::InlinedVector<uint64_t, 8> control;  // uint64_t: cmsg alignment
  struct msghdr mh;
  std::memset(&mh, 0, sizeof(mh));
  mh.msg_iov = const_cast<struct iovec*>(iov);
  mh.msg_iovlen = iov_count;
  if (!fds.empty()) {
    const size_t fd_bytes = fds.size() * sizeof(int);
    control.resize((CMSG_SPACE(fd_bytes) + 7) / 8, 0);
    mh.msg_control = control.data();
    mh.msg_controllen = CMSG_SPACE(fd_bytes);
    struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fd_bytes);
    std::memcpy(CMSG_DATA(c), fds.data(), fd_bytes);
  }
  ssize_t n;
  do {
    // Waits inside sendmsg() only when asked (blocking mode, SO_SNDTIMEO
    // set by PrepareBlockingWait); otherwise never, whatever the fd flags.
    n = os_->SendMsg(socket_.get(), &mh, wait ? 0 : MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return n;
}

absl::Status Connection::Enqueue(const OutputCursor& out,
                                 absl::Span<const int> fds,
                                 bool reference_last) {
  // Anything referenced earlier goes before this message: copy it now.
  CopyBorrowedOutput();
  // Dup first: if that fails, nothing has changed.
  FdBatch batch;
  batch.offset = out_buf_offset_ + out_buf_.size();
  for (size_t i = 0; i < out.iov_count(); ++i) {
    batch.message_end += out.iov()[i].iov_len;
  }
  batch.message_end += batch.offset;
  for (int fd : fds) {
    const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return ErrnoError(errno, "dup of an fd to queue");
    batch.fds.emplace_back(copy);
  }
  const size_t copied = reference_last && out.iov_count() > 0
                            ? out.iov_count() - 1
                            : out.iov_count();
  for (size_t i = 0; i < copied; ++i) {
    const uint8_t* p = static_cast<const uint8_t*>(out.iov()[i].iov_base);
    out_buf_.insert(out_buf_.end(), p, p + out.iov()[i].iov_len);
  }
  if (copied < out.iov_count()) {
    const struct iovec& last = out.iov()[copied];
    out_borrowed_ = absl::MakeConstSpan(
        static_cast<const uint8_t*>(last.iov_base), last.iov_len);
  }
  if (!batch.fds.empty()) out_fds_.push_back(std::move(batch));
  return absl::OkStatus();
}

void Connection::CopyBorrowedOutput() {
  if (out_borrowed_.empty()) return;
  out_buf_.insert(out_buf_.end(), out_borrowed_.begin(), out_borrowed_.end());
  out_borrowed_ = {};
}

bool Connection::HasPendingOutput() const {
  return out_start_ < out_buf_.size() || !out_borrowed_.empty();
}

absl::Status Connection::FlushPending() {
  if (!send_error_.ok()) return send_error_;
  while (out_start_ < out_buf_.size()) {
    // Fd-less messages may share a sendmsg, but one that carries fds starts
    // at its message's header and carries nothing else (see FdBatch).
    const uint64_t pos = out_buf_offset_ + out_start_;
    uint64_t end = out_buf_offset_ + out_buf_.size();
    absl::InlinedVector<int, 8> fds;
    if (!out_fds_.empty()) {
      const FdBatch& next = out_fds_.front();
      if (next.offset == pos) {
        for (const UniqueFd& fd : next.fds) fds.push_back(fd.get());
        end = next.message_end;
      } else {
        end = next.offset;
      }
    }
    struct iovec iov = {out_buf_.data() + out_start_,
                        static_cast<size_t>(end - pos)};
    const ssize_t n = SendOnce(&iov, 1, fds, false);
    if (n > 0) {
      if (!fds.empty()) out_fds_.erase(out_fds_.begin());  // closes the dups
      out_start_ += static_cast<size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EAGAIN;
    if (IsWouldBlock(err)) break;
    // Queued bytes are lost: the stream is broken for good.
    return FailSend(ErrnoError(err, IsDisconnect(err) ? "sendmsg: peer closed"
                                                      : "sendmsg"),
                    /*broken=*/true);
  }
  CompactOutput();
  // The referenced tail follows the copied queue (it carries no fds).
  while (out_start_ == out_buf_.size() && !out_borrowed_.empty()) {
    struct iovec iov = {const_cast<uint8_t*>(out_borrowed_.data()),
                        out_borrowed_.size()};
    const ssize_t n = SendOnce(&iov, 1, {}, false);
    if (n > 0) {
      out_borrowed_.remove_prefix(static_cast<size_t>(n));
      out_buf_offset_ += static_cast<uint64_t>(n);  // out_buf_ is empty
      continue;
    }
    const int err = n < 0 ? errno : EAGAIN;
    if (IsWouldBlock(err)) break;
    return FailSend(ErrnoError(err, IsDisconnect(err) ? "sendmsg: peer closed"
                                                      : "sendmsg"),
                    /*broken=*/true);
  }
  return absl::OkStatus();
}

void Connection::CompactOutput() {
  if (out_start_ == 0) return;
  if (out_start_ == out_buf_.size()) {
    out_buf_offset_ += out_buf_.size();
    out_buf_.clear();  // keeps the capacity for the next burst
    out_start_ = 0;
  } else if (out_start_ >= kOutputCompactBytes &&
             out_start_ >= out_buf_.size() / 2) {
    out_buf_.erase(out_buf_.begin(), out_buf_.begin() + out_start_);
    out_buf_offset_ += out_start_;
    out_start_ = 0;
  }
}

absl::Status Connection::FailSend(absl::Status status, bool broken) {
  if (broken) send_error_ = status;
  return status;
}

// ---------------------------------------------------------------------------
// Free functions

bool IsPeerClosed(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kPeerClosedPayloadUrl).has_value();
}

absl::StatusOr<std::pair<UniqueFd, UniqueFd>> MakeSocketPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return ErrnoError(errno, "socketpair(AF_UNIX)");
  }
  return std::make_pair(UniqueFd(fds[0]), UniqueFd(fds[1]));
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path) {
  struct sockaddr_un addr;
  socklen_t len = 0;
  absl::Status valid = MakeUnixAddress(path, &addr, &len);
  if (!valid.ok()) return valid;
  absl::StatusOr<UniqueFd> fd = NewUnixSocket();
  if (!fd.ok()) return fd.status();
  if (ConnectRetryingEintr(fd->get(), addr, len) != 0) {
    return ErrnoError(errno, absl::StrCat("connect ", path));
  }
  return fd;
}

absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, int backlog) {
  struct sockaddr_un addr;
  socklen_t len = 0;
  absl::Status valid = MakeUnixAddress(path, &addr, &len);
  if (!valid.ok()) return valid;
  absl::Status cleared = RemoveStaleSocket(path, addr, len);
  if (!cleared.ok()) return cleared;
  absl::StatusOr<UniqueFd> fd = NewUnixSocket();
  if (!fd.ok()) return fd.status();
  // bind() never follows a symlink: an existing path of any kind fails it.
  if (::bind(fd->get(), reinterpret_cast<const struct sockaddr*>(&addr),
             len) != 0) {
    return ErrnoError(errno, absl::StrCat("bind ", path));
  }
  if (::listen(fd->get(), backlog) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return ErrnoError(err, absl::StrCat("listen ", path));
  }
  return fd;
}

}  // namespace vfio_user
