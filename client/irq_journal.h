// Interrupt wiring a vfio-user client has set up with SET_IRQS, kept so it
// can be replayed on a new connection, and the chunking of eventfd arrays
// into SET_IRQS messages.
//
// Chunking follows QEMU (PROTOCOL.md §3.8): an eventfd array is sent as one
// DATA_EVENTFD|ACTION_TRIGGER message per chunk; a chunk is a run of at most
// the server's max_msg_fds entries that are either all valid fds or all
// unused (-1). An unused run goes out with no fds, which de-assigns that
// range.
//
// Thread-safety: IrqJournal is not thread-safe (the client guards it with
// its journal mutex). PlanEventfdChunks is pure.
#ifndef VFIO_USER_CLIENT_IRQ_JOURNAL_H_
#define VFIO_USER_CLIENT_IRQ_JOURNAL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/unique_fd.h"

namespace vfio_user {

// One SET_IRQS DATA_EVENTFD message: `count` vectors from `start`, with
// `fds` (count of them) or none (de-assign).
struct EventfdChunk {
  uint32_t start = 0;
  uint32_t count = 0;
  std::vector<int> fds;  // borrowed; empty = de-assign the range
};

// Splits `fds` (sub-index start + i; -1 = unused) into chunks. REQUIRES:
// max_fds >= 1.
std::vector<EventfdChunk> PlanEventfdChunks(uint32_t start,
                                            absl::Span<const int> fds,
                                            uint32_t max_fds);

class IrqJournal {
 public:
  // A run of vectors [start, start + count) with the same property.
  struct Run {
    uint32_t start = 0;
    uint32_t count = 0;
  };

  // Records trigger eventfds for `index` from sub-index `start` (-1 entries
  // clear the slot). Dups every valid fd first; fails (leaving the journal
  // unchanged) if a dup fails.
  absl::Status SetTriggers(uint32_t index, uint32_t start,
                           absl::Span<const int> fds);
  // Forgets every trigger and mask of `index` (DisableIrqs).
  void Disable(uint32_t index);
  // Records [start, start + count) of `index` as masked or unmasked.
  void SetMasked(uint32_t index, uint32_t start, uint32_t count, bool masked);
  // Forgets every mask (a device reset unmasks everything).
  void ClearMasks();
  void Clear();

  // Indexes with any wired trigger or any masked vector, ascending.
  std::vector<uint32_t> Indexes() const;
  // The trigger fds of `index` (slot i = sub-index i; -1 = unused), trailing
  // unused slots trimmed. The fds stay owned by the journal.
  std::vector<int> Triggers(uint32_t index) const;
  // Runs of masked vectors of `index`.
  std::vector<Run> MaskedRuns(uint32_t index) const;

 private:
  struct IndexState {
    std::vector<std::shared_ptr<UniqueFd>> triggers;  // null = unused
    std::vector<bool> masked;
  };
  std::map<uint32_t, IndexState> indexes_;
};

}  // namespace vfio_user

#endif  // VFIO_USER_CLIENT_IRQ_JOURNAL_H_
