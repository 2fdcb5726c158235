#include "client/irq_journal.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace vfio_user {

std::vector<EventfdChunk> PlanEventfdChunks(uint32_t start,
                                            absl::Span<const int> fds,
                                            uint32_t max_fds) {
  std::vector<EventfdChunk> chunks;
  if (max_fds == 0) max_fds = 1;
  size_t i = 0;
  while (i < fds.size()) {
    const bool valid = fds[i] >= 0;
    size_t end = i + 1;
    while (end < fds.size() && end - i < max_fds && (fds[end] >= 0) == valid) {
      ++end;
    }
    EventfdChunk chunk;
    chunk.start = start + static_cast<uint32_t>(i);
    chunk.count = static_cast<uint32_t>(end - i);
    if (valid) chunk.fds.assign(fds.begin() + i, fds.begin() + end);
    chunks.push_back(std::move(chunk));
    i = end;
  }
  return chunks;
}

absl::Status IrqJournal::SetTriggers(uint32_t index, uint32_t start,
                                     absl::Span<const int> fds) {
  std::vector<std::shared_ptr<UniqueFd>> dups(fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i] < 0) continue;
    const int copy = ::fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      return ErrnoError(errno, absl::StrCat("dup of eventfd ", fds[i]));
    }
    dups[i] = std::make_shared<UniqueFd>(copy);
  }
  IndexState& state = indexes_[index];
  const size_t end = size_t{start} + fds.size();
  if (state.triggers.size() < end) state.triggers.resize(end);
  for (size_t i = 0; i < fds.size(); ++i) {
    state.triggers[start + i] = std::move(dups[i]);
  }
  return absl::OkStatus();
}

void IrqJournal::Disable(uint32_t index) { indexes_.erase(index); }

void IrqJournal::SetMasked(uint32_t index, uint32_t start, uint32_t count,
                           bool masked) {
  IndexState& state = indexes_[index];
  const size_t end = size_t{start} + count;
  if (state.masked.size() < end) state.masked.resize(end, false);
  std::fill(state.masked.begin() + start, state.masked.begin() + end, masked);
}

void IrqJournal::ClearMasks() {
  for (auto& [index, state] : indexes_) state.masked.clear();
}

void IrqJournal::Clear() { indexes_.clear(); }

std::vector<uint32_t> IrqJournal::Indexes() const {
  std::vector<uint32_t> out;
  for (const auto& [index, state] : indexes_) {
    const bool wired =
        std::any_of(state.triggers.begin(), state.triggers.end(),
                    [](const std::shared_ptr<UniqueFd>& fd) { return !!fd; });
    const bool masked =
        std::find(state.masked.begin(), state.masked.end(), true) !=
        state.masked.end();
    if (wired || masked) out.push_back(index);
  }
  return out;
}

std::vector<int> IrqJournal::Triggers(uint32_t index) const {
  std::vector<int> out;
  auto it = indexes_.find(index);
  if (it == indexes_.end()) return out;
  for (const std::shared_ptr<UniqueFd>& fd : it->second.triggers) {
    out.push_back(fd ? fd->get() : -1);
  }
  while (!out.empty() && out.back() < 0) out.pop_back();
  return out;
}

std::vector<IrqJournal::Run> IrqJournal::MaskedRuns(uint32_t index) const {
  std::vector<Run> runs;
  auto it = indexes_.find(index);
  if (it == indexes_.end()) return runs;
  const std::vector<bool>& masked = it->second.masked;
  for (size_t i = 0; i < masked.size();) {
    if (!masked[i]) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < masked.size() && masked[end]) ++end;
    runs.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(end - i)});
    i = end;
  }
  return runs;
}

}  // namespace vfio_user
