// Figure 1: 4-byte REGION_READ / REGION_WRITE round trips, client library ->
// device callback -> back, between two processes, beside a raw AF_UNIX
// ping-pong of the same byte counts between two processes.
#include <cstdint>
#include <memory>

#include "absl/types/span.h"
#include "bench/bench_server.h"
#include "bench/harness.h"
#include "bench/raw_peer.h"
#include "client/client.h"
#include "core/log.h"

namespace vfio_user {
namespace bench {
namespace {

constexpr size_t kHeader = 16;  // vfio-user message header
constexpr size_t kAccess = 16;  // region access header (offset, region, count)
constexpr size_t kData = 4;

int Main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);

  // Floors first: forking needs a single-threaded parent.
  std::unique_ptr<RawPeer> read_floor =
      RawPeer::Start(kHeader + kAccess, kHeader + kAccess + kData);
  std::unique_ptr<RawPeer> write_floor =
      RawPeer::Start(kHeader + kAccess + kData, kHeader + kAccess);
  std::unique_ptr<BenchServer> server = BenchServer::Start("rtt");

  ClientOptions options;
  options.socket_path = server->trap_socket();
  std::unique_ptr<Client> client =
      Check(Client::Connect(std::move(options)), "Client::Connect");

  const int rounds = config.Rounds(10);
  const int iters = config.Iters(5000);
  uint8_t value[kData] = {1, 2, 3, 4};
  const Processes ours = {0, server->pid()};
  const Comparison read = Interleave(
      rounds, iters, [&] { read_floor->RoundTrip(); },
      [&] {
        Check(client->Read(kRegisterBar, 0x10, absl::MakeSpan(value)),
              "Client::Read");
      },
      {0, read_floor->pid()}, ours);
  const Comparison write = Interleave(
      rounds, iters, [&] { write_floor->RoundTrip(); },
      [&] {
        Check(client->Write(kRegisterBar, 0x10, absl::MakeConstSpan(value)),
              "Client::Write");
      },
      {0, write_floor->pid()}, ours);
  client->Close();

  Report report("1. Region access: 4-byte round trips",
                "//bench:region_rtt_bench", config);
  report.Latency("REGION_READ 4 B: Client::Read -> device callback -> reply",
                 "raw ping-pong 32 B -> 36 B", read, /*max_ratio=*/1.05);
  report.Latency(
      "REGION_WRITE 4 B: Client::Write (waited) -> device callback -> reply",
      "raw ping-pong 36 B -> 32 B", write, /*max_ratio=*/1.05);
  report.Note(
      "Both sides are separate processes pinned to one CPU. The floor is two "
      "processes doing blocking write()/read() of exactly the wire sizes "
      "(header 16 B + access header 16 B + data). Target: ratio <= 1.05. "
      "The last column is the CPU time both processes spent per round trip "
      "(client + server, all threads): on one CPU with nothing else running "
      "it equals the wall-clock round trip, and unlike the wall clock it is "
      "not stretched by other load.");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
