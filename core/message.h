// Message: one whole vfio-user message as it crosses the socket.
//
// A Message owns its payload bytes (everything after the 16-byte header) and
// the file descriptors that arrived with it (SCM_RIGHTS). Codec functions
// (core/codec.h) turn payloads into typed values and back; the transport
// (core/transport.h) moves Messages. Move-only; not thread-safe.
#ifndef VFIO_USER_CORE_MESSAGE_H_
#define VFIO_USER_CORE_MESSAGE_H_

#include <cstdint>
#include <vector>

#include "core/protocol.h"
#include "core/unique_fd.h"

namespace vfio_user {

struct Message {
  Header header;                 // header.msg_size == 16 + payload.size() once sent/received
  std::vector<uint8_t> payload;  // bytes after the header
  std::vector<UniqueFd> fds;     // fds that arrived with (or will be sent with) the message
  // Set by the transport when the peer attached more fds than this side
  // accepts (MSG_CTRUNC): the extras were discarded by the kernel and the
  // message must be failed by whoever handles it (after closing `fds`).
  bool fds_truncated = false;
  // Set by Connection::ReceiveInto when it wrote the payload's bytes after
  // the first `keep` into the caller's ReceivePlacement buffer: `payload`
  // then holds those first bytes only.
  bool payload_placed = false;

  Message() = default;
  Message(Message&&) = default;
  Message& operator=(Message&&) = default;

  Command command() const { return static_cast<Command>(header.cmd); }
};

// Builds a command message (Type=command); msg_size is filled in.
Message MakeCommand(uint16_t msg_id, Command cmd, std::vector<uint8_t> payload,
                    bool no_reply = false);

// Builds the success reply to `request` (same msg_id and cmd, Type=reply).
Message MakeReply(const Header& request, std::vector<uint8_t> payload);

// Builds a header-only error reply to `request` carrying errno `err`
// (PROTOCOL.md §1: an error reply carries only the header).
Message MakeErrorReply(const Header& request, int err);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_MESSAGE_H_
