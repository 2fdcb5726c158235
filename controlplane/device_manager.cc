#include "controlplane/device_manager.h"

#include <signal.h>
#include <sys/epoll.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "controlplane/device_types.h"
#include "controlplane/process.h"
#include "controlplane/socket_path.h"
#include "core/log.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"

namespace vfio_user::controlplane {

namespace v1 = ::vfio_user::v1;

namespace {

constexpr char kLog[] = "vfio-userd";
constexpr int32_t kDefaultPageSize = 50;
constexpr int32_t kMaxPageSize = 1000;
constexpr char kPageTokenPrefix[] = "after:";

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t seconds = absl::ToUnixSeconds(t);
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(seconds)) / absl::Nanoseconds(1)));
  return ts;
}

google::protobuf::Duration ToDurationProto(absl::Duration d) {
  google::protobuf::Duration out;
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  out.set_seconds(ns / 1000000000);
  out.set_nanos(static_cast<int32_t>(ns % 1000000000));
  return out;
}

// sum += add, field by field (every counter is a uint64).
void AddCounters(const v1::DeviceCounters& add, v1::DeviceCounters* sum) {
  const google::protobuf::Descriptor* d = v1::DeviceCounters::descriptor();
  const google::protobuf::Reflection* r = v1::DeviceCounters::GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_UINT64) continue;
    r->SetUInt64(sum, f, r->GetUInt64(*sum, f) + r->GetUInt64(add, f));
  }
}

std::string EncodePageToken(const std::string& last_name) {
  return absl::WebSafeBase64Escape(absl::StrCat(kPageTokenPrefix, last_name));
}

absl::StatusOr<std::string> DecodePageToken(const std::string& token) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw) || !absl::StartsWith(raw, kPageTokenPrefix)) {
    return FieldError("page_token", "not a token from a previous ListDevices response");
  }
  std::string name = raw.substr(sizeof(kPageTokenPrefix) - 1);
  if (!ValidateDeviceName(name, "page_token").ok()) {
    return FieldError("page_token", "not a token from a previous ListDevices response");
  }
  return name;
}

enum class Health { kStarting, kRunning, kRestarting, kFailed };
enum class ClientPhase { kNone, kConnected, kGoneWaiting, kTimedOut };

// The outcome of a command, handed from the loop to the waiting RPC thread.
struct CommandReply {
  absl::Notification done;
  absl::StatusOr<DeviceSnapshot> result = absl::UnknownError("no reply");
  void Set(absl::StatusOr<DeviceSnapshot> r) {
    if (done.HasBeenNotified()) return;
    result = std::move(r);
    done.Notify();
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// ManagedDevice: one device's state (supervisor loop thread only).
// ---------------------------------------------------------------------------

class DeviceManager::ManagedDevice : public RunnerObserver {
 public:
  ManagedDevice(DeviceManager* manager, v1::DeviceSpec spec, absl::Time create_time)
      : manager_(manager), spec_(std::move(spec)), create_time_(create_time) {}

  ~ManagedDevice() override { StopAndRelease(absl::Now()); }

  const std::string& name() const { return spec_.name(); }
  const v1::DeviceSpec& spec() const { return spec_; }
  const DeviceType* type() const { return FindDeviceType(spec_.type_case()); }

  void AdoptSocket(CreatedSocket socket) { socket_ = std::move(socket); }

  // Starts an incarnation of the emulation (creating the socket first if
  // the daemon does not hold it yet).
  void StartEmulation() {
    restart_timer_ = 0;
    if (!socket_.fd) {
      auto ownership = ResolveSocketOwnership(spec_.socket());
      absl::StatusOr<CreatedSocket> socket =
          ownership.ok() ? CreateListeningSocket(spec_.socket().path(), *ownership, "socket")
                         : absl::StatusOr<CreatedSocket>(ownership.status());
      if (!socket.ok()) {
        OnStartFailure(absl::StrCat("cannot create the socket: ", socket.status().message()));
        return;
      }
      socket_ = std::move(*socket);
    }
    if (incarnations_ > 0) {
      ++restart_count_;
      last_restart_ = absl::Now();
    }
    ++incarnations_;
    runner_ = manager_->NewRunner(this);
    StartCommand start;
    *start.mutable_spec() = spec_;
    *start.mutable_runtime() = runtime_;
    start.set_heartbeat_interval_ms(static_cast<uint32_t>(
        std::max<int64_t>(1, absl::ToInt64Milliseconds(manager_->options_.heartbeat_interval))));
    absl::Status st = runner_->Start(socket_.fd.get(), start);
    if (!st.ok()) {
      Bury();
      OnStartFailure(absl::StrCat("cannot start the emulation: ", st.message()));
    }
  }

  // The spec cannot be served at all (e.g. no longer valid): FAILED, no
  // retries; the orchestrator deletes it.
  void FailPermanently(const std::string& why) {
    permanent_failure_ = true;
    health_ = Health::kFailed;
    SetError(why);
  }

  void RequestStop() {
    if (runner_) runner_->RequestStop();
  }

  // Stops the emulation (disconnecting its client) and removes the socket.
  void StopAndRelease(absl::Time deadline) {
    CancelTimer(&restart_timer_);
    CancelTimer(&window_timer_);
    // Unlink first: new clients then fail fast instead of queueing.
    if (socket_.fd) RemoveSocketFile(spec_.socket().path(), socket_.dev, socket_.ino);
    if (runner_) {
      runner_->Stop(deadline);
      runner_.reset();
    }
    socket_.fd.Reset();
  }

  // OK if commands can run now; UNAVAILABLE while (re)starting,
  // FAILED_PRECONDITION when permanently failed.
  absl::Status CheckCanExecute() const {
    if (health_ == Health::kRunning && runner_) return absl::OkStatus();
    if (permanent_failure_) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", name(), " has failed: ", last_error_));
    }
    return absl::UnavailableError(absl::StrCat(
        "device ", name(), " is ", v1::DeviceState_Name(State()), "; retry shortly"));
  }

  void Execute(WorkerCommand command, CommandDone done) {
    runner_->Execute(std::move(command), std::move(done));
  }

  void RecordRuntime(const DeviceSnapshot& after) {
    if (const DeviceType* t = type()) t->RecordRuntime(after, &runtime_);
  }

  void set_revision(uint64_t r) { revision_ = r; }

  v1::DeviceState State() const {
    switch (health_) {
      case Health::kFailed: return v1::DEVICE_STATE_FAILED;
      case Health::kRestarting: return v1::DEVICE_STATE_RESTARTING;
      case Health::kStarting:
      case Health::kRunning: break;
    }
    switch (phase_) {
      case ClientPhase::kNone: return v1::DEVICE_STATE_LISTENING;
      case ClientPhase::kConnected: return v1::DEVICE_STATE_CLIENT_CONNECTED;
      case ClientPhase::kGoneWaiting: return v1::DEVICE_STATE_CLIENT_GONE_WAITING;
      case ClientPhase::kTimedOut: return v1::DEVICE_STATE_TIMED_OUT;
    }
    return v1::DEVICE_STATE_UNSPECIFIED;
  }

  v1::Device ToProto() const {
    const absl::Time now = absl::Now();
    v1::Device out;
    *out.mutable_spec() = spec_;
    out.set_revision(revision_);
    v1::DeviceStatus* s = out.mutable_status();
    s->set_state(State());
    if (phase_ == ClientPhase::kConnected) {
      v1::ClientInfo* c = s->mutable_client();
      c->set_pid(client_.pid);
      c->set_uid(client_.uid);
      c->set_gid(client_.gid);
      *c->mutable_connected_since() = ToTimestamp(connected_since_);
    }
    s->set_disconnect_count(disconnect_count_);
    if (disconnect_count_ > 0) *s->mutable_last_disconnect_time() = ToTimestamp(last_disconnect_);
    if (phase_ == ClientPhase::kGoneWaiting) {
      *s->mutable_reconnect_deadline() = ToTimestamp(window_deadline_);
      *s->mutable_reconnect_time_left() =
          ToDurationProto(std::max(absl::ZeroDuration(), window_deadline_ - now));
    }
    s->set_restart_count(restart_count_);
    if (restart_count_ > 0) *s->mutable_last_restart_time() = ToTimestamp(last_restart_);
    v1::DeviceCounters* counters = s->mutable_counters();
    *counters = base_counters_;
    AddCounters(current_counters_, counters);
    counters->set_refused_connections(refused_connections_);
    if (!last_error_.empty()) {
      s->set_last_error(last_error_);
      *s->mutable_last_error_time() = ToTimestamp(last_error_time_);
    }
    s->set_worker_pid(runner_ ? runner_->pid() : 0);
    *s->mutable_create_time() = ToTimestamp(create_time_);
    if (type_state_.has_idio16()) *s->mutable_idio16() = type_state_.idio16();
    return out;
  }

  // ---- RunnerObserver ----
  void OnRunnerReady() override {
    const bool restarted = incarnations_ > 1;
    health_ = Health::kRunning;
    ready_since_ = absl::Now();
    const std::string pid = absl::StrCat(runner_ ? runner_->pid() : 0);
    Log(LogLevel::kInfo, kLog, restarted ? "device restarted" : "device serving",
        {{"device", name()}, {"socket", spec_.socket().path()}, {"worker_pid", pid},
         {"restarts", absl::StrCat(restart_count_)}});
    manager_->Publish(*this, v1::DEVICE_EVENT_TYPE_UPDATED,
                      restarted ? absl::StrCat("emulation restarted (restart ", restart_count_, ")")
                                : "emulation running");
  }

  void OnClientAttached(const PeerCredentials& peer) override {
    CancelTimer(&window_timer_);
    phase_ = ClientPhase::kConnected;
    client_ = peer;
    connected_since_ = absl::Now();
    Log(LogLevel::kInfo, kLog, "client attached",
        {{"device", name()}, {"pid", absl::StrCat(peer.pid)}, {"uid", absl::StrCat(peer.uid)}});
    manager_->Publish(*this, v1::DEVICE_EVENT_TYPE_UPDATED,
                      absl::StrCat("client attached (pid ", peer.pid, ")"));
  }

  void OnClientDetached(const std::string& why) override {
    ClientGone();
    Log(LogLevel::kInfo, kLog, "client detached",
        {{"device", name()}, {"reason", why},
         {"window", absl::FormatDuration(ReconnectWindow(spec_))}});
    manager_->Publish(*this, v1::DEVICE_EVENT_TYPE_UPDATED,
                      absl::StrCat("client detached: ", why));
  }

  void OnClientRefused(const PeerCredentials& peer) override {
    ++refused_connections_;
    (void)peer;
  }

  void OnSnapshot(const DeviceSnapshot& snapshot) override {
    current_counters_ = snapshot.counters();
    type_state_ = snapshot;
    type_state_.clear_counters();
  }

  void OnRunnerExited(const absl::Status& why) override {
    const absl::Time now = absl::Now();
    if (health_ == Health::kRunning && now - ready_since_ >= manager_->options_.healthy_after) {
      quick_failures_ = 0;
    }
    AddCounters(current_counters_, &base_counters_);
    current_counters_.Clear();
    Bury();
    if (phase_ == ClientPhase::kConnected) ClientGone();
    OnFailure(std::string(why.message()));
  }

 private:
  void OnStartFailure(const std::string& why) { OnFailure(why); }

  // A failed start or a dead incarnation: record, publish, retry later.
  void OnFailure(const std::string& why) {
    SetError(why);
    ++quick_failures_;
    health_ = quick_failures_ >= manager_->options_.failures_before_failed ? Health::kFailed
                                                                           : Health::kRestarting;
    const absl::Duration delay = RestartDelay();
    Log(LogLevel::kWarn, kLog, "device emulation down; restarting",
        {{"device", name()}, {"reason", why}, {"in", absl::FormatDuration(delay)},
         {"failures_in_a_row", absl::StrCat(quick_failures_)}});
    manager_->Publish(*this, v1::DEVICE_EVENT_TYPE_UPDATED,
                      absl::StrCat(why, "; restarting in ", absl::FormatDuration(delay)));
    restart_timer_ = manager_->loop_->RunAfter(delay, [this] { StartEmulation(); });
  }

  absl::Duration RestartDelay() const {
    if (quick_failures_ <= 1) return absl::ZeroDuration();
    absl::Duration d = manager_->options_.restart_backoff_initial;
    for (int i = 2; i < quick_failures_ && d < manager_->options_.restart_backoff_max; ++i) d *= 2;
    return std::min(d, manager_->options_.restart_backoff_max);
  }

  // The client went away (detach or the emulation died): start the window.
  void ClientGone() {
    phase_ = ClientPhase::kGoneWaiting;
    client_ = PeerCredentials{};
    ++disconnect_count_;
    last_disconnect_ = absl::Now();
    const absl::Duration window = ReconnectWindow(spec_);
    window_deadline_ = last_disconnect_ + window;
    CancelTimer(&window_timer_);
    window_timer_ = manager_->loop_->RunAfter(window, [this] { OnWindowExpired(); });
  }

  void OnWindowExpired() {
    window_timer_ = 0;
    if (phase_ != ClientPhase::kGoneWaiting) return;
    phase_ = ClientPhase::kTimedOut;
    std::string reason = "reconnect window ran out";
    if (spec_.timeout_policy() == v1::TIMEOUT_POLICY_RESET_DEVICE) {
      if (CheckCanExecute().ok()) {
        WorkerCommand reset;
        reset.mutable_reset();
        const std::string device = name();
        Execute(std::move(reset), [device](absl::StatusOr<DeviceSnapshot> r) {
          if (!r.ok()) {
            Log(LogLevel::kWarn, kLog, "timeout reset failed",
                {{"device", device}, {"error", r.status().ToString()}});
          }
        });
        reason += "; device reset (timeout_policy RESET_DEVICE)";
      } else {
        // A restarted emulation starts from power-on state anyway.
        reason += "; the emulation is restarting (it comes back reset)";
      }
    } else {
      reason += "; device state kept";
    }
    Log(LogLevel::kInfo, kLog, "client did not come back", {{"device", name()}, {"reason", reason}});
    manager_->Publish(*this, v1::DEVICE_EVENT_TYPE_UPDATED, reason);
  }

  void SetError(const std::string& why) {
    last_error_ = why;
    last_error_time_ = absl::Now();
  }

  void CancelTimer(EventLoop::TimerId* id) {
    if (*id != 0) manager_->loop_->CancelTimer(*id);
    *id = 0;
  }

  // Destroys the current runner after the current callback returns (it may
  // be the caller).
  void Bury() {
    if (!runner_) return;
    std::shared_ptr<DeviceRunner> dead(runner_.release());
    manager_->loop_->Post([dead] {});
  }

  DeviceManager* const manager_;
  const v1::DeviceSpec spec_;
  const absl::Time create_time_;
  CreatedSocket socket_;
  std::unique_ptr<DeviceRunner> runner_;
  RuntimeState runtime_;

  Health health_ = Health::kStarting;
  bool permanent_failure_ = false;
  int incarnations_ = 0;
  int quick_failures_ = 0;
  absl::Time ready_since_;
  EventLoop::TimerId restart_timer_ = 0;
  uint32_t restart_count_ = 0;
  absl::Time last_restart_;

  ClientPhase phase_ = ClientPhase::kNone;
  PeerCredentials client_;
  absl::Time connected_since_;
  uint64_t disconnect_count_ = 0;
  absl::Time last_disconnect_;
  absl::Time window_deadline_;
  EventLoop::TimerId window_timer_ = 0;

  v1::DeviceCounters base_counters_;     // earlier incarnations
  v1::DeviceCounters current_counters_;  // this incarnation
  uint64_t refused_connections_ = 0;
  DeviceSnapshot type_state_;  // without counters

  std::string last_error_;
  absl::Time last_error_time_;
  uint64_t revision_ = 0;
};

// ---------------------------------------------------------------------------
// DeviceManager
// ---------------------------------------------------------------------------

DeviceManager::DeviceManager(ManagerOptions options, std::unique_ptr<StateStore> store,
                             std::unique_ptr<EventLoop> loop,
                             std::unique_ptr<EventLoop> device_loop)
    : options_(std::move(options)),
      store_(std::move(store)),
      events_(std::make_unique<EventHub>(options_.watch_history, InitialRevision())),
      loop_(std::move(loop)),
      device_loop_(std::move(device_loop)) {
  runner_env_.supervisor = loop_.get();
  runner_env_.children = &children_;
  runner_env_.worker_binary = options_.worker_binary;
  runner_env_.heartbeat_interval = options_.heartbeat_interval;
  runner_env_.heartbeat_timeout = options_.heartbeat_timeout;
  runner_env_.device_loop = device_loop_.get();
}

absl::StatusOr<std::unique_ptr<DeviceManager>> DeviceManager::Start(
    ManagerOptions options, std::unique_ptr<StateStore> store, UniqueFd signal_fd,
    std::function<void(int)> on_terminate) {
  if (options.isolation == Isolation::kProcess &&
      (options.worker_binary.empty() || options.worker_binary[0] != '/')) {
    return absl::InvalidArgumentError("the worker binary path must be absolute");
  }
  auto loop = EventLoop::Create();
  if (!loop.ok()) return loop.status();
  std::unique_ptr<EventLoop> device_loop;
  if (options.isolation == Isolation::kDense) {
    auto dl = EventLoop::Create();
    if (!dl.ok()) return dl.status();
    device_loop = std::move(*dl);
  }
  std::unique_ptr<DeviceManager> manager(new DeviceManager(
      std::move(options), std::move(store), std::move(*loop), std::move(device_loop)));
  manager->signal_fd_ = std::move(signal_fd);
  manager->on_terminate_ = std::move(on_terminate);
  DeviceManager* raw = manager.get();
  if (manager->signal_fd_) {
    absl::Status st = manager->loop_->WatchFd(manager->signal_fd_.get(), EPOLLIN,
                                              [raw](uint32_t) { raw->OnSignals(); });
    if (!st.ok()) return st;
  }
  if (manager->device_loop_) manager->device_loop_->StartThread("vfio-userd-dev");
  // Workers are spawned from this long-lived thread: their PR_SET_PDEATHSIG
  // is tied to the spawning thread.
  manager->loop_->StartThread("vfio-userd-sup");
  return manager;
}

DeviceManager::~DeviceManager() {
  if (!shut_down_) Shutdown();
}

absl::Status DeviceManager::OnLoop(std::function<void()> fn) {
  absl::ReaderMutexLock lock(&api_mu_);
  if (!accepting_) return absl::UnavailableError("the daemon is shutting down");
  loop_->RunSync(std::move(fn));
  return absl::OkStatus();
}

std::unique_ptr<DeviceRunner> DeviceManager::NewRunner(ManagedDevice* device) {
  if (options_.isolation == Isolation::kDense) {
    return NewInProcessRunner(runner_env_, device->name(), device);
  }
  return NewWorkerRunner(runner_env_, device->name(), device);
}

DeviceManager::ManagedDevice* DeviceManager::Find(const std::string& name) {
  auto it = devices_.find(name);
  return it == devices_.end() ? nullptr : it->second.get();
}

void DeviceManager::Publish(ManagedDevice& device, v1::DeviceEventType type,
                            const std::string& reason) {
  v1::DeviceEvent event;
  event.set_type(type);
  *event.mutable_device() = device.ToProto();
  *event.mutable_time() = ToTimestamp(absl::Now());
  event.set_reason(reason);
  device.set_revision(events_->Publish(std::move(event)));
}

void DeviceManager::OnSignals() {
  for (int sig : ReadSignals(signal_fd_.get())) {
    if (sig == SIGCHLD) {
      children_.ReapAndDispatch();
    } else if (on_terminate_) {
      on_terminate_(sig);
    }
  }
}

size_t DeviceManager::RecreatePersisted() {
  size_t count = 0;
  (void)OnLoop([&] {
    StateStore::Loaded loaded = store_->Load();
    for (const std::string& error : loaded.errors) {
      Log(LogLevel::kError, kLog, "unusable state file", {{"error", error}});
    }
    for (const PersistedDevice& persisted : loaded.devices) {
      const std::string& name = persisted.spec().name();
      if (Find(name) != nullptr) continue;
      absl::Time created = absl::FromUnixSeconds(persisted.create_time().seconds()) +
                           absl::Nanoseconds(persisted.create_time().nanos());
      auto spec = NormalizeSpec(persisted.spec(), options_.spec_policy);
      auto device = std::make_unique<ManagedDevice>(
          this, spec.ok() ? *spec : persisted.spec(), created);
      ManagedDevice* d = device.get();
      std::string conflict;
      if (spec.ok()) {
        for (const auto& [other_name, other] : devices_) {
          if (other->spec().socket().path() == spec->socket().path()) conflict = other_name;
        }
      }
      devices_[name] = std::move(device);
      ++count;
      if (!spec.ok()) {
        d->FailPermanently(absl::StrCat("persisted spec is not valid (any more): ",
                                        spec.status().message()));
      } else if (!conflict.empty()) {
        d->FailPermanently(absl::StrCat("socket path is also used by device ", conflict));
      }
      Log(LogLevel::kInfo, kLog, "device recreated from the state directory",
          {{"device", name}, {"socket", d->spec().socket().path()}});
      Publish(*d, v1::DEVICE_EVENT_TYPE_CREATED, "recreated from the state directory");
      if (spec.ok() && conflict.empty()) d->StartEmulation();
    }
  });
  return count;
}

absl::StatusOr<v1::Device> DeviceManager::Create(const v1::DeviceSpec& spec, bool* created) {
  auto normalized = NormalizeSpec(spec, options_.spec_policy);
  if (!normalized.ok()) return normalized.status();
  absl::StatusOr<v1::Device> result = absl::UnknownError("not run");
  bool made = false;
  absl::Status st = OnLoop([&] { result = CreateOnLoop(*normalized, &made); });
  if (!st.ok()) return st;
  if (created != nullptr) *created = made;
  return result;
}

absl::StatusOr<v1::Device> DeviceManager::CreateOnLoop(const v1::DeviceSpec& spec,
                                                       bool* created) {
  *created = false;
  if (ManagedDevice* existing = Find(spec.name())) {
    if (SameSpec(existing->spec(), spec)) return existing->ToProto();
    return absl::AlreadyExistsError(absl::StrCat(
        "spec.name: device ", spec.name(),
        " already exists with a different spec (the name is the idempotency key; delete it "
        "first or use another name)"));
  }
  if (devices_.size() >= options_.max_devices) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the daemon hosts its maximum of ", options_.max_devices, " devices (--max_devices)"));
  }
  for (const auto& [name, other] : devices_) {
    if (other->spec().socket().path() == spec.socket().path()) {
      return absl::AlreadyExistsError(absl::StrCat("spec.socket.path: ", spec.socket().path(),
                                                   " is already used by device ", name));
    }
  }
  auto ownership = ResolveSocketOwnership(spec.socket());
  if (!ownership.ok()) return ownership.status();
  auto socket = CreateListeningSocket(spec.socket().path(), *ownership, "spec.socket.path");
  if (!socket.ok()) return socket.status();

  const absl::Time now = absl::Now();
  PersistedDevice persisted;
  persisted.set_format_version(1);
  *persisted.mutable_spec() = spec;
  *persisted.mutable_create_time() = ToTimestamp(now);
  if (absl::Status saved = store_->Save(persisted); !saved.ok()) {
    RemoveSocketFile(spec.socket().path(), socket->dev, socket->ino);
    // Keep the code: a full disk is RESOURCE_EXHAUSTED, not a daemon bug.
    return absl::Status(saved.code(), saved.message());
  }
  auto device = std::make_unique<ManagedDevice>(this, spec, now);
  device->AdoptSocket(std::move(*socket));
  ManagedDevice* d = device.get();
  devices_[spec.name()] = std::move(device);
  Log(LogLevel::kInfo, kLog, "device created",
      {{"device", spec.name()}, {"type", DeviceTypeName(spec)},
       {"socket", spec.socket().path()}});
  Publish(*d, v1::DEVICE_EVENT_TYPE_CREATED, "created");
  d->StartEmulation();
  *created = true;
  return d->ToProto();
}

absl::StatusOr<v1::Device> DeviceManager::Get(const std::string& name) {
  if (absl::Status st = ValidateDeviceName(name, "name"); !st.ok()) return st;
  absl::StatusOr<v1::Device> result = absl::NotFoundError(absl::StrCat("no device named ", name));
  absl::Status st = OnLoop([&] {
    if (ManagedDevice* d = Find(name)) result = d->ToProto();
  });
  if (!st.ok()) return st;
  return result;
}

absl::StatusOr<v1::ListDevicesResponse> DeviceManager::List(int32_t page_size,
                                                           const std::string& page_token) {
  if (page_size < 0) return FieldError("page_size", "must not be negative");
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  std::string after;
  if (!page_token.empty()) {
    auto decoded = DecodePageToken(page_token);
    if (!decoded.ok()) return decoded.status();
    after = *decoded;
  }
  v1::ListDevicesResponse response;
  absl::Status st = OnLoop([&] {
    auto it = after.empty() ? devices_.begin() : devices_.upper_bound(after);
    for (; it != devices_.end() && response.devices_size() < page_size; ++it) {
      *response.add_devices() = it->second->ToProto();
    }
    if (it != devices_.end() && response.devices_size() > 0) {
      response.set_next_page_token(
          EncodePageToken(response.devices(response.devices_size() - 1).spec().name()));
    }
    response.set_revision(events_->current_revision());
    response.set_total_size(static_cast<int32_t>(devices_.size()));
  });
  if (!st.ok()) return st;
  return response;
}

absl::StatusOr<DeviceSnapshot> DeviceManager::RunCommand(
    const std::string& name, std::function<absl::Status(ManagedDevice&)> check,
    WorkerCommand command, std::function<void(ManagedDevice&, const DeviceSnapshot&)> on_ok) {
  auto reply = std::make_shared<CommandReply>();
  absl::Status st = OnLoop([&] {
    ManagedDevice* d = Find(name);
    if (d == nullptr) {
      reply->Set(absl::NotFoundError(absl::StrCat("no device named ", name)));
      return;
    }
    absl::Status ok = check ? check(*d) : absl::OkStatus();
    if (ok.ok()) ok = d->CheckCanExecute();
    if (!ok.ok()) {
      reply->Set(ok);
      return;
    }
    d->Execute(std::move(command), [this, name, reply, on_ok](absl::StatusOr<DeviceSnapshot> r) {
      if (r.ok() && on_ok) {
        if (ManagedDevice* device = Find(name)) on_ok(*device, *r);
      }
      reply->Set(std::move(r));
    });
  });
  if (!st.ok()) return st;
  if (!reply->done.WaitForNotificationWithTimeout(options_.command_timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "device ", name, " did not answer within ", absl::FormatDuration(options_.command_timeout)));
  }
  return reply->result;
}

absl::StatusOr<v1::Device> DeviceManager::Reset(const std::string& name, bool disconnect_client) {
  if (absl::Status st = ValidateDeviceName(name, "name"); !st.ok()) return st;
  WorkerCommand command;
  command.mutable_reset()->set_disconnect_client(disconnect_client);
  auto done = RunCommand(name, nullptr, std::move(command),
                         [this, disconnect_client](ManagedDevice& d, const DeviceSnapshot&) {
                           Log(LogLevel::kInfo, kLog, "device reset", {{"device", d.name()}});
                           Publish(d, v1::DEVICE_EVENT_TYPE_UPDATED,
                                   disconnect_client ? "reset (client disconnected)" : "reset");
                         });
  if (!done.ok()) return done.status();
  return Get(name);
}

absl::StatusOr<v1::Idio16State> DeviceManager::SetIdio16Inputs(const std::string& name,
                                                               uint32_t inputs,
                                                               std::optional<uint32_t> mask) {
  if (absl::Status st = ValidateDeviceName(name, "name"); !st.ok()) return st;
  if (inputs > 0xffff) return FieldError("inputs", "at most 0xffff (16 lines)");
  if (mask.has_value() && *mask > 0xffff) return FieldError("mask", "at most 0xffff (16 lines)");
  WorkerCommand command;
  SetIdio16InputsAction* set = command.mutable_action()->mutable_set_idio16_inputs();
  set->set_inputs(inputs);
  set->set_mask(mask.value_or(0xffff));
  auto check = [](ManagedDevice& d) -> absl::Status {
    if (d.spec().type_case() != v1::DeviceSpec::kIdio16) {
      return absl::FailedPreconditionError(
          absl::StrCat("name: device ", d.name(), " is a ", DeviceTypeName(d.spec()),
                       " device; SetIdio16Inputs needs an idio16 device"));
    }
    return absl::OkStatus();
  };
  auto done = RunCommand(name, check, std::move(command),
                         [](ManagedDevice& d, const DeviceSnapshot& after) {
                           d.RecordRuntime(after);
                         });
  if (!done.ok()) return done.status();
  return done->idio16();
}

absl::StatusOr<uint64_t> DeviceManager::Delete(const std::string& name, bool allow_missing) {
  if (absl::Status st = ValidateDeviceName(name, "name"); !st.ok()) return st;
  absl::StatusOr<uint64_t> result = uint64_t{0};
  absl::Status st = OnLoop([&] {
    auto it = devices_.find(name);
    if (it == devices_.end()) {
      if (!allow_missing) result = absl::NotFoundError(absl::StrCat("no device named ", name));
      return;
    }
    // Forget the spec first: if that fails, nothing changed.
    if (absl::Status removed = store_->Remove(name); !removed.ok()) {
      result = absl::InternalError(removed.message());
      return;
    }
    std::unique_ptr<ManagedDevice> device = std::move(it->second);
    devices_.erase(it);
    device->RequestStop();
    device->StopAndRelease(absl::Now() + options_.stop_grace);
    v1::DeviceEvent event;
    event.set_type(v1::DEVICE_EVENT_TYPE_DELETED);
    *event.mutable_device() = device->ToProto();
    *event.mutable_time() = ToTimestamp(absl::Now());
    event.set_reason("deleted");
    result = events_->Publish(std::move(event));
    Log(LogLevel::kInfo, kLog, "device deleted", {{"device", name}});
  });
  if (!st.ok()) return st;
  return result;
}

absl::StatusOr<DeviceManager::Snapshot> DeviceManager::TakeSnapshot() {
  Snapshot snapshot;
  absl::Status st = OnLoop([&] {
    for (const auto& [name, d] : devices_) snapshot.devices.push_back(d->ToProto());
    snapshot.revision = events_->current_revision();
  });
  if (!st.ok()) return st;
  return snapshot;
}

size_t DeviceManager::device_count() {
  size_t n = 0;
  (void)OnLoop([&] { n = devices_.size(); });
  return n;
}

void DeviceManager::Shutdown() {
  if (shut_down_) return;
  {
    absl::MutexLock lock(&api_mu_);  // waits for API calls on the loop
    accepting_ = false;
  }
  events_->Shutdown();
  loop_->RunSync([this] {
    Log(LogLevel::kInfo, kLog, "stopping devices", {{"count", absl::StrCat(devices_.size())}});
    for (auto& [name, d] : devices_) d->RequestStop();
    const absl::Time deadline = absl::Now() + options_.stop_grace;
    for (auto& [name, d] : devices_) d->StopAndRelease(deadline);
    devices_.clear();
    if (signal_fd_) loop_->UnwatchFd(signal_fd_.get());
  });
  loop_->Stop();
  loop_->Join();
  if (device_loop_) {
    device_loop_->Stop();
    device_loop_->Join();
  }
  shut_down_ = true;
}

}  // namespace vfio_user::controlplane
