// The client library against the in-test FakeServer: attach, region info,
// region access, mmap, DMA service, interrupts, concurrency, timeouts.
#include "client/client.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/client_test_util.h"
#include "client/fake_server.h"
#include "client/guest_memory.h"
#include "client/irq_waiter.h"
#include "core/codec.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace testing {
namespace {

std::unique_ptr<Client> MustConnect(const ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

TEST(ClientAttachTest, DescribesTheDevice) {
  FakeServer server(TestSocketPath("attach"), DefaultDevice());
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  ASSERT_NE(client, nullptr);
  const DeviceDescription d = client->device();
  EXPECT_EQ(d.info.flags, kDeviceFlagsPci | kDeviceFlagsReset);
  ASSERT_EQ(d.regions.size(), 9u);
  ASSERT_EQ(d.irqs.size(), 5u);
  EXPECT_EQ(d.regions[0].info.size, 8192u);
  EXPECT_TRUE(d.regions[0].info.flags & kRegionInfoFlagMmap);
  ASSERT_TRUE(d.regions[0].info.sparse_areas.has_value());
  EXPECT_EQ(*d.regions[0].info.sparse_areas,
            (std::vector<SparseMmapArea>{{0, 4096}, {4096, 4096}}));
  EXPECT_TRUE(d.regions[0].has_fd);
  EXPECT_FALSE(d.regions[2].has_fd);
  EXPECT_EQ(d.regions[kPciConfigRegionIndex].info.size, 256u);
  EXPECT_EQ(d.regions[1].info.size, 0u);
  EXPECT_EQ(d.irqs[kPciMsixIrqIndex].count, 8u);
  EXPECT_TRUE(d.irqs[kPciMsixIrqIndex].flags & kIrqInfoMaskable);
  EXPECT_TRUE(d.twin_socket);
  EXPECT_TRUE(server.twin_socket());
  EXPECT_EQ(d.server.max_msg_fds, 8u);
  EXPECT_EQ(d.chunk_size, kDefaultMaxDataXferSize);
  EXPECT_EQ(client->state().state, ClientState::kConnected);
  // The attach order: VERSION, GET_INFO, then region and IRQ info.
  const std::vector<uint16_t> commands = server.commands();
  ASSERT_GE(commands.size(), 2u);
  EXPECT_EQ(commands[0], static_cast<uint16_t>(Command::kVersion));
  EXPECT_EQ(commands[1], static_cast<uint16_t>(Command::kDeviceGetInfo));
  EXPECT_EQ(server.CountCommand(Command::kDeviceGetRegionInfo), 9u);
  EXPECT_EQ(server.CountCommand(Command::kDeviceGetIrqInfo), 5u);
}

TEST(ClientAttachTest, WithoutTwinSocket) {
  FakeDeviceConfig config = DefaultDevice();
  config.offer_twin_socket = false;
  FakeServer server(TestSocketPath("notwin"), config);
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  ASSERT_NE(client, nullptr);
  EXPECT_FALSE(client->device().twin_socket);
}

TEST(ClientAttachTest, RegionInfoRetriesWithTheArgszTheServerNeeds) {
  FakeDeviceConfig config = DefaultDevice();
  std::vector<SparseMmapArea> areas;
  for (uint64_t i = 0; i < 20; ++i) areas.push_back({i * 8192, 4096});
  config.regions[0].size = 20 * 8192;
  config.regions[0].sparse_areas = areas;
  config.regions[0].type_cap = RegionInfo::TypeCap{1u << 31, 7};
  FakeServer server(TestSocketPath("argsz"), config);
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  ASSERT_NE(client, nullptr);
  const RegionDescription bar0 = client->device().regions[0];
  ASSERT_TRUE(bar0.info.sparse_areas.has_value());
  EXPECT_EQ(*bar0.info.sparse_areas, areas);
  ASSERT_TRUE(bar0.info.type_cap.has_value());
  EXPECT_EQ(bar0.info.type_cap->subtype, 7u);
  EXPECT_TRUE(bar0.has_fd);
  std::vector<uint32_t> bar0_argsz;
  for (const auto& [index, argsz] : server.region_info_requests()) {
    if (index == 0) bar0_argsz.push_back(argsz);
  }
  // 32 + sparse (16 + 20 * 16) + type (16).
  EXPECT_EQ(bar0_argsz, (std::vector<uint32_t>{256, 32 + 336 + 16}));
}

TEST(ClientAttachTest, DescriptionsAreAskedInOneWindow) {
  const FakeDeviceConfig config = DefaultDevice();
  FakeServer server(TestSocketPath("window"), config);
  // The server answers no GET_REGION_INFO or GET_IRQ_INFO until every one
  // is in, then answers them in reverse order: a client that waited for
  // each reply before asking the next would never complete the attach.
  const size_t expected = config.regions.size() + config.irqs.size();
  absl::Mutex mu;
  std::vector<std::pair<Header, std::vector<uint8_t>>> held;
  server.SetHook([&](FakeServer::Session& session, Message& request) {
    std::vector<uint8_t> reply;
    if (request.command() == Command::kDeviceGetRegionInfo) {
      absl::StatusOr<RegionInfoRequest> asked =
          DecodeRegionInfoRequest(request.payload);
      EXPECT_TRUE(asked.ok()) << asked.status();
      if (!asked.ok()) return FakeServer::HookResult::kDefault;
      reply = EncodeRegionInfo(config.regions[asked->index], asked->argsz);
    } else if (request.command() == Command::kDeviceGetIrqInfo) {
      absl::StatusOr<IrqInfo> asked = DecodeIrqInfoRequest(request.payload);
      EXPECT_TRUE(asked.ok()) << asked.status();
      if (!asked.ok()) return FakeServer::HookResult::kDefault;
      reply = EncodeIrqInfo(config.irqs[asked->index]);
    } else {
      return FakeServer::HookResult::kDefault;
    }
    absl::MutexLock lock(&mu);
    held.emplace_back(request.header, std::move(reply));
    if (held.size() == expected) {
      for (auto it = held.rbegin(); it != held.rend(); ++it) {
        EXPECT_OK(session.Reply(it->first, it->second));
      }
    }
    return FakeServer::HookResult::kHandled;
  });
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  {
    // The hook still reads `held` after sending its last reply: the lock
    // orders that before this frame goes away (TSan sees the order).
    absl::MutexLock lock(&mu);
  }
  ASSERT_NE(client, nullptr);
  const DeviceDescription d = client->device();
  ASSERT_EQ(d.regions.size(), config.regions.size());
  ASSERT_EQ(d.irqs.size(), config.irqs.size());
  EXPECT_EQ(d.regions[0].info.size, 8192u);
  EXPECT_EQ(d.irqs[kPciMsixIrqIndex].count, 8u);
  EXPECT_EQ(client->counters().timeouts, 0u);
}

TEST(ClientAttachTest, ConnectFailsCleanlyWithoutAServer) {
  ClientOptions options;
  options.socket_path = TestSocketPath("absent");
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_EQ(ErrnoOf(client.status()), ENOENT) << client.status();
}

TEST(ClientAttachTest, ConnectWaitsForALateServer) {
  const std::string path = TestSocketPath("late");
  std::unique_ptr<FakeServer> server;
  std::thread starter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    server = std::make_unique<FakeServer>(path, DefaultDevice());
  });
  ClientOptions options;
  options.socket_path = path;
  options.connect_timeout = absl::Seconds(10);
  options.reconnect.initial_backoff = absl::Milliseconds(5);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  starter.join();
  EXPECT_TRUE(client.ok()) << client.status();
}

class ClientRegionTest : public ::testing::Test {
 protected:
  void Connect(FakeDeviceConfig config, ClientOptions extra = {}) {
    server_ = std::make_unique<FakeServer>(TestSocketPath("region"), config);
    ClientOptions options = OptionsFor(*server_);
    options.transfer_chunk_size = extra.transfer_chunk_size;
    options.request_timeout = extra.request_timeout;
    client_ = MustConnect(options);
    ASSERT_NE(client_, nullptr);
  }
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientRegionTest, ReadsAndWritesAreSplitByTheChunkSize) {
  ClientOptions extra;
  extra.transfer_chunk_size = 1000;
  Connect(DefaultDevice(), extra);
  const std::vector<uint8_t> data = PatternBytes(4096, 1);
  ASSERT_OK(client_->Write(2, 0, data));
  EXPECT_EQ(server_->RegionBytes(2, 0, 4096), data);
  const std::vector<RegionAccess> writes = server_->region_writes();
  ASSERT_EQ(writes.size(), 5u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(writes[i].count, 1000u);
    EXPECT_EQ(writes[i].offset, i * 1000);
  }
  EXPECT_EQ(writes[4].count, 96u);

  absl::StatusOr<std::vector<uint8_t>> read = client_->Read(2, 0, 4096);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, data);
  EXPECT_EQ(server_->CountCommand(Command::kRegionRead), 5u);
  EXPECT_EQ(client_->counters().region_bytes_read, 4096u);
  EXPECT_EQ(client_->counters().region_bytes_written, 4096u);
}

TEST_F(ClientRegionTest, TheServersTransferLimitCapsTheChunk) {
  FakeDeviceConfig config = DefaultDevice();
  config.caps.max_data_xfer_size = 1024;
  Connect(config);
  EXPECT_EQ(client_->device().chunk_size, 1024u);
  ASSERT_OK(client_->Write(2, 100, PatternBytes(3000, 2)));
  EXPECT_EQ(server_->region_writes().size(), 3u);
}

TEST_F(ClientRegionTest, ScalarHelpersAreLittleEndian) {
  Connect(DefaultDevice());
  ASSERT_OK(client_->WriteValue(kPciConfigRegionIndex, 0, 4, 0x11223344));
  EXPECT_EQ(server_->RegionBytes(kPciConfigRegionIndex, 0, 4),
            (std::vector<uint8_t>{0x44, 0x33, 0x22, 0x11}));
  absl::StatusOr<uint64_t> value =
      client_->ReadValue(kPciConfigRegionIndex, 1, 2);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, 0x2233u);
  EXPECT_ERRNO(client_->ReadValue(kPciConfigRegionIndex, 0, 3).status(),
               EINVAL);
}

TEST_F(ClientRegionTest, LocalChecksRejectBadAccesses) {
  Connect(DefaultDevice());
  std::vector<uint8_t> buffer(16);
  EXPECT_ERRNO(client_->Read(9, 0, absl::MakeSpan(buffer)), EINVAL);
  EXPECT_ERRNO(client_->Read(1, 0, absl::MakeSpan(buffer)), EINVAL);
  EXPECT_ERRNO(client_->Read(2, 4090, absl::MakeSpan(buffer)), EINVAL);
  EXPECT_ERRNO(client_->Write(2, UINT64_MAX - 4, buffer), EINVAL);
  EXPECT_EQ(server_->CountCommand(Command::kRegionRead), 0u);
}

TEST_F(ClientRegionTest, MapsSparseAreasSharedWithTheServer) {
  Connect(DefaultDevice());
  absl::StatusOr<std::unique_ptr<RegionMapping>> mapping = client_->MapRegion(0);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  ASSERT_EQ((*mapping)->areas().size(), 2u);
  uint8_t* p = (*mapping)->At(4096 + 8, 4);
  ASSERT_NE(p, nullptr);
  std::memcpy(p, "\x01\x02\x03\x04", 4);
  EXPECT_EQ(server_->RegionBytes(0, 4096 + 8, 4),
            (std::vector<uint8_t>{1, 2, 3, 4}));
  server_->SetRegionBytes(0, 16, std::vector<uint8_t>{9, 8});
  EXPECT_EQ((*mapping)->At(16, 2)[1], 8);
  EXPECT_EQ((*mapping)->At(8190, 4), nullptr);  // crosses the end
  EXPECT_ERRNO(client_->MapRegion(2).status(), EINVAL);  // not mappable
}

TEST_F(ClientRegionTest, PostedWritesOnlyWhenNoRegionIsMappable) {
  FakeDeviceConfig config = DefaultDevice();
  Connect(config);
  ASSERT_OK(client_->WriteValue(2, 0, 4, 1, WriteMode::kPosted));
  EXPECT_EQ(client_->counters().posted_writes, 0u);  // BAR0 is mappable

  config.regions[0].flags &= ~kRegionInfoFlagMmap;
  config.regions[0].sparse_areas.reset();
  client_.reset();
  Connect(config);
  ASSERT_OK(client_->WriteValue(2, 8, 4, 0xabcd, WriteMode::kPosted));
  EXPECT_EQ(client_->counters().posted_writes, 1u);
  // The server processes in order: a later read sees the posted write.
  absl::StatusOr<uint64_t> value = client_->ReadValue(2, 8, 4);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, 0xabcdu);
}

TEST_F(ClientRegionTest, ResetNeedsTheFlag) {
  FakeDeviceConfig config = DefaultDevice();
  Connect(config);
  ASSERT_OK(client_->Reset());
  EXPECT_EQ(server_->resets(), 1u);
  config.info.flags &= ~kDeviceFlagsReset;
  client_.reset();
  Connect(config);
  EXPECT_ERRNO(client_->Reset(), ENOTSUP);
}

TEST_F(ClientRegionTest, ConcurrentPipelinedRequests) {
  Connect(DefaultDevice());
  const std::vector<uint8_t> content = PatternBytes(4096, 3);
  server_->SetRegionBytes(2, 0, content);
  constexpr int kThreads = 8;
  constexpr int kIterations = 150;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        const uint64_t offset = ((t * kIterations + i) * 8) % 2048;
        absl::StatusOr<std::vector<uint8_t>> got = client_->Read(2, offset, 8);
        if (!got.ok() ||
            !std::equal(got->begin(), got->end(), content.begin() + offset)) {
          ++failures;
        }
        // Each thread also owns 4 bytes in the upper half.
        const uint64_t mine = 2048 + t * 4;
        if (!client_->WriteValue(2, mine, 4, i).ok()) ++failures;
        absl::StatusOr<uint64_t> back = client_->ReadValue(2, mine, 4);
        if (!back.ok() || *back != static_cast<uint64_t>(i)) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GE(client_->counters().requests, uint64_t{kThreads * kIterations * 3});
}

TEST_F(ClientRegionTest, ReadManyHasEveryRequestInFlightAtOnce) {
  Connect(DefaultDevice());
  const std::vector<uint8_t> content = PatternBytes(4096, 5);
  server_->SetRegionBytes(2, 0, content);
  // The server answers nothing until all kReads requests are in, then
  // answers them in reverse order: only a client that sent the whole batch
  // before waiting (and matches replies by msg_id) completes.
  constexpr size_t kReads = 16;
  absl::Mutex mu;
  std::vector<std::pair<Header, RegionAccess>> held;
  server_->SetHook([&](FakeServer::Session& session, Message& request) {
    if (request.command() != Command::kRegionRead) {
      return FakeServer::HookResult::kDefault;
    }
    absl::MutexLock lock(&mu);
    absl::StatusOr<RegionAccess> access =
        DecodeRegionReadRequest(ByteSpan(request.payload), DecodeLimits{});
    EXPECT_TRUE(access.ok()) << access.status();
    if (!access.ok()) return FakeServer::HookResult::kDefault;
    held.emplace_back(request.header, *access);
    if (held.size() == kReads) {
      for (auto it = held.rbegin(); it != held.rend(); ++it) {
        const RegionAccess& a = it->second;
        std::vector<uint8_t> data(content.begin() + a.offset,
                                  content.begin() + a.offset + a.count);
        EXPECT_OK(session.Reply(
            it->first, EncodeRegionAccessWithData(a.offset, a.region, data)));
      }
      held.clear();
    }
    return FakeServer::HookResult::kHandled;
  });
  std::vector<std::vector<uint8_t>> buffers(kReads);
  std::vector<Client::ReadRequest> reads;
  for (size_t i = 0; i < kReads; ++i) {
    buffers[i].resize(4 + i);
    reads.push_back({2, i * 100, absl::MakeSpan(buffers[i])});
  }
  ASSERT_OK(client_->ReadMany(reads));
  {
    // The hook still reads `held` after sending its last reply: the lock
    // orders that before this frame goes away (TSan sees the order).
    absl::MutexLock lock(&mu);
  }
  for (size_t i = 0; i < kReads; ++i) {
    EXPECT_TRUE(std::equal(buffers[i].begin(), buffers[i].end(),
                           content.begin() + i * 100))
        << "read " << i;
  }
  EXPECT_EQ(server_->CountCommand(Command::kRegionRead), kReads);
  EXPECT_EQ(client_->counters().timeouts, 0u);
}

TEST_F(ClientRegionTest, ReadManyChecksEachReadAndReportsErrors) {
  ClientOptions extra;
  extra.transfer_chunk_size = 64;
  Connect(DefaultDevice(), extra);
  server_->SetRegionBytes(2, 0, PatternBytes(256, 7));
  std::vector<uint8_t> a(8), b(8), big(65);
  // Local checks, before anything is sent.
  Client::ReadRequest too_big[] = {{2, 0, absl::MakeSpan(a)},
                                   {2, 0, absl::MakeSpan(big)}};
  EXPECT_ERRNO(client_->ReadMany(too_big), EINVAL);
  Client::ReadRequest outside[] = {{2, 4096 - 4, absl::MakeSpan(a)}};
  EXPECT_ERRNO(client_->ReadMany(outside), EINVAL);
  Client::ReadRequest no_region[] = {{99, 0, absl::MakeSpan(a)}};
  EXPECT_ERRNO(client_->ReadMany(no_region), EINVAL);
  EXPECT_EQ(server_->CountCommand(Command::kRegionRead), 0u);
  EXPECT_OK(client_->ReadMany({}));

  // The server fails the second read: its errno is the batch's result, and
  // the stream stays usable.
  server_->SetHook([&](FakeServer::Session& session, Message& request) {
    if (request.command() == Command::kRegionRead) {
      absl::StatusOr<RegionAccess> access =
          DecodeRegionReadRequest(ByteSpan(request.payload), DecodeLimits{});
      if (access.ok() && access->offset == 16) {
        EXPECT_OK(session.ReplyError(request.header, EIO));
        return FakeServer::HookResult::kHandled;
      }
    }
    return FakeServer::HookResult::kDefault;
  });
  Client::ReadRequest one_fails[] = {{2, 0, absl::MakeSpan(a)},
                                     {2, 16, absl::MakeSpan(b)},
                                     {2, 32, absl::MakeSpan(b)}};
  EXPECT_ERRNO(client_->ReadMany(one_fails), EIO);
  Client::ReadRequest fine[] = {{2, 0, absl::MakeSpan(a)},
                                {2, 32, absl::MakeSpan(b)}};
  ASSERT_OK(client_->ReadMany(fine));
  const std::vector<uint8_t> expected = PatternBytes(256, 7);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), expected.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), expected.begin() + 32));
}

TEST_F(ClientRegionTest, TimeoutThenTheLateReplyIsDropped) {
  FakeDeviceConfig config = DefaultDevice();
  ClientOptions extra;
  extra.request_timeout = absl::Milliseconds(300);
  Connect(config, extra);
  server_->SetRegionBytes(2, 0, std::vector<uint8_t>{1, 2, 3, 4});

  // The first REGION_READ gets no answer until the test releases it.
  struct Held {
    absl::Mutex mu;
    FakeServer::Session* session = nullptr;
    std::optional<Header> header;
  } held;
  server_->SetHook([&](FakeServer::Session& session, Message& request) {
    absl::MutexLock lock(&held.mu);
    if (request.command() != Command::kRegionRead || held.header) {
      return FakeServer::HookResult::kDefault;
    }
    held.session = &session;
    held.header = request.header;
    return FakeServer::HookResult::kHandled;
  });
  std::vector<uint8_t> buffer(4);
  EXPECT_ERRNO(client_->Read(2, 0, absl::MakeSpan(buffer)), ETIMEDOUT);
  EXPECT_EQ(client_->counters().timeouts, 1u);
  {
    // Now the stale answer arrives, with different bytes.
    absl::MutexLock lock(&held.mu);
    ASSERT_TRUE(held.header.has_value());
    ASSERT_OK(held.session->Reply(
        *held.header, EncodeRegionAccessWithData(
                          0, 2, std::vector<uint8_t>{0xee, 0xee, 0xee, 0xee})));
  }
  absl::StatusOr<std::vector<uint8_t>> fresh = client_->Read(2, 0, 4);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(*fresh, (std::vector<uint8_t>{1, 2, 3, 4}));
  // The late reply preceded the fresh one on the stream.
  EXPECT_EQ(client_->counters().late_replies, 1u);
  EXPECT_EQ(client_->state().state, ClientState::kConnected);
}

// ---- DMA service ----

class ClientDmaTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    FakeDeviceConfig config = DefaultDevice();
    config.offer_twin_socket = GetParam();
    server_ = std::make_unique<FakeServer>(TestSocketPath("dma"), config);
    client_ = MustConnect(OptionsFor(*server_));
    ASSERT_NE(client_, nullptr);
    ASSERT_EQ(client_->device().twin_socket, GetParam());
    absl::StatusOr<std::unique_ptr<GuestMemory>> ram = GuestMemory::Create(kRamSize);
    ASSERT_TRUE(ram.ok()) << ram.status();
    ram_ = *std::move(ram);
    absl::StatusOr<std::unique_ptr<GuestMemory>> rom = GuestMemory::Create(4096);
    ASSERT_TRUE(rom.ok()) << rom.status();
    rom_ = *std::move(rom);
  }
  static constexpr uint64_t kRamIova = 0x100000;
  static constexpr uint64_t kRamSize = 64 * 1024;
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<GuestMemory> ram_;
  std::unique_ptr<GuestMemory> rom_;
};

TEST_P(ClientDmaTest, ServesReadsAndWritesWithBoundsChecks) {
  // RAM with its fd; right after it, a read-only range without an fd.
  ASSERT_OK(client_->DmaMap(ram_->Region(kRamIova)));
  ASSERT_OK(client_->DmaMap(rom_->Region(kRamIova + kRamSize, 0, 0,
                                         kDmaMapFlagRead, /*pass_fd=*/false)));
  const std::vector<FakeServer::DmaMapRecord> maps = server_->dma_maps();
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_NE(maps[0].fd, nullptr);
  EXPECT_EQ(maps[1].fd, nullptr);
  EXPECT_EQ(maps[1].request.flags, kDmaMapFlagRead);

  const std::vector<uint8_t> data = PatternBytes(100, 4);
  absl::StatusOr<Message> wrote = server_->DmaWrite(kRamIova + 10, data);
  ASSERT_TRUE(wrote.ok()) << wrote.status();
  EXPECT_EQ(wrote->payload.size(), 16u);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), ram_->data() + 10));

  // A read spanning the two contiguous ranges.
  std::memset(rom_->data(), 0x5a, 16);
  std::memset(ram_->data() + kRamSize - 16, 0xa5, 16);
  absl::StatusOr<Message> read = server_->DmaRead(kRamIova + kRamSize - 16, 32);
  ASSERT_TRUE(read.ok()) << read.status();
  absl::StatusOr<DmaAccess> access = DecodeDmaReadReply(read->payload, 32);
  ASSERT_TRUE(access.ok()) << access.status();
  std::vector<uint8_t> expected(16, 0xa5);
  expected.insert(expected.end(), 16, 0x5a);
  EXPECT_EQ(std::vector<uint8_t>(access->data.begin(), access->data.end()),
            expected);

  // Errors are replies, not crashes.
  EXPECT_ERRNO(server_->DmaWrite(kRamIova + kRamSize, data).status(), EPERM);
  EXPECT_ERRNO(server_->DmaRead(kRamIova - 8, 16).status(), EFAULT);
  EXPECT_ERRNO(server_->DmaRead(kRamIova + kRamSize + 4000, 200).status(),
               EFAULT);
  EXPECT_ERRNO(server_->DmaRead(UINT64_MAX - 4, 16).status(), ERANGE);
  EXPECT_ERRNO(server_->DmaRead(kRamIova, 2u << 20).status(), E2BIG);
  EXPECT_ERRNO(server_->SendRequest(Command::kRegionRead, {}).status(), ENOSYS);
  std::vector<UniqueFd> fds;
  fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
  EXPECT_ERRNO(server_->SendRequest(Command::kDmaRead,
                                    EncodeDmaAccessHeader(kRamIova, 4),
                                    std::move(fds))
                   .status(),
               EINVAL);
  EXPECT_ERRNO(server_->SendRequest(Command::kDmaWrite,
                                    std::vector<uint8_t>{1, 2, 3})
                   .status(),
               EINVAL);

  const ClientCounters counters = client_->counters();
  EXPECT_EQ(counters.dma_writes_served, 1u);
  EXPECT_EQ(counters.dma_reads_served, 1u);
  EXPECT_EQ(counters.dma_bytes_read, 32u);
  EXPECT_EQ(counters.dma_errors, 8u);
  EXPECT_EQ(client_->state().state, ClientState::kConnected);
}

TEST_P(ClientDmaTest, ServesFdOnlyRangesWithFileIo) {
  DmaRegion region = ram_->Region(kRamIova);
  region.host = nullptr;  // pread/pwrite on the memfd
  ASSERT_OK(client_->DmaMap(region));
  ASSERT_TRUE(server_->DmaWrite(kRamIova + 4096, PatternBytes(64, 5)).ok());
  EXPECT_TRUE(std::equal(ram_->data() + 4096, ram_->data() + 4096 + 64,
                         PatternBytes(64, 5).begin()));
  absl::StatusOr<Message> read = server_->DmaRead(kRamIova + 4096, 64);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->payload.size(), 16u + 64u);
}

TEST_P(ClientDmaTest, UnmapStopsTheService) {
  ASSERT_OK(client_->DmaMap(ram_->Region(kRamIova)));
  ASSERT_OK(client_->DmaUnmap(kRamIova, kRamSize));
  EXPECT_TRUE(server_->dma_maps().empty());
  EXPECT_ERRNO(server_->DmaRead(kRamIova, 8).status(), EFAULT);
  EXPECT_ERRNO(client_->DmaUnmap(kRamIova, kRamSize), ENOENT);
  ASSERT_OK(client_->DmaMap(ram_->Region(kRamIova, 0, 4096)));
  ASSERT_OK(client_->DmaMap(ram_->Region(kRamIova + 4096, 4096, 4096)));
  ASSERT_OK(client_->DmaUnmapAll());
  EXPECT_TRUE(server_->dma_maps().empty());
}

INSTANTIATE_TEST_SUITE_P(TwinSocket, ClientDmaTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Twin" : "MainSocket";
                         });

TEST(ClientDmaMapTest, LocalChecks) {
  FakeDeviceConfig config = DefaultDevice();
  config.caps.max_dma_maps = 2;
  FakeServer server(TestSocketPath("dmamap"), config);
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::unique_ptr<GuestMemory>> ram = GuestMemory::Create(3 * 4096);
  ASSERT_TRUE(ram.ok());
  GuestMemory& mem = **ram;
  EXPECT_ERRNO(client->DmaMap(mem.Region(0x100)), EINVAL);  // unaligned
  DmaRegion no_backing;
  no_backing.iova = 0x1000;
  no_backing.size = 0x1000;
  EXPECT_ERRNO(client->DmaMap(no_backing), EINVAL);
  ASSERT_OK(client->DmaMap(mem.Region(0x10000, 0, 4096)));
  EXPECT_ERRNO(client->DmaMap(mem.Region(0x10000, 4096, 4096)), EEXIST);
  ASSERT_OK(client->DmaMap(mem.Region(0x20000, 4096, 4096)));
  EXPECT_ERRNO(client->DmaMap(mem.Region(0x30000, 8192, 4096)), ENOSPC);
  EXPECT_EQ(server.dma_maps().size(), 2u);
  EXPECT_EQ(server.CountCommand(Command::kDmaMap), 2u);
}

// ---- Interrupts ----

TEST(ClientIrqTest, EventfdsAreChunkedByTheServersFdLimit) {
  FakeDeviceConfig config = DefaultDevice();
  config.caps.max_msg_fds = 3;
  FakeServer server(TestSocketPath("irq"), config);
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::unique_ptr<IrqWaiter>> waiter = IrqWaiter::Create(8);
  ASSERT_TRUE(waiter.ok()) << waiter.status();
  std::vector<int> fds((*waiter)->fds().begin(), (*waiter)->fds().end());
  fds[3] = -1;
  ASSERT_OK(client->SetIrqEventfds(kPciMsixIrqIndex, 0, fds));
  const std::vector<FakeServer::SetIrqsRecord> sets = server.set_irqs();
  ASSERT_EQ(sets.size(), 4u);
  const uint32_t starts[] = {0, 3, 4, 7};
  const uint32_t counts[] = {3, 1, 3, 1};
  const size_t fd_counts[] = {3, 0, 3, 1};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(sets[i].request.flags, kIrqSetDataEventfd | kIrqSetActionTrigger);
    EXPECT_EQ(sets[i].request.index, kPciMsixIrqIndex);
    EXPECT_EQ(sets[i].request.start, starts[i]);
    EXPECT_EQ(sets[i].request.count, counts[i]);
    EXPECT_EQ(sets[i].fds.size(), fd_counts[i]);
  }
  // The server raises vector 5: the waiter sees it.
  ASSERT_TRUE(server.Trigger(kPciMsixIrqIndex, 5));
  ASSERT_TRUE(server.Trigger(kPciMsixIrqIndex, 5));
  EXPECT_FALSE(server.Trigger(kPciMsixIrqIndex, 3));
  absl::StatusOr<std::vector<IrqWaiter::Event>> events =
      (*waiter)->Wait(absl::Seconds(5));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].vector, 5u);
  EXPECT_EQ((*events)[0].count, 2u);

  ASSERT_OK(client->MaskIrqs(kPciMsixIrqIndex, 1, 2));
  ASSERT_OK(client->UnmaskIrqs(kPciMsixIrqIndex, 2, 1));
  ASSERT_OK(client->TriggerIrqs(kPciMsixIrqIndex, 0, std::vector<uint8_t>{0, 1}));
  ASSERT_OK(client->DisableIrqs(kPciMsixIrqIndex));
  const std::vector<FakeServer::SetIrqsRecord> more = server.set_irqs();
  ASSERT_EQ(more.size(), 8u);
  EXPECT_EQ(more[4].request.flags, kIrqSetDataNone | kIrqSetActionMask);
  EXPECT_EQ(more[4].request.start, 1u);
  EXPECT_EQ(more[4].request.count, 2u);
  EXPECT_EQ(more[5].request.flags, kIrqSetDataNone | kIrqSetActionUnmask);
  EXPECT_EQ(more[6].request.flags, kIrqSetDataBool | kIrqSetActionTrigger);
  EXPECT_EQ(more[6].request.bools, (std::vector<uint8_t>{0, 1}));
  EXPECT_EQ(more[7].request.flags, kIrqSetDataNone | kIrqSetActionTrigger);
  EXPECT_EQ(more[7].request.count, 0u);
  EXPECT_EQ(server.WiredEventfd(kPciMsixIrqIndex, 5), -1);
}

TEST(ClientIrqTest, LocalChecks) {
  FakeServer server(TestSocketPath("irqchk"), DefaultDevice());
  std::unique_ptr<Client> client = MustConnect(OptionsFor(server));
  ASSERT_NE(client, nullptr);
  const int fd = ::eventfd(0, EFD_CLOEXEC);
  const int fds[2] = {fd, fd};
  EXPECT_ERRNO(client->SetIrqEventfds(kPciMsixIrqIndex, 7, fds), EINVAL);
  EXPECT_ERRNO(client->SetIrqEventfds(9, 0, fds), EINVAL);
  EXPECT_ERRNO(client->SetIrqEventfds(kPciMsiIrqIndex, 0, fds), ENOTSUP);
  EXPECT_ERRNO(client->MaskIrqs(kPciMsiIrqIndex, 0, 1), ENOTSUP);
  EXPECT_ERRNO(client->MaskIrqs(kPciMsixIrqIndex, 0, 9), EINVAL);
  EXPECT_EQ(server.CountCommand(Command::kDeviceSetIrqs), 0u);
  ::close(fd);
}

TEST(ClientCloseTest, CloseFailsLaterRequestsAndIsIdempotent) {
  FakeServer server(TestSocketPath("close"), DefaultDevice());
  std::vector<ClientState> seen;
  absl::Mutex seen_mu;
  ClientOptions options = OptionsFor(server);
  options.on_state_change = [&](const ClientStateInfo& info) {
    absl::MutexLock lock(&seen_mu);
    seen.push_back(info.state);
  };
  std::unique_ptr<Client> client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  client->Close();
  client->Close();
  EXPECT_EQ(client->state().state, ClientState::kClosed);
  EXPECT_ERRNO(client->Read(2, 0, 4).status(), ECANCELED);
  EXPECT_TRUE(server.WaitFor([&] { return !server.connected(); }));
  absl::MutexLock lock(&seen_mu);
  EXPECT_EQ(seen, (std::vector<ClientState>{ClientState::kConnected,
                                            ClientState::kClosed}));
}

}  // namespace
}  // namespace testing
}  // namespace vfio_user
