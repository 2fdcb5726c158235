#include "core/protocol.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user {

bool IsKnownCommand(uint16_t cmd) {
  return (cmd >= 1 && cmd <= 13) || (cmd >= 15 && cmd <= 18);
}

const char* CommandName(uint16_t cmd) {
  switch (static_cast<Command>(cmd)) {
    case Command::kVersion: return "VERSION";
    case Command::kDmaMap: return "DMA_MAP";
    case Command::kDmaUnmap: return "DMA_UNMAP";
    case Command::kDeviceGetInfo: return "DEVICE_GET_INFO";
    case Command::kDeviceGetRegionInfo: return "DEVICE_GET_REGION_INFO";
    case Command::kDeviceGetRegionIoFds: return "DEVICE_GET_REGION_IO_FDS";
    case Command::kDeviceGetIrqInfo: return "DEVICE_GET_IRQ_INFO";
    case Command::kDeviceSetIrqs: return "DEVICE_SET_IRQS";
    case Command::kRegionRead: return "REGION_READ";
    case Command::kRegionWrite: return "REGION_WRITE";
    case Command::kDmaRead: return "DMA_READ";
    case Command::kDmaWrite: return "DMA_WRITE";
    case Command::kDeviceReset: return "DEVICE_RESET";
    case Command::kRegionWriteMulti: return "REGION_WRITE_MULTI";
    case Command::kDeviceFeature: return "DEVICE_FEATURE";
    case Command::kMigDataRead: return "MIG_DATA_READ";
    case Command::kMigDataWrite: return "MIG_DATA_WRITE";
  }
  return "UNKNOWN";
}

void EncodeHeader(const Header& h, uint8_t* out) {
  std::memcpy(out + 0, &h.msg_id, 2);
  std::memcpy(out + 2, &h.cmd, 2);
  std::memcpy(out + 4, &h.msg_size, 4);
  std::memcpy(out + 8, &h.flags, 4);
  std::memcpy(out + 12, &h.error, 4);
}

absl::StatusOr<Header> DecodeHeader(absl::Span<const uint8_t> bytes,
                                    uint32_t max_msg_size) {
  if (bytes.size() < kHeaderSize) {
    return ErrnoError(EINVAL, absl::StrCat("header truncated: ", bytes.size(),
                                           " of 16 bytes"));
  }
  Header h;
  std::memcpy(&h.msg_id, bytes.data() + 0, 2);
  std::memcpy(&h.cmd, bytes.data() + 2, 2);
  std::memcpy(&h.msg_size, bytes.data() + 4, 4);
  std::memcpy(&h.flags, bytes.data() + 8, 4);
  std::memcpy(&h.error, bytes.data() + 12, 4);
  if (h.msg_size < kHeaderSize) {
    return ErrnoError(EINVAL, absl::StrCat("msg_size ", h.msg_size, " < 16"));
  }
  if (h.msg_size > max_msg_size) {
    return ErrnoError(E2BIG, absl::StrCat("msg_size ", h.msg_size,
                                          " exceeds limit ", max_msg_size));
  }
  const uint32_t type = h.flags & kFlagsTypeMask;
  if (type != kFlagsTypeCommand && type != kFlagsTypeReply) {
    return ErrnoError(EINVAL, absl::StrCat("invalid message type ", type));
  }
  return h;
}

}  // namespace vfio_user
