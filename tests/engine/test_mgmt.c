/*
 * tests/engine/test_mgmt.c - the management plane end to end: the daemon
 * (sanitizer build) with http-mgmt-port, real mail through it to
 * scripted receivers (tests/lib/smtp_peer) on 127.0.0.14x, the HTTP API
 * read with libcurl, and `coremta ctl` run as an operator would.  Covers
 * access control (http-access, X-API-Key, GET/POST), JSON errors, the
 * queue commands and what they do to delivery, delete's accounting
 * records, /metrics, `ctl check` and `ctl reload`.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/lib/smtp_peer.h"
#include "tests/lib/testlib.h"

/* the management tests tag messages with X-Job */
#define CONF_MGMT TESTLIB_CONF_RELAY("    process-x-job yes\n")

/* get_json - GET path, expecting 200 and JSON. */
static json_t *get_json(int port, const char *path)
{
	long status;
	char *body = testlib_http(port, "GET", path, NULL, NULL, &status);
	json_t *j = json_loads(body, 0, NULL);

	cr_assert_eq(status, 200, "GET %s: HTTP %ld: %s", path, status, body);
	cr_assert_not_null(j, "GET %s: not JSON: %s", path, body);
	free(body);
	return j;
}

/* expect_json_error - the answer is status with {"error": "...needle..."}. */
static void expect_json_error(int port, const char *method, const char *path, const char *from,
			      const char *key, long want, const char *needle)
{
	long status;
	char *body = testlib_http(port, method, path, from, key, &status);
	json_t *j = json_loads(body, 0, NULL);

	cr_expect_eq(status, want, "%s %s: HTTP %ld, expected %ld: %s", method, path, status,
		     want, body);
	cr_expect_not_null(j, "%s %s: the error is not JSON: %s", method, path, body);
	const char *e = json_string_value(json_object_get(j, "error"));
	cr_expect(e && strstr(e, needle), "%s %s: error '%s' does not say '%s'", method, path,
		  e ? e : "(none)", needle);
	cr_expect_eq(json_integer_value(json_object_get(j, "status")), want);
	json_decref(j);
	free(body);
}

/* ctl - run `coremta ctl --url=... ARGS`; its exit status, stdout in *out. */
static int ctl(int port, const char *const *args, char **out)
{
	const char *argv[24] = { testlib_coremta_bin(), "ctl" };
	char *url = xasprintf("--url=http://127.0.0.1:%d", port);
	int n = 2;
	char *err = NULL;

	argv[n++] = url;
	for (; *args && n < 23; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	int rc = testlib_run(argv, 30, out, &err);
	if (rc != 0 && getenv("SHOW_LOG"))
		fprintf(stderr, "ctl stderr: %s\n", err);
	free(err);
	free(url);
	return rc;
}

static void send_to(const struct testlib_daemon *d, const char *rcpt, const char *job)
{
	char *hdr = job ? xasprintf("X-Job: %s\r\n", job) : NULL;

	cr_assert_eq(testlib_send(d->port, rcpt, hdr), 250, "injecting mail for %s failed", rcpt);
	free(hdr);
}

static void finish(struct testlib_daemon *d, char *conf)
{
	testlib_daemon_finish(d);
	free(conf);
}

/* queue_field - an integer field of the one queue /queueDetail shows. */
static long long queue_field(int port, const char *queue, const char *field)
{
	char *path = xasprintf("/queueDetail?queue=%s", queue);
	json_t *j = get_json(port, path);
	json_t *q = json_array_get(json_object_get(j, "queues"), 0);
	long long v = json_integer_value(json_object_get(q, field));

	json_decref(j);
	free(path);
	return v;
}

static char *queue_mode(int port, const char *queue)
{
	char *path = xasprintf("/queueDetail?queue=%s", queue);
	json_t *j = get_json(port, path);
	json_t *q = json_array_get(json_object_get(j, "queues"), 0);
	char *mode = xstrdup(json_string_value(json_object_get(q, "mode")) ?: "?");

	json_decref(j);
	free(path);
	return mode;
}

struct queue_want {
	int port;
	const char *queue, *field;
	long long want;
};

static bool queue_reached(void *arg)
{
	const struct queue_want *w = arg;

	return queue_field(w->port, w->queue, w->field) == w->want;
}

/* wait_queue - until the queue's field reaches want (true) or timeout_ms. */
static bool wait_queue(int port, const char *queue, const char *field, long long want,
		       int timeout_ms)
{
	struct queue_want w = { port, queue, field, want };

	return testlib_wait_until(queue_reached, &w, timeout_ms);
}

/* a receiver that defers every recipient: mail stays queued */
static const struct smtp_peer_rule defer_all[] = {
	{ .cmd = SMTP_PEER_RCPT, .reply = "451 4.7.1 greylisted, come back later" },
};

/* Port 0, or no http-access line granting anything: nothing listens. */
Test(mgmt, nothing_listens_without_port_or_access, .timeout = 60)
{
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 none\n", hport);

	testlib_daemon_start_or_fail(&d, conf);
	cr_expect_lt(testlib_dial(hport), 0, "port %d answers though http-access grants nothing",
		     hport);
	cr_expect_eq(testlib_log_lines(&d, "management port", NULL), 0);
	finish(&d, conf);

	struct testlib_daemon d0 = { 0 };
	conf = xasprintf(CONF_MGMT "http-mgmt-port 0\nhttp-access 127.0.0.1 admin\n");
	testlib_daemon_start_or_fail(&d0, conf);
	cr_expect_eq(testlib_log_lines(&d0, "management port", NULL), 0,
		     "http-mgmt-port 0 started the management port");
	finish(&d0, conf);
}

/*
 * http-access top-down: 127.0.0.1 may read but not change, 127.0.0.141
 * may change, 127.0.0.142 (the 0/0 line after) nothing.  Methods and
 * unknown paths get JSON errors.
 */
Test(mgmt, access_levels_methods_and_errors, .timeout = 60)
{
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\n"
			       "http-access 127.0.0.1 monitor\n"
			       "http-access 127.0.0.141 operator\n"
			       "http-access 0/0 none\n", hport);

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert(testlib_wait_log(&d, "management port", NULL, 1, 5000));
	json_t *j = get_json(hport, "/status");
	cr_expect_str_eq(json_string_value(json_object_get(j, "version")), COREMTA_VERSION);
	json_decref(j);
	expect_json_error(hport, "POST", "/pause?queue=x.test", NULL, NULL, 403,
			  "/pause needs http-access operator; this address has monitor");
	expect_json_error(hport, "GET", "/status", "127.0.0.142", NULL, 403,
			  "gives this address no access");
	expect_json_error(hport, "POST", "/status", NULL, NULL, 405, "takes GET");
	expect_json_error(hport, "GET", "/pause?queue=x.test", "127.0.0.141", NULL, 405,
			  "takes POST");
	expect_json_error(hport, "GET", "/no-such-thing", NULL, NULL, 404, "no such resource");
	/* regression: bytes that are not UTF-8 in the path once made json_pack fail */
	expect_json_error(hport, "GET", "/no%FFsuch", NULL, NULL, 404, "no such resource: /no?such");
	expect_json_error(hport, "POST", "/pause?queue=%C3%28.test", "127.0.0.141", NULL, 404,
			  "no queue matches '?(.test/*'");
	expect_json_error(hport, "POST", "/pause", "127.0.0.141", NULL, 400,
			  "missing 'queue' argument");
	expect_json_error(hport, "POST", "/delete", "127.0.0.141", NULL, 400,
			  "delete needs queue, jobId, rcpt or olderThan");
	expect_json_error(hport, "POST", "/mode?queue=x.test&mode=fast", "127.0.0.141", NULL, 400,
			  "'mode' must be normal or backoff");
	expect_json_error(hport, "GET", "/queues?limit=-1", NULL, NULL, 400, "bad 'limit'");
	expect_json_error(hport, "POST", "/reload", "127.0.0.141", NULL, 403, "needs http-access admin");
	/* the operator gets through to the shards, which know no such queue */
	expect_json_error(hport, "POST", "/pause?queue=x.test", "127.0.0.141", NULL, 404,
			  "no queue matches 'x.test/*'");
	/* ctl exit codes: refused 1, unreachable 2, usage 64 */
	char *out = NULL;
	cr_expect_eq(ctl(hport, (const char *[]){ "pause", "queue", "x.test", NULL }, &out), 1);
	free(out);
	int closed_fd, closed = testlib_reserve_port(NULL, &closed_fd);	/* nothing listens */
	cr_expect_eq(ctl(closed, (const char *[]){ "show", "status", NULL }, &out), 2);
	close(closed_fd);
	free(out);
	cr_expect_eq(ctl(hport, (const char *[]){ "frobnicate", NULL }, &out), 64);
	free(out);
	cr_expect_eq(ctl(hport, (const char *[]){ "show", "status", NULL }, &out), 0);
	cr_expect(strstr(out, "coremta " COREMTA_VERSION), "%s", out);
	free(out);
	finish(&d, conf);
}

/* http-api-key: without it or with a wrong one 401, with it the answer. */
Test(mgmt, api_key_is_required_when_set, .timeout = 60)
{
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 admin\n"
			       "http-api-key s3cret-key\n", hport);

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert(testlib_wait_log(&d, "management port", NULL, 1, 5000));
	expect_json_error(hport, "GET", "/status", NULL, NULL, 401, "X-API-Key");
	expect_json_error(hport, "GET", "/status", NULL, "s3cret-kez", 401, "X-API-Key");
	expect_json_error(hport, "GET", "/status", NULL, "s3cret-key-", 401, "X-API-Key");
	long status;
	char *body = testlib_http(hport, "GET", "/status", NULL, "s3cret-key", &status);
	cr_expect_eq(status, 200, "%s", body);
	free(body);
	/* ctl -c FILE reads the port and the key from the daemon's file */
	const char *argv[] = { testlib_coremta_bin(), "ctl", "-c", d.conf, "show", "status", NULL };
	char *out = NULL, *err = NULL;
	cr_expect_eq(testlib_run(argv, 30, &out, &err), 0, "%s", err);
	free(out);
	free(err);
	/* POST /reload swaps the file in; a broken file changes nothing and
	 * the answer (and ctl's output, exit 1) names every file:line */
	body = testlib_http(hport, "POST", "/reload", NULL, "s3cret-key", &status);
	cr_expect_eq(status, 200, "%s", body);
	cr_expect(strstr(body, "\"reloaded\": true") || strstr(body, "\"reloaded\":true"), "%s", body);
	free(body);
	char *good = testlib_read_file(d.conf);
	char *broken = xasprintf("%smax-smtp-out lots\n", good);
	FILE *cf = fopen(d.conf, "w");
	cr_assert_not_null(cf);
	fputs(broken, cf);
	fclose(cf);
	const char *rl[] = { testlib_coremta_bin(), "ctl", "--url", NULL, "--api-key",
			     "s3cret-key", "reload", NULL };
	char *url = xasprintf("http://127.0.0.1:%d", hport);
	rl[3] = url;
	cr_expect_eq(testlib_run(rl, 30, &out, &err), 1, "ctl reload of a broken file: %s%s", out, err);
	cr_expect(strstr(out, "coremta.conf:") || strstr(err, "coremta.conf:"),
		  "no file:line in: %s%s", out, err);
	free(out), free(err);
	cf = fopen(d.conf, "w");
	cr_assert_not_null(cf);
	fputs(good, cf);
	fclose(cf);
	cr_expect_eq(testlib_run(rl, 30, &out, &err), 0, "ctl reload: %s%s", out, err);
	free(out), free(err), free(url), free(good), free(broken);
	finish(&d, conf);
}

/*
 * The queue commands on live traffic.  held.test's receiver defers every
 * RCPT (so its recipients wait), ok.test's accepts.  pause stops
 * delivery, resume and schedule bring it back at once, set queue --mode
 * switches backoff, and delete bounces the picked recipients with a b
 * record each (and only those).
 */
Test(mgmt, queue_commands_act_on_the_owning_shard, .timeout = 120)
{
	struct smtp_peer *held = testlib_peer_on("127.0.0.143", defer_all, 1);
	struct smtp_peer *ok = testlib_peer_on("127.0.0.144", NULL, 0);
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 admin\n"
		"<acct-file @DIR@/acct.csv>\n    records d,b\n</acct-file>\n"
		"<domain held.test>\n    smtp-hosts [127.0.0.143]:%d\n    retry-after 1h\n</domain>\n"
		"<domain ok.test>\n    smtp-hosts [127.0.0.144]:%d\n    retry-after 1h\n</domain>\n",
		hport, smtp_peer_port(held), smtp_peer_port(ok));

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 4; i++) {
		char rcpt[64];
		snprintf(rcpt, sizeof(rcpt), "u%d@held.test", i);
		send_to(&d, rcpt, i < 2 ? "job-a" : "job-b");
	}
	cr_assert(wait_queue(hport, "held.test", "deferred", 4, 10000),
		  "held.test never showed 4 deferred recipients");
	char *out = NULL;
	json_t *j = get_json(hport, "/queueDetail?queue=held.test");
	json_t *q = json_array_get(json_object_get(j, "queues"), 0);
	cr_expect(strstr(json_string_value(json_object_get(q, "lastError")) ?: "", "451 4.7.1 greylisted"),
		  "lastError: %s", json_string_value(json_object_get(q, "lastError")));
	cr_expect(json_integer_value(json_object_get(q, "nextAttempt")) > time(NULL) + 3000,
		  "the next attempt is not an hour away");
	/* a rate over windows of a minute or more: nothing delivered, 0 */
	cr_expect(json_is_integer(json_object_get(q, "deliveredPerMinute")));
	cr_expect_eq(json_integer_value(json_object_get(q, "deliveredPerMinute")), 0);
	json_decref(j);

	/* a queue that does not exist: exit 1, not a silent success */
	cr_expect_eq(ctl(hport, (const char *[]){ "pause", "queue", "ok.test", NULL }, &out), 1);
	free(out);
	/* pause ok.test: mail for it waits; resume: it goes at once */
	send_to(&d, "first@ok.test", NULL);
	cr_assert_eq(smtp_peer_wait_messages(ok, 1, 10000), 0);
	cr_assert_eq(ctl(hport, (const char *[]){ "pause", "queue", "ok.*", NULL }, &out), 0);
	cr_expect(strstr(out, "pause ok.*/*: 1 queue"), "%s", out);
	free(out);
	char *mode = queue_mode(hport, "ok.test");
	cr_expect_str_eq(mode, "paused");
	free(mode);
	send_to(&d, "a@ok.test", NULL);
	send_to(&d, "b@ok.test", NULL);
	cr_expect(wait_queue(hport, "ok.test", "ready", 2, 5000), "the paused queue holds nothing");
	cr_expect(testlib_peer_stays(ok, 1, 500), "a paused queue delivered");
	cr_assert_eq(ctl(hport, (const char *[]){ "resume", "queue", "ok.test", NULL }, &out), 0);
	free(out);
	cr_expect_eq(smtp_peer_wait_messages(ok, 3, 10000), 0, "resume did not deliver");

	/* set queue --mode: backoff and back */
	cr_assert_eq(ctl(hport, (const char *[]){ "set", "queue", "--mode=backoff", "held.test", NULL },
			 &out), 0);
	free(out);
	mode = queue_mode(hport, "held.test");
	cr_expect_str_eq(mode, "backoff");
	free(mode);
	/* the log writer is a thread of its own: the line lands a moment later */
	cr_expect(testlib_wait_log(&d, "queue=held.test/", "mode=backoff", 1, 5000));
	cr_expect_eq(testlib_log_lines(&d, "queue=held.test/", "mode=backoff"), 1);
	cr_assert_eq(ctl(hport, (const char *[]){ "set", "queue", "--mode=normal", "held.test", NULL },
			 &out), 0);
	free(out);
	mode = queue_mode(hport, "held.test");
	cr_expect_str_eq(mode, "normal");
	free(mode);

	/* schedule: an hour early, every deferred recipient is tried again */
	size_t before = smtp_peer_count_replies(held, SMTP_PEER_RCPT, "451");
	cr_assert_eq(ctl(hport, (const char *[]){ "schedule", "held.test", NULL }, &out), 0);
	free(out);
	cr_expect(wait_queue(hport, "held.test", "deferrals", 8, 10000),
		  "schedule did not retry the 4 recipients");
	cr_expect_eq(smtp_peer_count_replies(held, SMTP_PEER_RCPT, "451"), before + 4);

	/* /jobs: queued recipients per X-Job */
	j = get_json(hport, "/jobs");
	json_t *jobs = json_object_get(j, "jobs");
	cr_expect_eq(json_array_size(jobs), 2, "%zu jobs", json_array_size(jobs));
	for (size_t i = 0; i < json_array_size(jobs); i++) {
		json_t *job = json_array_get(jobs, i);
		const char *id = json_string_value(json_object_get(job, "jobId"));
		cr_expect(id && (strcmp(id, "job-a") == 0 || strcmp(id, "job-b") == 0), "job %s", id);
		cr_expect_eq(json_integer_value(json_object_get(job, "recipients")), 2);
	}
	json_decref(j);

	/* delete by job: two bounce with a b record each; the other two stay */
	cr_assert_eq(ctl(hport, (const char *[]){ "--json", "delete", "--jobId=job-a", NULL }, &out), 0);
	j = json_loads(out, 0, NULL);
	cr_expect_eq(json_integer_value(json_object_get(j, "recipients")), 2, "%s", out);
	json_decref(j);
	free(out);
	cr_expect(wait_queue(hport, "held.test", "recipients", 2, 5000));
	cr_expect_eq(queue_field(hport, "held.test", "bounced"), 2);
	char *acct_path = xasprintf("%s/acct.csv", d.dir);
	bool found = testlib_wait_file(acct_path, "deleted by the operator", 2, 5000);
	char *acct = testlib_read_file(acct_path);
	cr_expect(!strstr(acct, "u2@held.test,,failed"), "a job-b recipient was deleted");
	free(acct);
	cr_expect(found, "no b record for each deleted recipient");
	free(acct_path);
	/* deleting by rcpt pattern takes the rest */
	cr_assert_eq(ctl(hport, (const char *[]){ "delete", "--rcpt=u*@held.test", NULL }, &out), 0);
	cr_expect(strstr(out, "2 recipients"), "%s", out);
	free(out);
	cr_expect(wait_queue(hport, "held.test", "recipients", 0, 5000));
	finish(&d, conf);
	smtp_peer_free(held);
	smtp_peer_free(ok);
}

struct metric_want {
	int port;
	const char *name;
	double want;
};

/* metric_reached - /metrics on the port sums want for the name. */
static bool metric_reached(void *arg)
{
	const struct metric_want *w = arg;
	long status;
	char *text = testlib_http(w->port, "GET", "/metrics", NULL, NULL, &status);
	bool ok = status == 200 && testlib_sum_metric(text, w->name) == w->want;

	free(text);
	return ok;
}

/*
 * /metrics after real traffic: counters by shard and vmta add up to
 * what was delivered, histograms are cumulative with _count = +Inf, and
 * the per-domain series stay bounded (12 queues, at most 10 series).
 */
Test(mgmt, metrics_add_up_and_stay_bounded, .timeout = 90)
{
	struct smtp_peer *ok = testlib_peer_on("127.0.0.145", NULL, 0);
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 monitor\n"
		"<virtual-mta v1>\n    smtp-source-host 127.0.0.1 mta.test.invalid\n</virtual-mta>\n"
		"<domain *>\n    smtp-hosts [127.0.0.145]:%d\n</domain>\n",
		hport, smtp_peer_port(ok));

	testlib_daemon_start_or_fail(&d, conf);
	for (int i = 0; i < 12; i++) {
		char rcpt[64];
		snprintf(rcpt, sizeof(rcpt), "r@d%d.test", i);
		send_to(&d, rcpt, NULL);
	}
	cr_assert_eq(smtp_peer_wait_messages(ok, 12, 15000), 0);
	struct metric_want w = { hport, "coremta_delivered_total", 12 };
	testlib_wait_until(metric_reached, &w, 5000);
	long status;
	char *text = testlib_http(hport, "GET", "/metrics", NULL, NULL, &status);
	cr_assert_eq(status, 200);
	cr_expect_eq(testlib_sum_metric(text, "coremta_delivered_total"), 12, "%s", text);
	cr_expect(strstr(text, "coremta_delivered_total{shard=\"0\",vmta=\"{default}\"}"), "%s", text);
	cr_expect(strstr(text, "# TYPE coremta_delivery_latency_seconds histogram\n"), "%s", text);
	cr_expect_eq(testlib_sum_metric(text, "coremta_delivery_latency_seconds_count"), 12);
	cr_expect_geq(testlib_sum_metric(text, "coremta_fsync_batch_seconds_count"), 1);
	cr_expect_geq(testlib_sum_metric(text, "coremta_dns_latency_seconds_count"), 12, "%s", text);
	/* the +Inf bucket is the count */
	const char *inf = strstr(text, "coremta_delivery_latency_seconds_bucket{le=\"+Inf\"} ");
	cr_assert_not_null(inf);
	cr_expect_eq(strtod(strchr(inf, ' ') + 1, NULL), 12);
	size_t series = 0;
	for (const char *p = text; (p = strstr(p, "\ncoremta_top_queue_recipients{")); p++)
		series++;
	cr_expect_leq(series, 10, "%zu per-domain series", series);
	cr_expect(strstr(text, "coremta_received_messages_total{intake=\"0\"} 12"), "%s", text);
	free(text);
	/* the JSON figures agree */
	json_t *j = get_json(hport, "/status");
	cr_expect_eq(json_integer_value(json_object_get(json_object_get(j, "totals"), "delivered")), 12);
	cr_expect_eq(json_integer_value(json_object_get(
			     json_object_get(json_object_get(j, "traffic"), "in"), "minute")), 12);
	json_decref(j);
	j = get_json(hport, "/vmtas");
	json_t *v0 = json_array_get(json_object_get(j, "vmtas"), 0);
	cr_expect_str_eq(json_string_value(json_object_get(v0, "vmta")), "v1");
	json_decref(j);
	j = get_json(hport, "/domains?limit=5");
	cr_expect_eq(json_array_size(json_object_get(j, "domains")), 5);
	cr_expect_eq(json_integer_value(json_object_get(j, "matched")), 12);
	json_decref(j);
	j = get_json(hport, "/shards");
	cr_expect_eq(json_array_size(json_object_get(j, "shards")), 2);
	json_decref(j);
	finish(&d, conf);
	smtp_peer_free(ok);
}

/* shard_arena - shard i's "arena" and "arenaAllocated" in /shards; false: none. */
static bool shard_arena(int port, size_t i, long long *arena, long long *allocated)
{
	json_t *j = get_json(port, "/shards");
	json_t *sh = json_array_get(json_object_get(j, "shards"), i);
	json_t *a = json_object_get(sh, "arena");
	bool ok = json_is_integer(a);

	*arena = json_integer_value(a);
	*allocated = json_integer_value(json_object_get(sh, "arenaAllocated"));
	json_decref(j);
	return ok;
}

/*
 * send_rcpts - one message to n recipients u<first..>@domain, pipelined
 * through testlib_send's single RCPT line.
 */
static void send_rcpts(const struct testlib_daemon *d, const char *domain, int first, int n)
{
	struct strbuf to = { 0 };

	for (int i = 0; i < n; i++)
		sb_printf(&to, "%su%d@%s", i ? ">\r\nRCPT TO:<" : "", first + i, domain);
	cr_assert_eq(testlib_send(d->port, sb_str(&to), NULL), 250,
		     "injecting %d recipients for %s failed", n, domain);
	sb_free(&to);
}

/*
 * The release build (jemalloc): each shard allocates from an arena of its
 * own (issue 16), so what it holds lands there and nowhere else.  1,000
 * recipients deferred by shard 0 (32-byte qrcpts, at least 32 KB: more
 * than a thread cache can hide) grow shard 0's arena, not shard 1's.
 */
Test(mgmt, shards_allocate_from_their_own_arenas, .timeout = 120)
{
	const char *release = getenv("COREMTA_RELEASE_BIN");
	cr_assert(release && *release && access(release, X_OK) == 0,
		  "COREMTA_RELEASE_BIN (the jemalloc build) is not set or not there: %s",
		  release ? release : "(unset)");
	setenv("COREMTA_BIN", release, 1);
	struct smtp_peer *held = testlib_peer_on("127.0.0.148", defer_all, 1);
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 monitor\n"
		"<shard 0>\n    domain zero.test\n</shard>\n"
		"<shard 1>\n    domain one.test\n</shard>\n"
		"<domain *>\n    smtp-hosts [127.0.0.148]:%d\n    retry-after 1h\n</domain>\n",
		hport, smtp_peer_port(held));

	testlib_daemon_start_or_fail(&d, conf);
	/* one recipient each, so both shards have run their queue code once */
	send_rcpts(&d, "zero.test", 1000, 1);
	send_rcpts(&d, "one.test", 1000, 1);
	cr_assert(wait_queue(hport, "zero.test", "deferred", 1, 10000));
	cr_assert(wait_queue(hport, "one.test", "deferred", 1, 10000));
	long long a0, a1, before0, before1, after0, after1;
	cr_assert(shard_arena(hport, 0, &a0, &before0), "shard 0 reports no arena of its own");
	cr_assert(shard_arena(hport, 1, &a1, &before1), "shard 1 reports no arena of its own");
	/* arena 0 is jemalloc's first automatic arena, shared by other threads */
	cr_expect(a0 > 0 && a1 > 0 && a0 != a1, "shard arenas %lld and %lld", a0, a1);
	for (int m = 0; m < 10; m++)
		send_rcpts(&d, "zero.test", m * 100, 100);
	cr_assert(wait_queue(hport, "zero.test", "deferred", 1001, 20000),
		  "zero.test never showed 1001 deferred recipients");
	cr_assert(shard_arena(hport, 0, &a0, &after0));
	cr_assert(shard_arena(hport, 1, &a1, &after1));
	cr_expect_geq(after0 - before0, 1000 * 32,
		      "shard 0's arena grew by %lld bytes for 1,000 queued recipients",
		      after0 - before0);
	cr_expect_lt(after1 - before1, (after0 - before0) / 2,
		     "shard 1's arena grew by %lld bytes, shard 0's by %lld: not its recipients",
		     after1 - before1, after0 - before0);
	finish(&d, conf);
	smtp_peer_free(held);
}

/* ctl check loads the file the daemon runs and names file:line errors. */
Test(mgmt, check_reports_the_running_files_errors, .timeout = 60)
{
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 admin\n", hport);

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert(testlib_wait_log(&d, "management port", NULL, 1, 5000));
	char *out = NULL;
	cr_expect_eq(ctl(hport, (const char *[]){ "check", NULL }, &out), 0);
	cr_expect(strstr(out, ": 0 errors"), "%s", out);
	free(out);
	/* the operator breaks the file on disk: check says where */
	char *text = testlib_read_file(d.conf);
	char *broken = xasprintf("%shttp-mgmt-port lots\n", text);
	free(text);
	FILE *f = fopen(d.conf, "w");
	fputs(broken, f);
	fclose(f);
	int line = 0;
	for (const char *p = broken; *p; p++)
		line += *p == '\n';
	cr_expect_eq(ctl(hport, (const char *[]){ "check", NULL }, &out), 1);
	char *where = xasprintf("coremta.conf:%d:", line);
	cr_expect(strstr(out, where), "no %s in: %s", where, out);
	free(where);
	free(out);
	free(broken);
	finish(&d, conf);
}

/* http-mgmt-tls: HTTPS with the listener's certificate, and no plain HTTP. */
Test(mgmt, tls_with_the_listeners_certificate, .timeout = 60)
{
	char *cert = testlib_read_file("data/tls-localhost.pem");
	char *key = testlib_read_file("data/tls-localhost.key");
	cr_assert(cert[0] && key[0], "tests/data fixtures missing");
	char *dir = testlib_tmpdir();
	char *both = xasprintf("%s%s", cert, key);
	char *pem = testlib_write(dir, "server.pem", both);
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "smtp-server-tls-certificate %s\n"
			       "http-mgmt-port %d\nhttp-mgmt-tls yes\nhttp-access 127.0.0.1 monitor\n",
			       pem, hport);

	testlib_daemon_start_or_fail(&d, conf);
	cr_assert(testlib_wait_log(&d, "management port", "(https)", 1, 5000));
	long status;
	char *url = xasprintf("https://127.0.0.1:%d/status", hport);
	char *body = testlib_http_url(url, "GET", NULL, NULL, &status);
	cr_expect_eq(status, 200, "HTTPS: %ld %s", status, body);
	cr_expect(strstr(body, "\"version\":\"" COREMTA_VERSION "\""), "%s", body);
	free(body);
	body = testlib_http(hport, "GET", "/status", NULL, NULL, &status);
	cr_expect_neq(status, 200, "plain HTTP answered on the TLS port");
	free(body);
	/* ctl -c: https from the file, the certificate taken on the file's word */
	const char *argv[] = { testlib_coremta_bin(), "ctl", "-c", d.conf, "show", "status", NULL };
	char *out = NULL, *err = NULL;
	cr_expect_eq(testlib_run(argv, 30, &out, &err), 0, "%s", err);
	free(out);
	free(err);
	free(url);
	finish(&d, conf);
	testlib_rmrf(dir);
	free(dir);
	free(pem);
	free(both);
	free(cert);
	free(key);
}

/* ---- the web monitor in a real browser ---- */

struct load {
	int port;
	int n;
	int sent;
};

static void *load_main(void *arg)
{
	struct load *l = arg;

	for (int i = 0; i < l->n; i++) {
		char rcpt[64];
		snprintf(rcpt, sizeof(rcpt), "r%d@slow.test", i);
		if (testlib_send(l->port, rcpt, NULL) == 250)
			l->sent++;
	}
	return NULL;
}

static long long status_delivered(int port)
{
	json_t *j = get_json(port, "/status");
	long long v = json_integer_value(json_object_get(json_object_get(j, "totals"), "delivered"));

	json_decref(j);
	return v;
}

/* element_text - the text of <tag id="id"...>...</ (no nesting), or NULL. */
static char *element_text(const char *dom, const char *id)
{
	char *needle = xasprintf("id=\"%s\"", id);
	const char *p = strstr(dom, needle);

	free(needle);
	if (!p || !(p = strchr(p, '>')))
		return NULL;
	const char *end = strstr(p + 1, "</");
	return end ? xstrndup(p + 1, (size_t)(end - p - 1)) : NULL;
}

/* chromium - headless, on url; extra is --dump-dom or --screenshot=FILE. */
static int chromium(const char *dir, const char *url, const char *extra, char **out)
{
	char *profile = xasprintf("--user-data-dir=%s/chromium", dir);
	const char *argv[] = { "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
			       "--disable-dev-shm-usage", "--no-first-run", profile,
			       "--window-size=1280,900", "--virtual-time-budget=5000", extra, url,
			       NULL };
	char *err = NULL;
	int rc = testlib_run(argv, 90, out, &err);

	if (rc != 0)
		fprintf(stderr, "chromium: %s\n", err);
	free(err);
	free(profile);
	return rc;
}

/*
 * The monitor page, loaded in headless chromium while mail flows through
 * the daemon: a screenshot is taken, and the DOM shows the live figures
 * (the delivered total between what the API said before and after, the
 * busy queue, the backoff queue, both shards), with no script error.
 */
Test(mgmt, web_monitor_in_chromium_under_load, .timeout = 240)
{
	static const struct smtp_peer_rule slow[] = {
		{ .cmd = SMTP_PEER_DATA_END, .delay_ms = 20 },
	};
	if (access("/usr/bin/chromium", X_OK) != 0)
		cr_assert_fail("/usr/bin/chromium is missing: apt-get install chromium, or `make deps`");
	struct smtp_peer *sink = testlib_peer_on("127.0.0.146", slow, 1);
	struct smtp_peer *held = testlib_peer_on("127.0.0.147", defer_all, 1);
	int hport = testlib_reserve_port(NULL, NULL);
	struct testlib_daemon d = { 0 };
	char *conf = xasprintf(CONF_MGMT "http-mgmt-port %d\nhttp-access 127.0.0.1 admin\n"
		"<domain slow.test>\n    smtp-hosts [127.0.0.146]:%d\n    max-smtp-out 2\n</domain>\n"
		"<domain held.test>\n    smtp-hosts [127.0.0.147]:%d\n    retry-after 1h\n</domain>\n",
		hport, smtp_peer_port(sink), smtp_peer_port(held));

	testlib_daemon_start_or_fail(&d, conf);
	send_to(&d, "h@held.test", NULL);
	cr_assert(wait_queue(hport, "held.test", "deferred", 1, 10000));
	char *out = NULL;
	cr_assert_eq(ctl(hport, (const char *[]){ "set", "queue", "--mode=backoff", "held.test", NULL },
			 &out), 0);
	free(out);
	struct load l = { .port = d.port, .n = 400 };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, load_main, &l), 0);
	cr_assert_eq(smtp_peer_wait_messages(sink, 20, 30000), 0, "no traffic flows");
	long long before = status_delivered(hport);
	char *url = xasprintf("http://127.0.0.1:%d/", hport);
	char *shot = getenv("COREMTA_MONITOR_SCREENSHOT")
		     ? xstrdup(getenv("COREMTA_MONITOR_SCREENSHOT"))
		     : xasprintf("%s/monitor.png", d.dir);
	char *shot_arg = xasprintf("--screenshot=%s", shot);
	char *dom = NULL;
	cr_expect_eq(chromium(d.dir, url, shot_arg, &out), 0);
	free(out);
	cr_assert_eq(chromium(d.dir, url, "--dump-dom", &dom), 0);
	long long after = status_delivered(hport);
	pthread_join(t, NULL);

	/* the screenshot is a real PNG of some size */
	char *png = testlib_read_file(shot);
	cr_expect(memcmp(png, "\x89PNG", 4) == 0, "the screenshot is not a PNG");
	free(png);
	/* the script ran and filled the page from the API */
	cr_expect(strstr(dom, "data-updated=\""), "the page never refreshed:\n%s", dom);
	char *err = element_text(dom, "err");
	cr_expect(err && !*err, "the page shows an error: %s", err ? err : "(no #err)");
	free(err);
	char *version = element_text(dom, "version");
	cr_expect(version && strstr(version, COREMTA_VERSION), "version: %s", version);
	free(version);
	char *totals = element_text(dom, "totals");
	cr_assert_not_null(totals);
	/* "1,234 / 0 / 0": the delivered figure, live from the daemon */
	long long shown = 0;
	for (const char *p = totals; *p && *p != '/'; p++)
		if (*p >= '0' && *p <= '9')
			shown = shown * 10 + (*p - '0');
	cr_expect(after > before, "no delivery during the page load (%lld, %lld)", before, after);
	cr_expect(shown >= before && shown <= after,
		  "the page shows %lld delivered; the API said %lld before and %lld after", shown,
		  before, after);
	free(totals);
	cr_expect(strstr(dom, "<td>held.test/{default}</td>"), "no backoff queue shown:\n%s", dom);
	cr_expect(strstr(dom, "<td class=\"backoff\">backoff</td>"), "no backoff mode shown");
	char *shards = strstr(dom, "id=\"shards\"");
	size_t rows = 0;
	for (const char *p = shards; p && (p = strstr(p, "<tr><td>")); p++)
		rows++;
	cr_expect_eq(rows, 2, "%zu shard rows", rows);
	cr_expect_gt(l.sent, 0);
	free(dom);
	free(url);
	free(shot);
	free(shot_arg);
	finish(&d, conf);
	smtp_peer_free(sink);
	smtp_peer_free(held);
}
