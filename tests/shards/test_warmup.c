/*
 * tests/shards/test_warmup.c - IP warm-up: the daily cap by day of the
 * warm-up (pure), the counters' journal across a restart (retry.h "w"
 * records), and end to end: mail over today's cap waits (never bounces),
 * and a restart does not reset what was sent today.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/values.h"
#include "shards/retry.h"
#include "shards/warmup.h"
#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

Test(warmup, cap_by_day_of_the_warmup_last_repeats)
{
	struct cfg_daily d;
	char err[256];

	cr_assert_eq(cfg_parse_daily("50/d, 100/day,200,unlimited", &d, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(warmup_cap(&d, 0, 20000), 50, "before the first send it is day 1");
	cr_expect_eq(warmup_cap(&d, 20000, 20000), 50);
	cr_expect_eq(warmup_cap(&d, 20000, 20001), 100);
	cr_expect_eq(warmup_cap(&d, 20000, 20002), 200);
	cr_expect_eq(warmup_cap(&d, 20000, 20003), WARMUP_NO_CAP);
	cr_expect_eq(warmup_cap(&d, 20000, 29999), WARMUP_NO_CAP, "the last entry repeats");
	cr_assert_eq(cfg_parse_daily("5,10", &d, err, sizeof(err)), 0);
	cr_expect_eq(warmup_cap(&d, 20000, 20100), 10);
	cr_assert_eq(cfg_parse_daily("unlimited", &d, err, sizeof(err)), 0);
	cr_expect_eq(warmup_cap(&d, 20000, 20000), WARMUP_NO_CAP);
	cr_expect_lt(cfg_parse_daily("10/h", &d, err, sizeof(err)), 0);
	cr_expect(strstr(err, "daily cap 1: expected a count of messages per day"), "%s", err);
	cr_expect_lt(cfg_parse_daily("10,,20", &d, err, sizeof(err)), 0);
	cr_expect(strstr(err, "daily cap 2"), "%s", err);
}

Test(warmup, counters_survive_a_restart_newest_record_wins)
{
	char *dir = testlib_tmpdir();
	struct strbuf a = { 0 }, b = { 0 };
	struct retry_warm w = { .first_day = 20000, .day = 20003, .sent = 7 };

	retry_put_warm(&a, "192.0.2.1/example.com", &w);
	w.sent = 9;
	retry_put_warm(&b, "192.0.2.1/example.com", &w);	/* another shard file, later */
	w = (struct retry_warm){ .first_day = 20000, .day = 20002, .sent = 40 };
	retry_put_warm(&b, "192.0.2.1/example.com", &w);	/* an older day */
	w = (struct retry_warm){ .first_day = 20001, .day = 20001, .sent = 1 };
	retry_put_warm(&a, "-/example.net", &w);
	free(testlib_write(dir, "retry-0.log", sb_str(&a)));
	free(testlib_write(dir, "retry-1.log", sb_str(&b)));
	for (int round = 0; round < 2; round++) {	/* the compacted base, too */
		struct retry_table *t;
		struct retry_warm got;
		char err[256];
		cr_assert_eq(retry_table_load(dir, 1800000000, 30 * 86400, 0, &t, err, sizeof(err)), 0,
			     "%s", err);
		cr_assert(retry_table_warm(t, "192.0.2.1/example.com", &got));
		cr_expect_eq(got.first_day, 20000);
		cr_expect_eq(got.day, 20003);
		cr_expect_eq(got.sent, 9);
		cr_assert(retry_table_warm(t, "-/example.net", &got));
		cr_expect_eq(got.sent, 1);
		cr_expect_not(retry_table_warm(t, "192.0.2.2/example.com", &got));

		/* a counter seeded from it starts a new day at zero */
		struct warm_table wt = { 0 };
		struct warm_entry *e = warm_get(&wt, "192.0.2.1/example.com", t, 20003);
		cr_expect_eq(e->w.sent, 9);
		e = warm_get(&wt, "192.0.2.1/example.com", t, 20004);
		cr_expect_eq(e->w.sent, 0);
		cr_expect_eq(e->w.first_day, 20000);
		warm_table_free(&wt);
		retry_table_free(t);
	}
	sb_free(&a);
	sb_free(&b);
	testlib_rmrf(dir);
	free(dir);
}

/*
 * warmup-schedule 3: three messages today from the source, the other two
 * wait (queued, not deferred, not bounced); after a restart still three.
 */
Test(warmup, over_the_cap_waits_and_a_restart_keeps_the_count, .timeout = 90)
{
	struct smtp_peer *peer = testlib_peer_start("127.0.0.91", 0, SMTP_PEER_CAP_PIPELINING,
						    NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"shards 1\n"
		"<virtual-mta fresh>\n  smtp-source-host 127.0.0.92 fresh.test.invalid\n</virtual-mta>\n"
		"<source 127.0.0.1>\n  always-allow-relaying yes\n  default-virtual-mta fresh\n</source>\n"
		"<domain *>\n  smtp-hosts [127.0.0.91]:%d\n  warmup-schedule 3/d,10/d\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 5; i++) {
		char to[64];
		snprintf(to, sizeof(to), "r%d@warm.test", i);
		cr_assert_eq(testlib_swaks(&d, "w@example.org", to, NULL, NULL), 0);
	}
	cr_assert_eq(smtp_peer_wait_messages(peer, 3, 20000), 0);
	cr_expect(testlib_wait_log(&d, "warmup-cap shard=", "source=127.0.0.92", 1, 5000));
	cr_expect(testlib_peer_stays(peer, 3, 1500), "a fourth message went out today");
	cr_expect_eq(testlib_log_lines(&d, "warm.test", "result=deferred"), 0);
	cr_expect_eq(testlib_log_lines(&d, "warm.test", "result=bounced"), 0);
	/* SIGTERM: the daemon journals the day's counts before it exits */
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_start_or_fail(&d, conf);
	cr_expect(testlib_wait_log(&d, "recovered: 2 messages", NULL, 1, 10000));
	cr_expect(testlib_peer_stays(peer, 3, 2000), "the restart forgot today's count");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}
