/*
 * dsn.c - composes RFC 3464 delivery status notifications (see dsn.h).
 *
 * Pure and reentrant: no I/O, no static mutable state; any thread.
 * Strategy: validate everything first (so an error leaves out untouched),
 * render the notification and the report into scratch buffers, pick a
 * boundary that occurs in none of the parts, then append the message.
 * The returned original is copied once, straight into out.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/util.h"

#include "engine/dsn.h"

#define LINE_SOFT	78	/* RFC 5322 SHOULD */
#define TEXT_WIDTH	76	/* the human part, leaving room for quoting */
#define LINE_HARD	998	/* RFC 5322 MUST */
#define CHUNK_MAX	900	/* a word longer than this is split so no line passes LINE_HARD */
#define ADDR_MAX	256	/* RFC 5321 path limit */
#define HOST_MAX	255
#define TEXT_MAX	4096	/* a reply or reason beyond this is cut: a DSN is not an archive */
#define ENVID_MAX	100	/* RFC 3461 4.4 */
#define ORCPT_MAX	500	/* RFC 3461 4.2 */
#define MSGID_MAX	250
#define FIELD_MAX	990

struct ctx {
	const struct dsn_params *p;
	bool global;		/* an address needs the RFC 6533 utf-8 type */
	const char *ret;	/* the returned bytes (whole original or header section) */
	size_t ret_len;
	bool ret_full;		/* message/rfc822 rather than headers */
	bool too_big;		/* RET=FULL asked for but over return_max */
	bool hdr_cut;		/* header section longer than DSN_HEADERS_MAX */
	bool ret_8bit;
	char msgid[MSGID_MAX + 1];	/* the original's Message-ID, "" if none */
	struct strbuf human;	/* part 1 */
	struct strbuf report;	/* part 2 */
};

UTIL_PRINTF(3, 4)
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* ---- small predicates and encoders -------------------------------- */

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static bool has_ctl(const char *s)
{
	for (; *s; s++)
		if (is_ctl((unsigned char)*s))
			return true;
	return false;
}

/* utf8_decode - length of the valid UTF-8 sequence at s (with *cp), 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	uint32_t c = s[0], min;
	size_t len;

	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if ((c & 0xe0) == 0xc0) {
		len = 2, c &= 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		len = 3, c &= 0x0f, min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		len = 4, c &= 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

static bool valid_utf8(const char *s, size_t n)
{
	uint32_t cp;

	for (size_t i = 0; i < n;) {
		size_t l = utf8_decode((const unsigned char *)s + i, n - i, &cp);

		if (!l)
			return false;
		i += l;
	}
	return true;
}

enum addr_enc {
	ENC_ASCII,	/* for the human part: non-ASCII as \x{HEX} */
	ENC_UNITEXT,	/* RFC 6533 utf-8-addr-unitext: '+' '=' '\' too */
	ENC_UTF8_KEEP,	/* already utf-8 typed: only repair invalid octets */
};

/* add_addr - an address in one of the encodings above; invalid UTF-8 becomes U+FFFD. */
static void add_addr(struct strbuf *sb, const char *s, enum addr_enc enc)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		uint32_t cp;
		size_t l = utf8_decode((const unsigned char *)s + i, n - i, &cp);

		if (!l) {
			sb_adds(sb, "\\x{FFFD}");
			i++;
			continue;
		}
		if (c < 0x80 && !is_ctl(c) &&
		    !(enc == ENC_UNITEXT && (c == ' ' || c == '+' || c == '=' || c == '\\')))
			sb_addc(sb, (char)c);
		else if (c >= 0x80 && enc != ENC_ASCII)
			sb_add(sb, s + i, l);
		else
			sb_printf(sb, "\\x{%X}", (unsigned)cp);
		i += l;
	}
}

/*
 * add_text - text as single-space separated printable ASCII: whitespace
 * runs (CR LF of a multi-line reply included) become one space, other
 * controls and 8-bit octets become '?'.  Cut at TEXT_MAX with "...".
 */
static void add_text(struct strbuf *sb, const char *s)
{
	size_t start = sb->len;
	bool space = true;	/* drops leading whitespace */

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (sb->len - start >= TEXT_MAX) {
			sb_adds(sb, "...");
			return;
		}
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			if (!space)
				sb_addc(sb, ' ');
			space = true;
			continue;
		}
		sb_addc(sb, is_ctl(c) || c >= 0x80 ? '?' : (char)c);
		space = false;
	}
	if (sb->len > start && sb->buf[sb->len - 1] == ' ')
		sb->buf[--sb->len] = '\0';
}

static void text_of(struct strbuf *sb, const char *s)
{
	sb_reset(sb);
	add_text(sb, s);
}

/*
 * next_word - the next word of single-space text at *s, split into pieces
 * of at most CHUNK_MAX so no generated line can pass LINE_HARD.
 */
static bool next_word(const char **s, const char **w, size_t *wlen)
{
	while (**s == ' ')
		(*s)++;
	if (!**s)
		return false;
	size_t n = strcspn(*s, " ");

	*w = *s;
	*wlen = n < CHUNK_MAX ? n : CHUNK_MAX;
	*s += *wlen;
	return true;
}

/* add_field - "Name: value" folded at spaces before LINE_SOFT (RFC 5322 2.2.3), CRLF. */
static void add_field(struct strbuf *sb, const char *name, const char *value)
{
	size_t col = strlen(name) + 1, words = 0, wlen;
	const char *w;

	sb_adds(sb, name);
	sb_addc(sb, ':');
	while (next_word(&value, &w, &wlen)) {
		if (words && col + 1 + wlen > LINE_SOFT) {
			sb_adds(sb, "\r\n");
			col = 0;
		}
		sb_addc(sb, ' ');
		sb_add(sb, w, wlen);
		col += 1 + wlen;
		words++;
	}
	sb_adds(sb, "\r\n");
}

/* add_wrapped - text filled to TEXT_WIDTH, every line starting with indent, CRLF. */
static void add_wrapped(struct strbuf *sb, const char *indent, const char *text)
{
	size_t ilen = strlen(indent), col = 0, wlen;
	const char *w;

	while (next_word(&text, &w, &wlen)) {
		if (col && col + 1 + wlen > TEXT_WIDTH) {
			sb_adds(sb, "\r\n");
			col = 0;
		}
		if (!col) {
			sb_adds(sb, indent);
			col = ilen;
		} else {
			sb_addc(sb, ' ');
			col++;
		}
		sb_add(sb, w, wlen);
		col += wlen;
	}
	if (col)
		sb_adds(sb, "\r\n");
}

static const char *const wday[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
				   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* 1970 .. 9999: what RFC 5322 dates and gmtime_r both express */
static bool valid_time(int64_t t)
{
	return t >= 0 && t <= INT64_C(253402300799);
}

/* add_date - RFC 5322 date-time in UTC, spelled without the locale. */
static void add_date(struct strbuf *sb, int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;

	BUG_ON(!gmtime_r(&tt, &tm));
	sb_printf(sb, "%s, %02d %s %04d %02d:%02d:%02d +0000", wday[tm.tm_wday],
		  tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
		  tm.tm_min, tm.tm_sec);
}

static void add_date_field(struct strbuf *sb, const char *name, int64_t t)
{
	sb_printf(sb, "%s: ", name);
	add_date(sb, t);
	sb_adds(sb, "\r\n");
}

/* host names and IP literals as they may appear after "dns;" */
static bool valid_host(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > HOST_MAX)
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || strchr("-._:[]", c)))
			return false;
	}
	return true;
}

/* add_host - a host name as is, an IP address in brackets as RFC 5321 literals are. */
static void add_host(struct strbuf *sb, const char *host)
{
	unsigned char bin[16];
	bool ip = inet_pton(AF_INET, host, bin) == 1 || inet_pton(AF_INET6, host, bin) == 1;

	sb_printf(sb, ip ? "[%s]" : "%s", host);
}

static void add_mta(struct strbuf *sb, const char *name, const char *host)
{
	sb_printf(sb, "%s: dns; ", name);
	add_host(sb, host);
	sb_adds(sb, "\r\n");
}

/* RFC 3463: class "." subject "." detail */
static bool valid_status(const char *s)
{
	if (!(s[0] == '2' || s[0] == '4' || s[0] == '5') || s[1] != '.')
		return false;
	s += 2;
	for (int part = 0; part < 2; part++) {
		size_t d = strspn(s, "0123456789");

		if (d < 1 || d > 3)
			return false;
		s += d;
		if (part == 0 && *s++ != '.')
			return false;
	}
	return *s == '\0';
}

/* ---- the original -------------------------------------------------- */

/* header_len - the original's header section: up to the first empty line, or all of it. */
static size_t header_len(const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		if (s[i] == '\n' || (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n'))
			return i;
		const char *nl = memchr(s + i, '\n', n - i);

		if (!nl)
			return n;
		i = (size_t)(nl - s) + 1;
	}
	return n;
}

/*
 * header_cut - where to cut a header section longer than max: the last
 * field start within max (so no field is returned half), else the last
 * line start, else max itself.
 */
static size_t header_cut(const char *s, size_t max)
{
	size_t line = 0;

	for (size_t i = max; i > 0; i--) {
		if (s[i - 1] != '\n')
			continue;
		if (s[i] != ' ' && s[i] != '\t')
			return i;
		if (!line)
			line = i;
	}
	return line ? line : max;
}

/* find_msgid - the first Message-ID field's "<id>" into out, "" if none or odd. */
static void find_msgid(const char *s, size_t n, char *out)
{
	static const char name[] = "message-id:";
	const size_t nl = sizeof(name) - 1;

	out[0] = '\0';
	for (size_t i = 0; i < n;) {
		const char *eol = memchr(s + i, '\n', n - i);
		size_t end = eol ? (size_t)(eol - s) + 1 : n;

		if (end - i > nl && strncasecmp(s + i, name, nl) == 0) {
			/* the value, unfolded: through continuation lines */
			size_t v = i + nl, ve = end;

			while (ve < n && (s[ve] == ' ' || s[ve] == '\t')) {
				const char *e2 = memchr(s + ve, '\n', n - ve);

				ve = e2 ? (size_t)(e2 - s) + 1 : n;
			}
			const char *lt = memchr(s + v, '<', ve - v);

			if (!lt)
				return;
			size_t a = (size_t)(lt - s), b = a + 1;

			while (b < ve && s[b] != '>' && s[b] != '<' &&
			       (unsigned char)s[b] > ' ' && (unsigned char)s[b] < 0x7f)
				b++;
			if (b < ve && s[b] == '>' && b - a >= 4 && b - a < MSGID_MAX &&
			    memchr(s + a, '@', b - a)) {
				memcpy(out, s + a, b - a + 1);
				out[b - a + 1] = '\0';
			}
			return;
		}
		i = end;
	}
}

/* add_run - s[0..n) with each CR (none of them ends a line here) made a space. */
static void add_run(struct strbuf *sb, const char *s, size_t n)
{
	while (n) {
		const char *cr = memchr(s, '\r', n);
		size_t run = cr ? (size_t)(cr - s) : n;

		sb_add(sb, s, run);
		if (run == n)
			return;
		sb_addc(sb, ' ');
		s += run + 1;
		n -= run + 1;
	}
}

/*
 * add_lines - s with every line end made CRLF (LF alone too) and a CR
 * that ends no line made a space, so the output has no bare CR or LF.
 * fold: a line longer than FIELD_MAX is folded before its last blank
 * within the limit, or by inserting one (header sections only: a returned
 * message/rfc822 keeps its lines).
 */
static void add_lines(struct strbuf *sb, const char *s, size_t n, bool fold)
{
	for (size_t i = 0; i < n;) {
		const char *nl = memchr(s + i, '\n', n - i);
		size_t e = nl ? (size_t)(nl - s) : n, next = nl ? e + 1 : n;

		if (e > i && s[e - 1] == '\r')
			e--;
		while (fold && e - i > FIELD_MAX) {
			size_t m = i + FIELD_MAX;

			while (m > i + 1 && s[m] != ' ' && s[m] != '\t')
				m--;
			if (m > i + 1) {
				add_run(sb, s + i, m - i);
				sb_adds(sb, "\r\n");	/* the blank at m continues the field */
			} else {
				m = i + FIELD_MAX;
				add_run(sb, s + i, m - i);
				sb_adds(sb, "\r\n ");
			}
			i = m;
		}
		add_run(sb, s + i, e - i);
		sb_adds(sb, "\r\n");
		i = next;
	}
}

/* ---- parts ---------------------------------------------------------- */

static const char *rcpt_type(const char *addr)
{
	return mem_has_8bit(addr, strlen(addr)) ? "utf-8" : "rfc822";
}

/*
 * add_orcpt - Original-Recipient as "addr-type;addr" (RFC 3464 2.3.1):
 * "rfc822;" added when the client gave no type, a non-ASCII rfc822
 * address retyped utf-8 (RFC 6533).  Omitted when it cannot be written.
 */
static void add_orcpt(struct strbuf *sb, const char *orcpt)
{
	struct strbuf v = { 0 };
	size_t tl = strspn(orcpt, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
	const char *addr = orcpt;
	char type[24] = "rfc822";

	if (tl > 0 && tl < sizeof(type) && orcpt[tl] == ';') {
		memcpy(type, orcpt, tl);
		type[tl] = '\0';
		addr = orcpt + tl + 1;
	}
	addr += strspn(addr, " \t");
	if (!*addr || has_ctl(addr) || strlen(addr) > ORCPT_MAX)
		return;
	bool eight = mem_has_8bit(addr, strlen(addr));

	if (str_ieq(type, "utf-8")) {
		sb_adds(&v, "utf-8;");
		add_addr(&v, addr, ENC_UTF8_KEEP);
	} else if (eight && str_ieq(type, "rfc822")) {
		sb_adds(&v, "utf-8;");
		add_addr(&v, addr, ENC_UNITEXT);
	} else if (!eight) {
		sb_printf(&v, "%s;%s", type, addr);
	}
	if (v.len && v.len + sizeof("Original-Recipient: ") <= FIELD_MAX)
		sb_printf(sb, "Original-Recipient: %s\r\n", sb_str(&v));
	sb_free(&v);
}

static bool orcpt_needs_global(const char *orcpt)
{
	return orcpt && mem_has_8bit(orcpt, strlen(orcpt));
}

/* build_report - part 2: per-message fields, then a block per recipient. */
static void build_report(struct ctx *c)
{
	const struct dsn_params *p = c->p;
	struct strbuf *sb = &c->report, t = { 0 };

	sb_printf(sb, "Reporting-MTA: dns; %s\r\n", p->reporting_mta);
	if (p->envid && *p->envid) {
		text_of(&t, p->envid);
		if (t.len > ENVID_MAX)
			t.buf[t.len = ENVID_MAX] = '\0';
		if (t.len)
			sb_printf(sb, "Original-Envelope-Id: %s\r\n", t.buf);
	}
	if (p->received_from_mta)
		add_mta(sb, "Received-From-MTA", p->received_from_mta);
	if (p->arrival)
		add_date_field(sb, "Arrival-Date", p->arrival);

	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct dsn_rcpt *r = &p->rcpt[i];
		const char *type = rcpt_type(r->final_rcpt);

		sb_adds(sb, "\r\n");
		if (r->orcpt)
			add_orcpt(sb, r->orcpt);
		sb_printf(sb, "Final-Recipient: %s;", type);
		add_addr(sb, r->final_rcpt, *type == 'u' ? ENC_UNITEXT : ENC_UTF8_KEEP);
		sb_printf(sb, "\r\nAction: %s\r\nStatus: %s\r\n",
			  p->kind == DSN_DELAY ? "delayed" : "failed", r->status);
		if (r->remote_mta)
			add_mta(sb, "Remote-MTA", r->remote_mta);
		if (r->diag || r->local_reason) {
			/* a local decision is no SMTP reply: its own diagnostic type (RFC 3464 2.3.6) */
			sb_reset(&t);
			sb_adds(&t, r->diag ? "smtp; " : "X-coremta; ");
			add_text(&t, r->diag ? r->diag : r->local_reason);
			add_field(sb, "Diagnostic-Code", sb_str(&t));
		}
		if (r->last_attempt)
			add_date_field(sb, "Last-Attempt-Date", r->last_attempt);
		if (p->kind == DSN_DELAY && r->will_retry_until)
			add_date_field(sb, "Will-Retry-Until", r->will_retry_until);
	}
	sb_free(&t);
}

/* build_human - part 1: ASCII prose for the sender. */
static void build_human(struct ctx *c)
{
	const struct dsn_params *p = c->p;
	struct strbuf *sb = &c->human, t = { 0 };

	sb_printf(sb, "This is the mail delivery system at %s.\r\n\r\n", p->reporting_mta);
	if (p->kind == DSN_DELAY)
		add_wrapped(sb, "", "Your message has not yet been delivered to the "
			    "recipients listed below. Delivery is still being "
			    "retried; you do not need to send the message again.");
	else
		add_wrapped(sb, "", "Your message could not be delivered to the "
			    "recipients listed below. Delivery has been given up; "
			    "the message will not be retried.");

	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct dsn_rcpt *r = &p->rcpt[i];

		sb_reset(&t);
		sb_addc(&t, '<');
		add_addr(&t, r->final_rcpt, ENC_ASCII);
		sb_adds(&t, ">:");
		sb_adds(sb, "\r\n");
		add_wrapped(sb, "", sb_str(&t));
		if (mem_has_8bit(r->final_rcpt, strlen(r->final_rcpt)))
			add_wrapped(sb, "    ", "(The address contains non-ASCII "
				    "characters, shown here as \\x{HEX} code points.)");
		sb_reset(&t);
		if (r->diag) {
			if (r->remote_mta)
				sb_printf(&t, "host %s said: ", r->remote_mta);
			else
				sb_adds(&t, "the receiving server said: ");
			add_text(&t, r->diag);
		} else {
			add_text(&t, r->local_reason ? r->local_reason : "");
			if (!t.len)
				sb_printf(&t, "delivery status %s", r->status);
			if (r->remote_mta)
				sb_printf(&t, " (last host tried: %s)", r->remote_mta);
		}
		add_wrapped(sb, "    ", sb_str(&t));
		if (p->kind == DSN_DELAY && r->will_retry_until) {
			sb_reset(&t);
			sb_adds(&t, "Delivery will be retried until ");
			add_date(&t, r->will_retry_until);
			sb_adds(&t, ".");
			add_wrapped(sb, "    ", sb_str(&t));
		}
	}

	sb_reset(&t);
	if (p->arrival) {
		sb_adds(&t, "The message was received on ");
		add_date(&t, p->arrival);
		if (p->received_from_mta) {
			sb_adds(&t, " from ");
			add_host(&t, p->received_from_mta);
		}
		sb_adds(&t, ".");
	}
	if (p->envid && *p->envid) {
		sb_adds(&t, " Its envelope id is ");
		add_text(&t, p->envid);
		sb_adds(&t, ".");
	}
	if (c->ret) {
		if (p->plain_text)
			sb_adds(&t, " The headers of the original message follow the report below.");
		else if (c->ret_full)
			sb_adds(&t, " The original message is attached.");
		else if (c->too_big)
			sb_printf(&t, " The original message (%zu bytes) is too large to "
				  "return in full; its headers are attached.", p->original_len);
		else
			sb_adds(&t, " The headers of the original message are attached.");
		if (c->hdr_cut)
			sb_printf(&t, " Its header section was cut at %u KiB.",
				  DSN_HEADERS_MAX / 1024);
	}
	if (t.len) {
		sb_adds(sb, "\r\n");
		add_wrapped(sb, "", sb_str(&t));
	}
	sb_free(&t);
}

/* ---- validation ----------------------------------------------------- */

static int check_addr(const char *what, const char *s, char *err, size_t errlen)
{
	if (!s || !*s)
		return fail(err, errlen, "dsn: %s is missing or empty", what);
	if (has_ctl(s))	/* a space is legal in a quoted local part */
		return fail(err, errlen, "dsn: %s contains a control character", what);
	if (strlen(s) > ADDR_MAX)
		return fail(err, errlen, "dsn: %s is longer than %d octets", what, ADDR_MAX);
	if (mem_has_8bit(s, strlen(s))) {
		/* both encodings must fit one field line */
		struct strbuf t = { 0 }, u = { 0 };

		add_addr(&t, s, ENC_UNITEXT);
		add_addr(&u, s, ENC_ASCII);
		size_t len = t.len > u.len ? t.len : u.len;

		sb_free(&t);
		sb_free(&u);
		if (len > CHUNK_MAX)
			return fail(err, errlen, "dsn: %s is too long once encoded", what);
	}
	return 0;
}

static int check_params(const struct dsn_params *p, struct strbuf *out, char *err, size_t errlen)
{
	if (!p || !out)
		return fail(err, errlen, "dsn: no parameters or output");
	if (p->kind != DSN_FAILURE && p->kind != DSN_DELAY)
		return fail(err, errlen, "dsn: unknown kind %d", (int)p->kind);
	if (!p->reporting_mta || !valid_host(p->reporting_mta))
		return fail(err, errlen, "dsn: reporting_mta is missing or not a host name");
	if (check_addr("to (the original MAIL FROM)", p->to, err, errlen))
		return -EINVAL;
	if (p->from && check_addr("from", p->from, err, errlen))
		return -EINVAL;
	if (p->received_from_mta && !valid_host(p->received_from_mta))
		return fail(err, errlen, "dsn: received_from_mta is not a host name or address");
	if (!valid_time(p->now) || !valid_time(p->arrival))
		return fail(err, errlen, "dsn: now or arrival is out of range");
	if (!p->original && p->original_len)
		return fail(err, errlen, "dsn: original is NULL but original_len is %zu",
			    p->original_len);
	if (!p->nrcpt || !p->rcpt)
		return fail(err, errlen, "dsn: no recipients");
	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct dsn_rcpt *r = &p->rcpt[i];
		char what[48];

		snprintf(what, sizeof(what), "recipient %zu", i);
		if (check_addr(what, r->final_rcpt, err, errlen))
			return -EINVAL;
		if (!r->status || !valid_status(r->status))
			return fail(err, errlen, "dsn: recipient %zu: status \"%s\" is not "
				    "an RFC 3463 code", i, r->status ? r->status : "(null)");
		if (r->remote_mta && !valid_host(r->remote_mta))
			return fail(err, errlen, "dsn: recipient %zu: remote_mta is not a "
				    "host name or address", i);
		if (!valid_time(r->last_attempt) || !valid_time(r->will_retry_until))
			return fail(err, errlen, "dsn: recipient %zu: a time is out of range", i);
	}
	return 0;
}

/* ---- assembly ------------------------------------------------------- */

/* splitmix64: spreads a counter into bits nobody would type by chance */
static uint64_t mix64(uint64_t x)
{
	x += UINT64_C(0x9e3779b97f4a7c15);
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

static bool occurs(const struct strbuf *sb, const char *needle)
{
	return sb->len && memmem(sb->buf, sb->len, needle, strlen(needle));
}

/*
 * choose_boundary - deterministic from unique; a candidate found in any
 * part is replaced by the next.  Finite text holds finitely many such
 * strings, so the loop ends.
 */
static void choose_boundary(const struct ctx *c, char *b, size_t blen)
{
	for (uint64_t k = 0;; k++) {
		uint64_t a = mix64(c->p->unique ^ mix64(k)), d = mix64(a);

		snprintf(b, blen, "=_coremta-dsn-%016llx%016llx",
			 (unsigned long long)a, (unsigned long long)d);
		if (!occurs(&c->human, b) && !occurs(&c->report, b) &&
		    !(c->ret && memmem(c->ret, c->ret_len, b, strlen(b))))
			return;
	}
}

static void add_top_headers(const struct ctx *c, struct strbuf *out)
{
	const struct dsn_params *p = c->p;

	if (p->from)
		sb_printf(out, "From: Mail Delivery System <%s>\r\n", p->from);
	else
		sb_printf(out, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n",
			  p->reporting_mta);
	sb_printf(out, "To: %s\r\n", p->to);
	sb_printf(out, "Subject: %s\r\n", p->kind == DSN_DELAY ?
		  "Delayed Mail (still being retried)" :
		  "Undelivered Mail Returned to Sender");
	add_date_field(out, "Date", p->now);
	sb_printf(out, "Message-ID: <%lld.%016llx.dsn@%s>\r\n", (long long)p->now,
		  (unsigned long long)mix64(p->unique), p->reporting_mta);
	if (c->msgid[0])
		sb_printf(out, "In-Reply-To: %s\r\nReferences: %s\r\n", c->msgid, c->msgid);
	sb_adds(out, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
}

static void add_returned(const struct ctx *c, struct strbuf *out)
{
	add_lines(out, c->ret, c->ret_len, !c->ret_full);
}

static void build_plain(const struct ctx *c, struct strbuf *out)
{
	bool eight = c->global || c->ret_8bit;
	const char *charset = !eight ? "us-ascii" :
		valid_utf8(c->ret ? c->ret : "", c->ret ? c->ret_len : 0) ? "utf-8" :
		"unknown-8bit";

	add_top_headers(c, out);
	sb_printf(out, "Content-Type: text/plain; charset=%s\r\n"
		  "Content-Transfer-Encoding: %s\r\n\r\n", charset, eight ? "8bit" : "7bit");
	sb_add(out, c->human.buf, c->human.len);
	sb_adds(out, "\r\n----- Delivery report -----\r\n\r\n");
	sb_add(out, c->report.buf, c->report.len);
	if (c->ret) {
		sb_adds(out, "\r\n----- Headers of the original message -----\r\n\r\n");
		add_returned(c, out);
	}
}

static void build_mime(const struct ctx *c, struct strbuf *out)
{
	const char *rtype = c->global ? "global-delivery-status" : "delivery-status";
	bool eight = c->global || c->ret_8bit;
	char b[64];

	choose_boundary(c, b, sizeof(b));
	add_top_headers(c, out);
	sb_printf(out, "Content-Type: multipart/report; report-type=%s;\r\n"
		  "\tboundary=\"%s\"\r\n"
		  "Content-Transfer-Encoding: %s\r\n\r\n"
		  "This is a MIME-encapsulated message.\r\n\r\n", rtype, b,
		  eight ? "8bit" : "7bit");

	sb_printf(out, "--%s\r\nContent-Description: Notification\r\n"
		  "Content-Type: text/plain; charset=us-ascii\r\n"
		  "Content-Transfer-Encoding: 7bit\r\n\r\n", b);
	sb_add(out, c->human.buf, c->human.len);

	sb_printf(out, "\r\n--%s\r\nContent-Description: Delivery report\r\n"
		  "Content-Type: message/%s\r\n", b, rtype);
	if (c->global)
		sb_adds(out, "Content-Transfer-Encoding: 8bit\r\n");
	sb_adds(out, "\r\n");
	sb_add(out, c->report.buf, c->report.len);

	if (c->ret) {
		const char *what = c->p->kind == DSN_DELAY ? "Delayed" : "Undelivered";

		sb_printf(out, "\r\n--%s\r\nContent-Description: %s Message%s\r\n"
			  "Content-Type: %s\r\n", b, what, c->ret_full ? "" : " Headers",
			  c->ret_full ? "message/rfc822" : "text/rfc822-headers");
		if (c->ret_8bit)
			sb_adds(out, "Content-Transfer-Encoding: 8bit\r\n");
		sb_adds(out, "\r\n");
		add_returned(c, out);
	}
	sb_printf(out, "\r\n--%s--\r\n", b);
}

int dsn_build(const struct dsn_params *p, struct strbuf *out, char *err, size_t errlen)
{
	struct ctx c = { .p = p };
	int rc = check_params(p, out, err, errlen);

	if (rc)
		return rc;
	for (size_t i = 0; i < p->nrcpt; i++)
		if (mem_has_8bit(p->rcpt[i].final_rcpt, strlen(p->rcpt[i].final_rcpt)) ||
		    orcpt_needs_global(p->rcpt[i].orcpt))
			c.global = true;

	if (p->original_len) {
		size_t max = p->return_max ? p->return_max : DSN_RETURN_MAX_DEFAULT;
		size_t hl = header_len(p->original, p->original_len);

		find_msgid(p->original, hl, c.msgid);
		c.ret_full = p->return_full && !p->plain_text && p->original_len <= max;
		c.too_big = p->return_full && !p->plain_text && !c.ret_full;
		c.ret = p->original;
		c.ret_len = c.ret_full ? p->original_len : hl;
		if (!c.ret_full && hl > DSN_HEADERS_MAX) {
			c.ret_len = header_cut(p->original, DSN_HEADERS_MAX);
			c.hdr_cut = true;
		}
		c.ret_8bit = mem_has_8bit(c.ret, c.ret_len);
	}

	build_human(&c);
	build_report(&c);
	if (p->plain_text)
		build_plain(&c, out);
	else
		build_mime(&c, out);
	sb_free(&c.human);
	sb_free(&c.report);
	return 0;
}
