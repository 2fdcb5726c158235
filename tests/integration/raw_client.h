// RawClient: a minimal vfio-user client made of core/ pieces only, for the
// server's multi-process tests. It sends exactly the bytes a test asks for
// (so tests can also send malformed messages) and serves the server's
// DMA_READ/DMA_WRITE requests from a test-owned buffer while it waits for a
// reply. Not the client library (//client); deliberately dumb.
#ifndef VFIO_USER_TESTS_INTEGRATION_RAW_CLIENT_H_
#define VFIO_USER_TESTS_INTEGRATION_RAW_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/transport.h"
#include "core/version.h"

namespace vfio_user::testing {

// Guest memory the client can serve DMA_READ/WRITE from (fd-less maps).
struct MessageDmaWindow {
  uint64_t iova = 0;
  std::vector<uint8_t>* memory = nullptr;  // not owned
};

class RawClient {
 public:
  // Connects (retrying for up to `wait` while the server starts up).
  static absl::StatusOr<std::unique_ptr<RawClient>> Connect(
      const std::string& path, absl::Duration wait = absl::Seconds(10));

  // VERSION with the given JSON (QEMU's by default); returns the server's
  // capabilities and keeps the twin socket if one came back.
  absl::StatusOr<VersionPayload> Negotiate(
      const std::string& json = R"({"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576}})",
      uint16_t minor = 0);

  // Sends a command and waits for its reply, serving DMA requests meanwhile.
  // An error reply is returned as a Message with the Error bit set (not as a
  // failed status); a failed status means the connection broke.
  absl::StatusOr<Message> Call(Command cmd, const Bytes& payload,
                               std::vector<int> fds = {}, bool no_reply = false);
  // Sends raw bytes as they are (for malformed-input tests), optionally with
  // fds on the same sendmsg — any number, ignoring the negotiated limit.
  absl::Status SendRaw(const Bytes& bytes);
  absl::Status SendRawWithFds(const Bytes& bytes, const std::vector<int>& fds);
  // Waits for the next message (reply) or connection failure.
  absl::StatusOr<Message> Receive();

  // Convenience wrappers (fail on error replies).
  absl::StatusOr<Bytes> RegionRead(uint32_t region, uint64_t offset, uint32_t count);
  absl::Status RegionWrite(uint32_t region, uint64_t offset, const Bytes& data);
  absl::StatusOr<uint32_t> ConfigRead32(uint64_t offset);
  absl::Status ConfigWrite32(uint64_t offset, uint32_t value);

  void set_dma_window(MessageDmaWindow w) { dma_window_ = w; }
  uint64_t dma_requests_served() const { return dma_requests_served_; }
  Connection& connection() { return *conn_; }
  UniqueFd TakeLastReplyFd();
  int last_reply_fd_count() const { return last_reply_fd_count_; }
  bool has_twin() const { return twin_ != nullptr; }

 private:
  explicit RawClient(UniqueFd fd);
  absl::Status ServeDmaRequest(Connection& conn, Message& req);
  absl::StatusOr<Message> WaitReply(uint16_t msg_id);

  std::unique_ptr<Connection> conn_;
  std::unique_ptr<Connection> twin_;
  uint16_t next_id_ = 1;
  MessageDmaWindow dma_window_;
  uint64_t dma_requests_served_ = 0;
  // Proposing 0.0 makes us look like QEMU, whose DMA_READ/WRITE use the 2020
  // draft layout (PROTOCOL.md §3.10); we then answer in that layout too.
  DmaLayout dma_layout_ = DmaLayout::kSpec;
  std::vector<UniqueFd> last_reply_fds_;
  int last_reply_fd_count_ = 0;
};

// Number of open fds of process `pid` (/proc/<pid>/fd).
int CountOpenFds(int pid);

// The number field `key` of /proc/<pid>/status starts with (VmRSS: kB,
// Threads: a count), or -1 if there is no such field or process.
long ProcStatusField(int pid, const std::string& key);

}  // namespace vfio_user::testing

#endif  // VFIO_USER_TESTS_INTEGRATION_RAW_CLIENT_H_
