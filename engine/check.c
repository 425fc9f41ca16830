/*
 * engine/check.c - `coremta check`: load a configuration and tell the
 * operator precisely what is wrong with it, what inheritance made of it
 * (--show, --source) and where domains go (--shards).
 *
 * Main thread only; prints to the streams it is given.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "affinity/affinity.h"
#include "config/config.h"
#include "engine/engine.h"

#define EXIT_CLEAN 0
#define EXIT_ERRORS 1
#define EXIT_STRICT_WARNINGS 2
#define EXIT_USAGE 64

struct check_args {
	const char *config;
	bool strict;
	bool unknown_fatal;
	bool shards;
	bool reference;
	bool no_lint;
	const char *shows[32];
	size_t n_shows;
	const char *sources[32];
	size_t n_sources;
	const char *named;
	const char *domains[64];
	size_t n_domains;
};

static void usage(FILE *err)
{
	fprintf(err,
		"usage: coremta check [-c FILE] [--strict | --unknown-fatal] [--no-lint]\n"
		"                     [--show DOMAIN[/VMTA]]... [--source IP [--as NAME]]...\n"
		"                     [--shards [DOMAIN...]] [--reference]\n"
		"  Loads FILE (default: the embedded configuration), prints every error and\n"
		"  warning as file:line: message, then the lint report.\n"
		"  --show     effective <domain> settings of a queue, with where each came from\n"
		"  --source   effective <source> settings for a client IP (--as: a named source)\n"
		"  --shards   the core-to-domain map; with DOMAINs, where each one goes\n"
		"  --reference  the directive table as Markdown (tuning.md)\n"
		"  --strict   unknown names are errors; any warning or finding exits 2\n"
		"  --unknown-fatal  only unknown names (typos) are errors: PowerMTA\n"
		"             directives coremta does not act on yet stay warnings\n"
		"  exit status: 0 clean, 1 errors, 2 warnings with --strict\n");
}

/* option_value - what an option that takes a value wants, else NULL. */
static const char *option_value(const char *opt)
{
	static const char *const opts[][2] = {
		{ "--show", "DOMAIN[/VMTA]" }, { "--source", "IP" }, { "--as", "NAME" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(opts); i++)
		if (strcmp(opt, opts[i][0]) == 0)
			return opts[i][1];
	return NULL;
}

static int parse_args(int argc, char **argv, struct check_args *a, FILE *err)
{
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		bool has_next = i + 1 < argc;
		if (strcmp(s, "-c") == 0 || strcmp(s, "--config") == 0) {
			if (!has_next) {
				fprintf(err, "coremta check: option '%s' needs a file\n", s);
				return -EINVAL;
			}
			a->config = argv[++i];
		} else if (strcmp(s, "--strict") == 0) {
			a->strict = true;
		} else if (strcmp(s, "--unknown-fatal") == 0) {
			a->unknown_fatal = true;
		} else if (strcmp(s, "--no-lint") == 0) {
			a->no_lint = true;
		} else if (strcmp(s, "--reference") == 0) {
			a->reference = true;
		} else if (strcmp(s, "--show") == 0 && has_next &&
			   a->n_shows < ARRAY_SIZE(a->shows)) {
			a->shows[a->n_shows++] = argv[++i];
		} else if (strcmp(s, "--source") == 0 && has_next &&
			   a->n_sources < ARRAY_SIZE(a->sources)) {
			a->sources[a->n_sources++] = argv[++i];
		} else if (strcmp(s, "--as") == 0 && has_next) {
			a->named = argv[++i];
		} else if (strcmp(s, "--shards") == 0) {
			a->shards = true;
			while (i + 1 < argc && argv[i + 1][0] != '-' &&
			       a->n_domains < ARRAY_SIZE(a->domains))
				a->domains[a->n_domains++] = argv[++i];
		} else if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
			usage(stdout);
			exit(0);
		} else if (!has_next && option_value(s)) {
			fprintf(err, "coremta check: option '%s' needs a value: %s %s\n", s, s,
				option_value(s));
			usage(err);
			return -EINVAL;
		} else {
			fprintf(err, "coremta check: unknown or incomplete option '%s'\n", s);
			usage(err);
			return -EINVAL;
		}
	}
	return 0;
}

static void print_diags(const struct diag_list *dl, FILE *out)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < dl->count; i++) {
		sb_reset(&sb);
		diag_format(&dl->items[i], &sb);
		fprintf(out, "%s\n", sb_str(&sb));
	}
	sb_free(&sb);
}

static int show_queues(const struct cfg *cfg, const struct check_args *a,
		       FILE *out, FILE *err)
{
	int status = EXIT_CLEAN;

	for (size_t i = 0; i < a->n_shows; i++) {
		char buf[512];
		snprintf(buf, sizeof(buf), "%s", a->shows[i]);
		char *slash = strchr(buf, '/');
		if (slash)
			*slash++ = '\0';
		fprintf(out, "\n");
		if (cfg_show_queue(cfg, buf, slash, out) < 0) {
			fprintf(err, "coremta check: --show %s: no virtual-mta named '%s'\n",
				a->shows[i], slash);
			status = EXIT_ERRORS;
		}
	}
	for (size_t i = 0; i < a->n_sources; i++) {
		fprintf(out, "\n");
		int rc = cfg_show_source(cfg, a->sources[i], a->named, out);
		if (rc == -EINVAL) {
			fprintf(err, "coremta check: --source %s: not an IP address\n",
				a->sources[i]);
			status = EXIT_ERRORS;
		} else if (rc < 0) {
			fprintf(err, "coremta check: --as %s: no <source %s> block\n",
				a->named, a->named);
			status = EXIT_ERRORS;
		}
	}
	return status;
}

static int show_shards(const struct cfg *cfg, const struct check_args *a,
		       FILE *out, FILE *err)
{
	char e[256];
	uint32_t count;
	struct domain_map *map = NULL;
	struct diag_list dl = { 0 };

	if (affinity_shard_count(cfg, &count, e, sizeof(e)) < 0) {
		fprintf(err, "coremta check: %s\n", e);
		return EXIT_ERRORS;
	}
	if (domain_map_new(cfg, count, &map, &dl) < 0) {
		print_diags(&dl, err);
		diag_free(&dl);
		return EXIT_ERRORS;
	}
	fprintf(out, "\n");
	domain_map_print(map, cfg, a->domains, a->n_domains, out);
	domain_map_free(map);
	diag_free(&dl);
	return EXIT_CLEAN;
}

int engine_check_main(int argc, char **argv, FILE *out, FILE *err)
{
	struct check_args a = { 0 };
	struct diag_list dl = { 0 }, lint = { 0 };
	struct cfg_load_opts opts = { 0 };
	struct cfg *cfg = NULL;
	int rc;

	if (parse_args(argc, argv, &a, err) < 0)
		return EXIT_USAGE;
	if (a.reference) {
		cfg_directive_reference(out);
		return EXIT_CLEAN;
	}
	opts.strict = a.strict || a.unknown_fatal;
	if (a.config)
		rc = cfg_load_file(a.config, &opts, &cfg, &dl);
	else
		rc = cfg_load_string("<embedded>", engine_default_config, NULL,
				     &opts, &cfg, &dl);
	const char *name = a.config ? a.config : "<embedded>";
	print_diags(&dl, out);
	if (rc < 0) {
		fprintf(out, "coremta check: %s: %zu error%s, %zu warning%s; not loaded\n",
			name, dl.errors, dl.errors == 1 ? "" : "s", dl.warnings,
			dl.warnings == 1 ? "" : "s");
		diag_free(&dl);
		return EXIT_ERRORS;
	}
	size_t findings = 0;
	if (!a.no_lint) {
		struct cfg_host_facts host;
		cfg_host_facts_read(&host);
		findings = cfg_lint(cfg, &host, &lint);
		print_diags(&lint, out);
	}
	fprintf(out, "coremta check: %s: 0 errors, %zu warning%s, %zu lint finding%s\n",
		name, dl.warnings, dl.warnings == 1 ? "" : "s", findings,
		findings == 1 ? "" : "s");

	int status = EXIT_CLEAN;
	if (a.strict && (dl.warnings || findings))
		status = EXIT_STRICT_WARNINGS;
	int s2 = show_queues(cfg, &a, out, err);
	if (s2 != EXIT_CLEAN)
		status = s2;
	if (a.shards) {
		s2 = show_shards(cfg, &a, out, err);
		if (s2 != EXIT_CLEAN)
			status = s2;
	}
	cfg_free(cfg);
	diag_free(&dl);
	diag_free(&lint);
	return status;
}
