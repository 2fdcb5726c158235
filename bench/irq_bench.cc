// Figure 4: interrupt latency -- the device raises an MSI (Device::TriggerIrq
// on a device thread), the client wakes up in IrqWaiter::Wait() on the
// eventfd it wired with SET_IRQS -- beside a raw eventfd write in the server
// process and a blocking read() of it in the client process.
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "bench/bench_server.h"
#include "bench/harness.h"
#include "client/client.h"
#include "client/irq_waiter.h"
#include "core/log.h"

namespace vfio_user {
namespace bench {
namespace {

int Main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);
  std::unique_ptr<BenchServer> server = BenchServer::Start("irq");

  ClientOptions options;
  options.socket_path = server->trap_socket();
  std::unique_ptr<Client> client =
      Check(Client::Connect(std::move(options)), "Client::Connect");
  std::unique_ptr<IrqWaiter> waiter =
      Check(IrqWaiter::Create(1), "IrqWaiter::Create");
  Check(client->SetIrqEventfds(kPciMsiIrqIndex, 0, waiter->fds()),
        "SetIrqEventfds");
  const SharedPage* shared = server->shared();

  // Each sample: the trigger time stamped by the server just before it
  // signals, to the moment the client's wait returns.
  const auto through_device = [&](int n) {
    std::vector<double> samples;
    samples.reserve(n);
    for (int i = 0; i < n; ++i) {
      server->Trigger(/*raw=*/false);
      std::vector<IrqWaiter::Event> events =
          Check(waiter->Wait(absl::InfiniteDuration()), "IrqWaiter::Wait");
      const int64_t woke = NowNs();
      if (events.empty()) Check(absl::InternalError("no event"), "Wait");
      samples.push_back(static_cast<double>(
          woke - shared->trigger_ns.load(std::memory_order_acquire)));
    }
    return samples;
  };
  const auto raw = [&](int n) {
    std::vector<double> samples;
    samples.reserve(n);
    for (int i = 0; i < n; ++i) {
      server->Trigger(/*raw=*/true);
      uint64_t count = 0;
      ReadFull(server->raw_eventfd(), &count, sizeof(count));
      const int64_t woke = NowNs();
      samples.push_back(static_cast<double>(
          woke - shared->trigger_ns.load(std::memory_order_acquire)));
    }
    return samples;
  };
  const Comparison irq = InterleaveRounds(config.Rounds(10),
                                          config.Iters(3000), raw,
                                          through_device);
  client->Close();

  Report report("4. Interrupts: device trigger to client wake-up",
                "//bench:irq_bench", config);
  report.Latency(
      "MSI: Device::TriggerIrq -> eventfd -> IrqWaiter::Wait returns",
      "raw eventfd write -> blocking read(), two processes", irq);
  report.Note(
      "Latency = wake-up time in the client minus the time the server "
      "stamped (CLOCK_MONOTONIC, shared page) just before raising the "
      "interrupt, both processes on one CPU. The server-side trigger comes "
      "from its control thread, as from a device worker thread.");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
