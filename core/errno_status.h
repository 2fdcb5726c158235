// Errors that must travel on the wire as a UNIX errno.
//
// vfio-user error replies carry an errno (PROTOCOL.md §1). Internally every
// failure is an absl::Status; ErrnoError() builds one whose canonical code is
// derived from the errno and which also carries the exact errno as a payload,
// so that ErrnoOf() can recover it when the error reply is written.
#ifndef VFIO_USER_CORE_ERRNO_STATUS_H_
#define VFIO_USER_CORE_ERRNO_STATUS_H_

#include <cerrno>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace vfio_user {

// Returns a non-OK status with `message`, a canonical code matching `err`
// (EINVAL -> kInvalidArgument, ENOENT -> kNotFound, ...) and `err` attached.
// REQUIRES: err > 0.
absl::Status ErrnoError(int err, absl::string_view message);

// The errno to put in an error reply for `status`: the attached errno if any,
// otherwise one derived from the canonical code (EINVAL as the fallback).
// Returns 0 for an OK status.
int ErrnoOf(const absl::Status& status);

// Clamps an errno received from a peer to a sane positive value: the spec
// allows 0 with the Error bit set, and hostile peers may send anything.
// Values <= 0 or > 4095 become EINVAL (as libvfio-user does).
int SanitizePeerErrno(uint32_t wire_error);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_ERRNO_STATUS_H_
