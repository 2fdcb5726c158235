// Transport: whole vfio-user messages over an AF_UNIX SOCK_STREAM socket,
// with file descriptors as SCM_RIGHTS.
//
// Sending: one sendmsg() per message (header + payload gathered in an iovec,
// fds on that same call, so they travel with the header as peers expect);
// short writes and EINTR are retried; never more fds than the peer's
// max_msg_fds. A non-blocking Connection queues what the socket does not take
// and reports it through HasPendingOutput()/FlushPending() (the owner waits
// for POLLOUT); a blocking one polls for writability up to send_timeout.
//
// Receiving: whole messages, whatever their size: the reader buffers, loops
// until msg_size bytes arrived, receives fds with MSG_CMSG_CLOEXEC, and marks
// Message::fds_truncated when the peer sent more fds than max_fds_in (the
// kernel drops the excess). EOF between messages is a clean close
// (kUnavailable / ECONNRESET with message "peer closed"); EOF inside a message
// is an error (EPIPE/ECONNRESET). A framing error (msg_size < 16, msg_size >
// max_msg_size, bad Type bits) poisons the connection: the stream cannot be
// resynchronised, so the owner sends a best-effort error reply using
// last_bad_header() and closes.
//
// Thread-safety: a Connection may be used by one sending thread and one
// receiving thread at the same time; two concurrent senders (or receivers)
// must synchronize externally.
#ifndef VFIO_USER_CORE_TRANSPORT_H_
#define VFIO_USER_CORE_TRANSPORT_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/message.h"
#include "core/os.h"
#include "core/unique_fd.h"

namespace vfio_user {

struct TransportOptions {
  // Largest message accepted from the peer, header included. Default: our
  // max_data_xfer_size (1 MiB) + room for the largest fixed header.
  uint32_t max_msg_size = (1u << 20) + 64;
  // Most fds accepted in one received message (our max_msg_fds).
  uint32_t max_fds_in = 16;
  // Most fds we may attach to one sent message (the peer's max_msg_fds).
  uint32_t max_fds_out = 16;
  // Blocking mode only: how long Send/Receive wait for the socket.
  // InfiniteDuration() waits forever.
  absl::Duration send_timeout = absl::Seconds(5);
  absl::Duration receive_timeout = absl::InfiniteDuration();
  // Socket mode. Non-blocking connections never wait: Receive returns
  // std::nullopt when no whole message is available, Send queues.
  bool nonblocking = false;
};

class Connection {
 public:
  // Takes ownership of a connected AF_UNIX SOCK_STREAM socket. Sets
  // O_NONBLOCK on it (all waiting is done with poll, so timeouts work in
  // blocking mode too). `os` must outlive the Connection; nullptr = default.
  explicit Connection(UniqueFd socket, TransportOptions options = {},
                      Os* os = nullptr);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd() const { return socket_.get(); }
  const TransportOptions& options() const { return options_; }
  // Limits change after VERSION negotiation.
  void set_max_fds_out(uint32_t n) { options_.max_fds_out = n; }
  void set_max_fds_in(uint32_t n) { options_.max_fds_in = n; }
  void set_max_msg_size(uint32_t n) { options_.max_msg_size = n; }

  // Sends `msg` (header.msg_size is recomputed from the payload). Fails with
  // EINVAL when msg.fds exceeds max_fds_out, EPIPE/ECONNRESET when the peer
  // is gone, ETIMEDOUT (blocking mode) when the peer does not read in time.
  // In non-blocking mode an OK return may leave bytes queued (see
  // HasPendingOutput); the fds are then kept open until sent.
  absl::Status Send(const Message& msg);
  // Gather form: header + up to two payload pieces without concatenating
  // (e.g. a 16-byte access header and the data), and borrowed fds.
  absl::Status SendParts(const Header& header, absl::Span<const uint8_t> part1,
                         absl::Span<const uint8_t> part2 = {},
                         absl::Span<const int> fds = {});

  // Blocking mode: waits (up to receive_timeout) for one whole message.
  // Non-blocking mode: returns std::nullopt if no whole message is buffered
  // yet and the socket has no more bytes (EAGAIN).
  absl::StatusOr<std::optional<Message>> Receive();

  // Non-blocking output queue.
  bool HasPendingOutput() const;
  // Writes as much of the queue as the socket takes now. OK with pending
  // output remaining is normal; errors mean the peer is gone.
  absl::Status FlushPending();

  // Bytes already buffered (a whole message may be ready without a read).
  bool HasBufferedInput() const;

  // The header of the message that caused the last framing error, if at
  // least 16 bytes of it were read.
  std::optional<Header> last_bad_header() const { return last_bad_header_; }

  // Shuts the socket down in both directions (wakes a blocked receiver).
  void Shutdown();

 private:
  // Implementation details are private to transport.cc.
  struct PendingSend;
  UniqueFd socket_;
  TransportOptions options_;
  Os* os_;
  std::vector<uint8_t> in_buf_;
  size_t in_start_ = 0;  // first unconsumed byte in in_buf_
  size_t in_end_ = 0;    // one past the last received byte
  std::vector<UniqueFd> in_fds_;  // fds received for the message at in_start_
  bool in_fds_truncated_ = false;
  std::deque<PendingSend>* out_queue_ = nullptr;
  std::optional<Header> last_bad_header_;
};

// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC) as two owned fds.
absl::StatusOr<std::pair<UniqueFd, UniqueFd>> MakeSocketPair();

// Connects to a vfio-user server socket at `path` (<= 107 bytes).
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path);

// Creates a listening socket at `path`. If a stale socket file is there
// (connect() is refused), it is removed first; any other existing file is
// an error (EEXIST): we never clobber what is not ours.
absl::StatusOr<UniqueFd> ListenUnix(const std::string& path, int backlog = 64);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_TRANSPORT_H_
