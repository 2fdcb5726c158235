// Typed payloads for every vfio-user command, with encode and decode.
//
// One struct per payload layout in PROTOCOL.md §3 (offsets count from the end
// of the 16-byte header). Encode*() never fails: it writes exactly the layout.
// Decode*() trusts nothing: it checks the payload length before touching a
// field, checks every count, size and offset against the payload length and
// the negotiated limits, rejects arithmetic that would wrap u64, and returns
// an absl::Status carrying the errno to put in the error reply
// (core/errno_status.h): EINVAL for malformed input, E2BIG when a count
// exceeds max_data_xfer_size (or an array count exceeds max_array_entries, or
// a reply carries more than was requested), ERANGE for ranges that wrap u64
// (or u32 for SET_IRQS start + count).
//
// Decoded variable-length data (`data` spans) points INTO the payload that
// was decoded: the caller keeps that payload alive while using it. This keeps
// the hot path (REGION_READ/WRITE, DMA_READ/WRITE) free of copies.
//
// Thread-safety: all functions are pure.
#ifndef VFIO_USER_CORE_CODEC_H_
#define VFIO_USER_CORE_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/protocol.h"

namespace vfio_user {

using Bytes = std::vector<uint8_t>;
using ByteSpan = absl::Span<const uint8_t>;

// Limits a decoder enforces on what the peer sent (our own limits).
struct DecodeLimits {
  uint64_t max_data_xfer_size = kDefaultMaxDataXferSize;
  // Upper bound on array element counts not covered by max_data_xfer_size
  // (REGION_WRITE_MULTI entries, IO_FDS entries, sparse areas, DMA logging
  // ranges). The payload length is always checked as well.
  uint64_t max_array_entries = 65536;
};

// ---- VERSION (1): request and reply share this layout ----
struct VersionPayload {
  uint16_t major = kProtocolMajor;
  uint16_t minor = kProtocolMinor;
  std::string json;  // without the terminating NUL; empty = no JSON sent
};
// Appends the JSON followed by one NUL (none if json is empty).
Bytes EncodeVersion(const VersionPayload& v);
// Requires >= 4 bytes; when JSON is present it must end in NUL and contain no
// other NUL.
absl::StatusOr<VersionPayload> DecodeVersion(ByteSpan payload);

// ---- DMA_MAP (2): 32-byte request, no reply payload ----
struct DmaMapRequest {
  uint32_t argsz = 32;
  uint32_t flags = 0;    // kDmaMapFlag*
  uint64_t offset = 0;   // into the attached fd
  uint64_t address = 0;  // IOVA
  uint64_t size = 0;
};
Bytes EncodeDmaMap(const DmaMapRequest& r);
// Rejects: short payload, size == 0, address + size wrapping, offset + size
// wrapping, unknown flag bits (only READ|WRITE|lvu MMAP|FILE_IO allowed).
absl::StatusOr<DmaMapRequest> DecodeDmaMap(ByteSpan payload);

// ---- DMA_UNMAP (3): 24-byte request; the reply echoes it ----
struct DmaUnmapRequest {
  uint32_t argsz = 24;
  uint32_t flags = 0;  // kDmaUnmapFlagAll
  uint64_t address = 0;
  uint64_t size = 0;
};
Bytes EncodeDmaUnmap(const DmaUnmapRequest& r);
// Rejects: short payload, unknown flags, ALL with address/size != 0 or with
// other flags, GET_DIRTY_BITMAP (obsolete; ENOTSUP), wrapping ranges.
absl::StatusOr<DmaUnmapRequest> DecodeDmaUnmap(ByteSpan payload);

// ---- DEVICE_GET_INFO (4): request and reply are 16 bytes ----
struct DeviceInfo {
  uint32_t argsz = 16;
  uint32_t flags = 0;  // kDeviceFlags*
  uint32_t num_regions = 0;
  uint32_t num_irqs = 0;
};
Bytes EncodeDeviceInfo(const DeviceInfo& d);
absl::StatusOr<DeviceInfo> DecodeDeviceInfoRequest(ByteSpan payload);  // argsz >= 16
absl::StatusOr<DeviceInfo> DecodeDeviceInfoReply(ByteSpan payload);

// ---- DEVICE_GET_REGION_INFO (5) ----
struct RegionInfoRequest {
  uint32_t argsz = 32;  // largest reply payload accepted
  uint32_t index = 0;
};
Bytes EncodeRegionInfoRequest(const RegionInfoRequest& r);
absl::StatusOr<RegionInfoRequest> DecodeRegionInfoRequest(ByteSpan payload);  // argsz >= 32

struct SparseMmapArea {
  uint64_t offset = 0;  // relative to RegionInfo::offset
  uint64_t size = 0;
  bool operator==(const SparseMmapArea& o) const {
    return offset == o.offset && size == o.size;
  }
};

struct RegionInfo {
  uint32_t argsz = 32;  // in a decoded reply: the size the server says is needed
  uint32_t flags = 0;   // kRegionInfoFlag*; CAPS is computed by the encoder
  uint32_t index = 0;
  uint32_t cap_offset = 0;  // computed by the encoder
  uint64_t size = 0;
  uint64_t offset = 0;  // mmap offset in the region fd
  // Capabilities (emitted in this order when present):
  std::optional<std::vector<SparseMmapArea>> sparse_areas;  // id 1, version 1
  struct TypeCap {
    uint32_t type = 0;
    uint32_t subtype = 0;
  };
  std::optional<TypeCap> type_cap;  // id 2, version 1
  bool msix_mappable = false;       // id 3, version 1, header only
};
// Encodes the reply for a request that accepts `reply_argsz` payload bytes.
// The chain starts at offset 32 when any capability is present. If the full
// reply does not fit in reply_argsz, only the 32-byte structure is sent (no
// CAPS flag, cap_offset 0) with argsz = the full size, as lvu and the kernel
// do. `*caps_fit` (if non-null) reports whether the chain was included, which
// is when the region fd may be attached.
Bytes EncodeRegionInfo(const RegionInfo& r, uint32_t reply_argsz,
                       bool* caps_fit = nullptr);
// Decodes a reply, walking the capability chain with full validation:
// cap_offset/next >= 32, in bounds, 4-byte aligned, strictly increasing (no
// loops), sparse nr_areas bounded by the payload, areas not wrapping and
// inside [0, size). Unknown capability ids are skipped.
absl::StatusOr<RegionInfo> DecodeRegionInfo(ByteSpan payload,
                                            const DecodeLimits& limits = {});

// ---- DEVICE_GET_REGION_IO_FDS (6) ----
struct RegionIoFdsRequest {
  uint32_t argsz = 16;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;
};
Bytes EncodeRegionIoFdsRequest(const RegionIoFdsRequest& r);
absl::StatusOr<RegionIoFdsRequest> DecodeRegionIoFdsRequest(ByteSpan payload);

struct IoFdEntry {
  uint64_t offset = 0;
  uint64_t size = 0;
  uint32_t fd_index = 0;
  uint32_t type = kIoFdTypeIoeventfd;
  uint32_t flags = 0;
  uint32_t shadow_fd_index = 0;  // lvu 48-byte layout only
  uint64_t shadow_offset = 0;    // lvu 48-byte layout only
  uint64_t datamatch = 0;
};
struct RegionIoFdsReply {
  uint32_t argsz = 16;
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;  // total number of entries, even if not all sent
  std::vector<IoFdEntry> entries;
};
inline constexpr uint32_t kIoFdEntrySizeSpec = 40;
inline constexpr uint32_t kIoFdEntrySizeLvu = 48;
// Entries are written with `entry_size` (40 spec / 48 lvu); only as many as
// fit in reply_argsz are included (none if not all fit). argsz and count are
// computed from `entries` (r.argsz and r.count are ignored).
Bytes EncodeRegionIoFdsReply(const RegionIoFdsReply& r, uint32_t reply_argsz,
                             uint32_t entry_size = kIoFdEntrySizeSpec);
// Stride = (argsz - 16) / count; accepts 40 and 48. A 16-byte payload is the
// truncated form (count and argsz filled in, entries empty).
absl::StatusOr<RegionIoFdsReply> DecodeRegionIoFdsReply(
    ByteSpan payload, const DecodeLimits& limits = {});

// ---- DEVICE_GET_IRQ_INFO (7): request and reply are 16 bytes ----
struct IrqInfo {
  uint32_t argsz = 16;
  uint32_t flags = 0;  // kIrqInfo*
  uint32_t index = 0;
  uint32_t count = 0;
};
Bytes EncodeIrqInfo(const IrqInfo& i);
absl::StatusOr<IrqInfo> DecodeIrqInfoRequest(ByteSpan payload);  // argsz >= 16
absl::StatusOr<IrqInfo> DecodeIrqInfoReply(ByteSpan payload);

// ---- DEVICE_SET_IRQS (8) ----
struct SetIrqs {
  uint32_t argsz = 20;
  uint32_t flags = 0;  // exactly one kIrqSetData* and one kIrqSetAction*
  uint32_t index = 0;
  uint32_t start = 0;
  uint32_t count = 0;
  std::vector<uint8_t> bools;  // DATA_BOOL only: `count` bytes
};
// argsz is set to the payload size (20 + bools.size()).
Bytes EncodeSetIrqs(const SetIrqs& s);
// Rejects: short payload, not exactly one data and one action bit, unknown
// bits, start + count wrapping u32, DATA_BOOL without exactly `count` bytes,
// count == 0 other than the "disable all" form (DATA_NONE|ACTION_TRIGGER with
// start == 0). fd-count rules are checked by the device layer, which knows
// how many fds arrived.
absl::StatusOr<SetIrqs> DecodeSetIrqs(ByteSpan payload);

// ---- REGION_READ (9) / REGION_WRITE (10) ----
struct RegionAccess {
  uint64_t offset = 0;
  uint32_t region = 0;
  uint32_t count = 0;
  ByteSpan data;  // WRITE request / READ reply only; points into the payload
};
// Size of the access header (offset, region, count) that starts every
// REGION_READ/REGION_WRITE payload.
inline constexpr size_t kRegionAccessHeaderBytes = 16;
// Header-only forms (READ request, WRITE reply):
Bytes EncodeRegionAccessHeader(uint64_t offset, uint32_t region, uint32_t count);
// With data (WRITE request, READ reply); count = data.size().
Bytes EncodeRegionAccessWithData(uint64_t offset, uint32_t region, ByteSpan data);
// Writes the 16-byte access header into out[0..16) (for gather I/O).
void EncodeRegionAccessHeaderTo(uint64_t offset, uint32_t region, uint32_t count,
                                uint8_t* out);
// READ request: exactly 16 bytes; count <= max_data_xfer_size; offset + count
// must not wrap.
absl::StatusOr<RegionAccess> DecodeRegionReadRequest(ByteSpan payload,
                                                     const DecodeLimits& limits);
// WRITE request: 16 + count bytes exactly; count <= max_data_xfer_size.
absl::StatusOr<RegionAccess> DecodeRegionWriteRequest(ByteSpan payload,
                                                      const DecodeLimits& limits);
// READ reply: 16 + count bytes, count <= requested_count.
absl::StatusOr<RegionAccess> DecodeRegionReadReply(ByteSpan payload,
                                                   uint32_t requested_count);
// WRITE reply: 16 bytes.
absl::StatusOr<RegionAccess> DecodeRegionWriteReply(ByteSpan payload);

// ---- DMA_READ (11) / DMA_WRITE (12), server -> client ----
// Spec/lvu layout: address u64, count u64, data @16. The stored QEMU client
// uses the 2020 draft layout: address u64, count u32, data @12, and answers
// DMA_WRITE with a header-only reply (PROTOCOL.md §3.10).
enum class DmaLayout { kSpec, kQemuLegacy };
struct DmaAccess {
  uint64_t address = 0;
  uint64_t count = 0;
  ByteSpan data;  // DMA_WRITE request / DMA_READ reply; points into the payload
};
Bytes EncodeDmaAccessHeader(uint64_t address, uint64_t count,
                            DmaLayout layout = DmaLayout::kSpec);
Bytes EncodeDmaAccessWithData(uint64_t address, ByteSpan data,
                              DmaLayout layout = DmaLayout::kSpec);
// Size of the fixed part: 16 (spec) or 12 (QEMU legacy).
size_t DmaAccessHeaderSize(DmaLayout layout);
void EncodeDmaAccessHeaderTo(uint64_t address, uint64_t count, DmaLayout layout,
                             uint8_t* out);
absl::StatusOr<DmaAccess> DecodeDmaReadRequest(ByteSpan payload,
                                               const DecodeLimits& limits,
                                               DmaLayout layout = DmaLayout::kSpec);
absl::StatusOr<DmaAccess> DecodeDmaWriteRequest(ByteSpan payload,
                                                const DecodeLimits& limits,
                                                DmaLayout layout = DmaLayout::kSpec);
// DMA_READ reply: header + exactly requested_count bytes. Accepts either
// layout when the payload length identifies it unambiguously.
absl::StatusOr<DmaAccess> DecodeDmaReadReply(ByteSpan payload,
                                             uint64_t requested_count);
// DMA_WRITE reply: 16 bytes (spec/lvu), 12 bytes, or empty (QEMU).
absl::StatusOr<DmaAccess> DecodeDmaWriteReply(ByteSpan payload);
// Checks the DMA_WRITE reply to a request for [address, +count): decodes it
// and, unless it is QEMU's empty reply, requires the echoed address and
// count to be the request's (EPROTO otherwise).
absl::Status CheckDmaWriteReply(ByteSpan payload, uint64_t address,
                                uint64_t count);

// ---- DEVICE_RESET (13): no payload either way ----
// A reset request with a payload is rejected (EINVAL).
absl::Status DecodeEmptyPayload(ByteSpan payload);

// ---- REGION_WRITE_MULTI (15) ----
struct WriteMultiEntry {
  uint64_t offset = 0;
  uint32_t region = 0;
  uint32_t count = 0;  // <= 8
  uint8_t data[8] = {};
};
Bytes EncodeRegionWriteMulti(absl::Span<const WriteMultiEntry> entries);
// Rejects: wr_cnt == 0, wr_cnt > max_array_entries, payload != 8 + 24*wr_cnt,
// any entry count > 8 or offset+count wrapping.
absl::StatusOr<std::vector<WriteMultiEntry>> DecodeRegionWriteMulti(
    ByteSpan payload, const DecodeLimits& limits);
Bytes EncodeRegionWriteMultiReply(uint64_t completed);
absl::StatusOr<uint64_t> DecodeRegionWriteMultiReply(ByteSpan payload);

// ---- DEVICE_FEATURE (16) ----
struct DeviceFeature {
  uint32_t argsz = 8;
  uint32_t flags = 0;  // feature index | GET/SET/PROBE
  ByteSpan data;       // feature-specific; points into the payload
  uint32_t feature() const { return flags & kDeviceFeatureMask; }
};
Bytes EncodeDeviceFeature(uint32_t argsz, uint32_t flags, ByteSpan data);
// Rejects: short payload, unknown op bits, GET and SET together.
absl::StatusOr<DeviceFeature> DecodeDeviceFeature(ByteSpan payload);

// Feature-specific data blocks.
Bytes EncodeMigrationFlags(uint64_t flags);                 // MIGRATION GET reply data
absl::StatusOr<uint64_t> DecodeMigrationFlags(ByteSpan data);
struct MigDeviceState {
  uint32_t device_state = static_cast<uint32_t>(MigrationState::kRunning);
  uint32_t data_fd = 0;  // unused in vfio-user
};
Bytes EncodeMigDeviceState(const MigDeviceState& s);
absl::StatusOr<MigDeviceState> DecodeMigDeviceState(ByteSpan data);  // state <= 7
struct DmaLoggingRange {
  uint64_t iova = 0;
  uint64_t length = 0;
};
struct DmaLoggingStart {
  uint64_t page_size = 4096;
  std::vector<DmaLoggingRange> ranges;  // empty = log everything
};
Bytes EncodeDmaLoggingStart(const DmaLoggingStart& s);
absl::StatusOr<DmaLoggingStart> DecodeDmaLoggingStart(ByteSpan data,
                                                      const DecodeLimits& limits);
struct DmaLoggingReport {
  uint64_t iova = 0;
  uint64_t length = 0;
  uint64_t page_size = 4096;  // power of two
  std::vector<uint64_t> bitmap;  // reply only
};
Bytes EncodeDmaLoggingReportRequest(const DmaLoggingReport& r);
Bytes EncodeDmaLoggingReportReply(const DmaLoggingReport& r);
absl::StatusOr<DmaLoggingReport> DecodeDmaLoggingReportRequest(ByteSpan data);
// Number of u64 bitmap words for a report of `length` bytes at `page_size`:
// ceil(ceil(length / page_size) / 64). Returns 0 for page_size 0.
uint64_t DmaLoggingBitmapWords(uint64_t length, uint64_t page_size);
// The bitmap must hold ceil(length / page_size) bits, rounded up to u64 words.
absl::StatusOr<DmaLoggingReport> DecodeDmaLoggingReportReply(
    ByteSpan data, const DecodeLimits& limits);

// ---- MIG_DATA_READ (17) / MIG_DATA_WRITE (18) ----
struct MigData {
  uint32_t argsz = 8;
  uint32_t size = 0;
  ByteSpan data;  // READ reply / WRITE request; points into the payload
};
Bytes EncodeMigDataHeader(uint32_t argsz, uint32_t size);  // READ request
Bytes EncodeMigDataWithData(uint32_t argsz, ByteSpan data);
// READ request: 8 bytes, size <= max_data_xfer_size, argsz >= 8 + size.
absl::StatusOr<MigData> DecodeMigDataReadRequest(ByteSpan payload,
                                                 const DecodeLimits& limits);
// READ reply: 8 + size bytes, size <= requested.
absl::StatusOr<MigData> DecodeMigDataReadReply(ByteSpan payload,
                                               uint32_t requested_size);
// WRITE request: 8 + size bytes, size <= max_data_xfer_size.
absl::StatusOr<MigData> DecodeMigDataWriteRequest(ByteSpan payload,
                                                  const DecodeLimits& limits);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_CODEC_H_
