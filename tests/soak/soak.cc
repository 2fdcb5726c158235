// Soak run (not part of the test suite): mixed traffic against many devices
// for a long time, with clients killed and servers restarted at random, to
// show that fd count, memory and threads of the servers stay flat.
//
//   bazel run -c opt //tests/soak:soak -- --duration=1h [--devices=100]
//       [--client_workers=10] [--kill_client_every=5s]
//       [--restart_server_every=20s] [--restartable_fraction=0.5]
//       [--sample_every=60s] [--seed=1]
//
// Layout: --devices/2 vfio-user-sample-server processes (an idio-16 and a
// DMA test device each, on one event loop), and --client_workers client
// processes (this binary in --worker mode), each driving its share of the
// devices with the client library (reconnect on): config space, idio-16
// outputs and inputs, interrupts wired to eventfds, DMA maps with and
// without fd, DMA engine operations (COPY/FILL/CHECKSUM through mmap and by
// message), resets, unmaps, and clean disconnects now and then.
// The orchestrator SIGKILLs a random client worker every
// --kill_client_every (and starts a new one on the same devices) and
// SIGKILLs and restarts a random server of the first --restartable_fraction
// every --restart_server_every (on
// the same sockets; its clients reconnect).
//
// Every --sample_every it records, per server process, open fds, VmRSS and
// threads; servers that were never restarted are the ones that show a trend.
// At the end it prints the first and last samples (after a warm-up) and
// exits non-zero if a server died on its own or a never-restarted server
// grew by more than --max_fd_growth fds / --max_rss_growth_kb.
#include <dirent.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/guest_memory.h"
#include "core/log.h"
#include "core/protocol.h"
#include "core/unique_fd.h"
#include "server/devices/dma_engine_device.h"
#include "server/devices/idio16.h"
#include "tests/integration/raw_client.h"
#include "tests/integration/subprocess.h"

ABSL_FLAG(absl::Duration, duration, absl::Minutes(10), "how long to run");
ABSL_FLAG(int, devices, 100, "devices (two per server process)");
ABSL_FLAG(int, client_workers, 10, "client processes");
ABSL_FLAG(absl::Duration, kill_client_every, absl::Seconds(5),
          "a random client worker is SIGKILLed (and replaced) this often");
ABSL_FLAG(absl::Duration, restart_server_every, absl::Seconds(20),
          "a random server is SIGKILLed and restarted this often");
ABSL_FLAG(double, restartable_fraction, 0.5,
          "share of the servers that may be restarted; the others run the "
          "whole time and show any trend");
ABSL_FLAG(absl::Duration, sample_every, absl::Seconds(60), "resource sampling period");
ABSL_FLAG(absl::Duration, warm_up, absl::Seconds(60), "first sample after this");
ABSL_FLAG(int, max_fd_growth, 4, "allowed fd growth of a never-restarted server");
ABSL_FLAG(int, max_rss_growth_kb, 16 * 1024, "allowed RSS growth of a never-restarted server");
ABSL_FLAG(uint64_t, seed, 1, "random seed");
ABSL_FLAG(std::string, server, "server/devices/vfio-user-sample-server",
          "the sample server binary");
ABSL_FLAG(std::string, dir, "", "socket directory (default: a new one under /tmp)");
// Worker mode (started by the orchestrator).
ABSL_FLAG(bool, worker, false, "run as a client worker");
ABSL_FLAG(std::string, sockets, "", "worker: comma-separated device sockets");

namespace vfio_user::soak {
namespace {

using testing::Subprocess;

// ---- Client worker ----

struct WorkerStats {
  uint64_t ok = 0;
  uint64_t failed = 0;
};

void Count(const absl::Status& st, WorkerStats* stats) {
  if (st.ok()) {
    ++stats->ok;
  } else {
    ++stats->failed;
  }
}

void DriveIdio16(Client* c, std::mt19937_64& rng, WorkerStats* stats) {
  const uint32_t bar = Idio16Device::kRegisterBar;
  Count(c->WriteValue(bar, Idio16Device::kRegOutputs0To7, 1, rng() & 0xff), stats);
  Count(c->WriteValue(bar, Idio16Device::kRegOutputs8To15, 1, rng() & 0xff), stats);
  Count(c->ReadValue(bar, Idio16Device::kRegIrqControl, 1).status(), stats);
  Count(c->Read(bar, 0, 8).status(), stats);
  UniqueFd efd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  const int fds[1] = {efd.get()};
  Count(c->SetIrqEventfds(kPciIntxIrqIndex, 0, fds), stats);
  Count(c->WriteValue(bar, Idio16Device::kRegInputs0To7, 1, 0), stats);
  Count(c->DisableIrqs(kPciIntxIrqIndex), stats);
}

void DriveDma(Client* c, std::mt19937_64& rng, WorkerStats* stats) {
  using namespace dma_test;  // NOLINT: register names
  Count(c->WriteValue(kPciConfigRegionIndex, 4, 2, 0x6), stats);
  auto memory = GuestMemory::Create(2 << 20, "soak-guest");
  if (!memory.ok()) {
    ++stats->failed;
    return;
  }
  const uint64_t fd_iova = 0x1000000, msg_iova = 0x2000000;
  Count(c->DmaMap((*memory)->Region(fd_iova, 0, 1 << 20)), stats);
  Count(c->DmaMap((*memory)->Region(msg_iova, 1 << 20, 1 << 20,
                                    kDmaMapFlagRead | kDmaMapFlagWrite, false)),
        stats);
  UniqueFd efd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  const int fds[1] = {efd.get()};
  Count(c->SetIrqEventfds(kPciMsixIrqIndex, 0, fds), stats);
  for (int op = 0; op < 4; ++op) {
    const uint32_t opcode = 1 + rng() % 3;
    const uint32_t length = 4096 * (1 + rng() % 16);
    const uint64_t src = (rng() & 1) ? fd_iova : msg_iova;
    const uint64_t dst = (rng() & 1) ? fd_iova + (512 << 10) : msg_iova + (512 << 10);
    Count(c->WriteValue(kRegisterBar, kRegControl, 4, kControlEnable | kControlIntEnable), stats);
    c->WriteValue(kRegisterBar, kRegSrcLo, 4, static_cast<uint32_t>(src)).IgnoreError();
    c->WriteValue(kRegisterBar, kRegSrcHi, 4, 0).IgnoreError();
    c->WriteValue(kRegisterBar, kRegDstLo, 4, static_cast<uint32_t>(dst)).IgnoreError();
    c->WriteValue(kRegisterBar, kRegDstHi, 4, 0).IgnoreError();
    c->WriteValue(kRegisterBar, kRegLength, 4, length).IgnoreError();
    c->WriteValue(kRegisterBar, kRegOpcode, 4, opcode).IgnoreError();
    Count(c->WriteValue(kDoorbellBar, kRegDoorbell, 4, 1), stats);
    for (int i = 0; i < 200; ++i) {
      auto status = c->ReadValue(kRegisterBar, kRegStatus, 4);
      if (!status.ok() || !(*status & kStatusBusy)) break;
    }
    c->WriteValue(kRegisterBar, kRegIntStatus, 4, 0xffffffff).IgnoreError();
  }
  if (rng() % 4 == 0) Count(c->Reset(), stats);
  Count(c->DmaUnmapAll(), stats);
  Count(c->DisableIrqs(kPciMsixIrqIndex), stats);
}

int RunWorker() {
  SetLogLevel(LogLevel::kError);
  std::vector<std::string> sockets = absl::StrSplit(absl::GetFlag(FLAGS_sockets), ',');
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 7919 + ::getpid());
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // do not outlive the orchestrator
  std::map<std::string, std::unique_ptr<Client>> clients;
  WorkerStats stats;
  for (uint64_t round = 0;; ++round) {
    const std::string& path = sockets[rng() % sockets.size()];
    std::unique_ptr<Client>& client = clients[path];
    if (client == nullptr || rng() % 20 == 0) {
      client.reset();  // a clean disconnect now and then
      ClientOptions options;
      options.socket_path = path;
      options.connect_timeout = absl::Seconds(30);
      options.request_timeout = absl::Seconds(5);
      options.reconnect.deadline = absl::Seconds(60);
      auto connected = Client::Connect(options);
      if (!connected.ok()) {
        ++stats.failed;
        continue;
      }
      client = std::move(*connected);
    }
    auto ids = client->ReadValue(kPciConfigRegionIndex, 0, 4);
    Count(ids.status(), &stats);
    if (!ids.ok()) continue;
    if ((*ids & 0xffff) == dma_test::kVendorId) {
      DriveDma(client.get(), rng, &stats);
    } else {
      DriveIdio16(client.get(), rng, &stats);
    }
    if (round % 200 == 0) {
      std::printf("worker %d: %llu ok, %llu failed\n", ::getpid(),
                  static_cast<unsigned long long>(stats.ok),
                  static_cast<unsigned long long>(stats.failed));
      std::fflush(stdout);
    }
  }
}

// ---- Orchestrator ----

struct Sample {
  int fds = 0;
  long rss_kb = 0;
  int threads = 0;
};

Sample Measure(pid_t pid) {
  Sample s;
  s.fds = testing::CountOpenFds(pid);
  s.rss_kb = testing::ProcStatusField(pid, "VmRSS");
  s.threads = static_cast<int>(testing::ProcStatusField(pid, "Threads"));
  return s;
}

struct Server {
  std::string idio, dma;
  std::unique_ptr<Subprocess> process;
  int restarts = 0;
  std::optional<Sample> first;
  Sample last;
};

absl::StatusOr<std::unique_ptr<Subprocess>> StartServer(const Server& s) {
  auto p = Subprocess::Start({absl::GetFlag(FLAGS_server), absl::StrCat("--idio16_socket=", s.idio),
                              absl::StrCat("--dma_socket=", s.dma), "--log_level=error"});
  if (!p.ok()) return p.status();
  return std::make_unique<Subprocess>(std::move(*p));
}

absl::StatusOr<std::unique_ptr<Subprocess>> StartWorker(const std::vector<std::string>& sockets,
                                                        int index) {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return absl::InternalError("cannot find myself");
  self[n] = '\0';
  auto p = Subprocess::Start({self, "--worker", absl::StrCat("--sockets=", absl::StrJoin(sockets, ",")),
                              absl::StrCat("--seed=", absl::GetFlag(FLAGS_seed) + index)});
  if (!p.ok()) return p.status();
  return std::make_unique<Subprocess>(std::move(*p));
}

int RunOrchestrator() {
  ::signal(SIGPIPE, SIG_IGN);
  const int n_servers = std::max(1, absl::GetFlag(FLAGS_devices) / 2);
  const int n_workers = std::max(1, absl::GetFlag(FLAGS_client_workers));
  std::string dir = absl::GetFlag(FLAGS_dir);
  if (dir.empty()) {
    char tmpl[] = "/tmp/vfu-soak.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return 1;
    dir = tmpl;
  }
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));

  std::vector<Server> servers(n_servers);
  std::vector<std::string> all_sockets;
  for (int i = 0; i < n_servers; ++i) {
    servers[i].idio = absl::StrCat(dir, "/idio", i, ".sock");
    servers[i].dma = absl::StrCat(dir, "/dma", i, ".sock");
    auto p = StartServer(servers[i]);
    if (!p.ok()) {
      std::fprintf(stderr, "cannot start a server: %s\n", p.status().ToString().c_str());
      return 1;
    }
    servers[i].process = std::move(*p);
    all_sockets.push_back(servers[i].idio);
    all_sockets.push_back(servers[i].dma);
  }
  std::vector<std::vector<std::string>> shares(n_workers);
  for (size_t i = 0; i < all_sockets.size(); ++i) shares[i % n_workers].push_back(all_sockets[i]);
  std::vector<std::unique_ptr<Subprocess>> workers(n_workers);
  for (int i = 0; i < n_workers; ++i) {
    auto w = StartWorker(shares[i], i);
    if (!w.ok()) return 1;
    workers[i] = std::move(*w);
  }

  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::GetFlag(FLAGS_duration);
  absl::Time next_kill = start + absl::GetFlag(FLAGS_kill_client_every);
  absl::Time next_restart = start + absl::GetFlag(FLAGS_restart_server_every);
  absl::Time next_sample = start + absl::GetFlag(FLAGS_warm_up);
  uint64_t client_kills = 0, server_restarts = 0, unexpected_deaths = 0;
  std::printf("soak: %d servers (%d devices), %d client workers, %s, sockets in %s\n",
              n_servers, 2 * n_servers, n_workers,
              absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str(), dir.c_str());
  std::fflush(stdout);

  while (absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(100));
    const absl::Time now = absl::Now();
    for (Server& s : servers) {  // a server that died on its own is a finding
      if (!s.process->Running()) {
        ++unexpected_deaths;
        std::fprintf(stderr, "soak: server on %s died unexpectedly; restarting\n", s.idio.c_str());
        auto p = StartServer(s);
        if (p.ok()) s.process = std::move(*p);
        ++s.restarts;
      }
    }
    for (size_t i = 0; i < workers.size(); ++i) {
      if (!workers[i]->Running()) {  // a worker crash: replace it, and say so
        std::fprintf(stderr, "soak: client worker %zu exited on its own\n", i);
        auto w = StartWorker(shares[i], static_cast<int>(i));
        if (w.ok()) workers[i] = std::move(*w);
      }
    }
    if (now >= next_kill) {
      next_kill += absl::GetFlag(FLAGS_kill_client_every);
      const size_t i = rng() % workers.size();
      (void)workers[i]->Stop(SIGKILL);
      auto w = StartWorker(shares[i], static_cast<int>(i + workers.size() * (++client_kills)));
      if (w.ok()) workers[i] = std::move(*w);
    }
    if (now >= next_restart) {
      next_restart += absl::GetFlag(FLAGS_restart_server_every);
      const size_t restartable = std::max<size_t>(
          1, static_cast<size_t>(static_cast<double>(servers.size()) *
                                 absl::GetFlag(FLAGS_restartable_fraction)));
      Server& s = servers[rng() % std::min(restartable, servers.size())];
      (void)s.process->Stop(SIGKILL);
      auto p = StartServer(s);
      if (p.ok()) s.process = std::move(*p);
      ++s.restarts;
      ++server_restarts;
    }
    if (now >= next_sample) {
      next_sample += absl::GetFlag(FLAGS_sample_every);
      Sample total;
      for (Server& s : servers) {
        const Sample m = Measure(s.process->pid());
        s.last = m;
        if (!s.first && s.restarts == 0) s.first = m;
        total.fds += m.fds;
        total.rss_kb += m.rss_kb;
        total.threads += m.threads;
      }
      std::printf("soak t=%s: servers fds=%d rss=%ldkB threads=%d; %llu client kills, "
                  "%llu server restarts\n",
                  absl::FormatDuration(absl::Trunc(now - start, absl::Seconds(1))).c_str(),
                  total.fds, total.rss_kb, total.threads,
                  static_cast<unsigned long long>(client_kills),
                  static_cast<unsigned long long>(server_restarts));
      std::fflush(stdout);
    }
  }

  // Final sample, then the verdict on the servers that were never restarted
  // (a restarted process starts from scratch).
  int stable = 0, grown = 0;
  Sample first_sum, last_sum;
  for (Server& s : servers) {
    s.last = Measure(s.process->pid());
    if (s.restarts != 0 || !s.first) continue;
    ++stable;
    first_sum.fds += s.first->fds;
    first_sum.rss_kb += s.first->rss_kb;
    first_sum.threads += s.first->threads;
    last_sum.fds += s.last.fds;
    last_sum.rss_kb += s.last.rss_kb;
    last_sum.threads += s.last.threads;
    if (s.last.fds - s.first->fds > absl::GetFlag(FLAGS_max_fd_growth) ||
        s.last.rss_kb - s.first->rss_kb > absl::GetFlag(FLAGS_max_rss_growth_kb) ||
        s.last.threads != s.first->threads) {
      ++grown;
      std::printf("soak: server %s grew: fds %d->%d rss %ld->%ldkB threads %d->%d\n",
                  s.idio.c_str(), s.first->fds, s.last.fds, s.first->rss_kb, s.last.rss_kb,
                  s.first->threads, s.last.threads);
    }
  }
  std::printf(
      "soak done after %s: %llu client kills, %llu server restarts, %llu unexpected deaths\n"
      "never-restarted servers: %d; at first sample: fds=%d rss=%ldkB threads=%d; "
      "at the end: fds=%d rss=%ldkB threads=%d; %d grew\n",
      absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Seconds(1))).c_str(),
      static_cast<unsigned long long>(client_kills),
      static_cast<unsigned long long>(server_restarts),
      static_cast<unsigned long long>(unexpected_deaths), stable, first_sum.fds,
      first_sum.rss_kb, first_sum.threads, last_sum.fds, last_sum.rss_kb, last_sum.threads,
      grown);
  for (auto& w : workers) (void)w->Stop(SIGKILL);
  for (Server& s : servers) (void)s.process->Stop(SIGTERM);
  return (unexpected_deaths == 0 && grown == 0) ? 0 : 1;
}

}  // namespace
}  // namespace vfio_user::soak

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return absl::GetFlag(FLAGS_worker) ? vfio_user::soak::RunWorker()
                                     : vfio_user::soak::RunOrchestrator();
}
