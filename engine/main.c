/*
 * engine/main.c - the coremta command: `coremta [-c FILE]` runs the
 * daemon in the foreground, `coremta check ...` checks a configuration,
 * `coremta --version`.
 *
 * Main thread.  Signals are blocked and taken synchronously with
 * sigwaitinfo(), so no handler touches shared state.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "affinity/affinity.h"
#include "config/config.h"
#include "engine/engine.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: coremta [-c FILE]        run in the foreground (embedded config without -c)\n"
		"       coremta check [options]  check a configuration (coremta check --help)\n"
		"       coremta --version\n");
}

static void log_diags(const struct diag_list *dl)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < dl->count; i++) {
		sb_reset(&sb);
		diag_format(&dl->items[i], &sb);
		fprintf(stderr, "coremta: %s\n", sb_str(&sb));
	}
	sb_free(&sb);
}

/* load - load the configuration; on failure the caller keeps the old one. */
static int load(const char *path, struct cfg **out)
{
	struct diag_list dl = { 0 };
	int rc;

	if (path)
		rc = cfg_load_file(path, NULL, out, &dl);
	else
		rc = cfg_load_string("<embedded>", engine_default_config, NULL,
				     NULL, out, &dl);
	log_diags(&dl);
	diag_free(&dl);
	return rc;
}

static void report(const struct cfg *cfg)
{
	const struct cfg_global *g = cfg_global(cfg);
	uint32_t shards = 0;
	char e[256];

	if (affinity_shard_count(cfg, &shards, e, sizeof(e)) < 0)
		fprintf(stderr, "coremta: %s\n", e);
	fprintf(stderr,
		"coremta %s: configuration %s loaded: %zu listener%s (first %s), spool %s, %zu virtual-mta%s, %zu acct-file%s, %u delivery shard%s\n",
		COREMTA_VERSION, cfg_path(cfg), g->listener_count,
		g->listener_count == 1 ? "" : "s", g->listeners[0].text,
		g->spool_dir, cfg_vmta_count(cfg),
		cfg_vmta_count(cfg) == 1 ? "" : "s", cfg_acct_count(cfg),
		cfg_acct_count(cfg) == 1 ? "" : "s", shards, shards == 1 ? "" : "s");
}

/*
 * run - the daemon's life: load, then serve signals.  This version has no
 * intake or delivery engine yet, and says so rather than pretend.
 */
static int run(const char *path)
{
	struct cfg *cfg = NULL;
	sigset_t set;
	siginfo_t info;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
		perror("coremta: sigprocmask");
		return 1;
	}
	if (load(path, &cfg) < 0) {
		fprintf(stderr, "coremta: configuration %s has errors; not starting\n",
			path ? path : "<embedded>");
		return 1;
	}
	report(cfg);
	fprintf(stderr,
		"coremta: this build has no intake or delivery engine yet: it accepts no mail and delivers none. "
		"Waiting for SIGTERM (SIGHUP reloads the configuration).\n");
	for (;;) {
		int sig = sigwaitinfo(&set, &info);
		if (sig < 0) {
			if (errno == EINTR)
				continue;
			perror("coremta: sigwaitinfo");
			break;
		}
		if (sig == SIGHUP) {
			struct cfg *next = NULL;
			if (load(path, &next) < 0) {
				fprintf(stderr, "coremta: reload failed; the running configuration is unchanged\n");
				continue;
			}
			cfg_free(cfg);
			cfg = next;
			report(cfg);
			continue;
		}
		fprintf(stderr, "coremta: %s received, stopping\n",
			sig == SIGTERM ? "SIGTERM" : "SIGINT");
		break;
	}
	cfg_free(cfg);
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = NULL;

	if (argc > 1 && strcmp(argv[1], "check") == 0)
		return engine_check_main(argc - 1, argv + 1, stdout, stderr);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0) {
			printf("coremta %s\n", COREMTA_VERSION);
			return 0;
		} else if ((strcmp(argv[i], "-c") == 0 ||
			    strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
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
	return run(path);
}
