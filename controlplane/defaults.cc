#include "controlplane/defaults.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace vfio_user::controlplane {

namespace {
// An absolute path from the environment, or nullptr.
const char* AbsoluteEnv(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] == '/' ? value : nullptr;
}
}  // namespace

std::string DefaultRuntimeDir() {
  if (::geteuid() == 0) return "/run/vfio-userd";
  if (const char* xdg = AbsoluteEnv("XDG_RUNTIME_DIR")) return absl::StrCat(xdg, "/vfio-userd");
  return absl::StrCat("/tmp/vfio-userd-", ::geteuid());
}

std::string DefaultStateDir(const std::string& runtime_dir) {
  if (::geteuid() == 0) return "/var/lib/vfio-userd";
  if (const char* xdg = AbsoluteEnv("XDG_STATE_HOME")) return absl::StrCat(xdg, "/vfio-userd");
  if (const char* home = AbsoluteEnv("HOME")) return absl::StrCat(home, "/.local/state/vfio-userd");
  return absl::StrCat(runtime_dir, "/state");
}

std::string DefaultGrpcListen(const std::string& runtime_dir) {
  return absl::StrCat("unix:", runtime_dir, "/grpc.sock");
}

}  // namespace vfio_user::controlplane
