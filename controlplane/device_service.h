// DeviceServiceImpl: the gRPC face of vfio-userd (vfio_user.v1.DeviceService),
// a thin adapter over DeviceManager: requests are passed through, statuses
// mapped one to one (absl and gRPC share their codes).
//
// WatchDevices holds a handler thread per watcher (sync API); the number of
// concurrent watchers is limited (RESOURCE_EXHAUSTED beyond). A watcher
// notices a cancelled call within kWatchPollInterval.
//
// Thread-safety: thread-safe (gRPC calls the handlers concurrently).
#ifndef VFIO_USER_CONTROLPLANE_DEVICE_SERVICE_H_
#define VFIO_USER_CONTROLPLANE_DEVICE_SERVICE_H_

#include <atomic>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "controlplane/device_manager.h"
#include "grpcpp/grpcpp.h"
#include "proto/vfio_user/v1/device_service.grpc.pb.h"

namespace vfio_user::controlplane {

// absl::Status -> grpc::Status (same code, same message).
grpc::Status ToGrpcStatus(const absl::Status& status);

class DeviceServiceImpl final : public vfio_user::v1::DeviceService::Service {
 public:
  static constexpr absl::Duration kWatchPollInterval = absl::Milliseconds(200);

  // `manager` must outlive the service.
  DeviceServiceImpl(DeviceManager* manager, int max_watchers)
      : manager_(manager), max_watchers_(max_watchers) {}

  grpc::Status CreateDevice(grpc::ServerContext* context,
                            const vfio_user::v1::CreateDeviceRequest* request,
                            vfio_user::v1::Device* response) override;
  grpc::Status GetDevice(grpc::ServerContext* context,
                         const vfio_user::v1::GetDeviceRequest* request,
                         vfio_user::v1::Device* response) override;
  grpc::Status ListDevices(grpc::ServerContext* context,
                           const vfio_user::v1::ListDevicesRequest* request,
                           vfio_user::v1::ListDevicesResponse* response) override;
  grpc::Status ResetDevice(grpc::ServerContext* context,
                           const vfio_user::v1::ResetDeviceRequest* request,
                           vfio_user::v1::Device* response) override;
  grpc::Status DeleteDevice(grpc::ServerContext* context,
                            const vfio_user::v1::DeleteDeviceRequest* request,
                            vfio_user::v1::DeleteDeviceResponse* response) override;
  grpc::Status WatchDevices(grpc::ServerContext* context,
                            const vfio_user::v1::WatchDevicesRequest* request,
                            grpc::ServerWriter<vfio_user::v1::DeviceEvent>* writer) override;
  grpc::Status SetIdio16Inputs(grpc::ServerContext* context,
                               const vfio_user::v1::SetIdio16InputsRequest* request,
                               vfio_user::v1::Idio16State* response) override;

 private:
  DeviceManager* const manager_;
  const int max_watchers_;
  std::atomic<int> watchers_{0};
};

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_DEVICE_SERVICE_H_
