// Proves that the sanitizer build configs (.bazelrc: --config=asan,
// --config=tsan) really instrument the code and that a finding fails the
// test: each case runs a deliberate bug in a forked child (a gtest death
// test) and expects the sanitizer's report. In a build without that
// sanitizer the cases are skipped, so this test is cheap everywhere.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "gtest/gtest.h"

#if defined(__SANITIZE_ADDRESS__)
#define VFIO_USER_HAS_ASAN 1
#include <sanitizer/lsan_interface.h>
#else
#define VFIO_USER_HAS_ASAN 0
#endif

#if defined(VFIO_USER_TSAN)  // --config=tsan (it hides __SANITIZE_THREAD__)
#define VFIO_USER_HAS_TSAN 1
#else
#define VFIO_USER_HAS_TSAN 0
#endif

namespace {

// Keeps the optimizer from deleting the deliberate bugs.
template <typename T>
T Launder(T value) {
  asm volatile("" : "+r"(value));
  return value;
}

TEST(SanitizerCanaryTest, HeapOverflowIsReported) {
  if (!VFIO_USER_HAS_ASAN) GTEST_SKIP() << "not an ASan build";
  EXPECT_DEATH(
      {
        char* p = Launder(static_cast<char*>(std::malloc(16)));
        p[Launder(16)] = 1;
        std::free(p);
      },
      "heap-buffer-overflow");
}

TEST(SanitizerCanaryTest, UseAfterFreeIsReported) {
  if (!VFIO_USER_HAS_ASAN) GTEST_SKIP() << "not an ASan build";
  EXPECT_DEATH(
      {
        int* p = Launder(new int(7));
        delete p;
        *Launder(p) = 8;
      },
      "heap-use-after-free");
}

#if VFIO_USER_HAS_ASAN
TEST(SanitizerCanaryTest, LeakIsReported) {
  EXPECT_DEATH(
      {
        void* volatile leaked = std::malloc(64);
        leaked = nullptr;
        (void)leaked;
        __lsan_do_leak_check();
      },
      "detected memory leaks");
}
#endif

TEST(SanitizerCanaryTest, UndefinedBehaviourIsReported) {
  if (!VFIO_USER_HAS_ASAN) GTEST_SKIP() << "not an ASan+UBSan build";
  EXPECT_DEATH(
      {
        int32_t big = Launder(INT32_MAX);
        volatile int32_t sum = big + Launder(1);
        (void)sum;
      },
      "signed integer overflow");
}

TEST(SanitizerCanaryTest, DataRaceIsReported) {
  if (!VFIO_USER_HAS_TSAN) GTEST_SKIP() << "not a TSan build";
  EXPECT_DEATH(
      {
        int shared = 0;
        std::thread t([&] { shared = 1; });
        shared = 2;
        t.join();
        std::exit(Launder(shared) == 0 ? 1 : 0);
      },
      "data race");
}

}  // namespace
