// libFuzzer entry point of the client fuzz target (client_fuzz_harness.h):
// the client library against a scripted hostile server
// (client_fuzz_input.h). Built by run_fuzzer.sh client.
#include <cstddef>
#include <cstdint>

#include "core/log.h"
#include "tests/fuzz/client_fuzz_harness.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vfio_user::SetLogLevel(vfio_user::LogLevel::kError);  // hostile input logs a lot
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vfio_user::fuzz::RunClientFuzzInput(data, size);
  return 0;
}
