/*
 * tests/engine/test_intake.c - the SMTP intake as clients see it, with
 * real parts: the daemon (sanitizer build) on a loopback port, swaks for
 * protocol cases (STARTTLS, AUTH), Postfix's smtp-source for load, raw
 * sockets for bad input, and kill -9 in the middle of a load.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <crypt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* Every domain is delivered to the test's receiver on @SINK@. */
#define BASE_CONF                                   \
	"smtp-listener 127.0.0.1:@PORT@\n"          \
	"disk-queue @DIR@/spool\n"                  \
	"host-name mx.test.invalid\n"               \
	"shards 2\n"                                \
	"allow-shard-oversubscription yes\n"        \
	"<rejectlog-file @DIR@/reject.log>\n"       \
	"    records c,r\n"                         \
	"</rejectlog-file>\n"                       \
	"<domain *>\n"                              \
	"    smtp-hosts [127.0.0.1]:@SINK@\n"       \
	"    max-smtp-out 10\n"                     \
	"    retry-after 1s\n"                      \
	"</domain>\n"

static const char *relay_conf =
	BASE_CONF
	"<source 127.0.0.1>\n"
	"    always-allow-relaying yes\n"
	"</source>\n";

static struct smtp_peer *start_peer(struct testlib_daemon *d)
{
	char err[256];
	struct smtp_peer_opts o = {
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_8BITMIME |
			SMTP_PEER_CAP_ENHANCEDSTATUSCODES | SMTP_PEER_CAP_CHUNKING,
		.no_log = true,
	};
	struct smtp_peer *p = smtp_peer_start(&o, err, sizeof(err));

	cr_assert_not_null(p, "receiver: %s", err);
	d->sink_port = smtp_peer_port(p);
	return p;
}

static size_t peer_rcpts_matching(struct smtp_peer *p, const char *needle);

/* nothing_smuggled - the peer (arg) got no recipient at smuggle.test. */
static bool nothing_smuggled(void *arg)
{
	return peer_rcpts_matching(arg, "smuggle.test") == 0;
}

static size_t peer_rcpts_matching(struct smtp_peer *p, const char *needle)
{
	struct smtp_peer_stats st;
	size_t n = 0;

	smtp_peer_stats(p, &st);
	for (size_t i = 0; i < st.messages; i++) {
		const struct smtp_peer_msg *m = smtp_peer_message(p, i);
		for (size_t k = 0; k < m->nrcpt; k++)
			if (strstr(m->rcpts[k], needle))
				n++;
	}
	return n;
}


static int swaks(const struct testlib_daemon *d, const char *const *extra,
		 char **out)
{
	char server[64];
	const char *argv[32] = { "/usr/bin/swaks", "--server", server,
				 "--timeout", "20", "--hide-informational" };
	size_t n = 6;
	char *err;

	snprintf(server, sizeof(server), "127.0.0.1:%d", d->port);
	for (; *extra && n < 31; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	int rc = testlib_run(argv, 60, out, &err);
	free(err);
	return rc;
}

Test(intake, swaks_relay_and_handoff_to_shards, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);
	char *out;

	testlib_daemon_start_or_fail(&d, relay_conf);
	int rc = swaks(&d, (const char *[]){ "--from", "alice@example.org", "--to",
		"bob@gmail.com,carol@yahoo.com,dave@d3.test", "--body", "hello", NULL }, &out);
	cr_expect_eq(rc, 0, "%s", out);
	cr_expect(strstr(out, "250 2.0.0 Ok: queued as "), "%s", out);
	free(out);
	/* one transaction per queue (domain): three deliveries */
	cr_expect_eq(smtp_peer_wait_messages(peer, 3, 20000), 0);
	cr_expect_eq(peer_rcpts_matching(peer, "bob@gmail.com"), 1);
	cr_expect_eq(peer_rcpts_matching(peer, "carol@yahoo.com"), 1);
	cr_expect_eq(peer_rcpts_matching(peer, "dave@d3.test"), 1);
	const struct smtp_peer_msg *m = smtp_peer_message(peer, 0);
	cr_expect_str_eq(m->mail_from, "alice@example.org");
	cr_expect(strstr(m->body, "Received: ") && strstr(m->body, "hello"), "%s", m->body);
	/* the receiver records before it replies: wait for the replies too */
	testlib_wait_log(&d, "result=delivered", "from=<alice@example.org>", 3, 10000);
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	char *log = testlib_read_file(d.log);
	cr_expect_eq(testlib_count_delivered(&d, "from=<alice@example.org>"), 3, "%s", log);
	free(log);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

Test(intake, relaying_denied_and_reject_log, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);
	char *out;

	testlib_daemon_start_or_fail(&d, BASE_CONF "relay-domain local.test\n");
	int rc = swaks(&d, (const char *[]){ "--from", "a@example.org", "--to",
		"victim@gmail.com", NULL }, &out);
	cr_expect_neq(rc, 0);
	cr_expect(strstr(out, "550 5.7.1"), "%s", out);
	free(out);
	/* relay-domain: accepted from anyone */
	rc = swaks(&d, (const char *[]){ "--from", "a@example.org", "--to",
		"postmaster@local.test", NULL }, &out);
	cr_expect_eq(rc, 0, "%s", out);
	free(out);
	testlib_daemon_stop(&d, SIGTERM);
	char *path = xasprintf("%s/reject.log", d.dir);
	char *log = testlib_read_file(path);
	cr_expect(strstr(log, "type,time,clientIp"), "%s", log);
	cr_expect(strstr(log, "r,") && strstr(log, "victim@gmail.com") &&
		  strstr(log, "550 5.7.1"), "%s", log);
	free(log);
	free(path);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

/*
 * auth_conf - BASE_CONF with a server certificate (written into dir) and
 * the user alice, password s3cret as a SHA-512 crypt(3) hash; then extra.
 */
static char *auth_conf(const char *dir, const char *extra)
{
	char *cert = testlib_read_file("data/tls-localhost.pem");
	char *key = testlib_read_file("data/tls-localhost.key");
	cr_assert(cert[0] && key[0], "tests/data fixtures missing");
	char *both = xasprintf("%s%s", cert, key);
	char *pem = testlib_write(dir, "server.pem", both);
	struct crypt_data cd = { 0 };
	const char *hash = crypt_r("s3cret", "$6$testsalt$", &cd);
	char *conf = xasprintf(BASE_CONF
		"smtp-server-tls-certificate %s\n"
		"<smtp-user alice>\n    password %s\n</smtp-user>\n%s", pem, hash, extra);

	free(cert), free(key), free(both), free(pem);
	return conf;
}

Test(intake, starttls_and_auth, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);
	char *out;
	char *dir = testlib_tmpdir();
	char *conf = auth_conf(dir, "<source {auth}>\n    always-allow-relaying yes\n</source>\n");

	testlib_daemon_start_or_fail(&d, conf);
	/* AUTH is offered only after STARTTLS */
	int rc = swaks(&d, (const char *[]){ "--from", "alice@example.org", "--to",
		"x@gmail.com", "-tls", "-a", "PLAIN", "-au", "alice", "-ap", "s3cret", NULL }, &out);
	cr_expect_eq(rc, 0, "%s", out);
	cr_expect(strstr(out, "235 2.7.0"), "%s", out);
	cr_expect(strstr(out, "250 2.0.0 Ok: queued as"), "%s", out);
	free(out);
	rc = swaks(&d, (const char *[]){ "--from", "alice@example.org", "--to",
		"x@gmail.com", "-tls", "-a", "LOGIN", "-au", "alice", "-ap", "wrong", NULL }, &out);
	cr_expect_neq(rc, 0);
	cr_expect(strstr(out, "535 5.7.8"), "%s", out);
	free(out);
	/* without TLS, no AUTH: relaying stays closed */
	rc = swaks(&d, (const char *[]){ "--from", "alice@example.org", "--to",
		"x@gmail.com", "-a", "PLAIN", "-au", "alice", "-ap", "s3cret", NULL }, &out);
	cr_expect_neq(rc, 0, "%s", out);
	free(out);
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	testlib_daemon_stop(&d, SIGTERM);
	cr_expect_eq(peer_rcpts_matching(peer, "x@gmail.com"), 1);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	testlib_rmrf(dir);
	free(dir), free(conf);
}

/*
 * smtp-max-auth-failure-rate 2/h: two wrong passwords from one address
 * (on separate connections) get 535; the third AUTH gets 421, and so does
 * the right password until the hour refills the bucket.
 */
Test(intake, auth_failure_rate_per_client_across_connections, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	char *out;
	char *dir = testlib_tmpdir();
	char *conf = auth_conf(dir, "<source 0/0>\n    smtp-max-auth-failure-rate 2/h\n</source>\n");
	const char *wrong[] = { "--from", "alice@example.org", "--to", "x@gmail.com", "-tls",
				"-a", "PLAIN", "-au", "alice", "-ap", "wrong", NULL };
	const char *right[] = { "--from", "alice@example.org", "--to", "x@gmail.com", "-tls",
				"-a", "PLAIN", "-au", "alice", "-ap", "s3cret", NULL };

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 2; i++) {
		cr_expect_neq(swaks(&d, wrong, &out), 0);
		cr_expect(strstr(out, "535 5.7.8"), "attempt %d: %s", i + 1, out);
		free(out);
	}
	cr_expect_neq(swaks(&d, wrong, &out), 0);
	cr_expect(strstr(out, "421 4.7.0") && strstr(out, "too many authentication failures"),
		  "third attempt: %s", out);
	cr_expect_not(strstr(out, "535 "), "the third attempt was checked: %s", out);
	free(out);
	cr_expect_neq(swaks(&d, right, &out), 0);
	cr_expect(strstr(out, "421 4.7.0"), "the right password while blocked: %s", out);
	free(out);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	testlib_rmrf(dir);
	free(dir), free(conf);
}

Test(intake, smtp_source_load_every_message_handed_off, .timeout = 120)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);
	char target[64], *out, *err;

	testlib_daemon_start_or_fail(&d, relay_conf);
	snprintf(target, sizeof(target), "127.0.0.1:%d", d.port);
	const char *argv[] = { "/usr/sbin/smtp-source", "-c", "-l", "2000", "-m", "3000",
			       "-s", "20", "-f", "load@example.org", "-t", "r@load.test",
			       target, NULL };
	cr_expect_eq(testlib_run(argv, 100, &out, &err), 0, "%s", err);
	free(out), free(err);
	cr_expect_eq(smtp_peer_wait_messages(peer, 3000, 60000), 0);
	cr_expect(testlib_peer_stays(peer, 3000, 500), "a message was delivered twice");
	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	cr_expect_leq(st.max_concurrent, 10, "max-smtp-out 10 exceeded: %zu", st.max_concurrent);
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	char *log = testlib_read_file(d.log);
	cr_expect(!strstr(log, "ERROR: AddressSanitizer") && !strstr(log, "runtime error"),
		  "%s", log);
	free(log);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

/* ---- bad input on a raw socket ---- */

/* converse - send, then read until `until` shows up or the peer closes. */
static char *converse(int fd, const char *send_text, size_t send_len, const char *until)
{
	struct strbuf sb = { 0 };
	char buf[4096];

	if (send_len && send(fd, send_text, send_len, MSG_NOSIGNAL) < 0)
		return sb_detach(&sb);
	while (!strstr(sb_str(&sb), until)) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0)
			break;
		sb_add(&sb, buf, (size_t)n);
	}
	return sb_detach(&sb);
}

Test(intake, bad_input_gets_precise_replies, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);

	testlib_daemon_start_or_fail(&d, relay_conf);
	int fd = testlib_dial(d.port);
	cr_assert_geq(fd, 0);
	free(converse(fd, NULL, 0, "220 "));
	char *r = converse(fd, "EHLO t\r\n", 8, "250 ");
	cr_expect(strstr(r, "250-PIPELINING") && strstr(r, "CHUNKING"), "%s", r);
	free(r);

	char long_line[700];
	memset(long_line, 'A', sizeof(long_line));
	memcpy(long_line, "NOOP ", 5);
	memcpy(long_line + sizeof(long_line) - 2, "\r\n", 2);
	r = converse(fd, long_line, sizeof(long_line), "\r\n");
	cr_expect(strstr(r, "500 5.5.6"), "line too long: %s", r);
	free(r);

	r = converse(fd, "NO\0OP\r\n", 7, "\r\n");
	cr_expect(strncmp(r, "500 ", 4) == 0, "NUL: %s", r);
	free(r);

	r = converse(fd, "RCPT TO:<a@b.test>\r\n", 20, "\r\n");
	cr_expect(strstr(r, "503 5.5.1"), "out of order: %s", r);
	free(r);

	/* bare LF inside DATA must not end the message or pass through */
	static const char smuggle[] =
		"MAIL FROM:<s@example.org>\r\nRCPT TO:<t@smuggle.test>\r\nDATA\r\n";
	r = converse(fd, smuggle, sizeof(smuggle) - 1, "354 ");
	cr_expect(strstr(r, "354 "), "%s", r);
	free(r);
	static const char body[] = "Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\n.\r\n";
	r = converse(fd, body, sizeof(body) - 1, "\r\n");
	cr_expect(strncmp(r, "5", 1) == 0, "bare LF accepted: %s", r);
	free(r);

	r = converse(fd, "QUIT\r\n", 6, "221 ");
	cr_expect(strstr(r, "221 2.0.0"), "%s", r);
	free(r);
	close(fd);

	/* too many errors: 421 and the connection ends */
	fd = testlib_dial(d.port);
	free(converse(fd, NULL, 0, "220 "));
	struct strbuf junk = { 0 };
	for (int i = 0; i < 12; i++)
		sb_adds(&junk, "BOGUS\r\n");
	r = converse(fd, junk.buf, junk.len, "421 ");
	cr_expect(strstr(r, "421 4.7.0"), "%s", r);
	free(r);
	sb_free(&junk);
	close(fd);

	/* the daemon is still fine and the smuggled mail went nowhere */
	cr_expect(testlib_stays(nothing_smuggled, peer, 500), "smuggled mail was relayed");
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

/*
 * A client that pipelines far more commands than one slice takes
 * (SMTP_SESSION_CMD_BUDGET) is answered slice by slice over later loop
 * turns (the intake's list of connections that yielded): every reply
 * comes, in order, and another client is answered meanwhile.
 */
Test(intake, a_long_pipelined_burst_is_answered_slice_by_slice, .timeout = 90)
{
	enum { RCPTS = 1000 };
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);

	testlib_daemon_start_or_fail(&d, relay_conf);
	int fd = testlib_dial(d.port), other = testlib_dial(d.port);
	cr_assert(fd >= 0 && other >= 0);
	free(converse(fd, NULL, 0, "220 "));
	free(converse(other, NULL, 0, "220 "));
	free(converse(fd, "EHLO t\r\n", 8, "250 "));
	/* commands that are no junk (NOOPs would meet the junk limit) */
	struct strbuf burst = { 0 };
	sb_adds(&burst, "MAIL FROM:<s@example.org>\r\n");
	for (int i = 0; i < RCPTS; i++)
		sb_printf(&burst, "RCPT TO:<r%d@burst.test>\r\n", i);
	sb_adds(&burst, "RSET\r\nQUIT\r\n");
	cr_assert_eq(send(fd, burst.buf, burst.len, MSG_NOSIGNAL), (ssize_t)burst.len);
	char *r = converse(other, "EHLO u\r\n", 8, "250 ");
	cr_expect(strstr(r, "250-PIPELINING"), "the other client: %s", r);
	free(r);
	r = converse(fd, NULL, 0, "221 ");
	size_t ok = 0, lines = 0;
	for (const char *p = r; *p; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : p + strlen(p)) {
		lines++;
		if (strncmp(p, "250 ", 4) == 0)
			ok++;
	}
	cr_expect_eq(ok, RCPTS + 2, "%zu of %d commands answered 250", ok, RCPTS + 2);
	cr_expect_eq(lines, RCPTS + 3, "%zu reply lines", lines);
	cr_expect(strstr(r, "221 2.0.0"), "no 221 after the burst");
	free(r);
	sb_free(&burst);
	close(fd);
	close(other);
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}

/* ---- kill -9 under load: every 250 survives, nothing partial ---- */

#define CRASH_THREADS 8

struct crash_client {
	int port;
	int thread;
	pthread_mutex_t *lock;
	char (*acked)[64];
	size_t *nacked;
	size_t cap;
};

static void *crash_sender(void *arg)
{
	struct crash_client *cc = arg;
	int fd = testlib_dial(cc->port);
	char buf[8192];

	if (fd < 0)
		return NULL;
	free(converse(fd, NULL, 0, "220 "));
	free(converse(fd, "EHLO crash\r\n", 12, "250 "));
	for (int i = 0;; i++) {
		char from[64];
		snprintf(from, sizeof(from), "t%d-m%d@crash.test", cc->thread, i);
		int n = snprintf(buf, sizeof(buf),
				 "MAIL FROM:<%s>\r\nRCPT TO:<r%d@d%d.test>\r\nDATA\r\n",
				 from, i, i % 7);
		char *r = converse(fd, buf, (size_t)n, "354 ");
		bool ok = strstr(r, "354 ") != NULL;
		free(r);
		if (!ok)
			break;
		struct strbuf body = { 0 };
		sb_printf(&body, "Subject: %s\r\n\r\n", from);
		for (int k = 0; k < 40; k++)
			sb_adds(&body, "0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
		sb_adds(&body, ".\r\n");
		r = converse(fd, body.buf, body.len, "\r\n");
		sb_free(&body);
		ok = strncmp(r, "250 ", 4) == 0;
		free(r);
		if (!ok)
			break;
		pthread_mutex_lock(cc->lock);
		if (*cc->nacked < cc->cap)
			snprintf(cc->acked[(*cc->nacked)++], 64, "%s", from);
		pthread_mutex_unlock(cc->lock);
	}
	close(fd);
	return NULL;
}

Test(intake, kill9_under_load_loses_no_acknowledged_message, .timeout = 900)
{
	/* make soak sets COREMTA_SOAK_ROUNDS (20); make test runs 3 */
	const char *env = getenv("COREMTA_SOAK_ROUNDS");
	int rounds = env && atoi(env) > 0 ? atoi(env) : 3;
	for (int round = 0; round < rounds; round++) {
		struct testlib_daemon d = { 0 };
		pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
		size_t cap = 200000, nacked = 0;
		char (*acked)[64] = xcalloc(cap, 64);
		struct crash_client cc[CRASH_THREADS];
		pthread_t th[CRASH_THREADS];
		struct smtp_peer *peer = start_peer(&d);

		testlib_daemon_start_or_fail(&d, relay_conf);
		/*
		 * The port is bound before the spool is recovered: on a loaded
		 * host serving starts a second or more later.  Start the clock
		 * of the kill once a greeting shows the intake is running.
		 */
		int probe = testlib_dial(d.port);
		cr_assert_geq(probe, 0);
		free(converse(probe, NULL, 0, "220 "));
		close(probe);
		for (int i = 0; i < CRASH_THREADS; i++) {
			cc[i] = (struct crash_client){ d.port, i, &lock, acked, &nacked, cap };
			pthread_create(&th[i], NULL, crash_sender, &cc[i]);
		}
		/* kill mid-stream, but only once something was acknowledged:
		 * on a loaded machine the first 250 can take seconds */
		for (int waited = 0; waited < 30000; waited += 10) {
			pthread_mutex_lock(&lock);
			size_t n = nacked;
			pthread_mutex_unlock(&lock);
			if (n > 0)
				break;
			usleep(10 * 1000);
		}
		usleep((useconds_t)(300 + rand() % 700) * 1000);
		testlib_daemon_stop(&d, SIGKILL);
		for (int i = 0; i < CRASH_THREADS; i++)
			pthread_join(th[i], NULL);
		cr_assert_gt(nacked, 0, "no message was acknowledged before the kill");

		/* recovery hands every acknowledged message to the shards again */
		testlib_daemon_start_or_fail(&d, relay_conf);
		char *log = NULL;
		size_t missing = nacked;
		for (int wait = 0; wait < 300 && missing; wait++) {
			usleep(100 * 1000);
			missing = 0;
			struct smtp_peer_stats st;
			smtp_peer_stats(peer, &st);
			for (size_t i = 0; i < nacked; i++) {
				bool found = false;
				for (size_t k = 0; k < st.messages && !found; k++)
					found = strcmp(smtp_peer_message(peer, k)->mail_from,
						       acked[i]) == 0;
				missing += !found;
			}
		}
		log = testlib_read_file(d.log);
		cr_expect(strstr(log, "recovered:"), "%s", log);
		free(log);
		cr_expect_eq(missing, 0, "round %d: %zu of %zu acknowledged messages never delivered",
			     round, missing, nacked);
		/* whole, not partial: every delivered body ends with its last line */
		struct smtp_peer_stats st;
		smtp_peer_stats(peer, &st);
		for (size_t k = 0; k < st.messages; k++) {
			const struct smtp_peer_msg *m = smtp_peer_message(peer, k);
			cr_expect_gt(m->size, 40 * 72, "a partial message was delivered");
			cr_expect(m->body_len >= 72 && memcmp(m->body + m->body_len - 72,
			    "0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
			    72) == 0, "a message lost its end");
		}
		testlib_daemon_stop(&d, SIGTERM);
		testlib_daemon_cleanup(&d);
		smtp_peer_free(peer);
		free(acked);
	}
}

/* tls=immediate: TLS from the first byte (SMTPS-style submission). */
Test(intake, implicit_tls_listener, .timeout = 90)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);
	char *dir = testlib_tmpdir();
	char *cert = testlib_read_file("data/tls-localhost.pem");
	char *key = testlib_read_file("data/tls-localhost.key");
	char *both = xasprintf("%s%s", cert, key);
	char *pem = testlib_write(dir, "server.pem", both);
	char *conf = xasprintf(
		"smtp-listener 127.0.0.1:@PORT@ tls=immediate\n"
		"disk-queue @DIR@/spool\n"
		"smtp-server-tls-certificate %s\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n"
		"<domain *>\n    smtp-hosts [127.0.0.1]:@SINK@\n</domain>\n", pem);
	char *out;

	testlib_daemon_start_or_fail(&d, conf);
	int rc = swaks(&d, (const char *[]){ "--from", "a@example.org", "--to", "b@tls.test",
		"--tls-on-connect", NULL }, &out);
	cr_expect_eq(rc, 0, "%s", out);
	cr_expect(strstr(out, "<~  220 "), "not TLS from the first byte: %s", out);
	cr_expect(strstr(out, "250 2.0.0 Ok: queued as"), "%s", out);
	free(out);
	cr_expect_eq(smtp_peer_wait_messages(peer, 1, 20000), 0);
	/* plaintext on a TLS listener gets no SMTP greeting */
	int fd = testlib_dial(d.port);
	char *r = converse(fd, "EHLO x\r\n", 8, "\n");
	cr_expect(strncmp(r, "220", 3) != 0, "plaintext got an SMTP reply: %s", r);
	free(r);
	close(fd);
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
	testlib_rmrf(dir);
	free(dir), free(cert), free(key), free(both), free(pem), free(conf);
}

/* run-as-root no without a process-user: refuse to start as root. */
Test(intake, refuses_root_without_process_user, .timeout = 60)
{
	struct testlib_daemon d = { 0 };

	if (geteuid() != 0)
		cr_skip_test("needs root to check the refusal");
	int rc = testlib_daemon_start(&d, "smtp-listener 127.0.0.1:@PORT@\n"
					  "disk-queue @DIR@/spool\nrun-as-root no\n");
	cr_expect_lt(rc, 0, "coremta started as root with run-as-root no");
	char *log = testlib_read_file(d.log);
	cr_expect(strstr(log, "run-as-root is no and no process-user is set: refusing to run as root"),
		  "%s", log);
	free(log);
	testlib_daemon_cleanup(&d);
}

/* intake-threads 2: two loops, two spools, one set of shards. */
Test(intake, two_intake_threads_share_the_work, .timeout = 120)
{
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = start_peer(&d);
	char target[64], *out, *err;
	const char *conf = BASE_CONF "intake-threads 2\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n";

	testlib_daemon_start_or_fail(&d, conf);
	snprintf(target, sizeof(target), "127.0.0.1:%d", d.port);
	const char *argv[] = { "/usr/sbin/smtp-source", "-c", "-l", "1000", "-m", "2000",
			       "-s", "20", "-f", "two@example.org", "-t", "r@two.test",
			       target, NULL };
	cr_expect_eq(testlib_run(argv, 100, &out, &err), 0, "%s", err);
	free(out), free(err);
	cr_expect_eq(smtp_peer_wait_messages(peer, 2000, 60000), 0);
	char *log = testlib_read_file(d.log);
	cr_expect(strstr(log, "2 intake threads"), "%s", log);
	free(log);
	/* both spools exist: the second intake thread has its own */
	char *second = xasprintf("%s/spool/intake-1/seg", d.dir);
	cr_expect_eq(access(second, F_OK), 0, "no spool for intake 1");
	free(second);
	cr_expect_eq(WEXITSTATUS(testlib_daemon_stop(&d, SIGTERM)), 0);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}
