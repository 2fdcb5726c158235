// Reconnect: the server disappears (its sockets closed, as after kill -9)
// while the client is busy; a new server comes up on the same path (or
// never does). Deadlines are 1-3 s so every test stays fast.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/client_test_util.h"
#include "client/fake_server.h"
#include "client/guest_memory.h"
#include "client/irq_waiter.h"
#include "core/codec.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace testing {
namespace {

// Records every state the client publishes and lets a test await one.
class StateRecorder {
 public:
  void Record(const ClientStateInfo& info) {
    absl::MutexLock lock(&mu_);
    seen_.push_back(info);
  }
  std::function<void(const ClientStateInfo&)> Callback() {
    return [this](const ClientStateInfo& info) { Record(info); };
  }
  // Waits until a state `want` was published after a kReconnecting one.
  bool AwaitAfterReconnecting(ClientState want,
                              absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto done = [this, want]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      bool reconnecting = false;
      for (const ClientStateInfo& info : seen_) {
        if (info.state == ClientState::kReconnecting) reconnecting = true;
        if (reconnecting && info.state == want) return true;
      }
      return false;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  std::vector<ClientStateInfo> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  absl::Mutex mu_;
  std::vector<ClientStateInfo> seen_ ABSL_GUARDED_BY(mu_);
};

constexpr uint64_t kRamIova = 0x100000;
constexpr uint64_t kRomIova = 0x200000;

FakeDeviceConfig DeviceWithContent(const std::vector<uint8_t>& bar2) {
  FakeDeviceConfig config = DefaultDevice();
  config.initial_region_bytes[2] = bar2;
  return config;
}

TEST(ReconnectTest, ServerKilledWhileBusyReconnectsReplaysAndContinues) {
  const std::string path = TestSocketPath("reco");
  const std::vector<uint8_t> content = PatternBytes(4096, 11);
  auto server1 = std::make_unique<FakeServer>(path, DeviceWithContent(content));
  StateRecorder states;
  ClientOptions options = OptionsFor(*server1);
  options.on_state_change = states.Callback();
  absl::StatusOr<std::unique_ptr<Client>> connected = Client::Connect(options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  Client& client = **connected;

  // State to replay: guest RAM with its fd, a read-only range without one,
  // MSI-X wired to eventfds with two vectors masked, and a BAR mapping.
  absl::StatusOr<std::unique_ptr<GuestMemory>> ram = GuestMemory::Create(65536);
  absl::StatusOr<std::unique_ptr<GuestMemory>> rom = GuestMemory::Create(4096);
  ASSERT_TRUE(ram.ok() && rom.ok());
  ASSERT_OK(client.DmaMap((*ram)->Region(kRamIova)));
  ASSERT_OK(client.DmaMap((*rom)->Region(kRomIova, 0, 0, kDmaMapFlagRead,
                                         /*pass_fd=*/false)));
  absl::StatusOr<std::unique_ptr<IrqWaiter>> waiter = IrqWaiter::Create(8);
  ASSERT_TRUE(waiter.ok());
  ASSERT_OK(client.SetIrqEventfds(kPciMsixIrqIndex, 0, (*waiter)->fds()));
  ASSERT_OK(client.MaskIrqs(kPciMsixIrqIndex, 6, 2));
  absl::StatusOr<std::unique_ptr<RegionMapping>> mapping = client.MapRegion(0);
  ASSERT_TRUE(mapping.ok()) << mapping.status();

  // Busy threads: a reader (idempotent: must never fail) and a writer (may
  // fail with ECONNRESET when its request is in flight at the loss).
  std::atomic<bool> stop{false};
  std::atomic<int> reads_ok{0}, read_failures{0}, writes_ok{0},
      writes_reset{0}, write_failures{0};
  absl::Mutex errors_mu;
  std::vector<std::string> errors;
  std::thread reader([&] {
    while (!stop.load()) {
      absl::StatusOr<std::vector<uint8_t>> got = client.Read(2, 0, 64);
      if (got.ok() && std::equal(got->begin(), got->end(), content.begin())) {
        ++reads_ok;
      } else {
        ++read_failures;
        absl::MutexLock lock(&errors_mu);
        errors.push_back(got.status().ToString());
      }
    }
  });
  std::thread writer([&] {
    for (uint32_t i = 0; !stop.load(); ++i) {
      absl::Status s = client.WriteValue(2, 2048, 4, i);
      if (s.ok()) {
        ++writes_ok;
      } else if (IsDisconnectError(s)) {
        ++writes_reset;
      } else {
        ++write_failures;
        absl::MutexLock lock(&errors_mu);
        errors.push_back(s.ToString());
      }
    }
  });
  // Waits (without sleeping) until both threads have made progress.
  auto await_progress = [&](int reads, int writes) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while ((reads_ok.load() < reads || writes_ok.load() < writes) &&
           absl::Now() < deadline) {
      std::this_thread::yield();
    }
    return reads_ok.load() >= reads && writes_ok.load() >= writes;
  };
  ASSERT_TRUE(await_progress(20, 5));

  server1->Kill();  // as kill -9: sockets closed, maps and fds gone
  server1.reset();
  FakeServer server2(path, DeviceWithContent(content));
  ASSERT_TRUE(states.AwaitAfterReconnecting(ClientState::kConnected));
  // Both threads carry on against the new server.
  const int server2_writes_before = static_cast<int>(
      server2.CountCommand(Command::kRegionWrite));
  ASSERT_TRUE(await_progress(reads_ok.load() + 20, writes_ok.load() + 5));
  EXPECT_GE(static_cast<int>(server2.CountCommand(Command::kRegionWrite)),
            server2_writes_before + 5);
  stop = true;
  reader.join();
  writer.join();

  {
    absl::MutexLock lock(&errors_mu);
    EXPECT_TRUE(errors.empty()) << errors.front();
  }
  EXPECT_EQ(read_failures.load(), 0);
  EXPECT_EQ(write_failures.load(), 0);
  EXPECT_LE(writes_reset.load(), 1);  // at most the one in flight

  // The new server got: a reset, then the replayed maps and wiring.
  EXPECT_EQ(server2.resets(), 1u);
  const std::vector<uint16_t> commands = server2.commands();
  ASSERT_GE(commands.size(), 5u);
  EXPECT_EQ(commands[0], static_cast<uint16_t>(Command::kVersion));
  EXPECT_EQ(commands[1], static_cast<uint16_t>(Command::kDeviceGetInfo));
  EXPECT_EQ(commands[2], static_cast<uint16_t>(Command::kDeviceReset));
  EXPECT_EQ(commands[3], static_cast<uint16_t>(Command::kDmaMap));
  EXPECT_EQ(commands[4], static_cast<uint16_t>(Command::kDmaMap));

  const std::vector<FakeServer::DmaMapRecord> maps = server2.dma_maps();
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(maps[0].request.address, kRamIova);
  EXPECT_EQ(maps[0].request.size, 65536u);
  ASSERT_NE(maps[0].fd, nullptr);
  EXPECT_EQ(maps[1].request.address, kRomIova);
  EXPECT_EQ(maps[1].request.flags, kDmaMapFlagRead);
  EXPECT_EQ(maps[1].fd, nullptr);
  // The replayed fd is the same guest memory.
  const uint32_t marker = 0xfeedbeef;
  ASSERT_EQ(::pwrite(maps[0].fd->get(), &marker, 4, 128), 4);
  uint32_t seen_marker = 0;
  std::memcpy(&seen_marker, (*ram)->data() + 128, 4);
  EXPECT_EQ(seen_marker, marker);
  // DMA by message works against the new server too.
  std::memset((*rom)->data(), 0x3c, 8);
  absl::StatusOr<Message> dma = server2.DmaRead(kRomIova, 8);
  ASSERT_TRUE(dma.ok()) << dma.status();

  // Interrupt wiring: every vector, and the masks.
  for (uint32_t v = 0; v < 8; ++v) {
    EXPECT_NE(server2.WiredEventfd(kPciMsixIrqIndex, v), -1) << v;
  }
  bool mask_replayed = false;
  for (const FakeServer::SetIrqsRecord& r : server2.set_irqs()) {
    mask_replayed |= r.request.flags == (kIrqSetDataNone | kIrqSetActionMask) &&
                     r.request.start == 6 && r.request.count == 2;
  }
  EXPECT_TRUE(mask_replayed);
  ASSERT_TRUE(server2.Trigger(kPciMsixIrqIndex, 3));
  absl::StatusOr<std::vector<IrqWaiter::Event>> events =
      (*waiter)->Wait(absl::Seconds(5));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].vector, 3u);

  // The mapping now reaches the new server's region memory.
  EXPECT_FALSE((*mapping)->stale());
  server2.SetRegionBytes(0, 0, std::vector<uint8_t>{0x77});
  EXPECT_EQ(*(*mapping)->At(0), 0x77);

  const ClientStateInfo state = client.state();
  EXPECT_EQ(state.state, ClientState::kConnected);
  EXPECT_EQ(state.reconnects, 1u);
  const ClientCounters counters = client.counters();
  EXPECT_EQ(counters.reconnects, 1u);
  EXPECT_EQ(counters.disconnects, 1u);
  EXPECT_GE(counters.reconnect_attempts, 1u);
  // Published: connected, reconnecting (attempt 0, then each attempt),
  // connected.
  const std::vector<ClientStateInfo> seen = states.seen();
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen.front().state, ClientState::kConnected);
  EXPECT_EQ(seen[1].state, ClientState::kReconnecting);
  EXPECT_FALSE(seen[1].last_error.ok());
  EXPECT_GT(seen[1].time_left(seen[1].reconnect_deadline - absl::Seconds(1)),
            absl::ZeroDuration());
  EXPECT_EQ(seen.back().state, ClientState::kConnected);
  EXPECT_EQ(seen.back().reconnects, 1u);
}

TEST(ReconnectTest, ResetReplayAndDescriptionsAreOneWindow) {
  const std::string path = TestSocketPath("recowin");
  const std::vector<uint8_t> content = PatternBytes(4096, 3);
  auto server1 = std::make_unique<FakeServer>(path, DeviceWithContent(content));
  ClientOptions options = OptionsFor(*server1);
  absl::StatusOr<std::unique_ptr<Client>> connected = Client::Connect(options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  Client& client = **connected;
  absl::StatusOr<std::unique_ptr<GuestMemory>> ram = GuestMemory::Create(65536);
  ASSERT_TRUE(ram.ok());
  ASSERT_OK(client.DmaMap((*ram)->Region(kRamIova)));

  server1->Kill();
  server1.reset();
  // The new server answers the reset only once the last GET_IRQ_INFO is
  // in: a client that waited for the reset's reply before replaying and
  // describing would never reconnect.
  FakeServer server2(path, DeviceWithContent(content));
  const uint32_t last_irq = DeviceWithContent(content).irqs.size() - 1;
  absl::Mutex mu;
  std::optional<Header> reset;
  server2.SetHook([&](FakeServer::Session& session, Message& request) {
    absl::MutexLock lock(&mu);
    if (request.command() == Command::kDeviceReset) {
      reset = request.header;
      return FakeServer::HookResult::kHandled;
    }
    if (request.command() == Command::kDeviceGetIrqInfo && reset.has_value()) {
      absl::StatusOr<IrqInfo> asked = DecodeIrqInfoRequest(request.payload);
      if (asked.ok() && asked->index == last_irq) {
        EXPECT_OK(session.Reply(*reset, {}));
      }
    }
    return FakeServer::HookResult::kDefault;
  });
  const ClientStateInfo back =
      client.AwaitState(ClientState::kConnected, absl::Seconds(20));
  ASSERT_EQ(back.state, ClientState::kConnected) << back.last_error;
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(reset.has_value());
  }
  ASSERT_EQ(server2.dma_maps().size(), 1u);  // replayed after the reset
  EXPECT_EQ(server2.dma_maps()[0].request.address, kRamIova);
  absl::StatusOr<std::vector<uint8_t>> got = client.Read(2, 0, 16);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(std::equal(got->begin(), got->end(), content.begin()));
}

TEST(ReconnectTest, ServerNeverComesBackFailsAtTheDeadline) {
  FakeServer server(TestSocketPath("never"), DefaultDevice());
  StateRecorder states;
  ClientOptions options = OptionsFor(server);
  options.reconnect.deadline = absl::Seconds(1);
  options.request_timeout = absl::Seconds(20);  // longer than the deadline
  options.on_state_change = states.Callback();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  server.Kill();
  ASSERT_EQ((*client)->AwaitState(ClientState::kReconnecting, absl::Seconds(10))
                .state,
            ClientState::kReconnecting);
  // Waits for the reconnect, which gives up: ETIMEDOUT at the deadline.
  const absl::Time start = absl::Now();
  EXPECT_ERRNO((*client)->Read(2, 0, 4).status(), ETIMEDOUT);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  const ClientStateInfo state = (*client)->state();
  EXPECT_EQ(state.state, ClientState::kFailed);
  EXPECT_FALSE(state.last_error.ok());
  // Later requests fail at once.
  EXPECT_ERRNO((*client)->Read(2, 0, 4).status(), ENOTCONN);
  EXPECT_ERRNO((*client)->DmaUnmapAll(), ENOTCONN);
  ASSERT_TRUE(states.AwaitAfterReconnecting(ClientState::kFailed));
  const std::vector<ClientStateInfo> seen = states.seen();
  EXPECT_GE((*client)->counters().reconnect_attempts, 1u);
  EXPECT_EQ(seen.back().state, ClientState::kFailed);
  (*client)->Close();
  EXPECT_EQ((*client)->state().state, ClientState::kClosed);
}

TEST(ReconnectTest, DisabledFailsInFlightRequestsWithEconnreset) {
  FakeServer server(TestSocketPath("noreco"), DefaultDevice());
  ClientOptions options = OptionsFor(server);
  options.reconnect.enabled = false;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  server.SetHook([](FakeServer::Session&, Message& request) {
    return request.command() == Command::kRegionRead
               ? FakeServer::HookResult::kHandled  // never answered
               : FakeServer::HookResult::kDefault;
  });
  absl::Status in_flight;
  std::thread reader([&] { in_flight = (*client)->Read(2, 0, 4).status(); });
  ASSERT_TRUE(server.WaitFor(
      [&] { return server.CountCommand(Command::kRegionRead) == 1; }));
  server.Kill();
  reader.join();
  EXPECT_TRUE(IsDisconnectError(in_flight)) << in_flight;
  EXPECT_EQ(ErrnoOf(in_flight), ECONNRESET);
  EXPECT_EQ((*client)->AwaitState(ClientState::kFailed, absl::Seconds(10)).state,
            ClientState::kFailed);
  EXPECT_ERRNO((*client)->Read(2, 0, 4).status(), ENOTCONN);
}

TEST(ReconnectTest, InFlightReadsAreRetriedAndWritesFail) {
  const std::string path = TestSocketPath("inflight");
  const std::vector<uint8_t> content = PatternBytes(4096, 12);
  auto server1 = std::make_unique<FakeServer>(path, DeviceWithContent(content));
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(OptionsFor(*server1));
  ASSERT_TRUE(client.ok()) << client.status();
  server1->SetHook([](FakeServer::Session&, Message& request) {
    return request.command() == Command::kRegionRead ||
                   request.command() == Command::kRegionWrite
               ? FakeServer::HookResult::kHandled  // swallowed
               : FakeServer::HookResult::kDefault;
  });
  absl::StatusOr<std::vector<uint8_t>> read;
  absl::Status write;
  std::thread reader([&] { read = (*client)->Read(2, 0, 16); });
  std::thread writer([&] { write = (*client)->WriteValue(2, 0, 4, 1); });
  ASSERT_TRUE(server1->WaitFor([&] {
    return server1->CountCommand(Command::kRegionRead) == 1 &&
           server1->CountCommand(Command::kRegionWrite) == 1;
  }));
  server1->Kill();
  server1.reset();
  FakeServer server2(path, DeviceWithContent(content));
  reader.join();
  writer.join();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(std::equal(read->begin(), read->end(), content.begin()));
  EXPECT_TRUE(IsDisconnectError(write)) << write;
  const ClientCounters counters = (*client)->counters();
  EXPECT_EQ(counters.retried, 1u);
  EXPECT_EQ(counters.failed_by_disconnect, 1u);
  // The write never reached the new server.
  EXPECT_EQ(server2.CountCommand(Command::kRegionWrite), 0u);
}

TEST(ReconnectTest, ADifferentDeviceIsRefused) {
  const std::string path = TestSocketPath("changed");
  auto server1 = std::make_unique<FakeServer>(path, DefaultDevice());
  ClientOptions options = OptionsFor(*server1);
  options.reconnect.deadline = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  server1->Kill();
  server1.reset();
  FakeDeviceConfig other = DefaultDevice();
  other.regions[2].size = 8192;  // BAR2 grew
  FakeServer server2(path, other);
  const ClientStateInfo state =
      (*client)->AwaitState(ClientState::kFailed, absl::Seconds(10));
  EXPECT_EQ(state.state, ClientState::kFailed);
  EXPECT_EQ(ErrnoOf(state.last_error), EPROTO) << state.last_error;
  EXPECT_GE(server2.connections(), 1u);
}

TEST(ReconnectTest, DroppedConnectionToALiveServerIsRestored) {
  FakeServer server(TestSocketPath("drop"), DefaultDevice());
  StateRecorder states;
  ClientOptions options = OptionsFor(server);
  options.reconnect.reset_device = false;
  options.on_state_change = states.Callback();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::unique_ptr<GuestMemory>> ram = GuestMemory::Create(8192);
  ASSERT_TRUE(ram.ok());
  ASSERT_OK((*client)->DmaMap((*ram)->Region(0x10000)));
  ASSERT_OK((*client)->DmaMap((*ram)->Region(0x20000, 0, 4096)));
  // A DMA_UNMAP interrupted by the loss counts as done and is not replayed.
  server.SetHook([](FakeServer::Session&, Message& request) {
    return request.command() == Command::kDmaUnmap
               ? FakeServer::HookResult::kHandled  // swallowed
               : FakeServer::HookResult::kDefault;
  });
  absl::Status unmapped;
  std::thread unmapper(
      [&] { unmapped = (*client)->DmaUnmap(0x20000, 4096); });
  ASSERT_TRUE(server.WaitFor(
      [&] { return server.CountCommand(Command::kDmaUnmap) == 1; }));
  server.SetHook(nullptr);
  (*client)->DropConnectionForTesting();
  unmapper.join();
  EXPECT_OK(unmapped);
  ASSERT_TRUE(states.AwaitAfterReconnecting(ClientState::kConnected));
  EXPECT_EQ(server.connections(), 2u);
  EXPECT_EQ(server.resets(), 0u);  // policy: no reset
  const std::vector<FakeServer::DmaMapRecord> maps = server.dma_maps();
  ASSERT_EQ(maps.size(), 1u);
  EXPECT_EQ(maps[0].request.address, 0x10000u);
  ASSERT_OK((*client)->DmaUnmap(0x10000, 8192));
  EXPECT_TRUE(server.dma_maps().empty());
}

TEST(ReconnectTest, CloseWhileReconnectingCancelsWaiters) {
  FakeServer server(TestSocketPath("closereco"), DefaultDevice());
  ClientOptions options = OptionsFor(server);
  options.reconnect.deadline = absl::Seconds(60);
  options.request_timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  server.Kill();
  ASSERT_EQ((*client)->AwaitState(ClientState::kReconnecting, absl::Seconds(10))
                .state,
            ClientState::kReconnecting);
  absl::Status waiting;
  std::thread reader([&] { waiting = (*client)->Read(2, 0, 4).status(); });
  (*client)->Close();
  reader.join();
  EXPECT_EQ(ErrnoOf(waiting), ECANCELED) << waiting;
}

// The inotify instances this process has open (their fd numbers).
std::vector<int> InotifyFds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (const struct dirent* entry = ::readdir(dir)) {
    char target[64] = {};
    const std::string link = std::string("/proc/self/fd/") + entry->d_name;
    const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
    if (n > 0 && std::string(target, n) == "anon_inode:inotify") {
      fds.push_back(std::atoi(entry->d_name));
    }
  }
  ::closedir(dir);
  std::sort(fds.begin(), fds.end());
  return fds;
}

TEST(ReconnectTest, ReconnectsAsSoonAsTheServersSocketIsCreatedAgain) {
  // A backoff far longer than the test: only the socket watch can bring the
  // client back in time (client/socket_watch.h).
  const std::string path = TestSocketPath("watch");
  auto server1 = std::make_unique<FakeServer>(path, DefaultDevice());
  ClientOptions options = OptionsFor(*server1);
  options.reconnect.initial_backoff = absl::Minutes(10);
  options.reconnect.max_backoff = absl::Minutes(10);
  options.reconnect.deadline = absl::Minutes(20);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  server1->Kill();
  server1.reset();
  ASSERT_EQ((*client)->AwaitState(ClientState::kReconnecting, absl::Seconds(10))
                .state,
            ClientState::kReconnecting);
  // The first attempt failed (no socket); the client now sits in its
  // 10-minute backoff. A new server binds the path.
  auto server2 = std::make_unique<FakeServer>(path, DefaultDevice());
  EXPECT_EQ((*client)->AwaitState(ClientState::kConnected, absl::Seconds(60))
                .state,
            ClientState::kConnected);
  EXPECT_OK((*client)->Read(2, 0, 4).status());
  // The watch is kept for the next loss (setting one up costs more than a
  // reconnect), and serves it: a second restart is seen as fast.
  const std::vector<int> watches = InotifyFds();
  EXPECT_EQ(watches.size(), 1u);
  server2->Kill();
  server2.reset();
  ASSERT_EQ((*client)->AwaitState(ClientState::kReconnecting, absl::Seconds(10))
                .state,
            ClientState::kReconnecting);
  server2 = std::make_unique<FakeServer>(path, DefaultDevice());
  EXPECT_EQ((*client)->AwaitState(ClientState::kConnected, absl::Seconds(60))
                .state,
            ClientState::kConnected);
  EXPECT_EQ(InotifyFds(), watches);
  // Close() ends a reconnect wait at once as well.
  server2->Kill();
  ASSERT_EQ((*client)->AwaitState(ClientState::kReconnecting, absl::Seconds(10))
                .state,
            ClientState::kReconnecting);
  (*client)->Close();
  EXPECT_EQ((*client)->state().state, ClientState::kClosed);
}

}  // namespace
}  // namespace testing
}  // namespace vfio_user
