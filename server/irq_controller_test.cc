#include "server/irq_controller.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/errno_status.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

// ---- Helpers ----

UniqueFd MakeEventfd(int flags = EFD_CLOEXEC | EFD_NONBLOCK) {
  UniqueFd fd(::eventfd(0, flags));
  EXPECT_TRUE(fd.valid()) << errno;
  return fd;
}

// A second descriptor for the same eventfd: the controller owns what it is
// given, the test keeps reading through the original.
UniqueFd Dup(const UniqueFd& fd) {
  UniqueFd copy(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  EXPECT_TRUE(copy.valid()) << errno;
  return copy;
}

// Reads (and resets) an eventfd counter; 0 when it was not signalled.
uint64_t ReadCount(const UniqueFd& fd) {
  uint64_t value = 0;
  if (::read(fd.get(), &value, sizeof(value)) != sizeof(value)) return 0;
  return value;
}

void Signal(const UniqueFd& fd) {
  const uint64_t one = 1;
  ASSERT_EQ(::write(fd.get(), &one, sizeof(one)), 8);
}

int OpenFdCount() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (::readdir(dir) != nullptr) ++count;
  ::closedir(dir);
  return count - 3;  // ".", ".." and the directory's own fd
}

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

SetIrqs Req(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
            std::vector<uint8_t> bools = {}) {
  SetIrqs r;
  r.flags = flags;
  r.index = index;
  r.start = start;
  r.count = count;
  r.bools = std::move(bools);
  r.argsz = 20 + static_cast<uint32_t>(r.bools.size());
  return r;
}

constexpr uint32_t kAssign = kIrqSetDataEventfd | kIrqSetActionTrigger;
// With count 0 (and start 0): "disable all"; otherwise the client raises
// the interrupts itself.
constexpr uint32_t kTriggerNone = kIrqSetDataNone | kIrqSetActionTrigger;
constexpr uint32_t kMaskNone = kIrqSetDataNone | kIrqSetActionMask;
constexpr uint32_t kUnmaskNone = kIrqSetDataNone | kIrqSetActionUnmask;
constexpr uint32_t kUnmaskFd = kIrqSetDataEventfd | kIrqSetActionUnmask;

// The FdWatcher of the event loop, reduced to what the test needs: records
// callbacks and lets the test run one after making the fd readable. Checks
// the contract that an fd is unwatched before it is closed.
class FakeFdWatcher : public FdWatcher {
 public:
  absl::Status Watch(int fd, std::function<void()> on_readable) override {
    absl::MutexLock lock(&mu_);
    if (!IsOpen(fd)) closed_while_watched_ = true;
    callbacks_[fd] = std::move(on_readable);
    return absl::OkStatus();
  }
  void Unwatch(int fd) override {
    absl::MutexLock lock(&mu_);
    if (!IsOpen(fd)) closed_while_watched_ = true;
    callbacks_.erase(fd);
    ++unwatches_;
  }
  // Runs the callback for `fd` as the event loop would when it is readable.
  bool Fire(int fd) {
    std::function<void()> callback;
    {
      absl::MutexLock lock(&mu_);
      auto it = callbacks_.find(fd);
      if (it == callbacks_.end()) return false;
      callback = it->second;
    }
    callback();
    return true;
  }
  // The single watched fd (-1 if none or several).
  int WatchedFd() {
    absl::MutexLock lock(&mu_);
    return callbacks_.size() == 1 ? callbacks_.begin()->first : -1;
  }
  size_t watched() {
    absl::MutexLock lock(&mu_);
    return callbacks_.size();
  }
  int unwatches() {
    absl::MutexLock lock(&mu_);
    return unwatches_;
  }
  bool closed_while_watched() {
    absl::MutexLock lock(&mu_);
    return closed_while_watched_;
  }

 private:
  absl::Mutex mu_;
  std::map<int, std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
  int unwatches_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_while_watched_ ABSL_GUARDED_BY(mu_) = false;
};

struct MaskEvent {
  uint32_t index, vector;
  bool masked;
  bool operator==(const MaskEvent& o) const {
    return std::tie(index, vector, masked) ==
           std::tie(o.index, o.vector, o.masked);
  }
};

class IrqControllerTest : public ::testing::Test {
 protected:
  // INTx 1, MSI 4 (maskable), MSI-X 20 (maskable), ERR 1, REQ 1.
  IrqController& Make(bool maskable = true, bool with_watcher = true) {
    IrqController::Config config;
    config.vector_counts = {1, 4, 20, 1, 1};
    config.msi_maskable = maskable;
    config.msix_maskable = maskable;
    config.watcher = with_watcher ? &watcher_ : nullptr;
    config.on_mask_change = [this](uint32_t index, uint32_t vector,
                                   bool masked) {
      mask_events_.push_back({index, vector, masked});
    };
    auto created = IrqController::Create(std::move(config));
    EXPECT_TRUE(created.ok()) << created.status();
    irqs_ = std::move(*created);
    return *irqs_;
  }

  // Wires `count` MSI-X vectors from `start` with fresh eventfds; returns the
  // test's ends.
  std::vector<UniqueFd> Wire(uint32_t index, uint32_t start, uint32_t count) {
    std::vector<UniqueFd> mine, theirs;
    for (uint32_t i = 0; i < count; ++i) {
      mine.push_back(MakeEventfd());
      theirs.push_back(Dup(mine.back()));
    }
    EXPECT_TRUE(
        irqs_->SetIrqs(Req(kAssign, index, start, count), std::move(theirs))
            .ok());
    return mine;
  }

  FakeFdWatcher watcher_;
  std::vector<MaskEvent> mask_events_;
  std::unique_ptr<IrqController> irqs_;
};

void ExpectEinval(const absl::Status& status) {
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(ErrnoOf(status), EINVAL) << status;
}

// ---- Creation and GET_IRQ_INFO ----

TEST(IrqControllerCreateTest, RejectsImpossibleCounts) {
  for (auto counts :
       std::vector<std::array<uint32_t, kPciNumIrqs>>{{2, 0, 0, 0, 0},
                                                      {0, 3, 0, 0, 0},
                                                      {0, 64, 0, 0, 0},
                                                      {0, 0, 2049, 0, 0},
                                                      {0, 0, 0, 2, 0},
                                                      {0, 0, 0, 0, 2}}) {
    IrqController::Config config;
    config.vector_counts = counts;
    EXPECT_FALSE(IrqController::Create(config).ok());
  }
  IrqController::Config max;
  max.vector_counts = {1, 32, 2048, 1, 1};
  EXPECT_TRUE(IrqController::Create(max).ok());
}

TEST_F(IrqControllerTest, InfoReportsCountsAndFlags) {
  Make(/*maskable=*/true);
  const uint32_t expected_flags[kPciNumIrqs] = {
      kIrqInfoEventfd | kIrqInfoMaskable | kIrqInfoAutomasked,
      kIrqInfoEventfd | kIrqInfoMaskable | kIrqInfoNoresize,
      kIrqInfoEventfd | kIrqInfoMaskable, kIrqInfoEventfd, kIrqInfoEventfd};
  const uint32_t expected_counts[kPciNumIrqs] = {1, 4, 20, 1, 1};
  for (uint32_t index = 0; index < kPciNumIrqs; ++index) {
    absl::StatusOr<IrqInfo> info = irqs_->Info(index);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->argsz, 16u);
    EXPECT_EQ(info->index, index);
    EXPECT_EQ(info->count, expected_counts[index]);
    EXPECT_EQ(info->flags, expected_flags[index]) << index;
  }
  ExpectEinval(irqs_->Info(kPciNumIrqs).status());

  Make(/*maskable=*/false);
  EXPECT_EQ(irqs_->Info(kPciMsiIrqIndex)->flags,
            kIrqInfoEventfd | kIrqInfoNoresize);
  EXPECT_EQ(irqs_->Info(kPciMsixIrqIndex)->flags, kIrqInfoEventfd);

  IrqController::Config none;
  auto empty = IrqController::Create(none);
  ASSERT_TRUE(empty.ok());
  for (uint32_t index = 0; index < kPciNumIrqs; ++index) {
    EXPECT_EQ((*empty)->Info(index)->count, 0u);
    EXPECT_EQ((*empty)->Info(index)->flags, kIrqInfoEventfd);
  }
}

// ---- MSI-X wiring and delivery ----

TEST_F(IrqControllerTest, TriggerSignalsTheWiredEventfd) {
  Make();
  std::vector<UniqueFd> fds = Wire(kPciMsixIrqIndex, 0, 4);
  for (uint32_t v = 0; v < 4; ++v) {
    ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, v).ok());
    for (uint32_t other = 0; other < 4; ++other) {
      EXPECT_EQ(ReadCount(fds[other]), other == v ? 1u : 0u);
    }
  }
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 2).ok());
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 2).ok());
  EXPECT_EQ(ReadCount(fds[2]), 2u);
  EXPECT_EQ(irqs_->Counters(kPciMsixIrqIndex).delivered, 6u);

  // Unwired vector: dropped, FailedPrecondition.
  absl::Status unwired = irqs_->Trigger(kPciMsixIrqIndex, 7);
  EXPECT_TRUE(absl::IsFailedPrecondition(unwired)) << unwired;
  EXPECT_EQ(irqs_->Counters(kPciMsixIrqIndex).dropped, 1u);

  ExpectEinval(irqs_->Trigger(kPciIntxIrqIndex, 0));
  ExpectEinval(irqs_->Trigger(kPciMsixIrqIndex, 20));
  ExpectEinval(irqs_->Trigger(kPciNumIrqs, 0));
}

TEST_F(IrqControllerTest, AssigningReplacesAndClosesThePreviousFd) {
  Make();
  const int baseline = OpenFdCount();
  UniqueFd first = MakeEventfd();
  std::vector<UniqueFd> given;
  given.push_back(Dup(first));
  const int first_copy = given[0].get();
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kAssign, kPciMsixIrqIndex, 3, 1), std::move(given))
          .ok());
  EXPECT_TRUE(IsOpen(first_copy));

  UniqueFd second = MakeEventfd();
  given.clear();
  given.push_back(Dup(second));
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kAssign, kPciMsixIrqIndex, 3, 1), std::move(given))
          .ok());
  EXPECT_FALSE(IsOpen(first_copy));
  EXPECT_EQ(OpenFdCount(), baseline + 3);  // first, second, second's copy

  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 3).ok());
  EXPECT_EQ(ReadCount(first), 0u);
  EXPECT_EQ(ReadCount(second), 1u);
}

// QEMU sends an eventfd array in chunks of at most max_msg_fds; a chunk of
// unused ("-1") slots goes out with no fds, meaning de-assign.
TEST_F(IrqControllerTest, QemuChunkedSetIrqs) {
  Make();
  const int baseline = OpenFdCount();
  std::vector<UniqueFd> old_middle = Wire(kPciMsixIrqIndex, 8, 8);
  old_middle.clear();  // the controller's copies remain
  EXPECT_EQ(OpenFdCount(), baseline + 8);

  constexpr uint32_t kMaxMsgFds = 8;
  std::vector<UniqueFd> chunk0 = Wire(kPciMsixIrqIndex, 0, kMaxMsgFds);
  ASSERT_TRUE(irqs_->SetIrqs(Req(kAssign, kPciMsixIrqIndex, 8, kMaxMsgFds), {})
                  .ok());  // all-unused chunk
  std::vector<UniqueFd> chunk2 = Wire(kPciMsixIrqIndex, 16, 4);
  // 8 + 4 test ends + 8 + 4 controller copies; the old middle ones are closed.
  EXPECT_EQ(OpenFdCount(), baseline + 24);

  for (uint32_t v = 0; v < 20; ++v) {
    const bool wired = v < 8 || v >= 16;
    EXPECT_EQ(irqs_->IsWired(kPciMsixIrqIndex, v), wired) << v;
    absl::Status s = irqs_->Trigger(kPciMsixIrqIndex, v);
    EXPECT_EQ(s.ok(), wired) << v << " " << s;
  }
  for (auto& fd : chunk0) EXPECT_EQ(ReadCount(fd), 1u);
  for (auto& fd : chunk2) EXPECT_EQ(ReadCount(fd), 1u);
}

// QEMU enables MSI-X with no vector in use by sending one unused slot for
// vector 0, then wires vectors as the guest uses them.
TEST_F(IrqControllerTest, QemuEnablesMsixWithOneUnusedSlot) {
  Make();
  ASSERT_TRUE(irqs_->SetIrqs(Req(kAssign, kPciMsixIrqIndex, 0, 1), {}).ok());
  EXPECT_FALSE(irqs_->IsWired(kPciMsixIrqIndex, 0));
  std::vector<UniqueFd> fds = Wire(kPciMsixIrqIndex, 5, 1);
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 5).ok());
  EXPECT_EQ(ReadCount(fds[0]), 1u);
}

TEST_F(IrqControllerTest, DisableAllClosesEveryTriggerFdOfTheIndex) {
  Make();
  const int baseline = OpenFdCount();
  { std::vector<UniqueFd> msix = Wire(kPciMsixIrqIndex, 0, 20); }
  std::vector<UniqueFd> msi = Wire(kPciMsiIrqIndex, 0, 4);
  EXPECT_EQ(OpenFdCount(), baseline + 20 + 8);
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciMsixIrqIndex, 0, 0), {}).ok());
  EXPECT_EQ(OpenFdCount(), baseline + 8);
  for (uint32_t v = 0; v < 20; ++v) {
    EXPECT_FALSE(irqs_->IsWired(kPciMsixIrqIndex, v));
  }
  EXPECT_TRUE(absl::IsFailedPrecondition(irqs_->Trigger(kPciMsixIrqIndex, 0)));
  // Other indexes are untouched.
  ASSERT_TRUE(irqs_->Trigger(kPciMsiIrqIndex, 3).ok());
  EXPECT_EQ(ReadCount(msi[3]), 1u);
}

TEST_F(IrqControllerTest, ClientEventfdsAreMadeNonBlockingAndSaturationIsOk) {
  Make();
  UniqueFd blocking = MakeEventfd(EFD_CLOEXEC);
  std::vector<UniqueFd> given;
  given.push_back(Dup(blocking));
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kAssign, kPciMsiIrqIndex, 0, 1), std::move(given))
          .ok());
  EXPECT_NE(::fcntl(blocking.get(), F_GETFL) & O_NONBLOCK, 0);
  // A saturated counter must neither block nor fail: it is already pending.
  const uint64_t almost_full = 0xfffffffffffffffeULL;
  ASSERT_EQ(::write(blocking.get(), &almost_full, 8), 8);
  EXPECT_TRUE(irqs_->Trigger(kPciMsiIrqIndex, 0).ok());
  EXPECT_EQ(ReadCount(blocking), almost_full);
}

// ---- Loopback triggers (ACTION_TRIGGER with DATA_NONE / DATA_BOOL) ----

TEST_F(IrqControllerTest, ClientTriggersWithDataNoneAndDataBool) {
  Make();
  std::vector<UniqueFd> fds = Wire(kPciMsixIrqIndex, 0, 4);
  ASSERT_TRUE(irqs_
                  ->SetIrqs(Req(kIrqSetDataBool | kIrqSetActionTrigger,
                                kPciMsixIrqIndex, 1, 3, {1, 0, 1}),
                            {})
                  .ok());
  EXPECT_EQ(ReadCount(fds[0]), 0u);
  EXPECT_EQ(ReadCount(fds[1]), 1u);
  EXPECT_EQ(ReadCount(fds[2]), 0u);
  EXPECT_EQ(ReadCount(fds[3]), 1u);

  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciMsixIrqIndex, 0, 2), {}).ok());
  EXPECT_EQ(ReadCount(fds[0]), 1u);
  EXPECT_EQ(ReadCount(fds[1]), 1u);

  // Masking applies to client-raised interrupts too.
  ASSERT_TRUE(irqs_->SetIrqs(Req(kMaskNone, kPciMsixIrqIndex, 0, 1), {}).ok());
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciMsixIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(ReadCount(fds[0]), 0u);
  EXPECT_TRUE(irqs_->IsPending(kPciMsixIrqIndex, 0));

  // Unwired vectors are counted, the request still succeeds.
  EXPECT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciMsixIrqIndex, 10, 1), {}).ok());
  EXPECT_EQ(irqs_->Counters(kPciMsixIrqIndex).dropped, 1u);
}

// ---- Masking and pending bits ----

TEST_F(IrqControllerTest, ClientMaskMakesPendingAndUnmaskFires) {
  Make();
  std::vector<UniqueFd> fds = Wire(kPciMsixIrqIndex, 0, 4);
  ASSERT_TRUE(irqs_->SetIrqs(Req(kMaskNone, kPciMsixIrqIndex, 1, 2), {}).ok());
  EXPECT_TRUE(irqs_->IsMasked(kPciMsixIrqIndex, 1));
  EXPECT_TRUE(irqs_->IsMasked(kPciMsixIrqIndex, 2));
  EXPECT_FALSE(irqs_->IsMasked(kPciMsixIrqIndex, 3));

  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 1).ok());
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 1).ok());
  EXPECT_EQ(ReadCount(fds[1]), 0u);
  EXPECT_TRUE(irqs_->IsPending(kPciMsixIrqIndex, 1));
  EXPECT_FALSE(irqs_->IsPending(kPciMsixIrqIndex, 2));
  EXPECT_EQ(irqs_->Counters(kPciMsixIrqIndex).masked, 2u);

  // Masking again changes nothing (no second notification).
  ASSERT_TRUE(irqs_->SetIrqs(Req(kMaskNone, kPciMsixIrqIndex, 1, 1), {}).ok());

  ASSERT_TRUE(irqs_
                  ->SetIrqs(Req(kIrqSetDataBool | kIrqSetActionUnmask,
                                kPciMsixIrqIndex, 1, 2, {1, 1}),
                            {})
                  .ok());
  EXPECT_EQ(ReadCount(fds[1]), 1u);  // one message for the pending bit
  EXPECT_EQ(ReadCount(fds[2]), 0u);  // nothing was pending
  EXPECT_FALSE(irqs_->IsPending(kPciMsixIrqIndex, 1));
  EXPECT_EQ(mask_events_,
            (std::vector<MaskEvent>{{kPciMsixIrqIndex, 1, true},
                                    {kPciMsixIrqIndex, 2, true},
                                    {kPciMsixIrqIndex, 1, false},
                                    {kPciMsixIrqIndex, 2, false}}));

  // DATA_BOOL only acts where the byte is set.
  ASSERT_TRUE(irqs_
                  ->SetIrqs(Req(kIrqSetDataBool | kIrqSetActionMask,
                                kPciMsiIrqIndex, 0, 4, {0, 1, 0, 0}),
                            {})
                  .ok());
  for (uint32_t v = 0; v < 4; ++v) {
    EXPECT_EQ(irqs_->IsMasked(kPciMsiIrqIndex, v), v == 1);
  }
}

TEST_F(IrqControllerTest, DeviceDrivenMaskingDoesNotNotify) {
  Make();
  std::vector<UniqueFd> fds = Wire(kPciMsixIrqIndex, 0, 2);
  ASSERT_TRUE(irqs_->SetVectorMasked(kPciMsixIrqIndex, 0, true).ok());
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 0).ok());
  EXPECT_EQ(ReadCount(fds[0]), 0u);
  EXPECT_TRUE(irqs_->IsPending(kPciMsixIrqIndex, 0));
  ASSERT_TRUE(irqs_->SetVectorMasked(kPciMsixIrqIndex, 0, false).ok());
  EXPECT_EQ(ReadCount(fds[0]), 1u);
  EXPECT_FALSE(irqs_->IsPending(kPciMsixIrqIndex, 0));
  EXPECT_TRUE(mask_events_.empty());

  // A pending vector unmasked without an eventfd: dropped, not re-pended.
  ASSERT_TRUE(irqs_->SetVectorMasked(kPciMsixIrqIndex, 9, true).ok());
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 9).ok());
  ASSERT_TRUE(irqs_->SetVectorMasked(kPciMsixIrqIndex, 9, false).ok());
  EXPECT_FALSE(irqs_->IsPending(kPciMsixIrqIndex, 9));
  EXPECT_EQ(irqs_->Counters(kPciMsixIrqIndex).dropped, 1u);

  // Works for MSI regardless of MASKABLE; not for other indexes.
  Make(/*maskable=*/false);
  EXPECT_TRUE(irqs_->SetVectorMasked(kPciMsiIrqIndex, 3, true).ok());
  ExpectEinval(irqs_->SetVectorMasked(kPciIntxIrqIndex, 0, true));
  ExpectEinval(irqs_->SetVectorMasked(kPciErrIrqIndex, 0, true));
  ExpectEinval(irqs_->SetVectorMasked(kPciMsixIrqIndex, 20, true));
}

TEST_F(IrqControllerTest, MaskingNeedsMaskable) {
  Make(/*maskable=*/false);
  ExpectEinval(irqs_->SetIrqs(Req(kMaskNone, kPciMsixIrqIndex, 0, 1), {}));
  ExpectEinval(irqs_->SetIrqs(Req(kUnmaskNone, kPciMsiIrqIndex, 0, 1), {}));
  // INTx is always maskable.
  EXPECT_TRUE(irqs_->SetIrqs(Req(kMaskNone, kPciIntxIrqIndex, 0, 1), {}).ok());
}

// ---- INTx ----

TEST_F(IrqControllerTest, IntxIsLevelTriggeredAndAutomasked) {
  Make();
  std::vector<UniqueFd> trigger = Wire(kPciIntxIrqIndex, 0, 1);
  irqs_->SetIntxLevel(true);
  EXPECT_TRUE(irqs_->IntxAsserted());
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
  irqs_->SetIntxLevel(true);  // still asserted, masked: nothing new
  EXPECT_EQ(ReadCount(trigger[0]), 0u);

  // Unmask while still asserted: signal again, masked again.
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kUnmaskNone, kPciIntxIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));

  // Deassert, then unmask: no signal, stays unmasked.
  irqs_->SetIntxLevel(false);
  EXPECT_FALSE(irqs_->IntxAsserted());
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kUnmaskNone, kPciIntxIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(ReadCount(trigger[0]), 0u);
  EXPECT_FALSE(irqs_->IsMasked(kPciIntxIrqIndex, 0));

  // Client-masked: asserting does not signal until the unmask.
  ASSERT_TRUE(irqs_->SetIrqs(Req(kMaskNone, kPciIntxIrqIndex, 0, 1), {}).ok());
  irqs_->SetIntxLevel(true);
  EXPECT_EQ(ReadCount(trigger[0]), 0u);
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kUnmaskNone, kPciIntxIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
  EXPECT_EQ(irqs_->Counters(kPciIntxIrqIndex).delivered, 3u);
  EXPECT_EQ(irqs_->Counters(kPciIntxIrqIndex).masked, 1u);
  EXPECT_TRUE(mask_events_.empty());  // INTx masks are not mirrored
}

TEST_F(IrqControllerTest, IntxFiresWhenWiredWhileAsserted) {
  Make();
  irqs_->SetIntxLevel(true);  // nothing wired: dropped
  EXPECT_EQ(irqs_->Counters(kPciIntxIrqIndex).dropped, 1u);
  std::vector<UniqueFd> trigger = Wire(kPciIntxIrqIndex, 0, 1);
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
}

TEST_F(IrqControllerTest, IntxUnmaskThroughTheResampleEventfd) {
  Make();
  std::vector<UniqueFd> trigger = Wire(kPciIntxIrqIndex, 0, 1);
  UniqueFd resample = MakeEventfd();
  std::vector<UniqueFd> given;
  given.push_back(Dup(resample));
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given))
          .ok());
  EXPECT_TRUE(irqs_->HasIntxUnmaskFd());
  const int watched = watcher_.WatchedFd();
  ASSERT_GE(watched, 0);

  irqs_->SetIntxLevel(true);
  EXPECT_EQ(ReadCount(trigger[0]), 1u);

  // The guest EOIs, KVM signals the resample fd, the loop runs our callback:
  // still asserted -> signal again and re-mask.
  Signal(resample);
  ASSERT_TRUE(watcher_.Fire(watched));
  EXPECT_EQ(ReadCount(resample), 0u);  // drained by the controller
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));

  // Deasserted -> the resample just unmasks.
  irqs_->SetIntxLevel(false);
  Signal(resample);
  ASSERT_TRUE(watcher_.Fire(watched));
  EXPECT_EQ(ReadCount(trigger[0]), 0u);
  EXPECT_FALSE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
  // A spurious wakeup (counter 0) is harmless.
  ASSERT_TRUE(watcher_.Fire(watched));

  // Replacing the resample fd unwatches and closes the old one.
  UniqueFd resample2 = MakeEventfd();
  given.clear();
  given.push_back(Dup(resample2));
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given))
          .ok());
  EXPECT_FALSE(IsOpen(watched));
  EXPECT_EQ(watcher_.watched(), 1u);

  // De-assign (no fds): unwatched and closed.
  const int watched2 = watcher_.WatchedFd();
  ASSERT_TRUE(irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(watcher_.watched(), 0u);
  EXPECT_FALSE(IsOpen(watched2));
  EXPECT_FALSE(irqs_->HasIntxUnmaskFd());
  EXPECT_FALSE(watcher_.closed_while_watched());
}

TEST_F(IrqControllerTest, IntxUnmaskFdNeedsAWatcher) {
  Make(/*maskable=*/true, /*with_watcher=*/false);
  std::vector<UniqueFd> given;
  given.push_back(MakeEventfd());
  ExpectEinval(
      irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given)));
}

TEST_F(IrqControllerTest, IntxDisableAllClosesTriggerAndUnmaskFds) {
  Make();
  const int baseline = OpenFdCount();
  {
    std::vector<UniqueFd> trigger = Wire(kPciIntxIrqIndex, 0, 1);
    std::vector<UniqueFd> given;
    given.push_back(MakeEventfd());
    ASSERT_TRUE(
        irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given))
            .ok());
    irqs_->SetIntxLevel(true);  // fires and auto-masks
  }
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciIntxIrqIndex, 0, 0), {}).ok());
  EXPECT_EQ(OpenFdCount(), baseline);
  EXPECT_EQ(watcher_.watched(), 0u);
  EXPECT_FALSE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
  EXPECT_FALSE(watcher_.closed_while_watched());
  // Re-enabling while the line is still asserted fires at once.
  std::vector<UniqueFd> trigger = Wire(kPciIntxIrqIndex, 0, 1);
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
}

TEST_F(IrqControllerTest, IntxClientTriggerIsOnePulse) {
  Make();
  std::vector<UniqueFd> trigger = Wire(kPciIntxIrqIndex, 0, 1);
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciIntxIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(ReadCount(trigger[0]), 1u);
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kTriggerNone, kPciIntxIrqIndex, 0, 1), {}).ok());
  EXPECT_EQ(ReadCount(trigger[0]), 0u);  // masked until unmasked
  EXPECT_FALSE(irqs_->IntxAsserted());
}

// ---- ERR / REQ ----

TEST_F(IrqControllerTest, ErrAndReqTakeOneTriggerEventfd) {
  Make();
  for (uint32_t index : {kPciErrIrqIndex, kPciReqIrqIndex}) {
    std::vector<UniqueFd> fd = Wire(index, 0, 1);
    ASSERT_TRUE(irqs_->Trigger(index, 0).ok());
    EXPECT_EQ(ReadCount(fd[0]), 1u);
    ASSERT_TRUE(irqs_->SetIrqs(Req(kTriggerNone, index, 0, 1), {}).ok());
    EXPECT_EQ(ReadCount(fd[0]), 1u);
    ExpectEinval(irqs_->SetIrqs(Req(kMaskNone, index, 0, 1), {}));
    ExpectEinval(irqs_->SetIrqs(Req(kUnmaskNone, index, 0, 1), {}));
    ExpectEinval(irqs_->SetIrqs(Req(kUnmaskFd, index, 0, 1), {}));
    ExpectEinval(irqs_->SetIrqs(Req(kAssign, index, 0, 2), {}));
    ASSERT_TRUE(irqs_->SetIrqs(Req(kTriggerNone, index, 0, 0), {}).ok());
    EXPECT_FALSE(irqs_->IsWired(index, 0));
  }
}

// ---- Validation ----

TEST_F(IrqControllerTest, EveryInvalidRequestIsEinvalAndClosesItsFds) {
  IrqController::Config config;
  config.vector_counts = {1, 0, 20, 1, 1};  // no MSI
  config.msix_maskable = true;
  config.watcher = &watcher_;
  auto created = IrqController::Create(config);
  ASSERT_TRUE(created.ok());
  IrqController& irqs = **created;

  struct Case {
    const char* name;
    SetIrqs request;
    int fds;
  };
  const std::vector<Case> cases = {
      {"index out of range", Req(kAssign, 5, 0, 1), 0},
      {"index without vectors", Req(kAssign, kPciMsiIrqIndex, 0, 1), 0},
      {"no data bit", Req(kIrqSetActionTrigger, kPciMsixIrqIndex, 0, 1), 0},
      {"no action bit", Req(kIrqSetDataNone, kPciMsixIrqIndex, 0, 1), 0},
      {"two data bits",
       Req(kIrqSetDataNone | kIrqSetDataEventfd | kIrqSetActionTrigger,
           kPciMsixIrqIndex, 0, 1),
       0},
      {"two action bits",
       Req(kIrqSetDataNone | kIrqSetActionMask | kIrqSetActionUnmask,
           kPciMsixIrqIndex, 0, 1),
       0},
      {"unknown flag", Req(kTriggerNone | 0x40, kPciMsixIrqIndex, 0, 1), 0},
      {"count 0 with start", Req(kTriggerNone, kPciMsixIrqIndex, 1, 0), 0},
      {"count 0 with eventfd", Req(kAssign, kPciMsixIrqIndex, 0, 0), 0},
      {"count 0 with bool",
       Req(kIrqSetDataBool | kIrqSetActionTrigger, kPciMsixIrqIndex, 0, 0), 0},
      {"count 0 with mask", Req(kMaskNone, kPciMsixIrqIndex, 0, 0), 0},
      {"range past the end", Req(kAssign, kPciMsixIrqIndex, 19, 2), 0},
      {"range wraps u32", Req(kTriggerNone, kPciMsixIrqIndex, 0xffffffffu, 2),
       0},
      {"intx count 2", Req(kAssign, kPciIntxIrqIndex, 0, 2), 0},
      {"fds without DATA_EVENTFD", Req(kTriggerNone, kPciMsixIrqIndex, 0, 1),
       1},
      {"fds with MASK/NONE", Req(kMaskNone, kPciMsixIrqIndex, 0, 1), 1},
      {"fewer fds than count", Req(kAssign, kPciMsixIrqIndex, 0, 3), 2},
      {"more fds than count", Req(kAssign, kPciMsixIrqIndex, 0, 1), 2},
      {"bools size mismatch",
       Req(kIrqSetDataBool | kIrqSetActionTrigger, kPciMsixIrqIndex, 0, 2, {1}),
       0},
      {"MASK with eventfd",
       Req(kIrqSetDataEventfd | kIrqSetActionMask, kPciIntxIrqIndex, 0, 1), 1},
      {"UNMASK eventfd on MSI-X", Req(kUnmaskFd, kPciMsixIrqIndex, 0, 1), 1},
      {"ERR with MASK", Req(kMaskNone, kPciErrIrqIndex, 0, 1), 0},
      {"REQ count 2", Req(kAssign, kPciReqIrqIndex, 0, 2), 2},
  };
  const int baseline = OpenFdCount();
  for (const Case& c : cases) {
    std::vector<UniqueFd> fds;
    for (int i = 0; i < c.fds; ++i) fds.push_back(MakeEventfd());
    absl::Status status = irqs.SetIrqs(c.request, std::move(fds));
    EXPECT_EQ(ErrnoOf(status), EINVAL) << c.name << ": " << status;
    EXPECT_EQ(OpenFdCount(), baseline) << c.name;
  }
  for (uint32_t v = 0; v < 20; ++v)
    EXPECT_FALSE(irqs.IsWired(kPciMsixIrqIndex, v));
  EXPECT_EQ(watcher_.watched(), 0u);
}

TEST_F(IrqControllerTest, NonEventfdsAreRejectedAndNothingChanges) {
  Make();
  std::vector<UniqueFd> wired = Wire(kPciMsixIrqIndex, 0, 2);
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end(pipe_fds[0]);
  std::vector<UniqueFd> given;
  given.push_back(MakeEventfd());
  given.push_back(UniqueFd(pipe_fds[1]));  // a pipe could raise SIGPIPE
  ExpectEinval(
      irqs_->SetIrqs(Req(kAssign, kPciMsixIrqIndex, 0, 2), std::move(given)));
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 1).ok());
  EXPECT_EQ(ReadCount(wired[1]), 1u);  // old wiring intact

  given.clear();
  given.push_back(UniqueFd(::open("/dev/null", O_WRONLY | O_CLOEXEC)));
  ExpectEinval(
      irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given)));
  EXPECT_EQ(watcher_.watched(), 0u);
}

// ---- Disconnect and reset ----

TEST_F(IrqControllerTest, ReleaseClientResourcesClosesEveryFdKeepsState) {
  Make();
  const int baseline = OpenFdCount();
  {
    std::vector<UniqueFd> a = Wire(kPciMsixIrqIndex, 0, 20);
    std::vector<UniqueFd> b = Wire(kPciMsiIrqIndex, 0, 4);
    std::vector<UniqueFd> c = Wire(kPciIntxIrqIndex, 0, 1);
    std::vector<UniqueFd> d = Wire(kPciErrIrqIndex, 0, 1);
    std::vector<UniqueFd> e = Wire(kPciReqIrqIndex, 0, 1);
    std::vector<UniqueFd> given;
    given.push_back(MakeEventfd());
    ASSERT_TRUE(
        irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given))
            .ok());
  }
  EXPECT_EQ(OpenFdCount(), baseline + 28);
  ASSERT_TRUE(irqs_->SetIrqs(Req(kMaskNone, kPciMsixIrqIndex, 4, 1), {}).ok());
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 4).ok());
  irqs_->SetIntxLevel(true);

  irqs_->ReleaseClientResources();
  EXPECT_EQ(OpenFdCount(), baseline);
  EXPECT_EQ(watcher_.watched(), 0u);
  EXPECT_FALSE(watcher_.closed_while_watched());
  EXPECT_FALSE(irqs_->HasIntxUnmaskFd());
  // Device state survives for the next client.
  EXPECT_TRUE(irqs_->IsMasked(kPciMsixIrqIndex, 4));
  EXPECT_TRUE(irqs_->IsPending(kPciMsixIrqIndex, 4));
  EXPECT_TRUE(irqs_->IntxAsserted());
  EXPECT_TRUE(irqs_->IsMasked(kPciIntxIrqIndex, 0));

  // The next client wires up and gets the pending vector on unmask.
  std::vector<UniqueFd> next = Wire(kPciMsixIrqIndex, 4, 1);
  ASSERT_TRUE(
      irqs_->SetIrqs(Req(kUnmaskNone, kPciMsixIrqIndex, 4, 1), {}).ok());
  EXPECT_EQ(ReadCount(next[0]), 1u);
}

TEST_F(IrqControllerTest, DestructorClosesAndUnwatches) {
  Make();
  const int baseline = OpenFdCount();
  {
    std::vector<UniqueFd> a = Wire(kPciMsixIrqIndex, 0, 3);
    std::vector<UniqueFd> given;
    given.push_back(MakeEventfd());
    ASSERT_TRUE(
        irqs_->SetIrqs(Req(kUnmaskFd, kPciIntxIrqIndex, 0, 1), std::move(given))
            .ok());
  }
  irqs_.reset();
  EXPECT_EQ(OpenFdCount(), baseline);
  EXPECT_EQ(watcher_.watched(), 0u);
  EXPECT_FALSE(watcher_.closed_while_watched());
}

TEST_F(IrqControllerTest, ResetClearsDeviceStateKeepsWiring) {
  Make();
  std::vector<UniqueFd> msix = Wire(kPciMsixIrqIndex, 0, 2);
  std::vector<UniqueFd> intx = Wire(kPciIntxIrqIndex, 0, 1);
  ASSERT_TRUE(irqs_->SetVectorMasked(kPciMsixIrqIndex, 1, true).ok());
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 1).ok());
  irqs_->SetIntxLevel(true);
  EXPECT_EQ(ReadCount(intx[0]), 1u);

  irqs_->Reset();
  EXPECT_FALSE(irqs_->IsPending(kPciMsixIrqIndex, 1));
  EXPECT_FALSE(irqs_->IsMasked(kPciMsixIrqIndex, 1));
  EXPECT_FALSE(irqs_->IntxAsserted());
  EXPECT_FALSE(irqs_->IsMasked(kPciIntxIrqIndex, 0));
  EXPECT_EQ(ReadCount(msix[1]), 0u);  // the pending message is discarded
  EXPECT_TRUE(irqs_->IsWired(kPciMsixIrqIndex, 1));
  ASSERT_TRUE(irqs_->Trigger(kPciMsixIrqIndex, 1).ok());
  EXPECT_EQ(ReadCount(msix[1]), 1u);
}

// ---- Concurrency ----

// Device threads trigger while the control thread re-wires, masks and
// disables: no crash, every trigger accounted for, no fd leaked.
TEST_F(IrqControllerTest, ConcurrentTriggersWhileRewiring) {
  Make();
  const int baseline = OpenFdCount();
  constexpr int kThreads = 4;
  constexpr int kTriggersPerThread = 20000;
  constexpr uint32_t kVectors = 8;
  std::atomic<int> running{kThreads};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kTriggersPerThread; ++i) {
        absl::Status s = irqs_->Trigger(kPciMsixIrqIndex, (t + i) % kVectors);
        if (!s.ok() && !absl::IsFailedPrecondition(s)) {
          ADD_FAILURE() << s;
          break;
        }
        if (i % 64 == 0) {
          irqs_->SetVectorMasked(kPciMsixIrqIndex, t, (i / 64) % 2 == 0)
              .IgnoreError();
        }
      }
      running.fetch_sub(1);
    });
  }
  int round = 0;
  while (running.load() > 0) {
    switch (round++ % 4) {
      case 0:
      case 1: {
        std::vector<UniqueFd> fds;
        for (uint32_t i = 0; i < kVectors; ++i) fds.push_back(MakeEventfd());
        EXPECT_TRUE(irqs_
                        ->SetIrqs(Req(kAssign, kPciMsixIrqIndex, 0, kVectors),
                                  std::move(fds))
                        .ok());
        break;
      }
      case 2:
        EXPECT_TRUE(
            irqs_->SetIrqs(Req(kUnmaskNone, kPciMsixIrqIndex, 0, kVectors), {})
                .ok());
        break;
      default:
        EXPECT_TRUE(
            irqs_->SetIrqs(Req(kTriggerNone, kPciMsixIrqIndex, 0, 0), {}).ok());
        break;
    }
  }
  for (std::thread& t : threads) t.join();
  const IrqCounters c = irqs_->Counters(kPciMsixIrqIndex);
  // Every trigger was delivered, held (masked) or dropped; unmasking pending
  // vectors adds deliveries/drops on top.
  EXPECT_GE(c.delivered + c.masked + c.dropped,
            uint64_t{kThreads} * kTriggersPerThread);
  irqs_->ReleaseClientResources();
  EXPECT_EQ(OpenFdCount(), baseline);
}

}  // namespace
}  // namespace vfio_user
