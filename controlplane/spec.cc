#include "controlplane/spec.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "controlplane/device_types.h"
#include "controlplane/socket_path.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"

namespace vfio_user::controlplane {

namespace v1 = ::vfio_user::v1;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status ValidateDeviceName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return FieldError(field, "required");
  if (name.size() > kMaxDeviceNameLength) {
    return FieldError(field, absl::StrCat("at most ", kMaxDeviceNameLength,
                                          " characters (got ", name.size(), ")"));
  }
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  };
  for (char c : name) {
    if (!alnum(c) && c != '.' && c != '_' && c != '-') {
      return FieldError(field, "only lowercase letters, digits, '.', '_' and '-' are allowed");
    }
  }
  if (!alnum(name.front()) || !alnum(name.back())) {
    return FieldError(field, "must start and end with a lowercase letter or digit");
  }
  return absl::OkStatus();
}

absl::StatusOr<mode_t> ParseSocketMode(absl::string_view mode,
                                       absl::string_view field) {
  if (mode.empty() || mode.size() > 4) {
    return FieldError(field, "must be an octal permission string such as \"0660\"");
  }
  mode_t value = 0;
  for (char c : mode) {
    if (c < '0' || c > '7') {
      return FieldError(field, "must be an octal permission string such as \"0660\"");
    }
    value = value * 8 + static_cast<mode_t>(c - '0');
  }
  if (value & ~static_cast<mode_t>(0777)) {
    return FieldError(field, "only permission bits (0777) are allowed; no setuid, setgid or sticky");
  }
  return value;
}

std::string FormatSocketMode(mode_t mode) {
  return absl::StrFormat("%04o", static_cast<unsigned>(mode & 07777));
}

namespace {

// getpwnam_r / getgrnam_r with a growing buffer. Returns nullopt if unknown.
absl::StatusOr<std::optional<uid_t>> LookupUser(const std::string& name) {
  std::vector<char> buf(1024);
  for (;;) {
    struct passwd pw;
    struct passwd* result = nullptr;
    int err = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &result);
    if (err == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (err != 0 && err != ENOENT && err != ESRCH) {
      return absl::InternalError(absl::StrCat("getpwnam_r(", name, ") failed: errno ", err));
    }
    if (result == nullptr) return std::optional<uid_t>();
    return std::optional<uid_t>(pw.pw_uid);
  }
}

absl::StatusOr<std::optional<gid_t>> LookupGroup(const std::string& name) {
  std::vector<char> buf(1024);
  for (;;) {
    struct group gr;
    struct group* result = nullptr;
    int err = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &result);
    if (err == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (err != 0 && err != ENOENT && err != ESRCH) {
      return absl::InternalError(absl::StrCat("getgrnam_r(", name, ") failed: errno ", err));
    }
    if (result == nullptr) return std::optional<gid_t>();
    return std::optional<gid_t>(gr.gr_gid);
  }
}

// A numeric id or a name that resolves.
template <typename Id, typename Lookup>
absl::StatusOr<std::optional<Id>> ResolveId(const std::string& text,
                                            absl::string_view field,
                                            absl::string_view what, Lookup lookup) {
  if (text.empty()) return std::optional<Id>();
  uint32_t numeric = 0;
  if (absl::SimpleAtoi(text, &numeric)) {
    if (numeric == static_cast<uint32_t>(-1)) {
      return FieldError(field, absl::StrCat("invalid ", what, " id"));
    }
    return std::optional<Id>(static_cast<Id>(numeric));
  }
  auto found = lookup(text);
  if (!found.ok()) return found.status();
  if (!found->has_value()) {
    return FieldError(field, absl::StrCat("unknown ", what, " \"", text, "\""));
  }
  return std::optional<Id>(**found);
}

}  // namespace

absl::StatusOr<SocketOwnership> ResolveSocketOwnership(const v1::SocketSpec& socket) {
  SocketOwnership out;
  auto uid = ResolveId<uid_t>(socket.owner(), "spec.socket.owner", "user", LookupUser);
  if (!uid.ok()) return uid.status();
  out.uid = *uid;
  auto gid = ResolveId<gid_t>(socket.group(), "spec.socket.group", "group", LookupGroup);
  if (!gid.ok()) return gid.status();
  out.gid = *gid;
  if (socket.mode().empty()) {
    out.mode = kDefaultSocketMode;
  } else {
    auto mode = ParseSocketMode(socket.mode(), "spec.socket.mode");
    if (!mode.ok()) return mode.status();
    out.mode = *mode;
  }
  return out;
}

absl::StatusOr<v1::DeviceSpec> NormalizeSpec(const v1::DeviceSpec& spec,
                                             const SpecPolicy& policy) {
  v1::DeviceSpec out = spec;
  if (absl::Status st = ValidateDeviceName(out.name(), "spec.name"); !st.ok()) {
    return st;
  }
  if (out.type_case() == v1::DeviceSpec::TYPE_NOT_SET) {
    return FieldError("spec.type", "set exactly one device type (idio16, dma_test)");
  }
  const DeviceType* type = FindDeviceType(out.type_case());
  if (type == nullptr) {
    return FieldError("spec.type", "unsupported device type");
  }
  if (absl::Status st = type->Normalize(&out); !st.ok()) return st;

  // Socket.
  v1::SocketSpec* socket = out.mutable_socket();
  if (absl::Status st = CheckSocketPathSyntax(socket->path(), policy.allowed_socket_dir,
                                              "spec.socket.path");
      !st.ok()) {
    return st;
  }
  for (std::string* id : {socket->mutable_owner(), socket->mutable_group()}) {
    absl::StripAsciiWhitespace(id);
  }
  auto ownership = ResolveSocketOwnership(*socket);
  if (!ownership.ok()) return ownership.status();
  socket->set_mode(FormatSocketMode(ownership->mode));

  // Reconnect window.
  if (!out.has_reconnect_window()) {
    *out.mutable_reconnect_window() =
        google::protobuf::util::TimeUtil::NanosecondsToDuration(
            absl::ToInt64Nanoseconds(kDefaultReconnectWindow));
  } else {
    const auto& w = out.reconnect_window();
    const bool valid = w.seconds() >= -315576000000 && w.seconds() <= 315576000000 &&
                       w.nanos() > -1000000000 && w.nanos() < 1000000000 &&
                       !(w.seconds() > 0 && w.nanos() < 0) &&
                       !(w.seconds() < 0 && w.nanos() > 0);
    if (!valid) return FieldError("spec.reconnect_window", "not a valid duration");
    const absl::Duration d = absl::Seconds(w.seconds()) + absl::Nanoseconds(w.nanos());
    if (d < absl::ZeroDuration()) {
      return FieldError("spec.reconnect_window", "must not be negative");
    }
    if (d > kMaxReconnectWindow) {
      return FieldError("spec.reconnect_window", "at most 24h");
    }
  }

  // Timeout policy.
  switch (out.timeout_policy()) {
    case v1::TIMEOUT_POLICY_UNSPECIFIED:
      out.set_timeout_policy(v1::TIMEOUT_POLICY_KEEP_STATE);
      break;
    case v1::TIMEOUT_POLICY_KEEP_STATE:
    case v1::TIMEOUT_POLICY_RESET_DEVICE:
      break;
    default:
      return FieldError("spec.timeout_policy", "unknown policy");
  }
  return out;
}

absl::Duration ReconnectWindow(const v1::DeviceSpec& spec) {
  if (!spec.has_reconnect_window()) return kDefaultReconnectWindow;
  return absl::Seconds(spec.reconnect_window().seconds()) +
         absl::Nanoseconds(spec.reconnect_window().nanos());
}

bool SameSpec(const v1::DeviceSpec& a, const v1::DeviceSpec& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

std::string DeviceTypeName(const v1::DeviceSpec& spec) {
  const DeviceType* type = FindDeviceType(spec.type_case());
  return type == nullptr ? "unset" : type->name();
}

}  // namespace vfio_user::controlplane
