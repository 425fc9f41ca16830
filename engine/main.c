/*
 * engine/main.c - the coremta command: `coremta [-c FILE]` runs the
 * daemon in the foreground, `coremta check ...` checks a configuration,
 * `coremta ctl ...` manages a running one, `coremta suppress ...` its
 * suppression store, `coremta --version`.
 *
 * Main thread.
 */
#include <stdio.h>
#include <string.h>

#include "engine/engine.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: coremta [-c FILE]        run in the foreground (embedded config without -c)\n"
		"       coremta check [options]  check a configuration (coremta check --help)\n"
		"       coremta suppress VERB    manage the suppression store (coremta suppress --help)\n"
		"       coremta ctl COMMAND      manage a running coremta (coremta ctl --help)\n"
		"       coremta --version\n");
}

int main(int argc, char **argv)
{
	const char *path = NULL;

	if (argc > 1 && strcmp(argv[1], "check") == 0)
		return engine_check_main(argc - 1, argv + 1, stdout, stderr);
	if (argc > 1 && strcmp(argv[1], "suppress") == 0)
		return engine_suppress_main(argc - 1, argv + 1, stdout, stderr);
	if (argc > 1 && strcmp(argv[1], "ctl") == 0)
		return engine_ctl_main(argc - 1, argv + 1);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0) {
			printf("coremta %s\n", COREMTA_VERSION);
			return 0;
		} else if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
			if (i + 1 == argc) {
				fprintf(stderr, "coremta: option '%s' needs a configuration file: %s FILE\n",
					argv[i], argv[i]);
				usage(stderr);
				return 64;
			}
			path = argv[++i];
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "coremta: unknown option '%s'\n", argv[i]);
			usage(stderr);
			return 64;
		}
	}
	return engine_run(path);
}
