#!/usr/bin/env bash
# Builds a libFuzzer target with clang (ASan + UBSan) and runs it.
#
#   tests/fuzz/run_fuzzer.sh [TARGET] [SECONDS] [extra libFuzzer flags...]
#
# TARGET is one of: codec (default), version, session, client, controlplane
# (README.md describes each; controlplane also needs protoc and
# grpc_cpp_plugin). SECONDS defaults to 20. Everything goes to
# $FUZZ_OUT_DIR (default: $TEST_TMPDIR under Bazel, /tmp/vfio_user_<TARGET>_fuzz
# otherwise):
#   <TARGET>_fuzzer  the instrumented binary
#   obj/             object files (reused while neither the source nor a header
#                    it includes changed)
#   corpus/          the working corpus: the seeds and regressions are copied in
#                    and new inputs accumulate there across runs
#   crashes/         crash-*, leak-*, timeout-*, oom-* reproducers
#   fuzz.log         libFuzzer's output
# FUZZ_JOBS (default 2) compiles in parallel. Exits non-zero if the build fails
# or the fuzzer finds anything. Works both from a checkout and as a Bazel
# sh_test (sources come from the runfiles tree).
set -euo pipefail

target=codec
if [[ $# -gt 0 && ! "$1" =~ ^[0-9]+$ ]]; then
  target="$1"
  shift
fi
seconds="${1:-20}"
shift || true

if [[ -n "${TEST_SRCDIR:-}" ]]; then
  root="${TEST_SRCDIR}/${TEST_WORKSPACE:-vfio_user}"
else
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fi
out="${FUZZ_OUT_DIR:-${TEST_TMPDIR:-/tmp/vfio_user_${target}_fuzz}}"
mkdir -p "${out}/corpus" "${out}/crashes" "${out}/obj"

cxx="${CXX_FUZZ:-/usr/bin/clang++}"
if [[ ! -x "${cxx}" ]]; then
  echo "run_fuzzer.sh: ${cxx} not found (apt-get install clang)" >&2
  exit 1
fi

absl_modules=(absl_status absl_statusor absl_strings absl_str_format
  absl_synchronization absl_time absl_flat_hash_map absl_flat_hash_set
  absl_random_random)
core_wire=(core/codec.cc core/errno_status.cc core/protocol.cc core/wire_buffer.cc)
# Every library source of a package (tests, mains and test helpers left
# out), so the list follows the BUILD files without being repeated here.
sources_of() {
  local dir="$1" f base
  for f in "${root}/${dir}"/*.cc; do
    base="$(basename "${f}")"
    case "${base}" in
      *_test.cc | *_main.cc | *test_util*.cc | fake_server.cc) continue ;;
    esac
    echo "${dir}/${base}"
  done
}
mapfile -t core_all < <(sources_of core)
mapfile -t server_all < <(sources_of server; sources_of server/pci; sources_of server/devices)
mapfile -t client_all < <(sources_of client)

max_len=4096
libs=("${absl_modules[@]}")
case "${target}" in
  codec)
    sources=("${core_wire[@]}" tests/fuzz/codec_fuzzer.cc)
    ;;
  version)
    sources=("${core_wire[@]}" core/version.cc tests/fuzz/version_fuzzer.cc)
    libs+=(protobuf)
    ;;
  session)
    sources=("${core_all[@]}" "${server_all[@]}" tests/fuzz/session_fuzz_harness.cc
      tests/fuzz/session_fuzzer.cc)
    libs+=(protobuf)
    max_len=16384
    ;;
  client)
    sources=("${core_all[@]}" "${client_all[@]}" tests/fuzz/client_exercise.cc
      tests/fuzz/client_fuzz_harness.cc
      tests/fuzz/client_fuzzer.cc)
    libs+=(protobuf)
    max_len=16384
    ;;
  controlplane)
    # The gRPC and internal protos are generated here with the system protoc.
    # Regenerated files replace the old ones only when they differ, so that
    # their objects are reused.
    gen="${out}/gen"
    fresh="${out}/gen.fresh"
    rm -rf "${fresh}"
    mkdir -p "${gen}" "${fresh}"
    protos=(proto/vfio_user/v1/device.proto proto/vfio_user/v1/device_service.proto
      controlplane/daemon.proto controlplane/worker.proto)
    (cd "${root}" && protoc --proto_path=. --proto_path=/usr/include \
      --cpp_out="${fresh}" "${protos[@]}")
    (cd "${root}" && protoc --proto_path=. --proto_path=/usr/include \
      --grpc_out="${fresh}" --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin \
      proto/vfio_user/v1/device_service.proto)
    (cd "${fresh}" && find . -type f) | while read -r f; do
      if ! cmp -s "${fresh}/${f}" "${gen}/${f}"; then
        mkdir -p "$(dirname "${gen}/${f}")"
        cp "${fresh}/${f}" "${gen}/${f}"
      fi
    done
    generated=()
    for p in "${protos[@]}"; do generated+=("${gen}/${p%.proto}.pb.cc"); done
    generated+=("${gen}/proto/vfio_user/v1/device_service.grpc.pb.cc")
    mapfile -t controlplane_all < <(sources_of controlplane)
    sources=("${generated[@]}" "${core_all[@]}" "${server_all[@]}" "${controlplane_all[@]}"
      tests/fuzz/controlplane_fuzz_harness.cc tests/fuzz/controlplane_fuzzer.cc)
    libs+=(grpc++ protobuf)
    max_len=8192
    ;;
  *)
    echo "run_fuzzer.sh: unknown target '${target}'" >&2
    exit 2
    ;;
esac

# shellcheck disable=SC2207  # pkg-config output is a list of flags
link_flags=($(pkg-config --libs "${libs[@]}") -pthread)
cflags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=all
  -I"${root}" -I"${out}/gen")

# Compiles `src` (workspace-relative) unless its object is newer than the
# source and every header it included last time.
compile_one() {
  local src="$1"
  local obj="${out}/obj/${src//\//_}.o"
  local path="${root}/${src}"
  [[ "${src}" == /* ]] && path="${src}"  # generated
  if [[ -f "${obj}" && -f "${obj}.d" ]]; then
    local stale=0 dep
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "${obj}.d"); do
      if [[ "${dep}" -nt "${obj}" ]]; then stale=1; break; fi
    done
    [[ "${stale}" -eq 0 ]] && return 0
  fi
  "${cxx}" "${cflags[@]}" -fsanitize=fuzzer-no-link,address,undefined \
    -MMD -MF "${obj}.d" -c "${path}" -o "${obj}"
}
export -f compile_one
export out cxx root
export CFLAGS_SERIALIZED="${cflags[*]}"

echo "run_fuzzer.sh: building ${out}/${target}_fuzzer"
printf '%s\n' "${sources[@]}" |
  xargs -P "${FUZZ_JOBS:-2}" -I{} bash -c \
    'cflags=(${CFLAGS_SERIALIZED}); compile_one "$1"' _ {}
objects=()
for s in "${sources[@]}"; do objects+=("${out}/obj/${s//\//_}.o"); done
"${cxx}" -fsanitize=fuzzer,address,undefined "${objects[@]}" \
  -o "${out}/${target}_fuzzer" "${link_flags[@]}"

# Seeds and past crashers join the working corpus (never overwriting it).
for dir in "${root}/tests/fuzz/corpus/${target}" "${root}/tests/fuzz/regressions/${target}"; do
  [[ -d "${dir}" ]] || continue
  find -L "${dir}" -maxdepth 1 -type f ! -name '*.md' -exec cp -n {} "${out}/corpus/" \;
done

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

echo "run_fuzzer.sh: fuzzing ${target} for ${seconds}s; log in ${out}/fuzz.log"
rc=0
"${out}/${target}_fuzzer" \
  -max_total_time="${seconds}" \
  -max_len="${max_len}" \
  -timeout=30 \
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
  # bazel-testlogs/tests/fuzz/<test>/test.outputs/.
  if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
    cp -r "${out}/crashes" "${out}/fuzz.log" "${TEST_UNDECLARED_OUTPUTS_DIR}/" || true
  fi
  exit 1
fi
echo "run_fuzzer.sh: OK"
