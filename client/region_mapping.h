// RegionMapping: a device region (or its sparse areas) mmap'ed into this
// process through the region fd the server sent with GET_REGION_INFO.
//
// RAII: the areas are unmapped when the object is destroyed. It may outlive
// the Client that made it (the registry it is listed in is shared).
//
// Reconnect: the Client keeps every live mapping in a MappingRegistry. After
// a reconnect the new server sends new region fds; the client maps each
// live mapping's areas again AT THE SAME ADDRESSES (mmap MAP_FIXED replaces
// the old pages atomically), so pointers taken from a mapping stay valid and
// now reach the new server's memory. If that remap fails, the areas are
// replaced by private anonymous zero pages (accesses do not crash, but reach
// nothing) and stale() becomes true. A reconnect only succeeds if the
// region's size, flags and sparse areas are unchanged (see client.h).
//
// Thread-safety: accessors are thread-safe. Accesses to the mapped memory
// itself are plain loads and stores (device-register semantics are the
// device's business).
#ifndef VFIO_USER_CLIENT_REGION_MAPPING_H_
#define VFIO_USER_CLIENT_REGION_MAPPING_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/codec.h"

namespace vfio_user {

class MappingRegistry;

class RegionMapping {
 public:
  struct Area {
    uint64_t offset = 0;  // within the region
    uint64_t size = 0;
    uint8_t* data = nullptr;
  };

  ~RegionMapping();
  RegionMapping(const RegionMapping&) = delete;
  RegionMapping& operator=(const RegionMapping&) = delete;

  uint32_t region() const { return region_; }
  const std::vector<Area>& areas() const { return areas_; }
  // Pointer to region offset `offset` if [offset, offset+length) lies inside
  // one mapped area, else nullptr.
  uint8_t* At(uint64_t offset, uint64_t length = 1) const;
  // True once a reconnect could not remap this mapping.
  bool stale() const { return stale_.load(std::memory_order_acquire); }

 private:
  friend class MappingRegistry;
  RegionMapping(std::shared_ptr<MappingRegistry> registry, uint32_t region,
                int prot)
      : registry_(std::move(registry)), region_(region), prot_(prot) {}

  std::shared_ptr<MappingRegistry> registry_;
  const uint32_t region_;
  const int prot_;              // PROT_* the areas are mapped with
  std::vector<Area> areas_;     // fixed after creation (addresses never move)
  std::atomic<bool> stale_{false};
};

// The live mappings of one client. Shared between the Client and its
// mappings.
class MappingRegistry : public std::enable_shared_from_this<MappingRegistry> {
 public:
  // Maps `info`'s sparse areas (or the whole region when it has none)
  // through `region_fd`. EINVAL when the region is not mappable, an area is
  // not page aligned, or it has nothing to map; mmap's errno otherwise.
  absl::StatusOr<std::unique_ptr<RegionMapping>> Map(const RegionInfo& info,
                                                     int region_fd);

  // After a reconnect: maps every live mapping of region `info.index` again
  // at its addresses through `region_fd` (see the header comment). Returns
  // how many mappings went stale.
  int Remap(const RegionInfo& info, int region_fd);

  size_t live() const;

 private:
  friend class RegionMapping;
  void Unregister(RegionMapping* mapping);

  mutable absl::Mutex mu_;
  std::set<RegionMapping*> live_ ABSL_GUARDED_BY(mu_);
};

// The areas mmap exposes for `info`: its sparse areas, or [0, size) when it
// has none; areas of size 0 are dropped.
std::vector<SparseMmapArea> MappableAreas(const RegionInfo& info);

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_REGION_MAPPING_H_
