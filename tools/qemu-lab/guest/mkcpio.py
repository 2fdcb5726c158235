#!/usr/bin/env python3
"""Writes a gzip'ed newc cpio archive (a Linux initramfs) from a spec.

usage: mkcpio.py OUT.cpio.gz SPEC...

Each SPEC is one of
  dir:PATH                      a directory (mode 0755)
  file:PATH=HOSTFILE[:MODE]     a regular file copied from the host (octal
                                MODE, default: the host file's permissions)
  link:PATH=TARGET              a symbolic link
  chr:PATH=MAJOR:MINOR          a character device node (mode 0600)
PATH is inside the archive, without a leading slash. Owners are root, and
timestamps 0, so the same inputs give the same archive. (No cpio(1) needed.)
"""
import gzip
import os
import stat
import sys


def entry(ino, name, mode, data=b"", nlink=1, rdev=(0, 0)):
    name_bytes = name.encode() + b"\0"
    header = "070701" + "".join(
        "%08x" % v
        for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0],
                  rdev[1], len(name_bytes), 0))
    out = header.encode() + name_bytes
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    parts = []
    for ino, spec in enumerate(argv[2:], start=1):
        kind, _, rest = spec.partition(":")
        if kind == "dir":
            parts.append(entry(ino, rest, stat.S_IFDIR | 0o755, nlink=2))
        elif kind == "file":
            path, _, host = rest.partition("=")
            host, _, mode = host.partition(":")
            perm = int(mode, 8) if mode else stat.S_IMODE(os.stat(host).st_mode)
            with open(host, "rb") as f:
                parts.append(entry(ino, path, stat.S_IFREG | perm, f.read()))
        elif kind == "link":
            path, _, target = rest.partition("=")
            parts.append(entry(ino, path, stat.S_IFLNK | 0o777, target.encode()))
        elif kind == "chr":
            path, _, numbers = rest.partition("=")
            major, _, minor = numbers.partition(":")
            parts.append(entry(ino, path, stat.S_IFCHR | 0o600,
                               rdev=(int(major), int(minor))))
        else:
            sys.exit("mkcpio.py: bad spec %r" % spec)
    parts.append(entry(0, "TRAILER!!!", 0))
    with open(argv[1], "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(b"".join(parts))


if __name__ == "__main__":
    main(sys.argv)
