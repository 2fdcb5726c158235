// Records the seed corpora of the session, client and version fuzz targets
// from real sessions: the client library runs the ExerciseClient() workload
// (client_exercise.h) against each real sample device (idio-16, DMA test
// device) through a recording proxy that forwards whole messages, fds
// included (the twin socket is proxied too), and logs them.
//   - session seeds: what the client sent, as a session script (plus
//     synthetic scripts for the commands and abuses the workload does not
//     produce: migration, dirty logging, write-multi, framing errors, ...);
//   - client seeds: what the server answered, as a client script;
//   - version seeds: the VERSION payloads both ways.
//
// Usage:
//   bazel run //tests/fuzz:record_fuzz_corpus -- $PWD/tests/fuzz/corpus
// Files with the same names are overwritten; others are left alone.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "core/codec.h"
#include "core/log.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "core/unique_fd.h"
#include "server/device_server.h"
#include "server/devices/dma_engine_device.h"
#include "server/devices/idio16.h"
#include "server/event_loop.h"
#include "tests/fuzz/client_exercise.h"
#include "tests/fuzz/client_fuzz_input.h"
#include "tests/fuzz/session_fuzz_input.h"

namespace vfio_user {
namespace fuzz {
namespace {

// ---- Recording ----

struct Recorded {
  bool from_client = false;
  bool twin = false;
  Header header;
  Bytes payload;
  std::string fd_kinds;  // one letter per fd: m memfd, M sealed memfd,
                         // e eventfd, s socket, p pipe, ? other
};

char ClassifyFd(int fd) {
  char link[256];
  const ssize_t n =
      ::readlink(absl::StrCat("/proc/self/fd/", fd).c_str(), link, sizeof(link) - 1);
  if (n <= 0) return '?';
  const std::string target(link, static_cast<size_t>(n));
  if (target.rfind("/memfd:", 0) == 0) {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    return (seals > 0 && (seals & F_SEAL_SHRINK)) ? 'M' : 'm';
  }
  if (target == "anon_inode:[eventfd]") return 'e';
  if (target.rfind("socket:", 0) == 0) return 's';
  if (target.rfind("pipe:", 0) == 0) return 'p';
  return '?';
}

// Forwards whole messages between one client and the server (reconnects
// start a new pair), recording them. The server's twin socket is replaced
// by a proxied one, so its traffic is recorded too.
class RecordingProxy {
 public:
  RecordingProxy(std::string listen_path, std::string server_path)
      : listen_path_(std::move(listen_path)), server_path_(std::move(server_path)) {}
  ~RecordingProxy() { Stop(); }

  bool Start() {
    absl::StatusOr<UniqueFd> fd = ListenUnix(listen_path_);
    if (!fd.ok()) return false;
    listener_ = std::move(*fd);
    thread_ = std::thread([this] { Run(); });
    return true;
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    ::unlink(listen_path_.c_str());
  }
  std::vector<Recorded> Take() {
    absl::MutexLock lock(&mu_);
    return std::move(log_);
  }

 private:
  struct Link {
    std::unique_ptr<Connection> client, server;
    std::unique_ptr<Connection> client_twin, server_twin;
  };

  static std::unique_ptr<Connection> Wrap(UniqueFd fd) {
    TransportOptions topts;
    topts.max_msg_size = 64u << 20;
    topts.receive_timeout = absl::Seconds(10);
    return std::make_unique<Connection>(std::move(fd), topts);
  }

  void Record(const Message& msg, bool from_client, bool twin) {
    Recorded r;
    r.from_client = from_client;
    r.twin = twin;
    r.header = msg.header;
    r.payload = msg.payload;
    for (const UniqueFd& fd : msg.fds) r.fd_kinds.push_back(ClassifyFd(fd.get()));
    absl::MutexLock lock(&mu_);
    log_.push_back(std::move(r));
  }

  // Moves one message from `from` to `to`; false when the link is over.
  bool Forward(Link& link, Connection* from, Connection* to, bool from_client,
               bool twin) {
    absl::StatusOr<std::optional<Message>> got = from->Receive();
    if (!got.ok() || !got->has_value()) return false;
    Message msg = std::move(**got);
    Record(msg, from_client, twin);
    if (!from_client && !twin && !msg.fds.empty() &&
        ClassifyFd(msg.fds[0].get()) == 's') {
      // The twin socket: splice ourselves in.
      absl::StatusOr<std::pair<UniqueFd, UniqueFd>> pair = MakeSocketPair();
      if (pair.ok()) {
        link.server_twin = Wrap(std::move(msg.fds[0]));
        link.client_twin = Wrap(std::move(pair->first));
        msg.fds[0] = std::move(pair->second);
      }
    }
    return to->Send(msg).ok();
  }

  void Serve(Link& link) {
    while (!stop_) {
      Connection* conns[4] = {link.client.get(), link.server.get(),
                              link.client_twin.get(), link.server_twin.get()};
      struct pollfd p[4];
      for (int i = 0; i < 4; ++i) p[i] = {conns[i] ? conns[i]->fd() : -1, POLLIN, 0};
      bool buffered = false;
      for (Connection* c : conns) buffered |= c != nullptr && c->HasBufferedInput();
      if (!buffered && ::poll(p, 4, 50) <= 0) continue;
      for (int i = 0; i < 4; ++i) {
        if (conns[i] == nullptr) continue;
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)) && !conns[i]->HasBufferedInput()) {
          continue;
        }
        const bool from_client = (i % 2) == 0;
        const bool twin = i >= 2;
        Connection* to = conns[i ^ 1];
        if (!Forward(link, conns[i], to, from_client, twin)) {
          if (!twin) return;  // the main link is over
          link.client_twin.reset();
          link.server_twin.reset();
          break;
        }
      }
    }
  }

  void Run() {
    while (!stop_) {
      struct pollfd p {listener_.get(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!client) continue;
      absl::StatusOr<UniqueFd> server = ConnectUnix(server_path_);
      if (!server.ok()) continue;
      Link link;
      link.client = Wrap(std::move(client));
      link.server = Wrap(std::move(*server));
      Serve(link);
    }
  }

  const std::string listen_path_;
  const std::string server_path_;
  UniqueFd listener_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<Recorded> log_ ABSL_GUARDED_BY(mu_);
};

// Serves `device` on a loop thread, runs the workload through the proxy and
// returns the recording.
std::vector<Recorded> RecordWorkload(Device* device, bool offer_twin) {
  const std::string tag = absl::StrCat(::getpid(), ".", device->name(), offer_twin ? "t" : "");
  const std::string server_path = absl::StrCat("/tmp/rec-srv.", tag, ".sock");
  const std::string proxy_path = absl::StrCat("/tmp/rec-pxy.", tag, ".sock");
  auto loop = EventLoop::Create();
  if (!loop.ok()) return {};
  (*loop)->StartThread();
  std::unique_ptr<DeviceServer> server;
  (*loop)->RunSync([&] {
    DeviceServerOptions options;
    options.socket_path = server_path;
    auto created = DeviceServer::Create(loop->get(), device, std::move(options));
    if (created.ok()) server = std::move(*created);
  });
  std::vector<Recorded> log;
  if (server != nullptr) {
    RecordingProxy proxy(proxy_path, server_path);
    if (proxy.Start()) {
      ClientOptions options;
      options.socket_path = proxy_path;
      options.offer_twin_socket = offer_twin;
      options.reconnect.enabled = false;
      absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
      if (client.ok()) {
        ExerciseClient(client->get());
        (*client)->Close();
      } else {
        std::fprintf(stderr, "connect failed: %s\n", client.status().ToString().c_str());
      }
      ::usleep(100 * 1000);  // let the proxy see the hang-up
      proxy.Stop();
      log = proxy.Take();
    }
  }
  (*loop)->RunSync([&] { server.reset(); });
  (*loop)->Stop();
  (*loop)->Join();
  return log;
}

// ---- Conversions ----

FdKind SessionFdKind(char c) {
  switch (c) {
    case 'm':
      return FdKind::kMemfd;
    case 'M':
      return FdKind::kSealedMemfd;
    case 'p':
      return FdKind::kPipe;
    default:
      return FdKind::kEventfd;
  }
}

ServerFdKind ClientFdKind(char c) {
  switch (c) {
    case 'm':
    case 'M':
      return ServerFdKind::kMemfd;
    case 's':
      return ServerFdKind::kSocket;
    case 'p':
      return ServerFdKind::kPipe;
    default:
      return ServerFdKind::kEventfd;
  }
}

SessionScript SessionSeed(const std::vector<Recorded>& log, uint8_t config) {
  SessionScript script(config);
  for (const Recorded& r : log) {
    if (!r.from_client) continue;
    if (r.header.is_command() && !r.twin) {
      std::vector<FdKind> kinds;
      for (char c : r.fd_kinds) kinds.push_back(SessionFdKind(c));
      script.Message(r.header.cmd, static_cast<uint8_t>(r.header.flags),
                     SessionScript::Fds(kinds), r.payload);
    } else if (r.header.is_reply()) {
      script.ReplyToServer(/*mode=*/2, 0);
    }
  }
  return script;
}

ClientScript ClientSeed(const std::vector<Recorded>& log, uint8_t config) {
  ClientScript script(config);
  for (const Recorded& r : log) {
    if (r.from_client) continue;
    std::vector<ServerFdKind> kinds;
    for (char c : r.fd_kinds) kinds.push_back(ClientFdKind(c));
    if (r.header.is_reply()) {
      script.Reply(r.header.is_error() ? 1 : 0, r.header.error,
                   ClientScript::Fds(kinds), r.payload);
    } else {
      script.Request(r.twin, r.header.cmd, static_cast<uint8_t>(r.header.flags),
                     ClientScript::Fds(kinds), r.payload);
    }
  }
  return script;
}

// ---- Synthetic session scripts ----

uint16_t Cmd(Command c) { return static_cast<uint16_t>(c); }

Bytes VersionBytes(uint16_t minor, const std::string& json) {
  vfio_user::VersionPayload v;
  v.major = kProtocolMajor;
  v.minor = minor;
  v.json = json;
  return EncodeVersion(v);
}

const char kClientJson[] =
    R"({"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true}}})";

SessionScript Attached(uint8_t config, uint16_t minor = 2) {
  SessionScript s(config);
  s.Message(Cmd(Command::kVersion), 0, 0, VersionBytes(minor, kClientJson));
  return s;
}

Bytes Feature(uint32_t flags, const Bytes& data) {
  return EncodeDeviceFeature(static_cast<uint32_t>(8 + data.size()), flags,
                             ByteSpan(data));
}

Bytes DmaMapPayload(uint64_t iova, uint64_t size, uint32_t flags, uint64_t offset = 0) {
  DmaMapRequest r;
  r.address = iova;
  r.size = size;
  r.flags = flags;
  r.offset = offset;
  return EncodeDmaMap(r);
}

std::vector<std::pair<std::string, Bytes>> SyntheticSessionSeeds() {
  std::vector<std::pair<std::string, Bytes>> seeds;
  const uint8_t fd_memfd = SessionScript::Fds({FdKind::kMemfd});
  const uint32_t rw = kDmaMapFlagRead | kDmaMapFlagWrite;

  {  // Migration: probe, STOP_COPY, read the state, resume it elsewhere.
    SessionScript s = Attached(kConfigDmaDevice);
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureProbe | kDeviceFeatureMigration, {}));
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureGet | kDeviceFeatureMigration, Bytes(8)));
    MigDeviceState st;
    st.device_state = static_cast<uint32_t>(MigrationState::kStop);
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                      EncodeMigDeviceState(st)));
    st.device_state = static_cast<uint32_t>(MigrationState::kStopCopy);
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                      EncodeMigDeviceState(st)));
    s.Message(Cmd(Command::kMigDataRead), 0, 0, EncodeMigDataHeader(4104, 4096));
    s.Message(Cmd(Command::kMigDataRead), 0, 0, EncodeMigDataHeader(4104, 4096));
    st.device_state = static_cast<uint32_t>(MigrationState::kStop);
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                      EncodeMigDeviceState(st)));
    st.device_state = static_cast<uint32_t>(MigrationState::kResuming);
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                      EncodeMigDeviceState(st)));
    const Bytes blob = {1, 2, 3, 4, 5, 6, 7, 8};
    s.Message(Cmd(Command::kMigDataWrite), 0, 0, EncodeMigDataWithData(16, ByteSpan(blob)));
    st.device_state = static_cast<uint32_t>(MigrationState::kRunning);
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                      EncodeMigDeviceState(st)));
    seeds.emplace_back("synthetic-migration", s.bytes());
  }
  {  // Dirty logging over an mmap-backed map, with device writes.
    SessionScript s = Attached(kConfigDmaDevice);
    s.Message(Cmd(Command::kDmaMap), 0, fd_memfd, DmaMapPayload(0x100000, 0x10000, rw));
    DmaLoggingStart start;
    start.page_size = 4096;
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureDmaLoggingStart,
                      EncodeDmaLoggingStart(start)));
    s.ServerDma(/*mode=*/3, 0x100000, 256);
    DmaLoggingReport report;
    report.iova = 0x100000;
    report.length = 0x10000;
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureGet | kDeviceFeatureDmaLoggingReport,
                      EncodeDmaLoggingReportRequest(report)));
    s.Message(Cmd(Command::kDeviceFeature), 0, 0,
              Feature(kDeviceFeatureSet | kDeviceFeatureDmaLoggingStop, {}));
    seeds.emplace_back("synthetic-dirty-logging", s.bytes());
  }
  {  // Server DMA by message, answered well and badly.
    SessionScript s = Attached(kConfigNoTwin);
    s.Message(Cmd(Command::kDmaMap), 0, 0, DmaMapPayload(0x200000, 0x10000, rw));
    s.ServerDma(0, 0x200000, 64).ReplyToServer(2, 0);
    s.ServerDma(1, 0x200000, 64).ReplyToServer(2, 0);
    s.ServerDma(0, 0x200000, 64).ReplyToServer(1, EIO);
    s.ServerDma(0, 0x200000, 64).ReplyToServer(4, 0);
    s.ServerDma(2, 0x200000, 64);  // EDEADLK on the loop thread
    seeds.emplace_back("synthetic-dma-by-message", s.bytes());
  }
  {  // Write-multi and region io fds.
    SessionScript s = Attached(kConfigWriteMulti);
    WriteMultiEntry e;
    e.region = Idio16Device::kRegisterBar;
    e.offset = 0;
    e.count = 1;
    e.data[0] = 0xaa;
    std::vector<WriteMultiEntry> entries = {e, e};
    entries[1].offset = 4;
    entries[1].data[0] = 0x55;
    s.Message(Cmd(Command::kRegionWriteMulti), 0, 0, EncodeRegionWriteMulti(entries));
    RegionIoFdsRequest io;
    io.argsz = 64;
    io.index = Idio16Device::kRegisterBar;
    s.Message(Cmd(Command::kDeviceGetRegionIoFds), 0, 0, EncodeRegionIoFdsRequest(io));
    seeds.emplace_back("synthetic-write-multi", s.bytes());
  }
  {  // Framing abuse: chunked one byte at a time, then a bad header.
    SessionScript s(0);
    s.Chunk(1);
    s.Message(Cmd(Command::kVersion), 0, 0, VersionBytes(2, kClientJson));
    s.Chunk(0);
    Header bad;
    bad.msg_id = 9;
    bad.cmd = Cmd(Command::kDeviceGetInfo);
    bad.msg_size = 8;  // shorter than a header
    Bytes raw(kHeaderSize);
    EncodeHeader(bad, raw.data());
    s.Raw(0, raw);
    seeds.emplace_back("synthetic-bad-msg-size", s.bytes());
  }
  {  // Commands before VERSION, an unsolicited reply, VERSION twice.
    SessionScript s(0);
    s.Message(Cmd(Command::kDeviceGetInfo), 0, 0, Bytes(16));
    s.Reconnect();
    s.Message(Cmd(Command::kVersion), 0, 0, VersionBytes(0, kClientJson));
    s.Message(Cmd(Command::kVersion), 0, 0, VersionBytes(2, kClientJson));
    s.Message(Cmd(Command::kDmaRead), kFlagsTypeReply, 0, Bytes(16));
    seeds.emplace_back("synthetic-out-of-order", s.bytes());
  }
  {  // fd abuse: too many fds, a pipe as guest memory, a truncated memfd.
    SessionScript s = Attached(kConfigDmaDevice | kConfigFewFds);
    s.Message(Cmd(Command::kDeviceSetIrqs), 0, kManyFds, Bytes(20));
    s.Message(Cmd(Command::kDmaMap), 0, SessionScript::Fds({FdKind::kPipe}),
              DmaMapPayload(0x100000, 0x1000, rw));
    s.Message(Cmd(Command::kDmaMap), 0, fd_memfd, DmaMapPayload(0x300000, 0x10000, rw));
    s.ClientMischief(0);
    s.ServerDma(3, 0x300000, 128);
    s.ServerDma(2, 0x300000, 128);
    seeds.emplace_back("synthetic-fd-abuse", s.bytes());
  }
  {  // A client that stops reading, a second client, a half close.
    SessionScript s = Attached(0);
    s.StopReading(true);
    for (int i = 0; i < 64; ++i) {
      s.Message(Cmd(Command::kRegionRead), 0, 0,
                EncodeRegionAccessHeader(0, kPciConfigRegionIndex, 256));
    }
    s.SecondClient(VersionBytes(2, kClientJson));
    s.StopReading(false);
    s.HalfClose();
    seeds.emplace_back("synthetic-slow-client", s.bytes());
  }
  {  // A client that stops reading with commands still buffered in the
     // server, then reads again: every command must be answered (the
     // session once forgot commands it had read ahead before its output
     // backed up).
    // One burst of 1500 commands (read ahead at once), replies unread until
    // the output backs up.
    SessionScript s = Attached(0);
    Bytes burst;
    for (uint16_t i = 0; i < 1500; ++i) {
      Message m = MakeCommand(static_cast<uint16_t>(0x100 + i), Command::kRegionRead,
                              EncodeRegionAccessHeader(0, kPciConfigRegionIndex, 256));
      Bytes header(kHeaderSize);
      EncodeHeader(m.header, header.data());
      burst.insert(burst.end(), header.begin(), header.end());
      burst.insert(burst.end(), m.payload.begin(), m.payload.end());
    }
    s.Raw(0, burst);
    seeds.emplace_back("synthetic-slow-client-read-ahead", s.bytes());
  }
  {  // Device-side activity with interrupts wired.
    SessionScript s = Attached(0);
    s.DeviceEvent(2, 0xffff).DeviceEvent(1, 1).DeviceEvent(0, 0).DeviceEvent(3, 0);
    seeds.emplace_back("synthetic-device-events", s.bytes());
  }
  return seeds;
}

// ---- Output ----

bool WriteFile(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  const bool ok = out.good();
  std::printf("%s %s (%zu bytes)\n", ok ? "wrote" : "FAILED", path.c_str(), bytes.size());
  return ok;
}

int Main(const std::string& out_dir) {
  SetLogLevel(LogLevel::kWarn);
  const std::string session_dir = out_dir + "/session";
  const std::string client_dir = out_dir + "/client";
  const std::string version_dir = out_dir + "/version";
  for (const std::string& d : {session_dir, client_dir, version_dir}) {
    std::string cmd = "mkdir -p '" + d + "'";
    if (std::system(cmd.c_str()) != 0) return 1;
  }
  bool ok = true;
  for (bool dma : {false, true}) {
    for (bool twin : {true, false}) {
      std::unique_ptr<Idio16Device> idio;
      std::unique_ptr<DmaTestDevice> dma_device;
      Device* device;
      if (dma) {
        dma_device = std::make_unique<DmaTestDevice>("dma");
        device = dma_device->device();
      } else {
        idio = std::make_unique<Idio16Device>("idio16");
        device = idio->device();
      }
      const std::vector<Recorded> log = RecordWorkload(device, twin);
      if (log.empty()) {
        std::fprintf(stderr, "recording %s failed\n", device->name().c_str());
        ok = false;
        continue;
      }
      const std::string name = absl::StrCat(device->name(), twin ? "-twin" : "-single");
      const uint8_t session_config =
          (dma ? kConfigDmaDevice : 0) | (twin ? 0 : kConfigNoTwin);
      ok &= WriteFile(absl::StrCat(session_dir, "/recorded-", name),
                      SessionSeed(log, session_config).bytes());
      ok &= WriteFile(absl::StrCat(client_dir, "/recorded-", name),
                      ClientSeed(log, twin ? kClientConfigTwin : 0).bytes());
      for (const Recorded& r : log) {
        if (r.header.cmd != Cmd(Command::kVersion) || r.header.is_error()) continue;
        ok &= WriteFile(absl::StrCat(version_dir, "/recorded-", name,
                                     r.from_client ? "-request" : "-reply"),
                        r.payload);
      }
    }
  }
  for (const auto& [name, bytes] : SyntheticSessionSeeds()) {
    ok &= WriteFile(absl::StrCat(session_dir, "/", name), bytes);
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR (e.g. $PWD/tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  return vfio_user::fuzz::Main(argv[1]);
}
