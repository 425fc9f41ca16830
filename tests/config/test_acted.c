/*
 * tests/config/test_acted.c - "accepted but not acted on" tells the truth.
 * One table (config/directives.c) says what coremta acts on; these tests
 * hold the loader's warnings to the table, and the table to the code:
 *   - every directive, block and record type, loaded with a valid value,
 *     warns "not acted on" exactly when its row says it is not acted on;
 *   - a directive whose row says it is acted on has its settings field
 *     read by the code above config/ (affinity, services, shards, engine), and one
 *     that says it is not has its field read nowhere there.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <glob.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/directives.h"
#include "tests/lib/testlib.h"

/* sample_value - a valid value for the row, in config syntax */
static const char *sample_value(const struct cfg_directive *d)
{
	switch (d->type) {
	case CT_SPECIAL:
		switch (d->handler) {
		case H_DOMAIN_MACRO: return "m1 a.test,b.test";
		case H_LISTENER: return "127.0.0.1:2525";
		case H_HTTP_ACCESS: return "127.0.0.1 monitor";
		case H_SOURCE_HOST: return "192.0.2.1 mta1.example.com";
		case H_SOURCE_IP: return "192.0.2.1";
		case H_DISK_QUEUE: return "/tmp/coremta-acted-spool";
		case H_SHARDS: return "1";
		case H_POOL_MEMBER: return "v1";
		case H_SMTP_PATTERN_REPLY: return "/^421 / mode=backoff";
		case H_BOUNCE_REGEX: return "\"5\\.2\\.2\" action delete";
		case H_PATTERN_RULE:
			return strcmp(d->name, "header") == 0 ? "Subject /x/ virtual-mta=v1"
							       : "/x/ virtual-mta=v1";
		case H_RECORDS: return d->scope == SCOPE_REJECTLOG ? "c" : "d";
		case H_RECORD_FIELDS: return "d rcpt";
		case H_SMTP_PATTERN_REF: return "l1";
		case H_SHARD_CPU: return "0";
		case H_SHARD_DOMAIN: return "a.test";
		case H_CONN_LIMIT:
			return d->name[0] == 'm' ? "*.mx.example.net 20" : "192.0.2.0/24 20";
		case H_DOMAIN_KEY: return "s1,example.test,data/dkim/ed25519.key";
		case H_BOUNCE_CLASS: return "quota-issues hard";
		case H_ADDRESS_ENTRY: return "bounces.a.test";
		case H_MX_ROLLUP: return "*.mx.example.net example.rollup";
		default: return NULL;
		}
	case CT_ENUM:
		return d->choices[0];
	case CT_STRLIST:
		if (strcmp(d->name, "cold-virtual-mta") == 0)
			return "v1";
		if (strcmp(d->name, "suppression-lists") == 0)
			return "al1";
		break;
	case CT_STRING:
		/* names that must refer to something defined */
		if (strcmp(d->name, "default-virtual-mta") == 0 ||
		    strcmp(d->name, "invalid-virtual-mta-fallback") == 0 ||
		    strstr(d->name, "reroute-to-virtual-mta"))
			return "v1";
		if (strcmp(d->name, "pattern-list") == 0)
			return "pl1";
		if (d->scope == SCOPE_SMTP_USER && strcmp(d->name, "source") == 0)
			return "named1";
		if (strcmp(d->name, "source-group") == 0)
			return "g1";
		break;
	case CT_ACCEPTED:
		return "1";
	default:
		break;
	}
	if (d->def && *d->def)
		return d->def;
	switch (d->type) {
	case CT_BOOL: return "yes";
	case CT_UINT: return d->min > 1 ? "100000" : "1";
	case CT_INTERVAL:
	case CT_INTERVAL_NEVER:
	case CT_SCHEDULE: return "1m";
	case CT_SIZE: return "1M";
	case CT_RATE: return "1/s";
	case CT_STRING:
	case CT_STRLIST: return "x.example.com";
	default: return "1";
	}
}

/* in_scope - the directive line placed where its scope lives */
static char *in_scope(enum cfg_scope scope, const char *line)
{
	/* what the samples refer to: v1, l1, al1 */
	static const char defs[] =
		"<virtual-mta v1>\n</virtual-mta>\n<source named1>\n</source>\n"
		"<address-list al1>\n</address-list>\n"
		"<source-group g1>\n</source-group>\n"
		"<smtp-pattern-list l1>\nreply /^452 / mode=backoff\n</smtp-pattern-list>\n"
		"<pattern-list pl1>\nmail-from /x/ virtual-mta=v1\n</pattern-list>\n";

	switch (scope) {
	case SCOPE_GLOBAL: return xasprintf("%s%s\n", defs, line);
	case SCOPE_SOURCE: return xasprintf("%s<source 10.0.0.1>\n%s\n</source>\n", defs, line);
	case SCOPE_DOMAIN: return xasprintf("%s<domain x.test>\n%s\n</domain>\n", defs, line);
	case SCOPE_VMTA: return xasprintf("%s<virtual-mta v2>\n%s\n</virtual-mta>\n", defs, line);
	case SCOPE_POOL: return xasprintf("%s<virtual-mta-pool p1>\n%s\n</virtual-mta-pool>\n", defs, line);
	case SCOPE_ACCT: return xasprintf("%s<acct-file /tmp/acted.csv>\n%s\n</acct-file>\n", defs, line);
	case SCOPE_REJECTLOG: return xasprintf("%s<rejectlog-file /tmp/acted.log>\n%s\n</rejectlog-file>\n", defs, line);
	case SCOPE_SPOOL: return xasprintf("%s<spool /tmp/acted-spool>\n%s\n</spool>\n", defs, line);
	case SCOPE_SMTP_USER: return xasprintf("%s<smtp-user u1>\n%s\n</smtp-user>\n", defs, line);
	case SCOPE_SMTP_PATTERNS: return xasprintf("%s<smtp-pattern-list l2>\n%s\n</smtp-pattern-list>\n", defs, line);
	case SCOPE_BOUNCE_PATTERNS: return xasprintf("%s<bounce-category-patterns>\n%s\n</bounce-category-patterns>\n", defs, line);
	case SCOPE_PATTERN_LIST: return xasprintf("%s<pattern-list pl>\n%s\n</pattern-list>\n", defs, line);
	case SCOPE_SHARD: return xasprintf("%sshards 1\n<shard 0>\n%s\n</shard>\n", defs, line);
	case SCOPE_SOURCE_GROUP: return xasprintf("%s<source-group g2>\n%s\n</source-group>\n", defs, line);
	case SCOPE_PROCESSOR: return xasprintf("%s<bounce-processor>\n%s\n</bounce-processor>\n", defs, line);
	case SCOPE_ADDRESS_LIST:
		return xasprintf("%s<feedback-loop-processor>\n<address-list>\n%s\n</address-list>\n</feedback-loop-processor>\n",
				 defs, line);
	case SCOPE_MX_ROLLUP:
		return xasprintf("%s<mx-rollup-list>\n%s\n</mx-rollup-list>\n", defs, line);
	default: return NULL;
	}
}

/* warned - 1 if loading text warns needle, 0 if not, -1 if it fails */
static int warned(const char *text, const char *needle, char **diags)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = NULL;
	int rc = cfg_load_string("acted.conf", text, NULL, NULL, &cfg, &dl);
	char *t = testlib_diag_text(&dl);
	int found = rc < 0 ? -1 : diag_find(&dl, needle) != NULL;

	*diags = rc < 0 ? xasprintf("does not load:\n%s\n--- config:\n%s", t, text)
			: xstrdup(t);
	free(t);
	cfg_free(cfg);
	diag_free(&dl);
	return found;
}

Test(acted, every_directive_warns_exactly_when_not_acted_on)
{
	size_t checked = 0;

	for (size_t i = 0; i < cfg_directive_count; i++) {
		const struct cfg_directive *d = &cfg_directives[i];
		const struct cfg_directive *c = cfg_directive_canonical(d);
		if (d->handler == H_INCLUDE || d->handler == H_GUIDE_MISNOMER)
			continue;
		const char *v = sample_value(c);
		cr_assert_not_null(v, "no sample value for '%s'", d->name);
		char *line = xasprintf("%s %s", d->name, v);
		char *text = in_scope(d->scope, line);
		cr_assert_not_null(text, "no place for scope %s in this test", cfg_scope_name(d->scope));
		char *needle = xasprintf("'%s' is accepted but not acted on", d->name);
		char *diags;
		int w = warned(text, needle, &diags);
		bool acted = c->type != CT_ACCEPTED && (c->flags & DF_ACTED);

		cr_expect_neq(w, -1, "'%s' with a valid value %s", d->name, diags);
		if (w != -1)
			cr_expect_eq(w, !acted,
				     "'%s' (%s) is %s in the table, but the loader %s:\n%s",
				     d->name, cfg_scope_name(d->scope),
				     acted ? "acted on" : "not acted on",
				     acted ? "warns" : "does not warn", diags);
		checked++;
		free(diags), free(needle), free(text), free(line);
	}
	cr_expect_gt(checked, 100);
}

Test(acted, bounce_pattern_form_follows_the_regex_row)
{
	char *diags;
	const struct cfg_directive *d = cfg_directive_find("regex", SCOPE_BOUNCE_PATTERNS);
	int w = warned("<bounce-category-patterns>\n/5\\.1\\.1/ bad-mailbox\n"
			"// other\n</bounce-category-patterns>\n",
			"is accepted but not acted on", &diags);

	cr_expect_eq(w, !(d->flags & DF_ACTED), "%s", diags);
	free(diags);
}

Test(acted, every_block_warns_exactly_when_not_acted_on)
{
	static const struct { const char *name, *arg; } args[] = {
		{ "source", "10.0.0.2" }, { "domain", "y.test" },
		{ "virtual-mta", "v9" }, { "virtual-mta-pool", "p9" },
		{ "acct-file", "/tmp/acted2.csv" }, { "rejectlog-file", "/tmp/acted2.log" },
		{ "spool", "/tmp/acted2" }, { "smtp-user", "u9" },
		{ "smtp-pattern-list", "l9" }, { "pattern-list", "pl9" },
		{ "shard", "0" }, { "source-group", "g9" }, { "address-list", "al9" },
	};
	for (size_t i = 0; i < cfg_block_count; i++) {
		const struct cfg_block_def *b = &cfg_blocks[i];
		const char *arg = "";
		for (size_t k = 0; k < ARRAY_SIZE(args); k++)
			if (strcmp(args[k].name, b->name) == 0)
				arg = args[k].arg;
		bool pool = strcmp(b->name, "virtual-mta-pool") == 0;
		char *text = xasprintf("%s<%s%s%s>\n%s</%s>\n%s",
				       strcmp(b->name, "shard") == 0 ? "shards 1\n" : "",
				       b->name, *arg ? " " : "", arg,
				       pool ? "virtual-mta v1\n" : "", b->name,
				       pool ? "<virtual-mta v1>\n</virtual-mta>\n" : "");
		char *needle = xasprintf("<%s> is accepted but not acted on", b->name);
		char *diags;
		int w = warned(text, needle, &diags);

		cr_expect_neq(w, -1, "<%s>: %s", b->name, diags);
		if (w != -1)
			cr_expect_eq(w, !b->acted, "<%s> is %s in the table, but:\n%s",
				     b->name, b->acted ? "acted on" : "not acted on", diags);
		free(diags), free(needle), free(text);
	}
}

Test(acted, every_record_type_warns_exactly_when_never_written)
{
	for (size_t i = 0; i < cfg_record_type_count; i++) {
		const struct cfg_record_def *r = &cfg_record_types[i];
		char *text = r->rejectlog
			? xasprintf("<rejectlog-file /tmp/r.log>\nrecords %s\n</rejectlog-file>\n", r->name)
			: xasprintf("<acct-file /tmp/a.csv>\nrecords %s\n</acct-file>\n", r->name);
		char *needle = xasprintf("'%s' (%s) records are accepted but never written",
					 r->name, r->long_name);
		char *diags;
		int w = warned(text, needle, &diags);

		cr_expect_eq(w, !r->acted, "records %s: %s", r->name, diags);
		free(diags), free(needle), free(text);
	}
}

/* ---- the table against the code ---- */

/* Sources above config/: what reads a setting there acts on it. */
static char *code_above_config(void)
{
	static const char *const pats[] = {
		"../affinity/*.c", "../services/*.c", "../shards/*.c", "../engine/*.c",
	};
	struct strbuf sb = { 0 };

	for (size_t p = 0; p < ARRAY_SIZE(pats); p++) {
		glob_t g;
		if (glob(pats[p], 0, NULL, &g) != 0)
			continue;
		for (size_t i = 0; i < g.gl_pathc; i++) {
			char *t = testlib_read_file(g.gl_pathv[i]);
			if (t)
				sb_adds(&sb, t);
			free(t);
		}
		globfree(&g);
	}
	return sb_detach(&sb);
}

/* reads_field - does the code name ->field or .field as a whole word? */
static bool reads_field(const char *code, const char *field)
{
	char *pat = xasprintf("(->|\\.)%s([^A-Za-z0-9_]|$)", field);
	regex_t re;
	bool hit;

	cr_assert_eq(regcomp(&re, pat, REG_EXTENDED | REG_NOSUB), 0);
	hit = regexec(&re, code, 0, NULL, 0) == 0;
	regfree(&re);
	free(pat);
	return hit;
}

/*
 * Settings whose consumer sits inside config/ (the lookups the upper
 * layers call) and so never appear by name above it.  Each says who reads
 * it; keep this list short.
 */
static const char *const read_inside_config[] = {
	"relay_domains",	/* cfg_relay_... lookups, used by intake */
	"relay_addresses",
	/* not a setting's name only: ->type is read for a dozen other things */
	"type",
	NULL,
};

/*
 * shared_field - another row of another scope has the same member name
 * and the other verdict (the global min-free-space is acted on, <spool>'s
 * is not): by name alone the code cannot tell them apart.
 */
static bool shared_field(const struct cfg_directive *d)
{
	for (size_t i = 0; i < cfg_directive_count; i++) {
		const struct cfg_directive *o = &cfg_directives[i];
		if (o != d && o->field && o->scope != d->scope &&
		    strcmp(o->field, d->field) == 0 &&
		    (o->flags & DF_ACTED) != (d->flags & DF_ACTED))
			return true;
	}
	return false;
}

Test(acted, acted_fields_are_read_by_the_code_and_others_are_not)
{
	char *code = code_above_config();
	size_t checked = 0;

	cr_assert(code && strlen(code) > 10000, "cannot read the sources from tests/");
	for (size_t i = 0; i < cfg_directive_count; i++) {
		const struct cfg_directive *d = &cfg_directives[i];
		if (!d->field || (d->flags & DF_ALIAS) || d->type == CT_ACCEPTED)
			continue;
		bool inside = false;
		for (size_t k = 0; read_inside_config[k]; k++)
			inside |= strcmp(read_inside_config[k], d->field) == 0;
		if (inside || shared_field(d))
			continue;
		bool read = reads_field(code, d->field);
		if (d->flags & DF_ACTED)
			cr_expect(read, "'%s' is marked acted on, but no code above config/ reads '%s'",
				  d->name, d->field);
		else
			cr_expect_not(read, "'%s' is marked not acted on, but the code reads '%s': "
				      "mark it acted on (DF_ACTED) if it works",
				      d->name, d->field);
		checked++;
	}
	cr_expect_gt(checked, 50);
	free(code);
}
