/*
 * bench/main.c - coremta-bench: the harness's load generator (`send`) and
 * receiver (`sink`) in one binary.  Dispatches to the subcommand, which
 * owns the process from then on (one thread, one io_uring loop).
 */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"

static void usage(FILE *f)
{
	fputs("usage: coremta-bench send [options]   SMTP load generator\n"
	      "       coremta-bench sink [options]   counting SMTP receiver\n"
	      "       coremta-bench dkim-sign [options]   DKIM signatures per CPU-second\n"
	      "Run a subcommand with --help for its options.\n", f);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "send") == 0)
		return bench_send_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "sink") == 0)
		return bench_sink_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "dkim-sign") == 0)
		return bench_dkim_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "coremta-bench: unknown subcommand %s\n", argv[1]);
	usage(stderr);
	return 2;
}
