// ThreadSanitizer annotations for the Debian system Abseil (--config=tsan).
//
// Debian's libabsl_synchronization is not built with -fsanitize=thread, so
// TSan cannot see absl::Mutex synchronize: it waits with futex syscalls and
// atomics in uninstrumented code, and every access guarded by an absl::Mutex
// would be reported as a race. Abseil's own answer is annotations compiled
// into mutex.cc under TSan; this file adds them from outside instead.
//
// How: the tsan build links this library statically into every binary
// (.bazelrc: --custom_malloc, which Bazel links into each cc_binary and
// cc_test). It defines the out-of-line absl::Mutex / CondVar / Notification /
// BlockingCounter / Status entry points; the dynamic linker binds every call
// (ours and the calls inside libabsl_*.so, which go through the PLT) to these
// definitions, which announce the operation to TSan with the same
// __tsan_mutex_* annotations Abseil uses and call the real function
// (dlsym(RTLD_NEXT)). The model is exactly Abseil's:
//   - Lock/Unlock/TryLock/ReaderLock/...: pre/post lock and unlock events,
//     accesses inside the call ignored (conditions evaluated while waiting);
//   - Await*/CondVar::Wait*: the mutex is released and reacquired;
//   - Notification::Notify: a release on the flag HasBeenNotified() reads
//     (that read is inline and instrumented, the store is not);
//   - BlockingCounter: each DecrementCount releases, Wait acquires;
//   - Status::UnrefNonInlined: the last owner's delete acquires what every
//     earlier owner released (a refcount decremented in uninstrumented code).
// Only the symbols of Abseil's "debian3" inline namespace are wrapped; a
// different Abseil build fails to link here (loudly) rather than silently
// reporting false races.
//
// The tsan config compiles with -U__SANITIZE_THREAD__ so that the system
// headers (Protobuf's MapFieldBase, Abseil, gRPC) keep the layout of the
// uninstrumented libraries; this file keys on VFIO_USER_TSAN instead.
//
// Not covered (documented in docs/SECURITY.md): synchronization inside other
// uninstrumented libraries (gRPC's and Protobuf's internal atomics), which is
// why the tsan run leaves out the gRPC daemon tests.
#if defined(VFIO_USER_TSAN)  // the rest of the file (set by --config=tsan)

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

// The real function behind `mangled` in the next object (libabsl_*.so).
template <typename Fn>
Fn Real(const char* mangled) {
  void* sym = ::dlsym(RTLD_NEXT, mangled);
  if (sym == nullptr) {
    std::fprintf(stderr, "absl_tsan_annotations: %s not found: %s\n", mangled,
                 ::dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(sym);
}

#define REAL(type, mangled)                       \
  static const auto real = Real<type>(mangled); \
  (void)0

// The real functions call each other (LockWhenWithTimeout calls
// LockWhenWithDeadline, through the PLT, i.e. through us again): only the
// outermost call of a thread is annotated.
thread_local int wrapper_depth = 0;
class Outermost {
 public:
  Outermost() : outer_(wrapper_depth++ == 0) {}
  ~Outermost() { --wrapper_depth; }
  bool outer() const { return outer_; }

 private:
  const bool outer_;
};
#define PASS_THROUGH_IF_NESTED(...)   \
  Outermost outermost;                \
  if (!outermost.outer()) return real(__VA_ARGS__)

// Mutexes the current thread holds in shared (reader) mode, so that Await and
// CondVar::Wait release and reacquire them in the right mode. A thread holds
// few locks at once; a small fixed array suffices (overflow: treated as
// exclusive, which only makes TSan stricter about that mutex).
constexpr int kMaxReaderLocks = 32;
thread_local const void* reader_locks[kMaxReaderLocks];

void AddReaderLock(const void* mu) {
  for (auto& slot : reader_locks) {
    if (slot == nullptr) {
      slot = mu;
      return;
    }
  }
}

void RemoveReaderLock(const void* mu) {
  for (auto& slot : reader_locks) {
    if (slot == mu) {
      slot = nullptr;
      return;
    }
  }
}

unsigned HeldModeFlags(const void* mu) {
  for (const void* slot : reader_locks) {
    if (slot == mu) return __tsan_mutex_read_lock;
  }
  return 0;
}

// Releases `mu` around a wait that drops and retakes it, like Abseil's own
// annotations in Mutex::AwaitCommon and CondVar::WaitCommon.
template <typename Fn>
auto AroundWait(absl::Mutex* mu, Fn wait) {
  const unsigned flags = HeldModeFlags(mu);
  __tsan_mutex_pre_unlock(mu, flags);
  __tsan_mutex_post_unlock(mu, flags);
  __tsan_mutex_pre_lock(mu, flags);
  auto result = wait();
  __tsan_mutex_post_lock(mu, flags, 0);
  return result;
}

template <typename Fn>
auto Locking(absl::Mutex* mu, unsigned flags, Fn lock) {
  __tsan_mutex_pre_lock(mu, flags);
  auto result = lock();
  __tsan_mutex_post_lock(mu, flags, 0);
  if (flags & __tsan_mutex_read_lock) AddReaderLock(mu);
  return result;
}

template <typename Fn>
void Unlocking(absl::Mutex* mu, unsigned flags, Fn unlock) {
  if (flags & __tsan_mutex_read_lock) RemoveReaderLock(mu);
  __tsan_mutex_pre_unlock(mu, flags);
  unlock();
  __tsan_mutex_post_unlock(mu, flags);
}

}  // namespace

namespace absl {

// ---- Mutex ----

Mutex::~Mutex() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35MutexD2Ev");
  Outermost outermost;
  if (outermost.outer()) __tsan_mutex_destroy(this, __tsan_mutex_not_static);
  real(this);
}

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  PASS_THROUGH_IF_NESTED(this);
  Locking(this, 0, [&] {
    real(this);
    return 0;
  });
}

void Mutex::ReaderLock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  PASS_THROUGH_IF_NESTED(this);
  Locking(this, __tsan_mutex_read_lock, [&] {
    real(this);
    return 0;
  });
}

void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  PASS_THROUGH_IF_NESTED(this);
  Unlocking(this, 0, [&] { real(this); });
}

void Mutex::ReaderUnlock() {
  REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  PASS_THROUGH_IF_NESTED(this);
  Unlocking(this, __tsan_mutex_read_lock, [&] { real(this); });
}

bool Mutex::TryLock() {
  REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  PASS_THROUGH_IF_NESTED(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(
      this,
      __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}

bool Mutex::ReaderTryLock() {
  REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  PASS_THROUGH_IF_NESTED(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_read_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(
      this, locked ? __tsan_mutex_try_read_lock : __tsan_mutex_try_read_lock_failed,
      0);
  if (locked) AddReaderLock(this);
  return locked;
}

void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  PASS_THROUGH_IF_NESTED(this, cond);
  Locking(this, 0, [&] {
    real(this, cond);
    return 0;
  });
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  PASS_THROUGH_IF_NESTED(this, cond);
  Locking(this, __tsan_mutex_read_lock, [&] {
    real(this, cond);
    return 0;
  });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
       "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  PASS_THROUGH_IF_NESTED(this, cond, timeout);
  return Locking(this, 0, [&] { return real(this, cond, timeout); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond,
                                      absl::Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
       "_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_"
       "8DurationE");
  PASS_THROUGH_IF_NESTED(this, cond, timeout);
  return Locking(this, __tsan_mutex_read_lock,
                 [&] { return real(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  PASS_THROUGH_IF_NESTED(this, cond, deadline);
  return Locking(this, 0, [&] { return real(this, cond, deadline); });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond,
                                       absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_"
       "4TimeE");
  PASS_THROUGH_IF_NESTED(this, cond, deadline);
  return Locking(this, __tsan_mutex_read_lock,
                 [&] { return real(this, cond, deadline); });
}

void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  PASS_THROUGH_IF_NESTED(this, cond);
  AroundWait(this, [&] {
    real(this, cond);
    return 0;
  });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Duration),
       "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  PASS_THROUGH_IF_NESTED(this, cond, timeout);
  return AroundWait(this, [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  PASS_THROUGH_IF_NESTED(this, cond, deadline);
  return AroundWait(this, [&] { return real(this, cond, deadline); });
}

// ---- CondVar ----

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  PASS_THROUGH_IF_NESTED(this, mu);
  AroundWait(mu, [&] {
    real(this, mu);
    return 0;
  });
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  REAL(bool (*)(CondVar*, Mutex*, absl::Duration),
       "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  PASS_THROUGH_IF_NESTED(this, mu, timeout);
  return AroundWait(mu, [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, absl::Time),
       "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  PASS_THROUGH_IF_NESTED(this, mu, deadline);
  return AroundWait(mu, [&] { return real(this, mu, deadline); });
}

// ---- Suppressions ----

// Races TSan must not report (linked into every tsan binary with this file):
//  - guest memory: the server's DMA table and the client's DMA space copy
//    to and from memory that another process (the VMM's guest RAM, the
//    device) shares; concurrent accesses to it are DMA semantics, ordered
//    by the guest and the device protocol (often through a socket, which
//    TSan does not see), not by our locks.
extern "C" const char* __tsan_default_suppressions() {
  return "race:vfio_user::DmaTable::Access\n"
         "race:vfio_user::DmaTable::CopyMapped\n"
         "race:vfio_user::DmaTable::WithMappedRange\n"
         "race:vfio_user::DmaSpace::Read\n"
         "race:vfio_user::DmaSpace::Write\n";
}

// ---- Notification ----

void Notification::Notify() {
  REAL(void (*)(Notification*), "_ZN4absl7debian312Notification6NotifyEv");
  // HasBeenNotified() is an instrumented acquire load of notified_yet_.
  __tsan_release(&notified_yet_);
  real(this);
}

// ---- BlockingCounter ----

bool BlockingCounter::DecrementCount() {
  REAL(bool (*)(BlockingCounter*),
       "_ZN4absl7debian315BlockingCounter14DecrementCountEv");
  __tsan_release(this);
  return real(this);
}

void BlockingCounter::Wait() {
  REAL(void (*)(BlockingCounter*), "_ZN4absl7debian315BlockingCounter4WaitEv");
  real(this);
  __tsan_acquire(this);
}

// ---- Status ----

void Status::UnrefNonInlined(uintptr_t rep) {
  REAL(void (*)(uintptr_t), "_ZN4absl7debian36Status15UnrefNonInlinedEm");
  // Every owner releases before dropping its reference; whoever deletes has
  // acquired them all.
  void* key = reinterpret_cast<void*>(rep);
  __tsan_release(key);
  __tsan_acquire(key);
  real(rep);
}

}  // namespace absl

#endif  // defined(VFIO_USER_TSAN)
