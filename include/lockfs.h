/*
 * lockfs.h - the share-reservation interface of lockfs mounts.
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

#endif /* LOCKFS_H */
