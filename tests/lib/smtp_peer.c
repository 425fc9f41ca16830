/*
 * tests/lib/smtp_peer.c - the scripted SMTP receiver (smtp_peer.h).
 *
 * One acceptor thread plus one thread per connection.  A thread per
 * connection keeps the protocol code straight-line (a delay is a sleep,
 * a reply is a blocking write) at a cost that does not matter in tests.
 * Every blocking point polls the peer's stop eventfd as well, which
 * smtp_peer_stop() makes readable for good, so each thread notices and
 * returns and can be joined.  Sockets are non-blocking for that reason.
 *
 * The peer's lock guards the counters, the records, the rule counters,
 * the RNG, the rate windows and the connection list; everything in a
 * struct conn besides `done` belongs to its thread.  Records are
 * published fully built and never change, so getters hand out pointers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/hash.h"
#include "util/util.h"

#include "tests/lib/smtp_peer.h"

/* Input buffer per connection; command lines longer than LINE_MAX fail. */
#define IN_CAP (128 * 1024)
#define LINE_MAX_LEN (64 * 1024)
/* A DATA line this long without CRLF is taken in pieces. */
#define DATA_PIECE (32 * 1024)
#define BODY_KEEP_DEFAULT (1024 * 1024)

struct rule {
	struct smtp_peer_rule r;	/* match and reply point at copies */
	unsigned long seen;		/* under p->lock */
};

/* The last max_msg_rate accepted MAILs of one client IP. */
struct rate_ip {
	char ip[46];
	int64_t *ring;
	size_t head;
	size_t n;
};

struct smtp_peer {
	/* Set before the acceptor starts, then read-only. */
	char *addr;
	char *hostname;
	char *busy_reply;
	char *rate_reply;
	unsigned caps;
	size_t size_limit;
	unsigned max_conns;
	unsigned max_msg_rate;
	unsigned max_rcpt;
	size_t body_keep;
	bool no_log;
	struct rule *rules;
	size_t nrules;
	int lfd;
	int stopfd;
	int port;
	pthread_t acceptor;

	pthread_mutex_t lock;
	pthread_cond_t cond;	/* any record or counter changed */
	bool stopped;
	uint64_t rng;
	struct conn *conns;
	unsigned last_conn;
	struct smtp_peer_stats st;
	struct smtp_peer_msg **msgs;
	size_t nmsgs;
	size_t msgs_cap;
	struct smtp_peer_cmd_rec **log;
	size_t nlog;
	size_t log_cap;
	struct rate_ip *rips;
	size_t nrips;
};

enum mode { MODE_CMD, MODE_DATA, MODE_BDAT };

struct conn {
	struct smtp_peer *p;
	struct conn *next;	/* p->conns, under p->lock */
	pthread_t thread;
	bool done;		/* under p->lock: the thread is about to return */
	int fd;
	unsigned id;
	char ip[46];
	unsigned long *seen;	/* per-connection rule counters */

	char *in;
	size_t in_off;		/* first unprocessed byte */
	size_t in_len;
	unsigned read_no;
	enum mode mode;
	bool closing;
	bool abrupt;		/* a rule's disconnect: no lingering close */
	bool refused;		/* greeted with a non-2xx: only QUIT works */
	char *helo;

	/* The transaction. */
	bool txn;
	char *mail_from;
	char *mail_params;
	char **rcpts;
	char **rcpt_params;
	size_t nrcpt;
	size_t rcpt_cap;
	struct strbuf body;
	size_t size;
	uint64_t hash;
	bool data_bol;		/* the next DATA byte starts a line */
	bool bdat_used;
	bool bdat_failed;	/* a chunk was refused: the rest are too */
	unsigned chunks;
	unsigned msgs;

	/* The BDAT chunk being read. */
	char *bdat_line;
	unsigned bdat_read_no;
	uint64_t bdat_left;
	bool bdat_last;
	bool bdat_ok;		/* its bytes belong to the message */
};

static const char *const cmd_names[SMTP_PEER_CMD_COUNT] = {
	[SMTP_PEER_NONE] = "NONE", [SMTP_PEER_CONNECT] = "CONNECT",
	[SMTP_PEER_EHLO] = "EHLO", [SMTP_PEER_MAIL] = "MAIL",
	[SMTP_PEER_RCPT] = "RCPT", [SMTP_PEER_DATA] = "DATA",
	[SMTP_PEER_DATA_END] = "DATA_END", [SMTP_PEER_BDAT] = "BDAT",
	[SMTP_PEER_RSET] = "RSET", [SMTP_PEER_NOOP] = "NOOP",
	[SMTP_PEER_QUIT] = "QUIT", [SMTP_PEER_STARTTLS] = "STARTTLS",
	[SMTP_PEER_OTHER] = "OTHER",
};

const char *smtp_peer_cmd_name(enum smtp_peer_cmd cmd)
{
	return (unsigned)cmd < SMTP_PEER_CMD_COUNT ? cmd_names[cmd] : "?";
}

uint64_t smtp_peer_hash(const void *data, size_t len)
{
	return hash_bytes(HASH_SEED, data, len);
}

/* now_ns - CLOCK_MONOTONIC in ns, the clock of every timestamp here. */
static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ci_contains - whether hay holds needle, ASCII case ignored. */
static bool ci_contains(const char *hay, size_t len, const char *needle)
{
	size_t nl = strlen(needle);

	if (nl == 0)
		return true;
	for (size_t i = 0; i + nl <= len; i++)
		if (strncasecmp(hay + i, needle, nl) == 0)
			return true;
	return false;
}

/* reply_code - the three digits a reply starts with, 0 if it does not. */
static int reply_code(const char *r)
{
	if (r[0] < '0' || r[0] > '9' || r[1] < '0' || r[1] > '9' ||
	    r[2] < '0' || r[2] > '9')
		return 0;
	return (r[0] - '0') * 100 + (r[1] - '0') * 10 + (r[2] - '0');
}

/* rng_double - [0, 1) from xorshift64*; caller holds p->lock. */
static double rng_double(struct smtp_peer *p)
{
	p->rng ^= p->rng >> 12;
	p->rng ^= p->rng << 25;
	p->rng ^= p->rng >> 27;
	return (double)((p->rng * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

/* ---- waiting and writing on a connection ---------------------------- */

/*
 * conn_wait - wait for events on the socket.  1: ready (or an error
 * the next syscall will report); -1: the peer is stopping.
 */
static int conn_wait(struct conn *c, short events)
{
	struct pollfd pf[2] = {
		{ .fd = c->fd, .events = events },
		{ .fd = c->p->stopfd, .events = POLLIN },
	};

	for (;;) {
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (pf[1].revents)
			return -1;
		if (pf[0].revents)
			return 1;
	}
}

/* peer_sleep - wait ms unless the peer stops first (then -1). */
static int peer_sleep(struct smtp_peer *p, unsigned ms)
{
	int64_t end = now_ns() + (int64_t)ms * 1000000;
	struct pollfd pf = { .fd = p->stopfd, .events = POLLIN };

	for (;;) {
		int64_t left = (end - now_ns() + 999999) / 1000000;
		int r;

		if (left <= 0)
			return 0;
		r = poll(&pf, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return -1;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

/* conn_send - write all of buf; -1 when the client or the peer is gone. */
static int conn_send(struct conn *c, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);

		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (conn_wait(c, POLLOUT) < 0)
				return -1;
		} else {
			return -1;
		}
	}
	return 0;
}

/* ---- records -------------------------------------------------------- */

/* log_reply - count (and unless no_log, record) one reply. */
static void log_reply(struct conn *c, enum smtp_peer_cmd cmd, const char *line,
		      unsigned read_no, const char *reply, int code)
{
	struct smtp_peer *p = c->p;
	struct smtp_peer_cmd_rec *rec = NULL;

	if (!p->no_log) {
		rec = xcalloc(1, sizeof(*rec));
		rec->conn = c->id;
		rec->read_no = read_no;
		rec->cmd = cmd;
		rec->line = xstrdup(line);
		rec->reply = xstrdup(reply);
		rec->code = code;
		rec->t_ns = now_ns();
	}
	pthread_mutex_lock(&p->lock);
	p->st.commands++;
	if (rec) {
		if (p->nlog == p->log_cap) {
			p->log_cap = p->log_cap ? 2 * p->log_cap : 64;
			p->log = xrealloc(p->log, p->log_cap * sizeof(*p->log));
		}
		p->log[p->nlog++] = rec;
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

/*
 * conn_reply - send reply ('\n'-separated lines) with CRLFs.  A 421
 * closes the connection, as RFC 5321 says it does.
 */
static void conn_reply(struct conn *c, const char *reply)
{
	struct strbuf out = { 0 };

	for (const char *s = reply; *s;) {
		const char *nl = strchr(s, '\n');
		size_t n = nl ? (size_t)(nl - s) : strlen(s);

		sb_add(&out, s, n);
		sb_add(&out, "\r\n", 2);
		s += n + (nl != NULL);
	}
	if (conn_send(c, sb_str(&out), out.len) < 0 || reply_code(reply) == 421)
		c->closing = true;
	sb_free(&out);
}

/*
 * conn_answer - record, then reply.  Recording first means a test that
 * has read the reply finds it logged.
 */
static void conn_answer(struct conn *c, enum smtp_peer_cmd cmd,
			const char *line, unsigned read_no, const char *reply)
{
	log_reply(c, cmd, line, read_no, reply, reply_code(reply));
	conn_reply(c, reply);
}

/* conn_drop - a rule's disconnect: record it and close (RST on request). */
static void conn_drop(struct conn *c, const struct smtp_peer_rule *r,
		      enum smtp_peer_cmd cmd, const char *line,
		      unsigned read_no)
{
	log_reply(c, cmd, line, read_no, "", 0);
	if (r->reset) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	c->closing = true;
	c->abrupt = true;
}

/* ---- rules ---------------------------------------------------------- */

/* in_window - whether the nth matching occurrence is one r fires on. */
static bool in_window(const struct smtp_peer_rule *r, unsigned long n)
{
	unsigned long first = r->nth ? r->nth : 1;
	unsigned long count = r->times ? r->times : r->nth ? 1 : ULONG_MAX;

	return n >= first && n - first < count;
}

/*
 * conn_pick - count this occurrence of cmd for every rule that matches
 * arg, and return the first rule that fires (or NULL).  Every matching
 * rule counts, fired or not, so "the nth RCPT" means the same thing
 * whatever other rules say.
 */
static const struct smtp_peer_rule *conn_pick(struct conn *c,
					      enum smtp_peer_cmd cmd,
					      const char *arg, size_t arglen)
{
	struct smtp_peer *p = c->p;
	const struct smtp_peer_rule *chosen = NULL;

	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->nrules; i++) {
		struct rule *ru = &p->rules[i];
		const struct smtp_peer_rule *r = &ru->r;
		unsigned long n;

		if (r->cmd != cmd)
			continue;
		if (r->match && !ci_contains(arg, arglen, r->match))
			continue;
		n = r->per_connection ? ++c->seen[i] : ++ru->seen;
		if (!in_window(r, n))
			continue;
		if (r->probability > 0 && r->probability < 1 &&
		    rng_double(p) >= r->probability)
			continue;
		if (!chosen)
			chosen = r;
	}
	pthread_mutex_unlock(&p->lock);
	return chosen;
}

/*
 * conn_prelude - a chosen rule's delay and disconnect.  Returns true
 * when the command is still to be answered.
 */
static bool conn_prelude(struct conn *c, const struct smtp_peer_rule *r,
			 enum smtp_peer_cmd cmd, const char *line,
			 unsigned read_no)
{
	if (!r)
		return true;
	if (r->delay_ms && peer_sleep(c->p, r->delay_ms) < 0) {
		c->closing = true;
		return false;
	}
	if (r->disconnect) {
		conn_drop(c, r, cmd, line, read_no);
		return false;
	}
	return true;
}

/* ---- the transaction ------------------------------------------------ */

/* txn_reset - forget the transaction (RSET, EHLO, end of message). */
static void txn_reset(struct conn *c)
{
	free(c->mail_from);
	free(c->mail_params);
	c->mail_from = NULL;
	c->mail_params = NULL;
	for (size_t i = 0; i < c->nrcpt; i++) {
		free(c->rcpts[i]);
		free(c->rcpt_params[i]);
	}
	c->nrcpt = 0;
	sb_reset(&c->body);
	c->size = 0;
	c->hash = smtp_peer_hash("", 0);
	c->txn = false;
	c->bdat_used = false;
	c->bdat_failed = false;
	c->chunks = 0;
}

/* body_add - append message bytes: counted and hashed, kept up to the cap. */
static void body_add(struct conn *c, const char *s, size_t n)
{
	size_t keep = c->p->body_keep;

	c->hash = hash_bytes(c->hash, s, n);
	c->size += n;
	if (c->body.len < keep)
		sb_add(&c->body, s, n < keep - c->body.len ? n : keep - c->body.len);
}

/* conn_publish - the transaction became an accepted message. */
static void conn_publish(struct conn *c)
{
	struct smtp_peer *p = c->p;
	struct smtp_peer_msg *m = xcalloc(1, sizeof(*m));

	m->conn = c->id;
	memcpy(m->client_ip, c->ip, sizeof(m->client_ip));
	m->helo = xstrdup(c->helo ? c->helo : "");
	m->mail_from = c->mail_from;
	m->mail_params = c->mail_params;
	c->mail_from = NULL;
	c->mail_params = NULL;
	m->nrcpt = c->nrcpt;
	m->rcpts = xcalloc(c->nrcpt + 1, sizeof(char *));
	m->rcpt_params = xcalloc(c->nrcpt + 1, sizeof(char *));
	memcpy(m->rcpts, c->rcpts, c->nrcpt * sizeof(char *));
	memcpy(m->rcpt_params, c->rcpt_params, c->nrcpt * sizeof(char *));
	c->nrcpt = 0;
	m->body_len = c->body.len;
	m->body = sb_detach(&c->body);
	m->size = c->size;
	m->hash = c->hash;
	m->bdat = c->bdat_used;
	m->chunks = c->chunks;
	m->t_ns = now_ns();

	pthread_mutex_lock(&p->lock);
	if (p->nmsgs == p->msgs_cap) {
		p->msgs_cap = p->msgs_cap ? 2 * p->msgs_cap : 64;
		p->msgs = xrealloc(p->msgs, p->msgs_cap * sizeof(*p->msgs));
	}
	p->msgs[p->nmsgs++] = m;
	p->st.messages++;
	p->st.messages_bdat += m->bdat;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

/* count_rejected - an end of data that did not end in a 2xx. */
static void count_rejected(struct smtp_peer *p)
{
	pthread_mutex_lock(&p->lock);
	p->st.messages_rejected++;
	pthread_mutex_unlock(&p->lock);
}

/*
 * rate_take - the sliding one-second window of this client IP: take a
 * slot and return true, or return false when it is full.
 */
static bool rate_take(struct conn *c)
{
	struct smtp_peer *p = c->p;
	size_t cap = p->max_msg_rate;
	struct rate_ip *ri = NULL;
	int64_t now = now_ns();
	bool ok = true;

	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->nrips && !ri; i++)
		if (strcmp(p->rips[i].ip, c->ip) == 0)
			ri = &p->rips[i];
	if (!ri) {
		p->rips = xrealloc(p->rips, (p->nrips + 1) * sizeof(*p->rips));
		ri = &p->rips[p->nrips++];
		memset(ri, 0, sizeof(*ri));
		memcpy(ri->ip, c->ip, sizeof(ri->ip));
		ri->ring = xcalloc(cap, sizeof(*ri->ring));
	}
	if (ri->n < cap) {
		ri->ring[(ri->head + ri->n++) % cap] = now;
	} else if (now - ri->ring[ri->head] >= 1000000000) {
		ri->ring[ri->head] = now;
		ri->head = (ri->head + 1) % cap;
	} else {
		p->st.rate_limited++;
		ok = false;
	}
	pthread_mutex_unlock(&p->lock);
	return ok;
}

/*
 * check_params - the ESMTP parameters of MAIL (is_mail) or RCPT against
 * what was advertised.  NULL when fine, else the reply.
 */
static const char *check_params(struct conn *c, const char *params,
				bool is_mail, size_t *size_out)
{
	unsigned caps = c->p->caps;
	const char *s = params;

	while (*s) {
		size_t n = strcspn(s, " ");
		size_t kl = strcspn(s, "= ");
		const char *v = s + kl + (kl < n);	/* after '=' */
		bool ok;

#define KEY(k) (kl == strlen(k) && strncasecmp(s, k, kl) == 0)
		if (is_mail && KEY("SIZE")) {
			ok = caps & SMTP_PEER_CAP_SIZE;
			if (ok && size_out)
				*size_out = strtoull(v, NULL, 10);
		} else if (is_mail && KEY("BODY")) {
			ok = (caps & SMTP_PEER_CAP_8BITMIME) &&
			     (strncasecmp(v, "7BIT", 4) == 0 ||
			      strncasecmp(v, "8BITMIME", 8) == 0);
		} else if (is_mail && (KEY("RET") || KEY("ENVID"))) {
			ok = caps & SMTP_PEER_CAP_DSN;
		} else if (is_mail && KEY("SMTPUTF8")) {
			ok = caps & SMTP_PEER_CAP_SMTPUTF8;
		} else if (!is_mail && (KEY("NOTIFY") || KEY("ORCPT"))) {
			ok = caps & SMTP_PEER_CAP_DSN;
		} else {
			ok = false;
		}
#undef KEY
		if (!ok)
			return "555 5.5.4 unsupported parameter";
		s += n;
		while (*s == ' ')
			s++;
	}
	return NULL;
}

/*
 * parse_path - "FROM:<addr> params" (kw "FROM:") into copies of addr and
 * params.  False on bad syntax.
 */
static bool parse_path(const char *arg, const char *kw, char **addr,
		       char **params)
{
	size_t kl = strlen(kw);
	const char *end;

	if (strncasecmp(arg, kw, kl) != 0)
		return false;
	arg += kl;
	while (*arg == ' ')
		arg++;
	if (*arg != '<' || !(end = strchr(arg, '>')))
		return false;
	*addr = xstrndup(arg + 1, (size_t)(end - arg - 1));
	end++;
	while (*end == ' ')
		end++;
	*params = xstrdup(end);
	return true;
}

/* ---- commands ------------------------------------------------------- */

/* ehlo_reply - the greeting line and the advertised keywords. */
static char *ehlo_reply(struct conn *c, const char *name, bool ehlo)
{
	struct smtp_peer *p = c->p;
	const char *kw[8];
	size_t n = 0;
	char size_kw[40];
	struct strbuf sb = { 0 };

	if (!ehlo)
		return xasprintf("250 %s", p->hostname);
	if (p->caps & SMTP_PEER_CAP_PIPELINING)
		kw[n++] = "PIPELINING";
	if (p->caps & SMTP_PEER_CAP_SIZE) {
		snprintf(size_kw, sizeof(size_kw), "SIZE %zu", p->size_limit);
		kw[n++] = size_kw;
	}
	if (p->caps & SMTP_PEER_CAP_8BITMIME)
		kw[n++] = "8BITMIME";
	if (p->caps & SMTP_PEER_CAP_CHUNKING)
		kw[n++] = "CHUNKING";
	if (p->caps & SMTP_PEER_CAP_DSN)
		kw[n++] = "DSN";
	if (p->caps & SMTP_PEER_CAP_ENHANCEDSTATUSCODES)
		kw[n++] = "ENHANCEDSTATUSCODES";
	if (p->caps & SMTP_PEER_CAP_SMTPUTF8)
		kw[n++] = "SMTPUTF8";
	if (p->caps & SMTP_PEER_CAP_STARTTLS)
		kw[n++] = "STARTTLS";
	sb_printf(&sb, "250%c%s greets %s", n ? '-' : ' ', p->hostname, name);
	for (size_t i = 0; i < n; i++)
		sb_printf(&sb, "\n250%c%s", i + 1 < n ? '-' : ' ', kw[i]);
	return sb_detach(&sb);
}

/* cmd_mail - MAIL FROM: sequence, syntax, parameters, size, rate. */
static void cmd_mail(struct conn *c, const char *line, const char *arg,
		     unsigned read_no)
{
	const struct smtp_peer_rule *r = conn_pick(c, SMTP_PEER_MAIL, arg,
						   strlen(arg));
	char *from = NULL, *params = NULL;
	const char *dflt;
	const char *reply;
	size_t size = 0;
	bool parsed;

	if (!conn_prelude(c, r, SMTP_PEER_MAIL, line, read_no))
		return;
	parsed = parse_path(arg, "FROM:", &from, &params);
	if (c->refused)
		dflt = "503 5.5.1 no SMTP service here";
	else if (!c->helo)
		dflt = "503 5.5.1 send EHLO first";
	else if (c->txn)
		dflt = "503 5.5.1 nested MAIL command";
	else if (!parsed)
		dflt = "501 5.5.4 syntax: MAIL FROM:<address>";
	else if ((dflt = check_params(c, params, true, &size)))
		;
	else if (c->p->size_limit && size > c->p->size_limit)
		dflt = "552 5.3.4 message size exceeds fixed limit";
	else
		dflt = NULL;
	if (r && r->reply)
		reply = r->reply;
	else if (dflt)
		reply = dflt;
	else if (c->p->max_msg_rate && !rate_take(c))
		reply = c->p->rate_reply;
	else
		reply = "250 2.1.0 Ok";
	if (reply_code(reply) / 100 == 2 && parsed) {
		txn_reset(c);
		c->txn = true;
		c->mail_from = from;
		c->mail_params = params;
		from = params = NULL;
	}
	free(from);
	free(params);
	conn_answer(c, SMTP_PEER_MAIL, line, read_no, reply);
}

/* cmd_rcpt - RCPT TO: one recipient; a 2xx reply adds it. */
static void cmd_rcpt(struct conn *c, const char *line, const char *arg,
		     unsigned read_no)
{
	const struct smtp_peer_rule *r = conn_pick(c, SMTP_PEER_RCPT, arg,
						   strlen(arg));
	char *to = NULL, *params = NULL;
	const char *dflt;
	bool parsed;

	if (!conn_prelude(c, r, SMTP_PEER_RCPT, line, read_no))
		return;
	parsed = parse_path(arg, "TO:", &to, &params);
	if (c->refused)
		dflt = "503 5.5.1 no SMTP service here";
	else if (!c->txn)
		dflt = "503 5.5.1 need MAIL first";
	else if (!parsed || !*to)
		dflt = "501 5.5.4 syntax: RCPT TO:<address>";
	else if ((dflt = check_params(c, params, false, NULL)))
		;
	else if (c->p->max_rcpt && c->nrcpt >= c->p->max_rcpt)
		dflt = "452 4.5.3 too many recipients";
	else
		dflt = "250 2.1.5 Ok";
	if (r && r->reply)
		dflt = r->reply;
	if (reply_code(dflt) / 100 == 2 && parsed && c->txn) {
		if (c->nrcpt == c->rcpt_cap) {
			c->rcpt_cap = c->rcpt_cap ? 2 * c->rcpt_cap : 8;
			c->rcpts = xrealloc(c->rcpts, c->rcpt_cap * sizeof(char *));
			c->rcpt_params = xrealloc(c->rcpt_params,
						  c->rcpt_cap * sizeof(char *));
		}
		c->rcpts[c->nrcpt] = to;
		c->rcpt_params[c->nrcpt++] = params;
		to = params = NULL;
	}
	free(to);
	free(params);
	conn_answer(c, SMTP_PEER_RCPT, line, read_no, dflt);
}

/* txn_check - why a message cannot start now (NULL: it can). */
static const char *txn_check(struct conn *c)
{
	if (c->refused)
		return "503 5.5.1 no SMTP service here";
	if (!c->txn)
		return "503 5.5.1 need MAIL first";
	if (c->nrcpt == 0)
		return "554 5.5.1 no valid recipients";
	return NULL;
}

/* cmd_data - DATA: a 354 with a transaction switches to body input. */
static void cmd_data(struct conn *c, const char *line, const char *arg,
		     unsigned read_no)
{
	const struct smtp_peer_rule *r = conn_pick(c, SMTP_PEER_DATA, arg,
						   strlen(arg));
	const char *reply = txn_check(c);

	if (!conn_prelude(c, r, SMTP_PEER_DATA, line, read_no))
		return;
	if (!reply && c->bdat_used)
		reply = "503 5.5.1 DATA after BDAT";
	if (!reply && *arg)
		reply = "501 5.5.4 DATA takes no argument";
	if (!reply)
		reply = "354 End data with <CR><LF>.<CR><LF>";
	if (r && r->reply)
		reply = r->reply;
	/* Only a real transaction takes a body; a scripted 354 without one
	 * leaves the client's body to be read as commands, as a real
	 * server would. */
	if (reply_code(reply) == 354 && !txn_check(c) && !c->bdat_used) {
		c->mode = MODE_DATA;
		c->data_bol = true;
	}
	conn_answer(c, SMTP_PEER_DATA, line, read_no, reply);
}

/*
 * message_end - the end of DATA, or the BDAT LAST chunk has been read:
 * accept or refuse the message, reply, and start over.  rb is the BDAT
 * rule already chosen for the LAST chunk.
 */
static void message_end(struct conn *c, enum smtp_peer_cmd cmd,
			const char *line, unsigned read_no,
			const struct smtp_peer_rule *rb)
{
	const struct smtp_peer_rule *r = conn_pick(c, SMTP_PEER_DATA_END,
						   sb_str(&c->body),
						   c->body.len);
	char *dflt;
	const char *reply;

	if (rb)
		r = rb;
	if (!conn_prelude(c, r, cmd, line, read_no)) {
		count_rejected(c->p);
		txn_reset(c);
		return;
	}
	if (c->p->size_limit && c->size > c->p->size_limit)
		dflt = xstrdup("552 5.3.4 message size exceeds fixed limit");
	else
		dflt = xasprintf("250 2.0.0 Ok: %zu octets, queued as %u.%u",
				 c->size, c->id, ++c->msgs);
	reply = r && r->reply ? r->reply : dflt;
	/* Logged, then published, then sent: whoever waited for the
	 * message or read the reply finds both records. */
	log_reply(c, cmd, line, read_no, reply, reply_code(reply));
	if (reply_code(reply) / 100 == 2)
		conn_publish(c);
	else
		count_rejected(c->p);
	txn_reset(c);
	conn_reply(c, reply);
	free(dflt);
}

/* cmd_bdat - parse "BDAT n [LAST]" and start reading the chunk. */
static void cmd_bdat(struct conn *c, const char *line, const char *arg,
		     unsigned read_no)
{
	char *end;
	unsigned long long n;

	errno = 0;
	n = strtoull(arg, &end, 10);
	if (*arg < '0' || *arg > '9' || errno ||
	    (*end && *end != ' ') ||
	    (*end && strcasecmp(end + strspn(end, " "), "LAST") != 0)) {
		const struct smtp_peer_rule *r =
			conn_pick(c, SMTP_PEER_BDAT, arg, strlen(arg));

		/* The chunk size is unknown: nothing to skip; a real
		 * server loses sync here too. */
		if (conn_prelude(c, r, SMTP_PEER_BDAT, line, read_no))
			conn_answer(c, SMTP_PEER_BDAT, line, read_no,
				    r && r->reply ? r->reply :
				    "501 5.5.4 syntax: BDAT <size> [LAST]");
		return;
	}
	c->mode = MODE_BDAT;
	c->bdat_left = n;
	c->bdat_last = *end != '\0';
	c->bdat_line = xstrdup(line);
	c->bdat_read_no = read_no;
	/* Decided now: nothing else happens on this connection until the
	 * chunk has been read. */
	c->bdat_ok = (c->p->caps & SMTP_PEER_CAP_CHUNKING) && !txn_check(c) &&
		     !c->bdat_failed;
	if (c->bdat_ok) {
		c->bdat_used = true;
		c->chunks++;
	}
}

/* bdat_done - the chunk has been read: answer it. */
static void bdat_done(struct conn *c)
{
	const char *line = c->bdat_line;
	const char *arg = line + 5;
	unsigned read_no = c->bdat_read_no;
	const struct smtp_peer_rule *r = conn_pick(c, SMTP_PEER_BDAT, arg,
						   strlen(arg));
	const char *dflt = NULL;
	char *ok = NULL;

	c->mode = MODE_CMD;
	if (!(c->p->caps & SMTP_PEER_CAP_CHUNKING))
		dflt = "500 5.5.1 BDAT not offered";
	else if (c->bdat_failed)
		dflt = "503 5.5.1 an earlier chunk failed, send RSET";
	else
		dflt = txn_check(c);
	if (!dflt && c->bdat_last) {
		message_end(c, SMTP_PEER_BDAT, line, read_no, r);
		goto out;
	}
	if (!conn_prelude(c, r, SMTP_PEER_BDAT, line, read_no))
		goto out;
	if (!dflt)
		dflt = ok = xasprintf("250 2.0.0 %zu octets received", c->size);
	if (r && r->reply)
		dflt = r->reply;
	if (reply_code(dflt) / 100 != 2 && c->txn)
		c->bdat_failed = true;
	conn_answer(c, SMTP_PEER_BDAT, line, read_no, dflt);
out:
	free(ok);
	free(c->bdat_line);
	c->bdat_line = NULL;
}

/* cmd_simple - a command whose reply changes nothing but the mode. */
static void cmd_simple(struct conn *c, enum smtp_peer_cmd cmd,
		       const char *line, const char *arg, unsigned read_no,
		       const char *dflt)
{
	const struct smtp_peer_rule *r = conn_pick(c, cmd, arg, strlen(arg));

	if (!conn_prelude(c, r, cmd, line, read_no))
		return;
	if (c->refused && cmd != SMTP_PEER_QUIT)
		dflt = "503 5.5.1 no SMTP service here";
	conn_answer(c, cmd, line, read_no, r && r->reply ? r->reply : dflt);
}

/* conn_command - one command line (CRLF stripped). */
static void conn_command(struct conn *c, char *line, unsigned read_no)
{
	size_t vl = strcspn(line, " ");
	const char *arg = line + vl + strspn(line + vl, " ");

#define VERB(v) (vl == strlen(v) && strncasecmp(line, v, vl) == 0)
	if (VERB("EHLO") || VERB("HELO")) {
		bool ehlo = VERB("EHLO");
		const struct smtp_peer_rule *r =
			conn_pick(c, SMTP_PEER_EHLO, arg, strlen(arg));
		char *dflt;
		const char *reply;

		if (!conn_prelude(c, r, SMTP_PEER_EHLO, line, read_no))
			return;
		if (c->refused)
			dflt = xstrdup("503 5.5.1 no SMTP service here");
		else if (!*arg)
			dflt = xasprintf("501 5.5.4 syntax: %s hostname",
					 ehlo ? "EHLO" : "HELO");
		else
			dflt = ehlo_reply(c, arg, ehlo);
		reply = r && r->reply ? r->reply : dflt;
		if (reply_code(reply) / 100 == 2 && *arg) {
			/* A new EHLO resets the session (RFC 5321 4.1.4). */
			txn_reset(c);
			free(c->helo);
			c->helo = xstrdup(arg);
		}
		conn_answer(c, SMTP_PEER_EHLO, line, read_no, reply);
		free(dflt);
	} else if (VERB("MAIL")) {
		cmd_mail(c, line, arg, read_no);
	} else if (VERB("RCPT")) {
		cmd_rcpt(c, line, arg, read_no);
	} else if (VERB("DATA")) {
		cmd_data(c, line, arg, read_no);
	} else if (VERB("BDAT") && !c->refused) {
		cmd_bdat(c, line, arg, read_no);
	} else if (VERB("RSET")) {
		txn_reset(c);
		cmd_simple(c, SMTP_PEER_RSET, line, arg, read_no, "250 2.0.0 Ok");
	} else if (VERB("NOOP")) {
		cmd_simple(c, SMTP_PEER_NOOP, line, arg, read_no, "250 2.0.0 Ok");
	} else if (VERB("QUIT")) {
		cmd_simple(c, SMTP_PEER_QUIT, line, arg, read_no,
			   "221 2.0.0 Bye");
		c->closing = true;
	} else if (VERB("STARTTLS")) {
		cmd_simple(c, SMTP_PEER_STARTTLS, line, arg, read_no,
			   c->p->caps & SMTP_PEER_CAP_STARTTLS ?
			   "454 4.7.0 TLS not available" :
			   "502 5.5.1 STARTTLS not offered");
	} else if (VERB("VRFY")) {
		cmd_simple(c, SMTP_PEER_OTHER, line, arg, read_no,
			   "252 2.0.0 cannot verify");
	} else {
		cmd_simple(c, SMTP_PEER_OTHER, line, arg, read_no,
			   "500 5.5.2 command unrecognized");
	}
#undef VERB
}

/* ---- input ---------------------------------------------------------- */

/*
 * data_step - take DATA lines from the buffer, unstuffing dots, until
 * the CRLF.CRLF end (true) or the input runs out (false).  Only CRLF ends
 * a line: a bare LF is body, so "\n.\n" never ends a message.
 */
static bool data_step(struct conn *c)
{
	while (c->in_off < c->in_len) {
		char *s = c->in + c->in_off;
		size_t avail = c->in_len - c->in_off;
		char *crlf = memmem(s, avail, "\r\n", 2);
		size_t n;

		if (!crlf) {
			/* A huge line goes in pieces; keep a last '\r'
			 * that may start the CRLF. */
			if (avail < DATA_PIECE)
				return false;
			n = avail - 1;
			if (c->data_bol && s[0] == '.')
				body_add(c, s + 1, n - 1);
			else
				body_add(c, s, n);
			c->data_bol = false;
			c->in_off += n;
			continue;
		}
		n = (size_t)(crlf - s) + 2;
		c->in_off += n;
		if (c->data_bol && n == 3 && s[0] == '.')
			return true;
		if (c->data_bol && s[0] == '.')
			body_add(c, s + 1, n - 1);
		else
			body_add(c, s, n);
		c->data_bol = true;
	}
	return false;
}

/* conn_process - act on every complete unit of input in the buffer. */
static void conn_process(struct conn *c)
{
	while (!c->closing) {
		char *s = c->in + c->in_off;
		size_t avail = c->in_len - c->in_off;

		if (c->mode == MODE_DATA) {
			if (!data_step(c))
				return;
			c->mode = MODE_CMD;
			message_end(c, SMTP_PEER_DATA_END, ".", c->read_no, NULL);
		} else if (c->mode == MODE_BDAT) {
			size_t n = avail < c->bdat_left ? avail : c->bdat_left;

			if (c->bdat_ok)
				body_add(c, s, n);
			c->in_off += n;
			c->bdat_left -= n;
			if (c->bdat_left > 0)
				return;
			bdat_done(c);
		} else {
			char *nl = memchr(s, '\n', avail);
			size_t len;

			if (!nl) {
				if (avail > LINE_MAX_LEN) {
					conn_answer(c, SMTP_PEER_OTHER, "", c->read_no,
						    "500 5.5.2 line too long");
					c->closing = true;
				}
				return;
			}
			len = (size_t)(nl - s);
			c->in_off += len + 1;
			if (len > 0 && s[len - 1] == '\r') {
				len--;
			} else {
				pthread_mutex_lock(&c->p->lock);
				c->p->st.bare_lf++;
				pthread_mutex_unlock(&c->p->lock);
			}
			s[len] = '\0';
			conn_command(c, s, c->read_no);
		}
	}
}

/* conn_read - one read() into the buffer: >0 bytes, 0 EOF, -1 stop/error. */
static ssize_t conn_read(struct conn *c)
{
	ssize_t n;

	if (c->in_off > 0) {
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	BUG_ON(c->in_len >= IN_CAP);
	for (;;) {
		n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
		if (n > 0) {
			c->in_len += (size_t)n;
			c->read_no++;
			return n;
		}
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (conn_wait(c, POLLIN) < 0)
			return -1;
	}
}

/* conn_greet - the greeting, or a scripted refusal or silence. */
static void conn_greet(struct conn *c)
{
	const struct smtp_peer_rule *r = conn_pick(c, SMTP_PEER_CONNECT, c->ip,
						   strlen(c->ip));
	char *dflt;
	const char *reply;

	if (!conn_prelude(c, r, SMTP_PEER_CONNECT, c->ip, 0))
		return;
	dflt = xasprintf("220 %s ESMTP coremta smtp_peer", c->p->hostname);
	reply = r && r->reply ? r->reply : dflt;
	/* RFC 5321 3.1: after a 554 greeting only QUIT is served. */
	if (reply_code(reply) / 100 != 2)
		c->refused = true;
	conn_answer(c, SMTP_PEER_CONNECT, c->ip, 0, reply);
	free(dflt);
}

/*
 * linger_close - after a last reply (421, 221), half-close and drain
 * what the client still sends for a while: closing with unread input
 * makes the kernel send an RST, which can destroy the reply before the
 * client reads it, and tests would then flake on the 421 they assert.
 */
static void linger_close(struct conn *c)
{
	int64_t end = now_ns() + 500 * 1000000LL;
	char buf[4096];

	shutdown(c->fd, SHUT_WR);
	for (;;) {
		struct pollfd pf[2] = {
			{ .fd = c->fd, .events = POLLIN },
			{ .fd = c->p->stopfd, .events = POLLIN },
		};
		int64_t left = (end - now_ns()) / 1000000;
		ssize_t n;

		if (left <= 0 || poll(pf, 2, (int)left) <= 0 || pf[1].revents)
			break;
		n = read(c->fd, buf, sizeof(buf));
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			break;
	}
}

/* conn_main - a connection's thread: greet, serve, close, count out. */
static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct smtp_peer *p = c->p;

	c->hash = smtp_peer_hash("", 0);
	conn_greet(c);
	while (!c->closing) {
		conn_process(c);
		if (c->closing || conn_read(c) <= 0)
			break;
	}
	if (c->closing && !c->abrupt)
		linger_close(c);
	close(c->fd);
	c->fd = -1;
	txn_reset(c);
	free(c->rcpts);
	free(c->rcpt_params);
	sb_free(&c->body);
	free(c->bdat_line);
	free(c->helo);
	free(c->in);
	free(c->seen);
	c->rcpts = c->rcpt_params = NULL;
	c->bdat_line = c->helo = c->in = NULL;
	c->seen = NULL;

	pthread_mutex_lock(&p->lock);
	p->st.current--;
	c->done = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* ---- accepting ------------------------------------------------------ */

/* reap - join and free the connections whose threads have finished. */
static void reap(struct smtp_peer *p, bool all)
{
	struct conn *gone = NULL;

	pthread_mutex_lock(&p->lock);
	for (struct conn **pp = &p->conns; *pp;) {
		struct conn *c = *pp;

		if (all || c->done) {
			*pp = c->next;
			c->next = gone;
			gone = c;
		} else {
			pp = &c->next;
		}
	}
	pthread_mutex_unlock(&p->lock);
	/* Joined without the lock: a finishing thread may still want it. */
	while (gone) {
		struct conn *c = gone;

		gone = c->next;
		pthread_join(c->thread, NULL);
		free(c);
	}
}

/* refuse - answer a connection we will not serve, without a thread. */
static void refuse(int fd, const char *reply)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "%s\r\n", reply);

	/* A fresh socket's send buffer is empty, so one non-blocking send
	 * carries it; a client already gone is not our problem. */
	if (n > 0 && (size_t)n < sizeof(buf))
		send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(fd);
}

/*
 * accept_one - count a new connection and give it a thread, or refuse it
 * when max_conns are being served.
 */
static void accept_one(struct smtp_peer *p, int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct conn *c = xcalloc(1, sizeof(*c));

	c->p = p;
	c->fd = fd;
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr,
				  c->ip, sizeof(c->ip));
		else
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr,
				  c->ip, sizeof(c->ip));
	}

	pthread_mutex_lock(&p->lock);
	p->st.connections++;
	c->id = ++p->last_conn;
	if (p->max_conns && p->st.current >= p->max_conns) {
		p->st.refused++;
		pthread_mutex_unlock(&p->lock);
		log_reply(c, SMTP_PEER_CONNECT, c->ip, 0, p->busy_reply,
			  reply_code(p->busy_reply));
		refuse(fd, p->busy_reply);
		free(c);
		return;
	}
	p->st.current++;
	if (p->st.current > p->st.max_concurrent)
		p->st.max_concurrent = p->st.current;
	pthread_mutex_unlock(&p->lock);

	c->in = xmalloc(IN_CAP);
	c->seen = xcalloc(p->nrules + 1, sizeof(*c->seen));
	if (pthread_create(&c->thread, NULL, conn_main, c) != 0) {
		refuse(fd, "421 4.3.2 out of threads");
		free(c->in);
		free(c->seen);
		free(c);
		pthread_mutex_lock(&p->lock);
		p->st.current--;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		return;
	}
	pthread_mutex_lock(&p->lock);
	c->next = p->conns;
	p->conns = c;
	pthread_mutex_unlock(&p->lock);
}

/* accept_main - the acceptor thread: accept until the stop eventfd fires. */
static void *accept_main(void *arg)
{
	struct smtp_peer *p = arg;
	struct pollfd pf[2] = {
		{ .fd = p->lfd, .events = POLLIN },
		{ .fd = p->stopfd, .events = POLLIN },
	};

	for (;;) {
		int fd;

		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		fd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			/* Out of descriptors: back off instead of spinning. */
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM)
				peer_sleep(p, 10);
			continue;
		}
		reap(p, false);
		accept_one(p, fd);
	}
	return NULL;
}

/* ---- the API -------------------------------------------------------- */

/* dup_or - a copy of s, or of dflt when s is NULL. */
static char *dup_or(const char *s, const char *dflt)
{
	return xstrdup(s ? s : dflt);
}

/* peer_listen - bind and listen on addr:port; 0 or -errno (err says). */
static int peer_listen(struct smtp_peer *p, int port, int reserved_fd, char *err,
		       size_t errlen)
{
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	socklen_t sl;
	int one = 1;

	if (reserved_fd > 0) {
		p->lfd = reserved_fd;
		sl = sizeof(ss);
		if (fcntl(p->lfd, F_SETFL, O_NONBLOCK) < 0 ||
		    fcntl(p->lfd, F_SETFD, FD_CLOEXEC) < 0 ||
		    listen(p->lfd, SOMAXCONN) < 0 ||
		    getsockname(p->lfd, (struct sockaddr *)&ss, &sl) < 0)
			goto fail;
		p->port = ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port);
		char text[INET6_ADDRSTRLEN] = "";
		inet_ntop(ss.ss_family, ss.ss_family == AF_INET ? (void *)&s4->sin_addr
								 : (void *)&s6->sin6_addr,
			  text, sizeof(text));
		free(p->addr);
		p->addr = xstrdup(text);
		return 0;
	}
	if (port < 0 || port > 65535) {
		snprintf(err, errlen, "bad port %d", port);
		return -EINVAL;
	}
	if (inet_pton(AF_INET, p->addr, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		sl = sizeof(*s4);
	} else if (inet_pton(AF_INET6, p->addr, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		sl = sizeof(*s6);
	} else {
		snprintf(err, errlen, "not a numeric address: %s", p->addr);
		return -EINVAL;
	}
	p->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->lfd < 0)
		goto fail;
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(p->lfd, (struct sockaddr *)&ss, sl) < 0 ||
	    listen(p->lfd, SOMAXCONN) < 0)
		goto fail;
	sl = sizeof(ss);
	if (getsockname(p->lfd, (struct sockaddr *)&ss, &sl) < 0)
		goto fail;
	p->port = ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port);
	return 0;
fail:
	snprintf(err, errlen, "listen on %s port %d: %s", p->addr, port,
		 strerror(errno));
	return -errno;
}

struct smtp_peer *smtp_peer_start(const struct smtp_peer_opts *o, char *err,
				  size_t errlen)
{
	struct smtp_peer *p = xcalloc(1, sizeof(*p));
	pthread_condattr_t ca;

	p->addr = dup_or(o->addr, "127.0.0.1");
	p->hostname = dup_or(o->hostname, "peer.test");
	p->busy_reply = dup_or(o->busy_reply, "421 4.7.0 too many connections");
	p->rate_reply = dup_or(o->rate_reply, "451 4.7.1 message rate exceeded");
	p->caps = o->caps;
	p->size_limit = o->caps & SMTP_PEER_CAP_SIZE ? o->size_limit : 0;
	p->max_conns = o->max_conns;
	p->max_msg_rate = o->max_msg_rate;
	p->max_rcpt = o->max_rcpt;
	p->body_keep = o->body_keep ? o->body_keep : BODY_KEEP_DEFAULT;
	p->no_log = o->no_log;
	p->rng = o->seed ? o->seed : 0x9e3779b97f4a7c15ULL;
	p->nrules = o->nrules;
	p->rules = xcalloc(o->nrules + 1, sizeof(*p->rules));
	for (size_t i = 0; i < o->nrules; i++) {
		p->rules[i].r = o->rules[i];
		if (o->rules[i].match)
			p->rules[i].r.match = xstrdup(o->rules[i].match);
		if (o->rules[i].reply)
			p->rules[i].r.reply = xstrdup(o->rules[i].reply);
	}
	p->lfd = -1;
	p->stopfd = -1;
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cond, &ca);
	pthread_condattr_destroy(&ca);

	if (peer_listen(p, o->port, o->reserved_fd, err, errlen) < 0)
		goto fail;
	p->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->stopfd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (pthread_create(&p->acceptor, NULL, accept_main, p) != 0) {
		snprintf(err, errlen, "cannot start the acceptor thread");
		goto fail;
	}
	return p;
fail:
	/* No thread runs yet: mark stopped so free only releases memory. */
	p->stopped = true;
	smtp_peer_free(p);
	return NULL;
}

int smtp_peer_port(const struct smtp_peer *p)
{
	return p->port;
}

const char *smtp_peer_addr(const struct smtp_peer *p)
{
	return p->addr;
}

void smtp_peer_stats(struct smtp_peer *p, struct smtp_peer_stats *st)
{
	pthread_mutex_lock(&p->lock);
	*st = p->st;
	pthread_mutex_unlock(&p->lock);
}

const struct smtp_peer_msg *smtp_peer_message(struct smtp_peer *p, size_t i)
{
	const struct smtp_peer_msg *m;

	pthread_mutex_lock(&p->lock);
	m = i < p->nmsgs ? p->msgs[i] : NULL;
	pthread_mutex_unlock(&p->lock);
	return m;
}

const struct smtp_peer_cmd_rec *smtp_peer_command(struct smtp_peer *p,
						  size_t i)
{
	const struct smtp_peer_cmd_rec *r;

	pthread_mutex_lock(&p->lock);
	r = i < p->nlog ? p->log[i] : NULL;
	pthread_mutex_unlock(&p->lock);
	return r;
}

size_t smtp_peer_count_replies(struct smtp_peer *p, enum smtp_peer_cmd cmd,
			       const char *prefix)
{
	size_t n = 0, pl = strlen(prefix);

	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->nlog; i++)
		if (p->log[i]->cmd == cmd &&
		    strncmp(p->log[i]->reply, prefix, pl) == 0)
			n++;
	pthread_mutex_unlock(&p->lock);
	return n;
}

/* wait_until - wait on p->cond until done(p, n) or the deadline. */
static int wait_until(struct smtp_peer *p,
		      bool (*done)(struct smtp_peer *, size_t), size_t n,
		      int timeout_ms)
{
	struct timespec dl;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += timeout_ms / 1000;
	dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&p->lock);
	while (!done(p, n)) {
		if (pthread_cond_timedwait(&p->cond, &p->lock, &dl) == ETIMEDOUT) {
			rc = done(p, n) ? 0 : -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

/* have_messages, is_idle - the conditions wait_until() waits for. */
static bool have_messages(struct smtp_peer *p, size_t n)
{
	return p->st.messages >= n;
}

static bool is_idle(struct smtp_peer *p, size_t n)
{
	return p->st.current == 0;
}

int smtp_peer_wait_messages(struct smtp_peer *p, size_t n, int timeout_ms)
{
	return wait_until(p, have_messages, n, timeout_ms);
}

int smtp_peer_wait_idle(struct smtp_peer *p, int timeout_ms)
{
	return wait_until(p, is_idle, 0, timeout_ms);
}

void smtp_peer_stop(struct smtp_peer *p)
{
	uint64_t one = 1;

	pthread_mutex_lock(&p->lock);
	if (p->stopped) {
		pthread_mutex_unlock(&p->lock);
		return;
	}
	p->stopped = true;
	pthread_mutex_unlock(&p->lock);

	/* Never read back: the eventfd stays readable, so every poll in
	 * every thread, now or later, sees it. */
	BUG_ON(write(p->stopfd, &one, sizeof(one)) != sizeof(one));
	pthread_join(p->acceptor, NULL);
	/* The acceptor is gone, so the connection list only shrinks. */
	reap(p, true);
	close(p->lfd);
	p->lfd = -1;
}

void smtp_peer_free(struct smtp_peer *p)
{
	if (!p)
		return;
	smtp_peer_stop(p);
	if (p->lfd >= 0)
		close(p->lfd);
	if (p->stopfd >= 0)
		close(p->stopfd);
	for (size_t i = 0; i < p->nmsgs; i++) {
		struct smtp_peer_msg *m = p->msgs[i];

		for (size_t j = 0; j < m->nrcpt; j++) {
			free(m->rcpts[j]);
			free(m->rcpt_params[j]);
		}
		free(m->rcpts);
		free(m->rcpt_params);
		free(m->helo);
		free(m->mail_from);
		free(m->mail_params);
		free(m->body);
		free(m);
	}
	free(p->msgs);
	for (size_t i = 0; i < p->nlog; i++) {
		free(p->log[i]->line);
		free(p->log[i]->reply);
		free(p->log[i]);
	}
	free(p->log);
	for (size_t i = 0; i < p->nrips; i++)
		free(p->rips[i].ring);
	free(p->rips);
	for (size_t i = 0; i < p->nrules; i++) {
		free((char *)p->rules[i].r.match);
		free((char *)p->rules[i].r.reply);
	}
	free(p->rules);
	free(p->addr);
	free(p->hostname);
	free(p->busy_reply);
	free(p->rate_reply);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
}
