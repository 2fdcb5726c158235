// Fault injection through core's Os interface (core/fault_injecting_os.h)
// into a whole session: a client plays a complete attach-and-use sequence
// against an in-process device server (EventLoop, DeviceServer, Session, the
// idio-16) over a real socket, with faults on the server's socket calls
// (SessionOptions::os) and on the client's:
//   - one-byte reads and writes on both sides, so every message is split at
//     every byte boundary;
//   - a pause (EAGAIN) at every single byte of both streams, and EINTR;
//   - EINTR/EAGAIN storms;
//   - the client dying at every byte of its stream (mid-message included),
//     and the server's sends failing at every byte of its stream.
// Faults that keep the stream intact must not change a single reply; faults
// that break it must end the session cleanly: the DMA maps and interrupt
// fds are released, the device keeps its state, and the next client gets a
// normal session.
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/codec.h"
#include "core/fault_injecting_os.h"
#include "core/log.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "core/unique_fd.h"
#include "gtest/gtest.h"
#include "server/device_server.h"
#include "server/devices/idio16.h"
#include "server/event_loop.h"
#include "tests/integration/subprocess.h"

namespace vfio_user {
namespace {

using Dir = FaultInjectingOs::Direction;

constexpr uint8_t kOutputs = 0x5a;  // idio-16 outputs 0-7 before and during the script
constexpr uint64_t kMemfdIova = 0x100000;
constexpr uint64_t kMessageIova = 0x200000;
constexpr uint64_t kGuestSize = 0x10000;

int CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the directory's own fd
}

// One command of the script: what to send.
struct Step {
  Command cmd;
  Bytes payload;
  enum class Fd { kNone, kMemfd, kEventfd } fd = Fd::kNone;
};

// What came back (fds only counted).
struct Reply {
  uint16_t cmd = 0;
  uint32_t flags = 0;
  uint32_t error = 0;
  Bytes payload;
  size_t fds = 0;
  bool operator==(const Reply& o) const {
    return cmd == o.cmd && flags == o.flags && error == o.error &&
           payload == o.payload && fds == o.fds;
  }
};

std::vector<Step> Script() {
  std::vector<Step> s;
  VersionPayload version;
  version.major = kProtocolMajor;
  version.minor = 2;
  version.json = R"({"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}})";
  s.push_back({Command::kVersion, EncodeVersion(version)});
  s.push_back({Command::kDeviceGetInfo, EncodeDeviceInfo(DeviceInfo{})});
  for (uint32_t i = 0; i < kPciNumRegions; ++i) {
    RegionInfoRequest r;
    r.argsz = 256;
    r.index = i;
    s.push_back({Command::kDeviceGetRegionInfo, EncodeRegionInfoRequest(r)});
  }
  for (uint32_t i = 0; i < kPciNumIrqs; ++i) {
    IrqInfo q;
    q.index = i;
    s.push_back({Command::kDeviceGetIrqInfo, EncodeIrqInfo(q)});
  }
  DmaMapRequest map;
  map.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
  map.address = kMemfdIova;
  map.size = kGuestSize;
  s.push_back({Command::kDmaMap, EncodeDmaMap(map), Step::Fd::kMemfd});
  map.address = kMessageIova;
  s.push_back({Command::kDmaMap, EncodeDmaMap(map)});
  SetIrqs irqs;
  irqs.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  irqs.index = kPciIntxIrqIndex;
  irqs.count = 1;
  s.push_back({Command::kDeviceSetIrqs, EncodeSetIrqs(irqs), Step::Fd::kEventfd});
  s.push_back({Command::kRegionRead, EncodeRegionAccessHeader(0, kPciConfigRegionIndex, 64)});
  const Bytes outputs = {kOutputs};
  s.push_back({Command::kRegionWrite,
               EncodeRegionAccessWithData(Idio16Device::kRegOutputs0To7,
                                          Idio16Device::kRegisterBar, ByteSpan(outputs))});
  s.push_back({Command::kRegionRead,
               EncodeRegionAccessHeader(0, Idio16Device::kRegisterBar, 8)});
  // A large read: its reply is bigger than the transport's read-ahead buffer.
  s.push_back({Command::kRegionRead,
               EncodeRegionAccessHeader(0, Idio16Device::kRegisterBar, 256)});
  DmaUnmapRequest unmap;
  unmap.address = kMessageIova;
  unmap.size = kGuestSize;
  s.push_back({Command::kDmaUnmap, EncodeDmaUnmap(unmap)});
  s.push_back({Command::kDeviceGetInfo, EncodeDeviceInfo(DeviceInfo{})});
  // The memfd map and the eventfd stay: the disconnect must release them.
  return s;
}

class SessionFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogLevel(LogLevel::kError);  // thousands of sessions end badly here
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    loop_->StartThread();
    idio_ = std::make_unique<Idio16Device>("fault-idio16");
    idio_->device()->set_max_dma_maps(8);
    path_ = testing::UniqueSocketPath("fault");
    absl::Status created;
    loop_->RunSync([&] {
      DeviceServerOptions options;
      options.socket_path = path_;
      options.session.os = &server_os_;
      options.session.offer_twin_socket = false;
      auto server = DeviceServer::Create(loop_.get(), idio_->device(), std::move(options));
      created = server.status();
      if (server.ok()) server_ = std::move(*server);
    });
    ASSERT_TRUE(created.ok()) << created;
    // The idio-16's outputs: the state every client must find.
    std::vector<Reply> setup = Run(nullptr);
    ASSERT_FALSE(setup.empty());
    ASSERT_EQ(idio_->outputs() & 0xff, kOutputs);
    baseline_fds_ = CountOpenFds();
    golden_ = Run(nullptr);
    ASSERT_EQ(golden_.size(), Script().size());
  }

  void TearDown() override {
    loop_->RunSync([&] { server_.reset(); });
    loop_->Stop();
    loop_->Join();
  }

  // Plays the script on a new connection whose client side makes its OS
  // calls through `client_os` (nullptr: real). Returns the replies up to the
  // first failure. Waits until the server has closed the session.
  std::vector<Reply> Run(FaultInjectingOs* client_os) {
    std::vector<Reply> replies;
    {
      absl::StatusOr<UniqueFd> fd = ConnectUnix(path_);
      if (!fd.ok()) {
        ADD_FAILURE() << fd.status();
        return replies;
      }
      TransportOptions topts;
      topts.receive_timeout = absl::Seconds(10);
      topts.send_timeout = absl::Seconds(10);
      Connection conn(std::move(*fd), topts, client_os);
      uint16_t id = 1;
      for (const Step& step : Script()) {
        Message msg = MakeCommand(id++, step.cmd, step.payload);
        if (step.fd == Step::Fd::kMemfd) {
          UniqueFd memfd(memfd_create("fault-guest", MFD_CLOEXEC));
          EXPECT_EQ(ftruncate(memfd.get(), kGuestSize), 0);
          msg.fds.push_back(std::move(memfd));
        } else if (step.fd == Step::Fd::kEventfd) {
          msg.fds.emplace_back(eventfd(0, EFD_CLOEXEC));
        }
        if (!conn.Send(msg).ok()) break;
        absl::StatusOr<std::optional<Message>> got = conn.Receive();
        if (!got.ok() || !got->has_value()) break;
        const Message& m = **got;
        replies.push_back(
            {m.header.cmd, m.header.flags, m.header.error, m.payload, m.fds.size()});
      }
    }  // the client hangs up
    WaitForNoClient();
    return replies;
  }

  void WaitForNoClient() {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    bool attached = true;
    while (attached && absl::Now() < deadline) {
      loop_->RunSync([&] { attached = server_->has_client(); });
    }
    ASSERT_FALSE(attached) << "the server did not notice the client left";
    // The closed session is destroyed by a task it posted; let it run.
    loop_->RunSync([] {});
  }

  // After a session ended however it ended: the client's resources are
  // gone and the device state is intact.
  void ExpectCleanAfterSession(const std::string& what) {
    size_t maps = 1;
    loop_->RunSync([&] { maps = idio_->device()->dma().size(); });
    EXPECT_EQ(maps, 0u) << what;
    EXPECT_EQ(CountOpenFds(), baseline_fds_) << what;
    EXPECT_EQ(idio_->outputs() & 0xff, kOutputs) << what;
  }

  // Bytes the client sends / receives in a whole script (measured once).
  uint64_t ClientStreamBytes(Dir dir) {
    FaultInjectingOs counter;
    EXPECT_EQ(Run(&counter), golden_);
    return counter.bytes(dir);
  }

  FaultInjectingOs server_os_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Idio16Device> idio_;
  std::unique_ptr<DeviceServer> server_;
  std::string path_;
  int baseline_fds_ = 0;
  std::vector<Reply> golden_;
};

TEST_F(SessionFaultTest, OneByteReadsAndWritesOnBothSides) {
  server_os_.SetMaxBytesPerCall(Dir::kRecv, 1);
  server_os_.SetMaxBytesPerCall(Dir::kSend, 1);
  FaultInjectingOs client_os;
  client_os.SetMaxBytesPerCall(Dir::kRecv, 1);
  client_os.SetMaxBytesPerCall(Dir::kSend, 1);
  EXPECT_EQ(Run(&client_os), golden_);
  server_os_.Clear();
  ExpectCleanAfterSession("one-byte I/O");
}

TEST_F(SessionFaultTest, ServerReadPausesAtEveryByte) {
  const uint64_t stream = ClientStreamBytes(Dir::kSend);
  ASSERT_GT(stream, 500u);
  // A pause at every byte; EINTR (retried inside the same call) at every
  // fifth.
  for (int err : {EAGAIN, EINTR}) {
    for (uint64_t b = 0; b < stream; b += err == EAGAIN ? 1 : 5) {
      server_os_.InjectErrors(Dir::kRecv, err, 1, server_os_.bytes(Dir::kRecv) + b);
      ASSERT_EQ(Run(nullptr), golden_) << "errno " << err << " at byte " << b;
      server_os_.Clear();
    }
  }
  ExpectCleanAfterSession("pauses");
}

TEST_F(SessionFaultTest, ServerWritePausesAtEveryByte) {
  const uint64_t stream = ClientStreamBytes(Dir::kRecv);
  ASSERT_GT(stream, 1000u);
  // A pause at every byte; EINTR (retried inside the same call) at every
  // fifth.
  for (int err : {EAGAIN, EINTR}) {
    for (uint64_t b = 0; b < stream; b += err == EAGAIN ? 1 : 5) {
      server_os_.InjectErrors(Dir::kSend, err, 1, server_os_.bytes(Dir::kSend) + b);
      ASSERT_EQ(Run(nullptr), golden_) << "errno " << err << " at byte " << b;
      server_os_.Clear();
    }
  }
  ExpectCleanAfterSession("send pauses");
}

TEST_F(SessionFaultTest, EintrAndEagainStorms) {
  std::mt19937 rng(7);
  for (int round = 0; round < 20; ++round) {
    const uint64_t recv_base = server_os_.bytes(Dir::kRecv);
    const uint64_t send_base = server_os_.bytes(Dir::kSend);
    server_os_.InjectErrors(Dir::kRecv, EINTR, 200, recv_base + rng() % 600);
    server_os_.InjectErrors(Dir::kRecv, EAGAIN, 20, recv_base + rng() % 600);
    server_os_.InjectErrors(Dir::kSend, EINTR, 200, send_base + rng() % 1500);
    server_os_.InjectErrors(Dir::kSend, EAGAIN, 20, send_base + rng() % 1500);
    FaultInjectingOs client_os;
    client_os.InjectErrors(Dir::kSend, EINTR, 100, rng() % 600);
    client_os.InjectErrors(Dir::kRecv, EINTR, 100, rng() % 1500);
    client_os.InjectErrors(Dir::kRecv, EAGAIN, 100, rng() % 1500);
    client_os.InjectPollErrors(50);
    ASSERT_EQ(Run(&client_os), golden_) << "round " << round;
    server_os_.Clear();
  }
  ExpectCleanAfterSession("storms");
}

TEST_F(SessionFaultTest, ClientDiesAtEveryByteOfItsStream) {
  const uint64_t stream = ClientStreamBytes(Dir::kSend);
  for (uint64_t b = 0; b < stream; ++b) {
    FaultInjectingOs client_os;
    client_os.HangUpAt(Dir::kSend, b, EPIPE);
    std::vector<Reply> replies = Run(&client_os);
    ASSERT_LT(replies.size(), golden_.size()) << b;
    // Whatever was answered was answered as usual.
    for (size_t i = 0; i < replies.size(); ++i) ASSERT_EQ(replies[i], golden_[i]) << b;
    ExpectCleanAfterSession(absl::StrCat("client died at byte ", b));
    if (HasFailure()) return;
  }
  EXPECT_EQ(Run(nullptr), golden_) << "a normal client after all that";
}

TEST_F(SessionFaultTest, ServerSendFailsAtEveryByteOfItsStream) {
  const uint64_t stream = ClientStreamBytes(Dir::kRecv);
  for (uint64_t b = 0; b < stream; b += 3) {
    server_os_.HangUpAt(Dir::kSend, server_os_.bytes(Dir::kSend) + b, ECONNRESET);
    std::vector<Reply> replies = Run(nullptr);
    server_os_.Clear();
    ASSERT_LT(replies.size(), golden_.size()) << b;
    ExpectCleanAfterSession(absl::StrCat("server send failed at byte ", b));
    if (HasFailure()) return;
  }
  EXPECT_EQ(Run(nullptr), golden_);
}

TEST_F(SessionFaultTest, ServerSeesEofAtEveryByteOfTheClientStream) {
  const uint64_t stream = ClientStreamBytes(Dir::kSend);
  for (uint64_t b = 0; b < stream; ++b) {
    server_os_.HangUpAt(Dir::kRecv, server_os_.bytes(Dir::kRecv) + b);
    std::vector<Reply> replies = Run(nullptr);
    server_os_.Clear();
    ASSERT_LT(replies.size(), golden_.size()) << b;
    ExpectCleanAfterSession(absl::StrCat("EOF at byte ", b));
    if (HasFailure()) return;
  }
  EXPECT_EQ(Run(nullptr), golden_);
}

}  // namespace
}  // namespace vfio_user
