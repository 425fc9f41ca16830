/*
 * tests/services/test_report.c - the report parser, table-driven: reports
 * built by tests/services/make_reports.py with Python's email package in
 * the shapes providers send, checked field by field; VERP decoding; and
 * what is no report at all.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "services/report.h"
#include "tests/lib/testlib.h"
#include "util/util.h"

static char *dir;
static struct cfg *cfg;

static void setup(void)
{
	struct diag_list dl = { 0 };

	dir = testlib_tmpdir();
	char *cmd = xasprintf("python3 services/make_reports.py %s", dir);
	cr_assert_eq(system(cmd), 0, "%s failed (the suite runs from tests/)", cmd);
	free(cmd);
	cfg = testlib_load("", &dl);
	cr_assert_not_null(cfg);
	diag_free(&dl);
}

static void teardown(void)
{
	cfg_free(cfg);
	testlib_rmrf(dir);
	free(dir);
}

TestSuite(report, .init = setup, .fini = teardown, .timeout = 60);

static char *slurp(const char *name, size_t *len)
{
	char *path = xasprintf("%s/%s.eml", dir, name);
	FILE *f = fopen(path, "rb");
	struct strbuf sb = { 0 };
	char buf[4096];
	size_t n;

	cr_assert_not_null(f, "%s", path);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		sb_add(&sb, buf, n);
	fclose(f);
	free(path);
	*len = sb.len;
	return sb_detach(&sb);
}

struct rcpt_case {
	const char *rcpt, *status, *category;
	enum cfg_bounce_class cls;
	const char *diag_has;	/* a substring of diag, or NULL */
};

struct report_case {
	const char *file;
	const char *env_rcpt;
	enum report_kind kind;
	const char *format;
	const char *message_id, *job_id;
	const char *feedback_type, *user_agent, *reported_domain;
	const char *reporting_mta;
	size_t nrcpts;
	struct rcpt_case r[2];
};

#define H CFG_BOUNCE_HARD
#define S CFG_BOUNCE_SOFT

static const struct report_case cases[] = {
	{ "dsn_postfix", "bounces-gone=example.org@sender.example", REPORT_BOUNCE, "dsn",
	  "<m1@sender.example>", "job-1", NULL, NULL, NULL, "mail.example.org", 1,
	  { { "gone@example.org", "5.1.1", "bad-mailbox", H, "User unknown in virtual mailbox table" } } },
	{ "dsn_gmail", NULL, REPORT_BOUNCE, "dsn", "<m2@sender.example>", "job-2",
	  NULL, NULL, NULL, "googlemail.com", 1,
	  { { "nobody@gmail.com", "5.1.1", "bad-mailbox", H, "does not exist" } } },
	{ "dsn_o365_two_rcpts", "bounces@sender.example", REPORT_BOUNCE, "dsn",
	  "<m3@sender.example>", "job-3", NULL, NULL, NULL,
	  "AM0PR01MB1234.eurprd01.prod.outlook.com", 2,
	  { { "a.user@corp.example", "5.1.10", "bad-mailbox", H, "RecipientNotFound" },
	    { "b.full@corp.example", "5.2.2", "quota-issues", S, "QuotaExceeded" } } },
	{ "text_qmail", NULL, REPORT_BOUNCE, "qmail", "<m4@sender.example>", "job-4",
	  NULL, NULL, NULL, NULL, 1,
	  { { "nouser@example.net", "5.1.1", "bad-mailbox", H, "no mailbox here" } } },
	{ "text_exchange", NULL, REPORT_BOUNCE, "exchange", "<m5@sender.example>", "job-5",
	  NULL, NULL, NULL, NULL, 1,
	  { { "old.user@corp.example", "5.1.1", "bad-mailbox", H, "RESOLVER.ADR.RecipNotFound" } } },
	{ "text_gmail", NULL, REPORT_BOUNCE, "gmail", "<m6@sender.example>", "job-6",
	  NULL, NULL, NULL, NULL, 1,
	  { { "nobody2@gmail.com", "5.1.1", "bad-mailbox", H, "does not exist" } } },
	{ "text_postfix_base64", NULL, REPORT_BOUNCE, "postfix", NULL, NULL,
	  NULL, NULL, NULL, NULL, 1,
	  { { "full@example.com", "5.2.2", "quota-issues", S, "Mailbox is full" } } },
	{ "text_verp_only", "bounces-lost=small.example@sender.example", REPORT_BOUNCE, "text",
	  NULL, NULL, NULL, NULL, NULL, NULL, 1,
	  { { "lost@small.example", "5.0.0", "bad-mailbox", H, "Mailbox unavailable" } } },
	{ "arf_yahoo", "fbl@fbl.sender.example", REPORT_COMPLAINT, "arf",
	  "<m7@sender.example>", "job-7", "abuse", "Yahoo!-Mail-Feedback/2.0",
	  "sender.example", NULL, 1, { { "complainer@yahoo.com", NULL, NULL, S, NULL } } },
	{ "arf_aol_verp", NULL, REPORT_COMPLAINT, "arf", "<m8@sender.example>", "job-8",
	  "abuse", "AOL SComp", "sender.example", NULL, 1,
	  { { "fan@aol.com", NULL, NULL, S, NULL } } },
	{ "jmrp", NULL, REPORT_COMPLAINT, "jmrp", "<m9@sender.example>", "job-9",
	  "abuse", "JMRP", NULL, NULL, 1, { { "reporter@hotmail.com", NULL, NULL, S, NULL } } },
	{ .file = "not_ooo", .env_rcpt = "bounces-x=example.org@sender.example",
	  .kind = REPORT_UNKNOWN },
	{ .file = "not_plain", .kind = REPORT_UNKNOWN },
};

static void expect_str(const char *got, const char *want, const char *what,
		       const char *file)
{
	if (!want)
		return;
	cr_expect_not_null(got, "%s: %s missing (want %s)", file, what, want);
	if (got)
		cr_expect_str_eq(got, want, "%s: %s", file, what);
}

Test(report, provider_shapes_field_by_field)
{
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct report_case *c = &cases[i];
		struct arena *a = arena_new();
		struct report rep;
		size_t len;
		char *msg = slurp(c->file, &len);

		cr_assert_eq(report_parse(msg, len, c->env_rcpt, cfg, a, &rep), 0);
		cr_expect_eq(rep.kind, c->kind, "%s: kind %d", c->file, rep.kind);
		if (c->kind == REPORT_UNKNOWN) {
			cr_expect_eq(rep.nrcpts, 0, "%s", c->file);
			goto next;
		}
		expect_str(rep.format, c->format, "format", c->file);
		expect_str(rep.orig_message_id, c->message_id, "Message-ID", c->file);
		expect_str(rep.orig_job_id, c->job_id, "X-Job", c->file);
		expect_str(rep.feedback_type, c->feedback_type, "feedback type", c->file);
		expect_str(rep.user_agent, c->user_agent, "user agent", c->file);
		expect_str(rep.reported_domain, c->reported_domain, "reported domain", c->file);
		expect_str(rep.reporting_mta, c->reporting_mta, "reporting MTA", c->file);
		cr_expect_eq(rep.nrcpts, c->nrcpts, "%s: %zu recipients", c->file, rep.nrcpts);
		for (size_t k = 0; k < c->nrcpts && k < rep.nrcpts; k++) {
			const struct rcpt_case *w = &c->r[k];
			const struct report_rcpt *g = &rep.rcpts[k];

			expect_str(g->rcpt, w->rcpt, "rcpt", c->file);
			expect_str(g->status, w->status, "status", c->file);
			expect_str(g->bounce_cat, w->category, "bounceCat", c->file);
			if (c->kind == REPORT_BOUNCE) {
				cr_expect_eq(g->cls, w->cls, "%s: class of %s", c->file, w->rcpt);
				expect_str(g->action, "failed", "action", c->file);
			}
			if (w->diag_has)
				cr_expect(g->diag && strstr(g->diag, w->diag_has),
					  "%s: diag '%s' lacks '%s'", c->file,
					  g->diag ? g->diag : "(null)", w->diag_has);
		}
next:
		free(msg);
		arena_free(a);
	}
}

Test(report, arf_fields_kept_for_arf_columns)
{
	struct arena *a = arena_new();
	struct report rep;
	size_t len;
	char *msg = slurp("arf_yahoo", &len);

	cr_assert_eq(report_parse(msg, len, NULL, cfg, a, &rep), 0);
	cr_expect_str_eq(report_field_get(rep.arf, rep.narf, "Source-IP"), "192.0.2.10");
	cr_expect_str_eq(report_field_get(rep.arf, rep.narf, "authentication-results"),
			 "mta1.mail.yahoo.com; dkim=pass header.d=sender.example");
	cr_expect_str_eq(rep.source_ip, "192.0.2.10");
	cr_expect_str_eq(rep.original_mail_from, "bounces-complainer=yahoo.com@sender.example");
	cr_expect_str_eq(rep.orig_from, "News <news@sender.example>");
	cr_expect_str_eq(report_field_get(rep.orig, rep.norig, "Subject"), "Our December offers");
	free(msg);
	arena_free(a);
}

Test(report, configured_categories_and_classes_apply)
{
	struct diag_list dl = { 0 };
	struct cfg *mine = testlib_load("<bounce-category-patterns>\n"
					"  /virtual mailbox table/ my-gone\n"
					"</bounce-category-patterns>\n"
					"bounce-category-class my-gone hard\n"
					"bounce-category-class quota-issues hard\n", &dl);
	struct arena *a = arena_new();
	struct report rep;
	size_t len;
	char *msg = slurp("dsn_postfix", &len);

	cr_assert_not_null(mine);
	cr_assert_eq(report_parse(msg, len, NULL, mine, a, &rep), 0);
	cr_assert_eq(rep.nrcpts, 1);
	cr_expect_str_eq(rep.rcpts[0].bounce_cat, "my-gone");
	cr_expect_eq(rep.rcpts[0].cls, CFG_BOUNCE_HARD);
	free(msg);
	msg = slurp("text_postfix_base64", &len);
	cr_assert_eq(report_parse(msg, len, NULL, mine, a, &rep), 0);
	cr_assert_eq(rep.nrcpts, 1);
	cr_expect_str_eq(rep.rcpts[0].bounce_cat, "quota-issues");
	cr_expect_eq(rep.rcpts[0].cls, CFG_BOUNCE_HARD);
	free(msg);
	arena_free(a);
	cfg_free(mine);
	diag_free(&dl);
}

Test(report, verp_decode)
{
	struct arena *a = arena_new();
	static const struct { const char *in, *out; } v[] = {
		{ "bounces-user=example.org@sender.example", "user@example.org" },
		{ "bounces-first-last=Example.ORG@sender.example", "first-last@example.org" },
		{ "b-x=y=z.example@s.example", "x=y@z.example" },
		{ "bounces@sender.example", NULL },
		{ "bounces-user@sender.example", NULL },
		{ "bounces-user=nodot@sender.example", NULL },
		{ "bounces-=example.org@sender.example", NULL },
		{ "no-at-sign", NULL },
	};

	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		const char *got = report_verp_decode(v[i].in, a);
		if (v[i].out)
			cr_expect(got && strcmp(got, v[i].out) == 0, "%s -> %s", v[i].in,
				  got ? got : "(null)");
		else
			cr_expect_null(got, "%s -> %s", v[i].in, got);
	}
	cr_expect_null(report_verp_decode(NULL, a));
	arena_free(a);
}

Test(report, truncated_and_empty_input)
{
	struct arena *a = arena_new();
	struct report rep;
	size_t len;
	char *msg = slurp("dsn_o365_two_rcpts", &len);

	/* every prefix parses without reading past its end (ASan watches) */
	for (size_t n = 0; n <= len; n += 7) {
		char *copy = xmalloc(n ? n : 1);
		memcpy(copy, msg, n);
		cr_assert_eq(report_parse(copy, n, NULL, cfg, a, &rep), 0);
		free(copy);
	}
	cr_assert_eq(report_parse("", 0, NULL, cfg, a, &rep), 0);
	cr_expect_eq(rep.kind, REPORT_UNKNOWN);
	free(msg);
	arena_free(a);
}

/* Regression (found by fuzz_report): a NUL inside a local part was taken
 * for an address character, giving a recipient without '@'. */
Test(report, regression_nul_before_at_is_no_address)
{
	static const char msg[] =
		"From: MAILER-DAEMON@mx.example.net\r\nSubject: failure notice\r\n\r\n"
		"Hi. This is the qmail-send program at mx.example.net.\r\n\r\n"
		"<nouser\0x@example.net>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n";
	struct arena *a = arena_new();
	struct report rep;

	cr_assert_eq(report_parse(msg, sizeof(msg) - 1, NULL, cfg, a, &rep), 0);
	for (size_t i = 0; i < rep.nrcpts; i++)
		cr_expect(strchr(rep.rcpts[i].rcpt, '@'), "'%s'", rep.rcpts[i].rcpt);
	arena_free(a);
}
