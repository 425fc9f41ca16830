/*
 * config - coremta's configuration: PowerMTA-compatible files loaded into
 * an immutable, typed model with the lookups the hot path needs.
 *
 * Threads: cfg_load_*() run on the thread that (re)loads the
 * configuration.  A loaded struct cfg never changes, so every thread may
 * read it and call the lookups concurrently.  It is reference-counted: a
 * reload builds a new one and posts it to each running thread's
 * struct cfg_mailbox; each thread switches at a loop boundary and drops
 * its reference to the old one, which is freed by whichever thread lets
 * go last (cfg_ref/cfg_unref/cfg_free from any thread).
 *
 * Ownership: everything a lookup returns points into the struct cfg and
 * lives exactly as long as it.  Diagnostics are appended to the caller's
 * diag_list ("file:line: error|warning: text"); nothing is printed here.
 */
#ifndef COREMTA_CONFIG_H
#define COREMTA_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "config/values.h"
#include "util/util.h"

struct cfg;

/* Where a value came from: a file and line, or NULL file for a default. */
struct cfg_origin {
	const char *file;
	int line;
};

struct cfg_strlist {
	size_t count;
	const char **items;
};

/* ------------------------------------------------------------------ */
/* Global settings (top level of the file).                            */

enum cfg_http_level {
	CFG_HTTP_NONE,
	CFG_HTTP_MONITOR,
	CFG_HTTP_OPERATOR,
	CFG_HTTP_ADMIN,
};

struct cfg_http_access {
	struct cfg_cidr net;
	enum cfg_http_level level;
	bool deny_logs;
	struct cfg_origin origin;
};

struct cfg_listener {
	struct cfg_sockaddr addr;
	const char *text;		/* as written, for messages */
	const char *source;		/* source=NAME or NULL */
	bool immediate_tls;		/* tls=immediate: implicit TLS */
	struct cfg_origin origin;
};

/*
 * domain-key SELECTOR,DOMAIN,KEYFILE (top level, <domain-key-list>,
 * <virtual-mta>): the key is read and checked when the file is loaded,
 * before the privilege drop, and lives as long as the struct cfg.
 */
struct dkim_key;

struct cfg_domain_key {
	const char *selector;
	const char *domain;		/* lower case; "*" = any (d= the identity's) */
	const char *path;
	const struct dkim_key *key;	/* util/dkim.h */
	struct cfg_origin origin;
};

/* Keys in file order: the order PowerMTA tries them in. */
struct cfg_domain_keys {
	size_t count;
	const struct cfg_domain_key *items;
};

/* smtp-source-host IP HOSTNAME (global or per virtual-mta). */
struct cfg_source_host {
	const char *ip;
	const char *hostname;
	struct cfg_origin origin;
};

/*
 * ip-connection-limit CIDR N (connections to each remote IP in CIDR) or
 * mx-connection-limit PATTERN N (to each remote MX host whose name
 * matches the glob PATTERN), across all queues and shards.
 */
struct cfg_conn_limit {
	bool is_mx;
	struct cfg_cidr net;		/* ip- */
	const char *mx;			/* mx-: a glob, '*' any run of characters */
	uint32_t max;
	struct cfg_origin origin;
};

/*
 * <mx-rollup-list> line `mx PATTERN NAME [rollup-by-ip]`: a domain whose
 * most preferred MX host matches PATTERN (a glob; with rollup-by-ip a
 * CIDR its address falls in) is queued under NAME (a `.rollup` name,
 * configured like a domain: <domain NAME>), with every other such domain.
 */
struct cfg_mx_rollup {
	const char *pattern;		/* the glob, as written */
	bool by_ip;
	struct cfg_cidr net;		/* by_ip */
	const char *name;		/* lower case, ends in .rollup */
	struct cfg_origin origin;
};

/* What a suppression entry covers (coremta extension). */
enum cfg_suppression_scope {
	CFG_SUPPRESS_GLOBAL,		/* the address, for every sender */
	CFG_SUPPRESS_SENDER_DOMAIN,	/* the address, for one MAIL FROM domain */
	CFG_SUPPRESS_VMTA,		/* the address, for one virtual-mta */
};

/* What RCPT TO of a suppressed address gets. */
enum cfg_suppression_action {
	CFG_SUPPRESS_REJECT,		/* 550 5.7.1 at RCPT */
	CFG_SUPPRESS_BOUNCE,		/* 250, then a b record, category suppressed */
};

struct cfg_global {
	const char *postmaster;
	const char *host_name;
	const char *process_user;
	bool run_as_root;
	const char *spool_dir;		/* disk-queue, or the first <spool> */
	uint64_t memory_pool_buffer_size;
	uint64_t body_cache_size;	/* per shard, bytes of spool records */
	uint64_t min_free_space;
	uint32_t journal_sync_delay;	/* ms an outcome may wait for its sync */
	uint32_t group_commit_wait;	/* us a commit may wait for bodies arriving */
	uint32_t total_max_smtp_out;
	uint32_t total_max_smtp_in;
	/* inbound deadlines a trickle of bytes cannot reset (seconds) */
	uint64_t smtp_in_command_timeout;	/* one whole command line */
	uint64_t smtp_in_tls_timeout;		/* a TLS handshake */
	uint64_t smtp_in_greeting_timeout;	/* connect to the first HELO/EHLO */
	uint64_t smtp_in_max_data_memory;	/* message data in RAM, per intake
						   thread; 0 = no budget */
	bool smtp_await_slot;
	uint32_t intake_threads;
	uint32_t shard_count;		/* 0 = one per usable core */
	bool allow_shard_oversubscription;
	struct cfg_strlist reserved_cpus;	/* cores kept for intake etc. */
	bool deliver_bounces;
	bool log_bounces;
	const char *log_file;
	uint32_t log_rotate;		/* old log files kept; 0: no rotation */
	int log_level;			/* util/log.h's enum log_level */
	uint32_t http_mgmt_port;
	bool http_mgmt_tls;		/* HTTPS with smtp-server-tls-certificate */
	const char *http_api_key;
	struct cfg_strlist relay_domains;
	struct cfg_strlist relay_addresses;	/* exact ones; /re/ ones compiled: */
	const struct cfg_regex *const *relay_address_res;
	size_t relay_address_re_count;
	struct cfg_strlist name_servers;
	struct cfg_domain_keys domain_keys;	/* top level and <domain-key-list> */
	const char *smtp_server_tls_certificate;
	const char *smtp_server_tls_ciphers;
	bool sync_msg_create;
	bool sync_msg_update;
	bool spool_delete_corrupted;
	/* coremta extensions: the suppression store (services/suppress.h) */
	const char *suppression_db;	/* directory; NULL = <disk-queue>/suppression */
	int suppression_scope;		/* enum cfg_suppression_scope */
	int suppression_action;		/* enum cfg_suppression_action */
	uint64_t suppress_soft_for;	/* soft bounces suppressed this long; 0 = not */
	uint64_t sent_index_days;	/* delivered Message-IDs kept for report matching */
	struct cfg_strlist suppression_files;	/* imported at start */
	struct cfg_strlist cold_vmtas;	/* cold-virtual-mta: warming up */

	size_t listener_count;
	const struct cfg_listener *listeners;
	size_t http_access_count;
	const struct cfg_http_access *http_access;
	size_t source_host_count;
	const struct cfg_source_host *source_hosts;
	/* ip-connection-limit and mx-connection-limit lines, in file order */
	size_t conn_limit_count;
	const struct cfg_conn_limit *conn_limits;
	/* <mx-rollup-list> lines, in file order (the first match wins) */
	size_t mx_rollup_count;
	const struct cfg_mx_rollup *mx_rollups;
};

/* ------------------------------------------------------------------ */
/* <source>: policy for injecting clients, by IP or by name.           */

enum cfg_dsn_return { CFG_DSN_RETURN_HEADERS, CFG_DSN_RETURN_FULL };
enum cfg_dsn_format { CFG_DSN_FORMAT_STANDARD, CFG_DSN_FORMAT_PLAIN_TEXT };

struct cfg_source {
	const char *name;		/* "0/0", "10.0.0.0/8", "{auth}", ... */
	bool always_allow_relaying;
	bool smtp_service;
	bool require_auth;
	bool allow_auth;
	bool allow_starttls;
	bool allow_unencrypted_plain_auth;
	bool require_starttls_before_auth;
	struct cfg_rate smtp_max_auth_failure_rate;
	uint64_t max_message_size;	/* 0 = unlimited */
	uint32_t max_rcpt_per_message;	/* 0 = unlimited */
	bool too_many_rcpts_fails_message;
	uint32_t max_message_hops;
	bool hide_message_source;
	bool add_received_header;
	bool add_message_id_header;
	bool add_date_header;
	bool verp_default;
	bool suppress_local_dsn;
	enum cfg_dsn_return dsn_return_default;
	enum cfg_dsn_format dsn_format;
	bool log_connections;
	bool log_commands;
	bool log_data;
	bool process_x_virtual_mta;
	bool retain_x_virtual_mta;
	bool reject_invalid_virtual_mta;
	const char *invalid_virtual_mta_fallback;
	bool process_x_job;
	bool retain_x_job;
	const char *jobid_header;
	const char *jobid_prefix;
	bool process_x_envid;
	bool retain_x_envid;
	const char *default_virtual_mta;
	const char *pattern_list;
	struct cfg_strlist remove_headers;
	const char *source_group;	/* <source-group> it belongs to, or NULL */
	uint32_t max_smtp_in_per_ip;	/* 0 = no cap */
	struct cfg_strlist suppression_lists;	/* <address-list> names */
};

/*
 * <source-group NAME>: inbound connection slots shared by the sources
 * that name it (PowerMTA's max-smtp-in / reserved-smtp-in).
 */
struct cfg_source_group {
	const char *name;
	uint32_t max_smtp_in;		/* at once, the whole group; 0 = no cap */
	uint32_t reserved_smtp_in;	/* of total-max-smtp-in, only for it */
	struct cfg_origin origin;
};

/* ------------------------------------------------------------------ */
/* <domain>: the effective settings of one queue (domain, virtual-mta). */

enum cfg_delivery_type {
	CFG_TYPE_SMTP,
	CFG_TYPE_PIPE,
	CFG_TYPE_FILE,
	CFG_TYPE_DISCARD,
	CFG_TYPE_HTTP,
};

enum cfg_dkim_sign { CFG_DKIM_NO, CFG_DKIM_YES, CFG_DKIM_IF_OPTIONS };
/* The same order as util/dkim.h's enum dkim_canon. */
enum cfg_dkim_canon { CFG_DKIM_RELAXED, CFG_DKIM_SIMPLE };
enum cfg_dkim_algorithm { CFG_DKIM_ALG_ANY, CFG_DKIM_ALG_RSA, CFG_DKIM_ALG_ED25519 };

struct cfg_smtp_pattern_list;

struct cfg_queue {
	const char *pattern;		/* the most specific <domain> matched */
	uint32_t max_smtp_out;
	uint32_t max_msg_per_connection;	/* 0 = unlimited */
	uint32_t max_rcpt_per_transaction;
	uint32_t max_errors_per_connection;	/* 0 = unlimited */
	struct cfg_rate max_msg_rate;
	struct cfg_rate max_connect_rate;
	struct cfg_rate max_data_volume_rate;
	struct cfg_schedule retry_after;
	uint64_t retry_recipients_after;
	uint64_t bounce_after;
	bool bounce_upon_5xx_greeting;
	bool bounce_upon_transfer_failure;
	bool smtp_421_means_mx_unavailable;
	uint32_t bounce_after_attempts;	/* 0 = no limit */
	uint64_t connect_timeout;
	uint64_t smtp_greeting_timeout;
	uint64_t smtp_command_timeout;
	uint64_t data_send_timeout;
	uint64_t smtp_data_termination_timeout;
	uint64_t connection_idle_timeout;
	uint64_t smtp_out_rampup_interval;
	bool use_starttls;
	bool require_starttls;
	uint32_t queue_priority;
	const char *smtp_hosts;		/* PowerMTA route syntax, or NULL */
	uint32_t default_smtp_port;
	const char *queue_to;
	bool disable_mx_rollup;
	enum cfg_delivery_type type;
	const struct cfg_smtp_pattern_list *smtp_pattern_list;
	struct cfg_rate backoff_max_msg_rate;
	uint32_t backoff_max_smtp_out;
	struct cfg_schedule backoff_retry_after;
	/* daily caps per (source IP, site) while warming up; count 0: none */
	struct cfg_daily max_cold_vmta_msg;	/* a cold-virtual-mta's */
	struct cfg_daily warmup_schedule;	/* any source's (coremta) */
	/* adaptive message rate per (site, source IP) (coremta) */
	bool adaptive_rate;
	struct cfg_rate adaptive_max_msg_rate;	/* ceiling; unlimited: max-msg-rate */
	struct cfg_rate adaptive_min_msg_rate;	/* floor */
	struct cfg_rate adaptive_increase;	/* added per clean interval */
	uint32_t adaptive_decrease;		/* percent cut per "too fast" */
	uint64_t adaptive_increase_every;	/* the clean interval, seconds */
	uint64_t backoff_to_normal_after;	/* 0 = never */
	struct cfg_rate backoff_max_connect_rate;
	const char *backoff_notify;	/* mailed when the queue enters backoff */
	bool backoff_upon_all_sources_disabled;
	uint64_t reenable_source_ip_after;	/* disable-source-ip default; 0 = never */
	const char *reroute_to_virtual_mta;	/* a vmta or pool, or NULL */
	const char *backoff_reroute_to_virtual_mta;	/* the same, in backoff */
	bool backoff_to_normal_after_delivery;
	uint64_t notify_of_delay_every;
	enum cfg_dkim_sign dkim_sign;
	const char *dkim_identity;	/* sender-or-from, from, sender, [user]@domain */
	const char *dkim_identity_fallback;	/* the same, or NULL */
	enum cfg_dkim_algorithm dkim_algorithm;
	struct cfg_strlist dkim_headers;	/* signed beyond the base set */
	enum cfg_dkim_canon dkim_headers_canon;
	enum cfg_dkim_canon dkim_body_canon;
	bool dkim_add_body_limit;
	bool dkim_add_timestamp;
	uint64_t dkim_expire_after;	/* 0 = never (no x=) */
	bool ignore_8bitmime;
	bool ignore_chunking;
	bool ignore_pipelining;
	bool ignore_dsn;
	const char *auth_username;
	const char *auth_password;
};

/* ------------------------------------------------------------------ */
/* Virtual MTAs and pools.                                             */

struct cfg_vmta {
	const char *name;
	const char *host_name;
	const char *smtp_source_ip;
	uint32_t max_smtp_out;		/* whole-VMTA cap; 0 = none */
	struct cfg_rate max_smtp_msg_rate;
	struct cfg_domain_keys domain_keys;	/* tried before the global ones */
	size_t source_host_count;
	const struct cfg_source_host *source_hosts;
	const char *pool;		/* the pool whose <domain>s it inherits */
	struct cfg_origin origin;
};

struct cfg_pool {
	const char *name;
	size_t member_count;
	const struct cfg_vmta *const *members;	/* round-robin order */
	struct cfg_origin origin;
};

/* ------------------------------------------------------------------ */
/* Logs: <acct-file>, <rejectlog-file>; <spool>; <smtp-user>.          */

enum cfg_acct_record {
	CFG_REC_DELIVERY = 1u << 0,	/* d */
	CFG_REC_BOUNCE = 1u << 1,	/* b */
	CFG_REC_TRANSIENT = 1u << 2,	/* t */
	CFG_REC_TRANSIENT_QUEUE = 1u << 3,	/* tq */
	CFG_REC_RECEIPT = 1u << 4,	/* r */
	CFG_REC_FEEDBACK = 1u << 5,	/* f */
	CFG_REC_REMOTE_BOUNCE = 1u << 6,	/* rb */
	CFG_REC_REMOTE_STATUS = 1u << 7,	/* rs */
	CFG_REC_REJECT_CONN = 1u << 8,	/* c (reject log) */
	CFG_REC_REJECT_RCPT = 1u << 9,	/* r (reject log) */
};

/* record-fields TYPE spec: one per record type it names. */
struct cfg_record_fields {
	unsigned record;		/* one CFG_REC_* bit */
	struct cfg_strlist fields;	/* "*", "!orcpt", "header_Message-Id" */
};

struct cfg_acct {
	const char *path;		/* file path, or the command of a pipe */
	bool is_pipe;
	unsigned records;		/* CFG_REC_* */
	uint64_t max_size;
	uint64_t move_interval;
	const char *move_to;
	uint64_t delete_after;		/* 0 = never */
	bool iso_times;
	bool sync;
	bool world_readable;
	const char *user_string;
	uint64_t retry_interval;
	uint64_t write_timeout;
	size_t record_fields_count;
	const struct cfg_record_fields *record_fields;
	struct cfg_origin origin;
};

struct cfg_rejectlog {
	const char *path;
	unsigned records;		/* CFG_REC_REJECT_* */
	uint64_t max_size;
	uint64_t delete_after;		/* rotated files; 0 = never */
	struct cfg_origin origin;
};

struct cfg_spool {
	const char *dir;
	uint32_t priority;
	uint64_t min_free_space;
	bool deliver_only;
	struct cfg_origin origin;
};

enum cfg_auth_method { CFG_AUTH_PASSWORD, CFG_AUTH_SYSTEM, CFG_AUTH_CERT };

struct cfg_smtp_user {
	const char *name;
	const char *password;		/* plaintext or a crypt(3) "$6$..." hash */
	enum cfg_auth_method method;
	const char *source;		/* named source with the user's policy */
	struct cfg_origin origin;
};

/* ------------------------------------------------------------------ */
/* Pattern lists.                                                       */

enum cfg_smtp_action {
	CFG_ACT_MODE_BACKOFF = 1u << 0,
	CFG_ACT_MODE_NORMAL = 1u << 1,
	CFG_ACT_SKIP_MX = 1u << 2,
	CFG_ACT_BOUNCE_QUEUE = 1u << 3,
	CFG_ACT_BOUNCE_RCPT = 1u << 4,
	CFG_ACT_DISABLE_SOURCE_IP = 1u << 5,
	CFG_ACT_DEFER_QUEUE = 1u << 6,
};

struct cfg_smtp_pattern {
	const struct cfg_regex *re;
	unsigned actions;		/* CFG_ACT_* */
	uint64_t reenable_after;	/* disable-source-ip,reenable-after= */
	struct cfg_origin origin;
};

struct cfg_smtp_pattern_list {
	const char *name;
	size_t count;
	const struct cfg_smtp_pattern *patterns;	/* first match wins */
	struct cfg_origin origin;
};

enum cfg_bounce_action {
	CFG_BOUNCE_CLASSIFY,		/* record the category, bounce as usual */
	CFG_BOUNCE_DELETE,		/* drop silently, accounting record only */
};

struct cfg_bounce_rule {
	const struct cfg_regex *re;	/* matched against "X.Y.Z;diagnostic" */
	const char *category;
	enum cfg_bounce_action action;
	struct cfg_origin origin;
};

enum cfg_match_field { CFG_MATCH_MAIL_FROM, CFG_MATCH_RCPT_TO, CFG_MATCH_HEADER };

struct cfg_pattern_rule {
	enum cfg_match_field field;
	const char *header;		/* CFG_MATCH_HEADER only */
	const struct cfg_regex *re;
	const char *virtual_mta;	/* virtual-mta=NAME or NULL */
	int recipient_priority;		/* -1 when not set */
	struct cfg_origin origin;
};

struct cfg_pattern_list {
	const char *name;
	size_t count;
	const struct cfg_pattern_rule *rules;
};

/* What routing by <pattern-list> may look at in one message. */
struct cfg_route_msg {
	const char *mail_from;		/* the address, no brackets; "" for <> */
	size_t nrcpt;
	const char *(*rcpt)(void *ctx, size_t i);	/* the i-th recipient */
	/* does a header field NAME (any of them, unfolded) match re? */
	bool (*header)(void *ctx, const char *name, const struct cfg_regex *re);
	void *ctx;
};

/*
 * cfg_pattern_route - the virtual-mta (or pool) a <pattern-list> gives a
 * message, or NULL when no rule that names one matches.  The first
 * matching rule wins; a rcpt-to rule matches when any recipient does and
 * then decides for the whole message.  Names were checked at load time.
 */
const char *cfg_pattern_route(const struct cfg_pattern_list *pl,
			      const struct cfg_route_msg *m);

/* ------------------------------------------------------------------ */
/* Inbound report processors: <bounce-processor>, <feedback-loop-processor>. */

enum cfg_processor_kind { CFG_PROC_BOUNCE, CFG_PROC_FEEDBACK };

/* The lines of an <address-list>: domain NAME, address ADDR|/re/. */
struct cfg_address_set {
	struct cfg_strlist domains;
	struct cfg_strlist addresses;	/* exact */
	const struct cfg_regex *const *address_res;	/* address /re/ lines */
	size_t address_re_count;
};

/* cfg_address_set_match - does rcpt (case-insensitive) match a line? */
bool cfg_address_set_match(const struct cfg_address_set *set, const char *rcpt);
/* cfg_address_set_match_regex - the same, for the /regex/ lines only */
bool cfg_address_set_match_regex(const struct cfg_address_set *set, const char *rcpt);

/*
 * A top-level <address-list NAME>: a static suppression list, looked at
 * for the sources whose suppression-lists name it.
 */
struct cfg_address_list {
	const char *name;
	struct cfg_address_set set;
	struct cfg_origin origin;
};

size_t cfg_address_list_count(const struct cfg *cfg);
const struct cfg_address_list *cfg_address_list_at(const struct cfg *cfg, size_t i);
const struct cfg_address_list *cfg_address_list_find(const struct cfg *cfg,
						     const char *name);

struct cfg_processor {
	enum cfg_processor_kind kind;
	struct cfg_address_set addrs;	/* its <address-list> */
	bool deliver_matched;		/* deliver-matched-email [no] */
	bool deliver_unmatched;		/* deliver-unmatched-email [yes] */
	const char *forward_unmatched_to;
	const char *forward_errors_to;
	struct cfg_origin origin;
};

/*
 * cfg_processor_match - the processor whose <address-list> names rcpt
 * (an address, case-insensitive), or NULL.
 */
const struct cfg_processor *cfg_processor_match(const struct cfg *cfg,
						const char *rcpt);
size_t cfg_processor_count(const struct cfg *cfg);

/* ------------------------------------------------------------------ */
/* The core-to-domain map: <shard N> blocks.                            */

struct cfg_shard {
	uint32_t index;
	int cpu;			/* -1 = let affinity choose */
	struct cfg_strlist domains;	/* domain patterns pinned here */
	struct cfg_origin origin;
};

/* ------------------------------------------------------------------ */
/* Loading.                                                             */

struct cfg_load_opts {
	bool strict;	/* unknown directives and blocks are errors */
};

/*
 * cfg_load_file - parse, type-check and resolve a configuration.
 * Returns 0 and *out on success (warnings may have been added), or
 * -EINVAL with *out untouched when any error was found: a failed load
 * changes nothing, so a reload keeps the running configuration.
 */
int cfg_load_file(const char *path, const struct cfg_load_opts *opts,
		  struct cfg **out, struct diag_list *diags);
/* The same for text in memory; includes resolve relative to base_dir. */
int cfg_load_string(const char *name, const char *text, const char *base_dir,
		    const struct cfg_load_opts *opts, struct cfg **out,
		    struct diag_list *diags);
/*
 * cfg_free - drop the loader's reference (the same as cfg_unref); the
 * configuration is freed with its last reference.  NULL is ignored.
 * cfg_ref - one more holder; returns cfg.
 */
void cfg_free(struct cfg *cfg);
const struct cfg *cfg_ref(const struct cfg *cfg);
void cfg_unref(const struct cfg *cfg);

/*
 * A one-slot hand-over from the thread that reloads to one thread that
 * runs on the configuration, lock-free: cfg_mailbox_post() stores its own
 * new reference to cfg (a configuration posted before and not taken yet
 * is dropped: only the newest matters); cfg_mailbox_take(), by the one
 * consumer at its loop boundary, returns the posted configuration with
 * that reference (the caller now owns it), or NULL when nothing is new.
 * cfg_mailbox_clear() drops what is waiting (at teardown).  Zeroed is
 * empty.
 */
struct cfg_mailbox {
	_Atomic(const struct cfg *) next;
};

void cfg_mailbox_post(struct cfg_mailbox *mb, const struct cfg *cfg);
const struct cfg *cfg_mailbox_take(struct cfg_mailbox *mb);
void cfg_mailbox_clear(struct cfg_mailbox *mb);
/* cfg_mailbox_pending - whether a posted configuration waits (any thread). */
bool cfg_mailbox_pending(struct cfg_mailbox *mb);

/* The file the configuration came from ("<embedded>" for the default). */
const char *cfg_path(const struct cfg *cfg);

/* ------------------------------------------------------------------ */
/* Lookups: cheap, allocation-free, safe from any thread.               */

const struct cfg_global *cfg_global(const struct cfg *cfg);

/*
 * cfg_queue_lookup - effective settings for mail to domain through vmta
 * (NULL or "{default}" when no virtual-mta was chosen).  Inheritance
 * (general to specific pattern; global, then the VMTA's pool, then the
 * VMTA's own <domain> blocks) was resolved at load time: this is a few
 * binary searches, no merge.  Returns NULL for an unknown vmta name.
 */
const struct cfg_queue *cfg_queue_lookup(const struct cfg *cfg,
					 const char *domain, const char *vmta);

/*
 * cfg_source_lookup - effective <source> settings for a client address:
 * the most specific matching CIDR, inheriting from the more general ones,
 * with the named source (a listener's source=NAME, "{auth}", a user's
 * source) applied on top when named is not NULL.  NULL if named is unknown.
 */
const struct cfg_source *cfg_source_lookup(const struct cfg *cfg,
					   const struct sockaddr *client,
					   const char *named);

size_t cfg_vmta_count(const struct cfg *cfg);
const struct cfg_vmta *cfg_vmta_at(const struct cfg *cfg, size_t i);
const struct cfg_vmta *cfg_vmta_find(const struct cfg *cfg, const char *name);
size_t cfg_pool_count(const struct cfg *cfg);
const struct cfg_pool *cfg_pool_at(const struct cfg *cfg, size_t i);
const struct cfg_pool *cfg_pool_find(const struct cfg *cfg, const char *name);

size_t cfg_acct_count(const struct cfg *cfg);
const struct cfg_acct *cfg_acct_at(const struct cfg *cfg, size_t i);
size_t cfg_rejectlog_count(const struct cfg *cfg);
const struct cfg_rejectlog *cfg_rejectlog_at(const struct cfg *cfg, size_t i);
size_t cfg_spool_count(const struct cfg *cfg);
const struct cfg_spool *cfg_spool_at(const struct cfg *cfg, size_t i);
/* cfg_source_groups - every <source-group>, in file order; *n gets the count. */
const struct cfg_source_group *cfg_source_groups(const struct cfg *cfg, size_t *n);
const struct cfg_source_group *cfg_source_group_find(const struct cfg *cfg,
						     const char *name);
const struct cfg_smtp_user *cfg_smtp_user_find(const struct cfg *cfg,
					       const char *name);
const struct cfg_smtp_pattern_list *
cfg_smtp_pattern_list_find(const struct cfg *cfg, const char *name);
const struct cfg_pattern_list *cfg_pattern_list_find(const struct cfg *cfg,
						     const char *name);

/* Operator rules first (file order), then the built-in PowerMTA set. */
size_t cfg_bounce_rule_count(const struct cfg *cfg);
const struct cfg_bounce_rule *cfg_bounce_rule_at(const struct cfg *cfg,
						 size_t i);

/*
 * cfg_bounce_classify - the first rule matching "X.Y.Z;diagnostic" (the
 * built-in set ends with a catch-all, so never NULL).  A rule without a
 * category (`regex "..." action delete`) takes the category of the first
 * later rule that has one and matches.
 */
const struct cfg_bounce_rule *cfg_bounce_classify(const struct cfg *cfg,
						  const char *status_diag,
						  const char **category);

/*
 * Hard or soft: what a bounce category says about the address (coremta
 * extension).  Hard ones (by default bad-mailbox, bad-domain and
 * inactive-mailbox) say the address will never take mail, and feed the
 * suppression store; the rest (quota, policy, spam, ...) say nothing
 * against the address.  `bounce-category-class CATEGORY hard|soft`
 * overrides, the last line for a category winning.
 */
enum cfg_bounce_class { CFG_BOUNCE_SOFT, CFG_BOUNCE_HARD };

enum cfg_bounce_class cfg_bounce_class_of(const struct cfg *cfg,
					  const char *category);
/* "hard" or "soft", the accounting field's values */
const char *cfg_bounce_class_name(enum cfg_bounce_class c);

size_t cfg_shard_count(const struct cfg *cfg);
const struct cfg_shard *cfg_shard_at(const struct cfg *cfg, size_t i);

/* ------------------------------------------------------------------ */
/* Reports for `coremta check`.                                         */

/*
 * cfg_show_queue - print every effective <domain> setting for
 * (domain, vmta) with the file:line it came from ("default" otherwise).
 * Returns -ENOENT for an unknown vmta.
 */
int cfg_show_queue(const struct cfg *cfg, const char *domain,
		   const char *vmta, FILE *out);
/* cfg_show_source - the same for a client IP (and optional named source). */
int cfg_show_source(const struct cfg *cfg, const char *ip, const char *named,
		    FILE *out);

/* Host facts the lint compares the configuration with. */
struct cfg_host_facts {
	uint64_t mem_total;		/* bytes of RAM */
	uint64_t nofile_limit;		/* RLIMIT_NOFILE soft limit */
	bool running_as_root;
	char host_name[256];		/* gethostname(); "" = unknown */
};

void cfg_host_facts_read(struct cfg_host_facts *facts);

/* cfg_system_host_name - this system's name (gethostname), else "localhost". */
void cfg_system_host_name(char *buf, size_t len);
/*
 * cfg_host_name - the name coremta gives itself in its greeting, EHLO and
 * DSNs: the virtual-mta's host-name (vmta NULL: none), else the global
 * host-name, else system_name (cfg_system_host_name, read once at start).
 * An smtp-source-host's NAME, where one is set, beats all three for EHLO
 * over that address (shards/conn.c).
 */
const char *cfg_host_name(const struct cfg *cfg, const struct cfg_vmta *vmta,
			  const char *system_name);

/*
 * cfg_lint - operator mistakes (the source guide's table and more), as
 * DIAG_WARNING entries whose text says the consequence and the fix.
 * Returns the number of findings.
 */
size_t cfg_lint(const struct cfg *cfg, const struct cfg_host_facts *host,
		struct diag_list *findings);

/* cfg_directive_reference - the directive table as Markdown (tuning.md). */
void cfg_directive_reference(FILE *out);

#endif
