// Writes the seed corpus of the control-plane fuzz target
// (controlplane_fuzz_harness.h): the request sequences an orchestrator
// sends in practice (the daemon API tests' scenarios), plus the invalid
// requests the API documents.
//
// Usage: make_controlplane_corpus OUT_DIR
//   bazel run //tests/fuzz:make_controlplane_corpus -- $PWD/tests/fuzz/corpus/controlplane
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "proto/vfio_user/v1/device_service.pb.h"
#include "tests/fuzz/controlplane_fuzz_harness.h"

namespace vfio_user {
namespace fuzz {
namespace {

namespace v1 = ::vfio_user::v1;
using M = ControlplaneMethod;

v1::CreateDeviceRequest Create(const std::string& name, bool dma,
                               const std::string& socket = "") {
  v1::CreateDeviceRequest r;
  r.mutable_spec()->set_name(name);
  if (dma) {
    r.mutable_spec()->mutable_dma_test()->set_max_dma_maps(16);
  } else {
    r.mutable_spec()->mutable_idio16()->set_initial_inputs(0x00ff);
  }
  if (!socket.empty()) {
    r.mutable_spec()->mutable_socket()->set_path(socket);
    r.mutable_spec()->mutable_socket()->set_mode("0660");
  }
  r.mutable_spec()->mutable_reconnect_window()->set_seconds(5);
  r.mutable_spec()->set_timeout_policy(v1::TIMEOUT_POLICY_RESET_DEVICE);
  return r;
}

template <typename T>
T Named(const std::string& name) {
  T r;
  r.set_name(name);
  return r;
}

std::vector<std::pair<std::string, ControlplaneScript>> Seeds() {
  const std::string dir = kRuntimeDirPlaceholder;
  std::vector<std::pair<std::string, ControlplaneScript>> seeds;
  {
    ControlplaneScript s;
    v1::SetIdio16InputsRequest inputs = Named<v1::SetIdio16InputsRequest>("idio16-0");
    inputs.set_inputs(0x1234);
    inputs.set_mask(0xff00);
    v1::ResetDeviceRequest reset = Named<v1::ResetDeviceRequest>("idio16-0");
    reset.set_disconnect_client(true);
    s.Call(M::kCreateDevice, Create("idio16-0", false, dir + "/idio16-0.sock"))
        .Call(M::kGetDevice, Named<v1::GetDeviceRequest>("idio16-0"))
        .Call(M::kSetIdio16Inputs, inputs)
        .Call(M::kResetDevice, reset)
        .Call(M::kListDevices, v1::ListDevicesRequest())
        .Call(M::kDeleteDevice, Named<v1::DeleteDeviceRequest>("idio16-0"));
    seeds.emplace_back("lifecycle-idio16", s);
  }
  {
    ControlplaneScript s;
    v1::CreateDeviceRequest a = Create("dma-test-0", true, dir + "/dma.sock");
    v1::CreateDeviceRequest conflicting = a;
    conflicting.mutable_spec()->mutable_dma_test()->set_max_dma_maps(4);
    v1::WatchDevicesRequest watch;
    v1::DeleteDeviceRequest missing = Named<v1::DeleteDeviceRequest>("nope");
    missing.set_allow_missing(true);
    s.Call(M::kCreateDevice, a)
        .Call(M::kCreateDevice, a)             // idempotent
        .Call(M::kCreateDevice, conflicting)   // ALREADY_EXISTS
        .Call(M::kWatchDevices, watch)
        .Call(M::kResetDevice, Named<v1::ResetDeviceRequest>("dma-test-0"))
        .Call(M::kSetIdio16Inputs, Named<v1::SetIdio16InputsRequest>("dma-test-0"))
        .Call(M::kDeleteDevice, missing);
    seeds.emplace_back("lifecycle-dma", s);
  }
  {
    ControlplaneScript s;
    for (int i = 0; i < 4; ++i) {
      s.Call(M::kCreateDevice, Create("dev-" + std::to_string(i), i % 2 == 1));
    }
    v1::ListDevicesRequest page;
    page.set_page_size(1);
    s.Call(M::kListDevices, page);
    page.set_page_token("dev-1");
    s.Call(M::kListDevices, page);
    page.set_page_size(-1);
    s.Call(M::kListDevices, page);
    v1::WatchDevicesRequest watch;
    watch.set_since_revision(1);
    watch.set_name("dev-2");
    s.Call(M::kWatchDevices, watch);
    seeds.emplace_back("pagination", s);
  }
  {
    ControlplaneScript s;
    s.Call(M::kCreateDevice, Create("Bad_Name", false))
        .Call(M::kCreateDevice, Create("-x", false))
        .Call(M::kCreateDevice, Create(std::string(64, 'a'), false))
        .Call(M::kCreateDevice, Create("outside", false, "/tmp/outside.sock"))
        .Call(M::kCreateDevice, Create("dotdot", false, dir + "/../escape.sock"))
        .Call(M::kCreateDevice, Create("relative", false, "relative.sock"))
        .Call(M::kCreateDevice, Create("long", false, dir + "/" + std::string(120, 'p')));
    v1::CreateDeviceRequest mode = Create("mode", false, dir + "/mode.sock");
    mode.mutable_spec()->mutable_socket()->set_mode("7777");
    s.Call(M::kCreateDevice, mode);
    v1::CreateDeviceRequest owner = Create("owner", false, dir + "/owner.sock");
    owner.mutable_spec()->mutable_socket()->set_owner("no-such-user");
    owner.mutable_spec()->mutable_socket()->set_group("0");
    s.Call(M::kCreateDevice, owner);
    v1::CreateDeviceRequest untyped;
    untyped.mutable_spec()->set_name("untyped");
    s.Call(M::kCreateDevice, untyped);
    v1::CreateDeviceRequest window = Create("window", false);
    window.mutable_spec()->mutable_reconnect_window()->set_seconds(-1);
    s.Call(M::kCreateDevice, window);
    v1::SetIdio16InputsRequest inputs = Named<v1::SetIdio16InputsRequest>("x");
    inputs.set_inputs(0x10000);
    s.Call(M::kSetIdio16Inputs, inputs);
    seeds.emplace_back("invalid", s);
  }
  {
    ControlplaneScript s;
    for (int i = 0; i < 10; ++i) {  // beyond max_devices
      s.Call(M::kCreateDevice, Create("many-" + std::to_string(i), false));
    }
    seeds.emplace_back("too-many-devices", s);
  }
  return seeds;
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  int rc = 0;
  for (const auto& [name, script] : vfio_user::fuzz::Seeds()) {
    const std::string path = std::string(argv[1]) + "/" + name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    const auto& bytes = script.bytes();
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    std::printf("%s %s (%zu bytes)\n", out.good() ? "wrote" : "FAILED", path.c_str(),
                bytes.size());
    if (!out.good()) rc = 1;
  }
  return rc;
}
