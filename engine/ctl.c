/*
 * engine/ctl.c - `coremta ctl`: the operator's command line for a
 * running coremta, over its management port (engine/mgmt.c's JSON API)
 * with libcurl.  Human-readable tables by default, the daemon's JSON
 * with --json.  Exit status: 0 done, 1 the daemon refused or failed the
 * request (or `check` found errors), 2 it could not be reached or
 * answered nonsense, 64 bad usage.
 *
 * Main thread of the ctl process; no daemon state.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "config/config.h"
#include "engine/engine.h"
#include "util/util.h"

#define EX_OK		0
#define EX_REFUSED	1
#define EX_UNREACHABLE	2
#define EX_USAGE	64

struct ctl {
	const char *url;		/* http://host:port, no trailing slash */
	char *url_owned;
	const char *api_key;
	char *key_owned;
	bool json;
	bool insecure;			/* https: skip certificate checks */
	const char *ca;			/* https: CA file */
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: coremta ctl [options] COMMAND\n"
		"options:\n"
		"  --url=URL          management port (default http://127.0.0.1:PORT, PORT from\n"
		"                     -c FILE's http-mgmt-port, else 8080); $COREMTA_URL too\n"
		"  -c, --config=FILE  read http-mgmt-port, http-mgmt-tls and http-api-key there\n"
		"  --api-key=KEY      X-API-Key ($COREMTA_API_KEY)\n"
		"  --cacert=FILE, --insecure   for an https URL\n"
		"  --json             print the daemon's JSON answer\n"
		"commands:\n"
		"  show status|queues|topqueues|domains|vmtas|shards|jobs\n"
		"  show queues [PATTERN] [--mode=normal|backoff|paused] [--limit=N]\n"
		"  show queue DOMAIN[/VMTA]\n"
		"  pause queue PATTERN        resume queue PATTERN     (DOMAIN[/VMTA], wildcards *?[])\n"
		"  schedule [queue] PATTERN   retry its deferred recipients now\n"
		"  set queue --mode=normal|backoff PATTERN\n"
		"  delete [--queue=PATTERN] [--jobId=ID] [--rcpt=PATTERN] [--older-than=AGE] [--dsn]\n"
		"                             AGE: seconds, or a number with s, m, h or d\n"
		"  check                      check the configuration file the daemon runs\n"
		"  reload                     load, check and apply the configuration file\n"
		"  suppress VERB ...          the suppression store: add, remove, show, import,\n"
		"                             export, purge (coremta suppress --help; its exit codes)\n"
		"exit status: 0 done, 1 refused or failed, 2 unreachable, 64 usage\n");
}

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
	sb_add(arg, data, size * n);
	return size * n;
}

/*
 * request - method on path?query; the body in *body (NUL-terminated).
 * Returns the HTTP status, or -1 with *body saying why it failed.
 */
static long request(const struct ctl *ctl, const char *method, const char *path,
		    const char *query, struct strbuf *body)
{
	CURL *h = curl_easy_init();
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdr = NULL;
	long status = -1;

	if (!h) {
		sb_adds(body, "libcurl could not start");
		return -1;
	}
	char *url = xasprintf("%s%s%s%s", ctl->url, path, query && *query ? "?" : "",
			      query ? query : "");
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
	}
	if (ctl->api_key) {
		char *k = xasprintf("X-API-Key: %s", ctl->api_key);
		hdr = curl_slist_append(hdr, k);
		free(k);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	}
	if (ctl->insecure) {
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (ctl->ca)
		curl_easy_setopt(h, CURLOPT_CAINFO, ctl->ca);
	CURLcode rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		sb_reset(body);
		sb_printf(body, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
	} else {
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
		sb_addc(body, '\0');
		body->len--;
	}
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
	free(url);
	return status;
}

/* add_arg - name=value (escaped) onto a query string; NULL/"" skipped. */
static void add_arg(struct strbuf *q, const char *name, const char *value)
{
	if (!value || !*value)
		return;
	char *e = curl_easy_escape(NULL, value, 0);
	sb_printf(q, "%s%s=%s", q->len ? "&" : "", name, e);
	curl_free(e);
}

static long long jint(json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

static const char *jstr(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : dflt;
}

static void print_when(FILE *out, json_t *v)
{
	if (json_is_string(v)) {
		fprintf(out, "%-10s", json_string_value(v));
		return;
	}
	if (!json_is_integer(v)) {
		fprintf(out, "%-10s", "-");
		return;
	}
	long long d = json_integer_value(v) - (long long)time(NULL);
	char text[32];
	if (d <= 0)
		snprintf(text, sizeof(text), "now");
	else
		snprintf(text, sizeof(text), "in %llds", d);
	fprintf(out, "%-10s", text);
}

static void print_queues(FILE *out, json_t *arr)
{
	size_t i;
	json_t *q;

	fprintf(out, "%-40s %8s %8s %5s %-8s %10s %-10s %s\n", "QUEUE", "RCPTS", "DEFERRED",
		"CONNS", "MODE", "DELIVERED", "NEXT", "LAST ERROR");
	json_array_foreach(arr, i, q) {
		fprintf(out, "%-40s %8lld %8lld %5lld %-8s %10lld ", jstr(q, "queue", "?"),
			jint(q, "recipients"), jint(q, "deferred"), jint(q, "connections"),
			jstr(q, "mode", "?"), jint(q, "delivered"));
		print_when(out, json_object_get(q, "nextAttempt"));
		fprintf(out, " %s\n", jstr(q, "lastError", ""));
	}
}

static void print_status(FILE *out, json_t *j)
{
	json_t *t = json_object_get(j, "traffic"), *tot = json_object_get(j, "totals");
	json_t *in = json_object_get(t, "in"), *o = json_object_get(t, "out");

	fprintf(out, "coremta %s, up %llds, config %s, %lld shards\n", jstr(j, "version", "?"),
		jint(j, "uptime"), jstr(j, "config", "?"), jint(j, "shards"));
	fprintf(out, "received (messages)   minute %lld  hour %lld  day %lld  total %lld\n",
		jint(in, "minute"), jint(in, "hour"), jint(in, "day"), jint(tot, "received"));
	fprintf(out, "delivered (recipients) minute %lld  hour %lld  day %lld  total %lld\n",
		jint(o, "minute"), jint(o, "hour"), jint(o, "day"), jint(tot, "delivered"));
	fprintf(out, "bounced %lld  expired %lld  deferrals %lld\n", jint(tot, "bounced"),
		jint(tot, "expired"), jint(tot, "deferred"));
	fprintf(out, "queued recipients %lld; connections in %lld out %lld; spool %lld bytes\n",
		jint(json_object_get(j, "queued"), "recipients"),
		jint(json_object_get(j, "connections"), "in"),
		jint(json_object_get(j, "connections"), "out"),
		jint(json_object_get(j, "spool"), "bytes"));
}

static void print_rows(FILE *out, json_t *arr, const char *first, const char *const *cols)
{
	size_t i;
	json_t *r;

	fprintf(out, "%-32s", first);
	for (const char *const *c = cols; *c; c++)
		fprintf(out, " %12s", *c);
	fputc('\n', out);
	json_array_foreach(arr, i, r) {
		json_t *name = json_object_get(r, first);
		if (json_is_string(name))
			fprintf(out, "%-32s", json_string_value(name));
		else if (json_is_null(name))
			fprintf(out, "%-32s", "(none)");
		else
			fprintf(out, "%-32lld", (long long)json_integer_value(name));
		for (const char *const *c = cols; *c; c++) {
			json_t *v = json_object_get(r, *c);
			if (json_is_real(v))
				fprintf(out, " %12.1f", json_real_value(v));
			else
				fprintf(out, " %12lld", (long long)json_integer_value(v));
		}
		fputc('\n', out);
	}
}

/*
 * call - one request; prints the answer (JSON or text); returns the exit
 * status.  print may be NULL (a change: print its summary).
 */
static int call_keep(const struct ctl *ctl, const char *method, const char *path,
		     const char *query, void (*print)(FILE *, json_t *), json_t **keep)
{
	struct strbuf body = { 0 };
	long status = request(ctl, method, path, query, &body);

	if (status < 0) {
		fprintf(stderr, "coremta ctl: cannot reach the management port: %s\n", sb_str(&body));
		sb_free(&body);
		return EX_UNREACHABLE;
	}
	json_error_t jerr;
	json_t *j = json_loads(sb_str(&body), 0, &jerr);
	if (!j) {
		fprintf(stderr, "coremta ctl: %s%s answered HTTP %ld without JSON: %s\n", ctl->url,
			path, status, jerr.text);
		sb_free(&body);
		return EX_UNREACHABLE;
	}
	int rc = status >= 200 && status < 300 ? EX_OK : EX_REFUSED;
	if (ctl->json) {
		printf("%s\n", sb_str(&body));
	} else if (rc != EX_OK) {
		json_t *errs = json_object_get(j, "errors");
		fprintf(stderr, "coremta ctl: %s (HTTP %ld)\n", jstr(j, "error", "request failed"),
			status);
		size_t i;
		json_t *e;
		json_array_foreach(errs, i, e)
			fprintf(stderr, "%s\n", json_string_value(e));
	} else if (print) {
		print(stdout, j);
	}
	if (rc == EX_OK && !ctl->json && !print) {
		if (json_object_get(j, "action"))
			printf("%s %s: %lld queue%s, %lld recipient%s\n", jstr(j, "action", ""),
			       jstr(j, "queue", ""), jint(j, "queues"), jint(j, "queues") == 1 ? "" : "s",
			       jint(j, "recipients"), jint(j, "recipients") == 1 ? "" : "s");
		else if (json_is_true(json_object_get(j, "reloaded")))
			printf("configuration reloaded\n");
	}
	if (keep)
		*keep = j;
	else
		json_decref(j);
	sb_free(&body);
	return rc;
}

static int call(const struct ctl *ctl, const char *method, const char *path,
		const char *query, void (*print)(FILE *, json_t *))
{
	return call_keep(ctl, method, path, query, print, NULL);
}

static void show_queues(FILE *out, json_t *j)
{
	print_queues(out, json_object_get(j, "queues"));
	if (jint(j, "matched") > (long long)json_array_size(json_object_get(j, "queues")))
		fprintf(out, "(%lld queues match; --limit shows more)\n", jint(j, "matched"));
}

static void show_domains(FILE *out, json_t *j)
{
	static const char *const cols[] = { "recipients", "connections", "delivered", "bounced",
					    "deferrals", "queues", NULL };
	print_rows(out, json_object_get(j, "domains"), "domain", cols);
}

static void show_vmtas(FILE *out, json_t *j)
{
	static const char *const cols[] = { "queues", "recipients", "connections", "delivered",
					    "bounced", "expired", "deferrals", NULL };
	print_rows(out, json_object_get(j, "vmtas"), "vmta", cols);
}

static void show_shards(FILE *out, json_t *j)
{
	static const char *const cols[] = { "queues", "recipients", "connections", "cpu",
					    "ringUsed", "delivered", "deferred", NULL };
	print_rows(out, json_object_get(j, "shards"), "shard", cols);
}

static void show_jobs(FILE *out, json_t *j)
{
	static const char *const cols[] = { "recipients", "queues", NULL };
	print_rows(out, json_object_get(j, "jobs"), "jobId", cols);
}

static void show_check(FILE *out, json_t *j)
{
	size_t i;
	json_t *e;

	json_array_foreach(json_object_get(j, "errors"), i, e)
		fprintf(out, "%s\n", json_string_value(e));
	json_array_foreach(json_object_get(j, "warnings"), i, e)
		fprintf(out, "%s\n", json_string_value(e));
	fprintf(out, "%s: %zu errors, %zu warnings\n", jstr(j, "config", "?"),
		json_array_size(json_object_get(j, "errors")),
		json_array_size(json_object_get(j, "warnings")));
}

/* age_seconds - "90", "90s", "15m", "2h", "3d"; -1 if not one. */
static long long age_seconds(const char *s)
{
	char *end;
	long long n = strtoll(s, &end, 10);

	if (end == s || n < 0)
		return -1;
	long long mul = !*end ? 1 : strcmp(end, "s") == 0 ? 1 : strcmp(end, "m") == 0 ? 60
			: strcmp(end, "h") == 0 ? 3600 : strcmp(end, "d") == 0 ? 86400 : -1;
	if (mul < 0 || n > 100LL * 365 * 86400 / mul)
		return -1;
	return n * mul;
}

/* opt_value - "--name=value" or "--name value"; advances *i for the second. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
	size_t n = strlen(name);

	if (strncmp(argv[*i], name, n) != 0)
		return NULL;
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (argv[*i][n] == '\0' && *i + 1 < argc)
		return argv[++*i];
	return NULL;
}

static int bad_usage(const char *fmt, const char *what)
{
	fprintf(stderr, "coremta ctl: ");
	fprintf(stderr, fmt, what);
	fprintf(stderr, "\n");
	usage(stderr);
	return EX_USAGE;
}

static int run(struct ctl *ctl, int argc, char **argv)
{
	const char *cmd = argv[0];
	const char *what = argc > 1 ? argv[1] : NULL;
	struct strbuf q = { 0 };
	int rc;

	if (strcmp(cmd, "show") == 0 && what) {
		static const struct { const char *name, *path; void (*print)(FILE *, json_t *); } show[] = {
			{ "status", "/status", print_status },
			{ "queues", "/queues", show_queues },
			{ "topqueues", "/topqueues", show_queues },
			{ "domains", "/domains", show_domains },
			{ "vmtas", "/vmtas", show_vmtas },
			{ "shards", "/shards", show_shards },
			{ "jobs", "/jobs", show_jobs },
		};
		if (strcmp(what, "queue") == 0) {
			if (argc != 3)
				return bad_usage("show queue needs DOMAIN[/VMTA]%s", "");
			add_arg(&q, "queue", argv[2]);
			rc = call(ctl, "GET", "/queueDetail", sb_str(&q), show_queues);
			sb_free(&q);
			return rc;
		}
		for (size_t i = 0; i < sizeof(show) / sizeof(show[0]); i++) {
			if (strcmp(what, show[i].name) != 0)
				continue;
			for (int k = 2; k < argc; k++) {
				const char *v;
				if ((v = opt_value(argc, argv, &k, "--limit")))
					add_arg(&q, "limit", v);
				else if ((v = opt_value(argc, argv, &k, "--mode")))
					add_arg(&q, "mode", v);
				else if (argv[k][0] != '-' && i == 1)
					add_arg(&q, "queue", argv[k]);
				else
					return bad_usage("show: unexpected '%s'", argv[k]);
			}
			rc = call(ctl, "GET", show[i].path, sb_str(&q), show[i].print);
			sb_free(&q);
			return rc;
		}
		return bad_usage("show: unknown '%s'", what);
	}
	if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0 ||
	    strcmp(cmd, "schedule") == 0) {
		int k = 1;
		if (k < argc && strcmp(argv[k], "queue") == 0)
			k++;
		if (k + 1 != argc)
			return bad_usage("%s needs [queue] DOMAIN[/VMTA]", cmd);
		add_arg(&q, "queue", argv[k]);
		char *path = xasprintf("/%s", cmd);
		rc = call(ctl, "POST", path, sb_str(&q), NULL);
		free(path);
		sb_free(&q);
		return rc;
	}
	if (strcmp(cmd, "set") == 0) {
		const char *mode = NULL, *pat = NULL;
		if (!what || strcmp(what, "queue") != 0)
			return bad_usage("set: only 'set queue --mode=normal|backoff PATTERN'%s", "");
		for (int k = 2; k < argc; k++) {
			const char *v;
			if ((v = opt_value(argc, argv, &k, "--mode")))
				mode = v;
			else if (argv[k][0] != '-' && !pat)
				pat = argv[k];
			else
				return bad_usage("set queue: unexpected '%s'", argv[k]);
		}
		if (!mode || !pat || (strcmp(mode, "normal") && strcmp(mode, "backoff")))
			return bad_usage("set queue needs --mode=normal|backoff and a queue%s", "");
		add_arg(&q, "queue", pat);
		add_arg(&q, "mode", mode);
		rc = call(ctl, "POST", "/mode", sb_str(&q), NULL);
		sb_free(&q);
		return rc;
	}
	if (strcmp(cmd, "delete") == 0) {
		bool any = false;
		for (int k = 1; k < argc; k++) {
			const char *v;
			if ((v = opt_value(argc, argv, &k, "--queue"))) {
				add_arg(&q, "queue", v);
			} else if ((v = opt_value(argc, argv, &k, "--jobId")) ||
				   (v = opt_value(argc, argv, &k, "--jobid"))) {
				add_arg(&q, "jobId", v);
			} else if ((v = opt_value(argc, argv, &k, "--rcpt"))) {
				add_arg(&q, "rcpt", v);
			} else if ((v = opt_value(argc, argv, &k, "--older-than"))) {
				long long secs = age_seconds(v);
				if (secs < 0) {
					sb_free(&q);
					return bad_usage("delete: --older-than '%s': seconds, or a number with s, m, h or d", v);
				}
				char num[32];
				snprintf(num, sizeof(num), "%lld", secs);
				add_arg(&q, "olderThan", num);
			} else if (strcmp(argv[k], "--dsn") == 0) {
				add_arg(&q, "dsn", "1");
				continue;
			} else {
				sb_free(&q);
				return bad_usage("delete: unexpected '%s'", argv[k]);
			}
			any = true;
		}
		if (!any) {
			sb_free(&q);
			return bad_usage("delete needs --queue, --jobId, --rcpt or --older-than%s", "");
		}
		rc = call(ctl, "POST", "/delete", sb_str(&q), NULL);
		sb_free(&q);
		return rc;
	}
	if (strcmp(cmd, "check") == 0 && argc == 1) {
		json_t *j = NULL;
		rc = call_keep(ctl, "GET", "/check", NULL, show_check, &j);
		/* the daemon answered: the file's own verdict decides */
		if (rc == EX_OK && !json_is_true(json_object_get(j, "ok")))
			rc = EX_REFUSED;
		json_decref(j);
		return rc;
	}
	if (strcmp(cmd, "reload") == 0 && argc == 1)
		return call(ctl, "POST", "/reload", NULL, NULL);
	return bad_usage("unknown command '%s'", cmd);
}

/* from_config - the management port's settings in the daemon's file. */
static int from_config(struct ctl *ctl, const char *path)
{
	struct cfg *cfg = NULL;
	struct diag_list dl = { 0 };

	if (cfg_load_file(path, NULL, &cfg, &dl) < 0) {
		struct strbuf sb = { 0 };
		for (size_t i = 0; i < dl.count; i++) {
			sb_reset(&sb);
			diag_format(&dl.items[i], &sb);
			fprintf(stderr, "coremta ctl: %s\n", sb_str(&sb));
		}
		sb_free(&sb);
		diag_free(&dl);
		return -1;
	}
	diag_free(&dl);
	const struct cfg_global *g = cfg_global(cfg);
	if (!ctl->url) {
		ctl->url_owned = xasprintf("%s://127.0.0.1:%u", g->http_mgmt_tls ? "https" : "http",
					   g->http_mgmt_port);
		ctl->url = ctl->url_owned;
		/* its own certificate names this host rarely: the file vouches */
		if (g->http_mgmt_tls && !ctl->ca)
			ctl->insecure = true;
	}
	if (!ctl->api_key && g->http_api_key)
		ctl->api_key = ctl->key_owned = xstrdup(g->http_api_key);
	cfg_free(cfg);
	return 0;
}

int engine_ctl_main(int argc, char **argv)
{
	struct ctl ctl = { .url = getenv("COREMTA_URL"), .api_key = getenv("COREMTA_API_KEY") };
	const char *config = NULL;
	int i = 1;

	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *v;
		if (strcmp(argv[i], "--json") == 0)
			ctl.json = true;
		else if (strcmp(argv[i], "--insecure") == 0)
			ctl.insecure = true;
		else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return EX_OK;
		} else if ((v = opt_value(argc, argv, &i, "--url")))
			ctl.url = v;
		else if ((v = opt_value(argc, argv, &i, "--api-key")))
			ctl.api_key = v;
		else if ((v = opt_value(argc, argv, &i, "--cacert")))
			ctl.ca = v;
		else if ((v = opt_value(argc, argv, &i, "--config")) ||
			 (v = opt_value(argc, argv, &i, "-c")))
			config = v;
		else
			return bad_usage("unknown option '%s'", argv[i]);
	}
	if (i == argc)
		return bad_usage("a command is needed%s", "");
	if (strcmp(argv[i], "suppress") == 0) {
		/* the store is LMDB, shared safely with the running daemon:
		 * no round trip through the port (engine/suppress_cmd.c) */
		char **sargv = xcalloc((size_t)(argc - i) + 3, sizeof(char *));
		int sn = 0;
		sargv[sn++] = argv[i];
		if (config) {
			sargv[sn++] = (char *)"-c";
			sargv[sn++] = (char *)config;
		}
		for (int k = i + 1; k < argc; k++)
			sargv[sn++] = argv[k];
		int rc = engine_suppress_main(sn, sargv, stdout, stderr);
		free(sargv);
		return rc;
	}
	if (config && from_config(&ctl, config) < 0)
		return EX_USAGE;
	if (!ctl.url)
		ctl.url = "http://127.0.0.1:8080";
	/* --json goes after the command too, as scripts tend to write it */
	int n = 0;
	char **args = xcalloc((size_t)(argc - i) + 1, sizeof(char *));
	for (int k = i; k < argc; k++) {
		if (strcmp(argv[k], "--json") == 0)
			ctl.json = true;
		else
			args[n++] = argv[k];
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	int rc = run(&ctl, n, args);
	curl_global_cleanup();
	free(args);
	free(ctl.url_owned);
	free(ctl.key_owned);
	return rc;
}
