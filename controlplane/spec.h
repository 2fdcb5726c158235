// Validation and normalization of DeviceSpec (proto/vfio_user/v1/device.proto).
//
// Every request the daemon accepts goes through NormalizeSpec first: it
// rejects what is malformed with INVALID_ARGUMENT naming the field
// ("spec.socket.mode: ...") and fills in the defaults, so that two specs that
// mean the same thing compare equal (the name is the idempotency key of
// CreateDevice: an identical normalized spec is a success, a different one
// ALREADY_EXISTS). Checks against the file system (symlinks, existing files)
// happen later, when the socket is created (controlplane/socket_path.h).
//
// Thread-safety: all functions are pure or use reentrant libc lookups.
#ifndef VFIO_USER_CONTROLPLANE_SPEC_H_
#define VFIO_USER_CONTROLPLANE_SPEC_H_

#include <sys/types.h>

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/vfio_user/v1/device.pb.h"

namespace vfio_user::controlplane {

inline constexpr absl::Duration kDefaultReconnectWindow = absl::Seconds(30);
inline constexpr absl::Duration kMaxReconnectWindow = absl::Hours(24);
inline constexpr mode_t kDefaultSocketMode = 0600;
inline constexpr size_t kMaxDeviceNameLength = 63;

// Daemon-wide rules a spec must follow.
struct SpecPolicy {
  // If not empty: socket paths must lie below this directory (absolute,
  // normalized, no trailing '/').
  std::string allowed_socket_dir;
};

// INVALID_ARGUMENT "<field>: <what>".
absl::Status FieldError(absl::string_view field, absl::string_view what);

// 1-63 characters [a-z0-9._-], first and last [a-z0-9]. Device names are
// also file names in the state directory, so this is a security boundary.
absl::Status ValidateDeviceName(absl::string_view name, absl::string_view field);

// Parses an octal permission string ("0660", "660"); only 0777 bits.
absl::StatusOr<mode_t> ParseSocketMode(absl::string_view mode,
                                       absl::string_view field);
// "0660"-style rendering (4 octal digits).
std::string FormatSocketMode(mode_t mode);

// Who owns the socket file and its permissions, resolved to ids.
struct SocketOwnership {
  std::optional<uid_t> uid;  // unset: leave as created (the daemon's user)
  std::optional<gid_t> gid;
  mode_t mode = kDefaultSocketMode;
};
// Resolves owner/group names (or numeric ids) of a *normalized* socket spec.
// INVALID_ARGUMENT (naming spec.socket.owner/group) for unknown ones.
absl::StatusOr<SocketOwnership> ResolveSocketOwnership(
    const vfio_user::v1::SocketSpec& socket);

// Returns the normalized copy of `spec` or INVALID_ARGUMENT naming the first
// bad field. Field names are prefixed with "spec.".
absl::StatusOr<vfio_user::v1::DeviceSpec> NormalizeSpec(
    const vfio_user::v1::DeviceSpec& spec, const SpecPolicy& policy);

// The reconnect window of a normalized spec.
absl::Duration ReconnectWindow(const vfio_user::v1::DeviceSpec& spec);

// True if two normalized specs are the same request.
bool SameSpec(const vfio_user::v1::DeviceSpec& a,
              const vfio_user::v1::DeviceSpec& b);

// Human-readable type name ("idio16", "dma_test"; "unset").
std::string DeviceTypeName(const vfio_user::v1::DeviceSpec& spec);

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_SPEC_H_
