/*
 * tests/engine/test_reload.c - live reload end to end: the daemon
 * (sanitizer build) relays 20,000 messages from Postfix's smtp-source to
 * two receivers (tests/lib/smtp_peer, one per domain, each domain pinned
 * to its own shard) while it gets 20 SIGHUPs: the file alternates between
 * two configurations with different max-smtp-out and max-msg-rate, and
 * once it is broken.  From the receivers' own records (when each
 * connection began and ended, when each message arrived) every limit is
 * checked in every interval between reloads, from a second after the
 * reload on; and nothing is lost, stuck or delivered twice.  A second
 * test moves a listener with a session open on it.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

#define NDOM		2
#define PER_DOM		10000
#define RELOADS		20
#define BROKEN_AT	9	/* 0-based: the tenth reload gets the broken file */
#define PHASE_MS	2000
#define GRACE_NS	1000000000LL	/* new limits are in force within a second */
#define BURST		10	/* a bucket's tokens at a switch, and rounding */

/* The two configurations: low and high limits, per queue. */
static const unsigned conns_limit[2] = { 2, 5 };
static const unsigned rate_limit[2] = { 30, 600 };	/* messages per second */

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * conf_text - the daemon's file with limit set k (0 low, 1 high), or
 * broken: two bad values, on lines 16 and 17, that a failed reload must
 * both name.
 */
static char *conf_text(const char *port, const char *dir, const int *peer_port, int k,
		       bool broken)
{
	char conns[16], rate[16];

	snprintf(conns, sizeof(conns), "%u", conns_limit[k]);
	snprintf(rate, sizeof(rate), "%u/s", rate_limit[k]);
	return xasprintf(
		"smtp-listener 127.0.0.1:%s\n"			/* 1 */
		"disk-queue %s/spool\n"				/* 2 */
		"host-name mta.test.invalid\n"			/* 3 */
		"shards 2\n"					/* 4 */
		"allow-shard-oversubscription yes\n"		/* 5 */
		"<shard 0>\n    domain r0.test\n</shard>\n"	/* 6-8 */
		"<shard 1>\n    domain r1.test\n</shard>\n"	/* 9-11 */
		"<source 127.0.0.1>\n"				/* 12 */
		"    always-allow-relaying yes\n"		/* 13 */
		"</source>\n"					/* 14 */
		"<domain *>\n"					/* 15 */
		"    max-smtp-out %s\n"				/* 16 */
		"    max-msg-rate %s\n"				/* 17 */
		"    retry-after 10m\n"				/* 18 */
		"</domain>\n"					/* 19 */
		"<domain r0.test>\n    smtp-hosts [127.0.0.71]:%d\n</domain>\n"
		"<domain r1.test>\n    smtp-hosts [127.0.0.72]:%d\n</domain>\n",
		port, dir, broken ? "plenty" : conns, broken ? "fast" : rate,
		peer_port[0], peer_port[1]);
}

/* rewrite - the file of a running daemon, written aside and renamed in. */
static void rewrite(const struct testlib_daemon *d, const int *peer_port, int k, bool broken)
{
	/* the listener as started (port 0), so that it stays as it is */
	char *text = conf_text("0", d->dir, peer_port, k, broken);
	char *tmp = testlib_write(d->dir, "coremta.conf.new", text);
	cr_assert_eq(rename(tmp, d->conf), 0);
	free(tmp);
	free(text);
}

/* source_start - smtp-source sending n messages to rcpt, in the background. */
static pid_t source_start(int port, const char *rcpt, int n)
{
	char target[64], count[16];
	pid_t pid = fork();

	snprintf(target, sizeof(target), "127.0.0.1:%d", port);
	snprintf(count, sizeof(count), "%d", n);
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int null = open("/dev/null", O_RDWR);
		dup2(null, 1);
		dup2(null, 2);
		execl("/usr/sbin/smtp-source", "smtp-source", "-l", "1000", "-m", count, "-s", "8",
		      "-f", "load@example.org", "-t", rcpt, target, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* What one receiver saw: each connection's span, each message's arrival. */
struct seen {
	size_t nconn;
	int64_t *start, *end;		/* [conn - 1] */
	size_t nmsg;
	int64_t *arrived;
};

static void collect(struct smtp_peer *p, struct seen *s)
{
	struct smtp_peer_stats st;

	smtp_peer_stats(p, &st);
	s->nconn = st.connections;
	s->start = xcalloc(s->nconn + 1, sizeof(int64_t));
	s->end = xcalloc(s->nconn + 1, sizeof(int64_t));
	const struct smtp_peer_cmd_rec *r;
	for (size_t i = 0; (r = smtp_peer_command(p, i)); i++) {
		if (!r->conn || r->conn > s->nconn)
			continue;
		if (r->cmd == SMTP_PEER_CONNECT)
			s->start[r->conn - 1] = r->t_ns;
		if (r->t_ns > s->end[r->conn - 1])
			s->end[r->conn - 1] = r->t_ns;
	}
	s->nmsg = st.messages;
	s->arrived = xcalloc(s->nmsg + 1, sizeof(int64_t));
	const struct smtp_peer_msg *m;
	for (size_t i = 0; (m = smtp_peer_message(p, i)); i++)
		if (i < s->nmsg)
			s->arrived[i] = m->t_ns;
}

/* open_at - connections open at t (greeted by then, not yet gone). */
static unsigned open_at(const struct seen *s, int64_t t)
{
	unsigned n = 0;

	for (size_t i = 0; i < s->nconn; i++)
		n += s->start[i] && s->start[i] <= t && s->end[i] >= t;
	return n;
}

/* most_open - the most connections open at once in [a, b). */
static unsigned most_open(const struct seen *s, int64_t a, int64_t b)
{
	unsigned most = open_at(s, a);

	for (size_t i = 0; i < s->nconn; i++)
		if (s->start[i] >= a && s->start[i] < b) {
			unsigned n = open_at(s, s->start[i]);
			if (n > most)
				most = n;
		}
	return most;
}

static size_t arrived_in(const struct seen *s, int64_t a, int64_t b)
{
	size_t n = 0;

	for (size_t i = 0; i < s->nmsg; i++)
		n += s->arrived[i] >= a && s->arrived[i] < b;
	return n;
}

/* each_once - every receiver of peers (arg, NDOM of them) has PER_DOM messages. */
static bool each_once(void *arg)
{
	struct smtp_peer **peers = arg;

	for (int i = 0; i < NDOM; i++) {
		struct smtp_peer_stats st;
		smtp_peer_stats(peers[i], &st);
		if (st.messages != PER_DOM)
			return false;
	}
	return true;
}

Test(reload, limits_follow_twenty_reloads_under_load, .timeout = 300)
{
	/* a receiver that takes a moment per message keeps connections busy */
	static const struct smtp_peer_rule slow[] = {
		{ .cmd = SMTP_PEER_DATA_END, .delay_ms = 3 },
	};
	struct smtp_peer *peer[NDOM];
	int peer_port[NDOM];
	char err[256];
	for (int i = 0; i < NDOM; i++) {
		struct smtp_peer_opts o = {
			.addr = i ? "127.0.0.72" : "127.0.0.71",
			.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_ENHANCEDSTATUSCODES |
				SMTP_PEER_CAP_8BITMIME,
			.rules = slow,
			.nrules = 1,
			/* the high limit, enforced: one connection more is refused */
			.max_conns = conns_limit[1],
			.body_keep = 64,
		};
		peer[i] = smtp_peer_start(&o, err, sizeof(err));
		cr_assert(peer[i], "%s", err);
		peer_port[i] = smtp_peer_port(peer[i]);
	}
	struct testlib_daemon d = { 0 };
	/*
	 * It starts on the high limits; reload i switches to the low ones
	 * when i is even, to the high ones when odd, except the broken one.
	 */
	char *boot = conf_text("@PORT@", "@DIR@", peer_port, 1, false);
	testlib_daemon_start_or_fail(&d, boot);
	free(boot);
	int64_t t0 = mono_ns();
	pid_t src[NDOM];
	for (int i = 0; i < NDOM; i++)
		src[i] = source_start(d.port, i ? "r@r1.test" : "r@r0.test", PER_DOM);
	for (int i = 0; i < NDOM; i++)
		cr_assert_eq(smtp_peer_wait_messages(peer[i], 200, 30000), 0,
			     "nothing relayed to r%d.test", i);

	int64_t at[RELOADS];
	int in_force[RELOADS + 1];	/* limit set of the interval after reload i-1 */
	in_force[0] = 1;
	for (int i = 0; i < RELOADS; i++) {
		usleep(PHASE_MS * 1000);
		bool broken = i == BROKEN_AT;
		int k = i % 2 ? 1 : 0;
		rewrite(&d, peer_port, k, broken);
		at[i] = mono_ns();
		cr_assert_eq(kill(d.pid, SIGHUP), 0);
		in_force[i + 1] = broken ? in_force[i] : k;
		/* done (either way) before the next: the log says which */
		cr_assert(testlib_wait_log(&d, "event=reload", "reloaded",
					   (size_t)(i + 1 - (i >= BROKEN_AT)), 20000) &&
			  (i < BROKEN_AT || testlib_wait_log(&d, "reload of", "failed", 1, 20000)),
			  "reload %d did not finish", i + 1);
	}
	/* the reloads happened while mail was still relaying */
	size_t before_last = 0;
	for (int i = 0; i < NDOM; i++) {
		struct smtp_peer_stats st;
		smtp_peer_stats(peer[i], &st);
		before_last += st.messages;
	}
	cr_expect_lt(before_last, (size_t)NDOM * PER_DOM,
		     "everything was relayed before the last reload: the test proves little");

	for (int i = 0; i < NDOM; i++) {
		int rc = smtp_peer_wait_messages(peer[i], PER_DOM, 120000);
		struct smtp_peer_stats st;
		smtp_peer_stats(peer[i], &st);
		cr_expect_eq(rc, 0, "r%d.test: %zu of %d relayed (lost or stuck)", i, st.messages,
			     PER_DOM);
	}
	int64_t t_end = mono_ns();
	for (int i = 0; i < NDOM; i++) {
		int status;
		cr_assert_eq(waitpid(src[i], &status, 0), src[i]);
		cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			  "smtp-source %d failed: every message should get its 250", i);
	}
	/* duplicates, if any, would arrive now */
	cr_expect(testlib_stays(each_once, peer, 500), "a message arrived twice");

	for (int i = 0; i < NDOM; i++) {
		struct smtp_peer_stats st;
		smtp_peer_stats(peer[i], &st);
		cr_expect_eq(st.messages, PER_DOM, "r%d.test: %zu messages, not each one once", i,
			     st.messages);
		cr_expect_eq(st.refused, 0, "r%d.test: %zu connections over the high limit %u", i,
			     st.refused, conns_limit[1]);
		struct seen s;
		collect(peer[i], &s);
		unsigned high_most = 0, low_most = 0;
		size_t high_msgs = 0, low_msgs = 0;
		int64_t high_ns = 0, low_ns = 0;
		for (int j = 0; j <= RELOADS; j++) {
			int64_t a = j ? at[j - 1] + GRACE_NS : t0;
			int64_t b = j < RELOADS ? at[j] : t_end;
			if (b <= a)
				continue;
			int k = in_force[j];
			unsigned most = most_open(&s, a, b);
			size_t n = arrived_in(&s, a, b);
			double secs = (double)(b - a) / 1e9;
			cr_expect_leq(most, conns_limit[k],
				      "r%d.test, interval %d: %u connections open at once, limit %u",
				      i, j, most, conns_limit[k]);
			cr_expect_leq((double)n, rate_limit[k] * secs * 1.05 + BURST,
				      "r%d.test, interval %d: %zu messages in %.2f s, limit %u/s",
				      i, j, n, secs, rate_limit[k]);
			if (k == 1 && j && j < RELOADS) {
				high_most = most > high_most ? most : high_most;
				high_msgs += n;
				high_ns += b - a;
			} else if (k == 0) {
				low_most = most > low_most ? most : low_most;
				low_msgs += n;
				low_ns += b - a;
			}
		}
		/* and the high limits were in force too, not only the low ones */
		cr_expect_gt(high_most, conns_limit[0],
			     "r%d.test: never more than %u connections under the high limit", i,
			     high_most);
		double high_rate = (double)high_msgs / ((double)high_ns / 1e9);
		cr_expect_gt(high_rate, rate_limit[0] * 1.2,
			     "r%d.test: %.0f/s under the high limit, no faster than the low one", i,
			     high_rate);
		cr_log_info("r%d.test: low limits: %.1f messages/s, at most %u connections; "
			    "high: %.1f/s, at most %u; %zu connections in all", i,
			    (double)low_msgs / ((double)low_ns / 1e9), low_most, high_rate, high_most,
			    s.nconn);
		free(s.start), free(s.end), free(s.arrived);
	}

	char *log = testlib_read_file(d.log);
	cr_expect_eq(testlib_log_lines(&d, "event=reload", "reloaded"), RELOADS - 1);
	cr_expect_eq(testlib_log_lines(&d, "reload of", "failed"), 1);
	/* every error of the broken file, by file and line */
	cr_expect(strstr(log, "coremta.conf:16: error: 'max-smtp-out'") &&
		  strstr(log, "coremta.conf:17: error: 'max-msg-rate'"), "%s", log);
	cr_expect_eq(testlib_log_lines(&d, "result=deferred", NULL), 0);
	cr_expect_eq(testlib_log_lines(&d, "result=delivered", NULL), (size_t)NDOM * PER_DOM);
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	free(log);
	log = testlib_read_file(d.log);
	cr_expect(!strstr(log, "ERROR: AddressSanitizer") && !strstr(log, "runtime error") &&
		  !strstr(log, "LeakSanitizer"), "%s", log);
	free(log);
	testlib_daemon_cleanup(&d);
	for (int i = 0; i < NDOM; i++)
		smtp_peer_free(peer[i]);
}

/* reply - read until a reply's last line (code, space) arrives; its code. */
static int reply(int fd)
{
	char buf[4096];
	size_t len = 0;

	while (len < sizeof(buf) - 1) {
		ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
		if (n <= 0)
			return -1;
		len += (size_t)n;
		buf[len] = '\0';
		if (buf[len - 1] != '\n')
			continue;
		size_t s = len - 1;	/* back to the start of the last line */
		while (s > 0 && buf[s - 1] != '\n')
			s--;
		if (len - s >= 4 && buf[s + 3] == ' ')
			return atoi(buf + s);
	}
	return -1;
}

static int say(int fd, const char *text)
{
	if (send(fd, text, strlen(text), MSG_NOSIGNAL) < 0)
		return -1;
	return reply(fd);
}

/* listener_conf - listen on listen ("127.0.0.1:0"), relay to the peer. */
static char *listener_conf(const char *listen, const char *dir, int peer_port)
{
	return xasprintf("smtp-listener %s\n"
			 "disk-queue %s/spool\n"
			 "host-name mta.test.invalid\n"
			 "<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
			 "<domain *>\n    smtp-hosts [127.0.0.73]:%d\n    retry-after 10m\n"
			 "</domain>\n", listen, dir, peer_port);
}

static void reload_to(struct testlib_daemon *d, const char *text, size_t nth, bool ok)
{
	char *tmp = testlib_write(d->dir, "coremta.conf.new", text);

	cr_assert_eq(rename(tmp, d->conf), 0);
	free(tmp);
	cr_assert_eq(kill(d->pid, SIGHUP), 0);
	cr_assert(ok ? testlib_wait_log(d, "event=reload", "reloaded", nth, 20000)
		     : testlib_wait_log(d, "reload of", "failed", nth, 20000),
		  "reload %zu did not %s", nth, ok ? "succeed" : "fail");
}

/*
 * A reload moves the listener to another port: the old one stops
 * accepting, the new one serves at once, and a session that was in the
 * middle of DATA on the old one finishes its message.  A listener that
 * cannot be bound fails the reload (file:line) and changes nothing.
 */
Test(reload, listeners_come_and_go_open_sessions_finish, .timeout = 60)
{
	struct smtp_peer *peer = testlib_peer_start("127.0.0.73", 0,
						    SMTP_PEER_CAP_PIPELINING, NULL, 0);
	struct testlib_daemon d = { 0 };
	char *text = listener_conf("127.0.0.1:@PORT@", "@DIR@", smtp_peer_port(peer));
	testlib_daemon_start_or_fail(&d, text);
	free(text);

	int fd = testlib_dial(d.port);
	cr_assert_geq(fd, 0);
	cr_assert_eq(reply(fd), 220);
	cr_assert_eq(say(fd, "EHLO t\r\n"), 250);
	cr_assert_eq(say(fd, "MAIL FROM:<a@example.org>\r\n"), 250);
	cr_assert_eq(say(fd, "RCPT TO:<r@moved.test>\r\n"), 250);
	cr_assert_eq(say(fd, "DATA\r\n"), 354);

	/* another address, so that it is another listener; the kernel picks its port */
	text = listener_conf("127.0.0.74:0", d.dir, smtp_peer_port(peer));
	reload_to(&d, text, 1, true);
	free(text);
	int p2 = testlib_log_port(&d, "127.0.0.74");
	cr_assert_gt(p2, 0, "the reload logged no listening line for 127.0.0.74");
	int gone = testlib_dial(d.port);
	cr_expect_lt(gone, 0, "the removed listener still accepts");
	if (gone >= 0)
		close(gone);
	int fd2 = testlib_dial_addr("127.0.0.74", p2);
	cr_assert_geq(fd2, 0, "the added listener does not accept");
	cr_expect_eq(reply(fd2), 220);
	cr_expect_eq(say(fd2, "QUIT\r\n"), 221);
	close(fd2);

	/* the session begun on the old listener finishes its transaction */
	cr_expect_eq(say(fd, "Subject: t\r\n\r\nbody\r\n.\r\n"), 250);
	cr_expect_eq(say(fd, "QUIT\r\n"), 221);
	close(fd);
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 20000), 0, "the message was lost");

	/* a port someone else holds: the reload fails and names the line */
	int busy = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(bind(busy, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(busy, 1), 0);
	socklen_t alen = sizeof(a);
	getsockname(busy, (struct sockaddr *)&a, &alen);
	char busy_at[32];
	snprintf(busy_at, sizeof(busy_at), "127.0.0.1:%d", ntohs(a.sin_port));
	text = listener_conf(busy_at, d.dir, smtp_peer_port(peer));
	reload_to(&d, text, 1, false);
	free(text);
	char *log = testlib_read_file(d.log);
	cr_expect(strstr(log, "coremta.conf:1: smtp-listener 127.0.0.1:") &&
		  strstr(log, "Address already in use"), "%s", log);
	free(log);
	fd2 = testlib_dial_addr("127.0.0.74", p2);
	cr_expect_geq(fd2, 0, "a failed reload closed the running listener");
	if (fd2 >= 0) {
		cr_expect_eq(reply(fd2), 220);
		close(fd2);
	}
	close(busy);
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	log = testlib_read_file(d.log);
	cr_expect(!strstr(log, "ERROR: AddressSanitizer") && !strstr(log, "runtime error") &&
		  !strstr(log, "LeakSanitizer"), "%s", log);
	free(log);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}
