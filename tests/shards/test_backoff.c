/*
 * tests/shards/test_backoff.c - how a queue reacts to what receivers say,
 * end to end with real parts: the daemon (sanitizer build) takes mail
 * over SMTP and delivers to scripted receivers (tests/lib/smtp_peer) on
 * 127.0.0.x.  Covers smtp-421-means-mx-unavailable, <smtp-pattern-list>
 * actions (mode=backoff|normal, bounce-rcpt, defer-queue,
 * disable-source-ip) and backoff mode's limits and ways out.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* send_one - one message over a plain socket; returns the final reply code. */
static int send_one(int port, const char *const *rcpts)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { .tv_sec = 20 };
	struct strbuf cmd = { 0 }, in = { 0 };
	char buf[4096];
	int code = -1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		goto out;
	sb_printf(&cmd, "EHLO t\r\nMAIL FROM:<s@example.org>\r\n");
	for (size_t n = 0; rcpts[n]; n++)
		sb_printf(&cmd, "RCPT TO:<%s>\r\n", rcpts[n]);
	sb_printf(&cmd, "DATA\r\n");
	if (send(fd, cmd.buf, cmd.len, MSG_NOSIGNAL) < 0)
		goto out;
	while (!strstr(sb_str(&in), "354 ")) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			goto out;
		sb_add(&in, buf, (size_t)r);
	}
	sb_reset(&cmd);
	sb_printf(&cmd, "Subject: test\r\n\r\nbody\r\n.\r\nQUIT\r\n");
	send(fd, cmd.buf, cmd.len, MSG_NOSIGNAL);
	size_t mark = in.len;
	while (!strstr(sb_str(&in) + mark, "221 ")) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		sb_add(&in, buf, (size_t)r);
	}
	code = atoi(sb_str(&in) + mark);
out:
	sb_free(&in);
	sb_free(&cmd);
	close(fd);
	return code;
}

static void send_to(const struct testlib_daemon *d, const char *rcpt)
{
	cr_assert_eq(send_one(d->port, (const char *[]){ rcpt, NULL }), 250,
		     "injecting mail for %s failed", rcpt);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t peer_messages(struct smtp_peer *p)
{
	struct smtp_peer_stats st;

	smtp_peer_stats(p, &st);
	return st.messages;
}

static void finish(struct testlib_daemon *d, char *conf)
{
	testlib_daemon_stop(d, SIGTERM);
	if (getenv("SHOW_LOG")) {
		char *log = testlib_read_file(d->log);
		fprintf(stderr, "%s\n", log);
		free(log);
	}
	testlib_daemon_cleanup(d);
	free(conf);
}

/* The first MX says 421 to RCPT; the second MX must get the mail at once. */
Test(backoff, mx421_yes_tries_the_next_mx_at_once, .timeout = 60)
{
	static const struct smtp_peer_rule busy[] = {
		{ .cmd = SMTP_PEER_RCPT, .reply = "421 4.7.0 [TSS04] try again later, closing" },
	};
	struct smtp_peer *first = testlib_peer_on("127.0.0.31", busy, 1);
	struct smtp_peer *second = testlib_peer_on("127.0.0.32", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain mx.test>\n"
		"    smtp-hosts [127.0.0.31]:%d;[127.0.0.32]:%d\n"
		"    smtp-421-means-mx-unavailable yes\n"
		"    retry-after 1h\n"
		"</domain>\n",
		smtp_peer_port(first), smtp_peer_port(second));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "a@mx.test");
	cr_expect_eq(smtp_peer_wait_messages(second, 1, 5000), 0,
		     "the second MX did not get the mail within 5 s");
	cr_expect_eq(smtp_peer_count_replies(first, SMTP_PEER_RCPT, "421"), 1);
	cr_expect(testlib_wait_log(&d, "to=<a@mx.test>", "result=delivered attempt=1", 1, 5000),
		  "the 421 was counted as an attempt");
	cr_expect_eq(testlib_log_lines(&d, "to=<a@mx.test>", "result=deferred"), 0);
	cr_expect_eq(testlib_log_lines(&d, "mx-unavailable shard=", "ip=127.0.0.31"), 1);
	finish(&d, conf);
	smtp_peer_free(first);
	smtp_peer_free(second);
}

/* With "no" a 421 defers: the retry goes to the same MX on schedule. */
Test(backoff, mx421_no_waits_for_the_retry, .timeout = 60)
{
	static const struct smtp_peer_rule busy_once[] = {
		{ .cmd = SMTP_PEER_RCPT, .times = 1,
		  .reply = "421 4.7.0 [TSS04] try again later, closing" },
	};
	struct smtp_peer *first = testlib_peer_on("127.0.0.33", busy_once, 1);
	struct smtp_peer *second = testlib_peer_on("127.0.0.34", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain mx.test>\n"
		"    smtp-hosts [127.0.0.33]:%d;[127.0.0.34]:%d\n"
		"    smtp-421-means-mx-unavailable no\n"
		"    retry-after 2s\n"
		"</domain>\n",
		smtp_peer_port(first), smtp_peer_port(second));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "a@mx.test");
	cr_assert(testlib_wait_log(&d, "to=<a@mx.test>", "result=deferred attempt=1", 1, 5000));
	double t0 = now_s();
	cr_expect_eq(testlib_log_lines(&d, "to=<a@mx.test>", "code=421"), 1);
	cr_assert_eq(smtp_peer_wait_messages(first, 1, 6000), 0, "no retry within 6 s");
	double waited = now_s() - t0;
	cr_expect_geq(waited, 1.5, "retried after %.2f s instead of retry-after 2s", waited);
	cr_expect_eq(peer_messages(second), 0, "the second MX was tried");
	cr_expect(testlib_wait_log(&d, "to=<a@mx.test>", "result=delivered attempt=2", 1, 3000));
	finish(&d, conf);
	smtp_peer_free(first);
	smtp_peer_free(second);
}

/*
 * A reply matching `reply /TSS04/ mode=backoff` puts the queue in
 * backoff: the open connections drop to backoff-max-smtp-out and the
 * recipient retries after backoff-retry-after, not retry-after.
 */
Test(backoff, pattern_backoff_lowers_connections_and_retry, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "m20@", .times = 1,
		  .reply = "451 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred" },
		/*
		 * The first transaction is held long enough for mail to queue
		 * behind it however slowly the injection runs (a loaded CI
		 * host took longer per message than a 100 ms delivery, so one
		 * connection kept up and no second one was ever opened).
		 */
		{ .cmd = SMTP_PEER_DATA_END, .times = 1, .delay_ms = 2000 },
		{ .cmd = SMTP_PEER_DATA_END, .delay_ms = 100 },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.35", rules, 3);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<smtp-pattern-list yahoo>\n"
		"    reply /TSS04/ mode=backoff\n"
		"</smtp-pattern-list>\n"
		"<domain bo.test>\n"
		"    smtp-hosts [127.0.0.35]:%d\n"
		"    smtp-pattern-list yahoo\n"
		"    max-smtp-out 6\n"
		"    backoff-max-smtp-out 1\n"
		"    retry-after 1h\n"
		"    backoff-retry-after 2s\n"
		"</domain>\n",
		smtp_peer_port(peer));
	enum { N = 50 };
	char rcpt[64];
	struct smtp_peer_stats st;

	testlib_daemon_start_or_fail(&d, conf);
	/* m20's RCPT gets the [TSS04] reply while the rest stream in */
	for (int i = 0; i < N; i++) {
		snprintf(rcpt, sizeof(rcpt), "m%d@bo.test", i);
		send_to(&d, rcpt);
	}
	cr_assert(testlib_wait_log(&d, "backoff shard=", "queue=bo.test/{default} mode=backoff", 1, 10000),
		  "no backoff line");
	smtp_peer_stats(peer, &st);
	/* the control: in normal mode the queue had several connections open */
	cr_expect_geq(st.max_concurrent, 2, "normal mode never had two connections open");
	cr_expect_eq(testlib_log_lines(&d, "backoff shard=", "reason=\"451 4.7.0 [TSS04] Messages from"), 1);
	cr_expect(testlib_wait_log(&d, "to=<m20@bo.test>", "result=deferred attempt=1", 1, 5000));
	double t0 = now_s();

	/* the busy connections end their transaction and QUIT, down to one */
	double deadline = now_s() + 5;
	do {
		smtp_peer_stats(peer, &st);
		if (st.current <= 1)
			break;
		usleep(5 * 1000);
	} while (now_s() < deadline);
	cr_assert_leq(st.current, 1, "still %zu connections in backoff", st.current);
	size_t left = N - st.messages, most = 0;
	while (st.messages < N && now_s() < t0 + 20) {
		smtp_peer_stats(peer, &st);
		if (st.current > most)
			most = st.current;
		usleep(5 * 1000);
	}
	cr_expect_geq(left, 5, "too few messages were left to see backoff's limit");
	cr_expect_leq(most, 1, "%zu connections at once in backoff", most);
	cr_expect(testlib_wait_log(&d, "to=<m20@bo.test>", "result=delivered attempt=2", 1, 8000),
		  "the retry did not follow backoff-retry-after 2s");
	double waited = now_s() - t0;
	cr_expect_geq(waited, 1.5, "retried after %.2f s, before backoff-retry-after", waited);
	cr_expect_eq(testlib_log_lines(&d, "backoff shard=", "mode=normal"), 0, "left backoff by itself");
	finish(&d, conf);
	smtp_peer_free(peer);
}

/* The three ways out of backoff: a delivery, a mode=normal reply, a timer. */
Test(backoff, leaving_backoff, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "in@", .times = 3,
		  .reply = "451 4.7.0 [TSS04] deferred" },
		{ .cmd = SMTP_PEER_RCPT, .match = "out@", .times = 1,
		  .reply = "451 4.7.0 [NORMAL01] you may go on" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.36", rules, 2);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<smtp-pattern-list p>\n"
		"    reply /TSS04/ mode=backoff\n"
		"    reply /NORMAL01/ mode=normal\n"
		"</smtp-pattern-list>\n"
		"<domain *>\n"
		"    smtp-hosts [127.0.0.36]:%d\n"
		"    smtp-pattern-list p\n"
		"    retry-after 1h\n"
		"    backoff-retry-after 1s\n"
		"</domain>\n"
		"<domain delivery.test>\n    backoff-to-normal-after-delivery yes\n</domain>\n"
		"<domain timer.test>\n    backoff-to-normal-after 1s\n    backoff-retry-after 1h\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "in@delivery.test");
	send_to(&d, "in@pattern.test");
	send_to(&d, "in@timer.test");
	cr_assert(testlib_wait_log(&d, "backoff shard=", "mode=backoff", 3, 10000));

	/* a delivery, with backoff-to-normal-after-delivery yes */
	cr_expect(testlib_wait_log(&d, "to=<in@delivery.test>", "result=delivered attempt=2", 1, 8000));
	cr_expect(testlib_wait_log(&d, "queue=delivery.test/{default} mode=normal",
			   "reason=\"backoff-to-normal-after-delivery\"", 1, 3000));
	/* without it, a delivery leaves the queue in backoff ... */
	cr_expect(testlib_wait_log(&d, "to=<in@pattern.test>", "result=delivered attempt=2", 1, 8000));
	cr_expect_eq(testlib_log_lines(&d, "queue=pattern.test/{default}", "mode=normal"), 0);
	/* ... until a reply matches mode=normal */
	send_to(&d, "out@pattern.test");
	cr_expect(testlib_wait_log(&d, "queue=pattern.test/{default} mode=normal",
			   "reason=\"451 4.7.0 [NORMAL01] you may go on\"", 1, 5000));
	/* the timer; timer.test's retry (1h) is not due, so only it can end backoff */
	cr_expect(testlib_wait_log(&d, "queue=timer.test/{default} mode=normal",
			   "reason=\"backoff-to-normal-after\"", 1, 5000));
	cr_expect_eq(testlib_log_lines(&d, "to=<in@timer.test>", "result=delivered"), 0);
	cr_expect_eq(testlib_log_lines(&d, "backoff shard=", "mode=normal"), 3);
	finish(&d, conf);
	smtp_peer_free(peer);
}

/* bounce-rcpt: a 4xx whose text matches bounces at once; others still defer. */
Test(backoff, bounce_rcpt_bounces_a_4xx, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "disabled@",
		  .reply = "452 4.2.2 mailbox disabled for now" },
		{ .cmd = SMTP_PEER_RCPT, .match = "busy@", .times = 1,
		  .reply = "452 4.2.2 mailbox busy" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.37", rules, 2);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<smtp-pattern-list p>\n"
		"    reply /^452 4\\.2\\.2 mailbox disabled/ bounce-rcpt\n"
		"</smtp-pattern-list>\n"
		"<domain *>\n"
		"    smtp-hosts [127.0.0.37]:%d\n"
		"    smtp-pattern-list p\n"
		"    retry-after 1s\n"
		"</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "disabled@b.test");
	send_to(&d, "busy@b.test");
	cr_expect(testlib_wait_log(&d, "to=<disabled@b.test>", "result=bounced attempt=1", 1, 5000));
	cr_expect_eq(testlib_log_lines(&d, "to=<disabled@b.test>", "status=5.2.2 text=\"mailbox disabled for now\""), 1);
	cr_expect(testlib_wait_log(&d, "to=<busy@b.test>", "result=delivered attempt=2", 1, 8000),
		  "a 4xx that matches no pattern must still retry");
	/* a retry of the bounced one would have shown within busy@'s retry */
	cr_expect_eq(testlib_log_lines(&d, "to=<disabled@b.test>", NULL), 1);
	cr_expect_eq(smtp_peer_count_replies(peer, SMTP_PEER_RCPT, "452 4.2.2 mailbox disabled"), 1);
	finish(&d, conf);
	smtp_peer_free(peer);
}

/*
 * defer-queue: the recipients waiting behind the matching one go on their
 * retry schedule, and nothing is tried on the queue before the retry.
 */
Test(backoff, defer_queue_holds_the_queue, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "first@", .times = 1, .delay_ms = 600,
		  .reply = "451 4.7.1 [QUEUE01] slow down" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.38", rules, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<smtp-pattern-list p>\n"
		"    reply /QUEUE01/ defer-queue\n"
		"</smtp-pattern-list>\n"
		"<domain dq.test>\n"
		"    smtp-hosts [127.0.0.38]:%d\n"
		"    smtp-pattern-list p\n"
		"    max-smtp-out 1\n"
		"    retry-after 3s\n"
		"</domain>\n"
		"<domain other.test>\n    smtp-hosts [127.0.0.38]:%d\n</domain>\n",
		smtp_peer_port(peer), smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "first@dq.test");
	/* these wait behind first@'s transaction (max-smtp-out 1) */
	send_to(&d, "w1@dq.test");
	send_to(&d, "w2@dq.test");
	send_to(&d, "w3@dq.test");
	cr_assert(testlib_wait_log(&d, "defer-queue shard=", "queue=dq.test/{default} retry=3s", 1, 5000));
	double t0 = now_s();
	cr_expect_eq(testlib_log_lines(&d, "@dq.test>", "result=deferred attempt=1"), 4);
	/* mail that arrives during the hold waits too; another queue does not */
	send_to(&d, "late@dq.test");
	send_to(&d, "x@other.test");
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 5000), 0);
	int hold_ms = (int)((t0 + 2.0 - now_s()) * 1000);
	cr_expect(testlib_peer_stays(peer, 1, hold_ms > 0 ? hold_ms : 0),
		  "the held queue was tried before its retry");
	cr_expect_eq(smtp_peer_count_replies(peer, SMTP_PEER_RCPT, "250"), 1);
	cr_expect_eq(smtp_peer_wait_messages(peer, 6, 8000), 0, "the held queue never resumed");
	double waited = now_s() - t0;
	cr_expect_geq(waited, 2.5, "resumed after %.2f s", waited);
	cr_expect(testlib_wait_log(&d, "to=<late@dq.test>", "result=delivered attempt=1", 1, 3000),
		  "mail that waited out the hold was counted as attempted");
	finish(&d, conf);
	smtp_peer_free(peer);
}

/*
 * disable-source-ip: a receiver that refuses one of the virtual-mta's
 * source IPs; the queue stops using it and carries on from the other.
 */
Test(backoff, disable_source_ip_moves_to_the_other_ip, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_CONNECT, .match = "127.0.0.41",
		  .reply = "421 4.7.0 [IPBLOCK] your IP is listed" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.39", rules, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mta.test.invalid\n"
		"shards 2\n"
		"allow-shard-oversubscription yes\n"
		"<smtp-pattern-list p>\n"
		"    reply /IPBLOCK/ disable-source-ip,reenable-after=1h\n"
		"</smtp-pattern-list>\n"
		"<virtual-mta v1>\n"
		"    smtp-source-host 127.0.0.41 a.test.invalid\n"
		"    smtp-source-host 127.0.0.42 b.test.invalid\n"
		"</virtual-mta>\n"
		"<source 127.0.0.1>\n"
		"    always-allow-relaying yes\n"
		"    default-virtual-mta v1\n"
		"</source>\n"
		"<domain *>\n"
		"    smtp-hosts [127.0.0.39]:%d\n"
		"    smtp-pattern-list p\n"
		"    retry-after 1h\n"
		"</domain>\n",
		smtp_peer_port(peer));
	char rcpt[64];

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 6; i++) {
		snprintf(rcpt, sizeof(rcpt), "s%d@ip.test", i);
		send_to(&d, rcpt);
	}
	cr_assert_eq(smtp_peer_wait_messages(peer, 6, 10000), 0, "not every message arrived");
	cr_expect_eq(testlib_log_lines(&d, "disable-source-ip shard=",
			       "source=127.0.0.41 reenable-after=3600s"), 1);
	for (size_t i = 0; i < 6; i++)
		cr_expect_str_eq(smtp_peer_message(peer, i)->client_ip, "127.0.0.42");
	/* the MX did nothing wrong: no recipient paid an attempt for the IP */
	cr_expect(testlib_wait_log(&d, "@ip.test>", "result=delivered attempt=1", 6, 5000));
	cr_expect_eq(testlib_log_lines(&d, "@ip.test>", "result=deferred"), 0);
	/* a second connection from it may have been opened before the first 421 */
	cr_expect_leq(smtp_peer_count_replies(peer, SMTP_PEER_CONNECT, "421"), 2,
		      "the disabled IP was used again");
	finish(&d, conf);
	smtp_peer_free(peer);
}

/* backoff-notify: entering backoff mails the address, from the null
 * sender, naming the queue and the reply that sent it there; once. */
Test(backoff, backoff_notify_mails_the_address, .timeout = 60)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "n1@", .times = 1,
		  .reply = "451 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.47", rules, 1);
	struct smtp_peer *ops = testlib_peer_on("127.0.0.48", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<smtp-pattern-list yahoo>\n"
		"    reply /TSS04/ mode=backoff\n"
		"</smtp-pattern-list>\n"
		"<domain bo.test>\n"
		"    smtp-hosts [127.0.0.47]:%d\n"
		"    smtp-pattern-list yahoo\n"
		"    backoff-notify ops@ops.test\n"
		"    backoff-retry-after 1h\n"
		"</domain>\n"
		"<domain ops.test>\n"
		"    smtp-hosts [127.0.0.48]:%d\n"
		"</domain>\n",
		smtp_peer_port(peer), smtp_peer_port(ops));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "n1@bo.test");
	cr_assert(testlib_wait_log(&d, "backoff shard=", "queue=bo.test/{default} mode=backoff", 1, 10000),
		  "no backoff line");
	cr_assert_eq(smtp_peer_wait_messages(ops, 1, 10000), 0, "no notice reached ops@ops.test");
	const struct smtp_peer_msg *m = smtp_peer_message(ops, 0);
	cr_assert_not_null(m);
	cr_expect_str_eq(m->mail_from, "");
	cr_assert_eq(m->nrcpt, 1);
	cr_expect_str_eq(m->rcpts[0], "ops@ops.test");
	cr_expect(strstr(m->body, "Subject: coremta mta.test.invalid: queue bo.test/{default} entered backoff mode"),
		  "%s", m->body);
	cr_expect(strstr(m->body, "Reason: 451 4.7.0 [TSS04]"), "%s", m->body);
	/* in backoff already: another deferral sends no second notice */
	send_to(&d, "n2@bo.test");
	cr_expect(testlib_peer_stays(ops, 1, 1000), "a second backoff notice");
	finish(&d, conf);
	smtp_peer_free(peer);
	smtp_peer_free(ops);
}
