/*
 * config/directives.c - the directive table: every directive coremta
 * knows, declared once.  Constant data; any thread may read it.
 *
 * A row's DF_ACTED flag says coremta acts on the directive today.  Rows
 * without it are parsed and type-checked (so a typo is still an error),
 * and the loader warns "'x' is accepted but not acted on" at file:line.
 * Flip the flag in the commit that makes the directive work.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config/config.h"
#include "config/directives.h"

#define OFF_G(f) .scope = SCOPE_GLOBAL, .offset = offsetof(struct cfg_global, f), .field = #f
#define OFF_S(f) .scope = SCOPE_SOURCE, .offset = offsetof(struct cfg_source, f), .field = #f
#define OFF_Q(f) .scope = SCOPE_DOMAIN, .offset = offsetof(struct cfg_queue, f), .field = #f
#define OFF_V(f) .scope = SCOPE_VMTA, .offset = offsetof(struct cfg_vmta, f), .field = #f
#define OFF_A(f) .scope = SCOPE_ACCT, .offset = offsetof(struct cfg_acct, f), .field = #f
#define OFF_R(f) .scope = SCOPE_REJECTLOG, .offset = offsetof(struct cfg_rejectlog, f), .field = #f
#define OFF_SP(f) .scope = SCOPE_SPOOL, .offset = offsetof(struct cfg_spool, f), .field = #f
#define OFF_P(f) .scope = SCOPE_PROCESSOR, .offset = offsetof(struct cfg_processor, f), .field = #f
#define OFF_U(f) .scope = SCOPE_SMTP_USER, .offset = offsetof(struct cfg_smtp_user, f), .field = #f
#define OFF_SG(f) .scope = SCOPE_SOURCE_GROUP, .offset = offsetof(struct cfg_source_group, f), .field = #f

#define ACCEPTED(nm, sc, hlp) \
	{ .name = nm, .scope = sc, .type = CT_ACCEPTED, .help = hlp }
/* The source guide's initial-pts names no real directive: explained, ignored. */
#define INITIAL_PTS(sc, where) \
	{ .name = "initial-pts", .scope = sc, .type = CT_SPECIAL, .handler = H_GUIDE_MISNOMER, \
	  .help = "not a PowerMTA directive (the source guide's mistake table names it): " \
		  "taken to mean the least wait, in minutes, before a deferring receiver " \
		  "is tried again; retry-after" where " is what sets that (e.g. retry-after 60m)" }
#define ALIAS(nm, sc, canon) \
	{ .name = nm, .scope = sc, .type = CT_SPECIAL, .flags = DF_ALIAS, \
	  .alias_of = canon, .help = "same as " canon }

static const char *const delivery_types[] = {
	"smtp", "pipe", "file", "discard", "http-delivery", NULL
};
static const char *const dkim_sign_modes[] = {
	"no", "yes", "if-x-dkim-options-present", NULL
};
static const char *const dkim_canons[] = { "relaxed", "simple", NULL };
static const char *const dkim_algorithms[] = {
	"any", "rsa-sha256", "ed25519-sha256", NULL
};
static const char *const dsn_returns[] = { "headers", "full", NULL };
static const char *const dsn_formats[] = { "standard", "plain-text", NULL };
static const char *const suppression_scopes[] = {
	"global", "sender-domain", "virtual-mta", NULL
};
static const char *const suppression_actions[] = { "reject", "bounce", NULL };
/* util/log.h's enum log_level, in its order */
static const char *const log_levels[] = { "error", "warning", "notice", "info", "debug", NULL };
static const char *const auth_methods[] = {
	"password", "system", "certificate", NULL
};

const struct cfg_directive cfg_directives[] = {
	/* ---- structure (handled by the syntax layer) ---- */
	{ .name = "include", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_INCLUDE, .flags = DF_ACTED,
	  .help = "read another file here; globs and paths relative to the including file" },
	{ .name = "domain-macro", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_DOMAIN_MACRO, .flags = DF_ACTED,
	  .help = "domain-macro NAME a,b,c: <domain $NAME> and <domain x.$NAME> expand to each value" },

	/* ---- global ---- */
	{ .name = "postmaster", OFF_G(postmaster), .type = CT_STRING,
	  .help = "address that receives administrative mail" },
	{ .name = "host-name", OFF_G(host_name), .type = CT_STRING,
	  .help = "name used in EHLO and the SMTP greeting; also a relay domain",
	  .flags = DF_ACTED | DF_HOSTNAME },
	{ .name = "smtp-listener", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_LISTENER, .def = "0.0.0.0:25",
	  .help = "ADDR:PORT [source=NAME] [tls=immediate]: where applications inject mail (repeatable)",
	  .flags = DF_ACTED },
	{ .name = "total-max-smtp-out", OFF_G(total_max_smtp_out), .type = CT_UINT,
	  .def = "1200", .min = 1, .max = 1000000, .unit = "connections",
	  .help = "outbound SMTP connections across all queues and shards",
	  .flags = DF_ACTED },
	{ .name = "total-max-smtp-in", OFF_G(total_max_smtp_in), .type = CT_UINT,
	  .def = "100", .min = 1, .max = 1000000, .unit = "connections",
	  .help = "inbound SMTP connections across all listeners",
	  .flags = DF_ACTED },
	{ .name = "smtp-in-command-timeout", OFF_G(smtp_in_command_timeout),
	  .type = CT_INTERVAL, .def = "1m", .unit = "interval", .flags = DF_ACTED,
	  .help = "time to send one whole command line, however it trickles in" },
	{ .name = "smtp-in-tls-timeout", OFF_G(smtp_in_tls_timeout),
	  .type = CT_INTERVAL, .def = "30s", .unit = "interval", .flags = DF_ACTED,
	  .help = "time to complete an inbound TLS handshake (STARTTLS or implicit)" },
	{ .name = "smtp-in-greeting-timeout", OFF_G(smtp_in_greeting_timeout),
	  .type = CT_INTERVAL, .def = "1m", .unit = "interval", .flags = DF_ACTED,
	  .help = "time from connect to the first accepted HELO/EHLO" },
	{ .name = "smtp-in-max-data-memory", OFF_G(smtp_in_max_data_memory),
	  .type = CT_SIZE, .def = "1G", .unit = "bytes", .flags = DF_ACTED,
	  .help = "message data held in memory by one intake thread's sessions; beyond it 452 4.3.1 (0 = no budget)" },
	{ .name = "smtp-await-slot", OFF_G(smtp_await_slot), .type = CT_BOOL,
	  .def = "no", .help = "wait for a free inbound slot instead of answering 421" },
	{ .name = "process-user", OFF_G(process_user), .type = CT_STRING,
	  .help = "user to run as after binding the listeners",
	  .flags = DF_ACTED },
	{ .name = "run-as-root", OFF_G(run_as_root), .type = CT_BOOL, .def = "yes",
	  .help = "no = refuse to keep root privileges when no process-user is given",
	  .flags = DF_ACTED },
	{ .name = "disk-queue", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_DISK_QUEUE, .offset = offsetof(struct cfg_global, spool_dir),
	  .def = "/var/spool/coremta",
	  .help = "spool directory (the source guide's name; same as <spool DIR>)",
	  .flags = DF_ACTED },
	ALIAS("spool", SCOPE_GLOBAL, "disk-queue"),
	INITIAL_PTS(SCOPE_GLOBAL, " in <domain *>"),
	{ .name = "memory-pool-buffer-size", OFF_G(memory_pool_buffer_size),
	  .type = CT_SIZE, .def = "2M", .unit = "bytes",
	  .help = "size of each shard's pool of I/O buffers" },
	{ .name = "body-cache-size", OFF_G(body_cache_size), .type = CT_SIZE,
	  .def = "4M", .unit = "bytes",
	  .help = "bodies of queued mail each shard keeps read back from the spool (the rest stay on disk)",
	  .flags = DF_ACTED },
	{ .name = "min-free-space", OFF_G(min_free_space), .type = CT_SIZE,
	  .def = "0", .unit = "bytes",
	  .help = "spool space kept free (plus 2M for the journal): mail that would eat into it gets 452 4.3.1",
	  .flags = DF_ACTED },
	{ .name = "journal-sync-delay", OFF_G(journal_sync_delay), .type = CT_UINT,
	  .def = "100", .min = 0, .max = 10000, .unit = "milliseconds", .flags = DF_ACTED,
	  .help = "coremta extension: how long a delivery's outcome may wait for the journal's fsync "
		  "(0 = with the next commit); only a machine crash loses unsynced outcomes, "
		  "and their recipients are sent again" },
	{ .name = "group-commit-wait", OFF_G(group_commit_wait), .type = CT_UINT,
	  .def = "2000", .min = 0, .max = 1000000, .unit = "microseconds", .flags = DF_ACTED,
	  .help = "coremta extension: how long a group commit may wait for messages whose data is "
		  "arriving, never longer than the last commit took (0 = start at once)" },
	{ .name = "intake-threads", OFF_G(intake_threads), .type = CT_UINT,
	  .def = "1", .min = 1, .max = 64, .unit = "threads", .flags = DF_ACTED,
	  .help = "SMTP intake threads (one is enough below ~50k msgs/s)" },
	{ .name = "shards", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_SHARDS, .offset = offsetof(struct cfg_global, shard_count),
	  .def = "auto",
	  .help = "delivery shards: auto (one per physical core not reserved) or a number",
	  .flags = DF_ACTED },
	{ .name = "allow-shard-oversubscription", OFF_G(allow_shard_oversubscription),
	  .type = CT_BOOL, .def = "no",
	  .help = "allow more shards than usable cores",
	  .flags = DF_ACTED },
	{ .name = "reserved-cpus", OFF_G(reserved_cpus), .type = CT_STRLIST,
	  .help = "cores (OS numbering) kept off the shards, for intake and accounting",
	  .flags = DF_ACTED },
	/* coremta extensions: hard/soft bounces and the suppression store */
	{ .name = "bounce-category-class", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_BOUNCE_CLASS, .flags = DF_ACTED,
	  .help = "coremta extension: CATEGORY hard|soft (repeatable); hard bounces feed the suppression store. "
		  "Hard by default: bad-mailbox, bad-domain, inactive-mailbox" },
	{ .name = "suppression-db", OFF_G(suppression_db), .type = CT_STRING, .flags = DF_ACTED,
	  .help = "coremta extension: directory of the suppression store (LMDB); empty = <disk-queue>/suppression" },
	{ .name = "suppression-file", OFF_G(suppression_files), .type = CT_STRLIST,
	  .flags = DF_ACTED,
	  .help = "coremta extension: a list imported into the suppression store at start (address ADDR, "
		  "domain NAME, bare addresses, @domain; repeatable); a bad line stops the start with file:line" },
	{ .name = "suppression-scope", OFF_G(suppression_scope), .type = CT_ENUM,
	  .choices = suppression_scopes, .def = "global", .flags = DF_ACTED,
	  .help = "coremta extension: what an automatic suppression covers: the address for every sender, "
		  "for the MAIL FROM domain, or for the virtual-mta" },
	{ .name = "suppression-action", OFF_G(suppression_action), .type = CT_ENUM,
	  .choices = suppression_actions, .def = "reject", .flags = DF_ACTED,
	  .help = "coremta extension: a suppressed RCPT TO gets 550 5.7.1 (reject), or 250 and a b record "
		  "with bounceCat suppressed (bounce)" },
	{ .name = "suppress-soft-bounces-for", OFF_G(suppress_soft_for),
	  .type = CT_INTERVAL_NEVER, .def = "never", .unit = "interval", .flags = DF_ACTED,
	  .help = "coremta extension: a soft bounce suppresses the address this long (never = not at all)" },
	{ .name = "sent-index-days", OFF_G(sent_index_days), .type = CT_UINT,
	  .def = "7", .min = 1, .max = 30, .unit = "days", .flags = DF_ACTED,
	  .help = "coremta extension: with a <bounce-processor> or <feedback-loop-processor>, how many days "
		  "the Message-IDs of delivered mail are kept to match reports that quote only the original's headers" },
	{ .name = "deliver-bounces", OFF_G(deliver_bounces), .type = CT_BOOL,
	  .def = "yes", .help = "send DSNs for local bounces (the source guide's name)",
	  .flags = DF_ACTED },
	{ .name = "log-bounces", OFF_G(log_bounces), .type = CT_BOOL, .def = "yes",
	  .help = "write b records for bounces to the acct-files (the source guide's name)",
	  .flags = DF_ACTED },
	{ .name = "log-file", OFF_G(log_file), .type = CT_STRING,
	  .help = "daemon log file, each line stamped in ISO 8601 UTC (stderr when unset); SIGUSR1 reopens it",
	  .flags = DF_ACTED },
	{ .name = "log-level", OFF_G(log_level), .type = CT_ENUM, .choices = log_levels,
	  .def = "notice", .flags = DF_ACTED,
	  .help = "coremta extension: the daemon's lines up to this level are logged (error, warning, "
		  "notice, info, debug); delivery and queue lines are always written" },
	{ .name = "log-rotate", OFF_G(log_rotate), .type = CT_UINT, .def = "8",
	  .min = 0, .max = 1000, .unit = "files",
	  .help = "rotate log-file at midnight UTC keeping this many old files (log-file.1 ...; 0 = never)",
	  .flags = DF_ACTED },
	{ .name = "http-mgmt-port", OFF_G(http_mgmt_port), .type = CT_UINT,
	  .def = "8080", .min = 0, .max = 65535, .unit = "TCP port",
	  .help = "management HTTP port: JSON API, /metrics, the web monitor, coremta ctl (0 = off; nothing listens either while no http-access line grants more than none)",
	  .flags = DF_ACTED },
	{ .name = "http-access", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_HTTP_ACCESS,
	  .help = "CIDR none|monitor|operator|admin[,deny-logs]: who may use the management port; the first line whose CIDR holds the client decides (default none); monitor reads, operator and admin also change queues (POST)",
	  .flags = DF_ACTED },
	{ .name = "http-api-key", OFF_G(http_api_key), .type = CT_STRING,
	  .help = "when set, every management request must carry it in X-API-Key (401 otherwise), on top of http-access",
	  .flags = DF_ACTED },
	{ .name = "http-mgmt-tls", OFF_G(http_mgmt_tls), .type = CT_BOOL, .def = "no",
	  .help = "serve the management port over TLS (HTTPS) with smtp-server-tls-certificate (a coremta extension)",
	  .flags = DF_ACTED },
	{ .name = "relay-domain", OFF_G(relay_domains), .type = CT_STRLIST,
	  .help = "accept mail for this domain from any client (repeatable)",
	  .flags = DF_ACTED },
	{ .name = "relay-address", OFF_G(relay_addresses), .type = CT_STRLIST,
	  .help = "accept mail for this address (or /regex/) from any client",
	  .flags = DF_ACTED },
	{ .name = "name-server", OFF_G(name_servers), .type = CT_STRLIST,
	  .help = "DNS server ADDR[:PORT] the shards query (default: /etc/resolv.conf)",
	  .flags = DF_ACTED },
	{ .name = "domain-key", OFF_G(domain_keys), .type = CT_SPECIAL,
	  .handler = H_DOMAIN_KEY, .flags = DF_ACTED,
	  .help = "SELECTOR,DOMAIN,KEYFILE: a DKIM private key (PEM/DER RSA or Ed25519), read at load time; DOMAIN * covers any domain and signs as the author's (repeatable, tried in order)" },
	{ .name = "smtp-source-host", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_SOURCE_HOST, .flags = DF_ACTED,
	  .help = "IP HOSTNAME: local address and its EHLO name for mail of no virtual-mta ({default}; repeatable, round-robin)" },
	{ .name = "smtp-server-tls-certificate", OFF_G(smtp_server_tls_certificate),
	  .type = CT_STRING, .help = "PEM file (certificate and key) for inbound STARTTLS",
	  .flags = DF_ACTED },
	{ .name = "smtp-server-tls-ciphers", OFF_G(smtp_server_tls_ciphers),
	  .type = CT_STRING, .def = "HIGH:!ADH:@STRENGTH",
	  .help = "cipher list for inbound TLS" },
	{ .name = "sync-msg-create", OFF_G(sync_msg_create), .type = CT_BOOL,
	  .def = "yes",
	  .help = "PowerMTA's switch; coremta always fsyncs before 250" },
	{ .name = "sync-msg-update", OFF_G(sync_msg_update), .type = CT_BOOL,
	  .def = "yes",
	  .help = "PowerMTA's switch; coremta always journals outcomes durably" },
	{ .name = "spool-delete-corrupted", OFF_G(spool_delete_corrupted),
	  .type = CT_BOOL, .def = "no",
	  .help = "delete corrupt spool records instead of quarantining them" },
	ACCEPTED("smtp-server-tls-allow-tlsv1", SCOPE_GLOBAL, "allow TLS 1.0 inbound"),
	ACCEPTED("smtp-server-tls-allow-tlsv1.1", SCOPE_GLOBAL, "allow TLS 1.1 inbound"),
	ACCEPTED("smtp-server-tls-allow-tlsv1.2", SCOPE_GLOBAL, "allow TLS 1.2 inbound"),
	ACCEPTED("smtp-server-tls-allow-tlsv1.3", SCOPE_GLOBAL, "allow TLS 1.3 inbound"),
	{ .name = "mx-connection-limit", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_CONN_LIMIT, .flags = DF_ACTED,
	  .help = "PATTERN N: connections to each MX host whose name matches the glob, across all queues and shards (repeatable; the first match wins)" },
	{ .name = "ip-connection-limit", .scope = SCOPE_GLOBAL, .type = CT_SPECIAL,
	  .handler = H_CONN_LIMIT, .flags = DF_ACTED,
	  .help = "CIDR N: connections to each remote IP in CIDR, across all queues and shards (repeatable; the first match wins)" },
	ACCEPTED("spool-max-recipients", SCOPE_GLOBAL, "recipients held before new mail gets 4xx"),
	ACCEPTED("http-redirect-to-https", SCOPE_GLOBAL, "management UI HTTPS redirect"),
	{ .name = "cold-virtual-mta", OFF_G(cold_vmtas), .type = CT_STRLIST, .flags = DF_ACTED,
	  .help = "NAME: a virtual-mta whose addresses are new (repeatable); its queues obey max-cold-virtual-mta-msg" },
	ACCEPTED("pickup", SCOPE_GLOBAL, "DIR BADDIR: pickup directory"),
	ACCEPTED("allow-mailmerge", SCOPE_GLOBAL, "mailmerge SMTP extensions"),

	/* ---- <source> ---- */
	{ .name = "always-allow-relaying", OFF_S(always_allow_relaying),
	  .type = CT_BOOL, .def = "no",
	  .help = "let this source relay to any domain (feeders need it)",
	  .flags = DF_ACTED },
	ALIAS("allow-relay", SCOPE_SOURCE, "always-allow-relaying"),
	{ .name = "smtp-service", OFF_S(smtp_service), .type = CT_BOOL, .def = "yes",
	  .help = "no = greet with 521 and refuse service",
	  .flags = DF_ACTED },
	{ .name = "require-auth", OFF_S(require_auth), .type = CT_BOOL, .def = "no",
	  .help = "refuse MAIL FROM until the client authenticates",
	  .flags = DF_ACTED },
	{ .name = "allow-auth", OFF_S(allow_auth), .type = CT_BOOL, .def = "yes",
	  .help = "offer SMTP AUTH",
	  .flags = DF_ACTED },
	{ .name = "allow-starttls", OFF_S(allow_starttls), .type = CT_BOOL, .def = "yes",
	  .help = "offer STARTTLS (needs smtp-server-tls-certificate)",
	  .flags = DF_ACTED },
	{ .name = "allow-unencrypted-plain-auth", OFF_S(allow_unencrypted_plain_auth),
	  .type = CT_BOOL, .def = "no",
	  .help = "allow AUTH PLAIN/LOGIN before STARTTLS",
	  .flags = DF_ACTED },
	{ .name = "require-starttls-before-auth", OFF_S(require_starttls_before_auth),
	  .type = CT_BOOL, .def = "no", .help = "refuse every AUTH before STARTTLS",
	  .flags = DF_ACTED },
	{ .name = "smtp-max-auth-failure-rate", OFF_S(smtp_max_auth_failure_rate),
	  .type = CT_RATE, .def = "10/h", .unit = "failures/period",
	  .help = "failed AUTH attempts allowed per client address (across connections) before 421; unlimited = no limit",
	  .flags = DF_ACTED },
	{ .name = "source-group", OFF_S(source_group), .type = CT_STRING,
	  .help = "the <source-group> whose connection slots this source's clients use",
	  .flags = DF_ACTED },
	{ .name = "max-smtp-in-per-ip", OFF_S(max_smtp_in_per_ip), .type = CT_UINT,
	  .def = "0", .min = 0, .max = 1000000, .flags = DF_UNLIMITED_0 | DF_ACTED,
	  .unit = "connections",
	  .help = "inbound connections at once from one client address (0 = no cap)" },
	{ .name = "max-message-size", OFF_S(max_message_size), .type = CT_SIZE,
	  .def = "50M", .unit = "bytes",
	  .help = "largest message accepted (receivers take 25-50M; 0 = up to the spool's 1G)",
	  .flags = DF_ACTED },
	{ .name = "max-rcpt-per-message", OFF_S(max_rcpt_per_message), .type = CT_UINT,
	  .def = "0", .min = 0, .max = 1000000, .flags = DF_UNLIMITED_0 | DF_ACTED,
	  .unit = "recipients", .help = "recipients per message (0 = unlimited)" },
	{ .name = "too-many-rcpts-fails-message", OFF_S(too_many_rcpts_fails_message),
	  .type = CT_BOOL, .def = "no",
	  .help = "reject the whole message at DATA when it had too many recipients",
	  .flags = DF_ACTED },
	{ .name = "max-message-hops", OFF_S(max_message_hops), .type = CT_UINT,
	  .def = "30", .min = 1, .max = 1000, .unit = "Received headers",
	  .help = "mail loop limit",
	  .flags = DF_ACTED },
	{ .name = "hide-message-source", OFF_S(hide_message_source), .type = CT_BOOL,
	  .def = "no", .help = "leave the client's IP and name out of Received:",
	  .flags = DF_ACTED },
	{ .name = "add-received-header", OFF_S(add_received_header), .type = CT_BOOL,
	  .def = "yes", .help = "prepend a Received: header",
	  .flags = DF_ACTED },
	{ .name = "add-message-id-header", OFF_S(add_message_id_header),
	  .type = CT_BOOL, .def = "no", .help = "add Message-ID: when missing",
	  .flags = DF_ACTED },
	{ .name = "add-date-header", OFF_S(add_date_header), .type = CT_BOOL,
	  .def = "no", .help = "add Date: when missing",
	  .flags = DF_ACTED },
	{ .name = "verp-default", OFF_S(verp_default), .type = CT_BOOL, .def = "no",
	  .help = "VERP-encode the return path" },
	{ .name = "suppress-local-dsn", OFF_S(suppress_local_dsn), .type = CT_BOOL,
	  .def = "no", .help = "never send DSNs for mail from this source",
	  .flags = DF_ACTED },
	{ .name = "dsn-return-default", OFF_S(dsn_return_default), .type = CT_ENUM,
	  .choices = dsn_returns, .def = "headers",
	  .help = "what a DSN returns when MAIL FROM has no RET=",
	  .flags = DF_ACTED },
	{ .name = "dsn-format", OFF_S(dsn_format), .type = CT_ENUM,
	  .choices = dsn_formats, .def = "standard",
	  .help = "DSNs as RFC 3464 multipart/report (standard) or one text/plain part",
	  .flags = DF_ACTED },
	{ .name = "log-connections", OFF_S(log_connections), .type = CT_BOOL,
	  .def = "no", .help = "log each connection" },
	{ .name = "log-commands", OFF_S(log_commands), .type = CT_BOOL, .def = "no",
	  .help = "log each SMTP command (verbose)" },
	{ .name = "log-data", OFF_S(log_data), .type = CT_BOOL, .def = "no",
	  .help = "log message data (very verbose)" },
	{ .name = "process-x-virtual-mta", OFF_S(process_x_virtual_mta),
	  .type = CT_BOOL, .def = "no",
	  .help = "choose the virtual-mta from X-Virtual-MTA:",
	  .flags = DF_ACTED },
	{ .name = "retain-x-virtual-mta", OFF_S(retain_x_virtual_mta), .type = CT_BOOL,
	  .def = "no", .help = "keep X-Virtual-MTA: in the delivered message",
	  .flags = DF_ACTED },
	{ .name = "reject-invalid-virtual-mta", OFF_S(reject_invalid_virtual_mta),
	  .type = CT_BOOL, .def = "yes",
	  .help = "reject a message naming an unknown virtual-mta",
	  .flags = DF_ACTED },
	{ .name = "invalid-virtual-mta-fallback", OFF_S(invalid_virtual_mta_fallback),
	  .type = CT_STRING, .help = "virtual-mta used when X-Virtual-MTA: is unknown",
	  .flags = DF_ACTED },
	{ .name = "process-x-job", OFF_S(process_x_job), .type = CT_BOOL, .def = "no",
	  .help = "take the job id from X-Job:",
	  .flags = DF_ACTED },
	{ .name = "retain-x-job", OFF_S(retain_x_job), .type = CT_BOOL, .def = "no",
	  .help = "keep X-Job: in the delivered message",
	  .flags = DF_ACTED },
	{ .name = "jobid-header", OFF_S(jobid_header), .type = CT_STRING,
	  .def = "x-job", .help = "header that carries the job id",
	  .flags = DF_ACTED },
	{ .name = "jobid-prefix", OFF_S(jobid_prefix), .type = CT_STRING,
	  .help = "prefix added to job ids ({auth} inserts the user)",
	  .flags = DF_ACTED },
	{ .name = "process-x-envid", OFF_S(process_x_envid), .type = CT_BOOL,
	  .def = "no", .help = "take the DSN envelope id from X-EnvId:",
	  .flags = DF_ACTED },
	{ .name = "retain-x-envid", OFF_S(retain_x_envid), .type = CT_BOOL,
	  .def = "no", .help = "keep X-EnvId: in the delivered message",
	  .flags = DF_ACTED },
	{ .name = "default-virtual-mta", OFF_S(default_virtual_mta), .type = CT_STRING,
	  .flags = DF_ACTED,
	  .help = "virtual-mta or pool for mail from this source" },
	{ .name = "pattern-list", OFF_S(pattern_list), .type = CT_STRING,
	  .flags = DF_ACTED,
	  .help = "<pattern-list> that routes this source's mail (after X-Virtual-MTA:, before default-virtual-mta)" },
	{ .name = "remove-header", OFF_S(remove_headers), .type = CT_STRLIST,
	  .help = "header removed from messages of this source (repeatable)",
	  .flags = DF_ACTED },
	ACCEPTED("relay-debug", SCOPE_SOURCE, "answer 4xx instead of 5xx to relay refusals"),
	ACCEPTED("disconnect-on-transient-error", SCOPE_SOURCE, "close after a 4xx"),
	ACCEPTED("accept-invalid-recipients", SCOPE_SOURCE, "accept syntactically bad recipients"),
	ACCEPTED("check-spf-inbound", SCOPE_SOURCE, "SPF check of injected mail"),
	ACCEPTED("check-dkim-inbound", SCOPE_SOURCE, "DKIM check of injected mail"),
	ACCEPTED("check-iprev-inbound", SCOPE_SOURCE, "reverse DNS check of clients"),
	ACCEPTED("process-x-schedule", SCOPE_SOURCE, "delivery windows from X-Schedule:"),
	ACCEPTED("process-x-dkim-options", SCOPE_SOURCE, "DKIM options from X-DKIM-Options:"),
	ACCEPTED("rewrite-list", SCOPE_SOURCE, "<rewrite-list> applied to this source"),
	{ .name = "suppression-lists", OFF_S(suppression_lists), .type = CT_STRLIST,
	  .flags = DF_ACTED,
	  .help = "top-level <address-list> names (comma-separated) whose addresses mail from this "
		  "source is never sent to: refused at RCPT (or bounced, with suppression-action bounce)" },
	ACCEPTED("bcc", SCOPE_SOURCE, "blind copy of every message"),

	/* ---- <domain> (per queue) ---- */
	{ .name = "max-smtp-out", OFF_Q(max_smtp_out), .type = CT_UINT, .def = "20",
	  .min = 1, .max = 100000, .unit = "connections",
	  .help = "concurrent connections of one queue (domain/virtual-mta)",
	  .flags = DF_ACTED },
	{ .name = "max-msg-per-connection", OFF_Q(max_msg_per_connection),
	  .type = CT_UINT, .def = "0", .min = 0, .max = 1000000,
	  .flags = DF_UNLIMITED_0 | DF_ACTED, .unit = "messages",
	  .help = "messages before a connection is closed (0 = unlimited)" },
	{ .name = "max-rcpt-per-transaction", OFF_Q(max_rcpt_per_transaction),
	  .type = CT_UINT, .def = "1000", .min = 1, .max = 100000,
	  .unit = "recipients", .help = "recipients per SMTP transaction",
	  .flags = DF_ACTED },
	ALIAS("max-rcpt-per-message", SCOPE_DOMAIN, "max-rcpt-per-transaction"),
	{ .name = "max-errors-per-connection", OFF_Q(max_errors_per_connection),
	  .type = CT_UINT, .def = "0", .min = 0, .max = 1000000,
	  .flags = DF_UNLIMITED_0, .unit = "errors",
	  .help = "error replies before the connection is closed (0 = unlimited)" },
	{ .name = "max-msg-rate", OFF_Q(max_msg_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "recipients/period",
	  .help = "attempted recipients per period for the queue",
	  .flags = DF_ACTED },
	{ .name = "max-connect-rate", OFF_Q(max_connect_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "connections/period",
	  .help = "new connections per period",
	  .flags = DF_ACTED },
	{ .name = "max-data-volume-rate", OFF_Q(max_data_volume_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "bytes/period",
	  .help = "message bytes per period (6g/10h)" },
	{ .name = "retry-after", OFF_Q(retry_after), .type = CT_SCHEDULE,
	  .def = "10m", .unit = "interval list",
	  .help = "wait before retrying a deferred message; a list is a schedule whose last entry repeats",
	  .flags = DF_ACTED },
	{ .name = "retry-recipients-after", OFF_Q(retry_recipients_after),
	  .type = CT_INTERVAL, .def = "10m", .unit = "interval",
	  .help = "wait before retrying recipients that got 4xx to RCPT" },
	{ .name = "bounce-after", OFF_Q(bounce_after), .type = CT_INTERVAL,
	  .def = "4d12h", .unit = "interval",
	  .help = "a message still undelivered this long after queueing bounces (message-expired)",
	  .flags = DF_ACTED },
	{ .name = "bounce-after-attempts", OFF_Q(bounce_after_attempts), .type = CT_UINT,
	  .def = "0", .min = 0, .max = 1000000, .flags = DF_UNLIMITED_0 | DF_ACTED,
	  .unit = "attempts",
	  .help = "coremta extension: a recipient still undelivered after this many attempts bounces (category retry-limit-exceeded, DSN as for bounce-after); 0 = no limit" },
	{ .name = "bounce-upon-5xx-greeting", OFF_Q(bounce_upon_5xx_greeting),
	  .type = CT_BOOL, .def = "yes", .help = "a 5xx greeting bounces the queue's mail",
	  .flags = DF_ACTED },
	{ .name = "bounce-upon-transfer-failure", OFF_Q(bounce_upon_transfer_failure),
	  .type = CT_BOOL, .def = "no", .help = "a failure during DATA bounces instead of retrying" },
	{ .name = "smtp-421-means-mx-unavailable", OFF_Q(smtp_421_means_mx_unavailable),
	  .type = CT_BOOL, .def = "no",
	  .help = "yes: a 421 (which always closes the connection) sends the transaction's recipients to the next MX at once, uncounted; no: they retry on schedule",
	  .flags = DF_ACTED },
	{ .name = "connect-timeout", OFF_Q(connect_timeout), .type = CT_INTERVAL,
	  .def = "2m", .unit = "interval", .help = "TCP connect timeout",
	  .flags = DF_ACTED },
	{ .name = "smtp-greeting-timeout", OFF_Q(smtp_greeting_timeout),
	  .type = CT_INTERVAL, .def = "5m", .unit = "interval",
	  .help = "wait for the 220 greeting (RFC 5321 4.5.3.2.1)",
	  .flags = DF_ACTED },
	{ .name = "smtp-command-timeout", OFF_Q(smtp_command_timeout),
	  .type = CT_INTERVAL, .def = "5m", .unit = "interval",
	  .help = "wait for the reply to EHLO, MAIL, RCPT, RSET (RFC 5321 4.5.3.2)",
	  .flags = DF_ACTED },
	{ .name = "data-send-timeout", OFF_Q(data_send_timeout), .type = CT_INTERVAL,
	  .def = "3m", .unit = "interval", .help = "each send of message data",
	  .flags = DF_ACTED },
	{ .name = "smtp-data-termination-timeout", OFF_Q(smtp_data_termination_timeout),
	  .type = CT_INTERVAL, .def = "10m", .unit = "interval",
	  .help = "wait for the reply to the final dot (too low causes duplicates)",
	  .flags = DF_ACTED },
	{ .name = "connection-idle-timeout", OFF_Q(connection_idle_timeout),
	  .type = CT_INTERVAL, .def = "5s", .unit = "interval",
	  .help = "keep an idle connection open this long for more mail (at most 10m)",
	  .flags = DF_ACTED },
	{ .name = "smtp-out-rampup-interval", OFF_Q(smtp_out_rampup_interval),
	  .type = CT_INTERVAL, .def = "0s", .unit = "interval",
	  .help = "space out new connections of a queue by this much" },
	{ .name = "use-starttls", OFF_Q(use_starttls), .type = CT_BOOL, .def = "yes",
	  .help = "use STARTTLS when the receiver offers it",
	  .flags = DF_ACTED },
	{ .name = "require-starttls", OFF_Q(require_starttls), .type = CT_BOOL,
	  .def = "no", .help = "defer rather than deliver without TLS",
	  .flags = DF_ACTED },
	{ .name = "queue-priority", OFF_Q(queue_priority), .type = CT_UINT,
	  .def = "50", .min = 0, .max = 100, .unit = "0-100",
	  .help = "higher-priority queues get connections first" },
	{ .name = "smtp-hosts", OFF_Q(smtp_hosts), .type = CT_STRING,
	  .help = "static route instead of MX: 'h1,h2; [10.1.1.1]:2525' (',' same preference, ';' next)",
	  .flags = DF_ACTED },
	ALIAS("route", SCOPE_DOMAIN, "smtp-hosts"),
	INITIAL_PTS(SCOPE_DOMAIN, ""),
	{ .name = "default-smtp-port", OFF_Q(default_smtp_port), .type = CT_UINT,
	  .def = "25", .min = 1, .max = 65535, .unit = "TCP port",
	  .help = "port used for MX hosts and smtp-hosts without a port",
	  .flags = DF_ACTED },
	{ .name = "queue-to", OFF_Q(queue_to), .type = CT_STRING, .flags = DF_ACTED,
	  .help = "merge this domain's mail into the queue of the named domain, delivered with that domain's settings (its smtp-hosts or MX)" },
	{ .name = "type", OFF_Q(type), .type = CT_ENUM, .choices = delivery_types,
	  .def = "smtp", .help = "delivery method of the queue" },
	{ .name = "smtp-pattern-list", .scope = SCOPE_DOMAIN, .type = CT_SPECIAL,
	  .handler = H_SMTP_PATTERN_REF,
	  .offset = offsetof(struct cfg_queue, smtp_pattern_list),
	  .help = "<smtp-pattern-list> matched against every non-2xx reply of the queue's receivers",
	  .flags = DF_ACTED },
	{ .name = "backoff-max-msg-rate", OFF_Q(backoff_max_msg_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "recipients/period",
	  .help = "max-msg-rate in backoff mode (unlimited: max-msg-rate; never looser than it)",
	  .flags = DF_ACTED },
	{ .name = "backoff-max-smtp-out", OFF_Q(backoff_max_smtp_out), .type = CT_UINT,
	  .def = "20", .min = 1, .max = 100000, .unit = "connections",
	  .help = "max-smtp-out in backoff mode (never more than max-smtp-out)",
	  .flags = DF_ACTED },
	{ .name = "backoff-retry-after", OFF_Q(backoff_retry_after), .type = CT_SCHEDULE,
	  .def = "1h", .unit = "interval list", .help = "retry-after while in backoff mode",
	  .flags = DF_ACTED },
	{ .name = "backoff-to-normal-after", OFF_Q(backoff_to_normal_after),
	  .type = CT_INTERVAL_NEVER, .def = "never", .unit = "interval",
	  .help = "leave backoff mode this long after entering it",
	  .flags = DF_ACTED },
	{ .name = "backoff-to-normal-after-delivery", OFF_Q(backoff_to_normal_after_delivery),
	  .type = CT_BOOL, .def = "no", .help = "leave backoff mode on the queue's next delivery",
	  .flags = DF_ACTED },
	{ .name = "notify-of-delay-every", OFF_Q(notify_of_delay_every),
	  .type = CT_INTERVAL_NEVER, .def = "4h", .unit = "interval",
	  .help = "delay DSNs for NOTIFY=DELAY recipients this often",
	  .flags = DF_ACTED },
	{ .name = "dkim-sign", OFF_Q(dkim_sign), .type = CT_ENUM,
	  .choices = dkim_sign_modes, .def = "no", .flags = DF_ACTED,
	  .help = "sign mail to this domain with the matching domain-keys, once per message at intake (if-x-dkim-options-present: not yet, no signature)" },
	{ .name = "dkim-identity", OFF_Q(dkim_identity), .type = CT_STRING,
	  .def = "sender-or-from", .flags = DF_ACTED | DF_DKIM_IDENTITY,
	  .help = "whose domain picks the keys: sender-or-from, from, sender, or a fixed domain, @domain or user@domain (the last also sets i=)" },
	{ .name = "dkim-identity-fallback", OFF_Q(dkim_identity_fallback), .type = CT_STRING,
	  .flags = DF_ACTED | DF_DKIM_IDENTITY,
	  .help = "identity whose keys sign when no key matches the identity or the From: domain (e.g. @esp.example)" },
	{ .name = "dkim-algorithm", OFF_Q(dkim_algorithm), .type = CT_ENUM,
	  .choices = dkim_algorithms, .def = "any", .flags = DF_ACTED,
	  .help = "sign only with keys of this algorithm (the key's type sets a=)" },
	{ .name = "dkim-headers", OFF_Q(dkim_headers), .type = CT_STRLIST,
	  .flags = DF_ACTED | DF_HEADER_NAMES,
	  .help = "header names signed beyond the base set (From, Subject, Date, To, ... List-Unsubscribe)" },
	{ .name = "dkim-headers-canon", OFF_Q(dkim_headers_canon), .type = CT_ENUM,
	  .choices = dkim_canons, .def = "relaxed", .flags = DF_ACTED,
	  .help = "header canonicalization, c= (relaxed survives refolding)" },
	{ .name = "dkim-body-canon", OFF_Q(dkim_body_canon), .type = CT_ENUM,
	  .choices = dkim_canons, .def = "relaxed", .flags = DF_ACTED,
	  .help = "body canonicalization, c=" },
	{ .name = "dkim-add-body-limit", OFF_Q(dkim_add_body_limit), .type = CT_BOOL,
	  .def = "no", .flags = DF_ACTED,
	  .help = "add l= (the signed body length); text appended later then does not break the signature" },
	{ .name = "dkim-add-timestamp", OFF_Q(dkim_add_timestamp), .type = CT_BOOL,
	  .def = "no", .flags = DF_ACTED, .help = "add t= (the signing time)" },
	{ .name = "dkim-expire-after", OFF_Q(dkim_expire_after), .type = CT_INTERVAL_NEVER,
	  .def = "never", .unit = "interval", .flags = DF_ACTED,
	  .help = "add x= this long after signing (and t=); verifiers then fail the signature" },
	{ .name = "ignore-8bitmime", OFF_Q(ignore_8bitmime), .type = CT_BOOL,
	  .def = "no", .help = "act as if the receiver did not offer 8BITMIME",
	  .flags = DF_ACTED },
	{ .name = "ignore-chunking", OFF_Q(ignore_chunking), .type = CT_BOOL,
	  .def = "no", .help = "never use BDAT",
	  .flags = DF_ACTED },
	{ .name = "ignore-pipelining", OFF_Q(ignore_pipelining), .type = CT_BOOL,
	  .def = "no", .help = "never pipeline commands",
	  .flags = DF_ACTED },
	{ .name = "ignore-dsn", OFF_Q(ignore_dsn), .type = CT_BOOL, .def = "no",
	  .help = "never pass DSN parameters on",
	  .flags = DF_ACTED },
	{ .name = "auth-username", OFF_Q(auth_username), .type = CT_STRING,
	  .help = "SMTP AUTH user at the receiver (smart hosts)" },
	{ .name = "auth-password", OFF_Q(auth_password), .type = CT_STRING,
	  .help = "SMTP AUTH password at the receiver" },
	ACCEPTED("use-dane", SCOPE_DOMAIN, "DANE for outbound TLS"),
	ACCEPTED("bounce-upon-no-mx", SCOPE_DOMAIN, "bounce when a domain has no MX"),
	{ .name = "max-cold-virtual-mta-msg", OFF_Q(max_cold_vmta_msg), .type = CT_DAILY,
	  .def = "unlimited", .unit = "messages/day list", .flags = DF_ACTED,
	  .help = "for a cold-virtual-mta: messages per day from each source IP to the site, "
		  "day 1 first (the day it first sent there), the last repeating; over the cap mail waits for the next UTC day" },
	{ .name = "adaptive-rate", OFF_Q(adaptive_rate), .type = CT_BOOL, .def = "no",
	  .flags = DF_ACTED,
	  .help = "coremta: find each (site, source IP)'s message rate: cut it on \"too fast\" replies "
		  "(a mode=backoff pattern, 421/451 4.7.x), raise it while deliveries are clean" },
	{ .name = "adaptive-max-msg-rate", OFF_Q(adaptive_max_msg_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "messages/period", .flags = DF_ACTED,
	  .help = "the adaptive rate's ceiling and start (unlimited: max-msg-rate, else 100/s)" },
	{ .name = "adaptive-min-msg-rate", OFF_Q(adaptive_min_msg_rate), .type = CT_RATE,
	  .def = "1/m", .unit = "messages/period", .flags = DF_ACTED,
	  .help = "the adaptive rate's floor" },
	{ .name = "adaptive-decrease", OFF_Q(adaptive_decrease), .type = CT_UINT,
	  .def = "20", .min = 1, .max = 90, .unit = "percent", .flags = DF_ACTED,
	  .help = "how much of the rate a \"too fast\" reply takes away (at most one cut a second)" },
	{ .name = "adaptive-increase", OFF_Q(adaptive_increase), .type = CT_RATE,
	  .def = "1/s", .unit = "messages/period", .flags = DF_ACTED,
	  .help = "added to the rate after each clean interval" },
	{ .name = "adaptive-increase-every", OFF_Q(adaptive_increase_every), .type = CT_INTERVAL,
	  .def = "10s", .unit = "interval", .flags = DF_ACTED,
	  .help = "the clean interval: deliveries and no \"too fast\" reply for this long" },
	{ .name = "warmup-schedule", OFF_Q(warmup_schedule), .type = CT_DAILY,
	  .def = "unlimited", .unit = "messages/day list", .flags = DF_ACTED,
	  .help = "coremta: the same daily caps for any virtual-mta (e.g. 50,100,200,500,1000,unlimited); "
		  "counters survive restarts, mail over the cap waits, never bounces" },
	{ .name = "disable-mx-rollup", OFF_Q(disable_mx_rollup), .type = CT_BOOL,
	  .def = "no", .flags = DF_ACTED,
	  .help = "keep this domain out of MX rollup: its own queue and site, whose connections carry no other domain's mail" },
	{ .name = "reroute-to-virtual-mta", OFF_Q(reroute_to_virtual_mta), .type = CT_STRING,
	  .flags = DF_ACTED,
	  .help = "VMTA|POOL: the queue's mail goes out through that virtual-mta (or pool) instead (one hop)" },
	{ .name = "backoff-reroute-to-virtual-mta", OFF_Q(backoff_reroute_to_virtual_mta),
	  .type = CT_STRING, .flags = DF_ACTED,
	  .help = "VMTA|POOL: while the queue is in backoff mode its mail (queued and new) goes through that one" },
	{ .name = "backoff-max-connect-rate", OFF_Q(backoff_max_connect_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "connections/period", .flags = DF_ACTED,
	  .help = "max-connect-rate in backoff mode (never looser than it)" },
	ACCEPTED("backoff-max-data-volume-rate", SCOPE_DOMAIN, "max-data-volume-rate in backoff"),
	{ .name = "backoff-notify", OFF_Q(backoff_notify), .type = CT_STRING, .flags = DF_ACTED,
	  .help = "ADDRESS: mailed (from the null sender) each time the queue enters backoff mode, "
		  "with the queue and the reply that sent it there" },
	{ .name = "backoff-upon-all-sources-disabled", OFF_Q(backoff_upon_all_sources_disabled),
	  .type = CT_BOOL, .def = "no", .flags = DF_ACTED,
	  .help = "enter backoff mode when disable-source-ip has disabled every source IP of the queue" },
	{ .name = "reenable-source-ip-after", OFF_Q(reenable_source_ip_after), .type = CT_INTERVAL_NEVER,
	  .def = "never", .unit = "interval", .flags = DF_ACTED,
	  .help = "when a disable-source-ip without reenable-after= ends (never: at a restart)" },
	ACCEPTED("disabled-source-ip-notify", SCOPE_DOMAIN, "mail on source IP disable"),
	ACCEPTED("bcc-upon-delivery", SCOPE_DOMAIN, "blind copy on delivery"),
	ACCEPTED("log-resolution", SCOPE_DOMAIN, "log DNS resolution"),
	ACCEPTED("log-connections", SCOPE_DOMAIN, "log outbound connections"),
	ACCEPTED("log-commands", SCOPE_DOMAIN, "log outbound commands"),
	ACCEPTED("disable-acct-records", SCOPE_DOMAIN, "record types not written for the queue"),
	ACCEPTED("source-ip-max-msg-rate", SCOPE_DOMAIN, "per local IP message rate"),
	ACCEPTED("source-ip-max-connect-rate", SCOPE_DOMAIN, "per local IP connect rate"),
	ACCEPTED("source-ip-max-smtp-out", SCOPE_DOMAIN, "per local IP connections"),
	ACCEPTED("assume-delivery-upon-data-termination-timeout", SCOPE_DOMAIN,
		 "count a DATA-end timeout as delivered"),
	ACCEPTED("smtp-tls-allow-tlsv1", SCOPE_DOMAIN, "outbound TLS 1.0"),
	ACCEPTED("smtp-tls-ciphers", SCOPE_DOMAIN, "outbound TLS ciphers"),

	/* ---- <virtual-mta> ---- */
	{ .name = "smtp-source-ip", .scope = SCOPE_VMTA, .type = CT_SPECIAL,
	  .handler = H_SOURCE_IP, .offset = offsetof(struct cfg_vmta, smtp_source_ip),
	  .help = "local IP address outbound connections bind to (the source guide's form)",
	  .flags = DF_ACTED },
	{ .name = "smtp-source-host", .scope = SCOPE_VMTA, .type = CT_SPECIAL,
	  .handler = H_SOURCE_HOST,
	  .help = "IP HOSTNAME: local address and its EHLO name, HOSTNAME being the address's PTR (repeatable, round-robin)",
	  .flags = DF_ACTED },
	{ .name = "host-name", OFF_V(host_name), .type = CT_STRING,
	  .help = "EHLO name of this virtual-mta",
	  .flags = DF_ACTED | DF_HOSTNAME },
	{ .name = "max-smtp-out", OFF_V(max_smtp_out), .type = CT_UINT, .def = "0",
	  .min = 0, .max = 1000000, .flags = DF_UNLIMITED_0 | DF_ACTED, .unit = "connections",
	  .help = "connections of the whole virtual-mta (0 = no cap beyond the queues')" },
	{ .name = "max-smtp-msg-rate", OFF_V(max_smtp_msg_rate), .type = CT_RATE,
	  .def = "unlimited", .unit = "messages/period",
	  .help = "messages per period of the whole virtual-mta" },
	{ .name = "domain-key", OFF_V(domain_keys), .type = CT_SPECIAL,
	  .handler = H_DOMAIN_KEY, .flags = DF_ACTED,
	  .help = "SELECTOR,DOMAIN,KEYFILE used by this virtual-mta, tried before the top-level keys" },
	ACCEPTED("use-proxy", SCOPE_VMTA, "outbound through a HAProxy-protocol proxy"),

	/* ---- <virtual-mta-pool> ---- */
	{ .name = "virtual-mta", .scope = SCOPE_POOL, .type = CT_SPECIAL,
	  .handler = H_POOL_MEMBER,
	  .help = "a member of the pool, used round-robin (repeatable)",
	  .flags = DF_ACTED },

	/* ---- <acct-file> ---- */
	{ .name = "records", .scope = SCOPE_ACCT, .type = CT_SPECIAL,
	  .handler = H_RECORDS, .offset = offsetof(struct cfg_acct, records),
	  .def = "d,b", .help = "record types written: d b t tq r f rb rs",
	  .flags = DF_ACTED },
	{ .name = "record-fields", .scope = SCOPE_ACCT, .type = CT_SPECIAL,
	  .handler = H_RECORD_FIELDS,
	  .help = "TYPE *,!field,header_NAME: columns of one record type",
	  .flags = DF_ACTED },
	{ .name = "max-size", OFF_A(max_size), .type = CT_SIZE, .def = "250M",
	  .unit = "bytes", .help = "start a new file at this size (at least 1M)",
	  .flags = DF_ACTED },
	{ .name = "move-interval", OFF_A(move_interval), .type = CT_INTERVAL,
	  .def = "1d", .unit = "interval", .help = "move the file to move-to this often",
	  .flags = DF_ACTED },
	{ .name = "move-to", OFF_A(move_to), .type = CT_STRING,
	  .help = "directory finished files are moved to",
	  .flags = DF_ACTED },
	{ .name = "delete-after", OFF_A(delete_after), .type = CT_INTERVAL_NEVER,
	  .def = "8d", .unit = "interval",
	  .help = "delete rotated files after this long (never = keep)",
	  .flags = DF_ACTED },
	{ .name = "iso-times", OFF_A(iso_times), .type = CT_BOOL, .def = "yes",
	  .help = "ISO 8601 times instead of time_t",
	  .flags = DF_ACTED },
	{ .name = "sync", OFF_A(sync), .type = CT_BOOL, .def = "no",
	  .help = "fsync after each batch of records",
	  .flags = DF_ACTED },
	{ .name = "world-readable", OFF_A(world_readable), .type = CT_BOOL,
	  .def = "no", .help = "mode 0644 instead of 0640",
	  .flags = DF_ACTED },
	{ .name = "user-string", OFF_A(user_string), .type = CT_STRING,
	  .help = "value of the userString field",
	  .flags = DF_ACTED },
	{ .name = "retry-interval", OFF_A(retry_interval), .type = CT_INTERVAL,
	  .def = "5m", .unit = "interval", .help = "restart a failed pipe after this long",
	  .flags = DF_ACTED },
	{ .name = "write-timeout", OFF_A(write_timeout), .type = CT_INTERVAL,
	  .def = "1m", .unit = "interval", .help = "a pipe write stalled this long fails",
	  .flags = DF_ACTED },
	ACCEPTED("queue-filter", SCOPE_ACCT, "write only records of matching queues"),
	ACCEPTED("count-moved-records", SCOPE_ACCT, "count records in moved files"),
	ACCEPTED("privacy-policy", SCOPE_ACCT, "redact or hash recipient local parts"),
	ACCEPTED("map-header-to-field", SCOPE_ACCT, "fill a field from a header"),

	/* ---- <rejectlog-file> ---- */
	{ .name = "records", .scope = SCOPE_REJECTLOG, .type = CT_SPECIAL,
	  .handler = H_RECORDS, .offset = offsetof(struct cfg_rejectlog, records),
	  .def = "c,r",
	  .help = "c = refused connections, messages and commands; r = refused recipients",
	  .flags = DF_ACTED },
	{ .name = "max-size", OFF_R(max_size), .type = CT_SIZE, .def = "100M",
	  .unit = "bytes", .help = "rotate the reject log at this size",
	  .flags = DF_ACTED },
	{ .name = "delete-after", OFF_R(delete_after), .type = CT_INTERVAL_NEVER,
	  .def = "8d", .unit = "interval",
	  .help = "delete rotated reject logs after this long (never = keep)",
	  .flags = DF_ACTED },

	/* ---- <spool> ---- */
	{ .name = "priority", OFF_SP(priority), .type = CT_UINT, .def = "1",
	  .min = 1, .max = 100, .unit = "1-100",
	  .help = "spools with higher priority are filled first" },
	{ .name = "min-free-space", OFF_SP(min_free_space), .type = CT_SIZE,
	  .def = "0", .unit = "bytes", .help = "stop accepting when less is free" },
	{ .name = "deliver-only", OFF_SP(deliver_only), .type = CT_BOOL, .def = "no",
	  .help = "drain this spool without writing to it" },
	ACCEPTED("delete-file-holders", SCOPE_SPOOL, "delete instead of recycling spool files"),

	/* ---- <smtp-user> ---- */
	{ .name = "password", OFF_U(password), .type = CT_STRING,
	  .help = "the user's password, plaintext or a crypt(3) hash ($6$...)",
	  .flags = DF_ACTED },
	{ .name = "authentication-method", OFF_U(method), .type = CT_ENUM,
	  .choices = auth_methods, .def = "password",
	  .help = "how the password is checked",
	  .flags = DF_ACTED },
	{ .name = "source", OFF_U(source), .type = CT_STRING,
	  .help = "named <source> holding the user's policy",
	  .flags = DF_ACTED },
	ACCEPTED("tls-certificate", SCOPE_SMTP_USER, "client certificate of the user"),

	/* ---- <source-group> ---- */
	{ .name = "max-smtp-in", OFF_SG(max_smtp_in), .type = CT_UINT, .def = "0",
	  .min = 0, .max = 1000000, .flags = DF_UNLIMITED_0 | DF_ACTED,
	  .unit = "connections",
	  .help = "inbound connections at once from all the group's clients (0 = no cap)" },
	{ .name = "reserved-smtp-in", OFF_SG(reserved_smtp_in), .type = CT_UINT,
	  .def = "0", .min = 0, .max = 1000000, .flags = DF_ACTED, .unit = "connections",
	  .help = "slots of total-max-smtp-in no client outside the group may take" },

	/* ---- <smtp-pattern-list> ---- */
	{ .name = "reply", .scope = SCOPE_SMTP_PATTERNS, .type = CT_SPECIAL,
	  .handler = H_SMTP_PATTERN_REPLY,
	  .help = "/regex/ ACTIONS: mode=backoff|normal, skip-mx, bounce-queue, bounce-rcpt, disable-source-ip[,reenable-after=T], defer-queue; first match wins",
	  .flags = DF_ACTED },

	/* ---- <bounce-category-patterns> ---- */
	{ .name = "regex", .scope = SCOPE_BOUNCE_PATTERNS, .type = CT_SPECIAL,
	  .handler = H_BOUNCE_REGEX,
	  .help = "\"re\" action delete|CATEGORY (the source guide's form); also /re/ CATEGORY",
	  .flags = DF_ACTED },

	/* ---- <pattern-list> ---- */
	{ .name = "mail-from", .scope = SCOPE_PATTERN_LIST, .type = CT_SPECIAL,
	  .handler = H_PATTERN_RULE, .flags = DF_ACTED,
	  .help = "/re/ virtual-mta=NAME: route by the MAIL FROM address; the first matching rule wins" },
	{ .name = "rcpt-to", .scope = SCOPE_PATTERN_LIST, .type = CT_SPECIAL,
	  .handler = H_PATTERN_RULE, .flags = DF_ACTED,
	  .help = "/re/ virtual-mta=NAME: route by recipient; a match decides for the whole message" },
	{ .name = "header", .scope = SCOPE_PATTERN_LIST, .type = CT_SPECIAL,
	  .handler = H_PATTERN_RULE, .flags = DF_ACTED,
	  .help = "NAME /re/ virtual-mta=NAME: route by a header field's (unfolded) value" },

	/* ---- <bounce-processor>, <feedback-loop-processor> ---- */
	{ .name = "deliver-matched-email", OFF_P(deliver_matched), .type = CT_BOOL,
	  .def = "no", .flags = DF_ACTED,
	  .help = "also deliver a report that was parsed (it is consumed otherwise)" },
	{ .name = "deliver-unmatched-email", OFF_P(deliver_unmatched), .type = CT_BOOL,
	  .def = "yes", .flags = DF_ACTED,
	  .help = "deliver mail to a processor address that is no report it can parse; "
		  "with no it is kept under <disk-queue>/unmatched (coremta never drops mail)" },
	{ .name = "forward-unmatched-to", OFF_P(forward_unmatched_to), .type = CT_STRING,
	  .flags = DF_ACTED,
	  .help = "address that gets mail to a processor address that is no report it can parse "
		  "(instead of delivering or keeping it)" },
	{ .name = "forward-errors-to", OFF_P(forward_errors_to), .type = CT_STRING,
	  .flags = DF_ACTED,
	  .help = "address that gets reports the processor could not use: a known format with no "
		  "recipient in it, or the other processor's kind" },
	{ .name = "domain", .scope = SCOPE_ADDRESS_LIST, .type = CT_SPECIAL,
	  .handler = H_ADDRESS_ENTRY, .flags = DF_ACTED,
	  .help = "every address of this domain is in the list" },
	{ .name = "address", .scope = SCOPE_ADDRESS_LIST, .type = CT_SPECIAL,
	  .handler = H_ADDRESS_ENTRY, .flags = DF_ACTED,
	  .help = "ADDR or /regex/: an address in the list" },

	/* ---- <mx-rollup-list> ---- */
	{ .name = "mx", .scope = SCOPE_MX_ROLLUP, .type = CT_SPECIAL,
	  .handler = H_MX_ROLLUP, .flags = DF_ACTED,
	  .help = "PATTERN NAME.rollup [rollup-by-ip]: domains whose most preferred MX host matches the glob PATTERN "
		  "(rollup-by-ip: whose address is in the CIDR PATTERN) share the queue NAME.rollup, set up as <domain NAME.rollup> "
		  "(repeatable; the first match wins)" },

	/* ---- <shard N> ---- */
	{ .name = "cpu", .scope = SCOPE_SHARD, .type = CT_SPECIAL,
	  .handler = H_SHARD_CPU, .flags = DF_ACTED,
	  .help = "core (OS numbering) the shard's thread is pinned to" },
	{ .name = "domain", .scope = SCOPE_SHARD, .type = CT_SPECIAL,
	  .handler = H_SHARD_DOMAIN, .flags = DF_ACTED,
	  .help = "domain pattern(s) delivered by this shard (comma list, $MACRO allowed)" },
};

const size_t cfg_directive_count = ARRAY_SIZE(cfg_directives);

/* Block tags; their directives are rows above, in the block's scope. */
const struct cfg_block_def cfg_blocks[] = {
	{ "source", true, "policy for clients by IP/CIDR, or a named source" },
	{ "domain", true, "queue settings for receiving domains (patterns, macros)" },
	{ "virtual-mta", true, "a sending identity: source IP, host name, its own <domain> blocks" },
	{ "virtual-mta-pool", true, "a group of virtual MTAs used round-robin" },
	{ "acct-file", true, "an accounting CSV file or pipe" },
	{ "rejectlog-file", true, "the log of refused connections and recipients" },
	{ "spool", true, "spool directory (same as disk-queue)" },
	{ "smtp-user", true, "an SMTP AUTH user" },
	{ "smtp-pattern-list", true, "reply patterns and the actions they trigger" },
	{ "bounce-category-patterns", true, "how bounce replies map to categories" },
	{ "shard", true, "coremta: pin a shard to a core and give it domains" },
	{ "pattern-list", true, "routing by sender, recipient or header" },
	{ "rewrite-list", false, "address rewriting" },
	{ "bounce-processor", true, "parse asynchronous bounces into rb records and suppressions" },
	{ "feedback-loop-processor", true, "parse ARF and JMRP complaints into f records and suppressions" },
	{ "address-list", true, "addresses a processor handles (inside one); at top level a named suppression list for suppression-lists" },
	{ "email-patterns", false, "patterns for non-standard reports" },
	{ "mx-rollup-list", true, "queue domains together by their MX" },
	{ "domain-key-list", true, "DKIM keys: domain-key lines, as if written at top level" },
	{ "aliases", false, "local aliases" },
	{ "dns", false, "resolver settings" },
	{ "proxy", false, "outbound proxy" },
	{ "source-group", true, "inbound connection limits per group of sources" },
	{ "smtp-listener", false, "per-listener settings" },
	{ "virtual-mta-pool-group", false, "groups of pools" },
};

const size_t cfg_block_count = ARRAY_SIZE(cfg_blocks);

const struct cfg_block_def *cfg_block_find(const char *name)
{
	for (size_t i = 0; i < cfg_block_count; i++)
		if (strcmp(cfg_blocks[i].name, name) == 0)
			return &cfg_blocks[i];
	return NULL;
}

/* `acted` is what the accounting writer and the reject log produce. */
const struct cfg_record_def cfg_record_types[] = {
	{ "d", "delivery", CFG_REC_DELIVERY, false, true },
	{ "b", "bounce", CFG_REC_BOUNCE, false, true },
	{ "t", "transient", CFG_REC_TRANSIENT, false, true },
	{ "tq", "transient-queue", CFG_REC_TRANSIENT_QUEUE, false, true },
	{ "r", "receipt", CFG_REC_RECEIPT, false, true },
	{ "f", "feedback-loop", CFG_REC_FEEDBACK, false, true },
	{ "rb", "remote-bounce", CFG_REC_REMOTE_BOUNCE, false, true },
	{ "rs", "remote-status", CFG_REC_REMOTE_STATUS, false, true },
	{ "c", "connection", CFG_REC_REJECT_CONN, true, true },
	{ "r", "recipient", CFG_REC_REJECT_RCPT, true, true },
};

const size_t cfg_record_type_count = ARRAY_SIZE(cfg_record_types);

/* edit_distance - Levenshtein distance, capped: names are short. */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t row[64];

	if (la >= ARRAY_SIZE(row) || lb >= ARRAY_SIZE(row))
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
			size_t best = diag + cost;
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

const char *cfg_directive_suggest(const char *name, enum cfg_scope scope)
{
	/* Two edits catch a swap (smpt) or a dropped letter, and long names
	 * allow a third; more than that suggests an unrelated word. */
	size_t limit = strlen(name) >= 12 ? 3 : 2;
	size_t best = SIZE_MAX;
	const char *found = NULL;

	for (size_t i = 0; i < cfg_directive_count; i++) {
		const struct cfg_directive *d = &cfg_directives[i];
		size_t dist = edit_distance(name, d->name);
		/* the scope the typo is in wins a tie */
		if (dist < best || (dist == best && d->scope == scope)) {
			best = dist;
			found = d->name;
		}
	}
	return best <= limit ? found : NULL;
}

const struct cfg_directive *cfg_directive_find(const char *name,
					       enum cfg_scope scope)
{
	for (size_t i = 0; i < cfg_directive_count; i++)
		if (cfg_directives[i].scope == scope &&
		    strcmp(cfg_directives[i].name, name) == 0)
			return &cfg_directives[i];
	return NULL;
}

const struct cfg_directive *cfg_directive_in_any_scope(const char *name)
{
	for (size_t i = 0; i < cfg_directive_count; i++)
		if (strcmp(cfg_directives[i].name, name) == 0)
			return &cfg_directives[i];
	return NULL;
}

const struct cfg_directive *
cfg_directive_canonical(const struct cfg_directive *d)
{
	if (!(d->flags & DF_ALIAS))
		return d;
	const struct cfg_directive *c = cfg_directive_find(d->alias_of, d->scope);
	BUG_ON(!c);
	return c;
}

size_t cfg_directive_index(const struct cfg_directive *d)
{
	BUG_ON(d < cfg_directives || d >= cfg_directives + cfg_directive_count);
	return (size_t)(d - cfg_directives);
}

const char *cfg_scope_name(enum cfg_scope scope)
{
	static const char *const names[SCOPE_COUNT] = {
		[SCOPE_GLOBAL] = "top level",
		[SCOPE_SOURCE] = "<source>",
		[SCOPE_DOMAIN] = "<domain>",
		[SCOPE_VMTA] = "<virtual-mta>",
		[SCOPE_POOL] = "<virtual-mta-pool>",
		[SCOPE_ACCT] = "<acct-file>",
		[SCOPE_REJECTLOG] = "<rejectlog-file>",
		[SCOPE_SPOOL] = "<spool>",
		[SCOPE_SMTP_USER] = "<smtp-user>",
		[SCOPE_SMTP_PATTERNS] = "<smtp-pattern-list>",
		[SCOPE_BOUNCE_PATTERNS] = "<bounce-category-patterns>",
		[SCOPE_PATTERN_LIST] = "<pattern-list>",
		[SCOPE_SHARD] = "<shard>",
		[SCOPE_SOURCE_GROUP] = "<source-group>",
		[SCOPE_PROCESSOR] = "<bounce-processor>/<feedback-loop-processor>",
		[SCOPE_ADDRESS_LIST] = "<address-list>",
		[SCOPE_MX_ROLLUP] = "<mx-rollup-list>",
	};
	BUG_ON((unsigned)scope >= SCOPE_COUNT);
	return names[scope];
}
