// Helpers shared by the client tests: options pointing at a FakeServer,
// byte patterns, errno assertions. Test-only.
#ifndef VFIO_USER_CLIENT_CLIENT_TEST_UTIL_H_
#define VFIO_USER_CLIENT_CLIENT_TEST_UTIL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/fake_server.h"
#include "core/errno_status.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace testing {

// Client options for `server`: 5 s requests, reconnect deadline 3 s with
// fast backoff (tests stay well under their timeouts).
inline ClientOptions OptionsFor(const FakeServer& server) {
  ClientOptions options;
  options.socket_path = server.path();
  options.request_timeout = absl::Seconds(5);
  options.reconnect.deadline = absl::Seconds(3);
  options.reconnect.initial_backoff = absl::Milliseconds(2);
  options.reconnect.max_backoff = absl::Milliseconds(50);
  return options;
}

// Deterministic, position-dependent bytes.
inline std::vector<uint8_t> PatternBytes(size_t size, uint32_t seed) {
  std::vector<uint8_t> bytes(size);
  uint32_t x = seed * 2654435761u + 7;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1103515245u + 12345u;
    bytes[i] = static_cast<uint8_t>(x >> 16);
  }
  return bytes;
}

}  // namespace testing
}  // namespace vfio_user

#define EXPECT_ERRNO(expr, err)                                          \
  do {                                                                   \
    const absl::Status _s = (expr);                                      \
    EXPECT_EQ(::vfio_user::ErrnoOf(_s), (err)) << #expr << ": " << _s;   \
  } while (0)

#define ASSERT_OK(expr)                       \
  do {                                        \
    const absl::Status _s = (expr);           \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

#define EXPECT_OK(expr)                       \
  do {                                        \
    const absl::Status _s = (expr);           \
    EXPECT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

#endif  // VFIO_USER_CLIENT_CLIENT_TEST_UTIL_H_
