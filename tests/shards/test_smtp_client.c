/*
 * tests/shards/test_smtp_client.c - the outbound SMTP client state machine
 * driven by scripted conversations: server bytes in, exact client bytes
 * out, events, per-recipient outcomes.  Every script runs three ways
 * (whole replies, one byte at a time, ragged fragments with a tiny body
 * scratch buffer) and must give the same bytes.
 *
 * Criterion copies parameters into each test's process, so parameters
 * are indices into the file-scope tables, never pointers.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <signal.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "tests/lib/testlib.h"
#include "util/util.h"

#include "shards/smtp_client.h"

TestSuite(smtp_client, .timeout = 20);

/* ---- the harness: a fake driver ------------------------------------- */

enum op {
	OP_END,
	OP_S,		/* the server sends s */
	OP_C,		/* the client sent exactly s since the last OP_C */
	OP_EV,		/* events since the last OP_EV, space-separated */
	OP_START,	/* smtp_client_start(txns[n]) */
	OP_TLS,		/* handshake done: smtp_client_tls_started() */
	OP_QUIT,
	OP_ABORT,	/* smtp_client_abort(n) */
	OP_RES,		/* every recipient's outcome, '|'-separated */
	OP_FAIL,	/* smtp_client_failure() */
	OP_PHASE,	/* smtp_client_phase() == n */
	OP_EXT,		/* smtp_client_extensions() by name */
	OP_SIZE,	/* smtp_client_size_limit() == n */
};

struct step {
	enum op op;
	const char *s;
	unsigned long n;
};

#define S(x) { OP_S, x, 0 }
#define C(x) { OP_C, x, 0 }
#define EV(x) { OP_EV, x, 0 }
#define START(i) { OP_START, NULL, i }
#define TLS { OP_TLS, NULL, 0 }
#define QUIT { OP_QUIT, NULL, 0 }
#define ABORT(w) { OP_ABORT, NULL, w }
#define RES(x) { OP_RES, x, 0 }
#define FAIL(x) { OP_FAIL, x, 0 }
#define PHASE(p) { OP_PHASE, NULL, p }
#define EXT(x) { OP_EXT, x, 0 }
#define SIZE(n) { OP_SIZE, NULL, n }
#define END { OP_END, NULL, 0 }

static const char *const ev_names[] = {
	[SMTPC_EV_NONE] = "NONE", [SMTPC_EV_READY] = "READY",
	[SMTPC_EV_STARTTLS] = "STARTTLS", [SMTPC_EV_TXN_DONE] = "TXN_DONE",
	[SMTPC_EV_CLOSED] = "CLOSED", [SMTPC_EV_FAILED] = "FAILED",
};

static const struct { unsigned bit; const char *name; } ext_names[] = {
	{ SMTP_EXT_EHLO, "EHLO" }, { SMTP_EXT_PIPELINING, "PIPELINING" },
	{ SMTP_EXT_CHUNKING, "CHUNKING" }, { SMTP_EXT_8BITMIME, "8BITMIME" },
	{ SMTP_EXT_SIZE, "SIZE" }, { SMTP_EXT_DSN, "DSN" },
	{ SMTP_EXT_SMTPUTF8, "SMTPUTF8" }, { SMTP_EXT_STARTTLS, "STARTTLS" },
	{ SMTP_EXT_ENHANCEDSTATUSCODES, "ENHANCEDSTATUSCODES" },
	{ SMTP_EXT_AUTH, "AUTH" },
};

enum mode { MODE_WHOLE, MODE_BYTES, MODE_RAGGED, MODE_COUNT };

struct harness {
	struct smtp_client *c;
	struct strbuf out;	/* the client's pending output */
	struct strbuf sent;	/* everything "sent" since the last OP_C */
	struct strbuf events;	/* since the last OP_EV */
	enum mode mode;
	bool done;		/* FAILED or CLOSED seen */
	const char *name;
};

static void format_reply(struct strbuf *sb, const struct smtp_reply *r)
{
	sb_printf(sb, "%d %s %s%s", r->code, r->status, r->text,
		  r->local ? " [local]" : "");
}

static void note_event(struct harness *h, enum smtp_client_event ev)
{
	if (ev == SMTPC_EV_NONE)
		return;
	if (h->events.len)
		sb_addc(&h->events, ' ');
	sb_adds(&h->events, ev_names[ev]);
	if (ev == SMTPC_EV_FAILED || ev == SMTPC_EV_CLOSED)
		h->done = true;
}

/* flush - "send" out, then the body pieces, as the driver contract says. */
static void flush(struct harness *h)
{
	static char scratch[65536];
	size_t cap = h->mode == MODE_WHOLE ? sizeof(scratch) :
		     h->mode == MODE_BYTES ? 1 : 5;
	const char *p;
	size_t n;

	sb_add(&h->sent, sb_str(&h->out), h->out.len);
	sb_reset(&h->out);
	while ((n = smtp_client_body(h->c, scratch, cap, &p)) > 0) {
		cr_assert(n <= cap, "%s: body piece over cap", h->name);
		sb_add(&h->sent, p, n);
	}
	cr_assert_neq(smtp_client_phase(h->c), SMTPC_PHASE_BODY,
		      "%s: body left after smtp_client_body returned 0", h->name);
}

static void feed_piece(struct harness *h, const char *buf, size_t len)
{
	size_t off = 0;

	while (off < len && !h->done) {
		size_t used = 0;
		enum smtp_client_event ev =
			smtp_client_input(h->c, buf + off, len - off, &used, &h->out);

		cr_assert(used <= len - off);
		cr_assert(used > 0 || ev != SMTPC_EV_NONE, "%s: no progress", h->name);
		off += used;
		note_event(h, ev);
		flush(h);
		if (ev == SMTPC_EV_STARTTLS)
			cr_assert_eq(off, len, "%s: plaintext left after STARTTLS", h->name);
	}
}

static void feed(struct harness *h, const char *s)
{
	static const size_t ragged[] = { 1, 3, 7, 2, 13, 5, 31, 4 };
	size_t len = strlen(s), off = 0, k = 0;

	while (off < len) {
		size_t n = len - off;
		if (h->mode == MODE_BYTES)
			n = 1;
		else if (h->mode == MODE_RAGGED && n > ragged[k % ARRAY_SIZE(ragged)])
			n = ragged[k++ % ARRAY_SIZE(ragged)];
		feed_piece(h, s + off, n);
		off += n;
	}
}

/* ---- transactions and server replies used by the scripts ------------ */

static const struct smtp_rcpt r_b[] = { { .addr = "b@y.org" } };
static const struct smtp_rcpt r_three[] = {
	{ .addr = "r1@y.org" }, { .addr = "r2@y.org" }, { .addr = "r3@y.org" },
};
static const struct smtp_rcpt r_dsn[] = {
	{ .addr = "b@y.org", .notify = MAIL_NOTIFY_SUCCESS | MAIL_NOTIFY_FAILURE,
	  .orcpt = "rfc822;b+x=1@y.org" },
	{ .addr = "c@y.org", .notify = MAIL_NOTIFY_NEVER | MAIL_NOTIFY_DELAY },
	{ .addr = "d@y.org", .notify = MAIL_NOTIFY_DELAY, .orcpt = "d@y.org" },
};
static const struct smtp_rcpt r_evil[] = {
	{ .addr = "evil@y.org>\r\nDATA" }, { .addr = "ok@y.org" },
};
static const struct smtp_rcpt r_allevil[] = { { .addr = "x\ty@y.org" } };

#define BODY1 "Hello\r\n"
#define BODY3 "Subject: t\r\n\r\nbody\r\n"
#define BODY_DOTS ".leading\r\nmid\r\n..two\r\n.\r\nend"
#define STUFFED_DOTS "..leading\r\nmid\r\n...two\r\n..\r\nend\r\n.\r\n"

enum {
	T_ONE, T_THREE, T_DSN, T_DOTS, T_8BIT, T_EVIL, T_EMPTY, T_BADFROM,
	T_ALLEVIL, T_UTF8,
};

static const struct smtp_txn txns[] = {
	[T_ONE] = { .mail_from = "a@x.org", .rcpts = r_b, .rcpt_count = 1,
		    .body = BODY1, .body_len = sizeof(BODY1) - 1 },
	[T_THREE] = { .mail_from = "a@x.org", .rcpts = r_three, .rcpt_count = 3,
		      .body = BODY3, .body_len = sizeof(BODY3) - 1 },
	[T_DSN] = { .mail_from = "a@x.org", .envid = "id+1=2 x", .ret = MAIL_RET_FULL,
		    .rcpts = r_dsn, .rcpt_count = 3,
		    .body = BODY1, .body_len = sizeof(BODY1) - 1 },
	[T_DOTS] = { .mail_from = "", .rcpts = r_b, .rcpt_count = 1,
		     .body = BODY_DOTS, .body_len = sizeof(BODY_DOTS) - 1 },
	[T_8BIT] = { .mail_from = "a@x.org", .body_8bit = true, .ret = MAIL_RET_HDRS,
		     .rcpts = r_b, .rcpt_count = 1,
		     .body = BODY1, .body_len = sizeof(BODY1) - 1 },
	[T_EVIL] = { .mail_from = "a@x.org", .rcpts = r_evil, .rcpt_count = 2,
		     .body = BODY1, .body_len = sizeof(BODY1) - 1 },
	[T_EMPTY] = { .mail_from = "a@x.org", .rcpts = r_b, .rcpt_count = 1,
		      .body = "", .body_len = 0 },
	[T_BADFROM] = { .mail_from = "a@x.org\r\nRSET", .rcpts = r_b, .rcpt_count = 1,
			.body = BODY1, .body_len = sizeof(BODY1) - 1 },
	[T_ALLEVIL] = { .mail_from = "a@x.org", .rcpts = r_allevil, .rcpt_count = 1,
			.body = BODY1, .body_len = sizeof(BODY1) - 1 },
	[T_UTF8] = { .mail_from = "j\xc3\xb6rg@x.org", .smtputf8 = true,
		     .body_8bit = true, .rcpts = r_b, .rcpt_count = 1,
		     .body = BODY1, .body_len = sizeof(BODY1) - 1 },
};

#define GREET "220 mx.example ESMTP\r\n"
#define EHLO_CMD "EHLO out.example\r\n"
#define EHLO_ALL "250-mx.example greets out.example\r\n250-PIPELINING\r\n" \
	"250-SIZE 1000000\r\n250-8BITMIME\r\n250-DSN\r\n" \
	"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
#define EHLO_PIPE "250-mx.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250 mx.example\r\n"
#define EHLO_CHUNK "250-mx.example\r\n250 CHUNKING\r\n"
#define EHLO_PIPE_CHUNK "250-mx.example\r\n250-pipelining\r\n250 chunking\r\n"
#define EHLO_TLS "250-mx.example\r\n250-STARTTLS\r\n250 PIPELINING\r\n"
#define EHLO_DSN "250-mx.example\r\n250-PIPELINING\r\n250 DSN\r\n"

#define MAIL1 "MAIL FROM:<a@x.org>\r\n"
#define RCPT_B "RCPT TO:<b@y.org>\r\n"
#define RCPT3 "RCPT TO:<r1@y.org>\r\nRCPT TO:<r2@y.org>\r\nRCPT TO:<r3@y.org>\r\n"
#define OPEN_PIPE S(GREET), C(EHLO_CMD), S(EHLO_PIPE), EV("READY")
#define OPEN_PLAIN S(GREET), C(EHLO_CMD), S(EHLO_PLAIN), EV("READY")

/* ---- the scripts ---------------------------------------------------- */

static const struct step s_greet_421[] = {
	S("421 4.3.2 Service not available\r\n"), EV("FAILED"), C(""),
	FAIL("421 4.3.2 Service not available"), PHASE(SMTPC_PHASE_DONE), END,
};

static const struct step s_greet_554[] = {
	PHASE(SMTPC_PHASE_GREETING),
	S("554-5.7.1 No SMTP service here\r\n554 5.7.1 go away\r\n"),
	EV("FAILED"), C("QUIT\r\n"), FAIL("554 5.7.1 No SMTP service here go away"),
	END,
};

static const struct step s_greet_450[] = {
	S("450 try later\r\n"), EV("FAILED"), C("QUIT\r\n"),
	FAIL("450 4.0.0 try later"), END,
};

static const struct step s_ehlo_multiline[] = {
	S("220-mx.example ESMTP\r\n220 ready\r\n"), C(EHLO_CMD),
	PHASE(SMTPC_PHASE_COMMAND), S(EHLO_ALL), EV("READY"), C(""),
	EXT("EHLO PIPELINING CHUNKING 8BITMIME SIZE DSN SMTPUTF8 ENHANCEDSTATUSCODES"),
	SIZE(1000000), PHASE(SMTPC_PHASE_IDLE),
	QUIT, C("QUIT\r\n"), PHASE(SMTPC_PHASE_COMMAND), S("221 2.0.0 bye\r\n"),
	EV("CLOSED"), PHASE(SMTPC_PHASE_DONE), END,
};

static const struct step s_ehlo_odd_lines[] = {
	/* Bare LF endings, a keyword with parameters, AUTH, an unknown one. */
	S("220 hi\n"), C(EHLO_CMD),
	S("250-mx\n250-AUTH PLAIN LOGIN\n250-X-FOO bar\n250-SIZE\n250 8bitmime\n"),
	EV("READY"), EXT("EHLO 8BITMIME SIZE AUTH"), SIZE(0), END,
};

static const struct step s_helo_fallback[] = {
	S(GREET), C(EHLO_CMD), S("502 5.5.2 Error: command not recognized\r\n"),
	C("HELO out.example\r\n"), S("250 mx.example\r\n"), EV("READY"), EXT(""),
	START(T_ONE), C(MAIL1), PHASE(SMTPC_PHASE_COMMAND), S("250 ok\r\n"),
	C(RCPT_B), S("250 ok\r\n"), C("DATA\r\n"), S("354 go ahead\r\n"),
	C(BODY1 ".\r\n"), PHASE(SMTPC_PHASE_DATA_END),
	S("250 2.0.0 Ok: queued as 4F2\r\n"), EV("TXN_DONE"),
	RES("250 2.0.0 Ok: queued as 4F2"), PHASE(SMTPC_PHASE_IDLE), END,
};

static const struct step s_helo_rejected[] = {
	S(GREET), C(EHLO_CMD), S("500 what\r\n"), C("HELO out.example\r\n"),
	S("550 5.7.1 not you\r\n"), EV("FAILED"), C("QUIT\r\n"),
	FAIL("550 5.7.1 not you"), END,
};

static const struct step s_starttls[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_TLS), C("STARTTLS\r\n"),
	S("220 2.0.0 Ready to start TLS\r\n"), EV("STARTTLS"), PHASE(SMTPC_PHASE_TLS),
	C(""), TLS, C(EHLO_CMD), EXT(""),
	S("250-mx.example\r\n250-PIPELINING\r\n250 SIZE 500\r\n"), EV("READY"),
	EXT("EHLO PIPELINING SIZE"), SIZE(500),
	START(T_ONE), C("MAIL FROM:<a@x.org> SIZE=7\r\n" RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(BODY1 ".\r\n"),
	S("250 2.0.0 ok\r\n"), EV("TXN_DONE"), RES("250 2.0.0 ok"), END,
};

static const struct step s_starttls_not_offered[] = {
	OPEN_PIPE, C(""), EXT("EHLO PIPELINING ENHANCEDSTATUSCODES"), END,
};

static const struct step s_starttls_required_missing[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_PIPE), EV("FAILED"), C("QUIT\r\n"),
	FAIL("454 4.7.4 TLS is required, but was not offered by host [local]"), END,
};

static const struct step s_starttls_required_helo[] = {
	S(GREET), C(EHLO_CMD), S("502 no\r\n"), C("HELO out.example\r\n"),
	S("250 ok\r\n"), EV("FAILED"), C("QUIT\r\n"),
	FAIL("454 4.7.4 TLS is required, but was not offered by host [local]"), END,
};

static const struct step s_starttls_refused[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_TLS), C("STARTTLS\r\n"),
	S("454 4.7.0 TLS not available\r\n"), EV("READY"), C(""),
	PHASE(SMTPC_PHASE_IDLE), START(T_ONE), C(MAIL1 RCPT_B "DATA\r\n"), END,
};

static const struct step s_starttls_refused_required[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_TLS), C("STARTTLS\r\n"),
	S("454 4.7.0 TLS not available\r\n"), EV("FAILED"), C("QUIT\r\n"),
	FAIL("454 4.7.4 TLS is required, but host refused STARTTLS: "
	     "454 TLS not available [local]"), END,
};

/* Whole-buffer only: byte by byte, the driver would hand later bytes to TLS. */
static const struct step s_starttls_injection[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_TLS), C("STARTTLS\r\n"),
	S("220 go ahead\r\n250-injected\r\n"), EV("FAILED"), C(""),
	FAIL("451 4.5.0 protocol error: data after STARTTLS reply while waiting "
	     "for reply to STARTTLS [local]"), END,
};

static const struct step s_tls_active[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_TLS), EV("READY"), C(""),
	EXT("EHLO PIPELINING STARTTLS"), END,
};

static const struct step s_tls_handshake_fails[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_TLS), C("STARTTLS\r\n"), S("220 go\r\n"),
	EV("STARTTLS"), ABORT(SMTPC_ABORT_TLS), EV("FAILED"), C(""),
	FAIL("454 4.7.5 TLS failure while in TLS handshake [local]"), END,
};

static const struct step s_pipelining_mixed[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"), PHASE(SMTPC_PHASE_COMMAND),
	S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.1 mailbox busy\r\n"
	  "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
	  "550 5.1.1 Please try double-checking. - gsmtp\r\n"
	  "354 End data with <CR><LF>.<CR><LF>\r\n"),
	C(BODY3 ".\r\n"), PHASE(SMTPC_PHASE_DATA_END), EV(""),
	S("250 2.0.0 Ok: queued as ABC\r\n"), EV("TXN_DONE"), C(""),
	RES("250 2.0.0 Ok: queued as ABC|450 4.2.1 mailbox busy|550 5.1.1 The email "
	    "account that you tried to reach does not exist. Please try "
	    "double-checking. - gsmtp"),
	/* The warm connection takes the next message. */
	START(T_ONE), C(MAIL1 RCPT_B "DATA\r\n"), S("250 ok\r\n250 ok\r\n354 go\r\n"),
	C(BODY1 ".\r\n"), S("250 ok\r\n"), EV("TXN_DONE"), RES("250 2.0.0 ok"),
	QUIT, C("QUIT\r\n"), S("221 2.0.0 Bye\r\n"), EV("CLOSED"), END,
};

static const struct step s_lockstep_mixed[] = {
	OPEN_PLAIN, START(T_THREE), C(MAIL1), S("250 ok\r\n"),
	C("RCPT TO:<r1@y.org>\r\n"), S("250 ok\r\n"), C("RCPT TO:<r2@y.org>\r\n"),
	S("450 4.2.1 busy\r\n"), C("RCPT TO:<r3@y.org>\r\n"),
	S("550 5.1.1 unknown\r\n"), C("DATA\r\n"), S("354 go\r\n"),
	PHASE(SMTPC_PHASE_DATA_END), C(BODY3 ".\r\n"), S("250 2.0.0 ok\r\n"),
	EV("TXN_DONE"), RES("250 2.0.0 ok|450 4.2.1 busy|550 5.1.1 unknown"), END,
};

static const struct step s_pipelining_ignored[] = {
	OPEN_PIPE, START(T_ONE), C(MAIL1), S("250 ok\r\n"), C(RCPT_B),
	S("250 ok\r\n"), C("DATA\r\n"), S("354 go\r\n"), C(BODY1 ".\r\n"),
	S("250 ok\r\n"), EV("TXN_DONE"), RES("250 2.0.0 ok"), END,
};

static const struct step s_bdat_pipelined[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_PIPE_CHUNK), EV("READY"),
	EXT("EHLO PIPELINING CHUNKING"),
	START(T_ONE), C(MAIL1 RCPT_B "BDAT 7 LAST\r\n" BODY1),
	PHASE(SMTPC_PHASE_DATA_END),
	S("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n"), EV("TXN_DONE"),
	RES("250 2.0.0 queued"),
	/* BDAT sends the body as it is: no dot-stuffing, no terminator. */
	START(T_DOTS), C("MAIL FROM:<>\r\n" RCPT_B "BDAT 28 LAST\r\n" BODY_DOTS),
	S("250 ok\r\n250 ok\r\n250 ok\r\n"), EV("TXN_DONE"),
	START(T_EMPTY), C(MAIL1 RCPT_B "BDAT 0 LAST\r\n"), PHASE(SMTPC_PHASE_DATA_END),
	S("250 ok\r\n250 ok\r\n250 ok\r\n"), EV("TXN_DONE"), END,
};

static const struct step s_bdat_lockstep[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_CHUNK), EV("READY"), START(T_THREE),
	C(MAIL1), S("250 ok\r\n"), C("RCPT TO:<r1@y.org>\r\n"), S("250 ok\r\n"),
	C("RCPT TO:<r2@y.org>\r\n"), S("550 5.1.1 no\r\n"),
	C("RCPT TO:<r3@y.org>\r\n"), S("250 ok\r\n"),
	C("BDAT 20 LAST\r\n" BODY3), S("250 2.0.0 ok\r\n"), EV("TXN_DONE"),
	RES("250 2.0.0 ok|550 5.1.1 no|250 2.0.0 ok"), END,
};

static const struct step s_chunking_ignored[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_PIPE_CHUNK), EV("READY"), START(T_ONE),
	C(MAIL1 RCPT_B "DATA\r\n"), END,
};

static const struct step s_dot_stuffing[] = {
	OPEN_PIPE, START(T_DOTS), C("MAIL FROM:<>\r\n" RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(STUFFED_DOTS), S("250 ok\r\n"),
	EV("TXN_DONE"), START(T_EMPTY), C(MAIL1 RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(".\r\n"), S("250 ok\r\n"),
	EV("TXN_DONE"), END,
};

static const struct step s_refused_lockstep[] = {
	OPEN_PLAIN, START(T_THREE), C(MAIL1), S("250 ok\r\n"),
	C("RCPT TO:<r1@y.org>\r\n"), S("550 5.1.1 a\r\n"),
	C("RCPT TO:<r2@y.org>\r\n"), S("551 b\r\n"),
	C("RCPT TO:<r3@y.org>\r\n"), S("450 c\r\n"),
	C("RSET\r\n"), PHASE(SMTPC_PHASE_COMMAND), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("550 5.1.1 a|551 5.0.0 b|450 4.0.0 c"), PHASE(SMTPC_PHASE_IDLE), END,
};

static const struct step s_refused_pipelined[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"),
	S("250 ok\r\n550 5.1.1 a\r\n550 5.1.1 b\r\n550 5.1.1 c\r\n"
	  "554 5.5.1 Error: no valid recipients\r\n"),
	C("RSET\r\n"), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("550 5.1.1 a|550 5.1.1 b|550 5.1.1 c"), END,
};

static const struct step s_refused_but_354[] = {
	OPEN_PIPE, START(T_ONE), C(MAIL1 RCPT_B "DATA\r\n"),
	S("250 ok\r\n550 5.1.1 no\r\n354 go\r\n"), C(".\r\n"),
	S("554 5.5.1 no recipients\r\n"), C("RSET\r\n"), S("250 ok\r\n"),
	EV("TXN_DONE"), RES("550 5.1.1 no"), END,
};

static const struct step s_refused_bdat[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_PIPE_CHUNK), EV("READY"), START(T_ONE),
	C(MAIL1 RCPT_B "BDAT 7 LAST\r\n" BODY1),
	S("250 ok\r\n550 5.1.1 no\r\n503 5.5.1 no valid recipients\r\n"),
	C("RSET\r\n"), S("250 ok\r\n"), EV("TXN_DONE"), RES("550 5.1.1 no"), END,
};

static const struct step s_mail_refused_pipelined[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"),
	S("550 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n"
	  "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n"),
	C("RSET\r\n"), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("550 5.7.1 sender rejected|550 5.7.1 sender rejected|"
	    "550 5.7.1 sender rejected"), END,
};

static const struct step s_mail_refused_lockstep[] = {
	OPEN_PLAIN, START(T_THREE), C(MAIL1), S("451 4.3.0 try later\r\n"),
	C("RSET\r\n"), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("451 4.3.0 try later|451 4.3.0 try later|451 4.3.0 try later"), END,
};

static const struct step s_data_refused[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n451 4.3.0 no DATA now\r\n"),
	C("RSET\r\n"), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("451 4.3.0 no DATA now|550 5.1.1 no|451 4.3.0 no DATA now"), END,
};

static const struct step s_final_refused[] = {
	OPEN_PIPE, START(T_ONE), C(MAIL1 RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(BODY1 ".\r\n"),
	S("552 5.3.4 Message too big\r\n"), C("RSET\r\n"), S("250 ok\r\n"),
	EV("TXN_DONE"), RES("552 5.3.4 Message too big"), END,
};

static const struct step s_421_mid_txn[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n421 4.7.0 closing connection\r\n"), EV("FAILED"), C(""),
	RES("421 4.7.0 closing connection|421 4.7.0 closing connection|"
	    "421 4.7.0 closing connection"),
	FAIL("421 4.7.0 closing connection"), PHASE(SMTPC_PHASE_DONE), END,
};

static const struct step s_421_after_body[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"),
	S("250 ok\r\n550 5.1.1 no\r\n250 ok\r\n250 ok\r\n354 go\r\n"), C(BODY3 ".\r\n"),
	S("421 4.4.2 timeout\r\n"), EV("FAILED"), C(""),
	RES("550 5.1.1 no|421 4.4.2 timeout|421 4.4.2 timeout"), END,
};

static const struct step s_size_limit[] = {
	S(GREET), C(EHLO_CMD), S("250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n"),
	EV("READY"), SIZE(10), START(T_THREE), EV("TXN_DONE"), C(""),
	RES("552 5.3.4 message size exceeds fixed maximum message size [local]|"
	    "552 5.3.4 message size exceeds fixed maximum message size [local]|"
	    "552 5.3.4 message size exceeds fixed maximum message size [local]"),
	PHASE(SMTPC_PHASE_IDLE),
	START(T_ONE), C("MAIL FROM:<a@x.org> SIZE=7\r\n" RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(BODY1 ".\r\n"), S("250 ok\r\n"),
	EV("TXN_DONE"), END,
};

static const struct step s_dsn_offered[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_DSN), EV("READY"), START(T_DSN),
	C("MAIL FROM:<a@x.org> RET=FULL ENVID=id+2B1+3D2+20x\r\n"
	  "RCPT TO:<b@y.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx+3D1@y.org\r\n"
	  "RCPT TO:<c@y.org> NOTIFY=NEVER\r\n"
	  "RCPT TO:<d@y.org> NOTIFY=DELAY ORCPT=rfc822;d@y.org\r\n"
	  "DATA\r\n"), END,
};

#define DSN_PLAIN MAIL1 "RCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\nRCPT TO:<d@y.org>\r\nDATA\r\n"

static const struct step s_dsn_not_offered[] = {
	OPEN_PIPE, START(T_DSN), C(DSN_PLAIN), END,
};

static const struct step s_dsn_ignored[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_DSN), EV("READY"), START(T_DSN), C(DSN_PLAIN), END,
};

static const struct step s_8bit[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_ALL), EV("READY"), START(T_8BIT),
	C("MAIL FROM:<a@x.org> SIZE=7 BODY=8BITMIME RET=HDRS\r\n" RCPT_B
	  "BDAT 7 LAST\r\n" BODY1),
	S("250 ok\r\n250 ok\r\n250 ok\r\n"), EV("TXN_DONE"), RES("250 2.0.0 ok"), END,
};

static const struct step s_8bit_not_offered[] = {
	OPEN_PIPE, START(T_8BIT), C(MAIL1 RCPT_B "DATA\r\n"), END,
};

static const struct step s_8bit_ignored[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_ALL), EV("READY"), START(T_8BIT),
	C("MAIL FROM:<a@x.org> SIZE=7 RET=HDRS\r\n" RCPT_B "BDAT 7 LAST\r\n" BODY1), END,
};

static const struct step s_smtputf8[] = {
	S(GREET), C(EHLO_CMD), S(EHLO_ALL), EV("READY"), START(T_UTF8),
	C("MAIL FROM:<j\xc3\xb6rg@x.org> SIZE=7 BODY=8BITMIME SMTPUTF8\r\n" RCPT_B
	  "BDAT 7 LAST\r\n" BODY1), END,
};

static const struct step s_smtputf8_missing[] = {
	OPEN_PIPE, START(T_UTF8), EV("TXN_DONE"), C(""),
	RES("554 5.6.7 SMTPUTF8 is required, but was not offered by host [local]"),
	PHASE(SMTPC_PHASE_IDLE), END,
};

static const struct step s_bad_addresses[] = {
	OPEN_PIPE, START(T_EVIL), C(MAIL1 "RCPT TO:<ok@y.org>\r\nDATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(BODY1 ".\r\n"), S("250 ok\r\n"),
	EV("TXN_DONE"), RES("553 5.1.3 invalid recipient address [local]|250 2.0.0 ok"),
	START(T_BADFROM), EV("TXN_DONE"), C(""),
	RES("553 5.1.7 invalid sender address [local]"),
	START(T_ALLEVIL), EV("TXN_DONE"), C(""),
	RES("553 5.1.3 invalid recipient address [local]"), END,
};

static const struct step s_bad_addresses_lockstep[] = {
	OPEN_PLAIN, START(T_EVIL), C(MAIL1), S("250 ok\r\n"),
	C("RCPT TO:<ok@y.org>\r\n"), S("250 ok\r\n"), C("DATA\r\n"),
	S("354 go\r\n"), C(BODY1 ".\r\n"), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("553 5.1.3 invalid recipient address [local]|250 2.0.0 ok"), END,
};

static const struct step s_eof_mid_txn[] = {
	OPEN_PIPE, START(T_THREE), C(MAIL1 RCPT3 "DATA\r\n"), S("250 ok\r\n250 ok\r\n"),
	ABORT(SMTPC_ABORT_EOF), EV("FAILED"), C(""),
	FAIL("451 4.4.2 connection closed by host while waiting for reply to RCPT TO [local]"),
	RES("451 4.4.2 connection closed by host while waiting for reply to RCPT TO [local]|"
	    "451 4.4.2 connection closed by host while waiting for reply to RCPT TO [local]|"
	    "451 4.4.2 connection closed by host while waiting for reply to RCPT TO [local]"),
	/* Whatever arrives after the end is ignored. */
	S("250 late\r\n"), EV(""), END,
};

static const struct step s_timeouts[] = {
	ABORT(SMTPC_ABORT_TIMEOUT), EV("FAILED"),
	FAIL("451 4.4.2 timeout waiting for greeting [local]"), END,
};

static const struct step s_timeout_data_end[] = {
	OPEN_PIPE, START(T_ONE), C(MAIL1 RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n354 go\r\n"), C(BODY1 ".\r\n"),
	ABORT(SMTPC_ABORT_TIMEOUT), EV("FAILED"),
	RES("451 4.4.2 timeout waiting for reply to end of data [local]"), END,
};

static const struct step s_io_error_idle[] = {
	OPEN_PIPE, ABORT(SMTPC_ABORT_IO), EV("FAILED"),
	FAIL("451 4.4.2 I/O error while idle [local]"), END,
};

static const struct step s_garbage[] = {
	S("hello there\r\n"), EV("FAILED"), C(""),
	FAIL("451 4.5.0 protocol error: malformed reply while waiting for greeting [local]"),
	END,
};

static const struct step s_bad_separator[] = {
	S("220_mx\r\n"), EV("FAILED"),
	FAIL("451 4.5.0 protocol error: malformed reply while waiting for greeting [local]"),
	END,
};

static const struct step s_1xx[] = {
	S("120 wait\r\n"), EV("FAILED"),
	FAIL("451 4.5.0 protocol error: malformed reply while waiting for greeting [local]"),
	END,
};

static const struct step s_inconsistent[] = {
	S(GREET), C(EHLO_CMD), S("250-mx\r\n251 x\r\n"), EV("FAILED"), C(""),
	FAIL("451 4.5.0 protocol error: inconsistent multi-line reply while waiting "
	     "for reply to EHLO [local]"), END,
};

static const struct step s_idle_unsolicited[] = {
	OPEN_PIPE, S("250 hi\r\n"), EV("FAILED"), C(""),
	FAIL("451 4.5.0 protocol error: unexpected reply while idle [local]"), END,
};

static const struct step s_idle_421[] = {
	OPEN_PIPE, S("421 4.4.2 mx.example Error: timeout exceeded\r\n"), EV("FAILED"),
	C(""), FAIL("421 4.4.2 mx.example Error: timeout exceeded"), END,
};

static const struct step s_status_forms[] = {
	OPEN_PLAIN, START(T_THREE), C(MAIL1), S("250 ok\r\n"),
	C("RCPT TO:<r1@y.org>\r\n"), S("550 4.1.1 class from the code\r\n"),
	C("RCPT TO:<r2@y.org>\r\n"), S("550 5.1.1234 not a status\r\n"),
	C("RCPT TO:<r3@y.org>\r\n"), S("452-4.5.3 too many\r\n452 recipients \x01\r\n"),
	C("RSET\r\n"), S("250 ok\r\n"), EV("TXN_DONE"),
	RES("550 5.1.1 class from the code|550 5.0.0 5.1.1234 not a status|"
	    "452 4.5.3 too many recipients ?"), END,
};

static const struct step s_rset_refused[] = {
	OPEN_PLAIN, START(T_ONE), C(MAIL1), S("550 5.7.1 no\r\n"), C("RSET\r\n"),
	S("500 5.5.1 what\r\n"), EV("FAILED"), RES("550 5.7.1 no"),
	FAIL("500 5.5.1 what"), END,
};

static const struct step s_3xx_to_mail[] = {
	OPEN_PLAIN, START(T_ONE), C(MAIL1), S("354 huh\r\n"), EV("FAILED"),
	RES("451 4.5.0 protocol error: unexpected 3xx reply while waiting for reply "
	    "to MAIL FROM [local]"), END,
};

static const struct step s_2xx_to_data[] = {
	OPEN_PIPE, START(T_ONE), C(MAIL1 RCPT_B "DATA\r\n"),
	S("250 ok\r\n250 ok\r\n250 ok\r\n"), EV("FAILED"),
	RES("451 4.5.0 protocol error: 2xx reply to DATA while waiting for reply "
	    "to DATA [local]"), END,
};

static const struct step s_quit_eof[] = {
	OPEN_PIPE, QUIT, C("QUIT\r\n"), ABORT(SMTPC_ABORT_EOF), EV("CLOSED"), END,
};

static const struct step s_bare_codes[] = {
	S("220\r\n"), C(EHLO_CMD), S("250\r\n"), EV("READY"), EXT("EHLO"), END,
};

struct scenario {
	const char *name;
	const struct step *steps;
	struct smtp_client_params params;
	bool whole_only;
};

/* The queue's switches: pipelining, chunking, 8bitmime, dsn, want TLS,
 * require TLS, TLS already on. */
#define PARAMS(pi, ch, b8, ds, wt, rt, on) {				\
	.helo_name = "out.example", .allow_pipelining = pi,		\
	.allow_chunking = ch, .allow_8bitmime = b8, .allow_dsn = ds,	\
	.want_starttls = wt, .require_starttls = rt, .tls_active = on }
#define P_PLAIN PARAMS(1, 1, 1, 1, 0, 0, 0)
#define P_TLS PARAMS(1, 1, 1, 1, 1, 0, 0)
#define P_REQTLS PARAMS(1, 1, 1, 1, 1, 1, 0)

#define SC(n, p) { #n, s_##n, p, false }

static const struct scenario scenarios[] = {
	SC(greet_421, P_PLAIN),
	SC(greet_554, P_PLAIN),
	SC(greet_450, P_PLAIN),
	SC(ehlo_multiline, P_PLAIN),
	SC(ehlo_odd_lines, P_PLAIN),
	SC(helo_fallback, P_PLAIN),
	SC(helo_rejected, P_PLAIN),
	SC(starttls, P_TLS),
	SC(starttls_not_offered, P_TLS),
	SC(starttls_required_missing, P_REQTLS),
	SC(starttls_required_helo, P_REQTLS),
	SC(starttls_refused, P_TLS),
	SC(starttls_refused_required, P_REQTLS),
	{ "starttls_injection", s_starttls_injection, P_TLS, true },
	SC(tls_active, PARAMS(1, 1, 1, 1, 0, 1, 1)),
	SC(tls_handshake_fails, P_TLS),
	SC(pipelining_mixed, P_PLAIN),
	SC(lockstep_mixed, P_PLAIN),
	SC(pipelining_ignored, PARAMS(0, 1, 1, 1, 0, 0, 0)),
	SC(bdat_pipelined, P_PLAIN),
	SC(bdat_lockstep, P_PLAIN),
	SC(chunking_ignored, PARAMS(1, 0, 1, 1, 0, 0, 0)),
	SC(dot_stuffing, P_PLAIN),
	SC(refused_lockstep, P_PLAIN),
	SC(refused_pipelined, P_PLAIN),
	SC(refused_but_354, P_PLAIN),
	SC(refused_bdat, P_PLAIN),
	SC(mail_refused_pipelined, P_PLAIN),
	SC(mail_refused_lockstep, P_PLAIN),
	SC(data_refused, P_PLAIN),
	SC(final_refused, P_PLAIN),
	SC(421_mid_txn, P_PLAIN),
	SC(421_after_body, P_PLAIN),
	SC(size_limit, P_PLAIN),
	SC(dsn_offered, P_PLAIN),
	SC(dsn_not_offered, P_PLAIN),
	SC(dsn_ignored, PARAMS(1, 1, 1, 0, 0, 0, 0)),
	SC(8bit, P_PLAIN),
	SC(8bit_not_offered, P_PLAIN),
	SC(8bit_ignored, PARAMS(1, 1, 0, 1, 0, 0, 0)),
	SC(smtputf8, P_PLAIN),
	SC(smtputf8_missing, P_PLAIN),
	SC(bad_addresses, P_PLAIN),
	SC(bad_addresses_lockstep, P_PLAIN),
	SC(eof_mid_txn, P_PLAIN),
	SC(timeouts, P_PLAIN),
	SC(timeout_data_end, P_PLAIN),
	SC(io_error_idle, P_PLAIN),
	SC(garbage, P_PLAIN),
	SC(bad_separator, P_PLAIN),
	SC(1xx, P_PLAIN),
	SC(inconsistent, P_PLAIN),
	SC(idle_unsolicited, P_PLAIN),
	SC(idle_421, P_PLAIN),
	SC(status_forms, P_PLAIN),
	SC(rset_refused, P_PLAIN),
	SC(3xx_to_mail, P_PLAIN),
	SC(2xx_to_data, P_PLAIN),
	SC(quit_eof, P_PLAIN),
	SC(bare_codes, P_PLAIN),
};

/* ---- running a script ----------------------------------------------- */

static void run_step(struct harness *h, const struct step *st, size_t *txn)
{
	struct strbuf got = { 0 };
	struct smtp_reply r;

	switch (st->op) {
	case OP_END:
		break;
	case OP_S:
		feed(h, st->s);
		break;
	case OP_C:
		cr_assert_str_eq(sb_str(&h->sent), st->s, "%s: client sent", h->name);
		sb_reset(&h->sent);
		break;
	case OP_EV:
		cr_assert_str_eq(sb_str(&h->events), st->s, "%s: events", h->name);
		sb_reset(&h->events);
		break;
	case OP_START:
		*txn = st->n;
		note_event(h, smtp_client_start(h->c, &txns[st->n], &h->out));
		flush(h);
		break;
	case OP_TLS:
		smtp_client_tls_started(h->c, &h->out);
		flush(h);
		break;
	case OP_QUIT:
		smtp_client_quit(h->c, &h->out);
		flush(h);
		break;
	case OP_ABORT:
		note_event(h, smtp_client_abort(h->c, (enum smtp_client_abort)st->n));
		break;
	case OP_RES:
		for (size_t i = 0; i < txns[*txn].rcpt_count; i++) {
			if (i)
				sb_addc(&got, '|');
			smtp_client_result(h->c, i, &r);
			format_reply(&got, &r);
		}
		cr_assert_str_eq(sb_str(&got), st->s, "%s: results: %s", h->name, sb_str(&got));
		break;
	case OP_FAIL:
		smtp_client_failure(h->c, &r);
		format_reply(&got, &r);
		cr_assert_str_eq(sb_str(&got), st->s, "%s: failure", h->name);
		break;
	case OP_PHASE:
		cr_assert_eq(smtp_client_phase(h->c), (enum smtp_client_phase)st->n,
			     "%s: phase", h->name);
		break;
	case OP_EXT:
		for (size_t i = 0; i < ARRAY_SIZE(ext_names); i++) {
			if (smtp_client_extensions(h->c) & ext_names[i].bit) {
				if (got.len)
					sb_addc(&got, ' ');
				sb_adds(&got, ext_names[i].name);
			}
		}
		cr_assert_str_eq(sb_str(&got), st->s, "%s: extensions", h->name);
		break;
	case OP_SIZE:
		cr_assert_eq(smtp_client_size_limit(h->c), st->n, "%s: size", h->name);
		break;
	}
	sb_free(&got);
}

static void run_scenario(size_t idx, enum mode mode)
{
	const struct scenario *sc = &scenarios[idx];
	struct harness h = { .mode = mode, .name = sc->name };
	size_t txn = 0;

	h.c = smtp_client_new(&sc->params);
	for (const struct step *st = sc->steps; st->op != OP_END; st++)
		run_step(&h, st, &txn);
	/* Exactness: every byte sent and every event was expected. */
	cr_assert_str_eq(sb_str(&h.sent), "", "%s: unchecked output", sc->name);
	cr_assert_str_eq(sb_str(&h.events), "", "%s: unchecked events", sc->name);
	smtp_client_free(h.c);
	sb_free(&h.out);
	sb_free(&h.sent);
	sb_free(&h.events);
}

struct run_param {
	size_t scenario;
	int mode;
};

ParameterizedTestParameters(smtp_client, scripted)
{
	static struct run_param params[ARRAY_SIZE(scenarios) * MODE_COUNT];
	size_t n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(scenarios); i++)
		for (int m = 0; m < MODE_COUNT; m++)
			if (m == MODE_WHOLE || !scenarios[i].whole_only)
				params[n++] = (struct run_param){ i, m };
	return cr_make_param_array(struct run_param, params, n);
}

ParameterizedTest(struct run_param *p, smtp_client, scripted)
{
	run_scenario(p->scenario, (enum mode)p->mode);
}

/* ---- dot-stuffing at every piece size ------------------------------- */

struct stuff_case {
	char body[48];
	char want[64];
};

ParameterizedTestParameters(smtp_client, dot_stuffing)
{
	static struct stuff_case cases[] = {
		{ "", ".\r\n" },
		{ "a", "a\r\n.\r\n" },
		{ "\r\n", "\r\n.\r\n" },
		{ ".", "..\r\n.\r\n" },
		{ "..\r\n", "...\r\n.\r\n" },
		{ "x\r\n.\r\n", "x\r\n..\r\n.\r\n" },
		{ "x\r\n.\r\ny", "x\r\n..\r\ny\r\n.\r\n" },
		{ "a\n.b\n", "a\n..b\n\r\n.\r\n" },
		{ "a.b\r\n.c.\r\n\r\n.", "a.b\r\n..c.\r\n\r\n..\r\n.\r\n" },
		{ "end\r", "end\r\r\n.\r\n" },
	};
	return cr_make_param_array(struct stuff_case, cases, ARRAY_SIZE(cases));
}

/* open_data - a client that has just had 354, the body ready to pull. */
static struct smtp_client *open_data(const struct smtp_txn *t, struct strbuf *out)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	static const char conv[] = "220 x\r\n250 x\r\n";
	struct smtp_client *c = smtp_client_new(&p);
	size_t used;

	cr_assert_eq(smtp_client_input(c, conv, sizeof(conv) - 1, &used, out),
		     SMTPC_EV_READY);
	cr_assert_eq(smtp_client_start(c, t, out), SMTPC_EV_NONE);
	for (size_t i = 0; i <= t->rcpt_count; i++)	/* MAIL and each RCPT */
		cr_assert_eq(smtp_client_input(c, "250 a\r\n", 7, &used, out),
			     SMTPC_EV_NONE);
	cr_assert_eq(smtp_client_input(c, "354 c\r\n", 7, &used, out), SMTPC_EV_NONE);
	cr_assert_eq(smtp_client_phase(c), SMTPC_PHASE_BODY);
	return c;
}

ParameterizedTest(struct stuff_case *k, smtp_client, dot_stuffing)
{
	static const size_t caps[] = { 1, 2, 3, 4, 5, 7, 64 };
	static const struct smtp_rcpt rc = { .addr = "b@y" };

	for (size_t ci = 0; ci < ARRAY_SIZE(caps); ci++) {
		struct smtp_txn t = { .mail_from = "a@x", .rcpts = &rc, .rcpt_count = 1,
				      .body = k->body, .body_len = strlen(k->body) };
		struct strbuf out = { 0 }, got = { 0 };
		struct smtp_client *c = open_data(&t, &out);
		char scratch[64];
		const char *p;
		size_t n;

		while ((n = smtp_client_body(c, scratch, caps[ci], &p)) > 0) {
			cr_assert_leq(n, caps[ci]);
			sb_add(&got, p, n);
		}
		cr_expect_str_eq(sb_str(&got), k->want, "cap %zu", caps[ci]);
		cr_expect_eq(smtp_client_phase(c), SMTPC_PHASE_DATA_END);
		smtp_client_free(c);
		sb_free(&out);
		sb_free(&got);
	}
}

/* ---- limits and contracts ------------------------------------------- */

static enum smtp_client_event feed_all(struct smtp_client *c, const char *buf,
				       size_t len, struct strbuf *out)
{
	enum smtp_client_event ev = SMTPC_EV_NONE;
	size_t off = 0, used;

	while (off < len) {
		ev = smtp_client_input(c, buf + off, len - off, &used, out);
		off += used;
		if (ev == SMTPC_EV_FAILED || ev == SMTPC_EV_CLOSED)
			break;
	}
	return ev;
}

Test(smtp_client, long_lines_are_bounded)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	struct strbuf out = { 0 }, line = { 0 };
	struct smtp_client *c = smtp_client_new(&p);
	struct smtp_reply r;

	/* Over RFC 5321's 512 but under the cap: tolerated, text cut at 1 KiB. */
	sb_adds(&line, "220 ");
	for (int i = 0; i < 3000; i++)
		sb_addc(&line, 'a');
	sb_adds(&line, "\r\n250 x\r\n");
	cr_assert_eq(feed_all(c, line.buf, line.len, &out), SMTPC_EV_READY);
	cr_assert_str_eq(sb_str(&out), "EHLO h\r\n");

	/* Over the cap, in small pieces: a protocol error, nothing stored. */
	smtp_client_reset(c, &p);
	sb_reset(&line);
	sb_adds(&line, "220 ");
	for (int i = 0; i < 100000; i++)
		sb_addc(&line, 'b');
	for (size_t off = 0; off < line.len; off += 100) {
		size_t used, n = line.len - off < 100 ? line.len - off : 100;
		enum smtp_client_event ev = smtp_client_input(c, line.buf + off, n, &used, &out);
		if (ev == SMTPC_EV_FAILED)
			break;
		cr_assert_eq(ev, SMTPC_EV_NONE);
		cr_assert_lt(off, 4096u, "buffered past the cap");
	}
	smtp_client_failure(c, &r);
	cr_expect_eq(r.code, 451);
	cr_expect_str_eq(r.status, "4.5.0");
	cr_expect(r.local);
	cr_expect_str_eq(r.text, "protocol error: reply line too long while waiting for greeting");
	smtp_client_free(c);
	sb_free(&out);
	sb_free(&line);
}

Test(smtp_client, reply_text_is_capped)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	static const struct smtp_rcpt rc = { .addr = "b@y" };
	static const struct smtp_txn t = { .mail_from = "a@x", .rcpts = &rc,
					   .rcpt_count = 1, .body = "x", .body_len = 1 };
	struct strbuf out = { 0 }, in = { 0 };
	struct smtp_client *c = smtp_client_new(&p);
	struct smtp_reply r;

	cr_assert_eq(feed_all(c, "220 x\r\n250 x\r\n", 14, &out), SMTPC_EV_READY);
	cr_assert_eq(smtp_client_start(c, &t, &out), SMTPC_EV_NONE);
	cr_assert_eq(feed_all(c, "250 ok\r\n", 8, &out), SMTPC_EV_NONE);
	for (int l = 0; l < 5; l++) {
		sb_adds(&in, l < 4 ? "550-5.1.1 " : "550 5.1.1 ");
		for (int i = 0; i < 400; i++)
			sb_addc(&in, 'z');
		sb_adds(&in, "\r\n");
	}
	sb_adds(&in, "250 reset\r\n");
	cr_assert_eq(feed_all(c, in.buf, in.len, &out), SMTPC_EV_TXN_DONE);
	smtp_client_result(c, 0, &r);
	cr_expect_eq(r.code, 550);
	cr_expect_eq(strlen(r.text), 1023);
	smtp_client_free(c);
	sb_free(&out);
	sb_free(&in);
}

Test(smtp_client, endless_reply_fails)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	struct strbuf out = { 0 }, in = { 0 };
	struct smtp_client *c = smtp_client_new(&p);
	struct smtp_reply r;

	sb_adds(&in, "220 x\r\n");
	for (int i = 0; i < 1001; i++)
		sb_adds(&in, "250-X\r\n");
	cr_assert_eq(feed_all(c, in.buf, in.len, &out), SMTPC_EV_FAILED);
	smtp_client_failure(c, &r);
	cr_expect_str_eq(r.text, "protocol error: reply too long while waiting for reply to EHLO");
	smtp_client_free(c);
	sb_free(&out);
	sb_free(&in);
}

Test(smtp_client, size_keyword_saturates)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	static const char in[] = "220 x\r\n250-x\r\n250 SIZE 99999999999999999999999999\r\n";
	struct strbuf out = { 0 };
	struct smtp_client *c = smtp_client_new(&p);

	cr_assert_eq(feed_all(c, in, sizeof(in) - 1, &out), SMTPC_EV_READY);
	cr_expect_eq(smtp_client_size_limit(c), UINT64_MAX);
	smtp_client_free(c);
	sb_free(&out);
}

Test(smtp_client, events_stop_input_early)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	static const char in[] = "220 x\r\n250 x\r\n250 unsolicited\r\n";
	struct strbuf out = { 0 };
	struct smtp_client *c = smtp_client_new(&p);
	size_t used;

	cr_assert_eq(smtp_client_input(c, in, sizeof(in) - 1, &used, &out), SMTPC_EV_READY);
	cr_expect_eq(used, 14);
	cr_assert_eq(smtp_client_input(c, in + used, sizeof(in) - 1 - used, &used, &out),
		     SMTPC_EV_FAILED);
	cr_expect_eq(used, sizeof(in) - 1 - 14);
	/* After the end: input is swallowed, the event repeats. */
	cr_expect_eq(smtp_client_input(c, "x", 1, &used, &out), SMTPC_EV_FAILED);
	cr_expect_eq(used, 1);
	smtp_client_free(c);
	sb_free(&out);
}

Test(smtp_client, early_reply_during_body)
{
	static const struct smtp_rcpt rc[] = { { .addr = "b@y" }, { .addr = "c@y" } };
	static const char body[] = "line one\r\nline two\r\n";
	struct smtp_txn t = { .mail_from = "a@x", .rcpts = rc, .rcpt_count = 2,
			      .body = body, .body_len = sizeof(body) - 1 };
	struct strbuf out = { 0 };
	struct smtp_client *c = open_data(&t, &out);
	struct smtp_reply r;
	char scratch[4];
	const char *p;
	size_t used;

	cr_assert_eq(smtp_client_body(c, scratch, sizeof(scratch), &p), 4);
	cr_assert_eq(smtp_client_phase(c), SMTPC_PHASE_BODY);
	/* The server cannot have our end of data yet: out of step. */
	cr_assert_eq(smtp_client_input(c, "552 5.3.4 too big\r\n", 19, &used, &out),
		     SMTPC_EV_FAILED);
	cr_expect_eq(smtp_client_body(c, scratch, sizeof(scratch), &p), 0);
	smtp_client_result(c, 1, &r);
	cr_expect_eq(r.code, 552);
	cr_expect_str_eq(r.text, "too big");
	cr_expect_eq(smtp_client_phase(c), SMTPC_PHASE_DONE);
	smtp_client_free(c);

	/* A 2xx that early is a protocol error, never a delivery. */
	sb_reset(&out);
	c = open_data(&t, &out);
	cr_assert_eq(smtp_client_body(c, scratch, sizeof(scratch), &p), 4);
	cr_assert_eq(smtp_client_input(c, "250 ok\r\n", 8, &used, &out), SMTPC_EV_FAILED);
	smtp_client_result(c, 0, &r);
	cr_expect_eq(r.code, 451);
	cr_expect(r.local);
	cr_expect_str_eq(sb_str(&out), "EHLO h\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n",
			 "no QUIT inside a body");
	smtp_client_free(c);
	sb_free(&out);
}

Test(smtp_client, bdat_body_is_zero_copy)
{
	static const struct smtp_client_params p = { .helo_name = "h",
						     .allow_pipelining = true,
						     .allow_chunking = true };
	static const struct smtp_rcpt rc = { .addr = "b@y" };
	static const char body[] = "0123456789";
	struct smtp_txn t = { .mail_from = "a@x", .rcpts = &rc, .rcpt_count = 1,
			      .body = body, .body_len = 10 };
	static const char in[] = "220 x\r\n250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
	struct strbuf out = { 0 };
	struct smtp_client *c = smtp_client_new(&p);
	const char *d;

	cr_assert_eq(feed_all(c, in, sizeof(in) - 1, &out), SMTPC_EV_READY);
	cr_assert_eq(smtp_client_start(c, &t, &out), SMTPC_EV_NONE);
	cr_expect_eq(smtp_client_phase(c), SMTPC_PHASE_BODY);
	cr_assert_eq(smtp_client_body(c, NULL, 6, &d), 6);
	cr_expect_eq(d, body);
	cr_assert_eq(smtp_client_body(c, NULL, 6, &d), 4);
	cr_expect_eq(d, body + 6);
	cr_expect_eq(smtp_client_body(c, NULL, 6, &d), 0);
	cr_expect_eq(smtp_client_phase(c), SMTPC_PHASE_DATA_END);
	smtp_client_free(c);
	sb_free(&out);
}

Test(smtp_client, reset_reuses_a_client)
{
	static const struct smtp_client_params p = { .helo_name = "h" };
	static const struct smtp_client_params q = { .helo_name = "other" };
	struct strbuf out = { 0 };
	struct smtp_client *c = smtp_client_new(&p);

	cr_assert_eq(feed_all(c, "554 no\r\n", 8, &out), SMTPC_EV_FAILED);
	smtp_client_reset(c, &q);
	sb_reset(&out);
	cr_expect_eq(smtp_client_phase(c), SMTPC_PHASE_GREETING);
	cr_assert_eq(feed_all(c, "220 x\r\n", 7, &out), SMTPC_EV_NONE);
	cr_expect_str_eq(sb_str(&out), "EHLO other\r\n");
	smtp_client_free(c);
	sb_free(&out);
}

Test(smtp_client, start_when_not_idle_is_a_bug, .signal = SIGABRT)
{
	testlib_expect_death();
	static const struct smtp_client_params p = { .helo_name = "h" };
	struct strbuf out = { 0 };
	struct smtp_client *c = smtp_client_new(&p);

	smtp_client_start(c, &txns[T_ONE], &out);
}

Test(smtp_client, plaintext_during_handshake_is_a_bug, .signal = SIGABRT)
{
	testlib_expect_death();
	static const struct smtp_client_params p = { .helo_name = "h",
						     .want_starttls = true };
	static const char in[] = "220 x\r\n250-x\r\n250 STARTTLS\r\n";
	struct strbuf out = { 0 };
	struct smtp_client *c = smtp_client_new(&p);
	size_t used;

	cr_assert_eq(feed_all(c, in, sizeof(in) - 1, &out), SMTPC_EV_NONE);
	cr_assert_eq(feed_all(c, "220 go\r\n", 8, &out), SMTPC_EV_STARTTLS);
	smtp_client_input(c, "x", 1, &used, &out);
}

Test(smtp_client, helo_name_with_crlf_is_a_bug, .signal = SIGABRT)
{
	testlib_expect_death();
	static const struct smtp_client_params p = { .helo_name = "h\r\nRSET" };

	smtp_client_new(&p);
}
