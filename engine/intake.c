/*
 * engine/intake.c - the SMTP intake loop (see intake.h).
 *
 * One io_uring per intake thread: multishot accept per listener,
 * multishot recv into a provided buffer ring, one send in flight per
 * connection, a 1 s tick for timeouts, and IORING_OP_FSYNC for the group
 * commit.  Each loop turn: reap every completion, feed received bytes to
 * the sessions (a bounded amount per connection), append finished
 * messages to the spool, then start one commit for all of them (unless
 * one is running, or other bodies are on their way: commit_should_wait);
 * the 250s go out when its fsyncs complete.  Submission is batched: one
 * io_uring_submit_and_wait per turn.
 *
 * Timeouts are a sweep on the tick rather than linked timeouts: a
 * multishot recv cannot carry a linked timeout, and one timer for all
 * connections costs less than one per read.
 *
 * Runs on the intake thread only, except intake_stop() (an eventfd write).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "engine/intake.h"
#include "services/acct.h"
#include "engine/dsn.h"
#include "engine/signing.h"
#include "engine/fbl.h"
#include "engine/smtp_session.h"
#include "util/dkim.h"
#include "util/hash.h"
#include "util/intern.h"
#include "util/log.h"
#include "util/slots.h"
#include "util/uring.h"

#define RING_ENTRIES	4096
#define BUF_GROUP	1
#define BUF_COUNT	1024		/* power of two */
#define BUF_SIZE	16384
#define MAX_PENDING_IN	(4u << 20)	/* unconsumed input per connection */
#define TLS_READ_CHUNK	16384
#define IDLE_TIMEOUT_S	300		/* RFC 5321 4.5.3.2.7 */
#define JOB_BATCH	64
#define STACK_RCPTS	64		/* recipients handled without malloc */
#define STACK_SHARDS	64
/*
 * Free spool space kept on top of min-free-space: room for the journal
 * (spool.c claims up to 1 MiB ahead of its end) to record outcomes, so
 * that deliveries go on and free segments when new mail filled the disk.
 */
#define SPOOL_FLOOR	(2u << 20)
/*
 * A body handed to its shard with the job (handoff_body) is at most this
 * big, and goes only while the shard has fewer than HANDOFF_BACKLOG jobs
 * of ours waiting: what a stalled shard's ring holds stays bounded (8 MiB
 * per ring at worst), and a shard that far behind would evict it before
 * its turn anyway.
 */
#define HANDOFF_BODY_MAX	(64u << 10)
#define HANDOFF_BACKLOG		128
/* The header section a message whose body stays in the spool keeps. */
#define BODY_HEAD_MAX	(64u << 10)
/* Memory per message being received: the rest streams to the spool. */
#define DATA_WINDOW	(256u << 10)
/* Per-message overhead beyond the body: record header and envelope. */
#define RECORD_SLACK	(4u << 10)
/* A failed commit is retried after 1 s, 2 s, 4 s ... up to this. */
#define COMMIT_BACKOFF_MAX_S	30
/*
 * Recovery runs between loop turns: at most this long per turn, so a
 * client waits no more than that for an answer.  It hands a message over
 * only while every ring to a shard keeps RECOVER_ROOM free places, so new
 * mail finds room (no 451 for back-pressure recovery caused).
 */
#define RECOVER_SLICE_US	5000
#define RECOVER_ROOM		1024	/* free jobs every ring keeps */
#define JOURNAL_WAIT_MIN_MS	10	/* a due journal sync the retry holds back */
#define RECOVER_WAIT_NS		1000000	/* rings too full: look again */

/* What a completion is for: the kind in its user_data (util/slots.h). */
enum op_kind {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_FSYNC,
	OP_TICK,
	OP_STOP,
	OP_OUTCOME,
};

struct conn {
	struct slot_hdr hdr;		/* first: an item of intake.conns */
	int fd;
	bool closing;			/* close once output is flushed */
	bool recv_armed;
	bool send_inflight;
	bool awaiting_commit;
	bool yielded;			/* has unconsumed input to process */
	bool in_yield_list;		/* named in intake.yielded */
	bool in_body;			/* counted in intake.n_in_body */
	bool handshaking;
	bool starttls;			/* handshake came from STARTTLS */
	bool starttls_pending;		/* 220 not sent yet: TLS starts after */
	int listener;
	char local_ip[INET6_ADDRSTRLEN];
	struct smtp_session *session;
	struct tls_conn *tls;
	struct strbuf out;		/* plaintext replies not yet sent */
	struct strbuf inflight;		/* plaintext bytes in a send (no TLS) */
	size_t inflight_off;
	struct strbuf pending_in;	/* plaintext the session has not taken */
	struct strbuf early_cipher;	/* ClientHello seen before our 220 left */
	time_t deadline;		/* idle: reset by every read */
	/* deadlines no trickle resets (smtp-in-*-timeout) */
	time_t born;			/* greeting phase: until HELO/EHLO */
	time_t hs_since;		/* TLS handshake started */
	time_t line_since;		/* a command line started; 0 = none */
	int group;			/* its <source-group> (index in the
					   intake's cfg, remapped by a reload), or -1 */
	char ip[INET6_ADDRSTRLEN];
	const struct cfg *cfg;		/* one reference: the session's policy
					   lives as long as the connection */
	struct intake *in;
	struct spool_spill *spill;	/* the streamed part of the message */
	bool spill_8bit;		/* it has an octet >= 0x80 */
};

/* A message appended to the spool, waiting for its commit. */
struct pending_msg {
	uint32_t slot, gen;		/* its connection, if still there */
	bool local;			/* made here (a DSN): no r records */
	char client_ip[INET6_ADDRSTRLEN];
	char local_ip[INET6_ADDRSTRLEN];
	struct spool_ref ref;
	struct delivery_msg *msg;
	char *body;			/* a copy of what was stored, for the
					   shard (handoff), or NULL */
};

struct pending_list {
	struct pending_msg *items;
	size_t count, cap;
};

/* Jobs a full ring did not take yet (back-pressure). */
struct overflow {
	uint32_t shard;
	struct delivery_job *job;
};

/*
 * AUTH failures per client address (smtp-max-auth-failure-rate), a token
 * bucket each, in a direct-mapped table: bounded memory whatever the
 * number of clients; a collision only forgets the older client's count.
 */
#define AUTH_SLOTS 4096
/*
 * Envelope strings an intake thread shares among its messages at most
 * (util/intern.h): senders, vmtas, job ids and client addresses in use
 * at once; beyond that a message keeps its own copies.
 */
#define INTAKE_SHARED_STRINGS 4096

struct auth_slot {
	unsigned char addr[16];
	bool used;
	double tokens;
	time_t stamp;
};

/*
 * One listening socket, what its smtp-listener said (copied: a removed
 * one's accept may still complete after its configuration is gone), and
 * whether it is still in the configuration.  Slots never move: the
 * accept's user_data names one.
 */
/* What the management thread reads (intake_live); see intake.h. */
struct intake_pub {
	_Atomic uint64_t connections, messages, recipients, rejected;
	_Atomic uint64_t spool_bytes, spool_messages, spool_recipients;
	_Atomic uint32_t open;
	_Atomic uint64_t fsync[INTAKE_FSYNC_BUCKETS];
	_Atomic uint64_t fsync_sum_us;
};

struct listener {
	int fd;				/* -1: a free slot */
	bool live;			/* false: shut down, closed when its
					   accept ends */
	bool armed;			/* a multishot accept is in flight */
	bool immediate_tls;
	char *source;			/* source=NAME or NULL */
};

struct intake {
	const struct cfg *cfg;		/* one reference; new sessions use it */
	/*
	 * Posted by intake_reload(): the next configuration, and the
	 * listening sockets for its listeners (malloc'd, one per listener;
	 * stored before the post, taken after the configuration).
	 */
	struct cfg_mailbox next_cfg;
	_Atomic(int *) next_fds;
	struct listener *lst;		/* the intake owns these sockets */
	size_t nlst;
	struct intake_pub pub;
	uint64_t recipients;		/* accepted, for pub */
	uint64_t commit_began_us;	/* the fsyncs of the batch in flight */
	struct fbl *fbl;		/* NULL: no suppression, no processors */
	struct auth_slot *auth_slots;	/* [AUTH_SLOTS], on first use */
	uint32_t index;
	struct io_uring ring;
	bool ring_ok;
	char *ring_note;		/* what set-up fell back to, or NULL */
	struct spool *spool;
	struct intern_tab *strings;	/* envelope strings the messages share */
	/*
	 * Spool health.  spool_err: the last commit could not even start
	 * (a write failed, e.g. ENOSPC): the batch waits and is retried at
	 * commit_retry_at; new mail is refused meanwhile.  spool_dead: a
	 * sync failed, nothing unsynced can be trusted (spool.h): new mail
	 * gets 451 until a restart recovers from the disk.
	 */
	int spool_err;
	bool spool_dead;
	unsigned commit_failures;	/* in a row */
	time_t commit_retry_at;
	bool space_low;			/* refusing mail for free space */
	uint64_t data_memory;		/* sessions' message buffers, bytes */
	uint64_t space_wanted;		/* what the last refused message needed */
	struct shard_set *shards;
	const struct domain_map *map;
	struct tls_ctx *tls;
	struct acct_writer *acct;
	struct strbuf hdr_text;		/* header_NAME values of one message */
	uint64_t min_free_space;
	bool maintain_due;		/* the tick's maintenance waits for a commit */
	uint64_t free_bytes;		/* last sample minus appends since */
	const char *hostname;

	struct uring_bufs bufs;		/* the connections' receives */

	struct slot_table conns;
	uint64_t next_conn_id;
	/*
	 * Connections that yielded with input left, for the next turn's
	 * slices: a list, so a turn costs the connections that yielded and
	 * not a sweep of every open one.  spare is the list being served.
	 */
	struct conn_ref { uint32_t slot, gen; } *yielded, *yielded_spare;
	size_t n_yielded, cap_yielded, cap_yielded_spare;
	/*
	 * Live connections by client address (struct client_ip) and by
	 * source group (group_live[ngroup_live], the cfg's groups in order),
	 * kept at accept and free: admit() reads them instead of walking
	 * every connection at every accept.
	 */
	struct hash_tab client_ips;
	uint32_t *group_live;
	size_t ngroup_live;

	struct pending_list next_batch, commit_batch;
	/*
	 * The group commit's wait: next_batch's first message ended at
	 * batch_opened_us; n_in_body sessions are receiving a body; the last
	 * commit that carried messages took last_commit_us.  commit_wait_until
	 * (0: none) is when a batch held back for those bodies starts anyway.
	 */
	uint64_t batch_opened_us;
	uint64_t last_commit_us;
	uint64_t commit_wait_until;
	uint32_t n_in_body;
	bool commit_inflight;
	int commit_outstanding;
	int commit_result;

	struct overflow *overflow;
	size_t n_overflow, cap_overflow;
	struct spool_ref *moved;	/* what one spool_maintain() moved */
	size_t nmoved, cap_moved;

	int stop_fd;
	uint64_t stop_value;
	int outcome_fd;
	uint64_t outcome_value;
	/*
	 * Outcomes journaled and not yet synced, since journal_dirty_ms: a
	 * commit syncs the journal once they have waited journal-sync-delay
	 * (or at stop), so most commits sync only the segment.
	 */
	bool journal_dirty;
	uint64_t journal_dirty_ms;
	bool stopping;
	struct __kernel_timespec tick;
	time_t now;

	struct intake_stats stats;

	/* spool recovery in progress (intake_recover_begin) */
	bool recovering;
	bool recover_blocked;		/* the rings were too full last turn */
	struct spool_stats rst;
	struct timespec recover_began;
};

/* ------------------------------------------------------------------ */
/* listeners                                                            */

/* port_of - the port of a bound or configured address (host order). */
static uint16_t port_of(const struct sockaddr_storage *ss)
{
	return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
					       : ((const struct sockaddr_in *)ss)->sin_port);
}

int intake_bind_listener(const struct cfg_listener *l, int same_port_as, bool reuseport,
			 char *err, size_t errlen)
{
	struct sockaddr_storage ss = l->addr.ss;
	socklen_t len = l->addr.len;
	int one = 1;
	int fd = socket(l->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	/* port 0: every intake thread's socket shares the port the first got */
	if (fd >= 0 && same_port_as >= 0 && port_of(&ss) == 0 &&
	    getsockname(same_port_as, (struct sockaddr *)&ss, &len) < 0) {
		close(fd);
		fd = -1;
	}
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (reuseport)
			setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (l->addr.ss.ss_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, (const struct sockaddr *)&ss, len) == 0 &&
		    listen(fd, 4096) == 0)
			return fd;
	}
	int e = errno;
	if (fd >= 0)
		close(fd);
	snprintf(err, errlen, "%s:%d: smtp-listener %s: %s",
		 l->origin.file ? l->origin.file : "default", l->origin.line, l->text,
		 strerror(e));
	return -e;
}

int intake_bind_listeners(const struct cfg *cfg, int *fds, const int *first, bool reuseport,
			  char *err, size_t errlen)
{
	const struct cfg_global *g = cfg_global(cfg);

	for (size_t i = 0; i < g->listener_count; i++) {
		int fd = intake_bind_listener(&g->listeners[i], first ? first[i] : -1, reuseport,
					      err, errlen);
		if (fd < 0) {
			for (size_t k = 0; k < i; k++)
				close(fds[k]);
			return fd;
		}
		fds[i] = fd;
	}
	return 0;
}

int intake_listen_addr(int fd, char *addr, size_t addrlen)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	const void *a = ss.ss_family == AF_INET6
		? (const void *)&((const struct sockaddr_in6 *)&ss)->sin6_addr
		: (const void *)&((const struct sockaddr_in *)&ss)->sin_addr;
	if (!inet_ntop(ss.ss_family, a, addr, (socklen_t)addrlen))
		return -errno;
	return port_of(&ss);
}

/* ------------------------------------------------------------------ */
/* reject log: written by the accounting writer                         */

static void on_reject(void *arg, const struct smtp_reject *r)
{
	struct intake *in = arg;
	enum acct_reject_kind kind;

	switch (r->kind) {
	case SMTP_REJECT_CONNECTION:
		kind = ACCT_REJECT_CONNECTION;
		break;
	case SMTP_REJECT_RECIPIENT:
		kind = ACCT_REJECT_RECIPIENT;
		break;
	case SMTP_REJECT_MESSAGE:
		kind = ACCT_REJECT_MESSAGE;
		break;
	case SMTP_REJECT_COMMAND:
		kind = ACCT_REJECT_COMMAND;
		break;
	default:
		BUG("unknown reject kind %d", (int)r->kind);
	}
	if (!acct_wants(in->acct, ACCT_REJECT, kind))
		return;
	struct acct_record rec = {
		.type = ACCT_REJECT,
		.reject_kind = kind,
		.rcv_source_ip = r->client_ip,
		.helo = r->helo,
		.rcv_smtp_user = r->auth_user,
		.orig = r->mail_from,
		.rcpt = r->rcpt,
		.reply = r->reply,
	};
	/* -ENOBUFS only with a million lines queued: a reject line is not mail */
	acct_emit(in->acct, in->index, &rec);
}

/* ------------------------------------------------------------------ */
/* ring helpers                                                         */

static struct io_uring_sqe *get_sqe(struct intake *in)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&in->ring);

	if (!sqe) {
		/* the SQ is full: push it to the kernel and take a slot */
		io_uring_submit(&in->ring);
		sqe = io_uring_get_sqe(&in->ring);
	}
	BUG_ON(!sqe);
	return sqe;
}

static int setup_buffers(struct intake *in, char *err, size_t errlen)
{
	in->bufs.count = BUF_COUNT;
	in->bufs.size = BUF_SIZE;
	in->bufs.group = BUF_GROUP;
	return uring_bufs_register(&in->ring, &in->bufs, err, errlen);
}

static void arm_accept(struct intake *in, size_t li)
{
	struct io_uring_sqe *sqe = get_sqe(in);

	io_uring_prep_multishot_accept(sqe, in->lst[li].fd, NULL, NULL,
				       SOCK_NONBLOCK | SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_ACCEPT, (uint32_t)li, 0));
	in->lst[li].armed = true;
}

/* listener_set - slot li serves fd as smtp-listener l says. */
static void listener_set(struct listener *ls, int fd, const struct cfg_listener *l)
{
	free(ls->source);
	ls->fd = fd;
	ls->live = true;
	ls->immediate_tls = l->immediate_tls;
	ls->source = l->source ? xstrdup(l->source) : NULL;
}

/* listener_add - a slot for fd (a free one, else a new one); its index. */
static size_t listener_add(struct intake *in, int fd, const struct cfg_listener *l)
{
	size_t li = 0;

	while (li < in->nlst && (in->lst[li].fd >= 0 || in->lst[li].armed))
		li++;
	if (li == in->nlst) {
		in->lst = xrealloc(in->lst, (in->nlst + 1) * sizeof(*in->lst));
		in->lst[in->nlst++] = (struct listener){ .fd = -1 };
	}
	listener_set(&in->lst[li], fd, l);
	return li;
}

/*
 * adopt_listeners - the listeners of next, on the sockets the reloading
 * thread gave (next_fds, one per listener): a socket the intake has
 * already keeps its accept; a new one gets one; one no longer given is
 * shut down, which ends its accept, and closed when that completes.
 */
static void adopt_listeners(struct intake *in, const struct cfg *next, const int *fds)
{
	const struct cfg_global *g = cfg_global(next);
	bool *kept = xcalloc(in->nlst + 1, sizeof(bool));
	size_t nold = in->nlst;

	for (size_t k = 0; k < g->listener_count; k++) {
		size_t li = 0;
		while (li < nold && !(in->lst[li].live && in->lst[li].fd == fds[k]))
			li++;
		if (li < nold) {
			listener_set(&in->lst[li], fds[k], &g->listeners[k]);
			kept[li] = true;
			continue;
		}
		li = listener_add(in, fds[k], &g->listeners[k]);
		if (li < nold)
			kept[li] = true;
		if (!in->stopping)
			arm_accept(in, li);
	}
	for (size_t li = 0; li < nold; li++) {
		struct listener *ls = &in->lst[li];
		if (!ls->live || kept[li])
			continue;
		ls->live = false;
		if (ls->armed) {
			shutdown(ls->fd, SHUT_RDWR);
		} else {
			close(ls->fd);
			ls->fd = -1;
		}
	}
	free(kept);
}

static void arm_recv(struct intake *in, struct conn *c)
{
	struct io_uring_sqe *sqe = get_sqe(in);

	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, c->hdr.slot, c->hdr.gen));
	c->recv_armed = true;
}

static void arm_tick(struct intake *in)
{
	struct io_uring_sqe *sqe = get_sqe(in);

	in->tick = (struct __kernel_timespec){ .tv_sec = 1 };
	io_uring_prep_timeout(sqe, &in->tick, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_TICK, 0, 0));
}

static void arm_outcomes(struct intake *in)
{
	struct io_uring_sqe *sqe = get_sqe(in);

	io_uring_prep_read(sqe, in->outcome_fd, &in->outcome_value,
			   sizeof(in->outcome_value), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_OUTCOME, 0, 0));
}


static void arm_stop(struct intake *in)
{
	struct io_uring_sqe *sqe = get_sqe(in);

	io_uring_prep_read(sqe, in->stop_fd, &in->stop_value, sizeof(in->stop_value), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_STOP, 0, 0));
}

/* ------------------------------------------------------------------ */
/* connections                                                          */

static struct conn *conn_get(struct intake *in, uint32_t slot, uint32_t gen)
{
	return slot_get(&in->conns, slot, gen);
}

/* A client address with live connections, and how many. */
struct client_ip {
	uint32_t live;
	char ip[INET6_ADDRSTRLEN];
};

static uint64_t ip_hash(const char *ip)
{
	return hash_mix(hash_str(HASH_SEED, ip));
}

static uint64_t client_ip_hash(const void *item)
{
	return ip_hash(((const struct client_ip *)item)->ip);
}

static bool client_ip_eq(const void *item, const void *key)
{
	return strcmp(((const struct client_ip *)item)->ip, key) == 0;
}

static uint32_t client_ip_live(const struct intake *in, const char *ip)
{
	const struct client_ip *e = hash_tab_find(&in->client_ips, ip_hash(ip), client_ip_eq, ip);

	return e ? e->live : 0;
}

/*
 * count_conn - <c> (its ip and group set) is live: count it.  Every
 * connection is counted at its accept, before anything can free it, and
 * taken out in conn_free.
 */
static void count_conn(struct intake *in, const struct conn *c)
{
	uint64_t h = ip_hash(c->ip);
	struct client_ip *e = hash_tab_find(&in->client_ips, h, client_ip_eq, c->ip);

	if (!e) {
		e = xcalloc(1, sizeof(*e));
		memcpy(e->ip, c->ip, sizeof(e->ip));
		hash_tab_add(&in->client_ips, h, e, client_ip_hash);
	}
	e->live++;
	if (c->group >= 0) {
		BUG_ON((size_t)c->group >= in->ngroup_live);
		in->group_live[c->group]++;
	}
}

static void uncount_conn(struct intake *in, const struct conn *c)
{
	uint64_t h = ip_hash(c->ip);
	struct client_ip *e = hash_tab_find(&in->client_ips, h, client_ip_eq, c->ip);

	BUG_ON(!e || !e->live);
	if (--e->live == 0)
		free(hash_tab_remove(&in->client_ips, h, client_ip_eq, c->ip, client_ip_hash));
	if (c->group >= 0) {
		BUG_ON((size_t)c->group >= in->ngroup_live || !in->group_live[c->group]);
		in->group_live[c->group]--;
	}
}

/* count_groups - group_live for the groups of <cfg>, from the connections. */
static void count_groups(struct intake *in, const struct cfg *cfg)
{
	size_t ngroups;

	cfg_source_groups(cfg, &ngroups);
	free(in->group_live);
	in->group_live = xcalloc(ngroups ? ngroups : 1, sizeof(*in->group_live));
	in->ngroup_live = ngroups;
	for (uint32_t i = 0; i < in->conns.count; i++) {
		const struct conn *c = slot_at(&in->conns, i);
		if (c && c->group >= 0) {
			BUG_ON((size_t)c->group >= ngroups);
			in->group_live[c->group]++;
		}
	}
}

static struct conn *conn_alloc(struct intake *in)
{
	struct conn *c = slot_alloc(&in->conns);

	c->fd = -1;
	c->in = in;
	return c;
}

static void note_body(struct intake *in, struct conn *c, bool in_body);

static void conn_free(struct intake *in, struct conn *c)
{
	uncount_conn(in, c);
	note_body(in, c, false);
	if (c->fd >= 0) {
		/* shutdown ends the armed multishot recv; close alone would not */
		shutdown(c->fd, SHUT_RDWR);
		close(c->fd);
	}
	smtp_session_free(c->session);
	cfg_unref(c->cfg);
	c->cfg = NULL;
	spool_spill_free(c->spill);
	c->spill = NULL;
	tls_conn_free(c->tls);
	sb_free(&c->out);
	sb_free(&c->inflight);
	sb_free(&c->pending_in);
	sb_free(&c->early_cipher);
	c->session = NULL;
	c->tls = NULL;
	slot_free(&in->conns, c);
}

static void conn_flush(struct intake *in, struct conn *c);
static void tls_progress(struct intake *in, struct conn *c);

/* conn_close - stop reading; free once nothing is in flight. */
static void conn_close(struct intake *in, struct conn *c)
{
	c->closing = true;
	note_body(in, c, false);	/* no message of its will come */
	conn_flush(in, c);
}

static void submit_send(struct intake *in, struct conn *c, const void *p,
			size_t len)
{
	struct io_uring_sqe *sqe = get_sqe(in);

	io_uring_prep_send(sqe, c->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, c->hdr.slot, c->hdr.gen));
	c->send_inflight = true;
}

/*
 * conn_flush - move queued replies towards the socket: through TLS when
 * active, keeping one send in flight.  Frees a closing connection whose
 * output is done and that awaits nothing.
 */
static void conn_flush(struct intake *in, struct conn *c)
{
	if (c->send_inflight)
		return;
	if (c->tls) {
		while (!c->handshaking && c->out.len) {
			ssize_t n = tls_conn_write(c->tls, c->out.buf, c->out.len);
			if (n <= 0)
				break;
			memmove(c->out.buf, c->out.buf + n, c->out.len - (size_t)n);
			c->out.len -= (size_t)n;
		}
		size_t len;
		const void *p = tls_conn_output(c->tls, &len);
		if (p && len) {
			submit_send(in, c, p, len);
			return;
		}
	} else {
		if (c->inflight_off == c->inflight.len && c->out.len) {
			struct strbuf t = c->inflight;
			c->inflight = c->out;
			c->out = t;
			sb_reset(&c->out);
			c->inflight_off = 0;
		}
		if (c->inflight_off < c->inflight.len) {
			submit_send(in, c, c->inflight.buf + c->inflight_off,
				    c->inflight.len - c->inflight_off);
			return;
		}
		if (c->starttls_pending && !c->closing) {
			/* the 220 has left: from here on every byte is TLS */
			c->starttls_pending = false;
			c->tls = tls_conn_new(in->tls, NULL);
			if (!c->tls) {
				c->closing = true;
			} else {
				c->handshaking = true;
				c->hs_since = in->now;
				c->starttls = true;
				if (c->early_cipher.len &&
				    tls_conn_feed(c->tls, c->early_cipher.buf,
						  c->early_cipher.len) < 0)
					c->closing = true;
				sb_free(&c->early_cipher);
				if (!c->closing)
					tls_progress(in, c);
				conn_flush(in, c);
				return;
			}
		}
	}
	if (c->closing && !c->awaiting_commit && !c->recv_armed)
		conn_free(in, c);
	else if (c->closing && !c->awaiting_commit && c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);	/* the recv completes; then free */
}

/* ------------------------------------------------------------------ */
/* messages: spool, commit, hand-off                                    */

/* head_len - the header section's length (with its empty line), capped. */
static size_t head_len(const char *body, size_t len)
{
	size_t h = dkim_header_end(body, len);

	return h < BODY_HEAD_MAX ? h : BODY_HEAD_MAX;
}

/*
 * keep_head - whether a message keeps its header section in memory: only
 * when an accounting file records header fields (acct_collect_headers).
 * Everything else of the body stays in the spool.
 */
static bool keep_head(const struct intake *in)
{
	const char *const *names;

	return in->acct && acct_header_names(in->acct, &names) > 0;
}

/*
 * build_msg - the message as the shards get it: envelope strings,
 * recipients and (keep_head) the header section of <body> (the first
 * <avail> octets of the body) in one allocation, and where the body is
 * in the spool (<ref>).
 */
static struct delivery_msg *build_msg(const struct intake *in, const struct spool_ref *ref,
				      int64_t queued,
				      const struct cfg_source *src, uint8_t ret,
				      const char *source_ip,
				      const char *mail_from, const char *envid,
				      const char *vmta, const char *job_id,
				      size_t nrcpt,
				      const char *(*rcpt_addr)(const void *, size_t),
				      const char *(*rcpt_orcpt)(const void *, size_t),
				      uint32_t (*rcpt_notify)(const void *, size_t),
				      uint32_t (*rcpt_index)(const void *, size_t),
				      const void *rcpts, const char *body, size_t avail,
				      bool has_8bit)
{
	size_t copy = keep_head(in) ? head_len(body, avail) : 0;
	/* what repeats is shared (util/intern.h); the rest is copied below */
	const char *sh_from = *mail_from ? intern_get(in->strings, mail_from) : NULL;
	const char *sh_ip = source_ip && *source_ip ? intern_get(in->strings, source_ip) : NULL;
	const char *sh_vmta = vmta ? intern_get(in->strings, vmta) : NULL;
	const char *sh_job = job_id ? intern_get(in->strings, job_id) : NULL;
	size_t strings = (sh_from ? 0 : strlen(mail_from) + 1) +
			 (envid ? strlen(envid) + 1 : 0) +
			 (source_ip && *source_ip && !sh_ip ? strlen(source_ip) + 1 : 0) +
			 (vmta && !sh_vmta ? strlen(vmta) + 1 : 0) +
			 (job_id && !sh_job ? strlen(job_id) + 1 : 0);
	for (size_t i = 0; i < nrcpt; i++) {
		strings += strlen(rcpt_addr(rcpts, i)) + 1;
		const char *o = rcpt_orcpt(rcpts, i);
		strings += o ? strlen(o) + 1 : 0;
	}
	struct delivery_msg *m = xmalloc(sizeof(*m) + nrcpt * sizeof(struct delivery_rcpt) +
					 strings + (copy ? copy + 1 : 0));
	struct delivery_rcpt *r = m->rcpt;
	char *p = (char *)(r + nrcpt);
#define PUT(dst, src)                                  \
	do {                                           \
		size_t l_ = strlen(src) + 1;           \
		memcpy(p, (src), l_);                  \
		(dst) = p;                             \
		p += l_;                               \
	} while (0)
	atomic_init(&m->refs, 1);
	m->where = *ref;		/* and so m->id */
	m->queued = queued;
	m->ret = ret != MAIL_RET_NONE ? ret
		 : src && src->dsn_return_default == CFG_DSN_RETURN_FULL ? MAIL_RET_FULL
									 : MAIL_RET_HDRS;
	m->no_dsn = src && src->suppress_local_dsn;
	m->dsn_plain_text = src && src->dsn_format == CFG_DSN_FORMAT_PLAIN_TEXT;
#define PUT_SHARED(dst, src, sh, bit)   \
	do {                            \
		if (sh) {               \
			(dst) = (sh);   \
			m->shared |= (bit); \
		} else if (src) {       \
			PUT(dst, src);  \
		}                       \
	} while (0)
	m->shared = 0;
	m->envid = m->vmta = m->job_id = m->source_ip = NULL;
	PUT_SHARED(m->mail_from, mail_from, sh_from, DELIVERY_SHARED_FROM);
	if (source_ip && *source_ip)
		PUT_SHARED(m->source_ip, source_ip, sh_ip, DELIVERY_SHARED_SOURCE_IP);
	if (envid)
		PUT(m->envid, envid);
	PUT_SHARED(m->vmta, vmta, sh_vmta, DELIVERY_SHARED_VMTA);
	PUT_SHARED(m->job_id, job_id, sh_job, DELIVERY_SHARED_JOB);
	m->nrcpt = (uint32_t)nrcpt;
	for (size_t i = 0; i < nrcpt; i++) {
		PUT(r[i].addr, rcpt_addr(rcpts, i));
		const char *o = rcpt_orcpt(rcpts, i);
		r[i].orcpt = NULL;
		if (o)
			PUT(r[i].orcpt, o);
		r[i].notify = rcpt_notify(rcpts, i);
		r[i].index = rcpt_index(rcpts, i);
	}
#undef PUT_SHARED
#undef PUT
	m->head = NULL;
	m->head_len = 0;
	if (copy) {
		memcpy(p, body, copy);
		p[copy] = '\0';
		m->head = p;
		m->head_len = (uint32_t)copy;
	}
	m->body_8bit = has_8bit;
	return m;
}

static const char *sess_addr(const void *v, size_t i)
{
	return ((const struct smtp_rcpt *)v)[i].addr;
}
static const char *sess_orcpt(const void *v, size_t i)
{
	return ((const struct smtp_rcpt *)v)[i].orcpt;
}
static uint32_t sess_notify(const void *v, size_t i)
{
	return ((const struct smtp_rcpt *)v)[i].notify;
}
static uint32_t sess_index(const void *v, size_t i)
{
	(void)v;
	return (uint32_t)i;
}
static const char *spool_addr(const void *v, size_t i)
{
	return ((const struct spool_rcpt *)v)[i].addr;
}
static const char *spool_orcpt(const void *v, size_t i)
{
	return ((const struct spool_rcpt *)v)[i].orcpt;
}
static uint32_t spool_notify(const void *v, size_t i)
{
	return ((const struct spool_rcpt *)v)[i].notify;
}
static uint32_t spool_index(const void *v, size_t i)
{
	return ((const struct spool_rcpt *)v)[i].index;
}

static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : "";
}

static struct overflow *grow_overflow(struct intake *in)
{
	if (in->n_overflow == in->cap_overflow) {
		in->cap_overflow = in->cap_overflow ? in->cap_overflow * 2 : 64;
		in->overflow = xrealloc(in->overflow,
					in->cap_overflow * sizeof(*in->overflow));
	}
	return in->overflow;
}

/*
 * handoff_body - one job per shard owning some of the recipients.  Jobs a
 * full ring refuses wait in the overflow list (back-pressure: while it is
 * not empty, new messages get 451 4.3.2).  Takes over the caller's
 * reference, and <body> (m->where.body_len octets, or NULL): it goes with
 * the job when one shard has every recipient and is not far behind, so
 * that shard sends it without reading it back from the spool
 * (shards/body.c); else it is freed.
 */
static void handoff_body(struct intake *in, struct delivery_msg *m, char *body, bool block)
{
	uint32_t nshards = shard_set_count(in->shards);
	/* the common message fits on the stack: no allocation per message */
	uint32_t shard_buf[STACK_RCPTS], count_buf[STACK_SHARDS] = { 0 };
	uint32_t *shard_of = m->nrcpt <= STACK_RCPTS ? shard_buf
			     : xmalloc(m->nrcpt * sizeof(uint32_t));
	uint32_t *count = nshards <= STACK_SHARDS ? count_buf
			  : xcalloc(nshards, sizeof(uint32_t));

	for (uint32_t i = 0; i < m->nrcpt; i++) {
		shard_of[i] = domain_map_shard(in->map, domain_of(m->rcpt[i].addr));
		count[shard_of[i]]++;
	}
	for (uint32_t s = 0; s < nshards; s++) {
		if (!count[s])
			continue;
		struct delivery_job *job = xmalloc(sizeof(*job) + count[s] * sizeof(uint32_t));
		job->msg = m;
		job->moves = NULL;
		job->body = NULL;
		if (count[s] == m->nrcpt &&
		    shard_backlog(in->shards, in->index, s) < HANDOFF_BACKLOG) {
			job->body = body;
			body = NULL;
		}
		job->nrcpt = 0;
		delivery_msg_ref(m);
		for (uint32_t i = 0; i < m->nrcpt; i++)
			if (shard_of[i] == s)
				job->rcpt[job->nrcpt++] = i;
		while (!shard_submit(in->shards, in->index, s, &job, 1)) {
			if (!block) {
				in->overflow = grow_overflow(in);
				in->overflow[in->n_overflow++] = (struct overflow){ s, job };
				break;
			}
			shard_flush_wakeups(in->shards, in->index);
			usleep(1000);
		}
	}
	delivery_msg_unref(m);
	free(body);
	if (shard_of != shard_buf)
		free(shard_of);
	if (count != count_buf)
		free(count);
}

/* handoff - handoff_body() of a message whose body is not at hand */
static void handoff(struct intake *in, struct delivery_msg *m, bool block)
{
	handoff_body(in, m, NULL, block);
}

/* on_moved - spool_maintain() moved a message: noted for the shards. */
static void on_moved(void *ctx, const struct spool_ref *from, const struct spool_ref *to)
{
	struct intake *in = ctx;

	(void)from;
	if (in->nmoved == in->cap_moved) {
		in->cap_moved = in->cap_moved ? in->cap_moved * 2 : 64;
		in->moved = xrealloc(in->moved, in->cap_moved * sizeof(*in->moved));
	}
	in->moved[in->nmoved++] = *to;
}

/*
 * intake_maintain - reclaim spool space; what it moved goes to every
 * shard as one move notice each, behind the jobs of those messages on the
 * same rings (or in the overflow list, in order), so a shard always reads
 * a body from where it is: the old copy stays until the next call.
 */
void intake_maintain(struct intake *in, int64_t now)
{
	struct spool_maint_stats ms = { 0 };

	in->nmoved = 0;
	spool_maintain(in->spool, now, on_moved, in, &ms);
	if (!in->nmoved)
		return;
	uint32_t nshards = shard_set_count(in->shards);
	struct delivery_moves *mv = xmalloc(sizeof(*mv) + in->nmoved * sizeof(mv->to[0]));
	atomic_init(&mv->refs, nshards);
	mv->n = (uint32_t)in->nmoved;
	memcpy(mv->to, in->moved, in->nmoved * sizeof(mv->to[0]));
	for (uint32_t s = 0; s < nshards; s++) {
		struct delivery_job *job = xcalloc(1, sizeof(*job));
		job->moves = mv;
		bool waiting = false;
		for (size_t k = 0; k < in->n_overflow; k++)
			waiting |= in->overflow[k].shard == s;
		if (waiting || !shard_submit(in->shards, in->index, s, &job, 1)) {
			in->overflow = grow_overflow(in);
			in->overflow[in->n_overflow++] = (struct overflow){ s, job };
		}
	}
	shard_flush_wakeups(in->shards, in->index);
}

/* retry_overflow - offer waiting jobs again, in order, per shard. */
static void retry_overflow(struct intake *in)
{
	size_t kept = 0;

	for (size_t i = 0; i < in->n_overflow; i++) {
		struct overflow *o = &in->overflow[i];
		bool blocked = false;
		/* keep per-shard order: once one job of a shard waits, its later ones wait */
		for (size_t k = 0; k < kept; k++)
			blocked |= in->overflow[k].shard == o->shard;
		if (!blocked && shard_submit(in->shards, in->index, o->shard, &o->job, 1))
			continue;
		in->overflow[kept++] = *o;
	}
	in->n_overflow = kept;
}

static void pending_push(struct pending_list *l, const struct pending_msg *pm)
{
	if (l->count == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->items = xrealloc(l->items, l->cap * sizeof(*l->items));
	}
	l->items[l->count++] = *pm;
}

/* batch_add - <pm> waits for the next commit; the first starts its clock. */
static void batch_add(struct intake *in, const struct pending_msg *pm)
{
	if (!in->next_batch.count)
		in->batch_opened_us = mono_us();
	pending_push(&in->next_batch, pm);
}

/* note_body - keep n_in_body true to <c>'s session. */
static void note_body(struct intake *in, struct conn *c, bool in_body)
{
	if (in_body == c->in_body)
		return;
	c->in_body = in_body;
	if (in_body)
		in->n_in_body++;
	else
		in->n_in_body--;
}

static void process_input(struct intake *in, struct conn *c);

/* ------------------------------------------------------------------ */
/* spool space and health                                               */

/* space_floor - free spool space never given to new mail. */
static uint64_t space_floor(const struct intake *in)
{
	return in->min_free_space + SPOOL_FLOOR;
}

static void sample_space(struct intake *in)
{
	uint64_t b;

	if (spool_free_bytes(in->spool, &b) == 0)
		in->free_bytes = b;
}

/* space_state - enter or leave "refusing for space", one log line each. */
static void space_state(struct intake *in, bool low, uint64_t need)
{
	if (low)
		in->space_wanted = need;
	if (low == in->space_low)
		return;
	in->space_low = low;
	char fields[96];
	snprintf(fields, sizeof(fields), "intake=%u free=%" PRIu64 " reserve=%" PRIu64 " refusing=%s",
		 in->index, in->free_bytes, space_floor(in), low ? "yes" : "no");
	if (low)
		log_msg(LOG_LEVEL_WARNING, "spool-low", fields,
			"intake %u: spool: %" PRIu64 " bytes free, %" PRIu64
			" kept free: new mail gets 452 4.3.1",
			in->index, in->free_bytes, space_floor(in));
	else
		log_msg(LOG_LEVEL_NOTICE, "spool-low", fields,
			"intake %u: spool: %" PRIu64 " bytes free: accepting mail again",
			in->index, in->free_bytes);
}

/*
 * space_for - may <need> more bytes go to the spool?  The running count
 * (the last sample minus what was appended since) decides, so a fast
 * client cannot outrun the 1 s sample; only a refusal costs a fresh
 * statvfs, so room that came back is seen at once.
 */
static bool space_for(struct intake *in, uint64_t need)
{
	uint64_t want = need + RECORD_SLACK + space_floor(in);

	if (in->free_bytes >= want)
		return true;
	sample_space(in);
	if (in->free_bytes >= want)
		return true;
	/* segments kept for reuse go before any mail is refused */
	if (spool_release_pool(in->spool)) {
		sample_space(in);
		if (in->free_bytes >= want)
			return true;
	}
	in->stats.refused_storage++;
	space_state(in, true, need);
	return false;
}

/*
 * data_memory - smtp-in-max-data-memory: what this thread's sessions hold
 * of messages being received, so many large messages at once cannot take
 * the host's memory.
 */
static bool data_memory(void *arg, int64_t delta)
{
	struct intake *in = arg;
	uint64_t budget = cfg_global(in->cfg)->smtp_in_max_data_memory;

	if (delta > 0 && budget && in->data_memory + (uint64_t)delta > budget) {
		in->stats.refused_memory++;
		return false;
	}
	in->data_memory += (uint64_t)delta;	/* wraps back for a shrink */
	return true;
}

/* storage_check - the session asks before MAIL (SIZE=) and DATA/BDAT. */
static bool storage_check(void *arg, uint64_t size)
{
	struct intake *in = arg;

	if (in->spool_dead || in->spool_err) {
		in->stats.refused_storage++;
		return false;
	}
	return space_for(in, size);
}

/*
 * commit_failed - the commit could not start (a write failed, nothing was
 * synced): its messages wait for the retry, in order, and new mail is
 * refused until one succeeds.  One log line when it starts failing.
 */
static void commit_failed(struct intake *in, int err)
{
	unsigned delay = 1;

	in->stats.spool_errors++;
	for (unsigned i = 0; i < in->commit_failures && delay < COMMIT_BACKOFF_MAX_S; i++)
		delay *= 2;
	if (delay > COMMIT_BACKOFF_MAX_S)
		delay = COMMIT_BACKOFF_MAX_S;
	in->commit_failures++;
	in->commit_retry_at = in->now + delay;
	if (!in->spool_err)
		log_msg(LOG_LEVEL_ERROR, "spool-error", NULL,
			"intake %u: spool: %s; new mail refused, retrying with backoff",
			in->index, spool_error(in->spool));
	in->spool_err = err;
}

static void commit_succeeded(struct intake *in)
{
	if (in->spool_err)
		log_msg(LOG_LEVEL_NOTICE, "spool-error", NULL,
			"intake %u: spool: writable again after %u failed commits",
			in->index, in->commit_failures);
	in->spool_err = 0;
	in->commit_failures = 0;
}

/*
 * conn_spill - the session streams a message's content past DATA_WINDOW:
 * to the connection's spill file in the spool (created on first use), or
 * (NULL) forget it.  The disk it takes is counted like a message's.
 */
static int conn_spill(void *arg, const void *p, size_t n)
{
	struct conn *c = arg;
	struct intake *in = c->in;
	int r;

	if (!p) {
		spool_spill_reset(c->spill);
		c->spill_8bit = false;
		return 0;
	}
	if (in->spool_dead || in->spool_err || !space_for(in, n))
		return -ENOSPC;
	if (!c->spill && (r = spool_spill_new(in->spool, &c->spill)) < 0)
		return r;
	r = spool_spill_write(c->spill, p, n);
	if (r < 0)
		return r;
	in->free_bytes -= in->free_bytes < n ? in->free_bytes : n;
	c->spill_8bit |= mem_has_8bit(p, n);
	return 0;
}

static int spill_read(const void *arg, uint64_t off, void *buf, size_t n)
{
	return spool_spill_read(arg, off, buf, n);
}

/*
 * on_message - the session finished a message: refuse it under
 * back-pressure or low disk, else append it to the spool (no fsync) and
 * park the connection until the turn's group commit completes.
 */
static void on_message(struct intake *in, struct conn *c)
{
	const struct smtp_message *msg = smtp_session_message(c->session);
	int status = 0;

	if (in->spool_dead)
		status = -EIO;
	else if (in->spool_err)
		status = in->spool_err == -ENOSPC ? -ENOSPC : -EIO;
	else if (in->n_overflow)
		status = -EAGAIN;
	else if (!space_for(in, msg->len + msg->spilled))
		status = -ENOSPC;
	if (status) {
		in->stats.rejected_messages++;
		smtp_session_message_result(c->session, status, NULL, &c->out);
		return;
	}

	/* a report to a processor address, recorded and suppressed, is done;
	 * suppressed recipients (suppression-action bounce) are left out */
	struct smtp_message kept, forwarded;
	struct smtp_rcpt forward_rcpt;
	const char *done = NULL, *forward_to = NULL;
	/* (a report is small: a streamed message is never one) */
	enum fbl_verdict v = in->fbl && !msg->spilled
				     ? fbl_on_message(in->fbl, in->index, msg, &forward_to)
				     : FBL_DELIVER;
	if (v == FBL_CONSUMED)
		done = "report";
	else if (v == FBL_KEPT)
		done = "kept, not a report";
	else if (v == FBL_FORWARD) {
		/* forward-unmatched-to / forward-errors-to: the same message,
		 * spooled for that address only */
		forwarded = *msg;
		forward_rcpt = (struct smtp_rcpt){ .addr = forward_to };
		forwarded.rcpts = &forward_rcpt;
		forwarded.rcpt_count = 1;
		msg = &forwarded;
	}
	if (!done && in->fbl &&
	    !(msg = fbl_drop_suppressed(in->fbl, in->index, msg, &kept))->rcpt_count)
		done = "suppressed";
	if (done) {
		in->stats.messages++;
		smtp_session_message_result(c->session, 0, done, &c->out);
		return;
	}

	/* chosen by the session (X-Virtual-MTA:, pattern-list, default) */
	const char *vmta = msg->virtual_mta;
	struct spool_rcpt rcpt_buf[STACK_RCPTS];
	struct spool_rcpt *rcpt = msg->rcpt_count <= STACK_RCPTS
				  ? rcpt_buf : xcalloc(msg->rcpt_count, sizeof(*rcpt));
	for (size_t i = 0; i < msg->rcpt_count; i++)
		rcpt[i] = (struct spool_rcpt){
			.addr = msg->rcpts[i].addr,
			.orcpt = msg->rcpts[i].orcpt,
			.notify = msg->rcpts[i].notify,
		};
	struct spool_envelope env = {
		.mail_from = msg->mail_from,
		.envid = msg->envid,
		.source_ip = msg->client_ip,
		.vmta = vmta,
		.job_id = msg->job_id,
		.auth_user = msg->auth_user,
		.size = msg->size,
		.ret = (uint8_t)msg->ret,
		.body_type = (uint8_t)msg->body,
		.smtputf8 = msg->smtputf8,
		.rcpt = rcpt,
		.nrcpt = msg->rcpt_count,
	};
	struct pending_msg pm = { .slot = c->hdr.slot, .gen = c->hdr.gen };
	snprintf(pm.client_ip, sizeof(pm.client_ip), "%s", c->ip);
	snprintf(pm.local_ip, sizeof(pm.local_ip), "%s", c->local_ip);
	/* DKIM (engine/signing.c): signed once, the signatures stored on top */
	struct strbuf signed_copy = { 0 };
	const char *data = msg->data;
	size_t len = msg->len;
	struct signing_tail tail = {
		.len = msg->spilled, .read = spill_read, .arg = c->spill,
	};
	if (signing_apply(in->cfg, vmta, msg, &tail, (int64_t)in->now, &signed_copy) > 0) {
		data = signed_copy.buf;
		len = signed_copy.len;
	}
	int rc = spool_append_spilled(in->spool, &env, data, len,
				      msg->spilled ? c->spill : NULL, &pm.ref);
	if (rcpt != rcpt_buf)
		free(rcpt);
	if (rc < 0) {
		sb_free(&signed_copy);
		in->stats.rejected_messages++;
		if (rc == -ENOSPC) {
			/* the disk filled behind our back: count from zero */
			in->free_bytes = 0;
			in->stats.refused_storage++;
			space_state(in, true, msg->len);
		}
		smtp_session_message_result(c->session, rc == -ENOSPC ? -ENOSPC : -EIO,
					    NULL, &c->out);
		return;
	}
	in->free_bytes -= in->free_bytes < pm.ref.len ? in->free_bytes : pm.ref.len;
	if (in->space_low)
		space_state(in, false, 0);
	/* the body stays in the spool: the shards read it back to send it */
	bool has_8bit = (msg->spilled && c->spill_8bit) || mem_has_8bit(data, len);
	pm.msg = build_msg(in, &pm.ref, (int64_t)in->now, msg->source, (uint8_t)msg->ret,
			   msg->client_ip, msg->mail_from, msg->envid,
			   vmta, msg->job_id, msg->rcpt_count, sess_addr,
			   sess_orcpt, sess_notify, sess_index, msg->rcpts,
			   data, len, has_8bit);
	/*
	 * The shard that sends it would read it back and check its CRC; a
	 * copy now costs less.  Not a streamed body (it is not in memory),
	 * nor a big one (HANDOFF_BODY_MAX).
	 */
	if (!msg->spilled && len <= HANDOFF_BODY_MAX) {
		pm.body = xmalloc(len ? len : 1);
		memcpy(pm.body, data, len);
	}
	sb_free(&signed_copy);
	batch_add(in, &pm);
	c->awaiting_commit = true;
}


/* ------------------------------------------------------------------ */
/* DSNs                                                                 */

/* What one recipient's DSN needs; reports are owned by the caller. */
struct dsn_due {
	const struct delivery_report *report;
	enum dsn_kind kind;
	bool expired;
};

/*
 * dsn_wanted - RFC 3461: NOTIFY absent means FAILURE only (and DELAY at
 * our discretion: we do not); NEVER means none; never to a null sender.
 */
static bool dsn_wanted(const struct intake *in, const struct delivery_outcome *o,
		       enum dsn_kind *kind)
{
	const struct delivery_report *r = o->report;

	if (!r || !r->msg || !cfg_global(in->cfg)->deliver_bounces ||
	    !r->msg->mail_from[0] || r->msg->no_dsn)
		return false;
	uint32_t notify = r->msg->rcpt[r->rcpt].notify;
	if (notify & MAIL_NOTIFY_NEVER)
		return false;
	if (o->kind == DELIVERY_BOUNCED || o->kind == DELIVERY_EXPIRED) {
		*kind = DSN_FAILURE;
		/* (a bounce rule's "action delete" left the shard without a report) */
		return !notify || (notify & MAIL_NOTIFY_FAILURE);
	}
	if (o->kind == DELIVERY_DEFERRED && r->delay_notice) {
		*kind = DSN_DELAY;
		return (notify & MAIL_NOTIFY_DELAY) != 0;
	}
	return false;
}

/*
 * read_original - the body a DSN returns, from the spool: all of it
 * (*full) up to SPOOL_RESIDENT_MAX, else its header section (at most
 * BODY_HEAD_MAX octets).  NULL when the spool cannot give it (the DSN
 * goes out without it).  The caller frees.
 */
static char *read_original(struct intake *in, const struct spool_ref *ref, size_t *len,
			   bool *full)
{
	if (ref->body_len <= SPOOL_RESIDENT_MAX) {
		char *b = xmalloc(ref->body_len + 1);
		if (spool_read(in->spool, ref, b, ref->body_len + 1) < 0) {
			free(b);
			return NULL;
		}
		b[ref->body_len] = '\0';
		*len = ref->body_len;
		*full = true;
		return b;
	}
	char *seg = spool_segment_path(spool_dir(in->spool), ref->seg);
	int fd = open(seg, O_RDONLY | O_CLOEXEC);
	free(seg);
	if (fd < 0)
		return NULL;
	char *b = xmalloc(BODY_HEAD_MAX + 1);
	ssize_t got = pread(fd, b, BODY_HEAD_MAX, (off_t)(ref->off + ref->body_off));
	close(fd);
	if (got <= 0) {
		free(b);
		return NULL;
	}
	*len = head_len(b, (size_t)got);
	b[*len] = '\0';
	*full = false;
	return b;
}

/*
 * queue_dsn - compose one DSN for the recipients in due[] (one message,
 * one kind), append it to the spool from the null sender and let it ride
 * the next group commit with the journal records that caused it: the
 * bounce is final only together with its notice.  Then it goes through
 * the normal queues like any message.
 */
static void queue_dsn(struct intake *in, const struct dsn_due *due, size_t n)
{
	const struct delivery_msg *m = due[0].report->msg;
	struct dsn_rcpt rbuf[STACK_RCPTS];
	struct dsn_rcpt *rc = n <= STACK_RCPTS ? rbuf : xcalloc(n, sizeof(*rc));
	char (*diag)[DELIVERY_DIAG_MAX] = xmalloc(n * sizeof(*diag));
	char (*status)[12] = xmalloc(n * sizeof(*status));
	struct strbuf text = { 0 };
	char err[256];

	for (size_t i = 0; i < n; i++) {
		const struct delivery_report *r = due[i].report;
		const struct delivery_rcpt *dr = &m->rcpt[r->rcpt];
		bool remote = r->code && !r->local;
		snprintf(diag[i], sizeof(diag[i]), "%d %s %s", r->code, r->status, r->text);
		/* RFC 3464: a failed action has a 5.X.X status, delayed 4.X.X */
		if (due[i].expired)
			snprintf(status[i], sizeof(status[i]), "%s", DELIVERY_EXPIRED_STATUS);
		else if (r->status[0])
			snprintf(status[i], sizeof(status[i]), "%c%s",
				 due[i].kind == DSN_DELAY ? '4' : '5', r->status + 1);
		else
			snprintf(status[i], sizeof(status[i]), "%s",
				 due[i].kind == DSN_DELAY ? "4.0.0" : "5.0.0");
		rc[i] = (struct dsn_rcpt){
			.final_rcpt = dr->addr,
			.orcpt = dr->orcpt,
			.status = status[i],
			.remote_mta = r->mx[0] ? r->mx : r->ip[0] ? r->ip : NULL,
			.diag = remote ? diag[i] : NULL,
			.local_reason = remote ? NULL : r->text,
			.last_attempt = r->time_logged,
			.will_retry_until = due[i].kind == DSN_DELAY ? r->retry_until : 0,
		};
	}
	/*
	 * The original comes back from the spool (it is still there: the
	 * journal records that finish it follow this DSN); a big one returns
	 * as its headers only.
	 */
	struct spool_ref where;
	char *orig = NULL;
	size_t orig_len = 0;
	bool orig_full = false;
	if (spool_locate(in->spool, m->id, &where) == 0)
		orig = read_original(in, &where, &orig_len, &orig_full);
	struct dsn_params p = {
		.kind = due[0].kind,
		.reporting_mta = in->hostname,
		.to = m->mail_from,
		.envid = m->envid,
		.arrival = m->queued,
		.now = (int64_t)in->now,
		.return_full = m->ret == MAIL_RET_FULL && orig_full,
		.plain_text = m->dsn_plain_text,
		.received_from_mta = m->source_ip,
		.original = orig ? orig : "",
		.original_len = orig_len,
		.rcpt = rc,
		.nrcpt = n,
		.unique = (m->id << 16) ^ (uint64_t)in->stats.dsns,
	};
	int err_rc = dsn_build(&p, &text, err, sizeof(err));
	if (err_rc == 0) {
		struct spool_rcpt to = { .addr = m->mail_from, .notify = MAIL_NOTIFY_NEVER };
		struct spool_envelope env = {
			.mail_from = "",
			.vmta = m->vmta,
			.size = text.len,
			.body_type = p.return_full && m->body_8bit ? MAIL_BODY_8BITMIME
								   : MAIL_BODY_7BIT,
			.rcpt = &to,
			.nrcpt = 1,
		};
		struct pending_msg pm = { .slot = UINT32_MAX, .local = true };
		err_rc = spool_append(in->spool, &env, text.buf, text.len, &pm.ref);
		if (err_rc == 0) {
			pm.msg = build_msg(in, &pm.ref, (int64_t)in->now, NULL, MAIL_RET_HDRS,
					   NULL, "", NULL, m->vmta, NULL, 1, spool_addr,
					   spool_orcpt, spool_notify, spool_index, &to, text.buf,
					   text.len, mem_has_8bit(text.buf, text.len));
			batch_add(in, &pm);
			in->stats.dsns++;
		} else {
			snprintf(err, sizeof(err), "spool: %s", strerror(-err_rc));
		}
	}
	if (err_rc < 0) {
		/* the bounce stands and is in the accounting; only its notice is lost */
		in->stats.dsn_failures++;
		log_msg(LOG_LEVEL_ERROR, "dsn", NULL, "no DSN for message %016" PRIx64 " to <%s>: %s",
			m->id, m->mail_from, err);
	}
	sb_free(&text);
	free(orig);
	free(diag);
	free(status);
	if (rc != rbuf)
		free(rc);
}

/*
 * queue_notice - backoff-notify: a short message from the null sender to
 * the queue's backoff-notify address saying it entered backoff and why,
 * spooled like a DSN (durable with the next group commit).
 */
static void queue_notice(struct intake *in, const struct delivery_report *r)
{
	char domain[320], when[32];
	const char *slash = strrchr(r->queue, '/');
	size_t dlen = slash ? (size_t)(slash - r->queue) : strlen(r->queue);

	snprintf(domain, sizeof(domain), "%.*s", (int)dlen, r->queue);
	const struct cfg_queue *q = cfg_queue_lookup(in->cfg, domain, slash ? slash + 1 : NULL);
	const char *to = q ? q->backoff_notify : NULL;
	if (!to || !*to)
		return;	/* a reload took it away meanwhile */
	time_t t = (time_t)r->time_logged;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%a, %d %b %Y %H:%M:%S +0000", &tm);

	struct strbuf text = { 0 };
	sb_printf(&text,
		  "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
		  "To: <%s>\r\n"
		  "Subject: coremta %s: queue %s entered backoff mode\r\n"
		  "Date: %s\r\n"
		  "Message-ID: <backoff.%lld.%llu@%s>\r\n"
		  "Auto-Submitted: auto-generated\r\n"
		  "MIME-Version: 1.0\r\n"
		  "Content-Type: text/plain; charset=us-ascii\r\n"
		  "\r\n"
		  "The queue %s on %s entered backoff mode at %s.\r\n"
		  "Reason: %s\r\n",
		  in->hostname, to, in->hostname, r->queue, when, (long long)t,
		  (unsigned long long)in->stats.notices, in->hostname, r->queue, in->hostname,
		  when, r->text[0] ? r->text : "(none given)");
	struct spool_rcpt rcpt = { .addr = to, .notify = MAIL_NOTIFY_NEVER };
	struct spool_envelope env = {
		.mail_from = "",
		.size = text.len,
		.body_type = MAIL_BODY_7BIT,
		.rcpt = &rcpt,
		.nrcpt = 1,
	};
	struct pending_msg pm = { .slot = UINT32_MAX, .local = true };
	int rc = spool_append(in->spool, &env, text.buf, text.len, &pm.ref);
	if (rc == 0) {
		pm.msg = build_msg(in, &pm.ref, (int64_t)in->now, NULL, MAIL_RET_HDRS, NULL,
				   "", NULL, NULL, NULL, 1, spool_addr, spool_orcpt, spool_notify,
				   spool_index, &rcpt, text.buf, text.len, false);
		batch_add(in, &pm);
		in->stats.notices++;
	} else {
		log_msg(LOG_LEVEL_ERROR, "backoff-notice", NULL,
			"no backoff notice for %s to <%s>: spool: %s", r->queue, to, strerror(-rc));
	}
	sb_free(&text);
}

static int due_cmp(const void *a, const void *b)
{
	const struct dsn_due *x = a, *y = b;
	uint64_t mx = x->report->msg->id, my = y->report->msg->id;

	if (mx != my)
		return mx < my ? -1 : 1;
	if (x->kind != y->kind)
		return x->kind < y->kind ? -1 : 1;
	return x->report->rcpt < y->report->rcpt ? -1 : x->report->rcpt > y->report->rcpt;
}

/* queue_dsns - one DSN per message and kind among this batch's outcomes. */
static void queue_dsns(struct intake *in, struct dsn_due *due, size_t n)
{
	qsort(due, n, sizeof(*due), due_cmp);
	for (size_t i = 0; i < n;) {
		size_t k = i + 1;
		while (k < n && due[k].report->msg == due[i].report->msg &&
		       due[k].kind == due[i].kind)
			k++;
		queue_dsn(in, due + i, k - i);
		i = k;
	}
}

/*
 * take_outcomes - journal what the shards finished; durable with the next
 * group commit (until then a crash redelivers: at-least-once).
 */
static void take_outcomes(struct intake *in)
{
	struct delivery_outcome out[256];
	struct dsn_due due[256];
	size_t n;

	while ((n = shard_take_outcomes(in->shards, in->index, out, ARRAY_SIZE(out))) > 0) {
		size_t ndue = 0;
		/*
		 * DSNs are appended before the journal records that end their
		 * recipients: whatever a crash keeps, a bounce never loses its
		 * notice (at worst a retried bounce sends a second one).
		 */
		for (size_t i = 0; i < n; i++) {
			enum dsn_kind kind;
			if (!in->spool_dead && dsn_wanted(in, &out[i], &kind))
				due[ndue++] = (struct dsn_due){
					out[i].report, kind, out[i].kind == DELIVERY_EXPIRED
				};
		}
		if (ndue)
			queue_dsns(in, due, ndue);
		for (size_t i = 0; i < n; i++) {
			if (out[i].kind == DELIVERY_NOTICE) {
				if (!in->spool_dead)
					queue_notice(in, out[i].report);
			} else if (out[i].kind != DELIVERY_DEFERRED) {
				/* the final kinds are the spool's outcome values */
				int rc = spool_journal(in->spool, out[i].msg_id, out[i].rcpt,
						       (enum spool_outcome)out[i].kind);
				if (rc == 0 && !in->journal_dirty) {
					in->journal_dirty = true;
					in->journal_dirty_ms = mono_ms();
				}
			}
			delivery_report_free(out[i].report);
		}
	}
	if (in->acct)
		acct_flush(in->acct, in->index);
}

/* rcpt_check - the suppression store at RCPT time (engine/fbl.h) */
static const char *rcpt_check(void *arg, const struct cfg_source *src,
			      const char *mail_from, const char *rcpt)
{
	struct intake *in = arg;

	return fbl_rcpt_check(in->fbl, in->index, src, mail_from, rcpt);
}

/*
 * auth_limit - the session's smtp-max-auth-failure-rate check: limit->count
 * failures per limit->period_s per client address, then 421 until the
 * bucket refills.
 */
static bool auth_limit(void *arg, const struct sockaddr *peer, const struct cfg_rate *limit,
		       bool failed)
{
	struct intake *in = arg;
	unsigned char key[16] = { 0 };

	if (!peer)
		return false;
	if (peer->sa_family == AF_INET)
		memcpy(key, &((const struct sockaddr_in *)peer)->sin_addr, 4);
	else if (peer->sa_family == AF_INET6)
		memcpy(key, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16);
	else
		return false;
	uint64_t h = hash_bytes(HASH_SEED, key, sizeof(key));
	if (!in->auth_slots)
		in->auth_slots = xcalloc(AUTH_SLOTS, sizeof(*in->auth_slots));
	struct auth_slot *a = &in->auth_slots[h % AUTH_SLOTS];
	double cap = (double)limit->count;
	time_t now = time(NULL);
	if (!a->used || memcmp(a->addr, key, sizeof(key)) != 0) {
		if (!failed)
			return false;
		*a = (struct auth_slot){ .used = true, .tokens = cap, .stamp = now };
		memcpy(a->addr, key, sizeof(key));
	}
	a->tokens += (double)(now - a->stamp) * cap / (double)limit->period_s;
	if (a->tokens > cap)
		a->tokens = cap;
	a->stamp = now;
	if (failed)
		a->tokens -= 1.0;
	return a->tokens < (failed ? 0.0 : 1.0);
}

/* emit_receipts - r records: one per recipient of an accepted message. */
static void emit_receipts(struct intake *in, const struct pending_msg *pm)
{
	const struct delivery_msg *m = pm->msg;

	if (!acct_wants(in->acct, ACCT_RECEIPT, 0))
		return;
	struct acct_header_field hf[ACCT_HEADERS_MAX];
	size_t nh = acct_collect_headers(in->acct, m->head, m->head_len, hf, &in->hdr_text);
	for (uint32_t i = 0; i < m->nrcpt; i++) {
		struct acct_record rec = {
			.type = ACCT_RECEIPT,
			.time_queued = m->queued,
			.orig = m->mail_from,
			.rcpt = m->rcpt[i].addr,
			.orcpt = m->rcpt[i].orcpt,
			.src_type = "smtp",
			.src_mta = pm->client_ip,
			.dlv_size = m->where.body_len,
			.vmta = m->vmta,
			.job_id = m->job_id,
			.env_id = m->envid,
			.rcv_source_ip = pm->client_ip,
			.rcv_destination_ip = pm->local_ip,
			.header_count = nh,
			.headers = nh ? hf : NULL,
		};
		acct_emit(in->acct, in->index, &rec);
	}
}

/*
 * journal_sync_due - milliseconds until the journaled outcomes must be
 * synced (0: now).  A journal fsync per commit doubles the syncs of a
 * relay (segment and journal, each a data write, an inode write and a
 * device flush), yet what it protects is small: an outcome written and
 * not synced survives a killed process, and only a machine crash loses
 * it, whose recipient is then delivered again (DESIGN.md: at-least-once).
 */
static uint64_t journal_sync_due(const struct intake *in)
{
	uint64_t delay = cfg_global(in->cfg)->journal_sync_delay, waited;

	if (!delay || in->stopping || in->spool_dead)
		return 0;
	waited = mono_ms() - in->journal_dirty_ms;
	return waited >= delay ? 0 : delay - waited;
}

/*
 * commit_should_wait - hold next_batch back for the bodies on their way.
 * A message that ends while a commit runs waits for that commit and then
 * for its own; one that ends within a commit's time after the batch
 * opened is answered no later if the batch waits for it, and shares its
 * fsync.  So the wait lasts while some session is receiving a body, at
 * most group-commit-wait and never beyond the last commit's duration
 * after the batch's first message: the messages already in the batch
 * wait at most one commit's time more, and a device whose fsync is quick
 * makes the wait as short.
 */
static bool commit_should_wait(struct intake *in)
{
	uint64_t wait = cfg_global(in->cfg)->group_commit_wait;

	if (!wait || !in->next_batch.count || !in->n_in_body || in->stopping)
		return false;
	if (wait > in->last_commit_us)
		wait = in->last_commit_us;
	uint64_t until = in->batch_opened_us + wait;
	if (mono_us() >= until)
		return false;
	in->commit_wait_until = until;
	return true;
}

/* start_commit - one group commit for every message appended so far. */
static void finish_commit(struct intake *in);
static void publish(struct intake *in, bool usage);

static void start_commit(struct intake *in)
{
	const struct spool_sync *fds;
	bool sync_journal = in->journal_dirty && journal_sync_due(in) == 0;

	in->commit_wait_until = 0;
	if (in->commit_inflight || (!in->next_batch.count && !sync_journal)) {
		/* written now, so a killed process loses none of them */
		if (!in->commit_inflight && in->journal_dirty && !in->spool_dead)
			(void)spool_journal_flush(in->spool);
		return;
	}
	if (in->spool_err && !in->spool_dead && !in->stopping &&
	    in->now < in->commit_retry_at)
		return;		/* the batch waits for the retry */
	if (commit_should_wait(in)) {
		if (in->journal_dirty && !in->spool_dead)
			(void)spool_journal_flush(in->spool);	/* as above */
		return;
	}
	int n = spool_commit_begin(in->spool, sync_journal, &fds);
	if (n < 0 && !in->spool_dead && !in->stopping) {
		/* nothing was synced or changed: the same batch tries again */
		commit_failed(in, n);
		return;
	}
	if (sync_journal)
		in->journal_dirty = false;
	struct pending_list t = in->commit_batch;
	in->commit_batch = in->next_batch;
	in->next_batch = t;
	in->next_batch.count = 0;
	in->commit_inflight = true;
	in->commit_result = 0;
	if (n < 0) {
		/* a dead spool, or stopping: the batch fails as a whole */
		in->commit_result = n;
		in->commit_outstanding = 0;
		in->commit_inflight = false;
		finish_commit(in);
		return;
	}
	in->commit_outstanding = n;
	in->commit_began_us = mono_us();
	for (int i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = get_sqe(in);
		io_uring_prep_fsync(sqe, fds[i].fd,
				    fds[i].datasync ? IORING_FSYNC_DATASYNC : 0);
		io_uring_sqe_set_data64(sqe, ud_pack(OP_FSYNC, 0, 0));
	}
	if (n == 0) {
		spool_commit_done(in->spool, 0);
		commit_succeeded(in);
		in->commit_inflight = false;
		finish_commit(in);
	}
}

/*
 * finish_commit - the batch is durable (or failed): answer every waiting
 * client and hand the messages to the shards.
 */
static void finish_commit(struct intake *in)
{
	struct pending_list *b = &in->commit_batch;

	in->stats.commits++;
	for (size_t i = 0; i < b->count; i++) {
		struct pending_msg *pm = &b->items[i];
		struct conn *c = conn_get(in, pm->slot, pm->gen);
		if (in->commit_result == 0) {
			in->stats.messages++;
			in->recipients += pm->msg->nrcpt;
			if (!pm->local)
				emit_receipts(in, pm);
			handoff_body(in, pm->msg, pm->body, false);
		} else {
			/* not durable: the client keeps the message and retries */
			in->stats.rejected_messages++;
			delivery_msg_unref(pm->msg);
			free(pm->body);
		}
		pm->msg = NULL;
		pm->body = NULL;
		if (!c)
			continue;
		char qid[24];
		snprintf(qid, sizeof(qid), "%016" PRIx64, pm->ref.id);
		c->awaiting_commit = false;
		smtp_session_message_result(c->session, in->commit_result, qid, &c->out);
		if (c->closing) {
			conn_flush(in, c);
			continue;
		}
		process_input(in, c);
		conn_flush(in, c);
	}
	b->count = 0;
	shard_flush_wakeups(in->shards, in->index);
	publish(in, false);
}

/* ------------------------------------------------------------------ */
/* input                                                                */

/* note_yielded - name <c> for the next turn's slices, once. */
static void note_yielded(struct intake *in, struct conn *c)
{
	if (c->in_yield_list)
		return;
	if (in->n_yielded == in->cap_yielded) {
		in->cap_yielded = in->cap_yielded ? 2 * in->cap_yielded : 16;
		in->yielded = xrealloc(in->yielded, in->cap_yielded * sizeof(*in->yielded));
	}
	in->yielded[in->n_yielded++] = (struct conn_ref){ c->hdr.slot, c->hdr.gen };
	c->in_yield_list = true;
}

/*
 * feed_session - run the session over buf; returns how much it took.
 * Events other than NONE stop the walk: a message waits for its commit,
 * a yield waits for the next turn, STARTTLS and CLOSE change the state.
 */
static size_t feed_session(struct intake *in, struct conn *c, const char *buf,
			   size_t len)
{
	size_t off = 0;

	while (!c->closing && !c->awaiting_commit) {
		size_t used = 0;
		enum smtp_event ev = smtp_session_input(c->session, buf + off,
							len - off, &used, &c->out);
		off += used;
		switch (ev) {
		case SMTP_EV_NONE:
			return off;
		case SMTP_EV_YIELD:
			c->yielded = true;
			note_yielded(in, c);
			return off;
		case SMTP_EV_MESSAGE:
			on_message(in, c);
			continue;
		case SMTP_EV_STARTTLS:
			if (!in->tls) {
				conn_close(in, c);
				return len;
			}
			/*
			 * The 220 goes out in plaintext first (conn_flush starts
			 * TLS once it has left), and RFC 3207 6: nothing read in
			 * plaintext after STARTTLS may be used.
			 */
			c->starttls_pending = true;
			return len;
		case SMTP_EV_CLOSE:
			conn_close(in, c);
			return len;
		default:
			BUG("unknown SMTP session event %d", (int)ev);
		}
	}
	return off;
}

/* feed - feed_session, then note whether a body is on its way. */
static size_t feed(struct intake *in, struct conn *c, const char *buf,
		   size_t len)
{
	size_t used = feed_session(in, c, buf, len);

	note_body(in, c, !c->closing && c->session && smtp_session_in_body(c->session));
	return used;
}

/* note_line - start or stop the clock of a command line in progress. */
static void note_line(const struct intake *in, struct conn *c)
{
	if (!c->session || !smtp_session_in_line(c->session))
		c->line_since = 0;
	else if (!c->line_since)
		c->line_since = in->now;
}

/* process_input - hand plaintext the session has not taken yet to it. */
static void process_input(struct intake *in, struct conn *c)
{
	if (!c->pending_in.len || c->closing || c->awaiting_commit)
		return;
	c->yielded = false;
	size_t used = feed(in, c, c->pending_in.buf, c->pending_in.len);
	if (c->starttls_pending) {
		sb_reset(&c->pending_in);
		return;
	}
	memmove(c->pending_in.buf, c->pending_in.buf + used, c->pending_in.len - used);
	c->pending_in.len -= used;
	note_line(in, c);
}

/*
 * serve_yielded - the next slice for each connection that yielded before
 * this turn; one that yields again waits for the next turn, as before.
 */
static void serve_yielded(struct intake *in)
{
	struct conn_ref *list = in->yielded;
	size_t n = in->n_yielded, cap = in->cap_yielded;

	in->yielded = in->yielded_spare;
	in->cap_yielded = in->cap_yielded_spare;
	in->n_yielded = 0;
	for (size_t i = 0; i < n; i++) {
		struct conn *c = conn_get(in, list[i].slot, list[i].gen);
		if (!c)
			continue;	/* freed since */
		c->in_yield_list = false;
		if (c->yielded && !c->closing) {
			process_input(in, c);
			conn_flush(in, c);
		}
	}
	in->yielded_spare = list;
	in->cap_yielded_spare = cap;
}

/* take_plain - new plaintext from the client. */
static void take_plain(struct intake *in, struct conn *c, const char *buf,
		       size_t len)
{
	if (c->pending_in.len || c->awaiting_commit || c->yielded) {
		if (c->pending_in.len + len > MAX_PENDING_IN) {
			/* a client that pipelines megabytes past a pending reply */
			conn_close(in, c);
			return;
		}
		sb_add(&c->pending_in, buf, len);
		process_input(in, c);
		return;
	}
	size_t used = feed(in, c, buf, len);
	if (used < len && !c->closing && !c->starttls_pending)
		sb_add(&c->pending_in, buf + used, len - used);
	note_line(in, c);
}

static void tls_progress(struct intake *in, struct conn *c)
{
	if (c->handshaking) {
		int rc = tls_conn_handshake(c->tls);
		if (rc == -EAGAIN)
			return;
		if (rc < 0) {
			c->closing = true;
			sb_reset(&c->out);
			return;
		}
		c->handshaking = false;
		if (c->starttls)
			smtp_session_tls_started(c->session);
	}
	char plain[TLS_READ_CHUNK];
	for (;;) {
		ssize_t n = tls_conn_read(c->tls, plain, sizeof(plain));
		if (n > 0) {
			take_plain(in, c, plain, (size_t)n);
			if (c->closing)
				return;
			continue;
		}
		if (n != -EAGAIN)
			conn_close(in, c);	/* close_notify or a TLS failure */
		return;
	}
}

static void on_recv(struct intake *in, struct io_uring_cqe *cqe, uint32_t slot,
		    uint32_t gen)
{
	struct conn *c = conn_get(in, slot, gen);
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;
	unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

	if (c && !(cqe->flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	if (!c) {
		if (has_buf)
			uring_bufs_recycle(&in->bufs, bid);
		return;
	}
	if (cqe->res > 0 && has_buf && !c->closing) {
		const char *data = uring_bufs_data(&in->bufs, bid);
		c->deadline = in->now + IDLE_TIMEOUT_S;
		if (c->starttls_pending) {
			if (c->early_cipher.len + (size_t)cqe->res > TLS_BUF_CAP)
				conn_close(in, c);
			else
				sb_add(&c->early_cipher, data, (size_t)cqe->res);
		} else if (c->tls) {
			if (tls_conn_feed(c->tls, data, (size_t)cqe->res) < 0)
				conn_close(in, c);
			else
				tls_progress(in, c);
		} else {
			take_plain(in, c, data, (size_t)cqe->res);
		}
	}
	if (has_buf)
		uring_bufs_recycle(&in->bufs, bid);
	if (cqe->res == 0 || (cqe->res < 0 && cqe->res != -ENOBUFS)) {
		/* EOF or error: a message awaiting commit is still delivered */
		c->closing = true;
	} else if (!c->recv_armed && !c->closing) {
		arm_recv(in, c);
	}
	conn_flush(in, c);
}

static void on_send(struct intake *in, struct io_uring_cqe *cqe, uint32_t slot,
		    uint32_t gen)
{
	struct conn *c = conn_get(in, slot, gen);

	if (!c)
		return;
	c->send_inflight = false;
	if (cqe->res < 0) {
		c->closing = true;
		sb_reset(&c->out);
		sb_reset(&c->inflight);
		c->inflight_off = 0;
		if (c->tls) {
			size_t len;
			tls_conn_output(c->tls, &len);
			tls_conn_output_consumed(c->tls, len);
		}
		conn_flush(in, c);
		return;
	}
	if (c->tls)
		tls_conn_output_consumed(c->tls, (size_t)cqe->res);
	else
		c->inflight_off += (size_t)cqe->res;
	conn_flush(in, c);
}

/*
 * admit - may one more client from <ip>, under policy <src> and in source
 * group <group> (-1: none), have a slot?  NULL, or the 421 to send.  The
 * counts are kept as connections come and go (count_conn), so an accept
 * costs the same with ten connections open or ten thousand.
 */
static const char *admit(struct intake *in, const char *ip,
			 const struct cfg_source *src, int group)
{
	static const char busy[] = "421 4.7.0 Too many connections, try again later";
	const struct cfg_global *g = cfg_global(in->cfg);
	size_t ngroups;
	const struct cfg_source_group *groups = cfg_source_groups(in->cfg, &ngroups);
	const uint32_t *gcount = in->group_live;
	const char *why = NULL;

	BUG_ON(in->ngroup_live != ngroups);
	if (in->stopping || in->conns.live >= g->total_max_smtp_in)
		why = busy;
	if (!why && src->max_smtp_in_per_ip && client_ip_live(in, ip) >= src->max_smtp_in_per_ip)
		why = "421 4.7.0 Too many connections from your address, try again later";
	if (!why && group >= 0 && groups[group].max_smtp_in &&
	    gcount[group] >= groups[group].max_smtp_in)
		why = busy;
	/* the free slots must still cover what other groups reserved and do not use */
	uint64_t unmet = 0;
	for (size_t k = 0; k < ngroups && !why; k++)
		if ((int)k != group && groups[k].reserved_smtp_in > gcount[k])
			unmet += groups[k].reserved_smtp_in - gcount[k];
	if (!why && g->total_max_smtp_in - in->conns.live <= unmet)
		why = busy;
	return why;
}

/* refuse - answer a connection we will not serve, and log it. */
static void refuse(struct intake *in, int fd, const char *ip, const char *reply)
{
	char line[128];
	int n = snprintf(line, sizeof(line), "%s\r\n", reply);
	ssize_t w = send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);

	(void)w;
	if (in->acct)
		on_reject(in, &(struct smtp_reject){
			.kind = SMTP_REJECT_CONNECTION, .code = 421,
			.reply = reply, .client_ip = ip,
		});
	close(fd);
}

static void on_accept(struct intake *in, struct io_uring_cqe *cqe, uint32_t li)
{
	struct listener *l = &in->lst[li];

	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		l->armed = false;
		if (l->live && !in->stopping) {
			arm_accept(in, li);
		} else if (!l->live && l->fd >= 0) {
			/* a listener a reload removed: its accept has ended */
			close(l->fd);
			l->fd = -1;
		}
	}
	if (cqe->res < 0)
		return;	/* EMFILE and friends: the next accept retries */
	int fd = cqe->res;
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	char ip[INET6_ADDRSTRLEN] = "";

	if (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0)
		memset(&peer, 0, sizeof(peer));
	if (peer.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, ip, sizeof(ip));
	else if (peer.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, ip, sizeof(ip));

	const struct cfg_source *src = cfg_source_lookup(in->cfg, (struct sockaddr *)&peer,
							  l->source);
	if (!src)	/* checked at load; a named source always exists */
		src = cfg_source_lookup(in->cfg, (struct sockaddr *)&peer, NULL);
	size_t ngroups;
	const struct cfg_source_group *groups = cfg_source_groups(in->cfg, &ngroups);
	const struct cfg_source_group *grp = src->source_group
		? cfg_source_group_find(in->cfg, src->source_group) : NULL;
	int group = grp ? (int)(grp - groups) : -1;
	const char *why = admit(in, ip, src, group);
	if (why) {
		refuse(in, fd, ip, why);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	struct conn *c = conn_alloc(in);
	c->fd = fd;
	c->listener = (int)li;
	c->deadline = in->now + IDLE_TIMEOUT_S;
	c->born = c->hs_since = in->now;
	c->group = group;
	c->cfg = cfg_ref(in->cfg);
	memcpy(c->ip, ip, sizeof(ip));
	count_conn(in, c);
	struct sockaddr_storage la;
	socklen_t lalen = sizeof(la);
	if (getsockname(fd, (struct sockaddr *)&la, &lalen) == 0)
		inet_ntop(la.ss_family,
			  la.ss_family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&la)->sin6_addr
						   : (void *)&((struct sockaddr_in *)&la)->sin_addr,
			  c->local_ip, sizeof(c->local_ip));
	struct smtp_session_params sp = {
		.cfg = in->cfg,
		.source = src,
		.peer = peer.ss_family ? (struct sockaddr *)&peer : NULL,
		.hostname = in->hostname,
		.tls_available = in->tls != NULL,
		.tls_active = l->immediate_tls && in->tls,
		.max_message_size = SPOOL_MAX_BODY - 65536,
		.max_rcpt = SPOOL_MAX_RCPT,
		.conn_id = ++in->next_conn_id,
		.reject = acct_wants(in->acct, ACCT_REJECT, ACCT_REJECT_CONNECTION) ||
				  acct_wants(in->acct, ACCT_REJECT, ACCT_REJECT_RECIPIENT) ||
				  acct_wants(in->acct, ACCT_REJECT, ACCT_REJECT_MESSAGE) ||
				  acct_wants(in->acct, ACCT_REJECT, ACCT_REJECT_COMMAND)
			  ? on_reject : NULL,
		.reject_arg = in,
		.auth_limit = auth_limit,
		.auth_arg = in,
		.storage = storage_check,
		.storage_arg = in,
		.memory = data_memory,
		.memory_arg = in,
		.spill = conn_spill,
		.spill_arg = c,
		.spill_window = DATA_WINDOW,
		.rcpt_check = in->fbl ? rcpt_check : NULL,
		.rcpt_arg = in,
	};
	enum smtp_event ev;
	in->stats.connections++;
	if (l->immediate_tls && in->tls) {
		c->tls = tls_conn_new(in->tls, NULL);
		c->handshaking = true;
		if (!c->tls) {
			conn_free(in, c);
			return;
		}
	}
	c->session = smtp_session_new(&sp, &c->out, &ev);
	if (ev == SMTP_EV_CLOSE) {
		c->closing = true;
		conn_flush(in, c);
		return;
	}
	arm_recv(in, c);
	conn_flush(in, c);
}

/*
 * past_deadline - the idle timeout, or one of the deadlines a client
 * cannot push back by trickling bytes: the TLS handshake, the greeting
 * phase (connect to HELO/EHLO) and one whole command line.
 */
static bool past_deadline(const struct intake *in, const struct conn *c)
{
	const struct cfg_global *g = cfg_global(in->cfg);
	time_t now = in->now;

	if (c->deadline <= now)
		return true;
	if (c->handshaking && g->smtp_in_tls_timeout &&
	    now - c->hs_since >= (time_t)g->smtp_in_tls_timeout)
		return true;
	if (g->smtp_in_greeting_timeout && !smtp_session_greeted(c->session) &&
	    now - c->born >= (time_t)g->smtp_in_greeting_timeout)
		return true;
	return c->line_since && g->smtp_in_command_timeout &&
	       now - c->line_since >= (time_t)g->smtp_in_command_timeout;
}

/* fsync batch latency bounds, ms (the last is +Inf) */
static const double fsync_bounds[INTAKE_FSYNC_BUCKETS] = {
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1e300,
};

const double *intake_fsync_bounds(void)
{
	return fsync_bounds;
}

static void observe_fsync(struct intake *in)
{
	uint64_t us = mono_us() - in->commit_began_us;	/* monotonic: never negative */

	if (in->commit_batch.count)
		in->last_commit_us = us;	/* not a journal's small sync */
	int i = 0;
	while (i < INTAKE_FSYNC_BUCKETS - 1 && (double)us / 1000.0 > fsync_bounds[i])
		i++;
	atomic_fetch_add_explicit(&in->pub.fsync[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&in->pub.fsync_sum_us, us, memory_order_relaxed);
}

/* publish - the counters intake_live() reads, once a second and per commit. */
static void publish(struct intake *in, bool usage)
{
	struct intake_pub *p = &in->pub;

	atomic_store_explicit(&p->connections, in->stats.connections, memory_order_relaxed);
	atomic_store_explicit(&p->messages, in->stats.messages, memory_order_relaxed);
	atomic_store_explicit(&p->recipients, in->recipients, memory_order_relaxed);
	atomic_store_explicit(&p->rejected, in->stats.rejected_messages, memory_order_relaxed);
	atomic_store_explicit(&p->open, in->conns.live, memory_order_relaxed);
	if (!usage)
		return;
	struct spool_usage u = { 0 };
	spool_usage(in->spool, &u);
	atomic_store_explicit(&p->spool_bytes, u.bytes, memory_order_relaxed);
	atomic_store_explicit(&p->spool_messages, u.messages, memory_order_relaxed);
	atomic_store_explicit(&p->spool_recipients, u.recipients, memory_order_relaxed);
}

void intake_live(const struct intake *in, struct intake_live *out)
{
	const struct intake_pub *p = &in->pub;

	*out = (struct intake_live){
		.connections = atomic_load_explicit(&p->connections, memory_order_relaxed),
		.open = atomic_load_explicit(&p->open, memory_order_relaxed),
		.messages = atomic_load_explicit(&p->messages, memory_order_relaxed),
		.recipients = atomic_load_explicit(&p->recipients, memory_order_relaxed),
		.rejected = atomic_load_explicit(&p->rejected, memory_order_relaxed),
		.spool_bytes = atomic_load_explicit(&p->spool_bytes, memory_order_relaxed),
		.spool_messages = atomic_load_explicit(&p->spool_messages, memory_order_relaxed),
		.spool_recipients = atomic_load_explicit(&p->spool_recipients, memory_order_relaxed),
		.fsync_sum_us = atomic_load_explicit(&p->fsync_sum_us, memory_order_relaxed),
	};
	for (int i = 0; i < INTAKE_FSYNC_BUCKETS; i++)
		out->fsync[i] = atomic_load_explicit(&p->fsync[i], memory_order_relaxed);
}

static int recover_turn(struct intake *in);
static void recover_log(const struct intake *in, bool done);

static void on_tick(struct intake *in)
{
	in->now = time(NULL);
	publish(in, true);
	if (in->recovering)
		recover_log(in, false);
	if (!in->stopping)
		arm_tick(in);
	sample_space(in);
	if (in->space_low &&
	    in->free_bytes >= in->space_wanted + RECORD_SLACK + space_floor(in))
		space_state(in, false, 0);
	for (uint32_t i = 0; i < in->conns.count; i++) {
		struct conn *c = slot_at(&in->conns, i);
		if (!c || c->closing || c->awaiting_commit || !past_deadline(in, c))
			continue;
		if (c->handshaking) {
			/* nothing can be said in the middle of a handshake */
			sb_reset(&c->out);
		} else {
			smtp_session_timeout(c->session, &c->out);
		}
		conn_close(in, c);
	}
	/*
	 * Under steady load a commit is nearly always in flight: the
	 * maintenance then runs as that commit ends, or finished segments
	 * would stay on the disk until the load paused.
	 */
	if (!in->commit_inflight)
		intake_maintain(in, (int64_t)in->now);
	else
		in->maintain_due = true;
}

/* ------------------------------------------------------------------ */
/* the loop                                                             */

static int setup_ring(struct intake *in, char *err, size_t errlen);

/*
 * adopt_cfg - a reload posted a configuration: new sessions get it (open
 * ones finish on theirs), and connections count in the source group of
 * the same name, if the new file still has one.
 */
static void adopt_cfg(struct intake *in)
{
	const struct cfg *next = cfg_mailbox_take(&in->next_cfg);

	if (!next)
		return;
	int *fds = atomic_exchange(&in->next_fds, NULL);
	BUG_ON(!fds);
	adopt_listeners(in, next, fds);
	free(fds);
	size_t nold;
	const struct cfg_source_group *old = cfg_source_groups(in->cfg, &nold);
	size_t nnew;
	const struct cfg_source_group *groups = cfg_source_groups(next, &nnew);
	for (uint32_t i = 0; i < in->conns.count; i++) {
		struct conn *c = slot_at(&in->conns, i);
		if (!c || c->group < 0)
			continue;
		BUG_ON((size_t)c->group >= nold);
		const struct cfg_source_group *g = cfg_source_group_find(next, old[c->group].name);
		c->group = g ? (int)(g - groups) : -1;
	}
	count_groups(in, next);
	cfg_unref(in->cfg);
	in->cfg = next;
}

bool intake_reload_pending(struct intake *in)
{
	return atomic_load(&in->next_fds) != NULL;
}

int intake_reload(struct intake *in, const struct cfg *cfg, const int *fds)
{
	size_t n = cfg_global(cfg)->listener_count;

	if (intake_reload_pending(in))
		return -EBUSY;
	int *copy = xcalloc(n + 1, sizeof(int));
	memcpy(copy, fds, n * sizeof(int));
	atomic_store(&in->next_fds, copy);
	cfg_mailbox_post(&in->next_cfg, cfg);
	return 0;
}

/*
 * wait_turn - submit, and wait for a completion or for the earliest of
 * what this thread must do on time: recovery's next step, a due journal
 * sync, a batch held back for bodies on their way.
 */
static int wait_turn(struct intake *in)
{
	uint64_t wait_us = UINT64_MAX;

	if (in->recovering && !in->stopping) {
		/* recovery has work: look at completions, do not sleep on them */
		wait_us = in->recover_blocked ? RECOVER_WAIT_NS / 1000 : 0;
	} else if (in->journal_dirty && !in->commit_inflight && !in->stopping) {
		/*
		 * outcomes wait for their sync: wake when it is due.  Due
		 * already and no commit began means a failed commit waits
		 * for its retry (commit_retry_at): do not spin meanwhile.
		 */
		uint64_t due = journal_sync_due(in);

		wait_us = (due < JOURNAL_WAIT_MIN_MS ? JOURNAL_WAIT_MIN_MS : due) * 1000;
	}
	if (in->commit_wait_until && !in->commit_inflight) {
		uint64_t now = mono_us();
		uint64_t left = in->commit_wait_until > now ? in->commit_wait_until - now : 0;

		if (left < wait_us)
			wait_us = left;
	}
	if (wait_us == UINT64_MAX)
		return io_uring_submit_and_wait(&in->ring, 1);
	struct __kernel_timespec ts = {
		.tv_sec = (long long)(wait_us / 1000000),
		.tv_nsec = (long long)(wait_us % 1000000) * 1000,
	};
	struct io_uring_cqe *first;
	int rc = io_uring_submit_and_wait_timeout(&in->ring, &first, 1, &ts, NULL);
	return rc == -ETIME ? 0 : rc;
}

int intake_run(struct intake *in)
{
	char err[256];
	int rc = setup_ring(in, err, sizeof(err));

	if (rc < 0)
		return rc;
	in->now = time(NULL);
	for (size_t i = 0; i < in->nlst; i++)
		arm_accept(in, i);
	arm_tick(in);
	arm_stop(in);
	arm_outcomes(in);
	while (!in->stopping || in->conns.live || in->commit_inflight) {
		rc = wait_turn(in);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			break;
		rc = 0;
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&in->ring, head, cqe) {
			unsigned kind;
			uint32_t slot, gen;
			seen++;
			ud_unpack(cqe->user_data, &kind, &slot, &gen);
			switch (kind) {
			case OP_ACCEPT:
				on_accept(in, cqe, slot);
				break;
			case OP_RECV:
				on_recv(in, cqe, slot, gen);
				break;
			case OP_SEND:
				on_send(in, cqe, slot, gen);
				break;
			case OP_FSYNC:
				if (cqe->res < 0 && !in->commit_result)
					in->commit_result = cqe->res;
				if (--in->commit_outstanding == 0) {
					observe_fsync(in);
					int r = spool_commit_done(in->spool, in->commit_result);
					in->commit_result = r;
					if (r < 0 && !in->spool_dead) {
						in->stats.spool_errors++;
						log_msg(LOG_LEVEL_ERROR, "spool-error", NULL,
							"intake %u: %s: new mail gets 451 until a "
							"restart recovers the spool", in->index,
							spool_error(in->spool));
						in->spool_dead = true;
					} else if (r == 0) {
						commit_succeeded(in);
					}
					in->commit_inflight = false;
					finish_commit(in);
					if (in->maintain_due && !in->stopping) {
						in->maintain_due = false;
						intake_maintain(in, (int64_t)in->now);
					}
				}
				break;
			case OP_TICK:
				on_tick(in);
				break;
			case OP_OUTCOME:
				if (!in->stopping)
					arm_outcomes(in);
				break;
			case OP_STOP:
				in->stopping = true;
				for (size_t i = 0; i < in->nlst; i++)
					if (in->lst[i].live)
						shutdown(in->lst[i].fd, SHUT_RDWR);
				for (uint32_t i = 0; i < in->conns.count; i++) {
					struct conn *c = slot_at(&in->conns, i);
					if (c && !c->awaiting_commit)
						conn_close(in, c);
				}
				break;
			default:
				BUG("completion of unknown kind %d", (int)kind);	/* every submitted kind is handled */
			}
		}
		io_uring_cq_advance(&in->ring, seen);
		adopt_cfg(in);

		serve_yielded(in);
		if (in->n_overflow) {
			retry_overflow(in);
			shard_flush_wakeups(in->shards, in->index);
		}
		take_outcomes(in);
		start_commit(in);
		if (in->recovering && !in->stopping && (rc = recover_turn(in)) < 0)
			break;
	}
	/* the last commit has finished; release what remains */
	for (uint32_t i = 0; i < in->conns.count; i++) {
		struct conn *c = slot_at(&in->conns, i);
		if (c)
			conn_free(in, c);
	}
	while (in->n_overflow) {
		retry_overflow(in);
		shard_flush_wakeups(in->shards, in->index);
		if (in->n_overflow)
			usleep(1000);
	}
	if (in->acct)
		acct_flush(in->acct, in->index);
	tls_thread_cleanup();	/* wolfSSL's per-thread caches */
	return rc;
}

/*
 * setup_ring - the ring and its buffer ring, on the thread that will use
 * them: IORING_SETUP_SINGLE_ISSUER binds the ring to its creator.
 */
static int setup_ring(struct intake *in, char *err, size_t errlen)
{
	/* what the loop submits; PROVIDE_BUFFERS rides on the buffer ring */
	static const uint8_t ops[] = {
		IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_FSYNC,
		IORING_OP_READ, IORING_OP_TIMEOUT,
	};
	struct uring_want w = {
		.entries = RING_ENTRIES,
		.flags = URING_ONE_THREAD,
		.ops = ops,
		.nops = ARRAY_SIZE(ops),
	};
	unsigned got;
	char note[160];
	int rc = uring_setup(&in->ring, &w, &got, note, sizeof(note));
	if (rc < 0) {
		snprintf(err, errlen, "io_uring: %s", note);
		return rc;
	}
	free(in->ring_note);
	in->ring_note = note[0] ? xstrdup(note) : NULL;
	in->ring_ok = true;
	return setup_buffers(in, err, errlen);
}

int intake_new(const struct intake_params *p, struct intake **out, char *err,
	       size_t errlen)
{
	struct intake *in = xcalloc(1, sizeof(*in));

	slot_table_init(&in->conns, sizeof(struct conn));
	in->cfg = cfg_ref(p->cfg);
	count_groups(in, in->cfg);
	in->index = p->index;
	in->fbl = p->fbl;
	in->spool = p->spool;
	in->shards = p->shards;
	in->map = p->map;
	in->tls = p->tls;
	in->acct = p->acct;
	in->min_free_space = p->min_free_space;
	spool_set_keep_free(in->spool, space_floor(in));
	in->hostname = p->hostname;
	in->stop_fd = eventfd(0, EFD_CLOEXEC);
	in->outcome_fd = shard_outcome_fd(p->shards, p->index);
	in->free_bytes = UINT64_MAX;
	in->strings = intern_tab_new(INTAKE_SHARED_STRINGS);
	sample_space(in);

	if (in->stop_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		intake_free(in);
		return -errno;
	}
	/* Probe the ring here so a kernel without it fails at start-up. */
	int rc = setup_ring(in, err, errlen);
	if (rc < 0) {
		intake_free(in);
		return rc;
	}
	if (in->ring_note)
		log_msg(LOG_LEVEL_WARNING, "start", NULL, "intake %u: io_uring %s", in->index,
			in->ring_note);
	io_uring_queue_exit(&in->ring);
	in->ring_ok = false;
	uring_bufs_unmap(&in->bufs);
	/* the sockets are the intake's from here on */
	const struct cfg_global *g = cfg_global(p->cfg);
	for (size_t k = 0; k < g->listener_count; k++)
		listener_add(in, p->listen_fds[k], &g->listeners[k]);
	*out = in;
	return 0;
}

void intake_stop(struct intake *in)
{
	uint64_t one = 1;
	ssize_t w = write(in->stop_fd, &one, sizeof(one));

	(void)w;
}

void intake_free(struct intake *in)
{
	if (!in)
		return;
	for (uint32_t i = 0; i < in->conns.count; i++) {
		struct conn *c = slot_at(&in->conns, i);
		if (c)
			conn_free(in, c);
	}
	for (size_t i = 0; i < in->next_batch.count; i++) {
		delivery_msg_unref(in->next_batch.items[i].msg);
		free(in->next_batch.items[i].body);
	}
	for (size_t i = 0; i < in->n_overflow; i++)
		delivery_job_free(in->overflow[i].job);
	free(in->next_batch.items);
	free(in->commit_batch.items);
	sb_free(&in->hdr_text);
	free(in->auth_slots);
	free(in->overflow);
	free(in->yielded);
	free(in->yielded_spare);
	HASH_TAB_EACH(&in->client_ips, struct client_ip, e)
		free(e);
	hash_tab_free(&in->client_ips);
	free(in->group_live);
	free(in->moved);
	intern_tab_free(in->strings);	/* queued messages keep theirs */
	slot_table_destroy(&in->conns);
	if (in->ring_ok)
		io_uring_queue_exit(&in->ring);
	free(in->ring_note);
	uring_bufs_free(&in->bufs);
	if (in->stop_fd >= 0)
		close(in->stop_fd);
	/* sockets a reload gave that the thread never took */
	int *fds = atomic_exchange(&in->next_fds, NULL);
	const struct cfg *next = cfg_mailbox_take(&in->next_cfg);
	for (size_t k = 0; fds && next && k < cfg_global(next)->listener_count; k++) {
		size_t li = 0;
		while (li < in->nlst && in->lst[li].fd != fds[k])
			li++;
		if (li == in->nlst)
			close(fds[k]);
	}
	free(fds);
	cfg_unref(next);
	for (size_t li = 0; li < in->nlst; li++) {
		if (in->lst[li].fd >= 0)
			close(in->lst[li].fd);
		free(in->lst[li].source);
	}
	free(in->lst);
	cfg_unref(in->cfg);
	free(in);
}

/*
 * body_scan - a body left in the spool, read back a chunk at a time: its
 * first <cap> octets into head, and whether any octet is >= 0x80.
 * Recovery verified the record already.
 */
static int body_scan(const char *path, uint64_t off, uint64_t len, char *head,
		     size_t cap, bool *has_8bit)
{
	enum { CHUNK = 64 * 1024 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = xmalloc(CHUNK);
	int rc = fd < 0 ? -errno : 0;

	*has_8bit = false;
	for (uint64_t done = 0; rc == 0 && done < len;) {
		size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
		ssize_t got = pread(fd, buf, n, (off_t)(off + done));
		if (got <= 0) {
			rc = got < 0 ? -errno : -EIO;
			break;
		}
		if (done < cap)
			memcpy(head + done, buf,
			       cap - done < (size_t)got ? cap - done : (size_t)got);
		*has_8bit |= mem_has_8bit(buf, (size_t)got);
		done += (uint64_t)got;
	}
	free(buf);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* rings_have_room - recovery may feed every shard one more job */
static bool rings_have_room(const struct intake *in)
{
	uint32_t n = shard_set_count(in->shards);

	if (in->n_overflow)
		return false;
	for (uint32_t s = 0; s < n; s++)
		if (shard_room(in->shards, in->index, s) < RECOVER_ROOM)
			return false;
	return true;
}

/*
 * recover_one - a message spool recovery found, to its shards; 1 (not
 * taken, offered again) while a ring lacks RECOVER_ROOM places.
 */
static int recover_one(void *ctx, const struct spool_envelope *env,
		       const struct spool_ref *ref)
{
	struct intake *in = ctx;

	if (!rings_have_room(in))
		return 1;
	/*
	 * Recovery saw the body's 8-bit octets when it verified it; it is
	 * read again only when the accounting records header fields.
	 */
	bool big = ref->body_len > SPOOL_RESIDENT_MAX;
	bool head = keep_head(in);
	size_t cap = !head ? 0 : big ? BODY_HEAD_MAX : ref->body_len;
	char *body = xmalloc(cap + 1);
	char *seg = NULL;
	bool has_8bit = env->has_8bit;
	int rc = 0;

	if (!head) {
		/* nothing to read */
	} else if (big) {
		seg = spool_segment_path(spool_dir(in->spool), ref->seg);
		rc = body_scan(seg, ref->off + ref->body_off, ref->body_len, body, cap, &has_8bit);
	} else {
		rc = spool_read(in->spool, ref, body, ref->body_len + 1);
		has_8bit = rc == 0 && mem_has_8bit(body, ref->body_len);
	}
	free(seg);
	if (rc < 0) {
		free(body);
		return rc;
	}
	/* the named source (listener, AUTH) is not spooled: its address decides */
	const struct cfg_source *src = NULL;
	struct sockaddr_storage ss = { 0 };
	if (env->source_ip && inet_pton(AF_INET, env->source_ip,
					&((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		src = cfg_source_lookup(in->cfg, (struct sockaddr *)&ss, NULL);
	} else if (env->source_ip && inet_pton(AF_INET6, env->source_ip,
					       &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		src = cfg_source_lookup(in->cfg, (struct sockaddr *)&ss, NULL);
	}
	struct delivery_msg *m = build_msg(in, ref, env->queued, src, env->ret,
					   env->source_ip, env->mail_from,
					   env->envid, env->vmta, env->job_id,
					   env->nrcpt, spool_addr, spool_orcpt,
					   spool_notify, spool_index, env->rcpt,
					   body, cap, has_8bit);
	free(body);
	/* never overflows: each ring had room for this message's one job */
	handoff(in, m, false);
	/* a sleeping shard starts on it now, not at the end of the slice */
	shard_flush_wakeups(in->shards, in->index);
	return 0;
}

/* recover_ms - how long the recovery has run */
static uint64_t recover_ms(const struct intake *in)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)((now.tv_sec - in->recover_began.tv_sec) * 1000 +
			  (now.tv_nsec - in->recover_began.tv_nsec) / 1000000);
}

/* recover_log - where recovery stands (each tick) or what it found */
static void recover_log(const struct intake *in, bool done)
{
	const struct spool_stats *st = &in->rst;
	char fields[320];

	/* connections= and received=: what the intake took meanwhile */
	snprintf(fields, sizeof(fields),
		 "intake=%u state=%s messages=%llu recipients=%llu segments=%llu "
		 "records=%llu outcomes=%llu torn=%llu quarantined=%llu duration_ms=%llu "
		 "connections=%llu received=%llu",
		 in->index, done ? "done" : "running", (unsigned long long)st->messages,
		 (unsigned long long)st->recipients, (unsigned long long)st->segments,
		 (unsigned long long)st->records, (unsigned long long)st->outcomes,
		 (unsigned long long)st->truncated, (unsigned long long)st->quarantined,
		 (unsigned long long)recover_ms(in), (unsigned long long)in->stats.connections,
		 (unsigned long long)in->stats.messages);
	if (!done) {
		log_msg(LOG_LEVEL_NOTICE, "recovery", fields,
			"spool %s recovering: %llu records scanned, %llu messages queued again so far",
			spool_dir(in->spool), (unsigned long long)st->records,
			(unsigned long long)st->messages);
		return;
	}
	log_msg(LOG_LEVEL_NOTICE, "recovery", fields,
		"spool %s recovered: %llu messages, %llu recipients queued; %llu torn tails cut, "
		"%llu corrupt records quarantined; in %llu ms while taking mail",
		spool_dir(in->spool), (unsigned long long)st->messages,
		(unsigned long long)st->recipients, (unsigned long long)st->truncated,
		(unsigned long long)st->quarantined, (unsigned long long)recover_ms(in));
	for (size_t k = 0; k < st->nbad; k++)
		log_msg(LOG_LEVEL_WARNING, "recovery", NULL,
			"quarantined: %s %016llx offset %llu, %llu bytes",
			st->bad[k].journal ? "journal" : "segment",
			(unsigned long long)st->bad[k].seq, (unsigned long long)st->bad[k].off,
			(unsigned long long)st->bad[k].len);
}

int intake_recover_begin(struct intake *in)
{
	clock_gettime(CLOCK_MONOTONIC, &in->recover_began);
	int rc = spool_recover_begin(in->spool, &in->rst);
	if (rc < 0) {
		log_msg(LOG_LEVEL_ERROR, "recovery", NULL, "spool recovery failed: %s",
			spool_error(in->spool));
		return rc;
	}
	in->recovering = true;
	char fields[32];
	snprintf(fields, sizeof(fields), "intake=%u state=started", in->index);
	log_msg(LOG_LEVEL_NOTICE, "recovery", fields,
		"spool %s: recovery runs while the intake takes mail", spool_dir(in->spool));
	return 0;
}

/*
 * recover_turn - one slice of spool recovery, between loop turns; at its
 * end the recovered line, and the maintenance recovery held back.
 */
static int recover_turn(struct intake *in)
{
	in->recover_blocked = !rings_have_room(in);
	if (in->recover_blocked)
		return 0;
	int rc = spool_recover_step(in->spool, recover_one, in, RECOVER_SLICE_US);
	shard_flush_wakeups(in->shards, in->index);
	if (rc > 0) {
		in->recover_blocked = !rings_have_room(in);
		return 0;
	}
	if (rc < 0) {
		log_msg(LOG_LEVEL_ERROR, "recovery", NULL, "intake %u: spool recovery failed: %s",
			in->index, spool_error(in->spool));
		return rc;
	}
	in->recovering = false;
	recover_log(in, true);
	intake_maintain(in, (int64_t)time(NULL));
	return 0;
}

void intake_drain_outcomes(struct intake *in)
{
	take_outcomes(in);
	spool_commit(in->spool);
}

void intake_stats(const struct intake *in, struct intake_stats *st)
{
	*st = in->stats;
}
