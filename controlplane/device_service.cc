#include "controlplane/device_service.h"

#include <optional>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "controlplane/spec.h"
#include "core/log.h"

namespace vfio_user::controlplane {

namespace v1 = ::vfio_user::v1;

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

namespace {

// Logs failed calls at debug level (they are the caller's business) and
// converts.
grpc::Status Answer(absl::string_view method, const absl::Status& status) {
  if (!status.ok()) {
    Log(LogLevel::kDebug, "grpc", "request failed",
        {{"method", method}, {"error", status.ToString()}});
  }
  return ToGrpcStatus(status);
}

}  // namespace

grpc::Status DeviceServiceImpl::CreateDevice(grpc::ServerContext*,
                                             const v1::CreateDeviceRequest* request,
                                             v1::Device* response) {
  auto device = manager_->Create(request->spec());
  if (device.ok()) *response = std::move(*device);
  return Answer("CreateDevice", device.status());
}

grpc::Status DeviceServiceImpl::GetDevice(grpc::ServerContext*,
                                          const v1::GetDeviceRequest* request,
                                          v1::Device* response) {
  auto device = manager_->Get(request->name());
  if (device.ok()) *response = std::move(*device);
  return Answer("GetDevice", device.status());
}

grpc::Status DeviceServiceImpl::ListDevices(grpc::ServerContext*,
                                            const v1::ListDevicesRequest* request,
                                            v1::ListDevicesResponse* response) {
  auto list = manager_->List(request->page_size(), request->page_token());
  if (list.ok()) *response = std::move(*list);
  return Answer("ListDevices", list.status());
}

grpc::Status DeviceServiceImpl::ResetDevice(grpc::ServerContext*,
                                            const v1::ResetDeviceRequest* request,
                                            v1::Device* response) {
  auto device = manager_->Reset(request->name(), request->disconnect_client());
  if (device.ok()) *response = std::move(*device);
  return Answer("ResetDevice", device.status());
}

grpc::Status DeviceServiceImpl::DeleteDevice(grpc::ServerContext*,
                                             const v1::DeleteDeviceRequest* request,
                                             v1::DeleteDeviceResponse* response) {
  auto revision = manager_->Delete(request->name(), request->allow_missing());
  if (revision.ok()) response->set_revision(*revision);
  return Answer("DeleteDevice", revision.status());
}

grpc::Status DeviceServiceImpl::SetIdio16Inputs(grpc::ServerContext*,
                                                const v1::SetIdio16InputsRequest* request,
                                                v1::Idio16State* response) {
  std::optional<uint32_t> mask;
  if (request->has_mask()) mask = request->mask();
  auto state = manager_->SetIdio16Inputs(request->name(), request->inputs(), mask);
  if (state.ok()) *response = std::move(*state);
  return Answer("SetIdio16Inputs", state.status());
}

grpc::Status DeviceServiceImpl::WatchDevices(grpc::ServerContext* context,
                                             const v1::WatchDevicesRequest* request,
                                             grpc::ServerWriter<v1::DeviceEvent>* writer) {
  const std::string& only = request->name();
  if (!only.empty()) {
    if (absl::Status st = ValidateDeviceName(only, "name"); !st.ok()) return ToGrpcStatus(st);
  }
  if (watchers_.fetch_add(1) >= max_watchers_) {
    watchers_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("at most ", max_watchers_,
                                     " concurrent watchers (--max_watchers)"));
  }
  absl::Cleanup release = [this] { watchers_.fetch_sub(1); };
  auto wanted = [&only](const v1::DeviceEvent& e) {
    return only.empty() || !e.has_device() || e.device().spec().name() == only;
  };

  uint64_t after = request->since_revision();
  if (after == 0) {
    auto snapshot = manager_->TakeSnapshot();
    if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
    for (v1::Device& device : snapshot->devices) {
      v1::DeviceEvent event;
      event.set_revision(snapshot->revision);
      event.set_type(v1::DEVICE_EVENT_TYPE_SNAPSHOT);
      *event.mutable_device() = std::move(device);
      event.set_reason("snapshot");
      if (wanted(event) && !writer->Write(event)) return grpc::Status::OK;
    }
    v1::DeviceEvent synced;
    synced.set_revision(snapshot->revision);
    synced.set_type(v1::DEVICE_EVENT_TYPE_SYNCED);
    synced.set_reason("snapshot complete");
    if (!writer->Write(synced)) return grpc::Status::OK;
    after = snapshot->revision;
  }
  constexpr size_t kBatch = 64;
  while (!context->IsCancelled()) {
    auto events = manager_->events().WaitForEvents(after, absl::Now() + kWatchPollInterval, kBatch);
    if (!events.ok()) return ToGrpcStatus(events.status());
    for (const v1::DeviceEvent& event : *events) {
      after = event.revision();
      if (wanted(event) && !writer->Write(event)) return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled");
}

}  // namespace vfio_user::controlplane
