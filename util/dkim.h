/*
 * util/dkim - DKIM signing (RFC 6376) with rsa-sha256 and ed25519-sha256
 * (RFC 8463): private keys, header and body canonicalization (simple and
 * relaxed), and the DKIM-Signature header field.  wolfSSL does the
 * hashing, the signatures and the base64.
 *
 * Threads: pure code, no global state.  A loaded struct dkim_key is never
 * modified after dkim_key_load() (each signature decodes its own working
 * copy), so any number of threads may sign with the same key at once.
 * The only I/O is dkim_key_load() reading the key file, which the config
 * loader does before the privilege drop.
 *
 * Lines: CRLF ends a line, and so does a bare LF (every receiving MTA and
 * both reference verifiers, dkimpy and OpenDKIM, read a bare LF as a line
 * end), so a message is signed as receivers will see it.  A bare CR is an
 * ordinary octet.  The message is the unstuffed text, as stored; dot
 * stuffing belongs to the SMTP transfer, not to DKIM.
 *
 * Ownership: keys belong to whoever loaded them (dkim_key_free);
 * struct dkim_body to its creator (dkim_body_free).  Text goes to the
 * caller's strbuf.  Errors are returned with a message in err.
 */
#ifndef COREMTA_UTIL_DKIM_H
#define COREMTA_UTIL_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

struct dkim_key;
struct dkim_body;

enum dkim_alg { DKIM_RSA_SHA256, DKIM_ED25519_SHA256 };
enum dkim_canon { DKIM_CANON_RELAXED, DKIM_CANON_SIMPLE };

#define DKIM_HASH_LEN		32	/* SHA-256 */
#define DKIM_RSA_MIN_BITS	1024	/* RFC 8301: verifiers refuse less */
#define DKIM_RSA_GOOD_BITS	2048	/* what receivers expect today */
#define DKIM_MAX_HEADERS	64	/* names in one h= list */

/*
 * dkim_key_load - read a private key: PEM (PKCS#1 "RSA PRIVATE KEY" or
 * PKCS#8 "PRIVATE KEY", RSA or Ed25519), the same in DER, or an Ed25519
 * key as base64 of its 32-byte seed (or 64-byte seed||public).  Returns 0,
 * or -errno with the reason in err ("cannot read ...: ...", "not a ...",
 * an RSA key under DKIM_RSA_MIN_BITS).  Encrypted keys are refused.
 */
int dkim_key_load(const char *path, struct dkim_key **out, char *err,
		  size_t errlen);
/* dkim_key_parse - the same from bytes in memory; name is for messages. */
int dkim_key_parse(const void *data, size_t len, const char *name,
		   struct dkim_key **out, char *err, size_t errlen);
void dkim_key_free(struct dkim_key *key);
enum dkim_alg dkim_key_alg(const struct dkim_key *key);
/* dkim_key_bits - modulus bits of an RSA key; 256 for Ed25519. */
unsigned dkim_key_bits(const struct dkim_key *key);
/*
 * dkim_key_dns_record - the TXT record that publishes the public key:
 * "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" or
 * "v=DKIM1; k=ed25519; p=<base64 of the 32-byte key>" (RFC 8463).
 */
int dkim_key_dns_record(const struct dkim_key *key, struct strbuf *out);
const char *dkim_alg_name(enum dkim_alg alg);

/* ---- body: streaming canonicalization and hash ---- */

struct dkim_body *dkim_body_new(enum dkim_canon canon);
/* dkim_body_update - more body octets, in any split. */
void dkim_body_update(struct dkim_body *b, const void *data, size_t len);
/*
 * dkim_body_final - the body hash (bh=) and the canonical length (l=).
 * The body may not be updated afterwards.
 */
void dkim_body_final(struct dkim_body *b, unsigned char hash[DKIM_HASH_LEN],
		     uint64_t *length);
void dkim_body_free(struct dkim_body *b);

/* ---- canonicalization on its own (tests, fuzzing) ---- */

/*
 * dkim_header_end - where the body starts: just past the empty line that
 * ends the header section, or len when there is none (all header).
 */
size_t dkim_header_end(const char *msg, size_t len);
/* dkim_canon_body - the canonical body, one shot, appended to out. */
void dkim_canon_body(enum dkim_canon canon, const char *body, size_t len,
		     struct strbuf *out);
/*
 * dkim_canon_headers - the canonical header fields that names[] select
 * (RFC 6376 5.4.2: bottom-up, each instance once, an absent one adds
 * nothing), from the header section hdr[0..len), appended to out.
 */
void dkim_canon_headers(enum dkim_canon canon, const char *hdr, size_t len,
			const char *const *names, size_t nnames,
			struct strbuf *out);

/* ---- signing ---- */

struct dkim_sign_params {
	const struct dkim_key *key;
	const char *domain;		/* d= */
	const char *selector;		/* s= */
	const char *identity;		/* i= (an address in d=), or NULL */
	enum dkim_canon header_canon;
	enum dkim_canon body_canon;
	/*
	 * Header names to sign, in order; NULL = the default list below.
	 * Each name is signed once per instance present, plus once more
	 * (over-signing) when oversign: a header added later, or one that
	 * was absent, then breaks the signature.
	 */
	const char *const *headers;
	size_t nheaders;
	bool oversign;
	bool body_length;		/* l= */
	int64_t timestamp;		/* t= (unix seconds); 0 = none */
	int64_t expire;			/* x= (unix seconds); 0 = none */
};

/* The headers signed when the caller names none (the base set). */
extern const char *const dkim_default_headers[];
extern const size_t dkim_default_header_count;

/*
 * dkim_sign - the "DKIM-Signature: ..." field (folded, ending in CRLF),
 * appended to out, for the message msg[0..len) (header section, empty
 * line, body).  The field goes on top of the message.  Returns 0, or
 * -EINVAL (bad parameters) / -EIO (the crypto failed) with err set.
 */
int dkim_sign(const struct dkim_sign_params *p, const char *msg, size_t len,
	      struct strbuf *out, char *err, size_t errlen);
/*
 * dkim_sign_hashed - the same when the body was hashed apart (streaming):
 * hdr[0..hlen) is the header section, bh and blen from dkim_body_final()
 * with p->body_canon.
 */
int dkim_sign_hashed(const struct dkim_sign_params *p, const char *hdr,
		     size_t hlen, const unsigned char bh[DKIM_HASH_LEN],
		     uint64_t blen, struct strbuf *out, char *err,
		     size_t errlen);

#endif
