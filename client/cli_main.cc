// vfio-user-cli: drive a vfio-user device server from the command line.
//
//   vfio-user-cli <command> --socket=PATH [flags]
//
// Commands: info, lspci, read, write, irqs, reset, bench (`--help` on any of
// them explains its flags). `--json` prints machine-readable output (irqs
// streams one JSON object per line). Exit codes (also in client/README.md):
//   0  success
//   1  the operation failed (error reply, protocol violation, bad argument
//      value caught by a local check)
//   2  usage error (unknown command or flag, missing or malformed flag)
//   3  could not connect to or attach the device
//   4  timed out (a request, or `irqs` saw fewer than --count interrupts
//      before --timeout)
//
// Flags are Abseil flags (global by nature); each command accepts only its
// own subset, checked before parsing, so `read --value=1` is a usage error.
#include <signal.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/irq_waiter.h"
#include "client/pci_config.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/protocol.h"

// ---- Common ----
ABSL_FLAG(std::string, socket, "", "Path of the device server's socket.");
ABSL_FLAG(bool, json, false, "Machine-readable JSON output.");
ABSL_FLAG(absl::Duration, request_timeout, absl::Seconds(5),
          "Per-request timeout (e.g. 500ms, 5s).");
ABSL_FLAG(absl::Duration, connect_timeout, absl::ZeroDuration(),
          "Keep retrying while the socket is absent or refuses, this long.");
ABSL_FLAG(absl::Duration, reconnect_deadline, absl::ZeroDuration(),
          "Reconnect after a server loss for up to this long (0 = fail).");
ABSL_FLAG(uint64_t, chunk_size, 0,
          "Largest region access per message (0 = min(server limit, 1 MiB)); "
          "e.g. 32768 for libvfio-user servers.");
ABSL_FLAG(bool, twin_socket, true, "Offer a twin socket for DMA requests.");
// ---- Region access ----
ABSL_FLAG(std::string, region, "",
          "Region: an index or BAR0..BAR5, ROM, CONFIG, VGA.");
ABSL_FLAG(uint64_t, offset, 0, "Offset within the region (0x.. accepted).");
ABSL_FLAG(uint64_t, size, 4, "Bytes to read / access size for bench.");
ABSL_FLAG(int32_t, width, 4, "write: width of --value in bytes (1, 2, 4, 8).");
ABSL_FLAG(std::string, value, "",
          "write: little-endian value of --width bytes (0x.. accepted).");
ABSL_FLAG(std::string, hex, "", "write: bytes to write, as hex (\"deadbeef\").");
ABSL_FLAG(bool, posted, false,
          "write: no reply wanted (only honored when no region is mappable).");
// ---- lspci ----
ABSL_FLAG(bool, size_bars, true,
          "lspci: size BARs by writing all-ones to them (restored after).");
// ---- irqs ----
ABSL_FLAG(std::string, index, "MSIX",
          "irqs: IRQ index: a number or INTX, MSI, MSIX, ERR, REQ.");
ABSL_FLAG(uint32_t, vectors, 0, "irqs: vectors to wire (0 = all).");
ABSL_FLAG(uint64_t, count, 0, "irqs: stop after this many interrupts (0 = no limit).");
ABSL_FLAG(absl::Duration, timeout, absl::InfiniteDuration(),
          "irqs: stop after this long.");
// ---- bench ----
ABSL_FLAG(std::string, op, "read", "bench: read, write or rw.");
ABSL_FLAG(uint64_t, iterations, 10000, "bench: round trips to time.");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "bench: run for this long instead of --iterations.");
ABSL_FLAG(uint64_t, warmup, 100, "bench: untimed round trips first.");

namespace vfio_user {
namespace {

enum ExitCode {
  kExitOk = 0,
  kExitFailed = 1,
  kExitUsage = 2,
  kExitConnect = 3,
  kExitTimeout = 4,
};

// ---------------------------------------------------------------------------
// JSON output

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          absl::StrAppend(&out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

// A JSON value built by hand: an object or array of already-encoded values.
class Json {
 public:
  static Json Object() { return Json('{', '}'); }
  static Json Array() { return Json('[', ']'); }
  Json& Add(absl::string_view key, const std::string& encoded) {
    Separator();
    absl::StrAppend(&body_, JsonString(key), ":", encoded);
    return *this;
  }
  Json& Add(absl::string_view key, const Json& value) {
    return Add(key, value.str());
  }
  Json& Str(absl::string_view key, absl::string_view value) {
    return Add(key, JsonString(value));
  }
  Json& Num(absl::string_view key, uint64_t value) {
    return Add(key, absl::StrCat(value));
  }
  Json& Real(absl::string_view key, double value) {
    return Add(key, absl::StrFormat("%.6g", value));
  }
  Json& Bool(absl::string_view key, bool value) {
    return Add(key, value ? "true" : "false");
  }
  Json& Push(const std::string& encoded) {
    Separator();
    body_ += encoded;
    return *this;
  }
  Json& Push(const Json& value) { return Push(value.str()); }
  std::string str() const { return std::string(1, open_) + body_ + close_; }

 private:
  Json(char open, char close) : open_(open), close_(close) {}
  void Separator() {
    if (!body_.empty()) body_ += ",";
  }
  char open_, close_;
  std::string body_;
};

// ---------------------------------------------------------------------------
// Errors

std::string ErrorText(const absl::Status& status) {
  return absl::StrCat(status.message(), " (", std::strerror(ErrnoOf(status)),
                      ")");
}

int ExitFor(const absl::Status& status) {
  return ErrnoOf(status) == ETIMEDOUT ? kExitTimeout : kExitFailed;
}

int Fail(const absl::Status& status, absl::string_view what) {
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json::Object()
                     .Str("error", ErrorText(status))
                     .Str("operation", what)
                     .Num("errno", ErrnoOf(status))
                     .str()
              << "\n";
  }
  std::cerr << "vfio-user-cli: " << what << ": " << ErrorText(status) << "\n";
  return ExitFor(status);
}

int UsageError(absl::string_view message) {
  std::cerr << "vfio-user-cli: " << message
            << "\nRun 'vfio-user-cli --help' or 'vfio-user-cli <command> "
               "--help'.\n";
  return kExitUsage;
}

// ---------------------------------------------------------------------------
// Commands and their flags

struct Command {
  const char* name;
  const char* summary;
  const char* details;
  std::vector<std::string> flags;  // beyond the common ones
  int (*run)(Client& client);
  bool needs_region = false;
};

const std::vector<std::string>& CommonFlags() {
  static const std::vector<std::string> flags = {
      "socket",   "json",       "request_timeout", "connect_timeout",
      "reconnect_deadline", "chunk_size", "twin_socket"};
  return flags;
}

std::string FlagHelp(const std::string& name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr) return "";
  return absl::StrFormat("  --%-20s %s (default: %s)\n", name, flag->Help(),
                         flag->DefaultValue());
}

const char kExitCodes[] =
    "Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 cannot connect or\n"
    "attach, 4 timed out.\n";

// ---------------------------------------------------------------------------
// Parsing helpers

// Region by index or name (BAR0..BAR5, ROM, CONFIG, VGA, REGIONn).
absl::StatusOr<uint32_t> ParseRegion(const std::string& text) {
  uint32_t index = 0;
  if (absl::SimpleAtoi(text, &index)) return index;
  const std::string upper = absl::AsciiStrToUpper(text);
  for (uint32_t i = 0; i < 100; ++i) {
    if (RegionName(i) == upper) return i;
  }
  return ErrnoError(EINVAL, absl::StrCat("unknown region '", text,
                                         "' (want 0..N, BAR0..BAR5, ROM, "
                                         "CONFIG or VGA)"));
}

absl::StatusOr<uint32_t> ParseIrqIndex(const std::string& text) {
  uint32_t index = 0;
  if (absl::SimpleAtoi(text, &index)) return index;
  const std::string upper = absl::AsciiStrToUpper(text);
  for (uint32_t i = 0; i < 50; ++i) {
    if (IrqIndexName(i) == upper) return i;
  }
  return ErrnoError(EINVAL, absl::StrCat("unknown IRQ index '", text,
                                         "' (want a number or INTX, MSI, "
                                         "MSIX, ERR, REQ)"));
}

absl::StatusOr<uint64_t> ParseNumber(const std::string& text) {
  uint64_t value = 0;
  absl::string_view digits = text;
  if (absl::ConsumePrefix(&digits, "0x") || absl::ConsumePrefix(&digits, "0X")) {
    if (!digits.empty() && absl::SimpleHexAtoi(digits, &value)) return value;
  } else if (absl::SimpleAtoi(text, &value)) {
    return value;
  }
  return ErrnoError(EINVAL, absl::StrCat("'", text, "' is not a number"));
}

std::string HexBytes(absl::Span<const uint8_t> bytes) {
  return absl::BytesToHexString(absl::string_view(
      reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

uint64_t LittleEndian(absl::Span<const uint8_t> bytes) {
  uint64_t v = 0;
  for (size_t i = bytes.size(); i-- > 0;) v = (v << 8) | bytes[i];
  return v;
}

std::string SizeText(uint64_t size) {
  static const char* const kUnits[] = {"", "K", "M", "G", "T"};
  int unit = 0;
  while (unit < 4 && size >= 1024 && size % 1024 == 0) {
    size /= 1024;
    ++unit;
  }
  return absl::StrCat(size, kUnits[unit]);
}

// ---------------------------------------------------------------------------
// info

std::string RegionFlagsText(uint32_t flags) {
  std::vector<std::string> parts;
  if (flags & kRegionInfoFlagRead) parts.push_back("read");
  if (flags & kRegionInfoFlagWrite) parts.push_back("write");
  if (flags & kRegionInfoFlagMmap) parts.push_back("mmap");
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

std::string IrqFlagsText(uint32_t flags) {
  std::vector<std::string> parts;
  if (flags & kIrqInfoEventfd) parts.push_back("eventfd");
  if (flags & kIrqInfoMaskable) parts.push_back("maskable");
  if (flags & kIrqInfoAutomasked) parts.push_back("automasked");
  if (flags & kIrqInfoNoresize) parts.push_back("noresize");
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

int RunInfo(Client& client) {
  const DeviceDescription d = client.device();
  if (absl::GetFlag(FLAGS_json)) {
    Json regions = Json::Array();
    for (const RegionDescription& r : d.regions) {
      Json region = Json::Object();
      region.Num("index", r.info.index)
          .Str("name", RegionName(r.info.index))
          .Num("size", r.info.size)
          .Num("offset", r.info.offset)
          .Num("flags", r.info.flags)
          .Bool("read", r.info.flags & kRegionInfoFlagRead)
          .Bool("write", r.info.flags & kRegionInfoFlagWrite)
          .Bool("mmap", r.info.flags & kRegionInfoFlagMmap)
          .Bool("fd", r.has_fd);
      if (r.info.sparse_areas.has_value()) {
        Json areas = Json::Array();
        for (const SparseMmapArea& a : *r.info.sparse_areas) {
          areas.Push(Json::Object().Num("offset", a.offset).Num("size", a.size));
        }
        region.Add("sparse_areas", areas);
      }
      if (r.info.type_cap.has_value()) {
        region.Add("type", Json::Object()
                               .Num("type", r.info.type_cap->type)
                               .Num("subtype", r.info.type_cap->subtype));
      }
      regions.Push(region);
    }
    Json irqs = Json::Array();
    for (const IrqInfo& i : d.irqs) {
      irqs.Push(Json::Object()
                    .Num("index", i.index)
                    .Str("name", IrqIndexName(i.index))
                    .Num("count", i.count)
                    .Num("flags", i.flags)
                    .Bool("eventfd", i.flags & kIrqInfoEventfd)
                    .Bool("maskable", i.flags & kIrqInfoMaskable));
    }
    std::cout << Json::Object()
                     .Add("device", Json::Object()
                                        .Num("flags", d.info.flags)
                                        .Bool("pci", d.info.flags & kDeviceFlagsPci)
                                        .Bool("reset", d.info.flags & kDeviceFlagsReset)
                                        .Num("num_regions", d.info.num_regions)
                                        .Num("num_irqs", d.info.num_irqs))
                     .Add("protocol", Json::Object()
                                          .Num("minor", d.minor)
                                          .Bool("twin_socket", d.twin_socket)
                                          .Num("max_msg_fds", d.server.max_msg_fds)
                                          .Num("max_data_xfer_size",
                                               d.server.max_data_xfer_size)
                                          .Num("max_dma_maps", d.server.max_dma_maps)
                                          .Num("pgsizes", d.server.pgsizes)
                                          .Num("chunk_size", d.chunk_size))
                     .Add("regions", regions)
                     .Add("irqs", irqs)
                     .str()
              << "\n";
    return kExitOk;
  }
  std::vector<std::string> device_flags;
  if (d.info.flags & kDeviceFlagsPci) device_flags.push_back("PCI");
  if (d.info.flags & kDeviceFlagsReset) device_flags.push_back("reset");
  absl::PrintF("Device: %s; %u regions, %u IRQ indexes\n",
               device_flags.empty() ? "-" : absl::StrJoin(device_flags, ", "),
               d.info.num_regions, d.info.num_irqs);
  absl::PrintF(
      "Protocol: 0.%u, twin socket %s; server limits: max_msg_fds %u, "
      "max_data_xfer_size %u, max_dma_maps %u, pgsizes 0x%x; chunk %u\n",
      d.minor, d.twin_socket ? "yes" : "no", d.server.max_msg_fds,
      d.server.max_data_xfer_size, d.server.max_dma_maps, d.server.pgsizes,
      d.chunk_size);
  absl::PrintF("Regions:\n");
  for (const RegionDescription& r : d.regions) {
    if (r.info.size == 0) {
      absl::PrintF("  %-2u %-8s (not implemented)\n", r.info.index,
                   RegionName(r.info.index));
      continue;
    }
    absl::PrintF("  %-2u %-8s size 0x%-8x (%s) offset 0x%x  %s%s\n",
                 r.info.index, RegionName(r.info.index), r.info.size,
                 SizeText(r.info.size), r.info.offset,
                 RegionFlagsText(r.info.flags), r.has_fd ? " fd" : "");
    if (r.info.sparse_areas.has_value()) {
      std::vector<std::string> areas;
      for (const SparseMmapArea& a : *r.info.sparse_areas) {
        areas.push_back(absl::StrFormat("[0x%x, +0x%x)", a.offset, a.size));
      }
      absl::PrintF("       sparse mmap areas: %s\n", absl::StrJoin(areas, " "));
    }
    if (r.info.type_cap.has_value()) {
      absl::PrintF("       type 0x%x subtype 0x%x\n", r.info.type_cap->type,
                   r.info.type_cap->subtype);
    }
  }
  absl::PrintF("IRQs:\n");
  for (const IrqInfo& i : d.irqs) {
    absl::PrintF("  %-2u %-5s %u vector%s  %s\n", i.index, IrqIndexName(i.index),
                 i.count, i.count == 1 ? "" : "s", IrqFlagsText(i.flags));
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// lspci

int RunLspci(Client& client) {
  const DeviceDescription d = client.device();
  if (d.regions.size() <= kPciConfigRegionIndex ||
      d.regions[kPciConfigRegionIndex].info.size < 64) {
    return Fail(ErrnoError(ENODEV, "the device has no config space region"),
                "lspci");
  }
  const uint64_t config_size =
      std::min<uint64_t>(d.regions[kPciConfigRegionIndex].info.size, 4096);
  absl::StatusOr<std::vector<uint8_t>> bytes =
      client.Read(kPciConfigRegionIndex, 0, config_size);
  if (!bytes.ok()) return Fail(bytes.status(), "reading config space");
  absl::StatusOr<PciConfig> config = DecodePciConfig(*bytes);
  if (!config.ok()) return Fail(config.status(), "decoding config space");

  std::vector<SizedPciBar> bars;
  if (absl::GetFlag(FLAGS_size_bars)) {
    PciConfigAccess access;
    access.read = [&client](uint32_t offset,
                            int width) -> absl::StatusOr<uint32_t> {
      absl::StatusOr<uint64_t> v =
          client.ReadValue(kPciConfigRegionIndex, offset, width);
      if (!v.ok()) return v.status();
      return static_cast<uint32_t>(*v);
    };
    access.write = [&client](uint32_t offset, int width, uint32_t value) {
      return client.WriteValue(kPciConfigRegionIndex, offset, width, value);
    };
    absl::StatusOr<std::vector<SizedPciBar>> sized =
        SizePciBars(access, config->bar_count());
    if (!sized.ok()) return Fail(sized.status(), "sizing BARs");
    bars = *std::move(sized);
  }
  auto region_size = [&d](int bar) -> uint64_t {
    return static_cast<size_t>(bar) < d.regions.size() && bar <= 5
               ? d.regions[bar].info.size
               : 0;
  };

  const PciConfig& c = *config;
  if (absl::GetFlag(FLAGS_json)) {
    Json json_bars = Json::Array();
    for (const SizedPciBar& b : bars) {
      json_bars.Push(Json::Object()
                         .Num("index", b.index)
                         .Bool("implemented", b.implemented)
                         .Bool("io", b.io)
                         .Bool("64bit", b.is64)
                         .Bool("prefetchable", b.prefetchable)
                         .Num("address", b.address)
                         .Num("size", b.size)
                         .Num("region_size", region_size(b.index)));
    }
    Json caps = Json::Array();
    for (const PciCapability& cap : c.capabilities) {
      Json fields = Json::Object();
      for (const PciField& f : cap.fields) fields.Str(f.name, f.value);
      caps.Push(Json::Object()
                    .Num("offset", cap.offset)
                    .Num("id", cap.id)
                    .Bool("extended", cap.extended)
                    .Num("version", cap.version)
                    .Str("name", cap.name)
                    .Add("fields", fields));
    }
    Json problems = Json::Array();
    for (const std::string& p : c.problems) problems.Push(JsonString(p));
    std::cout << Json::Object()
                     .Num("vendor_id", c.vendor_id)
                     .Num("device_id", c.device_id)
                     .Num("class_code", c.class_code)
                     .Str("class", PciClassName(c.class_code))
                     .Num("revision", c.revision)
                     .Num("header_type", c.header_type)
                     .Num("command", c.command)
                     .Num("status", c.status)
                     .Num("subsystem_vendor_id", c.subsystem_vendor_id)
                     .Num("subsystem_id", c.subsystem_id)
                     .Num("interrupt_pin", c.interrupt_pin)
                     .Num("interrupt_line", c.interrupt_line)
                     .Add("bars", json_bars)
                     .Add("capabilities", caps)
                     .Add("problems", problems)
                     .str()
              << "\n";
    return kExitOk;
  }
  absl::PrintF("%s [%04x]: Device %04x:%04x (rev %02x)\n",
               PciClassName(c.class_code), c.class_code >> 8, c.vendor_id,
               c.device_id, c.revision);
  if ((c.header_type & 0x7f) == 0) {
    absl::PrintF("\tSubsystem: %04x:%04x\n", c.subsystem_vendor_id,
                 c.subsystem_id);
  }
  absl::PrintF("\tHeader type %02x%s, prog-if %02x\n", c.header_type & 0x7f,
               (c.header_type & 0x80) ? " (multi-function)" : "",
               c.class_code & 0xff);
  absl::PrintF("\tControl: %s\n\tStatus: %s\n", PciCommandText(c.command),
               PciStatusText(c.status));
  if (c.interrupt_pin >= 1 && c.interrupt_pin <= 4) {
    absl::PrintF("\tInterrupt: pin %c, line %u\n", 'A' + c.interrupt_pin - 1,
                 c.interrupt_line);
  }
  for (const SizedPciBar& b : bars) {
    if (!b.implemented) continue;
    std::string mismatch;
    if (region_size(b.index) != b.size) {
      mismatch = absl::StrFormat(" (region info says size 0x%x)",
                                 region_size(b.index));
    }
    if (b.io) {
      absl::PrintF("\tRegion %d: I/O ports at 0x%x [size=%s]%s\n", b.index,
                   b.address, SizeText(b.size), mismatch);
    } else {
      absl::PrintF("\tRegion %d: Memory at 0x%x (%s, %s) [size=%s]%s\n",
                   b.index, b.address, b.is64 ? "64-bit" : "32-bit",
                   b.prefetchable ? "prefetchable" : "non-prefetchable",
                   SizeText(b.size), mismatch);
    }
  }
  for (const PciCapability& cap : c.capabilities) {
    std::vector<std::string> fields;
    for (const PciField& f : cap.fields) {
      fields.push_back(absl::StrCat(f.name, "=", f.value));
    }
    const std::string where =
        cap.extended ? absl::StrFormat("%03x v%u", cap.offset, cap.version)
                     : absl::StrFormat("%02x", cap.offset);
    absl::PrintF("\tCapabilities: [%s] %s%s%s\n", where, cap.name,
                 fields.empty() ? "" : ": ", absl::StrJoin(fields, " "));
  }
  for (const std::string& p : c.problems) absl::PrintF("\tProblem: %s\n", p);
  return kExitOk;
}

// ---------------------------------------------------------------------------
// read / write

int RunRead(Client& client) {
  absl::StatusOr<uint32_t> region = ParseRegion(absl::GetFlag(FLAGS_region));
  if (!region.ok()) return UsageError(region.status().message());
  const uint64_t offset = absl::GetFlag(FLAGS_offset);
  const uint64_t size = absl::GetFlag(FLAGS_size);
  absl::StatusOr<std::vector<uint8_t>> bytes = client.Read(*region, offset, size);
  if (!bytes.ok()) return Fail(bytes.status(), "read");
  const bool scalar = size == 1 || size == 2 || size == 4 || size == 8;
  if (absl::GetFlag(FLAGS_json)) {
    Json out = Json::Object();
    out.Num("region", *region).Num("offset", offset).Num("size", size).Str(
        "hex", HexBytes(*bytes));
    if (scalar) out.Num("value", LittleEndian(*bytes));
    std::cout << out.str() << "\n";
    return kExitOk;
  }
  for (size_t line = 0; line < bytes->size(); line += 16) {
    const size_t n = std::min<size_t>(16, bytes->size() - line);
    std::string hex, ascii;
    for (size_t i = 0; i < 16; ++i) {
      if (i < n) {
        const uint8_t b = (*bytes)[line + i];
        absl::StrAppend(&hex, absl::Hex(b, absl::kZeroPad2), " ");
        ascii += absl::ascii_isprint(b) ? static_cast<char>(b) : '.';
      } else {
        hex += "   ";
      }
    }
    absl::PrintF("%08x: %s|%s|\n", offset + line, hex, ascii);
  }
  if (scalar) {
    absl::PrintF("value: 0x%0*x\n", static_cast<int>(size * 2),
                 LittleEndian(*bytes));
  }
  return kExitOk;
}

int RunWrite(Client& client) {
  absl::StatusOr<uint32_t> region = ParseRegion(absl::GetFlag(FLAGS_region));
  if (!region.ok()) return UsageError(region.status().message());
  const std::string value_text = absl::GetFlag(FLAGS_value);
  const std::string hex_text = absl::GetFlag(FLAGS_hex);
  if (value_text.empty() == hex_text.empty()) {
    return UsageError("write needs exactly one of --value (with --width) or --hex");
  }
  std::vector<uint8_t> data;
  if (!value_text.empty()) {
    const int width = absl::GetFlag(FLAGS_width);
    if (width != 1 && width != 2 && width != 4 && width != 8) {
      return UsageError("--width must be 1, 2, 4 or 8");
    }
    absl::StatusOr<uint64_t> value = ParseNumber(value_text);
    if (!value.ok()) return UsageError(value.status().message());
    if (width < 8 && (*value >> (8 * width)) != 0) {
      return UsageError(absl::StrCat("--value ", value_text, " does not fit in ",
                                     width, " bytes"));
    }
    for (int i = 0; i < width; ++i) data.push_back(static_cast<uint8_t>(*value >> (8 * i)));
  } else {
    std::string digits = hex_text;
    if (absl::StartsWith(digits, "0x")) digits = digits.substr(2);
    if (digits.size() % 2 != 0 ||
        !std::all_of(digits.begin(), digits.end(),
                     [](char c) { return absl::ascii_isxdigit(c); })) {
      return UsageError("--hex wants an even number of hex digits");
    }
    const std::string raw = absl::HexStringToBytes(digits);
    data.assign(raw.begin(), raw.end());
  }
  const uint64_t offset = absl::GetFlag(FLAGS_offset);
  const bool posted = absl::GetFlag(FLAGS_posted);
  absl::Status s = client.Write(*region, offset, data,
                                posted ? WriteMode::kPosted : WriteMode::kWaited);
  if (!s.ok()) return Fail(s, "write");
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json::Object()
                     .Num("region", *region)
                     .Num("offset", offset)
                     .Num("size", data.size())
                     .Bool("posted", client.counters().posted_writes > 0)
                     .str()
              << "\n";
  } else {
    absl::PrintF("wrote %u bytes to %s at 0x%x\n", data.size(),
                 RegionName(*region), offset);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// irqs

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

int RunIrqs(Client& client) {
  absl::StatusOr<uint32_t> index = ParseIrqIndex(absl::GetFlag(FLAGS_index));
  if (!index.ok()) return UsageError(index.status().message());
  const DeviceDescription d = client.device();
  if (*index >= d.irqs.size() || d.irqs[*index].count == 0) {
    return Fail(ErrnoError(EINVAL, absl::StrCat("the device has no ",
                                                IrqIndexName(*index),
                                                " vectors")),
                "irqs");
  }
  uint32_t vectors = absl::GetFlag(FLAGS_vectors);
  if (vectors == 0 || vectors > d.irqs[*index].count) {
    vectors = d.irqs[*index].count;
  }
  absl::StatusOr<std::unique_ptr<IrqWaiter>> waiter = IrqWaiter::Create(vectors);
  if (!waiter.ok()) return Fail(waiter.status(), "creating eventfds");
  absl::Status wired = client.SetIrqEventfds(*index, 0, (*waiter)->fds());
  if (!wired.ok()) return Fail(wired, "SET_IRQS");

  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  const bool json = absl::GetFlag(FLAGS_json);
  const uint64_t want = absl::GetFlag(FLAGS_count);
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  const absl::Time start = absl::Now();
  const absl::Time stop_at = timeout == absl::InfiniteDuration()
                                 ? absl::InfiniteFuture()
                                 : start + timeout;
  if (!json) {
    absl::PrintF("listening on %s vectors 0..%u (Ctrl-C to stop)\n",
                 IrqIndexName(*index), vectors - 1);
    std::fflush(stdout);
  }
  uint64_t total = 0;
  absl::Status failure;
  while (!g_interrupted.load() && (want == 0 || total < want)) {
    const absl::Time now = absl::Now();
    if (now >= stop_at) break;
    // Short slices so a signal is noticed promptly.
    const absl::Duration slice = std::min(stop_at - now, absl::Milliseconds(200));
    absl::StatusOr<std::vector<IrqWaiter::Event>> events = (*waiter)->Wait(slice);
    if (!events.ok()) {
      failure = events.status();
      break;
    }
    for (const IrqWaiter::Event& e : *events) {
      total += e.count;
      const double t = absl::ToDoubleSeconds(absl::Now() - start);
      if (json) {
        std::cout << Json::Object()
                         .Num("index", *index)
                         .Num("vector", e.vector)
                         .Num("count", e.count)
                         .Real("t", t)
                         .str()
                  << std::endl;
      } else {
        absl::PrintF("%10.6f  %s vector %u: %u interrupt%s\n", t,
                     IrqIndexName(*index), e.vector, e.count,
                     e.count == 1 ? "" : "s");
        std::fflush(stdout);
      }
    }
  }
  absl::Status disabled = client.DisableIrqs(*index);
  if (!failure.ok()) return Fail(failure, "waiting for interrupts");
  if (!disabled.ok()) return Fail(disabled, "disabling interrupts");
  const bool short_count = want != 0 && total < want && !g_interrupted.load();
  if (json) {
    std::cout << Json::Object()
                     .Add("summary", Json::Object()
                                         .Num("interrupts", total)
                                         .Bool("timed_out", short_count))
                     .str()
              << "\n";
  } else {
    absl::PrintF("%u interrupt%s\n", total, total == 1 ? "" : "s");
  }
  if (short_count) {
    std::cerr << "vfio-user-cli: irqs: " << total << " of " << want
              << " interrupts before the timeout\n";
    return kExitTimeout;
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// reset

int RunReset(Client& client) {
  absl::Status s = client.Reset();
  if (!s.ok()) return Fail(s, "reset");
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json::Object().Bool("reset", true).str() << "\n";
  } else {
    absl::PrintF("device reset\n");
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// bench

int RunBench(Client& client) {
  absl::StatusOr<uint32_t> region = ParseRegion(absl::GetFlag(FLAGS_region));
  if (!region.ok()) return UsageError(region.status().message());
  const std::string op = absl::GetFlag(FLAGS_op);
  if (op != "read" && op != "write" && op != "rw") {
    return UsageError("--op must be read, write or rw");
  }
  const uint64_t offset = absl::GetFlag(FLAGS_offset);
  const uint64_t size = absl::GetFlag(FLAGS_size);
  if (size == 0 || size > (64u << 20)) {
    return UsageError("--size must be in 1..64 MiB");
  }
  std::vector<uint8_t> buffer(size);
  uint64_t step = 0;
  auto once = [&]() -> absl::Status {
    const bool write = op == "write" || (op == "rw" && (step & 1));
    ++step;
    if (write) return client.Write(*region, offset, buffer);
    return client.Read(*region, offset, absl::MakeSpan(buffer));
  };
  if (op != "read") {
    // Write what is there, so the benchmark does not change the device.
    absl::Status s = client.Read(*region, offset, absl::MakeSpan(buffer));
    if (!s.ok()) return Fail(s, "bench");
  }
  for (uint64_t i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) {
    absl::Status s = once();
    if (!s.ok()) return Fail(s, "bench warmup");
  }
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  const uint64_t iterations = absl::GetFlag(FLAGS_iterations);
  std::vector<int64_t> latencies_ns;
  latencies_ns.reserve(duration > absl::ZeroDuration() ? 1 << 20 : iterations);
  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  for (uint64_t i = 0;; ++i) {
    if (duration > absl::ZeroDuration() ? absl::Now() >= end : i >= iterations) {
      break;
    }
    const absl::Time t0 = absl::Now();
    absl::Status s = once();
    if (!s.ok()) return Fail(s, "bench");
    latencies_ns.push_back(absl::ToInt64Nanoseconds(absl::Now() - t0));
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (latencies_ns.empty()) return UsageError("nothing to measure");
  std::sort(latencies_ns.begin(), latencies_ns.end());
  auto percentile = [&](double p) {
    const size_t i = std::min(latencies_ns.size() - 1,
                              static_cast<size_t>(p * latencies_ns.size()));
    return latencies_ns[i] / 1000.0;
  };
  const double ops = latencies_ns.size() / seconds;
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json::Object()
                     .Str("op", op)
                     .Num("region", *region)
                     .Num("size", size)
                     .Num("operations", latencies_ns.size())
                     .Real("seconds", seconds)
                     .Real("ops_per_second", ops)
                     .Real("mb_per_second", ops * size / 1e6)
                     .Real("min_us", latencies_ns.front() / 1000.0)
                     .Real("median_us", percentile(0.5))
                     .Real("p99_us", percentile(0.99))
                     .Real("max_us", latencies_ns.back() / 1000.0)
                     .str()
              << "\n";
  } else {
    absl::PrintF(
        "%s %u bytes of %s: %u ops in %.3fs: %.0f ops/s, %.2f MB/s\n"
        "latency us: min %.2f  median %.2f  p99 %.2f  max %.2f\n",
        op, size, RegionName(*region), latencies_ns.size(), seconds, ops,
        ops * size / 1e6, latencies_ns.front() / 1000.0, percentile(0.5),
        percentile(0.99), latencies_ns.back() / 1000.0);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// Dispatcher

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"info", "device, regions (with sparse areas), IRQs, negotiated limits",
       "Prints what the server describes: device flags, every region (size,\n"
       "mmap offset, flags, sparse areas, type), every IRQ index.\n",
       {}, RunInfo},
      {"lspci", "decode config space: header, BARs, capabilities",
       "Reads the config region (index 7), decodes the header, sizes the BARs\n"
       "(writes all-ones and restores; --nosize_bars to skip) and walks the\n"
       "capability lists, decoding PM, MSI, MSI-X and PCI Express.\n",
       {"size_bars"}, RunLspci},
      {"read", "read bytes from a region",
       "Reads --size bytes of --region at --offset and hex-dumps them (plus\n"
       "the little-endian value for sizes 1, 2, 4, 8).\n",
       {"region", "offset", "size"}, RunRead, true},
      {"write", "write to a region",
       "Writes --value (--width bytes, little-endian) or --hex bytes to\n"
       "--region at --offset.\n",
       {"region", "offset", "width", "value", "hex", "posted"}, RunWrite, true},
      {"irqs", "wire eventfds to an IRQ index and print interrupts",
       "Wires one eventfd per vector of --index (SET_IRQS), prints interrupts\n"
       "as they arrive until --count of them, --timeout, or Ctrl-C, then\n"
       "disables the index. Exit code 4 if --count was not reached in time.\n",
       {"index", "vectors", "count", "timeout"}, RunIrqs},
      {"reset", "reset the device (DEVICE_RESET)", "Sends DEVICE_RESET.\n", {},
       RunReset},
      {"bench", "time region read/write round trips",
       "Times --iterations (or --duration of) region accesses of --size bytes\n"
       "at --region/--offset; prints ops/s, median and p99 latency. Writes\n"
       "write back what was read first. For comparable numbers pin both\n"
       "processes to one CPU (taskset -c 0).\n",
       {"region", "offset", "size", "op", "iterations", "duration", "warmup"},
       RunBench, true},
  };
  return commands;
}

void PrintTopUsage(std::ostream& out) {
  out << "usage: vfio-user-cli <command> --socket=PATH [flags]\n\nCommands:\n";
  for (const Command& c : Commands()) {
    out << absl::StrFormat("  %-7s %s\n", c.name, c.summary);
  }
  out << "\nRun 'vfio-user-cli <command> --help' for its flags.\n" << kExitCodes;
}

void PrintCommandUsage(const Command& c) {
  std::cout << "usage: vfio-user-cli " << c.name << " --socket=PATH [flags]\n\n"
            << c.details << "\nFlags:\n";
  for (const std::string& f : c.flags) std::cout << FlagHelp(f);
  std::cout << "Common flags:\n";
  for (const std::string& f : CommonFlags()) std::cout << FlagHelp(f);
  std::cout << kExitCodes;
}

// Sets the flags in `args` (all "--name[=value]" / "--noname" / "--name
// value"), accepting only `allowed`. Returns a usage message on error.
std::string ParseFlags(const std::vector<std::string>& args,
                       const std::vector<std::string>& allowed) {
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) {
      return absl::StrCat("unexpected argument '", args[i], "'");
    }
    std::string name(arg.substr(0, arg.find('=')));
    const bool has_value = arg.find('=') != absl::string_view::npos;
    std::string value = has_value ? std::string(arg.substr(arg.find('=') + 1)) : "";
    bool negated = false;
    auto known = [&allowed](const std::string& n) {
      return std::find(allowed.begin(), allowed.end(), n) != allowed.end();
    };
    if (!known(name) && absl::StartsWith(name, "no") && known(name.substr(2))) {
      name = name.substr(2);
      negated = true;
    }
    if (!known(name)) return absl::StrCat("unknown flag --", name, " here");
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) return absl::StrCat("unknown flag --", name);
    if (flag->IsOfType<bool>()) {
      if (negated && has_value) return absl::StrCat("--no", name, " takes no value");
      if (!has_value) value = negated ? "false" : "true";
    } else {
      if (negated) return absl::StrCat("unknown flag --no", name);
      if (!has_value) {
        if (i + 1 >= args.size()) return absl::StrCat("--", name, " needs a value");
        value = args[++i];
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::StrCat("--", name, "=", value, ": ", error);
    }
  }
  return "";
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    PrintTopUsage(std::cerr);
    return kExitUsage;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintTopUsage(std::cout);
    return kExitOk;
  }
  const Command* command = nullptr;
  for (const Command& c : Commands()) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) return UsageError(absl::StrCat("unknown command '", name, "'"));
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h" || a == "--helpfull") {
      PrintCommandUsage(*command);
      return kExitOk;
    }
  }
  std::vector<std::string> allowed = CommonFlags();
  allowed.insert(allowed.end(), command->flags.begin(), command->flags.end());
  const std::string usage = ParseFlags(args, allowed);
  if (!usage.empty()) return UsageError(usage);
  if (absl::GetFlag(FLAGS_socket).empty()) return UsageError("--socket is required");
  if (command->needs_region && absl::GetFlag(FLAGS_region).empty()) {
    return UsageError(absl::StrCat(command->name, " needs --region"));
  }

  ClientOptions options;
  options.socket_path = absl::GetFlag(FLAGS_socket);
  options.request_timeout = absl::GetFlag(FLAGS_request_timeout);
  options.connect_timeout = absl::GetFlag(FLAGS_connect_timeout);
  options.transfer_chunk_size = absl::GetFlag(FLAGS_chunk_size);
  options.offer_twin_socket = absl::GetFlag(FLAGS_twin_socket);
  const absl::Duration reconnect = absl::GetFlag(FLAGS_reconnect_deadline);
  options.reconnect.enabled = reconnect > absl::ZeroDuration();
  options.reconnect.deadline = reconnect;
  if (options.request_timeout <= absl::ZeroDuration()) {
    return UsageError("--request_timeout must be > 0");
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  if (!client.ok()) {
    Fail(client.status(), absl::StrCat("connecting to ", options.socket_path));
    return kExitConnect;
  }
  const int code = command->run(**client);
  (*client)->Close();
  return code;
}

}  // namespace
}  // namespace vfio_user

int main(int argc, char** argv) {
  // Library logs: warnings and errors only, unless VFIO_USER_LOG_LEVEL says.
  if (std::getenv("VFIO_USER_LOG_LEVEL") == nullptr) {
    vfio_user::SetLogLevel(vfio_user::LogLevel::kWarn);
  }
  std::signal(SIGPIPE, SIG_IGN);
  return vfio_user::Main(argc, argv);
}
