// libFuzzer entry point of the control-plane fuzz target
// (controlplane_fuzz_harness.h): vfio-userd's request handlers fed
// arbitrary serialized requests. Built by run_fuzzer.sh controlplane.
#include <cstddef>
#include <cstdint>

#include "core/log.h"
#include "tests/fuzz/controlplane_fuzz_harness.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vfio_user::SetLogLevel(vfio_user::LogLevel::kError);  // hostile input logs a lot
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vfio_user::fuzz::RunControlplaneFuzzInput(data, size);
  return 0;
}
