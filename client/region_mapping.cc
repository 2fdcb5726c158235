#include "client/region_mapping.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/protocol.h"

namespace vfio_user {
namespace {

uint64_t PageSize() { return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)); }

int ProtForRegion(const RegionInfo& info) {
  int prot = 0;
  if (info.flags & kRegionInfoFlagRead) prot |= PROT_READ;
  if (info.flags & kRegionInfoFlagWrite) prot |= PROT_WRITE;
  return prot;
}

}  // namespace

std::vector<SparseMmapArea> MappableAreas(const RegionInfo& info) {
  std::vector<SparseMmapArea> areas;
  if (info.sparse_areas.has_value()) {
    for (const SparseMmapArea& a : *info.sparse_areas) {
      if (a.size > 0) areas.push_back(a);
    }
  } else if (info.size > 0) {
    areas.push_back({0, info.size});
  }
  return areas;
}

RegionMapping::~RegionMapping() {
  if (registry_) registry_->Unregister(this);
  for (const Area& area : areas_) ::munmap(area.data, area.size);
}

uint8_t* RegionMapping::At(uint64_t offset, uint64_t length) const {
  for (const Area& area : areas_) {
    if (offset >= area.offset && length <= area.size &&
        offset - area.offset <= area.size - length) {
      return area.data + (offset - area.offset);
    }
  }
  return nullptr;
}

absl::StatusOr<std::unique_ptr<RegionMapping>> MappingRegistry::Map(
    const RegionInfo& info, int region_fd) {
  if ((info.flags & kRegionInfoFlagMmap) == 0 || region_fd < 0) {
    return ErrnoError(EINVAL, absl::StrCat("region ", info.index,
                                           " is not mappable"));
  }
  const std::vector<SparseMmapArea> areas = MappableAreas(info);
  if (areas.empty()) {
    return ErrnoError(EINVAL, absl::StrCat("region ", info.index,
                                           " has nothing to map"));
  }
  const int prot = ProtForRegion(info);
  std::unique_ptr<RegionMapping> mapping(
      new RegionMapping(shared_from_this(), info.index, prot));
  const uint64_t page = PageSize();
  for (const SparseMmapArea& a : areas) {
    // The decoder checked the area lies inside [0, size); the file offset
    // must not wrap and must be page aligned for mmap.
    const uint64_t file_offset = info.offset + a.offset;
    if (file_offset < info.offset || file_offset % page != 0 ||
        file_offset > static_cast<uint64_t>(INT64_MAX) - a.size) {
      return ErrnoError(EINVAL, absl::StrCat("region ", info.index,
                                             " area at 0x", absl::Hex(a.offset),
                                             " has an unusable file offset 0x",
                                             absl::Hex(file_offset)));
    }
    void* p = ::mmap(nullptr, a.size, prot, MAP_SHARED, region_fd,
                     static_cast<off_t>(file_offset));
    if (p == MAP_FAILED) {
      return ErrnoError(errno, absl::StrCat("mmap of region ", info.index,
                                            " area at 0x", absl::Hex(a.offset)));
    }
    // Recorded at once so the destructor unmaps it if a later area fails.
    mapping->areas_.push_back({a.offset, a.size, static_cast<uint8_t*>(p)});
  }
  absl::MutexLock lock(&mu_);
  live_.insert(mapping.get());
  return mapping;
}

int MappingRegistry::Remap(const RegionInfo& info, int region_fd) {
  absl::MutexLock lock(&mu_);
  int stale = 0;
  for (RegionMapping* mapping : live_) {
    if (mapping->region_ != info.index || mapping->stale()) continue;
    bool ok = region_fd >= 0;
    for (const RegionMapping::Area& area : mapping->areas_) {
      if (!ok) break;
      ok = ::mmap(area.data, area.size, mapping->prot_, MAP_SHARED | MAP_FIXED,
                  region_fd, static_cast<off_t>(info.offset + area.offset)) !=
           MAP_FAILED;
    }
    if (!ok) {
      // Never leave a hole another mmap could reuse while the owner still
      // holds pointers: private zero pages at the same addresses.
      for (const RegionMapping::Area& area : mapping->areas_) {
        ::mmap(area.data, area.size, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      }
      mapping->stale_.store(true, std::memory_order_release);
      ++stale;
      Log(LogLevel::kWarn, "client", "region mapping went stale on reconnect",
          {{"region", absl::StrCat(info.index)}});
    }
  }
  return stale;
}

size_t MappingRegistry::live() const {
  absl::MutexLock lock(&mu_);
  return live_.size();
}

void MappingRegistry::Unregister(RegionMapping* mapping) {
  absl::MutexLock lock(&mu_);
  live_.erase(mapping);
}

}  // namespace vfio_user
