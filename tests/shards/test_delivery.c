/*
 * tests/shards/test_delivery.c - delivery end to end with real parts:
 * the daemon (sanitizer build) takes mail over SMTP, resolves receivers
 * through a real dnsmasq on loopback, and delivers to scripted receivers
 * (tests/lib/smtp_peer) on 127.0.0.x.  Covers MX routing, null MX and
 * NXDOMAIN, per-domain isolation, max-smtp-out, max-msg-rate, the retry
 * schedule, bounce-after, and a restart in the middle of a queue.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shards/retry.h"
#include "tests/lib/dnsmasq.h"
#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* send_one - a message over a plain socket; returns the final reply code. */
static int send_one(int port, const char *from, const char *const *rcpts,
		    const char *body)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { .tv_sec = 20 };
	struct strbuf cmd = { 0 };
	char buf[4096];
	int code = -1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		goto out;
	sb_printf(&cmd, "EHLO t\r\nMAIL FROM:<%s>\r\n", from);
	size_t n = 0;
	for (; rcpts[n]; n++)
		sb_printf(&cmd, "RCPT TO:<%s>\r\n", rcpts[n]);
	sb_printf(&cmd, "DATA\r\n");
	if (send(fd, cmd.buf, cmd.len, MSG_NOSIGNAL) < 0)
		goto out;
	/* greeting, EHLO, MAIL, RCPTs, 354 */
	struct strbuf in = { 0 };
	while (!strstr(sb_str(&in), "354 ")) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		sb_add(&in, buf, (size_t)r);
	}
	sb_reset(&cmd);
	sb_printf(&cmd, "Subject: test\r\n\r\n%s\r\n.\r\nQUIT\r\n", body);
	send(fd, cmd.buf, cmd.len, MSG_NOSIGNAL);
	size_t mark = in.len;
	while (!strstr(sb_str(&in) + mark, "221 ")) {
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		sb_add(&in, buf, (size_t)r);
	}
	code = atoi(sb_str(&in) + mark);
	sb_free(&in);
out:
	sb_free(&cmd);
	close(fd);
	return code;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

Test(delivery, mx_null_mx_and_nxdomain_through_real_dns, .timeout = 120)
{
	testlib_need(dnsmasq_path() ? dnsmasq_path() : "/usr/sbin/dnsmasq", "dnsmasq-base");
	struct dnsmasq dns = { 0 };
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = testlib_peer_on("127.0.0.2", NULL, 0);
	const char *opts[] = {
		"--mx-host=d1.test,mx.d1.test,10",
		"--address=/mx.d1.test/127.0.0.2",
		"--mx-host=null.test,.,0",
		"--local=/test/",
		NULL,
	};

	if (dnsmasq_start(&dns, 0, opts) < 0)
		cr_assert_fail("dnsmasq did not start");
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"name-server 127.0.0.1:%d\n"
		"<domain *>\n    default-smtp-port %d\n    bounce-after 1h\n</domain>\n",
		dns.port, smtp_peer_port(peer));
	testlib_daemon_start_or_fail(&d, conf);
	cr_expect_eq(send_one(d.port, "s@example.org",
			      (const char *[]){ "a@d1.test", "b@null.test", "c@nx.test",
						NULL }, "hi"), 250);
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect(testlib_wait_log(&d, "to=<b@null.test>", "result=bounced", 1, 10000));
	cr_expect(testlib_wait_log(&d, "to=<c@nx.test>", "result=bounced", 1, 10000));
	cr_expect_eq(testlib_log_lines(&d, "to=<b@null.test>", "status=5.1.10"), 1);
	cr_expect_eq(testlib_log_lines(&d, "to=<c@nx.test>", "status=5.1.2"), 1);
	cr_expect(testlib_wait_log(&d, "to=<a@d1.test>", "mx=mx.d1.test ip=127.0.0.2", 1, 5000));
	cr_expect_str_eq(smtp_peer_message(peer, 0)->helo, "mta.test.invalid",
			 "EHLO does not use host-name");
	testlib_daemon_stop(&d, SIGTERM);
	{
		char *log = testlib_read_file(d.log);
		if (getenv("SHOW_LOG"))
			fprintf(stderr, "%s\n", log);
		free(log);
	}
	testlib_daemon_cleanup(&d);
	dnsmasq_stop(&dns);
	smtp_peer_free(peer);
	free(conf);
}

/* A receiver that stalls every connection must not slow another domain. */
Test(delivery, stalled_domain_does_not_slow_another, .timeout = 120)
{
	static const struct smtp_peer_rule stall[] = {
		{ .cmd = SMTP_PEER_DATA_END, .delay_ms = 20000 },
	};
	struct smtp_peer *slow = testlib_peer_on("127.0.0.3", stall, 1);
	struct smtp_peer *fast = testlib_peer_on("127.0.0.4", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain slow.test>\n    smtp-hosts [127.0.0.3]:%d\n    max-smtp-out 20\n</domain>\n"
		"<domain fast.test>\n    smtp-hosts [127.0.0.4]:%d\n    max-smtp-out 5\n</domain>\n",
		smtp_peer_port(slow), smtp_peer_port(fast));

	testlib_daemon_start_or_fail(&d, conf);
	/* fill every slow connection first */
	for (int i = 0; i < 40; i++) {
		char to[64];
		snprintf(to, sizeof(to), "s%d@slow.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "x"), 250);
	}
	double t0 = now_s();
	for (int i = 0; i < 200; i++) {
		char to[64];
		snprintf(to, sizeof(to), "f%d@fast.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "x"), 250);
	}
	cr_expect_eq(smtp_peer_wait_messages(fast, 200, 15000), 0,
		     "the healthy domain waited behind the stalled one");
	double took = now_s() - t0;
	struct smtp_peer_stats st;
	smtp_peer_stats(slow, &st);
	cr_expect_eq(st.messages, 0, "the stalled receiver answered");
	cr_expect_lt(took, 15.0, "200 messages to a healthy domain took %.1f s", took);
	testlib_daemon_stop(&d, SIGKILL);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(slow);
	smtp_peer_free(fast);
	free(conf);
}

Test(delivery, max_smtp_out_and_max_msg_rate_hold, .timeout = 120)
{
	static const struct smtp_peer_rule slowish[] = {
		{ .cmd = SMTP_PEER_DATA_END, .delay_ms = 300, .match = "conc" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.5", slowish, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain conc.test>\n    smtp-hosts [127.0.0.5]:%d\n    max-smtp-out 3\n</domain>\n"
		"<domain rate.test>\n    smtp-hosts [127.0.0.5]:%d\n    max-smtp-out 10\n"
		"    max-msg-rate 20/s\n</domain>\n",
		smtp_peer_port(peer), smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 30; i++) {
		char to[64];
		snprintf(to, sizeof(to), "c%d@conc.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "conc"), 250);
	}
	cr_assert_eq(smtp_peer_wait_messages(peer, 30, 30000), 0);
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_leq(st.max_concurrent, 3, "max-smtp-out 3 exceeded: %zu", st.max_concurrent);
	cr_expect_geq(st.max_concurrent, 2, "the queue never used parallel connections");

	size_t base = st.messages;
	for (int i = 0; i < 80; i++) {
		char to[64];
		snprintf(to, sizeof(to), "r%d@rate.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "rate"), 250);
	}
	cr_assert_eq(smtp_peer_wait_messages(peer, base + 80, 30000), 0);
	int64_t first = smtp_peer_message(peer, base)->t_ns;
	int64_t last = smtp_peer_message(peer, base + 79)->t_ns;
	double secs = (double)(last - first) / 1e9;
	double rate = 79.0 / secs;
	/* held: never above the limit by more than 5% */
	cr_expect_leq(rate, 20.0 * 1.05, "max-msg-rate 20/s: measured %.2f/s", rate);
	cr_expect_geq(rate, 20.0 * 0.75, "far below the allowed rate: %.2f/s", rate);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

Test(delivery, retry_schedule_then_delivery_and_bounce_after, .timeout = 120)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "retry@", .times = 2,
		  .reply = "451 4.7.1 greylisted, try later" },
		{ .cmd = SMTP_PEER_RCPT, .match = "never@",
		  .reply = "451 4.2.0 mailbox busy" },
		{ .cmd = SMTP_PEER_RCPT, .match = "dead@",
		  .reply = "550 5.1.1 no such user" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.6", rules, 3);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.6]:%d\n    retry-after 1s,2s\n"
		"    bounce-after 1h\n</domain>\n"
		"<domain n.test>\n    bounce-after 4s\n</domain>\n", smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	double t0 = now_s();
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "retry@r.test", NULL }, "x"), 250);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "never@n.test", NULL }, "x"), 250);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "dead@d.test", NULL }, "x"), 250);
	cr_expect(testlib_wait_log(&d, "to=<dead@d.test>", "result=bounced", 1, 10000));
	if (!testlib_wait_log(&d, "to=<retry@r.test>", "result=delivered attempt=3", 1, 15000)) {
		char *log = testlib_read_file(d.log);
		cr_expect_fail("retry@ was not delivered on its third attempt:\n%s", log);
		free(log);
	}
	double delivered_at = now_s() - t0;
	/* 1 s then 2 s: delivered after about 3 s, not before */
	cr_expect_geq(delivered_at, 2.9, "retried too early: %.2f s", delivered_at);
	cr_expect_eq(testlib_log_lines(&d, "to=<retry@r.test>", "result=deferred attempt=1"), 1);
	cr_expect_eq(testlib_log_lines(&d, "to=<retry@r.test>", "result=deferred attempt=2"), 1);
	/* never accepted: expires once bounce-after (4 s) has passed */
	cr_expect(testlib_wait_log(&d, "to=<never@n.test>", "result=expired", 1, 15000));
	/* an expiry is final: 5.4.7 in the log, as in the DSN and accounting */
	cr_expect_eq(testlib_log_lines(&d, "to=<never@n.test>", "status=5.4.7"), 1);
	cr_expect_geq(testlib_log_lines(&d, "to=<never@n.test>", "result=deferred"), 2);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/* log_time - seconds (UTC) of the first log line holding a and b, or -1. */
static double log_time(const struct testlib_daemon *d, const char *a, const char *b)
{
	char *log = testlib_read_file(d->log);
	double t = -1;

	for (char *line = log; line && *line;) {
		char *end = strchr(line, '\n');
		if (end)
			*end = '\0';
		struct tm tm = { 0 };
		int ms = 0;
		if (strstr(line, a) && strstr(line, b) &&
		    sscanf(line, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
			   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) == 7) {
			tm.tm_year -= 1900;
			tm.tm_mon -= 1;
			t = (double)timegm(&tm) + ms / 1000.0;
			break;
		}
		line = end ? end + 1 : NULL;
	}
	free(log);
	return t;
}

/* shard_wakeups - voluntary context switches of pid's shard threads, summed. */
static long shard_wakeups(int pid)
{
	char path[320];
	long sum = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *dir = opendir(path);
	cr_assert_not_null(dir, "%s", path);
	for (struct dirent *e; (e = readdir(dir));) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", pid, e->d_name);
		char *comm = testlib_read_file(path);
		if (strncmp(comm, "shard", 5) == 0) {
			snprintf(path, sizeof(path), "/proc/%d/task/%s/status", pid, e->d_name);
			char *st = testlib_read_file(path);
			const char *v = strstr(st, "voluntary_ctxt_switches:");
			if (v && (v == st || v[-1] == '\n'))
				sum += atol(v + strlen("voluntary_ctxt_switches:"));
			free(st);
		}
		free(comm);
	}
	closedir(dir);
	return sum;
}

/*
 * A shard with nothing to do sleeps: not every 50 ms tick (40 wake-ups a
 * second with the batch wait after each), but until its first timer may
 * come due, a second at most.  A deferred recipient's retry still goes
 * at its time, with the shard otherwise quiet (its connections closed).
 */
Test(delivery, a_quiet_shard_sleeps_and_retries_on_time, .timeout = 90)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "later@", .times = 1,
		  .reply = "451 4.7.1 greylisted, try later" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.6", rules, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.6]:%d\n    retry-after 8s\n"
		"    connection-idle-timeout 1s\n</domain>\n", smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "later@q.test", NULL }, "x"), 250);
	cr_assert(testlib_wait_log(&d, "to=<later@q.test>", "result=deferred attempt=1", 1, 10000));
	/* the connection closes after 1 s idle; then only the retry timer is left */
	cr_assert_eq(smtp_peer_wait_idle(peer, 10000), 0, "the idle connection stayed open");
	long w0 = shard_wakeups(d.pid);
	usleep(2000 * 1000);
	long woke = shard_wakeups(d.pid) - w0;
	/* 2 shards x 2 s: 160 with a tick every 50 ms, about 4 now */
	cr_expect_leq(woke, 20, "quiet shards woke %ld times in 2 s", woke);
	/*
	 * Another delivery, half a second off the first connection's
	 * rhythm: the quiet ticks after its connection closes do not fall
	 * on the retry's time by chance.
	 */
	usleep(500 * 1000);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "now@q.test", NULL }, "x"), 250);
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 10000), 0);
	cr_assert_eq(smtp_peer_wait_idle(peer, 10000), 0, "the second connection stayed open");
	cr_assert(testlib_wait_log(&d, "to=<later@q.test>", "result=delivered attempt=2", 1, 10000));
	double deferred = log_time(&d, "to=<later@q.test>", "result=deferred attempt=1");
	double delivered = log_time(&d, "to=<later@q.test>", "result=delivered attempt=2");
	cr_assert(deferred > 0 && delivered > 0);
	/*
	 * A long tick past the timer would be up to a second late (8.68 s
	 * with the ticks half a second off the retry); 0.5 s of slack for a
	 * loaded host (the suites run two at a time).
	 */
	cr_expect(delivered - deferred >= 7.95 && delivered - deferred <= 8.5,
		  "retried %.3f s after the deferral (retry-after 8s)", delivered - deferred);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/* A restart in the middle of a queue: nothing finished is sent again. */
Test(delivery, restart_mid_queue_resumes_without_redelivery, .timeout = 120)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "later@", .reply = "451 4.3.0 come back later" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.7", rules, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.7]:%d\n    retry-after 3s\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 20; i++) {
		char to[64];
		snprintf(to, sizeof(to), "now%d@a.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org",
				      (const char *[]){ to, "later@b.test", NULL }, "x"), 250);
	}
	cr_assert_eq(smtp_peer_wait_messages(peer, 20, 20000), 0);
	cr_assert(testlib_wait_log(&d, "to=<later@b.test>", "result=deferred", 20, 10000));
	/* SIGTERM: the daemon journals every outcome before it exits */
	testlib_daemon_stop(&d, SIGTERM);

	/* the receiver takes everything now; the retry comes at its time */
	smtp_peer_free(peer);
	peer = testlib_peer_on("127.0.0.7", NULL, 0);
	free(conf);
	conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.7]:%d\n    retry-after 3s\n</domain>\n",
		smtp_peer_port(peer));
	testlib_daemon_start_or_fail(&d, conf);
	cr_expect(testlib_wait_log(&d, "recovered: 20 messages, 20 recipients", NULL, 1, 5000),
		  "only the unfinished recipients come back");
	cr_expect_eq(smtp_peer_wait_messages(peer, 20, 20000), 0);
	cr_expect(testlib_peer_stays(peer, 20, 500), "a finished recipient was sent again");
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_eq(st.messages, 20);
	for (size_t i = 0; i < st.messages; i++) {
		const struct smtp_peer_msg *m = smtp_peer_message(peer, i);
		cr_expect_eq(m->nrcpt, 1);
		cr_expect_str_eq(m->rcpts[0], "later@b.test", "a finished recipient was sent again");
	}
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * A clean stop while a receiver's final reply is on its way.  The peer
 * holds the reply to the end of data (DATA's dot, or BDAT LAST) for
 * delay_ms; the daemon gets SIGTERM once the data is out.
 */
struct late_reply {
	struct smtp_peer *peer;
	bool chunking;
};

/* data_out - the last command before the data was answered. */
static bool data_out(void *arg)
{
	const struct late_reply *l = arg;

	return l->chunking ? smtp_peer_count_replies(l->peer, SMTP_PEER_RCPT, "250") >= 1
			   : smtp_peer_count_replies(l->peer, SMTP_PEER_DATA, "354") >= 1;
}

/* final_reply_ns - when the peer answered the end of data with 250, or -1. */
static int64_t final_reply_ns(struct smtp_peer *peer)
{
	const struct smtp_peer_cmd_rec *rec;

	for (size_t i = 0; (rec = smtp_peer_command(peer, i)); i++)
		if ((rec->cmd == SMTP_PEER_DATA_END || rec->cmd == SMTP_PEER_BDAT) &&
		    rec->code == 250)
			return rec->t_ns;
	return -1;
}

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct stop_run {
	struct smtp_peer *peer;		/* the receiver, still up */
	int64_t sigterm_ns;		/* CLOCK_MONOTONIC when SIGTERM was sent */
	double took;			/* seconds until the daemon had exited */
};

/*
 * stop_while_data_ends - start the daemon on a receiver at addr that
 * holds its final reply delay_ms, send one message to rcpt, and stop the
 * daemon with SIGTERM once the data is out; the stop must end cleanly.
 */
static struct stop_run stop_while_data_ends(struct testlib_daemon *d, const char *addr,
					    bool chunking, unsigned delay_ms, const char *rcpt)
{
	const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_DATA_END, .times = 1, .delay_ms = delay_ms },
	};
	unsigned caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
			SMTP_PEER_CAP_ENHANCEDSTATUSCODES |
			(chunking ? SMTP_PEER_CAP_CHUNKING : 0);
	struct smtp_peer *peer = testlib_peer_start(addr, 0, caps, rules, 1);
	struct late_reply l = { peer, chunking };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [%s]:%d\n    retry-after 1s\n</domain>\n",
		addr, smtp_peer_port(peer));

	testlib_daemon_start_or_fail(d, conf);
	free(conf);
	cr_assert_eq(send_one(d->port, "a@example.org", (const char *[]){ rcpt, NULL }, "x"), 250);
	cr_assert(testlib_wait_until(data_out, &l, 20000), "the message never reached the receiver");
	/* the data follows at once; the peer holds its reply delay_ms from its end */
	usleep(300 * 1000);
	struct stop_run run = { .peer = peer, .sigterm_ns = mono_ns() };
	int status = testlib_daemon_stop(d, SIGTERM);
	run.took = (double)(mono_ns() - run.sigterm_ns) / 1e9;
	cr_expect(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the stop did not end cleanly (status %d, %.2f s)", status, run.took);
	return run;
}

/* restart_on - the daemon again on its spool, to a receiver at addr taking everything. */
static struct smtp_peer *restart_on(struct testlib_daemon *d, const char *addr)
{
	struct smtp_peer *peer = testlib_peer_on(addr, NULL, 0);
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [%s]:%d\n    retry-after 1s\n</domain>\n",
		addr, smtp_peer_port(peer));

	testlib_daemon_start_or_fail(d, conf);
	free(conf);
	return peer;
}

/*
 * Regression: a SIGTERM while the receiver's reply to the end of data was
 * on its way closed the connection, the delivery was not journaled, and
 * the message went out again after the restart
 * (restart_mid_queue_resumes_without_redelivery failed under make tsan).
 * The stop waits for the reply: DATA and BDAT.
 */
Test(delivery, stop_waits_for_a_late_final_reply, .timeout = 120)
{
	for (int chunking = 0; chunking < 2; chunking++) {
		struct testlib_daemon d = { 0 };
		struct stop_run run = stop_while_data_ends(&d, "127.0.0.13", chunking, 1000,
							   "late@c.test");

		cr_expect_gt(final_reply_ns(run.peer), run.sigterm_ns,
			     "the receiver answered before the stop: the test proves nothing");
		cr_expect_eq(testlib_log_lines(&d, "to=<late@c.test>", "result=delivered"), 1,
			     "chunking=%d: the late reply was not read before the stop", chunking);
		cr_expect_lt(run.took, 4.0, "the stop took %.2f s for a reply 1 s late", run.took);
		smtp_peer_free(run.peer);

		struct smtp_peer *peer = restart_on(&d, "127.0.0.13");
		cr_expect(testlib_wait_log(&d, "recovered: 0 messages, 0 recipients", NULL, 1, 10000),
			  "chunking=%d: the delivered message is still queued", chunking);
		cr_expect(testlib_peer_stays(peer, 0, 1000), "chunking=%d: delivered again",
			  chunking);
		testlib_daemon_stop(&d, SIGTERM);
		testlib_daemon_cleanup(&d);
		smtp_peer_free(peer);
	}
}

/*
 * A receiver that never answers the end of data cannot hold the stop: it
 * is cut at the stop's grace (5 s), and the message, still queued, goes
 * out after the restart (at-least-once).
 */
Test(delivery, stop_cuts_a_receiver_that_never_answers, .timeout = 120)
{
	struct testlib_daemon d = { 0 };
	struct stop_run run = stop_while_data_ends(&d, "127.0.0.14", true, 60000, "mute@c.test");

	cr_expect_geq(run.took, 4.0, "cut after %.2f s, before the grace", run.took);
	cr_expect_lt(run.took, 8.0, "the stop took %.2f s: the grace is 5 s", run.took);
	cr_expect_eq(testlib_log_lines(&d, "event=stop", "without the receiver's final reply"), 1);
	cr_expect_eq(testlib_log_lines(&d, "to=<mute@c.test>", "result="), 0);
	smtp_peer_free(run.peer);

	struct smtp_peer *peer = restart_on(&d, "127.0.0.14");
	cr_expect(testlib_wait_log(&d, "recovered: 1 messages, 1 recipients", NULL, 1, 10000),
		  "the unanswered message is not queued");
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect(testlib_wait_log(&d, "to=<mute@c.test>", "result=delivered", 1, 10000));
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

/* A real MTA as the receiver: Debian's Postfix with STARTTLS. */
Test(delivery, interop_with_postfix_over_starttls, .timeout = 180)
{
	/* as the dnsmasq tests: a developer without Postfix skips, CI fails */
	testlib_need("/usr/sbin/postfix", "postfix");
	if (geteuid() != 0)
		cr_skip_test("needs root: Postfix's master starts as root and drops to postfix");

	struct testlib_daemon d = { 0 };
	char *pdir = testlib_tmpdir();
	int pport = testlib_reserve_port(NULL, NULL);	/* Postfix binds it by number */
	char port[16], *out, *err;

	char cert[4096], key[4096];
	snprintf(port, sizeof(port), "%d", pport);
	/* the suite runs in tests/; Postfix needs absolute paths */
	cr_assert(realpath("data/tls-localhost.pem", cert) && realpath("data/tls-localhost.key", key));
	const char *start[] = { "/usr/bin/python3", "lib/postfix_receiver.py", "start",
				pdir, port, cert, key, NULL };
	int rc = testlib_run(start, 120, &out, &err);
	if (rc != 0)
		cr_assert_fail("postfix did not start (make deps installs it): %s%s", out, err);
	free(out), free(err);

	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain interop.test>\n    smtp-hosts [127.0.0.1]:%d\n</domain>\n", pport);
	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 5; i++) {
		char to[64];
		snprintf(to, sizeof(to), "user%d@interop.test", i);
		cr_expect_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "interop"), 250);
	}
	if (!testlib_wait_log(&d, "@interop.test>", "result=delivered", 5, 30000)) {
		char *log = testlib_read_file(d.log);
		cr_expect_fail("Postfix did not accept the messages:\n%s", log);
		free(log);
	}
	cr_expect_eq(testlib_log_lines(&d, "@interop.test>", "tls=TLSv1."), 5,
		     "delivered without STARTTLS");
	testlib_daemon_stop(&d, SIGTERM);

	char *maillog_path = xasprintf("%s/log/maillog", pdir);
	testlib_wait_file(maillog_path, "status=sent", 5, 5000);
	char *maillog = testlib_read_file(maillog_path);
	cr_expect(strstr(maillog, "TLS connection established from"), "%s", maillog);
	size_t sent = 0;
	for (const char *p = maillog; (p = strstr(p, "status=sent")); p++)
		sent++;
	cr_expect_eq(sent, 5, "Postfix delivered %zu of 5:\n%s", sent, maillog);
	const char *stop[] = { "/usr/bin/python3", "lib/postfix_receiver.py", "stop", pdir, NULL };
	testlib_run(stop, 60, &out, &err);
	free(out), free(err);
	testlib_daemon_cleanup(&d);
	testlib_rmrf(pdir);
	free(pdir), free(conf), free(maillog), free(maillog_path);
}

/* The accounting file, end to end: parsed with Python's csv module. */
Test(delivery, accounting_file_matches_what_the_receiver_saw, .timeout = 120)
{
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_RCPT, .match = "gone@", .reply = "550 5.1.1 no such user" },
		{ .cmd = SMTP_PEER_RCPT, .match = "slow@", .reply = "451 4.2.1 try again" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.8", rules, 2);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<acct-file @DIR@/acct.csv>\n    records d,b,t,r\n"
		"    record-fields d *,header_Subject\n</acct-file>\n"
		"<domain *>\n    smtp-hosts [127.0.0.8]:%d\n    retry-after 1h\n</domain>\n",
		smtp_peer_port(peer));
	char *out, *err;

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "ok@example.org", (const char *[]){ "fine@x.test", NULL }, "a"), 250);
	cr_assert_eq(send_one(d.port, "ok@example.org", (const char *[]){ "gone@x.test", NULL }, "b"), 250);
	cr_assert_eq(send_one(d.port, "ok@example.org", (const char *[]){ "slow@x.test", NULL }, "c"), 250);
	cr_expect(testlib_wait_log(&d, "to=<gone@x.test>", "result=bounced", 1, 15000));
	cr_expect(testlib_wait_log(&d, "to=<slow@x.test>", "result=deferred", 1, 15000));
	cr_expect(testlib_wait_log(&d, "to=<fine@x.test>", "result=delivered", 1, 15000));
	/* gone@'s bounce notice goes back to the sender, and is accounted too */
	cr_expect(testlib_wait_log(&d, "to=<ok@example.org>", "result=delivered", 1, 15000));
	testlib_daemon_stop(&d, SIGTERM);

	char *csv = xasprintf("%s/acct.csv", d.dir);
	const char *py =
		"import csv,sys\n"
		"rows=list(csv.reader(open(sys.argv[1],newline=''),strict=True))\n"
		"h=rows[0]; t={}\n"
		"for r in rows[1:]:\n"
		"  rec=dict(zip(h,r)); t[rec['type']]=t.get(rec['type'],0)+1\n"
		"  if rec['type']=='b': print('b',rec['rcpt'],rec['bounceCat'],rec['dsnStatus'].split()[0])\n"
		"  if rec['type']=='d': print('d',rec['orig'] or '<>',rec['rcpt'],rec['dsnAction'],rec['srcMta'] or '-',rec['dlvDestinationIp'],rec['queue'],'['+rec['header_Subject']+']')\n"
		"  if rec['type']=='t': print('t',rec['rcpt'],rec['dsnAction'])\n"
		"print(' '.join('%s=%d'%(k,t[k]) for k in sorted(t)))\n"
		"print('crlf' if open(sys.argv[1],'rb').read().count(b'\\r\\n')==len(rows) else 'no-crlf')\n";
	const char *argv[] = { "/usr/bin/python3", "-c", py, csv, NULL };
	cr_assert_eq(testlib_run(argv, 30, &out, &err), 0, "%s", err);
	cr_expect(strstr(out, "b=1 d=2 r=3 t=1"), "%s", out);
	cr_expect(strstr(out, "b gone@x.test bad-mailbox 5.1.1"), "%s", out);
	cr_expect(strstr(out, "d ok@example.org fine@x.test relayed 127.0.0.1 127.0.0.8 x.test/{default} [test]"),
		  "%s", out);
	cr_expect(strstr(out, "d <> ok@example.org relayed - 127.0.0.8 example.org/{default} "
			      "[Undelivered Mail Returned to Sender]"), "%s", out);
	cr_expect(strstr(out, "t slow@x.test delayed"), "%s", out);
	cr_expect(strstr(out, "crlf"), "%s", out);
	free(out), free(err), free(csv);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/* default-virtual-mta routes through a VMTA: its source IP and EHLO name. */
Test(delivery, virtual_mta_source_ip_and_host_name, .timeout = 60)
{
	struct smtp_peer *peer = testlib_peer_on("127.0.0.10", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"shards 1\n"
		"<virtual-mta v1>\n    smtp-source-ip 127.0.0.9\n    host-name v1.test.invalid\n</virtual-mta>\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n    default-virtual-mta v1\n</source>\n"
		"<domain *>\n    smtp-hosts [127.0.0.10]:%d\n</domain>\n", smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "x@v.test", NULL }, "v"), 250);
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	const struct smtp_peer_msg *m = smtp_peer_message(peer, 0);
	cr_expect_str_eq(m->client_ip, "127.0.0.9", "not sent from the VMTA's smtp-source-ip");
	cr_expect_str_eq(m->helo, "v1.test.invalid", "not greeted with the VMTA's host-name");
	cr_expect(testlib_wait_log(&d, "queue=v.test/v1", "result=delivered", 1, 5000));
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * Regression: with DATA (no CHUNKING offered) the driver asked for the
 * body before the 354 came, got nothing, and never asked again: every
 * message stalled until data-send-timeout.
 */
Test(delivery, data_without_chunking_sends_the_body_after_354, .timeout = 60)
{
	char err[256];
	struct smtp_peer_opts o = {
		.addr = "127.0.0.12",
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
	};
	struct smtp_peer *peer = smtp_peer_start(&o, err, sizeof(err));
	cr_assert_not_null(peer, "%s", err);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.12]:%d\n</domain>\n", smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "x@data.test", NULL }, "hi"), 250);
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 5000), 0, "the body never went out");
	cr_expect(!smtp_peer_message(peer, 0) || !smtp_peer_message(peer, 0)->bdat);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * Regression (issue 11, stall 1): with max-msg-rate, a second wave of
 * mail after the queue's connections closed was never tried: the rate's
 * bucket was read, never refilled, while no connection was open.
 */
Test(delivery, msg_rate_second_wave_after_idle_close, .timeout = 90)
{
	struct smtp_peer *peer = testlib_peer_on("127.0.0.6", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain wave.test>\n    smtp-hosts [127.0.0.6]:%d\n    max-msg-rate 10/s\n"
		"    connection-idle-timeout 1s\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	/*
	 * One transaction of three recipients takes every token there is
	 * (at 10/s the bucket holds one).
	 */
	cr_assert_eq(send_one(d.port, "a@example.org",
			      (const char *[]){ "w1-0@wave.test", "w1-1@wave.test",
						"w1-2@wave.test", NULL }, "x"), 250);
	cr_assert_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	/* the queue's connections close (idle timeout) */
	cr_assert_eq(smtp_peer_wait_idle(peer, 10000), 0, "the idle connections stayed open");
	for (int i = 0; i < 5; i++) {
		char to[64];
		snprintf(to, sizeof(to), "w2-%d@wave.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "x"), 250);
	}
	cr_expect_eq(smtp_peer_wait_messages(peer, 6, 10000), 0,
		     "the second wave was never tried");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * sink_start - Postfix's smtp-sink on addr:port serving at most max
 * connections at once; the rest wait ungreeted in its listen backlog, as
 * a receiver that caps concurrent connections leaves them.  Returns its
 * pid (killed with the test process, PR_SET_PDEATHSIG).
 */
static pid_t sink_start(const char *addr, int port, int max)
{
	char where[64], m[16];
	pid_t pid = fork();

	snprintf(where, sizeof(where), "%s:%d", addr, port);
	snprintf(m, sizeof(m), "%d", max);
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int null = open("/dev/null", O_RDWR);
		dup2(null, 1);
		dup2(null, 2);
		/* as root it must drop to some user */
		execl("/usr/sbin/smtp-sink", "smtp-sink", "-u", "nobody", "-m", m, where, "256",
		      (char *)NULL);
		_exit(127);
	}
	/* listening: a probe connects (it takes a slot only until it closes) */
	for (int i = 0; i < 100; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		inet_pton(AF_INET, addr, &a.sin_addr);
		int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
		close(fd);
		if (rc == 0)
			return pid;
		usleep(50 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	cr_assert_fail("smtp-sink did not start (install postfix)");
	return -1;
}

static void send_to(int port, const char *fmt, int domain, int n)
{
	for (int i = 0; i < n; i++) {
		char to[64], user[16];
		snprintf(user, sizeof(user), "u%d", i);
		snprintf(to, sizeof(to), fmt, user, domain);
		cr_assert_eq(send_one(port, "a@example.org", (const char *[]){ to, NULL }, "x"), 250);
	}
}

/* capped_peer - a receiver that serves max connections, 421 beyond. */
static struct smtp_peer *capped_peer(const char *addr, unsigned max,
				     const struct smtp_peer_rule *rules, size_t nrules)
{
	char err[256];
	struct smtp_peer_opts o = {
		.addr = addr,
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
		.max_conns = max,
		.rules = rules,
		.nrules = nrules,
	};
	struct smtp_peer *peer = smtp_peer_start(&o, err, sizeof(err));

	cr_assert(peer, "%s", err);
	return peer;
}

/*
 * Regression (issue 11, stall 2): a receiver that serves N connections
 * and leaves the rest ungreeted (smtp-sink -m).  The idle connections of
 * a finished domain held its slots; the other domains' connections waited
 * for a greeting, and their mail sat with no log line until the idle
 * timeout.  Now idle connections to a destination where another queue
 * waits give way.  (Idle and greeting timeouts are a minute here: only
 * giving way delivers within the test's time.)
 */
Test(delivery, capped_receiver_idle_connections_give_way, .timeout = 120)
{
	testlib_need("/usr/sbin/smtp-sink", "postfix");
	int port = testlib_reserve_port("127.0.0.21", NULL);	/* smtp-sink binds it by number */
	pid_t sink = sink_start("127.0.0.21", port, 4);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.21]:%d\n    max-smtp-out 4\n"
		"    connection-idle-timeout 60s\n    smtp-greeting-timeout 60s\n"
		"    retry-after 10m\n</domain>\n", port);

	testlib_daemon_start_or_fail(&d, conf);
	send_to(d.port, "%s@a%d.test", 0, 8);
	cr_assert(testlib_wait_log(&d, "result=delivered", NULL, 8, 20000),
		  "the first domain was not delivered");
	/* its connections now idle at the receiver, holding its slots */
	for (int k = 1; k <= 7; k++)
		send_to(d.port, "%s@b%d.test", k, 2);
	bool all = testlib_wait_log(&d, "result=delivered", NULL, 22, 25000);
	if (!all || getenv("SHOW_LOG")) {
		char *log = testlib_read_file(d.log);
		fprintf(stderr, "%s\n", log);
		free(log);
	}
	cr_expect(all, "messages froze behind idle connections: %zu of 22 delivered",
		  testlib_log_lines(&d, "result=delivered", NULL));
	cr_expect_eq(testlib_log_lines(&d, "result=deferred", NULL), 0);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	kill(sink, SIGKILL);
	waitpid(sink, NULL, 0);
	free(conf);
}

/* three_rcpt_451s - the peer (arg) deferred exactly three RCPTs. */
static bool three_rcpt_451s(void *arg)
{
	return smtp_peer_count_replies(arg, SMTP_PEER_RCPT, "451") == 3;
}

/*
 * Regression (issue 11): a receiver that answers "421 4.7.0 too many
 * connections" beyond 3.  The 421 made the queue's every MX "failed" and
 * deferred all its mail to the retry schedule; now the destination's
 * connection count drops to what the receiver served and the mail waits
 * for a slot.
 */
Test(delivery, receiver_421_too_many_connections_lowers_the_count, .timeout = 120)
{
	struct smtp_peer *peer = capped_peer("127.0.0.22", 3, NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.22]:%d\n    max-smtp-out 5\n"
		"    connection-idle-timeout 2s\n    retry-after 10m\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int k = 0; k < 6; k++)
		send_to(d.port, "%s@c%d.test", k, 8);
	int rc = smtp_peer_wait_messages(peer, 48, 30000);
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	if (rc || getenv("SHOW_LOG")) {
		char *log = testlib_read_file(d.log);
		fprintf(stderr, "%s\n", log);
		free(log);
	}
	cr_expect_eq(rc, 0, "%zu of 48 delivered; %zu connections refused", st.messages,
		     st.refused);
	cr_expect_eq(testlib_log_lines(&d, "result=deferred", NULL), 0);
	cr_expect_geq(testlib_log_lines(&d, "site-limit", "limit="), 1);
	/* the count dropped: far fewer refusals than connections attempted */
	cr_expect_lt(st.refused, 24, "refused %zu times", st.refused);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * ip-connection-limit: ten domains behind one receiver that serves 5
 * connections (421 beyond): with the limit set, coremta never opens a
 * sixth, across queues and shards, and delivers everything.
 */
Test(delivery, ip_connection_limit_holds_across_queues, .timeout = 120)
{
	static const struct smtp_peer_rule slow[] = {
		{ .cmd = SMTP_PEER_DATA_END, .delay_ms = 100 },
	};
	struct smtp_peer *peer = capped_peer("127.0.0.23", 5, slow, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"ip-connection-limit 127.0.0.23/32 5\n"
		"<domain *>\n    smtp-hosts [127.0.0.23]:%d\n    max-smtp-out 4\n"
		"    retry-after 10m\n</domain>\n", smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int k = 0; k < 10; k++)
		send_to(d.port, "%s@l%d.test", k, 6);
	cr_expect_eq(smtp_peer_wait_messages(peer, 60, 40000), 0);
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_eq(st.refused, 0, "the receiver refused %zu connections", st.refused);
	cr_expect_leq(st.max_concurrent, 5);
	cr_expect_eq(testlib_log_lines(&d, "result=deferred", NULL), 0);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * bounce-after-attempts (a coremta extension): the third transient
 * failure is the last; the recipient gives up like bounce-after, with
 * its own bounce category, and the receiver is not tried again.
 */
Test(delivery, bounce_after_attempts_gives_up_after_n_tries, .timeout = 60)
{
	static const struct smtp_peer_rule later[] = {
		{ .cmd = SMTP_PEER_RCPT, .reply = "451 4.7.1 try later" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.24", later, 1);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<acct-file @DIR@/acct.csv>\n    records d,b,t\n</acct-file>\n"
		"<domain tries.test>\n    smtp-hosts [127.0.0.24]:%d\n    retry-after 1s\n"
		"    bounce-after-attempts 3\n</domain>\n", smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "x@tries.test", NULL },
			      "x"), 250);
	cr_assert(testlib_wait_log(&d, "to=<x@tries.test>", "result=expired", 1, 20000));
	cr_expect_eq(testlib_log_lines(&d, "to=<x@tries.test>", "result=deferred"), 2);
	cr_expect_eq(testlib_log_lines(&d, "result=expired", "attempt=3"), 1);
	cr_expect(testlib_stays(three_rcpt_451s, peer, 2000), "tried again after giving up");
	testlib_daemon_stop(&d, SIGTERM);
	char *path = xasprintf("%s/acct.csv", d.dir);
	char *acct = testlib_read_file(path);
	cr_expect(strstr(acct, "retry-limit-exceeded"), "no b record in its category:\n%s", acct);
	free(acct);
	free(path);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * Regression (issue 11): after SIGTERM and a restart, deferred mail was
 * retried at once despite its retry-after, attempt= went back to 1, and
 * a pool's message changed its virtual-mta.  The schedule, the count
 * and the pool member survive a restart.
 */
Test(delivery, restart_keeps_retry_schedule_count_and_pool_member, .timeout = 120)
{
	static const struct smtp_peer_rule later[] = {
		{ .cmd = SMTP_PEER_RCPT, .reply = "451 4.3.0 come back later" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.25", later, 1);
	struct testlib_daemon d = { 0 };
	const char *fmt =
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mta.test.invalid\n"
		"shards 2\n"
		"allow-shard-oversubscription yes\n"
		"<virtual-mta v1>\n</virtual-mta>\n"
		"<virtual-mta v2>\n</virtual-mta>\n"
		"<virtual-mta-pool p>\n    virtual-mta v1\n    virtual-mta v2\n</virtual-mta-pool>\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n"
		"    default-virtual-mta p\n</source>\n"
		"<domain *>\n    smtp-hosts [127.0.0.25]:%d\n    retry-after 8s\n</domain>\n";
	char *conf = xasprintf(fmt, smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 4; i++) {
		char to[64];
		snprintf(to, sizeof(to), "x%d@r.test", i);
		cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ to, NULL }, "x"), 250);
	}
	cr_assert(testlib_wait_log(&d, "result=deferred", "attempt=1", 4, 10000));
	double deferred_at = now_s();
	/* which member each got */
	char member[4][8];
	for (int i = 0; i < 4; i++) {
		char to[64];
		snprintf(to, sizeof(to), "to=<x%d@r.test>", i);
		snprintf(member[i], sizeof(member[i]), "%s",
			 testlib_log_lines(&d, to, "queue=r.test/v1") ? "v1" : "v2");
	}
	cr_assert(strcmp(member[0], member[1]) || strcmp(member[1], member[2]),
		  "the pool gave every message the same member");
	/* SIGTERM: the daemon journals every outcome before it exits */
	testlib_daemon_stop(&d, SIGTERM);

	smtp_peer_free(peer);
	peer = testlib_peer_on("127.0.0.25", NULL, 0);
	free(conf);
	conf = xasprintf(fmt, smtp_peer_port(peer));
	testlib_daemon_start_or_fail(&d, conf);
	cr_expect(testlib_wait_log(&d, "recovered: 4 messages, 4 recipients", NULL, 1, 5000));
	/* not at once: the retry is due 8 s after the deferral */
	bool held = testlib_peer_stays(peer, 0, 1000);
	if (now_s() - deferred_at < 7.5)
		cr_expect(held, "deferred mail retried at once after the restart");
	cr_expect_eq(smtp_peer_wait_messages(peer, 4, 20000), 0);
	double retried = now_s() - deferred_at;
	cr_expect_geq(retried, 7.5, "retried %.1f s after the deferral", retried);
	cr_expect(testlib_wait_log(&d, "result=delivered", "attempt=2", 4, 5000),
		  "the attempt count started over");
	for (int i = 0; i < 4; i++) {
		char to[64], queue[64];
		snprintf(to, sizeof(to), "to=<x%d@r.test>", i);
		snprintf(queue, sizeof(queue), "queue=r.test/%s", member[i]);
		cr_expect_eq(testlib_log_lines(&d, to, queue), 2, "%s changed its pool member", to);
	}
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/* take_retry_files - the text of dir's retry-*.log files, which go. */
static char *take_retry_files(const char *dir)
{
	struct strbuf sb = { 0 };
	DIR *d = opendir(dir);
	struct dirent *de;

	cr_assert_not_null(d, "%s", dir);
	while ((de = readdir(d))) {
		if (strncmp(de->d_name, "retry-", 6) != 0)
			continue;
		char *path = xasprintf("%s/%s", dir, de->d_name);
		char *text = testlib_read_file(path);
		sb_adds(&sb, text);
		unlink(path);
		free(text);
		free(path);
	}
	closedir(d);
	return sb_detach(&sb);
}

/*
 * The listener does not wait for the retry table (issue 16: at a million
 * deferred recipients its load took seconds before the first EHLO), and
 * no recipient is taken before its state is there.  The table is a named
 * pipe, so the load waits for the test: EHLO and a new message are
 * answered while it is not loaded, nothing is delivered meanwhile, and
 * once a big table (the deferred recipient's record among 200,000 others)
 * arrives, the deferred mail keeps its schedule and attempt count.
 */
Test(delivery, restart_answers_before_the_retry_table_is_loaded, .timeout = 120)
{
	static const struct smtp_peer_rule later[] = {
		{ .cmd = SMTP_PEER_RCPT, .reply = "451 4.3.0 come back later" },
	};
	struct smtp_peer *peer = testlib_peer_on("127.0.0.25", later, 1);
	struct testlib_daemon d = { 0 };
	const char *fmt = TESTLIB_CONF_HEAD
		"<domain *>\n    smtp-hosts [127.0.0.25]:%d\n    retry-after 8s\n</domain>\n";
	char *conf = xasprintf(fmt, smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "x@r.test", NULL }, "x"),
		     250);
	cr_assert(testlib_wait_log(&d, "result=deferred", "attempt=1", 1, 10000));
	double deferred_at = now_s();
	testlib_daemon_stop(&d, SIGTERM);

	/* the state of the run, kept for the pipe; the files make way for it */
	char *spool = xasprintf("%s/spool", d.dir);
	char *records = take_retry_files(spool);
	cr_assert(strstr(records, "r "), "no retry record for the deferred recipient");
	char *fifo = xasprintf("%s/retry-base.log", spool);
	cr_assert_eq(mkfifo(fifo, 0600), 0);

	smtp_peer_free(peer);
	peer = testlib_peer_on("127.0.0.25", NULL, 0);
	free(conf);
	conf = xasprintf(fmt, smtp_peer_port(peer));
	size_t loaded = testlib_log_lines(&d, "event=retry-loaded", NULL);
	testlib_daemon_start_or_fail(&d, conf);
	/* the loader waits on the pipe: the listener does not */
	cr_assert_eq(send_one(d.port, "a@example.org", (const char *[]){ "y@r.test", NULL }, "y"),
		     250, "EHLO or the message not answered while the retry table loads");
	cr_expect_eq(testlib_log_lines(&d, "event=retry-loaded", NULL), loaded);
	cr_expect(testlib_peer_stays(peer, 0, 1000),
		  "a recipient was taken before its retry state was loaded");

	struct strbuf big = { 0 };
	sb_adds(&big, records);
	struct retry_rcpt st = { .attempts = 1, .next_unix = (int64_t)time(NULL) + 3600,
				 .delay_s = 3600 };
	for (uint32_t i = 1; i < 200000; i++)
		retry_put_rcpt(&big, 0x7000000000000000ull + i, 0, &st);
	int fd = open(fifo, O_WRONLY);
	cr_assert_geq(fd, 0, "%s", fifo);
	for (size_t off = 0; off < big.len;) {
		ssize_t w = write(fd, big.buf + off, big.len - off);
		cr_assert_gt(w, 0);
		off += (size_t)w;
	}
	close(fd);
	cr_assert(testlib_wait_log(&d, "event=retry-loaded", "recipients=200000 ", 1, 30000),
		  "%s", d.log);

	/* the new message goes at once, the deferred one when it is due */
	cr_expect_eq(smtp_peer_wait_messages(peer, 2, 20000), 0);
	double retried = now_s() - deferred_at;
	cr_expect_geq(retried, 7.5, "retried %.1f s after the deferral", retried);
	cr_expect(testlib_wait_log(&d, "to=<x@r.test>", "attempt=2", 1, 5000),
		  "the attempt count started over");
	cr_expect(testlib_wait_log(&d, "to=<y@r.test>", "attempt=1", 1, 5000));
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	sb_free(&big);
	free(records);
	free(fifo);
	free(spool);
	free(conf);
}

/*
 * Sites: 40 domains behind one receiver that takes 3 connections, with
 * ip-connection-limit 3.  A connection whose domain has nothing left
 * carries another waiting domain's mail (no QUIT, no new handshake), so
 * the receiver sees far fewer connections than domains, and never a 421.
 */
Test(delivery, site_connections_carry_other_queues, .timeout = 120)
{
	struct smtp_peer *peer = capped_peer("127.0.0.26", 3, NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"ip-connection-limit 127.0.0.26/32 3\n"
		"<domain *>\n    smtp-hosts [127.0.0.26]:%d\n    max-smtp-out 3\n"
		"    connection-idle-timeout 30s\n    retry-after 10m\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	for (int k = 0; k < 40; k++)
		send_to(d.port, "%s@s%d.test", k, 2);
	cr_expect_eq(smtp_peer_wait_messages(peer, 80, 40000), 0);
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_eq(st.refused, 0, "%zu connections refused", st.refused);
	cr_expect_lt(st.connections, 40, "%zu connections for 40 domains: none was shared",
		     st.connections);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/* queue-to: two domains' mail goes into the queue (and route) of a third. */
Test(delivery, queue_to_merges_domains_into_one_queue, .timeout = 60)
{
	struct smtp_peer *peer = testlib_peer_on("127.0.0.27", NULL, 0);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"<domain a.test>\n    queue-to merged.test\n</domain>\n"
		"<domain b.test>\n    queue-to merged.test\n</domain>\n"
		"<domain merged.test>\n    smtp-hosts [127.0.0.27]:%d\n</domain>\n",
		smtp_peer_port(peer));

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert_eq(send_one(d.port, "s@example.org",
			      (const char *[]){ "x@a.test", "y@b.test", NULL }, "x"), 250);
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	cr_expect(testlib_wait_log(&d, "queue=merged.test/{default}", "result=delivered", 2, 10000),
		  "the domains did not go through merged.test's queue");
	cr_expect_eq(testlib_log_lines(&d, "queue=a.test", NULL), 0);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}

/*
 * Sites through real DNS: 20 domains whose MX is the same host (dnsmasq),
 * a receiver that serves 3 connections, ip-connection-limit 3, two
 * shards.  mode "rollup": an <mx-rollup-list> line queues them all as
 * site.rollup; "shared": no list, but identical MX sets make one site;
 * "apart": disable-mx-rollup, every domain a site of its own; "nocap":
 * "shared" with no limit that makes queues wait (the receiver takes 100,
 * ip-connection-limit 1000); "routed": "nocap", but every domain goes
 * through one smtp-hosts route and has disable-mx-rollup.  Returns
 * the most domains one connection carried, and the receiver's counts.
 */
static size_t site_run(const char *mode, const char *addr, struct smtp_peer_stats *st)
{
	enum { NDOM = 20, PER = 2 };
	testlib_need(dnsmasq_path() ? dnsmasq_path() : "/usr/sbin/dnsmasq", "dnsmasq-base");
	struct dnsmasq dns = { 0 };
	struct testlib_daemon d = { 0 };
	bool routed = strcmp(mode, "routed") == 0;
	bool nocap = routed || strcmp(mode, "nocap") == 0;
	struct smtp_peer *peer = capped_peer(addr, nocap ? 100 : 3, NULL, 0);
	const char *opts[NDOM + 4];
	char *mx[NDOM];

	for (int k = 0; k < NDOM; k++)
		opts[k] = mx[k] = xasprintf("--mx-host=r%d.test,mx1.site.test,10", k);
	char *a = xasprintf("--address=/mx1.site.test/%s", addr);
	opts[NDOM] = a;
	opts[NDOM + 1] = "--local=/test/";
	opts[NDOM + 2] = NULL;
	if (dnsmasq_start(&dns, 0, opts) < 0)
		cr_assert_fail("dnsmasq did not start");
	char *route = routed ? xasprintf("    smtp-hosts [%s]:%d\n", addr, smtp_peer_port(peer))
			     : xstrdup("");
	char *conf = xasprintf(TESTLIB_CONF_HEAD
		"name-server 127.0.0.1:%d\n"
		"ip-connection-limit %s/32 %d\n"
		"%s"
		"<domain *>\n    default-smtp-port %d\n    max-smtp-out 3\n"
		"    connection-idle-timeout 30s\n    retry-after 10m\n%s%s</domain>\n",
		dns.port, addr, nocap ? 1000 : 3,
		strcmp(mode, "rollup") == 0
			? "<mx-rollup-list>\n    mx *.SITE.test site.rollup\n</mx-rollup-list>\n" : "",
		smtp_peer_port(peer),
		strcmp(mode, "apart") == 0 || routed ? "    disable-mx-rollup yes\n" : "", route);
	free(route);

	testlib_daemon_start_or_fail(&d, conf);
	for (int k = 0; k < NDOM; k++) {
		send_to(d.port, "%s@r%d.test", k, PER);
		/* no cap: one domain after another, so idle connections exist */
		if (nocap)
			cr_expect_eq(smtp_peer_wait_messages(peer, (size_t)(k + 1) * PER, 20000), 0);
	}
	cr_expect_eq(smtp_peer_wait_messages(peer, NDOM * PER, 60000), 0, "%s: not all arrived", mode);
	smtp_peer_stats(peer, st);
	/* domains per connection */
	size_t most = 0;
	for (size_t i = 0; i < st->messages; i++) {
		const struct smtp_peer_msg *m = smtp_peer_message(peer, i);
		char seen[NDOM] = { 0 };
		size_t n = 0;
		for (size_t j = 0; j < st->messages; j++) {
			const struct smtp_peer_msg *o = smtp_peer_message(peer, j);
			int k;
			if (o->conn != m->conn || o->nrcpt < 1 ||
			    sscanf(strchr(o->rcpts[0], '@'), "@r%d.test", &k) != 1 || k < 0 || k >= NDOM)
				continue;
			n += !seen[k];
			seen[k] = 1;
		}
		if (n > most)
			most = n;
	}
	if (getenv("SHOW_LOG")) {
		char *log = testlib_read_file(d.log);
		fprintf(stderr, "%s: %s\n", mode, log);
		free(log);
	}
	if (strcmp(mode, "rollup") == 0) {
		cr_expect(testlib_wait_log(&d, "queue=site.rollup/{default}", "result=delivered",
					   NDOM * PER, 10000),
			  "rollup: %d delivered through the site.rollup queue",
			  testlib_log_lines(&d, "queue=site.rollup/{default}", "result=delivered"));
		cr_expect_geq(testlib_log_lines(&d, "mx-rollup ", "rollup=site.rollup mx=mx1.site.test"), 1);
	} else {
		cr_expect_eq(testlib_log_lines(&d, "queue=site.rollup", NULL), 0);
	}
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	dnsmasq_stop(&dns);
	smtp_peer_free(peer);
	for (int k = 0; k < NDOM; k++)
		free(mx[k]);
	free(a);
	free(conf);
	return most;
}

/*
 * Regression (issue 11, MX rollup): domains behind one MX host share its
 * connections, whether an <mx-rollup-list> merges them into one queue or
 * their identical MX sets make them one site; disable-mx-rollup keeps a
 * domain's connections to itself.
 */
Test(delivery, mx_rollup_shares_connections_across_domains, .timeout = 200)
{
	struct smtp_peer_stats st;
	size_t most;

	most = site_run("rollup", "127.0.0.43", &st);
	cr_expect_geq(most, 2, "rollup: no connection carried two domains");
	cr_expect_lt(st.connections, 20, "rollup: %zu connections for 20 domains", st.connections);
	cr_expect_eq(st.refused, 0, "rollup: %zu refused", st.refused);

	most = site_run("shared", "127.0.0.44", &st);
	cr_expect_geq(most, 2, "same MX set: no connection carried two domains");
	cr_expect_lt(st.connections, 20, "same MX set: %zu connections for 20 domains",
		     st.connections);
	cr_expect_eq(st.refused, 0, "same MX set: %zu refused", st.refused);

	/* with no cap refusing, a queue takes an idle connection of its site
	   before it opens one (domains sent one after another) */
	most = site_run("nocap", "127.0.0.46", &st);
	cr_expect_geq(most, 2, "no cap: no connection carried two domains");
	cr_expect_lt(st.connections, 20, "no cap: %zu connections for 20 domains", st.connections);

	most = site_run("apart", "127.0.0.45", &st);
	cr_expect_eq(most, 1, "disable-mx-rollup: a connection carried %zu domains", most);
	cr_expect_geq(st.connections, 20, "disable-mx-rollup: %zu connections for 20 domains",
		      st.connections);

	/* routed through one smtp-hosts route, idle connections about: still apart */
	most = site_run("routed", "127.0.0.49", &st);
	cr_expect_eq(most, 1, "routed disable-mx-rollup: a connection carried %zu domains", most);
	cr_expect_geq(st.connections, 20, "routed disable-mx-rollup: %zu connections for 20 domains",
		      st.connections);
}
