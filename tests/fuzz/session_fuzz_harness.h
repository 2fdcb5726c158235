// The session fuzz target: a whole device server (EventLoop, DeviceServer,
// Session, a sample device) in this process, played against by a hostile
// client script (session_fuzz_input.h) over real sockets, with real fds
// (memfd, eventfd, pipe) and arbitrary chunking.
//
// The server runs on the calling thread, one EventLoop::RunUntilIdle() at a
// time, so runs are deterministic (apart from the DMA test device's worker
// thread). Besides ASan/UBSan/LSan findings, a run aborts when:
//   - the server sends a message that is not well framed;
//   - the server loop never becomes idle (a busy loop);
//   - an fd is leaked: the process has more open fds after the run.
// Built with libFuzzer by run_fuzzer.sh (session_fuzzer.cc) and with gcc,
// without libFuzzer, by session_fuzz_regression_test.cc.
#ifndef VFIO_USER_TESTS_FUZZ_SESSION_FUZZ_HARNESS_H_
#define VFIO_USER_TESTS_FUZZ_SESSION_FUZZ_HARNESS_H_

#include <cstddef>
#include <cstdint>

namespace vfio_user {
namespace fuzz {

// Statistics of one run (for the regression test's sanity checks).
struct SessionRunStats {
  int messages_from_server = 0;
  int error_replies = 0;
  int server_requests = 0;  // DMA_READ/DMA_WRITE the server sent
  bool attached = false;    // a VERSION succeeded
};

// Runs one script. Aborts on a violated invariant (see above).
SessionRunStats RunSessionFuzzInput(const uint8_t* data, size_t size);

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_SESSION_FUZZ_HARNESS_H_
