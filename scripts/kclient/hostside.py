#!/usr/bin/env python3
"""The server-side half of the kernel-client test: local processes on lockfs's FUSE mount
that meet the guest's NFS locks. Started by run.sh once `lockfs serve` is up, before the
guest boots. The guest (guest/kguest.c) and this script follow each other through marker
files in the export's source directory.

usage: hostside.py FUSE_MOUNT SOURCE_DIR SECONDS
Prints "HOST <step> ok|FAIL <detail>" lines."""
import errno
import fcntl
import os
import sys
import time

mnt, src, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
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
os.close(mand)
os.close(xdoor)
say("done", True, "")
