// vfio-userd with a full disk under its state directory: a tiny tmpfs is
// mounted there (we run as root; where mounting is not allowed, the daemon
// is restarted with RLIMIT_FSIZE = 1 and SIGXFSZ ignored instead, so its
// writes fail with EFBIG the way they would with ENOSPC). Creating a device must then
// fail with a clear error and leave nothing half-made behind; the devices
// that exist keep working; once there is room again creation works; and
// after a restart every device that was created successfully is back.
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "controlplane/daemon_test_util.h"
#include "gtest/gtest.h"
#include "proto/vfio_user/v1/device_service.grpc.pb.h"
#include "tests/integration/raw_client.h"

namespace vfio_user::controlplane::testing {
namespace {

namespace fs = std::filesystem;

class DaemonFullDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_dir_ = daemon_.state_dir();
    fs::create_directories(state_dir_);
    // A private mount namespace (this process and the daemons it starts),
    // so the tmpfs never shows up anywhere else.
    // VFU_TEST_NO_TMPFS=1 exercises the fallback where mounting works too.
    const char* no_tmpfs = std::getenv("VFU_TEST_NO_TMPFS");
    if ((no_tmpfs == nullptr || std::string(no_tmpfs) != "1") && unshare(CLONE_NEWNS) == 0 &&
        mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
        mount("vfu-full", state_dir_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              "size=256k,mode=0700") == 0) {
      tmpfs_ = true;
    }
    RecordProperty("disk", tmpfs_ ? "tmpfs" : "RLIMIT_FSIZE");
  }

  void TearDown() override {
    if (daemon_.running()) (void)daemon_.Stop(SIGKILL);
    if (tmpfs_) umount2(state_dir_.c_str(), MNT_DETACH);
  }

  // Starts the daemon; with `no_room` (and no tmpfs), under a file size
  // limit of one byte with SIGXFSZ ignored: every write of its state fails
  // (EFBIG), as on a full disk.
  absl::Status Start(bool no_room = false) {
    if (!no_room) return daemon_.Start();
    struct rlimit saved {};
    getrlimit(RLIMIT_FSIZE, &saved);
    struct rlimit one = {1, saved.rlim_max};
    auto previous = signal(SIGXFSZ, SIG_IGN);  // inherited through exec
    setrlimit(RLIMIT_FSIZE, &one);
    absl::Status st = daemon_.Start();
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, previous);
    return st;
  }

  // No room left for the daemon's next state file.
  absl::Status FillDisk() {
    if (!tmpfs_) {
      (void)daemon_.Stop(SIGTERM);
      return Start(/*no_room=*/true);
    }
    std::ofstream filler(state_dir_ + "/filler", std::ios::binary);
    const std::string block(4096, 'x');
    for (int i = 0; i < 1024 && filler.write(block.data(), block.size()); ++i) {
    }
    return absl::OkStatus();
  }

  absl::Status MakeRoom() {
    if (!tmpfs_) {
      (void)daemon_.Stop(SIGTERM);
      return Start();
    }
    fs::remove(state_dir_ + "/filler");
    return absl::OkStatus();
  }

  Daemon daemon_{"full"};
  std::string state_dir_;
  bool tmpfs_ = false;
};

TEST_F(DaemonFullDiskTest, CreateFailsCleanlyAndNothingIsLost) {
  ASSERT_TRUE(Start().ok());
  const std::string a_socket = daemon_.DeviceSocket("a");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("a", a_socket)).ok());
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("b", daemon_.DeviceSocket("b"))).ok());

  ASSERT_TRUE(FillDisk().ok());
  const std::string c_socket = daemon_.DeviceSocket("c");
  grpc::Status st = daemon_.Create(Idio16Spec("c", c_socket));
  if (tmpfs_) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "No space left on device"))
        << st.error_message();
  } else {
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(absl::StrContains(st.error_message(), "File too large")) << st.error_message();
  }
  // Nothing half-made: no device, no socket, no temporary file.
  EXPECT_EQ(daemon_.Get("c").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(c_socket));
  for (const auto& e : fs::directory_iterator(state_dir_ + "/devices")) {
    EXPECT_FALSE(absl::EndsWith(e.path().string(), ".tmp")) << e.path();
  }

  // The existing devices keep working.
  ASSERT_TRUE(daemon_.WaitForState("a", v1::DEVICE_STATE_LISTENING).ok());
  {
    auto client = vfio_user::testing::RawClient::Connect(a_socket);
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE((*client)->Negotiate().ok());
    auto id = (*client)->ConfigRead32(0);
    ASSERT_TRUE(id.ok()) << id.status();
  }
  // Deleting needs no room.
  EXPECT_TRUE(daemon_.Delete("b").ok());

  // With room again, creation works.
  ASSERT_TRUE(MakeRoom().ok());
  ASSERT_TRUE(daemon_.Create(Idio16Spec("c", c_socket)).ok());

  // A restarted daemon finds exactly the devices that were created.
  ASSERT_TRUE(daemon_.Stop(SIGKILL).ok());
  ASSERT_TRUE(Start().ok());
  EXPECT_TRUE(daemon_.Get("a").ok());
  EXPECT_TRUE(daemon_.Get("c").ok());
  EXPECT_EQ(daemon_.Get("b").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace vfio_user::controlplane::testing
