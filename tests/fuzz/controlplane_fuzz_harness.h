// The control-plane fuzz target: vfio-userd's gRPC service implementation
// (controlplane/device_service.h) over a real DeviceManager (dense mode: the
// devices run in this process, their sockets are real), fed arbitrary
// serialized requests in-process, as an orchestrator with access to the
// daemon's API socket could send them.
//
// Input: a sequence of calls, each
//   u8 method (ControlplaneMethod, taken modulo kControlplaneMethodCount)
//   u16 length, then that many bytes: the serialized request message.
// A request that does not parse is skipped (gRPC rejects it before the
// handler). In socket paths, the prefix kRuntimeDirPlaceholder stands for
// the harness's private runtime directory, which is also the daemon's
// --allowed_socket_dir: the fuzzer cannot create or remove files elsewhere.
// After the calls every device is deleted.
//
// A run aborts (besides ASan/UBSan/LSan findings) when:
//   - a handler answers OK with a response that contradicts the request
//     (CreateDevice: another name; a socket outside the allowed directory);
//   - devices or file descriptors are left behind once everything was
//     deleted.
#ifndef VFIO_USER_TESTS_FUZZ_CONTROLPLANE_FUZZ_HARNESS_H_
#define VFIO_USER_TESTS_FUZZ_CONTROLPLANE_FUZZ_HARNESS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "google/protobuf/message.h"

namespace vfio_user {
namespace fuzz {

enum class ControlplaneMethod : uint8_t {
  kCreateDevice = 0,
  kGetDevice = 1,
  kListDevices = 2,
  kResetDevice = 3,
  kDeleteDevice = 4,
  kSetIdio16Inputs = 5,
  // WatchDevicesRequest: the snapshot and the events after since_revision,
  // as WatchDevices would stream them (without a gRPC stream).
  kWatchDevices = 6,
};
inline constexpr uint8_t kControlplaneMethodCount = 7;

inline constexpr char kRuntimeDirPlaceholder[] = "@RUNTIME@";

struct ControlplaneRunStats {
  int calls = 0;      // requests that parsed
  int succeeded = 0;  // ... and were answered OK
};

ControlplaneRunStats RunControlplaneFuzzInput(const uint8_t* data, size_t size);

// Writes fuzz inputs.
class ControlplaneScript {
 public:
  ControlplaneScript& Call(ControlplaneMethod method,
                           const google::protobuf::Message& request) {
    const std::string bytes = request.SerializeAsString();
    out_.push_back(static_cast<uint8_t>(method));
    out_.push_back(static_cast<uint8_t>(bytes.size()));
    out_.push_back(static_cast<uint8_t>(bytes.size() >> 8));
    out_.insert(out_.end(), bytes.begin(), bytes.end());
    return *this;
  }
  const std::vector<uint8_t>& bytes() const { return out_; }

 private:
  std::vector<uint8_t> out_;
};

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_CONTROLPLANE_FUZZ_HARNESS_H_
