#include "controlplane/state_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "controlplane/spec.h"
#include "core/errno_status.h"
#include "google/protobuf/text_format.h"

namespace vfio_user::controlplane {

namespace {

constexpr char kSuffix[] = ".textproto";
constexpr size_t kMaxStateFileSize = 1 << 20;

// mkdir that accepts an existing directory but never a symlink or file.
absl::Status EnsureDirectory(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError(errno, absl::StrCat("cannot create directory ", path));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a directory"));
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "write failed");
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(int dir_fd, const std::string& name) {
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return ErrnoError(errno, "open failed");
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, "stat failed");
  if (!S_ISREG(st.st_mode)) return absl::FailedPreconditionError("not a regular file");
  if (static_cast<size_t>(st.st_size) > kMaxStateFileSize) {
    return absl::FailedPreconditionError("file too large");
  }
  std::string out;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "read failed");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxStateFileSize) return absl::FailedPreconditionError("file too large");
  }
  return out;
}

}  // namespace

StateStore::StateStore(std::string dir, UniqueFd lock, UniqueFd devices_dir)
    : dir_(std::move(dir)),
      devices_dir_path_(absl::StrCat(dir_, "/devices")),
      lock_(std::move(lock)),
      devices_dir_(std::move(devices_dir)) {}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& dir) {
  if (dir.empty() || dir[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("state directory must be absolute: ", dir));
  }
  if (absl::Status st = EnsureDirectory(dir); !st.ok()) return st;
  UniqueFd lock(::open(absl::StrCat(dir, "/lock").c_str(),
                       O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!lock) return ErrnoError(errno, absl::StrCat("cannot open ", dir, "/lock"));
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("state directory ", dir, " is in use by another vfio-userd"));
    }
    return ErrnoError(errno, absl::StrCat("cannot lock ", dir, "/lock"));
  }
  const std::string devices = absl::StrCat(dir, "/devices");
  if (absl::Status st = EnsureDirectory(devices); !st.ok()) return st;
  UniqueFd devices_fd(::open(devices.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!devices_fd) return ErrnoError(errno, absl::StrCat("cannot open ", devices));
  return std::unique_ptr<StateStore>(
      new StateStore(dir, std::move(lock), std::move(devices_fd)));
}

std::string StateStore::DevicePath(const std::string& name) const {
  return absl::StrCat(name, kSuffix);
}

StateStore::Loaded StateStore::Load() {
  Loaded out;
  UniqueFd dup(::fcntl(devices_dir_.get(), F_DUPFD_CLOEXEC, 0));
  DIR* d = dup ? ::fdopendir(dup.Release()) : nullptr;
  if (d == nullptr) {
    out.errors.push_back(absl::StrCat(devices_dir_path_, ": cannot list: ", std::strerror(errno)));
    return out;
  }
  ::rewinddir(d);
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    names.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const std::string& file : names) {
    if (file == "." || file == "..") continue;
    if (file[0] == '.') {
      if (absl::EndsWith(file, ".tmp")) {
        ::unlinkat(devices_dir_.get(), file.c_str(), 0);  // torn write of a crash
      }
      continue;
    }
    const std::string where = absl::StrCat(devices_dir_path_, "/", file);
    if (!absl::EndsWith(file, kSuffix)) {
      out.errors.push_back(absl::StrCat(where, ": not a device file (ignored)"));
      continue;
    }
    auto text = ReadSmallFile(devices_dir_.get(), file);
    if (!text.ok()) {
      out.errors.push_back(absl::StrCat(where, ": ", text.status().message()));
      continue;
    }
    PersistedDevice device;
    if (!google::protobuf::TextFormat::ParseFromString(*text, &device)) {
      out.errors.push_back(absl::StrCat(where, ": not a valid PersistedDevice"));
      continue;
    }
    if (device.format_version() != 1) {
      out.errors.push_back(absl::StrCat(where, ": unsupported format_version ",
                                        device.format_version()));
      continue;
    }
    if (DevicePath(device.spec().name()) != file) {
      out.errors.push_back(absl::StrCat(where, ": file name does not match device name \"",
                                        device.spec().name(), "\""));
      continue;
    }
    out.devices.push_back(std::move(device));
  }
  return out;
}

absl::Status StateStore::Save(const PersistedDevice& device) {
  const std::string& name = device.spec().name();
  if (absl::Status st = ValidateDeviceName(name, "name"); !st.ok()) return st;
  std::string text =
      "# vfio-userd device state (written by the daemon; see docs/CONTROLPLANE.md)\n";
  std::string body;
  if (!google::protobuf::TextFormat::PrintToString(device, &body)) {
    return absl::InternalError("cannot render the device state");
  }
  text += body;
  const std::string tmp = absl::StrCat(".", name, ".tmp");
  UniqueFd fd(::openat(devices_dir_.get(), tmp.c_str(),
                       O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError(errno, absl::StrCat("cannot create ", devices_dir_path_, "/", tmp));
  absl::Status st = WriteAll(fd.get(), text);
  if (st.ok() && ::fsync(fd.get()) != 0) st = ErrnoError(errno, "fsync failed");
  fd.Reset();
  if (st.ok() && ::renameat(devices_dir_.get(), tmp.c_str(), devices_dir_.get(),
                            DevicePath(name).c_str()) != 0) {
    st = ErrnoError(errno, "rename failed");
  }
  if (!st.ok()) {
    ::unlinkat(devices_dir_.get(), tmp.c_str(), 0);
    // Name the cause ("No space left on device"): the operator must act.
    return absl::Status(st.code(), absl::StrCat("saving device state of ", name, ": ",
                                                 st.message(), ": ",
                                                 std::strerror(ErrnoOf(st))));
  }
  if (::fsync(devices_dir_.get()) != 0) {
    return ErrnoError(errno, absl::StrCat("fsync of ", devices_dir_path_, " failed"));
  }
  return absl::OkStatus();
}

absl::Status StateStore::Remove(const std::string& name) {
  if (absl::Status st = ValidateDeviceName(name, "name"); !st.ok()) return st;
  if (::unlinkat(devices_dir_.get(), DevicePath(name).c_str(), 0) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(errno, absl::StrCat("cannot remove the state of ", name));
  }
  if (::fsync(devices_dir_.get()) != 0) {
    return ErrnoError(errno, absl::StrCat("fsync of ", devices_dir_path_, " failed"));
  }
  return absl::OkStatus();
}

}  // namespace vfio_user::controlplane
