#include "server/devices/dma_engine_device.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "server/devices/register_io.h"
#include "server/event_loop.h"
#include "server/pci/pci_ids.h"

namespace vfio_user {

using namespace dma_test;  // NOLINT(build/namespaces): the register map

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the shared-memory status words are stored natively");

// Operations move guest memory in chunks of this size; cancellation and Bus
// Master Enable are checked before each chunk's read and write.
constexpr uint32_t kChunkSize = 64 * 1024;

// Migration state format.
constexpr uint32_t kStateMagic = 0x53414d44;  // "DMAS"
constexpr uint32_t kStateFormat = 1;

constexpr std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc >> 1) ^ ((crc & 1) ? 0x82f63b78u : 0);  // reflected 0x1EDC6F41
    }
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = MakeCrc32cTable();

// Aborts on a failed description call: they depend only on constants, so a
// failure is a programming error in this file.
void MustSucceed(const absl::Status& status, const char* what) {
  if (status.ok()) return;
  Log(LogLevel::kError, "dma-test", "device description failed",
      {{"step", what}, {"error", status.ToString()}});
  std::abort();
}

// Release-stores a u32 the client polls through its mapping of a BAR page.
// The offsets used are 4-byte aligned inside a page-aligned mapping.
void PublishU32(uint8_t* at, uint32_t value) {
  __atomic_store_n(reinterpret_cast<uint32_t*>(at), value, __ATOMIC_RELEASE);
}

uint32_t Low32(uint64_t v) { return static_cast<uint32_t>(v); }
uint32_t High32(uint64_t v) { return static_cast<uint32_t>(v >> 32); }
uint64_t WithLow32(uint64_t v, uint32_t low) { return (v & ~uint64_t{0xffffffff}) | low; }
uint64_t WithHigh32(uint64_t v, uint32_t high) {
  return (v & uint64_t{0xffffffff}) | (uint64_t{high} << 32);
}

}  // namespace

uint32_t Crc32c(uint32_t crc, absl::Span<const uint8_t> data) {
  crc = ~crc;
  for (uint8_t byte : data) crc = (crc >> 8) ^ kCrc32cTable[(crc ^ byte) & 0xff];
  return ~crc;
}

// ---- Description ----

DmaTestDevice::DmaTestDevice(std::string name) : device_(std::move(name), /*pcie=*/true) {
  PciConfigSpace& config = device_.config();
  config.SetIds({.vendor_id = kVendorId,
                 .device_id = kDeviceId,
                 .subsystem_vendor_id = kVendorId,
                 .subsystem_id = kDeviceId,
                 .class_code = kClassCode,
                 .revision = kRevision});
  config.SetInterruptPin(PciIntxPin::kA);
  MustSucceed(config.AddBar(kRegisterBar, PciBar::Memory64(kRegisterBarSize)), "BAR0");
  MustSucceed(config.AddBar(kDoorbellBar, PciBar::Memory32(kDoorbellBarSize)), "BAR2");
  MustSucceed(config.AddPowerManagement().status(), "PM capability");
  MustSucceed(config.AddMsi({.vectors = kNumVectors, .address_64 = true}).status(),
              "MSI capability");
  MustSucceed(config
                  .AddMsix({.table_size = kNumVectors,
                            .table_bar = kRegisterBar,
                            .table_offset = kMsixTableOffset,
                            .pba_bar = kRegisterBar,
                            .pba_offset = kMsixPbaOffset})
                  .status(),
              "MSI-X capability");
  MustSucceed(config.AddPciExpress({.flr = true}).status(), "PCIe capability");

  // The engine forwards these after its own handling.
  PciConfigCallbacks& cb = config.callbacks();
  cb.command_changed = [this](uint16_t, uint16_t command) {
    bus_master_.store(command & kPciCommandMaster, std::memory_order_release);
    UpdateIntx();
  };
  cb.msi_changed = [this] { UpdateIntx(); };
  cb.msix_control_changed = [this](bool, bool) { UpdateIntx(); };

  MustSucceed(device_.SetupRegion(
                  kRegisterBar,
                  RegionSpec::Trapped(
                      kRegisterBarSize,
                      [this](uint64_t offset, absl::Span<uint8_t> out) {
                        return ReadRegisterBar(offset, out);
                      },
                      [this](uint64_t offset, absl::Span<const uint8_t> in) {
                        return WriteRegisterBar(offset, in);
                      })),
              "BAR0 region");
  MustSucceed(device_.SetupRegion(
                  kDoorbellBar,
                  RegionSpec::Memory(
                      kDoorbellBarSize, {{kPageSize, kDoorbellBarSize - kPageSize}},
                      [this](uint64_t offset, absl::Span<uint8_t> out) {
                        return ReadDoorbellBar(offset, out);
                      },
                      [this](uint64_t offset, absl::Span<const uint8_t> in) {
                        return WriteDoorbellBar(offset, in);
                      })),
              "BAR2 region");

  device_.SetResetCallback([this](ResetReason) {
    // The engine reset the config space (Bus Master Enable is clear now)
    // and deasserted INTx.
    bus_master_.store(device_.config().BusMasterEnabled(), std::memory_order_release);
    intx_level_ = false;
    ResetEngine();
  });
  device_.SetConnectionCallbacks(nullptr, [this] { OnDetach(); });
  device_.SetMigrationCallbacks(MigrationCallbacks{
      .set_running = [this](bool running) { SetRunning(running); },
      .save = [this] { return SaveState(); },
      .load = [this](absl::Span<const uint8_t> state) { return LoadState(state); },
  });
}

DmaTestDevice::~DmaTestDevice() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    CancelWorkLocked();
  }
  if (worker_.joinable()) worker_.join();
  *alive_ = false;
}

// ---- BAR0: registers ----

absl::Status DmaTestDevice::ReadRegisterBar(uint64_t offset, absl::Span<uint8_t> out) {
  ReadDwordRegisters(offset, out, [this](uint64_t reg) { return ReadRegister(reg); });
  return absl::OkStatus();
}

absl::Status DmaTestDevice::WriteRegisterBar(uint64_t offset,
                                             absl::Span<const uint8_t> in) {
  return WriteDwordRegisters(offset, in, [this](uint64_t reg, uint32_t value) {
    WriteRegister(reg, value);
  });
}

uint32_t DmaTestDevice::ReadRegister(uint64_t offset) {
  switch (offset) {
    case kRegId: return kIdValue;
    case kRegVersion: return kVersionValue;
    case kRegControl: return regs_.control;
    case kRegStatus: {
      absl::MutexLock lock(&mu_);
      const bool busy = in_flight_ || !queue_.empty() || ring_next_ != ring_tail_ ||
                        completions_posted_ != 0;
      return regs_.last_status | (busy ? kStatusBusy : 0);
    }
    case kRegSrcLo: return Low32(regs_.op.src);
    case kRegSrcHi: return High32(regs_.op.src);
    case kRegDstLo: return Low32(regs_.op.dst);
    case kRegDstHi: return High32(regs_.op.dst);
    case kRegLength: return regs_.op.length;
    case kRegOpcode: return regs_.op.opcode;
    case kRegFillPattern: return regs_.op.fill_pattern;
    case kRegVector: return regs_.op.vector;
    case kRegTag: return regs_.op.tag;
    case kRegCompletedTag: return regs_.completed_tag;
    case kRegResultLo: return Low32(regs_.result);
    case kRegResultHi: return High32(regs_.result);
    case kRegIntStatus: return regs_.int_status;
    case kRegErrorCode: return regs_.error_code;
    case kRegErrorErrno: return regs_.error_errno;
    case kRegCompletedCount: return regs_.completed_count;
    case kRegRingSize: return kRingEntries;
    case kRegRingHead: return regs_.ring_head;
    case kRegRingTail: {
      absl::MutexLock lock(&mu_);
      return ring_tail_;
    }
    case kRegMaxLength: return kMaxLength;
    default: return 0;
  }
}

void DmaTestDevice::WriteRegister(uint64_t offset, uint32_t value) {
  switch (offset) {
    case kRegControl:
      if (value & kControlSoftReset) {
        ResetEngine();
        return;
      }
      regs_.control = value & kControlWritable;
      UpdateIntx();
      return;
    case kRegSrcLo: regs_.op.src = WithLow32(regs_.op.src, value); return;
    case kRegSrcHi: regs_.op.src = WithHigh32(regs_.op.src, value); return;
    case kRegDstLo: regs_.op.dst = WithLow32(regs_.op.dst, value); return;
    case kRegDstHi: regs_.op.dst = WithHigh32(regs_.op.dst, value); return;
    case kRegLength: regs_.op.length = value; return;
    case kRegOpcode: regs_.op.opcode = value; return;
    case kRegFillPattern: regs_.op.fill_pattern = value; return;
    case kRegVector: regs_.op.vector = value; return;
    case kRegTag: regs_.op.tag = value; return;
    case kRegIntStatus:  // write 1 to clear
      regs_.int_status &= ~value;
      UpdateIntx();
      return;
    default:  // read-only and unused registers
      return;
  }
}

// ---- BAR2: doorbell page (the rest is memory the engine serves) ----

absl::Status DmaTestDevice::ReadDoorbellBar(uint64_t offset, absl::Span<uint8_t> out) {
  // PCIe requests never cross a 4 KiB boundary, so an access reaching us
  // lies in the doorbell page or is malformed.
  if (offset >= kPageSize || out.size() > kPageSize - offset) {
    return ErrnoError(EINVAL, "access crosses the doorbell page boundary");
  }
  ReadDwordRegisters(offset, out,
                     [this](uint64_t reg) { return ReadDoorbellRegister(reg); });
  return absl::OkStatus();
}

absl::Status DmaTestDevice::WriteDoorbellBar(uint64_t offset,
                                             absl::Span<const uint8_t> in) {
  if (offset >= kPageSize || in.size() > kPageSize - offset) {
    return ErrnoError(EINVAL, "access crosses the doorbell page boundary");
  }
  return WriteDwordRegisters(offset, in, [this](uint64_t reg, uint32_t value) {
    WriteDoorbellRegister(reg, value);
  });
}

uint32_t DmaTestDevice::ReadDoorbellRegister(uint64_t offset) {
  switch (offset) {
    case kRegRingDoorbell: {
      absl::MutexLock lock(&mu_);
      return ring_tail_;
    }
    case kRegDoorbellRingHead: return regs_.ring_head;
    default: return 0;  // the doorbell itself reads 0
  }
}

void DmaTestDevice::WriteDoorbellRegister(uint64_t offset, uint32_t value) {
  switch (offset) {
    case kRegDoorbell: SubmitRegisterOperation(); return;
    case kRegRingDoorbell: SubmitRingTail(value); return;
    default: return;
  }
}

// ---- Submission and completion (loop thread) ----

void DmaTestDevice::SubmitRegisterOperation() {
  const Operation& op = regs_.op;
  if (!(regs_.control & kControlEnable)) {
    CompleteNow(kErrorNotEnabled, op.vector, op.tag);
    return;
  }
  bool queued = false;
  {
    absl::MutexLock lock(&mu_);
    if (queue_.size() < kMaxQueuedOps) {
      queue_.push_back(op);
      queued = true;
    }
  }
  if (!queued) {
    CompleteNow(kErrorQueueFull, op.vector, op.tag);
    return;
  }
  StartWorkerIfNeeded();
}

void DmaTestDevice::SubmitRingTail(uint32_t new_tail) {
  if (!(regs_.control & kControlEnable)) {
    CompleteNow(kErrorNotEnabled, 0, 0);
    return;
  }
  bool accepted = false;
  {
    absl::MutexLock lock(&mu_);
    // Free-running u32 indexes: the tail may only move forward, and never
    // more than a ring's worth past the descriptors not yet completed.
    const uint32_t advance = new_tail - ring_tail_;
    const uint32_t outstanding = new_tail - regs_.ring_head;
    if (advance <= kRingEntries && outstanding <= kRingEntries) {
      ring_tail_ = new_tail;
      accepted = true;
    }
  }
  if (!accepted) {
    CompleteNow(kErrorRingOverflow, 0, 0);
    return;
  }
  StartWorkerIfNeeded();
}

void DmaTestDevice::StartWorkerIfNeeded() {
  // Before the device is served (no loop to complete on) work stays queued.
  if (worker_.joinable() || device_.loop() == nullptr) return;
  worker_ = std::thread([this] { WorkerMain(); });
}

void DmaTestDevice::CompleteNow(uint32_t error, uint32_t vector, uint32_t tag) {
  Completion c;
  c.generation = generation_.load(std::memory_order_acquire);
  c.vector = vector;
  c.tag = tag;
  c.error = error;
  ApplyCompletion(c);
}

void DmaTestDevice::ApplyCompletion(const Completion& c) {
  if (c.generation != generation_.load(std::memory_order_acquire)) return;  // cancelled
  ++regs_.completed_count;
  regs_.completed_tag = c.tag;
  regs_.result = c.result;
  regs_.error_code = c.error;
  regs_.error_errno = c.error_errno;
  regs_.last_status = c.error == kErrorNone ? kStatusDone : kStatusError;
  if (c.from_ring) regs_.ring_head = c.ring_index + 1;
  PublishStatusBlock();
  if (c.interrupt || c.error != kErrorNone) {
    regs_.int_status |= c.error == kErrorNone ? kIntDone : kIntError;
    RaiseCompletionInterrupt(c.vector);
  }
}

void DmaTestDevice::RaiseCompletionInterrupt(uint32_t vector) {
  if (!(regs_.control & kControlIntEnable)) return;
  const PciConfigSpace& config = device_.config();
  // An out-of-range vector (only possible with an error completion) uses 0.
  if (config.MsixEnabled()) {
    (void)device_.TriggerIrq(kPciMsixIrqIndex, vector < kNumVectors ? vector : 0);
  } else if (config.MsiEnabled()) {
    const uint32_t enabled = config.MsiVectorsEnabled();
    (void)device_.TriggerIrq(kPciMsiIrqIndex, vector < enabled ? vector : 0);
  } else {
    UpdateIntx();
  }
}

bool DmaTestDevice::IntxMode() {
  const PciConfigSpace& config = device_.config();
  return !config.MsixEnabled() && !config.MsiEnabled();
}

void DmaTestDevice::UpdateIntx(bool force) {
  const bool level = IntxMode() && (regs_.control & kControlIntEnable) &&
                     regs_.int_status != 0 && !device_.config().IntxDisabled();
  if (level == intx_level_ && !force) return;
  intx_level_ = level;
  device_.SetIntxLevel(level);
}

void DmaTestDevice::PublishStatusBlock() {
  uint8_t* block = device_.RegionMemory(kDoorbellBar);
  if (block == nullptr) return;  // not served yet
  block += kStatusBlockOffset;
  PublishU32(block + kStatusBlockCompletedCount, regs_.completed_count);
  PublishU32(block + kStatusBlockRingHead, regs_.ring_head);
}

// ---- Cancellation and reset ----

void DmaTestDevice::CancelWorkLocked() {
  generation_.fetch_add(1, std::memory_order_acq_rel);
  queue_.clear();
}

void DmaTestDevice::ResetEngine() {
  {
    absl::MutexLock lock(&mu_);
    CancelWorkLocked();
    ring_next_ = 0;
    ring_tail_ = 0;
  }
  regs_ = Registers{};
  PublishStatusBlock();
  UpdateIntx();
}

void DmaTestDevice::OnDetach() {
  // The client's maps are gone: its queued work is dropped, and so are the
  // ring descriptors it submitted but the device had not completed.
  absl::MutexLock lock(&mu_);
  CancelWorkLocked();
  ring_next_ = regs_.ring_head;
  ring_tail_ = regs_.ring_head;
}

// ---- Worker thread ----

void DmaTestDevice::WorkerMain() {
  EventLoop* loop = device_.loop();
  for (;;) {
    Operation op;
    bool from_ring = false;
    uint32_t ring_index = 0;
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || (!paused_ && (!queue_.empty() || ring_next_ != ring_tail_));
      };
      mu_.Await(absl::Condition(&has_work));
      if (stop_) return;
      generation = generation_.load(std::memory_order_acquire);
      if (!queue_.empty()) {
        op = queue_.front();
        queue_.pop_front();
      } else {
        from_ring = true;
        ring_index = ring_next_++;
      }
      in_flight_ = true;
    }
    const Completion c = from_ring ? ExecuteRingDescriptor(ring_index, generation)
                                   : Execute(op, generation);
    {
      absl::MutexLock lock(&mu_);
      in_flight_ = false;
      if (Cancelled(generation)) continue;  // dropped by a reset or disconnect
      ++completions_posted_;
    }
    loop->Post([this, alive = alive_, c] {
      if (!*alive) return;
      {
        absl::MutexLock lock(&mu_);
        --completions_posted_;
      }
      ApplyCompletion(c);
    });
  }
}

bool DmaTestDevice::Cancelled(uint64_t generation) const {
  return generation_.load(std::memory_order_acquire) != generation;
}

DmaTestDevice::Completion DmaTestDevice::Execute(const Operation& op,
                                                 uint64_t generation) {
  Completion c;
  c.generation = generation;
  c.vector = op.vector;
  c.tag = op.tag;
  RunOperation(op, generation, &c);
  return c;
}

DmaTestDevice::Completion DmaTestDevice::ExecuteRingDescriptor(uint32_t index,
                                                               uint64_t generation) {
  uint8_t* slot = device_.RegionMemory(kDoorbellBar) + kRingOffset +
                  (index % kRingEntries) * kDescriptorSize;
  // (The worker starts only once the device is served, memory allocated.)
  // One snapshot: the client may scribble on the slot meanwhile.
  std::array<uint8_t, kDescriptorSize> desc;
  std::memcpy(desc.data(), slot, desc.size());
  const absl::Span<const uint8_t> d(desc);
  auto u32_at = [d](uint32_t at) { return static_cast<uint32_t>(LoadLe(d.subspan(at, 4))); };
  Operation op;
  op.opcode = u32_at(kDescOpcode);
  op.src = LoadLe(d.subspan(kDescSrc, 8));
  op.dst = LoadLe(d.subspan(kDescDst, 8));
  op.length = u32_at(kDescLength);
  op.fill_pattern = u32_at(kDescFillPattern);
  op.vector = u32_at(kDescVector);
  op.tag = u32_at(kDescTag);

  Completion c = Execute(op, generation);
  c.from_ring = true;
  c.ring_index = index;
  c.interrupt = (u32_at(kDescFlags) & kDescFlagInterrupt) != 0;
  if (Cancelled(generation)) return c;
  // Write back; the status word goes last, with release semantics, so a
  // client that sees it sees the result too.
  StoreLe(c.result, absl::MakeSpan(slot + kDescResult, 8));
  StoreLe(c.error, absl::MakeSpan(slot + kDescErrorCode, 4));
  StoreLe(c.error_errno, absl::MakeSpan(slot + kDescErrorErrno, 4));
  PublishU32(slot + kDescStatus,
             c.error == kErrorNone ? kDescStatusDone : kDescStatusError);
  return c;
}

void DmaTestDevice::RunOperation(const Operation& op, uint64_t generation,
                                 Completion* c) {
  auto fail = [c](uint32_t error, const absl::Status& status = absl::OkStatus()) {
    c->error = error;
    c->error_errno = static_cast<uint32_t>(ErrnoOf(status));
  };
  if (op.opcode != kOpCopy && op.opcode != kOpFill && op.opcode != kOpChecksum) {
    return fail(kErrorBadOpcode);
  }
  if (op.length > kMaxLength) return fail(kErrorBadLength);
  if (op.vector >= kNumVectors) return fail(kErrorBadVector);
  if (!bus_master_.load(std::memory_order_acquire)) return fail(kErrorBusMaster);
  if (op.length == 0) return;  // nothing to move; CHECKSUM of nothing is 0

  // Check the whole ranges first, so that a fault moves no byte at all
  // (barring a concurrent unmap).
  const bool reads = op.opcode != kOpFill;
  const bool writes = op.opcode != kOpChecksum;
  if (reads) {
    auto r = device_.dma().Resolve(op.src, op.length, /*write=*/false);
    if (!r.ok()) return fail(kErrorReadFault, r.status());
  }
  if (writes) {
    auto r = device_.dma().Resolve(op.dst, op.length, /*write=*/true);
    if (!r.ok()) return fail(kErrorWriteFault, r.status());
  }

  std::vector<uint8_t> buffer(std::min(op.length, kChunkSize));
  if (op.opcode == kOpFill) {
    for (size_t i = 0; i < buffer.size(); ++i) {
      buffer[i] = static_cast<uint8_t>(op.fill_pattern >> (8 * (i % 4)));
    }
  }
  // Checked before every guest-memory access: an access by message can
  // take a while, and the operation must not write after a reset.
  auto may_continue = [&]() {
    if (Cancelled(generation)) return false;  // the completion is dropped anyway
    if (!bus_master_.load(std::memory_order_acquire)) {
      fail(kErrorBusMaster);
      return false;
    }
    return true;
  };
  uint32_t crc = 0;
  for (uint32_t done = 0; done < op.length;) {
    const uint32_t n = std::min(op.length - done, kChunkSize);
    const absl::Span<uint8_t> chunk(buffer.data(), n);
    if (reads) {
      if (!may_continue()) return;
      absl::Status st = device_.DmaRead(op.src + done, chunk);
      if (!st.ok()) return fail(kErrorReadFault, st);
    }
    if (writes) {
      if (!may_continue()) return;
      absl::Status st = device_.DmaWrite(op.dst + done, chunk);
      if (!st.ok()) return fail(kErrorWriteFault, st);
    }
    if (op.opcode == kOpChecksum) crc = Crc32c(crc, chunk);
    done += n;
  }
  c->result = op.opcode == kOpChecksum ? crc : op.length;
}

// ---- Migration (loop thread) ----

void DmaTestDevice::SetRunning(bool running) {
  absl::MutexLock lock(&mu_);
  paused_ = !running;
}

absl::StatusOr<std::vector<uint8_t>> DmaTestDevice::SaveState() {
  StateWriter w;
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_ || completions_posted_ != 0) {
      return ErrnoError(EBUSY, "dma-test: an operation is still completing");
    }
    w.U32(kStateMagic);
    w.U32(kStateFormat);
    w.U32(regs_.control);
    w.U32(regs_.op.opcode);
    w.U64(regs_.op.src);
    w.U64(regs_.op.dst);
    w.U32(regs_.op.length);
    w.U32(regs_.op.fill_pattern);
    w.U32(regs_.op.vector);
    w.U32(regs_.op.tag);
    w.U32(regs_.last_status);
    w.U32(regs_.completed_tag);
    w.U64(regs_.result);
    w.U32(regs_.int_status);
    w.U32(regs_.error_code);
    w.U32(regs_.error_errno);
    w.U32(regs_.completed_count);
    // ring_next_ == ring_head here: nothing is in flight or completing.
    w.U32(regs_.ring_head);
    w.U32(ring_tail_);
    w.U32(static_cast<uint32_t>(queue_.size()));
    for (const Operation& op : queue_) {
      w.U32(op.opcode);
      w.U64(op.src);
      w.U64(op.dst);
      w.U32(op.length);
      w.U32(op.fill_pattern);
      w.U32(op.vector);
      w.U32(op.tag);
    }
  }
  // Device memory: the ring, the status block and the scratch page.
  const uint8_t* memory = device_.RegionMemory(kDoorbellBar);
  if (memory == nullptr) return ErrnoError(ENODEV, "dma-test: not served");
  w.Bytes(absl::MakeConstSpan(memory + kPageSize, kDoorbellBarSize - kPageSize));
  return w.Take();
}

absl::Status DmaTestDevice::LoadState(absl::Span<const uint8_t> state) {
  auto malformed = [] { return ErrnoError(EINVAL, "dma-test: malformed migration state"); };
  uint8_t* memory = device_.RegionMemory(kDoorbellBar);
  if (memory == nullptr) return ErrnoError(ENODEV, "dma-test: not served");
  StateReader r(state);
  uint32_t magic = 0, format = 0, ring_tail = 0, queued = 0;
  Registers regs;
  r.U32(&magic);
  r.U32(&format);
  if (!r.ok() || magic != kStateMagic || format != kStateFormat) return malformed();
  r.U32(&regs.control);
  r.U32(&regs.op.opcode);
  r.U64(&regs.op.src);
  r.U64(&regs.op.dst);
  r.U32(&regs.op.length);
  r.U32(&regs.op.fill_pattern);
  r.U32(&regs.op.vector);
  r.U32(&regs.op.tag);
  r.U32(&regs.last_status);
  r.U32(&regs.completed_tag);
  r.U64(&regs.result);
  r.U32(&regs.int_status);
  r.U32(&regs.error_code);
  r.U32(&regs.error_errno);
  r.U32(&regs.completed_count);
  r.U32(&regs.ring_head);
  r.U32(&ring_tail);
  r.U32(&queued);
  if (!r.ok() || queued > kMaxQueuedOps) return malformed();
  std::deque<Operation> queue(queued);
  for (Operation& op : queue) {
    r.U32(&op.opcode);
    r.U64(&op.src);
    r.U64(&op.dst);
    r.U32(&op.length);
    r.U32(&op.fill_pattern);
    r.U32(&op.vector);
    r.U32(&op.tag);
  }
  std::vector<uint8_t> pages(kDoorbellBarSize - kPageSize);
  r.Bytes(absl::MakeSpan(pages));
  if (!r.AtEnd()) return malformed();
  // Register values a running device could never hold.
  const bool ring_consistent = ring_tail - regs.ring_head <= kRingEntries;
  if ((regs.control & ~kControlWritable) != 0 ||
      (regs.last_status & ~(kStatusDone | kStatusError)) != 0 ||
      (regs.int_status & ~(kIntDone | kIntError)) != 0 || !ring_consistent) {
    return malformed();
  }
  bool has_work = false;
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_ || completions_posted_ != 0) {
      return ErrnoError(EBUSY, "dma-test: an operation is still completing");
    }
    CancelWorkLocked();
    queue_ = std::move(queue);
    ring_next_ = regs.ring_head;
    ring_tail_ = ring_tail;
    has_work = !queue_.empty() || ring_next_ != ring_tail_;
  }
  regs_ = regs;
  std::memcpy(memory + kPageSize, pages.data(), pages.size());
  bus_master_.store(device_.config().BusMasterEnabled(), std::memory_order_release);
  UpdateIntx(/*force=*/true);
  if (has_work) StartWorkerIfNeeded();
  return absl::OkStatus();
}

}  // namespace vfio_user
