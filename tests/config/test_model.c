/*
 * tests/config/test_model.c - the configuration model: inheritance and
 * most-specific matching of <domain> and <source>, virtual-mtas, pools,
 * macros, aliases, special directives, and the exact error texts.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/model_int.h"
#include "tests/lib/testlib.h"

/*
 * Regression (fuzz_config): "*." and "[*.]" left an empty name, read one
 * byte before it, and then passed as a domain.  They are errors now.
 */
Test(model, domain_pattern_without_a_name_is_an_error)
{
	static const char *const pats[] = { "*.", "[*.]", "*..", "[*.]." };

	for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
		struct diag_list dl = { 0 };
		char *text = xasprintf("<domain %s>\n    max-smtp-out 2\n</domain>\n", pats[i]);
		struct cfg *cfg = testlib_load(text, &dl);
		char *t = testlib_diag_text(&dl);
		cr_expect_null(cfg, "<domain %s> loaded", pats[i]);
		cr_expect(strstr(t, ":1: error: <domain>: invalid domain pattern"), "%s: %s", pats[i], t);
		free(t);
		free(text);
		diag_free(&dl);
		cfg_free(cfg);
	}
}

/* ---- <domain>: most specific wins, settings merge general to specific */

static const char *domains_conf =
	"<domain mail.example.com>\n"		/* 1: specific first on purpose */
	"    bounce-after 1d\n"
	"</domain>\n"
	"<domain *.example.com>\n"		/* 4 */
	"    max-msg-rate 10/m\n"
	"</domain>\n"
	"<domain [*.]example.com>\n"		/* 7 */
	"    max-smtp-out 7\n"
	"</domain>\n"
	"<domain example.com>\n"		/* 10 */
	"    max-smtp-out 9\n"
	"</domain>\n"
	"<domain *>\n"				/* 13 */
	"    max-smtp-out 5\n"
	"    retry-after 5m, 1h\n"
	"</domain>\n"
	"<domain [192.0.2.0/24]>\n"
	"    max-smtp-out 2\n"
	"</domain>\n";

struct domain_case {
	const char *domain;
	const char *pattern;
	uint32_t max_smtp_out;
	bool rate_unlimited;
	uint64_t bounce_after;
};

static const struct domain_case domain_cases[] = {
	{ "other.org", "*", 5, true, 4 * 86400 + 12 * 3600 },
	{ "example.com", "example.com", 9, true, 4 * 86400 + 12 * 3600 },
	{ "EXAMPLE.COM.", "example.com", 9, true, 4 * 86400 + 12 * 3600 },
	{ "a.example.com", "*.example.com", 7, false, 4 * 86400 + 12 * 3600 },
	{ "x.y.example.com", "*.example.com", 7, false, 4 * 86400 + 12 * 3600 },
	{ "mail.example.com", "mail.example.com", 7, false, 86400 },
	{ "notexample.com", "*", 5, true, 4 * 86400 + 12 * 3600 },
	{ "[192.0.2.9]", "[192.0.2.0/24]", 2, true, 4 * 86400 + 12 * 3600 },
	{ "[198.51.100.1]", "*", 5, true, 4 * 86400 + 12 * 3600 },
};

Test(model, domain_most_specific_pattern_wins_regardless_of_order)
{
	struct cfg *cfg = testlib_load_ok(domains_conf);

	for (size_t i = 0; i < ARRAY_SIZE(domain_cases); i++) {
		const struct domain_case *c = &domain_cases[i];
		const struct cfg_queue *q = cfg_queue_lookup(cfg, c->domain, NULL);
		cr_assert_not_null(q);
		cr_expect_str_eq(q->pattern, c->pattern, "%s", c->domain);
		cr_expect_eq(q->max_smtp_out, c->max_smtp_out, "%s: max-smtp-out %u",
			     c->domain, q->max_smtp_out);
		cr_expect_eq(q->max_msg_rate.unlimited, c->rate_unlimited, "%s", c->domain);
		cr_expect_eq(q->bounce_after, c->bounce_after, "%s", c->domain);
		/* <domain *> reaches everything that does not override it */
		cr_expect_eq(q->retry_after.count, 2, "%s", c->domain);
		cr_expect_eq(q->retry_after.seconds[1], 3600);
	}
	const struct cfg_queue *q = cfg_queue_lookup(cfg, "a.example.com", NULL);
	cr_expect_eq(q->max_msg_rate.count, 10);
	cr_expect_eq(q->max_msg_rate.period_s, 60);
	cfg_free(cfg);
}

Test(model, lookup_results_are_shared_not_merged_per_call)
{
	struct cfg *cfg = testlib_load_ok(domains_conf);

	cr_expect_eq(cfg_queue_lookup(cfg, "a.example.com", NULL),
		     cfg_queue_lookup(cfg, "b.example.com", NULL));
	cr_expect_eq(cfg_queue_lookup(cfg, "x.org", NULL),
		     cfg_queue_lookup(cfg, "y.net", "{default}"));
	cfg_free(cfg);
}

Test(model, defaults_without_any_domain_block)
{
	struct cfg *cfg = testlib_load_ok("host-name mta.example.net\n");
	const struct cfg_queue *q = cfg_queue_lookup(cfg, "gmail.com", NULL);

	cr_expect_eq(q->max_smtp_out, 20);
	cr_expect_eq(q->max_msg_per_connection, 0);
	cr_expect_eq(q->max_rcpt_per_transaction, 1000);
	cr_expect_eq(q->bounce_after, 4 * 86400 + 12 * 3600);
	cr_expect_eq(q->retry_after.count, 1);
	cr_expect_eq(q->retry_after.seconds[0], 600);
	cr_expect(q->use_starttls);
	cr_expect_not(q->require_starttls);
	cr_expect_eq(q->connect_timeout, 120);
	cr_expect_eq(q->smtp_data_termination_timeout, 600);
	cr_expect_eq(q->queue_priority, 50);
	cr_expect_eq(q->default_smtp_port, 25);
	cr_expect_eq(q->type, CFG_TYPE_SMTP);
	cr_expect(q->max_msg_rate.unlimited);
	cr_expect_eq(cfg_global(cfg)->total_max_smtp_out, 1200);
	cr_expect_str_eq(cfg_global(cfg)->listeners[0].text, "0.0.0.0:25");
	cfg_free(cfg);
}

/* ---- virtual-mtas and pools: global, then pool, then the VMTA's own */

static const char *vmta_conf =
	"<domain gmail.com>\n"
	"    max-smtp-out 10\n"
	"</domain>\n"
	"<virtual-mta v1>\n"
	"    smtp-source-ip 192.0.2.1\n"
	"    host-name mail1.example.net\n"
	"    <domain gmail.com>\n"
	"        max-msg-rate 100/h\n"
	"    </domain>\n"
	"</virtual-mta>\n"
	"<virtual-mta v2>\n"
	"    smtp-source-host 192.0.2.2 mail2.example.net\n"
	"</virtual-mta>\n"
	"<virtual-mta v3>\n"
	"</virtual-mta>\n"
	"<virtual-mta-pool pool1>\n"
	"    virtual-mta v1\n"
	"    virtual-mta v2\n"
	"    <domain *>\n"
	"        max-smtp-out 3\n"
	"        retry-after 1m\n"
	"    </domain>\n"
	"</virtual-mta-pool>\n";

Test(model, vmta_and_pool_domain_layers)
{
	struct cfg *cfg = testlib_load_ok(vmta_conf);
	const struct cfg_queue *q;

	q = cfg_queue_lookup(cfg, "gmail.com", NULL);
	cr_expect_eq(q->max_smtp_out, 10);
	cr_expect(q->max_msg_rate.unlimited);

	/* v1: pool's <domain *> is layered over global gmail.com, own rate on top */
	q = cfg_queue_lookup(cfg, "gmail.com", "v1");
	cr_expect_eq(q->max_smtp_out, 3);
	cr_expect_eq(q->max_msg_rate.count, 100);
	cr_expect_eq(q->retry_after.seconds[0], 60);

	q = cfg_queue_lookup(cfg, "yahoo.com", "v2");
	cr_expect_eq(q->max_smtp_out, 3);
	cr_expect(q->max_msg_rate.unlimited);

	/* v3 is in no pool: global settings only, shared with {default} */
	cr_expect_eq(cfg_queue_lookup(cfg, "gmail.com", "v3"),
		     cfg_queue_lookup(cfg, "gmail.com", NULL));
	cr_expect_null(cfg_queue_lookup(cfg, "gmail.com", "nosuch"));

	const struct cfg_vmta *v1 = cfg_vmta_find(cfg, "v1");
	cr_assert_not_null(v1);
	cr_expect_str_eq(v1->smtp_source_ip, "192.0.2.1");
	cr_expect_str_eq(v1->host_name, "mail1.example.net");
	cr_expect_str_eq(v1->pool, "pool1");
	const struct cfg_vmta *v2 = cfg_vmta_find(cfg, "v2");
	cr_assert_eq(v2->source_host_count, 1);
	cr_expect_str_eq(v2->source_hosts[0].hostname, "mail2.example.net");

	const struct cfg_pool *p = cfg_pool_find(cfg, "pool1");
	cr_assert_not_null(p);
	cr_assert_eq(p->member_count, 2);
	cr_expect_str_eq(p->members[0]->name, "v1");
	cr_expect_str_eq(p->members[1]->name, "v2");
	cfg_free(cfg);
}

/* ---- macros: expanded patterns; an explicit domain beats a macro one */

Test(model, domain_macro_and_explicit_precedence)
{
	struct cfg *cfg = testlib_load_ok(
		"<domain a.com>\n"
		"    max-smtp-out 6\n"
		"</domain>\n"
		"domain-macro big a.com,b.com\n"
		"<domain $big>\n"
		"    max-smtp-out 4\n"
		"    max-msg-rate 50/m\n"
		"</domain>\n"
		"<domain mx.$big>\n"
		"    max-smtp-out 1\n"
		"</domain>\n");

	const struct cfg_queue *a = cfg_queue_lookup(cfg, "a.com", NULL);
	const struct cfg_queue *b = cfg_queue_lookup(cfg, "b.com", NULL);
	cr_expect_eq(a->max_smtp_out, 6);
	cr_expect_eq(a->max_msg_rate.count, 50);
	cr_expect_eq(b->max_smtp_out, 4);
	cr_expect_eq(cfg_queue_lookup(cfg, "mx.b.com", NULL)->max_smtp_out, 1);
	cr_expect_eq(cfg_queue_lookup(cfg, "c.com", NULL)->max_smtp_out, 20);
	cfg_free(cfg);
}

/* ---- <source>: most specific CIDR, inheriting; named sources on top */

static const char *source_conf =
	"<source 10.1.0/24>\n"
	"    max-message-size 1M\n"
	"</source>\n"
	"<source 0/0>\n"
	"    max-message-size 10M\n"
	"    allow-relay no\n"
	"</source>\n"
	"<source 10.0.0.0/8>\n"
	"    always-allow-relaying yes\n"
	"</source>\n"
	"<source 2001:db8::/32>\n"
	"    always-allow-relaying yes\n"
	"</source>\n"
	"<source {auth}>\n"
	"    always-allow-relaying yes\n"
	"    process-x-job yes\n"
	"</source>\n";

struct source_case {
	const char *ip;
	const char *named;
	bool relay;
	uint64_t max_size;
	const char *name;
};

static const struct source_case source_cases[] = {
	{ "10.1.0.5", NULL, true, 1 << 20, "10.1.0.0/24" },
	{ "10.2.0.1", NULL, true, 10 << 20, "10.0.0.0/8" },
	{ "192.0.2.1", NULL, false, 10 << 20, "0/0" },
	{ "::1", NULL, false, 10 << 20, "0/0" },
	{ "2001:db8::5", NULL, true, 10 << 20, "2001:db8::/32" },
	{ "192.0.2.1", "{auth}", true, 10 << 20, "{auth}" },
	{ "10.1.0.7", "{auth}", true, 1 << 20, "{auth}" },
};

static void to_sockaddr(const char *ip, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		return;
	}
	cr_assert_eq(inet_pton(AF_INET6, ip, &a6->sin6_addr), 1);
	a6->sin6_family = AF_INET6;
}

Test(model, source_most_specific_cidr_and_named)
{
	struct cfg *cfg = testlib_load_ok(source_conf);

	for (size_t i = 0; i < ARRAY_SIZE(source_cases); i++) {
		const struct source_case *c = &source_cases[i];
		struct sockaddr_storage ss;
		to_sockaddr(c->ip, &ss);
		const struct cfg_source *s =
			cfg_source_lookup(cfg, (struct sockaddr *)&ss, c->named);
		cr_assert_not_null(s, "%s", c->ip);
		cr_expect_eq(s->always_allow_relaying, c->relay, "%s", c->ip);
		cr_expect_eq(s->max_message_size, c->max_size, "%s", c->ip);
		cr_expect_str_eq(s->name, c->name, "%s", c->ip);
	}
	struct sockaddr_storage ss;
	to_sockaddr("192.0.2.1", &ss);
	cr_expect_null(cfg_source_lookup(cfg, (struct sockaddr *)&ss, "{nosuch}"));
	cr_expect(cfg_source_lookup(cfg, (struct sockaddr *)&ss, "{auth}")->process_x_job);
	cr_expect_not(cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL)->process_x_job);
	cfg_free(cfg);
}

/* ---- the source guide's names next to PowerMTA's */

Test(model, source_guide_names)
{
	struct cfg *cfg = testlib_load_ok(
		"disk-queue /var/spool/coremta\n"
		"memory-pool-buffer-size 2m\n"
		"deliver-bounces no\n"
		"log-bounces yes\n"
		"process-user coremta\n"
		"<source 127.0.0.1>\n"
		"    allow-relay yes\n"
		"</source>\n"
		"<rejectlog-file /var/log/coremta/reject.log>\n"
		"    records c,r\n"
		"    max-size 100M\n"
		"</rejectlog-file>\n"
		"<domain *>\n"
		"    max-rcpt-per-message 50\n"
		"</domain>\n"
		"<bounce-category-patterns>\n"
		"    regex \"5\\.2\\.2\" action delete\n"
		"    /5\\.1\\.[1346]/ bad-mailbox\n"
		"    regex \"mailbox disabled\" category inactive-mailbox\n"
		"</bounce-category-patterns>\n");
	const struct cfg_global *g = cfg_global(cfg);

	cr_expect_str_eq(g->spool_dir, "/var/spool/coremta");
	cr_expect_eq(g->memory_pool_buffer_size, 2 << 20);
	cr_expect_not(g->deliver_bounces);
	cr_expect(g->log_bounces);
	cr_expect_str_eq(g->process_user, "coremta");
	struct sockaddr_storage ss;
	to_sockaddr("127.0.0.1", &ss);
	cr_expect(cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL)->always_allow_relaying);
	to_sockaddr("127.0.0.2", &ss);
	cr_expect_not(cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL)->always_allow_relaying);
	cr_assert_eq(cfg_rejectlog_count(cfg), 1);
	cr_expect_eq(cfg_rejectlog_at(cfg, 0)->records,
		     CFG_REC_REJECT_CONN | CFG_REC_REJECT_RCPT);
	cr_expect_eq(cfg_rejectlog_at(cfg, 0)->max_size, 100 << 20);
	cr_expect_eq(cfg_queue_lookup(cfg, "x.org", NULL)->max_rcpt_per_transaction, 50);

	const char *cat;
	const struct cfg_bounce_rule *r = cfg_bounce_classify(cfg, "5.2.2;mailbox full", &cat);
	cr_expect_eq(r->action, CFG_BOUNCE_DELETE);
	cr_expect_str_eq(cat, "quota-issues");	/* from the built-in rules */
	r = cfg_bounce_classify(cfg, "5.1.1;no such user", &cat);
	cr_expect_eq(r->action, CFG_BOUNCE_CLASSIFY);
	cr_expect_str_eq(cat, "bad-mailbox");
	cr_expect_str_eq(r->origin.file, "test.conf");
	cfg_bounce_classify(cfg, "5.0.0;mailbox disabled by admin", &cat);
	cr_expect_str_eq(cat, "inactive-mailbox");
	cfg_bounce_classify(cfg, "4.4.7;delivery time expired", &cat);
	cr_expect_str_eq(cat, "message-expired");
	cfg_bounce_classify(cfg, "9.9.9;nothing we know", &cat);
	cr_expect_str_eq(cat, "other");
	cfg_free(cfg);
}

/*
 * The built-in rules end in a catch-all, so every text gets a category;
 * a model without them is a bug, and the abort names the text.
 */
Test(model, bounce_classify_without_catch_all_is_a_bug, .signal = SIGABRT)
{
	struct cfg *cfg = testlib_load_ok("");
	const char *cat;

	testlib_expect_death();
	cfg->n_bounce_rules = 0;	/* what load never leaves */
	cfg_bounce_classify(cfg, "5.1.1;no such user", &cat);
}

Test(model, special_directives)
{
	struct cfg *cfg = testlib_load_ok(
		"smtp-listener 127.0.0.1:2525\n"
		"smtp-listener [::1]:2526 source=feeders tls=immediate\n"
		"http-access 127.0.0.1 admin\n"
		"http-access 10.0.0.0/8 monitor,deny-logs\n"
		"shards 2\n"
		"<source feeders>\n"
		"    always-allow-relaying yes\n"
		"</source>\n"
		"<smtp-pattern-list yahoo-backoff>\n"
		"    reply /421 .*\\[TS0[12]\\]/ mode=backoff,defer-queue\n"
		"    reply /too many/ disable-source-ip,reenable-after=1h\n"
		"</smtp-pattern-list>\n"
		"<domain yahoo.com>\n"
		"    smtp-pattern-list yahoo-backoff\n"
		"    smtp-hosts [127.0.0.1]:2526\n"
		"    type discard\n"
		"    dkim-sign if-x-dkim-options-present\n"
		"</domain>\n"
		"<acct-file /var/log/acct.csv>\n"
		"    records d,b,t,tq\n"
		"    record-fields d *,!orcpt,header_Message-Id\n"
		"    max-size 50M\n"
		"    delete-after never\n"
		"</acct-file>\n"
		"<acct-file |/usr/bin/logger -t acct>\n"
		"    records delivery\n"
		"</acct-file>\n"
		"<smtp-user alice>\n"
		"    password $6$salt$hash\n"
		"    source feeders\n"
		"</smtp-user>\n"
		"<shard 1>\n"
		"    cpu 1\n"
		"    domain gmail.com, googlemail.com\n"
		"</shard>\n");
	const struct cfg_global *g = cfg_global(cfg);

	cr_assert_eq(g->listener_count, 2);
	cr_expect_str_eq(g->listeners[1].source, "feeders");
	cr_expect(g->listeners[1].immediate_tls);
	cr_expect_eq(g->listeners[1].addr.ss.ss_family, AF_INET6);
	cr_assert_eq(g->http_access_count, 2);
	cr_expect_eq(g->http_access[0].level, CFG_HTTP_ADMIN);
	cr_expect(g->http_access[1].deny_logs);
	cr_expect_eq(g->shard_count, 2);

	const struct cfg_queue *q = cfg_queue_lookup(cfg, "yahoo.com", NULL);
	cr_assert_not_null(q->smtp_pattern_list);
	cr_expect_str_eq(q->smtp_pattern_list->name, "yahoo-backoff");
	cr_assert_eq(q->smtp_pattern_list->count, 2);
	cr_expect_eq(q->smtp_pattern_list->patterns[0].actions,
		     CFG_ACT_MODE_BACKOFF | CFG_ACT_DEFER_QUEUE);
	cr_expect_eq(q->smtp_pattern_list->patterns[1].reenable_after, 3600);
	cr_expect_str_eq(q->smtp_hosts, "[127.0.0.1]:2526");
	cr_expect_eq(q->type, CFG_TYPE_DISCARD);
	cr_expect_eq(q->dkim_sign, CFG_DKIM_IF_OPTIONS);

	cr_assert_eq(cfg_acct_count(cfg), 2);
	const struct cfg_acct *a = cfg_acct_at(cfg, 0);
	cr_expect_eq(a->records, CFG_REC_DELIVERY | CFG_REC_BOUNCE |
				 CFG_REC_TRANSIENT | CFG_REC_TRANSIENT_QUEUE);
	cr_assert_eq(a->record_fields_count, 1);
	cr_expect_eq(a->record_fields[0].fields.count, 3);
	cr_expect_str_eq(a->record_fields[0].fields.items[2], "header_Message-Id");
	cr_expect_eq(a->max_size, 50 << 20);
	cr_expect_eq(a->delete_after, 0);
	cr_expect(a->iso_times);
	const struct cfg_acct *pipe = cfg_acct_at(cfg, 1);
	cr_expect(pipe->is_pipe);
	cr_expect_str_eq(pipe->path, "/usr/bin/logger -t acct");
	cr_expect_eq(pipe->records, CFG_REC_DELIVERY);

	const struct cfg_smtp_user *u = cfg_smtp_user_find(cfg, "alice");
	cr_assert_not_null(u);
	cr_expect_str_eq(u->password, "$6$salt$hash");
	cr_assert_eq(cfg_shard_count(cfg), 1);
	cr_expect_eq(cfg_shard_at(cfg, 0)->cpu, 1);
	cr_expect_eq(cfg_shard_at(cfg, 0)->domains.count, 2);
	cfg_free(cfg);
}

/* ---- diagnostics: exact texts with file:line, and atomic failure */

struct diag_case {
	const char *text;
	bool strict;
	bool loads;		/* warnings only */
	const char *expect;	/* a formatted diagnostic that must appear */
};

static const struct diag_case diag_cases[] = {
	{ "<domain *>\n  max-smtp-out abc\n</domain>\n", false, false,
	  "test.conf:2: error: 'max-smtp-out': expected a whole number from 1 to 100000, got 'abc'" },
	{ "<domain *>\n  max-smtp-out 0\n</domain>\n", false, false,
	  "test.conf:2: error: 'max-smtp-out': expected a whole number from 1 to 100000, got '0'" },
	{ "<domain *>\n  max-msg-per-connection unlimited\n</domain>\n", false, true, NULL },
	{ "<domain *>\n  bounce-after 4x\n</domain>\n", false, false,
	  "test.conf:2: error: 'bounce-after': " },
	{ "<domain *>\n  max-msg-rate fast\n</domain>\n", false, false,
	  "test.conf:2: error: 'max-msg-rate': " },
	{ "<domain *>\n  use-starttls maybe\n</domain>\n", false, false,
	  "test.conf:2: error: 'use-starttls': " },
	{ "<domain *>\n  type carrier-pigeon\n</domain>\n", false, false,
	  "test.conf:2: error: 'type': expected one of smtp, pipe, file, discard, http-delivery, got 'carrier-pigeon'" },
	{ "<domain *>\n  max-smtp-out 5 6\n</domain>\n", false, false,
	  "test.conf:2: error: 'max-smtp-out' takes one value" },
	{ "max-smtp-out 5\n", false, false,
	  "test.conf:1: error: 'max-smtp-out' is not allowed in top level (it belongs in <domain>)" },
	{ "<domain *>\n  frobnicate 1\n</domain>\n", false, true,
	  "test.conf:2: warning: unknown directive 'frobnicate' in <domain>" },
	{ "<domain *>\n  frobnicate 1\n</domain>\n", true, false,
	  "test.conf:2: error: unknown directive 'frobnicate' in <domain>" },
	{ "<signals>\n  api-key x\n</signals>\n", false, true,
	  "test.conf:1: warning: unknown block <signals>; its contents are ignored" },
	{ "<bounce-processor>\n  forward-errors-to x@y.example\n</bounce-processor>\n"
	  "smtp-server-tls-allow-tlsv1.1 yes\n", false, true,
	  "test.conf:4: warning: 'smtp-server-tls-allow-tlsv1.1' is accepted but not acted on" },
	{ "<address-list>\n  domain x.example\n</address-list>\n", false, true,
	  "test.conf:1: warning: <address-list> at top level without a name is used by nothing "
	  "(suppression-lists names one); its contents are ignored" },
	{ "<feedback-loop-processor>\n<address-list>\n  address /(x/\n</address-list>\n</feedback-loop-processor>\n",
	  false, false, "test.conf:3: error: 'address': " },
	{ "<domain *>\n  use-dane yes\n</domain>\n", false, true,
	  "test.conf:2: warning: 'use-dane' is accepted but not acted on" },
	{ "<domain *>\n  max-data-volume-rate 1g/h\n</domain>\n", false, true,
	  "test.conf:2: warning: 'max-data-volume-rate' is accepted but not acted on" },
	{ "<virtual-mta-pool p>\n  virtual-mta nosuch\n</virtual-mta-pool>\n", false, false,
	  "test.conf:2: error: 'virtual-mta': no <virtual-mta nosuch> is defined" },
	{ "<domain *>\n  smtp-pattern-list nope\n</domain>\n", false, false,
	  "test.conf:2: error: 'smtp-pattern-list': no <smtp-pattern-list nope> is defined" },
	{ "<shard 0>\n  domain gmail.com\n</shard>\n<shard 1>\n  domain GMAIL.com\n</shard>\n",
	  false, false,
	  "test.conf:4: error: domain 'GMAIL.com' is pinned to <shard 0> and to <shard 1>: a domain belongs to exactly one shard" },
	{ "<shard 0>\n  cpu 1\n</shard>\n<shard 1>\n  cpu 1\n</shard>\n", false, false,
	  "test.conf:4: error: <shard 1> uses cpu 1, already given to <shard 0> at test.conf:1" },
	{ "shards 2\n<shard 2>\n  domain x.org\n</shard>\n", false, false,
	  "test.conf:2: error: <shard 2> does not exist: 'shards 2' numbers them 0 to 1" },
	{ "smtp-listener 127.0.0.1\n", false, false,
	  "test.conf:1: error: 'smtp-listener': " },
	{ "smtp-listener 127.0.0.1:25 source=nope\n", false, false,
	  "test.conf:1: error: 'smtp-listener': source=nope names no <source nope> block" },
	{ "smtp-listener 127.0.0.1:25\nsmtp-listener 127.0.0.1:25\n", false, false,
	  "test.conf:2: error: 'smtp-listener': 127.0.0.1:25 is already a listener (test.conf:1)" },
	{ "<domain a..b>\n</domain>\n", false, false,
	  "test.conf:1: error: <domain>: invalid domain pattern 'a..b'" },
	{ "<source 10.0.0.300>\n</source>\n", false, false,
	  "test.conf:1: error: <source>: " },
	{ "<virtual-mta v>\n</virtual-mta>\n<virtual-mta v>\n</virtual-mta>\n", false, false,
	  "test.conf:3: error: virtual-mta 'v' is already defined at test.conf:1" },
	{ "<virtual-mta v>\n</virtual-mta>\n"
	  "<virtual-mta-pool a>\n virtual-mta v\n <domain *>\n max-smtp-out 1\n </domain>\n</virtual-mta-pool>\n"
	  "<virtual-mta-pool b>\n virtual-mta v\n <domain *>\n max-smtp-out 2\n </domain>\n</virtual-mta-pool>\n",
	  false, false,
	  "test.conf:10: error: virtual-mta 'v' is in two pools with <domain> blocks ('a' and 'b')" },
	{ "<acct-file /x>\n  records d,zz\n</acct-file>\n", false, false,
	  "test.conf:2: error: 'records': unknown record type 'zz' (expected d, b, t, tq, r, f, rb or rs)" },
	{ "<smtp-pattern-list l>\n  reply /x/ explode\n</smtp-pattern-list>\n", false, false,
	  "test.conf:2: error: 'reply': unknown action 'explode'" },
	{ "<smtp-pattern-list l>\n  reply /(x/ mode=backoff\n</smtp-pattern-list>\n", false, false,
	  "test.conf:2: error: 'reply': " },
	{ "<source {auth}>\n  default-virtual-mta ghost\n</source>\n", false, false,
	  "test.conf:2: error: 'default-virtual-mta': no virtual-mta or pool named 'ghost'" },
	{ "<source {auth}>\n  invalid-virtual-mta-fallback ghost\n</source>\n", false, false,
	  "test.conf:2: error: 'invalid-virtual-mta-fallback': no virtual-mta or pool named 'ghost'" },
	{ "<domain *>\n  backoff-reroute-to-virtual-mta ghost\n</domain>\n", false, false,
	  "test.conf:2: error: 'backoff-reroute-to-virtual-mta': no virtual-mta or pool named 'ghost'" },
	{ "<source 0/0>\n  pattern-list nope\n</source>\n", false, false,
	  "test.conf:2: error: 'pattern-list': no <pattern-list nope> is defined" },
	{ "<virtual-mta v>\n</virtual-mta>\n<pattern-list p>\n"
	  "  rcpt-to /x/ virtual-mta=v recipient-priority=5\n</pattern-list>\n", false, true,
	  "test.conf:4: warning: 'recipient-priority=' is accepted but not acted on" },
	{ "<domain *>\n  <source 0/0>\n  </source>\n</domain>\n", false, false,
	  "test.conf:2: error: <source> is not allowed inside <domain>" },
	{ "<domain *>\n  max-smtp-out 5\n</domain>\n<domain *>\n  max-smtp-out 6\n</domain>\n",
	  false, true,
	  "test.conf:5: warning: 'max-smtp-out' for <domain *> overrides the value set at test.conf:2" },
	{ "host-name a.example\nhost-name b.example\n", false, true,
	  "test.conf:2: warning: 'host-name' overrides the value set at test.conf:1" },
	{ "http-access 0/0 root\n", false, false,
	  "test.conf:1: error: 'http-access': unknown access level 'root'" },
	{ "bounce-category-class bad-mailbox permanent\n", false, false,
	  "test.conf:1: error: 'bounce-category-class': expected hard or soft, got 'permanent'" },
	{ "bounce-category-class bad-mailbox\n", false, false,
	  "test.conf:1: error: 'bounce-category-class' expects CATEGORY hard|soft" },
	{ "<spool /a>\n</spool>\n<spool /b>\n</spool>\n", false, true,
	  "test.conf:3: warning: only one spool directory is used today; '/b' is ignored" },
};

Test(model, diagnostics_exact_text)
{
	for (size_t i = 0; i < ARRAY_SIZE(diag_cases); i++) {
		const struct diag_case *c = &diag_cases[i];
		struct diag_list dl = { 0 };
		struct cfg_load_opts opts = { .strict = c->strict };
		struct cfg *cfg = (struct cfg *)0x1;	/* must stay untouched on failure */
		int rc = cfg_load_string("test.conf", c->text, NULL, &opts, &cfg, &dl);
		char *t = testlib_diag_text(&dl);
		if (c->loads) {
			cr_expect_eq(rc, 0, "case %zu should load:\n%s", i, t);
			if (rc == 0)
				cfg_free(cfg);
		} else {
			cr_expect_lt(rc, 0, "case %zu should fail:\n%s", i, c->text);
			cr_expect_eq(cfg, (struct cfg *)0x1, "case %zu: output touched", i);
			if (rc == 0)
				cfg_free(cfg);
		}
		if (c->expect)
			cr_expect(strstr(t, c->expect) != NULL,
				  "case %zu: expected\n  %s\ngot:\n%s", i, c->expect, t);
		free(t);
		diag_free(&dl);
	}
}

Test(model, show_queue_names_origins)
{
	struct cfg *cfg = testlib_load_ok(domains_conf);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert_eq(cfg_show_queue(cfg, "mail.example.com", NULL, f), 0);
	cr_expect_eq(cfg_show_queue(cfg, "x", "nosuch", f), -ENOENT);
	fclose(f);
	cr_expect(strstr(buf, "most specific match: <domain mail.example.com>"), "%s", buf);
	cr_expect(strstr(buf, "bounce-after") && strstr(buf, "test.conf:2"), "%s", buf);
	cr_expect(strstr(buf, "max-smtp-out                       7"), "%s", buf);
	cr_expect(strstr(buf, "test.conf:8"), "%s", buf);
	cr_expect(strstr(buf, "10/m") && strstr(buf, "test.conf:5"), "%s", buf);
	cr_expect(strstr(buf, "connect-timeout                    2m") &&
		  strstr(buf, "default"), "%s", buf);
	free(buf);
	cfg_free(cfg);
}

/* load_diags - load text and return every diagnostic as text; *rc gets the result */
static char *load_diags(const char *text, int *rc)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load(text, &dl);
	char *t = testlib_diag_text(&dl);

	*rc = cfg ? 0 : -1;
	cfg_free(cfg);
	diag_free(&dl);
	return t;
}

Test(model, show_marks_values_not_acted_on)
{
	struct cfg *cfg = testlib_load_ok("<domain *>\n  retry-recipients-after 20m\n  max-smtp-out 5\n</domain>\n");
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert_eq(cfg_show_queue(cfg, "x.test", NULL, f), 0);
	fclose(f);
	cr_expect(strstr(buf, "test.conf:2  [not acted on]"), "%s", buf);
	char *line = strstr(buf, "max-smtp-out ");
	cr_assert_not_null(line);
	cr_expect(strncmp(strchr(line, '\n') - 16, "[not acted on]", 14) != 0, "%s", buf);
	free(buf);
	cfg_free(cfg);
}

/* the source guide's garbled `host-name ://yourdeliverydomain.com` */
Test(model, host_name_must_be_a_host_name)
{
	static const char *const bad[] = {
		"://yourdeliverydomain.com", "mail_1.example.com", "-a.example.com",
		"a..example.com", "a.example.com-", "[999.1.1.1]", "[IPv6:zz::1]",
	};
	static const char *const good[] = {
		"mail1.example.com", "mail1.example.com.", "localhost", "[192.0.2.1]",
		"[IPv6:2001:db8::1]", "xn--bcher-kva.example",
	};
	int rc;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char *text = xasprintf("<virtual-mta v1>\n  host-name %s\n</virtual-mta>\n", bad[i]);
		char *t = load_diags(text, &rc);
		char *want = xasprintf("test.conf:2: error: 'host-name': '%s' is not a host name", bad[i]);
		cr_expect_eq(rc, -1, "%s loaded", bad[i]);
		cr_expect(strstr(t, want), "%s", t);
		free(want), free(t), free(text);
	}
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		char *text = xasprintf("host-name %s\n", good[i]);
		char *t = load_diags(text, &rc);
		cr_expect_eq(rc, 0, "%s: %s", good[i], t);
		free(t), free(text);
	}
}

/* the guide's "Set initial-pts 60 minimum": explained, not "unknown" */
Test(model, initial_pts_is_explained)
{
	int rc;
	char *t = load_diags("initial-pts 60\n<domain *>\n  initial-pts 60\n</domain>\n", &rc);

	cr_expect_eq(rc, 0, "%s", t);
	cr_expect(strstr(t, "test.conf:1: warning: 'initial-pts' is not a PowerMTA directive"), "%s", t);
	cr_expect(strstr(t, "test.conf:3: warning: 'initial-pts' is not a PowerMTA directive"), "%s", t);
	cr_expect(strstr(t, "retry-after"), "%s", t);
	cr_expect_null(strstr(t, "unknown directive"), "%s", t);
	free(t);
}

Test(model, typo_gets_a_suggestion)
{
	int rc;
	char *t = load_diags("<domain *>\n  max-smpt-out 10\n</domain>\nbounce-afer 1d\nzzzz-qqqq 1\n", &rc);

	cr_expect_eq(rc, 0, "%s", t);
	cr_expect(strstr(t, "test.conf:2: warning: unknown directive 'max-smpt-out' in <domain>; did you mean 'max-smtp-out'?"), "%s", t);
	cr_expect(strstr(t, "test.conf:4: warning: unknown directive 'bounce-afer' in top level; did you mean 'bounce-after'?"), "%s", t);
	cr_expect(strstr(t, "test.conf:5: warning: unknown directive 'zzzz-qqqq' in top level\n") ||
		  (strstr(t, "'zzzz-qqqq' in top level") && !strstr(t, "zzzz-qqqq' in top level;")), "%s", t);
	free(t);
}

/* every error in one pass: a broken tag does not hide a bad value */
Test(model, errors_after_a_syntax_error_are_reported_too)
{
	int rc;
	char *t = load_diags("<domain x.test\n  retry-after 10 min\n</domain>\n"
			     "<domain y.test>\n  max-smtp-out many\n</domain>\n", &rc);

	cr_expect_eq(rc, -1);
	cr_expect(strstr(t, "test.conf:1: error: malformed tag: missing '>'"), "%s", t);
	cr_expect(strstr(t, "test.conf:2: error: 'retry-after'"), "%s", t);
	cr_expect(strstr(t, "test.conf:5: error: 'max-smtp-out'"), "%s", t);
	free(t);
}

Test(model, spool_is_powermta_name_for_the_spool_directory)
{
	struct cfg *cfg = testlib_load_ok("spool /var/spool/pmta\n");

	cr_expect_str_eq(cfg_global(cfg)->spool_dir, "/var/spool/pmta");
	cfg_free(cfg);
}

/* hotmail.com twice in one macro: said once, no self-override warnings */
Test(model, duplicate_macro_value_is_reported_once)
{
	int rc;
	char *t = load_diags("domain-macro ms hotmail.com,outlook.com,hotmail.com,HOTMAIL.com\n"
			     "<domain $ms>\n  max-smtp-out 5\n</domain>\n", &rc);

	cr_expect_eq(rc, 0, "%s", t);
	cr_expect(strstr(t, "test.conf:1: warning: domain-macro ms lists 'hotmail.com' more than once; the repeats are ignored"), "%s", t);
	cr_expect_null(strstr(t, "overrides"), "%s", t);
	cr_expect_null(strstr(t, "more than once; the repeats are ignored\ntest.conf:1: warning: domain-macro ms lists"),
		       "one warning per name: %s", t);
	free(t);
}

/* <shard>'s cpu and domain are applied, so they do not warn */
Test(model, shard_directives_do_not_warn)
{
	int rc;
	char *t = load_diags("shards 2\n<shard 1>\n  cpu 0\n  domain gmail.com\n</shard>\n", &rc);

	cr_expect_eq(rc, 0, "%s", t);
	cr_expect_null(strstr(t, "not acted on"), "%s", t);
	free(t);
}

/* Hard/soft per bounce category (issue #15): defaults and overrides. */
Test(model, bounce_category_class_defaults_and_overrides)
{
	struct cfg *cfg = testlib_load_ok("");

	cr_expect_eq(cfg_bounce_class_of(cfg, "bad-mailbox"), CFG_BOUNCE_HARD);
	cr_expect_eq(cfg_bounce_class_of(cfg, "bad-domain"), CFG_BOUNCE_HARD);
	cr_expect_eq(cfg_bounce_class_of(cfg, "inactive-mailbox"), CFG_BOUNCE_HARD);
	cr_expect_eq(cfg_bounce_class_of(cfg, "quota-issues"), CFG_BOUNCE_SOFT);
	cr_expect_eq(cfg_bounce_class_of(cfg, "policy-related"), CFG_BOUNCE_SOFT);
	cr_expect_eq(cfg_bounce_class_of(cfg, "spam-related"), CFG_BOUNCE_SOFT);
	cr_expect_eq(cfg_bounce_class_of(cfg, "other"), CFG_BOUNCE_SOFT);
	cr_expect_eq(cfg_bounce_class_of(cfg, NULL), CFG_BOUNCE_SOFT);
	cr_expect_str_eq(cfg_bounce_class_name(CFG_BOUNCE_HARD), "hard");
	cr_expect_str_eq(cfg_bounce_class_name(CFG_BOUNCE_SOFT), "soft");
	cfg_free(cfg);

	cfg = testlib_load_ok("bounce-category-class bad-domain soft\n"
		      "bounce-category-class Quota-Issues hard\n"
		      "bounce-category-class my-custom hard\n"
		      "bounce-category-class my-custom soft\n");
	cr_expect_eq(cfg_bounce_class_of(cfg, "bad-domain"), CFG_BOUNCE_SOFT);
	cr_expect_eq(cfg_bounce_class_of(cfg, "quota-issues"), CFG_BOUNCE_HARD);
	cr_expect_eq(cfg_bounce_class_of(cfg, "my-custom"), CFG_BOUNCE_SOFT,
		     "the last line for a category wins");
	cr_expect_eq(cfg_bounce_class_of(cfg, "bad-mailbox"), CFG_BOUNCE_HARD);
	cfg_free(cfg);
}

/* <bounce-processor>/<feedback-loop-processor> and their <address-list>s */
Test(model, processors_and_address_lists)
{
	struct cfg *cfg = testlib_load_ok("<bounce-processor>\n"
				  "  deliver-matched-email yes\n"
				  "  <address-list>\n"
				  "    domain bounces.sender.example\n"
				  "    address bounce@sender.example\n"
				  "  </address-list>\n"
				  "</bounce-processor>\n"
				  "<feedback-loop-processor>\n"
				  "  <address-list>\n"
				  "    address /^fbl(-[a-z]+)?@sender\\.example$/\n"
				  "  </address-list>\n"
				  "</feedback-loop-processor>\n");
	const struct cfg_processor *p;

	cr_expect_eq(cfg_processor_count(cfg), 2);
	p = cfg_processor_match(cfg, "bounces-u=x.example@BOUNCES.sender.example");
	cr_assert_not_null(p);
	cr_expect_eq(p->kind, CFG_PROC_BOUNCE);
	cr_expect(p->deliver_matched);
	cr_expect(p->deliver_unmatched, "PowerMTA's default");
	cr_expect_eq(cfg_processor_match(cfg, "Bounce@sender.example"), p);
	p = cfg_processor_match(cfg, "fbl-yahoo@sender.example");
	cr_assert_not_null(p);
	cr_expect_eq(p->kind, CFG_PROC_FEEDBACK);
	cr_expect_not(p->deliver_matched);
	cr_expect_null(cfg_processor_match(cfg, "user@sender.example"));
	cr_expect_null(cfg_processor_match(cfg, "x@sub.bounces.sender.example"));
	cfg_free(cfg);
}

/* ---- <pattern-list> routing (cfg_pattern_route) */

struct route_ctx {
	const char *const *rcpts;
	const char *header_name, *header_value;
};

static const char *route_rcpt(void *ctx, size_t i)
{
	return ((const struct route_ctx *)ctx)->rcpts[i];
}

static bool route_header(void *ctx, const char *name, const struct cfg_regex *re)
{
	const struct route_ctx *r = ctx;

	return r->header_name && strcasecmp(name, r->header_name) == 0 &&
	       cfg_regex_match(re, r->header_value, strlen(r->header_value)) == 1;
}

Test(model, pattern_list_first_matching_rule_wins)
{
	struct cfg *cfg = testlib_load_ok(
		"<virtual-mta a>\n</virtual-mta>\n<virtual-mta b>\n</virtual-mta>\n"
		"<virtual-mta c>\n</virtual-mta>\n"
		"<virtual-mta-pool p>\n  virtual-mta a\n</virtual-mta-pool>\n"
		"<pattern-list pl>\n"
		"  rcpt-to /^prio@/ recipient-priority=9\n"	/* routes nothing */
		"  rcpt-to /@gold\\.test$/ virtual-mta=c\n"
		"  mail-from /@a\\.test$/ virtual-mta=a\n"
		"  header X-List /^weekly/i virtual-mta=p\n"
		"  mail-from /./ virtual-mta=b\n"
		"</pattern-list>\n");
	const struct cfg_pattern_list *pl = cfg_pattern_list_find(cfg, "pl");
	static const struct {
		const char *from;
		const char *rcpts[3];
		const char *hname, *hvalue;
		const char *want;
	} cases[] = {
		{ "s@a.test", { "x@y.test" }, NULL, NULL, "a" },
		{ "s@a.test", { "x@y.test", "z@gold.test" }, NULL, NULL, "c" },
		{ "s@o.test", { "prio@y.test" }, "x-list", "Weekly news", "p" },
		{ "s@o.test", { "x@y.test" }, "X-List", "daily", "b" },
		{ "", { "x@y.test" }, NULL, NULL, NULL },	/* <> matches nothing */
	};

	cr_assert_not_null(pl);
	cr_expect_null(cfg_pattern_list_find(cfg, "other"));
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct route_ctx rc = { cases[i].rcpts, cases[i].hname, cases[i].hvalue };
		size_t n = 0;
		while (n < 3 && cases[i].rcpts[n])
			n++;
		struct cfg_route_msg m = { .mail_from = cases[i].from, .nrcpt = n,
					   .rcpt = route_rcpt, .header = route_header, .ctx = &rc };
		const char *got = cfg_pattern_route(pl, &m);
		if (cases[i].want)
			cr_expect(got && strcmp(got, cases[i].want) == 0, "case %zu: got %s, want %s",
				  i, got ? got : "NULL", cases[i].want);
		else
			cr_expect_null(got, "case %zu: got %s", i, got);
	}
	cfg_free(cfg);
}
