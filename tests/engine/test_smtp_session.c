/*
 * tests/engine/test_smtp_session.c - the SMTP server state machine:
 * table-driven transcripts (input bytes → exact replies, fed whole, byte
 * by byte and in random pieces), then the message handed over (envelope,
 * unstuffed body, added and extracted headers), the events and the reject
 * reports.  Single-threaded; the config is built per test.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <crypt.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "engine/smtp_session.h"
#include "tests/lib/testlib.h"
#include "util/util.h"

/* ------------------------------------------------------------------ */
/* The configuration under test                                        */

static const char conf_fmt[] =
	"host-name mx.test\n"
	"relay-domain relay.test\n"
	"relay-domain [*.]wild.test\n"
	"relay-domain *.sub.test\n"
	"relay-address special@other.test\n"
	"relay-address /^bounce-[0-9]+@returns\\.test$/i\n"
	"<virtual-mta vm1>\n"
	"    smtp-source-ip 192.0.2.10\n"
	"</virtual-mta>\n"
	"<virtual-mta-pool pool1>\n"
	"    virtual-mta vm1\n"
	"</virtual-mta-pool>\n"
	"<virtual-mta vm2>\n</virtual-mta>\n"
	"<virtual-mta vm3>\n</virtual-mta>\n"
	"<virtual-mta vm4>\n</virtual-mta>\n"
	"<pattern-list routes>\n"
	"    header X-Campaign /^spring sale$/ virtual-mta=vm4\n"
	"    mail-from /@news\\.test$/ virtual-mta=vm2\n"
	"    rcpt-to /@vip\\.test$/i virtual-mta=pool1\n"
	"</pattern-list>\n"
	"<source 10.10.0.0/16>\n"		/* routed by pattern, else default */
	"    pattern-list routes\n"
	"    default-virtual-mta vm3\n"
	"</source>\n"
	"<source 10.11.0.0/16>\n"		/* header first; a bad one ignored */
	"    process-x-virtual-mta yes\n"
	"    reject-invalid-virtual-mta no\n"
	"    pattern-list routes\n"
	"    default-virtual-mta vm3\n"
	"</source>\n"
	"<source routed-user>\n"
	"    always-allow-relaying yes\n"
	"    default-virtual-mta vm4\n"
	"</source>\n"
	"<smtp-user erin>\n"
	"    password pw-erin\n"
	"    source routed-user\n"
	"</smtp-user>\n"
	"<source 0/0>\n"
	"    add-received-header no\n"
	"    max-message-size unlimited\n"	/* EHLO says "SIZE" bare */
	"</source>\n"
	"<source 10.0.0.0/8>\n"			/* injectors */
	"    always-allow-relaying yes\n"
	"</source>\n"
	"<source 10.1.0.0/16>\n"
	"    max-message-size 100\n"
	"    max-rcpt-per-message 2\n"
	"</source>\n"
	"<source 10.2.0.0/16>\n"
	"    max-rcpt-per-message 2\n"
	"    too-many-rcpts-fails-message yes\n"
	"</source>\n"
	"<source 10.3.0.0/16>\n"
	"    always-allow-relaying no\n"
	"    require-auth yes\n"
	"    allow-unencrypted-plain-auth yes\n"
	"</source>\n"
	"<source 10.4.0.0/16>\n"
	"    process-x-virtual-mta yes\n"
	"    process-x-job yes\n"
	"    process-x-envid yes\n"
	"    add-received-header yes\n"
	"    add-message-id-header yes\n"
	"    add-date-header yes\n"
	"    remove-header X-Secret\n"
	"</source>\n"
	"<source 10.5.0.0/16>\n"
	"    add-received-header yes\n"
	"    hide-message-source yes\n"
	"    process-x-job yes\n"
	"    retain-x-job yes\n"
	"    jobid-header X-Campaign\n"
	"    jobid-prefix {auth}-\n"
	"    allow-unencrypted-plain-auth yes\n"
	"</source>\n"
	"<source 10.6.0.0/16>\n"
	"    allow-auth no\n"
	"</source>\n"
	"<source 10.7.0.0/16>\n"
	"    process-x-virtual-mta yes\n"
	"    reject-invalid-virtual-mta yes\n"
	"</source>\n"
	"<source 10.8.0.0/16>\n"
	"    process-x-virtual-mta yes\n"
	"    invalid-virtual-mta-fallback pool1\n"
	"</source>\n"
	"<source 10.9.0.0/16>\n"
	"    max-message-hops 3\n"
	"</source>\n"
	"<source 192.0.2.66>\n"
	"    smtp-service no\n"
	"</source>\n"
	"<source {auth}>\n"
	"    always-allow-relaying yes\n"
	"</source>\n"
	"<source limited>\n"
	"    always-allow-relaying yes\n"
	"    max-message-size 200\n"
	"</source>\n"
	"<smtp-user alice>\n"
	"    password s3cret\n"
	"</smtp-user>\n"
	"<smtp-user bob>\n"
	"    password %s\n"
	"    source limited\n"
	"</smtp-user>\n"
	"<smtp-user carol>\n"
	"    password %s\n"
	"</smtp-user>\n"
	"<smtp-user dave>\n"
	"    password %s\n"
	"</smtp-user>\n";

static struct cfg *cfg;

/* make_hash - a fresh crypt(3) hash of pw with the given method prefix. */
static char *make_hash(const char *prefix, const char *pw)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];

	cr_assert_not_null(crypt_gensalt_rn(prefix, 0, NULL, 0, setting,
					    sizeof(setting)));
	const char *h = crypt_r(pw, setting, cd);
	cr_assert(h && h[0] == '$', "crypt_r(%s) failed", prefix);
	char *r = xstrdup(h);
	free(cd);
	return r;
}

static void setup(void)
{
	char *h6 = make_hash("$6$", "pw-bob");
	char *h5 = make_hash("$5$", "pw-carol");
	char *hy = make_hash("$y$", "pw-dave");
	char *text = xasprintf(conf_fmt, h6, h5, hy);
	struct diag_list dl = { 0 };

	int rc = cfg_load_string("test.conf", text, "/nonexistent", NULL, &cfg, &dl);
	for (size_t i = 0; rc != 0 && i < dl.count; i++)
		cr_log_error("%s", dl.items[i].text);
	cr_assert_eq(rc, 0, "test config does not load");
	diag_free(&dl);
	free(text);
	free(h6);
	free(h5);
	free(hy);
}

static void teardown(void)
{
	cfg_free(cfg);
	cfg = NULL;
}

/* ------------------------------------------------------------------ */
/* The harness: a fake driver                                           */

/*
 * Input notation: REP(n, "c") is n copies of c; TLS marks where the TLS
 * handshake happens (what follows is what the client sends afterwards);
 * NUL is a zero octet.
 */
#define REP(n, c)	"\x01" #n c
#define TLS		"\x02"
#define NUL		"\x03"

enum { F_TLS_AVAIL = 1, F_TLS_ACTIVE = 2 };

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_RANDOM };

struct run {
	const char *peer;
	unsigned flags;
	int result;			/* what the "spool" answers */
	uint64_t hard_max;
	/* the spool's room: with storage, calls beyond ok_calls or sizes */
	bool storage;			/* beyond room are refused */
	unsigned storage_ok_calls, storage_calls;
	uint64_t storage_room;
	uint64_t storage_asked;		/* the last size asked about */
	enum split split;
	unsigned seed;
	size_t spill_window;		/* stream past this (0: never) */
	struct budget *budget;		/* the driver's memory count, or NULL */
	struct strbuf spill;		/* what the current message streamed */
	unsigned spill_forgets;
	/* results */
	struct strbuf out;
	struct strbuf data;		/* every message's data, "|" after each */
	struct strbuf env;		/* every message's envelope summary */
	struct strbuf rejects;		/* "kind code [rcpt]\n" */
	unsigned messages;
	bool closed;
	unsigned yields;
};

static void expand(const char *in, struct strbuf *out)
{
	for (const char *p = in; *p; p++) {
		if (*p == '\x01') {
			unsigned long n = strtoul(p + 1, (char **)&p, 10);
			for (unsigned long i = 0; i < n; i++)
				sb_addc(out, *p);
		} else if (*p == '\x03') {
			sb_addc(out, '\0');
		} else {
			sb_addc(out, *p);
		}
	}
}

static void on_reject(void *arg, const struct smtp_reject *r)
{
	struct run *run = arg;
	static const char *const kinds[] = { "conn", "rcpt", "msg", "cmd" };

	sb_printf(&run->rejects, "%s %d%s%s\n", kinds[r->kind], r->code,
		  r->rcpt ? " " : "", r->rcpt ? r->rcpt : "");
}

static void summarize(struct strbuf *sb, const struct smtp_message *m)
{
	sb_printf(sb, "from=<%s> size=%llu body=%d ret=%d envid=%s utf8=%d auth=%s tls=%d vmta=%s job=%s ip=%s helo=%s",
		  m->mail_from, (unsigned long long)m->size, (int)m->body,
		  (int)m->ret, m->envid ? m->envid : "-", m->smtputf8,
		  m->auth_user ? m->auth_user : "-", m->tls,
		  m->virtual_mta ? m->virtual_mta : "-",
		  m->job_id ? m->job_id : "-", m->client_ip, m->helo);
	for (size_t i = 0; i < m->rcpt_count; i++)
		sb_printf(sb, " to=<%s>/%u/%s/%s", m->rcpts[i].addr,
			  m->rcpts[i].notify,
			  m->rcpts[i].orcpt ? m->rcpts[i].orcpt : "-",
			  m->rcpts[i].orcpt_addr ? m->rcpts[i].orcpt_addr : "-");
	sb_addc(sb, '\n');
}

static void make_peer(const char *ip, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
		in6->sin6_family = AF_INET6;
		cr_assert_eq(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		cr_assert_eq(inet_pton(AF_INET, ip, &in->sin_addr), 1);
	}
}

static bool storage_cb(void *arg, uint64_t size)
{
	struct run *r = arg;

	r->storage_asked = size;
	return ++r->storage_calls <= r->storage_ok_calls && size <= r->storage_room;
}

struct budget;
static bool budget_cb(void *arg, int64_t delta);

/* spill_cb - the driver's end of streaming: keep it, or forget it. */
static int spill_cb(void *arg, const void *p, size_t n)
{
	struct run *r = arg;

	if (!p) {
		cr_assert_eq(n, 0);
		sb_reset(&r->spill);
		r->spill_forgets++;
		return 0;
	}
	cr_assert_gt(n, 0, "empty pieces are not passed on");
	sb_add(&r->spill, p, n);
	return 0;
}

static struct smtp_session *start(struct run *r)
{
	struct sockaddr_storage ss;
	enum smtp_event ev;

	make_peer(r->peer ? r->peer : "10.0.0.1", &ss);
	struct smtp_session_params p = {
		.cfg = cfg,
		.source = cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL),
		.peer = (struct sockaddr *)&ss,
		.tls_available = r->flags & (F_TLS_AVAIL | F_TLS_ACTIVE),
		.tls_active = r->flags & F_TLS_ACTIVE,
		.max_message_size = r->hard_max,
		.conn_id = 0x2a,
		.reject = on_reject,
		.reject_arg = r,
		.storage = r->storage ? storage_cb : NULL,
		.storage_arg = r,
		.memory = r->budget ? budget_cb : NULL,
		.memory_arg = r->budget,
		.spill = r->spill_window ? spill_cb : NULL,
		.spill_arg = r,
		.spill_window = r->spill_window,
	};
	struct smtp_session *s = smtp_session_new(&p, &r->out, &ev);
	r->closed = ev == SMTP_EV_CLOSE;
	return s;
}

/*
 * feed - what the io_uring driver does: present unconsumed bytes again,
 * spool messages, do the "handshake", stop at CLOSE.  Returns false once
 * the session ended.  *tls is set when STARTTLS dropped the rest.
 */
static bool feed(struct run *r, struct smtp_session *s, struct strbuf *pend,
		 bool *tls)
{
	size_t off = 0;

	while (off < pend->len && !r->closed) {
		size_t used = 0;
		enum smtp_event ev = smtp_session_input(s, pend->buf + off,
							pend->len - off, &used,
							&r->out);
		cr_assert_leq(used, pend->len - off);
		off += used;
		switch (ev) {
		case SMTP_EV_NONE:
			cr_assert_eq(off, pend->len, "NONE must consume everything");
			break;
		case SMTP_EV_YIELD:
			r->yields++;
			cr_assert_lt(off, pend->len);
			break;
		case SMTP_EV_MESSAGE: {
			const struct smtp_message *m = smtp_session_message(s);
			cr_assert_not_null(m);
			summarize(&r->env, m);
			void *body = smtp_session_take_body(s);
			cr_assert_not_null(body);
			cr_assert_null(smtp_session_take_body(s));
			sb_add(&r->data, m->data, m->len);
			cr_assert_eq(m->spilled, r->spill.len,
				     "the message says what was streamed");
			if (r->spill.len)
				sb_add(&r->data, r->spill.buf, r->spill.len);
			sb_addc(&r->data, '|');
			free(body);
			char qid[16];
			snprintf(qid, sizeof(qid), "Q%u", ++r->messages);
			smtp_session_message_result(s, r->result, qid, &r->out);
			cr_assert_null(smtp_session_message(s));
			break;
		}
		case SMTP_EV_STARTTLS:
			cr_assert_eq(off, pend->len, "STARTTLS must swallow the rest");
			smtp_session_tls_started(s);
			*tls = true;
			break;
		case SMTP_EV_CLOSE:
			r->closed = true;
			break;
		}
	}
	sb_reset(pend);
	return !r->closed;
}

/* run_transcript - feed input split as r->split says; collect everything. */
static void run_transcript(struct run *r, const char *input)
{
	struct strbuf in = { 0 }, pend = { 0 };
	struct smtp_session *s = start(r);
	unsigned seed = r->seed ? r->seed : 1;

	expand(input, &in);
	size_t i = 0;
	while (i < in.len && !r->closed) {
		if (in.buf[i] == '\x02') {	/* handshake point */
			i++;
			continue;
		}
		size_t n = 1;
		if (r->split == SPLIT_WHOLE) {
			n = in.len - i;
		} else if (r->split == SPLIT_RANDOM) {
			seed = seed * 1103515245u + 12345u;
			n = 1 + (seed >> 16) % 23;
		}
		const char *mark = memchr(in.buf + i, '\x02', n < in.len - i ? n : in.len - i);
		if (mark)
			n = (size_t)(mark - (in.buf + i));
		if (n > in.len - i)
			n = in.len - i;
		/*
		 * Bytes a client sends after STARTTLS but before the handshake
		 * would reach the session only if they came in the same read;
		 * a real driver drops the rest of its plaintext too.
		 */
		sb_add(&pend, in.buf + i, n);
		i += n;
		bool tls = false;
		feed(r, s, &pend, &tls);
		if (tls) {
			const char *m2 = memchr(in.buf + i, '\x02', in.len - i);
			if (!m2)
				cr_assert_fail("STARTTLS without a TLS mark in the input");
			i = (size_t)(m2 - in.buf);
		}
	}
	smtp_session_free(s);
	sb_free(&in);
	sb_free(&pend);
}

static void run_free(struct run *r)
{
	sb_free(&r->out);
	sb_free(&r->data);
	sb_free(&r->env);
	sb_free(&r->rejects);
	sb_free(&r->spill);
}

/* escape - CR, LF and other controls visible, for readable failures. */
static char *escape(const char *s, size_t n)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r')
			sb_adds(&sb, "\\r");
		else if (c == '\n')
			sb_adds(&sb, "\\n\n");
		else if (c < 0x20 || c >= 0x7f)
			sb_printf(&sb, "\\x%02x", c);
		else
			sb_addc(&sb, (char)c);
	}
	return sb_detach(&sb);
}

#define expect_bytes(got, want, ...)                                        \
	do {                                                                \
		char *g_ = escape((got)->buf ? (got)->buf : "", (got)->len); \
		struct strbuf w_ = { 0 };                                   \
		expand((want), &w_);                                        \
		char *e_ = escape(w_.buf ? w_.buf : "", w_.len);            \
		cr_expect_str_eq(g_, e_, __VA_ARGS__);                      \
		if (strcmp(g_, e_) != 0)                                    \
			cr_log_error("got:\n%s\nwant:\n%s", g_, e_);        \
		free(g_);                                                   \
		free(e_);                                                   \
		sb_free(&w_);                                               \
	} while (0)

/* ------------------------------------------------------------------ */
/* Transcripts                                                          */

#define G	"220 mx.test ESMTP\r\n"
#define EH_HEAD	"250-mx.test\r\n250-PIPELINING\r\n"
#define EH_MID	"250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n"
#define EH_TAIL	"250-SMTPUTF8\r\n250 CHUNKING\r\n"
#define EH	EH_HEAD "250-SIZE\r\n" EH_MID EH_TAIL
#define EH_TLS	EH_HEAD "250-SIZE\r\n" EH_MID "250-STARTTLS\r\n" EH_TAIL
#define EH_AUTH	EH_HEAD "250-SIZE\r\n" EH_MID "250-AUTH PLAIN LOGIN\r\n" EH_TAIL
#define EH_TLS_AUTH EH_HEAD "250-SIZE\r\n" EH_MID "250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n" EH_TAIL
#define EH_SIZE(n) EH_HEAD "250-SIZE " #n "\r\n" EH_MID EH_TAIL
#define EH_SIZE_AUTH(n) EH_HEAD "250-SIZE " #n "\r\n" EH_MID "250-AUTH PLAIN LOGIN\r\n" EH_TAIL
#define OK	"250 2.0.0 Ok\r\n"
#define OK_MAIL	"250 2.1.0 Ok\r\n"
#define OK_RCPT	"250 2.1.5 Ok\r\n"
#define GO	"354 End data with <CR><LF>.<CR><LF>\r\n"
#define Q(n)	"250 2.0.0 Ok: queued as Q" #n "\r\n"
#define BYE	"221 2.0.0 Bye\r\n"
#define HI	"EHLO c.test\r\n"
#define MAIL	"MAIL FROM:<a@b.test>\r\n"
#define RCPT	"RCPT TO:<x@y.test>\r\n"
#define BODY	"Subject: t\r\n\r\nbody\r\n"
#define MSG	"DATA\r\n" BODY ".\r\n"
#define TRANS	MAIL RCPT MSG
#define R_TRANS	OK_MAIL OK_RCPT GO
#define NEED_MAIL "503 5.5.1 Error: need MAIL command\r\n"
#define UNKNOWN	"500 5.5.1 Error: command not recognized\r\n"
#define TOO_LONG "500 5.5.6 Error: line too long\r\n"
#define SIZE_BIG "552 5.3.4 Error: message size exceeds fixed maximum message size\r\n"
#define DENIED	"550 5.7.1 Error: relaying denied\r\n"
#define AUTH_OK	"235 2.7.0 Authentication successful\r\n"
#define AUTH_BAD "535 5.7.8 Error: authentication credentials invalid\r\n"
#define P_ALICE	"AGFsaWNlAHMzY3JldA=="
#define BARE_LF	"554 5.6.0 Error: bare <LF> in message; lines must end with <CR><LF>\r\n"
#define BARE_CR	"554 5.6.0 Error: bare <CR> in message; lines must end with <CR><LF>\r\n"
#define LONGLINE "554 5.6.0 Error: message has lines longer than 998 octets\r\n"

struct tcase {
	const char *name;
	const char *peer;		/* NULL = 10.0.0.1, an injector */
	unsigned flags;
	int result;
	const char *in;
	const char *out;		/* exact replies, greeting included */
	const char *data;		/* messages' data, "|" after each; NULL = skip */
};

static const struct tcase cases[] = {
	/* ---- the basics, pipelined in one flight ---- */
	{ "one message", NULL, 0, 0,
	  HI TRANS "QUIT\r\n",
	  G EH R_TRANS Q(1) BYE, BODY "|" },
	{ "two messages pipelined, data and commands in one flight", NULL, 0, 0,
	  HI TRANS TRANS "QUIT\r\n",
	  G EH R_TRANS Q(1) R_TRANS Q(2) BYE, BODY "|" BODY "|" },
	{ "HELO", NULL, 0, 0,
	  "HELO c.test\r\n" TRANS,
	  G "250 mx.test\r\n" R_TRANS Q(1), BODY "|" },
	{ "commands are case-insensitive", NULL, 0, 0,
	  "ehlo c.test\r\nmail from:<a@b.test>\r\nrcpt to:<x@y.test>\r\ndata\r\nx\r\n.\r\nquit\r\n",
	  G EH R_TRANS Q(1) BYE, "x\r\n|" },
	{ "NOOP RSET HELP VRFY EXPN", NULL, 0, 0,
	  "NOOP\r\nNOOP anything\r\nRSET\r\nHELP\r\nVRFY x\r\nVRFY\r\nEXPN list\r\n",
	  G OK OK OK
	  "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH\r\n"
	  "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
	  "501 5.5.4 Syntax: VRFY address\r\n"
	  "502 5.5.1 Error: EXPN not supported\r\n", NULL },
	{ "QUIT ends input", NULL, 0, 0,
	  "QUIT\r\nNOOP\r\n", G BYE, NULL },
	{ "RSET forgets the transaction; RSET with an argument is refused", NULL, 0, 0,
	  HI MAIL RCPT "RSET\r\nDATA\r\nRSET x\r\n",
	  G EH OK_MAIL OK_RCPT OK NEED_MAIL "501 5.5.4 Syntax: RSET\r\n", NULL },
	{ "EHLO resets the transaction", NULL, 0, 0,
	  HI MAIL HI RCPT,
	  G EH OK_MAIL EH NEED_MAIL, NULL },
	{ "EHLO/HELO need an argument", NULL, 0, 0,
	  "EHLO\r\nHELO\r\nEHLO \r\n",
	  G "501 5.5.4 Syntax: EHLO hostname\r\n501 5.5.4 Syntax: HELO hostname\r\n"
	  "501 5.5.4 Syntax: EHLO hostname\r\n", NULL },
	{ "trailing spaces are tolerated", NULL, 0, 0,
	  "EHLO c.test  \r\nMAIL FROM:<a@b.test> \r\n" RCPT "DATA \r\n.\r\n",
	  G EH R_TRANS Q(1), "|" },

	/* ---- sequence errors ---- */
	{ "MAIL before EHLO", NULL, 0, 0,
	  MAIL, G "503 5.5.1 Error: send HELO/EHLO first\r\n", NULL },
	{ "RCPT before MAIL", NULL, 0, 0,
	  HI RCPT, G EH NEED_MAIL, NULL },
	{ "DATA before MAIL and before RCPT", NULL, 0, 0,
	  HI "DATA\r\n" MAIL "DATA\r\n",
	  G EH NEED_MAIL OK_MAIL "503 5.5.1 Error: need RCPT command\r\n", NULL },
	{ "DATA with no valid recipients", "192.0.2.1", 0, 0,
	  HI MAIL RCPT "DATA\r\n",
	  G EH OK_MAIL DENIED "554 5.5.1 Error: no valid recipients\r\n", NULL },
	{ "nested MAIL", NULL, 0, 0,
	  HI MAIL MAIL, G EH OK_MAIL "503 5.5.1 Error: nested MAIL command\r\n", NULL },
	{ "DATA with an argument", NULL, 0, 0,
	  HI MAIL RCPT "DATA x\r\n",
	  G EH OK_MAIL OK_RCPT "501 5.5.4 Syntax: DATA\r\n", NULL },

	/* ---- bad input ---- */
	{ "unknown command and empty line", NULL, 0, 0,
	  "FOO\r\n\r\nMAIL\r\n",
	  G UNKNOWN "500 5.5.2 Error: bad syntax\r\n"
	  "503 5.5.1 Error: send HELO/EHLO first\r\n", NULL },
	{ "bare LF, bare CR and NUL in commands", NULL, 0, 0,
	  "NOOP\nNO\rOP\r\nNO" NUL "OP\r\nNOOP\r\n",
	  G "500 5.5.2 Error: bare <LF> received; commands end with <CR><LF>\r\n"
	  "500 5.5.2 Error: bare <CR> received\r\n"
	  "500 5.5.2 Error: NUL character received\r\n" OK, NULL },
	{ "a 512-octet command line is fine, 513 is too long", NULL, 0, 0,
	  "NOOP " REP(505, "x") "\r\nNOOP " REP(506, "x") "\r\nNOOP\r\n",
	  G OK TOO_LONG OK, NULL },
	{ "a huge line is dropped up to its LF, once", NULL, 0, 0,
	  "NOOP " REP(70000, "x") "\r\nNOOP\r\n",
	  G TOO_LONG OK, NULL },
	{ "MAIL and RCPT may be longer (ESMTP parameters)", NULL, 0, 0,
	  HI "MAIL FROM:<a@b.test> ENVID=" REP(100, "e") "\r\n"
	  "RCPT TO:<x@y.test> ORCPT=rfc822;" REP(600, "o") "@y.test\r\n"
	  "RCPT TO:<x@y.test> ORCPT=rfc822;" REP(1000, "o") "@y.test\r\n",
	  G EH OK_MAIL OK_RCPT TOO_LONG, NULL },
	{ "ten errors end the session", NULL, 0, 0,
	  "A\r\nB\r\nC\r\nD\r\nE\r\nF\r\nG\r\nH\r\nI\r\nJ\r\nNOOP\r\n",
	  G UNKNOWN UNKNOWN UNKNOWN UNKNOWN UNKNOWN UNKNOWN UNKNOWN UNKNOWN
	  UNKNOWN UNKNOWN "421 4.7.0 mx.test Error: too many errors\r\n", NULL },
	{ "a 400-line flight is answered in order (budget yields)", NULL, 0, 0,
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"
	  "QUIT\r\n",
	  G OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK
	  OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK
	  OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK OK
	  OK OK OK BYE, NULL },

	/* ---- MAIL FROM ---- */
	{ "MAIL FROM forms: <>, lenient space and bare address", NULL, 0, 0,
	  HI "MAIL FROM:<>\r\nRSET\r\nMAIL FROM: <a@b.test>\r\nRSET\r\n"
	  "MAIL FROM:a@b.test\r\nRSET\r\nMAIL FROM:<@r1.test,@r2.test:a@b.test>\r\n",
	  G EH OK_MAIL OK OK_MAIL OK OK_MAIL OK OK_MAIL, NULL },
	{ "MAIL FROM syntax errors", NULL, 0, 0,
	  HI "MAIL TO:<a@b.test>\r\nMAIL FROM:<a@b.test\r\nMAIL FROM:<nodomain>\r\n"
	  "MAIL FROM:<a@b..test>\r\nMAIL FROM:<a@b.test>x\r\n",
	  G EH "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
	  "501 5.1.7 Bad sender address syntax\r\n501 5.1.7 Bad sender address syntax\r\n"
	  "501 5.1.7 Bad sender address syntax\r\n501 5.1.7 Bad sender address syntax\r\n", NULL },
	{ "MAIL parameters accepted", NULL, 0, 0,
	  HI "MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=a+2Bb SMTPUTF8 AUTH=<>\r\n"
	  "RSET\r\nMAIL FROM:<a@b.test> body=7bit ret=full auth=x+40y\r\n",
	  G EH OK_MAIL OK OK_MAIL, NULL },
	{ "MAIL parameter errors", NULL, 0, 0,
	  HI "MAIL FROM:<a@b.test> SIZE=x\r\nMAIL FROM:<a@b.test> BODY=9BIT\r\n"
	  "MAIL FROM:<a@b.test> RET=ALL\r\nMAIL FROM:<a@b.test> ENVID=a+zz\r\n"
	  "MAIL FROM:<a@b.test> ENVID=" REP(101, "e") "\r\n"
	  "MAIL FROM:<a@b.test> SMTPUTF8=yes\r\nMAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n"
	  "MAIL FROM:<a@b.test> FOO=1\r\nMAIL FROM:<a@b.test> SIZE=\r\n",
	  G EH "501 5.5.4 Syntax: SIZE=number\r\n"
	  "501 5.5.4 Syntax: BODY=7BIT|8BITMIME|BINARYMIME\r\n"
	  "501 5.5.4 Syntax: RET=FULL|HDRS\r\n"
	  "501 5.5.4 Syntax: ENVID=xtext (at most 100 characters)\r\n"
	  "501 5.5.4 Syntax: ENVID=xtext (at most 100 characters)\r\n"
	  "501 5.5.4 Syntax: SMTPUTF8 takes no value\r\n"
	  "501 5.5.4 Duplicate MAIL parameter\r\n"
	  "555 5.5.4 Unsupported MAIL parameter\r\n"
	  "501 5.5.4 Syntax: parameter needs a value\r\n", NULL },
	{ "no ESMTP parameters after HELO", NULL, 0, 0,
	  "HELO c.test\r\nMAIL FROM:<a@b.test> SIZE=10\r\n",
	  G "250 mx.test\r\n555 5.5.4 Unsupported MAIL parameter (send EHLO)\r\n", NULL },
	{ "SMTPUTF8 addresses", NULL, 0, 0,
	  HI "MAIL FROM:<j\xc3\xb6rg@b.test>\r\nMAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8\r\n"
	  "RCPT TO:<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.test>\r\n"
	  "RCPT TO:<bad\xc3(@y.test>\r\nRSET\r\n" MAIL "RCPT TO:<j\xc3\xb6rg@y.test>\r\n",
	  G EH "553 5.6.7 Non-ASCII sender address requires SMTPUTF8\r\n" OK_MAIL OK_RCPT
	  "501 5.1.3 Bad recipient address syntax\r\n" OK OK_MAIL
	  "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8\r\n", NULL },

	/* ---- RCPT TO ---- */
	{ "RCPT forms and errors", NULL, 0, 0,
	  HI MAIL "RCPT TO:<\"quoted user\"@y.test>\r\nRCPT TO:<@r.test:x@y.test>\r\n"
	  "RCPT TO:<>\r\nRCPT TO:<x@>\r\nRCPT TO:x@y.test\r\nRCPT FROM:<x@y.test>\r\n"
	  "RCPT TO:<x@[192.0.2.1]>\r\n",
	  G EH OK_MAIL OK_RCPT OK_RCPT "501 5.1.3 Bad recipient address syntax\r\n"
	  "501 5.1.3 Bad recipient address syntax\r\n" OK_RCPT
	  "501 5.5.4 Syntax: RCPT TO:<address>\r\n" OK_RCPT, NULL },
	{ "RCPT parameters", NULL, 0, 0,
	  HI MAIL "RCPT TO:<x@y.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;x+40y.test\r\n"
	  "RCPT TO:<x@y.test> NOTIFY=NEVER\r\nRCPT TO:<x@y.test> NOTIFY=NEVER,DELAY\r\n"
	  "RCPT TO:<x@y.test> NOTIFY=SOMETIMES\r\nRCPT TO:<x@y.test> NOTIFY=\r\n"
	  "RCPT TO:<x@y.test> ORCPT=x@y.test\r\nRCPT TO:<x@y.test> ORCPT=rfc822;a+zz\r\n"
	  "RCPT TO:<x@y.test> FOO=BAR\r\n",
	  G EH OK_MAIL OK_RCPT OK_RCPT
	  "501 5.5.4 Syntax: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY\r\n"
	  "501 5.5.4 Syntax: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY\r\n"
	  "501 5.5.4 Syntax: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY\r\n"
	  "501 5.5.4 Syntax: ORCPT=addr-type;xtext\r\n"
	  "501 5.5.4 Syntax: ORCPT=addr-type;xtext\r\n"
	  "555 5.5.4 Unsupported RCPT parameter\r\n", NULL },

	/* ---- relaying ---- */
	{ "relaying is denied by default", "192.0.2.1", 0, 0,
	  HI MAIL RCPT "RCPT TO:<x@relay.test>\r\nRCPT TO:<x@RELAY.TEST>\r\n"
	  "RCPT TO:<x@wild.test>\r\nRCPT TO:<x@a.b.wild.test>\r\nRCPT TO:<x@sub.test>\r\n"
	  "RCPT TO:<x@a.sub.test>\r\nRCPT TO:<x@notwild.test>\r\n"
	  "RCPT TO:<special@other.test>\r\nRCPT TO:<Special@Other.Test>\r\n"
	  "RCPT TO:<other@other.test>\r\nRCPT TO:<postmaster@mx.test>\r\n"
	  "RCPT TO:<bounce-42@returns.test>\r\nRCPT TO:<BOUNCE-7@Returns.Test>\r\n"
	  "RCPT TO:<bounce-x@returns.test>\r\nRCPT TO:<bounce-42@returns.test.evil>\r\n",
	  G EH OK_MAIL DENIED OK_RCPT OK_RCPT OK_RCPT OK_RCPT DENIED OK_RCPT
	  DENIED OK_RCPT OK_RCPT DENIED OK_RCPT OK_RCPT OK_RCPT DENIED DENIED, NULL },
	{ "an injector may relay", "10.0.0.1", 0, 0,
	  HI MAIL RCPT "RCPT TO:<z@elsewhere.test>\r\n",
	  G EH OK_MAIL OK_RCPT OK_RCPT, NULL },

	/* ---- sizes and counts ---- */
	{ "SIZE= over max-message-size", "10.1.0.1", 0, 0,
	  HI "MAIL FROM:<a@b.test> SIZE=101\r\nMAIL FROM:<a@b.test> SIZE=100\r\n",
	  G EH_SIZE(100) SIZE_BIG OK_MAIL, NULL },
	{ "actual size over max-message-size, read to the end", "10.1.0.1", 0, 0,
	  HI MAIL RCPT "DATA\r\n" REP(30, "x") "\r\n" REP(30, "y") "\r\n"
	  REP(30, "z") "\r\n" REP(30, "w") "\r\n.\r\n" TRANS,
	  G EH_SIZE(100) R_TRANS SIZE_BIG R_TRANS Q(1), BODY "|" },
	{ "exactly max-message-size is fine", "10.1.0.1", 0, 0,
	  HI MAIL RCPT "DATA\r\n" REP(98, "x") "\r\n.\r\n",
	  G EH_SIZE(100) R_TRANS Q(1), REP(98, "x") "\r\n|" },
	{ "too many recipients: the extra ones get 452", "10.1.0.1", 0, 0,
	  HI MAIL RCPT "RCPT TO:<x2@y.test>\r\nRCPT TO:<x3@y.test>\r\n" MSG,
	  G EH_SIZE(100) OK_MAIL OK_RCPT OK_RCPT "452 4.5.3 Error: too many recipients\r\n"
	  GO Q(1), BODY "|" },
	{ "too-many-rcpts-fails-message refuses at DATA", "10.2.0.1", 0, 0,
	  HI MAIL RCPT "RCPT TO:<x2@y.test>\r\nRCPT TO:<x3@y.test>\r\nDATA\r\n" TRANS,
	  G EH OK_MAIL OK_RCPT OK_RCPT "452 4.5.3 Error: too many recipients\r\n"
	  "550 5.5.3 Error: too many recipients\r\n" R_TRANS Q(1), BODY "|" },

	/* ---- DATA content ---- */
	{ "dot-unstuffing", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\n..\r\n...x\r\n.y\r\na.b\r\n\r\n.\r\n",
	  G EH R_TRANS Q(1), ".\r\n..x\r\ny\r\na.b\r\n\r\n|" },
	{ "empty message", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\n.\r\n", G EH R_TRANS Q(1), "|" },
	{ "bare LF in DATA is refused, and LF.CRLF does not end DATA", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\nhello\n.\r\nMAIL FROM:<evil@x.test>\r\n\r\n.\r\nNOOP\r\n",
	  G EH R_TRANS BARE_LF OK, NULL },
	{ "CRLF.LF does not end DATA", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\nhello\r\n.\nRCPT TO:<evil@x.test>\r\n.\r\nNOOP\r\n",
	  G EH R_TRANS BARE_LF OK, NULL },
	{ "CR.CR does not end DATA either", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\nhello\r.\rQUIT\r\n.\r\nNOOP\r\n",
	  G EH R_TRANS BARE_CR OK, NULL },
	{ "bare CR in DATA", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\na\rb\r\n.\r\n", G EH R_TRANS BARE_CR, NULL },
	{ "dot-CR-x at the start of a line", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\n.\rx\r\n.\r\n", G EH R_TRANS BARE_CR, NULL },
	{ "NUL in DATA", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\na" NUL "b\r\n.\r\n",
	  G EH R_TRANS "554 5.6.0 Error: NUL character in message\r\n", NULL },
	{ "998-octet text lines are fine, 999 are not", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\n" REP(998, "a") "\r\n.\r\n"
	  MAIL RCPT "DATA\r\n" REP(999, "b") "\r\n.\r\n"
	  MAIL RCPT "DATA\r\n." REP(998, "c") "\r\n.\r\n",
	  G EH R_TRANS Q(1) R_TRANS LONGLINE R_TRANS Q(2),
	  REP(998, "a") "\r\n|" REP(998, "c") "\r\n|" },
	{ "the session goes on after a refused message", NULL, 0, 0,
	  HI MAIL RCPT "DATA\r\nx\ny\r\n.\r\n" TRANS,
	  G EH R_TRANS BARE_LF R_TRANS Q(1), BODY "|" },

	/* ---- BDAT ---- */
	{ "BDAT chunks", NULL, 0, 0,
	  HI MAIL RCPT "BDAT 14\r\nSubject: t\r\n\r\nBDAT 6 LAST\r\nbody\r\nQUIT\r\n",
	  G EH OK_MAIL OK_RCPT "250 2.0.0 Ok: 14 octets received\r\n" Q(1) BYE,
	  BODY "|" },
	{ "BDAT 0 LAST ends a message", NULL, 0, 0,
	  HI MAIL RCPT "BDAT 3\r\na\r\nBDAT 0 LAST\r\n",
	  G EH OK_MAIL OK_RCPT "250 2.0.0 Ok: 3 octets received\r\n" Q(1), "a\r\n|" },
	{ "BDAT data is never a command", NULL, 0, 0,
	  HI "BDAT 6\r\nQUIT\r\nNOOP\r\n",
	  G EH NEED_MAIL OK, NULL },
	{ "BDAT and dots: no stuffing", NULL, 0, 0,
	  HI MAIL RCPT "BDAT 10 LAST\r\n.\r\n..\r\nx\r\n",
	  G EH OK_MAIL OK_RCPT Q(1), ".\r\n..\r\nx\r\n|" },
	{ "BINARYMIME carries anything", NULL, 0, 0,
	  HI "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n" RCPT
	  "BDAT 6 LAST\r\n" NUL "\n.\r\r\xff",
	  G EH OK_MAIL OK_RCPT Q(1), NUL "\n.\r\r\xff|" },
	{ "BINARYMIME needs BDAT", NULL, 0, 0,
	  HI "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n" RCPT "DATA\r\n",
	  G EH OK_MAIL OK_RCPT "503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n", NULL },
	{ "BDAT text keeps the line rules", NULL, 0, 0,
	  HI MAIL RCPT "BDAT 4 LAST\r\na\nb\n",
	  G EH OK_MAIL OK_RCPT BARE_LF, NULL },
	{ "BDAT ending in a bare CR", NULL, 0, 0,
	  HI MAIL RCPT "BDAT 2\r\na\rBDAT 0 LAST\r\n",
	  G EH OK_MAIL OK_RCPT "250 2.0.0 Ok: 2 octets received\r\n" BARE_CR, NULL },
	{ "BDAT syntax", NULL, 0, 0,
	  HI MAIL RCPT "BDAT\r\nBDAT x\r\nBDAT 5 FIRST\r\nBDAT -1\r\nBDAT 99999999999999999999999\r\n",
	  G EH OK_MAIL OK_RCPT "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
	  "501 5.5.4 Syntax: BDAT size [LAST]\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n"
	  "501 5.5.4 Syntax: BDAT size [LAST]\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n", NULL },
	{ "DATA after BDAT, RCPT after BDAT", NULL, 0, 0,
	  HI MAIL RCPT "BDAT 1\r\nxDATA\r\nRCPT TO:<x2@y.test>\r\nBDAT 0 LAST\r\n",
	  G EH OK_MAIL OK_RCPT "250 2.0.0 Ok: 1 octets received\r\n"
	  "503 5.5.1 Error: DATA after BDAT\r\n503 5.5.1 Error: RCPT after BDAT\r\n" Q(1),
	  "x|" },
	{ "BDAT over max-message-size", "10.1.0.1", 0, 0,
	  HI MAIL RCPT "BDAT 60\r\n" REP(60, "a") "BDAT 60 LAST\r\n" REP(60, "b") TRANS,
	  G EH_SIZE(100) OK_MAIL OK_RCPT "250 2.0.0 Ok: 60 octets received\r\n"
	  SIZE_BIG R_TRANS Q(1), BODY "|" },
	{ "BDAT with no valid recipients", "192.0.2.1", 0, 0,
	  HI MAIL RCPT "BDAT 3 LAST\r\nabcNOOP\r\n",
	  G EH OK_MAIL DENIED "554 5.5.1 Error: no valid recipients\r\n" OK, NULL },

	/* ---- STARTTLS ---- */
	{ "STARTTLS, pipelined plaintext thrown away", "192.0.2.1", F_TLS_AVAIL, 0,
	  HI "STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n" TLS HI MAIL,
	  G EH_TLS "220 2.0.0 Ready to start TLS\r\n" EH_AUTH OK_MAIL, NULL },
	{ "STARTTLS not available, with argument, twice, in a transaction", "192.0.2.1", 0, 0,
	  HI "STARTTLS\r\n", G EH "502 5.5.1 Error: STARTTLS not available\r\n", NULL },
	{ "STARTTLS when TLS is already on", "192.0.2.1", F_TLS_ACTIVE, 0,
	  HI "STARTTLS\r\n", G EH_AUTH "503 5.5.1 Error: TLS already active\r\n", NULL },
	{ "STARTTLS syntax and sequence", "192.0.2.1", F_TLS_AVAIL, 0,
	  HI "STARTTLS now\r\n" MAIL "STARTTLS\r\n",
	  G EH_TLS "501 5.5.4 Syntax: STARTTLS\r\n" OK_MAIL
	  "503 5.5.1 Error: MAIL transaction in progress\r\n", NULL },
	{ "STARTTLS forgets EHLO", "192.0.2.1", F_TLS_AVAIL, 0,
	  HI "STARTTLS\r\n" TLS MAIL,
	  G EH_TLS "220 2.0.0 Ready to start TLS\r\n"
	  "503 5.5.1 Error: send HELO/EHLO first\r\n", NULL },

	/* ---- AUTH ---- */
	{ "require-auth", "10.3.0.1", 0, 0,
	  HI MAIL "AUTH PLAIN " P_ALICE "\r\n" MAIL RCPT MSG,
	  G EH_AUTH "530 5.7.0 Authentication required\r\n" AUTH_OK R_TRANS Q(1), NULL },
	{ "AUTH PLAIN with continuation", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN\r\n" P_ALICE "\r\n",
	  G EH_AUTH "334 \r\n" AUTH_OK, NULL },
	{ "AUTH PLAIN with authzid", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN YWxpY2UAYWxpY2UAczNjcmV0\r\n",
	  G EH_AUTH AUTH_OK, NULL },
	{ "AUTH PLAIN as someone else is refused", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN ZXZlAGFsaWNlAHMzY3JldA==\r\n",
	  G EH_AUTH AUTH_BAD, NULL },
	{ "AUTH PLAIN wrong password, unknown user", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH PLAIN AG5vYm9keQB4\r\n",
	  G EH_AUTH AUTH_BAD AUTH_BAD, NULL },
	{ "AUTH LOGIN", "10.3.0.1", 0, 0,
	  HI "AUTH LOGIN\r\nYWxpY2U=\r\nczNjcmV0\r\n",
	  G EH_AUTH "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n" AUTH_OK, NULL },
	{ "AUTH LOGIN with initial response", "10.3.0.1", 0, 0,
	  HI "AUTH LOGIN YWxpY2U=\r\nczNjcmV0\r\n",
	  G EH_AUTH "334 UGFzc3dvcmQ6\r\n" AUTH_OK, NULL },
	{ "AUTH LOGIN wrong password", "10.3.0.1", 0, 0,
	  HI "AUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\n",
	  G EH_AUTH "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n" AUTH_BAD, NULL },
	{ "AUTH cancelled, undecodable, unknown mechanism", "10.3.0.1", 0, 0,
	  HI "AUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH CRAM-MD5\r\nAUTH PLAIN =\r\n",
	  G EH_AUTH "334 VXNlcm5hbWU6\r\n501 5.7.0 Error: authentication aborted\r\n"
	  "334 \r\n501 5.5.2 Error: cannot decode response\r\n"
	  "504 5.5.4 Error: unrecognized authentication type\r\n" AUTH_BAD, NULL },
	{ "three AUTH failures end the session", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n"
	  "AUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH PLAIN " P_ALICE "\r\n",
	  G EH_AUTH AUTH_BAD AUTH_BAD AUTH_BAD
	  "421 4.7.0 mx.test Error: too many authentication failures\r\n", NULL },
	{ "AUTH sequence errors", "10.5.0.1", 0, 0,
	  "AUTH PLAIN " P_ALICE "\r\nHELO c.test\r\nAUTH PLAIN " P_ALICE "\r\n"
	  HI MAIL "AUTH LOGIN\r\nRSET\r\nAUTH PLAIN " P_ALICE "\r\nAUTH PLAIN " P_ALICE "\r\n",
	  G "503 5.5.1 Error: send EHLO first\r\n250 mx.test\r\n"
	  "503 5.5.1 Error: send EHLO first\r\n" EH_AUTH OK_MAIL
	  "503 5.5.1 Error: MAIL transaction in progress\r\n" OK AUTH_OK
	  "503 5.5.1 Error: already authenticated\r\n", NULL },
	{ "AUTH needs TLS unless allowed", "192.0.2.1", F_TLS_AVAIL, 0,
	  HI "AUTH PLAIN " P_ALICE "\r\nSTARTTLS\r\n" TLS HI "AUTH PLAIN " P_ALICE "\r\n"
	  MAIL RCPT,
	  G EH_TLS "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
	  "220 2.0.0 Ready to start TLS\r\n" EH_AUTH AUTH_OK OK_MAIL OK_RCPT, NULL },
	{ "AUTH over implicit TLS", "192.0.2.1", F_TLS_ACTIVE, 0,
	  HI "AUTH PLAIN " P_ALICE "\r\n", G EH_AUTH AUTH_OK, NULL },
	{ "allow-auth no", "10.6.0.1", F_TLS_ACTIVE, 0,
	  HI "AUTH PLAIN " P_ALICE "\r\n",
	  G EH "503 5.5.1 Error: authentication not enabled\r\n", NULL },
	{ "crypt hashes: $6$ (bob), $5$ (carol), $y$ (dave)", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN AGJvYgBub3Bl\r\nAUTH PLAIN AGJvYgBwdy1ib2I=\r\n",
	  G EH_AUTH AUTH_BAD AUTH_OK, NULL },
	{ "crypt $5$", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN AGNhcm9sAHB3LWNhcm9s\r\n", G EH_AUTH AUTH_OK, NULL },
	{ "crypt $y$ via LOGIN", "10.3.0.1", 0, 0,
	  HI "AUTH LOGIN ZGF2ZQ==\r\ncHctZGF2ZQ==\r\n",
	  G EH_AUTH "334 UGFzc3dvcmQ6\r\n" AUTH_OK, NULL },
	{ "the user's named source applies after AUTH", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN AGJvYgBwdy1ib2I=\r\n" HI MAIL RCPT,
	  G EH_AUTH AUTH_OK EH_SIZE_AUTH(200) OK_MAIL OK_RCPT, NULL },
	{ "no relaying before AUTH when the source forbids it", "10.3.0.1", 0, 0,
	  HI "AUTH PLAIN AGFsaWNlAHdyb25n\r\n" MAIL,
	  G EH_AUTH AUTH_BAD "530 5.7.0 Authentication required\r\n", NULL },

	/* ---- header policy visible in replies ---- */
	{ "too many hops", "10.9.0.1", 0, 0,
	  HI MAIL RCPT "DATA\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n.\r\n"
	  MAIL RCPT "DATA\r\nReceived: a\r\nReceived: b\r\n\r\nx\r\n.\r\n",
	  G EH R_TRANS
	  "554 5.4.6 Error: too many hops (3 Received: headers), mail loop?\r\n"
	  R_TRANS Q(1), "Received: a\r\nReceived: b\r\n\r\nx\r\n|" },
	{ "unknown virtual-mta refused", "10.7.0.1", 0, 0,
	  HI MAIL RCPT "DATA\r\nX-Virtual-MTA: nope\r\n\r\nx\r\n.\r\n"
	  MAIL RCPT "DATA\r\nX-Virtual-MTA: vm1\r\n\r\nx\r\n.\r\n",
	  G EH R_TRANS "550 5.3.5 Error: X-Virtual-MTA: names no virtual-mta or pool 'nope'\r\n"
	  R_TRANS Q(1), "\r\nx\r\n|" },

	/* ---- the spool's answer ---- */
	{ "spool full", NULL, 0, -ENOSPC,
	  HI TRANS, G EH R_TRANS "452 4.3.1 Error: insufficient system storage\r\n", NULL },
	{ "back-pressure", NULL, 0, -EAGAIN,
	  HI TRANS TRANS, G EH R_TRANS "451 4.3.2 Error: system busy, try again later\r\n"
	  R_TRANS "451 4.3.2 Error: system busy, try again later\r\n", NULL },
	{ "spool error", NULL, 0, -EIO,
	  HI TRANS, G EH R_TRANS "451 4.3.0 Error: local error in processing\r\n", NULL },

	/* ---- refused service ---- */
	{ "smtp-service no", "192.0.2.66", 0, 0,
	  HI, "521 5.3.2 mx.test does not accept mail\r\n", NULL },
};

/* Small enough that most transcripts' bodies stream, past their headers. */
#define STREAM_WINDOW	24

struct tparam {
	int idx;
	int split;
};

ParameterizedTestParameters(smtp_session, transcript)
{
	static struct tparam params[ARRAY_SIZE(cases) * 4];

	/* mode 3: random pieces, streamed past a tiny window */
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		for (int m = 0; m < 4; m++)
			params[i * 4 + (size_t)m] = (struct tparam){ (int)i, m };
	return cr_make_param_array(struct tparam, params, ARRAY_SIZE(params));
}

ParameterizedTest(struct tparam *tp, smtp_session, transcript,
		  .init = setup, .fini = teardown)
{
	const struct tcase *c = &cases[tp->idx];
	static const char *const modes[] = {
		"whole", "byte by byte", "random pieces", "streamed",
	};
	struct run r = {
		.peer = c->peer, .flags = c->flags, .result = c->result,
		.split = tp->split == 3 ? SPLIT_RANDOM : (enum split)tp->split,
		.seed = (unsigned)tp->idx + 7,
		.spill_window = tp->split == 3 ? STREAM_WINDOW : 0,
	};

	run_transcript(&r, c->in);
	expect_bytes(&r.out, c->out, "case \"%s\" (%s): replies", c->name,
		     modes[tp->split]);
	if (c->data)
		expect_bytes(&r.data, c->data, "case \"%s\" (%s): message data",
			     c->name, modes[tp->split]);
	run_free(&r);
}

/* ------------------------------------------------------------------ */
/* The message handed over                                              */

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void run_one(struct run *r, const char *in)
{
	run_transcript(r, in);
}

Test(smtp_session, envelope_fields, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "10.0.0.7" };

	run_one(&r, "EHLO client.test\r\n"
		"MAIL FROM:<s@b.test> SIZE=20 BODY=8BITMIME RET=HDRS ENVID=id+2B1 SMTPUTF8\r\n"
		"RCPT TO:<x@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;X+40Y.test\r\n"
		"RCPT TO:<z@y.test> NOTIFY=NEVER\r\n"
		"RCPT TO:<w@y.test>\r\n"
		"DATA\r\nx\r\n.\r\n");
	cr_expect_str_eq(sb_str(&r.env),
			 "from=<s@b.test> size=20 body=2 ret=2 envid=id+1 utf8=1 auth=- tls=0 vmta=- job=- ip=10.0.0.7 helo=client.test"
			 " to=<x@y.test>/10/rfc822;X+40Y.test/X@Y.test"
			 " to=<z@y.test>/1/-/-"
			 " to=<w@y.test>/0/-/-\n");
	run_free(&r);
}

Test(smtp_session, envelope_null_sender_auth_tls, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "10.3.0.9", .flags = F_TLS_ACTIVE };

	run_one(&r, "EHLO c.test\r\nAUTH PLAIN " P_ALICE "\r\n"
		"MAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nBDAT 1 LAST\r\nx");
	cr_expect_str_eq(sb_str(&r.env),
			 "from=<> size=0 body=0 ret=0 envid=- utf8=0 auth=alice tls=1 vmta=- job=- ip=10.3.0.9 helo=c.test"
			 " to=<x@y.test>/0/-/-\n");
	run_free(&r);
}

Test(smtp_session, received_header_and_control_headers, .init = setup,
     .fini = teardown)
{
	struct run r = { .peer = "10.4.0.1" };

	run_one(&r, "EHLO client.test\r\nMAIL FROM:<s@b.test>\r\nRCPT TO:<x@y.test>\r\n"
		"DATA\r\n"
		"From: a@b.test\r\n"
		"X-Virtual-MTA: vm1\r\n"
		"X-Job:\r\n  job-7 \r\n"
		"Subject: s\r\n"
		"x-envid: env-9\r\n"
		"X-Secret: s3\r\n"
		"\r\n"
		"X-Virtual-MTA: in the body stays\r\n"
		".\r\n");
	cr_expect_str_eq(sb_str(&r.env),
			 "from=<s@b.test> size=0 body=0 ret=0 envid=env-9 utf8=0 auth=- tls=0 vmta=vm1 job=job-7 ip=10.4.0.1 helo=client.test"
			 " to=<x@y.test>/0/-/-\n");
	const char *d = sb_str(&r.data);
	cr_expect(starts_with(d, "Received: from client.test ([10.4.0.1])\r\n\tby mx.test with ESMTP;\r\n\t"),
		  "Received: %s", d);
	const char *msgid = strstr(d, "\r\nMessage-ID: <");
	cr_assert_not_null(msgid, "%s", d);
	cr_expect_not_null(strstr(msgid, ".2a.1@mx.test>\r\nDate: "), "%s", d);
	const char *hdrs = strstr(d, "From: a@b.test\r\n");
	cr_assert_not_null(hdrs);
	cr_expect_str_eq(hdrs, "From: a@b.test\r\nSubject: s\r\n\r\n"
			 "X-Virtual-MTA: in the body stays\r\n|");
	run_free(&r);
}

Test(smtp_session, message_id_and_date_kept_when_present, .init = setup,
     .fini = teardown)
{
	struct run r = { .peer = "10.4.0.1" };

	run_one(&r, "EHLO c.test\r\nMAIL FROM:<s@b.test>\r\nRCPT TO:<x@y.test>\r\n"
		"DATA\r\nMessage-Id: <m@x>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n.\r\n");
	const char *d = sb_str(&r.data);
	cr_expect_null(strstr(d, "Message-ID: <"), "%s", d);
	cr_expect_null(strstr(d, "\r\nDate: "), "%s", d);
	cr_expect_not_null(strstr(d, "\r\nMessage-Id: <m@x>\r\nDATE: Mon"), "%s", d);
	run_free(&r);
}

Test(smtp_session, hidden_source_retained_job_with_prefix, .init = setup,
     .fini = teardown)
{
	struct run r = { .peer = "10.5.0.1" };

	run_one(&r, "EHLO secret.client\r\nAUTH PLAIN " P_ALICE "\r\n"
		"MAIL FROM:<s@b.test>\r\nRCPT TO:<x@y.test>\r\n"
		"DATA\r\nX-Campaign: c7\r\nX-Job: not-this-one\r\n\r\nb\r\n.\r\n");
	const char *d = sb_str(&r.data);
	cr_expect(starts_with(d, "Received: by mx.test with ESMTPA;\r\n\t"), "%s", d);
	cr_expect_null(strstr(d, "secret.client"), "%s", d);
	cr_expect_null(strstr(d, "10.5.0.1"), "%s", d);
	cr_expect_not_null(strstr(d, "\r\nX-Campaign: c7\r\nX-Job: not-this-one\r\n\r\nb\r\n|"), "%s", d);
	cr_expect_not_null(strstr(sb_str(&r.env), " job=alice-c7 "), "%s", sb_str(&r.env));
	run_free(&r);
}

Test(smtp_session, no_received_header_when_disabled, .init = setup,
     .fini = teardown)
{
	struct run r = { .peer = "10.0.0.1" };

	run_one(&r, HI TRANS);
	cr_expect_str_eq(sb_str(&r.data), BODY "|");
	run_free(&r);
}

Test(smtp_session, virtual_mta_fallback, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "10.8.0.1" };

	run_one(&r, HI MAIL RCPT "DATA\r\nX-Virtual-MTA: nope\r\n\r\nx\r\n.\r\n"
		MAIL RCPT "DATA\r\nX-Virtual-MTA: pool1\r\n\r\nx\r\n.\r\n");
	const char *e = sb_str(&r.env);
	const char *second = strchr(e, '\n');
	cr_assert_not_null(second);
	cr_expect_not_null(strstr(e, " vmta=pool1 "), "%s", e);
	cr_expect_not_null(strstr(second, " vmta=pool1 "), "%s", e);
	cr_expect_str_eq(sb_str(&r.data), "\r\nx\r\n|\r\nx\r\n|");
	run_free(&r);
}

/*
 * expect_vmtas - run input from peer; the vmta= of each message handed
 * over, in order and space separated, must be want.
 */
static void expect_vmtas(const char *peer, const char *input, const char *want)
{
	struct run r = { .peer = peer };
	struct strbuf v = { 0 };

	run_one(&r, input);
	for (const char *p = sb_str(&r.env); (p = strstr(p, " vmta=")); ) {
		p += 6;
		size_t n = strcspn(p, " ");
		sb_printf(&v, "%s%.*s", v.len ? " " : "", (int)n, p);
		p += n;
	}
	cr_expect_str_eq(sb_str(&v), want, "%s\n%s", sb_str(&r.out), sb_str(&r.env));
	sb_free(&v);
	run_free(&r);
}

/* <pattern-list>: header, mail-from and rcpt-to rules, first match wins. */
Test(smtp_session, pattern_list_routes_by_sender_recipient_header,
     .init = setup, .fini = teardown)
{
	expect_vmtas("10.10.0.1", HI
		     /* mail-from */
		     "MAIL FROM:<n@news.test>\r\n" RCPT "DATA\r\n\r\nx\r\n.\r\n"
		     /* rcpt-to: any recipient decides for the whole message */
		     MAIL RCPT "RCPT TO:<boss@VIP.test>\r\n" "DATA\r\n\r\nx\r\n.\r\n"
		     /* header (folded), an earlier rule than mail-from */
		     "MAIL FROM:<n@news.test>\r\n" RCPT
		     "DATA\r\nX-Campaign: spring\r\n sale\r\n\r\nx\r\n.\r\n"
		     /* nothing matches: default-virtual-mta */
		     MAIL RCPT "DATA\r\nX-Campaign: winter\r\n\r\nx\r\n.\r\n"
		     /* a header in the body is not a header */
		     MAIL RCPT "DATA\r\n\r\nX-Campaign: spring sale\r\n.\r\n",
		     "vm2 pool1 vm4 vm3 vm3");
}

/*
 * X-Virtual-MTA: comes before the pattern-list; with
 * reject-invalid-virtual-mta no an unknown name is ignored (routed as if
 * absent), never put in {default}.
 */
Test(smtp_session, x_virtual_mta_before_pattern_list, .init = setup, .fini = teardown)
{
	expect_vmtas("10.11.0.1", HI
		     "MAIL FROM:<n@news.test>\r\n" RCPT "DATA\r\nX-Virtual-MTA: vm1\r\n\r\nx\r\n.\r\n"
		     "MAIL FROM:<n@news.test>\r\n" RCPT "DATA\r\nX-Virtual-MTA: nope\r\n\r\nx\r\n.\r\n"
		     MAIL RCPT "DATA\r\nX-Virtual-MTA: nope\r\n\r\nx\r\n.\r\n",
		     "vm1 vm2 vm3");
}

/* An <smtp-user>'s named source brings its own default-virtual-mta. */
Test(smtp_session, smtp_user_named_source_default_virtual_mta, .init = setup, .fini = teardown)
{
	/* base64("\0erin\0pw-erin") */
	expect_vmtas("10.3.0.1", HI "AUTH PLAIN AGVyaW4AcHctZXJpbg==\r\n" TRANS, "vm4");
}

Test(smtp_session, ipv6_peer_in_received, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "2001:db8::1" };
	struct sockaddr_storage ss;
	enum smtp_event ev;
	const char *src = "<source 0/0>\n add-received-header yes\n always-allow-relaying yes\n</source>\n";
	struct cfg *c6 = NULL;
	struct diag_list dl = { 0 };

	cr_assert_eq(cfg_load_string("v6.conf", src, "/nonexistent", NULL, &c6, &dl), 0);
	make_peer(r.peer, &ss);
	struct smtp_session_params p = {
		.cfg = c6, .source = cfg_source_lookup(c6, (struct sockaddr *)&ss, NULL),
		.peer = (struct sockaddr *)&ss, .hostname = "me.test",
	};
	struct smtp_session *s = smtp_session_new(&p, &r.out, &ev);
	const char *in = HI TRANS;
	size_t used;
	cr_assert_eq(smtp_session_input(s, in, strlen(in), &used, &r.out), SMTP_EV_MESSAGE);
	const struct smtp_message *m = smtp_session_message(s);
	cr_expect_str_eq(m->client_ip, "2001:db8::1");
	cr_expect(starts_with(m->data, "Received: from c.test ([IPv6:2001:db8::1])\r\n\tby me.test with ESMTP;"),
		  "%.*s", (int)m->len, m->data);
	smtp_session_free(s);	/* with the message pending: frees the body */

	/* a v4-mapped peer reads as IPv4 */
	make_peer("::ffff:192.0.2.5", &ss);
	sb_reset(&r.out);
	s = smtp_session_new(&p, &r.out, &ev);
	cr_assert_eq(smtp_session_input(s, in, strlen(in), &used, &r.out), SMTP_EV_MESSAGE);
	m = smtp_session_message(s);
	cr_expect_str_eq(m->client_ip, "192.0.2.5");
	cr_expect(starts_with(m->data, "Received: from c.test ([192.0.2.5])"));
	smtp_session_free(s);
	cfg_free(c6);
	diag_free(&dl);
	run_free(&r);
}

/* ------------------------------------------------------------------ */
/* Events and the driver contract                                       */

static struct smtp_session *plain_session(const char *ip, unsigned flags,
					  struct strbuf *out)
{
	static struct sockaddr_storage ss;
	enum smtp_event ev;

	make_peer(ip, &ss);
	struct smtp_session_params p = {
		.cfg = cfg,
		.source = cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL),
		.peer = (struct sockaddr *)&ss,
		.tls_available = flags & F_TLS_AVAIL,
		.tls_active = flags & F_TLS_ACTIVE,
	};
	struct smtp_session *s = smtp_session_new(&p, out, &ev);
	cr_assert_eq(ev, SMTP_EV_NONE);
	return s;
}

Test(smtp_session, pipelined_bytes_after_the_dot_stay_unconsumed,
     .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	const char *in = HI TRANS "NOOP\r\nQUIT\r\n";
	size_t used = 0, len = strlen(in);

	cr_assert_eq(smtp_session_input(s, in, len, &used, &out), SMTP_EV_MESSAGE);
	cr_expect_str_eq(in + used, "NOOP\r\nQUIT\r\n");
	const struct smtp_message *m = smtp_session_message(s);
	cr_assert_not_null(m);
	cr_expect_eq(m->len, strlen(BODY));
	cr_expect_eq(m->seq, 1);
	char *body = smtp_session_take_body(s);
	cr_assert_not_null(body);
	cr_expect(m->data >= body);
	smtp_session_message_result(s, 0, "ABC", &out);
	free(body);
	size_t used2 = 0;
	cr_assert_eq(smtp_session_input(s, in + used, len - used, &used2, &out),
		     SMTP_EV_CLOSE);
	cr_expect_eq(used2, len - used);
	cr_expect_not_null(strstr(sb_str(&out), "250 2.0.0 Ok: queued as ABC\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"));
	/* after CLOSE nothing more is read */
	cr_expect_eq(smtp_session_input(s, "NOOP\r\n", 6, &used2, &out), SMTP_EV_CLOSE);
	cr_expect_eq(used2, 0);
	smtp_session_free(s);
	sb_free(&out);
}

Test(smtp_session, body_reused_when_not_taken, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	const char *in = HI TRANS TRANS;
	size_t used = 0, off = 0, len = strlen(in);

	for (int i = 0; i < 2; i++) {
		cr_assert_eq(smtp_session_input(s, in + off, len - off, &used, &out),
			     SMTP_EV_MESSAGE);
		off += used;
		cr_expect_eq(smtp_session_message(s)->seq, (uint32_t)i + 1);
		smtp_session_message_result(s, 0, NULL, &out);
	}
	cr_expect_not_null(strstr(sb_str(&out), "250 2.0.0 Ok: queued\r\n"));
	smtp_session_free(s);
	sb_free(&out);
}

Test(smtp_session, starttls_swallows_the_rest, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("192.0.2.1", F_TLS_AVAIL, &out);
	const char *in = "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<x@relay.test>\r\n";
	size_t used = 0;

	cr_assert_eq(smtp_session_input(s, in, strlen(in), &used, &out), SMTP_EV_STARTTLS);
	cr_expect_eq(used, strlen(in));
	cr_expect(strstr(sb_str(&out), "220 2.0.0 Ready to start TLS\r\n") != NULL);
	smtp_session_tls_started(s);
	sb_reset(&out);
	/* a partial line from before the handshake is gone too */
	smtp_session_free(s);
	s = plain_session("192.0.2.1", F_TLS_AVAIL, &out);
	const char *in2 = "EHLO c\r\nSTARTTLS\r\nNO";
	cr_assert_eq(smtp_session_input(s, in2, strlen(in2), &used, &out), SMTP_EV_STARTTLS);
	smtp_session_tls_started(s);
	sb_reset(&out);
	cr_assert_eq(smtp_session_input(s, "OP\r\n", 4, &used, &out), SMTP_EV_NONE);
	cr_expect_str_eq(sb_str(&out), "500 5.5.1 Error: command not recognized\r\n");
	smtp_session_free(s);
	sb_free(&out);
}

Test(smtp_session, tls_started_forgets_auth, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.3.0.1", F_TLS_AVAIL, &out);
	const char *in = "EHLO c\r\nAUTH PLAIN " P_ALICE "\r\nSTARTTLS\r\n";
	size_t used;

	cr_assert_eq(smtp_session_input(s, in, strlen(in), &used, &out), SMTP_EV_STARTTLS);
	smtp_session_tls_started(s);
	sb_reset(&out);
	const char *in2 = "EHLO c\r\nMAIL FROM:<a@b.test>\r\n";
	cr_assert_eq(smtp_session_input(s, in2, strlen(in2), &used, &out), SMTP_EV_NONE);
	cr_expect(strstr(sb_str(&out), "530 5.7.0 Authentication required\r\n") != NULL,
		  "%s", sb_str(&out));
	smtp_session_free(s);
	sb_free(&out);
}

Test(smtp_session, budget_yields, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 }, in = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	size_t used = 0;

	for (int i = 0; i < 100; i++)
		sb_adds(&in, "NOOP\r\n");
	cr_assert_eq(smtp_session_input(s, in.buf, in.len, &used, &out), SMTP_EV_YIELD);
	cr_expect_eq(used, SMTP_SESSION_CMD_BUDGET * 6);
	size_t off = used;
	while (off < in.len) {
		enum smtp_event ev = smtp_session_input(s, in.buf + off, in.len - off,
							&used, &out);
		cr_assert(ev == SMTP_EV_YIELD || ev == SMTP_EV_NONE);
		off += used;
	}
	cr_expect_eq(out.len, strlen(G) + 100 * strlen(OK));
	smtp_session_free(s);
	sb_free(&out);
	sb_free(&in);
}

Test(smtp_session, junk_commands_end_the_session, .init = setup,
     .fini = teardown)
{
	struct run r = { .peer = "10.0.0.1" };
	struct strbuf in = { 0 }, want = { 0 };

	/* a message in between starts the count again */
	for (int i = 0; i < 90; i++)
		sb_adds(&in, "NOOP\r\n");
	sb_adds(&in, HI TRANS);
	for (int i = 0; i < 120; i++)
		sb_adds(&in, i % 2 ? "RSET\r\n" : "NOOP\r\n");
	sb_adds(&want, G);
	for (int i = 0; i < 90; i++)
		sb_adds(&want, OK);
	sb_adds(&want, EH R_TRANS Q(1));
	for (int i = 0; i < 110; i++)
		sb_adds(&want, OK);
	sb_adds(&want, "421 4.7.0 mx.test Error: too many errors\r\n");
	run_one(&r, in.buf);
	cr_expect_str_eq(sb_str(&r.out), want.buf);
	sb_free(&in);
	sb_free(&want);
	run_free(&r);
}

Test(smtp_session, timeout, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	size_t used;

	sb_reset(&out);
	smtp_session_timeout(s, &out);
	cr_expect_str_eq(sb_str(&out), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
	cr_expect_eq(smtp_session_input(s, "NOOP\r\n", 6, &used, &out), SMTP_EV_CLOSE);
	smtp_session_timeout(s, &out);	/* once only */
	cr_expect_eq(out.len, strlen("421 4.4.2 mx.test Error: timeout exceeded\r\n"));
	smtp_session_free(s);
	sb_free(&out);
}

Test(smtp_session, timeout_while_spooling, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	const char *in = HI TRANS;
	size_t used;

	cr_assert_eq(smtp_session_input(s, in, strlen(in), &used, &out), SMTP_EV_MESSAGE);
	sb_reset(&out);
	smtp_session_timeout(s, &out);
	smtp_session_message_result(s, 0, "Q", &out);
	cr_expect_str_eq(sb_str(&out), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
	smtp_session_free(s);
	sb_free(&out);
}

/* big_message - 1 MB in random reads; SIZE= preallocates, or the buffer grows. */
static void big_message(const char *mail)
{
	struct strbuf out = { 0 }, in = { 0 }, want = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	size_t off = 0, used;

	sb_adds(&in, HI);
	sb_adds(&in, mail);
	sb_adds(&in, RCPT "DATA\r\n");
	for (int i = 0; i < 40000; i++) {
		char line[80];
		int n = snprintf(line, sizeof(line), "%sline %d of a big message\r\n",
				 i % 7 == 0 ? "." : "", i);
		sb_add(&in, line, (size_t)n);
		sb_add(&want, line + (i % 7 == 0), (size_t)n - (i % 7 == 0));
	}
	sb_adds(&in, ".\r\n");
	enum smtp_event ev = SMTP_EV_NONE;
	unsigned seed = 3;
	while (off < in.len) {
		seed = seed * 1103515245u + 12345u;
		size_t n = 1 + (seed >> 8) % 9000;
		if (n > in.len - off)
			n = in.len - off;
		ev = smtp_session_input(s, in.buf + off, n, &used, &out);
		off += used;
		if (ev == SMTP_EV_MESSAGE)
			break;
		cr_assert_eq(ev, SMTP_EV_NONE);
	}
	cr_assert_eq(ev, SMTP_EV_MESSAGE);
	cr_expect_eq(off, in.len);
	const struct smtp_message *m = smtp_session_message(s);
	cr_assert_eq(m->len, want.len);
	cr_expect(memcmp(m->data, want.buf, want.len) == 0);
	smtp_session_message_result(s, 0, "Q", &out);
	smtp_session_free(s);
	sb_free(&out);
	sb_free(&in);
	sb_free(&want);
}

Test(smtp_session, big_message_with_size, .init = setup, .fini = teardown)
{
	big_message("MAIL FROM:<a@b.test> SIZE=1200000\r\n");
}

Test(smtp_session, big_message_growing, .init = setup, .fini = teardown)
{
	big_message("MAIL FROM:<a@b.test>\r\n");
}

Test(smtp_session, long_line_across_reads, .init = setup, .fini = teardown)
{
	struct strbuf out = { 0 }, big = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	size_t used;

	for (int i = 0; i < 20000; i++)
		sb_addc(&big, 'x');
	/* a partial line, then more than any line may hold, in one read */
	cr_assert_eq(smtp_session_input(s, "AUTH ", 5, &used, &out), SMTP_EV_NONE);
	sb_adds(&big, "\r\nNOOP\r\n");
	cr_assert_eq(smtp_session_input(s, big.buf, big.len, &used, &out), SMTP_EV_NONE);
	/* the same without its end: dropped until the LF comes */
	cr_assert_eq(smtp_session_input(s, "NO", 2, &used, &out), SMTP_EV_NONE);
	cr_assert_eq(smtp_session_input(s, big.buf, 20000, &used, &out), SMTP_EV_NONE);
	cr_assert_eq(smtp_session_input(s, big.buf, 20000, &used, &out), SMTP_EV_NONE);
	cr_assert_eq(smtp_session_input(s, "x\r\nNOOP\r\n", 9, &used, &out), SMTP_EV_NONE);
	cr_expect_str_eq(sb_str(&out), G TOO_LONG OK TOO_LONG OK);
	smtp_session_free(s);
	sb_free(&out);
	sb_free(&big);
}

Test(smtp_session, received_after_helo_says_smtp, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "10.4.0.1" };

	run_one(&r, "HELO old.client\r\n" TRANS);
	cr_expect(starts_with(sb_str(&r.data),
			      "Received: from old.client ([10.4.0.1])\r\n\tby mx.test with SMTP;\r\n\t"),
		  "%s", sb_str(&r.data));
	run_free(&r);
}

Test(smtp_session, hard_caps_from_the_driver, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "10.0.0.1", .hard_max = 10 };

	run_one(&r, HI "MAIL FROM:<a@b.test> SIZE=11\r\n" MAIL RCPT "DATA\r\n"
		REP(20, "x") "\r\n.\r\n");
	cr_expect_str_eq(sb_str(&r.out), G EH_SIZE(10) SIZE_BIG R_TRANS SIZE_BIG);
	run_free(&r);
}

/* ------------------------------------------------------------------ */
/* Reject reports (the reject log's c and r records)                    */

Test(smtp_session, reject_reports, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "192.0.2.1" };

	run_one(&r, HI MAIL "RCPT TO:<no@where.test>\r\nRCPT TO:<bad>\r\n"
		"RCPT TO:<x@relay.test>\r\nDATA\r\na\nb\r\n.\r\nFOO\r\n");
	cr_expect_str_eq(sb_str(&r.rejects),
			 "rcpt 550 no@where.test\n"
			 "rcpt 501 bad\n"
			 "msg 554\n"
			 "cmd 500\n");
	run_free(&r);

	struct run r2 = { .peer = "192.0.2.66" };
	run_one(&r2, HI);
	cr_expect_str_eq(sb_str(&r2.rejects), "conn 521\n");
	cr_expect(r2.closed);
	run_free(&r2);

	struct run r3 = { .peer = "192.0.2.1" };
	run_one(&r3, "A\r\nB\r\nC\r\nD\r\nE\r\nF\r\nG\r\nH\r\nI\r\nJ\r\n");
	cr_expect_str_eq(sb_str(&r3.rejects),
			 "cmd 500\ncmd 500\ncmd 500\ncmd 500\ncmd 500\n"
			 "cmd 500\ncmd 500\ncmd 500\ncmd 500\ncmd 500\nconn 421\n");
	run_free(&r3);
}

/* ------------------------------------------------------------------ */
/* Bugs in the driver abort                                             */

Test(smtp_session, input_while_a_message_is_pending_aborts, .init = setup,
     .fini = teardown, .signal = SIGABRT)
{
	testlib_expect_death();
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);
	const char *in = HI TRANS "NOOP\r\n";
	size_t used;

	cr_assert_eq(smtp_session_input(s, in, strlen(in), &used, &out), SMTP_EV_MESSAGE);
	smtp_session_input(s, in + used, strlen(in) - used, &used, &out);
}

Test(smtp_session, result_without_message_aborts, .init = setup,
     .fini = teardown, .signal = SIGABRT)
{
	testlib_expect_death();
	struct strbuf out = { 0 };
	struct smtp_session *s = plain_session("10.0.0.1", 0, &out);

	smtp_session_message_result(s, 0, "Q", &out);
}

Test(smtp_session, new_without_source_aborts, .init = setup, .fini = teardown,
     .signal = SIGABRT)
{
	testlib_expect_death();
	struct strbuf out = { 0 };
	struct smtp_session_params p = { .cfg = cfg };
	enum smtp_event ev;

	smtp_session_new(&p, &out, &ev);
}

/* ---- issue 18: under pressure and under attack ---- */

#define FULL	"452 4.3.1 Error: insufficient system storage\r\n"

Test(smtp_session, storage_refused_at_mail_data_and_bdat, .init = setup,
     .fini = teardown)
{
	/* SIZE= over the room: MAIL refused; then the room runs out at DATA */
	struct run r = { .peer = "10.0.0.1", .storage = true, .storage_ok_calls = 2,
			 .storage_room = 1000 };
	run_one(&r, HI "MAIL FROM:<a@b.test> SIZE=5000\r\n" MAIL RCPT "DATA\r\n"
		"QUIT\r\n");
	cr_expect_str_eq(sb_str(&r.out), G EH FULL OK_MAIL OK_RCPT FULL BYE);
	cr_expect_eq(r.storage_asked, 0);
	cr_expect_eq(r.messages, 0);
	cr_expect_str_eq(sb_str(&r.rejects), "msg 452\nmsg 452\n");
	run_free(&r);

	/* BDAT: the chunk is read and dropped, never taken for commands */
	struct run b = { .peer = "10.0.0.1", .storage = true, .storage_ok_calls = 1,
			 .storage_room = 1000 };
	run_one(&b, HI MAIL RCPT "BDAT 6 LAST\r\nNOOP\r\n" "QUIT\r\n");
	cr_expect_str_eq(sb_str(&b.out), G EH OK_MAIL OK_RCPT FULL BYE);
	run_free(&b);

	/* room enough: the declared size is what is asked about */
	struct run ok = { .peer = "10.0.0.1", .storage = true, .storage_ok_calls = 9,
			  .storage_room = 5000 };
	run_one(&ok, HI "MAIL FROM:<a@b.test> SIZE=5000\r\n" RCPT MSG "QUIT\r\n");
	cr_expect_str_eq(sb_str(&ok.out), G EH R_TRANS Q(1) BYE);
	cr_expect_eq(ok.storage_asked, 5000);
	run_free(&ok);
}

/* Regression (issue 18): EHLO repeated for ever never counted as junk. */
Test(smtp_session, repeated_ehlo_counts_toward_the_junk_limit, .init = setup,
     .fini = teardown)
{
	struct run r = { .peer = "10.0.0.1" };
	struct strbuf in = { 0 }, want = { 0 };

	sb_adds(&want, G);
	for (int i = 0; i < 1000; i++)
		sb_adds(&in, i % 2 ? "HELO c.test\r\n" : HI);
	for (int i = 0; i < 110; i++)
		sb_adds(&want, i % 2 ? "250 mx.test\r\n" : EH);
	sb_adds(&want, "421 4.7.0 mx.test Error: too many errors\r\n");
	run_one(&r, in.buf);
	cr_expect_str_eq(sb_str(&r.out), want.buf);
	cr_expect(r.closed);
	sb_free(&in);
	sb_free(&want);
	run_free(&r);
}

/* Regression (issue 18): RFC 5321 4.5.1, <postmaster> with no domain. */
Test(smtp_session, rcpt_postmaster_without_domain_is_accepted, .init = setup,
     .fini = teardown)
{
	/* 192.0.2.1 may not relay: postmaster is accepted all the same */
	struct run r = { .peer = "192.0.2.1" };

	run_one(&r, HI MAIL "RCPT TO:<Postmaster>\r\nRCPT TO:<x@y.test>\r\n"
		"DATA\r\n" BODY ".\r\n");
	cr_expect_str_eq(sb_str(&r.out), G EH OK_MAIL OK_RCPT
			 "550 5.7.1 Error: relaying denied\r\n" GO Q(1));
	cr_expect(strstr(sb_str(&r.env), " to=<postmaster@mx.test>/"), "%s",
		  sb_str(&r.env));
	run_free(&r);
}

/* Regression (issue 18): AUTH guessing was unlimited by default. */
Test(smtp_session, auth_failure_rate_is_limited_by_default, .init = setup,
     .fini = teardown)
{
	struct sockaddr_storage ss;

	make_peer("192.0.2.1", &ss);
	const struct cfg_source *src = cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL);
	cr_assert_not_null(src);
	cr_expect_not(src->smtp_max_auth_failure_rate.unlimited);
	cr_expect_eq(src->smtp_max_auth_failure_rate.count, 10);
	cr_expect_eq(src->smtp_max_auth_failure_rate.period_s, 3600);
}

/* ---- issue 18, part 4: memory ---- */

struct budget {
	int64_t held, peak, cap;
	unsigned refused;
};

static bool budget_cb(void *arg, int64_t delta)
{
	struct budget *b = arg;

	if (delta > 0 && b->cap && b->held + delta > b->cap) {
		b->refused++;
		return false;
	}
	b->held += delta;
	if (b->held > b->peak)
		b->peak = b->held;
	return true;
}

static struct smtp_session *budget_session(struct budget *b, struct strbuf *out)
{
	static struct sockaddr_storage ss;
	enum smtp_event ev;

	make_peer("10.0.0.1", &ss);
	struct smtp_session_params p = {
		.cfg = cfg,
		.source = cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL),
		.peer = (struct sockaddr *)&ss,
		.memory = budget_cb,
		.memory_arg = b,
	};
	struct smtp_session *s = smtp_session_new(&p, out, &ev);
	cr_assert_eq(ev, SMTP_EV_NONE);
	return s;
}

/* feed_all - everything, in 64 KiB reads; no message may come out. */
static void feed_all(struct smtp_session *s, const char *p, size_t n, struct strbuf *out)
{
	while (n) {
		size_t chunk = n < 65536 ? n : 65536, used = 0;
		enum smtp_event ev = smtp_session_input(s, p, chunk, &used, out);
		cr_assert(ev == SMTP_EV_NONE || ev == SMTP_EV_CLOSE, "event %d", (int)ev);
		cr_assert_eq(used, chunk);
		p += used;
		n -= used;
	}
}

/* Regression (issue 18): a 10 MB line was buffered whole, then refused. */
Test(smtp_session, ten_megabyte_line_refused_without_buffering_it,
     .init = setup, .fini = teardown)
{
	struct budget b = { 0 };
	struct strbuf out = { 0 }, big = { 0 };
	struct smtp_session *s = budget_session(&b, &out);

	sb_adds(&big, HI MAIL RCPT "DATA\r\nSubject: x\r\n\r\n");
	for (size_t i = 0; i < 10u << 20; i += 64)
		sb_adds(&big, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
	sb_adds(&big, "\r\n.\r\nQUIT\r\n");
	feed_all(s, big.buf, big.len, &out);
	cr_expect_str_eq(sb_str(&out), G EH R_TRANS
			 "554 5.6.0 Error: message has lines longer than 998 octets\r\n" BYE);
	cr_expect_lt(b.peak, 64 << 10, "%lld bytes held for a refused line",
		     (long long)b.peak);
	smtp_session_free(s);
	cr_expect_eq(b.held, 0, "every byte given back");
	sb_free(&out);
	sb_free(&big);
}

Test(smtp_session, memory_budget_refuses_what_does_not_fit, .init = setup,
     .fini = teardown)
{
	struct budget b = { .cap = 256 << 10 };
	struct strbuf out = { 0 }, big = { 0 };
	struct smtp_session *s = budget_session(&b, &out);

	/* 1 MB of good lines: over the budget, refused, never held */
	sb_adds(&big, HI MAIL RCPT "DATA\r\nSubject: x\r\n\r\n");
	while (big.len < (1u << 20))
		sb_adds(&big, "0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
	sb_adds(&big, ".\r\n");
	/* a declared SIZE beyond the budget is refused at DATA, before the data */
	sb_adds(&big, "MAIL FROM:<a@b.test> SIZE=900000\r\n" RCPT "DATA\r\n");
	/* and a small one still fits */
	sb_adds(&big, "RSET\r\n" TRANS "QUIT\r\n");
	size_t used = 0;
	enum smtp_event ev;
	const char *p = big.buf;
	size_t n = big.len;
	unsigned messages = 0;
	while (n) {
		ev = smtp_session_input(s, p, n, &used, &out);
		p += used;
		n -= used;
		if (ev == SMTP_EV_MESSAGE) {
			messages++;
			smtp_session_message_result(s, 0, "Q1", &out);
		} else if (ev == SMTP_EV_CLOSE) {
			break;
		}
	}
	cr_expect_eq(messages, 1);
	cr_expect_str_eq(sb_str(&out), G EH R_TRANS
			 "452 4.3.1 Error: insufficient system storage\r\n"
			 OK_MAIL OK_RCPT "452 4.3.1 Error: insufficient system storage\r\n"
			 OK R_TRANS Q(1) BYE);
	cr_expect_leq(b.peak, b.cap);
	cr_expect_gt(b.refused, 0);
	smtp_session_free(s);
	cr_expect_eq(b.held, 0);
	sb_free(&out);
	sb_free(&big);
}

/* Regression (issue 18): max-message-size was unlimited (1 GiB) by default. */
Test(smtp_session, default_max_message_size_is_50M)
{
	struct diag_list dl = { 0 };
	struct cfg *c = NULL;
	int rc = cfg_load_string("test.conf", "host-name mx.test\n", "/nonexistent", NULL, &c, &dl);
	cr_assert_eq(rc, 0);
	struct sockaddr_storage ss;
	make_peer("192.0.2.1", &ss);
	struct strbuf out = { 0 };
	enum smtp_event ev;
	struct smtp_session_params p = {
		.cfg = c,
		.source = cfg_source_lookup(c, (struct sockaddr *)&ss, NULL),
		.peer = (struct sockaddr *)&ss,
	};
	struct smtp_session *s = smtp_session_new(&p, &out, &ev);
	size_t used;
	smtp_session_input(s, HI, strlen(HI), &used, &out);
	cr_expect(strstr(sb_str(&out), "250-SIZE 52428800\r\n"), "%s", sb_str(&out));
	smtp_session_free(s);
	sb_free(&out);
	cfg_free(c);
	diag_free(&dl);
}

/* ---- issue 18, part 2: streaming ---- */

/*
 * big_streamed - an 8 MiB message with control headers, lines that need
 * unstuffing on both sides of every window edge, through DATA or BDAT:
 * what is handed over (head + streamed part) is the message, the header
 * policy applied, and the memory held stays about a window.
 */
static void big_streamed(bool bdat, enum split split)
{
	struct budget b = { 0 };
	struct run r = { .peer = "10.4.0.1", .spill_window = 64 << 10,
			 .budget = &b, .split = split, .seed = 5 };
	struct strbuf in = { 0 }, body = { 0 }, wire = { 0 };

	for (unsigned i = 0; body.len < (8u << 20); i++) {
		if (i % 7 == 0)
			sb_printf(&body, ".dot line %u\r\n", i);
		else if (i % 11 == 0)
			sb_adds(&body, ".\r\n");	/* a lone dot, stuffed */
		else
			sb_printf(&body, "line %u of the body, long enough to matter %0100u\r\n", i, i);
	}
	const char *hdr = "From: a@b.test\r\nX-Virtual-MTA: vm1\r\nX-Secret: s\r\n"
			  "Subject: big\r\n\r\n";
	sb_adds(&in, "EHLO c.test\r\nMAIL FROM:<s@b.test>\r\nRCPT TO:<x@y.test>\r\n");
	if (bdat) {
		sb_adds(&wire, hdr);
		sb_add(&wire, body.buf, body.len);
		for (size_t off = 0; off < wire.len;) {
			size_t n = wire.len - off < 1000003 ? wire.len - off : 1000003;
			sb_printf(&in, "BDAT %zu%s\r\n", n, off + n == wire.len ? " LAST" : "");
			sb_add(&in, wire.buf + off, n);
			off += n;
		}
	} else {
		sb_adds(&in, "DATA\r\n");
		sb_adds(&in, hdr);
		for (size_t off = 0; off < body.len;) {
			const char *nl = memchr(body.buf + off, '\n', body.len - off);
			size_t n = (size_t)(nl - (body.buf + off)) + 1;
			if (body.buf[off] == '.')
				sb_addc(&in, '.');
			sb_add(&in, body.buf + off, n);
			off += n;
		}
		sb_adds(&in, ".\r\n");
	}
	sb_adds(&in, "QUIT\r\n");
	run_transcript(&r, in.buf);
	cr_assert_eq(r.messages, 1, "%s", sb_str(&r.out));
	cr_expect(strstr(r.env.buf, "vmta=vm1") != NULL, "%s", r.env.buf);
	/* Received:, From:, Subject:; control headers gone; then the body */
	const char *d = r.data.buf;
	const char *sep = memmem(d, r.data.len, "\r\n\r\n", 4);
	cr_assert_not_null(sep);
	size_t hlen = (size_t)(sep - d) + 4;
	cr_expect(memmem(d, hlen, "X-Virtual-MTA", 13) == NULL);
	cr_expect(memmem(d, hlen, "X-Secret", 8) == NULL);
	cr_expect(memmem(d, hlen, "Subject: big\r\n", 14) != NULL);
	cr_assert_eq(r.data.len - hlen - 1, body.len, "body length");
	cr_expect(memcmp(d + hlen, body.buf, body.len) == 0, "body bytes");
	cr_expect_lt(b.peak, 512 << 10, "%lld bytes held for an 8 MiB message",
		     (long long)b.peak);
	cr_expect_geq(r.spill_forgets, 1, "the driver was told to drop it after");
	sb_free(&in);
	sb_free(&body);
	sb_free(&wire);
	run_free(&r);
}

Test(smtp_session, data_streams_past_the_window, .init = setup, .fini = teardown)
{
	big_streamed(false, SPLIT_WHOLE);
}

Test(smtp_session, data_streams_in_small_reads, .init = setup, .fini = teardown)
{
	big_streamed(false, SPLIT_RANDOM);
}

Test(smtp_session, bdat_streams_past_the_window, .init = setup, .fini = teardown)
{
	big_streamed(true, SPLIT_WHOLE);
}

/* A refused streamed message is forgotten at the driver, and the next one
 * starts from nothing. */
Test(smtp_session, streamed_then_refused_is_forgotten, .init = setup, .fini = teardown)
{
	struct run r = { .peer = "10.0.0.1", .spill_window = 100, .split = SPLIT_BYTES };
	struct strbuf in = { 0 };

	sb_adds(&in, HI MAIL RCPT "DATA\r\nSubject: x\r\n\r\n");
	for (int i = 0; i < 50; i++)
		sb_adds(&in, "0123456789\r\n");
	sb_adds(&in, "bare\nLF\r\n.\r\n");
	sb_adds(&in, MAIL RCPT "DATA\r\nSubject: y\r\n\r\nshort\r\n.\r\n");
	run_one(&r, in.buf);
	cr_expect(strstr(r.out.buf, "554 5.6.0 Error: bare <LF>") != NULL, "%s", r.out.buf);
	cr_assert_eq(r.messages, 1);
	cr_expect_str_eq(sb_str(&r.data), "Subject: y\r\n\r\nshort\r\n|");
	cr_expect_geq(r.spill_forgets, 1);
	sb_free(&in);
	run_free(&r);
}
