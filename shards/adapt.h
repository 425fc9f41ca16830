/*
 * shards/adapt.h - adaptive message rate per (site, source IP), pure:
 * "too fast" replies cut the rate multiplicatively, clean intervals
 * raise it additively, always between the configured floor and ceiling
 * (AIMD, as TCP finds a path's rate).  The shard keeps one struct adapt
 * next to the warm-up counter of the same (source IP, site) and feeds it
 * replies and the time.
 *
 * Threads: any; the caller owns the structs.
 */
#ifndef COREMTA_SHARDS_ADAPT_H
#define COREMTA_SHARDS_ADAPT_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"

/* A second cut needs this much time after one: the replies to what was
 * already in flight at the old rate say nothing about the new one. */
#define ADAPT_HOLD_MS		1000
/* The ceiling when neither adaptive-max-msg-rate nor max-msg-rate set one. */
#define ADAPT_DEFAULT_MAX	100.0

struct adapt_params {
	double min, max;	/* messages per second */
	double step;		/* added per clean interval */
	double keep;		/* fraction kept by a cut: 1 - adaptive-decrease% */
	uint64_t every_ms;	/* the clean interval */
};

struct adapt {
	double rate;		/* messages per second in force */
	uint64_t changed_ms;	/* the last change (or the start) */
	uint64_t cut_ms;	/* the last cut; 0 none */
	bool delivered;		/* a delivery since the last change */
	bool too_fast;		/* a "too fast" reply since the last change */
};

/* adapt_params_of - the queue's settings as numbers (adaptive-rate on). */
void adapt_params_of(const struct cfg_queue *qs, struct adapt_params *p);
/* adapt_init - start at the ceiling: the receiver says where it is lower. */
void adapt_init(struct adapt *a, const struct adapt_params *p, uint64_t now);
/*
 * adapt_is_too_fast - a reply that says "slow down": a match of a
 * mode=backoff pattern (backoff_pattern), or a 421/451 whose enhanced
 * status is 4.7.x (rate and reputation deferrals).
 */
bool adapt_is_too_fast(int code, const char *status, bool backoff_pattern);
/* adapt_cut - a "too fast" reply at now; true when the rate changed. */
bool adapt_cut(struct adapt *a, const struct adapt_params *p, uint64_t now);
/* adapt_delivered - a delivery (2xx to the message). */
void adapt_delivered(struct adapt *a);
/*
 * adapt_tick - at now: after a clean interval (deliveries, no "too fast")
 * the rate rises by one step; true when it changed.
 */
bool adapt_tick(struct adapt *a, const struct adapt_params *p, uint64_t now);

#endif
