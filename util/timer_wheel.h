/*
 * util/timer_wheel.h - a hashed timing wheel: timers keyed by a due time
 * in milliseconds, armed, re-armed and cancelled in O(1), expired in time
 * proportional to the ticks passed plus the timers that come due.
 *
 * A shard holds tens of thousands of connections and queues; sweeping
 * them all on every tick to find the few whose deadline passed costs more
 * than the work itself.  Each timer is an intrusive node in its owner
 * (connection, queue), so arming never allocates.  A timer due beyond one
 * turn of the wheel waits in its slot and is skipped until its turn.
 *
 * A wheel belongs to one thread.  Nodes must not move while armed.
 */
#ifndef COREMTA_UTIL_TIMER_WHEEL_H
#define COREMTA_UTIL_TIMER_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tw_node {
	struct tw_node *next, *prev;	/* NULL/NULL: not armed */
	uint64_t due_ms;
	unsigned kind;			/* the owner's tag, untouched here */
};

struct timer_wheel {
	struct tw_node *slots;		/* list heads (sentinels) */
	size_t nslots;			/* a power of two */
	uint64_t tick_ms;
	uint64_t next_tick;		/* ticks before this one are finished */
	size_t armed;
};

/*
 * tw_init - slots of tick_ms each (nslots rounded up to a power of two);
 * time starts at now_ms.
 */
void tw_init(struct timer_wheel *w, uint64_t tick_ms, size_t nslots, uint64_t now_ms);
/* tw_destroy - free the slots; armed nodes are simply forgotten. */
void tw_destroy(struct timer_wheel *w);

/* tw_arm - (re)arm n for due_ms; a time already past fires on the next tw_expire. */
void tw_arm(struct timer_wheel *w, struct tw_node *n, uint64_t due_ms);
/* tw_cancel - disarm n; fine when it is not armed. */
void tw_cancel(struct timer_wheel *w, struct tw_node *n);
static inline bool tw_armed(const struct tw_node *n)
{
	return n->next != NULL;
}

/*
 * tw_expire - disarm and return one node due at or before now_ms, or
 * NULL when none is left.  Call it until NULL; a callback may re-arm the
 * node it got (for a later time) or arm and cancel others.
 */
struct tw_node *tw_expire(struct timer_wheel *w, uint64_t now_ms);

/*
 * tw_quiet_ms - how long after now_ms no armed timer can come due, at most
 * horizon_ms: the owner may sleep that long.  Never too long; may be
 * short (a slot holding a timer of a later turn counts as due when the
 * slot comes round).  0 when one is due already.  Looks at no more than
 * horizon_ms / tick_ms slots.
 */
uint64_t tw_quiet_ms(const struct timer_wheel *w, uint64_t now_ms, uint64_t horizon_ms);

#endif
