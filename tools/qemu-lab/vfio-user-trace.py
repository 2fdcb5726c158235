#!/usr/bin/env python3
"""vfio-user-trace: a logging relay between a vfio-user client and server.

usage: vfio-user-trace.py LISTEN_SOCKET SERVER_SOCKET LOG_FILE

Listens on LISTEN_SOCKET; for each client that connects, connects to
SERVER_SOCKET and relays every message both ways, file descriptors
(SCM_RIGHTS) included, unchanged. Each message is logged as one line:
direction, msg_id, command, type, size, fd count, and the decoded fixed
fields of the payload (PROTOCOL.md section 3). Used by the QEMU lab
(tools/qemu-lab/run-idio16.sh --trace) to record what QEMU really sends.

Messages are read whole (header, then exactly msg_size - 16 bytes) so the
fds that came with a message are forwarded with that same message.
"""
import array
import json
import os
import socket
import struct
import sys
import threading
import time

COMMANDS = {
    1: "VERSION", 2: "DMA_MAP", 3: "DMA_UNMAP", 4: "DEVICE_GET_INFO",
    5: "DEVICE_GET_REGION_INFO", 6: "DEVICE_GET_REGION_IO_FDS",
    7: "DEVICE_GET_IRQ_INFO", 8: "DEVICE_SET_IRQS", 9: "REGION_READ",
    10: "REGION_WRITE", 11: "DMA_READ", 12: "DMA_WRITE", 13: "DEVICE_RESET",
    15: "REGION_WRITE_MULTI", 16: "DEVICE_FEATURE", 17: "MIG_DATA_READ",
    18: "MIG_DATA_WRITE",
}
IRQ_INDEX = {0: "INTX", 1: "MSI", 2: "MSIX", 3: "ERR", 4: "REQ"}
MAX_FDS = 64


def u(fmt, data, off=0):
    """Unpacks little-endian fields, or None if `data` is too short."""
    size = struct.calcsize("<" + fmt)
    if len(data) < off + size:
        return None
    return struct.unpack_from("<" + fmt, data, off)


def set_irqs_flags(flags):
    data = {1: "NONE", 2: "BOOL", 4: "EVENTFD"}.get(flags & 7, hex(flags & 7))
    action = {8: "MASK", 16: "UNMASK", 32: "TRIGGER"}.get(flags & 0x38,
                                                         hex(flags & 0x38))
    return "%s|%s" % (data, action)


def decode(cmd, is_reply, payload):
    """A short text for the fixed fields of a payload ('' if none)."""
    p = payload
    if cmd == 1:
        v = u("HH", p)
        if v is None:
            return ""
        text = p[4:].split(b"\0")[0].decode(errors="replace")
        try:
            text = json.dumps(json.loads(text), separators=(",", ":"))
        except ValueError:
            pass
        return "major=%d minor=%d json=%s" % (v[0], v[1], text)
    if cmd == 2 and not is_reply:
        v = u("IIQQQ", p)
        return v and "flags=0x%x offset=0x%x addr=0x%x size=0x%x" % v[1:]
    if cmd == 3:
        v = u("IIQQ", p)
        return v and "flags=0x%x addr=0x%x size=0x%x" % v[1:]
    if cmd == 4 and is_reply:
        v = u("IIII", p)
        return v and "flags=0x%x num_regions=%d num_irqs=%d" % v[1:]
    if cmd == 5:
        v = u("IIIIQQ", p)
        if v is None:
            v = u("IIII", p)
            return v and "argsz=%d index=%d" % (v[0], v[2])
        return ("argsz=%d flags=0x%x index=%d cap_offset=%d size=0x%x "
                "offset=0x%x" % v)
    if cmd == 7:
        v = u("IIII", p)
        return v and "flags=0x%x index=%s count=%d" % (
            v[1], IRQ_INDEX.get(v[2], v[2]), v[3])
    if cmd == 8 and not is_reply:
        v = u("IIIII", p)
        return v and "%s index=%s start=%d count=%d" % (
            set_irqs_flags(v[1]), IRQ_INDEX.get(v[2], v[2]), v[3], v[4])
    if cmd in (9, 10):
        v = u("QII", p)
        if v is None:
            return ""
        data = p[16:16 + min(v[2], 8)]
        return "region=%d offset=0x%x count=%d%s" % (
            v[1], v[0], v[2], (" data=" + data.hex()) if data else "")
    if cmd in (11, 12):
        v = u("QQ", p)
        return v and "addr=0x%x count(u64)=%d raw16=%s" % (
            v[0], v[1], p[:16].hex())
    return ""


class Relay:
    def __init__(self, log):
        self.log = log
        self.lock = threading.Lock()
        self.start = time.monotonic()

    def write(self, line):
        with self.lock:
            self.log.write("%9.3f %s\n" % (time.monotonic() - self.start, line))
            self.log.flush()

    @staticmethod
    def recv_exact(sock, n, fds):
        buf = bytearray()
        while len(buf) < n:
            data, anc, _, _ = sock.recvmsg(
                n - len(buf), socket.CMSG_SPACE(MAX_FDS * 4))
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(cdata[:len(cdata) - len(cdata) % 4])
                    fds.extend(arr)
            if not data:
                return None
            buf += data
        return bytes(buf)

    def pump(self, src, dst, arrow):
        try:
            while True:
                fds = []
                header = self.recv_exact(src, 16, fds)
                if header is None:
                    break
                msg_id, cmd, size, flags, error = struct.unpack("<HHIII",
                                                                header)
                body = self.recv_exact(src, max(size, 16) - 16, fds) or b""
                kind = "reply" if flags & 0xF == 1 else "cmd"
                if flags & 0x10:
                    kind += "+no_reply"
                if flags & 0x20:
                    kind += "+error(%d:%s)" % (error, os.strerror(error))
                text = decode(cmd, flags & 0xF == 1, body) or ""
                self.write("%s id=%-5d %-22s %-16s size=%-5d fds=%d %s" % (
                    arrow, msg_id, COMMANDS.get(cmd, "CMD%d" % cmd), kind,
                    size, len(fds), text))
                dst.sendmsg([header + body],
                            [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                              array.array("i", fds))] if fds else [])
                for fd in fds:
                    os.close(fd)
        except OSError as e:
            self.write("%s error: %s" % (arrow, e))
        self.write("%s closed" % arrow)
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    listen_path, server_path, log_path = argv[1:]
    if os.path.exists(listen_path):
        os.unlink(listen_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen_path)
    listener.listen(1)
    with open(log_path, "a") as log:
        relay = Relay(log)
        while True:
            client, _ = listener.accept()
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(server_path)
            relay.write("connected %s -> %s" % (listen_path, server_path))
            threads = [
                threading.Thread(target=relay.pump, args=(client, server, "C>S"),
                                 daemon=True),
                threading.Thread(target=relay.pump, args=(server, client, "S>C"),
                                 daemon=True),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            client.close()
            server.close()


if __name__ == "__main__":
    main(sys.argv)
