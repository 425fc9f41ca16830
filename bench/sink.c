/*
 * bench/sink.c - `coremta-bench sink`: an SMTP receiver on one io_uring
 * loop that accepts and counts mail, and on request behaves like a
 * mailbox provider that pushes back (delays, 4xx/5xx, 421 on too many
 * connections or messages per client IP, per-domain throttles), because
 * a sink that never pushes back hides throttling bugs.
 *
 * Everything here runs on the one thread that calls bench_sink_main().
 * Memory is bounded: connection slots, tracked domains, client IPs,
 * per-connection records and the per-second series all have caps.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#include "bench/bench.h"
#include "util/hash.h"

/* Commands whose replies --latency can delay. */
enum cmd {
	CMD_GREET,
	CMD_EHLO,
	CMD_MAIL,
	CMD_RCPT,
	CMD_DATA,
	CMD_DOT,		/* end of DATA, or BDAT LAST */
	CMD_BDAT,
	CMD_RSET,
	CMD_QUIT,
	CMD_STARTTLS,
	CMD_COUNT,
};

static const char *const cmd_names[CMD_COUNT] = {
	"greet", "ehlo", "mail", "rcpt", "data", "dot", "bdat", "rset", "quit", "starttls",
};

/* A per-recipient-domain behaviour (--domain-policy). */
struct policy {
	char *domain;
	uint64_t delay_ns;	/* added to the end-of-data reply */
	double rate;		/* recipients per second accepted, 0 = no cap */
	double tempfail;	/* probability of 451 at end of data */
	double permfail;	/* probability of 554 at end of data */
	int code;		/* 451 (refuse the recipient) or 421 (and close) */
	double tokens;
	uint64_t refill_ns;
	uint64_t unknown_every;	/* every Nth RCPT: 550 5.1.1, 0 = never */
	uint64_t unknown_seen;	/* RCPTs that reached that rule */
	uint32_t greylist;	/* first K RCPTs of each address: 451 4.7.1 */
};

/*
 * One address under a greylist policy: how many of its RCPTs were
 * answered 451 so far.  Retries of one recipient must meet the same
 * entry, so the count is per address, not per connection.
 */
struct grey_entry {
	char *addr;		/* NULL = free slot */
	uint32_t refused;
};

/* Addresses tracked at most; beyond, a new address is accepted at once
   and counted as untracked, so the figures stay exact. */
#define GREY_MAX (1u << 20)

struct domain_stat {
	char *name;
	struct policy *pol;
	uint64_t msgs;
	uint64_t rcpts;
	uint64_t bytes;
	uint64_t tempfail;
	uint64_t permfail;
	uint64_t throttled;	/* recipients refused by the domain's rate */
	uint64_t unknown;	/* RCPTs answered 550 5.1.1 (policy unknown=) */
	uint64_t greylisted;	/* RCPTs answered 451 4.7.1 (policy greylist=) */
	uint64_t seen_seq;	/* last message counted, to count each once */
	struct bench_series series;
};

struct ip_stat {
	uint32_t addr;		/* network order; 0 = free */
	uint32_t cur;
	uint32_t hwm;
	uint64_t conns;
	uint64_t refused;	/* 421 at connect (--max-conn-per-ip) */
	uint64_t msgs;
	uint64_t rate_limited;	/* MAIL refused by --max-rate-per-ip */
	double tokens;
	uint64_t refill_ns;
};

struct conn_record {
	uint32_t addr;
	uint16_t port;
	double start_s;
	double end_s;
	uint64_t msgs;
	uint64_t bytes;
	uint64_t rejected;
};

enum sstate { ST_CMD, ST_DATA, ST_BDAT };

/* Enough of a message's head to find X-Bench-T under added headers. */
#define HDR_CAP 4096
#define IN_CAP (32 * 1024)
#define LINE_MAX_LEN 2048
/* Stop reading commands while this many reply bytes wait to be sent. */
#define OUT_HIGH (64 * 1024)

struct sconn {
	struct bench_conn io;
	bool used;
	bool counted;		/* in the concurrency figures (not refused) */
	enum sstate st;
	bool helo;
	bool mail;
	bool null_sender;	/* MAIL FROM:<> (a DSN) */
	uint32_t *rcpt_dom;
	size_t nrcpt;
	size_t rcpt_cap;
	uint64_t msg_bytes;
	struct bench_dot dot;
	uint64_t bdat_left;
	bool bdat_last;
	char hdr[HDR_CAP];
	size_t hdr_len;
	uint64_t block_until;
	struct ip_stat *ip;
	struct sockaddr_in peer;
	uint64_t started_ns;
	uint64_t msgs;
	uint64_t bytes;
	uint64_t rejected;
	uint32_t next_free;
};

static struct {
	struct sockaddr_in listen;
	double duration;
	double idle_exit;
	uint64_t expect;
	uint64_t expect_rcpts;
	const char *json;
	bool quiet;
	uint64_t latency_ns[CMD_COUNT];
	double tempfail;
	double permfail;
	uint64_t max_conn_per_ip;
	double max_rate_per_ip;
	int rate_code;
	uint64_t max_conns;
	uint64_t serve_max;	/* --serve-max: the rest wait ungreeted; 0 = off */
	double timeout;
	const char *tls_cert;
	const char *tls_key;
	uint64_t max_domains;
	uint64_t max_rcpts;
	uint64_t size_limit;
	uint64_t conn_log_cap;
	uint64_t seed;
	struct policy *pols;
	size_t npols;
} opt = {
	.duration = 3600,
	.rate_code = 421,
	.max_conns = 4096,
	.timeout = 60,
	.max_domains = 1000,
	.max_rcpts = 1000,
	.size_limit = 100 * 1024 * 1024,
	.conn_log_cap = 10000,
};

/* The whole sink's state; one instance, owned by the loop's thread. */
static struct {
	struct io_uring ring;
	int lfd;
	struct sconn *conns;
	uint32_t free_head;
	uint32_t active;	/* connections served now (refused ones not) */
	uint32_t hwm;
	uint64_t conns_total;
	uint64_t conns_refused;
	int *waiting;		/* --serve-max: accepted, not greeted, oldest first */
	size_t nwaiting, waiting_off, cap_waiting;
	uint64_t conns_held;	/* connections that waited ungreeted */
	size_t waiting_hwm;
	uint64_t timeouts;
	uint64_t starttls;	/* sessions that switched to TLS */
	uint64_t tls_failed;	/* handshakes that failed */
	struct domain_stat *doms;
	size_t ndoms;
	uint32_t *dom_hash;	/* slot -> domain index + 1; 0 = empty */
	size_t dom_hash_cap;
	struct ip_stat *ips;
	size_t ip_cap;
	struct conn_record *log;
	size_t nlog;
	uint64_t log_dropped;
	uint64_t msgs;
	uint64_t rcpts;
	uint64_t bytes;
	uint64_t tempfail;
	uint64_t permfail;
	uint64_t rcpt_refused;
	uint64_t rcpt_unknown;
	uint64_t rcpt_greylisted;
	uint64_t null_msgs;	/* accepted with MAIL FROM:<> */
	uint64_t null_rcpts;
	struct grey_entry *grey;
	size_t grey_cap;	/* slots, a power of two; 0 = no table yet */
	size_t grey_n;
	uint64_t grey_untracked;
	uint64_t rate_limited;
	uint64_t seq;
	uint64_t start_ns;
	double start_wall;
	uint64_t first_msg_ns;
	uint64_t last_msg_ns;
	struct bench_series series;
	struct bench_samples delivery;	/* X-Bench-T to arrival */
	struct bench_timers timers;
	uint64_t rng;
	bool stop;
	bool accept_armed;
	const char *stop_reason;
} S;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

static void usage(FILE *f)
{
	fputs("usage: coremta-bench sink [options]\n"
	      "  --listen ADDR:PORT       where to listen (127.0.0.0/8 only; default 127.0.0.1:2526)\n"
	      "  --duration S             exit after S seconds (default 3600)\n"
	      "  --expect N               exit once N messages were accepted\n"
	      "  --expect-rcpts N         exit once N recipients were accepted\n"
	      "  --idle-exit S            exit S seconds after the last message\n"
	      "  --json FILE              write the report as JSON\n"
	      "  --latency CMD:MS,...     delay replies (greet ehlo mail rcpt data dot bdat rset quit starttls)\n"
	      "  --tempfail-rate P        451 at end of data with probability P (0..1)\n"
	      "  --permfail-rate P        554 at end of data with probability P (0..1)\n"
	      "  --max-conn-per-ip N      421 to connections beyond N from one IP\n"
	      "  --max-rate-per-ip R      refuse MAIL beyond R messages/s from one IP\n"
	      "  --rate-code 421|451      reply for --max-rate-per-ip (421 closes; default 421)\n"
	      "  --domain-policy D:K=V,.. per recipient domain: delay=MS rate=R tempfail=P permfail=P code=451|421\n"
	      "                           unknown=N (every Nth RCPT: 550 5.1.1) greylist=K (the first K\n"
	      "                           RCPTs of each address: 451 4.7.1); repeat for several domains\n"
	      "  --max-conns N            421 beyond N concurrent connections (default 4096)\n"
	      "  --serve-max N            serve N connections at once; the rest wait ungreeted\n"
	      "                           (a capped receiver, as smtp-sink -m N leaves them)\n"
	      "  --timeout S              idle timeout per connection (default 60)\n"
	      "  --tls-cert F --tls-key F offer STARTTLS with this certificate\n"
	      "  --max-domains N          domains counted one by one (default 1000)\n"
	      "  --seed N                 random seed for the failure draws\n"
	      "  --quiet                  no summary on stdout\n", f);
}

/* ---- options ---- */

static int parse_latency(const char *arg)
{
	char *copy = xstrdup(arg), *save = NULL, *tok;
	int rc = 0;

	for (tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(tok, ':');
		double ms;
		int i;

		if (!colon || bench_parse_double(colon + 1, &ms) < 0) {
			rc = -EINVAL;
			break;
		}
		*colon = '\0';
		if (strcasecmp(tok, "helo") == 0)
			tok = (char *)"ehlo";
		for (i = 0; i < CMD_COUNT; i++)
			if (strcasecmp(tok, cmd_names[i]) == 0)
				break;
		if (i == CMD_COUNT)
			rc = -EINVAL;
		else
			opt.latency_ns[i] = (uint64_t)(ms * 1e6);
	}
	free(copy);
	return rc;
}

/* parse_prob - "0.05" or "5%". */
static int parse_prob(const char *s, double *out)
{
	char buf[64];
	size_t n = strlen(s);
	int rc;

	if (n && s[n - 1] == '%' && n < sizeof(buf)) {
		memcpy(buf, s, n - 1);
		buf[n - 1] = '\0';
		rc = bench_parse_double(buf, out);
		*out /= 100;
	} else {
		rc = bench_parse_double(s, out);
	}
	return rc < 0 || *out > 1 ? -EINVAL : 0;
}

/* parse_policy - "slow.test:delay=1000,rate=1". */
static int parse_policy(const char *arg)
{
	char *copy = xstrdup(arg), *colon = strchr(copy, ':'), *save = NULL, *tok;
	struct policy p = { .code = 451 };
	int rc = 0;

	if (!colon || colon == copy) {
		free(copy);
		return -EINVAL;
	}
	*colon = '\0';
	for (tok = strtok_r(colon + 1, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		double v;

		if (!eq) {
			rc = -EINVAL;
			break;
		}
		*eq++ = '\0';
		if (strcmp(tok, "tempfail") == 0 || strcmp(tok, "permfail") == 0) {
			if (parse_prob(eq, &v) < 0) {
				rc = -EINVAL;
				break;
			}
			*(tok[0] == 't' ? &p.tempfail : &p.permfail) = v;
			continue;
		}
		if (bench_parse_double(eq, &v) < 0) {
			rc = -EINVAL;
			break;
		}
		if (strcmp(tok, "delay") == 0)
			p.delay_ns = (uint64_t)(v * 1e6);
		else if (strcmp(tok, "rate") == 0)
			p.rate = v;
		else if (strcmp(tok, "unknown") == 0 && v >= 1 && v <= 1e9 && v == (uint64_t)v)
			p.unknown_every = (uint64_t)v;
		else if (strcmp(tok, "greylist") == 0 && v >= 1 && v <= 1000 && v == (uint32_t)v)
			p.greylist = (uint32_t)v;
		else if (strcmp(tok, "code") == 0 && (v == 421 || v == 451))
			p.code = (int)v;
		else
			rc = -EINVAL;
	}
	if (rc == 0) {
		str_lower(copy);
		p.domain = xstrdup(copy);
		p.tokens = p.rate > 1 ? p.rate : 1;
		opt.pols = xrealloc(opt.pols, (opt.npols + 1) * sizeof(*opt.pols));
		opt.pols[opt.npols++] = p;
	}
	free(copy);
	return rc;
}

enum {
	O_LISTEN = 256, O_DURATION, O_EXPECT, O_EXPECT_RCPTS, O_IDLE, O_JSON,
	O_LATENCY, O_TEMPFAIL, O_PERMFAIL, O_MAXCONNIP, O_MAXRATEIP, O_RATECODE,
	O_POLICY, O_MAXCONNS, O_TIMEOUT, O_CERT, O_KEY, O_MAXDOM, O_SEED, O_QUIET,
	O_HELP, O_SERVEMAX,
};

static const struct option longopts[] = {
	{ "listen", required_argument, NULL, O_LISTEN },
	{ "duration", required_argument, NULL, O_DURATION },
	{ "expect", required_argument, NULL, O_EXPECT },
	{ "expect-rcpts", required_argument, NULL, O_EXPECT_RCPTS },
	{ "idle-exit", required_argument, NULL, O_IDLE },
	{ "json", required_argument, NULL, O_JSON },
	{ "latency", required_argument, NULL, O_LATENCY },
	{ "tempfail-rate", required_argument, NULL, O_TEMPFAIL },
	{ "permfail-rate", required_argument, NULL, O_PERMFAIL },
	{ "max-conn-per-ip", required_argument, NULL, O_MAXCONNIP },
	{ "max-rate-per-ip", required_argument, NULL, O_MAXRATEIP },
	{ "rate-code", required_argument, NULL, O_RATECODE },
	{ "domain-policy", required_argument, NULL, O_POLICY },
	{ "max-conns", required_argument, NULL, O_MAXCONNS },
	{ "serve-max", required_argument, NULL, O_SERVEMAX },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "tls-cert", required_argument, NULL, O_CERT },
	{ "tls-key", required_argument, NULL, O_KEY },
	{ "max-domains", required_argument, NULL, O_MAXDOM },
	{ "seed", required_argument, NULL, O_SEED },
	{ "quiet", no_argument, NULL, O_QUIET },
	{ "help", no_argument, NULL, O_HELP },
	{ NULL, 0, NULL, 0 },
};

/* parse_options - fill opt; returns 0, or 1 after --help, or -EINVAL. */
static int parse_options(int argc, char **argv)
{
	int ch, rc;
	uint64_t u;

	bench_parse_addr("127.0.0.1:2526", &opt.listen, true);
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		rc = 0;
		switch (ch) {
		case O_LISTEN:
			rc = bench_parse_addr(optarg, &opt.listen, true);
			break;
		case O_DURATION:
			rc = bench_parse_seconds(optarg, &opt.duration);
			break;
		case O_EXPECT:
			rc = bench_parse_u64(optarg, &opt.expect);
			break;
		case O_EXPECT_RCPTS:
			rc = bench_parse_u64(optarg, &opt.expect_rcpts);
			break;
		case O_IDLE:
			rc = bench_parse_seconds(optarg, &opt.idle_exit);
			break;
		case O_JSON:
			opt.json = optarg;
			break;
		case O_LATENCY:
			rc = parse_latency(optarg);
			break;
		case O_TEMPFAIL:
			rc = parse_prob(optarg, &opt.tempfail);
			break;
		case O_PERMFAIL:
			rc = parse_prob(optarg, &opt.permfail);
			break;
		case O_MAXCONNIP:
			rc = bench_parse_u64(optarg, &opt.max_conn_per_ip);
			break;
		case O_MAXRATEIP:
			rc = bench_parse_double(optarg, &opt.max_rate_per_ip);
			break;
		case O_RATECODE:
			rc = bench_parse_u64(optarg, &u);
			if (rc == 0 && u != 421 && u != 451)
				rc = -EINVAL;
			opt.rate_code = (int)u;
			break;
		case O_POLICY:
			rc = parse_policy(optarg);
			break;
		case O_MAXCONNS:
			rc = bench_parse_u64(optarg, &opt.max_conns);
			if (rc == 0 && (opt.max_conns == 0 || opt.max_conns > 1000000))
				rc = -ERANGE;
			break;
		case O_SERVEMAX:
			rc = bench_parse_u64(optarg, &opt.serve_max);
			break;
		case O_TIMEOUT:
			rc = bench_parse_seconds(optarg, &opt.timeout);
			break;
		case O_CERT:
			opt.tls_cert = optarg;
			break;
		case O_KEY:
			opt.tls_key = optarg;
			break;
		case O_MAXDOM:
			rc = bench_parse_u64(optarg, &opt.max_domains);
			if (rc == 0 && (opt.max_domains == 0 || opt.max_domains > 1000000))
				rc = -ERANGE;
			break;
		case O_SEED:
			rc = bench_parse_u64(optarg, &opt.seed);
			break;
		case O_QUIET:
			opt.quiet = true;
			break;
		case O_HELP:
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -EINVAL;
		}
		if (rc == -EPERM) {
			fprintf(stderr, "sink: %s: only 127.0.0.0/8 addresses are allowed\n", optarg);
			return -EINVAL;
		}
		if (rc < 0) {
			fprintf(stderr, "sink: bad value for --%s: %s\n",
				longopts[ch - O_LISTEN].name, optarg);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "sink: unexpected argument %s\n", argv[optind]);
		return -EINVAL;
	}
	if (!opt.tls_cert != !opt.tls_key) {
		fprintf(stderr, "sink: --tls-cert and --tls-key go together\n");
		return -EINVAL;
	}
	if (opt.duration <= 0)
		opt.duration = 3600;
	return 0;
}

/* ---- tables: domains and client IPs ---- */

/* policy_for - the --domain-policy for a domain, or NULL (few: a scan). */
static struct policy *policy_for(const char *name, size_t n)
{
	for (size_t i = 0; i < opt.npols; i++)
		if (strlen(opt.pols[i].domain) == n && memcmp(opt.pols[i].domain, name, n) == 0)
			return &opt.pols[i];
	return NULL;
}

/*
 * domain_find - the index of a (lowercase) domain, created on first use;
 * past --max-domains, new names share entry 0, "(other)".
 */
static uint32_t domain_find(const char *name, size_t n)
{
	size_t mask = S.dom_hash_cap - 1, i = hash_bytes(HASH_SEED, name, n) & mask;
	struct domain_stat *d;

	for (;; i = (i + 1) & mask) {
		uint32_t v = S.dom_hash[i];

		if (!v)
			break;
		d = &S.doms[v - 1];
		if (strlen(d->name) == n && memcmp(d->name, name, n) == 0)
			return v - 1;
	}
	if (S.ndoms > opt.max_domains)
		return 0;
	d = &S.doms[S.ndoms];
	memset(d, 0, sizeof(*d));
	d->name = xstrndup(name, n);
	d->pol = policy_for(name, n);
	S.dom_hash[i] = (uint32_t)++S.ndoms;
	return (uint32_t)(S.ndoms - 1);
}

/* ip_find - the counters of a client IP, created on first use. */
static struct ip_stat *ip_find(uint32_t addr)
{
	size_t mask = S.ip_cap - 1, i = (addr * 2654435761u) & mask;

	for (size_t probes = 0; probes < S.ip_cap; probes++, i = (i + 1) & mask) {
		if (S.ips[i].addr == addr)
			return &S.ips[i];
		if (S.ips[i].addr == 0) {
			S.ips[i].addr = addr;
			S.ips[i].tokens = opt.max_rate_per_ip > 1 ? opt.max_rate_per_ip : 1;
			S.ips[i].refill_ns = bench_now_ns();
			return &S.ips[i];
		}
	}
	return &S.ips[0];	/* table full: share the first entry */
}

/* bucket_take - a token from a bucket refilled at rate/s, burst max(rate,1). */
static bool bucket_take(double *tokens, uint64_t *refill_ns, double rate, uint64_t now)
{
	double burst = rate > 1 ? rate : 1;

	*tokens += (double)(now - *refill_ns) / 1e9 * rate;
	if (*tokens > burst)
		*tokens = burst;
	*refill_ns = now;
	if (*tokens < 1)
		return false;
	*tokens -= 1;
	return true;
}

/* grey_grow - double the greylist table (or make the first one). */
static void grey_grow(void)
{
	size_t cap = S.grey_cap ? S.grey_cap * 2 : 1024;
	struct grey_entry *t = xcalloc(cap, sizeof(*t));

	for (size_t i = 0; i < S.grey_cap; i++) {
		struct grey_entry *e = &S.grey[i];
		size_t j;

		if (!e->addr)
			continue;
		j = hash_bytes(HASH_SEED, e->addr, strlen(e->addr)) & (cap - 1);
		while (t[j].addr)
			j = (j + 1) & (cap - 1);
		t[j] = *e;
	}
	free(S.grey);
	S.grey = t;
	S.grey_cap = cap;
}

/*
 * grey_refuse - true while addr has had fewer than k RCPTs refused (and
 * counts this one); false once it has served its k refusals, or when the
 * table is full (counted in grey_untracked).
 */
static bool grey_refuse(const char *addr, uint32_t k)
{
	size_t n = strlen(addr), i;

	if (S.grey_n * 2 >= S.grey_cap) {
		if (S.grey_n >= GREY_MAX) {
			for (i = hash_bytes(HASH_SEED, addr, n) & (S.grey_cap - 1); S.grey[i].addr;
			     i = (i + 1) & (S.grey_cap - 1))
				if (strcmp(S.grey[i].addr, addr) == 0)
					goto found;
			S.grey_untracked++;
			return false;
		}
		grey_grow();
	}
	for (i = hash_bytes(HASH_SEED, addr, n) & (S.grey_cap - 1); S.grey[i].addr;
	     i = (i + 1) & (S.grey_cap - 1))
		if (strcmp(S.grey[i].addr, addr) == 0)
			goto found;
	S.grey[i].addr = xstrndup(addr, n);
	S.grey_n++;
found:
	if (S.grey[i].refused >= k)
		return false;
	S.grey[i].refused++;
	return true;
}

/* ---- connections ---- */

static void reply(struct sconn *c, const char *text)
{
	bench_conn_writes(&c->io, text);
}

/* delay - hold this and later replies for ns (a --latency or policy). */
static void delay(struct sconn *c, uint64_t ns)
{
	if (!ns)
		return;
	c->block_until = bench_now_ns() + ns;
	bench_timer_add(&S.timers, c->block_until, c->io.idx, c->io.gen);
}

/* txn_reset - forget the transaction (RSET, EHLO, end of message). */
static void txn_reset(struct sconn *c)
{
	c->mail = false;
	c->nrcpt = 0;
	c->st = ST_CMD;
}

/* capture - count body bytes; keep the head to find X-Bench-T. */
static void capture(struct sconn *c, const char *p, size_t n)
{
	if (c->hdr_len < HDR_CAP) {
		size_t k = HDR_CAP - c->hdr_len < n ? HDR_CAP - c->hdr_len : n;

		memcpy(c->hdr + c->hdr_len, p, k);
		c->hdr_len += k;
	}
	c->msg_bytes += n;
}

/* delivery_latency - X-Bench-T (the sender's monotonic ns) to now. */
static void delivery_latency(struct sconn *c, uint64_t now)
{
	static const char tag[] = "\nX-Bench-T: ";
	const char *p = memmem(c->hdr, c->hdr_len, tag, sizeof(tag) - 1);
	uint64_t t = 0;

	if (!p)
		return;
	p += sizeof(tag) - 1;
	while (p < c->hdr + c->hdr_len && *p >= '0' && *p <= '9')
		t = t * 10 + (uint64_t)(*p++ - '0');
	if (t && t <= now && now - t < 86400ULL * 1000000000ULL)
		bench_samples_add(&S.delivery, (now - t) / 1000);
}

/* finish_message - the end of DATA or BDAT LAST: decide and count. */
static void finish_message(struct sconn *c)
{
	uint64_t now = bench_now_ns(), extra = 0;
	double tempfail = opt.tempfail, permfail = opt.permfail;
	char buf[128];

	S.seq++;
	for (size_t i = 0; i < c->nrcpt; i++) {
		struct policy *p = S.doms[c->rcpt_dom[i]].pol;

		if (!p)
			continue;
		if (p->delay_ns > extra)
			extra = p->delay_ns;
		if (p->tempfail > tempfail)
			tempfail = p->tempfail;
		if (p->permfail > permfail)
			permfail = p->permfail;
	}
	if (c->nrcpt == 0) {
		reply(c, "554 5.5.1 Error: no valid recipients\r\n");
		c->rejected++;
	} else if (bench_chance(&S.rng, permfail)) {
		reply(c, "554 5.3.0 sink: permanent failure (injected)\r\n");
		S.permfail++;
		c->rejected++;
		for (size_t i = 0; i < c->nrcpt; i++)
			S.doms[c->rcpt_dom[i]].permfail++;
	} else if (bench_chance(&S.rng, tempfail)) {
		reply(c, "451 4.3.0 sink: temporary failure (injected)\r\n");
		S.tempfail++;
		c->rejected++;
		for (size_t i = 0; i < c->nrcpt; i++)
			S.doms[c->rcpt_dom[i]].tempfail++;
	} else {
		snprintf(buf, sizeof(buf), "250 2.0.0 Ok: queued as S%llu\r\n",
			 (unsigned long long)S.seq);
		reply(c, buf);
		S.msgs++;
		S.rcpts += c->nrcpt;
		S.bytes += c->msg_bytes;
		if (c->null_sender) {
			S.null_msgs++;
			S.null_rcpts += c->nrcpt;
		}
		c->msgs++;
		c->bytes += c->msg_bytes;
		c->ip->msgs++;
		if (!S.first_msg_ns)
			S.first_msg_ns = now;
		S.last_msg_ns = now;
		bench_series_add(&S.series, now - S.start_ns);
		for (size_t i = 0; i < c->nrcpt; i++) {
			struct domain_stat *d = &S.doms[c->rcpt_dom[i]];

			d->rcpts++;
			if (d->seen_seq == S.seq)
				continue;
			d->seen_seq = S.seq;
			d->msgs++;
			d->bytes += c->msg_bytes;
			bench_series_add(&d->series, now - S.start_ns);
		}
		delivery_latency(c, now);
		if ((opt.expect && S.msgs >= opt.expect) ||
		    (opt.expect_rcpts && S.rcpts >= opt.expect_rcpts)) {
			S.stop = true;
			S.stop_reason = "expected count reached";
		}
	}
	txn_reset(c);
	delay(c, opt.latency_ns[CMD_DOT] > extra ? opt.latency_ns[CMD_DOT] : extra);
}

/* begin_body - a message body starts (DATA or first BDAT). */
static void begin_body(struct sconn *c)
{
	c->msg_bytes = 0;
	c->hdr_len = 0;
}

/*
 * rcpt_domain - the lowercase domain of "<local@domain> [params]", in
 * place, and in *addr_out the whole address; parameters
 * (ORCPT=rfc822;x@y) must not be taken for it.
 */
static char *rcpt_domain(char *arg, size_t *len, char **addr_out)
{
	char *lt = strchr(arg, '<'), *addr = lt ? lt + 1 : arg, *at;

	addr[strcspn(addr, lt ? ">" : " ")] = '\0';
	*addr_out = addr;
	at = strrchr(addr, '@');
	if (!at || !at[1])
		return NULL;
	at++;
	str_lower(at);
	*len = strlen(at);
	return at;
}

/* cmd_ehlo - HELO/EHLO: the extensions the sink offers. */
static void cmd_ehlo(struct sconn *c, bool ehlo)
{
	struct strbuf sb = { 0 };

	txn_reset(c);
	c->helo = true;
	if (!ehlo) {
		reply(c, "250 sink.bench\r\n");
		return;
	}
	sb_printf(&sb, "250-sink.bench\r\n250-PIPELINING\r\n250-SIZE %llu\r\n"
		  "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n",
		  (unsigned long long)opt.size_limit);
	if (opt.tls_cert && !c->io.tls)
		sb_adds(&sb, "250-STARTTLS\r\n");
	sb_adds(&sb, "250 CHUNKING\r\n");
	bench_conn_write(&c->io, sb.buf, sb.len);
	sb_free(&sb);
}

/* cmd_mail - MAIL FROM, where --max-rate-per-ip pushes back. */
static void cmd_mail(struct sconn *c, const char *arg)
{
	if (!c->helo) {
		reply(c, "503 5.5.1 Error: send HELO/EHLO first\r\n");
		return;
	}
	if (c->mail) {
		reply(c, "503 5.5.1 Error: nested MAIL command\r\n");
		return;
	}
	if (opt.max_rate_per_ip > 0 &&
	    !bucket_take(&c->ip->tokens, &c->ip->refill_ns, opt.max_rate_per_ip, bench_now_ns())) {
		c->ip->rate_limited++;
		S.rate_limited++;
		c->rejected++;
		if (opt.rate_code == 421) {
			reply(c, "421 4.7.0 sink: too many messages from your IP, closing\r\n");
			c->io.closing = true;
		} else {
			reply(c, "451 4.7.1 sink: too many messages from your IP, slow down\r\n");
		}
		return;
	}
	while (*arg == ' ')
		arg++;
	c->mail = true;
	c->null_sender = strncmp(arg, "<>", 2) == 0;
	c->nrcpt = 0;
	reply(c, "250 2.1.0 Ok\r\n");
}

/* cmd_rcpt - RCPT TO, where a domain's rate pushes back. */
static void cmd_rcpt(struct sconn *c, char *arg)
{
	size_t n = 0;
	char *dom, *addr, buf[LINE_MAX_LEN + 96];
	uint32_t di;
	struct policy *p;

	if (!c->mail) {
		reply(c, "503 5.5.1 Error: need MAIL command\r\n");
		return;
	}
	if (c->nrcpt >= opt.max_rcpts) {
		reply(c, "452 4.5.3 Error: too many recipients\r\n");
		return;
	}
	dom = rcpt_domain(arg, &n, &addr);
	if (!dom) {
		reply(c, "501 5.1.3 Bad recipient address syntax\r\n");
		return;
	}
	di = domain_find(dom, n);
	p = S.doms[di].pol ? S.doms[di].pol : (di == 0 ? policy_for(dom, n) : NULL);
	if (p && p->rate > 0 && !bucket_take(&p->tokens, &p->refill_ns, p->rate, bench_now_ns())) {
		S.doms[di].throttled++;
		S.rcpt_refused++;
		if (p->code == 421) {
			reply(c, "421 4.7.0 sink: domain rate limit, closing\r\n");
			c->io.closing = true;
		} else {
			reply(c, "451 4.7.1 sink: domain rate limit exceeded, try later\r\n");
		}
		return;
	}
	if (p && p->unknown_every && ++p->unknown_seen % p->unknown_every == 0) {
		S.doms[di].unknown++;
		S.rcpt_unknown++;
		snprintf(buf, sizeof(buf),
			 "550 5.1.1 <%s>: Recipient address rejected: User unknown\r\n", addr);
		reply(c, buf);
		return;
	}
	if (p && p->greylist && grey_refuse(addr, p->greylist)) {
		S.doms[di].greylisted++;
		S.rcpt_greylisted++;
		snprintf(buf, sizeof(buf),
			 "451 4.7.1 <%s>: Recipient address rejected: Greylisted, come back later\r\n",
			 addr);
		reply(c, buf);
		return;
	}
	if (c->nrcpt == c->rcpt_cap) {
		c->rcpt_cap = c->rcpt_cap ? c->rcpt_cap * 2 : 8;
		c->rcpt_dom = xrealloc(c->rcpt_dom, c->rcpt_cap * sizeof(*c->rcpt_dom));
	}
	c->rcpt_dom[c->nrcpt++] = di;
	reply(c, "250 2.1.5 Ok\r\n");
}

static void bdat_chunk_done(struct sconn *c);

/* cmd_bdat - "BDAT size [LAST]": the chunk follows at once. */
static void cmd_bdat(struct sconn *c, char *arg)
{
	char *end;
	unsigned long long n;

	errno = 0;
	n = strtoull(arg, &end, 10);
	if (errno || end == arg || n > opt.size_limit) {
		reply(c, "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
		c->io.closing = true;	/* cannot know where the chunk ends */
		return;
	}
	while (*end == ' ')
		end++;
	c->bdat_last = strncasecmp(end, "LAST", 4) == 0;
	if (c->st != ST_BDAT)
		begin_body(c);
	c->bdat_left = n;
	c->st = ST_BDAT;
	if (n == 0)
		bdat_chunk_done(c);	/* "BDAT 0 LAST" carries no bytes */
}

/* bdat_chunk_done - a BDAT chunk was read completely. */
static void bdat_chunk_done(struct sconn *c)
{
	char buf[96];

	if (c->bdat_last) {
		finish_message(c);
		return;
	}
	if (!c->mail || !c->nrcpt) {
		reply(c, "554 5.5.1 Error: no valid recipients\r\n");
		txn_reset(c);
		return;
	}
	snprintf(buf, sizeof(buf), "250 2.0.0 %llu octets received\r\n",
		 (unsigned long long)c->msg_bytes);
	reply(c, buf);
	/* Stay in ST_BDAT between chunks so the next BDAT continues the body. */
	c->st = ST_BDAT;
	c->bdat_left = 0;
	delay(c, opt.latency_ns[CMD_BDAT]);
}

/* handle_line - one command line (CRLF stripped) and its reply. */
static void handle_line(struct io_uring *ring, struct sconn *c, char *line)
{
	enum cmd cmd = CMD_COUNT;
	char *arg;

	arg = line + strcspn(line, " ");
	while (*arg == ' ')
		arg++;
	if (!strncasecmp(line, "EHLO", 4) || !strncasecmp(line, "HELO", 4)) {
		cmd = CMD_EHLO;
		cmd_ehlo(c, line[0] == 'E' || line[0] == 'e');
	} else if (!strncasecmp(line, "MAIL FROM:", 10)) {
		cmd = CMD_MAIL;
		cmd_mail(c, line + 10);
	} else if (!strncasecmp(line, "RCPT TO:", 8)) {
		cmd = CMD_RCPT;
		cmd_rcpt(c, line + 8);
	} else if (!strncasecmp(line, "DATA", 4)) {
		cmd = CMD_DATA;
		if (!c->mail)
			reply(c, "503 5.5.1 Error: need MAIL command\r\n");
		else if (!c->nrcpt)
			reply(c, "554 5.5.1 Error: no valid recipients\r\n");
		else {
			reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
			begin_body(c);
			bench_dot_reset(&c->dot);
			c->st = ST_DATA;
		}
	} else if (!strncasecmp(line, "BDAT", 4)) {
		cmd = CMD_BDAT;
		cmd_bdat(c, arg);
		return;	/* the reply comes after the chunk */
	} else if (!strncasecmp(line, "RSET", 4)) {
		cmd = CMD_RSET;
		txn_reset(c);
		reply(c, "250 2.0.0 Ok\r\n");
	} else if (!strncasecmp(line, "NOOP", 4)) {
		reply(c, "250 2.0.0 Ok\r\n");
	} else if (!strncasecmp(line, "QUIT", 4)) {
		cmd = CMD_QUIT;
		reply(c, "221 2.0.0 Bye\r\n");
		c->io.closing = true;
	} else if (!strncasecmp(line, "STARTTLS", 8)) {
		cmd = CMD_STARTTLS;
		if (!opt.tls_cert || c->io.tls) {
			reply(c, "502 5.5.1 Error: command not implemented\r\n");
		} else {
			reply(c, "220 2.0.0 Ready to start TLS\r\n");
			S.starttls++;
			bench_conn_flush(ring, &c->io);
			if (bench_conn_start_tls(ring, &c->io, true) < 0)
				c->io.closing = true;
			c->helo = false;	/* RFC 3207: forget the earlier session */
			txn_reset(c);
		}
	} else if (!strncasecmp(line, "VRFY", 4)) {
		reply(c, "252 2.0.0 Cannot VRFY user\r\n");
	} else {
		reply(c, "502 5.5.2 Error: command not recognized\r\n");
	}
	if (cmd != CMD_COUNT)
		delay(c, opt.latency_ns[cmd]);
}

/* process_input - handle every complete command and body byte buffered. */
static void process_input(struct io_uring *ring, struct sconn *c)
{
	char line[LINE_MAX_LEN + 1];

	while (!c->io.closing && !c->io.shut) {
		const char *p = c->io.in + c->io.in_off;
		size_t avail = c->io.in_len - c->io.in_off, n;
		bool done;

		if (c->block_until && bench_now_ns() < c->block_until)
			break;
		c->block_until = 0;
		if (c->st == ST_DATA) {
			if (!avail)
				break;
			n = bench_dot_scan(&c->dot, p, avail, &done);
			capture(c, p, n);
			bench_conn_consume(&c->io, n);
			if (!done)
				break;
			/* The terminator is not part of the message. */
			c->msg_bytes = c->msg_bytes >= 3 ? c->msg_bytes - 3 : 0;
			finish_message(c);
			continue;
		}
		if (c->st == ST_BDAT && c->bdat_left) {
			if (!avail)
				break;
			n = avail < c->bdat_left ? avail : (size_t)c->bdat_left;
			capture(c, p, n);
			bench_conn_consume(&c->io, n);
			c->bdat_left -= n;
			if (c->bdat_left)
				break;
			bdat_chunk_done(c);
			continue;
		}
		if (c->io.pend.len > OUT_HIGH)
			break;	/* the client does not read its replies */
		n = bench_line_len(p, avail);
		if (!n) {
			if (avail >= LINE_MAX_LEN) {
				reply(c, "500 5.5.0 Error: line too long\r\n");
				c->io.closing = true;
			}
			break;
		}
		if (n > LINE_MAX_LEN) {
			reply(c, "500 5.5.0 Error: line too long\r\n");
			c->io.closing = true;
			break;
		}
		memcpy(line, p, n);
		bench_conn_consume(&c->io, n);
		while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			n--;
		line[n] = '\0';
		if (c->st == ST_BDAT && strncasecmp(line, "BDAT", 4) != 0 &&
		    strncasecmp(line, "RSET", 4) != 0 && strncasecmp(line, "QUIT", 4) != 0) {
			reply(c, "503 5.5.1 Error: BDAT expected\r\n");
			continue;
		}
		handle_line(ring, c, line);
	}
}

/* conn_record - keep a closed connection's counts for the report. */
static void conn_record(struct sconn *c, uint64_t now)
{
	if (S.nlog >= opt.conn_log_cap) {
		S.log_dropped++;
		return;
	}
	S.log[S.nlog++] = (struct conn_record){
		.addr = c->peer.sin_addr.s_addr,
		.port = ntohs(c->peer.sin_port),
		.start_s = (double)(c->started_ns - S.start_ns) / 1e9,
		.end_s = (double)(now - S.start_ns) / 1e9,
		.msgs = c->msgs,
		.bytes = c->bytes,
		.rejected = c->rejected,
	};
}

/* settle - start closing when due, free the slot once nothing is busy. */
static void settle(struct sconn *c)
{
	if (!c->io.shut && (c->io.eof || (c->io.closing && !c->io.send_busy && !c->io.pend.len)))
		bench_conn_abort(&c->io);
	if (!bench_conn_idle(&c->io))
		return;
	conn_record(c, bench_now_ns());
	if (c->counted) {
		c->ip->cur--;
		S.active--;
	}
	bench_conn_release(&c->io);
	free(c->rcpt_dom);
	c->rcpt_dom = NULL;
	c->rcpt_cap = c->nrcpt = 0;
	c->used = false;
	c->next_free = S.free_head;
	S.free_head = c->io.idx;
}

/* service - run the connection as far as its input and delays allow. */
static void service(struct io_uring *ring, struct sconn *c)
{
	for (;;) {
		process_input(ring, c);
		int rc = bench_conn_refill(&c->io);

		if (rc <= 0)
			break;
	}
	if (!c->block_until || bench_now_ns() >= c->block_until)
		bench_conn_flush(ring, &c->io);
	if (!c->io.closing)
		bench_conn_arm_recv(ring, &c->io);
	settle(c);
}

/* on_accept - a new client: a slot, limits, the greeting (or 421). */
static void on_accept(struct io_uring *ring, int fd)
{
	struct sockaddr_in peer;
	socklen_t len = sizeof(peer);
	struct sconn *c;
	struct ip_stat *ip;
	uint32_t idx;

	if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0 || peer.sin_family != AF_INET) {
		close(fd);
		return;
	}
	if (opt.serve_max && S.active >= opt.serve_max) {
		/* connected, never greeted until a served one closes */
		if (S.nwaiting == S.cap_waiting) {
			memmove(S.waiting, S.waiting + S.waiting_off,
				(S.nwaiting - S.waiting_off) * sizeof(*S.waiting));
			S.nwaiting -= S.waiting_off;
			S.waiting_off = 0;
			if (S.nwaiting == S.cap_waiting) {
				S.cap_waiting = S.cap_waiting ? S.cap_waiting * 2 : 1024;
				S.waiting = xrealloc(S.waiting, S.cap_waiting * sizeof(*S.waiting));
			}
		}
		S.waiting[S.nwaiting++] = fd;
		S.conns_held++;
		if (S.nwaiting - S.waiting_off > S.waiting_hwm)
			S.waiting_hwm = S.nwaiting - S.waiting_off;
		return;
	}
	S.conns_total++;
	ip = ip_find(peer.sin_addr.s_addr);
	ip->conns++;
	if (S.free_head == UINT32_MAX) {
		/* No slot at all: a plain refusal without a loop slot. */
		static const char msg[] = "421 4.7.0 sink: too many connections\r\n";

		S.conns_refused++;
		if (write(fd, msg, sizeof(msg) - 1) < 0)
			(void)0;	/* the client sees the close either way */
		close(fd);
		return;
	}
	idx = S.free_head;
	c = &S.conns[idx];
	S.free_head = c->next_free;
	bench_conn_init(&c->io, fd, idx, IN_CAP);
	c->used = true;
	c->st = ST_CMD;
	c->helo = c->mail = false;
	c->nrcpt = 0;
	c->block_until = 0;
	c->ip = ip;
	c->peer = peer;
	c->started_ns = bench_now_ns();
	c->msgs = c->bytes = c->rejected = 0;
	/* Refused connections hold a slot briefly but count as no concurrency. */
	c->counted = !(opt.max_conn_per_ip && ip->cur >= opt.max_conn_per_ip);
	if (!c->counted) {
		ip->refused++;
		S.conns_refused++;
		reply(c, "421 4.7.0 sink: too many connections from your IP\r\n");
		c->io.closing = true;
	} else {
		S.active++;
		ip->cur++;
		if (S.active > S.hwm)
			S.hwm = S.active;
		if (ip->cur > ip->hwm)
			ip->hwm = ip->cur;
		reply(c, "220 sink.bench ESMTP coremta-bench\r\n");
		delay(c, opt.latency_ns[CMD_GREET]);
	}
	service(ring, c);
}

/* arm_accept - (re)submit the multishot accept. */
static void arm_accept(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = bench_sqe(ring);

	io_uring_prep_multishot_accept(sqe, S.lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, bench_ud(BENCH_OP_ACCEPT, 0, 0));
	S.accept_armed = true;
}

/* conn_of - the connection a completion belongs to, NULL if stale. */
static struct sconn *conn_of(uint64_t ud)
{
	uint32_t idx = bench_ud_idx(ud);
	struct sconn *c;

	BUG_ON(idx >= opt.max_conns);
	c = &S.conns[idx];
	if (!c->used || (c->io.gen & 0xffffff) != bench_ud_gen(ud))
		return NULL;
	return c;
}

/* on_cqe - one completion: accept, recv or send. */
static void on_cqe(struct io_uring *ring, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	struct sconn *c;

	switch (bench_ud_op(ud)) {
	case BENCH_OP_ACCEPT:
		if (cqe->res >= 0)
			on_accept(ring, cqe->res);
		if (!(cqe->flags & IORING_CQE_F_MORE)) {
			S.accept_armed = false;
			if (!S.stop)
				arm_accept(ring);
		}
		return;
	case BENCH_OP_RECV:
		c = conn_of(ud);
		BUG_ON(!c);	/* a slot is never released with a recv busy */
		if (bench_conn_on_recv(ring, &c->io, cqe->res) < 0) {
			if (c->io.tls && !c->io.tls_ready && cqe->res > 0)
				S.tls_failed++;	/* the handshake itself failed */
			settle(c);
			return;
		}
		service(ring, c);
		return;
	case BENCH_OP_SEND:
		c = conn_of(ud);
		BUG_ON(!c);
		bench_conn_on_send(ring, &c->io, cqe->res);
		service(ring, c);
		return;
	default:
		BUG("completion of unknown op %d", (int)bench_ud_op(ud));
	}
}

/* on_timer - a delay ended (or a stale timer of a recycled slot). */
static void on_timer(struct io_uring *ring, const struct bench_timer *t)
{
	struct sconn *c = &S.conns[t->idx];

	if (!c->used || c->io.gen != t->gen || !c->block_until)
		return;
	if (bench_now_ns() < c->block_until)
		return;
	c->block_until = 0;
	service(ring, c);
}

/* sweep - time out idle connections once a second. */
static void sweep(struct io_uring *ring, uint64_t now)
{
	uint64_t limit = (uint64_t)(opt.timeout * 1e9);

	for (uint32_t i = 0; i < opt.max_conns; i++) {
		struct sconn *c = &S.conns[i];

		if (!c->used || c->io.shut || c->block_until)
			continue;
		if (now - c->io.last_io > limit) {
			S.timeouts++;
			if (!c->io.closing) {
				reply(c, "421 4.4.2 sink: timeout, closing\r\n");
				c->io.closing = true;
				bench_conn_flush(ring, &c->io);
				c->io.last_io = now;	/* give the 421 one more period */
			} else {
				bench_conn_abort(&c->io);
			}
			settle(c);
		}
	}
}

/* listen_socket - the listening socket, or -errno. */
static int listen_socket(void)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&opt.listen, sizeof(opt.listen)) < 0 ||
	    listen(fd, 4096) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	return fd;
}

/* ---- report ---- */

static void ip_text(uint32_t addr, char *buf, size_t len)
{
	struct in_addr a = { .s_addr = addr };

	inet_ntop(AF_INET, &a, buf, (socklen_t)len);
}

/* arrival_span_s - first to last accepted message, in seconds. */
static double arrival_span_s(void)
{
	return S.msgs > 1 ? (double)(S.last_msg_ns - S.first_msg_ns) / 1e9 : 0;
}

/* report_json - the --json report. */
static void report_json(struct strbuf *o, double elapsed)
{
	char ip[INET_ADDRSTRLEN], addr[64];
	double span = arrival_span_s();

	bench_format_addr(&opt.listen, addr, sizeof(addr));
	sb_adds(o, "{\n  \"tool\": \"coremta-bench sink\",\n  \"listen\": ");
	bench_json_str(o, addr);
	sb_adds(o, ",\n  \"stop_reason\": ");
	bench_json_str(o, S.stop_reason ? S.stop_reason : "signal");
	sb_adds(o, ",\n  \"started_unix\": ");
	bench_json_num(o, S.start_wall);
	sb_adds(o, ",\n  \"elapsed_s\": ");
	bench_json_num(o, elapsed);
	sb_printf(o, ",\n  \"messages\": {\"accepted\": %llu, \"tempfail\": %llu, "
		  "\"permfail\": %llu, \"rate_limited\": %llu, \"rcpts\": %llu, "
		  "\"rcpts_throttled\": %llu, \"rcpts_unknown\": %llu, "
		  "\"rcpts_greylisted\": %llu, \"greylist_addresses\": %zu, "
		  "\"greylist_untracked\": %llu, \"null_sender_msgs\": %llu, "
		  "\"null_sender_rcpts\": %llu, \"bytes\": %llu}",
		  (unsigned long long)S.msgs, (unsigned long long)S.tempfail,
		  (unsigned long long)S.permfail, (unsigned long long)S.rate_limited,
		  (unsigned long long)S.rcpts, (unsigned long long)S.rcpt_refused,
		  (unsigned long long)S.rcpt_unknown, (unsigned long long)S.rcpt_greylisted,
		  S.grey_n, (unsigned long long)S.grey_untracked,
		  (unsigned long long)S.null_msgs, (unsigned long long)S.null_rcpts,
		  (unsigned long long)S.bytes);
	sb_adds(o, ",\n  \"first_msg_unix\": ");
	bench_json_num(o, S.first_msg_ns ? S.start_wall + (double)(S.first_msg_ns - S.start_ns) / 1e9 : 0);
	sb_adds(o, ",\n  \"last_msg_unix\": ");
	bench_json_num(o, S.last_msg_ns ? S.start_wall + (double)(S.last_msg_ns - S.start_ns) / 1e9 : 0);
	sb_adds(o, ",\n  \"arrival_rate\": ");
	bench_json_num(o, span > 0 ? (double)(S.msgs - 1) / span : 0);
	sb_printf(o, ",\n  \"connections\": {\"total\": %llu, \"refused\": %llu, "
		  "\"timeouts\": %llu, \"starttls\": %llu, \"tls_failed\": %llu, \"hwm\": %u, "
		  "\"records_dropped\": %llu, \"held_ungreeted\": %llu, \"waiting_hwm\": %zu}",
		  (unsigned long long)S.conns_total, (unsigned long long)S.conns_refused,
		  (unsigned long long)S.timeouts, (unsigned long long)S.starttls,
		  (unsigned long long)S.tls_failed, S.hwm,
		  (unsigned long long)S.log_dropped, (unsigned long long)S.conns_held,
		  S.waiting_hwm);
	sb_adds(o, ",\n  \"delivery_latency_ms\": ");
	bench_samples_json(&S.delivery, o);
	sb_adds(o, ",\n  \"series\": ");
	bench_series_json(&S.series, o);
	sb_adds(o, ",\n  \"domains\": {");
	for (size_t i = 0; i < S.ndoms; i++) {
		struct domain_stat *d = &S.doms[i];

		if (!d->msgs && !d->tempfail && !d->permfail && !d->throttled &&
		    !d->unknown && !d->greylisted && i == 0)
			continue;
		sb_adds(o, o->buf[o->len - 1] == '{' ? "\n    " : ",\n    ");
		bench_json_str(o, d->name);
		sb_printf(o, ": {\"messages\": %llu, \"rcpts\": %llu, \"bytes\": %llu, "
			  "\"tempfail\": %llu, \"permfail\": %llu, \"throttled\": %llu, "
			  "\"unknown\": %llu, \"greylisted\": %llu, \"series\": ",
			  (unsigned long long)d->msgs, (unsigned long long)d->rcpts,
			  (unsigned long long)d->bytes, (unsigned long long)d->tempfail,
			  (unsigned long long)d->permfail, (unsigned long long)d->throttled,
			  (unsigned long long)d->unknown, (unsigned long long)d->greylisted);
		bench_series_json(&d->series, o);
		sb_addc(o, '}');
	}
	sb_adds(o, "\n  },\n  \"clients\": {");
	for (size_t i = 0, k = 0; i < S.ip_cap; i++) {
		struct ip_stat *p = &S.ips[i];

		if (!p->addr)
			continue;
		ip_text(p->addr, ip, sizeof(ip));
		sb_adds(o, k++ ? ",\n    " : "\n    ");
		bench_json_str(o, ip);
		sb_printf(o, ": {\"connections\": %llu, \"hwm\": %u, \"refused\": %llu, "
			  "\"messages\": %llu, \"rate_limited\": %llu}",
			  (unsigned long long)p->conns, p->hwm, (unsigned long long)p->refused,
			  (unsigned long long)p->msgs, (unsigned long long)p->rate_limited);
	}
	sb_adds(o, "\n  },\n  \"connection_log\": [");
	for (size_t i = 0; i < S.nlog; i++) {
		struct conn_record *r = &S.log[i];

		ip_text(r->addr, ip, sizeof(ip));
		sb_adds(o, i ? ",\n    " : "\n    ");
		sb_printf(o, "{\"client\": \"%s:%u\", \"start_s\": %.3f, \"end_s\": %.3f, "
			  "\"messages\": %llu, \"bytes\": %llu, \"rejected\": %llu}",
			  ip, r->port, r->start_s, r->end_s, (unsigned long long)r->msgs,
			  (unsigned long long)r->bytes, (unsigned long long)r->rejected);
	}
	sb_adds(o, "\n  ]\n}\n");
}

/* report_text - the summary on stdout. */
static void report_text(double elapsed)
{
	double span = arrival_span_s();

	printf("sink: %llu messages accepted (%llu recipients, %llu bytes) in %.2f s; "
	       "rejected: %llu tempfail, %llu permfail, %llu rate-limited, %llu rcpts throttled\n",
	       (unsigned long long)S.msgs, (unsigned long long)S.rcpts,
	       (unsigned long long)S.bytes, elapsed, (unsigned long long)S.tempfail,
	       (unsigned long long)S.permfail, (unsigned long long)S.rate_limited,
	       (unsigned long long)S.rcpt_refused);
	printf("sink: arrivals %.1f msgs/s (first to last), %llu connections "
	       "(%llu refused, %llu timed out), concurrency high-water %u, %zu domains\n",
	       span > 0 ? (double)(S.msgs - 1) / span : 0, (unsigned long long)S.conns_total,
	       (unsigned long long)S.conns_refused, (unsigned long long)S.timeouts, S.hwm,
	       S.ndoms > 0 ? S.ndoms - 1 : 0);
	if (S.rcpt_unknown || S.rcpt_greylisted || S.null_msgs)
		printf("sink: recipients refused at RCPT: %llu unknown (550), %llu greylisted (451); "
		       "%llu messages from <> (%llu recipients) accepted\n",
		       (unsigned long long)S.rcpt_unknown, (unsigned long long)S.rcpt_greylisted,
		       (unsigned long long)S.null_msgs, (unsigned long long)S.null_rcpts);
	if (S.delivery.seen)
		printf("sink: X-Bench-T to arrival: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
		       bench_samples_pct(&S.delivery, 50) / 1000.0,
		       bench_samples_pct(&S.delivery, 99) / 1000.0,
		       (double)S.delivery.max_us / 1000.0);
	fflush(stdout);
}

/* ---- main ---- */

static void setup_tables(void)
{
	S.conns = xcalloc(opt.max_conns, sizeof(*S.conns));
	S.free_head = UINT32_MAX;
	for (uint32_t i = (uint32_t)opt.max_conns; i-- > 0;) {
		S.conns[i].io.fd = -1;
		S.conns[i].io.idx = i;
		S.conns[i].next_free = S.free_head;
		S.free_head = i;
	}
	S.doms = xcalloc(opt.max_domains + 1, sizeof(*S.doms));
	S.dom_hash_cap = 16;
	while (S.dom_hash_cap < 2 * (opt.max_domains + 1))
		S.dom_hash_cap *= 2;
	S.dom_hash = xcalloc(S.dom_hash_cap, sizeof(*S.dom_hash));
	domain_find("(other)", 7);	/* entry 0 */
	S.ip_cap = 4096;
	S.ips = xcalloc(S.ip_cap, sizeof(*S.ips));
	S.log = xcalloc(opt.conn_log_cap ? opt.conn_log_cap : 1, sizeof(*S.log));
	S.rng = opt.seed ? opt.seed : (bench_now_ns() | 1);
}

/* teardown - free everything; the ring is already gone. */
static void teardown(void)
{
	for (uint32_t i = 0; i < opt.max_conns; i++) {
		struct sconn *c = &S.conns[i];

		if (c->used) {
			c->io.recv_busy = c->io.send_busy = false;	/* the ring is gone */
			bench_conn_release(&c->io);
			free(c->rcpt_dom);
		}
	}
	free(S.conns);
	for (size_t i = S.waiting_off; i < S.nwaiting; i++)
		close(S.waiting[i]);
	free(S.waiting);
	for (size_t i = 0; i < S.ndoms; i++) {
		free(S.doms[i].name);
		bench_series_free(&S.doms[i].series);
	}
	free(S.doms);
	free(S.dom_hash);
	free(S.ips);
	free(S.log);
	for (size_t i = 0; i < S.grey_cap; i++)
		free(S.grey[i].addr);
	free(S.grey);
	bench_series_free(&S.series);
	bench_samples_free(&S.delivery);
	bench_timers_free(&S.timers);
	for (size_t i = 0; i < opt.npols; i++)
		free(opt.pols[i].domain);
	free(opt.pols);
}

/* run_loop - serve until a signal, the deadline, --expect or --idle-exit. */
static void run_loop(void)
{
	struct io_uring *ring = &S.ring;
	uint64_t deadline = S.start_ns + (uint64_t)(opt.duration * 1e9);
	uint64_t next_sweep = S.start_ns + 1000000000ULL;
	uint64_t idle = (uint64_t)(opt.idle_exit * 1e9);

	while (!S.stop) {
		uint64_t now = bench_now_ns(), wake = next_sweep;
		struct bench_timer t;
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		while (bench_timer_pop(&S.timers, now, &t))
			on_timer(ring, &t);
		if (now >= next_sweep) {
			sweep(ring, now);
			next_sweep = now + 1000000000ULL;
		}
		if (got_signal) {
			S.stop_reason = "signal";
			break;
		}
		if (now >= deadline) {
			S.stop_reason = "duration";
			break;
		}
		if (idle && S.last_msg_ns && now - S.last_msg_ns >= idle) {
			S.stop_reason = "idle";
			break;
		}
		if (bench_timer_next(&S.timers) < wake)
			wake = bench_timer_next(&S.timers);
		if (deadline < wake)
			wake = deadline;
		if (bench_wait(ring, wake > now ? wake - now : 0) < 0)
			break;
		io_uring_for_each_cqe(ring, head, cqe) {
			on_cqe(ring, cqe);
			seen++;
		}
		io_uring_cq_advance(ring, seen);
		/* --serve-max: a served one closed, the oldest waiting one is greeted */
		while (S.waiting_off < S.nwaiting && S.active < opt.serve_max)
			on_accept(ring, S.waiting[S.waiting_off++]);
	}
	/* Let the last replies (the 250 that completed --expect) go out. */
	for (uint32_t i = 0; i < opt.max_conns; i++)
		if (S.conns[i].used) {
			S.conns[i].block_until = 0;
			bench_conn_flush(ring, &S.conns[i].io);
		}
	io_uring_submit(ring);
	/*
	 * The multishot accept holds the listening socket, and a ring is torn
	 * down asynchronously after exit: end the accept now, so the port is
	 * free for the next run as soon as this process is gone.
	 */
	shutdown(S.lfd, SHUT_RDWR);
	for (uint64_t end = bench_now_ns() + 200000000ULL; S.accept_armed && bench_now_ns() < end;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		bench_wait(ring, 20000000ULL);
		io_uring_for_each_cqe(ring, head, cqe) {
			if (bench_ud_op(io_uring_cqe_get_data64(cqe)) == BENCH_OP_ACCEPT &&
			    !(cqe->flags & IORING_CQE_F_MORE))
				S.accept_armed = false;
			else if (bench_ud_op(io_uring_cqe_get_data64(cqe)) == BENCH_OP_ACCEPT &&
				 cqe->res >= 0)
				close(cqe->res);
			seen++;
		}
		io_uring_cq_advance(ring, seen);
	}
}

int bench_sink_main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	char err[256] = "";
	struct strbuf js = { 0 };
	double elapsed;
	int rc;

	rc = parse_options(argc, argv);
	if (rc)
		return rc > 0 ? 0 : 2;
	if (opt.tls_cert && bench_tls_setup(true, opt.tls_cert, opt.tls_key, err, sizeof(err)) < 0) {
		fprintf(stderr, "sink: TLS: %s\n", err);
		return 1;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	S.lfd = listen_socket();
	if (S.lfd < 0) {
		fprintf(stderr, "sink: cannot listen: %s\n", strerror(-S.lfd));
		return 1;
	}
	rc = bench_ring_init(&S.ring, 4096);
	if (rc < 0) {
		fprintf(stderr, "sink: io_uring: %s\n", strerror(-rc));
		close(S.lfd);
		return 1;
	}
	setup_tables();
	S.start_ns = bench_now_ns();
	S.start_wall = bench_wall_s();
	arm_accept(&S.ring);
	if (!opt.quiet) {
		char addr[64];

		bench_format_addr(&opt.listen, addr, sizeof(addr));
		printf("sink: listening on %s\n", addr);
		fflush(stdout);
	}
	run_loop();
	elapsed = (double)(bench_now_ns() - S.start_ns) / 1e9;
	io_uring_queue_exit(&S.ring);
	close(S.lfd);
	rc = 0;
	if (opt.json) {
		report_json(&js, elapsed);
		rc = bench_write_file(opt.json, js.buf, js.len);
		if (rc < 0)
			fprintf(stderr, "sink: cannot write %s: %s\n", opt.json, strerror(-rc));
		sb_free(&js);
	}
	if (!opt.quiet)
		report_text(elapsed);
	teardown();
	if (opt.tls_cert)
		bench_tls_teardown();
	return rc < 0 ? 1 : 0;
}
