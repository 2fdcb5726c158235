// Figure 5: pipelining -- posted (No_reply) region writes, and many requests
// outstanding at once from several threads sharing one Client, in
// operations per second, beside raw sockets doing the same message counts.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/types/span.h"
#include "bench/bench_server.h"
#include "bench/harness.h"
#include "bench/raw_peer.h"
#include "client/client.h"
#include "core/log.h"

namespace vfio_user {
namespace bench {
namespace {

constexpr size_t kReadRequest = 32;  // header + access header
constexpr size_t kReadReply = 36;    // + 4 data bytes
constexpr size_t kWriteRequest = 36;
constexpr int kPostedBatch = 256;
constexpr int kThreadCounts[] = {1, 4, 16};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Operations per second of `ops` operations run by `body` (one sample per
// round; the median round).
template <typename Body>
double OpsPerSecond(int rounds, double ops, const Body& body) {
  std::vector<double> rates;
  body();  // warm-up
  for (int r = 0; r < rounds; ++r) {
    const int64_t start = NowNs();
    body();
    rates.push_back(ops * 1e9 / static_cast<double>(NowNs() - start));
  }
  return Median(rates);
}

int Main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  const BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);

  // Posted: kPostedBatch writes, then one request the server answers after
  // them (it processes in order, so the answer means all were applied).
  std::unique_ptr<RawPeer> posted_floor =
      RawPeer::Start(kWriteRequest, kReadReply, kPostedBatch + 1);
  std::unique_ptr<RawPeer> read_floor = RawPeer::Start(kReadRequest, kReadReply);
  std::unique_ptr<BenchServer> server = BenchServer::Start("pipe");

  ClientOptions options;
  options.socket_path = server->trap_socket();
  std::unique_ptr<Client> client =
      Check(Client::Connect(std::move(options)), "Client::Connect");

  Report report("5. Pipelining", "//bench:pipeline_bench", config);
  const int rounds = config.Rounds(15);
  uint8_t value[4] = {1, 2, 3, 4};
  const int batches = config.Iters(20);

  const double posted_raw =
      OpsPerSecond(rounds, double{kPostedBatch} * batches, [&] {
        for (int b = 0; b < batches; ++b) {
          for (int i = 0; i <= kPostedBatch; ++i) posted_floor->SendRequests(1);
          posted_floor->ReceiveReplies(1);
        }
      });
  const double posted_ours =
      OpsPerSecond(rounds, double{kPostedBatch} * batches, [&] {
        for (int b = 0; b < batches; ++b) {
          for (int i = 0; i < kPostedBatch; ++i) {
            Check(client->Write(kRegisterBar, 0x20, absl::MakeConstSpan(value),
                                WriteMode::kPosted),
                  "posted Write");
          }
          Check(client->Read(kRegisterBar, 0x20, absl::MakeSpan(value)),
                "Read");
        }
      });
  report.Throughput(
      absl::StrCat("Posted 4 B REGION_WRITEs (", kPostedBatch,
                   " per batch, then one REGION_READ)"),
      "raw: as many 36 B write()s, then a 36 B reply", posted_raw,
      posted_ours);
  const double waited_ours = OpsPerSecond(rounds, double{kPostedBatch}, [&] {
    for (int i = 0; i < kPostedBatch; ++i) {
      Check(client->Write(kRegisterBar, 0x20, absl::MakeConstSpan(value)),
            "Write");
    }
  });
  report.Throughput("Waited 4 B REGION_WRITEs, one at a time (for scale)",
                    "raw: as many 36 B write()s, then a 36 B reply",
                    posted_raw, waited_ours);

  for (int threads : kThreadCounts) {
    const int per_thread = config.Iters(2000 / threads);
    const double total = double{1.0} * threads * per_thread;
    const double raw = OpsPerSecond(rounds, total, [&] {
      for (int i = 0; i < per_thread; ++i) {
        read_floor->SendRequests(threads);
        read_floor->ReceiveReplies(threads);
      }
    });
    const double ours = OpsPerSecond(rounds, total, [&] {
      std::vector<std::thread> workers;
      absl::Notification go;
      std::atomic<int> ready{0};
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&] {
          uint8_t data[4];
          ready.fetch_add(1);
          go.WaitForNotification();
          for (int i = 0; i < per_thread; ++i) {
            Check(client->Read(kRegisterBar, 0x20, absl::MakeSpan(data)),
                  "Read");
          }
        });
      }
      while (ready.load() < threads) std::this_thread::yield();
      go.Notify();
      for (std::thread& w : workers) w.join();
    });
    report.Throughput(
        absl::StrCat(threads, " thread", threads > 1 ? "s" : "",
                     " x 4 B REGION_READ (", threads,
                     " outstanding at most), one Client"),
        absl::StrCat("raw: windows of ", threads, " 32 B requests / 36 B "
                     "replies, one thread"),
        raw, ours);
  }
  client->Close();

  report.Note(
      "Operations per second, median of the rounds. Posted writes are "
      "No_reply REGION_WRITEs (the client may post them because no region of "
      "this device is mappable); a batch ends with a REGION_READ whose reply "
      "proves every write before it was applied. With several threads each "
      "thread waits for its own reply, so at most one request per thread is "
      "outstanding; the raw floor keeps the same number in flight from one "
      "thread (thread start-up is included in ours: a few microseconds per "
      "round).");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
