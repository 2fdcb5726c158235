#!/usr/bin/env bash
# Builds the codec libFuzzer target with clang (ASan + UBSan) and runs it.
#
#   tests/fuzz/run_fuzzer.sh [SECONDS] [extra libFuzzer flags...]
#
# SECONDS defaults to 20. Everything goes to $FUZZ_OUT_DIR (default: $TEST_TMPDIR
# under Bazel, /tmp/vfio_user_codec_fuzz otherwise):
#   codec_fuzzer   the instrumented binary
#   corpus/        the working corpus: the seeds and regressions are copied in
#                  and new inputs accumulate there across runs
#   crashes/       crash-*, leak-*, timeout-*, oom-* reproducers
#   fuzz.log       libFuzzer's output
# Exits non-zero if the build fails or the fuzzer finds anything. Works both
# from a checkout and as the Bazel sh_test //tests/fuzz:codec_fuzz_smoke_test
# (sources come from the runfiles tree).
set -euo pipefail

seconds="${1:-20}"
shift || true

if [[ -n "${TEST_SRCDIR:-}" ]]; then
  root="${TEST_SRCDIR}/${TEST_WORKSPACE:-vfio_user}"
else
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fi
out="${FUZZ_OUT_DIR:-${TEST_TMPDIR:-/tmp/vfio_user_codec_fuzz}}"
mkdir -p "${out}/corpus" "${out}/crashes"

cxx="${CXX_FUZZ:-/usr/bin/clang++}"
if [[ ! -x "${cxx}" ]]; then
  echo "run_fuzzer.sh: ${cxx} not found (apt-get install clang)" >&2
  exit 1
fi

sources=(
  core/codec.cc
  core/errno_status.cc
  core/protocol.cc
  core/wire_buffer.cc
  tests/fuzz/codec_fuzzer.cc
)
srcs=()
for s in "${sources[@]}"; do srcs+=("${root}/${s}"); done

echo "run_fuzzer.sh: building ${out}/codec_fuzzer"
# shellcheck disable=SC2046  # pkg-config output is a list of flags
"${cxx}" -std=c++17 -g -O1 \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"${root}" "${srcs[@]}" -o "${out}/codec_fuzzer" \
  $(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format)

# Seeds and past crashers join the working corpus (never overwriting it).
for dir in "${root}/tests/fuzz/corpus/codec" "${root}/tests/fuzz/regressions/codec"; do
  [[ -d "${dir}" ]] || continue
  find -L "${dir}" -maxdepth 1 -type f ! -name '*.md' -exec cp -n {} "${out}/corpus/" \;
done

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

echo "run_fuzzer.sh: fuzzing for ${seconds}s; log in ${out}/fuzz.log"
rc=0
"${out}/codec_fuzzer" \
  -max_total_time="${seconds}" \
  -max_len=4096 \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -print_final_stats=1 \
  -artifact_prefix="${out}/crashes/" \
  "$@" \
  "${out}/corpus" >"${out}/fuzz.log" 2>&1 || rc=$?

# The last status line carries the execution count and the coverage.
grep -E '^#[0-9]+' "${out}/fuzz.log" | tail -n 1 || true
grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' \
  "${out}/fuzz.log" || true

crashes=$(find "${out}/crashes" -type f | wc -l)
if [[ "${rc}" -ne 0 || "${crashes}" -ne 0 ]]; then
  echo "run_fuzzer.sh: FAILED (exit ${rc}, ${crashes} artifact(s) in ${out}/crashes)" >&2
  tail -n 60 "${out}/fuzz.log" >&2
  # Under Bazel, $TEST_TMPDIR is deleted: keep the reproducers and the log in
  # bazel-testlogs/tests/fuzz/codec_fuzz_smoke_test/test.outputs/.
  if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
    cp -r "${out}/crashes" "${out}/fuzz.log" "${TEST_UNDECLARED_OUTPUTS_DIR}/" || true
  fi
  exit 1
fi
echo "run_fuzzer.sh: OK"
