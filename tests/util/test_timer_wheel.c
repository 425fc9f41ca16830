/*
 * tests/util/test_timer_wheel.c - the timing wheel against a brute-force
 * model: every timer fires once, never before its time, never later than
 * the first expiry call after it; re-arming and cancelling hold.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdlib.h>

#include "util/timer_wheel.h"

Test(timer_wheel, fires_in_time_and_once)
{
	struct timer_wheel w;
	struct tw_node n[3] = { { 0 } };

	tw_init(&w, 50, 8, 1000);
	tw_arm(&w, &n[0], 1120);
	tw_arm(&w, &n[1], 1000 + 50 * 8 * 3 + 20);	/* three turns later */
	tw_arm(&w, &n[2], 900);				/* already past */
	cr_expect_eq(tw_expire(&w, 1000), &n[2], "a past time fires at once");
	cr_expect_null(tw_expire(&w, 1000));
	cr_expect_null(tw_expire(&w, 1119), "fired early");
	cr_expect_eq(tw_expire(&w, 1120), &n[0]);
	cr_expect_not(tw_armed(&n[0]));
	cr_expect_null(tw_expire(&w, 1120), "fired twice");
	/* the slot of n[1] comes round twice before its turn */
	for (uint64_t t = 1150; t < 2220; t += 37)
		cr_expect_null(tw_expire(&w, t), "a later turn fired at %llu", (unsigned long long)t);
	cr_expect_eq(tw_expire(&w, 2220), &n[1]);
	cr_expect_eq(w.armed, 0);
	tw_destroy(&w);
}

Test(timer_wheel, rearm_and_cancel)
{
	struct timer_wheel w;
	struct tw_node a = { 0 }, b = { 0 };

	tw_init(&w, 10, 16, 0);
	tw_arm(&w, &a, 100);
	tw_arm(&w, &a, 300);	/* later: the first time no longer counts */
	tw_arm(&w, &b, 50);
	tw_cancel(&w, &b);
	tw_cancel(&w, &b);	/* twice is fine */
	cr_expect_null(tw_expire(&w, 299));
	cr_expect_eq(tw_expire(&w, 5000), &a, "after a long idle gap");
	cr_expect_null(tw_expire(&w, 5000));
	tw_destroy(&w);
}

/* Random timers against a model, with a callback that re-arms some. */
Test(timer_wheel, matches_a_model)
{
	enum { N = 2000 };
	static struct tw_node n[N];
	static uint64_t due[N];		/* 0: not armed in the model */
	struct timer_wheel w;
	uint64_t now = 7;
	unsigned seed = 12345;

	tw_init(&w, 50, 64, now);
	for (int i = 0; i < N; i++) {
		due[i] = now + (uint64_t)(rand_r(&seed) % 20000);
		tw_arm(&w, &n[i], due[i]);
	}
	size_t fired = 0, rearmed = 0;
	while (fired < N + rearmed) {
		now += (uint64_t)(rand_r(&seed) % 400);
		struct tw_node *x;
		while ((x = tw_expire(&w, now))) {
			int i = (int)(x - n);
			cr_assert(due[i], "timer %d fired but was not armed", i);
			cr_assert_leq(due[i], now, "timer %d fired early", i);
			due[i] = 0;
			fired++;
			if (rand_r(&seed) % 4 == 0 && rearmed < N) {
				due[i] = now + 1 + (uint64_t)(rand_r(&seed) % 5000);
				tw_arm(&w, x, due[i]);
				rearmed++;
			}
		}
		for (int i = 0; i < N; i++)
			cr_assert(!due[i] || due[i] > now, "timer %d due %llu missed at %llu", i,
				  (unsigned long long)due[i], (unsigned long long)now);
		if (rand_r(&seed) % 10 == 0) {
			int i = rand_r(&seed) % N;
			if (due[i]) {
				tw_cancel(&w, &n[i]);
				due[i] = 0;
				fired++;	/* accounted as done */
			}
		}
	}
	cr_expect_eq(w.armed, 0);
	tw_destroy(&w);
}

Test(timer_wheel, quiet_time_is_never_too_long)
{
	struct timer_wheel w;
	struct tw_node a = { 0 }, b = { 0 };

	tw_init(&w, 50, 64, 1000);
	cr_expect_eq(tw_quiet_ms(&w, 1000, 5000), 5000, "an empty wheel sleeps the horizon");
	tw_arm(&w, &a, 1237);
	cr_expect_eq(tw_quiet_ms(&w, 1000, 5000), 200, "until the slot of 1237 begins");
	cr_expect_eq(tw_quiet_ms(&w, 1000, 100), 100, "at most the horizon");
	cr_expect_eq(tw_quiet_ms(&w, 1230, 5000), 0, "its slot has begun");
	tw_arm(&w, &b, 900);	/* already past */
	cr_expect_eq(tw_quiet_ms(&w, 1000, 5000), 0);
	tw_cancel(&w, &b);
	tw_arm(&w, &a, 1000 + 50 * 64 * 2 + 10);	/* two turns on: its slot is 1000's */
	cr_expect_leq(tw_quiet_ms(&w, 1000, 50 * 64 * 4), 50 * 64 * 2 + 10);

	/* random timers: never past the first due time, nor the horizon */
	unsigned seed = 99;
	static struct tw_node n[300];
	uint64_t now = 1000;
	for (int round = 0; round < 2000; round++) {
		int k = rand_r(&seed) % 300;
		if (rand_r(&seed) % 4)
			tw_arm(&w, &n[k], now + (uint64_t)(rand_r(&seed) % 20000));
		else
			tw_cancel(&w, &n[k]);
		now += (uint64_t)(rand_r(&seed) % 40);
		while (tw_expire(&w, now))
			;
		uint64_t first_due = UINT64_MAX;
		for (int i = 0; i < 300; i++)
			if (tw_armed(&n[i]) && n[i].due_ms < first_due)
				first_due = n[i].due_ms;
		if (tw_armed(&a) && a.due_ms < first_due)
			first_due = a.due_ms;
		uint64_t horizon = (uint64_t)(rand_r(&seed) % 10000);
		uint64_t q = tw_quiet_ms(&w, now, horizon);
		cr_assert_leq(q, horizon);
		if (first_due != UINT64_MAX)
			cr_assert_leq(now + q, first_due > now ? first_due : now,
				      "quiet %llu ms at %llu, a timer due at %llu",
				      (unsigned long long)q, (unsigned long long)now,
				      (unsigned long long)first_due);
	}
	tw_destroy(&w);
}
