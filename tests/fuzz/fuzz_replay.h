// Helpers for the gcc-built regression tests that replay fuzz inputs (seed
// corpora and past crashers) through a fuzz target without libFuzzer.
#ifndef VFIO_USER_TESTS_FUZZ_FUZZ_REPLAY_H_
#define VFIO_USER_TESTS_FUZZ_FUZZ_REPLAY_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace vfio_user {
namespace fuzz {

struct FuzzInputFile {
  std::string name;
  std::vector<uint8_t> bytes;
};

// Directory `rel` (workspace-relative) in the test's runfiles, or relative to
// the current directory when run by hand from the repository root.
inline std::filesystem::path FuzzDataDir(const std::string& rel) {
  if (const char* srcdir = std::getenv("TEST_SRCDIR")) {
    const char* workspace = std::getenv("TEST_WORKSPACE");
    return std::filesystem::path(srcdir) /
           (workspace != nullptr ? workspace : "vfio_user") / rel;
  }
  return std::filesystem::path(rel);
}

// Every regular file of `dir` except *.md, sorted by name; none if `dir` does
// not exist.
inline std::vector<FuzzInputFile> ReadFuzzInputs(const std::string& rel_dir) {
  namespace fs = std::filesystem;
  std::vector<FuzzInputFile> inputs;
  const fs::path dir = FuzzDataDir(rel_dir);
  if (!fs::is_directory(dir)) return inputs;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().extension() == ".md") continue;
    std::ifstream in(e.path(), std::ios::binary);
    inputs.push_back({e.path().filename().string(),
                      std::vector<uint8_t>(std::istreambuf_iterator<char>(in),
                                           std::istreambuf_iterator<char>())});
  }
  std::sort(inputs.begin(), inputs.end(),
            [](const FuzzInputFile& a, const FuzzInputFile& b) { return a.name < b.name; });
  return inputs;
}

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_FUZZ_REPLAY_H_
