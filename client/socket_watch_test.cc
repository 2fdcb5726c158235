#include "client/socket_watch.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/unique_fd.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

// A fresh directory under /tmp (socket paths must stay short).
class SocketWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vfu-watch.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const char* name : {"dev.sock", "other", "dev.sock.tmp"}) {
      ::unlink(absl::StrCat(dir_, "/", name).c_str());
    }
    ::rmdir(dir_.c_str());
  }
  // Binds a unix socket at `path` (as a restarted server does).
  static UniqueFd BindAt(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<struct sockaddr*>(&addr),
                     sizeof(addr)),
              0);
    return fd;
  }
  std::string dir_;
};

TEST_F(SocketWatchTest, ReportsTheSocketBeingCreated) {
  const std::string path = dir_ + "/dev.sock";
  SocketWatch watch(path, -1);
  ASSERT_TRUE(watch.watching());
  UniqueFd server = BindAt(path);
  // The event was queued before the wait: it is not missed.
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Minutes(5)),
            SocketWatch::Woken::kSocketEvent);
}

TEST_F(SocketWatchTest, DiscardedEventsDoNotWakeItButNewOnesDo) {
  const std::string path = dir_ + "/dev.sock";
  SocketWatch watch(path, -1);
  UniqueFd first = BindAt(path);
  watch.DiscardEvents();
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Milliseconds(50)),
            SocketWatch::Woken::kDeadline);
  first.Reset();
  ASSERT_EQ(::unlink(path.c_str()), 0);
  UniqueFd second = BindAt(path);
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Minutes(5)),
            SocketWatch::Woken::kSocketEvent);
}

TEST_F(SocketWatchTest, ReportsTheSocketBeingMovedIntoPlace) {
  const std::string path = dir_ + "/dev.sock";
  SocketWatch watch(path, -1);
  UniqueFd server = BindAt(dir_ + "/dev.sock.tmp");
  ASSERT_EQ(::rename((dir_ + "/dev.sock.tmp").c_str(), path.c_str()), 0);
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Minutes(5)),
            SocketWatch::Woken::kSocketEvent);
}

TEST_F(SocketWatchTest, OtherNamesInTheDirectoryDoNotWakeIt) {
  SocketWatch watch(dir_ + "/dev.sock", -1);
  UniqueFd other(::open((dir_ + "/other").c_str(),
                        O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  ASSERT_TRUE(other.valid());
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Milliseconds(50)),
            SocketWatch::Woken::kDeadline);
}

TEST_F(SocketWatchTest, TheWakeFdEndsTheWaitForGood) {
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  SocketWatch watch(dir_ + "/dev.sock", wake.get());
  const uint64_t one = 1;
  ASSERT_EQ(::write(wake.get(), &one, sizeof(one)), 8);
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Minutes(5)),
            SocketWatch::Woken::kWake);
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Minutes(5)),
            SocketWatch::Woken::kWake);
}

TEST_F(SocketWatchTest, AnUnwatchableDirectoryLeavesAPlainSleep) {
  SocketWatch watch(dir_ + "/missing/dev.sock", -1);
  EXPECT_FALSE(watch.watching());
  EXPECT_EQ(watch.Wait(absl::Now() + absl::Milliseconds(20)),
            SocketWatch::Woken::kDeadline);
  EXPECT_EQ(watch.Wait(absl::Now() - absl::Seconds(1)),
            SocketWatch::Woken::kDeadline);
}

TEST_F(SocketWatchTest, ARelativePathWatchesTheCurrentDirectory) {
  SocketWatch watch("dev.sock", -1);
  EXPECT_TRUE(watch.watching());
}

}  // namespace
}  // namespace vfio_user
