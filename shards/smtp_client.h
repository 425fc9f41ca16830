/*
 * shards/smtp_client.h - the outbound SMTP client protocol (RFC 5321 with
 * PIPELINING, CHUNKING, 8BITMIME, SIZE, DSN, SMTPUTF8 and STARTTLS) as a
 * pure state machine: server bytes in, client bytes out, outcomes as
 * values.  No socket, no TLS, no clock: the shard's io_uring loop (the
 * driver) owns those and asks smtp_client_phase() which timeout applies.
 *
 * Threads: a client belongs to the shard thread that created it; only that
 * thread calls these functions.
 *
 * Ownership: the client owns its buffers; they are allocated by
 * smtp_client_new() and grow only to the largest transaction seen, so a
 * warm connection allocates nothing per command or per message.
 * smtp_client_free() releases them.  The driver owns `out` (append-only
 * here) and every struct smtp_txn it starts: the txn, its recipients,
 * their strings and the body must stay valid and unchanged until that
 * transaction ends (SMTPC_EV_TXN_DONE or SMTPC_EV_FAILED).
 *
 * Driver contract:
 *  1. smtp_client_new() once the TCP (or implicit-TLS) connection is up.
 *  2. Feed every received plaintext byte, in order, to smtp_client_input().
 *     It stops at each event other than SMTPC_EV_NONE and says how much it
 *     consumed; call it again with the rest.  Partial lines are kept
 *     inside (bounded), so the receive buffer can be recycled at once.
 *  3. After every call that takes `out` (input, start, tls_started, quit),
 *     send `out`, then the body pieces smtp_client_body() hands out until
 *     it returns 0 — in that order.  Nothing is appended to `out` while
 *     body bytes remain, so the two never interleave.
 *  4. SMTPC_EV_STARTTLS: do the TLS handshake, then smtp_client_tls_started()
 *     (which sends EHLO again, RFC 3207) and feed decrypted bytes from then
 *     on.  Plaintext received after the 220 is never consumed: it fails
 *     the connection (STARTTLS response injection).
 *  5. Timeouts, EOF, I/O and handshake errors: smtp_client_abort().
 *  6. SMTPC_EV_FAILED / SMTPC_EV_CLOSED: the connection is finished; send
 *     what `out` holds (at most a courtesy QUIT), then close.
 */
#ifndef COREMTA_SHARDS_SMTP_CLIENT_H
#define COREMTA_SHARDS_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/mail.h"
#include "util/util.h"

struct smtp_client;

/*
 * smtp_memo - what a shard learned about receiving hosts, across its
 * connections (issue 18): hosts that answer 501/555 to MAIL or RCPT with
 * optional ESMTP parameters (SIZE, BODY, RET, ENVID, NOTIFY, ORCPT) get
 * them no more for a day; hosts whose STARTTLS handshake failed get plain
 * text for an hour unless TLS is required.  Owned by one shard thread;
 * bounded (the least recently used host gives way).  log, if not NULL,
 * is called once when a host is noted (host and what was learned).
 */
struct smtp_memo;
typedef void smtp_memo_log_fn(void *arg, const char *host, const char *what);
struct smtp_memo *smtp_memo_new(smtp_memo_log_fn *log, void *arg);
void smtp_memo_free(struct smtp_memo *m);

/* Per connection; from the queue's settings (cfg_queue) and the vmta. */
struct smtp_client_params {
	const char *helo_name;		/* copied; the virtual-mta's host-name */
	bool want_starttls;		/* use-starttls */
	bool require_starttls;		/* require-starttls (implies want) */
	bool tls_active;		/* implicit TLS: never STARTTLS */
	bool allow_pipelining;		/* !ignore-pipelining */
	bool allow_chunking;		/* !ignore-chunking */
	bool allow_8bitmime;		/* !ignore-8bitmime */
	bool allow_dsn;			/* !ignore-dsn */
	struct smtp_memo *memo;		/* NULL: nothing remembered */
	const char *host;		/* the server's address, the memo's key */
	int64_t now;			/* unix seconds, for the memo */
};

/* What the server's EHLO offered (smtp_client_extensions()). */
enum smtp_ext {
	SMTP_EXT_EHLO = 1u << 0,	/* EHLO accepted (else HELO: none below) */
	SMTP_EXT_PIPELINING = 1u << 1,
	SMTP_EXT_CHUNKING = 1u << 2,
	SMTP_EXT_8BITMIME = 1u << 3,
	SMTP_EXT_SIZE = 1u << 4,
	SMTP_EXT_DSN = 1u << 5,
	SMTP_EXT_SMTPUTF8 = 1u << 6,
	SMTP_EXT_STARTTLS = 1u << 7,
	SMTP_EXT_ENHANCEDSTATUSCODES = 1u << 8,
	SMTP_EXT_AUTH = 1u << 9,
};

enum smtp_client_event {
	SMTPC_EV_NONE,		/* nothing to report: send out/body, read more */
	SMTPC_EV_READY,		/* greeted, EHLO (and STARTTLS) done: idle */
	SMTPC_EV_STARTTLS,	/* do the TLS handshake, then tls_started */
	SMTPC_EV_TXN_DONE,	/* every recipient has its result; idle again */
	SMTPC_EV_CLOSED,	/* QUIT answered or connection closed after it */
	SMTPC_EV_FAILED,	/* connection unusable: smtp_client_failure() */
};

/* Which timer the driver runs (the RFC 5321 §4.5.3.2 client timeouts). */
enum smtp_client_phase {
	SMTPC_PHASE_GREETING,	/* smtp-greeting-timeout */
	SMTPC_PHASE_COMMAND,	/* a reply is awaited: smtp-command-timeout */
	SMTPC_PHASE_TLS,	/* the driver's handshake */
	SMTPC_PHASE_IDLE,	/* between transactions: connection-idle-timeout */
	SMTPC_PHASE_BODY,	/* body bytes remain to send: data-send-timeout */
	SMTPC_PHASE_DATA_END,	/* body sent, final reply awaited:
				   smtp-data-termination-timeout */
	SMTPC_PHASE_DONE,	/* failed or closed */
};

enum smtp_client_abort {
	SMTPC_ABORT_EOF,	/* the server closed the connection */
	SMTPC_ABORT_TIMEOUT,	/* the phase's timer expired */
	SMTPC_ABORT_IO,		/* send or receive failed */
	SMTPC_ABORT_TLS,	/* the TLS handshake (or session) failed */
};

struct smtp_rcpt {
	const char *addr;		/* forward-path without <> */
	unsigned notify;		/* SMTP_NOTIFY_* */
	const char *orcpt;		/* "rfc822;user@dom" decoded, or NULL */
};

/*
 * One transaction.  DSN parameters go out only when the server offers DSN
 * and allow_dsn is set; BODY=8BITMIME only when body_8bit and offered (an
 * 8-bit body to a server without 8BITMIME is sent as is, like Postfix).
 */
struct smtp_txn {
	const char *mail_from;		/* reverse-path without <>; "" = <> */
	const char *envid;		/* DSN ENVID, decoded, or NULL */
	enum mail_ret ret;		/* DSN RET */
	bool body_8bit;
	bool smtputf8;			/* needs SMTPUTF8: fails if not offered */
	const struct smtp_rcpt *rcpts;
	size_t rcpt_count;		/* >= 1; the driver applies
					   max-rcpt-per-transaction */
	const char *body;		/* the message with CRLF line endings */
	size_t body_len;
};

/*
 * A reply's joined text is cut at this size (with its NUL): enough for
 * every real server's multi-line rejection, small enough to copy into an
 * outcome.
 */
#define SMTP_REPLY_TEXT_MAX 1024
/* "CODE X.YYY.ZZZ text" (reply_subject, bounce keys): code, a space, an
 * RFC 3463 status of at most 11 bytes, a space, then the whole text. */
#define SMTP_REPLY_SUBJECT_MAX (SMTP_REPLY_TEXT_MAX + 16)

/*
 * An outcome: a server reply, or one this client made up (local: a
 * protocol error, a timeout, a local SIZE check).  text is the reply's
 * lines joined by a space, each without its code and enhanced status,
 * control bytes replaced by '?', cut at SMTP_REPLY_TEXT_MAX; it stays
 * valid until the next call that changes the client.
 */
struct smtp_reply {
	int code;			/* 250, 354, 451, 550, ... */
	char status[12];		/* RFC 3463 "5.1.1"; "X.0.0" if none given */
	bool local;
	const char *text;
	/*
	 * The server wrote status itself (false: made up from the code).
	 * Pattern matching rebuilds the reply as it came: "421 4.7.0 text".
	 */
	bool status_sent;
};

/* smtp_client_new - a client awaiting the greeting (phase GREETING). */
struct smtp_client *smtp_client_new(const struct smtp_client_params *p);
/* smtp_client_reset - reuse a client for a new connection. */
void smtp_client_reset(struct smtp_client *c, const struct smtp_client_params *p);
void smtp_client_free(struct smtp_client *c);

/*
 * smtp_client_input - consume server bytes up to the next event; *consumed
 * says how many of buf[0..len) were used (all of them unless an event
 * other than SMTPC_EV_NONE stopped it early).  Commands the protocol
 * needs next are appended to out.  Lines longer than 4 KiB, garbage and
 * replies out of place fail the connection with a protocol error.  A 421,
 * to any command, fails it with that reply: the server is closing (RFC
 * 5321 §3.8), so nothing is reused.  After FAILED or CLOSED, input is
 * discarded and the same event returned.
 */
enum smtp_client_event smtp_client_input(struct smtp_client *c, const char *buf,
					 size_t len, size_t *consumed,
					 struct strbuf *out);

/*
 * smtp_client_start - begin a transaction; only in phase IDLE.  Returns
 * SMTPC_EV_NONE with commands in out (MAIL, RCPTs and DATA or BDAT in one
 * flight with PIPELINING, else MAIL alone), or SMTPC_EV_TXN_DONE when it
 * was decided without the server (SIZE over the server's limit: 552 5.3.4;
 * SMTPUTF8 not offered: 554 5.6.7; unusable addresses: 553 5.1.7/5.1.3);
 * the connection then stays idle.
 */
enum smtp_client_event smtp_client_start(struct smtp_client *c,
					 const struct smtp_txn *txn,
					 struct strbuf *out);

/*
 * smtp_client_body - the next body piece to send, after everything already
 * appended to out: at most cap bytes, returned through *data, and the
 * length (0: nothing to send now).  BDAT: *data points into txn->body
 * (zero copy; scratch unused).  DATA: the body dot-stuffed, with the
 * terminating CRLF.CRLF (and a CRLF first if the body lacks one), written
 * into scratch[0..cap), cap >= 1.  A piece counts as sent once returned:
 * the driver sends each in full before asking for the next, and may reuse
 * scratch afterwards.
 */
/* smtp_client_body_taken - body octets handed out so far (before stuffing). */
size_t smtp_client_body_taken(const struct smtp_client *c);

size_t smtp_client_body(struct smtp_client *c, char *scratch, size_t cap,
			const char **data);

/* smtp_client_tls_started - after SMTPC_EV_STARTTLS: EHLO again into out. */
void smtp_client_tls_started(struct smtp_client *c, struct strbuf *out);

/* smtp_client_quit - QUIT into out; only in phase IDLE.  Next: CLOSED. */
void smtp_client_quit(struct smtp_client *c, struct strbuf *out);

/*
 * smtp_client_abort - the driver saw the connection end or its timer
 * fire.  Returns CLOSED if QUIT was sent, else FAILED with a local 4xx
 * failure naming the phase ("timeout waiting for reply to RCPT TO").
 */
enum smtp_client_event smtp_client_abort(struct smtp_client *c,
					 enum smtp_client_abort why);

/*
 * smtp_client_result - the outcome of recipient i of the current (or just
 * finished) transaction: its RCPT reply if refused, else the reply to
 * DATA/BDAT/end of data; on FAILED, recipients without one get the
 * failure.  Valid after TXN_DONE, or FAILED during a transaction, until
 * the next smtp_client_start.
 */
void smtp_client_result(const struct smtp_client *c, size_t i,
			struct smtp_reply *r);

/* smtp_client_failure - why the connection failed (after FAILED). */
void smtp_client_failure(const struct smtp_client *c, struct smtp_reply *r);

enum smtp_client_phase smtp_client_phase(const struct smtp_client *c);
/* smtp_client_extensions - SMTP_EXT_* of the last EHLO (reset by TLS). */
unsigned smtp_client_extensions(const struct smtp_client *c);
/* smtp_client_size_limit - the server's SIZE limit; 0 = none declared. */
uint64_t smtp_client_size_limit(const struct smtp_client *c);

#endif
