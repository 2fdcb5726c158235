#include "server/irq_controller.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user {
namespace {

constexpr uint32_t kMaxVectors[kPciNumIrqs] = {kMaxIntxVectors, kMaxMsiVectors,
                                               kMaxMsixVectors, kMaxErrVectors,
                                               kMaxReqVectors};

bool IsSingleBit(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

bool IsEdgeIndex(uint32_t index) {
  return index == kPciMsiIrqIndex || index == kPciMsixIrqIndex ||
         index == kPciErrIrqIndex || index == kPciReqIrqIndex;
}

absl::Status Invalid(absl::string_view what) {
  return ErrnoError(EINVAL, absl::StrCat("SET_IRQS: ", what));
}

// Accepts `fd` only if it is an eventfd (the kernel's VFIO driver rejects
// anything else too: a pipe or socket could raise SIGPIPE or block a device
// thread) and makes it non-blocking. Without /proc, falls back to accepting
// anonymous inodes only (no pipes, sockets, files or devices).
absl::Status PrepareClientEventfd(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError(EINVAL, "SET_IRQS: bad fd");
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  char target[64];
  const ssize_t n = ::readlink(path, target, sizeof(target) - 1);
  if (n >= 0) {
    target[n] = '\0';
    if (std::strcmp(target, "anon_inode:[eventfd]") != 0) {
      return Invalid(absl::StrCat("fd is not an eventfd (", target, ")"));
    }
  } else if ((st.st_mode & S_IFMT) != 0) {
    return Invalid("fd is not an eventfd");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoError(errno, "SET_IRQS: fcntl(F_GETFL)");
  if ((flags & O_NONBLOCK) == 0 &&
      ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoError(errno, "SET_IRQS: fcntl(F_SETFL)");
  }
  return absl::OkStatus();
}

// Adds 1 to an eventfd counter. A saturated counter (EAGAIN) already means
// "signalled", so it counts as success.
absl::Status SignalEventfd(int fd) {
  const uint64_t one = 1;
  for (;;) {
    const ssize_t n = ::write(fd, &one, sizeof(one));
    if (n == static_cast<ssize_t>(sizeof(one))) return absl::OkStatus();
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return absl::OkStatus();
    return ErrnoError(n < 0 ? errno : EIO, "eventfd write failed");
  }
}

// Resets an eventfd counter to 0 (it is non-blocking: EAGAIN = already 0).
void DrainEventfd(int fd) {
  uint64_t value;
  while (::read(fd, &value, sizeof(value)) < 0 && errno == EINTR) {
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<IrqController>> IrqController::Create(
    Config config) {
  for (uint32_t index = 0; index < kPciNumIrqs; ++index) {
    const uint32_t count = config.vector_counts[index];
    if (count > kMaxVectors[index]) {
      return absl::InvalidArgumentError(
          absl::StrCat("IRQ index ", index, ": ", count,
                       " vectors exceed the maximum ", kMaxVectors[index]));
    }
  }
  const uint32_t msi = config.vector_counts[kPciMsiIrqIndex];
  if (msi != 0 && !IsSingleBit(msi)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MSI vector count ", msi, " is not a power of two"));
  }
  return std::unique_ptr<IrqController>(new IrqController(std::move(config)));
}

IrqController::IrqController(Config config) : config_(std::move(config)) {
  for (uint32_t index = 0; index < kPciNumIrqs; ++index) {
    vectors_[index].resize(config_.vector_counts[index]);
  }
}

IrqController::~IrqController() { ReleaseClientResources(); }

absl::StatusOr<IrqInfo> IrqController::Info(uint32_t index) const {
  if (index >= kPciNumIrqs) {
    return ErrnoError(EINVAL, absl::StrCat("GET_IRQ_INFO: bad index ", index));
  }
  IrqInfo info;
  info.index = index;
  info.count = config_.vector_counts[index];
  info.flags = kIrqInfoEventfd;
  if (info.count == 0) return info;
  switch (index) {
    case kPciIntxIrqIndex:
      info.flags |= kIrqInfoMaskable | kIrqInfoAutomasked;
      break;
    case kPciMsiIrqIndex:
      info.flags |= kIrqInfoNoresize;
      if (config_.msi_maskable) info.flags |= kIrqInfoMaskable;
      break;
    case kPciMsixIrqIndex:
      if (config_.msix_maskable) info.flags |= kIrqInfoMaskable;
      break;
    default:
      break;
  }
  return info;
}

// ---- Control side ----

absl::Status IrqController::SetIrqs(const vfio_user::SetIrqs& request,
                                    std::vector<UniqueFd> fds) {
  absl::MutexLock control(&control_mu_);
  const uint32_t data = request.flags & kIrqSetDataMask;
  const uint32_t action = request.flags & kIrqSetActionMaskBits;
  if ((request.flags & ~(kIrqSetDataMask | kIrqSetActionMaskBits)) != 0 ||
      !IsSingleBit(data) || !IsSingleBit(action)) {
    return Invalid("need exactly one DATA and one ACTION flag");
  }
  const uint32_t index = request.index;
  if (index >= kPciNumIrqs) return Invalid(absl::StrCat("bad index ", index));
  const uint32_t vector_count = config_.vector_counts[index];
  if (vector_count == 0) {
    return Invalid(absl::StrCat("index ", index, " has no vectors"));
  }
  if ((index == kPciErrIrqIndex || index == kPciReqIrqIndex) &&
      (action != kIrqSetActionTrigger || request.count > 1)) {
    return Invalid("ERR/REQ accept only ACTION_TRIGGER with count <= 1");
  }
  if (data != kIrqSetDataEventfd && !fds.empty()) {
    return Invalid("fds attached without DATA_EVENTFD");
  }
  if (request.count == 0) {
    if (request.start != 0 || data != kIrqSetDataNone ||
        action != kIrqSetActionTrigger) {
      return Invalid(
          "count 0 is only valid as DATA_NONE|ACTION_TRIGGER, start 0");
    }
    return DisableAll(index);
  }
  if (uint64_t{request.start} + request.count > vector_count) {
    return Invalid(absl::StrCat("vectors ", request.start, "+", request.count,
                                " exceed the ", vector_count, " of index ",
                                index));
  }
  if (data == kIrqSetDataBool && request.bools.size() != request.count) {
    return Invalid("DATA_BOOL needs one byte per vector");
  }
  if (data == kIrqSetDataEventfd && !fds.empty() &&
      fds.size() != request.count) {
    return Invalid(
        absl::StrCat(fds.size(), " fds for ", request.count, " vectors"));
  }

  switch (action) {
    case kIrqSetActionTrigger:
      return data == kIrqSetDataEventfd
                 ? AssignTriggers(request, std::move(fds))
                 : LoopbackTrigger(request);
    case kIrqSetActionMask:
      if (data == kIrqSetDataEventfd) {
        return Invalid("DATA_EVENTFD|ACTION_MASK is not supported");
      }
      return ClientMask(request, /*masked=*/true);
    default:  // kIrqSetActionUnmask
      if (data == kIrqSetDataEventfd) {
        if (index != kPciIntxIrqIndex) {
          return Invalid("DATA_EVENTFD|ACTION_UNMASK is only for INTx");
        }
        return SetIntxUnmaskFd(std::move(fds));
      }
      return ClientMask(request, /*masked=*/false);
  }
}

absl::Status IrqController::DisableAll(uint32_t index) {
  // Destroyed (closed) last, after mu_ is released.
  UniqueFd unmask_fd;
  std::vector<SharedFd> closing;
  if (index == kPciIntxIrqIndex) unmask_fd = DetachIntxUnmaskFd();
  absl::MutexLock lock(&mu_);
  for (Vector& v : vectors_[index]) closing.push_back(std::move(v.trigger));
  // As the kernel does on INTx re-enable: a disabled INTx is not left masked.
  if (index == kPciIntxIrqIndex) vectors_[index][0].masked = false;
  return absl::OkStatus();
}

absl::Status IrqController::AssignTriggers(const vfio_user::SetIrqs& request,
                                           std::vector<UniqueFd> fds) {
  for (const UniqueFd& fd : fds) {
    if (absl::Status s = PrepareClientEventfd(fd.get()); !s.ok()) return s;
  }
  // Built before taking mu_; old fds are closed after releasing it.
  std::vector<SharedFd> incoming(request.count);
  for (size_t i = 0; i < fds.size(); ++i) {
    incoming[i] = std::make_shared<const UniqueFd>(std::move(fds[i]));
  }
  std::vector<SharedFd> closing;
  closing.reserve(request.count);
  SignalList signals;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Vector>& vectors = vectors_[request.index];
    for (uint32_t i = 0; i < request.count; ++i) {
      closing.push_back(std::exchange(vectors[request.start + i].trigger,
                                      std::move(incoming[i])));
    }
    // A line already asserted fires as soon as INTx gets an eventfd.
    if (request.index == kPciIntxIrqIndex) EvaluateIntxLocked(&signals);
  }
  // The wiring succeeded; a failed write is only counted.
  Deliver(signals).IgnoreError();
  return absl::OkStatus();
}

absl::Status IrqController::SetIntxUnmaskFd(std::vector<UniqueFd> fds) {
  if (config_.watcher == nullptr) {
    return Invalid("INTx unmask eventfd not supported (no fd watcher)");
  }
  if (!fds.empty()) {
    if (absl::Status s = PrepareClientEventfd(fds[0].get()); !s.ok()) return s;
  }
  const UniqueFd previous = DetachIntxUnmaskFd();  // closed on return
  if (fds.empty()) return absl::OkStatus();
  const int fd = fds[0].get();
  {
    absl::MutexLock lock(&mu_);
    intx_unmask_fd_ = std::move(fds[0]);
  }
  absl::Status watched =
      config_.watcher->Watch(fd, [this, fd] { OnIntxUnmaskFdReadable(fd); });
  if (!watched.ok()) {
    UniqueFd rejected;
    absl::MutexLock lock(&mu_);
    rejected = std::move(intx_unmask_fd_);
    return watched;
  }
  return absl::OkStatus();
}

absl::Status IrqController::LoopbackTrigger(const vfio_user::SetIrqs& request) {
  const bool all = (request.flags & kIrqSetDataMask) == kIrqSetDataNone;
  SignalList signals;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Vector>& vectors = vectors_[request.index];
    for (uint32_t i = 0; i < request.count; ++i) {
      if (all || request.bools[i] != 0) {
        RaiseLocked(request.index, vectors[request.start + i], &signals);
      }
    }
  }
  // Undeliverable vectors are counted, not reported: the request was valid.
  Deliver(signals).IgnoreError();
  return absl::OkStatus();
}

absl::Status IrqController::ClientMask(const vfio_user::SetIrqs& request,
                                       bool masked) {
  const uint32_t index = request.index;
  absl::StatusOr<IrqInfo> info = Info(index);
  if (!info.ok() || (info->flags & kIrqInfoMaskable) == 0) {
    return Invalid(absl::StrCat("index ", index, " is not maskable"));
  }
  const bool all = (request.flags & kIrqSetDataMask) == kIrqSetDataNone;
  SignalList signals;
  std::vector<MaskChange> changes;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Vector>& vectors = vectors_[index];
    for (uint32_t i = 0; i < request.count; ++i) {
      if (!all && request.bools[i] == 0) continue;
      const uint32_t vector = request.start + i;
      Vector& v = vectors[vector];
      if (index == kPciIntxIrqIndex) {
        v.masked = masked;
        if (!masked) EvaluateIntxLocked(&signals);
      } else if (masked) {
        if (!v.masked) changes.push_back({index, vector, true});
        v.masked = true;
      } else if (UnmaskEdgeLocked(index, v, &signals)) {
        changes.push_back({index, vector, false});
      }
    }
  }
  Deliver(signals).IgnoreError();
  if (config_.on_mask_change) {
    for (const MaskChange& c : changes) {
      config_.on_mask_change(c.index, c.vector, c.masked);
    }
  }
  return absl::OkStatus();
}

UniqueFd IrqController::DetachIntxUnmaskFd() {
  UniqueFd fd;
  {
    absl::MutexLock lock(&mu_);
    fd = std::move(intx_unmask_fd_);
  }
  // Only ever set when a watcher exists. Unwatch before the caller closes it.
  if (fd.valid()) config_.watcher->Unwatch(fd.get());
  return fd;
}

void IrqController::OnIntxUnmaskFdReadable(int fd) {
  // The watcher guarantees `fd` is still open: it is unwatched before close.
  DrainEventfd(fd);
  UnmaskIntx();
}

void IrqController::UnmaskIntx() {
  SignalList signals;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Vector>& intx = vectors_[kPciIntxIrqIndex];
    if (intx.empty()) return;
    intx[0].masked = false;
    EvaluateIntxLocked(&signals);
  }
  Deliver(signals).IgnoreError();
}

void IrqController::ReleaseClientResources() {
  absl::MutexLock control(&control_mu_);
  // Destroyed (closed) after mu_ is released.
  UniqueFd unmask_fd = DetachIntxUnmaskFd();
  std::vector<SharedFd> closing;
  absl::MutexLock lock(&mu_);
  for (std::vector<Vector>& vectors : vectors_) {
    for (Vector& v : vectors) {
      if (v.trigger) closing.push_back(std::move(v.trigger));
    }
  }
}

void IrqController::Reset() {
  absl::MutexLock control(&control_mu_);
  absl::MutexLock lock(&mu_);
  for (std::vector<Vector>& vectors : vectors_) {
    for (Vector& v : vectors) {
      v.masked = false;
      v.pending = false;
    }
  }
  intx_level_ = false;
}

// ---- Device side ----

absl::Status IrqController::Trigger(uint32_t index, uint32_t vector) {
  if (!IsEdgeIndex(index) || vector >= config_.vector_counts[index]) {
    return ErrnoError(EINVAL, absl::StrCat("Trigger: bad IRQ index ", index,
                                           " / vector ", vector));
  }
  SignalList signals;
  Outcome outcome;
  {
    absl::MutexLock lock(&mu_);
    outcome = RaiseLocked(index, vectors_[index][vector], &signals);
  }
  if (outcome == Outcome::kDropped) {
    return absl::FailedPreconditionError(absl::StrCat(
        "IRQ index ", index, " vector ", vector, " has no eventfd wired"));
  }
  return Deliver(signals);
}

void IrqController::SetIntxLevel(bool asserted) {
  SignalList signals;
  {
    absl::MutexLock lock(&mu_);
    const bool rising = asserted && !intx_level_;
    intx_level_ = asserted;
    std::vector<Vector>& intx = vectors_[kPciIntxIrqIndex];
    if (!rising || intx.empty()) return;
    RaiseLocked(kPciIntxIrqIndex, intx[0], &signals);
  }
  Deliver(signals).IgnoreError();
}

bool IrqController::IntxAsserted() const {
  absl::MutexLock lock(&mu_);
  return intx_level_;
}

absl::Status IrqController::SetVectorMasked(uint32_t index, uint32_t vector,
                                            bool masked) {
  if ((index != kPciMsiIrqIndex && index != kPciMsixIrqIndex) ||
      vector >= config_.vector_counts[index]) {
    return ErrnoError(EINVAL, absl::StrCat("SetVectorMasked: bad IRQ index ",
                                           index, " / vector ", vector));
  }
  SignalList signals;
  {
    absl::MutexLock lock(&mu_);
    Vector& v = vectors_[index][vector];
    if (masked) {
      v.masked = true;
    } else {
      UnmaskEdgeLocked(index, v, &signals);
    }
  }
  return Deliver(signals);
}

bool IrqController::IsPending(uint32_t index, uint32_t vector) const {
  absl::MutexLock lock(&mu_);
  return index < kPciNumIrqs && vector < vectors_[index].size() &&
         vectors_[index][vector].pending;
}

bool IrqController::IsMasked(uint32_t index, uint32_t vector) const {
  absl::MutexLock lock(&mu_);
  return index < kPciNumIrqs && vector < vectors_[index].size() &&
         vectors_[index][vector].masked;
}

bool IrqController::IsWired(uint32_t index, uint32_t vector) const {
  absl::MutexLock lock(&mu_);
  return index < kPciNumIrqs && vector < vectors_[index].size() &&
         vectors_[index][vector].trigger != nullptr;
}

bool IrqController::HasIntxUnmaskFd() const {
  absl::MutexLock lock(&mu_);
  return intx_unmask_fd_.valid();
}

IrqCounters IrqController::Counters(uint32_t index) const {
  IrqCounters out;
  if (index >= kPciNumIrqs) return out;
  const AtomicCounters& c = counters_[index];
  out.delivered = c.delivered.load(std::memory_order_relaxed);
  out.masked = c.masked.load(std::memory_order_relaxed);
  out.dropped = c.dropped.load(std::memory_order_relaxed);
  return out;
}

// ---- Helpers ----

IrqController::Outcome IrqController::RaiseLocked(uint32_t index, Vector& v,
                                                  SignalList* out) {
  AtomicCounters& counters = counters_[index];
  if (v.masked) {
    // INTx is a level: it re-fires on unmask while asserted, no pending bit.
    if (index != kPciIntxIrqIndex) v.pending = true;
    counters.masked.fetch_add(1, std::memory_order_relaxed);
    return Outcome::kPending;
  }
  if (v.trigger == nullptr) {
    counters.dropped.fetch_add(1, std::memory_order_relaxed);
    return Outcome::kDropped;
  }
  if (index == kPciIntxIrqIndex) v.masked = true;  // AUTOMASKED
  out->push_back({index, v.trigger});
  return Outcome::kSignal;
}

void IrqController::EvaluateIntxLocked(SignalList* out) {
  std::vector<Vector>& intx = vectors_[kPciIntxIrqIndex];
  if (intx.empty()) return;
  Vector& v = intx[0];
  if (intx_level_ && !v.masked && v.trigger != nullptr) {
    RaiseLocked(kPciIntxIrqIndex, v, out);
  }
}

bool IrqController::UnmaskEdgeLocked(uint32_t index, Vector& v,
                                     SignalList* out) {
  if (!v.masked) return false;
  v.masked = false;
  if (v.pending) {
    v.pending = false;
    RaiseLocked(index, v, out);
  }
  return true;
}

absl::Status IrqController::Deliver(const SignalList& signals) {
  absl::Status first_error;
  for (const Signal& signal : signals) {
    AtomicCounters& counters = counters_[signal.index];
    absl::Status s = SignalEventfd(signal.fd->get());
    if (s.ok()) {
      counters.delivered.fetch_add(1, std::memory_order_relaxed);
    } else {
      counters.dropped.fetch_add(1, std::memory_order_relaxed);
      first_error.Update(s);
    }
  }
  return first_error;
}

}  // namespace vfio_user
