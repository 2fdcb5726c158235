#include "bench/harness.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"

namespace vfio_user {
namespace bench {

int BenchConfig::Iters(int n) const {
  if (smoke) return 2;
  return std::max(1, static_cast<int>(std::lround(n * scale)));
}

int BenchConfig::Rounds(int n) const { return smoke ? 1 : n; }

void ConfigureProcess() {
  const char* keep = std::getenv("BENCH_MUTEX_DEADLOCK_DETECTION");
  if (keep == nullptr || std::strcmp(keep, "1") != 0) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
}

BenchConfig ParseArgs(int argc, char** argv) {
  ConfigureProcess();
  BenchConfig config;
  config.argv0 = argc > 0 ? argv[0] : "";
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg(argv[i]);
    if (arg == "--smoke") {
      config.smoke = true;
    } else if (absl::StartsWith(arg, "--cpu=")) {
      if (!absl::SimpleAtoi(arg.substr(6), &config.cpu)) {
        std::fprintf(stderr, "bad --cpu: %s\n", argv[i]);
        std::exit(2);
      }
    } else if (absl::StartsWith(arg, "--scale=")) {
      if (!absl::SimpleAtod(arg.substr(8), &config.scale) ||
          config.scale <= 0) {
        std::fprintf(stderr, "bad --scale: %s\n", argv[i]);
        std::exit(2);
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--cpu=N|-1] [--smoke] [--scale=X]\n",
                   config.argv0.c_str());
      std::exit(2);
    }
  }
  PinToCpu(config.cpu);
  return config;
}

void PinToCpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  CheckErrno(::sched_setaffinity(0, sizeof(set), &set) == 0,
             "sched_setaffinity");
}

int64_t NowNs() {
  struct timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

void Check(const absl::Status& status, const char* what) {
  if (status.ok()) return;
  std::fprintf(stderr, "bench: %s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}

void CheckErrno(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "bench: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

Summary Summarize(std::vector<double> samples) {
  Summary s;
  s.samples = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  s.median_ns = n % 2 == 1 ? samples[n / 2]
                           : (samples[n / 2 - 1] + samples[n / 2]) / 2;
  s.p99_ns = samples[std::min(n - 1, static_cast<size_t>(
                                         std::ceil(0.99 * n)) - 1)];
  double total = 0;
  for (double v : samples) total += v;
  s.mean_ns = total / n;
  s.ops_per_s = s.mean_ns > 0 ? 1e9 / s.mean_ns : 0;
  return s;
}

namespace {

std::vector<double> TimeCalls(int iters, const std::function<void()>& fn) {
  std::vector<double> out;
  out.reserve(iters);
  for (int i = 0; i < iters; ++i) {
    const int64_t start = NowNs();
    fn();
    out.push_back(static_cast<double>(NowNs() - start));
  }
  return out;
}

}  // namespace

int64_t ProcessCpuNs(pid_t pid) {
  clockid_t clock = CLOCK_PROCESS_CPUTIME_ID;
  if (pid != 0 && ::clock_getcpuclockid(pid, &clock) != 0) return -1;
  struct timespec ts;
  if (::clock_gettime(clock, &ts) != 0) return -1;
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

Comparison Interleave(int rounds, int iters, const std::function<void()>& floor,
                      const std::function<void()>& subject,
                      const Processes& floor_processes,
                      const Processes& subject_processes) {
  return InterleaveRounds(
      rounds, iters, [&](int n) { return TimeCalls(n, floor); },
      [&](int n) { return TimeCalls(n, subject); }, floor_processes,
      subject_processes);
}

namespace {

// Runs `measure(iters)`, appending its samples to `samples` and the CPU
// time of `processes` it took to `*cpu_ns` (left alone if unreadable).
void MeasureRound(const RoundFn& measure, int iters, const Processes& processes,
                  std::vector<double>* samples, double* cpu_ns) {
  const auto total = [&]() -> int64_t {
    int64_t sum = 0;
    for (pid_t pid : processes) {
      const int64_t t = ProcessCpuNs(pid);
      if (t < 0) return -1;
      sum += t;
    }
    return sum;
  };
  const int64_t before = processes.empty() ? -1 : total();
  for (double v : measure(iters)) samples->push_back(v);
  const int64_t after = before < 0 ? -1 : total();
  if (before >= 0 && after >= before) *cpu_ns += static_cast<double>(after - before);
}

}  // namespace

Comparison InterleaveRounds(int rounds, int iters, const RoundFn& measure_floor,
                            const RoundFn& measure_subject,
                            const Processes& floor_processes,
                            const Processes& subject_processes) {
  // Warm-up: caches, page faults, lazy allocations on both paths.
  const int warm = std::max(1, std::min(iters, 200));
  measure_floor(warm);
  measure_subject(warm);
  std::vector<double> floor_samples, subject_samples;
  double floor_cpu = 0, subject_cpu = 0;
  for (int r = 0; r < rounds; ++r) {
    // Alternate the order so neither always runs right after the other.
    if (r % 2 == 0) {
      MeasureRound(measure_floor, iters, floor_processes, &floor_samples,
                   &floor_cpu);
      MeasureRound(measure_subject, iters, subject_processes,
                   &subject_samples, &subject_cpu);
    } else {
      MeasureRound(measure_subject, iters, subject_processes,
                   &subject_samples, &subject_cpu);
      MeasureRound(measure_floor, iters, floor_processes, &floor_samples,
                   &floor_cpu);
    }
  }
  Comparison c{Summarize(std::move(floor_samples)),
               Summarize(std::move(subject_samples))};
  if (!floor_processes.empty() && c.floor.samples > 0) {
    c.floor_cpu_ns = floor_cpu / static_cast<double>(c.floor.samples);
  }
  if (!subject_processes.empty() && c.subject.samples > 0) {
    c.subject_cpu_ns = subject_cpu / static_cast<double>(c.subject.samples);
  }
  return c;
}

// ---------------------------------------------------------------------------
// Processes

pid_t ForkChild(const std::function<int()>& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  CheckErrno(pid >= 0, "fork");
  if (pid == 0) {
    // Die with the parent rather than linger if it crashes.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::_exit(body());
  }
  return pid;
}

void StopChild(pid_t pid, int grace_ms) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  for (int waited = 0; waited < grace_ms; ++waited) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return;
    ::usleep(1000);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

int WaitChild(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    CheckErrno(errno == EINTR, "waitpid");
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void WriteFull(int fd, const void* data, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    CheckErrno(n > 0, "write");
    p += n;
    len -= static_cast<size_t>(n);
  }
}

void ReadFull(int fd, void* data, size_t len) {
  uint8_t* p = static_cast<uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = ::read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      std::fprintf(stderr, "bench: read: unexpected EOF\n");
      std::exit(1);
    }
    CheckErrno(n > 0, "read");
    p += n;
    len -= static_cast<size_t>(n);
  }
}

uint8_t* AlignedBuffer(size_t size, uint8_t fill) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CheckErrno(p != MAP_FAILED, "mmap");
  std::memset(p, fill, size);
  return static_cast<uint8_t*>(p);
}

ProcessUsage ReadProcessUsage(pid_t pid) {
  const std::string path =
      pid == 0 ? "/proc/self/status" : absl::StrCat("/proc/", pid, "/status");
  std::ifstream in(path);
  ProcessUsage usage;
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    if (absl::ConsumePrefix(&v, "VmRSS:")) {
      v = absl::StripAsciiWhitespace(v);
      absl::ConsumeSuffix(&v, " kB");
      (void)absl::SimpleAtoi(v, &usage.rss_kib);
    } else if (absl::ConsumePrefix(&v, "Threads:")) {
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &usage.threads);
    }
  }
  return usage;
}

std::string TmpPrefix(const std::string& tag) {
  // The pid alone is not unique: sandboxed test runs share /tmp but each
  // has its own pid namespace.
  static const int64_t run = NowNs() % 1000000007;
  static int counter = 0;
  return absl::StrCat("/tmp/vub.", ::getpid(), ".", run, ".", counter++, ".",
                      tag);
}

std::string SocketPath(const std::string& tag) {
  return TmpPrefix(tag) + ".sock";
}

// ---------------------------------------------------------------------------
// Formatting

std::string FormatNs(double ns) {
  if (ns < 1e3) return absl::StrFormat("%.0f ns", ns);
  if (ns < 1e6) return absl::StrFormat("%.2f µs", ns / 1e3);
  if (ns < 1e9) return absl::StrFormat("%.2f ms", ns / 1e6);
  return absl::StrFormat("%.2f s", ns / 1e9);
}

std::string FormatBandwidth(uint64_t bytes, double ns) {
  if (ns <= 0) return "-";
  const double per_s = static_cast<double>(bytes) * 1e9 / ns;
  if (per_s >= 1024.0 * 1024 * 1024) {
    return absl::StrFormat("%.2f GiB/s", per_s / (1024.0 * 1024 * 1024));
  }
  return absl::StrFormat("%.0f MiB/s", per_s / (1024.0 * 1024));
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) {
    return absl::StrCat(bytes >> 20, " MiB");
  }
  if (bytes >= 1024 && bytes % 1024 == 0) return absl::StrCat(bytes >> 10, " KiB");
  return absl::StrCat(bytes, " B");
}

namespace {

std::string FormatOps(double ops) {
  if (ops >= 1e6) return absl::StrFormat("%.2f M/s", ops / 1e6);
  if (ops >= 1e3) return absl::StrFormat("%.1f k/s", ops / 1e3);
  return absl::StrFormat("%.0f /s", ops);
}

}  // namespace

// ---------------------------------------------------------------------------
// Report

Report::Report(std::string title, std::string target, const BenchConfig& config)
    : title_(std::move(title)), target_(std::move(target)) {
  if (config.cpu != 0) args_ += absl::StrCat(" --cpu=", config.cpu);
  if (config.scale != 1.0) args_ += absl::StrCat(" --scale=", config.scale);
  if (config.smoke) args_ += " --smoke";
}

namespace {

// "12.3 µs / 13.1 µs (1.065x)", or "-" when not measured.
std::string CpuColumn(const Comparison& c, bool as_share) {
  if (c.floor_cpu_ns <= 0 || c.subject_cpu_ns <= 0) return "-";
  if (as_share) {
    return absl::StrFormat("%s / %s (%.0f%%)", FormatNs(c.floor_cpu_ns),
                           FormatNs(c.subject_cpu_ns),
                           100.0 * c.floor_cpu_ns / c.subject_cpu_ns);
  }
  return absl::StrFormat("%s / %s (%.3fx)", FormatNs(c.floor_cpu_ns),
                         FormatNs(c.subject_cpu_ns),
                         c.subject_cpu_ns / c.floor_cpu_ns);
}

}  // namespace

void Report::Latency(const std::string& what, const std::string& floor_name,
                     const Comparison& c, double max_ratio) {
  const double ratio =
      c.floor.median_ns > 0 ? c.subject.median_ns / c.floor.median_ns : 0;
  std::string target = "-";
  if (max_ratio > 0) {
    target = absl::StrFormat("<= %.2fx: %s", max_ratio,
                             ratio <= max_ratio ? "met" : "**missed**");
  }
  latency_rows_.push_back(absl::StrFormat(
      "| %s | %s | %s / %s | %s / %s | %s | **%.3fx** | %s | %s |", what,
      floor_name, FormatNs(c.floor.median_ns), FormatNs(c.floor.p99_ns),
      FormatNs(c.subject.median_ns), FormatNs(c.subject.p99_ns),
      FormatOps(c.subject.ops_per_s), ratio, target,
      CpuColumn(c, /*as_share=*/false)));
}

void Report::Bandwidth(const std::string& what, const std::string& floor_name,
                       uint64_t bytes, const Comparison& c, double min_share) {
  const double share =
      c.subject.median_ns > 0 ? c.floor.median_ns / c.subject.median_ns : 0;
  std::string target = "-";
  if (min_share > 0) {
    target = absl::StrFormat(">= %.0f%%: %s", 100 * min_share,
                             share >= min_share ? "met" : "**missed**");
  }
  bandwidth_rows_.push_back(absl::StrFormat(
      "| %s | %s | %s | %s (%s) | %s (%s) | **%.0f%%** | %s | %s |", what,
      FormatBytes(bytes), floor_name, FormatBandwidth(bytes, c.floor.median_ns),
      FormatNs(c.floor.median_ns), FormatBandwidth(bytes, c.subject.median_ns),
      FormatNs(c.subject.median_ns), 100 * share, target,
      CpuColumn(c, /*as_share=*/true)));
}

void Report::Throughput(const std::string& what, const std::string& floor_name,
                        double floor_ops, double subject_ops) {
  throughput_rows_.push_back(absl::StrFormat(
      "| %s | %s | %s | %s | **%.0f%%** |", what, floor_name,
      FormatOps(floor_ops), FormatOps(subject_ops),
      floor_ops > 0 ? 100.0 * subject_ops / floor_ops : 0));
}

void Report::Value(const std::string& what, const std::string& value,
                   const std::string& note) {
  value_rows_.push_back(absl::StrFormat("| %s | %s | %s |", what, value, note));
}

void Report::Note(const std::string& text) { notes_.push_back(text); }

void Report::Print() const {
  std::string out = absl::StrCat("## ", title_, "\n\n");
  absl::StrAppend(&out, "Reproduce: `bazel run -c opt ", target_,
                  args_.empty() ? "" : " --", args_, "`\n\n");
  if (!latency_rows_.empty()) {
    absl::StrAppend(
        &out,
        "| Operation | Floor | Floor median / p99 | Ours median / p99 | "
        "Ours ops/s | Ratio (median) | Target | CPU per op, both processes: "
        "floor / ours (ratio) |\n",
        "|---|---|---|---|---|---|---|---|\n",
        absl::StrJoin(latency_rows_, "\n"),
        "\n\n");
  }
  if (!bandwidth_rows_.empty()) {
    absl::StrAppend(&out,
                    "| Operation | Size | Floor | Floor (median time) | "
                    "Ours (median time) | Share of floor | Target | CPU per "
                    "op, both processes: floor / ours (share) |\n",
                    "|---|---|---|---|---|---|---|---|\n",
                    absl::StrJoin(bandwidth_rows_, "\n"), "\n\n");
  }
  if (!throughput_rows_.empty()) {
    absl::StrAppend(&out,
                    "| Operation | Floor | Floor ops/s | Ours ops/s | "
                    "Share of floor |\n",
                    "|---|---|---|---|---|\n",
                    absl::StrJoin(throughput_rows_, "\n"), "\n\n");
  }
  if (!value_rows_.empty()) {
    absl::StrAppend(&out, "| Figure | Value | Notes |\n|---|---|---|\n",
                    absl::StrJoin(value_rows_, "\n"), "\n\n");
  }
  for (const std::string& note : notes_) absl::StrAppend(&out, note, "\n\n");
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

}  // namespace bench
}  // namespace vfio_user
