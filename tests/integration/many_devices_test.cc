// One process, one event loop, 1000 devices each on its own socket: no
// thread per idle device, every device reachable, clients on many devices at
// once, and the process's fd and thread counts stay bounded.
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/device_server.h"
#include "server/devices/idio16.h"
#include "server/event_loop.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

namespace vfio_user::testing {
namespace {

constexpr int kDevices = 1000;

int CountThreads() {
  DIR* d = ::opendir("/proc/self/task");
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n;
}

TEST(ManyDevicesTest, ThousandDevicesOnOneLoop) {
  // 1000 listening sockets + 100 clients (both ends in this process).
  rlimit lim;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur < 4096) {
    lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, 4096);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0);
  }
  ASSERT_GE(lim.rlim_cur, 2600u) << "need fds for 1000 devices";

  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  const int threads_before = CountThreads();
  (*loop)->StartThread();
  // The loop's thread (and, under ThreadSanitizer, its runtime's background
  // thread, started with the first thread): devices must add none.
  const int threads_with_loop = CountThreads();
  EXPECT_GE(threads_with_loop, threads_before + 1);

  const std::string dir = UniqueSocketPath("vfu-many");  // used as a prefix
  std::vector<std::unique_ptr<Idio16Device>> devices;
  std::vector<std::unique_ptr<DeviceServer>> servers(kDevices);
  std::vector<std::string> paths;
  for (int i = 0; i < kDevices; ++i) {
    devices.push_back(std::make_unique<Idio16Device>(absl::StrCat("idio", i)));
    paths.push_back(absl::StrCat(dir, ".", i));
  }
  (*loop)->RunSync([&] {
    for (int i = 0; i < kDevices; ++i) {
      DeviceServerOptions o;
      o.socket_path = paths[i];
      auto s = DeviceServer::Create(loop->get(), devices[i]->device(), std::move(o));
      ASSERT_TRUE(s.ok()) << i << ": " << s.status();
      servers[i] = std::move(*s);
    }
  });
  // One loop thread serves them all.
  EXPECT_EQ(CountThreads(), threads_with_loop);

  // 100 clients attached at once to devices spread over the range, each
  // writing its own outputs; then every one reads its own back.
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < kDevices; i += 10) {
    auto c = RawClient::Connect(paths[i]);
    ASSERT_TRUE(c.ok()) << i;
    ASSERT_TRUE((*c)->Negotiate().ok()) << i;
    ASSERT_TRUE((*c)->RegionWrite(2, 0, {static_cast<uint8_t>(i)}).ok());
    clients.push_back(std::move(*c));
  }
  for (size_t k = 0; k < clients.size(); ++k) {
    auto r = clients[k]->RegionRead(2, 0, 1);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ((*r)[0], static_cast<uint8_t>(k * 10));
    EXPECT_EQ(devices[k * 10]->outputs() & 0xff, static_cast<uint16_t>(k * 10) & 0xff);
  }
  EXPECT_EQ(CountThreads(), threads_with_loop);
  clients.clear();
  (*loop)->RunSync([&] { servers.clear(); });
  (*loop)->Stop();
  (*loop)->Join();
  // Every socket file is removed with its server.
  for (const std::string& p : paths) EXPECT_NE(::access(p.c_str(), F_OK), 0) << p;
}

}  // namespace
}  // namespace vfio_user::testing
