/*
 * services/acct.c - the accounting writer (see acct.h): PowerMTA CSV
 * formatting, the reject log's lines, file rotation, pipe commands with
 * replay and spill files.
 *
 * Threads: acct_emit()/acct_flush() run on producer threads and touch only
 * their struct producer and ring; everything under "writer thread" below
 * runs only on the writer thread, started by acct_writer_start(); setup
 * and teardown run on the controlling thread while the writer is not
 * running.  The only shared state is the rings, the stop flag, the
 * eventfd and the statistics counters.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "util/hash.h"
#include "util/ring.h"
#include "util/util.h"

#include "services/acct.h"

extern char **environ;

#define ACCT_NTYPES 9
#define CACHE_LINE 64
#define BATCH 256		/* records popped at once */
#define BATCHES_PER_TURN 4	/* per producer, so pipes get pumped */
#define SPILL_CHUNK 65536	/* bytes read back from a spill file */
#define MAX_HEADER_COLUMNS 64	/* header_NAME columns per file */
#define CHILD_GRACE 5		/* seconds from SIGTERM to SIGKILL */
#define EXIT_WAIT 10		/* seconds a command gets to exit on EOF */
#define POLL_MS 250		/* timers are in seconds; this is plenty */

/* ------------------------------------------------------------------ */
/* Fields.                                                              */

enum field_kind {
	FK_TYPE,
	FK_TIME,		/* time_t member */
	FK_STR,			/* const char * member */
	FK_STATUS,		/* dsnStatus: "X.Y.Z (text)" */
	FK_SIZE,		/* uint64_t member */
	FK_SECS_QUEUED,		/* timeLogged - timeQueued */
	FK_USER_STRING,		/* the acct-file's user-string */
	FK_BOUNCE_CLASS,	/* bounceClass: hard|soft, from bounceCat */
};

enum {
	/* the default columns of d, b and t, in PowerMTA's order */
	F_TYPE, F_TIME_LOGGED, F_TIME_QUEUED, F_ORIG, F_RCPT, F_ORCPT,
	F_DSN_ACTION, F_DSN_STATUS, F_DSN_DIAG, F_DSN_MTA, F_BOUNCE_CAT,
	F_SRC_TYPE, F_SRC_MTA, F_DLV_TYPE, F_DLV_SOURCE_IP,
	F_DLV_DESTINATION_IP, F_DLV_ESMTP_AVAILABLE, F_DLV_SIZE, F_VMTA,
	F_JOB_ID, F_ENV_ID, F_QUEUE, F_VMTA_POOL, F_DLV_TLS_PROTOCOL,
	F_DLV_TLS_CIPHER,
	/*
	 * After them, so adding r records or a named extra field to a file
	 * does not move the columns scripts already index by position.
	 */
	F_RCV_SOURCE_IP, F_RCV_DESTINATION_IP, F_TOTAL_SECONDS_QUEUED,
	F_USER_STRING, F_RCV_SMTP_USER,
	F_BOUNCE_CLASS,		/* coremta extension, only when named */
	/* rb and f */
	F_DSN_REPORTING_MTA, F_FORMAT, F_REP_SOURCE_IP, F_FEEDBACK_TYPE,
	F_USER_AGENT, F_REPORTING_MTA, F_REPORTED_DOMAIN,
	F_COUNT
};

#define BIT(f) ((uint64_t)1 << (f))
#define REC(m) offsetof(struct acct_record, m)

static const struct field {
	const char *name;
	enum field_kind kind;
	size_t off;
} fields[F_COUNT] = {
	[F_TYPE] = { "type", FK_TYPE, 0 },
	[F_TIME_LOGGED] = { "timeLogged", FK_TIME, REC(time_logged) },
	[F_TIME_QUEUED] = { "timeQueued", FK_TIME, REC(time_queued) },
	[F_ORIG] = { "orig", FK_STR, REC(orig) },
	[F_RCPT] = { "rcpt", FK_STR, REC(rcpt) },
	[F_ORCPT] = { "orcpt", FK_STR, REC(orcpt) },
	[F_DSN_ACTION] = { "dsnAction", FK_STR, REC(dsn_action) },
	[F_DSN_STATUS] = { "dsnStatus", FK_STATUS, REC(dsn_status) },
	[F_DSN_DIAG] = { "dsnDiag", FK_STR, REC(dsn_diag) },
	[F_DSN_MTA] = { "dsnMta", FK_STR, REC(dsn_mta) },
	[F_BOUNCE_CAT] = { "bounceCat", FK_STR, REC(bounce_cat) },
	[F_SRC_TYPE] = { "srcType", FK_STR, REC(src_type) },
	[F_SRC_MTA] = { "srcMta", FK_STR, REC(src_mta) },
	[F_DLV_TYPE] = { "dlvType", FK_STR, REC(dlv_type) },
	[F_DLV_SOURCE_IP] = { "dlvSourceIp", FK_STR, REC(dlv_source_ip) },
	[F_DLV_DESTINATION_IP] = { "dlvDestinationIp", FK_STR,
				   REC(dlv_destination_ip) },
	[F_DLV_ESMTP_AVAILABLE] = { "dlvEsmtpAvailable", FK_STR,
				    REC(dlv_esmtp_available) },
	[F_DLV_SIZE] = { "dlvSize", FK_SIZE, REC(dlv_size) },
	[F_VMTA] = { "vmta", FK_STR, REC(vmta) },
	[F_JOB_ID] = { "jobId", FK_STR, REC(job_id) },
	[F_ENV_ID] = { "envId", FK_STR, REC(env_id) },
	[F_QUEUE] = { "queue", FK_STR, REC(queue) },
	[F_VMTA_POOL] = { "vmtaPool", FK_STR, REC(vmta_pool) },
	[F_DLV_TLS_PROTOCOL] = { "dlvTlsProtocol", FK_STR, REC(dlv_tls_protocol) },
	[F_DLV_TLS_CIPHER] = { "dlvTlsCipher", FK_STR, REC(dlv_tls_cipher) },
	[F_RCV_SOURCE_IP] = { "rcvSourceIp", FK_STR, REC(rcv_source_ip) },
	[F_RCV_DESTINATION_IP] = { "rcvDestinationIp", FK_STR,
				   REC(rcv_destination_ip) },
	[F_TOTAL_SECONDS_QUEUED] = { "totalSecondsQueued", FK_SECS_QUEUED, 0 },
	[F_USER_STRING] = { "userString", FK_USER_STRING, 0 },
	[F_RCV_SMTP_USER] = { "rcvSmtpUser", FK_STR, REC(rcv_smtp_user) },
	[F_BOUNCE_CLASS] = { "bounceClass", FK_BOUNCE_CLASS, REC(bounce_class) },
	[F_DSN_REPORTING_MTA] = { "dsnReportingMta", FK_STR, REC(dsn_reporting_mta) },
	[F_FORMAT] = { "format", FK_STR, REC(format) },
	[F_REP_SOURCE_IP] = { "repSourceIp", FK_STR, REC(rep_source_ip) },
	[F_FEEDBACK_TYPE] = { "feedbackType", FK_STR, REC(feedback_type) },
	[F_USER_AGENT] = { "userAgent", FK_STR, REC(user_agent) },
	[F_REPORTING_MTA] = { "reportingMta", FK_STR, REC(reporting_mta) },
	[F_REPORTED_DOMAIN] = { "reportedDomain", FK_STR, REC(reported_domain) },
};

#define DBT_DEFAULT (BIT(F_RCV_SOURCE_IP) - 1)
_Static_assert(F_COUNT <= 64, "field masks are uint64_t");

/* What `*` means per type (powermta.md §5). */
static const uint64_t default_fields[ACCT_NTYPES] = {
	[ACCT_DELIVERY] = DBT_DEFAULT,
	[ACCT_BOUNCE] = DBT_DEFAULT,
	[ACCT_TRANSIENT] = DBT_DEFAULT,
	[ACCT_TRANSIENT_QUEUE] = BIT(F_TYPE) | BIT(F_TIME_LOGGED) |
		BIT(F_QUEUE) | BIT(F_VMTA) | BIT(F_DSN_STATUS) |
		BIT(F_DSN_DIAG) | BIT(F_DSN_MTA) | BIT(F_DLV_TYPE) |
		BIT(F_DLV_SOURCE_IP) | BIT(F_DLV_DESTINATION_IP),
	[ACCT_RECEIPT] = DBT_DEFAULT | BIT(F_RCV_SOURCE_IP) |
		BIT(F_RCV_DESTINATION_IP),
	[ACCT_REJECT] = 0,	/* never in an acct-file: format_reject */
	/* powermta.md §5: rb adds dsnReportingMta and format to b's */
	[ACCT_REMOTE_BOUNCE] = DBT_DEFAULT | BIT(F_DSN_REPORTING_MTA) | BIT(F_FORMAT),
	[ACCT_REMOTE_STATUS] = DBT_DEFAULT | BIT(F_DSN_REPORTING_MTA) | BIT(F_FORMAT),
	/* powermta.md §6, plus the headers in f_default_headers */
	[ACCT_FEEDBACK] = BIT(F_TYPE) | BIT(F_TIME_LOGGED) | BIT(F_REP_SOURCE_IP) |
		BIT(F_FEEDBACK_TYPE) | BIT(F_FORMAT) | BIT(F_USER_AGENT) |
		BIT(F_ENV_ID) | BIT(F_ORIG) | BIT(F_RCPT) | BIT(F_REPORTING_MTA) |
		BIT(F_DLV_SOURCE_IP) | BIT(F_REPORTED_DOMAIN),
};

/* The header_ columns `*` gives f records (PowerMTA's default). */
static const char *const f_default_headers[] = {
	"From", "Return-Path", "X-Job", "Subject",
};

static const struct {
	const char *code;
	unsigned cfg_bit;
} types[ACCT_NTYPES] = {
	[ACCT_DELIVERY] = { "d", CFG_REC_DELIVERY },
	[ACCT_BOUNCE] = { "b", CFG_REC_BOUNCE },
	[ACCT_TRANSIENT] = { "t", CFG_REC_TRANSIENT },
	[ACCT_TRANSIENT_QUEUE] = { "tq", CFG_REC_TRANSIENT_QUEUE },
	[ACCT_RECEIPT] = { "r", CFG_REC_RECEIPT },
	/* no acct-file records it; the letter is the record's reject_kind */
	[ACCT_REJECT] = { NULL, 0 },
	[ACCT_REMOTE_BOUNCE] = { "rb", CFG_REC_REMOTE_BOUNCE },
	[ACCT_FEEDBACK] = { "f", CFG_REC_FEEDBACK },
	[ACCT_REMOTE_STATUS] = { "rs", CFG_REC_REMOTE_STATUS },
};

/* Members only a reject line shows: no acct-file column names them. */
static const size_t reject_strs[] = { REC(helo), REC(reply) };

/* The reject log's header; the columns are fixed. */
static const char reject_header[] =
	"type,time,clientIp,helo,authUser,mailFrom,rcpt,reply\r\n";

/* reject_bit - a kind's bit in a reject log's kind mask */
static unsigned reject_bit(enum acct_reject_kind k)
{
	switch (k) {
	case ACCT_REJECT_CONNECTION:
		return 1u << 0;
	case ACCT_REJECT_RECIPIENT:
		return 1u << 1;
	case ACCT_REJECT_MESSAGE:
		return 1u << 2;
	case ACCT_REJECT_COMMAND:
		return 1u << 3;
	}
	util_bug(__FILE__, __LINE__, "unknown reject_kind");
}

/*
 * reject_kinds - what a <rejectlog-file>'s records selects.  c is every
 * refusal but a single recipient's (the connection, MAIL/DATA, protocol
 * errors), as the intake threads wrote it before this writer took over.
 */
static unsigned reject_kinds(unsigned records)
{
	unsigned k = 0;

	if (records & CFG_REC_REJECT_CONN)
		k |= reject_bit(ACCT_REJECT_CONNECTION) |
		     reject_bit(ACCT_REJECT_MESSAGE) |
		     reject_bit(ACCT_REJECT_COMMAND);
	if (records & CFG_REC_REJECT_RCPT)
		k |= reject_bit(ACCT_REJECT_RECIPIENT);
	return k;
}

/* RFC 3463 texts, lower case as PowerMTA writes them in dsnStatus. */
static const struct {
	unsigned char subject, detail;
	const char *text;
} status_texts[] = {
	{ 1, 0, "other address status" },
	{ 1, 1, "bad destination mailbox address" },
	{ 1, 2, "bad destination system address" },
	{ 1, 3, "bad destination mailbox address syntax" },
	{ 1, 4, "destination mailbox address ambiguous" },
	{ 1, 5, "destination address valid" },
	{ 1, 6, "destination mailbox has moved, no forwarding address" },
	{ 1, 7, "bad sender's mailbox address syntax" },
	{ 1, 8, "bad sender's system address" },
	{ 2, 0, "other or undefined mailbox status" },
	{ 2, 1, "mailbox disabled, not accepting messages" },
	{ 2, 2, "mailbox full" },
	{ 2, 3, "message length exceeds administrative limit" },
	{ 2, 4, "mailing list expansion problem" },
	{ 3, 0, "other or undefined mail system status" },
	{ 3, 1, "mail system full" },
	{ 3, 2, "system not accepting network messages" },
	{ 3, 3, "system not capable of selected features" },
	{ 3, 4, "message too big for system" },
	{ 3, 5, "system incorrectly configured" },
	{ 4, 0, "other or undefined network or routing status" },
	{ 4, 1, "no answer from host" },
	{ 4, 2, "bad connection" },
	{ 4, 3, "routing server failure" },
	{ 4, 4, "unable to route" },
	{ 4, 5, "network congestion" },
	{ 4, 6, "routing loop detected" },
	{ 4, 7, "delivery time expired" },
	{ 5, 0, "other or undefined protocol status" },
	{ 5, 1, "invalid command" },
	{ 5, 2, "syntax error" },
	{ 5, 3, "too many recipients" },
	{ 5, 4, "invalid command arguments" },
	{ 5, 5, "wrong protocol version" },
	{ 6, 0, "other or undefined media error" },
	{ 6, 1, "media not supported" },
	{ 6, 2, "conversion required and prohibited" },
	{ 6, 3, "conversion required but not supported" },
	{ 6, 4, "conversion with loss performed" },
	{ 6, 5, "conversion failed" },
	{ 7, 0, "other or undefined security status" },
	{ 7, 1, "delivery not authorized, message refused" },
	{ 7, 2, "mailing list expansion prohibited" },
	{ 7, 3, "security conversion required but not possible" },
	{ 7, 4, "security features not supported" },
	{ 7, 5, "cryptographic failure" },
	{ 7, 6, "cryptographic algorithm not supported" },
	{ 7, 7, "message integrity failure" },
};

/* ------------------------------------------------------------------ */
/* Objects.                                                             */

/* A record in flight: one allocation, the strings after the struct. */
struct entry {
	struct entry *next;		/* producer's overflow list */
	struct acct_record rec;
};

struct producer {
	_Alignas(CACHE_LINE) struct spsc_ring *ring;
	struct entry *ovf_head, *ovf_tail;	/* oldest first */
	size_t ovf_count;
};

struct column {
	int field;			/* F_*, or -1: a header column */
	unsigned hidx;			/* header columns: bit in hmask */
};

struct target {
	struct acct_writer *w;
	char *path;			/* file path, or the command */
	const char *what;		/* "acct-file", "rejectlog-file": errors */
	bool is_pipe, is_reject, iso_times, sync;
	mode_t mode;
	unsigned types;			/* 1 << enum acct_type */
	unsigned rkinds;		/* reject logs: reject_bit()s written */
	uint64_t fmask[ACCT_NTYPES];	/* fields written per type */
	uint64_t hmask[ACCT_NTYPES];	/* header columns written per type */
	struct column *cols;
	size_t ncols;
	char **hnames;			/* header_NAME names, by hidx */
	size_t nhnames;
	char *header;			/* the header line, CRLF included */
	size_t header_len;
	char *user_string;
	uint64_t max_size, move_interval, delete_after;
	uint64_t retry_interval, write_timeout;
	char *move_to;

	struct strbuf out;		/* to write, from out_off */
	size_t out_off;
	int fd;				/* current file or pipe; -1 */
	bool failing;			/* reported; quiet until it recovers */

	/* files */
	char *dir, *stem, *ext;		/* path = dir/stem+ext */
	uint64_t size;			/* bytes in the current file */
	bool has_records;
	time_t opened, retry_at, rotate_retry_at, next_move, next_delete;

	/* pipes */
	pid_t pid;			/* the running command */
	pid_t dying;			/* a failed one not reaped yet */
	time_t restart_at, kill_at, progress_at;
	bool started, broken;
	struct strbuf mem;		/* newest records, before spilling */
	char *spill_path;
	int spill_fd;
	uint64_t spill_rd, spill_wr;	/* unread spill: [rd, wr) */
	struct strbuf hist;		/* last bytes written, from a record start */
	uint64_t hist_base;		/* stream offset of hist.buf[0] */
	uint64_t streamed;		/* bytes written to this command */
	size_t pipe_cap;
};

struct acct_writer {
	struct acct_params params;
	char *spill_dir;
	unsigned types;			/* what any target (or the sink) records */
	bool sink_pending;		/* on_flush is due */
	char **hard_cats;		/* bounce categories of class hard */
	size_t nhard_cats;
	unsigned rkinds;		/* what any reject log records */
	const char **hnames;		/* header_NAME names of every target
					   (borrowed from them; fixed after new) */
	size_t nhnames;
	unsigned nproducers;
	struct producer *prod;
	struct target *targets;
	size_t ntargets;
	struct pollfd *pfds;
	int efd;			/* producers wake the writer */
	pthread_t thread;
	bool running;
	_Atomic bool stop;
	struct strbuf line;		/* writer thread scratch */
	struct {
		time_t t;
		char s[40];
	} tcache[2];			/* formatted iso times */
	unsigned tnext;
	struct {
		time_t t;
		char s[24];
	} utc;				/* the last reject line's time */
	struct {
		_Atomic uint64_t records, lines, bytes, errors, pipe_restarts,
			spilled_bytes, rotations, deleted_files, stalls;
	} st;
};

#define STAT_ADD(w, f, n) \
	atomic_fetch_add_explicit(&(w)->st.f, (uint64_t)(n), memory_order_relaxed)

/* report - count an error and describe it to on_error. */
UTIL_PRINTF(2, 3)
static void report(struct acct_writer *w, const char *fmt, ...)
{
	struct strbuf sb = { 0 };
	va_list ap;

	STAT_ADD(w, errors, 1);
	if (!w->params.on_error)
		return;
	va_start(ap, fmt);
	sb_vprintf(&sb, fmt, ap);
	va_end(ap);
	w->params.on_error(w->params.arg, sb_str(&sb));
	sb_free(&sb);
}

/* sb_addn - sb_add that accepts an empty source */
static void sb_addn(struct strbuf *sb, const char *s, size_t n)
{
	/* sb_add would memcpy from NULL for an empty strbuf */
	if (n)
		sb_add(sb, s, n);
}

/* out_pending - bytes of out not written yet */
static size_t out_pending(const struct target *t)
{
	return t->out.len - t->out_off;
}

/* out_prepend - put s before the unwritten bytes of out. */
static void out_prepend(struct target *t, const char *s, size_t n)
{
	struct strbuf nb = { 0 };

	sb_addn(&nb, s, n);
	sb_addn(&nb, t->out.buf + t->out_off, out_pending(t));
	sb_free(&t->out);
	t->out = nb;
	t->out_off = 0;
}

/* out_consumed - empty out once all of it went, keeping its memory */
static void out_consumed(struct target *t)
{
	if (t->out_off == t->out.len) {
		sb_reset(&t->out);
		t->out_off = 0;
	}
}

/* ------------------------------------------------------------------ */
/* Producer side.                                                       */

/* str_member - a string member of a record, by offset, for rewriting */
static const char **str_member(struct acct_record *r, size_t off)
{
	return (const char **)(void *)((char *)r + off);
}

/* str_get - a string member of a record, by offset */
static const char *str_get(const struct acct_record *r, size_t off)
{
	const char *s;

	memcpy(&s, (const char *)r + off, sizeof(s));
	return s;
}

/* is_string_field - members entry_copy must copy */
static bool is_string_field(const struct field *f)
{
	return f->kind == FK_STR || f->kind == FK_STATUS ||
	       f->kind == FK_BOUNCE_CLASS;
}

/* put_str - copy s (with its NUL) to *p and advance it */
static char *put_str(char **p, const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = *p;

	memcpy(d, s, n);
	*p += n;
	return d;
}

/* entry_copy - one allocation holding rec and every string it names. */
static struct entry *entry_copy(const struct acct_record *rec)
{
	size_t size = sizeof(struct entry) +
		      rec->header_count * sizeof(struct acct_header_field);

	BUG_ON(rec->header_count && !rec->headers);
	for (size_t f = 0; f < F_COUNT; f++) {
		const char *s;

		if (!is_string_field(&fields[f]))
			continue;
		s = str_get(rec, fields[f].off);
		if (s)
			size += strlen(s) + 1;
	}
	for (size_t i = 0; i < ARRAY_SIZE(reject_strs); i++) {
		const char *s = str_get(rec, reject_strs[i]);

		if (s)
			size += strlen(s) + 1;
	}
	for (size_t i = 0; i < rec->header_count; i++) {
		BUG_ON(!rec->headers[i].name);
		size += strlen(rec->headers[i].name) + 1;
		size += strlen(rec->headers[i].value ? rec->headers[i].value : "") + 1;
	}

	struct entry *e = xmalloc(size);
	struct acct_header_field *h = (struct acct_header_field *)(e + 1);
	char *p = (char *)(h + rec->header_count);

	e->next = NULL;
	e->rec = *rec;
	if (!e->rec.time_logged)
		e->rec.time_logged = time(NULL);
	for (size_t f = 0; f < F_COUNT; f++) {
		const char **m;

		if (!is_string_field(&fields[f]))
			continue;
		m = str_member(&e->rec, fields[f].off);
		if (*m)
			*m = put_str(&p, *m);
	}
	for (size_t i = 0; i < ARRAY_SIZE(reject_strs); i++) {
		const char **m = str_member(&e->rec, reject_strs[i]);

		if (*m)
			*m = put_str(&p, *m);
	}
	for (size_t i = 0; i < rec->header_count; i++) {
		h[i].name = put_str(&p, rec->headers[i].name);
		h[i].value = put_str(&p, rec->headers[i].value ?
						 rec->headers[i].value : "");
	}
	e->rec.headers = rec->header_count ? h : NULL;
	return e;
}

/* wake - eventfd only when the writer may be asleep on this ring */
static void wake(struct acct_writer *w, struct producer *p)
{
	uint64_t one = 1;

	if (spsc_ring_consumer_sleeping(p->ring) &&
	    write(w->efd, &one, sizeof(one)) < 0) {
		/* the counter is saturated: the writer has a wake-up pending */
	}
}

/* push_overflow - move the producer's overflow list onto its ring, in order. */
static void push_overflow(struct acct_writer *w, struct producer *p)
{
	bool pushed = false;

	while (p->ovf_head) {
		void *batch[64];
		size_t n = 0, k;
		struct entry *e = p->ovf_head;

		/* read every next pointer first: a pushed entry is the writer's */
		for (; e && n < ARRAY_SIZE(batch); e = e->next)
			batch[n++] = e;
		k = spsc_ring_push(p->ring, batch, n);
		p->ovf_count -= k;
		pushed |= k > 0;
		p->ovf_head = k == n ? e : batch[k];
		if (k < n)
			break;
	}
	if (!p->ovf_head)
		p->ovf_tail = NULL;
	if (pushed)
		wake(w, p);
}

bool acct_wants(const struct acct_writer *w, enum acct_type type,
		enum acct_reject_kind reject_kind)
{
	BUG_ON((unsigned)type >= ACCT_NTYPES);
	if (!w || !(w->types & (1u << type)))
		return false;
	return type != ACCT_REJECT || (w->rkinds & reject_bit(reject_kind));
}

int acct_emit(struct acct_writer *w, unsigned producer,
	      const struct acct_record *rec)
{
	BUG_ON(producer >= w->nproducers);
	if (!acct_wants(w, rec->type, rec->reject_kind))
		return 0;

	struct producer *p = &w->prod[producer];

	if (p->ovf_head)
		push_overflow(w, p);
	if (p->ovf_count >= w->params.overflow_max)
		return -ENOBUFS;

	struct entry *e = entry_copy(rec);
	void *item = e;

	if (!p->ovf_head && spsc_ring_push(p->ring, &item, 1) == 1) {
		wake(w, p);
		return 0;
	}
	/* ring full: keep it, in order, for the next emit or flush */
	if (p->ovf_tail)
		p->ovf_tail->next = e;
	else
		p->ovf_head = e;
	p->ovf_tail = e;
	p->ovf_count++;
	return 0;
}

size_t acct_flush(struct acct_writer *w, unsigned producer)
{
	BUG_ON(producer >= w->nproducers);
	struct producer *p = &w->prod[producer];

	if (p->ovf_head)
		push_overflow(w, p);
	return p->ovf_count;
}

void acct_writer_stats(const struct acct_writer *w, struct acct_stats *out)
{
#define LD(f) atomic_load_explicit(&w->st.f, memory_order_relaxed)
	*out = (struct acct_stats){
		.records = LD(records), .lines = LD(lines), .bytes = LD(bytes),
		.errors = LD(errors), .pipe_restarts = LD(pipe_restarts),
		.spilled_bytes = LD(spilled_bytes), .rotations = LD(rotations),
		.deleted_files = LD(deleted_files), .stalls = LD(stalls),
	};
#undef LD
}

/* ------------------------------------------------------------------ */
/* Formatting (writer thread).                                          */

/* csv_add - one field per RFC 4180: quoted when it must be. */
static void csv_add(struct strbuf *sb, const char *s)
{
	if (!s[strcspn(s, ",\"\r\n")]) {
		sb_adds(sb, s);
		return;
	}
	sb_addc(sb, '"');
	for (const char *q; (q = strchr(s, '"')); s = q + 1) {
		sb_add(sb, s, (size_t)(q - s) + 1);
		sb_addc(sb, '"');
	}
	sb_adds(sb, s);
	sb_addc(sb, '"');
}

/* parse_num - 1..maxdigits decimal digits */
static bool parse_num(const char **p, unsigned *v, unsigned maxdigits)
{
	unsigned n = 0, d = 0;

	while (**p >= '0' && **p <= '9' && d < maxdigits) {
		n = n * 10 + (unsigned)(**p - '0');
		(*p)++;
		d++;
	}
	*v = n;
	return d > 0;
}

/* status_text - RFC 3463 text of X.subject.detail, or NULL */
static const char *status_text(unsigned subject, unsigned detail)
{
	for (size_t i = 0; i < ARRAY_SIZE(status_texts); i++)
		if (status_texts[i].subject == subject &&
		    status_texts[i].detail == detail)
			return status_texts[i].text;
	return NULL;
}

/* status_add - "5.1.1" becomes "5.1.1 (bad destination mailbox address)". */
static void status_add(struct strbuf *sb, const char *s)
{
	unsigned cls, subj, det;
	const char *p = s, *text;
	char buf[128];

	if (!parse_num(&p, &cls, 1) || *p++ != '.' ||
	    !parse_num(&p, &subj, 3) || *p++ != '.' ||
	    !parse_num(&p, &det, 3) || *p || (cls != 2 && cls != 4 && cls != 5)) {
		csv_add(sb, s);		/* already "X.Y.Z (text)", or free text */
		return;
	}
	text = status_text(subj, det);
	if (!text && cls == 2)
		text = "success";
	if (!text)			/* the subject's "other or undefined" */
		text = status_text(subj, 0);
	if (!text)
		text = "undefined status";
	snprintf(buf, sizeof(buf), "%s (%s)", s, text);
	csv_add(sb, buf);
}

/* time_add - "2023-11-14 22:13:20+0000" (local time), or time_t */
static void time_add(struct acct_writer *w, struct strbuf *sb, time_t t,
		     bool iso)
{
	char num[24];

	if (!iso) {
		snprintf(num, sizeof(num), "%lld", (long long)t);
		sb_adds(sb, num);
		return;
	}
	/* records of one batch share a few seconds: format each once */
	for (size_t i = 0; i < ARRAY_SIZE(w->tcache); i++)
		if (w->tcache[i].t == t && w->tcache[i].s[0]) {
			sb_adds(sb, w->tcache[i].s);
			return;
		}

	unsigned slot = w->tnext++ % ARRAY_SIZE(w->tcache);
	struct tm tm;

	localtime_r(&t, &tm);
	if (!strftime(w->tcache[slot].s, sizeof(w->tcache[slot].s),
		      "%Y-%m-%d %H:%M:%S%z", &tm))
		w->tcache[slot].s[0] = '\0';
	w->tcache[slot].t = t;
	sb_adds(sb, w->tcache[slot].s);
}

/* header_value - the first header of that name, without case */
static const char *header_value(const struct acct_record *r, const char *name)
{
	for (size_t i = 0; i < r->header_count; i++)
		if (str_ieq(r->headers[i].name, name))
			return r->headers[i].value;
	return NULL;
}

/*
 * bounce_class - the record's own class, or its category's as the
 * configuration had it when the writer was made; NULL without a category.
 */
static const char *bounce_class(const struct acct_writer *w,
				const struct acct_record *r)
{
	if (r->bounce_class)
		return r->bounce_class;
	if (!r->bounce_cat)
		return NULL;
	for (size_t i = 0; i < w->nhard_cats; i++)
		if (str_ieq(w->hard_cats[i], r->bounce_cat))
			return cfg_bounce_class_name(CFG_BOUNCE_HARD);
	return cfg_bounce_class_name(CFG_BOUNCE_SOFT);
}

/*
 * hard_cats_copy - the hard categories of cfg: every category a rule can
 * give (the operator's and the built-in ones), kept when its class is
 * hard, so the writer need not hold the configuration.
 */
static void hard_cats_copy(struct acct_writer *w, const struct cfg *cfg)
{
	size_t n = cfg_bounce_rule_count(cfg);

	w->hard_cats = xcalloc(n ? n : 1, sizeof(*w->hard_cats));
	for (size_t i = 0; i < n; i++) {
		const char *cat = cfg_bounce_rule_at(cfg, i)->category;
		bool seen = false;

		if (!cat || cfg_bounce_class_of(cfg, cat) != CFG_BOUNCE_HARD)
			continue;
		for (size_t k = 0; k < w->nhard_cats && !seen; k++)
			seen = str_ieq(w->hard_cats[k], cat);
		if (!seen)
			w->hard_cats[w->nhard_cats++] = xstrdup(cat);
	}
}

/* format_record - one CSV line (CRLF) with t's columns. */
static void format_record(struct acct_writer *w, const struct target *t,
			  const struct acct_record *r, struct strbuf *sb)
{
	uint64_t fm = t->fmask[r->type], hm = t->hmask[r->type];

	for (size_t i = 0; i < t->ncols; i++) {
		const struct column *c = &t->cols[i];

		if (i)
			sb_addc(sb, ',');
		if (c->field < 0) {
			const char *v;

			if ((hm & BIT(c->hidx)) &&
			    (v = header_value(r, t->hnames[c->hidx])))
				csv_add(sb, v);
			continue;
		}
		if (!(fm & BIT(c->field)))
			continue;	/* not applicable to this type: blank */

		const struct field *f = &fields[c->field];
		const char *s;
		char num[24];
		time_t tv;

		switch (f->kind) {
		case FK_TYPE:
			sb_adds(sb, types[r->type].code);
			break;
		case FK_TIME:
			memcpy(&tv, (const char *)r + f->off, sizeof(tv));
			if (tv)
				time_add(w, sb, tv, t->iso_times);
			break;
		case FK_STR:
			if ((s = str_get(r, f->off)))
				csv_add(sb, s);
			break;
		case FK_STATUS:
			if ((s = str_get(r, f->off)))
				status_add(sb, s);
			break;
		case FK_SIZE:
			if (r->dlv_size) {
				snprintf(num, sizeof(num), "%" PRIu64, r->dlv_size);
				sb_adds(sb, num);
			}
			break;
		case FK_SECS_QUEUED:
			if (r->time_queued && r->time_logged >= r->time_queued) {
				snprintf(num, sizeof(num), "%lld",
					 (long long)(r->time_logged - r->time_queued));
				sb_adds(sb, num);
			}
			break;
		case FK_USER_STRING:
			if (t->user_string)
				csv_add(sb, t->user_string);
			break;
		case FK_BOUNCE_CLASS:
			if ((s = bounce_class(w, r)))
				sb_adds(sb, s);
			break;
		default:
			BUG("accounting field %s: unknown kind %d", f->name, (int)f->kind);
		}
	}
	sb_add(sb, "\r\n", 2);
}

/* opt_add - a comma, then s quoted as needed (nothing for NULL) */
static void opt_add(struct strbuf *sb, const char *s)
{
	sb_addc(sb, ',');
	if (s)
		csv_add(sb, s);
}

/* format_reject - one reject log line (CRLF), reject_header's columns. */
static void format_reject(struct acct_writer *w, const struct acct_record *r,
			  struct strbuf *sb)
{
	if (w->utc.t != r->time_logged || !w->utc.s[0]) {
		struct tm tm;

		gmtime_r(&r->time_logged, &tm);
		if (!strftime(w->utc.s, sizeof(w->utc.s), "%Y-%m-%dT%H:%M:%SZ", &tm))
			w->utc.s[0] = '\0';
		w->utc.t = r->time_logged;
	}
	sb_addc(sb, (char)r->reject_kind);
	sb_addc(sb, ',');
	sb_adds(sb, w->utc.s);
	opt_add(sb, r->rcv_source_ip);
	opt_add(sb, r->helo);
	opt_add(sb, r->rcv_smtp_user);
	opt_add(sb, r->orig);
	opt_add(sb, r->rcpt);
	opt_add(sb, r->reply);
	sb_add(sb, "\r\n", 2);
}

/* ------------------------------------------------------------------ */
/* Files (writer thread once started; acct_writer_new before).          */

/* next_boundary - the next multiple of interval in local time */
static time_t next_boundary(time_t now, uint64_t interval)
{
	struct tm tm;
	long long off, local;

	/* local midnight for 1d, the hour for 1h, ... */
	localtime_r(&now, &tm);
	off = tm.tm_gmtoff;
	local = (long long)now + off;
	return (time_t)((local / (long long)interval + 1) * (long long)interval - off);
}

/* dated_name - DIR/STEM-YYYY-MM-DD-NNNN.EXT */
static char *dated_name(const struct target *t, const char *dir, time_t when,
			unsigned n)
{
	struct tm tm;

	localtime_r(&when, &tm);
	return xasprintf("%s/%s-%04d-%02d-%02d-%04u%s", dir, t->stem,
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, n, t->ext);
}

/* is_dated_name - STEM-YYYY-MM-DD-NNNN.EXT, the names rotation gives. */
static bool is_dated_name(const struct target *t, const char *name)
{
	static const char pat[] = "-dddd-dd-dd-dddd";
	size_t sl = strlen(t->stem), el = strlen(t->ext), pl = sizeof(pat) - 1;

	if (strlen(name) != sl + pl + el || strncmp(name, t->stem, sl) ||
	    strcmp(name + sl + pl, t->ext))
		return false;
	for (size_t i = 0; i < pl; i++) {
		char c = name[sl + i];

		if (pat[i] == 'd' ? (c < '0' || c > '9') : c != pat[i])
			return false;
	}
	return true;
}

/* rename_noreplace - 0, -EEXIST when to exists, or -errno. */
static int rename_noreplace(const char *from, const char *to)
{
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* no RENAME_NOREPLACE here; only this writer names these files */
	if (access(to, F_OK) == 0)
		return -EEXIST;
	return rename(from, to) == 0 ? 0 : -errno;
}

/*
 * file_retire - rename the current file to its dated name, in move-to or
 * (when that fails, e.g. another volume) next to it.  The file must be
 * closed by the caller or about to be reopened.
 */
static int file_retire(struct target *t, time_t when)
{
	const char *dirs[2] = { t->move_to, t->dir };
	int rc = -ENOENT;

	for (size_t d = 0; d < 2; d++) {
		if (!dirs[d])
			continue;
		for (unsigned n = 0; n < 10000; n++) {
			char *to = dated_name(t, dirs[d], when, n);

			rc = rename_noreplace(t->path, to);
			free(to);
			if (rc != -EEXIST)
				break;
		}
		if (rc == 0) {
			STAT_ADD(t->w, rotations, 1);
			return 0;
		}
		report(t->w, "%s %s: cannot move it to %s: %s", t->what, t->path,
		       dirs[d], strerror(-rc));
	}
	return rc;
}

/* file_open - open the current file, creating it with a header line. */
static int file_open(struct target *t, time_t now)
{
	struct stat st;
	int fd = open(t->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, t->mode);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	/* umask must not weaken or widen what world-readable says */
	if ((st.st_mode & 07777) != t->mode && fchmod(fd, t->mode) < 0)
		report(t->w, "%s %s: chmod: %s", t->what, t->path,
		       strerror(errno));
	t->fd = fd;
	t->size = (uint64_t)st.st_size;
	t->opened = now;
	t->has_records = t->size > t->header_len;
	if (!t->size)
		out_prepend(t, t->header, t->header_len);
	return 0;
}

/* file_flush - write out in one write(2); keep what did not go. */
static void file_flush(struct target *t, time_t now)
{
	bool wrote = false;

	if (!out_pending(t) || (t->failing && now < t->retry_at))
		return;
	if (t->fd < 0) {
		int rc = file_open(t, now);

		if (rc < 0) {
			if (!t->failing)
				report(t->w, "%s %s: open: %s", t->what,
				       t->path, strerror(-rc));
			t->failing = true;
			t->retry_at = now + 1;
			return;
		}
	}
	while (out_pending(t)) {
		ssize_t n = write(t->fd, t->out.buf + t->out_off, out_pending(t));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (!t->failing)
				report(t->w, "%s %s: write: %s (records kept in memory)",
				       t->what, t->path, strerror(errno));
			t->failing = true;
			t->retry_at = now + 1;
			break;
		}
		t->out_off += (size_t)n;
		t->size += (uint64_t)n;
		STAT_ADD(t->w, bytes, n);
		wrote = true;
	}
	if (!out_pending(t))
		t->failing = false;
	out_consumed(t);
	if (wrote && t->sync && fdatasync(t->fd) < 0)
		report(t->w, "%s %s: fdatasync: %s", t->what, t->path,
		       strerror(errno));
}

/* file_rotate - finish the current file and start a new one. */
static void file_rotate(struct target *t, time_t now)
{
	file_flush(t, now);
	if (out_pending(t) || t->fd < 0) {
		/* these bytes belong in this file; try again later */
		t->rotate_retry_at = now + 1;
		return;
	}
	close(t->fd);
	t->fd = -1;
	if (file_retire(t, t->opened) < 0)
		t->rotate_retry_at = now + 60;	/* keep appending meanwhile */
	int rc = file_open(t, now);

	if (rc < 0) {
		report(t->w, "%s %s: open: %s", t->what, t->path,
		       strerror(-rc));
		t->failing = true;
		t->retry_at = now + 1;
		/* file_flush reopens; a new file gets its header then */
		t->has_records = false;
	}
	if (t->delete_after && !t->move_to)
		t->next_delete = now;
}

/* file_add - append a formatted record, rotating first when it is full. */
static void file_add(struct target *t, const char *line, size_t len, time_t now)
{
	if (t->max_size && t->has_records && now >= t->rotate_retry_at &&
	    t->size + out_pending(t) + len > t->max_size)
		file_rotate(t, now);
	sb_add(&t->out, line, len);
	t->has_records = true;
}

/* file_delete_expired - delete-after: only rotated files, only without move-to. */
static void file_delete_expired(struct target *t, time_t now)
{
	uint64_t every = t->delete_after < 3600 ? t->delete_after : 3600;
	struct dirent *de;
	DIR *d;

	t->next_delete = now + (time_t)(every ? every : 1);
	if (t->move_to || !t->delete_after)
		return;
	if (!(d = opendir(t->dir))) {
		report(t->w, "%s %s: delete-after: %s: %s", t->what, t->path,
		       t->dir, strerror(errno));
		return;
	}
	while ((de = readdir(d))) {
		struct stat st;

		if (!is_dated_name(t, de->d_name) ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode) ||
		    (int64_t)st.st_mtime + (int64_t)t->delete_after > (int64_t)now)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			STAT_ADD(t->w, deleted_files, 1);
		else
			report(t->w, "%s %s: delete %s: %s", t->what, t->path,
			       de->d_name, strerror(errno));
	}
	closedir(d);
}

/* file_has_header - does the file at path start with our header line? */
static bool file_has_header(const struct target *t)
{
	char *buf = xmalloc(t->header_len);
	int fd = open(t->path, O_RDONLY | O_CLOEXEC);
	bool same = false;

	if (fd >= 0) {
		ssize_t n = pread(fd, buf, t->header_len, 0);

		same = n == (ssize_t)t->header_len &&
		       !memcmp(buf, t->header, t->header_len);
		close(fd);
	}
	free(buf);
	return same;
}

/* file_tick - once a second: move-interval, delete-after, external moves, retries */
static void file_tick(struct target *t, time_t now)
{
	struct stat a, b;

	if (t->next_move && now >= t->next_move) {
		t->next_move = next_boundary(now, t->move_interval);
		if (t->has_records)
			file_rotate(t, now);
	}
	if (t->next_delete && now >= t->next_delete)
		file_delete_expired(t, now);
	/* moved or removed behind our back (logrotate): start a new file */
	if (t->fd >= 0 && fstat(t->fd, &a) == 0 &&
	    (stat(t->path, &b) < 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)) {
		file_flush(t, now);
		if (!out_pending(t)) {
			int rc;

			close(t->fd);
			t->fd = -1;
			t->has_records = false;
			if ((rc = file_open(t, now)) < 0) {
				report(t->w, "%s %s: open: %s", t->what,
				       t->path, strerror(-rc));
				t->failing = true;
				t->retry_at = now + 1;
			}
		}
	}
	file_flush(t, now);
}

/* ------------------------------------------------------------------ */
/* Pipes (writer thread).                                               */

/*
 * last_boundary - the greatest record start <= limit in b, which starts at
 * a record start.  A record ends with a newline outside quotes: our CSV
 * keeps quotes balanced, so a quoted newline in a diagnostic is no end.
 */
static size_t last_boundary(const char *b, size_t len, size_t limit)
{
	size_t best = 0;
	bool inq = false;

	for (size_t i = 0; i < len && i < limit; i++) {
		if (b[i] == '"')
			inq = !inq;
		else if (b[i] == '\n' && !inq)
			best = i + 1;
	}
	return best;
}

/* hist_add - remember what the command was given, at least a pipe's worth. */
static void hist_add(struct target *t, const char *p, size_t n)
{
	size_t cut;

	sb_add(&t->hist, p, n);
	if (t->hist.len <= 2 * t->pipe_cap)
		return;
	cut = last_boundary(t->hist.buf, t->hist.len, t->hist.len - t->pipe_cap);
	if (!cut)
		return;
	memmove(t->hist.buf, t->hist.buf + cut, t->hist.len - cut + 1);
	t->hist.len -= cut;
	t->hist_base += cut;
}

/* eat_sigpipe - consume the SIGPIPE an EPIPE left pending (blocked here) */
static void eat_sigpipe(void)
{
	sigset_t set;
	struct timespec zero = { 0 };

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	while (sigtimedwait(&set, NULL, &zero) > 0)
		;
}

/* fd_high - keep pipe ends off 0-2 so dup2 onto stdin cannot be a no-op. */
static int fd_high(int fd)
{
	int nfd;

	if (fd > 2)
		return fd;
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	close(fd);
	return nfd;
}

/* pipe_spawn - start the command with the header, then what is queued. */
static int pipe_spawn(struct target *t, time_t now)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, dfl;
	char *argv[] = { (char *)"sh", (char *)"-c", t->path, NULL };
	int p[2], rc, cap;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	p[0] = fd_high(p[0]);
	p[1] = fd_high(p[1]);
	if (p[0] < 0 || p[1] < 0) {
		rc = -errno;
		if (p[0] >= 0)
			close(p[0]);
		if (p[1] >= 0)
			close(p[1]);
		return rc;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[0], 0);
	posix_spawnattr_init(&at);
	/* our thread blocks SIGPIPE and the daemon may ignore it: undo both */
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &dfl);
	/* its own group, so a stalled pipeline can be killed whole */
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK |
					      POSIX_SPAWN_SETSIGDEF |
					      POSIX_SPAWN_SETPGROUP);
	rc = posix_spawn(&pid, "/bin/sh", &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(p[0]);
	if (rc) {
		close(p[1]);
		return -rc;
	}
	if (fcntl(p[1], F_SETFL, O_NONBLOCK) < 0) {
		rc = -errno;
		close(p[1]);
		kill(-pid, SIGKILL);
		t->dying = pid;
		t->kill_at = now;
		return rc;
	}
	cap = fcntl(p[1], F_GETPIPE_SZ);
	t->pipe_cap = cap > 0 ? (size_t)cap : 65536;
	t->fd = p[1];
	t->pid = pid;
	t->broken = false;
	t->failing = false;
	out_prepend(t, t->header, t->header_len);
	sb_reset(&t->hist);
	t->hist_base = 0;
	t->streamed = 0;
	t->progress_at = now;
	if (t->started)
		STAT_ADD(t->w, pipe_restarts, 1);
	t->started = true;
	return 0;
}

/* pipe_reap - collect a failed command; SIGKILL it when it lingers. */
static void pipe_reap(struct target *t, time_t now)
{
	int status;
	pid_t r;

	if (t->dying <= 0)
		return;
	r = waitpid(t->dying, &status, WNOHANG);
	if (r == t->dying || (r < 0 && errno == ECHILD)) {
		t->dying = 0;
		return;
	}
	if (now >= t->kill_at) {
		kill(-t->dying, SIGKILL);
		t->kill_at = now + CHILD_GRACE;
	}
}

/*
 * pipe_fail - the command is gone or stuck.  What it never read is the
 * last `unread` bytes we wrote (the pipe keeps its buffer after the reader
 * closes); resend those, from the start of the record they begin in, to
 * the next command, and never the old header.
 */
static void pipe_fail(struct target *t, time_t now, const char *why)
{
	int unread = -1;
	size_t from, start;

	if (ioctl(t->fd, FIONREAD, &unread) < 0)
		unread = -1;
	if (t->streamed < t->header_len)	/* the header's tail, still in out */
		t->out_off += (size_t)(t->header_len - t->streamed);
	if (unread < 0 || (uint64_t)unread > t->streamed - t->hist_base)
		from = 0;			/* unknown: resend all we have */
	else
		from = (size_t)(t->streamed - (uint64_t)unread - t->hist_base);
	start = last_boundary(t->hist.buf, t->hist.len, from);
	if (t->hist_base + start < t->header_len)
		start = (size_t)(t->header_len - t->hist_base);
	if (start < t->hist.len)
		out_prepend(t, t->hist.buf + start, t->hist.len - start);
	sb_reset(&t->hist);

	close(t->fd);
	t->fd = -1;
	if (t->pid > 0) {
		kill(-t->pid, SIGTERM);
		t->dying = t->pid;
		t->kill_at = now + CHILD_GRACE;
		t->pid = 0;
		pipe_reap(t, now);
	}
	t->restart_at = now + (time_t)(t->retry_interval ? t->retry_interval : 1);
	report(t->w, "acct-file |%s: %s; restarting it in %llus, %llu bytes queued",
	       t->path, why,
	       (unsigned long long)(t->restart_at - now),
	       (unsigned long long)(out_pending(t) + t->mem.len +
				    (t->spill_wr - t->spill_rd)));
}

/* spill_open - open (or create) the spill file; what it holds is unread */
static int spill_open(struct target *t)
{
	struct stat st;

	if (t->spill_fd >= 0)
		return 0;
	t->spill_fd = open(t->spill_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (t->spill_fd < 0 || fstat(t->spill_fd, &st) < 0) {
		int rc = -errno;

		if (t->spill_fd >= 0)
			close(t->spill_fd);
		t->spill_fd = -1;
		return rc;
	}
	t->spill_rd = 0;
	t->spill_wr = (uint64_t)st.st_size;
	return 0;
}

/* spill_mem - move the in-memory queue to the end of the spill file. */
static void spill_mem(struct target *t)
{
	int rc = spill_open(t);
	size_t done = 0;

	while (!rc && done < t->mem.len) {
		ssize_t n = pwrite(t->spill_fd, t->mem.buf + done, t->mem.len - done,
				   (off_t)(t->spill_wr + done));

		if (n < 0 && errno != EINTR)
			rc = -errno;
		else if (n > 0)
			done += (size_t)n;
	}
	if (rc) {
		/* keep it in memory; the writer stalls before memory runs out */
		if (!t->failing)
			report(t->w, "acct-file |%s: spill file %s: %s", t->path,
			       t->spill_path, strerror(-rc));
		t->failing = true;
		return;
	}
	t->spill_wr += t->mem.len;
	STAT_ADD(t->w, spilled_bytes, t->mem.len);
	sb_reset(&t->mem);
}

/* pipe_refill - next bytes for the command: spill file first, then memory. */
static bool pipe_refill(struct target *t)
{
	sb_reset(&t->out);
	t->out_off = 0;
	if (t->spill_rd < t->spill_wr) {
		char buf[SPILL_CHUNK];
		uint64_t want = t->spill_wr - t->spill_rd;
		ssize_t n = pread(t->spill_fd, buf,
				  want < sizeof(buf) ? (size_t)want : sizeof(buf),
				  (off_t)t->spill_rd);

		if (n <= 0) {
			report(t->w, "acct-file |%s: reading spill file %s: %s",
			       t->path, t->spill_path,
			       n < 0 ? strerror(errno) : "truncated");
			return false;
		}
		sb_add(&t->out, buf, (size_t)n);
		t->spill_rd += (uint64_t)n;
		if (t->spill_rd == t->spill_wr && ftruncate(t->spill_fd, 0) == 0)
			t->spill_rd = t->spill_wr = 0;
		return true;
	}
	if (!t->mem.len)
		return false;
	struct strbuf tmp = t->out;

	t->out = t->mem;
	t->mem = tmp;
	return true;
}

/* pipe_backlog - bytes queued for the command, wherever they are */
static size_t pipe_backlog(const struct target *t)
{
	return out_pending(t) + t->mem.len + (size_t)(t->spill_wr - t->spill_rd);
}

/* pipe_pump - (re)start the command when due and feed it what it takes. */
static void pipe_pump(struct target *t, time_t now, bool may_start)
{
	if (t->mem.len > t->w->params.mem_max)
		spill_mem(t);
	if (t->fd < 0) {
		pipe_reap(t, now);
		if (!may_start || t->dying || now < t->restart_at)
			return;
		int rc = pipe_spawn(t, now);

		if (rc < 0) {
			report(t->w, "acct-file |%s: cannot start it: %s", t->path,
			       strerror(-rc));
			t->restart_at = now + (time_t)(t->retry_interval ?
							 t->retry_interval : 1);
			return;
		}
	}
	if (t->broken) {
		pipe_fail(t, now, "the command closed its input");
		return;
	}
	if (!pipe_backlog(t)) {
		t->progress_at = now;	/* the write timeout runs only while busy */
		return;
	}
	for (;;) {
		if (!out_pending(t) && !pipe_refill(t))
			break;

		ssize_t n = write(t->fd, t->out.buf + t->out_off, out_pending(t));

		if (n > 0) {
			hist_add(t, t->out.buf + t->out_off, (size_t)n);
			t->out_off += (size_t)n;
			t->streamed += (uint64_t)n;
			t->progress_at = now;
			STAT_ADD(t->w, bytes, n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		int e = n < 0 ? errno : EIO;

		if (e == EPIPE)
			eat_sigpipe();
		pipe_fail(t, now, strerror(e));
		return;
	}
	out_consumed(t);
	if (out_pending(t) && t->write_timeout &&
	    (uint64_t)(now - t->progress_at) >= t->write_timeout)
		pipe_fail(t, now, "write timed out");
}

/* pipe_tick - once a second: reap, and notice a command that exited */
static void pipe_tick(struct target *t, time_t now)
{
	int status;

	pipe_reap(t, now);
	if (t->pid > 0 && waitpid(t->pid, &status, WNOHANG) == t->pid) {
		char why[64];

		if (WIFEXITED(status))
			snprintf(why, sizeof(why), "the command exited with status %d",
				 WEXITSTATUS(status));
		else
			snprintf(why, sizeof(why), "the command was killed by signal %d",
				 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		t->pid = 0;
		pipe_fail(t, now, why);
	}
}

/* pipe_wait_dead - wait up to secs for pid, then kill its group. */
static void pipe_wait_dead(pid_t pid, int secs)
{
	struct timespec ms10 = { 0, 10 * 1000 * 1000 };
	int status;

	for (int i = 0; i < secs * 100; i++) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid || (r < 0 && errno == ECHILD))
			return;
		nanosleep(&ms10, NULL);
	}
	kill(-pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
}

/*
 * pipe_persist - leave what the command did not take in the spill file
 * for the next writer: unwritten out, the unread spill, then memory.
 */
static void pipe_persist(struct target *t)
{
	size_t pend = pipe_backlog(t);

	if (!pend) {
		if (t->spill_fd >= 0)
			close(t->spill_fd);
		t->spill_fd = -1;
		if (unlink(t->spill_path) < 0 && errno != ENOENT)
			report(t->w, "acct-file |%s: %s: %s", t->path, t->spill_path,
			       strerror(errno));
		return;
	}

	char *tmp = xasprintf("%s.tmp", t->spill_path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int rc = fd < 0 ? -errno : 0;

	if (!rc)
		rc = write_all(fd, t->out.buf + t->out_off, out_pending(t));
	for (uint64_t off = t->spill_rd; !rc && off < t->spill_wr;) {
		char buf[SPILL_CHUNK];
		uint64_t want = t->spill_wr - off;
		ssize_t n = pread(t->spill_fd, buf,
				  want < sizeof(buf) ? (size_t)want : sizeof(buf),
				  (off_t)off);

		if (n <= 0)
			rc = n < 0 ? -errno : -EIO;
		else
			rc = write_all(fd, buf, (size_t)n);
		off += n > 0 ? (uint64_t)n : 0;
	}
	if (!rc)
		rc = write_all(fd, t->mem.buf ? t->mem.buf : "", t->mem.len);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	if (fd >= 0 && close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && rename(tmp, t->spill_path) < 0)
		rc = -errno;
	if (rc) {
		report(t->w, "acct-file |%s: %zu bytes of records lost: %s: %s",
		       t->path, pend, tmp, strerror(-rc));
		unlink(tmp);
	} else {
		report(t->w, "acct-file |%s: %zu bytes of records left in %s for the next start",
		       t->path, pend, t->spill_path);
	}
	free(tmp);
	if (t->spill_fd >= 0)
		close(t->spill_fd);
	t->spill_fd = -1;
}

/* pipe_finish - at stop: let the command take everything, close, await it. */
static void pipe_finish(struct target *t)
{
	time_t now = time(NULL);
	time_t deadline = now + (time_t)(t->write_timeout ? t->write_timeout : 60);

	while (t->fd >= 0) {
		struct pollfd pfd;
		int unread = 0;

		now = time(NULL);
		pipe_tick(t, now);
		pipe_pump(t, now, false);
		if (t->fd < 0)
			break;
		/* done once the command has read it all, not just the pipe */
		if (!pipe_backlog(t) &&
		    (ioctl(t->fd, FIONREAD, &unread) < 0 || unread == 0))
			break;
		if (now >= deadline) {
			pipe_fail(t, now, "still busy at shutdown");
			break;
		}
		pfd = (struct pollfd){ .fd = t->fd,
				       .events = out_pending(t) ? POLLOUT : 0 };
		if (poll(&pfd, 1, 20) > 0 && (pfd.revents & (POLLERR | POLLHUP)))
			t->broken = true;
	}
	if (t->fd >= 0) {
		close(t->fd);
		t->fd = -1;
		if (t->pid > 0)
			pipe_wait_dead(t->pid, EXIT_WAIT);
		t->pid = 0;
	}
	if (t->dying > 0)
		pipe_wait_dead(t->dying, CHILD_GRACE);
	t->dying = 0;
	pipe_persist(t);
}

/* ------------------------------------------------------------------ */
/* Setup (controlling thread).                                          */

/* field_find - F_* of a record-fields name, or -1 */
static int field_find(const char *name)
{
	for (int f = 0; f < F_COUNT; f++)
		if (str_ieq(fields[f].name, name))
			return f;
	return -1;
}

/* header_index - the header_NAME slot of name, added if new; -1 if full */
static int header_index(struct target *t, const char *name)
{
	for (size_t i = 0; i < t->nhnames; i++)
		if (str_ieq(t->hnames[i], name))
			return (int)i;
	if (t->nhnames == MAX_HEADER_COLUMNS)
		return -1;
	t->hnames = xrealloc(t->hnames, (t->nhnames + 1) * sizeof(*t->hnames));
	t->hnames[t->nhnames] = xstrdup(name);
	return (int)t->nhnames++;
}

/*
 * is_arf_column - an arf_NAME column: the record's field "arf_NAME"
 * (a feedback-report field), not a header of the message
 */
static bool is_arf_column(const char *name)
{
	return !strncasecmp(name, "arf_", 4);
}

/*
 * target_columns - record-fields per type (the last line for a type wins),
 * then the file's columns: the union over its types, blanks where a type
 * does not have a column.
 */
static int target_columns(struct target *t, const struct cfg_acct *a,
			  char *err, size_t errlen)
{
	uint64_t fall = 0, hall = 0, fdef_h = 0;
	struct strbuf hdr = { 0 };

	for (unsigned ty = 0; ty < ACCT_NTYPES; ty++)
		t->fmask[ty] = default_fields[ty];
	if (t->types & (1u << ACCT_FEEDBACK)) {
		for (size_t k = 0; k < ARRAY_SIZE(f_default_headers); k++)
			fdef_h |= BIT(header_index(t, f_default_headers[k]));
		t->hmask[ACCT_FEEDBACK] = fdef_h;
	}
	for (size_t i = 0; i < a->record_fields_count; i++) {
		const struct cfg_record_fields *rf = &a->record_fields[i];
		uint64_t fm = 0, hm = 0;
		int ty = -1;

		for (unsigned k = 0; k < ACCT_NTYPES; k++)
			if (types[k].cfg_bit && types[k].cfg_bit == rf->record)
				ty = (int)k;
		if (ty < 0 || !(t->types & (1u << ty)))
			continue;	/* rs: never written here */
		for (size_t k = 0; k < rf->fields.count; k++) {
			const char *s = rf->fields.items[k];
			bool neg = *s == '!';
			int idx;

			s += neg;
			bool arf = !strncasecmp(s, "arf_", 4) && s[4];

			if (!strcmp(s, "*")) {
				if (neg) {
					fm = 0;
				} else {
					fm |= default_fields[ty];
					if (ty == ACCT_FEEDBACK)
						hm |= fdef_h;
				}
			} else if (arf || (!strncasecmp(s, "header_", 7) && s[7])) {
				/* arf_NAME keeps its prefix: is_arf_column() */
				if ((idx = header_index(t, arf ? s : s + 7)) < 0) {
					snprintf(err, errlen,
						 "acct-file %s: more than %d header_ fields",
						 a->path, MAX_HEADER_COLUMNS);
					return -EINVAL;
				}
				hm = neg ? hm & ~BIT(idx) : hm | BIT(idx);
			} else if ((idx = field_find(s)) >= 0) {
				fm = neg ? fm & ~BIT(idx) : fm | BIT(idx);
			} else {
				snprintf(err, errlen,
					 "%s:%d: acct-file %s: record-fields %s: unknown field '%s'",
					 a->origin.file ? a->origin.file : "-",
					 a->origin.line, a->path, types[ty].code, s);
				return -EINVAL;
			}
		}
		t->fmask[ty] = fm | BIT(F_TYPE);	/* the type always leads */
		t->hmask[ty] = hm;
	}
	for (unsigned ty = 0; ty < ACCT_NTYPES; ty++) {
		if (!(t->types & (1u << ty))) {
			t->fmask[ty] = t->hmask[ty] = 0;
			continue;
		}
		fall |= t->fmask[ty];
		hall |= t->hmask[ty];
	}
	t->cols = xcalloc(F_COUNT + t->nhnames, sizeof(*t->cols));
	for (int f = 0; f < F_COUNT; f++)
		if (fall & BIT(f))
			t->cols[t->ncols++] = (struct column){ .field = f };
	for (size_t h = 0; h < t->nhnames; h++)
		if (hall & BIT(h))
			t->cols[t->ncols++] = (struct column){ .field = -1,
							       .hidx = (unsigned)h };
	for (size_t i = 0; i < t->ncols; i++) {
		if (i)
			sb_addc(&hdr, ',');
		if (t->cols[i].field >= 0) {
			sb_adds(&hdr, fields[t->cols[i].field].name);
		} else {
			const char *hn = t->hnames[t->cols[i].hidx];

			if (!is_arf_column(hn))
				sb_adds(&hdr, "header_");
			csv_add(&hdr, hn);
		}
	}
	sb_add(&hdr, "\r\n", 2);
	t->header_len = hdr.len;
	t->header = sb_detach(&hdr);
	return 0;
}

/* path_split - dir, stem and extension of the configured path */
static void path_split(struct target *t)
{
	const char *slash = strrchr(t->path, '/');
	const char *base = slash ? slash + 1 : t->path;
	const char *dot = strrchr(base, '.');

	if (!slash)
		t->dir = xstrdup(".");
	else if (slash == t->path)
		t->dir = xstrdup("/");
	else
		t->dir = xstrndup(t->path, (size_t)(slash - t->path));
	if (!dot || dot == base)
		dot = base + strlen(base);
	t->stem = xstrndup(base, (size_t)(dot - base));
	t->ext = xstrdup(dot);
}

/* file_init - at start-up: the current file, ready with a header */
static int file_init(struct target *t, time_t now, char *err, size_t errlen)
{
	struct stat st;
	int rc;

	path_split(t);
	if (stat(t->path, &st) == 0 && st.st_size > 0 && !file_has_header(t)) {
		/* other columns (or not ours): never mix two layouts in a file */
		t->opened = st.st_mtime;
		if ((rc = file_retire(t, st.st_mtime)) < 0) {
			snprintf(err, errlen,
				 "%s %s: it has another header line and cannot be renamed: %s",
				 t->what, t->path, strerror(-rc));
			return rc;
		}
	}
	if ((rc = file_open(t, now)) < 0) {
		snprintf(err, errlen, "%s %s: %s", t->what, t->path,
			 strerror(-rc));
		return rc;
	}
	if (t->move_to && t->move_interval)
		t->next_move = next_boundary(now, t->move_interval);
	file_delete_expired(t, now);
	file_flush(t, now);		/* the header, before anything can fail */
	if (t->failing) {
		snprintf(err, errlen, "%s %s: cannot write to it", t->what,
			 t->path);
		return -EIO;
	}
	return 0;
}

/*
 * target_setup - one <acct-file>.  1: nothing we produce goes there
 * (skipped); 0: ready; <0: error in err, t partly set up (target_free).
 */
static int target_setup(struct acct_writer *w, struct target *t,
			const struct cfg_acct *a, time_t now, char *err,
			size_t errlen)
{
	unsigned tys = 0;
	int rc;

	for (unsigned ty = 0; ty < ACCT_NTYPES; ty++)
		if (a->records & types[ty].cfg_bit)
			tys |= 1u << ty;
	if (!tys)
		return 1;
	*t = (struct target){
		.w = w, .what = "acct-file", .path = xstrdup(a->path),
		.is_pipe = a->is_pipe,
		.iso_times = a->iso_times, .sync = a->sync,
		.mode = a->world_readable ? 0644 : 0640, .types = tys,
		.user_string = a->user_string ? xstrdup(a->user_string) : NULL,
		.max_size = a->max_size, .move_interval = a->move_interval,
		.delete_after = a->delete_after,
		.retry_interval = a->retry_interval,
		.write_timeout = a->write_timeout,
		.move_to = a->move_to ? xstrdup(a->move_to) : NULL,
		.fd = -1, .spill_fd = -1,
	};
	if ((rc = target_columns(t, a, err, errlen)) < 0)
		return rc;
	if (!t->is_pipe)
		return file_init(t, now, err, errlen);

	/* the same command twice gets two spill files, in config order */
	unsigned same = 0;

	for (struct target *o = w->targets; o < t; o++)
		same += o->is_pipe && !strcmp(o->path, t->path);
	t->spill_path = xasprintf("%s/coremta-acct-%016llx-%u.spill", w->spill_dir,
				  (unsigned long long)hash_str(HASH_SEED, t->path), same);
	if (access(t->spill_path, F_OK) == 0 && (rc = spill_open(t)) < 0) {
		snprintf(err, errlen, "acct-file |%s: spill file %s: %s", t->path,
			 t->spill_path, strerror(-rc));
		return rc;
	}
	return 0;
}

/*
 * reject_setup - one <rejectlog-file>: a file target with fixed columns.
 * 1: it records nothing (skipped); 0: ready; <0: error in err, t partly
 * set up (target_free).
 */
static int reject_setup(struct acct_writer *w, struct target *t,
			const struct cfg_rejectlog *r, time_t now, char *err,
			size_t errlen)
{
	unsigned kinds = reject_kinds(r->records);

	if (!kinds)
		return 1;
	*t = (struct target){
		.w = w, .what = "rejectlog-file", .path = xstrdup(r->path),
		.is_reject = true, .mode = 0640, .types = 1u << ACCT_REJECT,
		.rkinds = kinds, .max_size = r->max_size, .delete_after = r->delete_after,
		.header = xstrdup(reject_header),
		.header_len = sizeof(reject_header) - 1,
		.fd = -1, .spill_fd = -1,
	};
	return file_init(t, now, err, errlen);
}

bool acct_writer_needed(const struct cfg *cfg)
{
	for (size_t i = 0; i < cfg_acct_count(cfg); i++)
		for (unsigned ty = 0; ty < ACCT_NTYPES; ty++)
			if (cfg_acct_at(cfg, i)->records & types[ty].cfg_bit)
				return true;
	for (size_t i = 0; i < cfg_rejectlog_count(cfg); i++)
		if (reject_kinds(cfg_rejectlog_at(cfg, i)->records))
			return true;
	return false;
}

/* target_free - close and free; the writer is not running */
static void target_free(struct target *t)
{
	if (t->fd >= 0)
		close(t->fd);
	if (t->spill_fd >= 0)
		close(t->spill_fd);
	if (t->pid > 0) {
		kill(-t->pid, SIGTERM);
		pipe_wait_dead(t->pid, CHILD_GRACE);
	}
	free(t->path);
	free(t->cols);
	for (size_t i = 0; i < t->nhnames; i++)
		free(t->hnames[i]);
	free(t->hnames);
	free(t->header);
	free(t->user_string);
	free(t->move_to);
	free(t->dir);
	free(t->stem);
	free(t->ext);
	free(t->spill_path);
	sb_free(&t->out);
	sb_free(&t->mem);
	sb_free(&t->hist);
}

/* want_header - name (borrowed) among the fields acct_collect_headers
 * collects, once */
static void want_header(struct acct_writer *w, const char *name)
{
	bool seen = is_arf_column(name);

	for (size_t k = 0; k < w->nhnames && !seen; k++)
		seen = str_ieq(w->hnames[k], name);
	if (seen)
		return;
	w->hnames = xrealloc(w->hnames, (w->nhnames + 1) * sizeof(*w->hnames));
	w->hnames[w->nhnames++] = name;
}

int acct_writer_new(const struct cfg *cfg, const struct acct_params *params,
		    unsigned nproducers, struct acct_writer **out, char *err,
		    size_t errlen)
{
	struct acct_writer *w = xcalloc(1, sizeof(*w));
	size_t n = cfg_acct_count(cfg), nrej = cfg_rejectlog_count(cfg);
	time_t now = time(NULL);
	void *mem;

	w->efd = -1;

	if (params)
		w->params = *params;
	if (!w->params.ring_capacity)
		w->params.ring_capacity = 4096;
	if (!w->params.overflow_max)
		w->params.overflow_max = (size_t)1 << 20;
	if (!w->params.mem_max)
		w->params.mem_max = (size_t)4 << 20;
	w->spill_dir = xstrdup(w->params.spill_dir ? w->params.spill_dir : "/tmp");
	hard_cats_copy(w, cfg);
	BUG_ON(w->params.sink_types && !w->params.on_record);
	w->types |= w->params.sink_types;
	w->params.spill_dir = w->spill_dir;
	atomic_init(&w->stop, false);
	w->nproducers = nproducers;
	BUG_ON(posix_memalign(&mem, CACHE_LINE,
			      (nproducers ? nproducers : 1) * sizeof(*w->prod)));
	w->prod = mem;
	memset(w->prod, 0, (nproducers ? nproducers : 1) * sizeof(*w->prod));
	for (unsigned i = 0; i < nproducers; i++)
		w->prod[i].ring = spsc_ring_new(w->params.ring_capacity);
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd < 0) {
		int rc = -errno;

		snprintf(err, errlen, "accounting: eventfd: %s", strerror(errno));
		acct_writer_free(w);
		return rc;
	}
	w->targets = xcalloc(n + nrej ? n + nrej : 1, sizeof(*w->targets));
	for (size_t i = 0; i < n; i++) {
		int rc = target_setup(w, &w->targets[w->ntargets],
				      cfg_acct_at(cfg, i), now, err, errlen);

		if (rc == 1)
			continue;
		w->ntargets++;
		if (rc < 0) {
			acct_writer_free(w);
			return rc;
		}
		w->types |= w->targets[w->ntargets - 1].types;
		if (w->targets[w->ntargets - 1].is_pipe &&
		    access(w->spill_dir, W_OK | X_OK) < 0) {
			rc = -errno;
			snprintf(err, errlen, "accounting: spill directory %s: %s",
				 w->spill_dir, strerror(errno));
			acct_writer_free(w);
			return rc;
		}
	}
	for (size_t i = 0; i < nrej; i++) {
		struct target *t = &w->targets[w->ntargets];
		int rc = reject_setup(w, t, cfg_rejectlog_at(cfg, i), now, err,
				      errlen);

		if (rc == 1)
			continue;
		w->ntargets++;
		if (rc < 0) {
			acct_writer_free(w);
			return rc;
		}
		w->types |= t->types;
		w->rkinds |= t->rkinds;
	}
	for (size_t i = 0; i < w->ntargets; i++)
		for (size_t h = 0; h < w->targets[i].nhnames; h++)
			want_header(w, w->targets[i].hnames[h]);
	for (size_t h = 0; h < w->params.n_sink_headers; h++)
		want_header(w, w->params.sink_headers[h]);
	w->pfds = xcalloc(1 + w->ntargets, sizeof(*w->pfds));
	*out = w;
	return 0;
}

/* wanted_header - the files' spelling of this field name, or NULL. */
static const char *wanted_header(const struct acct_writer *w, const char *name, size_t len)
{
	for (size_t i = 0; i < w->nhnames; i++)
		if (strlen(w->hnames[i]) == len && strncasecmp(w->hnames[i], name, len) == 0)
			return w->hnames[i];
	return NULL;
}

size_t acct_collect_headers(const struct acct_writer *w, const char *msg, size_t len,
			    struct acct_header_field *out, struct strbuf *scratch)
{
	size_t value_off[ACCT_HEADERS_MAX];
	const char *p = msg, *end = msg + len;
	bool capturing = false;
	size_t n = 0;

	if (!w || !w->nhnames)
		return 0;
	sb_reset(scratch);
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *next = eol ? eol + 1 : end;
		const char *stop = eol ? eol : end;
		if (stop > p && stop[-1] == '\r')
			stop--;
		if (stop == p)
			break;	/* the empty line: end of the header section */
		if (*p == ' ' || *p == '\t') {
			if (capturing) {
				while (p < stop && (*p == ' ' || *p == '\t'))
					p++;
				sb_addc(scratch, ' ');
				sb_add(scratch, p, (size_t)(stop - p));
			}
		} else {
			if (capturing)
				sb_addc(scratch, '\0');
			capturing = false;
			const char *colon = memchr(p, ':', (size_t)(stop - p));
			const char *name = colon ? wanted_header(w, p, (size_t)(colon - p)) : NULL;
			if (name && n < ACCT_HEADERS_MAX) {
				const char *v = colon + 1;
				while (v < stop && (*v == ' ' || *v == '\t'))
					v++;
				out[n].name = name;
				value_off[n++] = scratch->len;
				sb_add(scratch, v, (size_t)(stop - v));
				capturing = true;
			}
		}
		p = next;
	}
	if (capturing)
		sb_addc(scratch, '\0');
	for (size_t i = 0; i < n; i++)
		out[i].value = scratch->buf + value_off[i];
	return n;
}

size_t acct_header_names(const struct acct_writer *w, const char *const **names)
{
	*names = w ? w->hnames : NULL;
	return w ? w->nhnames : 0;
}

/* ------------------------------------------------------------------ */
/* The writer thread.                                                   */

/* handle_entry - format one record for every file that takes it, free it */
static void handle_entry(struct acct_writer *w, struct entry *e, time_t now)
{
	const struct acct_record *r = &e->rec;

	if (w->params.sink_types & (1u << r->type)) {
		w->params.on_record(w->params.sink_arg, r);
		w->sink_pending = true;
	}

	for (size_t i = 0; i < w->ntargets; i++) {
		struct target *t = &w->targets[i];

		if (!(t->types & (1u << r->type)) ||
		    (t->is_reject && !(t->rkinds & reject_bit(r->reject_kind))))
			continue;
		if (t->is_pipe) {
			format_record(w, t, r, &t->mem);
		} else {
			sb_reset(&w->line);
			if (t->is_reject)
				format_reject(w, r, &w->line);
			else
				format_record(w, t, r, &w->line);
			file_add(t, w->line.buf, w->line.len, now);
		}
		STAT_ADD(w, lines, 1);
	}
	free(e);
}

/* sink_flush - end of a batch for the record sink */
static void sink_flush(struct acct_writer *w)
{
	if (w->sink_pending && w->params.on_flush)
		w->params.on_flush(w->params.sink_arg);
	w->sink_pending = false;
}

/* drain_rings - a budgeted batch from every producer */
static size_t drain_rings(struct acct_writer *w, time_t now)
{
	void *batch[BATCH];
	size_t total = 0;

	for (unsigned i = 0; i < w->nproducers; i++) {
		for (int round = 0; round < BATCHES_PER_TURN; round++) {
			size_t n = spsc_ring_pop(w->prod[i].ring, batch, BATCH);

			for (size_t k = 0; k < n; k++)
				handle_entry(w, batch[k], now);
			total += n;
			if (n < BATCH)
				break;
		}
	}
	STAT_ADD(w, records, total);
	sink_flush(w);
	return total;
}

/* drain_overflow - at stop only: producers are quiet, their lists are ours. */
static size_t drain_overflow(struct acct_writer *w, time_t now)
{
	size_t total = 0;

	for (unsigned i = 0; i < w->nproducers; i++) {
		struct producer *p = &w->prod[i];

		while (p->ovf_head) {
			struct entry *e = p->ovf_head;

			p->ovf_head = e->next;
			handle_entry(w, e, now);
			total++;
		}
		p->ovf_tail = NULL;
		p->ovf_count = 0;
	}
	STAT_ADD(w, records, total);
	sink_flush(w);
	return total;
}

/* writer_stalled - a target holds too much in memory: leave the rings be. */
static bool writer_stalled(const struct acct_writer *w)
{
	size_t cap = 4 * w->params.mem_max;

	for (size_t i = 0; i < w->ntargets; i++) {
		const struct target *t = &w->targets[i];

		if (out_pending(t) > cap || t->mem.len > cap)
			return true;
	}
	return false;
}

/* writer_sleep - the ring sleep protocol; poll the eventfd and busy pipes */
static void writer_sleep(struct acct_writer *w, bool stalled)
{
	size_t n = 0;
	bool empty = true;
	uint64_t v;

	for (unsigned i = 0; i < w->nproducers; i++)
		spsc_ring_prepare_sleep(w->prod[i].ring);
	for (unsigned i = 0; i < w->nproducers && !stalled; i++)
		if (spsc_ring_count(w->prod[i].ring))
			empty = false;
	if (empty && !atomic_load_explicit(&w->stop, memory_order_acquire)) {
		w->pfds[n++] = (struct pollfd){ .fd = w->efd, .events = POLLIN };
		for (size_t i = 0; i < w->ntargets; i++) {
			struct target *t = &w->targets[i];

			/* events 0 still reports POLLERR: the reader went away */
			if (t->is_pipe && t->fd >= 0)
				w->pfds[n++] = (struct pollfd){
					.fd = t->fd,
					.events = pipe_backlog(t) ? POLLOUT : 0,
				};
		}
		if (poll(w->pfds, n, POLL_MS) > 0) {
			for (size_t k = 1, i = 0; i < w->ntargets; i++) {
				struct target *t = &w->targets[i];

				if (!t->is_pipe || t->fd < 0)
					continue;
				if (w->pfds[k++].revents & (POLLERR | POLLHUP))
					t->broken = true;
			}
		}
	}
	for (unsigned i = 0; i < w->nproducers; i++)
		spsc_ring_finish_sleep(w->prod[i].ring);
	if (read(w->efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nobody woke us */
	}
}

/* writer_main - drain, write, tick; at stop, drain everything and close */
static void *writer_main(void *arg)
{
	struct acct_writer *w = arg;
	time_t last_tick = 0;
	sigset_t set;

	/* a dead pipe command must give EPIPE, not kill the daemon */
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	for (;;) {
		bool stopping = atomic_load_explicit(&w->stop, memory_order_acquire);
		time_t now = time(NULL);
		bool stalled = !stopping && writer_stalled(w);
		size_t got = 0;

		if (stalled)
			STAT_ADD(w, stalls, 1);
		else
			got = drain_rings(w, now);
		if (stopping && !got)
			got = drain_overflow(w, now);
		for (size_t i = 0; i < w->ntargets; i++) {
			struct target *t = &w->targets[i];

			if (t->is_pipe)
				pipe_pump(t, now, true);
			else
				file_flush(t, now);
		}
		if (now != last_tick) {
			last_tick = now;
			for (size_t i = 0; i < w->ntargets; i++) {
				if (w->targets[i].is_pipe)
					pipe_tick(&w->targets[i], now);
				else
					file_tick(&w->targets[i], now);
			}
		}
		if (stopping && !got)
			break;
		if (!got || stalled)
			writer_sleep(w, stalled);
	}

	for (size_t i = 0; i < w->ntargets; i++) {
		struct target *t = &w->targets[i];

		if (t->is_pipe) {
			pipe_finish(t);
			continue;
		}
		t->failing = false;
		file_flush(t, time(NULL));
		if (out_pending(t))
			report(w, "%s %s: %zu bytes of records lost at shutdown",
			       t->what, t->path, out_pending(t));
		if (t->fd >= 0) {
			if (t->sync && fdatasync(t->fd) < 0)
				report(w, "%s %s: fdatasync: %s", t->what,
				       t->path, strerror(errno));
			close(t->fd);
			t->fd = -1;
		}
	}
	return NULL;
}

int acct_writer_start(struct acct_writer *w)
{
	int rc;

	BUG_ON(w->running);
	rc = pthread_create(&w->thread, NULL, writer_main, w);
	if (rc)
		return -rc;
	pthread_setname_np(w->thread, "acct");
	w->running = true;
	return 0;
}

void acct_writer_stop(struct acct_writer *w)
{
	uint64_t one = 1;

	if (!w->running)
		return;
	atomic_store_explicit(&w->stop, true, memory_order_release);
	if (write(w->efd, &one, sizeof(one)) < 0) {
		/* saturated: a wake-up is pending anyway */
	}
	pthread_join(w->thread, NULL);
	w->running = false;
}

void acct_writer_free(struct acct_writer *w)
{
	if (!w)
		return;
	acct_writer_stop(w);
	for (unsigned i = 0; i < w->nproducers; i++) {
		struct producer *p = &w->prod[i];
		void *e;

		while (spsc_ring_pop(p->ring, &e, 1))
			free(e);
		while (p->ovf_head) {
			struct entry *next = p->ovf_head->next;

			free(p->ovf_head);
			p->ovf_head = next;
		}
		spsc_ring_free(p->ring);
	}
	free(w->prod);
	for (size_t i = 0; i < w->ntargets; i++)
		target_free(&w->targets[i]);
	free(w->targets);
	free(w->hnames);
	free(w->pfds);
	if (w->efd >= 0)
		close(w->efd);
	sb_free(&w->line);
	free(w->spill_dir);
	for (size_t i = 0; i < w->nhard_cats; i++)
		free(w->hard_cats[i]);
	free(w->hard_cats);
	free(w);
}
