// libFuzzer target for VERSION negotiation (core/version.h).
//
// The input is used three ways:
//   1. as capability JSON text: ParseCapabilitiesJson must not crash, and
//      whatever it accepts must survive Format -> Parse unchanged;
//   2. as a VERSION request payload: DecodeVersion, then ServerNegotiate;
//      a successful negotiation must produce a reply that honours QEMU's
//      size rule, announces exactly what `own` says, owns a twin socket iff
//      it announces one, and is accepted by our own ClientValidateReply;
//   3. as a VERSION reply payload fed to ClientValidateReply (first byte
//      also picks the number of attached fds).
// An invariant violation aborts (a crash for the fuzzer).
//
// Build (from the repository root; needs protobuf and Abseil):
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I. \
//     tests/fuzz/version_fuzzer.cc core/version.cc core/codec.cc \
//     core/errno_status.cc -o /tmp/version_fuzzer \
//     $(pkg-config --cflags --libs protobuf absl_status absl_statusor \
//       absl_strings absl_str_format) -pthread
//   /tmp/version_fuzzer -max_total_time=60

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/codec.h"
#include "core/version.h"

namespace vfio_user {
namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "version_fuzzer invariant violated: %s\n", what);
    std::abort();
  }
}

void FuzzParse(const std::string& json) {
  absl::StatusOr<Capabilities> caps = ParseCapabilitiesJson(json);
  if (!caps.ok()) return;
  Capabilities expected = *caps;
  expected.has_max_msg_fds = true;  // Format always writes it
  absl::StatusOr<Capabilities> again =
      ParseCapabilitiesJson(FormatCapabilitiesJson(*caps));
  Check(again.ok(), "formatted capabilities do not parse");
  Check(*again == expected, "Format -> Parse changed the capabilities");
}

ServerVersionPolicy FuzzPolicy() {
  ServerVersionPolicy policy;
  policy.own.max_msg_fds = 16;
  policy.own.max_data_xfer_size = 1 << 20;
  policy.own.pgsizes = 4096 | (1 << 21);
  policy.own.write_multiple = true;
  policy.own.migration = Capabilities::Migration{4096, 268435456};
  return policy;
}

void FuzzServer(ByteSpan payload) {
  absl::StatusOr<VersionPayload> request = DecodeVersion(payload);
  if (!request.ok()) return;
  static const ServerVersionPolicy policy = FuzzPolicy();
  absl::StatusOr<ServerNegotiation> n =
      ServerNegotiate(*request, payload.size(), policy);
  if (!n.ok()) return;
  const size_t reply_size = EncodeVersion(n->reply).size();
  if (!request->json.empty() && !n->peer.twin_socket_supported) {
    Check(reply_size <= payload.size(), "reply longer than the request");
  }
  absl::StatusOr<Capabilities> announced = ParseCapabilitiesJson(n->reply.json);
  Check(announced.ok(), "reply JSON does not parse");
  Check(*announced == n->own, "reply JSON differs from `own`");
  Check(n->twin_local.valid() == n->own.twin_socket_supported &&
            n->twin_remote.valid() == n->own.twin_socket_supported,
        "twin socket fds do not match the reply");
  Check(n->minor <= request->minor && n->minor <= policy.minor,
        "agreed minor above a proposal");
  absl::StatusOr<ClientNegotiation> client = ClientValidateReply(
      *request, n->peer, n->reply, n->twin_remote.valid() ? 1 : 0);
  Check(client.ok(), "our client rejects our server's reply");
  Check(client->twin_socket == n->own.twin_socket_supported,
        "client and server disagree on the twin socket");
}

void FuzzClient(ByteSpan payload) {
  absl::StatusOr<VersionPayload> reply = DecodeVersion(payload);
  if (!reply.ok()) return;
  VersionPayload proposed;  // 0.2, contents irrelevant here
  Capabilities offered;
  offered.twin_socket_supported = true;
  const size_t fd_count = payload.empty() ? 0 : payload[0] % 3;
  absl::StatusOr<ClientNegotiation> result =
      ClientValidateReply(proposed, offered, *reply, fd_count);
  if (!result.ok()) return;
  Check(result->minor <= proposed.minor, "accepted a higher minor");
  if (result->twin_socket) {
    Check(result->peer.twin_socket_fd_index.has_value() &&
              *result->peer.twin_socket_fd_index < fd_count,
          "accepted a twin socket without a valid fd_index");
  }
}

}  // namespace
}  // namespace vfio_user

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const vfio_user::ByteSpan payload(data, size);
  vfio_user::FuzzParse(std::string(reinterpret_cast<const char*>(data), size));
  vfio_user::FuzzServer(payload);
  vfio_user::FuzzClient(payload);
  return 0;
}
