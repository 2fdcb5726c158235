// Benchmark harness: timing, statistics, process helpers and the report
// format shared by the bench/ binaries.
//
// Every figure is measured beside its floor (what the machine allows for the
// same work, e.g. a raw AF_UNIX ping-pong of the same byte counts) in the
// same run, interleaved round by round so that drift and background load
// hit both alike; the report gives both and their ratio.
//
// All processes of a run are pinned to one CPU (default 0, inherited by
// forked children): on a small VM a cross-CPU wake-up costs tens of
// microseconds and would swamp what is measured (PROTOCOL.md §11).
//
// Benchmarks are not tests: nothing here asserts on time. --smoke runs every
// measurement for a few iterations only (bench_smoke_test uses it to keep the
// binaries from rotting).
//
// Thread-safety: the free functions are thread-safe; Report is not.
#ifndef VFIO_USER_BENCH_HARNESS_H_
#define VFIO_USER_BENCH_HARNESS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfio_user {
namespace bench {

// Command-line options every bench binary accepts:
//   --cpu=N     pin the run to CPU N (-1: do not pin); default 0
//   --smoke     a few iterations of everything (no meaningful numbers)
//   --scale=X   multiply iteration counts by X (e.g. 0.2 for a quick look)
struct BenchConfig {
  int cpu = 0;
  bool smoke = false;
  double scale = 1.0;
  std::string argv0;

  // `n` iterations scaled (at least 1; 2 in smoke mode).
  int Iters(int n) const;
  // Rounds of interleaving (each round runs floor then subject, or the
  // reverse on odd rounds).
  int Rounds(int n) const;
};
BenchConfig ParseArgs(int argc, char** argv);

// Process-wide settings every bench process (client and server side)
// applies: absl::Mutex deadlock detection off. Debian's Abseil is built
// without NDEBUG, which leaves that debugging aid on: every Mutex::Lock then
// updates a global lock graph under a global spinlock (hundreds of
// instructions per lock). Release binaries should turn it off the same way;
// BENCH_MUTEX_DEADLOCK_DETECTION=1 in the environment keeps it on, to show
// what it costs.
void ConfigureProcess();

// Pins the calling thread (and so everything it forks or spawns afterwards)
// to `cpu`; no-op for cpu < 0. Dies on failure.
void PinToCpu(int cpu);

// CLOCK_MONOTONIC in nanoseconds (comparable across processes).
int64_t NowNs();

// Prints `what: status` to stderr and exits(1) if !status.ok(). Benchmarks
// have no error path worth recovering from.
void Check(const absl::Status& status, const char* what);
template <typename T>
T Check(absl::StatusOr<T> value, const char* what) {
  Check(value.status(), what);
  return *std::move(value);
}
// Dies with `what` and strerror(errno) unless `ok`.
void CheckErrno(bool ok, const char* what);

struct Summary {
  size_t samples = 0;
  double median_ns = 0;
  double p99_ns = 0;
  double mean_ns = 0;
  // Completed operations per second over the measured time (1e9 / mean).
  double ops_per_s = 0;
};
// REQUIRES: !samples.empty().
Summary Summarize(std::vector<double> samples);

// CPU time consumed so far by process `pid` (0 = this process), all its
// threads, in nanoseconds (clock_getcpuclockid). -1 if it cannot be read.
int64_t ProcessCpuNs(pid_t pid);

// The processes whose CPU time an operation costs (0 = this process).
using Processes = std::vector<pid_t>;

// Runs `floor` and `subject` alternately for `rounds` rounds of `iters`
// timed calls each (after one untimed warm-up round), and summarizes the
// per-call times of each. With the processes involved given, it also
// measures the CPU time per operation summed over them: with every process
// pinned to one CPU that sum is what the wall-clock time would be on an
// otherwise idle machine, and it is not inflated by other load.
struct Comparison {
  Summary floor;
  Summary subject;
  double floor_cpu_ns = 0;    // 0: not measured
  double subject_cpu_ns = 0;
};
Comparison Interleave(int rounds, int iters, const std::function<void()>& floor,
                      const std::function<void()>& subject,
                      const Processes& floor_processes = {},
                      const Processes& subject_processes = {});

// A measurement made elsewhere (e.g. in the server process) for one round:
// `measure_floor(iters)` / `measure_subject(iters)` return per-call times.
using RoundFn = std::function<std::vector<double>(int iters)>;
Comparison InterleaveRounds(int rounds, int iters, const RoundFn& measure_floor,
                            const RoundFn& measure_subject,
                            const Processes& floor_processes = {},
                            const Processes& subject_processes = {});

// ---- Processes ----

// Forks a child that runs `body` and _exit()s with its return value.
// REQUIRES: the caller is single-threaded (no threads of its own running):
// only the forking thread exists in the child.
pid_t ForkChild(const std::function<int()>& body);
// SIGTERMs (then SIGKILLs after `grace_ms`) and reaps `pid`.
void StopChild(pid_t pid, int grace_ms = 2000);
// Waits for `pid` to exit by itself; returns its exit status.
int WaitChild(pid_t pid);

// Blocking exact-size I/O on a stream socket / pipe. Die on EOF or error.
void WriteFull(int fd, const void* data, size_t len);
void ReadFull(int fd, void* data, size_t len);

// A page-aligned anonymous mapping of `size` bytes filled with `fill`, for
// the life of the process. Buffers that copies go through should be page
// aligned like guest memory and BARs: glibc's memcpy (rep movsb) is many
// times slower on this CPU when the destination sits just past the source
// modulo 4 KiB -- which a malloc'ed buffer (16 bytes into its page) against
// a page-aligned mapping provokes.
uint8_t* AlignedBuffer(size_t size, uint8_t fill);

// Resident set size (VmRSS) and thread count of process `pid` (0 = self),
// from /proc.
struct ProcessUsage {
  int64_t rss_kib = 0;
  int threads = 0;
};
ProcessUsage ReadProcessUsage(pid_t pid = 0);

// A unique path prefix under /tmp (short: sockets made from it must stay
// within 107 bytes), and a unique AF_UNIX socket path.
std::string TmpPrefix(const std::string& tag);
std::string SocketPath(const std::string& tag);

// ---- Report ----

// Accumulates one binary's section of docs/PERFORMANCE.md (markdown).
class Report {
 public:
  // `title`: the figure's heading; `target`: the bench binary's Bazel
  // target, for the reproduce command.
  Report(std::string title, std::string target, const BenchConfig& config);

  // A latency row: median / p99 / ops/s of floor and subject, ratio of the
  // medians (subject / floor), checked against `max_ratio` if given (> 0).
  void Latency(const std::string& what, const std::string& floor_name,
               const Comparison& c, double max_ratio = 0);
  // A bandwidth row for `bytes` per operation: GiB/s from the medians and
  // the subject's share of the floor, checked against `min_share` (0..1)
  // if given (> 0).
  void Bandwidth(const std::string& what, const std::string& floor_name,
                 uint64_t bytes, const Comparison& c, double min_share = 0);
  // A throughput row (operations per second, from the mean), share of floor.
  void Throughput(const std::string& what, const std::string& floor_name,
                  double floor_ops, double subject_ops);
  // A free-form value row (e.g. "RSS with 1000 idle devices").
  void Value(const std::string& what, const std::string& value,
             const std::string& note = "");
  // A paragraph after the tables.
  void Note(const std::string& text);

  // Writes the section to stdout.
  void Print() const;

 private:
  std::string title_;
  std::string target_;
  std::string args_;
  std::vector<std::string> latency_rows_;
  std::vector<std::string> bandwidth_rows_;
  std::vector<std::string> throughput_rows_;
  std::vector<std::string> value_rows_;
  std::vector<std::string> notes_;
};

// "1.23 µs" / "456 ns" / "7.8 ms".
std::string FormatNs(double ns);
// "12.3 GiB/s" / "456 MiB/s" for `bytes` moved in `ns`.
std::string FormatBandwidth(uint64_t bytes, double ns);
// "4 KiB" / "1 MiB" / "36 B".
std::string FormatBytes(uint64_t bytes);

}  // namespace bench
}  // namespace vfio_user

#endif  // VFIO_USER_BENCH_HARNESS_H_
