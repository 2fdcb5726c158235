#include "core/message.h"

#include <cerrno>
#include <utility>

namespace vfio_user {

Message MakeCommand(uint16_t msg_id, Command cmd, std::vector<uint8_t> payload,
                    bool no_reply) {
  Message m;
  m.header.msg_id = msg_id;
  m.header.cmd = static_cast<uint16_t>(cmd);
  m.header.flags = kFlagsTypeCommand | (no_reply ? kFlagsNoReply : 0);
  m.payload = std::move(payload);
  m.header.msg_size = static_cast<uint32_t>(kHeaderSize + m.payload.size());
  return m;
}

Message MakeReply(const Header& request, std::vector<uint8_t> payload) {
  Message m;
  m.header.msg_id = request.msg_id;
  m.header.cmd = request.cmd;
  m.header.flags = kFlagsTypeReply;
  m.payload = std::move(payload);
  m.header.msg_size = static_cast<uint32_t>(kHeaderSize + m.payload.size());
  return m;
}

Message MakeErrorReply(const Header& request, int err) {
  Message m;
  m.header.msg_id = request.msg_id;
  m.header.cmd = request.cmd;
  m.header.flags = kFlagsTypeReply | kFlagsError;
  m.header.error = static_cast<uint32_t>(err > 0 ? err : EINVAL);
  m.header.msg_size = kHeaderSize;
  return m;
}

}  // namespace vfio_user
