// Figure 3: bulk transfers through shared memory -- device DMA through the
// client's guest memory mmap'ed by the server (DMA_MAP with an fd), and the
// client's accesses to a BAR it mmap'ed -- beside memcpy() of the same size
// in the same process.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_server.h"
#include "bench/harness.h"
#include "client/client.h"
#include "client/guest_memory.h"
#include "client/region_mapping.h"
#include "core/log.h"

namespace vfio_user {
namespace bench {
namespace {

constexpr uint64_t kDmaIova = 0x20000000;
constexpr uint64_t kGuestSize = 4u << 20;
constexpr size_t kSizes[] = {4096, 64 * 1024, 1024 * 1024};
constexpr double kMinShare = 0.90;  // target: >= 90% of memcpy

// Keeps the compiler from dropping a copy nobody reads.
void Clobber(void* p) { asm volatile("" : : "r"(p) : "memory"); }

int Main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);
  std::unique_ptr<BenchServer> server = BenchServer::Start("shm");

  ClientOptions options;
  options.socket_path = server->mmap_socket();
  std::unique_ptr<Client> client =
      Check(Client::Connect(std::move(options)), "Client::Connect");
  std::unique_ptr<GuestMemory> guest =
      Check(GuestMemory::Create(kGuestSize), "GuestMemory::Create");
  std::memset(guest->data(), 0x3c, kGuestSize);
  Check(client->DmaMap(guest->Region(kDmaIova)), "DmaMap (with fd)");
  std::unique_ptr<RegionMapping> bar =
      Check(client->MapRegion(kMemoryBar), "MapRegion");

  Report report("3. Bulk transfers through shared memory", "//bench:shm_bench",
                config);
  const int rounds = config.Rounds(6);
  // Page-aligned, as guest memory and BARs are (see AlignedBuffer).
  uint8_t* source = AlignedBuffer(kSizes[2], 0x5a);
  uint8_t* sink = AlignedBuffer(kSizes[2], 0);
  for (size_t size : kSizes) {
    const int iters = config.Iters(size >= (1u << 20) ? 200 : 2000);
    const auto memcpy_round = [&](int n) { return server->MemcpyLoop(size, n); };
    const Processes in_server = {server->pid()};
    report.Bandwidth(
        "Device::DmaRead from mmap'ed guest memory", "memcpy in the server",
        size,
        InterleaveRounds(
            rounds, iters, memcpy_round,
            [&](int n) {
              return server->DmaLoop(true, false, kDmaIova, size, n);
            },
            in_server, in_server),
        kMinShare);
    report.Bandwidth(
        "Device::DmaWrite to mmap'ed guest memory", "memcpy in the server",
        size,
        InterleaveRounds(
            rounds, iters, memcpy_round,
            [&](int n) {
              return server->DmaLoop(true, true, kDmaIova, size, n);
            },
            in_server, in_server),
        kMinShare);
    for (const bool write : {false, true}) {
      report.Bandwidth(
          write ? "Device write through a held mapping (WithDmaMapping)"
                : "Device read through a held mapping (WithDmaMapping)",
          "memcpy in the server", size,
          InterleaveRounds(
              rounds, iters, memcpy_round,
              [&](int n) {
                return server->HeldDmaLoop(write, kDmaIova, size, n);
              },
              in_server, in_server),
          kMinShare);
    }
    uint8_t* window = bar->At(0, size);
    if (window == nullptr) Check(absl::InternalError("BAR not mapped"), "At");
    const auto plain = [&] {
      std::memcpy(sink, source, size);
      Clobber(sink);
    };
    report.Bandwidth("Client write to its mmap'ed BAR", "memcpy in the client",
                     size,
                     Interleave(rounds, iters, plain, [&] {
                       std::memcpy(window, source, size);
                       Clobber(window);
                     }),
                     kMinShare);
    report.Bandwidth("Client read from its mmap'ed BAR", "memcpy in the client",
                     size,
                     Interleave(rounds, iters, plain, [&] {
                       std::memcpy(sink, window, size);
                       Clobber(sink);
                     }),
                     kMinShare);
  }
  bar.reset();
  Check(client->DmaUnmapAll(), "DmaUnmapAll");
  client->Close();

  report.Note(
      "The device side runs in the server process: Device::DmaRead/DmaWrite "
      "on a device thread, against guest memory the client passed with an fd "
      "(the engine mmaps it, so an access is a bounds-checked memcpy). The "
      "held-mapping rows take the mapping once per round with "
      "Device::WithDmaMapping and then copy through it, as a device working "
      "on one buffer many times would (the per-call rows pay the lookup, "
      "lock and fault guard on every call). The "
      "client side copies into/out of RegionMapping::At() of a fully "
      "mappable 4 MiB BAR. The floor is memcpy() between two private "
      "buffers of the same size in the same process. Target: >= 90%.");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
