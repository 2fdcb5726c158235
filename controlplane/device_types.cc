#include "controlplane/device_types.h"

#include "absl/strings/str_cat.h"
#include "controlplane/spec.h"
#include "server/devices/dma_engine_device.h"
#include "server/devices/idio16.h"

namespace vfio_user::controlplane {

namespace v1 = ::vfio_user::v1;

absl::Status HostedDevice::Apply(const DeviceAction& action) {
  return absl::FailedPreconditionError(
      absl::StrCat("this device has no action ", ActionName(action)));
}

void HostedDevice::Snapshot(DeviceSnapshot* out) {
  FillCounters(device()->counters(), out->mutable_counters());
  FillTypeState(out);
}

void FillCounters(const DeviceCounters& in, v1::DeviceCounters* out) {
  out->set_messages(in.messages.load());
  out->set_errors(in.errors.load());
  out->set_dma_maps(in.dma_maps.load());
  out->set_dma_unmaps(in.dma_unmaps.load());
  out->set_interrupts(in.irqs_triggered.load());
  out->set_region_reads(in.region_reads.load());
  out->set_region_writes(in.region_writes.load());
  out->set_resets(in.resets.load());
  out->set_connections(in.connections.load());
}

std::string ActionName(const DeviceAction& action) {
  switch (action.action_case()) {
    case DeviceAction::kSetIdio16Inputs: return "set_idio16_inputs";
    case DeviceAction::ACTION_NOT_SET: break;
  }
  return "unset";
}

namespace {

// ---- idio16 ----

class HostedIdio16 : public HostedDevice {
 public:
  explicit HostedIdio16(const std::string& name) : idio_(name) {}
  Device* device() override { return idio_.device(); }

  absl::Status Apply(const DeviceAction& action) override {
    if (action.action_case() != DeviceAction::kSetIdio16Inputs) {
      return HostedDevice::Apply(action);
    }
    const auto& set = action.set_idio16_inputs();
    const uint16_t mask = static_cast<uint16_t>(set.mask());
    const uint16_t lines = static_cast<uint16_t>(
        (idio_.inputs() & ~mask) | (set.inputs() & mask));
    // On the loop thread this applies at once (Idio16Device::SetInputs).
    idio_.SetInputs(lines);
    return absl::OkStatus();
  }

  void SetInitialInputs(uint16_t lines) { idio_.SetInputs(lines); }

 protected:
  void FillTypeState(DeviceSnapshot* out) override {
    out->mutable_idio16()->set_inputs(idio_.inputs());
    out->mutable_idio16()->set_outputs(idio_.outputs());
  }

 private:
  Idio16Device idio_;
};

class Idio16Type : public DeviceType {
 public:
  const char* name() const override { return "idio16"; }

  absl::Status Normalize(v1::DeviceSpec* spec) const override {
    if (spec->idio16().initial_inputs() > 0xffff) {
      return FieldError("spec.idio16.initial_inputs", "at most 0xffff (16 lines)");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<HostedDevice>> Create(
      const v1::DeviceSpec& spec, const RuntimeState& runtime) const override {
    auto hosted = std::make_unique<HostedIdio16>(spec.name());
    const uint32_t lines = runtime.has_idio16_inputs() ? runtime.idio16_inputs()
                                                       : spec.idio16().initial_inputs();
    hosted->SetInitialInputs(static_cast<uint16_t>(lines & 0xffff));
    return std::unique_ptr<HostedDevice>(std::move(hosted));
  }

  bool Accepts(DeviceAction::ActionCase action) const override {
    return action == DeviceAction::kSetIdio16Inputs;
  }

  void RecordRuntime(const DeviceSnapshot& after, RuntimeState* runtime) const override {
    if (after.has_idio16()) runtime->set_idio16_inputs(after.idio16().inputs());
  }
};

// ---- dma_test ----

class HostedDmaTest : public HostedDevice {
 public:
  explicit HostedDmaTest(const std::string& name) : dma_(name) {}
  Device* device() override { return dma_.device(); }

 private:
  DmaTestDevice dma_;
};

class DmaTestType : public DeviceType {
 public:
  static constexpr uint32_t kMaxDmaMapsLimit = 65536;

  const char* name() const override { return "dma_test"; }

  absl::Status Normalize(v1::DeviceSpec* spec) const override {
    if (spec->dma_test().max_dma_maps() > kMaxDmaMapsLimit) {
      return FieldError("spec.dma_test.max_dma_maps",
                        absl::StrCat("at most ", kMaxDmaMapsLimit));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<HostedDevice>> Create(
      const v1::DeviceSpec& spec, const RuntimeState& runtime) const override {
    (void)runtime;
    auto hosted = std::make_unique<HostedDmaTest>(spec.name());
    if (spec.dma_test().max_dma_maps() != 0) {
      hosted->device()->set_max_dma_maps(spec.dma_test().max_dma_maps());
    }
    return std::unique_ptr<HostedDevice>(std::move(hosted));
  }
};

}  // namespace

const DeviceType* FindDeviceType(v1::DeviceSpec::TypeCase type) {
  static const Idio16Type* const idio16 = new Idio16Type;
  static const DmaTestType* const dma_test = new DmaTestType;
  switch (type) {
    case v1::DeviceSpec::kIdio16: return idio16;
    case v1::DeviceSpec::kDmaTest: return dma_test;
    case v1::DeviceSpec::TYPE_NOT_SET: break;
  }
  return nullptr;
}

}  // namespace vfio_user::controlplane
