/*
 * tests/config/test_reference_configs.c - the configurations operators
 * bring load with no errors and with exactly the warnings we expect, each
 * at its file:line.  The project's own copies of their constructs live in
 * tests/data/configs/; ../shared/reference/configs, when a checkout has
 * it beside, adds the originals (skipped, never required, without it).
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <glob.h>

#include "config/config.h"
#include "tests/lib/testlib.h"

static struct cfg *load_path(char *path, struct diag_list *dl,
			     char **path_out)
{
	struct cfg *cfg = NULL;
	int rc = cfg_load_file(path, NULL, &cfg, dl);
	char *t = testlib_diag_text(dl);

	cr_assert_eq(rc, 0, "%s does not load:\n%s", path, t);
	cr_assert_eq(dl->errors, 0);
	free(t);
	*path_out = path;
	return cfg;
}

static struct cfg *load_data(const char *name, struct diag_list *dl,
			     char **path_out)
{
	return load_path(xasprintf("data/configs/%s", name), dl, path_out);
}

/* expect_warnings - exactly these, in this order: no more, no fewer */
static void expect_warnings(const struct diag_list *dl, const char *path,
			    const char *const *want)
{
	char *t = testlib_diag_text(dl);
	size_t n = 0;

	for (; want[n]; n++) {
		char *line = xasprintf("%s:%s", path, want[n]);
		cr_expect(n < dl->count && strstr(t, line), "expected\n  %s\nin:\n%s", line, t);
		free(line);
	}
	cr_expect_eq(dl->count, n, "expected %zu warnings, got:\n%s", n, t);
	free(t);
}

/*
 * PowerMTA's shipped <bounce-category-patterns> and a common
 * <smtp-pattern-list>, as copied around: `// other`, wrapped rules,
 * a macro naming hotmail.com twice, `spool`.
 */
Test(reference_configs, pmta_defaults_as_circulated)
{
	struct diag_list dl = { 0 };
	char *path;
	struct cfg *cfg = load_data("pmta-defaults.conf", &dl, &path);
	static const char *const warnings[] = {
		"40: warning: the /regex/ on this line is not closed before line 41 ends it; lines 40-41 are joined as '/(user|mailbox|",
		"89: warning: the /regex/ on this line is not closed before line 90 ends it; lines 89-90 are joined as 'reply /^421 4",
		"19: warning: domain-macro microsoft lists 'hotmail.com' more than once; the repeats are ignored",
		"9: warning: 'postmaster' is accepted but not acted on",
		NULL,
	};

	expect_warnings(&dl, path, warnings);
	cr_expect_str_eq(cfg_global(cfg)->spool_dir, "/var/spool/pmta");

	const char *cat = NULL;
	/* the catch-all takes what nothing else names */
	cfg_bounce_classify(cfg, "5.9.9;the moon is in the wrong phase", &cat);
	cr_expect_str_eq(cat, "other");
	cfg_bounce_classify(cfg, "5.0.0;your account is not activated", &cat);
	cr_expect_str_eq(cat, "inactive-mailbox", "the joined rule works");
	cfg_bounce_classify(cfg, "5.1.1;no such user here", &cat);
	cr_expect_str_eq(cat, "bad-mailbox");

	const struct cfg_queue *q = cfg_queue_lookup(cfg, "hotmail.com", NULL);
	cr_expect_eq(q->max_smtp_out, 10);
	cr_expect_eq(cfg_queue_lookup(cfg, "ymail.com", NULL)->max_smtp_out, 8);
	cr_assert_not_null(q->smtp_pattern_list);
	cr_expect_eq(q->smtp_pattern_list->count, 6);
	cfg_free(cfg);
	free(path);
	diag_free(&dl);
}

Test(reference_configs, guide_conf)
{
	struct diag_list dl = { 0 };
	char *path;
	struct cfg *cfg = load_data("guide.conf", &dl, &path);
	const struct cfg_global *g = cfg_global(cfg);
	static const char *const warnings[] = {
		"11: warning: 'memory-pool-buffer-size' is accepted but not acted on",
		NULL,
	};

	expect_warnings(&dl, path, warnings);
	cr_expect_str_eq(g->process_user, "coremta");
	cr_expect_str_eq(g->spool_dir, "/var/spool/coremta");
	cr_expect_eq(g->memory_pool_buffer_size, 2 << 20);
	cr_expect_eq(g->total_max_smtp_out, 250);
	cr_expect_not(g->deliver_bounces);
	cr_expect_eq(cfg_vmta_count(cfg), 2);
	cr_expect_str_eq(cfg_vmta_find(cfg, "vmta-ip1")->smtp_source_ip, "192.0.2.1");
	cr_expect_str_eq(cfg_vmta_find(cfg, "vmta-ip2")->host_name,
			 "mail2.yourdeliverydomain.com");
	cr_expect_eq(cfg_pool_find(cfg, "pool1")->member_count, 2);
	const struct cfg_queue *q = cfg_queue_lookup(cfg, "gmail.com", "vmta-ip1");
	cr_expect_eq(q->max_smtp_out, 10);
	cr_expect_eq(q->max_msg_per_connection, 100);
	cr_expect_eq(q->max_msg_rate.count, 1000);
	cr_expect_eq(q->max_msg_rate.period_s, 3600);
	cr_expect_eq(cfg_queue_lookup(cfg, "example.org", NULL)->max_smtp_out, 20);

	const char *cat;
	cr_expect_eq(cfg_bounce_classify(cfg, "5.2.2;over quota", &cat)->action,
		     CFG_BOUNCE_DELETE);
	cfg_bounce_classify(cfg, "5.1.1;unknown", &cat);
	cr_expect_str_eq(cat, "bad-mailbox");
	cfg_free(cfg);
	free(path);
	diag_free(&dl);
}

Test(reference_configs, esp_demo_conf)
{
	struct diag_list dl = { 0 };
	char *path;
	struct cfg *cfg = load_data("esp-demo.conf", &dl, &path);
	const struct cfg_global *g = cfg_global(cfg);
	static const char *const warnings[] = {
		"8: warning: 'postmaster' is accepted but not acted on",
		"13: warning: <rewrite-list> is accepted but not acted on; its contents are ignored",
		"18: warning: 'log-connections' is accepted but not acted on",
		"19: warning: 'log-commands' is accepted but not acted on",
		"20: warning: 'log-data' is accepted but not acted on",
		"25: warning: 'rewrite-list' is accepted but not acted on",
		"35: warning: 'smtp-server-tls-allow-tlsv1.1' is accepted but not acted on",
		"36: warning: 'smtp-server-tls-allow-tlsv1.2' is accepted but not acted on",
		"39: warning: 'password' has no value (everything after '#' is a comment); it is left unset",
		"69: warning: unknown block <tracking>; its contents are ignored",
		"75: warning: unknown directive 'enable-tracking' in top level",
		"112: warning: 'deliver-only' is accepted but not acted on",
		NULL,
	};

	/* what coremta does not act on yet says so, where it is, once */
	expect_warnings(&dl, path, warnings);
	cr_expect_str_eq(g->postmaster, "postmaster@esp.example.net");
	cr_assert_eq(g->listener_count, 2);
	cr_expect_str_eq(g->listeners[0].text, "0.0.0.0:5587");
	cr_expect_str_eq(g->host_name, "mta.esp.example.net");
	cr_expect_eq(g->relay_domains.count, 3);
	cr_expect_eq(g->http_mgmt_port, 8080);
	cr_expect_eq(g->http_access_count, 2);
	cr_expect_not(g->run_as_root);
	cr_expect_str_eq(g->spool_dir, "/var/spool/pmta");
	/* log-file is acted on (util/log.h): no warning, PowerMTA's 8 old files */
	cr_expect_str_eq(g->log_file, "/var/log/pmta/pmta.log");
	cr_expect_eq(g->log_rotate, 8);

	/* the pool's <domain *> reaches its member's queues */
	const struct cfg_queue *q = cfg_queue_lookup(cfg, "gmail.com", "main1");
	cr_expect_eq(q->max_smtp_out, 20);
	cr_expect_eq(q->bounce_after, 4 * 86400 + 12 * 3600);
	cr_expect_eq(q->dkim_sign, CFG_DKIM_YES);
	/* the key was read at load time (relative to the file) */
	cr_assert_eq(g->domain_keys.count, 1);
	cr_expect_str_eq(g->domain_keys.items[0].selector, "s1");
	cr_expect_str_eq(g->domain_keys.items[0].domain, "esp.example.net");
	cr_expect_not_null(g->domain_keys.items[0].key);
	const struct cfg_vmta *v = cfg_vmta_find(cfg, "main1");
	cr_assert_eq(v->source_host_count, 1);
	cr_expect_str_eq(v->source_hosts[0].ip, "198.51.100.10");

	cr_assert_eq(cfg_acct_count(cfg), 2);
	cr_expect_eq(cfg_acct_at(cfg, 0)->max_size, 50 << 20);
	cr_expect_eq(cfg_acct_at(cfg, 0)->move_interval, 300);
	cr_expect(cfg_acct_at(cfg, 1)->is_pipe);
	cr_expect_str_eq(cfg_acct_at(cfg, 1)->path,
			 "/usr/local/bin/acct-loader --log loader.log");
	cr_expect_eq(cfg_acct_at(cfg, 1)->record_fields[0].fields.count, 3);

	const struct cfg_smtp_user *u = cfg_smtp_user_find(cfg, "injector");
	cr_assert_not_null(u);
	cr_expect_eq(u->method, CFG_AUTH_PASSWORD);
	cfg_free(cfg);
	free(path);
	diag_free(&dl);
}

/* ---- the originals in ../shared, when they are there ---- */

/*
 * Every config ../shared/reference/configs holds loads without errors,
 * but for the DKIM key files it names: those live on the machine the
 * config came from, and a missing key is an error (it would not sign).
 */
Test(reference_configs, shared_originals_load)
{
	char *pat = xasprintf("%s/reference/configs/*.conf", testlib_shared_dir());
	glob_t g;

	if (glob(pat, 0, NULL, &g) != 0) {
		free(pat);
		cr_skip_test("no ../shared/reference/configs beside this checkout");
	}
	for (size_t i = 0; i < g.gl_pathc; i++) {
		struct diag_list dl = { 0 };
		struct cfg *cfg = NULL;
		int rc = cfg_load_file(g.gl_pathv[i], NULL, &cfg, &dl);
		char *t = testlib_diag_text(&dl);
		size_t other = 0;
		for (size_t k = 0; k < dl.count; k++)
			other += dl.items[k].severity == DIAG_ERROR &&
				 !strstr(dl.items[k].text, "'domain-key': cannot read key file");
		cr_expect(rc == 0 || other == 0, "%s does not load:\n%s", g.gl_pathv[i], t);
		free(t);
		cfg_free(cfg);
		diag_free(&dl);
	}
	globfree(&g);
	free(pat);
}

Test(reference_configs, embedded_default_is_clean_of_errors)
{
	struct diag_list dl = { 0 };
	extern const char engine_default_config[];
	struct cfg *cfg = testlib_load(engine_default_config, &dl);
	char *t = testlib_diag_text(&dl);

	cr_assert_not_null(cfg, "%s", t);
	cr_expect_str_eq(cfg_global(cfg)->listeners[0].text, "127.0.0.1:2525");
	cr_expect_str_eq(cfg_global(cfg)->spool_dir, "./var/spool");
	cr_expect_eq(cfg_queue_lookup(cfg, "hotmail.com", NULL)->max_msg_rate.count, 1000);
	free(t);
	diag_free(&dl);
	cfg_free(cfg);
}
