// Device: the public API for defining a vfio-user PCI device.
//
// A device author describes the function (config space, regions, interrupts)
// and supplies callbacks for trapped accesses; the engine (server/session.h,
// server/device_server.h) speaks the protocol. Reads like libvfio-user:
//
//   Device dev("my-nic");
//   dev.config().SetIds({.vendor_id = 0x1af4, ...});
//   dev.config().AddMemoryBar(0, 0x1000, ...);
//   dev.SetupRegion(0, RegionSpec::Trapped(0x1000, read_cb, write_cb));
//   dev.SetupRegion(2, RegionSpec::Memory(0x4000, {{0x1000, 0x3000}}));
//   dev.SetIrqCount(kPciMsixIrqIndex, 4);
//   ... then serve it: DeviceServer::Create(loop, &dev, socket_path).
//
// Threading: a Device is bound to one EventLoop (the one serving it). All
// region callbacks, reset and connection callbacks run on that loop thread.
// The runtime calls TriggerIrq / SetIntxLevel / DmaRead / DmaWrite may be
// called from any thread; DmaRead/DmaWrite of ranges the client mapped
// without an fd need a round trip to the client and therefore must NOT be
// called on the loop thread (they fail with EDEADLK there) — do such work on
// a worker thread, as the sample DMA device does.
#ifndef VFIO_USER_SERVER_DEVICE_H_
#define VFIO_USER_SERVER_DEVICE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/codec.h"
#include "core/protocol.h"
#include "core/unique_fd.h"
#include "server/dma_table.h"
#include "server/irq_controller.h"
#include "server/pci/config_space.h"
#include "server/pci/msix.h"

namespace vfio_user {

class EventLoop;
class DmaChannel;
class Session;

// Callbacks for accesses the device traps (not served from memory).
// `offset` is relative to the region start; the engine guarantees
// offset + data.size() <= region size. Return an errno-carrying status to
// fail the access (the client gets that errno).
using RegionReadFn =
    std::function<absl::Status(uint64_t offset, absl::Span<uint8_t> out)>;
using RegionWriteFn =
    std::function<absl::Status(uint64_t offset, absl::Span<const uint8_t> in)>;

struct RegionSpec {
  uint64_t size = 0;
  bool readable = true;
  bool writable = true;
  RegionReadFn read;    // trapped reads (nullptr: reads of trapped parts fail)
  RegionWriteFn write;  // trapped writes (nullptr: writes to trapped parts fail)
  // Memory backing. When set, the engine allocates a memfd of `size` bytes,
  // maps it for the device (RegionMemory()) and offers it to the client for
  // mmap. With `mmap_areas` empty the whole region is mappable; otherwise
  // only those areas are (sparse mmap) and the rest is trapped. REGION_READ/
  // WRITE to a mappable area are served from memory without a callback.
  bool memory_backed = false;
  std::vector<SparseMmapArea> mmap_areas;

  static RegionSpec Trapped(uint64_t size, RegionReadFn read, RegionWriteFn write);
  static RegionSpec Memory(uint64_t size, std::vector<SparseMmapArea> areas = {},
                           RegionReadFn read = nullptr,
                           RegionWriteFn write = nullptr);
};

enum class ResetReason {
  kClientRequest,   // DEVICE_RESET
  kFunctionLevel,   // FLR through the PCIe capability
  kLostConnection,  // the client went away (only if reset_on_disconnect)
};
const char* ResetReasonName(ResetReason reason);

// Migration hooks (device state save/load). The engine runs the vfio-user
// migration state machine (DEVICE_FEATURE / MIG_DATA_*) on top of these.
struct MigrationCallbacks {
  // Called when the device must stop (RUNNING -> STOP) or run again.
  std::function<void(bool running)> set_running;
  // Serializes the complete device state (device-specific registers; config
  // space and MSI-X state are saved by the engine).
  std::function<absl::StatusOr<std::vector<uint8_t>>()> save;
  // Restores a state produced by `save`; must validate it.
  std::function<absl::Status(absl::Span<const uint8_t>)> load;
};

// Counters the engine keeps per device (for status reporting).
struct DeviceCounters {
  std::atomic<uint64_t> messages{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> region_reads{0};
  std::atomic<uint64_t> region_writes{0};
  std::atomic<uint64_t> dma_maps{0};
  std::atomic<uint64_t> dma_unmaps{0};
  std::atomic<uint64_t> dma_messages{0};
  std::atomic<uint64_t> irqs_triggered{0};
  std::atomic<uint64_t> resets{0};
  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> disconnects{0};
};

class Device {
 public:
  // `pcie`: 4 KiB config space with a PCI Express capability; else 256 bytes.
  explicit Device(std::string name, bool pcie = false);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const { return name_; }

  // ---- Description (before the device is served) ----
  PciConfigSpace& config() { return config_; }
  // Regions 0-5 (BARs), 6 (ROM), 8 (VGA) and device-specific >= 9. Region 7
  // (config space) is always provided by the engine from config().
  absl::Status SetupRegion(uint32_t index, RegionSpec spec);
  // Interrupt vector counts (index: kPci*IrqIndex). By default they follow
  // the config space: INTx 1 if an interrupt pin is set, MSI / MSI-X from
  // their capabilities, ERR and REQ 1.
  void SetIrqCount(uint32_t index, uint32_t count);
  void SetResetCallback(std::function<void(ResetReason)> fn) { on_reset_ = std::move(fn); }
  // Called on the loop thread when a client attaches (after VERSION) / goes.
  void SetConnectionCallbacks(std::function<void()> on_attach,
                              std::function<void()> on_detach);
  // Reset the device when a client disconnects (libvfio-user does this);
  // default false: state is kept for the next client, as the spec suggests.
  void set_reset_on_disconnect(bool v) { reset_on_disconnect_ = v; }
  void SetMigrationCallbacks(MigrationCallbacks cb) { migration_ = std::move(cb); }
  // Limits this device enforces on its clients.
  void set_max_dma_maps(uint64_t n) { max_dma_maps_ = n; }

  // ---- Runtime API for device logic ----
  // Raises an edge interrupt (MSI / MSI-X / ERR / REQ). Honors masking: a
  // masked vector becomes pending and fires when unmasked. Any thread.
  absl::Status TriggerIrq(uint32_t index, uint32_t vector);
  // Sets the INTx line level (level-triggered, auto-masked). The engine
  // mirrors it in the config-space Interrupt Status bit and keeps it off the
  // wire while Command.Interrupt Disable is set. Any thread (applied on the
  // loop thread).
  void SetIntxLevel(bool asserted);
  // Guest-memory access through the client's DMA maps (any thread; see the
  // header comment for message-backed ranges). EFAULT outside the maps,
  // EPERM against the map's protection, ENOTCONN without a client.
  absl::Status DmaRead(uint64_t iova, absl::Span<uint8_t> out);
  absl::Status DmaWrite(uint64_t iova, absl::Span<const uint8_t> in);
  // Zero-copy guest-memory access (like libvfio-user's vfu_sgl_get/put):
  // runs fn(span) on the server's mapping of [iova, iova + len), which must
  // lie within one map the client passed with an fd; the mapping is held
  // (DMA_UNMAP waits) until fn returns. A device that touches a buffer many
  // times (a ring, a 4 KiB block in pieces) pays the lookup once instead of
  // per DmaRead/DmaWrite: inside fn every access is a plain load or store.
  // Errors as DmaTable::WithMappedRange (EFAULT, EPERM, IsMessageOnly() for
  // a map without an fd: use DmaRead/DmaWrite then), plus ENOTCONN without
  // a client. REQUIRES: len > 0; fn is short and does not call back into
  // DMA (it delays DMA_MAP/DMA_UNMAP). Any thread.
  absl::Status WithDmaMapping(uint64_t iova, size_t len, bool write,
                              absl::FunctionRef<void(absl::Span<uint8_t>)> fn);
  // Host pointer of a memory-backed region (nullptr otherwise).
  uint8_t* RegionMemory(uint32_t index);
  // The loop serving this device (nullptr before it is served).
  EventLoop* loop() const { return loop_; }
  bool client_attached() const { return session_ != nullptr; }
  const DeviceCounters& counters() const { return counters_; }

  // ---- Engine side (server/session.cc, device_server.cc) ----
  struct Region {
    RegionSpec spec;
    UniqueFd memfd;
    uint8_t* memory = nullptr;  // mapping of memfd, spec.size bytes
  };
  // Completes the description: allocates memory backings, derives IRQ
  // counts and MSI-X routing. Called once by DeviceServer.
  absl::Status Finalize(EventLoop* loop);
  const Region* region(uint32_t index) const;
  uint32_t num_regions() const;
  DeviceInfo GetInfo() const;
  absl::StatusOr<RegionInfo> GetRegionInfo(uint32_t index) const;
  int RegionFd(uint32_t index) const;  // memfd for mappable regions, else -1
  absl::Status RegionRead(uint32_t index, uint64_t offset, absl::Span<uint8_t> out);
  absl::Status RegionWrite(uint32_t index, uint64_t offset,
                           absl::Span<const uint8_t> in);
  void Reset(ResetReason reason);
  // Migration stream: engine state (config space, MSI-X table) followed by
  // the device's own state from MigrationCallbacks::save.
  absl::StatusOr<std::vector<uint8_t>> SaveMigrationState();
  absl::Status LoadMigrationState(absl::Span<const uint8_t> state);
  IrqController& irqs() { return *irqs_; }
  DmaTable& dma() { return *dma_; }
  DeviceCounters& mutable_counters() { return counters_; }
  const MigrationCallbacks& migration() const { return migration_; }
  uint64_t max_dma_maps() const { return max_dma_maps_; }
  // Session attach/detach (loop thread).
  void Attach(Session* session);
  void Detach();
  Session* session() const { return session_; }
  // The attached session's twin-socket DMA channel (null: none), through
  // which worker threads do DMA by message themselves. Any thread.
  void SetDmaChannel(std::shared_ptr<DmaChannel> channel);

 private:
  // A worker thread waiting for a DMA_READ/DMA_WRITE round trip.
  struct PendingMessageDma {
    absl::Notification done;
    absl::Status result;
    std::vector<uint8_t> buffer;
    bool finished = false;  // loop thread
    // Records the outcome and wakes the worker, once. REQUIRES: loop thread.
    void Finish(absl::Status status);
  };

  absl::Status DmaAccess(uint64_t iova, uint8_t* buf, size_t len, bool write);
  // True if guest memory is reachable: the device is served and a client
  // is attached. Otherwise DmaUnavailableError() says which (ENODEV,
  // ENOTCONN).
  bool DmaAvailable() const { return dma_ != nullptr && session_ != nullptr; }
  absl::Status DmaUnavailableError() const;
  void ApplyIntxLevel(bool asserted);
  absl::Status CheckAccess(uint32_t index, uint64_t offset, size_t len,
                           bool write, const Region** region) const;
  bool InMmapArea(const Region& region, uint64_t offset, size_t len) const;
  absl::Status MsixBarRead(uint32_t index, uint64_t offset, absl::Span<uint8_t> out);
  absl::Status MsixBarWrite(uint32_t index, uint64_t offset,
                            absl::Span<const uint8_t> in);
  void ApplyMsixMasks();
  absl::Status SetupMsix();
  absl::Status SetupConfigCallbacks();

  std::string name_;
  PciConfigSpace config_;
  std::vector<std::optional<Region>> regions_;
  std::array<std::optional<uint32_t>, kPciNumIrqs> irq_counts_{};
  std::unique_ptr<IrqController> irqs_;
  std::unique_ptr<DmaTable> dma_;
  std::unique_ptr<MsixTable> msix_;
  // Vectors whose mask bit the guest wrote through the MSI-X table in our
  // BAR (QEMU emulates the table itself and masks with SET_IRQS instead, so
  // untouched vectors must not inherit the table's power-on mask).
  std::vector<bool> msix_mask_written_;
  PciConfigCallbacks author_config_callbacks_;
  bool finalized_ = false;
  std::function<void(ResetReason)> on_reset_;
  std::function<void()> on_attach_, on_detach_;
  bool reset_on_disconnect_ = false;
  bool intx_level_ = false;  // loop thread
  MigrationCallbacks migration_;
  uint64_t max_dma_maps_ = kDefaultMaxDmaMaps;
  EventLoop* loop_ = nullptr;
  std::atomic<Session*> session_{nullptr};
  DeviceCounters counters_;
  // Cleared by the destructor (loop thread); guards tasks posted to the loop.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  absl::Mutex pending_dma_mu_;
  absl::flat_hash_set<std::shared_ptr<PendingMessageDma>> pending_message_dma_
      ABSL_GUARDED_BY(pending_dma_mu_);
  std::shared_ptr<DmaChannel> dma_channel_ ABSL_GUARDED_BY(pending_dma_mu_);
};

}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_DEVICE_H_
