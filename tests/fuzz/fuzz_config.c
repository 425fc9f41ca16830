/*
 * tests/fuzz/fuzz_config.c - libFuzzer target for the whole config loader
 * (syntax, values, model, lint): any input must load or fail with
 * diagnostics, never crash, hang or leak.  Single-threaded.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	struct diag_list dl = { 0 };
	struct cfg *cfg = NULL;

	memcpy(text, data, size);
	text[size] = '\0';
	/*
	 * include reads the real filesystem (absolute paths, globs such as
	 * under /proc): slow and flaky, and the syntax suite covers it.
	 */
	if (strcasestr(text, "include")) {
		free(text);
		return 0;
	}
	if (cfg_load_string("fuzz.conf", text, "/nonexistent", NULL, &cfg, &dl) == 0) {
		static const struct cfg_host_facts host = {
			.mem_total = 1ull << 30, .nofile_limit = 1024,
		};
		struct diag_list lint = { 0 };
		cfg_queue_lookup(cfg, "gmail.com", NULL);
		cfg_queue_lookup(cfg, "a.b.example.com", NULL);
		cfg_source_lookup(cfg, NULL, NULL);
		cfg_lint(cfg, &host, &lint);
		diag_free(&lint);
		cfg_free(cfg);
	}
	diag_free(&dl);
	free(text);
	return 0;
}
