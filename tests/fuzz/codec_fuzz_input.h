// The input format of the codec fuzz target, shared by the target
// (codec_fuzzer.cc) and the seed-corpus generator (make_codec_corpus.cc).
//
//   byte 0     selector: bits 0-5 = decoder (Target, modulo Target::kCount),
//              bit 6 = QEMU legacy DMA layout, bit 7 = tight limits
//   bytes 1-4  u32 parameter (little-endian): requested count/size for reply
//              decoders, max_msg_size for DecodeHeader
//   bytes 5-   payload
#ifndef VFIO_USER_TESTS_FUZZ_CODEC_FUZZ_INPUT_H_
#define VFIO_USER_TESTS_FUZZ_CODEC_FUZZ_INPUT_H_

#include <cstdint>

#include "core/codec.h"

namespace vfio_user {
namespace fuzz {

// Append only: the numbers are baked into corpus files.
enum class Target : uint8_t {
  kHeader = 0,
  kVersion,
  kDmaMap,
  kDmaUnmap,
  kDeviceInfoRequest,
  kDeviceInfoReply,
  kRegionInfoRequest,
  kRegionInfoReply,
  kRegionIoFdsRequest,
  kRegionIoFdsReply,
  kIrqInfoRequest,
  kIrqInfoReply,
  kSetIrqs,
  kRegionReadRequest,
  kRegionWriteRequest,
  kRegionReadReply,
  kRegionWriteReply,
  kDmaReadRequest,
  kDmaWriteRequest,
  kDmaReadReply,
  kDmaWriteReply,
  kEmptyPayload,
  kRegionWriteMulti,
  kRegionWriteMultiReply,
  kDeviceFeature,
  kMigrationFlags,
  kMigDeviceState,
  kDmaLoggingStart,
  kDmaLoggingReportRequest,
  kDmaLoggingReportReply,
  kMigDataReadRequest,
  kMigDataReadReply,
  kMigDataWriteRequest,
  kCount,  // not a target
};

inline constexpr uint8_t kSelectorTargetMask = 0x3F;
inline constexpr uint8_t kSelectorLegacyDma = 0x40;
inline constexpr uint8_t kSelectorTightLimits = 0x80;
inline constexpr size_t kFuzzPrefixSize = 5;

struct FuzzInput {
  Target target = Target::kHeader;
  DmaLayout layout = DmaLayout::kSpec;
  DecodeLimits limits;
  uint32_t param = 0;
  ByteSpan payload;  // points into the raw input
};

// Splits a raw fuzz input; false if it is shorter than the 5-byte prefix.
inline bool ParseFuzzInput(ByteSpan raw, FuzzInput* in) {
  if (raw.size() < kFuzzPrefixSize) return false;
  const uint8_t selector = raw[0];
  in->target = static_cast<Target>((selector & kSelectorTargetMask) %
                                   static_cast<uint8_t>(Target::kCount));
  in->layout = (selector & kSelectorLegacyDma) ? DmaLayout::kQemuLegacy
                                               : DmaLayout::kSpec;
  if (selector & kSelectorTightLimits) {
    in->limits.max_data_xfer_size = 64;
    in->limits.max_array_entries = 4;
  }
  in->param = uint32_t{raw[1]} | uint32_t{raw[2]} << 8 | uint32_t{raw[3]} << 16 |
              uint32_t{raw[4]} << 24;
  in->payload = raw.subspan(kFuzzPrefixSize);
  return true;
}

// Builds a raw fuzz input (the inverse of ParseFuzzInput).
inline Bytes MakeFuzzInput(Target target, uint32_t param, ByteSpan payload,
                           uint8_t selector_flags = 0) {
  Bytes raw = {static_cast<uint8_t>(static_cast<uint8_t>(target) | selector_flags),
               static_cast<uint8_t>(param), static_cast<uint8_t>(param >> 8),
               static_cast<uint8_t>(param >> 16), static_cast<uint8_t>(param >> 24)};
  raw.insert(raw.end(), payload.begin(), payload.end());
  return raw;
}

// Runs one raw input through the fuzz target (defined in codec_fuzzer.cc):
// aborts on any violated invariant; returns true when the selected decoder
// accepted the payload.
bool RunCodecFuzzInput(ByteSpan raw);

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_CODEC_FUZZ_INPUT_H_
