/*
 * config/lint.c - finds the operator mistakes that load cleanly but hurt
 * in production (the source guide's table of mistakes, and more).  Each
 * finding says what will happen and how to fix it.
 *
 * Reads a loaded struct cfg; any thread.  cfg_host_facts_read() reads
 * /proc and the process limits of the calling process.
 */
#include <arpa/inet.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config/config.h"
#include "config/directives.h"
#include "config/model.h"

/*
 * What one outbound connection costs: its own state (about 3.5 KiB;
 * bench/run connections), I/O buffers while data moves (a 4 KiB receive
 * buffer from the shard's ring, a 16 KiB body scratch while a body goes
 * out), wolfSSL's session state and record buffers (~40 KiB with TLS
 * 1.3), plus the kernel's socket buffers at their default sizes (~2 x 64
 * KiB under load).  Rounded up: 256 KiB.
 */
#define CONN_COST_BYTES (256ull * 1024)
/* Connections may use at most half of RAM: the rest is queue and cache. */
#define CONN_MEM_SHARE 2
/* The source guide: "Set to 250 max" per queue. */
#define QUEUE_FLOOD_LIMIT 250

/* The mailbox providers that throttle and block unthrottled senders. */
static const char *const big_providers[] = {
	"gmail.com", "googlemail.com", "yahoo.com", "aol.com", "outlook.com",
	"hotmail.com", "live.com", "msn.com", "icloud.com",
};

void cfg_host_facts_read(struct cfg_host_facts *facts)
{
	struct rlimit rl;
	long pages = sysconf(_SC_PHYS_PAGES);
	long psize = sysconf(_SC_PAGESIZE);

	memset(facts, 0, sizeof(*facts));
	if (pages > 0 && psize > 0)
		facts->mem_total = (uint64_t)pages * (uint64_t)psize;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		facts->nofile_limit = rl.rlim_cur;
	facts->running_as_root = geteuid() == 0;
	if (gethostname(facts->host_name, sizeof(facts->host_name) - 1) < 0)
		facts->host_name[0] = '\0';
}

static void finding(struct diag_list *f, struct cfg_origin o, const char *fmt,
		    ...) UTIL_PRINTF(3, 4);
static void finding(struct diag_list *f, struct cfg_origin o, const char *fmt,
		    ...)
{
	va_list ap;

	va_start(ap, fmt);
	diag_vadd(f, DIAG_WARNING, o.file, o.file ? o.line : 0, fmt, ap);
	va_end(ap);
}

static void lint_default_domain(const struct cfg *cfg, struct diag_list *f)
{
	for (size_t i = 0; i < cfg_domain_pattern_count(cfg); i++) {
		const struct cfg_domain_pattern_info *p = cfg_domain_pattern_at(cfg, i);
		if (strcmp(p->pattern, "*") == 0)
			return;
	}
	finding(f, (struct cfg_origin){ .file = cfg_path(cfg) },
		"lint: no <domain *> block: every receiver gets the built-in defaults (20 connections, unlimited rate, retry every 10m); fix: add <domain *> with the limits you want by default, then override per provider");
}

static void lint_connections(const struct cfg *cfg,
			     const struct cfg_host_facts *host,
			     struct diag_list *f)
{
	const struct cfg_global *g = cfg_global(cfg);
	uint64_t budget = host->mem_total / CONN_MEM_SHARE;
	uint64_t total = g->total_max_smtp_out;
	struct cfg_origin o = cfg_global_origin(cfg, "total-max-smtp-out");

	if (budget && total * CONN_COST_BYTES > budget) {
		uint64_t fit = budget / CONN_COST_BYTES;
		finding(f, o,
			"lint: total-max-smtp-out %llu is too high for this host: %llu connections x 256 KiB = %llu MiB, more than half of its %llu MiB of RAM; the host will swap or the kernel will kill coremta under load; fix: total-max-smtp-out %llu or less",
			(unsigned long long)total, (unsigned long long)total,
			(unsigned long long)(total * CONN_COST_BYTES >> 20),
			(unsigned long long)(host->mem_total >> 20),
			(unsigned long long)fit);
	}
	if (host->nofile_limit && total + g->total_max_smtp_in + 64 > host->nofile_limit)
		finding(f, o,
			"lint: total-max-smtp-out %llu + total-max-smtp-in %u + 64 spare descriptors exceed the open-file limit %llu; connects will fail with EMFILE; fix: raise 'ulimit -n' (LimitNOFILE) above %llu or lower the connection limits",
			(unsigned long long)total, g->total_max_smtp_in,
			(unsigned long long)host->nofile_limit,
			(unsigned long long)(total + g->total_max_smtp_in + 64));

	/* A queue allowed more connections than makes sense. */
	for (size_t i = 0; i < cfg_domain_pattern_count(cfg); i++) {
		const struct cfg_domain_pattern_info *p = cfg_domain_pattern_at(cfg, i);
		uint64_t n;
		struct cfg_origin qo;
		if (!cfg_domain_pattern_uint(cfg, i, "max-smtp-out", &n, &qo))
			continue;
		if (n > total)
			finding(f, qo,
				"lint: max-smtp-out %llu for <domain %s> exceeds total-max-smtp-out %llu; the queue can never reach it; fix: lower it or raise total-max-smtp-out",
				(unsigned long long)n, p->pattern, (unsigned long long)total);
		else if (n > QUEUE_FLOOD_LIMIT)
			finding(f, qo,
				"lint: max-smtp-out %llu for <domain %s>: one receiver gets %llu parallel connections from your IPs, which providers treat as flooding (421, then blocks), and on a small host %llu x 256 KiB = %llu MiB of buffers for a single queue; fix: %d at most (20 to 50 for the big providers)",
				(unsigned long long)n, p->pattern, (unsigned long long)n,
				(unsigned long long)n,
				(unsigned long long)(n * CONN_COST_BYTES >> 20),
				QUEUE_FLOOD_LIMIT);
	}
}

static void lint_msg_per_connection(const struct cfg *cfg, struct diag_list *f)
{
	for (size_t i = 0; i < cfg_domain_pattern_count(cfg); i++) {
		const struct cfg_domain_pattern_info *p = cfg_domain_pattern_at(cfg, i);
		uint64_t n;
		struct cfg_origin o;
		if (!cfg_domain_pattern_uint(cfg, i, "max-msg-per-connection", &n, &o) || n)
			continue;
		finding(f, o,
			"lint: max-msg-per-connection 0 for <domain %s>: connections are never closed, receivers see one endless session and throttle or drop it; fix: max-msg-per-connection 50 to 200",
			p->pattern);
	}
}

static void lint_root(const struct cfg *cfg, const struct cfg_host_facts *host,
		      struct diag_list *f)
{
	const struct cfg_global *g = cfg_global(cfg);

	if (g->process_user || !g->run_as_root)
		return;
	/* The fix must work when applied: the user has to exist, and own
	 * what the daemon writes after it drops root. */
	bool exists = getpwnam("coremta") != NULL;
	finding(f, (struct cfg_origin){ .file = cfg_path(cfg) },
		"lint: coremta will keep root privileges (no process-user, run-as-root is yes)%s: a flaw in SMTP parsing would give an attacker the host; fix: process-user coremta (%s; it must be able to write the spool directory and the log and accounting directories)",
		host->running_as_root ? " and this process is root" : "",
		exists ? "that user exists here"
		       : "no such user here yet: `make install` creates it, or useradd --system --no-create-home coremta");
}

/*
 * ehlo_fqdn - receivers refuse or score down an EHLO name that is
 * not a fully qualified domain (one label, or a bare IP without brackets).
 */
static bool ehlo_fqdn(const char *name)
{
	if (name[0] == '[')
		return true;	/* an address literal is legal, if unloved */
	const char *dot = strchr(name, '.');
	return dot && dot != name && dot[1] != '\0';
}

static void lint_ehlo_names(const struct cfg *cfg,
			    const struct cfg_host_facts *host, struct diag_list *f)
{
	const struct cfg_global *g = cfg_global(cfg);
	const char *global = cfg_host_name(cfg, NULL, host->host_name[0] ? host->host_name : NULL);

	if (global && !ehlo_fqdn(global))
		finding(f, (struct cfg_origin){ .file = cfg_path(cfg) },
			"lint: the EHLO name '%s' (%s) is not a fully qualified domain name; Gmail, Outlook and most filters reject or penalise a bare host name; fix: host-name mail.example.com, the name your sending IP's PTR record gives",
			global, g->host_name ? "host-name" : "this system's host name, since host-name is unset");
	for (size_t i = 0; i < cfg_vmta_count(cfg); i++) {
		const struct cfg_vmta *v = cfg_vmta_at(cfg, i);
		if (v->host_name && !ehlo_fqdn(v->host_name))
			finding(f, (struct cfg_origin){ .file = cfg_path(cfg) },
				"lint: the EHLO name '%s' of <virtual-mta %s> is not a fully qualified domain name; receivers reject or penalise it; fix: host-name with the FQDN that the PTR record of %s gives",
				v->host_name, v->name,
				v->smtp_source_ip ? v->smtp_source_ip : "its source IP");
	}
}

static bool open_network(const struct cfg_source *s, const char *name)
{
	(void)s;
	return strcmp(name, "0/0") == 0 || strcmp(name, "0.0.0.0/0") == 0 ||
	       strcmp(name, "::/0") == 0;
}

static void lint_open_relay(const struct cfg *cfg, struct diag_list *f)
{
	for (size_t i = 0; i < cfg_source_block_count(cfg); i++) {
		struct cfg_origin where;
		const struct cfg_source *s = cfg_source_block_effective(cfg, i, &where);
		if (!s || !open_network(s, s->name))
			continue;
		if (s->always_allow_relaying && !s->require_auth)
			finding(f, cfg_source_origin(s, "always-allow-relaying"),
				"lint: open relay: <source %s> lets every client on the internet relay without authentication; spammers will find it within hours and your IPs get blocklisted; fix: allow relaying only for your injectors' addresses (<source 10.0.0.0/8>) or set require-auth yes",
				s->name);
	}
}

/* mgmt_port_live - does this coremta listen on http-mgmt-port? */
static bool mgmt_port_live(const struct cfg_global *g)
{
	const struct cfg_directive *d = cfg_directive_find("http-mgmt-port",
							   SCOPE_GLOBAL);

	return (d->flags & DF_ACTED) && g->http_mgmt_port != 0;
}

static void lint_http_access(const struct cfg *cfg, struct diag_list *f)
{
	const struct cfg_global *g = cfg_global(cfg);

	for (size_t i = 0; i < g->http_access_count; i++) {
		const struct cfg_http_access *h = &g->http_access[i];
		if (h->net.prefix != 0 || h->level < CFG_HTTP_OPERATOR)
			continue;
		finding(f, h->origin,
			"lint: http-access 0/0 %s gives anyone who can reach port %u control of the queues%s (%s); fix: http-access 127.0.0.1 admin (and your operators' network), monitor at most for others",
			h->level == CFG_HTTP_ADMIN ? "admin" : "operator",
			g->http_mgmt_port,
			h->level == CFG_HTTP_ADMIN ? " and the configuration" : "",
			mgmt_port_live(g) ? "the management port is live"
					  : "not live yet: this coremta does not serve HTTP, but will once it does");
	}
}

static void lint_provider_rates(const struct cfg *cfg, struct diag_list *f)
{
	size_t nv = cfg_vmta_count(cfg);
	struct strbuf names = { 0 };
	const char *first = NULL;

	for (size_t p = 0; p < ARRAY_SIZE(big_providers); p++) {
		/* {default} first, so a global gap is named without a VMTA */
		for (size_t v = 0; v <= nv; v++) {
			const char *vmta = v ? cfg_vmta_at(cfg, v - 1)->name : NULL;
			const struct cfg_queue *q = cfg_queue_lookup(cfg, big_providers[p], vmta);
			if (!q || !q->max_msg_rate.unlimited)
				continue;
			sb_printf(&names, "%s%s%s%s", names.len ? ", " : "",
				  big_providers[p], vmta ? "/" : "", vmta ? vmta : "");
			if (!first)
				first = big_providers[p];
			break;
		}
	}
	if (first)
		finding(f, (struct cfg_origin){ .file = cfg_path(cfg) },
			"lint: max-msg-rate is unlimited towards %s: a burst gets your IPs throttled (421 4.7.0) or blocked by these providers; fix: a <domain> block per provider with a rate, e.g. <domain %s> max-msg-rate 1000/h (start low on new IPs and raise it)",
			sb_str(&names), first);
	sb_free(&names);
}

size_t cfg_lint(const struct cfg *cfg, const struct cfg_host_facts *host,
		struct diag_list *findings)
{
	size_t before = findings->count;

	lint_default_domain(cfg, findings);
	lint_connections(cfg, host, findings);
	lint_msg_per_connection(cfg, findings);
	lint_root(cfg, host, findings);
	lint_ehlo_names(cfg, host, findings);
	lint_open_relay(cfg, findings);
	lint_http_access(cfg, findings);
	lint_provider_rates(cfg, findings);
	return findings->count - before;
}
