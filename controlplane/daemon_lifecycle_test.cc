// vfio-userd's device lifecycle against the real daemon and real clients:
// attach / detach as seen in the status, reset, the event stream (order and
// resume), the reconnect window running out, a killed or hung worker being
// restarted on the same socket, a killed daemon recreating its devices.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "controlplane/daemon_test_util.h"
#include "core/transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::controlplane::testing {
namespace {

using ::testing::HasSubstr;
using ::vfio_user::testing::RawClient;
using ::vfio_user::testing::Subprocess;

constexpr uint32_t kIdioBar = 2;

bool IsSocket(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

std::unique_ptr<RawClient> Attach(const std::string& path) {
  auto client = RawClient::Connect(path);
  if (!client.ok()) {
    ADD_FAILURE() << client.status();
    return nullptr;
  }
  auto version = (*client)->Negotiate();
  if (!version.ok()) {
    ADD_FAILURE() << version.status();
    return nullptr;
  }
  return std::move(*client);
}

// True once `pid` (not our child) no longer exists or is a zombie.
bool ProcessGone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::string stat_path = absl::StrCat("/proc/", pid, "/stat");
  FILE* f = ::fopen(stat_path.c_str(), "r");
  if (f == nullptr) return true;
  char buf[512] = {0};
  const size_t n = ::fread(buf, 1, sizeof(buf) - 1, f);
  ::fclose(f);
  const std::string s(buf, n);
  const size_t paren = s.rfind(')');
  return paren != std::string::npos && paren + 2 < s.size() && s[paren + 2] == 'Z';
}

// Collects a watch stream on a thread.
class Watcher {
 public:
  Watcher(v1::DeviceService::Stub& stub, uint64_t since, const std::string& name = "")
      : context_(Context(absl::Seconds(60))) {
    v1::WatchDevicesRequest request;
    request.set_since_revision(since);
    request.set_name(name);
    reader_ = stub.WatchDevices(context_.get(), request);
    thread_ = std::thread([this] {
      v1::DeviceEvent event;
      while (reader_->Read(&event)) {
        absl::MutexLock lock(&mu_);
        events_.push_back(event);
      }
    });
  }
  ~Watcher() {
    context_->TryCancel();
    thread_.join();
    (void)reader_->Finish();
  }

  // Waits until an event satisfies `match`; returns everything so far.
  std::vector<v1::DeviceEvent> WaitFor(const std::function<bool(const v1::DeviceEvent&)>& match) {
    std::vector<v1::DeviceEvent> out;
    Eventually([&] {
      absl::MutexLock lock(&mu_);
      out = events_;
      for (const auto& e : events_) {
        if (match(e)) return true;
      }
      return false;
    });
    return out;
  }

 private:
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReader<v1::DeviceEvent>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<v1::DeviceEvent> events_ ABSL_GUARDED_BY(mu_);
};

auto IsEvent(v1::DeviceEventType type, v1::DeviceState state = v1::DEVICE_STATE_UNSPECIFIED) {
  return [type, state](const v1::DeviceEvent& e) {
    return e.type() == type &&
           (state == v1::DEVICE_STATE_UNSPECIFIED || e.device().status().state() == state);
  };
}

class DaemonLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start().ok()); }
  Daemon daemon_;
};

TEST_F(DaemonLifecycleTest, AttachedClientShowsInTheStatus) {
  const std::string idio = daemon_.DeviceSocket("gpio");
  const std::string dma = daemon_.DeviceSocket("dma");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("gpio", idio)).ok());
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("dma", dma)).ok());
  for (const auto& [name, path] : {std::pair{"gpio", idio}, std::pair{"dma", dma}}) {
    auto client = Attach(path);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->ConfigRead32(0).ok());
    auto device = daemon_.WaitFor(name, [](const v1::Device& d) {
      return d.status().state() == v1::DEVICE_STATE_CLIENT_CONNECTED &&
             d.status().counters().messages() >= 2;  // VERSION + the config read
    });
    ASSERT_TRUE(device.ok()) << name << ": " << device.status();
    const auto& status = device->status();
    EXPECT_EQ(status.client().pid(), ::getpid());
    EXPECT_EQ(status.client().uid(), ::getuid());
    EXPECT_GT(status.client().connected_since().seconds(), 0);
    EXPECT_GT(status.worker_pid(), 0);
    EXPECT_EQ(status.counters().connections(), 1u);
    EXPECT_EQ(status.disconnect_count(), 0u);

    // A second client is refused (one client per device) and counted.
    auto second = RawClient::Connect(path);
    ASSERT_TRUE(second.ok());
    EXPECT_FALSE((*second)->Negotiate().ok());
    EXPECT_TRUE(daemon_.WaitFor(name, [](const v1::Device& d) {
                         return d.status().counters().refused_connections() == 1 &&
                                d.status().state() == v1::DEVICE_STATE_CLIENT_CONNECTED;
                       }).ok());
  }
}

TEST_F(DaemonLifecycleTest, ResetDevice) {
  const std::string path = daemon_.DeviceSocket("gpio");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("gpio", path)).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->RegionWrite(kIdioBar, 0, {0xaa}).ok());
  ASSERT_EQ((*client->RegionRead(kIdioBar, 0, 1))[0], 0xaa);

  v1::ResetDeviceRequest request;
  request.set_name("gpio");
  v1::Device after;
  auto context = Context();
  ASSERT_TRUE(daemon_.stub().ResetDevice(context.get(), request, &after).ok());
  EXPECT_EQ(after.status().state(), v1::DEVICE_STATE_CLIENT_CONNECTED);
  EXPECT_GE(after.status().counters().resets(), 1u);
  EXPECT_EQ((*client->RegionRead(kIdioBar, 0, 1))[0], 0x00);  // outputs back to power-on

  // With disconnect_client the client is dropped and the window starts.
  request.set_disconnect_client(true);
  context = Context();
  ASSERT_TRUE(daemon_.stub().ResetDevice(context.get(), request, &after).ok());
  EXPECT_FALSE(client->Receive().ok());
  EXPECT_TRUE(daemon_.WaitForState("gpio", v1::DEVICE_STATE_CLIENT_GONE_WAITING).ok());
}

TEST_F(DaemonLifecycleTest, WatchDeliversEventsInOrderAndResumes) {
  Watcher all(daemon_.stub(), 0);
  // The (empty) snapshot ends with SYNCED.
  auto initial = all.WaitFor(IsEvent(v1::DEVICE_EVENT_TYPE_SYNCED));
  ASSERT_FALSE(initial.empty());
  EXPECT_EQ(initial.front().type(), v1::DEVICE_EVENT_TYPE_SYNCED);

  const std::string path = daemon_.DeviceSocket("w");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("w", path)).ok());
  {
    auto client = Attach(path);
    ASSERT_NE(client, nullptr);
    all.WaitFor(IsEvent(v1::DEVICE_EVENT_TYPE_UPDATED, v1::DEVICE_STATE_CLIENT_CONNECTED));
  }  // the client closes
  all.WaitFor(IsEvent(v1::DEVICE_EVENT_TYPE_UPDATED, v1::DEVICE_STATE_CLIENT_GONE_WAITING));
  ASSERT_TRUE(daemon_.Delete("w").ok());
  std::vector<v1::DeviceEvent> events = all.WaitFor(IsEvent(v1::DEVICE_EVENT_TYPE_DELETED));

  // Strictly increasing revisions, and the lifecycle in order.
  std::vector<std::string> story;
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GT(events[i].revision(), events[i - 1].revision());
    EXPECT_EQ(events[i].device().revision(), events[i].revision());
    const auto& e = events[i];
    if (e.type() == v1::DEVICE_EVENT_TYPE_CREATED) story.push_back("created");
    if (e.type() == v1::DEVICE_EVENT_TYPE_DELETED) story.push_back("deleted");
    if (e.type() == v1::DEVICE_EVENT_TYPE_UPDATED) {
      const auto state = e.device().status().state();
      if (state == v1::DEVICE_STATE_CLIENT_CONNECTED) story.push_back("connected");
      if (state == v1::DEVICE_STATE_CLIENT_GONE_WAITING) story.push_back("gone");
    }
  }
  EXPECT_EQ(story, (std::vector<std::string>{"created", "connected", "gone", "deleted"}));
  EXPECT_EQ(events.back().device().status().state(), v1::DEVICE_STATE_CLIENT_GONE_WAITING);

  // Resuming after the CREATED event replays exactly what followed it.
  size_t created = 0;
  while (events[created].type() != v1::DEVICE_EVENT_TYPE_CREATED) ++created;
  Watcher resumed(daemon_.stub(), events[created].revision());
  auto replay = resumed.WaitFor(IsEvent(v1::DEVICE_EVENT_TYPE_DELETED));
  ASSERT_EQ(replay.size(), events.size() - created - 1);
  for (size_t i = 0; i < replay.size(); ++i) {
    EXPECT_EQ(replay[i].revision(), events[created + 1 + i].revision());
    EXPECT_EQ(replay[i].type(), events[created + 1 + i].type());
  }

  // A watch filtered by name sees only that device (snapshot included).
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("other", daemon_.DeviceSocket("o"))).ok());
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("mine", daemon_.DeviceSocket("m"))).ok());
  Watcher mine(daemon_.stub(), 0, "mine");
  auto filtered = mine.WaitFor(IsEvent(v1::DEVICE_EVENT_TYPE_SYNCED));
  ASSERT_GE(filtered.size(), 2u);
  EXPECT_EQ(filtered[0].type(), v1::DEVICE_EVENT_TYPE_SNAPSHOT);
  EXPECT_EQ(filtered[0].device().spec().name(), "mine");
  EXPECT_EQ(filtered[1].type(), v1::DEVICE_EVENT_TYPE_SYNCED);
  for (const auto& e : filtered) {
    if (e.has_device()) {
      EXPECT_EQ(e.device().spec().name(), "mine");
    }
  }
}

TEST_F(DaemonLifecycleTest, KilledClientThenTheReconnectWindowRunsOut) {
  const std::string path = daemon_.DeviceSocket("win");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("win", path, absl::Seconds(1))).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(daemon_.WaitForState("win", v1::DEVICE_STATE_CLIENT_CONNECTED).ok());

  // Hand the connection to a separate process and SIGKILL it: the kernel
  // closes the connection exactly as when a VMM is killed.
  const int held = ::dup(client->connection().fd());  // without O_CLOEXEC
  ASSERT_GE(held, 0);
  auto holder = Subprocess::Start({"/bin/sleep", "600"});
  ASSERT_TRUE(holder.ok());
  ::close(held);
  client.reset();
  auto gone_alive = daemon_.Get("win");
  ASSERT_TRUE(gone_alive.ok());
  EXPECT_EQ(gone_alive->status().state(), v1::DEVICE_STATE_CLIENT_CONNECTED);  // sleep holds it
  ASSERT_TRUE(holder->Stop(SIGKILL).ok());

  auto waiting = daemon_.WaitForState("win", v1::DEVICE_STATE_CLIENT_GONE_WAITING);
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  EXPECT_EQ(waiting->status().disconnect_count(), 1u);
  const auto& left = waiting->status().reconnect_time_left();
  EXPECT_LE(left.seconds() * 1000000000LL + left.nanos(), 1000000000LL);
  EXPECT_GT(waiting->status().reconnect_deadline().seconds(), 0);
  EXPECT_FALSE(waiting->status().has_client());

  auto timed_out = daemon_.WaitForState("win", v1::DEVICE_STATE_TIMED_OUT);
  ASSERT_TRUE(timed_out.ok()) << timed_out.status();
  EXPECT_FALSE(timed_out->status().has_reconnect_time_left());
  // A client may still come after the timeout.
  auto late = Attach(path);
  ASSERT_NE(late, nullptr);
  EXPECT_TRUE(daemon_.WaitForState("win", v1::DEVICE_STATE_CLIENT_CONNECTED).ok());
}

TEST_F(DaemonLifecycleTest, ClientBackWithinTheWindow) {
  const std::string path = daemon_.DeviceSocket("back");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("back", path, absl::Seconds(60))).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->RegionWrite(kIdioBar, 0, {0x5a}).ok());
  client.reset();
  ASSERT_TRUE(daemon_.WaitForState("back", v1::DEVICE_STATE_CLIENT_GONE_WAITING).ok());
  client = Attach(path);
  ASSERT_NE(client, nullptr);
  auto device = daemon_.WaitForState("back", v1::DEVICE_STATE_CLIENT_CONNECTED);
  ASSERT_TRUE(device.ok());
  EXPECT_EQ(device->status().disconnect_count(), 1u);
  EXPECT_EQ((*client->RegionRead(kIdioBar, 0, 1))[0], 0x5a);  // state kept
}

TEST_F(DaemonLifecycleTest, TimeoutPolicyResetsTheDevice) {
  const std::string path = daemon_.DeviceSocket("pol");
  v1::DeviceSpec spec = Idio16Spec("pol", path, absl::Milliseconds(300));
  spec.set_timeout_policy(v1::TIMEOUT_POLICY_RESET_DEVICE);
  ASSERT_TRUE(daemon_.Create(spec).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->RegionWrite(kIdioBar, 0, {0x5a}).ok());
  client.reset();
  auto timed_out = daemon_.WaitFor("pol", [](const v1::Device& d) {
    return d.status().state() == v1::DEVICE_STATE_TIMED_OUT && d.status().counters().resets() >= 1;
  });
  ASSERT_TRUE(timed_out.ok()) << timed_out.status();
  client = Attach(path);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ((*client->RegionRead(kIdioBar, 0, 1))[0], 0x00);
}

TEST_F(DaemonLifecycleTest, KilledWorkerIsRestartedOnTheSameSocket) {
  const std::string path = daemon_.DeviceSocket("crash");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("crash", path)).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  v1::SetIdio16InputsRequest set;
  set.set_name("crash");
  set.set_inputs(0x00c3);
  v1::Idio16State state;
  auto context = Context();
  ASSERT_TRUE(daemon_.stub().SetIdio16Inputs(context.get(), set, &state).ok());
  auto before = daemon_.WaitFor("crash", [](const v1::Device& d) {
    return d.status().state() == v1::DEVICE_STATE_CLIENT_CONNECTED &&
           d.status().counters().messages() >= 1;
  });
  ASSERT_TRUE(before.ok());
  const pid_t worker = before->status().worker_pid();
  ASSERT_GT(worker, 0);

  ASSERT_EQ(::kill(worker, SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] { return ProcessGone(worker); }));
  // The path never goes away, and a client connecting now waits in the
  // daemon-owned socket's backlog until the new worker serves it.
  EXPECT_TRUE(IsSocket(path));
  auto waiting = RawClient::Connect(path, absl::ZeroDuration());
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  EXPECT_FALSE(client->Receive().ok());  // the old connection died with the worker

  auto restarted = daemon_.WaitFor("crash", [&](const v1::Device& d) {
    return d.status().restart_count() == 1 && d.status().worker_pid() > 0 &&
           d.status().worker_pid() != worker &&
           d.status().state() == v1::DEVICE_STATE_CLIENT_GONE_WAITING;
  });
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ(restarted->status().disconnect_count(), 1u);
  EXPECT_THAT(restarted->status().last_error(), HasSubstr("signal 9"));
  EXPECT_GE(restarted->status().counters().messages(), before->status().counters().messages());
  EXPECT_TRUE(IsSocket(path));

  // The waiting client is served by the new worker; the runtime state the
  // daemon keeps (the input lines) came back.
  ASSERT_TRUE((*waiting)->Negotiate().ok());
  EXPECT_EQ((*(*waiting)->RegionRead(kIdioBar, 1, 1))[0], 0xc3);
  auto connected = daemon_.WaitForState("crash", v1::DEVICE_STATE_CLIENT_CONNECTED);
  ASSERT_TRUE(connected.ok());
  EXPECT_EQ(connected->status().restart_count(), 1u);
}

TEST_F(DaemonLifecycleTest, HungWorkerIsDetectedAndRestarted) {
  const std::string path = daemon_.DeviceSocket("hang");
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("hang", path)).ok());
  auto before = daemon_.WaitFor("hang", [](const v1::Device& d) {
    return d.status().state() == v1::DEVICE_STATE_LISTENING && d.status().worker_pid() > 0;
  });
  ASSERT_TRUE(before.ok());
  const pid_t worker = before->status().worker_pid();
  ASSERT_EQ(::kill(worker, SIGSTOP), 0);  // stops heartbeats (--heartbeat_timeout=1s)
  auto restarted = daemon_.WaitFor("hang", [&](const v1::Device& d) {
    return d.status().restart_count() == 1 && d.status().state() == v1::DEVICE_STATE_LISTENING;
  });
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_THAT(restarted->status().last_error(), HasSubstr("hung"));
  EXPECT_NE(restarted->status().worker_pid(), worker);
  EXPECT_TRUE(Eventually([&] { return ProcessGone(worker); }));
  auto client = Attach(path);
  EXPECT_NE(client, nullptr);
}

TEST_F(DaemonLifecycleTest, RestartedDaemonRecreatesDevices) {
  const std::string idio = daemon_.DeviceSocket("gpio");
  const std::string dma = daemon_.DeviceSocket("dma");
  v1::DeviceSpec idio_spec = Idio16Spec("gpio", idio);
  idio_spec.mutable_socket()->set_mode("0660");
  v1::Device created_idio, created_dma;
  ASSERT_TRUE(daemon_.Create(idio_spec, &created_idio).ok());
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("dma", dma), &created_dma).ok());
  auto gpio_client = Attach(idio);
  auto dma_client = Attach(dma);
  ASSERT_NE(gpio_client, nullptr);
  ASSERT_NE(dma_client, nullptr);
  auto running = daemon_.WaitForState("gpio", v1::DEVICE_STATE_CLIENT_CONNECTED);
  ASSERT_TRUE(running.ok());
  const pid_t old_worker = running->status().worker_pid();

  // Crash the daemon: its workers die with it, the clients see EOF.
  ASSERT_TRUE(daemon_.Stop(SIGKILL).ok());
  EXPECT_TRUE(Eventually([&] { return ProcessGone(old_worker); }));
  EXPECT_FALSE(gpio_client->Receive().ok());
  EXPECT_FALSE(dma_client->Receive().ok());

  ASSERT_TRUE(daemon_.Start().ok());
  for (const v1::Device& before : {created_idio, created_dma}) {
    auto after = daemon_.WaitForState(before.spec().name(), v1::DEVICE_STATE_LISTENING);
    ASSERT_TRUE(after.ok()) << before.spec().name() << ": " << after.status();
    EXPECT_EQ(after->spec().SerializeAsString(), before.spec().SerializeAsString());
    EXPECT_EQ(after->status().create_time().seconds(), before.status().create_time().seconds());
    EXPECT_TRUE(IsSocket(before.spec().socket().path()));
  }
  struct stat st;
  ASSERT_EQ(::lstat(idio.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // Clients reconnect.
  gpio_client = Attach(idio);
  dma_client = Attach(dma);
  ASSERT_NE(gpio_client, nullptr);
  ASSERT_NE(dma_client, nullptr);
  EXPECT_TRUE(daemon_.WaitForState("gpio", v1::DEVICE_STATE_CLIENT_CONNECTED).ok());
  EXPECT_TRUE(daemon_.WaitForState("dma", v1::DEVICE_STATE_CLIENT_CONNECTED).ok());
}

// The whole story with the client library (what a VMM links): its
// reconnect brings it back after the worker is killed and after the daemon
// itself is killed and restarted, without the application doing anything.
TEST_F(DaemonLifecycleTest, ClientLibraryRidesOutWorkerAndDaemonCrashes) {
  const std::string path = daemon_.DeviceSocket("vmm");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("vmm", path)).ok());
  ClientOptions options;
  options.socket_path = path;
  options.connect_timeout = absl::Seconds(10);
  options.reconnect.deadline = absl::Seconds(20);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  auto connected = daemon_.WaitForState("vmm", v1::DEVICE_STATE_CLIENT_CONNECTED);
  ASSERT_TRUE(connected.ok()) << connected.status();
  const pid_t worker = connected->status().worker_pid();
  ASSERT_TRUE((*client)->Read(kIdioBar, 1, 1).ok());

  auto reconnected = [&](uint64_t n) {
    return Eventually([&] {
      const ClientStateInfo s = (*client)->state();
      return s.state == ClientState::kConnected && s.reconnects >= n;
    });
  };
  // 1. The worker dies.
  ASSERT_EQ(::kill(worker, SIGKILL), 0);
  ASSERT_TRUE(reconnected(1));
  ASSERT_TRUE((*client)->Read(kIdioBar, 1, 1).ok());
  auto after_crash = daemon_.WaitFor("vmm", [&](const v1::Device& d) {
    return d.status().state() == v1::DEVICE_STATE_CLIENT_CONNECTED &&
           d.status().restart_count() == 1;
  });
  ASSERT_TRUE(after_crash.ok()) << after_crash.status();
  EXPECT_EQ(after_crash->status().disconnect_count(), 1u);

  // 2. The daemon dies and comes back with the same state directory.
  ASSERT_TRUE(daemon_.Stop(SIGKILL).ok());
  ASSERT_TRUE(daemon_.Start().ok());
  ASSERT_TRUE(reconnected(2));
  ASSERT_TRUE((*client)->Read(kIdioBar, 1, 1).ok());
  auto after_restart = daemon_.WaitForState("vmm", v1::DEVICE_STATE_CLIENT_CONNECTED);
  ASSERT_TRUE(after_restart.ok()) << after_restart.status();
  EXPECT_EQ(after_restart->status().client().pid(), ::getpid());
  (*client)->Close();
}

}  // namespace
}  // namespace vfio_user::controlplane::testing
