// DmaTestDevice: a PCI Express DMA engine of our own design that exercises
// every path a real storage or network device uses — 64-bit BAR, MSI-X with
// its table and PBA in a BAR, MSI and INTx fallbacks, a sparse-mmap BAR with
// a trapped doorbell page and a shared-memory descriptor ring, and guest
// memory access through the client's DMA maps (mmap or DMA_READ/DMA_WRITE
// messages). The register map is documented in docs/DMA_TEST_DEVICE.md;
// the constants below are its source of truth.
//
// Operations: COPY (src -> dst), FILL (dst with a 32-bit pattern) and
// CHECKSUM (CRC32C of src, as in iSCSI/ext4: reflected 0x1EDC6F41, initial
// and final XOR 0xFFFFFFFF). Length 0..16 MiB. They are submitted either
// through the BAR0 registers plus the BAR2 doorbell, or as 64-byte
// descriptors in the BAR2 ring plus the ring doorbell.
//
// Threading (server/device.h):
//  * The loop thread owns the registers and the config space: BAR
//    callbacks, completions (posted back by the worker), reset, attach/
//    detach and migration run there.
//  * One worker thread, started at the first submission, executes the
//    operations: guest memory is touched only through Device::DmaRead/
//    DmaWrite (checked against the map table; message-backed ranges need a
//    round trip to the client, which the loop thread could not wait for).
//    It works in 64 KiB chunks and checks before every guest-memory access
//    that the operation was not cancelled and that Bus Master Enable is
//    still set.
//  * Reset (DEVICE_RESET, FLR, CONTROL.SOFT_RESET) and client disconnect
//    cancel everything: queued work is dropped and the operation in flight
//    stops before its next guest-memory access; its result is discarded.
//    Only an access already under way (one chunk) can still complete after
//    the reset returned; after a disconnect none can, the maps are gone.
//    The loop thread never waits for the worker: the worker may itself be
//    waiting for the loop (DMA by message).
//  * The destructor stops and joins the worker. REQUIRES: it runs on the
//    loop thread or after the loop stopped (as for Device). If an access by
//    message is in flight at that moment, joining waits for it to time out
//    (the engine's DMA message wait).
#ifndef VFIO_USER_SERVER_DEVICES_DMA_ENGINE_DEVICE_H_
#define VFIO_USER_SERVER_DEVICES_DMA_ENGINE_DEVICE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "server/device.h"

namespace vfio_user {

// CRC32C (Castagnoli) of `data`, continuing from `crc` (0 to start), with
// the usual pre/post inversion: Crc32c(0, "123456789") == 0xE3069283.
uint32_t Crc32c(uint32_t crc, absl::Span<const uint8_t> data);

namespace dma_test {

// ---- Identity ----
// Placeholder ids (no vendor id is assigned to this project): Red Hat's
// vendor id with a device id outside virtio's range, and class "unassigned"
// so that no guest driver binds it.
inline constexpr uint16_t kVendorId = 0x1af4;
inline constexpr uint16_t kDeviceId = 0x10f0;
inline constexpr uint32_t kClassCode = 0xff0000;
inline constexpr uint8_t kRevision = 1;

// ---- BARs ----
inline constexpr uint32_t kRegisterBar = 0;         // 64-bit memory, 4 KiB, trapped
inline constexpr uint32_t kRegisterBarSize = 0x1000;
inline constexpr uint32_t kDoorbellBar = 2;         // 32-bit memory, 16 KiB, sparse mmap
inline constexpr uint32_t kDoorbellBarSize = 0x4000;
inline constexpr uint32_t kPageSize = 0x1000;

// ---- BAR0 registers (32-bit; 64-bit ones are LO/HI pairs) ----
inline constexpr uint32_t kRegId = 0x000;             // RO kIdValue
inline constexpr uint32_t kRegVersion = 0x004;        // RO kVersionValue
inline constexpr uint32_t kRegControl = 0x008;        // RW kControl*
inline constexpr uint32_t kRegStatus = 0x00c;         // RO kStatus*
inline constexpr uint32_t kRegSrcLo = 0x010;          // RW source IOVA
inline constexpr uint32_t kRegSrcHi = 0x014;
inline constexpr uint32_t kRegDstLo = 0x018;          // RW destination IOVA
inline constexpr uint32_t kRegDstHi = 0x01c;
inline constexpr uint32_t kRegLength = 0x020;         // RW bytes
inline constexpr uint32_t kRegOpcode = 0x024;         // RW kOp*
inline constexpr uint32_t kRegFillPattern = 0x028;    // RW
inline constexpr uint32_t kRegVector = 0x02c;         // RW completion vector
inline constexpr uint32_t kRegTag = 0x030;            // RW caller's tag
inline constexpr uint32_t kRegCompletedTag = 0x034;   // RO tag of the last completion
inline constexpr uint32_t kRegResultLo = 0x038;       // RO result of the last completion
inline constexpr uint32_t kRegResultHi = 0x03c;
inline constexpr uint32_t kRegIntStatus = 0x040;      // RW1C kInt*
inline constexpr uint32_t kRegErrorCode = 0x044;      // RO kError* of the last completion
inline constexpr uint32_t kRegErrorErrno = 0x048;     // RO errno of a DMA fault
inline constexpr uint32_t kRegCompletedCount = 0x04c; // RO completions since reset
inline constexpr uint32_t kRegRingSize = 0x050;       // RO kRingEntries
inline constexpr uint32_t kRegRingHead = 0x054;       // RO next descriptor to complete
inline constexpr uint32_t kRegRingTail = 0x058;       // RO last accepted ring tail
inline constexpr uint32_t kRegMaxLength = 0x05c;      // RO kMaxLength
inline constexpr uint32_t kRegisterFileEnd = 0x060;   // [end, 0x800): read 0, writes ignored
// MSI-X table and PBA, routed by the engine.
inline constexpr uint32_t kMsixTableOffset = 0x800;
inline constexpr uint32_t kMsixPbaOffset = 0xc00;
inline constexpr uint32_t kNumVectors = 4;  // MSI-X table size and MSI vectors

inline constexpr uint32_t kIdValue = 0x544d4144;  // "DMAT"
inline constexpr uint32_t kVersionValue = 0x00010000;

inline constexpr uint32_t kControlEnable = 1u << 0;      // accept submissions
inline constexpr uint32_t kControlIntEnable = 1u << 1;   // interrupt on completion
inline constexpr uint32_t kControlSoftReset = 1u << 31;  // write 1: reset the engine
inline constexpr uint32_t kControlWritable = kControlEnable | kControlIntEnable;

inline constexpr uint32_t kStatusBusy = 1u << 0;   // work queued, running or completing
inline constexpr uint32_t kStatusDone = 1u << 1;   // the last completion succeeded
inline constexpr uint32_t kStatusError = 1u << 2;  // the last completion failed

inline constexpr uint32_t kIntDone = 1u << 0;
inline constexpr uint32_t kIntError = 1u << 1;

enum Opcode : uint32_t { kOpCopy = 1, kOpFill = 2, kOpChecksum = 3 };

enum ErrorCode : uint32_t {
  kErrorNone = 0,
  kErrorBadOpcode = 1,
  kErrorBadLength = 2,      // > kMaxLength
  kErrorBadVector = 3,      // >= kNumVectors
  kErrorNotEnabled = 4,     // CONTROL.ENABLE clear at submission
  kErrorBusMaster = 5,      // Command.Bus Master Enable clear
  kErrorReadFault = 6,      // DmaRead failed (errno in kRegErrorErrno)
  kErrorWriteFault = 7,     // DmaWrite failed (errno in kRegErrorErrno)
  kErrorQueueFull = 8,      // more than kMaxQueuedOps register submissions
  kErrorRingOverflow = 9,   // ring tail moved backwards or past head + size
};

inline constexpr uint32_t kMaxLength = 16u << 20;
inline constexpr uint32_t kMaxQueuedOps = 64;

// ---- BAR2 ----
// Page 0 (trapped): doorbells.
inline constexpr uint32_t kRegDoorbell = 0x000;      // W: submit the BAR0 operation; R: 0
inline constexpr uint32_t kRegRingDoorbell = 0x004;  // W: new ring tail; R: last accepted tail
inline constexpr uint32_t kRegDoorbellRingHead = 0x008;  // R: ring head
// Page 1 (mmap): the descriptor ring.
inline constexpr uint32_t kRingOffset = 0x1000;
inline constexpr uint32_t kRingEntries = 64;
inline constexpr uint32_t kDescriptorSize = 64;
// Page 2 (mmap): status block the device updates after each ring completion.
inline constexpr uint32_t kStatusBlockOffset = 0x2000;
inline constexpr uint32_t kStatusBlockRingHead = 0x0;        // u32
inline constexpr uint32_t kStatusBlockCompletedCount = 0x4;  // u32
// Page 3 (mmap): scratch, never touched by the device.
inline constexpr uint32_t kScratchOffset = 0x3000;

// Descriptor layout (little-endian, at kRingOffset + 64 * (index % 64)).
inline constexpr uint32_t kDescOpcode = 0x00;       // u32 kOp*
inline constexpr uint32_t kDescFlags = 0x04;        // u32 kDescFlag*
inline constexpr uint32_t kDescSrc = 0x08;          // u64
inline constexpr uint32_t kDescDst = 0x10;          // u64
inline constexpr uint32_t kDescLength = 0x18;       // u32
inline constexpr uint32_t kDescFillPattern = 0x1c;  // u32
inline constexpr uint32_t kDescVector = 0x20;       // u32
inline constexpr uint32_t kDescTag = 0x24;          // u32
inline constexpr uint32_t kDescResult = 0x28;       // u64, written by the device
inline constexpr uint32_t kDescStatus = 0x30;       // u32, written by the device last
inline constexpr uint32_t kDescErrorCode = 0x34;    // u32, written by the device
inline constexpr uint32_t kDescErrorErrno = 0x38;   // u32, written by the device
inline constexpr uint32_t kDescFlagInterrupt = 1u << 0;
inline constexpr uint32_t kDescStatusPending = 0;   // what the client writes
inline constexpr uint32_t kDescStatusDone = 1;
inline constexpr uint32_t kDescStatusError = 2;

}  // namespace dma_test

class DmaTestDevice {
 public:
  explicit DmaTestDevice(std::string name = "dma-test");
  ~DmaTestDevice();
  DmaTestDevice(const DmaTestDevice&) = delete;
  DmaTestDevice& operator=(const DmaTestDevice&) = delete;

  // The device to serve (DeviceServer::Create(loop, dma.device(), ...)).
  Device* device() { return &device_; }

 private:
  // One operation, as submitted.
  struct Operation {
    uint32_t opcode = 0;
    uint64_t src = 0;
    uint64_t dst = 0;
    uint32_t length = 0;
    uint32_t fill_pattern = 0;
    uint32_t vector = 0;
    uint32_t tag = 0;
  };
  struct Completion {
    uint64_t generation = 0;
    bool from_ring = false;
    uint32_t ring_index = 0;  // free-running; valid when from_ring
    bool interrupt = true;    // raise the completion interrupt
    uint32_t vector = 0;
    uint32_t tag = 0;
    uint32_t error = dma_test::kErrorNone;
    uint32_t error_errno = 0;
    uint64_t result = 0;
  };
  // The guest-visible registers (loop thread).
  struct Registers {
    uint32_t control = 0;
    Operation op;  // SRC/DST/LENGTH/OPCODE/FILL_PATTERN/VECTOR/TAG
    uint32_t last_status = 0;  // kStatusDone / kStatusError of the last completion
    uint32_t completed_tag = 0;
    uint64_t result = 0;
    uint32_t int_status = 0;
    uint32_t error_code = 0;
    uint32_t error_errno = 0;
    uint32_t completed_count = 0;
    uint32_t ring_head = 0;  // next descriptor to complete (free-running)
  };

  // BAR callbacks (loop thread).
  absl::Status ReadRegisterBar(uint64_t offset, absl::Span<uint8_t> out);
  absl::Status WriteRegisterBar(uint64_t offset, absl::Span<const uint8_t> in);
  absl::Status ReadDoorbellBar(uint64_t offset, absl::Span<uint8_t> out);
  absl::Status WriteDoorbellBar(uint64_t offset, absl::Span<const uint8_t> in);
  uint32_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint32_t value);
  uint32_t ReadDoorbellRegister(uint64_t offset);
  void WriteDoorbellRegister(uint64_t offset, uint32_t value);

  // Submission (loop thread).
  void SubmitRegisterOperation();
  void SubmitRingTail(uint32_t new_tail);
  void StartWorkerIfNeeded();
  // Completes immediately (errors found at submission).
  void CompleteNow(uint32_t error, uint32_t vector, uint32_t tag);
  // Applies a completion to the registers and raises the interrupt.
  void ApplyCompletion(const Completion& c);
  void RaiseCompletionInterrupt(uint32_t vector);
  void UpdateIntx(bool force = false);
  bool IntxMode();  // neither MSI nor MSI-X enabled

  // Cancels queued and in-flight work (reset, disconnect, destruction).
  void CancelWorkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResetEngine();  // registers, ring and queue to power-on
  void OnDetach();
  void PublishStatusBlock();

  // Worker thread.
  void WorkerMain();
  Completion Execute(const Operation& op, uint64_t generation);
  Completion ExecuteRingDescriptor(uint32_t index, uint64_t generation);
  // Runs `op` in chunks; fills error/result of `c`.
  void RunOperation(const Operation& op, uint64_t generation, Completion* c);
  bool Cancelled(uint64_t generation) const;

  // Migration (loop thread).
  void SetRunning(bool running);
  absl::StatusOr<std::vector<uint8_t>> SaveState();
  absl::Status LoadState(absl::Span<const uint8_t> state);

  Device device_;
  Registers regs_;
  bool intx_level_ = false;
  // Mirror of Command.Bus Master Enable for the worker (config space is
  // loop-owned).
  std::atomic<bool> bus_master_{false};
  // Bumped (under mu_) to cancel everything submitted before.
  std::atomic<uint64_t> generation_{0};

  absl::Mutex mu_;
  std::deque<Operation> queue_ ABSL_GUARDED_BY(mu_);  // register submissions
  uint32_t ring_next_ ABSL_GUARDED_BY(mu_) = 0;   // next descriptor to start
  uint32_t ring_tail_ ABSL_GUARDED_BY(mu_) = 0;   // last accepted tail
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;
  uint32_t completions_posted_ ABSL_GUARDED_BY(mu_) = 0;  // not yet applied
  bool paused_ ABSL_GUARDED_BY(mu_) = false;  // migration STOP
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;  // started on the loop thread, joined by the destructor

  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DEVICES_DMA_ENGINE_DEVICE_H_
