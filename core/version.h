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
//
// Thread-safety: every function is reentrant and touches no shared state
// (ServerNegotiate only creates a socketpair).
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

  friend bool operator==(const Migration& a, const Migration& b) {
    return a.pgsize == b.pgsize && a.max_bitmap_size == b.max_bitmap_size;
  }
  friend bool operator==(const Capabilities& a, const Capabilities& b) {
    return a.max_msg_fds == b.max_msg_fds &&
           a.max_data_xfer_size == b.max_data_xfer_size &&
           a.max_dma_maps == b.max_dma_maps && a.pgsizes == b.pgsizes &&
           a.write_multiple == b.write_multiple &&
           a.twin_socket_supported == b.twin_socket_supported &&
           a.twin_socket_fd_index == b.twin_socket_fd_index &&
           a.migration == b.migration &&
           a.has_max_msg_fds == b.has_max_msg_fds;
  }
  friend bool operator!=(const Capabilities& a, const Capabilities& b) {
    return !(a == b);
  }
};

// Bounds a side applies to the limits its PEER advertises (both the server
// checking a request and the client checking a reply). A value outside them
// fails the handshake with EINVAL: the peer is broken or hostile.
//   max_msg_fds        <= 1024 (lvu's bound; QEMU's is 16, we are laxer).
//   max_data_xfer_size in [512, 64 MiB]: 64 MiB is QEMU's bound; below 512
//                      bytes config-space and multi-register accesses would
//                      be split absurdly (the spec sets no minimum).
//   migration          pgsize a non-zero multiple of 4096, max_bitmap_size
//                      <= 256 MiB (QEMU's checks).
// Checked on the server's reply only (they describe the server's DMA
// mapping; a client's values carry no meaning and are not checked):
//   pgsizes            has a bit >= 4096 and none below 4096 (QEMU's check).
//   max_dma_maps       >= 1.
inline constexpr uint32_t kMaxPeerMsgFds = 1024;
inline constexpr uint64_t kMinPeerMaxDataXferSize = 512;
inline constexpr uint64_t kMaxPeerMaxDataXferSize = uint64_t{64} << 20;
inline constexpr uint64_t kMinPageSize = 4096;
inline constexpr uint64_t kMaxPeerMigrationBitmapSize = uint64_t{256} << 20;

// Parses `{"capabilities": {...}}` with protobuf's JSON parser (into a
// google.protobuf.Struct). Empty input, `{}` and a missing "capabilities"
// object yield the defaults; unknown keys are ignored. EINVAL (naming the
// key) for JSON that does not parse, a top level that is not an object, a
// known key of the wrong type, or a number that is not a non-negative integer
// fitting its field (1.5, -1, 1e30, 4294967296 for max_msg_fds). JSON numbers
// are doubles: integers above 2^53 are read as their nearest double. The
// peer bounds above (kMaxPeerMsgFds, ...) are NOT enforced here; they are
// applied by ServerNegotiate and ClientValidateReply.
absl::StatusOr<Capabilities> ParseCapabilitiesJson(const std::string& json);

// Compact JSON for `caps`, keys in a fixed order: max_msg_fds,
// max_data_xfer_size, pgsizes, max_dma_maps (always written, so that QEMU
// does not assume 8 fds), then twin_socket (when supported or fd_index is
// set), write_multiple (when true), migration (when set; max_bitmap_size
// only when non-zero). ParseCapabilitiesJson(FormatCapabilitiesJson(c))
// equals c with has_max_msg_fds set. ServerNegotiate leaves out keys on its
// own to stay within the client's reply-size limit.
std::string FormatCapabilitiesJson(const Capabilities& caps);

// What a server is willing to do; fed to ServerNegotiate.
struct ServerVersionPolicy {
  uint16_t major = kProtocolMajor;
  uint16_t minor = kProtocolMinor;
  // Our receive limits. Its twin_socket fields are ignored (see
  // offer_twin_socket); its migration is echoed only to a client that sent
  // the legacy `migration` key.
  Capabilities own;
  bool offer_twin_socket = true;  // accept a client's twin_socket offer
};

// The result of a successful server-side negotiation.
struct ServerNegotiation {
  VersionPayload reply;        // to send back (JSON fits the client's limit)
  Capabilities peer;           // client's limits: respect when sending
  // Our limits as the client will understand them: exactly what
  // ParseCapabilitiesJson(reply.json) yields, i.e. spec defaults for any key
  // left out to fit the reply-size limit. Enforce these (not policy.own)
  // when receiving. own.twin_socket_supported tells whether the twin socket
  // was accepted.
  Capabilities own;
  uint16_t minor = 0;          // agreed minor
  // When the client offered twin_socket and we accepted: our end of the
  // socketpair, and the end to attach to the reply (fd_index 0). Both
  // invalid otherwise. Both are SOCK_STREAM, close-on-exec.
  UniqueFd twin_local;
  UniqueFd twin_remote;
};

// Server side: validates the client's VERSION request (major must equal
// ours, JSON must parse, limits within the peer bounds above; no fds
// attached — checked by the caller), picks minor = min, and builds a reply.
//
// Reply size: QEMU receives the reply into a buffer the size of its request,
// so for any request that could be QEMU's the reply payload (4 + JSON + NUL)
// is kept <= `request_payload_size` by leaving out keys, least important
// first: migration, write_multiple, max_dma_maps, pgsizes,
// max_data_xfer_size, max_msg_fds (kept longest: QEMU assumes 8 without it).
// A key that does not fit is skipped and a later, shorter one may still fit.
// The smallest reply is `{}` (7 bytes, never longer than a request carrying
// JSON). A request that cannot be QEMU's gets our full JSON regardless of
// size, since leaving keys out would make the client assume the defaults:
//   - a request WITHOUT JSON (QEMU always sends JSON; lvu also replies in
//     full to such a request);
//   - a request offering twin_socket (QEMU never does; accepting it makes
//     the reply longer than a compact offer, so a cap would always decline
//     it). Our client reads replies of any size.
// `request_payload_size` is the payload size as received (the caller
// decoded `request` from it).
//
// Twin socket (§4.2): accepted when the client offered
// {"supported":true}, policy.offer_twin_socket is set, the client can
// receive an fd (max_msg_fds >= 1), the key fits in the reply, and
// socketpair() succeeds (if it fails the offer is declined, not the
// handshake).
//
// Errors mean: send an error reply carrying ErrnoOf(status), then close.
// ENOTSUP: unsupported major. EINVAL: bad JSON, wrong types, limits out of
// bounds.
absl::StatusOr<ServerNegotiation> ServerNegotiate(
    const VersionPayload& request, size_t request_payload_size,
    const ServerVersionPolicy& policy);

// The result of a successful client-side validation.
struct ClientNegotiation {
  Capabilities peer;  // server's limits: respect when sending
  uint16_t minor = 0;
  bool twin_socket = false;  // server accepted twin_socket (fd_index valid)
};

// Client side: checks the server's reply: same major (else ENOTSUP), minor
// <= proposed, JSON parses (an absent JSON means all defaults), limits
// within the peer bounds above, and twin_socket consistent with what we
// `offered` and with the number of fds attached (`reply_fd_count`):
// "supported":true requires that we offered it and an fd_index <
// reply_fd_count; "supported" false or absent means no twin socket (any
// fds attached are then the caller's to close). A server that omits
// max_msg_fds is taken at the spec default, 1 (QEMU would assume 8);
// peer.has_max_msg_fds tells the caller it was absent.
// Any error (EINVAL / ENOTSUP) means: close the connection.
absl::StatusOr<ClientNegotiation> ClientValidateReply(
    const VersionPayload& proposed, const Capabilities& offered,
    const VersionPayload& reply, size_t reply_fd_count);

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_VERSION_H_
