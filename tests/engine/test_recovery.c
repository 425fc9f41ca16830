/*
 * tests/engine/test_recovery.c - spool recovery while the intake answers
 * (issue 16): after kill -9 with thousands of queued messages, the
 * restarted daemon answers EHLO before its recovery is done; a second
 * kill -9 in the middle of that recovery loses nothing; in the end every
 * message, the old ones and one sent right after the last restart,
 * reaches the receiver exactly once.  The real daemon, a real SMTP
 * client (plain sockets), and the scripted receiver
 * (tests/lib/smtp_peer.h), which is down (connections refused) until the
 * last restart.
 *
 * COREMTA_RECOVERY_MESSAGES sets how many messages are queued (default
 * 20000): enough that recovery (0.15-0.4 s here) outlasts, many times
 * over, a client that dials from the restart on and kills the daemon once
 * EHLO is answered.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* retry-after 3s: what the down route deferred goes out soon after it is up */
static const char *recovery_conf =
	"smtp-listener 127.0.0.1:@PORT@\n"
	"disk-queue @DIR@/spool\n"
	"host-name mx.test.invalid\n"
	"shards 2\n"
	"allow-shard-oversubscription yes\n"
	"<domain *>\n"
	"    smtp-hosts [127.0.0.1]:@SINK@\n"
	"    max-smtp-out 8\n"
	"    retry-after 3s\n"
	"</domain>\n"
	"<source 127.0.0.1>\n"
	"    always-allow-relaying yes\n"
	"</source>\n";

enum { SENDERS = 4 };

static unsigned messages(void)
{
	const char *e = getenv("COREMTA_RECOVERY_MESSAGES");

	return e && atoi(e) > 0 ? (unsigned)atoi(e) : 20000;
}

/* reply - the code of the next complete reply on fd, 0 on EOF/timeout */
static int reply(int fd)
{
	char text[2048];
	size_t len = 0;

	for (;;) {
		text[len] = '\0';
		for (char *line = text, *nl; (nl = strstr(line, "\r\n")); line = nl + 2)
			if (nl - line >= 4 && line[3] == ' ')
				return atoi(line);
		if (len + 1 >= sizeof(text))
			return 0;
		ssize_t n = recv(fd, text + len, sizeof(text) - len - 1, 0);
		if (n <= 0)
			return 0;
		len += (size_t)n;
	}
}

static int cmd(int fd, const char *line)
{
	size_t n = strlen(line);

	if (send(fd, line, n, MSG_NOSIGNAL) != (ssize_t)n)
		return 0;
	return reply(fd);
}

/* session - a connection greeted and past EHLO, or -1 */
static int session(int port)
{
	int fd = testlib_dial(port);

	if (fd < 0)
		return -1;
	if (reply(fd) != 220 || cmd(fd, "EHLO client.test\r\n") != 250) {
		close(fd);
		return -1;
	}
	return fd;
}

/* one_message - message <seq> on an open session: the code after DATA */
static int one_message(int fd, unsigned seq)
{
	char buf[512];

	if (cmd(fd, "MAIL FROM:<s@example.org>\r\n") != 250)
		return 0;
	snprintf(buf, sizeof(buf), "RCPT TO:<r%u@d%u.test>\r\n", seq, seq % 16);
	if (cmd(fd, buf) != 250 || cmd(fd, "DATA\r\n") != 354)
		return 0;
	snprintf(buf, sizeof(buf),
		 "From: s@example.org\r\nSubject: recovery %u\r\n\r\n"
		 "message %u, queued before a kill -9 or sent during recovery\r\n.\r\n",
		 seq, seq);
	return cmd(fd, buf);
}

struct batch {
	int port;
	unsigned first, count, acked;
};

static void *send_batch(void *arg)
{
	struct batch *b = arg;
	int fd = session(b->port);

	for (unsigned i = 0; fd >= 0 && i < b->count; i++) {
		if (one_message(fd, b->first + i) != 250)
			break;
		b->acked++;
	}
	if (fd >= 0) {
		cmd(fd, "QUIT\r\n");
		close(fd);
	}
	return NULL;
}

/* queue - messages 0..n-1 through SENDERS connections; all must get 250 */
static void queue(int port, unsigned n)
{
	struct batch b[SENDERS];
	pthread_t t[SENDERS];

	for (unsigned i = 0; i < SENDERS; i++) {
		b[i] = (struct batch){ .port = port, .first = i * (n / SENDERS),
				       .count = n / SENDERS };
		if (i == SENDERS - 1)
			b[i].count = n - b[i].first;
		pthread_create(&t[i], NULL, send_batch, &b[i]);
	}
	for (unsigned i = 0; i < SENDERS; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(b[i].acked, b[i].count, "sender %u: %u of %u messages got 250", i,
			     b[i].acked, b[i].count);
	}
}

/* recovery_text - the daemon's recovery lines, for a failure's message */
static char *recovery_text(const struct testlib_daemon *d)
{
	char *log = testlib_read_file(d->log), *out = calloc(1, strlen(log) + 1);
	size_t len = 0;

	for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
		if (strstr(line, "event=recovery") || strstr(line, "event=started"))
			len += (size_t)snprintf(out + len, strlen(line) + 2, "%s\n", line);
	free(log);
	return out;
}

static size_t recovered_lines(const struct testlib_daemon *d)
{
	return testlib_log_lines(d, "event=recovery", "state=done");
}

/* new_mail - right after a (re)start: EHLO, and message <seq> gets 250 */
static void new_mail(const struct testlib_daemon *d, unsigned seq)
{
	int fd = session(d->port);
	cr_assert_geq(fd, 0, "EHLO not answered");
	cr_assert_eq(one_message(fd, seq), 250);
	cmd(fd, "QUIT\r\n");
	close(fd);
}

/*
 * recovery_started - the last start's recovery-started line makes
 * <started> + 1 in the log (appended to across starts).  Read after the
 * kill: reading the log (all the runs' delivery lines) takes a while, and
 * recovery must still be running when the kill comes.
 */
static void recovery_started(const struct testlib_daemon *d, size_t started)
{
	cr_assert_eq(testlib_log_lines(d, "event=recovery", "state=started"), started + 1,
		     "no recovery started: %s", d->log);
}

/* The second start: EHLO as soon as the daemon listens, then kill -9. */
struct early {
	struct testlib_daemon *d;
	int port;
	bool answered;
};

static void *ehlo_then_kill(void *arg)
{
	struct early *e = arg;

	for (int waited = 0; waited < 30000 && !e->answered; waited++) {
		int fd = session(e->port);
		if (fd >= 0) {
			pid_t pid = __atomic_load_n(&e->d->pid, __ATOMIC_ACQUIRE);
			e->answered = true;
			if (pid > 0)
				kill(pid, SIGKILL);
			close(fd);
			break;
		}
		usleep(1000);
	}
	return NULL;
}

Test(recovery, smtp_answered_during_recovery_and_a_second_kill_9_loses_nothing,
     .timeout = 600)
{
	struct testlib_daemon d = { 0 };
	const unsigned n = messages();
	int down_fd;

	/* the receiver is down: every message waits in the spool */
	d.sink_port = testlib_reserve_port(NULL, &down_fd);
	testlib_daemon_start_or_fail(&d, recovery_conf);
	queue(d.port, n);
	testlib_daemon_stop(&d, SIGKILL);

	/*
	 * restart: answers at once; killed again while it recovers.  The
	 * daemon's log cannot say when it is up: on two busy cores its log
	 * writer waited out the whole recovery.  So the listener gets a
	 * port known in advance, a thread dials it from the fork on, and it
	 * kills the daemon the moment EHLO is answered.
	 */
	size_t started = testlib_log_lines(&d, "event=recovery", "state=started");
	size_t done = recovered_lines(&d);
	int hold_fd;
	struct early e = { .d = &d, .port = testlib_reserve_port(NULL, &hold_fd) };
	char portbuf[16];
	snprintf(portbuf, sizeof(portbuf), "%d", e.port);
	char *conf = testlib_replace_all(recovery_conf, "@PORT@", portbuf);
	pthread_t et;
	close(hold_fd);
	pthread_create(&et, NULL, ehlo_then_kill, &e);
	(void)testlib_daemon_start(&d, conf);	/* may be killed before its log says so */
	pthread_join(et, NULL);
	testlib_daemon_stop(&d, SIGKILL);
	free(conf);
	cr_assert(e.answered, "EHLO not answered within 30 s of the restart");
	/*
	 * Its recovery-started line may die with it unwritten; recovery
	 * begins before the listener opens (engine/daemon.c), and no
	 * recovered line means the kill came before it was done.
	 */
	cr_assert_eq(recovered_lines(&d), done,
		     "recovery ended before the kill: queue more messages "
		     "(COREMTA_RECOVERY_MESSAGES):\n%s", recovery_text(&d));

	/* the receiver comes up; the last restart recovers everything */
	char err[256];
	struct smtp_peer_opts o = {
		.reserved_fd = down_fd,
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
			SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
		.no_log = true,
	};
	struct smtp_peer *peer = smtp_peer_start(&o, err, sizeof(err));
	cr_assert_not_null(peer, "receiver: %s", err);
	started = testlib_log_lines(&d, "event=recovery", "state=started");
	done = recovered_lines(&d);
	testlib_daemon_start_or_fail(&d, recovery_conf);
	new_mail(&d, n);
	recovery_started(&d, started);
	cr_assert(testlib_wait_log(&d, "event=recovery", "state=done", done + 1, 120000),
		  "recovery did not finish");
	/*
	 * That the intake answers during recovery was shown by the second
	 * start: EHLO was answered and the kill came before recovery was
	 * done (spool/recovery_in_steps_takes_new_mail_under_fresh_ids shows
	 * new mail taken meanwhile).  Here the receiver is up and recovery
	 * may end before the client gets in on a loaded machine, so only the
	 * counts are checked.
	 */
	char want[64];
	snprintf(want, sizeof(want), "messages=%u ", n);
	cr_expect_eq(testlib_log_lines(&d, "state=done", want), 1,
		     "the last restart must recover the %u queued messages", n);

	/* every message exactly once: n old, one sent during the last recovery */
	if (smtp_peer_wait_messages(peer, n + 1, 120000) != 0) {
		struct smtp_peer_stats ps;
		smtp_peer_stats(peer, &ps);
		cr_assert_fail("%zu of %u messages delivered; delivered lines %zu, deferred %zu\n%s",
			       ps.messages, n + 1, testlib_log_lines(&d, "result=delivered", NULL),
			       testlib_log_lines(&d, "result=deferred", NULL), recovery_text(&d));
	}
	cr_expect(testlib_peer_stays(peer, n + 1, 3000), "a message was delivered twice");
	unsigned char *seen = calloc(n + 1, 1);
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	for (size_t i = 0; i < st.messages; i++) {
		const struct smtp_peer_msg *m = smtp_peer_message(peer, i);
		const char *subj = m ? strstr(m->body, "Subject: recovery ") : NULL;
		cr_assert_not_null(subj, "message %zu without its subject", i);
		unsigned seq = (unsigned)strtoul(subj + strlen("Subject: recovery "), NULL, 10);
		cr_assert_lt(seq, n + 1);
		cr_expect_eq(seen[seq], 0, "message %u delivered twice", seq);
		seen[seq] = 1;
	}
	for (unsigned i = 0; i < n + 1; i++)
		cr_expect_eq(seen[i], 1, "message %u lost", i);
	free(seen);
	testlib_daemon_stop(&d, SIGTERM);
	smtp_peer_stop(peer);
	smtp_peer_free(peer);
	testlib_daemon_cleanup(&d);
}
