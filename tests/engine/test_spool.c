/*
 * test_spool.c - the durable spool (engine/spool.c): round trips, outcomes,
 * torn tails, quarantine, rollover, reclamation, moves and crashes between
 * their steps, corrupt input, and kill -9 of a writer under load.
 *
 * The on-disk layout described at the top of engine/spool.c is pinned here
 * on purpose (headers, offsets, CRC32C): a format change must be deliberate.
 * Each test runs in its own process with its own mkdtemp directory.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "tests/lib/testlib.h"
#include "util/hash.h"
#include "util/spoolrec.h"
#include "util/util.h"

#include "engine/spool.h"

#define FILE_HDR 40
#define REC_HDR 48

static char tdir[64];

static int rm_one(const char *path, const struct stat *sb, int flag,
		  struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	snprintf(tdir, sizeof(tdir), "/tmp/spool-test-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir));
}

static void teardown(void)
{
	nftw(tdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * One timeout for the suite: Criterion 2.4.1 leaks a timer record in the
 * runner (LeakSanitizer fails the run) when tests of a parallel run carry
 * different timeouts.
 */
TestSuite(spool, .init = setup, .fini = teardown, .timeout = 300);

/* ---- helpers ------------------------------------------------------------ */

/* An independent bitwise CRC32C to check the module's against. */
static uint32_t ref_crc32c(uint32_t crc, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	crc = ~crc;
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
	}
	return ~crc;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void w16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void w32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void w64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static char *path_in(const char *sub, const char *name)
{
	return xasprintf("%s/%s/%s", tdir, sub, name);
}

/* count_suffix - files in tdir/<sub> whose name ends in <suffix> or not. */
static size_t count_suffix(const char *sub, const char *suffix, bool with)
{
	char *dir = xasprintf("%s/%s", tdir, sub);
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0, sl = strlen(suffix);

	free(dir);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		bool has = l >= sl && strcmp(de->d_name + l - sl, suffix) == 0;

		if (de->d_name[0] != '.' && has == with)
			n++;
	}
	closedir(d);
	return n;
}

/* count_files - files in tdir/<sub>, segments kept for reuse not counted. */
static size_t count_files(const char *sub)
{
	return count_suffix(sub, ".free", false);
}

/* count_pooled - finished segments kept for reuse */
static size_t count_pooled(void)
{
	return count_suffix("seg", ".free", true);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *p;
	long n;

	cr_assert_not_null(f, "open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	p = xmalloc((size_t)n + 1);
	cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return p;
}

static void write_file(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "wb");

	cr_assert_not_null(f, "create %s", path);
	cr_assert_eq(fwrite(p, 1, len, f), len);
	fclose(f);
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

/* What a recovery callback saw, copied out. */
struct got_rcpt {
	char *addr, *orcpt;
	uint32_t notify, index;
};

struct got {
	struct spool_ref ref;
	char *mail_from, *envid, *source_ip, *vmta, *job_id, *auth_user;
	uint64_t size;
	int64_t queued;
	uint8_t ret, body_type;
	bool smtputf8, has_8bit;
	size_t nrcpt;
	struct got_rcpt *rcpt;
};

struct gotlist {
	struct got *v;
	size_t n, cap;
};

static char *dupn(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

static int collect(void *ctx, const struct spool_envelope *env,
		   const struct spool_ref *ref)
{
	struct gotlist *gl = ctx;
	struct got *g;

	cr_assert_not_null(env->mail_from);
	cr_assert_geq(env->nrcpt, 1);
	if (gl->n == gl->cap) {
		gl->cap = gl->cap ? gl->cap * 2 : 16;
		gl->v = xrealloc(gl->v, gl->cap * sizeof(*gl->v));
	}
	g = &gl->v[gl->n++];
	g->ref = *ref;
	g->mail_from = dupn(env->mail_from);
	g->envid = dupn(env->envid);
	g->source_ip = dupn(env->source_ip);
	g->vmta = dupn(env->vmta);
	g->job_id = dupn(env->job_id);
	g->auth_user = dupn(env->auth_user);
	g->size = env->size;
	g->queued = env->queued;
	g->ret = env->ret;
	g->body_type = env->body_type;
	g->smtputf8 = env->smtputf8;
	g->has_8bit = env->has_8bit;
	g->nrcpt = env->nrcpt;
	g->rcpt = xcalloc(env->nrcpt, sizeof(*g->rcpt));
	for (size_t i = 0; i < env->nrcpt; i++) {
		cr_assert_not_null(env->rcpt[i].addr);
		g->rcpt[i].addr = xstrdup(env->rcpt[i].addr);
		g->rcpt[i].orcpt = dupn(env->rcpt[i].orcpt);
		g->rcpt[i].notify = env->rcpt[i].notify;
		g->rcpt[i].index = env->rcpt[i].index;
	}
	return 0;
}

static void got_free(struct gotlist *gl)
{
	for (size_t i = 0; i < gl->n; i++) {
		struct got *g = &gl->v[i];

		free(g->mail_from);
		free(g->envid);
		free(g->source_ip);
		free(g->vmta);
		free(g->job_id);
		free(g->auth_user);
		for (size_t k = 0; k < g->nrcpt; k++) {
			free(g->rcpt[k].addr);
			free(g->rcpt[k].orcpt);
		}
		free(g->rcpt);
	}
	free(gl->v);
	memset(gl, 0, sizeof(*gl));
}

static const struct got *got_find(const struct gotlist *gl, uint64_t id)
{
	for (size_t i = 0; i < gl->n; i++)
		if (gl->v[i].ref.id == id)
			return &gl->v[i];
	return NULL;
}

/* reopen - open tdir, recover into <gl> (reset first), return the spool. */
static struct spool *reopen(const struct spool_opts *o, struct gotlist *gl,
			    struct spool_stats *st)
{
	struct spool_stats local;
	struct strbuf err = { 0 };
	struct spool *sp;
	int r;

	if (gl)
		got_free(gl);
	r = spool_open(tdir, o, &sp, &err);
	cr_assert_eq(r, 0, "open: %s", sb_str(&err));
	sb_free(&err);
	r = spool_recover(sp, gl ? collect : NULL, gl, st ? st : &local);
	cr_assert_eq(r, 0, "recover: %d %s", r, spool_error(sp));
	return sp;
}

static const struct spool_rcpt rc1[] = { { .addr = "one@example.net" } };
static const struct spool_rcpt rc3[] = {
	{ .addr = "r0@a.example" },
	{ .addr = "r1@b.example" },
	{ .addr = "r2@c.example" },
};

static struct spool_envelope env_of(const struct spool_rcpt *rc, size_t n)
{
	return (struct spool_envelope){
		.mail_from = "sender@example.org",
		.rcpt = rc,
		.nrcpt = n,
	};
}

static uint64_t append(struct spool *sp, const struct spool_rcpt *rc,
		       size_t n, const void *body, size_t len,
		       struct spool_ref *ref)
{
	struct spool_envelope env = env_of(rc, n);
	struct spool_ref local;
	int r = spool_append(sp, &env, body, len, ref ? ref : &local);

	cr_assert_eq(r, 0, "append: %s", spool_error(sp));
	return ref ? ref->id : local.id;
}

static void commit(struct spool *sp)
{
	int r = spool_commit(sp);

	cr_assert_eq(r, 0, "commit: %s", spool_error(sp));
}

static void assert_body(struct spool *sp, const struct spool_ref *ref,
			const uint8_t *want, size_t len)
{
	uint8_t *buf = xmalloc(len + 1);
	int r;

	cr_assert_eq(ref->body_len, len);
	r = spool_read(sp, ref, buf, len);
	cr_assert_eq(r, 0, "read: %s", spool_error(sp));
	cr_assert(len == 0 || memcmp(buf, want, len) == 0);
	free(buf);
}

static char *seg_name(uint64_t seq)
{
	return xasprintf("%016llx.seg", (unsigned long long)seq);
}

/* ---- format and round trip ---------------------------------------------- */

Test(spool, reference_crc32c_matches_the_standard_check_value)
{
	cr_assert_eq(ref_crc32c(0, "123456789", 9), 0xe3069283u);
}

/*
 * crc32c() runs three chains over long input and joins them: every
 * length around its block boundaries, every start alignment, and a CRC
 * continued across a split must match the bitwise reference.
 */
Test(spool, crc32c_matches_the_reference_at_every_length_and_split)
{
	static uint8_t buf[5000];

	fill(buf, sizeof(buf), 42);
	cr_assert_eq(crc32c(0, "123456789", 9), 0xe3069283u);
	for (size_t off = 0; off < 8; off++)
		for (size_t n = 0; n + off <= sizeof(buf); n += n < 1600 ? 1 : 97)
			cr_assert_eq(crc32c(0, buf + off, n), ref_crc32c(0, buf + off, n),
				     "length %zu at offset %zu", n, off);
	for (size_t cut = 0; cut <= sizeof(buf); cut += 131)
		cr_assert_eq(crc32c(crc32c(0, buf, cut), buf + cut, sizeof(buf) - cut),
			     ref_crc32c(0, buf, sizeof(buf)), "split at %zu", cut);
}

Test(spool, record_format_is_pinned)
{
	uint8_t body[300];
	struct spool_ref ref;
	struct spool *sp = reopen(NULL, NULL, NULL);
	char *path, *name;
	uint8_t *f;
	size_t len;

	fill(body, sizeof(body), 7);
	append(sp, rc1, 1, body, sizeof(body), &ref);
	commit(sp);
	spool_close(sp);

	name = seg_name(ref.seg);
	path = path_in("seg", name);
	f = read_file(path, &len);
	cr_assert_eq(len, FILE_HDR + ref.len);
	/* file header */
	cr_assert_eq(memcmp(f, "CMTS", 4), 0);
	cr_assert_eq(f[4], 1);
	cr_assert_eq(le64(f + 8), ref.seg);
	cr_assert_eq(le32(f + 36), ref_crc32c(0, f, 36));
	/* record header */
	cr_assert_eq(ref.off, FILE_HDR);
	cr_assert_eq(memcmp(f + 40, "CMTR", 4), 0);
	cr_assert_eq(le32(f + 40 + 8), ref.len);
	cr_assert_eq(le64(f + 40 + 16), le64(f + 16), "record carries the salt");
	cr_assert_eq(le64(f + 40 + 24), ref.id);
	cr_assert_eq(le32(f + 40 + 44), sizeof(body));
	cr_assert_eq(REC_HDR + le32(f + 40 + 40), ref.body_off);
	{
		uint32_t crc = ref_crc32c(0, f + 40, 12);

		crc = ref_crc32c(crc, f + 40 + 16, ref.len - 16);
		cr_assert_eq(le32(f + 40 + 12), crc, "CRC32C over all but itself");
	}
	cr_assert_eq(memcmp(f + 40 + ref.body_off, body, sizeof(body)), 0);
	cr_assert_eq(spool_verify(&ref, f + 40, ref.len), 0);
	f[40 + ref.body_off + 5] ^= 1;
	cr_assert_eq(spool_verify(&ref, f + 40, ref.len), -EBADMSG);
	free(f);
	free(path);
	free(name);
}

Test(spool, round_trip_keeps_every_field_and_body_byte)
{
	static const struct spool_rcpt rc[] = {
		{ .addr = "alice@example.com", .orcpt = "rfc822;alice@example.com",
		  .notify = MAIL_NOTIFY_SUCCESS | MAIL_NOTIFY_FAILURE },
		{ .addr = "bob@example.net", .notify = MAIL_NOTIFY_NEVER },
		{ .addr = "\xc3\xa9l\xc3\xa8ve@\xc3\xa9" "cole.fr", .orcpt = "" },
	};
	struct spool_envelope full = {
		.mail_from = "bounces+42@sender.example",
		.envid = "ENV-123",
		.source_ip = "2001:db8::1",
		.vmta = "pool-a",
		.job_id = "job 77",
		.auth_user = "app1",
		.size = 123456,
		.queued = 1700000000,
		.ret = MAIL_RET_HDRS,
		.body_type = MAIL_BODY_8BITMIME,
		.smtputf8 = true,
		.rcpt = rc,
		.nrcpt = 3,
	};
	struct spool_envelope bare = env_of(rc1, 1);
	size_t big_len = 300000;
	uint8_t *big = xmalloc(big_len);
	struct spool_ref r1, r2, r3;
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp;
	const struct got *g;

	fill(big, big_len, 99);
	bare.mail_from = "";	/* the null sender */
	sp = reopen(NULL, NULL, NULL);
	cr_assert_eq(spool_append(sp, &full, "Subject: x\r\n\r\nhi\r\n", 18, &r1), 0);
	cr_assert_eq(spool_append(sp, &bare, NULL, 0, &r2), 0);
	cr_assert_eq(spool_append(sp, &bare, big, big_len, &r3), 0);
	cr_assert(r1.id < r2.id && r2.id < r3.id, "ids increase");
	commit(sp);
	spool_close(sp);

	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 3);
	cr_assert_eq(st.messages, 3);
	cr_assert_eq(st.recipients, 5);
	cr_assert_eq(st.truncated + st.quarantined, 0);
	g = got_find(&gl, r1.id);
	cr_assert_not_null(g);
	cr_assert_str_eq(g->mail_from, full.mail_from);
	cr_assert_str_eq(g->envid, "ENV-123");
	cr_assert_str_eq(g->source_ip, "2001:db8::1");
	cr_assert_str_eq(g->vmta, "pool-a");
	cr_assert_str_eq(g->job_id, "job 77");
	cr_assert_str_eq(g->auth_user, "app1");
	cr_assert_eq(g->size, 123456);
	cr_assert_eq(g->queued, 1700000000);
	cr_assert_eq(g->ret, MAIL_RET_HDRS);
	cr_assert_eq(g->body_type, MAIL_BODY_8BITMIME);
	cr_assert(g->smtputf8);
	cr_assert_eq(g->nrcpt, 3);
	for (size_t i = 0; i < 3; i++) {
		cr_assert_str_eq(g->rcpt[i].addr, rc[i].addr);
		cr_assert_eq(g->rcpt[i].index, i);
		cr_assert_eq(g->rcpt[i].notify, rc[i].notify);
		if (rc[i].orcpt)
			cr_assert_str_eq(g->rcpt[i].orcpt, rc[i].orcpt);
		else
			cr_assert_null(g->rcpt[i].orcpt);
	}
	assert_body(sp, &g->ref, (const uint8_t *)"Subject: x\r\n\r\nhi\r\n", 18);

	g = got_find(&gl, r2.id);
	cr_assert_not_null(g);
	cr_assert_str_eq(g->mail_from, "");
	cr_assert_null(g->envid);
	cr_assert_null(g->vmta);
	cr_assert_eq(g->ret, MAIL_RET_NONE);
	cr_assert_neq(g->queued, 0, "queued defaults to now");
	assert_body(sp, &g->ref, NULL, 0);

	g = got_find(&gl, r3.id);
	cr_assert_not_null(g);
	assert_body(sp, &g->ref, big, big_len);

	/* New ids keep increasing after a restart. */
	cr_assert_gt(append(sp, rc1, 1, "x", 1, NULL), r3.id);
	spool_close(sp);
	got_free(&gl);
	free(big);
}

Test(spool, envelope_the_format_cannot_hold_is_refused)
{
	struct spool *sp = reopen(NULL, NULL, NULL);
	struct spool_envelope env = env_of(rc1, 1);
	struct spool_rcpt bad = { .addr = "x@y", .notify = 0x100 };
	char *longstr = xmalloc(SPOOL_MAX_FIELD + 2);
	struct spool_ref ref;

	memset(longstr, 'a', SPOOL_MAX_FIELD + 1);
	longstr[SPOOL_MAX_FIELD + 1] = '\0';
	env.nrcpt = 0;
	cr_assert_eq(spool_append(sp, &env, "x", 1, &ref), -EINVAL);
	env = env_of(rc1, 1);
	env.mail_from = NULL;
	cr_assert_eq(spool_append(sp, &env, "x", 1, &ref), -EINVAL);
	env = env_of(rc1, 1);
	env.envid = longstr;
	cr_assert_eq(spool_append(sp, &env, "x", 1, &ref), -E2BIG);
	cr_assert_neq(spool_error(sp)[0], '\0');
	env = env_of(&bad, 1);
	cr_assert_eq(spool_append(sp, &env, "x", 1, &ref), -EINVAL);
	env = env_of(rc1, 1);
	env.ret = 9;
	cr_assert_eq(spool_append(sp, &env, "x", 1, &ref), -EINVAL);
	/* Still usable. */
	append(sp, rc1, 1, "ok", 2, NULL);
	commit(sp);
	spool_close(sp);
	free(longstr);
}

Test(spool, second_open_of_a_locked_spool_fails)
{
	struct spool *sp = reopen(NULL, NULL, NULL), *sp2 = NULL;
	struct strbuf err = { 0 };

	cr_assert_eq(spool_open(tdir, NULL, &sp2, &err), -EWOULDBLOCK);
	cr_assert_null(sp2);
	cr_assert(strstr(sb_str(&err), "in use"));
	sb_free(&err);
	spool_close(sp);
	sp = reopen(NULL, NULL, NULL);	/* released by close */
	spool_close(sp);
}

Test(spool, append_before_recover_is_a_bug, .signal = SIGABRT)
{
	testlib_expect_death();
	struct spool *sp;
	struct spool_envelope env = env_of(rc1, 1);
	struct spool_ref ref;

	cr_assert_eq(spool_open(tdir, NULL, &sp, NULL), 0);
	teardown();	/* .fini does not run after the abort */
	spool_append(sp, &env, "x", 1, &ref);
}

Test(spool, free_bytes_reports_the_filesystem)
{
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint64_t n = 0;

	cr_assert_eq(spool_free_bytes(sp, &n), 0);
	cr_assert_gt(n, 0);
	spool_close(sp);
}

/* ---- outcomes ----------------------------------------------------------- */

Test(spool, journaled_recipients_are_not_recovered)
{
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool_usage u;
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint64_t a = append(sp, rc3, 3, "A", 1, NULL);
	uint64_t b = append(sp, rc3, 3, "B", 1, NULL);
	uint64_t c = append(sp, rc1, 1, "C", 1, NULL);
	const struct got *g;

	commit(sp);
	cr_assert_eq(spool_journal(sp, a, 1, SPOOL_DELIVERED), 0);
	cr_assert_eq(spool_journal(sp, a, 1, SPOOL_BOUNCED), -EALREADY);
	cr_assert_eq(spool_journal(sp, a, 7, SPOOL_BOUNCED), -EALREADY);
	cr_assert_eq(spool_journal(sp, 999, 0, SPOOL_BOUNCED), -ENOENT);
	cr_assert_eq(spool_journal(sp, a, 0, 0), -EINVAL);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(spool_journal(sp, b, i, i ? SPOOL_EXPIRED :
					   SPOOL_DELETED), 0);
	cr_assert_eq(spool_journal(sp, b, 0, SPOOL_DELIVERED), -ENOENT,
		     "finished messages are forgotten");
	spool_usage(sp, &u);
	cr_assert_eq(u.messages, 2);
	cr_assert_eq(u.recipients, 3);
	commit(sp);
	spool_close(sp);

	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 2);
	cr_assert_eq(st.recipients, 3);
	g = got_find(&gl, a);
	cr_assert_not_null(g);
	cr_assert_eq(g->nrcpt, 2);
	cr_assert_eq(g->rcpt[0].index, 0);
	cr_assert_str_eq(g->rcpt[0].addr, "r0@a.example");
	cr_assert_eq(g->rcpt[1].index, 2);
	cr_assert_str_eq(g->rcpt[1].addr, "r2@c.example");
	cr_assert_null(got_find(&gl, b));
	cr_assert_not_null(got_find(&gl, c));
	/* The journal keys survive recovery. */
	cr_assert_eq(spool_journal(sp, a, 2, SPOOL_DELIVERED), 0);
	cr_assert_eq(spool_journal(sp, a, 1, SPOOL_DELIVERED), -EALREADY);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, outcome_not_committed_means_redelivery)
{
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint64_t a = append(sp, rc3, 3, "A", 1, NULL);

	commit(sp);
	cr_assert_eq(spool_journal(sp, a, 0, SPOOL_DELIVERED), 0);
	commit(sp);
	cr_assert_eq(spool_journal(sp, a, 1, SPOOL_DELIVERED), 0);
	spool_close(sp);	/* no commit: outcome for rcpt 1 is lost */

	sp = reopen(NULL, &gl, NULL);
	cr_assert_eq(gl.n, 1);
	cr_assert_eq(gl.v[0].nrcpt, 2);
	cr_assert_eq(gl.v[0].rcpt[0].index, 1);
	cr_assert_eq(gl.v[0].rcpt[1].index, 2);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, many_recipients_and_a_large_journal)
{
	enum { N = 1000 };
	struct spool_rcpt *rc = xcalloc(N, sizeof(*rc));
	struct spool_opts o = { .journal_size = 4096 };
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);
	uint64_t id;

	for (size_t i = 0; i < N; i++)
		rc[i].addr = xasprintf("user%zu@d%zu.example", i, i % 17);
	id = append(sp, rc, N, "body", 4, NULL);
	commit(sp);
	for (uint32_t i = 0; i < N; i += 2) {
		cr_assert_eq(spool_journal(sp, id, i, SPOOL_DELIVERED), 0);
		if (i % 100 == 0)
			commit(sp);	/* rolls the journal several times */
	}
	commit(sp);
	spool_close(sp);
	cr_assert_gt(count_files("journal"), 1);

	sp = reopen(&o, &gl, NULL);
	cr_assert_eq(gl.n, 1);
	cr_assert_eq(gl.v[0].nrcpt, N / 2);
	for (size_t i = 0; i < N / 2; i++) {
		cr_assert_eq(gl.v[0].rcpt[i].index, 2 * i + 1);
		cr_assert_str_eq(gl.v[0].rcpt[i].addr, rc[2 * i + 1].addr);
	}
	spool_close(sp);
	got_free(&gl);
	for (size_t i = 0; i < N; i++)
		free((char *)rc[i].addr);
	free(rc);
}

/* ---- group commit ------------------------------------------------------- */

Test(spool, split_commit_names_each_file_once)
{
	struct spool *sp = reopen(NULL, NULL, NULL);
	const struct spool_sync *fds;
	uint64_t a;
	int n;

	for (int i = 0; i < 10; i++)
		a = append(sp, rc1, 1, "x", 1, NULL);
	n = spool_commit_begin(sp, true, &fds);
	/* segment, and the segment directory that gained it */
	cr_assert_eq(n, 2);
	cr_assert(fds[0].datasync);
	cr_assert_not(fds[1].datasync);
	/* Appends may go on while the syncs are in flight. */
	append(sp, rc1, 1, "y", 1, NULL);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL,
				    &(struct spool_maint_stats){ 0 }), -EBUSY);
	for (int i = 0; i < n; i++)
		cr_assert_eq(fds[i].datasync ? fdatasync(fds[i].fd) :
			     fsync(fds[i].fd), 0);
	cr_assert_eq(spool_commit_done(sp, 0), 0);

	cr_assert_eq(spool_journal(sp, a, 0, SPOOL_DELIVERED), 0);
	n = spool_commit_begin(sp, true, &fds);
	cr_assert_eq(n, 3, "segment, journal, journal directory");
	cr_assert_eq(spool_commit_done(sp, 0), 0);
	n = spool_commit_begin(sp, true, &fds);
	cr_assert_eq(n, 0, "nothing new: no sync");
	cr_assert_eq(spool_commit_done(sp, 0), 0);
	spool_close(sp);
}

/*
 * A commit may leave the journal out of its syncs (journal-sync-delay):
 * the outcomes are still written, so a killed process keeps them, and a
 * later commit syncs them.
 */
Test(spool, commit_may_leave_the_journal_unsynced)
{
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(NULL, NULL, NULL);
	const struct spool_sync *fds;
	uint64_t a = append(sp, rc3, 3, "A", 1, NULL);
	int n;

	commit(sp);
	cr_assert_not(spool_journal_unsynced(sp));
	cr_assert_eq(spool_journal(sp, a, 0, SPOOL_DELIVERED), 0);
	cr_assert(spool_journal_unsynced(sp));
	append(sp, rc1, 1, "B", 1, NULL);
	n = spool_commit_begin(sp, false, &fds);
	cr_assert_eq(n, 1, "the segment only, not the journal or its directory");
	cr_assert_eq(fdatasync(fds[0].fd), 0);
	cr_assert_eq(spool_commit_done(sp, 0), 0);
	cr_assert(spool_journal_unsynced(sp), "written, not synced");

	n = spool_commit_begin(sp, true, &fds);
	cr_assert_eq(n, 2, "journal and journal directory");
	cr_assert_eq(spool_commit_done(sp, 0), 0);
	cr_assert_not(spool_journal_unsynced(sp));

	/* written without a commit: what a killed process leaves */
	cr_assert_eq(spool_journal(sp, a, 1, SPOOL_DELIVERED), 0);
	cr_assert_eq(spool_journal_flush(sp), 0);
	cr_assert(spool_journal_unsynced(sp));
	spool_close(sp);

	sp = reopen(NULL, &gl, NULL);
	const struct got *g = got_find(&gl, a);
	cr_assert_not_null(g);
	cr_assert_eq(g->nrcpt, 1, "rcpt 0 and 1 finished, synced or only written");
	cr_assert_eq(g->rcpt[0].index, 2);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, failed_sync_is_sticky)
{
	struct spool *sp = reopen(NULL, NULL, NULL);
	const struct spool_sync *fds;
	struct spool_envelope env = env_of(rc1, 1);
	struct spool_ref ref;

	append(sp, rc1, 1, "x", 1, NULL);
	cr_assert_geq(spool_commit_begin(sp, true, &fds), 1);
	cr_assert_eq(spool_commit_done(sp, -EIO), -EIO);
	cr_assert_eq(spool_append(sp, &env, "x", 1, &ref), -EIO);
	cr_assert_eq(spool_commit(sp), -EIO);
	cr_assert(strstr(spool_error(sp), "failed sync"));
	spool_close(sp);
}

/* ---- damage ------------------------------------------------------------- */

Test(spool, torn_tail_is_truncated)
{
	struct spool_ref ref[3];
	uint8_t body[2000];
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp = reopen(NULL, NULL, NULL);
	char *name, *path;
	struct stat sb;

	fill(body, sizeof(body), 3);
	for (int i = 0; i < 3; i++)
		append(sp, rc1, 1, body, sizeof(body), &ref[i]);
	commit(sp);
	spool_close(sp);
	name = seg_name(ref[0].seg);
	path = path_in("seg", name);
	/* A crash in the middle of the third append. */
	cr_assert_eq(truncate(path, (off_t)(ref[2].off + ref[2].len - 700)), 0);

	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 2);
	cr_assert_eq(st.truncated, 1);
	cr_assert_eq(st.truncated_bytes, ref[2].len - 700);
	cr_assert_eq(st.quarantined, 0);
	cr_assert_eq(stat(path, &sb), 0);
	cr_assert_eq((uint64_t)sb.st_size, ref[2].off, "cut back to the last good record");
	assert_body(sp, &gl.v[1].ref, body, sizeof(body));
	spool_close(sp);

	/* Garbage after the last record (a length extended, data lost). */
	{
		int fd = open(path, O_WRONLY | O_APPEND);
		uint8_t junk[3000] = { 0 };

		cr_assert_geq(fd, 0);
		cr_assert_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
		close(fd);
	}
	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 2);
	cr_assert_eq(st.truncated, 1);
	cr_assert_eq(st.truncated_bytes, 3000);
	spool_close(sp);
	got_free(&gl);
	free(path);
	free(name);
}

Test(spool, corrupt_middle_records_are_quarantined_and_the_rest_recovered)
{
	struct spool_ref ref[6];
	uint8_t body[6][1500];
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp = reopen(NULL, NULL, NULL);
	char *name, *path, *qname, *qpath;
	uint8_t *f, *q;
	size_t len, qlen;

	for (int i = 0; i < 6; i++) {
		fill(body[i], sizeof(body[i]), 100 + (uint32_t)i);
		append(sp, rc1, 1, body[i], sizeof(body[i]), &ref[i]);
	}
	commit(sp);
	spool_close(sp);
	name = seg_name(ref[0].seg);
	path = path_in("seg", name);
	f = read_file(path, &len);
	f[ref[1].off + ref[1].body_off + 10] ^= 0x40;	/* a body bit */
	f[ref[3].off + 1] = 'X';			/* a magic: resync */
	f[ref[4].off + 9] ^= 0x7f;			/* its length */
	write_file(path, f, len);

	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 3);
	cr_assert_not_null(got_find(&gl, ref[0].id));
	cr_assert_not_null(got_find(&gl, ref[2].id));
	cr_assert_not_null(got_find(&gl, ref[5].id));
	cr_assert_eq(st.quarantined, 2, "record 1, then records 3-4 as one region");
	cr_assert_eq(st.truncated, 0);
	cr_assert_eq(st.nbad, 2);
	cr_assert_eq(st.bad[0].seq, ref[1].seg);
	cr_assert_eq(st.bad[0].off, ref[1].off);
	cr_assert_eq(st.bad[0].len, ref[1].len);
	cr_assert_not(st.bad[0].journal);
	cr_assert_eq(st.bad[1].off, ref[3].off);
	cr_assert_eq(st.bad[1].len, ref[3].len + ref[4].len);
	for (int i = 0; i < 6; i += 1) {
		const struct got *g = got_find(&gl, ref[i].id);

		if (g)
			assert_body(sp, &g->ref, body[i], sizeof(body[i]));
	}
	spool_close(sp);

	/* The bad bytes were copied aside, exactly. */
	cr_assert_eq(count_files("quarantine"), 2);
	qname = xasprintf("seg-%016llx-%016llx.bad", (unsigned long long)ref[1].seg,
			  (unsigned long long)ref[1].off);
	qpath = path_in("quarantine", qname);
	q = read_file(qpath, &qlen);
	cr_assert_eq(qlen, ref[1].len);
	cr_assert_eq(memcmp(q, f + ref[1].off, qlen), 0);

	/* Recovering again reports them again but copies nothing twice. */
	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 3);
	cr_assert_eq(st.quarantined, 2);
	spool_close(sp);
	cr_assert_eq(count_files("quarantine"), 2);
	got_free(&gl);
	free(q);
	free(qpath);
	free(qname);
	free(f);
	free(path);
	free(name);
}

Test(spool, delete_corrupted_reports_but_keeps_no_copy)
{
	struct spool_opts o = { .delete_corrupted = true };
	struct spool_ref ref[3];
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp = reopen(&o, NULL, NULL);
	char *name, *path;
	uint8_t *f;
	size_t len;

	for (int i = 0; i < 3; i++)
		append(sp, rc1, 1, "abcdef", 6, &ref[i]);
	commit(sp);
	spool_close(sp);
	name = seg_name(ref[0].seg);
	path = path_in("seg", name);
	f = read_file(path, &len);
	f[ref[1].off + ref[1].body_off] ^= 1;
	write_file(path, f, len);
	sp = reopen(&o, &gl, &st);
	cr_assert_eq(gl.n, 2);
	cr_assert_eq(st.quarantined, 1);
	cr_assert_eq(st.bad[0].off, ref[1].off);
	cr_assert_eq(count_files("quarantine"), 0);
	spool_close(sp);
	got_free(&gl);
	free(f);
	free(path);
	free(name);
}

/* build_record - a message record as the format says, CRC and all. */
static size_t build_record(uint8_t *out, uint64_t salt, uint64_t id,
			   const uint8_t *env, size_t elen, const uint8_t *body,
			   size_t blen)
{
	uint32_t crc;

	memset(out, 0, REC_HDR);
	memcpy(out, "CMTR", 4);
	out[4] = 1;
	out[5] = 1;
	w32(out + 8, (uint32_t)(REC_HDR + elen + blen));
	w64(out + 16, salt);
	w64(out + 24, id);
	w64(out + 32, 1700000000);
	w32(out + 40, (uint32_t)elen);
	w32(out + 44, (uint32_t)blen);
	memcpy(out + REC_HDR, env, elen);
	memcpy(out + REC_HDR + elen, body, blen);
	crc = ref_crc32c(0, out, 12);
	crc = ref_crc32c(crc, out + 16, REC_HDR - 16 + elen + blen);
	w32(out + 12, crc);
	return REC_HDR + elen + blen;
}

/* min_env - a minimal valid envelope: MAIL FROM, params, one RCPT. */
static size_t min_env(uint8_t *p, const char *rcpt)
{
	size_t n = 0, alen = strlen(rcpt);

	p[n++] = 1;			/* MAIL FROM */
	w16(p + n, 5);
	n += 2;
	memcpy(p + n, "evil@", 5);
	n += 5;
	p[n++] = 7;			/* params */
	w16(p + n, 11);
	n += 2;
	memset(p + n, 0, 11);
	n += 11;
	p[n++] = 8;			/* RCPT */
	w16(p + n, (uint16_t)(8 + alen));
	n += 2;
	memset(p + n, 0, 8);
	w16(p + n + 6, (uint16_t)alen);
	n += 8;
	memcpy(p + n, rcpt, alen);
	return n + alen;
}

Test(spool, a_record_smuggled_in_a_body_is_not_accepted)
{
	uint8_t env[128], forged[512], ours[400];
	struct spool_ref ref[2];
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp = reopen(NULL, NULL, NULL);
	char *name, *path;
	uint8_t *f;
	size_t len, flen;

	/*
	 * The attacker knows the format and computes the CRC, but not the
	 * segment's salt.  If the record around its body is damaged, the
	 * resync must not pick the forgery up.
	 */
	flen = build_record(forged, 0x1234, 4242, env,
			    min_env(env, "victim@relay.example"), (const uint8_t *)"", 0);
	memset(ours, 'x', sizeof(ours));
	memcpy(ours + 100, forged, flen);
	append(sp, rc1, 1, ours, 100 + flen + 10, &ref[0]);
	append(sp, rc1, 1, "after", 5, &ref[1]);
	commit(sp);
	spool_close(sp);
	name = seg_name(ref[0].seg);
	path = path_in("seg", name);
	f = read_file(path, &len);
	f[ref[0].off + 2] ^= 1;
	write_file(path, f, len);

	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(gl.n, 1);
	cr_assert_eq(gl.v[0].ref.id, ref[1].id);
	cr_assert_null(got_find(&gl, 4242));
	cr_assert_eq(st.quarantined, 1);
	spool_close(sp);

	/* With the right salt the same bytes would be taken: the salt is
	 * what protects. */
	build_record(forged, le64(f + 16), 4242, env,
		     min_env(env, "victim@relay.example"), (const uint8_t *)"", 0);
	memcpy(f + ref[0].off + ref[0].body_off + 100, forged, flen);
	write_file(path, f, len);
	sp = reopen(NULL, &gl, &st);
	cr_assert_not_null(got_find(&gl, 4242));
	spool_close(sp);
	got_free(&gl);
	free(f);
	free(path);
	free(name);
}

Test(spool, damaged_journal_records_mean_redelivery_not_loss)
{
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint64_t a = append(sp, rc3, 3, "A", 1, NULL);
	uint64_t b = append(sp, rc1, 1, "B", 1, NULL);
	const struct got *g;
	char *path;
	uint8_t *f;
	size_t len;

	commit(sp);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(spool_journal(sp, a, i, SPOOL_DELIVERED), 0);
	cr_assert_eq(spool_journal(sp, b, 0, SPOOL_DELIVERED), 0);
	commit(sp);
	spool_close(sp);
	path = path_in("journal", "0000000000000001.jnl");
	f = read_file(path, &len);
	cr_assert_eq(len, FILE_HDR + 4 * 32);
	f[FILE_HDR + 32 + 20] ^= 1;	/* record 1, with a good one after */
	write_file(path, f, len - 5);	/* and record 3 torn */

	sp = reopen(NULL, &gl, &st);
	cr_assert_eq(st.quarantined, 1);
	cr_assert(st.bad[0].journal);
	cr_assert_eq(st.bad[0].off, FILE_HDR + 32);
	cr_assert_eq(st.bad[0].len, 32);
	cr_assert_eq(st.truncated, 1);
	cr_assert_eq(st.truncated_bytes, 32 - 5);
	cr_assert_eq(gl.n, 2);
	g = got_find(&gl, a);
	cr_assert_eq(g->nrcpt, 1);
	cr_assert_eq(g->rcpt[0].index, 1);
	cr_assert_not_null(got_find(&gl, b));
	spool_close(sp);
	got_free(&gl);
	free(f);
	free(path);
}

Test(spool, unreadable_file_header_sets_the_file_aside)
{
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool_ref r1, r2;
	struct spool_opts o = { .segment_size = 4096 };
	uint8_t body[3000] = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);
	char *name, *path;
	uint8_t *f;
	size_t len;

	append(sp, rc1, 1, body, sizeof(body), &r1);
	append(sp, rc1, 1, body, sizeof(body), &r2);
	cr_assert_neq(r1.seg, r2.seg);
	commit(sp);
	spool_close(sp);
	name = seg_name(r1.seg);
	path = path_in("seg", name);
	f = read_file(path, &len);
	f[20] ^= 1;
	write_file(path, f, len);
	/* And a segment created just before a crash: empty. */
	free(name);
	free(path);
	name = seg_name(r2.seg + 1);
	path = path_in("seg", name);
	write_file(path, "", 0);

	sp = reopen(&o, &gl, &st);
	cr_assert_eq(gl.n, 1);
	cr_assert_eq(gl.v[0].ref.id, r2.id);
	cr_assert_eq(st.quarantined, 1);
	cr_assert(st.bad[0].whole_file);
	cr_assert_eq(st.truncated, 1);
	cr_assert_eq(count_files("seg"), 1);
	cr_assert_eq(count_files("quarantine"), 1);
	/* The next segment does not reuse a number. */
	append(sp, rc1, 1, body, sizeof(body), &r1);
	cr_assert_gt(r1.seg, r2.seg + 1);
	spool_close(sp);
	got_free(&gl);
	free(f);
	free(path);
	free(name);
}

/* ---- rollover and reclamation ------------------------------------------- */

Test(spool, finished_segments_and_journals_are_deleted)
{
	struct spool_opts o = { .segment_size = 16 << 10, .journal_size = 100 };
	struct spool_maint_stats ms = { 0 };
	struct spool_usage u;
	uint8_t body[4000];
	struct spool_ref ref[20];
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);
	size_t nseg;

	fill(body, sizeof(body), 1);
	for (int i = 0; i < 20; i++)
		append(sp, rc1, 1, body, sizeof(body), &ref[i]);
	commit(sp);
	nseg = count_files("seg");
	cr_assert_geq(nseg, 5, "rolled over at 16 KiB");
	cr_assert_eq(ref[19].seg, ref[0].seg + nseg - 1);

	/* Finish everything in the first two segments. */
	for (int i = 0; i < 20 && ref[i].seg <= ref[0].seg + 1; i++) {
		cr_assert_eq(spool_journal(sp, ref[i].id, 0, SPOOL_DELIVERED), 0);
		commit(sp);
	}
	cr_assert_gt(count_files("journal"), 1);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(ms.segments_deleted, 2);
	cr_assert_eq(count_files("seg"), nseg - 2);
	spool_usage(sp, &u);
	cr_assert_eq(u.segments, nseg - 2);

	/*
	 * Finish the rest: every segment goes, the active one too once it
	 * holds nothing live (issue 18: on a small disk it would otherwise
	 * stay full until it reached segment_size); journals too, but the
	 * open one.
	 */
	for (int i = 0; i < 20; i++)
		spool_journal(sp, ref[i].id, 0, SPOOL_DELIVERED);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(count_files("seg"), 0, "the finished active segment was retired");
	cr_assert_leq(count_files("journal"), 1);
	cr_assert_gt(ms.journals_deleted, 0);
	/* the next append starts a new segment */
	append(sp, rc1, 1, body, sizeof(body), &ref[0]);
	commit(sp);
	cr_assert_eq(count_files("seg"), 1);
	spool_journal(sp, ref[0].id, 0, SPOOL_DELIVERED);
	commit(sp);
	spool_close(sp);

	sp = reopen(&o, &gl, NULL);
	cr_assert_eq(gl.n, 0);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(count_files("seg"), 0);
	cr_assert_eq(count_files("journal"), 0);
	/* Ids never go back, even with every file gone. */
	cr_assert_gt(append(sp, rc1, 1, "x", 1, NULL), ref[19].id);
	spool_close(sp);
	got_free(&gl);
}

/* count_if_seg_after - refs in a segment after <seg> */
static size_t count_if_seg_after(const struct spool_ref *r, size_t n, uint64_t seg)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += r[i].seg > seg;
	return k;
}

/* append_committed - <n> one-recipient messages of <body>, one commit */
static void append_committed(struct spool *sp, const uint8_t *body, size_t len,
			     struct spool_ref *ref, int n)
{
	for (int i = 0; i < n; i++)
		append(sp, rc1, 1, body, len, &ref[i]);
	commit(sp);
}

/* seg_file - tdir/seg/<name>, read whole */
static uint8_t *seg_file(uint64_t seq, size_t *len)
{
	char *name = seg_name(seq), *path = path_in("seg", name);
	uint8_t *p = read_file(path, len);

	free(name);
	free(path);
	return p;
}

Test(spool, recovery_says_which_bodies_have_8bit_octets)
{
	/* seen while recovery verifies each body: the hand-off need not read it */
	static uint8_t big[700000];	/* past the read window's half: read in chunks */
	struct spool_ref plain, eight, big8;
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(NULL, NULL, NULL);

	memset(big, 'a', sizeof(big));
	big[sizeof(big) - 3] = 0xe9;
	append(sp, rc1, 1, "plain ascii\r\n", 13, &plain);
	append(sp, rc1, 1, "caf\xc3\xa9\r\n", 7, &eight);
	append(sp, rc1, 1, big, sizeof(big), &big8);
	commit(sp);
	spool_close(sp);
	sp = reopen(NULL, &gl, NULL);
	cr_assert_eq(gl.n, 3);
	cr_assert_not(got_find(&gl, plain.id)->has_8bit);
	cr_assert(got_find(&gl, eight.id)->has_8bit);
	cr_assert(got_find(&gl, big8.id)->has_8bit);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, finished_segments_are_reused_and_their_earlier_life_never_returns)
{
	struct spool_opts o = { .segment_size = 16 << 10 };
	struct spool_maint_stats ms = { 0 };
	struct spool_stats st;
	uint8_t body[4000], body2[2000];	/* the new life ends before the old */
	struct spool_ref old[20], fresh[6];
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);
	size_t nseg, len;

	fill(body, sizeof(body), 7);
	fill(body2, sizeof(body2), 8);
	append_committed(sp, body, sizeof(body), old, 20);
	nseg = count_files("seg");
	cr_assert_geq(nseg, 5);

	/* Three finished segments: two are kept for reuse, one deleted. */
	int nfin = 0;
	for (int i = 0; i < 20 && old[i].seg <= old[0].seg + 2; i++, nfin++)
		cr_assert_eq(spool_journal(sp, old[i].id, 0, SPOOL_DELIVERED), 0);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(ms.segments_deleted, 3);
	cr_assert_eq(count_files("seg"), nseg - 3);
	cr_assert_eq(count_pooled(), 2);
	cr_assert_eq(spool_pooled(sp), 2);

	/*
	 * New mail fills the active segment, then the pooled files: each
	 * reused one keeps its length, gets a header of its own (new seq,
	 * the recycled flag), and its writes end on a page boundary.
	 */
	for (int i = 0; i < 6; i++) {
		append(sp, rc1, 1, body2, sizeof(body2), &fresh[i]);
		commit(sp);
	}
	cr_assert_gt(fresh[5].seg, old[19].seg);
	cr_assert_eq(count_pooled(), 1, "the first new segment came from the pool");
	uint8_t *f = seg_file(fresh[5].seg, &len);
	cr_assert_geq(len, 12 << 10, "a reused file keeps its blocks");
	cr_assert_lt(fresh[5].off + fresh[5].len, 8192);
	cr_assert_eq(le32(f), 0x53544d43u);
	cr_assert_eq(le64(f + 8), fresh[5].seg);
	cr_assert_eq(f[32], 1, "the recycled flag");
	cr_assert_eq(le32(f + 36), ref_crc32c(0, f, 36));
	uint64_t end = fresh[5].off + fresh[5].len, page_end = (end + 4095) / 4096 * 4096;
	for (uint64_t k = end; k < page_end && k < len; k++)
		cr_assert_eq(f[k], 0, "padding at %llu", (unsigned long long)k);
	free(f);
	spool_close(sp);

	/*
	 * After a crash: the unfinished old mail and the new mail, nothing
	 * finished from an earlier life of a reused file, no torn tail or
	 * corruption reported for it.
	 */
	sp = reopen(&o, &gl, &st);
	cr_assert_eq(gl.n, (size_t)(20 - nfin) + 6);
	for (int i = 0; i < nfin; i++)
		cr_assert_null(got_find(&gl, old[i].id), "finished message %d came back", i);
	for (int i = 0; i < 6; i++) {
		const struct got *g = got_find(&gl, fresh[i].id);

		cr_assert_not_null(g);
		assert_body(sp, &g->ref, body2, sizeof(body2));
	}
	cr_assert_eq(st.truncated, 0);
	cr_assert_eq(st.quarantined, 0);
	cr_assert_geq(st.recycled_tails, 1);
	cr_assert_eq(spool_pooled(sp), 1, "the pool survives a restart");
	spool_close(sp);
	got_free(&gl);
}

Test(spool, a_reused_file_whose_new_header_never_reached_the_disk_holds_nothing)
{
	struct spool_opts o = { .segment_size = 16 << 10 };
	struct spool_maint_stats ms = { 0 };
	struct spool_stats st;
	uint8_t body[4000];
	struct spool_ref ref[8];
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);

	fill(body, sizeof(body), 9);
	append_committed(sp, body, sizeof(body), ref, 8);
	for (int i = 0; i < 8 && ref[i].seg == ref[0].seg; i++)
		spool_journal(sp, ref[i].id, 0, SPOOL_DELIVERED);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(count_pooled(), 1);
	spool_close(sp);

	/* The crash: renamed to the next segment's name, old header on disk. */
	char *from = xasprintf("%s/seg/%016llx.free", tdir, (unsigned long long)ref[0].seg);
	char *name = seg_name(ref[7].seg + 1), *to = path_in("seg", name);
	cr_assert_eq(rename(from, to), 0);
	sp = reopen(&o, &gl, &st);
	cr_assert_eq(st.quarantined, 0, "not corruption");
	cr_assert_eq(count_pooled(), 1, "back in the pool");
	for (size_t i = 0; i < gl.n; i++)
		cr_assert_neq(gl.v[i].ref.seg, ref[0].seg);
	cr_assert_eq(gl.n, (size_t)count_if_seg_after(ref, 8, ref[0].seg));
	spool_close(sp);
	got_free(&gl);
	free(from);
	free(name);
	free(to);
}

Test(spool, segments_are_not_kept_for_reuse_on_a_tight_disk)
{
	struct spool_opts o = { .segment_size = 16 << 10 };
	struct spool_maint_stats ms = { 0 };
	uint8_t body[4000];
	struct spool_ref ref[12];
	struct spool *sp = reopen(&o, NULL, NULL);
	uint64_t free_bytes;

	fill(body, sizeof(body), 10);
	append_committed(sp, body, sizeof(body), ref, 12);
	/* The owner keeps all but a segment's worth free: nothing is pooled. */
	cr_assert_eq(spool_free_bytes(sp, &free_bytes), 0);
	spool_set_keep_free(sp, free_bytes);
	for (int i = 0; i < 12 && ref[i].seg == ref[0].seg; i++)
		spool_journal(sp, ref[i].id, 0, SPOOL_DELIVERED);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(ms.segments_deleted, 1);
	cr_assert_eq(count_pooled(), 0);

	/* With room, finished segments are pooled; release deletes them. */
	spool_set_keep_free(sp, 0);
	for (int i = 0; i < 12 && ref[i].seg <= ref[0].seg + 2; i++)
		spool_journal(sp, ref[i].id, 0, SPOOL_DELIVERED);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(count_pooled(), 2);
	cr_assert_eq(spool_release_pool(sp), 2);
	cr_assert_eq(count_pooled(), 0);
	cr_assert_eq(spool_pooled(sp), 0);
	/* and new segments are created afresh */
	for (int i = 0; i < 6; i++)
		append(sp, rc1, 1, body, sizeof(body), NULL);
	commit(sp);
	spool_close(sp);
}

Test(spool, a_journal_stays_while_a_segment_it_finished_recipients_of_lives)
{
	struct spool_opts o = { .segment_size = 16 << 10, .journal_size = 100 };
	struct spool_maint_stats ms = { 0 };
	uint8_t body[4000] = { 0 };
	struct spool_ref a, b[8];
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);

	append(sp, rc3, 2, body, sizeof(body), &a);
	for (int i = 0; i < 8; i++)
		append(sp, rc1, 1, body, sizeof(body), &b[i]);
	commit(sp);
	cr_assert_eq(spool_journal(sp, a.id, 0, SPOOL_DELIVERED), 0);
	commit(sp);	/* journal 1 holds a's only outcome */
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(spool_journal(sp, b[i].id, 0, SPOOL_DELIVERED), 0);
		commit(sp);	/* the journal rolls on */
	}
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_gt(ms.segments_deleted, 0);
	cr_assert_gt(ms.journals_deleted + count_files("journal"), 2);
	spool_close(sp);

	sp = reopen(&o, &gl, NULL);
	cr_assert_eq(gl.n, 1);
	cr_assert_eq(gl.v[0].ref.id, a.id);
	cr_assert_eq(gl.v[0].nrcpt, 1, "a delivered recipient came back");
	cr_assert_eq(gl.v[0].rcpt[0].index, 1);
	spool_close(sp);
	got_free(&gl);
}

struct moves {
	struct spool_ref from[64], to[64];
	size_t n;
};

static void on_move(void *ctx, const struct spool_ref *from,
		    const struct spool_ref *to)
{
	struct moves *mv = ctx;

	cr_assert_lt(mv->n, 64);
	cr_assert_eq(from->id, to->id);
	mv->from[mv->n] = *from;
	mv->to[mv->n++] = *to;
}

/*
 * A spool with 12 messages of 3 recipients over 4 old segments, some
 * recipients finished, then moved forward.  Returns the open spool.
 */
static struct spool *moved_spool(const struct spool_opts *o,
				 struct spool_ref *ref, uint8_t body[][3000],
				 struct moves *mv)
{
	struct spool_maint_stats ms = { 0 };
	struct spool *sp = reopen(o, NULL, NULL);

	for (int i = 0; i < 12; i++) {
		fill(body[i], 3000, 500 + (uint32_t)i);
		append(sp, rc3, 3, body[i], 3000, &ref[i]);
	}
	commit(sp);
	/* Message i loses recipient i % 3; messages 0-2 finish entirely. */
	for (int i = 0; i < 12; i++)
		cr_assert_eq(spool_journal(sp, ref[i].id, (uint32_t)i % 3,
					   SPOOL_DELIVERED), 0);
	for (int i = 0; i < 3; i++)
		for (uint32_t k = 0; k < 3; k++)
			if (k != (uint32_t)i % 3)
				cr_assert_eq(spool_journal(sp, ref[i].id, k,
							   SPOOL_BOUNCED), 0);
	commit(sp);
	memset(mv, 0, sizeof(*mv));
	cr_assert_eq(spool_maintain(sp, time(NULL) + 100, on_move, mv, &ms), 0);
	return sp;
}

/* check_moved - after reopening: messages 3..11 once each, right rcpts. */
static void check_moved(struct spool *sp, const struct gotlist *gl,
			const struct spool_ref *ref, uint8_t body[][3000])
{
	cr_assert_eq(gl->n, 9);
	for (int i = 0; i < 12; i++) {
		const struct got *g = got_find(gl, ref[i].id);
		size_t seen = 0;

		if (i < 3) {
			cr_assert_null(g);
			continue;
		}
		cr_assert_not_null(g, "message %d", i);
		for (size_t k = 0; k < gl->n; k++)
			seen += gl->v[k].ref.id == ref[i].id;
		cr_assert_eq(seen, 1, "message %d recovered once", i);
		cr_assert_eq(g->nrcpt, 2);
		for (size_t k = 0; k < 2; k++) {
			cr_assert_neq(g->rcpt[k].index, (uint32_t)i % 3);
			cr_assert_str_eq(g->rcpt[k].addr,
					 rc3[g->rcpt[k].index].addr);
		}
		assert_body(sp, &g->ref, body[i], 3000);
	}
}

Test(spool, move_forward_rewrites_old_messages_and_frees_their_segments)
{
	struct spool_opts o = { .segment_size = 10000, .move_after = 50 };
	struct spool_maint_stats ms = { 0 };
	struct spool_ref ref[12];
	uint8_t body[12][3000];
	struct moves mv;
	struct gotlist gl = { 0 };
	struct spool *sp = moved_spool(&o, ref, body, &mv);

	/* Every message of a non-active segment with something left. */
	cr_assert_eq(mv.n, 6);
	for (size_t i = 0; i < mv.n; i++) {
		int j = 0;

		while (ref[j].id != mv.to[i].id)
			j++;
		cr_assert_geq(j, 3, "finished messages are not moved");
		cr_assert_gt(mv.to[i].seg, mv.from[i].seg);
		assert_body(sp, &mv.to[i], body[j], 3000);
	}
	/* The old copies stay readable until the next maintain. */
	for (size_t i = 0; i < mv.n; i++) {
		uint8_t buf[3000];

		cr_assert_eq(spool_read(sp, &mv.from[i], buf, sizeof(buf)), 0);
		cr_assert_eq(spool_read(sp, &mv.to[i], buf, sizeof(buf)), 0);
	}
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_gt(ms.segments_deleted, 0);
	{
		uint8_t buf[3000];

		cr_assert_eq(spool_read(sp, &mv.from[0], buf, sizeof(buf)), -ENOENT);
	}
	/* Outcomes still reach moved messages by id and index. */
	cr_assert_eq(spool_journal(sp, ref[4].id, 2, SPOOL_DELIVERED), 0);
	cr_assert_eq(spool_journal(sp, ref[4].id, 1, SPOOL_DELIVERED), -EALREADY);
	cr_assert_eq(spool_journal(sp, ref[4].id, 0, SPOOL_DELIVERED), 0);
	commit(sp);
	spool_close(sp);

	sp = reopen(&o, &gl, NULL);
	cr_assert_eq(gl.n, 8);
	cr_assert_null(got_find(&gl, ref[4].id));
	spool_close(sp);
	got_free(&gl);
}

Test(spool, move_crash_before_moved_is_journaled_keeps_one_copy)
{
	struct spool_opts o = { .segment_size = 10000, .move_after = 50 };
	struct spool_ref ref[12];
	uint8_t body[12][3000];
	struct moves mv;
	struct gotlist gl = { 0 };
	struct spool *sp = moved_spool(&o, ref, body, &mv);
	size_t nseg = count_files("seg");

	/* Crash: the copies are synced, MOVED never written, nothing deleted. */
	spool_close(sp);
	cr_assert_eq(count_files("seg"), nseg);
	sp = reopen(&o, &gl, NULL);
	check_moved(sp, &gl, ref, body);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, move_crash_after_moved_is_journaled_keeps_one_copy)
{
	struct spool_opts o = { .segment_size = 10000, .move_after = 50 };
	struct spool_ref ref[12];
	uint8_t body[12][3000];
	struct moves mv;
	struct gotlist gl = { 0 };
	struct spool *sp = moved_spool(&o, ref, body, &mv);

	commit(sp);	/* MOVED durable, old segments still there */
	spool_close(sp);
	sp = reopen(&o, &gl, NULL);
	check_moved(sp, &gl, ref, body);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, move_crash_after_old_segments_are_deleted_keeps_one_copy)
{
	struct spool_opts o = { .segment_size = 10000, .move_after = 50 };
	struct spool_maint_stats ms = { 0 };
	struct spool_ref ref[12];
	uint8_t body[12][3000];
	struct moves mv;
	struct gotlist gl = { 0 };
	struct spool *sp = moved_spool(&o, ref, body, &mv);

	/* The old segments go before MOVED reaches the disk. */
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_gt(ms.segments_deleted, 0);
	spool_close(sp);
	sp = reopen(&o, &gl, NULL);
	check_moved(sp, &gl, ref, body);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, move_crash_mid_copy_falls_back_to_the_old_copy)
{
	struct spool_opts o = { .segment_size = 1 << 20, .move_after = 50 };
	struct spool_ref ref[12];
	uint8_t body[12][3000];
	struct moves mv;
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp;
	char *name, *path;

	/* One big segment (so the copies share one) with 12 messages. */
	{
		struct spool_opts small = o;

		small.segment_size = 20000;
		sp = moved_spool(&small, ref, body, &mv);
	}
	cr_assert_geq(mv.n, 2);
	spool_close(sp);
	/* Tear the last copy in half, as if the crash came mid-write. */
	name = seg_name(mv.to[mv.n - 1].seg);
	path = path_in("seg", name);
	cr_assert_eq(truncate(path, (off_t)(mv.to[mv.n - 1].off +
					      mv.to[mv.n - 1].len / 2)), 0);
	sp = reopen(&o, &gl, &st);
	cr_assert_eq(st.truncated, 1);
	check_moved(sp, &gl, ref, body);
	cr_assert_eq(got_find(&gl, mv.from[mv.n - 1].id)->ref.seg,
		     mv.from[mv.n - 1].seg, "the old copy is the one left");
	spool_close(sp);
	got_free(&gl);
	free(path);
	free(name);
}

Test(spool, moved_then_finished_message_does_not_come_back_from_its_old_segment)
{
	struct spool_opts o = { .segment_size = 8000, .move_after = 50,
				.move_budget = 1 };
	struct spool_maint_stats ms = { 0 };
	struct spool_ref x, y, big;
	uint8_t body[3000] = { 0 }, large[9000] = { 0 };
	struct moves mv = { 0 };
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);

	append(sp, rc1, 1, body, sizeof(body), &x);
	append(sp, rc1, 1, body, sizeof(body), &y);
	cr_assert_eq(x.seg, y.seg);
	append(sp, rc1, 1, large, sizeof(large), &big);	/* x, y's segment retires */
	commit(sp);
	/* Budget 1: only x moves; y keeps the old segment alive. */
	cr_assert_eq(spool_maintain(sp, time(NULL) + 100, on_move, &mv, &ms), 1);
	cr_assert_eq(mv.n, 1);
	cr_assert_eq(mv.from[0].id, x.id);
	commit(sp);
	/* Retire x's new segment and finish x: its copy's segment goes. */
	append(sp, rc1, 1, large, sizeof(large), NULL);
	cr_assert_eq(spool_journal(sp, x.id, 0, SPOOL_DELIVERED), 0);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	{
		uint8_t buf[3000];

		cr_assert_eq(spool_read(sp, &mv.to[0], buf, sizeof(buf)), -ENOENT);
		cr_assert_eq(spool_read(sp, &x, buf, sizeof(buf)), 0,
			     "old segment still there, held by y");
	}
	spool_close(sp);

	/* The old copy of x has no newer copy now; MOVED keeps it dead. */
	sp = reopen(&o, &gl, NULL);
	cr_assert_null(got_find(&gl, x.id));
	cr_assert_not_null(got_find(&gl, y.id));
	cr_assert_not_null(got_find(&gl, big.id));
	spool_close(sp);
	got_free(&gl);
}

/* ---- corrupt input ------------------------------------------------------ */

/* recover_garbage - open and recover whatever is in tdir; must not fail. */
static void recover_garbage(void)
{
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(NULL, &gl, NULL);

	for (size_t i = 0; i < gl.n; i++) {
		uint8_t *buf = xmalloc(gl.v[i].ref.body_len + 1);

		cr_assert_eq(spool_read(sp, &gl.v[i].ref, buf,
					gl.v[i].ref.body_len), 0);
		free(buf);
	}
	spool_close(sp);
	got_free(&gl);
}

Test(spool, random_damage_never_crashes_recovery)
{
	struct spool_ref ref[8];
	uint8_t body[8][700];
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint32_t seed = 12345;
	char *segname, *segpath, *jpath;
	uint8_t *seg, *jnl, *buf;
	size_t seglen, jlen;

	for (int i = 0; i < 8; i++) {
		fill(body[i], sizeof(body[i]), (uint32_t)i);
		append(sp, i % 2 ? rc3 : rc1, i % 2 ? 3 : 1, body[i],
		       (size_t)(i * 97), &ref[i]);
	}
	commit(sp);
	for (int i = 0; i < 8; i += 3)
		spool_journal(sp, ref[i].id, 0, SPOOL_DELIVERED);
	commit(sp);
	spool_close(sp);
	segname = seg_name(ref[0].seg);
	segpath = path_in("seg", segname);
	jpath = path_in("journal", "0000000000000001.jnl");
	seg = read_file(segpath, &seglen);
	jnl = read_file(jpath, &jlen);
	buf = xmalloc(seglen + 4096);

	for (int iter = 0; iter < 300; iter++) {
		size_t len = seglen, flips;

		memcpy(buf, seg, seglen);
		seed = seed * 1103515245u + 12345u;
		flips = 1 + (seed >> 16) % 8;
		for (size_t k = 0; k < flips; k++) {
			seed = seed * 1103515245u + 12345u;
			/* Mostly past the file header, to reach the records. */
			buf[FILE_HDR + (seed >> 8) % (seglen - FILE_HDR)] ^=
				(uint8_t)(1u << (seed % 8));
		}
		if (iter % 5 == 0) {
			seed = seed * 1103515245u + 12345u;
			len = (seed >> 8) % seglen;
		} else if (iter % 7 == 0) {
			fill(buf + seglen, 4096, seed);
			len = seglen + 4096;
		}
		write_file(segpath, buf, len);
		/* A damaged journal half the time. */
		memcpy(buf, jnl, jlen);
		if (iter % 2) {
			seed = seed * 1103515245u + 12345u;
			buf[(seed >> 8) % jlen] ^= (uint8_t)(1u << (seed % 8));
		}
		write_file(jpath, buf, iter % 3 ? jlen : jlen - (iter % 32));
		recover_garbage();
	}
	free(buf);
	free(seg);
	free(jnl);
	free(jpath);
	free(segpath);
	free(segname);
}

/* rand_env - envelope-ish bytes: valid items mixed with random ones. */
static size_t rand_env(uint8_t *p, size_t cap, uint32_t *seed)
{
	size_t n = 0;

	while (n + 64 < cap) {
		uint32_t r;

		*seed = *seed * 1103515245u + 12345u;
		r = *seed >> 8;
		if (r % 11 == 0)
			break;
		if (r % 3 == 0) {
			n += min_env(p + n, "x@y");
		} else if (r % 3 == 1) {
			/* an item with a plausible tag and random value */
			size_t len = (r >> 4) % 40;

			p[n++] = (uint8_t)((r >> 12) % 10);
			w16(p + n, (uint16_t)(r % 5 == 0 ? len + 3 : len));
			n += 2;
			fill(p + n, len, r);
			n += len;
		} else {
			size_t len = (r >> 4) % 16;

			fill(p + n, len, r);
			n += len;
		}
	}
	return n;
}

Test(spool, random_envelopes_with_valid_checksums_never_crash_the_decoder)
{
	struct spool_ref ref;
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint8_t *rec = xmalloc(65536), env[4096];
	uint32_t seed = 777;
	char *name, *path;
	uint8_t *f;
	size_t len;

	append(sp, rc1, 1, "x", 1, &ref);
	commit(sp);
	spool_close(sp);
	name = seg_name(ref.seg);
	path = path_in("seg", name);
	f = read_file(path, &len);
	cr_assert_eq(len, FILE_HDR + ref.len);

	for (int iter = 0; iter < 300; iter++) {
		/* Several records with the right salt and CRC, random envelopes. */
		FILE *out = fopen(path, "wb");
		uint64_t salt = le64(f + 16);

		cr_assert_not_null(out);
		fwrite(f, 1, FILE_HDR, out);
		for (int k = 0; k < 4; k++) {
			size_t elen = rand_env(env, sizeof(env), &seed);
			size_t rlen = build_record(rec, salt, 1000 + (uint64_t)k,
						   env, elen,
						   (const uint8_t *)"body", 4);

			fwrite(rec, 1, rlen, out);
		}
		fclose(out);
		recover_garbage();
	}
	free(f);
	free(rec);
	free(path);
	free(name);
}

/* ---- kill -9 ------------------------------------------------------------ */

#define BODY_MAGIC 0x59444f42u

struct acked {
	uint64_t id;
	uint32_t nrcpt, len, sum;
	uint32_t intent;	/* J seen: outcome may be durable */
	uint32_t done;		/* D seen: outcome is durable */
	bool seen;		/* recovered this round */
};

struct ledger {
	struct acked *v;
	size_t n, cap;
};

static struct acked *ledger_add(struct ledger *l, uint64_t id)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 1024;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n] = (struct acked){ .id = id };
	return &l->v[l->n++];
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
	return (uint32_t)hash_bytes(HASH_SEED, p, n);
}

static struct acked *ledger_find(struct ledger *l, uint64_t id)
{
	for (size_t i = l->n; i-- > 0;)
		if (l->v[i].id == id)
			return &l->v[i];
	return NULL;
}

static void ledger_line(struct ledger *l, const char *line)
{
	unsigned long long id;
	unsigned a, b, c;
	struct acked *e;

	if (sscanf(line, "A %llu %u %u %u", &id, &a, &b, &c) == 4) {
		cr_assert_null(ledger_find(l, id), "id %llu acked twice", id);
		e = ledger_add(l, id);
		e->nrcpt = a;
		e->len = b;
		e->sum = c;
	} else if (sscanf(line, "J %llu %u", &id, &a) == 2) {
		e = ledger_find(l, id);
		cr_assert_not_null(e, "journal for unacked id %llu", id);
		e->intent |= 1u << a;
	} else if (sscanf(line, "D %llu %u", &id, &a) == 2) {
		e = ledger_find(l, id);
		cr_assert_not_null(e);
		cr_assert(e->intent >> a & 1);
		e->done |= 1u << a;
	} else {
		cr_assert_fail("writer said: %s", line);
	}
}

/* run_writer - start the writer, kill -9 it after <ms>, parse its lines. */
static void run_writer(const char *writer, unsigned seed, unsigned ms,
		       struct ledger *l)
{
	struct strbuf out = { 0 };
	char seedstr[32], chunk[4096];
	struct timespec t0, t;
	int fds[2], status;
	pid_t pid;

	snprintf(seedstr, sizeof(seedstr), "%u", seed);
	cr_assert_eq(pipe(fds), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(writer, writer, tdir, seedstr, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		long left;
		ssize_t n;

		clock_gettime(CLOCK_MONOTONIC, &t);
		left = (long)ms - ((t.tv_sec - t0.tv_sec) * 1000 +
				   (t.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0)
			break;
		/* Keep the pipe drained so the writer never blocks on it. */
		if (poll(&pfd, 1, (int)left) > 0) {
			n = read(fds[0], chunk, sizeof(chunk));
			if (n <= 0)
				break;	/* it died by itself: a failure */
			sb_add(&out, chunk, (size_t)n);
		}
	}
	kill(pid, SIGKILL);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	for (ssize_t n; (n = read(fds[0], chunk, sizeof(chunk))) > 0;)
		sb_add(&out, chunk, (size_t)n);
	close(fds[0]);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		  "writer exited by itself (status %d)", status);
	/* A line cut by the kill has no newline and is ignored. */
	for (char *p = out.buf, *nl; p && (nl = strchr(p, '\n')); p = nl + 1) {
		*nl = '\0';
		ledger_line(l, p);
	}
	sb_free(&out);
}

static void check_after_kill(struct ledger *l, int run)
{
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool *sp = reopen(NULL, &gl, &st);
	size_t acked = 0;

	cr_assert_eq(st.quarantined, 0, "a crash is no corruption");
	for (size_t i = 0; i < gl.n; i++) {
		const struct got *g = &gl.v[i];
		struct acked *e = ledger_find(l, g->ref.id);
		uint8_t *buf = xmalloc(g->ref.body_len + 1);
		uint32_t mask = 0;

		/* Whole: every recovered body checks out, acked or not. */
		cr_assert_eq(spool_read(sp, &g->ref, buf, g->ref.body_len), 0);
		cr_assert_geq(g->ref.body_len, 16);
		cr_assert_eq(le32(buf), BODY_MAGIC);
		cr_assert_eq(le32(buf + 4) + 16, g->ref.body_len);
		cr_assert_eq(le32(buf + 8), fnv1a(buf + 16, g->ref.body_len - 16));
		for (size_t k = i + 1; k < gl.n; k++)
			cr_assert_neq(gl.v[k].ref.id, g->ref.id, "recovered twice");
		for (size_t k = 0; k < g->nrcpt; k++)
			mask |= 1u << g->rcpt[k].index;
		if (e) {
			cr_assert_eq(g->ref.body_len, e->len);
			cr_assert_eq(le32(buf + 8), e->sum);
			cr_assert_eq(mask & e->done, 0,
				     "id %llu: durable outcome ignored",
				     (unsigned long long)e->id);
			cr_assert_eq(mask | e->intent, (1u << e->nrcpt) - 1,
				     "id %llu: recipient lost",
				     (unsigned long long)e->id);
		} else {
			/*
			 * Appended, killed before its 250: allowed, and the
			 * next writer will deliver it, so track it from now
			 * on as the writer sees it (its recipients so far).
			 */
			uint32_t n = 0;

			for (size_t k = 0; k < g->nrcpt; k++)
				if (g->rcpt[k].index + 1 > n)
					n = g->rcpt[k].index + 1;
			e = ledger_add(l, g->ref.id);
			e->nrcpt = n;
			e->len = g->ref.body_len;
			e->sum = le32(buf + 8);
		}
		/* What recovery shows is what is durable from now on. */
		e->done = ((1u << e->nrcpt) - 1) & ~mask;
		e->intent = e->done;
		e->seen = true;
		free(buf);
	}
	for (size_t i = 0; i < l->n; i++) {
		struct acked *e = &l->v[i];

		if (e->seen) {
			e->seen = false;
			continue;
		}
		/* Not recovered: every recipient must have been finished. */
		cr_assert_eq(e->intent, (1u << e->nrcpt) - 1,
			     "acked id %llu lost", (unsigned long long)e->id);
		e->done = e->intent;
	}
	for (size_t i = 0; i < l->n; i++)
		acked += l->v[i].done != (1u << l->v[i].nrcpt) - 1;
	cr_log_info("kill -9 run %d: %zu live acked, %zu recovered, %llu "
		    "segments, %llu journals, %llu torn tails", run, acked, gl.n,
		    (unsigned long long)st.segments,
		    (unsigned long long)st.journals,
		    (unsigned long long)st.truncated);
	spool_close(sp);
	got_free(&gl);
}

Test(spool, kill_9_loses_no_acknowledged_message)
{
	const char *writer = getenv("COREMTA_SPOOL_WRITER");
	struct ledger l = { 0 };
	unsigned seed = (unsigned)time(NULL);

	if (!writer || !*writer)
		cr_skip_test("COREMTA_SPOOL_WRITER is not set");
	cr_log_info("kill -9 seed %u", seed);
	srand(seed);
	for (int run = 0; run < 5; run++) {
		unsigned ms = 100 + (unsigned)rand() % 301;

		run_writer(writer, seed + (unsigned)run, ms, &l);
		check_after_kill(&l, run);
	}
	cr_assert_gt(l.n, 0, "the writer acknowledged nothing");
	free(l.v);
}

/* ---- streamed bodies (issue 18, part 2) ------------------------------- */

/*
 * A body written partly from memory and partly through a spill (in odd
 * pieces) is one record: it reads back whole, verifies (the CRC made from
 * the pieces' CRCs is the CRC of the bytes) and survives recovery; the
 * spill is reusable after a reset.
 */
Test(spool, spilled_body_is_one_verified_record)
{
	struct gotlist gl = { 0 };
	struct spool *sp = reopen(NULL, NULL, NULL);
	struct spool_spill *t;
	size_t head = 777, total = 3u << 20;
	uint8_t *body = xmalloc(total);
	struct spool_ref ref[2];

	fill(body, total, 42);
	cr_assert_eq(spool_spill_new(sp, &t), 0, "%s", spool_error(sp));
	for (int round = 0; round < 2; round++) {
		size_t off = head, step = 1;
		while (off < total) {
			size_t n = total - off < step ? total - off : step;
			cr_assert_eq(spool_spill_write(t, body + off, n), 0);
			off += n;
			step = step * 3 + 1;	/* 1, 4, 13, ... odd edges */
		}
		cr_assert_eq(spool_spill_len(t), total - head);
		uint8_t probe[100];
		cr_assert_eq(spool_spill_read(t, 5000, probe, sizeof(probe)), 0);
		cr_assert(memcmp(probe, body + head + 5000, sizeof(probe)) == 0);
		struct spool_envelope env = env_of(rc1, 1);
		cr_assert_eq(spool_append_spilled(sp, &env, body, head, t, &ref[round]), 0,
			     "%s", spool_error(sp));
		spool_spill_reset(t);
		cr_assert_eq(spool_spill_len(t), 0);
		head = 0;	/* the second one: all of it streamed */
	}
	commit(sp);
	assert_body(sp, &ref[0], body, total);
	assert_body(sp, &ref[1], body, total);
	spool_spill_free(t);
	spool_close(sp);

	sp = reopen(NULL, &gl, NULL);
	cr_assert_eq(gl.n, 2);
	for (size_t i = 0; i < gl.n; i++)
		assert_body(sp, &gl.v[i].ref, body, total);
	spool_close(sp);
	got_free(&gl);
	free(body);
}

/*
 * A body over SPOOL_RESIDENT_MAX is read in place by the shards, so a
 * move (which would change its place) never happens to it; small ones
 * of the same old segment still move.
 */
Test(spool, big_bodies_are_never_moved)
{
	struct spool_opts o = { .segment_size = 1u << 20, .move_after = 50 };
	struct spool_maint_stats ms = { 0 };
	struct moves mv = { 0 };
	struct spool *sp = reopen(&o, NULL, NULL);
	size_t big = SPOOL_RESIDENT_MAX + 1;
	uint8_t *body = xmalloc(big);
	struct spool_ref small, large;

	fill(body, big, 7);
	append(sp, rc1, 1, body, 1000, &small);
	append(sp, rc1, 1, body, big, &large);
	append(sp, rc1, 1, body, 10, NULL);	/* rolls to a new segment */
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL) + 100, on_move, &mv, &ms), 0);
	cr_assert_eq(mv.n, 1, "only the small one moved");
	cr_assert_eq(mv.to[0].id, small.id);
	commit(sp);
	cr_assert_eq(spool_maintain(sp, time(NULL) + 100, NULL, NULL, &ms), 0);
	assert_body(sp, &large, body, big);	/* still where it was */
	spool_close(sp);
	free(body);
}

/* ---- recovery in steps, while new mail comes (issue 16) --------------- */

/* open_only - the spool in tdir, opened, not recovered */
static struct spool *open_only(const struct spool_opts *o)
{
	struct strbuf err = { 0 };
	struct spool *sp;
	int r = spool_open(tdir, o, &sp, &err);

	cr_assert_eq(r, 0, "open: %s", sb_str(&err));
	sb_free(&err);
	return sp;
}

/* collect_later - collect(), but says "not now" to every second offer */
static int collect_later(void *ctx, const struct spool_envelope *env,
			 const struct spool_ref *ref)
{
	static unsigned offers;

	if (offers++ % 2 == 0)
		return 1;
	return collect(ctx, env, ref);
}

/*
 * A message appended after spool_recover_begin, before any step, goes to
 * a segment newer than every old one, gets an id above every old id (the
 * reservation, not the clock, decides: it is set far ahead here) and is
 * not handed over by the recovery; its outcome and the old messages'
 * outcomes journaled meanwhile are all kept; every old message is offered
 * (again, after "not now") and handed over once.
 */
Test(spool, recovery_in_steps_takes_new_mail_under_fresh_ids)
{
	struct spool_opts o = { .segment_size = 64 << 10 };
	struct gotlist gl = { 0 };
	struct spool_stats st;
	struct spool_ref ref, nref;
	uint8_t body[2000];
	uint64_t old_max = 0, old_seg = 0;
	struct spool *sp = reopen(&o, NULL, NULL);
	enum { OLD = 200 };

	fill(body, sizeof(body), 7);
	for (int i = 0; i < OLD; i++) {
		uint64_t id = append(sp, rc3, 3, body, sizeof(body), &ref);
		old_max = id > old_max ? id : old_max;
		old_seg = ref.seg > old_seg ? ref.seg : old_seg;
	}
	commit(sp);
	cr_assert_gt(old_seg, 2, "old mail spans several segments");
	spool_close(sp);

	/* a reservation far above the clock: new ids must come from it */
	char *ids = xasprintf("%s/ids", tdir);
	uint8_t mark[16];
	uint64_t limit = old_max + (1ull << 40);
	w32(mark, 0x49544d43u);
	w64(mark + 8, limit);
	w32(mark + 4, ref_crc32c(0, mark + 8, 8));
	int fd = open(ids, O_WRONLY | O_TRUNC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, mark, sizeof(mark)), (ssize_t)sizeof(mark));
	close(fd);

	sp = open_only(&o);
	cr_assert_eq(spool_recover_begin(sp, &st), 0, "%s", spool_error(sp));
	cr_assert(spool_recovering(sp));
	cr_assert_eq(st.records, 0, "with a reservation, begin reads no segment");
	uint64_t nid = append(sp, rc1, 1, "new", 3, &nref);
	commit(sp);
	cr_assert_geq(nid, limit);
	cr_assert_gt(nref.seg, old_seg);
	cr_assert_eq(spool_journal(sp, nid, 0, SPOOL_DELIVERED), 0, "%s", spool_error(sp));
	/* maintenance waits: unscanned segments must not look empty */
	struct spool_maint_stats ms = { 0 };
	cr_assert_eq(spool_maintain(sp, time(NULL), NULL, NULL, &ms), 0);
	cr_assert_eq(ms.segments_deleted, 0);
	cr_assert_eq(count_files("seg"), old_seg + 1);

	int r, steps = 0;
	while ((r = spool_recover_step(sp, collect_later, &gl, 200)) == 1)
		steps++;
	cr_assert_eq(r, 0, "%s", spool_error(sp));
	cr_assert_gt(steps, 1, "a 200 us budget takes several steps");
	cr_assert_not(spool_recovering(sp));
	cr_assert_eq(gl.n, OLD);
	cr_assert_eq(st.messages, OLD);
	cr_assert_eq(st.recipients, 3 * OLD);
	cr_assert_null(got_find(&gl, nid), "the new message is not recovered");
	for (size_t i = 0; i < gl.n; i++)
		for (size_t k = i + 1; k < gl.n; k++)
			cr_assert_neq(gl.v[i].ref.id, gl.v[k].ref.id, "handed over twice");
	/* outcomes of recovered mail, after its hand-over */
	cr_assert_eq(spool_journal(sp, gl.v[0].ref.id, 1, SPOOL_BOUNCED), 0);
	commit(sp);
	uint64_t first = gl.v[0].ref.id;
	spool_close(sp);

	/* a crash now: everything comes back but what was journaled */
	sp = reopen(&o, &gl, &st);
	cr_assert_eq(gl.n, OLD);
	cr_assert_null(got_find(&gl, nid));
	cr_assert_eq(got_find(&gl, first)->nrcpt, 2);
	cr_assert_eq(st.recipients, 3 * OLD - 1);
	got_free(&gl);
	spool_close(sp);
	free(ids);
}

/*
 * Without a reservation (a spool written before there was one, or its
 * file lost) begin reads every file before new mail may come, so the ids
 * in them decide; it then writes one.
 */
Test(spool, recovery_without_a_reservation_reads_every_file_first)
{
	struct spool_stats st;
	struct spool *sp = reopen(NULL, NULL, NULL);
	uint64_t old = append(sp, rc1, 1, "x", 1, NULL);

	commit(sp);
	spool_close(sp);
	char *ids = xasprintf("%s/ids", tdir);
	cr_assert_eq(unlink(ids), 0);
	sp = open_only(NULL);
	cr_assert_eq(spool_recover_begin(sp, &st), 0, "%s", spool_error(sp));
	cr_assert_eq(st.records, 1, "the files were read in begin");
	uint64_t nid = append(sp, rc1, 1, "y", 1, NULL);
	cr_assert_gt(nid, old);
	commit(sp);
	while (spool_recover_step(sp, NULL, NULL, 1000) == 1)
		;
	spool_close(sp);
	struct stat sb;
	cr_assert_eq(stat(ids, &sb), 0);
	cr_assert_eq(sb.st_size, 16);
	free(ids);
}
