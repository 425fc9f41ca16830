/*
 * util/dkim.c - DKIM keys, canonicalization and signatures (see dkim.h).
 * Pure code for any thread; only dkim_key_load() touches a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* wc_port.h names sprintf, which util/poison.h forbids (see util/tls.c) */
#define XSPRINTF coremta_no_sprintf
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/coding.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/rsa.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/hash.h>

#include "util/util.h"
#include "util/dkim.h"

#define KEY_FILE_MAX	(64u * 1024)	/* a 16384-bit PEM key is ~13 KB */
#define RSA_SIG_MAX	1024		/* bytes: an 8192-bit modulus */
#define FOLD_AT		76		/* columns before a tag list folds */
#define B64_LINE	72		/* b= and bh= chunk per folded line */

struct dkim_key {
	enum dkim_alg alg;
	unsigned bits;
	/* RSA: the DER as loaded, decoded again per signature (a wolfSSL
	 * RsaKey keeps per-operation state, so it cannot be shared). */
	unsigned char *der;
	size_t der_len;
	/* Ed25519: the 32-byte seed and the public key derived from it */
	unsigned char seed[ED25519_KEY_SIZE];
	unsigned char pub[ED25519_PUB_KEY_SIZE];
};

/* The base set: what identifies, addresses and renders the message. */
const char *const dkim_default_headers[] = {
	"from", "sender", "reply-to", "subject", "date", "message-id", "to",
	"cc", "mime-version", "content-type", "content-transfer-encoding",
	"content-id", "content-description", "resent-date", "resent-from",
	"resent-sender", "resent-to", "resent-cc", "resent-message-id",
	"in-reply-to", "references", "list-id", "list-help",
	"list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
	"list-post", "list-owner", "list-archive",
};
const size_t dkim_default_header_count = ARRAY_SIZE(dkim_default_headers);

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* b64 - base64 of in[0..n) without line breaks, appended to out. */
static void b64(const unsigned char *in, size_t n, struct strbuf *out)
{
	word32 olen = (word32)((n + 2) / 3 * 4 + 4);
	unsigned char *tmp = xmalloc(olen);

	BUG_ON(Base64_Encode_NoNl(in, (word32)n, tmp, &olen) != 0);
	sb_add(out, (const char *)tmp, olen);
	free(tmp);
}

/* ------------------------------------------------------------------ */
/* keys                                                                 */

const char *dkim_alg_name(enum dkim_alg alg)
{
	return alg == DKIM_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

enum dkim_alg dkim_key_alg(const struct dkim_key *key)
{
	return key->alg;
}

unsigned dkim_key_bits(const struct dkim_key *key)
{
	return key->bits;
}

void dkim_key_free(struct dkim_key *key)
{
	if (!key)
		return;
	if (key->der) {
		memset(key->der, 0, key->der_len);
		free(key->der);
	}
	memset(key, 0, sizeof(*key));
	free(key);
}

/* rsa_decode - the RSA key in der into a fresh wolfSSL key. */
static int rsa_decode(const unsigned char *der, size_t len, RsaKey *rsa)
{
	word32 idx = 0;

	if (wc_InitRsaKey(rsa, NULL) != 0)
		return -ENOMEM;
	if (wc_RsaPrivateKeyDecode(der, &idx, rsa, (word32)len) != 0) {
		wc_FreeRsaKey(rsa);
		return -EINVAL;
	}
	return 0;
}

/* ed_from_seed - a key from its 32-byte seed (public key derived). */
static int ed_from_seed(const unsigned char *seed, struct dkim_key *k)
{
	ed25519_key ek;
	int rc = -EINVAL;

	if (wc_ed25519_init(&ek) != 0)
		return -ENOMEM;
	if (wc_ed25519_import_private_only(seed, ED25519_KEY_SIZE, &ek) == 0 &&
	    wc_ed25519_make_public(&ek, k->pub, sizeof(k->pub)) == 0) {
		memcpy(k->seed, seed, ED25519_KEY_SIZE);
		k->alg = DKIM_ED25519_SHA256;
		k->bits = 256;
		rc = 0;
	}
	wc_ed25519_free(&ek);
	return rc;
}

/* from_der - an RSA (PKCS#1 or #8) or Ed25519 (PKCS#8) private key. */
static int from_der(const unsigned char *der, size_t len, struct dkim_key *k)
{
	RsaKey rsa;

	if (rsa_decode(der, len, &rsa) == 0) {
		int size = wc_RsaEncryptSize(&rsa);
		wc_FreeRsaKey(&rsa);
		if (size <= 0)
			return -EINVAL;
		k->alg = DKIM_RSA_SHA256;
		k->bits = (unsigned)size * 8;
		k->der = xmalloc(len);
		memcpy(k->der, der, len);
		k->der_len = len;
		return 0;
	}

	ed25519_key ek;
	word32 idx = 0;
	unsigned char seed[ED25519_KEY_SIZE];
	word32 slen = sizeof(seed);
	int rc = -EINVAL;

	if (wc_ed25519_init(&ek) != 0)
		return -ENOMEM;
	if (wc_Ed25519PrivateKeyDecode(der, &idx, &ek, (word32)len) == 0 &&
	    wc_ed25519_export_private_only(&ek, seed, &slen) == 0 &&
	    slen == sizeof(seed))
		rc = ed_from_seed(seed, k);
	wc_ed25519_free(&ek);
	memset(seed, 0, sizeof(seed));
	return rc;
}

/* from_base64_seed - an Ed25519 key written as base64 (rspamd, ...). */
static int from_base64_seed(const char *text, size_t len, struct dkim_key *k)
{
	char clean[128];
	unsigned char raw[96];
	size_t n = 0;
	word32 rlen = sizeof(raw);

	for (size_t i = 0; i < len; i++) {
		if (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')
			continue;
		if (n == sizeof(clean))
			return -EINVAL;
		clean[n++] = text[i];
	}
	if (n == 0 || Base64_Decode((const byte *)clean, (word32)n, raw, &rlen) != 0)
		return -EINVAL;
	int rc = (rlen == 32 || rlen == 64) ? ed_from_seed(raw, k) : -EINVAL;
	memset(raw, 0, sizeof(raw));
	memset(clean, 0, sizeof(clean));
	return rc;
}

int dkim_key_parse(const void *data, size_t len, const char *name,
		   struct dkim_key **out, char *err, size_t errlen)
{
	const char *text = data;
	struct dkim_key *k = xcalloc(1, sizeof(*k));
	int rc;

	if (len && memmem(text, len, "-----BEGIN", 10)) {
		if (memmem(text, len, "ENCRYPTED", 9)) {
			err_printf(err, errlen, "'%s' is an encrypted key; DKIM keys must be unencrypted (readable by root only)",
			       name);
			free(k);
			return -EINVAL;
		}
		unsigned char *der = xmalloc(len);
		int n = wc_KeyPemToDer((const unsigned char *)text, (int)len, der,
				       (int)len, NULL);
		rc = n > 0 ? from_der(der, (size_t)n, k) : -EINVAL;
		memset(der, 0, len);
		free(der);
	} else {
		rc = from_der(data, len, k);
		if (rc < 0)
			rc = from_base64_seed(text, len, k);
	}
	if (rc < 0) {
		err_printf(err, errlen, "'%s' is not an RSA or Ed25519 private key (PEM, DER, or base64 of an Ed25519 seed)",
		       name);
		dkim_key_free(k);
		return rc;
	}
	if (k->alg == DKIM_RSA_SHA256 && k->bits < DKIM_RSA_MIN_BITS) {
		err_printf(err, errlen, "'%s' is a %u-bit RSA key; DKIM verifiers refuse keys under %u bits (RFC 8301), use 2048",
		       name, k->bits, DKIM_RSA_MIN_BITS);
		dkim_key_free(k);
		return -EINVAL;
	}
	*out = k;
	return 0;
}

int dkim_key_load(const char *path, struct dkim_key **out, char *err,
		  size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	ssize_t n;
	size_t got = 0;

	if (fd < 0) {
		int e = errno;
		err_printf(err, errlen, "cannot read key file '%s': %s", path, strerror(e));
		return -e;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_MAX) {
		err_printf(err, errlen, "'%s' is not a key file (not a regular file, or over %u bytes)",
		       path, KEY_FILE_MAX);
		close(fd);
		return -EINVAL;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (got < (size_t)st.st_size &&
	       (n = read(fd, buf + got, (size_t)st.st_size - got)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			err_printf(err, errlen, "cannot read key file '%s': %s", path, strerror(e));
			free(buf);
			close(fd);
			return -e;
		}
		got += (size_t)n;
	}
	close(fd);
	int rc = dkim_key_parse(buf, got, path, out, err, errlen);
	memset(buf, 0, got);
	free(buf);
	return rc;
}

int dkim_key_dns_record(const struct dkim_key *key, struct strbuf *out)
{
	if (key->alg == DKIM_ED25519_SHA256) {
		sb_adds(out, "v=DKIM1; k=ed25519; p=");
		b64(key->pub, sizeof(key->pub), out);
		return 0;
	}
	RsaKey rsa;
	unsigned char spki[RSA_SIG_MAX + 64];
	int rc = rsa_decode(key->der, key->der_len, &rsa);

	if (rc < 0)
		return rc;
	int n = wc_RsaKeyToPublicDer(&rsa, spki, sizeof(spki));
	wc_FreeRsaKey(&rsa);
	if (n <= 0)
		return -EIO;
	sb_adds(out, "v=DKIM1; k=rsa; p=");
	b64(spki, (size_t)n, out);
	return 0;
}

/* ------------------------------------------------------------------ */
/* lines and header fields                                              */

/*
 * line_end - the end of the line's content at p (before CRLF or a bare
 * LF) and, in *next, where the next line starts.
 */
static const char *line_end(const char *p, const char *end, const char **next)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));

	if (!nl) {
		*next = end;
		return end;
	}
	*next = nl + 1;
	return nl > p && nl[-1] == '\r' ? nl - 1 : nl;
}

size_t dkim_header_end(const char *msg, size_t len)
{
	const char *p = msg, *end = msg + len, *next;

	while (p < end) {
		const char *e = line_end(p, end, &next);
		if (e == p && next > p)
			return (size_t)(next - msg);
		p = next;
	}
	return len;
}

/* One header field: its lines [start, end), the name's length. */
struct field {
	const char *start, *end;
	size_t name_len;		/* before the colon, trailing WSP cut */
	bool named;			/* has a colon: can be selected */
};

/* split_fields - the fields of hdr[0..len) (stops at the empty line). */
static struct field *split_fields(const char *hdr, size_t len, size_t *count)
{
	const char *p = hdr, *end = hdr + len, *next;
	struct field *f = NULL;
	size_t n = 0, cap = 0;

	while (p < end) {
		const char *e = line_end(p, end, &next);
		if (e == p)
			break;			/* the empty line */
		if (is_wsp(*p) && n) {
			f[n - 1].end = next;	/* folded continuation */
			p = next;
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			f = xrealloc(f, cap * sizeof(*f));
		}
		const char *colon = memchr(p, ':', (size_t)(e - p));
		size_t nl = colon ? (size_t)(colon - p) : (size_t)(e - p);
		while (nl && is_wsp(p[nl - 1]))
			nl--;
		f[n++] = (struct field){ .start = p, .end = next, .name_len = nl,
					 .named = colon != NULL };
		p = next;
	}
	*count = n;
	return f;
}

/* canon_field - one field, canonicalized, with its CRLF. */
static void canon_field(enum dkim_canon canon, const struct field *f,
			struct strbuf *out)
{
	const char *p = f->start, *next;

	if (canon == DKIM_CANON_SIMPLE) {
		while (p < f->end) {
			const char *e = line_end(p, f->end, &next);
			sb_add(out, p, (size_t)(e - p));
			sb_add(out, "\r\n", 2);
			p = next;
		}
		return;
	}
	for (size_t i = 0; i < f->name_len; i++) {
		char c = f->start[i];
		sb_addc(out, c >= 'A' && c <= 'Z' ? (char)(c + 32) : c);
	}
	sb_addc(out, ':');
	/* the value: unfolded, WSP runs as one SP, none at either end */
	bool started = false, space = false;
	const char *colon = memchr(f->start, ':', (size_t)(f->end - f->start));
	p = colon ? colon + 1 : f->end;
	while (p < f->end) {
		const char *e = line_end(p, f->end, &next);
		for (const char *q = p; q < e; q++) {
			if (is_wsp(*q)) {
				space = started;
				continue;
			}
			if (space)
				sb_addc(out, ' ');
			space = false;
			started = true;
			sb_addc(out, *q);
		}
		p = next;
	}
	sb_add(out, "\r\n", 2);
}

static bool name_is(const struct field *f, const char *name)
{
	return f->named && strlen(name) == f->name_len &&
	       strncasecmp(f->start, name, f->name_len) == 0;
}

/* select_fields - RFC 6376 5.4.2: the last unused instance per name. */
static void select_fields(enum dkim_canon canon, const struct field *f,
			  size_t nf, const char *const *names, size_t nnames,
			  struct strbuf *out)
{
	bool *used = xcalloc(nf ? nf : 1, sizeof(*used));

	for (size_t i = 0; i < nnames; i++)
		for (size_t k = nf; k-- > 0;)
			if (!used[k] && name_is(&f[k], names[i])) {
				used[k] = true;
				canon_field(canon, &f[k], out);
				break;
			}
	free(used);
}

void dkim_canon_headers(enum dkim_canon canon, const char *hdr, size_t len,
			const char *const *names, size_t nnames,
			struct strbuf *out)
{
	size_t nf;
	struct field *f = split_fields(hdr, len, &nf);

	select_fields(canon, f, nf, names, nnames, out);
	free(f);
}

/* ------------------------------------------------------------------ */
/* body                                                                 */

typedef void emit_fn(void *ctx, const char *p, size_t n);

struct body_canon {
	enum dkim_canon canon;
	bool cr;		/* the last octet was a CR (maybe half a CRLF) */
	bool content;		/* the current line has produced output */
	bool space;		/* relaxed: a WSP run waits for a non-WSP */
	uint64_t blanks;	/* empty lines held back: trailing ones vanish */
	uint64_t length;	/* canonical octets so far */
	emit_fn *emit;
	void *ctx;
	size_t n;
	char buf[4096];
};

static void bc_flush(struct body_canon *bc)
{
	if (bc->n)
		bc->emit(bc->ctx, bc->buf, bc->n);
	bc->n = 0;
}

static void bc_put(struct body_canon *bc, char c)
{
	if (bc->n == sizeof(bc->buf))
		bc_flush(bc);
	bc->buf[bc->n++] = c;
	bc->length++;
}

static void bc_char(struct body_canon *bc, char c)
{
	if (bc->canon == DKIM_CANON_RELAXED && is_wsp(c)) {
		bc->space = true;
		return;
	}
	if (!bc->content) {
		for (; bc->blanks; bc->blanks--) {
			bc_put(bc, '\r');
			bc_put(bc, '\n');
		}
		bc->content = true;
	}
	if (bc->space)
		bc_put(bc, ' ');
	bc->space = false;
	bc_put(bc, c);
}

static void bc_eol(struct body_canon *bc)
{
	if (bc->content) {
		bc_put(bc, '\r');
		bc_put(bc, '\n');
	} else {
		bc->blanks++;
	}
	bc->content = false;
	bc->space = false;
}

static void bc_update(struct body_canon *bc, const char *p, size_t len)
{
	for (const char *end = p + len; p < end; p++) {
		char c = *p;
		if (bc->cr) {
			bc->cr = false;
			if (c == '\n') {
				bc_eol(bc);
				continue;
			}
			bc_char(bc, '\r');	/* a bare CR is text */
		}
		if (c == '\r')
			bc->cr = true;
		else if (c == '\n')
			bc_eol(bc);
		else
			bc_char(bc, c);
	}
}

static void bc_final(struct body_canon *bc)
{
	if (bc->cr) {
		bc->cr = false;
		bc_char(bc, '\r');
	}
	if (bc->content)
		bc_eol(bc);
	/* RFC 6376 3.4.3: simple turns an empty body into one CRLF; relaxed
	 * leaves it empty (3.4.4, errata 3192) */
	if (bc->canon == DKIM_CANON_SIMPLE && bc->length == 0) {
		bc_put(bc, '\r');
		bc_put(bc, '\n');
	}
	bc_flush(bc);
}

static void emit_sb(void *ctx, const char *p, size_t n)
{
	sb_add(ctx, p, n);
}

void dkim_canon_body(enum dkim_canon canon, const char *body, size_t len,
		     struct strbuf *out)
{
	struct body_canon *bc = xcalloc(1, sizeof(*bc));

	bc->canon = canon;
	bc->emit = emit_sb;
	bc->ctx = out;
	bc_update(bc, body, len);
	bc_final(bc);
	free(bc);
}

struct dkim_body {
	struct body_canon bc;
	wc_Sha256 sha;
	bool done;
};

static void emit_sha(void *ctx, const char *p, size_t n)
{
	BUG_ON(wc_Sha256Update(ctx, (const byte *)p, (word32)n) != 0);
}

struct dkim_body *dkim_body_new(enum dkim_canon canon)
{
	struct dkim_body *b = xcalloc(1, sizeof(*b));

	BUG_ON(wc_InitSha256(&b->sha) != 0);
	b->bc.canon = canon;
	b->bc.emit = emit_sha;
	b->bc.ctx = &b->sha;
	return b;
}

void dkim_body_update(struct dkim_body *b, const void *data, size_t len)
{
	BUG_ON(b->done);
	bc_update(&b->bc, data, len);
}

void dkim_body_final(struct dkim_body *b, unsigned char hash[DKIM_HASH_LEN],
		     uint64_t *length)
{
	BUG_ON(b->done);
	bc_final(&b->bc);
	BUG_ON(wc_Sha256Final(&b->sha, hash) != 0);
	b->done = true;
	if (length)
		*length = b->bc.length;
}

void dkim_body_free(struct dkim_body *b)
{
	if (!b)
		return;
	wc_Sha256Free(&b->sha);
	free(b);
}

/* ------------------------------------------------------------------ */
/* signing                                                              */

/* tag_ok - a value that needs no quoting in a tag=value list. */
static bool tag_ok(const char *s, bool allow_at)
{
	if (!s || !*s || strlen(s) > 255)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
			  *p == '_' || (allow_at && *p > 0x20 && *p < 0x7f &&
					*p != ';' && *p != '=');
		if (!ok)
			return false;
	}
	return true;
}

static bool name_ok(const char *s)
{
	if (!s || !*s || strlen(s) > 100)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= 0x20 || *p >= 0x7f || *p == ':' || *p == ';')
			return false;
	return true;
}

/* col - the column the text ends at (after its last line break). */
static size_t col(const struct strbuf *sb)
{
	const char *nl = sb->len ? memrchr(sb->buf, '\n', sb->len) : NULL;

	return nl ? (size_t)(sb->buf + sb->len - nl - 1) : sb->len;
}

/* add_tag - "tag=value;" on this line, or folded onto the next one. */
static void add_tag(struct strbuf *sb, const char *tag, const char *value)
{
	if (col(sb) + strlen(tag) + strlen(value) + 3 > FOLD_AT)
		sb_adds(sb, "\r\n\t");
	else
		sb_addc(sb, ' ');
	sb_printf(sb, "%s=%s;", tag, value);
}

/* add_b64_tag - a long base64 value in folded chunks. */
static void add_b64_tag(struct strbuf *sb, const char *tag, const char *b64v,
			bool last)
{
	size_t n = strlen(b64v);

	sb_printf(sb, "\r\n\t%s=", tag);
	for (size_t off = 0; off < n; off += B64_LINE) {
		if (off)
			sb_adds(sb, "\r\n\t ");
		sb_add(sb, b64v + off, n - off < B64_LINE ? n - off : B64_LINE);
	}
	if (!last)
		sb_addc(sb, ';');
}

/* sign_hash - the signature of the header hash, as base64. */
static int sign_hash(const struct dkim_key *k, const unsigned char *hash,
		     struct strbuf *out, char *err, size_t errlen)
{
	unsigned char sig[RSA_SIG_MAX];
	word32 slen = sizeof(sig);
	int rc;

	if (k->alg == DKIM_ED25519_SHA256) {
		/* RFC 8463: PureEd25519 over the SHA-256 of the headers */
		ed25519_key ek;
		if (wc_ed25519_init(&ek) != 0)
			return -ENOMEM;
		rc = wc_ed25519_import_private_key(k->seed, sizeof(k->seed), k->pub,
						   sizeof(k->pub), &ek);
		if (rc == 0)
			rc = wc_ed25519_sign_msg(hash, DKIM_HASH_LEN, sig, &slen, &ek);
		wc_ed25519_free(&ek);
	} else {
		RsaKey rsa;
		WC_RNG rng;
		if (rsa_decode(k->der, k->der_len, &rsa) < 0) {
			err_printf(err, errlen, "the RSA key no longer decodes");
			return -EIO;
		}
		/* PKCS #1 v1.5 over the DigestInfo; the RNG blinds the
		 * private operation against timing */
		unsigned char di[DKIM_HASH_LEN + 32];
		word32 dilen = wc_EncodeSignature(di, hash, DKIM_HASH_LEN,
						  wc_HashGetOID(WC_HASH_TYPE_SHA256));
		rc = dilen ? wc_InitRng(&rng) : -1;
		if (rc == 0) {
			rc = wc_RsaSSL_Sign(di, dilen, sig, sizeof(sig), &rsa, &rng);
			if (rc > 0) {
				slen = (word32)rc;
				rc = 0;
			}
			wc_FreeRng(&rng);
		}
		wc_FreeRsaKey(&rsa);
	}
	if (rc != 0) {
		err_printf(err, errlen, "%s signature failed (wolfSSL error %d)",
		       dkim_alg_name(k->alg), rc);
		return -EIO;
	}
	b64(sig, slen, out);
	return 0;
}

int dkim_sign_hashed(const struct dkim_sign_params *p, const char *hdr,
		     size_t hlen, const unsigned char bh[DKIM_HASH_LEN],
		     uint64_t blen, struct strbuf *out, char *err,
		     size_t errlen)
{
	const char *const *names = p->headers ? p->headers : dkim_default_headers;
	size_t nnames = p->headers ? p->nheaders : dkim_default_header_count;

	if (!p->key || !tag_ok(p->domain, false) || !tag_ok(p->selector, false) ||
	    (p->identity && !tag_ok(p->identity, true))) {
		err_printf(err, errlen, "invalid DKIM domain, selector or identity");
		return -EINVAL;
	}
	if (nnames == 0 || nnames > DKIM_MAX_HEADERS) {
		err_printf(err, errlen, "between 1 and %d header names must be signed",
		       DKIM_MAX_HEADERS);
		return -EINVAL;
	}
	for (size_t i = 0; i < nnames; i++)
		if (!name_ok(names[i])) {
			err_printf(err, errlen, "'%s' is not a header name",
			       names[i] ? names[i] : "");
			return -EINVAL;
		}

	/* h=: every instance present, plus one more to over-sign */
	size_t nf;
	struct field *f = split_fields(hdr, hlen, &nf);
	const char **h = NULL;
	size_t nh = 0, cap = 0;
	for (size_t i = 0; i < nnames; i++) {
		size_t count = p->oversign ? 1 : 0;
		for (size_t k = 0; k < nf; k++)
			count += name_is(&f[k], names[i]);
		/* a name listed twice by the caller is covered by the first */
		for (size_t j = 0; j < i; j++)
			if (strcasecmp(names[j], names[i]) == 0)
				count = 0;
		for (; count; count--) {
			if (nh == cap) {
				cap = cap ? cap * 2 : 64;
				h = xrealloc(h, cap * sizeof(*h));
			}
			h[nh++] = names[i];
		}
	}
	if (nh == 0) {
		err_printf(err, errlen, "the message has none of the headers to sign");
		free(f);
		return -EINVAL;
	}

	/* the field with an empty b=, as it will be hashed */
	struct strbuf sig = { 0 }, val = { 0 };
	char num[32];
	sb_printf(&sig, "DKIM-Signature: v=1; a=%s; c=%s/%s;", dkim_alg_name(p->key->alg),
		  p->header_canon == DKIM_CANON_SIMPLE ? "simple" : "relaxed",
		  p->body_canon == DKIM_CANON_SIMPLE ? "simple" : "relaxed");
	add_tag(&sig, "d", p->domain);
	add_tag(&sig, "s", p->selector);
	if (p->identity)
		add_tag(&sig, "i", p->identity);
	if (p->timestamp > 0) {
		snprintf(num, sizeof(num), "%lld", (long long)p->timestamp);
		add_tag(&sig, "t", num);
	}
	if (p->expire > 0) {
		snprintf(num, sizeof(num), "%lld", (long long)p->expire);
		add_tag(&sig, "x", num);
	}
	if (p->body_length) {
		snprintf(num, sizeof(num), "%llu", (unsigned long long)blen);
		add_tag(&sig, "l", num);
	}
	sb_adds(&sig, "\r\n\th=");
	for (size_t i = 0; i < nh; i++) {
		char lower[128];
		size_t L = strlen(h[i]);
		for (size_t c = 0; c <= L; c++)
			lower[c] = (char)(h[i][c] >= 'A' && h[i][c] <= 'Z' ? h[i][c] + 32 : h[i][c]);
		if (i && col(&sig) + L + 2 > FOLD_AT)
			sb_adds(&sig, "\r\n\t ");
		sb_printf(&sig, "%s%s", lower, i + 1 < nh ? ":" : ";");
	}
	b64(bh, DKIM_HASH_LEN, &val);
	add_b64_tag(&sig, "bh", val.buf, false);
	sb_adds(&sig, "\r\n\tb=");

	/* hash: the selected fields, then this one without its CRLF */
	struct strbuf data = { 0 };
	select_fields(p->header_canon, f, nf, h, nh, &data);
	struct field self = { .start = sig.buf, .end = sig.buf + sig.len,
			      .name_len = strlen("DKIM-Signature"), .named = true };
	canon_field(p->header_canon, &self, &data);
	BUG_ON(data.len < 2);
	data.len -= 2;		/* the canonical CRLF of the last field */
	unsigned char hash[DKIM_HASH_LEN];
	wc_Sha256 sha;
	BUG_ON(wc_InitSha256(&sha) != 0);
	BUG_ON(wc_Sha256Update(&sha, (const byte *)data.buf, (word32)data.len) != 0);
	BUG_ON(wc_Sha256Final(&sha, hash) != 0);
	wc_Sha256Free(&sha);

	sb_reset(&val);
	int rc = sign_hash(p->key, hash, &val, err, errlen);
	if (rc == 0) {
		/* b= folds inside its value: verifiers drop the whole value */
		sb_add(out, sig.buf, sig.len);
		for (size_t off = 0; off < val.len; off += B64_LINE) {
			if (off)
				sb_adds(out, "\r\n\t ");
			sb_add(out, val.buf + off,
			       val.len - off < B64_LINE ? val.len - off : B64_LINE);
		}
		sb_adds(out, "\r\n");
	}
	sb_free(&data);
	sb_free(&val);
	sb_free(&sig);
	free(h);
	free(f);
	return rc;
}

int dkim_sign(const struct dkim_sign_params *p, const char *msg, size_t len,
	      struct strbuf *out, char *err, size_t errlen)
{
	size_t hend = dkim_header_end(msg, len);
	struct dkim_body *b = dkim_body_new(p->body_canon);
	unsigned char bh[DKIM_HASH_LEN];
	uint64_t blen;

	dkim_body_update(b, msg + hend, len - hend);
	dkim_body_final(b, bh, &blen);
	dkim_body_free(b);
	return dkim_sign_hashed(p, msg, hend, bh, blen, out, err, errlen);
}
