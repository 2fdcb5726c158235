#!/usr/bin/env bash
# Command 2 of the README: install what is missing, run every test, then run
# the native tests again under AddressSanitizer + UndefinedBehaviorSanitizer
# (--config=asan, docs/SECURITY.md).
# Prints "N passed, N failed" (counted from the GoogleTest XML files of both
# runs) last. VFIO_USER_ASAN=0 skips the sanitizer run (it roughly doubles
# the cold build; docs/SECURITY.md has the timings).
set -euo pipefail
cd "$(dirname "$0")"
tools/install-deps.sh

# Stop the Bazel server afterwards in CI (it would idle for 3 h otherwise).
if [ "${CI:-}" = "true" ]; then
  trap 'bazel shutdown >/dev/null 2>&1 || true' EXIT
fi
rc=0
bazel test --config=ci "$@" //... </dev/null || rc=$?

# The sanitizer run: everything but the libFuzzer smoke tests, which build
# their own ASan+UBSan binaries with clang and just ran above.
asan_targets=(//... -//tests/fuzz:codec_fuzz_smoke_test)
# Resolve the output directories now: the bazel-testlogs symlink follows the
# last build, so it would point at the sanitizer run afterwards.
testlogs=("$(bazel info --config=ci bazel-testlogs 2>/dev/null)/")
if [ "${VFIO_USER_ASAN:-1}" = "1" ]; then
  bazel test --config=ci --config=asan "$@" -- "${asan_targets[@]}" </dev/null || rc=$?
  testlogs+=("$(bazel info --config=ci --config=asan bazel-testlogs 2>/dev/null)/")
fi

passed=0; failed=0
while IFS= read -r xml; do
  t=$(grep -o -m1 '<testsuites [^>]*' "$xml" | sed -n 's/.* tests="\([0-9]*\)".*/\1/p' || true)
  f=$(grep -o -m1 '<testsuites [^>]*' "$xml" | sed -n 's/.* failures="\([0-9]*\)".*/\1/p' || true)
  e=$(grep -o -m1 '<testsuites [^>]*' "$xml" | sed -n 's/.* errors="\([0-9]*\)".*/\1/p' || true)
  if [ -z "$t" ]; then  # sh_test: Bazel writes a one-case XML of its own
    t=1; if grep -qE '<(failure|error)[ >]' "$xml"; then f=1; else f=0; fi
  fi
  f=$(( ${f:-0} + ${e:-0} ))
  passed=$((passed + t - f)); failed=$((failed + f))
done < <(find -L "${testlogs[@]}" -name test.xml 2>/dev/null)
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # build error, crash, timeout
echo "$passed passed, $failed failed"
exit "$rc"
