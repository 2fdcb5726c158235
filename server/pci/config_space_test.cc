#include "server/pci/config_space.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/errno_status.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

constexpr PciIds kIds = {.vendor_id = 0x1af4,
                         .device_id = 0x10f0,
                         .subsystem_vendor_id = 0x1af4,
                         .subsystem_id = 0x0042,
                         .class_code = 0x058000,
                         .revision = 0x07};

// Guest-side little-endian access through Read()/Write().
uint64_t ReadLe(const PciConfigSpace& config, uint64_t offset, int width) {
  std::vector<uint8_t> bytes(width);
  const absl::Status status = config.Read(offset, absl::MakeSpan(bytes));
  EXPECT_TRUE(status.ok()) << status;
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) value = value << 8 | bytes[i];
  return value;
}

void WriteLe(PciConfigSpace& config, uint64_t offset, int width, uint64_t value) {
  std::vector<uint8_t> bytes(width);
  for (int i = 0; i < width; ++i, value >>= 8) bytes[i] = static_cast<uint8_t>(value);
  const absl::Status status = config.Write(offset, bytes);
  EXPECT_TRUE(status.ok()) << status;
}

uint32_t Read32(const PciConfigSpace& c, uint64_t off) { return ReadLe(c, off, 4); }
uint16_t Read16(const PciConfigSpace& c, uint64_t off) { return ReadLe(c, off, 2); }
uint8_t Read8(const PciConfigSpace& c, uint64_t off) { return ReadLe(c, off, 1); }

std::vector<uint8_t> Image(const PciConfigSpace& config) {
  std::vector<uint8_t> image(config.size());
  EXPECT_TRUE(config.Read(0, absl::MakeSpan(image)).ok());
  return image;
}

// A function with a bit of everything (no FLR, so writes never reset it).
PciConfigSpace MakeRichConfig(PciConfigSize size = PciConfigSize::kExpress) {
  PciConfigSpace config(size);
  config.SetIds(kIds);
  config.SetInterruptPin(PciIntxPin::kA);
  EXPECT_TRUE(config.AddBar(0, PciBar::Io(32)).ok());
  EXPECT_TRUE(config.AddBar(1, PciBar::Memory32(0x4000)).ok());
  EXPECT_TRUE(config.AddBar(2, PciBar::Memory64(0x10000, /*prefetchable=*/true)).ok());
  EXPECT_TRUE(config.AddRom(0x10000).ok());
  EXPECT_TRUE(config.AddPowerManagement().ok());
  EXPECT_TRUE(config.AddMsi({.vectors = 4, .address_64 = true, .per_vector_mask = true}).ok());
  EXPECT_TRUE(config.AddMsix({.table_size = 8, .table_bar = 1, .table_offset = 0x2000,
                              .pba_bar = 1, .pba_offset = 0x3000})
                  .ok());
  EXPECT_TRUE(config.AddPciExpress().ok());
  return config;
}

TEST(PciConfigSpaceTest, HeaderIdentity) {
  PciConfigSpace config = MakeRichConfig();
  EXPECT_EQ(config.size(), 4096u);
  EXPECT_EQ(Read16(config, kPciVendorId), 0x1af4);
  EXPECT_EQ(Read16(config, kPciDeviceId), 0x10f0);
  EXPECT_EQ(Read32(config, kPciVendorId), 0x10f01af4u);
  EXPECT_EQ(Read8(config, kPciRevisionId), 0x07);
  EXPECT_EQ(ReadLe(config, kPciClassProg, 3), 0x058000u);
  EXPECT_EQ(Read32(config, kPciRevisionId), 0x05800007u);
  EXPECT_EQ(Read8(config, kPciHeaderType), kPciHeaderTypeNormal);
  EXPECT_EQ(Read16(config, kPciSubsystemVendorId), 0x1af4);
  EXPECT_EQ(Read16(config, kPciSubsystemId), 0x0042);
  EXPECT_EQ(Read8(config, kPciInterruptPin), 1);
  EXPECT_EQ(config.interrupt_pin(), PciIntxPin::kA);

  PciConfigSpace multi;
  multi.SetIds({.vendor_id = 1, .class_code = 0xff123456, .multifunction = true});
  EXPECT_EQ(Read8(multi, kPciHeaderType), kPciHeaderTypeMultifunction);
  EXPECT_EQ(ReadLe(multi, kPciClassProg, 3), 0x123456u);  // truncated to 24 bits
  EXPECT_EQ(multi.size(), 256u);
}

TEST(PciConfigSpaceTest, InterruptLineAndCacheLineAreScratch) {
  PciConfigSpace config = MakeRichConfig();
  WriteLe(config, kPciInterruptLine, 1, 0x0b);
  WriteLe(config, kPciCacheLineSize, 1, 0x10);
  EXPECT_EQ(Read8(config, kPciInterruptLine), 0x0b);
  EXPECT_EQ(Read8(config, kPciCacheLineSize), 0x10);
  // A dword write over 0x3c touches line (RW), pin, min_gnt, max_lat (RO).
  WriteLe(config, kPciInterruptLine, 4, 0xffffff22);
  EXPECT_EQ(Read32(config, kPciInterruptLine), 0x00000122u);
}

TEST(PciConfigSpaceTest, ReadOnlyBitsStayReadOnlyAtEveryWidthAndAlignment) {
  std::vector<uint8_t> reference;
  for (int width : {1, 2, 4, 8, 64, 4096}) {
    for (int misalign : {0, 1, 3}) {
      if (width == 1 && misalign != 0) continue;
      PciConfigSpace config = MakeRichConfig();
      const std::vector<uint8_t> initial = Image(config);
      // All-ones over the whole space, then all-zeros: only RW bits move.
      for (uint64_t value : {~uint64_t{0}, uint64_t{0}}) {
        uint32_t offset = 0;
        if (misalign != 0) {
          WriteLe(config, 0, misalign, value);
          offset = misalign;
        }
        for (; offset < config.size(); offset += width) {
          const int n = std::min<uint32_t>(width, config.size() - offset);
          std::vector<uint8_t> bytes(n, static_cast<uint8_t>(value));
          ASSERT_TRUE(config.Write(offset, bytes).ok()) << width << "@" << offset;
        }
        if (value != 0) {
          const std::vector<uint8_t> ones = Image(config);
          if (reference.empty()) reference = ones;
          EXPECT_EQ(ones, reference) << "width " << width << " misalign " << misalign;
        }
      }
      // Identity, capability headers and pointers never changed.
      for (uint32_t off : {kPciVendorId, kPciDeviceId, kPciRevisionId, kPciClassProg,
                           kPciHeaderType, kPciSubsystemVendorId, kPciCapabilityList,
                           kPciInterruptPin}) {
        EXPECT_EQ(Read8(config, off), initial[off]) << off;
      }
      EXPECT_EQ(Read16(config, kPciVendorId), 0x1af4);
      EXPECT_EQ(Read8(config, config.msix_offset() + kPciCapListId), kPciCapIdMsix);
      EXPECT_EQ(Read16(config, config.msix_offset() + kPciMsixFlags) & kPciMsixFlagsQsize, 7);
    }
  }
  // What all-ones produced, register by register.
  PciConfigSpace expect = MakeRichConfig();
  auto ref32 = [&](uint32_t off) {
    return uint32_t{reference[off]} | reference[off + 1] << 8 | reference[off + 2] << 16 |
           uint32_t{reference[off + 3]} << 24;
  };
  EXPECT_EQ(ref32(kPciCommand) & 0xffff, 0x0547u);  // IO|MEM|MASTER|PARITY|SERR|INTX_DIS
  EXPECT_EQ(ref32(kPciCommand) >> 16, kPciStatusCapList);
  EXPECT_EQ(ref32(PciBarOffset(0)), 0xffffffe1u);
  EXPECT_EQ(ref32(PciBarOffset(1)), 0xffffc000u);
  EXPECT_EQ(ref32(PciBarOffset(2)), 0xffff000cu);
  EXPECT_EQ(ref32(PciBarOffset(3)), 0xffffffffu);
  EXPECT_EQ(ref32(PciBarOffset(4)), 0u);
  EXPECT_EQ(ref32(kPciRomAddress), 0xffff0001u);
  EXPECT_EQ(ref32(kPciCardbusCis), 0u);
  EXPECT_EQ(reference[kPciLatencyTimer], 0);
  EXPECT_EQ(reference[kPciBist], 0);
  EXPECT_EQ(ref32(kPciExtCapStart), 0u);  // empty extended list
  EXPECT_EQ(ref32(expect.pm_offset() + kPciPmCtrl) & 0xffff,
            kPciPmCtrlNoSoftReset | 3u);  // D3hot
}

TEST(PciConfigSpaceTest, IoBarSizing) {
  PciConfigSpace config;
  ASSERT_TRUE(config.AddBar(0, PciBar::Io(32)).ok());
  EXPECT_EQ(Read32(config, PciBarOffset(0)), kPciBaseAddressSpaceIo);
  WriteLe(config, PciBarOffset(0), 4, 0xffffffff);
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xffffffe1u);
  WriteLe(config, PciBarOffset(0), 4, 0xc020);
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xc021u);
  EXPECT_EQ(config.BarAddress(0), 0xc020u);
  WriteLe(config, PciBarOffset(0), 4, 0);  // type bit is read-only
  EXPECT_EQ(Read32(config, PciBarOffset(0)), kPciBaseAddressSpaceIo);
  WriteLe(config, PciBarOffset(0), 2, 0xc03f);  // low bits below the size stay 0
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xc021u);

  EXPECT_EQ(ErrnoOf(config.AddBar(1, PciBar::Io(2))), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddBar(1, PciBar::Io(512))), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddBar(1, PciBar::Io(24))), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddBar(1, {PciBarKind::kIo, 16, true})), EINVAL);
  EXPECT_TRUE(config.AddBar(1, PciBar::Io(4)).ok());
  WriteLe(config, PciBarOffset(1), 4, 0xffffffff);
  EXPECT_EQ(Read32(config, PciBarOffset(1)), 0xfffffffdu);
}

TEST(PciConfigSpaceTest, Memory32BarSizing) {
  PciConfigSpace config;
  ASSERT_TRUE(config.AddBar(0, PciBar::Memory32(0x1000)).ok());
  ASSERT_TRUE(config.AddBar(1, PciBar::Memory32(0x100000, /*prefetchable=*/true)).ok());
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0u);
  EXPECT_EQ(Read32(config, PciBarOffset(1)), kPciBaseAddressMemPrefetch);
  WriteLe(config, PciBarOffset(0), 4, 0xffffffff);
  WriteLe(config, PciBarOffset(1), 4, 0xffffffff);
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xfffff000u);
  EXPECT_EQ(Read32(config, PciBarOffset(1)), 0xfff00008u);
  WriteLe(config, PciBarOffset(0), 4, 0xfebf1234);
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xfebf1000u);
  EXPECT_EQ(config.BarAddress(0), 0xfebf1000u);
  // Sub-dword writes size the same way.
  WriteLe(config, PciBarOffset(0) + 2, 2, 0xffff);
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xffff1000u);

  EXPECT_EQ(ErrnoOf(config.AddBar(2, PciBar::Memory32(8))), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddBar(2, PciBar::Memory32(0x3000))), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddBar(0, PciBar::Memory32(0x1000))), EINVAL);  // taken
  EXPECT_EQ(ErrnoOf(config.AddBar(6, PciBar::Memory32(0x1000))), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddBar(-1, PciBar::Memory32(0x1000))), EINVAL);
}

TEST(PciConfigSpaceTest, Memory64BarSizing) {
  PciConfigSpace config;
  ASSERT_TRUE(config.AddBar(0, PciBar::Memory64(0x4000)).ok());
  ASSERT_TRUE(config.AddBar(2, PciBar::Memory64(uint64_t{8} << 30, true)).ok());
  EXPECT_FALSE(config.bar(1).has_value());  // upper half
  EXPECT_EQ(config.bar(2)->size, uint64_t{8} << 30);
  EXPECT_EQ(Read32(config, PciBarOffset(0)), kPciBaseAddressMemType64);
  EXPECT_EQ(Read32(config, PciBarOffset(2)),
            kPciBaseAddressMemType64 | kPciBaseAddressMemPrefetch);

  WriteLe(config, PciBarOffset(0), 8, ~uint64_t{0});  // one qword write sizes both halves
  EXPECT_EQ(Read32(config, PciBarOffset(0)), 0xffffc004u);
  EXPECT_EQ(Read32(config, PciBarOffset(1)), 0xffffffffu);
  WriteLe(config, PciBarOffset(2), 4, 0xffffffff);
  WriteLe(config, PciBarOffset(3), 4, 0xffffffff);
  EXPECT_EQ(Read32(config, PciBarOffset(2)), 0x0000000cu);
  EXPECT_EQ(Read32(config, PciBarOffset(3)), 0xfffffffeu);  // 8 GiB

  WriteLe(config, PciBarOffset(2), 4, 0);
  WriteLe(config, PciBarOffset(3), 4, 0x4);
  EXPECT_EQ(config.BarAddress(2), uint64_t{0x4} << 32);
  WriteLe(config, PciBarOffset(0), 8, 0x00000012345f8000);
  EXPECT_EQ(config.BarAddress(0), 0x00000012345f8000u);
  EXPECT_EQ(config.BarAddress(1), 0u);

  EXPECT_EQ(ErrnoOf(config.AddBar(5, PciBar::Memory64(0x1000))), EINVAL);  // no upper slot
  EXPECT_EQ(ErrnoOf(config.AddBar(1, PciBar::Memory32(0x1000))), EINVAL);  // upper half
  ASSERT_TRUE(config.AddBar(5, PciBar::Memory32(0x1000)).ok());
  EXPECT_EQ(ErrnoOf(config.AddBar(4, PciBar::Memory64(0x1000))), EINVAL);  // 5 taken
}

TEST(PciConfigSpaceTest, UnusedBarsReadZeroAndIgnoreWrites) {
  PciConfigSpace config;
  for (int i = 0; i < kPciNumBars; ++i) {
    WriteLe(config, PciBarOffset(i), 4, 0xffffffff);
    EXPECT_EQ(Read32(config, PciBarOffset(i)), 0u);
    EXPECT_EQ(config.BarAddress(i), 0u);
    EXPECT_FALSE(config.BarDecodeEnabled(i));
  }
  WriteLe(config, kPciRomAddress, 4, 0xffffffff);
  EXPECT_EQ(Read32(config, kPciRomAddress), 0u);
}

TEST(PciConfigSpaceTest, RomBarSizingAndEnable) {
  PciConfigSpace config;
  EXPECT_EQ(ErrnoOf(config.AddRom(1024)), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddRom(0x3000)), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddRom(32u << 20)), EINVAL);
  ASSERT_TRUE(config.AddRom(0x10000).ok());
  EXPECT_EQ(ErrnoOf(config.AddRom(0x10000)), EINVAL);
  EXPECT_EQ(config.rom_size(), 0x10000u);
  WriteLe(config, kPciRomAddress, 4, 0xfffffffe);
  EXPECT_EQ(Read32(config, kPciRomAddress), 0xffff0000u);
  WriteLe(config, kPciRomAddress, 4, 0xffffffff);
  EXPECT_EQ(Read32(config, kPciRomAddress), 0xffff0001u);
  WriteLe(config, kPciRomAddress, 4, 0xfe000001);
  EXPECT_EQ(config.RomAddress(), 0xfe000000u);
  EXPECT_FALSE(config.RomEnabled());  // memory decode still off
  WriteLe(config, kPciCommand, 2, kPciCommandMemory);
  EXPECT_TRUE(config.RomEnabled());
  WriteLe(config, kPciRomAddress, 1, 0);
  EXPECT_FALSE(config.RomEnabled());
}

TEST(PciConfigSpaceTest, CommandRegisterWritesOnlySupportedBits) {
  PciConfigSpace bare;
  bare.SetOptionalCommandBits(0);
  WriteLe(bare, kPciCommand, 2, 0xffff);
  EXPECT_EQ(Read16(bare, kPciCommand), 0);

  PciConfigSpace config;
  config.SetOptionalCommandBits(kPciCommandMaster | kPciCommandSpecial);  // Special ignored
  WriteLe(config, kPciCommand, 2, 0xffff);
  EXPECT_EQ(Read16(config, kPciCommand), kPciCommandMaster);
  ASSERT_TRUE(config.AddBar(0, PciBar::Memory32(0x1000)).ok());
  WriteLe(config, kPciCommand, 2, 0xffff);
  EXPECT_EQ(Read16(config, kPciCommand), kPciCommandMaster | kPciCommandMemory);
  ASSERT_TRUE(config.AddBar(1, PciBar::Io(16)).ok());
  config.SetInterruptPin(PciIntxPin::kD);
  WriteLe(config, kPciCommand, 2, 0xffff);
  EXPECT_EQ(Read16(config, kPciCommand), kPciCommandMaster | kPciCommandMemory |
                                             kPciCommandIo | kPciCommandIntxDisable);
  EXPECT_TRUE(config.BusMasterEnabled());
  EXPECT_TRUE(config.IntxDisabled());
  EXPECT_TRUE(config.IoDecodeEnabled());
  EXPECT_TRUE(config.MemoryDecodeEnabled());
  EXPECT_TRUE(config.BarDecodeEnabled(0));
  EXPECT_TRUE(config.BarDecodeEnabled(1));
  WriteLe(config, kPciCommand, 1, kPciCommandIo);
  EXPECT_TRUE(config.IoDecodeEnabled());
  EXPECT_FALSE(config.MemoryDecodeEnabled());
  EXPECT_FALSE(config.BarDecodeEnabled(0));
  EXPECT_TRUE(config.BarDecodeEnabled(1));
}

TEST(PciConfigSpaceTest, CommandChangeCallback) {
  PciConfigSpace config = MakeRichConfig();
  std::vector<std::pair<uint16_t, uint16_t>> calls;
  config.callbacks().command_changed = [&](uint16_t from, uint16_t to) {
    calls.emplace_back(from, to);
  };
  WriteLe(config, kPciCommand, 2, kPciCommandMaster);
  WriteLe(config, kPciCommand, 2, kPciCommandMaster);  // unchanged: no call
  WriteLe(config, kPciCommand, 4, kPciCommandMaster | kPciCommandIntxDisable);
  WriteLe(config, kPciCommand, 2, kPciCommandSpecial);  // unsupported bit only: 0
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0], std::make_pair(uint16_t{0}, kPciCommandMaster));
  EXPECT_EQ(calls[1], std::make_pair(kPciCommandMaster,
                                     uint16_t{kPciCommandMaster | kPciCommandIntxDisable}));
  EXPECT_EQ(calls[2].second, 0);
}

TEST(PciConfigSpaceTest, StatusRegister) {
  PciConfigSpace plain;
  EXPECT_EQ(Read16(plain, kPciStatus), 0);  // no capabilities
  EXPECT_EQ(Read8(plain, kPciCapabilityList), 0);

  PciConfigSpace config = MakeRichConfig();
  EXPECT_EQ(Read16(config, kPciStatus), kPciStatusCapList);
  config.SetIntxAsserted(true);
  EXPECT_TRUE(config.IntxAsserted());
  EXPECT_EQ(Read16(config, kPciStatus), kPciStatusCapList | kPciStatusInterrupt);
  WriteLe(config, kPciStatus, 2, 0xffff);  // RO bits ignore writes, RW1C already 0
  EXPECT_EQ(Read16(config, kPciStatus), kPciStatusCapList | kPciStatusInterrupt);
  config.SetIntxAsserted(false);
  EXPECT_EQ(Read16(config, kPciStatus), kPciStatusCapList);

  config.RaiseStatusBits(0xffff);  // only the error bits are taken
  EXPECT_EQ(Read16(config, kPciStatus), kPciStatusCapList | kPciStatusErrorBits);
  WriteLe(config, kPciStatus, 2, 0);  // writing 0 clears nothing
  EXPECT_EQ(Read16(config, kPciStatus), kPciStatusCapList | kPciStatusErrorBits);
  WriteLe(config, kPciStatus + 1, 1, kPciStatusRecMasterAbort >> 8);
  EXPECT_EQ(Read16(config, kPciStatus),
            kPciStatusCapList | (kPciStatusErrorBits & ~kPciStatusRecMasterAbort));
  // A dword write to command+status: command RW, status RW1C.
  WriteLe(config, kPciCommand, 4,
          uint32_t{kPciStatusDetectedParity | kPciStatusParity} << 16 | kPciCommandMemory);
  EXPECT_EQ(Read16(config, kPciCommand), kPciCommandMemory);
  EXPECT_EQ(Read16(config, kPciStatus),
            kPciStatusCapList | kPciStatusSigTargetAbort | kPciStatusRecTargetAbort |
                kPciStatusSigSystemError);
}

TEST(PciConfigSpaceTest, CapabilityChainWalk) {
  PciConfigSpace config = MakeRichConfig();
  std::vector<uint8_t> ids;
  std::vector<uint16_t> offsets;
  uint8_t next = Read8(config, kPciCapabilityList);
  EXPECT_EQ(next, 0x40);
  while (next != 0 && ids.size() < 48) {
    EXPECT_EQ(next % 4, 0);
    EXPECT_GE(next, 0x40);
    ids.push_back(Read8(config, next + kPciCapListId));
    offsets.push_back(next);
    next = Read8(config, next + kPciCapListNext);
  }
  EXPECT_EQ(ids, (std::vector<uint8_t>{kPciCapIdPm, kPciCapIdMsi, kPciCapIdMsix, kPciCapIdExp}));
  EXPECT_EQ(offsets, (std::vector<uint16_t>{config.pm_offset(), config.msi_offset(),
                                            config.msix_offset(), config.pcie_offset()}));
  // Capability headers are read-only.
  WriteLe(config, offsets[1], 2, 0xffff);
  EXPECT_EQ(Read8(config, offsets[1]), kPciCapIdMsi);
  EXPECT_EQ(Read8(config, offsets[1] + 1), offsets[2]);
  WriteLe(config, kPciCapabilityList, 1, 0x80);
  EXPECT_EQ(Read8(config, kPciCapabilityList), 0x40);

  EXPECT_EQ(ErrnoOf(config.AddPowerManagement().status()), EINVAL);  // only once
  EXPECT_EQ(ErrnoOf(config.AddMsi({}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddPciExpress().status()), EINVAL);
}

TEST(PciConfigSpaceTest, CapabilitySpaceRunsOut) {
  PciConfigSpace config;
  const std::vector<uint8_t> body(30);  // 32 bytes each: 0x40..0xff holds 6
  for (int i = 0; i < 6; ++i) {
    auto offset = config.AddCapability(kPciCapIdVendor, body);
    ASSERT_TRUE(offset.ok()) << offset.status();
    EXPECT_EQ(*offset, 0x40 + 32 * i);
  }
  EXPECT_EQ(ErrnoOf(config.AddCapability(kPciCapIdVendor, {}).status()), ENOSPC);
  EXPECT_EQ(ErrnoOf(config.AddExtendedCapability(0x0b, 1, body).status()), EINVAL);  // 256 B
}

TEST(PciConfigSpaceTest, GenericCapabilityWithWriteMask) {
  PciConfigSpace config;
  const uint8_t body[] = {6, 0x11, 0x22, 0x33};  // vendor cap: length byte first
  const uint8_t mask[] = {0, 0xff, 0x0f, 0};
  auto offset = config.AddCapability(kPciCapIdVendor, body, mask);
  ASSERT_TRUE(offset.ok());
  EXPECT_EQ(Read32(config, *offset), 0x11060009u);
  WriteLe(config, *offset + 2, 4, 0xffffffff);
  EXPECT_EQ(Read32(config, *offset + 2), 0x332fff06u);
  EXPECT_EQ(ErrnoOf(config.AddCapability(kPciCapIdVendor, body, {mask, 2}).status()), EINVAL);
  // A second one starts dword-aligned after 2 + 4 bytes.
  auto second = config.AddCapability(kPciCapIdVendor, body);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, *offset + 8);
  EXPECT_EQ(Read8(config, *offset + 1), *second);
}

TEST(PciConfigSpaceTest, ExtendedCapabilities) {
  PciConfigSpace config(PciConfigSize::kExpress);
  EXPECT_EQ(Read32(config, kPciExtCapStart), 0u);  // null header: empty list
  const uint8_t body[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint8_t mask[8] = {};
  mask[4] = 0xff;
  auto first = config.AddExtendedCapability(0x000b, 1, body, mask);
  auto second = config.AddExtendedCapability(0x0023, 2, body);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(*first, kPciExtCapStart);
  EXPECT_EQ(*second, kPciExtCapStart + 12);
  const uint32_t h1 = Read32(config, *first), h2 = Read32(config, *second);
  EXPECT_EQ(PciExtCapId(h1), 0x000b);
  EXPECT_EQ(PciExtCapVersion(h1), 1);
  EXPECT_EQ(PciExtCapNext(h1), *second);
  EXPECT_EQ(PciExtCapId(h2), 0x0023);
  EXPECT_EQ(PciExtCapVersion(h2), 2);
  EXPECT_EQ(PciExtCapNext(h2), 0);
  const std::vector<uint8_t> ones(12, 0xff);
  ASSERT_TRUE(config.Write(*first, ones).ok());  // header RO, body byte 4 RW
  EXPECT_EQ(Read32(config, *first), h1);
  EXPECT_EQ(Read32(config, *first + 4), 0x04030201u);
  EXPECT_EQ(Read32(config, *first + 8), 0x080706ffu);
  EXPECT_EQ(ErrnoOf(config.AddExtendedCapability(1, 16, {}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddExtendedCapability(1, 1, std::vector<uint8_t>(4096)).status()),
            ENOSPC);
}

TEST(PciConfigSpaceTest, MsiCapability) {
  PciConfigSpace config;
  EXPECT_EQ(ErrnoOf(config.AddMsi({.vectors = 3}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddMsi({.vectors = 64}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddMsi({.vectors = 0}).status()), EINVAL);
  auto offset = config.AddMsi({.vectors = 4, .address_64 = true, .per_vector_mask = true});
  ASSERT_TRUE(offset.ok());
  const uint16_t msi = *offset;
  int changes = 0;
  config.callbacks().msi_changed = [&] { ++changes; };
  EXPECT_EQ(Read16(config, msi + kPciMsiFlags),
            (2 << 1) | kPciMsiFlags64Bit | kPciMsiFlagsMaskBit);
  EXPECT_EQ(config.msi_vectors(), 4u);
  EXPECT_FALSE(config.MsiEnabled());
  EXPECT_EQ(config.MsiVectorsEnabled(), 1u);

  // Enable with 8 vectors asked: clamped to the 4 capable; capability bits RO.
  WriteLe(config, msi + kPciMsiFlags, 2, 0xffff);
  EXPECT_EQ(Read16(config, msi + kPciMsiFlags),
            (2 << 4) | (2 << 1) | kPciMsiFlags64Bit | kPciMsiFlagsMaskBit | kPciMsiFlagsEnable);
  EXPECT_TRUE(config.MsiEnabled());
  EXPECT_EQ(config.MsiVectorsEnabled(), 4u);
  EXPECT_EQ(changes, 1);

  WriteLe(config, msi + kPciMsiAddressLo, 8, 0x00000001fee01003);  // bits 1:0 reserved
  WriteLe(config, msi + kPciMsiData64, 4, 0xffff4321);  // upper 16 bits reserved
  EXPECT_EQ(Read32(config, msi + kPciMsiAddressLo), 0xfee01000u);
  EXPECT_EQ(Read32(config, msi + kPciMsiData64), 0x4321u);
  EXPECT_EQ(config.MsiMessage(0).address, 0x1fee01000u);
  EXPECT_EQ(config.MsiMessage(0).data, 0x4320u);
  EXPECT_EQ(config.MsiMessage(3).data, 0x4323u);
  EXPECT_EQ(changes, 3);

  WriteLe(config, msi + kPciMsiMask64, 4, 0xffffffff);
  EXPECT_EQ(Read32(config, msi + kPciMsiMask64), 0xfu);
  EXPECT_TRUE(config.MsiVectorMasked(3));
  EXPECT_FALSE(config.MsiVectorMasked(4));
  WriteLe(config, msi + kPciMsiPending64, 4, 0xffffffff);  // RO to the guest
  EXPECT_EQ(Read32(config, msi + kPciMsiPending64), 0u);
  config.SetMsiPending(2, true);
  config.SetMsiPending(7, true);  // beyond the capable vectors: ignored
  EXPECT_EQ(Read32(config, msi + kPciMsiPending64), 0x4u);
  EXPECT_TRUE(config.MsiPending(2));
  config.SetMsiPending(2, false);
  EXPECT_FALSE(config.MsiPending(2));
  EXPECT_EQ(changes, 4);
}

TEST(PciConfigSpaceTest, Msi32BitWithoutMasking) {
  PciConfigSpace config;
  auto offset = config.AddMsi({.vectors = 1, .address_64 = false});
  ASSERT_TRUE(offset.ok());
  WriteLe(config, *offset + kPciMsiFlags, 2, 0xffff);
  EXPECT_EQ(Read16(config, *offset + kPciMsiFlags), kPciMsiFlagsEnable);
  WriteLe(config, *offset + kPciMsiAddressLo, 4, 0xfee00000);
  WriteLe(config, *offset + kPciMsiData32, 2, 0x0041);
  EXPECT_EQ(config.MsiMessage(0).address, 0xfee00000u);
  EXPECT_EQ(config.MsiMessage(0).data, 0x41u);
  EXPECT_FALSE(config.MsiVectorMasked(0));
  config.SetMsiPending(0, true);  // no pending bits without per-vector masking
  EXPECT_FALSE(config.MsiPending(0));
  // The next capability follows the 10-byte MSI capability, dword aligned.
  auto next = config.AddCapability(kPciCapIdVendor, {});
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, *offset + 12);
}

TEST(PciConfigSpaceTest, MsixCapability) {
  PciConfigSpace config;
  const MsixLayout layout = {.table_size = 64, .table_bar = 2, .table_offset = 0x1000,
                             .pba_bar = 2, .pba_offset = 0x1800};
  EXPECT_EQ(ErrnoOf(config.AddMsix(layout).status()), EINVAL);  // BAR 2 not declared
  ASSERT_TRUE(config.AddBar(0, PciBar::Io(16)).ok());
  ASSERT_TRUE(config.AddBar(2, PciBar::Memory32(0x1000)).ok());
  EXPECT_EQ(ErrnoOf(config.AddMsix(layout).status()), EINVAL);  // does not fit
  EXPECT_EQ(ErrnoOf(config.AddMsix({.table_size = 1, .table_bar = 0}).status()), EINVAL);  // I/O
  EXPECT_EQ(ErrnoOf(config.AddMsix({.table_size = 0, .table_bar = 2}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddMsix({.table_size = 2049, .table_bar = 2}).status()), EINVAL);

  PciConfigSpace good;
  ASSERT_TRUE(good.AddBar(2, PciBar::Memory64(0x4000)).ok());
  auto offset = good.AddMsix(layout);
  ASSERT_TRUE(offset.ok()) << offset.status();
  const uint16_t msix = *offset;
  std::vector<std::pair<bool, bool>> calls;
  good.callbacks().msix_control_changed = [&](bool enabled, bool masked) {
    calls.emplace_back(enabled, masked);
  };
  EXPECT_EQ(Read16(good, msix + kPciMsixFlags), 63);
  EXPECT_EQ(Read32(good, msix + kPciMsixTable), 0x1002u);
  EXPECT_EQ(Read32(good, msix + kPciMsixPba), 0x1802u);
  WriteLe(good, msix + kPciMsixTable, 8, 0);  // table/PBA location is RO
  EXPECT_EQ(Read32(good, msix + kPciMsixTable), 0x1002u);

  WriteLe(good, msix + kPciMsixFlags, 2, 0xffff);
  EXPECT_EQ(Read16(good, msix + kPciMsixFlags),
            kPciMsixFlagsEnable | kPciMsixFlagsMaskAll | 63);
  EXPECT_TRUE(good.MsixEnabled());
  EXPECT_TRUE(good.MsixFunctionMasked());
  WriteLe(good, msix + kPciMsixFlags + 1, 1, kPciMsixFlagsEnable >> 8);  // unmask function
  EXPECT_FALSE(good.MsixFunctionMasked());
  WriteLe(good, msix + kPciMsixFlags + 1, 1, kPciMsixFlagsEnable >> 8);  // no change
  WriteLe(good, msix, 4, 0);  // disable via a dword write over the header
  EXPECT_FALSE(good.MsixEnabled());
  EXPECT_EQ(calls, (std::vector<std::pair<bool, bool>>{{true, true}, {true, false},
                                                       {false, false}}));
}

TEST(PciConfigSpaceTest, PowerManagement) {
  PciConfigSpace config = MakeRichConfig();
  const uint16_t pm = config.pm_offset();
  std::vector<std::pair<PciPowerState, PciPowerState>> calls;
  config.callbacks().power_state_changed = [&](PciPowerState from, PciPowerState to) {
    calls.emplace_back(from, to);
  };
  EXPECT_EQ(Read16(config, pm + kPciPmPmc) & kPciPmCapVersionMask, 3);
  EXPECT_EQ(Read16(config, pm + kPciPmCtrl), kPciPmCtrlNoSoftReset);
  WriteLe(config, kPciCommand, 2, kPciCommandMemory | kPciCommandIo);
  WriteLe(config, PciBarOffset(1), 4, 0xfe000000);
  EXPECT_TRUE(config.MemoryDecodeEnabled());

  WriteLe(config, pm + kPciPmCtrl, 2, 3);
  EXPECT_EQ(config.power_state(), PciPowerState::kD3Hot);
  EXPECT_FALSE(config.MemoryDecodeEnabled());  // D3hot: config accesses only
  EXPECT_FALSE(config.IoDecodeEnabled());
  WriteLe(config, pm + kPciPmCtrl, 2, 1);  // D1 unsupported: ignored
  EXPECT_EQ(config.power_state(), PciPowerState::kD3Hot);
  WriteLe(config, pm + kPciPmCtrl, 2, 0xffff & ~kPciPmCtrlStateMask);  // D0; other bits RO
  EXPECT_EQ(Read16(config, pm + kPciPmCtrl), kPciPmCtrlNoSoftReset);
  EXPECT_EQ(calls, (std::vector<std::pair<PciPowerState, PciPowerState>>{
                       {PciPowerState::kD0, PciPowerState::kD3Hot},
                       {PciPowerState::kD3Hot, PciPowerState::kD0}}));
  // No_Soft_Reset: the BAR kept its address.
  EXPECT_EQ(config.BarAddress(1), 0xfe000000u);
  EXPECT_TRUE(config.MemoryDecodeEnabled());
}

TEST(PciConfigSpaceTest, PowerManagementSoftReset) {
  PciConfigSpace config;
  ASSERT_TRUE(config.AddBar(0, PciBar::Memory32(0x1000)).ok());
  auto pm = config.AddPowerManagement({.no_soft_reset = false});
  ASSERT_TRUE(pm.ok());
  EXPECT_EQ(Read16(config, *pm + kPciPmCtrl), 0);
  bool reset_seen_by_callback = false;
  config.callbacks().power_state_changed = [&](PciPowerState, PciPowerState to) {
    if (to == PciPowerState::kD0) reset_seen_by_callback = config.BarAddress(0) == 0;
  };
  WriteLe(config, PciBarOffset(0), 4, 0xfe000000);
  WriteLe(config, kPciCommand, 2, kPciCommandMemory);
  WriteLe(config, *pm + kPciPmCtrl, 2, 3);
  EXPECT_EQ(config.BarAddress(0), 0xfe000000u);  // D3hot keeps state
  WriteLe(config, *pm + kPciPmCtrl, 2, 0);
  EXPECT_TRUE(reset_seen_by_callback);
  EXPECT_EQ(Read16(config, kPciCommand), 0);
  EXPECT_EQ(config.power_state(), PciPowerState::kD0);
}

TEST(PciConfigSpaceTest, PciExpressCapability) {
  PciConfigSpace config(PciConfigSize::kExpress);
  EXPECT_EQ(ErrnoOf(config.AddPciExpress({.max_payload_bytes = 64}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddPciExpress({.link_speed = 0}).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(config.AddPciExpress({.link_width = 3}).status()), EINVAL);
  auto offset = config.AddPciExpress(
      {.max_payload_bytes = 512, .extended_tag = true, .link_speed = 3, .link_width = 4});
  ASSERT_TRUE(offset.ok());
  const uint16_t exp = *offset;
  EXPECT_EQ(Read16(config, exp + kPciExpFlags), 0x0002);  // v2 endpoint
  const uint32_t devcap = Read32(config, exp + kPciExpDevCap);
  EXPECT_EQ(devcap & kPciExpDevCapPayloadMask, 2u);
  EXPECT_TRUE(devcap & kPciExpDevCapExtTag);
  EXPECT_FALSE(devcap & kPciExpDevCapFlr);
  EXPECT_EQ(Read32(config, exp + kPciExpLnkCap) & 0x3ff, 0x43u);
  EXPECT_EQ(Read16(config, exp + kPciExpLnkSta), 0x43 | kPciExpLnkStaSlotClock);
  EXPECT_EQ(Read32(config, exp + kPciExpLnkCap2), 0xeu);  // 2.5, 5 and 8 GT/s

  // Device Control: without FLR capability the Initiate-FLR bit is RO 0.
  WriteLe(config, exp + kPciExpDevCtl, 2, 0xffff);
  EXPECT_EQ(Read16(config, exp + kPciExpDevCtl), 0x79ff);
  // Device Status errors are RW1C; Transactions Pending RO.
  config.Set16(exp + kPciExpDevSta, kPciExpDevStaCed | kPciExpDevStaUrd);
  WriteLe(config, exp + kPciExpDevSta, 2, kPciExpDevStaCed | kPciExpDevStaTransPending);
  EXPECT_EQ(Read16(config, exp + kPciExpDevSta), kPciExpDevStaUrd);

  PciConfigSpace rc(PciConfigSize::kExpress);
  auto rc_offset = rc.AddPciExpress({.type = PcieDeviceType::kRootComplexIntegratedEndpoint});
  ASSERT_TRUE(rc_offset.ok());
  EXPECT_EQ(Read16(rc, *rc_offset + kPciExpFlags), 0x0092);
  EXPECT_EQ(Read32(rc, *rc_offset + kPciExpLnkCap), 0u);  // no link
}

TEST(PciConfigSpaceTest, FunctionLevelReset) {
  PciConfigSpace config(PciConfigSize::kExpress);
  ASSERT_TRUE(config.AddBar(0, PciBar::Memory32(0x1000)).ok());
  auto offset = config.AddPciExpress({.flr = true});
  ASSERT_TRUE(offset.ok());
  const uint16_t devctl = *offset + kPciExpDevCtl;
  EXPECT_TRUE(Read32(config, *offset + kPciExpDevCap) & kPciExpDevCapFlr);
  int flrs = 0;
  uint16_t command_in_callback = 0xffff;
  config.callbacks().function_level_reset = [&] {
    ++flrs;
    command_in_callback = config.command();
  };
  WriteLe(config, kPciCommand, 2, kPciCommandMemory | kPciCommandMaster);
  WriteLe(config, PciBarOffset(0), 4, 0xfe000000);
  WriteLe(config, devctl, 2, kPciExpDevCtlCere);
  EXPECT_EQ(flrs, 0);

  WriteLe(config, devctl, 2, kPciExpDevCtlBcrFlr | kPciExpDevCtlCere);
  EXPECT_EQ(flrs, 1);
  EXPECT_EQ(command_in_callback, 0);  // config space already reset
  EXPECT_EQ(Read16(config, devctl) & kPciExpDevCtlBcrFlr, 0);
  EXPECT_EQ(Read16(config, devctl),
            kPciExpDevCtlRelaxEn | kPciExpDevCtlNoSnoopEn | kPciExpDevCtlReadrq512);
  EXPECT_EQ(config.BarAddress(0), 0u);
  WriteLe(config, devctl + 1, 1, kPciExpDevCtlBcrFlr >> 8);  // byte write works too
  EXPECT_EQ(flrs, 2);
  EXPECT_EQ(Read8(config, devctl + 1) & 0x80, 0);
}

TEST(PciConfigSpaceTest, OutOfBoundsAndWrappingAccessesFail) {
  for (PciConfigSize size : {PciConfigSize::kConventional, PciConfigSize::kExpress}) {
    PciConfigSpace config(size);
    const uint64_t end = config.size();
    std::vector<uint8_t> buf(8);
    std::vector<uint8_t> all(end);
    EXPECT_TRUE(config.Read(0, absl::MakeSpan(all)).ok());
    EXPECT_TRUE(config.Read(end - 4, absl::MakeSpan(buf).first(4)).ok());
    EXPECT_TRUE(config.Read(end, absl::MakeSpan(buf).first(0)).ok());
    for (uint64_t offset : {end, end - 3, end + 1, uint64_t{1} << 32,
                            std::numeric_limits<uint64_t>::max() - 3,
                            std::numeric_limits<uint64_t>::max()}) {
      EXPECT_EQ(ErrnoOf(config.Read(offset, absl::MakeSpan(buf).first(4))), EINVAL) << offset;
      EXPECT_EQ(ErrnoOf(config.Write(offset, absl::MakeSpan(buf).first(4))), EINVAL) << offset;
    }
    std::vector<uint8_t> too_big(end + 1);
    EXPECT_EQ(ErrnoOf(config.Read(0, absl::MakeSpan(too_big))), EINVAL);
    EXPECT_EQ(ErrnoOf(config.Write(0, too_big)), EINVAL);
    // The device-side accessors never touch memory out of range.
    EXPECT_EQ(config.Get32(end - 2), 0u);
    config.Set32(end - 2, 0xffffffff);
    EXPECT_EQ(config.Get16(end - 2), 0u);
  }
}

TEST(PciConfigSpaceTest, ResetRestoresPowerOnValues) {
  PciConfigSpace config = MakeRichConfig();
  const std::vector<uint8_t> power_on = Image(config);
  WriteLe(config, kPciCommand, 2, 0x0547);
  WriteLe(config, PciBarOffset(1), 4, 0xfe000000);
  WriteLe(config, kPciInterruptLine, 1, 11);
  WriteLe(config, config.msi_offset() + kPciMsiFlags, 2, kPciMsiFlagsEnable);
  WriteLe(config, config.msix_offset() + kPciMsixFlags, 2, kPciMsixFlagsEnable);
  WriteLe(config, config.pm_offset() + kPciPmCtrl, 2, 3);
  config.SetIntxAsserted(true);
  config.RaiseStatusBits(kPciStatusRecMasterAbort);
  config.SetMsiPending(1, true);
  ASSERT_NE(Image(config), power_on);
  bool any_callback = false;
  config.callbacks().command_changed = [&](uint16_t, uint16_t) { any_callback = true; };
  config.Reset();
  EXPECT_EQ(Image(config), power_on);
  EXPECT_FALSE(any_callback);
  EXPECT_FALSE(config.IntxAsserted());
  EXPECT_FALSE(config.MsixEnabled());
  EXPECT_EQ(config.power_state(), PciPowerState::kD0);
  EXPECT_EQ(Read16(config, kPciVendorId), 0x1af4);
}

TEST(PciConfigSpaceTest, SnapshotRestoreRoundTrip) {
  PciConfigSpace source = MakeRichConfig();
  WriteLe(source, kPciCommand, 2, kPciCommandMemory | kPciCommandMaster);
  WriteLe(source, PciBarOffset(2), 8, 0x0000004000000000);
  WriteLe(source, source.msi_offset() + kPciMsiAddressLo, 4, 0xfee00000);
  WriteLe(source, source.msix_offset() + kPciMsixFlags, 2, kPciMsixFlagsEnable);
  source.SetIntxAsserted(true);
  source.SetMsiPending(3, true);
  source.Set16(source.pcie_offset() + kPciExpDevSta, kPciExpDevStaTransPending);
  const std::vector<uint8_t> snapshot = source.Snapshot();

  PciConfigSpace target = MakeRichConfig();
  bool any_callback = false;
  target.callbacks().msix_control_changed = [&](bool, bool) { any_callback = true; };
  ASSERT_TRUE(target.Restore(snapshot).ok());
  EXPECT_EQ(Image(target), Image(source));
  EXPECT_EQ(target.Snapshot(), snapshot);
  EXPECT_FALSE(any_callback);
  EXPECT_TRUE(target.IntxAsserted());
  EXPECT_TRUE(target.MsixEnabled());
  EXPECT_TRUE(target.MsiPending(3));
  EXPECT_EQ(target.BarAddress(2), 0x0000004000000000u);
}

TEST(PciConfigSpaceTest, RestoreRejectsForeignOrCorruptSnapshots) {
  PciConfigSpace config = MakeRichConfig();
  WriteLe(config, kPciInterruptLine, 1, 5);
  const std::vector<uint8_t> before = Image(config);
  const std::vector<uint8_t> good = config.Snapshot();

  auto expect_rejected = [&](std::vector<uint8_t> snapshot, const char* what) {
    EXPECT_EQ(ErrnoOf(config.Restore(snapshot)), EINVAL) << what;
    EXPECT_EQ(Image(config), before) << what;
  };
  expect_rejected({}, "empty");
  expect_rejected({good.begin(), good.end() - 1}, "truncated");
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  expect_rejected(longer, "trailing byte");
  std::vector<uint8_t> bad = good;
  bad[0] ^= 1;
  expect_rejected(bad, "magic");
  bad = good;
  bad[4] = 2;
  expect_rejected(bad, "version");
  constexpr size_t kImage = 12;  // header size
  bad = good;
  bad[kImage + kPciVendorId] ^= 0xff;
  expect_rejected(bad, "different vendor");
  bad = good;
  bad[kImage + PciBarOffset(1)] |= 0x10;  // address bit below the BAR size
  expect_rejected(bad, "BAR low bits");
  bad = good;
  bad[kImage + config.pm_offset() + kPciPmCtrl] |= 2;  // D2
  expect_rejected(bad, "power state");
  bad = good;
  bad[kImage + config.msi_offset() + kPciMsiFlags] |= 0x70;  // MME 128 > 4 capable
  expect_rejected(bad, "MSI vectors");
  bad = good;
  bad[kImage + config.pcie_offset() + kPciExpDevCtl + 1] |= 0x80;
  expect_rejected(bad, "FLR bit");

  PciConfigSpace small = MakeRichConfig(PciConfigSize::kConventional);
  EXPECT_EQ(ErrnoOf(small.Restore(good)), EINVAL);  // size mismatch
}

TEST(PciConfigSpaceTest, DeviceOwnedRegistersMayDifferOnRestore) {
  auto make = [] {
    PciConfigSpace config;
    const uint8_t body[] = {4, 0x5a};
    EXPECT_TRUE(config.AddCapability(kPciCapIdVendor, body).ok());
    return config;
  };
  PciConfigSpace source = make();
  source.Set8(0x43, 0xa5);  // a read-only register the device updates
  EXPECT_EQ(Read8(source, 0x43), 0xa5);
  WriteLe(source, 0x43, 1, 0);  // still read-only to the guest
  EXPECT_EQ(Read8(source, 0x43), 0xa5);

  PciConfigSpace target = make();
  EXPECT_EQ(ErrnoOf(target.Restore(source.Snapshot())), EINVAL);
  target.Set8(0x43, 0x5a);  // the device declares it owns the register
  EXPECT_TRUE(target.Restore(source.Snapshot()).ok());
  EXPECT_EQ(Read8(target, 0x43), 0xa5);
}

TEST(PciConfigSpaceTest, CallbacksMayReenter) {
  PciConfigSpace config = MakeRichConfig();
  int calls = 0;
  config.callbacks().command_changed = [&](uint16_t, uint16_t now) {
    ++calls;
    if (now & kPciCommandMaster) WriteLe(config, kPciCommand, 2, now & ~kPciCommandMaster);
  };
  WriteLe(config, kPciCommand, 2, kPciCommandMaster | kPciCommandMemory);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(config.command(), kPciCommandMemory);
}

}  // namespace
}  // namespace vfio_user
