/*
 * engine/mgmt.c - the management plane's HTTP server: access control
 * (http-access, http-api-key), the JSON API (/status, /queues,
 * /topqueues, /domains, /vmtas, /shards, /jobs, /queueDetail; POST /pause,
 * /resume, /schedule, /mode, /delete, /reload; GET /check), /metrics and
 * the web monitor page (engine/monitor.c).
 *
 * One thread of its own runs libmicrohttpd (external epoll mode) and,
 * once a second, samples the intake and shard counters for the traffic
 * figures and rate history.  Whatever it needs of a shard's queues it
 * asks on the shard's control ring and waits (at most CTL_WAIT_MS) for
 * the answer; it never reads a queue itself.
 *
 * Threads: mgmt_start/mgmt_stop on the main thread; everything else on
 * the management thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "affinity/affinity.h"
#include "config/config.h"
#include "engine/intake.h"
#include "engine/mgmt.h"
#include "shards/shards.h"
#include "util/util.h"
#include "util/log.h"

#define CTL_WAIT_MS	3000		/* how long a request waits for the shards */
#define SNAP_MAX	10000		/* queues one shard puts in an answer */
#define HIST_SECONDS	61		/* per-second samples: the live chart */
#define HIST_MINUTES	1441		/* per-minute samples: a day of traffic */
#define TOP_METRIC_QUEUES 10		/* queues that get labels in /metrics */

/* Cumulative totals at one moment. */
struct sample {
	int64_t at;			/* unix s */
	uint64_t received;		/* messages accepted (250) */
	uint64_t received_rcpts;
	uint64_t delivered, bounced, expired, deferred;
};

struct shard_cpu {
	uint64_t cpu_ns;
	uint64_t wall_ns;
	double pct;
};

struct mgmt {
	struct mgmt_params p;
	const struct cfg_global *g;
	struct MHD_Daemon *mhd;
	int listen_fd;
	uint16_t port;
	int stop_fd;
	pthread_t thread;
	bool started;
	time_t started_at;
	uint64_t tag;			/* of the last request to the shards */
	char *tls_pem;			/* certificate and key, for MHD */
	struct sample sec[HIST_SECONDS];
	uint32_t nsec, sec_head;	/* ring: sec_head is the next slot */
	struct sample min[HIST_MINUTES];
	uint32_t nmin, min_head;
	int64_t next_minute;
	struct shard_cpu *cpu;		/* [nshards] */
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* asking the shards                                                    */

/*
 * ask_shards - send *tmpl to every shard and collect the answers into
 * out[shard] (NULL where a shard did not answer in time).  Returns how
 * many answered.  Late answers to earlier requests are dropped here.
 */
static uint32_t ask_shards(struct mgmt *m, const struct shard_cmd *tmpl,
			   struct shard_cmd **out)
{
	uint32_t n = shard_set_count(m->p.shards), sent = 0, got = 0;
	uint64_t tag = ++m->tag;
	struct shard_cmd *cmd;

	while ((cmd = shard_ctl_take(m->p.shards)))
		shard_cmd_free(cmd);	/* answers nobody waits for any more */
	for (uint32_t i = 0; i < n; i++) {
		out[i] = NULL;
		cmd = xmalloc(sizeof(*cmd));
		*cmd = *tmpl;
		cmd->tag = tag;
		cmd->snap = NULL;
		if (shard_ctl_send(m->p.shards, i, cmd))
			sent++;
		else
			free(cmd);
	}
	uint64_t deadline = mono_ns() + (uint64_t)CTL_WAIT_MS * 1000000u;
	while (got < sent) {
		while ((cmd = shard_ctl_take(m->p.shards))) {
			if (cmd->tag == tag && !out[cmd->shard]) {
				out[cmd->shard] = cmd;
				got++;
			} else {
				shard_cmd_free(cmd);
			}
		}
		if (got == sent)
			break;
		uint64_t now = mono_ns();
		if (now >= deadline)
			break;
		struct pollfd pfd = { .fd = shard_ctl_fd(m->p.shards), .events = POLLIN };
		if (poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1) > 0) {
			uint64_t v;
			ssize_t r = read(pfd.fd, &v, sizeof(v));
			(void)r;
		}
	}
	return got;
}

static void free_answers(struct shard_cmd **a, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		shard_cmd_free(a[i]);
	free(a);
}

/* ------------------------------------------------------------------ */
/* counters and samples                                                 */

static void take_sample(struct mgmt *m, struct sample *s)
{
	*s = (struct sample){ .at = time(NULL) };
	for (uint32_t i = 0; i < m->p.nintake; i++) {
		struct intake_live il;
		intake_live(m->p.intakes[i], &il);
		s->received += il.messages;
		s->received_rcpts += il.recipients;
	}
	for (uint32_t i = 0; i < shard_set_count(m->p.shards); i++) {
		struct shard_stats st;
		shard_stats(m->p.shards, i, &st);
		s->delivered += st.delivered;
		s->bounced += st.bounced;
		s->expired += st.expired;
		s->deferred += st.deferred;
	}
}

/* sample_tick - once a second: the rate history and the shards' CPU. */
static void sample_tick(struct mgmt *m)
{
	struct sample s;

	take_sample(m, &s);
	m->sec[m->sec_head] = s;
	m->sec_head = (m->sec_head + 1) % HIST_SECONDS;
	if (m->nsec < HIST_SECONDS)
		m->nsec++;
	if (s.at >= m->next_minute) {
		m->min[m->min_head] = s;
		m->min_head = (m->min_head + 1) % HIST_MINUTES;
		if (m->nmin < HIST_MINUTES)
			m->nmin++;
		m->next_minute = s.at + 60;
	}
	uint32_t n = shard_set_count(m->p.shards);
	struct shard_cmd **a = xcalloc(n, sizeof(*a));
	struct shard_cmd tmpl = { .kind = SHARD_CMD_SNAPSHOT, .limit = 0 };
	ask_shards(m, &tmpl, a);
	uint64_t wall = mono_ns();
	for (uint32_t i = 0; i < n; i++) {
		if (!a[i])
			continue;
		struct shard_cpu *c = &m->cpu[i];
		uint64_t cpu = a[i]->snap->cpu_ns;
		if (c->wall_ns && wall > c->wall_ns && cpu >= c->cpu_ns)
			c->pct = 100.0 * (double)(cpu - c->cpu_ns) / (double)(wall - c->wall_ns);
		c->cpu_ns = cpu;
		c->wall_ns = wall;
	}
	free_answers(a, n);
}

/* sample_ago - the newest sample at least secs old (the oldest if none is). */
static const struct sample *sample_ago(const struct mgmt *m, int64_t now, int64_t secs)
{
	const struct sample *best = NULL;

	if (secs <= 60) {
		for (uint32_t k = 0; k < m->nsec; k++) {
			const struct sample *s = &m->sec[(m->sec_head + HIST_SECONDS - 1 - k) % HIST_SECONDS];
			best = s;
			if (now - s->at >= secs)
				break;
		}
		return best;
	}
	for (uint32_t k = 0; k < m->nmin; k++) {
		const struct sample *s = &m->min[(m->min_head + HIST_MINUTES - 1 - k) % HIST_MINUTES];
		best = s;
		if (now - s->at >= secs)
			break;
	}
	return best;
}

/* ------------------------------------------------------------------ */
/* replies                                                              */

/*
 * text - a JSON string of s, which comes from outside (a request, a
 * receiver's reply, a header, a file): bytes that are not UTF-8 become
 * '?' rather than failing the whole answer.
 */
static json_t *text(const char *s)
{
	json_t *j = json_string(s);

	if (j)
		return j;
	char *copy = xstrdup(s);
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
			*p = '?';
	j = json_string(copy);
	free(copy);
	BUG_ON(!j);	/* printable ASCII is UTF-8 */
	return j;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
			     char *body)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body,
								 MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);

	json_decref(j);
	BUG_ON(!text);
	/* jansson allocates with malloc: MHD frees it with free() */
	return reply(c, status, "application/json", text);
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status,
				   const char *fmt, ...) UTIL_PRINTF(3, 4);

/* An error's text: a sentence naming what was wrong, which may quote a
 * domain or a queue name ("domain/vmta", up to ~600 bytes). */
#define ERROR_TEXT_MAX 600

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status,
				   const char *fmt, ...)
{
	char msg[ERROR_TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return reply_json(c, status, json_pack("{s:o,s:i}", "error", text(msg), "status", (int)status));
}

/* ------------------------------------------------------------------ */
/* request arguments                                                    */

static const char *arg(struct MHD_Connection *c, const char *name)
{
	const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);

	return v && *v ? v : NULL;
}

/* arg_text - printable, shorter than len; else NULL with *bad set. */
static bool arg_text(struct MHD_Connection *c, const char *name, char *buf, size_t len,
		     const char **bad)
{
	const char *v = arg(c, name);

	buf[0] = '\0';
	if (!v)
		return true;
	if (strlen(v) >= len) {
		*bad = name;
		return false;
	}
	for (const char *p = v; *p; p++)
		if ((unsigned char)*p < 0x21 || *p == 0x7f) {
			*bad = name;
			return false;
		}
	snprintf(buf, len, "%s", v);
	return true;
}

/*
 * queue_pattern - "domain" means every virtual-mta's queue of it;
 * "domain/vmta" one queue; both may hold fnmatch wildcards.
 */
static bool queue_pattern(struct MHD_Connection *c, char *buf, size_t len, const char **bad)
{
	if (!arg_text(c, "queue", buf, len, bad))
		return false;
	if (buf[0] && !strchr(buf, '/')) {
		size_t n = strlen(buf);
		if (n + 2 >= len) {
			*bad = "queue";
			return false;
		}
		memcpy(buf + n, "/*", 3);
	}
	return true;
}

static bool arg_uint(struct MHD_Connection *c, const char *name, uint64_t max, uint64_t *out)
{
	const char *v = arg(c, name);
	char *end;

	if (!v)
		return true;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno || *end || end == v || v[0] == '-' || x > max)
		return false;
	*out = x;
	return true;
}

/* ------------------------------------------------------------------ */
/* JSON of the shards' answers                                          */

static const char *mode_name(unsigned mode)
{
	return mode == SHARD_MODE_PAUSED ? "paused" : mode == SHARD_MODE_BACKOFF ? "backoff"
										: "normal";
}

static json_t *time_or_null(int64_t t)
{
	return t > 0 ? json_integer(t) : json_null();
}

static json_t *queue_json(const struct shard_queue_info *q, uint32_t shard)
{
	const char *slash = strrchr(q->queue, '/');
	json_t *j = json_object();

	json_object_set_new(j, "queue", text(q->queue));
	json_object_set_new(j, "domain", json_stringn(q->queue, slash ? (size_t)(slash - q->queue)
								       : strlen(q->queue)));
	json_object_set_new(j, "vmta", text(q->vmta));
	json_object_set_new(j, "shard", json_integer(shard));
	json_object_set_new(j, "recipients", json_integer((json_int_t)q->ready + q->deferred));
	json_object_set_new(j, "ready", json_integer(q->ready));
	json_object_set_new(j, "deferred", json_integer(q->deferred));
	json_object_set_new(j, "connections", json_integer(q->conns));
	json_object_set_new(j, "mode", json_string(mode_name(q->mode)));
	json_object_set_new(j, "backoff", json_boolean(q->backoff));
	json_object_set_new(j, "delivered", json_integer((json_int_t)q->delivered));
	json_object_set_new(j, "bounced", json_integer((json_int_t)q->bounced));
	json_object_set_new(j, "expired", json_integer((json_int_t)q->expired));
	json_object_set_new(j, "deferrals", json_integer((json_int_t)q->deferrals));
	json_object_set_new(j, "deliveredPerMinute", json_integer(q->rate_per_min));
	/* adaptive-rate: what the receiver has been found to take, now */
	json_object_set_new(j, "adaptiveRate", q->adaptive_rate < 0 ? json_null()
					       : json_real(q->adaptive_rate));
	json_object_set_new(j, "lastError", q->last_error[0] ? text(q->last_error)
							     : json_null());
	json_object_set_new(j, "lastErrorAt", time_or_null(q->last_error_at));
	if (q->next_attempt < 0)
		json_object_set_new(j, "nextAttempt", json_string("paused"));
	else
		json_object_set_new(j, "nextAttempt", time_or_null(q->next_attempt));
	return j;
}

struct qref {
	const struct shard_queue_info *q;
	uint32_t shard;
};

static int qref_by_size(const void *a, const void *b)
{
	const struct shard_queue_info *x = ((const struct qref *)a)->q;
	const struct shard_queue_info *y = ((const struct qref *)b)->q;
	uint64_t nx = (uint64_t)x->ready + x->deferred, ny = (uint64_t)y->ready + y->deferred;

	if (nx != ny)
		return nx > ny ? -1 : 1;
	return strcmp(x->queue, y->queue);
}

/* merged - every answered queue, largest first; mode filters (-1: any). */
static struct qref *merged(struct shard_cmd **a, uint32_t n, int mode, size_t *count)
{
	size_t total = 0, k = 0;

	for (uint32_t i = 0; i < n; i++)
		if (a[i])
			total += a[i]->snap->n;
	struct qref *r = xcalloc(total + 1, sizeof(*r));
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; a[i] && j < a[i]->snap->n; j++)
			if (mode < 0 || a[i]->snap->items[j].mode == (unsigned)mode)
				r[k++] = (struct qref){ &a[i]->snap->items[j], i };
	qsort(r, k, sizeof(*r), qref_by_size);
	*count = k;
	return r;
}

/*
 * snapshot_all - ask every shard for the queues matching pattern; a
 * shard that does not answer fails the request (504), said in *why.
 */
static struct shard_cmd **snapshot_all(struct mgmt *m, const char *pattern, uint32_t limit,
				       char *why, size_t whylen)
{
	uint32_t n = shard_set_count(m->p.shards);
	struct shard_cmd **a = xcalloc(n, sizeof(*a));
	struct shard_cmd tmpl = { .kind = SHARD_CMD_SNAPSHOT, .limit = limit };

	snprintf(tmpl.queue, sizeof(tmpl.queue), "%s", pattern);
	if (ask_shards(m, &tmpl, a) == n)
		return a;
	for (uint32_t i = 0; i < n; i++)
		if (!a[i]) {
			snprintf(why, whylen, "shard %u did not answer within %d ms", i, CTL_WAIT_MS);
			break;
		}
	free_answers(a, n);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* GET handlers                                                         */

static json_t *traffic(const struct mgmt *m, const struct sample *now)
{
	static const struct { const char *name; int64_t secs; } win[] = {
		{ "minute", 60 }, { "hour", 3600 }, { "day", 86400 },
	};
	json_t *in = json_object(), *out = json_object();

	for (size_t i = 0; i < sizeof(win) / sizeof(win[0]); i++) {
		const struct sample *then = sample_ago(m, now->at, win[i].secs);
		if (!then)
			then = now;
		json_object_set_new(in, win[i].name, json_integer((json_int_t)(now->received - then->received)));
		json_object_set_new(out, win[i].name, json_integer((json_int_t)(now->delivered - then->delivered)));
	}
	return json_pack("{s:o,s:o}", "in", in, "out", out);
}

/* rate_history - deliveries and receptions per second, oldest first. */
static json_t *rate_history(const struct mgmt *m)
{
	json_t *out = json_array(), *in = json_array(), *at = json_array();

	for (uint32_t k = m->nsec; k >= 2; k--) {
		const struct sample *a = &m->sec[(m->sec_head + HIST_SECONDS - k) % HIST_SECONDS];
		const struct sample *b = &m->sec[(m->sec_head + HIST_SECONDS - k + 1) % HIST_SECONDS];
		int64_t dt = b->at - a->at > 0 ? b->at - a->at : 1;
		json_array_append_new(out, json_real((double)(b->delivered - a->delivered) / (double)dt));
		json_array_append_new(in, json_real((double)(b->received - a->received) / (double)dt));
		json_array_append_new(at, json_integer(b->at));
	}
	return json_pack("{s:o,s:o,s:o}", "at", at, "out", out, "in", in);
}

static enum MHD_Result get_status(struct mgmt *m, struct MHD_Connection *c)
{
	struct sample now;
	uint64_t conns_in = 0, spool_bytes = 0, spool_msgs = 0, spool_rcpts = 0, rejected = 0;
	uint64_t queued = 0, conns_out = 0;

	take_sample(m, &now);
	for (uint32_t i = 0; i < m->p.nintake; i++) {
		struct intake_live il;
		intake_live(m->p.intakes[i], &il);
		conns_in += il.open;
		spool_bytes += il.spool_bytes;
		spool_msgs += il.spool_messages;
		spool_rcpts += il.spool_recipients;
		rejected += il.rejected;
	}
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];
	struct shard_cmd **a = snapshot_all(m, "", 0, why, sizeof(why));
	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	for (uint32_t i = 0; i < n; i++) {
		queued += a[i]->snap->recipients;
		conns_out += a[i]->snap->connections;
	}
	free_answers(a, n);
	json_t *j = json_object();
	json_object_set_new(j, "version", json_string(COREMTA_VERSION));
	json_object_set_new(j, "uptime", json_integer(time(NULL) - m->started_at));
	json_object_set_new(j, "startedAt", json_integer(m->started_at));
	json_object_set_new(j, "config", text(m->p.config_path ? m->p.config_path : "<embedded>"));
	json_object_set_new(j, "traffic", traffic(m, &now));
	json_object_set_new(j, "totals", json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
		"received", (json_int_t)now.received,
		"receivedRecipients", (json_int_t)now.received_rcpts,
		"rejected", (json_int_t)rejected,
		"delivered", (json_int_t)now.delivered, "bounced", (json_int_t)now.bounced,
		"expired", (json_int_t)now.expired, "deferred", (json_int_t)now.deferred));
	json_object_set_new(j, "queued", json_pack("{s:I,s:I,s:I}",
		"recipients", (json_int_t)queued, "spoolMessages", (json_int_t)spool_msgs,
		"spoolRecipients", (json_int_t)spool_rcpts));
	json_object_set_new(j, "connections", json_pack("{s:I,s:I}",
		"in", (json_int_t)conns_in, "out", (json_int_t)conns_out));
	json_object_set_new(j, "spool", json_pack("{s:I}", "bytes", (json_int_t)spool_bytes));
	json_object_set_new(j, "shards", json_integer(n));
	struct affinity_mem mem;
	if (affinity_mem_refresh() == 0 && affinity_mem_totals(&mem) == 0)
		json_object_set_new(j, "memory", json_pack("{s:I,s:I}",
			"allocated", (json_int_t)mem.allocated,
			"resident", (json_int_t)mem.resident));
	json_object_set_new(j, "rates", rate_history(m));
	return reply_json(c, MHD_HTTP_OK, j);
}

static enum MHD_Result get_queues(struct mgmt *m, struct MHD_Connection *c, uint64_t def_limit)
{
	char pat[320];
	const char *bad = NULL;
	uint64_t limit = def_limit;
	int mode = -1;
	const char *ms = arg(c, "mode");

	if (!queue_pattern(c, pat, sizeof(pat), &bad))
		return reply_error(c, MHD_HTTP_BAD_REQUEST, "bad '%s' argument", bad);
	if (!arg_uint(c, "limit", SNAP_MAX, &limit))
		return reply_error(c, MHD_HTTP_BAD_REQUEST,
				   "bad 'limit' argument: a number from 0 to %d", SNAP_MAX);
	if (ms) {
		mode = strcmp(ms, "normal") == 0 ? SHARD_MODE_NORMAL
		       : strcmp(ms, "backoff") == 0 ? SHARD_MODE_BACKOFF
		       : strcmp(ms, "paused") == 0 ? SHARD_MODE_PAUSED : -2;
		if (mode == -2)
			return reply_error(c, MHD_HTTP_BAD_REQUEST,
					   "bad 'mode' argument '%s': normal, backoff or paused", ms);
	}
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];
	/* a mode filter may drop any queue: each shard sends all it can */
	struct shard_cmd **a = snapshot_all(m, pat, mode < 0 ? (uint32_t)limit : SNAP_MAX,
					    why, sizeof(why));
	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	size_t k;
	struct qref *r = merged(a, n, mode, &k);
	uint64_t total = 0;
	for (uint32_t i = 0; i < n; i++)
		total += a[i]->snap->matched;
	json_t *arr = json_array();
	for (size_t i = 0; i < k && i < limit; i++)
		json_array_append_new(arr, queue_json(r[i].q, r[i].shard));
	free(r);
	free_answers(a, n);
	return reply_json(c, MHD_HTTP_OK, json_pack("{s:I,s:o}", "matched", (json_int_t)total,
						    "queues", arr));
}

static enum MHD_Result get_queue_detail(struct mgmt *m, struct MHD_Connection *c)
{
	char pat[320];
	const char *bad = NULL;

	if (!queue_pattern(c, pat, sizeof(pat), &bad))
		return reply_error(c, MHD_HTTP_BAD_REQUEST, "bad '%s' argument", bad);
	if (!pat[0])
		return reply_error(c, MHD_HTTP_BAD_REQUEST,
				   "missing 'queue' argument: domain or domain/vmta");
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];
	struct shard_cmd **a = snapshot_all(m, pat, SNAP_MAX, why, sizeof(why));
	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	size_t k;
	struct qref *r = merged(a, n, -1, &k);
	json_t *arr = json_array();
	for (size_t i = 0; i < k; i++)
		json_array_append_new(arr, queue_json(r[i].q, r[i].shard));
	free(r);
	free_answers(a, n);
	if (!k) {
		json_decref(arr);
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no queue matches '%s'", pat);
	}
	return reply_json(c, MHD_HTTP_OK, json_pack("{s:o}", "queues", arr));
}

/* by_recipients - JSON objects, the most "recipients" first. */
static int by_recipients(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "recipients"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "recipients"));

	return x > y ? -1 : x < y;
}

/*
 * reply_largest - {"matched": N, key: [...]}: the objects of all (whose
 * reference it takes) with the most "recipients", at most limit.
 */
static enum MHD_Result reply_largest(struct MHD_Connection *c, json_t *all, uint64_t limit,
				     const char *key)
{
	size_t n = json_array_size(all);
	json_t **v = xcalloc(n + 1, sizeof(*v));

	for (size_t i = 0; i < n; i++)
		v[i] = json_array_get(all, i);
	qsort(v, n, sizeof(*v), by_recipients);
	json_t *arr = json_array();
	for (size_t i = 0; i < n && i < limit; i++)
		json_array_append(arr, v[i]);
	free(v);
	json_decref(all);
	return reply_json(c, MHD_HTTP_OK, json_pack("{s:I,s:o}", "matched", (json_int_t)n, key, arr));
}

/* json_add - o[key] += v, an integer field. */
static void json_add(json_t *o, const char *key, uint64_t v)
{
	json_object_set_new(o, key, json_integer(json_integer_value(json_object_get(o, key)) +
						 (json_int_t)v));
}

/* get_domains - the queues summed per domain (over virtual-mtas, shards). */
static enum MHD_Result get_domains(struct mgmt *m, struct MHD_Connection *c)
{
	uint64_t limit = 100;
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];

	if (!arg_uint(c, "limit", SNAP_MAX, &limit))
		return reply_error(c, MHD_HTTP_BAD_REQUEST,
				   "bad 'limit' argument: a number from 0 to %d", SNAP_MAX);
	struct shard_cmd **a = snapshot_all(m, "", SNAP_MAX, why, sizeof(why));
	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	size_t k;
	struct qref *r = merged(a, n, -1, &k);
	json_t *byname = json_object(), *order = json_array();
	for (size_t i = 0; i < k; i++) {
		const struct shard_queue_info *q = r[i].q;
		const char *slash = strrchr(q->queue, '/');
		char dom[320];
		snprintf(dom, sizeof(dom), "%.*s", (int)(slash ? slash - q->queue : (long)strlen(q->queue)),
			 q->queue);
		json_t *d = json_object_get(byname, dom);
		if (!d) {
			d = json_pack("{s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:[]}", "domain", text(dom),
				      "recipients", (json_int_t)0, "connections", (json_int_t)0,
				      "delivered", (json_int_t)0, "bounced", (json_int_t)0,
				      "deferrals", (json_int_t)0, "queues", (json_int_t)0, "modes");
			json_object_set_new_nocheck(byname, dom, d);
			json_array_append(order, d);
		}
		static const char *const keys[] = { "recipients", "connections", "delivered",
						    "bounced", "deferrals", "queues" };
		uint64_t add[] = { (uint64_t)q->ready + q->deferred, q->conns, q->delivered,
				   q->bounced, q->deferrals, 1 };
		for (size_t x = 0; x < 6; x++)
			json_add(d, keys[x], add[x]);
		json_array_append_new(json_object_get(d, "modes"), json_string(mode_name(q->mode)));
	}
	free(r);
	free_answers(a, n);
	json_decref(byname);
	return reply_largest(c, order, limit, "domains");
}

static json_t *vmta_totals(struct shard_cmd **a, uint32_t n, const struct cfg *cfg)
{
	json_t *byname = json_object(), *arr = json_array();

	/* every configured one, traffic or not, then {default} */
	for (size_t i = 0; i <= cfg_vmta_count(cfg); i++) {
		const char *name = i < cfg_vmta_count(cfg) ? cfg_vmta_at(cfg, i)->name : "{default}";
		json_t *v = json_pack("{s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "vmta", text(name),
				      "queues", (json_int_t)0, "recipients", (json_int_t)0,
				      "connections", (json_int_t)0, "delivered", (json_int_t)0,
				      "bounced", (json_int_t)0, "expired", (json_int_t)0,
				      "deferrals", (json_int_t)0);
		json_object_set_nocheck(byname, name, v);
		json_array_append_new(arr, v);
	}
	for (uint32_t i = 0; i < n; i++) {
		for (uint32_t k = 0; a[i] && k < a[i]->snap->nvmtas; k++) {
			const struct shard_vmta_info *vi = &a[i]->snap->vmtas[k];
			json_t *v = json_object_get(byname, vi->vmta);
			if (!v)
				continue;	/* gone from the configuration */
			static const char *const keys[] = { "queues", "recipients", "connections",
							    "delivered", "bounced", "expired",
							    "deferrals" };
			uint64_t add[] = { vi->queues, vi->recipients, vi->conns, vi->delivered,
					   vi->bounced, vi->expired, vi->deferrals };
			for (size_t x = 0; x < 7; x++)
				json_add(v, keys[x], add[x]);
		}
	}
	json_decref(byname);
	return arr;
}

static enum MHD_Result get_vmtas(struct mgmt *m, struct MHD_Connection *c)
{
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];
	struct shard_cmd **a = snapshot_all(m, "", 0, why, sizeof(why));

	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	json_t *arr = vmta_totals(a, n, m->p.cfg);
	free_answers(a, n);
	return reply_json(c, MHD_HTTP_OK, json_pack("{s:o}", "vmtas", arr));
}

static enum MHD_Result get_shards(struct mgmt *m, struct MHD_Connection *c)
{
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];
	struct shard_cmd **a = snapshot_all(m, "", 0, why, sizeof(why));

	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	json_t *arr = json_array();
	bool have_mem = affinity_mem_refresh() == 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct shard_snapshot *sn = a[i]->snap;
		struct shard_stats st;
		shard_stats(m->p.shards, i, &st);
		json_t *one = json_pack(
			"{s:i,s:I,s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
			"shard", (int)i, "queues", (json_int_t)sn->queues,
			"recipients", (json_int_t)sn->recipients,
			"connections", (json_int_t)sn->connections, "cpu", m->cpu[i].pct,
			"ringUsed", (json_int_t)sn->ring_used, "ringSize", (json_int_t)sn->ring_size,
			"delivered", (json_int_t)st.delivered, "bounced", (json_int_t)st.bounced,
			"expired", (json_int_t)st.expired, "deferred", (json_int_t)st.deferred,
			"loopOverruns", (json_int_t)st.loop_overruns);
		/* out of its ring wait: saturated (SCHED_SATURATED_PCT), no more connections */
		json_object_set_new(one, "busyPct", json_integer(st.busy_pct));
		/* its own jemalloc arena: what the shard holds, on its node */
		struct affinity_mem mem;
		if (st.arena >= 0 && have_mem && affinity_arena_stats((unsigned)st.arena, &mem) == 0)
			json_object_update_new(one, json_pack("{s:i,s:I,s:I}", "arena", st.arena,
				"arenaAllocated", (json_int_t)mem.allocated,
				"arenaResident", (json_int_t)mem.resident));
		json_array_append_new(arr, one);
	}
	free_answers(a, n);
	return reply_json(c, MHD_HTTP_OK, json_pack("{s:o}", "shards", arr));
}

/* get_jobs - queued recipients per job id (X-Job), over every shard. */
static enum MHD_Result get_jobs(struct mgmt *m, struct MHD_Connection *c)
{
	uint64_t limit = 100;
	uint32_t n = shard_set_count(m->p.shards);
	struct shard_cmd **a = xcalloc(n, sizeof(*a));
	struct shard_cmd tmpl = { .kind = SHARD_CMD_JOBS, .limit = SNAP_MAX };

	if (!arg_uint(c, "limit", SNAP_MAX, &limit)) {
		free(a);
		return reply_error(c, MHD_HTTP_BAD_REQUEST,
				   "bad 'limit' argument: a number from 0 to %d", SNAP_MAX);
	}
	if (ask_shards(m, &tmpl, a) < n) {
		free_answers(a, n);
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT,
				   "some shards did not answer within %d ms", CTL_WAIT_MS);
	}
	/* a job spans shards: add its counts up by id */
	json_t *byid = json_object(), *order = json_array();
	for (uint32_t i = 0; i < n; i++) {
		for (uint32_t k = 0; k < a[i]->snap->njobs; k++) {
			const struct shard_job_info *ji = &a[i]->snap->jobs[k];
			json_t *j = json_object_get(byid, ji->job_id);
			if (!j) {
				j = json_pack("{s:o,s:I,s:I}", "jobId",
					      ji->job_id[0] ? text(ji->job_id) : json_null(),
					      "recipients", (json_int_t)0, "queues", (json_int_t)0);
				json_object_set_new_nocheck(byid, ji->job_id, j);
				json_array_append(order, j);
			}
			json_add(j, "recipients", ji->recipients);
			json_add(j, "queues", ji->queues);
		}
	}
	free_answers(a, n);
	json_decref(byid);
	return reply_largest(c, order, limit, "jobs");
}

/* get_check - load the file the daemon runs, as a reload would. */
static enum MHD_Result get_check(struct mgmt *m, struct MHD_Connection *c)
{
	struct cfg *cfg = NULL;
	struct diag_list dl = { 0 };
	int rc;

	if (!m->p.config_path)
		return reply_error(c, MHD_HTTP_CONFLICT,
				   "coremta runs its embedded configuration: no file to check");
	rc = cfg_load_file(m->p.config_path, NULL, &cfg, &dl);
	cfg_free(cfg);
	json_t *errors = json_array(), *warnings = json_array();
	struct strbuf sb = { 0 };
	for (size_t i = 0; i < dl.count; i++) {
		sb_reset(&sb);
		diag_format(&dl.items[i], &sb);
		json_array_append_new(dl.items[i].severity == DIAG_ERROR ? errors : warnings,
				      text(sb_str(&sb)));
	}
	sb_free(&sb);
	diag_free(&dl);
	return reply_json(c, MHD_HTTP_OK, json_pack("{s:o,s:b,s:o,s:o}", "config",
						    text(m->p.config_path), "ok", rc == 0,
						    "errors", errors, "warnings", warnings));
}

/* ------------------------------------------------------------------ */
/* /metrics                                                             */

static void metric_head(struct strbuf *sb, const char *name, const char *type,
			const char *help)
{
	sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* label_value - Prometheus label escaping: backslash, quote, newline. */
static void label_value(struct strbuf *sb, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			sb_addc(sb, '\\');
		if (*v == '\n') {
			sb_adds(sb, "\\n");
			continue;
		}
		sb_addc(sb, *v);
	}
}

/* histogram - cumulative buckets from per-bucket counts; bounds scaled to seconds. */
static void histogram(struct strbuf *sb, const char *name, const char *help,
		      const double *bounds, size_t nb, const uint64_t *counts, double sum,
		      double scale)
{
	uint64_t cum = 0;

	metric_head(sb, name, "histogram", help);
	for (size_t i = 0; i < nb; i++) {
		cum += counts[i];
		if (i + 1 == nb)
			sb_printf(sb, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
		else
			sb_printf(sb, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i] * scale, cum);
	}
	sb_printf(sb, "%s_sum %.6f\n%s_count %" PRIu64 "\n", name, sum, name, cum);
}

static enum MHD_Result get_metrics(struct mgmt *m, struct MHD_Connection *c)
{
	uint32_t n = shard_set_count(m->p.shards);
	char why[128];
	struct shard_cmd **a = snapshot_all(m, "", TOP_METRIC_QUEUES, why, sizeof(why));

	if (!a)
		return reply_error(c, MHD_HTTP_GATEWAY_TIMEOUT, "%s", why);
	struct strbuf sb = { 0 };
	metric_head(&sb, "coremta_info", "gauge", "coremta's version");
	sb_printf(&sb, "coremta_info{version=\"%s\"} 1\n", COREMTA_VERSION);
	metric_head(&sb, "coremta_uptime_seconds", "gauge", "seconds since the daemon started");
	sb_printf(&sb, "coremta_uptime_seconds %lld\n", (long long)(time(NULL) - m->started_at));

	struct intake_live il[m->p.nintake ? m->p.nintake : 1];
	for (uint32_t i = 0; i < m->p.nintake; i++)
		intake_live(m->p.intakes[i], &il[i]);
	metric_head(&sb, "coremta_received_messages_total", "counter",
		    "messages accepted (250 after DATA), per intake thread");
	for (uint32_t i = 0; i < m->p.nintake; i++)
		sb_printf(&sb, "coremta_received_messages_total{intake=\"%u\"} %" PRIu64 "\n", i,
			  il[i].messages);
	metric_head(&sb, "coremta_received_recipients_total", "counter",
		    "recipients of the accepted messages, per intake thread");
	for (uint32_t i = 0; i < m->p.nintake; i++)
		sb_printf(&sb, "coremta_received_recipients_total{intake=\"%u\"} %" PRIu64 "\n", i,
			  il[i].recipients);
	metric_head(&sb, "coremta_connections_in", "gauge", "inbound SMTP connections open");
	metric_head(&sb, "coremta_spool_bytes", "gauge", "segment bytes in the spool");
	uint64_t open = 0, bytes = 0;
	for (uint32_t i = 0; i < m->p.nintake; i++) {
		open += il[i].open;
		bytes += il[i].spool_bytes;
	}
	sb_printf(&sb, "coremta_connections_in %" PRIu64 "\ncoremta_spool_bytes %" PRIu64 "\n",
		  open, bytes);

	static const struct { const char *name, *help; } outcome[] = {
		{ "delivered", "recipients delivered" }, { "bounced", "recipients bounced" },
		{ "expired", "recipients expired (bounce-after)" },
		{ "deferred", "transient failures (each retry counts)" },
	};
	for (size_t o = 0; o < 4; o++) {
		char name[64];
		snprintf(name, sizeof(name), "coremta_%s_total", outcome[o].name);
		metric_head(&sb, name, "counter", outcome[o].help);
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t k = 0; k < a[i]->snap->nvmtas; k++) {
				const struct shard_vmta_info *vi = &a[i]->snap->vmtas[k];
				uint64_t v = o == 0 ? vi->delivered : o == 1 ? vi->bounced
					     : o == 2 ? vi->expired : vi->deferrals;
				sb_printf(&sb, "%s{shard=\"%u\",vmta=\"", name, i);
				label_value(&sb, vi->vmta);
				sb_printf(&sb, "\"} %" PRIu64 "\n", v);
			}
	}
	metric_head(&sb, "coremta_queued_recipients", "gauge", "recipients queued, per shard");
	for (uint32_t i = 0; i < n; i++)
		sb_printf(&sb, "coremta_queued_recipients{shard=\"%u\"} %" PRIu64 "\n", i,
			  a[i]->snap->recipients);
	metric_head(&sb, "coremta_connections_out", "gauge", "outbound SMTP connections, per shard");
	for (uint32_t i = 0; i < n; i++)
		sb_printf(&sb, "coremta_connections_out{shard=\"%u\"} %u\n", i,
			  a[i]->snap->connections);
	metric_head(&sb, "coremta_queues", "gauge", "queues (domain, virtual-mta), per shard");
	for (uint32_t i = 0; i < n; i++)
		sb_printf(&sb, "coremta_queues{shard=\"%u\"} %u\n", i, a[i]->snap->queues);
	metric_head(&sb, "coremta_loop_overruns_total", "counter",
		    "shard loop turns that hit their work budget");
	for (uint32_t i = 0; i < n; i++) {
		struct shard_stats st;
		shard_stats(m->p.shards, i, &st);
		sb_printf(&sb, "coremta_loop_overruns_total{shard=\"%u\"} %" PRIu64 "\n", i,
			  st.loop_overruns);
	}
	if (affinity_mem_refresh() == 0) {
		metric_head(&sb, "coremta_shard_arena_allocated_bytes", "gauge",
			    "bytes allocated from each shard's own jemalloc arena");
		for (uint32_t i = 0; i < n; i++) {
			struct shard_stats st;
			struct affinity_mem mem;
			shard_stats(m->p.shards, i, &st);
			if (st.arena >= 0 && affinity_arena_stats((unsigned)st.arena, &mem) == 0)
				sb_printf(&sb, "coremta_shard_arena_allocated_bytes{shard=\"%u\"} %"
					  PRIu64 "\n", i, mem.allocated);
		}
	}
	/* domain labels: the largest queues only, so the series stay few */
	size_t k;
	struct qref *r = merged(a, n, -1, &k);
	metric_head(&sb, "coremta_top_queue_recipients", "gauge",
		    "recipients of the largest queues (at most 10 series)");
	for (size_t i = 0; i < k && i < TOP_METRIC_QUEUES; i++) {
		const char *q = r[i].q->queue, *slash = strrchr(q, '/');
		sb_printf(&sb, "coremta_top_queue_recipients{domain=\"");
		char dom[320];
		snprintf(dom, sizeof(dom), "%.*s", (int)(slash ? slash - q : (long)strlen(q)), q);
		label_value(&sb, dom);
		sb_adds(&sb, "\",vmta=\"");
		label_value(&sb, r[i].q->vmta);
		sb_printf(&sb, "\"} %u\n", r[i].q->ready + r[i].q->deferred);
	}
	free(r);

	uint64_t counts[SHARD_HIST_BUCKETS > INTAKE_FSYNC_BUCKETS ? SHARD_HIST_BUCKETS
								  : INTAKE_FSYNC_BUCKETS];
	double sum = 0;
	memset(counts, 0, sizeof(counts));
	for (uint32_t i = 0; i < m->p.nintake; i++) {
		for (int b = 0; b < INTAKE_FSYNC_BUCKETS; b++)
			counts[b] += il[i].fsync[b];
		sum += (double)il[i].fsync_sum_us / 1e6;
	}
	histogram(&sb, "coremta_fsync_batch_seconds",
		  "time of one group commit's fsyncs (all intake threads)",
		  intake_fsync_bounds(), INTAKE_FSYNC_BUCKETS, counts, sum, 1e-3);
	static const struct { enum shard_hist h; const char *name, *help; } sh[] = {
		{ SHARD_HIST_DELIVERY, "coremta_delivery_latency_seconds",
		  "time from queueing to delivery of a recipient (all shards)" },
		{ SHARD_HIST_DNS, "coremta_dns_latency_seconds",
		  "time of a queue's MX/route lookup (all shards)" },
	};
	for (size_t h = 0; h < 2; h++) {
		const char *unit;
		const double *bounds = shard_hist_bounds(sh[h].h, &unit);
		double scale = strcmp(unit, "ms") == 0 ? 1e-3 : 1;
		memset(counts, 0, sizeof(counts));
		sum = 0;
		for (uint32_t i = 0; i < n; i++) {
			struct shard_hist_view v;
			shard_hist(m->p.shards, i, sh[h].h, &v);
			for (int b = 0; b < SHARD_HIST_BUCKETS; b++)
				counts[b] += v.bucket[b];
			sum += (double)v.sum * scale;
		}
		histogram(&sb, sh[h].name, sh[h].help, bounds, SHARD_HIST_BUCKETS, counts, sum, scale);
	}
	free_answers(a, n);
	return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", sb_detach(&sb));
}

/* ------------------------------------------------------------------ */
/* POST handlers                                                        */

static enum MHD_Result post_queue_cmd(struct mgmt *m, struct MHD_Connection *c,
				      unsigned kind, const char *verb)
{
	struct shard_cmd tmpl = { .kind = kind };
	const char *bad = NULL;

	if (!queue_pattern(c, tmpl.queue, sizeof(tmpl.queue), &bad))
		return reply_error(c, MHD_HTTP_BAD_REQUEST, "bad '%s' argument", bad);
	if (kind == SHARD_CMD_MODE_NORMAL) {
		const char *mode = arg(c, "mode");
		if (!mode || (strcmp(mode, "normal") && strcmp(mode, "backoff")))
			return reply_error(c, MHD_HTTP_BAD_REQUEST,
					   "'mode' must be normal or backoff");
		if (strcmp(mode, "backoff") == 0)
			tmpl.kind = SHARD_CMD_MODE_BACKOFF;
	}
	if (kind == SHARD_CMD_DELETE) {
		uint64_t older = 0;
		if (!arg_text(c, "jobId", tmpl.job_id, sizeof(tmpl.job_id), &bad) ||
		    !arg_text(c, "rcpt", tmpl.rcpt, sizeof(tmpl.rcpt), &bad))
			return reply_error(c, MHD_HTTP_BAD_REQUEST, "bad '%s' argument", bad);
		if (!arg_uint(c, "olderThan", 100ull * 365 * 86400, &older))
			return reply_error(c, MHD_HTTP_BAD_REQUEST,
					   "bad 'olderThan' argument: seconds");
		if (arg(c, "olderThan"))
			tmpl.older_than = (int64_t)time(NULL) - (int64_t)older;
		const char *dsn = arg(c, "dsn");
		tmpl.dsn = dsn && (strcmp(dsn, "1") == 0 || strcmp(dsn, "yes") == 0 ||
				   strcmp(dsn, "true") == 0);
		/* deleting everything takes saying so */
		if (!tmpl.queue[0] && !tmpl.job_id[0] && !tmpl.rcpt[0] && !arg(c, "olderThan"))
			return reply_error(c, MHD_HTTP_BAD_REQUEST,
					   "delete needs queue, jobId, rcpt or olderThan");
	} else if (!tmpl.queue[0]) {
		return reply_error(c, MHD_HTTP_BAD_REQUEST,
				   "missing 'queue' argument: domain or domain/vmta (wildcards: *)");
	}
	uint32_t n = shard_set_count(m->p.shards);
	struct shard_cmd **a = xcalloc(n, sizeof(*a));
	uint32_t got = ask_shards(m, &tmpl, a);
	uint64_t queues = 0, rcpts = 0;
	json_t *missing = json_array();
	for (uint32_t i = 0; i < n; i++) {
		if (!a[i]) {
			json_array_append_new(missing, json_integer(i));
			continue;
		}
		queues += a[i]->queues;
		rcpts += a[i]->rcpts;
	}
	free_answers(a, n);
	char fields[sizeof(tmpl.queue) + 128];
	snprintf(fields, sizeof(fields), "action=%s queue=%s queues=%" PRIu64 " recipients=%" PRIu64,
		 verb, tmpl.queue[0] ? tmpl.queue : "*", queues, rcpts);
	log_msg(LOG_LEVEL_NOTICE, "management", fields, "management: %s queue=%s: %" PRIu64
		" queues, %" PRIu64 " recipients", verb, tmpl.queue[0] ? tmpl.queue : "*", queues,
		rcpts);
	json_t *j = json_pack("{s:s,s:o,s:I,s:I}", "action", verb, "queue",
			      text(tmpl.queue[0] ? tmpl.queue : "*"), "queues", (json_int_t)queues,
			      "recipients", (json_int_t)rcpts);
	if (got == n && queues == 0) {
		/* a typo must not look like success to a script */
		json_decref(missing);
		json_decref(j);
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no queue matches '%s'",
				   tmpl.queue[0] ? tmpl.queue : "*");
	}
	if (got < n) {
		/* the others did it, or will when they answer: say which did not */
		json_object_set_new(j, "error", json_string("some shards did not answer in time"));
		json_object_set_new(j, "shardsMissing", missing);
		return reply_json(c, MHD_HTTP_GATEWAY_TIMEOUT, j);
	}
	json_decref(missing);
	return reply_json(c, MHD_HTTP_OK, j);
}

static enum MHD_Result post_reload(struct mgmt *m, struct MHD_Connection *c)
{
	char *errors = NULL;

	if (!m->p.hooks.reload)
		return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				   "live reload is not available in this build; restart coremta to apply a new configuration");
	if (m->p.hooks.reload(m->p.hooks.ctx, &errors) == 0) {
		free(errors);
		return reply_json(c, MHD_HTTP_OK, json_pack("{s:b}", "reloaded", 1));
	}
	json_t *arr = json_array();
	for (char *line = errors, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (*line)
			json_array_append_new(arr, text(line));
	}
	free(errors);
	return reply_json(c, MHD_HTTP_UNPROCESSABLE_CONTENT,
			  json_pack("{s:s,s:i,s:o}", "error",
				    "the configuration has errors; nothing changed", "status",
				    MHD_HTTP_UNPROCESSABLE_CONTENT, "errors", arr));
}

/* ------------------------------------------------------------------ */
/* routing and access                                                   */

static enum cfg_http_level access_level(const struct mgmt *m, struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

	if (!ci || !ci->client_addr)
		return CFG_HTTP_NONE;
	for (size_t i = 0; i < m->g->http_access_count; i++)
		if (cfg_cidr_contains(&m->g->http_access[i].net, ci->client_addr))
			return m->g->http_access[i].level;
	return CFG_HTTP_NONE;
}

/* key_ok - X-API-Key, compared in time independent of where it differs. */
static bool key_ok(const struct mgmt *m, struct MHD_Connection *c)
{
	const char *want = m->g->http_api_key;
	const char *got = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key");

	if (!want || !*want)
		return true;
	if (!got)
		return false;
	size_t wl = strlen(want), gl = strlen(got);
	unsigned diff = wl != gl;
	for (size_t i = 0; i < wl; i++)
		diff |= (unsigned char)want[i] ^ (unsigned char)got[i < gl ? i : 0];
	return diff == 0;
}

struct route {
	const char *path;
	bool post;			/* a change: POST, operator or admin */
	enum cfg_http_level need;
	int id;
};

enum { R_MONITOR, R_STATUS, R_QUEUES, R_TOPQUEUES, R_DETAIL, R_DOMAINS, R_VMTAS, R_SHARDS,
       R_JOBS, R_METRICS, R_CHECK, R_PAUSE, R_RESUME, R_SCHEDULE, R_MODE, R_DELETE, R_RELOAD };

static const struct route routes[] = {
	{ "/", false, CFG_HTTP_MONITOR, R_MONITOR },
	{ "/monitor", false, CFG_HTTP_MONITOR, R_MONITOR },
	{ "/status", false, CFG_HTTP_MONITOR, R_STATUS },
	{ "/queues", false, CFG_HTTP_MONITOR, R_QUEUES },
	{ "/topqueues", false, CFG_HTTP_MONITOR, R_TOPQUEUES },
	{ "/queueDetail", false, CFG_HTTP_MONITOR, R_DETAIL },
	{ "/domains", false, CFG_HTTP_MONITOR, R_DOMAINS },
	{ "/vmtas", false, CFG_HTTP_MONITOR, R_VMTAS },
	{ "/shards", false, CFG_HTTP_MONITOR, R_SHARDS },
	{ "/jobs", false, CFG_HTTP_MONITOR, R_JOBS },
	{ "/metrics", false, CFG_HTTP_MONITOR, R_METRICS },
	{ "/check", false, CFG_HTTP_MONITOR, R_CHECK },
	{ "/pause", true, CFG_HTTP_OPERATOR, R_PAUSE },
	{ "/resume", true, CFG_HTTP_OPERATOR, R_RESUME },
	{ "/schedule", true, CFG_HTTP_OPERATOR, R_SCHEDULE },
	{ "/mode", true, CFG_HTTP_OPERATOR, R_MODE },
	{ "/delete", true, CFG_HTTP_OPERATOR, R_DELETE },
	/* a new configuration changes everything: admin only */
	{ "/reload", true, CFG_HTTP_ADMIN, R_RELOAD },
};

static enum MHD_Result dispatch(struct mgmt *m, struct MHD_Connection *c, const struct route *rt)
{
	switch (rt->id) {
	case R_MONITOR:
		return reply(c, MHD_HTTP_OK, "text/html; charset=utf-8", xstrdup(mgmt_monitor_html));
	case R_STATUS:
		return get_status(m, c);
	case R_QUEUES:
		return get_queues(m, c, 100);
	case R_TOPQUEUES:
		return get_queues(m, c, 10);
	case R_DETAIL:
		return get_queue_detail(m, c);
	case R_DOMAINS:
		return get_domains(m, c);
	case R_VMTAS:
		return get_vmtas(m, c);
	case R_SHARDS:
		return get_shards(m, c);
	case R_JOBS:
		return get_jobs(m, c);
	case R_METRICS:
		return get_metrics(m, c);
	case R_CHECK:
		return get_check(m, c);
	case R_PAUSE:
		return post_queue_cmd(m, c, SHARD_CMD_PAUSE, "pause");
	case R_RESUME:
		return post_queue_cmd(m, c, SHARD_CMD_RESUME, "resume");
	case R_SCHEDULE:
		return post_queue_cmd(m, c, SHARD_CMD_SCHEDULE, "schedule");
	case R_MODE:
		return post_queue_cmd(m, c, SHARD_CMD_MODE_NORMAL, "mode");
	case R_DELETE:
		return post_queue_cmd(m, c, SHARD_CMD_DELETE, "delete");
	case R_RELOAD:
		return post_reload(m, c);
	}
	BUG("management route %s: no handler for id %d", rt->path, rt->id);
}

static const char *level_name(enum cfg_http_level l)
{
	return l == CFG_HTTP_ADMIN ? "admin" : l == CFG_HTTP_OPERATOR ? "operator"
					 : l == CFG_HTTP_MONITOR ? "monitor" : "none";
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_data_size,
				  void **con_cls)
{
	struct mgmt *m = cls;
	static int seen;

	/* the first call only announces the request; a body is read and ignored */
	if (!*con_cls) {
		*con_cls = &seen;
		return MHD_YES;
	}
	if (*upload_data_size) {
		*upload_data_size = 0;
		return MHD_YES;
	}
	enum cfg_http_level lv = access_level(m, c);
	if (lv == CFG_HTTP_NONE)
		return reply_error(c, MHD_HTTP_FORBIDDEN,
				   "http-access gives this address no access");
	if (!key_ok(m, c))
		return reply_error(c, MHD_HTTP_UNAUTHORIZED, "missing or wrong X-API-Key");
	const struct route *rt = NULL;
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strcmp(url, routes[i].path) == 0)
			rt = &routes[i];
	if (!rt)
		return reply_error(c, MHD_HTTP_NOT_FOUND, "no such resource: %s", url);
	bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
	if (rt->post ? strcmp(method, "POST") != 0 : !get)
		return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "%s takes %s, not %s", url,
				   rt->post ? "POST" : "GET", method);
	if (lv < rt->need)
		return reply_error(c, MHD_HTTP_FORBIDDEN,
				   "%s needs http-access %s; this address has %s", url,
				   level_name(rt->need), level_name(lv));
	return dispatch(m, c, rt);
}

/* ------------------------------------------------------------------ */
/* the thread                                                           */

static void *mgmt_main(void *arg)
{
	struct mgmt *m = arg;
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	int efd = di ? di->epoll_fd : -1;
	uint64_t next_sample = 0;

	for (;;) {
		uint64_t now = mono_ns();
		if (now >= next_sample) {
			sample_tick(m);
			next_sample = now + 1000000000u;
			now = mono_ns();
		}
		int wait = (int)((next_sample - now) / 1000000u) + 1;
		MHD_UNSIGNED_LONG_LONG to;
		if (MHD_get_timeout(m->mhd, &to) == MHD_YES && (int)to < wait)
			wait = (int)to;
		struct pollfd pfd[2] = {
			{ .fd = m->stop_fd, .events = POLLIN },
			{ .fd = efd, .events = POLLIN },
		};
		int rc = poll(pfd, 2, wait);
		if (rc > 0 && pfd[0].revents)
			break;
		MHD_run(m->mhd);
	}
	return NULL;
}

static int bind_port(uint16_t port, int *out, char *err, size_t errlen)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int one = 1;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_ANY) };

	if (fd < 0) {
		err_printf(err, errlen, "http-mgmt-port: socket: %s", strerror(errno));
		return -errno;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		int e = errno;
		err_printf(err, errlen, "http-mgmt-port %u: %s", port, strerror(e));
		close(fd);
		return -e;
	}
	*out = fd;
	return 0;
}

static char *read_file(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct strbuf sb = { 0 };
	char buf[4096];
	ssize_t n;

	if (fd < 0) {
		err_printf(err, errlen, "http-mgmt-tls: %s: %s", path, strerror(errno));
		return NULL;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		sb_add(&sb, buf, (size_t)n);
	close(fd);
	sb_addc(&sb, '\0');
	return sb_detach(&sb);
}

int mgmt_start(const struct mgmt_params *p, struct mgmt **out, char *err, size_t errlen)
{
	const struct cfg_global *g = cfg_global(p->cfg);
	bool anyone = false;
	int rc;

	*out = NULL;
	for (size_t i = 0; i < g->http_access_count; i++)
		anyone |= g->http_access[i].level > CFG_HTTP_NONE;
	if (!g->http_mgmt_port || !anyone)
		return 0;
	struct mgmt *m = xcalloc(1, sizeof(*m));
	m->p = *p;
	m->g = g;
	m->listen_fd = m->stop_fd = -1;
	m->started_at = time(NULL);
	m->cpu = xcalloc(shard_set_count(p->shards), sizeof(*m->cpu));
	if ((rc = bind_port((uint16_t)g->http_mgmt_port, &m->listen_fd, err, errlen)) < 0) {
		mgmt_stop(m);
		return rc;
	}
	m->port = (uint16_t)g->http_mgmt_port;
	unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
	if (g->http_mgmt_tls) {
		if (!g->smtp_server_tls_certificate) {
			err_printf(err, errlen, "http-mgmt-tls needs smtp-server-tls-certificate");
			mgmt_stop(m);
			return -EINVAL;
		}
		if (!(m->tls_pem = read_file(g->smtp_server_tls_certificate, err, errlen))) {
			mgmt_stop(m);
			return -EINVAL;
		}
		flags |= MHD_USE_TLS;
	}
	m->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (g->http_mgmt_tls)
		m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m,
					  MHD_OPTION_LISTEN_SOCKET, m->listen_fd,
					  MHD_OPTION_CONNECTION_LIMIT, 64u,
					  MHD_OPTION_CONNECTION_TIMEOUT, 30u,
					  MHD_OPTION_HTTPS_MEM_KEY, m->tls_pem,
					  MHD_OPTION_HTTPS_MEM_CERT, m->tls_pem,
					  MHD_OPTION_END);
	else
		m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m,
					  MHD_OPTION_LISTEN_SOCKET, m->listen_fd,
					  MHD_OPTION_CONNECTION_LIMIT, 64u,
					  MHD_OPTION_CONNECTION_TIMEOUT, 30u,
					  MHD_OPTION_END);
	if (!m->mhd || m->stop_fd < 0) {
		err_printf(err, errlen, "http-mgmt-port %u: the HTTP server did not start%s",
			   m->port, g->http_mgmt_tls ? " (is the certificate's PEM valid?)" : "");
		mgmt_stop(m);
		return -EINVAL;
	}
	m->listen_fd = -1;	/* MHD's now */
	if ((rc = pthread_create(&m->thread, NULL, mgmt_main, m)) != 0) {
		err_printf(err, errlen, "management thread: %s", strerror(rc));
		mgmt_stop(m);
		return -rc;
	}
	m->started = true;
	*out = m;
	return 0;
}

uint16_t mgmt_port(const struct mgmt *m)
{
	return m->port;
}

void mgmt_stop(struct mgmt *m)
{
	if (!m)
		return;
	if (m->started) {
		uint64_t one = 1;
		ssize_t w = write(m->stop_fd, &one, sizeof(one));
		(void)w;
		pthread_join(m->thread, NULL);
	}
	if (m->mhd)
		MHD_stop_daemon(m->mhd);
	if (m->listen_fd >= 0)
		close(m->listen_fd);
	if (m->stop_fd >= 0)
		close(m->stop_fd);
	struct shard_cmd *cmd;
	while (m->p.shards && (cmd = shard_ctl_take(m->p.shards)))
		shard_cmd_free(cmd);
	free(m->tls_pem);
	free(m->cpu);
	free(m);
}
