/*
 * fuzz_smtp_session - libFuzzer target for the SMTP server state machine
 * (engine/smtp_session.c): command parser, DATA/BDAT content scanner,
 * AUTH decoder and the header pass over finished messages.  Any input must
 * give well-formed replies, never crash, hang or leak.  Single-threaded;
 * one configuration, loaded on the first run, serves every run.
 *
 * Input: byte 0 picks the client (and so its <source> policy), byte 1 the
 * TLS state (bits 0-1) and how the rest is cut into reads (bits 2-7: 0 =
 * one read, else reads of that many octets); byte 2 picks the spool's
 * answers.  The rest is what the client sends; an octet 0xfe stands for
 * "the TLS handshake happens here" after a STARTTLS.
 *
 * Oracles beyond the sanitizers: every reply line is "ddd" + ' ' or '-' +
 * text + CRLF with no other CR or LF; a message always has a recipient;
 * text (non-BINARYMIME) messages never contain a bare CR, bare LF or NUL;
 * a reject report repeats a 4xx/5xx reply line the session sent.
 */
#include <arpa/inet.h>
#include <crypt.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "engine/smtp_session.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char conf_fmt[] =
	"host-name mx.fuzz\n"
	"relay-domain relay.test\n"
	"relay-domain [*.]wild.test\n"
	"relay-domain *.sub.test\n"
	"relay-domain other.test.\n"
	"relay-address special@other.test\n"
	"<virtual-mta vm1>\n"
	"    smtp-source-ip 192.0.2.10\n"
	"</virtual-mta>\n"
	"<source 0/0>\n"
	"    max-message-hops 5\n"
	"</source>\n"
	"<source 10.0.0.0/8>\n"
	"    always-allow-relaying yes\n"
	"    allow-unencrypted-plain-auth yes\n"
	"    max-message-size 4K\n"
	"    max-rcpt-per-message 4\n"
	"</source>\n"
	"<source 10.1.0.0/16>\n"
	"    too-many-rcpts-fails-message yes\n"
	"    require-auth yes\n"
	"</source>\n"
	"<source 10.2.0.0/16>\n"
	"    process-x-virtual-mta yes\n"
	"    process-x-job yes\n"
	"    process-x-envid yes\n"
	"    add-message-id-header yes\n"
	"    add-date-header yes\n"
	"    remove-header X-Secret\n"
	"    jobid-prefix {auth}:\n"
	"</source>\n"
	"<source 10.3.0.0/16>\n"
	"    hide-message-source yes\n"
	"    process-x-virtual-mta yes\n"
	"    invalid-virtual-mta-fallback vm1\n"
	"    add-received-header no\n"
	"</source>\n"
	"<source 192.0.2.66>\n"
	"    smtp-service no\n"
	"</source>\n"
	"<source {auth}>\n"
	"    always-allow-relaying yes\n"
	"</source>\n"
	"<smtp-user a>\n"
	"    password p\n"
	"</smtp-user>\n"
	"<smtp-user b>\n"
	"    password %s\n"
	"</smtp-user>\n";

static struct cfg *cfg;

static const char *const peers[] = {
	"10.0.0.1", "10.1.0.1", "10.2.0.1", "10.3.0.1", "192.0.2.1",
	"192.0.2.66", "2001:db8::1", "::ffff:10.2.0.9",
};

static void load(void)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	struct diag_list dl = { 0 };
	/* the cheapest SHA-256 crypt, so that the fuzzer stays fast */
	const char *h = crypt_r("p", "$5$rounds=1000$fuzzsalt", cd);
	char *text = xasprintf(conf_fmt, h);

	if (cfg_load_string("fuzz.conf", text, "/nonexistent", NULL, &cfg, &dl) != 0)
		abort();
	diag_free(&dl);
	free(text);
	free(cd);
}

/* check_replies - every line "ddd[ -]text<CRLF>", nothing else. */
static void check_replies(const struct strbuf *out, size_t from)
{
	const char *p = out->buf + from, *end = out->buf + out->len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl || nl - p < 5 || nl[-1] != '\r')
			abort();
		if (p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '9' ||
		    p[2] < '0' || p[2] > '9' || (p[3] != ' ' && p[3] != '-'))
			abort();
		if (memchr(p, '\r', (size_t)(nl - 1 - p)) || memchr(p, '\0', (size_t)(nl - p)))
			abort();
		p = nl + 1;
	}
}

/* on_reject - the report must be a refusal that was sent, with its code. */
static void on_reject(void *arg, const struct smtp_reject *r)
{
	const struct strbuf *out = arg;
	size_t n = strlen(r->reply);

	if (r->code < 400 || r->code > 599 || atoi(r->reply) != r->code ||
	    !r->client_ip || (unsigned)r->kind > SMTP_REJECT_COMMAND ||
	    (r->kind == SMTP_REJECT_RECIPIENT) != (r->rcpt != NULL))
		abort();
	if (out->len < n + 2 || memcmp(out->buf + out->len - n - 2, r->reply, n) != 0)
		abort();
}

/* What the driver holds of the message streaming now (spill). */
struct spill {
	uint64_t len;
	uint64_t fail_at;	/* refuse a piece past this (0: never) */
};

static int on_spill(void *arg, const void *p, size_t n)
{
	struct spill *sp = arg;

	if (!p) {
		if (n)
			abort();
		sp->len = 0;
		return 0;
	}
	if (n == 0)
		abort();	/* empty pieces are never passed on */
	if (sp->fail_at && sp->len + n > sp->fail_at)
		return -ENOSPC;
	sp->len += n;
	return 0;
}

static void check_message(const struct smtp_message *m)
{
	if (m->rcpt_count == 0 || !m->mail_from || !m->helo || !m->client_ip)
		abort();
	for (size_t i = 0; i < m->rcpt_count; i++)
		if (!m->rcpts[i].addr || !m->rcpts[i].addr[0])
			abort();
	if (m->body == MAIL_BODY_BINARYMIME)
		return;
	for (size_t i = 0; i < m->len; i++) {
		char c = m->data[i];
		if (c == '\0')
			abort();
		if (c == '\n' && (i == 0 || m->data[i - 1] != '\r'))
			abort();
		if (c == '\r' && i + 1 < m->len && m->data[i + 1] != '\n')
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!cfg)
		load();
	if (size < 3)
		return 0;

	struct sockaddr_storage ss;
	const char *ip = peers[data[0] % ARRAY_SIZE(peers)];
	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		in6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, ip, &in6->sin6_addr);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		in->sin_family = AF_INET;
		inet_pton(AF_INET, ip, &in->sin_addr);
	}
	unsigned flags = data[1] & 3, piece = data[1] >> 2, spool = data[2];
	struct smtp_session_params p = {
		.cfg = cfg,
		.source = cfg_source_lookup(cfg, (struct sockaddr *)&ss, NULL),
		.peer = (struct sockaddr *)&ss,
		.tls_available = flags & 1,
		.tls_active = (flags & 2) != 0,
		.max_message_size = 1 << 20,
		.max_rcpt = 100,
		.conn_id = 1,
		.reject = on_reject,
	};
	struct strbuf out = { 0 };
	/* streamed through a small window now and then, a disk that fills too */
	struct spill spill = { .fail_at = (spool & 0x20) ? 4096 : 0 };
	if (spool & 0x40) {
		p.spill = on_spill;
		p.spill_arg = &spill;
		p.spill_window = 16 + (spool & 0x1f);
	}

	p.reject_arg = &out;
	enum smtp_event ev;
	struct smtp_session *s = smtp_session_new(&p, &out, &ev);
	const char *in = (const char *)data + 3, *end = (const char *)data + size;
	unsigned msgs = 0;

	check_replies(&out, 0);
	while (in < end && ev != SMTP_EV_CLOSE) {
		if ((unsigned char)*in == 0xfe) {	/* a handshake point */
			in++;
			continue;
		}
		size_t n = piece ? piece : (size_t)(end - in);
		if (n > (size_t)(end - in))
			n = (size_t)(end - in);
		const char *mark = memchr(in, 0xfe, n);
		if (mark)
			n = (size_t)(mark - in);
		const char *chunk = in, *cend = in + n;
		in = cend;
		while (chunk < cend) {
			size_t used = 0, before = out.len;
			ev = smtp_session_input(s, chunk, (size_t)(cend - chunk), &used, &out);
			if (used > (size_t)(cend - chunk))
				abort();
			chunk += used;
			check_replies(&out, before);
			if (ev == SMTP_EV_NONE) {
				if (chunk != cend)
					abort();
			} else if (ev == SMTP_EV_MESSAGE) {
				const struct smtp_message *m = smtp_session_message(s);
				if (!m)
					abort();
				check_message(m);
				if (m->spilled != spill.len)
					abort();
				void *body = (msgs & 1) ? smtp_session_take_body(s) : NULL;
				static const int results[] = { 0, 0, 0, -ENOSPC, -EAGAIN, -EIO };
				int r = results[(spool + msgs++) % ARRAY_SIZE(results)];
				smtp_session_message_result(s, r, "QID", &out);
				free(body);
			} else if (ev == SMTP_EV_STARTTLS) {
				smtp_session_tls_started(s);
				/* plaintext up to the handshake point is dropped */
				const char *m2 = memchr(in, 0xfe, (size_t)(end - in));
				in = m2 ? m2 : end;
				break;
			} else if (ev == SMTP_EV_CLOSE) {
				break;
			}
		}
		/* now and then the client goes quiet */
		if (ev == SMTP_EV_NONE && in < end && (spool & 0x80) && *in == 'T')
			smtp_session_timeout(s, &out), ev = SMTP_EV_CLOSE;
	}
	smtp_session_free(s);
	sb_free(&out);
	return 0;
}
