// BenchServer: a device-server process for the benchmarks, and the devices
// it serves.
//
// The child process runs one EventLoop serving two devices built with the
// public device API (server/device.h):
//   * the "trap" device: BAR0 4 KiB of trapped 32-bit registers (callbacks),
//     BAR2 2 MiB trapped sink/source (callbacks that leave the data alone:
//     the figure is the engine's cost, not a device's copy), one MSI
//     vector. Nothing is mappable, so the client may post writes.
//   * the "mmap" device: BAR0 4 MiB memory-backed and fully mappable.
// The process is this very binary, started again with posix_spawn (so a
// multi-threaded parent may start one at any time, e.g. to restart the
// server); every bench main() must call RunBenchServerChildIfAsked() first.
// Its main thread executes commands from the parent over a control socket:
// timed loops of Device::DmaRead/DmaWrite (the device's view of DMA: through
// the client's mmap'ed fd or by DMA_READ/DMA_WRITE messages), their memcpy
// floor, and interrupt triggers (through the device, or a raw eventfd for
// the floor), stamping the trigger time into a page shared with the parent.
//
// Thread-safety: one thread of the parent drives a BenchServer.
#ifndef VFIO_USER_BENCH_BENCH_SERVER_H_
#define VFIO_USER_BENCH_BENCH_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vfio_user {
namespace bench {

// Region layout of the benchmark devices.
inline constexpr uint32_t kRegisterBar = 0;  // trap device
inline constexpr uint32_t kRegisterBarSize = 0x1000;
inline constexpr uint32_t kBulkBar = 2;  // trap device
inline constexpr uint32_t kBulkBarSize = 2u << 20;
inline constexpr uint32_t kMemoryBar = 0;  // mmap device
inline constexpr uint32_t kMemoryBarSize = 4u << 20;

// A page shared by the parent and the server process.
struct SharedPage {
  std::atomic<int64_t> trigger_ns{0};    // when the last interrupt was raised
  std::atomic<int64_t> listening_ns{0};  // when both devices started listening
};

// If argv asks for it (the BenchServer child), runs the server process and
// exits; otherwise returns at once.
void RunBenchServerChildIfAsked(int argc, char** argv);

class BenchServer {
 public:
  // Starts the server process and waits until both devices listen. With
  // empty paths, fresh socket paths are made from `tag`; given paths are
  // reused (e.g. to restart a server where the client expects it).
  static std::unique_ptr<BenchServer> Start(const std::string& tag,
                                            const std::string& trap_socket = "",
                                            const std::string& mmap_socket = "");
  ~BenchServer();  // asks the child to exit (unless killed) and reaps it
  BenchServer(const BenchServer&) = delete;
  BenchServer& operator=(const BenchServer&) = delete;

  const std::string& trap_socket() const { return trap_socket_; }
  const std::string& mmap_socket() const { return mmap_socket_; }
  pid_t pid() const { return pid_; }
  SharedPage* shared() const { return shared_; }
  // The eventfd the floor's interrupt goes through.
  int raw_eventfd() const { return raw_eventfd_; }

  // Times `iters` calls of Device::DmaRead (or DmaWrite) of `size` bytes at
  // `iova` on the trap device (`mmap_device`: the mmap device) from the
  // server's control thread; per-call nanoseconds.
  std::vector<double> DmaLoop(bool mmap_device, bool write, uint64_t iova,
                              uint64_t size, int iters);
  // Like DmaLoop on the mmap device, but the control thread holds the
  // mapping of [iova, iova + size) with one Device::WithDmaMapping around
  // the loop and copies through it: per-copy nanoseconds.
  std::vector<double> HeldDmaLoop(bool write, uint64_t iova, uint64_t size,
                                  int iters);
  // The same number of memcpy() calls of `size` bytes in the server.
  std::vector<double> MemcpyLoop(uint64_t size, int iters);
  // Stamps shared()->trigger_ns and raises MSI vector 0 of the trap device
  // (`raw`: writes raw_eventfd() instead). Returns at once.
  void Trigger(bool raw);
  // SIGKILLs the server process and reaps it (a crash, for the reconnect
  // benchmark). Other methods must not be called afterwards.
  void Kill();

 private:
  BenchServer() = default;
  std::vector<double> ReadSamples();

  pid_t pid_ = -1;
  bool killed_ = false;
  int control_fd_ = -1;
  int raw_eventfd_ = -1;
  SharedPage* shared_ = nullptr;
  std::string trap_socket_;
  std::string mmap_socket_;
};

}  // namespace bench
}  // namespace vfio_user

#endif  // VFIO_USER_BENCH_BENCH_SERVER_H_
