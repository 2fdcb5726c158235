// Golden byte vectors for every vfio-user payload, written by hand from the
// PROTOCOL.md §3 tables (each field is listed with its offset and size), and
// encode/decode round trips. Malformed input lives in codec_malformed_test.cc.
#include "core/codec.h"

#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "core/errno_status.h"
#include "core/message.h"
#include "core/protocol.h"

namespace vfio_user {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "golden vectors are written for a little-endian host");

// Little-endian field builders, independent of the codec's own writer: each
// produces the bytes of one table row.
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
Bytes ToBytes(ByteSpan s) { return Bytes(s.begin(), s.end()); }

const DecodeLimits kLimits;

// ============================ Header (§1) ============================

TEST(HeaderGolden, EncodeCommand) {
  Header h;
  h.msg_id = 0x1234;
  h.cmd = static_cast<uint16_t>(Command::kDmaMap);
  h.msg_size = 48;
  h.flags = kFlagsTypeCommand | kFlagsNoReply;
  uint8_t out[kHeaderSize];
  EncodeHeader(h, out);
  EXPECT_THAT(out, ElementsAre(0x34, 0x12,              // @0 msg_id
                               0x02, 0x00,              // @2 cmd = DMA_MAP
                               0x30, 0x00, 0x00, 0x00,  // @4 msg_size = 48
                               0x10, 0x00, 0x00, 0x00,  // @8 flags = No_reply
                               0x00, 0x00, 0x00, 0x00   // @12 error
                               ));
}

TEST(HeaderGolden, DecodeErrorReply) {
  const Bytes wire = {0x07, 0x00,              // msg_id 7
                      0x0d, 0x00,              // cmd 13 DEVICE_RESET
                      0x10, 0x00, 0x00, 0x00,  // msg_size 16
                      0x21, 0x00, 0x00, 0x00,  // Type=reply | Error
                      0x10, 0x00, 0x00, 0x00}; // error = 16 (EBUSY)
  absl::StatusOr<Header> h = DecodeHeader(Span(wire), 4096);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->msg_id, 7);
  EXPECT_EQ(h->cmd, 13);
  EXPECT_EQ(h->msg_size, 16u);
  EXPECT_TRUE(h->is_reply());
  EXPECT_TRUE(h->is_error());
  EXPECT_FALSE(h->no_reply());
  EXPECT_EQ(h->error, static_cast<uint32_t>(EBUSY));
}

TEST(HeaderGolden, ErrorReplyWithPayloadIsTolerated) {
  // lvu sometimes attaches a payload to an error reply (PROTOCOL.md §1).
  const Bytes wire = Cat({U16(9), U16(3), U32(40), U32(0x21), U32(EINVAL)});
  absl::StatusOr<Header> h = DecodeHeader(Span(wire), 4096);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->msg_size, 40u);
  EXPECT_TRUE(h->is_error());
}

TEST(HeaderGolden, UnknownCommandAndReservedBitsAreNotFramingErrors) {
  const Bytes wire = Cat({U16(1), U16(14), U32(16), U32(0xFFFF0000), U32(0)});
  absl::StatusOr<Header> h = DecodeHeader(Span(wire), 4096);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->cmd, 14);
  EXPECT_FALSE(IsKnownCommand(h->cmd));
}

TEST(HeaderGolden, MakeReplyAndErrorReply) {
  Header request;
  request.msg_id = 0xBEEF;
  request.cmd = static_cast<uint16_t>(Command::kDeviceGetInfo);
  request.msg_size = 32;
  request.flags = kFlagsTypeCommand;

  Message reply = MakeReply(request, EncodeDeviceInfo({16, 3, 9, 5}));
  uint8_t out[kHeaderSize];
  EncodeHeader(reply.header, out);
  EXPECT_THAT(out, ElementsAreArray(Cat({U16(0xBEEF), U16(4), U32(32),
                                         U32(kFlagsTypeReply), U32(0)})));
  EXPECT_EQ(reply.payload.size(), 16u);

  Message err = MakeErrorReply(request, ENOENT);
  EncodeHeader(err.header, out);
  EXPECT_THAT(out, ElementsAreArray(Cat({U16(0xBEEF), U16(4), U32(16),
                                         U32(kFlagsTypeReply | kFlagsError),
                                         U32(ENOENT)})));
  EXPECT_TRUE(err.payload.empty());

  // A non-positive errno still yields a valid error reply (EINVAL).
  EXPECT_EQ(MakeErrorReply(request, 0).header.error,
            static_cast<uint32_t>(EINVAL));
}

TEST(HeaderGolden, RoundTrip) {
  for (uint32_t flags : {0x0u, 0x1u, 0x10u, 0x21u, 0x31u}) {
    Header h;
    h.msg_id = 0xFFFF;
    h.cmd = 18;
    h.msg_size = 0x12345;
    h.flags = flags;
    h.error = flags & kFlagsError ? 5 : 0;
    uint8_t out[kHeaderSize];
    EncodeHeader(h, out);
    absl::StatusOr<Header> d = DecodeHeader(ByteSpan(out, sizeof(out)), 1 << 20);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->msg_id, h.msg_id);
    EXPECT_EQ(d->cmd, h.cmd);
    EXPECT_EQ(d->msg_size, h.msg_size);
    EXPECT_EQ(d->flags, h.flags);
    EXPECT_EQ(d->error, h.error);
  }
}

// ============================ VERSION (§3.1) ============================

TEST(VersionGolden, RequestWithJson) {
  const std::string json = R"({"capabilities":{"max_msg_fds":8}})";
  const Bytes wire = Cat({U16(0),       // @0 major
                          U16(0),       // @2 minor (QEMU)
                          Str(json),    // @4 JSON
                          U8(0)});      // terminating NUL
  VersionPayload v;
  v.major = 0;
  v.minor = 0;
  v.json = json;
  EXPECT_EQ(EncodeVersion(v), wire);
  absl::StatusOr<VersionPayload> d = DecodeVersion(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->major, 0);
  EXPECT_EQ(d->minor, 0);
  EXPECT_EQ(d->json, json);
}

TEST(VersionGolden, ReplyWithJson) {
  const std::string json = R"({"capabilities":{}})";
  const Bytes wire = Cat({U16(0), U16(2), Str(json), U8(0)});
  VersionPayload v;  // defaults: 0.2
  v.json = json;
  EXPECT_EQ(EncodeVersion(v), wire);
  absl::StatusOr<VersionPayload> d = DecodeVersion(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->minor, 2);
  EXPECT_EQ(d->json, json);
}

TEST(VersionGolden, WithoutJson) {
  const Bytes wire = Cat({U16(1), U16(7)});
  VersionPayload v;
  v.major = 1;
  v.minor = 7;
  EXPECT_EQ(EncodeVersion(v), wire);
  absl::StatusOr<VersionPayload> d = DecodeVersion(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->major, 1);
  EXPECT_EQ(d->minor, 7);
  EXPECT_TRUE(d->json.empty());
}

TEST(VersionGolden, LoneNulIsEmptyJson) {
  absl::StatusOr<VersionPayload> d = DecodeVersion(Span(Cat({U16(0), U16(0), U8(0)})));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->json.empty());
}

// ============================ DMA_MAP (§3.2) ============================

TEST(DmaMapGolden, Request) {
  const Bytes wire = Cat({U32(32),                  // @0 argsz
                          U32(0x3),                 // @4 flags READ|WRITE
                          U64(0x2000),              // @8 offset into fd
                          U64(0x100000000),         // @16 address
                          U64(0x40000000)});        // @24 size
  ASSERT_EQ(wire.size(), 32u);
  DmaMapRequest m;
  m.flags = kDmaMapFlagRead | kDmaMapFlagWrite;
  m.offset = 0x2000;
  m.address = 0x100000000;
  m.size = 0x40000000;
  EXPECT_EQ(EncodeDmaMap(m), wire);
  absl::StatusOr<DmaMapRequest> d = DecodeDmaMap(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 32u);
  EXPECT_EQ(d->flags, 3u);
  EXPECT_EQ(d->offset, 0x2000u);
  EXPECT_EQ(d->address, 0x100000000u);
  EXPECT_EQ(d->size, 0x40000000u);
}

TEST(DmaMapGolden, LvuFileIoFlagAccepted) {
  DmaMapRequest m;
  m.flags = kDmaMapFlagRead | kDmaMapFlagFileIoLvu;
  m.size = 4096;
  absl::StatusOr<DmaMapRequest> d = DecodeDmaMap(Span(EncodeDmaMap(m)));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, 0x9u);
}

TEST(DmaMapGolden, RangeEndMustBeRepresentable) {
  // address + size must fit in u64 so that no later `address + size` wraps:
  // the highest mappable exclusive end is 2^64 - 1.
  DmaMapRequest m;
  m.address = 0xFFFFFFFFFFFFF000;
  m.size = 0xFFF;
  EXPECT_TRUE(DecodeDmaMap(Span(EncodeDmaMap(m))).ok());
  m.size = 0x1000;  // end = 2^64
  EXPECT_EQ(ErrnoOf(DecodeDmaMap(Span(EncodeDmaMap(m))).status()), ERANGE);
}

// ============================ DMA_UNMAP (§3.3) ============================

TEST(DmaUnmapGolden, RequestAndEchoedReply) {
  const Bytes wire = Cat({U32(24),            // @0 argsz
                          U32(0),             // @4 flags
                          U64(0xC0000),       // @8 address
                          U64(0x20000)});     // @16 size
  ASSERT_EQ(wire.size(), 24u);
  DmaUnmapRequest u;
  u.address = 0xC0000;
  u.size = 0x20000;
  EXPECT_EQ(EncodeDmaUnmap(u), wire);
  // The reply payload is the same structure, echoed: one decoder for both.
  absl::StatusOr<DmaUnmapRequest> d = DecodeDmaUnmap(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 24u);
  EXPECT_EQ(d->flags, 0u);
  EXPECT_EQ(d->address, 0xC0000u);
  EXPECT_EQ(d->size, 0x20000u);
}

TEST(DmaUnmapGolden, All) {
  const Bytes wire = Cat({U32(24), U32(0x2), U64(0), U64(0)});
  DmaUnmapRequest u;
  u.flags = kDmaUnmapFlagAll;
  EXPECT_EQ(EncodeDmaUnmap(u), wire);
  absl::StatusOr<DmaUnmapRequest> d = DecodeDmaUnmap(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, kDmaUnmapFlagAll);
}

// ============================ DEVICE_GET_INFO (§3.4) ============================

TEST(DeviceInfoGolden, Request) {
  const Bytes wire = Cat({U32(16), U32(0), U32(0), U32(0)});
  DeviceInfo req;
  EXPECT_EQ(EncodeDeviceInfo(req), wire);
  absl::StatusOr<DeviceInfo> d = DecodeDeviceInfoRequest(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 16u);
}

TEST(DeviceInfoGolden, Reply) {
  const Bytes wire = Cat({U32(16),          // @0 argsz
                          U32(0x3),         // @4 flags RESET|PCI
                          U32(9),           // @8 num_regions
                          U32(5)});         // @12 num_irqs
  DeviceInfo info{16, kDeviceFlagsReset | kDeviceFlagsPci, 9, 5};
  EXPECT_EQ(EncodeDeviceInfo(info), wire);
  absl::StatusOr<DeviceInfo> d = DecodeDeviceInfoReply(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, 3u);
  EXPECT_EQ(d->num_regions, 9u);
  EXPECT_EQ(d->num_irqs, 5u);
}

// ============================ GET_REGION_INFO (§3.5, §5.2) ============================

TEST(RegionInfoGolden, Request) {
  const Bytes wire = Cat({U32(32),    // @0 argsz
                          U32(0),     // @4 flags
                          U32(7),     // @8 index (config space)
                          U32(0),     // @12 cap_offset
                          U64(0),     // @16 size
                          U64(0)});   // @24 offset
  RegionInfoRequest q;
  q.index = kPciConfigRegionIndex;
  EXPECT_EQ(EncodeRegionInfoRequest(q), wire);
  absl::StatusOr<RegionInfoRequest> d = DecodeRegionInfoRequest(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 32u);
  EXPECT_EQ(d->index, 7u);
}

TEST(RegionInfoGolden, ReplyWithoutCaps) {
  const Bytes wire = Cat({U32(32), U32(0x3), U32(7), U32(0), U64(256), U64(0)});
  RegionInfo r;
  r.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite;
  r.index = 7;
  r.size = 256;
  bool caps_fit = false;
  EXPECT_EQ(EncodeRegionInfo(r, 32, &caps_fit), wire);
  EXPECT_TRUE(caps_fit);
  absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, 3u);
  EXPECT_EQ(d->size, 256u);
  EXPECT_FALSE(d->sparse_areas.has_value());
  EXPECT_FALSE(d->type_cap.has_value());
  EXPECT_FALSE(d->msix_mappable);
}

RegionInfo RegionWithAllCaps() {
  RegionInfo r;
  r.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite | kRegionInfoFlagMmap;
  r.index = 9;
  r.size = 0x10000;
  r.offset = 0x40000;
  r.sparse_areas = std::vector<SparseMmapArea>{{0x0, 0x3000}, {0x8000, 0x8000}};
  r.type_cap = RegionInfo::TypeCap{(1u << 31) | 0x1AF4, 7};
  r.msix_mappable = true;
  return r;
}

// 32 (info) + 48 (sparse, 2 areas) + 16 (type) + 8 (msix) = 104 bytes.
Bytes AllCapsReplyGolden() {
  return Cat({U32(104),          // @0 argsz = full size
              U32(0xF),          // @4 flags READ|WRITE|MMAP|CAPS
              U32(9),            // @8 index
              U32(32),           // @12 cap_offset
              U64(0x10000),      // @16 size
              U64(0x40000),      // @24 offset
              // @32 sparse-mmap capability
              U16(1), U16(1), U32(80),  // id 1, version 1, next @80
              U32(2), U32(0),           // nr_areas, reserved
              U64(0x0), U64(0x3000),    // area 0
              U64(0x8000), U64(0x8000), // area 1
              // @80 type capability
              U16(2), U16(1), U32(96),  // id 2, version 1, next @96
              U32(0x80001AF4), U32(7),  // type, subtype
              // @96 msix-mappable capability
              U16(3), U16(1), U32(0)}); // id 3, version 1, end of chain
}

TEST(RegionInfoGolden, ReplyWithSparseTypeAndMsixCaps) {
  const Bytes wire = AllCapsReplyGolden();
  ASSERT_EQ(wire.size(), 104u);
  bool caps_fit = false;
  EXPECT_EQ(EncodeRegionInfo(RegionWithAllCaps(), 104, &caps_fit), wire);
  EXPECT_TRUE(caps_fit);
  EXPECT_EQ(EncodeRegionInfo(RegionWithAllCaps(), 4096), wire);

  absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 104u);
  EXPECT_EQ(d->flags, 0xFu);
  EXPECT_EQ(d->index, 9u);
  EXPECT_EQ(d->cap_offset, 32u);
  EXPECT_EQ(d->size, 0x10000u);
  EXPECT_EQ(d->offset, 0x40000u);
  ASSERT_TRUE(d->sparse_areas.has_value());
  EXPECT_THAT(*d->sparse_areas,
              ElementsAre(SparseMmapArea{0, 0x3000}, SparseMmapArea{0x8000, 0x8000}));
  ASSERT_TRUE(d->type_cap.has_value());
  EXPECT_EQ(d->type_cap->type, 0x80001AF4u);
  EXPECT_EQ(d->type_cap->subtype, 7u);
  EXPECT_TRUE(d->msix_mappable);
}

TEST(RegionInfoGolden, ArgszTooSmallGivesTruncatedReply) {
  // The requester accepts only 32 bytes: the bare structure goes out with the
  // full argsz, no CAPS flag and cap_offset 0 (lvu and kernel behaviour).
  const Bytes wire = Cat({U32(104), U32(0x7), U32(9), U32(0), U64(0x10000),
                          U64(0x40000)});
  bool caps_fit = true;
  EXPECT_EQ(EncodeRegionInfo(RegionWithAllCaps(), 32, &caps_fit), wire);
  EXPECT_FALSE(caps_fit);
  EXPECT_EQ(EncodeRegionInfo(RegionWithAllCaps(), 103), wire);

  absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 104u);  // the size to ask for next
  EXPECT_FALSE(d->sparse_areas.has_value());
  EXPECT_FALSE(d->type_cap.has_value());
  EXPECT_FALSE(d->msix_mappable);
}

TEST(RegionInfoGolden, KernelStyleTruncatedReplyKeepsCapsFlag) {
  // The kernel keeps CAPS set with cap_offset 0 when the chain did not fit.
  const Bytes wire = Cat({U32(104), U32(0xF), U32(9), U32(0), U64(0x10000),
                          U64(0x40000)});
  absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 104u);
  EXPECT_FALSE(d->sparse_areas.has_value());
}

TEST(RegionInfoGolden, UnknownCapabilityIsSkipped) {
  const Bytes wire = Cat({U32(56), U32(0xF), U32(0), U32(32), U64(0x1000), U64(0),
                          // @32 unknown id 0x77 with an 8-byte body, next @48
                          U16(0x77), U16(1), U32(48), U32(0xAAAAAAAA), U32(0),
                          // @48 msix-mappable, end of chain
                          U16(3), U16(1), U32(0)});
  absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->msix_mappable);
  EXPECT_FALSE(d->sparse_areas.has_value());
}

TEST(RegionInfoGolden, EmptySparseCap) {
  RegionInfo r;
  r.flags = kRegionInfoFlagMmap;
  r.size = 0x1000;
  r.sparse_areas.emplace();
  const Bytes wire = Cat({U32(48), U32(0xC), U32(0), U32(32), U64(0x1000), U64(0),
                          U16(1), U16(1), U32(0), U32(0), U32(0)});
  EXPECT_EQ(EncodeRegionInfo(r, 48), wire);
  absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(d->sparse_areas.has_value());
  EXPECT_TRUE(d->sparse_areas->empty());
}

// ============================ GET_REGION_IO_FDS (§3.6) ============================

TEST(RegionIoFdsGolden, Request) {
  const Bytes wire = Cat({U32(256), U32(0), U32(2), U32(0)});
  RegionIoFdsRequest q;
  q.argsz = 256;
  q.index = 2;
  EXPECT_EQ(EncodeRegionIoFdsRequest(q), wire);
  absl::StatusOr<RegionIoFdsRequest> d = DecodeRegionIoFdsRequest(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 256u);
  EXPECT_EQ(d->index, 2u);
}

RegionIoFdsReply TwoIoFds() {
  RegionIoFdsReply r;
  r.index = 2;
  IoFdEntry a;
  a.offset = 0x100;
  a.size = 4;
  a.fd_index = 0;
  a.type = kIoFdTypeIoeventfd;
  a.flags = 0x1;  // DATAMATCH
  a.datamatch = 0xCAFE;
  IoFdEntry b;
  b.offset = 0x200;
  b.size = 0;
  b.fd_index = 1;
  b.type = kIoFdTypeIoeventfd;
  r.entries = {a, b};
  return r;
}

TEST(RegionIoFdsGolden, ReplyWith40ByteEntries) {
  const Bytes wire = Cat({U32(96),   // @0 argsz = 16 + 2 * 40
                          U32(0),    // @4 flags
                          U32(2),    // @8 index
                          U32(2),    // @12 count
                          // entry 0 @16
                          U64(0x100), U64(4), U32(0), U32(0), U32(1), U32(0) /*pad*/,
                          U64(0xCAFE),
                          // entry 1 @56
                          U64(0x200), U64(0), U32(1), U32(0), U32(0), U32(0),
                          U64(0)});
  ASSERT_EQ(wire.size(), 96u);
  EXPECT_EQ(EncodeRegionIoFdsReply(TwoIoFds(), 96, kIoFdEntrySizeSpec), wire);
  absl::StatusOr<RegionIoFdsReply> d = DecodeRegionIoFdsReply(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 96u);
  EXPECT_EQ(d->index, 2u);
  EXPECT_EQ(d->count, 2u);
  ASSERT_EQ(d->entries.size(), 2u);
  EXPECT_EQ(d->entries[0].offset, 0x100u);
  EXPECT_EQ(d->entries[0].size, 4u);
  EXPECT_EQ(d->entries[0].flags, 1u);
  EXPECT_EQ(d->entries[0].datamatch, 0xCAFEu);
  EXPECT_EQ(d->entries[1].fd_index, 1u);
}

TEST(RegionIoFdsGolden, ReplyWith48ByteLvuEntries) {
  RegionIoFdsReply r = TwoIoFds();
  r.entries[1].type = kIoFdTypeIoeventfdShadow;
  r.entries[1].shadow_fd_index = 2;
  r.entries[1].shadow_offset = 0x3000;
  const Bytes wire = Cat({U32(112),  // argsz = 16 + 2 * 48
                          U32(0), U32(2), U32(2),
                          // entry 0 @16: gpa_offset, size, fd_index, type, flags,
                          // shadow_mem_fd_index, shadow_offset, datamatch @40
                          U64(0x100), U64(4), U32(0), U32(0), U32(1), U32(0),
                          U64(0), U64(0xCAFE),
                          // entry 1 @64
                          U64(0x200), U64(0), U32(1), U32(2), U32(0), U32(2),
                          U64(0x3000), U64(0)});
  ASSERT_EQ(wire.size(), 112u);
  EXPECT_EQ(EncodeRegionIoFdsReply(r, 112, kIoFdEntrySizeLvu), wire);
  absl::StatusOr<RegionIoFdsReply> d = DecodeRegionIoFdsReply(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->entries.size(), 2u);
  EXPECT_EQ(d->entries[0].datamatch, 0xCAFEu);
  EXPECT_EQ(d->entries[1].type, kIoFdTypeIoeventfdShadow);
  EXPECT_EQ(d->entries[1].shadow_fd_index, 2u);
  EXPECT_EQ(d->entries[1].shadow_offset, 0x3000u);
}

TEST(RegionIoFdsGolden, ArgszTooSmallSendsCountOnly) {
  const Bytes wire = Cat({U32(96), U32(0), U32(2), U32(2)});
  EXPECT_EQ(EncodeRegionIoFdsReply(TwoIoFds(), 16), wire);
  EXPECT_EQ(EncodeRegionIoFdsReply(TwoIoFds(), 95), wire);
  absl::StatusOr<RegionIoFdsReply> d = DecodeRegionIoFdsReply(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 96u);
  EXPECT_EQ(d->count, 2u);
  EXPECT_TRUE(d->entries.empty());
}

TEST(RegionIoFdsGolden, NoEntries) {
  const Bytes wire = Cat({U32(16), U32(0), U32(4), U32(0)});
  RegionIoFdsReply r;
  r.index = 4;
  EXPECT_EQ(EncodeRegionIoFdsReply(r, 16), wire);
  absl::StatusOr<RegionIoFdsReply> d = DecodeRegionIoFdsReply(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->count, 0u);
}

// ============================ GET_IRQ_INFO (§3.7) ============================

TEST(IrqInfoGolden, RequestAndReply) {
  const Bytes request = Cat({U32(16), U32(0), U32(2), U32(0)});
  IrqInfo q;
  q.index = kPciMsixIrqIndex;
  EXPECT_EQ(EncodeIrqInfo(q), request);
  absl::StatusOr<IrqInfo> dq = DecodeIrqInfoRequest(Span(request));
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->index, 2u);

  const Bytes reply = Cat({U32(16),          // @0 argsz
                           U32(0x3),         // @4 flags EVENTFD|MASKABLE
                           U32(2),           // @8 index MSIX
                           U32(64)});        // @12 count
  IrqInfo info{16, kIrqInfoEventfd | kIrqInfoMaskable, 2, 64};
  EXPECT_EQ(EncodeIrqInfo(info), reply);
  absl::StatusOr<IrqInfo> dr = DecodeIrqInfoReply(Span(reply));
  ASSERT_TRUE(dr.ok()) << dr.status();
  EXPECT_EQ(dr->flags, 3u);
  EXPECT_EQ(dr->count, 64u);
}

// ============================ SET_IRQS (§3.8) ============================

TEST(SetIrqsGolden, DataNoneDisableAll) {
  const Bytes wire = Cat({U32(20),                 // @0 argsz
                          U32(0x21),               // @4 DATA_NONE|ACTION_TRIGGER
                          U32(1),                  // @8 index MSI
                          U32(0),                  // @12 start
                          U32(0)});                // @16 count
  SetIrqs s;
  s.flags = kIrqSetDataNone | kIrqSetActionTrigger;
  s.index = kPciMsiIrqIndex;
  EXPECT_EQ(EncodeSetIrqs(s), wire);
  absl::StatusOr<SetIrqs> d = DecodeSetIrqs(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, 0x21u);
  EXPECT_EQ(d->count, 0u);
  EXPECT_TRUE(d->bools.empty());
}

TEST(SetIrqsGolden, DataBool) {
  const Bytes wire = Cat({U32(23), U32(0x0A), U32(2), U32(4), U32(3),
                          U8(1), U8(0), U8(1)});
  SetIrqs s;
  s.flags = kIrqSetDataBool | kIrqSetActionMask;
  s.index = kPciMsixIrqIndex;
  s.start = 4;
  s.count = 3;
  s.bools = {1, 0, 1};
  EXPECT_EQ(EncodeSetIrqs(s), wire);
  absl::StatusOr<SetIrqs> d = DecodeSetIrqs(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->argsz, 23u);
  EXPECT_EQ(d->start, 4u);
  EXPECT_EQ(d->count, 3u);
  EXPECT_THAT(d->bools, ElementsAre(1, 0, 1));
}

TEST(SetIrqsGolden, DataEventfd) {
  // QEMU: argsz 20, fds in SCM_RIGHTS (not in the payload).
  const Bytes wire = Cat({U32(20), U32(0x24), U32(2), U32(0), U32(2)});
  SetIrqs s;
  s.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
  s.index = kPciMsixIrqIndex;
  s.count = 2;
  EXPECT_EQ(EncodeSetIrqs(s), wire);
  absl::StatusOr<SetIrqs> d = DecodeSetIrqs(Span(wire));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, 0x24u);
  EXPECT_EQ(d->count, 2u);
  EXPECT_TRUE(d->bools.empty());
}

TEST(SetIrqsGolden, EventfdUnmaskForIntxResample) {
  SetIrqs s;
  s.flags = kIrqSetDataEventfd | kIrqSetActionUnmask;
  s.index = kPciIntxIrqIndex;
  s.count = 1;
  absl::StatusOr<SetIrqs> d = DecodeSetIrqs(Span(EncodeSetIrqs(s)));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags, 0x14u);
}

// ============================ REGION_READ / REGION_WRITE (§3.9) ============================

TEST(RegionAccessGolden, ReadRequestAndReply) {
  const Bytes request = Cat({U64(0x40),   // @0 offset
                             U32(7),      // @8 region
                             U32(4)});    // @12 count
  EXPECT_EQ(EncodeRegionAccessHeader(0x40, 7, 4), request);
  absl::StatusOr<RegionAccess> dq = DecodeRegionReadRequest(Span(request), kLimits);
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->offset, 0x40u);
  EXPECT_EQ(dq->region, 7u);
  EXPECT_EQ(dq->count, 4u);
  EXPECT_TRUE(dq->data.empty());

  const Bytes data = {0xDE, 0xAD, 0xBE, 0xEF};
  const Bytes reply = Cat({U64(0x40), U32(7), U32(4), data});
  EXPECT_EQ(EncodeRegionAccessWithData(0x40, 7, Span(data)), reply);
  absl::StatusOr<RegionAccess> dr = DecodeRegionReadReply(Span(reply), 4);
  ASSERT_TRUE(dr.ok()) << dr.status();
  EXPECT_EQ(ToBytes(dr->data), data);
  // The data span points into the decoded payload (no copy).
  EXPECT_EQ(dr->data.data(), reply.data() + 16);
}

TEST(RegionAccessGolden, ShortReadReply) {
  const Bytes reply = Cat({U64(0), U32(0), U32(2), Bytes{1, 2}});
  absl::StatusOr<RegionAccess> d = DecodeRegionReadReply(Span(reply), 8);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->count, 2u);
}

TEST(RegionAccessGolden, WriteRequestAndReply) {
  const Bytes data = {0x11, 0x22};
  const Bytes request = Cat({U64(0x1000), U32(2), U32(2), data});
  EXPECT_EQ(EncodeRegionAccessWithData(0x1000, 2, Span(data)), request);
  absl::StatusOr<RegionAccess> dq = DecodeRegionWriteRequest(Span(request), kLimits);
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->offset, 0x1000u);
  EXPECT_EQ(dq->region, 2u);
  EXPECT_EQ(ToBytes(dq->data), data);

  const Bytes reply = Cat({U64(0x1000), U32(2), U32(2)});
  EXPECT_EQ(EncodeRegionAccessHeader(0x1000, 2, 2), reply);
  absl::StatusOr<RegionAccess> dr = DecodeRegionWriteReply(Span(reply));
  ASSERT_TRUE(dr.ok()) << dr.status();
  EXPECT_EQ(dr->count, 2u);
}

TEST(RegionAccessGolden, HeaderToBuffer) {
  uint8_t out[16];
  std::memset(out, 0xFF, sizeof(out));
  EncodeRegionAccessHeaderTo(0x0102030405060708, 0x11, 0x22, out);
  EXPECT_THAT(out, ElementsAreArray(Cat({U64(0x0102030405060708), U32(0x11),
                                         U32(0x22)})));
}

TEST(RegionAccessGolden, CountAtLimitIsAccepted) {
  DecodeLimits limits;
  limits.max_data_xfer_size = 8;
  const Bytes data(8, 0xAB);
  EXPECT_TRUE(DecodeRegionWriteRequest(
                  Span(EncodeRegionAccessWithData(0, 0, Span(data))), limits)
                  .ok());
  EXPECT_TRUE(DecodeRegionReadRequest(Span(EncodeRegionAccessHeader(0, 0, 8)),
                                      limits)
                  .ok());
}

// ============================ DMA_READ / DMA_WRITE (§3.10) ============================

TEST(DmaAccessGolden, SpecLayout) {
  const Bytes read_request = Cat({U64(0x7000),   // @0 address
                                  U64(3)});      // @8 count (u64)
  EXPECT_EQ(EncodeDmaAccessHeader(0x7000, 3), read_request);
  absl::StatusOr<DmaAccess> rq = DecodeDmaReadRequest(Span(read_request), kLimits);
  ASSERT_TRUE(rq.ok()) << rq.status();
  EXPECT_EQ(rq->address, 0x7000u);
  EXPECT_EQ(rq->count, 3u);

  const Bytes data = {7, 8, 9};
  const Bytes read_reply = Cat({U64(0x7000), U64(3), data});  // data @16
  EXPECT_EQ(EncodeDmaAccessWithData(0x7000, Span(data)), read_reply);
  absl::StatusOr<DmaAccess> rr = DecodeDmaReadReply(Span(read_reply), 3);
  ASSERT_TRUE(rr.ok()) << rr.status();
  EXPECT_EQ(ToBytes(rr->data), data);

  const Bytes write_request = read_reply;
  absl::StatusOr<DmaAccess> wq = DecodeDmaWriteRequest(Span(write_request), kLimits);
  ASSERT_TRUE(wq.ok()) << wq.status();
  EXPECT_EQ(wq->address, 0x7000u);
  EXPECT_EQ(ToBytes(wq->data), data);

  // lvu expects a 16-byte DMA_WRITE reply.
  absl::StatusOr<DmaAccess> wr = DecodeDmaWriteReply(Span(read_request));
  ASSERT_TRUE(wr.ok()) << wr.status();
  EXPECT_EQ(wr->address, 0x7000u);
  EXPECT_EQ(wr->count, 3u);
}

TEST(DmaAccessGolden, QemuLegacyLayout) {
  const Bytes read_request = Cat({U64(0x7000),   // @0 address
                                  U32(3)});      // @8 count (u32)
  EXPECT_EQ(EncodeDmaAccessHeader(0x7000, 3, DmaLayout::kQemuLegacy), read_request);
  EXPECT_EQ(DmaAccessHeaderSize(DmaLayout::kQemuLegacy), 12u);
  EXPECT_EQ(DmaAccessHeaderSize(DmaLayout::kSpec), 16u);
  absl::StatusOr<DmaAccess> rq =
      DecodeDmaReadRequest(Span(read_request), kLimits, DmaLayout::kQemuLegacy);
  ASSERT_TRUE(rq.ok()) << rq.status();
  EXPECT_EQ(rq->count, 3u);

  const Bytes data = {7, 8, 9};
  const Bytes with_data = Cat({U64(0x7000), U32(3), data});  // data @12
  EXPECT_EQ(EncodeDmaAccessWithData(0x7000, Span(data), DmaLayout::kQemuLegacy),
            with_data);
  absl::StatusOr<DmaAccess> wq =
      DecodeDmaWriteRequest(Span(with_data), kLimits, DmaLayout::kQemuLegacy);
  ASSERT_TRUE(wq.ok()) << wq.status();
  EXPECT_EQ(ToBytes(wq->data), data);

  // QEMU's DMA_READ reply (data @12) is recognised by its length.
  absl::StatusOr<DmaAccess> rr = DecodeDmaReadReply(Span(with_data), 3);
  ASSERT_TRUE(rr.ok()) << rr.status();
  EXPECT_EQ(rr->address, 0x7000u);
  EXPECT_EQ(ToBytes(rr->data), data);
  EXPECT_EQ(rr->data.data(), with_data.data() + 12);

  // 12-byte and header-only DMA_WRITE replies.
  absl::StatusOr<DmaAccess> wr12 = DecodeDmaWriteReply(Span(read_request));
  ASSERT_TRUE(wr12.ok()) << wr12.status();
  EXPECT_EQ(wr12->count, 3u);
  absl::StatusOr<DmaAccess> wr0 = DecodeDmaWriteReply(ByteSpan());
  ASSERT_TRUE(wr0.ok()) << wr0.status();
  EXPECT_EQ(wr0->count, 0u);
}

TEST(DmaAccessGolden, WriteReplyMustEchoTheRequest) {
  const Bytes spec = EncodeDmaAccessHeader(0x7000, 64);
  EXPECT_TRUE(CheckDmaWriteReply(Span(spec), 0x7000, 64).ok());
  EXPECT_EQ(ErrnoOf(CheckDmaWriteReply(Span(spec), 0x7008, 64)), EPROTO);
  EXPECT_EQ(ErrnoOf(CheckDmaWriteReply(Span(spec), 0x7000, 32)), EPROTO);
  const Bytes legacy = EncodeDmaAccessHeader(0x7000, 64, DmaLayout::kQemuLegacy);
  EXPECT_TRUE(CheckDmaWriteReply(Span(legacy), 0x7000, 64).ok());
  EXPECT_EQ(ErrnoOf(CheckDmaWriteReply(Span(legacy), 0x6000, 64)), EPROTO);
  // QEMU's header-only reply echoes nothing.
  EXPECT_TRUE(CheckDmaWriteReply(ByteSpan(), 0x7000, 64).ok());
  // Malformed: the decoder's error.
  const Bytes odd(5, 0);
  EXPECT_EQ(ErrnoOf(CheckDmaWriteReply(Span(odd), 0x7000, 64)), EINVAL);
}

TEST(DmaAccessGolden, HeaderToBuffer) {
  uint8_t out[16];
  EncodeDmaAccessHeaderTo(0xAABB, 0x10, DmaLayout::kSpec, out);
  EXPECT_THAT(out, ElementsAreArray(Cat({U64(0xAABB), U64(0x10)})));
  uint8_t legacy[12];
  EncodeDmaAccessHeaderTo(0xAABB, 0x10, DmaLayout::kQemuLegacy, legacy);
  EXPECT_THAT(legacy, ElementsAreArray(Cat({U64(0xAABB), U32(0x10)})));
}

// ============================ DEVICE_RESET (§3.11) ============================

TEST(DeviceResetGolden, EmptyPayload) {
  EXPECT_TRUE(DecodeEmptyPayload(ByteSpan()).ok());
}

// ============================ REGION_WRITE_MULTI (§3.12) ============================

TEST(WriteMultiGolden, RequestAndReply) {
  const Bytes wire = Cat({U64(2),                          // @0 wr_cnt
                          // entry 0 @8
                          U64(0x10), U32(0), U32(4),
                          Bytes{1, 2, 3, 4, 0, 0, 0, 0},
                          // entry 1 @32
                          U64(0x20), U32(1), U32(8),
                          Bytes{1, 2, 3, 4, 5, 6, 7, 8}});
  ASSERT_EQ(wire.size(), 8u + 2 * 24);
  std::vector<WriteMultiEntry> entries(2);
  entries[0].offset = 0x10;
  entries[0].count = 4;
  const uint8_t d0[] = {1, 2, 3, 4};
  std::memcpy(entries[0].data, d0, sizeof(d0));
  entries[1].offset = 0x20;
  entries[1].region = 1;
  entries[1].count = 8;
  const uint8_t d1[] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::memcpy(entries[1].data, d1, sizeof(d1));
  EXPECT_EQ(EncodeRegionWriteMulti(entries), wire);

  absl::StatusOr<std::vector<WriteMultiEntry>> d =
      DecodeRegionWriteMulti(Span(wire), kLimits);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->size(), 2u);
  EXPECT_EQ((*d)[0].offset, 0x10u);
  EXPECT_EQ((*d)[0].count, 4u);
  EXPECT_EQ(std::memcmp((*d)[0].data, d0, 4), 0);
  EXPECT_EQ((*d)[1].region, 1u);
  EXPECT_EQ(std::memcmp((*d)[1].data, d1, 8), 0);

  const Bytes reply = U64(2);
  EXPECT_EQ(EncodeRegionWriteMultiReply(2), reply);
  absl::StatusOr<uint64_t> completed = DecodeRegionWriteMultiReply(Span(reply));
  ASSERT_TRUE(completed.ok()) << completed.status();
  EXPECT_EQ(*completed, 2u);
}

// ============================ DEVICE_FEATURE (§3.13) ============================

TEST(DeviceFeatureGolden, MigrationGet) {
  const Bytes request = Cat({U32(16),          // @0 argsz: room for 8 bytes of data
                             U32(0x10001)});   // @4 GET | MIGRATION
  EXPECT_EQ(EncodeDeviceFeature(16, kDeviceFeatureGet | kDeviceFeatureMigration,
                                ByteSpan()),
            request);
  absl::StatusOr<DeviceFeature> dq = DecodeDeviceFeature(Span(request));
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->feature(), kDeviceFeatureMigration);
  EXPECT_TRUE(dq->data.empty());

  const Bytes reply = Cat({U32(16), U32(0x10001),
                           U64(0x5)});  // @8 STOP_COPY | PRE_COPY
  const Bytes flags = EncodeMigrationFlags(kMigrationStopCopy | kMigrationPreCopy);
  EXPECT_EQ(flags, U64(5));
  EXPECT_EQ(EncodeDeviceFeature(16, 0x10001, Span(flags)), reply);
  absl::StatusOr<DeviceFeature> dr = DecodeDeviceFeature(Span(reply));
  ASSERT_TRUE(dr.ok()) << dr.status();
  absl::StatusOr<uint64_t> mig = DecodeMigrationFlags(dr->data);
  ASSERT_TRUE(mig.ok()) << mig.status();
  EXPECT_EQ(*mig, 5u);
}

TEST(DeviceFeatureGolden, MigrationProbe) {
  const Bytes request = Cat({U32(8), U32(0x50001)});  // GET | PROBE | MIGRATION
  absl::StatusOr<DeviceFeature> d = DecodeDeviceFeature(Span(request));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->flags & kDeviceFeatureProbe, kDeviceFeatureProbe);
  // GET|SET together is allowed with PROBE.
  EXPECT_TRUE(DecodeDeviceFeature(Span(Cat({U32(8), U32(0x70002)}))).ok());
}

TEST(DeviceFeatureGolden, MigDeviceStateSet) {
  const Bytes wire = Cat({U32(16),          // argsz
                          U32(0x20002),     // SET | MIG_DEVICE_STATE
                          U32(1),           // @8 device_state = STOP
                          U32(0)});         // @12 data_fd (unused)
  MigDeviceState s;
  s.device_state = static_cast<uint32_t>(MigrationState::kStop);
  const Bytes data = EncodeMigDeviceState(s);
  EXPECT_EQ(EncodeDeviceFeature(16, kDeviceFeatureSet | kDeviceFeatureMigDeviceState,
                                Span(data)),
            wire);
  absl::StatusOr<DeviceFeature> f = DecodeDeviceFeature(Span(wire));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->feature(), kDeviceFeatureMigDeviceState);
  absl::StatusOr<MigDeviceState> d = DecodeMigDeviceState(f->data);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->device_state, 1u);
  EXPECT_EQ(d->data_fd, 0u);
}

TEST(DeviceFeatureGolden, DmaLoggingStart) {
  const Bytes data = Cat({U64(4096),           // @0 page_size
                          U32(2),              // @8 num_ranges
                          U32(0),              // @12 reserved
                          U64(0x0), U64(0x100000),            // range 0 @16
                          U64(0x100000000), U64(0x200000)});  // range 1 @32
  DmaLoggingStart s;
  s.page_size = 4096;
  s.ranges = {{0x0, 0x100000}, {0x100000000, 0x200000}};
  EXPECT_EQ(EncodeDmaLoggingStart(s), data);
  const Bytes wire = Cat({U32(8 + 48), U32(0x20006), data});
  EXPECT_EQ(EncodeDeviceFeature(56, kDeviceFeatureSet | kDeviceFeatureDmaLoggingStart,
                                Span(data)),
            wire);
  absl::StatusOr<DeviceFeature> f = DecodeDeviceFeature(Span(wire));
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<DmaLoggingStart> d = DecodeDmaLoggingStart(f->data, kLimits);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->page_size, 4096u);
  ASSERT_EQ(d->ranges.size(), 2u);
  EXPECT_EQ(d->ranges[1].iova, 0x100000000u);
  EXPECT_EQ(d->ranges[1].length, 0x200000u);
}

TEST(DeviceFeatureGolden, DmaLoggingStartEverything) {
  const Bytes data = Cat({U64(4096), U32(0), U32(0)});
  DmaLoggingStart s;
  EXPECT_EQ(EncodeDmaLoggingStart(s), data);
  absl::StatusOr<DmaLoggingStart> d = DecodeDmaLoggingStart(Span(data), kLimits);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->ranges.empty());
}

TEST(DeviceFeatureGolden, DmaLoggingReport) {
  // 130 pages of 4 KiB -> 130 bits -> 3 u64 words.
  const Bytes request = Cat({U64(0x200000),      // @0 iova
                             U64(130 * 4096),    // @8 length
                             U64(4096)});        // @16 page_size
  DmaLoggingReport r;
  r.iova = 0x200000;
  r.length = 130 * 4096;
  r.page_size = 4096;
  EXPECT_EQ(EncodeDmaLoggingReportRequest(r), request);
  absl::StatusOr<DmaLoggingReport> dq = DecodeDmaLoggingReportRequest(Span(request));
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->length, 130u * 4096);
  EXPECT_EQ(DmaLoggingBitmapWords(r.length, r.page_size), 3u);

  r.bitmap = {0x8000000000000001, 0, 0x2};
  const Bytes reply = Cat({request, U64(0x8000000000000001), U64(0), U64(2)});
  EXPECT_EQ(EncodeDmaLoggingReportReply(r), reply);
  absl::StatusOr<DmaLoggingReport> dr = DecodeDmaLoggingReportReply(Span(reply), kLimits);
  ASSERT_TRUE(dr.ok()) << dr.status();
  EXPECT_THAT(dr->bitmap, ElementsAre(0x8000000000000001u, 0u, 2u));

  // Wrapped in DEVICE_FEATURE GET | DMA_LOGGING_REPORT.
  const Bytes wire = Cat({U32(8 + 48), U32(0x10008), reply});
  absl::StatusOr<DeviceFeature> f = DecodeDeviceFeature(Span(wire));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->feature(), kDeviceFeatureDmaLoggingReport);
  EXPECT_EQ(ToBytes(f->data), reply);
}

TEST(DeviceFeatureGolden, BitmapWords) {
  EXPECT_EQ(DmaLoggingBitmapWords(4096, 4096), 1u);
  EXPECT_EQ(DmaLoggingBitmapWords(64 * 4096, 4096), 1u);
  EXPECT_EQ(DmaLoggingBitmapWords(65 * 4096, 4096), 2u);
  EXPECT_EQ(DmaLoggingBitmapWords(1, 4096), 1u);
  EXPECT_EQ(DmaLoggingBitmapWords(~uint64_t{0}, 1), uint64_t{1} << 58);
  EXPECT_EQ(DmaLoggingBitmapWords(100, 0), 0u);
}

// ============================ MIG_DATA_READ / WRITE (§3.14) ============================

TEST(MigDataGolden, ReadRequestAndReply) {
  const Bytes request = Cat({U32(8 + 4096),   // @0 argsz
                             U32(4096)});     // @4 size
  EXPECT_EQ(EncodeMigDataHeader(8 + 4096, 4096), request);
  absl::StatusOr<MigData> dq = DecodeMigDataReadRequest(Span(request), kLimits);
  ASSERT_TRUE(dq.ok()) << dq.status();
  EXPECT_EQ(dq->argsz, 4104u);
  EXPECT_EQ(dq->size, 4096u);

  // A short reply (3 < 4096) ends the stream.
  const Bytes data = {0xA, 0xB, 0xC};
  const Bytes reply = Cat({U32(11), U32(3), data});
  EXPECT_EQ(EncodeMigDataWithData(11, Span(data)), reply);
  absl::StatusOr<MigData> dr = DecodeMigDataReadReply(Span(reply), 4096);
  ASSERT_TRUE(dr.ok()) << dr.status();
  EXPECT_EQ(dr->size, 3u);
  EXPECT_EQ(ToBytes(dr->data), data);
}

TEST(MigDataGolden, WriteRequest) {
  const Bytes data = {1, 2, 3, 4, 5};
  const Bytes request = Cat({U32(13), U32(5), data});
  EXPECT_EQ(EncodeMigDataWithData(13, Span(data)), request);
  absl::StatusOr<MigData> d = DecodeMigDataWriteRequest(Span(request), kLimits);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->size, 5u);
  EXPECT_EQ(ToBytes(d->data), data);
  EXPECT_EQ(d->data.data(), request.data() + 8);
}

// ============================ Round trips ============================

TEST(RoundTrip, DmaMapAndUnmap) {
  for (uint64_t address : {uint64_t{0}, uint64_t{0x1000}, uint64_t{1} << 63}) {
    for (uint64_t size : {uint64_t{1}, uint64_t{4096}, uint64_t{1} << 40}) {
      DmaMapRequest m;
      m.flags = kDmaMapFlagRead;
      m.offset = size;
      m.address = address;
      m.size = size;
      absl::StatusOr<DmaMapRequest> dm = DecodeDmaMap(Span(EncodeDmaMap(m)));
      ASSERT_TRUE(dm.ok()) << dm.status();
      EXPECT_EQ(EncodeDmaMap(*dm), EncodeDmaMap(m));

      DmaUnmapRequest u;
      u.address = address;
      u.size = size;
      absl::StatusOr<DmaUnmapRequest> du = DecodeDmaUnmap(Span(EncodeDmaUnmap(u)));
      ASSERT_TRUE(du.ok()) << du.status();
      EXPECT_EQ(EncodeDmaUnmap(*du), EncodeDmaUnmap(u));
    }
  }
}

TEST(RoundTrip, RegionInfoEveryCapCombination) {
  for (int mask = 0; mask < 8; ++mask) {
    RegionInfo r = RegionWithAllCaps();
    if (!(mask & 1)) r.sparse_areas.reset();
    if (!(mask & 2)) r.type_cap.reset();
    r.msix_mappable = (mask & 4) != 0;
    const Bytes wire = EncodeRegionInfo(r, 4096);
    absl::StatusOr<RegionInfo> d = DecodeRegionInfo(Span(wire));
    ASSERT_TRUE(d.ok()) << "mask " << mask << ": " << d.status();
    EXPECT_EQ(d->argsz, wire.size());
    EXPECT_EQ(d->sparse_areas.has_value(), r.sparse_areas.has_value());
    EXPECT_EQ(d->type_cap.has_value(), r.type_cap.has_value());
    EXPECT_EQ(d->msix_mappable, r.msix_mappable);
    EXPECT_EQ((d->flags & kRegionInfoFlagCaps) != 0, mask != 0);
    EXPECT_EQ(EncodeRegionInfo(*d, 4096), wire) << "mask " << mask;
  }
}

TEST(RoundTrip, RegionAccessAndDma) {
  Bytes data(300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  const Bytes write = EncodeRegionAccessWithData(0x99, 3, Span(data));
  absl::StatusOr<RegionAccess> w = DecodeRegionWriteRequest(Span(write), kLimits);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(EncodeRegionAccessWithData(w->offset, w->region, w->data), write);

  for (DmaLayout layout : {DmaLayout::kSpec, DmaLayout::kQemuLegacy}) {
    const Bytes dma = EncodeDmaAccessWithData(0xFEED0000, Span(data), layout);
    absl::StatusOr<DmaAccess> d = DecodeDmaWriteRequest(Span(dma), kLimits, layout);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(EncodeDmaAccessWithData(d->address, d->data, layout), dma);
    absl::StatusOr<DmaAccess> r = DecodeDmaReadReply(Span(dma), data.size());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(ToBytes(r->data), data);
  }
}

TEST(RoundTrip, SetIrqsAllDataActionPairs) {
  for (uint32_t data_bit : {kIrqSetDataNone, kIrqSetDataBool, kIrqSetDataEventfd}) {
    for (uint32_t action : {kIrqSetActionMask, kIrqSetActionUnmask,
                            kIrqSetActionTrigger}) {
      SetIrqs s;
      s.flags = data_bit | action;
      s.index = 2;
      s.start = 1;
      s.count = 5;
      if (data_bit == kIrqSetDataBool) s.bools = {1, 1, 0, 0, 1};
      const Bytes wire = EncodeSetIrqs(s);
      absl::StatusOr<SetIrqs> d = DecodeSetIrqs(Span(wire));
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(EncodeSetIrqs(*d), wire);
    }
  }
}

TEST(RoundTrip, VersionJsonWithUnicode) {
  VersionPayload v;
  v.json = "{\"x\":\"\xc3\xa9\"}";
  absl::StatusOr<VersionPayload> d = DecodeVersion(Span(EncodeVersion(v)));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->json, v.json);
}

}  // namespace
}  // namespace vfio_user
