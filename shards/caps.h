/*
 * shards/caps.h - connection counts shared by every shard, per
 * destination (IP address and port) and source IP (receivers count per
 * client IP, as PowerMTA's limits do): how many connections we hold there,
 * how many of them the receiver greeted, a limit learned from its "421
 * too many connections", and a "someone waits for a slot here" signal
 * that makes idle connections there give way.
 *
 * Receivers limit connections per client IP and MX host, not per domain,
 * and one receiver serves domains that belong to different shards: these
 * counts are what the shards share about it.  Lock-free: plain atomics,
 * checked before a connect; two shards may both pass the check at once
 * and overshoot by one, which a receiver tolerates; a stall it would not.
 *
 * The operator's ip-connection-limit and mx-connection-limit set a
 * destination's configured limit; an MX host name has an entry of its
 * own (caps_mx) that counts the connections to all its addresses.
 *
 * Threads: caps_new/free on the main thread; everything else from any
 * shard thread.  An entry, once returned, lives as long as the table.
 */
#ifndef COREMTA_SHARDS_CAPS_H
#define COREMTA_SHARDS_CAPS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"

struct dns_addr;

struct cap_dest {
	_Atomic uint64_t key;		/* 0: a free entry */
	_Atomic uint32_t conns;		/* ours, connecting or open, all shards */
	_Atomic uint32_t greeted;	/* of which the receiver greeted */
	_Atomic uint32_t learned;	/* limit learned from a 421; 0 none */
	_Atomic uint64_t learned_until;	/* monotonic ms */
	_Atomic uint64_t want_until;	/* a queue waits for a slot until then */
	_Atomic uint32_t limit1;	/* configured limit + 1; 0: not looked up */
};

struct caps;

/*
 * caps_new - a table for up to nentries destinations (rounded up); cfg
 * (its ip-/mx-connection-limit lines) must outlive it.
 */
struct caps *caps_new(const struct cfg *cfg, uint32_t nentries);
void caps_free(struct caps *t);

/*
 * caps_dest - the entry of a destination from source IP src (NULL: the
 * one the kernel picks), made on first use; NULL when the table is full
 * (that destination is then not counted).
 */
struct cap_dest *caps_dest(struct caps *t, const struct dns_addr *a, const char *src);
/* caps_mx - the entry of an MX host name (all its addresses); NULL: none. */
struct cap_dest *caps_mx(struct caps *t, const char *mx, const char *src);

/* caps_room - connections the destination takes now (UINT32_MAX: no cap). */
uint32_t caps_room(const struct cap_dest *d, uint64_t now_ms);

/*
 * caps_reserve - count one more connection at d if its caps allow it
 * (the check and the count are one atomic step: shards racing for the
 * last slot do not both get it).  caps_release undoes one.  NULL d: yes.
 */
bool caps_reserve(struct cap_dest *d, uint64_t now_ms);
void caps_release(struct cap_dest *d);

/* caps_learn - the receiver refused one more with open of ours there. */
void caps_learn(struct cap_dest *d, uint32_t open, uint64_t now_ms);

/* caps_want - a queue waits for a slot at d (renewed while it waits). */
void caps_want(struct caps *t, struct cap_dest *d, uint64_t now_ms);
/* caps_want_total - a queue waits for a slot under total-max-smtp-out. */
void caps_want_total(struct caps *t, uint64_t now_ms);

/* caps_any_want - whether some queue waits for a slot anywhere. */
bool caps_any_want(const struct caps *t, uint64_t now_ms);
/* caps_total_wanted - whether a queue waits under the total cap. */
bool caps_total_wanted(const struct caps *t, uint64_t now_ms);
/* caps_wanted - whether a queue waits for a slot at d. */
bool caps_wanted(const struct cap_dest *d, uint64_t now_ms);

#endif
