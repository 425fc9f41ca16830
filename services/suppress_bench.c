/*
 * services/suppress_bench.c - what a suppression store of N entries costs:
 * insert rate (batches of 100000 per durable transaction), disk and
 * resident memory per entry, and the RCPT-time lookup (suppress_check with
 * a sender domain and a VMTA, as the intake calls it) for present and
 * absent addresses.  Single-threaded; prints one key=value line per figure.
 *
 *   suppress-bench DIR [N] [LOOKUPS]      (defaults 10000000, 1000000)
 *
 * DIR must not exist (it is created and left for inspection).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "util/util.h"

#include "services/suppress.h"

#define BATCH 100000

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* addr - the ith test address: a mix of lengths and domains */
static void addr(char *buf, size_t cap, uint64_t i)
{
	static const char *const doms[] = { "gmail.com", "yahoo.com", "outlook.com",
					    "example.org", "mail.example.net" };
	uint64_t h = i * 0x9e3779b97f4a7c15ull;

	snprintf(buf, cap, "user.%llx.%llu@%s", (unsigned long long)(h >> 40),
		 (unsigned long long)i, doms[i % 5]);
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;

	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kib = strtol(line + 6, NULL, 10);
	if (f)
		fclose(f);
	return kib;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : NULL;
	uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 10) : 10000000;
	uint64_t lookups = argc > 3 ? strtoull(argv[3], NULL, 10) : 1000000;
	struct suppress *s;
	struct suppress_reader *r;
	char err[256];
	struct stat st;

	if (!dir || stat(dir, &st) == 0) {
		fprintf(stderr, "usage: suppress-bench NEWDIR [N] [LOOKUPS]\n");
		return 2;
	}
	if (suppress_open(dir, NULL, &s, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	long rss0 = rss_kib();
	struct suppress_entry *e = xcalloc(BATCH, sizeof(*e));
	char (*bufs)[64] = xcalloc(BATCH, 64);
	double t0 = now_s();

	for (uint64_t done = 0; done < n;) {
		size_t k = 0;
		for (; k < BATCH && done < n; k++, done++) {
			addr(bufs[k], 64, done);
			e[k] = (struct suppress_entry){ .addr = bufs[k],
							.kind = SUPPRESS_HARD_BOUNCE,
							.reason = "rb 5.1.1 bad-mailbox" };
		}
		int rc = suppress_add(s, e, k);
		if (rc < 0) {
			fprintf(stderr, "suppress_add: %s\n", strerror(-rc));
			return 1;
		}
	}
	double ins = now_s() - t0;
	char *path = xasprintf("%s/data.mdb", dir);
	stat(path, &st);
	printf("entries=%llu insert_s=%.1f insert_per_s=%.0f\n", (unsigned long long)n, ins,
	       (double)n / ins);
	printf("disk_bytes=%lld disk_bytes_per_entry=%.1f\n", (long long)st.st_blocks * 512,
	       (double)st.st_blocks * 512 / (double)n);

	if (suppress_reader_new(s, &r) < 0)
		return 1;
	for (int pass = 0; pass < 2; pass++) {
		uint64_t hits = 0;
		char a[64];
		double t1 = now_s();
		for (uint64_t i = 0; i < lookups; i++) {
			/* present: a random stored one; absent: beyond n */
			uint64_t k = (i * 0x9e3779b97f4a7c15ull) % n + (pass ? n : 0);
			addr(a, sizeof(a), k);
			hits += suppress_check(r, a, "sender.example", "vmta1", 1, NULL) == 1;
		}
		double t = now_s() - t1;
		printf("lookup_%s=%llu hits=%llu ns_per_lookup=%.0f\n", pass ? "absent" : "present",
		       (unsigned long long)lookups, (unsigned long long)hits, t * 1e9 / (double)lookups);
	}
	printf("rss_kib_growth=%ld (the map is file pages: see disk_bytes)\n", rss_kib() - rss0);
	suppress_reader_free(r);
	suppress_close(s);
	free(e);
	free(bufs);
	free(path);
	return 0;
}
