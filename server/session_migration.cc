// Session: DEVICE_FEATURE and MIG_DATA_* (migration v2, PROTOCOL.md §3.13,
// §3.14, §7). The engine runs the state machine; the device supplies only
// set_running/save/load (server/device.h). PRE_COPY and P2P are not offered,
// so every arc involving them is absent.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "server/session.h"

namespace vfio_user {
namespace {

// Upper bound on a device state accepted through MIG_DATA_WRITE.
constexpr size_t kMaxMigrationStateBytes = 64u << 20;

bool MigrationSupported(const Device& device) {
  const MigrationCallbacks& m = device.migration();
  return m.save != nullptr && m.load != nullptr;
}

// Returns the next state on the shortest path from `from` to `to` over the
// arcs we support (RUNNING<->STOP, STOP<->STOP_COPY, STOP<->RESUMING).
MigrationState NextHop(MigrationState from, MigrationState to) {
  if (from == MigrationState::kStop) return to;  // STOP reaches every target directly
  return MigrationState::kStop;                  // every other state goes through STOP
}

bool IsSupportedTarget(MigrationState s) {
  return s == MigrationState::kRunning || s == MigrationState::kStop ||
         s == MigrationState::kStopCopy || s == MigrationState::kResuming;
}

}  // namespace

absl::StatusOr<Session::Reply> Session::HandleDeviceFeature(Message& msg) {
  if (!msg.fds.empty() || msg.fds_truncated) {
    return ErrnoError(EINVAL, "DEVICE_FEATURE must not carry file descriptors");
  }
  auto req = DecodeDeviceFeature(ByteSpan(msg.payload));
  if (!req.ok()) return req.status();
  const bool get = req->flags & kDeviceFeatureGet;
  const bool set = req->flags & kDeviceFeatureSet;
  const bool probe = req->flags & kDeviceFeatureProbe;
  auto echo = [&]() { return Reply{msg.payload}; };

  switch (req->feature()) {
    case kDeviceFeatureMigration: {
      if (!MigrationSupported(*device_) || set) {
        return ErrnoError(ENOTSUP, "migration is not supported by this device");
      }
      if (probe) return echo();
      if (req->argsz < 16) return ErrnoError(EINVAL, "argsz too small for MIGRATION");
      return Reply{EncodeDeviceFeature(16, req->flags,
                                       EncodeMigrationFlags(kMigrationStopCopy))};
    }
    case kDeviceFeatureMigDeviceState: {
      if (!MigrationSupported(*device_)) {
        return ErrnoError(ENOTSUP, "migration is not supported by this device");
      }
      if (probe) return echo();
      if (get) {
        if (req->argsz < 16) return ErrnoError(EINVAL, "argsz too small for MIG_DEVICE_STATE");
        MigDeviceState state;
        state.device_state = static_cast<uint32_t>(mig_state_);
        return Reply{EncodeDeviceFeature(16, req->flags, EncodeMigDeviceState(state))};
      }
      auto wanted = DecodeMigDeviceState(req->data);
      if (!wanted.ok()) return wanted.status();
      const auto target = static_cast<MigrationState>(wanted->device_state);
      if (!IsSupportedTarget(target)) {
        return ErrnoError(EINVAL, absl::StrCat("unsupported migration state ",
                                               wanted->device_state));
      }
      if (mig_state_ == MigrationState::kError) {
        return ErrnoError(EINVAL, "device is in ERROR; only DEVICE_RESET leaves it");
      }
      const MigrationCallbacks& m = device_->migration();
      while (mig_state_ != target) {
        const MigrationState next = NextHop(mig_state_, target);
        const MigrationState from = mig_state_;
        if (from == MigrationState::kRunning && next == MigrationState::kStop) {
          if (m.set_running) m.set_running(false);
        } else if (from == MigrationState::kStop && next == MigrationState::kRunning) {
          if (m.set_running) m.set_running(true);
        } else if (from == MigrationState::kStop && next == MigrationState::kStopCopy) {
          auto state = device_->SaveMigrationState();
          if (!state.ok()) return state.status();  // stay in STOP
          mig_buffer_ = std::move(*state);
          mig_offset_ = 0;
        } else if (from == MigrationState::kStop && next == MigrationState::kResuming) {
          mig_buffer_.clear();
          mig_offset_ = 0;
        } else if (from == MigrationState::kResuming && next == MigrationState::kStop) {
          absl::Status st = device_->LoadMigrationState(mig_buffer_);
          mig_buffer_.clear();
          if (!st.ok()) {
            mig_state_ = MigrationState::kError;
            return st;
          }
        } else if (from == MigrationState::kStopCopy && next == MigrationState::kStop) {
          mig_buffer_.clear();
          mig_offset_ = 0;
        }
        mig_state_ = next;
      }
      Log(LogLevel::kInfo, "session", "migration state changed",
          {{"device", device_->name()},
           {"state", absl::StrCat(static_cast<uint32_t>(mig_state_))}});
      return echo();
    }
    case kDeviceFeatureDmaLoggingStart: {
      if (get) return ErrnoError(EINVAL, "DMA_LOGGING_START supports SET/PROBE only");
      if (probe) return echo();
      DecodeLimits l = limits();
      auto start = DecodeDmaLoggingStart(req->data, l);
      if (!start.ok()) return start.status();
      absl::Status st = device_->dma().StartLogging(start->page_size, start->ranges);
      if (!st.ok()) return st;
      return echo();
    }
    case kDeviceFeatureDmaLoggingStop: {
      if (get) return ErrnoError(EINVAL, "DMA_LOGGING_STOP supports SET/PROBE only");
      if (probe) return echo();
      device_->dma().StopLogging();
      return echo();
    }
    case kDeviceFeatureDmaLoggingReport: {
      if (set) return ErrnoError(EINVAL, "DMA_LOGGING_REPORT supports GET/PROBE only");
      if (probe) return echo();
      auto report = DecodeDmaLoggingReportRequest(req->data);
      if (!report.ok()) return report.status();
      auto bitmap = device_->dma().Report(report->iova, report->length, report->page_size);
      if (!bitmap.ok()) return bitmap.status();
      report->bitmap = std::move(*bitmap);
      Bytes data = EncodeDmaLoggingReportReply(*report);
      const uint64_t needed = 8 + data.size();
      if (req->argsz < needed) {
        return ErrnoError(EINVAL, absl::StrCat("argsz ", req->argsz, " < ", needed));
      }
      return Reply{EncodeDeviceFeature(static_cast<uint32_t>(needed), req->flags, data)};
    }
    default:
      return ErrnoError(ENOTSUP, absl::StrCat("unsupported device feature ", req->feature()));
  }
}

absl::StatusOr<Session::Reply> Session::HandleMigDataRead(Message& msg) {
  if (!msg.fds.empty() || msg.fds_truncated) {
    return ErrnoError(EINVAL, "MIG_DATA_READ must not carry file descriptors");
  }
  auto req = DecodeMigDataReadRequest(ByteSpan(msg.payload), limits());
  if (!req.ok()) return req.status();
  if (mig_state_ != MigrationState::kStopCopy) {
    return ErrnoError(EINVAL, "MIG_DATA_READ outside STOP_COPY");
  }
  const size_t n = std::min<size_t>(req->size, mig_buffer_.size() - mig_offset_);
  ByteSpan chunk(mig_buffer_.data() + mig_offset_, n);
  mig_offset_ += n;
  return Reply{EncodeMigDataWithData(static_cast<uint32_t>(8 + n), chunk)};
}

absl::StatusOr<Session::Reply> Session::HandleMigDataWrite(Message& msg) {
  if (!msg.fds.empty() || msg.fds_truncated) {
    return ErrnoError(EINVAL, "MIG_DATA_WRITE must not carry file descriptors");
  }
  auto req = DecodeMigDataWriteRequest(ByteSpan(msg.payload), limits());
  if (!req.ok()) return req.status();
  if (mig_state_ != MigrationState::kResuming) {
    return ErrnoError(EINVAL, "MIG_DATA_WRITE outside RESUMING");
  }
  if (mig_buffer_.size() + req->data.size() > kMaxMigrationStateBytes) {
    return ErrnoError(EFBIG, "migration state too large");
  }
  mig_buffer_.insert(mig_buffer_.end(), req->data.begin(), req->data.end());
  return Reply{};
}

}  // namespace vfio_user
