/*
 * engine/suppress_cmd.c - `coremta suppress ...`: the operator's hands on
 * the suppression store (add, remove, show, import, export, purge).
 *
 * It opens the store the configuration names (suppression-db, else
 * <disk-queue>/suppression) directly: LMDB serialises writers across
 * processes and readers take no lock, so it works while the daemon runs,
 * and what it adds is seen by the daemon's next RCPT lookup.
 *
 * Main thread of its own short-lived process.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "config/values.h"
#include "services/suppress.h"
#include "util/util.h"

#include "engine/engine.h"
#include "engine/fbl.h"

/* sysexits(3) codes, so scripts can tell "absent" from "broken" */
enum {
	EX_DONE = 0,
	EX_ABSENT = 1,		/* show: not suppressed; remove: no such entry */
	EX_USAGE_ = 64,
	EX_DATAERR_ = 65,
	EX_UNAVAILABLE_ = 69,
	EX_CONFIG_ = 78,
};

struct args {
	const char *config, *db, *verb, *operand;
	const char *scope_arg, *sender_domain, *vmta, *reason;
	uint64_t expires_in;
	enum suppress_scope scope;
	const char *scope_value;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: coremta suppress [-c FILE | --db DIR] VERB ...\n"
		"  add ADDR [--scope S] [--expires INTERVAL] [--reason TEXT]\n"
		"  remove ADDR [--scope S]\n"
		"  show ADDR [--sender-domain D] [--vmta V]   exit 1 when not suppressed\n"
		"  import FILE [--scope S] [--expires INTERVAL] [--reason TEXT]\n"
		"  export                                      CSV on standard output\n"
		"  purge                                       delete expired entries\n"
		"ADDR is user@domain or @domain (the whole domain).  S is global,\n"
		"sender-domain:DOMAIN or vmta:NAME [global].  Without -c or --db the\n"
		"embedded default configuration names the store, as for the daemon.\n");
}

/* parse_scope - "global", "sender-domain:D" or "vmta:V" */
static int parse_scope(struct args *a, FILE *err)
{
	const char *s = a->scope_arg;

	a->scope = SUPPRESS_GLOBAL;
	a->scope_value = NULL;
	if (!s || strcmp(s, "global") == 0)
		return 0;
	const char *colon = strchr(s, ':');
	if (colon && colon[1]) {
		size_t n = (size_t)(colon - s);
		if (n == strlen("sender-domain") && strncmp(s, "sender-domain", n) == 0) {
			a->scope = SUPPRESS_SENDER_DOMAIN;
			a->scope_value = colon + 1;
			return 0;
		}
		if (n == strlen("vmta") && strncmp(s, "vmta", n) == 0) {
			a->scope = SUPPRESS_VMTA;
			a->scope_value = colon + 1;
			return 0;
		}
	}
	fprintf(err, "coremta suppress: --scope '%s': expected global, "
		"sender-domain:DOMAIN or vmta:NAME\n", s);
	return -1;
}

static int parse_args(int argc, char **argv, struct args *a, FILE *err)
{
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		const char **slot = NULL;
		const char *expires = NULL;

		if (strcmp(o, "-c") == 0 || strcmp(o, "--config") == 0)
			slot = &a->config;
		else if (strcmp(o, "--db") == 0)
			slot = &a->db;
		else if (strcmp(o, "--scope") == 0)
			slot = &a->scope_arg;
		else if (strcmp(o, "--sender-domain") == 0)
			slot = &a->sender_domain;
		else if (strcmp(o, "--vmta") == 0)
			slot = &a->vmta;
		else if (strcmp(o, "--reason") == 0)
			slot = &a->reason;
		else if (strcmp(o, "--expires") == 0)
			slot = &expires;
		else if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0)
			return 1;
		else if (o[0] == '-' && o[1]) {
			fprintf(err, "coremta suppress: unknown option '%s'\n", o);
			return -1;
		} else if (!a->verb) {
			a->verb = o;
			continue;
		} else if (!a->operand) {
			a->operand = o;
			continue;
		} else {
			fprintf(err, "coremta suppress: unexpected argument '%s'\n", o);
			return -1;
		}
		if (i + 1 == argc) {
			fprintf(err, "coremta suppress: option '%s' needs a value\n", o);
			return -1;
		}
		*slot = argv[++i];
		if (expires) {
			char why[128];
			if (cfg_parse_interval(expires, &a->expires_in, why, sizeof(why)) < 0) {
				fprintf(err, "coremta suppress: --expires '%s': %s\n", expires, why);
				return -1;
			}
		}
	}
	if (!a->verb) {
		fprintf(err, "coremta suppress: which verb? add, remove, show, import, export or purge\n");
		return -1;
	}
	bool wants_operand = strcmp(a->verb, "export") != 0 && strcmp(a->verb, "purge") != 0;
	if (wants_operand != (a->operand != NULL)) {
		fprintf(err, wants_operand ? "coremta suppress %s: needs an operand\n"
					   : "coremta suppress %s: takes no operand\n", a->verb);
		return -1;
	}
	return parse_scope(a, err);
}

/* store_dir - --db, else what the configuration names; NULL on error */
static char *store_dir(const struct args *a, FILE *err)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = NULL;
	int rc;

	if (a->db)
		return xstrdup(a->db);
	if (a->config)
		rc = cfg_load_file(a->config, NULL, &cfg, &dl);
	else
		rc = cfg_load_string("<embedded>", engine_default_config, NULL, NULL, &cfg, &dl);
	if (rc < 0) {
		struct strbuf sb = { 0 };
		for (size_t i = 0; i < dl.count; i++) {
			sb_reset(&sb);
			diag_format(&dl.items[i], &sb);
			fprintf(err, "coremta suppress: %s\n", sb_str(&sb));
		}
		sb_free(&sb);
		diag_free(&dl);
		return NULL;
	}
	char *dir = fbl_store_dir(cfg);
	cfg_free(cfg);
	diag_free(&dl);
	return dir;
}

/* iso_utc - t as 2026-12-07T03:20:00Z in buf */
static const char *iso_utc(time_t t, char *buf, size_t cap)
{
	struct tm tm;

	if (!gmtime_r(&t, &tm) || !strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, cap, "%lld", (long long)t);
	return buf;
}

static void print_hit(FILE *out, const char *addr, const struct suppress_hit *h)
{
	char when[32];

	fprintf(out, "%s suppressed: %s, scope %s%s, added %s", addr,
		suppress_kind_name(h->kind), suppress_scope_name(h->scope),
		h->whole_domain ? ", whole domain" : "", iso_utc(h->added, when, sizeof(when)));
	if (h->expires)
		fprintf(out, ", expires %s", iso_utc(h->expires, when, sizeof(when)));
	fprintf(out, "%s%s\n", *h->reason ? ", reason: " : "", h->reason);
}

static int run_verb(struct suppress *s, const struct args *a, FILE *out, FILE *err)
{
	time_t now = time(NULL);
	struct suppress_entry e = {
		.addr = a->operand, .scope = a->scope, .scope_value = a->scope_value,
		.kind = SUPPRESS_LIST, .added = now,
		.expires = a->expires_in ? now + (time_t)a->expires_in : 0,
		.reason = a->reason ? a->reason : "added by the operator",
	};
	int rc;

	if (strcmp(a->verb, "add") == 0) {
		rc = suppress_add(s, &e, 1);
		if (rc == -EINVAL) {
			fprintf(err, "coremta suppress add: '%s' is not an address "
				"(user@domain or @domain)\n", a->operand);
			return EX_DATAERR_;
		}
		if (rc < 0)
			goto store_error;
		fprintf(out, "added %s\n", a->operand);
		return EX_DONE;
	}
	if (strcmp(a->verb, "remove") == 0) {
		rc = suppress_remove(s, a->operand, a->scope, a->scope_value);
		if (rc == -ENOENT) {
			fprintf(out, "%s was not suppressed in scope %s\n", a->operand,
				suppress_scope_name(a->scope));
			return EX_ABSENT;
		}
		if (rc < 0)
			goto store_error;
		fprintf(out, "removed %s\n", a->operand);
		return EX_DONE;
	}
	if (strcmp(a->verb, "show") == 0) {
		struct suppress_reader *r;
		struct suppress_hit hit;
		if ((rc = suppress_reader_new(s, &r)) < 0)
			goto store_error;
		rc = suppress_check(r, a->operand, a->sender_domain, a->vmta, now, &hit);
		suppress_reader_free(r);
		if (rc == -EINVAL) {
			fprintf(err, "coremta suppress show: '%s' is not an address\n", a->operand);
			return EX_DATAERR_;
		}
		if (rc < 0)
			goto store_error;
		if (rc == 0) {
			fprintf(out, "%s is not suppressed\n", a->operand);
			return EX_ABSENT;
		}
		print_hit(out, a->operand, &hit);
		return EX_DONE;
	}
	if (strcmp(a->verb, "import") == 0) {
		char why[512];
		size_t n = 0;
		e.reason = a->reason ? a->reason : "imported by the operator";
		rc = suppress_import(s, a->operand, &e, &n, why, sizeof(why));
		if (rc < 0) {
			fprintf(err, "coremta suppress import: %s\n", why);
			return rc == -EINVAL ? EX_DATAERR_ : EX_UNAVAILABLE_;
		}
		fprintf(out, "imported %zu entr%s from %s\n", n, n == 1 ? "y" : "ies", a->operand);
		return EX_DONE;
	}
	if (strcmp(a->verb, "export") == 0) {
		if ((rc = suppress_export(s, out, now)) < 0)
			goto store_error;
		return EX_DONE;
	}
	if (strcmp(a->verb, "purge") == 0) {
		size_t n = 0;
		if ((rc = suppress_purge(s, now, &n)) < 0)
			goto store_error;
		fprintf(out, "purged %zu expired entr%s\n", n, n == 1 ? "y" : "ies");
		return EX_DONE;
	}
	fprintf(err, "coremta suppress: unknown verb '%s'\n", a->verb);
	usage(err);
	return EX_USAGE_;

store_error:
	fprintf(err, "coremta suppress %s: %s\n", a->verb, strerror(-rc));
	return EX_UNAVAILABLE_;
}

int engine_suppress_main(int argc, char **argv, FILE *out, FILE *err)
{
	struct args a = { 0 };
	char why[512];
	struct suppress *s;

	int prc = parse_args(argc, argv, &a, err);
	if (prc != 0) {
		usage(prc > 0 ? out : err);
		return prc > 0 ? EX_DONE : EX_USAGE_;
	}
	char *dir = store_dir(&a, err);
	if (!dir)
		return EX_CONFIG_;
	int rc = suppress_open(dir, NULL, &s, why, sizeof(why));
	free(dir);
	if (rc < 0) {
		fprintf(err, "coremta suppress: %s\n", why);
		return EX_UNAVAILABLE_;
	}
	int status = run_verb(s, &a, out, err);
	suppress_close(s);
	return status;
}
