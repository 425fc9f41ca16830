/*
 * tests/engine/test_soak.c - long runs for `make soak`, skipped unless
 * COREMTA_SOAK is set (make test does not run them): 2,000 hostile
 * connections while the relaying application keeps sending.  make soak
 * also runs intake::kill9_under_load... for COREMTA_SOAK_ROUNDS rounds
 * and pressure::full_spool_recovers_without_restart.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

#define HOSTILE_THREADS	8
#define HOSTILE_EACH	250		/* 2,000 connections in all */
#define RELAY_MESSAGES	300
#define HOLD		20		/* idle connections each thread keeps */

static void soak_only(void)
{
	if (!getenv("COREMTA_SOAK"))
		cr_skip_test("soak test: run it with make soak");
}

struct hostile {
	int port;
	int thread;
	atomic_uint *refused, *served;
};

/* one hostile client: idle, garbage, a trickle, or a flood of junk */
static void *hostile_run(void *arg)
{
	struct hostile *h = arg;
	static const char garbage[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03GET / HTTP/1.1\r\n";

	int held[HOLD] = { 0 };
	int nheld = 0;

	for (int i = 0; i < HOSTILE_EACH; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in a = { .sin_family = AF_INET };
		char ip[32], buf[512];
		snprintf(ip, sizeof(ip), "127.0.%d.%d", 1 + h->thread, 2 + i % 40);
		inet_pton(AF_INET, ip, &a.sin_addr);
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
			close(fd);
			continue;
		}
		a.sin_port = htons((uint16_t)h->port);
		inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
		struct timeval tv = { .tv_sec = 2 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
			close(fd);
			continue;
		}
		ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n > 0 && strncmp(buf, "421", 3) == 0) {
			atomic_fetch_add(h->refused, 1);
			close(fd);
			continue;
		}
		atomic_fetch_add(h->served, 1);
		switch (i % 4) {
		case 0:		/* idle: hold the slot until HOLD newer ones */
			if (nheld == HOLD) {
				close(held[0]);
				memmove(held, held + 1, (HOLD - 1) * sizeof(int));
				nheld--;
			}
			held[nheld++] = fd;
			continue;
		case 1:		/* garbage */
			(void)!send(fd, garbage, sizeof(garbage) - 1, MSG_NOSIGNAL);
			break;
		case 2:		/* a trickle */
			for (int k = 0; k < 5; k++) {
				(void)!send(fd, "E", 1, MSG_NOSIGNAL);
				usleep(50 * 1000);
			}
			break;
		default:	/* junk commands as fast as it can */
			for (int k = 0; k < 50; k++)
				(void)!send(fd, "NOOP\r\nEHLO x\r\n", 14, MSG_NOSIGNAL);
			break;
		}
		close(fd);
	}
	for (int k = 0; k < nheld; k++)
		close(held[k]);
	return NULL;
}

static int relay_send(int port, int seq, char *text, size_t cap)
{
	int fd = testlib_dial(port);
	struct strbuf b = { 0 };
	size_t len = 0;

	if (fd < 0)
		return 0;
	sb_printf(&b, "EHLO app.test\r\nMAIL FROM:<app@example.org>\r\n"
		  "RCPT TO:<r%d@dest.test>\r\nDATA\r\n", seq);
	(void)!send(fd, b.buf, b.len, MSG_NOSIGNAL);
	sb_reset(&b);
	/* greeting, EHLO, MAIL, RCPT, DATA replies */
	while (len + 1 < cap && !strstr(text, "354 ")) {
		ssize_t n = recv(fd, text + len, cap - len - 1, 0);
		if (n <= 0)
			break;
		len += (size_t)n;
		text[len] = '\0';
		if (strncmp(text, "421", 3) == 0)
			break;
	}
	int code = 0;
	if (strstr(text, "354 ")) {
		sb_printf(&b, "Subject: relay %d\r\n\r\nhello\r\n.\r\nQUIT\r\n", seq);
		(void)!send(fd, b.buf, b.len, MSG_NOSIGNAL);
		len = 0;
		text[0] = '\0';
		while (len + 1 < cap && !strstr(text, "\r\n")) {
			ssize_t n = recv(fd, text + len, cap - len - 1, 0);
			if (n <= 0)
				break;
			len += (size_t)n;
			text[len] = '\0';
		}
		code = atoi(text);
	}
	sb_free(&b);
	close(fd);
	return code;
}

Test(soak, hostile_connections_while_the_relay_source_sends, .timeout = 600)
{
	soak_only();
	struct testlib_daemon d = { 0 };
	struct smtp_peer *peer = testlib_peer_start("127.0.0.1", 0, SMTP_PEER_CAP_PIPELINING,
						    NULL, 0);
	d.sink_port = smtp_peer_port(peer);
	testlib_daemon_start_or_fail(&d,
		"smtp-listener 127.0.0.1:@PORT@\n"
		"disk-queue @DIR@/spool\n"
		"host-name mx.test.invalid\n"
		"shards 1\n"
		"allow-shard-oversubscription yes\n"
		"total-max-smtp-in 100\n"
		"smtp-in-command-timeout 2s\n"
		"smtp-in-greeting-timeout 3s\n"
		"<source-group apps>\n    reserved-smtp-in 20\n</source-group>\n"
		"<source 0/0>\n    max-smtp-in-per-ip 3\n</source>\n"
		"<source 127.0.0.1>\n    always-allow-relaying yes\n    source-group apps\n"
		"    max-smtp-in-per-ip unlimited\n</source>\n"
		"<domain *>\n    smtp-hosts [127.0.0.1]:@SINK@\n    retry-after 1s\n</domain>\n");
	atomic_uint refused = 0, served = 0;
	struct hostile h[HOSTILE_THREADS];
	pthread_t th[HOSTILE_THREADS];
	for (int i = 0; i < HOSTILE_THREADS; i++) {
		h[i] = (struct hostile){ d.port, i, &refused, &served };
		pthread_create(&th[i], NULL, hostile_run, &h[i]);
	}
	char text[4096];
	unsigned ok = 0;
	for (int i = 0; i < RELAY_MESSAGES; i++) {
		int code = relay_send(d.port, i, text, sizeof(text));
		cr_expect_eq(code, 250, "relay message %d: %s", i, text);
		ok += code == 250;
	}
	for (int i = 0; i < HOSTILE_THREADS; i++)
		pthread_join(th[i], NULL);
	cr_expect_eq(smtp_peer_wait_messages(peer, ok, 60000), 0);
	fprintf(stderr, "soak: hostile: %u served, %u refused of %d connections; "
		"relay %u/%d accepted\n", atomic_load(&served), atomic_load(&refused),
		HOSTILE_THREADS * HOSTILE_EACH, ok, RELAY_MESSAGES);
	cr_expect_eq(kill(d.pid, 0), 0, "the daemon survived");
	testlib_daemon_stop(&d, SIGTERM);
	testlib_daemon_cleanup(&d);
	smtp_peer_free(peer);
}
