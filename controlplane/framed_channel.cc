#include "controlplane/framed_channel.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user::controlplane {

namespace {

// Waits for `events` on `fd` until `deadline`. False on timeout.
absl::StatusOr<bool> WaitFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    struct pollfd p = {fd, events, 0};
    const int ms = static_cast<int>(
        absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))));
    const int n = ::poll(&p, 1, ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "poll on control channel");
    }
    if (n > 0) return true;
  }
}

}  // namespace

FramedChannel::FramedChannel(UniqueFd socket) : socket_(std::move(socket)) {
  const int flags = ::fcntl(socket_.get(), F_GETFL);
  if (flags >= 0) ::fcntl(socket_.get(), F_SETFL, flags | O_NONBLOCK);
}

absl::Status FramedChannel::Send(const google::protobuf::MessageLite& message,
                                 absl::Duration timeout) {
  if (!send_error_.ok()) return send_error_;
  std::string body;
  if (!message.SerializeToString(&body)) {
    return absl::InternalError("cannot serialize control message");
  }
  if (body.size() > kMaxFrameSize) {
    return absl::InternalError("control message too large");
  }
  std::string frame(4, '\0');
  const uint32_t len = static_cast<uint32_t>(body.size());
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  frame += body;

  const absl::Time deadline = absl::Now() + timeout;
  size_t sent = 0;
  while (sent < frame.size()) {
    const ssize_t n = ::send(socket_.get(), frame.data() + sent, frame.size() - sent,
                             MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      send_error_ = ErrnoError(errno, "control channel send failed");
      return send_error_;
    }
    absl::StatusOr<bool> writable = WaitFor(socket_.get(), POLLOUT, deadline);
    if (!writable.ok()) {
      send_error_ = writable.status();
      return send_error_;
    }
    if (!*writable) {
      send_error_ = ErrnoError(ETIMEDOUT, "control channel peer is not reading");
      return send_error_;
    }
  }
  return absl::OkStatus();
}

absl::Status FramedChannel::Fail(absl::Status status) {
  receive_error_ = std::move(status);
  return receive_error_;
}

absl::Status FramedChannel::ExtractFrames(std::vector<std::string>* frames) {
  size_t pos = 0;
  while (in_.size() - pos >= 4) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) {
      len |= static_cast<uint32_t>(static_cast<uint8_t>(in_[pos + i])) << (8 * i);
    }
    if (len > kMaxFrameSize) {
      return Fail(absl::DataLossError(
          absl::StrCat("control frame of ", len, " bytes exceeds the limit")));
    }
    if (in_.size() - pos - 4 < len) break;
    frames->emplace_back(in_, pos + 4, len);
    pos += 4 + len;
  }
  in_.erase(0, pos);
  return absl::OkStatus();
}

absl::Status FramedChannel::ReadAvailable(std::vector<std::string>* frames) {
  for (std::string& f : ready_) frames->push_back(std::move(f));
  ready_.clear();
  if (!receive_error_.ok()) return receive_error_;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(socket_.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      in_.append(buf, static_cast<size_t>(n));
      if (absl::Status st = ExtractFrames(frames); !st.ok()) return st;
      continue;
    }
    if (n == 0) {
      return Fail(in_.empty() ? absl::UnavailableError("peer closed")
                              : absl::DataLossError("peer closed inside a frame"));
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return absl::OkStatus();
    return Fail(ErrnoError(errno, "control channel receive failed"));
  }
}

absl::StatusOr<std::string> FramedChannel::ReadFrame(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    std::vector<std::string> frames;
    absl::Status st = ReadAvailable(&frames);
    if (!frames.empty()) {
      std::string first = std::move(frames.front());
      for (size_t i = 1; i < frames.size(); ++i) ready_.push_back(std::move(frames[i]));
      return first;
    }
    if (!st.ok()) return st;
    absl::StatusOr<bool> readable = WaitFor(socket_.get(), POLLIN, deadline);
    if (!readable.ok()) return readable.status();
    if (!*readable) {
      return absl::DeadlineExceededError("no control message in time");
    }
  }
}

}  // namespace vfio_user::controlplane
