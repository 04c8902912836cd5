#!/usr/bin/env python3
"""Server-side holder for the mandwrite guest test: creates FILE on the lockfs FUSE mount
as a mandatory file (set-group-ID on, group-execute off), holds an exclusive fcntl lock on
all of it for SECS seconds, then releases it and exits."""
import fcntl
import os
import sys
import time

path, secs = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
os.fchmod(fd, 0o2666)
os.write(fd, b"server-data")
fcntl.lockf(fd, fcntl.LOCK_EX, 0, 0)
print(f"HOLDMAND locked {path} for {secs}s", flush=True)
time.sleep(secs)
fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
print(f"HOLDMAND released {path}", flush=True)
