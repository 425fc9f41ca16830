/*
 * tests/shards/test_routing.c - virtual-mta selection end to end, the
 * way a real PowerMTA config routes: five VMTAs, each bound to its own
 * 127.0.0.x by smtp-source-host with its own EHLO name, a <pattern-list>
 * mapping each sender domain to its VMTA, process-x-virtual-mta no,
 * default-virtual-mta for the rest and a per-VMTA <domain *> override.
 * Real parts: the daemon (sanitizer build), swaks to inject, scripted
 * receivers (tests/lib/smtp_peer) that record each message's source
 * address and EHLO name.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

static const struct {
	const char *from;
	const char *ip;		/* the source address it must come from */
	const char *helo;	/* and the EHLO name */
	int receiver;		/* 0: the common one, 1: v3's own (its <domain *>) */
} routes[] = {
	{ "news@brand1.test", "127.0.0.81", "out1.brand1.test", 0 },
	{ "info@brand2.test", "127.0.0.82", "out2.brand2.test", 0 },
	{ "deals@mail.brand3.test", "127.0.0.83", "out3.brand3.test", 1 },
	{ "team@brand4.test", "127.0.0.84", "out4.brand4.test", 0 },
	{ "other@unknown.test", "127.0.0.85", "out5.default.test", 0 },	/* default */
};

Test(routing, five_vmtas_by_sender_source_ip_and_ehlo_name, .timeout = 120)
{
	struct smtp_peer *peer[2] = {
		testlib_peer_start("127.0.0.86", 0, SMTP_PEER_CAP_PIPELINING, NULL, 0),
		testlib_peer_start("127.0.0.87", 0, SMTP_PEER_CAP_PIPELINING, NULL, 0),
	};
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mta.test.invalid\n"
		"shards 2\n"
		"allow-shard-oversubscription yes\n"
		"<virtual-mta v1>\n  smtp-source-host 127.0.0.81 out1.brand1.test\n</virtual-mta>\n"
		"<virtual-mta v2>\n  smtp-source-host 127.0.0.82 out2.brand2.test\n"
		"  host-name not-this.test\n</virtual-mta>\n"
		"<virtual-mta v3>\n  smtp-source-host 127.0.0.83 out3.brand3.test\n"
		"  <domain *>\n    smtp-hosts [127.0.0.87]:%d\n  </domain>\n</virtual-mta>\n"
		"<virtual-mta v4>\n  smtp-source-host 127.0.0.84 out4.brand4.test\n</virtual-mta>\n"
		"<virtual-mta v5>\n  smtp-source-host 127.0.0.85 out5.default.test\n</virtual-mta>\n"
		"<pattern-list senders>\n"
		"  mail-from /@brand1\\.test$/ virtual-mta=v1\n"
		"  mail-from /@brand2\\.test$/ virtual-mta=v2\n"
		"  mail-from /@(.+\\.)?brand3\\.test$/ virtual-mta=v3\n"
		"  mail-from /@brand4\\.test$/ virtual-mta=v4\n"
		"</pattern-list>\n"
		"<source 127.0.0.1>\n"
		"  always-allow-relaying yes\n"
		"  process-x-virtual-mta no\n"
		"  pattern-list senders\n"
		"  default-virtual-mta v5\n"
		"</source>\n"
		"<domain *>\n  smtp-hosts [127.0.0.86]:%d\n</domain>\n",
		smtp_peer_port(peer[1]), smtp_peer_port(peer[0]));
	size_t want[2] = { 0, 0 };

	testlib_daemon_start_or_fail(&d, conf);
	for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
		for (int k = 0; k < 2; k++) {
			char to[64], *out = NULL;
			snprintf(to, sizeof(to), "r%zu-%d@rcpt%d.test", i, k, k);
			/* process-x-virtual-mta no: the header must change nothing */
			int rc = testlib_swaks(&d, routes[i].from, to, k ? "X-Virtual-MTA: v1" : NULL, &out);
			cr_assert_eq(rc, 0, "swaks from %s failed:\n%s", routes[i].from, out);
			free(out);
			want[routes[i].receiver]++;
		}
	cr_assert_eq(smtp_peer_wait_messages(peer[0], want[0], 30000), 0,
		     "the common receiver did not get its %zu messages", want[0]);
	cr_assert_eq(smtp_peer_wait_messages(peer[1], want[1], 30000), 0,
		     "v3's receiver did not get its %zu messages", want[1]);

	size_t checked = 0;
	for (int p = 0; p < 2; p++)
		for (size_t m = 0; smtp_peer_message(peer[p], m); m++) {
			const struct smtp_peer_msg *msg = smtp_peer_message(peer[p], m);
			size_t i = 0;
			while (i < ARRAY_SIZE(routes) && strcmp(routes[i].from, msg->mail_from))
				i++;
			cr_assert_lt(i, ARRAY_SIZE(routes), "unexpected sender %s", msg->mail_from);
			cr_expect_eq(routes[i].receiver, p, "%s reached receiver %d", msg->mail_from, p);
			cr_expect_str_eq(msg->client_ip, routes[i].ip, "%s sent from the wrong address",
					 msg->mail_from);
			cr_expect_str_eq(msg->helo, routes[i].helo, "%s greeted with the wrong name",
					 msg->mail_from);
			checked++;
		}
	cr_expect_eq(checked, 2 * ARRAY_SIZE(routes));
	cr_expect_eq(testlib_log_lines(&d, "/{default}", "result=delivered"), 0,
		     "mail went through {default}");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer[0]);
	smtp_peer_free(peer[1]);
	free(conf);
}

/*
 * A {default} queue uses the top-level smtp-source-host lines: their
 * addresses and EHLO names, round-robin.
 */
Test(routing, global_smtp_source_host_for_default_queue, .timeout = 60)
{
	struct smtp_peer *peer = testlib_peer_start("127.0.0.88", 0, SMTP_PEER_CAP_PIPELINING,
						    NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mta.test.invalid\n"
		"shards 1\n"
		"smtp-source-host 127.0.0.89 g1.test.invalid\n"
		"<source 127.0.0.1>\n  always-allow-relaying yes\n</source>\n"
		"<domain *>\n  smtp-hosts [127.0.0.88]:%d\n</domain>\n", smtp_peer_port(peer));
	char *out = NULL;

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(testlib_swaks(&d, "a@example.org", "x@d.test", NULL, &out), 0, "%s", out);
	free(out);
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect_str_eq(smtp_peer_message(peer, 0)->client_ip, "127.0.0.89");
	cr_expect_str_eq(smtp_peer_message(peer, 0)->helo, "g1.test.invalid");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * Mail queued for a virtual-mta that a new configuration no longer has
 * bounces with 5.3.5 (as in PowerMTA); it is never sent through
 * {default} instead.
 */
Test(routing, vanished_virtual_mta_bounces_5_3_5, .timeout = 90)
{
	static const struct smtp_peer_rule later[] = {
		{ .cmd = SMTP_PEER_RCPT, .reply = "451 4.3.0 come back later" },
	};
	struct smtp_peer *peer = testlib_peer_start("127.0.0.90", 0, SMTP_PEER_CAP_PIPELINING,
						    later, 1);
	struct testlib_daemon d = { 0 };
	const char *fmt =
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mta.test.invalid\n"
		"shards 1\n"
		"%s"
		"<source 127.0.0.1>\n  always-allow-relaying yes\n%s</source>\n"
		"<domain *>\n  smtp-hosts [127.0.0.90]:%d\n  retry-after 1h\n</domain>\n";
	char *with = xasprintf(fmt, "<virtual-mta old>\n</virtual-mta>\n",
			       "  default-virtual-mta old\n", smtp_peer_port(peer));
	char *without = xasprintf(fmt, "", "", smtp_peer_port(peer));
	char *out = NULL;

	testlib_daemon_start_or_fail(&d, with);
	cr_assert_eq(testlib_swaks(&d, "a@example.org", "x@gone.test", NULL, &out), 0, "%s", out);
	free(out);
	cr_assert(testlib_wait_log(&d, "queue=gone.test/old", "result=deferred", 1, 20000));
	/* SIGTERM: the daemon journals every outcome before it exits */
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_start_or_fail(&d, without);
	cr_expect(testlib_wait_log(&d, "to=<x@gone.test>", "status=5.3.5", 1, 20000));
	cr_expect_eq(testlib_log_lines(&d, "to=<x@gone.test>", "result=bounced"), 1);
	cr_expect_eq(testlib_log_lines(&d, "to=<x@gone.test>", "result=delivered"), 0);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(with), free(without);
}

/* the common head of the companion tests' configs: two VMTAs, one source */
#define TWO_VMTAS(extra_a)                                                      \
	"smtp-listener 127.0.0.1:@PORT@\n"                                      \
	"disk-queue @DIR@/spool\n"                                              \
	"shards 1\n"                                                            \
	"<smtp-pattern-list p>\n"                                               \
	"  reply /SLOWDOWN/ mode=backoff\n"                                     \
	"  reply /IPBLOCK/ disable-source-ip\n"                                 \
	"</smtp-pattern-list>\n"                                                \
	"<virtual-mta a>\n  smtp-source-host 127.0.0.94 a.test.invalid\n"        \
	"  <domain *>\n" extra_a "  </domain>\n</virtual-mta>\n"                 \
	"<virtual-mta b>\n  smtp-source-host 127.0.0.95 b.test.invalid\n</virtual-mta>\n" \
	"<source 127.0.0.1>\n  always-allow-relaying yes\n  default-virtual-mta a\n</source>\n" \
	"<domain *>\n  smtp-hosts [127.0.0.96]:%d\n  smtp-pattern-list p\n  retry-after 1s\n</domain>\n"

/* reroute-to-virtual-mta: a's mail goes out through b. */
Test(routing, reroute_to_virtual_mta, .timeout = 60)
{
	struct smtp_peer *peer = testlib_peer_start("127.0.0.96", 0, SMTP_PEER_CAP_PIPELINING,
						    NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TWO_VMTAS("    reroute-to-virtual-mta b\n"), smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(testlib_swaks(&d, "s@example.org", "x@rr.test", NULL, NULL), 0);
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect_str_eq(smtp_peer_message(peer, 0)->client_ip, "127.0.0.95");
	cr_expect(testlib_wait_log(&d, "queue=rr.test/b", "result=delivered", 1, 5000));
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * backoff-reroute-to-virtual-mta: a reply puts a's queue in backoff; its
 * mail, the deferred message and one that comes later, goes through b;
 * backoff-max-connect-rate is accepted with it.
 */
Test(routing, backoff_reroute_to_virtual_mta, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_CONNECT, .match = "127.0.0.94",
		  .reply = "421 4.7.0 SLOWDOWN please" },
	};
	struct smtp_peer *peer = testlib_peer_start("127.0.0.96", 0, SMTP_PEER_CAP_PIPELINING,
						    rules, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TWO_VMTAS("    backoff-reroute-to-virtual-mta b\n"
					 "    backoff-max-connect-rate 1/s\n"), smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(testlib_swaks(&d, "s@example.org", "x@br.test", NULL, NULL), 0);
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect(testlib_wait_log(&d, "reroute shard=0 queue=br.test/a", "to=br.test/b", 1, 5000));
	cr_assert_eq(testlib_swaks(&d, "s@example.org", "y@br.test", NULL, NULL), 0);
	cr_assert_eq(smtp_peer_wait_messages(peer, 2, 20000), 0);
	for (size_t i = 0; i < 2; i++)
		cr_expect_str_eq(smtp_peer_message(peer, i)->client_ip, "127.0.0.95");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * disable-source-ip without reenable-after=: reenable-source-ip-after
 * decides; with every source disabled, backoff-upon-all-sources-disabled
 * puts the queue in backoff.
 */
Test(routing, reenable_source_ip_after_and_backoff_upon_all_disabled, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_CONNECT, .match = "127.0.0.94", .times = 1,
		  .reply = "421 4.7.0 IPBLOCK listed" },
	};
	struct smtp_peer *peer = testlib_peer_start("127.0.0.96", 0, SMTP_PEER_CAP_PIPELINING,
						    rules, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TWO_VMTAS("    reenable-source-ip-after 2s\n"
					 "    backoff-upon-all-sources-disabled yes\n"
					 "    backoff-retry-after 1s\n"),
			       smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(testlib_swaks(&d, "s@example.org", "x@re.test", NULL, NULL), 0);
	cr_expect(testlib_wait_log(&d, "disable-source-ip shard=0 queue=re.test/a",
				   "source=127.0.0.94 reenable-after=2s", 1, 10000));
	cr_expect(testlib_wait_log(&d, "backoff shard=0 queue=re.test/a",
				   "reason=\"backoff-upon-all-sources-disabled\"", 1, 5000));
	/* re-enabled after 2 s, the retry goes out from it */
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect_str_eq(smtp_peer_message(peer, 0)->client_ip, "127.0.0.94");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}
