// Input format of the client fuzz target (client_fuzz_harness.h): what a
// hostile device server sends to the client library while the client runs
// the ExerciseClient() workload (client_exercise.h).
//
//   input  := config entry*
//   config := u8 (kClientConfig* bits: the client's options)
//   entry  := u8 opcode (ClientFuzzOp, taken modulo kClientFuzzOpCount)
//             + operands
//
// Operands are little-endian; an operand cut short reads as zeros and a byte
// string is truncated to what is left, so every input is a valid script.
// When the script ends the server hangs up (and refuses reconnects).
//
// File descriptors sent with a message (`fds` byte): bits 0-1 how many
// (0-3), bits 2-3, 4-5, 6-7 the kind of each (ServerFdKind).
//
// The seed corpus (tests/fuzz/corpus/client/) is recorded by
// record_fuzz_corpus.cc from the real sample servers answering the same
// workload; ClientScript writes scripts.
#ifndef VFIO_USER_TESTS_FUZZ_CLIENT_FUZZ_INPUT_H_
#define VFIO_USER_TESTS_FUZZ_CLIENT_FUZZ_INPUT_H_

#include <cstdint>
#include <vector>

namespace vfio_user {
namespace fuzz {

// ---- config byte ----
inline constexpr uint8_t kClientConfigTwin = 0x01;       // client offers a twin socket
inline constexpr uint8_t kClientConfigReconnect = 0x02;  // reconnect enabled
inline constexpr uint8_t kClientConfigSmallChunks = 0x04;  // 64-byte region chunks
inline constexpr uint8_t kClientConfigNoRetry = 0x08;    // no retry of idempotent reads

enum class ClientFuzzOp : uint8_t {
  // u8 mode, u32 errno, u8 fds, u16 len, len bytes: a reply to the oldest
  // request of the client's not answered yet (waiting briefly for one if
  // none is pending).
  // mode bit 0: Error flag with that errno; bit 1: msg_id + 1; bit 2: cmd + 1;
  // bit 3: the request stays pending (the next reply answers it again);
  // bit 4: No_reply flag set.
  kReply = 0,
  // u8 where (bit 0: on the twin socket, if any), u16 cmd, u8 flags, u8 fds,
  // u16 len, len bytes: a message of the server's own (DMA_READ/DMA_WRITE,
  // or anything), framed; msg_id counts up from 0x8000.
  kRequest = 1,
  // u8 fds, u16 len, len bytes on the main socket, as they are.
  kRaw = 2,
  // The server closes the connection (a reconnecting client comes back and
  // the script continues on the new connection).
  kHangUp = 3,
  // Waits until the client sends something (or a short timeout).
  kAwait = 4,
};
inline constexpr uint8_t kClientFuzzOpCount = 5;

enum class ServerFdKind : uint8_t {
  kMemfd = 0,    // 64 KiB memfd (a region fd)
  kEventfd = 1,
  kSocket = 2,   // one end of a socketpair; the server keeps the other as a twin
  kPipe = 3,
};

class ClientScript {
 public:
  explicit ClientScript(uint8_t config) { bytes_.push_back(config); }

  ClientScript& Reply(uint8_t mode, uint32_t err, uint8_t fds,
                      const std::vector<uint8_t>& payload) {
    Op(ClientFuzzOp::kReply);
    bytes_.push_back(mode);
    U32(err);
    bytes_.push_back(fds);
    Blob(payload);
    return *this;
  }
  ClientScript& Request(bool twin, uint16_t cmd, uint8_t flags, uint8_t fds,
                        const std::vector<uint8_t>& payload) {
    Op(ClientFuzzOp::kRequest);
    bytes_.push_back(twin ? 1 : 0);
    U16(cmd);
    bytes_.push_back(flags);
    bytes_.push_back(fds);
    Blob(payload);
    return *this;
  }
  ClientScript& Raw(uint8_t fds, const std::vector<uint8_t>& bytes) {
    Op(ClientFuzzOp::kRaw);
    bytes_.push_back(fds);
    Blob(bytes);
    return *this;
  }
  ClientScript& HangUp() { return Op(ClientFuzzOp::kHangUp); }
  ClientScript& Await() { return Op(ClientFuzzOp::kAwait); }

  const std::vector<uint8_t>& bytes() const { return bytes_; }

  static uint8_t Fds(const std::vector<ServerFdKind>& kinds) {
    uint8_t b = static_cast<uint8_t>(kinds.size() & 3);
    for (size_t i = 0; i < kinds.size() && i < 3; ++i) {
      b |= static_cast<uint8_t>((static_cast<uint8_t>(kinds[i]) & 3) << (2 + 2 * i));
    }
    return b;
  }

 private:
  ClientScript& Op(ClientFuzzOp op) {
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

#endif  // VFIO_USER_TESTS_FUZZ_CLIENT_FUZZ_INPUT_H_
