#!/usr/bin/env bash
# Command 1 of the README: install what is missing, build, and start the
# vfio-userd management daemon on its embedded default: an ACCES PCI-IDIO-16
# GPIO card and the DMA test device, each on its own vfio-user socket, plus
# the gRPC endpoint (reflection + health on). It prints the grpcurl lines to
# try. Extra arguments go to vfio-userd (see --help).
set -euo pipefail
cd "$(dirname "$0")"
tools/install-deps.sh
bazel build -c opt //controlplane:vfio-userd //controlplane:vfio-userd-worker \
  //controlplane:vfio-userctl //client:vfio-user-cli
exec bazel-bin/controlplane/vfio-userd "$@"
