// Unit tests of DmaChannel: server->client DMA_READ / DMA_WRITE round trips
// on a twin socket, done by the calling (device worker) thread.
//
// The channel's end of a real AF_UNIX socketpair is a non-blocking
// Connection, as the session makes it (the fd itself either blocking, as the
// session's twin socket is, or O_NONBLOCK: both receive paths). A small fake
// client on the other end answers each request as the test dictates; by
// default it serves a guest-memory window from a buffer. Nothing here asserts
// on timing: timeouts are only deadlines for things that must happen.
#include "server/dma_channel.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "core/message.h"
#include "core/protocol.h"
#include "core/transport.h"
#include "gtest/gtest.h"
#include "server/device.h"
#include "server/event_loop.h"

namespace vfio_user {
namespace {

constexpr uint64_t kGuestBase = 0x10000000;
constexpr size_t kGuestSize = 256 * 1024;
// How long a test waits for something that must happen (never reached when
// the code under test works).
constexpr absl::Duration kDeadline = absl::Seconds(10);

// One request as the fake client received it.
struct ClientRequest {
  Header header;
  uint64_t address = 0;
  uint64_t count = 0;
  std::vector<uint8_t> data;  // DMA_WRITE only
  bool is_write() const {
    return header.cmd == static_cast<uint16_t>(Command::kDmaWrite);
  }
};

// The client end of the twin socket: a thread that receives DMA requests
// and hands each to a handler, which answers (or not) through Send().
class FakeClient {
 public:
  // index: 0 for the first request received, 1 for the next, ...
  using Handler = std::function<void(size_t index, const ClientRequest& req)>;

  FakeClient(UniqueFd socket, DmaLayout layout)
      : conn_(std::move(socket)), layout_(layout), memory_(kGuestSize) {
    for (size_t i = 0; i < memory_.size(); ++i) {
      memory_[i] = static_cast<uint8_t>(i * 7 + 3);
    }
  }
  ~FakeClient() { Join(); }

  // REQUIRES: before Start().
  void SetHandler(Handler handler) { handler_ = std::move(handler); }
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  // Returns once the server end has shut down and everything it sent was
  // handled.
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  // ---- For handlers (client thread) ----
  // Shuts the client's end down (the server sees EOF; Run() then ends).
  void HangUp() { conn_.Shutdown(); }
  void Send(const Message& msg) {
    absl::Status st = conn_.Send(msg);
    EXPECT_TRUE(st.ok()) << st;
  }
  // Answers like a client whose guest memory [kGuestBase, +kGuestSize) is
  // memory_: reads return it, writes store into it.
  void AnswerFromMemory(const ClientRequest& req) {
    const bool inside = req.address >= kGuestBase &&
                        req.address - kGuestBase <= kGuestSize &&
                        req.count <= kGuestSize - (req.address - kGuestBase);
    if (!inside) {
      ADD_FAILURE() << "request outside the guest window: address=0x"
                    << std::hex << req.address << " count=" << std::dec
                    << req.count;
      Send(MakeErrorReply(req.header, EFAULT));
      return;
    }
    const size_t offset = static_cast<size_t>(req.address - kGuestBase);
    Bytes payload;
    {
      absl::MutexLock lock(&mu_);
      if (req.is_write()) {
        std::memcpy(memory_.data() + offset, req.data.data(), req.data.size());
        // QEMU answers DMA_WRITE with a header-only reply; spec peers echo
        // the access header.
        if (layout_ == DmaLayout::kSpec) {
          payload = EncodeDmaAccessHeader(req.address, req.count, layout_);
        }
      } else {
        payload = EncodeDmaAccessWithData(
            req.address,
            ByteSpan(memory_.data() + offset, static_cast<size_t>(req.count)),
            layout_);
      }
    }
    Send(MakeReply(req.header, std::move(payload)));
  }

  // ---- For the test (any thread) ----
  std::vector<ClientRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  size_t request_count() const {
    absl::MutexLock lock(&mu_);
    return requests_.size();
  }
  std::vector<uint8_t> Memory(uint64_t iova, size_t len) const {
    absl::MutexLock lock(&mu_);
    const size_t offset = static_cast<size_t>(iova - kGuestBase);
    return std::vector<uint8_t>(memory_.begin() + offset,
                                memory_.begin() + offset + len);
  }

 private:
  void Run() {
    DecodeLimits limits;
    for (size_t index = 0;; ++index) {
      absl::StatusOr<std::optional<Message>> got = conn_.Receive();
      if (!got.ok()) {
        // The server end shutting down is how every test ends.
        EXPECT_TRUE(IsPeerClosed(got.status())) << got.status();
        return;
      }
      if (!got->has_value()) {  // a blocking Connection always has one
        ADD_FAILURE() << "blocking Receive() returned no message";
        return;
      }
      const Message& msg = **got;
      ClientRequest req;
      req.header = msg.header;
      EXPECT_TRUE(msg.header.is_command()) << "flags=" << msg.header.flags;
      EXPECT_TRUE(msg.fds.empty());
      absl::StatusOr<DmaAccess> access;
      if (req.header.cmd == static_cast<uint16_t>(Command::kDmaRead)) {
        access = DecodeDmaReadRequest(ByteSpan(msg.payload), limits, layout_);
      } else if (req.is_write()) {
        access = DecodeDmaWriteRequest(ByteSpan(msg.payload), limits, layout_);
      } else {
        access = absl::InvalidArgumentError("not a DMA command");
      }
      EXPECT_TRUE(access.ok()) << "cmd=" << req.header.cmd << ": "
                               << access.status();
      if (access.ok()) {
        req.address = access->address;
        req.count = access->count;
        req.data.assign(access->data.begin(), access->data.end());
      }
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back(req);
      }
      if (handler_) {
        handler_(index, req);
      } else {
        AnswerFromMemory(req);
      }
    }
  }

  Connection conn_;  // blocking, no receive timeout; client thread only
  const DmaLayout layout_;
  Handler handler_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::vector<uint8_t> memory_ ABSL_GUARDED_BY(mu_);
  std::vector<ClientRequest> requests_ ABSL_GUARDED_BY(mu_);
};

std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed + i * 13);
  return v;
}

// Param: whether the channel's socket fd is O_NONBLOCK (the session's twin
// fd is blocking; the transport then waits inside recvmsg, otherwise in
// poll). The Connection is non-blocking either way.
class DmaChannelTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = std::move(*loop);
    loop_->StartThread("dma-channel-test");
    device_ = std::make_unique<Device>("dma-channel-test");
    // DmaChannel marks DMA_WRITEs dirty in the device's DmaTable, which
    // Finalize() creates.
    loop_->RunSync([this] { ASSERT_TRUE(device_->Finalize(loop_.get()).ok()); });
  }

  void TearDown() override {
    StopClient();
    channel_.reset();
    twin_.reset();
    loop_->RunSync([this] { device_.reset(); });
    loop_->Stop();
    loop_->Join();
  }

  // Creates the socketpair, the channel on one end and the fake client
  // (started, with `handler`; null: serve guest memory) on the other.
  void StartChannel(DmaChannel::Options options,
                    FakeClient::Handler handler = nullptr) {
    absl::StatusOr<std::pair<UniqueFd, UniqueFd>> fds = MakeSocketPair();
    ASSERT_TRUE(fds.ok()) << fds.status();
    if (GetParam()) {
      const int flags = ::fcntl(fds->first.get(), F_GETFL);
      ASSERT_GE(flags, 0);
      ASSERT_EQ(::fcntl(fds->first.get(), F_SETFL, flags | O_NONBLOCK), 0);
    }
    TransportOptions topts;
    topts.nonblocking = true;
    twin_ = std::make_shared<Connection>(std::move(fds->first), topts);
    twin_->set_max_fds_in(0);
    channel_ = std::make_shared<DmaChannel>(
        twin_, options, device_.get(),
        [this](const absl::Status& why) {
          absl::MutexLock lock(&mu_);
          ++broken_calls_;
          broken_status_ = why;
        },
        [this] {
          absl::MutexLock lock(&mu_);
          ++resume_calls_;
        });
    client_ = std::make_unique<FakeClient>(std::move(fds->second), options.layout);
    client_->SetHandler(std::move(handler));
    client_->Start();
  }

  // Shuts the channel's socket down and waits until the fake client has
  // handled everything that was sent: afterwards client_->requests() is
  // exactly what the channel sent.
  void StopClient() {
    if (twin_) twin_->Shutdown();
    if (client_) client_->Join();
  }

  // Starts the channel with a client that holds its answer to the first
  // request until `answer` is notified, and a thread that reads 16 bytes at
  // kGuestBase into *result; returns that thread once its request reached
  // the client (the access is then waiting for its reply).
  std::thread StartHeldRead(absl::Notification* answer,
                            std::optional<absl::Status>* result) {
    auto request_seen = std::make_shared<absl::Notification>();
    StartChannel({}, [this, answer, request_seen](size_t index,
                                                   const ClientRequest& req) {
      if (index == 0) {
        request_seen->Notify();
        EXPECT_TRUE(answer->WaitForNotificationWithTimeout(kDeadline));
      }
      client_->AnswerFromMemory(req);
    });
    std::thread reader([this, result] {
      std::vector<uint8_t> buf(16);
      *result = Read(kGuestBase, &buf);
    });
    EXPECT_TRUE(request_seen->WaitForNotificationWithTimeout(kDeadline));
    return reader;
  }

  std::optional<absl::Status> Read(uint64_t iova, std::vector<uint8_t>* out) {
    return channel_->Access(iova, out->data(), out->size(), /*write=*/false);
  }
  std::optional<absl::Status> Write(uint64_t iova, std::vector<uint8_t> data) {
    return channel_->Access(iova, data.data(), data.size(), /*write=*/true);
  }

  int broken_calls() {
    absl::MutexLock lock(&mu_);
    return broken_calls_;
  }
  absl::Status broken_status() {
    absl::MutexLock lock(&mu_);
    return broken_status_;
  }
  int resume_calls() {
    absl::MutexLock lock(&mu_);
    return resume_calls_;
  }

  // A reply that `corrupt` makes not match its request must fail the access
  // with EPROTO, break the channel once and close it.
  void ExpectMismatchedReplyClosesChannel(std::function<void(Message*)> corrupt) {
    StartChannel({}, [this, corrupt](size_t index, const ClientRequest& req) {
      if (index != 0) {
        client_->AnswerFromMemory(req);
        return;
      }
      std::vector<uint8_t> data = client_->Memory(req.address, req.count);
      Message reply = MakeReply(
          req.header, EncodeDmaAccessWithData(req.address, ByteSpan(data)));
      corrupt(&reply);
      client_->Send(reply);
    });
    std::vector<uint8_t> buf(64);
    std::optional<absl::Status> first = Read(kGuestBase, &buf);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(ErrnoOf(*first), EPROTO) << *first;
    EXPECT_EQ(broken_calls(), 1);
    EXPECT_EQ(ErrnoOf(broken_status()), EPROTO) << broken_status();

    EXPECT_EQ(Read(kGuestBase, &buf), std::nullopt);
    EXPECT_EQ(Write(kGuestBase, Pattern(8, 1)), std::nullopt);
    EXPECT_EQ(broken_calls(), 1);
    StopClient();
    EXPECT_EQ(client_->request_count(), 1u);
  }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Device> device_;
  std::shared_ptr<Connection> twin_;
  std::shared_ptr<DmaChannel> channel_;
  std::unique_ptr<FakeClient> client_;

  absl::Mutex mu_;
  int broken_calls_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status broken_status_ ABSL_GUARDED_BY(mu_);
  int resume_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST_P(DmaChannelTest, ReadReturnsClientDataInOneRequest) {
  StartChannel({});
  std::vector<uint8_t> buf(64);
  std::optional<absl::Status> st = Read(kGuestBase + 8, &buf);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(st->ok()) << *st;
  EXPECT_EQ(buf, client_->Memory(kGuestBase + 8, 64));
  EXPECT_EQ(device_->counters().dma_messages.load(), 1u);

  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header.cmd, static_cast<uint16_t>(Command::kDmaRead));
  EXPECT_EQ(reqs[0].address, kGuestBase + 8);
  EXPECT_EQ(reqs[0].count, 64u);
  EXPECT_EQ(broken_calls(), 0);
}

TEST_P(DmaChannelTest, WriteDeliversDataInOneRequest) {
  StartChannel({});
  const std::vector<uint8_t> data = Pattern(100, 0x40);
  std::optional<absl::Status> st = Write(kGuestBase + 0x200, data);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(st->ok()) << *st;
  EXPECT_EQ(client_->Memory(kGuestBase + 0x200, data.size()), data);

  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header.cmd, static_cast<uint16_t>(Command::kDmaWrite));
  EXPECT_EQ(reqs[0].address, kGuestBase + 0x200);
  EXPECT_EQ(reqs[0].count, data.size());
  EXPECT_EQ(reqs[0].data, data);
  EXPECT_EQ(broken_calls(), 0);
}

TEST_P(DmaChannelTest, ReadLargerThanMaxChunkIsSplitIntoChunkRequests) {
  DmaChannel::Options options;
  options.max_chunk = 4096;
  StartChannel(options);
  const uint64_t iova = kGuestBase + 100;
  std::vector<uint8_t> buf(10000);
  std::optional<absl::Status> st = Read(iova, &buf);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(st->ok()) << *st;
  EXPECT_EQ(buf, client_->Memory(iova, buf.size()));
  EXPECT_EQ(device_->counters().dma_messages.load(), 3u);

  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), 3u);
  const uint64_t counts[] = {4096, 4096, 10000 - 2 * 4096};
  uint64_t address = iova;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(reqs[i].header.cmd, static_cast<uint16_t>(Command::kDmaRead));
    EXPECT_EQ(reqs[i].address, address);
    EXPECT_EQ(reqs[i].count, counts[i]);
    address += counts[i];
  }
  EXPECT_NE(reqs[0].header.msg_id, reqs[1].header.msg_id);
  EXPECT_NE(reqs[1].header.msg_id, reqs[2].header.msg_id);
  EXPECT_EQ(broken_calls(), 0);
}

TEST_P(DmaChannelTest, WriteLargerThanMaxChunkIsSplitIntoChunkRequests) {
  DmaChannel::Options options;
  options.max_chunk = 4096;
  StartChannel(options);
  const uint64_t iova = kGuestBase + 3;
  const std::vector<uint8_t> data = Pattern(4096 * 2 + 1, 0x11);
  std::optional<absl::Status> st = Write(iova, data);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(st->ok()) << *st;
  EXPECT_EQ(client_->Memory(iova, data.size()), data);

  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), 3u);
  const uint64_t counts[] = {4096, 4096, 1};
  uint64_t done = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(reqs[i].header.cmd, static_cast<uint16_t>(Command::kDmaWrite));
    EXPECT_EQ(reqs[i].address, iova + done);
    EXPECT_EQ(reqs[i].count, counts[i]);
    EXPECT_EQ(reqs[i].data,
              std::vector<uint8_t>(data.begin() + done,
                                   data.begin() + done + counts[i]));
    done += counts[i];
  }
  EXPECT_EQ(broken_calls(), 0);
}

TEST_P(DmaChannelTest, QemuLegacyLayoutRoundTrips) {
  DmaChannel::Options options;
  options.layout = DmaLayout::kQemuLegacy;
  StartChannel(options);
  const std::vector<uint8_t> data = Pattern(300, 0x77);
  std::optional<absl::Status> wrote = Write(kGuestBase + 0x1000, data);
  ASSERT_TRUE(wrote.has_value());
  ASSERT_TRUE(wrote->ok()) << *wrote;
  std::vector<uint8_t> buf(data.size());
  std::optional<absl::Status> read = Read(kGuestBase + 0x1000, &buf);
  ASSERT_TRUE(read.has_value());
  ASSERT_TRUE(read->ok()) << *read;
  EXPECT_EQ(buf, data);
  StopClient();
  EXPECT_EQ(client_->request_count(), 2u);
}

TEST_P(DmaChannelTest, ErrorReplyFailsOnlyThatAccess) {
  StartChannel({}, [this](size_t index, const ClientRequest& req) {
    if (index == 0) {
      client_->Send(MakeErrorReply(req.header, EFAULT));
    } else {
      client_->AnswerFromMemory(req);
    }
  });
  std::vector<uint8_t> buf(32);
  std::optional<absl::Status> failed = Read(kGuestBase, &buf);
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(ErrnoOf(*failed), EFAULT) << *failed;

  std::optional<absl::Status> next = Read(kGuestBase + 32, &buf);
  ASSERT_TRUE(next.has_value());
  EXPECT_TRUE(next->ok()) << *next;
  EXPECT_EQ(buf, client_->Memory(kGuestBase + 32, 32));
  std::optional<absl::Status> write = Write(kGuestBase, Pattern(16, 2));
  ASSERT_TRUE(write.has_value());
  EXPECT_TRUE(write->ok()) << *write;
  EXPECT_EQ(broken_calls(), 0);
}

TEST_P(DmaChannelTest, ErrorReplyToOneChunkStopsTheRestOfThatAccess) {
  DmaChannel::Options options;
  options.max_chunk = 256;
  StartChannel(options, [this](size_t index, const ClientRequest& req) {
    if (index == 1) {
      client_->Send(MakeErrorReply(req.header, EPERM));
    } else {
      client_->AnswerFromMemory(req);
    }
  });
  std::vector<uint8_t> buf(256 * 3);
  std::optional<absl::Status> failed = Read(kGuestBase, &buf);
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(ErrnoOf(*failed), EPERM) << *failed;

  std::optional<absl::Status> next = Write(kGuestBase + 0x4000, Pattern(8, 3));
  ASSERT_TRUE(next.has_value());
  EXPECT_TRUE(next->ok()) << *next;
  EXPECT_EQ(broken_calls(), 0);

  // Chunks 0 and 1 of the read, then the write: chunk 2 was never sent.
  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].address, kGuestBase);
  EXPECT_EQ(reqs[1].address, kGuestBase + 256);
  EXPECT_TRUE(reqs[2].is_write());
  EXPECT_EQ(reqs[2].address, kGuestBase + 0x4000);
}

// A reply of the expected size has its data received straight into the
// device's buffer; an access header that does not match still fails it.
TEST_P(DmaChannelTest, ReadReplyOfTheRightSizeForAnotherAddressFails) {
  StartChannel({}, [this](size_t index, const ClientRequest& req) {
    if (index != 0) {
      client_->AnswerFromMemory(req);
      return;
    }
    std::vector<uint8_t> data = client_->Memory(req.address, req.count);
    client_->Send(MakeReply(req.header, EncodeDmaAccessWithData(
                                            req.address + 8, ByteSpan(data))));
  });
  std::vector<uint8_t> buf(64);
  std::optional<absl::Status> first = Read(kGuestBase, &buf);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(ErrnoOf(*first), EPROTO) << *first;
  // The stream is in step: the next read works.
  std::optional<absl::Status> second = Read(kGuestBase + 64, &buf);
  ASSERT_TRUE(second.has_value());
  ASSERT_TRUE(second->ok()) << *second;
  EXPECT_EQ(buf, client_->Memory(kGuestBase + 64, 64));
}

TEST_P(DmaChannelTest, WriteReplyForAnotherAddressFails) {
  StartChannel({}, [this](size_t index, const ClientRequest& req) {
    if (index != 0) {
      client_->AnswerFromMemory(req);
      return;
    }
    client_->Send(MakeReply(req.header,
                            EncodeDmaAccessHeader(req.address + 8, req.count)));
  });
  std::optional<absl::Status> first = Write(kGuestBase, Pattern(32, 3));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(ErrnoOf(*first), EPROTO) << *first;
  std::optional<absl::Status> second = Write(kGuestBase, Pattern(32, 4));
  ASSERT_TRUE(second.has_value());
  EXPECT_TRUE(second->ok()) << *second;
  EXPECT_EQ(client_->Memory(kGuestBase, 32), Pattern(32, 4));
}

TEST_P(DmaChannelTest, LargeReadArrivesWhole) {
  StartChannel({});
  std::vector<uint8_t> buf(Connection::kReadAheadBytes * 2 + 100);
  std::optional<absl::Status> st = Read(kGuestBase, &buf);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(st->ok()) << *st;
  EXPECT_TRUE(buf == client_->Memory(kGuestBase, buf.size()));
}

TEST_P(DmaChannelTest, ReplyWithWrongMsgIdBreaksAndClosesChannel) {
  ExpectMismatchedReplyClosesChannel(
      [](Message* reply) { reply->header.msg_id += 1; });
}

TEST_P(DmaChannelTest, ReplyWithWrongCommandBreaksAndClosesChannel) {
  ExpectMismatchedReplyClosesChannel([](Message* reply) {
    reply->header.cmd = static_cast<uint16_t>(Command::kDmaWrite);
  });
}

TEST_P(DmaChannelTest, CommandInsteadOfReplyBreaksAndClosesChannel) {
  ExpectMismatchedReplyClosesChannel(
      [](Message* reply) { reply->header.flags = kFlagsTypeCommand; });
}

TEST_P(DmaChannelTest, NoReplyWithinTimeoutBreaksAndClosesChannel) {
  DmaChannel::Options options;
  options.timeout = absl::Milliseconds(200);
  StartChannel(options, [](size_t, const ClientRequest&) {
    // Never answers.
  });
  std::vector<uint8_t> buf(16);
  std::optional<absl::Status> st = Read(kGuestBase, &buf);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(ErrnoOf(*st), ETIMEDOUT) << *st;
  EXPECT_EQ(broken_calls(), 1);
  EXPECT_EQ(ErrnoOf(broken_status()), ETIMEDOUT) << broken_status();

  EXPECT_EQ(Read(kGuestBase, &buf), std::nullopt);
  EXPECT_EQ(broken_calls(), 1);
  StopClient();
  EXPECT_EQ(client_->request_count(), 1u);
}

TEST_P(DmaChannelTest, ClientHangingUpBeforeReplyBreaksChannel) {
  StartChannel({}, [this](size_t, const ClientRequest&) {
    client_->HangUp();  // takes the request and goes away
  });
  std::vector<uint8_t> buf(16);
  std::optional<absl::Status> st = Read(kGuestBase, &buf);
  ASSERT_TRUE(st.has_value());
  EXPECT_FALSE(st->ok());
  EXPECT_NE(ErrnoOf(*st), ETIMEDOUT) << *st;  // seen as the stream's end
  EXPECT_EQ(broken_calls(), 1);
  EXPECT_EQ(Read(kGuestBase, &buf), std::nullopt);
  EXPECT_EQ(broken_calls(), 1);
}

TEST_P(DmaChannelTest, LoopIsDeferredWhileAccessRunsAndResumedAfter) {
  absl::Notification answer;
  std::optional<absl::Status> result;
  std::thread access = StartHeldRead(&answer, &result);
  // The access is waiting for its reply: the loop must defer.
  EXPECT_FALSE(channel_->TryAcquireForLoop());
  EXPECT_FALSE(channel_->TryAcquireForLoop());
  EXPECT_EQ(resume_calls(), 0);
  answer.Notify();
  access.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok()) << *result;
  EXPECT_EQ(resume_calls(), 1);  // once, however often the loop was declined

  // The loop owns the socket: accesses decline without sending anything.
  ASSERT_TRUE(channel_->TryAcquireForLoop());
  std::vector<uint8_t> buf(16);
  EXPECT_EQ(Read(kGuestBase + 0x100, &buf), std::nullopt);
  EXPECT_EQ(Write(kGuestBase + 0x200, Pattern(16, 9)), std::nullopt);
  channel_->ReleaseFromLoop();

  std::optional<absl::Status> after = Read(kGuestBase + 0x300, &buf);
  ASSERT_TRUE(after.has_value());
  EXPECT_TRUE(after->ok()) << *after;
  EXPECT_EQ(buf, client_->Memory(kGuestBase + 0x300, 16));
  EXPECT_EQ(resume_calls(), 1);  // the loop was not deferred this time
  EXPECT_EQ(broken_calls(), 0);

  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].address, kGuestBase);
  EXPECT_EQ(reqs[1].address, kGuestBase + 0x300);
}

TEST_P(DmaChannelTest, AccessWorksWhenLoopAcquiresAndReleasesInBetween) {
  StartChannel({});
  ASSERT_TRUE(channel_->TryAcquireForLoop());
  channel_->ReleaseFromLoop();
  std::vector<uint8_t> buf(8);
  std::optional<absl::Status> st = Read(kGuestBase, &buf);
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(st->ok()) << *st;
  EXPECT_EQ(resume_calls(), 0);
}

TEST_P(DmaChannelTest, CloseMakesAccessDeclineWithoutSending) {
  StartChannel({});
  channel_->Close();
  std::vector<uint8_t> buf(8);
  EXPECT_EQ(Read(kGuestBase, &buf), std::nullopt);
  EXPECT_EQ(Write(kGuestBase, Pattern(8, 4)), std::nullopt);
  EXPECT_EQ(broken_calls(), 0);
  StopClient();
  EXPECT_EQ(client_->request_count(), 0u);
}

TEST_P(DmaChannelTest, CloseWakesAccessWaitingForItsTurn) {
  absl::Notification answer;
  std::optional<absl::Status> first;
  std::thread running = StartHeldRead(&answer, &first);
  // `first` holds the socket until the client answers, so this one waits
  // for its turn (or, if it starts late, finds the channel closed).
  std::optional<absl::Status> second = absl::OkStatus();
  std::thread waiting([&] {
    std::vector<uint8_t> buf(16);
    second = Read(kGuestBase + 16, &buf);
  });
  channel_->Close();
  waiting.join();
  EXPECT_EQ(second, std::nullopt);

  answer.Notify();
  running.join();
  EXPECT_TRUE(first.has_value());  // an access already under way finishes
  std::vector<uint8_t> buf(16);
  EXPECT_EQ(Read(kGuestBase, &buf), std::nullopt);
  EXPECT_EQ(resume_calls(), 0);
  StopClient();
  EXPECT_EQ(client_->request_count(), 1u);
}

TEST_P(DmaChannelTest, ConcurrentAccessesRunOneAtATime) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 8;
  constexpr size_t kChunk = 256;
  constexpr size_t kLen = 3 * kChunk;  // three requests per access
  DmaChannel::Options options;
  options.max_chunk = kChunk;
  StartChannel(options);

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      const uint64_t iova = kGuestBase + static_cast<uint64_t>(t) * 0x1000;
      for (int round = 0; round < kRounds; ++round) {
        const std::vector<uint8_t> data =
            Pattern(kLen, static_cast<uint8_t>(t * 31 + round));
        std::optional<absl::Status> wrote = Write(iova, data);
        ASSERT_TRUE(wrote.has_value());
        ASSERT_TRUE(wrote->ok()) << *wrote;
        std::vector<uint8_t> buf(kLen);
        std::optional<absl::Status> read = Read(iova, &buf);
        ASSERT_TRUE(read.has_value());
        ASSERT_TRUE(read->ok()) << *read;
        EXPECT_EQ(buf, data) << "thread " << t << " round " << round;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(broken_calls(), 0);

  // The requests of one access arrive together, in order: no access
  // interleaved its chunks with another's.
  StopClient();
  std::vector<ClientRequest> reqs = client_->requests();
  ASSERT_EQ(reqs.size(), static_cast<size_t>(kThreads * kRounds * 2 * 3));
  for (size_t i = 0; i < reqs.size(); i += 3) {
    SCOPED_TRACE(i);
    for (size_t k = 1; k < 3; ++k) {
      EXPECT_EQ(reqs[i + k].header.cmd, reqs[i].header.cmd);
      EXPECT_EQ(reqs[i + k].address, reqs[i].address + k * kChunk);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    FdModes, DmaChannelTest, ::testing::Bool(),
    [](const ::testing::TestParamInfo<bool>& info) {
      return std::string(info.param ? "NonBlockingFd" : "BlockingFd");
    });

}  // namespace
}  // namespace vfio_user
