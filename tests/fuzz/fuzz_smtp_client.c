/*
 * tests/fuzz/fuzz_smtp_client.c - libFuzzer target for the outbound SMTP
 * client: arbitrary server bytes, cut into arbitrary receives, against a
 * fake driver that starts transactions, completes STARTTLS, pulls the
 * body in small pieces and checks every outcome.  Never a crash, hang,
 * leak, unbounded buffer or malformed outcome.  Single-threaded.
 *
 * Input: byte 0 = client switches (pipelining, chunking, 8bitmime, dsn,
 * want/require/active TLS), byte 1 = driver choices (body piece size,
 * transaction order, how to end).  The rest is what the server sends;
 * each 0xff byte marks a receive boundary and is not delivered.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#include "shards/smtp_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct smtp_rcpt r1[] = { { .addr = "b@y.org" } };
static const struct smtp_rcpt r3[] = {
	{ .addr = "r1@y.org", .notify = MAIL_NOTIFY_SUCCESS | MAIL_NOTIFY_DELAY,
	  .orcpt = "rfc822;r1+x=@y.org" },
	{ .addr = "bad\r\naddr" },
	{ .addr = "r3@y.org", .notify = MAIL_NOTIFY_NEVER, .orcpt = "r3@y.org" },
};
static const char dots[] = ".a\r\n..\r\n.\r\nx\n.y";
static char big[4096];

static const struct smtp_txn txns[] = {
	{ .mail_from = "a@x.org", .rcpts = r1, .rcpt_count = 1,
	  .body = "Hello\r\n", .body_len = 7 },
	{ .mail_from = "", .envid = "e=1 +", .ret = MAIL_RET_HDRS, .body_8bit = true,
	  .rcpts = r3, .rcpt_count = 3, .body = dots, .body_len = sizeof(dots) - 1 },
	{ .mail_from = "a@x.org", .smtputf8 = true, .rcpts = r3, .rcpt_count = 3,
	  .body = "", .body_len = 0 },
	{ .mail_from = "a@x.org", .rcpts = r1, .rcpt_count = 1,
	  .body = big, .body_len = sizeof(big) },
	{ .mail_from = "a\rb", .rcpts = r1, .rcpt_count = 1, .body = "x", .body_len = 1 },
};

struct drv {
	struct smtp_client *c;
	struct strbuf out;
	size_t cap;
	unsigned next_txn;
	unsigned started;
	const struct smtp_txn *cur;
	bool in_txn;
	bool done;
	uint8_t flags;
};

static void check_reply(const struct smtp_reply *r)
{
	if (r->code < 200 || r->code > 599)
		abort();
	/* RFC 3463 shape, class matching the code. */
	if (r->status[0] != (char)('0' + r->code / 100) || r->status[1] != '.')
		abort();
	if (strlen(r->text) >= 1024)
		abort();
	for (const char *p = r->text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			abort();
}

static void check_results(struct drv *d, const struct smtp_txn *t)
{
	struct smtp_reply r;

	for (size_t i = 0; i < t->rcpt_count; i++) {
		smtp_client_result(d->c, i, &r);
		check_reply(&r);
	}
}

/* drain - "send" out and the body; commands must be CRLF-terminated lines. */
static void drain(struct drv *d)
{
	static char scratch[64];
	const char *p;
	size_t n;

	for (size_t i = 0; i < d->out.len; i++)
		if (d->out.buf[i] == '\n' && (i == 0 || d->out.buf[i - 1] != '\r'))
			abort();
	if (d->out.len && d->out.buf[d->out.len - 1] != '\n')
		abort();
	sb_reset(&d->out);
	while ((n = smtp_client_body(d->c, scratch, d->cap, &p)) > 0)
		if (n > d->cap || !p)
			abort();
	if (smtp_client_phase(d->c) == SMTPC_PHASE_BODY)
		abort();
}

static void next(struct drv *d)
{
	const struct smtp_txn *t;

	if (d->started >= 4 || ((d->flags >> 4) & 1 && d->started >= 1)) {
		smtp_client_quit(d->c, &d->out);
		return;
	}
	t = &txns[(d->next_txn++ + (d->flags >> 5)) % ARRAY_SIZE(txns)];
	d->started++;
	d->in_txn = true;
	d->cur = t;
	if (smtp_client_start(d->c, t, &d->out) == SMTPC_EV_TXN_DONE) {
		check_results(d, t);
		d->in_txn = false;
		drain(d);
		next(d);
	}
}

static void on_event(struct drv *d, enum smtp_client_event ev)
{
	struct smtp_reply r;

	switch (ev) {
	case SMTPC_EV_NONE:
		break;
	case SMTPC_EV_READY:
		if (d->in_txn)
			abort();
		next(d);
		break;
	case SMTPC_EV_STARTTLS:
		if (smtp_client_phase(d->c) != SMTPC_PHASE_TLS)
			abort();
		smtp_client_tls_started(d->c, &d->out);
		break;
	case SMTPC_EV_TXN_DONE:
		if (!d->in_txn || smtp_client_phase(d->c) != SMTPC_PHASE_IDLE)
			abort();
		check_results(d, d->cur);
		d->in_txn = false;
		drain(d);
		next(d);
		break;
	case SMTPC_EV_FAILED:
		smtp_client_failure(d->c, &r);
		check_reply(&r);
		if (d->in_txn)
			check_results(d, d->cur);
		d->done = true;
		break;
	case SMTPC_EV_CLOSED:
		d->done = true;
		break;
	}
	if (d->done && smtp_client_phase(d->c) != SMTPC_PHASE_DONE)
		abort();
	drain(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_client_params p = { .helo_name = "fuzz.example" };
	struct drv d = { 0 };
	size_t off = 2;

	if (size < 2)
		return 0;
	memset(big, 'b', sizeof(big));
	p.allow_pipelining = data[0] & 1;
	p.allow_chunking = data[0] & 2;
	p.allow_8bitmime = data[0] & 4;
	p.allow_dsn = data[0] & 8;
	p.want_starttls = data[0] & 16;
	p.require_starttls = data[0] & 32;
	p.tls_active = data[0] & 64;
	d.flags = data[1];
	d.cap = 1 + (data[1] & 15) * 4;
	d.c = smtp_client_new(&p);

	while (off < size && !d.done) {
		const uint8_t *sep = memchr(data + off, 0xff, size - off);
		size_t end = sep ? (size_t)(sep - data) : size;
		size_t pos = off;

		while (pos < end && !d.done) {
			size_t used = 0;
			enum smtp_client_event ev =
				smtp_client_input(d.c, (const char *)data + pos, end - pos,
						  &used, &d.out);
			if (used > end - pos || (!used && ev == SMTPC_EV_NONE))
				abort();
			pos += used;
			on_event(&d, ev);
		}
		off = end + 1;
	}
	if (!d.done)
		on_event(&d, smtp_client_abort(d.c, (enum smtp_client_abort)(data[1] >> 6)));
	if (!d.done)
		abort();
	smtp_client_free(d.c);
	sb_free(&d.out);
	return 0;
}
