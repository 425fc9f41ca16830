/*
 * tests/engine/test_bodies.c - big messages through the real daemon
 * (issue 18 part 2, issue 16): DATA and BDAT stream to the spool, so eight
 * concurrent 300 MB messages keep the daemon's memory (VmHWM) bounded;
 * their bodies stay in the spool while they wait and are sent from it,
 * byte for byte, also after a kill -9.  The receiver is the scripted peer
 * (tests/lib/smtp_peer.h), which hashes every body it gets.
 *
 * COREMTA_BODIES_MB sets the message size (default 300).
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"
#include "util/hash.h"

static const char *bodies_conf =
	"smtp-listener 127.0.0.1:@PORT@\n"
	"disk-queue @DIR@/spool\n"
	"host-name mx.test.invalid\n"
	"shards 1\n"
	"allow-shard-oversubscription yes\n"
	"<domain *>\n"
	"    smtp-hosts [127.0.0.1]:@SINK@\n"
	"    max-smtp-out 8\n"
	"    retry-after 2s\n"
	"</domain>\n"
	"<source 127.0.0.1>\n"
	"    always-allow-relaying yes\n"
	"    max-message-size 1G\n"
	"</source>\n";

static size_t msg_bytes(void)
{
	const char *e = getenv("COREMTA_BODIES_MB");
	size_t mb = e && atoi(e) > 0 ? (size_t)atoi(e) : 300;

	return mb << 20;
}

/* What a sender sent: the message as the receiver must see it, hashed. */
struct sent {
	int port;
	unsigned seq;
	size_t size;
	bool bdat;
	int code;		/* the reply to the end of data */
	uint64_t hash;		/* FNV-1a of the unstuffed message, headers on */
	size_t len;
	char head[64];		/* its first line, to find it behind ours */
	char last[256];		/* the last reply */
};

static int reply(int fd, char *text, size_t cap)
{
	size_t len = 0;

	text[0] = '\0';
	for (;;) {
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

static bool send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

/*
 * line_of - line i of message seq: headers, then body lines, some of them
 * starting with a dot (stuffed on the wire, not in the message).
 */
static size_t line_of(const struct sent *s, size_t i, char *buf, size_t cap)
{
	if (i == 0)
		return (size_t)snprintf(buf, cap, "%s", s->head);
	if (i == 1)
		return (size_t)snprintf(buf, cap, "X-Seq: <%u>\r\n\r\n", s->seq);
	if (i % 997 == 0)
		return (size_t)snprintf(buf, cap, ".line %zu\r\n", i);
	return (size_t)snprintf(buf, cap, "%08zu %u the quick brown fox jumps over the lazy dog 0123456789\r\n",
				i, s->seq);
}

/* sender - one connection, one message of s->size octets, DATA or BDAT. */
static void *sender(void *arg)
{
	struct sent *s = arg;
	char text[4096], line[160];
	int fd = testlib_dial(s->port);

	s->hash = smtp_peer_hash("", 0);
	if (fd < 0)
		return NULL;
	/* 250 waits for the fsync of hundreds of MB: more than dial's 10 s */
	struct timeval tv = { .tv_sec = 300 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (reply(fd, text, sizeof(text)) != 220 ||
	    command(fd, "EHLO client.test\r\n", text, sizeof(text)) != 250 ||
	    command(fd, "MAIL FROM:<s@example.org>\r\n", text, sizeof(text)) != 250 ||
	    command(fd, "RCPT TO:<r@dest.test>\r\n", text, sizeof(text)) != 250)
		goto out;
	if (!s->bdat && command(fd, "DATA\r\n", text, sizeof(text)) != 354)
		goto out;
	enum { BUF = 1 << 20 };
	char *wire = malloc(BUF + 256);
	size_t w = 0;
	bool ok = true;
	for (size_t i = 0; ok && s->len < s->size; i++) {
		size_t n = line_of(s, i, line, sizeof(line));
		s->hash = hash_bytes(s->hash, line, n);
		s->len += n;
		if (!s->bdat && line[0] == '.')
			wire[w++] = '.';
		memcpy(wire + w, line, n);
		w += n;
		bool last = s->len >= s->size;
		if (w >= BUF || last) {
			if (s->bdat) {
				char cmd[64];
				int c = snprintf(cmd, sizeof(cmd), "BDAT %zu%s\r\n", w, last ? " LAST" : "");
				ok = send_all(fd, cmd, (size_t)c) && send_all(fd, wire, w);
				/* one reply per chunk: PIPELINING lets them queue, but
				 * reading each keeps the test simple */
				if (ok && !last)
					ok = reply(fd, text, sizeof(text)) == 250;
			} else {
				ok = send_all(fd, wire, w);
			}
			w = 0;
		}
	}
	free(wire);
	if (ok && !s->bdat)
		ok = send_all(fd, ".\r\n", 3);
	if (ok)
		s->code = reply(fd, text, sizeof(text));
	snprintf(s->last, sizeof(s->last), "%.200s", text);
	command(fd, "QUIT\r\n", text, sizeof(text));
out:
	close(fd);
	return NULL;
}

/* status_kb - a field of /proc/PID/status, in KiB (0 if absent). */
static long status_kb(int pid, const char *field)
{
	char path[64], *text, *p;
	long v = 0;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	text = testlib_read_file(path);
	p = strstr(text, field);
	if (p)
		v = strtol(p + strlen(field) + 1, NULL, 10);
	free(text);
	return v;
}

/*
 * delivered_intact - the peer got sent message s once, the same octets
 * behind the header fields coremta put on top.
 */
static void delivered_intact(struct smtp_peer *peer, const struct sent *s)
{
	size_t found = 0;

	struct smtp_peer_stats st;
	smtp_peer_stats(peer, &st);
	for (size_t i = 0; i < st.messages; i++) {
		const struct smtp_peer_msg *m = smtp_peer_message(peer, i);
		char mark[32];
		snprintf(mark, sizeof(mark), "X-Seq: <%u>", s->seq);
		if (!strstr(m->body, mark))
			continue;
		found++;
		const char *start = strstr(m->body, s->head);
		cr_assert_not_null(start, "message %u: its first line", s->seq);
		size_t added = (size_t)(start - m->body);
		uint64_t want = hash_bytes(smtp_peer_hash("", 0), m->body, added);
		cr_expect_eq(m->size, added + s->len, "message %u: %zu octets, sent %zu + %zu added",
			     s->seq, m->size, s->len, added);
		/* the added fields, then the message again (FNV cannot be spliced) */
		char line[160];
		size_t len = 0;
		for (size_t k = 0; len < s->len; k++) {
			size_t n = line_of(s, k, line, sizeof(line));
			want = hash_bytes(want, line, n);
			len += n;
		}
		cr_expect_eq(m->hash, want, "message %u: body bytes differ", s->seq);
	}
	cr_expect_eq(found, 1, "message %u delivered %zu times", s->seq, found);
}

/*
 * receiver - the receiver on 127.0.0.1: on the port reserved_fd holds
 * (testlib_reserve_port) when > 0, else on port.
 */
static struct smtp_peer *receiver(int port, int reserved_fd)
{
	char err[256];
	struct smtp_peer_opts o = {
		.port = port, .reserved_fd = reserved_fd,
		.caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_CHUNKING |
			SMTP_PEER_CAP_8BITMIME | SMTP_PEER_CAP_ENHANCEDSTATUSCODES,
	};
	struct smtp_peer *p = smtp_peer_start(&o, err, sizeof(err));

	cr_assert_not_null(p, "receiver on port %d: %s", port, err);
	return p;
}

/*
 * Regression (issue 18, part 2): a message was buffered whole during DATA
 * and its body kept in RAM until delivered: 8 concurrent 300 MB messages
 * took the daemon from 51 MB to 4.1 GB.  Now they stream to the spool,
 * wait there, and go out from there.
 */
Test(bodies, eight_concurrent_big_messages_keep_memory_bounded, .timeout = 900)
{
	struct testlib_daemon d = { 0 };
	enum { N = 8 };
	struct sent s[N];
	pthread_t t[N];
	size_t size = msg_bytes();

	int down_fd;
	d.sink_port = testlib_reserve_port(NULL, &down_fd);	/* the route is down for now */
	testlib_daemon_start_or_fail(&d, bodies_conf);
	long base = status_kb(d.pid, "VmRSS:");
	for (unsigned i = 0; i < N; i++) {
		s[i] = (struct sent){ .port = d.port, .seq = i + 1, .size = size, .bdat = i % 2 };
		snprintf(s[i].head, sizeof(s[i].head), "Subject: big %u\r\n", i + 1);
		cr_assert_eq(pthread_create(&t[i], NULL, sender, &s[i]), 0);
	}
	for (unsigned i = 0; i < N; i++)
		pthread_join(t[i], NULL);
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(s[i].code, 250, "message %u (%s) not accepted: %s", i + 1,
			     s[i].bdat ? "BDAT" : "DATA", s[i].last);
	long hwm_in = status_kb(d.pid, "VmHWM:");
	cr_log_info("8 x %zu MB accepted: VmRSS %ld KiB at start, VmHWM %ld KiB", size >> 20,
		    base, hwm_in);

	/* the receiver comes back: each is sent from the spool, intact */
	struct smtp_peer *peer = receiver(d.sink_port, down_fd);
	struct smtp_peer_stats st;
	int wr = smtp_peer_wait_messages(peer, N, 600000);
	smtp_peer_stats(peer, &st);
	cr_expect_eq(wr, 0, "delivered %zu of %d", st.messages, N);
	cr_expect(testlib_wait_log(&d, "result=delivered", NULL, N, 30000));
	long hwm_out = status_kb(d.pid, "VmHWM:");
	cr_log_info("after delivery: VmHWM %ld KiB", hwm_out);
	for (unsigned i = 0; i < N; i++)
		delivered_intact(peer, &s[i]);
	/* 8 x 300 MB held anywhere would be 2.4 GB; a window each is a few MB */
	cr_expect_lt(hwm_in, base + 128 * 1024, "VmHWM %ld KiB after intake (start %ld)",
		     hwm_in, base);
	cr_expect_lt(hwm_out, base + 128 * 1024, "VmHWM %ld KiB after delivery (start %ld)",
		     hwm_out, base);
	testlib_daemon_stop(&d, SIGTERM);
	smtp_peer_stop(peer);
	smtp_peer_free(peer);
	testlib_daemon_cleanup(&d);
}

/*
 * A body left in the spool (over 1 MiB) found again by recovery after a
 * kill -9 is sent from its place, intact, once.
 */
Test(bodies, big_body_recovered_after_kill_9_is_sent_from_the_spool, .timeout = 300)
{
	struct testlib_daemon d = { 0 };
	struct sent s[2];

	int down_fd;
	d.sink_port = testlib_reserve_port(NULL, &down_fd);	/* the route is down for now */
	testlib_daemon_start_or_fail(&d, bodies_conf);
	for (unsigned i = 0; i < 2; i++) {
		s[i] = (struct sent){ .port = d.port, .seq = 100 + i, .size = 5u << 20, .bdat = i };
		snprintf(s[i].head, sizeof(s[i].head), "Subject: kept %u\r\n", i);
		sender(&s[i]);
		cr_assert_eq(s[i].code, 250);
	}
	testlib_daemon_stop(&d, SIGKILL);
	testlib_daemon_start_or_fail(&d, bodies_conf);
	struct smtp_peer *peer = receiver(d.sink_port, down_fd);
	cr_expect_eq(smtp_peer_wait_messages(peer, 2, 60000), 0);
	for (unsigned i = 0; i < 2; i++) {
		s[i].port = d.port;
		delivered_intact(peer, &s[i]);
	}
	testlib_daemon_stop(&d, SIGTERM);
	smtp_peer_stop(peer);
	smtp_peer_free(peer);
	testlib_daemon_cleanup(&d);
}
