// DmaChannel: server->client DMA_READ / DMA_WRITE on the twin socket, carried
// out by the thread that needs the guest memory.
//
// Device::DmaRead/DmaWrite of memory the client mapped without an fd need a
// round trip to the client. Handing each one to the event-loop thread and
// back costs two extra thread wake-ups per round trip (about twice a region
// round trip). With a twin socket -- which carries nothing but these
// requests and their replies -- the device's worker thread sends the request
// and reads the reply itself instead: one sendmsg() and one recvmsg() on
// that thread, the cost of a client's region access.
//
// The loop's own asynchronous DMA (Session::DmaReadByMessage) uses the same
// socket; the two never overlap. The loop takes the socket while it has
// requests in flight (TryAcquireForLoop .. ReleaseFromLoop) and watches it
// only then; Access() declines meanwhile (std::nullopt: take the loop path),
// and the loop defers new requests while an access runs (TryAcquireForLoop
// false; `on_resume` tells it when to go). Whoever owns the socket at a time
// is its only reader and writer.
//
// A timeout, a disconnect or a reply that does not match leaves the stream
// untrustworthy: the channel closes itself and calls `on_broken` once (the
// session then closes, as for the loop's own requests). An error reply is
// just that access's error.
//
// Thread-safety: all methods are thread-safe. Access() must not be called on
// the loop thread (it waits for the client).
#ifndef VFIO_USER_SERVER_DMA_CHANNEL_H_
#define VFIO_USER_SERVER_DMA_CHANNEL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/transport.h"

namespace vfio_user {

class Device;

class DmaChannel {
 public:
  struct Options {
    DmaLayout layout = DmaLayout::kSpec;
    // Largest count per request: the client's max_data_xfer_size.
    uint64_t max_chunk = kDefaultMaxDataXferSize;
    // How long one request waits for its reply.
    absl::Duration timeout = absl::Seconds(5);
  };
  using BrokenFn = std::function<void(const absl::Status& why)>;
  using ResumeFn = std::function<void()>;

  // `twin` is shared with the session (which also sends on it from the
  // loop); `device` (counters, dirty logging) must outlive the channel's
  // accesses. The callbacks run on the accessing thread, no lock held.
  DmaChannel(std::shared_ptr<Connection> twin, Options options, Device* device,
             BrokenFn on_broken, ResumeFn on_resume);
  DmaChannel(const DmaChannel&) = delete;
  DmaChannel& operator=(const DmaChannel&) = delete;

  // Reads (or writes) guest memory [iova, iova + len) by messages, in chunks
  // of max_chunk, on the calling thread. Concurrent calls run one after the
  // other. std::nullopt: the channel is closed or the loop has requests in
  // flight; nothing was sent (use the loop's path).
  std::optional<absl::Status> Access(uint64_t iova, uint8_t* buf, size_t len,
                                     bool write);

  // ---- Loop side ----
  // Before the loop sends requests on the twin socket (and watches it for
  // their replies): false while an access runs (defer them; on_resume runs
  // when the access ends). A true lasts until ReleaseFromLoop(), called
  // when the loop has no request in flight and has stopped reading the
  // socket.
  bool TryAcquireForLoop();
  void ReleaseFromLoop();
  // A message id for a request on the twin socket (shared by both sides).
  uint16_t NextMsgId() { return next_msg_id_.fetch_add(1); }
  // No accesses from now on; wakes those waiting for their turn.
  void Close();

 private:
  // One request and its reply. Sets *broken when the stream can no longer
  // be trusted.
  absl::Status Exchange(uint64_t iova, uint8_t* buf, size_t len, bool write,
                        bool* broken);

  const std::shared_ptr<Connection> twin_;
  const Options options_;
  Device* const device_;
  const BrokenFn on_broken_;
  const ResumeFn on_resume_;
  std::atomic<uint16_t> next_msg_id_{1};

  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool access_running_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_owns_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_deferred_ ABSL_GUARDED_BY(mu_) = false;

  // The accessing thread's reply buffer (reused; guarded by access_running_).
  Message reply_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DMA_CHANNEL_H_
