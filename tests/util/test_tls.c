/*
 * tests/util/test_tls.c - util/tls: real wolfSSL handshakes between a
 * client and a server conn in one process (the test moves the bytes, in
 * whole spans or small random pieces), verification results, garbage
 * input, buffer bounds, a raw wolfSSL client as the hostile peer our API
 * cannot play, threads sharing a ctx, and interop with the openssl CLI
 * over loopback (skipped when openssl is missing).
 *
 * Test threads only; runs from tests/, fixtures in tests/data/.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
/* As in util/tls.c: wolfSSL's XSPRINTF would name poisoned sprintf. */
#define XSPRINTF coremta_no_sprintf
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "util/util.h"
#include "util/tls.h"

#define CERT "data/tls-localhost.pem"
#define KEY "data/tls-localhost.key"
#define OTHER_CERT "data/tls-other.pem"
#define OTHER_KEY "data/tls-other.key"

static void suite_init(void)
{
	cr_assert_eq(tls_global_init(), 0);
}

static void suite_fini(void)
{
	tls_global_cleanup();
}

TestSuite(tls, .init = suite_init, .fini = suite_fini);

/* ------------------------------------------------------------------ */
/* In-process pair                                                     */

struct pair {
	struct tls_ctx *sctx, *cctx;
	struct tls_conn *s, *c;
	uint64_t rng;
	size_t piece;		/* 0: whole spans; else 1..piece bytes */
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static struct tls_ctx *server_ctx(unsigned max_version)
{
	char err[256];
	struct tls_ctx *ctx = tls_ctx_server_new(CERT, KEY, NULL,
						 TLS_VERSION_1_2, max_version,
						 err, sizeof(err));

	cr_assert_not_null(ctx, "server ctx: %s", err);
	return ctx;
}

static struct tls_ctx *client_ctx(bool verify, const char *ca)
{
	char err[256];
	struct tls_ctx *ctx = tls_ctx_client_new(verify, ca, err, sizeof(err));

	cr_assert_not_null(ctx, "client ctx: %s", err);
	return ctx;
}

static void pair_open(struct pair *p, unsigned max_version, const char *ca,
		      bool verify, const char *peer_name, size_t piece)
{
	memset(p, 0, sizeof(*p));
	p->sctx = server_ctx(max_version);
	p->cctx = client_ctx(verify, ca);
	p->s = tls_conn_new(p->sctx, NULL);
	p->c = tls_conn_new(p->cctx, peer_name);
	cr_assert_not_null(p->s);
	cr_assert_not_null(p->c);
	p->rng = 0x9e3779b97f4a7c15ull ^ piece;
	p->piece = piece;
}

static void pair_close(struct pair *p)
{
	tls_conn_free(p->c);
	tls_conn_free(p->s);
	tls_ctx_free(p->cctx);
	tls_ctx_free(p->sctx);
}

/* move_piece - one piece of from's output into to; bytes moved. */
static size_t move_piece(struct pair *p, struct tls_conn *from,
			 struct tls_conn *to)
{
	size_t len, n;
	const void *v = tls_conn_output(from, &len);
	int rc;

	if (!v)
		return 0;
	cr_assert_gt(len, 0);
	n = len;
	if (p->piece)
		n = 1 + rnd(&p->rng) % p->piece;
	if (n > len)
		n = len;
	rc = tls_conn_feed(to, v, n);
	if (rc == -ENOBUFS)
		return 0;
	cr_assert_eq(rc, 0, "feed: %d", rc);
	tls_conn_output_consumed(from, n);
	return n;
}

/* handshake - run both sides to completion; returns 0 or the failure. */
static int handshake(struct pair *p, int *client_rc, int *server_rc)
{
	for (int i = 0; i < 200000; i++) {
		int rc = tls_conn_handshake(p->c);
		int rs = tls_conn_handshake(p->s);
		size_t moved;

		*client_rc = rc;
		*server_rc = rs;
		if ((rc && rc != -EAGAIN) || (rs && rs != -EAGAIN))
			return rc && rc != -EAGAIN ? rc : rs;
		moved = move_piece(p, p->c, p->s) + move_piece(p, p->s, p->c);
		if (!moved && !rc && !rs)
			return 0;
		cr_assert(moved, "handshake stalled: client %d server %d", rc,
			  rs);
	}
	cr_assert_fail("handshake did not finish");
	return -1;
}

static void handshake_ok(struct pair *p)
{
	int rc, rs;

	cr_assert_eq(handshake(p, &rc, &rs), 0, "client %d (%s) server %d (%s)",
		     rc, tls_conn_error(p->c), rs, tls_conn_error(p->s));
}

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 31 + (i >> 9) + 7);
}

/* transfer - len pattern bytes from -> to through both conns. */
static void transfer(struct pair *p, struct tls_conn *from,
		     struct tls_conn *to, size_t len)
{
	unsigned char *src = xmalloc(len), *dst = xmalloc(len);
	unsigned char buf[20000];
	size_t sent = 0, got = 0;

	for (size_t i = 0; i < len; i++)
		src[i] = pattern(i);
	for (long iter = 0; got < len; iter++) {
		size_t moved;
		ssize_t r;

		cr_assert_lt(iter, 5000000, "transfer stalled at %zu", got);
		if (sent < len) {
			ssize_t w = tls_conn_write(from, src + sent,
						   len - sent);

			cr_assert(w > 0 || w == -EAGAIN, "write %zd", w);
			if (w > 0)
				sent += (size_t)w;
		}
		cr_assert_leq(tls_conn_pending_output(from),
			      TLS_BUF_CAP + 64 * 1024);
		moved = move_piece(p, from, to) + move_piece(p, to, from);
		/* The reader may hold protocol output (tickets): drain it. */
		while ((r = tls_conn_read(to, buf, sizeof(buf))) > 0) {
			cr_assert_leq(got + (size_t)r, len);
			memcpy(dst + got, buf, (size_t)r);
			got += (size_t)r;
		}
		cr_assert_eq(r, -EAGAIN, "read %zd: %s", r,
			     tls_conn_error(to));
		/* Keep the sender's input drained too (TLS 1.3 tickets). */
		r = tls_conn_read(from, buf, sizeof(buf));
		cr_assert_eq(r, -EAGAIN, "sender read %zd", r);
		(void)moved;
	}
	cr_assert_eq(memcmp(src, dst, len), 0, "data corrupted");
	free(src);
	free(dst);
}

/* Parameters: indices only (Criterion re-execs; no pointers). */
struct hs_param {
	int tls13;		/* 1: TLS 1.3, 0: server capped at 1.2 */
	int piece;		/* 0 whole spans, else max piece size */
};

ParameterizedTestParameters(tls, handshake_and_data)
{
	static struct hs_param params[] = {
		{ 1, 0 }, { 1, 7 }, { 1, 3000 },
		{ 0, 0 }, { 0, 7 }, { 0, 3000 },
	};

	return cr_make_param_array(struct hs_param, params,
				   ARRAY_SIZE(params));
}

ParameterizedTest(struct hs_param *prm, tls, handshake_and_data)
{
	struct pair p;
	char line[64];
	ssize_t r;

	pair_open(&p, prm->tls13 ? 0 : TLS_VERSION_1_2, CERT, false,
		  "localhost", (size_t)prm->piece);
	cr_assert_str_eq(tls_conn_protocol(p.c), "");
	handshake_ok(&p);

	const char *want = prm->tls13 ? "TLSv1.3" : "TLSv1.2";
	cr_assert_str_eq(tls_conn_protocol(p.c), want);
	cr_assert_str_eq(tls_conn_protocol(p.s), want);
	cr_assert_str_eq(tls_conn_cipher(p.c), tls_conn_cipher(p.s));
	cr_assert_neq(tls_conn_cipher(p.c)[0], '\0');
	if (prm->tls13)
		cr_assert_eq(strncmp(tls_conn_cipher(p.c), "TLS_", 4), 0,
			     "cipher %s", tls_conn_cipher(p.c));
	else
		cr_assert_not_null(strstr(tls_conn_cipher(p.c), "ECDHE-RSA-"),
				   "cipher %s", tls_conn_cipher(p.c));
	cr_assert(tls_conn_peer_verified(p.c), "%s", tls_conn_error(p.c));
	cr_assert_not(tls_conn_peer_verified(p.s));
	cr_assert_str_eq(tls_conn_server_name(p.s), "localhost");
	cr_assert_str_eq(tls_conn_server_name(p.c), "localhost");

	/* An SMTP-sized exchange, then bulk both ways. */
	cr_assert_eq(tls_conn_write(p.c, "EHLO a\r\n", 8), 8);
	do
		r = tls_conn_read(p.s, line, sizeof(line));
	while (r == -EAGAIN && move_piece(&p, p.c, p.s));
	cr_assert_eq(r, 8, "read %zd: %s", r, tls_conn_error(p.s));
	cr_assert_eq(memcmp(line, "EHLO a\r\n", 8), 0);
	/* 1 MiB; tiny pieces take long, and 128 KiB is already 8 records. */
	size_t bulk = prm->piece && prm->piece < 100 ? 128 * 1024 : 1024 * 1024;

	transfer(&p, p.s, p.c, bulk);
	transfer(&p, p.c, p.s, bulk);

	/* close_notify reaches the peer as end of stream. */
	cr_assert_eq(tls_conn_shutdown(p.c), 0);
	cr_assert_gt(tls_conn_pending_output(p.c), 0);
	while (move_piece(&p, p.c, p.s))
		;
	do
		r = tls_conn_read(p.s, line, sizeof(line));
	while (r == -EAGAIN && move_piece(&p, p.c, p.s));
	cr_assert_eq(r, 0, "read after close_notify: %zd", r);
	pair_close(&p);
}

/* ------------------------------------------------------------------ */
/* Verification                                                        */

Test(tls, verify_mismatched_ca_is_opportunistic)
{
	struct pair p;

	pair_open(&p, 0, OTHER_CERT, false, "localhost", 0);
	handshake_ok(&p);
	cr_assert_not(tls_conn_peer_verified(p.c));
	cr_assert_not_null(strstr(tls_conn_error(p.c), "not verified"), "%s",
			   tls_conn_error(p.c));
	transfer(&p, p.c, p.s, 4096);	/* still encrypted and usable */
	pair_close(&p);
}

Test(tls, verify_wrong_name)
{
	struct pair p;

	pair_open(&p, 0, CERT, false, "mx.example.com", 0);
	handshake_ok(&p);
	cr_assert_not(tls_conn_peer_verified(p.c));
	cr_assert_str_eq(tls_conn_server_name(p.s), "mx.example.com");
	pair_close(&p);
}

Test(tls, verify_ip_literal_sends_no_sni)
{
	struct pair p;

	pair_open(&p, 0, CERT, false, "127.0.0.1", 0);
	handshake_ok(&p);
	cr_assert_null(tls_conn_server_name(p.s));
	cr_assert_null(tls_conn_server_name(p.c));
	cr_assert(tls_conn_peer_verified(p.c), "%s", tls_conn_error(p.c));
	pair_close(&p);

	/* The certificate names 127.0.0.1, not .2. */
	pair_open(&p, 0, CERT, false, "127.0.0.2", 0);
	handshake_ok(&p);
	cr_assert_not(tls_conn_peer_verified(p.c));
	pair_close(&p);
}

Test(tls, verify_strict_fails_handshake)
{
	struct pair p;
	int rc, rs;

	pair_open(&p, 0, OTHER_CERT, true, "localhost", 0);
	cr_assert_eq(handshake(&p, &rc, &rs), -EPROTO);
	cr_assert_eq(rc, -EPROTO);
	cr_assert_not(tls_conn_peer_verified(p.c));
	cr_assert_str_eq(
		tls_conn_error(p.c),
		"peer certificate not verified: self-signed certificate");
	pair_close(&p);
}

Test(tls, verify_strict_ok)
{
	struct pair p;

	pair_open(&p, 0, CERT, true, "localhost", 0);
	handshake_ok(&p);
	cr_assert(tls_conn_peer_verified(p.c));
	cr_assert_str_eq(tls_conn_error(p.c), "");
	pair_close(&p);
}

Test(tls, system_ca_opportunistic)
{
	char err[256];
	struct tls_ctx *cctx = tls_ctx_client_new(false, NULL, err,
						  sizeof(err));
	struct pair p;

	cr_assert_not_null(cctx, "%s", err);
	tls_ctx_free(cctx);
	pair_open(&p, 0, NULL, false, "localhost", 0);
	handshake_ok(&p);
	cr_assert_not(tls_conn_peer_verified(p.c));	/* self-signed */
	pair_close(&p);
}

/* ------------------------------------------------------------------ */
/* Garbage and bounds                                                  */

Test(tls, plaintext_smtp_to_server_fails_cleanly)
{
	struct tls_ctx *ctx = server_ctx(0);
	struct tls_conn *s = tls_conn_new(ctx, NULL);
	static const char smtp[] = "EHLO client.example\r\nMAIL FROM:<a@b>\r\n";
	char buf[64];

	cr_assert_eq(tls_conn_handshake(s), -EAGAIN);
	cr_assert_eq(tls_conn_feed(s, smtp, sizeof(smtp) - 1), 0);
	cr_assert_eq(tls_conn_handshake(s), -EPROTO);
	cr_assert_neq(tls_conn_error(s)[0], '\0');
	/* Failure is sticky. */
	cr_assert_eq(tls_conn_handshake(s), -EPROTO);
	cr_assert_eq(tls_conn_read(s, buf, sizeof(buf)), -EPROTO);
	cr_assert_eq(tls_conn_write(s, "x", 1), -EPROTO);
	cr_assert_eq(tls_conn_feed(s, "x", 1), -EPROTO);
	cr_assert_eq(tls_conn_shutdown(s), -EPROTO);
	cr_assert_not(tls_conn_peer_verified(s));
	tls_conn_free(s);
	tls_ctx_free(ctx);
}

Test(tls, garbage_server_hello_fails_cleanly)
{
	struct pair p;
	unsigned char junk[512];
	uint64_t s = 42;
	size_t len;

	pair_open(&p, 0, CERT, false, "localhost", 0);
	cr_assert_eq(tls_conn_handshake(p.c), -EAGAIN);
	/* Drop the ClientHello: we play a broken server. */
	cr_assert(tls_conn_output(p.c, &len) && len > 0);
	tls_conn_output_consumed(p.c, len);
	/* A plausible record header, then noise. */
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)rnd(&s);
	junk[0] = 0x16;
	junk[1] = 0x03;
	junk[2] = 0x03;
	junk[3] = 0x01;
	junk[4] = 0x00;
	cr_assert_eq(tls_conn_feed(p.c, junk, sizeof(junk)), 0);
	cr_assert_eq(tls_conn_handshake(p.c), -EPROTO);
	cr_assert_neq(tls_conn_error(p.c)[0], '\0');
	cr_assert_str_eq(tls_conn_protocol(p.c), "");
	pair_close(&p);
}

/* Random noise after each side's real first flight: no crash, no leak. */
Test(tls, random_garbage_never_crashes)
{
	uint64_t s = 7;
	struct tls_ctx *sctx = server_ctx(0), *cctx = client_ctx(false, CERT);

	for (int round = 0; round < 200; round++) {
		bool server = round & 1;
		struct tls_conn *c = tls_conn_new(server ? sctx : cctx,
						  "localhost");
		unsigned char junk[700];
		size_t n = 1 + rnd(&s) % sizeof(junk);
		int rc = 0;

		for (size_t i = 0; i < n; i++)
			junk[i] = (unsigned char)rnd(&s);
		if (round % 4 < 2) {	/* mostly valid-looking records */
			junk[0] = 0x14 + rnd(&s) % 4;
			if (n > 2) {
				junk[1] = 3;
				junk[2] = 1 + rnd(&s) % 4;
			}
		}
		tls_conn_handshake(c);
		for (size_t off = 0; off < n && (rc == 0 || rc == -EAGAIN);) {
			size_t k = 1 + rnd(&s) % 64;

			if (k > n - off)
				k = n - off;
			cr_assert_eq(tls_conn_feed(c, junk + off, k), 0);
			off += k;
			rc = tls_conn_handshake(c);
		}
		cr_assert(rc == -EAGAIN || rc == -EPROTO, "rc %d", rc);
		tls_conn_free(c);
	}
	tls_ctx_free(cctx);
	tls_ctx_free(sctx);
}

Test(tls, input_is_bounded)
{
	struct tls_ctx *ctx = server_ctx(0);
	struct tls_conn *s = tls_conn_new(ctx, NULL);
	char *big = xcalloc(1, TLS_BUF_CAP);

	cr_assert_eq(tls_conn_feed(s, big, TLS_BUF_CAP - 10), 0);
	cr_assert_eq(tls_conn_feed(s, big, 11), -ENOBUFS);
	cr_assert_eq(tls_conn_feed(s, big, 10), 0);
	cr_assert_eq(tls_conn_feed(s, big, 1), -ENOBUFS);
	free(big);
	tls_conn_free(s);
	tls_ctx_free(ctx);
}

Test(tls, output_is_bounded)
{
	struct pair p;
	size_t len = 1024 * 1024;
	unsigned char *src = xcalloc(1, len);
	ssize_t w;

	pair_open(&p, 0, CERT, false, "localhost", 0);
	handshake_ok(&p);
	w = tls_conn_write(p.c, src, len);
	cr_assert_gt(w, 0);
	cr_assert_lt((size_t)w, len, "wrote all %zd", w);
	cr_assert_leq(tls_conn_pending_output(p.c), TLS_BUF_CAP);
	cr_assert_gt(tls_conn_pending_output(p.c), TLS_BUF_CAP - 20000);
	cr_assert_eq(tls_conn_write(p.c, src, len), -EAGAIN);
	/* Once the driver sends, writing resumes. */
	while (tls_conn_pending_output(p.c)) {
		size_t n;

		tls_conn_output(p.c, &n);
		tls_conn_output_consumed(p.c, n);
	}
	cr_assert_gt(tls_conn_write(p.c, src, len), 0);
	free(src);
	pair_close(&p);
}

/*
 * A hostile peer: a raw wolfSSL client (our API cannot misbehave) sends
 * TLS 1.3 KeyUpdate requests while we never send.  Each makes our side
 * queue a reply; the queue must stop at its bound with -ENOBUFS.
 */
static int raw_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *srv = arg;
	size_t len;
	const void *v = tls_conn_output(srv, &len);

	if (!v)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if (len > (size_t)sz)
		len = (size_t)sz;
	memcpy(buf, v, len);
	tls_conn_output_consumed(srv, len);
	return (int)len;
}

static int raw_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	return tls_conn_feed(arg, buf, (size_t)sz) ? WOLFSSL_CBIO_ERR_GENERAL
						   : sz;
}

/*
 * raw_client - a wolfSSL client wired to srv, offering ciphers (NULL: its
 * defaults); runs the handshake and returns whether both sides finished.
 */
static bool raw_client(struct tls_conn *srv, const char *ciphers,
		       WOLFSSL_CTX **wctx, WOLFSSL **raw)
{
	*wctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
	cr_assert_not_null(*wctx);
	wolfSSL_CTX_set_verify(*wctx, WOLFSSL_VERIFY_NONE, NULL);
	if (ciphers)
		cr_assert_eq(wolfSSL_CTX_set_cipher_list(*wctx, ciphers),
			     WOLFSSL_SUCCESS, "%s", ciphers);
	wolfSSL_CTX_SetIORecv(*wctx, raw_recv);
	wolfSSL_CTX_SetIOSend(*wctx, raw_send);
	*raw = wolfSSL_new(*wctx);
	cr_assert_not_null(*raw);
	wolfSSL_SetIOReadCtx(*raw, srv);
	wolfSSL_SetIOWriteCtx(*raw, srv);
	for (int i = 0; i < 100; i++) {
		int rc;

		if (wolfSSL_connect(*raw) != WOLFSSL_SUCCESS &&
		    wolfSSL_get_error(*raw, 0) != WOLFSSL_ERROR_WANT_READ &&
		    wolfSSL_get_error(*raw, 0) != WOLFSSL_ERROR_WANT_WRITE)
			return false;
		rc = tls_conn_handshake(srv);
		if (rc == 0 && wolfSSL_is_init_finished(*raw))
			return true;
		if (rc != -EAGAIN && rc != 0)
			return false;
	}
	return false;
}

/* Suites Debian's wolfSSL would otherwise accept. */
static const char *const weak_suites[] = {
	"TLS13-SHA256-SHA256",		/* TLS 1.3, integrity only */
	"ECDHE-RSA-RC4-SHA",
	"ECDHE-RSA-DES-CBC3-SHA",
	"ADH-AES128-SHA",		/* anonymous */
};

ParameterizedTestParameters(tls, weak_suites_refused)
{
	static int idx[] = { 0, 1, 2, 3 };

	return cr_make_param_array(int, idx, ARRAY_SIZE(idx));
}

ParameterizedTest(int *idx, tls, weak_suites_refused)
{
	struct tls_ctx *sctx = server_ctx(0);
	struct tls_conn *srv = tls_conn_new(sctx, NULL);
	WOLFSSL_CTX *wctx;
	WOLFSSL *raw;

	cr_assert_not(raw_client(srv, weak_suites[*idx], &wctx, &raw),
		      "accepted %s", weak_suites[*idx]);
	cr_assert_eq(tls_conn_handshake(srv), -EPROTO);
	wolfSSL_free(raw);
	wolfSSL_CTX_free(wctx);
	tls_conn_free(srv);
	tls_ctx_free(sctx);
}

Test(tls, peer_cannot_grow_output_unbounded)
{
	struct tls_ctx *sctx = server_ctx(0);
	struct tls_conn *srv = tls_conn_new(sctx, NULL);
	WOLFSSL_CTX *wctx;
	WOLFSSL *raw;
	char buf[256];
	ssize_t r = 0;
	int i;

	cr_assert(raw_client(srv, NULL, &wctx, &raw), "%s",
		  tls_conn_error(srv));
	cr_assert_str_eq(tls_conn_protocol(srv), "TLSv1.3");
	while (tls_conn_pending_output(srv)) {	/* tickets: not part of it */
		size_t n;

		tls_conn_output(srv, &n);
		tls_conn_output_consumed(srv, n);
	}

	for (i = 0; i < 100000; i++) {
		cr_assert_eq(wolfSSL_update_keys(raw), WOLFSSL_SUCCESS);
		r = tls_conn_read(srv, buf, sizeof(buf));
		if (r != -EAGAIN)
			break;
	}
	cr_assert_eq(r, -ENOBUFS, "read %zd after %d key updates", r, i);
	cr_assert_leq(tls_conn_pending_output(srv), TLS_BUF_CAP + 64 * 1024);
	cr_assert_not_null(strstr(tls_conn_error(srv), "output exceeds"),
			   "%s", tls_conn_error(srv));
	cr_assert_eq(tls_conn_read(srv, buf, sizeof(buf)), -ENOBUFS);
	wolfSSL_free(raw);
	wolfSSL_CTX_free(wctx);
	tls_conn_free(srv);
	tls_ctx_free(sctx);
}

/* A handed-out span keeps its bytes while more output is queued. */
Test(tls, output_span_is_stable)
{
	struct pair p;
	static unsigned char data[40000];
	unsigned char copy[1024];
	const void *v;
	size_t len, len2;

	pair_open(&p, 0, CERT, false, "localhost", 0);
	handshake_ok(&p);
	cr_assert_eq(tls_conn_write(p.c, "hi", 2), 2);
	v = tls_conn_output(p.c, &len);
	cr_assert(v && len > 0 && len <= sizeof(copy));
	memcpy(copy, v, len);
	for (int i = 0; i < 5; i++)	/* 200 KB: under the cap */
		cr_assert_eq(tls_conn_write(p.c, data, sizeof(data)),
			     (ssize_t)sizeof(data));
	cr_assert_eq(tls_conn_output(p.c, &len2), v);
	cr_assert_eq(memcmp(v, copy, len), 0);
	/* Consumed in arbitrary pieces, the stream still arrives intact. */
	p.piece = 5000;
	size_t got = 0;
	unsigned char buf[20000];

	while (got < 2 + 5 * sizeof(data)) {
		ssize_t r;

		cr_assert(move_piece(&p, p.c, p.s), "stalled at %zu", got);
		while ((r = tls_conn_read(p.s, buf, sizeof(buf))) > 0) {
			for (ssize_t i = 0; i < r; i++, got++)
				cr_assert_eq(buf[i], got < 2 ? "hi"[got] : 0);
		}
		cr_assert_eq(r, -EAGAIN);
	}
	cr_assert_eq(tls_conn_pending_output(p.c), 0);
	pair_close(&p);
}

Test(tls, not_before_handshake)
{
	struct pair p;
	char buf[16];

	pair_open(&p, 0, CERT, false, "localhost", 0);
	cr_assert_eq(tls_conn_write(p.c, "x", 1), -ENOTCONN);
	cr_assert_eq(tls_conn_read(p.s, buf, sizeof(buf)), -ENOTCONN);
	cr_assert_str_eq(tls_conn_cipher(p.c), "");
	cr_assert_not(tls_conn_peer_verified(p.c));
	cr_assert_eq(tls_conn_shutdown(p.c), 0);
	pair_close(&p);
}

/* A reload may free the ctx while its conns still run. */
Test(tls, ctx_freed_before_conns)
{
	struct pair p;

	pair_open(&p, 0, CERT, false, "localhost", 0);
	tls_ctx_free(p.sctx);
	tls_ctx_free(p.cctx);
	p.sctx = p.cctx = NULL;
	handshake_ok(&p);
	transfer(&p, p.s, p.c, 100);
	pair_close(&p);
}

/*
 * One ctx pair shared by several threads, each running its own conns, as
 * the shards do.  No Criterion asserts off the main thread: workers
 * count successes instead.
 */
struct worker {
	pthread_t tid;
	struct tls_ctx *sctx, *cctx;
	int ok;
};

/* shuttle - move everything each way once; false if a feed fails. */
static bool shuttle(struct tls_conn *a, struct tls_conn *b)
{
	struct tls_conn *from[2] = { a, b }, *to[2] = { b, a };

	for (int k = 0; k < 2; k++) {
		size_t len;
		const void *v;

		while ((v = tls_conn_output(from[k], &len))) {
			if (tls_conn_feed(to[k], v, len))
				return false;
			tls_conn_output_consumed(from[k], len);
		}
	}
	return true;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (int i = 0; i < 10; i++) {
		struct tls_conn *s = tls_conn_new(w->sctx, NULL);
		struct tls_conn *c = tls_conn_new(w->cctx, "localhost");
		char msg[32], buf[64];
		int n = snprintf(msg, sizeof(msg), "thread %p #%d", arg, i);
		ssize_t r = -EAGAIN;
		int rc = -EAGAIN, rs = -EAGAIN;

		for (int t = 0; t < 20 && (rc || rs); t++) {
			rc = tls_conn_handshake(c);
			rs = tls_conn_handshake(s);
			if (!shuttle(c, s))
				break;
		}
		if (!rc && !rs && tls_conn_peer_verified(c) &&
		    tls_conn_write(c, msg, (size_t)n) == n && shuttle(c, s))
			r = tls_conn_read(s, buf, sizeof(buf));
		if (r == n && !memcmp(buf, msg, (size_t)n))
			w->ok++;
		tls_conn_free(c);
		tls_conn_free(s);
	}
	tls_thread_cleanup();	/* or its ECC cache leaks */
	return NULL;
}

Test(tls, ctx_shared_by_threads)
{
	struct worker w[4];
	struct tls_ctx *sctx = server_ctx(0), *cctx = client_ctx(false, CERT);

	for (size_t i = 0; i < ARRAY_SIZE(w); i++) {
		w[i] = (struct worker){ .sctx = sctx, .cctx = cctx };
		cr_assert_eq(
			pthread_create(&w[i].tid, NULL, worker_main, &w[i]), 0);
	}
	for (size_t i = 0; i < ARRAY_SIZE(w); i++) {
		pthread_join(w[i].tid, NULL);
		cr_assert_eq(w[i].ok, 10, "thread %zu: %d of 10", i, w[i].ok);
	}
	tls_ctx_free(cctx);
	tls_ctx_free(sctx);
}

/* ------------------------------------------------------------------ */
/* Context errors                                                      */

Test(tls, ctx_errors)
{
	char err[256];

	cr_assert_null(tls_ctx_server_new("data/nonexistent.pem", NULL, NULL,
					  TLS_VERSION_1_2, 0, err,
					  sizeof(err)));
	cr_assert_not_null(strstr(err, "data/nonexistent.pem"), "%s", err);
	cr_assert_not_null(strstr(err, "No such file"), "%s", err);

	cr_assert_null(tls_ctx_server_new("data/README", NULL, NULL,
					  TLS_VERSION_1_2, 0, err,
					  sizeof(err)));
	cr_assert_not_null(strstr(err, "no PEM certificate"), "%s", err);

	cr_assert_null(tls_ctx_server_new(CERT, OTHER_KEY, NULL,
					  TLS_VERSION_1_2, 0, err,
					  sizeof(err)));
	cr_assert_not_null(strstr(err, "does not match"), "%s", err);

	/* The key is not in the certificate file. */
	cr_assert_null(tls_ctx_server_new(CERT, NULL, NULL, TLS_VERSION_1_2,
					  0, err, sizeof(err)));
	cr_assert_not_null(strstr(err, "private key"), "%s", err);

	cr_assert_null(tls_ctx_server_new(CERT, KEY, "NO-SUCH-CIPHER",
					  TLS_VERSION_1_2, 0, err,
					  sizeof(err)));
	cr_assert_not_null(strstr(err, "cipher"), "%s", err);

	cr_assert_null(tls_ctx_server_new(CERT, KEY, NULL, 0x0301, 0, err,
					  sizeof(err)));
	cr_assert_not_null(strstr(err, "version"), "%s", err);
	cr_assert_null(tls_ctx_server_new(CERT, KEY, NULL, TLS_VERSION_1_3,
					  TLS_VERSION_1_2, err, sizeof(err)));

	cr_assert_null(tls_ctx_client_new(true, "data/nonexistent.pem", err,
					  sizeof(err)));
	cr_assert_not_null(strstr(err, "data/nonexistent.pem"), "%s", err);
}

Test(tls, key_in_cert_file_and_cipher_list)
{
	char path[] = "/tmp/coremta-tls-XXXXXX", err[256];
	int fd = mkstemp(path);
	FILE *out = fdopen(fd, "w");
	struct tls_ctx *ctx;
	struct pair p;

	cr_assert_not_null(out);
	for (int i = 0; i < 2; i++) {
		FILE *in = fopen(i ? KEY : CERT, "r");
		char buf[4096];
		size_t n;

		cr_assert_not_null(in);
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
			fwrite(buf, 1, n, out);
		fclose(in);
	}
	fclose(out);
	ctx = tls_ctx_server_new(path, NULL, "ECDHE-RSA-AES256-GCM-SHA384",
				 TLS_VERSION_1_2, TLS_VERSION_1_2, err,
				 sizeof(err));
	unlink(path);
	cr_assert_not_null(ctx, "%s", err);

	pair_open(&p, 0, CERT, false, "localhost", 0);
	tls_ctx_free(p.sctx);
	tls_conn_free(p.s);
	p.sctx = ctx;
	p.s = tls_conn_new(ctx, NULL);
	handshake_ok(&p);
	cr_assert_str_eq(tls_conn_protocol(p.c), "TLSv1.2");
	cr_assert_str_eq(tls_conn_cipher(p.c), "ECDHE-RSA-AES256-GCM-SHA384");
	pair_close(&p);
}

/* ------------------------------------------------------------------ */
/* Interop with the openssl CLI over loopback                          */

static bool have_openssl(void)
{
	return system("command -v openssl >/dev/null 2>&1") == 0;
}

/* spawn - run argv with pipes on stdin/stdout (stderr to /dev/null). */
static pid_t spawn(char *const argv[], int *to_child, int *from_child)
{
	int in[2], out[2];
	pid_t pid;

	cr_assert_eq(pipe(in), 0);
	cr_assert_eq(pipe(out), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		/* A failed assertion ends the test early: take openssl too. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);

		dup2(in[0], 0);
		dup2(out[1], 1);
		dup2(null, 2);
		close(in[1]);
		close(out[0]);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	*to_child = in[1];
	*from_child = out[0];
	return pid;
}

static void reap(pid_t pid)
{
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}

/* wait_exit - the child's status within 10 s, else kill it and -1. */
static int wait_exit(pid_t pid)
{
	int status;

	for (int i = 0; i < 1000; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return status;
		usleep(10000);
	}
	reap(pid);
	return -1;
}

/*
 * read_until - read fd until buf holds a whole line containing needle;
 * false on EOF or timeout.
 */
static bool read_until(int fd, char *buf, size_t cap, const char *needle)
{
	size_t len = 0;
	char *hit;

	buf[0] = '\0';
	while (!(hit = strstr(buf, needle)) || !strchr(hit, '\n')) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (len + 1 >= cap || poll(&pfd, 1, 10000) <= 0)
			return false;
		n = read(fd, buf + len, cap - 1 - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = '\0';
	}
	return true;
}

/* net_flush - send all pending output on a blocking socket. */
static void net_flush(struct tls_conn *c, int fd)
{
	size_t len;
	const void *v;

	while ((v = tls_conn_output(c, &len))) {
		ssize_t n = send(fd, v, len, MSG_NOSIGNAL);

		cr_assert_gt(n, 0, "send: %s", strerror(errno));
		tls_conn_output_consumed(c, (size_t)n);
	}
}

/* net_fill - feed what the socket has (waiting up to 10 s); bytes or 0. */
static ssize_t net_fill(struct tls_conn *c, int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char buf[16384];
	ssize_t n;

	if (poll(&pfd, 1, 10000) <= 0)
		return 0;
	n = recv(fd, buf, sizeof(buf), 0);
	if (n > 0)
		cr_assert_eq(tls_conn_feed(c, buf, (size_t)n), 0);
	return n;
}

static void net_handshake(struct tls_conn *c, int fd)
{
	int rc;

	while ((rc = tls_conn_handshake(c)) == -EAGAIN) {
		net_flush(c, fd);
		cr_assert_gt(net_fill(c, fd), 0, "peer went away");
	}
	net_flush(c, fd);
	cr_assert_eq(rc, 0, "handshake: %s", tls_conn_error(c));
}

/* net_read_until - decrypt into buf until it holds needle. */
static void net_read_until(struct tls_conn *c, int fd, char *buf, size_t cap,
			   const char *needle)
{
	size_t len = 0;

	buf[0] = '\0';
	while (!strstr(buf, needle)) {
		ssize_t r = tls_conn_read(c, buf + len, cap - 1 - len);

		if (r > 0) {
			len += (size_t)r;
			buf[len] = '\0';
			continue;
		}
		cr_assert_eq(r, -EAGAIN, "read %zd: %s", r, tls_conn_error(c));
		net_flush(c, fd);
		cr_assert_gt(net_fill(c, fd), 0, "peer went away, got \"%s\"",
			     buf);
	}
}

static void net_write(struct tls_conn *c, int fd, const char *s)
{
	size_t len = strlen(s);

	while (len) {
		ssize_t w = tls_conn_write(c, s, len);

		if (w == -EAGAIN) {
			net_flush(c, fd);
			continue;
		}
		cr_assert_gt(w, 0);
		s += w;
		len -= (size_t)w;
	}
	net_flush(c, fd);
}

ParameterizedTestParameters(tls, interop_openssl_server)
{
	static int tls13[] = { 1, 0 };

	return cr_make_param_array(int, tls13, ARRAY_SIZE(tls13));
}

/* Our client against `openssl s_server -rev` (echoes lines reversed). */
ParameterizedTest(int *tls13, tls, interop_openssl_server)
{
	char *argv[] = { "openssl", "s_server", "-accept", "127.0.0.1:0",
			 "-cert", CERT, "-key", KEY, "-naccept", "1", "-rev",
			 *tls13 ? "-tls1_3" : "-tls1_2", NULL };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct tls_ctx *ctx;
	struct tls_conn *c;
	char buf[4096], *at = NULL;
	int to, from, fd, port;
	pid_t pid;

	if (!have_openssl())
		cr_skip("openssl is not installed");
	pid = spawn(argv, &to, &from);
	/* It prints "ACCEPT 127.0.0.1:<port>" once it listens. */
	cr_assert(read_until(from, buf, sizeof(buf), "ACCEPT 127.0.0.1:") &&
		  (at = strstr(buf, "ACCEPT 127.0.0.1:")),
		  "s_server did not start: %s", buf);
	port = atoi(at + strlen("ACCEPT 127.0.0.1:"));
	cr_assert_gt(port, 0);

	fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ctx = client_ctx(false, CERT);
	c = tls_conn_new(ctx, "localhost");
	net_handshake(c, fd);
	cr_assert_str_eq(tls_conn_protocol(c), *tls13 ? "TLSv1.3" : "TLSv1.2");
	cr_assert(tls_conn_peer_verified(c), "%s", tls_conn_error(c));
	cr_assert_neq(tls_conn_cipher(c)[0], '\0');

	net_write(c, fd, "hello coremta\n");
	net_read_until(c, fd, buf, sizeof(buf), "\n");
	cr_assert_str_eq(buf, "atmeroc olleh\n");

	cr_assert_eq(tls_conn_shutdown(c), 0);
	net_flush(c, fd);
	close(fd);
	tls_conn_free(c);
	tls_ctx_free(ctx);
	close(to);
	close(from);
	reap(pid);
}

/* Our server against `openssl s_client`, which must verify us. */
Test(tls, interop_openssl_client)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t salen = sizeof(sa);
	struct tls_ctx *ctx;
	struct tls_conn *s;
	char target[64], buf[4096];
	int lfd, fd, to, from, status;
	pid_t pid;

	if (!have_openssl())
		cr_skip("openssl is not installed");
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(lfd, 1), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &salen), 0);
	snprintf(target, sizeof(target), "127.0.0.1:%u", ntohs(sa.sin_port));

	char *argv[] = { "openssl", "s_client", "-connect", target,
			 "-servername", "localhost", "-verify_hostname",
			 "localhost", "-CAfile", CERT, "-verify_return_error",
			 "-quiet", NULL };
	pid = spawn(argv, &to, &from);
	struct pollfd pfd = { .fd = lfd, .events = POLLIN };

	if (poll(&pfd, 1, 10000) != 1) {
		reap(pid);
		cr_assert_fail("s_client did not connect");
	}
	fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	close(lfd);

	ctx = server_ctx(0);
	s = tls_conn_new(ctx, NULL);
	net_handshake(s, fd);
	cr_assert_str_eq(tls_conn_protocol(s), "TLSv1.3");
	cr_assert_str_eq(tls_conn_server_name(s), "localhost");

	/* s_client copies its stdin to us and our data to its stdout. */
	cr_assert_eq(write(to, "EHLO openssl\n", 13), 13);
	net_read_until(s, fd, buf, sizeof(buf), "\n");
	cr_assert_str_eq(buf, "EHLO openssl\n");
	net_write(s, fd, "250 coremta\n");
	cr_assert(read_until(from, buf, sizeof(buf), "250 coremta\n"),
		  "s_client printed \"%s\"", buf);

	cr_assert_eq(tls_conn_shutdown(s), 0);
	net_flush(s, fd);
	close(fd);
	close(to);
	/* close_notify then EOF: s_client exits by itself, successfully. */
	cr_assert(read_until(from, buf, sizeof(buf), "never") == false);
	status = wait_exit(pid);
	cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "s_client status %d", status);
	close(from);
	tls_conn_free(s);
	tls_ctx_free(ctx);
}
