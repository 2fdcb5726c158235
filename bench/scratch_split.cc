// SCRATCH (not part of the build): splits the region round trip's overhead.
#include <unistd.h>
#include <cstring>
#include <cstdio>
#include "bench/bench_server.h"
#include "bench/harness.h"
#include "bench/raw_peer.h"
#include "client/client.h"
#include "core/codec.h"
#include "core/log.h"
#include "core/protocol.h"
#include "tests/integration/raw_client.h"
using namespace vfio_user;
using namespace vfio_user::bench;
using vfio_user::testing::RawClient;
int main(int argc, char** argv) {
  RunBenchServerChildIfAsked(argc, argv);
  BenchConfig config = ParseArgs(argc, argv);
  SetLogLevel(LogLevel::kWarn);
  auto floor = RawPeer::Start(32, 36);
  auto server = BenchServer::Start("split");
  auto raw = Check(RawClient::Connect(server->trap_socket()), "raw");
  Check(raw->Negotiate().status(), "neg");
  // A prebuilt REGION_READ of 4 bytes at BAR0+0x10.
  uint8_t req[32];
  Header h; h.msg_id = 7; h.cmd = static_cast<uint16_t>(Command::kRegionRead); h.flags = kFlagsTypeCommand; h.msg_size = 32;
  EncodeHeader(h, req);
  EncodeRegionAccessHeaderTo(0x10, 0, 4, req + 16);
  const int fd = raw->connection().fd();
  uint8_t reply[64];
  ClientOptions o; o.socket_path = server->trap_socket();
  // second server for the client (one client per device)
  auto server2 = BenchServer::Start("split2");
  o.socket_path = server2->trap_socket();
  auto client = Check(Client::Connect(o), "client");
  uint8_t v[4];
  const int rounds = 10, iters = config.Iters(3000);
  Comparison a = Interleave(rounds, iters, [&] { floor->RoundTrip(); },
      [&] { WriteFull(fd, req, 32); ReadFull(fd, reply, 36); }, {0, floor->pid()}, {0, server->pid()});
  Comparison b = Interleave(rounds, iters, [&] { floor->RoundTrip(); },
      [&] { Check(client->Read(0, 0x10, absl::MakeSpan(v)), "read"); }, {0, floor->pid()}, {0, server2->pid()});
  auto ticks = [](pid_t pid) { char path[64]; snprintf(path, 64, "/proc/%d/stat", pid); FILE* f = fopen(path, "r"); char buf[4096]; size_t n = fread(buf, 1, sizeof buf - 1, f); buf[n] = 0; fclose(f); char* p = strrchr(buf, ')') + 2; long u = 0, s = 0; sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &u, &s); return std::pair<long,long>(u, s); };
  for (int rep = 0; rep < 2; ++rep) {
    auto s0 = ticks(server->pid()); auto f0 = ticks(floor->pid());
    for (int i = 0; i < 30000; ++i) { WriteFull(fd, req, 32); ReadFull(fd, reply, 36); }
    auto s1 = ticks(server->pid());
    for (int i = 0; i < 30000; ++i) floor->RoundTrip();
    auto f1 = ticks(floor->pid());
    printf("30000 ops: our server user %ld sys %ld ticks; floor server user %ld sys %ld\n", s1.first - s0.first, s1.second - s0.second, f1.first - f0.first, f1.second - f0.second);
  }
  printf("raw client -> our server: floor cpu %.0f ours %.0f (%.3f)  wall %.0f / %.0f\n", a.floor_cpu_ns, a.subject_cpu_ns, a.subject_cpu_ns / a.floor_cpu_ns, a.floor.median_ns, a.subject.median_ns);
  printf("our client -> our server: floor cpu %.0f ours %.0f (%.3f)  wall %.0f / %.0f\n", b.floor_cpu_ns, b.subject_cpu_ns, b.subject_cpu_ns / b.floor_cpu_ns, b.floor.median_ns, b.subject.median_ns);
  client->Close();
  return 0;
}
