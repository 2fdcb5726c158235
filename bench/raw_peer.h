// RawPeer: the floor for everything that crosses the socket -- a child
// process at the other end of an AF_UNIX stream socketpair that answers
// requests of a fixed size with replies of a fixed size, using nothing but
// read() and write(). No framing, no parsing, no allocation: what any
// message protocol between two processes must at least pay for the same
// byte counts.
//
// The peer reads whatever the socket holds (up to 1 MiB at a time), counts
// whole requests, and answers every `reply_every` of them with one reply,
// all replies due after one read going out in a single write (so it also
// serves as the floor for pipelined traffic).
//
// Thread-safety: one thread at a time per RawPeer.
#ifndef VFIO_USER_BENCH_RAW_PEER_H_
#define VFIO_USER_BENCH_RAW_PEER_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace vfio_user {
namespace bench {

class RawPeer {
 public:
  // Forks the answering child. REQUIRES: the caller is single-threaded
  // (see ForkChild). reply_every >= 1.
  static std::unique_ptr<RawPeer> Start(size_t request_bytes,
                                        size_t reply_bytes,
                                        size_t reply_every = 1);
  ~RawPeer();  // closes the socket (the child exits) and reaps the child
  RawPeer(const RawPeer&) = delete;
  RawPeer& operator=(const RawPeer&) = delete;

  // One request, then waits for one reply.
  void RoundTrip();
  // `n` requests in one write / `n` replies read in full.
  void SendRequests(size_t n);
  void ReceiveReplies(size_t n);

  size_t request_bytes() const { return request_bytes_; }
  pid_t pid() const { return pid_; }
  size_t reply_bytes() const { return reply_bytes_; }

 private:
  RawPeer(int fd, pid_t pid, size_t request_bytes, size_t reply_bytes);

  int fd_;
  pid_t pid_;
  size_t request_bytes_;
  size_t reply_bytes_;
  std::vector<uint8_t> out_;
  std::vector<uint8_t> in_;
};

}  // namespace bench
}  // namespace vfio_user

#endif  // VFIO_USER_BENCH_RAW_PEER_H_
