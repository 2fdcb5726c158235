// Figure 2: bulk transfers over the socket -- REGION_WRITE / REGION_READ
// (client -> device callback) and server-initiated DMA_READ / DMA_WRITE
// (device -> client's guest memory, by message) at 4 KiB, 64 KiB and 1 MiB,
// beside raw socket transfers of the same byte counts; and a small DMA round
// trip beside a small region round trip.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "bench/bench_server.h"
#include "bench/harness.h"
#include "bench/raw_peer.h"
#include "client/client.h"
#include "client/guest_memory.h"
#include "core/log.h"

namespace vfio_user {
namespace bench {
namespace {

constexpr size_t kHeader = 16;     // vfio-user message header
constexpr size_t kAccess = 16;     // region / DMA access header
constexpr size_t kFixed = kHeader + kAccess;
constexpr uint64_t kDmaIova = 0x10000000;
constexpr uint64_t kGuestSize = 2u << 20;
constexpr size_t kSizes[] = {4096, 64 * 1024, 1024 * 1024};
constexpr size_t kSmall = 4;
constexpr double kMinShare = 0.80;  // target: >= 80% of the floor

// Iterations for one round at `size` (fewer for larger transfers).
int ItersFor(const BenchConfig& config, size_t size) {
  return config.Iters(size >= (1u << 20) ? 100 : size >= 65536 ? 500 : 2000);
}

int Main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);

  // Floors (forked before any thread exists): request -> reply byte counts.
  // Writes (REGION_WRITE, DMA_WRITE): 32 + N -> 32. Reads: 32 -> 32 + N.
  std::vector<std::unique_ptr<RawPeer>> write_floors, read_floors;
  for (size_t size : kSizes) {
    write_floors.push_back(RawPeer::Start(kFixed + size, kFixed));
    read_floors.push_back(RawPeer::Start(kFixed, kFixed + size));
  }
  std::unique_ptr<RawPeer> small_floor = RawPeer::Start(kFixed, kFixed + kSmall);
  std::unique_ptr<BenchServer> server = BenchServer::Start("bulk");

  ClientOptions options;
  options.socket_path = server->trap_socket();
  std::unique_ptr<Client> client =
      Check(Client::Connect(std::move(options)), "Client::Connect");
  // Guest memory the device reaches by message only (no fd passed).
  std::unique_ptr<GuestMemory> guest =
      Check(GuestMemory::Create(kGuestSize), "GuestMemory::Create");
  Check(client->DmaMap(guest->Region(kDmaIova, 0, 0,
                                     kDmaMapFlagRead | kDmaMapFlagWrite,
                                     /*pass_fd=*/false)),
        "DmaMap");

  Report report("2. Bulk transfers over the socket", "//bench:bulk_bench",
                config);
  const int rounds = config.Rounds(6);
  std::vector<uint8_t> buffer(kSizes[2]);
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    const size_t size = kSizes[i];
    const int iters = ItersFor(config, size);
    const absl::Span<uint8_t> data(buffer.data(), size);
    const std::string bytes = FormatBytes(size);
    const std::string write_floor =
        absl::StrCat("raw ", kFixed, " B + ", bytes, " -> ", kFixed, " B");
    const std::string read_floor =
        absl::StrCat("raw ", kFixed, " B -> ", kFixed, " B + ", bytes);
    const Processes ours = {0, server->pid()};
    report.Bandwidth(
        "REGION_WRITE (Client::Write -> device callback)", write_floor, size,
        Interleave(
            rounds, iters, [&] { write_floors[i]->RoundTrip(); },
            [&] { Check(client->Write(kBulkBar, 0, data), "Client::Write"); },
            {0, write_floors[i]->pid()}, ours),
        kMinShare);
    report.Bandwidth(
        "REGION_READ (Client::Read <- device callback)", read_floor, size,
        Interleave(
            rounds, iters, [&] { read_floors[i]->RoundTrip(); },
            [&] { Check(client->Read(kBulkBar, 0, data), "Client::Read"); },
            {0, read_floors[i]->pid()}, ours),
        kMinShare);
    const auto floor_round = [&](RawPeer* peer) {
      return [&, peer](int n) {
        std::vector<double> samples;
        samples.reserve(n);
        for (int k = 0; k < n; ++k) {
          const int64_t start = NowNs();
          peer->RoundTrip();
          samples.push_back(static_cast<double>(NowNs() - start));
        }
        return samples;
      };
    };
    report.Bandwidth(
        "DMA_READ (Device::DmaRead, served by the client)", read_floor, size,
        InterleaveRounds(
            rounds, iters, floor_round(read_floors[i].get()),
            [&](int n) {
              return server->DmaLoop(false, false, kDmaIova, size, n);
            },
            {0, read_floors[i]->pid()}, ours),
        kMinShare);
    report.Bandwidth(
        "DMA_WRITE (Device::DmaWrite, served by the client)", write_floor, size,
        InterleaveRounds(
            rounds, iters, floor_round(write_floors[i].get()),
            [&](int n) {
              return server->DmaLoop(false, true, kDmaIova, size, n);
            },
            {0, write_floors[i]->pid()}, ours),
        kMinShare);
  }

  // Small server-initiated DMA round trip vs the region round trip.
  const int small_iters = config.Iters(3000);
  uint8_t small[kSmall] = {};
  const Processes ours = {0, server->pid()};
  const Comparison region_vs_raw = Interleave(
      rounds, small_iters, [&] { small_floor->RoundTrip(); },
      [&] {
        Check(client->Read(kRegisterBar, 0, absl::MakeSpan(small)),
              "Client::Read");
      },
      {0, small_floor->pid()}, ours);
  const Comparison dma_vs_region = InterleaveRounds(
      rounds, small_iters,
      [&](int n) {
        std::vector<double> samples;
        samples.reserve(n);
        for (int k = 0; k < n; ++k) {
          const int64_t start = NowNs();
          Check(client->Read(kRegisterBar, 0, absl::MakeSpan(small)),
                "Client::Read");
          samples.push_back(static_cast<double>(NowNs() - start));
        }
        return samples;
      },
      [&](int n) { return server->DmaLoop(false, false, kDmaIova, kSmall, n); },
      ours, ours);
  report.Latency("REGION_READ 4 B (client-initiated)",
                 "raw ping-pong 32 B -> 36 B", region_vs_raw);
  report.Latency("DMA_READ 4 B (device-initiated: Device::DmaRead by message)",
                 "our REGION_READ 4 B round trip", dma_vs_region,
                 /*max_ratio=*/1.5);
  Check(client->DmaUnmapAll(), "DmaUnmapAll");
  client->Close();

  report.Note(
      "Bandwidth = bytes moved / median time of one transfer (request and "
      "reply). The floor moves the same byte counts between two processes "
      "with blocking write()/read() on an AF_UNIX stream socket. REGION_* "
      "are timed in the client process, DMA_* in the device-server process "
      "(Device::DmaRead/DmaWrite from a device thread, for guest memory the "
      "client mapped without an fd, served by the client library). Targets: "
      ">= 80% of the floor; the 4-byte DMA round trip <= 1.5x the 4-byte "
      "region round trip.");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
