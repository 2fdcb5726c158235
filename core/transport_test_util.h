// Helpers shared by the transport, fault-injection and request-tracker tests:
// connected Connection pairs over real socketpairs, real memfds and eventfds,
// payload patterns and an fd-leak counter. Test-only.
#ifndef VFIO_USER_CORE_TRANSPORT_TEST_UTIL_H_
#define VFIO_USER_CORE_TRANSPORT_TEST_UTIL_H_

#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/errno_status.h"
#include "core/message.h"
#include "core/transport.h"
#include "core/unique_fd.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace test_util {

// Number of open fds of this process (entries of /proc/self/fd, minus the
// one opendir uses).
inline int CountOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (struct dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count - 1;
}

// Deterministic, position-dependent bytes (different seeds differ).
inline std::vector<uint8_t> Pattern(size_t size, uint32_t seed) {
  std::vector<uint8_t> bytes(size);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1103515245u + 12345u;
    bytes[i] = static_cast<uint8_t>(x >> 16);
  }
  return bytes;
}

// A memfd holding `content`.
inline UniqueFd MakeMemfd(const std::vector<uint8_t>& content) {
  UniqueFd fd(::memfd_create("transport_test", MFD_CLOEXEC));
  if (!fd.valid()) return fd;
  if (::ftruncate(fd.get(), static_cast<off_t>(content.size())) != 0 ||
      (!content.empty() &&
       ::pwrite(fd.get(), content.data(), content.size(), 0) !=
           static_cast<ssize_t>(content.size()))) {
    return UniqueFd();
  }
  return fd;
}

inline UniqueFd MakeEventfd() {
  return UniqueFd(::eventfd(0, EFD_CLOEXEC));
}

// Two Connections over the two ends of a real socketpair.
struct ConnectionPair {
  std::unique_ptr<Connection> a;
  std::unique_ptr<Connection> b;
};

inline ConnectionPair MakeConnectionPair(TransportOptions a_options = {},
                                         TransportOptions b_options = {},
                                         Os* a_os = nullptr,
                                         Os* b_os = nullptr) {
  ConnectionPair pair;
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> fds = MakeSocketPair();
  EXPECT_TRUE(fds.ok()) << fds.status();
  if (!fds.ok()) return pair;
  pair.a = std::make_unique<Connection>(std::move(fds->first), a_options, a_os);
  pair.b =
      std::make_unique<Connection>(std::move(fds->second), b_options, b_os);
  return pair;
}

// Receives one message; fails the test if there is none or on error.
inline Message ReceiveOne(Connection& conn) {
  absl::StatusOr<std::optional<Message>> got = conn.Receive();
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return Message();
  EXPECT_TRUE(got->has_value()) << "no whole message";
  if (!got->has_value()) return Message();
  return std::move(**got);
}

// Header of a command message with `payload_size` bytes of payload.
inline Header CommandHeader(uint16_t msg_id, Command cmd,
                            size_t payload_size = 0) {
  Header h;
  h.msg_id = msg_id;
  h.cmd = static_cast<uint16_t>(cmd);
  h.flags = kFlagsTypeCommand;
  h.msg_size = static_cast<uint32_t>(kHeaderSize + payload_size);
  return h;
}

// Raw 16 header bytes, for writing malformed streams with ::send().
inline std::vector<uint8_t> HeaderBytes(const Header& h) {
  std::vector<uint8_t> bytes(kHeaderSize);
  EncodeHeader(h, bytes.data());
  return bytes;
}

}  // namespace test_util
}  // namespace vfio_user

#endif  // VFIO_USER_CORE_TRANSPORT_TEST_UTIL_H_
