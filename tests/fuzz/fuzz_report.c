/*
 * tests/fuzz/fuzz_report.c - libFuzzer target for the inbound report
 * parser: every byte of a bounce or complaint is untrusted.  Never a crash,
 * a leak or a read past the input; every recipient found is an address
 * (an '@' in it), and a complaint never carries a bounce category.
 * Single-threaded.
 *
 * Input: byte 0 selects the VERP envelope recipient (none, or one), the
 * rest is the message.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "util/util.h"

#include "services/report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct cfg *cfg;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct report rep;
	struct arena *a;

	if (size < 1)
		return 0;
	if (!cfg) {
		struct diag_list dl = { 0 };
		/* the built-in bounce rules: what every report is classified by */
		if (cfg_load_string("fuzz.conf", "", NULL, NULL, &cfg, &dl) < 0)
			abort();
		diag_free(&dl);
	}
	/* an exact-size copy, so ASan sees a read past the end */
	char *msg = xmalloc(size - 1 ? size - 1 : 1);
	memcpy(msg, data + 1, size - 1);
	a = arena_new();
	report_parse(msg, size - 1, data[0] & 1 ? "bounces-u=example.org@s.example" : NULL,
		     cfg, a, &rep);
	for (size_t i = 0; i < rep.nrcpts; i++) {
		if (!rep.rcpts[i].rcpt || !strchr(rep.rcpts[i].rcpt, '@'))
			abort();
		if (rep.kind == REPORT_COMPLAINT && rep.rcpts[i].bounce_cat)
			abort();
	}
	if (rep.kind != REPORT_UNKNOWN && !rep.nrcpts)
		abort();
	arena_free(a);
	free(msg);
	return 0;
}
