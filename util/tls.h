/*
 * util/tls - TLS over wolfSSL without sockets: the caller moves the bytes.
 *
 * A tls_conn never reads or writes a file descriptor.  Ciphertext received
 * from the network goes in with tls_conn_feed(); ciphertext to send comes
 * out of tls_conn_output() as a zero-copy view the io_uring driver hands to
 * a send, then gives back with tls_conn_output_consumed().  The SMTP intake
 * uses server conns, the delivery shards client conns.  STARTTLS: a server
 * conn gets only bytes read after the 220 to STARTTLS was queued (plaintext
 * pipelined behind the command is discarded, never fed: CVE-2011-0411); a
 * client conn only bytes after the 220 reply.
 *
 * Threads:
 *   tls_global_init() / tls_global_cleanup(): the main thread, before any
 *     other thread starts and after all have stopped.
 *   tls_thread_cleanup(): every other thread that ran conns, last thing
 *     before it exits (wolfSSL keeps per-thread caches).
 *   tls_ctx_*: created at start-up or reload by one thread, then shared
 *     read-only by every thread (wolfSSL allows that once a context is
 *     configured).  tls_ctx_free() once no thread will create conns from it;
 *     conns already created keep what they need (wolfSSL refcounts the
 *     context), so a reload may free the old ctx while its conns run.
 *   tls_conn_*: the one thread that owns the conn (its shard or intake).
 *
 * Memory: each conn buffers at most TLS_BUF_CAP bytes of received
 * ciphertext, and TLS_BUF_CAP bytes of output from tls_conn_write() plus
 * at most 64 KiB of protocol messages (beyond that the peer is flooding us
 * and the conn fails with -ENOBUFS).  Buffers are allocated on demand and
 * released when drained, so an idle conn holds none.  wolfSSL adds its
 * own per-conn state, and a per-thread ECC cache (tls_thread_cleanup).  Whoever
 * creates a ctx or conn frees it; the free functions accept NULL.
 *
 * Errors: functions return 0 / byte counts or -errno.  -EPROTO is a TLS
 * failure (tls_conn_error() has the text); a failed conn stays failed.
 * Even then pending output may hold an alert for the peer: sending it is
 * polite, not required.  Nothing is printed.
 */
#ifndef COREMTA_TLS_H
#define COREMTA_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Protocol versions, as on the wire. */
#define TLS_VERSION_1_2 0x0303u
#define TLS_VERSION_1_3 0x0304u

/* Per-direction buffer bound of a conn (see tls_conn_feed/_write). */
#define TLS_BUF_CAP (256u * 1024u)

struct tls_ctx;
struct tls_conn;

/* tls_global_init - initialise wolfSSL once; 0 or -EIO. */
int tls_global_init(void);
/* tls_global_cleanup - release wolfSSL; also does tls_thread_cleanup(). */
void tls_global_cleanup(void);
/* tls_thread_cleanup - free the calling thread's wolfSSL caches. */
void tls_thread_cleanup(void);

/*
 * tls_ctx_server_new - a server context (SMTP intake, STARTTLS in).
 * cert_file is a PEM chain (leaf first); key_file may be NULL when the key
 * is in cert_file.  ciphers is a ':'-separated list of suite names
 * (wolfSSL's, OpenSSL's or IANA's spelling) or NULL for coremta's default:
 * forward-secret AEAD and CBC suites, no NULL/RC4/3DES/PSK/anonymous (the
 * client always uses that default).  min_version and max_version are
 * TLS_VERSION_*; max_version 0 means the highest supported.  No client
 * certificate is requested.
 * Returns NULL with a message in err on failure.
 */
struct tls_ctx *tls_ctx_server_new(const char *cert_file, const char *key_file,
				   const char *ciphers, unsigned min_version,
				   unsigned max_version, char *err,
				   size_t errlen);

/*
 * tls_ctx_client_new - a client context (delivery, STARTTLS out), TLS 1.2+.
 * The peer's certificate is always checked against ca_file (PEM bundle) or,
 * when ca_file is NULL, the system trust store, and the result is kept for
 * tls_conn_peer_verified().  verify_peer decides what a failure does:
 * false (opportunistic SMTP) carries on encrypted, true fails the
 * handshake.  Returns NULL with a message in err on failure.
 */
struct tls_ctx *tls_ctx_client_new(bool verify_peer, const char *ca_file,
				   char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *ctx);

/*
 * tls_conn_new - a conn on ctx.  For a client, peer_name (the MX host name)
 * is sent as SNI (unless it is an IP literal) and the certificate must
 * match it to count as verified; NULL checks the chain only.  Servers pass
 * NULL.  Returns NULL if wolfSSL cannot allocate or peer_name is longer
 * than 255 bytes.
 */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *peer_name);
void tls_conn_free(struct tls_conn *conn);

/*
 * tls_conn_feed - queue len bytes of received ciphertext (copied: the
 * caller's buffer is free again on return).  All or nothing: -ENOBUFS if
 * more than TLS_BUF_CAP would be queued; consume with tls_conn_handshake()
 * or tls_conn_read() first, or treat the peer as abusive.  A failed conn
 * returns its error.
 */
int tls_conn_feed(struct tls_conn *conn, const void *cipher, size_t len);

/*
 * tls_conn_handshake - advance the handshake: 0 done (also on later calls),
 * -EAGAIN needs more input, -EPROTO failed, -ENOBUFS output bound broken.
 * After every call, send whatever tls_conn_pending_output() reports.
 */
int tls_conn_handshake(struct tls_conn *conn);

/*
 * tls_conn_read - decrypt into plain: bytes read, 0 when the peer sent
 * close_notify, -EAGAIN when more ciphertext is needed, -ENOTCONN before
 * the handshake is done, -EPROTO, -ENOBUFS.
 * One call returns at most one record's data: loop until -EAGAIN.  It may
 * queue output (alerts, key updates): send it.
 */
ssize_t tls_conn_read(struct tls_conn *conn, void *plain, size_t cap);

/*
 * tls_conn_write - encrypt up to len bytes into the output queue, whole
 * records only while the queue stays under TLS_BUF_CAP: returns the bytes
 * taken (maybe fewer than len, like write(2)), -EAGAIN if none fit (send
 * output first), -ENOTCONN before the handshake is done, -EPROTO.
 */
ssize_t tls_conn_write(struct tls_conn *conn, const void *plain, size_t len);

/* tls_conn_pending_output - ciphertext bytes waiting to be sent. */
size_t tls_conn_pending_output(const struct tls_conn *conn);

/*
 * tls_conn_output - the next contiguous span of ciphertext to send (NULL
 * and *len 0 when none).  The span may be shorter than the pending total.
 * Its bytes never move or change until tls_conn_output_consumed() covers
 * them or the conn is freed, even if more output is queued meanwhile, so
 * it can sit in a submitted io_uring send.  Keep one send in flight.
 */
const void *tls_conn_output(const struct tls_conn *conn, size_t *len);

/* tls_conn_output_consumed - n bytes of the span were sent (n <= *len). */
void tls_conn_output_consumed(struct tls_conn *conn, size_t n);

/*
 * tls_conn_shutdown - queue close_notify (then send output and close; we
 * do not wait for the peer's).  0 (nothing is queued before the handshake
 * is done), or the failed conn's error.
 */
int tls_conn_shutdown(struct tls_conn *conn);

/*
 * After the handshake: "TLSv1.3" / "TLSv1.2", and the suite as OpenSSL
 * (and so Postfix's logs) names it: "TLS_AES_128_GCM_SHA256",
 * "ECDHE-RSA-AES256-GCM-SHA384".  For accounting (dlvTlsProtocol,
 * dlvTlsCipher).  "" before.  Valid while the conn lives.
 */
const char *tls_conn_protocol(const struct tls_conn *conn);
const char *tls_conn_cipher(const struct tls_conn *conn);

/*
 * tls_conn_peer_verified - client: the handshake is done and the peer's
 * chain reached a trusted CA and matched peer_name.  Always false on a
 * server (no client certificates).
 */
bool tls_conn_peer_verified(const struct tls_conn *conn);

/*
 * tls_conn_server_name - server: the SNI host name the client sent, once
 * the handshake is done (bytes outside printable ASCII, and '=', become
 * '?'); client: the SNI we send.  NULL if none.
 */
const char *tls_conn_server_name(const struct tls_conn *conn);

/* tls_conn_error - why the conn failed (or why verification failed); "". */
const char *tls_conn_error(const struct tls_conn *conn);

#endif
