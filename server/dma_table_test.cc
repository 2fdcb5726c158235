#include "server/dma_table.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "core/errno_status.h"
#include "core/protocol.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

using ::testing::ElementsAre;

constexpr uint64_t kPage = 4096;
constexpr uint32_t kRW = kDmaMapFlagRead | kDmaMapFlagWrite;

// A real memfd of `size` bytes; byte i holds Pattern(i).
uint8_t Pattern(uint64_t i) { return static_cast<uint8_t>(i * 7 + 3); }

UniqueFd MakeMemfd(uint64_t size) {
  UniqueFd fd(memfd_create("dma_table_test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << strerror(errno);
  EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  std::vector<uint8_t> bytes(size);
  for (uint64_t i = 0; i < size; ++i) bytes[i] = Pattern(i);
  EXPECT_EQ(pwrite(fd.get(), bytes.data(), size, 0),
            static_cast<ssize_t>(size));
  return fd;
}

UniqueFd Dup(const UniqueFd& fd) {
  return UniqueFd(fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
}

std::vector<uint8_t> PreadAll(const UniqueFd& fd, uint64_t offset, size_t len) {
  std::vector<uint8_t> out(len);
  EXPECT_EQ(pread(fd.get(), out.data(), len, static_cast<off_t>(offset)),
            static_cast<ssize_t>(len));
  return out;
}

DmaMapRequest Req(uint64_t address, uint64_t size, uint32_t flags = kRW,
                  uint64_t offset = 0) {
  DmaMapRequest r;
  r.flags = flags;
  r.address = address;
  r.size = size;
  r.offset = offset;
  return r;
}

int OpenFdCount() {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (readdir(dir) != nullptr) ++n;
  closedir(dir);
  return n;
}

class DmaTableTest : public ::testing::Test {
 protected:
  DmaTable table_{/*max_maps=*/16, /*pgsizes=*/kPage};
};

// ---- Map validation ----

TEST_F(DmaTableTest, MapReadWriteThroughMemfd) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(0x100000, 4 * kPage), Dup(memfd)).ok());
  EXPECT_EQ(table_.size(), 1u);

  std::vector<uint8_t> got(100);
  ASSERT_TRUE(table_.Read(0x100000 + 10, absl::MakeSpan(got)).ok());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], Pattern(10 + i));

  const std::vector<uint8_t> data = {1, 2, 3, 4, 5};
  ASSERT_TRUE(table_.Write(0x100000 + kPage + 1, data).ok());
  EXPECT_EQ(PreadAll(memfd, kPage + 1, 5), data);  // seen by the "client"

  // And the other way: the client writes, the device reads.
  const uint8_t from_client = 0xAB;
  ASSERT_EQ(pwrite(memfd.get(), &from_client, 1, 3 * kPage), 1);
  uint8_t one = 0;
  ASSERT_TRUE(table_.Read(0x100000 + 3 * kPage, absl::MakeSpan(&one, 1)).ok());
  EXPECT_EQ(one, 0xAB);

  const DmaTableCounters c = table_.counters();
  EXPECT_EQ(c.maps, 1u);
  EXPECT_EQ(c.bytes_read, 101u);
  EXPECT_EQ(c.bytes_written, 5u);
}

TEST_F(DmaTableTest, OffsetIntoFd) {
  UniqueFd memfd = MakeMemfd(8 * kPage);
  ASSERT_TRUE(table_.Map(Req(0, 2 * kPage, kRW, 3 * kPage), Dup(memfd)).ok());
  std::vector<uint8_t> got(8);
  ASSERT_TRUE(table_.Read(kPage + 4, absl::MakeSpan(got)).ok());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], Pattern(3 * kPage + kPage + 4 + i));
  }
  const std::vector<uint8_t> data = {9, 9};
  ASSERT_TRUE(table_.Write(0, data).ok());
  EXPECT_EQ(PreadAll(memfd, 3 * kPage, 2), data);
}

TEST_F(DmaTableTest, RejectsBadRequests) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  auto expect_einval = [&](const DmaMapRequest& req, bool with_fd) {
    absl::Status s = table_.Map(req, with_fd ? Dup(memfd) : UniqueFd());
    EXPECT_EQ(ErrnoOf(s), EINVAL) << s;
  };
  expect_einval(Req(0, 0), true);            // size 0
  expect_einval(Req(0x800, kPage), true);    // address unaligned
  expect_einval(Req(0, kPage + 1), true);    // size unaligned
  expect_einval(Req(0, kPage, 0x10), true);  // unknown flag
  expect_einval(Req(0, kPage, 0), true);     // no READ/WRITE
  expect_einval(Req(0, kPage, kRW | kDmaMapFlagMmapLvu | kDmaMapFlagFileIoLvu),
                true);
  expect_einval(Req(0, kPage, kRW | kDmaMapFlagMmapLvu), false);  // needs fd
  expect_einval(Req(0, kPage, kRW | kDmaMapFlagFileIoLvu), false);
  expect_einval(Req(0, kPage, kRW, 0x800), true);      // offset unaligned
  expect_einval(Req(0, kPage, kRW, 4 * kPage), true);  // beyond EOF
  expect_einval(Req(0, 8 * kPage), true);              // larger than file
  expect_einval(Req(0, kPage, kRW, ~uint64_t{0} & ~(kPage - 1)), true);
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_EQ(table_.counters().maps, 0u);
}

TEST_F(DmaTableTest, WrapAroundAddresses) {
  // Wrapping u64 is rejected...
  EXPECT_EQ(
      ErrnoOf(table_.Map(Req(~uint64_t{0} - kPage + 1, 2 * kPage), UniqueFd())),
      EINVAL);
  // ...but the very last page of the address space is a valid map.
  const uint64_t top = ~uint64_t{0} - kPage + 1;
  UniqueFd memfd = MakeMemfd(kPage);
  ASSERT_TRUE(table_.Map(Req(top, kPage), Dup(memfd)).ok());
  std::vector<uint8_t> got(16);
  ASSERT_TRUE(table_.Read(~uint64_t{0} - 15, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got[15], Pattern(kPage - 1));
  // An access running off the top wraps: EFAULT, nothing copied.
  std::vector<uint8_t> two(2, 0x55);
  EXPECT_EQ(ErrnoOf(table_.Read(~uint64_t{0}, absl::MakeSpan(two))), EFAULT);
  EXPECT_THAT(two, ElementsAre(0x55, 0x55));
  EXPECT_EQ(ErrnoOf(table_.Resolve(~uint64_t{0}, 2, false).status()), EFAULT);
  EXPECT_TRUE(table_.Unmap(top, kPage).ok());
}

TEST_F(DmaTableTest, OverlapIsEexist) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(4 * kPage, 2 * kPage), Dup(memfd)).ok());
  // Identical re-map (the spec says EEXIST; lvu would accept it).
  EXPECT_EQ(ErrnoOf(table_.Map(Req(4 * kPage, 2 * kPage), Dup(memfd))), EEXIST);
  // Partial overlaps at either end, containing and contained.
  EXPECT_EQ(ErrnoOf(table_.Map(Req(3 * kPage, 2 * kPage), UniqueFd())), EEXIST);
  EXPECT_EQ(ErrnoOf(table_.Map(Req(5 * kPage, 2 * kPage), UniqueFd())), EEXIST);
  EXPECT_EQ(ErrnoOf(table_.Map(Req(0, 16 * kPage), UniqueFd())), EEXIST);
  EXPECT_EQ(ErrnoOf(table_.Map(Req(5 * kPage, kPage), UniqueFd())), EEXIST);
  // Adjacent on both sides is fine.
  EXPECT_TRUE(table_.Map(Req(3 * kPage, kPage), UniqueFd()).ok());
  EXPECT_TRUE(table_.Map(Req(6 * kPage, kPage), UniqueFd()).ok());
  EXPECT_EQ(table_.size(), 3u);
}

TEST(DmaTableLimitTest, MaxMapsIsEnospc) {
  DmaTable table(/*max_maps=*/3, kPage);
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(table.Map(Req(i * kPage, kPage), UniqueFd()).ok());
  }
  EXPECT_EQ(ErrnoOf(table.Map(Req(10 * kPage, kPage), UniqueFd())), ENOSPC);
  ASSERT_TRUE(table.Unmap(kPage, kPage).ok());
  EXPECT_TRUE(table.Map(Req(10 * kPage, kPage), UniqueFd()).ok());
}

TEST(DmaTablePgsizeTest, AlignmentFollowsSmallestPgsize) {
  // pgsizes = 64 KiB | 2 MiB: 4 KiB-aligned maps are refused.
  DmaTable table(16, (uint64_t{1} << 16) | (uint64_t{1} << 21));
  EXPECT_EQ(table.min_page_size(), uint64_t{1} << 16);
  EXPECT_EQ(ErrnoOf(table.Map(Req(kPage, 0x10000), UniqueFd())), EINVAL);
  EXPECT_TRUE(table.Map(Req(0x10000, 0x10000), UniqueFd()).ok());
  DmaTable host(16, 0);
  EXPECT_EQ(host.min_page_size(), static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
}

// ---- Unmap ----

TEST_F(DmaTableTest, UnmapMustMatchExactly) {
  ASSERT_TRUE(table_.Map(Req(0x10000, 4 * kPage), UniqueFd()).ok());
  EXPECT_EQ(ErrnoOf(table_.Unmap(0x10000, kPage)), ENOENT);
  EXPECT_EQ(ErrnoOf(table_.Unmap(0x10000 + kPage, 3 * kPage)), ENOENT);
  EXPECT_EQ(ErrnoOf(table_.Unmap(0x20000, 4 * kPage)), ENOENT);
  EXPECT_EQ(ErrnoOf(table_.Unmap(0x10000, 0)), ENOENT);
  EXPECT_TRUE(table_.Unmap(0x10000, 4 * kPage).ok());
  EXPECT_EQ(ErrnoOf(table_.Unmap(0x10000, 4 * kPage)), ENOENT);
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_EQ(table_.counters().unmaps, 1u);
}

TEST_F(DmaTableTest, UnmappedMemoryFaults) {
  UniqueFd memfd = MakeMemfd(kPage);
  ASSERT_TRUE(table_.Map(Req(0, kPage), Dup(memfd)).ok());
  ASSERT_TRUE(table_.Unmap(0, kPage).ok());
  uint8_t b = 0;
  EXPECT_EQ(ErrnoOf(table_.Read(0, absl::MakeSpan(&b, 1))), EFAULT);
  EXPECT_EQ(ErrnoOf(table_.Write(0, absl::MakeConstSpan(&b, 1))), EFAULT);
}

TEST_F(DmaTableTest, UnmapAll) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(
        table_.Map(Req(i * 0x100000, kPage, kRW, i * kPage), Dup(memfd)).ok());
  }
  ASSERT_TRUE(table_.Map(Req(0x900000, kPage), UniqueFd()).ok());
  table_.UnmapAll();
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_TRUE(table_.Snapshot().empty());
  EXPECT_EQ(table_.counters().unmaps, 5u);
  // The addresses are free again.
  EXPECT_TRUE(table_.Map(Req(0, kPage), Dup(memfd)).ok());
}

// ---- Access ----

TEST_F(DmaTableTest, AccessSpansAdjacentMaps) {
  // Three adjacent maps backed by different parts of two memfds.
  UniqueFd a = MakeMemfd(4 * kPage);
  UniqueFd b = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(0x10000, kPage, kRW, 2 * kPage), Dup(a)).ok());
  ASSERT_TRUE(table_.Map(Req(0x11000, kPage, kRW, 0), Dup(b)).ok());
  ASSERT_TRUE(
      table_.Map(Req(0x12000, kPage, kRW | kDmaMapFlagFileIoLvu, kPage), Dup(a))
          .ok());

  std::vector<uint8_t> got(kPage + 20);
  const uint64_t start = 0x10000 + kPage - 10;
  ASSERT_TRUE(table_.Read(start, absl::MakeSpan(got)).ok());
  for (size_t i = 0; i < 10; ++i)
    EXPECT_EQ(got[i], Pattern(3 * kPage - 10 + i));
  for (size_t i = 0; i < kPage; ++i) EXPECT_EQ(got[10 + i], Pattern(i));
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(got[10 + kPage + i], Pattern(kPage + i));
  }

  std::vector<uint8_t> data(kPage + 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(~i);
  ASSERT_TRUE(table_.Write(start, data).ok());
  EXPECT_EQ(PreadAll(a, 3 * kPage - 10, 10),
            std::vector<uint8_t>(data.begin(), data.begin() + 10));
  EXPECT_EQ(PreadAll(b, 0, kPage),
            std::vector<uint8_t>(data.begin() + 10, data.begin() + 10 + kPage));
  EXPECT_EQ(PreadAll(a, kPage, 10),
            std::vector<uint8_t>(data.begin() + 10 + kPage, data.end()));

  absl::StatusOr<std::vector<DmaSegment>> segs =
      table_.Resolve(start, got.size(), true);
  ASSERT_TRUE(segs.ok()) << segs.status();
  ASSERT_EQ(segs->size(), 3u);
  EXPECT_EQ((*segs)[0].iova, start);
  EXPECT_EQ((*segs)[0].length, 10u);
  EXPECT_EQ((*segs)[0].backing, DmaBacking::kMmap);
  EXPECT_EQ((*segs)[1].iova, 0x11000u);
  EXPECT_EQ((*segs)[1].length, kPage);
  EXPECT_EQ((*segs)[2].iova, 0x12000u);
  EXPECT_EQ((*segs)[2].length, 10u);
  EXPECT_EQ((*segs)[2].backing, DmaBacking::kFileIo);
}

// An access inside one mmap-backed map takes a fast path (no piece list);
// its edges must behave as the general path does.
TEST_F(DmaTableTest, SingleMapAccessEdges) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(kPage, 2 * kPage), Dup(memfd)).ok());
  ASSERT_TRUE(
      table_.Map(Req(3 * kPage, kPage, kDmaMapFlagRead, 2 * kPage), Dup(memfd))
          .ok());
  // Ends on the last byte of the first map: one map.
  std::vector<uint8_t> buf(16, 0x11);
  ASSERT_TRUE(table_.Read(3 * kPage - 16, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(buf[15], Pattern(2 * kPage - 1));
  // One byte further it spans into the read-only map: a write fails whole.
  EXPECT_EQ(ErrnoOf(table_.Write(3 * kPage - 15, buf)), EPERM);
  EXPECT_EQ(PreadAll(memfd, 2 * kPage - 15, 1)[0], Pattern(2 * kPage - 15));
  // Inside the read-only map alone: read yes, write no.
  EXPECT_TRUE(table_.Read(3 * kPage, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(ErrnoOf(table_.Write(3 * kPage, buf)), EPERM);
  // Past the end of the last map, starting inside it: nothing copied.
  std::fill(buf.begin(), buf.end(), 0x22);
  EXPECT_EQ(ErrnoOf(table_.Read(4 * kPage - 8, absl::MakeSpan(buf))), EFAULT);
  EXPECT_EQ(buf[0], 0x22);
  // Zero length: nothing to do.
  EXPECT_TRUE(table_.Read(0, absl::Span<uint8_t>()).ok());
  const DmaTableCounters c = table_.counters();
  EXPECT_EQ(c.bytes_read, 32u);
  EXPECT_EQ(c.bytes_written, 0u);
}

TEST_F(DmaTableTest, GapFaultsWithoutCopying) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(0, kPage), Dup(memfd)).ok());
  ASSERT_TRUE(table_.Map(Req(2 * kPage, kPage, kRW, kPage), Dup(memfd)).ok());
  std::vector<uint8_t> buf(2 * kPage + 1, 0xEE);
  EXPECT_EQ(ErrnoOf(table_.Read(kPage - 1, absl::MakeSpan(buf))), EFAULT);
  EXPECT_EQ(buf[0], 0xEE);  // nothing copied
  EXPECT_EQ(ErrnoOf(table_.Write(kPage - 1, buf)), EFAULT);
  EXPECT_EQ(PreadAll(memfd, kPage - 1, 1)[0], Pattern(kPage - 1));
  EXPECT_EQ(ErrnoOf(table_.Resolve(kPage - 1, 2, false).status()), EFAULT);
  EXPECT_EQ(ErrnoOf(table_.Read(5 * kPage, absl::MakeSpan(buf).subspan(0, 1))),
            EFAULT);
  // A zero-length access is a no-op even where nothing is mapped.
  EXPECT_TRUE(table_.Read(5 * kPage, absl::Span<uint8_t>()).ok());
}

TEST_F(DmaTableTest, Permissions) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(0, kPage, kDmaMapFlagRead), Dup(memfd)).ok());
  ASSERT_TRUE(
      table_.Map(Req(kPage, kPage, kDmaMapFlagWrite, kPage), Dup(memfd)).ok());
  uint8_t b = 1;
  EXPECT_TRUE(table_.Read(0, absl::MakeSpan(&b, 1)).ok());
  EXPECT_EQ(ErrnoOf(table_.Write(0, absl::MakeConstSpan(&b, 1))), EPERM);
  EXPECT_TRUE(table_.Write(kPage, absl::MakeConstSpan(&b, 1)).ok());
  EXPECT_EQ(ErrnoOf(table_.Read(kPage, absl::MakeSpan(&b, 1))), EPERM);
  // Spanning both: neither direction is allowed as a whole.
  std::vector<uint8_t> two(2, 0x77);
  EXPECT_EQ(ErrnoOf(table_.Read(kPage - 1, absl::MakeSpan(two))), EPERM);
  EXPECT_EQ(two[0], 0x77);
  EXPECT_EQ(ErrnoOf(table_.Write(kPage - 1, two)), EPERM);
  EXPECT_EQ(PreadAll(memfd, kPage - 1, 1)[0], Pattern(kPage - 1));
  EXPECT_EQ(ErrnoOf(table_.Resolve(0, 1, true).status()), EPERM);
  EXPECT_EQ(ErrnoOf(table_.WithMappedRange(
                0, 1, true,
                [](absl::Span<uint8_t>) { ADD_FAILURE() << "must not run"; })),
            EPERM);
}

TEST_F(DmaTableTest, ReadOnlyFdCannotBeMappedWritable) {
  UniqueFd memfd = MakeMemfd(kPage);
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd.get());
  UniqueFd ro(open(path, O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ro.valid());
  EXPECT_EQ(ErrnoOf(table_.Map(Req(0, kPage), Dup(ro))), EACCES);
  EXPECT_TRUE(table_.Map(Req(0, kPage, kDmaMapFlagRead), std::move(ro)).ok());
}

TEST_F(DmaTableTest, UnmappableFdIsRejected) {
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd reader(pipe_fds[0]), writer(pipe_fds[1]);
  absl::Status s = table_.Map(Req(0, kPage), std::move(reader));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(table_.size(), 0u);
}

TEST_F(DmaTableTest, MessageOnlyMaps) {
  UniqueFd memfd = MakeMemfd(kPage);
  ASSERT_TRUE(table_.Map(Req(0, kPage), Dup(memfd)).ok());
  ASSERT_TRUE(
      table_.Map(Req(kPage, 2 * kPage, kRW, /*offset ignored=*/123), UniqueFd())
          .ok());

  std::vector<uint8_t> buf(16, 0x11);
  absl::Status s = table_.Read(kPage, absl::MakeSpan(buf));
  EXPECT_TRUE(IsMessageOnly(s)) << s;
  EXPECT_EQ(ErrnoOf(s), EREMOTE);
  // Spanning an mmapped and a message-only map: still nothing copied.
  s = table_.Read(kPage - 8, absl::MakeSpan(buf));
  EXPECT_TRUE(IsMessageOnly(s)) << s;
  EXPECT_EQ(buf[0], 0x11);
  s = table_.Write(kPage - 8, buf);
  EXPECT_TRUE(IsMessageOnly(s)) << s;
  EXPECT_EQ(PreadAll(memfd, kPage - 8, 1)[0], Pattern(kPage - 8));
  EXPECT_TRUE(IsMessageOnly(
      table_.WithMappedRange(kPage, 4, false, [](absl::Span<uint8_t>) {})));
  // Other failures are not "message only".
  EXPECT_FALSE(IsMessageOnly(table_.Read(9 * kPage, absl::MakeSpan(buf))));
  EXPECT_FALSE(IsMessageOnly(ErrnoError(EREMOTE, "other")));
  EXPECT_FALSE(IsMessageOnly(absl::OkStatus()));

  // Resolve splits the range so the session can do each part its own way.
  auto segs = table_.Resolve(kPage - 8, 16, false);
  ASSERT_TRUE(segs.ok());
  ASSERT_EQ(segs->size(), 2u);
  EXPECT_EQ((*segs)[0].backing, DmaBacking::kMmap);
  EXPECT_EQ((*segs)[0].length, 8u);
  EXPECT_EQ((*segs)[1].backing, DmaBacking::kMessage);
  EXPECT_EQ((*segs)[1].iova, kPage);
  EXPECT_EQ((*segs)[1].length, 8u);

  std::vector<DmaMapInfo> maps = table_.Snapshot();
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_TRUE(maps[0].has_fd);
  EXPECT_EQ(maps[0].backing, DmaBacking::kMmap);
  EXPECT_FALSE(maps[1].has_fd);
  EXPECT_EQ(maps[1].iova, kPage);
  EXPECT_EQ(maps[1].size, 2 * kPage);
  EXPECT_EQ(maps[1].flags, kRW);
  EXPECT_EQ(maps[1].offset, 0u);
  EXPECT_EQ(maps[1].backing, DmaBacking::kMessage);
  EXPECT_STREQ(DmaBackingName(maps[1].backing), "message");
}

TEST_F(DmaTableTest, WithMappedRangeIsZeroCopy) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(0, 2 * kPage), Dup(memfd)).ok());
  ASSERT_TRUE(
      table_.Map(Req(2 * kPage, kPage, kRW, 2 * kPage), Dup(memfd)).ok());
  ASSERT_TRUE(
      table_
          .Map(Req(3 * kPage, kPage, kRW | kDmaMapFlagFileIoLvu, 3 * kPage),
               Dup(memfd))
          .ok());
  ASSERT_TRUE(table_
                  .WithMappedRange(100, 8, true,
                                   [](absl::Span<uint8_t> m) {
                                     ASSERT_EQ(m.size(), 8u);
                                     for (uint8_t& byte : m) byte = 0xCD;
                                   })
                  .ok());
  EXPECT_EQ(PreadAll(memfd, 100, 8), std::vector<uint8_t>(8, 0xCD));
  bool ran = false;
  ASSERT_TRUE(table_
                  .WithMappedRange(kPage, 4, false,
                                   [&](absl::Span<uint8_t> m) {
                                     ran = true;
                                     EXPECT_EQ(m[0], Pattern(kPage));
                                   })
                  .ok());
  EXPECT_TRUE(ran);
  auto never = [](absl::Span<uint8_t>) { ADD_FAILURE() << "must not run"; };
  // Crossing into another map (not one host mapping), FILE_IO, unmapped.
  EXPECT_EQ(ErrnoOf(table_.WithMappedRange(2 * kPage - 1, 2, false, never)),
            EFAULT);
  EXPECT_EQ(ErrnoOf(table_.WithMappedRange(3 * kPage, 2, false, never)),
            EFAULT);
  EXPECT_EQ(ErrnoOf(table_.WithMappedRange(9 * kPage, 2, false, never)),
            EFAULT);
  EXPECT_EQ(ErrnoOf(table_.WithMappedRange(0, 0, false, never)), EINVAL);
}

TEST_F(DmaTableTest, FileIoMap) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  // FILE_IO does not need a page-aligned offset.
  ASSERT_TRUE(
      table_.Map(Req(0, kPage, kRW | kDmaMapFlagFileIoLvu, 100), Dup(memfd))
          .ok());
  std::vector<uint8_t> got(4);
  ASSERT_TRUE(table_.Read(10, absl::MakeSpan(got)).ok());
  EXPECT_EQ(got[0], Pattern(110));
  const std::vector<uint8_t> data = {4, 3, 2, 1};
  ASSERT_TRUE(table_.Write(kPage - 4, data).ok());
  EXPECT_EQ(PreadAll(memfd, 100 + kPage - 4, 4), data);
  // If the client shrinks the file, access fails cleanly (no SIGBUS).
  ASSERT_EQ(ftruncate(memfd.get(), 200), 0);
  EXPECT_EQ(ErrnoOf(table_.Read(kPage - 4, absl::MakeSpan(got))), EFAULT);
}

// ---- Concurrency ----

// Readers and writers hammer a map while the main thread unmaps it and maps
// it again. Every access either succeeds with consistent data or fails with
// EFAULT; under ASan a use-after-munmap would crash.
TEST(DmaTableConcurrencyTest, AccessRacesWithUnmap) {
  DmaTable table(16, kPage);
  UniqueFd memfd = MakeMemfd(16 * kPage);
  constexpr uint64_t kIova = 0x40000;
  constexpr uint64_t kSize = 16 * kPage;
  ASSERT_TRUE(table.Map(Req(kIova, kSize), Dup(memfd)).ok());

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok_reads{0}, faults{0}, bad{0};
  absl::BlockingCounter started(2);  // both readers ran once
  auto reader = [&] {
    std::vector<uint8_t> buf(kSize);
    bool first = true;
    while (!stop.load()) {
      absl::Status s = table.Read(kIova, absl::MakeSpan(buf));
      if (s.ok()) {
        ok_reads.fetch_add(1);
        if (buf[kPage] != Pattern(kPage)) bad.fetch_add(1);
      } else if (ErrnoOf(s) == EFAULT) {
        faults.fetch_add(1);
      } else {
        bad.fetch_add(1);
      }
      s = table.WithMappedRange(kIova, 8, false, [&](absl::Span<uint8_t> m) {
        if (m[1] != Pattern(1)) bad.fetch_add(1);
      });
      if (!s.ok() && ErrnoOf(s) != EFAULT) bad.fetch_add(1);
      if (first) {
        first = false;
        started.DecrementCount();
      }
    }
  };
  auto writer = [&] {
    const uint8_t byte = Pattern(5 * kPage);  // rewrite the same value
    while (!stop.load()) {
      absl::Status s =
          table.Write(kIova + 5 * kPage, absl::MakeConstSpan(&byte, 1));
      if (!s.ok() && ErrnoOf(s) != EFAULT) bad.fetch_add(1);
    }
  };
  std::thread r1(reader), r2(reader), w(writer);
  started.Wait();
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(table.Unmap(kIova, kSize).ok());
    ASSERT_TRUE(table.Map(Req(kIova, kSize), Dup(memfd)).ok());
  }
  ASSERT_TRUE(table.Unmap(kIova, kSize).ok());
  stop.store(true);
  r1.join();
  r2.join();
  w.join();
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GT(ok_reads.load() + faults.load(), 0u);
}

// ---- Dirty logging ----

TEST_F(DmaTableTest, LoggingValidation) {
  const DmaLoggingRange range{0, 16 * kPage};
  EXPECT_EQ(ErrnoOf(table_.StartLogging(1000, {range})), EINVAL);
  EXPECT_EQ(ErrnoOf(table_.StartLogging(2048, {range})), EINVAL);
  EXPECT_EQ(ErrnoOf(table_.StartLogging(0, {range})), EINVAL);
  const DmaLoggingRange empty{0, 0};
  EXPECT_EQ(ErrnoOf(table_.StartLogging(kPage, {empty})), EINVAL);
  const DmaLoggingRange unaligned{100, kPage};
  EXPECT_EQ(ErrnoOf(table_.StartLogging(kPage, {unaligned})), EINVAL);
  const DmaLoggingRange wraps{~uint64_t{0} - kPage + 1, 2 * kPage};
  EXPECT_EQ(ErrnoOf(table_.StartLogging(kPage, {wraps})), EINVAL);
  const DmaLoggingRange overlapping[] = {{4 * kPage, 4 * kPage},
                                         {0, 5 * kPage}};
  EXPECT_EQ(ErrnoOf(table_.StartLogging(kPage, overlapping)), EINVAL);
  EXPECT_FALSE(table_.logging());
  EXPECT_EQ(ErrnoOf(table_.Report(0, kPage, kPage).status()), EINVAL);

  ASSERT_TRUE(table_.StartLogging(kPage, {range}).ok());
  EXPECT_TRUE(table_.logging());
  EXPECT_EQ(ErrnoOf(table_.StartLogging(kPage, {range})), EBUSY);
  EXPECT_EQ(ErrnoOf(table_.Report(0, kPage, 1000).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(table_.Report(0, 0, kPage).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(table_.Report(~uint64_t{0}, 2, kPage).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(table_.Report(15 * kPage, 2 * kPage, kPage).status()),
            EINVAL);  // outside the logged range
  table_.StopLogging();
  EXPECT_FALSE(table_.logging());
  table_.StopLogging();  // no-op
}

TEST_F(DmaTableTest, LoggingExplicitRanges) {
  UniqueFd memfd = MakeMemfd(8 * kPage);
  ASSERT_TRUE(table_.Map(Req(0, 8 * kPage), Dup(memfd)).ok());
  ASSERT_TRUE(table_.Map(Req(8 * kPage, 8 * kPage), UniqueFd()).ok());
  // Two adjacent ranges, given out of order.
  const DmaLoggingRange ranges[] = {{8 * kPage, 8 * kPage}, {0, 8 * kPage}};
  ASSERT_TRUE(table_.StartLogging(kPage, ranges).ok());

  const uint8_t b = 1;
  ASSERT_TRUE(table_.Write(1 * kPage + 5, absl::MakeConstSpan(&b, 1)).ok());
  // A write spanning pages 3 and 4.
  const std::vector<uint8_t> two(2, 2);
  ASSERT_TRUE(table_.Write(4 * kPage - 1, two).ok());
  // Reads are not logged.
  uint8_t r;
  ASSERT_TRUE(table_.Read(6 * kPage, absl::MakeSpan(&r, 1)).ok());
  // A DMA_WRITE done by message to the message-only map.
  table_.MarkDirty(10 * kPage + 1, 1);
  // Zero-copy writes are logged too.
  ASSERT_TRUE(
      table_.WithMappedRange(7 * kPage, 1, true, [](absl::Span<uint8_t>) {})
          .ok());

  // The report spans both logged ranges.
  auto bitmap = table_.Report(0, 16 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok()) << bitmap.status();
  EXPECT_THAT(*bitmap, ElementsAre((1u << 1) | (1u << 3) | (1u << 4) |
                                   (1u << 7) | (1u << 10)));
  // Reported bits were cleared.
  bitmap = table_.Report(0, 16 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0u));

  // Page k of a report is relative to the report's iova.
  table_.MarkDirty(9 * kPage, 1);
  bitmap = table_.Report(8 * kPage, 8 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(1u << 1));
}

TEST_F(DmaTableTest, LoggingReportGranularity) {
  const DmaLoggingRange range{0, 256 * kPage};
  ASSERT_TRUE(table_.StartLogging(kPage, {range}).ok());
  table_.MarkDirty(0, 1);
  table_.MarkDirty(70 * kPage, 3 * kPage);  // pages 70..72
  table_.MarkDirty(200 * kPage, 1);

  // Coarser report pages (16 KiB): logged page p -> bit p / 4.
  auto bitmap = table_.Report(0, 256 * kPage, 4 * kPage);
  ASSERT_TRUE(bitmap.ok());
  ASSERT_EQ(bitmap->size(), 1u);
  EXPECT_EQ((*bitmap)[0], (uint64_t{1} << 0) | (uint64_t{1} << 17) |
                              (uint64_t{1} << 18) | (uint64_t{1} << 50));

  // A bitmap of more than one word: 130 pages -> 3 words.
  table_.MarkDirty(129 * kPage, 1);
  table_.MarkDirty(64 * kPage, 1);
  bitmap = table_.Report(0, 130 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0u, 1u, uint64_t{1} << 1));
}

TEST_F(DmaTableTest, LoggingCoarserThanReport) {
  // Logging at 16 KiB, reporting at 4 KiB: one logged page sets four bits.
  const DmaLoggingRange range{0, 64 * kPage};
  ASSERT_TRUE(table_.StartLogging(4 * kPage, {range}).ok());
  table_.MarkDirty(5 * kPage, 1);  // logged page 1 = 4 KiB pages 4..7
  auto bitmap = table_.Report(0, 64 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0xF0u));

  // A report that covers only half of a logged page reports it but does not
  // clear it: the other half is reported again later.
  table_.MarkDirty(8 * kPage, 1);  // logged page 2 = 4 KiB pages 8..11
  bitmap = table_.Report(10 * kPage, 2 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0x3u));
  bitmap = table_.Report(8 * kPage, 4 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0xFu));
  bitmap = table_.Report(8 * kPage, 4 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0u));
}

TEST_F(DmaTableTest, LoggingEverythingFollowsMaps) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table_.Map(Req(0x100000, 4 * kPage), Dup(memfd)).ok());
  ASSERT_TRUE(table_.StartLogging(kPage, {}).ok());
  // A map added while logging is logged as well.
  ASSERT_TRUE(table_.Map(Req(0x200000, 4 * kPage), UniqueFd()).ok());

  const uint8_t b = 7;
  ASSERT_TRUE(
      table_.Write(0x100000 + 2 * kPage, absl::MakeConstSpan(&b, 1)).ok());
  table_.MarkDirty(0x200000 + 3 * kPage, 1);
  table_.MarkDirty(0x900000, 1);  // unmapped: nothing to log

  // Writes before an unmap stay reportable after it.
  ASSERT_TRUE(table_.Unmap(0x100000, 4 * kPage).ok());
  auto bitmap = table_.Report(0x100000, 4 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok()) << bitmap.status();
  EXPECT_THAT(*bitmap, ElementsAre(1u << 2));
  bitmap = table_.Report(0x200000, 4 * kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(1u << 3));
  // Logging everything: a report over unlogged space is all clean.
  bitmap = table_.Report(0x900000, kPage, kPage);
  ASSERT_TRUE(bitmap.ok());
  EXPECT_THAT(*bitmap, ElementsAre(0u));

  // Re-mapping the same range reuses the logged range.
  ASSERT_TRUE(table_.Map(Req(0x100000, 4 * kPage), Dup(memfd)).ok());
  table_.StopLogging();
  ASSERT_TRUE(table_.Write(0x100000, absl::MakeConstSpan(&b, 1)).ok());
  EXPECT_EQ(ErrnoOf(table_.Report(0x100000, kPage, kPage).status()), EINVAL);
}

TEST(DmaTableLoggingBudgetTest, BitmapBudgetIsEnforced) {
  // 64 bytes of bitmap = 512 pages.
  DmaTable table(16, kPage, /*max_dirty_bitmap_bytes=*/64);
  const DmaLoggingRange too_big{0, 513 * kPage};
  EXPECT_EQ(ErrnoOf(table.StartLogging(kPage, {too_big})), ENOMEM);
  EXPECT_FALSE(table.logging());
  // Logging everything: a map that would exceed the budget is refused.
  ASSERT_TRUE(table.Map(Req(0, 256 * kPage), UniqueFd()).ok());
  ASSERT_TRUE(table.StartLogging(kPage, {}).ok());
  EXPECT_EQ(ErrnoOf(table.Map(Req(1024 * kPage, 512 * kPage), UniqueFd())),
            ENOMEM);
  EXPECT_TRUE(table.Map(Req(1024 * kPage, 256 * kPage), UniqueFd()).ok());
  // Reports are bounded too (the reply would be huge).
  EXPECT_EQ(ErrnoOf(table.Report(0, 1024 * kPage, kPage).status()), E2BIG);
}

TEST(DmaTableLoggingConcurrencyTest, ConcurrentMarkAndReportLoseNothing) {
  DmaTable table(16, kPage);
  const DmaLoggingRange range{0, 64 * kPage};
  ASSERT_TRUE(table.StartLogging(kPage, {range}).ok());
  constexpr int kRounds = 2000;
  std::atomic<bool> done{false};
  std::thread marker([&] {
    for (int i = 0; i < kRounds; ++i) table.MarkDirty((i % 64) * kPage, 1);
    done.store(true);
  });
  std::vector<int> seen(64, 0);
  auto collect = [&] {
    auto bitmap = table.Report(0, 64 * kPage, kPage);
    ASSERT_TRUE(bitmap.ok());
    for (int p = 0; p < 64; ++p) seen[p] += ((*bitmap)[0] >> p) & 1;
  };
  while (!done.load()) collect();
  marker.join();
  collect();
  // Every page was dirtied, so every page must have been reported.
  for (int p = 0; p < 64; ++p) EXPECT_GE(seen[p], 1) << p;
}

// ---- Resources ----

TEST(DmaTableResourceTest, FdsAndMappingsAreReleased) {
  const int baseline = OpenFdCount();
  {
    UniqueFd memfd = MakeMemfd(8 * kPage);
    DmaTable table(64, kPage);
    for (uint64_t i = 0; i < 8; ++i) {
      ASSERT_TRUE(
          table.Map(Req(i * kPage, kPage, kRW, i * kPage), Dup(memfd)).ok());
    }
    ASSERT_TRUE(table
                    .Map(Req(100 * kPage, kPage, kRW | kDmaMapFlagFileIoLvu),
                         Dup(memfd))
                    .ok());
    // Rejected maps close their fd too.
    EXPECT_FALSE(table.Map(Req(0, kPage), Dup(memfd)).ok());
    EXPECT_FALSE(
        table.Map(Req(200 * kPage, kPage, kRW, 64 * kPage), Dup(memfd)).ok());
    // Only the FILE_IO map keeps its fd: mmap-backed maps close theirs once
    // mapped, so a client cannot fill our fd table with maps.
    EXPECT_EQ(OpenFdCount(), baseline + 1 + 1);
    ASSERT_TRUE(table.Unmap(100 * kPage, kPage).ok());
    EXPECT_EQ(OpenFdCount(), baseline + 1);
    ASSERT_TRUE(table.StartLogging(kPage, {}).ok());
  }  // the destructor unmaps and closes the rest
  EXPECT_EQ(OpenFdCount(), baseline);
}

// ---- Hostile clients (docs/SECURITY.md) ----

TEST(DmaTableHostileClientTest, TruncatedMemfdFailsAccessesInsteadOfSigbus) {
  UniqueFd memfd = MakeMemfd(4 * kPage);
  DmaTable table(16, kPage);
  ASSERT_TRUE(table.Map(Req(0x10000, 4 * kPage), Dup(memfd)).ok());
  std::vector<uint8_t> buf(2 * kPage);
  ASSERT_TRUE(table.Read(0x10000, absl::MakeSpan(buf)).ok());

  // The client shrinks its file under the mapping: pages 1.. vanish.
  ASSERT_EQ(ftruncate(memfd.get(), kPage), 0);
  EXPECT_TRUE(table.Read(0x10000, absl::MakeSpan(buf.data(), 16)).ok());
  absl::Status st = table.Read(0x10000 + kPage, absl::MakeSpan(buf));
  EXPECT_EQ(ErrnoOf(st), EFAULT) << st;
  // From now on the map is poisoned, even where the page is still there.
  EXPECT_EQ(ErrnoOf(table.Read(0x10000, absl::MakeSpan(buf.data(), 16))), EFAULT);
  EXPECT_EQ(ErrnoOf(table.Write(0x10000, absl::MakeSpan(buf.data(), 16))), EFAULT);
  EXPECT_EQ(ErrnoOf(table.WithMappedRange(0x10000, 16, false,
                                          [](absl::Span<uint8_t>) {})),
            EFAULT);
  // Unmapping it is fine, and a fresh map of a healthy file works again.
  EXPECT_TRUE(table.Unmap(0x10000, 4 * kPage).ok());
  UniqueFd healthy = MakeMemfd(4 * kPage);
  ASSERT_TRUE(table.Map(Req(0x10000, 4 * kPage), Dup(healthy)).ok());
  EXPECT_TRUE(table.Write(0x10000 + 3 * kPage, absl::MakeSpan(buf.data(), 16)).ok());
}

TEST(DmaTableHostileClientTest, TruncationDuringZeroCopyAccessIsReported) {
  UniqueFd memfd = MakeMemfd(2 * kPage);
  DmaTable table(16, kPage);
  ASSERT_TRUE(table.Map(Req(0, 2 * kPage), Dup(memfd)).ok());
  uint8_t seen = 0xff;
  absl::Status st = table.WithMappedRange(0, 2 * kPage, true, [&](absl::Span<uint8_t> m) {
    ASSERT_EQ(ftruncate(memfd.get(), 0), 0);
    m[kPage] = 1;  // would be SIGBUS
    seen = m[0];   // reads the zero page put in place of the vanished one
  });
  EXPECT_EQ(ErrnoOf(st), EFAULT) << st;
  EXPECT_EQ(seen, 0);
}

TEST(DmaTableHostileClientTest, SigbusOutsideAGuardedAccessIsNotSwallowed) {
  DmaTable table(16, kPage);  // installs the handler
  EXPECT_EXIT(
      {
        UniqueFd memfd = MakeMemfd(kPage);
        auto* p = static_cast<volatile uint8_t*>(
            mmap(nullptr, kPage, PROT_READ, MAP_SHARED, memfd.get(), 0));
        (void)ftruncate(memfd.get(), 0);
        (void)p[0];
        std::_Exit(0);
      },
      [](int status) {
        // Killed by SIGBUS, or by the sanitizer that reported it.
        return (WIFSIGNALED(status) &&
                (WTERMSIG(status) == SIGBUS || WTERMSIG(status) == SIGABRT)) ||
               (WIFEXITED(status) && WEXITSTATUS(status) != 0);
      },
      "");
}

TEST(DmaTableHostileClientTest, ProcessWideBudgetsCapMappingsAndFds) {
  DmaTable::SetProcessBudgetsForTesting(/*max_mmaps=*/2, /*max_fds=*/1);
  UniqueFd memfd = MakeMemfd(8 * kPage);
  {
    DmaTable a(16, kPage), b(16, kPage);  // two devices, one process
    ASSERT_TRUE(a.Map(Req(0, kPage), Dup(memfd)).ok());
    ASSERT_TRUE(b.Map(Req(0, kPage), Dup(memfd)).ok());
    EXPECT_EQ(ErrnoOf(a.Map(Req(kPage, kPage), Dup(memfd))), ENOSPC);
    // Maps without an fd cost neither.
    EXPECT_TRUE(a.Map(Req(8 * kPage, kPage), UniqueFd()).ok());
    ASSERT_TRUE(a.Map(Req(16 * kPage, kPage, kRW | kDmaMapFlagFileIoLvu), Dup(memfd)).ok());
    EXPECT_EQ(ErrnoOf(b.Map(Req(16 * kPage, kPage, kRW | kDmaMapFlagFileIoLvu),
                            Dup(memfd))),
              ENOSPC);
    // Releasing a map returns its share.
    ASSERT_TRUE(b.Unmap(0, kPage).ok());
    EXPECT_TRUE(a.Map(Req(kPage, kPage), Dup(memfd)).ok());
  }
  {
    DmaTable c(16, kPage);  // destroyed tables gave everything back
    EXPECT_TRUE(c.Map(Req(0, kPage), Dup(memfd)).ok());
    EXPECT_TRUE(c.Map(Req(kPage, kPage), Dup(memfd)).ok());
  }
  DmaTable::SetProcessBudgetsForTesting(0, 0);
}

}  // namespace
}  // namespace vfio_user
