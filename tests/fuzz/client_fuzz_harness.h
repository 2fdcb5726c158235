// The client fuzz target: the client library (//client) attached to a
// scripted hostile server (client_fuzz_input.h) that sends arbitrary
// replies, fds and server-initiated requests while the client runs the
// ExerciseClient() workload (client_exercise.h).
//
// The server side runs on its own thread over a real Unix socket; the
// client has its usual threads. Besides ASan/UBSan/LSan findings, a run
// aborts when a file descriptor is leaked (the process has more open fds
// after the client was closed). The client's request timeout is short
// (kFuzzRequestTimeout), so a silent server costs little.
// Built with libFuzzer by run_fuzzer.sh (client_fuzzer.cc) and with gcc,
// without libFuzzer, by client_fuzz_regression_test.cc.
#ifndef VFIO_USER_TESTS_FUZZ_CLIENT_FUZZ_HARNESS_H_
#define VFIO_USER_TESTS_FUZZ_CLIENT_FUZZ_HARNESS_H_

#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"

namespace vfio_user {
namespace fuzz {

inline constexpr absl::Duration kFuzzRequestTimeout = absl::Milliseconds(100);

struct ClientRunStats {
  bool connected = false;     // Client::Connect succeeded
  int requests_seen = 0;      // client requests the server read
};

// Runs one script. Aborts on a violated invariant.
ClientRunStats RunClientFuzzInput(const uint8_t* data, size_t size);

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_CLIENT_FUZZ_HARNESS_H_
