// Client: the VMM side of vfio-user, as a reusable, thread-safe library --
// what QEMU's vfio-user-pci does, plus surviving a device-server restart.
//
// Attach (Connect): connect to the server's socket, VERSION (offer our
// limits, honor the server's: max_msg_fds, max_data_xfer_size,
// max_dma_maps, pgsizes, twin_socket), DEVICE_GET_INFO, GET_REGION_INFO for
// every region (argsz retry, capability chain, the region fd kept for mmap)
// and GET_IRQ_INFO for every IRQ index. Everything the server says is
// validated (bounded counts, sizes, fds, echoed fields): a hostile or buggy
// server gets errors, never a crash or a hang.
//
// Threads: one receiver thread per socket (main, and the twin socket when
// the server accepted it) reads every message. Replies go to the request
// they answer (core/request_tracker.h: matched by msg_id and cmd; a late
// reply to a request that timed out is dropped, never taken for another
// request's answer). Server->client requests are served on that thread:
// DMA_READ/DMA_WRITE against the registered guest memory (client/dma_space.h,
// bounds-checked: EFAULT / EPERM / E2BIG error replies), any other command
// gets ENOSYS, any request carrying fds EINVAL. A manager thread owns
// reconnection; a notifier thread runs the state callback.
//
// Every public method is thread-safe; any number of threads may issue
// requests at once (they are pipelined on the socket and matched by msg_id).
// Each request has a deadline: now + ClientOptions::request_timeout at the
// call, covering any wait for a reconnect and any retry; a request that
// misses it fails with ETIMEDOUT.
//
// ---- Reconnect ----
// When the connection is lost (EOF, ECONNRESET, kill -9 of the server, a
// framing error, a failed send) the state becomes kReconnecting and the
// manager thread:
//   1. connects again (exponential backoff from initial_backoff to
//      max_backoff) until ReconnectPolicy::deadline after the loss;
//   2. VERSION, DEVICE_GET_INFO: the device must be the same one (flags,
//      region and IRQ counts), else the attempt fails;
//   3. DEVICE_RESET, when reset_device (default; PROTOCOL.md §6.6: after a
//      server loss the client should reset the device) and the device
//      supports it. Done before the replay, so the state the VMM set up
//      (below) is what the device has afterwards: our server, the kernel
//      and libvfio-user unmask every vector on reset.
//   4. replays the journal: every DMA map (with a dup of its fd, kept since
//      the DmaMap call), every SET_IRQS trigger eventfd wiring (chunked) and
//      every MASK;
//   5. GET_REGION_INFO / GET_IRQ_INFO again; sizes, flags and sparse areas
//      must be unchanged; live RegionMappings are mapped again at the same
//      addresses through the new region fds (client/region_mapping.h);
//   6. state kConnected; waiting requests proceed.
// Any failure in 1-5 ends the attempt; attempts continue (all errors are
// retried: a restarting server is briefly in any state) until the deadline,
// then the state becomes kFailed for good.
//
// In-flight request policy (explicit, also in README.md):
//   - A request waiting for its reply when the connection drops fails with
//     ECONNRESET, unless it is an idempotent read (REGION_READ,
//     DEVICE_GET_INFO, GET_REGION_INFO, GET_IRQ_INFO) and
//     ReconnectPolicy::retry_idempotent is on: it is then sent again once
//     reconnected (within its own deadline).
//   - Teardown requests complete by the loss: DmaUnmap / DmaUnmapAll /
//     DisableIrqs interrupted by it return OK (the lost server dropped the
//     state, and it is removed from the journal so it is not replayed).
//   - A request issued while reconnecting waits for the reconnect (up to
//     its deadline) instead of failing at once.
//   - Posted writes (no reply) sent before the loss may be lost silently.
//   - When reconnection gives up (deadline) every waiting request fails
//     with ETIMEDOUT; later requests fail at once with ENOTCONN. With
//     reconnect disabled the state goes straight to kFailed: in-flight
//     requests fail with ECONNRESET, later ones with ENOTCONN.
//   - After Close(): ECANCELED.
#ifndef VFIO_USER_CLIENT_CLIENT_H_
#define VFIO_USER_CLIENT_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/dma_space.h"
#include "client/irq_journal.h"
#include "client/region_mapping.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/unique_fd.h"
#include "core/version.h"

namespace vfio_user {

class SocketWatch;

enum class ClientState {
  kConnected,     // attached; requests flow
  kReconnecting,  // connection lost; trying again until the deadline
  kFailed,        // gave up (deadline, or reconnect disabled); final
  kClosed,        // Close() was called; final
};
const char* ClientStateName(ClientState state);

struct ClientStateInfo {
  ClientState state = ClientState::kConnected;
  // kReconnecting: attempts started since the loss (0 before the first).
  uint32_t attempt = 0;
  // kReconnecting: when reconnection gives up.
  absl::Time reconnect_deadline = absl::InfiniteFuture();
  // Why the connection was lost, or why the last attempt failed.
  absl::Status last_error;
  // Successful reconnects since Connect().
  uint64_t reconnects = 0;

  // Time left before the deadline (zero when not reconnecting or past it).
  absl::Duration time_left(absl::Time now = absl::Now()) const;
};

struct ReconnectPolicy {
  bool enabled = true;
  // How long after a loss reconnection keeps trying.
  absl::Duration deadline = absl::Seconds(30);
  absl::Duration initial_backoff = absl::Milliseconds(10);
  absl::Duration max_backoff = absl::Seconds(1);
  // DEVICE_RESET after re-attaching (if the device reports FLAGS_RESET).
  bool reset_device = true;
  // Re-send idempotent reads that were in flight when the connection
  // dropped (see the policy in the header comment).
  bool retry_idempotent = true;
};

struct ClientOptions {
  std::string socket_path;

  // ---- What we offer in VERSION (our receive limits) ----
  // Most fds we accept in one message from the server (it sends at most 1:
  // the twin socket or a region fd).
  uint32_t max_msg_fds = 8;
  // Largest count we accept in the server's DMA_READ/DMA_WRITE.
  uint64_t max_data_xfer_size = kDefaultMaxDataXferSize;
  // Ask for a twin socket (DMA requests travel apart from our requests).
  bool offer_twin_socket = true;

  // Largest REGION_READ/WRITE count we send; accesses are split into chunks
  // of min(this, the server's max_data_xfer_size). 0 = 1 MiB. Lower it for
  // libvfio-user servers (PROTOCOL.md §11: they break on bodies larger than
  // one recv, e.g. use 32 KiB).
  uint64_t transfer_chunk_size = 0;

  // Per-request deadline (QEMU's x-msg-timeout default).
  absl::Duration request_timeout = absl::Seconds(5);
  // Connect(): keep retrying while the socket is absent or refuses
  // (ENOENT / ECONNREFUSED) for this long. 0 = one attempt.
  absl::Duration connect_timeout = absl::ZeroDuration();

  ReconnectPolicy reconnect;

  // Write(..., kPosted) sends without waiting for a reply only if this is
  // set and no region of the device is mappable (QEMU's rule: posted
  // message writes could overtake mmap'ed accesses). Otherwise it waits.
  bool allow_posted_writes = true;

  // Bounds on what the server may claim (QEMU's values).
  uint32_t max_regions = 100;
  uint32_t max_irqs = 50;
  uint32_t max_irq_vectors = 2048;  // per index (MSI-X maximum)
  uint32_t max_region_info_size = 64 * 1024;  // GET_REGION_INFO argsz

  // Called on every state change (and on every reconnect attempt), in
  // order, on the client's notifier thread. It may call any const method
  // and issue requests; it must not call Close() or destroy the client.
  std::function<void(const ClientStateInfo&)> on_state_change;
};

// What the server told us at attach time.
struct RegionDescription {
  RegionInfo info;          // decoded reply, capabilities included
  bool has_fd = false;      // the reply carried an fd (mmap possible)
};
struct DeviceDescription {
  DeviceInfo info;
  std::vector<RegionDescription> regions;  // index i at [i]
  std::vector<IrqInfo> irqs;               // index i at [i]
  Capabilities server;                     // the server's limits
  uint16_t minor = 0;                      // agreed protocol minor
  bool twin_socket = false;
  uint64_t chunk_size = 0;                 // region access chunk in use
};

struct ClientCounters {
  uint64_t requests = 0;          // requests sent (retries included)
  uint64_t request_errors = 0;    // error replies received
  uint64_t timeouts = 0;          // requests failed with ETIMEDOUT
  uint64_t retried = 0;           // idempotent requests re-sent after a loss
  uint64_t failed_by_disconnect = 0;  // requests failed with ECONNRESET
  uint64_t posted_writes = 0;
  uint64_t region_bytes_read = 0;
  uint64_t region_bytes_written = 0;
  uint64_t dma_reads_served = 0;   // server DMA_READ requests answered OK
  uint64_t dma_writes_served = 0;
  uint64_t dma_bytes_read = 0;     // guest memory bytes the device read
  uint64_t dma_bytes_written = 0;
  uint64_t dma_errors = 0;         // server requests answered with an error
  uint64_t unexpected_messages = 0;  // replies matching no request, etc.
  uint64_t late_replies = 0;       // replies to timed-out requests, dropped
  uint64_t disconnects = 0;        // connections lost
  uint64_t reconnect_attempts = 0;
  uint64_t reconnects = 0;         // successful reconnects
};

enum class WriteMode {
  kWaited,  // wait for the server's reply (errors are reported)
  kPosted,  // No_reply when safe (see allow_posted_writes); errors are lost
};

class Client {
 public:
  // Attaches to the server at options.socket_path. Errors: the connect
  // error (ENOENT, ECONNREFUSED, ...), ETIMEDOUT, or what the server said
  // that failed validation (EINVAL, EPROTO, E2BIG, ENOTSUP).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(ClientOptions options);

  ~Client();  // Close()
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Disconnects (no goodbye message: the server drops our DMA maps and IRQ
  // fds, PROTOCOL.md §6.6), fails waiting requests with ECANCELED, stops the
  // threads. Idempotent. REQUIRES: not called from the state callback.
  void Close();

  // ---- Observability ----
  ClientStateInfo state() const;
  ClientCounters counters() const;
  // Snapshot of what the server described (refreshed by each reconnect).
  DeviceDescription device() const;
  // Blocks until the state is `want` or final (kFailed / kClosed), or
  // `timeout` passes; returns the state then.
  ClientStateInfo AwaitState(ClientState want, absl::Duration timeout) const;
  // Test hook: drops the current connection as if the server had vanished
  // (shuts the socket down), which starts a reconnect.
  void DropConnectionForTesting();

  // ---- Region access ----
  // Reads `out.size()` bytes of `region` at `offset`, in chunks of the
  // negotiated size. Local checks first (EINVAL: bad index, not readable,
  // out of bounds). A reply with a different count, offset or region than
  // asked is EPROTO. The data is received from the socket straight into
  // `out` when the calling thread reads the reply itself; if the call
  // fails, the contents of `out` are unspecified.
  absl::Status Read(uint32_t region, uint64_t offset, absl::Span<uint8_t> out);
  absl::StatusOr<std::vector<uint8_t>> Read(uint32_t region, uint64_t offset,
                                            uint64_t size);
  // Several reads with all of their requests in flight at once: the batch
  // costs about one round trip's latency plus the server's work, instead of
  // one round trip per read (the way to keep many requests outstanding from
  // one thread). Same checks and errors as Read(); each read must fit in one
  // request (the negotiated chunk size, else EINVAL) and the batch in the
  // msg_id space. Reads that a disconnect interrupted are retried as Read()
  // does. On error, which reads completed is unspecified.
  struct ReadRequest {
    uint32_t region = 0;
    uint64_t offset = 0;
    absl::Span<uint8_t> out;
  };
  absl::Status ReadMany(absl::Span<const ReadRequest> reads);
  static constexpr size_t kMaxReadManyBatch = 4096;
  absl::Status Write(uint32_t region, uint64_t offset,
                     absl::Span<const uint8_t> data,
                     WriteMode mode = WriteMode::kWaited);
  // Little-endian scalar helpers (1, 2, 4 or 8 bytes).
  absl::StatusOr<uint64_t> ReadValue(uint32_t region, uint64_t offset,
                                     int width);
  absl::Status WriteValue(uint32_t region, uint64_t offset, int width,
                          uint64_t value, WriteMode mode = WriteMode::kWaited);

  // mmaps a mappable region (its sparse areas). EINVAL if the region is not
  // mappable or the server sent no fd. See client/region_mapping.h for what
  // happens on reconnect.
  absl::StatusOr<std::unique_ptr<RegionMapping>> MapRegion(uint32_t region);

  // ---- Guest memory ----
  // DMA_MAP. Local checks: DmaSpace::Validate, alignment to the smallest
  // page size in the server's pgsizes (EINVAL), overlap (EEXIST), the
  // server's max_dma_maps (ENOSPC), an fd when the server takes none
  // (EINVAL). The range is served to DMA_READ/WRITE from before the request
  // is sent, and replayed after reconnects.
  absl::Status DmaMap(const DmaRegion& region);
  // DMA_UNMAP of exactly a mapped range. Once it returns, the range is no
  // longer served nor replayed, whatever the outcome; an error means the
  // server may not have released it (an interrupting disconnect is OK).
  absl::Status DmaUnmap(uint64_t iova, uint64_t size);
  // DMA_UNMAP with FLAG_ALL; same contract.
  absl::Status DmaUnmapAll();

  // ---- Interrupts ----
  // SET_IRQS DATA_EVENTFD|ACTION_TRIGGER for sub-indexes [start, start +
  // fds.size()) of IRQ `index`; -1 entries de-assign. Chunked by the
  // server's max_msg_fds. The fds are borrowed (the journal keeps dups).
  absl::Status SetIrqEventfds(uint32_t index, uint32_t start,
                              absl::Span<const int> fds);
  // SET_IRQS DATA_NONE|ACTION_TRIGGER, count 0: disables every vector.
  absl::Status DisableIrqs(uint32_t index);
  // SET_IRQS DATA_NONE|ACTION_MASK / ACTION_UNMASK (the index must be
  // MASKABLE, else ENOTSUP locally).
  absl::Status MaskIrqs(uint32_t index, uint32_t start, uint32_t count);
  absl::Status UnmaskIrqs(uint32_t index, uint32_t start, uint32_t count);
  // SET_IRQS DATA_BOOL|ACTION_TRIGGER: fires vectors whose byte is 1.
  absl::Status TriggerIrqs(uint32_t index, uint32_t start,
                           absl::Span<const uint8_t> which);

  // ---- Device ----
  // DEVICE_RESET (ENOTSUP locally if GET_INFO did not report FLAGS_RESET).
  // Clears the journal's masks (a reset unmasks every vector).
  absl::Status Reset();

 private:
  struct Link;
  struct OutgoingRequest;
  struct ReplyWaiter;
  struct RequestWindow;
  struct AccessSnapshot;
  class Notifier;

  explicit Client(ClientOptions options);

  // ---- Links (one connection each) ----
  // Connects and attaches a new link. `previous` (reconnect) is the device
  // to match, and enables reset and journal replay (the caller holds
  // journal_mu_). Returns the link and its description.
  absl::StatusOr<std::shared_ptr<Link>> Establish(
      absl::Time deadline, const DeviceDescription* previous,
      DeviceDescription* description, std::vector<UniqueFd>* region_fds);
  absl::Status Negotiate(Link& link, absl::Time deadline,
                         DeviceDescription* description);
  absl::Status FetchDeviceInfo(Link& link, absl::Time deadline,
                               DeviceDescription* description);
  // The rest of an attach after DEVICE_GET_INFO, as one window of requests
  // (CallManyOnLink): on a reconnect the device reset (if the policy asks
  // and the device can) and the journal's replay, then GET_REGION_INFO for
  // every region and GET_IRQ_INFO for every index. The server handles them
  // in order, so the replay follows the reset and precedes the
  // descriptions, as one at a time. Fills the regions and irqs of
  // `description` (whose info is set) and `region_fds`. `reconnect`
  // requires journal_mu_.
  absl::Status Describe(Link& link, absl::Time deadline, bool reconnect,
                        DeviceDescription* description,
                        std::vector<UniqueFd>* region_fds)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Checks a GET_REGION_INFO reply for `index` asked with *argsz. Returns
  // the description (and its fd in *fd), or std::nullopt when the reply was
  // truncated: *argsz is then the size to ask again with.
  absl::StatusOr<std::optional<RegionDescription>> TakeRegionInfoReply(
      uint32_t index, uint32_t* argsz, absl::StatusOr<Message> reply,
      UniqueFd* fd);
  // GET_REGION_INFO for `index` alone with `argsz`, after a window's reply
  // was truncated (counts as the second of kRegionInfoAttempts).
  absl::StatusOr<RegionDescription> RefetchRegionInfo(Link& link,
                                                      uint32_t index,
                                                      uint32_t argsz,
                                                      absl::Time deadline,
                                                      UniqueFd* fd);
  absl::StatusOr<IrqInfo> TakeIrqInfoReply(uint32_t index,
                                           absl::StatusOr<Message> reply);
  // Appends the journal's replay to `window`: DMA_MAP for every mapping,
  // then SET_IRQS for every wired eventfd and masked run.
  absl::Status AddJournalReplay(Link& link, RequestWindow* window)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(journal_mu_);
  void StartReceiver(Link* link, bool twin);
  void ReceiveLoop(Link* link, bool twin);
  // The main socket's receiver thread: reads while the server may send
  // requests there, then only watches for the server hanging up.
  void MainReceiveLoop(Link* link);
  // Dispatches one message read from a socket: replies to the tracker,
  // server requests to ServeServerRequest.
  void HandleIncoming(Link& link, bool twin, Message& message,
                      std::vector<uint8_t>* buffer);
  void ReportViolation(Link& link, bool twin, absl::string_view what,
                       const absl::Status& status);
  void ServeServerRequest(Link& link, bool twin, Message& request,
                          std::vector<uint8_t>* buffer);
  absl::Status SendOnLink(Link& link, bool twin, const Header& header,
                          absl::Span<const uint8_t> part1,
                          absl::Span<const uint8_t> part2,
                          absl::Span<const int> fds);
  // Marks `link` lost (once): fails its requests, and if it is the current
  // link starts reconnection.
  void OnLinkLost(Link* link, const absl::Status& why);
  // Hands a reply's payload buffer back to `link` for reuse by the next
  // reader (see Link::spare_payload).
  void RecyclePayload(Link& link, std::vector<uint8_t> payload);
  // OnLinkLost, then fails whatever request is still outstanding on `link`
  // (one registered after the loss was first reported).
  void FailLink(Link* link, const absl::Status& why);

  // ---- Requests ----
  // One request on one link, waiting up to `deadline` for the reply.
  absl::StatusOr<Message> CallOnLink(Link& link, const OutgoingRequest& req,
                                     absl::Time deadline);
  // CallOnLink in two halves, so that one thread can have several requests
  // in flight (ReadMany): StartOnLink registers `waiter` (which must stay
  // put until FinishOnLink returns) and sends; an error means nothing was
  // registered. FinishOnLink waits for the reply, as CallOnLink.
  // Several requests in flight at once (in windows of at most
  // `max_window`): every request of a window is sent before its first reply
  // is awaited, consecutive requests without fds in one sendmsg(). The
  // server handles them in order. One reply (or failure) per request, in
  // order; all share `deadline`. A request that could not be sent fails,
  // and so does every later one.
  std::vector<absl::StatusOr<Message>> CallManyOnLink(
      Link& link, const std::deque<OutgoingRequest>& requests,
      absl::Time deadline, size_t max_window);
  absl::Status StartOnLink(Link& link, const OutgoingRequest& req,
                           absl::Time deadline, ReplyWaiter& waiter);
  absl::StatusOr<Message> FinishOnLink(Link& link, const OutgoingRequest& req,
                                       absl::Time deadline,
                                       ReplyWaiter& waiter);
  // Checks a REGION_READ reply against what was asked and copies its data
  // to `out` (the payload goes back to `link`'s spare buffer).
  absl::Status TakeReadReply(absl::StatusOr<Message> reply, Link& link,
                             uint32_t region, uint64_t offset,
                             absl::Span<uint8_t> out);
  // Waits for `waiter`'s reply; reads the main socket itself whenever the
  // reader role is free (see Link).
  absl::StatusOr<Message> AwaitReply(Link& link, ReplyWaiter& waiter,
                                     absl::Time deadline);
  // Waits for a connected link (up to `deadline`); the reason to fail.
  absl::StatusOr<std::shared_ptr<Link>> AwaitLink(absl::Time deadline);
  // A user request: waits for a link, calls, retries idempotent requests
  // after a loss. `link_used` (optional) tells which link answered. A
  // `link` already fetched is tried first (saves AwaitLink()'s lock).
  absl::StatusOr<Message> Call(const OutgoingRequest& req, absl::Time deadline,
                               std::shared_ptr<Link>* link_used = nullptr,
                               std::shared_ptr<Link> link = nullptr);
  // Runs `op` on the current link with journal_mu_ held, so journal updates
  // and reconnect replay never interleave. `op` gets the link.
  absl::Status WithJournal(
      absl::Time deadline,
      const std::function<absl::Status(const std::shared_ptr<Link>&)>& op);
  absl::Status SendPosted(Link& link, const OutgoingRequest& req);
  absl::Status SetIrqsOnLink(Link& link, const SetIrqs& request,
                             absl::Span<const int> fds, absl::Time deadline);
  // Local checks of a region access; on success fills `snapshot` (chunk
  // size, posted writes allowed, the current link if connected) under the
  // same lock.
  absl::Status ValidateRegionAccess(uint32_t region, uint64_t offset,
                                    uint64_t size, uint32_t need_flag,
                                    AccessSnapshot* snapshot) const;
  absl::StatusOr<IrqInfo> IrqInfoFor(uint32_t index) const;
  absl::Status SetMask(uint32_t index, uint32_t start, uint32_t count,
                       bool masked);
  absl::Status Unmap(const DmaUnmapRequest& request);

  // ---- Reconnect (manager thread) ----
  void ManagerLoop();
  void Reconnect() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetStateLocked(ClientState state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void InstallLinkLocked(std::shared_ptr<Link> link,
                         DeviceDescription description,
                         std::vector<UniqueFd> region_fds)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ClientOptions options_;
  DmaSpace dma_space_;
  const std::shared_ptr<MappingRegistry> mappings_;

  absl::Mutex close_mu_;  // serializes Close() calls

  // Serializes journal-changing requests with each other and with replay.
  // Lock order: journal_mu_ before mu_.
  absl::Mutex journal_mu_;
  IrqJournal irq_journal_ ABSL_GUARDED_BY(journal_mu_);

  mutable absl::Mutex mu_;
  // The manager thread waits here for closing_ or lost_link_ (a CondVar,
  // not a Condition on mu_: a Condition waiter would make every unlock of
  // mu_ on the request path take absl's slow path to evaluate it).
  absl::CondVar manager_cv_;
  ClientStateInfo state_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Link> link_ ABSL_GUARDED_BY(mu_);  // null unless kConnected
  std::shared_ptr<Link> lost_link_ ABSL_GUARDED_BY(mu_);  // for the manager
  std::shared_ptr<Link> establishing_ ABSL_GUARDED_BY(mu_);  // being built
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  DeviceDescription device_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<UniqueFd>> region_fds_ ABSL_GUARDED_BY(mu_);
  bool any_mappable_ ABSL_GUARDED_BY(mu_) = false;

  struct AtomicCounters;
  const std::unique_ptr<AtomicCounters> counters_;
  // Written once by Close(): wakes a reconnect waiting for the server's
  // socket (SocketWatch), which a CondVar cannot.
  const UniqueFd manager_wake_;
  // Watches the server's socket (SocketWatch) from the first time a
  // connection attempt failed until the client is destroyed: setting a
  // watch up or tearing it down costs more than a reconnect (the kernel
  // flags every entry of the socket's directory, 8-17 ms for a busy /tmp,
  // and other processes' operations in that directory wait meanwhile).
  // While connected, its events queue in the kernel (bounded by
  // fs.inotify.max_queued_events); Reconnect() discards them first. Used
  // by Connect(), then by the manager thread only.
  std::unique_ptr<SocketWatch> watch_;
  std::unique_ptr<Notifier> notifier_;
  std::thread manager_;
};

// True if `status` is a request failure caused by losing the connection
// (ECONNRESET from the client, as opposed to an error reply).
bool IsDisconnectError(const absl::Status& status);

// Human-readable names: "BAR0".."BAR5", "ROM", "CONFIG", "VGA", "REGION9";
// "INTX", "MSI", "MSIX", "ERR", "REQ", "IRQ5".
std::string RegionName(uint32_t index);
std::string IrqIndexName(uint32_t index);

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_CLIENT_H_
