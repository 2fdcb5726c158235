// Default locations of vfio-userd, shared by the daemon and vfio-userctl.
//   runtime dir (gRPC socket, default device sockets):
//     root: /run/vfio-userd; others: $XDG_RUNTIME_DIR/vfio-userd, else
//     /tmp/vfio-userd-<uid>
//   state dir (persisted specs):
//     root: /var/lib/vfio-userd; others: $XDG_STATE_HOME/vfio-userd, else
//     ~/.local/state/vfio-userd, else <runtime dir>/state
//   gRPC endpoint: unix:<runtime dir>/grpc.sock
#ifndef VFIO_USER_CONTROLPLANE_DEFAULTS_H_
#define VFIO_USER_CONTROLPLANE_DEFAULTS_H_

#include <string>

namespace vfio_user::controlplane {

std::string DefaultRuntimeDir();
std::string DefaultStateDir(const std::string& runtime_dir);
std::string DefaultGrpcListen(const std::string& runtime_dir);

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_DEFAULTS_H_
