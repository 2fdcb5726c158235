// VERSION negotiation: the capability JSON and the combination rules.
//
// PROTOCOL.md §4. The client sends {major, minor, JSON} first; the server
// replies with the same major, minor = min(client, own), and its own
// capabilities. Each side then respects the PEER's limits when sending and
// enforces its OWN limits when receiving (§4.1). JSON is parsed with
// protobuf's JSON utilities (google.protobuf.Struct), never by hand; unknown
// keys are ignored, wrong types are EINVAL.
//
// Interop (§4.3): QEMU proposes 0.0, caps the reply size at the size of its
// own request and needs JSON in the reply; it assumes max_msg_fds = 8 when
// the server omits it. Some peers send `max_msg_fds` / legacy `migration`.
#ifndef VFIO_USER_CORE_VERSION_H_
#define VFIO_USER_CORE_VERSION_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/codec.h"
#include "core/unique_fd.h"

namespace vfio_user {

// One side's capabilities, with spec defaults for absent keys.
struct Capabilities {
  uint32_t max_msg_fds = kDefaultMaxMsgFds;
  uint64_t max_data_xfer_size = kDefaultMaxDataXferSize;
  uint64_t max_dma_maps = kDefaultMaxDmaMaps;
  uint64_t pgsizes = kDefaultPgsizes;
  bool write_multiple = false;
  bool twin_socket_supported = false;
  std::optional<uint32_t> twin_socket_fd_index;  // reply only
  struct Migration {
    uint64_t pgsize = 4096;
    uint64_t max_bitmap_size = 0;  // 0 = absent
  };
  std::optional<Migration> migration;  // legacy key, exchanged by QEMU and lvu

  // Which keys were present in the parsed JSON (so callers can apply
  // peer-specific defaults, e.g. QEMU's max_msg_fds = 8).
  bool has_max_msg_fds = false;
};

// Parses `{"capabilities": {...}}`. Empty input, `{}` and a missing
// "capabilities" object yield the defaults. Numbers must be non-negative
// integers within the field's range; max_msg_fds <= 1024, max_data_xfer_size
// in [4096, 64 MiB] is NOT enforced here (policy lives in Negotiate*).
absl::StatusOr<Capabilities> ParseCapabilitiesJson(const std::string& json);

// Compact JSON for `caps` (keys in a stable order). `include_*` let a
// side leave out keys to stay within a peer's reply-size limit.
std::string FormatCapabilitiesJson(const Capabilities& caps);

// What a server is willing to do; fed to ServerNegotiate.
struct ServerVersionPolicy {
  uint16_t major = kProtocolMajor;
  uint16_t minor = kProtocolMinor;
  Capabilities own;            // our receive limits
  bool offer_twin_socket = true;  // accept a client's twin_socket offer
};

// The result of a successful server-side negotiation.
struct ServerNegotiation {
  VersionPayload reply;        // to send back (JSON fits the client's limit)
  Capabilities peer;           // client's limits: respect when sending
  Capabilities own;            // our limits as advertised
  uint16_t minor = 0;          // agreed minor
  // When the client offered twin_socket and we accepted: our end of the
  // socketpair, and the end to attach to the reply (fd_index 0).
  UniqueFd twin_local;
  UniqueFd twin_remote;
};

// Server side: validates the client's VERSION request (major must equal
// ours, JSON must parse, no fds attached — checked by the caller), picks
// minor = min, and builds a reply whose whole payload is no longer than the
// request payload (QEMU's rule) by dropping optional keys if needed.
// Errors (EINVAL / ENOTSUP) mean: send an error reply, then close.
absl::StatusOr<ServerNegotiation> ServerNegotiate(
    const VersionPayload& request, size_t request_payload_size,
    const ServerVersionPolicy& policy);

// The result of a successful client-side validation.
struct ClientNegotiation {
  Capabilities peer;  // server's limits: respect when sending
  uint16_t minor = 0;
  bool twin_socket = false;  // server accepted twin_socket (fd_index valid)
};

// Client side: checks the server's reply: same major, minor <= proposed,
// JSON parses, twin_socket consistent with what was offered and with the
// number of fds attached (`reply_fd_count`), limits sane (max_msg_fds <= 1024,
// max_data_xfer_size >= 1, pgsizes has a bit >= 4096).
absl::StatusOr<ClientNegotiation> ClientValidateReply(
    const VersionPayload& proposed, const Capabilities& offered,
    const VersionPayload& reply, size_t reply_fd_count);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_VERSION_H_
