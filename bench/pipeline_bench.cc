// Figure 5: pipelining -- posted (No_reply) region writes, and many requests
// outstanding at once from several threads sharing one Client, in
// operations per second, beside raw sockets doing the same message counts.
#include <algorithm>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

// `count` threads that run `work` once per round, all together.
class WorkerPool {
 public:
  WorkerPool(int count, std::function<void()> work) : work_(std::move(work)) {
    for (int i = 0; i < count; ++i) {
      threads_.emplace_back([this] { Loop(); });
    }
  }
  ~WorkerPool() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  // Runs one round; returns when every thread has done its work.
  void RunRound() {
    absl::MutexLock lock(&mu_);
    ++round_;
    busy_ = static_cast<int>(threads_.size());
    mu_.Await(absl::Condition(
        +[](int* busy) { return *busy == 0; }, &busy_));
  }

 private:
  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || round_ != seen;
        };
        mu_.Await(absl::Condition(&ready));
        if (stop_) return;
        seen = round_;
      }
      work_();
      absl::MutexLock lock(&mu_);
      --busy_;
    }
  }

  const std::function<void()> work_;
  absl::Mutex mu_;
  uint64_t round_ ABSL_GUARDED_BY(mu_) = 0;
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // last: start after the fields above
};

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
    // The threads live across rounds (their start-up is not measured): each
    // round releases them and waits until all have done their reads.
    WorkerPool pool(threads, [&] {
      uint8_t data[4];
      for (int i = 0; i < per_thread; ++i) {
        Check(client->Read(kRegisterBar, 0x20, absl::MakeSpan(data)), "Read");
      }
    });
    const double ours = OpsPerSecond(rounds, total, [&] { pool.RunRound(); });
    const std::string floor_name =
        absl::StrCat("raw: windows of ", threads, " 32 B requests / 36 B "
                     "replies, one thread");
    report.Throughput(
        absl::StrCat(threads, " thread", threads > 1 ? "s" : "",
                     " x 4 B REGION_READ (", threads,
                     " outstanding at most), one Client"),
        floor_name, raw, ours);
    // The same window from one thread: Client::ReadMany.
    std::vector<std::vector<uint8_t>> buffers(threads, std::vector<uint8_t>(4));
    std::vector<Client::ReadRequest> batch;
    for (std::vector<uint8_t>& b : buffers) {
      batch.push_back({kRegisterBar, 0x20, absl::MakeSpan(b)});
    }
    const double batched = OpsPerSecond(rounds, total, [&] {
      for (int i = 0; i < per_thread; ++i) {
        Check(client->ReadMany(batch), "ReadMany");
      }
    });
    report.Throughput(absl::StrCat("Client::ReadMany of ", threads,
                                   " x 4 B REGION_READ (", threads,
                                   " outstanding), one thread"),
                      floor_name, raw, batched);
  }
  client->Close();

  report.Note(
      "Operations per second, median of the rounds. Posted writes are "
      "No_reply REGION_WRITEs (the client may post them because no region of "
      "this device is mappable); a batch ends with a REGION_READ whose reply "
      "proves every write before it was applied. With several threads each "
      "thread waits for its own reply, so at most one request per thread is "
      "outstanding; the raw floor keeps the same number in flight from one "
      "thread. On one CPU every reply to another thread costs that thread a "
      "wake-up, which the single-threaded floor never pays. Client::ReadMany "
      "keeps a whole window in flight from one thread, as the floor does.");
  report.Print();
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace vfio_user

int main(int argc, char** argv) { return vfio_user::bench::Main(argc, argv); }
