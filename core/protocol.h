// vfio-user wire constants and the 16-byte message header.
//
// Values follow the standardized protocol (QEMU docs/interop/vfio-user.rst) as
// digested in PROTOCOL.md; the `VFIO_*` values equal those of <linux/vfio.h>.
// All integers travel in host byte order; every struct is packed. This file
// has no device knowledge and no I/O.
#ifndef VFIO_USER_CORE_PROTOCOL_H_
#define VFIO_USER_CORE_PROTOCOL_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace vfio_user {

// ---- Commands (PROTOCOL.md §2) ----
enum class Command : uint16_t {
  kVersion = 1,
  kDmaMap = 2,
  kDmaUnmap = 3,
  kDeviceGetInfo = 4,
  kDeviceGetRegionInfo = 5,
  kDeviceGetRegionIoFds = 6,
  kDeviceGetIrqInfo = 7,
  kDeviceSetIrqs = 8,
  kRegionRead = 9,
  kRegionWrite = 10,
  kDmaRead = 11,
  kDmaWrite = 12,
  kDeviceReset = 13,
  // 14 was DIRTY_PAGES (migration v1); removed, never reused.
  kRegionWriteMulti = 15,
  kDeviceFeature = 16,
  kMigDataRead = 17,
  kMigDataWrite = 18,
};

// True for the command numbers the current protocol defines.
bool IsKnownCommand(uint16_t cmd);
// "VERSION", "DMA_MAP", ...; "UNKNOWN(n)" for anything else.
const char* CommandName(uint16_t cmd);
inline const char* CommandName(Command cmd) {
  return CommandName(static_cast<uint16_t>(cmd));
}

// ---- Header (PROTOCOL.md §1) ----
inline constexpr size_t kHeaderSize = 16;

inline constexpr uint32_t kFlagsTypeMask = 0x0F;
inline constexpr uint32_t kFlagsTypeCommand = 0x0;
inline constexpr uint32_t kFlagsTypeReply = 0x1;
inline constexpr uint32_t kFlagsNoReply = 0x10;
inline constexpr uint32_t kFlagsError = 0x20;
inline constexpr uint32_t kFlagsKnownMask = 0x3F;

struct Header {
  uint16_t msg_id = 0;
  uint16_t cmd = 0;
  uint32_t msg_size = kHeaderSize;  // header included
  uint32_t flags = 0;
  uint32_t error = 0;               // errno, only with kFlagsError in a reply

  bool is_reply() const { return (flags & kFlagsTypeMask) == kFlagsTypeReply; }
  bool is_command() const { return (flags & kFlagsTypeMask) == kFlagsTypeCommand; }
  bool no_reply() const { return (flags & kFlagsNoReply) != 0; }
  bool is_error() const { return (flags & kFlagsError) != 0; }
};

// Writes `h` into out[0..16). REQUIRES: out.size() >= kHeaderSize.
void EncodeHeader(const Header& h, uint8_t* out);

// Parses and validates the framing fields of a header:
//   - bytes.size() >= 16
//   - msg_size >= 16 and msg_size <= max_msg_size
//   - the Type bits are command or reply
// Unknown command numbers and reserved flag bits are NOT framing errors (the
// body can still be skipped exactly); they are reported by the dispatcher.
// Errors carry EINVAL (bad type / short) or E2BIG/EMSGSIZE (oversized).
absl::StatusOr<Header> DecodeHeader(absl::Span<const uint8_t> bytes,
                                    uint32_t max_msg_size);

// ---- DMA_MAP / DMA_UNMAP flags ----
inline constexpr uint32_t kDmaMapFlagRead = 0x1;
inline constexpr uint32_t kDmaMapFlagWrite = 0x2;
inline constexpr uint32_t kDmaMapFlagMmapLvu = 0x4;    // lvu extension
inline constexpr uint32_t kDmaMapFlagFileIoLvu = 0x8;  // lvu extension
inline constexpr uint32_t kDmaUnmapFlagGetDirtyBitmap = 0x1;  // obsolete
inline constexpr uint32_t kDmaUnmapFlagAll = 0x2;

// ---- DEVICE_GET_INFO flags ----
inline constexpr uint32_t kDeviceFlagsReset = 0x1;
inline constexpr uint32_t kDeviceFlagsPci = 0x2;

// ---- Region indices and info flags (PROTOCOL.md §3.5, §5.1) ----
inline constexpr uint32_t kPciBar0RegionIndex = 0;
inline constexpr uint32_t kPciBar5RegionIndex = 5;
inline constexpr uint32_t kPciRomRegionIndex = 6;
inline constexpr uint32_t kPciConfigRegionIndex = 7;
inline constexpr uint32_t kPciVgaRegionIndex = 8;
inline constexpr uint32_t kPciNumRegions = 9;

inline constexpr uint32_t kRegionInfoFlagRead = 0x1;
inline constexpr uint32_t kRegionInfoFlagWrite = 0x2;
inline constexpr uint32_t kRegionInfoFlagMmap = 0x4;
inline constexpr uint32_t kRegionInfoFlagCaps = 0x8;

// Region-info capability ids (PROTOCOL.md §5.2).
inline constexpr uint16_t kRegionInfoCapSparseMmap = 1;
inline constexpr uint16_t kRegionInfoCapType = 2;
inline constexpr uint16_t kRegionInfoCapMsixMappable = 3;

// ---- IRQ indices and flags (PROTOCOL.md §3.7, §3.8, §5.3) ----
inline constexpr uint32_t kPciIntxIrqIndex = 0;
inline constexpr uint32_t kPciMsiIrqIndex = 1;
inline constexpr uint32_t kPciMsixIrqIndex = 2;
inline constexpr uint32_t kPciErrIrqIndex = 3;
inline constexpr uint32_t kPciReqIrqIndex = 4;
inline constexpr uint32_t kPciNumIrqs = 5;

inline constexpr uint32_t kIrqInfoEventfd = 0x1;
inline constexpr uint32_t kIrqInfoMaskable = 0x2;
inline constexpr uint32_t kIrqInfoAutomasked = 0x4;
inline constexpr uint32_t kIrqInfoNoresize = 0x8;

inline constexpr uint32_t kIrqSetDataNone = 0x01;
inline constexpr uint32_t kIrqSetDataBool = 0x02;
inline constexpr uint32_t kIrqSetDataEventfd = 0x04;
inline constexpr uint32_t kIrqSetDataMask = 0x07;
inline constexpr uint32_t kIrqSetActionMask = 0x08;
inline constexpr uint32_t kIrqSetActionUnmask = 0x10;
inline constexpr uint32_t kIrqSetActionTrigger = 0x20;
inline constexpr uint32_t kIrqSetActionMaskBits = 0x38;

// ---- GET_REGION_IO_FDS entry types ----
inline constexpr uint32_t kIoFdTypeIoeventfd = 0;
inline constexpr uint32_t kIoFdTypeIoregionfd = 1;
inline constexpr uint32_t kIoFdTypeIoeventfdShadow = 2;  // lvu

// ---- DEVICE_FEATURE (PROTOCOL.md §3.13) ----
inline constexpr uint32_t kDeviceFeatureMask = 0xFFFF;
inline constexpr uint32_t kDeviceFeatureGet = 0x10000;
inline constexpr uint32_t kDeviceFeatureSet = 0x20000;
inline constexpr uint32_t kDeviceFeatureProbe = 0x40000;
inline constexpr uint32_t kDeviceFeatureMigration = 1;
inline constexpr uint32_t kDeviceFeatureMigDeviceState = 2;
inline constexpr uint32_t kDeviceFeatureDmaLoggingStart = 6;
inline constexpr uint32_t kDeviceFeatureDmaLoggingStop = 7;
inline constexpr uint32_t kDeviceFeatureDmaLoggingReport = 8;

inline constexpr uint64_t kMigrationStopCopy = 0x1;
inline constexpr uint64_t kMigrationP2p = 0x2;
inline constexpr uint64_t kMigrationPreCopy = 0x4;

enum class MigrationState : uint32_t {
  kError = 0,
  kStop = 1,
  kRunning = 2,
  kStopCopy = 3,
  kResuming = 4,
  kRunningP2p = 5,
  kPreCopy = 6,
  kPreCopyP2p = 7,
};

// ---- Protocol version and capability defaults (PROTOCOL.md §4) ----
inline constexpr uint16_t kProtocolMajor = 0;
inline constexpr uint16_t kProtocolMinor = 2;
inline constexpr uint32_t kDefaultMaxMsgFds = 1;           // spec default
inline constexpr uint32_t kQemuAssumedMaxMsgFds = 8;       // QEMU's assumption
inline constexpr uint64_t kDefaultMaxDataXferSize = 1u << 20;
inline constexpr uint64_t kDefaultMaxDmaMaps = 65535;
inline constexpr uint64_t kDefaultPgsizes = 4096;

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_PROTOCOL_H_
