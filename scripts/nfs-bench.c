/*
 * nfs-bench: an NFSv3 load client built on libnfs's raw RPC calls,
 * independent of lockfs's own RPC code, so the same client measures lockfs
 * and any other NFSv3 server.
 *
 * It mounts EXPORT with MOUNT v3 (on --mount-port, or through the
 * portmapper), then runs N clients, each with its own TCP connection and one
 * request in flight, for the given number of seconds. Modes:
 *   read       sequential READ of the client's file bench-I in --io-size
 *              requests (default 1 MiB), wrapping at its end
 *   write      sequential UNSTABLE WRITE of the client's file bench-w-I in
 *              --io-size requests, wrapping at --file-mib; a COMMIT at each
 *              wrap and at the end is part of the measured time
 *   randread   READ of --io-size (use 4096) at random aligned offsets of bench-I
 *   getattr    GETATTR of bench-I
 *   lookup     LOOKUP of bench-I in the export's root
 *   create     CREATE (unchecked) of a new name in the export's root, then
 *              REMOVE of it: one operation is the pair
 *   lookupmany LOOKUP of f0 .. f(COUNT-1) in the export's directory "many",
 *              each name once, shared among the clients; ends when all are done
 * Every file it reads must exist (the caller creates them); bench-w-I are
 * created by the write mode. Prints one line:
 *   label mode clients ops seconds ops_per_s MiB_per_s p50_us p99_us errors
 * and exits 1 if any call failed or none was done.
 *
 * Build: cc -O2 -o nfs-bench scripts/nfs-bench.c -lnfs
 * Usage: nfs-bench --server ADDR --export PATH --mode MODE [--nfs-port P]
 *                  [--mount-port P] [--clients N] [--seconds S] [--io-size B]
 *                  [--file-mib M] [--count N] [--label L]
 */
#include <sys/time.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-mount.h>
#include <nfsc/libnfs-raw-nfs.h>

#define MAX_CLIENTS 256
#define MAX_SAMPLES (1 << 22)
#define MAX_FH 128

enum mode { M_READ, M_WRITE, M_RANDREAD, M_GETATTR, M_LOOKUP, M_CREATE, M_LOOKUPMANY };
static const char *mode_names[] = { "read", "write", "randread", "getattr", "lookup", "create", "lookupmany" };

struct fh { u_int len; char val[MAX_FH]; };

struct client {
    int id;
    struct rpc_context *rpc;
    int connected, busy, failed;
    double started;
    struct fh file;
    uint64_t offset;
    uint64_t rng;
    uint64_t seq;
    int committing;
    char name[64];
};

static enum mode mode;
static struct fh root_fh, dir_fh;
static uint32_t io_size = 1 << 20;
static uint64_t file_bytes = 32ull << 20;
static long lookup_count = 100000, lookup_next;
static double deadline;
static double *samples;
static long nsamples, errors, ops;
static uint64_t bytes;
static char *wbuf;
static int stop_all;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static nfs_fh3 as_fh3(struct fh *f)
{
    nfs_fh3 h;
    h.data.data_len = f->len;
    h.data.data_val = f->val;
    return h;
}

static int copy_fh(struct fh *dst, const nfs_fh3 *src)
{
    if (src->data.data_len == 0 || src->data.data_len > MAX_FH) return -1;
    dst->len = src->data.data_len;
    memcpy(dst->val, src->data.data_val, dst->len);
    return 0;
}

static void fail(struct client *c, const char *what, int rpc_status, int nfs_status)
{
    errors++;
    if (errors <= 10) {
        if (rpc_status != RPC_STATUS_SUCCESS)
            fprintf(stderr, "client %d: %s: RPC failed: %s\n", c->id, what, rpc_get_error(c->rpc));
        else
            fprintf(stderr, "client %d: %s: NFS status %d\n", c->id, what, nfs_status);
    }
}

/* ---- synchronous calls for the setup ---- */

static int sync_wait(struct rpc_context *rpc, int *done, double seconds)
{
    double until = now() + seconds;
    while (!*done) {
        if (now() > until) { fprintf(stderr, "setup call timed out\n"); return -1; }
        struct pollfd p = { .fd = rpc_get_fd(rpc), .events = rpc_which_events(rpc) };
        if (poll(&p, 1, 100) < 0 && errno != EINTR) return -1;
        if (rpc_service(rpc, p.revents) < 0) { fprintf(stderr, "setup: %s\n", rpc_get_error(rpc)); return -1; }
    }
    return 0;
}

struct sync_res { int done, ok; struct fh fh; uint32_t rtmax, wtmax; };

static void on_sync_connect(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct sync_res *r = priv;
    (void)rpc;
    r->done = 1;
    r->ok = status == RPC_STATUS_SUCCESS;
    if (!r->ok) fprintf(stderr, "connect failed: %s\n", data ? (char *)data : "?");
}

static void on_mnt(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct sync_res *r = priv;
    mountres3 *res = data;
    r->done = 1;
    if (status != RPC_STATUS_SUCCESS) { fprintf(stderr, "MNT: %s\n", rpc_get_error(rpc)); return; }
    if (res->fhs_status != MNT3_OK) { fprintf(stderr, "MNT: status %d\n", res->fhs_status); return; }
    fhandle3 *h = &res->mountres3_u.mountinfo.fhandle;
    if (h->fhandle3_len == 0 || h->fhandle3_len > MAX_FH) return;
    r->fh.len = h->fhandle3_len;
    memcpy(r->fh.val, h->fhandle3_val, r->fh.len);
    r->ok = 1;
}

static void on_sync_lookup(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct sync_res *r = priv;
    LOOKUP3res *res = data;
    r->done = 1;
    if (status != RPC_STATUS_SUCCESS) { fprintf(stderr, "LOOKUP: %s\n", rpc_get_error(rpc)); return; }
    if (res->status != NFS3_OK) { fprintf(stderr, "LOOKUP: status %d\n", res->status); return; }
    r->ok = copy_fh(&r->fh, &res->LOOKUP3res_u.resok.object) == 0;
}

static void on_sync_create(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct sync_res *r = priv;
    CREATE3res *res = data;
    r->done = 1;
    if (status != RPC_STATUS_SUCCESS) { fprintf(stderr, "CREATE: %s\n", rpc_get_error(rpc)); return; }
    if (res->status != NFS3_OK) { fprintf(stderr, "CREATE: status %d\n", res->status); return; }
    post_op_fh3 *h = &res->CREATE3res_u.resok.obj;
    r->ok = h->handle_follows && copy_fh(&r->fh, &h->post_op_fh3_u.handle) == 0;
    if (!r->ok) fprintf(stderr, "CREATE: no handle returned\n");
}

static void on_sync_fsinfo(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct sync_res *r = priv;
    FSINFO3res *res = data;
    r->done = 1;
    if (status != RPC_STATUS_SUCCESS) { fprintf(stderr, "FSINFO: %s\n", rpc_get_error(rpc)); return; }
    if (res->status != NFS3_OK) { fprintf(stderr, "FSINFO: status %d\n", res->status); return; }
    r->rtmax = res->FSINFO3res_u.resok.rtmax;
    r->wtmax = res->FSINFO3res_u.resok.wtmax;
    r->ok = 1;
}

static int sync_lookup(struct rpc_context *rpc, struct fh *dir, const char *name, struct fh *out)
{
    struct sync_res r = { 0 };
    LOOKUP3args a;
    a.what.dir = as_fh3(dir);
    a.what.name = (char *)name;
    if (rpc_nfs3_lookup_async(rpc, on_sync_lookup, &a, &r) != 0 || sync_wait(rpc, &r.done, 10) || !r.ok) {
        fprintf(stderr, "lookup of %s failed\n", name);
        return -1;
    }
    *out = r.fh;
    return 0;
}

static int sync_create(struct rpc_context *rpc, struct fh *dir, const char *name, struct fh *out)
{
    struct sync_res r = { 0 };
    CREATE3args a;
    memset(&a, 0, sizeof(a));
    a.where.dir = as_fh3(dir);
    a.where.name = (char *)name;
    a.how.mode = UNCHECKED;
    a.how.createhow3_u.obj_attributes.mode.set_it = 1;
    a.how.createhow3_u.obj_attributes.mode.set_mode3_u.mode = 0644;
    if (rpc_nfs3_create_async(rpc, on_sync_create, &a, &r) != 0 || sync_wait(rpc, &r.done, 10) || !r.ok) {
        fprintf(stderr, "create of %s failed\n", name);
        return -1;
    }
    *out = r.fh;
    return 0;
}

static int connect_sync(struct rpc_context *rpc, const char *server, int port, int prog, int vers)
{
    struct sync_res r = { 0 };
    int e = port ? rpc_connect_port_async(rpc, server, port, prog, vers, on_sync_connect, &r)
                 : rpc_connect_program_async(rpc, server, prog, vers, on_sync_connect, &r);
    if (e != 0) { fprintf(stderr, "connect: %s\n", rpc_get_error(rpc)); return -1; }
    if (sync_wait(rpc, &r.done, 10) || !r.ok) return -1;
    return 0;
}

/* ---- the measured loop ---- */

static void start_op(struct client *c);

static void done_op(struct client *c, uint64_t moved)
{
    ops++;
    bytes += moved;
    if (nsamples < MAX_SAMPLES) samples[nsamples++] = (now() - c->started) * 1e6;
}

static void next(struct client *c)
{
    c->busy = 0;
    start_op(c);
}

static void on_read(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    READ3res *res = data;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK) {
        fail(c, "READ", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
    } else {
        uint32_t n = res->READ3res_u.resok.count;
        if (n == 0 && !res->READ3res_u.resok.eof) {
            fail(c, "READ (short, no eof)", status, 0);
        } else if (n == 0) {
            c->offset = 0; /* the file is shorter than it should be: start again */
            fail(c, "READ (empty at eof)", status, 0);
        } else {
            done_op(c, n);
            if (mode == M_READ) {
                c->offset += n;
                if (res->READ3res_u.resok.eof || c->offset >= file_bytes) c->offset = 0;
            }
        }
    }
    next(c);
}

static void on_commit(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    COMMIT3res *res = data;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK)
        fail(c, "COMMIT", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
    c->committing = 0;
    next(c);
}

static void start_commit(struct client *c)
{
    COMMIT3args a;
    a.file = as_fh3(&c->file);
    a.offset = 0;
    a.count = 0;
    c->committing = 1;
    c->busy = 1;
    if (rpc_nfs3_commit_async(c->rpc, on_commit, &a, c) != 0) {
        fail(c, "COMMIT send", 1, 0);
        c->failed = 1;
        c->busy = 0;
    }
}

static void on_write(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    WRITE3res *res = data;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK) {
        fail(c, "WRITE", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
        next(c);
        return;
    }
    uint32_t n = res->WRITE3res_u.resok.count;
    if (n == 0) {
        fail(c, "WRITE (nothing written)", status, 0);
        next(c);
        return;
    }
    done_op(c, n);
    c->offset += n;
    if (c->offset >= file_bytes) {
        c->offset = 0;
        c->seq++; /* ask for a commit before the next write */
    }
    next(c);
}

static void on_getattr(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    GETATTR3res *res = data;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK)
        fail(c, "GETATTR", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
    else
        done_op(c, 0);
    next(c);
}

static void on_lookup(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    LOOKUP3res *res = data;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK)
        fail(c, "LOOKUP", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
    else
        done_op(c, 0);
    next(c);
}

static void on_remove(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    REMOVE3res *res = data;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK)
        fail(c, "REMOVE", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
    else
        done_op(c, 0);
    next(c);
}

static void on_create(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    CREATE3res *res = data;
    if (status != RPC_STATUS_SUCCESS || res->status != NFS3_OK) {
        fail(c, "CREATE", status, status == RPC_STATUS_SUCCESS ? (int)res->status : 0);
        next(c);
        return;
    }
    REMOVE3args a;
    a.object.dir = as_fh3(&root_fh);
    a.object.name = c->name;
    if (rpc_nfs3_remove_async(rpc, on_remove, &a, c) != 0) {
        fail(c, "REMOVE send", 1, 0);
        c->failed = 1;
        c->busy = 0;
    }
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void start_op(struct client *c)
{
    int r = 0;
    if (c->failed || stop_all) return;
    if (mode == M_WRITE && c->seq > 0) {
        /* a wrap asked for a commit; at the deadline, the final one */
        c->seq = 0;
        start_commit(c);
        return;
    }
    if (now() >= deadline) {
        if (mode == M_WRITE && c->offset > 0 && !c->committing) {
            c->offset = 0;
            start_commit(c);
        }
        return;
    }
    c->started = now();
    c->busy = 1;
    switch (mode) {
    case M_READ:
    case M_RANDREAD: {
        READ3args a;
        a.file = as_fh3(&c->file);
        if (mode == M_RANDREAD)
            c->offset = (xorshift(&c->rng) % (file_bytes / io_size)) * io_size;
        a.offset = c->offset;
        a.count = io_size;
        r = rpc_nfs3_read_async(c->rpc, on_read, &a, c);
        break;
    }
    case M_WRITE: {
        WRITE3args a;
        a.file = as_fh3(&c->file);
        a.offset = c->offset;
        a.count = io_size;
        a.stable = UNSTABLE;
        a.data.data_len = io_size;
        a.data.data_val = wbuf;
        r = rpc_nfs3_write_async(c->rpc, on_write, &a, c);
        break;
    }
    case M_GETATTR: {
        GETATTR3args a;
        a.object = as_fh3(&c->file);
        r = rpc_nfs3_getattr_async(c->rpc, on_getattr, &a, c);
        break;
    }
    case M_LOOKUP:
    case M_LOOKUPMANY: {
        LOOKUP3args a;
        if (mode == M_LOOKUPMANY) {
            if (lookup_next >= lookup_count) { c->busy = 0; return; }
            snprintf(c->name, sizeof(c->name), "f%ld", lookup_next++);
            a.what.dir = as_fh3(&dir_fh);
        } else {
            a.what.dir = as_fh3(&root_fh);
        }
        a.what.name = c->name;
        r = rpc_nfs3_lookup_async(c->rpc, on_lookup, &a, c);
        break;
    }
    case M_CREATE: {
        CREATE3args a;
        memset(&a, 0, sizeof(a));
        snprintf(c->name, sizeof(c->name), "cr-%d-%d-%" PRIu64, (int)getpid(), c->id, c->seq++);
        a.where.dir = as_fh3(&root_fh);
        a.where.name = c->name;
        a.how.mode = UNCHECKED;
        a.how.createhow3_u.obj_attributes.mode.set_it = 1;
        a.how.createhow3_u.obj_attributes.mode.set_mode3_u.mode = 0644;
        r = rpc_nfs3_create_async(c->rpc, on_create, &a, c);
        break;
    }
    }
    if (r != 0) {
        fail(c, "send", 1, 0);
        c->failed = 1;
        c->busy = 0;
    }
}

static void on_connect(struct rpc_context *rpc, int status, void *data, void *priv)
{
    struct client *c = priv;
    (void)rpc;
    if (status != RPC_STATUS_SUCCESS) {
        fprintf(stderr, "client %d: connect failed: %s\n", c->id, data ? (char *)data : "?");
        c->failed = 1;
        errors++;
        return;
    }
    c->connected = 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *server = "127.0.0.1", *label = "nfs", *export = NULL, *mode_name = NULL;
    int nfs_port = 0, mount_port = 0, nclients = 1;
    double seconds = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "%s needs a value\n", a); return 2; }
        if (!strcmp(a, "--server")) server = v;
        else if (!strcmp(a, "--nfs-port")) nfs_port = atoi(v);
        else if (!strcmp(a, "--mount-port")) mount_port = atoi(v);
        else if (!strcmp(a, "--export")) export = v;
        else if (!strcmp(a, "--mode")) mode_name = v;
        else if (!strcmp(a, "--clients")) nclients = atoi(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--io-size")) io_size = (uint32_t)atol(v);
        else if (!strcmp(a, "--file-mib")) file_bytes = (uint64_t)atol(v) << 20;
        else if (!strcmp(a, "--count")) lookup_count = atol(v);
        else if (!strcmp(a, "--label")) label = v;
        else { fprintf(stderr, "unknown option %s\n", a); return 2; }
        i++;
    }
    int found = 0;
    for (int m = 0; mode_name && m <= M_LOOKUPMANY; m++)
        if (!strcmp(mode_name, mode_names[m])) { mode = (enum mode)m; found = 1; }
    if (!found || !export) { fprintf(stderr, "need --export PATH and --mode read|write|randread|getattr|lookup|create|lookupmany\n"); return 2; }
    if (nclients < 1 || nclients > MAX_CLIENTS) { fprintf(stderr, "1..%d clients\n", MAX_CLIENTS); return 2; }
    if (io_size < 512 || io_size > (1u << 24) || file_bytes < io_size || lookup_count < 1) { fprintf(stderr, "bad sizes\n"); return 2; }

    /* Mount, check the transfer sizes, find or create every client's file. */
    struct rpc_context *setup = rpc_init_context();
    if (!setup || connect_sync(setup, server, mount_port, MOUNT_PROGRAM, MOUNT_V3)) return 1;
    struct sync_res m = { 0 };
    if (rpc_mount3_mnt_async(setup, on_mnt, (char *)export, &m) != 0 || sync_wait(setup, &m.done, 10) || !m.ok) {
        fprintf(stderr, "mount of %s failed\n", export);
        return 1;
    }
    root_fh = m.fh;
    rpc_destroy_context(setup);
    setup = rpc_init_context();
    if (!setup || connect_sync(setup, server, nfs_port, NFS_PROGRAM, NFS_V3)) return 1;
    struct sync_res fi = { 0 };
    FSINFO3args fa;
    fa.fsroot = as_fh3(&root_fh);
    if (rpc_nfs3_fsinfo_async(setup, on_sync_fsinfo, &fa, &fi) != 0 || sync_wait(setup, &fi.done, 10) || !fi.ok)
        return 1;
    if ((mode == M_READ || mode == M_RANDREAD) && fi.rtmax < io_size) {
        fprintf(stderr, "server's rtmax %u is below --io-size %u\n", fi.rtmax, io_size);
        return 1;
    }
    if (mode == M_WRITE && fi.wtmax < io_size) {
        fprintf(stderr, "server's wtmax %u is below --io-size %u\n", fi.wtmax, io_size);
        return 1;
    }
    if (mode == M_LOOKUPMANY && sync_lookup(setup, &root_fh, "many", &dir_fh)) return 1;

    samples = calloc(MAX_SAMPLES, sizeof(double));
    struct client *cl = calloc(nclients, sizeof(struct client));
    struct pollfd *pfd = calloc(nclients, sizeof(struct pollfd));
    wbuf = malloc(io_size);
    if (!samples || !cl || !pfd || !wbuf) return 1;
    for (uint32_t i = 0; i < io_size; i++) wbuf[i] = (char)(i * 7 + 1);
    for (int i = 0; i < nclients; i++) {
        struct client *c = &cl[i];
        c->id = i;
        c->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(i + 1) << 32) ^ (uint64_t)getpid();
        if (mode == M_WRITE) {
            snprintf(c->name, sizeof(c->name), "bench-w-%d", i);
            if (sync_create(setup, &root_fh, c->name, &c->file)) return 1;
        } else if (mode != M_CREATE && mode != M_LOOKUPMANY) {
            snprintf(c->name, sizeof(c->name), "bench-%d", i);
            if (sync_lookup(setup, &root_fh, c->name, &c->file)) return 1;
        }
    }
    rpc_destroy_context(setup);

    for (int i = 0; i < nclients; i++) {
        cl[i].rpc = rpc_init_context();
        if (!cl[i].rpc) return 1;
        int r = nfs_port ? rpc_connect_port_async(cl[i].rpc, server, nfs_port, NFS_PROGRAM, NFS_V3, on_connect, &cl[i])
                         : rpc_connect_program_async(cl[i].rpc, server, NFS_PROGRAM, NFS_V3, on_connect, &cl[i]);
        if (r != 0) { fprintf(stderr, "connect: %s\n", rpc_get_error(cl[i].rpc)); return 1; }
    }
    double connect_deadline = now() + 10, t0 = 0;
    int started = 0;
    for (;;) {
        int nconnected = 0, nfailed = 0, busy = 0;
        for (int i = 0; i < nclients; i++) {
            nconnected += cl[i].connected;
            nfailed += cl[i].failed;
            busy |= cl[i].busy;
        }
        if (!started && nconnected == nclients) {
            started = 1;
            t0 = now();
            deadline = t0 + seconds;
            for (int i = 0; i < nclients; i++) start_op(&cl[i]);
            continue;
        }
        if (!started && (nfailed > 0 || now() > connect_deadline)) { fprintf(stderr, "connect failed or timed out\n"); return 1; }
        if (started && !busy) break; /* all done: deadline passed, commits answered, or every name looked up */
        if (started && now() > deadline + 30) { fprintf(stderr, "requests still unanswered 30 s after the end\n"); errors++; break; }
        for (int i = 0; i < nclients; i++) {
            pfd[i].fd = rpc_get_fd(cl[i].rpc);
            pfd[i].events = rpc_which_events(cl[i].rpc);
            pfd[i].revents = 0;
        }
        if (poll(pfd, nclients, 100) < 0 && errno != EINTR) { perror("poll"); return 1; }
        for (int i = 0; i < nclients; i++) {
            /* Only a connection with an event: libnfs's rpc_service also scans all
             * of a context's pending-reply buckets for timeouts on every call, and
             * doing that for every idle connection at every wake-up took half the
             * driver's CPU, taken from the server on the same cores. No timeout is
             * set here; a server that never answers ends the run at the deadline. */
            if (pfd[i].revents == 0) continue;
            if (rpc_service(cl[i].rpc, pfd[i].revents) < 0 && !cl[i].failed) {
                fprintf(stderr, "client %d: %s\n", i, rpc_get_error(cl[i].rpc));
                cl[i].failed = 1;
                cl[i].busy = 0;
                errors++;
            }
        }
    }
    double elapsed = now() - t0;
    qsort(samples, nsamples, sizeof(double), cmp_double);
    double p50 = nsamples ? samples[nsamples / 2] : 0;
    double p99 = nsamples ? samples[(long)(nsamples * 0.99)] : 0;
    printf("%s %s %d %ld %.2f %.1f %.1f %.1f %.1f %ld\n", label, mode_names[mode], nclients, ops, elapsed,
           ops / elapsed, bytes / elapsed / (1 << 20), p50, p99, errors);
    if (mode == M_LOOKUPMANY && ops != lookup_count) {
        fprintf(stderr, "looked up %ld of %ld names\n", ops, lookup_count);
        return 1;
    }
    return errors > 0 || ops == 0 ? 1 : 0;
}
