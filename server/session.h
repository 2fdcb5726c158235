// Session: one client connection to one Device, served on the device's loop.
//
// Reads whole messages from the non-blocking socket, validates them with the
// codec, dispatches each command to the Device in arrival order and writes
// the reply (none for No_reply commands). VERSION must come first. It also
// issues server->client DMA_READ/DMA_WRITE (on the twin socket when the
// client negotiated one) for guest memory mapped without an fd, and matches
// their replies while client commands keep being served.
//
// Error policy (PROTOCOL.md §6.5): a well-framed but invalid command gets an
// error reply with the errno and the session continues; a framing error
// (bad msg_size, bad Type, a reply nobody waits for) gets a best-effort error
// reply and the connection is closed. Either way the process and every other
// device keep running.
//
// Backpressure: when the client does not read its replies, the session stops
// reading new commands until its output drains, so a slow client can stall
// only itself.
//
// Threading: everything runs on the loop thread; not thread-safe.
#ifndef VFIO_USER_SERVER_SESSION_H_
#define VFIO_USER_SERVER_SESSION_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/os.h"
#include "core/transport.h"
#include "core/version.h"
#include "server/device.h"
#include "server/dma_channel.h"
#include "server/event_loop.h"

namespace vfio_user {

struct SessionOptions {
  // Our receive limits, advertised in VERSION.
  uint32_t max_msg_fds = 16;
  uint64_t max_data_xfer_size = kDefaultMaxDataXferSize;
  bool offer_twin_socket = true;
  bool advertise_write_multiple = false;
  // How long a server->client DMA request waits for its reply.
  absl::Duration dma_timeout = absl::Seconds(5);
  // How many messages one wake-up may process before yielding to the other
  // devices on the loop.
  int max_messages_per_wakeup = 64;
  // The OS calls of the client's sockets; nullptr = the real ones. Tests
  // inject faults here (core/fault_injecting_os.h). Must outlive the session.
  Os* os = nullptr;
};

// Who is on the other end (SO_PEERCRED), for status reporting.
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

class Session {
 public:
  using CloseCallback = std::function<void(Session*, const absl::Status& why)>;

  // Takes the accepted socket. `on_close` runs on the loop thread once, after
  // the session has released the device's client resources; the owner then
  // destroys the session (not from inside on_close's caller stack: use
  // loop->Post).
  Session(Device* device, EventLoop* loop, UniqueFd socket,
          SessionOptions options, CloseCallback on_close);
  ~Session();

  // Registers with the loop. REQUIRES: loop thread.
  absl::Status Start();
  // Closes the connection (idempotent). REQUIRES: loop thread.
  void Close(const absl::Status& why);
  // If the client has hung up but its EOF has not been processed yet,
  // processes what it sent and closes now (so a reconnecting client is not
  // refused as a second client). Returns whether the session is still open.
  bool ReapIfPeerGone();

  // Called once, on the loop thread, when VERSION succeeded and the device
  // is attached. Set before Start().
  void set_on_attached(std::function<void(const PeerCredentials&)> fn) {
    on_attached_ = std::move(fn);
  }

  const PeerCredentials& peer() const { return peer_; }
  bool negotiated() const { return negotiated_; }
  bool closed() const { return closed_; }

  // Server->client guest-memory access by message (loop thread). Splits into
  // chunks of the client's max_data_xfer_size; `done` runs on the loop
  // thread exactly once (also when the session closes first).
  using DmaDone = std::function<void(absl::Status)>;
  void DmaReadByMessage(uint64_t iova, uint8_t* out, size_t len, DmaDone done);
  void DmaWriteByMessage(uint64_t iova, const uint8_t* in, size_t len, DmaDone done);

 private:
  struct Reply {
    std::vector<uint8_t> payload;
    int fd = -1;  // borrowed fd to attach (region fd)
    UniqueFd owned_fd;  // owned fd to attach (twin socket end)
  };
  struct PendingDma;

  void OnSocketEvent(Connection* conn, uint32_t events);
  void ReadMessages(Connection* conn);
  // `msg` is the session's reused receive buffer: handlers may move parts
  // out (fds) but must not keep references to it.
  void HandleMessage(Connection* conn, Message& msg);
  void HandleReply(Message& msg);
  void HandleCommand(Message& msg);
  absl::StatusOr<Reply> Dispatch(Message& msg);
  absl::StatusOr<Reply> HandleVersion(Message& msg);
  absl::StatusOr<Reply> HandleDmaMap(Message& msg);
  absl::StatusOr<Reply> HandleDmaUnmap(Message& msg);
  absl::StatusOr<Reply> HandleRegionInfo(Message& msg);
  absl::StatusOr<Reply> HandleRegionIoFds(Message& msg);
  absl::StatusOr<Reply> HandleSetIrqs(Message& msg);
  absl::Status HandleRegionRead(Message& msg);  // sends its own reply
  absl::Status HandleRegionWrite(Message& msg);  // sends its own reply
  absl::StatusOr<Reply> HandleWriteMulti(Message& msg);
  absl::StatusOr<Reply> HandleDeviceFeature(Message& msg);
  absl::StatusOr<Reply> HandleMigDataRead(Message& msg);
  absl::StatusOr<Reply> HandleMigDataWrite(Message& msg);
  void SendOrClose(Connection* conn, const Message& msg);
  // Sends the success reply to `request` on the main socket (header + up to
  // two payload pieces, no fds); closes the session if that fails. With
  // `reference_part2`, what the socket does not take of part2 is queued by
  // reference (Connection::SendPartsReferencing): part2 must be read_buf_,
  // which stays untouched while output is pending (no command is read then).
  void SendReplyOrClose(const Header& request, absl::Span<const uint8_t> part1,
                        absl::Span<const uint8_t> part2 = {},
                        bool reference_part2 = false);
  void UpdateInterest(Connection* conn);
  void StartDmaChunk(std::shared_ptr<PendingDma> op);
  // Takes the twin socket for the loop's requests (watching it); false if
  // a device thread is using it (the request is deferred until it is done).
  bool TakeTwinForLoop();
  // Gives the twin socket back once the loop has nothing in flight on it.
  void ReleaseTwinIfIdle();
  void ResumeDeferredDma();
  void FailPendingDma(const absl::Status& why);
  Connection* dma_connection();
  DecodeLimits limits() const;

  Device* device_;
  EventLoop* loop_;
  SessionOptions options_;
  CloseCallback on_close_;
  std::function<void(const PeerCredentials&)> on_attached_;
  std::unique_ptr<Connection> conn_;
  std::shared_ptr<Connection> twin_;  // server->client requests, if negotiated
  // With a twin socket: device threads do their DMA round trips on it
  // themselves (server/dma_channel.h); the loop takes it only while its own
  // requests (DmaReadByMessage) are in flight, and watches it only then.
  std::shared_ptr<DmaChannel> dma_channel_;
  bool twin_owned_ = false;  // the loop holds the twin socket (and watches it)
  std::vector<std::shared_ptr<PendingDma>> deferred_dma_;  // waiting for it
  PeerCredentials peer_;
  bool negotiated_ = false;
  bool closed_ = false;
  Capabilities peer_caps_;
  DmaLayout dma_layout_ = DmaLayout::kSpec;
  std::vector<uint8_t> read_buf_;  // reused REGION_READ buffer
  Message in_msg_;                 // reused receive buffer (ReadMessages)

  // Outstanding server->client DMA requests by msg_id.
  uint16_t next_dma_msg_id_ = 1;
  absl::flat_hash_map<uint16_t, std::shared_ptr<PendingDma>> pending_dma_;

  // Cleared by the destructor; guards callbacks posted to the loop.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  // Migration state machine (DEVICE_FEATURE / MIG_DATA_*).
  MigrationState mig_state_ = MigrationState::kRunning;
  std::vector<uint8_t> mig_buffer_;
  size_t mig_offset_ = 0;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_SESSION_H_
