// Replays the control-plane fuzz target (controlplane_fuzz_harness.h, built
// here with gcc and no libFuzzer) over the seed corpus and the regression
// inputs. A violated invariant aborts the test process, which fails the test.
#include <vector>

#include "core/log.h"
#include "gtest/gtest.h"
#include "tests/fuzz/controlplane_fuzz_harness.h"
#include "tests/fuzz/fuzz_replay.h"

namespace vfio_user {
namespace fuzz {
namespace {

TEST(ControlplaneFuzzRegression, SeedsAndRegressionsRun) {
  SetLogLevel(LogLevel::kError);
  int seeds = 0;
  for (const FuzzInputFile& input : ReadFuzzInputs("tests/fuzz/corpus/controlplane")) {
    SCOPED_TRACE(input.name);
    const ControlplaneRunStats stats =
        RunControlplaneFuzzInput(input.bytes.data(), input.bytes.size());
    EXPECT_GT(stats.calls, 0);
    if (input.name.rfind("lifecycle-", 0) == 0) {
      EXPECT_GE(stats.succeeded, 4);
    }
    ++seeds;
  }
  EXPECT_GE(seeds, 5);
  for (const FuzzInputFile& input : ReadFuzzInputs("tests/fuzz/regressions/controlplane")) {
    SCOPED_TRACE(input.name);
    RunControlplaneFuzzInput(input.bytes.data(), input.bytes.size());
  }
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user
