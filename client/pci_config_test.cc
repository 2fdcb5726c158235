// Config-space decoding and BAR sizing on synthetic config spaces,
// including malformed capability chains from an untrusted device.
#include "client/pci_config.h"

#include <cstring>
#include <map>
#include <vector>

#include "core/errno_status.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

void Put(std::vector<uint8_t>& c, uint32_t offset, uint32_t value, int width) {
  for (int i = 0; i < width; ++i) c[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

// An Ethernet function with PM (0x40), MSI-X (0x50), PCIe (0x60), MSI (0x70)
// and two extended capabilities (AER at 0x100, DSN at 0x140).
std::vector<uint8_t> SampleConfig(size_t size = 4096) {
  std::vector<uint8_t> c(size, 0);
  Put(c, 0x00, 0x1af4, 2);
  Put(c, 0x02, 0x1041, 2);
  Put(c, 0x04, 0x0406, 2);  // Mem, BusMaster, DisINTx
  Put(c, 0x06, 0x0010, 2);  // capability list
  Put(c, 0x08, 0x02000001, 4);  // class 020000, rev 1
  Put(c, 0x2c, 0x1af4, 2);
  Put(c, 0x2e, 0x1100, 2);
  Put(c, 0x34, 0x40, 1);
  Put(c, 0x3d, 0x01, 1);
  Put(c, 0x40, 0x5001, 2);            // PM, next 0x50
  Put(c, 0x42, 0x0603, 2);            // version 3, D1 D2
  Put(c, 0x44, 0x0003, 2);            // D3hot
  Put(c, 0x50, 0x6011, 2);            // MSI-X, next 0x60
  Put(c, 0x52, 0x8007, 2);            // enabled, 8 entries
  Put(c, 0x54, 0x00001000, 4);        // table BAR0 + 0x1000
  Put(c, 0x58, 0x00001802, 4);        // PBA BAR2 + 0x1800
  Put(c, 0x60, 0x7010, 2);            // PCIe, next 0x70
  Put(c, 0x62, 0x0002, 2);            // v2 endpoint
  Put(c, 0x64, 0x10000001, 4);        // FLR, MPS 256
  Put(c, 0x6c, 0x00000043, 4);        // link cap 8GT/s x4
  Put(c, 0x70, 0x0005, 2);            // MSI, end
  Put(c, 0x72, 0x0181, 2);            // enabled, 64-bit, maskable
  Put(c, 0x74, 0xfee00000, 4);
  Put(c, 0x7c, 0x4021, 2);            // data
  if (size > 0x100) {
    Put(c, 0x100, 0x14010001, 4);     // AER v1, next 0x140
    Put(c, 0x140, 0x00010003, 4);     // DSN v1, end
  }
  return c;
}

const PciCapability* Find(const PciConfig& c, uint16_t id, bool extended) {
  for (const PciCapability& cap : c.capabilities) {
    if (cap.id == id && cap.extended == extended) return &cap;
  }
  return nullptr;
}

std::string Field(const PciCapability& cap, const std::string& name) {
  for (const PciField& f : cap.fields) {
    if (f.name == name) return f.value;
  }
  return "<missing>";
}

TEST(PciConfigTest, DecodesHeaderAndCapabilities) {
  absl::StatusOr<PciConfig> c = DecodePciConfig(SampleConfig());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vendor_id, 0x1af4);
  EXPECT_EQ(c->device_id, 0x1041);
  EXPECT_EQ(c->class_code, 0x020000u);
  EXPECT_EQ(c->revision, 1);
  EXPECT_EQ(c->subsystem_id, 0x1100);
  EXPECT_EQ(c->interrupt_pin, 1);
  EXPECT_EQ(PciClassName(c->class_code), "Ethernet controller");
  EXPECT_EQ(PciCommandText(c->command), "Mem BusMaster DisINTx");
  EXPECT_TRUE(c->problems.empty());
  ASSERT_EQ(c->capabilities.size(), 6u);

  const PciCapability* pm = Find(*c, 0x01, false);
  ASSERT_NE(pm, nullptr);
  EXPECT_EQ(Field(*pm, "version"), "3");
  EXPECT_EQ(Field(*pm, "power_state"), "D3hot");
  const PciCapability* msix = Find(*c, 0x11, false);
  ASSERT_NE(msix, nullptr);
  EXPECT_EQ(msix->offset, 0x50);
  EXPECT_EQ(Field(*msix, "table_size"), "8");
  EXPECT_EQ(Field(*msix, "enabled"), "yes");
  EXPECT_EQ(Field(*msix, "table"), "BAR0 + 0x1000");
  EXPECT_EQ(Field(*msix, "pba"), "BAR2 + 0x1800");
  const PciCapability* pcie = Find(*c, 0x10, false);
  ASSERT_NE(pcie, nullptr);
  EXPECT_EQ(Field(*pcie, "type"), "Endpoint");
  EXPECT_EQ(Field(*pcie, "max_payload_supported"), "256");
  EXPECT_EQ(Field(*pcie, "flr"), "yes");
  EXPECT_EQ(Field(*pcie, "link_capable"), "8GT/s x4");
  const PciCapability* msi = Find(*c, 0x05, false);
  ASSERT_NE(msi, nullptr);
  EXPECT_EQ(Field(*msi, "64bit"), "yes");
  EXPECT_EQ(Field(*msi, "address"), "0xfee00000");
  EXPECT_EQ(Field(*msi, "data"), "0x4021");
  const PciCapability* aer = Find(*c, 0x0001, true);
  ASSERT_NE(aer, nullptr);
  EXPECT_EQ(aer->name, "Advanced Error Reporting");
  EXPECT_EQ(aer->version, 1);
  ASSERT_NE(Find(*c, 0x0003, true), nullptr);
}

TEST(PciConfigTest, ConventionalSpaceHasNoExtendedWalk) {
  absl::StatusOr<PciConfig> c = DecodePciConfig(SampleConfig(256));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->capabilities.size(), 4u);
  EXPECT_FALSE(DecodePciConfig(std::vector<uint8_t>(63)).ok());
}

TEST(PciConfigTest, MalformedChainsEndTheWalk) {
  std::vector<uint8_t> loop = SampleConfig(256);
  Put(loop, 0x71, 0x40, 1);  // MSI -> PM again
  absl::StatusOr<PciConfig> c = DecodePciConfig(loop);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->capabilities.size(), 4u);
  ASSERT_EQ(c->problems.size(), 1u);
  EXPECT_NE(c->problems[0].find("loops"), std::string::npos);

  std::vector<uint8_t> into_header = SampleConfig(256);
  Put(into_header, 0x34, 0x10, 1);
  c = DecodePciConfig(into_header);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->capabilities.empty());
  EXPECT_EQ(c->problems.size(), 1u);

  std::vector<uint8_t> off_the_end = SampleConfig(256);
  Put(off_the_end, 0x71, 0xff, 1);  // 0xfc: its 2 bytes fit, then garbage
  c = DecodePciConfig(off_the_end);
  ASSERT_TRUE(c.ok());

  // A short (64..255 byte) space: pointers past the end are reported.
  std::vector<uint8_t> short_space = SampleConfig(256);
  short_space.resize(0x48);
  c = DecodePciConfig(short_space);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->capabilities.size(), 1u);  // PM at 0x40; 0x50 is outside
  EXPECT_EQ(c->problems.size(), 1u);

  std::vector<uint8_t> ext_loop = SampleConfig(4096);
  Put(ext_loop, 0x140, 0x10010003, 4);  // DSN -> AER again
  c = DecodePciConfig(ext_loop);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->problems.size(), 1u);
}

// A config space with BAR sizing semantics: writes are masked by each BAR's
// size mask; the low bits are read-only type bits.
class FakeBars {
 public:
  FakeBars() : config_(SampleConfig(256)) {
    masks_ = {{0x10, 0xffffe000}, {0x14, 0xffffffff}, {0x18, 0xfffff000},
              {0x1c, 0}, {0x20, 0xffffff00}, {0x24, 0}};
    Put(config_, 0x10, 0xc0000004, 4);  // 64-bit memory BAR0/1, 8 KiB
    Put(config_, 0x14, 0x00000001, 4);
    Put(config_, 0x18, 0xd0000008, 4);  // 32-bit prefetchable, 4 KiB
    Put(config_, 0x20, 0x0000c001, 4);  // I/O, 256 ports
  }
  PciConfigAccess Access() {
    PciConfigAccess access;
    access.read = [this](uint32_t offset, int width) -> absl::StatusOr<uint32_t> {
      uint32_t v = 0;
      for (int i = width; i-- > 0;) v = (v << 8) | config_[offset + i];
      return v;
    };
    access.write = [this](uint32_t offset, int width, uint32_t value) {
      writes_.push_back(offset);
      auto it = masks_.find(offset);
      if (it != masks_.end() && width == 4) {
        uint32_t type = 0;
        std::memcpy(&type, &config_[offset], 4);
        type &= offset == 0x20 ? 0x3 : (offset == 0x14 ? 0 : 0xf);
        value = (value & it->second) | type;
      }
      Put(config_, offset, value, width);
      return absl::OkStatus();
    };
    return access;
  }
  std::vector<uint8_t> config_;
  std::map<uint32_t, uint32_t> masks_;
  std::vector<uint32_t> writes_;
};

TEST(SizePciBarsTest, SizesAndRestores) {
  FakeBars fake;
  const std::vector<uint8_t> before = fake.config_;
  absl::StatusOr<std::vector<SizedPciBar>> bars = SizePciBars(fake.Access(), 6);
  ASSERT_TRUE(bars.ok()) << bars.status();
  ASSERT_EQ(bars->size(), 6u);
  EXPECT_TRUE((*bars)[0].is64);
  EXPECT_EQ((*bars)[0].size, 8192u);
  EXPECT_EQ((*bars)[0].address, 0x1c0000000ull);
  EXPECT_FALSE((*bars)[1].implemented);  // upper half
  EXPECT_EQ((*bars)[2].size, 4096u);
  EXPECT_TRUE((*bars)[2].prefetchable);
  EXPECT_FALSE((*bars)[3].implemented);
  EXPECT_TRUE((*bars)[4].io);
  EXPECT_EQ((*bars)[4].size, 256u);
  EXPECT_EQ((*bars)[4].address, 0xc000u);
  EXPECT_FALSE((*bars)[5].implemented);
  EXPECT_EQ(fake.config_, before);  // every BAR and the command restored
  // Decode was disabled first and restored last.
  EXPECT_EQ(fake.writes_.front(), 0x04u);
  EXPECT_EQ(fake.writes_.back(), 0x04u);
}

TEST(SizePciBarsTest, AccessErrorsAreReported) {
  FakeBars fake;
  PciConfigAccess access = fake.Access();
  access.read = [](uint32_t offset, int) -> absl::StatusOr<uint32_t> {
    if (offset == 0x18) return ErrnoError(EIO, "boom");
    return 0u;
  };
  EXPECT_EQ(ErrnoOf(SizePciBars(access, 6).status()), EIO);
}

}  // namespace
}  // namespace vfio_user
