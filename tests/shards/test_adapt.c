/*
 * tests/shards/test_adapt.c - the adaptive rate (shards/adapt.h) with a
 * fake clock: multiplicative cuts on "too fast", additive raises after
 * clean intervals, both bounded; and which replies count as "too fast".
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "shards/adapt.h"
#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

static const struct adapt_params P = {
	.min = 1.0, .max = 20.0, .step = 1.0, .keep = 0.8, .every_ms = 10000,
};

Test(adapt, too_fast_replies)
{
	cr_expect(adapt_is_too_fast(421, "4.7.0", false));
	cr_expect(adapt_is_too_fast(451, "4.7.1", false));
	cr_expect_not(adapt_is_too_fast(451, "4.3.0", false), "a local problem is not a rate");
	cr_expect_not(adapt_is_too_fast(550, "5.7.1", false));
	cr_expect_not(adapt_is_too_fast(450, "4.2.1", false));
	cr_expect(adapt_is_too_fast(450, "4.2.1", true), "a mode=backoff pattern says so");
}

Test(adapt, cuts_multiplicatively_once_a_second_down_to_the_floor)
{
	struct adapt a;
	uint64_t t = 1000;

	adapt_init(&a, &P, t);
	cr_expect_float_eq(a.rate, 20.0, 1e-9, "starts at the ceiling");
	cr_expect(adapt_cut(&a, &P, t));
	cr_expect_float_eq(a.rate, 16.0, 1e-9);
	cr_expect_not(adapt_cut(&a, &P, t + 500), "a second cut within ADAPT_HOLD_MS");
	cr_expect_float_eq(a.rate, 16.0, 1e-9);
	for (int i = 0; i < 40; i++)
		adapt_cut(&a, &P, t += ADAPT_HOLD_MS);
	cr_expect_float_eq(a.rate, 1.0, 1e-9, "bounded by the floor");
	cr_expect_not(adapt_cut(&a, &P, t += ADAPT_HOLD_MS), "no change at the floor");
}

Test(adapt, raises_additively_after_clean_intervals_up_to_the_ceiling)
{
	struct adapt a;
	uint64_t t = 0;

	adapt_init(&a, &P, t);
	adapt_cut(&a, &P, t);
	adapt_cut(&a, &P, t += 1000);		/* 12.8 */
	cr_expect_not(adapt_tick(&a, &P, t += 5000), "before a whole interval");
	cr_expect_not(adapt_tick(&a, &P, t += 5000), "no delivery: not clean");
	adapt_delivered(&a);
	cr_expect(adapt_tick(&a, &P, t += 10000));
	cr_expect_float_eq(a.rate, 13.8, 1e-9);
	adapt_delivered(&a);
	adapt_cut(&a, &P, t += 2000);		/* a too-fast reply ends the clean run */
	cr_expect_float_eq(a.rate, 13.8 * 0.8, 1e-9);
	for (int i = 0; i < 30; i++) {
		adapt_delivered(&a);
		adapt_tick(&a, &P, t += 10000);
	}
	cr_expect_float_eq(a.rate, 20.0, 1e-9, "bounded by the ceiling");
	adapt_delivered(&a);
	cr_expect_not(adapt_tick(&a, &P, t += 10000));
}

/* A held-off cut still marks the interval as not clean. */
Test(adapt, held_off_cut_spoils_the_interval)
{
	struct adapt a;
	uint64_t t = 0;

	adapt_init(&a, &P, t);
	adapt_cut(&a, &P, t);
	adapt_delivered(&a);
	adapt_cut(&a, &P, t + 100);
	cr_expect_not(adapt_tick(&a, &P, t + 10000));
}

/*
 * start - a receiver on addr (max_rate messages/s per client IP, 421 4.7.0
 * above it; 0: no limit) and the daemon delivering every domain to it
 * with domain_lines in <domain *> and global_lines at the top.  Returns
 * the receiver.
 */
static struct smtp_peer *start(struct testlib_daemon *d, const char *addr, unsigned max_rate,
			       const char *global_lines, const char *domain_lines)
{
	char err[256];
	struct smtp_peer_opts o = {
		.addr = addr,
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
		.max_msg_rate = max_rate,
		.rate_reply = "421 4.7.0 rate limited",
		.no_log = true,
	};
	struct smtp_peer *peer = smtp_peer_start(&o, err, sizeof(err));

	cr_assert_not_null(peer, "%s", err);
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"shards 1\n%s"
		"<source 127.0.0.1>\n  always-allow-relaying yes\n</source>\n"
		"<domain *>\n  smtp-hosts [%s]:%d\n%s</domain>\n", global_lines, addr,
		smtp_peer_port(peer), domain_lines);
	testlib_daemon_start_or_fail(d, conf);
	free(conf);
	return peer;
}

/*
 * End to end: a receiver that takes 5 messages a second from one client
 * IP and answers "421 4.7.0" above it; adaptive-rate starting at 40/s
 * cuts its rate (one log line per change, below 40/s) and every message
 * still arrives once.
 */
Test(adapt, receiver_rate_limit_cuts_the_rate_end_to_end, .timeout = 120)
{
	char target[64], *out = NULL, *e2 = NULL;
	struct testlib_daemon d = { 0 };
	int hport = testlib_reserve_port(NULL, NULL);
	char *mgmt = xasprintf("http-mgmt-port %d\nhttp-access 127.0.0.1/32 monitor\n", hport);
	struct smtp_peer *peer = start(&d, "127.0.0.93", 5, mgmt,
				       "  retry-after 1s\n  max-smtp-out 4\n  adaptive-rate yes\n"
				       "  adaptive-max-msg-rate 40/s\n  adaptive-decrease 50\n");

	snprintf(target, sizeof(target), "127.0.0.1:%d", d.port);
	const char *argv[] = { "/usr/sbin/smtp-source", "-c", "-l", "200", "-m", "60",
			       "-s", "4", "-f", "a@example.org", "-t", "r@rate.test", target, NULL };
	cr_assert_eq(testlib_run(argv, 60, &out, &e2), 0, "%s", e2);
	free(out), free(e2);
	cr_expect_eq(smtp_peer_wait_messages(peer, 60, 60000), 0);
	cr_expect(testlib_wait_log(&d, "adaptive-rate shard=0 queue=rate.test/{default}",
				   "old=40.00/s new=20.00/s", 1, 5000));
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_eq(st.messages, 60, "each message delivered once: %zu", st.messages);
	/* the rate in force is what the management API shows for the queue */
	char *url = xasprintf("--url=http://127.0.0.1:%d", hport);
	const char *show[] = { testlib_coremta_bin(), "ctl", url, "--json", "show", "queues", NULL };
	cr_expect_eq(testlib_run(show, 30, &out, &e2), 0, "%s", e2);
	const char *ar = out ? strstr(out, "\"adaptiveRate\"") : NULL;
	cr_expect_not_null(ar, "no adaptiveRate in: %s", out);
	if (ar) {
		double rate = strtod(strchr(ar, ':') + 1, NULL);
		cr_expect(rate > 0 && rate < 40, "adaptiveRate %.2f, not cut below 40/s", rate);
	}
	free(out), free(e2), free(url), free(mgmt);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

/*
 * Regression (bench adaptive, 45% 4xx): at a low adaptive rate the queue
 * opened max-smtp-out connections that waited idle for tokens they never
 * got, until the receiver closed them and the early failure deferred the
 * whole queue.  Now one idle connection waits for the next token.
 */
Test(adapt, slow_rate_keeps_one_waiting_connection, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start(&d, "127.0.0.97", 0, "",
				       "  max-smtp-out 8\n  connection-idle-timeout 30s\n"
				       "  adaptive-rate yes\n  adaptive-max-msg-rate 4/s\n");

	for (int i = 0; i < 12; i++) {
		char to[64];
		snprintf(to, sizeof(to), "r%d@slow.test", i);
		cr_assert_eq(testlib_swaks(&d, "a@example.org", to, NULL, NULL), 0);
	}
	cr_expect_eq(smtp_peer_wait_messages(peer, 12, 30000), 0);
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_leq(st.max_concurrent, 2, "%zu connections open at once for 4 messages/s",
		      st.max_concurrent);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}
