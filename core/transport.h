// Transport: whole vfio-user messages over an AF_UNIX SOCK_STREAM socket,
// with file descriptors as SCM_RIGHTS.
//
// Sending: one sendmsg() per message (header + payload gathered in an iovec,
// fds on that same call, so they travel with the header as peers expect);
// short writes and EINTR are retried; never more fds than the peer's
// max_msg_fds. A non-blocking Connection queues what the socket does not take
// (copied, or referenced with SendPartsReferencing) and reports it through
// HasPendingOutput()/FlushPending() (the owner waits for POLLOUT); a blocking
// one waits for room inside sendmsg() (SO_SNDTIMEO), then polls, up to
// send_timeout.
//
// Syscalls per message on the hot paths: a send is one sendmsg(), even for a
// message larger than the socket buffer in blocking mode; a blocking receive
// is one recvmsg() that waits for the data itself (SO_RCVTIMEO bounds the
// wait; poll() is used only after a timeout slice or a spurious EAGAIN); a
// non-blocking receiver that checks InputDrained() needs no recvmsg() that
// finds nothing. A receiver that reuses its Message (ReceiveInto) allocates
// nothing per message, large ones included.
//
// Receiving: whole messages, whatever their size: the reader buffers, loops
// until msg_size bytes arrived, receives fds with MSG_CMSG_CLOEXEC, and marks
// Message::fds_truncated when the peer sent more fds than max_fds_in (the
// kernel drops the excess; the transport closes the rest). Small messages
// are read ahead through a reusable 68 KiB buffer, allocated at the first
// read and never zero-filled (a burst costs one recvmsg; an idle connection
// keeps no resident pages); larger ones are received straight into their
// payload. Fds are
// given to the message holding the last byte of the recvmsg that brought
// them: Linux ends a stream read right after the skb carrying fds, and peers
// attach fds to the sendmsg that starts a message (as this class does).
// EOF between messages is a clean close (kUnavailable / ECONNRESET with
// message "peer closed", see IsPeerClosed); EOF inside a message is an error
// (EPIPE). A framing error (msg_size < 16, msg_size > max_msg_size, bad Type
// bits) poisons the receive side: the stream cannot be resynchronised, so the
// owner sends a best-effort error reply using last_bad_header() and closes.
//
// Thread-safety: a Connection may be used by one sending thread and one
// receiving thread at the same time; two concurrent senders (or receivers)
// must synchronize externally.
#ifndef VFIO_USER_CORE_TRANSPORT_H_
#define VFIO_USER_CORE_TRANSPORT_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
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

// An expected message whose payload bulk the receiver wants in its own
// buffer (Connection::ReceiveInto): a reply (Type=reply, no error) with
// this msg_id and cmd whose payload is exactly `keep` + into.size() bytes.
struct ReceivePlacement {
  uint16_t msg_id = 0;
  uint16_t cmd = 0;
  size_t keep = 0;           // leading payload bytes left in Message::payload
  absl::Span<uint8_t> into;  // where the rest goes; must not be empty
};

class Connection {
 public:
  // Read-ahead buffer size: a recvmsg asks for this much, so a burst of small
  // messages costs one syscall. It holds a 64 KiB data transfer with its
  // headers (REGION_*/DMA_* at that size take one recvmsg); bigger messages
  // go past it, straight into their payload.
  static constexpr size_t kReadAheadBytes = 64 * 1024 + 4096;
  // A placement (ReceiveInto) at least this large makes a receive with
  // nothing buffered read only the header and the bytes to keep first: if
  // the reply is the expected one, all of its data then goes straight into
  // the caller's buffer instead of through the read-ahead buffer. One more
  // recvmsg() saves a copy of kReadAheadBytes. (Smaller replies fit the
  // read-ahead buffer: one recvmsg() and one copy measured faster than two
  // recvmsg() calls, which on one CPU can also cost an extra switch to the
  // sender while it is still queueing the reply.)
  static constexpr size_t kPlacementPeekBytes = kReadAheadBytes;

  // Takes ownership of a connected AF_UNIX SOCK_STREAM socket. Non-blocking
  // mode never waits in a syscall (every call passes MSG_DONTWAIT) and
  // leaves the fd's flags alone; blocking mode clears O_NONBLOCK, so that a
  // receive or send can wait inside recvmsg()/sendmsg() (bounded by
  // SO_RCVTIMEO/SO_SNDTIMEO, so never past its deadline). `os` must outlive
  // the Connection; nullptr = default.
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
  // HasPendingOutput); the fds are then duplicated and kept until sent.
  // Once a failure leaves part of a message sent (timeout, peer gone), the
  // stream is broken and every later Send/FlushPending fails the same way.
  absl::Status Send(const Message& msg);
  // Gather form: header + up to two payload pieces without concatenating
  // (e.g. a 16-byte access header and the data), and borrowed fds.
  absl::Status SendParts(const Header& header, absl::Span<const uint8_t> part1,
                         absl::Span<const uint8_t> part2 = {},
                         absl::Span<const int> fds = {});
  // SendParts() without fds for a large `part2` (e.g. the data of a big
  // reply) in non-blocking mode: what the socket does not take of `part2`
  // is queued by reference instead of copied. REQUIRES: part2's bytes stay
  // valid and unchanged until HasPendingOutput() is false (or the
  // connection is destroyed); a later send converts the reference into a
  // copy first, so only the caller's own writes to those bytes matter.
  absl::Status SendPartsReferencing(const Header& header,
                                    absl::Span<const uint8_t> part1,
                                    absl::Span<const uint8_t> part2);
  // SendParts() without fds that, in non-blocking mode too, waits (up to
  // `deadline`) until the whole message is in the socket instead of queueing
  // what does not fit: for a helper thread that owns the socket for a moment
  // (server/dma_channel.h). REQUIRES: nothing is queued (HasPendingOutput()
  // is false). ETIMEDOUT when the peer does not read in time (the stream is
  // then broken if part of the message went out).
  absl::Status SendPartsWaiting(const Header& header,
                                absl::Span<const uint8_t> part1,
                                absl::Span<const uint8_t> part2,
                                absl::Time deadline);

  // Sends bytes that are already whole, framed messages (headers encoded by
  // the caller, no fds) as one stream write: a batch of requests in one
  // sendmsg(). Same modes and errors as SendParts().
  absl::Status SendFramed(absl::Span<const uint8_t> messages);

  // Blocking mode: waits (up to receive_timeout) for one whole message.
  // Non-blocking mode: returns std::nullopt if no whole message is buffered
  // yet and the socket has no more bytes (EAGAIN).
  // Errors: IsPeerClosed() for EOF between messages; EPIPE for EOF inside a
  // message; the DecodeHeader error for a framing error. These are final:
  // every later Receive() returns the same status (Send still works, for the
  // best-effort error reply). A timeout (ETIMEDOUT) is not final.
  absl::StatusOr<std::optional<Message>> Receive();

  // Receive() into *msg, reusing the capacity of its payload and fds
  // vectors (no allocation per message once they are large enough): the
  // hot path of a receiver that handles one message at a time. Returns true
  // when a message was stored, false where Receive() returns std::nullopt
  // (*msg is then unspecified). In blocking mode `deadline`, if given,
  // replaces now + receive_timeout. In non-blocking mode a `deadline` makes
  // this one call wait for a whole message up to it (a helper thread
  // reading a reply synchronously): one recvmsg() if the fd itself is
  // blocking, poll() + recvmsg() otherwise. Same errors as Receive().
  //
  // `placement`, if given, names a message the caller expects (a reply it
  // is waiting for, of a known size) and a buffer of its own for the bulk
  // of its payload: when the next message is that one, its payload bytes
  // after the first `keep` are written straight into `into` -- received
  // there by recvmsg() when they are not read ahead yet -- instead of
  // msg->payload, and msg->payload_placed is set (msg->payload then holds
  // the first `keep` bytes only). Any other message is received as usual.
  // `into` is only used during this call: if it returns without the placed
  // message complete, what was placed is copied back into the connection,
  // and the message completes later as an ordinary one. The contents of
  // `into` are unspecified unless this call returned that message.
  absl::StatusOr<bool> ReceiveInto(
      Message* msg, std::optional<absl::Time> deadline = std::nullopt,
      const ReceivePlacement* placement = nullptr);

  // Non-blocking mode: true when the last recvmsg() returned less than it
  // asked for (the socket was empty then) and no whole message is buffered.
  // A caller driven by level-triggered readiness (epoll) may then go back to
  // waiting instead of calling Receive() again, which would cost a recvmsg()
  // that finds nothing. False whenever a Receive() could still return
  // something without new readiness (or report an error).
  bool InputDrained() const;

  // True if a whole message (or the framing error of the next header) is
  // already buffered: Receive() returns it without a syscall.
  bool HasBufferedMessage() const;

  // Non-blocking output queue.
  bool HasPendingOutput() const;
  // Coalescing (non-blocking mode only): while on, an fd-less message of at
  // most kMaxCoalescedMessage bytes is queued instead of sent, so that
  // FlushPending() sends a burst of them in one sendmsg(). For a server
  // answering requests that arrived together; the owner flushes when the
  // burst is over. Larger messages and messages with fds are sent (or
  // queued behind the others) as usual.
  void set_coalescing(bool on) { coalescing_ = on; }
  static constexpr size_t kMaxCoalescedMessage = 4096;
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
  // File descriptors tied to a position in the stream.
  //  - Received: `offset` is the last byte of the recvmsg that brought them.
  //    Linux stops a stream read right after the skb that carries fds, and
  //    a peer attaches fds to the sendmsg that starts its message, so they
  //    belong to the message that contains that byte. (A read may start
  //    with earlier fd-less messages: the first byte would be wrong.)
  //  - Queued for sending: `offset` is the message's first byte; the
  //    sendmsg that carries them starts there and stops at `message_end`,
  //    so the receiver can apply the rule above.
  struct FdBatch {
    uint64_t offset = 0;
    uint64_t message_end = 0;  // sending only
    std::vector<UniqueFd> fds;
    bool truncated = false;  // receiving: the kernel dropped some (MSG_CTRUNC)
  };
  // The unsent rest of one message: up to three byte ranges.
  class OutputCursor;

  // ---- Receiving (receiving thread only) ----
  absl::StatusOr<bool> ReceiveIntoImpl(Message* msg,
                                       std::optional<absl::Time> deadline,
                                       const ReceivePlacement* placement);
  // Moves one whole buffered message into *msg, if there is one (true);
  // places the expected message's payload (see ReceiveInto).
  // Fails (framing error) when the next header is invalid.
  absl::StatusOr<bool> TakeBufferedMessage(Message* msg,
                                           const ReceivePlacement* placement);
  // Where the rest of in_large_ goes: in_place_ while placing, else its own
  // payload; and the stream offset of the destination's first byte.
  absl::Span<uint8_t> LargeDestination();
  uint64_t LargeDestinationOffset() const;
  // Ends placing before the caller's buffer goes away: the placed bytes are
  // copied into in_large_'s own payload, which receives the rest.
  void DetachPlacement();
  // Blocking mode: makes SO_RCVTIMEO a slice of the time left before
  // `deadline` (at most kReceiveSlice, so it rarely changes), so that a
  // blocking recvmsg() both waits and reads (one syscall) yet never waits
  // past the deadline by more than a slice. ETIMEDOUT if the deadline passed.
  absl::Status PrepareBlockingReceive(absl::Time deadline);
  // The same for `option` (SO_RCVTIMEO or SO_SNDTIMEO), whose value we set
  // last is *current.
  absl::Status PrepareBlockingWait(int option, absl::Time deadline,
                                   absl::Duration* current);
  // Where the next recvmsg writes, and the stream offset of that spot.
  absl::Span<uint8_t> NextReadWindow(uint64_t* stream_offset);
  // One recvmsg into `window` (EINTR retried), waiting for data unless
  // `dont_wait`; fds that came with it are queued at `stream_offset`.
  // Returns the syscall result (errno on -1).
  ssize_t ReceiveOnce(absl::Span<uint8_t> window, uint64_t stream_offset,
                      bool dont_wait);
  // Moves the fds received for stream bytes [begin, end) into `msg`.
  void AttachReceivedFds(uint64_t end, Message* msg);
  // Drops `n` consumed bytes from the front of the read-ahead buffer.
  void ConsumeInput(size_t n);
  // True if bytes of an incomplete message are buffered.
  bool HasPartialInput() const;

  // ---- Sending (sending thread only) ----
  // Sends what `out` has left; blocking mode waits up to `deadline` (or
  // send_timeout from the first wait, when not given).
  // `reference_last`: as for Enqueue. `wait`: wait for room (up to the
  // deadline) instead of queueing, even in non-blocking mode.
  absl::Status SendNow(OutputCursor& out, absl::Span<const int> fds,
                       std::optional<absl::Time> deadline = std::nullopt,
                       bool reference_last = false, bool wait = false);
  // One sendmsg (EINTR retried) of `iov`, with `fds` as SCM_RIGHTS; waits
  // for room inside the call only if `wait` (see PrepareBlockingWait).
  ssize_t SendOnce(const struct iovec* iov, size_t iov_count,
                   absl::Span<const int> fds, bool wait);
  // SendParts(), SendPartsReferencing() and SendPartsWaiting() (which
  // passes a `wait_until`: wait as in blocking mode, whatever the mode).
  absl::Status SendPartsImpl(const Header& header,
                             absl::Span<const uint8_t> part1,
                             absl::Span<const uint8_t> part2,
                             absl::Span<const int> fds, bool reference_part2,
                             std::optional<absl::Time> wait_until);
  // Copies what `out` has left (and dups `fds`) onto the output queue; with
  // `reference_last`, the unsent rest of the last piece is queued by
  // reference (out_borrowed_).
  absl::Status Enqueue(const OutputCursor& out, absl::Span<const int> fds,
                       bool reference_last = false);
  // Moves a referenced tail into out_buf_ (before more output is queued).
  void CopyBorrowedOutput();
  void CompactOutput();
  // Records `status` as the permanent send error when `broken` (part of a
  // message went out, so the stream cannot carry another one).
  absl::Status FailSend(absl::Status status, bool broken);

  // Waits with Os::Poll until the socket reports `events` or `deadline`
  // passes (ETIMEDOUT). `what` names the operation for the error.
  absl::Status WaitForSocket(short events, absl::Time deadline,
                             const char* what);

  UniqueFd socket_;
  TransportOptions options_;
  Os* os_;

  // Receive state. Small messages are assembled in a reusable read-ahead
  // buffer (one recvmsg usually brings several); a message larger than the
  // buffer is received straight into its own payload (no second copy).
  std::unique_ptr<uint8_t[]> in_buf_;  // allocated at the first read
  size_t in_buf_size_ = 0;
  size_t in_start_ = 0;  // first unconsumed byte in in_buf_
  size_t in_end_ = 0;    // one past the last received byte
  uint64_t in_buf_offset_ = 0;    // stream offset of in_buf_[0]
  std::vector<FdBatch> in_fds_;   // received fds not yet handed out
  std::optional<Message> in_large_;  // large message being received
  size_t in_large_filled_ = 0;       // payload bytes of in_large_ received
  uint64_t in_large_offset_ = 0;     // stream offset of its header
  // Non-empty while placing (ReceiveInto's `placement`): in_large_ then
  // holds the header and the first `keep` payload bytes, the rest of the
  // payload goes here (in_large_filled_ counts the bytes placed).
  absl::Span<uint8_t> in_place_;
  std::vector<uint64_t> in_control_;  // recvmsg control buffer (aligned)
  absl::Status receive_error_;        // sticky: framing error, EOF, reset
  bool last_read_short_ = false;      // the last recvmsg did not fill its window
  bool coalescing_ = false;           // see set_coalescing()
  absl::Duration receive_slice_ = absl::ZeroDuration();  // SO_RCVTIMEO set
  absl::Duration send_slice_ = absl::ZeroDuration();     // SO_SNDTIMEO set
  std::optional<Header> last_bad_header_;

  // Send state: the non-blocking output queue and a sticky error.
  std::vector<uint8_t> out_buf_;
  size_t out_start_ = 0;          // first unsent byte in out_buf_
  uint64_t out_buf_offset_ = 0;   // stream offset of out_buf_[0]
  std::vector<FdBatch> out_fds_;  // dup'ed fds to send at queued offsets
  // Queued by reference (SendPartsReferencing): sent after out_buf_.
  absl::Span<const uint8_t> out_borrowed_;
  absl::Status send_error_;
};

// True if `status` is the clean close Receive() reports when the peer closed
// (or reset) the connection between two messages. False for OK, for EOF in
// the middle of a message and for every other error.
bool IsPeerClosed(const absl::Status& status);

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
