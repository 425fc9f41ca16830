/*
 * bench/tls.c - wolfSSL over memory buffers for coremta-bench's STARTTLS:
 * ciphertext comes in through bench_tls_feed() and goes out by appending
 * to the connection's pending output, so the io_uring loop does all
 * socket I/O.  The bench does not verify certificates: it measures, it
 * does not protect anything.
 *
 * bench_tls_setup() runs once before the loop; everything else is called
 * from the loop's thread only.  bench_tls_free() frees the session.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/*
 * wolfSSL's wc_port.h defines XSPRINTF as sprintf, which util/poison.h
 * forbids even inside a macro body; point it at a name that does not
 * exist, so any real use would fail to link rather than overflow.
 */
#define XSPRINTF coremta_no_sprintf
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "bench/bench.h"

struct bench_tls {
	WOLFSSL *ssl;
	bool server;
	struct strbuf in;	/* ciphertext not yet read by wolfSSL */
	size_t in_off;
	struct strbuf *out;	/* the connection's pending output */
};

static WOLFSSL_CTX *tls_ctx;

/* io_recv - wolfSSL asks for ciphertext: serve it from the fed bytes. */
static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	struct bench_tls *t = ctx;
	size_t avail = t->in.len - t->in_off;

	if (!avail)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if ((size_t)sz < avail)
		avail = (size_t)sz;
	memcpy(buf, t->in.buf + t->in_off, avail);
	t->in_off += avail;
	if (t->in_off == t->in.len) {
		sb_reset(&t->in);
		t->in_off = 0;
	}
	return (int)avail;
}

/* io_send - wolfSSL emits ciphertext: queue it on the connection. */
static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	struct bench_tls *t = ctx;

	sb_add(t->out, buf, (size_t)sz);
	return sz;
}

int bench_tls_setup(bool server, const char *cert, const char *key,
		    char *err, size_t errlen)
{
	if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "wolfSSL_Init failed");
		return -EPROTO;
	}
	tls_ctx = wolfSSL_CTX_new(server ? wolfTLS_server_method() : wolfTLS_client_method());
	if (!tls_ctx) {
		snprintf(err, errlen, "wolfSSL_CTX_new failed");
		return -ENOMEM;
	}
	wolfSSL_CTX_set_verify(tls_ctx, WOLFSSL_VERIFY_NONE, NULL);
	if (server) {
		if (wolfSSL_CTX_use_certificate_chain_file(tls_ctx, cert) != WOLFSSL_SUCCESS) {
			snprintf(err, errlen, "cannot load certificate %s", cert);
			bench_tls_teardown();
			return -EINVAL;
		}
		if (wolfSSL_CTX_use_PrivateKey_file(tls_ctx, key, WOLFSSL_FILETYPE_PEM) !=
		    WOLFSSL_SUCCESS) {
			snprintf(err, errlen, "cannot load private key %s", key);
			bench_tls_teardown();
			return -EINVAL;
		}
	}
	wolfSSL_CTX_SetIORecv(tls_ctx, io_recv);
	wolfSSL_CTX_SetIOSend(tls_ctx, io_send);
	return 0;
}

void bench_tls_teardown(void)
{
	if (tls_ctx)
		wolfSSL_CTX_free(tls_ctx);
	tls_ctx = NULL;
	wolfSSL_Cleanup();
}

struct bench_tls *bench_tls_new(bool server, struct strbuf *cipher_out)
{
	struct bench_tls *t;

	if (!tls_ctx)
		return NULL;
	t = xcalloc(1, sizeof(*t));
	t->ssl = wolfSSL_new(tls_ctx);
	if (!t->ssl) {
		free(t);
		return NULL;
	}
	t->server = server;
	t->out = cipher_out;
	wolfSSL_SetIOReadCtx(t->ssl, t);
	wolfSSL_SetIOWriteCtx(t->ssl, t);
	return t;
}

void bench_tls_free(struct bench_tls *t)
{
	if (!t)
		return;
	wolfSSL_free(t->ssl);
	sb_free(&t->in);
	free(t);
}

void bench_tls_feed(struct bench_tls *t, const char *p, size_t n)
{
	sb_add(&t->in, p, n);
}

int bench_tls_handshake(struct bench_tls *t)
{
	int rc = t->server ? wolfSSL_accept(t->ssl) : wolfSSL_connect(t->ssl);

	if (rc == WOLFSSL_SUCCESS)
		return 1;
	rc = wolfSSL_get_error(t->ssl, rc);
	return rc == WOLFSSL_ERROR_WANT_READ || rc == WOLFSSL_ERROR_WANT_WRITE ? 0 : -EPROTO;
}

int bench_tls_read(struct bench_tls *t, char *buf, size_t cap)
{
	int n = wolfSSL_read(t->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);

	if (n > 0)
		return n;
	n = wolfSSL_get_error(t->ssl, n);
	if (n == WOLFSSL_ERROR_WANT_READ || n == WOLFSSL_ERROR_WANT_WRITE)
		return 0;
	return n == WOLFSSL_ERROR_ZERO_RETURN ? -EPIPE : -EPROTO;
}

int bench_tls_write(struct bench_tls *t, const char *p, size_t n)
{
	while (n > 0) {
		int chunk = n > 65536 ? 65536 : (int)n;
		int rc = wolfSSL_write(t->ssl, p, chunk);

		if (rc <= 0)
			return -EPROTO;
		p += rc;
		n -= (size_t)rc;
	}
	return 0;
}
