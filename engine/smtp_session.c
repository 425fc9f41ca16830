/*
 * engine/smtp_session.c - the SMTP server protocol engine: command parsing,
 * the transaction state, DATA/BDAT content, AUTH, and the header work done
 * on a finished message (Received:, Message-ID:, Date:, control headers).
 *
 * Owns: a struct smtp_session and everything hanging off it, including
 * the message buffer until the driver takes it.  Thread: the one intake
 * thread that owns the session.  No I/O; see smtp_session.h.
 *
 * Hot-path shape: complete command lines are parsed in place from the
 * driver's buffer; only a line split across two reads is copied.  DATA
 * content is checked with memchr and copied once, in runs that end only
 * at a line starting with a dot, into the message buffer, which starts
 * with HEADROOM spare octets so that the added headers go in front
 * without moving the body.  Envelope strings
 * live in one per-session pool that is reset, not freed, per transaction.
 */
#include <arpa/inet.h>
#include <crypt.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "config/config.h"
#include "util/util.h"
#include "engine/smtp_session.h"

/* Spare octets before the body for the headers the session adds. */
#define HEADROOM		2048
/* Initial body allocation when SIZE= did not say better. */
#define BODY_INITIAL		(16 * 1024)
/* Never preallocate more than this on the client's word (SIZE=). */
#define BODY_PREALLOC_MAX	(32u * 1024 * 1024)
/* An idle session does not keep a larger buffer than this. */
#define BODY_KEEP_MAX		(1024 * 1024)
/* A streamed message keeps this much of an unfinished header section. */
#define HEADER_KEEP_MAX		(1024 * 1024)
/* Longest header value kept from a control header. */
#define HEADER_VALUE_MAX	998
/* Longest user name accepted by AUTH. */
#define AUTH_USER_MAX		255
/*
 * NOOP, RSET, VRFY, EXPN and HELP allowed without a message accepted in
 * between; each one past this counts as an error (Postfix's
 * smtpd_junk_command_limit): a client that only talks is cut off at last.
 */
#define JUNK_LIMIT		100
/*
 * Recipients per message when neither the source nor the driver set a
 * limit: the envelope pool (32-bit offsets) must stay bounded.
 */
#define RCPT_CEILING		100000
/* RFC 3461 4.4: ENVID is at most 100 characters. */
#define ENVID_MAX		100

#define NO_STR			UINT32_MAX

enum state {
	ST_CMD,
	ST_AUTH_PLAIN,		/* waiting for the PLAIN response */
	ST_AUTH_LOGIN_USER,	/* waiting for the LOGIN user name */
	ST_AUTH_LOGIN_PASS,	/* waiting for the LOGIN password */
	ST_DATA,
	ST_BDAT,
	ST_WAIT_RESULT,		/* SMTP_EV_MESSAGE returned, no result yet */
	ST_CLOSED,
};

/* Where the content scanner is within a text line. */
enum lstate {
	L_BOL,			/* at the start of a line */
	L_MID,			/* inside a line */
	L_CR,			/* inside a line, the last octet was CR */
	L_DOT,			/* DATA: a dot at the start of a line */
	L_DOTCR,		/* DATA: ".<CR>" at the start of a line */
};

/* What is wrong with the content of a message. */
enum {
	CE_SIZE = 1 << 0,
	CE_BARE_LF = 1 << 1,
	CE_BARE_CR = 1 << 2,
	CE_NUL = 1 << 3,
	CE_LONG = 1 << 4,
	CE_MEM = 1 << 5,	/* the driver's memory budget refused it */
	CE_SPILL = 1 << 6,	/* the driver could not store streamed data */
};

struct rcpt_rec {
	uint32_t addr;
	uint32_t orcpt;
	uint32_t orcpt_addr;
	uint32_t notify;
};

struct smtp_session {
	const struct cfg *cfg;
	const struct cfg_source *src;	/* in force now (changes after AUTH) */
	const struct cfg_source *src0;	/* from the driver, before AUTH */
	smtp_reject_fn *reject;
	void *reject_arg;
	bool (*auth_limit)(void *, const struct sockaddr *, const struct cfg_rate *, bool);
	void *auth_arg;
	bool (*storage)(void *, uint64_t);
	void *storage_arg;
	bool (*memory)(void *, int64_t);
	void *memory_arg;
	int (*spill)(void *arg, const void *p, size_t n);
	void *spill_arg;
	size_t spill_window;
	const char *(*rcpt_check)(void *, const struct cfg_source *, const char *,
				  const char *);
	void *rcpt_arg;
	uint64_t hard_max_size;
	uint32_t hard_max_rcpt;
	uint64_t conn_id;
	bool have_peer;
	bool tls_available;
	bool tls_active;
	struct sockaddr_storage peer;
	char client_ip[INET6_ADDRSTRLEN];
	char ip_literal[INET6_ADDRSTRLEN + 8];	/* "[192.0.2.1]", "[IPv6:..]" */
	char hostname[256];

	enum state st;
	struct strbuf line;		/* a command line split across reads */
	bool discarding;		/* dropping a too long line up to LF */

	bool helo_seen;
	bool greeted;			/* helo_seen, not reset by STARTTLS */
	bool esmtp;
	struct strbuf helo;
	bool authed;
	struct strbuf auth_user;
	struct strbuf auth_tmp;		/* LOGIN user name between steps */
	unsigned errors;
	unsigned junk;			/* see JUNK_LIMIT */
	unsigned auth_failures;
	uint32_t msg_seq;

	/* The transaction. */
	bool have_mail;
	struct strbuf pool;		/* its strings, by offset */
	uint32_t mail_from;
	uint32_t envid;
	uint64_t size_param;
	enum mail_body body_type;
	enum mail_ret ret;
	bool smtputf8;
	struct rcpt_rec *rcpts;
	size_t nrcpt, cap_rcpt;
	size_t rcpt_attempts;
	bool too_many;
	bool bdat_started;

	/* The content: body[body_off, body_off + body_len). */
	char *body;
	size_t body_off, body_len, body_cap;
	uint64_t data_bytes;		/* counted even when no longer stored */
	/*
	 * Streaming: past spill_window the message is body[0, keep) in
	 * memory (the header section), then `spilled` octets at the driver,
	 * then body[keep, body_len), a window not passed on yet.
	 */
	size_t keep;			/* SIZE_MAX: everything is in memory */
	uint64_t spilled;
	bool hdr_cut;			/* spilling began inside the headers */
	size_t hdr_end;			/* SIZE_MAX: the empty line not seen yet */
	size_t hdr_scanned;
	enum lstate ls;
	size_t line_len;		/* octets of the current text line */
	unsigned content_err;		/* CE_* */
	uint64_t bdat_left;
	bool bdat_last;
	const char *bdat_err;		/* reply after the chunk, or NULL */

	/* The message handed to the driver. */
	struct smtp_message msg;
	struct smtp_rcpt *pub;
	size_t cap_pub;

	struct strbuf scratch;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

/*
 * mem_ok - the message buffer grows (delta > 0) or shrinks by delta: the
 * driver's budget for data in flight across its sessions.  A growth it
 * refuses is not made (and not counted); a shrink is always counted.
 */
static bool mem_ok(struct smtp_session *s, int64_t delta)
{
	return !s->memory || s->memory(s->memory_arg, delta) || delta <= 0;
}

/* body_drop - free the message buffer (counted back). */
static void body_drop(struct smtp_session *s)
{
	if (s->body)
		mem_ok(s, -(int64_t)s->body_cap);
	free(s->body);
	s->body = NULL;
	s->body_cap = 0;
}

static uint64_t min_nonzero(uint64_t a, uint64_t b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	return a < b ? a : b;
}

/* size_limit - the message size in force, 0 = none. */
static uint64_t size_limit(const struct smtp_session *s)
{
	return min_nonzero(s->src->max_message_size, s->hard_max_size);
}

static uint64_t rcpt_limit(const struct smtp_session *s)
{
	return min_nonzero(min_nonzero(s->src->max_rcpt_per_message,
				       s->hard_max_rcpt), RCPT_CEILING);
}

/* ieq - case-insensitive compare of a counted string with a C string. */
static bool ieq(const char *a, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

static const char *skip_sp(const char *p, const char *end)
{
	while (p < end && *p == ' ')
		p++;
	return p;
}

/* parse_u64 - all digits, no overflow. */
static int parse_u64(const char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > 20)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		unsigned d = (unsigned)(p[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* pool_add - copy n octets into the transaction pool; returns the offset. */
static uint32_t pool_add(struct smtp_session *s, const char *p, size_t n)
{
	uint32_t off = (uint32_t)s->pool.len;

	sb_add(&s->pool, p, n);
	sb_addc(&s->pool, '\0');
	return off;
}

static const char *pool_str(const struct smtp_session *s, uint32_t off)
{
	return off == NO_STR ? NULL : s->pool.buf + off;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * pool_add_xtext - decode RFC 3461 xtext into the pool.  Returns the
 * offset, or NO_STR when it is not xtext, decodes to a control character
 * or is longer than max decoded octets.
 */
static uint32_t pool_add_xtext(struct smtp_session *s, const char *p, size_t n,
			       size_t max)
{
	size_t start = s->pool.len, outn = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '+') {
			if (i + 2 >= n)
				goto bad;
			int hi = hexval(p[i + 1]), lo = hexval(p[i + 2]);
			if (hi < 0 || lo < 0)
				goto bad;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
			if (c < 0x20 || c == 0x7f)
				goto bad;
		} else if (c < 33 || c > 126 || c == '=') {
			goto bad;
		}
		if (++outn > max)
			goto bad;
		sb_addc(&s->pool, (char)c);
	}
	sb_addc(&s->pool, '\0');
	return (uint32_t)start;
bad:
	s->pool.len = start;
	if (s->pool.buf)
		s->pool.buf[start] = '\0';
	return NO_STR;
}

/* utf8_valid - well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF). */
static bool utf8_valid(const unsigned char *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = p[i];
		size_t len;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return false;
		i += len;
	}
	return true;
}

static bool is_atext(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return true;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
}

/*
 * check_mailbox - is a[0..n) a usable Local-part@Domain?  Returns 0 and
 * the domain's offset, -1 for bad syntax, -2 for non-ASCII without
 * SMTPUTF8 (RFC 6531 3.5).  Lenient where real injectors are sloppy (dots
 * anywhere in the local part, '_' in domains), strict on what could break
 * a header, a log line or a downstream parser (controls, bad UTF-8).
 */
static int check_mailbox(const char *a, size_t n, bool utf8, size_t *domain)
{
	const unsigned char *u = (const unsigned char *)a;
	bool high = false;
	size_t i = 0;

	for (size_t k = 0; k < n; k++) {
		if (u[k] < 0x20 || u[k] == 0x7f)
			return -1;
		if (u[k] >= 0x80)
			high = true;
	}
	if (high) {
		if (!utf8)
			return -2;
		if (!utf8_valid(u, n))
			return -1;
	}
	if (n && u[0] == '"') {
		for (i = 1; i < n && u[i] != '"'; i++)
			if (u[i] == '\\')
				i++;
		if (i >= n)
			return -1;
		i++;
		if (i == 2)
			return -1;		/* "" is no local part */
	} else {
		while (i < n && (is_atext(u[i]) || u[i] >= 0x80))
			i++;
		if (i == 0)
			return -1;
	}
	if (i >= n || u[i] != '@')
		return -1;
	i++;
	*domain = i;
	size_t dn = n - i;
	if (dn == 0 || dn > 255)
		return -1;
	if (u[i] == '[') {
		if (u[n - 1] != ']' || dn < 3)
			return -1;
		for (size_t k = i + 1; k < n - 1; k++)
			if (u[k] <= 32 || u[k] >= 127 || u[k] == '[' ||
			    u[k] == ']' || u[k] == '\\')
				return -1;
		return 0;
	}
	bool label_empty = true;
	for (size_t k = i; k < n; k++) {
		unsigned char c = u[k];
		if (c == '.') {
			if (label_empty)
				return -1;
			label_empty = true;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			   (c >= '0' && c <= '9') || c == '-' || c == '_' ||
			   c >= 0x80) {
			label_empty = false;
		} else {
			return -1;
		}
	}
	return label_empty ? -1 : 0;
}

/*
 * parse_path - "<[@route:]mailbox>" (or, leniently, a bare mailbox) at
 * *pp, after optional spaces.  Sets the address span without brackets and
 * advances *pp to what follows (end or a space).  -1 on bad syntax.
 */
static int parse_path(const char **pp, const char *end, const char **a,
		      size_t *alen)
{
	const char *p = skip_sp(*pp, end), *start;

	if (p < end && *p == '<') {
		p++;
		if (p < end && *p == '@') {	/* RFC 5321 4.1.2 source route */
			const char *c = memchr(p, ':', (size_t)(end - p));
			if (!c)
				return -1;
			p = c + 1;
		}
		start = p;
		bool quoted = false;
		for (; p < end; p++) {
			if (quoted) {
				if (*p == '\\' && p + 1 < end)
					p++;
				else if (*p == '"')
					quoted = false;
			} else if (*p == '"') {
				quoted = true;
			} else if (*p == '>') {
				break;
			}
		}
		if (p >= end)
			return -1;
		*a = start;
		*alen = (size_t)(p - start);
		p++;
	} else {
		start = p;
		while (p < end && *p != ' ')
			p++;
		if (p == start)
			return -1;
		*a = start;
		*alen = (size_t)(p - start);
	}
	if (p < end && *p != ' ')
		return -1;
	*pp = p;
	return 0;
}

/* next_param - the next "KEYWORD[=value]" after spaces; false at the end. */
static bool next_param(const char **pp, const char *end, const char **k,
		       size_t *klen, const char **v, size_t *vlen, bool *has_v)
{
	const char *p = skip_sp(*pp, end);

	if (p == end)
		return false;
	*k = p;
	while (p < end && *p != ' ' && *p != '=')
		p++;
	*klen = (size_t)(p - *k);
	*has_v = false;
	*v = p;
	*vlen = 0;
	if (p < end && *p == '=') {
		*has_v = true;
		*v = ++p;
		while (p < end && *p != ' ')
			p++;
		*vlen = (size_t)(p - *v);
	}
	*pp = p;
	return true;
}

/* domain_match - relay-domain pattern: name, *.name, [*.]name or *. */
static bool domain_match(const char *pat, const char *d, size_t dn)
{
	size_t pn = strlen(pat);
	bool sub = false, self = true;

	if (pn && pat[pn - 1] == '.')
		pn--;
	if (dn && d[dn - 1] == '.')
		dn--;
	if (pn == 1 && pat[0] == '*')
		return true;
	if (pn > 4 && strncmp(pat, "[*.]", 4) == 0) {
		pat += 4;
		pn -= 4;
		sub = true;
	} else if (pn > 2 && strncmp(pat, "*.", 2) == 0) {
		pat += 2;
		pn -= 2;
		sub = true;
		self = false;
	}
	if (self && dn == pn && strncasecmp(d, pat, pn) == 0)
		return true;
	return sub && dn > pn && d[dn - pn - 1] == '.' &&
	       strncasecmp(d + dn - pn, pat, pn) == 0;
}

/*
 * relay_allowed - may this client send to addr?  Outbound MTA policy:
 * only sources that are allowed to relay, and the domains and addresses
 * the operator lists (host-name included), get mail in.
 */
static bool relay_allowed(const struct smtp_session *s, const char *addr,
			  size_t alen, size_t dom)
{
	const struct cfg_global *g = cfg_global(s->cfg);
	const char *d = addr + dom;
	size_t dn = alen - dom;

	if (s->src->always_allow_relaying)
		return true;
	if (g->host_name && g->host_name[0] != '*' && g->host_name[0] != '[' &&
	    domain_match(g->host_name, d, dn))
		return true;
	for (size_t i = 0; i < g->relay_domains.count; i++)
		if (domain_match(g->relay_domains.items[i], d, dn))
			return true;
	for (size_t i = 0; i < g->relay_addresses.count; i++)
		if (g->relay_addresses.items[i][0] != '/' &&
		    ieq(addr, alen, g->relay_addresses.items[i]))
			return true;
	for (size_t i = 0; i < g->relay_address_re_count; i++)
		if (cfg_regex_match(g->relay_address_res[i], addr, alen) == 1)
			return true;
	return false;
}

/* ------------------------------------------------------------------ */
/* Replies                                                              */

static void add_line(struct strbuf *out, const char *line)
{
	sb_adds(out, line);
	sb_add(out, "\r\n", 2);
}

static void report(struct smtp_session *s, enum smtp_reject_kind kind,
		   const char *line, const char *rcpt)
{
	if (!s->reject)
		return;
	struct smtp_reject r = {
		.kind = kind,
		.code = atoi(line),
		.reply = line,
		.client_ip = s->client_ip,
		.helo = s->helo_seen ? sb_str(&s->helo) : NULL,
		.auth_user = s->authed ? sb_str(&s->auth_user) : NULL,
		.mail_from = s->have_mail ? pool_str(s, s->mail_from) : NULL,
		.rcpt = rcpt,
	};
	s->reject(s->reject_arg, &r);
}

/* close_421 - end the session with "421 <enh> <host> <text>" (RFC 5321 3.8). */
static enum smtp_event close_421(struct smtp_session *s, struct strbuf *out,
				 const char *enh, const char *text)
{
	sb_reset(&s->scratch);
	sb_printf(&s->scratch, "421 %s %s %s", enh, s->hostname, text);
	add_line(out, s->scratch.buf);
	report(s, SMTP_REJECT_CONNECTION, s->scratch.buf, NULL);
	s->st = ST_CLOSED;
	return SMTP_EV_CLOSE;
}

/*
 * fail - send an error reply and report it.  A protocol error (counted)
 * brings the session closer to its 421: a client that keeps sending
 * garbage is either broken or probing.
 */
static enum smtp_event fail(struct smtp_session *s, struct strbuf *out,
			    enum smtp_reject_kind kind, bool counted,
			    const char *line, const char *rcpt)
{
	add_line(out, line);
	report(s, kind, line, rcpt);
	if (counted && ++s->errors >= SMTP_SESSION_MAX_ERRORS)
		return close_421(s, out, "4.7.0", "Error: too many errors");
	return SMTP_EV_NONE;
}

static enum smtp_event proto_error(struct smtp_session *s, struct strbuf *out,
				   const char *line)
{
	return fail(s, out, SMTP_REJECT_COMMAND, true, line, NULL);
}

/* RFC 1870 6.1 / RFC 3463: the spool cannot take it now; try later. */
#define STORAGE_REPLY	"452 4.3.1 Error: insufficient system storage"

static bool storage_ok(const struct smtp_session *s)
{
	return !s->storage || s->storage(s->storage_arg, s->size_param);
}

/* junk - a command that moves no mail was answered; see JUNK_LIMIT. */
static enum smtp_event junk(struct smtp_session *s, struct strbuf *out)
{
	if (++s->junk > JUNK_LIMIT && ++s->errors >= SMTP_SESSION_MAX_ERRORS)
		return close_421(s, out, "4.7.0", "Error: too many errors");
	return SMTP_EV_NONE;
}

/* ------------------------------------------------------------------ */
/* Transaction and message buffer                                       */

static void spill_forget(struct smtp_session *s);

static void reset_transaction(struct smtp_session *s)
{
	s->have_mail = false;
	sb_reset(&s->pool);
	s->mail_from = NO_STR;
	s->envid = NO_STR;
	s->size_param = 0;
	s->body_type = MAIL_BODY_NONE;
	s->ret = MAIL_RET_NONE;
	s->smtputf8 = false;
	s->nrcpt = 0;
	s->rcpt_attempts = 0;
	s->too_many = false;
	s->bdat_started = false;
	s->bdat_err = NULL;
	s->data_bytes = 0;
	s->content_err = 0;
	s->body_len = 0;
	s->body_off = HEADROOM;
	spill_forget(s);
	memset(&s->msg, 0, sizeof(s->msg));
	if (s->body && s->body_cap > BODY_KEEP_MAX)
		body_drop(s);
}

/*
 * headers_ended - the header section is complete in the buffer: hdr_end
 * is just past its empty line.  Searched from where the last call stopped.
 */
static bool headers_ended(struct smtp_session *s)
{
	const char *b = s->body + s->body_off;

	if (s->hdr_end != SIZE_MAX)
		return true;
	if (s->body_len >= 2 && b[0] == '\r' && b[1] == '\n') {
		s->hdr_end = 2;		/* no header section at all */
		return true;
	}
	size_t from = s->hdr_scanned > 3 ? s->hdr_scanned - 3 : 0;
	const char *e = s->body_len > from ?
			memmem(b + from, s->body_len - from, "\r\n\r\n", 4) : NULL;
	s->hdr_scanned = s->body_len;
	if (e)
		s->hdr_end = (size_t)(e - b) + 4;
	return e != NULL;
}

/* spill_forget - the driver drops what was streamed for this message. */
static void spill_forget(struct smtp_session *s)
{
	if (s->spilled && s->spill)
		s->spill(s->spill_arg, NULL, 0);
	s->spilled = 0;
	s->keep = SIZE_MAX;
	s->hdr_end = SIZE_MAX;
	s->hdr_scanned = 0;
	s->hdr_cut = false;
}

/* spill_out - pass n octets on to the driver; a failure dooms the message. */
static void spill_out(struct smtp_session *s, const char *p, size_t n)
{
	if (!n || s->content_err)
		return;
	if (s->spill(s->spill_arg, p, n) < 0) {
		s->content_err |= CE_SPILL;
		return;
	}
	s->spilled += n;
}

/*
 * spill_start - the buffer outgrew the window: keep the header section (up
 * to its empty line) in memory, for the header policy and DKIM at the end,
 * and stream the rest.  A header section longer than HEADER_KEEP_MAX is cut
 * at a line end and the policy sees only that part (hdr_cut).
 */
static void spill_start(struct smtp_session *s)
{
	const char *b = s->body + s->body_off;
	size_t n = s->body_len, keep = 0;

	if (headers_ended(s)) {
		keep = s->hdr_end;
	} else {
		for (size_t i = n; i > 0; i--)
			if (b[i - 1] == '\n') {
				keep = i;
				break;
			}
		s->hdr_cut = true;
	}
	s->keep = keep;
	spill_out(s, b + keep, n - keep);
	s->body_len = keep;
}

/* spill_flush - at the end of the content: the window goes too. */
static void spill_flush(struct smtp_session *s)
{
	if (s->keep == SIZE_MAX)
		return;
	spill_out(s, s->body + s->body_off + s->keep, s->body_len - s->keep);
	s->body_len = s->keep;
}

/* body_begin - an empty message buffer with HEADROOM in front; false
 * when the driver's memory budget has no room for it. */
static bool body_begin(struct smtp_session *s)
{
	uint64_t want = s->size_param ? s->size_param + 256 : BODY_INITIAL;
	uint64_t lim = size_limit(s);

	if (lim && want > lim + 256)
		want = lim + 256;
	if (want > BODY_PREALLOC_MAX)
		want = BODY_PREALLOC_MAX;
	if (s->spill_window && want > s->spill_window * 2)
		want = s->spill_window * 2;	/* the most a streamed one holds */
	want += HEADROOM;
	spill_forget(s);
	s->body_off = HEADROOM;
	s->body_len = 0;
	s->data_bytes = 0;
	s->content_err = 0;
	s->ls = L_BOL;
	s->line_len = 0;
	if (!s->body || s->body_cap < want) {
		if (!mem_ok(s, (int64_t)want - (int64_t)s->body_cap))
			return false;
		free(s->body);
		s->body = xmalloc((size_t)want);
		s->body_cap = (size_t)want;
	}
	return true;
}

/*
 * body_reserve - room for n more octets; false (the message is doomed,
 * CE_MEM) when the driver's memory budget refuses it, unless forced.
 */
static bool body_reserve(struct smtp_session *s, size_t n, bool force)
{
	size_t need = s->body_off + s->body_len + n;

	if (need <= s->body_cap)
		return true;
	size_t cap = s->body_cap ? s->body_cap : BODY_INITIAL;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	if (!mem_ok(s, (int64_t)(cap - s->body_cap)) && !force) {
		s->content_err |= CE_MEM;
		return false;
	}
	s->body = xrealloc(s->body, cap);
	s->body_cap = cap;
	return true;
}

/*
 * body_append - count n content octets and store them unless the message
 * is already doomed (too big, bad content): a rejected message costs no
 * memory however long the client keeps sending.
 */
static void body_append(struct smtp_session *s, const char *p, size_t n)
{
	uint64_t lim = size_limit(s);

	s->data_bytes += n;
	if (lim && s->data_bytes > lim)
		s->content_err |= CE_SIZE;
	if (s->content_err || n == 0)
		return;
	while (n && s->spill_window && s->keep == SIZE_MAX &&
	       s->body_len + n > s->spill_window) {
		if (headers_ended(s) || s->body_len >= HEADER_KEEP_MAX) {
			spill_start(s);
			if (s->content_err)
				return;
			break;
		}
		/* the header section goes on: a window more, then look again */
		size_t take = n < s->spill_window ? n : s->spill_window;
		if (take > HEADER_KEEP_MAX - s->body_len)
			take = HEADER_KEEP_MAX - s->body_len;
		if (!body_reserve(s, take, false))
			return;
		memcpy(s->body + s->body_off + s->body_len, p, take);
		s->body_len += take;
		p += take;
		n -= take;
	}
	if (!n)
		return;
	if (s->keep != SIZE_MAX && s->body_len - s->keep + n > s->spill_window) {
		/* a full window: it and this piece go, this one uncopied */
		spill_out(s, s->body + s->body_off + s->keep,
			  s->body_len - s->keep);
		s->body_len = s->keep;
		spill_out(s, p, n);
		return;
	}
	if (!body_reserve(s, n, false))
		return;
	memcpy(s->body + s->body_off + s->body_len, p, n);
	s->body_len += n;
}

/*
 * text_scan - check content octets from p (state L_BOL/L_MID/L_CR) for
 * bare CR, bare LF, NUL and over-long lines.  Only CRLF ends a line: after
 * a bare LF the scanner stays inside the line, so "<LF>.<CR><LF>" can
 * never end DATA here (SMTP smuggling, CVE-2023-51766).  With dot_stop
 * (DATA) it stops at the start of a line that begins with a dot, for
 * data_feed to unstuff or end; else it runs to end.  Returns where it
 * stopped; everything before is plain content, copied in one piece.
 */
static const char *text_scan(struct smtp_session *s, const char *p,
			     const char *end, bool dot_stop)
{
	const char *start = p;

	while (p < end) {
		if (s->ls == L_CR) {
			if (*p == '\n') {
				if (s->line_len - 1 > SMTP_SESSION_TEXT_LINE_MAX)
					s->content_err |= CE_LONG;
				s->ls = L_BOL;
				s->line_len = 0;
				p++;
				if (dot_stop && p < end && *p == '.')
					break;
				continue;
			}
			s->content_err |= CE_BARE_CR;
			s->ls = L_MID;
		}
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *segend = nl ? nl : end;
		size_t n = (size_t)(segend - p);
		bool cr_last = n && segend[-1] == '\r';

		if (n) {
			const char *cr = memchr(p, '\r', n);
			if (cr && cr != segend - 1)
				s->content_err |= CE_BARE_CR;
			s->line_len += n;
			/* doomed now, not at its end: a 10 MB line is never kept */
			if (s->line_len > SMTP_SESSION_TEXT_LINE_MAX + 1)
				s->content_err |= CE_LONG;
		}
		if (!nl) {
			s->ls = cr_last ? L_CR : L_MID;
			p = end;
			break;
		}
		p = nl + 1;
		if (!cr_last) {
			s->content_err |= CE_BARE_LF;
			s->ls = L_MID;
			s->line_len++;
			continue;
		}
		if (s->line_len - 1 > SMTP_SESSION_TEXT_LINE_MAX)
			s->content_err |= CE_LONG;
		s->ls = L_BOL;
		s->line_len = 0;
		if (dot_stop && p < end && *p == '.')
			break;
	}
	/* once per call, not per line: NUL is rare and never legal here */
	if (p > start && memchr(start, '\0', (size_t)(p - start)))
		s->content_err |= CE_NUL;
	return p;
}

static const char *content_error_reply(unsigned ce)
{
	if (ce & CE_SIZE)
		return "552 5.3.4 Error: message size exceeds fixed maximum message size";
	if (ce & (CE_MEM | CE_SPILL))
		return STORAGE_REPLY;
	if (ce & CE_BARE_LF)
		return "554 5.6.0 Error: bare <LF> in message; lines must end with <CR><LF>";
	if (ce & CE_BARE_CR)
		return "554 5.6.0 Error: bare <CR> in message; lines must end with <CR><LF>";
	if (ce & CE_NUL)
		return "554 5.6.0 Error: NUL character in message";
	return "554 5.6.0 Error: message has lines longer than 998 octets";
}

/* ------------------------------------------------------------------ */
/* Headers of a finished message                                        */

struct hdr_scan {
	unsigned received;
	bool has_msgid;
	bool has_date;
	uint32_t vmta;
	uint32_t job;
	uint32_t xenvid;
};

/*
 * pool_add_value - a header field body, unfolded and trimmed, without
 * control characters (it ends up in the spool and in log lines).
 */
static uint32_t pool_add_value(struct smtp_session *s, const char *v, size_t n)
{
	size_t start = s->pool.len, kept = 0;

	while (n && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n')) {
		v++;
		n--;
	}
	for (size_t i = 0; i < n && kept < HEADER_VALUE_MAX; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c == '\t')
			c = ' ';
		if (c < 0x20 || c == 0x7f)
			continue;
		sb_addc(&s->pool, (char)c);
		kept++;
	}
	while (s->pool.len > start && s->pool.buf[s->pool.len - 1] == ' ')
		s->pool.len--;
	sb_addc(&s->pool, '\0');
	return (uint32_t)start;
}

/* classify_header - note what a header field is; true = remove it. */
static bool classify_header(struct smtp_session *s, struct hdr_scan *h,
			    const char *name, size_t nn, const char *v,
			    size_t vn)
{
	const struct cfg_source *src = s->src;

	if (ieq(name, nn, "Received")) {
		h->received++;
	} else if (ieq(name, nn, "Message-ID")) {
		h->has_msgid = true;
	} else if (ieq(name, nn, "Date")) {
		h->has_date = true;
	} else if (src->process_x_virtual_mta && ieq(name, nn, "X-Virtual-MTA")) {
		if (h->vmta == NO_STR)
			h->vmta = pool_add_value(s, v, vn);
		return !src->retain_x_virtual_mta;
	} else if (src->process_x_job &&
		   ieq(name, nn, src->jobid_header ? src->jobid_header : "X-Job")) {
		if (h->job == NO_STR)
			h->job = pool_add_value(s, v, vn);
		return !src->retain_x_job;
	} else if (src->process_x_envid && ieq(name, nn, "X-EnvId")) {
		if (h->xenvid == NO_STR)
			h->xenvid = pool_add_value(s, v, vn);
		return !src->retain_x_envid;
	}
	for (size_t i = 0; i < src->remove_headers.count; i++)
		if (ieq(name, nn, src->remove_headers.items[i]))
			return true;
	return false;
}

/*
 * headers_scan - walk the header section: count, extract, and remove
 * fields.  Removal compacts the header section only and then slides it
 * towards the body, so the body itself is never moved.
 */
/*
 * header_field - the header field starting at b[pos]: *colon gets the
 * index of its ':', the return value the index just past its last
 * (folded) line.  Returns 0 at the blank line or at anything that is not
 * a header field: the body starts there.
 */
static size_t header_field(const char *b, size_t n, size_t pos, size_t *colon)
{
	size_t i = pos;

	while (i < n && (unsigned char)b[i] > 32 &&
	       (unsigned char)b[i] < 127 && b[i] != ':')
		i++;
	if (i == pos || i >= n || b[i] != ':')
		return 0;
	size_t fend = pos;
	for (;;) {
		const char *nl = memchr(b + fend, '\n', n - fend);
		fend = nl ? (size_t)(nl - b) + 1 : n;
		if (fend >= n || (b[fend] != ' ' && b[fend] != '\t'))
			break;
	}
	*colon = i;
	return fend;
}

static void headers_scan(struct smtp_session *s, struct hdr_scan *h)
{
	char *b = s->body + s->body_off;
	size_t n = s->body_len, pos = 0, w = 0;

	while (pos < n) {
		size_t i, fend = header_field(b, n, pos, &i);
		if (!fend)
			break;		/* blank line or not a header: body */
		bool drop = classify_header(s, h, b + pos, i - pos, b + i + 1,
					    fend - i - 1);
		/* its continuation may be in the streamed part: keep it whole */
		if (s->hdr_cut && fend == n)
			drop = false;
		if (!drop) {
			if (w != pos)
				memmove(b + w, b + pos, fend - pos);
			w += fend - pos;
		}
		pos = fend;
	}
	if (pos != w) {
		memmove(b + (pos - w), b, w);
		s->body_off += pos - w;
		s->body_len -= pos - w;
	}
}

static char *put_digits(char *p, unsigned v, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + width;
}

/*
 * format_date - RFC 5322 date-time in UTC into buf (at least 32 octets).
 * By hand, not strftime: locale-free, and printf costs showed up per
 * message.
 */
static size_t format_date(const struct tm *tm, char *buf)
{
	static const char days[7][4] = {
		"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
	};
	static const char months[12][4] = {
		"Jan", "Feb", "Mar", "Apr", "May", "Jun",
		"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
	};
	char *p = buf;

	memcpy(p, days[tm->tm_wday % 7], 3);
	p += 3;
	*p++ = ',';
	*p++ = ' ';
	p = put_digits(p, (unsigned)tm->tm_mday, 2);
	*p++ = ' ';
	memcpy(p, months[tm->tm_mon % 12], 3);
	p += 3;
	*p++ = ' ';
	p = put_digits(p, (unsigned)(tm->tm_year + 1900) % 10000, 4);
	*p++ = ' ';
	p = put_digits(p, (unsigned)tm->tm_hour, 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)tm->tm_min, 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)tm->tm_sec, 2);
	memcpy(p, " +0000", 7);
	return (size_t)(p + 6 - buf);
}

/* protocol_name - RFC 3848 / RFC 6531 "with" keyword for Received:. */
static const char *protocol_name(const struct smtp_session *s)
{
	static const char *const names[2][2][2] = {
		/* [utf8][tls][auth] */
		{ { "ESMTP", "ESMTPA" }, { "ESMTPS", "ESMTPSA" } },
		{ { "UTF8SMTP", "UTF8SMTPA" }, { "UTF8SMTPS", "UTF8SMTPSA" } },
	};

	if (!s->esmtp)
		return "SMTP";
	return names[s->smtputf8][s->tls_active][s->authed];
}

/* headers_prepend - Received:, then Message-ID:/Date: when asked and missing. */
static void headers_prepend(struct smtp_session *s, const struct hdr_scan *h)
{
	struct strbuf *t = &s->scratch;
	time_t now = time(NULL);
	struct tm tm;
	char date[32];
	size_t dlen;

	gmtime_r(&now, &tm);
	dlen = format_date(&tm, date);
	sb_reset(t);
	if (s->src->add_received_header) {
		sb_adds(t, "Received: ");
		if (!s->src->hide_message_source) {
			sb_adds(t, "from ");
			sb_add(t, s->helo.buf, s->helo.len);
			if (s->have_peer) {
				sb_adds(t, " (");
				sb_adds(t, s->ip_literal);
				sb_addc(t, ')');
			}
			sb_adds(t, "\r\n\t");
		}
		sb_adds(t, "by ");
		sb_adds(t, s->hostname);
		sb_adds(t, " with ");
		sb_adds(t, protocol_name(s));
		sb_adds(t, ";\r\n\t");
		sb_add(t, date, dlen);
		sb_adds(t, "\r\n");
	}
	if (s->src->add_message_id_header && !h->has_msgid) {
		char stamp[15];
		put_digits(stamp, (unsigned)(tm.tm_year + 1900) % 10000, 4);
		put_digits(stamp + 4, (unsigned)tm.tm_mon + 1, 2);
		put_digits(stamp + 6, (unsigned)tm.tm_mday, 2);
		put_digits(stamp + 8, (unsigned)tm.tm_hour, 2);
		put_digits(stamp + 10, (unsigned)tm.tm_min, 2);
		put_digits(stamp + 12, (unsigned)tm.tm_sec, 2);
		stamp[14] = '\0';
		sb_printf(t, "Message-ID: <%s.%llx.%x@%s>\r\n", stamp,
			  (unsigned long long)s->conn_id, s->msg_seq, s->hostname);
	}
	if (s->src->add_date_header && !h->has_date) {
		sb_adds(t, "Date: ");
		sb_add(t, date, dlen);
		sb_adds(t, "\r\n");
	}
	if (t->len == 0)
		return;
	if (t->len > s->body_off) {
		/* defensive: HEADROOM covers the longest host and HELO names */
		size_t shift = t->len - s->body_off;
		body_reserve(s, shift, true);
		memmove(s->body + s->body_off + shift, s->body + s->body_off,
			s->body_len);
		s->body_off += shift;
	}
	s->body_off -= t->len;
	s->body_len += t->len;
	memcpy(s->body + s->body_off, t->buf, t->len);
}

/* job_with_prefix - jobid-prefix ("{auth}" stands for the user) + value. */
static uint32_t job_with_prefix(struct smtp_session *s, uint32_t job)
{
	const char *pre = s->src->jobid_prefix;

	if (job == NO_STR || !pre || !*pre)
		return job;
	size_t start = s->pool.len;
	for (const char *p = pre; *p;) {
		if (strncmp(p, "{auth}", 6) == 0) {
			if (s->authed)
				sb_add(&s->pool, s->auth_user.buf, s->auth_user.len);
			p += 6;
		} else {
			sb_addc(&s->pool, *p++);
		}
	}
	/* by index: appending may move the pool under the value */
	size_t jlen = strlen(s->pool.buf + job);
	for (size_t i = 0; i < jlen; i++)
		sb_addc(&s->pool, s->pool.buf[job + i]);
	sb_addc(&s->pool, '\0');
	return (uint32_t)start;
}

/* ------------------------------------------------------------------ */
/* Virtual-MTA selection                                                 */

static const char *route_rcpt(void *ctx, size_t i)
{
	const struct smtp_session *s = ctx;

	return pool_str(s, s->rcpts[i].addr);
}

/* route_header - does a field called name, unfolded, match re? */
static bool route_header(void *ctx, const char *name, const struct cfg_regex *re)
{
	const struct smtp_session *s = ctx;
	const char *b = s->body + s->body_off;
	size_t n = s->body_len, pos = 0, colon;
	struct strbuf v = { 0 };
	bool hit = false;

	for (size_t fend; !hit && (fend = header_field(b, n, pos, &colon)); pos = fend) {
		if (!ieq(b + pos, colon - pos, name))
			continue;
		sb_reset(&v);
		for (size_t k = colon + 1; k < fend; k++) {
			char c = b[k];
			if (c == '\r' || c == '\n')
				continue;
			if (c == '\t')
				c = ' ';
			if (c == ' ' && v.len == 0)
				continue;
			sb_addc(&v, c);
		}
		while (v.len && v.buf[v.len - 1] == ' ')
			v.len--;
		sb_addc(&v, '\0');
		hit = cfg_regex_match(re, v.buf, v.len - 1) == 1;
	}
	sb_free(&v);
	return hit;
}

/*
 * route_message - the virtual-mta below X-Virtual-MTA: in PowerMTA's
 * order: the source's <pattern-list>, then its default-virtual-mta (the
 * named source of a listener or an <smtp-user> is already merged into
 * s->src).  NULL: the {default} queue.  Names were checked at load time.
 */
static const char *route_message(struct smtp_session *s)
{
	const struct cfg_source *src = s->src;

	if (src->pattern_list && *src->pattern_list) {
		struct cfg_route_msg m = {
			.mail_from = pool_str(s, s->mail_from),
			.nrcpt = s->nrcpt,
			.rcpt = route_rcpt,
			.header = route_header,
			.ctx = s,
		};
		const char *v = cfg_pattern_route(cfg_pattern_list_find(s->cfg, src->pattern_list),
						  &m);
		if (v)
			return v;
	}
	return src->default_virtual_mta && *src->default_virtual_mta
	       ? src->default_virtual_mta : NULL;
}

/*
 * finish_message - the content is complete and clean: apply the header
 * policy and either hand the message over (SMTP_EV_MESSAGE) or refuse it.
 */
static enum smtp_event finish_message(struct smtp_session *s,
				      struct strbuf *out)
{
	struct hdr_scan h = { .vmta = NO_STR, .job = NO_STR, .xenvid = NO_STR };
	uint32_t vmta_off = NO_STR;	/* the header's value, in the pool */
	const char *vmta_cfg = NULL;	/* or the configured fallback */

	headers_scan(s, &h);
	if (s->src->max_message_hops && h.received >= s->src->max_message_hops) {
		sb_reset(&s->scratch);
		sb_printf(&s->scratch,
			  "554 5.4.6 Error: too many hops (%u Received: headers), mail loop?",
			  h.received);
		fail(s, out, SMTP_REJECT_MESSAGE, false, s->scratch.buf, NULL);
		reset_transaction(s);
		return SMTP_EV_NONE;
	}
	if (h.vmta != NO_STR && s->pool.buf[h.vmta]) {
		const char *name = pool_str(s, h.vmta);
		if (cfg_vmta_find(s->cfg, name) || cfg_pool_find(s->cfg, name)) {
			vmta_off = h.vmta;
		} else if (s->src->invalid_virtual_mta_fallback) {
			vmta_cfg = s->src->invalid_virtual_mta_fallback;
		} else if (s->src->reject_invalid_virtual_mta) {
			sb_reset(&s->scratch);
			sb_printf(&s->scratch,
				  "550 5.3.5 Error: X-Virtual-MTA: names no virtual-mta or pool '%.64s'",
				  name);
			fail(s, out, SMTP_REJECT_MESSAGE, false, s->scratch.buf, NULL);
			reset_transaction(s);
			return SMTP_EV_NONE;
		}
		/* reject-invalid-virtual-mta no: routed as if it were absent */
	}
	if (vmta_off == NO_STR && !vmta_cfg)
		vmta_cfg = route_message(s);
	s->msg_seq++;
	headers_prepend(s, &h);
	uint32_t job = job_with_prefix(s, h.job);
	if (s->envid == NO_STR && h.xenvid != NO_STR && s->pool.buf[h.xenvid])
		s->envid = h.xenvid;

	/* Pointers into the pool only now: it no longer grows. */
	if (s->cap_pub < s->nrcpt) {
		s->cap_pub = s->nrcpt;
		s->pub = xrealloc(s->pub, s->cap_pub * sizeof(*s->pub));
	}
	for (size_t i = 0; i < s->nrcpt; i++) {
		s->pub[i] = (struct smtp_rcpt){
			.addr = pool_str(s, s->rcpts[i].addr),
			.notify = s->rcpts[i].notify,
			.orcpt = pool_str(s, s->rcpts[i].orcpt),
			.orcpt_addr = pool_str(s, s->rcpts[i].orcpt_addr),
		};
	}
	s->msg = (struct smtp_message){
		.mail_from = pool_str(s, s->mail_from),
		.size = s->size_param,
		.body = s->body_type,
		.ret = s->ret,
		.envid = pool_str(s, s->envid),
		.smtputf8 = s->smtputf8,
		.auth_user = s->authed ? sb_str(&s->auth_user) : NULL,
		.helo = sb_str(&s->helo),
		.client_ip = s->client_ip,
		.tls = s->tls_active,
		.virtual_mta = vmta_off != NO_STR ? pool_str(s, vmta_off) : vmta_cfg,
		.job_id = job != NO_STR && s->pool.buf[job] ? pool_str(s, job) : NULL,
		.source = s->src,
		.rcpt_count = s->nrcpt,
		.rcpts = s->pub,
		.data = s->body + s->body_off,
		.len = s->body_len,
		.spilled = s->spilled,
		.seq = s->msg_seq,
	};
	s->junk = 0;
	s->st = ST_WAIT_RESULT;
	return SMTP_EV_MESSAGE;
}

/* content_done - the end of DATA or of BDAT LAST. */
static enum smtp_event content_done(struct smtp_session *s, struct strbuf *out)
{
	s->st = ST_CMD;
	spill_flush(s);
	if (s->content_err) {
		fail(s, out, SMTP_REJECT_MESSAGE, false,
		     content_error_reply(s->content_err), NULL);
		reset_transaction(s);
		return SMTP_EV_NONE;
	}
	return finish_message(s, out);
}

/* ------------------------------------------------------------------ */
/* DATA and BDAT content                                                */

/*
 * data_feed - DATA content from p: unstuff dots and stop right after
 * CRLF.CRLF, the only end of data.
 */
static const char *data_feed(struct smtp_session *s, const char *p,
			     const char *end, struct strbuf *out,
			     enum smtp_event *ev)
{
	while (p < end) {
		switch (s->ls) {
		case L_BOL:
			if (*p == '.') {
				s->ls = L_DOT;
				p++;
				continue;
			}
			s->ls = L_MID;
			break;
		case L_DOT:
			if (*p == '\r') {
				s->ls = L_DOTCR;
				p++;
				continue;
			}
			s->ls = L_MID;		/* the dot was stuffing */
			break;
		case L_DOTCR:
			if (*p == '\n') {
				*ev = content_done(s, out);
				return p + 1;
			}
			s->content_err |= CE_BARE_CR;
			s->ls = L_MID;
			s->line_len = 1;
			break;
		default:
			break;
		}
		const char *q = text_scan(s, p, end, true);
		body_append(s, p, (size_t)(q - p));
		p = q;
	}
	return p;
}

static enum smtp_event bdat_chunk_done(struct smtp_session *s,
				       struct strbuf *out)
{
	s->st = ST_CMD;
	if (s->bdat_err) {
		const char *e = s->bdat_err;
		bool counted = e[0] == '5' && e[1] == '0';
		s->bdat_err = NULL;
		enum smtp_event ev = fail(s, out, SMTP_REJECT_MESSAGE, counted,
					  e, NULL);
		reset_transaction(s);
		return ev;
	}
	if (!s->bdat_last) {
		sb_reset(&s->scratch);
		sb_printf(&s->scratch, "250 2.0.0 Ok: %llu octets received",
			  (unsigned long long)s->data_bytes);
		add_line(out, s->scratch.buf);
		return SMTP_EV_NONE;
	}
	if (s->body_type != MAIL_BODY_BINARYMIME) {
		if (s->ls == L_CR)
			s->content_err |= CE_BARE_CR;
		if (s->line_len > SMTP_SESSION_TEXT_LINE_MAX)
			s->content_err |= CE_LONG;
	}
	return content_done(s, out);
}

/* bdat_feed - the octets of a BDAT chunk: counted, never interpreted. */
static const char *bdat_feed(struct smtp_session *s, const char *p,
			     const char *end, struct strbuf *out,
			     enum smtp_event *ev)
{
	size_t n = (size_t)(end - p);

	if (n > s->bdat_left)
		n = (size_t)s->bdat_left;
	if (!s->bdat_err) {
		/* RFC 3030: only BINARYMIME may carry anything; the rest must
		 * survive relaying through DATA later, so the line rules hold */
		if (s->body_type != MAIL_BODY_BINARYMIME)
			text_scan(s, p, p + n, false);
		body_append(s, p, n);
	}
	s->bdat_left -= n;
	p += n;
	if (s->bdat_left == 0)
		*ev = bdat_chunk_done(s, out);
	return p;
}

/* ------------------------------------------------------------------ */
/* Commands                                                             */

typedef enum smtp_event cmd_fn(struct smtp_session *s, const char *a,
			       const char *end, struct strbuf *out);

static bool auth_allowed_now(const struct smtp_session *s)
{
	return s->tls_active || (s->src->allow_unencrypted_plain_auth &&
				 !s->src->require_starttls_before_auth);
}

static enum smtp_event cmd_helo_common(struct smtp_session *s, const char *a,
				       const char *end, struct strbuf *out,
				       bool esmtp)
{
	a = skip_sp(a, end);
	const char *e = a;
	while (e < end && *e != ' ')
		e++;
	size_t n = (size_t)(e - a);
	bool ok = n > 0 && n <= 255;
	for (size_t i = 0; ok && i < n; i++)
		ok = (unsigned char)a[i] > 32 && (unsigned char)a[i] < 127;
	if (!ok)
		return proto_error(s, out, esmtp ?
				   "501 5.5.4 Syntax: EHLO hostname" :
				   "501 5.5.4 Syntax: HELO hostname");
	reset_transaction(s);
	sb_reset(&s->helo);
	sb_add(&s->helo, a, n);
	s->helo_seen = true;
	s->greeted = true;
	s->esmtp = esmtp;
	if (!esmtp) {
		sb_adds(out, "250 ");
		add_line(out, s->hostname);
		return junk(s, out);
	}
	sb_adds(out, "250-");
	add_line(out, s->hostname);
	sb_adds(out, "250-PIPELINING\r\n");
	uint64_t lim = size_limit(s);
	if (lim)
		sb_printf(out, "250-SIZE %llu\r\n", (unsigned long long)lim);
	else
		sb_adds(out, "250-SIZE\r\n");
	sb_adds(out, "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n");
	if (s->tls_available && !s->tls_active && s->src->allow_starttls)
		sb_adds(out, "250-STARTTLS\r\n");
	if (s->src->allow_auth && auth_allowed_now(s))
		sb_adds(out, "250-AUTH PLAIN LOGIN\r\n");
	sb_adds(out, "250-SMTPUTF8\r\n250 CHUNKING\r\n");
	/* repeated forever it moves no mail either (issue 18) */
	return junk(s, out);
}

static enum smtp_event cmd_ehlo(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	return cmd_helo_common(s, a, end, out, true);
}

static enum smtp_event cmd_helo(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	return cmd_helo_common(s, a, end, out, false);
}

/* expect_keyword - "FROM:" / "TO:" after optional spaces. */
static bool expect_keyword(const char **pp, const char *end, const char *kw)
{
	const char *p = skip_sp(*pp, end);
	size_t n = strlen(kw);

	if ((size_t)(end - p) < n || strncasecmp(p, kw, n) != 0)
		return false;
	*pp = p + n;
	return true;
}

static enum smtp_event cmd_mail(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	const char *addr, *k, *v;
	size_t alen, klen, vlen, dom;
	bool has_v, seen_size = false, seen_body = false, seen_ret = false,
	     seen_envid = false, seen_utf8 = false, seen_auth = false;

	if (!s->helo_seen)
		return proto_error(s, out, "503 5.5.1 Error: send HELO/EHLO first");
	if (s->have_mail)
		return proto_error(s, out, "503 5.5.1 Error: nested MAIL command");
	if (s->src->require_auth && !s->authed)
		return fail(s, out, SMTP_REJECT_MESSAGE, true,
			    "530 5.7.0 Authentication required", NULL);
	if (!expect_keyword(&a, end, "FROM:"))
		return proto_error(s, out, "501 5.5.4 Syntax: MAIL FROM:<address>");
	if (parse_path(&a, end, &addr, &alen) < 0)
		return proto_error(s, out, "501 5.1.7 Bad sender address syntax");

	/* Parameters first: SMTPUTF8 decides what the address may contain. */
	sb_reset(&s->pool);
	s->envid = NO_STR;
	s->size_param = 0;
	s->body_type = MAIL_BODY_NONE;
	s->ret = MAIL_RET_NONE;
	s->smtputf8 = false;
	while (next_param(&a, end, &k, &klen, &v, &vlen, &has_v)) {
		bool *seen;
		if (ieq(k, klen, "SIZE"))
			seen = &seen_size;
		else if (ieq(k, klen, "BODY"))
			seen = &seen_body;
		else if (ieq(k, klen, "RET"))
			seen = &seen_ret;
		else if (ieq(k, klen, "ENVID"))
			seen = &seen_envid;
		else if (ieq(k, klen, "SMTPUTF8"))
			seen = &seen_utf8;
		else if (ieq(k, klen, "AUTH"))
			seen = &seen_auth;
		else
			return proto_error(s, out, "555 5.5.4 Unsupported MAIL parameter");
		if (!s->esmtp)	/* RFC 1869: no parameters after HELO */
			return proto_error(s, out, "555 5.5.4 Unsupported MAIL parameter (send EHLO)");
		if (*seen)
			return proto_error(s, out, "501 5.5.4 Duplicate MAIL parameter");
		*seen = true;
		if (seen == &seen_utf8) {
			if (has_v)
				return proto_error(s, out, "501 5.5.4 Syntax: SMTPUTF8 takes no value");
			s->smtputf8 = true;
			continue;
		}
		if (!has_v || vlen == 0)
			return proto_error(s, out, "501 5.5.4 Syntax: parameter needs a value");
		if (seen == &seen_size) {
			if (parse_u64(v, vlen, &s->size_param) < 0)
				return proto_error(s, out, "501 5.5.4 Syntax: SIZE=number");
		} else if (seen == &seen_body) {
			if (ieq(v, vlen, "7BIT"))
				s->body_type = MAIL_BODY_7BIT;
			else if (ieq(v, vlen, "8BITMIME"))
				s->body_type = MAIL_BODY_8BITMIME;
			else if (ieq(v, vlen, "BINARYMIME"))
				s->body_type = MAIL_BODY_BINARYMIME;
			else
				return proto_error(s, out, "501 5.5.4 Syntax: BODY=7BIT|8BITMIME|BINARYMIME");
		} else if (seen == &seen_ret) {
			if (ieq(v, vlen, "FULL"))
				s->ret = MAIL_RET_FULL;
			else if (ieq(v, vlen, "HDRS"))
				s->ret = MAIL_RET_HDRS;
			else
				return proto_error(s, out, "501 5.5.4 Syntax: RET=FULL|HDRS");
		} else if (seen == &seen_envid) {
			s->envid = pool_add_xtext(s, v, vlen, ENVID_MAX);
			if (s->envid == NO_STR)
				return proto_error(s, out, "501 5.5.4 Syntax: ENVID=xtext (at most 100 characters)");
		} else {
			/* AUTH=<>/xtext (RFC 4954 5): accepted, not trusted */
			if (!ieq(v, vlen, "<>")) {
				size_t mark = s->pool.len;
				if (pool_add_xtext(s, v, vlen, 512) == NO_STR)
					return proto_error(s, out, "501 5.5.4 Syntax: AUTH=<> or AUTH=xtext");
				s->pool.len = mark;
			}
		}
	}
	if (alen) {
		int r = check_mailbox(addr, alen, s->smtputf8, &dom);
		if (r == -2)
			return fail(s, out, SMTP_REJECT_MESSAGE, true,
				    "553 5.6.7 Non-ASCII sender address requires SMTPUTF8", NULL);
		if (r < 0)
			return proto_error(s, out, "501 5.1.7 Bad sender address syntax");
	}
	uint64_t lim = size_limit(s);
	if (lim && s->size_param > lim)
		return fail(s, out, SMTP_REJECT_MESSAGE, false,
			    "552 5.3.4 Error: message size exceeds fixed maximum message size",
			    NULL);
	if (!storage_ok(s))
		return fail(s, out, SMTP_REJECT_MESSAGE, false, STORAGE_REPLY, NULL);
	s->mail_from = pool_add(s, addr, alen);
	s->have_mail = true;
	s->nrcpt = 0;
	s->rcpt_attempts = 0;
	s->too_many = false;
	s->bdat_started = false;
	add_line(out, "250 2.1.0 Ok");
	return SMTP_EV_NONE;
}

/* parse_notify - NEVER, or a list of SUCCESS, FAILURE, DELAY. */
static int parse_notify(const char *v, size_t n, uint32_t *out)
{
	uint32_t bits = 0;
	const char *end = v + n;

	while (v < end) {
		const char *c = memchr(v, ',', (size_t)(end - v));
		const char *e = c ? c : end;
		uint32_t b;
		if (ieq(v, (size_t)(e - v), "NEVER"))
			b = MAIL_NOTIFY_NEVER;
		else if (ieq(v, (size_t)(e - v), "SUCCESS"))
			b = MAIL_NOTIFY_SUCCESS;
		else if (ieq(v, (size_t)(e - v), "FAILURE"))
			b = MAIL_NOTIFY_FAILURE;
		else if (ieq(v, (size_t)(e - v), "DELAY"))
			b = MAIL_NOTIFY_DELAY;
		else
			return -1;
		if (bits & b)
			return -1;
		bits |= b;
		if (!c)
			break;
		v = c + 1;
		if (v == end)
			return -1;
	}
	if (!bits || ((bits & MAIL_NOTIFY_NEVER) && bits != MAIL_NOTIFY_NEVER))
		return -1;
	*out = bits;
	return 0;
}

/* rcpt_fail - refuse a recipient, naming it in the reject report. */
static enum smtp_event rcpt_fail(struct smtp_session *s, struct strbuf *out,
				 bool counted, const char *line,
				 const char *addr, size_t alen)
{
	sb_reset(&s->scratch);
	for (size_t i = 0; i < alen; i++) {
		unsigned char c = (unsigned char)addr[i];
		sb_addc(&s->scratch, c < 0x20 || c == 0x7f ? '?' : (char)c);
	}
	add_line(out, line);
	report(s, SMTP_REJECT_RECIPIENT, line, sb_str(&s->scratch));
	if (counted && ++s->errors >= SMTP_SESSION_MAX_ERRORS)
		return close_421(s, out, "4.7.0", "Error: too many errors");
	return SMTP_EV_NONE;
}

static enum smtp_event cmd_rcpt(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	const char *arg = skip_sp(a, end), *addr, *k, *v;
	size_t alen, klen, vlen, dom = 0;
	bool has_v, seen_notify = false, seen_orcpt = false;
	uint32_t notify = 0;
	const char *orcpt = NULL;
	size_t orcpt_len = 0, orcpt_type_len = 0;

	if (!s->have_mail)
		return proto_error(s, out, "503 5.5.1 Error: need MAIL command");
	if (s->bdat_started)
		return proto_error(s, out, "503 5.5.1 Error: RCPT after BDAT");
	s->rcpt_attempts++;
	if (!expect_keyword(&a, end, "TO:"))
		return rcpt_fail(s, out, true, "501 5.5.4 Syntax: RCPT TO:<address>",
				 arg, (size_t)(end - arg));
	arg = skip_sp(a, end);
	if (parse_path(&a, end, &addr, &alen) < 0 || alen == 0)
		return rcpt_fail(s, out, true, "501 5.1.3 Bad recipient address syntax",
				 arg, (size_t)(end - arg));
	while (next_param(&a, end, &k, &klen, &v, &vlen, &has_v)) {
		if (!s->esmtp)
			return rcpt_fail(s, out, true, "555 5.5.4 Unsupported RCPT parameter (send EHLO)",
					 addr, alen);
		if (ieq(k, klen, "NOTIFY")) {
			if (seen_notify || !has_v || parse_notify(v, vlen, &notify) < 0)
				return rcpt_fail(s, out, true,
						 "501 5.5.4 Syntax: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY",
						 addr, alen);
			seen_notify = true;
		} else if (ieq(k, klen, "ORCPT")) {
			const char *semi = has_v ? memchr(v, ';', vlen) : NULL;
			if (seen_orcpt || !semi || semi == v || semi == v + vlen - 1)
				return rcpt_fail(s, out, true, "501 5.5.4 Syntax: ORCPT=addr-type;xtext",
						 addr, alen);
			seen_orcpt = true;
			orcpt = v;
			orcpt_len = vlen;
			orcpt_type_len = (size_t)(semi - v);
		} else {
			return rcpt_fail(s, out, true, "555 5.5.4 Unsupported RCPT parameter",
					 addr, alen);
		}
	}
	/*
	 * RFC 5321 4.5.1: <postmaster> without a domain must be accepted,
	 * from anyone; it means our own postmaster.
	 */
	char local_pm[sizeof(s->hostname) + 16];
	bool postmaster = ieq(addr, alen, "postmaster");
	if (postmaster) {
		snprintf(local_pm, sizeof(local_pm), "postmaster@%s", s->hostname);
		addr = local_pm;
		alen = strlen(local_pm);
	} else {
		int r = check_mailbox(addr, alen, s->smtputf8, &dom);
		if (r == -2)
			return rcpt_fail(s, out, true,
					 "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8",
					 addr, alen);
		if (r < 0)
			return rcpt_fail(s, out, true, "501 5.1.3 Bad recipient address syntax",
					 addr, alen);
	}
	if (s->nrcpt >= rcpt_limit(s)) {
		s->too_many = true;
		return rcpt_fail(s, out, false, "452 4.5.3 Error: too many recipients",
				 addr, alen);
	}
	if (!postmaster && !relay_allowed(s, addr, alen, dom))
		return rcpt_fail(s, out, true, "550 5.7.1 Error: relaying denied",
				 addr, alen);
	if (s->rcpt_check) {
		/* a suppressed recipient is the sender's list problem, not a
		 * protocol error: not counted towards the 421 */
		char a0[SMTP_SESSION_ENVELOPE_LINE_MAX];
		const char *refuse;

		BUG_ON(alen >= sizeof(a0));	/* the line limit holds it */
		memcpy(a0, addr, alen);
		a0[alen] = '\0';
		refuse = s->rcpt_check(s->rcpt_arg, s->src,
				       pool_str(s, s->mail_from), a0);
		if (refuse)
			return rcpt_fail(s, out, false, refuse, addr, alen);
	}

	size_t mark = s->pool.len;
	struct rcpt_rec rec = { .notify = notify, .orcpt = NO_STR,
				.orcpt_addr = NO_STR };
	if (orcpt) {
		for (size_t i = 0; i < orcpt_type_len; i++) {
			unsigned char c = (unsigned char)orcpt[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			      (c >= '0' && c <= '9') || c == '-'))
				goto bad_orcpt;
		}
		rec.orcpt_addr = pool_add_xtext(s, orcpt + orcpt_type_len + 1,
						orcpt_len - orcpt_type_len - 1,
						SMTP_SESSION_ENVELOPE_LINE_MAX);
		if (rec.orcpt_addr == NO_STR)
			goto bad_orcpt;
		rec.orcpt = pool_add(s, orcpt, orcpt_len);
	}
	rec.addr = pool_add(s, addr, alen);
	if (s->nrcpt == s->cap_rcpt) {
		s->cap_rcpt = s->cap_rcpt ? s->cap_rcpt * 2 : 16;
		s->rcpts = xrealloc(s->rcpts, s->cap_rcpt * sizeof(*s->rcpts));
	}
	s->rcpts[s->nrcpt++] = rec;
	add_line(out, "250 2.1.5 Ok");
	return SMTP_EV_NONE;

bad_orcpt:
	s->pool.len = mark;
	if (s->pool.buf)
		s->pool.buf[mark] = '\0';
	return rcpt_fail(s, out, true, "501 5.5.4 Syntax: ORCPT=addr-type;xtext",
			 addr, alen);
}

/* transaction_ready - the checks DATA and BDAT share; NULL = go ahead. */
static const char *transaction_ready(const struct smtp_session *s)
{
	if (!s->have_mail)
		return "503 5.5.1 Error: need MAIL command";
	if (s->nrcpt == 0)
		return s->rcpt_attempts ? "554 5.5.1 Error: no valid recipients" :
					  "503 5.5.1 Error: need RCPT command";
	if (s->too_many && s->src->too_many_rcpts_fails_message)
		return "550 5.5.3 Error: too many recipients";
	return NULL;
}

static enum smtp_event cmd_data(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	if (a != end)
		return proto_error(s, out, "501 5.5.4 Syntax: DATA");
	const char *e = transaction_ready(s);
	if (!e && s->bdat_started)
		e = "503 5.5.1 Error: DATA after BDAT";
	if (!e && s->body_type == MAIL_BODY_BINARYMIME)	/* RFC 3030 3 */
		e = "503 5.5.1 Error: BODY=BINARYMIME requires BDAT";
	if (e) {
		bool policy = e[0] == '5' && e[1] == '5' && e[2] == '0';
		enum smtp_event ev = fail(s, out, policy ? SMTP_REJECT_MESSAGE :
					  SMTP_REJECT_COMMAND, !policy, e, NULL);
		if (policy)
			reset_transaction(s);
		return ev;
	}
	if (!storage_ok(s) || !body_begin(s)) {
		fail(s, out, SMTP_REJECT_MESSAGE, false, STORAGE_REPLY, NULL);
		reset_transaction(s);
		return SMTP_EV_NONE;
	}
	s->st = ST_DATA;
	add_line(out, "354 End data with <CR><LF>.<CR><LF>");
	return SMTP_EV_NONE;
}

static enum smtp_event cmd_bdat(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	const char *p = skip_sp(a, end), *d = p;
	uint64_t n;
	bool last = false;

	while (p < end && *p != ' ')
		p++;
	if (parse_u64(d, (size_t)(p - d), &n) < 0)
		return proto_error(s, out, "501 5.5.4 Syntax: BDAT size [LAST]");
	p = skip_sp(p, end);
	if (p < end) {
		if (!ieq(p, (size_t)(end - p), "LAST"))
			return proto_error(s, out, "501 5.5.4 Syntax: BDAT size [LAST]");
		last = true;
	}
	/*
	 * From here on the chunk is read whatever the verdict (RFC 3030 2):
	 * its octets must never be taken for commands.
	 */
	const char *e = transaction_ready(s);
	if (!e && !s->bdat_started && !storage_ok(s))
		e = STORAGE_REPLY;
	if (!e && !s->bdat_started && !body_begin(s))
		e = STORAGE_REPLY;
	if (!e) {
		s->bdat_started = true;
		uint64_t lim = size_limit(s);
		if (lim && (n > lim || s->data_bytes + n > lim))
			e = "552 5.3.4 Error: message size exceeds fixed maximum message size";
	}
	s->bdat_err = e;
	s->bdat_left = n;
	s->bdat_last = last;
	s->st = ST_BDAT;
	if (n == 0)
		return bdat_chunk_done(s, out);
	return SMTP_EV_NONE;
}

static enum smtp_event cmd_rset(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	if (a != end)
		return proto_error(s, out, "501 5.5.4 Syntax: RSET");
	reset_transaction(s);
	add_line(out, "250 2.0.0 Ok");
	return junk(s, out);
}

static enum smtp_event cmd_noop(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	add_line(out, "250 2.0.0 Ok");
	return junk(s, out);
}

static enum smtp_event cmd_quit(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	add_line(out, "221 2.0.0 Bye");
	s->st = ST_CLOSED;
	return SMTP_EV_CLOSE;
}

static enum smtp_event cmd_vrfy(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	if (skip_sp(a, end) == end)
		return proto_error(s, out, "501 5.5.4 Syntax: VRFY address");
	add_line(out, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
	return junk(s, out);
}

static enum smtp_event cmd_expn(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	enum smtp_event ev = fail(s, out, SMTP_REJECT_COMMAND, false,
				  "502 5.5.1 Error: EXPN not supported", NULL);
	return ev == SMTP_EV_NONE ? junk(s, out) : ev;
}

static enum smtp_event cmd_help(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	add_line(out, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
	return junk(s, out);
}

static enum smtp_event cmd_starttls(struct smtp_session *s, const char *a,
				    const char *end, struct strbuf *out)
{
	if (a != end)
		return proto_error(s, out, "501 5.5.4 Syntax: STARTTLS");
	if (s->tls_active)
		return proto_error(s, out, "503 5.5.1 Error: TLS already active");
	if (!s->tls_available || !s->src->allow_starttls)
		return proto_error(s, out, "502 5.5.1 Error: STARTTLS not available");
	if (s->have_mail)
		return proto_error(s, out, "503 5.5.1 Error: MAIL transaction in progress");
	add_line(out, "220 2.0.0 Ready to start TLS");
	sb_reset(&s->line);
	return SMTP_EV_STARTTLS;
}

/* ---- AUTH ---- */

/* b64_decode - strict base64 (padding optional); -1 on bad input. */
static int b64_decode(const char *in, size_t n, unsigned char *out, size_t cap,
		      size_t *outlen)
{
	uint32_t acc = 0;
	size_t bits = 0, o = 0, pad = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '=') {
			pad++;
			continue;
		}
		int v = b64_value(c);
		if (v < 0 || pad)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o == cap)
				return -1;
			out[o++] = (unsigned char)(acc >> bits);
		}
	}
	if (pad > 2 || (pad && (n % 4) != 0) || bits >= 6 ||
	    (acc & ((1u << bits) - 1)) != 0)
		return -1;
	*outlen = o;
	return 0;
}

/* ct_equal - compare without leaking where the first difference is. */
static bool ct_equal(const unsigned char *got, size_t glen,
		     const unsigned char *want, size_t wlen)
{
	volatile unsigned char d = glen != wlen;

	for (size_t i = 0; i < wlen; i++)
		d |= (unsigned char)((i < glen ? got[i] : 0) ^ want[i]);
	return d == 0;
}

static bool is_crypt_hash(const char *pw)
{
	static const char *const ids[] = {
		"$1$", "$5$", "$6$", "$y$", "$gy$", "$7$", "$2a$", "$2b$", "$2y$",
	};

	for (size_t i = 0; i < ARRAY_SIZE(ids); i++)
		if (strncmp(pw, ids[i], strlen(ids[i])) == 0)
			return true;
	return false;
}

/*
 * password_ok - check a password against <smtp-user>'s: a crypt(3) hash
 * ("$6$", "$y$", ...) or plaintext (constant-time compare).  Runs the
 * hash inline: yescrypt costs milliseconds of this intake thread, paid
 * once per connection by clients that authenticate.
 */
static bool password_ok(const char *stored, const unsigned char *pw, size_t n)
{
	if (!is_crypt_hash(stored))
		return ct_equal(pw, n, (const unsigned char *)stored,
				strlen(stored));
	if (memchr(pw, '\0', n))
		return false;
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	char *z = xmalloc(n + 1);
	memcpy(z, pw, n);
	z[n] = '\0';
	const char *h = crypt_r(z, stored, cd);
	bool ok = h && h[0] == '$' &&
		  ct_equal((const unsigned char *)h, strlen(h),
			   (const unsigned char *)stored, strlen(stored));
	explicit_bzero(z, n);
	explicit_bzero(cd, sizeof(*cd));
	free(z);
	free(cd);
	return ok;
}

/* auth_over_limit - the source's smtp-max-auth-failure-rate, per client address. */
static bool auth_over_limit(struct smtp_session *s, bool failed)
{
	const struct cfg_rate *r = &s->src->smtp_max_auth_failure_rate;

	if (!s->auth_limit || r->unlimited || !r->count || !r->period_s)
		return false;
	return s->auth_limit(s->auth_arg, s->have_peer ? (const struct sockaddr *)&s->peer : NULL,
			     r, failed);
}

/*
 * auth_finish - check credentials; on success the client's policy becomes
 * the user's named source, or {auth}, when the configuration has one.
 */
static enum smtp_event auth_finish(struct smtp_session *s, const char *user,
				   size_t ulen, const unsigned char *pw,
				   size_t plen, struct strbuf *out)
{
	const struct cfg_smtp_user *u = NULL;
	bool ok = false;

	s->st = ST_CMD;
	if (ulen && ulen <= AUTH_USER_MAX && !memchr(user, '\0', ulen)) {
		char name[AUTH_USER_MAX + 1];
		memcpy(name, user, ulen);
		name[ulen] = '\0';
		u = cfg_smtp_user_find(s->cfg, name);
	}
	if (u && u->method == CFG_AUTH_PASSWORD && u->password)
		ok = password_ok(u->password, pw, plen);
	else	/* same work for an unknown user as for a wrong password */
		(void)ct_equal(pw, plen, (const unsigned char *)"x", 1);
	if (!ok) {
		s->auth_failures++;
		add_line(out, "535 5.7.8 Error: authentication credentials invalid");
		report(s, SMTP_REJECT_COMMAND,
		       "535 5.7.8 Error: authentication credentials invalid", NULL);
		if (s->auth_failures >= SMTP_SESSION_MAX_AUTH_FAILURES || auth_over_limit(s, true))
			return close_421(s, out, "4.7.0", "Error: too many authentication failures");
		return SMTP_EV_NONE;
	}
	s->authed = true;
	sb_reset(&s->auth_user);
	sb_add(&s->auth_user, user, ulen);
	const struct sockaddr *peer =
		s->have_peer ? (const struct sockaddr *)&s->peer : NULL;
	const struct cfg_source *src = NULL;
	if (u->source)
		src = cfg_source_lookup(s->cfg, peer, u->source);
	if (!src)
		src = cfg_source_lookup(s->cfg, peer, "{auth}");
	if (src)	/* else the connection's policy stays */
		s->src = src;
	add_line(out, "235 2.7.0 Authentication successful");
	return SMTP_EV_NONE;
}

/* auth_plain - "[authzid] NUL authcid NUL password", base64 (RFC 4616). */
static enum smtp_event auth_plain(struct smtp_session *s, const char *b64,
				  size_t n, struct strbuf *out)
{
	unsigned char buf[SMTP_SESSION_AUTH_LINE_MAX];
	size_t len;

	s->st = ST_CMD;
	if (b64_decode(b64, n, buf, sizeof(buf), &len) < 0)
		return proto_error(s, out, "501 5.5.2 Error: cannot decode response");
	unsigned char *z1 = memchr(buf, '\0', len);
	unsigned char *z2 = z1 ? memchr(z1 + 1, '\0', len - (size_t)(z1 + 1 - buf)) : NULL;
	enum smtp_event ev;
	if (!z2) {
		ev = auth_finish(s, "", 0, (const unsigned char *)"", 0, out);
	} else {
		size_t zlen = (size_t)(z1 - buf);
		const char *user = (const char *)z1 + 1;
		size_t ulen = (size_t)(z2 - z1 - 1);
		/* authorising as someone else is not offered */
		if (zlen && (zlen != ulen || memcmp(buf, user, ulen) != 0))
			ulen = 0;
		ev = auth_finish(s, user, ulen, z2 + 1,
				 len - (size_t)(z2 + 1 - buf), out);
	}
	explicit_bzero(buf, len);
	return ev;
}

static enum smtp_event cmd_auth(struct smtp_session *s, const char *a,
				const char *end, struct strbuf *out)
{
	if (!s->src->allow_auth)
		return proto_error(s, out, "503 5.5.1 Error: authentication not enabled");
	if (!s->esmtp)
		return proto_error(s, out, "503 5.5.1 Error: send EHLO first");
	if (s->authed)
		return proto_error(s, out, "503 5.5.1 Error: already authenticated");
	if (s->have_mail)
		return proto_error(s, out, "503 5.5.1 Error: MAIL transaction in progress");
	if (!auth_allowed_now(s))
		return fail(s, out, SMTP_REJECT_COMMAND, true,
			    "538 5.7.11 Encryption required for requested authentication mechanism",
			    NULL);
	if (auth_over_limit(s, false))
		return close_421(s, out, "4.7.0", "Error: too many authentication failures");
	const char *m = skip_sp(a, end), *me = m;
	while (me < end && *me != ' ')
		me++;
	const char *ir = skip_sp(me, end);
	bool has_ir = ir < end;
	size_t irn = (size_t)(end - ir);
	if (has_ir && irn == 1 && ir[0] == '=')	/* RFC 4954: empty response */
		irn = 0;

	if (ieq(m, (size_t)(me - m), "PLAIN")) {
		if (has_ir)
			return auth_plain(s, ir, irn, out);
		add_line(out, "334 ");
		s->st = ST_AUTH_PLAIN;
		return SMTP_EV_NONE;
	}
	if (ieq(m, (size_t)(me - m), "LOGIN")) {
		if (has_ir) {
			unsigned char buf[AUTH_USER_MAX + 1];
			size_t len;
			if (b64_decode(ir, irn, buf, sizeof(buf), &len) < 0)
				return proto_error(s, out, "501 5.5.2 Error: cannot decode response");
			sb_reset(&s->auth_tmp);
			sb_add(&s->auth_tmp, (const char *)buf, len);
			add_line(out, "334 UGFzc3dvcmQ6");
			s->st = ST_AUTH_LOGIN_PASS;
			return SMTP_EV_NONE;
		}
		add_line(out, "334 VXNlcm5hbWU6");
		s->st = ST_AUTH_LOGIN_USER;
		return SMTP_EV_NONE;
	}
	return proto_error(s, out, "504 5.5.4 Error: unrecognized authentication type");
}

/* auth_response - a line sent after a 334 challenge. */
static enum smtp_event auth_response(struct smtp_session *s, const char *l,
				     size_t n, struct strbuf *out)
{
	enum state st = s->st;

	s->st = ST_CMD;
	if (n == 1 && l[0] == '*')
		return fail(s, out, SMTP_REJECT_COMMAND, false,
			    "501 5.7.0 Error: authentication aborted", NULL);
	if (st == ST_AUTH_PLAIN)
		return auth_plain(s, l, n, out);
	if (st == ST_AUTH_LOGIN_USER) {
		unsigned char buf[AUTH_USER_MAX + 1];
		size_t len;
		if (b64_decode(l, n, buf, sizeof(buf), &len) < 0)
			return proto_error(s, out, "501 5.5.2 Error: cannot decode response");
		sb_reset(&s->auth_tmp);
		sb_add(&s->auth_tmp, (const char *)buf, len);
		add_line(out, "334 UGFzc3dvcmQ6");
		s->st = ST_AUTH_LOGIN_PASS;
		return SMTP_EV_NONE;
	}
	unsigned char pw[SMTP_SESSION_AUTH_LINE_MAX];
	size_t plen;
	if (b64_decode(l, n, pw, sizeof(pw), &plen) < 0)
		return proto_error(s, out, "501 5.5.2 Error: cannot decode response");
	enum smtp_event ev = auth_finish(s, sb_str(&s->auth_tmp), s->auth_tmp.len,
					 pw, plen, out);
	explicit_bzero(pw, plen);
	sb_reset(&s->auth_tmp);
	return ev;
}

/* ---- dispatch ---- */

static const struct command {
	const char *name;
	size_t len;
	cmd_fn *fn;
} commands[] = {
	/* the per-message ones first */
	{ "RCPT", 4, cmd_rcpt },
	{ "MAIL", 4, cmd_mail },
	{ "DATA", 4, cmd_data },
	{ "BDAT", 4, cmd_bdat },
	{ "RSET", 4, cmd_rset },
	{ "EHLO", 4, cmd_ehlo },
	{ "HELO", 4, cmd_helo },
	{ "NOOP", 4, cmd_noop },
	{ "QUIT", 4, cmd_quit },
	{ "AUTH", 4, cmd_auth },
	{ "STARTTLS", 8, cmd_starttls },
	{ "VRFY", 4, cmd_vrfy },
	{ "EXPN", 4, cmd_expn },
	{ "HELP", 4, cmd_help },
};

/*
 * handle_line - one complete line l[0..n) with its LF (n >= 1), in place
 * in the driver's buffer or in s->line.
 */
static enum smtp_event handle_line(struct smtp_session *s, const char *l,
				   size_t n, struct strbuf *out)
{
	if (n < 2 || l[n - 2] != '\r') {
		s->st = ST_CMD;
		return proto_error(s, out, "500 5.5.2 Error: bare <LF> received; commands end with <CR><LF>");
	}
	n -= 2;
	if (memchr(l, '\r', n)) {
		s->st = ST_CMD;
		return proto_error(s, out, "500 5.5.2 Error: bare <CR> received");
	}
	if (memchr(l, '\0', n)) {
		s->st = ST_CMD;
		return proto_error(s, out, "500 5.5.2 Error: NUL character received");
	}
	if (s->st != ST_CMD)
		return auth_response(s, l, n, out);

	while (n && (l[n - 1] == ' ' || l[n - 1] == '\t'))
		n--;
	const char *end = l + n, *v = l;
	while (v < end && *v != ' ')
		v++;
	size_t vlen = (size_t)(v - l);
	if (vlen == 0)
		return proto_error(s, out, "500 5.5.2 Error: bad syntax");
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		const struct command *c = &commands[i];
		if (c->len == vlen && strncasecmp(l, c->name, vlen) == 0)
			return c->fn(s, v < end ? v + 1 : end, end, out);
	}
	return proto_error(s, out, "500 5.5.1 Error: command not recognized");
}

/* line_limit - longest line allowed, CRLF included, for what starts at p. */
static size_t line_limit(const struct smtp_session *s, const char *p, size_t n)
{
	if (s->st != ST_CMD)
		return SMTP_SESSION_AUTH_LINE_MAX;
	if (n >= 5 && strncasecmp(p, "AUTH ", 5) == 0)
		return SMTP_SESSION_AUTH_LINE_MAX;
	if (n >= 5 && (strncasecmp(p, "MAIL ", 5) == 0 ||
		       strncasecmp(p, "RCPT ", 5) == 0))
		return SMTP_SESSION_ENVELOPE_LINE_MAX;
	return SMTP_SESSION_LINE_MAX;
}

/* line_feed - take one command line from p (or the rest of one). */
static const char *line_feed(struct smtp_session *s, const char *p,
			     const char *end, struct strbuf *out,
			     enum smtp_event *ev, unsigned *budget)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));

	if (s->discarding) {
		if (!nl)
			return end;
		s->discarding = false;
		(*budget)--;
		s->st = ST_CMD;
		*ev = proto_error(s, out, "500 5.5.6 Error: line too long");
		return nl + 1;
	}
	if (s->line.len == 0 && nl) {		/* the common case: in place */
		size_t n = (size_t)(nl - p) + 1;
		(*budget)--;
		if (n > line_limit(s, p, n)) {
			s->st = ST_CMD;
			*ev = proto_error(s, out, "500 5.5.6 Error: line too long");
		} else {
			*ev = handle_line(s, p, n, out);
		}
		return nl + 1;
	}
	size_t take = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
	if (s->line.len + take > SMTP_SESSION_AUTH_LINE_MAX) {
		sb_reset(&s->line);
		if (!nl) {
			s->discarding = true;
			return end;
		}
		(*budget)--;
		s->st = ST_CMD;
		*ev = proto_error(s, out, "500 5.5.6 Error: line too long");
		return nl + 1;
	}
	sb_add(&s->line, p, take);
	size_t lim = line_limit(s, s->line.buf, s->line.len);
	if (!nl) {
		if (s->line.len >= lim) {
			sb_reset(&s->line);
			s->discarding = true;
		}
		return end;
	}
	(*budget)--;
	if (s->line.len > lim) {
		s->st = ST_CMD;
		*ev = proto_error(s, out, "500 5.5.6 Error: line too long");
	} else {
		*ev = handle_line(s, s->line.buf, s->line.len, out);
	}
	sb_reset(&s->line);
	return nl + 1;
}

/* ------------------------------------------------------------------ */
/* Public API                                                           */

struct smtp_session *smtp_session_new(const struct smtp_session_params *p,
				      struct strbuf *out,
				      enum smtp_event *ev)
{
	struct smtp_session *s = xcalloc(1, sizeof(*s));
	const struct cfg_global *g;

	BUG_ON(!p->cfg || !p->source);
	g = cfg_global(p->cfg);
	s->cfg = p->cfg;
	s->src = s->src0 = p->source;
	s->reject = p->reject;
	s->reject_arg = p->reject_arg;
	s->auth_limit = p->auth_limit;
	s->auth_arg = p->auth_arg;
	s->storage = p->storage;
	s->storage_arg = p->storage_arg;
	s->memory = p->memory;
	s->memory_arg = p->memory_arg;
	s->spill = p->spill;
	s->spill_arg = p->spill_arg;
	s->spill_window = p->spill ? p->spill_window : 0;
	s->keep = SIZE_MAX;
	s->hdr_end = SIZE_MAX;
	s->rcpt_check = p->rcpt_check;
	s->rcpt_arg = p->rcpt_arg;
	s->hard_max_size = p->max_message_size;
	s->hard_max_rcpt = p->max_rcpt;
	s->conn_id = p->conn_id;
	s->tls_available = p->tls_available;
	s->tls_active = p->tls_active;
	snprintf(s->hostname, sizeof(s->hostname), "%s",
		 p->hostname ? p->hostname : g->host_name ? g->host_name : "localhost");

	if (p->peer && p->peer->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)p->peer;
		memcpy(&s->peer, in, sizeof(*in));
		inet_ntop(AF_INET, &in->sin_addr, s->client_ip, sizeof(s->client_ip));
		s->have_peer = true;
	} else if (p->peer && p->peer->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)p->peer;
		memcpy(&s->peer, in6, sizeof(*in6));
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12],
				  s->client_ip, sizeof(s->client_ip));
		else
			inet_ntop(AF_INET6, &in6->sin6_addr, s->client_ip,
				  sizeof(s->client_ip));
		s->have_peer = true;
	}
	if (s->have_peer)
		snprintf(s->ip_literal, sizeof(s->ip_literal), "[%s%s]",
			 strchr(s->client_ip, ':') ? "IPv6:" : "", s->client_ip);

	s->mail_from = s->envid = NO_STR;
	s->body_off = HEADROOM;
	reset_transaction(s);

	if (!s->src->smtp_service) {
		sb_reset(&s->scratch);
		sb_printf(&s->scratch, "521 5.3.2 %s does not accept mail", s->hostname);
		add_line(out, s->scratch.buf);
		report(s, SMTP_REJECT_CONNECTION, s->scratch.buf, NULL);
		s->st = ST_CLOSED;
		*ev = SMTP_EV_CLOSE;
		return s;
	}
	sb_adds(out, "220 ");
	sb_adds(out, s->hostname);
	sb_adds(out, " ESMTP\r\n");
	s->st = ST_CMD;
	*ev = SMTP_EV_NONE;
	return s;
}

enum smtp_event smtp_session_input(struct smtp_session *s, const char *buf,
				   size_t len, size_t *consumed,
				   struct strbuf *out)
{
	const char *p = buf, *end = buf + len;
	enum smtp_event ev = SMTP_EV_NONE;
	unsigned budget = SMTP_SESSION_CMD_BUDGET;

	BUG_ON(s->st == ST_WAIT_RESULT);
	if (s->st == ST_CLOSED) {
		*consumed = 0;
		return SMTP_EV_CLOSE;
	}
	while (p < end && ev == SMTP_EV_NONE) {
		switch (s->st) {
		case ST_DATA:
			p = data_feed(s, p, end, out, &ev);
			break;
		case ST_BDAT:
			p = bdat_feed(s, p, end, out, &ev);
			break;
		case ST_CLOSED:
		case ST_WAIT_RESULT:
			BUG("fed in state %d", (int)s->st);	/* left the loop through ev already */
			break;
		default:
			if (budget == 0) {
				ev = SMTP_EV_YIELD;
				break;
			}
			p = line_feed(s, p, end, out, &ev, &budget);
			break;
		}
	}
	if (ev == SMTP_EV_STARTTLS)
		p = end;	/* RFC 3207 6: plaintext after STARTTLS is dropped */
	*consumed = (size_t)(p - buf);
	return ev;
}

const struct smtp_message *smtp_session_message(struct smtp_session *s)
{
	return s->st == ST_WAIT_RESULT ? &s->msg : NULL;
}

void *smtp_session_take_body(struct smtp_session *s)
{
	if (s->st != ST_WAIT_RESULT || !s->body)
		return NULL;
	void *b = s->body;
	mem_ok(s, -(int64_t)s->body_cap);	/* the caller's memory now */
	s->body = NULL;
	s->body_cap = 0;
	return b;
}

void smtp_session_message_result(struct smtp_session *s, int status,
				 const char *queue_id, struct strbuf *out)
{
	if (s->st == ST_CLOSED) {	/* timed out while the spool worked */
		reset_transaction(s);
		return;
	}
	BUG_ON(s->st != ST_WAIT_RESULT);
	s->st = ST_CMD;
	if (status == 0) {
		sb_adds(out, "250 2.0.0 Ok: queued");
		if (queue_id && *queue_id) {
			sb_adds(out, " as ");
			sb_adds(out, queue_id);
		}
		sb_add(out, "\r\n", 2);
	} else if (status == -ENOSPC) {
		fail(s, out, SMTP_REJECT_MESSAGE, false,
		     STORAGE_REPLY, NULL);
	} else if (status == -EAGAIN) {
		fail(s, out, SMTP_REJECT_MESSAGE, false,
		     "451 4.3.2 Error: system busy, try again later", NULL);
	} else {
		fail(s, out, SMTP_REJECT_MESSAGE, false,
		     "451 4.3.0 Error: local error in processing", NULL);
	}
	/* the body is the driver's now, or ours to reuse */
	reset_transaction(s);
}

void smtp_session_tls_started(struct smtp_session *s)
{
	s->tls_active = true;
	s->helo_seen = false;
	s->esmtp = false;
	sb_reset(&s->helo);
	/* RFC 3207 4.2: forget all the client said before the handshake */
	s->authed = false;
	sb_reset(&s->auth_user);
	s->src = s->src0;
	sb_reset(&s->line);
	s->discarding = false;
	reset_transaction(s);
	s->st = ST_CMD;
}

void smtp_session_timeout(struct smtp_session *s, struct strbuf *out)
{
	if (s->st == ST_CLOSED)
		return;
	close_421(s, out, "4.4.2", "Error: timeout exceeded");
}

bool smtp_session_greeted(const struct smtp_session *s)
{
	return s->greeted;
}

bool smtp_session_in_line(const struct smtp_session *s)
{
	return (s->st == ST_CMD || s->st == ST_AUTH_PLAIN ||
		s->st == ST_AUTH_LOGIN_USER || s->st == ST_AUTH_LOGIN_PASS) &&
	       (s->line.len || s->discarding);
}

bool smtp_session_in_body(const struct smtp_session *s)
{
	return s->st == ST_DATA || s->st == ST_BDAT;
}

void smtp_session_free(struct smtp_session *s)
{
	if (!s)
		return;
	sb_free(&s->line);
	sb_free(&s->helo);
	sb_free(&s->auth_user);
	if (s->auth_tmp.buf)
		explicit_bzero(s->auth_tmp.buf, s->auth_tmp.cap);
	sb_free(&s->auth_tmp);
	sb_free(&s->pool);
	sb_free(&s->scratch);
	free(s->rcpts);
	free(s->pub);
	body_drop(s);
	free(s);
}
