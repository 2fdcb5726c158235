// FramedChannel: small protobuf messages over a connected SOCK_STREAM socket
// (the daemon <-> worker control channel, controlplane/worker.proto).
//
// Frame: 4-byte little-endian length, then that many bytes of serialized
// message. Frames larger than kMaxFrameSize are a protocol error. The socket
// is non-blocking; reads take what is there (ReadAvailable, for an event
// loop) or wait with a deadline (ReadFrame). Any error is final: the
// channel is broken and every later call fails with the same status.
//
// Thread-safety: one sending thread and one receiving thread at most.
#ifndef VFIO_USER_CONTROLPLANE_FRAMED_CHANNEL_H_
#define VFIO_USER_CONTROLPLANE_FRAMED_CHANNEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/unique_fd.h"
#include "google/protobuf/message_lite.h"

namespace vfio_user::controlplane {

class FramedChannel {
 public:
  static constexpr size_t kMaxFrameSize = 1 << 20;

  // Takes ownership of the socket and makes it non-blocking.
  explicit FramedChannel(UniqueFd socket);
  FramedChannel(const FramedChannel&) = delete;
  FramedChannel& operator=(const FramedChannel&) = delete;

  int fd() const { return socket_.get(); }

  // Sends one message, waiting up to `timeout` for socket buffer space
  // (ZeroDuration: never wait; a full socket is then an error).
  absl::Status Send(const google::protobuf::MessageLite& message,
                    absl::Duration timeout);

  // Reads whatever the socket has now and appends every complete frame to
  // `frames`. UNAVAILABLE "peer closed" on EOF (after the frames that came
  // before it were appended).
  absl::Status ReadAvailable(std::vector<std::string>* frames);

  // Waits up to `timeout` for the next frame (DEADLINE_EXCEEDED if none).
  absl::StatusOr<std::string> ReadFrame(absl::Duration timeout);

 private:
  // Moves complete frames out of in_.
  absl::Status ExtractFrames(std::vector<std::string>* frames);
  absl::Status Fail(absl::Status status);

  UniqueFd socket_;
  std::string in_;
  std::vector<std::string> ready_;  // frames read but not yet returned
  absl::Status send_error_;
  absl::Status receive_error_;
};

}  // namespace vfio_user::controlplane

#endif  // VFIO_USER_CONTROLPLANE_FRAMED_CHANNEL_H_
