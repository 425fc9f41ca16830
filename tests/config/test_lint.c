/*
 * tests/config/test_lint.c - each lint finding of the source guide's
 * table of mistakes (and ours) fires on the mistake and stays quiet on
 * the fix.  Host facts are fixed so results do not depend on the machine.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "tests/lib/testlib.h"

static const struct cfg_host_facts small_vm = {
	.mem_total = 2ull << 30,	/* the guide's "2GB VM" */
	.nofile_limit = 65536,
	.running_as_root = true,
};

/* A config with none of the mistakes; each case adds one. */
#define CLEAN_BASE                                         \
	"process-user coremta\n"                           \
	"total-max-smtp-out 1000\n"                        \
	"<source 0/0>\n"                                   \
	"    always-allow-relaying no\n"                   \
	"</source>\n"                                      \
	"<source 10.0.0.0/8>\n"                            \
	"    always-allow-relaying yes\n"                  \
	"</source>\n"                                      \
	"http-access 127.0.0.1 admin\n"                    \
	"domain-macro big gmail.com,googlemail.com,yahoo.com,aol.com,outlook.com,hotmail.com,live.com,msn.com,icloud.com\n" \
	"<domain $big>\n"                                  \
	"    max-msg-rate 2000/h\n"                        \
	"</domain>\n"

struct lint_case {
	const char *name;
	const char *text;
	const char *expect;	/* NULL: no finding at all */
};

static const struct lint_case cases[] = {
	{ "clean", CLEAN_BASE "<domain *>\n  max-msg-per-connection 100\n</domain>\n", NULL },
	{ "no default domain", CLEAN_BASE,
	  "test.conf: warning: lint: no <domain *> block" },
	{ "total too high for memory",
	  CLEAN_BASE "<domain *>\n</domain>\ntotal-max-smtp-out 5000\n",
	  "test.conf:16: warning: lint: total-max-smtp-out 5000 is too high for this host: 5000 connections x 256 KiB = 1250 MiB, more than half of its 2048 MiB of RAM" },
	{ "queue floods receivers",
	  CLEAN_BASE "<domain *>\n  max-smtp-out 1000\n</domain>\n",
	  "test.conf:15: warning: lint: max-smtp-out 1000 for <domain *>: one receiver gets 1000 parallel connections" },
	{ "queue above total",
	  CLEAN_BASE "<domain *>\n  max-smtp-out 2000\n</domain>\n",
	  "lint: max-smtp-out 2000 for <domain *> exceeds total-max-smtp-out 1000" },
	{ "msg per connection 0",
	  CLEAN_BASE "<domain *>\n  max-msg-per-connection 0\n</domain>\n",
	  "test.conf:15: warning: lint: max-msg-per-connection 0 for <domain *>: connections are never closed" },
	{ "root without process-user",
	  "total-max-smtp-out 1000\nhttp-access 127.0.0.1 admin\n<domain *>\n</domain>\n"
	  "domain-macro big gmail.com,googlemail.com,yahoo.com,aol.com,outlook.com,hotmail.com,live.com,msn.com,icloud.com\n"
	  "<domain $big>\n max-msg-rate 1/s\n</domain>\n",
	  "lint: coremta will keep root privileges (no process-user, run-as-root is yes) and this process is root" },
	{ "open relay",
	  CLEAN_BASE "<domain *>\n</domain>\n<source 0/0>\n  allow-relay yes\n</source>\n",
	  "test.conf:17: warning: lint: open relay: <source 0/0> lets every client on the internet relay without authentication" },
	{ "open relay written as *",
	  CLEAN_BASE "<domain *>\n</domain>\n<source *>\n  always-allow-relaying yes\n</source>\n",
	  "lint: open relay: <source 0/0>" },
	{ "http admin for everyone",
	  CLEAN_BASE "<domain *>\n</domain>\nhttp-access 0/0 admin\n",
	  "test.conf:16: warning: lint: http-access 0/0 admin gives anyone who can reach port 8080 control of the queues and the configuration (" },
	{ "EHLO name of a VMTA not fully qualified",
	  CLEAN_BASE "<domain *>\n</domain>\n<virtual-mta v1>\n  host-name mailer\n  smtp-source-ip 192.0.2.7\n</virtual-mta>\n",
	  "lint: the EHLO name 'mailer' of <virtual-mta v1> is not a fully qualified domain name; receivers reject or penalise it; fix: host-name with the FQDN that the PTR record of 192.0.2.7 gives" },
	{ "global EHLO name not fully qualified",
	  CLEAN_BASE "<domain *>\n</domain>\nhost-name localhost\n",
	  "lint: the EHLO name 'localhost' (host-name) is not a fully qualified domain name" },
	{ "unlimited rate to providers",
	  "process-user coremta\n<domain *>\n</domain>\n<domain gmail.com>\n  max-msg-rate 100/m\n</domain>\n",
	  "lint: max-msg-rate is unlimited towards googlemail.com, yahoo.com, aol.com, outlook.com, hotmail.com, live.com, msn.com, icloud.com" },
};

Test(lint, each_mistake_and_its_fix)
{
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct diag_list dl = { 0 }, lint = { 0 };
		struct cfg *cfg = testlib_load(cases[i].text, &dl);
		char *t = testlib_diag_text(&dl);
		cr_assert_not_null(cfg, "%s: does not load:\n%s", cases[i].name, t);
		free(t);
		size_t n = cfg_lint(cfg, &small_vm, &lint);
		t = testlib_diag_text(&lint);
		if (!cases[i].expect)
			cr_expect_eq(n, 0, "%s: unexpected findings:\n%s", cases[i].name, t);
		else
			cr_expect(strstr(t, cases[i].expect) != NULL,
				  "%s: expected\n  %s\ngot:\n%s", cases[i].name,
				  cases[i].expect, t);
		cr_expect_eq(n, lint.count);
		free(t);
		diag_free(&lint);
		diag_free(&dl);
		cfg_free(cfg);
	}
}

/* Unset host-name: the system's name is the EHLO name, so it is checked. */
Test(lint, system_host_name_is_the_ehlo_name_when_unset)
{
	struct cfg_host_facts host = small_vm;
	struct diag_list dl = { 0 }, lint = { 0 };
	struct cfg *cfg = testlib_load(CLEAN_BASE "<domain *>\n</domain>\n", &dl);

	cr_assert_not_null(cfg);
	snprintf(host.host_name, sizeof(host.host_name), "buildbox");
	cfg_lint(cfg, &host, &lint);
	char *t = testlib_diag_text(&lint);
	cr_expect(strstr(t, "the EHLO name 'buildbox' (this system's host name, since host-name is unset)"), "%s", t);
	free(t);
	diag_free(&lint);
	snprintf(host.host_name, sizeof(host.host_name), "mx1.example.org");
	cr_expect_eq(cfg_lint(cfg, &host, &lint), 0);
	diag_free(&lint);
	diag_free(&dl);
	cfg_free(cfg);
}

/* The management port is served: the finding says it is live. */
Test(lint, http_access_finding_says_whether_the_port_is_live)
{
	struct diag_list dl = { 0 }, lint = { 0 };
	struct cfg *cfg = testlib_load(CLEAN_BASE "<domain *>\n</domain>\nhttp-access 0/0 operator\n", &dl);

	cr_assert_not_null(cfg);
	cfg_lint(cfg, &small_vm, &lint);
	char *t = testlib_diag_text(&lint);
	cr_expect(strstr(t, "the management port is live"), "%s", t);
	free(t);
	diag_free(&lint);
	diag_free(&dl);
	cfg_free(cfg);
}

/* The fix the root finding proposes names what it needs to work. */
Test(lint, root_fix_says_what_the_user_needs)
{
	struct diag_list dl = { 0 }, lint = { 0 };
	struct cfg *cfg = testlib_load("<domain *>\n</domain>\n", &dl);

	cr_assert_not_null(cfg);
	cfg_lint(cfg, &small_vm, &lint);
	char *t = testlib_diag_text(&lint);
	cr_expect(strstr(t, "fix: process-user coremta ("), "%s", t);
	cr_expect(strstr(t, "it must be able to write the spool directory and the log and accounting directories"), "%s", t);
	free(t);
	diag_free(&lint);
	diag_free(&dl);
	cfg_free(cfg);
}

Test(lint, open_relay_needs_no_finding_with_auth)
{
	struct diag_list dl = { 0 }, lint = { 0 };
	struct cfg *cfg = testlib_load(CLEAN_BASE "<domain *>\n</domain>\n"
				       "<source 0/0>\n  allow-relay yes\n  require-auth yes\n</source>\n",
				       &dl);
	cr_assert_not_null(cfg);
	cr_expect_eq(cfg_lint(cfg, &small_vm, &lint), 0);
	diag_free(&lint);
	diag_free(&dl);
	cfg_free(cfg);
}

Test(lint, descriptor_limit)
{
	struct cfg_host_facts tight = small_vm;
	struct diag_list dl = { 0 }, lint = { 0 };
	struct cfg *cfg = testlib_load(CLEAN_BASE "<domain *>\n</domain>\n", &dl);

	tight.nofile_limit = 1024;
	cr_assert_not_null(cfg);
	cfg_lint(cfg, &tight, &lint);
	char *t = testlib_diag_text(&lint);
	cr_expect(strstr(t, "exceed the open-file limit 1024") != NULL, "%s", t);
	free(t);
	diag_free(&lint);
	diag_free(&dl);
	cfg_free(cfg);
}
