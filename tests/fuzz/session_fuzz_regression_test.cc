// Replays the session fuzz target (session_fuzz_harness.h, built here with
// gcc and no libFuzzer) over the seed corpus and the regression inputs, so
// that inputs which once crashed, hung or leaked stay fixed. A violated
// invariant aborts the test process, which fails the test.
#include <string>
#include <vector>

#include "core/log.h"
#include "gtest/gtest.h"
#include "tests/fuzz/fuzz_replay.h"
#include "tests/fuzz/session_fuzz_harness.h"

namespace vfio_user {
namespace fuzz {
namespace {

class SessionFuzzRegression : public ::testing::Test {
 protected:
  void SetUp() override { SetLogLevel(LogLevel::kError); }
};

TEST_F(SessionFuzzRegression, RecordedSessionsAttachAndRun) {
  const std::vector<FuzzInputFile> seeds = ReadFuzzInputs("tests/fuzz/corpus/session");
  int recorded = 0;
  for (const FuzzInputFile& seed : seeds) {
    SCOPED_TRACE(seed.name);
    const SessionRunStats stats = RunSessionFuzzInput(seed.bytes.data(), seed.bytes.size());
    if (seed.name.rfind("recorded-", 0) == 0) {
      ++recorded;
      // A real client's session replays cleanly: it attaches and every
      // command is answered, (almost) never with an error.
      EXPECT_TRUE(stats.attached);
      EXPECT_GT(stats.messages_from_server, 10);
    }
  }
  EXPECT_GE(recorded, 4);  // both devices, with and without twin socket
}

TEST_F(SessionFuzzRegression, RegressionInputsDoNotCrash) {
  const std::vector<FuzzInputFile> inputs =
      ReadFuzzInputs("tests/fuzz/regressions/session");
  for (const FuzzInputFile& input : inputs) {
    SCOPED_TRACE(input.name);
    RunSessionFuzzInput(input.bytes.data(), input.bytes.size());
  }
  RecordProperty("regression_inputs", static_cast<int>(inputs.size()));
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user
