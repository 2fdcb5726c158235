// The client's self-contained pieces: DmaSpace (bounds and protection
// checks), SET_IRQS chunk planning, the IRQ journal, IrqWaiter, GuestMemory,
// mappable areas.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "client/client_test_util.h"
#include "client/dma_space.h"
#include "client/guest_memory.h"
#include "client/irq_journal.h"
#include "client/irq_waiter.h"
#include "client/region_mapping.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace testing {
namespace {

TEST(DmaSpaceTest, ValidatesRegions) {
  DmaRegion r;
  r.size = 0;
  r.host = &r;
  EXPECT_ERRNO(DmaSpace::Validate(r), EINVAL);
  r.size = 16;
  r.iova = UINT64_MAX - 8;
  EXPECT_ERRNO(DmaSpace::Validate(r), ERANGE);
  r.iova = 0;
  r.prot = 0;
  EXPECT_ERRNO(DmaSpace::Validate(r), EINVAL);
  r.prot = 0x4;
  EXPECT_ERRNO(DmaSpace::Validate(r), EINVAL);
  r.prot = kDmaMapFlagRead;
  r.host = nullptr;
  EXPECT_ERRNO(DmaSpace::Validate(r), EINVAL);  // neither fd nor host
}

// A range of `bytes` at `iova`, served from the host pointer (no fd).
DmaRegion HostRange(uint64_t iova, std::vector<uint8_t>& bytes,
                    uint32_t prot = kDmaMapFlagRead | kDmaMapFlagWrite) {
  DmaRegion r;
  r.iova = iova;
  r.size = bytes.size();
  r.host = bytes.data();
  r.prot = prot;
  return r;
}

TEST(DmaSpaceTest, ServesWithinRangesOnly) {
  std::vector<uint8_t> a(100, 0xaa), b(50, 0xbb);
  DmaSpace space;
  const DmaRegion ra = HostRange(1000, a);
  const DmaRegion rb = HostRange(1100, b, kDmaMapFlagRead);  // contiguous
  ASSERT_OK(space.Add(ra, UniqueFd()));
  ASSERT_OK(space.Add(rb, UniqueFd()));
  EXPECT_ERRNO(space.Add(ra, UniqueFd()), EEXIST);
  DmaRegion overlap = ra;
  overlap.iova = 1099;
  overlap.size = 2;
  EXPECT_ERRNO(space.Add(overlap, UniqueFd()), EEXIST);
  EXPECT_TRUE(space.Overlaps(1149, 1));
  EXPECT_FALSE(space.Overlaps(1150, 10));
  EXPECT_FALSE(space.Overlaps(0, 1000));

  std::vector<uint8_t> out(20);
  ASSERT_OK(space.Read(1090, absl::MakeSpan(out)));  // spans both
  EXPECT_EQ(out[0], 0xaa);
  EXPECT_EQ(out[9], 0xaa);
  EXPECT_EQ(out[10], 0xbb);
  EXPECT_ERRNO(space.Read(1140, absl::MakeSpan(out)), EFAULT);  // past the end
  EXPECT_ERRNO(space.Read(990, absl::MakeSpan(out)), EFAULT);   // before
  EXPECT_ERRNO(space.Read(UINT64_MAX - 5, absl::MakeSpan(out)), EFAULT);
  const std::vector<uint8_t> data(20, 0x11);
  // Crossing into the read-only range changes nothing at all.
  EXPECT_ERRNO(space.Write(1090, data), EPERM);
  EXPECT_EQ(a[95], 0xaa);
  ASSERT_OK(space.Write(1080, data));
  EXPECT_EQ(a[80], 0x11);
  EXPECT_EQ(a[99], 0x11);
  ASSERT_OK(space.Read(1000, {}));  // empty access

  EXPECT_ERRNO(space.Remove(1000, 99), ENOENT);
  ASSERT_OK(space.Remove(1000, 100));
  EXPECT_ERRNO(space.Read(1090, absl::MakeSpan(out)), EFAULT);
  EXPECT_EQ(space.size(), 1u);
  space.Clear();
  EXPECT_EQ(space.size(), 0u);
}

TEST(DmaSpaceTest, FdBackedRangesUseFileIo) {
  absl::StatusOr<std::unique_ptr<GuestMemory>> mem = GuestMemory::Create(8192);
  ASSERT_TRUE(mem.ok()) << mem.status();
  DmaSpace space;
  DmaRegion r = (*mem)->Region(0x4000, 4096, 4096);
  r.host = nullptr;
  ASSERT_OK(space.Add(r, UniqueFd(::dup((*mem)->fd()))));
  const std::vector<uint8_t> data = PatternBytes(64, 9);
  ASSERT_OK(space.Write(0x4000 + 10, data));
  EXPECT_EQ(std::memcmp((*mem)->data() + 4096 + 10, data.data(), 64), 0);
  std::vector<uint8_t> out(64);
  ASSERT_OK(space.Read(0x4000 + 10, absl::MakeSpan(out)));
  EXPECT_EQ(out, data);
  const std::vector<DmaSpace::Entry> snapshot = space.Snapshot();
  ASSERT_EQ(snapshot.size(), 1u);
  ASSERT_NE(snapshot[0].fd, nullptr);
  EXPECT_EQ(snapshot[0].region.fd, snapshot[0].fd->get());
}

TEST(DmaSpaceTest, ReadInPlaceOnlyWithinOneReadableHostRange) {
  std::vector<uint8_t> a(100, 0xaa), b(50, 0xbb);
  DmaSpace space;
  ASSERT_OK(space.Add(HostRange(1000, a), UniqueFd()));
  // The device may not read this one.
  ASSERT_OK(space.Add(HostRange(1100, b, kDmaMapFlagWrite), UniqueFd()));
  absl::StatusOr<std::unique_ptr<GuestMemory>> mem = GuestMemory::Create(4096);
  ASSERT_TRUE(mem.ok()) << mem.status();
  DmaRegion rf = (*mem)->Region(0x4000);
  rf.host = nullptr;  // fd only
  ASSERT_OK(space.Add(rf, UniqueFd(::dup((*mem)->fd()))));

  absl::Span<const uint8_t> seen;
  auto use = [&seen](absl::Span<const uint8_t> bytes) { seen = bytes; };
  EXPECT_TRUE(space.ReadInPlace(1010, 90, use));
  EXPECT_EQ(seen.data(), a.data() + 10);
  EXPECT_EQ(seen.size(), 90u);
  seen = {};
  EXPECT_FALSE(space.ReadInPlace(1010, 91, use));  // runs into `rb`
  EXPECT_FALSE(space.ReadInPlace(1100, 4, use));   // not readable
  EXPECT_FALSE(space.ReadInPlace(0x4000, 4, use)); // no host pointer
  EXPECT_FALSE(space.ReadInPlace(999, 4, use));    // not mapped
  EXPECT_FALSE(space.ReadInPlace(1000, UINT64_MAX, use));
  EXPECT_FALSE(space.ReadInPlace(UINT64_MAX, 1, use));
  EXPECT_TRUE(seen.empty());
}

TEST(PlanEventfdChunksTest, RunsOfValidOrUnusedCappedByMaxFds) {
  const std::vector<int> fds = {10, 11, 12, 13, -1, -1, 14, -1, 15, 16};
  const std::vector<EventfdChunk> chunks = PlanEventfdChunks(4, fds, 3);
  ASSERT_EQ(chunks.size(), 6u);
  const uint32_t starts[] = {4, 7, 8, 10, 11, 12};
  const uint32_t counts[] = {3, 1, 2, 1, 1, 2};
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].start, starts[i]) << i;
    EXPECT_EQ(chunks[i].count, counts[i]) << i;
  }
  EXPECT_EQ(chunks[0].fds, (std::vector<int>{10, 11, 12}));
  EXPECT_TRUE(chunks[2].fds.empty());  // de-assign
  EXPECT_EQ(chunks[5].fds, (std::vector<int>{15, 16}));
  EXPECT_TRUE(PlanEventfdChunks(0, {}, 8).empty());
  EXPECT_EQ(PlanEventfdChunks(0, fds, 0).size(), 10u);  // 0 treated as 1
}

TEST(IrqJournalTest, RecordsTriggersAndMasks) {
  IrqJournal journal;
  const int a = ::eventfd(0, EFD_CLOEXEC), b = ::eventfd(0, EFD_CLOEXEC);
  ASSERT_OK(journal.SetTriggers(2, 1, std::vector<int>{a, -1, b}));
  ::close(a);  // the journal holds its own dups
  ::close(b);
  std::vector<int> triggers = journal.Triggers(2);
  ASSERT_EQ(triggers.size(), 4u);
  EXPECT_EQ(triggers[0], -1);
  EXPECT_GE(triggers[1], 0);
  EXPECT_EQ(triggers[2], -1);
  const uint64_t one = 1;
  EXPECT_EQ(::write(triggers[3], &one, 8), 8);  // still open
  ASSERT_OK(journal.SetTriggers(2, 3, std::vector<int>{-1}));
  EXPECT_EQ(journal.Triggers(2).size(), 2u);  // trailing unused trimmed

  journal.SetMasked(2, 5, 3, true);
  journal.SetMasked(2, 6, 1, false);
  journal.SetMasked(0, 0, 1, true);
  const std::vector<IrqJournal::Run> runs = journal.MaskedRuns(2);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].start, 5u);
  EXPECT_EQ(runs[0].count, 1u);
  EXPECT_EQ(runs[1].start, 7u);
  EXPECT_EQ(journal.Indexes(), (std::vector<uint32_t>{0, 2}));
  journal.ClearMasks();
  EXPECT_EQ(journal.Indexes(), (std::vector<uint32_t>{2}));
  journal.Disable(2);
  EXPECT_TRUE(journal.Indexes().empty());
  EXPECT_ERRNO(journal.SetTriggers(1, 0, std::vector<int>{9999}), EBADF);
}

TEST(IrqWaiterTest, ReportsCountsPerVector) {
  absl::StatusOr<std::unique_ptr<IrqWaiter>> waiter = IrqWaiter::Create(4);
  ASSERT_TRUE(waiter.ok()) << waiter.status();
  EXPECT_ERRNO(IrqWaiter::Create(0).status(), EINVAL);
  absl::StatusOr<std::vector<IrqWaiter::Event>> none =
      (*waiter)->Wait(absl::ZeroDuration());
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  const uint64_t two = 2, one = 1;
  ASSERT_EQ(::write((*waiter)->fds()[3], &two, 8), 8);
  ASSERT_EQ(::write((*waiter)->fds()[1], &one, 8), 8);
  absl::StatusOr<std::vector<IrqWaiter::Event>> events =
      (*waiter)->Wait(absl::Seconds(5));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].vector, 1u);
  EXPECT_EQ((*events)[1].vector, 3u);
  EXPECT_EQ((*events)[1].count, 2u);
  EXPECT_EQ((*waiter)->Take(3), 0u);
  EXPECT_EQ((*waiter)->Take(99), 0u);
}

TEST(MappableAreasTest, SparseOrWhole) {
  RegionInfo info;
  info.size = 8192;
  EXPECT_EQ(MappableAreas(info), (std::vector<SparseMmapArea>{{0, 8192}}));
  info.sparse_areas = std::vector<SparseMmapArea>{{0, 0}, {4096, 4096}};
  EXPECT_EQ(MappableAreas(info), (std::vector<SparseMmapArea>{{4096, 4096}}));
  info.sparse_areas = std::vector<SparseMmapArea>{};
  EXPECT_TRUE(MappableAreas(info).empty());  // sparse with no areas
}

TEST(MappingRegistryTest, RejectsUnalignedAreasAndRemaps) {
  absl::StatusOr<std::unique_ptr<GuestMemory>> mem1 = GuestMemory::Create(8192);
  absl::StatusOr<std::unique_ptr<GuestMemory>> mem2 = GuestMemory::Create(8192);
  ASSERT_TRUE(mem1.ok() && mem2.ok());
  auto registry = std::make_shared<MappingRegistry>();
  RegionInfo info;
  info.index = 3;
  info.flags = kRegionInfoFlagRead | kRegionInfoFlagWrite | kRegionInfoFlagMmap;
  info.size = 8192;
  info.sparse_areas = std::vector<SparseMmapArea>{{100, 4096}};
  EXPECT_ERRNO(registry->Map(info, (*mem1)->fd()).status(), EINVAL);
  info.sparse_areas = std::vector<SparseMmapArea>{{4096, 4096}};
  absl::StatusOr<std::unique_ptr<RegionMapping>> mapping =
      registry->Map(info, (*mem1)->fd());
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  (*mem1)->data()[4096] = 1;
  (*mem2)->data()[4096] = 2;
  uint8_t* p = (*mapping)->At(4096);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 1);
  EXPECT_EQ(registry->Remap(info, (*mem2)->fd()), 0);
  EXPECT_EQ(*p, 2);  // same address, new memory
  EXPECT_EQ(registry->Remap(info, -1), 1);
  EXPECT_TRUE((*mapping)->stale());
  EXPECT_EQ(*p, 0);  // zero pages, no crash
  EXPECT_EQ(registry->live(), 1u);
  mapping->reset();
  EXPECT_EQ(registry->live(), 0u);
}

}  // namespace
}  // namespace testing
}  // namespace vfio_user
