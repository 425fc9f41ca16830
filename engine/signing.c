/*
 * engine/signing.c - DKIM at intake (see signing.h).  Intake threads.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "util/dkim.h"
#include "util/log.h"
#include "engine/signing.h"

#define DOMAIN_MAX 256

/*
 * header_value - the unfolded value of the first field called name in
 * hdr[0..len), in out (emptied first).  False when there is none.
 */
static bool header_value(const char *hdr, size_t len, const char *name,
			 struct strbuf *out)
{
	size_t nlen = strlen(name);
	const char *p = hdr, *end = hdr + len;
	bool in = false;

	sb_reset(out);
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *next = nl ? nl + 1 : end;
		const char *e = nl ? (nl > p && nl[-1] == '\r' ? nl - 1 : nl) : end;
		if (e == p)
			break;		/* end of the header section */
		if (*p == ' ' || *p == '\t') {
			if (in)
				sb_add(out, p, (size_t)(e - p));
		} else if (in) {
			return true;
		} else if ((size_t)(e - p) > nlen && strncasecmp(p, name, nlen) == 0) {
			const char *q = p + nlen;
			while (q < e && (*q == ' ' || *q == '\t'))
				q++;
			if (q < e && *q == ':') {
				in = true;
				sb_add(out, q + 1, (size_t)(e - q - 1));
			}
		}
		p = next;
	}
	return in;
}

/*
 * addr_domain - the lower-case domain of the (first) address in a From:
 * or Sender: value, or of a configured identity: "A <a@x.y>", "a@x.y",
 * "@x.y".  False when there is none.
 */
static bool addr_domain(const char *v, char *dom, size_t cap)
{
	const char *lt = strchr(v, '<');
	const char *start = lt ? lt + 1 : v;
	const char *stop = lt ? strchr(start, '>') : NULL;
	const char *at = NULL;

	if (!stop)
		stop = start + strcspn(start, ",;");
	for (const char *p = start; p < stop; p++)
		if (*p == '@')
			at = p;
	if (!at)
		return false;
	size_t n = 0;
	for (const char *p = at + 1; p < stop && n + 1 < cap; p++) {
		unsigned char c = (unsigned char)*p;
		if (!isalnum(c) && c != '.' && c != '-' && c != '_')
			break;
		dom[n++] = (char)tolower(c);
	}
	while (n && dom[n - 1] == '.')
		n--;
	dom[n] = '\0';
	return n > 0;
}

/* within - dom is parent or a subdomain of it. */
static bool within(const char *dom, const char *parent)
{
	size_t pl = strlen(parent), dl = strlen(dom);

	if (!*dom || !*parent)
		return false;
	if (strcmp(parent, dom) == 0)
		return true;
	return dl > pl && dom[dl - pl - 1] == '.' && strcmp(dom + dl - pl, parent) == 0;
}

/* key_covers - the key's domain is dom or a parent of it ('*': any). */
static bool key_covers(const struct cfg_domain_key *k, const char *dom)
{
	return *dom && (strcmp(k->domain, "*") == 0 || within(dom, k->domain));
}

static bool alg_allowed(const struct cfg_queue *q, const struct cfg_domain_key *k)
{
	switch (q->dkim_algorithm) {
	case CFG_DKIM_ALG_RSA:
		return dkim_key_alg(k->key) == DKIM_RSA_SHA256;
	case CFG_DKIM_ALG_ED25519:
		return dkim_key_alg(k->key) == DKIM_ED25519_SHA256;
	default:
		return true;
	}
}

/* A key chosen to sign, and the domain it signs for (d=). */
struct choice {
	const struct cfg_domain_key *key;
	const char *d;
};

struct chooser {
	const struct cfg_queue *q;
	const struct cfg_domain_keys *lists[2];	/* the vmta's, the global */
	struct choice c[SIGNING_MAX_SIGNATURES];
	size_t n;
};

/*
 * choose - add every allowed key covering dom (each key once); the
 * virtual-mta's keys for a domain shadow the top-level ones.
 */
static void choose(struct chooser *ch, const char *dom)
{
	bool found = false;

	for (size_t l = 0; l < 2 && !found; l++) {
		const struct cfg_domain_keys *ks = ch->lists[l];
		for (size_t i = 0; ks && i < ks->count; i++) {
			const struct cfg_domain_key *k = &ks->items[i];
			bool seen = false;
			if (!key_covers(k, dom) || !alg_allowed(ch->q, k))
				continue;
			found = true;
			for (size_t j = 0; j < ch->n; j++)
				seen |= ch->c[j].key == k ||
					(strcmp(ch->c[j].key->selector, k->selector) == 0 &&
					 strcmp(ch->c[j].key->domain, k->domain) == 0);
			if (seen || ch->n == SIGNING_MAX_SIGNATURES)
				continue;
			ch->c[ch->n++] = (struct choice){
				.key = k, .d = strcmp(k->domain, "*") == 0 ? dom : k->domain,
			};
		}
	}
}

/* identity_domain - the domain an identity setting names, from the headers. */
static bool identity_domain(const char *setting, const char *hdr, size_t hlen,
			    struct strbuf *tmp, char *dom, size_t cap)
{
	if (!setting)
		return false;
	if (strchr(setting, '@'))
		return addr_domain(setting, dom, cap);
	if (!str_ieq(setting, "from") && !str_ieq(setting, "sender") &&
	    !str_ieq(setting, "sender-or-from")) {
		/* a bare domain, as @domain */
		snprintf(dom, cap, "%s", setting);
		for (char *p = dom; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		return true;
	}
	bool sender = !str_ieq(setting, "from") &&
		      header_value(hdr, hlen, "Sender", tmp) && addr_domain(sb_str(tmp), dom, cap);
	if (sender || str_ieq(setting, "sender"))
		return sender;
	return header_value(hdr, hlen, "From", tmp) && addr_domain(sb_str(tmp), dom, cap);
}

/* signing_queue - the first recipient queue that asks for a signature. */
static const struct cfg_queue *signing_queue(const struct cfg *cfg, const char *vmta,
					     const struct smtp_message *msg)
{
	/* a pool: its members share the pool's <domain> settings */
	const struct cfg_pool *pool = vmta ? cfg_pool_find(cfg, vmta) : NULL;
	const char *through = pool && pool->member_count ? pool->members[0]->name : vmta;

	for (size_t i = 0; i < msg->rcpt_count; i++) {
		const char *at = strrchr(msg->rcpts[i].addr, '@');
		const char *dom = at ? at + 1 : "";
		const struct cfg_queue *q = cfg_queue_lookup(cfg, dom, through);
		if (!q)
			q = cfg_queue_lookup(cfg, dom, NULL);
		if (q && q->dkim_sign == CFG_DKIM_YES)
			return q;
	}
	return NULL;
}

/* header_names - the base set plus the queue's dkim-headers. */
static size_t header_names(const struct cfg_queue *q, const char **names)
{
	size_t n = 0;

	for (size_t i = 0; i < dkim_default_header_count; i++)
		names[n++] = dkim_default_headers[i];
	for (size_t i = 0; i < q->dkim_headers.count && n < DKIM_MAX_HEADERS; i++)
		names[n++] = q->dkim_headers.items[i];
	return n;
}

/* hash_tail - the streamed rest of the body, a chunk at a time. */
static int hash_tail(struct dkim_body *body, const struct signing_tail *tail)
{
	enum { CHUNK = 64 * 1024 };
	char *buf = xmalloc(CHUNK);
	int rc = 0;

	for (uint64_t off = 0; off < tail->len && rc == 0;) {
		size_t n = tail->len - off < CHUNK ? (size_t)(tail->len - off) : CHUNK;
		rc = tail->read(tail->arg, off, buf, n);
		if (rc == 0)
			dkim_body_update(body, buf, n);
		off += n;
	}
	free(buf);
	return rc;
}

int signing_apply(const struct cfg *cfg, const char *vmta,
		  const struct smtp_message *msg, const struct signing_tail *tail,
		  int64_t now, struct strbuf *out)
{
	const struct cfg_queue *q = signing_queue(cfg, vmta, msg);

	if (!q)
		return 0;
	size_t hend = dkim_header_end(msg->data, msg->len);
	const struct cfg_vmta *v = vmta ? cfg_vmta_find(cfg, vmta) : NULL;
	struct chooser ch = {
		.q = q,
		.lists = { v ? &v->domain_keys : NULL, &cfg_global(cfg)->domain_keys },
	};
	char author[DOMAIN_MAX] = "", ident[DOMAIN_MAX] = "", fb[DOMAIN_MAX] = "";
	struct strbuf tmp = { 0 };

	/* DMARC aligns with the From: author: those keys first */
	if (header_value(msg->data, hend, "From", &tmp))
		addr_domain(sb_str(&tmp), author, sizeof(author));
	choose(&ch, author);
	if (identity_domain(q->dkim_identity, msg->data, hend, &tmp, ident, sizeof(ident)))
		choose(&ch, ident);
	if (!ch.n && identity_domain(q->dkim_identity_fallback, msg->data, hend, &tmp,
				     fb, sizeof(fb)))
		choose(&ch, fb);
	sb_free(&tmp);
	if (!ch.n)
		return 0;

	const char *names[DKIM_MAX_HEADERS];
	size_t nnames = header_names(q, names);
	/* one body hash for every signature: they share the canonicalization */
	struct dkim_body *body = dkim_body_new((enum dkim_canon)q->dkim_body_canon);
	unsigned char bh[DKIM_HASH_LEN];
	uint64_t blen;
	dkim_body_update(body, msg->data + hend, msg->len - hend);
	int trc = tail && tail->len ? hash_tail(body, tail) : 0;
	dkim_body_final(body, bh, &blen);
	dkim_body_free(body);
	if (trc < 0) {
		log_msg(LOG_LEVEL_ERROR, "dkim", NULL,
			"cannot read back the streamed body of a message from <%s>, it goes unsigned: %s",
			msg->mail_from, strerror(-trc));
		return trc;
	}

	bool fixed = q->dkim_identity && strchr(q->dkim_identity, '@') &&
		     q->dkim_identity[0] != '@';
	struct strbuf sigs = { 0 };
	int rc = 0;
	for (size_t i = 0; i < ch.n && rc == 0; i++) {
		const struct choice *c = &ch.c[i];
		bool tstamp = q->dkim_add_timestamp || q->dkim_expire_after;
		struct dkim_sign_params p = {
			.key = c->key->key,
			.domain = c->d,
			.selector = c->key->selector,
			/* i= only for a configured address inside d= */
			.identity = fixed && within(ident, c->d) ? q->dkim_identity : NULL,
			.header_canon = (enum dkim_canon)q->dkim_headers_canon,
			.body_canon = (enum dkim_canon)q->dkim_body_canon,
			.headers = names,
			.nheaders = nnames,
			.oversign = true,
			.body_length = q->dkim_add_body_limit,
			.timestamp = tstamp ? now : 0,
			.expire = q->dkim_expire_after ? now + (int64_t)q->dkim_expire_after : 0,
		};
		char err[256];
		rc = dkim_sign_hashed(&p, msg->data, hend, bh, blen, &sigs, err, sizeof(err));
		if (rc < 0)
			log_msg(LOG_LEVEL_ERROR, "dkim", NULL,
				"DKIM signing with %s (s=%s d=%s) failed, message from <%s> goes unsigned: %s",
				c->key->path, c->key->selector, c->d, msg->mail_from, err);
	}
	if (rc < 0) {
		sb_free(&sigs);
		return rc;
	}
	sb_add(out, sigs.buf, sigs.len);
	sb_add(out, msg->data, msg->len);
	sb_free(&sigs);
	return (int)ch.n;
}
