/*
 * lockfs.h - the share-reservation and lock-value-block interfaces of lockfs
 * mounts.
 *
 * SHARE RESERVATIONS
 *
 * Every open of a file on a lockfs mount holds a share reservation: its access
 * (what the open does) and its deny (what nobody else may do while it is open).
 * A plain open reserves its O_ACCMODE access and denies nothing. An open, or a
 * LOCKFS_IOC_SET_SHARE request, that conflicts with another open's reservation
 * fails with EBUSY.
 *
 * LOCKFS_IOC_SET_SHARE replaces the reservation of the open file it is issued
 * on, atomically: on EBUSY nothing changes. The access is widened to at least
 * what the open may do.
 *
 *     struct lockfs_share s = { LOCKFS_SHARE_READ, LOCKFS_SHARE_WRITE };
 *     int fd = open("/mnt/data/file", O_RDONLY);
 *     if (ioctl(fd, LOCKFS_IOC_SET_SHARE, &s) == -1 && errno == EBUSY)
 *         ... someone has the file open for writing ...
 *
 * To make the reservation part of the open itself, read the extended attribute
 * "user.lockfs.share-open.<access>.<deny>" of the file (letters "-", "r", "w",
 * "rw", e.g. "user.lockfs.share-open.r.w") right before opening it: the calling
 * thread's next open of that file (within 30 s) takes that reservation or fails
 * with EBUSY. `lockfs share-open` does this for programs that cannot.
 *
 * LOCK VALUE BLOCKS
 *
 * Every file on a lockfs mount has a value block: 32 bytes that a holder of an
 * exclusive lock on the file leaves for the next holder, with the semantics of
 * the Linux DLM's user-space LVB. It starts as zeros, valid, sequence number 0.
 * Each set stores the whole 32 bytes, advances the sequence number by one and
 * makes the block valid. The block becomes not-valid (LOCKFS_LVB_NOTVALID, the
 * DLM's VALNOTVALID) when
 *   - an exclusive holder invalidates it (LOCKFS_IOC_LVB_INVALIDATE),
 *   - a process dies holding an exclusive lock on the file (killed, or exits
 *     without unlocking): it may have been half way through changing what the
 *     value describes (an unlock or close by a live process keeps it valid),
 *   - a remote NFS client holding an exclusive lock reboots or is cleared,
 *   - the daemon restarts after a crash (every block of the export),
 * and stays not-valid, with its last value readable, until the next set.
 *
 * "Exclusive lock on the file" means an F_WRLCK of the calling process (fcntl
 * F_SETLK), or an F_WRLCK OFD lock (F_OFD_SETLK) or LOCK_EX flock through the
 * open file the ioctl is issued on, on any byte range. Anyone else gets
 * LOCKFS_LVB_ERRNO (EPERM) from set and invalidate, and nothing changes.
 * LOCKFS_IOC_LVB_GET answers anyone who can open the file; LOCKFS_LVB_UNLOCKED
 * says the caller held no lock on it, so the value may change at any moment.
 *
 * Each ioctl answers the block as it is afterwards. A set returns once the
 * value is in the page cache of the export's storage (the export's value-block
 * store, a file the daemon maps): a crash of the daemon loses no returned set;
 * after a crash of the machine a block may hold an older value, and is then
 * not-valid like every block.
 * Remote NFS clients cannot reach value blocks: NLM has no field for one.
 *
 *     struct lockfs_lvb b;
 *     struct flock wr = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
 *     int fd = open("/mnt/data/counter", O_RDWR);
 *     fcntl(fd, F_SETLKW, &wr);
 *     ioctl(fd, LOCKFS_IOC_LVB_GET, &b);
 *     if (b.flags & LOCKFS_LVB_NOTVALID)
 *         ... rebuild the state from the file itself ...
 *     memcpy(b.value, "generation 7", 12);   (unused bytes stay zero)
 *     if (ioctl(fd, LOCKFS_IOC_LVB_SET, &b) == -1)
 *         ... errno EPERM: no exclusive lock ...
 *     ... b.seq is the new sequence number ...
 *     wr.l_type = F_UNLCK;
 *     fcntl(fd, F_SETLK, &wr);
 */
#ifndef LOCKFS_H
#define LOCKFS_H

#include <stdint.h>
#include <sys/ioctl.h>

/* Access and deny values; READ | WRITE means both. */
#define LOCKFS_SHARE_NONE  0u
#define LOCKFS_SHARE_READ  1u
#define LOCKFS_SHARE_WRITE 2u
#define LOCKFS_SHARE_BOTH  3u

struct lockfs_share {
	uint32_t access; /* what this open does */
	uint32_t deny;   /* what others may not do meanwhile */
};

#define LOCKFS_IOC_SET_SHARE _IOW('S', 1, struct lockfs_share)

/* The errno of a conflicting open or LOCKFS_IOC_SET_SHARE. */
#define LOCKFS_SHARE_ERRNO EBUSY

#define LOCKFS_LVB_LEN 32

/* Flags of struct lockfs_lvb, set by the daemon in every answer. */
#define LOCKFS_LVB_NOTVALID 1u /* a writer was lost or it was invalidated */
#define LOCKFS_LVB_UNLOCKED 2u /* read without holding a lock on the file */

struct lockfs_lvb {
	uint8_t  value[LOCKFS_LVB_LEN]; /* in: for SET; out: the value */
	uint64_t seq;                   /* out: number of sets so far */
	uint32_t flags;                 /* out: LOCKFS_LVB_* */
	uint32_t reserved;              /* zero */
};

#define LOCKFS_IOC_LVB_GET        _IOR('S', 2, struct lockfs_lvb)
#define LOCKFS_IOC_LVB_SET        _IOWR('S', 3, struct lockfs_lvb)
#define LOCKFS_IOC_LVB_INVALIDATE _IOR('S', 4, struct lockfs_lvb)

/* The errno of LOCKFS_IOC_LVB_SET or _INVALIDATE without an exclusive lock. */
#define LOCKFS_LVB_ERRNO EPERM

#endif /* LOCKFS_H */
