// Socket paths the daemon creates: validation and safe creation/removal.
//
// The daemon may run with more privilege than the users asking it to create
// sockets, so a path is accepted only if it says exactly where the socket
// goes: absolute, normalized, no symlink anywhere (every component is
// lstat()ed; the socket's owner and mode are applied through an
// O_PATH|O_NOFOLLOW handle), never replacing a file that is not a stale
// socket, optionally confined below an allowed directory. Removal unlinks
// only the very socket the daemon created (same inode).
//
// Limitation: a directory on the path that an untrusted user can write to
// lets that user race the checks (rename a symlink into place between the
// check and bind()). Keep socket directories writable by trusted users only,
// or confine sockets with --allowed_socket_dir (docs/CONTROLPLANE.md).
//
// Thread-safety: stateless functions; safe from any thread.
#ifndef VFIO_USER_CONTROLPLANE_SOCKET_PATH_H_
#define VFIO_USER_CONTROLPLANE_SOCKET_PATH_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "controlplane/spec.h"
#include "core/unique_fd.h"

namespace vfio_user::controlplane {

// Longest socket path (sockaddr_un.sun_path minus the NUL).
inline constexpr size_t kMaxSocketPathLength = 107;

// Absolute, normalized (no "", "." or ".." components, no trailing '/'),
// at most 107 bytes, no NUL; strictly below `allowed_dir` if that is not
// empty. INVALID_ARGUMENT naming `field` otherwise.
absl::Status CheckSocketPathSyntax(absl::string_view path,
                                   absl::string_view allowed_dir,
                                   absl::string_view field);

// Every directory leading to `path` exists, is a directory and is not a
// symlink. INVALID_ARGUMENT for a symlink, FAILED_PRECONDITION for a missing
// or non-directory component.
absl::Status CheckSocketParents(const std::string& path, absl::string_view field);

// A listening socket the daemon created, and the identity of its file.
struct CreatedSocket {
  UniqueFd fd;
  dev_t dev = 0;
  ino_t ino = 0;
};

// Creates a listening AF_UNIX socket at `path` (parents checked as above;
// a stale socket there is replaced; a live one, or any other file, is
// FAILED_PRECONDITION naming `field`) and applies `ownership`. On failure
// nothing is left behind.
absl::StatusOr<CreatedSocket> CreateListeningSocket(const std::string& path,
                                                    const SocketOwnership& ownership,
                                                    absl::string_view field);

// Unlinks `path` if it is still the socket file identified by dev/ino.
void RemoveSocketFile(const std::string& path, dev_t dev, ino_t ino);

// Makes `path` free for a server that binds it itself (gRPC): parents
// checked, a stale socket removed; FAILED_PRECONDITION if someone listens
// there or it is not a socket.
absl::Status PrepareSocketPath(const std::string& path, absl::string_view field);

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_SOCKET_PATH_H_
