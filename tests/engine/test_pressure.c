/*
 * tests/engine/test_pressure.c - the daemon under pressure, with real
 * parts: a spool on a small tmpfs of its own (a private mount namespace,
 * so the test needs root and skips without it), filled by mail and by a
 * file behind its back, freed by deliveries to a scripted receiver.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* reply - read one whole (multi-line) reply; its code, or 0. */
static int reply(int fd, char *text, size_t cap)
{
	size_t len = 0;

	text[0] = '\0';
	for (;;) {
		/* the last line of a reply is "ddd " ... CRLF */
		char *line = text;
		for (char *nl; (nl = strstr(line, "\r\n")); line = nl + 2)
			if (nl - line >= 4 && line[3] == ' ')
				return atoi(line);
		if (len + 1 >= cap)
			return 0;
		ssize_t n = recv(fd, text + len, cap - len - 1, 0);
		if (n <= 0)
			return 0;
		len += (size_t)n;
		text[len] = '\0';
	}
}

static int command(int fd, const char *line, char *text, size_t cap)
{
	if (send(fd, line, strlen(line), MSG_NOSIGNAL) < 0)
		return 0;
	return reply(fd, text, cap);
}

/*
 * send_msg - one message of about body_len octets marked "X-Seq: seq";
 * the code of the reply that ended the attempt (250: accepted).  With
 * declare, MAIL carries SIZE=.
 */
static int send_msg(int port, unsigned seq, size_t body_len, bool declare,
		    char *text, size_t cap)
{
	int fd = testlib_dial(port), code = 0;
	char line[256];

	if (fd < 0)
		return 0;
	if (reply(fd, text, cap) != 220 || command(fd, "EHLO client.test\r\n", text, cap) != 250)
		goto out;
	if (declare)
		snprintf(line, sizeof(line), "MAIL FROM:<s@example.org> SIZE=%zu\r\n", body_len);
	else
		snprintf(line, sizeof(line), "MAIL FROM:<s@example.org>\r\n");
	if ((code = command(fd, line, text, cap)) != 250)
		goto out;
	if ((code = command(fd, "RCPT TO:<r@dest.test>\r\n", text, cap)) != 250)
		goto out;
	if ((code = command(fd, "DATA\r\n", text, cap)) != 354)
		goto out;
	struct strbuf b = { 0 };
	sb_printf(&b, "Subject: pressure\r\nX-Seq: <%u>\r\n\r\n", seq);
	while (b.len < body_len)
		sb_adds(&b, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
	sb_adds(&b, ".\r\n");
	ssize_t w = send(fd, b.buf, b.len, MSG_NOSIGNAL);
	sb_free(&b);
	code = w < 0 ? 0 : reply(fd, text, cap);
	command(fd, "QUIT\r\n", line, sizeof(line));
out:
	close(fd);
	return code;
}

static char *spool_path(const struct testlib_daemon *d, const char *name)
{
	return xasprintf("/proc/%d/root%s/spool%s%s", d->pid, d->dir, name ? "/" : "",
			 name ? name : "");
}

static uint64_t spool_free(const struct testlib_daemon *d)
{
	char *p = spool_path(d, NULL);
	struct statvfs sv;

	cr_assert_eq(statvfs(p, &sv), 0, "%s: %s", p, strerror(errno));
	free(p);
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* fill_file - write a file in the spool's file system until it is full. */
static void fill_file(const struct testlib_daemon *d)
{
	char *p = spool_path(d, "filler");
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	static char chunk[4096];

	cr_assert_geq(fd, 0, "%s: %s", p, strerror(errno));
	while (write(fd, chunk, sizeof(chunk)) > 0)
		;
	cr_assert_eq(errno, ENOSPC);
	close(fd);
	free(p);
}

static void remove_file(const struct testlib_daemon *d)
{
	char *p = spool_path(d, "filler");

	cr_assert_eq(unlink(p), 0, "%s: %s", p, strerror(errno));
	free(p);
}

/* fill_with_mail - send until refused; how many got 250. */
static unsigned fill_with_mail(const struct testlib_daemon *d, unsigned *seq)
{
	char text[4096];
	unsigned acked = 0;

	for (int i = 0; i < 400; i++) {
		int code = send_msg(d->port, *seq, 100 * 1000, i % 2, text, sizeof(text));
		if (code == 250) {
			acked++;
			(*seq)++;
			continue;
		}
		cr_assert_eq(code, 452, "message %u: %s", *seq, text);
		cr_assert(strstr(text, "452 4.3.1"), "%s", text);
		return acked;
	}
	cr_assert_fail("the spool never filled up");
	return acked;
}

/* count_seq - how many of the receivers' messages carry X-Seq: <seq>. */
static unsigned count_seq(struct smtp_peer *const *peers, size_t npeers, unsigned seq)
{
	char needle[32];
	unsigned n = 0;

	snprintf(needle, sizeof(needle), "X-Seq: <%u>", seq);
	for (size_t k = 0; k < npeers; k++) {
		struct smtp_peer_stats st;
		smtp_peer_stats(peers[k], &st);
		for (size_t i = 0; i < st.messages; i++)
			if (strstr(smtp_peer_message(peers[k], i)->body, needle))
				n++;
	}
	return n;
}

static const char *tmpfs_conf =
	"smtp-listener 127.0.0.1:@PORT@\n"
	"disk-queue @DIR@/spool\n"
	"host-name mx.test.invalid\n"
	"shards 1\n"
	"allow-shard-oversubscription yes\n"
	"min-free-space 1M\n"
	"<domain *>\n"
	"    smtp-hosts [127.0.0.1]:@SINK@\n"
	"    max-smtp-out 4\n"
	"    retry-after 1s\n"
	"</domain>\n"
	"<source 127.0.0.1>\n"
	"    always-allow-relaying yes\n"
	"</source>\n";

/*
 * receiver - the receiver on 127.0.0.1: on the port reserved_fd holds
 * (testlib_reserve_port) when > 0, else on port.
 */
static struct smtp_peer *receiver(int port, int reserved_fd)
{
	char err[256];
	struct smtp_peer_opts o = {
		.port = port, .reserved_fd = reserved_fd,
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
			SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
	};
	struct smtp_peer *p = smtp_peer_start(&o, err, sizeof(err));

	cr_assert_not_null(p, "receiver on port %d: %s", port, err);
	return p;
}

/* await_intake - new mail is accepted again (250) within timeout_s. */
static bool await_intake(const struct testlib_daemon *d, unsigned *seq, int timeout_s)
{
	char text[4096];

	for (int i = 0; i < timeout_s * 4; i++) {
		int code = send_msg(d->port, *seq, 1000, false, text, sizeof(text));
		if (code == 250) {
			(*seq)++;
			return true;
		}
		cr_assert(code == 452, "while waiting for room: %s", text);
		usleep(250 * 1000);
	}
	return false;
}

/*
 * Regression (issue 18, part 1): a full spool used to break intake until
 * a restart (451 for ever after one failed commit), and min-free-space
 * sampled once a second let a fast client drive the disk to 0 bytes.
 */
Test(pressure, full_spool_recovers_without_restart, .timeout = 180)
{
	char why[256];
	if (!testlib_private_tmpfs_ok(why, sizeof(why)))
		cr_skip_test("%s", why);

	struct testlib_daemon d = { .spool_tmpfs = "size=8m" };
	struct smtp_peer *peers[3];
	size_t npeers = 0;
	unsigned seq = 1, acked = 0;

	int down_fd;
	d.sink_port = testlib_reserve_port(NULL, &down_fd);	/* the route is down */
	testlib_daemon_start_or_fail(&d, tmpfs_conf);
	int pid = d.pid;

	/* 1. mail fills the spool up to min-free-space, never to 0 */
	acked += fill_with_mail(&d, &seq);
	cr_expect_geq(acked, 20, "only %u messages fit in 8 MB", acked);
	cr_expect_geq(spool_free(&d), 1u << 20, "min-free-space kept");
	cr_log_info("%u messages filled the spool; %llu bytes left", acked,
		    (unsigned long long)spool_free(&d));

	/* 2. a file takes the rest; the receiver comes back: all delivered */
	fill_file(&d);
	cr_expect_lt(spool_free(&d), 8192);
	peers[npeers++] = receiver(d.sink_port, down_fd);
	cr_expect_eq(smtp_peer_wait_messages(peers[0], acked, 60000), 0,
		     "delivered with the disk full: the journal had room");
	cr_expect(testlib_wait_log(&d, "result=delivered", NULL, acked, 20000));
	smtp_peer_wait_idle(peers[0], 10000);
	smtp_peer_stop(peers[0]);

	/* 3. space returns: intake takes mail again by itself */
	remove_file(&d);
	cr_assert(await_intake(&d, &seq, 10), "intake did not come back");
	acked++;

	/* 4. refill with the route down, then deliver everything again */
	acked += fill_with_mail(&d, &seq);
	/* on the port peers[0] freed when it stopped */
	peers[npeers++] = receiver(d.sink_port, 0);
	cr_expect(testlib_wait_log(&d, "result=delivered", NULL, acked, 60000));
	cr_assert(await_intake(&d, &seq, 10), "intake did not come back after the refill");
	acked++;
	cr_expect(testlib_wait_log(&d, "result=delivered", NULL, acked, 20000));

	/* every 250 delivered exactly once, by the same process */
	for (unsigned s = 1; s < seq; s++)
		cr_expect_eq(count_seq(peers, npeers, s), 1, "X-Seq %u", s);
	cr_expect_eq(d.pid, pid);
	cr_expect_eq(kill(d.pid, 0), 0, "still running");
	/* one log line per state change, no more */
	cr_expect_eq(testlib_log_lines(&d, "new mail gets 452", NULL), 2);
	cr_expect_eq(testlib_log_lines(&d, "accepting mail again", NULL), 2);
	testlib_daemon_stop(&d, SIGTERM);
	char *log = testlib_read_file(d.log);
	cr_expect_not(strstr(log, "ERROR"), "%s", log);
	free(log);
	testlib_daemon_cleanup(&d);
	for (size_t k = 0; k < npeers; k++)
		smtp_peer_free(peers[k]);
}

/* ---- connection slots and deadlines (issue 18, part 3) ---- */

/* dial_from - connect from a chosen loopback address; the greeting's code. */
static int dial_from(const char *ip, int port, int *fdp)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct timeval tv = { .tv_sec = 10 };
	char text[512];

	cr_assert_eq(inet_pton(AF_INET, ip, &a.sin_addr), 1);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind %s: %s", ip,
		     strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	a.sin_port = htons((uint16_t)port);
	cr_assert_eq(inet_pton(AF_INET, "127.0.0.1", &a.sin_addr), 1);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	int code = reply(fd, text, sizeof(text));
	if (code == 421)
		cr_expect(strstr(text, "421 4.7.0 Too many connections"), "%s", text);
	*fdp = fd;
	return code;
}

static const char *slots_conf =
	"smtp-listener 127.0.0.1:@PORT@\n"
	"disk-queue @DIR@/spool\n"
	"host-name mx.test.invalid\n"
	"shards 1\n"
	"allow-shard-oversubscription yes\n"
	"total-max-smtp-in 10\n"
	"<source-group apps>\n"
	"    reserved-smtp-in 3\n"
	"</source-group>\n"
	"<source 0/0>\n"
	"    max-smtp-in-per-ip 5\n"
	"</source>\n"
	"<source 127.0.0.1>\n"
	"    always-allow-relaying yes\n"
	"    source-group apps\n"
	"    max-smtp-in-per-ip unlimited\n"
	"</source>\n";

/*
 * Regression (issue 18): 100 idle connections from one outside address
 * took every slot and locked the injecting application out.
 */
Test(pressure, outside_clients_cannot_take_the_reserved_slots, .timeout = 60)
{
	struct testlib_daemon d = { 0 };
	int fds[32], n = 0, fd;

	testlib_daemon_start_or_fail(&d, slots_conf);
	/* one outside address: 5 at once, the 6th is told why */
	for (int i = 0; i < 5; i++) {
		cr_expect_eq(dial_from("127.0.0.2", d.port, &fds[n]), 220);
		n++;
	}
	char text[512];
	cr_expect_eq(dial_from("127.0.0.2", d.port, &fd), 421);
	close(fd);
	/* others take what is left but the 3 reserved slots: 10 - 5 - 3 */
	int outside = 0;
	for (int i = 0; i < 6; i++) {
		char ip[32];
		snprintf(ip, sizeof(ip), "127.0.0.%d", 3 + i);
		int code = dial_from(ip, d.port, &fds[n]);
		if (code == 220) {
			outside++;
			n++;
		} else {
			cr_expect_eq(code, 421);
			close(fds[n]);
		}
	}
	cr_expect_eq(outside, 2);
	/* the application still gets in, up to the total */
	for (int i = 0; i < 3; i++) {
		cr_expect_eq(dial_from("127.0.0.1", d.port, &fds[n]), 220, "app %d", i);
		cr_expect_eq(command(fds[n], "EHLO app.test\r\n", text, sizeof(text)), 250);
		n++;
	}
	cr_expect_eq(dial_from("127.0.0.1", d.port, &fd), 421, "10 in all");
	close(fd);
	for (int i = 0; i < n; i++)
		close(fds[i]);

	/*
	 * The counts come down as connections close: once the daemon has
	 * seen them go, the outside address gets its 5 again, and no more
	 * (a count that leaked or went below zero would show here).
	 */
	int code = 0;
	for (int tries = 0; tries < 100 && code != 220; tries++) {
		code = dial_from("127.0.0.2", d.port, &fd);
		close(fd);
		if (code != 220)
			usleep(50 * 1000);
	}
	cr_assert_eq(code, 220, "127.0.0.2 never got a slot back");
	n = 0;
	for (int tries = 0; tries < 100 && n < 5; tries++) {
		code = dial_from("127.0.0.2", d.port, &fds[n]);
		if (code == 220) {
			n++;
		} else {
			close(fds[n]);		/* the probe's close not seen yet */
			usleep(50 * 1000);
		}
	}
	cr_expect_eq(n, 5, "only %d of 5 from 127.0.0.2 after the first ones closed", n);
	cr_expect_eq(dial_from("127.0.0.2", d.port, &fd), 421, "a 6th from 127.0.0.2");
	close(fd);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
}

/* closed_within - the daemon closes fd within max_s, while trickle() runs. */
static double closed_after(int fd, const char *trickle, double max_s)
{
	struct timespec t0, t;
	char buf[512];
	size_t i = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct timeval tv = { .tv_usec = 200 * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		double el = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
		if (el > max_s)
			return el;
		if (trickle && trickle[i] && send(fd, trickle + i, 1, MSG_NOSIGNAL) == 1)
			i = trickle[i + 1] ? i + 1 : 0;	/* round and round */
		ssize_t r = recv(fd, buf, sizeof(buf), 0);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			return el;
	}
}

Test(pressure, a_trickle_cannot_hold_a_slot, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	char *dir = testlib_tmpdir();
	char *cert = testlib_read_file("data/tls-localhost.pem");
	char *key = testlib_read_file("data/tls-localhost.key");
	char *both = xasprintf("%s%s", cert, key);
	char *pem = testlib_write(dir, "server.pem", both);
	char *conf = xasprintf("%s"
		"smtp-server-tls-certificate %s\n"
		"smtp-in-command-timeout 2s\n"
		"smtp-in-greeting-timeout 3s\n"
		"smtp-in-tls-timeout 2s\n", slots_conf, pem);
	char text[512];
	int fd;

	testlib_daemon_start_or_fail(&d, conf);
	/* one command line, a byte every 200 ms: the idle timeout (5 min)
	   never fires, the command deadline does */
	cr_assert_eq(dial_from("127.0.0.2", d.port, &fd), 220);
	cr_assert_eq(command(fd, "EHLO slow.test\r\n", text, sizeof(text)), 250);
	double t = closed_after(fd, "NOOPNOOPNOOP", 15);
	cr_expect_lt(t, 10, "a trickled command line held the slot %.1f s", t);
	close(fd);
	/* whole commands but never HELO: the greeting deadline */
	cr_assert_eq(dial_from("127.0.0.2", d.port, &fd), 220);
	t = closed_after(fd, "NOOP\r\n", 15);
	cr_expect_lt(t, 10, "no HELO, yet the slot was held %.1f s", t);
	close(fd);
	/* STARTTLS, then a handshake that never comes */
	cr_assert_eq(dial_from("127.0.0.2", d.port, &fd), 220);
	cr_assert_eq(command(fd, "EHLO slow.test\r\n", text, sizeof(text)), 250);
	cr_assert_eq(command(fd, "STARTTLS\r\n", text, sizeof(text)), 220, "%s", text);
	t = closed_after(fd, NULL, 15);
	cr_expect_lt(t, 10, "a stalled handshake held the slot %.1f s", t);
	close(fd);
	/* an honest client is not hurried */
	cr_assert_eq(dial_from("127.0.0.1", d.port, &fd), 220);
	cr_expect_eq(command(fd, "EHLO app.test\r\n", text, sizeof(text)), 250);
	sleep(4);
	cr_expect_eq(command(fd, "NOOP\r\n", text, sizeof(text)), 250, "%s", text);
	close(fd);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	testlib_rmrf(dir);
	free(dir), free(cert), free(key), free(both), free(pem), free(conf);
}

Test(pressure, source_group_config)
{
	struct diag_list dl = { 0 };
	struct cfg *c = testlib_load("<source-group apps>\n"
				     "    max-smtp-in 40\n"
				     "    reserved-smtp-in 8\n"
				     "</source-group>\n"
				     "<source 10.0.0.0/8>\n"
				     "    source-group apps\n"
				     "    max-smtp-in-per-ip 20\n"
				     "</source>\n", &dl);
	cr_assert_not_null(c, "%s", testlib_diag_text(&dl));
	size_t n;
	const struct cfg_source_group *g = cfg_source_groups(c, &n);
	cr_assert_eq(n, 1);
	cr_expect_str_eq(g->name, "apps");
	cr_expect_eq(g->max_smtp_in, 40);
	cr_expect_eq(g->reserved_smtp_in, 8);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
	const struct cfg_source *src = cfg_source_lookup(c, (struct sockaddr *)&sin, NULL);
	cr_expect_str_eq(src->source_group, "apps");
	cr_expect_eq(src->max_smtp_in_per_ip, 20);
	cr_expect_eq(cfg_global(c)->smtp_in_command_timeout, 60);
	cr_expect_eq(cfg_global(c)->smtp_in_tls_timeout, 30);
	cr_expect_eq(cfg_global(c)->smtp_in_greeting_timeout, 60);
	cfg_free(c);
	diag_free(&dl);

	struct diag_list bad = { 0 };
	c = testlib_load("<source 10.0.0.0/8>\n    source-group typo\n</source>\n", &bad);
	cr_expect_null(c);
	char *text = testlib_diag_text(&bad);
	cr_expect(strstr(text, "test.conf:2") &&
		  strstr(text, "'source-group typo' names no <source-group typo> block"), "%s", text);
	free(text);
	diag_free(&bad);
}

/* ---- receivers that misbehave (issue 18, part 5) ---- */

static const char *quirk_conf =
	"smtp-listener 127.0.0.1:@PORT@\n"
	"disk-queue @DIR@/spool\n"
	"host-name mx.test.invalid\n"
	"shards 1\n"
	"allow-shard-oversubscription yes\n"
	"<domain *>\n"
	"    smtp-hosts [127.0.0.1]:@SINK@\n"
	"    retry-after 1s\n"
	"    smtp-command-timeout 3s\n"
	"    max-smtp-out 1\n"	/* one connection learns, the next benefits */
	"    use-starttls %s\n"
	"</domain>\n"
	"<source 127.0.0.1>\n"
	"    always-allow-relaying yes\n"
	"</source>\n";

/*
 * Regression (issue 18): Postal's bhm offers SIZE but answers "501 Bad
 * address syntax" to MAIL FROM:<a@b> SIZE=n; coremta bounced every
 * recipient.  Now the recipient is deferred, retried without the
 * parameter, and the host is remembered (one log line).
 */
Test(pressure, bhm_refusing_size_gets_mail_without_it, .timeout = 120)
{
	struct testlib_daemon d = { 0 };
	char *dir = testlib_tmpdir();
	char *users = testlib_write(dir, "users", "u1@bhm.test x\nu2@bhm.test x\n");
	char port[16];
	char text[4096];
	unsigned seq = 1;

	d.sink_port = testlib_reserve_port(NULL, NULL);	/* bhm binds it by number */
	snprintf(port, sizeof(port), "%d", d.sink_port);
	pid_t bhm = fork();
	cr_assert_geq(bhm, 0);
	if (bhm == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		dup2(null, 2);
		execl("/usr/sbin/bhm", "bhm", "-t", "4", "-b", "127.0.0.1", "-p", port, users,
		      (char *)NULL);
		_exit(127);
	}
	char *conf = xasprintf(quirk_conf, "no");
	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 10; i++) {
		int code = send_msg(d.port, seq++, 2000, false, text, sizeof(text));
		cr_expect_eq(code, 250, "%s", text);
	}
	/* send_msg's recipient is r@dest.test: every domain goes to bhm, but
	   bhm knows only its users; so add two it knows */
	int fd = testlib_dial(d.port);
	cr_assert_geq(fd, 0);
	cr_assert_eq(reply(fd, text, sizeof(text)), 220);
	cr_assert_eq(command(fd, "EHLO t\r\n", text, sizeof(text)), 250);
	cr_assert_eq(command(fd, "MAIL FROM:<s@example.org>\r\n", text, sizeof(text)), 250);
	cr_assert_eq(command(fd, "RCPT TO:<u1@bhm.test>\r\n", text, sizeof(text)), 250);
	cr_assert_eq(command(fd, "RCPT TO:<u2@bhm.test>\r\n", text, sizeof(text)), 250);
	cr_assert_eq(command(fd, "DATA\r\n", text, sizeof(text)), 354);
	cr_assert_eq(command(fd, "Subject: bhm\r\n\r\nhello\r\n.\r\n", text, sizeof(text)), 250);
	close(fd);
	cr_expect(testlib_wait_log(&d, "to=<u", "result=delivered", 2, 30000),
		  "bhm's users never got their mail");
	cr_expect_eq(testlib_log_lines(&d, "result=bounced", NULL), 0,
		     "a 501 to our own syntax bounced a recipient");
	cr_expect_eq(testlib_log_lines(&d, "refused our ESMTP parameters", NULL), 1);
	testlib_daemon_stop(&d, SIGTERM);
	kill(bhm, SIGKILL);
	waitpid(bhm, NULL, 0);
	testlib_daemon_cleanup(&d);
	testlib_rmrf(dir);
	free(dir), free(users), free(conf);
}

/*
 * A receiver that offers STARTTLS and then cannot do it: the handshake
 * fails once, the next connection goes in plain text and delivers.
 */
Test(pressure, failed_opportunistic_starttls_falls_back_to_plain, .timeout = 120)
{
	struct testlib_daemon d = { 0 };
	static const struct smtp_peer_rule rules[] = {
		{ .cmd = SMTP_PEER_STARTTLS, .reply = "220 2.0.0 Ready to start TLS" },
	};
	struct smtp_peer *peer = testlib_peer_start("127.0.0.1", 0, SMTP_PEER_CAP_PIPELINING |
						    SMTP_PEER_CAP_STARTTLS, rules, 1);
	char text[4096];
	unsigned seq = 1;

	d.sink_port = smtp_peer_port(peer);
	char *conf = xasprintf(quirk_conf, "yes");
	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(send_msg(d.port, seq++, 2000, false, text, sizeof(text)), 250, "%s",
			     text);
	cr_expect_eq(smtp_peer_wait_messages(peer, 3, 60000), 0, "never delivered in plain text");
	cr_expect(testlib_wait_log(&d, "result=delivered", NULL, 3, 20000));
	cr_expect_eq(smtp_peer_count_replies(peer, SMTP_PEER_STARTTLS, "220"), 1,
		     "STARTTLS tried again on the same host");
	cr_expect_eq(testlib_log_lines(&d, "failed the STARTTLS handshake", NULL), 1);
	cr_expect_eq(testlib_log_lines(&d, "result=bounced", NULL), 0);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	free(conf);
}
