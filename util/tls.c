/*
 * util/tls.c - wolfSSL contexts and socketless conns (see tls.h).
 *
 * Owns: the wolfSSL objects, each conn's input queue (received ciphertext
 * not yet taken by wolfSSL) and output chunks (ciphertext not yet sent).
 * wolfSSL reaches them only through the two I/O callbacks below, which
 * never block and never touch a socket.  tls_conn_* run on the conn's
 * owning thread only; a ctx is read-only once built.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * wolfSSL's wc_port.h defines XSPRINTF as sprintf, which util/poison.h
 * forbids even inside a macro body; point it at a name that does not
 * exist, so any real use would fail to link rather than overflow.
 */
#define XSPRINTF coremta_no_sprintf
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include "util/util.h"
#include "util/tls.h"

/*
 * Output the peer can make us produce without any tls_conn_write (alerts,
 * TLS 1.3 key update replies, session tickets, a handshake flight) may go
 * this far past TLS_BUF_CAP; beyond it the conn fails with -ENOBUFS
 * rather than buffer without bound.  Application writes stop at the cap,
 * so a well-behaved peer never gets near.
 */
#define TLS_OUT_SLACK (64u * 1024u)

/* Output chunks: big enough for a full record, never moved once written. */
#define TLS_CHUNK_MIN (16u * 1024u + 512u)

/* The input queue starts at this size and doubles up to TLS_BUF_CAP. */
#define TLS_IN_MIN (16u * 1024u + 512u)

/*
 * Suites offered and accepted unless the operator names others.  Debian's
 * wolfSSL enables NULL, RC4, 3DES, PSK and anonymous suites by default
 * (and ignores OpenSSL-style "!RC4" exclusions), so the list is explicit:
 * AEAD first, then ECDHE CBC for old MX hosts, all with forward secrecy.
 */
static const char default_ciphers[] =
	"TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
	"TLS13-CHACHA20-POLY1305-SHA256:"
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
	"ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
	"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
	"ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA";

struct tls_ctx {
	WOLFSSL_CTX *wctx;
	bool server;
	bool verify_peer;
};

struct tls_chunk {
	struct tls_chunk *next;
	size_t start;		/* first unsent byte */
	size_t end;		/* end of written bytes */
	size_t cap;
	unsigned char data[];
};

struct tls_conn {
	WOLFSSL *ssl;
	bool server;
	bool verify_peer;	/* a verification failure is fatal */
	bool verify_seen;	/* wolfSSL checked a peer certificate */
	bool verify_failed;	/* some check of the peer's chain failed */
	bool established;
	int failed;		/* 0, or the sticky -errno */

	unsigned char *in;	/* received ciphertext in [in_off, in_len) */
	size_t in_off;
	size_t in_len;
	size_t in_cap;

	struct tls_chunk *out_head;	/* sent from here */
	struct tls_chunk *out_tail;	/* appended here */
	size_t out_pending;

	char *sni;		/* see tls_conn_server_name(), malloc'd */
	char cipher[64];
	char err[192];
};

/* wolf_reason - text for a wolfSSL error code. */
static const char *wolf_reason(int code)
{
	const char *s = wolfSSL_ERR_reason_error_string((unsigned long)code);

	return s && *s ? s : "unknown wolfSSL error";
}

/*
 * file_reason - why wolfSSL could not load path: it reports only failure,
 * so say whether the file is unreadable or its contents are the problem.
 */
static const char *file_reason(const char *path, const char *bad_contents)
{
	if (access(path, R_OK) != 0)
		return strerrordesc_np(errno);
	return bad_contents;
}

int tls_global_init(void)
{
	return wolfSSL_Init() == WOLFSSL_SUCCESS ? 0 : -EIO;
}

void tls_global_cleanup(void)
{
	wolfSSL_Cleanup();
}

void tls_thread_cleanup(void)
{
	/*
	 * Debian builds wolfSSL with FP_ECC and thread-local storage: each
	 * thread that does ECDHE grows its own fixed-point table (about 12 MB,
	 * bounded) that only this call, on that thread, frees.
	 */
#ifdef FP_ECC
	wc_ecc_fp_free();
#endif
	wolfSSL_ERR_clear_error();
}

/* ------------------------------------------------------------------ */
/* I/O callbacks: wolfSSL's only view of the network.                  */

/* tls_recv_cb - hand wolfSSL queued ciphertext, or "would block". */
static int tls_recv_cb(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *conn = arg;
	size_t avail = conn->in_len - conn->in_off;
	size_t n;

	if (!avail)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	n = avail < (size_t)sz ? avail : (size_t)sz;
	memcpy(buf, conn->in + conn->in_off, n);
	conn->in_off += n;
	if (conn->in_off == conn->in_len) {
		/* Drained: an idle conn keeps no input buffer. */
		free(conn->in);
		conn->in = NULL;
		conn->in_off = conn->in_len = conn->in_cap = 0;
	}
	return (int)n;
}

/*
 * out_append - copy n bytes to the output chunks.  Only the tail's free
 * space and new chunks are written, so a span already handed out by
 * tls_conn_output() never moves.
 */
static void out_append(struct tls_conn *conn, const unsigned char *p, size_t n)
{
	while (n) {
		struct tls_chunk *t = conn->out_tail;
		size_t room, k;

		if (!t || t->end == t->cap) {
			size_t cap = n > TLS_CHUNK_MIN ? n : TLS_CHUNK_MIN;

			t = xmalloc(sizeof(*t) + cap);
			t->next = NULL;
			t->start = t->end = 0;
			t->cap = cap;
			if (conn->out_tail)
				conn->out_tail->next = t;
			else
				conn->out_head = t;
			conn->out_tail = t;
		}
		room = t->cap - t->end;
		k = n < room ? n : room;
		memcpy(t->data + t->end, p, k);
		t->end += k;
		p += k;
		n -= k;
		conn->out_pending += k;
	}
}

/* tls_send_cb - take all of wolfSSL's output, up to the hard bound. */
static int tls_send_cb(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *conn = arg;

	/*
	 * Never "would block": wolfSSL's retry of a blocked write is tied to
	 * the wolfSSL_write that caused it, and output queued by a read or
	 * a handshake would be misreported by the next write.  Bounding the
	 * writes in tls_conn_write() keeps the queue finite instead.
	 */
	if (conn->out_pending + (size_t)sz > TLS_BUF_CAP + TLS_OUT_SLACK) {
		conn->failed = -ENOBUFS;
		return WOLFSSL_CBIO_ERR_GENERAL;
	}
	out_append(conn, (const unsigned char *)buf, (size_t)sz);
	return sz;
}

/* ------------------------------------------------------------------ */
/* Contexts                                                            */

/* ctx_common - settings shared by both sides; false with err set. */
static bool ctx_common(struct tls_ctx *ctx, unsigned min_version,
		       unsigned max_version, const char *ciphers, char *err,
		       size_t errlen)
{
	if (min_version != TLS_VERSION_1_2 && min_version != TLS_VERSION_1_3) {
		err_printf(err, errlen, "unsupported minimum TLS version 0x%04x",
			min_version);
		return false;
	}
	if (max_version && (max_version < min_version ||
			    max_version > TLS_VERSION_1_3)) {
		err_printf(err, errlen, "bad maximum TLS version 0x%04x",
			max_version);
		return false;
	}
	/* The wire values are OpenSSL's TLS1_x_VERSION constants. */
	if (wolfSSL_CTX_set_min_proto_version(ctx->wctx, (int)min_version) !=
	    WOLFSSL_SUCCESS ||
	    (max_version &&
	     wolfSSL_CTX_set_max_proto_version(ctx->wctx, (int)max_version) !=
		     WOLFSSL_SUCCESS)) {
		err_printf(err, errlen, "cannot set TLS version range");
		return false;
	}
	if (wolfSSL_CTX_set_cipher_list(ctx->wctx, ciphers ? ciphers
							  : default_ciphers) !=
	    WOLFSSL_SUCCESS) {
		err_printf(err, errlen, "bad cipher list \"%s\"",
			ciphers ? ciphers : default_ciphers);
		return false;
	}
	wolfSSL_CTX_SetIORecv(ctx->wctx, tls_recv_cb);
	wolfSSL_CTX_SetIOSend(ctx->wctx, tls_send_cb);
	/*
	 * wolfSSL's session cache is one locked table for the whole process;
	 * shards must not contend on it.  (Resumption would need a per-shard
	 * cache: not done yet.)
	 */
	wolfSSL_CTX_set_session_cache_mode(ctx->wctx, WOLFSSL_SESS_CACHE_OFF);
	return true;
}

static struct tls_ctx *ctx_alloc(WOLFSSL_METHOD *method, bool server)
{
	struct tls_ctx *ctx;
	WOLFSSL_CTX *wctx;

	if (!method)
		return NULL;
	wctx = wolfSSL_CTX_new(method);	/* takes the method, even on failure */
	if (!wctx)
		return NULL;
	ctx = xcalloc(1, sizeof(*ctx));
	ctx->wctx = wctx;
	ctx->server = server;
	return ctx;
}

struct tls_ctx *tls_ctx_server_new(const char *cert_file, const char *key_file,
				   const char *ciphers, unsigned min_version,
				   unsigned max_version, char *err,
				   size_t errlen)
{
	struct tls_ctx *ctx;
	int rc;

	err_printf(err, errlen, "%s", "");
	ctx = ctx_alloc(wolfSSLv23_server_method(), true);
	if (!ctx) {
		err_printf(err, errlen, "cannot create wolfSSL server context");
		return NULL;
	}
	if (!ctx_common(ctx, min_version, max_version, ciphers, err, errlen))
		goto fail;
	rc = wolfSSL_CTX_use_certificate_chain_file(ctx->wctx, cert_file);
	if (rc != WOLFSSL_SUCCESS) {
		err_printf(err, errlen, "%s: cannot load certificate chain: %s",
			cert_file,
			file_reason(cert_file, "no PEM certificate"));
		goto fail;
	}
	if (!key_file)
		key_file = cert_file;
	rc = wolfSSL_CTX_use_PrivateKey_file(ctx->wctx, key_file,
					     WOLFSSL_FILETYPE_PEM);
	if (rc != WOLFSSL_SUCCESS) {
		err_printf(err, errlen, "%s: cannot load private key: %s",
			key_file,
			file_reason(key_file, "no unencrypted PEM key"));
		goto fail;
	}
	if (wolfSSL_CTX_check_private_key(ctx->wctx) != WOLFSSL_SUCCESS) {
		err_printf(err, errlen, "%s: private key does not match %s",
			key_file, cert_file);
		goto fail;
	}
	wolfSSL_CTX_set_verify(ctx->wctx, WOLFSSL_VERIFY_NONE, NULL);
	return ctx;
fail:
	tls_ctx_free(ctx);
	return NULL;
}

/*
 * verify_reason - text for a failed chain check.  wolfSSL reports its own
 * (negative) codes or OpenSSL's X509_V_ERR_* numbers, and names only a
 * couple of the latter; these are the ones SMTP peers hit.
 */
static const char *verify_reason(int e)
{
	switch (e) {
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "certificate is not yet valid";
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return "certificate has expired";
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		return "self-signed certificate";
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		return "self-signed certificate in chain";
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
		return "unable to get local issuer certificate";
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		return "unable to verify the first certificate";
	}
	if (e < 0)
		return wolf_reason(e);
	return wolfSSL_X509_verify_cert_error_string(e);
}

/*
 * verify_cb - note every failed check of the peer's chain (wolfSSL calls
 * this for each certificate, passed or not).  Opportunistic conns
 * override the failure; strict ones let it end the handshake.
 */
static int verify_cb(int preverify_ok, WOLFSSL_X509_STORE_CTX *store)
{
	struct tls_conn *conn = store->userCtx;

	if (!conn)
		return preverify_ok;
	conn->verify_seen = true;
	if (!preverify_ok) {
		if (!conn->verify_failed) {
			int e = wolfSSL_X509_STORE_CTX_get_error(store);

			snprintf(conn->err, sizeof(conn->err),
				 "peer certificate not verified: %s",
				 verify_reason(e));
		}
		conn->verify_failed = true;
	}
	return conn->verify_peer ? preverify_ok : 1;
}

struct tls_ctx *tls_ctx_client_new(bool verify_peer, const char *ca_file,
				   char *err, size_t errlen)
{
	struct tls_ctx *ctx;
	int rc;

	err_printf(err, errlen, "%s", "");
	ctx = ctx_alloc(wolfSSLv23_client_method(), false);
	if (!ctx) {
		err_printf(err, errlen, "cannot create wolfSSL client context");
		return NULL;
	}
	ctx->verify_peer = verify_peer;
	if (!ctx_common(ctx, TLS_VERSION_1_2, 0, NULL, err, errlen))
		goto fail;
	if (ca_file) {
		rc = wolfSSL_CTX_load_verify_locations(ctx->wctx, ca_file,
						       NULL);
		if (rc != WOLFSSL_SUCCESS) {
			err_printf(err, errlen,
				"%s: cannot load CA certificates: %s", ca_file,
				file_reason(ca_file, "no PEM certificate"));
			goto fail;
		}
	} else if (wolfSSL_CTX_load_system_CA_certs(ctx->wctx) !=
			   WOLFSSL_SUCCESS &&
		   verify_peer) {
		/* Opportunistic TLS works without CAs; strict cannot. */
		err_printf(err, errlen, "cannot load the system CA certificates");
		goto fail;
	}
	/* Always check, so opportunistic conns can report the result. */
	wolfSSL_CTX_set_verify(ctx->wctx, WOLFSSL_VERIFY_PEER, verify_cb);
	return ctx;
fail:
	tls_ctx_free(ctx);
	return NULL;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
	if (!ctx)
		return;
	wolfSSL_CTX_free(ctx->wctx);	/* conns still hold references */
	free(ctx);
}

/* ------------------------------------------------------------------ */
/* Conns                                                               */

static bool is_ip_literal(const char *name)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, name, buf) == 1 ||
	       inet_pton(AF_INET6, name, buf) == 1;
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *peer_name)
{
	struct tls_conn *conn;

	BUG_ON(!ctx);
	conn = xcalloc(1, sizeof(*conn));
	conn->server = ctx->server;
	conn->verify_peer = ctx->verify_peer;
	conn->ssl = wolfSSL_new(ctx->wctx);
	if (!conn->ssl)
		goto fail;
	wolfSSL_SetIOReadCtx(conn->ssl, conn);
	wolfSSL_SetIOWriteCtx(conn->ssl, conn);
	if (!conn->server) {
		wolfSSL_SetCertCbCtx(conn->ssl, conn);
		if (peer_name && *peer_name) {
			size_t n = strnlen(peer_name, 256);

			if (n > 255)	/* no DNS name is this long */
				goto fail;
			/* RFC 6066: SNI carries host names, never addresses. */
			if (!is_ip_literal(peer_name)) {
				if (wolfSSL_UseSNI(conn->ssl,
						   WOLFSSL_SNI_HOST_NAME,
						   peer_name,
						   (unsigned short)n) !=
				    WOLFSSL_SUCCESS)
					goto fail;
				conn->sni = xstrndup(peer_name, n);
			}
			if (wolfSSL_check_domain_name(conn->ssl, peer_name) !=
			    WOLFSSL_SUCCESS)
				goto fail;
		}
	}
	return conn;
fail:
	tls_conn_free(conn);
	return NULL;
}

void tls_conn_free(struct tls_conn *conn)
{
	struct tls_chunk *c, *next;

	if (!conn)
		return;
	wolfSSL_free(conn->ssl);
	free(conn->in);
	for (c = conn->out_head; c; c = next) {
		next = c->next;
		free(c);
	}
	free(conn->sni);
	free(conn);
}

int tls_conn_feed(struct tls_conn *conn, const void *cipher, size_t len)
{
	size_t used;

	if (conn->failed)
		return conn->failed;
	if (!len)
		return 0;
	used = conn->in_len - conn->in_off;
	if (len > TLS_BUF_CAP - used)
		return -ENOBUFS;
	if (conn->in_off && len > conn->in_cap - conn->in_len) {
		memmove(conn->in, conn->in + conn->in_off, used);
		conn->in_off = 0;
		conn->in_len = used;
	}
	if (len > conn->in_cap - conn->in_len) {
		size_t cap = conn->in_cap ? conn->in_cap : TLS_IN_MIN;

		while (cap < used + len)
			cap *= 2;
		if (cap > TLS_BUF_CAP)
			cap = TLS_BUF_CAP;
		conn->in = xrealloc(conn->in, cap);
		conn->in_cap = cap;
	}
	memcpy(conn->in + conn->in_len, cipher, len);
	conn->in_len += len;
	return 0;
}

/*
 * conn_fail - map a wolfSSL failure of call (ret) to -EAGAIN or a sticky
 * error with its text.
 */
static int conn_fail(struct tls_conn *conn, int ret, const char *what)
{
	int e = wolfSSL_get_error(conn->ssl, ret);

	/*
	 * The error is in hand; drop wolfSSL's per-thread error queue (the
	 * OpenSSL layer keeps up to 16 entries) so nothing stale misleads
	 * the next conn this thread serves.
	 */
	wolfSSL_ERR_clear_error();
	if (conn->failed)
		goto failed;
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return -EAGAIN;
	conn->failed = -EPROTO;
	/* A strict verification failure already said why. */
	if (!(conn->verify_failed && conn->verify_peer))
		snprintf(conn->err, sizeof(conn->err), "%s: %s (%d)", what,
			 wolf_reason(e), e);
failed:
	if (conn->failed == -ENOBUFS)
		snprintf(conn->err, sizeof(conn->err),
			 "%s: output exceeds %u bytes", what,
			 TLS_BUF_CAP + TLS_OUT_SLACK);
	return conn->failed;
}

/*
 * note_established - remember the suite name, as OpenSSL (and so Postfix
 * logs) spell it: IANA for TLS 1.3 ("TLS_AES_128_GCM_SHA256"), wolfSSL's
 * own names for TLS 1.2, which are OpenSSL's ("ECDHE-RSA-AES128-GCM-...").
 */
static void note_established(struct tls_conn *conn)
{
	const WOLFSSL_CIPHER *c = wolfSSL_get_current_cipher(conn->ssl);
	const char *name = c ? wolfSSL_CIPHER_get_name(c) : NULL;
	int suite = wolfSSL_get_current_cipher_suite(conn->ssl);

	if (suite >= 0 && wolfSSL_version(conn->ssl) >= TLS1_3_VERSION)
		name = wolfSSL_get_cipher_name_iana_from_suite(
			(unsigned char)(suite >> 8), (unsigned char)suite);
	conn->established = true;
	snprintf(conn->cipher, sizeof(conn->cipher), "%s", name ? name : "");
	if (conn->server) {
		void *sni = NULL;
		unsigned short n = wolfSSL_SNI_GetRequest(
			conn->ssl, WOLFSSL_SNI_HOST_NAME, &sni);

		if (n && sni) {
			/* The client's bytes end up in key=value log lines. */
			conn->sni = xstrndup(sni, n);
			for (char *q = conn->sni; *q; q++)
				if (*q <= ' ' || *q > '~' || *q == '=')
					*q = '?';
		}
	}
}

int tls_conn_handshake(struct tls_conn *conn)
{
	int ret;

	if (conn->failed)
		return conn->failed;
	if (conn->established)
		return 0;
	ret = conn->server ? wolfSSL_accept(conn->ssl)
			   : wolfSSL_connect(conn->ssl);
	if (ret != WOLFSSL_SUCCESS)
		return conn_fail(conn, ret, "handshake");
	note_established(conn);
	return 0;
}

ssize_t tls_conn_read(struct tls_conn *conn, void *plain, size_t cap)
{
	int ret;

	if (conn->failed)
		return conn->failed;
	if (!conn->established)
		return -ENOTCONN;
	if (!cap)
		return 0;
	if (cap > INT_MAX)
		cap = INT_MAX;
	ret = wolfSSL_read(conn->ssl, plain, (int)cap);
	if (ret > 0)
		return ret;
	if (wolfSSL_get_error(conn->ssl, ret) == WOLFSSL_ERROR_ZERO_RETURN) {
		wolfSSL_ERR_clear_error();
		return 0;
	}
	return conn_fail(conn, ret, "read");
}

ssize_t tls_conn_write(struct tls_conn *conn, const void *plain, size_t len)
{
	const unsigned char *p = plain;
	size_t done = 0;
	int maxfrag;

	if (conn->failed)
		return conn->failed;
	if (!conn->established)
		return -ENOTCONN;
	maxfrag = wolfSSL_GetMaxOutputSize(conn->ssl);
	if (maxfrag <= 0)
		return conn_fail(conn, maxfrag, "write");
	/*
	 * One record per wolfSSL_write, and only if its whole ciphertext
	 * fits under the cap: the send callback then always takes it, so
	 * wolfSSL never holds a half-sent record of ours.
	 */
	while (done < len) {
		size_t left = len - done;
		int chunk = left < (size_t)maxfrag ? (int)left : maxfrag;
		int need = wolfSSL_GetOutputSize(conn->ssl, chunk);
		int ret;

		if (need <= 0)
			return conn_fail(conn, need, "write");
		if (conn->out_pending + (size_t)need > TLS_BUF_CAP)
			break;
		ret = wolfSSL_write(conn->ssl, p + done, chunk);
		if (ret <= 0)
			return conn_fail(conn, ret, "write");
		BUG_ON(ret != chunk);
		done += (size_t)ret;
	}
	if (!done && len)
		return -EAGAIN;
	return (ssize_t)done;
}

size_t tls_conn_pending_output(const struct tls_conn *conn)
{
	return conn->out_pending;
}

const void *tls_conn_output(const struct tls_conn *conn, size_t *len)
{
	const struct tls_chunk *h = conn->out_head;

	if (!h || h->start == h->end) {
		*len = 0;
		return NULL;
	}
	*len = h->end - h->start;
	return h->data + h->start;
}

void tls_conn_output_consumed(struct tls_conn *conn, size_t n)
{
	struct tls_chunk *h = conn->out_head;

	BUG_ON(n && (!h || n > h->end - h->start));
	if (!n)
		return;
	h->start += n;
	conn->out_pending -= n;
	/*
	 * Spans are consumed in order, so a drained chunk is unreferenced;
	 * only the tail is ever partly written, and a new one is cheap.
	 */
	if (h->start == h->end) {
		conn->out_head = h->next;
		if (!conn->out_head)
			conn->out_tail = NULL;
		free(h);
	}
}

int tls_conn_shutdown(struct tls_conn *conn)
{
	int ret;

	if (conn->failed)
		return conn->failed;
	if (!conn->established)
		return 0;	/* nothing to close politely */
	ret = wolfSSL_shutdown(conn->ssl);
	if (ret == WOLFSSL_SUCCESS || ret == WOLFSSL_SHUTDOWN_NOT_DONE) {
		wolfSSL_ERR_clear_error();
		return 0;
	}
	return conn_fail(conn, ret, "shutdown");
}

const char *tls_conn_protocol(const struct tls_conn *conn)
{
	return conn->established ? wolfSSL_get_version(conn->ssl) : "";
}

const char *tls_conn_cipher(const struct tls_conn *conn)
{
	return conn->cipher;
}

bool tls_conn_peer_verified(const struct tls_conn *conn)
{
	/* A handshake that checked no certificate (resumption) proves nothing. */
	return !conn->server && conn->established && conn->verify_seen &&
	       !conn->verify_failed;
}

const char *tls_conn_server_name(const struct tls_conn *conn)
{
	return conn->sni;
}

const char *tls_conn_error(const struct tls_conn *conn)
{
	return conn->err;
}
