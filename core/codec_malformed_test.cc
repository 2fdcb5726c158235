// Malformed input for every decoder: each case asserts the exact errno the
// error reply would carry (ErrnoOf) and, by running at all under ASan/UBSan in
// the fuzz build, that nothing reads out of bounds. Well-formed layouts are in
// codec_test.cc.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "core/protocol.h"

namespace vfio_user {
namespace {

Bytes Le(uint64_t v, int width) {
  Bytes b;
  for (int i = 0; i < width; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return b;
}
Bytes U8(uint8_t v) { return Le(v, 1); }
Bytes U16(uint16_t v) { return Le(v, 2); }
Bytes U32(uint32_t v) { return Le(v, 4); }
Bytes U64(uint64_t v) { return Le(v, 8); }
Bytes Str(const std::string& s) { return Bytes(s.begin(), s.end()); }
Bytes Cat(std::initializer_list<Bytes> fields) {
  Bytes out;
  for (const Bytes& f : fields) out.insert(out.end(), f.begin(), f.end());
  return out;
}
ByteSpan Span(const Bytes& b) { return ByteSpan(b.data(), b.size()); }

constexpr uint64_t kMax64 = ~uint64_t{0};
constexpr uint32_t kMax32 = ~uint32_t{0};

int Err(const absl::Status& s) { return ErrnoOf(s); }
template <typename T>
int Err(const absl::StatusOr<T>& s) {
  return ErrnoOf(s.status());
}

DecodeLimits Limits(uint64_t max_data_xfer_size, uint64_t max_array_entries) {
  DecodeLimits l;
  l.max_data_xfer_size = max_data_xfer_size;
  l.max_array_entries = max_array_entries;
  return l;
}

// ============================ Header ============================

TEST(MalformedHeader, FewerThan16Bytes) {
  const Bytes full = Cat({U16(1), U16(1), U32(16), U32(0), U32(0)});
  for (size_t n = 0; n < kHeaderSize; ++n) {
    EXPECT_EQ(Err(DecodeHeader(ByteSpan(full.data(), n), 4096)), EINVAL) << n;
  }
  EXPECT_EQ(Err(DecodeHeader(Span(full), 4096)), 0);
}

TEST(MalformedHeader, MsgSizeBelow16) {
  for (uint32_t size : {0u, 1u, 8u, 15u}) {
    const Bytes h = Cat({U16(1), U16(1), U32(size), U32(0), U32(0)});
    EXPECT_EQ(Err(DecodeHeader(Span(h), 4096)), EINVAL) << size;
  }
}

TEST(MalformedHeader, MsgSizeAboveLimit) {
  const Bytes at = Cat({U16(1), U16(9), U32(4096), U32(0), U32(0)});
  EXPECT_EQ(Err(DecodeHeader(Span(at), 4096)), 0);
  for (uint32_t size : {4097u, 1u << 20, kMax32}) {
    const Bytes h = Cat({U16(1), U16(9), U32(size), U32(0), U32(0)});
    EXPECT_EQ(Err(DecodeHeader(Span(h), 4096)), E2BIG) << size;
  }
}

TEST(MalformedHeader, BadTypeBits) {
  for (uint32_t type = 2; type <= 0xF; ++type) {
    for (uint32_t extra : {0u, kFlagsNoReply, kFlagsError}) {
      const Bytes h = Cat({U16(1), U16(1), U32(16), U32(type | extra), U32(0)});
      EXPECT_EQ(Err(DecodeHeader(Span(h), 4096)), EINVAL) << type;
    }
  }
}

// ============================ Truncation, every decoder ============================

enum class Length {
  kAtLeastFixed,  // only prefixes shorter than the fixed part must fail
  kExact,         // every prefix of `valid`, and `valid` plus a byte, must fail
};

struct DecoderCase {
  std::string name;
  Bytes valid;
  size_t fixed_size;
  Length length;
  std::function<absl::Status(ByteSpan)> decode;
};

template <typename F>
std::function<absl::Status(ByteSpan)> StatusOf(F f) {
  return [f](ByteSpan p) { return f(p).status(); };
}

std::vector<DecoderCase> AllDecoders() {
  const DecodeLimits lim;
  std::vector<DecoderCase> c;
  c.push_back({"VERSION", Cat({U16(0), U16(2), Str("{}"), U8(0)}), 4,
               Length::kAtLeastFixed, StatusOf(DecodeVersion)});
  c.push_back({"DMA_MAP", Cat({U32(32), U32(3), U64(0), U64(0x1000), U64(0x1000)}),
               32, Length::kAtLeastFixed, StatusOf(DecodeDmaMap)});
  c.push_back({"DMA_UNMAP", Cat({U32(24), U32(0), U64(0x1000), U64(0x1000)}), 24,
               Length::kAtLeastFixed, StatusOf(DecodeDmaUnmap)});
  c.push_back({"GET_INFO request", Cat({U32(16), U32(0), U32(0), U32(0)}), 16,
               Length::kAtLeastFixed, StatusOf(DecodeDeviceInfoRequest)});
  c.push_back({"GET_INFO reply", Cat({U32(16), U32(3), U32(9), U32(5)}), 16,
               Length::kAtLeastFixed, StatusOf(DecodeDeviceInfoReply)});
  c.push_back({"GET_REGION_INFO request",
               Cat({U32(32), U32(0), U32(7), U32(0), U64(0), U64(0)}), 32,
               Length::kAtLeastFixed, StatusOf(DecodeRegionInfoRequest)});
  {
    RegionInfo r;
    r.flags = kRegionInfoFlagMmap;
    r.size = 0x2000;
    r.sparse_areas = std::vector<SparseMmapArea>{{0, 0x1000}};
    r.type_cap = RegionInfo::TypeCap{1, 2};
    r.msix_mappable = true;
    c.push_back({"GET_REGION_INFO reply", EncodeRegionInfo(r, 4096), 32,
                 Length::kAtLeastFixed, [lim](ByteSpan p) {
                   return DecodeRegionInfo(p, lim).status();
                 }});
  }
  c.push_back({"GET_REGION_IO_FDS request", Cat({U32(64), U32(0), U32(0), U32(0)}),
               16, Length::kAtLeastFixed, StatusOf(DecodeRegionIoFdsRequest)});
  {
    RegionIoFdsReply r;
    r.entries.resize(1);
    c.push_back({"GET_REGION_IO_FDS reply", EncodeRegionIoFdsReply(r, 4096), 16,
                 Length::kAtLeastFixed, [lim](ByteSpan p) {
                   return DecodeRegionIoFdsReply(p, lim).status();
                 }});
  }
  c.push_back({"GET_IRQ_INFO request", Cat({U32(16), U32(0), U32(2), U32(0)}), 16,
               Length::kAtLeastFixed, StatusOf(DecodeIrqInfoRequest)});
  c.push_back({"GET_IRQ_INFO reply", Cat({U32(16), U32(1), U32(2), U32(8)}), 16,
               Length::kAtLeastFixed, StatusOf(DecodeIrqInfoReply)});
  c.push_back({"SET_IRQS bool",
               Cat({U32(22), U32(0x22), U32(2), U32(0), U32(2), U8(1), U8(1)}), 20,
               Length::kExact, StatusOf(DecodeSetIrqs)});
  c.push_back({"SET_IRQS eventfd", Cat({U32(20), U32(0x24), U32(2), U32(0), U32(2)}),
               20, Length::kExact, StatusOf(DecodeSetIrqs)});
  c.push_back({"REGION_READ request", Cat({U64(0), U32(7), U32(4)}), 16,
               Length::kExact, [lim](ByteSpan p) {
                 return DecodeRegionReadRequest(p, lim).status();
               }});
  c.push_back({"REGION_WRITE request", Cat({U64(0), U32(7), U32(2), U8(1), U8(2)}),
               16, Length::kExact, [lim](ByteSpan p) {
                 return DecodeRegionWriteRequest(p, lim).status();
               }});
  c.push_back({"REGION_READ reply", Cat({U64(0), U32(7), U32(2), U8(1), U8(2)}), 16,
               Length::kExact,
               [](ByteSpan p) { return DecodeRegionReadReply(p, 2).status(); }});
  c.push_back({"REGION_WRITE reply", Cat({U64(0), U32(7), U32(2)}), 16,
               Length::kExact, StatusOf(DecodeRegionWriteReply)});
  for (DmaLayout layout : {DmaLayout::kSpec, DmaLayout::kQemuLegacy}) {
    const bool spec = layout == DmaLayout::kSpec;
    const std::string suffix = spec ? " (spec)" : " (QEMU legacy)";
    const Bytes header = spec ? Cat({U64(0x1000), U64(3)}) : Cat({U64(0x1000), U32(3)});
    c.push_back({"DMA_READ request" + suffix, header, header.size(), Length::kExact,
                 [lim, layout](ByteSpan p) {
                   return DecodeDmaReadRequest(p, lim, layout).status();
                 }});
    c.push_back({"DMA_WRITE request" + suffix, Cat({header, Bytes{1, 2, 3}}),
                 header.size(), Length::kExact, [lim, layout](ByteSpan p) {
                   return DecodeDmaWriteRequest(p, lim, layout).status();
                 }});
  }
  c.push_back({"DMA_READ reply", Cat({U64(0x1000), U64(4), Bytes{1, 2, 3, 4}}), 16,
               Length::kAtLeastFixed,
               [](ByteSpan p) { return DecodeDmaReadReply(p, 4).status(); }});
  c.push_back({"DEVICE_RESET", Bytes{}, 0, Length::kExact, DecodeEmptyPayload});
  c.push_back({"REGION_WRITE_MULTI",
               Cat({U64(1), U64(0x10), U32(0), U32(4), U64(0x04030201)}), 8,
               Length::kExact, [lim](ByteSpan p) {
                 return DecodeRegionWriteMulti(p, lim).status();
               }});
  c.push_back({"REGION_WRITE_MULTI reply", U64(1), 8, Length::kExact,
               StatusOf(DecodeRegionWriteMultiReply)});
  c.push_back({"DEVICE_FEATURE", Cat({U32(16), U32(0x20002), U32(1), U32(0)}), 8,
               Length::kAtLeastFixed, StatusOf(DecodeDeviceFeature)});
  c.push_back({"MIGRATION data", U64(1), 8, Length::kExact,
               StatusOf(DecodeMigrationFlags)});
  c.push_back({"MIG_DEVICE_STATE data", Cat({U32(2), U32(0)}), 8, Length::kExact,
               StatusOf(DecodeMigDeviceState)});
  c.push_back({"DMA_LOGGING_START data",
               Cat({U64(4096), U32(1), U32(0), U64(0), U64(0x2000)}), 16,
               Length::kExact, [lim](ByteSpan p) {
                 return DecodeDmaLoggingStart(p, lim).status();
               }});
  c.push_back({"DMA_LOGGING_REPORT request", Cat({U64(0), U64(0x2000), U64(4096)}),
               24, Length::kExact, StatusOf(DecodeDmaLoggingReportRequest)});
  c.push_back({"DMA_LOGGING_REPORT reply",
               Cat({U64(0), U64(0x2000), U64(4096), U64(3)}), 24, Length::kExact,
               [lim](ByteSpan p) {
                 return DecodeDmaLoggingReportReply(p, lim).status();
               }});
  c.push_back({"MIG_DATA_READ request", Cat({U32(16), U32(8)}), 8, Length::kExact,
               [lim](ByteSpan p) {
                 return DecodeMigDataReadRequest(p, lim).status();
               }});
  c.push_back({"MIG_DATA_READ reply", Cat({U32(10), U32(2), U8(1), U8(2)}), 8,
               Length::kExact,
               [](ByteSpan p) { return DecodeMigDataReadReply(p, 8).status(); }});
  c.push_back({"MIG_DATA_WRITE request", Cat({U32(10), U32(2), U8(1), U8(2)}), 8,
               Length::kExact, [lim](ByteSpan p) {
                 return DecodeMigDataWriteRequest(p, lim).status();
               }});
  return c;
}

TEST(MalformedTruncated, EveryDecoderAtEveryShortLength) {
  for (const DecoderCase& c : AllDecoders()) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(Err(c.decode(Span(c.valid))), 0) << "the valid sample must decode";
    const size_t fail_below =
        c.length == Length::kExact ? c.valid.size() : c.fixed_size;
    for (size_t n = 0; n < fail_below; ++n) {
      // A fresh heap copy of exactly n bytes, so ASan sees any over-read.
      const Bytes prefix(c.valid.begin(), c.valid.begin() + n);
      EXPECT_EQ(Err(c.decode(Span(prefix))), EINVAL) << "length " << n;
    }
    if (c.length == Length::kExact) {
      Bytes longer = c.valid;
      longer.push_back(0);
      EXPECT_EQ(Err(c.decode(Span(longer))), EINVAL) << "one trailing byte";
    }
  }
}

TEST(MalformedTruncated, DmaWriteReplyOnly0_12Or16Bytes) {
  const Bytes full = Cat({U64(0x1000), U64(4)});
  for (size_t n = 0; n <= 24; ++n) {
    Bytes p(full.begin(), full.begin() + std::min(n, full.size()));
    p.resize(n, 0);
    const int want = (n == 0 || n == 12 || n == 16) ? 0 : EINVAL;
    EXPECT_EQ(Err(DecodeDmaWriteReply(Span(p))), want) << n;
  }
}

TEST(MalformedTruncated, DmaReadReplyLengthMustMatchRequest) {
  const Bytes reply = Cat({U64(0x1000), U64(4), Bytes{1, 2, 3, 4}});
  EXPECT_EQ(Err(DecodeDmaReadReply(Span(reply), 4)), 0);
  EXPECT_EQ(Err(DecodeDmaReadReply(Span(reply), 5)), EINVAL);
  EXPECT_EQ(Err(DecodeDmaReadReply(Span(reply), 3)), EINVAL);
  EXPECT_EQ(Err(DecodeDmaReadReply(Span(reply), kMax64)), EINVAL);
  // Length says 4 data bytes but the count field claims 5: more than asked.
  const Bytes lying = Cat({U64(0x1000), U64(5), Bytes{1, 2, 3, 4}});
  EXPECT_EQ(Err(DecodeDmaReadReply(Span(lying), 4)), E2BIG);
  const Bytes short_count = Cat({U64(0x1000), U64(3), Bytes{1, 2, 3, 4}});
  EXPECT_EQ(Err(DecodeDmaReadReply(Span(short_count), 4)), EINVAL);
}

// ============================ Oversize counts (E2BIG) ============================

TEST(MalformedOversize, DataCountsAboveMaxDataXferSize) {
  const DecodeLimits lim = Limits(16, 65536);
  EXPECT_EQ(Err(DecodeRegionReadRequest(Span(Cat({U64(0), U32(0), U32(17)})), lim)),
            E2BIG);
  EXPECT_EQ(Err(DecodeRegionReadRequest(Span(Cat({U64(0), U32(0), U32(kMax32)})),
                                        DecodeLimits())),
            E2BIG);
  // Oversized count is reported as E2BIG even though the data is missing too.
  EXPECT_EQ(Err(DecodeRegionWriteRequest(Span(Cat({U64(0), U32(0), U32(17)})), lim)),
            E2BIG);
  EXPECT_EQ(Err(DecodeRegionWriteRequest(
                Span(Cat({U64(0), U32(0), U32(17), Bytes(17, 0)})), lim)),
            E2BIG);
  EXPECT_EQ(Err(DecodeRegionReadReply(Span(Cat({U64(0), U32(0), U32(5), Bytes(5, 0)})),
                                      4)),
            E2BIG);
  for (DmaLayout layout : {DmaLayout::kSpec, DmaLayout::kQemuLegacy}) {
    EXPECT_EQ(Err(DecodeDmaReadRequest(Span(EncodeDmaAccessHeader(0, 17, layout)),
                                       lim, layout)),
              E2BIG);
    EXPECT_EQ(Err(DecodeDmaWriteRequest(Span(EncodeDmaAccessHeader(0, 17, layout)),
                                        lim, layout)),
              E2BIG);
  }
  EXPECT_EQ(Err(DecodeDmaReadRequest(Span(Cat({U64(0), U64(kMax64)})), lim)), E2BIG);
  EXPECT_EQ(Err(DecodeMigDataReadRequest(Span(Cat({U32(100), U32(17)})), lim)), E2BIG);
  EXPECT_EQ(Err(DecodeMigDataWriteRequest(Span(Cat({U32(100), U32(17)})), lim)),
            E2BIG);
  EXPECT_EQ(Err(DecodeMigDataReadReply(Span(Cat({U32(12), U32(4), U32(0)})), 3)),
            E2BIG);
}

TEST(MalformedOversize, ArrayCountsAboveMaxArrayEntries) {
  const DecodeLimits lim = Limits(1 << 20, 2);
  // REGION_WRITE_MULTI wr_cnt.
  EXPECT_EQ(Err(DecodeRegionWriteMulti(Span(U64(3)), lim)), E2BIG);
  EXPECT_EQ(Err(DecodeRegionWriteMulti(Span(U64(kMax64)), DecodeLimits())), E2BIG);
  // GET_REGION_IO_FDS count.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(
                Span(Cat({U32(16 + 3 * 40), U32(0), U32(0), U32(3)})), lim)),
            E2BIG);
  // Sparse nr_areas.
  const Bytes sparse = Cat({U32(80), U32(0xC), U32(0), U32(32), U64(0x1000), U64(0),
                            U16(1), U16(1), U32(0), U32(3), U32(0),
                            U64(0), U64(1), U64(0), U64(1)});
  EXPECT_EQ(Err(DecodeRegionInfo(Span(sparse), lim)), E2BIG);
  // DMA logging ranges.
  EXPECT_EQ(Err(DecodeDmaLoggingStart(Span(Cat({U64(4096), U32(3), U32(0)})), lim)),
            E2BIG);
  // DMA logging bitmap larger than max_data_xfer_size: 8 words = 64 bytes.
  EXPECT_EQ(Err(DecodeDmaLoggingReportReply(
                Span(Cat({U64(0), U64(512 * 4096), U64(4096)})), Limits(63, 2))),
            E2BIG);
  EXPECT_EQ(Err(DecodeDmaLoggingReportReply(Span(Cat({U64(0), U64(kMax64 - 1), U64(1)})),
                                            DecodeLimits())),
            E2BIG);
}

// ============================ Wrapping arithmetic (ERANGE) ============================

TEST(MalformedWrap, RangesThatWrapU64) {
  EXPECT_EQ(Err(DecodeDmaMap(Span(Cat({U32(32), U32(3), U64(0), U64(kMax64), U64(2)})))),
            ERANGE);
  EXPECT_EQ(Err(DecodeDmaMap(Span(Cat({U32(32), U32(3), U64(kMax64 - 1), U64(0),
                                        U64(4)})))),
            ERANGE);
  EXPECT_EQ(Err(DecodeDmaUnmap(Span(Cat({U32(24), U32(0), U64(1), U64(kMax64)})))),
            ERANGE);
  EXPECT_EQ(Err(DecodeRegionReadRequest(Span(Cat({U64(kMax64 - 1), U32(0), U32(2)})),
                                        DecodeLimits())),
            ERANGE);
  EXPECT_EQ(Err(DecodeRegionWriteRequest(
                Span(Cat({U64(kMax64), U32(0), U32(1), U8(0)})), DecodeLimits())),
            ERANGE);
  EXPECT_EQ(Err(DecodeDmaReadRequest(Span(Cat({U64(kMax64 - 3), U64(4)})),
                                     DecodeLimits())),
            ERANGE);
  EXPECT_EQ(Err(DecodeDmaWriteRequest(Span(Cat({U64(kMax64), U32(1), U8(0)})),
                                      DecodeLimits(), DmaLayout::kQemuLegacy)),
            ERANGE);
  EXPECT_EQ(Err(DecodeRegionWriteMulti(
                Span(Cat({U64(1), U64(kMax64 - 2), U32(0), U32(4), U64(0)})),
                DecodeLimits())),
            ERANGE);
  EXPECT_EQ(Err(DecodeDmaLoggingStart(
                Span(Cat({U64(4096), U32(1), U32(0), U64(kMax64 - 4095), U64(8192)})),
                DecodeLimits())),
            ERANGE);
  EXPECT_EQ(Err(DecodeDmaLoggingReportRequest(
                Span(Cat({U64(kMax64 - 4095), U64(8192), U64(4096)})))),
            ERANGE);
  // Sparse area offset + size wraps.
  const Bytes sparse = Cat({U32(64), U32(0xC), U32(0), U32(32), U64(kMax64), U64(0),
                            U16(1), U16(1), U32(0), U32(1), U32(0),
                            U64(kMax64), U64(2)});
  EXPECT_EQ(Err(DecodeRegionInfo(Span(sparse))), ERANGE);
}

TEST(MalformedWrap, SetIrqsStartPlusCountWrapsU32) {
  const Bytes s = Cat({U32(20), U32(0x24), U32(2), U32(kMax32), U32(2)});
  EXPECT_EQ(Err(DecodeSetIrqs(Span(s))), ERANGE);
  const Bytes edge = Cat({U32(20), U32(0x24), U32(2), U32(kMax32 - 1), U32(1)});
  EXPECT_EQ(Err(DecodeSetIrqs(Span(edge))), 0);
}

// ============================ Flags ============================

TEST(MalformedFlags, DmaMap) {
  auto map = [](uint32_t flags, uint64_t size) {
    return Err(DecodeDmaMap(Span(Cat({U32(32), U32(flags), U64(0), U64(0), U64(size)}))));
  };
  EXPECT_EQ(map(0x10, 4096), EINVAL);
  EXPECT_EQ(map(0x80000000, 4096), EINVAL);
  EXPECT_EQ(map(kDmaMapFlagMmapLvu | kDmaMapFlagFileIoLvu, 4096), EINVAL);
  EXPECT_EQ(map(kDmaMapFlagRead, 0), EINVAL);  // size 0
  EXPECT_EQ(Err(DecodeDmaMap(Span(Cat({U32(31), U32(1), U64(0), U64(0), U64(1)})))),
            EINVAL);  // argsz < 32
}

TEST(MalformedFlags, DmaUnmap) {
  auto unmap = [](uint32_t flags, uint64_t address, uint64_t size) {
    return Err(DecodeDmaUnmap(Span(Cat({U32(24), U32(flags), U64(address), U64(size)}))));
  };
  EXPECT_EQ(unmap(0x4, 0, 4096), EINVAL);
  EXPECT_EQ(unmap(kDmaUnmapFlagAll | kDmaUnmapFlagGetDirtyBitmap, 0, 0), EINVAL);
  EXPECT_EQ(unmap(kDmaUnmapFlagAll, 0x1000, 0), EINVAL);
  EXPECT_EQ(unmap(kDmaUnmapFlagAll, 0, 0x1000), EINVAL);
  EXPECT_EQ(unmap(kDmaUnmapFlagAll | 0x8, 0, 0), EINVAL);
  EXPECT_EQ(unmap(kDmaUnmapFlagGetDirtyBitmap, 0x1000, 0x1000), ENOTSUP);
  EXPECT_EQ(unmap(kDmaUnmapFlagAll, 0, 0), 0);
  EXPECT_EQ(Err(DecodeDmaUnmap(Span(Cat({U32(23), U32(0), U64(0), U64(1)})))), EINVAL);
}

TEST(MalformedFlags, SetIrqsDataAndActionBits) {
  auto set = [](uint32_t flags) {
    return Err(DecodeSetIrqs(Span(Cat({U32(20), U32(flags), U32(0), U32(0), U32(1)}))));
  };
  EXPECT_EQ(set(kIrqSetActionTrigger), EINVAL);                   // no DATA bit
  EXPECT_EQ(set(kIrqSetDataNone), EINVAL);                        // no ACTION bit
  EXPECT_EQ(set(0), EINVAL);
  EXPECT_EQ(set(kIrqSetDataNone | kIrqSetDataEventfd | kIrqSetActionTrigger), EINVAL);
  EXPECT_EQ(set(kIrqSetDataNone | kIrqSetActionMask | kIrqSetActionUnmask), EINVAL);
  EXPECT_EQ(set(kIrqSetDataNone | kIrqSetActionTrigger | 0x40), EINVAL);  // unknown
  EXPECT_EQ(set(kIrqSetDataNone | kIrqSetActionTrigger | 0x80000000), EINVAL);
  EXPECT_EQ(set(kIrqSetDataNone | kIrqSetActionTrigger), 0);
}

TEST(MalformedFlags, DeviceFeature) {
  auto feature = [](uint32_t argsz, uint32_t flags) {
    return Err(DecodeDeviceFeature(Span(Cat({U32(argsz), U32(flags)}))));
  };
  EXPECT_EQ(feature(8, kDeviceFeatureGet | kDeviceFeatureSet | 1), EINVAL);
  EXPECT_EQ(feature(8, 0x80000 | kDeviceFeatureGet | 1), EINVAL);  // unknown op bit
  EXPECT_EQ(feature(8, 0x80000000 | kDeviceFeatureSet | 2), EINVAL);
  EXPECT_EQ(feature(8, 1), EINVAL);                                // no operation
  EXPECT_EQ(feature(7, kDeviceFeatureGet | 1), EINVAL);            // argsz < 8
  EXPECT_EQ(feature(8, kDeviceFeatureProbe | 1), 0);
}

TEST(MalformedFlags, RegionIoFdsRequestFieldsMustBeZero) {
  EXPECT_EQ(Err(DecodeRegionIoFdsRequest(Span(Cat({U32(16), U32(1), U32(0), U32(0)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionIoFdsRequest(Span(Cat({U32(16), U32(0), U32(0), U32(1)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionIoFdsRequest(Span(Cat({U32(15), U32(0), U32(0), U32(0)})))),
            EINVAL);
}

TEST(MalformedFlags, ArgszTooSmall) {
  EXPECT_EQ(Err(DecodeDeviceInfoRequest(Span(Cat({U32(15), U32(0), U32(0), U32(0)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeIrqInfoRequest(Span(Cat({U32(0), U32(0), U32(0), U32(0)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionInfoRequest(
                Span(Cat({U32(31), U32(0), U32(0), U32(0), U64(0), U64(0)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionInfo(
                Span(Cat({U32(16), U32(0), U32(0), U32(0), U64(0), U64(0)})))),
            EINVAL);
}

// ============================ SET_IRQS ============================

TEST(MalformedSetIrqs, BoolCountMismatch) {
  const uint32_t bool_mask = kIrqSetDataBool | kIrqSetActionMask;
  // count 3 with 2 bytes (argsz consistent with the payload).
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(22), U32(bool_mask), U32(0), U32(0),
                                         U32(3), U8(1), U8(1)})))),
            EINVAL);
  // count 1 with 2 bytes.
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(22), U32(bool_mask), U32(0), U32(0),
                                         U32(1), U8(1), U8(1)})))),
            EINVAL);
  // count huge with no bytes.
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(20), U32(bool_mask), U32(0), U32(0),
                                         U32(kMax32)})))),
            EINVAL);
}

TEST(MalformedSetIrqs, ArgszMustEqualPayloadSize) {
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(21), U32(0x24), U32(0), U32(0), U32(1)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(19), U32(0x24), U32(0), U32(0), U32(1)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(22), U32(0x22), U32(0), U32(0), U32(2),
                                         U8(1), U8(0)})))),
            0);
}

TEST(MalformedSetIrqs, DataOnlyWithBool) {
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(21), U32(0x24), U32(0), U32(0), U32(1),
                                         U8(1)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeSetIrqs(Span(Cat({U32(21), U32(0x21), U32(0), U32(0), U32(1),
                                         U8(1)})))),
            EINVAL);
}

TEST(MalformedSetIrqs, CountZeroOnlyForDisableAll) {
  auto zero = [](uint32_t flags, uint32_t start) {
    return Err(DecodeSetIrqs(Span(Cat({U32(20), U32(flags), U32(1), U32(start), U32(0)}))));
  };
  EXPECT_EQ(zero(kIrqSetDataNone | kIrqSetActionTrigger, 0), 0);
  EXPECT_EQ(zero(kIrqSetDataNone | kIrqSetActionTrigger, 1), EINVAL);
  EXPECT_EQ(zero(kIrqSetDataEventfd | kIrqSetActionTrigger, 0), EINVAL);
  EXPECT_EQ(zero(kIrqSetDataNone | kIrqSetActionMask, 0), EINVAL);
  EXPECT_EQ(zero(kIrqSetDataBool | kIrqSetActionTrigger, 0), EINVAL);
}

// ============================ Region-info capability chains ============================

// A 32-byte region-info header with CAPS set, followed by `chain`.
Bytes InfoWithChain(uint32_t cap_offset, const Bytes& chain, uint64_t size = 0x10000) {
  return Cat({U32(static_cast<uint32_t>(32 + chain.size())), U32(0xF), U32(0),
              U32(cap_offset), U64(size), U64(0), chain});
}

TEST(MalformedCapChain, SelfLoop) {
  const Bytes b = InfoWithChain(32, Cat({U16(3), U16(1), U32(32)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(b))), EINVAL);
}

TEST(MalformedCapChain, BackwardLoop) {
  // @32 unknown -> @40 unknown -> @32 again.
  const Bytes b = InfoWithChain(32, Cat({U16(9), U16(1), U32(40),
                                         U16(9), U16(1), U32(32)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(b))), EINVAL);
}

TEST(MalformedCapChain, NextInsidePreviousCapability) {
  // A type cap (16 bytes @32) whose next points to @40, inside its own body.
  const Bytes b = InfoWithChain(32, Cat({U16(2), U16(1), U32(40), U32(3), U32(4)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(b))), EINVAL);
}

TEST(MalformedCapChain, OffsetsOutOfBounds) {
  EXPECT_EQ(Err(DecodeRegionInfo(Span(InfoWithChain(48, Cat({U16(3), U16(1), U32(0)}))))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionInfo(Span(InfoWithChain(kMax32 & ~3u,
                                                    Cat({U16(3), U16(1), U32(0)}))))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionInfo(Span(InfoWithChain(32, Cat({U16(3), U16(1),
                                                             U32(0x1000)}))))),
            EINVAL);
  // Capability header cut short by argsz.
  EXPECT_EQ(Err(DecodeRegionInfo(Span(InfoWithChain(32, Cat({U16(3), U16(1)}))))),
            EINVAL);
}

TEST(MalformedCapChain, OffsetBelow32OrUnaligned) {
  for (uint32_t off : {4u, 16u, 28u}) {
    EXPECT_EQ(Err(DecodeRegionInfo(Span(InfoWithChain(off, Cat({U16(3), U16(1), U32(0)}))))),
              EINVAL)
        << off;
  }
  const Bytes unaligned = InfoWithChain(34, Cat({U16(0), U16(3), U16(1), U32(0), U16(0)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(unaligned))), EINVAL);
}

TEST(MalformedCapChain, CapsFlagWithZeroOffset) {
  const Bytes b = Cat({U32(32), U32(0xF), U32(0), U32(0), U64(0x1000), U64(0)});
  EXPECT_EQ(Err(DecodeRegionInfo(Span(b))), EINVAL);
}

TEST(MalformedCapChain, SparseNrAreasOverflow) {
  // nr_areas 0xFFFFFFFF within a generous limit: bounded by the payload.
  const Bytes huge = InfoWithChain(32, Cat({U16(1), U16(1), U32(0), U32(kMax32), U32(0),
                                            U64(0), U64(0x1000)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(huge), Limits(1 << 20, kMax64))), EINVAL);
  // With the default limit the count itself is too large.
  EXPECT_EQ(Err(DecodeRegionInfo(Span(huge))), E2BIG);
  // nr_areas 2 with only one area present.
  const Bytes one_short = InfoWithChain(32, Cat({U16(1), U16(1), U32(0), U32(2), U32(0),
                                                 U64(0), U64(0x1000)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(one_short))), EINVAL);
  // The sparse header itself cut short.
  EXPECT_EQ(Err(DecodeRegionInfo(Span(InfoWithChain(32, Cat({U16(1), U16(1), U32(0),
                                                             U32(1)}))))),
            EINVAL);
}

TEST(MalformedCapChain, SparseAreaOutsideRegion) {
  const Bytes b = InfoWithChain(32, Cat({U16(1), U16(1), U32(0), U32(1), U32(0),
                                         U64(0x8000), U64(0x8001)}),
                                /*size=*/0x10000);
  EXPECT_EQ(Err(DecodeRegionInfo(Span(b))), EINVAL);
  const Bytes edge = InfoWithChain(32, Cat({U16(1), U16(1), U32(0), U32(1), U32(0),
                                            U64(0x8000), U64(0x8000)}),
                                   /*size=*/0x10000);
  EXPECT_EQ(Err(DecodeRegionInfo(Span(edge))), 0);
}

TEST(MalformedCapChain, TypeCapCutShort) {
  const Bytes b = InfoWithChain(32, Cat({U16(2), U16(1), U32(0), U32(1)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(b))), EINVAL);
}

TEST(MalformedCapChain, DuplicateCapability) {
  const Bytes msix2 = InfoWithChain(32, Cat({U16(3), U16(1), U32(40),
                                             U16(3), U16(1), U32(0)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(msix2))), EINVAL);
  const Bytes type2 = InfoWithChain(32, Cat({U16(2), U16(1), U32(48), U32(1), U32(1),
                                             U16(2), U16(1), U32(0), U32(1), U32(1)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(type2))), EINVAL);
  const Bytes sparse2 = InfoWithChain(32, Cat({U16(1), U16(1), U32(48), U32(0), U32(0),
                                               U16(1), U16(1), U32(0), U32(0), U32(0)}));
  EXPECT_EQ(Err(DecodeRegionInfo(Span(sparse2))), EINVAL);
}

// ============================ GET_REGION_IO_FDS reply ============================

TEST(MalformedIoFds, StrideNot40Or48) {
  // 2 entries of 44 bytes.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(
                Span(Cat({U32(16 + 88), U32(0), U32(0), U32(2), Bytes(88, 0)})))),
            EINVAL);
  // argsz - 16 not a multiple of count.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(
                Span(Cat({U32(16 + 81), U32(0), U32(0), U32(2), Bytes(81, 0)})))),
            EINVAL);
  // count 0 but argsz announces an array.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(Span(Cat({U32(56), U32(0), U32(0), U32(0)})))),
            EINVAL);
  // Stride check applies to the truncated (16-byte) form too.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(Span(Cat({U32(16 + 50), U32(0), U32(0),
                                                  U32(1)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(Span(Cat({U32(15), U32(0), U32(0), U32(0)})))),
            EINVAL);
}

TEST(MalformedIoFds, PartialArray) {
  // argsz says 2 x 40 bytes but only one entry is present.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(
                Span(Cat({U32(96), U32(0), U32(0), U32(2), Bytes(40, 0)})))),
            EINVAL);
  // More bytes than argsz.
  EXPECT_EQ(Err(DecodeRegionIoFdsReply(
                Span(Cat({U32(56), U32(0), U32(0), U32(1), Bytes(48, 0)})))),
            EINVAL);
}

// ============================ REGION_WRITE_MULTI ============================

TEST(MalformedWriteMulti, CountsAndSizes) {
  const DecodeLimits lim;
  EXPECT_EQ(Err(DecodeRegionWriteMulti(Span(U64(0)), lim)), EINVAL);
  EXPECT_EQ(Err(DecodeRegionWriteMulti(
                Span(Cat({U64(1), U64(0), U32(0), U32(9), U64(0)})), lim)),
            EINVAL);  // entry count > 8
  EXPECT_EQ(Err(DecodeRegionWriteMulti(
                Span(Cat({U64(2), U64(0), U32(0), U32(1), U64(0)})), lim)),
            EINVAL);  // one entry short
  EXPECT_EQ(Err(DecodeRegionWriteMulti(
                Span(Cat({U64(1), U64(0), U32(0), U32(1), U64(0), U8(0)})), lim)),
            EINVAL);  // stray byte
  EXPECT_EQ(Err(DecodeRegionWriteMultiReply(Span(U32(1)))), EINVAL);
}

// ============================ VERSION ============================

TEST(MalformedVersion, MissingNul) {
  EXPECT_EQ(Err(DecodeVersion(Span(Cat({U16(0), U16(0), Str("{}")})))), EINVAL);
  EXPECT_EQ(Err(DecodeVersion(Span(Cat({U16(0), U16(0), Str("{")})))), EINVAL);
}

TEST(MalformedVersion, EmbeddedNul) {
  EXPECT_EQ(Err(DecodeVersion(Span(Cat({U16(0), U16(0), Str("{}"), U8(0), Str("x"),
                                         U8(0)})))),
            EINVAL);
  EXPECT_EQ(Err(DecodeVersion(Span(Cat({U16(0), U16(0), U8(0), U8(0)})))), EINVAL);
}

// ============================ DEVICE_FEATURE data, MIG_DATA ============================

TEST(MalformedFeatureData, MigrationAndDeviceState) {
  EXPECT_EQ(Err(DecodeMigrationFlags(Span(U32(1)))), EINVAL);
  EXPECT_EQ(Err(DecodeMigrationFlags(Span(Cat({U64(1), U8(0)})))), EINVAL);
  for (uint32_t state = 0; state <= 7; ++state) {
    EXPECT_EQ(Err(DecodeMigDeviceState(Span(Cat({U32(state), U32(0)})))), 0) << state;
  }
  EXPECT_EQ(Err(DecodeMigDeviceState(Span(Cat({U32(8), U32(0)})))), EINVAL);
  EXPECT_EQ(Err(DecodeMigDeviceState(Span(Cat({U32(kMax32), U32(0)})))), EINVAL);
  EXPECT_EQ(Err(DecodeMigDeviceState(Span(U32(1)))), EINVAL);
}

TEST(MalformedFeatureData, DmaLoggingStart) {
  const DecodeLimits lim;
  auto start = [&](uint64_t page_size, const Bytes& ranges, uint32_t n) {
    return Err(DecodeDmaLoggingStart(Span(Cat({U64(page_size), U32(n), U32(0), ranges})),
                                     lim));
  };
  const Bytes one = Cat({U64(0x1000), U64(0x1000)});
  EXPECT_EQ(start(4096, one, 1), 0);
  EXPECT_EQ(start(0, one, 1), EINVAL);                  // page size 0
  EXPECT_EQ(start(3000, one, 1), EINVAL);               // not a power of two
  EXPECT_EQ(start(4096, Cat({U64(0x800), U64(0x1000)}), 1), EINVAL);  // misaligned iova
  EXPECT_EQ(start(4096, Cat({U64(0x1000), U64(0x800)}), 1), EINVAL);  // misaligned length
  EXPECT_EQ(start(4096, Cat({U64(0x1000), U64(0)}), 1), EINVAL);      // empty range
  EXPECT_EQ(start(4096, one, 2), EINVAL);               // count > ranges present
  EXPECT_EQ(start(4096, one, 0), EINVAL);               // ranges beyond count
  EXPECT_EQ(start(4096, Bytes{}, kMax32), E2BIG);
}

TEST(MalformedFeatureData, DmaLoggingReport) {
  auto request = [](uint64_t iova, uint64_t length, uint64_t page_size) {
    return Err(DecodeDmaLoggingReportRequest(
        Span(Cat({U64(iova), U64(length), U64(page_size)}))));
  };
  EXPECT_EQ(request(0, 4096, 4096), 0);
  EXPECT_EQ(request(0, 4096, 0), EINVAL);
  EXPECT_EQ(request(0, 4096, 4097), EINVAL);
  EXPECT_EQ(request(0, 0, 4096), EINVAL);
  // Reply bitmap must be exactly ceil(pages / 64) words.
  const Bytes head = Cat({U64(0), U64(65 * 4096), U64(4096)});  // 2 words
  const DecodeLimits lim;
  EXPECT_EQ(Err(DecodeDmaLoggingReportReply(Span(Cat({head, U64(1), U64(1)})), lim)), 0);
  EXPECT_EQ(Err(DecodeDmaLoggingReportReply(Span(Cat({head, U64(1)})), lim)), EINVAL);
  EXPECT_EQ(Err(DecodeDmaLoggingReportReply(Span(Cat({head, U64(1), U64(1), U64(1)})),
                                            lim)),
            EINVAL);
  EXPECT_EQ(Err(DecodeDmaLoggingReportReply(Span(Cat({head, U64(1), U32(1)})), lim)),
            EINVAL);
}

TEST(MalformedMigData, ArgszAndSize) {
  const DecodeLimits lim;
  EXPECT_EQ(Err(DecodeMigDataReadRequest(Span(Cat({U32(8 + 15), U32(16)})), lim)),
            EINVAL);  // argsz cannot hold the data
  EXPECT_EQ(Err(DecodeMigDataReadRequest(Span(Cat({U32(kMax32), U32(16), U8(0)})), lim)),
            EINVAL);  // a read request carries no data
  EXPECT_EQ(Err(DecodeMigDataWriteRequest(Span(Cat({U32(9), U32(2), U8(1), U8(2)})),
                                          lim)),
            EINVAL);  // argsz < 8 + size
  EXPECT_EQ(Err(DecodeMigDataWriteRequest(Span(Cat({U32(10), U32(3), U8(1), U8(2)})),
                                          lim)),
            EINVAL);  // size > data present
  EXPECT_EQ(Err(DecodeMigDataReadReply(Span(Cat({U32(10), U32(1), U8(1), U8(2)})), 8)),
            EINVAL);  // size < data present
}

TEST(MalformedReset, PayloadRejected) {
  EXPECT_EQ(Err(DecodeEmptyPayload(Span(U8(0)))), EINVAL);
  EXPECT_EQ(Err(DecodeEmptyPayload(Span(Bytes(16, 0)))), EINVAL);
}

// ============================ Arbitrary bytes ============================

// A deterministic sweep of pseudo-random payloads through every decoder: no
// crash, and every failure carries a positive errno. (The libFuzzer target in
// tests/fuzz/ does this at scale.)
TEST(MalformedRandom, NeverCrashes) {
  uint64_t state = 0x9E3779B97F4A7C15;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const std::vector<DecoderCase> cases = AllDecoders();
  for (int iter = 0; iter < 4000; ++iter) {
    const DecoderCase& c = cases[next() % cases.size()];
    Bytes p = c.valid;
    if (p.empty() || next() % 4 == 0) p.resize(next() % 64);
    const int flips = 1 + static_cast<int>(next() % 4);
    for (int i = 0; i < flips && !p.empty(); ++i) {
      p[next() % p.size()] = static_cast<uint8_t>(next());
    }
    const absl::Status s = c.decode(Span(p));
    if (!s.ok()) {
      EXPECT_GT(ErrnoOf(s), 0) << c.name;
    }
  }
}

}  // namespace
}  // namespace vfio_user
