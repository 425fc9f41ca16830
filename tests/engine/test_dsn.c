/*
 * test_dsn.c - delivery status notifications (engine/dsn.c).  Every DSN
 * is read back by Python's email package (tests/lib/dsn_check.py, a MIME
 * parser that is not ours) against an expectation written here, and the
 * wire rules are checked in C: CRLF only, no line over 998 octets, a
 * boundary that is not in the original.  Negative tests prove the checker
 * rejects corrupted DSNs.
 *
 * Test threads only; temporary files live under /tmp and are removed.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "util/util.h"

#include "engine/dsn.h"
#include "tests/lib/testlib.h"

static void **garbage;		/* freed by teardown: LeakSanitizer runs */
static size_t ngarbage, garbage_cap;

static void *gc(void *p)
{
	if (ngarbage == garbage_cap) {
		garbage_cap = garbage_cap ? 2 * garbage_cap : 64;
		garbage = xrealloc(garbage, garbage_cap * sizeof(*garbage));
	}
	garbage[ngarbage++] = p;
	return p;
}

static void teardown(void)
{
	for (size_t i = 0; i < ngarbage; i++)
		free(garbage[i]);
	free(garbage);
	garbage = NULL;
	ngarbage = garbage_cap = 0;
}

TestSuite(dsn, .fini = teardown, .timeout = 60);

/* ---- expectations ------------------------------------------------- */

/* What the checker must find for one recipient; NULL final/diag/remote_mta: derived from the params. */
struct rcpt_exp {
	const char *final;
	const char *orcpt;		/* NULL: no Original-Recipient */
	const char *remote_mta;
	const char *diag;
	const char *human;		/* part 1 must say this too */
};

struct exp {
	const char *ret;		/* "full", "headers", "none" */
	bool global, eightbit, headers_cut, headers_folded, long_lines_ok;
	const char *charset;		/* plain_text only; NULL = us-ascii */
	const char *envid;		/* NULL: as given */
	const char *human[4];
	struct rcpt_exp r[4];
};

static void js(struct strbuf *sb, const char *s)
{
	if (!s) {
		sb_adds(sb, "null");
		return;
	}
	sb_addc(sb, '"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			sb_printf(sb, "\\%c", c);
		else if (c < 0x20)
			sb_printf(sb, "\\u%04x", c);
		else
			sb_addc(sb, (char)c);
	}
	sb_addc(sb, '"');
}

static void jkey(struct strbuf *sb, const char *k, const char *v)
{
	sb_printf(sb, "\"%s\": ", k);
	js(sb, v);
	sb_adds(sb, ", ");
}

UTIL_PRINTF(1, 2)
static char *fmt(const char *f, ...)
{
	struct strbuf sb = { 0 };
	va_list ap;

	va_start(ap, f);
	sb_vprintf(&sb, f, ap);
	va_end(ap);
	return gc(sb_detach(&sb));
}

static char *spec_json(const struct dsn_params *p, const struct exp *e, const char *orig_path)
{
	struct strbuf sb = { 0 };
	bool delay = p->kind == DSN_DELAY;

	sb_adds(&sb, "{");
	jkey(&sb, "kind", delay ? "delay" : "failure");
	jkey(&sb, "format", p->plain_text ? "plain" : "mime");
	jkey(&sb, "reporting_mta", p->reporting_mta);
	jkey(&sb, "from", p->from ? p->from : fmt("MAILER-DAEMON@%s", p->reporting_mta));
	jkey(&sb, "to", p->to);
	jkey(&sb, "envid", e->envid ? e->envid : p->envid);
	jkey(&sb, "received_from", p->received_from_mta ?
	     fmt("dns; [%s]", p->received_from_mta) : NULL);
	jkey(&sb, "ret", e->ret);
	jkey(&sb, "original", orig_path);
	jkey(&sb, "charset", e->charset ? e->charset : "us-ascii");
	sb_printf(&sb, "\"now\": %lld, \"arrival\": %lld, ", (long long)p->now,
		  (long long)p->arrival);
	sb_printf(&sb, "\"global\": %s, \"eightbit\": %s, \"headers_cut\": %s, "
		  "\"headers_folded\": %s, \"long_lines_ok\": %s, ",
		  e->global ? "true" : "false", e->eightbit ? "true" : "false",
		  e->headers_cut ? "true" : "false", e->headers_folded ? "true" : "false",
		  e->long_lines_ok ? "true" : "false");
	sb_adds(&sb, "\"human\": [");
	for (size_t i = 0; i < ARRAY_SIZE(e->human) && e->human[i]; i++) {
		sb_adds(&sb, i ? ", " : "");
		js(&sb, e->human[i]);
	}
	sb_adds(&sb, "], \"rcpts\": [");
	for (size_t i = 0; i < p->nrcpt; i++) {
		const struct dsn_rcpt *r = &p->rcpt[i];
		const struct rcpt_exp *x = i < ARRAY_SIZE(e->r) ? &e->r[i] : &(struct rcpt_exp){ 0 };

		sb_adds(&sb, i ? ", {" : "{");
		jkey(&sb, "final", x->final ? x->final : fmt("rfc822;%s", r->final_rcpt));
		jkey(&sb, "orcpt", x->orcpt);
		jkey(&sb, "action", delay ? "delayed" : "failed");
		jkey(&sb, "status", r->status);
		jkey(&sb, "remote_mta", x->remote_mta ? x->remote_mta :
		     r->remote_mta ? fmt("dns; %s", r->remote_mta) : NULL);
		jkey(&sb, "diag", x->diag ? x->diag :
		     r->diag ? fmt("smtp; %s", r->diag) :
		     r->local_reason ? fmt("X-coremta; %s", r->local_reason) : NULL);
		sb_printf(&sb, "\"last_attempt\": %lld, \"retry_until\": %lld, \"human\": [",
			  (long long)r->last_attempt, (long long)(delay ? r->will_retry_until : 0));
		js(&sb, x->human ? x->human : r->final_rcpt);
		sb_adds(&sb, "]}");
	}
	sb_adds(&sb, "]}");
	return gc(sb_detach(&sb));
}

/* ---- running the checker --------------------------------------------- */

static char *write_tmp(const char *data, size_t len)
{
	char *path = gc(xstrdup("/tmp/dsn-test-XXXXXX"));
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, data + off, len - off);

		cr_assert_gt(n, 0, "write: %s", strerror(errno));
		off += (size_t)n;
	}
	close(fd);
	return path;
}

/* run_checker - dsn_check.py's exit status; its complaints in *why. */
static int run_checker(const char *dsn, size_t len, const struct dsn_params *p,
		       const struct exp *e, char **why)
{
	char *dpath = write_tmp(dsn, len);
	char *opath = p->original_len ? write_tmp(p->original, p->original_len) : NULL;
	const char *argv[] = { "/usr/bin/python3", "lib/dsn_check.py", dpath,
			       spec_json(p, e, opath), NULL };
	char *out = NULL, *err = NULL;
	int st = testlib_run(argv, 30, &out, &err);

	unlink(dpath);
	if (opath)
		unlink(opath);
	free(out);
	*why = gc(err);
	return st;
}

static const char *boundary_of(const char *dsn)
{
	const char *b = strstr(dsn, "boundary=\"");

	cr_assert_not_null(b, "no boundary parameter");
	b += strlen("boundary=\"");
	return fmt("%.*s", (int)strcspn(b, "\""), b);
}

/* check_wire - CRLF only; lines <= 998 (but the returned message's own); boundary not in the original. */
static void check_wire(const char *s, size_t len, const struct dsn_params *p, bool long_ok)
{
	size_t limit = len, col = 0;

	cr_assert(len >= 2 && s[len - 2] == '\r' && s[len - 1] == '\n', "no final CRLF");
	if (long_ok) {
		const char *m = strstr(s, "Content-Type: message/rfc822\r\n");

		cr_assert_not_null(m);
		limit = (size_t)(m - s);
	}
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '\n')
			cr_assert(i > 0 && s[i - 1] == '\r', "bare LF at %zu", i);
		if (s[i] == '\r')
			cr_assert(i + 1 < len && s[i + 1] == '\n', "bare CR at %zu", i);
		if (s[i] == '\r' || s[i] == '\n') {
			col = 0;
			continue;
		}
		col++;
		if (i < limit)
			cr_assert_leq(col, 998, "line over 998 octets at %zu", i);
	}
	if (!p->plain_text && p->original_len) {
		const char *b = boundary_of(s);

		cr_assert_null(memmem(p->original, p->original_len, b, strlen(b)),
			       "boundary %s occurs in the original", b);
	}
}

/* build_checked - build, check the wire rules, have Python check it all. */
static const char *build_checked(const struct dsn_params *p, const struct exp *e)
{
	struct strbuf out = { 0 };
	char err[256] = "";
	char *why;

	int rc = dsn_build(p, &out, err, sizeof(err));

	cr_assert_eq(rc, 0, "dsn_build: %s", err);
	char *s = gc(sb_detach(&out));
	size_t len = strlen(s);

	check_wire(s, len, p, e->long_lines_ok);
	int st = run_checker(s, len, p, e, &why);

	cr_assert_eq(st, 0, "dsn_check.py rejects the DSN (status %d):\n%s\n--- DSN ---\n%.4000s",
		     st, why, s);
	return s;
}

/* ---- fixtures ----------------------------------------------------------- */

#define T_NOW		INT64_C(1700000100)	/* Tue, 14 Nov 2023 22:15:00 +0000 */
#define T_ARRIVAL	INT64_C(1699990000)
#define T_ATTEMPT	INT64_C(1700000000)
#define T_RETRY		INT64_C(1700345600)	/* Sat, 18 Nov 2023 22:13:20 +0000 */

static const char orig_simple[] =
	"From: Alice <alice@shop.example>\r\n"
	"To: bob@example.com\r\n"
	"Subject: Your order 1234\r\n"
	"Message-ID: <order-1234.42@shop.example>\r\n"
	"Date: Tue, 14 Nov 2023 19:26:39 +0000\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: text/plain; charset=us-ascii\r\n"
	"\r\n"
	"Thank you for your order.\r\n"
	"BODY-MARKER-7f3a\r\n";

static struct dsn_params params(enum dsn_kind kind, const struct dsn_rcpt *r, size_t n)
{
	return (struct dsn_params){
		.kind = kind,
		.reporting_mta = "mta1.sender.example",
		.to = "bounces@shop.example",
		.arrival = T_ARRIVAL,
		.now = T_NOW,
		.original = orig_simple,
		.original_len = sizeof(orig_simple) - 1,
		.rcpt = r,
		.nrcpt = n,
		.unique = 0x1234,
	};
}

static const struct dsn_rcpt r_unknown = {
	.final_rcpt = "bob@example.com",
	.status = "5.1.1",
	.remote_mta = "mx1.example.com",
	.diag = "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
	.last_attempt = T_ATTEMPT,
};

/* ---- failures --------------------------------------------------------- */

Test(dsn, failure_one_rcpt_headers_orcpt_envid)
{
	struct dsn_rcpt r = r_unknown;

	r.orcpt = "rfc822;Bob@Example.COM";
	struct dsn_params p = params(DSN_FAILURE, &r, 1);

	p.envid = "QQ314159";
	p.received_from_mta = "192.0.2.17";
	const char *s = build_checked(&p, &(struct exp){
		.ret = "headers",
		.human = { "Your message could not be delivered",
			   "host mx1.example.com said: 550 5.1.1 <bob@example.com>: "
			   "Recipient address rejected: User unknown",
			   "Its envelope id is QQ314159." },
		.r = { { .orcpt = "rfc822;Bob@Example.COM" } },
	});

	/* headers only: the body stays home */
	cr_assert_null(strstr(s, "BODY-MARKER-7f3a"));
	cr_assert_not_null(strstr(s, "\r\nDate: Tue, 14 Nov 2023 22:15:00 +0000\r\n"));
}

Test(dsn, failure_three_rcpts_full)
{
	struct dsn_rcpt r[3] = {
		r_unknown,
		{ .final_rcpt = "\"carol smith\"@example.org", .status = "5.4.7",
		  .local_reason = "message expired after 4 days in the queue" },
		{ .final_rcpt = "dave@example.net", .status = "5.4.4",
		  .remote_mta = "198.51.100.25", .local_reason = "host refused connections",
		  .last_attempt = T_ATTEMPT },
	};
	struct dsn_params p = params(DSN_FAILURE, r, 3);

	p.return_full = true;
	p.from = "postmaster@sender.example";
	const char *s = build_checked(&p, &(struct exp){
		.ret = "full",
		.human = { "The original message is attached." },
		.r = { { 0 },
		       { .human = "message expired after 4 days in the queue" },
		       { .remote_mta = "dns; [198.51.100.25]",
			 .human = "host refused connections (last host tried: 198.51.100.25)" } },
	});

	cr_assert_not_null(strstr(s, "BODY-MARKER-7f3a"));
	cr_assert_not_null(strstr(s, "\r\nIn-Reply-To: <order-1234.42@shop.example>\r\n"));
}

Test(dsn, no_original_two_parts)
{
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = NULL;
	p.original_len = 0;
	const char *s = build_checked(&p, &(struct exp){ .ret = "none" });

	cr_assert_null(strstr(s, "In-Reply-To:"));
}

/* ---- delays ------------------------------------------------------------ */

Test(dsn, delay_one_rcpt)
{
	struct dsn_rcpt r = {
		.final_rcpt = "erin@example.com", .status = "4.2.2", .remote_mta = "mx.example.com",
		.diag = "452 4.2.2 Mailbox full", .last_attempt = T_ATTEMPT,
		.will_retry_until = T_RETRY,
	};
	struct dsn_params p = params(DSN_DELAY, &r, 1);

	build_checked(&p, &(struct exp){
		.ret = "headers",
		.human = { "has not yet been delivered",
			   "you do not need to send the message again" },
		.r = { { .human = "Delivery will be retried until Sat, 18 Nov 2023 22:13:20 +0000." } },
	});
}

Test(dsn, delay_three_rcpts_full_orcpt_forms)
{
	struct dsn_rcpt r[3] = {
		{ .final_rcpt = "f1@example.com", .orcpt = "F1@Example.com", .status = "4.4.1",
		  .local_reason = "connection timed out", .will_retry_until = T_RETRY },
		{ .final_rcpt = "f2@example.com", .orcpt = "rfc822;f2+list@example.com",
		  .status = "4.7.0", .remote_mta = "mx.example.com",
		  .diag = "421 4.7.0 Try again later", .last_attempt = T_ATTEMPT },
		{ .final_rcpt = "f3@example.com", .orcpt = "x400;c=us;a=att;s=f3", .status = "4.3.0",
		  .remote_mta = "mx.example.com", .diag = "451 4.3.0 Temporary failure",
		  .will_retry_until = T_RETRY },
	};
	struct dsn_params p = params(DSN_DELAY, r, 3);

	p.return_full = true;
	p.envid = "batch-7";
	build_checked(&p, &(struct exp){
		.ret = "full",
		.r = { { .orcpt = "rfc822;F1@Example.com" },	/* the missing type added */
		       { .orcpt = "rfc822;f2+list@example.com" },
		       { .orcpt = "x400;c=us;a=att;s=f3" } },
	});
}

/* ---- diagnostics ------------------------------------------------------- */

Test(dsn, long_multiline_diagnostic_is_folded)
{
	static const char diag[] =
		"550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
		"550-5.1.1 double-checking the recipient's email address for typos or\r\n"
		"550-5.1.1 unnecessary spaces. For more information, go to\r\n"
		"550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1-20020a17090a\r\n";
	struct dsn_rcpt r = r_unknown;

	r.diag = diag;
	struct dsn_params p = params(DSN_FAILURE, &r, 1);
	const char *s = build_checked(&p, &(struct exp){
		.ret = "headers",
		.r = { { .diag = "smtp; 550-5.1.1 The email account that you tried to reach "
			 "does not exist. Please try 550-5.1.1 double-checking the recipient's "
			 "email address for typos or 550-5.1.1 unnecessary spaces. For more "
			 "information, go to 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser "
			 "a1-20020a17090a" } },
	});

	/* folded at blanks, every line within RFC 5322's 78 */
	const char *f = strstr(s, "\r\nDiagnostic-Code: smtp; ");
	const char *end = strstr(f, "\r\nLast-Attempt-Date:");
	int lines = 0;

	for (const char *l = f + 2; l < end; lines++) {
		const char *e = strstr(l, "\r\n");

		cr_assert_leq(e - l, 78, "Diagnostic-Code line of %d octets", (int)(e - l));
		cr_assert(l == f + 2 || *l == ' ', "continuation without folding blank");
		l = e + 2;
	}
	cr_assert_geq(lines, 3);
}

Test(dsn, giant_diagnostic_token_never_passes_998)
{
	struct strbuf d = { 0 }, want = { 0 };

	sb_adds(&d, "550 5.7.1 ");
	for (int i = 0; i < 2000; i++)
		sb_addc(&d, "abcdefghij"[i % 10]);
	const char *tok = sb_str(&d) + 10;

	/* no blank to fold at: split into 900-octet words */
	sb_printf(&want, "smtp; 550 5.7.1 %.900s %.900s %.200s", tok, tok + 900, tok + 1800);
	struct dsn_rcpt r = r_unknown;

	r.diag = gc(sb_detach(&d));
	struct dsn_params p = params(DSN_FAILURE, &r, 1);

	build_checked(&p, &(struct exp){ .ret = "headers",
					 .r = { { .diag = gc(sb_detach(&want)) } } });
}

Test(dsn, header_injection_in_reply_and_envid_is_neutralised)
{
	struct dsn_rcpt r = r_unknown;

	r.diag = "550 no\r\nAction: delivered\r\n\r\nX-Evil: 1";
	r.orcpt = "rfc822;a@b.example\r\nBcc: x@y";	/* dropped: no control in a field */
	struct dsn_params p = params(DSN_FAILURE, &r, 1);

	p.envid = "id\r\nBcc: victim@example.com";
	build_checked(&p, &(struct exp){
		.ret = "headers",
		.envid = "id Bcc: victim@example.com",
		.r = { { .diag = "smtp; 550 no Action: delivered X-Evil: 1" } },
	});
}

/* ---- the original -------------------------------------------------------- */

static const char orig_8bit[] =
	"From: =?utf-8?q?J=C3=B6rg?= <joerg@shop.example>\r\n"
	"To: bob@example.com\r\n"
	"Subject: Gr\xc3\xbc\xc3\x9f""e aus K\xc3\xb6ln\r\n"
	"Message-ID: <8bit.1@shop.example>\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"Content-Transfer-Encoding: 8bit\r\n"
	"\r\n"
	"Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9f""e\r\n";

Test(dsn, eightbit_original_full_and_headers)
{
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = orig_8bit;
	p.original_len = sizeof(orig_8bit) - 1;
	p.return_full = true;
	build_checked(&p, &(struct exp){ .ret = "full", .eightbit = true });
	p.return_full = false;
	build_checked(&p, &(struct exp){ .ret = "headers", .eightbit = true });
}

Test(dsn, original_without_blank_line)
{
	static const char o[] = "Subject: only headers\r\nX-Mailer: t\r\nX-Last: no newline";
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = o;
	p.original_len = sizeof(o) - 1;
	const char *s = build_checked(&p, &(struct exp){ .ret = "headers" });

	cr_assert_not_null(strstr(s, "\r\nX-Last: no newline\r\n"));
	cr_assert_null(strstr(s, "In-Reply-To:"));
	p.return_full = true;
	build_checked(&p, &(struct exp){ .ret = "full" });
}

Test(dsn, original_with_lf_line_ends)
{
	static const char o[] = "Subject: unix\nMessage-ID: <lf@x.example>\nX-A: 1\n\nbody\nmore\n";
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = o;
	p.original_len = sizeof(o) - 1;
	build_checked(&p, &(struct exp){ .ret = "headers" });
	p.return_full = true;
	build_checked(&p, &(struct exp){ .ret = "full" });
}

Test(dsn, original_starting_with_blank_line_returns_empty_headers)
{
	static const char o[] = "\r\njust a body\r\n";
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = o;
	p.original_len = sizeof(o) - 1;
	const char *s = build_checked(&p, &(struct exp){ .ret = "headers" });

	cr_assert_null(strstr(s, "just a body"));
}

static char *big_original(size_t body_len, size_t *len)
{
	struct strbuf sb = { 0 };

	sb_adds(&sb, "Subject: big\r\nMessage-ID: <big@shop.example>\r\n\r\n");
	while (sb.len < body_len) {
		sb_adds(&sb, "0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
	}
	*len = sb.len;
	return gc(sb_detach(&sb));
}

Test(dsn, full_return_over_return_max_gives_headers)
{
	size_t len;
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = big_original(100000, &len);
	p.original_len = len;
	p.return_full = true;
	p.return_max = len - 1;
	build_checked(&p, &(struct exp){
		.ret = "headers",
		.human = { fmt("The original message (%zu bytes) is too large to return in full", len) },
	});
	p.return_max = len;		/* exactly the limit still fits */
	build_checked(&p, &(struct exp){ .ret = "full" });
}

Test(dsn, full_return_default_limit_is_10_mib)
{
	size_t len;
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original = big_original(DSN_RETURN_MAX_DEFAULT + 1, &len);
	p.original_len = len;
	p.return_full = true;
	build_checked(&p, &(struct exp){ .ret = "headers", .human = { "too large" } });
}

Test(dsn, header_section_over_64k_cut_at_field_boundary)
{
	struct strbuf sb = { 0 };

	sb_adds(&sb, "Subject: many headers\r\nMessage-ID: <hdrs@shop.example>\r\n");
	for (int i = 0; sb.len < 200 * 1024; i++) {
		sb_printf(&sb, "X-Filler-%d: some value here\r\n\tfolded continuation %d\r\n", i, i);
		/* a field of many lines across the 64 KiB mark: the cut must go before it */
		if (sb.len > 60 * 1024 && sb.len < 62 * 1024) {
			sb_adds(&sb, "X-Straddle: start\r\n");
			for (int j = 0; j < 100; j++)
				sb_printf(&sb, "\tcontinuation line %03d of a long folded field value\r\n", j);
		}
	}
	sb_adds(&sb, "\r\nbody\r\n");
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original_len = sb.len;
	p.original = gc(sb_detach(&sb));
	const char *s = build_checked(&p, &(struct exp){
		.ret = "headers", .headers_cut = true, .human = { "cut at 64 KiB" } });

	cr_assert_lt(strlen(s), 80 * 1024);
}

Test(dsn, overlong_header_line_is_folded_in_headers_part)
{
	struct strbuf sb = { 0 };

	sb_adds(&sb, "Subject: long\r\nX-Long:");
	for (int i = 0; i < 300; i++)
		sb_adds(&sb, " word");		/* foldable */
	sb_adds(&sb, "\r\nX-Blob: ");
	for (int i = 0; i < 2500; i++)
		sb_addc(&sb, 'z');		/* not foldable: a blank is inserted */
	sb_adds(&sb, "\r\n\r\nbody\r\n");
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);

	p.original_len = sb.len;
	p.original = gc(sb_detach(&sb));
	build_checked(&p, &(struct exp){ .ret = "headers", .headers_folded = true });
	/* in message/rfc822 the original's lines pass unchanged */
	p.return_full = true;
	build_checked(&p, &(struct exp){ .ret = "full", .long_lines_ok = true });
}

Test(dsn, boundary_found_in_original_is_replaced)
{
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);
	struct strbuf out = { 0 };
	char err[128];

	cr_assert_eq(dsn_build(&p, &out, err, sizeof(err)), 0);
	const char *b = boundary_of(gc(sb_detach(&out)));
	char *o = fmt("Subject: trap\r\nMessage-ID: <trap@x.example>\r\n\r\n--%s\r\n"
		      "Content-Type: text/plain\r\n\r\nfake part\r\n--%s--\r\n", b, b);

	p.original = o;
	p.original_len = strlen(o);
	p.return_full = true;
	const char *s = build_checked(&p, &(struct exp){ .ret = "full" });

	cr_assert_str_neq(boundary_of(s), b);
}

/* ---- formats ------------------------------------------------------------ */

Test(dsn, plain_text_single_part)
{
	struct dsn_rcpt r[2] = { r_unknown, { .final_rcpt = "zed@example.org", .status = "5.4.7",
					      .local_reason = "message expired after 4 days" } };
	struct dsn_params p = params(DSN_FAILURE, r, 2);

	p.plain_text = true;
	p.return_full = true;		/* plain text returns headers only */
	p.envid = "E-99";
	const char *s = build_checked(&p, &(struct exp){ .ret = "headers" });

	cr_assert_null(strstr(s, "multipart"));
	cr_assert_null(strstr(s, "BODY-MARKER-7f3a"));
}

Test(dsn, smtputf8_recipient_uses_utf8_type_and_global_report)
{
	struct dsn_rcpt r[2] = {
		{ .final_rcpt = "j\xc3\xb6rg+news@b\xc3\xbc" "cher.example", .status = "5.1.1",
		  .orcpt = "utf-8;j\xc3\xb6rg+news@b\xc3\xbc" "cher.example",
		  .remote_mta = "mx.xn--bcher-kva.example", .diag = "550 5.1.1 no such user" },
		r_unknown,
	};
	struct dsn_params p = params(DSN_FAILURE, r, 2);

	build_checked(&p, &(struct exp){
		.ret = "headers",
		.global = true,
		.r = { { .final = "utf-8;j\xc3\xb6rg\\x{2B}news@b\xc3\xbc" "cher.example",
			 .orcpt = "utf-8;j\xc3\xb6rg+news@b\xc3\xbc" "cher.example",
			 .human = "<j\\x{F6}rg+news@b\\x{FC}cher.example>:" } },
	});
}

Test(dsn, same_input_same_bytes_other_unique_other_ids)
{
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);
	struct strbuf a = { 0 }, b = { 0 }, c = { 0 };
	char err[128];

	cr_assert_eq(dsn_build(&p, &a, err, sizeof(err)), 0);
	cr_assert_eq(dsn_build(&p, &b, err, sizeof(err)), 0);
	p.unique++;
	cr_assert_eq(dsn_build(&p, &c, err, sizeof(err)), 0);
	cr_assert_str_eq(sb_str(&a), sb_str(&b));
	cr_assert_str_neq(boundary_of(sb_str(&a)), boundary_of(sb_str(&c)));
	const char *ma = strstr(sb_str(&a), "Message-ID:"), *mc = strstr(sb_str(&c), "Message-ID:");

	cr_assert_neq(strncmp(ma, mc, strcspn(ma, "\r")), 0, "Message-ID did not change");
	sb_free(&a);
	sb_free(&b);
	sb_free(&c);
}

/* ---- invalid parameters -------------------------------------------------- */

static void expect_einval(const struct dsn_params *p, const char *needle)
{
	struct strbuf out = { 0 };
	char err[256] = "";

	sb_adds(&out, "keep");
	cr_assert_eq(dsn_build(p, &out, err, sizeof(err)), -EINVAL);
	cr_assert_str_eq(sb_str(&out), "keep", "output touched on error");
	cr_assert_not_null(strstr(err, needle), "error \"%s\" lacks \"%s\"", err, needle);
	sb_free(&out);
}

Test(dsn, invalid_parameters)
{
	struct dsn_params p = params(DSN_FAILURE, &r_unknown, 1);
	struct dsn_rcpt r = r_unknown;

	p.nrcpt = 0;
	expect_einval(&p, "no recipients");
	p = params(DSN_FAILURE, &r_unknown, 1);
	p.to = NULL;
	expect_einval(&p, "to (the original MAIL FROM) is missing");
	p.to = "";
	expect_einval(&p, "to (the original MAIL FROM) is missing");
	p.to = "a@b.example\r\nBcc: victim@example.com";
	expect_einval(&p, "control character");
	p = params(DSN_FAILURE, &r_unknown, 1);
	p.reporting_mta = NULL;
	expect_einval(&p, "reporting_mta");
	p.reporting_mta = "bad host";
	expect_einval(&p, "reporting_mta");
	p = params(DSN_FAILURE, &r, 1);
	r.status = "550";
	expect_einval(&p, "status \"550\"");
	r = r_unknown;
	r.final_rcpt = NULL;
	expect_einval(&p, "recipient 0 is missing");
	p = params(DSN_FAILURE, &r_unknown, 1);
	p.original = NULL;
	expect_einval(&p, "original is NULL");
}

/* ---- the checker can fail --------------------------------------------------- */

static const char *good_dsn(struct dsn_params *p, struct exp *e)
{
	*p = params(DSN_FAILURE, &r_unknown, 1);
	*e = (struct exp){ .ret = "headers" };
	return build_checked(p, e);
}

static void expect_rejected(const char *dsn, const struct dsn_params *p, const struct exp *e,
			    const char *needle)
{
	char *why;
	int st = run_checker(dsn, strlen(dsn), p, e, &why);

	cr_assert_neq(st, 0, "dsn_check.py accepted a corrupted DSN");
	cr_assert_not_null(strstr(why, needle), "checker said:\n%s\nwant: %s", why, needle);
}

static char *replace(const char *s, const char *from, const char *to)
{
	const char *at = strstr(s, from);

	cr_assert_not_null(at, "%s not in the DSN", from);
	return fmt("%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
}

Test(dsn, checker_rejects_corrupted_dsns)
{
	struct dsn_params p;
	struct exp e;
	const char *s = good_dsn(&p, &e);
	const char *b = boundary_of(s);

	expect_rejected(replace(s, "Action: failed", "Action: delivered"), &p, &e,
			"recipient 0 Action");
	expect_rejected(replace(s, fmt("--%s--", b), ""), &p, &e, "defects");
	expect_rejected(replace(s, "report-type=delivery-status", "report-type=disposition-notification"),
			&p, &e, "report-type");
	expect_rejected(replace(s, "Status: 5.1.1\r\n", "Status: 5.1.1\n"), &p, &e, "bare CR or LF");
	expect_rejected(replace(s, "Auto-Submitted: auto-replied\r\n", ""), &p, &e, "Auto-Submitted");
	/* the returned headers must be the original's */
	expect_rejected(replace(s, "Subject: Your order 1234", "Subject: Your order 9999"), &p, &e,
			"header section differs");
	/* a recipient the DSN does not report */
	struct dsn_rcpt two[2] = { r_unknown, r_unknown };
	struct dsn_params p2 = p;

	p2.rcpt = two;
	p2.nrcpt = 2;
	expect_rejected(s, &p2, &e, "delivery-status blocks");
}
