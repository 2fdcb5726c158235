// Structured logging to stderr, one logfmt line per event:
//   ts=2026-11-21T12:00:00.123Z level=warn component=session device=idio16 msg="..."
//
// Abseil 20220623 (Debian bookworm) predates absl/log, so this is a tiny
// thread-safe stand-in: each line is formatted first and written with one
// write(2), so lines from different threads never interleave. The threshold
// comes from SetLogLevel() or the VFIO_USER_LOG_LEVEL environment variable
// (debug|info|warn|error; default info).
#ifndef VFIO_USER_CORE_LOG_H_
#define VFIO_USER_CORE_LOG_H_

#include <initializer_list>
#include <utility>

#include "absl/strings/string_view.h"

namespace vfio_user {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

using LogField = std::pair<absl::string_view, absl::string_view>;

// Writes one line: fixed fields, then `fields` (values quoted when needed),
// then msg. Cheap to call when the level is disabled.
void Log(LogLevel level, absl::string_view component, absl::string_view msg,
         std::initializer_list<LogField> fields = {});

}  // namespace vfio_user

#endif  // VFIO_USER_CORE_LOG_H_
