// Replays the VERSION fuzz target (version_fuzzer.cc, built here with gcc
// and no libFuzzer) over the seed corpus and the regression inputs. A
// violated invariant aborts the test process, which fails the test.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fuzz/fuzz_replay.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace vfio_user {
namespace fuzz {
namespace {

TEST(VersionFuzzRegression, SeedsAndRegressionsDoNotCrash) {
  int n = 0;
  for (const char* dir : {"tests/fuzz/corpus/version", "tests/fuzz/regressions/version"}) {
    for (const FuzzInputFile& input : ReadFuzzInputs(dir)) {
      SCOPED_TRACE(input.name);
      LLVMFuzzerTestOneInput(input.bytes.data(), input.bytes.size());
      ++n;
      // Every prefix too: truncated JSON and payloads.
      for (size_t len = 0; len < input.bytes.size(); ++len) {
        LLVMFuzzerTestOneInput(input.bytes.data(), len);
      }
    }
  }
  EXPECT_GE(n, 4);  // the recorded requests and replies
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user
