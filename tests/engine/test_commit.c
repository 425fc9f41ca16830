/*
 * tests/engine/test_commit.c - the intake's group commit as clients see
 * it: the daemon (sanitizer build) on loopback, raw SMTP sessions whose
 * bodies arrive in parts, and the commit count from /metrics.  Mail is
 * routed to a receiver that never greets, so no delivery outcome adds a
 * journal sync to the count.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

/* a body this big makes its commit's fsync take milliseconds */
#define BIG_BODY	(24u << 20)

/* silent_receiver - a listening socket that never accepts: TCP connects, no greeting. */
static int silent_receiver(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert(fd >= 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(fd, 64), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* until - send text, then read until needle has come (or 20 s passed); what came. */
static char *until(int fd, const char *text, const char *needle)
{
	struct strbuf sb = { 0 };
	char buf[4096];

	if (text)
		cr_assert_eq(send(fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
	while (!strstr(sb_str(&sb), needle)) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 20000) != 1)
			break;
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0)
			break;
		sb_add(&sb, buf, (size_t)n);
	}
	return sb_detach(&sb);
}

/* put - send all of text. */
static void put(int fd, const char *text)
{
	cr_assert_eq(send(fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
}

/* expect_reply - send text; the reply holds needle. */
static void expect_reply(int fd, const char *text, const char *needle)
{
	char *got = until(fd, text, needle);

	cr_assert(strstr(got, needle), "sent %s, wanted %s, got: %s", text ? text : "nothing",
		  needle, got);
	free(got);
}

/* open_data - a session on the daemon that has had its 354. */
static int open_data(const struct testlib_daemon *d, const char *rcpt)
{
	int fd = testlib_dial(d->port);
	char *cmd = xasprintf("MAIL FROM:<s@src.test>\r\nRCPT TO:<%s>\r\nDATA\r\n", rcpt);

	cr_assert(fd >= 0);
	/* a body sent in parts must not wait for the daemon's delayed ACK */
	cr_assert_eq(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int)), 0);
	expect_reply(fd, NULL, "220 ");
	expect_reply(fd, "EHLO client.test\r\n", "250 ");
	expect_reply(fd, cmd, "354 ");
	free(cmd);
	return fd;
}

/* metric - the sum of a metric's samples in /metrics. */
static double metric(int hport, const char *name)
{
	long status;
	char *text = testlib_http(hport, "GET", "/metrics", NULL, NULL, &status);
	double n = testlib_sum_metric(text, name);

	cr_assert_eq(status, 200, "%s", text);
	free(text);
	return n;
}

/* commits - group commits so far (each carried at least one fsync). */
static double commits(int hport)
{
	return metric(hport, "coremta_fsync_batch_seconds_count");
}

/* start - the daemon with group-commit-wait us, every domain to the silent receiver. */
static int start(struct testlib_daemon *d, unsigned wait_us, int receiver_port, char **conf)
{
	int hport = testlib_reserve_port(NULL, NULL);

	*conf = xasprintf(TESTLIB_CONF_HEAD "http-mgmt-port %d\nhttp-access 127.0.0.1 monitor\n"
			  "group-commit-wait %u\n"
			  "<domain *>\n    smtp-hosts [127.0.0.1]:%d\n</domain>\n",
			  hport, wait_us, receiver_port);
	testlib_daemon_start_or_fail(d, *conf);
	return hport;
}

static void finish(struct testlib_daemon *d, char *conf)
{
	testlib_daemon_finish(d);
	free(conf);
}

/* send_big - one message whose commit is slow; its 250 has come. */
static void send_big(const struct testlib_daemon *d)
{
	int fd = open_data(d, "big@dst.test");
	char *body = xmalloc(BIG_BODY + 64);
	size_t len = strlen("Subject: big\r\n\r\n");

	memcpy(body, "Subject: big\r\n\r\n", len);
	while (len + 80 < BIG_BODY) {
		memset(body + len, 'x', 76);
		memcpy(body + len + 76, "\r\n", 2);
		len += 78;
	}
	memcpy(body + len, ".\r\n", 4);
	len += 3;
	for (size_t off = 0; off < len;) {
		ssize_t n = send(fd, body + off, len - off, MSG_NOSIGNAL);
		cr_assert(n > 0);
		off += (size_t)n;
	}
	expect_reply(fd, NULL, "250 ");
	free(body);
	close(fd);
}

/*
 * Two clients: A's body is half sent when B's message ends, A's rest
 * follows 2 ms later (a quarter of the last commit's time where that was
 * shorter than 8 ms).  With group-commit-wait the commit for B waits for
 * A's body (the last commit, of a 24 MB message, took longer than that),
 * so both share one commit; with 0, B's commit starts at once and A's
 * message needs a second.
 */
Test(commit, a_commit_waits_for_a_body_on_its_way, .timeout = 120)
{
	int receiver_port;
	int receiver = silent_receiver(&receiver_port);

	for (int waits = 1; waits >= 0; waits--) {
		struct testlib_daemon d = { 0 };
		char *conf;
		int hport = start(&d, waits ? 1000000 : 0, receiver_port, &conf);

		double synced = metric(hport, "coremta_fsync_batch_seconds_sum");
		send_big(&d);
		double big_ms = (metric(hport, "coremta_fsync_batch_seconds_sum") - synced) * 1e3;
		/* A's rest comes well inside the big commit's time */
		useconds_t gap_us = big_ms >= 8 ? 2000 : (useconds_t)(big_ms * 250);
		if (waits && gap_us < 300)
			cr_skip_test("the 24 MB commit took %.2f ms here: too quick to hold a "
				     "commit for a body in a test", big_ms);
		double before = commits(hport);
		int a = open_data(&d, "a@dst.test");
		int b = open_data(&d, "b@dst.test");
		put(a, "Subject: a\r\n\r\nfirst half\r\n");
		usleep(20000);		/* A's part is read: its session is in its body */
		put(b, "Subject: b\r\n\r\nall of it\r\n.\r\n");
		usleep(waits ? gap_us : 50000);
		expect_reply(a, "second half\r\n.\r\n", "250 ");
		expect_reply(b, NULL, "250 ");
		double n = commits(hport) - before;
		cr_expect_eq(n, waits ? 1 : 2, "group-commit-wait %s: %.0f commits for A and B",
			     waits ? "1s" : "0", n);
		close(a);
		close(b);
		finish(&d, conf);
	}
	close(receiver);
}

/*
 * A body that stops arriving holds a commit no longer than the last
 * commit took (a small message's: milliseconds here), not the
 * configured second: B's 250 comes while A's body is still open.
 */
Test(commit, a_stalled_body_holds_a_commit_no_longer_than_the_last_commit_took,
     .timeout = 120)
{
	int receiver_port;
	int receiver = silent_receiver(&receiver_port);
	struct testlib_daemon d = { 0 };
	char *conf;
	int hport = start(&d, 1000000, receiver_port, &conf);

	int first = open_data(&d, "first@dst.test");
	expect_reply(first, "Subject: first\r\n\r\nsmall\r\n.\r\n", "250 ");
	double before = commits(hport);
	int a = open_data(&d, "a@dst.test");
	int b = open_data(&d, "b@dst.test");
	put(a, "Subject: a\r\n\r\nand then nothing\r\n");
	usleep(20000);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	expect_reply(b, "Subject: b\r\n\r\nall of it\r\n.\r\n", "250 ");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	cr_expect_lt(ms, 500, "B's 250 took %.0f ms while A's body was open", ms);
	cr_expect_eq(commits(hport) - before, 1);
	/* A's message is whole later, and commits on its own */
	expect_reply(a, "the end\r\n.\r\n", "250 ");
	close(first);
	close(a);
	close(b);
	finish(&d, conf);
	close(receiver);
}
