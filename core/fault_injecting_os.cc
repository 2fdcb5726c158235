#include "core/fault_injecting_os.h"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>

#include "absl/container/inlined_vector.h"

namespace vfio_user {
namespace {

size_t IovTotal(const struct msghdr* msg) {
  size_t total = 0;
  for (size_t i = 0; i < msg->msg_iovlen; ++i) total += msg->msg_iov[i].iov_len;
  return total;
}

}  // namespace

FaultInjectingOs::FaultInjectingOs(Os* base)
    : base_(base != nullptr ? base : Os::Default()) {}

void FaultInjectingOs::SetMaxBytesPerCall(Direction dir, size_t max_bytes) {
  absl::MutexLock lock(&mu_);
  state(dir).max_bytes_per_call = max_bytes;
}

void FaultInjectingOs::InjectErrors(Direction dir, int err, int count,
                                    std::optional<uint64_t> at_byte) {
  if (count <= 0) return;
  absl::MutexLock lock(&mu_);
  state(dir).storms.push_back(ErrorStorm{at_byte, err, count});
}

void FaultInjectingOs::HangUpAt(Direction dir, uint64_t at_byte, int err) {
  absl::MutexLock lock(&mu_);
  DirectionState& s = state(dir);
  s.hang_up_at = at_byte;
  s.hang_up_err = (dir == Direction::kSend && err == 0) ? EPIPE : err;
}

void FaultInjectingOs::FailCloses(int count, int err) {
  absl::MutexLock lock(&mu_);
  close_failures_ = count;
  close_err_ = err;
}

void FaultInjectingOs::InjectPollErrors(int count, int err) {
  absl::MutexLock lock(&mu_);
  poll_failures_ = count;
  poll_err_ = err;
}

void FaultInjectingOs::Clear() {
  absl::MutexLock lock(&mu_);
  for (DirectionState& s : dirs_) {
    s.max_bytes_per_call = 0;
    s.storms.clear();
    s.hang_up_at.reset();
    s.hang_up_err = 0;
  }
  close_failures_ = 0;
  poll_failures_ = 0;
}

uint64_t FaultInjectingOs::bytes(Direction dir) const {
  absl::MutexLock lock(&mu_);
  return dirs_[static_cast<int>(dir)].bytes;
}

uint64_t FaultInjectingOs::calls(Direction dir) const {
  absl::MutexLock lock(&mu_);
  return dirs_[static_cast<int>(dir)].calls;
}

uint64_t FaultInjectingOs::injected_faults() const {
  absl::MutexLock lock(&mu_);
  return injected_faults_;
}

FaultInjectingOs::CallPlan FaultInjectingOs::PlanCall(Direction dir) {
  absl::MutexLock lock(&mu_);
  DirectionState& s = state(dir);
  ++s.calls;
  const uint64_t pos = s.bytes;
  CallPlan plan;

  if (s.hang_up_at.has_value() && pos >= *s.hang_up_at) {
    ++injected_faults_;
    plan.fail = true;
    plan.err = s.hang_up_err;
    return plan;
  }
  for (auto it = s.storms.begin(); it != s.storms.end(); ++it) {
    if (it->at_byte.has_value() && pos < *it->at_byte) continue;
    ++injected_faults_;
    plan.fail = true;
    plan.err = it->err;
    if (--it->remaining == 0) s.storms.erase(it);
    return plan;
  }

  // The call goes through, shortened so that it ends at the next trigger.
  if (s.max_bytes_per_call != 0) plan.max_bytes = s.max_bytes_per_call;
  auto limit_to = [&](uint64_t trigger) {
    if (trigger > pos) {
      plan.max_bytes = static_cast<size_t>(
          std::min<uint64_t>(plan.max_bytes, trigger - pos));
    }
  };
  if (s.hang_up_at.has_value()) limit_to(*s.hang_up_at);
  for (const ErrorStorm& storm : s.storms) {
    if (storm.at_byte.has_value()) limit_to(*storm.at_byte);
  }
  return plan;
}

ssize_t FaultInjectingOs::Transfer(Direction dir, int fd, struct msghdr* msg,
                                   int flags) {
  const CallPlan plan = PlanCall(dir);
  if (plan.fail) {
    if (dir == Direction::kRecv) {
      msg->msg_controllen = 0;
      msg->msg_flags = 0;
    }
    if (plan.err == 0) return 0;  // orderly EOF (receive only)
    errno = plan.err;
    return -1;
  }

  ssize_t n;
  if (IovTotal(msg) <= plan.max_bytes) {
    n = dir == Direction::kSend ? base_->SendMsg(fd, msg, flags)
                                : base_->RecvMsg(fd, msg, flags);
  } else {
    // Same call over a truncated copy of the iovec array.
    absl::InlinedVector<struct iovec, 8> iov;
    size_t left = plan.max_bytes;
    for (size_t i = 0; i < msg->msg_iovlen && left > 0; ++i) {
      struct iovec piece = msg->msg_iov[i];
      piece.iov_len = std::min(piece.iov_len, left);
      left -= piece.iov_len;
      iov.push_back(piece);
    }
    struct msghdr capped = *msg;
    capped.msg_iov = iov.data();
    capped.msg_iovlen = iov.size();
    if (dir == Direction::kSend) {
      n = base_->SendMsg(fd, &capped, flags);
    } else {
      n = base_->RecvMsg(fd, &capped, flags);
      msg->msg_controllen = capped.msg_controllen;
      msg->msg_flags = capped.msg_flags;
    }
  }
  if (n > 0) {
    absl::MutexLock lock(&mu_);
    state(dir).bytes += static_cast<uint64_t>(n);
  }
  return n;  // errno is only meaningful when n < 0
}

ssize_t FaultInjectingOs::SendMsg(int fd, const struct msghdr* msg,
                                  int flags) {
  struct msghdr copy = *msg;  // Transfer may not modify the caller's header
  return Transfer(Direction::kSend, fd, &copy, flags);
}

ssize_t FaultInjectingOs::RecvMsg(int fd, struct msghdr* msg, int flags) {
  return Transfer(Direction::kRecv, fd, msg, flags);
}

int FaultInjectingOs::Poll(struct pollfd* fds, nfds_t nfds, int timeout_ms) {
  int err = 0;
  {
    absl::MutexLock lock(&mu_);
    if (poll_failures_ > 0) {
      --poll_failures_;
      ++injected_faults_;
      err = poll_err_;
    }
  }
  if (err != 0) {  // errno is set after unlocking: unlocking may clobber it
    errno = err;
    return -1;
  }
  return base_->Poll(fds, nfds, timeout_ms);
}

int FaultInjectingOs::Close(int fd) {
  const int rc = base_->Close(fd);
  if (rc != 0) return rc;
  int err = 0;
  {
    absl::MutexLock lock(&mu_);
    if (close_failures_ > 0) {
      --close_failures_;
      ++injected_faults_;
      err = close_err_;
    }
  }
  if (err != 0) {
    errno = err;
    return -1;
  }
  return 0;
}

}  // namespace vfio_user
