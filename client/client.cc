#include "client/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/request_tracker.h"
#include "core/transport.h"
#include "client/socket_watch.h"

namespace vfio_user {
namespace {

constexpr char kComponent[] = "client";
constexpr char kDisconnectPayloadUrl[] = "vfio-user/client-disconnected";
// First GET_REGION_INFO argsz: the 32-byte structure plus room for a sparse
// capability with 13 areas; larger chains cost one retry.
constexpr uint32_t kInitialRegionInfoArgsz = 256;
// Retries of GET_REGION_INFO with a larger argsz before giving up.
constexpr int kRegionInfoAttempts = 3;
// Most requests an attach has in flight at once (CallManyOnLink): what they
// and their replies take stays far below the socket buffers, so neither
// side can block sending while the other is not reading.
constexpr size_t kMaxAttachWindow = 64;
// Fixed part of the largest message we receive, beyond its data.
constexpr uint32_t kMessageOverhead = 64;
// Protocol violations logged at warn level per link (then debug).
constexpr uint64_t kLoudViolations = 10;
// Link::reader while the main receiver thread holds the reader role.
constexpr char kReceiverRoleTag = 0;
const void* const kReceiverRole = &kReceiverRoleTag;

absl::Status DisconnectError(const absl::Status& why) {
  absl::Status status = ErrnoError(
      ECONNRESET, absl::StrCat("connection to the server lost: ",
                               why.message()));
  status.SetPayload(kDisconnectPayloadUrl, absl::Cord("1"));
  return status;
}

absl::Status ProtocolError(absl::string_view what) {
  return ErrnoError(EPROTO, what);
}

// Re-labels a decode failure of a server message as a protocol error (the
// decoder's errno is meant for error replies we send).
absl::Status BadReply(const char* command, const absl::Status& status) {
  return ProtocolError(absl::StrCat("bad ", command, " reply from the server: ",
                                    status.message()));
}

bool IsRetriableConnectError(const absl::Status& status) {
  const int err = ErrnoOf(status);
  return err == ENOENT || err == ECONNREFUSED || err == EAGAIN;
}

absl::Time Earliest(absl::Time a, absl::Time b) { return std::min(a, b); }

// Exponential backoff between connection attempts, never below 1 ms (a
// zero initial backoff would spin).
absl::Duration InitialBackoff(const ReconnectPolicy& policy) {
  return std::max(policy.initial_backoff, absl::Milliseconds(1));
}
// After the server's socket was (re)created, attempts that find it not
// listening yet (bind comes before listen) are repeated this often, up to
// kSocketEventRetries times, before the backoff resumes doubling.
constexpr absl::Duration kSocketEventBackoff = absl::Milliseconds(1);
constexpr int kSocketEventRetries = 500;
absl::Duration NextBackoff(const ReconnectPolicy& policy,
                           absl::Duration backoff) {
  return std::min(backoff * 2, std::max(policy.max_backoff,
                                        InitialBackoff(policy)));
}

// The wait before each connection attempt (Connect, Reconnect): the
// policy's doubling backoff, except right after the server's socket was
// (re)created, when attempts follow each other every kSocketEventBackoff.
struct RetryPacing {
  explicit RetryPacing(const ReconnectPolicy& policy)
      : backoff(InitialBackoff(policy)) {}
  // Sets `backoff` for the next wait, given how the last one ended.
  void After(SocketWatch::Woken woken, const ReconnectPolicy& policy) {
    if (woken == SocketWatch::Woken::kSocketEvent) {
      quick_retries = kSocketEventRetries;
    }
    if (quick_retries > 0) {
      --quick_retries;
      backoff = kSocketEventBackoff;
    } else {
      backoff = NextBackoff(policy, backoff);
    }
  }
  absl::Duration backoff;
  int quick_retries = 0;  // left after a socket event
};

// "message (strerror)" for logs.
std::string ErrorText(const absl::Status& status) {
  return absl::StrCat(status.message(), " (", std::strerror(ErrnoOf(status)),
                      ")");
}

uint64_t LowestPageSize(uint64_t pgsizes) {
  // ClientValidateReply guarantees a bit >= 4096 and none below.
  return pgsizes == 0 ? kMinPageSize : (pgsizes & (~pgsizes + 1));
}

// Compares what must not change across a reconnect.
absl::Status SameDeviceInfo(const DeviceInfo& before, const DeviceInfo& now) {
  if (before.flags != now.flags || before.num_regions != now.num_regions ||
      before.num_irqs != now.num_irqs) {
    return ProtocolError(absl::StrCat(
        "the device changed across the reconnect: flags/regions/irqs were 0x",
        absl::Hex(before.flags), "/", before.num_regions, "/", before.num_irqs,
        ", now 0x", absl::Hex(now.flags), "/", now.num_regions, "/",
        now.num_irqs));
  }
  return absl::OkStatus();
}

absl::Status SameRegionsAndIrqs(const DeviceDescription& before,
                                const DeviceDescription& now) {
  const uint32_t kCompared =
      kRegionInfoFlagRead | kRegionInfoFlagWrite | kRegionInfoFlagMmap;
  for (size_t i = 0; i < before.regions.size() && i < now.regions.size(); ++i) {
    const RegionDescription& a = before.regions[i];
    const RegionDescription& b = now.regions[i];
    if ((a.info.flags & kCompared) != (b.info.flags & kCompared) ||
        a.info.size != b.info.size || a.info.sparse_areas != b.info.sparse_areas ||
        a.has_fd != b.has_fd) {
      return ProtocolError(absl::StrCat("region ", i,
                                        " changed across the reconnect"));
    }
  }
  for (size_t i = 0; i < before.irqs.size() && i < now.irqs.size(); ++i) {
    if (before.irqs[i].count != now.irqs[i].count ||
        before.irqs[i].flags != now.irqs[i].flags) {
      return ProtocolError(absl::StrCat("IRQ index ", i,
                                        " changed across the reconnect"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// Names and small types

const char* ClientStateName(ClientState state) {
  switch (state) {
    case ClientState::kConnected: return "connected";
    case ClientState::kReconnecting: return "reconnecting";
    case ClientState::kFailed: return "failed";
    case ClientState::kClosed: return "closed";
  }
  return "unknown";
}

absl::Duration ClientStateInfo::time_left(absl::Time now) const {
  if (state != ClientState::kReconnecting ||
      reconnect_deadline == absl::InfiniteFuture()) {
    return absl::ZeroDuration();
  }
  return std::max(absl::ZeroDuration(), reconnect_deadline - now);
}

std::string RegionName(uint32_t index) {
  if (index <= kPciBar5RegionIndex) return absl::StrCat("BAR", index);
  switch (index) {
    case kPciRomRegionIndex: return "ROM";
    case kPciConfigRegionIndex: return "CONFIG";
    case kPciVgaRegionIndex: return "VGA";
  }
  return absl::StrCat("REGION", index);
}

std::string IrqIndexName(uint32_t index) {
  switch (index) {
    case kPciIntxIrqIndex: return "INTX";
    case kPciMsiIrqIndex: return "MSI";
    case kPciMsixIrqIndex: return "MSIX";
    case kPciErrIrqIndex: return "ERR";
    case kPciReqIrqIndex: return "REQ";
  }
  return absl::StrCat("IRQ", index);
}

bool IsDisconnectError(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kDisconnectPayloadUrl).has_value();
}

// ---------------------------------------------------------------------------
// Internal types

// X-macro over ClientCounters' fields, so the atomic twin cannot drift.
#define VFIO_USER_CLIENT_COUNTERS(X) \
  X(requests)                        \
  X(request_errors)                  \
  X(timeouts)                        \
  X(retried)                         \
  X(failed_by_disconnect)            \
  X(posted_writes)                   \
  X(region_bytes_read)               \
  X(region_bytes_written)            \
  X(dma_reads_served)                \
  X(dma_writes_served)               \
  X(dma_bytes_read)                  \
  X(dma_bytes_written)               \
  X(dma_errors)                      \
  X(unexpected_messages)             \
  X(late_replies)                    \
  X(disconnects)                     \
  X(reconnect_attempts)              \
  X(reconnects)

struct Client::AtomicCounters {
#define VFIO_USER_DECLARE_COUNTER(name) std::atomic<uint64_t> name{0};
  VFIO_USER_CLIENT_COUNTERS(VFIO_USER_DECLARE_COUNTER)
#undef VFIO_USER_DECLARE_COUNTER

  ClientCounters Snapshot() const {
    ClientCounters c;
#define VFIO_USER_COPY_COUNTER(name) \
  c.name = name.load(std::memory_order_relaxed);
    VFIO_USER_CLIENT_COUNTERS(VFIO_USER_COPY_COUNTER)
#undef VFIO_USER_COPY_COUNTER
    return c;
  }
};

// One requester waiting for its reply (it lives on the requester's stack).
// Its fields are guarded by link->io_mu, except while the requester itself
// delivers its own reply (see Deliver).
struct Client::ReplyWaiter {
  explicit ReplyWaiter(Link* owner)
      : link(owner), thread(std::this_thread::get_id()) {}

  // The tracker's callback: stores the outcome and wakes the requester
  // (absl::Mutex re-evaluates Ready() on unlock).
  void Deliver(absl::StatusOr<Message> outcome);
  // Await() condition: the reply (or failure) is here, or the reader role
  // was handed to us.
  static bool Ready(ReplyWaiter* waiter);

  Link* const link;
  const std::thread::id thread;  // the requester's
  // The request's id and command once StartOnLink registered it: a reader
  // that receives this reply claims it (RequestTracker::Claim) instead of
  // delivering it through the tracker's callback.
  uint16_t msg_id = 0;
  uint16_t cmd = 0;
  bool registered = false;
  // Where the reader puts the bulk of this request's reply (see
  // OutgoingRequest::reply_into); `placement.into` empty: nowhere.
  ReceivePlacement placement;
  bool done = false;
  bool queued = false;  // in link->role_queue
  // Set with `done` (an optional: a default StatusOr costs a Status).
  std::optional<absl::StatusOr<Message>> result;
};

// One connection to the server (main socket, optional twin socket) with its
// own request tracker, so msg_ids and late replies never cross connections.
//
// Reading the main socket: exactly one thread reads it at a time, the holder
// of the reader role (`reader`). Until a twin socket carries the server's
// requests, the main receiver thread holds it and delivers replies through
// the tracker (a thread hop per reply). With a twin socket the main socket
// carries nothing but replies, and `requesters_read` is set: a requester
// takes the free role and reads until its own reply arrives (delivering
// others' on the way), then hands the role to the longest-waiting requester.
// A round trip is then one sendmsg() and one recvmsg() on the requester's
// thread, with no wake-up of another thread. The receiver thread only
// watches for the server hanging up (poll for POLLRDHUP, which arriving
// data does not wake) and then drains what is left.
struct Client::Link {
  std::unique_ptr<Connection> main;
  std::unique_ptr<Connection> twin;  // set by Negotiate, before publication
  absl::Mutex main_send_mu;          // one sender at a time per socket
  absl::Mutex twin_send_mu;
  RequestTracker tracker;
  // The reader role (see above). `reader` is the reading requester's
  // ReplyWaiter, kReceiverRole for the receiver thread, or null (free).
  absl::Mutex io_mu;
  const void* reader ABSL_GUARDED_BY(io_mu) = nullptr;
  std::deque<ReplyWaiter*> role_queue ABSL_GUARDED_BY(io_mu);
  std::atomic<bool> requesters_read{false};
  // A reply payload buffer handed back by a requester (RecyclePayload) for
  // the next reader to receive into: no allocation per reply, and large
  // replies are not zero-filled again.
  std::vector<uint8_t> spare_payload ABSL_GUARDED_BY(io_mu);
  std::atomic<bool> lost{false};
  // Set once VERSION completed (after the fields below are written).
  std::atomic<bool> negotiated{false};
  Capabilities server;     // written by Negotiate, read-only afterwards
  uint64_t chunk_size = 0;
  std::atomic<uint16_t> next_posted_id{0x8000};
  std::atomic<uint64_t> violations{0};
  std::thread main_receiver;
  std::thread twin_receiver;

  ~Link() { ShutdownAndJoin(); }

  void Shutdown() {
    if (main) main->Shutdown();
    if (twin) twin->Shutdown();
  }
  void ShutdownAndJoin() {
    Shutdown();
    if (main_receiver.joinable()) main_receiver.join();
    if (twin_receiver.joinable()) twin_receiver.join();
  }

  // Frees the reader role, or hands it to the longest-waiting requester.
  void ReleaseReaderLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(io_mu) {
    reader = nullptr;
    if (!role_queue.empty()) {
      ReplyWaiter* next = role_queue.front();
      role_queue.pop_front();
      next->queued = false;
      reader = next;
    }
  }
  void DequeueLocked(ReplyWaiter* waiter) ABSL_EXCLUSIVE_LOCKS_REQUIRED(io_mu) {
    if (!waiter->queued) return;
    role_queue.erase(std::find(role_queue.begin(), role_queue.end(), waiter));
    waiter->queued = false;
  }
  static bool RoleFree(Link* link) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return link->reader == nullptr;
  }
};

void Client::ReplyWaiter::Deliver(absl::StatusOr<Message> outcome)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (std::this_thread::get_id() == thread) {
    // The requester delivers its own reply (it holds the reader role and is
    // running, so it is neither queued nor waiting in Await(), and a request
    // is resolved only once): no other thread looks at these fields now.
    result.emplace(std::move(outcome));
    done = true;
    return;
  }
  absl::MutexLock lock(&link->io_mu);
  result.emplace(std::move(outcome));
  done = true;
  link->DequeueLocked(this);
}

bool Client::ReplyWaiter::Ready(ReplyWaiter* waiter)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  return waiter->done || waiter->link->reader == waiter;
}

// What one request sends.
struct Client::OutgoingRequest {
  explicit OutgoingRequest(Command command,
                           absl::Span<const uint8_t> first = {},
                           absl::Span<const uint8_t> second = {})
      : cmd(command), part1(first), part2(second) {}
  Command cmd;
  absl::Span<const uint8_t> part1;
  absl::Span<const uint8_t> part2;
  absl::Span<const int> fds;
  bool idempotent = false;      // may be re-sent after a reconnect
  uint32_t max_reply_fds = 0;   // more fds in the reply is a violation
  // Optional: the reply's payload after its first `reply_keep` bytes is
  // received straight into `reply_into` when it has exactly that size
  // (Connection::ReceiveInto's placement; the reply then has
  // payload_placed set). Contents unspecified if the call fails.
  absl::Span<uint8_t> reply_into;
  size_t reply_keep = 0;
};

// Runs the state callback on its own thread, in order.
class Client::Notifier {
 public:
  explicit Notifier(std::function<void(const ClientStateInfo&)> callback)
      : callback_(std::move(callback)), thread_([this] { Run(); }) {}
  ~Notifier() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    thread_.join();
  }
  void Post(const ClientStateInfo& info) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(info);
  }

 private:
  void Run() {
    for (;;) {
      ClientStateInfo info;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](Notifier* n) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return n->done_ || !n->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // done and drained
        info = std::move(queue_.front());
        queue_.pop_front();
      }
      callback_(info);
    }
  }

  const std::function<void(const ClientStateInfo&)> callback_;
  absl::Mutex mu_;
  std::deque<ClientStateInfo> queue_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the members above exist
};

// ---------------------------------------------------------------------------
// Construction, Close

Client::Client(ClientOptions options)
    : options_(std::move(options)),
      mappings_(std::make_shared<MappingRegistry>()),
      counters_(std::make_unique<AtomicCounters>()),
      manager_wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

Client::~Client() { Close(); }

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  if (options.socket_path.empty()) {
    return ErrnoError(EINVAL, "ClientOptions.socket_path is empty");
  }
  if (options.max_msg_fds == 0 && options.offer_twin_socket) {
    options.offer_twin_socket = false;  // the twin socket travels as an fd
  }
  if (options.request_timeout <= absl::ZeroDuration()) {
    return ErrnoError(EINVAL, "ClientOptions.request_timeout must be > 0");
  }
  std::unique_ptr<Client> client(new Client(std::move(options)));
  const ClientOptions& opts = client->options_;

  const absl::Time give_up = absl::Now() + opts.connect_timeout;
  RetryPacing pacing(opts.reconnect);
  for (;;) {
    DeviceDescription description;
    std::vector<UniqueFd> region_fds;
    absl::StatusOr<std::shared_ptr<Link>> link =
        client->Establish(absl::InfiniteFuture(), nullptr, &description,
                          &region_fds);
    if (link.ok()) {
      absl::MutexLock lock(&client->mu_);
      // Created only now, so a failed Connect() never calls back.
      if (opts.on_state_change) {
        client->notifier_ = std::make_unique<Notifier>(opts.on_state_change);
      }
      client->InstallLinkLocked(*std::move(link), std::move(description),
                                std::move(region_fds));
      break;
    }
    if (!IsRetriableConnectError(link.status()) || absl::Now() >= give_up) {
      return link.status();
    }
    // A server that creates its socket now is tried at once.
    if (client->watch_ == nullptr) {  // set up once the first attempt failed
      client->watch_ = std::make_unique<SocketWatch>(
          opts.socket_path, client->manager_wake_.get());
    }
    pacing.After(client->watch_->Wait(
                     std::min(absl::Now() + pacing.backoff, give_up)),
                 opts.reconnect);
  }
  Client* raw = client.get();
  client->manager_ = std::thread([raw] { raw->ManagerLoop(); });
  return client;
}

void Client::Close() {
  absl::MutexLock close_lock(&close_mu_);
  std::shared_ptr<Link> current, lost, establishing;
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return;
    closing_ = true;
    manager_cv_.SignalAll();
    if (manager_wake_.valid()) {  // a reconnect waiting in SocketWatch::Wait
      const uint64_t one = 1;
      (void)!::write(manager_wake_.get(), &one, sizeof(one));
    }
    current = std::move(link_);
    lost = std::move(lost_link_);
    establishing = establishing_;
    SetStateLocked(ClientState::kClosed);
    PublishLocked();
  }
  const absl::Status cancelled = ErrnoError(ECANCELED, "client closed");
  for (const std::shared_ptr<Link>& link : {current, lost, establishing}) {
    if (!link) continue;
    link->lost.store(true);
    link->tracker.FailAll(cancelled);
    link->main->Shutdown();
  }
  if (manager_.joinable()) manager_.join();
  for (const std::shared_ptr<Link>& link : {current, lost}) {
    if (!link) continue;
    link->ShutdownAndJoin();
    counters_->late_replies += link->tracker.stats().late_dropped;
  }
  notifier_.reset();  // delivers what is queued (kClosed last), then joins
}

// ---------------------------------------------------------------------------
// Observability

ClientStateInfo Client::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

ClientCounters Client::counters() const {
  ClientCounters c = counters_->Snapshot();
  absl::MutexLock lock(&mu_);
  if (link_) c.late_replies += link_->tracker.stats().late_dropped;
  return c;
}

DeviceDescription Client::device() const {
  absl::MutexLock lock(&mu_);
  return device_;
}

ClientStateInfo Client::AwaitState(ClientState want,
                                   absl::Duration timeout) const {
  struct Args {
    const Client* client;
    ClientState want;
  } args{this, want};
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(
      absl::Condition(
          +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            const ClientState s = a->client->state_.state;
            return s == a->want || s == ClientState::kFailed ||
                   s == ClientState::kClosed;
          },
          &args),
      timeout);
  return state_;
}

void Client::DropConnectionForTesting() {
  std::shared_ptr<Link> link;
  {
    absl::MutexLock lock(&mu_);
    link = link_;
  }
  if (link) link->main->Shutdown();
}

void Client::SetStateLocked(ClientState state) {
  state_.state = state;
  if (state != ClientState::kReconnecting) {
    state_.attempt = 0;
    state_.reconnect_deadline = absl::InfiniteFuture();
  }
}

void Client::PublishLocked() {
  state_.reconnects = counters_->reconnects.load();
  if (notifier_) notifier_->Post(state_);
}

// ---------------------------------------------------------------------------
// Establishing a link

absl::StatusOr<std::shared_ptr<Client::Link>> Client::Establish(
    absl::Time deadline, const DeviceDescription* previous,
    DeviceDescription* description, std::vector<UniqueFd>* region_fds)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  absl::StatusOr<UniqueFd> socket = ConnectUnix(options_.socket_path);
  if (!socket.ok()) return socket.status();

  TransportOptions transport;
  const uint64_t largest_data =
      std::max({options_.max_data_xfer_size,
                options_.transfer_chunk_size == 0 ? kDefaultMaxDataXferSize
                                                  : options_.transfer_chunk_size,
                uint64_t{options_.max_region_info_size}});
  transport.max_msg_size = static_cast<uint32_t>(
      std::min<uint64_t>(largest_data + kMessageOverhead, UINT32_MAX));
  transport.max_fds_in = options_.max_msg_fds;
  transport.max_fds_out = 0;  // until the server tells its limit
  transport.send_timeout = options_.request_timeout;
  transport.receive_timeout = absl::InfiniteDuration();

  auto link = std::make_shared<Link>();
  link->main = std::make_unique<Connection>(*std::move(socket), transport);
  {
    absl::MutexLock lock(&mu_);
    if (closing_) return ErrnoError(ECANCELED, "client closed");
    establishing_ = link;
  }
  StartReceiver(link.get(), /*twin=*/false);

  absl::Status status = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    absl::Status s = Negotiate(*link, deadline, description);
    if (!s.ok()) return s;
    s = FetchDeviceInfo(*link, deadline, description);
    if (!s.ok()) return s;
    if (previous != nullptr) {
      s = SameDeviceInfo(previous->info, description->info);
      if (!s.ok()) return s;
    }
    s = Describe(*link, deadline, /*reconnect=*/previous != nullptr,
                 description, region_fds);
    if (!s.ok()) return s;
    if (previous != nullptr) return SameRegionsAndIrqs(*previous, *description);
    return absl::OkStatus();
  }();

  {
    absl::MutexLock lock(&mu_);
    establishing_.reset();
  }
  if (!status.ok()) {
    link->lost.store(true);
    link->tracker.FailAll(status);
    link->ShutdownAndJoin();
    return status;
  }
  return link;
}

absl::Status Client::Negotiate(Link& link, absl::Time deadline,
                               DeviceDescription* description) {
  Capabilities offer;
  offer.max_msg_fds = options_.max_msg_fds;
  offer.max_data_xfer_size = options_.max_data_xfer_size;
  offer.twin_socket_supported = options_.offer_twin_socket;
  VersionPayload proposed;
  proposed.major = kProtocolMajor;
  proposed.minor = kProtocolMinor;
  proposed.json = FormatCapabilitiesJson(offer);
  const Bytes payload = EncodeVersion(proposed);

  OutgoingRequest request{Command::kVersion, payload};
  request.max_reply_fds = 1;  // the twin socket
  absl::StatusOr<Message> reply =
      CallOnLink(link, request, Earliest(deadline, absl::Now() +
                                                      options_.request_timeout));
  if (!reply.ok()) return reply.status();
  absl::StatusOr<VersionPayload> version = DecodeVersion(reply->payload);
  if (!version.ok()) return BadReply("VERSION", version.status());
  absl::StatusOr<ClientNegotiation> negotiation =
      ClientValidateReply(proposed, offer, *version, reply->fds.size());
  if (!negotiation.ok()) return negotiation.status();

  if (negotiation->twin_socket) {
    UniqueFd twin_fd =
        std::move(reply->fds[*negotiation->peer.twin_socket_fd_index]);
    int type = 0;
    socklen_t len = sizeof(type);
    if (::getsockopt(twin_fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 ||
        type != SOCK_STREAM) {
      return ProtocolError("VERSION: the twin_socket fd is not a stream socket");
    }
    TransportOptions twin_options = link.main->options();
    twin_options.max_fds_in = 0;   // DMA requests carry no fds
    twin_options.max_fds_out = 0;  // neither do our replies
    link.twin = std::make_unique<Connection>(std::move(twin_fd), twin_options);
  }
  // Any other fd in the reply closes with it.

  link.server = negotiation->peer;
  const uint64_t wanted_chunk = options_.transfer_chunk_size == 0
                                    ? kDefaultMaxDataXferSize
                                    : options_.transfer_chunk_size;
  link.chunk_size = std::min(wanted_chunk, link.server.max_data_xfer_size);
  link.main->set_max_fds_out(link.server.max_msg_fds);
  link.negotiated.store(true, std::memory_order_release);
  // After `negotiated`: the twin's receiver serves requests at once.
  if (link.twin) {
    StartReceiver(&link, /*twin=*/true);
    // The server's requests travel on the twin socket: the main socket
    // carries only replies, which requesters may now read themselves.
    link.requesters_read.store(true, std::memory_order_release);
  }

  description->server = link.server;
  description->minor = negotiation->minor;
  description->twin_socket = link.twin != nullptr;
  description->chunk_size = link.chunk_size;
  return absl::OkStatus();
}

absl::Status Client::FetchDeviceInfo(Link& link, absl::Time deadline,
                                     DeviceDescription* description) {
  DeviceInfo request;
  request.argsz = 16;
  const Bytes payload = EncodeDeviceInfo(request);
  absl::StatusOr<Message> reply = CallOnLink(
      link, OutgoingRequest{Command::kDeviceGetInfo, payload},
      Earliest(deadline, absl::Now() + options_.request_timeout));
  if (!reply.ok()) return reply.status();
  absl::StatusOr<DeviceInfo> info = DecodeDeviceInfoReply(reply->payload);
  if (!info.ok()) return BadReply("DEVICE_GET_INFO", info.status());
  if (info->num_regions > options_.max_regions) {
    return ErrnoError(E2BIG, absl::StrCat("DEVICE_GET_INFO: the server claims ",
                                          info->num_regions,
                                          " regions; the limit is ",
                                          options_.max_regions));
  }
  if (info->num_irqs > options_.max_irqs) {
    return ErrnoError(E2BIG, absl::StrCat("DEVICE_GET_INFO: the server claims ",
                                          info->num_irqs,
                                          " IRQ indexes; the limit is ",
                                          options_.max_irqs));
  }
  if ((info->flags & kDeviceFlagsPci) != 0 &&
      info->num_regions <= kPciConfigRegionIndex) {
    return ProtocolError(absl::StrCat(
        "DEVICE_GET_INFO: a PCI device with ", info->num_regions,
        " regions has no config space (index 7)"));
  }
  description->info = *info;
  return absl::OkStatus();
}

// Requests to send as one window (CallManyOnLink), with the storage their
// spans point into (deques: adding never moves what was stored).
struct Client::RequestWindow {
  // Appends a request whose payload (and fds, which must stay open until
  // the window was sent) this window keeps.
  OutgoingRequest& Add(Command cmd, Bytes payload, std::vector<int> fds = {}) {
    const Bytes& stored = payloads.emplace_back(std::move(payload));
    const std::vector<int>& stored_fds = fd_lists.emplace_back(std::move(fds));
    OutgoingRequest& request = requests.emplace_back(cmd, stored);
    request.fds = stored_fds;
    return request;
  }

  std::deque<OutgoingRequest> requests;
  std::deque<Bytes> payloads;
  std::deque<std::vector<int>> fd_lists;
  // Fds the requests refer to, kept open until the window was sent.
  std::vector<std::shared_ptr<UniqueFd>> held_fds;
};

std::vector<absl::StatusOr<Message>> Client::CallManyOnLink(
    Link& link, const std::deque<OutgoingRequest>& requests,
    absl::Time deadline, size_t max_window) {
  std::vector<absl::StatusOr<Message>> replies;
  replies.reserve(requests.size());
  for (size_t first = 0; first < requests.size(); first += max_window) {
    const size_t end = std::min(requests.size(), first + max_window);
    // The waiters stay put (deque) while the tracker holds pointers to them.
    std::deque<ReplyWaiter> waiters;
    absl::Status failed;  // why requests [first + waiters.size(), end) were not sent
    // Framed requests without fds, not sent yet: consecutive ones leave in
    // one sendmsg() (a request with fds goes out alone, in order).
    std::vector<uint8_t> wire;
    const auto flush = [&]() -> absl::Status {
      if (wire.empty()) return absl::OkStatus();
      absl::MutexLock lock(&link.main_send_mu);
      absl::Status sent = link.main->SendFramed(wire);
      wire.clear();
      return sent;
    };
    for (size_t i = first; i < end; ++i) {
      const OutgoingRequest& req = requests[i];
      ReplyWaiter& waiter = waiters.emplace_back(&link);
      absl::StatusOr<uint16_t> msg_id = link.tracker.StartAsync(
          req.cmd, deadline, [&waiter](absl::StatusOr<Message> outcome) {
            waiter.Deliver(std::move(outcome));
          });
      if (!msg_id.ok()) {
        waiters.pop_back();
        failed = msg_id.status();
        break;
      }
      counters_->requests.fetch_add(1);
      Header header;
      header.msg_id = *msg_id;
      header.cmd = static_cast<uint16_t>(req.cmd);
      header.flags = kFlagsTypeCommand;
      header.msg_size = static_cast<uint32_t>(kHeaderSize + req.part1.size() +
                                              req.part2.size());
      absl::Status sent;
      if (req.fds.empty()) {
        const size_t at = wire.size();
        wire.resize(at + header.msg_size);
        EncodeHeader(header, wire.data() + at);
        if (!req.part1.empty()) {
          std::memcpy(wire.data() + at + kHeaderSize, req.part1.data(),
                      req.part1.size());
        }
        if (!req.part2.empty()) {
          std::memcpy(wire.data() + at + kHeaderSize + req.part1.size(),
                      req.part2.data(), req.part2.size());
        }
      } else {
        sent = flush();
        if (sent.ok()) {
          sent = SendOnLink(link, false, header, req.part1, req.part2, req.fds);
        }
      }
      if (!sent.ok()) {
        FailLink(&link, sent);  // fails what was registered
        failed = DisconnectError(sent);
        break;
      }
    }
    // As in StartOnLink: a link lost meanwhile fails what was registered.
    if (link.lost.load()) {
      link.tracker.FailAll(
          DisconnectError(ErrnoError(ENOTCONN, "connection already lost")));
    } else if (absl::Status sent = flush(); !sent.ok()) {
      FailLink(&link, sent);
    }
    // Every started request is awaited (its waiter must outlive the
    // tracker's callback), whatever happened to the others.
    for (size_t i = 0; i < waiters.size(); ++i) {
      replies.push_back(
          FinishOnLink(link, requests[first + i], deadline, waiters[i]));
    }
    for (size_t i = first + waiters.size(); i < end; ++i) {
      replies.push_back(failed);
    }
    if (!failed.ok()) {  // later windows are not tried either
      while (replies.size() < requests.size()) replies.push_back(failed);
      break;
    }
  }
  return replies;
}


namespace {

Bytes RegionInfoPayload(uint32_t index, uint32_t argsz) {
  RegionInfoRequest request;
  request.argsz = argsz;
  request.index = index;
  return EncodeRegionInfoRequest(request);
}

}  // namespace

absl::StatusOr<std::optional<RegionDescription>> Client::TakeRegionInfoReply(
    uint32_t index, uint32_t* argsz, absl::StatusOr<Message> reply,
    UniqueFd* fd) {
  if (!reply.ok()) return reply.status();
  if (reply->payload.size() > *argsz) {
    return ProtocolError(absl::StrCat(
        "GET_REGION_INFO ", index, ": the reply has ", reply->payload.size(),
        " bytes; we accept ", *argsz));
  }
  DecodeLimits limits;
  limits.max_array_entries = options_.max_region_info_size / 16;
  absl::StatusOr<RegionInfo> info = DecodeRegionInfo(reply->payload, limits);
  if (!info.ok()) return BadReply("GET_REGION_INFO", info.status());
  if (info->index != index) {
    return ProtocolError(absl::StrCat("GET_REGION_INFO ", index,
                                      ": the reply is for region ",
                                      info->index));
  }
  if (info->argsz > reply->payload.size()) {  // truncated: ask again
    if (info->argsz <= *argsz) {
      return ProtocolError(absl::StrCat(
          "GET_REGION_INFO ", index, ": the reply was cut to ",
          reply->payload.size(), " bytes though ", info->argsz,
          " fit in our argsz ", *argsz));
    }
    if (info->argsz > options_.max_region_info_size) {
      return ErrnoError(E2BIG, absl::StrCat("GET_REGION_INFO ", index,
                                            ": the server needs argsz ",
                                            info->argsz, "; the limit is ",
                                            options_.max_region_info_size));
    }
    *argsz = info->argsz;
    return std::nullopt;  // any fd that came with the truncated reply is closed
  }
  if (info->offset + info->size < info->offset) {
    return ProtocolError(absl::StrCat("GET_REGION_INFO ", index,
                                      ": offset + size wraps"));
  }
  RegionDescription description;
  description.info = *std::move(info);
  if (!reply->fds.empty() &&
      (description.info.flags & kRegionInfoFlagMmap) != 0) {
    *fd = std::move(reply->fds[0]);
    description.has_fd = true;
  }
  return description;
}

absl::StatusOr<RegionDescription> Client::RefetchRegionInfo(
    Link& link, uint32_t index, uint32_t argsz, absl::Time deadline,
    UniqueFd* fd) {
  // The window asked once already.
  for (int attempt = 1; attempt < kRegionInfoAttempts; ++attempt) {
    const Bytes payload = RegionInfoPayload(index, argsz);
    OutgoingRequest out{Command::kDeviceGetRegionInfo, payload};
    out.idempotent = true;
    out.max_reply_fds = 1;
    absl::StatusOr<std::optional<RegionDescription>> region =
        TakeRegionInfoReply(
            index, &argsz,
            CallOnLink(link, out,
                       Earliest(deadline,
                                absl::Now() + options_.request_timeout)),
            fd);
    if (!region.ok()) return region.status();
    if (region->has_value()) return **std::move(region);
  }
  return ProtocolError(absl::StrCat("GET_REGION_INFO ", index,
                                    ": argsz kept growing"));
}

absl::StatusOr<IrqInfo> Client::TakeIrqInfoReply(
    uint32_t index, absl::StatusOr<Message> reply) {
  if (!reply.ok()) return reply.status();
  absl::StatusOr<IrqInfo> info = DecodeIrqInfoReply(reply->payload);
  if (!info.ok()) return BadReply("GET_IRQ_INFO", info.status());
  if (info->index != index) {
    return ProtocolError(absl::StrCat("GET_IRQ_INFO ", index,
                                      ": the reply is for index ",
                                      info->index));
  }
  if (info->count > options_.max_irq_vectors) {
    return ErrnoError(E2BIG, absl::StrCat("GET_IRQ_INFO ", index, ": ",
                                          info->count,
                                          " vectors; the limit is ",
                                          options_.max_irq_vectors));
  }
  return *info;
}

absl::Status Client::Describe(Link& link, absl::Time deadline, bool reconnect,
                              DeviceDescription* description,
                              std::vector<UniqueFd>* region_fds) {
  RequestWindow window;
  if (reconnect) {
    if (options_.reconnect.reset_device &&
        (description->info.flags & kDeviceFlagsReset) != 0) {
      window.Add(Command::kDeviceReset, Bytes());
    }
    absl::Status s = AddJournalReplay(link, &window);
    if (!s.ok()) return s;
  }
  const size_t regions_at = window.requests.size();
  const uint32_t initial_argsz =
      std::min(kInitialRegionInfoArgsz,
               std::max<uint32_t>(options_.max_region_info_size, 32));
  for (uint32_t i = 0; i < description->info.num_regions; ++i) {
    OutgoingRequest& out = window.Add(Command::kDeviceGetRegionInfo,
                                      RegionInfoPayload(i, initial_argsz));
    out.idempotent = true;
    out.max_reply_fds = 1;
  }
  const size_t irqs_at = window.requests.size();
  for (uint32_t i = 0; i < description->info.num_irqs; ++i) {
    IrqInfo request;
    request.index = i;
    window.Add(Command::kDeviceGetIrqInfo, EncodeIrqInfo(request)).idempotent =
        true;
  }
  std::vector<absl::StatusOr<Message>> replies = CallManyOnLink(
      link, window.requests,
      Earliest(deadline, absl::Now() + options_.request_timeout),
      kMaxAttachWindow);

  // The reset and the replay: the first failure ends the attach.
  for (size_t i = 0; i < regions_at; ++i) {
    if (!replies[i].ok()) return replies[i].status();
  }
  // Any failure ends the attach, as in QEMU: a region the server counts but
  // cannot describe is a broken device.
  description->regions.clear();
  region_fds->clear();
  for (uint32_t i = 0; i < description->info.num_regions; ++i) {
    UniqueFd fd;
    uint32_t argsz = initial_argsz;
    absl::StatusOr<std::optional<RegionDescription>> region =
        TakeRegionInfoReply(i, &argsz, std::move(replies[regions_at + i]),
                            &fd);
    if (!region.ok()) return region.status();
    if (!region->has_value()) {  // truncated: ask again, alone
      absl::StatusOr<RegionDescription> again =
          RefetchRegionInfo(link, i, argsz, deadline, &fd);
      if (!again.ok()) return again.status();
      region->emplace(*std::move(again));
    }
    description->regions.push_back(**std::move(region));
    region_fds->push_back(std::move(fd));
  }
  description->irqs.clear();
  for (uint32_t i = 0; i < description->info.num_irqs; ++i) {
    absl::StatusOr<IrqInfo> info =
        TakeIrqInfoReply(i, std::move(replies[irqs_at + i]));
    if (!info.ok()) return info.status();
    description->irqs.push_back(*info);
  }
  return absl::OkStatus();
}

absl::Status Client::AddJournalReplay(Link& link, RequestWindow* window) {
  for (const DmaSpace::Entry& entry : dma_space_.Snapshot()) {
    DmaMapRequest request;
    request.flags = entry.region.prot;
    request.offset = entry.fd ? entry.region.fd_offset : 0;
    request.address = entry.region.iova;
    request.size = entry.region.size;
    std::vector<int> fds;
    if (entry.fd) {
      if (link.server.max_msg_fds == 0) {
        return ErrnoError(EINVAL, "replay: the server accepts no fds");
      }
      fds.push_back(entry.fd->get());
      window->held_fds.push_back(entry.fd);
    }
    window->Add(Command::kDmaMap, EncodeDmaMap(request), std::move(fds));
  }
  // Eventfds stay open: the journal cannot change while journal_mu_ is held.
  for (uint32_t index : irq_journal_.Indexes()) {
    const std::vector<int> fds = irq_journal_.Triggers(index);
    for (EventfdChunk& chunk : PlanEventfdChunks(
             0, fds, std::max<uint32_t>(link.server.max_msg_fds, 1))) {
      if (chunk.fds.empty()) continue;  // nothing is wired on a new server
      SetIrqs request;
      request.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
      request.index = index;
      request.start = chunk.start;
      request.count = chunk.count;
      window->Add(Command::kDeviceSetIrqs, EncodeSetIrqs(request),
                  std::move(chunk.fds));
    }
    for (const IrqJournal::Run& run : irq_journal_.MaskedRuns(index)) {
      SetIrqs request;
      request.flags = kIrqSetDataNone | kIrqSetActionMask;
      request.index = index;
      request.start = run.start;
      request.count = run.count;
      window->Add(Command::kDeviceSetIrqs, EncodeSetIrqs(request));
    }
  }
  return absl::OkStatus();
}

void Client::InstallLinkLocked(std::shared_ptr<Link> link,
                               DeviceDescription description,
                               std::vector<UniqueFd> region_fds) {
  const bool reconnect = state_.state == ClientState::kReconnecting;
  region_fds_.clear();
  any_mappable_ = false;
  for (size_t i = 0; i < region_fds.size(); ++i) {
    region_fds_.push_back(std::make_shared<UniqueFd>(std::move(region_fds[i])));
    const RegionInfo& info = description.regions[i].info;
    if ((info.flags & kRegionInfoFlagMmap) != 0) any_mappable_ = true;
    // Live mappings of this region now reach the new server's memory.
    if (mappings_->live() > 0) mappings_->Remap(info, region_fds_.back()->get());
  }
  device_ = std::move(description);
  link_ = std::move(link);
  if (reconnect) {
    counters_->reconnects.fetch_add(1);
    Log(LogLevel::kInfo, kComponent, "reconnected",
        {{"socket", options_.socket_path},
         {"attempt", absl::StrCat(state_.attempt)}});
  }
  state_.last_error = absl::OkStatus();
  SetStateLocked(ClientState::kConnected);
  PublishLocked();
}

// ---------------------------------------------------------------------------
// Receiving and serving

void Client::StartReceiver(Link* link, bool twin) {
  std::thread thread([this, link, twin] { ReceiveLoop(link, twin); });
  (twin ? link->twin_receiver : link->main_receiver) = std::move(thread);
}

void Client::ReceiveLoop(Link* link, bool twin) {
  if (!twin) {
    MainReceiveLoop(link);
    return;
  }
  std::vector<uint8_t> buffer;  // reused for DMA_READ data
  Message message;              // reused receive buffer
  for (;;) {
    absl::StatusOr<bool> received = link->twin->ReceiveInto(&message);
    if (!received.ok()) {
      if (!link->lost.load()) {
        Log(LogLevel::kWarn, kComponent, "connection lost",
            {{"error", ErrorText(received.status())}, {"socket", "twin"}});
      }
      OnLinkLost(link, received.status());
      return;
    }
    if (*received) HandleIncoming(*link, /*twin=*/true, message, &buffer);
  }
}

void Client::MainReceiveLoop(Link* link) {
  std::vector<uint8_t> buffer;  // reused for DMA_READ data
  Message message;              // reused receive buffer
  const auto read_until_error = [&]() -> absl::Status {
    for (;;) {
      absl::StatusOr<bool> received = link->main->ReceiveInto(&message);
      if (!received.ok()) return received.status();
      if (*received) HandleIncoming(*link, /*twin=*/false, message, &buffer);
    }
  };
  const auto lost = [&](const absl::Status& why) {
    if (!link->lost.load()) {
      Log(LogLevel::kWarn, kComponent, "connection lost",
          {{"error", ErrorText(why)}, {"socket", "main"}});
    }
    FailLink(link, why);
  };
  // While the server may send requests on the main socket (no twin socket,
  // or VERSION not done yet): read everything, one message per turn of the
  // reader role.
  for (;;) {
    {
      absl::MutexLock lock(&link->io_mu);
      link->io_mu.Await(absl::Condition(&Link::RoleFree, link));
      if (link->requesters_read.load(std::memory_order_acquire)) break;
      link->reader = kReceiverRole;
    }
    absl::StatusOr<bool> received = link->main->ReceiveInto(&message);
    if (received.ok() && *received) {
      HandleIncoming(*link, /*twin=*/false, message, &buffer);
    }
    {
      absl::MutexLock lock(&link->io_mu);
      link->ReleaseReaderLocked();
    }
    if (!received.ok()) {
      lost(received.status());
      return;
    }
  }
  // Requesters read their own replies now. Wait for the hang-up only:
  // POLLRDHUP (with the implicit POLLHUP/POLLERR) is not woken by arriving
  // data, so this thread costs nothing per request.
  const int fd = link->main->fd();
  for (;;) {
    struct pollfd p = {fd, POLLRDHUP, 0};
    const int ready = ::poll(&p, 1, -1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0 ||
        (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) {
      break;
    }
  }
  // The server hung up (or Shutdown()): take the role, deliver the replies
  // nobody has read yet, then report the loss.
  {
    absl::MutexLock lock(&link->io_mu);
    link->io_mu.Await(absl::Condition(&Link::RoleFree, link));
    link->reader = kReceiverRole;
  }
  const absl::Status why = read_until_error();
  {
    absl::MutexLock lock(&link->io_mu);
    link->ReleaseReaderLocked();
  }
  lost(why);
}

void Client::ReportViolation(Link& link, bool twin, absl::string_view what,
                             const absl::Status& status) {
  counters_->unexpected_messages.fetch_add(1);
  const bool loud = link.violations.fetch_add(1) < kLoudViolations;
  Log(loud ? LogLevel::kWarn : LogLevel::kDebug, kComponent, what,
      {{"error", ErrorText(status)}, {"socket", twin ? "twin" : "main"}});
}

void Client::HandleIncoming(Link& link, bool twin, Message& message,
                            std::vector<uint8_t>* buffer) {
  if (message.header.is_reply()) {
    if (twin) {
      ReportViolation(link, twin,
                      "reply on the twin socket (we send no requests there)",
                      absl::OkStatus());
      return;
    }
    absl::Status delivered = link.tracker.Complete(std::move(message));
    if (!delivered.ok()) {
      ReportViolation(link, twin, "unexpected reply dropped", delivered);
    }
    return;
  }
  if (!link.negotiated.load(std::memory_order_acquire)) {
    ReportViolation(link, twin,
                    "server request before VERSION completed; not answered",
                    absl::OkStatus());
    return;
  }
  ServeServerRequest(link, twin, message, buffer);
}

void Client::ServeServerRequest(Link& link, bool twin, Message& request,
                                std::vector<uint8_t>* buffer) {
  const Header header = request.header;
  DecodeLimits limits;
  limits.max_data_xfer_size = options_.max_data_xfer_size;
  Connection& conn = twin ? *link.twin : *link.main;
  absl::Mutex& send_mu = twin ? link.twin_send_mu : link.main_send_mu;

  absl::Status failure;
  absl::Status sent_in_place;
  uint8_t access_header[16];
  absl::Span<const uint8_t> data;
  if (!request.fds.empty() || request.fds_truncated) {
    failure = ErrnoError(EINVAL, absl::StrCat(CommandName(header.cmd),
                                              " request carries fds"));
  } else if (header.cmd == static_cast<uint16_t>(Command::kDmaRead)) {
    absl::StatusOr<DmaAccess> access =
        DecodeDmaReadRequest(request.payload, limits);
    if (!access.ok()) {
      failure = access.status();
    } else if (access->count > 0 &&
               dma_space_.ReadInPlace(
                   access->address, access->count,
                   [&](absl::Span<const uint8_t> guest) {
                     // The reply is gathered from guest memory: no copy.
                     EncodeDmaAccessHeaderTo(access->address, access->count,
                                             DmaLayout::kSpec, access_header);
                     counters_->dma_reads_served.fetch_add(1);
                     counters_->dma_bytes_read.fetch_add(access->count);
                     absl::MutexLock lock(&send_mu);
                     sent_in_place = SendReplyParts(conn, header,
                                                    access_header, guest);
                   })) {
      if (!sent_in_place.ok()) OnLinkLost(&link, sent_in_place);
      return;
    } else {
      buffer->resize(access->count);
      failure = dma_space_.Read(access->address, absl::MakeSpan(*buffer));
      if (failure.ok()) {
        EncodeDmaAccessHeaderTo(access->address, access->count,
                                DmaLayout::kSpec, access_header);
        data = *buffer;
        counters_->dma_reads_served.fetch_add(1);
        counters_->dma_bytes_read.fetch_add(access->count);
      }
    }
  } else if (header.cmd == static_cast<uint16_t>(Command::kDmaWrite)) {
    absl::StatusOr<DmaAccess> access =
        DecodeDmaWriteRequest(request.payload, limits);
    if (!access.ok()) {
      failure = access.status();
    } else {
      failure = dma_space_.Write(access->address, access->data);
      if (failure.ok()) {
        EncodeDmaAccessHeaderTo(access->address, access->count,
                                DmaLayout::kSpec, access_header);
        counters_->dma_writes_served.fetch_add(1);
        counters_->dma_bytes_written.fetch_add(access->count);
      }
    }
  } else {
    failure = ErrnoError(ENOSYS, absl::StrCat("the client does not serve ",
                                              CommandName(header.cmd)));
  }

  // Counters are updated before the reply, so a peer that saw the reply
  // sees them counted.
  if (!failure.ok()) {
    counters_->dma_errors.fetch_add(1);
    Log(LogLevel::kDebug, kComponent, "server request failed",
        {{"cmd", CommandName(header.cmd)}, {"error", ErrorText(failure)}});
  }
  absl::Status sent;
  {
    absl::MutexLock lock(&send_mu);
    sent = failure.ok()
               ? SendReplyParts(conn, header, access_header, data)
               : SendErrorReply(conn, header, failure);
  }
  if (!sent.ok()) OnLinkLost(&link, sent);
}

absl::Status Client::SendOnLink(Link& link, bool twin, const Header& header,
                                absl::Span<const uint8_t> part1,
                                absl::Span<const uint8_t> part2,
                                absl::Span<const int> fds) {
  Connection& conn = twin ? *link.twin : *link.main;
  absl::MutexLock lock(twin ? &link.twin_send_mu : &link.main_send_mu);
  return conn.SendParts(header, part1, part2, fds);
}

void Client::OnLinkLost(Link* link, const absl::Status& why) {
  if (link->lost.exchange(true)) return;
  {
    absl::MutexLock lock(&mu_);
    if (link_.get() == link) {
      counters_->disconnects.fetch_add(1);
      lost_link_ = std::move(link_);
      manager_cv_.SignalAll();
      state_.last_error = why;
      if (!closing_) {
        if (options_.reconnect.enabled) {
          SetStateLocked(ClientState::kReconnecting);
          state_.attempt = 0;
          state_.reconnect_deadline =
              absl::Now() + options_.reconnect.deadline;
        } else {
          SetStateLocked(ClientState::kFailed);
        }
        PublishLocked();
      }
    }
  }
  link->tracker.FailAll(DisconnectError(why));
  // Only the main socket: `twin` may still be being set up by the thread
  // that owns the link; its ShutdownAndJoin() closes both.
  link->main->Shutdown();
}

namespace {

// Largest reply buffer a requester thread keeps for itself (larger ones go
// back to the link, under its lock).
constexpr size_t kThreadSparePayloadMax = 64 * 1024;

// The calling thread's spare reply buffer: small replies are received into it
// and handed back without any lock.
std::vector<uint8_t>& ThreadSparePayload() {
  thread_local std::vector<uint8_t> spare;
  return spare;
}

// Keeps `payload`'s buffer as the thread's spare if it is small enough
// (and larger than the spare it has); false for a buffer too large to keep.
bool KeepAsThreadSpare(std::vector<uint8_t>& payload) {
  if (payload.capacity() > kThreadSparePayloadMax) return false;
  std::vector<uint8_t>& spare = ThreadSparePayload();
  if (payload.capacity() > spare.capacity()) spare.swap(payload);
  return true;
}

}  // namespace

void Client::RecyclePayload(Link& link, std::vector<uint8_t> payload) {
  if (KeepAsThreadSpare(payload)) return;
  absl::MutexLock lock(&link.io_mu);
  if (payload.capacity() > link.spare_payload.capacity()) {
    link.spare_payload.swap(payload);
  }
}

void Client::FailLink(Link* link, const absl::Status& why) {
  OnLinkLost(link, why);
  // A request registered after OnLinkLost's FailAll (it raced with the
  // loss) would otherwise wait for its deadline.
  link->tracker.FailAll(DisconnectError(why));
}

// ---------------------------------------------------------------------------
// Requests

absl::StatusOr<Message> Client::CallOnLink(Link& link,
                                           const OutgoingRequest& req,
                                           absl::Time deadline) {
  ReplyWaiter waiter(&link);
  absl::Status started = StartOnLink(link, req, deadline, waiter);
  if (!started.ok()) return started;
  return FinishOnLink(link, req, deadline, waiter);
}

absl::Status Client::StartOnLink(Link& link, const OutgoingRequest& req,
                                 absl::Time deadline, ReplyWaiter& waiter) {
  absl::StatusOr<uint16_t> msg_id = link.tracker.StartAsync(
      req.cmd, deadline, [&waiter](absl::StatusOr<Message> outcome) {
        waiter.Deliver(std::move(outcome));
      });
  if (!msg_id.ok()) return msg_id.status();
  waiter.msg_id = *msg_id;
  waiter.cmd = static_cast<uint16_t>(req.cmd);
  waiter.registered = true;
  if (!req.reply_into.empty()) {
    waiter.placement.msg_id = *msg_id;
    waiter.placement.cmd = waiter.cmd;
    waiter.placement.keep = req.reply_keep;
    waiter.placement.into = req.reply_into;
  }
  // `lost` is set before FailAll: a request started after FailAll sees it
  // and is failed here (FinishOnLink then returns at once).
  if (link.lost.load()) {
    link.tracker.FailAll(
        DisconnectError(ErrnoError(ENOTCONN, "connection already lost")));
    return absl::OkStatus();
  }
  Header header;
  header.msg_id = *msg_id;
  header.cmd = static_cast<uint16_t>(req.cmd);
  header.flags = kFlagsTypeCommand;
  counters_->requests.fetch_add(1);
  absl::Status sent =
      SendOnLink(link, false, header, req.part1, req.part2, req.fds);
  if (!sent.ok()) FailLink(&link, sent);
  return absl::OkStatus();
}

absl::StatusOr<Message> Client::FinishOnLink(Link& link,
                                             const OutgoingRequest& req,
                                             absl::Time deadline,
                                             ReplyWaiter& waiter) {
  absl::StatusOr<Message> reply = AwaitReply(link, waiter, deadline);
  if (!reply.ok()) {
    if (ErrnoOf(reply.status()) == ETIMEDOUT && absl::Now() >= deadline) {
      counters_->timeouts.fetch_add(1);
    } else if (!IsDisconnectError(reply.status()) &&
               ErrnoOf(reply.status()) != ECANCELED) {
      counters_->request_errors.fetch_add(1);  // an error reply
    }
    return reply;
  }
  if (reply->fds.size() > req.max_reply_fds) {
    return ProtocolError(absl::StrCat(CommandName(req.cmd), " reply carries ",
                                      reply->fds.size(), " fds; expected at most ",
                                      req.max_reply_fds));
  }
  return reply;
}

absl::StatusOr<Message> Client::AwaitReply(Link& link, ReplyWaiter& waiter,
                                           absl::Time deadline) {
  std::vector<uint8_t> buffer;  // for a server request read on the way
  Message message;
  for (;;) {
    bool reading = false;
    {
      absl::MutexLock lock(&link.io_mu);
      if (!waiter.done && link.reader != &waiter) {
        if (link.requesters_read.load(std::memory_order_acquire)) {
          if (link.reader == nullptr) {
            link.reader = &waiter;  // the role is free: read ourselves
            if (message.payload.capacity() == 0) {
              message.payload.swap(ThreadSparePayload());
            }
            if (message.payload.capacity() < link.spare_payload.capacity()) {
              message.payload.swap(link.spare_payload);
            }
          } else if (!waiter.queued) {
            link.role_queue.push_back(&waiter);
            waiter.queued = true;
          }
        }
        if (link.reader != &waiter) {
          link.io_mu.AwaitWithDeadline(
              absl::Condition(&ReplyWaiter::Ready, &waiter), deadline);
        }
      }
      if (waiter.done && link.reader == &waiter &&
          link.main->HasBufferedMessage()) {
        // Replies to other requesters are already in our buffer (one
        // recvmsg often brings several): deliver them before letting go,
        // so that their threads wake with the answer instead of taking the
        // role in turn just to parse it.
        reading = true;
      } else if (waiter.done) {
        if (link.reader == &waiter) link.ReleaseReaderLocked();
        // Not handed out (others' replies only): keep the buffer.
        KeepAsThreadSpare(message.payload);
        return *std::move(waiter.result);
      } else {
        reading = link.reader == &waiter;
        if (!reading) link.DequeueLocked(&waiter);  // timed out waiting
      }
    }
    if (!reading) {
      // The deadline passed while waiting: fail the request (the callback
      // marks us done).
      link.tracker.ExpireOverdue(absl::Now());
      continue;
    }
    // We hold the reader role: read one message and dispatch it (ours or
    // another requester's reply, or a server request).
    // (`waiter.done` may be set by another thread meanwhile, under io_mu:
    // not read here. A reply placed for a request that failed meanwhile
    // only wrote into the caller's buffer, which outlives this call.)
    absl::StatusOr<bool> received = link.main->ReceiveInto(
        &message, deadline,
        waiter.placement.into.empty() ? nullptr : &waiter.placement);
    if (received.ok()) {
      if (!*received) continue;
      const Header& h = message.header;
      if (waiter.registered && h.msg_id == waiter.msg_id && h.is_reply() &&
          link.tracker.Claim(h.msg_id, h.cmd)) {
        // Our own reply: kept where it was received, no callback. Claim()
        // took the request out of the tracker, so no other thread can
        // resolve it now: the result fields are ours (as in
        // ReplyWaiter::Deliver's own-thread case).
        absl::Status status = ReplyStatus(message);
        if (status.ok()) {
          waiter.result.emplace(std::move(message));
        } else {
          waiter.result.emplace(std::move(status));
        }
        waiter.done = true;
        continue;
      }
      HandleIncoming(link, /*twin=*/false, message, &buffer);
      continue;
    }
    {
      absl::MutexLock lock(&link.io_mu);
      link.ReleaseReaderLocked();
    }
    if (ErrnoOf(received.status()) == ETIMEDOUT) {
      link.tracker.ExpireOverdue(absl::Now());  // not final: just our deadline
    } else {
      if (!link.lost.load()) {
        Log(LogLevel::kWarn, kComponent, "connection lost",
            {{"error", ErrorText(received.status())}, {"socket", "main"}});
      }
      FailLink(&link, received.status());
    }
  }
}

absl::StatusOr<std::shared_ptr<Client::Link>> Client::AwaitLink(
    absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  bool waited = false;
  for (;;) {
    switch (state_.state) {
      case ClientState::kConnected:
        if (link_) return link_;
        return ErrnoError(ENOTCONN, "connected without a link (bug)");
      case ClientState::kClosed:
        return ErrnoError(ECANCELED, "client closed");
      case ClientState::kFailed:
        if (waited) {
          counters_->timeouts.fetch_add(1);
          return ErrnoError(
              ETIMEDOUT, absl::StrCat("reconnection gave up: ",
                                      ErrorText(state_.last_error)));
        }
        return ErrnoError(ENOTCONN,
                          absl::StrCat("not connected (client failed): ",
                                       ErrorText(state_.last_error)));
      case ClientState::kReconnecting:
        break;
    }
    waited = true;
    const bool changed = mu_.AwaitWithDeadline(
        absl::Condition(
            +[](Client* c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return c->state_.state != ClientState::kReconnecting;
            },
            this),
        deadline);
    if (!changed) {
      counters_->timeouts.fetch_add(1);
      return ErrnoError(ETIMEDOUT, absl::StrCat(
                                       "timed out waiting for the reconnect: ",
                                       ErrorText(state_.last_error)));
    }
  }
}

absl::StatusOr<Message> Client::Call(const OutgoingRequest& req,
                                     absl::Time deadline,
                                     std::shared_ptr<Link>* link_used,
                                     std::shared_ptr<Link> link) {
  for (bool retry = false;; retry = true) {
    if (link == nullptr) {
      absl::StatusOr<std::shared_ptr<Link>> awaited = AwaitLink(deadline);
      if (!awaited.ok()) return awaited.status();
      link = *std::move(awaited);
    }
    if (retry) counters_->retried.fetch_add(1);
    absl::StatusOr<Message> reply = CallOnLink(*link, req, deadline);
    if (link_used != nullptr) *link_used = link;
    link = nullptr;  // a retry waits for the next link
    if (!IsDisconnectError(reply.status())) return reply;
    if (!req.idempotent || !options_.reconnect.enabled ||
        !options_.reconnect.retry_idempotent) {
      counters_->failed_by_disconnect.fetch_add(1);
      return reply;
    }
  }
}

absl::Status Client::WithJournal(
    absl::Time deadline,
    const std::function<absl::Status(const std::shared_ptr<Link>&)>& op) {
  for (;;) {
    absl::StatusOr<std::shared_ptr<Link>> link = AwaitLink(deadline);
    if (!link.ok()) return link.status();
    absl::MutexLock journal_lock(&journal_mu_);
    {
      absl::MutexLock lock(&mu_);
      if (link_ != *link) continue;  // replaced meanwhile: wait again
    }
    return op(*link);
  }
}

absl::Status Client::SendPosted(Link& link, const OutgoingRequest& req) {
  if (link.lost.load()) {
    return DisconnectError(ErrnoError(ENOTCONN, "connection already lost"));
  }
  Header header;
  header.msg_id = link.next_posted_id.fetch_add(1);
  header.cmd = static_cast<uint16_t>(req.cmd);
  header.flags = kFlagsTypeCommand | kFlagsNoReply;
  absl::Status sent =
      SendOnLink(link, false, header, req.part1, req.part2, req.fds);
  if (!sent.ok()) {
    OnLinkLost(&link, sent);
    return DisconnectError(sent);
  }
  counters_->posted_writes.fetch_add(1);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Region access

// What a region access needs from the shared state, read under one lock.
struct Client::AccessSnapshot {
  uint64_t chunk = 1;
  bool posted_allowed = false;  // posted writes permitted by the device
  std::shared_ptr<Link> link;   // null unless connected
};

absl::Status Client::ValidateRegionAccess(uint32_t region, uint64_t offset,
                                          uint64_t size, uint32_t need_flag,
                                          AccessSnapshot* snapshot) const {
  absl::MutexLock lock(&mu_);
  if (region >= device_.regions.size()) {
    return ErrnoError(EINVAL, absl::StrCat("region ", region,
                                           " does not exist (the device has ",
                                           device_.regions.size(), ")"));
  }
  const RegionInfo& info = device_.regions[region].info;
  if ((info.flags & need_flag) == 0) {
    return ErrnoError(EINVAL,
                      absl::StrCat("region ", RegionName(region), " is not ",
                                   need_flag == kRegionInfoFlagRead
                                       ? "readable"
                                       : "writable"));
  }
  if (offset > info.size || size > info.size - offset) {
    return ErrnoError(EINVAL, absl::StrCat("access [0x", absl::Hex(offset),
                                           ", +0x", absl::Hex(size),
                                           ") is outside region ",
                                           RegionName(region), " (size 0x",
                                           absl::Hex(info.size), ")"));
  }
  snapshot->chunk = std::max<uint64_t>(device_.chunk_size, 1);
  snapshot->posted_allowed = options_.allow_posted_writes && !any_mappable_;
  if (state_.state == ClientState::kConnected) snapshot->link = link_;
  return absl::OkStatus();
}

absl::Status Client::Read(uint32_t region, uint64_t offset,
                          absl::Span<uint8_t> out) {
  AccessSnapshot snapshot;
  absl::Status valid = ValidateRegionAccess(region, offset, out.size(),
                                            kRegionInfoFlagRead, &snapshot);
  if (!valid.ok()) return valid;
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  uint64_t done = 0;
  while (done < out.size()) {
    if (done > 0) {  // a reconnect may have changed the chunk size meanwhile
      absl::MutexLock lock(&mu_);
      snapshot.chunk = std::max<uint64_t>(device_.chunk_size, 1);
    }
    const uint32_t count = static_cast<uint32_t>(
        std::min<uint64_t>(snapshot.chunk, out.size() - done));
    uint8_t request[16];
    EncodeRegionAccessHeaderTo(offset + done, region, count, request);
    OutgoingRequest out_request{Command::kRegionRead, request};
    out_request.idempotent = true;
    // The data lands in `out` straight from the socket (no copy through a
    // reply buffer) when the reader is this thread.
    out_request.reply_into = out.subspan(done, count);
    out_request.reply_keep = kRegionAccessHeaderBytes;
    std::shared_ptr<Link> link_used;
    absl::StatusOr<Message> reply =
        Call(out_request, deadline, &link_used, std::move(snapshot.link));
    if (!reply.ok()) return reply.status();  // link_used may be null then
    absl::Status taken =
        TakeReadReply(std::move(reply), *link_used, region, offset + done,
                      out.subspan(done, count));
    if (!taken.ok()) return taken;
    done += count;
    counters_->region_bytes_read.fetch_add(count);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> Client::Read(uint32_t region,
                                                  uint64_t offset,
                                                  uint64_t size) {
  if (size > (uint64_t{1} << 32)) {
    return ErrnoError(E2BIG, "read larger than 4 GiB in one call");
  }
  std::vector<uint8_t> out(size);
  absl::Status s = Read(region, offset, absl::MakeSpan(out));
  if (!s.ok()) return s;
  return out;
}

absl::Status Client::TakeReadReply(absl::StatusOr<Message> reply, Link& link,
                                   uint32_t region, uint64_t offset,
                                   absl::Span<uint8_t> out) {
  if (!reply.ok()) return reply.status();
  const uint32_t count = static_cast<uint32_t>(out.size());
  absl::StatusOr<RegionAccess> access =
      reply->payload_placed
          // The data is in `out` already: check the access header alone.
          ? DecodeRegionWriteReply(reply->payload)
          : DecodeRegionReadReply(reply->payload, count);
  if (!access.ok()) return BadReply("REGION_READ", access.status());
  if (access->count != count || access->offset != offset ||
      access->region != region) {
    return ProtocolError(absl::StrCat(
        "REGION_READ reply for region ", access->region, " offset 0x",
        absl::Hex(access->offset), " count ", access->count,
        " answers region ", region, " offset 0x", absl::Hex(offset),
        " count ", count));
  }
  if (!reply->payload_placed) {
    std::memcpy(out.data(), access->data.data(), count);
  }
  RecyclePayload(link, std::move(reply->payload));
  return absl::OkStatus();
}

absl::Status Client::ReadMany(absl::Span<const ReadRequest> reads) {
  if (reads.empty()) return absl::OkStatus();
  if (reads.size() > kMaxReadManyBatch) {
    return ErrnoError(EINVAL, absl::StrCat("ReadMany of ", reads.size(),
                                           " reads; at most ",
                                           kMaxReadManyBatch));
  }
  AccessSnapshot snapshot;
  for (const ReadRequest& read : reads) {
    absl::Status valid = ValidateRegionAccess(
        read.region, read.offset, read.out.size(), kRegionInfoFlagRead,
        &snapshot);
    if (!valid.ok()) return valid;
    if (read.out.size() > snapshot.chunk) {
      return ErrnoError(EINVAL, absl::StrCat("ReadMany: a read of ",
                                             read.out.size(),
                                             " bytes needs more than one "
                                             "request (chunk size ",
                                             snapshot.chunk, ")"));
    }
  }
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  std::shared_ptr<Link> link = std::move(snapshot.link);
  if (link == nullptr) {
    absl::StatusOr<std::shared_ptr<Link>> awaited = AwaitLink(deadline);
    if (!awaited.ok()) return awaited.status();
    link = *std::move(awaited);
  }

  // Every request goes out before the first reply is awaited, all in one
  // sendmsg(): the server finds them together and answers them together
  // (server/session.cc coalesces the replies).
  std::deque<std::array<uint8_t, kRegionAccessHeaderBytes>> headers;
  std::deque<OutgoingRequest> requests;
  for (const ReadRequest& read : reads) {
    auto& header = headers.emplace_back();
    EncodeRegionAccessHeaderTo(read.offset, read.region,
                               static_cast<uint32_t>(read.out.size()),
                               header.data());
    requests.emplace_back(Command::kRegionRead, header);
  }
  std::vector<absl::StatusOr<Message>> replies =
      CallManyOnLink(*link, requests, deadline, kMaxReadManyBatch);
  absl::Status first_error;
  std::vector<size_t> interrupted;  // by a disconnect: retried below
  absl::Status disconnect;
  for (size_t i = 0; i < reads.size(); ++i) {
    const ReadRequest& read = reads[i];
    if (!replies[i].ok() && IsDisconnectError(replies[i].status())) {
      interrupted.push_back(i);
      if (disconnect.ok()) disconnect = replies[i].status();
      continue;
    }
    absl::Status taken = TakeReadReply(std::move(replies[i]), *link,
                                       read.region, read.offset, read.out);
    if (taken.ok()) {
      counters_->region_bytes_read.fetch_add(read.out.size());
    } else if (first_error.ok()) {
      first_error = taken;
    }
  }
  if (!first_error.ok()) return first_error;
  if (!interrupted.empty() &&
      (!options_.reconnect.enabled || !options_.reconnect.retry_idempotent)) {
    counters_->failed_by_disconnect.fetch_add(1);
    return disconnect;
  }
  for (size_t i : interrupted) {
    // Read() waits for the reconnect and retries (or fails) as it would.
    absl::Status retried = Read(reads[i].region, reads[i].offset, reads[i].out);
    if (!retried.ok()) return retried;
  }
  return absl::OkStatus();
}

absl::Status Client::Write(uint32_t region, uint64_t offset,
                           absl::Span<const uint8_t> data, WriteMode mode) {
  AccessSnapshot snapshot;
  absl::Status valid = ValidateRegionAccess(region, offset, data.size(),
                                            kRegionInfoFlagWrite, &snapshot);
  if (!valid.ok()) return valid;
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  uint64_t done = 0;
  while (done < data.size()) {
    if (done > 0) {  // a reconnect may have changed these meanwhile
      absl::MutexLock lock(&mu_);
      snapshot.chunk = std::max<uint64_t>(device_.chunk_size, 1);
      snapshot.posted_allowed =
          options_.allow_posted_writes && !any_mappable_;
    }
    const bool posted = mode == WriteMode::kPosted && snapshot.posted_allowed;
    const uint32_t count = static_cast<uint32_t>(
        std::min<uint64_t>(snapshot.chunk, data.size() - done));
    uint8_t access_header[16];
    EncodeRegionAccessHeaderTo(offset + done, region, count, access_header);
    const OutgoingRequest request{Command::kRegionWrite, access_header,
                                  data.subspan(done, count)};
    if (posted) {
      std::shared_ptr<Link> link = std::move(snapshot.link);
      if (link == nullptr) {
        absl::StatusOr<std::shared_ptr<Link>> awaited = AwaitLink(deadline);
        if (!awaited.ok()) return awaited.status();
        link = *std::move(awaited);
      }
      absl::Status s = SendPosted(*link, request);
      if (!s.ok()) return s;
    } else {
      std::shared_ptr<Link> link_used;
      absl::StatusOr<Message> reply =
          Call(request, deadline, &link_used, std::move(snapshot.link));
      if (!reply.ok()) return reply.status();
      absl::StatusOr<RegionAccess> access =
          DecodeRegionWriteReply(reply->payload);
      if (!access.ok()) return BadReply("REGION_WRITE", access.status());
      RecyclePayload(*link_used, std::move(reply->payload));
      if (access->count != count || access->offset != offset + done ||
          access->region != region) {
        return ProtocolError(absl::StrCat(
            "REGION_WRITE reply for region ", access->region, " offset 0x",
            absl::Hex(access->offset), " count ", access->count,
            " answers region ", region, " offset 0x",
            absl::Hex(offset + done), " count ", count));
      }
    }
    done += count;
    counters_->region_bytes_written.fetch_add(count);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Client::ReadValue(uint32_t region, uint64_t offset,
                                           int width) {
  if (width != 1 && width != 2 && width != 4 && width != 8) {
    return ErrnoError(EINVAL, absl::StrCat("width ", width, ": want 1/2/4/8"));
  }
  uint8_t bytes[8] = {};
  absl::Status s =
      Read(region, offset, absl::MakeSpan(bytes, static_cast<size_t>(width)));
  if (!s.ok()) return s;
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

absl::Status Client::WriteValue(uint32_t region, uint64_t offset, int width,
                                uint64_t value, WriteMode mode) {
  if (width != 1 && width != 2 && width != 4 && width != 8) {
    return ErrnoError(EINVAL, absl::StrCat("width ", width, ": want 1/2/4/8"));
  }
  uint8_t bytes[8];
  for (int i = 0; i < width; ++i) bytes[i] = static_cast<uint8_t>(value >> (8 * i));
  return Write(region, offset,
               absl::MakeConstSpan(bytes, static_cast<size_t>(width)), mode);
}

absl::StatusOr<std::unique_ptr<RegionMapping>> Client::MapRegion(
    uint32_t region) {
  RegionInfo info;
  std::shared_ptr<UniqueFd> fd;
  {
    absl::MutexLock lock(&mu_);
    if (state_.state != ClientState::kConnected) {
      return ErrnoError(ENOTCONN, absl::StrCat("cannot map while ",
                                               ClientStateName(state_.state)));
    }
    if (region >= device_.regions.size()) {
      return ErrnoError(EINVAL, absl::StrCat("region ", region,
                                             " does not exist"));
    }
    info = device_.regions[region].info;
    fd = region_fds_[region];
    // Mapped under mu_ so a reconnect cannot swap the fd in between.
    return mappings_->Map(info, fd->get());
  }
}

// ---------------------------------------------------------------------------
// Guest memory

absl::Status Client::DmaMap(const DmaRegion& region) {
  absl::Status valid = DmaSpace::Validate(region);
  if (!valid.ok()) return valid;
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  return WithJournal(deadline, [&](const std::shared_ptr<Link>& link) {
    const uint64_t page = LowestPageSize(link->server.pgsizes);
    if (region.iova % page != 0 || region.size % page != 0 ||
        (region.fd >= 0 && region.fd_offset % page != 0)) {
      return ErrnoError(EINVAL,
                        absl::StrCat("DMA region iova/size/offset must be "
                                     "multiples of the server's page size 0x",
                                     absl::Hex(page)));
    }
    if (dma_space_.size() >= link->server.max_dma_maps) {
      return ErrnoError(ENOSPC, absl::StrCat("the server allows ",
                                             link->server.max_dma_maps,
                                             " DMA maps"));
    }
    if (region.fd >= 0 && link->server.max_msg_fds == 0) {
      return ErrnoError(EINVAL, "the server accepts no fds: map without one");
    }
    UniqueFd dup;
    if (region.fd >= 0) {
      dup.Reset(::fcntl(region.fd, F_DUPFD_CLOEXEC, 0));
      if (!dup.valid()) return ErrnoError(errno, "dup of the DMA region fd");
    }
    const int fd = dup.get();
    // Served from now on: the server may use it as soon as it processed the
    // map, possibly before its reply reaches the caller.
    absl::Status added = dma_space_.Add(region, std::move(dup));
    if (!added.ok()) return added;
    DmaMapRequest request;
    request.flags = region.prot;
    request.offset = fd >= 0 ? region.fd_offset : 0;
    request.address = region.iova;
    request.size = region.size;
    const Bytes payload = EncodeDmaMap(request);
    OutgoingRequest out{Command::kDmaMap, payload};
    if (fd >= 0) out.fds = absl::MakeConstSpan(&fd, 1);
    absl::StatusOr<Message> reply = CallOnLink(*link, out, deadline);
    if (!reply.ok()) {
      dma_space_.Remove(region.iova, region.size).IgnoreError();
      return reply.status();
    }
    return absl::OkStatus();
  });
}

absl::Status Client::Unmap(const DmaUnmapRequest& request) {
  const bool all = (request.flags & kDmaUnmapFlagAll) != 0;
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  bool sent = false;
  absl::Status status = WithJournal(deadline, [&](const std::shared_ptr<Link>& link) {
    sent = true;
    if (!all) {
      bool found = false;
      for (const DmaSpace::Entry& e : dma_space_.Snapshot()) {
        found |= e.region.iova == request.address &&
                 e.region.size == request.size;
      }
      if (!found) {
        return ErrnoError(ENOENT, absl::StrCat("no DMA map at exactly 0x",
                                               absl::Hex(request.address),
                                               " size 0x",
                                               absl::Hex(request.size)));
      }
    }
    const Bytes payload = EncodeDmaUnmap(request);
    absl::StatusOr<Message> reply = CallOnLink(
        *link, OutgoingRequest{Command::kDmaUnmap, payload}, deadline);
    // The server dropped its references before replying (or lost them
    // with the connection): stop serving and stop replaying either way.
    if (all) {
      dma_space_.Clear();
    } else {
      dma_space_.Remove(request.address, request.size).IgnoreError();
    }
    if (!reply.ok() && !IsDisconnectError(reply.status())) {
      return reply.status();
    }
    return absl::OkStatus();
  });
  if (!sent) {
    // No connection within the deadline (failed, closed, or still
    // reconnecting): the contract holds all the same. The caller may free
    // the memory now, so it must neither be served nor replayed (the
    // journal lock orders this with a replay in progress).
    absl::MutexLock journal_lock(&journal_mu_);
    if (all) {
      dma_space_.Clear();
    } else {
      dma_space_.Remove(request.address, request.size).IgnoreError();
    }
  }
  return status;
}

absl::Status Client::DmaUnmap(uint64_t iova, uint64_t size) {
  DmaUnmapRequest request;
  request.address = iova;
  request.size = size;
  return Unmap(request);
}

absl::Status Client::DmaUnmapAll() {
  DmaUnmapRequest request;
  request.flags = kDmaUnmapFlagAll;
  return Unmap(request);
}

// ---------------------------------------------------------------------------
// Interrupts

absl::StatusOr<IrqInfo> Client::IrqInfoFor(uint32_t index) const {
  absl::MutexLock lock(&mu_);
  if (index >= device_.irqs.size()) {
    return ErrnoError(EINVAL, absl::StrCat("IRQ index ", index,
                                           " does not exist (the device has ",
                                           device_.irqs.size(), ")"));
  }
  return device_.irqs[index];
}

absl::Status Client::SetIrqsOnLink(Link& link, const SetIrqs& request,
                                   absl::Span<const int> fds,
                                   absl::Time deadline) {
  const Bytes payload = EncodeSetIrqs(request);
  OutgoingRequest out{Command::kDeviceSetIrqs, payload};
  out.fds = fds;
  absl::StatusOr<Message> reply = CallOnLink(
      link, out, Earliest(deadline, absl::Now() + options_.request_timeout));
  return reply.status();
}

absl::Status Client::SetIrqEventfds(uint32_t index, uint32_t start,
                                    absl::Span<const int> fds) {
  absl::StatusOr<IrqInfo> info = IrqInfoFor(index);
  if (!info.ok()) return info.status();
  if ((info->flags & kIrqInfoEventfd) == 0) {
    return ErrnoError(ENOTSUP, absl::StrCat(IrqIndexName(index),
                                            " cannot signal eventfds"));
  }
  if (fds.empty() || start > info->count || fds.size() > info->count - start) {
    return ErrnoError(EINVAL, absl::StrCat(IrqIndexName(index), " has ",
                                           info->count, " vectors; asked [",
                                           start, ", +", fds.size(), ")"));
  }
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  return WithJournal(deadline, [&](const std::shared_ptr<Link>& link)
                                   ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const bool any_fd =
        std::any_of(fds.begin(), fds.end(), [](int fd) { return fd >= 0; });
    if (any_fd && link->server.max_msg_fds == 0) {
      return ErrnoError(EINVAL, "the server accepts no fds");
    }
    for (const EventfdChunk& chunk : PlanEventfdChunks(
             start, fds, std::max<uint32_t>(link->server.max_msg_fds, 1))) {
      SetIrqs request;
      request.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
      request.index = index;
      request.start = chunk.start;
      request.count = chunk.count;
      absl::Status s = SetIrqsOnLink(*link, request, chunk.fds, deadline);
      if (!s.ok()) return s;
      // Journal what the server accepted (chunk by chunk).
      const std::vector<int> cleared(chunk.count, -1);
      s = irq_journal_.SetTriggers(
          index, chunk.start,
          chunk.fds.empty() ? absl::MakeConstSpan(cleared)
                            : absl::MakeConstSpan(chunk.fds));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  });
}

absl::Status Client::DisableIrqs(uint32_t index) {
  absl::StatusOr<IrqInfo> info = IrqInfoFor(index);
  if (!info.ok()) return info.status();
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  return WithJournal(deadline, [&](const std::shared_ptr<Link>& link)
                                   ABSL_NO_THREAD_SAFETY_ANALYSIS {
    SetIrqs request;
    request.flags = kIrqSetDataNone | kIrqSetActionTrigger;
    request.index = index;
    absl::Status s = SetIrqsOnLink(*link, request, {}, deadline);
    if (!s.ok() && !IsDisconnectError(s)) return s;
    irq_journal_.Disable(index);
    return absl::OkStatus();
  });
}

absl::Status Client::SetMask(uint32_t index, uint32_t start, uint32_t count,
                             bool masked) {
  absl::StatusOr<IrqInfo> info = IrqInfoFor(index);
  if (!info.ok()) return info.status();
  if ((info->flags & kIrqInfoMaskable) == 0) {
    return ErrnoError(ENOTSUP, absl::StrCat(IrqIndexName(index),
                                            " is not maskable"));
  }
  if (count == 0 || start > info->count || count > info->count - start) {
    return ErrnoError(EINVAL, absl::StrCat(IrqIndexName(index), " has ",
                                           info->count, " vectors; asked [",
                                           start, ", +", count, ")"));
  }
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  return WithJournal(deadline, [&](const std::shared_ptr<Link>& link)
                                   ABSL_NO_THREAD_SAFETY_ANALYSIS {
    SetIrqs request;
    request.flags = kIrqSetDataNone |
                    (masked ? kIrqSetActionMask : kIrqSetActionUnmask);
    request.index = index;
    request.start = start;
    request.count = count;
    absl::Status s = SetIrqsOnLink(*link, request, {}, deadline);
    if (!s.ok()) return s;
    irq_journal_.SetMasked(index, start, count, masked);
    return absl::OkStatus();
  });
}

absl::Status Client::MaskIrqs(uint32_t index, uint32_t start, uint32_t count) {
  return SetMask(index, start, count, true);
}

absl::Status Client::UnmaskIrqs(uint32_t index, uint32_t start,
                                uint32_t count) {
  return SetMask(index, start, count, false);
}

absl::Status Client::TriggerIrqs(uint32_t index, uint32_t start,
                                 absl::Span<const uint8_t> which) {
  absl::StatusOr<IrqInfo> info = IrqInfoFor(index);
  if (!info.ok()) return info.status();
  if (which.empty() || start > info->count ||
      which.size() > info->count - start) {
    return ErrnoError(EINVAL, absl::StrCat(IrqIndexName(index), " has ",
                                           info->count, " vectors; asked [",
                                           start, ", +", which.size(), ")"));
  }
  SetIrqs request;
  request.flags = kIrqSetDataBool | kIrqSetActionTrigger;
  request.index = index;
  request.start = start;
  request.count = static_cast<uint32_t>(which.size());
  request.bools.assign(which.begin(), which.end());
  const Bytes payload = EncodeSetIrqs(request);
  return Call(OutgoingRequest{Command::kDeviceSetIrqs, payload},
              absl::Now() + options_.request_timeout)
      .status();
}

// ---------------------------------------------------------------------------
// Device

absl::Status Client::Reset() {
  {
    absl::MutexLock lock(&mu_);
    if ((device_.info.flags & kDeviceFlagsReset) == 0) {
      return ErrnoError(ENOTSUP, "the device does not support DEVICE_RESET");
    }
  }
  const absl::Time deadline = absl::Now() + options_.request_timeout;
  return WithJournal(deadline, [&](const std::shared_ptr<Link>& link)
                                   ABSL_NO_THREAD_SAFETY_ANALYSIS {
    absl::StatusOr<Message> reply = CallOnLink(
        *link, OutgoingRequest{Command::kDeviceReset}, deadline);
    if (!reply.ok()) return reply.status();
    irq_journal_.ClearMasks();
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------
// Reconnect

void Client::ManagerLoop() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  absl::MutexLock lock(&mu_);
  for (;;) {
    while (!closing_ && lost_link_ == nullptr) manager_cv_.Wait(&mu_);
    std::shared_ptr<Link> lost = std::move(lost_link_);
    if (lost) {
      mu_.Unlock();
      lost->ShutdownAndJoin();
      counters_->late_replies += lost->tracker.stats().late_dropped;
      lost.reset();
      mu_.Lock();
    }
    if (closing_) return;
    if (state_.state == ClientState::kReconnecting) Reconnect();
  }
}

void Client::Reconnect() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const ReconnectPolicy& policy = options_.reconnect;
  RetryPacing pacing(policy);
  // Watched from the first attempt on: a server that comes back while an
  // attempt fails is seen at the wait that follows. What queued while we
  // were connected is older than the first attempt, which looks anyway.
  if (watch_ == nullptr) {
    watch_ = std::make_unique<SocketWatch>(options_.socket_path,
                                           manager_wake_.get());
  } else {
    watch_->DiscardEvents();
  }
  for (;;) {
    if (closing_) return;
    if (absl::Now() >= state_.reconnect_deadline) {
      Log(LogLevel::kError, kComponent, "reconnection gave up at the deadline",
          {{"socket", options_.socket_path},
           {"attempts", absl::StrCat(state_.attempt)},
           {"last_error", ErrorText(state_.last_error)}});
      SetStateLocked(ClientState::kFailed);
      PublishLocked();
      return;
    }
    ++state_.attempt;
    counters_->reconnect_attempts.fetch_add(1);
    PublishLocked();
    const absl::Time deadline = state_.reconnect_deadline;
    const DeviceDescription previous = device_;
    mu_.Unlock();

    // Lock order: journal_mu_ before mu_. The journal cannot change while
    // we replay it (journal operations wait for kConnected first).
    journal_mu_.Lock();
    DeviceDescription description;
    std::vector<UniqueFd> region_fds;
    absl::StatusOr<std::shared_ptr<Link>> link =
        Establish(deadline, &previous, &description, &region_fds);
    mu_.Lock();
    if (link.ok() && !closing_) {
      InstallLinkLocked(*std::move(link), std::move(description),
                        std::move(region_fds));
      journal_mu_.Unlock();
      return;
    }
    journal_mu_.Unlock();
    if (closing_) {  // Close() owns the state now; drop what we built
      if (link.ok()) {
        mu_.Unlock();
        (*link)->ShutdownAndJoin();
        mu_.Lock();
      }
      return;
    }
    // An attempt cut short by the deadline says less than the failure of
    // the attempt before it: keep that one.
    const bool cut_short = ErrnoOf(link.status()) == ETIMEDOUT &&
                           absl::Now() >= deadline && state_.attempt > 1;
    if (!cut_short) state_.last_error = link.status();
    Log(LogLevel::kInfo, kComponent, "reconnect attempt failed",
        {{"attempt", absl::StrCat(state_.attempt)},
         {"error", ErrorText(link.status())}});
    PublishLocked();
    // Until the backoff is over, or the server creates its socket again,
    // or Close() (it writes manager_wake_ after setting closing_).
    const absl::Time wake = std::min(absl::Now() + pacing.backoff, deadline);
    mu_.Unlock();
    const SocketWatch::Woken woken = watch_->Wait(wake);
    mu_.Lock();
    pacing.After(woken, policy);
  }
}

}  // namespace vfio_user
