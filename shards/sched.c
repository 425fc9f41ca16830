/*
 * shards/sched.c - the scheduler's pure decisions (see sched.h): token
 * buckets, the limits in force, the retry schedule, and the plan of one
 * queue at a given time.  No clock is read here; the caller passes now.
 *
 * Threads: any; no shared state.
 */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "shards/dns.h"
#include "shards/sched.h"

static bool rate_unlimited(const struct cfg_rate *r)
{
	return r->unlimited || !r->period_s || !r->count;
}

void sched_bucket_init(struct sched_bucket *b, const struct cfg_rate *r, uint64_t now)
{
	memset(b, 0, sizeof(*b));
	if (rate_unlimited(r))
		return;
	b->per_ms = (double)r->count / ((double)r->period_s * 1000.0);
	/*
	 * No bursts beyond what two ticks accumulate: receivers count per
	 * second, and the rate must hold over any window, not just on
	 * average.
	 */
	b->burst = b->per_ms * 2 * SCHED_TICK_MS < 1.0 ? 1.0 : b->per_ms * 2 * SCHED_TICK_MS;
	b->tokens = 1.0;
	b->last_ms = now;
}

static void bucket_refill(struct sched_bucket *b, uint64_t now)
{
	if (now > b->last_ms) {
		b->tokens += (double)(now - b->last_ms) * b->per_ms;
		b->last_ms = now;
	}
	if (b->tokens > b->burst)
		b->tokens = b->burst;
}

bool sched_bucket_take(struct sched_bucket *b, uint64_t now)
{
	if (b->per_ms == 0)
		return true;
	bucket_refill(b, now);
	if (b->tokens < 1.0)
		return false;
	b->tokens -= 1.0;
	return true;
}

uint64_t sched_bucket_wait_ms(struct sched_bucket *b, uint64_t now)
{
	if (b->per_ms == 0)
		return 0;
	/*
	 * Refill before answering: the tokens that came while no connection
	 * took any are there (a bucket only read, never refilled, waited
	 * forever once its queue's connections had closed).
	 */
	bucket_refill(b, now);
	if (b->tokens >= 1.0)
		return 0;
	return (uint64_t)((1.0 - b->tokens) / b->per_ms) + 1;
}

/* in_force - the normal rate n, or in backoff the backoff rate b if stricter */
static const struct cfg_rate *in_force(const struct cfg_rate *n, const struct cfg_rate *b,
				       bool backoff)
{
	if (!backoff || rate_unlimited(b))
		return n;
	if (rate_unlimited(n))
		return b;
	/* b->count / b->period_s < n->count / n->period_s, without division */
	return b->count * n->period_s < n->count * b->period_s ? b : n;
}

const struct cfg_rate *sched_msg_rate(const struct cfg_queue *qs, bool backoff)
{
	return in_force(&qs->max_msg_rate, &qs->backoff_max_msg_rate, backoff);
}

const struct cfg_rate *sched_connect_rate(const struct cfg_queue *qs, bool backoff)
{
	return in_force(&qs->max_connect_rate, &qs->backoff_max_connect_rate, backoff);
}

uint32_t sched_max_out(const struct cfg_queue *qs, const struct cfg_vmta *vmta, bool backoff)
{
	uint32_t limit = qs->max_smtp_out;

	if (backoff && qs->backoff_max_smtp_out < limit)
		limit = qs->backoff_max_smtp_out;
	if (vmta && vmta->max_smtp_out && vmta->max_smtp_out < limit)
		limit = vmta->max_smtp_out;
	return limit;
}

const struct cfg_schedule *sched_retry(const struct cfg_queue *qs, bool backoff)
{
	return backoff ? &qs->backoff_retry_after : &qs->retry_after;
}

uint64_t sched_retry_delay_ms(const struct cfg_schedule *sch, uint32_t attempts)
{
	if (!sch->count)
		return 0;
	uint32_t step = attempts ? attempts - 1 : 0;

	if (step >= sch->count)
		step = sch->count - 1;
	return (uint64_t)sch->seconds[step] * 1000;
}

void sched_plan(const struct sched_state *st, struct sched_bucket *msg_rate,
		struct sched_bucket *connect_rate, uint64_t now, struct sched_plan *p)
{
	*p = (struct sched_plan){ 0 };
	if (!st->ready)
		return;
	uint64_t wait = sched_bucket_wait_ms(msg_rate, now);
	if (wait) {
		/* no connection for mail the rate will not let go yet */
		p->wake_ms = now + wait;
		return;
	}
	uint32_t busy = st->conns - st->idle;
	uint32_t room = st->room;
	/*
	 * Ramp up: another connection only while the busy ones have a
	 * backlog (two waiting transactions each) and few are still
	 * connecting or waiting for a greeting.  Opening one per waiting
	 * message would pay a handshake for each and look like a flood.
	 */
	/*
	 * A saturated shard is the bottleneck itself: the connections in
	 * flight already get more than it can serve, and each new one only
	 * costs it a handshake and turns.  Not ramping there keeps the count
	 * to what the receivers need; a queue with nothing in flight still
	 * opens one (the invariant), and a shard that mostly waits (slow
	 * receivers) ramps as before.
	 */
	uint32_t ramp_limit = st->shard_busy_pct >= SCHED_SATURATED_PCT ? 1 : UINT32_MAX;

	while (busy + p->open < ramp_limit &&
	       st->ready > 2 * (busy + p->open) &&
	       st->pending + p->open < SCHED_RAMP_PENDING &&
	       st->conns + p->open < st->max_out) {
		if (!room) {
			/* a shared cap: look again soon, and ask idle ones to go */
			p->want_slot = true;
			p->wake_ms = now + SCHED_TICK_MS;
			return;
		}
		if (!sched_bucket_take(connect_rate, now)) {
			p->wake_ms = now + sched_bucket_wait_ms(connect_rate, now);
			return;
		}
		p->open++;
		if (room != UINT32_MAX)
			room--;
	}
}

uint32_t sched_learn_cap(uint32_t cap, uint32_t open)
{
	uint32_t served = open > 1 ? open - 1 : 1;

	return cap && cap < served ? cap : served;
}

uint32_t sched_cap_room(uint32_t cap, uint32_t open)
{
	if (!cap)
		return UINT32_MAX;
	return open >= cap ? 0 : cap - open;
}

/* rollup_matches - whether the line takes host i of res. */
static bool rollup_matches(const struct cfg_mx_rollup *mr, const struct dns_result *res,
			   uint32_t i)
{
	if (!mr->by_ip)
		return fnmatch(mr->pattern, dns_host_name(res, i), FNM_CASEFOLD) == 0;
	for (uint32_t k = 0; k < res->naddrs; k++) {
		struct sockaddr_storage ss;
		if (res->addrs[k].host != i)
			continue;
		dns_addr_sockaddr(&res->addrs[k], &ss);
		if (cfg_cidr_contains(&mr->net, (const struct sockaddr *)&ss))
			return true;
	}
	return false;
}

const struct cfg_mx_rollup *sched_rollup(const struct cfg_global *g,
					 const struct dns_result *res)
{
	if (!g || !res || res->status != DNS_OK || !res->nhosts)
		return NULL;
	uint32_t best = res->hosts[0].pref;

	for (uint32_t i = 1; i < res->nhosts; i++)
		if (res->hosts[i].pref < best)
			best = res->hosts[i].pref;
	for (size_t r = 0; r < g->mx_rollup_count; r++)
		for (uint32_t i = 0; i < res->nhosts; i++)
			if (res->hosts[i].pref == best && rollup_matches(&g->mx_rollups[r], res, i))
				return &g->mx_rollups[r];
	return NULL;
}

static int host_cmp(const void *a, const void *b)
{
	return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

size_t sched_site(const struct dns_result *res, const char *route,
		  const char *own_domain, char *buf, size_t len)
{
	int n;

	/* disable-mx-rollup first: its connections carry only its mail, routed or not */
	if (own_domain)
		n = snprintf(buf, len, "domain:%s", own_domain);
	else if (route)
		n = snprintf(buf, len, "route:%s", route);
	else if (!res || !res->nhosts)
		n = snprintf(buf, len, "domain:");
	else {
		/* the same hosts in another order (MX shuffles equal preferences) */
		const char *names[DNS_MAX_HOSTS];
		uint32_t nh = res->nhosts;
		for (uint32_t i = 0; i < nh; i++)
			names[i] = dns_host_name(res, i);
		qsort(names, nh, sizeof(*names), host_cmp);
		n = snprintf(buf, len, "mx:");
		for (uint32_t i = 0; i < nh && n >= 0 && (size_t)n < len; i++)
			n += snprintf(buf + n, len - (size_t)n, "%s%s", i ? "," : "", names[i]);
	}
	if (n < 0)
		n = 0;
	if ((size_t)n >= len)
		n = len ? (int)len - 1 : 0;
	for (int i = 0; i < n; i++)
		if (buf[i] >= 'A' && buf[i] <= 'Z')
			buf[i] = (char)(buf[i] + 32);
	return (size_t)n;
}
