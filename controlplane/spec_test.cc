// Unit tests of spec validation/normalization and socket path handling
// (real files and sockets in /tmp).
#include "controlplane/spec.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "controlplane/daemon_test_util.h"
#include "controlplane/socket_path.h"
#include "core/transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vfio_user::controlplane {
namespace {

namespace v1 = ::vfio_user::v1;
using ::testing::HasSubstr;
using testing::TempSocketPath;

v1::DeviceSpec MinimalSpec() {
  v1::DeviceSpec spec;
  spec.set_name("dev");
  spec.mutable_idio16();
  spec.mutable_socket()->set_path("/tmp/dev.sock");
  return spec;
}

absl::Status NormalizeError(const v1::DeviceSpec& spec, const SpecPolicy& policy = {}) {
  return NormalizeSpec(spec, policy).status();
}

TEST(SpecTest, NormalizeFillsInTheDefaults) {
  auto spec = NormalizeSpec(MinimalSpec(), {});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->socket().mode(), "0600");
  EXPECT_EQ(spec->reconnect_window().seconds(), 30);
  EXPECT_EQ(spec->timeout_policy(), v1::TIMEOUT_POLICY_KEEP_STATE);
  EXPECT_EQ(ReconnectWindow(*spec), absl::Seconds(30));
  // Normalizing is idempotent, and spelled-out defaults are the same spec.
  auto again = NormalizeSpec(*spec, {});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(SameSpec(*spec, *again));
  v1::DeviceSpec explicit_defaults = MinimalSpec();
  explicit_defaults.mutable_socket()->set_mode("600");
  explicit_defaults.mutable_reconnect_window()->set_seconds(30);
  auto normalized = NormalizeSpec(explicit_defaults, {});
  ASSERT_TRUE(normalized.ok());
  EXPECT_TRUE(SameSpec(*spec, *normalized));
  v1::DeviceSpec other = MinimalSpec();
  other.mutable_idio16()->set_initial_inputs(1);
  EXPECT_FALSE(SameSpec(*spec, *NormalizeSpec(other, {})));
}

TEST(SpecTest, ZeroWindowIsKept) {
  v1::DeviceSpec spec = MinimalSpec();
  spec.mutable_reconnect_window();  // present, 0 s
  auto normalized = NormalizeSpec(spec, {});
  ASSERT_TRUE(normalized.ok());
  EXPECT_EQ(ReconnectWindow(*normalized), absl::ZeroDuration());
}

TEST(SpecTest, DeviceNames) {
  for (const std::string& good :
       std::vector<std::string>{"a", "0", "idio16-0", "x.y_z", std::string(63, 'n')}) {
    EXPECT_TRUE(ValidateDeviceName(good, "name").ok()) << good;
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "A", "-a", "a-", ".a", "a/b", "a b", "\xc3\xa9",
                                std::string(64, 'n'), std::string("a\0b", 3)}) {
    absl::Status st = ValidateDeviceName(bad, "spec.name");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(st.message(), HasSubstr("spec.name")) << bad;
  }
}

TEST(SpecTest, SocketModes) {
  EXPECT_EQ(*ParseSocketMode("0660", "m"), 0660u);
  EXPECT_EQ(*ParseSocketMode("660", "m"), 0660u);
  EXPECT_EQ(*ParseSocketMode("0777", "m"), 0777u);
  for (const char* bad : {"", "08", "12345", "4755", "1777", "rw", "0x1ff"}) {
    EXPECT_EQ(ParseSocketMode(bad, "spec.socket.mode").status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(FormatSocketMode(0640), "0640");
}

TEST(SpecTest, Ownership) {
  v1::SocketSpec socket;
  socket.set_owner("0");
  socket.set_group("root");
  socket.set_mode("0660");
  auto own = ResolveSocketOwnership(socket);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->uid, 0u);
  EXPECT_EQ(own->gid, 0u);
  EXPECT_EQ(own->mode, 0660u);
  socket.set_owner("no-such-user-vfud");
  EXPECT_THAT(ResolveSocketOwnership(socket).status().message(),
              HasSubstr("spec.socket.owner"));
  socket.set_owner("");
  socket.set_group("no-such-group-vfud");
  EXPECT_THAT(ResolveSocketOwnership(socket).status().message(),
              HasSubstr("spec.socket.group"));
  EXPECT_FALSE(ResolveSocketOwnership(v1::SocketSpec()).value().uid.has_value());
}

TEST(SpecTest, FieldErrorsNameTheField) {
  struct Case {
    std::function<void(v1::DeviceSpec*)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](v1::DeviceSpec* s) { s->clear_type(); }, "spec.type"},
      {[](v1::DeviceSpec* s) { s->mutable_idio16()->set_initial_inputs(0x10000); },
       "spec.idio16.initial_inputs"},
      {[](v1::DeviceSpec* s) { s->mutable_dma_test()->set_max_dma_maps(70000); },
       "spec.dma_test.max_dma_maps"},
      {[](v1::DeviceSpec* s) { s->mutable_reconnect_window()->set_nanos(-1); },
       "spec.reconnect_window"},
      {[](v1::DeviceSpec* s) {
         s->mutable_reconnect_window()->set_seconds(1);
         s->mutable_reconnect_window()->set_nanos(-5);
       },
       "spec.reconnect_window"},
      {[](v1::DeviceSpec* s) { s->mutable_reconnect_window()->set_seconds(86401); },
       "spec.reconnect_window"},
      {[](v1::DeviceSpec* s) { s->set_timeout_policy(static_cast<v1::TimeoutPolicy>(7)); },
       "spec.timeout_policy"},
      {[](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/a//b.sock"); },
       "spec.socket.path"},
      {[](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/a/./b.sock"); },
       "spec.socket.path"},
      {[](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/a/b/"); }, "spec.socket.path"},
      {[](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/"); }, "spec.socket.path"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::DeviceSpec spec = MinimalSpec();
    cases[i].mutate(&spec);
    absl::Status st = NormalizeError(spec);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << i;
    EXPECT_THAT(st.message(), HasSubstr(cases[i].field)) << i;
  }
}

TEST(SpecTest, AllowedSocketDirIsAComponentPrefix) {
  SpecPolicy policy;
  policy.allowed_socket_dir = "/run/vfio";
  for (const char* ok : {"/run/vfio/x.sock", "/run/vfio/sub/x.sock"}) {
    EXPECT_TRUE(CheckSocketPathSyntax(ok, policy.allowed_socket_dir, "p").ok()) << ok;
  }
  for (const char* bad : {"/run/vfio2/x.sock", "/run/vfio", "/run/x.sock", "/tmp/x.sock"}) {
    EXPECT_EQ(CheckSocketPathSyntax(bad, policy.allowed_socket_dir, "p").code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

// ---- Sockets on disk ----

bool IsSocket(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

TEST(SocketPathTest, CreatesWithModeAndRemovesOnlyItsOwnSocket) {
  const std::string path = TempSocketPath("own");
  SocketOwnership own;
  own.mode = 0640;
  auto created = CreateListeningSocket(path, own, "p");
  ASSERT_TRUE(created.ok()) << created.status();
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_ino, created->ino);
  // Clients can connect (the daemon never accepts; the backlog holds them).
  EXPECT_TRUE(ConnectUnix(path).ok());

  // Someone replaced the file: not ours any more, not removed.
  ASSERT_EQ(::unlink(path.c_str()), 0);
  auto other = ListenUnix(path);
  ASSERT_TRUE(other.ok());
  RemoveSocketFile(path, created->dev, created->ino);
  EXPECT_TRUE(IsSocket(path));
  other->Reset();
  ::unlink(path.c_str());
}

TEST(SocketPathTest, StaleSocketIsReplacedLiveOneAndFilesAreNot) {
  const std::string path = TempSocketPath("stale");
  { auto stale = ListenUnix(path); ASSERT_TRUE(stale.ok()); }  // closed: stale file left
  ASSERT_TRUE(IsSocket(path));
  auto created = CreateListeningSocket(path, {}, "p");
  ASSERT_TRUE(created.ok()) << created.status();
  // Now live: a second creation must not steal it.
  absl::Status live = CreateListeningSocket(path, {}, "spec.socket.path").status();
  EXPECT_EQ(live.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(live.message(), HasSubstr("spec.socket.path"));
  RemoveSocketFile(path, created->dev, created->ino);
  EXPECT_FALSE(IsSocket(path));

  const std::string file = TempSocketPath("regular");
  { std::ofstream(file) << "data"; }
  EXPECT_EQ(CreateListeningSocket(file, {}, "p").status().code(),
            absl::StatusCode::kFailedPrecondition);
  std::ifstream in(file);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "data");
  ::unlink(file.c_str());
}

TEST(SocketPathTest, SymlinksAreNotFollowed) {
  const std::string dir = TempSocketPath("dir");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  const std::string link = TempSocketPath("link");
  ASSERT_EQ(::symlink(dir.c_str(), link.c_str()), 0);
  absl::Status through_dir = CreateListeningSocket(link + "/x.sock", {}, "p").status();
  EXPECT_EQ(through_dir.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(through_dir.message(), HasSubstr("symlink"));
  EXPECT_FALSE(IsSocket(dir + "/x.sock"));

  const std::string leaf = TempSocketPath("leaf");
  ASSERT_EQ(::symlink((dir + "/target.sock").c_str(), leaf.c_str()), 0);
  EXPECT_EQ(CreateListeningSocket(leaf, {}, "p").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(IsSocket(dir + "/target.sock"));

  EXPECT_EQ(CheckSocketParents("/nonexistent-vfud/x.sock", "p").code(),
            absl::StatusCode::kFailedPrecondition);
  ::unlink(leaf.c_str());
  ::unlink(link.c_str());
  ::rmdir(dir.c_str());
}

TEST(SocketPathTest, PrepareLeavesThePathFree) {
  const std::string path = TempSocketPath("prep");
  { auto stale = ListenUnix(path); ASSERT_TRUE(stale.ok()); }
  ASSERT_TRUE(PrepareSocketPath(path, "p").ok());
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
  auto live = ListenUnix(path);
  ASSERT_TRUE(live.ok());
  EXPECT_EQ(PrepareSocketPath(path, "p").code(), absl::StatusCode::kFailedPrecondition);
  live->Reset();
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace vfio_user::controlplane
