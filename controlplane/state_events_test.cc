// Unit tests of the state directory, the event hub and the worker channel
// framing.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "controlplane/event_hub.h"
#include "controlplane/framed_channel.h"
#include "controlplane/state_store.h"
#include "controlplane/worker.pb.h"
#include "core/transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vfio_user::controlplane {
namespace {

namespace v1 = ::vfio_user::v1;
using ::testing::HasSubstr;

std::string FreshDir(const std::string& tag) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(base ? base : "/tmp", "/", tag, "-XXXXXX");
  if (::mkdtemp(dir.data()) == nullptr) return "";
  return dir + "/state";
}

PersistedDevice Device(const std::string& name, const std::string& path) {
  PersistedDevice d;
  d.set_format_version(1);
  d.mutable_spec()->set_name(name);
  d.mutable_spec()->mutable_idio16()->set_initial_inputs(3);
  d.mutable_spec()->mutable_socket()->set_path(path);
  d.mutable_create_time()->set_seconds(1234);
  return d;
}

TEST(StateStoreTest, SaveLoadRemove) {
  const std::string dir = FreshDir("store");
  auto store = StateStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Save(Device("a", "/tmp/a.sock")).ok());
  ASSERT_TRUE((*store)->Save(Device("b", "/tmp/b.sock")).ok());
  ASSERT_TRUE((*store)->Save(Device("a", "/tmp/a2.sock")).ok());  // replaces

  // Owner-only files, no temporary left behind.
  struct stat st;
  ASSERT_EQ(::stat((dir + "/devices/a.textproto").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const auto& e : std::filesystem::directory_iterator(dir + "/devices")) {
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  }

  StateStore::Loaded loaded = (*store)->Load();
  EXPECT_TRUE(loaded.errors.empty());
  ASSERT_EQ(loaded.devices.size(), 2u);
  EXPECT_EQ(loaded.devices[0].spec().name(), "a");
  EXPECT_EQ(loaded.devices[0].spec().socket().path(), "/tmp/a2.sock");
  EXPECT_EQ(loaded.devices[0].spec().idio16().initial_inputs(), 3u);
  EXPECT_EQ(loaded.devices[0].create_time().seconds(), 1234);

  ASSERT_TRUE((*store)->Remove("a").ok());
  ASSERT_TRUE((*store)->Remove("a").ok());  // already gone: fine
  EXPECT_EQ((*store)->Load().devices.size(), 1u);
  EXPECT_FALSE((*store)->Save(Device("../evil", "/tmp/x.sock")).ok());
}

TEST(StateStoreTest, OneDaemonPerDirectory) {
  const std::string dir = FreshDir("lock");
  auto first = StateStore::Open(dir);
  ASSERT_TRUE(first.ok());
  auto second = StateStore::Open(dir);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  first->reset();
  EXPECT_TRUE(StateStore::Open(dir).ok());
}

TEST(StateStoreTest, BadFilesAreReportedAndTornWritesDropped) {
  const std::string dir = FreshDir("bad");
  auto store = StateStore::Open(dir);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Save(Device("good", "/tmp/g.sock")).ok());
  { std::ofstream(dir + "/devices/garbage.textproto") << "this is { not a proto"; }
  { std::ofstream(dir + "/devices/renamed.textproto") << "format_version: 1 spec { name: \"x\" }"; }
  { std::ofstream(dir + "/devices/v2.textproto") << "format_version: 2 spec { name: \"v2\" }"; }
  { std::ofstream(dir + "/devices/.crashed.tmp") << "format_version: 1 spec { na"; }
  StateStore::Loaded loaded = (*store)->Load();
  ASSERT_EQ(loaded.devices.size(), 1u);
  EXPECT_EQ(loaded.devices[0].spec().name(), "good");
  EXPECT_EQ(loaded.errors.size(), 3u);
  EXPECT_NE(::access((dir + "/devices/garbage.textproto").c_str(), F_OK), -1);  // left alone
  EXPECT_EQ(::access((dir + "/devices/.crashed.tmp").c_str(), F_OK), -1);       // cleaned up
}

v1::DeviceEvent Event(const std::string& name) {
  v1::DeviceEvent e;
  e.set_type(v1::DEVICE_EVENT_TYPE_UPDATED);
  e.mutable_device()->mutable_spec()->set_name(name);
  return e;
}

TEST(EventHubTest, RevisionsHistoryAndResume) {
  EventHub hub(/*history_limit=*/3, /*first_revision=*/100);
  EXPECT_EQ(hub.current_revision(), 99u);
  EXPECT_EQ(hub.Publish(Event("a")), 100u);
  EXPECT_EQ(hub.Publish(Event("b")), 101u);
  auto events = hub.WaitForEvents(99, absl::Now(), 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].revision(), 100u);
  EXPECT_EQ((*events)[0].device().revision(), 100u);
  EXPECT_EQ((*events)[1].device().spec().name(), "b");
  // At most `max`.
  EXPECT_EQ(hub.WaitForEvents(99, absl::Now(), 1)->size(), 1u);
  // Nothing new: an empty answer at the deadline.
  auto none = hub.WaitForEvents(101, absl::Now() + absl::Milliseconds(1), 10);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  // The future is invalid; the compacted past is a failed precondition.
  EXPECT_EQ(hub.WaitForEvents(102, absl::Now(), 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  hub.Publish(Event("c"));
  hub.Publish(Event("d"));  // 100 drops out
  EXPECT_EQ(hub.WaitForEvents(99, absl::Now(), 10).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(hub.WaitForEvents(50, absl::Now(), 10).status().code(),
            absl::StatusCode::kFailedPrecondition);  // an older daemon's revision
  auto tail = hub.WaitForEvents(100, absl::Now(), 10);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 3u);
  EXPECT_EQ(tail->front().revision(), 101u);
}

TEST(EventHubTest, WaitersWakeOnPublishAndShutdown) {
  EventHub hub(10, 1);
  absl::StatusOr<std::vector<v1::DeviceEvent>> got;
  std::thread waiter([&] { got = hub.WaitForEvents(0, absl::InfiniteFuture(), 10); });
  hub.Publish(Event("x"));
  waiter.join();
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 1u);

  std::thread blocked([&] { got = hub.WaitForEvents(1, absl::InfiniteFuture(), 10); });
  hub.Shutdown();
  blocked.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
}

TEST(FramedChannelTest, MessagesBothWaysAndPartialFrames) {
  auto pair = MakeSocketPair();
  ASSERT_TRUE(pair.ok());
  FramedChannel a(std::move(pair->first));
  WorkerCommand command;
  command.set_id(7);
  command.mutable_reset()->set_disconnect_client(true);
  ASSERT_TRUE(a.Send(command, absl::Seconds(1)).ok());
  ASSERT_TRUE(a.Send(command, absl::Seconds(1)).ok());

  FramedChannel b(std::move(pair->second));
  for (int i = 0; i < 2; ++i) {
    auto frame = b.ReadFrame(absl::Seconds(1));
    ASSERT_TRUE(frame.ok()) << frame.status();
    WorkerCommand parsed;
    ASSERT_TRUE(parsed.ParseFromString(*frame));
    EXPECT_EQ(parsed.id(), 7u);
    EXPECT_TRUE(parsed.reset().disconnect_client());
  }
  WorkerReport report;
  report.set_client_detached("bye");
  std::string body = report.SerializeAsString();
  std::string frame = std::string(1, static_cast<char>(body.size())) + std::string(3, '\0') + body;
  // A frame arriving in two pieces (header and part of the body, then the
  // rest) is delivered once, whole.
  auto pair2 = MakeSocketPair();
  ASSERT_TRUE(pair2.ok());
  const int writer = pair2->first.get();
  FramedChannel reader(std::move(pair2->second));
  ASSERT_EQ(::write(writer, frame.data(), 6), 6);
  std::vector<std::string> frames;
  ASSERT_TRUE(reader.ReadAvailable(&frames).ok());
  EXPECT_TRUE(frames.empty());
  ASSERT_EQ(::write(writer, frame.data() + 6, frame.size() - 6),
            static_cast<ssize_t>(frame.size() - 6));
  auto whole = reader.ReadFrame(absl::Seconds(1));
  ASSERT_TRUE(whole.ok());
  WorkerReport parsed;
  ASSERT_TRUE(parsed.ParseFromString(*whole));
  EXPECT_EQ(parsed.client_detached(), "bye");
  // Clean EOF.
  pair2->first.Reset();
  EXPECT_EQ(reader.ReadFrame(absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
}

TEST(FramedChannelTest, OversizedFrameAndTornFrameAreErrors) {
  auto pair = MakeSocketPair();
  ASSERT_TRUE(pair.ok());
  const int writer = pair->first.get();
  FramedChannel reader(std::move(pair->second));
  const unsigned char huge[4] = {0xff, 0xff, 0xff, 0x7f};
  ASSERT_EQ(::write(writer, huge, 4), 4);
  EXPECT_EQ(reader.ReadFrame(absl::Seconds(1)).status().code(), absl::StatusCode::kDataLoss);

  auto pair2 = MakeSocketPair();
  ASSERT_TRUE(pair2.ok());
  FramedChannel torn(std::move(pair2->second));
  const unsigned char partial[6] = {10, 0, 0, 0, 1, 2};
  ASSERT_EQ(::write(pair2->first.get(), partial, 6), 6);
  pair2->first.Reset();
  EXPECT_EQ(torn.ReadFrame(absl::Seconds(1)).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace vfio_user::controlplane
