/*
 * shards/dns.h - the per-shard DNS resolver: turns a receiving domain (or
 * a PowerMTA `smtp-hosts` static route) into the ordered list of
 * addresses to connect to.  MX records sorted by preference, random order
 * among equal preferences (RFC 5321 5.1), each host resolved to A (and
 * AAAA when enabled); implicit MX; null MX (RFC 7505); a TTL cache of
 * answers, bounded, with negative caching.
 *
 * Owns one c-ares channel, its sockets and the cache.  Exactly one thread
 * (the owning shard's) may call any function on a given resolver: there
 * are no locks.  Nothing here blocks: c-ares sockets are non-blocking and
 * the caller's event loop watches them, told which through the socket
 * callback (or dns_resolver_fds()) and driving the resolver with
 * dns_resolver_process() and dns_resolver_process_timeouts().  The one
 * exception is dns_resolver_new(), which may read /etc/resolv.conf: call
 * it at start-up, not per message.
 *
 * Results are values (struct dns_result) filled for the caller; the
 * resolver owns nothing of the caller's.  Whoever creates a resolver frees
 * it with dns_resolver_free().
 */
#ifndef COREMTA_SHARDS_DNS_H
#define COREMTA_SHARDS_DNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct dns_resolver;

#define DNS_NAME_MAX	253	/* a domain name, without the trailing dot */
#define DNS_MAX_HOSTS	16	/* hosts kept per result, lowest preferences first */
#define DNS_MAX_ADDRS	32	/* addresses kept per result */
#define DNS_HOST_ADDRS	8	/* addresses kept per host and family */
#define DNS_SMTP_PORT	25

enum dns_status {
	DNS_OK,			/* addrs[] holds at least one address */
	DNS_NXDOMAIN,		/* permanent: the domain does not exist (bad-domain) */
	DNS_NULL_MX,		/* permanent: RFC 7505 null MX (5.1.10) */
	DNS_NO_ADDRESS,		/* permanent: the hosts exist but none has an address */
	DNS_TEMPFAIL,		/* transient: SERVFAIL, REFUSED, timeout, ... retry later */
};

/* One address to connect to; the result lists them in the order to try. */
struct dns_addr {
	int family;			/* AF_INET or AF_INET6 */
	union {
		struct in_addr v4;
		struct in6_addr v6;
	} ip;
	uint16_t port;
	uint16_t host;			/* index into dns_result.hosts[] */
};

struct dns_host {
	/*
	 * The ordering key: the MX preference for an MX result (0 for an
	 * implicit MX); for a route, level << 16 | MX preference, where level
	 * counts the `;`-separated groups.
	 */
	uint32_t pref;
	uint16_t name;			/* offset of its name in dns_result.names */
	uint8_t naddrs;			/* how many of addrs[] are this host's */
	bool tempfail;			/* one of its lookups failed transiently */
};

struct dns_result {
	enum dns_status status;
	/* Seconds this answer stays valid: the smallest TTL it was built on. */
	uint32_t ttl;
	uint8_t nhosts;
	uint8_t naddrs;
	struct dns_host hosts[DNS_MAX_HOSTS];
	struct dns_addr addrs[DNS_MAX_ADDRS];
	char names[DNS_MAX_HOSTS * (DNS_NAME_MAX + 1)];
};

static inline const char *dns_host_name(const struct dns_result *res, size_t i)
{
	return res->names + res->hosts[i].name;
}

const char *dns_status_name(enum dns_status status);

/* dns_addr_sockaddr - a's address (port 0) as a socket address in *ss. */
void dns_addr_sockaddr(const struct dns_addr *a, struct sockaddr_storage *ss);

/*
 * Socket watch callback: from now on, watch fd for readability and/or
 * writability; both false means forget fd: c-ares closes it right after,
 * and the number may come back for a new socket, so a readiness event
 * already in flight for the old one must be recognised as stale.  Called
 * from inside dns_resolve_*(), dns_resolver_process*() and
 * dns_resolver_free().
 */
typedef void dns_sock_cb(void *ctx, int fd, bool readable, bool writable);

/* Test and loop hook: a monotonic clock in milliseconds. */
typedef uint64_t dns_clock_cb(void *ctx);

/* Zero means the default for every numeric field. */
struct dns_options {
	/*
	 * Name servers as "ip", "ip:port" or "[ipv6]:port", NULL-terminated;
	 * NULL or empty: those of /etc/resolv.conf.
	 */
	const char *const *servers;
	int timeout_ms;			/* first try (c-ares backs off); 2000 */
	int tries;			/* per server; 2 */
	bool ipv6;			/* also look up AAAA */
	bool prefer_ipv6;		/* a host's IPv6 addresses before its IPv4 ones */
	uint32_t min_ttl;		/* floor for cached answers, s; 5 */
	uint32_t max_ttl;		/* cap, s; 3600 */
	uint32_t neg_ttl;		/* NXDOMAIN/NODATA without SOA, s; 60 */
	size_t cache_max;		/* cached record sets; 4096 */
	size_t max_jobs;		/* resolutions in flight; 1024 */
	uint64_t seed;			/* equal-preference shuffle; 0: random */
	dns_sock_cb *sock_cb;		/* may be NULL if the loop uses dns_resolver_fds() */
	void *sock_ctx;
	dns_clock_cb *clock;		/* NULL: CLOCK_MONOTONIC */
	void *clock_ctx;
};

/*
 * dns_resolver_new - create a resolver (opt may be NULL for defaults).
 * Returns 0, -EINVAL (a server that does not parse) or -ENOMEM.
 */
int dns_resolver_new(const struct dns_options *opt, struct dns_resolver **out);
/*
 * dns_resolver_free - drop every pending resolution without calling back,
 * close the sockets (telling sock_cb), free the cache.  Tolerates NULL.
 * Never from inside a dns_cb.
 */
void dns_resolver_free(struct dns_resolver *r);

/* Driving the resolver from the shard's loop. */

/* dns_resolver_process - fd is ready: read and/or write it. */
void dns_resolver_process(struct dns_resolver *r, int fd, bool readable,
			  bool writable);
/*
 * dns_resolver_next_timeout_ms - when to call dns_resolver_process_timeouts():
 * -1 nothing pending, 0 now (callbacks are waiting to be delivered).
 */
int dns_resolver_next_timeout_ms(struct dns_resolver *r);
void dns_resolver_process_timeouts(struct dns_resolver *r);
/* dns_resolver_fds - report every open socket and what to watch it for. */
void dns_resolver_fds(struct dns_resolver *r, dns_sock_cb *cb, void *ctx);

/* Queries. */

/*
 * The callback of an asynchronous answer.  res is valid only during the
 * call: copy what must outlive it.  The callback may start and cancel
 * resolutions, but not free the resolver.
 */
typedef void dns_cb(void *ctx, const struct dns_result *res);

enum {
	DNS_PENDING = 0,	/* cb will be called once, from dns_resolver_process*() */
	DNS_ANSWERED = 1,	/* *out is filled now (cache, literals); cb is never called */
};

/*
 * dns_resolve_mx - the delivery targets of a domain (port 25), or of an
 * address literal "[1.2.3.4]" / "[IPv6:...]".  Answers come from the
 * cache synchronously (DNS_ANSWERED, no callback: no re-entrancy into the
 * caller) or later through cb.  Returns DNS_PENDING, DNS_ANSWERED,
 * -EINVAL (not a domain name) or -EAGAIN (max_jobs in flight: try later).
 */
int dns_resolve_mx(struct dns_resolver *r, const char *domain, dns_cb *cb,
		   void *ctx, struct dns_result *out);

/*
 * A static route, PowerMTA's `smtp-hosts`: "h1,h2; [10.1.1.1]:2525;
 * lookup-mx:other.com".  `,` separates the items of one preference level
 * (tried in random order), `;` starts the next level.  An item is a host
 * name, an address in brackets (a bare IPv4 address too), or lookup-mx:
 * DOMAIN (that domain's MX hosts, in their MX order within the level);
 * each may end in :port.
 */
enum dns_route_kind {
	DNS_ROUTE_HOST,
	DNS_ROUTE_LITERAL,
	DNS_ROUTE_LOOKUP_MX,
};

struct dns_route_item {
	enum dns_route_kind kind;
	uint16_t level;
	uint16_t port;
	int family;			/* literals: AF_INET or AF_INET6 */
	union {
		struct in_addr v4;
		struct in6_addr v6;
	} ip;
	char name[DNS_NAME_MAX + 1];	/* host or domain; a literal's text */
};

struct dns_route {
	uint8_t nitems;
	struct dns_route_item items[DNS_MAX_HOSTS];
};

/*
 * dns_route_parse - parse an smtp-hosts value; items without a port get
 * default_port.  Returns 0, or -EINVAL with *why (a static string) set.
 * Any thread (pure function).
 */
int dns_route_parse(const char *spec, uint16_t default_port,
		    struct dns_route *out, const char **why);

/*
 * dns_resolve_route - the delivery targets of a route: host names through
 * the resolver and its cache, literals directly.  Same contract as
 * dns_resolve_mx(); a route never yields DNS_NXDOMAIN or DNS_NULL_MX:
 * items that resolve to nothing just add nothing.
 */
int dns_resolve_route(struct dns_resolver *r, const struct dns_route *route,
		      dns_cb *cb, void *ctx, struct dns_result *out);

/*
 * dns_cancel - forget every pending resolution started with ctx: its
 * callback will not be called.  Queries already sent still complete
 * and feed the cache.
 */
void dns_cancel(struct dns_resolver *r, void *ctx);

struct dns_stats {
	uint64_t queries;		/* sent to the network */
	uint64_t answered_now;		/* resolutions answered without waiting */
	uint64_t cache_hits;		/* record sets found fresh in the cache */
	uint64_t evictions;		/* fresh record sets dropped for room */
	size_t cached;			/* record sets held now */
	size_t jobs;			/* resolutions in flight */
};

void dns_resolver_stats(const struct dns_resolver *r, struct dns_stats *out);

#endif
