// StateStore: the daemon's persisted device specs, one file per device.
//
// Layout of the state directory (created 0700 if missing):
//   lock                        flock()ed while a daemon uses the directory
//   devices/<name>.textproto    PersistedDevice (controlplane/daemon.proto),
//                               protobuf text format
// Writes are atomic: the new content goes to devices/.<name>.tmp, is
// fsync()ed, renamed over the old file, and the directory is fsync()ed, so
// after a crash each file is either the old or the new version, never torn.
// Leftover .tmp files (a crash mid-write) are removed on Load.
//
// Thread-safety: not thread-safe (the daemon uses it from its supervisor
// loop only).
#ifndef VFIO_USER_CONTROLPLANE_STATE_STORE_H_
#define VFIO_USER_CONTROLPLANE_STATE_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "controlplane/daemon.pb.h"
#include "core/unique_fd.h"

namespace vfio_user::controlplane {

class StateStore {
 public:
  // Opens (creating if needed) `dir` and locks it. FAILED_PRECONDITION if
  // another process holds the lock (another daemon uses this directory).
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& dir);

  struct Loaded {
    std::vector<PersistedDevice> devices;
    // Files that could not be read, with the reason (they are left alone).
    std::vector<std::string> errors;
  };
  // Reads every device file.
  Loaded Load();

  // Writes (atomically replaces) the file of `device.spec().name()`.
  absl::Status Save(const PersistedDevice& device);
  // Removes the file of device `name` (OK if there is none).
  absl::Status Remove(const std::string& name);

  const std::string& dir() const { return dir_; }

 private:
  StateStore(std::string dir, UniqueFd lock, UniqueFd devices_dir);
  std::string DevicePath(const std::string& name) const;

  std::string dir_;
  std::string devices_dir_path_;
  UniqueFd lock_;
  UniqueFd devices_dir_;  // O_DIRECTORY fd, for fsync after rename/unlink
};

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_STATE_STORE_H_
