#include "core/version.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/errno_status.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace vfio_user {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

// ---- Parsing: JSON text -> google.protobuf.Struct -> Capabilities ----

absl::Status InvalidKey(absl::string_view parent, absl::string_view key,
                        absl::string_view problem) {
  return ErrnoError(EINVAL, absl::StrCat("VERSION capability \"", parent,
                                         parent.empty() ? "" : ".", key,
                                         "\" ", problem));
}

const Value* FindKey(const Struct& object, const std::string& key) {
  const auto it = object.fields().find(key);
  return it == object.fields().end() ? nullptr : &it->second;
}

// Reads `parent.key` as an unsigned integer of type T into *out. Leaves *out
// (and *present) untouched when the key is absent.
template <typename T>
absl::Status ReadUnsigned(const Struct& object, absl::string_view parent,
                          const std::string& key, T* out,
                          bool* present = nullptr) {
  const Value* value = FindKey(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (value->kind_case() != Value::kNumberValue) {
    return InvalidKey(parent, key, "must be a number");
  }
  const double number = value->number_value();
  if (!std::isfinite(number) || number < 0 || std::floor(number) != number) {
    return InvalidKey(parent, key, "must be a non-negative integer");
  }
  // 2^64 is exactly representable; every integral double below it converts
  // to uint64_t without overflow.
  constexpr double kTwoTo64 = 18446744073709551616.0;
  if (number >= kTwoTo64 ||
      static_cast<uint64_t>(number) > std::numeric_limits<T>::max()) {
    return InvalidKey(parent, key, "is out of range");
  }
  *out = static_cast<T>(number);
  if (present != nullptr) *present = true;
  return absl::OkStatus();
}

absl::Status ReadBool(const Struct& object, absl::string_view parent,
                      const std::string& key, bool* out) {
  const Value* value = FindKey(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (value->kind_case() != Value::kBoolValue) {
    return InvalidKey(parent, key, "must be a boolean");
  }
  *out = value->bool_value();
  return absl::OkStatus();
}

// Sets *out to the nested object, or to nullptr when the key is absent.
absl::Status ReadObject(const Struct& object, absl::string_view parent,
                        const std::string& key, const Struct** out) {
  *out = nullptr;
  const Value* value = FindKey(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (value->kind_case() != Value::kStructValue) {
    return InvalidKey(parent, key, "must be an object");
  }
  *out = &value->struct_value();
  return absl::OkStatus();
}

absl::Status ReadTwinSocket(const Struct& capabilities, Capabilities* caps) {
  const Struct* twin = nullptr;
  absl::Status status =
      ReadObject(capabilities, "capabilities", "twin_socket", &twin);
  if (!status.ok() || twin == nullptr) return status;
  constexpr absl::string_view kParent = "capabilities.twin_socket";
  status = ReadBool(*twin, kParent, "supported", &caps->twin_socket_supported);
  if (!status.ok()) return status;
  uint32_t fd_index = 0;
  bool has_fd_index = false;
  status = ReadUnsigned(*twin, kParent, "fd_index", &fd_index, &has_fd_index);
  if (!status.ok()) return status;
  if (has_fd_index) caps->twin_socket_fd_index = fd_index;
  return absl::OkStatus();
}

absl::Status ReadMigration(const Struct& capabilities, Capabilities* caps) {
  const Struct* migration = nullptr;
  absl::Status status =
      ReadObject(capabilities, "capabilities", "migration", &migration);
  if (!status.ok() || migration == nullptr) return status;
  constexpr absl::string_view kParent = "capabilities.migration";
  Capabilities::Migration parsed;
  status = ReadUnsigned(*migration, kParent, "pgsize", &parsed.pgsize);
  if (!status.ok()) return status;
  status = ReadUnsigned(*migration, kParent, "max_bitmap_size",
                        &parsed.max_bitmap_size);
  if (!status.ok()) return status;
  caps->migration = parsed;
  return absl::OkStatus();
}

absl::Status ReadCapabilities(const Struct& capabilities, Capabilities* caps) {
  constexpr absl::string_view kParent = "capabilities";
  absl::Status status =
      ReadUnsigned(capabilities, kParent, "max_msg_fds", &caps->max_msg_fds,
                   &caps->has_max_msg_fds);
  if (status.ok()) {
    status = ReadUnsigned(capabilities, kParent, "max_data_xfer_size",
                          &caps->max_data_xfer_size);
  }
  if (status.ok()) {
    status = ReadUnsigned(capabilities, kParent, "max_dma_maps",
                          &caps->max_dma_maps);
  }
  if (status.ok()) {
    status = ReadUnsigned(capabilities, kParent, "pgsizes", &caps->pgsizes);
  }
  if (status.ok()) {
    status = ReadBool(capabilities, kParent, "write_multiple",
                      &caps->write_multiple);
  }
  if (status.ok()) status = ReadTwinSocket(capabilities, caps);
  if (status.ok()) status = ReadMigration(capabilities, caps);
  return status;
}

// The first line of a protobuf parse error (later lines quote the input).
std::string FirstLine(absl::string_view text) {
  return std::string(text.substr(0, text.find('\n')));
}

// ---- Formatting: a compact writer with selectable keys ----

// One bit per top-level capability key, declared in output order, which is
// also the order of importance when keys must be left out (most important
// first).
enum CapabilityKey : uint32_t {
  kKeyMaxMsgFds = 1u << 0,
  kKeyMaxDataXferSize = 1u << 1,
  kKeyPgsizes = 1u << 2,
  kKeyMaxDmaMaps = 1u << 3,
  kKeyTwinSocket = 1u << 4,
  kKeyWriteMultiple = 1u << 5,
  kKeyMigration = 1u << 6,
};
constexpr CapabilityKey kKeysByImportance[] = {
    kKeyMaxMsgFds,  kKeyMaxDataXferSize, kKeyPgsizes,  kKeyMaxDmaMaps,
    kKeyTwinSocket, kKeyWriteMultiple,   kKeyMigration,
};

// The keys FormatCapabilitiesJson writes for `caps`.
uint32_t KeysToWrite(const Capabilities& caps) {
  uint32_t keys =
      kKeyMaxMsgFds | kKeyMaxDataXferSize | kKeyPgsizes | kKeyMaxDmaMaps;
  if (caps.twin_socket_supported || caps.twin_socket_fd_index.has_value()) {
    keys |= kKeyTwinSocket;
  }
  if (caps.write_multiple) keys |= kKeyWriteMultiple;
  if (caps.migration.has_value()) keys |= kKeyMigration;
  return keys;
}

// Builds `"key":value` members separated by commas.
class JsonMembers {
 public:
  template <typename V>
  void Add(absl::string_view key, const V& value) {
    absl::StrAppend(&text_, text_.empty() ? "" : ",", "\"", key, "\":", value);
  }
  void AddBool(absl::string_view key, bool value) {
    Add(key, value ? "true" : "false");
  }
  bool empty() const { return text_.empty(); }
  std::string Object() const { return absl::StrCat("{", text_, "}"); }

 private:
  std::string text_;
};

// Writes the keys of `caps` selected by `keys` (a CapabilityKey mask); `{}`
// when none is selected.
std::string FormatSelectedKeys(const Capabilities& caps, uint32_t keys) {
  JsonMembers members;
  if (keys & kKeyMaxMsgFds) members.Add("max_msg_fds", caps.max_msg_fds);
  if (keys & kKeyMaxDataXferSize) {
    members.Add("max_data_xfer_size", caps.max_data_xfer_size);
  }
  if (keys & kKeyPgsizes) members.Add("pgsizes", caps.pgsizes);
  if (keys & kKeyMaxDmaMaps) members.Add("max_dma_maps", caps.max_dma_maps);
  if (keys & kKeyTwinSocket) {
    JsonMembers twin;
    twin.AddBool("supported", caps.twin_socket_supported);
    if (caps.twin_socket_fd_index.has_value()) {
      twin.Add("fd_index", *caps.twin_socket_fd_index);
    }
    members.Add("twin_socket", twin.Object());
  }
  if (keys & kKeyWriteMultiple) {
    members.AddBool("write_multiple", caps.write_multiple);
  }
  if ((keys & kKeyMigration) && caps.migration.has_value()) {
    JsonMembers migration;
    migration.Add("pgsize", caps.migration->pgsize);
    if (caps.migration->max_bitmap_size != 0) {
      migration.Add("max_bitmap_size", caps.migration->max_bitmap_size);
    }
    members.Add("migration", migration.Object());
  }
  if (members.empty()) return "{}";
  JsonMembers root;
  root.Add("capabilities", members.Object());
  return root.Object();
}

// What a peer reading FormatSelectedKeys(caps, keys) understands: the
// selected values, spec defaults for everything else.
Capabilities AsUnderstood(const Capabilities& caps, uint32_t keys) {
  Capabilities understood;
  if (keys & kKeyMaxMsgFds) {
    understood.max_msg_fds = caps.max_msg_fds;
    understood.has_max_msg_fds = true;
  }
  if (keys & kKeyMaxDataXferSize) {
    understood.max_data_xfer_size = caps.max_data_xfer_size;
  }
  if (keys & kKeyPgsizes) understood.pgsizes = caps.pgsizes;
  if (keys & kKeyMaxDmaMaps) understood.max_dma_maps = caps.max_dma_maps;
  if (keys & kKeyTwinSocket) {
    understood.twin_socket_supported = caps.twin_socket_supported;
    understood.twin_socket_fd_index = caps.twin_socket_fd_index;
  }
  if (keys & kKeyWriteMultiple) {
    understood.write_multiple = caps.write_multiple;
  }
  if (keys & kKeyMigration) understood.migration = caps.migration;
  return understood;
}

// Picks, in order of importance, every key of `caps` whose addition keeps
// the JSON within `max_json_size` bytes. May return 0 (`{}`).
uint32_t KeysThatFit(const Capabilities& caps, size_t max_json_size) {
  const uint32_t wanted = KeysToWrite(caps);
  uint32_t chosen = 0;
  for (const CapabilityKey key : kKeysByImportance) {
    if ((wanted & key) == 0) continue;
    if (FormatSelectedKeys(caps, chosen | key).size() <= max_json_size) {
      chosen |= key;
    }
  }
  return chosen;
}

// ---- Validation of the peer's limits (bounds documented in version.h) ----

enum class PeerRole { kClient, kServer };

absl::Status InvalidLimit(PeerRole role, absl::string_view what) {
  return ErrnoError(EINVAL,
                    absl::StrCat("VERSION: ",
                                 role == PeerRole::kServer ? "server" : "client",
                                 " capability ", what));
}

absl::Status ValidatePeerLimits(const Capabilities& peer, PeerRole role) {
  if (peer.max_msg_fds > kMaxPeerMsgFds) {
    return InvalidLimit(role, absl::StrCat("max_msg_fds ", peer.max_msg_fds,
                                           " exceeds ", kMaxPeerMsgFds));
  }
  if (peer.max_data_xfer_size < kMinPeerMaxDataXferSize ||
      peer.max_data_xfer_size > kMaxPeerMaxDataXferSize) {
    return InvalidLimit(
        role, absl::StrCat("max_data_xfer_size ", peer.max_data_xfer_size,
                           " is outside [", kMinPeerMaxDataXferSize, ", ",
                           kMaxPeerMaxDataXferSize, "]"));
  }
  if (peer.migration.has_value()) {
    const Capabilities::Migration& migration = *peer.migration;
    if (migration.pgsize == 0 || migration.pgsize % kMinPageSize != 0) {
      return InvalidLimit(role, absl::StrCat("migration.pgsize ",
                                             migration.pgsize,
                                             " is not a multiple of 4096"));
    }
    if (migration.max_bitmap_size > kMaxPeerMigrationBitmapSize) {
      return InvalidLimit(
          role, absl::StrCat("migration.max_bitmap_size ",
                             migration.max_bitmap_size, " exceeds ",
                             kMaxPeerMigrationBitmapSize));
    }
  }
  if (role == PeerRole::kClient) return absl::OkStatus();
  if ((peer.pgsizes & (kMinPageSize - 1)) != 0 ||
      (peer.pgsizes & ~(kMinPageSize - 1)) == 0) {
    return InvalidLimit(role, absl::StrCat("pgsizes 0x", absl::Hex(peer.pgsizes),
                                           " must only have bits >= 4096"));
  }
  if (peer.max_dma_maps == 0) return InvalidLimit(role, "max_dma_maps is 0");
  return absl::OkStatus();
}

// VERSION payload bytes around the JSON: major, minor, and the NUL.
constexpr size_t kVersionFixedBytes = 4;
constexpr size_t kJsonTerminatorBytes = 1;

}  // namespace

absl::StatusOr<Capabilities> ParseCapabilitiesJson(const std::string& json) {
  Capabilities caps;
  if (json.empty()) return caps;
  Struct root;
  const auto parsed = google::protobuf::util::JsonStringToMessage(json, &root);
  if (!parsed.ok()) {
    const auto message = parsed.message();
    return ErrnoError(
        EINVAL,
        absl::StrCat("VERSION capabilities are not a JSON object: ",
                     FirstLine(absl::string_view(message.data(),
                                                 message.size()))));
  }
  const Struct* capabilities = nullptr;
  absl::Status status = ReadObject(root, "", "capabilities", &capabilities);
  if (status.ok() && capabilities != nullptr) {
    status = ReadCapabilities(*capabilities, &caps);
  }
  if (!status.ok()) return status;
  return caps;
}

std::string FormatCapabilitiesJson(const Capabilities& caps) {
  return FormatSelectedKeys(caps, KeysToWrite(caps));
}

absl::StatusOr<ServerNegotiation> ServerNegotiate(
    const VersionPayload& request, size_t request_payload_size,
    const ServerVersionPolicy& policy) {
  if (request.major != policy.major) {
    return ErrnoError(ENOTSUP,
                      absl::StrCat("VERSION: client major ", request.major,
                                   " is not supported (server speaks ",
                                   policy.major, ")"));
  }
  absl::StatusOr<Capabilities> peer = ParseCapabilitiesJson(request.json);
  if (!peer.ok()) return peer.status();
  absl::Status limits = ValidatePeerLimits(*peer, PeerRole::kClient);
  if (!limits.ok()) return limits;

  ServerNegotiation result;
  result.minor = std::min(request.minor, policy.minor);
  result.peer = *peer;

  Capabilities offer = policy.own;
  offer.twin_socket_supported = false;
  offer.twin_socket_fd_index.reset();
  if (!peer->migration.has_value()) offer.migration.reset();
  if (policy.offer_twin_socket && peer->twin_socket_supported &&
      peer->max_msg_fds >= 1) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0) {
      result.twin_local.Reset(fds[0]);
      result.twin_remote.Reset(fds[1]);
      offer.twin_socket_supported = true;
      offer.twin_socket_fd_index = 0;  // the only fd of the reply
    }
    // Otherwise decline: a client must cope without a twin socket (§4.2).
  }

  // QEMU's rule: the reply payload may not be longer than the request's.
  // Applied to every request that could be QEMU's (see version.h).
  size_t max_json_size = std::numeric_limits<size_t>::max();
  if (!request.json.empty() && !peer->twin_socket_supported) {
    constexpr size_t kOverhead = kVersionFixedBytes + kJsonTerminatorBytes;
    max_json_size =
        request_payload_size > kOverhead ? request_payload_size - kOverhead : 0;
  }
  const uint32_t keys = KeysThatFit(offer, max_json_size);
  result.reply.major = policy.major;
  result.reply.minor = result.minor;
  result.reply.json = FormatSelectedKeys(offer, keys);
  result.own = AsUnderstood(offer, keys);
  if (!result.own.twin_socket_supported) {
    result.twin_local.Reset();
    result.twin_remote.Reset();
  }
  return result;
}

absl::StatusOr<ClientNegotiation> ClientValidateReply(
    const VersionPayload& proposed, const Capabilities& offered,
    const VersionPayload& reply, size_t reply_fd_count) {
  if (reply.major != proposed.major) {
    return ErrnoError(ENOTSUP,
                      absl::StrCat("VERSION: server replied major ",
                                   reply.major, ", we proposed ",
                                   proposed.major));
  }
  if (reply.minor > proposed.minor) {
    return ErrnoError(EINVAL,
                      absl::StrCat("VERSION: server replied minor ",
                                   reply.minor, ", above the proposed ",
                                   proposed.minor));
  }
  absl::StatusOr<Capabilities> peer = ParseCapabilitiesJson(reply.json);
  if (!peer.ok()) return peer.status();
  absl::Status limits = ValidatePeerLimits(*peer, PeerRole::kServer);
  if (!limits.ok()) return limits;

  ClientNegotiation result;
  result.peer = *peer;
  result.minor = reply.minor;
  if (peer->twin_socket_supported) {
    if (!offered.twin_socket_supported) {
      return ErrnoError(EINVAL,
                        "VERSION: server enabled twin_socket, which we did "
                        "not offer");
    }
    if (!peer->twin_socket_fd_index.has_value()) {
      return ErrnoError(EINVAL,
                        "VERSION: server enabled twin_socket without an "
                        "fd_index");
    }
    if (*peer->twin_socket_fd_index >= reply_fd_count) {
      return ErrnoError(
          EINVAL, absl::StrCat("VERSION: twin_socket fd_index ",
                               *peer->twin_socket_fd_index, " but the reply "
                               "carries ", reply_fd_count, " fd(s)"));
    }
    result.twin_socket = true;
  }
  return result;
}

}  // namespace vfio_user
