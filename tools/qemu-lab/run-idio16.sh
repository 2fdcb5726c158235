#!/usr/bin/env bash
# tools/qemu-lab/run-idio16.sh: end-to-end check of our vfio-user device
# server under QEMU's vfio-user-pci client with a Linux guest
# (docs/QEMU-INTEROP.md).
#
#   run-idio16.sh [--server PATH] [--accel tcg|kvm] [--trace] [--no-dma]
#                 [--keep] [--timeout SECONDS] [--edges N] [--all-edges]
#
# 1. setup.sh (idempotent) provides QEMU >= 10.1, a guest kernel and the
#    initramfs.
# 2. vfio-user-sample-server serves the ACCES PCI-IDIO-16 and the DMA test
#    device on sockets in a fresh work directory (inputs start at 0x1234).
# 3. QEMU boots the guest with both devices (-device vfio-user-pci), guest
#    RAM in a shared memfd. The guest's /init loads the in-tree
#    gpio-pci-idio-16 driver and runs labtool, which
#      - lists the PCI devices from sysfs (ids, BARs, capabilities),
#      - checks the driver bound the IDIO-16 and reads its inputs through the
#        GPIO character device,
#      - waits for interrupt-driven edge events on input line 0 while this
#        script toggles that line from outside (SIGUSR1 to the server, each
#        time the guest prints "LAB: WAIT-EDGE k"): INTx end to end,
#      - drives the outputs to two patterns,
#      - programs the DMA test device from user space (fill, copy, checksum,
#        an unmapped-address fault, a ring descriptor written through the
#        sparse-mmap page), checking the results in guest memory.
# 4. This script checks what the guest printed and what the server logged
#    (the output changes, and the final line state after SIGUSR2), prints a
#    transcript and PASS or FAIL (exit status 0 or 1).
#
# --server   the vfio-user-sample-server binary (default: $VFIO_USER_SAMPLE_SERVER,
#            else bazel-bin/server/devices/vfio-user-sample-server of this tree)
# --accel    QEMU accelerator (default tcg; kvm where nested KVM works)
# --trace    put tools/qemu-lab/vfio-user-trace.py between QEMU and the
#            server and print the message log (every message, decoded)
# --no-dma   do not attach the DMA test device
# --keep     keep the work directory (logs, console) even on success
# --edges    how many times the input line is toggled while the guest waits
#            for the edge (default 2: rising, then falling; 0: no interrupts)
# --all-edges  the guest requests edge events on all 16 input lines, not only
#            the toggled one (required with Linux >= 6.3 guests, e.g.
#            QEMU_LAB_GUEST_SUITE=sid: docs/QEMU-INTEROP.md)
# Environment: QEMU_LAB_CACHE, QEMU_LAB_GUEST_SUITE (bookworm or sid), ...
#            are passed to setup.sh.
# --timeout  seconds for the whole guest run (default 240)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SERVER="${VFIO_USER_SAMPLE_SERVER:-}"
ACCEL=tcg
EDGES=2         # input-line toggles the guest waits for (rising, falling, ...)
ALL_EDGES=0
TRACE=0
DMA=1
KEEP=0
TIMEOUT=240
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVER="$2"; shift 2 ;;
    --server=*) SERVER="${1#*=}"; shift ;;
    --accel) ACCEL="$2"; shift 2 ;;
    --accel=*) ACCEL="${1#*=}"; shift ;;
    --trace) TRACE=1; shift ;;
    --no-dma) DMA=0; shift ;;
    --keep) KEEP=1; shift ;;
    --all-edges) ALL_EDGES=1; shift ;;
    --edges) EDGES="$2"; shift 2 ;;
    --edges=*) EDGES="${1#*=}"; shift ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-idio16.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$SERVER" ]; then SERVER="$REPO/bazel-bin/server/devices/vfio-user-sample-server"; fi
[ -x "$SERVER" ] || { echo "run-idio16.sh: no server binary at $SERVER (bazel build //server/devices:vfio-user-sample-server, or --server PATH)" >&2; exit 2; }
SERVER="$(cd "$(dirname "$SERVER")" && pwd)/$(basename "$SERVER")"

# The scenario.
INPUTS=0x1234   # initial input lines
LINE=0          # the line SIGUSR1 toggles
OUT1=0xa5c3
OUT2=0x5a3c

START=$SECONDS
ENV_LINES="$("$HERE/setup.sh" | grep '^QEMU_LAB_')"
eval "$ENV_LINES"

WORK="$(mktemp -d /tmp/qlab.XXXXXX)"  # short: socket paths are limited to 107 bytes
SERVER_PID=""
QEMU_PID=""
TRACE_PIDS=()
cleanup() {
  local pid
  for pid in "$QEMU_PID" "${TRACE_PIDS[@]:-}" "$SERVER_PID"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 0 ] && [ "${RESULT:-FAIL}" = PASS ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Waits (up to $2 seconds) until file $1 contains the fixed string $3.
wait_for_text() {
  local file="$1" limit="$2" text="$3" t=0
  while ! grep -qF -- "$text" "$file" 2>/dev/null; do
    [ "$t" -ge $((limit * 10)) ] && return 1
    if [ -n "$QEMU_PID" ] && ! kill -0 "$QEMU_PID" 2>/dev/null; then
      grep -qF -- "$text" "$file" 2>/dev/null; return
    fi
    sleep 0.1
    t=$((t + 1))
  done
}

# ---- the device server ----
IDIO_SOCK="$WORK/idio16.sock"
DMA_SOCK=""
[ "$DMA" = 1 ] && DMA_SOCK="$WORK/dma.sock"
"$SERVER" --idio16_socket="$IDIO_SOCK" --dma_socket="$DMA_SOCK" --idio16_inputs="$INPUTS" \
    --idio16_toggle_line="$LINE" --log_level=debug > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  [ -S "$IDIO_SOCK" ] && { [ -z "$DMA_SOCK" ] || [ -S "$DMA_SOCK" ]; } && break
  sleep 0.1
done
[ -S "$IDIO_SOCK" ] || { cat "$WORK/server.log"; echo "FAIL: the server did not start"; exit 1; }

# ---- optional message trace ----
QEMU_IDIO_SOCK="$IDIO_SOCK"
QEMU_DMA_SOCK="$DMA_SOCK"
if [ "$TRACE" = 1 ]; then
  python3 -u "$HERE/vfio-user-trace.py" "$WORK/t-idio16.sock" "$IDIO_SOCK" "$WORK/trace-idio16.log" &
  TRACE_PIDS+=($!)
  QEMU_IDIO_SOCK="$WORK/t-idio16.sock"
  if [ -n "$DMA_SOCK" ]; then
    python3 -u "$HERE/vfio-user-trace.py" "$WORK/t-dma.sock" "$DMA_SOCK" "$WORK/trace-dma.log" &
    TRACE_PIDS+=($!)
    QEMU_DMA_SOCK="$WORK/t-dma.sock"
  fi
  for _ in $(seq 50); do [ -S "$QEMU_IDIO_SOCK" ] && break; sleep 0.1; done
fi

# ---- the guest ----
device_json() {
  printf '{"driver":"vfio-user-pci","id":"%s","socket":{"type":"unix","path":"%s"}}' "$1" "$2"
}
QEMU_ARGS=(
  -machine q35,memory-backend=mem -accel "$ACCEL" -m 256M
  -object memory-backend-memfd,id=mem,size=256M,share=on
  -nodefaults -display none -no-reboot -monitor none
  -serial "file:$WORK/console.log"
  -kernel "$QEMU_LAB_KERNEL" -initrd "$QEMU_LAB_INITRAMFS"
  -append "console=ttyS0 panic=-1 quiet lab.line=$LINE lab.edges=$EDGES lab.out1=$OUT1 lab.out2=$OUT2 lab.dma=$DMA lab.alledges=$ALL_EDGES"
  -device "$(device_json idio16 "$QEMU_IDIO_SOCK")"
)
[ -n "$DMA_SOCK" ] && QEMU_ARGS+=(-device "$(device_json dma "$QEMU_DMA_SOCK")")
for dir in ${QEMU_LAB_QEMU_FIRMWARE//:/ }; do QEMU_ARGS+=(-L "$dir"); done
: > "$WORK/console.log"
BOOT_START=$SECONDS
"$QEMU_LAB_QEMU_LD" --library-path "$QEMU_LAB_QEMU_LIBPATH" "$QEMU_LAB_QEMU_BIN" "${QEMU_ARGS[@]}" \
    > "$WORK/qemu.log" 2>&1 &
QEMU_PID=$!

# Toggle the input line each time the guest waits for an edge.
DEADLINE=$((SECONDS + TIMEOUT))
for k in $(seq "$EDGES"); do
  if wait_for_text "$WORK/console.log" $((DEADLINE - SECONDS)) "LAB: WAIT-EDGE $k"; then
    kill -USR1 "$SERVER_PID"
  else
    break
  fi
done
# Wait for the guest to power off.
while kill -0 "$QEMU_PID" 2>/dev/null && [ "$SECONDS" -lt "$DEADLINE" ]; do sleep 0.2; done
if kill -0 "$QEMU_PID" 2>/dev/null; then
  echo "run-idio16.sh: the guest did not finish within ${TIMEOUT}s; stopping QEMU" >&2
  kill "$QEMU_PID" 2>/dev/null || true
fi
QEMU_RC=0
wait "$QEMU_PID" || QEMU_RC=$?
QEMU_PID=""
GUEST_SECONDS=$((SECONDS - BOOT_START))
# The server's view of the lines, then a clean shutdown.
kill -USR2 "$SERVER_PID"
wait_for_text "$WORK/server.log" 10 'msg=lines' || true
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""

# ---- checks ----
CONSOLE="$WORK/console.txt"
tr -d '\r' < "$WORK/console.log" > "$CONSOLE"  # the serial console ends lines with CRLF
FAILED=()
expect_console() {  # $1: description, $2: extended regex a console line must match
  grep -qE -- "$2" "$CONSOLE" || FAILED+=("guest: $1 (no line matching /$2/)")
}
expect_server() {
  grep -qE -- "$2" "$WORK/server.log" || FAILED+=("server: $1 (no log line matching /$2/)")
}
hex4() { printf '0x%04x' "$1"; }
after1=$(hex4 $((INPUTS ^ (1 << LINE))))
expect_console "booted" '^LAB: BOOTED'
expect_console "module loaded" '^LAB: INSMOD gpio-pci-idio-16 ok'
expect_console "IDIO-16 listed with its I/O BAR2 of 256 bytes" \
  '^LAB: PCI [0-9a-f:.]+ id=494f:0dc8 class=118000 driver=pci-idio-16'
expect_console "IDIO-16 BAR2" '^LAB: PCI [0-9a-f:.]+ bar2 start=0x[0-9a-f]+ size=0x100 type=io'
expect_console "driver bound" '^LAB: CHECK ok idio16-driver-bound'
expect_console "initial inputs read" "^LAB: INPUTS initial=$(hex4 $INPUTS)\$"
for k in $(seq "$EDGES"); do  # odd toggles: line 0 of 0x1234 rises; even: falls back
  if [ $((k % 2)) = 1 ]; then edge=rising; level=$after1; else edge=falling; level=$(hex4 $INPUTS); fi
  expect_console "edge $k ($edge) seen by interrupt" \
    "^LAB: EDGE $k events=1 line=$LINE edge=$edge inputs=$level\$"
done
if [ "$EDGES" -gt 0 ]; then
  expect_server "SIGUSR1 toggled the line" 'msg="input line toggled"'
fi
# Linux >= 6.3 (regmap driver) cannot read the outputs back (write-only
# registers in its regmap); older drivers must read back what they wrote.
readback_re='readback=(%s)'
kver="$(sed -n 's/^LAB: BOOTED kernel=\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' "$CONSOLE")"
if [ -n "$kver" ] && [ "${kver% *}" -gt 6 -o \( "${kver% *}" = 6 -a "${kver#* }" -ge 3 \) ]; then
  readback_re='readback=(%s|unreadable)'
fi
for out in $OUT1 $OUT2; do
  expect_console "outputs $(hex4 $out) driven (read back where the driver can)" \
    "^LAB: OUTPUTS set=$(hex4 $out) $(printf "$readback_re" "$(hex4 $out)")\$"
done
expect_console "labtool idio16 succeeded" '^LAB: IDIO16-EXIT rc=0$'
if [ "$DMA" = 1 ]; then
  expect_console "DMA device listed" '^LAB: PCI [0-9a-f:.]+ id=1af4:10f0 class=ff0000'
  expect_console "DMA device BAR0 (4 KiB)" '^LAB: PCI [0-9a-f:.]+ bar0 start=0x[0-9a-f]+ size=0x1000 type=mem'
  expect_console "DMA device BAR2 (16 KiB)" '^LAB: PCI [0-9a-f:.]+ bar2 start=0x[0-9a-f]+ size=0x4000 type=mem'
  expect_console "DMA device MSI-X capability" \
    '^LAB: PCI [0-9a-f:.]+ cap@0x[0-9a-f]+ MSI-X vectors=4 enabled=0 table=bar0\+0x800 pba=bar0\+0xc00'
  expect_console "DMA device PCIe capability" '^LAB: PCI [0-9a-f:.]+ cap@0x[0-9a-f]+ PCIe'
  for c in dma-fill-guest-memory dma-copy-guest-memory dma-checksum dma-unmapped-fault \
           dma-ring-via-sparse-mmap dma-read-message dma-write-message dma-read-message-p2p; do
    expect_console "$c" "^LAB: CHECK ok $c\$"
  done
  expect_console "labtool dma succeeded" '^LAB: DMA-EXIT rc=0$'
fi
expect_console "guest finished" '^LAB: DONE'
if grep -q '^LAB: CHECK FAILED' "$CONSOLE"; then FAILED+=("guest: $(grep '^LAB: CHECK FAILED' "$CONSOLE" | tr '\n' ';')"); fi
[ "$QEMU_RC" = 0 ] || FAILED+=("QEMU exited with status $QEMU_RC")
expect_server "QEMU attached the IDIO-16" 'device=idio16 .*version=0\.0 .*msg="client attached"'
expect_server "output pattern 1 reached the device" "msg=\"outputs changed\".*outputs=$(hex4 $OUT1)|outputs=$(hex4 $OUT1).*msg=\"outputs changed\""
last_outputs="$(grep 'outputs changed' "$WORK/server.log" | tail -n 1 | grep -oE 'outputs=0x[0-9a-f]+' || true)"
[ "$last_outputs" = "outputs=$(hex4 $OUT2)" ] ||
  FAILED+=("server: last output change is '$last_outputs', expected outputs=$(hex4 $OUT2)")
final_inputs=$(hex4 $(( EDGES % 2 ? INPUTS ^ (1 << LINE) : INPUTS )))
expect_server "final line state (SIGUSR2)" "inputs=$final_inputs .*outputs=$(hex4 $OUT2)|outputs=$(hex4 $OUT2) .*inputs=$final_inputs"
if grep -q 'level=error' "$WORK/server.log"; then FAILED+=("server logged errors"); fi

# ---- transcript ----
echo "==== QEMU lab: $QEMU_LAB_QEMU_VERSION, accel=$ACCEL"
echo "==== guest kernel package: $QEMU_LAB_KERNEL_PACKAGE"
echo "==== QEMU command line:"
echo "  $QEMU_LAB_QEMU_BIN ${QEMU_ARGS[*]}"
echo "==== guest console (LAB lines):"
grep '^LAB:' "$CONSOLE" | sed 's/^/  /' || true
echo "==== QEMU stderr:"
sed 's/^/  /' "$WORK/qemu.log"
echo "==== server log:"
sed 's/^/  /' "$WORK/server.log"
if [ "$TRACE" = 1 ]; then
  for t in "$WORK"/trace-*.log; do
    echo "==== message trace ${t##*/} ($(wc -l < "$t") messages):"
    sed 's/^/  /' "$t"
  done
fi
echo "==== timing: guest run ${GUEST_SECONDS}s, total $((SECONDS - START))s"
if [ "${#FAILED[@]}" -eq 0 ]; then
  RESULT=PASS
  echo "PASS: QEMU vfio-user-pci + Linux pci-idio-16 driver: inputs, INTx edges, outputs$([ "$DMA" = 1 ] && echo ', DMA test device')"
  [ "$KEEP" = 1 ] && echo "work directory kept: $WORK"
  exit 0
fi
RESULT=FAIL
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
echo "FAIL (work directory kept: $WORK)"
exit 1
