#include "server/device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "server/dma_channel.h"
#include "server/event_loop.h"
#include "server/session.h"

namespace vfio_user {
namespace {

// How long a worker waits for a DMA-by-message round trip (the session's
// own per-request timeout fires first and closes a client that is stuck).
constexpr absl::Duration kDmaMessageWait = absl::Seconds(10);

constexpr uint32_t kMigrationMagic = 0x4d554656;  // "VFUM"
constexpr uint32_t kMigrationFormat = 1;

bool RangeFits(uint64_t offset, uint64_t len, uint64_t size) {
  return offset <= size && len <= size - offset;
}

void PutU32(std::vector<uint8_t>* out, uint32_t v) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  out->insert(out->end(), b, b + 4);
}

void PutBlob(std::vector<uint8_t>* out, absl::Span<const uint8_t> blob) {
  PutU32(out, static_cast<uint32_t>(blob.size()));
  out->insert(out->end(), blob.begin(), blob.end());
}

// Reads a length-prefixed blob at *pos; fails if it runs past the end.
absl::StatusOr<absl::Span<const uint8_t>> GetBlob(absl::Span<const uint8_t> in,
                                                  size_t* pos) {
  if (in.size() - *pos < 4) return ErrnoError(EINVAL, "migration state truncated");
  uint32_t len;
  std::memcpy(&len, in.data() + *pos, 4);
  *pos += 4;
  if (in.size() - *pos < len) return ErrnoError(EINVAL, "migration state truncated");
  absl::Span<const uint8_t> blob = in.subspan(*pos, len);
  *pos += len;
  return blob;
}

}  // namespace

RegionSpec RegionSpec::Trapped(uint64_t size, RegionReadFn read, RegionWriteFn write) {
  RegionSpec spec;
  spec.size = size;
  spec.readable = read != nullptr;
  spec.writable = write != nullptr;
  spec.read = std::move(read);
  spec.write = std::move(write);
  return spec;
}

RegionSpec RegionSpec::Memory(uint64_t size, std::vector<SparseMmapArea> areas,
                              RegionReadFn read, RegionWriteFn write) {
  RegionSpec spec;
  spec.size = size;
  spec.memory_backed = true;
  spec.mmap_areas = std::move(areas);
  spec.read = std::move(read);
  spec.write = std::move(write);
  return spec;
}

const char* ResetReasonName(ResetReason reason) {
  switch (reason) {
    case ResetReason::kClientRequest: return "client-request";
    case ResetReason::kFunctionLevel: return "function-level";
    case ResetReason::kLostConnection: return "lost-connection";
  }
  return "unknown";
}

Device::Device(std::string name, bool pcie)
    : name_(std::move(name)),
      config_(pcie ? PciConfigSize::kExpress : PciConfigSize::kConventional),
      regions_(kPciNumRegions) {}

Device::~Device() {
  *alive_ = false;  // tasks this device posted to the loop must not touch it
  // IrqController unwatches its fds through the loop; it must go first.
  irqs_.reset();
  for (auto& region : regions_) {
    if (region && region->memory != nullptr) {
      ::munmap(region->memory, region->spec.size);
    }
  }
}

absl::Status Device::SetupRegion(uint32_t index, RegionSpec spec) {
  if (finalized_) return ErrnoError(EBUSY, "device is already being served");
  if (index == kPciConfigRegionIndex) {
    return ErrnoError(EINVAL, "region 7 is the config space, provided by the engine");
  }
  if (index > 64) return ErrnoError(EINVAL, "region index too large");
  if (spec.size == 0) return ErrnoError(EINVAL, "region size must be > 0");
  for (const SparseMmapArea& a : spec.mmap_areas) {
    if (!spec.memory_backed) return ErrnoError(EINVAL, "mmap areas need memory backing");
    if (a.size == 0 || !RangeFits(a.offset, a.size, spec.size) ||
        a.offset % 4096 != 0 || a.size % 4096 != 0) {
      return ErrnoError(EINVAL, "mmap areas must be page-aligned and inside the region");
    }
  }
  if (index >= regions_.size()) regions_.resize(index + 1);
  regions_[index] = Region{std::move(spec), UniqueFd(), nullptr};
  return absl::OkStatus();
}

void Device::SetIrqCount(uint32_t index, uint32_t count) {
  if (index < kPciNumIrqs) irq_counts_[index] = count;
}

void Device::SetConnectionCallbacks(std::function<void()> on_attach,
                                    std::function<void()> on_detach) {
  on_attach_ = std::move(on_attach);
  on_detach_ = std::move(on_detach);
}

absl::Status Device::Finalize(EventLoop* loop) {
  if (finalized_) {
    if (loop != loop_) return ErrnoError(EBUSY, "device already served by another loop");
    return absl::OkStatus();
  }
  loop_ = loop;
  // Memory backings the client can mmap.
  for (uint32_t i = 0; i < regions_.size(); ++i) {
    if (!regions_[i] || !regions_[i]->spec.memory_backed) continue;
    Region& r = *regions_[i];
    std::string memfd_name = absl::StrCat("vfio-user:", name_, ":region", i);
    UniqueFd fd(::memfd_create(memfd_name.c_str(), MFD_CLOEXEC));
    if (!fd) return ErrnoError(errno, "memfd_create failed");
    if (::ftruncate(fd.get(), static_cast<off_t>(r.spec.size)) != 0) {
      return ErrnoError(errno, "ftruncate of region memory failed");
    }
    void* p = ::mmap(nullptr, r.spec.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return ErrnoError(errno, "mmap of region memory failed");
    r.memfd = std::move(fd);
    r.memory = static_cast<uint8_t*>(p);
  }
  if (absl::Status st = SetupMsix(); !st.ok()) return st;

  IrqController::Config irq_config;
  irq_config.vector_counts[kPciIntxIrqIndex] =
      irq_counts_[kPciIntxIrqIndex].value_or(
          config_.interrupt_pin() != PciIntxPin::kNone ? 1 : 0);
  irq_config.vector_counts[kPciMsiIrqIndex] =
      irq_counts_[kPciMsiIrqIndex].value_or(config_.msi_vectors());
  irq_config.vector_counts[kPciMsixIrqIndex] =
      irq_counts_[kPciMsixIrqIndex].value_or(msix_ ? msix_->size() : 0);
  irq_config.vector_counts[kPciErrIrqIndex] = irq_counts_[kPciErrIrqIndex].value_or(1);
  irq_config.vector_counts[kPciReqIrqIndex] = irq_counts_[kPciReqIrqIndex].value_or(1);
  irq_config.msi_maskable = false;
  irq_config.msix_maskable = irq_config.vector_counts[kPciMsixIrqIndex] > 0;
  irq_config.watcher = loop;
  auto irqs = IrqController::Create(std::move(irq_config));
  if (!irqs.ok()) return irqs.status();
  irqs_ = std::move(*irqs);
  dma_ = std::make_unique<DmaTable>(max_dma_maps_, kDefaultPgsizes);
  if (absl::Status st = SetupConfigCallbacks(); !st.ok()) return st;
  finalized_ = true;
  return absl::OkStatus();
}

absl::Status Device::SetupMsix() {
  const uint16_t cap = config_.msix_offset();
  if (cap == 0) return absl::OkStatus();
  const uint16_t control = config_.Get16(cap + kPciMsixFlags);
  const uint32_t table = config_.Get32(cap + kPciMsixTable);
  const uint32_t pba = config_.Get32(cap + kPciMsixPba);
  MsixLayout layout;
  layout.table_size = (control & kPciMsixFlagsQsize) + 1;
  layout.table_bar = static_cast<int>(table & kPciMsixBirMask);
  layout.table_offset = table & ~kPciMsixBirMask;
  layout.pba_bar = static_cast<int>(pba & kPciMsixBirMask);
  layout.pba_offset = pba & ~kPciMsixBirMask;
  if (absl::Status st = ValidateMsixLayout(layout); !st.ok()) return st;
  for (int bar : {layout.table_bar, layout.pba_bar}) {
    if (bar >= static_cast<int>(regions_.size()) || !regions_[bar]) {
      return ErrnoError(EINVAL, absl::StrCat("MSI-X lives in BAR", bar,
                                             " but that region is not set up"));
    }
  }
  msix_ = std::make_unique<MsixTable>(layout);
  msix_mask_written_.assign(layout.table_size, false);
  msix_->callbacks().vector_mask_changed = [this](uint32_t vector, bool) {
    if (vector < msix_mask_written_.size()) msix_mask_written_[vector] = true;
    ApplyMsixMasks();
  };
  return absl::OkStatus();
}

void Device::ApplyMsixMasks() {
  if (!msix_ || !irqs_) return;
  const bool function_masked = msix_->function_masked();
  for (uint32_t v = 0; v < msix_->size(); ++v) {
    const bool masked =
        function_masked || (msix_mask_written_[v] && msix_->VectorMaskBit(v));
    if (irqs_->IsMasked(kPciMsixIrqIndex, v) != masked) {
      (void)irqs_->SetVectorMasked(kPciMsixIrqIndex, v, masked);
    }
  }
}

absl::Status Device::SetupConfigCallbacks() {
  // The engine hooks config space first and then forwards to whatever the
  // device author installed.
  author_config_callbacks_ = config_.callbacks();
  PciConfigCallbacks& cb = config_.callbacks();
  cb.msix_control_changed = [this](bool enabled, bool function_masked) {
    if (msix_) msix_->SetControl(enabled, function_masked);
    ApplyMsixMasks();
    if (author_config_callbacks_.msix_control_changed) {
      author_config_callbacks_.msix_control_changed(enabled, function_masked);
    }
  };
  cb.command_changed = [this](uint16_t old_command, uint16_t new_command) {
    if (irqs_) irqs_->SetIntxLevel(intx_level_ && !config_.IntxDisabled());
    if (author_config_callbacks_.command_changed) {
      author_config_callbacks_.command_changed(old_command, new_command);
    }
  };
  cb.function_level_reset = [this] {
    Reset(ResetReason::kFunctionLevel);
    if (author_config_callbacks_.function_level_reset) {
      author_config_callbacks_.function_level_reset();
    }
  };
  return absl::OkStatus();
}

const Device::Region* Device::region(uint32_t index) const {
  if (index >= regions_.size() || !regions_[index]) return nullptr;
  return &*regions_[index];
}

uint32_t Device::num_regions() const {
  return static_cast<uint32_t>(std::max<size_t>(regions_.size(), kPciNumRegions));
}

DeviceInfo Device::GetInfo() const {
  DeviceInfo info;
  info.flags = kDeviceFlagsPci | kDeviceFlagsReset;
  info.num_regions = num_regions();
  info.num_irqs = kPciNumIrqs;
  return info;
}

absl::StatusOr<RegionInfo> Device::GetRegionInfo(uint32_t index) const {
  if (index >= num_regions()) {
    return ErrnoError(EINVAL, absl::StrCat("region index ", index, " out of range"));
  }
  RegionInfo info;
  info.index = index;
  if (index == kPciConfigRegionIndex) {
    info.size = config_.size();
    info.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite;
    return info;
  }
  const Region* r = region(index);
  if (r == nullptr) return info;  // size 0: not implemented
  info.size = r->spec.size;
  if (r->spec.readable || r->spec.memory_backed) info.flags |= kRegionInfoFlagRead;
  if (r->spec.writable || r->spec.memory_backed) info.flags |= kRegionInfoFlagWrite;
  if (r->spec.memory_backed) {
    info.flags |= kRegionInfoFlagMmap;
    info.offset = 0;
    std::vector<SparseMmapArea> areas = r->spec.mmap_areas;
    if (areas.empty()) areas.push_back({0, r->spec.size});
    info.sparse_areas = std::move(areas);
  }
  if (index >= kPciNumRegions) {
    // Device-specific regions must carry a type (PROTOCOL.md §5.2).
    info.type_cap = RegionInfo::TypeCap{0x80000000u | 0x0000, 0};
  }
  return info;
}

int Device::RegionFd(uint32_t index) const {
  const Region* r = region(index);
  return r != nullptr && r->memfd ? r->memfd.get() : -1;
}

uint8_t* Device::RegionMemory(uint32_t index) {
  const Region* r = region(index);
  return r != nullptr ? r->memory : nullptr;
}

bool Device::InMmapArea(const Region& r, uint64_t offset, size_t len) const {
  if (!r.spec.memory_backed) return false;
  if (r.spec.mmap_areas.empty()) return true;
  for (const SparseMmapArea& a : r.spec.mmap_areas) {
    if (offset >= a.offset && RangeFits(offset - a.offset, len, a.size)) return true;
  }
  return false;
}

absl::Status Device::CheckAccess(uint32_t index, uint64_t offset, size_t len,
                                 bool write, const Region** out) const {
  const Region* r = region(index);
  if (r == nullptr) {
    return ErrnoError(EINVAL, absl::StrCat("region ", index, " is not implemented"));
  }
  if (!RangeFits(offset, len, r->spec.size)) {
    return ErrnoError(EINVAL, absl::StrCat("access [", offset, ", +", len,
                                           ") outside region ", index));
  }
  *out = r;
  (void)write;
  return absl::OkStatus();
}

absl::Status Device::MsixBarRead(uint32_t index, uint64_t offset,
                                 absl::Span<uint8_t> out) {
  // The PBA shows the interrupt layer's pending bits.
  for (uint32_t v = 0; v < msix_->size(); ++v) {
    if (irqs_->IsPending(kPciMsixIrqIndex, v)) {
      msix_->SetPending(v);
    } else {
      msix_->ClearPending(v);
    }
  }
  return msix_->BarRead(static_cast<int>(index), offset, out);
}

absl::Status Device::MsixBarWrite(uint32_t index, uint64_t offset,
                                  absl::Span<const uint8_t> in) {
  absl::Status st = msix_->BarWrite(static_cast<int>(index), offset, in);
  if (!st.ok()) return st;
  // Vectors whose Vector Control the guest wrote now follow the table's mask
  // bit (even when the write did not change it, e.g. masking an entry that
  // is masked at power-on).
  const MsixLayout& layout = msix_->layout();
  if (static_cast<int>(index) == layout.table_bar && offset >= layout.table_offset &&
      offset - layout.table_offset < layout.table_bytes()) {
    const uint64_t first = offset - layout.table_offset;
    const uint64_t last = first + in.size() - 1;
    for (uint64_t v = first / kPciMsixEntrySize; v <= last / kPciMsixEntrySize &&
                                                 v < msix_mask_written_.size();
         ++v) {
      const uint64_t control = v * kPciMsixEntrySize + 12;
      if (first <= control + 3 && last >= control) msix_mask_written_[v] = true;
    }
    ApplyMsixMasks();
  }
  return absl::OkStatus();
}

absl::Status Device::RegionRead(uint32_t index, uint64_t offset,
                                absl::Span<uint8_t> out) {
  if (index == kPciConfigRegionIndex) return config_.Read(offset, out);
  const Region* r;
  if (absl::Status st = CheckAccess(index, offset, out.size(), false, &r); !st.ok()) {
    return st;
  }
  if (msix_ && msix_->Covers(static_cast<int>(index), offset, out.size())) {
    return MsixBarRead(index, offset, out);
  }
  if (r->memory != nullptr && (InMmapArea(*r, offset, out.size()) || !r->spec.read)) {
    std::memcpy(out.data(), r->memory + offset, out.size());
    return absl::OkStatus();
  }
  if (!r->spec.read) return ErrnoError(EINVAL, absl::StrCat("region ", index, " is not readable"));
  return r->spec.read(offset, out);
}

absl::Status Device::RegionWrite(uint32_t index, uint64_t offset,
                                 absl::Span<const uint8_t> in) {
  if (index == kPciConfigRegionIndex) return config_.Write(offset, in);
  const Region* r;
  if (absl::Status st = CheckAccess(index, offset, in.size(), true, &r); !st.ok()) {
    return st;
  }
  if (msix_ && msix_->Covers(static_cast<int>(index), offset, in.size())) {
    return MsixBarWrite(index, offset, in);
  }
  if (r->memory != nullptr && (InMmapArea(*r, offset, in.size()) || !r->spec.write)) {
    std::memcpy(r->memory + offset, in.data(), in.size());
    return absl::OkStatus();
  }
  if (!r->spec.write) return ErrnoError(EINVAL, absl::StrCat("region ", index, " is not writable"));
  return r->spec.write(offset, in);
}

void Device::Reset(ResetReason reason) {
  Log(LogLevel::kInfo, "device", "reset",
      {{"device", name_}, {"reason", ResetReasonName(reason)}});
  counters_.resets++;
  if (reason != ResetReason::kFunctionLevel) config_.Reset();  // FLR already did
  intx_level_ = false;
  if (msix_) {
    msix_->Reset();
    msix_mask_written_.assign(msix_->size(), false);
  }
  if (irqs_) irqs_->Reset();
  if (on_reset_) on_reset_(reason);
}

void Device::Attach(Session* session) {
  session_ = session;
  if (on_attach_) on_attach_();
}

void Device::PendingMessageDma::Finish(absl::Status status) {
  if (finished) return;  // the session answered, or the client went first
  finished = true;
  result = std::move(status);
  done.Notify();
}

void Device::SetDmaChannel(std::shared_ptr<DmaChannel> channel) {
  absl::MutexLock lock(&pending_dma_mu_);
  dma_channel_ = std::move(channel);
}

void Device::Detach() {
  SetDmaChannel(nullptr);
  if (session_ == nullptr) return;
  session_ = nullptr;
  {
    // Workers waiting for DMA by message: no client will answer any more.
    absl::MutexLock lock(&pending_dma_mu_);
    for (const auto& pending : pending_message_dma_) {
      pending->Finish(ErrnoError(ENOTCONN, "client went away"));
    }
  }
  // PROTOCOL.md §6.6: drop the client's maps and interrupt fds, keep state.
  if (dma_) dma_->UnmapAll();
  if (irqs_) irqs_->ReleaseClientResources();
  if (reset_on_disconnect_) Reset(ResetReason::kLostConnection);
  if (on_detach_) on_detach_();
}

absl::Status Device::TriggerIrq(uint32_t index, uint32_t vector) {
  if (!irqs_) return ErrnoError(ENODEV, "device is not being served");
  counters_.irqs_triggered++;
  return irqs_->Trigger(index, vector);
}

void Device::SetIntxLevel(bool asserted) {
  if (!irqs_) return;
  if (asserted) counters_.irqs_triggered++;
  // Config space belongs to the loop thread.
  if (loop_ != nullptr && !loop_->IsLoopThread()) {
    loop_->Post([this, alive = alive_, asserted] {
      if (*alive) ApplyIntxLevel(asserted);
    });
  } else {
    ApplyIntxLevel(asserted);
  }
}

void Device::ApplyIntxLevel(bool asserted) {
  intx_level_ = asserted;
  // Status.Interrupt shows the function's internal state; Command.Interrupt
  // Disable only keeps it off the wire (PCI Local Bus spec 6.2.2/6.2.3).
  config_.SetIntxAsserted(asserted);
  irqs_->SetIntxLevel(asserted && !config_.IntxDisabled());
}

absl::Status Device::DmaRead(uint64_t iova, absl::Span<uint8_t> out) {
  return DmaAccess(iova, out.data(), out.size(), /*write=*/false);
}

absl::Status Device::DmaWrite(uint64_t iova, absl::Span<const uint8_t> in) {
  return DmaAccess(iova, const_cast<uint8_t*>(in.data()), in.size(), /*write=*/true);
}

absl::Status Device::DmaUnavailableError() const {
  if (!dma_) return ErrnoError(ENODEV, "device is not being served");
  return ErrnoError(ENOTCONN, "no client attached");
}

absl::Status Device::WithDmaMapping(
    uint64_t iova, size_t len, bool write,
    absl::FunctionRef<void(absl::Span<uint8_t>)> fn) {
  if (ABSL_PREDICT_FALSE(!DmaAvailable())) return DmaUnavailableError();
  return dma_->WithMappedRange(iova, len, write, fn);
}

absl::Status Device::DmaAccess(uint64_t iova, uint8_t* buf, size_t len, bool write) {
  if (ABSL_PREDICT_FALSE(!DmaAvailable())) return DmaUnavailableError();
  absl::Status direct = write ? dma_->Write(iova, absl::Span<const uint8_t>(buf, len))
                              : dma_->Read(iova, absl::Span<uint8_t>(buf, len));
  if (direct.ok() || !IsMessageOnly(direct)) return direct;
  if (loop_->IsLoopThread()) {
    return ErrnoError(EDEADLK,
                      "DMA to memory mapped without an fd needs a worker thread");
  }
  // With a twin socket this thread does the round trips itself: no hand-off
  // to the loop and back (server/dma_channel.h). It declines while the
  // loop's own requests use the socket; then the loop path below queues.
  std::shared_ptr<DmaChannel> channel;
  {
    absl::MutexLock lock(&pending_dma_mu_);
    channel = dma_channel_;
  }
  if (channel != nullptr) {
    std::optional<absl::Status> done = channel->Access(iova, buf, len, write);
    if (done.has_value()) return *std::move(done);
  }
  // Round trip through the client: the loop thread sends DMA_READ/WRITE and
  // this thread waits. The shared state outlives a timed-out wait. It is
  // registered so that a client that goes away (Detach) releases the waiter
  // at once, even when the task below has not run yet.
  auto state = std::make_shared<PendingMessageDma>();
  if (write) {
    state->buffer.assign(buf, buf + len);
  } else {
    state->buffer.resize(len);
  }
  {
    absl::MutexLock lock(&pending_dma_mu_);
    pending_message_dma_.insert(state);
  }
  // The task may run after this device is gone (destroyed while a worker
  // waited here): it checks `alive` (on the loop thread, where destruction
  // happens) before touching the device.
  loop_->Post([this, alive = alive_, state, iova, write] {
    if (!*alive) {
      state->Finish(ErrnoError(ENODEV, "device destroyed"));
      return;
    }
    Session* s = session_;
    auto finish = [state](absl::Status st) { state->Finish(std::move(st)); };
    if (s == nullptr) {
      finish(ErrnoError(ENOTCONN, "client went away"));
    } else if (write) {
      s->DmaWriteByMessage(iova, state->buffer.data(), state->buffer.size(), finish);
    } else {
      s->DmaReadByMessage(iova, state->buffer.data(), state->buffer.size(), finish);
    }
  });
  const bool answered = state->done.WaitForNotificationWithTimeout(kDmaMessageWait);
  {
    absl::MutexLock lock(&pending_dma_mu_);
    pending_message_dma_.erase(state);
  }
  if (!answered) return ErrnoError(ETIMEDOUT, "DMA by message timed out");
  if (state->result.ok() && !write) std::memcpy(buf, state->buffer.data(), len);
  return state->result;
}

absl::StatusOr<std::vector<uint8_t>> Device::SaveMigrationState() {
  std::vector<uint8_t> out;
  PutU32(&out, kMigrationMagic);
  PutU32(&out, kMigrationFormat);
  PutBlob(&out, config_.Snapshot());
  PutBlob(&out, msix_ ? msix_->Snapshot() : std::vector<uint8_t>());
  std::vector<uint8_t> device_state;
  if (migration_.save) {
    auto saved = migration_.save();
    if (!saved.ok()) return saved.status();
    device_state = std::move(*saved);
  }
  PutBlob(&out, device_state);
  return out;
}

absl::Status Device::LoadMigrationState(absl::Span<const uint8_t> state) {
  if (state.size() < 8) return ErrnoError(EINVAL, "migration state truncated");
  uint32_t magic, format;
  std::memcpy(&magic, state.data(), 4);
  std::memcpy(&format, state.data() + 4, 4);
  if (magic != kMigrationMagic || format != kMigrationFormat) {
    return ErrnoError(EINVAL, "not a vfio-user migration state of a known format");
  }
  size_t pos = 8;
  auto config = GetBlob(state, &pos);
  if (!config.ok()) return config.status();
  auto msix = GetBlob(state, &pos);
  if (!msix.ok()) return msix.status();
  auto device_state = GetBlob(state, &pos);
  if (!device_state.ok()) return device_state.status();
  if (pos != state.size()) return ErrnoError(EINVAL, "trailing bytes in migration state");
  if (msix_ == nullptr && !msix->empty()) return ErrnoError(EINVAL, "unexpected MSI-X state");
  // Validate everything before changing anything that cannot be undone.
  if (msix_) {
    MsixTable probe(msix_->layout());
    if (absl::Status st = probe.Restore(*msix); !st.ok()) return st;
  }
  const std::vector<uint8_t> previous_config = config_.Snapshot();
  if (absl::Status st = config_.Restore(*config); !st.ok()) return st;
  if (migration_.load) {
    if (absl::Status st = migration_.load(*device_state); !st.ok()) {
      (void)config_.Restore(previous_config);
      return st;
    }
  }
  if (msix_) (void)msix_->Restore(*msix);
  return absl::OkStatus();
}

}  // namespace vfio_user
