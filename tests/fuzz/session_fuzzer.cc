// libFuzzer entry point of the session fuzz target (session_fuzz_harness.h):
// a whole in-process device server against a hostile client script
// (session_fuzz_input.h). Built by run_fuzzer.sh session.
#include <cstddef>
#include <cstdint>

#include "core/log.h"
#include "tests/fuzz/session_fuzz_harness.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vfio_user::SetLogLevel(vfio_user::LogLevel::kError);  // hostile input logs a lot
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vfio_user::fuzz::RunSessionFuzzInput(data, size);
  return 0;
}
