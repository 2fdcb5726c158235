// Input format of the session fuzz target (session_fuzz_harness.h): a script
// a hostile client plays against a whole in-process device server.
//
//   input   := config op*
//   config  := u8 (kConfig* bits: which sample device, server options)
//   op      := u8 opcode (SessionOp, taken modulo kSessionOpCount) + operands
//
// Multi-byte operands are little-endian. An operand cut short by the end of
// the input reads as zeros; a byte string longer than what is left is
// truncated to it. So every input is a valid script, and the fuzzer mutates
// freely.
//
// File descriptors ride along a sent op as an `fds` byte:
//   bits 0-1  how many (0-3); bits 2-3, 4-5, 6-7 the kind of each (FdKind).
//   0xff      kManyFds eventfds, more than any max_msg_fds we offer.
//
// The seed corpus (tests/fuzz/corpus/session/) is recorded from real client
// sessions by record_fuzz_corpus.cc; SessionScript below writes scripts.
#ifndef VFIO_USER_TESTS_FUZZ_SESSION_FUZZ_INPUT_H_
#define VFIO_USER_TESTS_FUZZ_SESSION_FUZZ_INPUT_H_

#include <cstdint>
#include <vector>

#include "core/protocol.h"

namespace vfio_user {
namespace fuzz {

// ---- config byte ----
inline constexpr uint8_t kConfigDmaDevice = 0x01;      // DMA test device, else idio-16
inline constexpr uint8_t kConfigNoTwin = 0x02;         // do not offer a twin socket
inline constexpr uint8_t kConfigWriteMulti = 0x04;     // advertise write_multiple
inline constexpr uint8_t kConfigSmallXfer = 0x08;      // max_data_xfer_size 4 KiB
inline constexpr uint8_t kConfigFewMaps = 0x10;        // max_dma_maps 4
inline constexpr uint8_t kConfigFewFds = 0x20;         // max_msg_fds 2
inline constexpr uint8_t kConfigResetOnDisconnect = 0x40;

enum class SessionOp : uint8_t {
  // u16 cmd, u8 flags (header flags: Type bits, No_reply, Error), u8 fds,
  // u16 len, len bytes. A framed message: msg_size = 16 + len, msg_id counts
  // up from 1.
  kMessage = 0,
  // u8 fds, u16 len, len bytes, sent as they are.
  kRaw = 1,
  // Runs the server until idle and reads what it sent.
  kPump = 2,
  // u8 mode, u32 errno, u16 len, len bytes: answers the oldest request the
  // server sent (DMA_READ/DMA_WRITE) on the socket it came from. mode bit 0:
  // error reply with that errno; bit 1: a well-formed payload for the
  // request instead of the bytes; bit 2: a wrong msg_id.
  kReplyToServer = 3,
  // u8 mode, u32 iova, u16 len: the server touches guest memory on its loop
  // thread. mode bit 0: write (else read); bit 1: Device::DmaRead/DmaWrite
  // (through the maps; EDEADLK for fd-less ones), else
  // Session::Dma{Read,Write}ByMessage.
  kServerDma = 4,
  // u16 n: later sends go out in pieces of n bytes (0: whole), the server
  // running between pieces.
  kChunk = 5,
  // u8 on: the client stops (odd) or resumes (even) reading what the server
  // sends.
  kStopReading = 6,
  // The client shuts down its sending side (the server sees EOF).
  kHalfClose = 7,
  // The client hangs up and a new one connects.
  kReconnect = 8,
  // u16 len, len bytes: a second client connects while the first is
  // attached, sends the bytes and hangs up.
  kSecondClient = 9,
  // As kMessage, on the twin socket (ignored without one).
  kTwinMessage = 10,
  // u8 what, u32 arg: device-side activity on the loop thread. what % 4:
  // 0 TriggerIrq(arg & 7, arg >> 8); 1 SetIntxLevel(arg & 1); 2 idio-16
  // SetInputs(arg) (DMA device: nothing); 3 DeviceServer::DisconnectClient.
  kDeviceEvent = 11,
  // u8 what: the client releases a resource it sent earlier. what % 2:
  // 0 truncates every memfd it sent (to 0 bytes; sealed ones refuse);
  // 1 closes its ends of every pipe it sent.
  kClientMischief = 12,
};
inline constexpr uint8_t kSessionOpCount = 13;

enum class FdKind : uint8_t {
  kMemfd = 0,        // 64 KiB memfd, unsealed
  kEventfd = 1,
  kPipe = 2,         // read end of a pipe (not mmap-able)
  kSealedMemfd = 3,  // 64 KiB memfd sealed against shrinking and growing
};
inline constexpr uint8_t kManyFds = 0xff;  // 20 eventfds
inline constexpr int kManyFdsCount = 20;
inline constexpr uint64_t kFuzzMemfdSize = 64 * 1024;

// Builds scripts (recorder, regression tests).
class SessionScript {
 public:
  explicit SessionScript(uint8_t config) { bytes_.push_back(config); }

  SessionScript& Message(uint16_t cmd, uint8_t flags, uint8_t fds,
                         const std::vector<uint8_t>& payload) {
    Op(SessionOp::kMessage);
    U16(cmd);
    bytes_.push_back(flags);
    bytes_.push_back(fds);
    Blob(payload);
    return *this;
  }
  SessionScript& Raw(uint8_t fds, const std::vector<uint8_t>& bytes) {
    Op(SessionOp::kRaw);
    bytes_.push_back(fds);
    Blob(bytes);
    return *this;
  }
  SessionScript& Pump() { return Op(SessionOp::kPump); }
  SessionScript& ReplyToServer(uint8_t mode, uint32_t err,
                               const std::vector<uint8_t>& payload = {}) {
    Op(SessionOp::kReplyToServer);
    bytes_.push_back(mode);
    U32(err);
    Blob(payload);
    return *this;
  }
  SessionScript& ServerDma(uint8_t mode, uint32_t iova, uint16_t len) {
    Op(SessionOp::kServerDma);
    bytes_.push_back(mode);
    U32(iova);
    U16(len);
    return *this;
  }
  SessionScript& Chunk(uint16_t n) {
    Op(SessionOp::kChunk);
    U16(n);
    return *this;
  }
  SessionScript& StopReading(bool on) {
    Op(SessionOp::kStopReading);
    bytes_.push_back(on ? 1 : 0);
    return *this;
  }
  SessionScript& HalfClose() { return Op(SessionOp::kHalfClose); }
  SessionScript& Reconnect() { return Op(SessionOp::kReconnect); }
  SessionScript& SecondClient(const std::vector<uint8_t>& bytes) {
    Op(SessionOp::kSecondClient);
    Blob(bytes);
    return *this;
  }
  SessionScript& TwinMessage(uint16_t cmd, uint8_t flags,
                             const std::vector<uint8_t>& payload) {
    Op(SessionOp::kTwinMessage);
    U16(cmd);
    bytes_.push_back(flags);
    bytes_.push_back(0);
    Blob(payload);
    return *this;
  }
  SessionScript& DeviceEvent(uint8_t what, uint32_t arg) {
    Op(SessionOp::kDeviceEvent);
    bytes_.push_back(what);
    U32(arg);
    return *this;
  }
  SessionScript& ClientMischief(uint8_t what) {
    Op(SessionOp::kClientMischief);
    bytes_.push_back(what);
    return *this;
  }

  const std::vector<uint8_t>& bytes() const { return bytes_; }

  // The `fds` byte for up to three fds of the given kinds.
  static uint8_t Fds(std::vector<FdKind> kinds) {
    uint8_t b = static_cast<uint8_t>(kinds.size() & 3);
    for (size_t i = 0; i < kinds.size() && i < 3; ++i) {
      b |= static_cast<uint8_t>((static_cast<uint8_t>(kinds[i]) & 3) << (2 + 2 * i));
    }
    return b;
  }

 private:
  SessionScript& Op(SessionOp op) {
    bytes_.push_back(static_cast<uint8_t>(op));
    return *this;
  }
  void U16(uint16_t v) {
    bytes_.push_back(static_cast<uint8_t>(v));
    bytes_.push_back(static_cast<uint8_t>(v >> 8));
  }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Blob(const std::vector<uint8_t>& b) {
    const size_t n = b.size() > 0xffff ? 0xffff : b.size();
    U16(static_cast<uint16_t>(n));
    bytes_.insert(bytes_.end(), b.begin(), b.begin() + n);
  }

  std::vector<uint8_t> bytes_;
};

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_SESSION_FUZZ_INPUT_H_
