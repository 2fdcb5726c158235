#include "core/errno_status.h"

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace vfio_user {
namespace {

constexpr char kErrnoPayloadUrl[] = "vfio-user/errno";

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case EINVAL: case E2BIG: case EBADF: case EBADMSG: case EPROTO: case ERANGE:
      return absl::StatusCode::kInvalidArgument;
    case ENOENT: case ENODEV: case ENXIO:
      return absl::StatusCode::kNotFound;
    case EEXIST: case EADDRINUSE:
      return absl::StatusCode::kAlreadyExists;
    case EPERM: case EACCES:
      return absl::StatusCode::kPermissionDenied;
    case ENOMEM: case ENOSPC: case EMFILE: case ENFILE: case ENOBUFS: case EMSGSIZE:
      return absl::StatusCode::kResourceExhausted;
    case ETIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    case EAGAIN: case EBUSY: case EINTR:
      return absl::StatusCode::kUnavailable;
    case ECONNRESET: case EPIPE: case ENOTCONN: case ESHUTDOWN: case ECONNREFUSED:
      return absl::StatusCode::kUnavailable;
    case ENOSYS: case EOPNOTSUPP:
      return absl::StatusCode::kUnimplemented;
    case EFAULT:
      return absl::StatusCode::kOutOfRange;
    case ECANCELED:
      return absl::StatusCode::kCancelled;
    default:
      return absl::StatusCode::kInternal;
  }
}

int ErrnoForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 0;
    case absl::StatusCode::kNotFound: return ENOENT;
    case absl::StatusCode::kAlreadyExists: return EEXIST;
    case absl::StatusCode::kPermissionDenied: return EPERM;
    case absl::StatusCode::kResourceExhausted: return ENOSPC;
    case absl::StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case absl::StatusCode::kUnavailable: return EAGAIN;
    case absl::StatusCode::kUnimplemented: return ENOSYS;
    case absl::StatusCode::kOutOfRange: return EFAULT;
    case absl::StatusCode::kCancelled: return ECANCELED;
    case absl::StatusCode::kInternal: return EIO;
    default: return EINVAL;
  }
}

}  // namespace

absl::Status ErrnoError(int err, absl::string_view message) {
  if (err <= 0) err = EINVAL;
  absl::Status status(CodeForErrno(err), message);
  status.SetPayload(kErrnoPayloadUrl, absl::Cord(std::to_string(err)));
  return status;
}

int ErrnoOf(const absl::Status& status) {
  if (status.ok()) return 0;
  if (auto payload = status.GetPayload(kErrnoPayloadUrl)) {
    int err = 0;
    if (absl::SimpleAtoi(std::string(*payload), &err) && err > 0) return err;
  }
  return ErrnoForCode(status.code());
}

int SanitizePeerErrno(uint32_t wire_error) {
  if (wire_error == 0 || wire_error > 4095) return EINVAL;
  return static_cast<int>(wire_error);
}

}  // namespace vfio_user
