/*
 * shards/smtp_client.c - the outbound SMTP client state machine: reply
 * parsing (multi-line, enhanced status codes), EHLO/HELO, STARTTLS,
 * pipelined or lock-step transactions, BDAT or DATA with an incremental
 * dot-stuffer, and per-recipient outcomes.  No I/O (see smtp_client.h).
 *
 * Called only by the shard thread that owns the client.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#include "shards/smtp_client.h"

/* RFC 5321 allows 512-byte reply lines; be lenient up to this, then fail. */
#define LINE_CAP 4096
/* A reply longer than this many lines is a server feeding us forever. */
#define REPLY_LINES_MAX 1000

enum cstate {
	CS_GREETING,
	CS_EHLO,
	CS_HELO,
	CS_STARTTLS,
	CS_TLS,			/* the driver's handshake */
	CS_IDLE,
	CS_TXN,			/* c->exp says which reply comes next */
	CS_QUIT,
	CS_DONE,
};

/* The next reply expected inside a transaction, in the order sent. */
enum expect {
	EXP_MAIL,
	EXP_RCPT,		/* for rcpt[c->reply_idx] */
	EXP_DATA,		/* to the DATA command: 354 or a refusal */
	EXP_FINAL,		/* to end of data, or to BDAT LAST */
	EXP_DOT_IGNORED,	/* to an empty message no recipient needs */
	EXP_RSET,
};

enum body_state { BODY_NONE, BODY_PENDING, BODY_TAKEN };

enum rcpt_state {
	RS_PENDING,		/* sent, no reply yet */
	RS_ACCEPTED,		/* RCPT 2xx: awaits the data reply */
	RS_FINAL,
};

/* An outcome kept for the transaction; its text lives in c->pool. */
struct outcome {
	uint16_t code;
	bool local;
	bool status_sent;
	char status[12];
	size_t text_off;
};

struct rcpt_slot {
	uint8_t state;		/* enum rcpt_state */
	bool sent;
	struct outcome res;
};

/* A reply being parsed or a failure: code, status and bounded text. */
struct reply_buf {
	int code;
	bool local;
	bool status_sent;		/* the server wrote the status (not made up) */
	char status[12];
	size_t text_len;
	char text[SMTP_REPLY_TEXT_MAX];
};

/* One host the memo knows; times are unix seconds, 0 = not noted. */
struct memo_host {
	char host[64];
	int64_t plain_until;		/* no optional MAIL/RCPT parameters */
	int64_t no_tls_until;		/* no opportunistic STARTTLS */
	int64_t used;
};

#define MEMO_HOSTS		256
#define MEMO_PLAIN_S		86400
#define MEMO_NO_TLS_S		3600

struct smtp_memo {
	struct memo_host h[MEMO_HOSTS];
	smtp_memo_log_fn *log;
	void *arg;
};

struct smtp_client {
	char *helo;
	size_t helo_len;
	bool want_tls, require_tls, tls_active;
	bool allow_pipe, allow_chunk, allow_8bit, allow_dsn;
	struct smtp_memo *memo;
	char host[64];
	int64_t now;
	bool plain;			/* no optional parameters (memo) */
	bool mail_params;		/* this MAIL carried some */
	bool rcpt_params;		/* some RCPT of this transaction did */

	enum cstate st;
	enum smtp_client_event final_ev;	/* once st == CS_DONE */
	unsigned ext, ext_pending;
	uint64_t size_limit, size_pending;

	/* Reply parser: a partial line, and the reply it belongs to. */
	size_t line_len;
	bool in_reply;
	unsigned reply_lines;
	struct reply_buf cur;
	bool cur_stored;		/* cur's text is in the pool at cur_off */
	size_t cur_off;

	struct reply_buf fail;		/* smtp_client_failure() */

	/* The transaction. */
	struct smtp_txn txn;
	bool txn_open;			/* started, results not all final yet */
	bool pipelined, bdat, mail_ok;
	enum expect exp;
	size_t reply_idx;		/* recipient whose RCPT reply is next */
	size_t n_accepted;
	struct rcpt_slot *rc;
	size_t rc_cap;
	struct strbuf pool;		/* outcome texts, reset per transaction */

	/* The body: how much was handed out, and the dot-stuffer's state. */
	enum body_state body;
	size_t body_off;
	bool bol;			/* next body byte starts a line */
	const char *term;		/* end-of-data bytes still to hand out */
	size_t term_len;

	/*
	 * A reply line that a receive cut: allocated when one first is, so
	 * the thousands of connections that never see one do not carry it.
	 */
	char *line;
};

/* ------------------------------------------------------------------ */
/* The memo of receiving hosts.                                        */

struct smtp_memo *smtp_memo_new(smtp_memo_log_fn *log, void *arg)
{
	struct smtp_memo *m = xcalloc(1, sizeof(*m));

	m->log = log;
	m->arg = arg;
	return m;
}

void smtp_memo_free(struct smtp_memo *m)
{
	free(m);
}

/* memo_get - the host's entry; with create, a new one replaces the LRU. */
static struct memo_host *memo_get(struct smtp_memo *m, const char *host, int64_t now,
				  bool create)
{
	struct memo_host *lru = &m->h[0];

	for (size_t i = 0; i < MEMO_HOSTS; i++) {
		struct memo_host *e = &m->h[i];
		if (e->used && strcmp(e->host, host) == 0) {
			e->used = now ? now : 1;
			return e;
		}
		if (e->used < lru->used)
			lru = e;
	}
	if (!create)
		return NULL;
	memset(lru, 0, sizeof(*lru));
	snprintf(lru->host, sizeof(lru->host), "%s", host);
	lru->used = now ? now : 1;
	return lru;
}

/* memo_note - remember what was learned about this client's host. */
static void memo_note(struct smtp_client *c, bool plain)
{
	if (!c->memo || !c->host[0])
		return;
	struct memo_host *e = memo_get(c->memo, c->host, c->now, true);
	int64_t *until = plain ? &e->plain_until : &e->no_tls_until;
	bool news = *until <= c->now;
	*until = c->now + (plain ? MEMO_PLAIN_S : MEMO_NO_TLS_S);
	if (news && c->memo->log)
		c->memo->log(c->memo->arg, c->host, plain
			     ? "refused our ESMTP parameters: MAIL and RCPT go without them for 1d"
			     : "failed the STARTTLS handshake: plain text for 1h (TLS is not required)");
}

/* ------------------------------------------------------------------ */
/* Small helpers.                                                      */


/* add_xtext - RFC 3461 xtext, which also keeps CR and LF off the wire. */
static void add_xtext(struct strbuf *out, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch < '!' || ch > '~' || ch == '+' || ch == '=') {
			char e[3] = { '+', hex[ch >> 4], hex[ch & 15] };
			sb_add(out, e, 3);
		} else {
			sb_addc(out, (char)ch);
		}
	}
}

/* addr_ok - no control bytes: an address must never inject a command. */
static bool addr_ok(const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch < 0x20 || ch == 0x7f)
			return false;
	}
	return true;
}

/* ieq_n - does a[0..n) equal the upper-case literal, ignoring case? */
static bool ieq_n(const char *a, size_t n, const char *lit)
{
	size_t m = strlen(lit);

	if (n != m)
		return false;
	for (size_t i = 0; i < n; i++) {
		char x = a[i];
		if (x >= 'a' && x <= 'z')
			x = (char)(x - 'a' + 'A');
		if (x != lit[i])
			return false;
	}
	return true;
}

/*
 * parse_status - an RFC 3463 code ("5.1.1", class 2/4/5, then 1-3 and 1-3
 * digits) at s, followed by a space or the end.  Returns the bytes to skip
 * (with the space) and copies the code to st, or 0 if there is none.
 */
static size_t parse_status(const char *s, size_t n, char st[12])
{
	size_t i = 0;

	if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < n && i - start < 4 && s[i] >= '0' && s[i] <= '9')
			i++;
		if (i == start || i - start > 3)
			return 0;
		if (part == 0) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && s[i] != ' ')
		return 0;
	memcpy(st, s, i);
	st[i] = '\0';
	return i < n ? i + 1 : i;
}

/* rb_set - a made-up or copied outcome, text cut to fit. */
static void rb_set(struct reply_buf *rb, int code, const char *status,
		   bool local, const char *text)
{
	size_t n = strlen(text);

	rb->code = code;
	rb->local = local;
	rb->status_sent = local;
	snprintf(rb->status, sizeof(rb->status), "%s", status);
	if (n >= sizeof(rb->text))
		n = sizeof(rb->text) - 1;
	memcpy(rb->text, text, n);
	rb->text[n] = '\0';
	rb->text_len = n;
}

/* rb_append - joined, sanitised text; a reply longer than SMTP_REPLY_TEXT_MAX is cut. */
static void rb_append(struct reply_buf *rb, const char *s, size_t n)
{
	size_t room = sizeof(rb->text) - 1 - rb->text_len;

	if (rb->text_len && room) {
		rb->text[rb->text_len++] = ' ';
		room--;
	}
	if (n > room)
		n = room;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		rb->text[rb->text_len++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	rb->text[rb->text_len] = '\0';
}

/* ------------------------------------------------------------------ */
/* Outcomes.                                                           */

/* pool_add - keep an outcome text for this transaction; returns its offset. */
static size_t pool_add(struct smtp_client *c, const char *text, size_t n)
{
	size_t off = c->pool.len;

	sb_add(&c->pool, text, n);
	sb_addc(&c->pool, '\0');	/* each text is a C string in place */
	return off;
}

/* outcome_of - an outcome from a reply whose text is pooled at off. */
static struct outcome outcome_of(const struct reply_buf *rb, size_t off)
{
	struct outcome o = { .code = (uint16_t)rb->code, .local = rb->local,
			     .status_sent = rb->status_sent, .text_off = off };

	memcpy(o.status, rb->status, sizeof(o.status));
	return o;
}

/* cur_outcome - the reply just parsed, its text pooled once however many
 * recipients share it (a DATA reply applies to all accepted ones). */
static struct outcome cur_outcome(struct smtp_client *c)
{
	if (!c->cur_stored) {
		c->cur_off = pool_add(c, c->cur.text, c->cur.text_len);
		c->cur_stored = true;
	}
	return outcome_of(&c->cur, c->cur_off);
}

/* settle - give every recipient in `which` state the outcome o. */
static void settle(struct smtp_client *c, enum rcpt_state which, struct outcome o)
{
	for (size_t i = 0; i < c->txn.rcpt_count; i++) {
		if (c->rc[i].state == which) {
			c->rc[i].state = RS_FINAL;
			c->rc[i].res = o;
		}
	}
}

/* settle_local - recipient i fails here, without asking the server. */
static void settle_local(struct smtp_client *c, size_t i, int code,
			 const char *status, const char *text)
{
	struct reply_buf rb;

	rb_set(&rb, code, status, true, text);
	c->rc[i].state = RS_FINAL;
	c->rc[i].res = outcome_of(&rb, pool_add(c, rb.text, rb.text_len));
}

/* ------------------------------------------------------------------ */
/* Commands.                                                           */

/* emit - append a command (or its first part) to out. */
static void emit(struct smtp_client *c, struct strbuf *out, const char *s)
{
	/* Commands after body bytes would end up inside the message. */
	BUG_ON(c->body == BODY_PENDING);
	sb_adds(out, s);
}

/* emit_hello - EHLO or HELO; what an earlier EHLO offered is forgotten. */
static void emit_hello(struct smtp_client *c, struct strbuf *out, bool ehlo)
{
	emit(c, out, ehlo ? "EHLO " : "HELO ");
	sb_add(out, c->helo, c->helo_len);
	sb_add(out, "\r\n", 2);
	c->st = ehlo ? CS_EHLO : CS_HELO;
	c->ext_pending = 0;
	c->size_pending = 0;
}

/* dsn_on - DSN parameters go out only if offered and not ignored. */
static bool dsn_on(const struct smtp_client *c)
{
	return c->allow_dsn && (c->ext & SMTP_EXT_DSN);
}

/*
 * emit_mail - MAIL FROM with the parameters the server understands; only
 * SMTPUTF8 (required, not optional) when the host refused the others.
 */
static void emit_mail(struct smtp_client *c, struct strbuf *out)
{
	const struct smtp_txn *t = &c->txn;
	bool opt = !c->plain;

	emit(c, out, "MAIL FROM:<");
	sb_adds(out, t->mail_from);
	sb_addc(out, '>');
	size_t bare = out->len;
	if (opt && (c->ext & SMTP_EXT_SIZE)) {
		sb_add(out, " SIZE=", 6);
		sb_add_u64(out, t->body_len);
	}
	if (opt && t->body_8bit && c->allow_8bit && (c->ext & SMTP_EXT_8BITMIME))
		sb_adds(out, " BODY=8BITMIME");
	c->mail_params = out->len > bare;
	if (t->smtputf8)
		sb_adds(out, " SMTPUTF8");
	if (opt && dsn_on(c)) {
		size_t before = out->len;
		if (t->ret == MAIL_RET_FULL)
			sb_adds(out, " RET=FULL");
		else if (t->ret == MAIL_RET_HDRS)
			sb_adds(out, " RET=HDRS");
		if (t->envid) {
			sb_adds(out, " ENVID=");
			add_xtext(out, t->envid, strlen(t->envid));
		}
		c->mail_params |= out->len > before;
	}
	sb_add(out, "\r\n", 2);
}

/* emit_rcpt - RCPT TO for recipient i, with NOTIFY/ORCPT under DSN. */
static void emit_rcpt(struct smtp_client *c, struct strbuf *out, size_t i)
{
	const struct smtp_rcpt *r = &c->txn.rcpts[i];

	emit(c, out, "RCPT TO:<");
	sb_adds(out, r->addr);
	sb_addc(out, '>');
	size_t bare = out->len;
	if (dsn_on(c) && !c->plain) {
		if (r->notify & MAIL_NOTIFY_NEVER) {
			sb_adds(out, " NOTIFY=NEVER");
		} else if (r->notify) {
			static const struct { unsigned bit; const char *name; } kw[] = {
				{ MAIL_NOTIFY_SUCCESS, "SUCCESS" },
				{ MAIL_NOTIFY_FAILURE, "FAILURE" },
				{ MAIL_NOTIFY_DELAY, "DELAY" },
			};
			char sep = '=';
			sb_adds(out, " NOTIFY");
			for (size_t k = 0; k < ARRAY_SIZE(kw); k++) {
				if (r->notify & kw[k].bit) {
					sb_addc(out, sep);
					sb_adds(out, kw[k].name);
					sep = ',';
				}
			}
		}
		if (r->orcpt) {
			const char *semi = strchr(r->orcpt, ';');
			sb_adds(out, " ORCPT=");
			if (semi) {
				add_xtext(out, r->orcpt, (size_t)(semi - r->orcpt));
				sb_addc(out, ';');
				add_xtext(out, semi + 1, strlen(semi + 1));
			} else {
				sb_adds(out, "rfc822;");
				add_xtext(out, r->orcpt, strlen(r->orcpt));
			}
		}
	}
	c->rcpt_params |= out->len > bare;
	sb_add(out, "\r\n", 2);
	c->rc[i].sent = true;
}

/* emit_rset - end a transaction that did not complete. */
static void emit_rset(struct smtp_client *c, struct strbuf *out)
{
	emit(c, out, "RSET\r\n");
	c->exp = EXP_RSET;
}

/* start_body - BDAT's command goes out now; its bytes follow from the body. */
static void start_body(struct smtp_client *c, struct strbuf *out)
{
	if (c->bdat) {
		emit(c, out, "BDAT ");
		sb_add_u64(out, c->txn.body_len);
		sb_adds(out, " LAST\r\n");
		c->body = c->txn.body_len ? BODY_PENDING : BODY_TAKEN;
	} else {
		c->body = BODY_PENDING;
	}
	c->body_off = 0;
	c->bol = true;
	c->term = NULL;
	c->term_len = 0;
}

/* next_sent - the first recipient at or after i whose RCPT went out. */
static size_t next_sent(const struct smtp_client *c, size_t i)
{
	while (i < c->txn.rcpt_count && !c->rc[i].sent)
		i++;
	return i;
}

/* ------------------------------------------------------------------ */
/* Failure and completion.                                             */

/* phase_text - where we were, for the text of a local failure. */
static const char *phase_text(const struct smtp_client *c)
{
	switch (c->st) {
	case CS_GREETING: return "waiting for greeting";
	case CS_EHLO: return "waiting for reply to EHLO";
	case CS_HELO: return "waiting for reply to HELO";
	case CS_STARTTLS: return "waiting for reply to STARTTLS";
	case CS_TLS: return "in TLS handshake";
	case CS_IDLE: return "idle";
	case CS_QUIT: return "waiting for reply to QUIT";
	case CS_DONE: return "after the end";
	case CS_TXN:
		break;
	}
	if (c->body == BODY_PENDING)
		return "sending message body";
	switch (c->exp) {
	case EXP_MAIL: return "waiting for reply to MAIL FROM";
	case EXP_RCPT: return "waiting for reply to RCPT TO";
	case EXP_DATA: return "waiting for reply to DATA";
	case EXP_FINAL:
		return c->bdat ? "waiting for reply to BDAT" :
				 "waiting for reply to end of data";
	case EXP_DOT_IGNORED: return "waiting for reply to end of data";
	case EXP_RSET: return "waiting for reply to RSET";
	}
	return "?";
}

/*
 * fail - the connection is finished: c->fail already says why.  Recipients
 * still open take that outcome; a courtesy QUIT when the server is still
 * listening and no body is in flight.
 */
static enum smtp_client_event fail(struct smtp_client *c, bool quit, struct strbuf *out)
{
	if (c->txn_open) {
		struct outcome o = outcome_of(&c->fail,
					      pool_add(c, c->fail.text, c->fail.text_len));
		settle(c, RS_PENDING, o);
		settle(c, RS_ACCEPTED, o);
		c->txn_open = false;
	}
	if (quit && out && c->body != BODY_PENDING)
		emit(c, out, "QUIT\r\n");
	c->body = BODY_NONE;
	c->st = CS_DONE;
	c->final_ev = SMTPC_EV_FAILED;
	return SMTPC_EV_FAILED;
}

/* fail_local - fail the connection for a reason of our own. */
static enum smtp_client_event fail_local(struct smtp_client *c, int code,
					 const char *status, const char *text,
					 bool quit, struct strbuf *out)
{
	rb_set(&c->fail, code, status, true, text);
	return fail(c, quit, out);
}

/* fail_reply - fail the connection with the server's reply as the reason. */
static enum smtp_client_event fail_reply(struct smtp_client *c, bool quit,
					 struct strbuf *out)
{
	c->fail = c->cur;
	return fail(c, quit, out);
}

/* proto_fail - the server broke the protocol: transient, never a bounce. */
static enum smtp_client_event proto_fail(struct smtp_client *c, const char *why)
{
	char text[256];

	snprintf(text, sizeof(text), "protocol error: %s while %s", why,
		 phase_text(c));
	return fail_local(c, 451, "4.5.0", text, false, NULL);
}

/* txn_done - every recipient has its outcome; the connection is idle. */
static enum smtp_client_event txn_done(struct smtp_client *c)
{
	for (size_t i = 0; i < c->txn.rcpt_count; i++)
		BUG_ON(c->rc[i].state != RS_FINAL);
	c->txn_open = false;
	c->body = BODY_NONE;
	c->st = CS_IDLE;
	return SMTPC_EV_TXN_DONE;
}

/* ------------------------------------------------------------------ */
/* Replies.                                                            */

/* ehlo_keyword - note one EHLO line's extension ("SIZE 35882577"). */
static void ehlo_keyword(struct smtp_client *c, const char *s, size_t n)
{
	static const struct { const char *kw; unsigned bit; } tab[] = {
		{ "PIPELINING", SMTP_EXT_PIPELINING },
		{ "CHUNKING", SMTP_EXT_CHUNKING },
		{ "8BITMIME", SMTP_EXT_8BITMIME },
		{ "SIZE", SMTP_EXT_SIZE },
		{ "DSN", SMTP_EXT_DSN },
		{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 },
		{ "STARTTLS", SMTP_EXT_STARTTLS },
		{ "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES },
		{ "AUTH", SMTP_EXT_AUTH },
	};
	size_t k = 0;

	while (k < n && s[k] != ' ')
		k++;
	for (size_t i = 0; i < ARRAY_SIZE(tab); i++) {
		if (!ieq_n(s, k, tab[i].kw))
			continue;
		c->ext_pending |= tab[i].bit;
		if (tab[i].bit == SMTP_EXT_SIZE) {
			uint64_t v = 0;
			size_t j = k;
			while (j < n && s[j] == ' ')
				j++;
			for (; j < n && s[j] >= '0' && s[j] <= '9'; j++)
				v = v > UINT64_MAX / 10 - 10 ? UINT64_MAX : v * 10 + (uint64_t)(s[j] - '0');
			c->size_pending = v;
		}
		return;
	}
}

/* after_hello - EHLO or HELO accepted: STARTTLS, or ready. */
static enum smtp_client_event after_hello(struct smtp_client *c, struct strbuf *out)
{
	if (!c->tls_active && c->want_tls && (c->ext & SMTP_EXT_STARTTLS)) {
		emit(c, out, "STARTTLS\r\n");
		c->st = CS_STARTTLS;
		return SMTPC_EV_NONE;
	}
	if (!c->tls_active && c->require_tls)
		return fail_local(c, 454, "4.7.4",
				  "TLS is required, but was not offered by host",
				  true, out);
	c->st = CS_IDLE;
	return SMTPC_EV_READY;
}

/*
 * on_txn_reply - a reply inside a transaction, matched to its command by
 * position: replies come in the order the commands went out (RFC 2920).
 */
/* syntax_refusal - 501/555: the server did not understand our command. */
static bool syntax_refusal(const struct smtp_client *c)
{
	return c->cur.code == 501 || c->cur.code == 555;
}

/*
 * params_refused - a 501/555 to a command with optional parameters: our
 * syntax, never a reason to bounce.  The recipient is deferred with the
 * server's words, and its retry (and all later mail to this host) goes
 * without the parameters.
 */
static struct outcome params_refused(struct smtp_client *c, const char *cmd)
{
	struct reply_buf rb;
	char text[SMTP_REPLY_TEXT_MAX];

	c->plain = true;
	memo_note(c, true);
	snprintf(text, sizeof(text), "%s parameters refused (%d %.*s); retrying without them",
		 cmd, c->cur.code, (int)(c->cur.text_len < 200 ? c->cur.text_len : 200),
		 c->cur.text);
	rb_set(&rb, 451, "4.5.4", true, text);
	return outcome_of(&rb, pool_add(c, rb.text, rb.text_len));
}

static enum smtp_client_event on_txn_reply(struct smtp_client *c, struct strbuf *out)
{
	int cls = c->cur.code / 100;

	if (cls == 3 && c->exp != EXP_DATA)
		return proto_fail(c, "unexpected 3xx reply");
	switch (c->exp) {
	case EXP_MAIL:
		c->mail_ok = cls == 2;
		/* The reason the MAIL failed beats the RCPTs' "503 need MAIL". */
		if (!c->mail_ok)
			settle(c, RS_PENDING, c->mail_params && syntax_refusal(c)
				   ? params_refused(c, "MAIL") : cur_outcome(c));
		c->exp = EXP_RCPT;
		c->reply_idx = next_sent(c, 0);
		if (c->pipelined)
			return SMTPC_EV_NONE;
		if (!c->mail_ok) {
			emit_rset(c, out);
			return SMTPC_EV_NONE;
		}
		BUG_ON(c->reply_idx == c->txn.rcpt_count);
		emit_rcpt(c, out, c->reply_idx);
		return SMTPC_EV_NONE;

	case EXP_RCPT: {
		struct rcpt_slot *r = &c->rc[c->reply_idx];

		if (c->mail_ok) {
			if (cls == 2) {
				r->state = RS_ACCEPTED;
				c->n_accepted++;
			} else {
				r->state = RS_FINAL;
				r->res = c->rcpt_params && syntax_refusal(c)
					 ? params_refused(c, "RCPT") : cur_outcome(c);
			}
		}
		c->reply_idx = next_sent(c, c->reply_idx + 1);
		if (c->reply_idx < c->txn.rcpt_count) {
			if (c->pipelined)
				return SMTPC_EV_NONE;
			emit_rcpt(c, out, c->reply_idx);
			return SMTPC_EV_NONE;
		}
		c->exp = c->bdat ? EXP_FINAL : EXP_DATA;
		if (c->pipelined)
			return SMTPC_EV_NONE;
		if (!c->n_accepted) {
			emit_rset(c, out);
		} else if (c->bdat) {
			start_body(c, out);
		} else {
			emit(c, out, "DATA\r\n");
		}
		return SMTPC_EV_NONE;
	}

	case EXP_DATA:
		if (cls == 3) {
			if (c->n_accepted) {
				start_body(c, out);
				c->exp = EXP_FINAL;
			} else {
				/* A server that said 354 anyway (RFC 2920 §3.1):
				 * end an empty message, then RSET. */
				emit(c, out, ".\r\n");
				c->exp = EXP_DOT_IGNORED;
			}
			return SMTPC_EV_NONE;
		}
		if (cls == 2)
			return proto_fail(c, "2xx reply to DATA");
		settle(c, RS_ACCEPTED, cur_outcome(c));
		emit_rset(c, out);
		return SMTPC_EV_NONE;

	case EXP_FINAL:
		if (c->body == BODY_PENDING) {
			/* The server cannot have read our end of data: out of
			 * step, so what we still send would be read as commands. */
			if (cls == 2)
				return proto_fail(c, "reply before end of data");
			return fail_reply(c, false, out);
		}
		settle(c, RS_ACCEPTED, cur_outcome(c));
		c->body = BODY_NONE;
		if (cls == 2 && c->n_accepted)
			return txn_done(c);
		emit_rset(c, out);
		return SMTPC_EV_NONE;

	case EXP_DOT_IGNORED:
		emit_rset(c, out);
		return SMTPC_EV_NONE;

	case EXP_RSET:
		if (cls != 2)
			return fail_reply(c, false, out);
		return txn_done(c);
	}
	BUG("reply while expecting unknown step %d", (int)c->exp);
	return SMTPC_EV_FAILED;
}

/* on_reply - a complete reply in c->cur: advance the conversation. */
static enum smtp_client_event on_reply(struct smtp_client *c, struct strbuf *out)
{
	int cls = c->cur.code / 100;

	c->cur_stored = false;
	if (c->st == CS_QUIT) {
		c->st = CS_DONE;
		c->final_ev = SMTPC_EV_CLOSED;
		return SMTPC_EV_CLOSED;
	}
	/* 421 is the server closing, whatever we asked (RFC 5321 §3.8). */
	if (c->cur.code == 421)
		return fail_reply(c, false, out);

	switch (c->st) {
	case CS_GREETING:
		if (cls == 2) {
			emit_hello(c, out, true);
			return SMTPC_EV_NONE;
		}
		if (cls == 3)
			return proto_fail(c, "unexpected 3xx reply");
		/* RFC 5321 §3.1: after a 554 greeting the client sends QUIT. */
		return fail_reply(c, true, out);

	case CS_EHLO:
		if (cls == 2) {
			c->ext = c->ext_pending | SMTP_EXT_EHLO;
			c->size_limit = (c->ext & SMTP_EXT_SIZE) ? c->size_pending : 0;
			return after_hello(c, out);
		}
		if (cls == 3)
			return proto_fail(c, "unexpected 3xx reply");
		emit_hello(c, out, false);	/* an old server: try HELO */
		return SMTPC_EV_NONE;

	case CS_HELO:
		if (cls == 2) {
			c->ext = 0;
			c->size_limit = 0;
			return after_hello(c, out);
		}
		if (cls == 3)
			return proto_fail(c, "unexpected 3xx reply");
		return fail_reply(c, true, out);

	case CS_STARTTLS:
		if (cls == 2) {
			c->st = CS_TLS;
			return SMTPC_EV_STARTTLS;
		}
		if (cls == 3)
			return proto_fail(c, "unexpected 3xx reply");
		if (c->require_tls) {
			char text[SMTP_REPLY_TEXT_MAX + 64];
			snprintf(text, sizeof(text),
				 "TLS is required, but host refused STARTTLS: %d %s",
				 c->cur.code, c->cur.text);
			return fail_local(c, 454, "4.7.4", text, true, out);
		}
		c->st = CS_IDLE;	/* opportunistic: carry on in plaintext */
		return SMTPC_EV_READY;

	case CS_IDLE:
		return proto_fail(c, "unexpected reply");

	case CS_TXN:
		return on_txn_reply(c, out);

	case CS_TLS:
	case CS_QUIT:
	case CS_DONE:
		break;
	}
	BUG("unknown client state %d", (int)c->st);
	return SMTPC_EV_FAILED;
}

/* on_line - one reply line without its line ending. */
static enum smtp_client_event on_line(struct smtp_client *c, const char *s, size_t n,
				      struct strbuf *out)
{
	int code;
	char sep;
	size_t skip;

	if (n < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '9' ||
	    s[2] < '0' || s[2] > '9')
		return proto_fail(c, "malformed reply");
	code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	sep = n > 3 ? s[3] : ' ';
	if (sep != ' ' && sep != '-')
		return proto_fail(c, "malformed reply");
	s += n > 3 ? 4 : 3;
	n -= n > 3 ? 4 : 3;

	if (!c->in_reply) {
		c->in_reply = true;
		c->reply_lines = 0;
		c->cur.code = code;
		c->cur.local = false;
		c->cur.text_len = 0;
		c->cur.text[0] = '\0';
		skip = parse_status(s, n, c->cur.status);
		c->cur.status_sent = skip != 0;
		if (skip)
			c->cur.status[0] = (char)('0' + code / 100);
		else
			snprintf(c->cur.status, sizeof(c->cur.status), "%d.0.0", code / 100);
	} else {
		if (code != c->cur.code)
			return proto_fail(c, "inconsistent multi-line reply");
		if (c->st == CS_EHLO && code == 250)
			ehlo_keyword(c, s, n);
		char tmp[12];
		skip = parse_status(s, n, tmp);
	}
	if (++c->reply_lines > REPLY_LINES_MAX)
		return proto_fail(c, "reply too long");
	rb_append(&c->cur, s + skip, n - skip);
	if (sep == '-')
		return SMTPC_EV_NONE;
	c->in_reply = false;
	return on_reply(c, out);
}

/* smtp_client_input - see smtp_client.h. */
enum smtp_client_event smtp_client_input(struct smtp_client *c, const char *buf,
					 size_t len, size_t *consumed,
					 struct strbuf *out)
{
	enum smtp_client_event ev = SMTPC_EV_NONE;
	size_t off = 0;

	if (c->st == CS_DONE) {
		*consumed = len;
		return c->final_ev;
	}
	/* Plaintext during the handshake: the driver lost track of TLS. */
	BUG_ON(c->st == CS_TLS);
	while (off < len && ev == SMTPC_EV_NONE) {
		const char *nl = memchr(buf + off, '\n', len - off);
		size_t n = nl ? (size_t)(nl - (buf + off)) + 1 : len - off;
		const char *line;
		size_t ll;

		if (c->line_len + n > LINE_CAP) {
			off = len;
			ev = proto_fail(c, "reply line too long");
			break;
		}
		if (!nl) {
			if (!c->line)
				c->line = xmalloc(LINE_CAP);
			memcpy(c->line + c->line_len, buf + off, n);
			c->line_len += n;
			off += n;
			break;
		}
		if (c->line_len) {
			memcpy(c->line + c->line_len, buf + off, n);
			line = c->line;
			ll = c->line_len + n;
		} else {
			line = buf + off;	/* whole line in buf: no copy */
			ll = n;
		}
		off += n;
		c->line_len = 0;
		ll--;			/* the LF */
		if (ll && line[ll - 1] == '\r')
			ll--;
		ev = on_line(c, line, ll, out);
	}
	/* Bytes after the 220 were sent before TLS but would be read as if
	 * protected (STARTTLS response injection): refuse them. */
	if (ev == SMTPC_EV_STARTTLS && off < len) {
		c->st = CS_STARTTLS;
		ev = proto_fail(c, "data after STARTTLS reply");
	}
	if (ev == SMTPC_EV_FAILED || ev == SMTPC_EV_CLOSED)
		off = len;
	*consumed = off;
	return ev;
}

/* ------------------------------------------------------------------ */
/* Transactions and the body.                                          */

/* start_local - a transaction decided without the server. */
static enum smtp_client_event start_local(struct smtp_client *c, int code,
					  const char *status, const char *text)
{
	for (size_t i = 0; i < c->txn.rcpt_count; i++)
		if (c->rc[i].state != RS_FINAL)
			settle_local(c, i, code, status, text);
	c->txn_open = false;
	return SMTPC_EV_TXN_DONE;
}

/* smtp_client_start - see smtp_client.h. */
enum smtp_client_event smtp_client_start(struct smtp_client *c,
					 const struct smtp_txn *txn,
					 struct strbuf *out)
{
	size_t valid = 0;

	BUG_ON(c->st != CS_IDLE);
	BUG_ON(!txn->mail_from || !txn->rcpts || !txn->rcpt_count);
	BUG_ON(txn->body_len && !txn->body);
	c->txn = *txn;
	if (txn->rcpt_count > c->rc_cap) {
		c->rc_cap = txn->rcpt_count;
		c->rc = xrealloc(c->rc, c->rc_cap * sizeof(*c->rc));
	}
	sb_reset(&c->pool);
	c->body = BODY_NONE;
	c->txn_open = true;
	c->mail_ok = false;
	c->mail_params = c->rcpt_params = false;
	c->n_accepted = 0;
	for (size_t i = 0; i < txn->rcpt_count; i++) {
		c->rc[i].state = RS_PENDING;
		c->rc[i].sent = false;
	}

	if (!addr_ok(txn->mail_from))
		return start_local(c, 553, "5.1.7", "invalid sender address");
	if (txn->smtputf8 && !(c->ext & SMTP_EXT_SMTPUTF8))
		return start_local(c, 554, "5.6.7",
				   "SMTPUTF8 is required, but was not offered by host");
	if (c->size_limit && txn->body_len > c->size_limit)
		return start_local(c, 552, "5.3.4",
				   "message size exceeds fixed maximum message size");
	for (size_t i = 0; i < txn->rcpt_count; i++) {
		if (!txn->rcpts[i].addr || !addr_ok(txn->rcpts[i].addr))
			settle_local(c, i, 553, "5.1.3", "invalid recipient address");
		else
			valid++;
	}
	if (!valid)
		return start_local(c, 553, "5.1.3", "invalid recipient address");

	c->pipelined = c->allow_pipe && (c->ext & SMTP_EXT_PIPELINING);
	c->bdat = c->allow_chunk && (c->ext & SMTP_EXT_CHUNKING);
	c->st = CS_TXN;
	c->exp = EXP_MAIL;
	emit_mail(c, out);
	if (c->pipelined) {
		for (size_t i = 0; i < txn->rcpt_count; i++)
			if (c->rc[i].state == RS_PENDING)
				emit_rcpt(c, out, i);
		if (c->bdat)
			start_body(c, out);	/* one round trip per message */
		else
			emit(c, out, "DATA\r\n");
	} else {
		/* Lock step: each RCPT goes out after the previous reply;
		 * mark now which will, so replies map to recipients. */
		for (size_t i = 0; i < txn->rcpt_count; i++)
			c->rc[i].sent = c->rc[i].state == RS_PENDING;
	}
	return SMTPC_EV_NONE;
}

/* stuff - dot-stuff the body (RFC 5321 §4.5.2) into dst[0..cap). */
static size_t stuff(struct smtp_client *c, char *dst, size_t cap)
{
	const char *b = c->txn.body;
	size_t len = c->txn.body_len, o = 0;

	while (o < cap && c->body_off < len) {
		if (c->bol && b[c->body_off] == '.') {
			dst[o++] = '.';
			c->bol = false;	/* the body's own dot follows */
			continue;
		}
		size_t run = len - c->body_off;
		if (run > cap - o)
			run = cap - o;
		const char *nl = memchr(b + c->body_off, '\n', run);
		if (nl) {
			run = (size_t)(nl - (b + c->body_off)) + 1;
			c->bol = true;	/* LF alone too: servers may take it */
		} else {
			c->bol = false;
		}
		memcpy(dst + o, b + c->body_off, run);
		o += run;
		c->body_off += run;
	}
	if (c->body_off == len && !c->term) {
		bool crlf = len >= 2 && b[len - 2] == '\r' && b[len - 1] == '\n';
		c->term = (len == 0 || crlf) ? ".\r\n" : "\r\n.\r\n";
		c->term_len = strlen(c->term);
	}
	if (c->term) {
		size_t n = c->term_len < cap - o ? c->term_len : cap - o;
		memcpy(dst + o, c->term, n);
		o += n;
		c->term += n;
		c->term_len -= n;
		if (!c->term_len)
			c->body = BODY_TAKEN;
	}
	return o;
}

size_t smtp_client_body_taken(const struct smtp_client *c)
{
	return c->body_off;
}

/* smtp_client_body - see smtp_client.h. */
size_t smtp_client_body(struct smtp_client *c, char *scratch, size_t cap,
			const char **data)
{
	size_t n;

	*data = NULL;
	if (c->body != BODY_PENDING || !cap)
		return 0;
	if (c->bdat) {
		n = c->txn.body_len - c->body_off;
		if (n > cap)
			n = cap;
		*data = c->txn.body + c->body_off;
		c->body_off += n;
		if (c->body_off == c->txn.body_len)
			c->body = BODY_TAKEN;
		return n;
	}
	BUG_ON(!scratch);
	*data = scratch;
	return stuff(c, scratch, cap);
}

/* ------------------------------------------------------------------ */
/* Life cycle and the rest of the API.                                 */

/* smtp_client_reset - see smtp_client.h; keeps the grown buffers. */
void smtp_client_reset(struct smtp_client *c, const struct smtp_client_params *p)
{
	BUG_ON(!p->helo_name || strpbrk(p->helo_name, "\r\n"));
	free(c->helo);
	c->helo = xstrdup(p->helo_name);
	c->helo_len = strlen(c->helo);
	c->want_tls = p->want_starttls || p->require_starttls;
	c->require_tls = p->require_starttls;
	c->tls_active = p->tls_active;
	c->allow_pipe = p->allow_pipelining;
	c->allow_chunk = p->allow_chunking;
	c->allow_8bit = p->allow_8bitmime;
	c->allow_dsn = p->allow_dsn;
	c->memo = p->memo;
	c->now = p->now;
	c->plain = false;
	snprintf(c->host, sizeof(c->host), "%s", p->host ? p->host : "");
	if (c->memo && c->host[0]) {
		const struct memo_host *e = memo_get(c->memo, c->host, c->now, false);
		c->plain = e && e->plain_until > c->now;
		if (e && e->no_tls_until > c->now && !c->require_tls)
			c->want_tls = false;
	}
	c->st = CS_GREETING;
	c->final_ev = SMTPC_EV_NONE;
	c->ext = c->ext_pending = 0;
	c->size_limit = c->size_pending = 0;
	c->line_len = 0;
	c->in_reply = false;
	c->cur_stored = false;
	memset(&c->txn, 0, sizeof(c->txn));
	c->txn_open = false;
	c->body = BODY_NONE;
	sb_reset(&c->pool);
	rb_set(&c->fail, 0, "", true, "");
}

/* smtp_client_new - see smtp_client.h. */
struct smtp_client *smtp_client_new(const struct smtp_client_params *p)
{
	struct smtp_client *c = xcalloc(1, sizeof(*c));

	smtp_client_reset(c, p);
	return c;
}

/* smtp_client_free - see smtp_client.h; tolerates NULL. */
void smtp_client_free(struct smtp_client *c)
{
	if (!c)
		return;
	free(c->helo);
	free(c->rc);
	free(c->line);
	sb_free(&c->pool);
	free(c);
}

/* smtp_client_tls_started - see smtp_client.h. */
void smtp_client_tls_started(struct smtp_client *c, struct strbuf *out)
{
	BUG_ON(c->st != CS_TLS);
	c->tls_active = true;
	/* What the server said before TLS may have been forged: forget it. */
	c->ext = 0;
	c->size_limit = 0;
	emit_hello(c, out, true);
}

/* smtp_client_quit - see smtp_client.h. */
void smtp_client_quit(struct smtp_client *c, struct strbuf *out)
{
	BUG_ON(c->st != CS_IDLE);
	emit(c, out, "QUIT\r\n");
	c->st = CS_QUIT;
}

/* smtp_client_abort - see smtp_client.h. */
enum smtp_client_event smtp_client_abort(struct smtp_client *c,
					 enum smtp_client_abort why)
{
	char text[128];

	if (c->st == CS_DONE)
		return c->final_ev;
	if (c->st == CS_QUIT) {
		c->st = CS_DONE;
		c->final_ev = SMTPC_EV_CLOSED;
		return SMTPC_EV_CLOSED;
	}
	/* opportunistic TLS that cannot be had: plain text next time */
	if (c->st == CS_TLS && !c->require_tls)
		memo_note(c, false);
	switch (why) {
	case SMTPC_ABORT_EOF:
		snprintf(text, sizeof(text), "connection closed by host while %s",
			 phase_text(c));
		return fail_local(c, 451, "4.4.2", text, false, NULL);
	case SMTPC_ABORT_TIMEOUT:
		snprintf(text, sizeof(text), "timeout %s", phase_text(c));
		return fail_local(c, 451, "4.4.2", text, false, NULL);
	case SMTPC_ABORT_IO:
		snprintf(text, sizeof(text), "I/O error while %s", phase_text(c));
		return fail_local(c, 451, "4.4.2", text, false, NULL);
	case SMTPC_ABORT_TLS:
		snprintf(text, sizeof(text), "TLS failure while %s", phase_text(c));
		return fail_local(c, 454, "4.7.5", text, false, NULL);
	}
	BUG("unknown abort reason %d", (int)why);
	return SMTPC_EV_FAILED;
}

/* smtp_client_result - see smtp_client.h. */
void smtp_client_result(const struct smtp_client *c, size_t i, struct smtp_reply *r)
{
	const struct rcpt_slot *s;

	BUG_ON(i >= c->txn.rcpt_count);
	s = &c->rc[i];
	BUG_ON(s->state != RS_FINAL);
	r->code = s->res.code;
	memcpy(r->status, s->res.status, sizeof(r->status));
	r->local = s->res.local;
	r->status_sent = s->res.status_sent;
	r->text = c->pool.buf + s->res.text_off;
}

/* smtp_client_failure - see smtp_client.h. */
void smtp_client_failure(const struct smtp_client *c, struct smtp_reply *r)
{
	r->code = c->fail.code;
	memcpy(r->status, c->fail.status, sizeof(r->status));
	r->local = c->fail.local;
	r->status_sent = c->fail.status_sent;
	r->text = c->fail.text;
}

/* smtp_client_phase - see smtp_client.h. */
enum smtp_client_phase smtp_client_phase(const struct smtp_client *c)
{
	switch (c->st) {
	case CS_GREETING:
		return SMTPC_PHASE_GREETING;
	case CS_EHLO:
	case CS_HELO:
	case CS_STARTTLS:
	case CS_QUIT:
		return SMTPC_PHASE_COMMAND;
	case CS_TLS:
		return SMTPC_PHASE_TLS;
	case CS_IDLE:
		return SMTPC_PHASE_IDLE;
	case CS_TXN:
		if (c->body == BODY_PENDING)
			return SMTPC_PHASE_BODY;
		if (c->body == BODY_TAKEN)
			return SMTPC_PHASE_DATA_END;
		return SMTPC_PHASE_COMMAND;
	case CS_DONE:
		return SMTPC_PHASE_DONE;
	}
	BUG("unknown client state %d", (int)c->st);
	return SMTPC_PHASE_DONE;
}

/* smtp_client_extensions - see smtp_client.h. */
unsigned smtp_client_extensions(const struct smtp_client *c)
{
	return c->ext;
}

/* smtp_client_size_limit - see smtp_client.h. */
uint64_t smtp_client_size_limit(const struct smtp_client *c)
{
	return c->size_limit;
}
