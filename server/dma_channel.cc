#include "server/dma_channel.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/protocol.h"
#include "server/device.h"

namespace vfio_user {

DmaChannel::DmaChannel(std::shared_ptr<Connection> twin, Options options,
                       Device* device, BrokenFn on_broken, ResumeFn on_resume)
    : twin_(std::move(twin)),
      options_(options),
      device_(device),
      on_broken_(std::move(on_broken)),
      on_resume_(std::move(on_resume)) {}

std::optional<absl::Status> DmaChannel::Access(uint64_t iova, uint8_t* buf,
                                               size_t len, bool write) {
  {
    absl::MutexLock lock(&mu_);
    // One access at a time; the loop's requests keep the socket until done.
    const auto turn = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return closed_ || loop_owns_ || !access_running_;
    };
    mu_.Await(absl::Condition(&turn));
    if (closed_ || loop_owns_) return std::nullopt;
    access_running_ = true;
  }
  absl::Status status;
  bool broken = false;
  const uint64_t max_chunk = std::max<uint64_t>(1, options_.max_chunk);
  for (size_t done = 0; done < len && status.ok();) {
    const size_t chunk =
        static_cast<size_t>(std::min<uint64_t>(len - done, max_chunk));
    status = Exchange(iova + done, buf + done, chunk, write, &broken);
    done += chunk;
  }
  bool resume = false;
  {
    absl::MutexLock lock(&mu_);
    access_running_ = false;
    if (broken) closed_ = true;
    resume = loop_deferred_ && !closed_;
    loop_deferred_ = false;
  }
  if (broken && on_broken_) on_broken_(status);
  if (resume && on_resume_) on_resume_();
  return status;
}

absl::Status DmaChannel::Exchange(uint64_t iova, uint8_t* buf, size_t len,
                                  bool write, bool* broken) {
  const absl::Time deadline = absl::Now() + options_.timeout;
  Header request;
  request.msg_id = NextMsgId();
  request.cmd =
      static_cast<uint16_t>(write ? Command::kDmaWrite : Command::kDmaRead);
  request.flags = kFlagsTypeCommand;
  uint8_t access[16];
  EncodeDmaAccessHeaderTo(iova, len, options_.layout, access);
  const ByteSpan access_header(access, DmaAccessHeaderSize(options_.layout));
  absl::Status sent = twin_->SendPartsWaiting(
      request, access_header, write ? ByteSpan(buf, len) : ByteSpan(),
      deadline);
  if (!sent.ok()) {
    *broken = true;
    return sent;
  }
  device_->mutable_counters().dma_messages++;

  // A DMA_READ reply's data is received straight into `buf`.
  ReceivePlacement placement;
  placement.msg_id = request.msg_id;
  placement.cmd = request.cmd;
  placement.keep = access_header.size();
  placement.into = absl::Span<uint8_t>(buf, len);
  absl::StatusOr<bool> received = twin_->ReceiveInto(
      &reply_, deadline, write || len == 0 ? nullptr : &placement);
  if (!received.ok()) {
    // A late reply would now be taken for another request's: give up on
    // the stream (as the loop does when its own request times out).
    *broken = true;
    if (ErrnoOf(received.status()) == ETIMEDOUT) {
      return ErrnoError(ETIMEDOUT, "client did not answer a DMA request");
    }
    return received.status();
  }
  reply_.fds.clear();  // a reply carries none; close what came anyway
  const Header& h = reply_.header;
  if (!h.is_reply() || h.msg_id != request.msg_id || h.cmd != request.cmd) {
    *broken = true;
    return ErrnoError(EPROTO, absl::StrCat("unexpected ", CommandName(h.cmd),
                                           " message msg_id=", h.msg_id,
                                           " on the twin socket"));
  }
  if (h.is_error()) {
    return ErrnoError(SanitizePeerErrno(h.error), "client failed DMA request");
  }
  if (write) {
    absl::Status checked = CheckDmaWriteReply(ByteSpan(reply_.payload), iova, len);
    if (!checked.ok()) return checked;
    device_->dma().MarkDirty(iova, len);
    return absl::OkStatus();
  }
  if (reply_.payload_placed) {
    // The data is in `buf` already; the access header must match.
    absl::StatusOr<DmaAccess> reply =
        DecodeDmaWriteReply(ByteSpan(reply_.payload));
    if (!reply.ok()) return reply.status();
    if (reply->address != iova || reply->count != len) {
      return ErrnoError(EPROTO, "DMA_READ reply does not match the request");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<DmaAccess> reply =
      DecodeDmaReadReply(ByteSpan(reply_.payload), len);
  if (!reply.ok()) return reply.status();
  if (reply->address != iova || reply->data.size() != len) {
    return ErrnoError(EPROTO, "DMA_READ reply does not match the request");
  }
  std::memcpy(buf, reply->data.data(), len);
  return absl::OkStatus();
}

bool DmaChannel::TryAcquireForLoop() {
  absl::MutexLock lock(&mu_);
  if (access_running_) {
    loop_deferred_ = true;
    return false;
  }
  loop_owns_ = true;
  return true;
}

void DmaChannel::ReleaseFromLoop() {
  absl::MutexLock lock(&mu_);
  loop_owns_ = false;
}

void DmaChannel::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

}  // namespace vfio_user
