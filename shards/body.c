/*
 * shards/body.c - message bodies, which stay in the spool while their
 * recipients wait (DESIGN.md, "Memory"): where each message this shard
 * holds is now (the spool's moves arrive as notices on the intake rings),
 * and a bounded cache of bodies read back with IORING_OP_READ when a
 * connection is ready to send one.  A read is never waited for: the
 * connection parks and the completion resumes it (conn_body_ready).
 *
 * Cache entries live in a slot table (a read's completion names its entry
 * by slot and generation), hashed by (intake, message id); a connection
 * sending a body pins its entry (and the one before while a send may still
 * read it), and only unpinned entries are evicted once the cache holds more
 * than body-cache-size octets.  The LRU list holds the unpinned, read
 * entries only: every idle connection keeps its last body pinned, so a
 * list of all entries made each eviction walk past hundreds of pinned
 * ones (evict was 13% of a busy shard's CPU in the relay bench).
 *
 * A message just received whose recipients are all on this shard comes
 * with its body (delivery_job.body): it enters the cache read, so the
 * first transaction neither reads it back nor checks its CRC again, and
 * it leaves as soon as that transaction lets go of it (delivered or
 * deferred: the body of waiting mail is not kept).  It is taken only
 * while the cache has room for it; one never sent goes like any other,
 * least recently used first; a later transaction reads it back.
 *
 * Threads: the shard's own thread only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "affinity/affinity.h"
#include "shards/shard_int.h"
#include "shards/shards.h"
#include "util/slots.h"
#include "util/spoolrec.h"
#include "util/util.h"

/* ---- where the messages are ------------------------------------------ */

/*
 * A message this shard holds recipients of.  Kept inline in an
 * open-addressing table of its own rather than util/hash's table of
 * pointers: a shard may hold a million messages, and a separate
 * allocation per entry would cost more than the entry.
 */
struct mref {
	struct delivery_msg *m;		/* NULL: a free slot */
	uint32_t intake;
	uint32_t n;			/* qrcpts of it in this shard */
	struct spool_ref *moved;	/* where the spool moved it, or NULL */
};

static uint64_t mix(uint64_t id, uint32_t intake)
{
	uint64_t h = (id ^ ((uint64_t)intake << 56)) * 0x9e3779b97f4a7c15ull;

	return h ^ (h >> 29);
}

/* mref_find - the slot of (intake, id), or of the free slot ending its probe. */
static size_t mref_find(const struct shard *s, uint32_t intake, uint64_t id)
{
	size_t mask = s->mcap - 1, i = mix(id, intake) & mask;

	while (s->mtab[i].m && !(s->mtab[i].m->id == id && s->mtab[i].intake == intake))
		i = (i + 1) & mask;
	return i;
}

static void mref_grow(struct shard *s)
{
	struct mref *old = s->mtab;
	size_t oldcap = s->mcap;

	s->mcap = oldcap ? oldcap * 2 : 1024;
	s->mtab = xcalloc(s->mcap, sizeof(*s->mtab));
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].m)
			s->mtab[mref_find(s, old[i].intake, old[i].m->id)] = old[i];
	free(old);
}

void msg_hold(struct shard *s, uint32_t intake, struct delivery_msg *m)
{
	if ((s->mcount + 1) * 4 > s->mcap * 3)
		mref_grow(s);
	size_t i = mref_find(s, intake, m->id);
	if (!s->mtab[i].m) {
		s->mtab[i] = (struct mref){ .m = m, .intake = intake };
		s->mcount++;
	}
	s->mtab[i].n++;
}

void msg_release(struct shard *s, uint32_t intake, const struct delivery_msg *m)
{
	size_t mask = s->mcap - 1, i = mref_find(s, intake, m->id);

	BUG_ON(!s->mtab[i].m);
	if (--s->mtab[i].n)
		return;
	free(s->mtab[i].moved);
	s->mtab[i] = (struct mref){ 0 };
	s->mcount--;
	/* backward-shift deletion keeps every probe sequence unbroken */
	for (size_t j = (i + 1) & mask; s->mtab[j].m; j = (j + 1) & mask) {
		size_t home = mix(s->mtab[j].m->id, s->mtab[j].intake) & mask;
		if (((j - home) & mask) >= ((j - i) & mask)) {
			s->mtab[i] = s->mtab[j];
			s->mtab[j] = (struct mref){ 0 };
			i = j;
		}
	}
}

void msg_moves(struct shard *s, uint32_t intake, const struct delivery_moves *mv)
{
	for (uint32_t k = 0; k < mv->n && s->mcap; k++) {
		size_t i = mref_find(s, intake, mv->to[k].id);
		if (!s->mtab[i].m)
			continue;	/* none of its recipients is here */
		if (!s->mtab[i].moved)
			s->mtab[i].moved = xmalloc(sizeof(struct spool_ref));
		*s->mtab[i].moved = mv->to[k];
	}
}

const struct spool_ref *msg_where(const struct shard *s, uint32_t intake,
				  const struct delivery_msg *m)
{
	if (s->mcap) {
		size_t i = mref_find(s, intake, m->id);
		if (s->mtab[i].m && s->mtab[i].moved)
			return s->mtab[i].moved;
	}
	return &m->where;
}

/* ---- the cache of bodies --------------------------------------------- */

enum { BENT_LOADING, BENT_READY, BENT_FAILED };

struct bent {
	struct slot_hdr hdr;		/* first: an item of shard.bents */
	uint64_t id;
	uint32_t intake;
	uint32_t pins;			/* connections sending it (+1 loading) */
	int state;
	struct spool_ref ref;		/* where it was read from */
	char *rec;			/* the record image, or (handed) the body */
	const char *body;		/* in rec, once READY */
	uint32_t bytes;			/* what it counts in bcache_bytes */
	bool handed;			/* came with its job: dropped once its
					   first transaction lets go of it */
	uint32_t done;			/* octets read so far */
	int fd;
	bool owns_fd;			/* fd is its own, not a seg_fds entry */
	struct bent *hnext;
	struct bent *prev, *next;	/* LRU: most recent at the head */
	struct { uint32_t slot, gen; } *waiters;
	uint32_t nwaiters, capwaiters;
};

static size_t bhash(const struct shard *s, uint32_t intake, uint64_t id)
{
	return mix(id, intake) & (s->nbuckets - 1);
}

static void lru_unlink(struct shard *s, struct bent *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else if (s->lru_head == e)
		s->lru_head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else if (s->lru_tail == e)
		s->lru_tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_front(struct shard *s, struct bent *e)
{
	lru_unlink(s, e);
	e->next = s->lru_head;
	if (s->lru_head)
		s->lru_head->prev = e;
	s->lru_head = e;
	if (!s->lru_tail)
		s->lru_tail = e;
}

static struct bent *bent_find(const struct shard *s, uint32_t intake, uint64_t id)
{
	if (!s->nbuckets)
		return NULL;
	for (struct bent *e = s->buckets[bhash(s, intake, id)]; e; e = e->hnext)
		if (e->id == id && e->intake == intake)
			return e;
	return NULL;
}

static void bent_drop(struct shard *s, struct bent *e)
{
	struct bent **pp = &s->buckets[bhash(s, e->intake, e->id)];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(s, e);
	s->bcache_bytes -= e->bytes;
	s->nbents--;
	affinity_free_home(e->rec);	/* read back here, or handed by an intake */
	free(e->waiters);
	slot_free(&s->bents, e);
}

/* evict - unpinned bodies go, least recently used first, down to the limit. */
static void evict(struct shard *s)
{
	while (s->lru_tail && s->bcache_bytes > s->set->body_cache_size) {
		BUG_ON(s->lru_tail->pins || s->lru_tail->state != BENT_READY);
		bent_drop(s, s->lru_tail);
	}
}

/* pin - one more user of e; the first takes it off the LRU list */
static void pin(struct shard *s, struct bent *e)
{
	if (!e->pins++)
		lru_unlink(s, e);
}

/*
 * unpin - one user less; the last puts a read entry back, most recent, or
 * drops a handed one: its recipients here were tried once, and what waits
 * for a retry reads it back then.
 */
static void unpin(struct shard *s, struct bent *e)
{
	if (!e)
		return;
	BUG_ON(!e->pins);
	if (--e->pins || e->state != BENT_READY)
		return;
	if (e->handed) {
		bent_drop(s, e);
		return;
	}
	lru_front(s, e);
	evict(s);
}

/* bent_new - an entry for <ref>'s record, <bytes> of memory at <rec> */
static struct bent *bent_new(struct shard *s, uint32_t intake, uint64_t id,
			     const struct spool_ref *ref, char *rec, uint32_t bytes)
{
	if (s->nbents + 1 > s->nbuckets) {
		size_t n = s->nbuckets ? s->nbuckets * 2 : 256;
		struct bent **b = xcalloc(n, sizeof(*b));
		for (size_t i = 0; i < s->nbuckets; i++) {
			struct bent *e = s->buckets[i], *next;
			for (; e; e = next) {
				next = e->hnext;
				size_t h = mix(e->id, e->intake) & (n - 1);
				e->hnext = b[h];
				b[h] = e;
			}
		}
		free(s->buckets);
		s->buckets = b;
		s->nbuckets = n;
	}
	struct bent *e = slot_alloc(&s->bents);
	e->id = id;
	e->intake = intake;
	e->ref = *ref;
	e->fd = -1;
	e->rec = rec;
	e->bytes = bytes;
	size_t h = bhash(s, intake, id);
	e->hnext = s->buckets[h];
	s->buckets[h] = e;
	s->nbents++;
	s->bcache_bytes += bytes;
	return e;
}

void body_take(struct shard *s, uint32_t intake, struct delivery_job *job)
{
	const struct delivery_msg *m = job->msg;

	if (!job->body)
		return;
	/*
	 * Counted like the record a read would bring back, so that tiny
	 * bodies cannot pile up uncounted.  Kept only where the cache has
	 * room: when it is full this shard is behind, and a fresh body would
	 * push out others before its turn came (it is read back then).
	 */
	if (m->where.body_len > SPOOL_RESIDENT_MAX || bent_find(s, intake, m->id) ||
	    s->bcache_bytes + m->where.len > s->set->body_cache_size) {
		affinity_free_home(job->body);	/* mapped in place, here already, or no room */
		job->body = NULL;
		return;
	}
	struct bent *e = bent_new(s, intake, m->id, &m->where, job->body, m->where.len);
	job->body = NULL;
	e->body = e->rec;
	e->state = BENT_READY;
	e->handed = true;
	lru_front(s, e);
	evict(s);
}

static void submit_read(struct shard *s, struct bent *e)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_read(sqe, e->fd, e->rec + e->done, e->ref.len - e->done,
			   e->ref.off + e->done);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_BODY, e->hdr.slot, e->hdr.gen));
}

/*
 * body_pin - c's transaction sends e's body: the pin of its previous
 * transaction's body is kept while a send may still read it.
 */
static void body_pin(struct shard *s, struct sconn *c, struct bent *e)
{
	/* first: letting go of the others may evict, but never e (c's last may be e) */
	pin(s, e);
	if (c->bent_old && !c->send_inflight) {
		unpin(s, c->bent_old);
		c->bent_old = NULL;
	}
	if (c->bent) {
		if (c->send_inflight && !c->bent_old)
			c->bent_old = c->bent;
		else
			unpin(s, c->bent);
		c->bent = NULL;
	}
	c->bent = e;
}

/* loaded - the read of e ended (err 0: it verified): its waiters go on. */
static void loaded(struct shard *s, struct bent *e, int err)
{
	if (e->owns_fd)
		close(e->fd);
	e->fd = -1;
	e->owns_fd = false;
	s->body_reads--;
	if (!err && spool_verify(&e->ref, e->rec, e->ref.len) < 0)
		err = EBADMSG;
	e->state = err ? BENT_FAILED : BENT_READY;
	e->body = e->rec + e->ref.body_off;
	/* the waiters go on; one may close its connection, none frees e */
	for (uint32_t i = 0; i < e->nwaiters; i++) {
		struct sconn *c = conn_get(s, e->waiters[i].slot, e->waiters[i].gen);
		if (!c || c->bwait != e)
			continue;
		c->bwait = NULL;
		if (!err)
			body_pin(s, c, e);
		conn_body_ready(s, c, err ? NULL : e->body, err);
	}
	e->nwaiters = 0;
	if (err && e->pins == 1) {
		bent_drop(s, e);
		return;
	}
	unpin(s, e);	/* the read's own */
	evict(s);	/* e counts now, pinned or not */
}

/*
 * segment_fd - a descriptor for segment seg of intake's spool.  The
 * intake's cached one when it is that segment; else the cache moves to
 * seg, unless reads in flight may still use the old descriptor (a read
 * takes its file when the ring issues it, later than its submission):
 * then *owns says the caller closes what it got once its read ends.
 */
static int segment_fd(struct shard *s, uint32_t intake, const char *dir, uint64_t seg,
		      bool *owns)
{
	struct seg_fd *c = &s->seg_fds[intake];

	*owns = false;
	if (c->fd >= 0 && c->seg == seg) {
		c->used_ms = s->now_ms;
		return c->fd;
	}
	char *path = spool_segment_path(dir, seg);
	/* opening is a metadata call; the reads go through the ring */
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	free(path);
	if (fd < 0)
		return -1;
	if (c->fd >= 0 && s->body_reads > 0) {
		*owns = true;
		return fd;
	}
	if (c->fd >= 0)
		close(c->fd);
	*c = (struct seg_fd){ .seg = seg, .fd = fd, .used_ms = s->now_ms };
	return fd;
}

bool body_files_open(const struct shard *s)
{
	for (uint32_t i = 0; i < s->set->nintake; i++)
		if (s->seg_fds[i].fd >= 0)
			return true;
	return false;
}

void body_idle(struct shard *s)
{
	for (uint32_t i = 0; i < s->set->nintake && s->body_reads == 0; i++) {
		struct seg_fd *c = &s->seg_fds[i];
		if (c->fd >= 0 && s->now_ms - c->used_ms >= 1000) {
			close(c->fd);
			c->fd = -1;
		}
	}
}

const char *body_get(struct shard *s, struct sconn *c, uint32_t intake,
		     const struct delivery_msg *m)
{
	struct bent *e = bent_find(s, intake, m->id);

	if (e && e->state == BENT_READY) {
		body_pin(s, c, e);
		return e->body;
	}
	if (e && e->state == BENT_FAILED)
		e = NULL;	/* goes once its waiters heard; read afresh */
	if (!e) {
		const struct spool_ref *ref = msg_where(s, intake, m);
		const char *dir = s->set->spool_dirs ? s->set->spool_dirs[intake] : NULL;
		if (!dir) {
			errno = ENOENT;
			return NULL;
		}
		bool owns;
		int fd = segment_fd(s, intake, dir, ref->seg, &owns);
		if (fd < 0)
			return NULL;
		e = bent_new(s, intake, m->id, ref, xmalloc(ref->len ? ref->len : 1),
			     ref->len);
		e->pins = 1;		/* the read's own */
		e->state = BENT_LOADING;
		e->fd = fd;
		e->owns_fd = owns;
		s->body_reads++;
		if (!ref->len) {
			loaded(s, e, EBADMSG);
			errno = EBADMSG;
			return NULL;
		}
		submit_read(s, e);
	}
	if (e->nwaiters == e->capwaiters) {
		e->capwaiters = e->capwaiters ? e->capwaiters * 2 : 4;
		e->waiters = xrealloc(e->waiters, e->capwaiters * sizeof(*e->waiters));
	}
	e->waiters[e->nwaiters].slot = c->hdr.slot;
	e->waiters[e->nwaiters].gen = c->hdr.gen;
	e->nwaiters++;
	c->bwait = e;
	errno = EINPROGRESS;
	return NULL;
}

void on_body_read(struct shard *s, struct io_uring_cqe *cqe, uint32_t slot, uint32_t gen)
{
	struct bent *e = slot_get(&s->bents, slot, gen);

	BUG_ON(!e || e->state != BENT_LOADING);	/* a read pins its entry */
	if (cqe->res < 0) {
		loaded(s, e, -cqe->res);
		return;
	}
	if (cqe->res == 0) {
		loaded(s, e, ENODATA);	/* the record is cut short */
		return;
	}
	e->done += (uint32_t)cqe->res;
	if (e->done < e->ref.len)
		submit_read(s, e);
	else
		loaded(s, e, 0);
}

void body_conn_release(struct shard *s, struct sconn *c)
{
	c->bwait = NULL;
	unpin(s, c->bent);
	unpin(s, c->bent_old);
	c->bent = c->bent_old = NULL;
}

void body_init(struct shard *s)
{
	slot_table_init(&s->bents, sizeof(struct bent));
	s->seg_fds = xcalloc(s->set->nintake, sizeof(*s->seg_fds));
	for (uint32_t i = 0; i < s->set->nintake; i++)
		s->seg_fds[i].fd = -1;
}

void body_free(struct shard *s)
{
	for (uint32_t i = 0; i < s->bents.count; i++) {
		struct bent *e = slot_at(&s->bents, i);
		if (e) {
			if (e->owns_fd)
				close(e->fd);
			free(e->rec);
			free(e->waiters);
		}
	}
	slot_table_destroy(&s->bents);
	for (uint32_t i = 0; s->seg_fds && i < s->set->nintake; i++)
		if (s->seg_fds[i].fd >= 0)
			close(s->seg_fds[i].fd);
	free(s->seg_fds);
	free(s->buckets);
	for (size_t i = 0; i < s->mcap; i++)
		free(s->mtab[i].moved);
	free(s->mtab);
}
