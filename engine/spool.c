/*
 * spool.c - the durable spool (see spool.h): segment files of message
 * records, the outcome journal, group commit, recovery and reclamation.
 *
 * Owned by one thread (the intake thread).  spool_verify() and
 * spool_segment_path() are pure and may be called from any thread.
 *
 * On-disk format, little-endian (tests/engine/test_spool.c pins it):
 *
 *   file header, 40 bytes, first in every segment and journal file:
 *     u32 magic "CMTS" (segment) or "CMTJ" (journal), u8 version, u8 0,
 *     u16 header length, u64 seq (= the file name), u64 salt (random),
 *     i64 created (unix seconds), u8 flags, u8 0, u16 0,
 *     u32 crc32c of bytes 0..35; flags bit 0 (segments): a recycled file,
 *     whose records may be followed by an earlier life's (older readers
 *     ignore the flags and cut that tail as a torn one)
 *   message record: 48-byte header, then the envelope, then the body:
 *     u32 magic "CMTR", u8 version, u8 type (1), u16 flags (0),
 *     u32 total length, u32 crc32c (of bytes 0..11, then 16..end),
 *     u64 salt (the segment's), u64 id, i64 queued,
 *     u32 envelope length, u32 body length
 *   envelope: items {u8 tag, u16 length, value}; tags >= 0x80 are optional
 *     (an older reader skips them), an unknown tag below is an error
 *   journal record, 32 bytes at 40 + 32 * n:
 *     u32 crc32c (of the journal's salt, then bytes 4..31), u8 kind,
 *     u8 outcome, u16 0, u32 recipient index, u32 0, u64 id, u64 segment
 *
 * Why a salt: a message body is attacker-controlled and may contain a
 * well-formed record.  Scanning past a corrupt record resynchronises on the
 * next magic, and only a record carrying its segment's random salt (which
 * never leaves this host) is accepted, so no body can smuggle in an
 * envelope.
 *
 * Moves: spool_maintain() rewrites a long-deferred message to the active
 * segment under the same id, with only its unfinished recipients (each keeps
 * its original index, the journal key), so outcomes apply to whichever copy
 * exists.  Recovery keeps the newest copy of an id; a MOVED journal record
 * (id, old segment) kills the old copy for good once the new one may itself
 * be finished and gone.  (The retention rule below also keeps the outcomes
 * that would finish it; MOVED makes the old copy's fate not depend on
 * that.)  MOVED is journaled only after the new copy is synced, so it can
 * never be durable without it.
 *
 * Reclamation: a segment whose messages are all finished (or moved) is
 * unlinked, and the directory synced, before any journal file that refers
 * to it goes: a segment never comes back after a crash without the outcomes
 * that finished it.
 *
 * Recycling: instead of being unlinked, up to SEG_POOL_MAX finished
 * segments are renamed to "<old seq>.free" and become the next segments.
 * A write into blocks a file already has leaves its size and extents
 * alone, so the commit's fdatasync skips the inode write and the block
 * allocation that a growing file costs at every commit.  A reused file
 * gets a new header (new seq, new salt, the recycled flag) before it is
 * renamed to its new name; the earlier life's records carry the old salt,
 * so recovery never takes them (the salt check above), and cuts them as
 * the segment's tail.  Every acknowledged record was synced with the new
 * header (one file, one fdatasync), so a file under a segment name whose
 * header still names an earlier segment holds nothing acknowledged: it
 * goes back to the pool.  Writes to a recycled segment are padded with
 * zeros to the end of their last page, so the kernel never reads an
 * uncached page from the disk to complete a partial one.  Each segment remembers the lowest journal file that
 * may mention it (jmin); journal files below every remaining segment's jmin
 * are deleted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

#include "engine/spool.h"
#include "engine/spool_int.h"
#include "util/spoolrec.h"

#define ENV_MAX		(16u << 20)
#define ITEM_MAX	65535u
#define IO_CHUNK	(64u << 10)
#define JBUF_FLUSH	(64u << 10)	/* write buffered outcomes past this */
/*
 * Records appended in one loop turn go to the segment in one write at the
 * commit (spool_commit_begin): one pwrite per group commit instead of one
 * per message, and whole pages instead of a partial page at each end of
 * every record.  Past WBUF_FLUSH they are written early (still unsynced);
 * a record past WBUF_DIRECT, or with a spilled tail, is written at once.
 */
#define WBUF_FLUSH	(1u << 20)
#define WBUF_DIRECT	(256u << 10)
/*
 * Journal space claimed ahead of its end (fallocate, size unchanged):
 * 32768 outcomes can still be recorded when the disk has filled up, so
 * deliveries finish and free their segments.
 */
#define JOURNAL_AHEAD	(1u << 20)
/*
 * Finished segments kept for reuse (see "Recycling" above), only while
 * the disk keeps SEG_POOL_FREE_MIN segments' worth free besides them, and
 * only segments at least half of segment_size (small ones save little).
 * The intake releases them (spool_release_pool) before it refuses mail.
 */
#define SEG_POOL_MAX		2
#define SEG_POOL_FREE_MIN	4
#define SEG_F_RECYCLED		0x01
#define PAGE_LEN		4096u

/* Envelope item tags. */
enum {
	T_MAIL_FROM = 1,
	T_ENVID,
	T_SOURCE_IP,
	T_VMTA,
	T_JOB_ID,
	T_AUTH_USER,
	T_PARAMS,
	T_RCPT,
	T_LAST_SINGLETON = T_PARAMS,
	T_OPTIONAL = 0x80,
};

#define PARAMS_LEN	11	/* u64 size, u8 ret, u8 body, u8 flags */
#define RCPT_FIXED	8	/* u32 index, u8 notify, u8 flags, u16 alen */
#define NOTIFY_ALL	0x0fu

#define GROW(arr, cap, need)						\
	do {								\
		if ((need) > (cap)) {					\
			size_t ncap_ = (cap) ? (cap) * 2 : 8;		\
			while (ncap_ < (need))				\
				ncap_ *= 2;				\
			(arr) = xrealloc((arr), ncap_ * sizeof(*(arr))); \
			(cap) = ncap_;					\
		}							\
	} while (0)

struct buf {
	uint8_t *p;
	size_t len;
	size_t cap;
};

struct msg;

struct seg {
	uint64_t seq;
	uint64_t salt;
	int64_t created;
	uint64_t size;		/* append offset (for old segments: scanned) */
	uint64_t live;		/* unfinished recipients whose copy is here */
	uint64_t jmin;		/* lowest journal file that may name us */
	int fd;			/* open while active or a sync is pending */
	bool active;
	bool touched;		/* written since the last commit_begin */
	bool inflight;		/* in the sync set of the commit in flight */
	bool pending;		/* listed at recovery, not scanned yet */
	bool recycled;		/* reused file: pad writes up to reuse_end */
	uint64_t reuse_end;	/* its size when it was taken from the pool */
	struct msg *head, *tail;	/* messages, in record order */
};

struct msg {
	uint64_t id;
	struct seg *seg;
	uint64_t off;
	uint32_t len;
	uint32_t env_len;
	uint32_t nbits : 31;	/* highest recipient index + 1 */
	uint32_t body_8bit : 1;	/* recovery saw octets above 127 in the body */
	uint32_t live;		/* unfinished recipients */
	/*
	 * Set = unfinished: the bits themselves when nbits <= 64, else an
	 * array of their own (msg_words).  A union: 64 bytes a message, a
	 * million queued messages cost 64 MB here (issue 16).
	 */
	union {
		uint64_t word;
		uint64_t *ext;
	};
	struct msg *prev, *next;
};

#define MSG_CHUNK 256

struct msg_chunk {
	struct msg_chunk *next;
	struct msg m[MSG_CHUNK];
};

/* A decoded envelope; strings point into str. */
struct dec {
	struct spool_envelope env;
	struct spool_rcpt *rcpt;
	size_t rcptcap;
	char *str;
	size_t strcap;
	uint64_t seen[SPOOL_MAX_RCPT / 64];	/* duplicate index check */
};


struct moved {
	struct spool_ref from, to;
};

/*
 * Where an incremental recovery (spool_recover_begin/step) stands.  The
 * segments it scans are sp->segs[0..nold): listed at begin, so they come
 * before any segment the new mail creates.  One file is open at a time.
 */
enum rphase { R_IDLE, R_SEGS, R_JNLS, R_HANDOFF, R_DONE };

struct recovery {
	enum rphase phase;
	struct spool_stats *st;
	size_t nold, next;	/* segments: how many, the next to scan */
	uint64_t *jseqs;	/* journals listed at begin, ascending */
	size_t njseqs, jnext;
	int fd;			/* the file being scanned, or -1 */
	struct seg *seg;	/* ... the segment's entry */
	uint64_t seq, off, fsize, salt;
	bool recycled;		/* ... its header says so */
	bool last_8bit;		/* the body rec_at() last read has 8-bit octets */
	uint64_t nrec, bad;	/* ... the journal's records, first bad */
	uint64_t *ids;		/* messages to hand over, by id */
	size_t nids, hand;
};

/*
 * Recovery's read window: it reads every record's header, envelope and
 * body in file order, and a pread for each made it four system calls a
 * message (1M queued messages: 4M).  It holds <len> bytes of segment
 * <seq> from <off>, read through <fd>; only files nothing appends to are
 * read through it (recovery's segments).
 */
struct rcache {
	uint8_t *p;
	uint64_t seq, off;
	size_t len;
	int fd;
};

struct spool {
	char *dir, *segdir, *jdir, *qdir;
	struct spool_opts opts;
	int lockfd, segdirfd, jdirfd;
	bool recovered;
	int broken;		/* sticky -errno after a failed sync */
	struct strbuf err;

	struct seg **segs;	/* oldest first */
	size_t nsegs, capsegs;
	struct seg *active;
	uint64_t next_seg;
	bool segdir_dirty;	/* gained a file since the last sync */
	uint64_t pool[SEG_POOL_MAX];	/* "<seq>.free" files to reuse */
	size_t npool;
	uint64_t keep_free;	/* disk space pooled files never take */

	struct msg **slot;	/* id -> message, open addressing */
	size_t mcap, mcount;
	struct msg *free_msgs;
	struct msg_chunk *chunks;
	uint64_t next_id;

	uint64_t *jfiles;	/* journal files on disk, ascending */
	size_t njfiles, capjfiles;
	int jfd;
	uint64_t jseq, jsize, jsalt;
	uint64_t jalloc;	/* the journal's space is claimed up to here */
	uint64_t next_jseq;
	bool jdirty;		/* written since the last commit_begin */
	bool jdir_dirty;
	struct buf jbuf;	/* outcome records not yet written */

	struct seg **touched;
	size_t ntouched, captouched;
	struct seg **flight;
	size_t nflight, capflight;
	struct spool_sync *syncs;
	size_t capsyncs;
	bool inflight;

	uint64_t rseq;		/* one cached read fd for old segments */
	int rfd;

	struct buf wbuf;	/* records appended, not yet written: they
				 * go to the active segment at woff */
	uint64_t woff;
	struct buf rec;		/* record I/O scratch */
	struct buf io;		/* chunk scratch */
	struct buf enc;		/* envelope encoding scratch */
	struct dec dec;
	struct moved *moved;
	size_t capmoved;

	struct rcache rcache;

	int idfd;		/* DIR/ids: the id reservation */
	uint64_t id_limit;	/* every id issued is below this, durably */
	struct recovery rc;
};

/* ---- small helpers ---------------------------------------------------- */

/* buf_reserve - room for n more bytes */
static void buf_reserve(struct buf *b, size_t n)
{
	BUG_ON(b->len + n < b->len);
	GROW(b->p, b->cap, b->len + n);
}

/* buf_put - append n bytes */
static void buf_put(struct buf *b, const void *v, size_t n)
{
	if (!n)
		return;
	buf_reserve(b, n);
	memcpy(b->p + b->len, v, n);
	b->len += n;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* errstr - text for a (negative) errno, thread-safe */
static const char *errstr(int err)
{
	const char *s = strerrordesc_np(err < 0 ? -err : err);

	return s ? s : "unknown error";
}

/* fail - remember why the current call fails; returns <err>. */
static int fail(struct spool *sp, int err, const char *fmt, ...)
	UTIL_PRINTF(3, 4);

static int fail(struct spool *sp, int err, const char *fmt, ...)
{
	va_list ap;

	sb_reset(&sp->err);
	va_start(ap, fmt);
	sb_vprintf(&sp->err, fmt, ap);
	va_end(ap);
	sb_printf(&sp->err, ": %s", errstr(err));
	return err;
}

/* now_sec - wall clock, unix seconds */
static int64_t now_sec(void)
{
	return (int64_t)time(NULL);
}

/* pwrite_all - write every iovec at <off>, across short writes */
static int pwrite_all(int fd, struct iovec *iov, int cnt, uint64_t off)
{
	while (cnt > 0 && iov->iov_len == 0) {
		iov++;
		cnt--;
	}
	while (cnt > 0) {
		ssize_t n = pwritev(fd, iov, cnt, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		off += (uint64_t)n;
		while (cnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/* pwrite_buf - pwrite_all of one buffer */
static int pwrite_buf(int fd, const void *p, size_t n, uint64_t off)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = n };

	return pwrite_all(fd, &iov, 1, off);
}

/* pread_all - read exactly n bytes; -ENODATA if the file ends first. */
static int pread_all(int fd, void *p, size_t n, uint64_t off)
{
	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ENODATA;
		p = (char *)p + r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

#define RCACHE_LEN	(1u << 20)

/*
 * rc_read - n bytes at <off> of segment <seq> (open as <fd>) through the
 * recovery window; what does not fit half of it is read directly.  As
 * pread_all: 0, -ENODATA past the end, -errno.
 */
static int rc_read(struct spool *sp, int fd, uint64_t seq, void *dst, size_t n,
		   uint64_t off)
{
	struct rcache *c = &sp->rcache;

	if (!n)
		return 0;
	if (n > RCACHE_LEN / 2)
		return pread_all(fd, dst, n, off);
	if (c->fd != fd || c->seq != seq || off < c->off || off + n > c->off + c->len) {
		size_t got = 0;

		if (!c->p)
			c->p = xmalloc(RCACHE_LEN);
		c->fd = -1;
		while (got < RCACHE_LEN) {
			ssize_t r = pread(fd, c->p + got, RCACHE_LEN - got, (off_t)(off + got));

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -errno;
			if (r == 0)
				break;
			got += (size_t)r;
		}
		c->fd = fd;
		c->seq = seq;
		c->off = off;
		c->len = got;
		if (got < n)
			return -ENODATA;
	}
	memcpy(dst, c->p + (off - c->off), n);
	return 0;
}

/* rc_drop - forget the recovery window (its file closes or changes) */
static void rc_drop(struct spool *sp)
{
	sp->rcache.fd = -1;
}

/* rc_free - recovery is over: the window's memory goes */
static void rc_free(struct spool *sp)
{
	free(sp->rcache.p);
	sp->rcache.p = NULL;
	rc_drop(sp);
}


/* ---- envelope encoding ------------------------------------------------ */

/* enc_item_hdr - tag and length of one envelope item */
static void enc_item_hdr(struct buf *b, uint8_t tag, size_t n)
{
	uint8_t h[3];

	h[0] = tag;
	put16(h + 1, (uint16_t)n);
	buf_put(b, h, 3);
}

/* enc_str - a string item; absent (NULL) strings are not written */
static int enc_str(struct buf *b, uint8_t tag, const char *s)
{
	size_t n;

	if (!s)
		return 0;
	n = strlen(s);
	if (n > SPOOL_MAX_FIELD)
		return -E2BIG;
	enc_item_hdr(b, tag, n);
	buf_put(b, s, n);
	return 0;
}

/*
 * env_encode - envelope items into <b> (reset first).  keep_index: write
 * each recipient's own index (a move), else its position (an append).
 */
static int env_encode(struct buf *b, const struct spool_envelope *env,
		      bool keep_index)
{
	uint8_t params[PARAMS_LEN];
	int r = 0;

	b->len = 0;
	if (!env->mail_from || !env->rcpt || !env->nrcpt)
		return -EINVAL;
	if (env->nrcpt > SPOOL_MAX_RCPT)
		return -E2BIG;
	if (env->ret > MAIL_RET_HDRS || env->body_type > MAIL_BODY_BINARYMIME)
		return -EINVAL;
	r |= enc_str(b, T_MAIL_FROM, env->mail_from);
	r |= enc_str(b, T_ENVID, env->envid);
	r |= enc_str(b, T_SOURCE_IP, env->source_ip);
	r |= enc_str(b, T_VMTA, env->vmta);
	r |= enc_str(b, T_JOB_ID, env->job_id);
	r |= enc_str(b, T_AUTH_USER, env->auth_user);
	if (r)
		return -E2BIG;
	put64(params, env->size);
	params[8] = env->ret;
	params[9] = env->body_type;
	params[10] = env->smtputf8 ? 1 : 0;
	enc_item_hdr(b, T_PARAMS, PARAMS_LEN);
	buf_put(b, params, PARAMS_LEN);

	for (size_t i = 0; i < env->nrcpt; i++) {
		const struct spool_rcpt *rc = &env->rcpt[i];
		uint8_t fix[RCPT_FIXED];
		size_t alen, olen;
		uint32_t index = keep_index ? rc->index : (uint32_t)i;

		if (!rc->addr || (rc->notify & ~NOTIFY_ALL) ||
		    index >= SPOOL_MAX_RCPT)
			return -EINVAL;
		alen = strlen(rc->addr);
		olen = rc->orcpt ? strlen(rc->orcpt) : 0;
		if (alen > SPOOL_MAX_FIELD || olen > SPOOL_MAX_FIELD ||
		    RCPT_FIXED + alen + olen > ITEM_MAX)
			return -E2BIG;
		put32(fix, index);
		fix[4] = (uint8_t)rc->notify;
		fix[5] = rc->orcpt ? 1 : 0;
		put16(fix + 6, (uint16_t)alen);
		enc_item_hdr(b, T_RCPT, RCPT_FIXED + alen + olen);
		buf_put(b, fix, RCPT_FIXED);
		buf_put(b, rc->addr, alen);
		if (olen)
			buf_put(b, rc->orcpt, olen);
		if (b->len > ENV_MAX)
			return -E2BIG;
	}
	return 0;
}

/* dec_str - copy a string value into d->str; NUL bytes are not allowed. */
static const char *dec_str(struct dec *d, size_t *pos, const uint8_t *v,
			   size_t n)
{
	char *s = d->str + *pos;

	if (memchr(v, 0, n))
		return NULL;
	memcpy(s, v, n);
	s[n] = '\0';
	*pos += n + 1;
	return s;
}

/*
 * env_decode - parse n bytes of envelope items into d->env.  Input comes
 * from disk and may be anything: every length is checked before use.
 * 0 or -EBADMSG.
 */
static int env_decode(struct dec *d, const uint8_t *p, size_t n)
{
	struct spool_envelope *env = &d->env;
	size_t nrcpt = 0, pos = 0, off;
	unsigned seen_tags = 0;
	int r = 0;

	memset(env, 0, sizeof(*env));
	if (n > ENV_MAX)
		return -EBADMSG;
	/* Pass 1: framing, and how much room the strings need. */
	for (off = 0; off < n;) {
		size_t len;

		if (n - off < 3)
			return -EBADMSG;
		len = get16(p + off + 1);
		if (len > n - off - 3)
			return -EBADMSG;
		if (p[off] == T_RCPT && ++nrcpt > SPOOL_MAX_RCPT)
			return -EBADMSG;
		off += 3 + len;
	}
	if (!nrcpt)
		return -EBADMSG;
	GROW(d->rcpt, d->rcptcap, nrcpt);
	/* Every string is shorter than its item: n bytes hold them all. */
	GROW(d->str, d->strcap, n + 1);

	/* Pass 2: meaning. */
	nrcpt = 0;
	for (off = 0; off < n && !r;) {
		uint8_t tag = p[off];
		size_t len = get16(p + off + 1);
		const uint8_t *v = p + off + 3;
		const char **field = NULL;

		off += 3 + len;
		if (tag >= 1 && tag <= T_LAST_SINGLETON) {
			if (seen_tags & (1u << tag)) {
				r = -EBADMSG;
				break;
			}
			seen_tags |= 1u << tag;
		}
		switch (tag) {
		case T_MAIL_FROM:
			field = &env->mail_from;
			break;
		case T_ENVID:
			field = &env->envid;
			break;
		case T_SOURCE_IP:
			field = &env->source_ip;
			break;
		case T_VMTA:
			field = &env->vmta;
			break;
		case T_JOB_ID:
			field = &env->job_id;
			break;
		case T_AUTH_USER:
			field = &env->auth_user;
			break;
		case T_PARAMS:
			if (len != PARAMS_LEN || v[8] > MAIL_RET_HDRS ||
			    v[9] > MAIL_BODY_BINARYMIME || (v[10] & ~1u)) {
				r = -EBADMSG;
				break;
			}
			env->size = get64(v);
			env->ret = v[8];
			env->body_type = v[9];
			env->smtputf8 = v[10] & 1;
			break;
		case T_RCPT: {
			struct spool_rcpt *rc = &d->rcpt[nrcpt];
			size_t alen;
			uint32_t index;

			if (len < RCPT_FIXED) {
				r = -EBADMSG;
				break;
			}
			index = get32(v);
			alen = get16(v + 6);
			if (index >= SPOOL_MAX_RCPT || (v[4] & ~NOTIFY_ALL) ||
			    (v[5] & ~1u) || alen > len - RCPT_FIXED ||
			    (!(v[5] & 1) && alen != len - RCPT_FIXED) ||
			    (d->seen[index / 64] >> (index % 64) & 1)) {
				r = -EBADMSG;
				break;
			}
			rc->index = index;
			rc->notify = v[4];
			rc->addr = dec_str(d, &pos, v + RCPT_FIXED, alen);
			rc->orcpt = NULL;
			if (v[5] & 1)
				rc->orcpt = dec_str(d, &pos, v + RCPT_FIXED + alen,
						    len - RCPT_FIXED - alen);
			if (!rc->addr || ((v[5] & 1) && !rc->orcpt)) {
				r = -EBADMSG;
				break;
			}
			d->seen[index / 64] |= 1ull << (index % 64);
			nrcpt++;
			break;
		}
		default:
			if (tag < T_OPTIONAL)
				r = -EBADMSG;
			break;
		}
		if (field && !(*field = dec_str(d, &pos, v, len)))
			r = -EBADMSG;
	}
	/* Leave the duplicate map clear for the next call. */
	for (size_t i = 0; i < nrcpt; i++)
		d->seen[d->rcpt[i].index / 64] = 0;
	if (r)
		return r;
	if (!env->mail_from || !(seen_tags & (1u << T_PARAMS)))
		return -EBADMSG;
	env->rcpt = d->rcpt;
	env->nrcpt = nrcpt;
	return 0;
}

/* dec_free - release a decoder's buffers */
static void dec_free(struct dec *d)
{
	free(d->rcpt);
	free(d->str);
	d->rcpt = NULL;
	d->str = NULL;
	d->rcptcap = d->strcap = 0;
}

/* ---- record and file headers ------------------------------------------ */

/* rec_header - fill a record header (CRC left 0) */
static void rec_header(uint8_t *h, uint64_t salt, uint64_t id, int64_t queued,
		       uint32_t env_len, uint32_t body_len)
{
	memset(h, 0, REC_HDR_LEN);
	put32(h, MAGIC_REC);
	h[4] = SPOOL_FORMAT_VERSION;
	h[5] = REC_MESSAGE;
	put32(h + 8, REC_HDR_LEN + env_len + body_len);
	put64(h + 16, salt);
	put64(h + 24, id);
	put64(h + 32, (uint64_t)queued);
	put32(h + 40, env_len);
	put32(h + 44, body_len);
}

/* spool_file_header - a segment or journal file header, CRC included */
void spool_file_header(uint8_t *h, uint32_t magic, uint64_t seq,
			uint64_t salt, int64_t created)
{
	memset(h, 0, FILE_HDR_LEN);
	put32(h, magic);
	h[4] = SPOOL_FORMAT_VERSION;
	put16(h + 6, FILE_HDR_LEN);
	put64(h + 8, seq);
	put64(h + 16, salt);
	put64(h + 24, (uint64_t)created);
	put32(h + 36, crc32c(0, h, 36));
}

/* file_header_check - is <h> the header of file <seq> of this kind? */
static int file_header_check(const uint8_t *h, uint32_t magic, uint64_t seq,
			     uint64_t *salt, int64_t *created)
{
	if (get32(h) != magic || h[4] != SPOOL_FORMAT_VERSION ||
	    get16(h + 6) != FILE_HDR_LEN || get64(h + 8) != seq ||
	    get32(h + 36) != crc32c(0, h, 36))
		return -EBADMSG;
	*salt = get64(h + 16);
	*created = (int64_t)get64(h + 24);
	return 0;
}

/*
 * earlier_life - is <h> an intact segment header naming a segment before
 * <seq>?  Only recycling writes a segment under another name: this is a
 * pooled file renamed to <seq> whose new header never reached the disk,
 * so nothing in it was acknowledged.
 */
static bool earlier_life(const uint8_t *h, uint64_t seq)
{
	return get32(h) == MAGIC_SEG && h[4] == SPOOL_FORMAT_VERSION &&
	       get16(h + 6) == FILE_HDR_LEN && get64(h + 8) < seq &&
	       get32(h + 36) == crc32c(0, h, 36);
}

/* spool_jrec_crc - a journal record's CRC, seeded with its file's salt */
uint32_t spool_jrec_crc(uint64_t jsalt, const uint8_t *r)
{
	uint8_t s[8];

	put64(s, jsalt);
	return crc32c(crc32c(0, s, 8), r + 4, JREC_LEN - 4);
}

/* ---- message table ---------------------------------------------------- */

/* mix64 - spread sequential ids over the table (splitmix64 finaliser) */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* msg_find - the message with <id>, or NULL */
static struct msg *msg_find(const struct spool *sp, uint64_t id)
{
	size_t mask = sp->mcap - 1;

	if (!sp->mcap)
		return NULL;
	for (size_t i = mix64(id) & mask;; i = (i + 1) & mask) {
		if (!sp->slot[i])
			return NULL;
		if (sp->slot[i]->id == id)
			return sp->slot[i];
	}
}

/* tab_put - place <m> in its probe chain (no resize) */
static void tab_put(struct msg **slot, size_t cap, struct msg *m)
{
	size_t mask = cap - 1, i;

	for (i = mix64(m->id) & mask; slot[i]; i = (i + 1) & mask)
		;
	slot[i] = m;
}

/* msg_insert - add to the table, growing it below 70% load */
static void msg_insert(struct spool *sp, struct msg *m)
{
	if ((sp->mcount + 1) * 10 > sp->mcap * 7) {
		size_t ncap = sp->mcap ? sp->mcap * 2 : 1024;
		struct msg **ns = xcalloc(ncap, sizeof(*ns));

		for (size_t i = 0; i < sp->mcap; i++)
			if (sp->slot[i])
				tab_put(ns, ncap, sp->slot[i]);
		free(sp->slot);
		sp->slot = ns;
		sp->mcap = ncap;
	}
	tab_put(sp->slot, sp->mcap, m);
	sp->mcount++;
}

/* msg_remove - delete from the table, shifting the probe chain back. */
static void msg_remove(struct spool *sp, const struct msg *m)
{
	size_t mask = sp->mcap - 1, i, j;

	for (i = mix64(m->id) & mask; sp->slot[i] != m; i = (i + 1) & mask)
		BUG_ON(!sp->slot[i]);
	for (j = (i + 1) & mask; sp->slot[j]; j = (j + 1) & mask) {
		size_t home = mix64(sp->slot[j]->id) & mask;

		/* Move j back to the hole unless its home lies in (i, j]. */
		if (((j - home) & mask) >= ((j - i) & mask)) {
			sp->slot[i] = sp->slot[j];
			i = j;
		}
	}
	sp->slot[i] = NULL;
	sp->mcount--;
}

/* msg_alloc - a zeroed message with room for <nbits> recipients;
 * from a free list, so the hot path does not call malloc */
static struct msg *msg_alloc(struct spool *sp, uint32_t nbits)
{
	struct msg *m;

	if (!sp->free_msgs) {
		struct msg_chunk *c = xmalloc(sizeof(*c));

		c->next = sp->chunks;
		sp->chunks = c;
		for (size_t i = 0; i < MSG_CHUNK; i++) {
			c->m[i].next = sp->free_msgs;
			sp->free_msgs = &c->m[i];
		}
	}
	m = sp->free_msgs;
	sp->free_msgs = m->next;
	memset(m, 0, sizeof(*m));
	m->nbits = nbits;
	if (nbits > 64)
		m->ext = xcalloc((nbits + 63) / 64, 8);
	return m;
}

/* msg_words - <m>'s recipient bits, 64 a word */
static uint64_t *msg_words(struct msg *m)
{
	return m->nbits <= 64 ? &m->word : m->ext;
}

/* msg_release - back to the free list */
static void msg_release(struct spool *sp, struct msg *m)
{
	if (m->nbits > 64)
		free(m->ext);
	m->nbits = 0;
	m->next = sp->free_msgs;
	sp->free_msgs = m;
}

/* seg_link - make <s> the home of <m>'s current copy */
static void seg_link(struct seg *s, struct msg *m)
{
	m->seg = s;
	m->prev = s->tail;
	m->next = NULL;
	if (s->tail)
		s->tail->next = m;
	else
		s->head = m;
	s->tail = m;
	s->live += m->live;
}

/* seg_unlink - take <m> off its segment's list and live count */
static void seg_unlink(struct msg *m)
{
	struct seg *s = m->seg;

	if (m->prev)
		m->prev->next = m->next;
	else
		s->head = m->next;
	if (m->next)
		m->next->prev = m->prev;
	else
		s->tail = m->prev;
	BUG_ON(s->live < m->live);
	s->live -= m->live;
	m->seg = NULL;
	m->prev = m->next = NULL;
}

/* msg_drop - forget a message: finished, or superseded by a newer copy. */
static void msg_drop(struct spool *sp, struct msg *m)
{
	msg_remove(sp, m);
	seg_unlink(m);
	msg_release(sp, m);
}

/* msg_bit - is recipient <i> of <m> unfinished? */
static bool msg_bit(const struct msg *m, uint32_t i)
{
	const uint64_t *w = m->nbits <= 64 ? &m->word : m->ext;

	return i < m->nbits && (w[i / 64] >> (i % 64) & 1);
}

/* msg_clear - finish recipient <i> (must be unfinished) */
static void msg_clear(struct msg *m, uint32_t i)
{
	msg_words(m)[i / 64] &= ~(1ull << (i % 64));
	m->live--;
	m->seg->live--;
}

/* msg_ref - the public ref of <m>'s current copy */
static void msg_ref(const struct msg *m, struct spool_ref *ref)
{
	ref->id = m->id;
	ref->seg = m->seg->seq;
	ref->off = m->off;
	ref->len = m->len;
	ref->body_off = REC_HDR_LEN + m->env_len;
	ref->body_len = m->len - REC_HDR_LEN - m->env_len;
}

/* ---- segments --------------------------------------------------------- */

int spool_envelope_check(const uint8_t *p, size_t n)
{
	struct dec *d = xcalloc(1, sizeof(*d));
	int rc = env_decode(d, p, n);

	dec_free(d);
	free(d);
	return rc;
}

char *spool_journal_path(const char *dir, uint64_t seq)
{
	return xasprintf("%s/journal/%016llx.jnl", dir, (unsigned long long)seq);
}

/* seg_path, jnl_path - file names; the caller frees */
static char *seg_path(const struct spool *sp, uint64_t seq)
{
	return xasprintf("%s/%016llx.seg", sp->segdir, (unsigned long long)seq);
}

static char *pool_path(const struct spool *sp, uint64_t seq)
{
	return xasprintf("%s/%016llx.free", sp->segdir, (unsigned long long)seq);
}

static char *jnl_path(const struct spool *sp, uint64_t seq)
{
	return xasprintf("%s/%016llx.jnl", sp->jdir, (unsigned long long)seq);
}

/* seg_find - segment <seq> by binary search, or NULL */
static struct seg *seg_find(const struct spool *sp, uint64_t seq)
{
	size_t lo = 0, hi = sp->nsegs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (sp->segs[mid]->seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < sp->nsegs && sp->segs[lo]->seq == seq ? sp->segs[lo] : NULL;
}

/* seg_add - a new segment, newest, at the end of the list */
static struct seg *seg_add(struct spool *sp, uint64_t seq, uint64_t salt,
			   int64_t created)
{
	struct seg *s = xcalloc(1, sizeof(*s));

	BUG_ON(sp->nsegs && sp->segs[sp->nsegs - 1]->seq >= seq);
	s->seq = seq;
	s->salt = salt;
	s->created = created;
	s->size = FILE_HDR_LEN;
	s->jmin = UINT64_MAX;
	s->fd = -1;
	GROW(sp->segs, sp->capsegs, sp->nsegs + 1);
	sp->segs[sp->nsegs++] = s;
	return s;
}

/* seg_read_fd - an fd to read segment <s>; the cache holds one old one. */
static int seg_read_fd(struct spool *sp, struct seg *s)
{
	char *path;
	int fd;

	if (s->fd >= 0)
		return s->fd;
	if (sp->rfd >= 0 && sp->rseq == s->seq)
		return sp->rfd;
	path = seg_path(sp, s->seq);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	free(path);
	if (fd < 0)
		return fail(sp, -errno, "spool: open segment %016llx",
			    (unsigned long long)s->seq);
	if (sp->rfd >= 0)
		close(sp->rfd);
	sp->rfd = fd;
	sp->rseq = s->seq;
	return fd;
}

/* seg_forget_fd - close <s>'s fds once no write or sync needs them */
static void seg_forget_fd(struct spool *sp, struct seg *s)
{
	if (sp->rfd >= 0 && sp->rseq == s->seq) {
		close(sp->rfd);
		sp->rfd = -1;
	}
	if (s->fd >= 0 && !s->active && !s->touched && !s->inflight) {
		close(s->fd);
		s->fd = -1;
	}
}

/* new_salt - 64 random bits for a new file */
static int new_salt(uint64_t *salt)
{
	ssize_t n;

	do
		n = getrandom(salt, sizeof(*salt), 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(*salt))
		return n < 0 ? -errno : -EIO;
	return 0;
}

/* create_file - a new segment or journal file with its header written. */
static int create_file(struct spool *sp, const char *path, uint32_t magic,
		       uint64_t seq, uint64_t *salt, int64_t created)
{
	uint8_t h[FILE_HDR_LEN];
	int fd, r;

	r = new_salt(salt);
	if (r < 0)
		return fail(sp, r, "spool: getrandom");
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return fail(sp, -errno, "spool: create %s", path);
	spool_file_header(h, magic, seq, *salt, created);
	r = pwrite_buf(fd, h, sizeof(h), 0);
	if (r < 0) {
		close(fd);
		unlink(path);
		return fail(sp, r, "spool: write %s", path);
	}
	return fd;
}

/* touch - <s> has data the next commit must sync */
static void touch(struct spool *sp, struct seg *s)
{
	if (s->touched)
		return;
	s->touched = true;
	GROW(sp->touched, sp->captouched, sp->ntouched + 1);
	sp->touched[sp->ntouched++] = s;
}

/*
 * wbuf_flush - write the buffered records to the active segment (no sync).
 * On failure they stay buffered and the next flush writes them again,
 * whole, at the same place; the caller reports the error.
 */
static int wbuf_flush(struct spool *sp)
{
	int r;

	if (!sp->wbuf.len)
		return 0;
	BUG_ON(!sp->active || sp->woff + sp->wbuf.len != sp->active->size);
	size_t len = sp->wbuf.len;
	uint64_t end = sp->woff + len, page_end = (end + PAGE_LEN - 1) / PAGE_LEN * PAGE_LEN;

	/* a whole last page: the kernel need not read the old one first */
	if (sp->active->recycled && page_end <= sp->active->reuse_end) {
		buf_reserve(&sp->wbuf, page_end - end);
		memset(sp->wbuf.p + len, 0, page_end - end);
		len += page_end - end;
	}
	r = pwrite_buf(sp->active->fd, sp->wbuf.p, len, sp->woff);
	if (r < 0)
		return fail(sp, r, "spool: write segment %016llx",
			    (unsigned long long)sp->active->seq);
	sp->wbuf.len = 0;
	return 0;
}

/*
 * reuse_pooled - make a pooled file segment <seq>: a new header page (new
 * salt, the recycled flag; zeros after it, so the first commit finds the
 * page cached), then the rename.  Both reach the disk with the first
 * commit (the data and the directory are synced before any 250).  1: *fd
 * is the segment and *size the file's length; 0: no pooled file would do
 * (those tried are removed).
 */
static int reuse_pooled(struct spool *sp, uint64_t seq, uint64_t *salt,
			int64_t created, int *fd, uint64_t *size)
{
	while (sp->npool) {
		uint64_t old = sp->pool[--sp->npool];
		char *from = pool_path(sp, old), *to = seg_path(sp, seq);
		uint8_t *page = xcalloc(1, PAGE_LEN);
		struct stat sb;
		bool ok;

		*fd = open(from, O_RDWR | O_CLOEXEC);
		ok = *fd >= 0 && fstat(*fd, &sb) == 0 &&
		     (uint64_t)sb.st_size >= PAGE_LEN && new_salt(salt) == 0;
		if (ok) {
			spool_file_header(page, MAGIC_SEG, seq, *salt, created);
			page[32] = SEG_F_RECYCLED;
			put32(page + 36, crc32c(0, page, 36));
			ok = pwrite_buf(*fd, page, PAGE_LEN, 0) == 0 &&
			     rename(from, to) == 0;
		}
		free(page);
		if (ok) {
			*size = (uint64_t)sb.st_size;
			free(from);
			free(to);
			return 1;
		}
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		unlink(from);
		free(from);
		free(to);
	}
	return 0;
}

/* active_for - the segment the next <total> bytes go to, rolling over. */
static int active_for(struct spool *sp, uint64_t total, struct seg **out)
{
	struct seg *s = sp->active;
	uint64_t salt;
	int64_t created = now_sec();
	char *path;
	int fd;

	if (s && s->size > FILE_HDR_LEN &&
	    s->size + total > sp->opts.segment_size) {
		int r = wbuf_flush(sp);	/* what it buffered goes with it */

		if (r < 0)
			return r;
		s->active = false;
		seg_forget_fd(sp, s);
		sp->active = s = NULL;
	}
	if (!s) {
		uint64_t reuse_end = 0;

		if (!reuse_pooled(sp, sp->next_seg, &salt, created, &fd,
				  &reuse_end)) {
			path = seg_path(sp, sp->next_seg);
			fd = create_file(sp, path, MAGIC_SEG, sp->next_seg,
					 &salt, created);
			free(path);
			if (fd < 0)
				return fd;
		}
		s = seg_add(sp, sp->next_seg++, salt, created);
		s->recycled = reuse_end > 0;
		s->reuse_end = reuse_end;
		s->fd = fd;
		s->active = true;
		sp->active = s;
		sp->segdir_dirty = true;
		touch(sp, s);	/* the header must reach the disk too */
	}
	*out = s;
	return 0;
}

/*
 * A spill: the tail of one incoming body, streamed to an unnamed file in
 * seg/ (same filesystem, so the kernel can copy it into the segment without
 * it passing through our memory) and summed as it goes.  Nothing in it is
 * durable or part of the spool until spool_append_spilled() copies it into
 * a record; a crash leaves no trace (O_TMPFILE, or unlinked at once).
 */
struct spool_spill {
	int fd;
	uint64_t len;
	uint32_t crc;
};

int spool_spill_new(struct spool *sp, struct spool_spill **out)
{
	int fd = open(sp->segdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
		/* no O_TMPFILE here: a named file, unlinked before use */
		char *path = xasprintf("%s/spill.XXXXXX", sp->segdir);

		fd = mkostemp(path, O_CLOEXEC);
		if (fd >= 0)
			unlink(path);
		free(path);
	}
	if (fd < 0)
		return fail(sp, -errno, "spool: create a spill file in %s", sp->segdir);
	struct spool_spill *t = xcalloc(1, sizeof(*t));
	t->fd = fd;
	*out = t;
	return 0;
}

int spool_spill_write(struct spool_spill *t, const void *p, size_t n)
{
	int r = pwrite_buf(t->fd, p, n, t->len);

	if (r < 0)
		return r;
	t->crc = crc32c(t->crc, p, n);
	t->len += n;
	return 0;
}

int spool_spill_read(const struct spool_spill *t, uint64_t off, void *p, size_t n)
{
	if (off > t->len || n > t->len - off)
		return -EINVAL;
	return pread_all(t->fd, p, n, off);
}

uint64_t spool_spill_len(const struct spool_spill *t)
{
	return t ? t->len : 0;
}

void spool_spill_reset(struct spool_spill *t)
{
	if (!t || !t->len)
		return;
	/* gives the blocks back; a failure only wastes space until reuse */
	if (ftruncate(t->fd, 0) < 0) {
	}
	t->len = 0;
	t->crc = 0;
}

void spool_spill_free(struct spool_spill *t)
{
	if (!t)
		return;
	close(t->fd);
	free(t);
}

/*
 * copy_tail - the spill's bytes to <fd> at <off>: copy_file_range (the
 * kernel moves the pages, or shares the blocks where the filesystem can),
 * or through a chunk buffer where it cannot.
 */
static int copy_tail(struct spool *sp, const struct spool_spill *t, int fd,
		     uint64_t off)
{
	loff_t in = 0, o = (loff_t)off;
	bool plain = false;

	while ((uint64_t)in < t->len) {
		size_t want = t->len - (uint64_t)in > (1u << 30) ? (1u << 30)
			      : (size_t)(t->len - (uint64_t)in);
		ssize_t n = -1;

		if (!plain) {
			n = copy_file_range(t->fd, &in, fd, &o, want, 0);
			if (n < 0 && (errno == EXDEV || errno == EINVAL ||
				      errno == ENOSYS || errno == EOPNOTSUPP)) {
				plain = true;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				return -errno;
			if (n == 0)
				return -EIO;
			continue;
		}
		buf_reserve(&sp->io, IO_CHUNK);
		if (want > IO_CHUNK)
			want = IO_CHUNK;
		int r = pread_all(t->fd, sp->io.p, want, (uint64_t)in);
		if (r == 0)
			r = pwrite_buf(fd, sp->io.p, want, (uint64_t)o);
		if (r < 0)
			return r;
		in += (loff_t)want;
		o += (loff_t)want;
	}
	return 0;
}

/*
 * append_record - add one record to the active segment and fill <ref>:
 * buffered for the commit's single write (WBUF_FLUSH), or a big or
 * streamed one written at once with a single pwritev.  A failed write
 * leaves the append offset where it was, so the next record overwrites
 * the debris.
 */
static int append_record(struct spool *sp, uint64_t id, int64_t queued,
			 const struct buf *env, const void *body,
			 size_t body_len, const struct spool_spill *tail,
			 struct spool_ref *ref)
{
	uint8_t h[REC_HDR_LEN];
	struct iovec iov[3];
	struct seg *s;
	uint64_t tlen = tail ? tail->len : 0;
	uint64_t total = REC_HDR_LEN + env->len + body_len + tlen;
	uint32_t crc;
	int r;

	r = active_for(sp, total, &s);
	if (r < 0)
		return r;
	rec_header(h, s->salt, id, queued, (uint32_t)env->len,
		   (uint32_t)(body_len + tlen));
	crc = spoolrec_crc_head(h);
	crc = crc32c(crc, env->p, env->len);
	crc = crc32c(crc, body, body_len);
	if (tail)
		crc = crc32c_combine(crc, tail->crc, tlen);
	put32(h + 12, crc);
	if (!tail && total <= WBUF_DIRECT) {
		if (!sp->wbuf.len)
			sp->woff = s->size;
		buf_reserve(&sp->wbuf, total);
		buf_put(&sp->wbuf, h, sizeof(h));
		buf_put(&sp->wbuf, env->p, env->len);
		buf_put(&sp->wbuf, body, body_len);
	} else {
		/* after what is buffered: a failure there leaves no debris */
		r = wbuf_flush(sp);
		if (r < 0)
			return r;
		iov[0] = (struct iovec){ .iov_base = h, .iov_len = sizeof(h) };
		iov[1] = (struct iovec){ .iov_base = env->p, .iov_len = env->len };
		iov[2] = (struct iovec){ .iov_base = (void *)body, .iov_len = body_len };
		r = pwrite_all(s->fd, iov, 3, s->size);
		if (r >= 0 && tlen)
			r = copy_tail(sp, tail, s->fd, s->size + total - tlen);
		if (r < 0) {
			/* Best effort: a shorter file reads back cleaner. */
			if (ftruncate(s->fd, (off_t)s->size) < 0) {
				/* the next append overwrites the debris anyway */
			}
			return fail(sp, r, "spool: write segment %016llx",
				    (unsigned long long)s->seq);
		}
	}
	ref->id = id;
	ref->seg = s->seq;
	ref->off = s->size;
	ref->len = (uint32_t)total;
	ref->body_off = REC_HDR_LEN + (uint32_t)env->len;
	ref->body_len = (uint32_t)(body_len + tlen);
	s->size += total;
	touch(sp, s);
	/* A failure stays buffered: the commit writes it again and reports it. */
	if (sp->wbuf.len >= WBUF_FLUSH)
		wbuf_flush(sp);
	return 0;
}

/* ---- open, close ------------------------------------------------------ */

/* mkdir_p - create a directory unless it exists; *made if created */
static int mkdir_p(const char *path, bool *made)
{
	if (mkdir(path, 0700) == 0) {
		*made = true;
		return 0;
	}
	return errno == EEXIST ? 0 : -errno;
}

/* fsync_dir - make a directory's entries durable */
static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

int spool_open(const char *dir, const struct spool_opts *opts,
	       struct spool **out, struct strbuf *err)
{
	struct spool *sp = xcalloc(1, sizeof(*sp));
	bool made = false;
	char *lockpath;
	int r;

	*out = NULL;
	sp->lockfd = sp->segdirfd = sp->jdirfd = sp->jfd = sp->rfd = -1;
	sp->idfd = sp->rc.fd = sp->rcache.fd = -1;
	if (opts)
		sp->opts = *opts;
	if (!sp->opts.segment_size)
		sp->opts.segment_size = 64ull << 20;
	if (!sp->opts.journal_size)
		sp->opts.journal_size = 16ull << 20;
	if (!sp->opts.move_after)
		sp->opts.move_after = 3600;
	if (!sp->opts.move_budget)
		sp->opts.move_budget = 1000;
	sp->dir = xstrdup(dir);
	sp->segdir = xasprintf("%s/seg", dir);
	sp->jdir = xasprintf("%s/journal", dir);
	sp->qdir = xasprintf("%s/quarantine", dir);
	sp->next_seg = sp->next_jseq = 1;

	r = mkdir_p(dir, &made);
	if (!r)
		r = mkdir_p(sp->segdir, &made);
	if (!r)
		r = mkdir_p(sp->jdir, &made);
	if (!r)
		r = mkdir_p(sp->qdir, &made);
	if (r < 0) {
		fail(sp, r, "spool: create %s", dir);
		goto fail;
	}
	/* New directories must survive a crash before any file in them. */
	if (made && (r = fsync_dir(dir)) < 0) {
		fail(sp, r, "spool: fsync %s", dir);
		goto fail;
	}
	lockpath = xasprintf("%s/lock", dir);
	sp->lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	free(lockpath);
	if (sp->lockfd < 0) {
		fail(sp, r = -errno, "spool: open %s/lock", dir);
		goto fail;
	}
	if (flock(sp->lockfd, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		fail(sp, r, "spool: %s is in use by another process", dir);
		goto fail;
	}
	sp->segdirfd = open(sp->segdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	sp->jdirfd = open(sp->jdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->segdirfd < 0 || sp->jdirfd < 0) {
		fail(sp, r = -errno, "spool: open %s", dir);
		goto fail;
	}
	lockpath = xasprintf("%s/ids", dir);
	sp->idfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	free(lockpath);
	if (sp->idfd < 0) {
		fail(sp, r = -errno, "spool: open %s/ids", dir);
		goto fail;
	}
	*out = sp;
	return 0;
fail:
	if (err)
		sb_adds(err, sb_str(&sp->err));
	spool_close(sp);
	return r;
}

void spool_close(struct spool *sp)
{
	if (!sp)
		return;
	for (size_t i = 0; i < sp->nsegs; i++) {
		if (sp->segs[i]->fd >= 0)
			close(sp->segs[i]->fd);
		free(sp->segs[i]);
	}
	free(sp->segs);
	for (size_t i = 0; i < sp->mcap; i++)
		if (sp->slot[i] && sp->slot[i]->nbits > 64)
			free(sp->slot[i]->ext);
	free(sp->slot);
	while (sp->chunks) {
		struct msg_chunk *c = sp->chunks;

		sp->chunks = c->next;
		free(c);
	}
	if (sp->jfd >= 0)
		close(sp->jfd);
	if (sp->rfd >= 0)
		close(sp->rfd);
	rc_free(sp);
	if (sp->segdirfd >= 0)
		close(sp->segdirfd);
	if (sp->jdirfd >= 0)
		close(sp->jdirfd);
	if (sp->idfd >= 0)
		close(sp->idfd);
	if (sp->rc.fd >= 0)
		close(sp->rc.fd);
	free(sp->rc.jseqs);
	free(sp->rc.ids);
	if (sp->lockfd >= 0)
		close(sp->lockfd);	/* releases the flock */
	free(sp->jfiles);
	free(sp->touched);
	free(sp->flight);
	free(sp->syncs);
	free(sp->moved);
	buf_free(&sp->jbuf);
	buf_free(&sp->wbuf);
	buf_free(&sp->rec);
	buf_free(&sp->io);
	buf_free(&sp->enc);
	dec_free(&sp->dec);
	sb_free(&sp->err);
	free(sp->dir);
	free(sp->segdir);
	free(sp->jdir);
	free(sp->qdir);
	free(sp);
}

const char *spool_error(const struct spool *sp)
{
	return sb_str(&sp->err);
}

/* ---- recovery --------------------------------------------------------- */

/* list_dir - sequence numbers of "<16 hex><suffix>" names, ascending. */
static int list_dir(const char *path, const char *suffix, uint64_t **out,
		    size_t *n)
{
	size_t cap = 0, slen = strlen(suffix);
	struct dirent *de;
	DIR *d = opendir(path);

	*out = NULL;
	*n = 0;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		const char *name = de->d_name;
		uint64_t seq = 0;
		size_t i;

		if (strlen(name) != 16 + slen || strcmp(name + 16, suffix))
			continue;
		for (i = 0; i < 16; i++) {
			char c = name[i];

			if (c >= '0' && c <= '9')
				seq = seq << 4 | (uint64_t)(c - '0');
			else if (c >= 'a' && c <= 'f')
				seq = seq << 4 | (uint64_t)(c - 'a' + 10);
			else
				break;
		}
		if (i < 16 || !seq)
			continue;
		GROW(*out, cap, *n + 1);
		(*out)[(*n)++] = seq;
	}
	closedir(d);
	for (size_t i = 1; i < *n; i++)	/* few files: insertion sort */
		for (size_t j = i; j && (*out)[j - 1] > (*out)[j]; j--) {
			uint64_t t = (*out)[j];

			(*out)[j] = (*out)[j - 1];
			(*out)[j - 1] = t;
		}
	return 0;
}

/* report_bad - count a corrupt region, keep the first few */
static void report_bad(struct spool_stats *st, uint64_t seq, uint64_t off,
		       uint64_t len, bool journal, bool whole)
{
	st->quarantined++;
	if (st->nbad < SPOOL_REPORT_MAX)
		st->bad[st->nbad++] = (struct spool_bad){
			.seq = seq, .off = off, .len = len,
			.journal = journal, .whole_file = whole,
		};
}

/*
 * quarantine_copy - copy a corrupt region to DIR/quarantine for a human.
 * Best effort: failing to keep evidence must not stop recovery, and the
 * region stays in its file, unused, until the file is reclaimed.
 */
static void quarantine_copy(struct spool *sp, int fd, const char *kind,
			    uint64_t seq, uint64_t off, uint64_t len)
{
	char *path = xasprintf("%s/%s-%016llx-%016llx.bad", sp->qdir, kind,
			       (unsigned long long)seq,
			       (unsigned long long)off);
	int out = sp->opts.delete_corrupted ? -1 :
		  open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	uint8_t *chunk;

	free(path);
	if (out < 0)
		return;	/* EEXIST: set aside by an earlier recovery */
	/* Its own buffer: the journal scan is iterating over sp->io. */
	chunk = xmalloc(IO_CHUNK);
	for (uint64_t done = 0; done < len;) {
		size_t n = len - done < IO_CHUNK ? (size_t)(len - done) : IO_CHUNK;

		if (pread_all(fd, chunk, n, off + done) < 0 ||
		    pwrite_buf(out, chunk, n, done) < 0)
			break;
		done += n;
	}
	free(chunk);
	close(out);
}

/* pool_or_unlink - a file that holds nothing: pooled as <seq>, or gone */
static void pool_or_unlink(struct spool *sp, const char *path, uint64_t seq)
{
	char *to = pool_path(sp, seq);

	if (sp->npool < SEG_POOL_MAX && rename(path, to) == 0)
		sp->pool[sp->npool++] = seq;
	else
		unlink(path);
	free(to);
}

/* quarantine_file - move a file whose header is unreadable aside. */
static void quarantine_file(struct spool *sp, const char *path,
			    const char *kind, uint64_t seq)
{
	char *to = xasprintf("%s/%s-%016llx-%lld.bad", sp->qdir, kind,
			     (unsigned long long)seq, (long long)now_sec());

	if (sp->opts.delete_corrupted || rename(path, to) < 0)
		unlink(path);
	free(to);
}

/*
 * rec_at - is there a valid record of segment <s> at <off>?  1 yes (header
 * in *ri, envelope in sp->rec), 0 no, -errno on a read error.
 */
static int rec_at(struct spool *sp, int fd, uint64_t salt, uint64_t off,
		  uint64_t fsize, struct spoolrec_hdr *ri)
{
	uint8_t h[REC_HDR_LEN];
	uint32_t crc;
	int r;

	if (fsize - off < REC_HDR_LEN)
		return 0;
	r = rc_read(sp, fd, sp->rc.seq, h, sizeof(h), off);
	if (r < 0)
		return r == -ENODATA ? 0 : r;
	if (spoolrec_parse(h, ri) < 0 || ri->salt != salt ||
	    ri->total > fsize - off)
		return 0;
	sp->rec.len = 0;
	buf_reserve(&sp->rec, ri->env_len);
	r = rc_read(sp, fd, sp->rc.seq, sp->rec.p, ri->env_len, off + REC_HDR_LEN);
	if (r < 0)
		return r == -ENODATA ? 0 : r;
	sp->rec.len = ri->env_len;
	crc = crc32c(spoolrec_crc_head(h), sp->rec.p, ri->env_len);
	if (ri->body_len <= RCACHE_LEN / 2) {
		buf_reserve(&sp->io, ri->body_len);
		r = rc_read(sp, fd, sp->rc.seq, sp->io.p, ri->body_len,
			    off + REC_HDR_LEN + ri->env_len);
		if (r < 0)
			return r == -ENODATA ? 0 : r;
		/* read here anyway: the hand-off need not read it again */
		sp->rc.last_8bit = mem_has_8bit(sp->io.p, ri->body_len);
		return crc32c(crc, sp->io.p, ri->body_len) == ri->crc;
	}
	sp->rc.last_8bit = false;
	buf_reserve(&sp->io, IO_CHUNK);
	for (uint64_t done = 0; done < ri->body_len;) {
		size_t n = ri->body_len - done < IO_CHUNK ?
			   (size_t)(ri->body_len - done) : IO_CHUNK;

		r = pread_all(fd, sp->io.p, n,
			      off + REC_HDR_LEN + ri->env_len + done);
		if (r < 0)
			return r == -ENODATA ? 0 : r;
		crc = crc32c(crc, sp->io.p, n);
		sp->rc.last_8bit |= mem_has_8bit(sp->io.p, n);
		done += n;
	}
	return crc == ri->crc;
}

/*
 * resync - after a bad record at <from> - 1, the offset of the next valid
 * record, or <fsize> if there is none (a torn tail).  A candidate must
 * carry the segment's salt before it costs a read: a body full of magics
 * must not make recovery slow.
 */
static int resync(struct spool *sp, int fd, uint64_t salt, uint64_t from,
		  uint64_t fsize, uint64_t *next)
{
	uint8_t *chunk = xmalloc(IO_CHUNK), magic[4];
	struct spoolrec_hdr ri;
	int r = 0;

	put32(magic, MAGIC_REC);
	*next = fsize;
	for (uint64_t pos = from; pos + REC_HDR_LEN <= fsize;) {
		size_t n = fsize - pos < IO_CHUNK ? (size_t)(fsize - pos) :
			   IO_CHUNK;
		uint8_t *p, *end = chunk + n;

		r = pread_all(fd, chunk, n, pos);
		if (r < 0) {
			if (r == -ENODATA)
				r = 0;
			break;
		}
		for (p = chunk; (p = memmem(p, (size_t)(end - p), magic, 4));
		     p++) {
			if (end - p >= 24 && get64(p + 16) != salt)
				continue;
			r = rec_at(sp, fd, salt, pos + (uint64_t)(p - chunk),
				   fsize, &ri);
			if (r < 0)
				goto out;
			if (r == 1) {
				*next = pos + (uint64_t)(p - chunk);
				r = 0;
				goto out;
			}
		}
		/* Overlap so a header cut by the chunk end is seen whole. */
		pos += n > REC_HDR_LEN ? n - REC_HDR_LEN : n;
	}
out:
	free(chunk);
	return r;
}

/* recover_msg - a valid record: it becomes the message's current copy. */
static void recover_msg(struct spool *sp, struct seg *s, uint64_t off,
			const struct spoolrec_hdr *ri, const struct spool_envelope *env)
{
	struct msg *m = msg_find(sp, ri->id);
	uint32_t nbits = 0;

	/* A later copy of an id supersedes an earlier one (a move). */
	if (m)
		msg_drop(sp, m);
	for (size_t i = 0; i < env->nrcpt; i++)
		if (env->rcpt[i].index >= nbits)
			nbits = env->rcpt[i].index + 1;
	m = msg_alloc(sp, nbits);
	m->body_8bit = sp->rc.last_8bit;
	m->id = ri->id;
	m->off = off;
	m->len = ri->total;
	m->env_len = ri->env_len;
	for (size_t i = 0; i < env->nrcpt; i++)
		msg_words(m)[env->rcpt[i].index / 64] |=
			1ull << (env->rcpt[i].index % 64);
	m->live = (uint32_t)env->nrcpt;
	seg_link(s, m);
	msg_insert(sp, m);
	if (ri->id >= sp->next_id)
		sp->next_id = ri->id + 1;
}

/*
 * open_scanned - open a segment (MAGIC_SEG) or journal (MAGIC_JNL) for
 * recovery and check its header.  1: scan it (*fd, *fsize, *salt and
 * *created set); 0: nothing to scan (shorter than a header: a crash
 * before its first sync, removed; a bad header: quarantined); <0: error.
 * *fd, when not -1, is the caller's to close.
 */
static int open_scanned(struct spool *sp, const char *path, uint32_t magic, uint64_t seq,
			struct spool_stats *st, int *fd, uint64_t *fsize, uint64_t *salt,
			int64_t *created)
{
	const bool journal = magic == MAGIC_JNL;
	uint8_t h[FILE_HDR_LEN];
	struct stat sb;
	int r;

	*fd = open(path, O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return fail(sp, -errno, "spool: open %s", path);
	if (fstat(*fd, &sb) < 0)
		return fail(sp, -errno, "spool: stat %s", path);
	*fsize = (uint64_t)sb.st_size;
	if (*fsize < FILE_HDR_LEN) {
		st->truncated++;
		st->truncated_bytes += *fsize;
		unlink(path);
		return 0;
	}
	r = pread_all(*fd, h, sizeof(h), 0);
	if (r < 0) {
		fail(sp, r, "spool: read %s", path);
		return r;
	}
	if (file_header_check(h, magic, seq, salt, created) < 0) {
		if (!journal && earlier_life(h, seq)) {
			pool_or_unlink(sp, path, get64(h + 8));
			return 0;
		}
		report_bad(st, seq, 0, *fsize, journal, true);
		quarantine_file(sp, path, journal ? "jnl" : "seg", seq);
		return 0;
	}
	sp->rc.recycled = !journal && (h[32] & SEG_F_RECYCLED);
	return 1;
}

/* out_of_time - has this step used its budget?  NULL: no deadline */
static bool out_of_time(const struct timespec *deadline)
{
	struct timespec now;

	if (!deadline)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > deadline->tv_sec ||
	       (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* scan_close - done with the file being scanned */
static void scan_close(struct spool *sp)
{
	struct recovery *rc = &sp->rc;

	if (rc->fd >= 0)
		close(rc->fd);
	rc->fd = -1;
	rc->seg = NULL;
	rc_drop(sp);	/* its number may name another file next */
}

/*
 * seg_scan_open - start on listed segment <s>: 1 records to read, 0
 * nothing to scan (removed or set aside), -errno.
 */
static int seg_scan_open(struct spool *sp, struct seg *s)
{
	struct recovery *rc = &sp->rc;
	char *path = seg_path(sp, s->seq);
	int64_t created;
	int r;

	rc->st->segments++;
	r = open_scanned(sp, path, MAGIC_SEG, s->seq, rc->st, &rc->fd, &rc->fsize,
			 &rc->salt, &created);
	free(path);
	if (r <= 0) {
		scan_close(sp);
		s->pending = false;	/* no file: reclamation forgets it */
		return r;
	}
	s->salt = rc->salt;
	s->created = created;
	rc->seg = s;
	rc->seq = s->seq;
	rc->off = FILE_HDR_LEN;
	return 1;
}

/*
 * seg_scan_some - verify the open segment's records until its end or the
 * deadline: load its messages, cut its torn tail, quarantine its corrupt
 * records.  1: more to do, 0: the segment is done, -errno only for I/O
 * errors.
 */
static int seg_scan_some(struct spool *sp, const struct timespec *deadline)
{
	struct recovery *rc = &sp->rc;
	struct spool_stats *st = rc->st;
	int r;

	while (rc->off < rc->fsize) {
		struct spoolrec_hdr ri;
		uint64_t next;

		if (out_of_time(deadline))
			return 1;
		r = rec_at(sp, rc->fd, rc->salt, rc->off, rc->fsize, &ri);
		if (r < 0)
			return fail(sp, r, "spool: read segment %016llx",
				    (unsigned long long)rc->seq);
		if (r == 1) {
			if (env_decode(&sp->dec, sp->rec.p, ri.env_len) < 0) {
				/* Intact but unreadable: a format we lack. */
				quarantine_copy(sp, rc->fd, "seg", rc->seq, rc->off, ri.total);
				report_bad(st, rc->seq, rc->off, ri.total, false, false);
			} else {
				recover_msg(sp, rc->seg, rc->off, &ri, &sp->dec.env);
				st->records++;
			}
			rc->off += ri.total;
			continue;
		}
		r = resync(sp, rc->fd, rc->salt, rc->off + 1, rc->fsize, &next);
		if (r < 0)
			return fail(sp, r, "spool: read segment %016llx",
				    (unsigned long long)rc->seq);
		if (next == rc->fsize) {
			/*
			 * Nothing valid follows: a crash mid-append, never
			 * acknowledged, or in a recycled file its earlier
			 * life.  Cut it so it is not met again.
			 */
			if (rc->recycled) {
				st->recycled_tails++;
			} else {
				st->truncated++;
				st->truncated_bytes += rc->fsize - rc->off;
			}
			if (ftruncate(rc->fd, (off_t)rc->off) == 0)
				fdatasync(rc->fd);
			rc->fsize = rc->off;
			break;
		}
		quarantine_copy(sp, rc->fd, "seg", rc->seq, rc->off, next - rc->off);
		report_bad(st, rc->seq, rc->off, next - rc->off, false, false);
		rc->off = next;
	}
	rc->seg->size = rc->fsize;
	rc->seg->pending = false;
	scan_close(sp);
	return 0;
}

/* apply_jrec - one valid journal record of journal file <jseq>. */
static void apply_jrec(struct spool *sp, uint64_t jseq, const uint8_t *p)
{
	uint8_t kind = p[4];
	uint32_t index = get32(p + 8);
	uint64_t id = get64(p + 16), segseq = get64(p + 24);
	struct seg *s = seg_find(sp, segseq);
	struct msg *m = msg_find(sp, id);

	if (s && s->jmin > jseq)
		s->jmin = jseq;
	if (id >= sp->next_id)
		sp->next_id = id + 1;
	if (!m)
		return;
	if (kind == JK_MOVED) {
		/* Only the copy in that segment is dead; a newer one lives. */
		if (m->seg->seq == segseq)
			msg_drop(sp, m);
		return;
	}
	if (msg_bit(m, index)) {
		msg_clear(m, index);
		if (!m->live)
			msg_drop(sp, m);
	}
}

/* jrec_valid - does this journal record check out? */
static bool jrec_valid(uint64_t jsalt, const uint8_t *p)
{
	if (get32(p) != spool_jrec_crc(jsalt, p))
		return false;
	if (p[4] == JK_OUTCOME)
		return p[5] >= SPOOL_DELIVERED && p[5] <= SPOOL_DELETED;
	return p[4] == JK_MOVED;
}

/* jnl_scan_open - start on listed journal <seq>: 1, 0 (nothing to scan;
 * its outcomes are lost: those recipients go out again), -errno */
static int jnl_scan_open(struct spool *sp, uint64_t seq)
{
	struct recovery *rc = &sp->rc;
	char *path = jnl_path(sp, seq);
	int64_t created;
	int r;

	rc->st->journals++;
	r = open_scanned(sp, path, MAGIC_JNL, seq, rc->st, &rc->fd, &rc->fsize,
			 &rc->salt, &created);
	free(path);
	if (r <= 0) {
		scan_close(sp);
		return r;
	}
	GROW(sp->jfiles, sp->capjfiles, sp->njfiles + 1);
	sp->jfiles[sp->njfiles++] = seq;
	rc->seq = seq;
	rc->nrec = (rc->fsize - FILE_HDR_LEN) / JREC_LEN;
	rc->off = 0;		/* in records */
	rc->bad = UINT64_MAX;
	return 1;
}

/*
 * jnl_scan_some - verify the open journal and apply its outcomes until its
 * end or the deadline; a bad run of records followed by a good one is
 * quarantined, a bad tail cut.  1: more, 0: done, -errno.
 */
static int jnl_scan_some(struct spool *sp, const struct timespec *deadline)
{
	struct recovery *rc = &sp->rc;
	struct spool_stats *st = rc->st;
	int r;

	buf_reserve(&sp->io, IO_CHUNK);
	while (rc->off < rc->nrec) {
		uint64_t i = rc->off, n = rc->nrec - i < IO_CHUNK / JREC_LEN ?
					  rc->nrec - i : IO_CHUNK / JREC_LEN;

		if (out_of_time(deadline))
			return 1;
		r = pread_all(rc->fd, sp->io.p, n * JREC_LEN,
			      FILE_HDR_LEN + i * JREC_LEN);
		if (r < 0)
			return fail(sp, r, "spool: read journal %016llx",
				    (unsigned long long)rc->seq);
		for (uint64_t k = 0; k < n; k++, i++) {
			const uint8_t *p = sp->io.p + k * JREC_LEN;

			if (!jrec_valid(rc->salt, p)) {
				if (rc->bad == UINT64_MAX)
					rc->bad = i;
				continue;
			}
			if (rc->bad != UINT64_MAX) {
				/* Lost outcomes mean redelivery, not loss. */
				quarantine_copy(sp, rc->fd, "jnl", rc->seq,
						FILE_HDR_LEN + rc->bad * JREC_LEN,
						(i - rc->bad) * JREC_LEN);
				report_bad(st, rc->seq, FILE_HDR_LEN + rc->bad * JREC_LEN,
					   (i - rc->bad) * JREC_LEN, true, false);
				rc->bad = UINT64_MAX;
			}
			apply_jrec(sp, rc->seq, p);
			st->outcomes++;
		}
		rc->off = i;
	}
	if (rc->bad == UINT64_MAX)
		rc->bad = rc->nrec;
	if (FILE_HDR_LEN + rc->bad * JREC_LEN < rc->fsize) {
		uint64_t end = FILE_HDR_LEN + rc->bad * JREC_LEN;

		st->truncated++;
		st->truncated_bytes += rc->fsize - end;
		if (ftruncate(rc->fd, (off_t)end) == 0)
			fdatasync(rc->fd);
	}
	scan_close(sp);
	return 0;
}

/* read_env - read and decode the envelope of <m> into sp->dec. */
static int read_env(struct spool *sp, const struct msg *m,
		    struct spoolrec_hdr *ri)
{
	int fd = seg_read_fd(sp, m->seg), r;
	size_t n = REC_HDR_LEN + m->env_len;

	if (fd < 0)
		return fd;
	sp->rec.len = 0;
	buf_reserve(&sp->rec, n);
	r = rc_read(sp, fd, m->seg->seq, sp->rec.p, n, m->off);
	if (r < 0)
		return fail(sp, r == -ENODATA ? -EIO : r,
			    "spool: read segment %016llx",
			    (unsigned long long)m->seg->seq);
	if (spoolrec_parse(sp->rec.p, ri) < 0 || ri->id != m->id ||
	    env_decode(&sp->dec, sp->rec.p + REC_HDR_LEN, m->env_len) < 0)
		return fail(sp, -EIO, "spool: segment %016llx changed under us",
			    (unsigned long long)m->seg->seq);
	return 0;
}

/* live_only - keep in sp->dec.env only the unfinished recipients of <m>. */
static void live_only(struct spool *sp, const struct msg *m)
{
	struct spool_envelope *env = &sp->dec.env;
	size_t k = 0;

	for (size_t i = 0; i < env->nrcpt; i++)
		if (msg_bit(m, env->rcpt[i].index))
			sp->dec.rcpt[k++] = env->rcpt[i];
	env->nrcpt = k;
}

/*
 * The id reservation, DIR/ids: 16 bytes, u32 "CMTI", u32 crc32c of the
 * rest, u64 limit.  Every id ever issued is below the limit on disk, so a
 * recovery that takes new mail before it has read the old files can give
 * it ids no old record or outcome carries.  A reservation covers ID_BLOCK
 * ids: one small fdatasync per four billion messages.  A missing or torn
 * file means no promise: recovery then reads every file first.
 */
#define MAGIC_IDS	0x49544d43u	/* "CMTI" */
#define ID_BLOCK	(1ull << 32)

/* ids_read - the limit a previous run reserved, or 0 */
static uint64_t ids_read(struct spool *sp)
{
	uint8_t b[16];

	if (pread_all(sp->idfd, b, sizeof(b), 0) < 0 || get32(b) != MAGIC_IDS ||
	    get32(b + 4) != crc32c(0, b + 8, 8))
		return 0;
	return get64(b + 8);
}

/* ids_reserve - make "every id issued is below <limit>" durable */
static int ids_reserve(struct spool *sp, uint64_t limit)
{
	uint8_t b[16];
	int r;

	put32(b, MAGIC_IDS);
	put64(b + 8, limit);
	put32(b + 4, crc32c(0, b + 8, 8));
	r = pwrite_buf(sp->idfd, b, sizeof(b), 0);
	if (!r && fdatasync(sp->idfd) < 0)
		r = -errno;
	if (r < 0)
		return fail(sp, r, "spool: write %s/ids", sp->dir);
	sp->id_limit = limit;
	return 0;
}

/* collect_ids - the recovered messages, by id, so that the hand-over may
 * journal or append as it likes; new mail lives in newer segments */
static void collect_ids(struct spool *sp)
{
	struct recovery *rc = &sp->rc;
	size_t n = 0;

	for (size_t i = 0; i < rc->nold; i++)
		for (struct msg *m = sp->segs[i]->head; m; m = m->next)
			n++;
	rc->ids = xmalloc((n ? n : 1) * sizeof(*rc->ids));
	rc->nids = rc->hand = 0;
	for (size_t i = 0; i < rc->nold; i++)
		for (struct msg *m = sp->segs[i]->head; m; m = m->next)
			rc->ids[rc->nids++] = m->id;
}

/*
 * scan_files - the listed segments, oldest first (a later copy of an id
 * supersedes an earlier one), then the listed journals, until the
 * deadline.  1: more to do, 0: all scanned, -errno.
 */
static int scan_files(struct spool *sp, const struct timespec *deadline)
{
	struct recovery *rc = &sp->rc;
	int r;

	while (rc->phase == R_SEGS) {
		if (rc->fd < 0) {
			if (rc->next == rc->nold) {
				rc->phase = R_JNLS;
				break;
			}
			if (out_of_time(deadline))
				return 1;
			r = seg_scan_open(sp, sp->segs[rc->next++]);
			if (r <= 0) {
				if (r < 0)
					return r;
				continue;
			}
		}
		r = seg_scan_some(sp, deadline);
		if (r)
			return r;
	}
	while (rc->phase == R_JNLS) {
		if (rc->fd < 0) {
			if (rc->jnext == rc->njseqs) {
				collect_ids(sp);
				rc->phase = R_HANDOFF;
				break;
			}
			if (out_of_time(deadline))
				return 1;
			r = jnl_scan_open(sp, rc->jseqs[rc->jnext++]);
			if (r <= 0) {
				if (r < 0)
					return r;
				continue;
			}
		}
		r = jnl_scan_some(sp, deadline);
		if (r)
			return r;
	}
	return 0;
}

/*
 * hand_some - each recovered message with its unfinished recipients to
 * <fn>, until the deadline.  0: all handed over; 1: the deadline; else
 * what <fn> returned (positive: not taken, offered again next time).
 */
static int hand_some(struct spool *sp, spool_recover_fn *fn, void *ctx,
		     const struct timespec *deadline)
{
	struct recovery *rc = &sp->rc;
	int r;

	while (rc->hand < rc->nids) {
		struct msg *m = msg_find(sp, rc->ids[rc->hand]);
		struct spool_ref ref;
		struct spoolrec_hdr ri;
		uint32_t live;

		if (!m) {
			rc->hand++;
			continue;
		}
		if (out_of_time(deadline))
			return 1;
		r = read_env(sp, m, &ri);
		if (r < 0)
			return r;
		live_only(sp, m);
		sp->dec.env.queued = ri.queued;
		sp->dec.env.has_8bit = m->body_8bit;
		live = m->live;	/* <fn> may finish it */
		msg_ref(m, &ref);
		if (fn && (r = fn(ctx, &sp->dec.env, &ref)) != 0)
			return r;
		rc->st->messages++;
		rc->st->recipients += live;
		rc->hand++;
	}
	free(rc->ids);
	rc->ids = NULL;
	rc->phase = R_DONE;
	rc_free(sp);
	return 0;
}

int spool_recover_begin(struct spool *sp, struct spool_stats *st)
{
	struct recovery *rc = &sp->rc;
	uint64_t *seqs = NULL, mark, id_floor;
	struct timespec ts;
	size_t n = 0;
	int r;

	BUG_ON(sp->recovered);
	memset(st, 0, sizeof(*st));
	rc->st = st;
	rc->fd = -1;
	sp->next_id = 1;

	/* Listed now: whatever the new mail creates comes after these. */
	r = list_dir(sp->segdir, ".seg", &seqs, &n);
	if (r < 0)
		return fail(sp, r, "spool: read %s", sp->segdir);
	for (size_t i = 0; i < n; i++)
		seg_add(sp, seqs[i], 0, 0)->pending = true;
	if (n)
		sp->next_seg = seqs[n - 1] + 1;
	rc->nold = n;
	free(seqs);
	/* Pooled files hold nothing: kept for reuse, the newest first. */
	r = list_dir(sp->segdir, ".free", &seqs, &n);
	if (r < 0)
		return fail(sp, r, "spool: read %s", sp->segdir);
	for (size_t i = n; i-- > 0;) {
		char *path = pool_path(sp, seqs[i]);

		if (sp->npool < SEG_POOL_MAX)
			sp->pool[sp->npool++] = seqs[i];
		else
			unlink(path);
		free(path);
	}
	free(seqs);
	r = list_dir(sp->jdir, ".jnl", &rc->jseqs, &rc->njseqs);
	if (r < 0)
		return fail(sp, r, "spool: read %s", sp->jdir);
	if (rc->njseqs)
		sp->next_jseq = rc->jseqs[rc->njseqs - 1] + 1;
	rc->phase = R_SEGS;
	sp->recovered = true;

	mark = ids_read(sp);
	if (!mark && (rc->nold || rc->njseqs)) {
		/* No promise about the ids in the files: they decide. */
		r = scan_files(sp, NULL);
		if (r < 0)
			return r;
	}
	/*
	 * Ids stay unique across restarts even when every file that held
	 * the highest one is gone: start no lower than the clock in
	 * microseconds, nor than the reservation.
	 */
	clock_gettime(CLOCK_REALTIME, &ts);
	id_floor = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000;
	if (sp->next_id < id_floor)
		sp->next_id = id_floor;
	if (sp->next_id < mark)
		sp->next_id = mark;
	if (ids_reserve(sp, sp->next_id + ID_BLOCK) < 0) {
		/*
		 * The old promise may be broken from now on: read every
		 * file before anything new, and reserve at the first append.
		 */
		sp->id_limit = 0;
		r = scan_files(sp, NULL);
		if (r < 0)
			return r;
	}
	return 0;
}

int spool_recover_step(struct spool *sp, spool_recover_fn *fn, void *ctx,
		       uint32_t budget_us)
{
	struct recovery *rc = &sp->rc;
	struct timespec dl;
	int r;

	BUG_ON(!sp->recovered);
	if (rc->phase == R_DONE)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_nsec += (long)(budget_us % 1000000u) * 1000;
	dl.tv_sec += budget_us / 1000000u + dl.tv_nsec / 1000000000;
	dl.tv_nsec %= 1000000000;
	r = scan_files(sp, &dl);
	if (r)
		return r;
	r = hand_some(sp, fn, ctx, &dl);
	return r > 0 ? 1 : r;
}

bool spool_recovering(const struct spool *sp)
{
	return sp->recovered && sp->rc.phase != R_DONE;
}

int spool_recover(struct spool *sp, spool_recover_fn *fn, void *ctx,
		  struct spool_stats *st)
{
	int r = spool_recover_begin(sp, st);

	if (!r)
		r = scan_files(sp, NULL);
	if (!r)
		r = hand_some(sp, fn, ctx, NULL);
	return r;
}

/* ---- append, journal, commit ------------------------------------------ */

int spool_append(struct spool *sp, const struct spool_envelope *env,
		 const void *body, size_t body_len, struct spool_ref *ref)
{
	return spool_append_spilled(sp, env, body, body_len, NULL, ref);
}

int spool_append_spilled(struct spool *sp, const struct spool_envelope *env,
			 const void *body, size_t body_len,
			 const struct spool_spill *tail, struct spool_ref *ref)
{
	struct msg *m;
	int r;

	BUG_ON(!sp->recovered);
	if (sp->broken)
		return fail(sp, sp->broken, "spool: unusable after a failed sync");
	if (body_len > SPOOL_MAX_BODY ||
	    spool_spill_len(tail) > SPOOL_MAX_BODY - body_len)
		return fail(sp, -EMSGSIZE, "spool: message body too large");
	r = env_encode(&sp->enc, env, false);
	if (r < 0)
		return fail(sp, r, "spool: envelope not storable");
	/* never an id a reservation on disk does not cover */
	if (sp->next_id >= sp->id_limit &&
	    (r = ids_reserve(sp, sp->next_id + ID_BLOCK)) < 0)
		return r;
	r = append_record(sp, sp->next_id, env->queued ? env->queued : now_sec(),
			  &sp->enc, body, body_len, tail && tail->len ? tail : NULL,
			  ref);
	if (r < 0)
		return r;
	sp->next_id++;
	m = msg_alloc(sp, (uint32_t)env->nrcpt);
	m->id = ref->id;
	m->off = ref->off;
	m->len = ref->len;
	m->env_len = (uint32_t)sp->enc.len;
	for (uint32_t i = 0; i < env->nrcpt; i++)
		msg_words(m)[i / 64] |= 1ull << (i % 64);
	m->live = (uint32_t)env->nrcpt;
	seg_link(sp->active, m);
	msg_insert(sp, m);
	return 0;
}

/* journal_open - start a new journal file (the old one is synced). */
static int journal_open(struct spool *sp)
{
	char *path = jnl_path(sp, sp->next_jseq);
	int fd = create_file(sp, path, MAGIC_JNL, sp->next_jseq, &sp->jsalt,
			     now_sec());

	free(path);
	if (fd < 0)
		return fd;
	if (sp->jfd >= 0)
		close(sp->jfd);
	sp->jfd = fd;
	sp->jseq = sp->next_jseq++;
	sp->jsize = FILE_HDR_LEN;
	sp->jalloc = FILE_HDR_LEN;
	sp->jdir_dirty = true;
	GROW(sp->jfiles, sp->capjfiles, sp->njfiles + 1);
	sp->jfiles[sp->njfiles++] = sp->jseq;
	return 0;
}

/*
 * journal_claim - keep JOURNAL_AHEAD bytes allocated past the journal's
 * end while the disk has room, so that outcomes can still be written when
 * it has none.  Best effort: a file system without fallocate just writes.
 */
static void journal_claim(struct spool *sp, size_t need)
{
	if (sp->jfd < 0 || sp->jalloc >= sp->jsize + need + JOURNAL_AHEAD / 2)
		return;
	if (fallocate(sp->jfd, FALLOC_FL_KEEP_SIZE, (off_t)sp->jsize,
		      (off_t)(need + JOURNAL_AHEAD)) == 0)
		sp->jalloc = sp->jsize + need + JOURNAL_AHEAD;
}

/*
 * journal_write - write the buffered outcome records (no sync).  The file
 * rolls only when all it holds is synced and nothing is in flight, since
 * rolling closes its fd; when the disk is too full for a new file, the
 * old one goes on (its claimed space first).  The records carry a CRC
 * seeded with the file's salt, so they are sealed here, once the file is
 * known.
 */
static int journal_write(struct spool *sp)
{
	int r;

	if (!sp->jbuf.len)
		return 0;
	if (sp->jfd < 0 || (sp->jsize >= sp->opts.journal_size &&
			    !sp->jdirty && !sp->inflight)) {
		r = journal_open(sp);
		if (r < 0 && sp->jfd < 0)
			return r;
	}
	journal_claim(sp, sp->jbuf.len);
	for (size_t off = 0; off < sp->jbuf.len; off += JREC_LEN)
		put32(sp->jbuf.p + off, spool_jrec_crc(sp->jsalt, sp->jbuf.p + off));
	r = pwrite_buf(sp->jfd, sp->jbuf.p, sp->jbuf.len, sp->jsize);
	if (r < 0) {
		if (ftruncate(sp->jfd, (off_t)sp->jsize) < 0) {
			/* the next write overwrites the debris anyway */
		}
		return fail(sp, r, "spool: write journal %016llx",
			    (unsigned long long)sp->jseq);
	}
	sp->jsize += sp->jbuf.len;
	sp->jbuf.len = 0;
	sp->jdirty = true;
	journal_claim(sp, 0);
	return 0;
}

/* journal_add - buffer one journal record about a copy in <s> */
static void journal_add(struct spool *sp, uint8_t kind, uint8_t outcome,
			uint32_t index, uint64_t id, struct seg *s)
{
	uint8_t rec[JREC_LEN] = { 0 };
	/* The file these records will land in, or an earlier one. */
	uint64_t target = sp->jfd >= 0 ? sp->jseq : sp->next_jseq;

	rec[4] = kind;
	rec[5] = outcome;
	put32(rec + 8, index);
	put64(rec + 16, id);
	put64(rec + 24, s->seq);
	buf_put(&sp->jbuf, rec, sizeof(rec));
	if (s->jmin > target)
		s->jmin = target;
}

int spool_journal(struct spool *sp, uint64_t id, uint32_t rcpt,
		  enum spool_outcome outcome)
{
	struct msg *m;

	BUG_ON(!sp->recovered);
	if (outcome < SPOOL_DELIVERED || outcome > SPOOL_DELETED)
		return fail(sp, -EINVAL, "spool: bad outcome %d", (int)outcome);
	m = msg_find(sp, id);
	if (!m)
		return fail(sp, -ENOENT, "spool: no message %llu",
			    (unsigned long long)id);
	if (!msg_bit(m, rcpt))
		return fail(sp, -EALREADY, "spool: message %llu recipient %u "
			    "already finished", (unsigned long long)id, rcpt);
	journal_add(sp, JK_OUTCOME, (uint8_t)outcome, rcpt, id, m->seg);
	msg_clear(m, rcpt);
	if (!m->live)
		msg_drop(sp, m);
	/*
	 * Bound the buffer between commits.  A failed write keeps the
	 * records buffered; the next commit retries and reports it.
	 */
	if (sp->jbuf.len >= JBUF_FLUSH && !sp->broken)
		journal_write(sp);
	return 0;
}

/* add_sync - one more fd for the commit being begun */
static void add_sync(struct spool *sp, size_t *n, int fd, bool datasync)
{
	GROW(sp->syncs, sp->capsyncs, *n + 1);
	sp->syncs[(*n)++] = (struct spool_sync){ .fd = fd, .datasync = datasync };
}

int spool_journal_flush(struct spool *sp)
{
	BUG_ON(!sp->recovered);
	if (sp->broken)
		return fail(sp, sp->broken, "spool: unusable after a failed sync");
	return journal_write(sp);
}

bool spool_journal_unsynced(const struct spool *sp)
{
	return sp->jdirty || sp->jdir_dirty || sp->jbuf.len;
}

int spool_commit_begin(struct spool *sp, bool sync_journal,
		       const struct spool_sync **fds)
{
	size_t n = 0;
	int r;

	BUG_ON(!sp->recovered);
	BUG_ON(sp->inflight);
	*fds = NULL;
	if (sp->broken)
		return fail(sp, sp->broken, "spool: unusable after a failed sync");
	r = wbuf_flush(sp);
	if (r < 0)
		return r;
	r = journal_write(sp);
	if (r < 0)
		return r;
	sp->nflight = 0;
	for (size_t i = 0; i < sp->ntouched; i++) {
		struct seg *s = sp->touched[i];

		add_sync(sp, &n, s->fd, true);
		s->touched = false;
		s->inflight = true;
		GROW(sp->flight, sp->capflight, sp->nflight + 1);
		sp->flight[sp->nflight++] = s;
	}
	sp->ntouched = 0;
	if (sp->segdir_dirty)
		add_sync(sp, &n, sp->segdirfd, false);
	sp->segdir_dirty = false;
	if (sync_journal) {
		if (sp->jdirty)
			add_sync(sp, &n, sp->jfd, true);
		if (sp->jdir_dirty)
			add_sync(sp, &n, sp->jdirfd, false);
		sp->jdirty = sp->jdir_dirty = false;
	}
	sp->inflight = true;
	*fds = sp->syncs;
	return (int)n;
}

int spool_commit_done(struct spool *sp, int result)
{
	BUG_ON(!sp->inflight);
	sp->inflight = false;
	for (size_t i = 0; i < sp->nflight; i++) {
		sp->flight[i]->inflight = false;
		seg_forget_fd(sp, sp->flight[i]);
	}
	sp->nflight = 0;
	if (result < 0) {
		/*
		 * After a failed fsync the kernel may have dropped the dirty
		 * pages and cleared the error: a retry would "succeed"
		 * without the data.  Nothing written since the last good
		 * sync can be trusted, so stop here.
		 */
		sp->broken = result;
		return fail(sp, result, "spool: sync failed");
	}
	return 0;
}

int spool_commit(struct spool *sp)
{
	const struct spool_sync *fds;
	int n = spool_commit_begin(sp, true, &fds), r = 0;

	if (n < 0)
		return n;
	for (int i = 0; i < n && !r; i++)
		if ((fds[i].datasync ? fdatasync(fds[i].fd) : fsync(fds[i].fd)) < 0)
			r = -errno;
	return spool_commit_done(sp, r);
}

/* ---- reading ---------------------------------------------------------- */

/* ref_check - does header <h> describe the record <ref> names? */
static int ref_check(const uint8_t *h, const struct spool_ref *ref,
		     struct spoolrec_hdr *ri)
{
	if (spoolrec_parse(h, ri) < 0 || ri->id != ref->id || ri->total != ref->len ||
	    ri->body_len != ref->body_len ||
	    REC_HDR_LEN + ri->env_len != ref->body_off)
		return -EBADMSG;
	return 0;
}

int spool_locate(struct spool *sp, uint64_t id, struct spool_ref *ref)
{
	const struct msg *m = msg_find(sp, id);

	if (!m)
		return fail(sp, -ENOENT, "spool: no message %llu", (unsigned long long)id);
	*ref = (struct spool_ref){
		.id = id, .seg = m->seg->seq, .off = m->off, .len = m->len,
		.body_off = REC_HDR_LEN + m->env_len,
		.body_len = m->len - REC_HDR_LEN - m->env_len,
	};
	return 0;
}

int spool_read(struct spool *sp, const struct spool_ref *ref, void *body,
	       size_t cap)
{
	struct seg *s = seg_find(sp, ref->seg);
	struct spoolrec_hdr ri;
	uint32_t crc;
	int fd, r;

	if (!s)
		return fail(sp, -ENOENT, "spool: segment %016llx is gone",
			    (unsigned long long)ref->seg);
	if (cap < ref->body_len)
		return fail(sp, -EMSGSIZE, "spool: buffer too small");
	if (ref->body_off < REC_HDR_LEN || ref->body_off > ref->len)
		return fail(sp, -EINVAL, "spool: bad ref");
	/* a record appended since the last commit may still be buffered */
	if (s == sp->active && ref->off + ref->len > sp->active->size - sp->wbuf.len &&
	    (r = wbuf_flush(sp)) < 0)
		return r;
	fd = seg_read_fd(sp, s);
	if (fd < 0)
		return fd;
	sp->rec.len = 0;
	buf_reserve(&sp->rec, ref->body_off);
	r = pread_all(fd, sp->rec.p, ref->body_off, ref->off);
	if (!r)
		r = pread_all(fd, body, ref->body_len, ref->off + ref->body_off);
	if (r < 0 && r != -ENODATA)
		return fail(sp, r, "spool: read segment %016llx",
			    (unsigned long long)ref->seg);
	if (r < 0 || ref_check(sp->rec.p, ref, &ri) < 0)
		return fail(sp, -EBADMSG, "spool: message %llu does not verify",
			    (unsigned long long)ref->id);
	crc = crc32c(spoolrec_crc_head(sp->rec.p), sp->rec.p + REC_HDR_LEN,
		     ri.env_len);
	if (crc32c(crc, body, ri.body_len) != ri.crc)
		return fail(sp, -EBADMSG, "spool: message %llu does not verify",
			    (unsigned long long)ref->id);
	return 0;
}

const char *spool_dir(const struct spool *sp)
{
	return sp->dir;
}

int spool_free_bytes(struct spool *sp, uint64_t *bytes)
{
	struct statvfs sv;

	if (fstatvfs(sp->segdirfd, &sv) < 0)
		return fail(sp, -errno, "spool: statvfs %s", sp->dir);
	*bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
	return 0;
}

void spool_usage(const struct spool *sp, struct spool_usage *u)
{
	memset(u, 0, sizeof(*u));
	u->messages = sp->mcount;
	u->segments = sp->nsegs;
	u->journals = sp->njfiles;
	for (size_t i = 0; i < sp->nsegs; i++) {
		u->recipients += sp->segs[i]->live;
		u->bytes += sp->segs[i]->size;
	}
}

/* ---- reclamation ------------------------------------------------------ */

/*
 * pool_room - may finished segments be kept for reuse now?  Only while the
 * disk keeps SEG_POOL_FREE_MIN segments free besides what the owner keeps.
 */
static bool pool_room(struct spool *sp)
{
	uint64_t free_bytes;

	if (sp->npool >= SEG_POOL_MAX || spool_free_bytes(sp, &free_bytes) < 0)
		return false;
	return free_bytes >= SEG_POOL_FREE_MIN * sp->opts.segment_size + sp->keep_free;
}

/*
 * retire_file - a finished segment's file: into the pool, or unlinked.
 * *room: may the pool grow (-1: not asked yet).
 */
static int retire_file(struct spool *sp, struct seg *s, int *room)
{
	char *path = seg_path(sp, s->seq);
	int r = 0;

	if (*room < 0 && s->size >= sp->opts.segment_size / 2)
		*room = pool_room(sp);
	if (*room > 0 && sp->npool < SEG_POOL_MAX && s->size >= sp->opts.segment_size / 2) {
		char *to = pool_path(sp, s->seq);

		if (rename(path, to) == 0) {
			sp->pool[sp->npool++] = s->seq;
			free(to);
			free(path);
			return 0;
		}
		free(to);
		*room = 0;
	}
	if (unlink(path) < 0 && errno != ENOENT)
		r = fail(sp, -errno, "spool: unlink %s", path);
	free(path);
	return r;
}

size_t spool_release_pool(struct spool *sp)
{
	size_t n = 0;

	while (sp->npool) {
		char *path = pool_path(sp, sp->pool[--sp->npool]);

		n += unlink(path) == 0;
		free(path);
	}
	return n;
}

void spool_set_keep_free(struct spool *sp, uint64_t bytes)
{
	sp->keep_free = bytes;
}

size_t spool_pooled(const struct spool *sp)
{
	return sp->npool;
}

/* drop_segments - retire finished segments, then sync the directory. */
static int drop_segments(struct spool *sp, struct spool_maint_stats *st)
{
	size_t k = 0, dropped = 0;
	int room = -1, r = 0;

	for (size_t i = 0; i < sp->nsegs; i++) {
		struct seg *s = sp->segs[i];

		/* an unscanned segment only looks empty */
		if (s->active || s->touched || s->inflight || s->live || s->pending) {
			sp->segs[k++] = s;
			continue;
		}
		BUG_ON(s->head);
		int rr = retire_file(sp, s, &room);
		if (rr < 0) {
			r = rr;
			sp->segs[k++] = s;
			continue;
		}
		seg_forget_fd(sp, s);
		free(s);
		dropped++;
	}
	sp->nsegs = k;
	st->segments_deleted += dropped;
	/* Journals that finished these may go only once they cannot return. */
	if (dropped && fsync(sp->segdirfd) < 0)
		return fail(sp, -errno, "spool: fsync %s", sp->segdir);
	return r;
}

/* drop_journals - delete journal files no remaining segment may need. */
static void drop_journals(struct spool *sp, struct spool_maint_stats *st)
{
	uint64_t limit = UINT64_MAX;
	size_t k = 0;

	for (size_t i = 0; i < sp->nsegs; i++)
		if (sp->segs[i]->jmin < limit)
			limit = sp->segs[i]->jmin;
	for (size_t i = 0; i < sp->njfiles; i++) {
		uint64_t seq = sp->jfiles[i];
		char *path;

		if (seq >= limit || (sp->jfd >= 0 && seq == sp->jseq)) {
			sp->jfiles[k++] = seq;
			continue;
		}
		path = jnl_path(sp, seq);
		if (unlink(path) < 0 && errno != ENOENT)
			sp->jfiles[k++] = seq;	/* try again next time */
		else
			st->journals_deleted++;
		free(path);
	}
	sp->njfiles = k;
}

/* move_one - rewrite <m> to the active segment with its live recipients. */
static int move_one(struct spool *sp, struct msg *m, struct moved *mv)
{
	struct spoolrec_hdr ri;
	int fd = seg_read_fd(sp, m->seg), r;

	if (fd < 0)
		return fd;
	msg_ref(m, &mv->from);
	sp->rec.len = 0;
	buf_reserve(&sp->rec, m->len);
	r = pread_all(fd, sp->rec.p, m->len, m->off);
	if (r < 0)
		return fail(sp, r == -ENODATA ? -EIO : r,
			    "spool: read segment %016llx",
			    (unsigned long long)m->seg->seq);
	if (spool_verify(&mv->from, sp->rec.p, m->len) < 0 ||
	    spoolrec_parse(sp->rec.p, &ri) < 0 ||
	    env_decode(&sp->dec, sp->rec.p + REC_HDR_LEN, ri.env_len) < 0)
		return fail(sp, -EBADMSG, "spool: message %llu does not verify",
			    (unsigned long long)m->id);
	live_only(sp, m);
	r = env_encode(&sp->enc, &sp->dec.env, true);
	if (r < 0)
		return fail(sp, r, "spool: re-encode message %llu",
			    (unsigned long long)m->id);
	r = append_record(sp, m->id, ri.queued, &sp->enc,
			  sp->rec.p + REC_HDR_LEN + ri.env_len, ri.body_len,
			  NULL, &mv->to);
	if (r < 0)
		return r;
	seg_unlink(m);
	m->off = mv->to.off;
	m->len = mv->to.len;
	m->env_len = (uint32_t)sp->enc.len;
	seg_link(sp->active, m);
	return 0;
}

/* move_forward - move the messages of old segments, within the budget */
static int move_forward(struct spool *sp, int64_t now, spool_moved_fn *fn,
			void *ctx, struct spool_maint_stats *st)
{
	/* Segments created from here on (by these moves) are not sources. */
	uint64_t below = sp->active ? sp->active->seq : sp->next_seg;
	uint32_t budget = sp->opts.move_budget;
	size_t nmoved = 0;
	bool more = false;
	int r = 0;

	if (sp->opts.move_after < 0)
		return 0;
	GROW(sp->moved, sp->capmoved, budget);
	for (size_t i = 0; i < sp->nsegs && !more; i++) {
		struct seg *s = sp->segs[i];
		struct msg *m, *next;

		if (s->seq >= below || !s->live ||
		    now - s->created < sp->opts.move_after)
			continue;
		for (m = s->head; m; m = next) {
			next = m->next;
			if (nmoved == budget) {
				more = true;
				break;
			}
			/* shards read a big body in place: it stays put */
			if (m->len - REC_HDR_LEN - m->env_len > SPOOL_RESIDENT_MAX)
				continue;
			r = move_one(sp, m, &sp->moved[nmoved]);
			if (r == -EBADMSG) {
				st->errors++;	/* it stays where it is */
				continue;
			}
			if (r < 0)
				break;
			nmoved++;
		}
		if (r < 0 && r != -EBADMSG)
			break;
	}
	if (!nmoved)
		return r < 0 && r != -EBADMSG ? r : more;
	/*
	 * The copies must be durable before MOVED can be written: a MOVED
	 * on disk without its copy would lose the message.
	 */
	{
		int c = spool_commit(sp);

		if (c < 0)
			return c;
	}
	for (size_t i = 0; i < nmoved; i++) {
		struct seg *old = seg_find(sp, sp->moved[i].from.seg);

		BUG_ON(!old);
		journal_add(sp, JK_MOVED, 0, 0, sp->moved[i].from.id, old);
		if (fn)
			fn(ctx, &sp->moved[i].from, &sp->moved[i].to);
	}
	st->moved += nmoved;
	if (r < 0 && r != -EBADMSG)
		return r;
	return more;
}

int spool_maintain(struct spool *sp, int64_t now, spool_moved_fn *fn,
		   void *ctx, struct spool_maint_stats *st)
{
	int r;

	BUG_ON(!sp->recovered);
	if (sp->broken)
		return fail(sp, sp->broken, "spool: unusable after a failed sync");
	if (sp->inflight)
		return fail(sp, -EBUSY, "spool: maintain during a commit");
	/* Unscanned segments look empty and their journals unneeded. */
	if (spool_recovering(sp))
		return 0;
	/*
	 * A finished active segment is retired so it can go: on a small
	 * disk waiting for it to reach segment_size would keep it full.
	 */
	if (sp->active && !sp->active->live && !sp->active->touched &&
	    sp->active->size > FILE_HDR_LEN) {
		sp->active->active = false;
		seg_forget_fd(sp, sp->active);
		sp->active = NULL;
	}
	/*
	 * Queued mail will need its outcomes recorded: have the journal
	 * and its claimed space before the disk fills (best effort).
	 */
	if (sp->jfd < 0 && sp->mcount)
		(void)journal_open(sp);	/* else journal_write tries again */
	journal_claim(sp, 0);
	r = drop_segments(sp, st);
	if (r < 0)
		return r;
	drop_journals(sp, st);
	return move_forward(sp, now, fn, ctx, st);
}
