#include "core/codec.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/wire_buffer.h"

namespace vfio_user {
namespace {

// Fixed layout sizes from PROTOCOL.md §3 (payload bytes).
constexpr size_t kVersionFixedSize = 4;
constexpr size_t kDmaMapSize = 32;
constexpr size_t kDmaUnmapSize = 24;
constexpr size_t kDeviceInfoSize = 16;
constexpr size_t kRegionInfoSize = 32;
constexpr size_t kRegionIoFdsFixedSize = 16;
constexpr size_t kIrqInfoSize = 16;
constexpr size_t kSetIrqsFixedSize = 20;
constexpr size_t kRegionAccessHeaderSize = kRegionAccessHeaderBytes;
constexpr size_t kDmaAccessHeaderSizeSpec = 16;
constexpr size_t kDmaAccessHeaderSizeLegacy = 12;
constexpr size_t kWriteMultiFixedSize = 8;
constexpr size_t kWriteMultiEntrySize = 24;
constexpr size_t kWriteMultiMaxData = sizeof(WriteMultiEntry::data);
constexpr size_t kDeviceFeatureFixedSize = 8;
constexpr size_t kMigDataFixedSize = 8;
constexpr size_t kDmaLoggingStartFixedSize = 16;
constexpr size_t kDmaLoggingRangeSize = 16;
constexpr size_t kDmaLoggingReportFixedSize = 24;

// Region-info capability chain (PROTOCOL.md §5.2).
constexpr size_t kCapHeaderSize = 8;
constexpr size_t kSparseCapFixedSize = 16;
constexpr size_t kSparseAreaSize = 16;
constexpr size_t kTypeCapSize = 16;
constexpr size_t kMsixCapSize = kCapHeaderSize;
constexpr uint16_t kCapVersion = 1;

constexpr uint32_t kDmaMapKnownFlags = kDmaMapFlagRead | kDmaMapFlagWrite |
                                       kDmaMapFlagMmapLvu | kDmaMapFlagFileIoLvu;
constexpr uint32_t kDmaUnmapKnownFlags =
    kDmaUnmapFlagGetDirtyBitmap | kDmaUnmapFlagAll;
constexpr uint32_t kIrqSetKnownFlags = kIrqSetDataMask | kIrqSetActionMaskBits;
constexpr uint32_t kDeviceFeatureOps =
    kDeviceFeatureGet | kDeviceFeatureSet | kDeviceFeatureProbe;
constexpr uint32_t kMaxMigrationState =
    static_cast<uint32_t>(MigrationState::kPreCopyP2p);

// ---- Errors ----

absl::Status Invalid(absl::string_view what, absl::string_view detail) {
  return ErrnoError(EINVAL, absl::StrCat(what, ": ", detail));
}

absl::Status ShortPayload(absl::string_view what, size_t got, size_t need) {
  return ErrnoError(EINVAL, absl::StrCat(what, ": payload is ", got,
                                         " bytes, need at least ", need));
}

absl::Status WrongLength(absl::string_view what, size_t got, uint64_t want) {
  return ErrnoError(EINVAL, absl::StrCat(what, ": payload is ", got,
                                         " bytes, expected ", want));
}

absl::Status OverLimit(absl::string_view what, absl::string_view field,
                       uint64_t value, uint64_t limit) {
  return ErrnoError(E2BIG, absl::StrCat(what, ": ", field, " ", value,
                                        " exceeds limit ", limit));
}

absl::Status RangeWraps(absl::string_view what, uint64_t base, uint64_t length) {
  return ErrnoError(ERANGE, absl::StrCat(what, ": range [", base, ", +", length,
                                         ") wraps around 2^64"));
}

// True when base + length does not fit in u64 (an exclusive end of exactly
// 2^64 counts as wrapping, so callers may always compute base + length).
bool Wraps(uint64_t base, uint64_t length) {
  return length > std::numeric_limits<uint64_t>::max() - base;
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

uint32_t SaturateToU32(uint64_t v) {
  return static_cast<uint32_t>(
      std::min<uint64_t>(v, std::numeric_limits<uint32_t>::max()));
}

ByteSpan AsBytes(absl::string_view s) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// What follows a fixed header that carries a byte count.
enum class Trailer {
  kNone,          // nothing may follow the header
  kCountBytes,    // exactly `count` data bytes follow
};

// Checks `count` against `limit` (E2BIG) and the bytes left in `r` against
// `trailer` (EINVAL). On success *data holds the data bytes (empty for kNone).
absl::Status CheckCountAndTrailer(absl::string_view what, WireReader& r,
                                  uint64_t count, uint64_t limit,
                                  Trailer trailer, ByteSpan* data) {
  if (count > limit) return OverLimit(what, "count", count, limit);
  const uint64_t want = trailer == Trailer::kNone ? 0 : count;
  if (r.remaining() != want || !r.ReadBytes(want, data)) {
    return Invalid(what, absl::StrCat("payload is ", r.size(), " bytes, expected ",
                                      r.position(), " + ", want));
  }
  return absl::OkStatus();
}

// ---- Region / DMA access headers ----

void WriteRegionAccessHeader(WireWriter& w, uint64_t offset, uint32_t region,
                             uint32_t count) {
  w.Write(offset);
  w.Write(region);
  w.Write(count);
}

// The detailed error for a region access that DecodeRegionAccess's fast
// check rejected (kept out of line: the hot path only tests).
ABSL_ATTRIBUTE_NOINLINE absl::Status RegionAccessError(ByteSpan payload,
                                                       absl::string_view what,
                                                       uint64_t count_limit,
                                                       Trailer trailer) {
  WireReader r(payload);
  RegionAccess a;
  if (!(r.Read(&a.offset) && r.Read(&a.region) && r.Read(&a.count))) {
    return ShortPayload(what, payload.size(), kRegionAccessHeaderSize);
  }
  absl::Status s =
      CheckCountAndTrailer(what, r, a.count, count_limit, trailer, &a.data);
  if (!s.ok()) return s;
  if (Wraps(a.offset, a.count)) return RangeWraps(what, a.offset, a.count);
  return Invalid(what, "rejected");  // unreachable: the fast check passes
}

// Runs for every region access on both sides: fixed-layout loads and the
// checks, nothing else (little-endian loads by memcpy, as WireReader does).
absl::StatusOr<RegionAccess> DecodeRegionAccess(ByteSpan payload,
                                                absl::string_view what,
                                                uint64_t count_limit,
                                                Trailer trailer) {
  if (payload.size() >= kRegionAccessHeaderSize) {
    RegionAccess a;
    std::memcpy(&a.offset, payload.data(), sizeof(a.offset));
    std::memcpy(&a.region, payload.data() + 8, sizeof(a.region));
    std::memcpy(&a.count, payload.data() + 12, sizeof(a.count));
    const uint64_t trailing = payload.size() - kRegionAccessHeaderSize;
    const uint64_t want = trailer == Trailer::kNone ? 0 : a.count;
    if (a.count <= count_limit && trailing == want &&
        !Wraps(a.offset, a.count)) {
      a.data = payload.subspan(kRegionAccessHeaderSize);
      return a;
    }
  }
  return RegionAccessError(payload, what, count_limit, trailer);
}

void WriteDmaAccessHeader(WireWriter& w, uint64_t address, uint64_t count,
                          DmaLayout layout) {
  w.Write(address);
  if (layout == DmaLayout::kSpec) {
    w.Write(count);
  } else {
    w.Write(static_cast<uint32_t>(count));
  }
}

bool ReadDmaAccessHeader(WireReader& r, DmaLayout layout, DmaAccess* a) {
  if (!r.Read(&a->address)) return false;
  if (layout == DmaLayout::kSpec) return r.Read(&a->count);
  uint32_t count32;
  if (!r.Read(&count32)) return false;
  a->count = count32;
  return true;
}

absl::StatusOr<DmaAccess> DecodeDmaAccess(ByteSpan payload,
                                          absl::string_view what,
                                          DmaLayout layout, uint64_t count_limit,
                                          Trailer trailer) {
  WireReader r(payload);
  DmaAccess a;
  if (!ReadDmaAccessHeader(r, layout, &a)) {
    return ShortPayload(what, payload.size(), DmaAccessHeaderSize(layout));
  }
  absl::Status s =
      CheckCountAndTrailer(what, r, a.count, count_limit, trailer, &a.data);
  if (!s.ok()) return s;
  if (Wraps(a.address, a.count)) return RangeWraps(what, a.address, a.count);
  return a;
}

// ---- Region-info capability chain ----

// One capability of an encoded chain, in emission order.
struct CapLayout {
  uint16_t id;
  uint64_t size;
};

absl::InlinedVector<CapLayout, 3> LayOutCaps(const RegionInfo& r) {
  absl::InlinedVector<CapLayout, 3> caps;
  if (r.sparse_areas.has_value()) {
    caps.push_back({kRegionInfoCapSparseMmap,
                    kSparseCapFixedSize +
                        kSparseAreaSize * uint64_t{r.sparse_areas->size()}});
  }
  if (r.type_cap.has_value()) caps.push_back({kRegionInfoCapType, kTypeCapSize});
  if (r.msix_mappable) caps.push_back({kRegionInfoCapMsixMappable, kMsixCapSize});
  return caps;
}

void WriteCapBody(WireWriter& w, uint16_t id, const RegionInfo& r) {
  switch (id) {
    case kRegionInfoCapSparseMmap:
      w.Write(static_cast<uint32_t>(r.sparse_areas->size()));
      w.Write<uint32_t>(0);  // reserved
      for (const SparseMmapArea& area : *r.sparse_areas) {
        w.Write(area.offset);
        w.Write(area.size);
      }
      break;
    case kRegionInfoCapType:
      w.Write(r.type_cap->type);
      w.Write(r.type_cap->subtype);
      break;
    default:  // MSIX_MAPPABLE: header only
      break;
  }
}

constexpr char kRegionInfoWhat[] = "GET_REGION_INFO reply";

absl::Status DecodeSparseCap(WireReader& chain, const DecodeLimits& limits,
                             RegionInfo* info) {
  uint32_t nr_areas;
  uint32_t reserved;
  if (!(chain.Read(&nr_areas) && chain.Read(&reserved))) {
    return Invalid(kRegionInfoWhat, "sparse-mmap capability runs past argsz");
  }
  if (nr_areas > limits.max_array_entries) {
    return OverLimit(kRegionInfoWhat, "sparse nr_areas", nr_areas,
                     limits.max_array_entries);
  }
  if (uint64_t{nr_areas} * kSparseAreaSize > chain.remaining()) {
    return Invalid(kRegionInfoWhat,
                   absl::StrCat("sparse nr_areas ", nr_areas,
                                " runs past argsz"));
  }
  std::vector<SparseMmapArea> areas(nr_areas);
  for (SparseMmapArea& area : areas) {
    if (!(chain.Read(&area.offset) && chain.Read(&area.size))) {
      return Invalid(kRegionInfoWhat, "sparse area runs past argsz");
    }
    if (Wraps(area.offset, area.size)) {
      return RangeWraps(kRegionInfoWhat, area.offset, area.size);
    }
    if (area.offset + area.size > info->size) {
      return Invalid(kRegionInfoWhat,
                     absl::StrCat("sparse area [", area.offset, ", +",
                                  area.size, ") outside region of size ",
                                  info->size));
    }
  }
  info->sparse_areas = std::move(areas);
  return absl::OkStatus();
}

absl::Status DecodeCapChain(ByteSpan chain_bytes, uint32_t cap_offset,
                            const DecodeLimits& limits, RegionInfo* info) {
  WireReader chain(chain_bytes);
  uint64_t at = cap_offset;
  // The next capability must start at or after this position: past the fixed
  // structure, then past the previous capability. Offsets therefore strictly
  // increase and the walk ends within chain_bytes.size() / 8 steps.
  uint64_t earliest = kRegionInfoSize;
  while (at != 0) {
    if (at < earliest) {
      return Invalid(kRegionInfoWhat,
                     absl::StrCat("capability offset ", at,
                                  " overlaps or loops (must be >= ", earliest,
                                  ")"));
    }
    if (at % 4 != 0) {
      return Invalid(kRegionInfoWhat,
                     absl::StrCat("capability offset ", at, " is unaligned"));
    }
    uint16_t id;
    uint16_t version;
    uint32_t next;
    if (!(chain.Seek(at) && chain.Read(&id) && chain.Read(&version) &&
          chain.Read(&next))) {
      return Invalid(kRegionInfoWhat,
                     absl::StrCat("capability at ", at, " runs past argsz ",
                                  chain_bytes.size()));
    }
    absl::Status s;
    switch (id) {
      case kRegionInfoCapSparseMmap:
        if (info->sparse_areas.has_value()) {
          return Invalid(kRegionInfoWhat, "duplicate sparse-mmap capability");
        }
        s = DecodeSparseCap(chain, limits, info);
        break;
      case kRegionInfoCapType: {
        if (info->type_cap.has_value()) {
          return Invalid(kRegionInfoWhat, "duplicate type capability");
        }
        RegionInfo::TypeCap type;
        if (!(chain.Read(&type.type) && chain.Read(&type.subtype))) {
          return Invalid(kRegionInfoWhat, "type capability runs past argsz");
        }
        info->type_cap = type;
        break;
      }
      case kRegionInfoCapMsixMappable:
        if (info->msix_mappable) {
          return Invalid(kRegionInfoWhat, "duplicate msix-mappable capability");
        }
        info->msix_mappable = true;
        break;
      default:  // Unknown capability: only its header is understood; skip it.
        break;
    }
    if (!s.ok()) return s;
    earliest = chain.position();
    at = next;
  }
  return absl::OkStatus();
}

// ---- GET_REGION_IO_FDS entries ----

void WriteIoFdEntry(WireWriter& w, const IoFdEntry& e, bool lvu_layout) {
  w.Write(e.offset);
  w.Write(e.size);
  w.Write(e.fd_index);
  w.Write(e.type);
  w.Write(e.flags);
  if (lvu_layout) {
    w.Write(e.shadow_fd_index);
    w.Write(e.shadow_offset);
  } else {
    w.Write<uint32_t>(0);  // padding
  }
  w.Write(e.datamatch);
}

bool ReadIoFdEntry(WireReader& r, bool lvu_layout, IoFdEntry* e) {
  if (!(r.Read(&e->offset) && r.Read(&e->size) && r.Read(&e->fd_index) &&
        r.Read(&e->type) && r.Read(&e->flags))) {
    return false;
  }
  if (lvu_layout) {
    if (!(r.Read(&e->shadow_fd_index) && r.Read(&e->shadow_offset))) return false;
  } else {
    uint32_t padding;
    if (!r.Read(&padding)) return false;
  }
  return r.Read(&e->datamatch);
}

// ---- Fixed 16-byte {argsz, flags, a, b} structures ----

// DEVICE_GET_INFO and GET_IRQ_INFO share this shape. `min_argsz` is 0 for
// replies (argsz is not checked) and 16 for requests.
struct Quad {
  uint32_t argsz, flags, a, b;
};

absl::StatusOr<Quad> DecodeQuad(ByteSpan payload, absl::string_view what,
                                uint32_t min_argsz) {
  WireReader r(payload);
  Quad q;
  if (!(r.Read(&q.argsz) && r.Read(&q.flags) && r.Read(&q.a) && r.Read(&q.b))) {
    return ShortPayload(what, payload.size(), 16);
  }
  if (q.argsz < min_argsz) {
    return Invalid(what, absl::StrCat("argsz ", q.argsz, " < ", min_argsz));
  }
  return q;
}

Bytes EncodeQuad(uint32_t argsz, uint32_t flags, uint32_t a, uint32_t b) {
  Bytes out;
  out.reserve(16);
  WireWriter w(&out);
  w.Write(argsz);
  w.Write(flags);
  w.Write(a);
  w.Write(b);
  return out;
}

// ---- DMA logging ----

absl::Status CheckDmaLoggingRange(absl::string_view what, uint64_t iova,
                                  uint64_t length, uint64_t page_size) {
  if (length == 0) return Invalid(what, "range length is 0");
  if (Wraps(iova, length)) return RangeWraps(what, iova, length);
  if (iova % page_size != 0 || length % page_size != 0) {
    return Invalid(what, absl::StrCat("range [", iova, ", +", length,
                                      ") is not aligned to page_size ",
                                      page_size));
  }
  return absl::OkStatus();
}

absl::Status CheckPageSize(absl::string_view what, uint64_t page_size) {
  if (!IsPowerOfTwo(page_size)) {
    return Invalid(what, absl::StrCat("page_size ", page_size,
                                      " is not a power of two"));
  }
  return absl::OkStatus();
}

void WriteDmaLoggingReportHeader(WireWriter& w, const DmaLoggingReport& r) {
  w.Write(r.iova);
  w.Write(r.length);
  w.Write(r.page_size);
}

absl::StatusOr<DmaLoggingReport> ReadDmaLoggingReportHeader(
    WireReader& r, absl::string_view what) {
  DmaLoggingReport report;
  if (!(r.Read(&report.iova) && r.Read(&report.length) &&
        r.Read(&report.page_size))) {
    return ShortPayload(what, r.size(), kDmaLoggingReportFixedSize);
  }
  absl::Status s = CheckPageSize(what, report.page_size);
  if (!s.ok()) return s;
  if (report.length == 0) return Invalid(what, "length is 0");
  if (Wraps(report.iova, report.length)) {
    return RangeWraps(what, report.iova, report.length);
  }
  return report;
}

}  // namespace

// ---- VERSION ----

Bytes EncodeVersion(const VersionPayload& v) {
  Bytes out;
  out.reserve(kVersionFixedSize + v.json.size() + 1);
  WireWriter w(&out);
  w.Write(v.major);
  w.Write(v.minor);
  if (!v.json.empty()) {
    w.WriteBytes(AsBytes(v.json));
    w.Write<uint8_t>(0);
  }
  return out;
}

absl::StatusOr<VersionPayload> DecodeVersion(ByteSpan payload) {
  constexpr char kWhat[] = "VERSION";
  WireReader r(payload);
  VersionPayload v;
  if (!(r.Read(&v.major) && r.Read(&v.minor))) {
    return ShortPayload(kWhat, payload.size(), kVersionFixedSize);
  }
  ByteSpan json = r.Rest();
  if (json.empty()) return v;
  if (json.back() != 0) return Invalid(kWhat, "JSON is not NUL-terminated");
  json.remove_suffix(1);
  if (std::find(json.begin(), json.end(), 0) != json.end()) {
    return Invalid(kWhat, "JSON contains an embedded NUL");
  }
  v.json.assign(json.begin(), json.end());
  return v;
}

// ---- DMA_MAP ----

Bytes EncodeDmaMap(const DmaMapRequest& m) {
  Bytes out;
  out.reserve(kDmaMapSize);
  WireWriter w(&out);
  w.Write(m.argsz);
  w.Write(m.flags);
  w.Write(m.offset);
  w.Write(m.address);
  w.Write(m.size);
  return out;
}

absl::StatusOr<DmaMapRequest> DecodeDmaMap(ByteSpan payload) {
  constexpr char kWhat[] = "DMA_MAP";
  WireReader r(payload);
  DmaMapRequest m;
  if (!(r.Read(&m.argsz) && r.Read(&m.flags) && r.Read(&m.offset) &&
        r.Read(&m.address) && r.Read(&m.size))) {
    return ShortPayload(kWhat, payload.size(), kDmaMapSize);
  }
  if (m.argsz < kDmaMapSize) {
    return Invalid(kWhat, absl::StrCat("argsz ", m.argsz, " < 32"));
  }
  if ((m.flags & ~kDmaMapKnownFlags) != 0) {
    return Invalid(kWhat, absl::StrCat("unknown flags 0x", absl::Hex(m.flags)));
  }
  if ((m.flags & kDmaMapFlagMmapLvu) && (m.flags & kDmaMapFlagFileIoLvu)) {
    return Invalid(kWhat, "MMAP and FILE_IO are mutually exclusive");
  }
  if (m.size == 0) return Invalid(kWhat, "size is 0");
  if (Wraps(m.address, m.size)) return RangeWraps(kWhat, m.address, m.size);
  if (Wraps(m.offset, m.size)) return RangeWraps(kWhat, m.offset, m.size);
  return m;
}

// ---- DMA_UNMAP ----

Bytes EncodeDmaUnmap(const DmaUnmapRequest& u) {
  Bytes out;
  out.reserve(kDmaUnmapSize);
  WireWriter w(&out);
  w.Write(u.argsz);
  w.Write(u.flags);
  w.Write(u.address);
  w.Write(u.size);
  return out;
}

absl::StatusOr<DmaUnmapRequest> DecodeDmaUnmap(ByteSpan payload) {
  constexpr char kWhat[] = "DMA_UNMAP";
  WireReader r(payload);
  DmaUnmapRequest u;
  if (!(r.Read(&u.argsz) && r.Read(&u.flags) && r.Read(&u.address) &&
        r.Read(&u.size))) {
    return ShortPayload(kWhat, payload.size(), kDmaUnmapSize);
  }
  if (u.argsz < kDmaUnmapSize) {
    return Invalid(kWhat, absl::StrCat("argsz ", u.argsz, " < 24"));
  }
  if ((u.flags & ~kDmaUnmapKnownFlags) != 0) {
    return Invalid(kWhat, absl::StrCat("unknown flags 0x", absl::Hex(u.flags)));
  }
  if (u.flags & kDmaUnmapFlagAll) {
    if (u.flags != kDmaUnmapFlagAll) {
      return Invalid(kWhat, "ALL combined with other flags");
    }
    if (u.address != 0 || u.size != 0) {
      return Invalid(kWhat, "ALL requires address = size = 0");
    }
    return u;
  }
  if (u.flags & kDmaUnmapFlagGetDirtyBitmap) {
    return ErrnoError(ENOTSUP,
                      "DMA_UNMAP: GET_DIRTY_BITMAP (migration v1) is obsolete");
  }
  if (Wraps(u.address, u.size)) return RangeWraps(kWhat, u.address, u.size);
  return u;
}

// ---- DEVICE_GET_INFO ----

Bytes EncodeDeviceInfo(const DeviceInfo& d) {
  return EncodeQuad(d.argsz, d.flags, d.num_regions, d.num_irqs);
}

namespace {
absl::StatusOr<DeviceInfo> DecodeDeviceInfo(ByteSpan payload,
                                            absl::string_view what,
                                            uint32_t min_argsz) {
  absl::StatusOr<Quad> q = DecodeQuad(payload, what, min_argsz);
  if (!q.ok()) return q.status();
  DeviceInfo d;
  d.argsz = q->argsz;
  d.flags = q->flags;
  d.num_regions = q->a;
  d.num_irqs = q->b;
  return d;
}
}  // namespace

absl::StatusOr<DeviceInfo> DecodeDeviceInfoRequest(ByteSpan payload) {
  return DecodeDeviceInfo(payload, "DEVICE_GET_INFO", kDeviceInfoSize);
}

absl::StatusOr<DeviceInfo> DecodeDeviceInfoReply(ByteSpan payload) {
  return DecodeDeviceInfo(payload, "DEVICE_GET_INFO reply", 0);
}

// ---- DEVICE_GET_REGION_INFO ----

Bytes EncodeRegionInfoRequest(const RegionInfoRequest& q) {
  Bytes out;
  out.reserve(kRegionInfoSize);
  WireWriter w(&out);
  w.Write(q.argsz);
  w.Write<uint32_t>(0);  // flags
  w.Write(q.index);
  w.WriteZeros(kRegionInfoSize - w.written());  // cap_offset, size, offset
  return out;
}

absl::StatusOr<RegionInfoRequest> DecodeRegionInfoRequest(ByteSpan payload) {
  constexpr char kWhat[] = "GET_REGION_INFO";
  WireReader r(payload);
  RegionInfoRequest q;
  uint32_t flags;
  if (!(r.Read(&q.argsz) && r.Read(&flags) && r.Read(&q.index) &&
        r.Skip(kRegionInfoSize - r.position()))) {
    return ShortPayload(kWhat, payload.size(), kRegionInfoSize);
  }
  if (q.argsz < kRegionInfoSize) {
    return Invalid(kWhat, absl::StrCat("argsz ", q.argsz, " < 32"));
  }
  return q;
}

Bytes EncodeRegionInfo(const RegionInfo& r, uint32_t reply_argsz,
                       bool* caps_fit) {
  const absl::InlinedVector<CapLayout, 3> caps = LayOutCaps(r);
  uint64_t full_size = kRegionInfoSize;
  for (const CapLayout& cap : caps) full_size += cap.size;
  const bool fits = full_size <= reply_argsz;
  if (caps_fit != nullptr) *caps_fit = fits;
  const bool with_chain = fits && !caps.empty();

  Bytes out;
  out.reserve(with_chain ? full_size : kRegionInfoSize);
  WireWriter w(&out);
  w.Write(SaturateToU32(full_size));
  w.Write((r.flags & ~kRegionInfoFlagCaps) |
          (with_chain ? kRegionInfoFlagCaps : 0));
  w.Write(r.index);
  w.Write<uint32_t>(with_chain ? kRegionInfoSize : 0);  // cap_offset
  w.Write(r.size);
  w.Write(r.offset);
  if (!with_chain) return out;

  // full_size <= reply_argsz, so every offset below fits in u32.
  uint64_t at = kRegionInfoSize;
  for (size_t i = 0; i < caps.size(); ++i) {
    const uint64_t next = i + 1 < caps.size() ? at + caps[i].size : 0;
    w.Write(caps[i].id);
    w.Write(kCapVersion);
    w.Write(static_cast<uint32_t>(next));
    WriteCapBody(w, caps[i].id, r);
    at += caps[i].size;
  }
  return out;
}

absl::StatusOr<RegionInfo> DecodeRegionInfo(ByteSpan payload,
                                            const DecodeLimits& limits) {
  WireReader r(payload);
  RegionInfo info;
  if (!(r.Read(&info.argsz) && r.Read(&info.flags) && r.Read(&info.index) &&
        r.Read(&info.cap_offset) && r.Read(&info.size) &&
        r.Read(&info.offset))) {
    return ShortPayload(kRegionInfoWhat, payload.size(), kRegionInfoSize);
  }
  if (info.argsz < kRegionInfoSize) {
    return Invalid(kRegionInfoWhat, absl::StrCat("argsz ", info.argsz, " < 32"));
  }
  // A reply truncated to fit the requester's argsz carries no chain (lvu
  // clears CAPS; the kernel keeps CAPS with cap_offset 0): the caller asks
  // again with the argsz returned here.
  const bool truncated = info.argsz > payload.size();
  if (truncated || (info.flags & kRegionInfoFlagCaps) == 0) return info;
  if (info.cap_offset == 0) {
    return Invalid(kRegionInfoWhat, "CAPS set with cap_offset 0");
  }
  absl::Status s = DecodeCapChain(payload.first(info.argsz), info.cap_offset,
                                  limits, &info);
  if (!s.ok()) return s;
  return info;
}

// ---- DEVICE_GET_REGION_IO_FDS ----

Bytes EncodeRegionIoFdsRequest(const RegionIoFdsRequest& q) {
  return EncodeQuad(q.argsz, q.flags, q.index, q.count);
}

absl::StatusOr<RegionIoFdsRequest> DecodeRegionIoFdsRequest(ByteSpan payload) {
  constexpr char kWhat[] = "GET_REGION_IO_FDS";
  absl::StatusOr<Quad> q = DecodeQuad(payload, kWhat, kRegionIoFdsFixedSize);
  if (!q.ok()) return q.status();
  if (q->flags != 0) {
    return Invalid(kWhat, absl::StrCat("flags 0x", absl::Hex(q->flags), " != 0"));
  }
  if (q->b != 0) return Invalid(kWhat, absl::StrCat("count ", q->b, " != 0"));
  RegionIoFdsRequest req;
  req.argsz = q->argsz;
  req.flags = q->flags;
  req.index = q->a;
  req.count = q->b;
  return req;
}

Bytes EncodeRegionIoFdsReply(const RegionIoFdsReply& r, uint32_t reply_argsz,
                             uint32_t entry_size) {
  const bool lvu_layout = entry_size == kIoFdEntrySizeLvu;
  const uint64_t stride = lvu_layout ? kIoFdEntrySizeLvu : kIoFdEntrySizeSpec;
  const uint64_t full_size = kRegionIoFdsFixedSize + stride * r.entries.size();
  const bool fits = full_size <= reply_argsz;
  Bytes out;
  out.reserve(fits ? full_size : kRegionIoFdsFixedSize);
  WireWriter w(&out);
  w.Write(SaturateToU32(full_size));
  w.Write(r.flags);
  w.Write(r.index);
  w.Write(SaturateToU32(r.entries.size()));
  if (fits) {
    for (const IoFdEntry& e : r.entries) WriteIoFdEntry(w, e, lvu_layout);
  }
  return out;
}

absl::StatusOr<RegionIoFdsReply> DecodeRegionIoFdsReply(
    ByteSpan payload, const DecodeLimits& limits) {
  constexpr char kWhat[] = "GET_REGION_IO_FDS reply";
  WireReader r(payload);
  RegionIoFdsReply rep;
  if (!(r.Read(&rep.argsz) && r.Read(&rep.flags) && r.Read(&rep.index) &&
        r.Read(&rep.count))) {
    return ShortPayload(kWhat, payload.size(), kRegionIoFdsFixedSize);
  }
  if (rep.argsz < kRegionIoFdsFixedSize) {
    return Invalid(kWhat, absl::StrCat("argsz ", rep.argsz, " < 16"));
  }
  if (rep.count > limits.max_array_entries) {
    return OverLimit(kWhat, "count", rep.count, limits.max_array_entries);
  }
  // argsz = 16 + count * stride, whether or not the array was sent.
  const uint64_t array_size = rep.argsz - kRegionIoFdsFixedSize;
  uint64_t stride = 0;
  if (rep.count == 0) {
    if (array_size != 0) {
      return Invalid(kWhat, absl::StrCat("argsz ", rep.argsz, " with count 0"));
    }
  } else {
    stride = array_size / rep.count;
    if (array_size % rep.count != 0 ||
        (stride != kIoFdEntrySizeSpec && stride != kIoFdEntrySizeLvu)) {
      return Invalid(kWhat, absl::StrCat("argsz ", rep.argsz, " and count ",
                                         rep.count,
                                         " give no 40- or 48-byte stride"));
    }
  }
  if (r.remaining() == 0) return rep;  // array left out (argsz too small)
  if (r.remaining() != array_size) {
    return WrongLength(kWhat, payload.size(), rep.argsz);
  }
  rep.entries.resize(rep.count);
  for (IoFdEntry& e : rep.entries) {
    if (!ReadIoFdEntry(r, stride == kIoFdEntrySizeLvu, &e)) {
      return WrongLength(kWhat, payload.size(), rep.argsz);
    }
  }
  return rep;
}

// ---- DEVICE_GET_IRQ_INFO ----

Bytes EncodeIrqInfo(const IrqInfo& i) {
  return EncodeQuad(i.argsz, i.flags, i.index, i.count);
}

namespace {
absl::StatusOr<IrqInfo> DecodeIrqInfo(ByteSpan payload, absl::string_view what,
                                      uint32_t min_argsz) {
  absl::StatusOr<Quad> q = DecodeQuad(payload, what, min_argsz);
  if (!q.ok()) return q.status();
  IrqInfo i;
  i.argsz = q->argsz;
  i.flags = q->flags;
  i.index = q->a;
  i.count = q->b;
  return i;
}
}  // namespace

absl::StatusOr<IrqInfo> DecodeIrqInfoRequest(ByteSpan payload) {
  return DecodeIrqInfo(payload, "GET_IRQ_INFO", kIrqInfoSize);
}

absl::StatusOr<IrqInfo> DecodeIrqInfoReply(ByteSpan payload) {
  return DecodeIrqInfo(payload, "GET_IRQ_INFO reply", 0);
}

// ---- DEVICE_SET_IRQS ----

Bytes EncodeSetIrqs(const SetIrqs& s) {
  Bytes out;
  out.reserve(kSetIrqsFixedSize + s.bools.size());
  WireWriter w(&out);
  w.Write(static_cast<uint32_t>(kSetIrqsFixedSize + s.bools.size()));
  w.Write(s.flags);
  w.Write(s.index);
  w.Write(s.start);
  w.Write(s.count);
  w.WriteBytes(s.bools);
  return out;
}

absl::StatusOr<SetIrqs> DecodeSetIrqs(ByteSpan payload) {
  constexpr char kWhat[] = "SET_IRQS";
  WireReader r(payload);
  SetIrqs s;
  if (!(r.Read(&s.argsz) && r.Read(&s.flags) && r.Read(&s.index) &&
        r.Read(&s.start) && r.Read(&s.count))) {
    return ShortPayload(kWhat, payload.size(), kSetIrqsFixedSize);
  }
  if (s.argsz != payload.size()) {
    return Invalid(kWhat, absl::StrCat("argsz ", s.argsz, " != payload size ",
                                       payload.size()));
  }
  if ((s.flags & ~kIrqSetKnownFlags) != 0) {
    return Invalid(kWhat, absl::StrCat("unknown flags 0x", absl::Hex(s.flags)));
  }
  const uint32_t data = s.flags & kIrqSetDataMask;
  const uint32_t action = s.flags & kIrqSetActionMaskBits;
  if (!IsPowerOfTwo(data) || !IsPowerOfTwo(action)) {
    return Invalid(kWhat, absl::StrCat("flags 0x", absl::Hex(s.flags),
                                       " need exactly one DATA and one ACTION"));
  }
  if (s.count > std::numeric_limits<uint32_t>::max() - s.start) {
    return ErrnoError(ERANGE, absl::StrCat(kWhat, ": start ", s.start,
                                           " + count ", s.count, " wraps u32"));
  }
  if (s.count == 0 &&
      !(data == kIrqSetDataNone && action == kIrqSetActionTrigger &&
        s.start == 0)) {
    return Invalid(kWhat,
                   "count 0 is only valid as DATA_NONE|ACTION_TRIGGER, start 0");
  }
  const uint64_t data_size = data == kIrqSetDataBool ? s.count : 0;
  if (r.remaining() != data_size) {
    return WrongLength(kWhat, payload.size(), kSetIrqsFixedSize + data_size);
  }
  s.bools.assign(r.Rest().begin(), r.Rest().end());
  return s;
}

// ---- REGION_READ / REGION_WRITE ----

Bytes EncodeRegionAccessHeader(uint64_t offset, uint32_t region, uint32_t count) {
  Bytes out;
  out.reserve(kRegionAccessHeaderSize);
  WireWriter w(&out);
  WriteRegionAccessHeader(w, offset, region, count);
  return out;
}

Bytes EncodeRegionAccessWithData(uint64_t offset, uint32_t region,
                                 ByteSpan data) {
  Bytes out;
  out.reserve(kRegionAccessHeaderSize + data.size());
  WireWriter w(&out);
  WriteRegionAccessHeader(w, offset, region, static_cast<uint32_t>(data.size()));
  w.WriteBytes(data);
  return out;
}

void EncodeRegionAccessHeaderTo(uint64_t offset, uint32_t region,
                                uint32_t count, uint8_t* out) {
  // Every region access encodes this (both directions): three fixed stores
  // instead of a bounds-checked writer (the layout is the same as
  // WriteRegionAccessHeader's: host order, offset 0 / 8 / 12).
  std::memcpy(out, &offset, sizeof(offset));
  std::memcpy(out + 8, &region, sizeof(region));
  std::memcpy(out + 12, &count, sizeof(count));
}

absl::StatusOr<RegionAccess> DecodeRegionReadRequest(
    ByteSpan payload, const DecodeLimits& limits) {
  return DecodeRegionAccess(payload, "REGION_READ", limits.max_data_xfer_size,
                            Trailer::kNone);
}

absl::StatusOr<RegionAccess> DecodeRegionWriteRequest(
    ByteSpan payload, const DecodeLimits& limits) {
  return DecodeRegionAccess(payload, "REGION_WRITE", limits.max_data_xfer_size,
                            Trailer::kCountBytes);
}

absl::StatusOr<RegionAccess> DecodeRegionReadReply(ByteSpan payload,
                                                   uint32_t requested_count) {
  return DecodeRegionAccess(payload, "REGION_READ reply", requested_count,
                            Trailer::kCountBytes);
}

absl::StatusOr<RegionAccess> DecodeRegionWriteReply(ByteSpan payload) {
  return DecodeRegionAccess(payload, "REGION_WRITE reply",
                            std::numeric_limits<uint32_t>::max(),
                            Trailer::kNone);
}

// ---- DMA_READ / DMA_WRITE ----

size_t DmaAccessHeaderSize(DmaLayout layout) {
  return layout == DmaLayout::kSpec ? kDmaAccessHeaderSizeSpec
                                    : kDmaAccessHeaderSizeLegacy;
}

Bytes EncodeDmaAccessHeader(uint64_t address, uint64_t count, DmaLayout layout) {
  Bytes out;
  out.reserve(DmaAccessHeaderSize(layout));
  WireWriter w(&out);
  WriteDmaAccessHeader(w, address, count, layout);
  return out;
}

Bytes EncodeDmaAccessWithData(uint64_t address, ByteSpan data,
                              DmaLayout layout) {
  Bytes out;
  out.reserve(DmaAccessHeaderSize(layout) + data.size());
  WireWriter w(&out);
  WriteDmaAccessHeader(w, address, data.size(), layout);
  w.WriteBytes(data);
  return out;
}

void EncodeDmaAccessHeaderTo(uint64_t address, uint64_t count, DmaLayout layout,
                             uint8_t* out) {
  WireWriter w(absl::Span<uint8_t>(out, DmaAccessHeaderSize(layout)));
  WriteDmaAccessHeader(w, address, count, layout);
}

absl::StatusOr<DmaAccess> DecodeDmaReadRequest(ByteSpan payload,
                                               const DecodeLimits& limits,
                                               DmaLayout layout) {
  return DecodeDmaAccess(payload, "DMA_READ", layout, limits.max_data_xfer_size,
                         Trailer::kNone);
}

absl::StatusOr<DmaAccess> DecodeDmaWriteRequest(ByteSpan payload,
                                                const DecodeLimits& limits,
                                                DmaLayout layout) {
  return DecodeDmaAccess(payload, "DMA_WRITE", layout,
                         limits.max_data_xfer_size, Trailer::kCountBytes);
}

absl::StatusOr<DmaAccess> DecodeDmaReadReply(ByteSpan payload,
                                             uint64_t requested_count) {
  constexpr char kWhat[] = "DMA_READ reply";
  // The two layouts differ by 4 header bytes, so the length alone tells them
  // apart once the data size is known.
  auto holds = [&](DmaLayout layout) {
    const size_t header = DmaAccessHeaderSize(layout);
    return payload.size() >= header && payload.size() - header == requested_count;
  };
  DmaLayout layout;
  if (holds(DmaLayout::kSpec)) {
    layout = DmaLayout::kSpec;
  } else if (holds(DmaLayout::kQemuLegacy)) {
    layout = DmaLayout::kQemuLegacy;
  } else {
    return Invalid(kWhat, absl::StrCat("payload of ", payload.size(),
                                       " bytes does not hold a header and ",
                                       requested_count, " data bytes"));
  }
  return DecodeDmaAccess(payload, kWhat, layout, requested_count,
                         Trailer::kCountBytes);
}

absl::StatusOr<DmaAccess> DecodeDmaWriteReply(ByteSpan payload) {
  constexpr char kWhat[] = "DMA_WRITE reply";
  DmaAccess a;
  if (payload.empty()) return a;  // QEMU: header-only reply
  DmaLayout layout;
  if (payload.size() == kDmaAccessHeaderSizeSpec) {
    layout = DmaLayout::kSpec;
  } else if (payload.size() == kDmaAccessHeaderSizeLegacy) {
    layout = DmaLayout::kQemuLegacy;
  } else {
    return Invalid(kWhat, absl::StrCat("payload of ", payload.size(),
                                       " bytes (expected 0, 12 or 16)"));
  }
  WireReader r(payload);
  if (!ReadDmaAccessHeader(r, layout, &a)) {
    return ShortPayload(kWhat, payload.size(), DmaAccessHeaderSize(layout));
  }
  return a;
}

absl::Status CheckDmaWriteReply(ByteSpan payload, uint64_t address,
                                uint64_t count) {
  absl::StatusOr<DmaAccess> reply = DecodeDmaWriteReply(payload);
  if (!reply.ok()) return reply.status();
  if (!payload.empty() && (reply->address != address || reply->count != count)) {
    return ErrnoError(
        EPROTO, absl::StrCat("DMA_WRITE reply for 0x", absl::Hex(reply->address),
                             "+", reply->count, " answers a request for 0x",
                             absl::Hex(address), "+", count));
  }
  return absl::OkStatus();
}

// ---- DEVICE_RESET ----

absl::Status DecodeEmptyPayload(ByteSpan payload) {
  if (!payload.empty()) {
    return WrongLength("payload-less message", payload.size(), 0);
  }
  return absl::OkStatus();
}

// ---- REGION_WRITE_MULTI ----

Bytes EncodeRegionWriteMulti(absl::Span<const WriteMultiEntry> entries) {
  Bytes out;
  out.reserve(kWriteMultiFixedSize + kWriteMultiEntrySize * entries.size());
  WireWriter w(&out);
  w.Write(uint64_t{entries.size()});
  for (const WriteMultiEntry& e : entries) {
    w.Write(e.offset);
    w.Write(e.region);
    w.Write(e.count);
    w.WriteBytes(ByteSpan(e.data, sizeof(e.data)));
  }
  return out;
}

absl::StatusOr<std::vector<WriteMultiEntry>> DecodeRegionWriteMulti(
    ByteSpan payload, const DecodeLimits& limits) {
  constexpr char kWhat[] = "REGION_WRITE_MULTI";
  WireReader r(payload);
  uint64_t wr_cnt;
  if (!r.Read(&wr_cnt)) {
    return ShortPayload(kWhat, payload.size(), kWriteMultiFixedSize);
  }
  if (wr_cnt == 0) return Invalid(kWhat, "wr_cnt is 0");
  if (wr_cnt > limits.max_array_entries) {
    return OverLimit(kWhat, "wr_cnt", wr_cnt, limits.max_array_entries);
  }
  // wr_cnt <= max_array_entries keeps this product far from wrapping for any
  // sane limit; compare by division so that no limit can make it wrap.
  if (r.remaining() % kWriteMultiEntrySize != 0 ||
      r.remaining() / kWriteMultiEntrySize != wr_cnt) {
    return Invalid(kWhat, absl::StrCat("payload of ", payload.size(),
                                       " bytes does not hold ", wr_cnt,
                                       " 24-byte entries"));
  }
  std::vector<WriteMultiEntry> entries(static_cast<size_t>(wr_cnt));
  for (WriteMultiEntry& e : entries) {
    if (!(r.Read(&e.offset) && r.Read(&e.region) && r.Read(&e.count) &&
          r.CopyBytes(sizeof(e.data), e.data))) {
      return Invalid(kWhat, "entry runs past the payload");
    }
    if (e.count > kWriteMultiMaxData) {
      return Invalid(kWhat, absl::StrCat("entry count ", e.count, " > 8"));
    }
    if (Wraps(e.offset, e.count)) return RangeWraps(kWhat, e.offset, e.count);
  }
  return entries;
}

Bytes EncodeRegionWriteMultiReply(uint64_t completed) {
  Bytes out;
  out.reserve(sizeof(completed));
  WireWriter w(&out);
  w.Write(completed);
  return out;
}

absl::StatusOr<uint64_t> DecodeRegionWriteMultiReply(ByteSpan payload) {
  constexpr char kWhat[] = "REGION_WRITE_MULTI reply";
  WireReader r(payload);
  uint64_t completed;
  if (!r.Read(&completed) || r.remaining() != 0) {
    return WrongLength(kWhat, payload.size(), sizeof(completed));
  }
  return completed;
}

// ---- DEVICE_FEATURE ----

Bytes EncodeDeviceFeature(uint32_t argsz, uint32_t flags, ByteSpan data) {
  Bytes out;
  out.reserve(kDeviceFeatureFixedSize + data.size());
  WireWriter w(&out);
  w.Write(argsz);
  w.Write(flags);
  w.WriteBytes(data);
  return out;
}

absl::StatusOr<DeviceFeature> DecodeDeviceFeature(ByteSpan payload) {
  constexpr char kWhat[] = "DEVICE_FEATURE";
  WireReader r(payload);
  DeviceFeature f;
  if (!(r.Read(&f.argsz) && r.Read(&f.flags))) {
    return ShortPayload(kWhat, payload.size(), kDeviceFeatureFixedSize);
  }
  if (f.argsz < kDeviceFeatureFixedSize) {
    return Invalid(kWhat, absl::StrCat("argsz ", f.argsz, " < 8"));
  }
  if ((f.flags & ~(kDeviceFeatureMask | kDeviceFeatureOps)) != 0) {
    return Invalid(kWhat, absl::StrCat("unknown flags 0x", absl::Hex(f.flags)));
  }
  if ((f.flags & kDeviceFeatureOps) == 0) {
    return Invalid(kWhat, "none of GET, SET, PROBE");
  }
  const bool get = f.flags & kDeviceFeatureGet;
  const bool set = f.flags & kDeviceFeatureSet;
  if (get && set && !(f.flags & kDeviceFeatureProbe)) {
    return Invalid(kWhat, "GET and SET together without PROBE");
  }
  f.data = r.Rest();
  return f;
}

Bytes EncodeMigrationFlags(uint64_t flags) {
  Bytes out;
  out.reserve(sizeof(flags));
  WireWriter w(&out);
  w.Write(flags);
  return out;
}

absl::StatusOr<uint64_t> DecodeMigrationFlags(ByteSpan data) {
  WireReader r(data);
  uint64_t flags;
  if (!r.Read(&flags) || r.remaining() != 0) {
    return WrongLength("MIGRATION feature data", data.size(), sizeof(flags));
  }
  return flags;
}

Bytes EncodeMigDeviceState(const MigDeviceState& s) {
  Bytes out;
  out.reserve(8);
  WireWriter w(&out);
  w.Write(s.device_state);
  w.Write(s.data_fd);
  return out;
}

absl::StatusOr<MigDeviceState> DecodeMigDeviceState(ByteSpan data) {
  constexpr char kWhat[] = "MIG_DEVICE_STATE feature data";
  WireReader r(data);
  MigDeviceState s;
  if (!(r.Read(&s.device_state) && r.Read(&s.data_fd)) || r.remaining() != 0) {
    return WrongLength(kWhat, data.size(), 8);
  }
  if (s.device_state > kMaxMigrationState) {
    return Invalid(kWhat, absl::StrCat("device_state ", s.device_state, " > 7"));
  }
  return s;
}

Bytes EncodeDmaLoggingStart(const DmaLoggingStart& s) {
  Bytes out;
  out.reserve(kDmaLoggingStartFixedSize + kDmaLoggingRangeSize * s.ranges.size());
  WireWriter w(&out);
  w.Write(s.page_size);
  w.Write(static_cast<uint32_t>(s.ranges.size()));
  w.Write<uint32_t>(0);  // reserved
  for (const DmaLoggingRange& range : s.ranges) {
    w.Write(range.iova);
    w.Write(range.length);
  }
  return out;
}

absl::StatusOr<DmaLoggingStart> DecodeDmaLoggingStart(
    ByteSpan data, const DecodeLimits& limits) {
  constexpr char kWhat[] = "DMA_LOGGING_START feature data";
  WireReader r(data);
  DmaLoggingStart s;
  uint32_t num_ranges;
  uint32_t reserved;
  if (!(r.Read(&s.page_size) && r.Read(&num_ranges) && r.Read(&reserved))) {
    return ShortPayload(kWhat, data.size(), kDmaLoggingStartFixedSize);
  }
  absl::Status status = CheckPageSize(kWhat, s.page_size);
  if (!status.ok()) return status;
  if (num_ranges > limits.max_array_entries) {
    return OverLimit(kWhat, "num_ranges", num_ranges, limits.max_array_entries);
  }
  const uint64_t ranges_size = uint64_t{num_ranges} * kDmaLoggingRangeSize;
  if (r.remaining() != ranges_size) {
    return WrongLength(kWhat, data.size(), kDmaLoggingStartFixedSize + ranges_size);
  }
  s.ranges.resize(num_ranges);
  for (DmaLoggingRange& range : s.ranges) {
    if (!(r.Read(&range.iova) && r.Read(&range.length))) {
      return WrongLength(kWhat, data.size(),
                         kDmaLoggingStartFixedSize + ranges_size);
    }
    status = CheckDmaLoggingRange(kWhat, range.iova, range.length, s.page_size);
    if (!status.ok()) return status;
  }
  return s;
}

uint64_t DmaLoggingBitmapWords(uint64_t length, uint64_t page_size) {
  if (page_size == 0) return 0;
  const uint64_t pages = length / page_size + (length % page_size != 0 ? 1 : 0);
  return pages / 64 + (pages % 64 != 0 ? 1 : 0);
}

Bytes EncodeDmaLoggingReportRequest(const DmaLoggingReport& r) {
  Bytes out;
  out.reserve(kDmaLoggingReportFixedSize);
  WireWriter w(&out);
  WriteDmaLoggingReportHeader(w, r);
  return out;
}

Bytes EncodeDmaLoggingReportReply(const DmaLoggingReport& r) {
  Bytes out;
  out.reserve(kDmaLoggingReportFixedSize + sizeof(uint64_t) * r.bitmap.size());
  WireWriter w(&out);
  WriteDmaLoggingReportHeader(w, r);
  for (uint64_t word : r.bitmap) w.Write(word);
  return out;
}

absl::StatusOr<DmaLoggingReport> DecodeDmaLoggingReportRequest(ByteSpan data) {
  constexpr char kWhat[] = "DMA_LOGGING_REPORT feature data";
  WireReader r(data);
  absl::StatusOr<DmaLoggingReport> report = ReadDmaLoggingReportHeader(r, kWhat);
  if (!report.ok()) return report;
  if (r.remaining() != 0) {
    return WrongLength(kWhat, data.size(), kDmaLoggingReportFixedSize);
  }
  return report;
}

absl::StatusOr<DmaLoggingReport> DecodeDmaLoggingReportReply(
    ByteSpan data, const DecodeLimits& limits) {
  constexpr char kWhat[] = "DMA_LOGGING_REPORT reply data";
  WireReader r(data);
  absl::StatusOr<DmaLoggingReport> report = ReadDmaLoggingReportHeader(r, kWhat);
  if (!report.ok()) return report;
  const uint64_t words = DmaLoggingBitmapWords(report->length, report->page_size);
  // words <= 2^58, so the byte count below cannot wrap.
  const uint64_t bitmap_size = words * sizeof(uint64_t);
  if (bitmap_size > limits.max_data_xfer_size) {
    return OverLimit(kWhat, "bitmap size", bitmap_size,
                     limits.max_data_xfer_size);
  }
  if (r.remaining() != bitmap_size) {
    return WrongLength(kWhat, data.size(),
                       kDmaLoggingReportFixedSize + bitmap_size);
  }
  report->bitmap.resize(static_cast<size_t>(words));
  for (uint64_t& word : report->bitmap) {
    if (!r.Read(&word)) {
      return WrongLength(kWhat, data.size(),
                         kDmaLoggingReportFixedSize + bitmap_size);
    }
  }
  return report;
}

// ---- MIG_DATA_READ / MIG_DATA_WRITE ----

Bytes EncodeMigDataHeader(uint32_t argsz, uint32_t size) {
  Bytes out;
  out.reserve(kMigDataFixedSize);
  WireWriter w(&out);
  w.Write(argsz);
  w.Write(size);
  return out;
}

Bytes EncodeMigDataWithData(uint32_t argsz, ByteSpan data) {
  Bytes out;
  out.reserve(kMigDataFixedSize + data.size());
  WireWriter w(&out);
  w.Write(argsz);
  w.Write(static_cast<uint32_t>(data.size()));
  w.WriteBytes(data);
  return out;
}

namespace {
// Decodes {argsz, size} + (size bytes or nothing). With `argsz_covers_data`,
// argsz must be >= 8 + size (requests: argsz bounds the reply / request).
absl::StatusOr<MigData> DecodeMigData(ByteSpan payload, absl::string_view what,
                                      uint64_t size_limit, Trailer trailer,
                                      bool argsz_covers_data) {
  WireReader r(payload);
  MigData m;
  if (!(r.Read(&m.argsz) && r.Read(&m.size))) {
    return ShortPayload(what, payload.size(), kMigDataFixedSize);
  }
  absl::Status s =
      CheckCountAndTrailer(what, r, m.size, size_limit, trailer, &m.data);
  if (!s.ok()) return s;
  if (argsz_covers_data && m.argsz < kMigDataFixedSize + uint64_t{m.size}) {
    return Invalid(what, absl::StrCat("argsz ", m.argsz, " < 8 + size ", m.size));
  }
  return m;
}
}  // namespace

absl::StatusOr<MigData> DecodeMigDataReadRequest(ByteSpan payload,
                                                 const DecodeLimits& limits) {
  return DecodeMigData(payload, "MIG_DATA_READ", limits.max_data_xfer_size,
                       Trailer::kNone, /*argsz_covers_data=*/true);
}

absl::StatusOr<MigData> DecodeMigDataReadReply(ByteSpan payload,
                                               uint32_t requested_size) {
  return DecodeMigData(payload, "MIG_DATA_READ reply", requested_size,
                       Trailer::kCountBytes, /*argsz_covers_data=*/false);
}

absl::StatusOr<MigData> DecodeMigDataWriteRequest(ByteSpan payload,
                                                  const DecodeLimits& limits) {
  return DecodeMigData(payload, "MIG_DATA_WRITE", limits.max_data_xfer_size,
                       Trailer::kCountBytes, /*argsz_covers_data=*/true);
}

}  // namespace vfio_user
