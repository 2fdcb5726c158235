// vfio-user-cli end to end: the real binary (a separate process) against the
// in-test FakeServer. Checks exit codes, text output and that --json output
// parses (with protobuf's JSON parser) and carries the right values.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client_test_util.h"
#include "client/fake_server.h"
#include "core/protocol.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace testing {
namespace {

std::string CliPath() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return "client/vfio-user-cli";
  return absl::StrCat(srcdir, "/", workspace, "/client/vfio-user-cli");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct CliResult {
  int exit_code = -1;  // -signal if killed
  std::string out;
  std::string err;
};

// A running vfio-user-cli with its output going to temp files.
class CliProcess {
 public:
  explicit CliProcess(std::vector<std::string> args) {
    args.insert(args.begin(), CliPath());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    out_path_ = absl::StrCat(::testing::TempDir(), "/cli_out.XXXXXX");
    err_path_ = absl::StrCat(::testing::TempDir(), "/cli_err.XXXXXX");
    const int out_fd = ::mkstemp(out_path_.data());
    const int err_fd = ::mkstemp(err_path_.data());
    pid_ = ::fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls until exec. The alarm survives exec: a
      // hung CLI dies instead of hanging the test.
      ::dup2(out_fd, 1);
      ::dup2(err_fd, 2);
      ::alarm(30);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out_fd);
    ::close(err_fd);
  }
  CliResult Wait() {
    CliResult result;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    result.exit_code =
        WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    result.out = ReadFile(out_path_);
    result.err = ReadFile(err_path_);
    ::unlink(out_path_.c_str());
    ::unlink(err_path_.c_str());
    return result;
  }

 private:
  pid_t pid_ = -1;
  std::string out_path_, err_path_;
};

CliResult RunCli(std::vector<std::string> args) {
  return CliProcess(std::move(args)).Wait();
}

google::protobuf::Struct ParseJson(const std::string& text) {
  google::protobuf::Struct parsed;
  const auto status = google::protobuf::util::JsonStringToMessage(text, &parsed);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << text;
  return parsed;
}

double Number(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it == s.fields().end() ? -1 : it->second.number_value();
}

void Put(std::vector<uint8_t>& c, uint32_t offset, uint32_t value, int width) {
  for (int i = 0; i < width; ++i) c[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

// DefaultDevice() plus a config space with capabilities and BARs that
// behave under sizing (BAR0 64-bit 8 KiB, BAR2 4 KiB, BAR4 256 I/O ports).
FakeDeviceConfig CliDevice() {
  FakeDeviceConfig config = DefaultDevice();
  config.regions[4].flags = kRegionInfoFlagRead | kRegionInfoFlagWrite;
  config.regions[4].size = 256;
  std::vector<uint8_t> c(256, 0);
  Put(c, 0x00, 0x4e58, 2);  // vendor
  Put(c, 0x02, 0x0001, 2);
  Put(c, 0x04, 0x0002, 2);
  Put(c, 0x06, 0x0010, 2);
  Put(c, 0x08, 0x07000002, 4);  // serial controller, rev 2
  Put(c, 0x10, 0x00000004, 4);
  Put(c, 0x20, 0x00000001, 4);
  Put(c, 0x34, 0x40, 1);
  Put(c, 0x3d, 0x01, 1);
  Put(c, 0x40, 0x5001, 2);  // PM -> MSI-X
  Put(c, 0x42, 0x0003, 2);
  Put(c, 0x50, 0x6011, 2);  // MSI-X -> PCIe
  Put(c, 0x52, 0x0007, 2);
  Put(c, 0x54, 0x1000, 4);
  Put(c, 0x58, 0x1800, 4);
  Put(c, 0x60, 0x0010, 2);  // PCIe, end
  Put(c, 0x62, 0x0002, 2);
  config.initial_region_bytes[kPciConfigRegionIndex] = c;
  config.on_region_write = [](FakeServer& server, uint32_t region,
                              uint64_t offset, ByteSpan data) {
    static const uint32_t kMasks[6] = {0xffffe000, 0xffffffff, 0xfffff000,
                                       0, 0xffffff00, 0};
    static const uint32_t kType[6] = {0x4, 0, 0, 0, 0x1, 0};
    if (region != kPciConfigRegionIndex || data.size() != 4 || offset < 0x10 ||
        offset >= 0x28 || offset % 4 != 0) {
      return;
    }
    const int bar = static_cast<int>((offset - 0x10) / 4);
    uint32_t value = 0;
    std::memcpy(&value, data.data(), 4);
    value = (value & kMasks[bar]) | kType[bar];
    server.SetRegionBytes(region, offset,
                          ByteSpan(reinterpret_cast<uint8_t*>(&value), 4));
  };
  return config;
}

class CliTest : public ::testing::Test {
 protected:
  CliTest() : server_(TestSocketPath("cli"), CliDevice()) {}
  std::string Socket() const { return absl::StrCat("--socket=", server_.path()); }
  FakeServer server_;
};

TEST_F(CliTest, HelpAndUsageErrors) {
  CliResult help = RunCli({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("Commands:"), std::string::npos);
  EXPECT_NE(help.out.find("lspci"), std::string::npos);
  for (const char* command : {"info", "lspci", "read", "write", "irqs", "reset",
                              "bench"}) {
    CliResult r = RunCli({command, "--help"});
    EXPECT_EQ(r.exit_code, 0) << command;
    EXPECT_NE(r.out.find("--socket"), std::string::npos) << command;
    EXPECT_NE(r.out.find("Exit codes"), std::string::npos) << command;
  }
  EXPECT_EQ(RunCli({}).exit_code, 2);
  EXPECT_EQ(RunCli({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(RunCli({"info"}).exit_code, 2);  // no --socket
  EXPECT_EQ(RunCli({"read", Socket()}).exit_code, 2);  // no --region
  CliResult wrong_flag = RunCli({"read", Socket(), "--region=0", "--value=1"});
  EXPECT_EQ(wrong_flag.exit_code, 2);
  EXPECT_NE(wrong_flag.err.find("--value"), std::string::npos);
  EXPECT_EQ(RunCli({"read", Socket(), "--region=0", "--offset=zz"}).exit_code, 2);
  EXPECT_EQ(RunCli({"read", Socket(), "--region=BAR9"}).exit_code, 2);
  EXPECT_EQ(RunCli({"write", Socket(), "--region=2", "--value=1", "--width=3"})
                .exit_code,
            2);
  EXPECT_EQ(RunCli({"write", Socket(), "--region=2", "--value=256", "--width=1"})
                .exit_code,
            2);
  EXPECT_EQ(RunCli({"write", Socket(), "--region=2"}).exit_code, 2);
}

TEST_F(CliTest, ConnectFailureIsExitCode3) {
  CliResult r = RunCli({"info", "--socket=/tmp/vfu-cli-nobody-here.sock"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("No such file"), std::string::npos) << r.err;
}

TEST_F(CliTest, Info) {
  CliResult text = RunCli({"info", Socket()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("BAR0"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("sparse mmap areas: [0x0, +0x1000) [0x1000, +0x1000)"),
            std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("MSIX  8 vectors"), std::string::npos) << text.out;

  CliResult json = RunCli({"info", Socket(), "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const google::protobuf::Struct info = ParseJson(json.out);
  const auto& regions = info.fields().at("regions").list_value();
  ASSERT_EQ(regions.values_size(), 9);
  EXPECT_EQ(Number(regions.values(0).struct_value(), "size"), 8192);
  EXPECT_EQ(regions.values(0).struct_value().fields().at("sparse_areas")
                .list_value()
                .values_size(),
            2);
  EXPECT_TRUE(info.fields().at("protocol").struct_value().fields().at(
      "twin_socket").bool_value());
}

TEST_F(CliTest, LspciDecodesAndSizesBars) {
  const std::vector<uint8_t> before = server_.RegionBytes(kPciConfigRegionIndex, 0, 256);
  CliResult text = RunCli({"lspci", Socket()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("Serial controller [0700]: Device 4e58:0001 (rev 02)"),
            std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("Region 0: Memory at 0x0 (64-bit, non-prefetchable) "
                          "[size=8K]"),
            std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("Region 4: I/O ports at 0x0 [size=256]"),
            std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("[50] MSI-X: enabled=no function_mask=no table_size=8"),
            std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("Power Management"), std::string::npos);
  EXPECT_NE(text.out.find("PCI Express: version=2 type=Endpoint"),
            std::string::npos);
  // Sizing restored every BAR.
  EXPECT_EQ(server_.RegionBytes(kPciConfigRegionIndex, 0, 256), before);

  CliResult json = RunCli({"lspci", Socket(), "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const google::protobuf::Struct config = ParseJson(json.out);
  EXPECT_EQ(Number(config, "vendor_id"), 0x4e58);
  const auto& bars = config.fields().at("bars").list_value();
  ASSERT_EQ(bars.values_size(), 6);
  EXPECT_EQ(Number(bars.values(0).struct_value(), "size"), 8192);
  EXPECT_EQ(Number(bars.values(2).struct_value(), "size"), 4096);
  EXPECT_EQ(config.fields().at("capabilities").list_value().values_size(), 3);

  CliResult no_sizing = RunCli({"lspci", Socket(), "--nosize_bars"});
  EXPECT_EQ(no_sizing.exit_code, 0) << no_sizing.err;
}

TEST_F(CliTest, ReadAndWrite) {
  CliResult write = RunCli({"write", Socket(), "--region=BAR2", "--offset=0x10",
                            "--value=0xdeadbeef"});
  ASSERT_EQ(write.exit_code, 0) << write.err;
  EXPECT_EQ(server_.RegionBytes(2, 0x10, 4),
            (std::vector<uint8_t>{0xef, 0xbe, 0xad, 0xde}));
  CliResult hex = RunCli({"write", Socket(), "--region", "2", "--offset", "0x20",
                          "--hex=0102030405"});
  ASSERT_EQ(hex.exit_code, 0) << hex.err;
  EXPECT_EQ(server_.RegionBytes(2, 0x20, 5),
            (std::vector<uint8_t>{1, 2, 3, 4, 5}));

  CliResult read = RunCli({"read", Socket(), "--region=bar2", "--offset=16"});
  ASSERT_EQ(read.exit_code, 0) << read.err;
  EXPECT_NE(read.out.find("value: 0xdeadbeef"), std::string::npos) << read.out;
  EXPECT_NE(read.out.find("00000010: ef be ad de"), std::string::npos) << read.out;
  CliResult json = RunCli({"read", Socket(), "--region=2", "--offset=0x20",
                           "--size=5", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(ParseJson(json.out).fields().at("hex").string_value(), "0102030405");

  // Out of bounds: caught locally, exit 1, JSON error object.
  CliResult bad = RunCli({"read", Socket(), "--region=2", "--offset=4094",
                          "--size=4", "--json"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(Number(ParseJson(bad.out), "errno"), EINVAL);
}

TEST_F(CliTest, IrqsPrintsInterruptsAsTheyArrive) {
  CliProcess cli({"irqs", Socket(), "--index=MSIX", "--count=2", "--timeout=30s",
                  "--json"});
  ASSERT_TRUE(server_.WaitFor([&] {
    return server_.WiredEventfd(kPciMsixIrqIndex, 7) != -1;
  }));
  ASSERT_TRUE(server_.Trigger(kPciMsixIrqIndex, 1));
  ASSERT_TRUE(server_.Trigger(kPciMsixIrqIndex, 6));
  const CliResult r = cli.Wait();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 2u) << r.out;
  uint64_t total = 0;
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    const google::protobuf::Struct event = ParseJson(lines[i]);
    EXPECT_EQ(Number(event, "index"), kPciMsixIrqIndex);
    total += static_cast<uint64_t>(Number(event, "count"));
  }
  EXPECT_EQ(total, 2u);
  EXPECT_EQ(Number(ParseJson(lines.back()).fields().at("summary").struct_value(),
                   "interrupts"),
            2);
  // The CLI disabled the index before exiting.
  EXPECT_TRUE(server_.WaitFor(
      [&] { return server_.WiredEventfd(kPciMsixIrqIndex, 1) == -1; }));
}

TEST_F(CliTest, IrqsTimeoutIsExitCode4) {
  CliResult r = RunCli({"irqs", Socket(), "--index=2", "--count=1",
                        "--timeout=100ms"});
  EXPECT_EQ(r.exit_code, 4) << r.err;
}

TEST_F(CliTest, ResetAndBench) {
  CliResult reset = RunCli({"reset", Socket(), "--json"});
  ASSERT_EQ(reset.exit_code, 0) << reset.err;
  EXPECT_EQ(server_.resets(), 1u);
  CliResult bench = RunCli({"bench", Socket(), "--region=BAR2", "--op=rw",
                            "--iterations=200", "--warmup=10", "--json"});
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  const google::protobuf::Struct result = ParseJson(bench.out);
  EXPECT_EQ(Number(result, "operations"), 200);
  EXPECT_GT(Number(result, "ops_per_second"), 0);
  EXPECT_GE(Number(result, "p99_us"), Number(result, "median_us"));
  CliResult text = RunCli({"bench", Socket(), "--region=2", "--iterations=50",
                           "--chunk_size=2", "--size=8"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("ops/s"), std::string::npos);
}

}  // namespace
}  // namespace testing
}  // namespace vfio_user
