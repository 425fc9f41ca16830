/*
 * services/report.c - inbound bounce and complaint reports parsed into a
 * struct report (services/report.h).  Pure code, any thread.
 *
 * The message is untrusted: every scan is bounded by the slice it walks,
 * MIME nesting by MAX_DEPTH, parts by MAX_PARTS and fields by MAX_FIELDS,
 * so a hostile report costs at most a few passes over its bytes.
 *
 * Order of recognition: an ARF feedback-report part, then a DSN
 * delivery-status part, then a JMRP attachment (an rfc822 original
 * carrying X-HmXmrOriginalRecipient), then the text forms of bounces.
 * A text form counts only when the notice looks like one (a
 * MAILER-DAEMON/postmaster sender, a bounce subject, or a known MTA's
 * wording) and names a recipient: an out-of-office reply is no bounce.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "util/util.h"

#include "services/report.h"

#define MAX_DEPTH 5
#define MAX_PARTS 64
#define MAX_FIELDS 256
#define MAX_RCPTS 64
#define MAX_DIAG 900

struct slice {
	const char *p;
	size_t n;
};

struct fields {
	struct report_field *f;
	size_t n;
};

struct part {
	const char *type;	/* lower case, "text/plain" when absent */
	const char *boundary;
	const char *report_type;
	struct fields hdr;
	struct slice body;	/* decoded */
};

struct walk {
	struct arena *a;
	struct part parts[MAX_PARTS];
	size_t nparts;
};

/* ------------------------------------------------------------------ */
/* Lines and fields.                                                    */

/* line_next - the line at *s (without its EOL); advances *s past it */
static bool line_next(struct slice *s, struct slice *line)
{
	const char *nl;

	if (!s->n)
		return false;
	nl = memchr(s->p, '\n', s->n);
	line->p = s->p;
	line->n = nl ? (size_t)(nl - s->p) : s->n;
	s->p += line->n + (nl ? 1 : 0);
	s->n -= line->n + (nl ? 1 : 0);
	if (line->n && line->p[line->n - 1] == '\r')
		line->n--;
	return true;
}

static bool blank(struct slice l)
{
	for (size_t i = 0; i < l.n; i++)
		if (!isspace((unsigned char)l.p[i]))
			return false;
	return true;
}

/* trimmed - s without surrounding white space, copied to the arena */
static char *trimmed(struct arena *a, const char *p, size_t n)
{
	while (n && isspace((unsigned char)*p))
		p++, n--;
	while (n && isspace((unsigned char)p[n - 1]))
		n--;
	return arena_strndup(a, p, n);
}

/*
 * parse_fields - "Name: value" lines (RFC 5322 header syntax, folded
 * lines unfolded) up to a blank line or the end; *rest is
 * what follows the blank line.  Lines that are no field are skipped.
 */
static void parse_fields(struct arena *a, struct slice in, struct fields *out,
			 struct slice *rest)
{
	struct slice line;
	struct strbuf val = { 0 };
	const char *name = NULL;
	size_t cap = 0;

	out->f = NULL;
	out->n = 0;
	for (;;) {
		struct slice save = in;
		bool more = line_next(&in, &line);
		bool cont = more && line.n && (line.p[0] == ' ' || line.p[0] == '\t');

		if (name && !cont) {
			if (out->n == cap && cap < MAX_FIELDS) {
				size_t ncap = cap ? cap * 2 : 16;
				struct report_field *nf = arena_alloc(a, ncap * sizeof(*nf));
				if (out->n)
					memcpy(nf, out->f, out->n * sizeof(*nf));
				out->f = nf;
				cap = ncap;
			}
			if (out->n < cap)
				out->f[out->n++] = (struct report_field){
					.name = name,
					.value = trimmed(a, sb_str(&val), val.len),
				};
			name = NULL;
		}
		if (!more || blank(line)) {
			if (rest)
				*rest = more ? in : (struct slice){ save.p + save.n, 0 };
			break;
		}
		if (cont) {
			/* unfolding removes the line break only (RFC 5322 2.2.3) */
			if (name && val.len < 4096)
				sb_add(&val, line.p, line.n);
			continue;
		}
		const char *colon = memchr(line.p, ':', line.n);
		size_t nl = colon ? (size_t)(colon - line.p) : 0;
		bool ok = nl > 0 && nl < 80;
		for (size_t i = 0; ok && i < nl; i++)
			ok = line.p[i] > ' ' && line.p[i] < 0x7f;
		if (!ok)
			continue;
		name = arena_strndup(a, line.p, nl);
		sb_reset(&val);
		sb_add(&val, colon + 1, line.n - nl - 1);
	}
	sb_free(&val);
}

const char *report_field_get(const struct report_field *f, size_t n,
			     const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (str_ieq(f[i].name, name))
			return f[i].value;
	return NULL;
}

static const char *get(const struct fields *fs, const char *name)
{
	return report_field_get(fs->f, fs->n, name);
}

/* ci_find - first case-insensitive occurrence of needle in s, or NULL */
static const char *ci_find(struct slice s, const char *needle)
{
	size_t nn = strlen(needle);

	for (size_t i = 0; nn && i + nn <= s.n; i++)
		if (strncasecmp(s.p + i, needle, nn) == 0)
			return s.p + i;
	return NULL;
}

static bool ci_has(const char *s, const char *needle)
{
	return s && ci_find((struct slice){ s, strlen(s) }, needle);
}

/* ------------------------------------------------------------------ */
/* MIME.                                                                */

/*
 * param - the value of parameter name in a Content-Type value (quoted or
 * not), or NULL.
 */
static const char *param(struct arena *a, const char *v, const char *name)
{
	size_t nl = strlen(name);

	for (const char *p = strchr(v, ';'); p; p = strchr(p + 1, ';')) {
		const char *q = p + 1;
		while (isspace((unsigned char)*q))
			q++;
		if (strncasecmp(q, name, nl) != 0)
			continue;
		q += nl;
		while (isspace((unsigned char)*q))
			q++;
		if (*q != '=')
			continue;
		q++;
		while (isspace((unsigned char)*q))
			q++;
		if (*q == '"') {
			const char *e = strchr(q + 1, '"');
			return e ? arena_strndup(a, q + 1, (size_t)(e - q - 1)) : NULL;
		}
		return arena_strndup(a, q, strcspn(q, "; \t"));
	}
	return NULL;
}

static int hex_val(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* decode - the body as its Content-Transfer-Encoding says, in the arena */
static struct slice decode(struct arena *a, const char *cte, struct slice in)
{
	char *out;
	size_t o = 0;

	if (!cte || (!str_ieq(cte, "base64") && !str_ieq(cte, "quoted-printable")))
		return in;
	out = arena_alloc(a, in.n + 1);
	if (str_ieq(cte, "base64")) {
		unsigned acc = 0;
		int bits = 0;
		for (size_t i = 0; i < in.n; i++) {
			int v = b64_value((unsigned char)in.p[i]);
			if (v < 0)
				continue;
			acc = (acc << 6) | (unsigned)v;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				out[o++] = (char)((acc >> bits) & 0xff);
			}
		}
	} else {
		for (size_t i = 0; i < in.n; i++) {
			if (in.p[i] != '=') {
				out[o++] = in.p[i];
				continue;
			}
			if (i + 2 < in.n && hex_val((unsigned char)in.p[i + 1]) >= 0 &&
			    hex_val((unsigned char)in.p[i + 2]) >= 0) {
				out[o++] = (char)(hex_val((unsigned char)in.p[i + 1]) * 16 +
						  hex_val((unsigned char)in.p[i + 2]));
				i += 2;
			} else if (i + 1 < in.n && (in.p[i + 1] == '\n' || in.p[i + 1] == '\r')) {
				/* soft line break */
				i += in.p[i + 1] == '\r' && i + 2 < in.n && in.p[i + 2] == '\n' ? 2 : 1;
			} else {
				out[o++] = '=';
			}
		}
	}
	return (struct slice){ out, o };
}

/* part_init - a part from its header fields and raw body */
static void part_init(struct arena *a, struct part *pt, const struct fields *hdr,
		      struct slice raw)
{
	const char *ct = get(hdr, "Content-Type");
	size_t tl;

	pt->hdr = *hdr;
	if (ct) {
		tl = strcspn(ct, "; \t");
		char *t = arena_strndup(a, ct, tl);
		str_lower(t);
		pt->type = t;
		pt->boundary = param(a, ct, "boundary");
		pt->report_type = param(a, ct, "report-type");
	} else {
		pt->type = "text/plain";
	}
	pt->body = decode(a, get(hdr, "Content-Transfer-Encoding"), raw);
}

/* boundary_line - is line "--b" or "--b--"? (trailing blanks allowed) */
static int boundary_line(struct slice line, const char *b, size_t bl)
{
	if (line.n < bl + 2 || line.p[0] != '-' || line.p[1] != '-' ||
	    memcmp(line.p + 2, b, bl) != 0)
		return 0;
	struct slice rest = { line.p + bl + 2, line.n - bl - 2 };
	if (rest.n >= 2 && rest.p[0] == '-' && rest.p[1] == '-')
		return 2;
	return blank(rest) ? 1 : 0;
}

/* walk_part - collect the leaves of pt (multiparts are opened) */
static void walk_part(struct walk *w, const struct part *pt, int depth)
{
	if (w->nparts == MAX_PARTS)
		return;
	if (strncmp(pt->type, "multipart/", 10) != 0 || !pt->boundary ||
	    !*pt->boundary || depth >= MAX_DEPTH) {
		w->parts[w->nparts++] = *pt;
		/* the container's report-type is what tells ARF from DSN */
		return;
	}
	size_t bl = strlen(pt->boundary);
	struct slice in = pt->body, line;
	const char *start = NULL;

	while (line_next(&in, &line)) {
		int k = boundary_line(line, pt->boundary, bl);
		if (!k)
			continue;
		if (start) {
			struct slice raw = { start, (size_t)(line.p - start) }, body;
			struct fields hdr;
			struct part child = { 0 };

			parse_fields(w->a, raw, &hdr, &body);
			part_init(w->a, &child, &hdr, body);
			walk_part(w, &child, depth + 1);
			if (w->nparts == MAX_PARTS)
				return;
		}
		if (k == 2)
			return;
		start = in.p;
	}
}

static const struct part *find_part(const struct walk *w, const char *type)
{
	for (size_t i = 0; i < w->nparts; i++)
		if (strcmp(w->parts[i].type, type) == 0)
			return &w->parts[i];
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Addresses and statuses.                                              */

static bool addr_char(char c)
{
	/* c != 0: strchr finds the terminator of its set */
	return isalnum((unsigned char)c) || (c && strchr(".!#$%&'*+/=?^_`{|}~-", c));
}

/*
 * addr_at - the address around the '@' at s[i] (local part and domain of
 * address characters), lower-cased domain, or NULL when it is none.
 */
static char *addr_at(struct arena *a, struct slice s, size_t i)
{
	size_t b = i, e = i + 1;

	while (b > 0 && addr_char(s.p[b - 1]))
		b--;
	while (e < s.n && (isalnum((unsigned char)s.p[e]) || s.p[e] == '.' || s.p[e] == '-'))
		e++;
	while (e > i + 1 && s.p[e - 1] == '.')
		e--;
	if (b == i || e == i + 1 || !memchr(s.p + i + 1, '.', e - i - 1))
		return NULL;
	char *r = arena_strndup(a, s.p + b, e - b);
	str_lower(r + (i - b));
	return r;
}

/* first_addr - the first address in s, or NULL */
static char *first_addr(struct arena *a, struct slice s)
{
	for (size_t i = 0; i < s.n; i++)
		if (s.p[i] == '@') {
			char *r = addr_at(a, s, i);
			if (r)
				return r;
		}
	return NULL;
}

/* typed_addr - "rfc822; a@b" or "<a@b>" to a@b, or NULL */
static char *typed_addr(struct arena *a, const char *v)
{
	if (!v)
		return NULL;
	const char *semi = strchr(v, ';');
	const char *p = semi ? semi + 1 : v;
	return first_addr(a, (struct slice){ p, strlen(p) });
}

/*
 * find_status - the first RFC 3463 code "C.S.D" in s (class 2, 4 or 5,
 * not part of a longer number or an IP), into out; false if none.
 */
static bool find_status(struct slice s, char out[16])
{
	for (size_t i = 0; i + 4 < s.n; i++) {
		char c = s.p[i];
		if ((c != '2' && c != '4' && c != '5') || s.p[i + 1] != '.' ||
		    (i && (isalnum((unsigned char)s.p[i - 1]) || s.p[i - 1] == '.')))
			continue;
		size_t j = i + 2, d1 = 0, d2 = 0;
		while (j < s.n && isdigit((unsigned char)s.p[j]) && d1 < 3)
			j++, d1++;
		if (!d1 || j >= s.n || s.p[j] != '.')
			continue;
		j++;
		while (j < s.n && isdigit((unsigned char)s.p[j]) && d2 < 3)
			j++, d2++;
		if (!d2 || (j < s.n && (isdigit((unsigned char)s.p[j]) ||
					(s.p[j] == '.' && j + 1 < s.n &&
					 isdigit((unsigned char)s.p[j + 1])))))
			continue;
		snprintf(out, 16, "%.*s", (int)(j - i), s.p + i);
		return true;
	}
	return false;
}

/* find_code - the first SMTP reply code ("550 ", "550-", "#550") in s */
static int find_code(struct slice s)
{
	for (size_t i = 0; i + 3 < s.n; i++) {
		if ((s.p[i] != '4' && s.p[i] != '5') ||
		    !isdigit((unsigned char)s.p[i + 1]) ||
		    !isdigit((unsigned char)s.p[i + 2]) ||
		    (i && (isalnum((unsigned char)s.p[i - 1]) || s.p[i - 1] == '.')))
			continue;
		char after = s.p[i + 3];
		if (after == ' ' || after == '-')
			return (s.p[i] - '0') * 100 + (s.p[i + 1] - '0') * 10 + (s.p[i + 2] - '0');
	}
	return 0;
}

/*
 * reply_text - the text of a diagnostic without its type ("smtp;"), reply
 * code and enhanced status, as the bounce patterns expect it.
 */
static char *reply_text(struct arena *a, const char *diag)
{
	const char *p = diag;
	const char *semi = strchr(p, ';');

	if (semi && semi - p < 12)
		p = semi + 1;
	while (isspace((unsigned char)*p) || *p == '#')
		p++;
	if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
	    isdigit((unsigned char)p[2]) && (p[3] == ' ' || p[3] == '-'))
		p += 4;
	while (isspace((unsigned char)*p))
		p++;
	char st[16];
	if (find_status((struct slice){ p, strlen(p) }, st) && strncmp(p, st, strlen(st)) == 0)
		p += strlen(st);
	return trimmed(a, p, strlen(p));
}

/* classify - category and class of (status, diag) */
static void classify(const struct cfg *cfg, struct arena *a, struct report_rcpt *r)
{
	r->cls = CFG_BOUNCE_SOFT;
	if (!cfg || !r->status)
		return;
	const char *text = r->diag ? reply_text(a, r->diag) : "";
	char *key = arena_printf(a, "%s;%s", r->status, text);
	cfg_bounce_classify(cfg, key, &r->bounce_cat);
	r->cls = cfg_bounce_class_of(cfg, r->bounce_cat);
}

const char *report_verp_decode(const char *env_rcpt, struct arena *a)
{
	if (!env_rcpt)
		return NULL;
	const char *at = strrchr(env_rcpt, '@');
	const char *dash = strchr(env_rcpt, '-');
	const char *eq = NULL;

	if (!at || !dash || dash > at)
		return NULL;
	for (const char *p = dash; p < at; p++)
		if (*p == '=')
			eq = p;
	if (!eq || eq == dash + 1 || eq + 1 == at || !memchr(eq, '.', (size_t)(at - eq)))
		return NULL;
	char *r = arena_printf(a, "%.*s@%.*s", (int)(eq - dash - 1), dash + 1,
			       (int)(at - eq - 1), eq + 1);
	str_lower(strchr(r, '@'));
	return r;
}

/* ------------------------------------------------------------------ */
/* The original message.                                                */

static void set_original(struct report *out, struct arena *a, struct slice headers)
{
	struct fields f;

	parse_fields(a, headers, &f, NULL);
	out->orig = f.f;
	out->norig = f.n;
	out->orig_message_id = report_field_get(f.f, f.n, "Message-ID");
	out->orig_job_id = report_field_get(f.f, f.n, "X-Job");
	out->orig_from = report_field_get(f.f, f.n, "From");
}

/* original_part - the quoted original: message/rfc822 or its headers */
static const struct part *original_part(const struct walk *w)
{
	const struct part *p = find_part(w, "message/rfc822");

	if (!p)
		p = find_part(w, "text/rfc822-headers");
	if (!p)
		p = find_part(w, "message/global");
	if (!p)
		p = find_part(w, "message/global-headers");
	return p;
}

/* ------------------------------------------------------------------ */
/* DSN (RFC 3464).                                                      */

static struct report_rcpt *rcpt_push(struct report *out, struct arena *a)
{
	if (out->nrcpts == MAX_RCPTS)
		return NULL;
	if (!out->rcpts)
		out->rcpts = arena_alloc(a, MAX_RCPTS * sizeof(*out->rcpts));
	struct report_rcpt *r = &out->rcpts[out->nrcpts++];
	memset(r, 0, sizeof(*r));
	return r;
}

void report_add_rcpt(struct report *out, enum report_kind kind, const char *rcpt,
		     const struct cfg *cfg, struct arena *a)
{
	struct report_rcpt *r = rcpt_push(out, a);

	if (!r)
		return;
	r->rcpt = arena_strdup(a, rcpt);
	if (kind == REPORT_BOUNCE) {
		r->action = "failed";
		r->status = "5.0.0";
		classify(cfg, a, r);
	}
	out->kind = kind;
}

static void parse_dsn(struct report *out, const struct part *ds,
		      const char *verp, const struct cfg *cfg, struct arena *a)
{
	struct slice in = ds->body, rest;
	struct fields msg;

	parse_fields(a, in, &msg, &rest);
	out->reporting_mta = typed_addr(a, get(&msg, "Reporting-MTA"));
	if (!out->reporting_mta && get(&msg, "Reporting-MTA")) {
		const char *v = get(&msg, "Reporting-MTA");
		const char *semi = strchr(v, ';');
		out->reporting_mta = trimmed(a, semi ? semi + 1 : v, strlen(semi ? semi + 1 : v));
	}
	out->env_id = get(&msg, "Original-Envelope-Id");
	while (rest.n) {
		struct fields rf;
		struct slice next;

		parse_fields(a, rest, &rf, &next);
		if (next.p == rest.p)
			break;	/* nothing consumed: only blank lines left */
		rest = next;
		const char *final = get(&rf, "Final-Recipient");
		const char *orcpt = get(&rf, "Original-Recipient");
		const char *status = get(&rf, "Status");
		if (!final && !orcpt)
			continue;
		struct report_rcpt *r = rcpt_push(out, a);
		if (!r)
			break;
		r->orcpt = orcpt;
		r->rcpt = typed_addr(a, orcpt);
		if (!r->rcpt)
			r->rcpt = typed_addr(a, final);
		r->action = get(&rf, "Action");
		if (r->action) {
			char *lc = arena_strdup(a, r->action);
			str_lower(lc);
			r->action = lc;
		}
		char st[16];
		if (status && find_status((struct slice){ status, strlen(status) }, st))
			r->status = arena_strdup(a, st);
		r->diag = get(&rf, "Diagnostic-Code");
		r->remote_mta = get(&rf, "Remote-MTA");
		if (!r->status)
			r->status = r->action && ci_has(r->action, "delay") ? "4.0.0" : "5.0.0";
		if (!r->action)
			r->action = r->status[0] == '2' ? "delivered"
				    : r->status[0] == '4' ? "delayed" : "failed";
		if (!r->rcpt) {
			out->nrcpts--;
			continue;
		}
		classify(cfg, a, r);
	}
	/* what we sent to is what the VERP return path says */
	if (verp && out->nrcpts == 1)
		out->rcpts[0].rcpt = verp;
}

/* ------------------------------------------------------------------ */
/* Text forms.                                                          */

/* Where a quoted original starts in the text notices we know. */
static const char *const original_markers[] = {
	"--- Below this line is a copy of the message.",
	"------ This is a copy of the message",
	"----- Original message -----",
	"Original message headers:",
	"----- Message header follows -----",
	"----- Transcript of session follows",
	"-----Original Message-----",
};

static bool looks_like_bounce(const struct fields *top, struct slice text)
{
	const char *from = get(top, "From"), *subj = get(top, "Subject");
	static const char *const subjects[] = {
		"undeliver", "delivery status", "delivery fail", "failure notice",
		"returned mail", "non-delivery", "nondeliver", "not delivered",
		"delivery has failed", "mail delivery", "bounce", "could not be delivered",
	};
	static const char *const wordings[] = {
		"qmail-send program", "This is the mail system at host",
		"Delivery has failed to these recipients",
		"Diagnostic information for administrators",
		"Delivery to the following recipient failed",
		"wasn't delivered to", "could not be delivered to",
		"permanent error", "message could not be delivered",
	};

	if (ci_has(from, "mailer-daemon") || ci_has(from, "postmaster"))
		return true;
	for (size_t i = 0; i < ARRAY_SIZE(subjects); i++)
		if (ci_has(subj, subjects[i]))
			return true;
	for (size_t i = 0; i < ARRAY_SIZE(wordings); i++)
		if (ci_find(text, wordings[i]))
			return true;
	return false;
}

static const char *text_format(const struct fields *top, struct slice text)
{
	if (ci_find(text, "qmail-send program"))
		return "qmail";
	if (ci_find(text, "This is the mail system at host"))
		return "postfix";
	if (ci_find(text, "Diagnostic information for administrators") ||
	    ci_find(text, "Delivery has failed to these recipients") ||
	    get(top, "X-MS-Exchange-Message-Is-Ndr"))
		return "exchange";
	if (ci_find(text, "Delivery to the following recipient") ||
	    ci_has(get(top, "From"), "googlemail.com") ||
	    ci_has(get(top, "From"), "@google.com"))
		return "gmail";
	return "text";
}

/*
 * addr_line - a line that names a recipient: "<a@b>:", "a@b:", "<a@b>",
 * "a@b" alone (qmail, Exchange, Gmail), or "<a@b> ...: text" (Postfix);
 * *diag is the text after the address's colon, if any.
 */
static char *addr_line(struct arena *a, struct slice line, struct slice *diag)
{
	size_t i = 0;

	while (i < line.n && isspace((unsigned char)line.p[i]))
		i++;
	bool angle = i < line.n && line.p[i] == '<';
	const char *at = memchr(line.p + i, '@', line.n - i);
	if (!at)
		return NULL;
	char *addr = addr_at(a, line, (size_t)(at - line.p));
	if (!addr)
		return NULL;
	const char *start = line.p + i + angle;
	if (strncasecmp(start, addr, strlen(addr)) != 0)
		return NULL;	/* the address must open the line */
	const char *e = start + strlen(addr);
	size_t left = line.n - (size_t)(e - line.p);
	if (angle) {
		if (!left || *e != '>')
			return NULL;
		e++, left--;
	}
	diag->p = NULL;
	diag->n = 0;
	const char *colon = memchr(e, ':', left);
	if (colon) {
		/* Postfix: "<a@b> (expanded from <c@d>): host said: ..." */
		diag->p = colon + 1;
		diag->n = left - (size_t)(colon + 1 - e);
	} else if (!blank((struct slice){ e, left })) {
		return NULL;	/* a sentence that merely starts with an address */
	}
	return addr;
}

/* paragraph - from p to the next blank line, lines joined by one space */
static char *paragraph(struct arena *a, struct slice from)
{
	struct strbuf sb = { 0 };
	struct slice line;
	bool first = true;

	while (line_next(&from, &line) && sb.len < MAX_DIAG) {
		if (blank(line)) {
			if (first)
				continue;
			break;
		}
		if (!first)
			sb_addc(&sb, ' ');
		first = false;
		sb_add(&sb, line.p, line.n);
	}
	char *r = trimmed(a, sb_str(&sb), sb.len);
	sb_free(&sb);
	return r;
}

/* code_paragraph - the first paragraph from the line with a reply code */
static char *code_paragraph(struct arena *a, struct slice text)
{
	struct slice in = text, line;
	char st[16];

	while (line_next(&in, &line)) {
		if (find_code(line) || find_status(line, st)) {
			struct slice from = { line.p, (size_t)(text.p + text.n - line.p) };
			return paragraph(a, from);
		}
	}
	return NULL;
}

static void parse_text(struct report *out, const struct fields *top,
		       struct slice text, const char *verp,
		       const struct cfg *cfg, struct arena *a)
{
	struct slice notice = text, in, line;

	/* the notice ends where the quoted original begins */
	for (size_t i = 0; i < ARRAY_SIZE(original_markers); i++) {
		const char *m = ci_find(notice, original_markers[i]);
		if (m) {
			struct slice after = { m, (size_t)(text.p + text.n - m) }, peek;

			line_next(&after, &line);	/* the marker itself */
			peek = after;
			while (line_next(&peek, &line) && blank(line))
				after = peek;
			notice.n = (size_t)(m - notice.p);
			if (!out->norig)
				set_original(out, a, after);
		}
	}
	if (!looks_like_bounce(top, notice))
		return;
	out->format = text_format(top, notice);

	in = notice;
	while (line_next(&in, &line)) {
		struct slice d;
		char *addr = addr_line(a, line, &d);
		if (!addr)
			continue;
		bool dup = false;
		for (size_t k = 0; k < out->nrcpts && !dup; k++)
			dup = strcmp(out->rcpts[k].rcpt, addr) == 0;
		if (dup)
			continue;
		struct report_rcpt *r = rcpt_push(out, a);
		if (!r)
			break;
		r->rcpt = addr;
		struct slice from = { d.p, d.p ? (size_t)(notice.p + notice.n - d.p) : 0 };
		char *diag = d.p && !blank(d) ? paragraph(a, from) : NULL;
		if (!diag || (!find_code((struct slice){ diag, strlen(diag) }) &&
			      !find_status((struct slice){ diag, strlen(diag) }, (char[16]){ 0 }))) {
			/* Gmail and Exchange give the reason apart from the address */
			const char *tech = ci_find(notice, "Technical details of");
			struct slice sub = tech ? (struct slice){ tech, (size_t)(notice.p + notice.n - tech) }
						: in;
			if (tech)
				line_next(&sub, &line);
			char *cp = code_paragraph(a, sub);
			if (!cp && !tech)
				cp = code_paragraph(a, notice);
			if (cp)
				diag = diag ? arena_printf(a, "%s %s", diag, cp) : cp;
		}
		if (diag && strlen(diag) > MAX_DIAG)
			diag[MAX_DIAG] = '\0';
		r->diag = diag ? arena_printf(a, "smtp;%s", diag) : NULL;
		char st[16];
		struct slice ds = { diag ? diag : "", diag ? strlen(diag) : 0 };
		int code = find_code(ds);
		if (find_status(ds, st))
			r->status = arena_strdup(a, st);
		else if (code)
			r->status = code >= 500 ? "5.0.0" : "4.0.0";
		else
			r->status = "5.0.0";	/* a notice of failure without a code */
		r->action = r->status[0] == '4' ? "delayed" : "failed";
		classify(cfg, a, r);
	}
	if (!out->nrcpts && verp) {
		/* a notice that names nobody: VERP says who, the text says why */
		struct report_rcpt *r = rcpt_push(out, a);
		char *cp = code_paragraph(a, notice);
		char st[16];
		r->rcpt = verp;
		r->diag = cp ? arena_printf(a, "smtp;%s", cp) : NULL;
		r->status = cp && find_status((struct slice){ cp, strlen(cp) }, st)
				    ? arena_strdup(a, st) : "5.0.0";
		r->action = r->status[0] == '4' ? "delayed" : "failed";
		classify(cfg, a, r);
	}
	if (verp && out->nrcpts == 1)
		out->rcpts[0].rcpt = verp;
}

/* ------------------------------------------------------------------ */
/* Complaints.                                                          */

/* complaint_rcpts - who complained: Original-Rcpt-To, else the original's
 * VERP Return-Path, else its To. */
static void complaint_rcpts(struct report *out, struct arena *a,
			    const char *const *explicit, size_t nexplicit)
{
	for (size_t i = 0; i < nexplicit; i++) {
		char *addr = typed_addr(a, explicit[i]);
		struct report_rcpt *r;
		if (addr && (r = rcpt_push(out, a)))
			r->rcpt = addr;
	}
	if (out->nrcpts)
		return;
	const char *rp = report_field_get(out->orig, out->norig, "Return-Path");
	const char *rpa = typed_addr(a, rp);
	const char *v = report_verp_decode(rpa, a);
	if (!v) {
		const char *to = report_field_get(out->orig, out->norig, "To");
		v = to ? first_addr(a, (struct slice){ to, strlen(to) }) : NULL;
	}
	struct report_rcpt *r;
	if (v && (r = rcpt_push(out, a)))
		r->rcpt = v;
}

static void parse_arf(struct report *out, const struct part *fr,
		      const struct walk *w, struct arena *a)
{
	struct fields f;
	const char *tos[MAX_RCPTS];
	size_t nto = 0;

	parse_fields(a, fr->body, &f, NULL);
	out->arf = f.f;
	out->narf = f.n;
	out->format = "arf";
	out->feedback_type = get(&f, "Feedback-Type");
	if (out->feedback_type) {
		char *lc = arena_strdup(a, out->feedback_type);
		str_lower(lc);
		out->feedback_type = lc;
	}
	out->user_agent = get(&f, "User-Agent");
	out->reported_domain = get(&f, "Reported-Domain");
	out->source_ip = get(&f, "Source-IP");
	out->original_mail_from = typed_addr(a, get(&f, "Original-Mail-From"));
	const char *rm = get(&f, "Reporting-MTA");
	if (rm) {
		const char *semi = strchr(rm, ';');
		out->reporting_mta = trimmed(a, semi ? semi + 1 : rm, strlen(semi ? semi + 1 : rm));
	}
	for (size_t i = 0; i < f.n && nto < MAX_RCPTS; i++)
		if (str_ieq(f.f[i].name, "Original-Rcpt-To") ||
		    str_ieq(f.f[i].name, "Removal-Recipient"))
			tos[nto++] = f.f[i].value;
	const struct part *orig = original_part(w);
	if (orig)
		set_original(out, a, orig->body);
	complaint_rcpts(out, a, tos, nto);
	out->kind = out->nrcpts ? REPORT_COMPLAINT : REPORT_UNKNOWN;
}

/* parse_jmrp - Microsoft's JMRP: an rfc822 attachment with X-HmXmr* */
static bool parse_jmrp(struct report *out, const struct walk *w, struct arena *a)
{
	const struct part *orig = find_part(w, "message/rfc822");
	const char *who;

	if (!orig)
		return false;
	set_original(out, a, orig->body);
	who = report_field_get(out->orig, out->norig, "X-HmXmrOriginalRecipient");
	if (!who) {
		out->norig = 0;
		out->orig = NULL;
		out->orig_message_id = out->orig_job_id = out->orig_from = NULL;
		return false;
	}
	out->format = "jmrp";
	out->feedback_type = "abuse";
	out->user_agent = "JMRP";
	complaint_rcpts(out, a, &who, 1);
	out->kind = out->nrcpts ? REPORT_COMPLAINT : REPORT_UNKNOWN;
	return true;
}

/* ------------------------------------------------------------------ */

int report_parse(const char *msg, size_t len, const char *env_rcpt,
		 const struct cfg *cfg, struct arena *a, struct report *out)
{
	struct walk *w = arena_alloc(a, sizeof(*w));
	struct fields top;
	struct slice body;
	struct part root = { 0 };
	const char *verp = report_verp_decode(env_rcpt, a);

	memset(out, 0, sizeof(*out));
	w->a = a;
	parse_fields(a, (struct slice){ msg, len }, &top, &body);
	part_init(a, &root, &top, body);
	walk_part(w, &root, 0);

	const struct part *fr = find_part(w, "message/feedback-report");
	if (fr) {
		parse_arf(out, fr, w, a);
		return 0;
	}
	const struct part *ds = find_part(w, "message/delivery-status");
	if (!ds)
		ds = find_part(w, "message/global-delivery-status");
	if (ds) {
		const struct part *orig = original_part(w);
		out->format = "dsn";
		if (orig)
			set_original(out, a, orig->body);
		parse_dsn(out, ds, verp, cfg, a);
		out->kind = out->nrcpts ? REPORT_BOUNCE : REPORT_UNKNOWN;
		return 0;
	}
	if (parse_jmrp(out, w, a))
		return 0;

	/* text forms: the text parts in order, the original if attached */
	struct strbuf sb = { 0 };
	for (size_t i = 0; i < w->nparts; i++)
		if (strcmp(w->parts[i].type, "text/plain") == 0 && w->parts[i].body.n &&
		    sb.len < (1u << 20)) {
			sb_add(&sb, w->parts[i].body.p, w->parts[i].body.n);
			sb_addc(&sb, '\n');
		}
	const struct part *orig = original_part(w);
	if (orig)
		set_original(out, a, orig->body);
	if (sb.len) {
		char *text = arena_strndup(a, sb_str(&sb), sb.len);
		parse_text(out, &top, (struct slice){ text, sb.len }, verp, cfg, a);
	}
	sb_free(&sb);
	out->kind = out->nrcpts ? REPORT_BOUNCE : REPORT_UNKNOWN;
	return 0;
}
