/*
 * bench/send.c - `coremta-bench send`: an SMTP load generator on one
 * io_uring loop.  Each session is a state machine driven by the replies
 * it expects (a queue, so PIPELINING is the same code as lockstep); it
 * reports 250s per second, reject counts by reply code and the latency
 * from the end of a message to its reply.
 *
 * Everything here runs on the one thread that calls bench_send_main().
 * Targets are restricted to 127.0.0.0/8: this tool floods what it is
 * pointed at.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "bench/bench.h"

/* What a session waits for, one entry per command sent. */
enum expect {
	E_GREET,
	E_EHLO,
	E_STARTTLS,
	E_MAIL,
	E_RCPT,
	E_DATA,
	E_DOT,			/* end of DATA, or BDAT LAST */
	E_RSET,
	E_QUIT,
};

enum sstate {
	S_OFF,			/* no connection; may wait for wake_at */
	S_CONNECTING,
	S_HELLO,		/* greeting, EHLO, STARTTLS */
	S_TLS,			/* TLS handshake in progress */
	S_READY,		/* between or inside transactions */
	S_QUIT,
	S_DONE,
};

#define IN_CAP (16 * 1024)
#define RCPTS_MAX 1000

struct session {
	struct bench_conn io;
	enum sstate st;
	bool connected;
	bool pipelining;	/* both asked for and offered */
	bool chunking;
	bool tls_offered;
	bool tls_done;
	bool reconnect;		/* after QUIT, connect again */
	uint8_t *exp;
	size_t exp_head;
	size_t exp_n;
	size_t exp_cap;
	/* the current transaction */
	bool in_txn;
	bool mail_ok;		/* the server opened the transaction */
	bool failed;		/* outcome already decided (MAIL or RCPTs refused) */
	int fail_code;
	int rcpt_ok;
	int rcpt_sent;
	uint32_t *rcpt_dom;
	uint64_t msg_id;
	size_t size_idx;
	uint64_t t_end;
	uint64_t msg_bytes;	/* as written */
	uint32_t txns;		/* on this connection */
	uint64_t wake_at;
	bool ehlo_first;	/* the next EHLO line is the greeting line */
};

static struct {
	struct sockaddr_in target;
	struct sockaddr_in *binds;
	size_t nbinds;
	uint64_t sessions;
	uint64_t messages;
	double duration;
	struct bench_wlist sizes;
	uint64_t rcpts;
	struct bench_wlist domains;
	uint64_t synthetic;
	bool pipelining;
	bool bdat;
	bool starttls;
	double rate;
	uint64_t per_conn;
	const char *helo;
	const char *from;
	double timeout;
	double stall;
	double reconnect_ms;
	const char *json;
	bool quiet;
	uint64_t seed;
} opt = {
	.sessions = 10,
	.rcpts = 1,
	.helo = "bench.test",
	.from = "bench@bench.test",
	.timeout = 60,
	.stall = 30,
	.reconnect_ms = 100,
};

static struct {
	struct io_uring ring;
	struct session *ss;
	uint32_t live;		/* sessions not yet done */
	uint64_t issued;
	uint64_t accepted;
	uint64_t tempfail;
	uint64_t permfail;
	uint64_t errors;	/* connection lost or timed out mid-transaction */
	uint64_t rcpt_ok;
	uint64_t rcpt_refused;
	uint64_t bytes;
	uint64_t conns_opened;
	uint64_t conns_failed;
	uint64_t conns_refused;	/* greeting was not 220 */
	uint64_t timeouts;
	uint64_t codes[600];	/* final transaction outcome by reply code */
	uint64_t start_ns;
	double start_wall;
	uint64_t deadline;
	uint64_t last_done_ns;
	uint64_t last_progress;
	uint64_t next_slot;	/* --rate: when the next message may start */
	struct bench_series series;
	struct bench_samples lat;
	struct bench_timers timers;
	uint64_t rng;
	char *filler;		/* whole 78-byte lines, as long as the largest size */
	size_t filler_len;
	char date[64];
	bool fatal;
	const char *fatal_reason;
} S;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

static void usage(FILE *f)
{
	fputs("usage: coremta-bench send [options]\n"
	      "  --target ADDR:PORT        the SMTP server (127.0.0.0/8 only; default 127.0.0.1:2525)\n"
	      "  --sessions N              concurrent SMTP sessions (default 10)\n"
	      "  --messages N              messages to send (default 1000 unless --duration)\n"
	      "  --duration S              send for S seconds\n"
	      "  --size SPEC               bytes per message: 5000, 5k, or 2k:50,5k:40,50k:10 (k = 1024)\n"
	      "  --rcpts N                 recipients per message (default 1)\n"
	      "  --domains LIST            weighted recipient domains: gmail.com:40,yahoo.com:20\n"
	      "  --synthetic-domains N     add d1.test..dN.test sharing the weight the list leaves\n"
	      "                            below 100 (default 100 domains when no list is given)\n"
	      "  --pipelining              MAIL+RCPT+DATA in one flight when PIPELINING is offered\n"
	      "  --bdat                    BDAT instead of DATA when CHUNKING is offered\n"
	      "  --starttls                STARTTLS before sending (fails if not offered)\n"
	      "  --rate R                  at most R messages/s in total\n"
	      "  --per-conn N              messages per connection, then QUIT and reconnect\n"
	      "  --bind IP[,IP...]         source addresses, round-robin over sessions\n"
	      "  --helo NAME --from ADDR   EHLO name and envelope sender\n"
	      "  --timeout S               reply timeout (default 60)\n"
	      "  --stall S                 give up after S seconds without any reply (default 30)\n"
	      "  --reconnect-delay MS      wait after a refused or lost connection (default 100)\n"
	      "  --json FILE               write the report as JSON\n"
	      "  --seed N --quiet\n", f);
}

/* ---- options ---- */

static int parse_binds(const char *arg)
{
	char *copy = xstrdup(arg), *save = NULL, *tok;
	int rc = 0;

	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *spec = xasprintf("%s:0", tok);

		opt.binds = xrealloc(opt.binds, (opt.nbinds + 1) * sizeof(*opt.binds));
		rc = bench_parse_addr(spec, &opt.binds[opt.nbinds], true);
		free(spec);
		if (rc < 0)
			break;
		opt.nbinds++;
	}
	free(copy);
	return rc;
}

enum {
	O_TARGET = 256, O_SESSIONS, O_MESSAGES, O_DURATION, O_SIZE, O_RCPTS,
	O_DOMAINS, O_SYNTH, O_PIPELINING, O_BDAT, O_STARTTLS, O_RATE, O_PERCONN,
	O_BIND, O_HELO, O_FROM, O_TIMEOUT, O_STALL, O_RECONNECT, O_JSON, O_SEED,
	O_QUIET, O_HELP,
};

static const struct option longopts[] = {
	{ "target", required_argument, NULL, O_TARGET },
	{ "sessions", required_argument, NULL, O_SESSIONS },
	{ "messages", required_argument, NULL, O_MESSAGES },
	{ "duration", required_argument, NULL, O_DURATION },
	{ "size", required_argument, NULL, O_SIZE },
	{ "rcpts", required_argument, NULL, O_RCPTS },
	{ "domains", required_argument, NULL, O_DOMAINS },
	{ "synthetic-domains", required_argument, NULL, O_SYNTH },
	{ "pipelining", no_argument, NULL, O_PIPELINING },
	{ "bdat", no_argument, NULL, O_BDAT },
	{ "starttls", no_argument, NULL, O_STARTTLS },
	{ "rate", required_argument, NULL, O_RATE },
	{ "per-conn", required_argument, NULL, O_PERCONN },
	{ "bind", required_argument, NULL, O_BIND },
	{ "helo", required_argument, NULL, O_HELO },
	{ "from", required_argument, NULL, O_FROM },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "stall", required_argument, NULL, O_STALL },
	{ "reconnect-delay", required_argument, NULL, O_RECONNECT },
	{ "json", required_argument, NULL, O_JSON },
	{ "seed", required_argument, NULL, O_SEED },
	{ "quiet", no_argument, NULL, O_QUIET },
	{ "help", no_argument, NULL, O_HELP },
	{ NULL, 0, NULL, 0 },
};

/* finish_domains - the weighted list plus synthetic dN.test domains. */
static void finish_domains(void)
{
	double w = 0, share;

	if (!opt.domains.count && !opt.synthetic)
		opt.synthetic = 100;
	for (size_t i = 0; i < opt.domains.count; i++)
		w += opt.domains.items[i].weight;
	/* Synthetic domains share what the list leaves of 100, or weigh 1 each. */
	share = opt.domains.count && w < 100 && opt.synthetic ? (100 - w) / (double)opt.synthetic : 1;
	for (uint64_t i = 1; i <= opt.synthetic; i++) {
		char name[32];

		snprintf(name, sizeof(name), "d%llu.test", (unsigned long long)i);
		bench_wlist_add(&opt.domains, name, share, 0);
	}
	bench_wlist_seal(&opt.domains);
}

/* parse_options - fill opt; returns 0, or 1 after --help, or -EINVAL. */
static int parse_options(int argc, char **argv)
{
	int ch, rc;

	bench_parse_addr("127.0.0.1:2525", &opt.target, true);
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		rc = 0;
		switch (ch) {
		case O_TARGET:
			rc = bench_parse_addr(optarg, &opt.target, true);
			break;
		case O_SESSIONS:
			rc = bench_parse_u64(optarg, &opt.sessions);
			if (rc == 0 && (opt.sessions == 0 || opt.sessions > 100000))
				rc = -ERANGE;
			break;
		case O_MESSAGES:
			rc = bench_parse_u64(optarg, &opt.messages);
			break;
		case O_DURATION:
			rc = bench_parse_seconds(optarg, &opt.duration);
			break;
		case O_SIZE:
			rc = bench_wlist_parse(&opt.sizes, optarg, true);
			break;
		case O_RCPTS:
			rc = bench_parse_u64(optarg, &opt.rcpts);
			if (rc == 0 && (opt.rcpts == 0 || opt.rcpts > RCPTS_MAX))
				rc = -ERANGE;
			break;
		case O_DOMAINS:
			rc = bench_wlist_parse(&opt.domains, optarg, false);
			break;
		case O_SYNTH:
			rc = bench_parse_u64(optarg, &opt.synthetic);
			if (rc == 0 && opt.synthetic > 1000000)
				rc = -ERANGE;
			break;
		case O_PIPELINING:
			opt.pipelining = true;
			break;
		case O_BDAT:
			opt.bdat = true;
			break;
		case O_STARTTLS:
			opt.starttls = true;
			break;
		case O_RATE:
			rc = bench_parse_double(optarg, &opt.rate);
			break;
		case O_PERCONN:
			rc = bench_parse_u64(optarg, &opt.per_conn);
			break;
		case O_BIND:
			rc = parse_binds(optarg);
			break;
		case O_HELO:
			opt.helo = optarg;
			break;
		case O_FROM:
			opt.from = optarg;
			break;
		case O_TIMEOUT:
			rc = bench_parse_seconds(optarg, &opt.timeout);
			break;
		case O_STALL:
			rc = bench_parse_seconds(optarg, &opt.stall);
			break;
		case O_RECONNECT:
			rc = bench_parse_double(optarg, &opt.reconnect_ms);
			break;
		case O_JSON:
			opt.json = optarg;
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
			fprintf(stderr, "send: %s: only 127.0.0.0/8 addresses are allowed\n", optarg);
			return -EINVAL;
		}
		if (rc < 0) {
			fprintf(stderr, "send: bad value for --%s: %s\n",
				longopts[ch - O_TARGET].name, optarg);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "send: unexpected argument %s\n", argv[optind]);
		return -EINVAL;
	}
	if (!opt.messages && opt.duration <= 0)
		opt.messages = 1000;
	if (!opt.sizes.count)
		bench_wlist_add(&opt.sizes, "5000", 1, 5000);
	bench_wlist_seal(&opt.sizes);
	finish_domains();
	return 0;
}

/* ---- message text ---- */

#define FILLER_LINE 78		/* 76 characters and CRLF */

static void make_filler(void)
{
	uint64_t max = 0;

	for (size_t i = 0; i < opt.sizes.count; i++)
		if (opt.sizes.items[i].value > max)
			max = opt.sizes.items[i].value;
	S.filler_len = (max / FILLER_LINE + 1) * FILLER_LINE;
	S.filler = xmalloc(S.filler_len);
	for (size_t i = 0; i < S.filler_len; i += FILLER_LINE) {
		for (size_t k = 0; k < FILLER_LINE - 2; k++)
			S.filler[i + k] = (char)('a' + (i / FILLER_LINE + k) % 26);
		S.filler[i + FILLER_LINE - 2] = '\r';
		S.filler[i + FILLER_LINE - 1] = '\n';
	}
}

/* format_header - the message's header block; X-Bench-T is "now". */
static size_t format_header(const struct session *s, char *hdr, size_t cap)
{
	int n = snprintf(hdr, cap,
			 "From: <%s>\r\nTo: <u%llu.0@%s>\r\nSubject: coremta-bench %llu\r\n"
			 "Date: %s\r\nMessage-ID: <%llu.%u@bench.test>\r\n"
			 "X-Bench-T: %llu\r\nMIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n\r\n",
			 opt.from, (unsigned long long)s->msg_id,
			 opt.domains.items[s->rcpt_dom[0]].name, (unsigned long long)s->msg_id,
			 S.date, (unsigned long long)s->msg_id, s->io.idx,
			 (unsigned long long)bench_now_ns());

	BUG_ON(n < 0 || (size_t)n >= cap);
	return (size_t)n;
}

/* message_len - the chosen size, or the header plus an empty line. */
static uint64_t message_len(const struct session *s, size_t hdr_len)
{
	uint64_t size = opt.sizes.items[s->size_idx].value;

	return size > hdr_len + 2 ? size : hdr_len + 2;
}

/*
 * write_message - header and filler, message_len() bytes in all.  No line
 * starts with '.', so DATA needs no dot-stuffing and the byte counts of
 * sender and sink agree.
 */
static void write_message(struct session *s, const char *hdr, size_t hdr_len)
{
	uint64_t len = message_len(s, hdr_len);
	uint64_t body = len - hdr_len;
	uint64_t whole = (body - 2) / FILLER_LINE * FILLER_LINE;
	uint64_t tail = body - 2 - whole;

	bench_conn_write(&s->io, hdr, hdr_len);
	bench_conn_write(&s->io, S.filler, (size_t)whole);
	if (tail) {
		char line[FILLER_LINE];

		memset(line, 'x', (size_t)tail);
		bench_conn_write(&s->io, line, (size_t)tail);
	}
	bench_conn_write(&s->io, "\r\n", 2);
	s->msg_bytes = len;
}

/* ---- sessions ---- */

static void push(struct session *s, enum expect e)
{
	if (s->exp_n == s->exp_cap) {
		/* Grow and unwrap the ring. */
		size_t cap = s->exp_cap ? s->exp_cap * 2 : opt.rcpts + 8;
		uint8_t *q = xmalloc(cap);

		for (size_t i = 0; i < s->exp_n; i++)
			q[i] = s->exp[(s->exp_head + i) % s->exp_cap];
		free(s->exp);
		s->exp = q;
		s->exp_cap = cap;
		s->exp_head = 0;
	}
	s->exp[(s->exp_head + s->exp_n++) % s->exp_cap] = (uint8_t)e;
}

/* pop - the oldest command still waiting for its reply. */
static enum expect pop(struct session *s)
{
	enum expect e;

	BUG_ON(!s->exp_n);
	e = (enum expect)s->exp[s->exp_head];
	s->exp_head = (s->exp_head + 1) % s->exp_cap;
	s->exp_n--;
	return e;
}

/* cmdf - queue one formatted command line. */
static void cmdf(struct session *s, const char *fmt, ...) UTIL_PRINTF(2, 3);
static void cmdf(struct session *s, const char *fmt, ...)
{
	char buf[1100];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	BUG_ON(n < 0 || (size_t)n >= sizeof(buf));
	bench_conn_write(&s->io, buf, (size_t)n);
}

/* more_work - may another message start (count, deadline, no stop)? */
static bool more_work(uint64_t now)
{
	if (got_signal || S.fatal)
		return false;
	if (opt.messages)
		return S.issued < opt.messages && (!S.deadline || now < S.deadline);
	return now < S.deadline;
}

/* txn_done - count the outcome of the current transaction once. */
static void txn_done(struct session *s, int code)
{
	uint64_t now = bench_now_ns();

	if (!s->in_txn)
		return;
	s->in_txn = false;
	s->txns++;
	S.last_done_ns = now;
	if (code > 0 && code < 600)
		S.codes[code]++;
	if (code >= 200 && code < 300) {
		S.accepted++;
		S.bytes += s->msg_bytes;
		bench_series_add(&S.series, now - S.start_ns);
	} else if (code >= 400 && code < 500) {
		S.tempfail++;
	} else if (code >= 500) {
		S.permfail++;
	} else {
		S.errors++;
	}
}

/* send_rcpt - queue the next RCPT of the transaction. */
static void send_rcpt(struct session *s)
{
	cmdf(s, "RCPT TO:<u%llu.%d@%s>\r\n", (unsigned long long)s->msg_id, s->rcpt_sent,
	     opt.domains.items[s->rcpt_dom[s->rcpt_sent]].name);
	s->rcpt_sent++;
	push(s, E_RCPT);
}

/* send_content - DATA, or the whole message as one BDAT LAST chunk. */
static void send_content(struct session *s)
{
	char hdr[1024];
	size_t n;

	if (!s->chunking) {
		bench_conn_writes(&s->io, "DATA\r\n");
		push(s, E_DATA);
		return;
	}
	n = format_header(s, hdr, sizeof(hdr));
	cmdf(s, "BDAT %llu LAST\r\n", (unsigned long long)message_len(s, n));
	write_message(s, hdr, n);
	s->t_end = bench_now_ns();
	push(s, E_DOT);
}

/* start_txn - issue the next message: in one flight when pipelining. */
static void start_txn(struct session *s)
{
	S.issued++;
	s->in_txn = true;
	s->mail_ok = false;
	s->failed = false;
	s->fail_code = 0;
	s->rcpt_ok = 0;
	s->rcpt_sent = 0;
	s->msg_id = S.issued;
	s->size_idx = bench_wlist_pick(&opt.sizes, &S.rng);
	for (uint64_t i = 0; i < opt.rcpts; i++)
		s->rcpt_dom[i] = (uint32_t)bench_wlist_pick(&opt.domains, &S.rng);
	cmdf(s, "MAIL FROM:<%s>\r\n", opt.from);
	push(s, E_MAIL);
	if (!s->pipelining)
		return;
	while ((uint64_t)s->rcpt_sent < opt.rcpts)
		send_rcpt(s);
	send_content(s);
}

/* schedule - wake the session at when (reconnect, rate slot). */
static void schedule(struct session *s, uint64_t when)
{
	s->wake_at = when;
	bench_timer_add(&S.timers, when, s->io.idx, s->io.gen);
}

/* next_txn - between transactions: start one, wait for a rate slot, or QUIT. */
static void next_txn(struct session *s)
{
	uint64_t now = bench_now_ns();

	if (!more_work(now) || (opt.per_conn && s->txns >= opt.per_conn)) {
		s->reconnect = more_work(now);
		bench_conn_writes(&s->io, "QUIT\r\n");
		push(s, E_QUIT);
		s->st = S_QUIT;
		return;
	}
	if (opt.rate > 0) {
		uint64_t gap = (uint64_t)(1e9 / opt.rate);

		if (S.next_slot + gap < now)
			S.next_slot = now;	/* no saved-up burst after a pause */
		if (now < S.next_slot) {
			schedule(s, S.next_slot);
			return;
		}
		S.next_slot += gap;
	}
	start_txn(s);
}

/* send_ehlo - (re)learn the extensions: after the greeting and after TLS. */
static void send_ehlo(struct session *s)
{
	s->pipelining = s->chunking = s->tls_offered = false;
	s->ehlo_first = true;
	cmdf(s, "EHLO %s\r\n", opt.helo);
	push(s, E_EHLO);
}

/* ehlo_line - note the extensions the server offers. */
static void ehlo_line(struct session *s, const char *line, size_t len)
{
	char kw[32];
	size_t n = 0;

	if (s->ehlo_first) {
		s->ehlo_first = false;
		return;
	}
	for (size_t i = 4; i < len && n < sizeof(kw) - 1; i++) {
		if (line[i] == ' ' || line[i] == '\r' || line[i] == '\n')
			break;
		kw[n++] = line[i];
	}
	kw[n] = '\0';
	if (!strcasecmp(kw, "PIPELINING"))
		s->pipelining = opt.pipelining;
	else if (!strcasecmp(kw, "CHUNKING"))
		s->chunking = opt.bdat;
	else if (!strcasecmp(kw, "STARTTLS"))
		s->tls_offered = true;
}

/* fatal - stop the whole run; the reason goes into the report. */
static void fatal(const char *why)
{
	S.fatal = true;
	S.fatal_reason = why;
}

/*
 * rset_after_failure - a refused DATA or BDAT leaves the MAIL transaction
 * open (RFC 5321 4.1.1.4): reset it before the next MAIL.
 */
static void rset_after_failure(struct session *s, int code)
{
	if (!s->mail_ok || code == 421)
		return;
	s->mail_ok = false;
	bench_conn_writes(&s->io, "RSET\r\n");
	push(s, E_RSET);
}

/* on_reply - one complete reply, matched to the oldest command waiting. */
static void on_reply(struct io_uring *ring, struct session *s, int code)
{
	enum expect e;
	bool ok = code >= 200 && code < 400;

	if (!s->exp_n) {
		s->io.closing = true;	/* a reply nobody asked for */
		return;
	}
	e = pop(s);
	S.last_progress = bench_now_ns();
	switch (e) {
	case E_GREET:
		if (code != 220) {
			S.conns_refused++;
			s->io.closing = true;
			return;
		}
		s->st = S_HELLO;
		send_ehlo(s);
		return;
	case E_EHLO:
		if (code == 421) {
			S.conns_refused++;	/* pushback: connect again later */
			s->io.closing = true;
			return;
		}
		if (code != 250) {
			fatal("EHLO refused");
			s->io.closing = true;
			return;
		}
		if (opt.starttls && !s->tls_done) {
			if (!s->tls_offered) {
				fatal("the server does not offer STARTTLS");
				s->io.closing = true;
				return;
			}
			bench_conn_writes(&s->io, "STARTTLS\r\n");
			push(s, E_STARTTLS);
			return;
		}
		s->st = S_READY;
		return;
	case E_STARTTLS:
		if (code != 220 || bench_conn_start_tls(ring, &s->io, false) < 0) {
			fatal("STARTTLS failed");
			s->io.closing = true;
			return;
		}
		s->st = S_TLS;
		return;
	case E_MAIL:
		s->mail_ok = ok;
		if (!ok) {
			s->failed = true;
			s->fail_code = code;
			if (!s->pipelining)
				txn_done(s, code);
		} else if (!s->pipelining) {
			send_rcpt(s);
		}
		break;
	case E_RCPT:
		if (ok) {
			s->rcpt_ok++;
			S.rcpt_ok++;
		} else {
			S.rcpt_refused++;
			if (!s->failed)
				s->fail_code = code;
		}
		if (s->pipelining || s->failed)
			break;
		if ((uint64_t)s->rcpt_sent < opt.rcpts) {
			send_rcpt(s);
		} else if (s->rcpt_ok) {
			send_content(s);
		} else {
			s->failed = true;
			txn_done(s, s->fail_code);
			rset_after_failure(s, s->fail_code);
		}
		break;
	case E_DATA:
		if (code == 354) {
			if (!s->rcpt_ok)
				s->failed = true;
			if (s->failed) {
				bench_conn_writes(&s->io, ".\r\n");	/* RFC 2920 */
			} else {
				char hdr[1024];
				size_t n = format_header(s, hdr, sizeof(hdr));

				write_message(s, hdr, n);
				bench_conn_writes(&s->io, ".\r\n");
				s->t_end = bench_now_ns();
			}
			push(s, E_DOT);
		} else {
			txn_done(s, s->failed || !s->rcpt_ok ? s->fail_code : code);
			rset_after_failure(s, code);
		}
		break;
	case E_DOT:
		if (s->failed || !s->rcpt_ok) {
			txn_done(s, s->fail_code ? s->fail_code : code);
		} else {
			bench_samples_add(&S.lat, (bench_now_ns() - s->t_end) / 1000);
			txn_done(s, code);
		}
		/* After end of DATA the transaction is over; after BDAT maybe not. */
		if (s->chunking && !ok)
			rset_after_failure(s, code);
		break;
	case E_RSET:
		break;
	case E_QUIT:
		s->io.closing = true;
		return;
	}
	if (code == 421) {
		txn_done(s, code);
		s->io.closing = true;	/* the server is closing */
		s->exp_n = 0;
	}
}

/* read_replies - every complete reply line in the input. */
static void read_replies(struct io_uring *ring, struct session *s)
{
	while (!s->io.closing) {
		const char *p = s->io.in + s->io.in_off;
		size_t avail = s->io.in_len - s->io.in_off;
		size_t n = bench_line_len(p, avail);
		int code;
		bool last;

		if (!n) {
			if (avail == s->io.in_cap)
				s->io.closing = true;	/* a line longer than the buffer */
			return;
		}
		if (bench_reply_parse(p, n, &code, &last) < 0) {
			s->io.closing = true;
			return;
		}
		if (s->exp_n && s->exp[s->exp_head] == E_EHLO && code == 250)
			ehlo_line(s, p, n);
		bench_conn_consume(&s->io, n);
		if (last)
			on_reply(ring, s, code);
		if (s->st == S_TLS)
			return;	/* the rest of the input is TLS */
	}
}

static void sess_connect(struct io_uring *ring, struct session *s);

/* sess_drop - the connection is gone: count, and connect again if useful. */
static void sess_drop(struct session *s)
{
	uint64_t now = bench_now_ns();

	if (s->in_txn)
		txn_done(s, 0);
	s->exp_n = 0;
	s->exp_head = 0;
	bench_conn_release(&s->io);
	s->connected = false;
	if (!more_work(now)) {
		s->st = S_DONE;
		S.live--;
		return;
	}
	s->st = S_OFF;
	s->txns = 0;
	schedule(s, s->reconnect ? now : now + (uint64_t)(opt.reconnect_ms * 1e6));
	s->reconnect = false;
}

/* settle - push the session along after any event. */
static void settle(struct io_uring *ring, struct session *s)
{
	if (s->st == S_OFF || s->st == S_DONE)
		return;
	if (s->st != S_CONNECTING) {
		if (s->st == S_TLS && s->io.tls_ready) {
			s->tls_done = true;
			s->st = S_HELLO;
			send_ehlo(s);
		}
		if (s->st == S_READY && !s->exp_n && !s->io.closing && !s->wake_at)
			next_txn(s);
		bench_conn_flush(ring, &s->io);
		if (!s->io.closing)
			bench_conn_arm_recv(ring, &s->io);
	}
	if (!s->io.shut && (s->io.eof || (s->io.closing && !s->io.send_busy && !s->io.pend.len)))
		bench_conn_abort(&s->io);
	if (bench_conn_idle(&s->io))
		sess_drop(s);
}

/* sess_connect - open the session's connection (async connect). */
static void sess_connect(struct io_uring *ring, struct session *s)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct io_uring_sqe *sqe;

	s->wake_at = 0;
	if (fd < 0) {
		S.conns_failed++;
		fatal("socket() failed");
		s->st = S_DONE;
		S.live--;
		return;
	}
	if (opt.nbinds) {
		const struct sockaddr_in *b = &opt.binds[s->io.idx % opt.nbinds];

		if (bind(fd, (const struct sockaddr *)b, sizeof(*b)) < 0) {
			close(fd);
			S.conns_failed++;
			fatal("bind() to a --bind address failed");
			s->st = S_DONE;
			S.live--;
			return;
		}
	}
	bench_conn_init(&s->io, fd, s->io.idx, IN_CAP);
	s->st = S_CONNECTING;
	s->tls_done = false;
	sqe = bench_sqe(ring);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&opt.target, sizeof(opt.target));
	io_uring_sqe_set_data64(sqe, bench_ud(BENCH_OP_CONNECT, s->io.idx, s->io.gen));
	s->io.send_busy = true;	/* the connect holds the socket like a send */
}

/* on_cqe - one completion: connect, recv or send of a session. */
static void on_cqe(struct io_uring *ring, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	struct session *s = &S.ss[bench_ud_idx(ud)];

	BUG_ON(bench_ud_idx(ud) >= opt.sessions);
	BUG_ON((s->io.gen & 0xffffff) != bench_ud_gen(ud));	/* never released while busy */
	switch (bench_ud_op(ud)) {
	case BENCH_OP_CONNECT:
		s->io.send_busy = false;
		if (cqe->res < 0) {
			S.conns_failed++;
			bench_conn_abort(&s->io);
			break;
		}
		S.conns_opened++;
		s->connected = true;
		s->st = S_HELLO;
		push(s, E_GREET);
		break;
	case BENCH_OP_RECV:
		if (bench_conn_on_recv(ring, &s->io, cqe->res) < 0)
			break;
		for (;;) {
			read_replies(ring, s);
			if (s->st == S_TLS && !s->io.tls_ready)
				break;
			if (s->st == S_TLS) {
				settle(ring, s);	/* sends the second EHLO */
				continue;
			}
			if (bench_conn_refill(&s->io) <= 0)
				break;
		}
		break;
	case BENCH_OP_SEND:
		bench_conn_on_send(ring, &s->io, cqe->res);
		break;
	default:
		BUG("completion of unknown op %d", (int)bench_ud_op(ud));
	}
	settle(ring, s);
}

/* on_timer - a reconnect delay or rate wait ended (stale ones ignored). */
static void on_timer(struct io_uring *ring, const struct bench_timer *t)
{
	struct session *s = &S.ss[t->idx];

	if (s->io.gen != t->gen || !s->wake_at || bench_now_ns() < s->wake_at ||
	    s->st == S_DONE)
		return;
	s->wake_at = 0;
	if (s->st == S_OFF)
		sess_connect(ring, s);
	else
		settle(ring, s);
}

/* sweep - reply timeouts, once a second. */
static void sweep(struct io_uring *ring, uint64_t now)
{
	uint64_t limit = (uint64_t)(opt.timeout * 1e9);

	for (uint32_t i = 0; i < opt.sessions; i++) {
		struct session *s = &S.ss[i];
		bool waiting = s->st == S_CONNECTING || s->st == S_TLS || s->exp_n;

		if (s->st == S_OFF || s->st == S_DONE || s->io.shut || !waiting)
			continue;
		if (now - s->io.last_io > limit) {
			S.timeouts++;
			bench_conn_abort(&s->io);
			settle(ring, s);
		}
	}
}

/* ---- report ---- */

static double elapsed_s(void)
{
	uint64_t end = S.last_done_ns ? S.last_done_ns : bench_now_ns();

	return (double)(end - S.start_ns) / 1e9;
}

/* report_json - the --json report. */
static void report_json(struct strbuf *o)
{
	char addr[64];
	double el = elapsed_s();

	bench_format_addr(&opt.target, addr, sizeof(addr));
	sb_adds(o, "{\n  \"tool\": \"coremta-bench send\",\n  \"target\": ");
	bench_json_str(o, addr);
	sb_printf(o, ",\n  \"sessions\": %llu, \"messages_planned\": %llu, \"rcpts_per_message\": %llu"
		  ", \"pipelining\": %s, \"bdat\": %s, \"starttls\": %s, \"domains\": %zu",
		  (unsigned long long)opt.sessions, (unsigned long long)opt.messages,
		  (unsigned long long)opt.rcpts, opt.pipelining ? "true" : "false",
		  opt.bdat ? "true" : "false", opt.starttls ? "true" : "false",
		  opt.domains.count);
	sb_adds(o, ",\n  \"duration_s\": ");
	bench_json_num(o, opt.duration);
	sb_adds(o, ", \"rate_cap\": ");
	bench_json_num(o, opt.rate);
	sb_adds(o, ",\n  \"started_unix\": ");
	bench_json_num(o, S.start_wall);
	sb_adds(o, ", \"elapsed_s\": ");
	bench_json_num(o, el);
	sb_printf(o, ",\n  \"attempted\": %llu, \"accepted\": %llu, \"tempfail\": %llu, "
		  "\"permfail\": %llu, \"errors\": %llu, \"rcpts_accepted\": %llu, "
		  "\"rcpts_refused\": %llu, \"bytes\": %llu",
		  (unsigned long long)S.issued, (unsigned long long)S.accepted,
		  (unsigned long long)S.tempfail, (unsigned long long)S.permfail,
		  (unsigned long long)S.errors, (unsigned long long)S.rcpt_ok,
		  (unsigned long long)S.rcpt_refused, (unsigned long long)S.bytes);
	sb_adds(o, ",\n  \"accepted_per_s\": ");
	bench_json_num(o, el > 0 ? (double)S.accepted / el : 0);
	sb_adds(o, ",\n  \"codes\": {");
	for (int c = 0, k = 0; c < 600; c++)
		if (S.codes[c])
			sb_printf(o, "%s\"%d\": %llu", k++ ? ", " : "", c,
				  (unsigned long long)S.codes[c]);
	sb_printf(o, "},\n  \"connections\": {\"opened\": %llu, \"failed\": %llu, "
		  "\"refused\": %llu, \"timeouts\": %llu}",
		  (unsigned long long)S.conns_opened, (unsigned long long)S.conns_failed,
		  (unsigned long long)S.conns_refused, (unsigned long long)S.timeouts);
	sb_adds(o, ",\n  \"latency_ms\": ");
	bench_samples_json(&S.lat, o);
	sb_adds(o, ",\n  \"series\": ");
	bench_series_json(&S.series, o);
	sb_adds(o, ",\n  \"error\": ");
	if (S.fatal_reason)
		bench_json_str(o, S.fatal_reason);
	else
		sb_adds(o, "null");
	sb_adds(o, "\n}\n");
}

/* report_text - the human table on stdout. */
static void report_text(void)
{
	char addr[64];
	double el = elapsed_s();

	bench_format_addr(&opt.target, addr, sizeof(addr));
	printf("send: %s, %llu sessions, pipelining %s, bdat %s, starttls %s, %zu domains\n",
	       addr, (unsigned long long)opt.sessions, opt.pipelining ? "on" : "off",
	       opt.bdat ? "on" : "off", opt.starttls ? "on" : "off", opt.domains.count);
	printf("  %-12s %12s %12s %12s %12s %12s\n", "messages", "attempted", "accepted",
	       "tempfail", "permfail", "errors");
	printf("  %-12s %12llu %12llu %12llu %12llu %12llu\n", "", (unsigned long long)S.issued,
	       (unsigned long long)S.accepted, (unsigned long long)S.tempfail,
	       (unsigned long long)S.permfail, (unsigned long long)S.errors);
	printf("  %-12s %12.3f s  %.1f accepted/s\n", "elapsed", el,
	       el > 0 ? (double)S.accepted / el : 0);
	printf("  %-12s p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms (end of data to reply)\n",
	       "latency", bench_samples_pct(&S.lat, 50) / 1000.0,
	       bench_samples_pct(&S.lat, 90) / 1000.0, bench_samples_pct(&S.lat, 99) / 1000.0,
	       (double)S.lat.max_us / 1000.0);
	printf("  %-12s", "replies");
	for (int c = 0; c < 600; c++)
		if (S.codes[c])
			printf(" %d:%llu", c, (unsigned long long)S.codes[c]);
	printf("\n  %-12s opened %llu, failed %llu, refused %llu, timeouts %llu\n", "connections",
	       (unsigned long long)S.conns_opened, (unsigned long long)S.conns_failed,
	       (unsigned long long)S.conns_refused, (unsigned long long)S.timeouts);
	if (S.fatal_reason)
		printf("  error: %s\n", S.fatal_reason);
	fflush(stdout);
}

/* ---- main ---- */

static void run_loop(void)
{
	struct io_uring *ring = &S.ring;
	uint64_t next_sweep = S.start_ns + 1000000000ULL;
	uint64_t stall = (uint64_t)(opt.stall * 1e9);
	bool stopping = false;

	for (uint32_t i = 0; i < opt.sessions; i++)
		sess_connect(ring, &S.ss[i]);
	while (S.live > 0) {
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
		if (!stopping && stall && now - S.last_progress > stall) {
			fatal("no reply for --stall seconds");
		}
		if (!stopping && (got_signal || S.fatal)) {
			/* Stop now: abort every connection and count what is lost. */
			stopping = true;
			for (uint32_t i = 0; i < opt.sessions; i++) {
				struct session *s = &S.ss[i];

				if (s->st == S_OFF) {
					s->st = S_DONE;
					S.live--;
				} else if (s->st != S_DONE) {
					bench_conn_abort(&s->io);
					settle(ring, s);
				}
			}
			continue;
		}
		if (bench_timer_next(&S.timers) < wake)
			wake = bench_timer_next(&S.timers);
		if (bench_wait(ring, wake > now ? wake - now : 0) < 0)
			break;
		io_uring_for_each_cqe(ring, head, cqe) {
			on_cqe(ring, cqe);
			seen++;
		}
		io_uring_cq_advance(ring, seen);
	}
}

/* setup - sessions, filler, clocks; before the first connect. */
static void setup(void)
{
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	strftime(S.date, sizeof(S.date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	S.ss = xcalloc(opt.sessions, sizeof(*S.ss));
	for (uint32_t i = 0; i < opt.sessions; i++) {
		S.ss[i].io.idx = i;
		S.ss[i].io.fd = -1;
		S.ss[i].rcpt_dom = xcalloc(opt.rcpts, sizeof(uint32_t));
	}
	S.live = (uint32_t)opt.sessions;
	S.rng = opt.seed ? opt.seed : (bench_now_ns() | 1);
	make_filler();
	S.start_ns = bench_now_ns();
	S.start_wall = bench_wall_s();
	S.last_progress = S.start_ns;
	if (opt.duration > 0)
		S.deadline = S.start_ns + (uint64_t)(opt.duration * 1e9);
}

/* teardown - free everything; the ring is already gone. */
static void teardown(void)
{
	for (uint32_t i = 0; i < opt.sessions; i++) {
		free(S.ss[i].exp);
		free(S.ss[i].rcpt_dom);
		if (S.ss[i].io.fd >= 0) {
			S.ss[i].io.recv_busy = S.ss[i].io.send_busy = false;
			bench_conn_release(&S.ss[i].io);
		}
	}
	free(S.ss);
	free(S.filler);
	free(opt.binds);
	bench_wlist_free(&opt.sizes);
	bench_wlist_free(&opt.domains);
	bench_series_free(&S.series);
	bench_samples_free(&S.lat);
	bench_timers_free(&S.timers);
}

int bench_send_main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct strbuf js = { 0 };
	char err[256];
	int rc;

	rc = parse_options(argc, argv);
	if (rc)
		return rc > 0 ? 0 : 2;
	if (opt.starttls && bench_tls_setup(false, NULL, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "send: TLS: %s\n", err);
		return 1;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	rc = bench_ring_init(&S.ring, 4096);
	if (rc < 0) {
		fprintf(stderr, "send: io_uring: %s\n", strerror(-rc));
		return 1;
	}
	setup();
	run_loop();
	io_uring_queue_exit(&S.ring);
	rc = 0;
	if (opt.json) {
		report_json(&js);
		rc = bench_write_file(opt.json, js.buf, js.len);
		if (rc < 0)
			fprintf(stderr, "send: cannot write %s: %s\n", opt.json, strerror(-rc));
		sb_free(&js);
	}
	if (!opt.quiet)
		report_text();
	teardown();
	if (opt.starttls)
		bench_tls_teardown();
	if (S.fatal_reason)
		fprintf(stderr, "send: %s\n", S.fatal_reason);
	return rc < 0 || S.fatal ? 1 : 0;
}
