/*
 * util/timer_wheel.c - the hashed timing wheel (see timer_wheel.h).
 * One thread per wheel.
 */
#include <stdlib.h>

#include "util/timer_wheel.h"

#include "util/util.h"

void tw_init(struct timer_wheel *w, uint64_t tick_ms, size_t nslots, uint64_t now_ms)
{
	size_t n = 1;

	BUG_ON(tick_ms == 0 || nslots == 0);
	while (n < nslots)
		n <<= 1;
	w->slots = xcalloc(n, sizeof(*w->slots));
	for (size_t i = 0; i < n; i++)
		w->slots[i].next = w->slots[i].prev = &w->slots[i];
	w->nslots = n;
	w->tick_ms = tick_ms;
	w->next_tick = now_ms / tick_ms;
	w->armed = 0;
}

void tw_destroy(struct timer_wheel *w)
{
	free(w->slots);
	w->slots = NULL;
	w->nslots = 0;
}

static void unlink_node(struct timer_wheel *w, struct tw_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = NULL;
	w->armed--;
}

void tw_cancel(struct timer_wheel *w, struct tw_node *n)
{
	if (tw_armed(n))
		unlink_node(w, n);
}

void tw_arm(struct timer_wheel *w, struct tw_node *n, uint64_t due_ms)
{
	uint64_t tick = due_ms / w->tick_ms;

	tw_cancel(w, n);
	/* a time already past goes in the next slot to be looked at */
	if (tick < w->next_tick)
		tick = w->next_tick;
	struct tw_node *head = &w->slots[tick & (w->nslots - 1)];
	n->due_ms = due_ms;
	n->next = head->next;
	n->prev = head;
	head->next->prev = n;
	head->next = n;
	w->armed++;
}

/* due_in - the first node of the slot due by now_ms, unlinked, or NULL. */
static struct tw_node *due_in(struct timer_wheel *w, size_t slot, uint64_t now_ms)
{
	struct tw_node *head = &w->slots[slot];

	for (struct tw_node *n = head->next; n != head; n = n->next)
		if (n->due_ms <= now_ms) {
			unlink_node(w, n);
			return n;
		}
	return NULL;
}

struct tw_node *tw_expire(struct timer_wheel *w, uint64_t now_ms)
{
	uint64_t now_tick = now_ms / w->tick_ms;
	struct tw_node *n;

	if (!w->armed) {
		if (now_tick > w->next_tick)
			w->next_tick = now_tick;
		return NULL;
	}
	if (now_tick >= w->next_tick + w->nslots) {
		/* idle for a turn or more: every slot once */
		for (size_t i = 0; i < w->nslots; i++)
			if ((n = due_in(w, i, now_ms)))
				return n;
		w->next_tick = now_tick;
	}
	/*
	 * A tick before now_tick is finished once its slot has nothing due;
	 * now_tick's own slot may still hold timers later in this tick.
	 */
	for (uint64_t t = w->next_tick; t <= now_tick; t++) {
		if ((n = due_in(w, t & (w->nslots - 1), now_ms)))
			return n;
		if (t < now_tick)
			w->next_tick = t + 1;
	}
	return NULL;
}

uint64_t tw_quiet_ms(const struct timer_wheel *w, uint64_t now_ms, uint64_t horizon_ms)
{
	if (!w->armed)
		return horizon_ms;
	uint64_t now_tick = now_ms / w->tick_ms;
	/* ticks before now_tick that tw_expire has not finished may hold some */
	uint64_t first = w->next_tick < now_tick ? w->next_tick : now_tick;
	uint64_t last = (now_ms + horizon_ms) / w->tick_ms;

	if (last - first >= w->nslots)
		last = first + w->nslots - 1;	/* every slot once */
	for (uint64_t t = first; t <= last; t++) {
		const struct tw_node *head = &w->slots[t & (w->nslots - 1)];
		if (head->next != head) {
			uint64_t at = t * w->tick_ms;
			return at > now_ms ? at - now_ms : 0;
		}
	}
	return horizon_ms;
}
