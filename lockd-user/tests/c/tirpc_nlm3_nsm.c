/*
 * NLM v1/v3 and NSM calls made with C stubs that rpcgen generates from the system's
 * nlm_prot.x and sm_inter.x (libtirpc), against the lockd-user server on 127.0.0.1:PORT.
 * Each result is printed on one line for the Rust test to check; the argument values are
 * fixed here and checked on the server side.
 */
#include <arpa/inet.h>
#include <rpc/rpc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nlm_prot.h"
#include "sm_inter.h"

static CLIENT *connect_to(int port, unsigned long prog, unsigned long vers)
{
	struct sockaddr_in a;
	int sock = RPC_ANYSOCK;
	struct timeval tv = { 5, 0 };
	CLIENT *c;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c = clnttcp_create(&a, prog, vers, &sock, 0, 0);
	if (c == NULL) {
		clnt_pcreateerror("clnttcp_create");
		exit(2);
	}
	clnt_control(c, CLSET_TIMEOUT, (char *)&tv);
	return c;
}

#define CHECK(c, r, what) do { if ((r) == NULL) { clnt_perror((c), (what)); exit(1); } } while (0)

static void print_res(const char *what, nlm_res *r)
{
	printf("%s stat=%d cookie=%.*s\n", what, r->stat.stat, (int)r->cookie.n_len, r->cookie.n_bytes);
}

int main(int argc, char **argv)
{
	int port;
	char fh[32];
	CLIENT *c1, *c3, *sm;

	if (argc != 2)
		return 2;
	port = atoi(argv[1]);
	memset(fh, 0xf1, sizeof(fh));

	nlm_lock lk = { "cclient", { 32, fh }, { 3, "own" }, 77, 100, 200 };

	c1 = connect_to(port, NLM_PROG, NLM_VERS);
	{
		nlm_testargs a = { { 2, "c1" }, 1, lk };
		nlm_testres *r = nlm_test_1(&a, c1);
		CHECK(c1, r, "NLM_TEST");
		printf("TEST stat=%d", r->stat.stat);
		if (r->stat.stat == nlm_denied) {
			nlm_holder *h = &r->stat.nlm_testrply_u.holder;
			printf(" exclusive=%d svid=%d oh=%.*s off=%u len=%u", h->exclusive, h->svid,
			       (int)h->oh.n_len, h->oh.n_bytes, h->l_offset, h->l_len);
		}
		printf(" cookie=%.*s\n", (int)r->cookie.n_len, r->cookie.n_bytes);
	}
	{
		nlm_lockargs a = { { 2, "c2" }, 1, 0, lk, 1, 5 };
		nlm_res *r = nlm_lock_1(&a, c1);
		CHECK(c1, r, "NLM_LOCK");
		print_res("LOCK", r);
	}
	{
		nlm_cancargs a = { { 2, "c3" }, 1, 1, lk };
		nlm_res *r = nlm_cancel_1(&a, c1);
		CHECK(c1, r, "NLM_CANCEL");
		print_res("CANCEL", r);
	}
	{
		nlm_unlockargs a = { { 2, "c4" }, lk };
		nlm_res *r = nlm_unlock_1(&a, c1);
		CHECK(c1, r, "NLM_UNLOCK");
		print_res("UNLOCK", r);
	}
	{
		nlm_testargs a = { { 2, "c5" }, 0, lk };
		nlm_res *r = nlm_granted_1(&a, c1);
		CHECK(c1, r, "NLM_GRANTED");
		print_res("GRANTED", r);
	}

	c3 = connect_to(port, NLM_PROG, NLM_VERSX);
	{
		nlm_shareargs a = { { 2, "c6" }, { "cclient", { 32, fh }, { 3, "own" }, fsm_DW, fsa_RW }, 0 };
		nlm_shareres *r = nlm_share_3(&a, c3);
		CHECK(c3, r, "NLM_SHARE");
		printf("SHARE stat=%d seq=%d cookie=%.*s\n", r->stat, r->sequence, (int)r->cookie.n_len,
		       r->cookie.n_bytes);
		a.cookie.n_bytes = "c7";
		a.share.mode = fsm_DN;
		a.share.access = fsa_R;
		r = nlm_unshare_3(&a, c3);
		CHECK(c3, r, "NLM_UNSHARE");
		printf("UNSHARE stat=%d seq=%d cookie=%.*s\n", r->stat, r->sequence, (int)r->cookie.n_len,
		       r->cookie.n_bytes);
	}
	{
		nlm_lockargs a = { { 2, "c8" }, 0, 1, lk, 0, 6 };
		nlm_res *r = nlm_nm_lock_3(&a, c3);
		CHECK(c3, r, "NLM_NM_LOCK");
		print_res("NM_LOCK", r);
	}
	{
		nlm_notify a = { "cclient", 9 };
		void *r = nlm_free_all_3(&a, c3);
		CHECK(c3, r, "NLM_FREE_ALL");
		printf("FREE_ALL ok\n");
	}

	sm = connect_to(port, SM_PROG, SM_VERS);
	{
		sm_name a = { "peerhost" };
		sm_stat_res *r = sm_stat_1(&a, sm);
		CHECK(sm, r, "SM_STAT");
		printf("SM_STAT res=%d state=%d\n", r->res_stat, r->state);
	}
	{
		mon a;
		memset(&a, 0, sizeof(a));
		a.mon_id.mon_name = "peerhost";
		a.mon_id.my_id.my_name = "cclient";
		a.mon_id.my_id.my_prog = 100021;
		a.mon_id.my_id.my_vers = 4;
		a.mon_id.my_id.my_proc = 16;
		memcpy(a.priv, "0123456789abcdef", 16);
		sm_stat_res *r = sm_mon_1(&a, sm);
		CHECK(sm, r, "SM_MON");
		printf("SM_MON res=%d state=%d\n", r->res_stat, r->state);
		sm_stat *s = sm_unmon_1(&a.mon_id, sm);
		CHECK(sm, s, "SM_UNMON");
		printf("SM_UNMON state=%d\n", s->state);
		s = sm_unmon_all_1(&a.mon_id.my_id, sm);
		CHECK(sm, s, "SM_UNMON_ALL");
		printf("SM_UNMON_ALL state=%d\n", s->state);
		void *v = sm_simu_crash_1(NULL, sm);
		CHECK(sm, v, "SM_SIMU_CRASH");
		printf("SM_SIMU_CRASH ok\n");
	}
	clnt_destroy(c1);
	clnt_destroy(c3);
	clnt_destroy(sm);
	return 0;
}
