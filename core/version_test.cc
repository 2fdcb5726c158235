#include "core/version.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/errno_status.h"
#include "gtest/gtest.h"

namespace vfio_user {
namespace {

// Byte for byte what QEMU's caps_json() produces (PROTOCOL.md §4.3): QEMU's
// non-pretty JSON writer separates members with ", " and names with ": ".
constexpr char kQemuJson[] =
    "{\"capabilities\": {\"migration\": {\"pgsize\": 4096, "
    "\"max_bitmap_size\": 268435456}, \"max_msg_fds\": 16, "
    "\"max_data_xfer_size\": 1048576, \"pgsizes\": 4096, "
    "\"max_dma_maps\": 65535, \"write_multiple\": true}}";

VersionPayload Version(uint16_t major, uint16_t minor, std::string json) {
  VersionPayload v;
  v.major = major;
  v.minor = minor;
  v.json = std::move(json);
  return v;
}

size_t PayloadSize(const VersionPayload& v) { return EncodeVersion(v).size(); }

// A server policy resembling a real device server's.
ServerVersionPolicy TypicalPolicy() {
  ServerVersionPolicy policy;
  policy.own.max_msg_fds = 16;
  policy.own.max_data_xfer_size = 1 << 20;
  policy.own.write_multiple = true;
  policy.own.migration = Capabilities::Migration{4096, 0};
  return policy;
}

Capabilities ParseOrDie(const std::string& json) {
  absl::StatusOr<Capabilities> caps = ParseCapabilitiesJson(json);
  EXPECT_TRUE(caps.ok()) << json << ": " << caps.status();
  return caps.ok() ? *caps : Capabilities{};
}

void ExpectErrno(const absl::Status& status, int err,
                 const std::string& context) {
  EXPECT_FALSE(status.ok()) << context;
  EXPECT_EQ(ErrnoOf(status), err) << context << ": " << status;
}

// ---------------------------------------------------------------- Parsing

TEST(ParseCapabilitiesJsonTest, AbsentJsonAndCapabilitiesGiveDefaults) {
  for (const char* json : {"", "{}", "{\"other\":1}", " { } "}) {
    const Capabilities caps = ParseOrDie(json);
    EXPECT_EQ(caps, Capabilities{}) << json;
    EXPECT_EQ(caps.max_msg_fds, kDefaultMaxMsgFds);
    EXPECT_EQ(caps.max_data_xfer_size, kDefaultMaxDataXferSize);
    EXPECT_EQ(caps.max_dma_maps, kDefaultMaxDmaMaps);
    EXPECT_EQ(caps.pgsizes, kDefaultPgsizes);
    EXPECT_FALSE(caps.has_max_msg_fds);
  }
  EXPECT_EQ(ParseOrDie("{\"capabilities\":{}}"), Capabilities{});
}

TEST(ParseCapabilitiesJsonTest, ReadsQemuRequest) {
  const Capabilities caps = ParseOrDie(kQemuJson);
  EXPECT_EQ(caps.max_msg_fds, 16u);
  EXPECT_TRUE(caps.has_max_msg_fds);
  EXPECT_EQ(caps.max_data_xfer_size, 1048576u);
  EXPECT_EQ(caps.pgsizes, 4096u);
  EXPECT_EQ(caps.max_dma_maps, 65535u);
  EXPECT_TRUE(caps.write_multiple);
  EXPECT_FALSE(caps.twin_socket_supported);
  ASSERT_TRUE(caps.migration.has_value());
  EXPECT_EQ(caps.migration->pgsize, 4096u);
  EXPECT_EQ(caps.migration->max_bitmap_size, 268435456u);
}

TEST(ParseCapabilitiesJsonTest, IgnoresUnknownKeys) {
  const Capabilities caps = ParseOrDie(
      "{\"version\":\"x\",\"capabilities\":{\"spurious\":{\"a\":[1,2,null]},"
      "\"max_msg_fds\":4,\"twin_socket\":{\"supported\":true,\"extra\":\"y\"},"
      "\"migration\":{\"pgsize\":8192,\"flags\":7}}}");
  EXPECT_EQ(caps.max_msg_fds, 4u);
  EXPECT_TRUE(caps.twin_socket_supported);
  EXPECT_FALSE(caps.twin_socket_fd_index.has_value());
  ASSERT_TRUE(caps.migration.has_value());
  EXPECT_EQ(caps.migration->pgsize, 8192u);
  EXPECT_EQ(caps.migration->max_bitmap_size, 0u);
}

TEST(ParseCapabilitiesJsonTest, AcceptsIntegralNumbersInAnyNotation) {
  const Capabilities caps = ParseOrDie(
      "{\"capabilities\":{\"max_msg_fds\":4.0,\"max_dma_maps\":-0,"
      "\"max_data_xfer_size\":1e6,\"pgsizes\":18446744073709547520}}");
  EXPECT_EQ(caps.max_msg_fds, 4u);
  EXPECT_EQ(caps.max_dma_maps, 0u);
  EXPECT_EQ(caps.max_data_xfer_size, 1000000u);
  EXPECT_EQ(caps.pgsizes, 0xfffffffffffff000u);  // exactly a double
  EXPECT_EQ(ParseOrDie("{\"capabilities\":{\"max_msg_fds\":4294967295}}")
                .max_msg_fds,
            4294967295u);
}

TEST(ParseCapabilitiesJsonTest, RejectsMalformedJsonAndWrongTypes) {
  struct Case {
    std::string json;
    std::string key;  // expected in the error message ("" = parse error)
  };
  const std::vector<Case> cases = {
      {"{", ""},
      {"[]", ""},
      {"null", ""},
      {"17", ""},
      {"\"text\"", ""},
      {"{\"capabilities\":{}} trailing", ""},
      {"{\"capabilities\":{\"max_msg_fds\":1,\"max_msg_fds\":2}}", ""},
      {"{\"capabilities\":1}", "capabilities"},
      {"{\"capabilities\":null}", "capabilities"},
      {"{\"capabilities\":[]}", "capabilities"},
      {"{\"capabilities\":{\"max_msg_fds\":\"8\"}}", "max_msg_fds"},
      {"{\"capabilities\":{\"max_msg_fds\":true}}", "max_msg_fds"},
      {"{\"capabilities\":{\"max_msg_fds\":null}}", "max_msg_fds"},
      {"{\"capabilities\":{\"max_msg_fds\":-1}}", "max_msg_fds"},
      {"{\"capabilities\":{\"max_msg_fds\":1.5}}", "max_msg_fds"},
      {"{\"capabilities\":{\"max_msg_fds\":4294967296}}", "max_msg_fds"},
      {"{\"capabilities\":{\"max_data_xfer_size\":1e30}}",
       "max_data_xfer_size"},
      {"{\"capabilities\":{\"max_data_xfer_size\":18446744073709551616}}",
       "max_data_xfer_size"},
      {"{\"capabilities\":{\"max_dma_maps\":[1]}}", "max_dma_maps"},
      {"{\"capabilities\":{\"pgsizes\":-4096}}", "pgsizes"},
      {"{\"capabilities\":{\"pgsizes\":1e400}}", ""},
      {"{\"capabilities\":{\"write_multiple\":1}}", "write_multiple"},
      {"{\"capabilities\":{\"write_multiple\":\"true\"}}", "write_multiple"},
      {"{\"capabilities\":{\"twin_socket\":true}}", "twin_socket"},
      {"{\"capabilities\":{\"twin_socket\":{\"supported\":1}}}",
       "twin_socket.supported"},
      {"{\"capabilities\":{\"twin_socket\":{\"supported\":true,"
       "\"fd_index\":-1}}}",
       "twin_socket.fd_index"},
      {"{\"capabilities\":{\"twin_socket\":{\"supported\":true,"
       "\"fd_index\":0.5}}}",
       "twin_socket.fd_index"},
      {"{\"capabilities\":{\"migration\":[]}}", "migration"},
      {"{\"capabilities\":{\"migration\":{\"pgsize\":\"4096\"}}}",
       "migration.pgsize"},
      {"{\"capabilities\":{\"migration\":{\"max_bitmap_size\":2.5}}}",
       "migration.max_bitmap_size"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Capabilities> caps = ParseCapabilitiesJson(c.json);
    ExpectErrno(caps.status(), EINVAL, c.json);
    if (!c.key.empty()) {
      EXPECT_NE(caps.status().message().find(c.key), absl::string_view::npos)
          << caps.status();
    }
  }
}

// ------------------------------------------------------------- Formatting

TEST(FormatCapabilitiesJsonTest, IsCompactAndOrdered) {
  Capabilities caps;
  EXPECT_EQ(FormatCapabilitiesJson(caps),
            "{\"capabilities\":{\"max_msg_fds\":1,\"max_data_xfer_size\":"
            "1048576,\"pgsizes\":4096,\"max_dma_maps\":65535}}");
  caps.max_msg_fds = 16;
  caps.write_multiple = true;
  caps.twin_socket_supported = true;
  caps.twin_socket_fd_index = 0;
  caps.migration = Capabilities::Migration{4096, 268435456};
  EXPECT_EQ(FormatCapabilitiesJson(caps),
            "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":"
            "1048576,\"pgsizes\":4096,\"max_dma_maps\":65535,\"twin_socket\":"
            "{\"supported\":true,\"fd_index\":0},\"write_multiple\":true,"
            "\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":268435456}}}");
}

TEST(FormatCapabilitiesJsonTest, RoundTripsThroughParse) {
  const std::vector<uint32_t> fd_counts = {0, 1, 16, 1024, 4294967295u};
  const std::vector<uint64_t> sizes = {0, 512, 1 << 20, uint64_t{1} << 53};
  const std::vector<uint64_t> pgsizes = {4096, 4096 | (1 << 21),
                                         0xfffffffffffff000u};
  struct Twin {
    bool supported;
    std::optional<uint32_t> fd_index;
  };
  const std::vector<Twin> twins = {
      {false, std::nullopt}, {true, std::nullopt}, {true, 0u}, {false, 3u}};
  const std::vector<std::optional<Capabilities::Migration>> migrations = {
      std::nullopt, Capabilities::Migration{4096, 0},
      Capabilities::Migration{65536, 268435456}};
  int combinations = 0;
  for (uint32_t fds : fd_counts) {
    for (uint64_t size : sizes) {
      for (uint64_t pg : pgsizes) {
        for (const Twin& twin : twins) {
          for (const auto& migration : migrations) {
            for (bool write_multiple : {false, true}) {
              Capabilities caps;
              caps.max_msg_fds = fds;
              caps.max_data_xfer_size = size;
              caps.max_dma_maps = size;
              caps.pgsizes = pg;
              caps.twin_socket_supported = twin.supported;
              caps.twin_socket_fd_index = twin.fd_index;
              caps.migration = migration;
              caps.write_multiple = write_multiple;
              caps.has_max_msg_fds = true;  // Format always writes it
              const std::string json = FormatCapabilitiesJson(caps);
              EXPECT_EQ(ParseOrDie(json), caps) << json;
              EXPECT_EQ(json.find(' '), std::string::npos) << json;
              ++combinations;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(combinations, 5 * 4 * 3 * 4 * 3 * 2);
}

// ------------------------------------------------------------ Server side

TEST(ServerNegotiateTest, AnswersQemuWithinItsReceiveBuffer) {
  const VersionPayload request = Version(0, 0, kQemuJson);
  const Bytes request_bytes = EncodeVersion(request);
  absl::StatusOr<VersionPayload> decoded = DecodeVersion(request_bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status();

  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(*decoded, request_bytes.size(), TypicalPolicy());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->minor, 0);
  EXPECT_EQ(n->reply.major, 0);
  EXPECT_EQ(n->reply.minor, 0);
  EXPECT_LE(PayloadSize(n->reply), request_bytes.size());
  EXPECT_FALSE(n->twin_local.valid());
  EXPECT_FALSE(n->twin_remote.valid());

  // QEMU's view of the reply: parseable JSON, explicit max_msg_fds, and
  // every key of our policy (it all fits in ~200 bytes).
  const Capabilities seen = ParseOrDie(n->reply.json);
  EXPECT_TRUE(seen.has_max_msg_fds);
  EXPECT_EQ(seen.max_msg_fds, 16u);
  EXPECT_TRUE(seen.write_multiple);
  ASSERT_TRUE(seen.migration.has_value());  // QEMU sent migration; we have it
  EXPECT_EQ(seen.migration->pgsize, 4096u);
  EXPECT_EQ(seen, n->own);

  // The client's limits, as QEMU stated them.
  EXPECT_EQ(n->peer.max_msg_fds, 16u);
  EXPECT_EQ(n->peer.max_data_xfer_size, 1048576u);
  EXPECT_TRUE(n->peer.write_multiple);

  // And our own client code accepts it as QEMU would.
  Capabilities qemu_offer = ParseOrDie(kQemuJson);
  absl::StatusOr<ClientNegotiation> client =
      ClientValidateReply(request, qemu_offer, n->reply, 0);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->minor, 0);
  EXPECT_FALSE(client->twin_socket);
}

TEST(ServerNegotiateTest, AgreesOnTheLowerMinor) {
  // Our own client at 0.2 talking to servers at 0.2 and 0.1.
  Capabilities offer;
  offer.max_msg_fds = 8;
  const VersionPayload request =
      Version(0, 2, FormatCapabilitiesJson(offer));
  ServerVersionPolicy policy = TypicalPolicy();
  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(request, PayloadSize(request), policy);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->minor, 2);
  EXPECT_EQ(n->reply.minor, 2);
  EXPECT_EQ(n->peer.max_msg_fds, 8u);
  EXPECT_FALSE(n->own.migration.has_value());  // client did not send it
  EXPECT_EQ(n->reply.json.find("migration"), std::string::npos);

  policy.minor = 1;
  n = ServerNegotiate(request, PayloadSize(request), policy);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->minor, 1);
  EXPECT_EQ(n->reply.minor, 1);
}

TEST(ServerNegotiateTest, RejectsAnotherMajor) {
  const VersionPayload request = Version(1, 0, "{}");
  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(request, PayloadSize(request), TypicalPolicy());
  ExpectErrno(n.status(), ENOTSUP, "major 1");
}

TEST(ServerNegotiateTest, RejectsBadClientJson) {
  for (const char* json :
       {"{not json", "[1]", "{\"capabilities\":{\"max_msg_fds\":-1}}",
        "{\"capabilities\":{\"max_msg_fds\":1.5}}",
        "{\"capabilities\":{\"max_data_xfer_size\":1e30}}",
        "{\"capabilities\":{\"twin_socket\":{\"supported\":\"yes\"}}}"}) {
    const VersionPayload request = Version(0, 0, json);
    ExpectErrno(
        ServerNegotiate(request, PayloadSize(request), TypicalPolicy())
            .status(),
        EINVAL, json);
  }
}

TEST(ServerNegotiateTest, RejectsClientLimitsOutOfBounds) {
  for (const char* json :
       {"{\"capabilities\":{\"max_msg_fds\":1025}}",
        "{\"capabilities\":{\"max_data_xfer_size\":511}}",
        "{\"capabilities\":{\"max_data_xfer_size\":67108865}}",
        "{\"capabilities\":{\"migration\":{\"pgsize\":1000}}}",
        "{\"capabilities\":{\"migration\":{\"pgsize\":0}}}",
        "{\"capabilities\":{\"migration\":{\"max_bitmap_size\":268435457}}}"}) {
    const VersionPayload request = Version(0, 0, json);
    ExpectErrno(
        ServerNegotiate(request, PayloadSize(request), TypicalPolicy())
            .status(),
        EINVAL, json);
  }
  // A client's pgsizes / max_dma_maps describe nothing we use: not checked.
  const VersionPayload request = Version(
      0, 0, "{\"capabilities\":{\"pgsizes\":0,\"max_dma_maps\":0}}");
  EXPECT_TRUE(
      ServerNegotiate(request, PayloadSize(request), TypicalPolicy()).ok());
}

TEST(ServerNegotiateTest, ClientWithoutCapabilitiesGetsSpecDefaults) {
  for (const char* json : {"{}", "{\"capabilities\":{}}"}) {
    const VersionPayload request = Version(0, 0, json);
    absl::StatusOr<ServerNegotiation> n =
        ServerNegotiate(request, PayloadSize(request), TypicalPolicy());
    ASSERT_TRUE(n.ok()) << n.status();
    Capabilities defaults;
    EXPECT_EQ(n->peer, defaults);
    EXPECT_EQ(n->peer.max_msg_fds, 1u);  // spec default for the client
  }
}

TEST(ServerNegotiateTest, RequestWithoutJsonGetsTheFullReply) {
  // Not QEMU (which always sends JSON): no size cap applies, as with lvu.
  const VersionPayload request = Version(0, 0, "");
  ASSERT_EQ(PayloadSize(request), 4u);
  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(request, 4, TypicalPolicy());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->peer, Capabilities{});
  Capabilities expected = TypicalPolicy().own;
  expected.migration.reset();  // not echoed: the client did not send it
  expected.has_max_msg_fds = true;
  EXPECT_EQ(n->own, expected);
  EXPECT_EQ(n->reply.json, FormatCapabilitiesJson(expected));
}

TEST(ServerNegotiateTest, ShrinksTheReplyToEveryRequestSize) {
  ServerVersionPolicy policy = TypicalPolicy();
  policy.own.max_data_xfer_size = 4 << 20;
  policy.own.max_dma_maps = 1000;
  policy.own.pgsizes = 4096 | (1 << 21);
  policy.own.migration = Capabilities::Migration{4096, 268435456};
  const std::string max_msg_fds_only = "{\"capabilities\":{\"max_msg_fds\":16}}";
  bool saw_full = false;
  bool saw_empty = false;
  // Requests of every JSON length from the smallest possible (`{}`) to more
  // than the full reply needs, padded with whitespace. From the length where
  // it fits on, the request offers migration, so the reply wants every key
  // (but twin_socket, whose offer lifts the size cap: see the next test).
  const std::string offer = "{\"capabilities\":{\"migration\":{}}}";
  for (size_t length = 2; length < 300; ++length) {
    const std::string json =
        length >= offer.size()
            ? offer + std::string(length - offer.size(), ' ')
            : "{" + std::string(length - 2, ' ') + "}";
    const VersionPayload request = Version(0, 0, json);
    const size_t request_size = PayloadSize(request);
    absl::StatusOr<ServerNegotiation> n =
        ServerNegotiate(request, request_size, policy);
    ASSERT_TRUE(n.ok()) << json << ": " << n.status();
    EXPECT_LE(PayloadSize(n->reply), request_size) << json;
    // What the client will understand is exactly what `own` says.
    EXPECT_EQ(ParseOrDie(n->reply.json), n->own) << n->reply.json;
    // max_msg_fds goes first and stays as long as it fits.
    if (request_size >= 5 + max_msg_fds_only.size()) {
      EXPECT_TRUE(n->own.has_max_msg_fds) << n->reply.json;
      EXPECT_EQ(n->own.max_msg_fds, 16u);
    }
    saw_empty |= n->reply.json == "{}";
    saw_full |= n->own.migration.has_value() && n->own.write_multiple &&
                n->own.max_dma_maps == 1000;
  }
  EXPECT_TRUE(saw_empty);
  EXPECT_TRUE(saw_full);
}

TEST(ServerNegotiateTest, TinyRequestOfferingTwinSocketGetsTheFullReply) {
  // Not QEMU (which never offers twin_socket): the size cap does not apply,
  // else a compact offer could never be accepted.
  const VersionPayload request =
      Version(0, 0, "{\"capabilities\":{\"twin_socket\":{\"supported\":true}}}");
  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(request, PayloadSize(request), TypicalPolicy());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_GT(PayloadSize(n->reply), PayloadSize(request));
  EXPECT_TRUE(n->own.twin_socket_supported);
  EXPECT_TRUE(n->own.has_max_msg_fds);
  EXPECT_TRUE(n->own.write_multiple);
  EXPECT_TRUE(n->twin_local.valid());
  EXPECT_TRUE(n->twin_remote.valid());
  EXPECT_EQ(ParseOrDie(n->reply.json), n->own);
}

TEST(ServerNegotiateTest, AcceptsTwinSocketWithAWorkingSocketPair) {
  Capabilities offer;
  offer.twin_socket_supported = true;
  const VersionPayload request = Version(0, 2, FormatCapabilitiesJson(offer));
  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(request, PayloadSize(request), TypicalPolicy());
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_TRUE(n->twin_local.valid());
  ASSERT_TRUE(n->twin_remote.valid());
  EXPECT_TRUE(n->own.twin_socket_supported);
  EXPECT_EQ(n->own.twin_socket_fd_index, std::optional<uint32_t>(0));
  EXPECT_NE(n->reply.json.find(
                "\"twin_socket\":{\"supported\":true,\"fd_index\":0}"),
            std::string::npos)
      << n->reply.json;

  absl::StatusOr<ClientNegotiation> client =
      ClientValidateReply(request, offer, n->reply, 1);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(client->twin_socket);

  // Both directions carry bytes.
  char byte = 'a';
  ASSERT_EQ(::write(n->twin_remote.get(), &byte, 1), 1);
  ASSERT_EQ(::read(n->twin_local.get(), &byte, 1), 1);
  EXPECT_EQ(byte, 'a');
  byte = 'b';
  ASSERT_EQ(::write(n->twin_local.get(), &byte, 1), 1);
  ASSERT_EQ(::read(n->twin_remote.get(), &byte, 1), 1);
  EXPECT_EQ(byte, 'b');
  int type = 0;
  socklen_t len = sizeof(type);
  ASSERT_EQ(::getsockopt(n->twin_local.get(), SOL_SOCKET, SO_TYPE, &type, &len),
            0);
  EXPECT_EQ(type, SOCK_STREAM);
}

TEST(ServerNegotiateTest, DeclinesTwinSocketWhenItCannotBeUsed) {
  struct Case {
    const char* json;
    bool policy_offers;
  };
  for (const Case& c : {
           // The client cannot receive the fd.
           Case{"{\"capabilities\":{\"max_msg_fds\":0,"
                "\"twin_socket\":{\"supported\":true}}}",
                true},
           // The client did not ask.
           Case{"{\"capabilities\":{\"twin_socket\":{\"supported\":false}}}",
                true},
           // We do not offer it.
           Case{"{\"capabilities\":{\"twin_socket\":{\"supported\":true}}}",
                false},
       }) {
    ServerVersionPolicy policy = TypicalPolicy();
    policy.offer_twin_socket = c.policy_offers;
    const VersionPayload request = Version(0, 0, c.json);
    absl::StatusOr<ServerNegotiation> n =
        ServerNegotiate(request, PayloadSize(request), policy);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_FALSE(n->twin_local.valid()) << c.json;
    EXPECT_FALSE(n->twin_remote.valid()) << c.json;
    EXPECT_FALSE(n->own.twin_socket_supported) << c.json;
    EXPECT_EQ(n->reply.json.find("twin_socket"), std::string::npos);
  }
}

TEST(ServerNegotiateTest, EchoesMigrationOnlyWhenBothSidesHaveIt) {
  const VersionPayload with_migration = Version(0, 0, kQemuJson);
  ServerVersionPolicy policy = TypicalPolicy();
  policy.own.migration.reset();
  absl::StatusOr<ServerNegotiation> n = ServerNegotiate(
      with_migration, PayloadSize(with_migration), policy);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_FALSE(n->own.migration.has_value());
  EXPECT_EQ(n->reply.json.find("migration"), std::string::npos);
  EXPECT_TRUE(n->peer.migration.has_value());
}

// ------------------------------------------------------------ Client side

struct ClientReplyCase {
  const char* name;
  VersionPayload reply;
  size_t fd_count;
  int expected_errno;  // 0 = accepted
};

TEST(ClientValidateReplyTest, AcceptsGoodRepliesAndRejectsBadOnes) {
  const VersionPayload proposed = Version(0, 2, "");
  Capabilities offered;
  offered.twin_socket_supported = true;
  const std::vector<ClientReplyCase> cases = {
      {"defaults", Version(0, 2, ""), 0, 0},
      {"lower minor", Version(0, 0, "{}"), 0, 0},
      {"minor too high", Version(0, 3, "{}"), 0, EINVAL},
      {"other major", Version(1, 2, "{}"), 0, ENOTSUP},
      {"bad json", Version(0, 2, "{\"capabilities\":"), 0, EINVAL},
      {"twin ok",
       Version(0, 2,
               "{\"capabilities\":{\"twin_socket\":{\"supported\":true,"
               "\"fd_index\":1}}}"),
       2, 0},
      {"twin without fd_index",
       Version(0, 2, "{\"capabilities\":{\"twin_socket\":{\"supported\":true}}}"),
       1, EINVAL},
      {"twin fd_index out of range",
       Version(0, 2,
               "{\"capabilities\":{\"twin_socket\":{\"supported\":true,"
               "\"fd_index\":1}}}"),
       1, EINVAL},
      {"twin without fds",
       Version(0, 2,
               "{\"capabilities\":{\"twin_socket\":{\"supported\":true,"
               "\"fd_index\":0}}}"),
       0, EINVAL},
      {"twin declined",
       Version(0, 2,
               "{\"capabilities\":{\"twin_socket\":{\"supported\":false,"
               "\"fd_index\":0}}}"),
       0, 0},
      {"pgsizes 0", Version(0, 2, "{\"capabilities\":{\"pgsizes\":0}}"), 0,
       EINVAL},
      {"pgsizes below 4096",
       Version(0, 2, "{\"capabilities\":{\"pgsizes\":6144}}"), 0, EINVAL},
      {"pgsizes 512 only",
       Version(0, 2, "{\"capabilities\":{\"pgsizes\":512}}"), 0, EINVAL},
      {"pgsizes 4K|2M",
       Version(0, 2, "{\"capabilities\":{\"pgsizes\":2101248}}"), 0, 0},
      {"max_msg_fds 5000",
       Version(0, 2, "{\"capabilities\":{\"max_msg_fds\":5000}}"), 0, EINVAL},
      {"max_msg_fds 1024",
       Version(0, 2, "{\"capabilities\":{\"max_msg_fds\":1024}}"), 0, 0},
      {"max_data_xfer_size 100",
       Version(0, 2, "{\"capabilities\":{\"max_data_xfer_size\":100}}"), 0,
       EINVAL},
      {"max_data_xfer_size 128 MiB",
       Version(0, 2, "{\"capabilities\":{\"max_data_xfer_size\":134217728}}"),
       0, EINVAL},
      {"max_dma_maps 0",
       Version(0, 2, "{\"capabilities\":{\"max_dma_maps\":0}}"), 0, EINVAL},
      {"migration pgsize 4095",
       Version(0, 2, "{\"capabilities\":{\"migration\":{\"pgsize\":4095}}}"),
       0, EINVAL},
  };
  for (const ClientReplyCase& c : cases) {
    absl::StatusOr<ClientNegotiation> result =
        ClientValidateReply(proposed, offered, c.reply, c.fd_count);
    if (c.expected_errno == 0) {
      EXPECT_TRUE(result.ok()) << c.name << ": " << result.status();
    } else {
      ExpectErrno(result.status(), c.expected_errno, c.name);
    }
  }
}

TEST(ClientValidateReplyTest, RejectsTwinSocketThatWasNotOffered) {
  const VersionPayload proposed = Version(0, 0, "{}");
  const VersionPayload reply = Version(
      0, 0,
      "{\"capabilities\":{\"twin_socket\":{\"supported\":true,"
      "\"fd_index\":0}}}");
  ExpectErrno(ClientValidateReply(proposed, Capabilities{}, reply, 1).status(),
              EINVAL, "not offered");
}

TEST(ClientValidateReplyTest, ServerWithoutMaxMsgFdsGetsTheSpecDefault) {
  const VersionPayload proposed = Version(0, 0, kQemuJson);
  const VersionPayload reply =
      Version(0, 0, "{\"capabilities\":{\"max_data_xfer_size\":65536}}");
  absl::StatusOr<ClientNegotiation> result =
      ClientValidateReply(proposed, ParseOrDie(kQemuJson), reply, 0);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->peer.max_msg_fds, 1u);
  EXPECT_FALSE(result->peer.has_max_msg_fds);
  EXPECT_EQ(result->peer.max_data_xfer_size, 65536u);
  EXPECT_FALSE(result->twin_socket);
}

}  // namespace
}  // namespace vfio_user
