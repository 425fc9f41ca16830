/*
 * engine/fbl.c - the closed feedback loop (engine/fbl.h): suppression at
 * RCPT time, reports to processor addresses into rb/f records, and the
 * store fed by hard bounces (b from the shards through the accounting
 * writer, rb and f from the processors here).
 *
 * Threads: reader i and producer i belong to intake thread i; the sink
 * (pend, npend) to the accounting writer thread; the rest is fixed after
 * fbl_new/fbl_set_acct.  The store itself is shared (LMDB serialises its
 * writers; readers take no lock).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "services/report.h"
#include "services/sentidx.h"
#include "services/suppress.h"
#include "util/util.h"

#include "engine/fbl.h"

#define REPLY_MAX 512

/* A suppression the sink collected, added at the end of the batch. */
struct pend {
	char *addr, *scope_value, *reason;
	enum suppress_scope scope;
	enum suppress_kind kind;
	time_t expires;
};

/* A delivered recipient the sink collected for the sent index. */
struct pend_sent {
	char *message_id, *rcpt, *mail_from, *job_id, *vmta;
};

struct reader_slot {
	struct suppress_reader *r;
	struct sentidx_reader *sent;	/* NULL without processors */
	char reply[REPLY_MAX];
	struct smtp_rcpt *kept;		/* fbl_drop_suppressed's */
	size_t cap_kept;
	uint64_t kept_files;		/* names under <disk-queue>/unmatched */
};

struct fbl {
	const struct cfg *cfg;
	struct suppress *store;
	struct reader_slot *readers;
	unsigned nreaders;
	struct acct_writer *acct;
	struct sentidx *sent;		/* only with processors */
	/* accounting writer thread */
	struct pend *pend;
	size_t npend, cap_pend;
	struct pend_sent *psent;
	size_t npsent, cap_psent;
	uint64_t sink_errors;
};

/*
 * sync_address_lists - the exact and @domain lines of every top-level
 * <address-list> into the store, under the list's name; a list's old
 * entries that left the configuration leave the store.  (Its /regex/
 * lines are matched from the configuration: the store holds exact keys.)
 */
static int sync_address_lists(struct fbl *f, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg_address_list_count(f->cfg); i++) {
		const struct cfg_address_list *al = cfg_address_list_at(f->cfg, i);
		size_t n = al->set.addresses.count + al->set.domains.count, k = 0;
		struct suppress_entry *e = xcalloc(n ? n : 1, sizeof(*e));
		char **doms = xcalloc(al->set.domains.count + 1, sizeof(*doms));
		char *why = xasprintf("address-list %s", al->name);

		for (size_t j = 0; j < al->set.addresses.count; j++)
			e[k++] = (struct suppress_entry){ .addr = al->set.addresses.items[j] };
		for (size_t j = 0; j < al->set.domains.count; j++) {
			doms[j] = xasprintf("@%s", al->set.domains.items[j]);
			e[k++] = (struct suppress_entry){ .addr = doms[j] };
		}
		for (size_t j = 0; j < n; j++) {
			e[j].scope = SUPPRESS_NAMED_LIST;
			e[j].scope_value = al->name;
			e[j].kind = SUPPRESS_LIST;
			e[j].reason = why;
		}
		int rc = suppress_replace_scope(f->store, SUPPRESS_NAMED_LIST, al->name, e, n, NULL);
		if (rc < 0)
			snprintf(err, errlen, "%s:%d: <address-list %s>: %s", al->origin.file,
				 al->origin.line, al->name,
				 rc == -EINVAL ? "a line is no address the suppression store can hold"
					       : strerror(-rc));
		for (size_t j = 0; j < al->set.domains.count; j++)
			free(doms[j]);
		free(doms);
		free(e);
		free(why);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void free_pend_sent(struct pend_sent *p)
{
	free(p->message_id);
	free(p->rcpt);
	free(p->mail_from);
	free(p->job_id);
	free(p->vmta);
}

static char *dup_or_null(const char *s)
{
	return s && *s ? xstrdup(s) : NULL;
}

char *fbl_store_dir(const struct cfg *cfg)
{
	const struct cfg_global *g = cfg_global(cfg);

	return g->suppression_db && *g->suppression_db
		       ? xstrdup(g->suppression_db)
		       : xasprintf("%s/suppression", g->spool_dir);
}

int fbl_new(const struct cfg *cfg, unsigned nreaders, struct fbl **out,
	    char *err, size_t errlen)
{
	const struct cfg_global *g = cfg_global(cfg);
	struct fbl *f = xcalloc(1, sizeof(*f));
	char *dir = fbl_store_dir(cfg);
	int rc = suppress_open(dir, NULL, &f->store, err, errlen);

	free(dir);
	if (rc < 0) {
		free(f);
		return rc;
	}
	f->cfg = cfg;
	for (size_t i = 0; i < g->suppression_files.count; i++) {
		const char *path = g->suppression_files.items[i];
		char *why = xasprintf("list %s", path);
		struct suppress_entry tmpl = { .kind = SUPPRESS_LIST, .reason = why };
		size_t n;

		rc = suppress_import(f->store, path, &tmpl, &n, err, errlen);
		free(why);
		if (rc < 0) {
			fbl_free(f);
			return rc;
		}
	}
	if ((rc = sync_address_lists(f, err, errlen)) < 0) {
		fbl_free(f);
		return rc;
	}
	if (cfg_processor_count(cfg)) {
		/* reports quote the original's Message-ID: what we sent under it */
		char *sdir = xasprintf("%s/sent-index", g->spool_dir);
		rc = sentidx_open(sdir, (unsigned)g->sent_index_days, &f->sent, err, errlen);
		free(sdir);
		if (rc < 0) {
			fbl_free(f);
			return rc;
		}
	}
	f->nreaders = nreaders;
	f->readers = xcalloc(nreaders ? nreaders : 1, sizeof(*f->readers));
	for (unsigned i = 0; i < nreaders; i++)
		if ((rc = suppress_reader_new(f->store, &f->readers[i].r)) < 0 ||
		    (f->sent && (rc = sentidx_reader_new(f->sent, &f->readers[i].sent)) < 0)) {
			snprintf(err, errlen, "suppression store: reader: %s", strerror(-rc));
			fbl_free(f);
			return rc;
		}
	*out = f;
	return 0;
}

void fbl_free(struct fbl *f)
{
	if (!f)
		return;
	for (unsigned i = 0; i < f->nreaders; i++) {
		suppress_reader_free(f->readers[i].r);
		sentidx_reader_free(f->readers[i].sent);
		free(f->readers[i].kept);
	}
	free(f->readers);
	for (size_t i = 0; i < f->npend; i++) {
		free(f->pend[i].addr);
		free(f->pend[i].scope_value);
		free(f->pend[i].reason);
	}
	free(f->pend);
	for (size_t i = 0; i < f->npsent; i++)
		free_pend_sent(&f->psent[i]);
	free(f->psent);
	sentidx_close(f->sent);
	suppress_close(f->store);
	free(f);
}

void fbl_set_acct(struct fbl *f, struct acct_writer *acct)
{
	f->acct = acct;
}

/* domain_of - the domain of an address, or NULL */
static const char *domain_of(const char *addr)
{
	const char *at = addr ? strrchr(addr, '@') : NULL;

	return at && at[1] ? at + 1 : NULL;
}

/*
 * entry_scope - suppression-scope applied to an entry; without the
 * sender's domain or the VMTA it says, the entry is global (suppressing
 * more rather than sending to a dead or complaining address again).
 */
static void entry_scope(const struct fbl *f, const char *sender, const char *vmta,
			enum suppress_scope *scope, const char **value)
{
	const char *d = domain_of(sender);

	*scope = SUPPRESS_GLOBAL;
	*value = NULL;
	switch ((enum cfg_suppression_scope)cfg_global(f->cfg)->suppression_scope) {
	case CFG_SUPPRESS_GLOBAL:
		break;
	case CFG_SUPPRESS_SENDER_DOMAIN:
		if (d) {
			*scope = SUPPRESS_SENDER_DOMAIN;
			*value = d;
		}
		break;
	case CFG_SUPPRESS_VMTA:
		if (vmta && *vmta) {
			*scope = SUPPRESS_VMTA;
			*value = vmta;
		}
		break;
	}
}

/*
 * bounce_kind - what a bounce of this class does to the address: 1 with
 * *kind and *expires when it is suppressed, 0 when not.
 */
static int bounce_kind(const struct fbl *f, enum cfg_bounce_class cls, time_t now,
		       enum suppress_kind *kind, time_t *expires)
{
	uint64_t soft_for = cfg_global(f->cfg)->suppress_soft_for;

	if (cls == CFG_BOUNCE_HARD) {
		*kind = SUPPRESS_HARD_BOUNCE;
		*expires = 0;
		return 1;
	}
	if (!soft_for)
		return 0;
	*kind = SUPPRESS_SOFT_BOUNCE;
	*expires = now + (time_t)soft_for;
	return 1;
}

/* ------------------------------------------------------------------ */
/* RCPT time.                                                           */

/* printable - s with anything but printable ASCII as '?', at most n */
static void printable(char *dst, size_t cap, const char *s)
{
	size_t i = 0;

	for (; s[i] && i + 1 < cap; i++)
		dst[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
	dst[i] = '\0';
}

/*
 * lookup - is rcpt suppressed for this mail: the store's scopes, then the
 * source's suppression-lists (their exact lines in the store, their
 * /regex/ lines from the configuration)?  1 with *hit, 0, or -errno.
 */
static int lookup(struct reader_slot *rs, const struct cfg *cfg,
		  const struct cfg_source *src, const char *mail_from,
		  const char *vmta, const char *rcpt, time_t now,
		  struct suppress_hit *hit)
{
	int rc = suppress_check(rs->r, rcpt, domain_of(mail_from), vmta, now, hit);

	for (size_t i = 0; rc == 0 && src && i < src->suppression_lists.count; i++) {
		const char *name = src->suppression_lists.items[i];
		const struct cfg_address_list *al = cfg_address_list_find(cfg, name);

		rc = suppress_check_scope(rs->r, rcpt, SUPPRESS_NAMED_LIST, name, now, hit);
		if (rc == 0 && al && cfg_address_set_match_regex(&al->set, rcpt)) {
			*hit = (struct suppress_hit){ .scope = SUPPRESS_NAMED_LIST,
						      .kind = SUPPRESS_LIST };
			snprintf(hit->reason, sizeof(hit->reason), "address-list %s", al->name);
			rc = 1;
		}
	}
	return rc;
}

const char *fbl_rcpt_check(struct fbl *f, unsigned reader,
			   const struct cfg_source *src, const char *mail_from,
			   const char *rcpt)
{
	struct reader_slot *rs = &f->readers[reader];
	struct suppress_hit hit;
	const char *vmta = src ? src->default_virtual_mta : NULL;
	int rc;

	BUG_ON(reader >= f->nreaders);
	if (cfg_global(f->cfg)->suppression_action == CFG_SUPPRESS_BOUNCE)
		return NULL;	/* accepted; fbl_drop_suppressed after DATA */
	rc = lookup(rs, f->cfg, src, mail_from, vmta, rcpt, time(NULL), &hit);
	if (rc == 0 || rc == -EINVAL)
		return NULL;	/* not suppressed; or no address the store could hold */
	if (rc < 0)
		return "451 4.3.0 Error: suppression list unavailable, try again later";
	char why[96];
	printable(why, sizeof(why), hit.reason);
	snprintf(rs->reply, sizeof(rs->reply),
		 "550 5.7.1 Recipient address suppressed (%s%s%s%s)",
		 suppress_kind_name(hit.kind), hit.whole_domain ? ", whole domain" : "",
		 *why ? ": " : "", why);
	return rs->reply;
}

const struct smtp_message *fbl_drop_suppressed(struct fbl *f, unsigned producer,
					       const struct smtp_message *msg,
					       struct smtp_message *scratch)
{
	struct reader_slot *rs = &f->readers[producer];
	const char *vmta = msg->virtual_mta;	/* the session's choice */
	time_t now = time(NULL);
	size_t nkept = 0;

	BUG_ON(producer >= f->nreaders);
	if (cfg_global(f->cfg)->suppression_action != CFG_SUPPRESS_BOUNCE)
		return msg;
	if (rs->cap_kept < msg->rcpt_count) {
		rs->cap_kept = msg->rcpt_count;
		rs->kept = xrealloc(rs->kept, rs->cap_kept * sizeof(*rs->kept));
	}
	for (size_t i = 0; i < msg->rcpt_count; i++) {
		struct suppress_hit hit;
		int rc = lookup(rs, f->cfg, msg->source, msg->mail_from, vmta,
				msg->rcpts[i].addr, now, &hit);
		if (rc <= 0) {
			/* not suppressed, or unreadable: sending is the safe side
			 * here, the message is accepted already */
			rs->kept[nkept++] = msg->rcpts[i];
			continue;
		}
		char why[96], diag[200];
		printable(why, sizeof(why), hit.reason);
		snprintf(diag, sizeof(diag), "smtp;550 5.7.1 Recipient address suppressed (%s%s%s)",
			 suppress_kind_name(hit.kind), *why ? ": " : "", why);
		struct acct_record r = {
			.type = ACCT_BOUNCE,
			.orig = msg->mail_from,
			.rcpt = msg->rcpts[i].addr,
			.orcpt = msg->rcpts[i].orcpt,
			.dsn_action = "failed",
			.dsn_status = "5.7.1",
			.dsn_diag = diag,
			.bounce_cat = "suppressed",
			.src_type = "smtp",
			.src_mta = msg->client_ip,
			.vmta = vmta,
			.job_id = msg->job_id,
			.env_id = msg->envid,
			.time_queued = now,
		};
		if (f->acct)
			(void)acct_emit(f->acct, producer, &r);
	}
	if (nkept == msg->rcpt_count)
		return msg;
	*scratch = *msg;
	scratch->rcpts = rs->kept;
	scratch->rcpt_count = nkept;
	return scratch;
}

/* ------------------------------------------------------------------ */
/* The accounting writer's b records.                                   */

/* sink_delivered - a d record with the original's Message-ID, kept for
 * the batch's sent-index transaction */
static void sink_delivered(struct fbl *f, const struct acct_record *r)
{
	const char *msgid = NULL;

	for (size_t i = 0; i < r->header_count && !msgid; i++)
		if (str_ieq(r->headers[i].name, "Message-Id"))
			msgid = r->headers[i].value;
	if (!f->sent || !msgid || !r->rcpt)
		return;
	if (f->npsent == f->cap_psent) {
		f->cap_psent = f->cap_psent ? 2 * f->cap_psent : 64;
		f->psent = xrealloc(f->psent, f->cap_psent * sizeof(*f->psent));
	}
	f->psent[f->npsent++] = (struct pend_sent){
		.message_id = xstrdup(msgid), .rcpt = xstrdup(r->rcpt),
		.mail_from = dup_or_null(r->orig), .job_id = dup_or_null(r->job_id),
		.vmta = dup_or_null(r->vmta),
	};
}

static void sink_record(void *arg, const struct acct_record *r)
{
	struct fbl *f = arg;
	enum suppress_kind kind;
	time_t expires;
	enum suppress_scope scope;
	const char *value;

	if (r->type == ACCT_DELIVERY) {
		sink_delivered(f, r);
		return;
	}
	/* a suppressed recipient's b record must not suppress it again */
	if (r->type != ACCT_BOUNCE || !r->rcpt ||
	    (r->bounce_cat && str_ieq(r->bounce_cat, "suppressed")))
		return;
	if (!bounce_kind(f, cfg_bounce_class_of(f->cfg, r->bounce_cat), time(NULL),
			 &kind, &expires))
		return;
	entry_scope(f, r->orig, r->vmta, &scope, &value);
	if (f->npend == f->cap_pend) {
		f->cap_pend = f->cap_pend ? 2 * f->cap_pend : 64;
		f->pend = xrealloc(f->pend, f->cap_pend * sizeof(*f->pend));
	}
	f->pend[f->npend++] = (struct pend){
		.addr = xstrdup(r->rcpt),
		.scope_value = value ? xstrdup(value) : NULL,
		.reason = xasprintf("b %s %s", r->dsn_status ? r->dsn_status : "",
				    r->bounce_cat ? r->bounce_cat : ""),
		.scope = scope, .kind = kind, .expires = expires,
	};
}

/* sink_flush - one durable transaction for the batch's suppressions, one
 * (not fsynced) for its deliveries' Message-IDs */
static void sink_flush(void *arg)
{
	struct fbl *f = arg;

	if (f->npsent) {
		struct sentidx_entry *se = xcalloc(f->npsent, sizeof(*se));
		for (size_t i = 0; i < f->npsent; i++)
			se[i] = (struct sentidx_entry){
				.message_id = f->psent[i].message_id, .rcpt = f->psent[i].rcpt,
				.mail_from = f->psent[i].mail_from, .job_id = f->psent[i].job_id,
				.vmta = f->psent[i].vmta,
			};
		f->sink_errors += sentidx_put(f->sent, se, f->npsent, time(NULL)) < 0;
		for (size_t i = 0; i < f->npsent; i++)
			free_pend_sent(&f->psent[i]);
		f->npsent = 0;
		free(se);
	}
	struct suppress_entry *e = xcalloc(f->npend ? f->npend : 1, sizeof(*e));

	for (size_t i = 0; i < f->npend; i++)
		e[i] = (struct suppress_entry){
			.addr = f->pend[i].addr, .scope = f->pend[i].scope,
			.scope_value = f->pend[i].scope_value, .kind = f->pend[i].kind,
			.expires = f->pend[i].expires, .reason = f->pend[i].reason,
		};
	/* one address the store refuses must not cost the others theirs */
	if (f->npend && suppress_add(f->store, e, f->npend) == -EINVAL)
		for (size_t i = 0; i < f->npend; i++)
			f->sink_errors += suppress_add(f->store, &e[i], 1) < 0;
	for (size_t i = 0; i < f->npend; i++) {
		free(f->pend[i].addr);
		free(f->pend[i].scope_value);
		free(f->pend[i].reason);
	}
	f->npend = 0;
	free(e);
}

void fbl_acct_params(struct fbl *f, struct acct_params *ap)
{
	static const char *const sent_headers[] = { "Message-Id" };

	ap->sink_types = 1u << ACCT_BOUNCE;
	if (f->sent) {
		ap->sink_types |= 1u << ACCT_DELIVERY;
		ap->sink_headers = sent_headers;
		ap->n_sink_headers = ARRAY_SIZE(sent_headers);
	}
	ap->on_record = sink_record;
	ap->on_flush = sink_flush;
	ap->sink_arg = f;
}

/* ------------------------------------------------------------------ */
/* Processors.                                                          */

/*
 * record_headers - the original's headers as header_ fields, then (f)
 * the feedback-report fields as arf_NAME, repeated names as one list.
 */
static struct acct_header_field *record_headers(const struct report *rep, bool arf,
						struct arena *a, size_t *n)
{
	size_t cap = rep->norig + (arf ? rep->narf : 0), k = 0;
	struct acct_header_field *h = arena_alloc(a, (cap ? cap : 1) * sizeof(*h));

	for (size_t i = 0; i < rep->norig && k < ACCT_HEADERS_MAX; i++)
		h[k++] = (struct acct_header_field){ rep->orig[i].name, rep->orig[i].value };
	for (size_t i = 0; arf && i < rep->narf && k < cap; i++) {
		const char *name = rep->arf[i].name;
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = str_ieq(rep->arf[j].name, name);
		if (seen)
			continue;
		struct strbuf sb = { 0 };
		for (size_t j = i; j < rep->narf; j++)
			if (str_ieq(rep->arf[j].name, name)) {
				if (sb.len)
					sb_addc(&sb, ',');
				sb_adds(&sb, rep->arf[j].value);
			}
		h[k++] = (struct acct_header_field){
			arena_printf(a, "arf_%s", name), arena_strdup(a, sb_str(&sb)) };
		sb_free(&sb);
	}
	*n = k;
	return h;
}

/* report_record - rb/f records and the suppressions of one parsed report */
static void report_record(struct fbl *f, unsigned producer, const struct smtp_message *msg,
			  const char *env_rcpt, const struct report *rep,
			  const struct sentidx_hit *sent, struct arena *a)
{
	bool complaint = rep->kind == REPORT_COMPLAINT;
	size_t nh;
	struct acct_header_field *h = record_headers(rep, complaint, a, &nh);
	struct suppress_entry *e = arena_alloc(a, (rep->nrcpts ? rep->nrcpts : 1) * sizeof(*e));
	size_t ne = 0;
	time_t now = time(NULL);
	const char *vmta = report_field_get(rep->orig, rep->norig, "X-Virtual-MTA");
	const char *complainer_sender = rep->original_mail_from;
	const char *job_id = rep->orig_job_id;

	/* what the report does not quote, what we sent under its Message-ID says */
	if (sent) {
		vmta = vmta ? vmta : sent->vmta;
		complainer_sender = complainer_sender ? complainer_sender : sent->mail_from;
		job_id = job_id ? job_id : sent->job_id;
	}
	const char *sender = complaint ? complainer_sender : env_rcpt;

	for (size_t i = 0; i < rep->nrcpts; i++) {
		const struct report_rcpt *rr = &rep->rcpts[i];
		/* delayed, delivered, relayed, expanded: news, not a failure */
		bool failed = complaint || !rr->action || str_ieq(rr->action, "failed");
		struct acct_record r = {
			.type = complaint ? ACCT_FEEDBACK
				: failed ? ACCT_REMOTE_BOUNCE : ACCT_REMOTE_STATUS,
			.orig = complaint ? complainer_sender : env_rcpt,
			.rcpt = rr->rcpt,
			.orcpt = rr->orcpt,
			.dsn_action = rr->action,
			.dsn_status = rr->status,
			.dsn_diag = rr->diag,
			.dsn_mta = rr->remote_mta,
			.bounce_cat = rr->bounce_cat,
			.bounce_class = complaint ? NULL : cfg_bounce_class_name(rr->cls),
			.src_type = "smtp",
			.src_mta = msg->client_ip,
			.rep_source_ip = msg->client_ip,
			.dsn_reporting_mta = complaint ? NULL : rep->reporting_mta,
			.reporting_mta = complaint ? rep->reporting_mta : NULL,
			.format = rep->format,
			.feedback_type = rep->feedback_type,
			.user_agent = rep->user_agent,
			.reported_domain = rep->reported_domain,
			.dlv_source_ip = rep->source_ip,
			.job_id = job_id,
			.env_id = rep->env_id,
			.vmta = vmta,
			.headers = h,
			.header_count = nh,
		};
		if (f->acct)
			(void)acct_emit(f->acct, producer, &r);	/* -ENOBUFS: the
				suppression below still holds what matters */

		enum suppress_kind kind = SUPPRESS_COMPLAINT;
		time_t expires = 0;
		if (!failed)
			continue;
		if (!complaint && !bounce_kind(f, rr->cls, now, &kind, &expires))
			continue;
		e[ne] = (struct suppress_entry){
			.addr = rr->rcpt, .kind = kind, .expires = expires,
			.reason = complaint
				? arena_printf(a, "f %s", rep->feedback_type ? rep->feedback_type : "abuse")
				: arena_printf(a, "rb %s %s", rr->status ? rr->status : "",
					       rr->bounce_cat ? rr->bounce_cat : ""),
		};
		entry_scope(f, sender, vmta, &e[ne].scope, &e[ne].scope_value);
		ne++;
	}
	if (ne && suppress_add(f->store, e, ne) == -EINVAL)
		for (size_t i = 0; i < ne; i++)
			(void)suppress_add(f->store, &e[i], 1);
}

/*
 * keep_unmatched - msg into a new file of <disk-queue>/unmatched, fsynced
 * with its directory; 0 or -errno.
 */
static int keep_unmatched(struct fbl *f, unsigned producer, const struct smtp_message *msg)
{
	char *dir = xasprintf("%s/unmatched", cfg_global(f->cfg)->spool_dir);
	char *path = xasprintf("%s/%lld-%d-%u-%llu.eml", dir, (long long)time(NULL),
			       (int)getpid(), producer,
			       (unsigned long long)++f->readers[producer].kept_files);
	int rc = 0, fd = -1, dfd = -1;

	if (mkdir(dir, 0750) < 0 && errno != EEXIST)
		rc = -errno;
	else if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640)) < 0)
		rc = -errno;
	else if ((rc = write_all(fd, msg->data, msg->len)) == 0 && fsync(fd) < 0)
		rc = -errno;
	if (fd >= 0 && close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 || fsync(dfd) < 0))
		rc = -errno;
	if (dfd >= 0)
		close(dfd);
	if (rc && fd >= 0)
		unlink(path);
	free(path);
	free(dir);
	return rc;
}

/* unmatched - what becomes of mail for processor addresses only that the
 * processor does not record; error: it was a report it could not use */
static enum fbl_verdict unmatched(struct fbl *f, unsigned producer,
				  const struct cfg_processor *proc,
				  const struct smtp_message *msg, bool error,
				  const char **forward_to)
{
	if (error && proc->forward_errors_to && *proc->forward_errors_to) {
		*forward_to = proc->forward_errors_to;
		return FBL_FORWARD;
	}
	if (proc->forward_unmatched_to && *proc->forward_unmatched_to) {
		*forward_to = proc->forward_unmatched_to;
		return FBL_FORWARD;
	}
	if (proc->deliver_unmatched)
		return FBL_DELIVER;
	return keep_unmatched(f, producer, msg) == 0 ? FBL_KEPT : FBL_DELIVER;
}

enum fbl_verdict fbl_on_message(struct fbl *f, unsigned producer,
				const struct smtp_message *msg, const char **forward_to)
{
	const struct cfg_processor *proc = NULL;
	const char *env_rcpt = NULL;
	size_t matched = 0;
	enum fbl_verdict v = FBL_DELIVER;

	if (!cfg_processor_count(f->cfg))
		return FBL_DELIVER;
	for (size_t i = 0; i < msg->rcpt_count; i++) {
		const struct cfg_processor *p = cfg_processor_match(f->cfg, msg->rcpts[i].addr);
		if (!p)
			continue;
		matched++;
		if (!proc) {
			proc = p;
			env_rcpt = msg->rcpts[i].addr;
		}
	}
	if (!proc)
		return FBL_DELIVER;

	struct arena *a = arena_new();
	struct report rep;

	report_parse(msg->data, msg->len, env_rcpt, f->cfg, a, &rep);

	/* the original's Message-ID names what we sent: it fills what the
	 * report leaves out, and is the recipient of a report that names none
	 * when that message had one recipient */
	struct sentidx_hit sent;
	bool have_sent = f->readers[producer].sent && rep.orig_message_id &&
			 sentidx_get(f->readers[producer].sent, rep.orig_message_id, &sent) == 1;
	if (have_sent && rep.kind == REPORT_UNKNOWN && sent.nrcpts == 1)
		report_add_rcpt(&rep, proc->kind == CFG_PROC_BOUNCE ? REPORT_BOUNCE : REPORT_COMPLAINT,
				sent.rcpts[0], f->cfg, a);
	if ((proc->kind == CFG_PROC_BOUNCE && rep.kind == REPORT_BOUNCE) ||
	    (proc->kind == CFG_PROC_FEEDBACK && rep.kind == REPORT_COMPLAINT)) {
		report_record(f, producer, msg, env_rcpt, &rep, have_sent ? &sent : NULL, a);
		/* mixed with ordinary recipients, the message is delivered whole */
		if (matched == msg->rcpt_count && !proc->deliver_matched)
			v = FBL_CONSUMED;
	} else if (matched == msg->rcpt_count) {
		/* a known format with nothing usable, or the other kind of
		 * report, is an error; anything else is unmatched */
		v = unmatched(f, producer, proc, msg, rep.format != NULL, forward_to);
	}
	arena_free(a);
	return v;
}
