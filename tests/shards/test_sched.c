/*
 * tests/shards/test_sched.c - the scheduler's pure decisions with a fake
 * clock: token buckets across idle gaps, the limits in force in backoff,
 * the retry schedule, the plan of a queue (ramp-up, shared caps, rates),
 * limits learned from a 421, the never-stall invariant over every small
 * state, MX rollup and sites.  No thread, socket or real time.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include "shards/caps.h"
#include "shards/dns.h"
#include "shards/sched.h"
#include "tests/lib/testlib.h"

static const uint64_t T0 = 5000000;	/* the fake clock's start, ms */

static struct cfg_rate rate(uint64_t count, uint32_t period_s)
{
	return (struct cfg_rate){ .count = count, .period_s = period_s };
}

static const struct cfg_rate unlimited = { .unlimited = true };

/*
 * Regression (issue 11, stall 1): a queue with max-msg-rate 100/s sent a
 * first wave; its connections closed; the second wave was never tried,
 * because the bucket was read without being refilled.
 */
Test(sched, msg_rate_bucket_refills_across_idle_gap)
{
	struct sched_bucket msg, conn;
	struct cfg_rate r = rate(100, 1);
	uint64_t now = T0;

	sched_bucket_init(&msg, &r, now);
	sched_bucket_init(&conn, &unlimited, now);
	/* the first wave empties the bucket */
	int sent = 0;
	while (sched_bucket_take(&msg, now))
		sent++;
	cr_assert_geq(sent, 1);
	cr_assert_gt(sched_bucket_wait_ms(&msg, now), 0);
	/* connections close; a minute passes with no take at all */
	now += 60 * 1000;
	cr_assert_eq(sched_bucket_wait_ms(&msg, now), 0,
		     "a bucket untouched for a minute still says wait");
	struct sched_state st = { .ready = 5, .max_out = 20, .room = UINT32_MAX };
	struct sched_plan p;
	sched_plan(&st, &msg, &conn, now, &p);
	cr_assert_geq(p.open, 1, "the second wave opens no connection");
}

/* Between two takes that empty it, the wait is exactly the next token. */
Test(sched, msg_rate_wait_is_the_next_token)
{
	struct sched_bucket b;
	struct cfg_rate r = rate(10, 1);	/* one per 100 ms */

	sched_bucket_init(&b, &r, T0);
	cr_assert(sched_bucket_take(&b, T0));
	cr_assert_not(sched_bucket_take(&b, T0));
	uint64_t w = sched_bucket_wait_ms(&b, T0);
	cr_assert(w >= 100 && w <= 101, "wait %llu", (unsigned long long)w);
	cr_assert_not(sched_bucket_take(&b, T0 + 50));
	w = sched_bucket_wait_ms(&b, T0 + 50);
	cr_assert(w >= 50 && w <= 51, "wait %llu", (unsigned long long)w);
	cr_assert(sched_bucket_take(&b, T0 + 101));
}

/* The rate holds over a window of fake time, taking as fast as allowed. */
Test(sched, msg_rate_holds_over_any_window)
{
	struct sched_bucket b;
	struct cfg_rate r = rate(20, 1);
	unsigned taken = 0;

	sched_bucket_init(&b, &r, T0);
	for (uint64_t t = T0; t < T0 + 10000; t++)
		while (sched_bucket_take(&b, t))
			taken++;
	/* 10 s at 20/s, plus the burst of two ticks (two tokens) */
	cr_assert(taken >= 199 && taken <= 202, "taken %u", taken);
}

Test(sched, backoff_limits_never_loosen)
{
	struct cfg_queue qs;

	memset(&qs, 0, sizeof(qs));
	qs.max_smtp_out = 20;
	qs.backoff_max_smtp_out = 2;
	qs.max_msg_rate = rate(100, 1);
	qs.backoff_max_msg_rate = rate(10, 60);
	cr_assert_eq(sched_max_out(&qs, NULL, false), 20);
	cr_assert_eq(sched_max_out(&qs, NULL, true), 2);
	cr_assert_eq(sched_msg_rate(&qs, false), &qs.max_msg_rate);
	cr_assert_eq(sched_msg_rate(&qs, true), &qs.backoff_max_msg_rate);
	/* a looser backoff rate keeps the normal one */
	qs.backoff_max_msg_rate = rate(1000, 1);
	cr_assert_eq(sched_msg_rate(&qs, true), &qs.max_msg_rate);
	qs.backoff_max_smtp_out = 50;
	cr_assert_eq(sched_max_out(&qs, NULL, true), 20);
	struct cfg_vmta v;
	memset(&v, 0, sizeof(v));
	v.max_smtp_out = 5;
	cr_assert_eq(sched_max_out(&qs, &v, false), 5);
}

Test(sched, retry_schedule_last_entry_repeats)
{
	struct cfg_schedule sch = { .count = 3, .seconds = { 60, 300, 1800 } };

	cr_assert_eq(sched_retry_delay_ms(&sch, 1), 60000);
	cr_assert_eq(sched_retry_delay_ms(&sch, 2), 300000);
	cr_assert_eq(sched_retry_delay_ms(&sch, 3), 1800000);
	cr_assert_eq(sched_retry_delay_ms(&sch, 40), 1800000);
	struct cfg_queue qs;
	memset(&qs, 0, sizeof(qs));
	qs.retry_after = sch;
	qs.backoff_retry_after = (struct cfg_schedule){ .count = 1, .seconds = { 3600 } };
	cr_assert_eq(sched_retry_delay_ms(sched_retry(&qs, true), 1), 3600000);
	cr_assert_eq(sched_retry_delay_ms(sched_retry(&qs, false), 1), 60000);
}

/* Ramp-up: two connections not yet greeted at most, then wait for them. */
Test(sched, plan_ramps_up_behind_pending_connections)
{
	struct sched_bucket msg, conn;
	struct sched_plan p;

	sched_bucket_init(&msg, &unlimited, T0);
	sched_bucket_init(&conn, &unlimited, T0);
	struct sched_state st = { .ready = 100, .max_out = 50, .room = UINT32_MAX };
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, SCHED_RAMP_PENDING);
	/* they connect but the receiver has not greeted them: no more */
	st.conns = st.pending = SCHED_RAMP_PENDING;
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, 0);
	/* greeted and busy: the ramp goes on */
	st.pending = 0;
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, SCHED_RAMP_PENDING);
	/* never beyond max-smtp-out */
	st.conns = 49;
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, 1);
}

/*
 * Issue 16: a CPU-bound shard opened connections up to total-max-smtp-out
 * because its own slowness left recipients ready.  Saturated, a queue with
 * a connection in flight opens no more; one with none gets its first; a
 * shard that mostly waits (slow receivers) ramps as before.
 */
Test(sched, plan_saturated_shard_does_not_ramp)
{
	static const struct {
		uint32_t conns, idle, pending, busy_pct, open;
		const char *why;
	} cases[] = {
		{ 3, 0, 0, SCHED_SATURATED_PCT, 0, "busy connections, saturated: no more" },
		{ 3, 0, 1, 100, 0, "one still connecting is in flight too" },
		{ 0, 0, 0, SCHED_SATURATED_PCT, 1, "none at all: the first, only the first" },
		{ 2, 2, 0, 100, 1, "idle ones the rate held are not in flight" },
		{ 3, 0, 0, SCHED_SATURATED_PCT - 1, SCHED_RAMP_PENDING,
		  "a shard that mostly waits: the ramp as before" },
		{ 0, 0, 0, 0, SCHED_RAMP_PENDING, "an idle shard: the ramp as before" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sched_bucket msg, conn;
		struct sched_plan p;
		sched_bucket_init(&msg, &unlimited, T0);
		sched_bucket_init(&conn, &unlimited, T0);
		struct sched_state st = {
			.ready = 1000, .conns = cases[i].conns, .idle = cases[i].idle,
			.pending = cases[i].pending, .max_out = 1200, .room = UINT32_MAX,
			.shard_busy_pct = cases[i].busy_pct,
		};
		sched_plan(&st, &msg, &conn, T0, &p);
		cr_assert_eq(p.open, cases[i].open, "case %zu: %s", i, cases[i].why);
		if (st.conns > st.idle && st.shard_busy_pct >= SCHED_SATURATED_PCT)
			cr_assert_eq(p.wake_ms, 0, "case %zu: the busy ones take the work", i);
	}
}

/* A shared cap that is full: no connection, a wake-up, and a request for a slot. */
Test(sched, plan_under_a_full_shared_cap_wants_a_slot)
{
	struct sched_bucket msg, conn;
	struct sched_plan p;

	sched_bucket_init(&msg, &unlimited, T0);
	sched_bucket_init(&conn, &unlimited, T0);
	struct sched_state st = { .ready = 10, .max_out = 50, .room = 0 };
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, 0);
	cr_assert(p.want_slot);
	cr_assert_eq(p.wake_ms, T0 + SCHED_TICK_MS);
	st.room = 1;
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, 1);
}

Test(sched, plan_waits_for_the_connect_rate)
{
	struct sched_bucket msg, conn;
	struct cfg_rate cr = rate(1, 1);
	struct sched_plan p;

	sched_bucket_init(&msg, &unlimited, T0);
	sched_bucket_init(&conn, &cr, T0);
	struct sched_state st = { .ready = 10, .max_out = 50, .room = UINT32_MAX };
	sched_plan(&st, &msg, &conn, T0, &p);
	cr_assert_eq(p.open, 1);
	cr_assert(p.wake_ms > T0 && p.wake_ms <= T0 + 1001);
}

/* A 421 "too many connections" with n open sets the destination's cap to n - 1. */
Test(sched, cap_learned_from_421)
{
	cr_assert_eq(sched_learn_cap(0, 21), 20);
	cr_assert_eq(sched_learn_cap(20, 25), 20, "a later 421 never raises it");
	cr_assert_eq(sched_learn_cap(20, 12), 11);
	cr_assert_eq(sched_learn_cap(0, 1), 1, "never below one connection");
	cr_assert_eq(sched_cap_room(0, 500), UINT32_MAX);
	cr_assert_eq(sched_cap_room(20, 20), 0);
	cr_assert_eq(sched_cap_room(20, 25), 0);
	cr_assert_eq(sched_cap_room(20, 5), 15);
}

/*
 * The invariant over every small state: ready recipients have a busy or
 * pending connection, a connection opened now, or a wake-up no later
 * than the rate's next token (or the next tick under a shared cap).
 */
Test(sched, plan_never_stalls)
{
	struct cfg_rate rates[] = { { .unlimited = true }, rate(100, 1), rate(1, 60) };
	const uint32_t rooms[] = { 0, 1, 3, UINT32_MAX };
	unsigned checked = 0;

	for (size_t ri = 0; ri < 3; ri++)
	for (size_t ci = 0; ci < 3; ci++)
	for (int drained = 0; drained < 2; drained++)
	for (uint32_t ready = 1; ready <= 6; ready++)
	for (uint32_t max_out = 1; max_out <= 4; max_out++)
	for (uint32_t conns = 0; conns <= max_out; conns++)
	for (uint32_t idle = 0; idle <= conns; idle++)
	for (uint32_t pending = 0; pending <= conns - idle; pending++)
	for (size_t k = 0; k < 4; k++)
	for (uint32_t load = 0; load <= 100; load += 100) {
		struct sched_bucket msg, conn;
		uint64_t now = T0 + 7;
		sched_bucket_init(&msg, &rates[ri], T0);
		sched_bucket_init(&conn, &rates[ci], T0);
		/* an unlimited bucket never runs dry */
		if (drained) {
			while (msg.per_ms && sched_bucket_take(&msg, now))
				;
			while (conn.per_ms && sched_bucket_take(&conn, now))
				;
		}
		struct sched_bucket probe = msg;
		uint64_t token = sched_bucket_wait_ms(&probe, now);
		/* idle connections took the work unless the rate held them */
		if (idle && !token)
			continue;
		struct sched_state st = {
			.ready = ready, .conns = conns, .idle = idle, .pending = pending,
			.max_out = max_out, .room = rooms[k], .shard_busy_pct = load,
		};
		struct sched_plan p;
		sched_plan(&st, &msg, &conn, now, &p);
		bool in_flight = conns - idle > 0;
		bool woken = p.wake_ms > now;
		cr_assert(in_flight || p.open || woken,
			  "stall: ready=%u conns=%u idle=%u pending=%u max=%u room=%u rate=%zu/%zu load=%u",
			  ready, conns, idle, pending, max_out, rooms[k], ri, ci, load);
		if (woken && !p.open && !in_flight) {
			uint64_t bound = now + (token ? token : 0) + SCHED_TICK_MS + 60000;
			cr_assert_leq(p.wake_ms, bound);
		}
		if (token)
			cr_assert_eq(p.wake_ms, now + token, "not woken at the next token");
		cr_assert_leq(conns + p.open, max_out);
		if (rooms[k] != UINT32_MAX)
			cr_assert_leq(p.open, rooms[k]);
		checked++;
	}
	cr_assert_gt(checked, 1000);
}

static struct dns_addr addr_of(const char *ip, uint16_t port)
{
	struct dns_addr a = { .family = AF_INET, .port = port };

	inet_pton(AF_INET, ip, &a.ip.v4);
	return a;
}

/*
 * Regression (issue 11, stall 2), with a fake clock: a receiver serving
 * 4 connections, all of them queue A's and idle; queue B's connection
 * is not greeted.  After the greeting patience B's wait marks the
 * destination wanted (which makes idle connections there give way); the
 * signal lapses unless renewed, and never marks another destination.
 */
Test(sched, stall2_ungreeted_connection_makes_idle_ones_give_way)
{
	struct caps *t = caps_new(NULL, 64);
	struct dns_addr rx = addr_of("127.0.0.30", 25), other = addr_of("127.0.0.31", 25);
	struct cap_dest *d = caps_dest(t, &rx, NULL), *o = caps_dest(t, &other, NULL);
	uint64_t now = T0;

	cr_assert(d && o && d != o);
	cr_assert_eq(caps_dest(t, &rx, NULL), d, "one entry per destination");
	cr_assert_neq(caps_dest(t, &rx, "127.0.0.99"), d, "source IPs share a count");
	/* queue A: four connections, greeted */
	atomic_store(&d->conns, 4);
	atomic_store(&d->greeted, 4);
	cr_assert_eq(caps_room(d, now), UINT32_MAX, "no limit known yet");
	/* queue B opens its ramp: the receiver leaves it ungreeted */
	struct sched_bucket msg, conn;
	struct sched_plan p;
	sched_bucket_init(&msg, &unlimited, now);
	sched_bucket_init(&conn, &unlimited, now);
	struct sched_state st = { .ready = 10, .max_out = 4, .room = caps_room(d, now) };
	sched_plan(&st, &msg, &conn, now, &p);
	cr_assert_eq(p.open, SCHED_RAMP_PENDING);
	atomic_fetch_add(&d->conns, p.open);
	/* no one waits yet: idle connections stay */
	cr_assert_not(caps_any_want(t, now));
	now += SCHED_GREETING_PATIENCE_MS;
	caps_want(t, d, now);		/* what the greeting timer does */
	cr_assert(caps_any_want(t, now));
	cr_assert(caps_wanted(d, now), "the idle connections do not give way");
	cr_assert_not(caps_wanted(o, now), "another destination's idle ones give way");
	cr_assert_not(caps_total_wanted(t, now));
	/* greeted at last: no renewal, the signal lapses */
	now += SCHED_WANT_MS;
	cr_assert_not(caps_wanted(d, now));
	cr_assert_not(caps_any_want(t, now));
	caps_free(t);
}

/*
 * A 421 "too many connections" with 6 open: the destination takes 5
 * until the learned limit lapses; a queue that wants more waits for a
 * slot (a wake-up next tick), it does not retry the receiver in a loop.
 */
Test(sched, stall2_421_lowers_the_destination_count)
{
	struct caps *t = caps_new(NULL, 64);
	struct dns_addr rx = addr_of("127.0.0.32", 2525);
	struct cap_dest *d = caps_dest(t, &rx, NULL);
	uint64_t now = T0;

	atomic_store(&d->conns, 6);
	caps_learn(d, 6, now);
	cr_assert_eq(atomic_load(&d->learned), 5);
	cr_assert_eq(caps_room(d, now), 0);
	struct sched_bucket msg, conn;
	struct sched_plan p;
	sched_bucket_init(&msg, &unlimited, now);
	sched_bucket_init(&conn, &unlimited, now);
	/* the refused one closes: 5 open, all busy, mail waiting */
	atomic_store(&d->conns, 5);
	struct sched_state st = { .ready = 40, .conns = 5, .max_out = 20,
				  .room = caps_room(d, now) };
	sched_plan(&st, &msg, &conn, now, &p);
	cr_assert_eq(p.open, 0);
	cr_assert(p.want_slot);
	cr_assert_eq(p.wake_ms, now + SCHED_TICK_MS);
	/* one closes: room for one */
	atomic_store(&d->conns, 4);
	cr_assert_eq(caps_room(d, now), 1);
	/* the limit lapses: the receiver is tried above it again */
	now += SCHED_LEARNED_CAP_MS;
	cr_assert_eq(caps_room(d, now), UINT32_MAX);
	caps_free(t);
}

/* ip-connection-limit and mx-connection-limit: the first matching line wins. */
Test(sched, configured_connection_limits)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load("ip-connection-limit 127.0.0.40/32 2\n"
				       "ip-connection-limit 127.0.0.0/8 7\n"
				       "mx-connection-limit *.cap.test 3\n", &dl);
	char *text = testlib_diag_text(&dl);
	cr_assert_not_null(cfg, "%s", text);
	free(text);
	diag_free(&dl);
	struct caps *t = caps_new(cfg, 64);
	struct dns_addr a40 = addr_of("127.0.0.40", 25), a41 = addr_of("127.0.0.41", 25);
	struct cap_dest *d40 = caps_dest(t, &a40, NULL), *d41 = caps_dest(t, &a41, NULL);
	struct cap_dest *mx = caps_mx(t, "MX1.Cap.Test", NULL), *other = caps_mx(t, "mx.other.test", NULL);

	cr_assert_eq(caps_room(d40, T0), 2);
	cr_assert_eq(caps_room(d41, T0), 7);
	cr_assert_eq(caps_room(mx, T0), 3, "the MX pattern ignores case");
	cr_assert_eq(caps_room(other, T0), UINT32_MAX);
	cr_assert_eq(caps_mx(t, "mx1.cap.test", NULL), mx);
	atomic_store(&d40->conns, 2);
	cr_assert_eq(caps_room(d40, T0), 0);
	/* a learned limit below the configured one wins while it lasts */
	atomic_store(&d41->conns, 4);
	caps_learn(d41, 4, T0);
	cr_assert_eq(caps_room(d41, T0), 0);
	cr_assert_eq(caps_room(d41, T0 + SCHED_LEARNED_CAP_MS), 3);
	caps_free(t);
	cfg_free(cfg);
}

/* mx_result - an MX answer: hosts "name/pref/ip", in the order given. */
static struct dns_result mx_result(const char *const *hosts)
{
	struct dns_result res = { .status = DNS_OK, .ttl = 300 };
	size_t off = 0;

	for (; *hosts; hosts++) {
		char name[DNS_NAME_MAX + 1], ip[64];
		unsigned pref;
		cr_assert_eq(sscanf(*hosts, "%253[^/]/%u/%63s", name, &pref, ip), 3);
		struct dns_host *h = &res.hosts[res.nhosts];
		h->pref = pref;
		h->name = (uint16_t)off;
		h->naddrs = 1;
		memcpy(res.names + off, name, strlen(name) + 1);
		off += strlen(name) + 1;
		res.addrs[res.naddrs] = addr_of(ip, 25);
		res.addrs[res.naddrs++].host = res.nhosts++;
	}
	return res;
}

static struct cfg *load_or_fail(const char *text)
{
	struct diag_list dl = { 0 };
	struct cfg *cfg = testlib_load(text, &dl);
	char *t = testlib_diag_text(&dl);

	cr_assert_not_null(cfg, "%s", t);
	free(t);
	diag_free(&dl);
	return cfg;
}

/*
 * MX rollup (issue 11): a domain whose most preferred MX host matches an
 * <mx-rollup-list> line is queued under the line's name; a backup MX
 * does not roll a domain up; the first line that matches wins.
 */
Test(sched, rollup_matches_the_most_preferred_mx)
{
	struct cfg *cfg = load_or_fail(
		"<mx-rollup-list>\n"
		"    mx *.l.google.test google.rollup\n"
		"    mx *.mail.protection.test MS.Rollup\n"
		"    mx 127.0.0.64/26 hosting.rollup rollup-by-ip\n"
		"    mx *.test catchall.rollup\n"
		"</mx-rollup-list>\n");
	const struct cfg_global *g = cfg_global(cfg);
	struct dns_result gw = mx_result((const char *[]){
		"alt1.aspmx.l.google.test/5/127.0.0.2", "aspmx.l.google.test/1/127.0.0.1", NULL });
	struct dns_result ms = mx_result((const char *[]){
		"a-b.mail.protection.test/0/127.0.0.3", NULL });
	struct dns_result backup = mx_result((const char *[]){
		"mx.own.example/10/127.0.0.4", "backup.l.google.test/20/127.0.0.5", NULL });
	struct dns_result byip = mx_result((const char *[]){
		"mx.customer.example/10/127.0.0.70", NULL });
	struct dns_result all = mx_result((const char *[]){ "mx.other.test/10/127.0.0.6", NULL });

	cr_assert_str_eq(sched_rollup(g, &gw)->name, "google.rollup");
	cr_assert_str_eq(sched_rollup(g, &ms)->name, "ms.rollup", "the name is lower-cased");
	cr_assert_null(sched_rollup(g, &backup), "a backup MX rolled the domain up");
	cr_assert_str_eq(sched_rollup(g, &byip)->name, "hosting.rollup");
	cr_assert_str_eq(sched_rollup(g, &all)->name, "catchall.rollup");
	struct dns_result nx = { .status = DNS_NXDOMAIN };
	cr_assert_null(sched_rollup(g, &nx));
	cfg_free(cfg);
	cfg = load_or_fail("ip-connection-limit 127.0.0.0/8 5\n");
	cr_assert_null(sched_rollup(cfg_global(cfg), &gw), "no list, no rollup");
	cfg_free(cfg);
}

Test(sched, rollup_list_errors_name_the_line)
{
	static const char *const bad[] = {
		"<mx-rollup-list>\nmx *.l.google.test\n</mx-rollup-list>\n",
		"<mx-rollup-list>\nmx *.l.google.test google.com\n</mx-rollup-list>\n",
		"<mx-rollup-list>\nmx *.l.google.test g.rollup by-name\n</mx-rollup-list>\n",
		"<mx-rollup-list>\nmx *.l.google.test g.rollup rollup-by-ip\n</mx-rollup-list>\n",
		NULL,
	};

	for (const char *const *b = bad; *b; b++) {
		struct diag_list dl = { 0 };
		struct cfg *cfg = testlib_load(*b, &dl);
		char *t = testlib_diag_text(&dl);
		cr_expect_null(cfg, "loaded: %s", *b);
		cr_expect(strstr(t, ":2: ") != NULL, "no line number in: %s", t);
		free(t);
		diag_free(&dl);
		cfg_free(cfg);
	}
}

/*
 * Sites: domains whose MX host sets are identical (in any order) share a
 * site, other sets do not; a domain with disable-mx-rollup is a site of
 * its own, routed or not; an smtp-hosts route is the site of every other
 * domain it serves.
 */
Test(sched, identical_mx_sets_share_a_site)
{
	struct dns_result a = mx_result((const char *[]){
		"mx1.site.test/10/127.0.0.1", "MX2.site.test/10/127.0.0.2", NULL });
	struct dns_result b = mx_result((const char *[]){
		"mx2.site.test/10/127.0.0.2", "mx1.site.test/10/127.0.0.1", NULL });
	struct dns_result c = mx_result((const char *[]){ "mx1.site.test/10/127.0.0.1", NULL });
	char sa[512], sb[512], sc[512];

	sched_site(&a, NULL, NULL, sa, sizeof(sa));
	sched_site(&b, NULL, NULL, sb, sizeof(sb));
	sched_site(&c, NULL, NULL, sc, sizeof(sc));
	cr_assert_str_eq(sa, "mx:mx1.site.test,mx2.site.test");
	cr_assert_str_eq(sa, sb);
	cr_assert_str_neq(sa, sc);
	sched_site(&a, NULL, "one.test", sa, sizeof(sa));
	sched_site(&b, NULL, "two.test", sb, sizeof(sb));
	cr_assert_str_neq(sa, sb, "disable-mx-rollup domains share a site");
	sched_site(&a, "[127.0.0.1]:2525", NULL, sa, sizeof(sa));
	sched_site(&c, "[127.0.0.1]:2525", NULL, sb, sizeof(sb));
	cr_assert_str_eq(sa, sb);
	/* disable-mx-rollup keeps a routed domain apart too */
	sched_site(&a, "[127.0.0.1]:2525", "one.test", sa, sizeof(sa));
	sched_site(&c, "[127.0.0.1]:2525", "two.test", sb, sizeof(sb));
	cr_assert_str_neq(sa, sb, "routed disable-mx-rollup domains share a site");
	cr_assert_str_eq(sa, "domain:one.test");
	/* truncated, never overrun */
	cr_assert_eq(sched_site(&a, NULL, NULL, sc, 8), 7);
	cr_assert_str_eq(sc, "mx:mx1.");
}

/*
 * A site behind a cap of 20 (ip-connection-limit), 1,000 domains: the
 * planner of each queue sees the room the shared counts leave, so the
 * queues of the site together never open more than 20, and every one of
 * them that gets no slot asks for one (idle connections give way or are
 * handed over) and looks again within a tick: none stalls.
 */
Test(sched, site_queues_share_the_cap_and_never_stall)
{
	struct cfg *cfg = load_or_fail("ip-connection-limit 127.0.0.80/32 20\n");
	struct caps *t = caps_new(cfg, 64);
	struct dns_addr a = addr_of("127.0.0.80", 25);
	struct cap_dest *d = caps_dest(t, &a, NULL);
	uint32_t opened = 0, wanting = 0;
	uint64_t now = T0;

	for (int q = 0; q < 1000; q++) {
		struct sched_bucket msg, conn;
		sched_bucket_init(&msg, &unlimited, now);
		sched_bucket_init(&conn, &unlimited, now);
		struct sched_state st = { .ready = 5, .max_out = 20, .room = caps_room(d, now) };
		struct sched_plan p;
		sched_plan(&st, &msg, &conn, now, &p);
		for (uint32_t k = 0; k < p.open; k++)
			if (caps_reserve(d, now))
				opened++;
		if (!p.open) {
			cr_assert(p.want_slot, "queue %d got no slot and does not ask for one", q);
			cr_assert_leq(p.wake_ms, now + SCHED_TICK_MS, "queue %d stalls", q);
			wanting++;
		}
		now += 1;
	}
	cr_assert_eq(opened, 20);
	cr_assert_eq(atomic_load(&d->conns), 20);
	cr_assert_geq(wanting, 1000 - 20);
	caps_free(t);
	cfg_free(cfg);
}
