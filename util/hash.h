/*
 * util/hash.h - the one hash function (64-bit FNV-1a, with an optional
 * finaliser) and the one open-addressing table of the tree.  A table
 * belongs to one thread; the functions keep no state of their own, so any
 * thread may call them on its own tables.
 */
#ifndef COREMTA_UTIL_HASH_H
#define COREMTA_UTIL_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The FNV-1a offset basis: the seed of a fresh hash. */
#define HASH_SEED 0xcbf29ce484222325ull

uint64_t hash_bytes(uint64_t h, const void *p, size_t n);
uint64_t hash_str(uint64_t h, const char *s);
/* hash_str_lower - as hash_str over the ASCII-lower-cased string */
uint64_t hash_str_lower(uint64_t h, const char *s);
/* hash_mix - a 64-bit finaliser: FNV's low bits are weak for short keys
 * that differ only at the end, so callers that mask or take a modulus of
 * the hash of names mix it first. */
uint64_t hash_mix(uint64_t h);

/*
 * An open-addressing table of item pointers (linear probing), keyed by
 * whatever the caller's hash and equality say.  It holds pointers only:
 * the items live where the caller put them.  The fields are read by
 * HASH_TAB_EACH; only the functions below write them.
 */
struct hash_tab {
	void **slot;
	size_t cap;			/* 0 or a power of two */
	size_t count;
};

typedef uint64_t hash_tab_hash_fn(const void *item);
typedef bool hash_tab_eq_fn(const void *item, const void *key);

/* hash_tab_find - the item equal to key (whose hash is h), or NULL. */
void *hash_tab_find(const struct hash_tab *t, uint64_t h, hash_tab_eq_fn *eq,
		    const void *key);
/* hash_tab_add - insert item (hash h; not present yet), growing the table
 * at half full; rehashing asks hash_of for each item. */
void hash_tab_add(struct hash_tab *t, uint64_t h, void *item, hash_tab_hash_fn *hash_of);
/*
 * hash_tab_remove - take the item equal to key (hash h) out; returns it,
 * or NULL when absent.  The items after it in its run move back where
 * they may (hash_of gives each its hash), so lookups need no tombstones.
 */
void *hash_tab_remove(struct hash_tab *t, uint64_t h, hash_tab_eq_fn *eq, const void *key,
		      hash_tab_hash_fn *hash_of);
/* hash_tab_free - the slots only; the items are the caller's. */
void hash_tab_free(struct hash_tab *t);

/* HASH_TAB_EACH(t, type, var) { ... } - every item, in slot order. */
#define HASH_TAB_EACH(t, type, var)                                            \
	for (size_t hash_tab_i_ = 0; hash_tab_i_ < (t)->cap; hash_tab_i_++)     \
		for (type *var = (t)->slot[hash_tab_i_]; var; var = NULL)

#endif
