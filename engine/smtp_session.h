/*
 * smtp_session - the SMTP server protocol of one inbound connection as a
 * pure state machine: bytes in, reply bytes and events out, no I/O, no
 * clocks beyond time(), no threads.  ESMTP per RFC 5321 with PIPELINING
 * (2920), SIZE (1870), 8BITMIME (6152), DSN (3461), CHUNKING/BINARYMIME
 * (3030), STARTTLS (3207), AUTH PLAIN/LOGIN (4954), SMTPUTF8 (6531) and
 * ENHANCEDSTATUSCODES (2034/3463); policy from the client's <source>.
 *
 * Threads: a session is owned by ONE intake thread, which makes every call
 * on it.  Sessions share nothing but the struct cfg, which is read-only
 * and must outlive the session (a reload keeps the old cfg alive until the
 * sessions that use it end).
 *
 * The driver (engine's io_uring loop) feeds received (decrypted) bytes to
 * smtp_session_input(), sends whatever the session appended to `out`, and
 * performs the action an event asks for:
 *
 *   SMTP_EV_NONE      everything was consumed; read more.
 *   SMTP_EV_YIELD     the per-call command budget is spent (fairness
 *                     between connections): feed buf + consumed again on
 *                     the next loop turn.
 *   SMTP_EV_MESSAGE   a message is complete.  smtp_session_message() shows
 *                     it; smtp_session_take_body() hands over its bytes.
 *                     Spool it durably, then call
 *                     smtp_session_message_result().  Input is paused until
 *                     then: bytes after the final dot (or BDAT LAST chunk)
 *                     are NOT consumed; feed them again afterwards.
 *   SMTP_EV_STARTTLS  "220 2.0.0" is in out.  Flush it, run the TLS
 *                     handshake, then call smtp_session_tls_started().
 *                     The rest of this buffer was consumed and thrown away
 *                     (RFC 3207 section 6: no plaintext injection); so must
 *                     be anything else already read in plaintext.
 *   SMTP_EV_CLOSE     flush out and close (QUIT, 421, refused greeting).
 *                     Further input returns SMTP_EV_CLOSE again.
 *
 * Partial command lines are kept inside the session, so with
 * SMTP_EV_NONE the driver can recycle its receive buffer at once.
 *
 * Ownership: the session owns everything it returns pointers to; those
 * stay valid until the next call on the session unless said otherwise.
 * `out` is the caller's; the session only appends to it.  The message
 * buffer becomes the caller's with smtp_session_take_body() (free() it).
 * Errors in the client's input are replies, never failures of a call;
 * calls out of order (input while a message awaits its result) are bugs
 * and abort.
 */
#ifndef COREMTA_SMTP_SESSION_H
#define COREMTA_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config/config.h"
#include "util/mail.h"
#include "util/util.h"

struct smtp_session;

/* Commands handled per smtp_session_input() call before SMTP_EV_YIELD. */
#define SMTP_SESSION_CMD_BUDGET		64
/* Protocol errors (5.5.x, bad addresses, refused relaying) before 421. */
#define SMTP_SESSION_MAX_ERRORS		10
/* Failed AUTH attempts in one session before 421. */
#define SMTP_SESSION_MAX_AUTH_FAILURES	3
/* Command line limits in octets, CRLF included (RFC 5321 4.5.3.1.4; */
/* MAIL/RCPT raised for ESMTP parameters, RFC 1869/3461; AUTH RFC 4954). */
#define SMTP_SESSION_LINE_MAX		512
#define SMTP_SESSION_ENVELOPE_LINE_MAX	1024
#define SMTP_SESSION_AUTH_LINE_MAX	12288
/* Text line limit in DATA, CRLF excluded (RFC 5321 4.5.3.1.6). */
#define SMTP_SESSION_TEXT_LINE_MAX	998

enum smtp_event {
	SMTP_EV_NONE,
	SMTP_EV_YIELD,
	SMTP_EV_MESSAGE,
	SMTP_EV_STARTTLS,
	SMTP_EV_CLOSE,
};

/* A refused command, for the reject log (records c and r). */
enum smtp_reject_kind {
	SMTP_REJECT_CONNECTION,	/* greeting refused or session ended by 421 */
	SMTP_REJECT_RECIPIENT,	/* RCPT TO refused */
	SMTP_REJECT_MESSAGE,	/* MAIL FROM, DATA/BDAT or the content refused */
	SMTP_REJECT_COMMAND,	/* protocol error: unknown, out of order, syntax */
};

struct smtp_reject {
	enum smtp_reject_kind kind;
	int code;		/* 550 */
	const char *reply;	/* "550 5.7.1 relaying denied", no CRLF */
	const char *client_ip;	/* "" when unknown */
	const char *helo;	/* NULL before HELO/EHLO */
	const char *auth_user;	/* NULL unless authenticated */
	const char *mail_from;	/* current sender ("" = <>), or NULL */
	const char *rcpt;	/* the refused recipient (RCPT only), or NULL */
};

/* Called synchronously from the call that sent the reply; r is borrowed. */
typedef void smtp_reject_fn(void *arg, const struct smtp_reject *r);

struct smtp_session_params {
	const struct cfg *cfg;			/* required */
	const struct cfg_source *source;	/* required: cfg_source_lookup()
						 * of the peer and the
						 * listener's source=NAME */
	const struct sockaddr *peer;		/* copied; may be NULL */
	const char *hostname;			/* our name; NULL = host-name */
	bool tls_available;			/* a server certificate is loaded */
	bool tls_active;			/* implicit-TLS listener */
	/*
	 * Hard caps of the driver (spool record limits, memory), applied on
	 * top of the source's max-message-size / max-rcpt-per-message; 0 = no
	 * cap.  The message handed over may exceed max_message_size by the
	 * headers the session adds (at most a few hundred octets).
	 */
	uint64_t max_message_size;
	uint32_t max_rcpt;
	/* Process-unique connection number: goes into added Message-IDs. */
	uint64_t conn_id;
	smtp_reject_fn *reject;			/* may be NULL */
	void *reject_arg;
	/*
	 * smtp-max-auth-failure-rate across connections: called with
	 * failed=false when the client starts AUTH and failed=true after
	 * each failure; true means the client's address is over the limit
	 * (the session answers 421 and closes).  May be NULL.
	 */
	bool (*auth_limit)(void *arg, const struct sockaddr *peer,
			   const struct cfg_rate *limit, bool failed);
	void *auth_arg;
	/*
	 * Room in the spool for a message of <size> octets (0: unknown),
	 * asked at MAIL (SIZE=) and at DATA/BDAT; false answers 452 4.3.1
	 * (RFC 1870 6.1) and the client may try again later.  May be NULL.
	 */
	bool (*storage)(void *arg, uint64_t size);
	void *storage_arg;
	/*
	 * The driver's budget for message data held in memory: called with
	 * the change in size of the session's message buffer; a growth it
	 * answers false to is not made, and the message gets 452 4.3.1
	 * (at DATA/BDAT when even the first buffer does not fit).  Shrinks
	 * are always reported.  May be NULL.
	 */
	bool (*memory)(void *arg, int64_t delta);
	void *memory_arg;
	/*
	 * Streaming to the spool: once a message's content passes
	 * spill_window octets, everything after its header section goes to
	 * spill() in pieces of up to about spill_window as it arrives (after
	 * dot-unstuffing), so a message costs a window of memory whatever its
	 * size (plus its header section, kept for the header policy up to
	 * 1 MiB; of a longer one, only that much is looked at).  spill(arg, NULL, 0) means "forget what this message
	 * streamed" (a new message, or it was refused).  A negative return
	 * refuses the message with 452 4.3.1.  NULL: messages stay whole in
	 * memory.
	 */
	int (*spill)(void *arg, const void *p, size_t n);
	void *spill_arg;
	size_t spill_window;
	/*
	 * A recipient check after relaying was allowed (the suppression
	 * store): return NULL to accept rcpt, or the whole reply line to
	 * refuse it with ("550 5.7.1 ...", no CRLF; valid until the next
	 * call).  mail_from is "" for the null sender.  May be NULL.
	 */
	const char *(*rcpt_check)(void *arg, const struct cfg_source *src,
				  const char *mail_from, const char *rcpt);
	void *rcpt_arg;
};

struct smtp_rcpt {
	const char *addr;	/* forward-path without <> */
	uint32_t notify;	/* SMTP_NOTIFY_*; 0 = NOTIFY= absent */
	const char *orcpt;	/* ORCPT= as received ("rfc822;a+2Bb@x"), or NULL */
	const char *orcpt_addr;	/* its address, xtext-decoded, or NULL */
};

/*
 * A finished message.  Valid from SMTP_EV_MESSAGE until
 * smtp_session_message_result(); data/len until then or, once taken, for
 * as long as the caller keeps the buffer smtp_session_take_body() gave it.
 */
struct smtp_message {
	const char *mail_from;	/* reverse-path without <>; "" = null sender */
	uint64_t size;		/* SIZE= as declared, 0 if absent */
	enum mail_body body;
	enum mail_ret ret;
	const char *envid;	/* ENVID= decoded; else X-EnvId: when
				 * process-x-envid; else NULL */
	bool smtputf8;
	const char *auth_user;	/* NULL unless authenticated */
	const char *helo;
	const char *client_ip;	/* "" when unknown */
	bool tls;		/* received over TLS */
	/* the chosen virtual-mta or pool: X-Virtual-MTA: (or its fallback),
	 * the source's <pattern-list>, its default-virtual-mta; NULL = {default} */
	const char *virtual_mta;
	const char *job_id;	/* jobid-prefix + X-Job: (process-x-job) */
	const struct cfg_source *source;	/* the policy it was accepted under */
	size_t rcpt_count;
	const struct smtp_rcpt *rcpts;
	const char *data;	/* the message to store: added headers, */
	size_t len;		/* unstuffed body, control headers removed */
	uint64_t spilled;	/* then this many octets streamed to spill():
				 * the message is data[0, len) followed by them */
	uint32_t seq;		/* 1, 2, ... within the session */
};

/*
 * smtp_session_new - start a session and append the greeting to out:
 * 220, or 521 when the source has smtp-service no (then *ev is
 * SMTP_EV_CLOSE, else SMTP_EV_NONE).  Never fails.
 */
struct smtp_session *smtp_session_new(const struct smtp_session_params *p,
				      struct strbuf *out,
				      enum smtp_event *ev);

/*
 * smtp_session_input - process received bytes, appending replies to out.
 * *consumed tells how many bytes of buf were used; see the event list
 * above for what the driver does next.
 */
enum smtp_event smtp_session_input(struct smtp_session *s, const char *buf,
				   size_t len, size_t *consumed,
				   struct strbuf *out);

/* smtp_session_message - the pending message (NULL when none). */
const struct smtp_message *smtp_session_message(struct smtp_session *s);

/*
 * smtp_session_take_body - hand the buffer that holds the pending
 * message's data to the caller, who free()s it.  The message's data/len
 * point into it.  Once per message; NULL when no message is pending or
 * it was taken already.
 */
void *smtp_session_take_body(struct smtp_session *s);

/*
 * smtp_session_message_result - the spool's verdict on the pending
 * message: 0 → "250 2.0.0 Ok: queued as <queue_id>"; -ENOSPC → 452 4.3.1;
 * -EAGAIN (back-pressure) → 451 4.3.2; anything else → 451 4.3.0.  Ends
 * the transaction and resumes input.  After smtp_session_timeout() it
 * only ends the transaction (the session is closing).
 */
void smtp_session_message_result(struct smtp_session *s, int status,
				 const char *queue_id, struct strbuf *out);

/*
 * smtp_session_tls_started - the handshake after SMTP_EV_STARTTLS
 * succeeded: forget HELO, transaction and partial input (RFC 3207 4.2).
 */
void smtp_session_tls_started(struct smtp_session *s);

/*
 * smtp_session_timeout - the client was silent too long (arm at least
 * 5 minutes, RFC 5321 4.5.3.2.7): appends 421 4.4.2; the driver closes.
 */
void smtp_session_timeout(struct smtp_session *s, struct strbuf *out);

/*
 * smtp_session_greeted - a HELO/EHLO was accepted (ever: STARTTLS does
 * not undo it here).  smtp_session_in_line - part of a command line is
 * buffered, its end not seen yet.  For the driver's deadlines.
 */
bool smtp_session_greeted(const struct smtp_session *s);
bool smtp_session_in_line(const struct smtp_session *s);
/*
 * smtp_session_in_body - a DATA or BDAT body is being received: its
 * message will want a commit soon.  For the driver's group commit.
 */
bool smtp_session_in_body(const struct smtp_session *s);

/* smtp_session_free - end the session; tolerates NULL. */
void smtp_session_free(struct smtp_session *s);

#endif
