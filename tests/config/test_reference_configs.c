/*
 * tests/config/test_reference_configs.c - the configurations operators
 * bring (../shared/reference/configs/) load with no errors and with the
 * warnings we expect, each at its file:line.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "tests/lib/testlib.h"

static struct cfg *load_reference(const char *name, struct diag_list *dl,
				  char **path_out)
{
	char *path = xasprintf("%s/reference/configs/%s", testlib_shared_dir(), name);
	struct cfg *cfg = NULL;
	int rc = cfg_load_file(path, NULL, &cfg, dl);
	char *t = testlib_diag_text(dl);

	cr_assert_eq(rc, 0, "%s does not load:\n%s", path, t);
	cr_assert_eq(dl->errors, 0);
	free(t);
	*path_out = path;
	return cfg;
}

static void expect_diag(const struct diag_list *dl, const char *path, int line,
			const char *text)
{
	char *want = xasprintf("%s:%d: warning: %s", path, line, text);
	char *t = testlib_diag_text(dl);

	cr_expect(strstr(t, want) != NULL, "expected\n  %s\nin:\n%s", want, t);
	free(want);
	free(t);
}

Test(reference_configs, seed_conf)
{
	struct diag_list dl = { 0 };
	char *path;
	struct cfg *cfg = load_reference("seed.conf", &dl, &path);
	const struct cfg_global *g = cfg_global(cfg);

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

	/* the guide's deliver-bounces no: no DSNs (acted on, so no warning) */
	cr_expect_not(cfg_global(cfg)->deliver_bounces);
	/* what is parsed but not acted on yet says so, where it is */
	expect_diag(&dl, path, 9, "'memory-pool-buffer-size' is accepted but not acted on");
	cfg_free(cfg);
	free(path);
	diag_free(&dl);
}

Test(reference_configs, sparkpost_demo_conf)
{
	struct diag_list dl = { 0 };
	char *path;
	struct cfg *cfg = load_reference("sparkpost-demo.conf", &dl, &path);
	const struct cfg_global *g = cfg_global(cfg);

	cr_expect_str_eq(g->postmaster, "steve.tuck@sparkpost.com");
	cr_assert_eq(g->listener_count, 2);
	cr_expect_str_eq(g->listeners[0].text, "0.0.0.0:5587");
	cr_expect_str_eq(g->host_name, "pmta.signalsdemo.trymsys.net");
	cr_expect_eq(g->relay_domains.count, 3);
	cr_expect_eq(g->http_mgmt_port, 8080);
	cr_expect_eq(g->http_access_count, 2);
	cr_expect_not(g->run_as_root);
	cr_expect_str_eq(g->spool_dir, "/var/spool/pmta");

	/* the pool's <domain *> reaches its member's queues */
	const struct cfg_queue *q = cfg_queue_lookup(cfg, "gmail.com", "mta1");
	cr_expect_eq(q->max_smtp_out, 20);
	cr_expect_eq(q->bounce_after, 4 * 86400 + 12 * 3600);
	cr_expect_eq(q->dkim_sign, CFG_DKIM_YES);
	const struct cfg_vmta *v = cfg_vmta_find(cfg, "mta1");
	cr_assert_eq(v->source_host_count, 1);
	cr_expect_str_eq(v->source_hosts[0].ip, "172.31.25.101");

	cr_assert_eq(cfg_acct_count(cfg), 2);
	cr_expect_eq(cfg_acct_at(cfg, 0)->max_size, 50 << 20);
	cr_expect_eq(cfg_acct_at(cfg, 0)->move_interval, 300);
	cr_expect(cfg_acct_at(cfg, 1)->is_pipe);
	cr_expect_str_eq(cfg_acct_at(cfg, 1)->path,
			 "/usr/local/bin/acct_etl --logfile acct_etl.log");
	cr_expect_eq(cfg_acct_at(cfg, 1)->record_fields[0].fields.count, 3);

	const struct cfg_smtp_user *u = cfg_smtp_user_find(cfg, "SMTP_Injection");
	cr_assert_not_null(u);
	cr_expect_eq(u->method, CFG_AUTH_PASSWORD);

	expect_diag(&dl, path, 25, "<rewrite-list> is accepted but not acted on; its contents are ignored");
	expect_diag(&dl, path, 103, "unknown block <signals>; its contents are ignored");
	expect_diag(&dl, path, 115, "unknown directive 'enable-signals' in top level");
	expect_diag(&dl, path, 34, "'log-commands' is accepted but not acted on");
	cfg_free(cfg);
	free(path);
	diag_free(&dl);
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
