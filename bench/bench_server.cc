#include "bench/bench_server.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "bench/harness.h"
#include "core/log.h"
#include "core/protocol.h"
#include "server/device.h"
#include "server/device_server.h"
#include "server/event_loop.h"

namespace vfio_user {
namespace bench {
namespace {

// Control protocol: fixed-size commands; loops answer with a count and the
// samples (doubles), everything else with nothing.
enum class Op : uint32_t {
  kReady = 1,  // child -> parent once listening
  kExit,
  kDmaLoop,
  kMemcpyLoop,
  kTrigger,
};

struct Command {
  Op op = Op::kExit;
  uint32_t flags = 0;
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t iters = 0;
};
constexpr uint32_t kFlagWrite = 1;
constexpr uint32_t kFlagMmapDevice = 2;
constexpr uint32_t kFlagRaw = 4;
constexpr uint32_t kFlagHeld = 8;

// The trap device: registers and bulk memory behind callbacks.
class TrapDevice {
 public:
  TrapDevice() : device_("bench-trap") {
    PciConfigSpace& config = device_.config();
    config.SetIds({.vendor_id = 0x1af4,
                   .device_id = 0x10f1,
                   .subsystem_vendor_id = 0x1af4,
                   .subsystem_id = 0x10f1,
                   .class_code = 0xff0000});
    Check(config.AddBar(kRegisterBar, PciBar::Memory32(kRegisterBarSize)),
          "AddBar 0");
    Check(config.AddBar(kBulkBar, PciBar::Memory32(kBulkBarSize)), "AddBar 2");
    Check(device_.SetupRegion(
              kRegisterBar,
              RegionSpec::Trapped(
                  kRegisterBarSize,
                  [this](uint64_t offset, absl::Span<uint8_t> out) {
                    std::memcpy(out.data(), registers_ + offset, out.size());
                    return absl::OkStatus();
                  },
                  [this](uint64_t offset, absl::Span<const uint8_t> in) {
                    std::memcpy(registers_ + offset, in.data(), in.size());
                    return absl::OkStatus();
                  })),
          "SetupRegion 0");
    // A sink/source: the callbacks get the engine's buffer and leave the
    // bytes where they are, as the raw floor leaves them in its buffer (a
    // real device's own copy would be device work, not protocol cost).
    Check(device_.SetupRegion(
              kBulkBar, RegionSpec::Trapped(
                            kBulkBarSize,
                            [](uint64_t, absl::Span<uint8_t>) {
                              return absl::OkStatus();
                            },
                            [](uint64_t, absl::Span<const uint8_t>) {
                              return absl::OkStatus();
                            })),
          "SetupRegion 2");
    device_.SetIrqCount(kPciMsiIrqIndex, 1);
  }
  Device& device() { return device_; }

 private:
  Device device_;
  uint8_t registers_[kRegisterBarSize] = {};
};

// The mmap device: one fully mappable memory BAR.
class MmapDevice {
 public:
  MmapDevice() : device_("bench-mmap") {
    PciConfigSpace& config = device_.config();
    config.SetIds({.vendor_id = 0x1af4,
                   .device_id = 0x10f2,
                   .subsystem_vendor_id = 0x1af4,
                   .subsystem_id = 0x10f2,
                   .class_code = 0xff0000});
    Check(config.AddBar(kMemoryBar, PciBar::Memory32(kMemoryBarSize)),
          "AddBar 0");
    Check(device_.SetupRegion(kMemoryBar, RegionSpec::Memory(kMemoryBarSize)),
          "SetupRegion 0");
  }
  Device& device() { return device_; }

 private:
  Device device_;
};

// Largest DMA / memcpy transfer the control commands may ask for.
constexpr uint64_t kMaxTransfer = 4u << 20;

std::vector<double> TimedLoop(uint64_t iters,
                              const std::function<void()>& body) {
  std::vector<double> samples;
  samples.reserve(iters);
  for (uint64_t i = 0; i < iters; ++i) {
    const int64_t start = NowNs();
    body();
    samples.push_back(static_cast<double>(NowNs() - start));
  }
  return samples;
}

void SendSamples(int fd, const std::vector<double>& samples) {
  const uint64_t n = samples.size();
  WriteFull(fd, &n, sizeof(n));
  WriteFull(fd, samples.data(), n * sizeof(double));
}

// The server process's main: serve both devices, obey the parent.
int ServeMain(int control_fd, int raw_eventfd, SharedPage* shared,
              const std::string& trap_socket, const std::string& mmap_socket) {
  SetLogLevel(LogLevel::kWarn);
  std::unique_ptr<EventLoop> loop = Check(EventLoop::Create(), "EventLoop");
  TrapDevice trap;
  MmapDevice mmap_device;
  DeviceServerOptions trap_options;
  trap_options.socket_path = trap_socket;
  std::unique_ptr<DeviceServer> trap_server = Check(
      DeviceServer::Create(loop.get(), &trap.device(), std::move(trap_options)),
      "DeviceServer trap");
  DeviceServerOptions mmap_options;
  mmap_options.socket_path = mmap_socket;
  std::unique_ptr<DeviceServer> mmap_server =
      Check(DeviceServer::Create(loop.get(), &mmap_device.device(),
                                 std::move(mmap_options)),
            "DeviceServer mmap");
  // Page-aligned, as guest memory is (see AlignedBuffer in harness.h).
  // Filled before start-up ends: not while a client reconnects.
  uint8_t* const buffer = AlignedBuffer(kMaxTransfer, 0);
  uint8_t* const source = AlignedBuffer(kMaxTransfer, 0x5a);
  loop->StartThread("bench-loop");
  // Start-up ends here: both sockets listen and the loop thread runs.
  shared->listening_ns.store(NowNs(), std::memory_order_release);

  const Command ready{Op::kReady};
  WriteFull(control_fd, &ready, sizeof(ready));
  for (;;) {
    Command cmd;
    ReadFull(control_fd, &cmd, sizeof(cmd));
    if (cmd.size > kMaxTransfer) {
      Check(absl::InvalidArgumentError("transfer too large"), "command");
    }
    switch (cmd.op) {
      case Op::kReady:
      case Op::kExit:
        loop->RunSync([&] {
          trap_server.reset();
          mmap_server.reset();
        });
        loop->Stop();
        loop->Join();
        return 0;
      case Op::kDmaLoop: {
        Device& dev = (cmd.flags & kFlagMmapDevice) ? mmap_device.device()
                                                     : trap.device();
        const absl::Span<uint8_t> data(buffer, cmd.size);
        const bool write = (cmd.flags & kFlagWrite) != 0;
        if (cmd.flags & kFlagHeld) {
          // One Device::WithDmaMapping around the loop; each sample is one
          // copy through the held mapping.
          std::vector<double> samples;
          Check(dev.WithDmaMapping(
                    cmd.iova, cmd.size, write,
                    [&](absl::Span<uint8_t> guest) {
                      samples = TimedLoop(cmd.iters, [&] {
                        if (write) {
                          std::memcpy(guest.data(), buffer, cmd.size);
                        } else {
                          std::memcpy(buffer, guest.data(), cmd.size);
                        }
                        asm volatile("" : : "r"(guest.data()), "r"(buffer)
                                     : "memory");
                      });
                    }),
                "WithDmaMapping");
          SendSamples(control_fd, samples);
          break;
        }
        SendSamples(control_fd, TimedLoop(cmd.iters, [&] {
                      Check(write ? dev.DmaWrite(cmd.iova, data)
                                  : dev.DmaRead(cmd.iova, data),
                            "DMA");
                    }));
        break;
      }
      case Op::kMemcpyLoop: {
        SendSamples(control_fd, TimedLoop(cmd.iters, [&] {
                      std::memcpy(buffer, source, cmd.size);
                      // Keep the copy from being optimized away.
                      asm volatile("" : : "r"(buffer) : "memory");
                    }));
        break;
      }
      case Op::kTrigger:
        shared->trigger_ns.store(NowNs(), std::memory_order_release);
        if (cmd.flags & kFlagRaw) {
          const uint64_t one = 1;
          WriteFull(raw_eventfd, &one, sizeof(one));
        } else {
          Check(trap.device().TriggerIrq(kPciMsiIrqIndex, 0), "TriggerIrq");
        }
        break;
    }
  }
}

constexpr char kChildFlag[] = "--bench-server-child";

SharedPage* MapSharedPage(int fd) {
  void* page = ::mmap(nullptr, sizeof(SharedPage), PROT_READ | PROT_WRITE,
                      MAP_SHARED, fd, 0);
  CheckErrno(page != MAP_FAILED, "mmap shared page");
  return static_cast<SharedPage*>(page);
}

int ParseFd(const char* text) {
  int fd = -1;
  if (!absl::SimpleAtoi(text, &fd) || fd < 0) {
    std::fprintf(stderr, "bench server: bad fd %s\n", text);
    std::exit(2);
  }
  return fd;
}

}  // namespace

void RunBenchServerChildIfAsked(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], kChildFlag) != 0) return;
  if (argc != 7) {
    std::fprintf(stderr, "bench server: bad arguments\n");
    std::exit(2);
  }
  // Die with the parent rather than linger if it crashes.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  ConfigureProcess();
  const int control_fd = ParseFd(argv[2]);
  const int raw_eventfd = ParseFd(argv[3]);
  SharedPage* shared = MapSharedPage(ParseFd(argv[4]));
  std::exit(ServeMain(control_fd, raw_eventfd, shared, argv[5], argv[6]));
}

std::unique_ptr<BenchServer> BenchServer::Start(const std::string& tag,
                                                const std::string& trap_socket,
                                                const std::string& mmap_socket) {
  std::unique_ptr<BenchServer> server(new BenchServer());
  server->trap_socket_ =
      trap_socket.empty() ? SocketPath(tag + "-trap") : trap_socket;
  server->mmap_socket_ =
      mmap_socket.empty() ? SocketPath(tag + "-mmap") : mmap_socket;
  // The child's ends are inherited through exec (no CLOEXEC); the parent
  // closes them once the child runs.
  const int page_fd = ::memfd_create("bench-shared", 0);
  CheckErrno(page_fd >= 0, "memfd_create");
  CheckErrno(::ftruncate(page_fd, sizeof(SharedPage)) == 0, "ftruncate");
  server->shared_ = new (MapSharedPage(page_fd)) SharedPage();
  server->raw_eventfd_ = ::eventfd(0, 0);
  CheckErrno(server->raw_eventfd_ >= 0, "eventfd");
  int fds[2];
  CheckErrno(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
  CheckErrno(::fcntl(fds[0], F_SETFD, FD_CLOEXEC) == 0, "fcntl");

  const std::string control = absl::StrCat(fds[1]);
  const std::string efd = absl::StrCat(server->raw_eventfd_);
  const std::string page = absl::StrCat(page_fd);
  // The binary's own path (not "/proc/self/exe", which under a wrapper
  // such as valgrind is the wrapper).
  char exe_buf[4096];
  const ssize_t exe_len = ::readlink("/proc/self/exe", exe_buf, sizeof(exe_buf) - 1);
  CheckErrno(exe_len > 0, "readlink /proc/self/exe");
  std::string exe(exe_buf, static_cast<size_t>(exe_len));
  std::vector<char*> args = {exe.data(),
                             const_cast<char*>(kChildFlag),
                             const_cast<char*>(control.c_str()),
                             const_cast<char*>(efd.c_str()),
                             const_cast<char*>(page.c_str()),
                             server->trap_socket_.data(),
                             server->mmap_socket_.data(),
                             nullptr};
  const int err = ::posix_spawn(&server->pid_, exe.c_str(), nullptr, nullptr,
                                args.data(), environ);
  errno = err;
  CheckErrno(err == 0, "posix_spawn bench server");
  ::close(fds[1]);
  ::close(page_fd);
  server->control_fd_ = fds[0];
  Command ready;
  ReadFull(server->control_fd_, &ready, sizeof(ready));
  return server;
}

BenchServer::~BenchServer() {
  if (!killed_) {
    const Command exit{Op::kExit};
    WriteFull(control_fd_, &exit, sizeof(exit));
    WaitChild(pid_);
  }
  ::close(control_fd_);
  ::close(raw_eventfd_);
  ::munmap(shared_, sizeof(SharedPage));
}

void BenchServer::Kill() {
  if (killed_) return;
  killed_ = true;
  ::kill(pid_, SIGKILL);
  WaitChild(pid_);
}

std::vector<double> BenchServer::ReadSamples() {
  uint64_t n = 0;
  ReadFull(control_fd_, &n, sizeof(n));
  std::vector<double> samples(n);
  ReadFull(control_fd_, samples.data(), n * sizeof(double));
  return samples;
}

std::vector<double> BenchServer::DmaLoop(bool mmap_device, bool write,
                                         uint64_t iova, uint64_t size,
                                         int iters) {
  Command cmd{Op::kDmaLoop};
  cmd.flags = (write ? kFlagWrite : 0) | (mmap_device ? kFlagMmapDevice : 0);
  cmd.iova = iova;
  cmd.size = size;
  cmd.iters = static_cast<uint64_t>(iters);
  WriteFull(control_fd_, &cmd, sizeof(cmd));
  return ReadSamples();
}

std::vector<double> BenchServer::HeldDmaLoop(bool write, uint64_t iova,
                                             uint64_t size, int iters) {
  Command cmd{Op::kDmaLoop};
  cmd.flags = kFlagMmapDevice | kFlagHeld | (write ? kFlagWrite : 0);
  cmd.iova = iova;
  cmd.size = size;
  cmd.iters = static_cast<uint64_t>(iters);
  WriteFull(control_fd_, &cmd, sizeof(cmd));
  return ReadSamples();
}

std::vector<double> BenchServer::MemcpyLoop(uint64_t size, int iters) {
  Command cmd{Op::kMemcpyLoop};
  cmd.size = size;
  cmd.iters = static_cast<uint64_t>(iters);
  WriteFull(control_fd_, &cmd, sizeof(cmd));
  return ReadSamples();
}

void BenchServer::Trigger(bool raw) {
  Command cmd{Op::kTrigger};
  cmd.flags = raw ? kFlagRaw : 0;
  WriteFull(control_fd_, &cmd, sizeof(cmd));
}

}  // namespace bench
}  // namespace vfio_user
