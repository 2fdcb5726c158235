// Replays the codec fuzz target (codec_fuzzer.cc, built here with gcc and no
// libFuzzer) over every file of the seed corpus and of the regression
// directory, so that inputs which once crashed stay fixed. A violated
// invariant aborts the test process, which fails the test.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "core/codec.h"
#include "tests/fuzz/codec_fuzz_input.h"

namespace vfio_user {
namespace fuzz {
namespace {

namespace fs = std::filesystem;

// Directory `rel` (workspace-relative) in the test's runfiles, or relative to
// the current directory when run by hand from the repository root.
fs::path DataDir(const std::string& rel) {
  if (const char* srcdir = std::getenv("TEST_SRCDIR")) {
    const char* workspace = std::getenv("TEST_WORKSPACE");
    return fs::path(srcdir) / (workspace != nullptr ? workspace : "vfio_user") / rel;
  }
  return fs::path(rel);
}

struct Input {
  std::string name;
  Bytes bytes;
};

std::vector<Input> ReadInputs(const fs::path& dir) {
  std::vector<Input> inputs;
  if (!fs::is_directory(dir)) return inputs;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().extension() == ".md") continue;
    std::ifstream in(e.path(), std::ios::binary);
    inputs.push_back({e.path().filename().string(),
                      Bytes(std::istreambuf_iterator<char>(in),
                            std::istreambuf_iterator<char>())});
  }
  return inputs;
}

TEST(CodecFuzzRegression, SeedCorpusDecodesCleanly) {
  const std::vector<Input> seeds = ReadInputs(DataDir("tests/fuzz/corpus/codec"));
  // The seed corpus holds one valid message per decoder, and more.
  ASSERT_GE(seeds.size(), static_cast<size_t>(Target::kCount));
  for (const Input& seed : seeds) {
    EXPECT_TRUE(RunCodecFuzzInput(ByteSpan(seed.bytes.data(), seed.bytes.size())))
        << seed.name << " should be a valid message for its decoder";
  }
}

TEST(CodecFuzzRegression, RegressionInputsDoNotCrash) {
  const std::vector<Input> inputs =
      ReadInputs(DataDir("tests/fuzz/regressions/codec"));
  for (const Input& input : inputs) {
    SCOPED_TRACE(input.name);
    RunCodecFuzzInput(ByteSpan(input.bytes.data(), input.bytes.size()));
  }
  RecordProperty("regression_inputs", static_cast<int>(inputs.size()));
}

TEST(CodecFuzzRegression, EveryPrefixOfEverySeedIsSafe) {
  // Cheap extra coverage: every truncation of every seed, through every
  // decoder (the selector byte rewritten), must fail or succeed cleanly.
  for (const Input& seed : ReadInputs(DataDir("tests/fuzz/corpus/codec"))) {
    for (size_t n = 0; n <= seed.bytes.size(); ++n) {
      Bytes raw(seed.bytes.begin(), seed.bytes.begin() + n);
      if (raw.empty()) continue;
      for (uint8_t t = 0; t < static_cast<uint8_t>(Target::kCount); ++t) {
        raw[0] = static_cast<uint8_t>((seed.bytes[0] & ~kSelectorTargetMask) | t);
        RunCodecFuzzInput(ByteSpan(raw.data(), raw.size()));
      }
    }
  }
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user
