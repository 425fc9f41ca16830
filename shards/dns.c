/*
 * shards/dns.c - the per-shard resolver (dns.h): one c-ares channel, a
 * cache of record sets, and the jobs that turn them into delivery targets.
 *
 * Only the owning shard's thread calls in.  c-ares is used as transport
 * only (ares_query over non-blocking sockets the caller's loop watches);
 * answers are parsed here, because MX TTLs and the SOA of negative answers
 * are needed and c-ares' parsers give neither.
 *
 * Model: a job (one dns_resolve_* call) needs record sets, (qtype, name)
 * pairs.  A record set lives in the cache as an entry: PENDING while its
 * query is out (jobs wait on it through waiters embedded in the job), then
 * FRESH until its TTL runs out.  Concurrent jobs share entries, so a burst
 * of mail to one domain sends one query.  A job copies what it needs out
 * of an entry when it gets it, so eviction never pulls data from under a
 * job.  The equal-preference shuffle is done each time a result is built,
 * cache hits included, so a cached MX set still spreads load.
 *
 * Callbacks never run inside c-ares or inside dns_resolve_*(): finished
 * jobs queue on a done list delivered at the end of dns_resolver_process*(),
 * and queries are sent only once the caller's step is over.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ares.h>

#include "util/hash.h"
#include "util/util.h"

#include "shards/dns.h"

enum {
	QT_A = 1,
	QT_CNAME = 5,
	QT_SOA = 6,
	QT_MX = 15,
	QT_AAAA = 28,
	CLASS_IN = 1,
};

#define EDNS_UDP_SIZE	1232	/* the DNS flag day 2020 value: no fragmentation */
#define CHAIN_MAX	8	/* CNAME hops followed inside one answer */
#define ANSWER_RR_MAX	256	/* resource records looked at per section */
#define JOB_MAX_HOSTS	(2 * DNS_MAX_HOSTS)	/* room before the final cut */

/* What a record set says. */
enum rs_status {
	RS_OK,
	RS_NXDOMAIN,
	RS_NODATA,
	RS_TEMPFAIL,
};

enum entry_state {
	E_PENDING,		/* query queued or out; jobs wait on it */
	E_DONE,			/* answered, waiters being told; not evictable */
	E_FRESH,		/* in the LRU until evicted or expired */
};

struct job;
struct entry;

/* One job waiting for one record set; embedded in the job. */
struct waiter {
	struct waiter *next;
	struct waiter **pprev;
	struct entry *e;		/* NULL when not waiting */
	struct job *job;
	int8_t ref;			/* index into job->refs, or -1 */
	int8_t host;			/* index into job->hosts, or -1 */
	uint8_t fam;			/* 0: A, 1: AAAA */
};

/*
 * A cached record set.  data: A/AAAA addresses (4 or 16 bytes each), or MX
 * records packed as pref (2 bytes, big endian), length (1), name.
 */
struct entry {
	struct entry *hnext;		/* hash chain */
	struct entry *lprev, *lnext;	/* LRU, FRESH only; head is newest */
	struct entry *snext;		/* send queue, PENDING not yet sent */
	struct waiter *waiters;
	struct dns_resolver *r;
	uint64_t expires;		/* ms, clock of the resolver */
	unsigned char *data;
	uint32_t hash;
	uint16_t qtype;
	uint16_t nrec;
	uint8_t state;
	uint8_t status;
	char name[];
};

/* A lookup-mx item of a route, or the domain of an MX job. */
struct jref {
	char name[DNS_NAME_MAX + 1];
	uint16_t level;
	uint16_t port;
	struct waiter w;
};

struct jhost {
	char name[DNS_NAME_MAX + 1];
	uint32_t pref;
	uint16_t port;
	uint8_t n[2];			/* addresses held: IPv4, IPv6 */
	bool tempfail;
	struct in_addr v4[DNS_HOST_ADDRS];
	struct in6_addr v6[DNS_HOST_ADDRS];
	struct waiter w[2];		/* A, AAAA */
};

struct job {
	struct job *prev, *next;	/* r->jobs while waiting, then r->done */
	struct dns_resolver *r;
	dns_cb *cb;
	void *ctx;
	uint64_t expires;		/* smallest expiry of what was used */
	unsigned outstanding;		/* waiters linked */
	enum dns_status top;		/* NXDOMAIN / NULL_MX of an MX job's domain */
	bool is_mx;
	bool tempfail;
	bool done;
	uint8_t nrefs;
	uint8_t nhosts;
	struct jref refs[DNS_MAX_HOSTS];
	struct jhost hosts[JOB_MAX_HOSTS];
};

struct jlist {
	struct job *head, *tail;
};

struct dns_resolver {
	ares_channel ch;
	bool closing;
	bool delivering;
	bool ipv6;
	bool prefer_ipv6;
	uint32_t min_ttl, max_ttl, neg_ttl;
	size_t cache_max;
	size_t max_jobs;
	uint64_t rng;
	dns_sock_cb *sock_cb;
	void *sock_ctx;
	dns_clock_cb *clock;
	void *clock_ctx;

	struct entry **buckets;
	size_t nbuckets;		/* power of two */
	struct entry *lru_head, *lru_tail;
	size_t nfresh;
	size_t nentries;
	struct entry *sendq_head, *sendq_tail;

	struct jlist jobs;
	struct jlist done;
	size_t njobs;

	struct dns_stats stats;
	struct dns_result scratch;	/* what a callback is shown */
};

const char *dns_status_name(enum dns_status status)
{
	switch (status) {
	case DNS_OK:
		return "ok";
	case DNS_NXDOMAIN:
		return "nxdomain";
	case DNS_NULL_MX:
		return "null-mx";
	case DNS_NO_ADDRESS:
		return "no-address";
	case DNS_TEMPFAIL:
		return "tempfail";
	}
	return "unknown";
}

void dns_addr_sockaddr(const struct dns_addr *a, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (a->family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = a->ip.v6;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_addr = a->ip.v4;
	}
}

/* ---- small helpers ---------------------------------------------------- */

/* now_ms - the resolver's clock: the shard's (tests: a fake one) or monotonic. */
static uint64_t now_ms(const struct dns_resolver *r)
{
	if (r->clock)
		return r->clock(r->clock_ctx);
	return mono_ms();
}

/* rng_next - xorshift64*: the shuffle needs spread, not secrecy. */
static uint64_t rng_next(struct dns_resolver *r)
{
	uint64_t x = r->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* be16, be32 - network-order fields of a DNS message. */
static uint16_t be16(const unsigned char *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/*
 * name_normalize - copy a domain name to out (DNS_NAME_MAX + 1 bytes),
 * lower case, without the trailing dot.  Host names only: letters,
 * digits, '-' and '_' (seen in real MX names); anything else, an empty
 * label or an overlong name is -EINVAL.  The root (".") is too: callers
 * that accept it check first.
 */
static int name_normalize(const char *in, size_t len, char *out)
{
	size_t label = 0;

	if (len && in[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (c == '.') {
			if (label == 0)
				return -EINVAL;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			   c == '-' || c == '_') {
			label++;
		} else if (c >= 'A' && c <= 'Z') {
			c = (char)(c - 'A' + 'a');
			label++;
		} else {
			return -EINVAL;
		}
		if (label > 63)
			return -EINVAL;
		out[i] = c;
	}
	if (label == 0)
		return -EINVAL;
	out[len] = '\0';
	return 0;
}

/* ttl_clamp - a TTL within [min_ttl, max_ttl]: no 0 s storms, no stale days. */
static uint32_t ttl_clamp(const struct dns_resolver *r, uint32_t ttl)
{
	if (ttl < r->min_ttl)
		return r->min_ttl;
	if (ttl > r->max_ttl)
		return r->max_ttl;
	return ttl;
}

/* ---- job lists -------------------------------------------------------- */

/* jlist_add, jlist_del - FIFO of jobs (r->jobs, r->done). */
static void jlist_add(struct jlist *l, struct job *j)
{
	j->next = NULL;
	j->prev = l->tail;
	if (l->tail)
		l->tail->next = j;
	else
		l->head = j;
	l->tail = j;
}

static void jlist_del(struct jlist *l, struct job *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		l->head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	else
		l->tail = j->prev;
	j->prev = j->next = NULL;
}

/* ---- the cache -------------------------------------------------------- */

/* key_hash - FNV-1a over (qtype, name); names are already lower case. */
static uint32_t key_hash(uint16_t qtype, const char *name)
{
	return (uint32_t)hash_mix(hash_str(HASH_SEED ^ qtype, name));
}

/* lru_unlink, lru_push - the LRU of FRESH entries, newest at the head. */
static void lru_unlink(struct dns_resolver *r, struct entry *e)
{
	if (e->lprev)
		e->lprev->lnext = e->lnext;
	else
		r->lru_head = e->lnext;
	if (e->lnext)
		e->lnext->lprev = e->lprev;
	else
		r->lru_tail = e->lprev;
	e->lprev = e->lnext = NULL;
}

static void lru_push(struct dns_resolver *r, struct entry *e)
{
	e->lprev = NULL;
	e->lnext = r->lru_head;
	if (r->lru_head)
		r->lru_head->lprev = e;
	else
		r->lru_tail = e;
	r->lru_head = e;
}

/* entry_free - unhash and free; waiters must be gone. */
static void entry_free(struct dns_resolver *r, struct entry *e)
{
	struct entry **pp = &r->buckets[e->hash & (r->nbuckets - 1)];

	BUG_ON(e->waiters);
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	if (e->state == E_FRESH) {
		lru_unlink(r, e);
		r->nfresh--;
	}
	r->nentries--;
	free(e->data);
	free(e);
}

/* cache_find - the entry for (qtype, name); expired ones are dropped. */
static struct entry *cache_find(struct dns_resolver *r, uint16_t qtype,
				const char *name, uint64_t now)
{
	uint32_t h = key_hash(qtype, name);

	for (struct entry *e = r->buckets[h & (r->nbuckets - 1)]; e; e = e->hnext) {
		if (e->hash != h || e->qtype != qtype || strcmp(e->name, name))
			continue;
		if (e->state == E_FRESH && now >= e->expires) {
			entry_free(r, e);
			return NULL;
		}
		return e;
	}
	return NULL;
}

/* entry_new - a PENDING entry, hashed; the caller queues or completes it. */
static struct entry *entry_new(struct dns_resolver *r, uint16_t qtype,
			       const char *name)
{
	size_t len = strlen(name);
	struct entry *e = xcalloc(1, sizeof(*e) + len + 1);
	struct entry **bucket;

	memcpy(e->name, name, len + 1);
	e->r = r;
	e->qtype = qtype;
	e->hash = key_hash(qtype, name);
	e->state = E_PENDING;
	bucket = &r->buckets[e->hash & (r->nbuckets - 1)];
	e->hnext = *bucket;
	*bucket = e;
	r->nentries++;
	return e;
}

/* cache_trim - evict least recently used fresh sets beyond cache_max. */
static void cache_trim(struct dns_resolver *r)
{
	while (r->nfresh > r->cache_max && r->lru_tail) {
		entry_free(r, r->lru_tail);
		r->stats.evictions++;
	}
}

/* ---- waiters ---------------------------------------------------------- */

/* waiter_link - make w's job wait for e; counted in job->outstanding. */
static void waiter_link(struct entry *e, struct waiter *w)
{
	BUG_ON(w->e);
	w->e = e;
	w->next = e->waiters;
	w->pprev = &e->waiters;
	if (e->waiters)
		e->waiters->pprev = &w->next;
	e->waiters = w;
	w->job->outstanding++;
}

/* waiter_unlink - stop waiting (no-op if w waits on nothing). */
static void waiter_unlink(struct waiter *w)
{
	if (!w->e)
		return;
	*w->pprev = w->next;
	if (w->next)
		w->next->pprev = w->pprev;
	w->e = NULL;
	w->next = NULL;
	w->pprev = NULL;
	w->job->outstanding--;
}

/* ---- answer parsing --------------------------------------------------- */

struct rr {
	char owner[DNS_NAME_MAX + 2];
	uint16_t type;
	uint16_t class;
	uint32_t ttl;
	int rdpos;
	int rdlen;
};

/*
 * expand_name - the (possibly compressed) name at pos, lower case, into
 * out (DNS_NAME_MAX + 2 bytes: room for one too many); *next gets the
 * position after it.  The root is "".  -1 if malformed or overlong.
 */
static int expand_name(const unsigned char *buf, int len, int pos, char *out,
		       int *next)
{
	char *s = NULL;
	long enclen = 0;
	size_t n;

	if (pos >= len ||
	    ares_expand_name(buf + pos, buf, len, &s, &enclen) != ARES_SUCCESS)
		return -1;
	n = strlen(s);
	if (n && s[n - 1] == '.')
		n--;		/* some c-ares versions spell the root "." */
	if (n > DNS_NAME_MAX) {
		ares_free_string(s);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	out[n] = '\0';
	ares_free_string(s);
	*next = pos + (int)enclen;
	return 0;
}

/* rr_read - the resource record at *pos; advances *pos past it. */
static int rr_read(const unsigned char *buf, int len, int *pos, struct rr *rr)
{
	int p;

	if (expand_name(buf, len, *pos, rr->owner, &p) < 0 || p + 10 > len)
		return -1;
	rr->type = be16(buf + p);
	rr->class = be16(buf + p + 2);
	rr->ttl = be32(buf + p + 4);
	if (rr->ttl > 0x7fffffffu)	/* RFC 2181 8: treat as zero */
		rr->ttl = 0;
	rr->rdlen = be16(buf + p + 8);
	rr->rdpos = p + 10;
	if (rr->rdpos + rr->rdlen > len)
		return -1;
	*pos = rr->rdpos + rr->rdlen;
	return 0;
}

/* in_chain - is name the query name or one of its CNAME targets so far? */
static bool in_chain(char chain[][DNS_NAME_MAX + 2], int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(chain[i], name))
			return true;
	return false;
}

struct mxrec {
	uint16_t pref;
	uint8_t len;
	char name[DNS_NAME_MAX + 2];
};

/* mxrec_cmp - by preference, then answer order. */
static int mxrec_cmp(const void *a, const void *b)
{
	const struct mxrec *x = a, *y = b;

	/* qsort is not stable: fall back to the address, i.e. answer order. */
	if (x->pref != y->pref)
		return x->pref < y->pref ? -1 : 1;
	return x < y ? -1 : x > y;
}

/*
 * parse_answer - fill e (status, data, expiry) from a reply to its query.
 * Follows the CNAME chain inside the answer; takes the negative TTL from
 * the SOA in the authority section (RFC 2308) or neg_ttl.
 */
static void parse_answer(struct dns_resolver *r, struct entry *e,
			 const unsigned char *buf, int len, uint64_t now)
{
	char chain[CHAIN_MAX][DNS_NAME_MAX + 2];
	int nchain = 1, pos = 12, ans_pos, rcode, qd, an, ns;
	uint32_t ttl = UINT32_MAX, neg = r->neg_ttl;
	struct mxrec *mx = NULL;
	size_t nmx = 0, nroot = 0, seen = 0, cap;
	struct rr rr;

	e->status = RS_TEMPFAIL;
	if (len < 12)
		return;
	rcode = buf[3] & 0x0f;
	qd = be16(buf + 4);
	an = be16(buf + 6);
	ns = be16(buf + 8);
	if (rcode != 0 && rcode != 3)
		return;
	for (int i = 0; i < qd; i++) {
		if (expand_name(buf, len, pos, rr.owner, &pos) < 0 || pos + 4 > len)
			return;
		pos += 4;
	}
	ans_pos = pos;
	if (an > ANSWER_RR_MAX) {
		an = ANSWER_RR_MAX;
		ns = 0;		/* the authority section was not reached */
	}
	memcpy(chain[0], e->name, strlen(e->name) + 1);

	/* CNAME chain: one pass per hop, whatever order the records come in. */
	for (bool grew = true; grew && nchain < CHAIN_MAX;) {
		grew = false;
		pos = ans_pos;
		for (int i = 0; i < an; i++) {
			char target[DNS_NAME_MAX + 2];
			int dummy;

			if (rr_read(buf, len, &pos, &rr) < 0)
				return;
			if (rr.type != QT_CNAME || rr.class != CLASS_IN ||
			    !in_chain(chain, nchain, rr.owner) ||
			    expand_name(buf, len, rr.rdpos, target, &dummy) < 0 ||
			    in_chain(chain, nchain, target))
				continue;
			memcpy(chain[nchain++], target, strlen(target) + 1);
			if (rr.ttl < ttl)
				ttl = rr.ttl;
			grew = true;
			if (nchain == CHAIN_MAX)
				break;
		}
	}

	cap = e->qtype == QT_MX ? (size_t)an : DNS_HOST_ADDRS;
	if (e->qtype == QT_MX)
		mx = xcalloc(cap ? cap : 1, sizeof(*mx));
	else
		e->data = xmalloc(cap * (e->qtype == QT_A ? 4 : 16));
	pos = ans_pos;
	for (int i = 0; i < an; i++) {
		if (rr_read(buf, len, &pos, &rr) < 0)
			goto out;
		if (rr.type != e->qtype || rr.class != CLASS_IN ||
		    !in_chain(chain, nchain, rr.owner))
			continue;
		seen++;
		if (e->qtype == QT_MX) {
			struct mxrec *m = &mx[nmx];
			char norm[DNS_NAME_MAX + 1];
			int dummy;

			if (rr.rdlen < 3 || nmx == cap ||
			    expand_name(buf, len, rr.rdpos + 2, m->name, &dummy) < 0)
				continue;
			if (m->name[0] == '\0') {
				nroot++;
			} else {
				if (name_normalize(m->name, strlen(m->name), norm) < 0)
					continue;	/* no host to connect to */
				m->pref = be16(buf + rr.rdpos);
				m->len = (uint8_t)strlen(norm);
				memcpy(m->name, norm, m->len + 1u);
				nmx++;
			}
		} else {
			size_t sz = e->qtype == QT_A ? 4 : 16;

			if ((size_t)rr.rdlen != sz)
				continue;
			if (e->nrec < cap)
				memcpy(e->data + e->nrec++ * sz, buf + rr.rdpos, sz);
		}
		if (rr.ttl < ttl)
			ttl = rr.ttl;
	}

	/* Negative answers: RFC 2308 5, min(SOA TTL, SOA MINIMUM). */
	if (ns > ANSWER_RR_MAX)
		ns = ANSWER_RR_MAX;
	for (int i = 0; i < ns; i++) {
		int p;

		if (rr_read(buf, len, &pos, &rr) < 0)
			break;
		if (rr.type != QT_SOA ||
		    expand_name(buf, len, rr.rdpos, chain[0], &p) < 0 ||
		    expand_name(buf, len, p, chain[0], &p) < 0 ||
		    p + 20 > rr.rdpos + rr.rdlen)
			continue;
		neg = be32(buf + p + 16);
		if (rr.ttl < neg)
			neg = rr.ttl;
		break;
	}

	if (e->qtype == QT_MX) {
		if (nmx == 0 && nroot > 0) {
			/* RFC 7505: only "." - say so with one empty record. */
			e->data = xmalloc(3);
			e->data[0] = e->data[1] = e->data[2] = 0;
			e->nrec = 1;
		} else if (nmx > 0) {
			size_t off = 0;

			qsort(mx, nmx, sizeof(*mx), mxrec_cmp);
			if (nmx > DNS_MAX_HOSTS)
				nmx = DNS_MAX_HOSTS;
			e->data = xmalloc(nmx * (3 + DNS_NAME_MAX));
			for (size_t i = 0; i < nmx; i++) {
				e->data[off++] = (unsigned char)(mx[i].pref >> 8);
				e->data[off++] = (unsigned char)mx[i].pref;
				e->data[off++] = mx[i].len;
				memcpy(e->data + off, mx[i].name, mx[i].len);
				off += mx[i].len;
			}
			e->nrec = (uint16_t)nmx;
		}
	}

	if (rcode == 3) {
		e->status = RS_NXDOMAIN;
		ttl = neg;
	} else if (seen == 0) {
		e->status = RS_NODATA;
		ttl = neg;
	} else {
		/*
		 * Records, maybe none usable (an MX naming no valid host): not
		 * NODATA, which would make an MX domain an implicit MX.
		 */
		e->status = RS_OK;
	}
	e->expires = now + (uint64_t)ttl_clamp(r, ttl) * 1000;
out:
	free(mx);
	if (e->status == RS_TEMPFAIL || e->nrec == 0) {
		free(e->data);
		e->data = NULL;
		e->nrec = 0;
	}
}

/* ---- jobs ------------------------------------------------------------- */

static void job_need(struct dns_resolver *r, struct job *j, struct waiter *w,
		     uint16_t qtype, const char *name, uint64_t now);

/* job_use_expiry - the result lives no longer than what it was built on. */
static void job_use_expiry(struct job *j, const struct entry *e)
{
	if (e->status != RS_TEMPFAIL && e->expires < j->expires)
		j->expires = e->expires;
}

/* host_init - slot idx of the job as host name, its waiters pointing back. */
static void host_init(struct job *j, struct jhost *h, int idx,
		      const char *name, uint32_t pref, uint16_t port)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->name, name, strlen(name) + 1);
	h->pref = pref;
	h->port = port;
	for (int f = 0; f < 2; f++) {
		h->w[f].job = j;
		h->w[f].ref = -1;
		h->w[f].host = (int8_t)idx;
		h->w[f].fam = (uint8_t)f;
	}
}

/*
 * job_add_host - a host name to resolve.  A name met twice (an MX set
 * listing it at two preferences, a route naming it twice) keeps its best
 * preference; beyond JOB_MAX_HOSTS names are dropped.
 */
static void job_add_host(struct dns_resolver *r, struct job *j,
			 const char *name, uint32_t pref, uint16_t port,
			 uint64_t now)
{
	struct jhost *h;
	int idx;

	for (int i = 0; i < j->nhosts; i++) {
		if (!strcmp(j->hosts[i].name, name) && j->hosts[i].port == port) {
			if (pref < j->hosts[i].pref)
				j->hosts[i].pref = pref;
			return;
		}
	}
	if (j->nhosts == JOB_MAX_HOSTS)
		return;
	idx = j->nhosts++;
	h = &j->hosts[idx];
	host_init(j, h, idx, name, pref, port);
	job_need(r, j, &h->w[0], QT_A, name, now);
	if (r->ipv6)
		job_need(r, j, &h->w[1], QT_AAAA, name, now);
}

/*
 * apply_mx - an MX set for ref arrived: its hosts join the job, at the
 * ref's level.  For an MX job's own domain, NXDOMAIN and null MX are the
 * answer; for a route's lookup-mx they only add nothing.
 */
static void apply_mx(struct dns_resolver *r, struct job *j, struct jref *ref,
		     const struct entry *e, uint64_t now)
{
	bool top = j->is_mx && ref == &j->refs[0];
	uint32_t level = (uint32_t)ref->level << 16;
	const unsigned char *p = e->data;

	switch ((enum rs_status)e->status) {
	case RS_TEMPFAIL:
		j->tempfail = true;
		return;
	case RS_NXDOMAIN:
		if (top)
			j->top = DNS_NXDOMAIN;
		return;
	case RS_NODATA:
		/* RFC 5321 5.1: no MX, the domain itself is the host. */
		job_add_host(r, j, ref->name, level, ref->port, now);
		return;
	case RS_OK:
		break;
	}
	if (e->nrec == 1 && p[2] == 0) {
		if (top)
			j->top = DNS_NULL_MX;
		return;
	}
	for (unsigned i = 0; i < e->nrec; i++) {
		char name[DNS_NAME_MAX + 1];
		uint16_t pref = be16(p);
		uint8_t len = p[2];

		memcpy(name, p + 3, len);
		name[len] = '\0';
		p += 3 + len;
		job_add_host(r, j, name, level | pref, ref->port, now);
	}
}

/* apply_addr - a host's A (fam 0) or AAAA (fam 1) set arrived. */
static void apply_addr(struct job *j, struct jhost *h, int fam,
		       const struct entry *e)
{
	if (e->status == RS_TEMPFAIL) {
		h->tempfail = true;
		j->tempfail = true;
		return;
	}
	if (e->status != RS_OK)
		return;
	h->n[fam] = (uint8_t)(e->nrec < DNS_HOST_ADDRS ? e->nrec : DNS_HOST_ADDRS);
	if (fam == 0)
		memcpy(h->v4, e->data, h->n[fam] * sizeof(h->v4[0]));
	else
		memcpy(h->v6, e->data, h->n[fam] * sizeof(h->v6[0]));
}

/* job_apply - a record set the job waited for (or found) is here. */
static void job_apply(struct dns_resolver *r, struct job *j,
		      const struct waiter *w, const struct entry *e,
		      uint64_t now)
{
	job_use_expiry(j, e);
	if (w->ref >= 0)
		apply_mx(r, j, &j->refs[w->ref], e, now);
	else
		apply_addr(j, &j->hosts[w->host], w->fam, e);
}

/*
 * job_need - get the record set (qtype, name) to the job: now if cached,
 * else by waiting on the entry, sending the query if nobody has.
 */
static void job_need(struct dns_resolver *r, struct job *j, struct waiter *w,
		     uint16_t qtype, const char *name, uint64_t now)
{
	struct entry *e = cache_find(r, qtype, name, now);

	if (e && e->state != E_PENDING) {
		r->stats.cache_hits++;
		if (e->state == E_FRESH) {
			lru_unlink(r, e);
			lru_push(r, e);
		}
		job_apply(r, j, w, e, now);
		return;
	}
	if (!e) {
		e = entry_new(r, qtype, name);
		if (r->sendq_tail)
			r->sendq_tail->snext = e;
		else
			r->sendq_head = e;
		r->sendq_tail = e;
	}
	waiter_link(e, w);
}

/* job_new - a job on r->jobs, or NULL when max_jobs are in flight. */
static struct job *job_new(struct dns_resolver *r, dns_cb *cb, void *ctx)
{
	struct job *j;

	if (r->njobs >= r->max_jobs)
		return NULL;
	j = xcalloc(1, sizeof(*j));
	j->r = r;
	j->cb = cb;
	j->ctx = ctx;
	j->expires = UINT64_MAX;
	j->top = DNS_OK;
	r->njobs++;
	jlist_add(&r->jobs, j);
	return j;
}

/* job_free - unlink from its list and from every entry it waits on. */
static void job_free(struct dns_resolver *r, struct job *j)
{
	for (int i = 0; i < j->nrefs; i++)
		waiter_unlink(&j->refs[i].w);
	for (int i = 0; i < j->nhosts; i++) {
		waiter_unlink(&j->hosts[i].w[0]);
		waiter_unlink(&j->hosts[i].w[1]);
	}
	jlist_del(j->done ? &r->done : &r->jobs, j);
	r->njobs--;
	free(j);
}

/* job_add_ref - an MX lookup the job needs (the caller starts it). */
static struct jref *job_add_ref(struct job *j, const char *name,
				uint16_t level, uint16_t port)
{
	struct jref *ref = &j->refs[j->nrefs];

	BUG_ON(j->nrefs >= DNS_MAX_HOSTS);
	memcpy(ref->name, name, strlen(name) + 1);
	ref->level = level;
	ref->port = port;
	ref->w.job = j;
	ref->w.ref = (int8_t)j->nrefs;
	ref->w.host = -1;
	j->nrefs++;
	return ref;
}

/*
 * job_build - the result: hosts by preference, shuffled among equals
 * (RFC 5321 5.1), then each host's addresses in the family order asked.
 */
static void job_build(struct dns_resolver *r, const struct job *j,
		      struct dns_result *out, uint64_t now)
{
	uint8_t order[JOB_MAX_HOSTS];
	size_t n = j->nhosts, off = 0;

	out->status = j->top;
	out->nhosts = 0;
	out->naddrs = 0;
	out->names[0] = '\0';
	if (j->expires == UINT64_MAX)
		out->ttl = r->max_ttl;
	else if (j->expires <= now)
		out->ttl = 0;
	else
		out->ttl = (uint32_t)((j->expires - now + 999) / 1000);
	if (j->top != DNS_OK)
		return;

	for (size_t i = 0; i < n; i++) {
		size_t k = i;

		/* Insertion sort: stable, and n is tiny. */
		while (k > 0 && j->hosts[order[k - 1]].pref > j->hosts[i].pref) {
			order[k] = order[k - 1];
			k--;
		}
		order[k] = (uint8_t)i;
	}
	for (size_t a = 0; a < n;) {
		size_t b = a + 1;

		while (b < n && j->hosts[order[b]].pref == j->hosts[order[a]].pref)
			b++;
		for (size_t i = b - 1; i > a; i--) {
			size_t k = a + (size_t)(rng_next(r) % (i - a + 1));
			uint8_t t = order[i];

			order[i] = order[k];
			order[k] = t;
		}
		a = b;
	}

	if (n > DNS_MAX_HOSTS)
		n = DNS_MAX_HOSTS;
	for (size_t i = 0; i < n; i++) {
		const struct jhost *h = &j->hosts[order[i]];
		struct dns_host *oh = &out->hosts[out->nhosts];
		size_t len = strlen(h->name);

		oh->pref = h->pref;
		oh->name = (uint16_t)off;
		oh->naddrs = 0;
		oh->tempfail = h->tempfail;
		memcpy(out->names + off, h->name, len + 1);
		off += len + 1;
		for (int f = 0; f < 2; f++) {
			int fam = r->prefer_ipv6 ? 1 - f : f;

			for (int k = 0; k < h->n[fam] && out->naddrs < DNS_MAX_ADDRS; k++) {
				struct dns_addr *ad = &out->addrs[out->naddrs++];

				memset(ad, 0, sizeof(*ad));
				ad->family = fam ? AF_INET6 : AF_INET;
				if (fam)
					ad->ip.v6 = h->v6[k];
				else
					ad->ip.v4 = h->v4[k];
				ad->port = h->port;
				ad->host = out->nhosts;
				oh->naddrs++;
			}
		}
		out->nhosts++;
	}
	if (out->naddrs > 0)
		out->status = DNS_OK;
	else if (j->tempfail)
		out->status = DNS_TEMPFAIL;
	else
		out->status = DNS_NO_ADDRESS;
	if (out->status == DNS_TEMPFAIL)
		out->ttl = 0;
}

/* ---- sending and completion ------------------------------------------- */

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf,
		      int alen);

/*
 * flush_sends - send the queries queued during the last step.  c-ares
 * may answer at once (no server, no memory): on_answer copes.
 */
static void flush_sends(struct dns_resolver *r)
{
	struct entry *e;

	while ((e = r->sendq_head)) {
		r->sendq_head = e->snext;
		if (!r->sendq_head)
			r->sendq_tail = NULL;
		e->snext = NULL;
		if (!e->waiters) {	/* every job cancelled before it left */
			entry_free(r, e);
			continue;
		}
		r->stats.queries++;
		ares_query(r->ch, e->name, CLASS_IN, e->qtype, on_answer, e);
	}
}

/* entry_complete - tell the waiters, then cache or drop the set. */
static void entry_complete(struct dns_resolver *r, struct entry *e, uint64_t now)
{
	struct waiter *w;

	e->state = E_DONE;
	while ((w = e->waiters)) {
		struct job *j = w->job;

		waiter_unlink(w);
		job_apply(r, j, w, e, now);
		if (j->outstanding == 0 && !j->done) {
			jlist_del(&r->jobs, j);
			j->done = true;
			jlist_add(&r->done, j);
		}
	}
	if (e->status == RS_TEMPFAIL) {
		entry_free(r, e);
		return;
	}
	e->state = E_FRESH;
	lru_push(r, e);
	r->nfresh++;
	cache_trim(r);
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf,
		      int alen)
{
	struct entry *e = arg;
	struct dns_resolver *r = e->r;
	uint64_t now;

	if (r->closing)
		return;		/* ares_destroy: dns_resolver_free frees e */
	now = now_ms(r);
	e->status = RS_TEMPFAIL;
	/* NXDOMAIN and NODATA come with the reply: parse it for the SOA. */
	if ((status == ARES_SUCCESS || status == ARES_ENODATA ||
	     status == ARES_ENOTFOUND) && abuf)
		parse_answer(r, e, abuf, alen, now);
	entry_complete(r, e, now);
}

/* deliver - call back the finished jobs, oldest first. */
static void deliver(struct dns_resolver *r)
{
	struct job *j;

	if (r->delivering)
		return;		/* a callback drove the resolver: the outer loop goes on */
	r->delivering = true;
	while ((j = r->done.head)) {
		dns_cb *cb = j->cb;
		void *ctx = j->ctx;

		job_build(r, j, &r->scratch, now_ms(r));
		/* Freed first, so the callback may reuse the slot. */
		job_free(r, j);
		cb(ctx, &r->scratch);
	}
	r->delivering = false;
}

/*
 * job_launch - after the job's first step: answered already (nothing to
 * wait for), or send what it needs and let the loop call back.
 */
static int job_launch(struct dns_resolver *r, struct job *j,
		      struct dns_result *out, uint64_t now)
{
	if (j->outstanding == 0) {
		job_build(r, j, out, now);
		job_free(r, j);
		r->stats.answered_now++;
		return DNS_ANSWERED;
	}
	flush_sends(r);
	return DNS_PENDING;
}

/* ---- public: queries -------------------------------------------------- */

static int parse_literal(const char *s, size_t len, struct dns_route_item *it);

int dns_resolve_mx(struct dns_resolver *r, const char *domain, dns_cb *cb,
		   void *ctx, struct dns_result *out)
{
	char name[DNS_NAME_MAX + 1];
	uint64_t now;
	struct job *j;

	if (domain[0] == '[') {
		struct dns_route route = { .nitems = 1 };

		if (parse_literal(domain, strlen(domain), &route.items[0]) < 0)
			return -EINVAL;
		route.items[0].port = DNS_SMTP_PORT;
		return dns_resolve_route(r, &route, cb, ctx, out);
	}
	if (name_normalize(domain, strlen(domain), name) < 0)
		return -EINVAL;
	j = job_new(r, cb, ctx);
	if (!j)
		return -EAGAIN;
	now = now_ms(r);
	j->is_mx = true;
	job_add_ref(j, name, 0, DNS_SMTP_PORT);
	job_need(r, j, &j->refs[0].w, QT_MX, name, now);
	return job_launch(r, j, out, now);
}

int dns_resolve_route(struct dns_resolver *r, const struct dns_route *route,
		      dns_cb *cb, void *ctx, struct dns_result *out)
{
	char names[DNS_MAX_HOSTS][DNS_NAME_MAX + 1];
	uint64_t now;
	struct job *j;

	if (route->nitems == 0 || route->nitems > DNS_MAX_HOSTS)
		return -EINVAL;
	for (int i = 0; i < route->nitems; i++) {
		const struct dns_route_item *it = &route->items[i];

		if (it->kind == DNS_ROUTE_LITERAL) {
			if (it->family != AF_INET && it->family != AF_INET6)
				return -EINVAL;
		} else if (name_normalize(it->name, strnlen(it->name, sizeof(it->name)),
					  names[i]) < 0) {
			return -EINVAL;
		}
	}
	j = job_new(r, cb, ctx);
	if (!j)
		return -EAGAIN;
	now = now_ms(r);
	/* Literals first: they cost nothing and must not be crowded out. */
	for (int i = 0; i < route->nitems; i++) {
		const struct dns_route_item *it = &route->items[i];
		struct jhost *h;

		if (it->kind != DNS_ROUTE_LITERAL || j->nhosts == JOB_MAX_HOSTS)
			continue;
		h = &j->hosts[j->nhosts];
		host_init(j, h, j->nhosts, it->name, (uint32_t)it->level << 16,
			  it->port);
		if (it->family == AF_INET)
			h->v4[h->n[0]++] = it->ip.v4;
		else
			h->v6[h->n[1]++] = it->ip.v6;
		j->nhosts++;
	}
	for (int i = 0; i < route->nitems; i++) {
		const struct dns_route_item *it = &route->items[i];

		if (it->kind == DNS_ROUTE_HOST) {
			job_add_host(r, j, names[i], (uint32_t)it->level << 16,
				     it->port, now);
		} else if (it->kind == DNS_ROUTE_LOOKUP_MX) {
			struct jref *ref = job_add_ref(j, names[i], it->level,
						       it->port);

			job_need(r, j, &ref->w, QT_MX, names[i], now);
		}
	}
	return job_launch(r, j, out, now);
}

void dns_cancel(struct dns_resolver *r, void *ctx)
{
	struct jlist *lists[] = { &r->jobs, &r->done };

	for (size_t l = 0; l < ARRAY_SIZE(lists); l++) {
		struct job *j = lists[l]->head;

		while (j) {
			struct job *next = j->next;

			if (j->ctx == ctx)
				job_free(r, j);
			j = next;
		}
	}
}

/* ---- public: smtp-hosts ----------------------------------------------- */

/* parse_port - 1..65535, decimal digits only. */
static int parse_port(const char *s, size_t len, uint16_t *port)
{
	unsigned v = 0;

	if (len == 0 || len > 5)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/*
 * parse_literal - "[1.2.3.4]", "[IPv6:2001:db8::1]" or "[2001:db8::1]",
 * exactly (a port after it is the caller's business).
 */
static int parse_literal(const char *s, size_t len, struct dns_route_item *it)
{
	char addr[INET6_ADDRSTRLEN + 8];
	size_t alen;

	if (len < 3 || s[0] != '[' || s[len - 1] != ']')
		return -1;
	s++;
	alen = len - 2;
	if (alen > 5 && !strncasecmp(s, "IPv6:", 5)) {
		s += 5;
		alen -= 5;
	}
	if (alen >= sizeof(addr))
		return -1;
	memcpy(addr, s, alen);
	addr[alen] = '\0';
	if (inet_pton(AF_INET, addr, &it->ip.v4) == 1)
		it->family = AF_INET;
	else if (inet_pton(AF_INET6, addr, &it->ip.v6) == 1)
		it->family = AF_INET6;
	else
		return -1;
	it->kind = DNS_ROUTE_LITERAL;
	memcpy(it->name, addr, alen + 1);
	return 0;
}

/* is_space - the blanks an smtp-hosts value may carry around items. */
static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* parse_item - one smtp-hosts item, trimmed, into it (port default set). */
static int parse_item(const char *s, size_t len, struct dns_route_item *it,
		      const char **why)
{
	static const char lookup[] = "lookup-mx:";
	const char *colon;

	if (len == 0) {
		*why = "empty host";
		return -EINVAL;
	}
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);
		size_t rest;

		if (!close || parse_literal(s, (size_t)(close - s) + 1, it) < 0) {
			*why = "bad address literal";
			return -EINVAL;
		}
		rest = len - (size_t)(close + 1 - s);
		if (rest && (close[1] != ':' || parse_port(close + 2, rest - 1, &it->port) < 0)) {
			*why = "bad port";
			return -EINVAL;
		}
		return 0;
	}
	it->kind = DNS_ROUTE_HOST;
	if (len > sizeof(lookup) - 1 &&
	    !strncasecmp(s, lookup, sizeof(lookup) - 1)) {
		it->kind = DNS_ROUTE_LOOKUP_MX;
		s += sizeof(lookup) - 1;
		len -= sizeof(lookup) - 1;
	}
	colon = memchr(s, ':', len);
	if (colon) {
		if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - s))) {
			*why = "an IPv6 address needs brackets";
			return -EINVAL;
		}
		if (parse_port(colon + 1, len - (size_t)(colon + 1 - s), &it->port) < 0) {
			*why = "bad port";
			return -EINVAL;
		}
		len = (size_t)(colon - s);
		while (len && is_space(s[len - 1]))
			len--;
	}
	if (name_normalize(s, len, it->name) < 0) {
		*why = it->kind == DNS_ROUTE_LOOKUP_MX ? "bad lookup-mx domain"
						       : "bad host name";
		return -EINVAL;
	}
	if (it->kind == DNS_ROUTE_HOST && inet_pton(AF_INET, it->name, &it->ip.v4) == 1) {
		it->kind = DNS_ROUTE_LITERAL;	/* a bare IPv4 address */
		it->family = AF_INET;
	}
	return 0;
}

int dns_route_parse(const char *spec, uint16_t default_port,
		    struct dns_route *out, const char **why)
{
	const char *p = spec;
	uint16_t level = 0;
	const char *dummy;

	if (!why)
		why = &dummy;
	memset(out, 0, sizeof(*out));
	for (;;) {
		const char *end = p;
		struct dns_route_item *it;
		size_t len;
		int rc;

		while (*end && *end != ',' && *end != ';')
			end++;
		while (p < end && is_space(*p))
			p++;
		len = (size_t)(end - p);
		while (len && is_space(p[len - 1]))
			len--;
		if (out->nitems == DNS_MAX_HOSTS) {
			*why = "more than 16 hosts";
			return -EINVAL;
		}
		it = &out->items[out->nitems];
		it->level = level;
		it->port = default_port;
		rc = parse_item(p, len, it, why);
		if (rc < 0)
			return rc;
		out->nitems++;
		if (!*end)
			return 0;
		if (*end == ';')
			level++;
		p = end + 1;
	}
}

/* ---- public: life cycle and driving ----------------------------------- */

/* sock_state - c-ares' socket callback, handed on to the loop's. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns_resolver *r = data;

	if (r->sock_cb)
		r->sock_cb(r->sock_ctx, fd, readable != 0, writable != 0);
}

/* servers_csv - the list as c-ares' "a:p,b:p"; a comma inside is -EINVAL. */
static int servers_csv(const char *const *servers, struct strbuf *csv)
{
	for (size_t i = 0; servers[i]; i++) {
		if (!*servers[i] || strpbrk(servers[i], ", \t"))
			return -EINVAL;
		if (i)
			sb_addc(csv, ',');
		sb_adds(csv, servers[i]);
	}
	return 0;
}

int dns_resolver_new(const struct dns_options *opt, struct dns_resolver **out)
{
	static const struct dns_options defaults;
	struct ares_options ao;
	struct dns_resolver *r;
	int rc;

	if (!opt)
		opt = &defaults;
	*out = NULL;
	r = xcalloc(1, sizeof(*r));
	r->ipv6 = opt->ipv6;
	r->prefer_ipv6 = opt->prefer_ipv6;
	r->min_ttl = opt->min_ttl ? opt->min_ttl : 5;
	r->max_ttl = opt->max_ttl ? opt->max_ttl : 3600;
	r->neg_ttl = opt->neg_ttl ? opt->neg_ttl : 60;
	if (r->max_ttl < r->min_ttl)
		r->max_ttl = r->min_ttl;
	r->cache_max = opt->cache_max ? opt->cache_max : 4096;
	r->max_jobs = opt->max_jobs ? opt->max_jobs : 1024;
	r->sock_cb = opt->sock_cb;
	r->sock_ctx = opt->sock_ctx;
	r->clock = opt->clock;
	r->clock_ctx = opt->clock_ctx;
	r->rng = opt->seed;
	if (!r->rng && getrandom(&r->rng, sizeof(r->rng), GRND_NONBLOCK) != sizeof(r->rng))
		r->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if (!r->rng)
		r->rng = 0x9E3779B97F4A7C15ULL;	/* xorshift must not start at 0 */
	/* Twice the cache in buckets: chains stay short, PENDING ones too. */
	r->nbuckets = 16;
	while (r->nbuckets < 2 * r->cache_max)
		r->nbuckets <<= 1;
	r->buckets = xcalloc(r->nbuckets, sizeof(*r->buckets));

	memset(&ao, 0, sizeof(ao));
	ao.flags = ARES_FLAG_EDNS;
	ao.ednspsz = EDNS_UDP_SIZE;
	ao.timeout = opt->timeout_ms > 0 ? opt->timeout_ms : 2000;
	ao.tries = opt->tries > 0 ? opt->tries : 2;
	ao.sock_state_cb = sock_state;
	ao.sock_state_cb_data = r;
	rc = ares_init_options(&r->ch, &ao,
			       ARES_OPT_FLAGS | ARES_OPT_EDNSPSZ |
			       ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
			       ARES_OPT_SOCK_STATE_CB);
	if (rc != ARES_SUCCESS) {
		free(r->buckets);
		free(r);
		return rc == ARES_ENOMEM ? -ENOMEM : -EINVAL;
	}
	if (opt->servers && opt->servers[0]) {
		struct strbuf csv = { 0 };

		rc = servers_csv(opt->servers, &csv);
		if (rc == 0 && ares_set_servers_ports_csv(r->ch, sb_str(&csv)) != ARES_SUCCESS)
			rc = -EINVAL;
		sb_free(&csv);
		if (rc < 0) {
			dns_resolver_free(r);
			return rc;
		}
	}
	*out = r;
	return 0;
}

void dns_resolver_free(struct dns_resolver *r)
{
	if (!r)
		return;
	BUG_ON(r->delivering);
	r->closing = true;
	ares_destroy(r->ch);
	while (r->jobs.head)
		job_free(r, r->jobs.head);
	while (r->done.head)
		job_free(r, r->done.head);
	for (size_t i = 0; i < r->nbuckets; i++) {
		struct entry *e = r->buckets[i];

		while (e) {
			struct entry *next = e->hnext;

			free(e->data);
			free(e);
			e = next;
		}
	}
	free(r->buckets);
	free(r);
}

void dns_resolver_process(struct dns_resolver *r, int fd, bool readable,
			  bool writable)
{
	ares_process_fd(r->ch, readable ? fd : ARES_SOCKET_BAD,
			writable ? fd : ARES_SOCKET_BAD);
	flush_sends(r);
	deliver(r);
}

void dns_resolver_process_timeouts(struct dns_resolver *r)
{
	/* With no fd, c-ares only expires what is due. */
	ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	flush_sends(r);
	deliver(r);
}

int dns_resolver_next_timeout_ms(struct dns_resolver *r)
{
	struct timeval tv, *t;
	long ms;

	if (r->done.head)
		return 0;
	t = ares_timeout(r->ch, NULL, &tv);
	if (!t)
		return -1;
	/*
	 * c-ares truncates to whole milliseconds: 0 means "less than 1 ms
	 * left", and reporting it as 0 would make the loop spin until then.
	 */
	ms = t->tv_sec * 1000 + (t->tv_usec + 999) / 1000;
	if (ms < 1)
		ms = 1;
	return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

void dns_resolver_fds(struct dns_resolver *r, dns_sock_cb *cb, void *ctx)
{
	ares_socket_t socks[ARES_GETSOCK_MAXNUM];
	/* Unsigned: c-ares' own ARES_GETSOCK_WRITABLE shifts 1 into the sign bit. */
	unsigned bits = (unsigned)ares_getsock(r->ch, socks, ARES_GETSOCK_MAXNUM);

	for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
		bool rd = bits & (1u << i);
		bool wr = bits & (1u << (i + ARES_GETSOCK_MAXNUM));

		if (rd || wr)
			cb(ctx, socks[i], rd, wr);
	}
}

void dns_resolver_stats(const struct dns_resolver *r, struct dns_stats *out)
{
	*out = r->stats;
	out->cached = r->nfresh;
	out->jobs = r->njobs;
}
