#!/usr/bin/env python3
"""The server-side half of the kernel-client test: local processes on lockfs's FUSE mount
that meet the guest's NFS locks. Started by run.sh once `lockfs serve` is up, before the
guest boots. The guest (guest/kguest.c) and this script follow each other through marker
files in the export's source directory.

It is also a second NLM client host: from the server's own address it locks "hold"
over NLM (with the handle `lockfs fh` gives), so that the guest meets a lock held by
another NLM host, and unlocks it when the guest creates "hold.release".

usage: hostside.py FUSE_MOUNT SOURCE_DIR SECONDS LOCKFS CONFIG SERVER_IP
Prints "HOST <step> ok|FAIL <detail>" lines."""
import errno
import fcntl
import os
import socket
import struct
import subprocess
import sys
import time

mnt, src, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
lockfs, config, server_ip = sys.argv[4], sys.argv[5], sys.argv[6]
deadline = time.monotonic() + budget


def say(step, ok, detail):
    print(f"HOST {step} {'ok' if ok else 'FAIL'} {detail}", flush=True)


def await_marker(name):
    """Waits for the guest to create NAME in the source directory."""
    path = os.path.join(src, name)
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    say(name, False, "the guest never created it")
    return False


def try_lock(path):
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
        fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
        return "GRANTED"
    except OSError as e:
        return "EAGAIN" if e.errno in (errno.EAGAIN, errno.EACCES) else f"errno {e.errno}"
    finally:
        os.close(fd)


class Rpc:
    """ONC RPC calls over one TCP connection (record marking, AUTH_SYS as root)."""

    def __init__(self, ip, port):
        self.sock = socket.create_connection((ip, port), timeout=10)
        self.xid = int(time.time()) & 0xFFFF

    def call(self, prog, vers, proc, args):
        self.xid += 1
        # stamp, machine name, uid 0, gid 0, no other groups
        cred = struct.pack(">I", 0) + opaque(b"kc-holder") + struct.pack(">III", 0, 0, 0)
        msg = struct.pack(">IIIIII", self.xid, 0, 2, prog, vers, proc)
        msg += struct.pack(">II", 1, len(cred)) + cred + struct.pack(">II", 0, 0) + args
        self.sock.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)
        reply = b""
        while True:
            (mark,) = struct.unpack(">I", self._read(4))
            reply += self._read(mark & 0x7FFFFFFF)
            if mark & 0x80000000:
                break
        xid, mtype, rstat = struct.unpack(">III", reply[:12])
        if xid != self.xid or mtype != 1 or rstat != 0:
            raise OSError(f"RPC reply xid={xid} type={mtype} stat={rstat}")
        (vlen,) = struct.unpack(">I", reply[16:20])
        off = 20 + (vlen + 3) // 4 * 4
        (astat,) = struct.unpack(">I", reply[off : off + 4])
        if astat != 0:
            raise OSError(f"RPC call not accepted: accept_stat {astat}")
        return reply[off + 4 :]

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return buf


def opaque(b):
    return struct.pack(">I", len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


NLM_PROG, NLM4_VERS, NLM4_LOCK, NLM4_UNLOCK = 100021, 4, 2, 4


def nlm_lock_arg(fh):
    """nlm4_lock: caller name, handle, owner handle, svid, whole file."""
    return opaque(b"kc-holder") + opaque(fh) + opaque(b"kc-holder-owner") + struct.pack(">iQQ", 4242, 0, 0)


def nlm_status(reply):
    """nlm4_res: the cookie, then the status."""
    (clen,) = struct.unpack(">I", reply[:4])
    off = 4 + (clen + 3) // 4 * 4
    return struct.unpack(">I", reply[off : off + 4])[0]


# Another NLM host holds "hold": created through the FUSE mount, locked over NLM.
holder = None
try:
    open(os.path.join(mnt, "hold"), "a").close()
    fh_hex = subprocess.run(
        [lockfs, "fh", "--config", config, os.path.join(src, "hold")],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    hold_fh = bytes.fromhex(fh_hex)
    pm = Rpc(server_ip, 111)
    port_reply = pm.call(100000, 2, 3, struct.pack(">IIII", NLM_PROG, NLM4_VERS, 6, 0))
    (nlm_port,) = struct.unpack(">I", port_reply[:4])
    holder = Rpc(server_ip, nlm_port)
    args = opaque(b"hold") + struct.pack(">II", 0, 1) + nlm_lock_arg(hold_fh) + struct.pack(">Ii", 0, 1)
    st = nlm_status(holder.call(NLM_PROG, NLM4_VERS, NLM4_LOCK, args))
    say("srvhold-lock", st == 0, f"NLM LOCK of hold from {server_ip} (NLM port {nlm_port}): status {st}")
except (OSError, subprocess.SubprocessError, ValueError) as e:
    say("srvhold-lock", False, f"{type(e).__name__}: {e}")
    holder = None

# Locks the guest meets: an ordinary file and a mandatory one (set-group-ID without
# group-execute), both held by this process through the FUSE mount.
xdoor = os.open(os.path.join(mnt, "xdoor"), os.O_RDWR | os.O_CREAT, 0o666)
fcntl.lockf(xdoor, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
mand = os.open(os.path.join(mnt, "mand"), os.O_RDWR | os.O_CREAT, 0o666)
os.write(mand, b"server-data")
os.fchmod(mand, 0o2666)
fcntl.lockf(mand, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
say("hold", True, "xdoor and mand locked on the FUSE mount")

if await_marker("xdoor.waiting"):
    time.sleep(2)
    fcntl.lockf(xdoor, fcntl.LOCK_UN, 0, 0)
    released = time.monotonic()
    say("xdoor-unlock", True, "released xdoor")
    if await_marker("xdoor.granted"):
        say("xdoor-granted", True, f"the guest reported its grant {time.monotonic() - released:.2f}s after the unlock")

if await_marker("rev.held"):
    got = try_lock(os.path.join(mnt, "rev"))
    say("rev-held", got == "EAGAIN", f"local F_SETLK while the guest holds rev: {got}")
    tmp = os.path.join(mnt, "rev.result.tmp")
    with open(tmp, "w") as f:
        f.write(got + "\n")
    os.rename(tmp, os.path.join(mnt, "rev.result"))
    if await_marker("rev.unlocked"):
        got = try_lock(os.path.join(mnt, "rev"))
        say("rev-unlocked", got == "GRANTED", f"local F_SETLK after the guest unlocked rev: {got}")

if await_marker("mand.writing"):
    time.sleep(3)
    fcntl.lockf(mand, fcntl.LOCK_UN, 0, 0)
    say("mand-unlock", True, "released mand")
if holder is not None and await_marker("hold.release"):
    try:
        args = opaque(b"unhold") + nlm_lock_arg(hold_fh)
        st = nlm_status(holder.call(NLM_PROG, NLM4_VERS, NLM4_UNLOCK, args))
        say("srvhold-unlock", st == 0, f"NLM UNLOCK of hold: status {st}")
    except OSError as e:
        say("srvhold-unlock", False, f"NLM UNLOCK of hold: {e}")
os.close(mand)
os.close(xdoor)
say("done", True, "")
