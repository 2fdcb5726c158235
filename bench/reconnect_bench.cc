// Figure 7: reconnect -- the device server is killed (SIGKILL) and started
// again; measured is the time from the new server being ready (listening,
// loop running: its own start-up excluded) to the client being connected
// again with its state replayed (DMA map with an fd, interrupt eventfd).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "bench/bench_server.h"
#include "bench/harness.h"
#include "bench/raw_peer.h"
#include "client/client.h"
#include "client/guest_memory.h"
#include "client/irq_waiter.h"
#include "core/log.h"

namespace vfio_user {
namespace bench {
namespace {

constexpr uint64_t kDmaIova = 0x40000000;

int Main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kError);  // every restart logs reconnect attempts

  std::unique_ptr<RawPeer> rtt_floor = RawPeer::Start(32, 36);
  std::unique_ptr<BenchServer> server = BenchServer::Start("reconnect");
  const std::string trap_socket = server->trap_socket();
  const std::string mmap_socket = server->mmap_socket();

  ClientOptions options;
  options.socket_path = trap_socket;
  // The default reconnect policy (backoff from 10 ms, doubling): the client
  // watches the socket's directory and tries again as soon as the new server
  // creates its socket (client/socket_watch.h), not at its next backoff.
  std::unique_ptr<Client> client =
      Check(Client::Connect(std::move(options)), "Client::Connect");
  std::unique_ptr<GuestMemory> guest =
      Check(GuestMemory::Create(1u << 20), "GuestMemory::Create");
  Check(client->DmaMap(guest->Region(kDmaIova)), "DmaMap");
  std::unique_ptr<IrqWaiter> waiter =
      Check(IrqWaiter::Create(1), "IrqWaiter::Create");
  Check(client->SetIrqEventfds(kPciMsiIrqIndex, 0, waiter->fds()),
        "SetIrqEventfds");

  const int restarts = config.Iters(200);
  std::vector<double> reconnect_ns, detect_ns;
  uint64_t requests_per_reconnect = 0;
  for (int i = 0; i < restarts; ++i) {
    const uint64_t requests_before = client->counters().requests;
    const int64_t killed = NowNs();
    server->Kill();
    const ClientStateInfo lost =
        client->AwaitState(ClientState::kReconnecting, absl::Seconds(10));
    if (lost.state != ClientState::kReconnecting) {
      Check(absl::InternalError("the client did not notice the kill"),
            "AwaitState");
    }
    detect_ns.push_back(static_cast<double>(NowNs() - killed));
    server.reset();
    server = BenchServer::Start("reconnect", trap_socket, mmap_socket);
    const ClientStateInfo back =
        client->AwaitState(ClientState::kConnected, absl::Seconds(10));
    const int64_t ready = NowNs();
    if (back.state != ClientState::kConnected) {
      Check(absl::InternalError(absl::StrCat("reconnect failed: ",
                                             back.last_error.ToString())),
            "AwaitState");
    }
    reconnect_ns.push_back(static_cast<double>(
        ready - server->shared()->listening_ns.load()));
    requests_per_reconnect = client->counters().requests - requests_before;
  }
  // The floor: that many raw request/reply round trips.
  const Comparison rtt = Interleave(
      config.Rounds(5), config.Iters(2000), [&] { rtt_floor->RoundTrip(); },
      [&] { rtt_floor->RoundTrip(); });
  client->Close();

  const Summary reconnect = Summarize(reconnect_ns);
  const Summary detect = Summarize(detect_ns);
  const double floor_ns =
      static_cast<double>(requests_per_reconnect) * rtt.floor.median_ns;
  Report report("7. Reconnect after a server restart", "//bench:reconnect_bench",
                config);
  report.Value("Server ready -> client connected again (median / p99)",
               absl::StrCat(FormatNs(reconnect.median_ns), " / ",
                            FormatNs(reconnect.p99_ns)),
               absl::StrCat(requests_per_reconnect,
                            " request/reply exchanges (VERSION, GET_INFO, "
                            "RESET, replay, GET_REGION_INFO x regions, "
                            "GET_IRQ_INFO x indexes) in 3 round trips "
                            "(the last one a window); floor = as many raw "
                            "round trips: ",
                            FormatNs(floor_ns), " (ratio ",
                            absl::StrFormat("%.2fx", reconnect.median_ns /
                                                         floor_ns),
                            ")"));
  report.Value("SIGKILL of the server -> client state kReconnecting (median)",
               FormatNs(detect.median_ns), "");
  report.Note(absl::StrCat(
      restarts, " restarts. Default reconnect policy (backoff from 10 ms, "
      "doubling, up to 1 s): the client is woken by the new server creating "
      "its socket (inotify), not by its backoff. The server's start-up (exec, "
      "device set-up, listen) is excluded: the clock starts when the new "
      "server's loop runs. Every process shares one CPU, so the new server's "
      "own remaining start-up work competes with the reconnect."));
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
