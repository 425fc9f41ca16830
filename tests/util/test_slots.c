/*
 * tests/util/test_slots.c - slot tables: generations make stale
 * completions visible, items never move, user_data round-trips.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>

#include "util/slots.h"

struct item {
	struct slot_hdr hdr;
	int value;
};

Test(slots, generations_and_stable_items)
{
	struct slot_table t;
	struct item *first;

	slot_table_init(&t, sizeof(struct item));
	first = slot_alloc(&t);
	first->value = 42;
	uint32_t slot = first->hdr.slot, gen = first->hdr.gen;
	/* growing past many chunks never moves a live item */
	for (int i = 0; i < 5000; i++)
		((struct item *)slot_alloc(&t))->value = i;
	cr_expect_eq(slot_get(&t, slot, gen), first);
	cr_expect_eq(first->value, 42);
	cr_expect_eq(t.live, 5001);

	slot_free(&t, first);
	cr_expect_null(slot_get(&t, slot, gen), "a freed slot still answers");
	struct item *again = slot_alloc(&t);
	cr_expect_eq(again->hdr.slot, slot, "freed slots are reused");
	cr_expect_neq(again->hdr.gen, gen, "a reused slot keeps its old generation");
	cr_expect_null(slot_get(&t, slot, gen), "a stale completion finds the new item");
	cr_expect_eq(again->value, 0, "a new item is zeroed");
	cr_expect_null(slot_get(&t, 999999, 1));
	cr_expect_null(slot_at(&t, t.count));
	slot_table_destroy(&t);
}

Test(slots, user_data_round_trip)
{
	unsigned kind;
	uint32_t slot, gen;

	ud_unpack(ud_pack(7, SLOT_MAX, 0xdeadbeef), &kind, &slot, &gen);
	cr_expect_eq(kind, 7);
	cr_expect_eq(slot, SLOT_MAX);
	cr_expect_eq(gen, 0xdeadbeef);
	ud_unpack(ud_pack(255, 0, 0), &kind, &slot, &gen);
	cr_expect_eq(kind, 255);
	cr_expect_eq(slot, 0);
}
