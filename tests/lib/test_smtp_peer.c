/*
 * tests/lib/test_smtp_peer.c - the scripted SMTP receiver (smtp_peer.h)
 * driven by a tiny blocking client: a table of scripts, one per
 * behaviour (a peer configuration and a conversation), then tests for
 * what a conversation cannot show (pipelining per read(), concurrency,
 * per-IP rates, records, waiting, stopping).
 *
 * Criterion copies parameters into each test's process, so parameters
 * are indices into the file-scope table, never pointers.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "util/util.h"

#include "tests/lib/smtp_peer.h"

TestSuite(smtp_peer, .timeout = 30);

/* ---- a blocking client ---------------------------------------------- */

struct client {
	int fd;
	char buf[16384];
	size_t len;
	int64_t sent_ns;	/* the last send (or the connect) */
	int64_t reply_ms;	/* how long the last reply took after it */
};

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * cl_open - connect to the peer, from src (a 127/8 address) when given.
 * Returns 0 or -errno; reads time out after 10 s so a broken peer fails
 * the test instead of hanging it.
 */
static int cl_open(struct client *cl, struct smtp_peer *p, const char *src)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timeval tv = { .tv_sec = 10 };

	memset(cl, 0, sizeof(*cl));
	cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cl->fd < 0)
		return -errno;
	setsockopt(cl->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (src) {
		inet_pton(AF_INET, src, &sa.sin_addr);
		if (bind(cl->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return -errno;
	}
	sa.sin_port = htons((uint16_t)smtp_peer_port(p));
	inet_pton(AF_INET, smtp_peer_addr(p), &sa.sin_addr);
	cl->sent_ns = mono_ns();
	if (connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	return 0;
}

static void cl_close(struct client *cl)
{
	if (cl->fd >= 0)
		close(cl->fd);
	cl->fd = -1;
}

/* cl_sendn - all n bytes in one send() (so they leave in one segment). */
static int cl_sendn(struct client *cl, const char *s, size_t n)
{
	cl->sent_ns = mono_ns();
	while (n > 0) {
		ssize_t w = send(cl->fd, s, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

static int cl_send(struct client *cl, const char *s)
{
	return cl_sendn(cl, s, strlen(s));
}

/* cl_fill - read more; 0 on EOF, reset or timeout. */
static int cl_fill(struct client *cl)
{
	ssize_t n;

	if (cl->len == sizeof(cl->buf))
		return 0;
	do
		n = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return 0;
	cl->len += (size_t)n;
	return 1;
}

/*
 * cl_reply - one whole reply, its lines joined by '\n', into out.
 * Returns its code, or -1 when the connection ended first.
 */
static int cl_reply(struct client *cl, char *out, size_t outlen)
{
	size_t o = 0;

	out[0] = '\0';
	for (;;) {
		char *crlf = memmem(cl->buf, cl->len, "\r\n", 2);
		size_t n;
		bool last;

		if (!crlf) {
			if (!cl_fill(cl))
				return -1;
			continue;
		}
		n = (size_t)(crlf - cl->buf);
		last = n < 4 || cl->buf[3] != '-';
		o += (size_t)snprintf(out + o, outlen - o, "%s%.*s", o ? "\n" : "",
				      (int)n, cl->buf);
		if (o >= outlen)
			o = outlen - 1;
		memmove(cl->buf, cl->buf + n + 2, cl->len - n - 2);
		cl->len -= n + 2;
		if (last) {
			cl->reply_ms = (mono_ns() - cl->sent_ns) / 1000000;
			return atoi(out);
		}
	}
}

/* cl_eof - true when the peer closed (or reset) with nothing unread. */
static bool cl_eof(struct client *cl)
{
	return cl->len == 0 && !cl_fill(cl);
}

/* cl_txn - a whole DATA transaction; 0 when every reply was as expected. */
static int cl_txn(struct client *cl, const char *from, const char *to,
		  const char *body)
{
	char r[1024], line[512];

	snprintf(line, sizeof(line), "MAIL FROM:<%s>\r\n", from);
	if (cl_send(cl, line) || cl_reply(cl, r, sizeof(r)) != 250)
		return -1;
	snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", to);
	if (cl_send(cl, line) || cl_reply(cl, r, sizeof(r)) != 250)
		return -1;
	if (cl_send(cl, "DATA\r\n") || cl_reply(cl, r, sizeof(r)) != 354)
		return -1;
	if (cl_send(cl, body) || cl_reply(cl, r, sizeof(r)) != 250)
		return -1;
	return 0;
}

static struct smtp_peer *start(const struct smtp_peer_opts *o)
{
	char err[256] = "";
	struct smtp_peer *p = smtp_peer_start(o, err, sizeof(err));

	cr_assert(p, "smtp_peer_start: %s", err);
	cr_assert_gt(smtp_peer_port(p), 0);
	return p;
}

/* ---- the table of scripts ------------------------------------------- */

enum op {
	OP_END,
	OP_SEND,	/* s, in one send() */
	OP_SENDN,	/* n bytes of s (binary chunks) */
	OP_REPLY,	/* the next reply starts with s */
	OP_HAS,		/* the last reply contains s */
	OP_LACKS,	/* ... does not */
	OP_EOF,		/* the peer closes */
	OP_SLOW,	/* the last reply took at least n ms */
	OP_MSGS,	/* exactly n messages accepted so far */
	OP_RECONNECT,	/* a new connection */
};

struct step {
	enum op op;
	const char *s;
	size_t n;
};

#define SEND(x) { OP_SEND, x, 0 }
#define SENDN(x, n) { OP_SENDN, x, n }
#define REPLY(x) { OP_REPLY, x, 0 }
#define HAS(x) { OP_HAS, x, 0 }
#define LACKS(x) { OP_LACKS, x, 0 }
#define EOF_ { OP_EOF, NULL, 0 }
#define SLOW(ms) { OP_SLOW, NULL, ms }
#define MSGS(n) { OP_MSGS, NULL, n }
#define RECONNECT { OP_RECONNECT, NULL, 0 }

#define GREET REPLY("220 peer.test")
#define EHLO SEND("EHLO client.test\r\n"), REPLY("250")
#define MAIL SEND("MAIL FROM:<s@a.test>\r\n"), REPLY("250 2.1.0")
#define RCPT SEND("RCPT TO:<r@b.test>\r\n"), REPLY("250 2.1.5")
#define DATA SEND("DATA\r\n"), REPLY("354")
#define BODY SEND("Subject: t\r\n\r\nhello\r\n.\r\n")

/* 1001 bytes: one more than the SIZE limit the capabilities script sets */
#define D10 "0123456789"
#define D100 D10 D10 D10 D10 D10 D10 D10 D10 D10 D10
#define D1001 D100 D100 D100 D100 D100 D100 D100 D100 D100 D100 "x"

/* RULES(...) - a rule array and its length, for smtp_peer_opts. */
#define RULES(...)							\
	.rules = (const struct smtp_peer_rule[]){ __VA_ARGS__ },	\
	.nrules = sizeof((const struct smtp_peer_rule[]){ __VA_ARGS__ }) / \
		  sizeof(struct smtp_peer_rule)

struct script {
	const char *name;
	struct smtp_peer_opts opts;
	struct step steps[40];
};

static const struct script scripts[] = {
	{ "greeting 421 closes",
	  { RULES({ .cmd = SMTP_PEER_CONNECT, .reply = "421 4.3.2 go away" }) },
	  { REPLY("421 4.3.2 go away"), EOF_ } },
	{ "greeting 554 serves only QUIT",
	  { RULES({ .cmd = SMTP_PEER_CONNECT, .reply = "554 5.7.1 not here" }) },
	  { REPLY("554 5.7.1"), SEND("EHLO c.test\r\n"), REPLY("503"),
	    SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("503"),
	    SEND("NOOP\r\n"), REPLY("503"),
	    SEND("QUIT\r\n"), REPLY("221"), EOF_ } },
	{ "greeting delayed",
	  { RULES({ .cmd = SMTP_PEER_CONNECT, .delay_ms = 300 }) },
	  { GREET, SLOW(300), EHLO } },
	{ "greeting for one client IP only",
	  { RULES({ .cmd = SMTP_PEER_CONNECT, .match = "127.0.0.99",
		    .reply = "554 5.7.1 blocked" }) },
	  { GREET, EHLO } },
	{ "RCPT 550 for a matching recipient",
	  { RULES({ .cmd = SMTP_PEER_RCPT, .match = "bad@",
		    .reply = "550 5.1.1 no such user" }) },
	  { GREET, EHLO, MAIL, RCPT,
	    SEND("RCPT TO:<Bad@b.test>\r\n"), REPLY("550 5.1.1 no such user"),
	    SEND("RCPT TO:<good@b.test>\r\n"), REPLY("250"),
	    DATA, BODY, REPLY("250 2.0.0"), MSGS(1) } },
	{ "451 at DATA end, once",
	  { RULES({ .cmd = SMTP_PEER_DATA_END, .nth = 1,
		    .reply = "451 4.7.1 try later" }) },
	  { GREET, EHLO, MAIL, RCPT, DATA, BODY, REPLY("451 4.7.1 try later"),
	    MSGS(0), MAIL, RCPT, DATA, BODY, REPLY("250"), MSGS(1) } },
	{ "MAIL reply delayed",
	  { RULES({ .cmd = SMTP_PEER_MAIL, .delay_ms = 300 }) },
	  { GREET, EHLO, MAIL, SLOW(300), RCPT } },
	{ "disconnect after MAIL",
	  { RULES({ .cmd = SMTP_PEER_MAIL, .disconnect = true }) },
	  { GREET, EHLO, SEND("MAIL FROM:<a@b.test>\r\n"), EOF_ } },
	{ "reset at RCPT",
	  { RULES({ .cmd = SMTP_PEER_RCPT, .disconnect = true, .reset = true }) },
	  { GREET, EHLO, MAIL, SEND("RCPT TO:<a@b.test>\r\n"), EOF_ } },
	{ "disconnect at DATA end loses the message",
	  { RULES({ .cmd = SMTP_PEER_DATA_END, .disconnect = true }) },
	  { GREET, EHLO, MAIL, RCPT, DATA, BODY, EOF_, MSGS(0) } },
	{ "BDAT chunks, binary, LAST",
	  { .caps = SMTP_PEER_CAP_CHUNKING | SMTP_PEER_CAP_PIPELINING },
	  { GREET, SEND("EHLO c.test\r\n"), REPLY("250-peer.test"),
	    HAS("CHUNKING"), MAIL, RCPT,
	    SENDN("BDAT 6\r\nab\0\r\n.", 14), REPLY("250 2.0.0 6 octets"),
	    SEND("BDAT 3 LAST\r\nxyz"), REPLY("250 2.0.0 Ok: 9 octets"),
	    MSGS(1),
	    /* a warm connection: one flight, one round trip */
	    SEND("MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\n"
		 "BDAT 5 LAST\r\nhello"),
	    REPLY("250"), REPLY("250"), REPLY("250 2.0.0 Ok: 5 octets"),
	    MSGS(2), SEND("BDAT 0 LAST\r\n"), REPLY("503") } },
	{ "BDAT not offered: refused, chunk skipped",
	  { .caps = 0 },
	  { GREET, EHLO, MAIL, RCPT, SEND("BDAT 4 LAST\r\nNOOP"),
	    REPLY("500 5.5.1"), SEND("NOOP\r\n"), REPLY("250"), MSGS(0) } },
	{ "BDAT chunk refused: the rest fail until RSET",
	  { .caps = SMTP_PEER_CAP_CHUNKING,
	    RULES({ .cmd = SMTP_PEER_BDAT, .nth = 1,
		    .reply = "552 5.3.4 too big" }) },
	  { GREET, EHLO, MAIL, RCPT, SEND("BDAT 3\r\nabc"), REPLY("552"),
	    SEND("BDAT 2 LAST\r\nde"), REPLY("503"), SEND("RSET\r\n"),
	    REPLY("250"), MAIL, RCPT, SEND("BDAT 2 LAST\r\nok"),
	    REPLY("250"), MSGS(1) } },
	{ "451 at BDAT LAST",
	  { .caps = SMTP_PEER_CAP_CHUNKING,
	    RULES({ .cmd = SMTP_PEER_DATA_END, .reply = "451 4.3.0 later" }) },
	  { GREET, EHLO, MAIL, RCPT, SEND("BDAT 2 LAST\r\nhi"),
	    REPLY("451 4.3.0"), MSGS(0) } },
	{ "EHLO advertises every capability; STARTTLS is a stub",
	  { .caps = SMTP_PEER_CAP_PIPELINING | SMTP_PEER_CAP_CHUNKING |
		    SMTP_PEER_CAP_8BITMIME | SMTP_PEER_CAP_SIZE |
		    SMTP_PEER_CAP_DSN | SMTP_PEER_CAP_ENHANCEDSTATUSCODES |
		    SMTP_PEER_CAP_SMTPUTF8 | SMTP_PEER_CAP_STARTTLS,
	    .size_limit = 1000 },
	  { GREET, SEND("EHLO c.test\r\n"), REPLY("250-peer.test greets c.test"),
	    HAS("\n250-PIPELINING\n"), HAS("\n250-SIZE 1000\n"),
	    HAS("\n250-8BITMIME\n"), HAS("\n250-CHUNKING\n"), HAS("\n250-DSN\n"),
	    HAS("\n250-ENHANCEDSTATUSCODES\n"), HAS("\n250-SMTPUTF8\n"),
	    HAS("\n250 STARTTLS"),
	    SEND("STARTTLS\r\n"), REPLY("454 4.7.0"),
	    SEND("MAIL FROM:<a@b.test> SIZE=2000\r\n"), REPLY("552 5.3.4"),
	    SEND("MAIL FROM:<a@b.test> SIZE=500 BODY=8BITMIME RET=HDRS "
		 "ENVID=x1 SMTPUTF8\r\n"), REPLY("250"),
	    SEND("RCPT TO:<r@b.test> NOTIFY=SUCCESS,FAILURE "
		 "ORCPT=rfc822;r@b.test\r\n"), REPLY("250"),
	    SEND("BDAT 1001 LAST\r\n"),
	    SENDN(D1001, 1001),
	    REPLY("552 5.3.4"), MSGS(0) } },
	{ "no capabilities: parameters refused",
	  { .caps = 0 },
	  { GREET, SEND("EHLO c.test\r\n"), REPLY("250 peer.test greets c.test"),
	    LACKS("PIPELINING"),
	    SEND("MAIL FROM:<a@b.test> BODY=8BITMIME\r\n"), REPLY("555 5.5.4"),
	    SEND("MAIL FROM:<a@b.test> SIZE=10\r\n"), REPLY("555 5.5.4"),
	    MAIL, SEND("RCPT TO:<r@b.test> NOTIFY=NEVER\r\n"), REPLY("555"),
	    SEND("STARTTLS\r\n"), REPLY("502") } },
	{ "only the 2nd RCPT",
	  { RULES({ .cmd = SMTP_PEER_RCPT, .nth = 2,
		    .reply = "452 4.5.3 slow down" }) },
	  { GREET, EHLO, MAIL, RCPT, SEND("RCPT TO:<x@b.test>\r\n"),
	    REPLY("452 4.5.3"), RCPT, RCPT } },
	{ "the first two MAILs greylisted",
	  { RULES({ .cmd = SMTP_PEER_MAIL, .times = 2,
		    .reply = "451 4.7.1 greylisted" }) },
	  { GREET, EHLO, SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("451"),
	    SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("451"), MAIL } },
	{ "2nd to 3rd RCPT",
	  { RULES({ .cmd = SMTP_PEER_RCPT, .nth = 2, .times = 2,
		    .reply = "450 4.2.0 busy" }) },
	  { GREET, EHLO, MAIL, RCPT, SEND("RCPT TO:<x@b.test>\r\n"),
	    REPLY("450"), SEND("RCPT TO:<x@b.test>\r\n"), REPLY("450"), RCPT } },
	{ "one message per connection (rule per connection)",
	  { RULES({ .cmd = SMTP_PEER_MAIL, .nth = 2, .per_connection = true,
		    .reply = "421 4.7.0 one per connection" }) },
	  { GREET, EHLO, MAIL, SEND("RSET\r\n"), REPLY("250"),
	    SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("421 4.7.0"), EOF_,
	    RECONNECT, GREET, EHLO, MAIL, SEND("RSET\r\n"), REPLY("250"),
	    SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("421"), EOF_ } },
	{ "sequence and syntax errors",
	  { .caps = SMTP_PEER_CAP_PIPELINING },
	  { GREET, SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("503"),
	    SEND("EHLO\r\n"), REPLY("501"), EHLO,
	    SEND("RCPT TO:<a@b.test>\r\n"), REPLY("503"),
	    SEND("DATA\r\n"), REPLY("503"), MAIL,
	    SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("503"),
	    SEND("DATA\r\n"), REPLY("554 5.5.1"),
	    SEND("RCPT TO:<>\r\n"), REPLY("501"),
	    SEND("RCPT TO:r@b.test\r\n"), REPLY("501"),
	    SEND("BDAT x\r\n"), REPLY("501"),
	    SEND("XYZZY\r\n"), REPLY("500 5.5.2"),
	    SEND("RSET\r\n"), REPLY("250"),
	    SEND("MAIL FROM:bad\r\n"), REPLY("501"),
	    SEND("mail from: <>\r\n"), REPLY("250"),
	    SEND("QUIT\r\n"), REPLY("221"), EOF_ } },
	{ "max_rcpt",
	  { .max_rcpt = 2 },
	  { GREET, EHLO, MAIL, RCPT, RCPT, SEND("RCPT TO:<x@b.test>\r\n"),
	    REPLY("452 4.5.3"), DATA, BODY, REPLY("250"), MSGS(1) } },
	{ "rate limit with 421 closes",
	  { .max_msg_rate = 2, .rate_reply = "421 4.7.0 slow down" },
	  { GREET, EHLO, MAIL, SEND("RSET\r\n"), REPLY("250"), MAIL,
	    SEND("RSET\r\n"), REPLY("250"),
	    SEND("MAIL FROM:<a@b.test>\r\n"), REPLY("421 4.7.0 slow down"),
	    EOF_ } },
	{ "HELO, NOOP, VRFY, RSET, QUIT",
	  { .caps = SMTP_PEER_CAP_PIPELINING },
	  { GREET, SEND("HELO c.test\r\n"), REPLY("250 peer.test"),
	    LACKS("PIPELINING"), SEND("NOOP\r\n"), REPLY("250"),
	    SEND("VRFY x\r\n"), REPLY("252"), MAIL, RCPT,
	    SEND("RSET\r\n"), REPLY("250"), SEND("DATA\r\n"), REPLY("503"),
	    SEND("QUIT\r\n"), REPLY("221 2.0.0"), EOF_ } },
	{ "EHLO refused once, then HELO",
	  { RULES({ .cmd = SMTP_PEER_EHLO, .nth = 1,
		    .reply = "502 5.5.1 no EHLO here" }) },
	  { GREET, SEND("EHLO c.test\r\n"), REPLY("502"),
	    SEND("HELO c.test\r\n"), REPLY("250 peer.test"), MAIL } },
	{ "multi-line reply override",
	  { RULES({ .cmd = SMTP_PEER_RCPT,
		    .reply = "550-5.1.1 first line\n550 5.1.1 second line" }) },
	  { GREET, EHLO, MAIL, SEND("RCPT TO:<a@b.test>\r\n"),
	    REPLY("550-5.1.1 first line\n550 5.1.1 second line") } },
	{ "first firing rule wins",
	  { RULES({ .cmd = SMTP_PEER_RCPT, .match = "x@",
		    .reply = "550 5.1.1 first" },
		  { .cmd = SMTP_PEER_RCPT, .reply = "450 4.2.1 second" }) },
	  { GREET, EHLO, MAIL, SEND("RCPT TO:<x@b.test>\r\n"),
	    REPLY("550 5.1.1 first"), SEND("RCPT TO:<y@b.test>\r\n"),
	    REPLY("450 4.2.1 second") } },
	{ "DATA_END rule matching the body",
	  { RULES({ .cmd = SMTP_PEER_DATA_END, .match = "X-Spam: yes",
		    .reply = "554 5.7.1 spam" }) },
	  { GREET, EHLO, MAIL, RCPT, DATA,
	    SEND("x-spam: YES\r\n\r\nbuy\r\n.\r\n"), REPLY("554 5.7.1"),
	    MAIL, RCPT, DATA, BODY, REPLY("250"), MSGS(1) } },
	{ "QUIT delayed",
	  { RULES({ .cmd = SMTP_PEER_QUIT, .delay_ms = 200 }) },
	  { GREET, SEND("QUIT\r\n"), REPLY("221"), SLOW(200), EOF_ } },
};

ParameterizedTestParameters(smtp_peer, script)
{
	static int idx[ARRAY_SIZE(scripts)];

	for (size_t i = 0; i < ARRAY_SIZE(scripts); i++)
		idx[i] = (int)i;
	return cr_make_param_array(int, idx, ARRAY_SIZE(idx));
}

ParameterizedTest(int *ip, smtp_peer, script)
{
	const struct script *sc = &scripts[*ip];
	struct smtp_peer *p = start(&sc->opts);
	struct smtp_peer_stats st;
	struct client cl;
	char r[4096] = "";

	cr_log_info("script: %s", sc->name);
	cr_assert_eq(cl_open(&cl, p, NULL), 0);
	for (const struct step *s = sc->steps; s->op != OP_END; s++) {
		size_t at = (size_t)(s - sc->steps);

		switch (s->op) {
		case OP_SEND:
			cr_assert_eq(cl_send(&cl, s->s), 0, "%s: step %zu", sc->name, at);
			break;
		case OP_SENDN:
			cr_assert_eq(cl_sendn(&cl, s->s, s->n), 0, "%s: step %zu",
				     sc->name, at);
			break;
		case OP_REPLY:
			cl_reply(&cl, r, sizeof(r));
			cr_assert(strncmp(r, s->s, strlen(s->s)) == 0,
				  "%s: step %zu: reply \"%s\", want \"%s...\"",
				  sc->name, at, r, s->s);
			break;
		case OP_HAS:
			cr_assert(strstr(r, s->s), "%s: step %zu: \"%s\" lacks \"%s\"",
				  sc->name, at, r, s->s);
			break;
		case OP_LACKS:
			cr_assert(!strstr(r, s->s), "%s: step %zu: \"%s\" has \"%s\"",
				  sc->name, at, r, s->s);
			break;
		case OP_EOF:
			cr_assert(cl_eof(&cl), "%s: step %zu: no EOF", sc->name, at);
			break;
		case OP_SLOW:
			cr_assert_geq(cl.reply_ms, (int64_t)s->n, "%s: step %zu",
				      sc->name, at);
			cr_assert_lt(cl.reply_ms, (int64_t)s->n + 3000);
			break;
		case OP_MSGS:
			/* The peer records a message before it sends the
			 * reply, so after the reply the count is exact. */
			smtp_peer_stats(p, &st);
			cr_assert_eq(st.messages, s->n, "%s: step %zu: %zu messages",
				     sc->name, at, st.messages);
			break;
		case OP_RECONNECT:
			cl_close(&cl);
			cr_assert_eq(cl_open(&cl, p, NULL), 0);
			break;
		case OP_END:
			break;
		}
	}
	cl_close(&cl);
	smtp_peer_free(p);
}

/* ---- what a conversation cannot show -------------------------------- */

/* find_cmd - the nth (0-based) log entry for cmd, or NULL. */
static const struct smtp_peer_cmd_rec *find_cmd(struct smtp_peer *p,
						enum smtp_peer_cmd cmd,
						size_t nth)
{
	const struct smtp_peer_cmd_rec *c;

	for (size_t i = 0; (c = smtp_peer_command(p, i)); i++)
		if (c->cmd == cmd && nth-- == 0)
			return c;
	return NULL;
}

Test(smtp_peer, pipelined_commands_arrive_in_one_read)
{
	struct smtp_peer_opts o = { .caps = SMTP_PEER_CAP_PIPELINING };
	struct smtp_peer *p = start(&o);
	const struct smtp_peer_cmd_rec *ehlo, *mail, *rc1, *rc2, *data, *end;
	struct client cl;
	char r[1024];

	cr_assert_eq(cl_open(&cl, p, NULL), 0);
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 220);
	cl_send(&cl, "EHLO c.test\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cr_assert(strstr(r, "PIPELINING"));
	/* One flight: the client must not wait between these. */
	cl_send(&cl, "MAIL FROM:<s@a.test>\r\nRCPT TO:<a@b.test>\r\n"
		     "RCPT TO:<bad@b.test>\r\nDATA\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cr_assert_str_eq(r, "250 2.1.0 Ok");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cr_assert_str_eq(r, "250 2.1.5 Ok");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 354);
	cl_send(&cl, "body\r\n.\r\nQUIT\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 221);

	ehlo = find_cmd(p, SMTP_PEER_EHLO, 0);
	mail = find_cmd(p, SMTP_PEER_MAIL, 0);
	rc1 = find_cmd(p, SMTP_PEER_RCPT, 0);
	rc2 = find_cmd(p, SMTP_PEER_RCPT, 1);
	data = find_cmd(p, SMTP_PEER_DATA, 0);
	end = find_cmd(p, SMTP_PEER_DATA_END, 0);
	cr_assert(ehlo && mail && rc1 && rc2 && data && end);
	cr_assert_eq(mail->read_no, rc1->read_no);
	cr_assert_eq(mail->read_no, rc2->read_no);
	cr_assert_eq(mail->read_no, data->read_no);
	cr_assert_lt(ehlo->read_no, mail->read_no);
	cr_assert_lt(data->read_no, end->read_no);
	cr_assert_eq(find_cmd(p, SMTP_PEER_QUIT, 0)->read_no, end->read_no);
	cr_assert_str_eq(rc2->line, "RCPT TO:<bad@b.test>");
	/* answered in order: the log is in reply order per connection */
	cr_assert(mail->t_ns <= rc1->t_ns && rc1->t_ns <= rc2->t_ns &&
		  rc2->t_ns <= data->t_ns);
	cl_close(&cl);
	smtp_peer_free(p);
}

Test(smtp_peer, concurrency_limit)
{
	struct smtp_peer_opts o = { .max_conns = 3 };
	struct smtp_peer *p = start(&o);
	struct smtp_peer_stats st;
	struct client cl[4];
	char r[1024];

	for (int i = 0; i < 3; i++) {
		cr_assert_eq(cl_open(&cl[i], p, NULL), 0);
		cr_assert_eq(cl_reply(&cl[i], r, sizeof(r)), 220);
	}
	cr_assert_eq(cl_open(&cl[3], p, NULL), 0);
	cr_assert_eq(cl_reply(&cl[3], r, sizeof(r)), 421);
	cr_assert_str_eq(r, "421 4.7.0 too many connections");
	cr_assert(cl_eof(&cl[3]));
	cl_close(&cl[3]);

	smtp_peer_stats(p, &st);
	cr_assert_eq(st.connections, 4);
	cr_assert_eq(st.refused, 1);
	cr_assert_eq(st.current, 3);
	cr_assert_eq(st.max_concurrent, 3);

	/* A freed slot is served again. */
	cl_send(&cl[0], "QUIT\r\n");
	cr_assert_eq(cl_reply(&cl[0], r, sizeof(r)), 221);
	cl_close(&cl[0]);
	for (int i = 0; i < 100; i++) {
		smtp_peer_stats(p, &st);
		if (st.current < 3)
			break;
		usleep(10000);
	}
	cr_assert_eq(cl_open(&cl[0], p, NULL), 0);
	cr_assert_eq(cl_reply(&cl[0], r, sizeof(r)), 220);
	for (int i = 0; i < 3; i++)
		cl_close(&cl[i]);
	cr_assert_eq(smtp_peer_wait_idle(p, 5000), 0);
	smtp_peer_stats(p, &st);
	cr_assert_eq(st.max_concurrent, 3);
	cr_assert_eq(st.current, 0);
	smtp_peer_free(p);
}

/* mail_ok - one MAIL and RSET on cl; the MAIL reply code. */
static int mail_ok(struct client *cl)
{
	char r[1024];
	int code;

	cl_send(cl, "MAIL FROM:<s@a.test>\r\n");
	code = cl_reply(cl, r, sizeof(r));
	cl_send(cl, "RSET\r\n");
	cl_reply(cl, r, sizeof(r));
	return code;
}

Test(smtp_peer, rate_limit_per_client_ip)
{
	struct smtp_peer_opts o = { .addr = "127.0.0.42", .max_msg_rate = 3 };
	struct smtp_peer *p = start(&o);
	struct smtp_peer_stats st;
	struct client a, b;
	char r[1024];
	int64_t t0 = mono_ns();

	cr_assert_eq(cl_open(&a, p, "127.0.0.2"), 0);
	cr_assert_eq(cl_open(&b, p, "127.0.0.3"), 0);
	cl_reply(&a, r, sizeof(r));
	cl_reply(&b, r, sizeof(r));
	cl_send(&a, "EHLO a.test\r\n");
	cl_send(&b, "EHLO b.test\r\n");
	cl_reply(&a, r, sizeof(r));
	cl_reply(&b, r, sizeof(r));

	for (int i = 0; i < 3; i++)
		cr_assert_eq(mail_ok(&a), 250);
	cr_assert_eq(mail_ok(&a), 451);
	cr_assert_eq(mail_ok(&a), 451);
	/* another client IP has its own window */
	for (int i = 0; i < 3; i++)
		cr_assert_eq(mail_ok(&b), 250);
	cr_assert_eq(mail_ok(&b), 451);
	cr_assert_lt(mono_ns() - t0, 900000000, "too slow to test a 1 s window");

	/* the window slides: a second after the first MAILs, room again */
	usleep(1100000);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(mail_ok(&a), 250);
	cr_assert_eq(mail_ok(&a), 451);

	smtp_peer_stats(p, &st);
	cr_assert_eq(st.rate_limited, 4);
	cr_assert_eq(smtp_peer_count_replies(p, SMTP_PEER_MAIL, "451 4.7.1"), 4);
	cr_assert_eq(smtp_peer_count_replies(p, SMTP_PEER_MAIL, "250"), 9);
	cl_close(&a);
	cl_close(&b);
	smtp_peer_free(p);
}

Test(smtp_peer, message_record)
{
	struct smtp_peer_opts o = {
		.addr = "127.0.0.7",
		.caps = SMTP_PEER_CAP_DSN | SMTP_PEER_CAP_8BITMIME,
		RULES({ .cmd = SMTP_PEER_RCPT, .match = "bad@",
			.reply = "550 5.1.1 no such user" }),
	};
	struct smtp_peer *p = start(&o);
	const struct smtp_peer_msg *m;
	const struct smtp_peer_cmd_rec *c;
	struct client cl;
	char r[1024];
	/* dot-stuffed lines, a bare LF that ends nothing, "\n.\n" too */
	const char *wire = "Subject: dots\r\n\r\n..leading dot\r\n...\r\n"
			   "a\n.\nb\r\n.x\r\n.\r\n";
	const char *body = "Subject: dots\r\n\r\n.leading dot\r\n..\r\n"
			   "a\n.\nb\r\nx\r\n";
	int64_t t0 = mono_ns();

	cr_assert_eq(cl_open(&cl, p, "127.0.0.9"), 0);
	cl_reply(&cl, r, sizeof(r));
	cl_send(&cl, "EHLO sender.example\r\n");
	cl_reply(&cl, r, sizeof(r));
	cl_send(&cl, "MAIL FROM:<s@a.test> BODY=8BITMIME\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cl_send(&cl, "RCPT TO:<one@b.test> NOTIFY=NEVER\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cl_send(&cl, "RCPT TO:<bad@b.test>\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 550);
	cl_send(&cl, "RCPT TO:<two@b.test>\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	cl_send(&cl, "DATA\r\n");
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 354);
	cl_send(&cl, wire);
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250);
	/* null sender */
	cr_assert_eq(cl_txn(&cl, "", "three@b.test", ".\r\n"), 0);

	cr_assert_eq(smtp_peer_wait_messages(p, 2, 1000), 0);
	m = smtp_peer_message(p, 0);
	cr_assert(m);
	cr_assert_eq(m->conn, 1);
	cr_assert_str_eq(m->client_ip, "127.0.0.9");
	cr_assert_str_eq(m->helo, "sender.example");
	cr_assert_str_eq(m->mail_from, "s@a.test");
	cr_assert_str_eq(m->mail_params, "BODY=8BITMIME");
	cr_assert_eq(m->nrcpt, 2);
	cr_assert_str_eq(m->rcpts[0], "one@b.test");
	cr_assert_str_eq(m->rcpt_params[0], "NOTIFY=NEVER");
	cr_assert_str_eq(m->rcpts[1], "two@b.test");
	cr_assert_str_eq(m->rcpt_params[1], "");
	cr_assert_str_eq(m->body, body);
	cr_assert_eq(m->size, strlen(body));
	cr_assert_eq(m->body_len, strlen(body));
	cr_assert_eq(m->hash, smtp_peer_hash(body, strlen(body)));
	cr_assert(!m->bdat);
	cr_assert(m->t_ns >= t0 && m->t_ns <= mono_ns());

	m = smtp_peer_message(p, 1);
	cr_assert_str_eq(m->mail_from, "");
	cr_assert_eq(m->size, 0);
	cr_assert_str_eq(m->body, "");
	cr_assert_null(smtp_peer_message(p, 2));

	/* per-recipient replies, from the command log */
	c = find_cmd(p, SMTP_PEER_RCPT, 1);
	cr_assert_str_eq(c->line, "RCPT TO:<bad@b.test>");
	cr_assert_str_eq(c->reply, "550 5.1.1 no such user");
	cr_assert_eq(c->code, 550);
	cr_assert_eq(smtp_peer_count_replies(p, SMTP_PEER_RCPT, "250"), 3);
	c = find_cmd(p, SMTP_PEER_CONNECT, 0);
	cr_assert_str_eq(c->line, "127.0.0.9");
	cr_assert_eq(c->code, 220);
	cl_close(&cl);
	smtp_peer_free(p);
}

Test(smtp_peer, big_bodies_and_body_keep)
{
	struct smtp_peer_opts o = { .caps = SMTP_PEER_CAP_CHUNKING,
				    .body_keep = 1000 };
	struct smtp_peer *p = start(&o);
	struct strbuf wire = { 0 }, body = { 0 };
	const struct smtp_peer_msg *m;
	struct client cl;
	char r[1024];
	char *chunk;

	/* a 100 KB line without CRLF (taken in pieces), then short lines */
	sb_adds(&wire, ".");
	for (int i = 0; i < 100000; i++)
		sb_addc(&wire, (char)('a' + i % 26));
	sb_adds(&wire, "\r\n");
	sb_add(&body, wire.buf + 1, wire.len - 1);
	for (int i = 0; i < 5000; i++) {
		sb_printf(&wire, "%s%d\r\n", i % 3 ? "" : "..", i);
		sb_printf(&body, "%s%d\r\n", i % 3 ? "" : ".", i);
	}
	sb_adds(&wire, ".\r\n");

	cr_assert_eq(cl_open(&cl, p, NULL), 0);
	cl_reply(&cl, r, sizeof(r));
	cl_send(&cl, "EHLO c.test\r\n");
	cl_reply(&cl, r, sizeof(r));
	cr_assert_eq(cl_txn(&cl, "s@a.test", "r@b.test", wire.buf), 0);

	/* 300 KB of binary in one BDAT LAST */
	chunk = xmalloc(300000);
	for (size_t i = 0; i < 300000; i++)
		chunk[i] = (char)(i * 7);
	cl_send(&cl, "MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\n");
	cl_reply(&cl, r, sizeof(r));
	cl_reply(&cl, r, sizeof(r));
	cl_send(&cl, "BDAT 300000 LAST\r\n");
	cl_sendn(&cl, chunk, 300000);
	cr_assert_eq(cl_reply(&cl, r, sizeof(r)), 250, "%s", r);

	m = smtp_peer_message(p, 0);
	cr_assert_eq(m->size, body.len);
	cr_assert_eq(m->hash, smtp_peer_hash(body.buf, body.len));
	cr_assert_eq(m->body_len, 1000);
	cr_assert_eq(memcmp(m->body, body.buf, 1000), 0);
	m = smtp_peer_message(p, 1);
	cr_assert(m->bdat);
	cr_assert_eq(m->chunks, 1);
	cr_assert_eq(m->size, 300000);
	cr_assert_eq(m->hash, smtp_peer_hash(chunk, 300000));
	free(chunk);
	sb_free(&wire);
	sb_free(&body);
	cl_close(&cl);
	smtp_peer_free(p);
}

Test(smtp_peer, wait_messages_times_out)
{
	struct smtp_peer_opts o = { 0 };
	struct smtp_peer *p = start(&o);
	struct client cl;
	char r[1024];
	int64_t t0 = mono_ns();

	cr_assert_eq(smtp_peer_wait_messages(p, 1, 300), -ETIMEDOUT);
	cr_assert_geq(mono_ns() - t0, 300000000);
	cr_assert_lt(mono_ns() - t0, 3000000000);
	cr_assert_eq(smtp_peer_wait_messages(p, 0, 0), 0);

	cr_assert_eq(cl_open(&cl, p, NULL), 0);
	cl_reply(&cl, r, sizeof(r));
	cl_send(&cl, "EHLO c.test\r\n");
	cl_reply(&cl, r, sizeof(r));
	cr_assert_eq(cl_txn(&cl, "s@a.test", "r@b.test", "x\r\n.\r\n"), 0);
	cr_assert_eq(smtp_peer_wait_messages(p, 1, 5000), 0);
	cr_assert_eq(smtp_peer_wait_messages(p, 2, 100), -ETIMEDOUT);
	cl_close(&cl);
	cr_assert_eq(smtp_peer_wait_idle(p, 5000), 0);
	smtp_peer_free(p);
}

/* A sender thread: n messages on its own connection; rc 0 when all went. */
struct sender {
	struct smtp_peer *p;
	int n;
	int rc;
	pthread_t t;
};

static void *sender_main(void *arg)
{
	struct sender *s = arg;
	struct client cl;
	char r[1024];

	s->rc = -1;
	if (cl_open(&cl, s->p, NULL) < 0)
		return NULL;
	if (cl_reply(&cl, r, sizeof(r)) != 220 ||
	    cl_send(&cl, "EHLO c.test\r\n") || cl_reply(&cl, r, sizeof(r)) != 250)
		goto out;
	for (int i = 0; i < s->n; i++)
		if (cl_txn(&cl, "s@a.test", "r@b.test", "hi\r\n.\r\n") < 0)
			goto out;
	if (cl_send(&cl, "QUIT\r\n") == 0 && cl_reply(&cl, r, sizeof(r)) == 221)
		s->rc = 0;
out:
	cl_close(&cl);
	return NULL;
}

Test(smtp_peer, concurrent_senders)
{
	struct smtp_peer_opts o = { .max_conns = 8, .no_log = true };
	struct smtp_peer *p = start(&o);
	struct smtp_peer_stats st;
	struct sender s[8];

	for (int i = 0; i < 8; i++) {
		s[i] = (struct sender){ .p = p, .n = 25 };
		cr_assert_eq(pthread_create(&s[i].t, NULL, sender_main, &s[i]), 0);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(s[i].t, NULL);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(s[i].rc, 0, "sender %d", i);
	cr_assert_eq(smtp_peer_wait_messages(p, 200, 5000), 0);
	cr_assert_eq(smtp_peer_wait_idle(p, 5000), 0);
	smtp_peer_stats(p, &st);
	cr_assert_eq(st.messages, 200);
	cr_assert_eq(st.connections, 8);
	cr_assert_eq(st.refused, 0);
	cr_assert_leq(st.max_concurrent, 8);
	cr_assert_geq(st.max_concurrent, 1);
	/* no_log: counted, not kept */
	cr_assert_eq(st.commands, 8 * (1 + 1 + 25 * 4 + 1));
	cr_assert_null(smtp_peer_command(p, 0));
	smtp_peer_free(p);
}

Test(smtp_peer, stop_interrupts_a_stalled_connection)
{
	struct smtp_peer_opts o = {
		RULES({ .cmd = SMTP_PEER_CONNECT, .delay_ms = 3600 * 1000 }),
	};
	struct smtp_peer *p = start(&o);
	struct smtp_peer_stats st;
	struct client cl, cl2;
	int64_t t0;

	cr_assert_eq(cl_open(&cl, p, NULL), 0);
	cr_assert_eq(cl_open(&cl2, p, NULL), 0);
	/* a client that pipelines without reading does not block stop */
	cl_send(&cl2, "NOOP\r\nNOOP\r\n");
	for (int i = 0; i < 100; i++) {
		smtp_peer_stats(p, &st);
		if (st.current == 2)
			break;
		usleep(10000);
	}
	cr_assert_eq(st.current, 2);
	t0 = mono_ns();
	smtp_peer_stop(p);
	cr_assert_lt(mono_ns() - t0, 2000000000);
	smtp_peer_stats(p, &st);
	cr_assert_eq(st.current, 0);
	cr_assert(cl_eof(&cl));
	smtp_peer_stop(p);	/* idempotent */
	cl_close(&cl);
	cl_close(&cl2);
	smtp_peer_free(p);
}

Test(smtp_peer, probability_is_seeded)
{
	struct smtp_peer_opts o = {
		.seed = 42,
		RULES({ .cmd = SMTP_PEER_RCPT, .probability = 0.25,
			.reply = "450 4.2.0 maybe later" }),
	};
	size_t fired[2];

	for (int run = 0; run < 2; run++) {
		struct smtp_peer *p = start(&o);
		struct client cl;
		char r[1024];

		cr_assert_eq(cl_open(&cl, p, NULL), 0);
		cl_reply(&cl, r, sizeof(r));
		cl_send(&cl, "EHLO c.test\r\n");
		cl_reply(&cl, r, sizeof(r));
		cl_send(&cl, "MAIL FROM:<s@a.test>\r\n");
		cl_reply(&cl, r, sizeof(r));
		for (int i = 0; i < 400; i++) {
			cl_send(&cl, "RCPT TO:<r@b.test>\r\n");
			cr_assert_gt(cl_reply(&cl, r, sizeof(r)), 0);
		}
		fired[run] = smtp_peer_count_replies(p, SMTP_PEER_RCPT, "450");
		cr_assert_eq(fired[run] + smtp_peer_count_replies(p, SMTP_PEER_RCPT,
								  "250"), 400);
		cl_close(&cl);
		smtp_peer_free(p);
	}
	cr_assert(fired[0] > 60 && fired[0] < 140, "fired %zu of 400", fired[0]);
	cr_assert_eq(fired[0], fired[1], "same seed, same choices");
}

Test(smtp_peer, start_errors)
{
	struct smtp_peer_opts o = { .addr = "127.0.0.3" };
	struct smtp_peer *p = start(&o), *q;
	struct smtp_peer_opts same = { .addr = "127.0.0.3",
				       .port = smtp_peer_port(p) };
	struct smtp_peer_opts bad = { .addr = "localhost" };
	char err[256];

	cr_assert_str_eq(smtp_peer_addr(p), "127.0.0.3");
	q = smtp_peer_start(&same, err, sizeof(err));
	cr_assert_null(q);
	cr_assert(strstr(err, "in use"), "%s", err);
	q = smtp_peer_start(&bad, err, sizeof(err));
	cr_assert_null(q);
	cr_assert(strstr(err, "numeric"), "%s", err);
	smtp_peer_free(p);
	smtp_peer_free(NULL);
}
