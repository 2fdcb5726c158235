// IrqController: the interrupts of one vfio-user PCI device (INTx, MSI,
// MSI-X, ERR, REQ): the client's eventfd wiring (DEVICE_SET_IRQS), the
// GET_IRQ_INFO answers, per-vector masks and pending bits, the INTx line
// level, and the device-side API that raises interrupts (PROTOCOL.md §3.7,
// §3.8, §5.3, §6.6).
//
// Two sides use it:
//  * The control side (the session on the event-loop thread): Info(),
//    SetIrqs(), ReleaseClientResources(), Reset(). These may call the
//    FdWatcher, so they run where the FdWatcher allows (the loop thread, or
//    before the loop runs); they are serialized internally.
//  * The device side (any thread, device worker threads included):
//    Trigger(), SetIntxLevel(), SetVectorMasked(), IsPending(), IsMasked(),
//    IntxAsserted(), Counters(). Eventfd writes happen after the internal
//    lock is released; a write may therefore land on an eventfd the client
//    de-assigned a moment earlier (the fd stays open until that write ends;
//    the client ignores it, as with the kernel's VFIO driver).
//
// Interrupt delivery: the server writes a u64 1 to the client's eventfd.
// Received fds must be eventfds (anything else is EINVAL, as in the kernel);
// they are switched to O_NONBLOCK so a client that saturates its counter can
// never block a device thread (a saturated counter already means "pending").
//
// Masking (one mask bit per vector; this object holds THE mask state):
//  * INTx is level-triggered and AUTOMASKED: when the line is asserted while
//    unmasked and wired, the trigger eventfd is signalled and INTx masks
//    itself. It is unmasked by SET_IRQS ACTION_UNMASK or by the client
//    signalling the unmask ("resample") eventfd it registered with
//    DATA_EVENTFD|ACTION_UNMASK (Linux VFIO semantics: KVM's irqfd resampler
//    signals it after the guest's EOI). An unmask while the line is still
//    asserted signals again and re-masks.
//  * MSI / MSI-X are edge-triggered. A Trigger() on a masked vector sets its
//    pending bit; unmasking a pending vector fires it and clears the bit.
//    Mask bits change from two directions, both landing here:
//      - the client, with SET_IRQS MASK/UNMASK (QEMU does this for MSI-X
//        when MASKABLE is reported, mirroring the guest's writes to the
//        MSI-X table it emulates). Each change is reported through
//        Config::on_mask_change, so a device that keeps its own copy of the
//        table can mirror it;
//      - the device, with SetVectorMasked(), when the guest writes an MSI-X
//        table that lives in one of the device's BARs (or MSI per-vector
//        mask bits in config space). on_mask_change is NOT called for these:
//        the caller already knows.
//  * ERR and REQ are never masked.
// MSI and MSI-X report MASKABLE only when the device supports per-vector
// masking (Config); without it SET_IRQS MASK/UNMASK on them is EINVAL.
//
// The INTx/MSI/MSI-X "one type at a time" rule of the kernel driver is not
// enforced: each index is wired independently (libvfio-user does the same);
// QEMU disables one type before enabling another anyway.
#ifndef VFIO_USER_SERVER_IRQ_CONTROLLER_H_
#define VFIO_USER_SERVER_IRQ_CONTROLLER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/codec.h"
#include "core/protocol.h"
#include "core/unique_fd.h"
#include "server/fd_watcher.h"

namespace vfio_user {

// Limits on the vector counts per index (PCI: MSI up to 32 in powers of
// two, MSI-X up to 2048).
inline constexpr uint32_t kMaxIntxVectors = 1;
inline constexpr uint32_t kMaxMsiVectors = 32;
inline constexpr uint32_t kMaxMsixVectors = 2048;
inline constexpr uint32_t kMaxErrVectors = 1;
inline constexpr uint32_t kMaxReqVectors = 1;

// Per-index delivery statistics (monotonic).
struct IrqCounters {
  uint64_t delivered = 0;  // eventfd signals written
  uint64_t masked = 0;     // raised while masked (became pending / suppressed)
  uint64_t dropped = 0;    // raised while unmasked but no eventfd wired, or
                           // the eventfd write failed
};

class IrqController {
 public:
  struct Config {
    // Vectors per index (kPci*IrqIndex): INTx 0..1, MSI 0 or a power of two
    // up to 32, MSI-X 0..2048, ERR 0..1, REQ 0..1. 0 = not supported.
    std::array<uint32_t, kPciNumIrqs> vector_counts{};
    // Per-vector masking support reported as VFIO_IRQ_INFO_MASKABLE.
    bool msi_maskable = false;
    bool msix_maskable = false;
    // Used to watch the INTx unmask eventfd. Not owned; must outlive the
    // controller. Null: DATA_EVENTFD|ACTION_UNMASK is rejected (EINVAL) and
    // the client falls back to SET_IRQS UNMASK messages.
    FdWatcher* watcher = nullptr;
    // Called after the CLIENT changed an MSI/MSI-X vector's mask bit through
    // SET_IRQS (once per vector whose bit actually changed), on the thread
    // that called SetIrqs(), without internal locks held. It may call the
    // device-side methods but not SetIrqs/ReleaseClientResources/Reset.
    std::function<void(uint32_t index, uint32_t vector, bool masked)>
        on_mask_change;
  };

  // Validates the counts (InvalidArgument otherwise). Every vector starts
  // unmasked, not pending and unwired; the INTx line starts deasserted.
  static absl::StatusOr<std::unique_ptr<IrqController>> Create(Config config);

  // Unwatches and closes every client fd. REQUIRES: called where the
  // FdWatcher may be used (see top of file).
  ~IrqController();

  IrqController(const IrqController&) = delete;
  IrqController& operator=(const IrqController&) = delete;

  // ---- Control side (event-loop thread) ----

  // DEVICE_GET_IRQ_INFO reply for `index`: flags EVENTFD, plus MASKABLE and
  // AUTOMASKED for INTx, MASKABLE for MSI/MSI-X when configured, NORESIZE
  // for MSI (vectors form one block). MSI-X does not report NORESIZE: each
  // vector is wired independently, so QEMU may add vectors one by one.
  // EINVAL for index >= kPciNumIrqs.
  absl::StatusOr<IrqInfo> Info(uint32_t index) const;

  // Applies one DEVICE_SET_IRQS request; `fds` are the fds that came with
  // the message (ownership taken; whatever is not kept is closed when this
  // returns, on success or failure). Errors carry EINVAL (ErrnoOf). Rules
  // (PROTOCOL.md §3.8; as libvfio-user and the kernel driver):
  //  * index < kPciNumIrqs with a non-zero vector count; exactly one DATA
  //    and one ACTION flag, no other bits; start + count <= vector count.
  //  * count == 0 only as "disable all": start == 0, DATA_NONE |
  //    ACTION_TRIGGER. It closes every trigger eventfd of the index (and,
  //    for INTx, the unmask eventfd, and leaves INTx unmasked as the kernel
  //    does when INTx is re-enabled). Masks and pending bits of MSI/MSI-X
  //    are device state and are kept.
  //  * fds only with DATA_EVENTFD. With DATA_EVENTFD, fds.size() is either
  //    `count` (assign: each fd replaces, and closes, the vector's previous
  //    one) or 0 (de-assign the range; this is how QEMU sends a chunk of
  //    unused slots, and how it "enables MSI-X" with no vectors in use).
  //    Every fd must be an eventfd; on any error nothing changes.
  //  * DATA_BOOL: bools.size() == count; acts where the byte is non-zero.
  //  * ERR / REQ: ACTION_TRIGGER only, count <= 1.
  //  * ACTION_TRIGGER + DATA_NONE/BOOL: the client raises the interrupt
  //    itself; delivered as if the device had raised it (masking applies;
  //    for INTx: one pulse, which signals and auto-masks if INTx is
  //    unmasked and wired). Undeliverable vectors are only counted.
  //  * ACTION_MASK / ACTION_UNMASK + DATA_NONE/BOOL: only on MASKABLE
  //    indexes. Unmasking fires pending MSI/MSI-X vectors and re-evaluates
  //    the INTx line.
  //  * ACTION_UNMASK + DATA_EVENTFD: INTx only, and needs a watcher;
  //    registers (1 fd) or removes (0 fds) the unmask eventfd.
  //  * ACTION_MASK + DATA_EVENTFD: rejected (EINVAL); the kernel driver does
  //    not implement it either and no known client uses it.
  absl::Status SetIrqs(const vfio_user::SetIrqs& request,
                       std::vector<UniqueFd> fds);

  // Client disconnect (PROTOCOL.md §6.6): unwatches and closes every fd the
  // client gave (trigger and unmask eventfds). Masks, pending bits and the
  // INTx level are device state and are kept for the next client. An fd a
  // concurrent Trigger() is writing to closes when that write ends.
  void ReleaseClientResources();

  // Device reset (DEVICE_RESET, FLR): clears every pending bit, unmasks
  // every vector (the controller's defaults: PCI clears MSI per-vector masks
  // and Interrupt Disable on reset; a device owning an MSI-X table, whose
  // Mask bits reset to 1, re-applies them with SetVectorMasked()) and
  // deasserts INTx. The client's eventfd wiring is kept, as the kernel
  // driver and libvfio-user keep it across VFIO_DEVICE_RESET; a device must
  // not raise MSI/MSI-X until the guest re-enables them in config space.
  // For "disable everything" (e.g. a reset on lost connection) call
  // ReleaseClientResources() as well. Does not call on_mask_change.
  void Reset();

  // ---- Device side (any thread) ----

  // Raises edge interrupt `vector` of MSI, MSI-X, ERR or REQ.
  //  * masked: sets the pending bit, signals nothing, returns OK;
  //  * no eventfd wired: counted as dropped, returns FailedPrecondition
  //    (normal while the guest has the vector disabled; callers usually
  //    ignore it);
  //  * otherwise writes 1 to the eventfd (an eventfd write error is returned
  //    with its errno and counted as dropped).
  // InvalidArgument (EINVAL) for INTx (use SetIntxLevel) or a bad index or
  // vector.
  absl::Status Trigger(uint32_t index, uint32_t vector);

  // Sets the INTx line level. Asserting while INTx is unmasked and wired
  // signals the trigger eventfd and auto-masks INTx; the signal repeats on
  // each later unmask while the line stays asserted. Deasserting only
  // records the level. No-op (level recorded but never signalled) on a
  // device without INTx.
  void SetIntxLevel(bool asserted);
  // The current INTx line level (for the config-space Interrupt Status bit).
  bool IntxAsserted() const;

  // Device-driven mask bit of an MSI or MSI-X vector (guest writes to a
  // device-owned MSI-X table / MSI mask bits). Unmasking a pending vector
  // clears the bit and fires it (counted as dropped if nothing is wired).
  // Does not call on_mask_change. EINVAL for other indexes or a bad vector;
  // an eventfd write error is returned with its errno.
  absl::Status SetVectorMasked(uint32_t index, uint32_t vector, bool masked);

  // Pending bit (for the MSI-X PBA) and mask bit of a vector; false for a
  // bad index/vector. For INTx, IsMasked() is the VFIO (auto)mask.
  bool IsPending(uint32_t index, uint32_t vector) const;
  bool IsMasked(uint32_t index, uint32_t vector) const;
  // Whether the client has wired an eventfd to the vector.
  bool IsWired(uint32_t index, uint32_t vector) const;
  // Whether the client registered an INTx unmask (resample) eventfd.
  bool HasIntxUnmaskFd() const;

  // Statistics for `index` (all zero for a bad index).
  IrqCounters Counters(uint32_t index) const;

 private:
  // An eventfd shared between the wiring table and in-flight writes, so it
  // is closed only after the last write that picked it up.
  using SharedFd = std::shared_ptr<const UniqueFd>;

  struct Vector {
    SharedFd trigger;
    bool masked = false;
    bool pending = false;
  };
  struct AtomicCounters {
    std::atomic<uint64_t> delivered{0};
    std::atomic<uint64_t> masked{0};
    std::atomic<uint64_t> dropped{0};
  };
  // One eventfd write to do once the lock is released.
  struct Signal {
    uint32_t index;
    SharedFd fd;
  };
  using SignalList = absl::InlinedVector<Signal, 2>;
  enum class Outcome { kSignal, kPending, kDropped };
  struct MaskChange {
    uint32_t index;
    uint32_t vector;
    bool masked;
  };

  explicit IrqController(Config config);

  // SetIrqs parts. Called with control_mu_ held.
  absl::Status DisableAll(uint32_t index);
  absl::Status AssignTriggers(const vfio_user::SetIrqs& request,
                              std::vector<UniqueFd> fds);
  absl::Status SetIntxUnmaskFd(std::vector<UniqueFd> fds);
  absl::Status LoopbackTrigger(const vfio_user::SetIrqs& request);
  absl::Status ClientMask(const vfio_user::SetIrqs& request, bool masked);

  // Raises one vector: if masked, counts it and (edge types) sets the
  // pending bit; if unwired, counts a drop; else queues a signal into `out`
  // and, for INTx, auto-masks.
  Outcome RaiseLocked(uint32_t index, Vector& v, SignalList* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Signals and auto-masks INTx if the line is asserted, INTx unmasked and
  // wired.
  void EvaluateIntxLocked(SignalList* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unmasks an MSI/MSI-X vector; fires it if pending. Returns whether the
  // mask bit changed.
  bool UnmaskEdgeLocked(uint32_t index, Vector& v, SignalList* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the queued signals and counts them (REQUIRES: mu_ NOT held).
  // Returns the first write error.
  absl::Status Deliver(const SignalList& signals);
  // Takes the INTx unmask fd out of the table and unwatches it; the caller
  // closes it by dropping the result. REQUIRES: control_mu_ held.
  UniqueFd DetachIntxUnmaskFd();
  // Watcher callback: drains the unmask eventfd and unmasks INTx.
  void OnIntxUnmaskFdReadable(int fd);
  void UnmaskIntx();

  const Config config_;
  // Serializes control-side operations (they release mu_ around watcher
  // calls and fd writes). Never taken by device-side methods or callbacks.
  absl::Mutex control_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  std::array<std::vector<Vector>, kPciNumIrqs> vectors_ ABSL_GUARDED_BY(mu_);
  bool intx_level_ ABSL_GUARDED_BY(mu_) = false;
  UniqueFd intx_unmask_fd_ ABSL_GUARDED_BY(mu_);
  std::array<AtomicCounters, kPciNumIrqs> counters_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_IRQ_CONTROLLER_H_
