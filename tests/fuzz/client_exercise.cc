#include "tests/fuzz/client_exercise.h"

#include <sys/eventfd.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "client/guest_memory.h"
#include "core/protocol.h"
#include "core/unique_fd.h"
#include "server/devices/dma_engine_device.h"
#include "server/devices/idio16.h"

namespace vfio_user {
namespace fuzz {
namespace {

constexpr uint64_t kConfigCommand = 0x04;
constexpr uint64_t kCommandMemoryAndBusMaster = 0x0006;

// Programs one DMA test device operation through BAR0 and the BAR2 doorbell
// (docs/DMA_TEST_DEVICE.md) and polls STATUS a bounded number of times.
void RunDmaEngineOperation(Client* client, uint32_t opcode, uint64_t src,
                           uint64_t dst, uint32_t length) {
  using namespace dma_test;  // NOLINT: register names
  const uint32_t bar = kRegisterBar;
  (void)client->WriteValue(bar, kRegControl, 4, kControlEnable | kControlIntEnable);
  (void)client->WriteValue(bar, kRegSrcLo, 4, static_cast<uint32_t>(src));
  (void)client->WriteValue(bar, kRegSrcHi, 4, static_cast<uint32_t>(src >> 32));
  (void)client->WriteValue(bar, kRegDstLo, 4, static_cast<uint32_t>(dst));
  (void)client->WriteValue(bar, kRegDstHi, 4, static_cast<uint32_t>(dst >> 32));
  (void)client->WriteValue(bar, kRegLength, 4, length);
  (void)client->WriteValue(bar, kRegOpcode, 4, opcode);
  (void)client->WriteValue(bar, kRegFillPattern, 4, 0x5a5aa5a5);
  (void)client->WriteValue(bar, kRegTag, 4, 7);
  (void)client->WriteValue(kDoorbellBar, kRegDoorbell, 4, 1);
  for (int i = 0; i < 50; ++i) {
    absl::StatusOr<uint64_t> status = client->ReadValue(bar, kRegStatus, 4);
    if (!status.ok() || !(*status & kStatusBusy)) break;
  }
  (void)client->ReadValue(bar, kRegResultLo, 4);
  (void)client->WriteValue(bar, kRegIntStatus, 4, 0xffffffff);
}

void ExerciseDmaEngine(Client* client) {
  (void)client->WriteValue(kPciConfigRegionIndex, kConfigCommand, 2,
                           kCommandMemoryAndBusMaster);
  // mmap-backed source, message-backed destination and back.
  RunDmaEngineOperation(client, dma_test::kOpFill, 0, kExerciseFdIova, 512);
  RunDmaEngineOperation(client, dma_test::kOpCopy, kExerciseFdIova,
                        kExerciseMessageIova, 256);
  RunDmaEngineOperation(client, dma_test::kOpChecksum, kExerciseMessageIova, 0, 256);
}

void ExerciseIdio16(Client* client) {
  const uint32_t bar = Idio16Device::kRegisterBar;
  (void)client->WriteValue(bar, Idio16Device::kRegOutputs0To7, 1, 0xa5);
  (void)client->WriteValue(bar, Idio16Device::kRegOutputs8To15, 1, 0x5a);
  (void)client->ReadValue(bar, Idio16Device::kRegIrqControl, 1);  // enable IRQs
  (void)client->ReadValue(bar, Idio16Device::kRegInputs0To7, 1);
  (void)client->Read(bar, 0, 8);
  (void)client->WriteValue(bar, Idio16Device::kRegInputs0To7, 1, 0);  // clear
  (void)client->WriteValue(bar, Idio16Device::kRegIrqControl, 1, 0);  // disable
}

void ExerciseInterrupts(Client* client, const DeviceDescription& device) {
  for (uint32_t index = 0; index < device.irqs.size(); ++index) {
    const IrqInfo& irq = device.irqs[index];
    if (irq.count == 0 || !(irq.flags & kIrqInfoEventfd)) continue;
    std::vector<UniqueFd> owned;
    std::vector<int> fds;
    for (uint32_t v = 0; v < irq.count && v < 3; ++v) {
      owned.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      fds.push_back(owned.back().get());
    }
    (void)client->SetIrqEventfds(index, 0, fds);
    if (irq.flags & kIrqInfoMaskable) {
      (void)client->MaskIrqs(index, 0, 1);
      (void)client->UnmaskIrqs(index, 0, 1);
    }
    const uint8_t fire[1] = {1};
    (void)client->TriggerIrqs(index, 0, fire);
    (void)client->DisableIrqs(index);
    break;  // one index is representative
  }
}

}  // namespace

void ExerciseClient(Client* client) {
  const DeviceDescription device = client->device();
  (void)client->Read(kPciConfigRegionIndex, 0, 64);
  absl::StatusOr<uint64_t> ids = client->ReadValue(kPciConfigRegionIndex, 0, 4);

  for (uint32_t index = 0; index < device.regions.size() && index < kPciNumRegions;
       ++index) {
    const RegionDescription& region = device.regions[index];
    if (index == kPciConfigRegionIndex || region.info.size == 0) continue;
    if (region.info.flags & kRegionInfoFlagRead) (void)client->Read(index, 0, 4);
    if (region.info.flags & kRegionInfoFlagMmap) (void)client->MapRegion(index);
  }

  absl::StatusOr<std::unique_ptr<GuestMemory>> memory =
      GuestMemory::Create(2 * kExerciseMemorySize, "fuzz-guest");
  if (memory.ok()) {
    (void)client->DmaMap((*memory)->Region(kExerciseFdIova, 0, kExerciseMemorySize));
    (void)client->DmaMap((*memory)->Region(kExerciseMessageIova, kExerciseMemorySize,
                                           kExerciseMemorySize,
                                           kDmaMapFlagRead | kDmaMapFlagWrite,
                                           /*pass_fd=*/false));
  }

  ExerciseInterrupts(client, device);
  if (ids.ok()) {
    const uint16_t vendor = static_cast<uint16_t>(*ids);
    const uint16_t device_id = static_cast<uint16_t>(*ids >> 16);
    if (vendor == dma_test::kVendorId && device_id == dma_test::kDeviceId) {
      ExerciseDmaEngine(client);
    } else if (vendor == Idio16Device::kVendorId &&
               device_id == Idio16Device::kDeviceId) {
      ExerciseIdio16(client);
    }
  }

  (void)client->Reset();
  (void)client->DmaUnmap(kExerciseFdIova, kExerciseMemorySize);
  (void)client->DmaUnmapAll();
}

}  // namespace fuzz
}  // namespace vfio_user
