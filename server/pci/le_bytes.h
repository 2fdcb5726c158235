// Little-endian loads and stores for register images (private to
// //server/pci). PCI registers are little-endian whatever the host is.
// REQUIRES: `p` points at `width` (1..8) valid bytes.
#ifndef VFIO_USER_SERVER_PCI_LE_BYTES_H_
#define VFIO_USER_SERVER_PCI_LE_BYTES_H_

#include <cstdint>

namespace vfio_user {
namespace pci_internal {

inline uint64_t LoadLe(const uint8_t* p, int width) {
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

inline void StoreLe(uint8_t* p, int width, uint64_t v) {
  for (int i = 0; i < width; ++i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

}  // namespace pci_internal
}  // namespace vfio_user

#endif  // VFIO_USER_SERVER_PCI_LE_BYTES_H_
