#include "server/pci/msix.h"

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/errno_status.h"
#include "gtest/gtest.h"
#include "server/pci/config_space.h"

namespace vfio_user {
namespace {

constexpr MsixLayout kLayout = {.table_size = 80, .table_bar = 0, .table_offset = 0x1000,
                                .pba_bar = 0, .pba_offset = 0x2000};

std::vector<uint8_t> LeBytes(uint64_t value, int width) {
  std::vector<uint8_t> bytes(width);
  for (int i = 0; i < width; ++i, value >>= 8) bytes[i] = static_cast<uint8_t>(value);
  return bytes;
}

uint64_t FromLe(const std::vector<uint8_t>& bytes) {
  uint64_t value = 0;
  for (size_t i = bytes.size(); i-- > 0;) value = value << 8 | bytes[i];
  return value;
}

uint64_t ReadTable(const MsixTable& table, uint64_t offset, int width) {
  std::vector<uint8_t> bytes(width);
  const absl::Status status = table.ReadTable(offset, absl::MakeSpan(bytes));
  EXPECT_TRUE(status.ok()) << status;
  return FromLe(bytes);
}

void WriteTable(MsixTable& table, uint64_t offset, int width, uint64_t value) {
  const absl::Status status = table.WriteTable(offset, LeBytes(value, width));
  EXPECT_TRUE(status.ok()) << status;
}

uint64_t ReadPba(const MsixTable& table, uint64_t offset, int width) {
  std::vector<uint8_t> bytes(width);
  const absl::Status status = table.ReadPba(offset, absl::MakeSpan(bytes));
  EXPECT_TRUE(status.ok()) << status;
  return FromLe(bytes);
}

uint64_t Entry(uint32_t vector, uint32_t field) { return vector * kPciMsixEntrySize + field; }

void Unmask(MsixTable& table, uint32_t vector) {
  WriteTable(table, Entry(vector, kPciMsixEntryVectorCtrl), 4, 0);
}

TEST(MsixTableTest, PowerOnState) {
  MsixTable table(kLayout);
  EXPECT_EQ(table.size(), 80u);
  EXPECT_EQ(kLayout.table_bytes(), 80u * 16);
  EXPECT_EQ(kLayout.pba_bytes(), 16u);
  EXPECT_FALSE(table.enabled());
  EXPECT_FALSE(table.function_masked());
  for (uint32_t v = 0; v < table.size(); ++v) {
    EXPECT_EQ(ReadTable(table, Entry(v, 0), 8), 0u);
    EXPECT_EQ(ReadTable(table, Entry(v, kPciMsixEntryData), 8), 1ull << 32);  // masked
    EXPECT_TRUE(table.IsMasked(v));
    EXPECT_TRUE(table.VectorMaskBit(v));
    EXPECT_FALSE(table.IsPending(v));
  }
  EXPECT_EQ(ReadPba(table, 0, 8), 0u);
  EXPECT_EQ(ReadPba(table, 8, 8), 0u);
}

TEST(MsixTableTest, FourByteTableAccesses) {
  MsixTable table(kLayout);
  WriteTable(table, Entry(5, kPciMsixEntryLowerAddr), 4, 0xfee01007);  // bits 1:0 reserved
  WriteTable(table, Entry(5, kPciMsixEntryUpperAddr), 4, 0x00000001);
  WriteTable(table, Entry(5, kPciMsixEntryData), 4, 0xdeadbeef);
  WriteTable(table, Entry(5, kPciMsixEntryVectorCtrl), 4, 0xfffffffe);  // reserved, unmask
  EXPECT_EQ(ReadTable(table, Entry(5, kPciMsixEntryLowerAddr), 4), 0xfee01004u);
  EXPECT_EQ(ReadTable(table, Entry(5, kPciMsixEntryUpperAddr), 4), 1u);
  EXPECT_EQ(ReadTable(table, Entry(5, kPciMsixEntryData), 4), 0xdeadbeefu);
  EXPECT_EQ(ReadTable(table, Entry(5, kPciMsixEntryVectorCtrl), 4), 0u);
  EXPECT_FALSE(table.VectorMaskBit(5));
  WriteTable(table, Entry(5, kPciMsixEntryVectorCtrl), 4, 0xffffffff);
  EXPECT_EQ(ReadTable(table, Entry(5, kPciMsixEntryVectorCtrl), 4), 1u);
  EXPECT_EQ(table.Message(5).address, 0x1fee01004u);
  EXPECT_EQ(table.Message(5).data, 0xdeadbeefu);
  // Neighbours untouched.
  EXPECT_EQ(ReadTable(table, Entry(4, kPciMsixEntryData), 4), 0u);
  EXPECT_EQ(ReadTable(table, Entry(6, kPciMsixEntryLowerAddr), 4), 0u);
}

TEST(MsixTableTest, EightByteTableAccesses) {
  MsixTable table(kLayout);
  WriteTable(table, Entry(79, kPciMsixEntryLowerAddr), 8, 0x00000002fee00000);
  WriteTable(table, Entry(79, kPciMsixEntryData), 8, 0x0000000000004041);  // data + unmask
  EXPECT_EQ(ReadTable(table, Entry(79, kPciMsixEntryLowerAddr), 8), 0x00000002fee00000u);
  EXPECT_EQ(ReadTable(table, Entry(79, kPciMsixEntryData), 8), 0x4041u);
  EXPECT_EQ(ReadTable(table, Entry(79, kPciMsixEntryLowerAddr), 4), 0xfee00000u);
  EXPECT_EQ(table.Message(79).address, 0x2fee00000u);
  EXPECT_EQ(table.Message(79).data, 0x4041u);
  EXPECT_FALSE(table.VectorMaskBit(79));
  // Naturally aligned narrow accesses and dword-aligned bulk accesses work too.
  WriteTable(table, Entry(0, kPciMsixEntryData) + 2, 2, 0xabcd);
  EXPECT_EQ(ReadTable(table, Entry(0, kPciMsixEntryData), 4), 0xabcd0000u);
  WriteTable(table, Entry(0, kPciMsixEntryVectorCtrl), 1, 0);
  EXPECT_FALSE(table.VectorMaskBit(0));
  std::vector<uint8_t> whole(kLayout.table_bytes());
  ASSERT_TRUE(table.ReadTable(0, absl::MakeSpan(whole)).ok());
  EXPECT_EQ(whole[Entry(79, kPciMsixEntryData)], 0x41);
  std::vector<uint8_t> two_entries(32, 0xff);
  ASSERT_TRUE(table.WriteTable(Entry(10, 0), two_entries).ok());
  EXPECT_EQ(ReadTable(table, Entry(11, kPciMsixEntryLowerAddr), 4), 0xfffffffcu);
  EXPECT_EQ(ReadTable(table, Entry(11, kPciMsixEntryVectorCtrl), 4), 1u);
}

TEST(MsixTableTest, MisalignedAndOutOfRangeAccessesFail) {
  MsixTable table(kLayout);
  std::vector<uint8_t> buf(16);
  auto read = [&](uint64_t offset, size_t len) {
    return ErrnoOf(table.ReadTable(offset, absl::MakeSpan(buf).first(len)));
  };
  auto write = [&](uint64_t offset, size_t len) {
    return ErrnoOf(table.WriteTable(offset, absl::MakeSpan(buf).first(len)));
  };
  const uint64_t end = kLayout.table_bytes();
  EXPECT_EQ(read(end - 8, 8), 0);
  EXPECT_EQ(read(2, 4), EINVAL);   // misaligned dword
  EXPECT_EQ(read(4, 8), EINVAL);   // misaligned qword
  EXPECT_EQ(read(1, 2), EINVAL);
  EXPECT_EQ(read(0, 3), EINVAL);   // odd size
  EXPECT_EQ(read(0, 0), EINVAL);
  EXPECT_EQ(read(2, 12), EINVAL);  // bulk must be dword aligned
  EXPECT_EQ(write(6, 4), EINVAL);
  for (uint64_t offset : {end, end - 4, end + 8, uint64_t{1} << 40,
                          std::numeric_limits<uint64_t>::max() - 7,
                          std::numeric_limits<uint64_t>::max() & ~uint64_t{7}}) {
    EXPECT_EQ(read(offset, 8), EINVAL) << offset;
    EXPECT_EQ(write(offset, 8), EINVAL) << offset;
    EXPECT_EQ(ErrnoOf(table.ReadPba(offset, absl::MakeSpan(buf).first(8))), EINVAL);
  }
  EXPECT_EQ(ErrnoOf(table.ReadPba(16, absl::MakeSpan(buf).first(4))), EINVAL);
  EXPECT_EQ(ErrnoOf(table.ReadPba(2, absl::MakeSpan(buf).first(4))), EINVAL);
  EXPECT_EQ(ErrnoOf(table.WritePba(16, absl::MakeSpan(buf).first(4))), EINVAL);
}

TEST(MsixTableTest, EffectiveMask) {
  MsixTable table(kLayout);
  Unmask(table, 3);
  EXPECT_TRUE(table.IsMasked(3));  // MSI-X disabled
  table.SetControl(/*enabled=*/true, /*function_masked=*/true);
  EXPECT_TRUE(table.IsMasked(3));
  table.SetControl(true, false);
  EXPECT_FALSE(table.IsMasked(3));
  EXPECT_TRUE(table.IsMasked(4));  // own mask bit
  EXPECT_TRUE(table.IsMasked(80));  // out of range
  table.SetControl(false, false);
  EXPECT_TRUE(table.IsMasked(3));
}

TEST(MsixTableTest, PbaReflectsPendingAndIgnoresWrites) {
  MsixTable table(kLayout);
  table.SetPending(0);
  table.SetPending(9);
  table.SetPending(70);
  table.SetPending(80);  // out of range: ignored
  EXPECT_EQ(ReadPba(table, 0, 8), (1ull << 0) | (1ull << 9));
  EXPECT_EQ(ReadPba(table, 8, 8), 1ull << 6);
  EXPECT_EQ(ReadPba(table, 0, 4), (1u << 0) | (1u << 9));
  EXPECT_EQ(ReadPba(table, 1, 1), 1u << 1);
  std::vector<uint8_t> both(16);
  ASSERT_TRUE(table.ReadPba(0, absl::MakeSpan(both)).ok());
  EXPECT_EQ(both[8], 1 << 6);
  EXPECT_TRUE(table.WritePba(0, LeBytes(0, 8)).ok());  // read-only: ignored
  EXPECT_EQ(ReadPba(table, 0, 8), (1ull << 0) | (1ull << 9));
  table.ClearPending(9);
  EXPECT_FALSE(table.IsPending(9));
  EXPECT_EQ(ReadPba(table, 0, 8), 1u);
}

TEST(MsixTableTest, RequestInterrupt) {
  MsixTable table(kLayout);
  table.SetControl(true, false);
  EXPECT_FALSE(table.RequestInterrupt(1));  // masked: becomes pending
  EXPECT_TRUE(table.IsPending(1));
  Unmask(table, 2);
  EXPECT_TRUE(table.RequestInterrupt(2));  // deliver now
  EXPECT_FALSE(table.IsPending(2));
  EXPECT_FALSE(table.RequestInterrupt(1000));
}

TEST(MsixTableTest, UnmaskWhilePendingFiresCallback) {
  MsixTable table(kLayout);
  std::vector<uint32_t> fired;
  table.callbacks().pending_unmasked = [&](uint32_t vector) {
    fired.push_back(vector);
    table.ClearPending(vector);  // the interrupt layer signals and clears
  };
  table.SetControl(true, false);
  EXPECT_FALSE(table.RequestInterrupt(7));
  Unmask(table, 6);  // not pending: nothing
  EXPECT_TRUE(fired.empty());
  Unmask(table, 7);
  EXPECT_EQ(fired, std::vector<uint32_t>{7});
  EXPECT_FALSE(table.IsPending(7));

  // Function mask: pending vectors fire when it is lifted, masked ones don't.
  table.SetControl(true, true);
  EXPECT_FALSE(table.RequestInterrupt(6));
  EXPECT_FALSE(table.RequestInterrupt(7));
  table.SetPending(8);  // its own mask bit still set
  table.SetControl(true, true);  // no change
  EXPECT_EQ(fired.size(), 1u);
  table.SetControl(true, false);
  EXPECT_EQ(fired, (std::vector<uint32_t>{7, 6, 7}));
  EXPECT_TRUE(table.IsPending(8));

  // Enabling MSI-X delivers what became pending while it was disabled.
  table.SetControl(false, false);
  EXPECT_FALSE(table.RequestInterrupt(6));
  table.SetControl(true, false);
  EXPECT_EQ(fired.back(), 6u);

  // Unmasking with the function still masked does not fire.
  fired.clear();
  table.SetControl(true, true);
  Unmask(table, 8);
  EXPECT_TRUE(fired.empty());
  table.SetControl(true, false);
  EXPECT_EQ(fired, std::vector<uint32_t>{8});
}

TEST(MsixTableTest, VectorMaskChangedCallback) {
  MsixTable table(kLayout);
  std::vector<std::pair<uint32_t, bool>> changes;
  table.callbacks().vector_mask_changed = [&](uint32_t vector, bool masked) {
    changes.emplace_back(vector, masked);
  };
  Unmask(table, 1);
  Unmask(table, 1);  // same value: no call
  WriteTable(table, Entry(1, kPciMsixEntryVectorCtrl), 4, 1);
  WriteTable(table, Entry(2, kPciMsixEntryData), 4, 0x55);  // data only: no call
  table.SetControl(true, true);  // function mask is not a vector mask change
  std::vector<uint8_t> block(48, 0);  // entries 3..5, all unmasked in one write
  ASSERT_TRUE(table.WriteTable(Entry(3, 0), block).ok());
  EXPECT_EQ(changes, (std::vector<std::pair<uint32_t, bool>>{
                         {1, false}, {1, true}, {3, false}, {4, false}, {5, false}}));
}

TEST(MsixTableTest, BarRouting) {
  MsixTable table(kLayout);
  EXPECT_TRUE(table.Covers(0, 0x1000, 4));
  EXPECT_TRUE(table.Covers(0, 0x14f8, 8));   // last table qword
  EXPECT_FALSE(table.Covers(0, 0x1500, 4));  // past the table
  EXPECT_TRUE(table.Covers(0, 0x0ffc, 8));   // straddles the start
  EXPECT_FALSE(table.Covers(0, 0x0ff8, 8));
  EXPECT_TRUE(table.Covers(0, 0x2008, 8));
  EXPECT_FALSE(table.Covers(0, 0x2010, 4));
  EXPECT_FALSE(table.Covers(1, 0x1000, 4));  // other BAR
  EXPECT_TRUE(table.Covers(0, 0, std::numeric_limits<uint64_t>::max()));
  EXPECT_FALSE(table.Covers(0, std::numeric_limits<uint64_t>::max(), 1));

  ASSERT_TRUE(table.BarWrite(0, 0x1000 + Entry(1, kPciMsixEntryData), LeBytes(0x77, 4)).ok());
  EXPECT_EQ(table.Message(1).data, 0x77u);
  table.SetPending(3);
  std::vector<uint8_t> buf(8);
  ASSERT_TRUE(table.BarRead(0, 0x2000, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(FromLe(buf), 1u << 3);
  EXPECT_TRUE(table.BarWrite(0, 0x2000, buf).ok());  // PBA writes are ignored
  EXPECT_EQ(ErrnoOf(table.BarRead(0, 0x1800, absl::MakeSpan(buf))), EINVAL);
  EXPECT_EQ(ErrnoOf(table.BarRead(0, 0x0ffc, absl::MakeSpan(buf))), EINVAL);
  EXPECT_EQ(ErrnoOf(table.BarRead(0, 0x14fc, absl::MakeSpan(buf))), EINVAL);  // past end
  EXPECT_EQ(ErrnoOf(table.BarRead(2, 0x2000, absl::MakeSpan(buf))), EINVAL);

  MsixTable split({.table_size = 4, .table_bar = 2, .table_offset = 0, .pba_bar = 4,
                   .pba_offset = 0x800});
  EXPECT_TRUE(split.Covers(2, 0, 4));
  EXPECT_TRUE(split.Covers(4, 0x800, 8));
  EXPECT_FALSE(split.Covers(2, 0x800, 8));
  ASSERT_TRUE(split.BarRead(4, 0x800, absl::MakeSpan(buf)).ok());
}

TEST(MsixTableTest, ValidateLayout) {
  EXPECT_TRUE(ValidateMsixLayout(kLayout).ok());
  EXPECT_FALSE(ValidateMsixLayout({.table_size = 2048}).ok());  // PBA overlaps table
  EXPECT_TRUE(ValidateMsixLayout(
                  {.table_size = 2048, .table_offset = 0, .pba_offset = 0x8000})
                  .ok());
  EXPECT_EQ(ErrnoOf(ValidateMsixLayout({.table_size = 0, .pba_offset = 0x100})), EINVAL);
  EXPECT_EQ(ErrnoOf(ValidateMsixLayout({.table_size = 2049, .pba_offset = 0x10000})), EINVAL);
  EXPECT_EQ(ErrnoOf(ValidateMsixLayout({.table_size = 1, .table_bar = 6})), EINVAL);
  EXPECT_EQ(ErrnoOf(ValidateMsixLayout({.table_size = 1, .pba_bar = -1})), EINVAL);
  EXPECT_EQ(ErrnoOf(ValidateMsixLayout({.table_size = 1, .table_offset = 4, .pba_bar = 1})),
            EINVAL);
  EXPECT_EQ(ErrnoOf(ValidateMsixLayout({.table_size = 4, .pba_offset = 0x38})), EINVAL);
  EXPECT_TRUE(ValidateMsixLayout({.table_size = 4, .pba_offset = 0x40}).ok());
}

TEST(MsixTableTest, ResetRestoresPowerOnState) {
  MsixTable table(kLayout);
  table.SetControl(true, true);
  WriteTable(table, Entry(2, 0), 8, 0xfee00000);
  Unmask(table, 2);
  table.SetPending(5);
  int callbacks = 0;
  table.callbacks().vector_mask_changed = [&](uint32_t, bool) { ++callbacks; };
  table.callbacks().pending_unmasked = [&](uint32_t) { ++callbacks; };
  table.Reset();
  EXPECT_EQ(callbacks, 0);
  EXPECT_FALSE(table.enabled());
  EXPECT_FALSE(table.function_masked());
  EXPECT_TRUE(table.VectorMaskBit(2));
  EXPECT_EQ(table.Message(2).address, 0u);
  EXPECT_FALSE(table.IsPending(5));
  EXPECT_EQ(table.Snapshot(), MsixTable(kLayout).Snapshot());
}

TEST(MsixTableTest, SnapshotRestoreRoundTrip) {
  MsixTable source(kLayout);
  source.SetControl(true, true);
  WriteTable(source, Entry(9, 0), 8, 0x1fee00000);
  WriteTable(source, Entry(9, 8), 8, 0x1234);
  source.SetPending(9);
  source.SetPending(79);
  const std::vector<uint8_t> snapshot = source.Snapshot();

  MsixTable target(kLayout);
  ASSERT_TRUE(target.Restore(snapshot).ok());
  EXPECT_EQ(target.Snapshot(), snapshot);
  EXPECT_TRUE(target.enabled());
  EXPECT_TRUE(target.function_masked());
  EXPECT_EQ(target.Message(9).address, 0x1fee00000u);
  EXPECT_FALSE(target.VectorMaskBit(9));
  EXPECT_TRUE(target.IsPending(79));

  const std::vector<uint8_t> fresh = MsixTable(kLayout).Snapshot();
  auto expect_rejected = [&](std::vector<uint8_t> bad, const char* what) {
    MsixTable t(kLayout);
    EXPECT_EQ(ErrnoOf(t.Restore(bad)), EINVAL) << what;
    EXPECT_EQ(t.Snapshot(), fresh) << what;
  };
  expect_rejected({snapshot.begin(), snapshot.end() - 1}, "truncated");
  std::vector<uint8_t> bad = snapshot;
  bad[0] ^= 1;
  expect_rejected(bad, "magic");
  bad = snapshot;
  bad[6] |= 0x4;
  expect_rejected(bad, "flags");
  constexpr size_t kHeader = 12;
  bad = snapshot;
  bad[kHeader + Entry(0, kPciMsixEntryVectorCtrl)] |= 2;
  expect_rejected(bad, "reserved control bit");
  bad = snapshot;
  bad[kHeader + Entry(0, 0)] |= 1;
  expect_rejected(bad, "reserved address bit");
  bad = snapshot;
  bad.back() |= 0x80;  // vector 127 of an 80-vector table
  expect_rejected(bad, "pending past table");
  MsixTable other({.table_size = 16, .pba_offset = 0x100});
  EXPECT_EQ(ErrnoOf(other.Restore(snapshot)), EINVAL);
}

// The wiring a device does between its config space and its table.
TEST(MsixTableTest, DrivenByConfigSpaceMessageControl) {
  PciConfigSpace config;
  ASSERT_TRUE(config.AddBar(0, PciBar::Memory32(0x4000)).ok());
  auto cap = config.AddMsix(kLayout);
  ASSERT_TRUE(cap.ok()) << cap.status();
  MsixTable table(kLayout);
  config.callbacks().msix_control_changed = [&](bool enabled, bool masked) {
    table.SetControl(enabled, masked);
  };
  std::vector<uint32_t> fired;
  table.callbacks().pending_unmasked = [&](uint32_t v) {
    fired.push_back(v);
    table.ClearPending(v);
  };
  config.callbacks().function_level_reset = [&] { table.Reset(); };

  const uint16_t control = *cap + kPciMsixFlags;
  ASSERT_TRUE(config.Write(control, LeBytes(kPciMsixFlagsEnable | kPciMsixFlagsMaskAll, 2)).ok());
  EXPECT_TRUE(table.enabled());
  EXPECT_TRUE(table.function_masked());
  Unmask(table, 0);
  EXPECT_FALSE(table.RequestInterrupt(0));
  ASSERT_TRUE(config.Write(control, LeBytes(kPciMsixFlagsEnable, 2)).ok());
  EXPECT_EQ(fired, std::vector<uint32_t>{0});
  EXPECT_TRUE(table.RequestInterrupt(0));
}

}  // namespace
}  // namespace vfio_user
