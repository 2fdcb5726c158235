// FakeServer: a small, scriptable vfio-user server for the client's tests,
// built from core/ only (real sockets, real fds, the real codec and
// negotiation). Test-only.
//
// It listens on a Unix socket path, serves one connection at a time on its
// own thread, answers VERSION (core ServerNegotiate, twin socket included),
// DEVICE_GET_INFO, GET_REGION_INFO (argsz-honoring, with the region memfd
// attached to mappable regions), GET_IRQ_INFO, SET_IRQS, DMA_MAP/UNMAP,
// REGION_READ/WRITE (each region is backed by a memfd) and DEVICE_RESET, and
// records what it received so tests can check it. A hook sees every request
// first and can replace the answer: misbehave on purpose (wrong sizes, wrong
// ids, garbage bytes, silence, hanging up). Tests can also send DMA_READ /
// DMA_WRITE requests to the client and await the replies.
//
// Kill() closes everything (as a crashed server would); a new FakeServer on
// the same path plays the restarted server.
//
// Thread-safety: all public methods are thread-safe. The hook runs on the
// serving thread.
#ifndef VFIO_USER_CLIENT_FAKE_SERVER_H_
#define VFIO_USER_CLIENT_FAKE_SERVER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/codec.h"
#include "core/message.h"
#include "core/request_tracker.h"
#include "core/transport.h"
#include "core/unique_fd.h"
#include "core/version.h"

namespace vfio_user {
namespace testing {

struct FakeDeviceConfig {
  DeviceInfo info;                 // num_regions/num_irqs filled from below
  std::vector<RegionInfo> regions;  // index i at [i]
  std::vector<IrqInfo> irqs;        // index i at [i]
  Capabilities caps;                // the server's own limits
  bool offer_twin_socket = true;
  // Region content written before the server starts listening.
  std::map<uint32_t, std::vector<uint8_t>> initial_region_bytes;
  // Called after a REGION_WRITE was stored; may rewrite the backing (e.g.
  // BAR sizing semantics). Runs on the serving thread.
  std::function<void(class FakeServer&, uint32_t region, uint64_t offset,
                     ByteSpan data)>
      on_region_write;
};

// A PCI-like device: BAR0 (8 KiB, mappable with two sparse areas), BAR2
// (4 KiB, read/write, not mappable), config space (256 bytes), MSI-X with 8
// maskable vectors, INTx 1 vector, the rest absent.
FakeDeviceConfig DefaultDevice();

class FakeServer {
 public:
  // One client connection, as the hook sees it.
  class Session {
   public:
    // Sends `message` as is (header.msg_size recomputed).
    absl::Status Send(const Message& message);
    // Writes raw bytes to the socket (garbage, partial messages).
    absl::Status SendRaw(absl::Span<const uint8_t> bytes);
    absl::Status Reply(const Header& request, std::vector<uint8_t> payload);
    absl::Status ReplyError(const Header& request, int err);
    // Hangs up (the client sees EOF).
    void Close();

   private:
    friend class FakeServer;
    std::unique_ptr<Connection> conn;
    std::unique_ptr<Connection> twin;  // our end, if negotiated
    absl::Mutex send_mu;
    RequestTracker tracker;  // our DMA requests on the main socket
  };

  enum class HookResult { kDefault, kHandled };
  using Hook = std::function<HookResult(Session& session, Message& request)>;

  struct DmaMapRecord {
    DmaMapRequest request;
    std::shared_ptr<UniqueFd> fd;  // null if none was passed
  };
  struct SetIrqsRecord {
    SetIrqs request;
    std::vector<std::shared_ptr<UniqueFd>> fds;
  };

  // Starts listening on `path` (a stale socket there is replaced).
  FakeServer(std::string path, FakeDeviceConfig config);
  ~FakeServer();
  FakeServer(const FakeServer&) = delete;
  FakeServer& operator=(const FakeServer&) = delete;

  // Stops serving and closes the listening socket and the connection.
  void Kill();
  // Hangs up on the current client but keeps listening.
  void DropClient();

  void SetHook(Hook hook);

  // ---- What was received ----
  std::vector<uint16_t> commands() const;         // every request, in order
  size_t CountCommand(Command cmd) const;
  std::vector<DmaMapRecord> dma_maps() const;     // the current map table
  std::vector<SetIrqsRecord> set_irqs() const;    // every SET_IRQS, in order
  std::vector<std::pair<uint32_t, uint32_t>> region_info_requests() const;
  std::vector<RegionAccess> region_writes() const;  // data left empty
  uint64_t resets() const;
  uint64_t connections() const;  // accepted so far
  bool connected() const;
  bool twin_socket() const;
  // The eventfd currently wired to (index, vector), or -1.
  int WiredEventfd(uint32_t index, uint32_t vector) const;
  // Writes 1 to that eventfd (raises the interrupt). False if none.
  bool Trigger(uint32_t index, uint32_t vector) const;

  // Blocks until `predicate` (which may call the accessors above) holds or
  // `timeout` passes; returns the last value.
  bool WaitFor(const std::function<bool()>& predicate,
               absl::Duration timeout = absl::Seconds(10)) const;

  // ---- Region backing ----
  std::vector<uint8_t> RegionBytes(uint32_t index, uint64_t offset,
                                   uint64_t size) const;
  void SetRegionBytes(uint32_t index, uint64_t offset, ByteSpan bytes);
  int region_fd(uint32_t index) const;

  // ---- Server -> client requests ----
  // Sends DMA_READ / DMA_WRITE (on the twin socket if negotiated) and waits
  // for the reply (an error reply comes back as its status).
  absl::StatusOr<Message> DmaRead(uint64_t address, uint64_t count,
                                  absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<Message> DmaWrite(uint64_t address, ByteSpan data,
                                   absl::Duration timeout = absl::Seconds(5));
  // Any request (msg_id assigned here), e.g. an unknown command or one
  // carrying fds.
  absl::StatusOr<Message> SendRequest(Command cmd, std::vector<uint8_t> payload,
                                      std::vector<UniqueFd> fds = {},
                                      absl::Duration timeout = absl::Seconds(5));

  const std::string& path() const { return path_; }

 private:
  void AcceptLoop();
  void Serve(std::shared_ptr<Session> session);
  void Handle(Session& session, Message& request);
  absl::StatusOr<std::vector<uint8_t>> HandleVersion(Session& session,
                                                     Message& request,
                                                     std::vector<UniqueFd>* fds);
  absl::StatusOr<std::vector<uint8_t>> HandleRegionInfo(
      Message& request, std::vector<UniqueFd>* fds);
  absl::StatusOr<std::vector<uint8_t>> HandleSetIrqs(Message& request);
  absl::StatusOr<std::vector<uint8_t>> HandleDmaMap(Message& request);
  absl::StatusOr<std::vector<uint8_t>> HandleDmaUnmap(Message& request);
  absl::StatusOr<std::vector<uint8_t>> HandleRegionRead(Message& request);
  absl::StatusOr<std::vector<uint8_t>> HandleRegionWrite(Message& request);
  void Notify() const;
  std::shared_ptr<Session> current_session() const;

  const std::string path_;
  FakeDeviceConfig config_;
  std::vector<UniqueFd> region_memfds_;  // fixed after construction
  UniqueFd listen_fd_;
  UniqueFd stop_fd_;  // eventfd: wakes the accept loop
  std::thread thread_;

  mutable absl::Mutex mu_;
  Hook hook_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Session> session_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<uint16_t> commands_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, DmaMapRecord> dma_maps_ ABSL_GUARDED_BY(mu_);
  std::vector<SetIrqsRecord> set_irqs_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<uint32_t, uint32_t>, std::shared_ptr<UniqueFd>> wired_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<uint32_t, uint32_t>> region_info_requests_
      ABSL_GUARDED_BY(mu_);
  std::vector<RegionAccess> region_writes_ ABSL_GUARDED_BY(mu_);
  uint64_t resets_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t connections_ ABSL_GUARDED_BY(mu_) = 0;
  bool twin_ ABSL_GUARDED_BY(mu_) = false;

  // WaitFor(): every change signals under wait_mu_ (no lost wake-ups).
  mutable absl::Mutex wait_mu_;
  mutable absl::CondVar wait_cv_;
};

// A short, unique per-test socket path:
// /tmp/vfu-<tag>.<pid>.<random>.<n>.sock
std::string TestSocketPath(const std::string& tag);

}  // namespace testing
}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_FAKE_SERVER_H_
