/*
 * tests/lib/smtp_peer.h - a scripted SMTP receiver for the delivery
 * tests.  It listens on a loopback address inside the test process,
 * speaks enough ESMTP for a real client (PIPELINING, CHUNKING/BDAT, DATA
 * with dot-unstuffing, SIZE, 8BITMIME and DSN parameters, RSET, NOOP,
 * QUIT), and misbehaves on request: reply overrides per command (for the
 * Nth occurrence, with a probability, or for arguments matching a
 * substring), delays, disconnects, a concurrent-connection limit and a
 * per-client-IP message rate.  It records what it saw.
 *
 * STARTTLS is a stub: it can be advertised, but the command is answered
 * "454 4.7.0 TLS not available"; no handshake is ever faked.
 *
 * Threads: the peer owns one acceptor thread and one thread per
 * connection; smtp_peer_stop() wakes and joins all of them (delays are
 * interrupted), so no thread outlives it.  Every function here may be
 * called from any test thread.  Records returned by smtp_peer_message()
 * and smtp_peer_command() never change once visible and stay valid until
 * smtp_peer_free().  Every reply is logged, and an accepted message
 * recorded, before the reply is sent: once a client has read a reply,
 * the records show it.  The peer copies everything in the options.
 */
#ifndef COREMTA_TESTS_SMTP_PEER_H
#define COREMTA_TESTS_SMTP_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a rule applies to, and what a command-log entry was. */
enum smtp_peer_cmd {
	SMTP_PEER_NONE,		/* a zeroed rule matches nothing */
	SMTP_PEER_CONNECT,	/* the greeting; a rule's match is the client IP */
	SMTP_PEER_EHLO,		/* EHLO and HELO */
	SMTP_PEER_MAIL,
	SMTP_PEER_RCPT,
	SMTP_PEER_DATA,		/* the DATA command (354) */
	SMTP_PEER_DATA_END,	/* "." after DATA, and BDAT LAST; match: the body */
	SMTP_PEER_BDAT,		/* every BDAT chunk (LAST too, before DATA_END) */
	SMTP_PEER_RSET,
	SMTP_PEER_NOOP,
	SMTP_PEER_QUIT,
	SMTP_PEER_STARTTLS,
	SMTP_PEER_OTHER,	/* VRFY, HELP, unknown verbs */
	SMTP_PEER_CMD_COUNT,
};

/* EHLO keywords advertised (smtp_peer_opts.caps). */
enum {
	SMTP_PEER_CAP_PIPELINING = 1 << 0,
	SMTP_PEER_CAP_CHUNKING = 1 << 1,
	SMTP_PEER_CAP_8BITMIME = 1 << 2,
	SMTP_PEER_CAP_SIZE = 1 << 3,	/* "SIZE <size_limit>", enforced */
	SMTP_PEER_CAP_DSN = 1 << 4,
	SMTP_PEER_CAP_ENHANCEDSTATUSCODES = 1 << 5,
	SMTP_PEER_CAP_SMTPUTF8 = 1 << 6,
	SMTP_PEER_CAP_STARTTLS = 1 << 7,	/* advertised only: see above */
};

/*
 * A behaviour.  For each command every rule with that cmd whose match
 * fits counts the occurrence; the first rule (in array order) that then
 * fires decides: wait delay_ms, then disconnect, or send reply (or the
 * normal reply when reply is NULL).  The session follows the reply sent
 * (a 2xx RCPT adds the recipient, a non-2xx DATA_END loses the message)
 * and a 421 reply always closes the connection after it is sent.
 */
struct smtp_peer_rule {
	enum smtp_peer_cmd cmd;
	/*
	 * NULL, or fire only when the argument contains this (ASCII case
	 * ignored): the text after the verb ("TO:<bad@x.test>"), the client
	 * IP for CONNECT, the kept body for DATA_END.
	 */
	const char *match;
	/*
	 * Which matching occurrences fire, 1-based, counted across all
	 * connections (per connection with per_connection): nth == 0 and
	 * times == 0 is every one; {nth = 2} only the second; {times = 3}
	 * the first three; {nth = 2, times = 3} the second to fourth.
	 */
	unsigned nth;
	unsigned times;
	bool per_connection;
	double probability;	/* 0: always; else the chance to fire (opts.seed) */
	unsigned delay_ms;	/* before replying or disconnecting */
	const char *reply;	/* "451 4.7.1 try later"; '\n' separates lines */
	bool disconnect;	/* close instead of replying */
	bool reset;		/* with disconnect: abort with an RST */
};

struct smtp_peer_opts {
	const char *addr;	/* numeric: "127.0.0.x" or "::1"; NULL = 127.0.0.1 */
	int port;		/* 0: a free port (smtp_peer_port()) */
	/*
	 * > 0: a socket bound and not yet listening (testlib_reserve_port)
	 * that the peer takes over (it closes it when it fails or stops) and
	 * listens on; addr and port are then ignored.  It lets a test name a
	 * receiver's port in a config while the receiver is down
	 * (connections are refused), race-free.
	 */
	int reserved_fd;
	const char *hostname;	/* in the greeting and EHLO; NULL = peer.test */
	unsigned caps;		/* SMTP_PEER_CAP_* */
	size_t size_limit;	/* with SMTP_PEER_CAP_SIZE; 0 = no limit */
	const struct smtp_peer_rule *rules;
	size_t nrules;
	uint64_t seed;		/* for rule probabilities; 0 = a fixed default */
	/* Connections served at once; beyond, busy_reply and close. 0 = no limit */
	unsigned max_conns;
	const char *busy_reply;	/* NULL = "421 4.7.0 too many connections" */
	/*
	 * MAIL commands accepted per client IP in any one-second window
	 * (a sliding window); beyond, rate_reply.  0 = no limit.
	 */
	unsigned max_msg_rate;
	const char *rate_reply;	/* NULL = "451 4.7.1 message rate exceeded" */
	unsigned max_rcpt;	/* per transaction, beyond: 452 4.5.3; 0 = none */
	size_t body_keep;	/* body bytes kept per message; 0 = 1 MiB */
	bool no_log;		/* keep no command log (long runs) */
};

/* An accepted message. */
struct smtp_peer_msg {
	unsigned conn;		/* connection number, 1-based, accept order */
	char client_ip[46];	/* getpeername() */
	char *helo;		/* the EHLO/HELO argument */
	char *mail_from;	/* reverse path without <> ("" = null sender) */
	char *mail_params;	/* ESMTP parameters after it, "" when none */
	char **rcpts;		/* accepted recipients without <>, in order */
	char **rcpt_params;
	size_t nrcpt;
	char *body;		/* the first body_len bytes, unstuffed, NUL-ended */
	size_t body_len;
	size_t size;		/* all body bytes (after dot-unstuffing) */
	uint64_t hash;		/* smtp_peer_hash() of the whole body */
	bool bdat;		/* sent with BDAT, not DATA */
	unsigned chunks;	/* BDAT commands that carried it */
	int64_t t_ns;		/* CLOCK_MONOTONIC when its end arrived */
};

/* One reply the peer gave (or a disconnect instead of one). */
struct smtp_peer_cmd_rec {
	unsigned conn;
	/*
	 * Which read() on the connection completed the command line (for
	 * BDAT: its command line; for DATA_END: the final "."): commands
	 * with the same number arrived together, i.e. were pipelined.
	 */
	unsigned read_no;
	enum smtp_peer_cmd cmd;
	char *line;		/* without CRLF; "." for DATA_END, IP for CONNECT */
	char *reply;		/* lines joined by '\n'; "" when disconnected */
	int code;		/* 0 when disconnected */
	int64_t t_ns;		/* CLOCK_MONOTONIC when it was answered */
};

struct smtp_peer_stats {
	size_t connections;	/* accepted, the refused ones included */
	size_t refused;		/* closed at once because of max_conns */
	size_t current;		/* being served now */
	size_t max_concurrent;	/* high-water mark of current */
	size_t messages;	/* accepted */
	size_t messages_bdat;	/* of which sent with BDAT */
	size_t messages_rejected;	/* end of data refused or disconnected */
	size_t rate_limited;	/* MAIL refused by max_msg_rate */
	size_t commands;	/* replies given (log entries, even with no_log) */
	size_t bare_lf;		/* command lines ended by LF without CR */
};

/*
 * smtp_peer_start - listen and start the acceptor.  Returns the peer, or
 * NULL with the reason in err (bad address, port in use, ...).
 */
struct smtp_peer *smtp_peer_start(const struct smtp_peer_opts *o, char *err,
				  size_t errlen);

int smtp_peer_port(const struct smtp_peer *p);
const char *smtp_peer_addr(const struct smtp_peer *p);

/* smtp_peer_stats - a consistent snapshot of the counters. */
void smtp_peer_stats(struct smtp_peer *p, struct smtp_peer_stats *st);
/* smtp_peer_message - the ith accepted message (arrival order) or NULL. */
const struct smtp_peer_msg *smtp_peer_message(struct smtp_peer *p, size_t i);
/* smtp_peer_command - the ith command-log entry or NULL. */
const struct smtp_peer_cmd_rec *smtp_peer_command(struct smtp_peer *p,
						  size_t i);
/* smtp_peer_count_replies - log entries for cmd whose reply starts so. */
size_t smtp_peer_count_replies(struct smtp_peer *p, enum smtp_peer_cmd cmd,
			       const char *prefix);

/*
 * smtp_peer_wait_messages - block until n messages were accepted in all.
 * Returns 0, or -ETIMEDOUT once timeout_ms passed.
 */
int smtp_peer_wait_messages(struct smtp_peer *p, size_t n, int timeout_ms);
/* smtp_peer_wait_idle - block until no connection is served; 0 or -ETIMEDOUT. */
int smtp_peer_wait_idle(struct smtp_peer *p, int timeout_ms);

/*
 * smtp_peer_stop - stop listening, close every connection and join every
 * thread.  The records stay readable.  Idempotent.
 */
void smtp_peer_stop(struct smtp_peer *p);
/* smtp_peer_free - stop if needed, then free everything.  NULL is fine. */
void smtp_peer_free(struct smtp_peer *p);

const char *smtp_peer_cmd_name(enum smtp_peer_cmd cmd);
/* smtp_peer_hash - FNV-1a 64, as in smtp_peer_msg.hash. */
uint64_t smtp_peer_hash(const void *data, size_t len);

#endif
