#!/usr/bin/env bash
# Command 1 of the README: install what is missing, build, and start the
# device server on its embedded default: an ACCES PCI-IDIO-16 GPIO card and
# the DMA test device, each on its own vfio-user socket under /tmp/vfio-user.
# Extra arguments are passed to the server (see --help).
set -euo pipefail
cd "$(dirname "$0")"
tools/install-deps.sh
bazel build -c opt //server/devices:vfio-user-sample-server
exec bazel-bin/server/devices/vfio-user-sample-server "$@"
