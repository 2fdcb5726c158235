// Writes the seed corpus of the codec fuzz target: one small, valid message
// per decoder (and a few variants), framed as codec_fuzz_input.h describes.
//
// Usage: make_codec_corpus OUT_DIR
//   bazel run //tests/fuzz:make_codec_corpus -- $PWD/tests/fuzz/corpus/codec
// Existing files with the same names are overwritten; others are left alone.
#include <cstdio>
#include <string>
#include <vector>

#include "core/codec.h"
#include "core/protocol.h"
#include "tests/fuzz/codec_fuzz_input.h"

namespace vfio_user {
namespace fuzz {
namespace {

struct Seed {
  std::string name;
  Bytes raw;
};

ByteSpan Span(const Bytes& b) { return ByteSpan(b.data(), b.size()); }

std::vector<Seed> MakeSeeds() {
  std::vector<Seed> s;
  auto add = [&s](const std::string& name, Target t, const Bytes& payload,
                  uint32_t param = 0, uint8_t flags = 0) {
    s.push_back({name, MakeFuzzInput(t, param, Span(payload), flags)});
  };
  const Bytes data4 = {0xDE, 0xAD, 0xBE, 0xEF};

  {
    Header h;
    h.msg_id = 3;
    h.cmd = static_cast<uint16_t>(Command::kRegionRead);
    h.msg_size = 32;
    Bytes b(kHeaderSize);
    EncodeHeader(h, b.data());
    add("header-command", Target::kHeader, b, 1 << 20);
    h.flags = kFlagsTypeReply | kFlagsError;
    h.error = 22;
    h.msg_size = 16;
    EncodeHeader(h, b.data());
    add("header-error-reply", Target::kHeader, b, 4096);
  }
  {
    VersionPayload v;
    v.minor = 0;
    v.json = R"({"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,)"
             R"("pgsizes":4096,"max_dma_maps":65535,"write_multiple":true,)"
             R"("migration":{"pgsize":4096,"max_bitmap_size":268435456}}})";
    add("version-qemu", Target::kVersion, EncodeVersion(v));
    v.json.clear();
    add("version-nojson", Target::kVersion, EncodeVersion(v));
  }
  {
    DmaMapRequest m;
    m.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
    m.offset = 0x1000;
    m.address = 0x100000000;
    m.size = 0x200000;
    add("dma-map", Target::kDmaMap, EncodeDmaMap(m));
    DmaUnmapRequest u;
    u.address = 0x100000000;
    u.size = 0x200000;
    add("dma-unmap", Target::kDmaUnmap, EncodeDmaUnmap(u));
    u = DmaUnmapRequest();
    u.flags = kDmaUnmapFlagAll;
    add("dma-unmap-all", Target::kDmaUnmap, EncodeDmaUnmap(u));
  }
  add("get-info-request", Target::kDeviceInfoRequest, EncodeDeviceInfo({}));
  add("get-info-reply", Target::kDeviceInfoReply,
      EncodeDeviceInfo({16, kDeviceFlagsReset | kDeviceFlagsPci, 9, 5}));
  {
    RegionInfoRequest q;
    q.argsz = 256;
    q.index = 2;
    add("region-info-request", Target::kRegionInfoRequest,
        EncodeRegionInfoRequest(q));
    RegionInfo r;
    r.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite | kRegionInfoFlagMmap;
    r.index = 2;
    r.size = 0x4000;
    r.offset = 0x10000;
    r.sparse_areas = std::vector<SparseMmapArea>{{0, 0x1000}, {0x2000, 0x2000}};
    r.type_cap = RegionInfo::TypeCap{1, 1};
    r.msix_mappable = true;
    add("region-info-caps", Target::kRegionInfoReply, EncodeRegionInfo(r, 4096));
    add("region-info-truncated", Target::kRegionInfoReply, EncodeRegionInfo(r, 32));
    RegionInfo plain;
    plain.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite;
    plain.index = kPciConfigRegionIndex;
    plain.size = 256;
    add("region-info-plain", Target::kRegionInfoReply, EncodeRegionInfo(plain, 32));
  }
  {
    RegionIoFdsRequest q;
    q.argsz = 256;
    add("io-fds-request", Target::kRegionIoFdsRequest, EncodeRegionIoFdsRequest(q));
    RegionIoFdsReply r;
    r.index = 1;
    IoFdEntry e;
    e.offset = 0x40;
    e.size = 4;
    e.flags = 1;
    e.datamatch = 7;
    r.entries = {e, e};
    add("io-fds-reply-40", Target::kRegionIoFdsReply,
        EncodeRegionIoFdsReply(r, 4096, kIoFdEntrySizeSpec));
    r.entries[1].type = kIoFdTypeIoeventfdShadow;
    r.entries[1].shadow_fd_index = 1;
    r.entries[1].shadow_offset = 0x100;
    add("io-fds-reply-48", Target::kRegionIoFdsReply,
        EncodeRegionIoFdsReply(r, 4096, kIoFdEntrySizeLvu));
    add("io-fds-reply-count-only", Target::kRegionIoFdsReply,
        EncodeRegionIoFdsReply(r, 16));
  }
  add("irq-info-request", Target::kIrqInfoRequest, EncodeIrqInfo({16, 0, 2, 0}));
  add("irq-info-reply", Target::kIrqInfoReply,
      EncodeIrqInfo({16, kIrqInfoEventfd | kIrqInfoMaskable, 2, 16}));
  {
    SetIrqs none;
    none.flags = kIrqSetDataNone | kIrqSetActionTrigger;
    none.index = kPciMsixIrqIndex;
    add("set-irqs-none", Target::kSetIrqs, EncodeSetIrqs(none));
    SetIrqs bools;
    bools.flags = kIrqSetDataBool | kIrqSetActionUnmask;
    bools.count = 4;
    bools.bools = {1, 0, 1, 1};
    add("set-irqs-bool", Target::kSetIrqs, EncodeSetIrqs(bools));
    SetIrqs efd;
    efd.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    efd.index = kPciMsixIrqIndex;
    efd.start = 2;
    efd.count = 3;
    add("set-irqs-eventfd", Target::kSetIrqs, EncodeSetIrqs(efd));
  }
  add("region-read-request", Target::kRegionReadRequest,
      EncodeRegionAccessHeader(0x10, kPciConfigRegionIndex, 4));
  add("region-write-request", Target::kRegionWriteRequest,
      EncodeRegionAccessWithData(0x10, 0, Span(data4)));
  add("region-read-reply", Target::kRegionReadReply,
      EncodeRegionAccessWithData(0x10, 0, Span(data4)), 4);
  add("region-write-reply", Target::kRegionWriteReply,
      EncodeRegionAccessHeader(0x10, 0, 4));
  for (DmaLayout layout : {DmaLayout::kSpec, DmaLayout::kQemuLegacy}) {
    const bool legacy = layout == DmaLayout::kQemuLegacy;
    const std::string tag = legacy ? "-qemu" : "-spec";
    const uint8_t flags = legacy ? kSelectorLegacyDma : 0;
    add("dma-read-request" + tag, Target::kDmaReadRequest,
        EncodeDmaAccessHeader(0x200000, 4, layout), 0, flags);
    add("dma-write-request" + tag, Target::kDmaWriteRequest,
        EncodeDmaAccessWithData(0x200000, Span(data4), layout), 0, flags);
    add("dma-read-reply" + tag, Target::kDmaReadReply,
        EncodeDmaAccessWithData(0x200000, Span(data4), layout), 4);
    add("dma-write-reply" + tag, Target::kDmaWriteReply,
        EncodeDmaAccessHeader(0x200000, 4, layout));
  }
  add("dma-write-reply-empty", Target::kDmaWriteReply, Bytes{});
  add("device-reset", Target::kEmptyPayload, Bytes{});
  {
    std::vector<WriteMultiEntry> entries(2);
    entries[0].offset = 0x100;
    entries[0].count = 4;
    entries[0].data[0] = 1;
    entries[1].offset = 0x104;
    entries[1].region = 1;
    entries[1].count = 8;
    add("write-multi", Target::kRegionWriteMulti, EncodeRegionWriteMulti(entries));
    add("write-multi-reply", Target::kRegionWriteMultiReply,
        EncodeRegionWriteMultiReply(2));
  }
  {
    const Bytes mig = EncodeMigrationFlags(kMigrationStopCopy | kMigrationPreCopy);
    add("feature-migration-get", Target::kDeviceFeature,
        EncodeDeviceFeature(16, kDeviceFeatureGet | kDeviceFeatureMigration, Span(mig)));
    add("feature-probe", Target::kDeviceFeature,
        EncodeDeviceFeature(8, kDeviceFeatureProbe | kDeviceFeatureGet |
                                   kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                            ByteSpan()));
    MigDeviceState st;
    st.device_state = static_cast<uint32_t>(MigrationState::kStopCopy);
    const Bytes state = EncodeMigDeviceState(st);
    add("feature-device-state-set", Target::kDeviceFeature,
        EncodeDeviceFeature(16, kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                            Span(state)));
    DmaLoggingStart start;
    start.ranges = {{0, 0x100000}, {0x200000, 0x1000}};
    const Bytes start_data = EncodeDmaLoggingStart(start);
    add("feature-logging-start", Target::kDeviceFeature,
        EncodeDeviceFeature(8 + start_data.size(),
                            kDeviceFeatureSet | kDeviceFeatureDmaLoggingStart,
                            Span(start_data)));
    DmaLoggingReport report;
    report.iova = 0;
    report.length = 70 * 4096;
    report.bitmap = {0x5, 0x1};
    const Bytes report_reply = EncodeDmaLoggingReportReply(report);
    add("feature-logging-report", Target::kDeviceFeature,
        EncodeDeviceFeature(8 + report_reply.size(),
                            kDeviceFeatureGet | kDeviceFeatureDmaLoggingReport,
                            Span(report_reply)));
    add("migration-flags", Target::kMigrationFlags, mig);
    add("mig-device-state", Target::kMigDeviceState, state);
    add("logging-start", Target::kDmaLoggingStart, start_data);
    add("logging-report-request", Target::kDmaLoggingReportRequest,
        EncodeDmaLoggingReportRequest(report));
    add("logging-report-reply", Target::kDmaLoggingReportReply, report_reply);
  }
  add("mig-data-read-request", Target::kMigDataReadRequest,
      EncodeMigDataHeader(8 + 4096, 4096));
  add("mig-data-read-reply", Target::kMigDataReadReply,
      EncodeMigDataWithData(12, Span(data4)), 4096);
  add("mig-data-write-request", Target::kMigDataWriteRequest,
      EncodeMigDataWithData(12, Span(data4)));
  return s;
}

}  // namespace
}  // namespace fuzz
}  // namespace vfio_user

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  int written = 0;
  for (const auto& seed : vfio_user::fuzz::MakeSeeds()) {
    const std::string path = std::string(argv[1]) + "/" + seed.name;
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr ||
        std::fwrite(seed.raw.data(), 1, seed.raw.size(), f) != seed.raw.size() ||
        std::fclose(f) != 0) {
      std::perror(path.c_str());
      return 1;
    }
    ++written;
  }
  std::printf("wrote %d seeds to %s\n", written, argv[1]);
  return 0;
}
