/*
 * An NLM client host built on libnfs alone, for the failover test: its NLM v4 calls are
 * libnfs's raw client calls, and its status monitor and portmapper are libnfs server
 * contexts (UDP) answering SM_NOTIFY and PMAP GETPORT, so the server finds and notifies
 * it as it would any host.
 *
 * Usage: libnfs_ha_client NAME ADDRESS PORT FH_HEX
 *   NAME     the host's name (caller_name and owner handle)
 *   ADDRESS  the host's own address: the portmapper listens on ADDRESS:111, the status
 *            monitor on ADDRESS:<any>
 *   PORT     the NLM port of the servers
 *   FH_HEX   the file handle the locks are on
 * Commands, one a line on stdin:
 *   lock SERVER OFFSET RECLAIM   LOCK (exclusive, not blocking) of byte OFFSET over a new
 *                                TCP connection to SERVER:PORT; prints "LOCK stat=N"
 *   quit
 * Every SM_NOTIFY received prints "NOTIFY name=MON_NAME state=N"; "READY port=N" is
 * printed once the services listen.
 */
#include <sys/time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nlm.h>
#include <nfsc/libnfs-raw-nsm.h>
#include <nfsc/libnfs-raw-portmap.h>

#define IPPROTO_UDP_NUM 17

static int nsm_port;
static int done;
static int lock_status;

static int udp_socket(const char *addr, int port)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0)
		return -1;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1)
		return -1;
	if (bind(s, (struct sockaddr *)&sin, sizeof(sin)) != 0)
		return -1;
	if (getsockname(s, (struct sockaddr *)&sin, &len) != 0)
		return -1;
	if (port == 0)
		nsm_port = ntohs(sin.sin_port);
	return s;
}

static int sm_null(struct rpc_context *rpc, struct rpc_msg *call)
{
	return rpc_send_reply(rpc, call, NULL, (zdrproc_t)zdr_void, 0);
}

/* SM_NOTIFY's arguments into a fixed buffer: libnfs 4.0's own zdr_NSM1_NOTIFYargs crashes
 * when a server context decodes the string (it has no memory to put it in). */
struct notify_args {
	char mon_name[1025];
	int state;
};

static bool_t decode_notify(ZDR *zdrs, struct notify_args *a)
{
	uint32_t len;
	if (!zdr_u_int(zdrs, &len) || len > 1024)
		return FALSE;
	if (!zdr_opaque(zdrs, a->mon_name, len))
		return FALSE;
	a->mon_name[len] = 0;
	return zdr_int(zdrs, &a->state);
}

static int sm_notify(struct rpc_context *rpc, struct rpc_msg *call)
{
	struct notify_args *a = call->body.cbody.args;
	printf("NOTIFY name=%s state=%d\n", a->mon_name, a->state);
	fflush(stdout);
	return rpc_send_reply(rpc, call, NULL, (zdrproc_t)zdr_void, 0);
}

static struct service_proc sm_procs[] = {
	{ NSM1_NULL, sm_null, (zdrproc_t)zdr_void, 0 },
	{ NSM1_NOTIFY, sm_notify, (zdrproc_t)decode_notify, sizeof(struct notify_args) },
};

static int pmap_null(struct rpc_context *rpc, struct rpc_msg *call)
{
	return rpc_send_reply(rpc, call, NULL, (zdrproc_t)zdr_void, 0);
}

/* Only the status monitor, over UDP, is registered here. */
static int pmap_getport(struct rpc_context *rpc, struct rpc_msg *call)
{
	pmap2_mapping *m = call->body.cbody.args;
	uint32_t port = 0;
	if (m->prog == NSM_PROGRAM && m->vers == NSM_V1 && m->prot == IPPROTO_UDP_NUM)
		port = nsm_port;
	return rpc_send_reply(rpc, call, &port, (zdrproc_t)zdr_uint32_t, sizeof(port));
}

static struct service_proc pmap_procs[] = {
	{ PMAP2_NULL, pmap_null, (zdrproc_t)zdr_void, 0 },
	{ PMAP2_GETPORT, pmap_getport, (zdrproc_t)zdr_pmap2_mapping, sizeof(pmap2_mapping) },
};

static void connected(struct rpc_context *rpc, int status, void *data, void *priv)
{
	(void)rpc;
	(void)data;
	(void)priv;
	lock_status = status == RPC_STATUS_SUCCESS ? 0 : -1;
	done = 1;
}

static void lock_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	NLM4_LOCKres *r = data;
	(void)rpc;
	(void)priv;
	lock_status = status == RPC_STATUS_SUCCESS ? (int)r->status : -1;
	done = 1;
}

/* Runs `rpc` until the pending call is done, serving the status monitor and portmapper
 * meanwhile, for at most 10 s. */
static int wait_call(struct rpc_context *rpc, struct rpc_context *sm, struct rpc_context *pm)
{
	int waited = 0;
	while (!done) {
		struct pollfd p[3] = {
			{ rpc_get_fd(rpc), rpc_which_events(rpc), 0 },
			{ rpc_get_fd(sm), POLLIN, 0 },
			{ rpc_get_fd(pm), POLLIN, 0 },
		};
		int n = poll(p, 3, 100);
		if (n < 0)
			return -1;
		if (n == 0 && (waited += 100) >= 10000)
			return -1;
		if (p[0].revents && rpc_service(rpc, p[0].revents) < 0)
			return -1;
		if (p[1].revents)
			rpc_service(sm, p[1].revents);
		if (p[2].revents)
			rpc_service(pm, p[2].revents);
	}
	done = 0;
	return 0;
}

static int unhex(const char *s, char *out, int max)
{
	int n = 0;
	while (s[0] && s[1] && n < max) {
		unsigned v;
		if (sscanf(s, "%2x", &v) != 1)
			return -1;
		out[n++] = (char)v;
		s += 2;
	}
	return n;
}

static int lock(char *name, const char *server, int port, char *fh, int fhlen, uint64_t off,
		int reclaim, struct rpc_context *sm, struct rpc_context *pm)
{
	struct rpc_context *rpc = rpc_init_context();
	int st;
	if (rpc == NULL)
		return -1;
	lock_status = -1;
	if (rpc_connect_async(rpc, server, port, connected, NULL) != 0 ||
	    wait_call(rpc, sm, pm) != 0 || lock_status != 0) {
		rpc_destroy_context(rpc);
		return -1;
	}
	nlm4_lock lk;
	memset(&lk, 0, sizeof(lk));
	lk.caller_name = name;
	lk.fh.data.data_len = fhlen;
	lk.fh.data.data_val = fh;
	lk.oh = name;
	lk.svid = 7;
	lk.l_offset = off;
	lk.l_len = 1;
	NLM4_LOCKargs a;
	memset(&a, 0, sizeof(a));
	a.cookie.data.data_len = 4;
	a.cookie.data.data_val = "ha-1";
	a.block = 0;
	a.exclusive = 1;
	a.lock = lk;
	a.reclaim = reclaim;
	a.state = 1;
	if (rpc_nlm4_lock_async(rpc, lock_cb, &a, NULL) != 0 || wait_call(rpc, sm, pm) != 0)
		st = -1;
	else
		st = lock_status;
	rpc_destroy_context(rpc);
	return st;
}

int main(int argc, char **argv)
{
	char fh[128], line[256];
	int fhlen, port, s_sm, s_pm;
	struct rpc_context *sm, *pm;

	if (argc != 5)
		return 2;
	port = atoi(argv[3]);
	fhlen = unhex(argv[4], fh, sizeof(fh));
	if (fhlen <= 0)
		return 2;
	s_sm = udp_socket(argv[2], 0);
	s_pm = udp_socket(argv[2], 111);
	if (s_sm < 0 || s_pm < 0) {
		perror("bind");
		return 2;
	}
	sm = rpc_init_server_context(s_sm);
	pm = rpc_init_server_context(s_pm);
	if (sm == NULL || pm == NULL ||
	    rpc_register_service(sm, NSM_PROGRAM, NSM_V1, sm_procs, 2) != 0 ||
	    rpc_register_service(pm, PMAP_PROGRAM, PMAP_V2, pmap_procs, 2) != 0) {
		fprintf(stderr, "libnfs server contexts failed\n");
		return 2;
	}
	printf("READY port=%d\n", nsm_port);
	fflush(stdout);
	for (;;) {
		struct pollfd p[3] = {
			{ 0, POLLIN, 0 },
			{ s_sm, POLLIN, 0 },
			{ s_pm, POLLIN, 0 },
		};
		if (poll(p, 3, -1) < 0)
			return 3;
		if (p[1].revents)
			rpc_service(sm, p[1].revents);
		if (p[2].revents)
			rpc_service(pm, p[2].revents);
		if (!p[0].revents)
			continue;
		if (fgets(line, sizeof(line), stdin) == NULL || strncmp(line, "quit", 4) == 0)
			return 0;
		char server[64];
		unsigned long long off;
		int reclaim;
		if (sscanf(line, "lock %63s %llu %d", server, &off, &reclaim) == 3) {
			printf("LOCK stat=%d\n", lock(argv[1], server, port, fh, fhlen, off, reclaim,
						      sm, pm));
		} else {
			printf("ERROR unknown command\n");
		}
		fflush(stdout);
	}
}
