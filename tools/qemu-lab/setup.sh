#!/usr/bin/env bash
# tools/qemu-lab/setup.sh: prepares the QEMU lab (docs/QEMU-INTEROP.md) in a
# private cache directory, without installing anything into the system.
#
#   1. QEMU with the vfio-user-pci client (10.1 or later): Debian bookworm's
#      QEMU is 7.2, so qemu-system-x86 comes from Debian's unstable suite
#      ("sid") with its whole runtime library closure, libc and dynamic loader
#      included, extracted with dpkg -x. run-idio16.sh runs it through that
#      loader, so the host's libraries are never mixed in.
#   2. The guest: a Debian kernel (bookworm's by default) with the in-tree
#      gpio-pci-idio-16 module, and busybox-static.
#   3. The initramfs: busybox, the module (and the modules it depends on),
#      tools/qemu-lab/guest/init and labtool (compiled here, gcc -static).
#
# Idempotent: packages are downloaded once (a stamp file marks each finished
# step); the initramfs is rebuilt on every run (about a second), so edits to
# the guest files take effect. Debian's archive is the only thing contacted,
# through the archive URI the host's apt is configured with.
#
# Environment:
#   QEMU_LAB_CACHE        cache directory (default /var/cache/vfio-user-qemu-lab,
#                         or ~/.cache/vfio-user-qemu-lab if that is not writable)
#   QEMU_LAB_QEMU_SUITE   suite QEMU comes from (default sid)
#   QEMU_LAB_GUEST_SUITE  suite the guest kernel and busybox come from
#                         (default bookworm; sid gives the newer regmap-based
#                         driver)
#   QEMU_LAB_MIRROR       Debian archive URI (default: the host's, from
#                         /etc/apt/sources.list{,.d/*})
#   QEMU_LAB_REFRESH=1    download everything again
#
# Prints the paths run-idio16.sh needs as shell assignments on its last
# lines (QEMU_LAB_*=...), and writes them to $QEMU_LAB_CACHE/env-<guest suite>.
# Needs: apt-get, dpkg-deb, gcc with static glibc (libc6-dev), python3.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QEMU_SUITE="${QEMU_LAB_QEMU_SUITE:-sid}"
GUEST_SUITE="${QEMU_LAB_GUEST_SUITE:-bookworm}"

log() { echo "qemu-lab setup: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

default_cache() {
  local dir=/var/cache/vfio-user-qemu-lab
  if mkdir -p "$dir" 2>/dev/null && [ -w "$dir" ]; then
    echo "$dir"
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/vfio-user-qemu-lab"
  fi
}
CACHE="${QEMU_LAB_CACHE:-$(default_cache)}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# The Debian archive URI the host already uses (first non-security entry).
host_mirror() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && files+=("$f")
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  awk '
    /^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
    /^[[:space:]]*deb[[:space:]]/ {
      for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break }
    }' "${files[@]}" | grep -v -i security | head -n 1
}
MIRROR="${QEMU_LAB_MIRROR:-$(host_mirror)}"

# ---- private apt configuration (never touches the system's) ----
APT_DIR="$CACHE/apt"
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
  -o "Dir::Etc::sourceparts=/dev/null"
  -o "Dir::State::Lists=$APT_DIR/lists"
  -o "Dir::Cache=$APT_DIR/cache"
  -o "Dir::State::status=/dev/null"
  -o "APT::Sandbox::User=root"
)
apt_ready=0
ensure_apt() {
  [ "$apt_ready" = 1 ] && return 0
  [ -n "$MIRROR" ] || die "no Debian archive URI found in /etc/apt; set QEMU_LAB_MIRROR"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "missing $keyring (package debian-archive-keyring)"
  local suites
  suites="$(printf "%s\n" "$QEMU_SUITE" "$GUEST_SUITE" | sort -u | xargs)"
  local suite
  : > "$APT_DIR/sources.list"
  for suite in $suites; do
    echo "deb [signed-by=$keyring] $MIRROR $suite main" >> "$APT_DIR/sources.list"
  done
  log "apt-get update ($suites from $MIRROR)"
  apt-get "${APT_OPTS[@]}" -qq update >&2 || die "apt-get update failed"
  apt_ready=1
}

# The packages of `suite` that a recursive Depends walk from the given roots
# reaches (alternatives included; virtual packages dropped).
closure() {
  local suite="$1"; shift
  apt-cache "${APT_OPTS[@]}" -o "APT::Default-Release=$suite" depends --recurse \
      --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
      --no-enhances "$@" | grep -v '^ ' | grep -v '^<' | sort -u
}

# Downloads `pkgs` from `suite` into `dir` and extracts them into `dir`/root.
fetch_and_extract() {
  local suite="$1" dir="$2"; shift 2
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/debs" "$dir.tmp/root"
  (cd "$dir.tmp/debs" && apt-get "${APT_OPTS[@]}" -o "APT::Default-Release=$suite" \
      -qq download "$@" >&2) || die "apt-get download failed ($suite: $*)"
  local deb
  for deb in "$dir.tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$dir.tmp/root"; done
  (cd "$dir.tmp/debs" && ls *.deb) > "$dir.tmp/packages.txt"
  rm -rf "$dir.tmp/debs" "$dir"
  mv "$dir.tmp" "$dir"
}

# ---- 1. QEMU ----
QEMU_DIR="$CACHE/qemu-$QEMU_SUITE"
if [ "${QEMU_LAB_REFRESH:-0}" = 1 ] || [ ! -f "$QEMU_DIR/.complete" ]; then
  ensure_apt
  # What qemu-system-x86_64 runs with: the libraries (libc6 and its loader
  # included), the firmware (seabios, the option ROMs in qemu-system-data,
  # ipxe-qemu). Not the maintainer-script tools (systemd, passwd, ...).
  mapfile -t pkgs < <(closure "$QEMU_SUITE" qemu-system-x86 |
      grep -E '^(lib|zlib1g$|gcc-[0-9]+-base$|qemu-system-(x86|common|data)$|seabios$|ipxe-qemu$)')
  log "downloading QEMU from $QEMU_SUITE (${#pkgs[@]} packages)"
  fetch_and_extract "$QEMU_SUITE" "$QEMU_DIR" "${pkgs[@]}"
  touch "$QEMU_DIR/.complete"
fi
QROOT="$QEMU_DIR/root"
QLIB="$QROOT/usr/lib/x86_64-linux-gnu"
QEMU_LD="$QLIB/ld-linux-x86-64.so.2"
[ -x "$QEMU_LD" ] || QEMU_LD="$QROOT/lib64/ld-linux-x86-64.so.2"
QEMU_BIN="$QROOT/usr/bin/qemu-system-x86_64"
[ -x "$QEMU_LD" ] && [ -x "$QEMU_BIN" ] || die "QEMU not found under $QROOT (QEMU_LAB_REFRESH=1 to retry)"
QEMU_LIBPATH="$QLIB:$QROOT/lib/x86_64-linux-gnu"
# Every library must resolve inside the private root.
QEMU_LIBS="$("$QEMU_LD" --library-path "$QEMU_LIBPATH" --list "$QEMU_BIN" 2>&1 || true)"
if grep -q 'not found' <<< "$QEMU_LIBS"; then
  grep 'not found' <<< "$QEMU_LIBS" >&2
  die "QEMU's libraries are incomplete"
fi
QEMU_VERSION="$("$QEMU_LD" --library-path "$QEMU_LIBPATH" "$QEMU_BIN" --version | head -n 1)"
QEMU_DEVICES="$("$QEMU_LD" --library-path "$QEMU_LIBPATH" "$QEMU_BIN" -device help 2>/dev/null || true)"
grep -q '"vfio-user-pci"' <<< "$QEMU_DEVICES" || die "$QEMU_VERSION has no vfio-user-pci device"

# ---- 2. Guest kernel and busybox ----
GUEST_DIR="$CACHE/guest-$GUEST_SUITE"
if [ "${QEMU_LAB_REFRESH:-0}" = 1 ] || [ ! -f "$GUEST_DIR/.complete" ]; then
  ensure_apt
  image="$(apt-cache "${APT_OPTS[@]}" -o "APT::Default-Release=$GUEST_SUITE" depends \
      linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
  [ -n "$image" ] || die "no linux-image-amd64 in $GUEST_SUITE"
  # Newer Debian kernels split the image into linux-{base,binary,modules}-VER.
  mapfile -t parts < <(apt-cache "${APT_OPTS[@]}" -o "APT::Default-Release=$GUEST_SUITE" \
      depends "$image" | awk '/^ +Depends: linux-/ { print $2 }' | grep -F -- "${image#linux-image-}" | sort -u)
  log "downloading $image ${parts[*]:-} and busybox-static from $GUEST_SUITE"
  fetch_and_extract "$GUEST_SUITE" "$GUEST_DIR" "$image" "${parts[@]}" busybox-static
  touch "$GUEST_DIR/.complete"
fi
GROOT="$GUEST_DIR/root"
# Debian 12: /boot/vmlinuz-VER, /boot/config-VER, /lib/modules/VER.
# Newer: /usr/lib/modules/VER/{vmlinuz,config}.
VMLINUZ="$(ls "$GROOT"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)"
if [ -n "$VMLINUZ" ]; then
  KVER="${VMLINUZ##*/vmlinuz-}"
  CONFIG="$GROOT/boot/config-$KVER"
else
  VMLINUZ="$(ls "$GROOT"/usr/lib/modules/*/vmlinuz 2>/dev/null | head -n 1 || true)"
  [ -n "$VMLINUZ" ] || die "no kernel under $GROOT (QEMU_LAB_REFRESH=1 to retry)"
  KVER="$(basename "$(dirname "$VMLINUZ")")"
  CONFIG="$(dirname "$VMLINUZ")/config"
fi
MODDIR="$GROOT/lib/modules/$KVER"
[ -d "$MODDIR" ] || MODDIR="$GROOT/usr/lib/modules/$KVER"
BUSYBOX="$GROOT/bin/busybox"
[ -x "$BUSYBOX" ] || BUSYBOX="$GROOT/usr/bin/busybox"
for opt in CONFIG_GPIO_PCI_IDIO_16=m CONFIG_GPIO_CDEV=y CONFIG_BLK_DEV_INITRD=y CONFIG_SERIAL_8250_CONSOLE=y; do
  grep -q "^$opt\$" "$CONFIG" || die "$KVER: $opt is not set in its config"
done

# ---- 3. The initramfs ----
WORK="$CACHE/initramfs-$GUEST_SUITE.tmp"
rm -rf "$WORK"
mkdir -p "$WORK/modules"

# The module file for `name` (- and _ are the same), decompressed into
# $WORK/modules; echoes its path.
module_file() {
  local name="${1//_/-}" found
  found="$(find "$MODDIR/kernel" \( -name "$name.ko*" -o -name "${name//-/_}.ko*" \) | head -n 1)"
  [ -n "$found" ] || die "module $1 not found in $KVER"
  local out="$WORK/modules/${name}.ko"
  case "$found" in
    *.ko) cp "$found" "$out" ;;
    *.ko.xz) xz -dc "$found" > "$out" ;;
    *.ko.zst) zstd -qdc "$found" > "$out" ;;
    *.ko.gz) gzip -dc "$found" > "$out" ;;
    *) die "unknown module format: $found" ;;
  esac
  echo "$out"
}
# The modinfo "depends=" list of a .ko.
module_depends() {
  tr '\0' '\n' < "$1" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}
# Load order: dependencies first.
LOAD_ORDER=()
add_module() {
  local name="${1//_/-}" m dep
  for m in "${LOAD_ORDER[@]:-}"; do [ "$m" = "$name" ] && return 0; done
  local file
  file="$(module_file "$name")"
  for dep in $(module_depends "$file"); do add_module "$dep"; done
  LOAD_ORDER+=("$name")
}
add_module gpio-pci-idio-16
printf '%s\n' "${LOAD_ORDER[@]}" > "$WORK/modules.order"

gcc -static -O2 -Wall -Wno-format-truncation -o "$WORK/labtool" "$HERE/guest/labtool.c"

spec=(dir:bin dir:dev chr:dev/console=5:1 dir:proc dir:sys dir:lib dir:lib/modules
      "file:bin/busybox=$BUSYBOX:755" link:bin/sh=busybox
      "file:bin/labtool=$WORK/labtool:755" "file:init=$HERE/guest/init:755"
      "file:lib/modules/modules.order=$WORK/modules.order:644")
for m in "${LOAD_ORDER[@]}"; do spec+=("file:lib/modules/$m.ko=$WORK/modules/$m.ko:644"); done
python3 "$HERE/guest/mkcpio.py" "$WORK/initramfs.cpio.gz" "${spec[@]}"
mv "$WORK/initramfs.cpio.gz" "$CACHE/initramfs-$GUEST_SUITE.cpio.gz"
rm -rf "$WORK"

ENV_FILE="$CACHE/env-$GUEST_SUITE"
cat > "$ENV_FILE" <<EOF
QEMU_LAB_QEMU_LD='$QEMU_LD'
QEMU_LAB_QEMU_LIBPATH='$QEMU_LIBPATH'
QEMU_LAB_QEMU_BIN='$QEMU_BIN'
QEMU_LAB_QEMU_FIRMWARE='$QROOT/usr/share/seabios:$QROOT/usr/share/qemu'
QEMU_LAB_QEMU_VERSION='$QEMU_VERSION'
QEMU_LAB_KERNEL='$VMLINUZ'
QEMU_LAB_KERNEL_PACKAGE='$(grep '^linux-image' "$GUEST_DIR/packages.txt" | head -n 1)'
QEMU_LAB_INITRAMFS='$CACHE/initramfs-$GUEST_SUITE.cpio.gz'
QEMU_LAB_MODULES='${LOAD_ORDER[*]}'
EOF
log "ready: $QEMU_VERSION; guest kernel $KVER; modules: ${LOAD_ORDER[*]}"
cat "$ENV_FILE"
