// Test support for the vfio-userd integration tests: runs the real daemon
// binary as a child process (temp state directory, gRPC on a short unix
// socket path under /tmp) and talks to it with the C++ stubs.
//
// Every wait polls a condition with a deadline; nothing sleeps a fixed time
// to let something happen.
#ifndef VFIO_USER_CONTROLPLANE_DAEMON_TEST_UTIL_H_
#define VFIO_USER_CONTROLPLANE_DAEMON_TEST_UTIL_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/vfio_user/v1/device_service.grpc.pb.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::controlplane::testing {

namespace v1 = ::vfio_user::v1;

// Default deadline of the waits below.
inline constexpr absl::Duration kWait = absl::Seconds(15);

// Polls `condition` until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& condition, absl::Duration timeout = kWait);

// "/tmp/vfud.<pid>.<tag>.sock": short enough for sun_path.
std::string TempSocketPath(const std::string& tag);

class Daemon {
 public:
  // `tag` keeps paths of several daemons in one test apart. The state
  // directory lives as long as this object (across Restart()).
  explicit Daemon(std::string tag = "d");
  ~Daemon();  // SIGKILLs a running daemon; removes its files

  // Starts vfio-userd with the harness's flags (gRPC socket, state and
  // runtime dir, worker binary, fast heartbeats, no default devices unless
  // `extra_flags` says otherwise) plus `extra_flags`, and waits until its
  // health service says SERVING.
  absl::Status Start(std::vector<std::string> extra_flags = {});
  // Sends `sig` and waits for the exit; returns the wait status.
  absl::StatusOr<int> Stop(int sig);
  bool running();
  pid_t pid() const;

  v1::DeviceService::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  const std::string& grpc_socket() const { return grpc_socket_; }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& runtime_dir() const { return runtime_dir_; }
  // A device socket path for this daemon's tests.
  std::string DeviceSocket(const std::string& device) const;

  // ---- Convenience calls (deadline 10 s) ----
  grpc::Status Create(const v1::DeviceSpec& spec, v1::Device* out = nullptr);
  absl::StatusOr<v1::Device> Get(const std::string& name);
  grpc::Status Delete(const std::string& name);
  // Polls GetDevice until `condition` holds for the device.
  absl::StatusOr<v1::Device> WaitFor(const std::string& name,
                                     const std::function<bool(const v1::Device&)>& condition,
                                     absl::Duration timeout = kWait);
  absl::StatusOr<v1::Device> WaitForState(const std::string& name, v1::DeviceState state,
                                          absl::Duration timeout = kWait);

 private:
  std::string tag_;
  std::string grpc_socket_;
  std::string state_dir_;
  std::string runtime_dir_;
  std::unique_ptr<vfio_user::testing::Subprocess> process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DeviceService::Stub> stub_;
};

// Specs of the two sample device types.
v1::DeviceSpec Idio16Spec(const std::string& name, const std::string& socket_path,
                          absl::Duration reconnect_window = absl::Seconds(30));
v1::DeviceSpec DmaTestSpec(const std::string& name, const std::string& socket_path,
                           absl::Duration reconnect_window = absl::Seconds(30));

// A client context with a deadline `timeout` from now.
std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10));

}  // namespace vfio_user::controlplane::testing

#endif  // VFIO_USER_CONTROLPLANE_DAEMON_TEST_UTIL_H_
