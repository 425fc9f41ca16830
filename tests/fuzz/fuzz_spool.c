/*
 * fuzz_spool - libFuzzer target for what the spool reads from disk: the
 * envelope decoder on its own, and whole recovery (scan, resync,
 * quarantine, truncation, journal), then reads, moves, commit and
 * reclamation, over a segment and a journal built from the input.
 * Single-threaded, one spool directory (tmpfs when there is one, so that
 * fsync costs nothing) reused by every run.
 *
 * It builds the files with the format of engine/spool_int.h and drives
 * the spool through its public API (engine/spool.h).
 *
 * Input: byte 0 selects.  (b0 & 3) == 0: the rest is an envelope.  Else
 * u16 L, then L bytes of segment after a valid file header, then the
 * journal records after one; b0 & 4 repairs each record's salt, framing
 * and CRC, b0 & 8 each journal record's CRC, so that mutations get past
 * the checksums to the parsers behind them; b0 & 16 journals outcomes
 * during recovery.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/spool.h"
#include "engine/spool_int.h"
#include "util/spoolrec.h"
#include "util/util.h"

#define FUZZ_SALT 0x5a17c0ffee5a17c0ull

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fdir[64];

static void clean(const char *sub)
{
	char *path = xasprintf("%s/%s", fdir, sub);
	DIR *d = opendir(path);
	struct dirent *de;

	while (d && (de = readdir(d))) {
		char *f;

		if (de->d_name[0] == '.')
			continue;
		f = xasprintf("%s/%s", path, de->d_name);
		unlink(f);
		free(f);
	}
	if (d)
		closedir(d);
	free(path);
}

/* remove_dir - at exit (-max_total_time ends with exit()), leave no trace. */
static void remove_dir(void)
{
	static const char *const subs[] = { "seg", "journal", "quarantine" };
	char *p;

	for (size_t i = 0; i < ARRAY_SIZE(subs); i++) {
		clean(subs[i]);
		p = xasprintf("%s/%s", fdir, subs[i]);
		rmdir(p);
		free(p);
	}
	p = xasprintf("%s/lock", fdir);
	unlink(p);
	free(p);
	rmdir(fdir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	snprintf(fdir, sizeof(fdir), "/dev/shm/fuzz-spool-XXXXXX");
	if (!mkdtemp(fdir)) {
		snprintf(fdir, sizeof(fdir), "/tmp/fuzz-spool-XXXXXX");
		if (!mkdtemp(fdir))
			abort();
	}
	atexit(remove_dir);
	return 0;
}

static void write_all_or_abort(int fd, const void *p, size_t n)
{
	for (const char *c = p; n;) {
		ssize_t w = write(fd, c, n);
		if (w <= 0)
			abort();
		c += w;
		n -= (size_t)w;
	}
}

static void write_whole(const char *path, uint32_t magic, const uint8_t *p,
			size_t n)
{
	uint8_t h[FILE_HDR_LEN];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd < 0)
		abort();
	spool_file_header(h, magic, 1, FUZZ_SALT, 0);
	write_all_or_abort(fd, h, sizeof(h));
	write_all_or_abort(fd, p, n);
	close(fd);
}

/* fix_records - make every magic-led region a well-framed, CRC'd record. */
static void fix_records(uint8_t *p, size_t n)
{
	for (size_t off = 0; off + REC_HDR_LEN <= n;) {
		uint8_t *h = p + off;
		uint32_t total, env_len, crc;

		if (get32(h) != MAGIC_REC) {
			off++;
			continue;
		}
		total = get32(h + 8);
		if (total < REC_HDR_LEN || total > n - off)
			total = (uint32_t)(n - off);
		env_len = get32(h + 40);
		if (env_len > total - REC_HDR_LEN)
			env_len = total - REC_HDR_LEN;
		h[4] = SPOOL_FORMAT_VERSION;
		h[5] = REC_MESSAGE;
		put16(h + 6, 0);
		put32(h + 8, total);
		put64(h + 16, FUZZ_SALT);
		if (!get64(h + 24))
			put64(h + 24, 1);
		put32(h + 40, env_len);
		put32(h + 44, total - REC_HDR_LEN - env_len);
		crc = crc32c(spoolrec_crc_head(h), h + REC_HDR_LEN,
			     total - REC_HDR_LEN);
		put32(h + 12, crc);
		off += total;
	}
}

static int on_recovered(void *ctx, const struct spool_envelope *env,
			const struct spool_ref *ref)
{
	struct spool *sp = *(struct spool **)ctx;
	uint8_t *body = xmalloc(ref->body_len + 1);

	/* Recovery vouched for this record: it must read back. */
	if (spool_read(sp, ref, body, ref->body_len) != 0)
		abort();
	free(body);
	if (!env->mail_from || !env->nrcpt)
		abort();
	for (size_t i = 0; i < env->nrcpt; i++)
		if (!env->rcpt[i].addr)
			abort();
	return 0;
}

static int on_recovered_journal(void *ctx, const struct spool_envelope *env,
				const struct spool_ref *ref)
{
	struct spool *sp = *(struct spool **)ctx;

	on_recovered(ctx, env, ref);
	if (spool_journal(sp, ref->id, env->rcpt[0].index, SPOOL_BOUNCED) != 0)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_opts opts = { .segment_size = 4096, .move_after = 1 };
	struct spool_maint_stats ms = { 0 };
	struct spool_stats st;
	struct spool *sp;
	uint8_t *seg, *jnl;
	size_t slen, jlen;
	char *path;

	if (size < 1)
		return 0;
	if ((data[0] & 3) == 0) {
		spool_envelope_check(data + 1, size - 1);
		return 0;
	}
	if (size < 3)
		return 0;
	slen = get16(data + 1) % (size - 3 + 1);
	jlen = size - 3 - slen;
	seg = xmalloc(slen + 1);
	jnl = xmalloc(jlen + 1);
	memcpy(seg, data + 3, slen);
	memcpy(jnl, data + 3 + slen, jlen);
	if (data[0] & 4)
		fix_records(seg, slen);
	if (data[0] & 8)
		for (size_t off = 0; off + JREC_LEN <= jlen; off += JREC_LEN)
			put32(jnl + off, spool_jrec_crc(FUZZ_SALT, jnl + off));

	if (spool_open(fdir, &opts, &sp, NULL) != 0)
		abort();
	path = spool_segment_path(fdir, 1);
	write_whole(path, MAGIC_SEG, seg, slen);
	free(path);
	path = spool_journal_path(fdir, 1);
	write_whole(path, MAGIC_JNL, jnl, jlen);
	free(path);
	if (spool_recover(sp, data[0] & 16 ? on_recovered_journal :
			  on_recovered, &sp, &st) != 0)
		abort();
	/* Created at 0: everything is old enough to move. */
	if (spool_maintain(sp, 1ll << 40, NULL, NULL, &ms) < 0 ||
	    spool_commit(sp) != 0 ||
	    spool_maintain(sp, 1ll << 40, NULL, NULL, &ms) < 0)
		abort();
	spool_close(sp);
	clean("seg");
	clean("journal");
	clean("quarantine");
	free(seg);
	free(jnl);
	return 0;
}
