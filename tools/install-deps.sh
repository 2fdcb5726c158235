#!/usr/bin/env bash
# Installs the Debian packages this repository builds, tests and runs with,
# if any are missing. Idempotent and quiet when everything is present.
# Offline apart from Debian's archive: nothing else is ever downloaded.
set -euo pipefail

PKGS=(
  bazel-bootstrap bazel-rules-java pkg-config g++ clang libclang-rt-14-dev
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc
  libprotobuf-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  grpc-proto python3-grpcio python3-protobuf
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "Installing missing Debian packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" </dev/null
