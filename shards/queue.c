/*
 * shards/queue.c - a shard's queues (one per domain and virtual-mta):
 * the recipients ready and deferred, wake-ups, backoff mode, the
 * <smtp-pattern-list> actions, the MX targets (DNS glue), and schedule(),
 * which acts on the pure decisions of sched.c.
 *
 * Threads: the shard's own thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "shards/dns.h"
#include "shards/sched.h"
#include "shards/shard_int.h"
#include "shards/warmup.h"
#include "shards/shards.h"
#include "shards/smtp_client.h"
#include "util/hash.h"
#include "util/util.h"

/* A queue's key, "domain/vmta": a domain (at most 253 bytes), '/', and a
 * virtual-mta name; a name past ~340 bytes is cut, which merges only
 * virtual-mtas whose names agree that far. */
#define QUEUE_KEY_MAX 600

void rl_push(struct rlist *l, struct qrcpt *r)
{
	r->next = NULL;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->count++;
}

struct qrcpt *rl_pop(struct rlist *l)
{
	struct qrcpt *r = l->head;

	if (!r)
		return NULL;
	l->head = r->next;
	if (!l->head)
		l->tail = NULL;
	l->count--;
	r->next = NULL;
	return r;
}

struct dbucket {
	uint64_t delay_ms;
	struct rlist l;
};

/* deferred_push - r waits delay_ms from now (its next_try_ms). */
void deferred_push(struct queue *q, struct qrcpt *r, uint64_t delay_ms)
{
	uint32_t i = 0;

	while (i < q->ndeferred_buckets && q->deferred[i].delay_ms != delay_ms)
		i++;
	if (i == q->ndeferred_buckets) {
		q->deferred = xrealloc(q->deferred, (i + 1) * sizeof(*q->deferred));
		q->deferred[i] = (struct dbucket){ .delay_ms = delay_ms };
		q->ndeferred_buckets++;
	}
	rl_push(&q->deferred[i].l, r);
	q->ndeferred++;
}

/* deferred_pop - any deferred recipient (to bounce or free them all). */
struct qrcpt *deferred_pop(struct queue *q)
{
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++) {
		struct qrcpt *r = rl_pop(&q->deferred[i].l);
		if (r) {
			q->ndeferred--;
			return r;
		}
	}
	return NULL;
}

/*
 * deferred_take_if - move the deferred recipients pick() chooses onto out;
 * the others stay in their FIFOs, in order.
 */
void deferred_take_if(struct queue *q, bool (*pick)(const void *ctx, const struct qrcpt *r),
		      const void *ctx, struct rlist *out)
{
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++) {
		struct rlist keep = { 0 };
		struct qrcpt *r;
		while ((r = rl_pop(&q->deferred[i].l))) {
			if (pick(ctx, r)) {
				rl_push(out, r);
				q->ndeferred--;
			} else {
				rl_push(&keep, r);
			}
		}
		q->deferred[i].l = keep;
	}
}

/* deferred_each - fn for every deferred recipient, in no particular order. */
void deferred_each(const struct queue *q, void (*fn)(void *ctx, const struct qrcpt *r),
		   void *ctx)
{
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++)
		for (const struct qrcpt *r = q->deferred[i].l.head; r; r = r->next)
			fn(ctx, r);
}

static uint64_t queue_hash(const void *item)
{
	return hash_str(HASH_SEED, ((const struct queue *)item)->key);
}

static bool queue_key_eq(const void *item, const void *key)
{
	return strcmp(((const struct queue *)item)->key, key) == 0;
}

void mark_runnable(struct shard *s, struct queue *q)
{
	if (q->runnable)
		return;
	q->runnable = true;
	q->run_next = s->run_head;
	s->run_head = q;
}

/* queue_wake - have q scheduled again by ms at the latest. */
void queue_wake(struct shard *s, struct queue *q, uint64_t ms)
{
	if (!q->wake_ms || ms < q->wake_ms)
		q->wake_ms = ms;
	if (tw_armed(&q->wake_timer) && q->wake_timer.due_ms <= q->wake_ms)
		return;
	q->wake_timer.kind = TIMER_QUEUE;
	tw_arm(&s->timers, &q->wake_timer, q->wake_ms);
}

static const struct cfg_rate *queue_rate(const struct queue *q)
{
	return sched_msg_rate(q->settings, q->backoff);
}

uint32_t queue_max_out(const struct queue *q)
{
	uint32_t n = sched_max_out(q->settings, q->vmta, q->backoff);

	/* the adaptive rate's share of its ceiling, of the connections too */
	return q->adapt_max_out && q->adapt_max_out < n ? q->adapt_max_out : n;
}

/* total_max_out - total-max-smtp-out of the configuration this shard runs on. */
uint32_t total_max_out(const struct shard *s)
{
	return cfg_global(s->cfg)->total_max_smtp_out;
}

static uint32_t queue_nsrc(const struct queue *q);

/* rebucket - b follows rate r from now, keeping its tokens if r is unchanged. */
static void rebucket(struct sched_bucket *b, const struct cfg_rate *r, uint64_t now)
{
	struct sched_bucket nb;

	sched_bucket_init(&nb, r, now);
	if (nb.per_ms != b->per_ms || nb.burst != b->burst)
		*b = nb;
}

/*
 * queues_rebind - after the shard switched configuration: every queue
 * keeps its recipients, connections and backoff mode, and takes its
 * policy (settings, virtual-mta, rates, limits) from the new one.
 * Connections over a lowered max-smtp-out finish their transaction and
 * QUIT; a raised one opens more on the next schedule().  A virtual-mta
 * the file no longer has leaves its queues on the domain's settings.
 */
void queues_rebind(struct shard *s)
{
	HASH_TAB_EACH(&s->queues, struct queue, q) {
		uint32_t nsrc = queue_nsrc(q);
		q->vmta = strcmp(q->vmta_name, "{default}") ? cfg_vmta_find(s->cfg, q->vmta_name)
							    : NULL;
		q->settings = cfg_queue_lookup(s->cfg, q->domain, q->vmta ? q->vmta->name : NULL);
		BUG_ON(!q->settings);
		rebucket(&q->msg_rate, queue_rate(q), s->now_ms);
		rebucket(&q->connect_rate, &q->settings->max_connect_rate, s->now_ms);
		/* disabled sources are indexes into the old list */
		if (queue_nsrc(q) != nsrc) {
			free(q->src_off_until);
			q->src_off_until = NULL;
			q->src_rr = 0;
		}
		/* a walk over the shard's connections only where there are too many */
		if (q->conns > queue_max_out(q))
			trim_conns(s, q, queue_max_out(q));
		mark_runnable(s, q);
	}
}

const struct cfg_schedule *queue_retry(const struct queue *q)
{
	return sched_retry(q->settings, q->backoff);
}

/*
 * reply_subject - the reply as it came on the wire ("421 4.7.0 text"),
 * which is what <smtp-pattern-list> regexes are written against.
 */
size_t reply_subject(const struct smtp_reply *rep, char *buf, size_t len)
{
	int n = rep->status_sent
		? snprintf(buf, len, "%d %s %s", rep->code, rep->status, rep->text ? rep->text : "")
		: snprintf(buf, len, "%d %s", rep->code, rep->text ? rep->text : "");

	return n < 0 ? 0 : (size_t)n >= len ? len - 1 : (size_t)n;
}

static struct queue *rerouted(struct shard *s, struct queue *q);

/*
 * reroute_queued - backoff-reroute-to-virtual-mta: what the queue holds,
 * due or deferred, moves to the other virtual-mta's queue of the domain
 * and is due there now (another address may well be welcome).
 */
static void reroute_queued(struct shard *s, struct queue *q)
{
	struct queue *t = rerouted(s, q);
	struct qrcpt *r;
	uint32_t moved = 0;

	if (t == q)
		return;
	while ((r = rl_pop(&q->ready)) || (r = deferred_pop(q))) {
		r->next_try_ms = 0;
		rl_push(&t->ready, r);
		moved++;
	}
	if (moved) {
		char fields[200];
		snprintf(fields, sizeof(fields), "to=%s/%s recipients=%u", t->domain, t->vmta_name,
			 moved);
		log_queue_event(s, q, "reroute", fields, "backoff-reroute-to-virtual-mta");
	}
	mark_runnable(s, t);
}

/* set_backoff - enter or leave backoff mode; one log line per change. */
void set_backoff(struct shard *s, struct queue *q, bool on, const char *reason)
{
	if (q->backoff == on)
		return;
	q->backoff = on;
	q->backoff_since_ms = s->now_ms;
	sched_bucket_init(&q->msg_rate, queue_rate(q), s->now_ms);
	sched_bucket_init(&q->connect_rate, sched_connect_rate(q->settings, on), s->now_ms);
	log_queue_event(s, q, "backoff", on ? "mode=backoff" : "mode=normal", reason);
	if (s->retry.fd >= 0)
		retry_put_backoff(&s->retry.cur, q->key, on, s->now_s);
	mark_runnable(s, q);
	if (on && q->settings->backoff_notify && *q->settings->backoff_notify) {
		struct delivery_report *n = xcalloc(1, sizeof(*n));
		n->time_logged = s->now_s;
		snprintf(n->queue, sizeof(n->queue), "%s/%s", q->domain, q->vmta_name);
		snprintf(n->vmta, sizeof(n->vmta), "%s", q->vmta_name);
		snprintf(n->text, sizeof(n->text), "%s", reason ? reason : "");
		push_notice(s, n);
	}
	if (on)
		reroute_queued(s, q);
}

/* match_pattern - the queue's first <smtp-pattern-list> rule for rep. */
const struct cfg_smtp_pattern *match_pattern(const struct queue *q,
						    const struct smtp_reply *rep,
						    char *subj, size_t len)
{
	const struct cfg_smtp_pattern_list *pl = q->settings->smtp_pattern_list;

	if (!pl || rep->local || (rep->code >= 200 && rep->code < 300))
		return NULL;
	size_t n = reply_subject(rep, subj, len);
	for (size_t i = 0; i < pl->count; i++)
		if (cfg_regex_match(pl->patterns[i].re, subj, n) == 1)
			return &pl->patterns[i];
	return NULL;
}

/*
 * queue_lookup - the queue of (domain, vmta), made on first use.  follow:
 * a domain whose queue-to names another queue gives that one (one hop:
 * the target's own queue-to is not followed, so no loop is possible).
 */
static struct queue *queue_lookup(struct shard *s, const char *domain,
				  const char *vmta_name, bool follow)
{
	char key[QUEUE_KEY_MAX];
	const struct cfg *cfg = s->cfg;

	snprintf(key, sizeof(key), "%s/%s", domain, vmta_name);
	str_lower(key);
	uint64_t h = hash_str(HASH_SEED, key);
	struct queue *q = hash_tab_find(&s->queues, h, queue_key_eq, key);
	if (q)
		return follow && q->alias ? q->alias : q;
	q = xcalloc(1, sizeof(*q));
	q->key = xstrdup(key);
	q->domain = xstrndup(key, strlen(domain));
	q->vmta = strcmp(vmta_name, "{default}") ? cfg_vmta_find(cfg, vmta_name) : NULL;
	q->vmta_name = xstrdup(q->vmta ? q->vmta->name : "{default}");
	q->settings = cfg_queue_lookup(cfg, q->domain, q->vmta ? q->vmta->name : NULL);
	BUG_ON(!q->settings);
	q->shard = s;
	sched_bucket_init(&q->msg_rate, &q->settings->max_msg_rate, s->now_ms);
	sched_bucket_init(&q->connect_rate, &q->settings->max_connect_rate, s->now_ms);
	hash_tab_add(&s->queues, h, q, queue_hash);
	/* backoff mode outlives a restart, from when it began */
	int64_t since;
	if (retry_table_backoff(s->set->retry, q->key, &since)) {
		uint64_t ago = s->now_s > since ? (uint64_t)(s->now_s - since) * 1000 : 0;
		q->backoff = true;
		q->backoff_since_ms = s->now_ms > ago ? s->now_ms - ago : 0;
		sched_bucket_init(&q->msg_rate, queue_rate(q), s->now_ms);
		sched_bucket_init(&q->connect_rate, sched_connect_rate(q->settings, true), s->now_ms);
		log_queue_event(s, q, "backoff", "mode=backoff", "restored after a restart");
	}
	/* queue-to: this domain's mail goes into the named queue */
	const char *to = q->settings->queue_to;
	if (follow && to && *to && strcasecmp(to, q->domain) != 0)
		q->alias = queue_lookup(s, to, vmta_name, false);
	return follow && q->alias ? q->alias : q;
}

/*
 * vmta_for - the virtual-mta a message goes out through (pools rotate),
 * or NULL when the one it was given is gone (removed by a reload or
 * before a restart): PowerMTA bounces such mail with 5.3.5, it is never
 * sent through {default} instead.
 */
static const char *vmta_named(struct shard *s, const char *name)
{
	const struct cfg *cfg = s->cfg;
	const struct cfg_vmta *v = cfg_vmta_find(cfg, name);

	if (v)
		return v->name;
	for (size_t i = 0; i < cfg_pool_count(cfg); i++) {
		const struct cfg_pool *p = cfg_pool_at(cfg, i);
		if (strcmp(p->name, name) == 0 && p->member_count)
			return p->members[s->pool_rr[i]++ % p->member_count]->name;
	}
	return NULL;
}

static const char *vmta_for(struct shard *s, const struct delivery_msg *m)
{
	return m->vmta ? vmta_named(s, m->vmta) : "{default}";
}

/*
 * rerouted - where q's mail goes instead: the queue of the same domain
 * through reroute-to-virtual-mta, or in backoff mode through
 * backoff-reroute-to-virtual-mta; q itself when neither applies.  One
 * hop: the target's own reroute is not followed, so no loop is possible.
 */
static struct queue *rerouted(struct shard *s, struct queue *q)
{
	const struct cfg_queue *qs = q->settings;
	const char *to = q->backoff && qs->backoff_reroute_to_virtual_mta &&
				 *qs->backoff_reroute_to_virtual_mta
			 ? qs->backoff_reroute_to_virtual_mta : qs->reroute_to_virtual_mta;
	const char *v = to && *to ? vmta_named(s, to) : NULL;

	if (!v || strcmp(v, q->vmta_name) == 0)
		return q;
	return queue_lookup(s, q->domain, v, false);
}

static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : "";
}

/*
 * restore - r's retry state from before a restart, if any: its attempts,
 * and when it is due (it waits in its retry interval's FIFO till then).
 * Returns whether r went to the deferred recipients.
 */
static bool restore(struct shard *s, struct queue *q, struct qrcpt *r)
{
	struct retry_rcpt st;

	if (!retry_table_rcpt(s->set->retry, r->msg->id, r->msg->rcpt[r->rcpt].index, &st))
		return false;
	r->attempts = st.attempts < UINT16_MAX ? (uint16_t)st.attempts : UINT16_MAX;
	if (st.next_unix <= s->now_s)
		return false;
	r->next_try_ms = s->now_ms + (uint64_t)(st.next_unix - s->now_s) * 1000;
	deferred_push(q, r, (uint64_t)st.delay_s * 1000);
	queue_wake(s, q, r->next_try_ms);
	return true;
}

void take_job(struct shard *s, uint32_t intake, struct delivery_job *job)
{
	if (!job->msg) {
		/* a move notice: it follows every job of its messages */
		msg_moves(s, intake, job->moves);
		delivery_job_free(job);
		return;
	}
	const struct delivery_msg *m = job->msg;
	const char *vmta = vmta_for(s, job->msg);

	body_take(s, intake, job);
	struct retry_rcpt st;
	char text[160];
	struct smtp_reply gone = { .code = 550, .status = "5.3.5", .local = true, .text = text };

	/* the pool member it was given before a restart, while it exists */
	if (m->vmta && job->nrcpt &&
	    retry_table_rcpt(s->set->retry, m->id, m->rcpt[job->rcpt[0]].index, &st) &&
	    st.vmta[0] && cfg_vmta_find(s->cfg, st.vmta))
		vmta = cfg_vmta_find(s->cfg, st.vmta)->name;
	if (!vmta)
		snprintf(text, sizeof(text), "virtual-mta '%s' is not configured", m->vmta);
	for (uint32_t k = 0; k < job->nrcpt; k++) {
		struct qrcpt *r = xcalloc(1, sizeof(*r));
		r->msg = job->msg;
		delivery_msg_ref(r->msg);
		r->rcpt = job->rcpt[k];
		r->intake = (uint8_t)intake;
		msg_hold(s, intake, r->msg);
		/* a gone virtual-mta: {default} is where it is accounted, not sent */
		struct queue *q = queue_lookup(s, domain_of(r->msg->rcpt[r->rcpt].addr),
					       vmta ? vmta : "{default}", true);
		if (vmta)
			q = rerouted(s, q);
		atomic_fetch_add_explicit(&s->pub.queued, 1, memory_order_relaxed);
		if (!vmta) {
			apply_reply(s, q, r, &gone, NULL);
			continue;
		}
		if (!restore(s, q, r))
			rl_push(&q->ready, r);
		mark_runnable(s, q);
	}
	atomic_fetch_add_explicit(&s->pub.jobs, 1, memory_order_relaxed);
	delivery_job_free(job);
}

/* due_deferred - move recipients whose retry time came back to ready. */
static void due_deferred(struct shard *s, struct queue *q)
{
	if (q->wake_ms && q->wake_ms <= s->now_ms)
		q->wake_ms = 0;		/* this is that wake-up */
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++) {
		struct rlist *l = &q->deferred[i].l;
		struct qrcpt *r;
		while ((r = l->head) && r->next_try_ms <= s->now_ms) {
			rl_pop(l);
			q->ndeferred--;
			if (expired(s, q, r)) {
				static const struct smtp_reply gone = {
					.code = 554, .status = DELIVERY_EXPIRED_STATUS, .local = true,
					.text = "message expired (bounce-after) before it could be delivered",
				};
				log_attempt(s, q, r, "expired", &gone, NULL, NULL, NULL);
				finish_rcpt(s, q, r, DELIVERY_EXPIRED, make_report(s, q, r, &gone, NULL, DELIVERY_EXPIRED));
				continue;
			}
			rl_push(&q->ready, r);
		}
		if (l->head)
			queue_wake(s, q, l->head->next_try_ms);
	}
}

/* set_site - q's site (sched.h), named from its targets. */
static void set_site(struct queue *q)
{
	char buf[DNS_MAX_HOSTS * (DNS_NAME_MAX + 2) + 16];

	if (q->mx_of)
		snprintf(buf, sizeof(buf), "rollup:%s", q->domain);
	else
		sched_site(&q->targets, q->settings->smtp_hosts,
			   q->settings->disable_mx_rollup ? q->domain : NULL, buf, sizeof(buf));
	if (q->site && strcmp(q->site, buf) == 0)
		return;
	free(q->site);
	q->site = xstrdup(buf);
	q->site_hash = hash_str(HASH_SEED, buf);
}

/* move_rcpts - every recipient of q, ready or deferred, goes to to. */
static void move_rcpts(struct shard *s, struct queue *q, struct queue *to)
{
	struct qrcpt *r;

	while ((r = rl_pop(&q->ready)))
		rl_push(&to->ready, r);
	for (uint32_t i = 0; i < q->ndeferred_buckets; i++) {
		while ((r = rl_pop(&q->deferred[i].l))) {
			q->ndeferred--;
			deferred_push(to, r, q->deferred[i].delay_ms);
			queue_wake(s, to, r->next_try_ms);
		}
	}
	mark_runnable(s, to);
}

/*
 * roll_up - an <mx-rollup-list> line took q's domain: its mail, now and
 * from now on (take_job follows alias), goes to the rollup queue, which
 * starts out with q's targets and looks up q's MX when they expire.
 */
static void roll_up(struct shard *s, struct queue *q, const struct cfg_mx_rollup *mr)
{
	struct queue *r = queue_lookup(s, mr->name, q->vmta_name, false);
	char fields[DNS_NAME_MAX + 64];

	if (r == q)
		return;
	if (!r->mx_of)
		r->mx_of = xstrdup(q->domain);
	if (r->dns != QDNS_READY) {
		r->targets = q->targets;
		r->dns = QDNS_READY;
		r->dns_expires_ms = q->dns_expires_ms;
		r->next_target = 0;
		r->target_seq++;
		r->failed_targets = 0;
		r->unavailable = 0;
		set_site(r);
	}
	q->alias = r;
	snprintf(fields, sizeof(fields), "rollup=%s mx=%s", mr->name, dns_host_name(&q->targets, 0));
	log_queue_event(s, q, "mx-rollup", fields, mr->pattern);
	move_rcpts(s, q, r);
}

static void on_dns(void *ctx, const struct dns_result *res)
{
	struct queue *q = ctx;
	struct shard *s = q->shard;

	q->targets = *res;
	q->dns = QDNS_READY;
	if (q->dns_started_ms) {
		hist_observe(s, SHARD_HIST_DNS, s->now_ms - q->dns_started_ms);
		q->dns_started_ms = 0;
	}
	/* MX targets take default-smtp-port; a route carries its own ports */
	if (!q->settings->smtp_hosts)
		for (uint8_t i = 0; i < q->targets.naddrs; i++)
			q->targets.addrs[i].port = (uint16_t)q->settings->default_smtp_port;
	q->next_target = 0;
	q->target_seq++;
	q->failed_targets = 0;
	q->unavailable = 0;
	uint32_t ttl = res->ttl ? res->ttl : 60;
	q->dns_expires_ms = s->now_ms + (uint64_t)ttl * 1000;
	set_site(q);
	mark_runnable(s, q);
	const struct cfg_mx_rollup *mr = NULL;
	if (!q->settings->smtp_hosts && !q->settings->disable_mx_rollup && !q->mx_of &&
	    !q->alias)
		mr = sched_rollup(cfg_global(s->cfg), &q->targets);
	if (mr)
		roll_up(s, q, mr);
}

/* start_dns - targets of the queue: its smtp-hosts route, else MX. */
static void start_dns(struct shard *s, struct queue *q)
{
	struct dns_result res;
	int rc;

	q->dns = QDNS_PENDING;
	q->dns_started_ms = s->now_ms;
	if (q->settings->smtp_hosts) {
		struct dns_route route;
		const char *why;
		if (dns_route_parse(q->settings->smtp_hosts,
				    (uint16_t)q->settings->default_smtp_port, &route, &why) < 0) {
			struct smtp_reply rep = { .code = 451, .status = "4.3.5", .local = true,
						  .text = why };
			q->dns = QDNS_NONE;
			fail_ready(s, q, &rep);
			return;
		}
		rc = dns_resolve_route(s->dns, &route, on_dns, q, &res);
	} else {
		rc = dns_resolve_mx(s->dns, q->mx_of ? q->mx_of : q->domain, on_dns, q, &res);
	}
	if (rc == DNS_ANSWERED) {
		on_dns(q, &res);
	} else if (rc < 0 && rc != -EAGAIN) {
		struct smtp_reply rep = { .code = 550, .status = "5.1.2", .local = true,
					  .text = "not a valid domain name" };
		q->dns = QDNS_NONE;
		fail_ready(s, q, &rep);
	} else if (rc == -EAGAIN) {
		q->dns = QDNS_NONE;	/* too many lookups in flight: next tick */
	}
}

/*
 * Source addresses of a queue: the virtual-mta's smtp-source-ip, else its
 * smtp-source-host lines; a {default} queue uses the top-level
 * smtp-source-host lines; without any, one address the kernel picks
 * (index 0, NULL).  disable-source-ip takes one out of the rotation.
 */
static const struct cfg_source_host *queue_hosts(const struct queue *q, size_t *n)
{
	if (q->vmta) {
		*n = q->vmta->smtp_source_ip ? 0 : q->vmta->source_host_count;
		return q->vmta->source_hosts;
	}
	const struct cfg_global *g = cfg_global(q->shard->set->cfg);
	*n = g->source_host_count;
	return g->source_hosts;
}

static uint32_t queue_nsrc(const struct queue *q)
{
	size_t n;

	queue_hosts(q, &n);
	return n ? (uint32_t)n : 1;
}

const char *queue_source_ip(const struct queue *q, uint32_t i)
{
	size_t n;
	const struct cfg_source_host *h = queue_hosts(q, &n);

	if (q->vmta && q->vmta->smtp_source_ip)
		return q->vmta->smtp_source_ip;
	return i < n ? h[i].ip : NULL;
}

const char *queue_source_name(const struct queue *q, uint32_t i)
{
	size_t n;
	const struct cfg_source_host *h = queue_hosts(q, &n);

	return i < n ? h[i].hostname : NULL;
}

/* ---- warm-up (warmup.h): daily caps per (source IP, site) ---- */

static bool vmta_is_cold(const struct cfg *cfg, const struct cfg_vmta *v)
{
	const struct cfg_strlist *cold = &cfg_global(cfg)->cold_vmtas;

	for (size_t i = 0; v && i < cold->count; i++)
		if (strcmp(cold->items[i], v->name) == 0)
			return true;
	return false;
}

/*
 * warm_of - the warm-up counter of q's source i and, in *cap, today's cap
 * (warmup-schedule, and max-cold-virtual-mta-msg for a cold virtual-mta:
 * the stricter); NULL when no cap applies to the queue.
 */
/* srcsite - the state of (q's source i, q's site), made on first use */
static struct warm_entry *srcsite(struct shard *s, const struct queue *q, uint32_t i)
{
	const char *ip = queue_source_ip(q, i);
	char key[300];

	snprintf(key, sizeof(key), "%s/%s", ip ? ip : "-", q->domain);
	return warm_get(&s->warm, key, s->set->retry, (int64_t)s->now_s / 86400);
}

static struct warm_entry *warm_of(struct shard *s, const struct queue *q, uint32_t i,
				  uint32_t *cap)
{
	const struct cfg_queue *qs = q->settings;
	bool cold = qs->max_cold_vmta_msg.count && vmta_is_cold(s->cfg, q->vmta);

	if (!qs->warmup_schedule.count && !cold)
		return NULL;
	int64_t today = (int64_t)s->now_s / 86400;
	struct warm_entry *e = srcsite(s, q, i);
	*cap = warmup_cap(&qs->warmup_schedule, e->w.first_day, today);
	if (cold) {
		uint32_t c = warmup_cap(&qs->max_cold_vmta_msg, e->w.first_day, today);
		if (c < *cap)
			*cap = c;
	}
	return e;
}

bool warm_allows(struct shard *s, const struct queue *q, int src)
{
	uint32_t cap;
	struct warm_entry *e = src >= 0 ? warm_of(s, q, (uint32_t)src, &cap) : NULL;

	return !e || e->w.sent < cap;
}

void warm_count(struct shard *s, const struct queue *q, int src)
{
	uint32_t cap;
	struct warm_entry *e = src >= 0 ? warm_of(s, q, (uint32_t)src, &cap) : NULL;

	if (!e)
		return;
	if (!e->w.first_day)
		e->w.first_day = e->w.day;
	e->w.sent++;
	retry_put_warm(&s->retry.cur, e->key, &e->w);
	if (e->w.sent >= cap && e->logged_day != e->w.day) {
		char fields[128];
		e->logged_day = e->w.day;
		snprintf(fields, sizeof(fields), "source=%s warmup-day=%lld cap=%u",
			 queue_source_ip(q, (uint32_t)src) ? queue_source_ip(q, (uint32_t)src)
							   : "default",
			 (long long)(e->w.day - e->w.first_day + 1), cap);
		log_queue_event(s, q, "warmup-cap", fields,
				"today's warm-up cap is reached; the rest waits for the next UTC day");
	}
}

/* ---- adaptive rate (adapt.h) per (site, source IP) ---- */

/* adapt_bucket - the token bucket at the adaptive rate (two ticks' burst) */
static void adapt_bucket(struct warm_entry *e, uint64_t now)
{
	double per_ms = e->adapt.rate / 1000.0;

	e->bucket.per_ms = per_ms;
	e->bucket.burst = per_ms * 2 * SCHED_TICK_MS < 1.0 ? 1.0 : per_ms * 2 * SCHED_TICK_MS;
	if (!e->bucket.last_ms) {
		e->bucket.tokens = 1.0;
		e->bucket.last_ms = now;
	}
}

struct warm_entry *adapt_of(struct shard *s, const struct queue *q, int src)
{
	if (!q->settings->adaptive_rate || src < 0)
		return NULL;
	struct warm_entry *e = srcsite(s, q, (uint32_t)src);
	if (!e->adapt_on) {
		struct adapt_params p;
		adapt_params_of(q->settings, &p);
		adapt_init(&e->adapt, &p, s->now_ms);
		adapt_bucket(e, s->now_ms);
		e->adapt_on = true;
	}
	return e;
}

double adapt_rate_in_force(struct shard *s, const struct queue *q)
{
	if (!q->settings->adaptive_rate)
		return -1;
	uint32_t n = queue_nsrc(q);
	double sum = 0;
	for (uint32_t i = 0; i < (n ? n : 1); i++)
		sum += adapt_of(s, q, (int)i)->adapt.rate;
	return sum;
}

/*
 * adapt_changed - the new rate in force: the bucket, the queue's
 * connections scaled by the same fraction of the ceiling, one log line.
 */
static void adapt_changed(struct shard *s, struct queue *q, struct warm_entry *e, int src,
			  double old, const char *why)
{
	struct adapt_params p;
	char fields[200];

	adapt_params_of(q->settings, &p);
	adapt_bucket(e, s->now_ms);
	uint32_t full = sched_max_out(q->settings, q->vmta, q->backoff);
	double share = e->adapt.rate / p.max;
	q->adapt_max_out = share >= 1.0 ? 0 : (uint32_t)(full * share + 0.999);
	if (share < 1.0 && q->adapt_max_out == 0)
		q->adapt_max_out = 1;
	const char *ip = queue_source_ip(q, (uint32_t)src);
	snprintf(fields, sizeof(fields), "source=%s old=%.2f/s new=%.2f/s max-smtp-out=%u",
		 ip ? ip : "default", old, e->adapt.rate, q->adapt_max_out ? q->adapt_max_out : full);
	log_queue_event(s, q, "adaptive-rate", fields, why);
}

void adapt_reply(struct shard *s, struct queue *q, const struct sconn *c,
		 const struct smtp_reply *rep, bool backoff_pattern, const char *subj)
{
	struct warm_entry *e = c && !rep->local ? adapt_of(s, q, c->src) : NULL;

	if (!e)
		return;
	if (rep->code >= 200 && rep->code < 300) {
		adapt_delivered(&e->adapt);
		return;
	}
	if (!adapt_is_too_fast(rep->code, rep->status, backoff_pattern))
		return;
	struct adapt_params p;
	double old = e->adapt.rate;
	adapt_params_of(q->settings, &p);
	if (adapt_cut(&e->adapt, &p, s->now_ms))
		adapt_changed(s, q, e, c->src, old, subj && *subj ? subj : rep->text);
}

void adapt_tick_src(struct shard *s, struct queue *q, struct warm_entry *e, int src)
{
	struct adapt_params p;
	double old = e->adapt.rate;

	adapt_params_of(q->settings, &p);
	if (adapt_tick(&e->adapt, &p, s->now_ms))
		adapt_changed(s, q, e, src, old, "deliveries were clean for adaptive-increase-every");
}

/*
 * pick_source_why - the next usable source (round robin): enabled and
 * under its warm-up cap; or -1, with *warm_full set when some enabled
 * source is held back only by its warm-up cap.
 */
static int pick_source_why(struct shard *s, struct queue *q, bool take, bool *warm_full)
{
	uint32_t n = queue_nsrc(q);

	*warm_full = false;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t i = (q->src_rr + k) % n;
		if (q->src_off_until && q->src_off_until[i] > s->now_ms)
			continue;
		if (!warm_allows(s, q, (int)i)) {
			*warm_full = true;
			continue;
		}
		if (take)
			q->src_rr = i + 1;
		return (int)i;
	}
	return -1;
}

int pick_source(struct shard *s, struct queue *q, bool take)
{
	bool warm_full;

	return pick_source_why(s, q, take, &warm_full);
}

static void disable_source(struct shard *s, struct queue *q, const struct sconn *c,
			   uint64_t reenable_after, const char *reason)
{
	char fields[160], when[32];

	/* a connection opened before a reload changed the source list */
	if (c->src < 0 || (uint32_t)c->src >= queue_nsrc(q))
		return;
	if (!q->src_off_until)
		q->src_off_until = xcalloc(queue_nsrc(q), sizeof(uint64_t));
	if (q->src_off_until[c->src] > s->now_ms)
		return;		/* a connection opened before it was disabled */
	/* no reenable-after=: reenable-source-ip-after, else until a restart */
	if (!reenable_after)
		reenable_after = q->settings->reenable_source_ip_after;
	q->src_off_until[c->src] = reenable_after ? s->now_ms + reenable_after * 1000
						  : UINT64_MAX;
	if (reenable_after)
		snprintf(when, sizeof(when), "%" PRIu64 "s", reenable_after);
	else
		snprintf(when, sizeof(when), "never");
	const char *ip = queue_source_ip(q, (uint32_t)c->src);
	snprintf(fields, sizeof(fields), "source=%s reenable-after=%s",
		 ip ? ip : c->local_ip[0] ? c->local_ip : "default", when);
	log_queue_event(s, q, "disable-source-ip", fields, reason);
	retire_conns(s, q, c->src);
	bool any = false;
	for (uint32_t i = 0; i < queue_nsrc(q) && !any; i++)
		any = q->src_off_until[i] <= s->now_ms;
	if (!any && q->settings->backoff_upon_all_sources_disabled)
		set_backoff(s, q, true, "backoff-upon-all-sources-disabled");
}

/* permanent - a 4xx reply that a pattern turns into a bounce. */
struct smtp_reply permanent(const struct smtp_reply *rep)
{
	struct smtp_reply p = *rep;

	if (p.code < 500) {
		p.code = 554;
		p.status[0] = '5';
	}
	return p;
}

/* transient - the same reply as a deferral (never a bounce for bystanders). */
static struct smtp_reply transient(const struct smtp_reply *rep)
{
	struct smtp_reply t = *rep;

	if (t.code >= 500) {
		t.code = 451;
		t.status[0] = '4';
	}
	return t;
}

/*
 * defer_queue - defer-queue: every waiting recipient goes on its retry
 * schedule, and nothing is tried before the schedule's first interval;
 * the queue's connections end their transaction and QUIT.
 */
static void defer_queue(struct shard *s, struct queue *q, const struct smtp_reply *rep,
			const char *reason)
{
	const struct cfg_schedule *sch = queue_retry(q);
	char fields[64];

	q->hold_until_ms = s->now_ms + (uint64_t)sch->seconds[0] * 1000;
	snprintf(fields, sizeof(fields), "retry=%us recipients=%u", sch->seconds[0],
		 q->ready.count);
	log_queue_event(s, q, "defer-queue", fields, reason);
	struct smtp_reply t = transient(rep);
	fail_ready(s, q, &t);
	retire_conns(s, q, -1);
	queue_wake(s, q, q->hold_until_ms);
}

/* bounce_queue - bounce-queue: every recipient waiting in q bounces with rep. */
static void bounce_queue(struct shard *s, struct queue *q, const struct smtp_reply *rep,
			 const char *reason)
{
	struct smtp_reply p = permanent(rep);
	char fields[64];
	struct qrcpt *r;

	snprintf(fields, sizeof(fields), "recipients=%u", q->ready.count + q->ndeferred);
	log_queue_event(s, q, "bounce-queue", fields, reason);
	while ((r = rl_pop(&q->ready)))
		apply_reply(s, q, r, &p, NULL);
	while ((r = deferred_pop(q)))
		apply_reply(s, q, r, &p, NULL);
}

/*
 * apply_queue_actions - what a matched <smtp-pattern-list> rule does to
 * the queue.  The recipient whose reply matched (bounce-rcpt, skip-mx) is
 * the caller's.  c is NULL when no connection is involved.
 */
void apply_queue_actions(struct shard *s, struct queue *q, const struct sconn *c,
				const struct cfg_smtp_pattern *pat,
				const struct smtp_reply *rep, const char *subj)
{
	unsigned a = pat->actions;

	if (a & CFG_ACT_MODE_BACKOFF)
		set_backoff(s, q, true, subj);
	if (a & CFG_ACT_MODE_NORMAL)
		set_backoff(s, q, false, subj);
	if ((a & CFG_ACT_DISABLE_SOURCE_IP) && c)
		disable_source(s, q, c, pat->reenable_after, subj);
	if (a & CFG_ACT_BOUNCE_QUEUE)
		bounce_queue(s, q, rep, subj);
	else if (a & CFG_ACT_DEFER_QUEUE)
		defer_queue(s, q, rep, subj);
}

/* advance_target - the queue moves on to its next MX address. */
static void advance_target(struct queue *q)
{
	q->next_target++;
	q->target_seq++;
}

/*
 * targets_exhausted - every address of the queue failed or was skipped in
 * a row: start over from the first, after a fresh lookup.
 */
static bool targets_exhausted(struct queue *q)
{
	uint32_t n = q->targets.naddrs ? q->targets.naddrs : 1;

	if (q->failed_targets + q->unavailable < n)
		return false;
	q->failed_targets = 0;
	q->unavailable = 0;
	q->next_target = 0;
	q->target_seq++;
	q->dns = QDNS_NONE;	/* look again next time */
	return true;
}

/*
 * target_failed - the connection to one address failed before any txn.
 * A failure of an address the queue already left (a second connection to
 * it) is not counted again: "every MX failed" means every one.
 */
void target_failed(struct shard *s, struct sconn *c, const struct smtp_reply *rep)
{
	struct queue *q = c->q;

	if (c->target_seq != q->target_seq)
		return;
	q->failed_targets++;
	advance_target(q);
	if (targets_exhausted(q)) {
		/* every MX failed in a row: the queue waits its retry */
		struct smtp_reply r = *rep;
		if (r.code >= 500 && !q->settings->bounce_upon_5xx_greeting)
			r.code = 451;
		fail_ready(s, q, &r);
	}
}

/*
 * skip_target - the MX said 421 (smtp-421-means-mx-unavailable) or a
 * skip-mx pattern matched: the transaction's recipients went back in line
 * without an attempt counted, and the next MX gets them now.  Only when
 * every MX was given up do they count an attempt and wait their retry.
 */
void skip_target(struct shard *s, struct sconn *c, const struct smtp_reply *rep,
			size_t nrcpt)
{
	struct queue *q = c->q;
	char fields[DNS_NAME_MAX + 96], subj[SMTP_REPLY_SUBJECT_MAX];

	snprintf(fields, sizeof(fields), "mx=%s ip=%s recipients=%zu", c->mx ? c->mx : "",
		 c->ip, nrcpt);
	reply_subject(rep, subj, sizeof(subj));
	log_queue_event(s, q, "mx-unavailable", fields, subj);
	mark_runnable(s, q);
	if (c->target_seq != q->target_seq)
		return;
	q->unavailable++;
	advance_target(q);
	if (targets_exhausted(q)) {
		struct smtp_reply t = transient(rep);
		fail_ready(s, q, &t);
	}
}

/*
 * queue_room - connections the shared caps allow the queue now: under
 * total-max-smtp-out, and at its next destination (address and MX host
 * name).  *full is the entry that refuses (or NULL), *total_full
 * whether the total cap is what refuses.
 */
static uint32_t queue_room(struct shard *s, struct queue *q,
			   struct cap_dest **full, bool *total_full)
{
	uint32_t total = atomic_load_explicit(&s->set->total_conns, memory_order_relaxed);
	uint32_t room = total >= total_max_out(s) ? 0 : total_max_out(s) - total;

	*total_full = room == 0;
	*full = NULL;
	if (!q->targets.naddrs)
		return room;
	const struct dns_addr *a = &q->targets.addrs[q->next_target % q->targets.naddrs];
	int srci = pick_source(s, q, false);
	const char *src = srci >= 0 ? queue_source_ip(q, (uint32_t)srci) : NULL;
	struct cap_dest *d[2] = {
		caps_dest(s->set->caps, a, src),
		caps_mx(s->set->caps, dns_host_name(&q->targets, a->host), src),
	};
	for (int i = 0; i < 2; i++) {
		if (!d[i])
			continue;
		uint32_t r = caps_room(d[i], s->now_ms);
		if (r < room)
			room = r;
		if (r == 0)
			*full = d[i];
	}
	return room;
}

/*
 * schedule - give a queue's due recipients to connections: idle ones
 * first, then new ones up to max-smtp-out and what the rates allow.
 */
void schedule(struct shard *s, struct queue *q)
{
	uint64_t back = q->settings->backoff_to_normal_after;
	if (q->backoff && back) {
		uint64_t end = q->backoff_since_ms + back * 1000;
		if (s->now_ms >= end)
			set_backoff(s, q, false, "backoff-to-normal-after");
		else
			queue_wake(s, q, end);
	}
	if (q->alias) {
		/* rolled up after mail came in, or a connection gave some back */
		move_rcpts(s, q, q->alias);
		return;
	}
	due_deferred(s, q);
	/* paused (coremta ctl pause): the recipients wait; resume wakes it */
	if (q->paused || !q->ready.count)
		return;
	if (q->hold_until_ms > s->now_ms) {
		/* defer-queue: the recipients wait, uncounted, for the hold to end */
		queue_wake(s, q, q->hold_until_ms);
		return;
	}
	q->hold_until_ms = 0;
	if (q->dns == QDNS_READY && q->dns_expires_ms <= s->now_ms && !q->conns)
		q->dns = QDNS_NONE;
	if (q->dns == QDNS_NONE)
		start_dns(s, q);
	if (q->dns != QDNS_READY)
		return;
	if (q->targets.status != DNS_OK) {
		struct smtp_reply rep = { .local = true };
		switch (q->targets.status) {
		case DNS_NXDOMAIN:
			rep = (struct smtp_reply){ 550, "5.1.2", true, "domain does not exist (NXDOMAIN)", false };
			break;
		case DNS_NULL_MX:
			rep = (struct smtp_reply){ 556, "5.1.10", true, "domain accepts no mail (null MX)", false };
			break;
		case DNS_NO_ADDRESS:
			rep = (struct smtp_reply){ 550, "5.4.4", true, "no address for any mail exchanger", false };
			break;
		default:
			rep = (struct smtp_reply){ 451, "4.4.3", true, "DNS lookup failed temporarily", false };
		}
		fail_ready(s, q, &rep);
		if (q->targets.status == DNS_TEMPFAIL)
			q->dns = QDNS_NONE;
		return;
	}
	/* each idle one once: conn_next_txn takes c off the list or leaves it */
	for (struct sconn *c = q->idle_head, *next; c && q->ready.count; c = next) {
		next = c->q_idle.next;
		if (c->state == SC_OPEN)
			conn_next_txn(s, c);
		BUG_ON(next && (!next->idle || next->q != q));	/* only c changed */
	}
	bool warm_full;
	if (q->ready.count && pick_source_why(s, q, false, &warm_full) < 0 && warm_full) {
		/* over today's warm-up cap: the mail waits, uncounted, for tomorrow */
		queue_wake(s, q, s->now_ms + (uint64_t)(86400 - s->now_s % 86400) * 1000);
		return;
	}
	if (q->ready.count && pick_source(s, q, false) < 0) {
		static const struct smtp_reply off = {
			.code = 451, .status = "4.4.0", .local = true,
			.text = "every source IP of the queue is disabled (disable-source-ip)",
		};
		fail_ready(s, q, &off);
		return;
	}
	/* adaptive-rate: no new connection before its next token */
	int nsrc = q->settings->adaptive_rate ? pick_source(s, q, false) : -1;
	struct warm_entry *ad = nsrc >= 0 ? adapt_of(s, q, nsrc) : NULL;
	uint64_t ad_wait = ad ? sched_bucket_wait_ms(&ad->bucket, s->now_ms) : 0;
	if (ad_wait && q->conns) {
		queue_wake(s, q, s->now_ms + ad_wait);
		return;
	}
	struct sched_state st = {
		.ready = q->ready.count,
		.conns = q->conns,
		.idle = q->idle,
		.pending = q->connecting,
		.max_out = queue_max_out(q),
		.shard_busy_pct = s->busy_pct,
	};
	struct cap_dest *dest;
	bool total_full;
	st.room = queue_room(s, q, &dest, &total_full);
	struct sched_plan plan;
	sched_plan(&st, &q->msg_rate, &q->connect_rate, s->now_ms, &plan);
	q->waiting_slot = plan.want_slot && !total_full && dest;
	if (plan.want_slot) {
		/* idle connections, of any queue and shard, give way */
		if (total_full)
			caps_want_total(s->set->caps, s->now_ms);
		else if (dest)
			caps_want(s->set->caps, dest, s->now_ms);
	}
	if (q->waiting_slot) {
		/* or are handed over, within this shard (conn_handover) */
		q->wait_dest = dest;
		if (!q->in_waiters) {
			if (s->nwaiters == s->cap_waiters) {
				s->cap_waiters = s->cap_waiters ? 2 * s->cap_waiters : 64;
				s->waiters = xrealloc(s->waiters, s->cap_waiters * sizeof(*s->waiters));
			}
			s->waiters[s->nwaiters++] = q;
			q->in_waiters = true;
		}
	}
	for (uint32_t i = 0; i < plan.open; i++) {
		struct sconn *c = conn_adopt_idle(s, q);
		if (c) {
			conn_next_txn(s, c);
			continue;
		}
		if (!open_conn(s, q)) {
			/* a shared cap filled meanwhile (or the queue failed) */
			if (q->ready.count)
				queue_wake(s, q, s->now_ms + SCHED_TICK_MS);
			break;
		}
	}
	/* a queue waiting for a slot is looked at each tick (wake_waiters) */
	if (plan.wake_ms && !q->waiting_slot)
		queue_wake(s, q, plan.wake_ms);
}
