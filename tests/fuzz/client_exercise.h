// ExerciseClient: a fixed, representative workload for an attached client
// library (//client): what a VMM does with a device, from config space and
// region access to DMA maps (with and without fd), interrupts and reset.
//
// Shared by the client fuzz target, whose fuzzed server answers exactly this
// sequence of requests, and by record_fuzz_corpus.cc, which records it
// against the real sample servers to seed both the client and the session
// corpora. Every call's result is ignored (a hostile server makes any of
// them fail); none may crash or hang beyond the client's request timeout.
#ifndef VFIO_USER_TESTS_FUZZ_CLIENT_EXERCISE_H_
#define VFIO_USER_TESTS_FUZZ_CLIENT_EXERCISE_H_

#include <cstdint>

#include "client/client.h"

namespace vfio_user {
namespace fuzz {

// Guest memory layout of the workload: a memfd-backed map the server may
// mmap, and a map without fd that the server reaches by DMA_READ/DMA_WRITE.
inline constexpr uint64_t kExerciseFdIova = 0x100000;
inline constexpr uint64_t kExerciseMessageIova = 0x200000;
inline constexpr uint64_t kExerciseMemorySize = 64 * 1024;

// Runs the workload on `client`. Device-specific steps (the DMA test
// device's engine, the idio-16 registers) run when config space reports
// their ids.
void ExerciseClient(Client* client);

}  // namespace fuzz
}  // namespace vfio_user

#endif  // VFIO_USER_TESTS_FUZZ_CLIENT_EXERCISE_H_
