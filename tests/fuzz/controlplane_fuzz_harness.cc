#include "tests/fuzz/controlplane_fuzz_harness.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "controlplane/device_manager.h"
#include "controlplane/device_service.h"
#include "controlplane/process.h"
#include "controlplane/state_store.h"
#include "grpcpp/grpcpp.h"
#include "proto/vfio_user/v1/device_service.pb.h"
#include "tests/fuzz/open_fds.h"

namespace vfio_user {
namespace fuzz {
namespace {

namespace v1 = ::vfio_user::v1;
using controlplane::DeviceManager;
using controlplane::DeviceServiceImpl;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "control-plane fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

// The device loop closes a deleted device's sockets on its own thread, and
// on a loaded machine a moment after DeleteDevice returned: the count gets
// a grace period before it counts as a leak.
bool FdsSettleAt(int expected) {
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (CountOpenFds() != expected) {
    if (absl::Now() >= give_up) {
      std::fprintf(stderr, "open fds: %d, expected %d\n", CountOpenFds(),
                   expected);
      PrintOpenFds();
      return false;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// The daemon's core, made once per process.
struct Daemon {
  std::string runtime_dir;
  std::unique_ptr<DeviceManager> manager;
  std::unique_ptr<DeviceServiceImpl> service;
};

Daemon& TheDaemon() {
  static Daemon* daemon = [] {
    auto* d = new Daemon;
    char dir[] = "/tmp/vfu-cpfz.XXXXXX";
    Check(::mkdtemp(dir) != nullptr, "mkdtemp failed");
    d->runtime_dir = dir;
    static std::string cleanup_dir = dir;
    std::atexit([] {
      std::string cmd = "rm -rf '" + cleanup_dir + "'";
      (void)std::system(cmd.c_str());
    });
    auto signal_fd = controlplane::BlockSignalsIntoFd({SIGCHLD});
    Check(signal_fd.ok(), "cannot make a signalfd");
    auto store = controlplane::StateStore::Open(d->runtime_dir + "/state");
    Check(store.ok(), "cannot open the state directory");
    controlplane::ManagerOptions options;
    options.isolation = controlplane::Isolation::kDense;
    options.max_devices = 8;
    options.spec_policy.allowed_socket_dir = d->runtime_dir;
    options.command_timeout = absl::Seconds(2);
    options.watch_history = 64;
    auto manager = DeviceManager::Start(options, std::move(*store),
                                        std::move(*signal_fd), [](int) {});
    Check(manager.ok(), "cannot start the device manager");
    d->manager = std::move(*manager);
    d->service = std::make_unique<DeviceServiceImpl>(d->manager.get(), 2);
    return d;
  }();
  return *daemon;
}

// The placeholder prefix becomes the runtime directory.
void PlaceSocket(const std::string& runtime_dir, v1::DeviceSpec* spec) {
  if (!spec->has_socket()) return;
  const std::string& path = spec->socket().path();
  if (absl::StartsWith(path, kRuntimeDirPlaceholder)) {
    spec->mutable_socket()->set_path(
        absl::StrCat(runtime_dir, path.substr(sizeof(kRuntimeDirPlaceholder) - 1)));
  }
}

template <typename Request>
bool Parse(const uint8_t* data, size_t size, Request* request) {
  return request->ParseFromArray(data, static_cast<int>(size));
}

void CheckCreated(const Daemon& d, const v1::CreateDeviceRequest& request,
                  const v1::Device& device) {
  Check(device.spec().name() == request.spec().name(), "CreateDevice answered another name");
  const std::string& path = device.spec().socket().path();
  Check(path.empty() || absl::StartsWith(path, d.runtime_dir + "/"),
        "a device socket outside the allowed directory");
}

// One call; returns whether it parsed (stats) and its outcome.
void Call(Daemon& d, ControlplaneMethod method, const uint8_t* data, size_t size,
          ControlplaneRunStats* stats) {
  grpc::ServerContext context;
  grpc::Status status;
  switch (method) {
    case ControlplaneMethod::kCreateDevice: {
      v1::CreateDeviceRequest request;
      if (!Parse(data, size, &request)) return;
      PlaceSocket(d.runtime_dir, request.mutable_spec());
      v1::Device response;
      status = d.service->CreateDevice(&context, &request, &response);
      if (status.ok()) CheckCreated(d, request, response);
      break;
    }
    case ControlplaneMethod::kGetDevice: {
      v1::GetDeviceRequest request;
      if (!Parse(data, size, &request)) return;
      v1::Device response;
      status = d.service->GetDevice(&context, &request, &response);
      if (status.ok()) {
        Check(response.spec().name() == request.name(), "GetDevice answered another device");
      }
      break;
    }
    case ControlplaneMethod::kListDevices: {
      v1::ListDevicesRequest request;
      if (!Parse(data, size, &request)) return;
      v1::ListDevicesResponse response;
      status = d.service->ListDevices(&context, &request, &response);
      break;
    }
    case ControlplaneMethod::kResetDevice: {
      v1::ResetDeviceRequest request;
      if (!Parse(data, size, &request)) return;
      v1::Device response;
      status = d.service->ResetDevice(&context, &request, &response);
      break;
    }
    case ControlplaneMethod::kDeleteDevice: {
      v1::DeleteDeviceRequest request;
      if (!Parse(data, size, &request)) return;
      v1::DeleteDeviceResponse response;
      status = d.service->DeleteDevice(&context, &request, &response);
      break;
    }
    case ControlplaneMethod::kSetIdio16Inputs: {
      v1::SetIdio16InputsRequest request;
      if (!Parse(data, size, &request)) return;
      v1::Idio16State response;
      status = d.service->SetIdio16Inputs(&context, &request, &response);
      break;
    }
    case ControlplaneMethod::kWatchDevices: {
      v1::WatchDevicesRequest request;
      if (!Parse(data, size, &request)) return;
      // What WatchDevices streams, without the stream: the snapshot (if
      // asked for) and the events after the revision, without waiting.
      uint64_t after = request.since_revision();
      absl::Status st;
      if (after == 0) {
        auto snapshot = d.manager->TakeSnapshot();
        st = snapshot.status();
        if (snapshot.ok()) after = snapshot->revision;
      }
      if (st.ok()) st = d.manager->events().WaitForEvents(after, absl::Now(), 64).status();
      status = controlplane::ToGrpcStatus(st);
      break;
    }
  }
  ++stats->calls;
  if (status.ok()) ++stats->succeeded;
}

// Deletes every device; the daemon must then hold nothing for them.
void DeleteAll(Daemon& d) {
  for (int round = 0; round < 4 && d.manager->device_count() > 0; ++round) {
    auto list = d.manager->List(1000, "");
    if (!list.ok()) break;
    for (const v1::Device& device : list->devices()) {
      (void)d.manager->Delete(device.spec().name(), /*allow_missing=*/true);
    }
  }
  Check(d.manager->device_count() == 0, "devices left after deleting every device");
}

}  // namespace

ControlplaneRunStats RunControlplaneFuzzInput(const uint8_t* data, size_t size) {
  Daemon& d = TheDaemon();
  static const bool warmed_up = [&d] {
    // A first device warms up what the manager creates lazily (the dense
    // device loop, ...).
    v1::CreateDeviceRequest warm;
    warm.mutable_spec()->set_name("warm-up");
    warm.mutable_spec()->mutable_idio16();
    grpc::ServerContext context;
    v1::Device response;
    (void)d.service->CreateDevice(&context, &warm, &response);
    DeleteAll(d);
    return true;
  }();
  (void)warmed_up;
  // Counted per input, not once: libFuzzer itself opens fds between inputs
  // (the pipes to llvm-symbolizer when it first prints a NEW_FUNC line).
  const int fds_before = CountOpenFds();

  ControlplaneRunStats stats;
  size_t pos = 0;
  while (pos < size) {
    const auto method = static_cast<ControlplaneMethod>(data[pos] % kControlplaneMethodCount);
    size_t len = pos + 2 < size ? (data[pos + 1] | (data[pos + 2] << 8)) : 0;
    pos += 3;
    if (pos > size) break;
    len = std::min(len, size - pos);
    Call(d, method, data + pos, len, &stats);
    pos += len;
  }
  DeleteAll(d);
  Check(FdsSettleAt(fds_before), "file descriptors leaked");
  return stats;
}

}  // namespace fuzz
}  // namespace vfio_user
