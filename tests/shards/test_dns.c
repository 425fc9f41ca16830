/*
 * tests/shards/test_dns.c - the per-shard resolver against a real dnsmasq
 * on a loopback port: MX order, equal preferences, implicit and null MX,
 * NXDOMAIN, REFUSED and timeouts, the cache and its TTLs, AAAA, smtp-hosts
 * routes.  The resolver is driven by a small poll(2) loop here, the way
 * the shard's io_uring loop drives it.
 *
 * Each test runs in its own process with its own dnsmasq, killed in
 * teardown (and by PR_SET_PDEATHSIG should the test die first).  A fake
 * clock makes TTLs deterministic.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shards/dns.h"
#include "tests/lib/dnsmasq.h"
#include "util/util.h"

#define ZONE_TTL 30

/* ---- the loop: what the shard does with io_uring, done with poll ---- */

#define MAX_FDS 16

static struct {
	int fd[MAX_FDS];
	bool rd[MAX_FDS], wr[MAX_FDS];
	int n;
	int calls;
} watch;

static void on_sock(void *ctx, int fd, bool rd, bool wr)
{
	int i;

	watch.calls++;
	for (i = 0; i < watch.n && watch.fd[i] != fd; i++)
		;
	if (!rd && !wr) {
		if (i < watch.n) {
			watch.n--;
			watch.fd[i] = watch.fd[watch.n];
			watch.rd[i] = watch.rd[watch.n];
			watch.wr[i] = watch.wr[watch.n];
		}
		return;
	}
	if (i == watch.n) {
		cr_assert_lt(watch.n, MAX_FDS);
		watch.n++;
	}
	watch.fd[i] = fd;
	watch.rd[i] = rd;
	watch.wr[i] = wr;
}

static uint64_t fake_now = 1000000;

static uint64_t fake_clock(void *ctx)
{
	return fake_now;
}

static uint64_t real_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* drive - run the loop until *flag or max_ms of real time. */
static void drive(struct dns_resolver *r, const bool *flag, int max_ms)
{
	uint64_t end = real_ms() + (uint64_t)max_ms;

	while (!*flag && real_ms() < end) {
		struct pollfd pfd[MAX_FDS];
		int n = watch.n, t = dns_resolver_next_timeout_ms(r);

		for (int i = 0; i < n; i++) {
			pfd[i].fd = watch.fd[i];
			pfd[i].events = (short)((watch.rd[i] ? POLLIN : 0) |
						(watch.wr[i] ? POLLOUT : 0));
			pfd[i].revents = 0;
		}
		if (t != 0 && poll(pfd, (nfds_t)n, t < 0 || t > 10 ? 10 : t) > 0) {
			for (int i = 0; i < n; i++)
				if (pfd[i].revents)
					dns_resolver_process(r, pfd[i].fd,
							     pfd[i].revents & (POLLIN | POLLERR | POLLHUP),
							     pfd[i].revents & POLLOUT);
		}
		dns_resolver_process_timeouts(r);
	}
}

struct answer {
	bool got;
	int calls;
	struct dns_result res;
};

static void on_answer(void *ctx, const struct dns_result *res)
{
	struct answer *a = ctx;

	a->got = true;
	a->calls++;
	a->res = *res;
}

/* ---- fixture ---------------------------------------------------------- */

static struct dnsmasq srv, auth;
static int blackhole = -1;	/* a UDP port that swallows queries */
static struct dns_resolver *rv;

static int blackhole_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);

	if (blackhole < 0) {
		blackhole = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		cr_assert_eq(bind(blackhole, (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	cr_assert_eq(getsockname(blackhole, (struct sockaddr *)&sa, &len), 0);
	return ntohs(sa.sin_port);
}

static const char *impl_addr = "127.0.0.9";

static void zone_start(int port, const char *const *extra)
{
	static char slow[64], impl[64];
	static char ttl[32];
	const char *opts[96];
	size_t n = 0;
	static const char *const zone[] = {
		"--local=/test/",
		"--mx-host=d1.test,mx1.d1.test,10",
		"--mx-host=d1.test,mx2.d1.test,20",
		"--address=/mx1.d1.test/127.0.0.2",
		"--address=/mx2.d1.test/127.0.0.3",
		"--mx-host=eq.test,a.eq.test,10",
		"--mx-host=eq.test,b.eq.test,10",
		"--host-record=a.eq.test,127.0.1.1",
		"--host-record=b.eq.test,127.0.1.2",
		"--mx-host=null.test,.,0",
		"--mx-host=noaddr.test,ghost.noaddr.test,10",
		"--mx-host=half.test,mx1.d1.test,10",
		"--mx-host=half.test,mx.refused.test,20",
		"--mx-host=broken.test,mx.refused.test,10",
		"--server=/refused.test/#",
		"--mx-host=v6.test,h6.v6.test,10",
		"--host-record=h6.v6.test,127.0.0.5,::1",
		"--mx-host=cn.test,alias.cn.test,10",
		"--host-record=target.cn.test,127.0.0.6",
		"--cname=alias.cn.test,target.cn.test",
		"--mx-host=multi.test,multi.test,10",
		"--address=/multi.test/127.0.3.1",
		"--address=/multi.test/127.0.3.2",
		"--address=/multi.test/127.0.3.3",
		NULL,
	};

	snprintf(slow, sizeof(slow), "--server=/slow.test/127.0.0.1#%d", blackhole_port());
	snprintf(ttl, sizeof(ttl), "--local-ttl=%d", ZONE_TTL);
	snprintf(impl, sizeof(impl), "--host-record=impl.test,%s", impl_addr);
	opts[n++] = slow;
	opts[n++] = impl;
	opts[n++] = ttl;
	for (size_t i = 0; zone[i]; i++)
		opts[n++] = zone[i];
	for (size_t i = 0; extra && extra[i] && n < ARRAY_SIZE(opts) - 1; i++)
		opts[n++] = extra[i];
	opts[n] = NULL;

	int rc = dnsmasq_start(&srv, port, opts);
	if (rc == -ENOENT && !getenv("CI"))
		cr_skip_test("dnsmasq is not installed (apt-get install dnsmasq-base)");
	cr_assert_eq(rc, 0, "dnsmasq did not start: %s", strerror(-rc));
}

static char server[32];

static struct dns_resolver *resolver(struct dns_options *o)
{
	const char *servers[] = { server, NULL };
	struct dns_options def = { 0 };
	struct dns_resolver *r;

	if (!o)
		o = &def;
	o->servers = servers;
	if (!o->timeout_ms)
		o->timeout_ms = 500;
	if (!o->tries)
		o->tries = 1;
	if (!o->seed)
		o->seed = 42;
	o->sock_cb = on_sock;
	o->clock = fake_clock;
	cr_assert_eq(dns_resolver_new(o, &r), 0);
	o->servers = NULL;
	return r;
}

static void setup(void)
{
	zone_start(0, NULL);
	snprintf(server, sizeof(server), "127.0.0.1:%d", srv.port);
	rv = resolver(NULL);
}

static void teardown(void)
{
	dns_resolver_free(rv);
	rv = NULL;
	dnsmasq_stop(&srv);
	dnsmasq_stop(&auth);
	if (blackhole >= 0)
		close(blackhole);
	blackhole = -1;
}

TestSuite(dns, .init = setup, .fini = teardown, .timeout = 30);

/*
 * mx - resolve a domain to the end: answered now or after driving the
 * loop.  Returns DNS_ANSWERED or DNS_PENDING (then called back once).
 */
static int mx_on(struct dns_resolver *r, const char *domain, struct dns_result *res)
{
	struct answer a = { 0 };
	int rc = dns_resolve_mx(r, domain, on_answer, &a, res);

	cr_assert_geq(rc, 0, "dns_resolve_mx(%s) = %d", domain, rc);
	if (rc == DNS_PENDING) {
		drive(r, &a.got, 10000);
		cr_assert(a.got, "no answer for %s", domain);
		*res = a.res;
		drive(r, &(bool){ false }, 20);
		cr_assert_eq(a.calls, 1, "called back once");
	}
	return rc;
}

static int mx(const char *domain, struct dns_result *res)
{
	return mx_on(rv, domain, res);
}

static const char *addr_str(const struct dns_addr *a, char *buf, size_t len)
{
	return inet_ntop(a->family, &a->ip, buf, (socklen_t)len);
}

static void expect_addr(const struct dns_result *res, int i, const char *ip,
			uint16_t port)
{
	char buf[INET6_ADDRSTRLEN];

	cr_assert_lt(i, res->naddrs);
	cr_expect_str_eq(addr_str(&res->addrs[i], buf, sizeof(buf)), ip);
	cr_expect_eq(res->addrs[i].port, port);
}

/* ---- MX semantics ----------------------------------------------------- */

Test(dns, mx_in_preference_order)
{
	struct dns_result res;

	cr_assert_eq(mx("d1.test", &res), DNS_PENDING);
	cr_assert_eq(res.status, DNS_OK, "%s", dns_status_name(res.status));
	cr_assert_eq(res.nhosts, 2);
	cr_expect_str_eq(dns_host_name(&res, 0), "mx1.d1.test");
	cr_expect_eq(res.hosts[0].pref, 10);
	cr_expect_str_eq(dns_host_name(&res, 1), "mx2.d1.test");
	cr_expect_eq(res.hosts[1].pref, 20);
	cr_assert_eq(res.naddrs, 2);
	expect_addr(&res, 0, "127.0.0.2", 25);
	expect_addr(&res, 1, "127.0.0.3", 25);
	cr_expect_eq(res.addrs[1].host, 1);
	cr_expect_eq(res.ttl, ZONE_TTL);
}

Test(dns, names_are_case_and_dot_insensitive)
{
	struct dns_result res;

	cr_assert_eq(mx("D1.Test.", &res), DNS_PENDING);
	cr_assert_eq(res.status, DNS_OK);
	cr_assert_eq(mx("d1.test", &res), DNS_ANSWERED, "same cache entry");
}

/* order_of - 0 if a.eq.test came first, 1 if b.eq.test did. */
static int order_of(const struct dns_result *res)
{
	cr_assert_eq(res->status, DNS_OK);
	cr_assert_eq(res->nhosts, 2);
	cr_assert_eq(res->naddrs, 2);
	cr_assert_eq(res->hosts[0].pref, res->hosts[1].pref);
	/* Addresses follow their host. */
	cr_assert_eq(res->addrs[0].host, 0);
	return strcmp(dns_host_name(res, 0), "a.eq.test") == 0 ? 0 : 1;
}

Test(dns, equal_preferences_in_random_order)
{
	int seen[2] = { 0, 0 };
	struct dns_result res;

	/* Fresh resolvers, different seeds: each one asks the network. */
	for (uint64_t seed = 1; seed <= 24; seed++) {
		struct dns_options o = { .seed = seed };
		struct dns_resolver *r = resolver(&o);

		cr_assert_eq(mx_on(r, "eq.test", &res), DNS_PENDING);
		seen[order_of(&res)]++;
		dns_resolver_free(r);
	}
	cr_expect(seen[0] > 0 && seen[1] > 0, "orders seen: %d / %d", seen[0], seen[1]);

	/* One resolver: cache hits are reshuffled too, or load would not spread. */
	seen[0] = seen[1] = 0;
	cr_assert_eq(mx("eq.test", &res), DNS_PENDING);
	for (int i = 0; i < 64; i++) {
		cr_assert_eq(mx("eq.test", &res), DNS_ANSWERED);
		seen[order_of(&res)]++;
	}
	cr_expect(seen[0] > 8 && seen[1] > 8, "cached orders: %d / %d", seen[0], seen[1]);
}

Test(dns, same_seed_same_order)
{
	int first[16];
	struct dns_result res;

	for (int round = 0; round < 2; round++) {
		struct dns_options o = { .seed = 7 };
		struct dns_resolver *r = resolver(&o);

		mx_on(r, "eq.test", &res);
		for (int i = 0; i < 16; i++) {
			if (i)
				cr_assert_eq(mx_on(r, "eq.test", &res), DNS_ANSWERED);
			if (round == 0)
				first[i] = order_of(&res);
			else
				cr_expect_eq(order_of(&res), first[i], "draw %d", i);
		}
		dns_resolver_free(r);
	}
}

Test(dns, implicit_mx)
{
	struct dns_result res;

	mx("impl.test", &res);
	cr_assert_eq(res.status, DNS_OK, "%s", dns_status_name(res.status));
	cr_assert_eq(res.nhosts, 1);
	cr_expect_str_eq(dns_host_name(&res, 0), "impl.test");
	cr_expect_eq(res.hosts[0].pref, 0);
	cr_assert_eq(res.naddrs, 1);
	expect_addr(&res, 0, "127.0.0.9", 25);
}

Test(dns, null_mx)
{
	struct dns_result res;

	mx("null.test", &res);
	cr_expect_eq(res.status, DNS_NULL_MX, "%s", dns_status_name(res.status));
	cr_expect_eq(res.naddrs, 0);
	cr_expect_eq(mx("null.test", &res), DNS_ANSWERED, "cached");
	cr_expect_eq(res.status, DNS_NULL_MX);
}

Test(dns, nxdomain_is_permanent_and_cached)
{
	struct dns_result res;

	mx("nope.test", &res);
	cr_expect_eq(res.status, DNS_NXDOMAIN, "%s", dns_status_name(res.status));
	/* dnsmasq sends no SOA for --local: the fixed negative TTL applies. */
	cr_expect_eq(res.ttl, 60);
	dnsmasq_stop(&srv);
	cr_expect_eq(mx("nope.test", &res), DNS_ANSWERED);
	cr_expect_eq(res.status, DNS_NXDOMAIN);
}

Test(dns, negative_ttl_from_the_soa)
{
	/*
	 * dnsmasq adds an SOA to negative answers only when authoritative,
	 * and an interface named in --auth-server answers nothing else: a
	 * second dnsmasq serves the zone.
	 */
	static const char *const zone[] = {
		"--auth-server=ns.auth.test,lo",
		"--auth-zone=auth.test",
		"--auth-ttl=45",
		"--host-record=h.auth.test,127.0.0.4",
		NULL,
	};
	struct dns_result res;

	cr_assert_eq(dnsmasq_start(&auth, 0, zone), 0);
	snprintf(server, sizeof(server), "127.0.0.1:%d", auth.port);
	dns_resolver_free(rv);
	rv = resolver(NULL);

	mx("nope.auth.test", &res);
	cr_expect_eq(res.status, DNS_NXDOMAIN, "%s", dns_status_name(res.status));
	cr_expect_eq(res.ttl, 45, "min(SOA TTL, SOA minimum), not the fixed 60");
	/* NODATA for MX, with an SOA: implicit MX, TTL from both answers. */
	mx("h.auth.test", &res);
	cr_assert_eq(res.status, DNS_OK, "%s", dns_status_name(res.status));
	expect_addr(&res, 0, "127.0.0.4", 25);
	cr_expect_eq(res.ttl, 45);
	fake_now += 44 * 1000;
	cr_expect_eq(mx("nope.auth.test", &res), DNS_ANSWERED);
	fake_now += 1000;
	cr_expect_eq(mx("nope.auth.test", &res), DNS_PENDING);
}

Test(dns, refused_is_transient)
{
	struct dns_result res;

	mx("x.refused.test", &res);
	cr_expect_eq(res.status, DNS_TEMPFAIL, "%s", dns_status_name(res.status));
	cr_expect_eq(res.ttl, 0);
	/* Failures are not cached: the next try asks again. */
	cr_expect_eq(mx("x.refused.test", &res), DNS_PENDING);
}

Test(dns, timeout_is_transient)
{
	struct dns_options o = { .timeout_ms = 150, .tries = 1 };
	struct dns_resolver *r = resolver(&o);
	struct dns_result res;

	mx_on(r, "slow.test", &res);
	cr_expect_eq(res.status, DNS_TEMPFAIL, "%s", dns_status_name(res.status));
	dns_resolver_free(r);
}

Test(dns, no_server_is_transient)
{
	struct dns_resolver *r;
	struct dns_result res;

	dnsmasq_stop(&srv);
	r = resolver(NULL);
	mx_on(r, "d1.test", &res);
	cr_expect_eq(res.status, DNS_TEMPFAIL, "%s", dns_status_name(res.status));
	dns_resolver_free(r);
}

Test(dns, mx_host_without_address)
{
	struct dns_result res;

	mx("noaddr.test", &res);
	cr_expect_eq(res.status, DNS_NO_ADDRESS, "%s", dns_status_name(res.status));
	cr_expect_eq(res.nhosts, 1);
	cr_expect_eq(res.naddrs, 0);
}

Test(dns, mx_host_lookup_failing_is_transient)
{
	struct dns_result res;

	mx("broken.test", &res);
	cr_expect_eq(res.status, DNS_TEMPFAIL, "%s", dns_status_name(res.status));
	cr_expect(res.hosts[0].tempfail);
}

Test(dns, one_host_failing_leaves_the_others)
{
	struct dns_result res;

	mx("half.test", &res);
	cr_assert_eq(res.status, DNS_OK, "%s", dns_status_name(res.status));
	cr_assert_eq(res.nhosts, 2);
	cr_assert_eq(res.naddrs, 1);
	expect_addr(&res, 0, "127.0.0.2", 25);
	cr_expect_str_eq(dns_host_name(&res, 1), "mx.refused.test");
	cr_expect(res.hosts[1].tempfail);
	cr_expect_eq(res.hosts[1].naddrs, 0);
}

Test(dns, cname_in_the_answer_is_followed)
{
	struct dns_result res;

	mx("cn.test", &res);
	cr_assert_eq(res.status, DNS_OK, "%s", dns_status_name(res.status));
	cr_assert_eq(res.naddrs, 1);
	cr_expect_str_eq(dns_host_name(&res, 0), "alias.cn.test");
	expect_addr(&res, 0, "127.0.0.6", 25);
}

Test(dns, several_addresses_per_host)
{
	struct dns_result res;

	mx("multi.test", &res);
	cr_assert_eq(res.status, DNS_OK);
	cr_expect_eq(res.nhosts, 1);
	cr_expect_eq(res.naddrs, 3);
	cr_expect_eq(res.hosts[0].naddrs, 3);
}

Test(dns, aaaa_when_enabled)
{
	struct dns_options o4 = { 0 }, o6 = { .ipv6 = true },
			   o6p = { .ipv6 = true, .prefer_ipv6 = true };
	struct dns_resolver *r;
	struct dns_result res;

	r = resolver(&o4);
	mx_on(r, "v6.test", &res);
	cr_assert_eq(res.naddrs, 1, "IPv4 only by default");
	expect_addr(&res, 0, "127.0.0.5", 25);
	dns_resolver_free(r);

	r = resolver(&o6);
	mx_on(r, "v6.test", &res);
	cr_assert_eq(res.naddrs, 2);
	expect_addr(&res, 0, "127.0.0.5", 25);
	expect_addr(&res, 1, "::1", 25);
	/* A host with no AAAA (dnsmasq: NXDOMAIN for it) still delivers. */
	mx_on(r, "d1.test", &res);
	cr_expect_eq(res.status, DNS_OK);
	cr_expect_eq(res.naddrs, 2);
	dns_resolver_free(r);

	r = resolver(&o6p);
	mx_on(r, "v6.test", &res);
	cr_assert_eq(res.naddrs, 2);
	expect_addr(&res, 0, "::1", 25);
	expect_addr(&res, 1, "127.0.0.5", 25);
	dns_resolver_free(r);
}

Test(dns, address_literal_domain)
{
	struct dns_result res;

	cr_assert_eq(dns_resolve_mx(rv, "[127.0.0.7]", on_answer, NULL, &res), DNS_ANSWERED);
	cr_assert_eq(res.status, DNS_OK);
	expect_addr(&res, 0, "127.0.0.7", 25);
	cr_assert_eq(dns_resolve_mx(rv, "[IPv6:::1]", on_answer, NULL, &res), DNS_ANSWERED);
	expect_addr(&res, 0, "::1", 25);
	cr_expect_eq(dns_resolve_mx(rv, "[127.0.0.777]", on_answer, NULL, &res), -EINVAL);
}

Test(dns, bad_names_are_rejected)
{
	static const char *const bad[] = {
		"", ".", "a..b", "bad domain.test", "-\"x.test", "a/b.test",
		"averyveryveryveryveryveryveryveryveryveryveryveryverylonglabel64.test",
	};
	struct dns_result res;
	char longname[300];

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		cr_expect_eq(dns_resolve_mx(rv, bad[i], on_answer, NULL, &res), -EINVAL,
			     "%s", bad[i]);
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	for (size_t i = 60; i < sizeof(longname) - 1; i += 61)
		longname[i] = '.';
	cr_expect_eq(dns_resolve_mx(rv, longname, on_answer, NULL, &res), -EINVAL);
}

/* ---- the cache -------------------------------------------------------- */

Test(dns, cache_answers_when_the_server_is_gone)
{
	struct dns_result res, again;
	struct dns_stats st;

	cr_assert_eq(mx("d1.test", &res), DNS_PENDING);
	dns_resolver_stats(rv, &st);
	cr_expect_eq(st.queries, 3, "MX + two A");
	dnsmasq_stop(&srv);
	fake_now += (ZONE_TTL - 1) * 1000;
	cr_assert_eq(mx("d1.test", &again), DNS_ANSWERED);
	cr_expect_eq(again.status, DNS_OK);
	cr_expect_eq(again.naddrs, 2);
	cr_expect_eq(again.ttl, 1, "remaining lifetime");
	expect_addr(&again, 0, "127.0.0.2", 25);
	dns_resolver_stats(rv, &st);
	cr_expect_eq(st.queries, 3, "nothing sent");
	cr_expect_eq(st.answered_now, 1);

	/* Expired: back to the (now dead) network. */
	fake_now += 2000;
	mx("d1.test", &again);
	cr_expect_eq(again.status, DNS_TEMPFAIL);
}

Test(dns, ttl_expiry_fetches_new_data)
{
	int port = srv.port;
	struct dns_result res;

	mx("impl.test", &res);
	expect_addr(&res, 0, "127.0.0.9", 25);

	/* The zone changes behind the cache's back. */
	dnsmasq_stop(&srv);
	impl_addr = "127.0.0.99";
	zone_start(port, NULL);
	cr_assert_eq(srv.port, port);
	fake_now += (ZONE_TTL - 1) * 1000;
	cr_assert_eq(mx("impl.test", &res), DNS_ANSWERED);
	expect_addr(&res, 0, "127.0.0.9", 25);
	fake_now += 1000;
	cr_assert_eq(mx("impl.test", &res), DNS_PENDING);
	cr_assert_eq(res.status, DNS_OK);
	expect_addr(&res, 0, "127.0.0.99", 25);
}

Test(dns, ttl_floor_and_cap)
{
	struct dns_options lo = { .max_ttl = 10 }, hi = { .min_ttl = 120 };
	struct dns_resolver *r;
	struct dns_result res;

	r = resolver(&lo);
	mx_on(r, "d1.test", &res);
	cr_expect_eq(res.ttl, 10);
	fake_now += 10 * 1000;
	cr_expect_eq(mx_on(r, "d1.test", &res), DNS_PENDING, "capped TTL expired");
	dns_resolver_free(r);

	r = resolver(&hi);
	mx_on(r, "d1.test", &res);
	cr_expect_eq(res.ttl, 120);
	fake_now += 100 * 1000;
	cr_expect_eq(mx_on(r, "d1.test", &res), DNS_ANSWERED, "floor holds it");
	dns_resolver_free(r);
}

Test(dns, cache_is_bounded)
{
	static const char *const domains[] = {
		"d1.test", "eq.test", "impl.test", "multi.test", "v6.test", "cn.test",
	};
	struct dns_options o = { .cache_max = 3 };
	struct dns_resolver *r = resolver(&o);
	struct dns_result res;
	struct dns_stats st;

	for (size_t i = 0; i < ARRAY_SIZE(domains); i++) {
		mx_on(r, domains[i], &res);
		cr_expect_eq(res.status, DNS_OK, "%s", domains[i]);
		dns_resolver_stats(r, &st);
		cr_assert_leq(st.cached, 3);
	}
	cr_expect_gt(st.evictions, 0);
	/* The most recent answer survives; the first was evicted. */
	cr_expect_eq(mx_on(r, "cn.test", &res), DNS_ANSWERED);
	cr_expect_eq(mx_on(r, "d1.test", &res), DNS_PENDING);
	dns_resolver_free(r);
}

Test(dns, concurrent_resolutions_share_queries)
{
	struct answer a = { 0 }, b = { 0 };
	struct dns_result res;
	struct dns_stats st;

	cr_assert_eq(dns_resolve_mx(rv, "d1.test", on_answer, &a, &res), DNS_PENDING);
	cr_assert_eq(dns_resolve_mx(rv, "d1.test", on_answer, &b, &res), DNS_PENDING);
	dns_resolver_stats(rv, &st);
	cr_expect_eq(st.jobs, 2);
	drive(rv, &b.got, 5000);
	drive(rv, &a.got, 5000);
	cr_expect_eq(a.res.naddrs, 2);
	cr_expect_eq(b.res.naddrs, 2);
	dns_resolver_stats(rv, &st);
	cr_expect_eq(st.queries, 3, "one MX and two A queries for both");
	cr_expect_eq(st.jobs, 0);
}

Test(dns, cancel_drops_the_callback)
{
	struct answer a = { 0 }, b = { 0 };
	struct dns_result res;
	struct dns_stats st;

	cr_assert_eq(dns_resolve_mx(rv, "d1.test", on_answer, &a, &res), DNS_PENDING);
	cr_assert_eq(dns_resolve_mx(rv, "impl.test", on_answer, &b, &res), DNS_PENDING);
	dns_cancel(rv, &a);
	drive(rv, &b.got, 5000);
	drive(rv, &(bool){ false }, 200);
	cr_expect_eq(a.calls, 0);
	cr_expect_eq(b.calls, 1);
	dns_resolver_stats(rv, &st);
	cr_expect_eq(st.jobs, 0);
	/* The query already sent still fed the cache. */
	cr_expect_eq(dns_resolve_mx(rv, "d1.test", on_answer, &a, &res), DNS_PENDING,
		     "the MX set is cached, its hosts were never asked");
}

Test(dns, too_many_jobs_is_eagain)
{
	struct dns_options o = { .max_jobs = 1 };
	struct dns_resolver *r = resolver(&o);
	struct answer a = { 0 };
	struct dns_result res;

	cr_assert_eq(dns_resolve_mx(r, "d1.test", on_answer, &a, &res), DNS_PENDING);
	cr_expect_eq(dns_resolve_mx(r, "eq.test", on_answer, &a, &res), -EAGAIN);
	drive(r, &a.got, 5000);
	cr_expect_eq(dns_resolve_mx(r, "d1.test", on_answer, &a, &res), DNS_ANSWERED);
	dns_resolver_free(r);
}

static struct {
	int fd[MAX_FDS];
	int n;
} listed;

static void on_listed(void *ctx, int fd, bool rd, bool wr)
{
	cr_assert(rd || wr);
	listed.fd[listed.n++] = fd;
}

Test(dns, loop_hooks_report_the_sockets)
{
	struct answer a = { 0 };
	struct dns_result res;

	cr_expect_eq(dns_resolver_next_timeout_ms(rv), -1, "idle");
	cr_assert_eq(dns_resolve_mx(rv, "d1.test", on_answer, &a, &res), DNS_PENDING);
	cr_expect_eq(watch.n, 1, "one UDP socket to one server");
	dns_resolver_fds(rv, on_listed, NULL);
	cr_assert_eq(listed.n, 1);
	cr_expect_eq(listed.fd[0], watch.fd[0]);
	cr_expect_gt(dns_resolver_next_timeout_ms(rv), 0);
	drive(rv, &a.got, 5000);
	cr_expect(a.got);
	dns_resolver_free(rv);
	rv = NULL;
	cr_expect_eq(watch.n, 0, "told before its socket closes");
}

/* ---- smtp-hosts routes ------------------------------------------------ */

struct route_case {
	const char *spec;
	int nitems;		/* -1: invalid */
	const char *dump;	/* "kind:name:port@level ..." */
};

static void dump_route(const struct dns_route *rt, struct strbuf *sb)
{
	static const char kinds[] = { 'H', 'L', 'M' };

	for (int i = 0; i < rt->nitems; i++) {
		const struct dns_route_item *it = &rt->items[i];

		sb_printf(sb, "%s%c:%s:%u@%u", i ? " " : "", kinds[it->kind],
			  it->name, it->port, it->level);
	}
}

Test(dns, smtp_hosts_parse_table)
{
	static const struct route_case cases[] = {
		{ "mx.example.com", 1, "H:mx.example.com:25@0" },
		{ "h1,h2; [10.1.1.1]:2525; lookup-mx:other.com", 4,
		  "H:h1:25@0 H:h2:25@0 L:10.1.1.1:2525@1 M:other.com:25@2" },
		{ " A.Example.COM. :587 ;b", 2, "H:a.example.com:587@0 H:b:25@1" },
		{ "[IPv6:2001:db8::1]:26,[::1]", 2, "L:2001:db8::1:26@0 L:::1:25@0" },
		{ "10.0.0.1:2526", 1, "L:10.0.0.1:2526@0" },
		{ "LOOKUP-MX:Other.com:2525", 1, "M:other.com:2525@0" },
		{ "a;b;c,d", 4, "H:a:25@0 H:b:25@1 H:c:25@2 H:d:25@2" },
		{ "", -1, NULL },
		{ "a,", -1, NULL },
		{ "a;;b", -1, NULL },
		{ "a:0", -1, NULL },
		{ "a:65536", -1, NULL },
		{ "a:x", -1, NULL },
		{ "[10.1.1.1", -1, NULL },
		{ "[10.1.1.300]", -1, NULL },
		{ "[10.1.1.1]x", -1, NULL },
		{ "2001:db8::1", -1, NULL },
		{ "bad host", -1, NULL },
		{ "lookup-mx:", -1, NULL },
		{ "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p", 16, NULL },
		{ "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", -1, NULL },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct route_case *c = &cases[i];
		struct dns_route rt;
		const char *why = NULL;
		int rc = dns_route_parse(c->spec, 25, &rt, &why);

		if (c->nitems < 0) {
			cr_expect_eq(rc, -EINVAL, "'%s' should not parse", c->spec);
			cr_expect(why && *why, "'%s' says why", c->spec);
			continue;
		}
		cr_expect_eq(rc, 0, "'%s': %s", c->spec, why ? why : "");
		cr_expect_eq(rt.nitems, c->nitems, "'%s'", c->spec);
		if (c->dump) {
			struct strbuf sb = { 0 };

			dump_route(&rt, &sb);
			cr_expect_str_eq(sb_str(&sb), c->dump, "'%s'", c->spec);
			sb_free(&sb);
		}
	}
}

Test(dns, route_of_literals_needs_no_dns)
{
	struct dns_route rt;
	struct dns_result res;

	dnsmasq_stop(&srv);
	cr_assert_eq(dns_route_parse("[127.0.0.8]:2525; [::1]", 25, &rt, NULL), 0);
	cr_assert_eq(dns_resolve_route(rv, &rt, on_answer, NULL, &res), DNS_ANSWERED);
	cr_assert_eq(res.status, DNS_OK);
	cr_assert_eq(res.naddrs, 2);
	expect_addr(&res, 0, "127.0.0.8", 2525);
	expect_addr(&res, 1, "::1", 25);
	cr_expect_str_eq(dns_host_name(&res, 0), "127.0.0.8");
	cr_expect_eq(res.hosts[1].pref, 1u << 16);
}

Test(dns, route_resolves_names_and_lookup_mx)
{
	struct dns_route rt;
	struct dns_result res;
	struct answer a = { 0 };
	int seen_first_mx2 = 0;

	cr_assert_eq(dns_route_parse("mx2.d1.test, impl.test; [10.1.1.1]:2525; "
				     "lookup-mx:d1.test:2526; nope.test",
				     25, &rt, NULL), 0);
	cr_assert_eq(dns_resolve_route(rv, &rt, on_answer, &a, &res), DNS_PENDING);
	drive(rv, &a.got, 5000);
	res = a.res;
	cr_assert_eq(res.status, DNS_OK, "%s", dns_status_name(res.status));
	cr_assert_eq(res.nhosts, 6);
	cr_assert_eq(res.naddrs, 5, "nope.test adds nothing");
	/* Level 0, shuffled: mx2.d1.test and impl.test. */
	cr_expect_eq(res.hosts[0].pref, 0);
	cr_expect_eq(res.hosts[1].pref, 0);
	cr_expect_eq(res.addrs[0].port, 25);
	expect_addr(&res, 2, "10.1.1.1", 2525);
	cr_expect_eq(res.hosts[2].pref, 1u << 16);
	/* Level 2: d1.test's MX hosts in MX order, on their own port. */
	cr_expect_str_eq(dns_host_name(&res, 3), "mx1.d1.test");
	cr_expect_eq(res.hosts[3].pref, 2u << 16 | 10);
	expect_addr(&res, 3, "127.0.0.2", 2526);
	cr_expect_str_eq(dns_host_name(&res, 4), "mx2.d1.test");
	expect_addr(&res, 4, "127.0.0.3", 2526);
	cr_expect_str_eq(dns_host_name(&res, 5), "nope.test");
	cr_expect_eq(res.hosts[5].naddrs, 0);

	/* Answered from the cache now, level 0 still shuffled. */
	for (int i = 0; i < 32; i++) {
		cr_assert_eq(dns_resolve_route(rv, &rt, on_answer, &a, &res), DNS_ANSWERED);
		seen_first_mx2 += !strcmp(dns_host_name(&res, 0), "mx2.d1.test");
	}
	cr_expect(seen_first_mx2 > 0 && seen_first_mx2 < 32, "%d", seen_first_mx2);
}

Test(dns, route_with_nothing_resolvable)
{
	struct dns_route rt;
	struct dns_result res;
	struct answer a = { 0 };

	/* A route never bounces as NXDOMAIN or null MX: it just finds nothing. */
	cr_assert_eq(dns_route_parse("nope.test; lookup-mx:null.test; lookup-mx:nope.test",
				     25, &rt, NULL), 0);
	cr_assert_eq(dns_resolve_route(rv, &rt, on_answer, &a, &res), DNS_PENDING);
	drive(rv, &a.got, 5000);
	cr_expect_eq(a.res.status, DNS_NO_ADDRESS, "%s", dns_status_name(a.res.status));

	cr_assert_eq(dns_route_parse("mx.refused.test", 25, &rt, NULL), 0);
	a.got = false;
	cr_assert_eq(dns_resolve_route(rv, &rt, on_answer, &a, &res), DNS_PENDING);
	drive(rv, &a.got, 5000);
	cr_expect_eq(a.res.status, DNS_TEMPFAIL, "%s", dns_status_name(a.res.status));
}
