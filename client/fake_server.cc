#include "client/fake_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/protocol.h"

namespace vfio_user {
namespace testing {

std::string TestSocketPath(const std::string& tag) {
  // The PID alone is not unique: Bazel's sandbox runs every test process as
  // the same PID in its own namespace, while /tmp is shared.
  static const uint32_t nonce = std::random_device()();
  static std::atomic<int> counter{0};
  return absl::StrCat("/tmp/vfu-", tag, ".", ::getpid(), ".",
                      absl::Hex(nonce), ".", counter++, ".sock");
}

FakeDeviceConfig DefaultDevice() {
  FakeDeviceConfig config;
  config.info.flags = kDeviceFlagsPci | kDeviceFlagsReset;
  config.regions.resize(kPciNumRegions);
  for (uint32_t i = 0; i < kPciNumRegions; ++i) config.regions[i].index = i;
  RegionInfo& bar0 = config.regions[0];
  bar0.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite | kRegionInfoFlagMmap;
  bar0.size = 8192;
  bar0.sparse_areas = std::vector<SparseMmapArea>{{0, 4096}, {4096, 4096}};
  RegionInfo& bar2 = config.regions[2];
  bar2.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite;
  bar2.size = 4096;
  RegionInfo& cfg = config.regions[kPciConfigRegionIndex];
  cfg.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite;
  cfg.size = 256;
  config.irqs.resize(kPciNumIrqs);
  for (uint32_t i = 0; i < kPciNumIrqs; ++i) config.irqs[i].index = i;
  config.irqs[kPciIntxIrqIndex].flags = kIrqInfoEventfd | kIrqInfoMaskable;
  config.irqs[kPciIntxIrqIndex].count = 1;
  config.irqs[kPciMsixIrqIndex].flags = kIrqInfoEventfd | kIrqInfoMaskable;
  config.irqs[kPciMsixIrqIndex].count = 8;
  config.caps.max_msg_fds = 8;
  return config;
}

// ---------------------------------------------------------------------------
// Session

absl::Status FakeServer::Session::Send(const Message& message) {
  absl::MutexLock lock(&send_mu);
  return conn->Send(message);
}

absl::Status FakeServer::Session::SendRaw(absl::Span<const uint8_t> bytes) {
  absl::MutexLock lock(&send_mu);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(conn->fd(), bytes.data() + done,
                             bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      struct pollfd p = {conn->fd(), POLLOUT, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    if (n <= 0) return ErrnoError(errno, "send raw");
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FakeServer::Session::Reply(const Header& request,
                                        std::vector<uint8_t> payload) {
  return Send(MakeReply(request, std::move(payload)));
}

absl::Status FakeServer::Session::ReplyError(const Header& request, int err) {
  return Send(MakeErrorReply(request, err));
}

void FakeServer::Session::Close() { conn->Shutdown(); }

// ---------------------------------------------------------------------------
// Lifecycle

FakeServer::FakeServer(std::string path, FakeDeviceConfig config)
    : path_(std::move(path)), config_(std::move(config)) {
  config_.info.argsz = 16;
  config_.info.num_regions = static_cast<uint32_t>(config_.regions.size());
  config_.info.num_irqs = static_cast<uint32_t>(config_.irqs.size());
  for (const RegionInfo& region : config_.regions) {
    UniqueFd fd;
    if (region.size > 0) {
      fd.Reset(::memfd_create("fake-region", MFD_CLOEXEC));
      if (!fd.valid() ||
          ::ftruncate(fd.get(), static_cast<off_t>(region.size)) != 0) {
        fd.Reset();
      }
    }
    region_memfds_.push_back(std::move(fd));
  }
  for (const auto& [index, bytes] : config_.initial_region_bytes) {
    SetRegionBytes(index, 0, bytes);
  }
  absl::StatusOr<UniqueFd> listening = ListenUnix(path_);
  if (listening.ok()) listen_fd_ = *std::move(listening);
  stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  thread_ = std::thread([this] { AcceptLoop(); });
}

FakeServer::~FakeServer() { Kill(); }

void FakeServer::Kill() {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    session = session_;
  }
  const uint64_t one = 1;
  (void)!::write(stop_fd_.get(), &one, sizeof(one));
  if (session) {
    session->conn->Shutdown();
    if (session->twin) session->twin->Shutdown();
  }
  if (thread_.joinable()) thread_.join();
  listen_fd_.Reset();
  ::unlink(path_.c_str());
  {
    absl::MutexLock lock(&mu_);
    session_.reset();
  }
  Notify();
}

void FakeServer::DropClient() {
  std::shared_ptr<Session> session = current_session();
  if (session) {
    session->conn->Shutdown();
    if (session->twin) session->twin->Shutdown();
  }
}

void FakeServer::SetHook(Hook hook) {
  absl::MutexLock lock(&mu_);
  hook_ = std::move(hook);
}

std::shared_ptr<FakeServer::Session> FakeServer::current_session() const {
  absl::MutexLock lock(&mu_);
  return session_;
}

void FakeServer::Notify() const {
  absl::MutexLock lock(&wait_mu_);
  wait_cv_.SignalAll();
}

bool FakeServer::WaitFor(const std::function<bool()>& predicate,
                         absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&wait_mu_);
  while (!predicate()) {
    if (wait_cv_.WaitWithDeadline(&wait_mu_, deadline)) return predicate();
  }
  return true;
}

void FakeServer::AcceptLoop() {
  for (;;) {
    struct pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0},
                            {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) continue;
    auto session = std::make_shared<Session>();
    TransportOptions options;
    options.max_fds_in = 16;
    options.max_fds_out = 16;
    options.receive_timeout = absl::InfiniteDuration();
    options.max_msg_size =
        static_cast<uint32_t>(config_.caps.max_data_xfer_size + 64);
    session->conn = std::make_unique<Connection>(std::move(fd), options);
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      session_ = session;
      ++connections_;
      twin_ = false;
    }
    Notify();
    Serve(session);
    {
      absl::MutexLock lock(&mu_);
      if (session_ == session) session_.reset();
      // The spec: on client disconnect drop DMA maps and IRQ fds.
      dma_maps_.clear();
      wired_.clear();
    }
    Notify();
  }
}

void FakeServer::Serve(std::shared_ptr<Session> session) {
  for (;;) {
    absl::StatusOr<std::optional<Message>> received = session->conn->Receive();
    if (!received.ok()) break;
    if (!received->has_value()) continue;
    Message message = std::move(**received);
    if (message.header.is_reply()) {
      session->tracker.Complete(std::move(message)).IgnoreError();
      continue;
    }
    Hook hook;
    {
      absl::MutexLock lock(&mu_);
      commands_.push_back(message.header.cmd);
      hook = hook_;
    }
    Notify();
    if (hook && hook(*session, message) == HookResult::kHandled) continue;
    Handle(*session, message);
    Notify();
  }
  session->tracker.FailAll(ErrnoError(ECONNRESET, "fake server: closed"));
  session->conn->Shutdown();
  if (session->twin) session->twin->Shutdown();
}

// ---------------------------------------------------------------------------
// Default handlers

void FakeServer::Handle(Session& session, Message& request) {
  std::vector<UniqueFd> reply_fds;
  absl::StatusOr<std::vector<uint8_t>> result;
  const ByteSpan payload = request.payload;
  switch (request.command()) {
    case Command::kVersion:
      result = HandleVersion(session, request, &reply_fds);
      break;
    case Command::kDeviceGetInfo: {
      absl::StatusOr<DeviceInfo> asked = DecodeDeviceInfoRequest(payload);
      if (!asked.ok()) {
        result = asked.status();
      } else {
        result = EncodeDeviceInfo(config_.info);
      }
      break;
    }
    case Command::kDeviceGetRegionInfo:
      result = HandleRegionInfo(request, &reply_fds);
      break;
    case Command::kDeviceGetIrqInfo: {
      absl::StatusOr<IrqInfo> asked = DecodeIrqInfoRequest(payload);
      if (!asked.ok()) {
        result = asked.status();
      } else if (asked->index >= config_.irqs.size()) {
        result = ErrnoError(EINVAL, "no such IRQ index");
      } else {
        result = EncodeIrqInfo(config_.irqs[asked->index]);
      }
      break;
    }
    case Command::kDeviceSetIrqs:
      result = HandleSetIrqs(request);
      break;
    case Command::kDmaMap:
      result = HandleDmaMap(request);
      break;
    case Command::kDmaUnmap:
      result = HandleDmaUnmap(request);
      break;
    case Command::kRegionRead:
      result = HandleRegionRead(request);
      break;
    case Command::kRegionWrite:
      result = HandleRegionWrite(request);
      break;
    case Command::kDeviceReset: {
      absl::Status empty = DecodeEmptyPayload(payload);
      if (!empty.ok()) {
        result = empty;
      } else {
        {
          absl::MutexLock lock(&mu_);
          ++resets_;
        }
        result = std::vector<uint8_t>();
      }
      break;
    }
    default:
      result = ErrnoError(EINVAL, "fake server: unsupported command");
  }
  if (request.header.no_reply()) return;
  if (!result.ok()) {
    session.ReplyError(request.header, ErrnoOf(result.status())).IgnoreError();
    return;
  }
  Message reply = MakeReply(request.header, *std::move(result));
  reply.fds = std::move(reply_fds);
  session.Send(reply).IgnoreError();
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleVersion(
    Session& session, Message& request, std::vector<UniqueFd>* fds) {
  absl::StatusOr<VersionPayload> version = DecodeVersion(request.payload);
  if (!version.ok()) return version.status();
  ServerVersionPolicy policy;
  policy.own = config_.caps;
  policy.offer_twin_socket = config_.offer_twin_socket;
  absl::StatusOr<ServerNegotiation> negotiation =
      ServerNegotiate(*version, request.payload.size(), policy);
  if (!negotiation.ok()) return negotiation.status();
  session.conn->set_max_fds_out(negotiation->peer.max_msg_fds);
  if (negotiation->twin_local.valid()) {
    TransportOptions options = session.conn->options();
    options.receive_timeout = absl::Seconds(10);  // the test thread reads it
    session.twin = std::make_unique<Connection>(
        std::move(negotiation->twin_local), options);
    fds->push_back(std::move(negotiation->twin_remote));
    absl::MutexLock lock(&mu_);
    twin_ = true;
  }
  return EncodeVersion(negotiation->reply);
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleRegionInfo(
    Message& request, std::vector<UniqueFd>* fds) {
  absl::StatusOr<RegionInfoRequest> asked =
      DecodeRegionInfoRequest(request.payload);
  if (!asked.ok()) return asked.status();
  {
    absl::MutexLock lock(&mu_);
    region_info_requests_.emplace_back(asked->index, asked->argsz);
  }
  if (asked->index >= config_.regions.size()) {
    return ErrnoError(EINVAL, "no such region");
  }
  const RegionInfo& info = config_.regions[asked->index];
  bool caps_fit = false;
  std::vector<uint8_t> reply = EncodeRegionInfo(info, asked->argsz, &caps_fit);
  if ((info.flags & kRegionInfoFlagMmap) != 0 && caps_fit &&
      region_memfds_[asked->index].valid()) {
    const int dup = ::fcntl(region_memfds_[asked->index].get(),
                            F_DUPFD_CLOEXEC, 0);
    if (dup >= 0) fds->emplace_back(dup);
  }
  return reply;
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleSetIrqs(
    Message& request) {
  absl::StatusOr<SetIrqs> set = DecodeSetIrqs(request.payload);
  if (!set.ok()) return set.status();
  SetIrqsRecord record;
  record.request = *set;
  for (UniqueFd& fd : request.fds) {
    record.fds.push_back(std::make_shared<UniqueFd>(std::move(fd)));
  }
  const uint32_t data = set->flags & kIrqSetDataMask;
  if (data == kIrqSetDataEventfd && !record.fds.empty() &&
      record.fds.size() != set->count) {
    return ErrnoError(EINVAL, "eventfd count mismatch");
  }
  if (data != kIrqSetDataEventfd && !record.fds.empty()) {
    return ErrnoError(EINVAL, "fds without DATA_EVENTFD");
  }
  absl::MutexLock lock(&mu_);
  if ((set->flags & kIrqSetActionTrigger) != 0) {
    if (data == kIrqSetDataNone && set->count == 0) {
      for (auto it = wired_.begin(); it != wired_.end();) {
        it = it->first.first == set->index ? wired_.erase(it) : std::next(it);
      }
    } else if (data == kIrqSetDataEventfd) {
      for (uint32_t i = 0; i < set->count; ++i) {
        const auto key = std::make_pair(set->index, set->start + i);
        if (record.fds.empty()) {
          wired_.erase(key);
        } else {
          wired_[key] = record.fds[i];
        }
      }
    }
  }
  set_irqs_.push_back(std::move(record));
  return std::vector<uint8_t>();
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleDmaMap(
    Message& request) {
  absl::StatusOr<DmaMapRequest> map = DecodeDmaMap(request.payload);
  if (!map.ok()) return map.status();
  if (request.fds.size() > 1) return ErrnoError(EINVAL, "too many fds");
  absl::MutexLock lock(&mu_);
  for (const auto& [address, record] : dma_maps_) {
    if (address < map->address + map->size &&
        map->address < address + record.request.size) {
      return ErrnoError(EEXIST, "overlapping DMA map");
    }
  }
  DmaMapRecord record;
  record.request = *map;
  if (!request.fds.empty()) {
    record.fd = std::make_shared<UniqueFd>(std::move(request.fds[0]));
  }
  dma_maps_[map->address] = std::move(record);
  return std::vector<uint8_t>();
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleDmaUnmap(
    Message& request) {
  absl::StatusOr<DmaUnmapRequest> unmap = DecodeDmaUnmap(request.payload);
  if (!unmap.ok()) return unmap.status();
  absl::MutexLock lock(&mu_);
  if ((unmap->flags & kDmaUnmapFlagAll) != 0) {
    dma_maps_.clear();
  } else {
    auto it = dma_maps_.find(unmap->address);
    if (it == dma_maps_.end() || it->second.request.size != unmap->size) {
      return ErrnoError(ENOENT, "no such DMA map");
    }
    dma_maps_.erase(it);
  }
  return EncodeDmaUnmap(*unmap);
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleRegionRead(
    Message& request) {
  DecodeLimits limits;
  limits.max_data_xfer_size = config_.caps.max_data_xfer_size;
  absl::StatusOr<RegionAccess> access =
      DecodeRegionReadRequest(request.payload, limits);
  if (!access.ok()) return access.status();
  if (access->region >= config_.regions.size() ||
      access->offset + access->count > config_.regions[access->region].size) {
    return ErrnoError(EINVAL, "region read out of bounds");
  }
  std::vector<uint8_t> data =
      RegionBytes(access->region, access->offset, access->count);
  return EncodeRegionAccessWithData(access->offset, access->region, data);
}

absl::StatusOr<std::vector<uint8_t>> FakeServer::HandleRegionWrite(
    Message& request) {
  DecodeLimits limits;
  limits.max_data_xfer_size = config_.caps.max_data_xfer_size;
  absl::StatusOr<RegionAccess> access =
      DecodeRegionWriteRequest(request.payload, limits);
  if (!access.ok()) return access.status();
  if (access->region >= config_.regions.size() ||
      access->offset + access->count > config_.regions[access->region].size) {
    return ErrnoError(EINVAL, "region write out of bounds");
  }
  SetRegionBytes(access->region, access->offset, access->data);
  {
    absl::MutexLock lock(&mu_);
    RegionAccess logged = *access;
    logged.data = {};
    region_writes_.push_back(logged);
  }
  if (config_.on_region_write) {
    config_.on_region_write(*this, access->region, access->offset,
                            access->data);
  }
  return EncodeRegionAccessHeader(access->offset, access->region,
                                  access->count);
}

// ---------------------------------------------------------------------------
// Accessors

std::vector<uint16_t> FakeServer::commands() const {
  absl::MutexLock lock(&mu_);
  return commands_;
}

size_t FakeServer::CountCommand(Command cmd) const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (uint16_t c : commands_) n += c == static_cast<uint16_t>(cmd);
  return n;
}

std::vector<FakeServer::DmaMapRecord> FakeServer::dma_maps() const {
  absl::MutexLock lock(&mu_);
  std::vector<DmaMapRecord> out;
  for (const auto& [address, record] : dma_maps_) out.push_back(record);
  return out;
}

std::vector<FakeServer::SetIrqsRecord> FakeServer::set_irqs() const {
  absl::MutexLock lock(&mu_);
  return set_irqs_;
}

std::vector<std::pair<uint32_t, uint32_t>> FakeServer::region_info_requests()
    const {
  absl::MutexLock lock(&mu_);
  return region_info_requests_;
}

std::vector<RegionAccess> FakeServer::region_writes() const {
  absl::MutexLock lock(&mu_);
  return region_writes_;
}

uint64_t FakeServer::resets() const {
  absl::MutexLock lock(&mu_);
  return resets_;
}

uint64_t FakeServer::connections() const {
  absl::MutexLock lock(&mu_);
  return connections_;
}

bool FakeServer::connected() const {
  absl::MutexLock lock(&mu_);
  return session_ != nullptr;
}

bool FakeServer::twin_socket() const {
  absl::MutexLock lock(&mu_);
  return twin_;
}

int FakeServer::WiredEventfd(uint32_t index, uint32_t vector) const {
  absl::MutexLock lock(&mu_);
  auto it = wired_.find({index, vector});
  return it == wired_.end() ? -1 : it->second->get();
}

bool FakeServer::Trigger(uint32_t index, uint32_t vector) const {
  absl::MutexLock lock(&mu_);
  auto it = wired_.find({index, vector});
  if (it == wired_.end()) return false;
  const uint64_t one = 1;
  return ::write(it->second->get(), &one, sizeof(one)) == sizeof(one);
}

std::vector<uint8_t> FakeServer::RegionBytes(uint32_t index, uint64_t offset,
                                             uint64_t size) const {
  std::vector<uint8_t> out(size);
  if (index < region_memfds_.size() && region_memfds_[index].valid()) {
    (void)!::pread(region_memfds_[index].get(), out.data(), size,
                   static_cast<off_t>(offset));
  }
  return out;
}

void FakeServer::SetRegionBytes(uint32_t index, uint64_t offset,
                                ByteSpan bytes) {
  if (index < region_memfds_.size() && region_memfds_[index].valid()) {
    (void)!::pwrite(region_memfds_[index].get(), bytes.data(), bytes.size(),
                    static_cast<off_t>(offset));
  }
}

int FakeServer::region_fd(uint32_t index) const {
  return index < region_memfds_.size() ? region_memfds_[index].get() : -1;
}

// ---------------------------------------------------------------------------
// Server -> client requests

absl::StatusOr<Message> FakeServer::SendRequest(Command cmd,
                                                std::vector<uint8_t> payload,
                                                std::vector<UniqueFd> fds,
                                                absl::Duration timeout) {
  std::shared_ptr<Session> session = current_session();
  if (!session) return ErrnoError(ENOTCONN, "fake server: no client");
  const absl::Time deadline = absl::Now() + timeout;
  if (session->twin) {
    // Only this (test) thread uses the twin socket: send, then read the
    // reply right there.
    static std::atomic<uint16_t> next_id{1};
    Message request = MakeCommand(next_id++, cmd, std::move(payload));
    request.fds = std::move(fds);
    absl::Status sent = session->twin->Send(request);
    if (!sent.ok()) return sent;
    for (;;) {
      absl::StatusOr<std::optional<Message>> reply = session->twin->Receive();
      if (!reply.ok()) return reply.status();
      if (!reply->has_value()) continue;
      if (absl::Now() > deadline) return ErrnoError(ETIMEDOUT, "no reply");
      Message message = std::move(**reply);
      if (message.header.msg_id != request.header.msg_id) {
        return ErrnoError(EPROTO, "twin reply with the wrong msg_id");
      }
      if (message.header.is_error()) return ErrorFromReply(message.header);
      return message;
    }
  }
  absl::StatusOr<RequestTracker::Pending> pending =
      session->tracker.Start(cmd, deadline);
  if (!pending.ok()) return pending.status();
  Message request = MakeCommand(pending->msg_id(), cmd, std::move(payload));
  request.fds = std::move(fds);
  absl::Status sent = session->Send(request);
  if (!sent.ok()) return sent;
  return pending->Wait();
}

absl::StatusOr<Message> FakeServer::DmaRead(uint64_t address, uint64_t count,
                                            absl::Duration timeout) {
  return SendRequest(Command::kDmaRead, EncodeDmaAccessHeader(address, count),
                     {}, timeout);
}

absl::StatusOr<Message> FakeServer::DmaWrite(uint64_t address, ByteSpan data,
                                             absl::Duration timeout) {
  return SendRequest(Command::kDmaWrite, EncodeDmaAccessWithData(address, data),
                     {}, timeout);
}

}  // namespace testing
}  // namespace vfio_user
