/*
 * shards/adapt.c - the adaptive rate's arithmetic (see adapt.h).  No
 * clock is read here.  Threads: any.
 */
#include <string.h>

#include "shards/adapt.h"

static double per_s(const struct cfg_rate *r)
{
	if (r->unlimited || !r->count || !r->period_s)
		return 0;
	return (double)r->count / (double)r->period_s;
}

void adapt_params_of(const struct cfg_queue *qs, struct adapt_params *p)
{
	p->max = per_s(&qs->adaptive_max_msg_rate);
	if (p->max == 0)
		p->max = per_s(&qs->max_msg_rate);
	if (p->max == 0)
		p->max = ADAPT_DEFAULT_MAX;
	p->min = per_s(&qs->adaptive_min_msg_rate);
	if (p->min > p->max)
		p->min = p->max;
	p->step = per_s(&qs->adaptive_increase);
	p->keep = 1.0 - (double)qs->adaptive_decrease / 100.0;
	p->every_ms = qs->adaptive_increase_every * 1000;
}

void adapt_init(struct adapt *a, const struct adapt_params *p, uint64_t now)
{
	memset(a, 0, sizeof(*a));
	a->rate = p->max;
	a->changed_ms = now;
}

bool adapt_is_too_fast(int code, const char *status, bool backoff_pattern)
{
	if (backoff_pattern)
		return true;
	return (code == 421 || code == 451) && strncmp(status, "4.7.", 4) == 0;
}

bool adapt_cut(struct adapt *a, const struct adapt_params *p, uint64_t now)
{
	a->too_fast = true;
	if (a->cut_ms && now - a->cut_ms < ADAPT_HOLD_MS)
		return false;
	double r = a->rate * p->keep;
	if (r < p->min)
		r = p->min;
	a->cut_ms = now;
	if (r == a->rate)
		return false;
	a->rate = r;
	a->changed_ms = now;
	a->delivered = false;
	a->too_fast = false;
	return true;
}

void adapt_delivered(struct adapt *a)
{
	a->delivered = true;
}

bool adapt_tick(struct adapt *a, const struct adapt_params *p, uint64_t now)
{
	if (now - a->changed_ms < p->every_ms)
		return false;
	if (a->too_fast || !a->delivered || a->rate >= p->max) {
		/* not a clean interval (or nothing to raise): a new one starts */
		a->changed_ms = now;
		a->too_fast = false;
		a->delivered = false;
		return false;
	}
	double r = a->rate + p->step;
	a->rate = r > p->max ? p->max : r;
	a->changed_ms = now;
	a->delivered = false;
	return true;
}
