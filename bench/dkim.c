/*
 * bench/dkim.c - `coremta-bench dkim-sign`: the signing-only limit, i.e.
 * DKIM signatures per CPU-second of one thread with util/dkim (wolfSSL),
 * on a message shaped like the load generator's.  The dkim scenario
 * compares the signed relay with it.  One thread; prints one JSON object.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "util/dkim.h"
#include "util/util.h"

static double cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int bench_dkim_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "key", required_argument, NULL, 'k' },
		{ "size", required_argument, NULL, 's' },
		{ "seconds", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *keyfile = NULL;
	size_t size = 5000;
	double seconds = 3;
	int c;

	while ((c = getopt_long(argc, argv, "k:s:t:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'k': keyfile = optarg; break;
		case 's': size = strtoul(optarg, NULL, 10); break;
		case 't': seconds = atof(optarg); break;
		case 'h':
			puts("usage: coremta-bench dkim-sign --key FILE [--size BYTES] [--seconds S]\n"
			     "Signs a SIZE-byte message (relaxed/relaxed) for S CPU-seconds; prints JSON.");
			return 0;
		default:
			return 2;
		}
	}
	if (!keyfile) {
		fputs("coremta-bench dkim-sign: --key FILE is required\n", stderr);
		return 2;
	}
	char err[256];
	struct dkim_key *key;
	if (dkim_key_load(keyfile, &key, err, sizeof(err)) < 0) {
		fprintf(stderr, "coremta-bench dkim-sign: %s\n", err);
		return 1;
	}
	struct strbuf msg = { 0 };
	sb_adds(&msg, "From: <bench@bench.test>\r\nTo: <u1.0@d1.bench.test>\r\n"
		      "Subject: coremta-bench 1\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
		      "Message-ID: <1.0@bench.test>\r\nMIME-Version: 1.0\r\n"
		      "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	while (msg.len < size) {
		for (int k = 0; k < 76; k++)
			sb_addc(&msg, (char)('a' + (msg.len + (size_t)k) % 26));
		sb_adds(&msg, "\r\n");
	}
	struct dkim_sign_params p = {
		.key = key, .domain = "bench.test", .selector = "s1", .oversign = true,
	};
	struct strbuf sig = { 0 };
	unsigned long n = 0;
	double t0 = cpu_now(), t;
	do {
		sb_reset(&sig);
		if (dkim_sign(&p, msg.buf, msg.len, &sig, err, sizeof(err)) < 0) {
			fprintf(stderr, "coremta-bench dkim-sign: %s\n", err);
			return 1;
		}
		n++;
	} while ((t = cpu_now() - t0) < seconds);
	printf("{\"alg\": \"%s\", \"bits\": %u, \"message_bytes\": %zu, \"signatures\": %lu, "
	       "\"cpu_s\": %.3f, \"per_cpu_s\": %.1f}\n",
	       dkim_alg_name(dkim_key_alg(key)), dkim_key_bits(key), msg.len, n, t, (double)n / t);
	sb_free(&sig);
	sb_free(&msg);
	dkim_key_free(key);
	return 0;
}
