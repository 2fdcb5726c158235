#include "controlplane/socket_path.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "core/transport.h"

namespace vfio_user::controlplane {

namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// Maps a failure to create/probe the socket to the API's codes.
absl::Status SocketError(absl::string_view field, const std::string& path,
                         const absl::Status& st) {
  const int err = ErrnoOf(st);
  switch (err) {
    case EADDRINUSE:
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": ", path, " is in use: another server is listening on it"));
    case EEXIST:
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": ", path, " exists and is not a stale socket; not replacing it"));
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": cannot create ", path, ": ", ErrnoText(err)));
    case ENOENT:
    case ENOTDIR:
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": cannot create ", path, ": ", ErrnoText(err)));
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", st.message()));
    default:
      return absl::Status(st.code(), absl::StrCat(field, ": ", st.message()));
  }
}

}  // namespace

absl::Status CheckSocketPathSyntax(absl::string_view path,
                                   absl::string_view allowed_dir,
                                   absl::string_view field) {
  if (path.empty()) return FieldError(field, "required");
  if (path.find('\0') != absl::string_view::npos) {
    return FieldError(field, "contains a NUL byte");
  }
  if (path.size() > kMaxSocketPathLength) {
    return FieldError(field, absl::StrCat("at most ", kMaxSocketPathLength,
                                          " bytes (got ", path.size(), ")"));
  }
  if (path.front() != '/') return FieldError(field, "must be an absolute path");
  if (path.size() == 1 || path.back() == '/') {
    return FieldError(field, "must name a file, not a directory (no trailing '/')");
  }
  std::vector<absl::string_view> parts = absl::StrSplit(path.substr(1), '/');
  for (absl::string_view part : parts) {
    if (part.empty() || part == "." || part == "..") {
      return FieldError(field, "must be normalized (no empty, \".\" or \"..\" components)");
    }
  }
  if (!allowed_dir.empty()) {
    const bool below = absl::StartsWith(path, allowed_dir) &&
                       path.size() > allowed_dir.size() + 1 &&
                       (allowed_dir == "/" || path[allowed_dir.size()] == '/');
    if (!below) {
      return FieldError(field, absl::StrCat("must be below the allowed socket directory ",
                                            allowed_dir));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSocketParents(const std::string& path, absl::string_view field) {
  // Walk "/a", "/a/b", ... up to the parent of the leaf.
  size_t pos = 0;
  for (;;) {
    pos = path.find('/', pos + 1);
    if (pos == std::string::npos) break;
    const std::string dir = path.substr(0, pos);
    struct stat st;
    if (::lstat(dir.c_str(), &st) != 0) {
      const int err = errno;
      return absl::FailedPreconditionError(
          absl::StrCat(field, ": directory ", dir, ": ", ErrnoText(err)));
    }
    if (S_ISLNK(st.st_mode)) {
      return FieldError(field, absl::StrCat(dir, " is a symlink; symlinks are not followed "
                                                 "(use the resolved path)"));
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(field, ": ", dir, " is not a directory"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CreatedSocket> CreateListeningSocket(const std::string& path,
                                                    const SocketOwnership& ownership,
                                                    absl::string_view field) {
  if (absl::Status st = CheckSocketParents(path, field); !st.ok()) return st;
  {
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      return FieldError(field, absl::StrCat(path, " is a symlink; not replacing it"));
    }
  }
  absl::StatusOr<UniqueFd> fd = ListenUnix(path);
  if (!fd.ok()) return SocketError(field, path, fd.status());

  CreatedSocket out;
  out.fd = std::move(*fd);
  auto fail = [&](absl::Status st) -> absl::Status {
    ::unlink(path.c_str());
    return st;
  };
  // A handle on the file we just bound, never following a symlink; owner and
  // mode are applied through it.
  UniqueFd handle(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!handle) {
    const int err = errno;
    return fail(absl::InternalError(
        absl::StrCat(field, ": cannot open the new socket ", path, ": ", ErrnoText(err))));
  }
  struct stat st;
  if (::fstat(handle.get(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return fail(absl::InternalError(
        absl::StrCat(field, ": ", path, " changed while it was being created")));
  }
  out.dev = st.st_dev;
  out.ino = st.st_ino;
  if (ownership.uid.has_value() || ownership.gid.has_value()) {
    const uid_t uid = ownership.uid.value_or(static_cast<uid_t>(-1));
    const gid_t gid = ownership.gid.value_or(static_cast<gid_t>(-1));
    if (::fchownat(handle.get(), "", uid, gid, AT_EMPTY_PATH) != 0) {
      const int err = errno;
      return fail(absl::FailedPreconditionError(absl::StrCat(
          field, ": cannot give ", path, " the requested owner/group: ", ErrnoText(err),
          err == EPERM ? " (the daemon needs CAP_CHOWN, or must be a member of the group)"
                       : "")));
    }
  }
  // chmod through the O_PATH handle's /proc magic link (fchmod does not
  // work on O_PATH fds, and Linux has no lchmod).
  const std::string proc_path = absl::StrCat("/proc/self/fd/", handle.get());
  if (::chmod(proc_path.c_str(), ownership.mode) != 0) {
    const int err = errno;
    return fail(absl::InternalError(
        absl::StrCat(field, ": cannot chmod ", path, ": ", ErrnoText(err))));
  }
  return out;
}

void RemoveSocketFile(const std::string& path, dev_t dev, ino_t ino) {
  if (path.empty()) return;
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISSOCK(st.st_mode) || st.st_dev != dev || st.st_ino != ino) return;
  ::unlink(path.c_str());
}

absl::Status PrepareSocketPath(const std::string& path, absl::string_view field) {
  if (absl::Status st = CheckSocketParents(path, field); !st.ok()) return st;
  // Probe without binding anything there: a client connecting meanwhile
  // must not land in the backlog of a throwaway listener.
  struct stat before;
  if (::lstat(path.c_str(), &before) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    const int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(field, ": ", path, ": ", ErrnoText(err)));
  }
  if (!S_ISSOCK(before.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": ", path, " exists and is not a socket; not replacing it"));
  }
  absl::StatusOr<UniqueFd> probe = ConnectUnix(path);
  if (probe.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": ", path, " is in use: another server is listening on it"));
  }
  if (ErrnoOf(probe.status()) != ECONNREFUSED) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": probing ", path, ": ", probe.status().message()));
  }
  RemoveSocketFile(path, before.st_dev, before.st_ino);  // stale: ours to clean
  return absl::OkStatus();
}

}  // namespace vfio_user::controlplane
