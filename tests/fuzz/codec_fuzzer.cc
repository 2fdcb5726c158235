// libFuzzer target for the vfio-user codec (core/codec.h, DecodeHeader).
//
// Input layout (see codec_fuzz_input.h):
//   byte 0     selector: bits 0-5 pick the decoder (modulo the number of
//              decoders), bit 6 selects the QEMU legacy DMA layout, bit 7
//              tight limits (max_data_xfer_size 64, max_array_entries 4)
//   bytes 1-4  u32 parameter, little-endian: requested count/size for reply
//              decoders, max_msg_size for DecodeHeader
//   bytes 5-   the payload handed to the decoder
//
// Every decode must either fail with a positive errno or succeed with a value
// that re-encodes to the same bytes (or, where the encoding is not unique,
// re-decodes to the same value); anything else aborts. Built by
// tests/fuzz/run_fuzzer.sh with clang -fsanitize=fuzzer,address,undefined, and
// with gcc into codec_fuzz_regression_test, which replays the corpus.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/codec.h"
#include "core/errno_status.h"
#include "core/protocol.h"
#include "tests/fuzz/codec_fuzz_input.h"

namespace vfio_user {
namespace fuzz {
namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "codec fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

bool SameBytes(const Bytes& a, ByteSpan b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

// True when `inner` lies within `outer` (decoded data must point into the
// payload, never elsewhere).
bool Within(ByteSpan inner, ByteSpan outer) {
  if (inner.empty()) return true;
  return inner.data() >= outer.data() &&
         inner.data() + inner.size() <= outer.data() + outer.size();
}

// Failure must carry an errno for the error reply; success is checked by
// `on_ok`.
template <typename T, typename F>
bool Check(const absl::StatusOr<T>& r, F on_ok) {
  if (!r.ok()) {
    Require(ErrnoOf(r.status()) > 0, "error without errno");
    return false;
  }
  on_ok(*r);
  return true;
}

bool SameRegionInfo(const RegionInfo& a, const RegionInfo& b) {
  if ((a.flags & ~kRegionInfoFlagCaps) != (b.flags & ~kRegionInfoFlagCaps) ||
      a.index != b.index || a.size != b.size || a.offset != b.offset ||
      a.msix_mappable != b.msix_mappable ||
      a.sparse_areas.has_value() != b.sparse_areas.has_value() ||
      a.type_cap.has_value() != b.type_cap.has_value()) {
    return false;
  }
  if (a.sparse_areas.has_value() && *a.sparse_areas != *b.sparse_areas) return false;
  if (a.type_cap.has_value() && (a.type_cap->type != b.type_cap->type ||
                                 a.type_cap->subtype != b.type_cap->subtype)) {
    return false;
  }
  return true;
}

bool SameIoFdEntries(const std::vector<IoFdEntry>& a,
                     const std::vector<IoFdEntry>& b, bool lvu_layout) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const IoFdEntry& x = a[i];
    const IoFdEntry& y = b[i];
    if (x.offset != y.offset || x.size != y.size || x.fd_index != y.fd_index ||
        x.type != y.type || x.flags != y.flags || x.datamatch != y.datamatch) {
      return false;
    }
    if (lvu_layout && (x.shadow_fd_index != y.shadow_fd_index ||
                       x.shadow_offset != y.shadow_offset)) {
      return false;
    }
  }
  return true;
}

bool FuzzRegionInfo(ByteSpan p, const DecodeLimits& limits) {
  return Check(DecodeRegionInfo(p, limits), [&](const RegionInfo& info) {
    Require(info.argsz >= 32, "region info argsz < 32");
    if (info.sparse_areas.has_value()) {
      for (const SparseMmapArea& a : *info.sparse_areas) {
        Require(a.offset <= info.size && a.size <= info.size - a.offset,
                "sparse area outside region");
      }
    }
    const Bytes again = EncodeRegionInfo(info, 0xFFFFFFFF);
    absl::StatusOr<RegionInfo> redecoded =
        DecodeRegionInfo(ByteSpan(again.data(), again.size()), limits);
    Require(redecoded.ok(), "re-encoded region info does not decode");
    Require(SameRegionInfo(info, *redecoded), "region info round trip differs");
    Require(redecoded->argsz == again.size(), "region info argsz != size");
  });
}

bool FuzzRegionIoFdsReply(ByteSpan p, const DecodeLimits& limits) {
  return Check(DecodeRegionIoFdsReply(p, limits), [&](const RegionIoFdsReply& r) {
    if (r.entries.empty()) return;  // count-only (truncated) form
    Require(r.entries.size() == r.count, "io-fd entries != count");
    const uint32_t stride = (r.argsz - 16) / r.count;
    const Bytes again = EncodeRegionIoFdsReply(r, r.argsz, stride);
    Require(again.size() == p.size(), "io-fd reply re-encodes to another size");
    absl::StatusOr<RegionIoFdsReply> redecoded =
        DecodeRegionIoFdsReply(ByteSpan(again.data(), again.size()), limits);
    Require(redecoded.ok(), "re-encoded io-fd reply does not decode");
    Require(SameIoFdEntries(r.entries, redecoded->entries,
                            stride == kIoFdEntrySizeLvu),
            "io-fd reply round trip differs");
  });
}

bool FuzzDeviceFeature(ByteSpan p, const DecodeLimits& limits) {
  return Check(DecodeDeviceFeature(p), [&](const DeviceFeature& f) {
          Require(SameBytes(EncodeDeviceFeature(f.argsz, f.flags, f.data), p),
                  "DEVICE_FEATURE round trip differs");
          Require(Within(f.data, p), "feature data outside payload");
          // Feature-specific data, as the device layer would decode it.
          switch (f.feature()) {
            case kDeviceFeatureMigration:
              Check(DecodeMigrationFlags(f.data), [](uint64_t) {});
              break;
            case kDeviceFeatureMigDeviceState:
              Check(DecodeMigDeviceState(f.data), [](const MigDeviceState&) {});
              break;
            case kDeviceFeatureDmaLoggingStart:
              Check(DecodeDmaLoggingStart(f.data, limits),
                    [](const DmaLoggingStart&) {});
              break;
            case kDeviceFeatureDmaLoggingReport:
              if (f.flags & kDeviceFeatureGet) {
                Check(DecodeDmaLoggingReportRequest(f.data),
                      [](const DmaLoggingReport&) {});
                Check(DecodeDmaLoggingReportReply(f.data, limits),
                      [](const DmaLoggingReport&) {});
              }
              break;
            default:
              break;
          }
        });
}

bool FuzzOne(const FuzzInput& in) {
  const ByteSpan p = in.payload;
  const DecodeLimits& limits = in.limits;
  const DmaLayout layout = in.layout;
  switch (in.target) {
    case Target::kHeader:
      return Check(DecodeHeader(p, in.param), [&](const Header& h) {
        uint8_t out[kHeaderSize];
        EncodeHeader(h, out);
        Require(std::memcmp(out, p.data(), kHeaderSize) == 0,
                "header round trip differs");
        Require(h.msg_size >= kHeaderSize && h.msg_size <= in.param,
                "header msg_size out of bounds");
      });
    case Target::kVersion:
      return Check(DecodeVersion(p), [&](const VersionPayload& v) {
        const Bytes again = EncodeVersion(v);
        absl::StatusOr<VersionPayload> redecoded =
            DecodeVersion(ByteSpan(again.data(), again.size()));
        Require(redecoded.ok() && redecoded->major == v.major &&
                    redecoded->minor == v.minor && redecoded->json == v.json,
                "VERSION round trip differs");
      });
    case Target::kDmaMap:
      return Check(DecodeDmaMap(p), [&](const DmaMapRequest& m) {
        Require(SameBytes(EncodeDmaMap(m), p.first(32)), "DMA_MAP round trip");
      });
    case Target::kDmaUnmap:
      return Check(DecodeDmaUnmap(p), [&](const DmaUnmapRequest& u) {
        Require(SameBytes(EncodeDmaUnmap(u), p.first(24)), "DMA_UNMAP round trip");
      });
    case Target::kDeviceInfoRequest:
      return Check(DecodeDeviceInfoRequest(p), [&](const DeviceInfo& d) {
        Require(SameBytes(EncodeDeviceInfo(d), p.first(16)), "GET_INFO round trip");
      });
    case Target::kDeviceInfoReply:
      return Check(DecodeDeviceInfoReply(p), [&](const DeviceInfo& d) {
        Require(SameBytes(EncodeDeviceInfo(d), p.first(16)), "GET_INFO round trip");
      });
    case Target::kRegionInfoRequest:
      return Check(DecodeRegionInfoRequest(p), [&](const RegionInfoRequest& q) {
        const Bytes again = EncodeRegionInfoRequest(q);
        absl::StatusOr<RegionInfoRequest> redecoded =
            DecodeRegionInfoRequest(ByteSpan(again.data(), again.size()));
        Require(redecoded.ok() && redecoded->argsz == q.argsz &&
                    redecoded->index == q.index,
                "GET_REGION_INFO request round trip");
      });
    case Target::kRegionInfoReply:
      return FuzzRegionInfo(p, limits);
    case Target::kRegionIoFdsRequest:
      return Check(DecodeRegionIoFdsRequest(p), [&](const RegionIoFdsRequest& q) {
        Require(SameBytes(EncodeRegionIoFdsRequest(q), p.first(16)),
                "GET_REGION_IO_FDS request round trip");
      });
    case Target::kRegionIoFdsReply:
      return FuzzRegionIoFdsReply(p, limits);
    case Target::kIrqInfoRequest:
      return Check(DecodeIrqInfoRequest(p), [&](const IrqInfo& i) {
        Require(SameBytes(EncodeIrqInfo(i), p.first(16)), "GET_IRQ_INFO round trip");
      });
    case Target::kIrqInfoReply:
      return Check(DecodeIrqInfoReply(p), [&](const IrqInfo& i) {
        Require(SameBytes(EncodeIrqInfo(i), p.first(16)), "GET_IRQ_INFO round trip");
      });
    case Target::kSetIrqs:
      return Check(DecodeSetIrqs(p), [&](const SetIrqs& s) {
        Require(SameBytes(EncodeSetIrqs(s), p), "SET_IRQS round trip");
      });
    case Target::kRegionReadRequest:
      return Check(DecodeRegionReadRequest(p, limits), [&](const RegionAccess& a) {
        Require(a.count <= limits.max_data_xfer_size, "REGION_READ over limit");
        Require(SameBytes(EncodeRegionAccessHeader(a.offset, a.region, a.count), p),
                "REGION_READ round trip");
      });
    case Target::kRegionWriteRequest:
      return Check(DecodeRegionWriteRequest(p, limits), [&](const RegionAccess& a) {
        Require(Within(a.data, p) && a.data.size() == a.count, "REGION_WRITE data");
        Require(SameBytes(EncodeRegionAccessWithData(a.offset, a.region, a.data), p),
                "REGION_WRITE round trip");
      });
    case Target::kRegionReadReply:
      return Check(DecodeRegionReadReply(p, in.param), [&](const RegionAccess& a) {
        Require(a.count <= in.param, "REGION_READ reply over request");
        Require(Within(a.data, p), "REGION_READ reply data");
        Require(SameBytes(EncodeRegionAccessWithData(a.offset, a.region, a.data), p),
                "REGION_READ reply round trip");
      });
    case Target::kRegionWriteReply:
      return Check(DecodeRegionWriteReply(p), [&](const RegionAccess& a) {
        Require(SameBytes(EncodeRegionAccessHeader(a.offset, a.region, a.count), p),
                "REGION_WRITE reply round trip");
      });
    case Target::kDmaReadRequest:
      return Check(DecodeDmaReadRequest(p, limits, layout), [&](const DmaAccess& a) {
        Require(a.count <= limits.max_data_xfer_size, "DMA_READ over limit");
        Require(SameBytes(EncodeDmaAccessHeader(a.address, a.count, layout), p),
                "DMA_READ round trip");
      });
    case Target::kDmaWriteRequest:
      return Check(DecodeDmaWriteRequest(p, limits, layout), [&](const DmaAccess& a) {
        Require(Within(a.data, p) && a.data.size() == a.count, "DMA_WRITE data");
        Require(SameBytes(EncodeDmaAccessWithData(a.address, a.data, layout), p),
                "DMA_WRITE round trip");
      });
    case Target::kDmaReadReply:
      return Check(DecodeDmaReadReply(p, in.param), [&](const DmaAccess& a) {
        Require(a.count == in.param && a.data.size() == a.count && Within(a.data, p),
                "DMA_READ reply data");
        const DmaLayout seen = p.size() - a.count == DmaAccessHeaderSize(DmaLayout::kSpec)
                                   ? DmaLayout::kSpec
                                   : DmaLayout::kQemuLegacy;
        Require(SameBytes(EncodeDmaAccessWithData(a.address, a.data, seen), p),
                "DMA_READ reply round trip");
      });
    case Target::kDmaWriteReply:
      return Check(DecodeDmaWriteReply(p), [&](const DmaAccess& a) {
        if (p.empty()) return;
        const DmaLayout seen = p.size() == DmaAccessHeaderSize(DmaLayout::kSpec)
                                   ? DmaLayout::kSpec
                                   : DmaLayout::kQemuLegacy;
        Require(SameBytes(EncodeDmaAccessHeader(a.address, a.count, seen), p),
                "DMA_WRITE reply round trip");
      });
    case Target::kEmptyPayload: {
      const absl::Status s = DecodeEmptyPayload(p);
      Require(s.ok() == p.empty(), "empty payload check");
      Require(s.ok() || ErrnoOf(s) > 0, "error without errno");
      return s.ok();
    }
    case Target::kRegionWriteMulti:
      return Check(DecodeRegionWriteMulti(p, limits),
            [&](const std::vector<WriteMultiEntry>& entries) {
              Require(!entries.empty() && entries.size() <= limits.max_array_entries,
                      "WRITE_MULTI count");
              Require(SameBytes(EncodeRegionWriteMulti(entries), p),
                      "WRITE_MULTI round trip");
            });
    case Target::kRegionWriteMultiReply:
      return Check(DecodeRegionWriteMultiReply(p), [&](uint64_t n) {
        Require(SameBytes(EncodeRegionWriteMultiReply(n), p), "WRITE_MULTI reply");
      });
    case Target::kDeviceFeature:
      return FuzzDeviceFeature(p, limits);
    case Target::kMigrationFlags:
      return Check(DecodeMigrationFlags(p), [&](uint64_t flags) {
        Require(SameBytes(EncodeMigrationFlags(flags), p), "MIGRATION round trip");
      });
    case Target::kMigDeviceState:
      return Check(DecodeMigDeviceState(p), [&](const MigDeviceState& s) {
        Require(s.device_state <= 7, "device_state > 7");
        Require(SameBytes(EncodeMigDeviceState(s), p), "MIG_DEVICE_STATE round trip");
      });
    case Target::kDmaLoggingStart:
      return Check(DecodeDmaLoggingStart(p, limits), [&](const DmaLoggingStart& s) {
        const Bytes again = EncodeDmaLoggingStart(s);
        Require(again.size() == p.size(), "DMA_LOGGING_START size");
        absl::StatusOr<DmaLoggingStart> redecoded =
            DecodeDmaLoggingStart(ByteSpan(again.data(), again.size()), limits);
        Require(redecoded.ok() && redecoded->page_size == s.page_size &&
                    redecoded->ranges.size() == s.ranges.size(),
                "DMA_LOGGING_START round trip");
      });
    case Target::kDmaLoggingReportRequest:
      return Check(DecodeDmaLoggingReportRequest(p), [&](const DmaLoggingReport& r) {
        Require(SameBytes(EncodeDmaLoggingReportRequest(r), p),
                "DMA_LOGGING_REPORT request round trip");
      });
    case Target::kDmaLoggingReportReply:
      return Check(DecodeDmaLoggingReportReply(p, limits), [&](const DmaLoggingReport& r) {
        Require(r.bitmap.size() == DmaLoggingBitmapWords(r.length, r.page_size),
                "bitmap words");
        Require(SameBytes(EncodeDmaLoggingReportReply(r), p),
                "DMA_LOGGING_REPORT reply round trip");
      });
    case Target::kMigDataReadRequest:
      return Check(DecodeMigDataReadRequest(p, limits), [&](const MigData& m) {
        Require(SameBytes(EncodeMigDataHeader(m.argsz, m.size), p),
                "MIG_DATA_READ round trip");
      });
    case Target::kMigDataReadReply:
      return Check(DecodeMigDataReadReply(p, in.param), [&](const MigData& m) {
        Require(m.size <= in.param && Within(m.data, p), "MIG_DATA_READ reply data");
        Require(SameBytes(EncodeMigDataWithData(m.argsz, m.data), p),
                "MIG_DATA_READ reply round trip");
      });
    case Target::kMigDataWriteRequest:
      return Check(DecodeMigDataWriteRequest(p, limits), [&](const MigData& m) {
        Require(Within(m.data, p) && m.data.size() == m.size, "MIG_DATA_WRITE data");
        Require(SameBytes(EncodeMigDataWithData(m.argsz, m.data), p),
                "MIG_DATA_WRITE round trip");
      });
    case Target::kCount:
      break;
  }
  return false;
}

}  // namespace

bool RunCodecFuzzInput(ByteSpan raw) {
  FuzzInput in;
  return ParseFuzzInput(raw, &in) && FuzzOne(in);
}

}  // namespace fuzz
}  // namespace vfio_user

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vfio_user::fuzz::RunCodecFuzzInput(vfio_user::ByteSpan(data, size));
  return 0;
}
