// Replays the client fuzz target (client_fuzz_harness.h, built here with gcc
// and no libFuzzer) over the seed corpus and the regression inputs. A
// violated invariant aborts the test process, which fails the test.
#include <string>
#include <vector>

#include "core/log.h"
#include "gtest/gtest.h"
#include "tests/fuzz/client_fuzz_harness.h"
#include "tests/fuzz/fuzz_replay.h"

namespace vfio_user {
namespace fuzz {
namespace {

class ClientFuzzRegression : public ::testing::Test {
 protected:
  void SetUp() override { SetLogLevel(LogLevel::kError); }
};

TEST_F(ClientFuzzRegression, RecordedServersAttach) {
  const std::vector<FuzzInputFile> seeds = ReadFuzzInputs("tests/fuzz/corpus/client");
  int recorded = 0;
  for (const FuzzInputFile& seed : seeds) {
    SCOPED_TRACE(seed.name);
    const ClientRunStats stats = RunClientFuzzInput(seed.bytes.data(), seed.bytes.size());
    if (seed.name.rfind("recorded-", 0) == 0) {
      ++recorded;
      // The recorded server's answers satisfy the client's validation.
      EXPECT_TRUE(stats.connected);
      EXPECT_GT(stats.requests_seen, 10);
    }
  }
  EXPECT_GE(recorded, 4);
}

TEST_F(ClientFuzzRegression, RegressionInputsDoNotCrash) {
  const std::vector<FuzzInputFile> inputs =
      ReadFuzzInputs("tests/fuzz/regressions/client");
  for (const FuzzInputFile& input : inputs) {
    SCOPED_TRACE(input.name);
    RunClientFuzzInput(input.bytes.data(), input.bytes.size());
  }
  RecordProperty("regression_inputs", static_cast<int>(inputs.size()));
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user
