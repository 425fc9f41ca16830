/*
 * engine/daemon.c - the daemon's life: load the configuration, bind the
 * listeners, drop privileges, open and recover the spool, start the
 * shards and the intake thread, then serve signals until SIGTERM; SIGHUP
 * reloads the configuration live (engine_reload).
 *
 * Main thread, but for engine_reload(), which any thread may call
 * between start() and teardown() (stop the caller's thread first): it
 * runs under reload_lock and alone touches live, nlisten and the
 * intakes' listen_fds meanwhile.  Signals are blocked in every thread
 * and taken here with sigwaitinfo(), so no handler touches shared state.  Before any thread
 * starts, fd 2 becomes the pipe of the log writer (util/log.h): every
 * line any thread writes there is stamped and goes to log-file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "affinity/affinity.h"
#include "config/config.h"
#include "services/acct.h"
#include "engine/engine.h"
#include "engine/intake.h"
#include "engine/fbl.h"
#include "engine/mgmt.h"
#include "engine/spool.h"
#include "shards/shards.h"
#include "util/log.h"
#include "util/tls.h"

#define RING_JOBS 4096
#define LOG_DRAIN_MS 10000	/* how long exit waits for the log writer */

/* One intake thread and what it owns: its listeners and spool. */
struct intake_slot {
	struct daemon *d;
	uint32_t index;
	/*
	 * One per listener of the running configuration; the intake's
	 * own once it exists (it closes them), else closed here.
	 */
	int *listen_fds;
	char *spool_dir;
	struct spool *spool;
	struct intake *intake;
	pthread_t thread;
	bool started;
	bool recovered;			/* the spool may be committed */
	int rc;
};

struct daemon {
	/*
	 * The configuration it started on: what needs a restart (spool,
	 * listeners, threads, shards, the domain map, log and accounting
	 * files) keeps following it until the process ends.
	 */
	struct cfg *cfg;
	/*
	 * The newest configuration a reload swapped in (one reference), or
	 * NULL before the first; reload_lock serialises engine_reload().
	 */
	const struct cfg *live;
	pthread_mutex_t reload_lock;
	size_t nlisten;
	uint32_t nintake;
	struct intake_slot *in;
	struct tls_ctx *tls;
	struct tls_ctx *tls_client;
	struct acct_writer *acct;
	struct fbl *fbl;		/* suppression store and report processors */
	struct domain_map *map;
	struct shard_set *shards;
	char hostname[256];		/* greeting, Reporting-MTA of DSNs */
	struct strbuf made_dirs;	/* log directories created here, NUL-separated */
	struct log_writer *log;		/* stamps fd 2's lines into log-file or stderr */
	const char *path;		/* the configuration file; NULL: embedded */
	struct intake **intakes;	/* [nintake], for the management plane */
	struct mgmt *mgmt;		/* NULL: nothing listens on http-mgmt-port */
};

static void log_diags(const struct diag_list *dl)
{
	struct strbuf sb = { 0 };

	for (size_t i = 0; i < dl->count; i++) {
		sb_reset(&sb);
		diag_format(&dl->items[i], &sb);
		enum diag_severity sev = dl->items[i].severity;
		log_msg(sev == DIAG_ERROR ? LOG_LEVEL_ERROR
			: sev == DIAG_WARNING ? LOG_LEVEL_WARNING : LOG_LEVEL_NOTICE,
			"config", NULL, "%s", sb_str(&sb));
	}
	sb_free(&sb);
}

static int load(const char *path, struct cfg **out, struct diag_list *dl)
{
	if (path)
		return cfg_load_file(path, NULL, out, dl);
	return cfg_load_string("<embedded>", engine_default_config, NULL, NULL, out, dl);
}

/* mkdir_p - create dir and its parents (0750). */
static int mkdir_p(const char *dir)
{
	char *p = xstrdup(dir);

	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0750) < 0 && errno != EEXIST) {
			free(p);
			return -errno;
		}
		*s = '/';
	}
	int rc = mkdir(p, 0750) < 0 && errno != EEXIST ? -errno : 0;
	free(p);
	return rc;
}

/* chown_tree - hand a spool left by an earlier root run to the user. */
static int chown_tree(const char *path, uid_t uid, gid_t gid, int depth)
{
	struct stat st;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -1;
	if (chown(path, uid, gid) < 0)
		return -1;
	if (!S_ISDIR(st.st_mode) || depth > 4)
		return 0;
	DIR *dir = opendir(path);
	if (!dir)
		return -1;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(dir))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		char *child = xasprintf("%s/%s", path, e->d_name);
		if (chown_tree(child, uid, gid, depth + 1) < 0)
			rc = -1;
		free(child);
	}
	closedir(dir);
	return rc;
}

/*
 * drop_privileges - after binding: become process-user, or refuse root
 * when run-as-root is no and no user is given.  The spool (and the reject
 * log's directory) are handed to that user first.
 */
static int drop_privileges(const struct cfg *cfg, const char *spool_dir,
			   const struct strbuf *made_dirs)
{
	const struct cfg_global *g = cfg_global(cfg);

	if (geteuid() != 0)
		return 0;
	if (!g->process_user) {
		if (!g->run_as_root) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL,
				"run-as-root is no and no process-user is set: refusing to run as root");
			return -EPERM;
		}
		log_msg(LOG_LEVEL_WARNING, "start", "user=root", "running as root (set process-user)");
		return 0;
	}
	struct passwd *pw = getpwnam(g->process_user);
	if (!pw) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL,
			"process-user '%s' does not exist: create it "
			"(useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s; "
			"`make install` creates coremta) or name an existing user",
			g->process_user, g->process_user);
		return -ENOENT;
	}
	if (chown_tree(spool_dir, pw->pw_uid, pw->pw_gid, 0) < 0)
		log_msg(LOG_LEVEL_WARNING, "start", NULL, "chown -R %s: %s", spool_dir, strerror(errno));
	for (size_t i = 0; i < cfg_rejectlog_count(cfg); i++) {
		const char *path = cfg_rejectlog_at(cfg, i)->path;
		if (path && chown(path, pw->pw_uid, pw->pw_gid) < 0 && errno != ENOENT)
			log_msg(LOG_LEVEL_WARNING, "start", NULL, "chown %s: %s", path, strerror(errno));
	}
	/* log directories coremta created itself belong to the process-user */
	for (size_t off = 0; off < made_dirs->len; off += strlen(made_dirs->buf + off) + 1)
		if (chown(made_dirs->buf + off, pw->pw_uid, pw->pw_gid) < 0)
			log_msg(LOG_LEVEL_WARNING, "start", NULL, "chown %s: %s", made_dirs->buf + off,
				strerror(errno));
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "cannot become %s: %s", pw->pw_name,
			strerror(errno));
		return -errno;
	}
	char fields[96];
	snprintf(fields, sizeof(fields), "uid=%u", (unsigned)pw->pw_uid);
	log_msg(LOG_LEVEL_NOTICE, "start", fields, "running as %s", pw->pw_name);
	return 0;
}

/*
 * make_dir - create dir (and parents) if missing, remembering it so the
 * process-user gets it; an existing directory is left as it is.
 */
static void make_dir(struct daemon *d, const char *dir)
{
	struct stat st;

	if (stat(dir, &st) == 0)
		return;
	int rc = mkdir_p(dir);
	if (rc < 0) {
		log_msg(LOG_LEVEL_WARNING, "start", NULL, "cannot create %s: %s", dir, strerror(-rc));
		return;
	}
	sb_add(&d->made_dirs, dir, strlen(dir) + 1);
}

/* make_log_dir - the directory a log file goes in. */
static void make_log_dir(struct daemon *d, const char *path)
{
	char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');

	if (slash && slash != dir) {
		*slash = '\0';
		make_dir(d, dir);
	}
	free(dir);
}

/* acct_error - the accounting writer's thread reports a failed write. */
static void acct_error(void *arg, const char *text)
{
	(void)arg;
	log_msg(LOG_LEVEL_ERROR, "accounting", NULL, "%s", text);
}

static void *intake_main(void *arg)
{
	struct intake_slot *is = arg;

	is->rc = intake_run(is->intake);
	if (is->rc < 0) {
		char fields[32];
		snprintf(fields, sizeof(fields), "intake=%u", is->index);
		log_msg(LOG_LEVEL_ERROR, "intake-stopped", fields, "intake %u stopped: %s",
			is->index, strerror(-is->rc));
		kill(getpid(), SIGTERM);
	}
	return NULL;
}

/* mgmt_reload - POST /reload and `coremta ctl reload`, on the
 * management thread (engine_reload may be called from any thread) */
static int mgmt_reload(void *ctx, char **errors)
{
	return engine_reload(ctx, errors);
}

/*
 * start_mgmt - the management port, once the intakes and shards it
 * reports on run.  It keeps the start-up configuration (d->cfg, alive
 * until teardown) for its access rules and key: http-mgmt-port,
 * http-access and http-api-key take effect at a restart, as in PowerMTA.
 */
static int start_mgmt(struct daemon *d)
{
	char err[256];

	d->intakes = xcalloc(d->nintake, sizeof(*d->intakes));
	for (uint32_t i = 0; i < d->nintake; i++)
		d->intakes[i] = d->in[i].intake;
	struct mgmt_params mp = {
		.cfg = d->cfg,
		.config_path = d->path,
		.shards = d->shards,
		.intakes = d->intakes,
		.nintake = d->nintake,
		.hooks = { .reload = mgmt_reload, .ctx = d },
	};
	int rc = mgmt_start(&mp, &d->mgmt, err, sizeof(err));
	if (rc < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
	} else if (d->mgmt) {
		char fields[64];
		const char *scheme = cfg_global(d->cfg)->http_mgmt_tls ? "https" : "http";
		snprintf(fields, sizeof(fields), "port=%u scheme=%s", mgmt_port(d->mgmt), scheme);
		log_msg(LOG_LEVEL_NOTICE, "management", fields, "management port %u (%s)",
			mgmt_port(d->mgmt), scheme);
	}
	return rc;
}

static void teardown(struct daemon *d)
{
	/* first: it asks the shards and reads the intakes */
	mgmt_stop(d->mgmt);
	d->mgmt = NULL;
	free(d->intakes);
	d->intakes = NULL;
	for (uint32_t i = 0; i < d->nintake; i++)
		if (d->in[i].started) {
			intake_stop(d->in[i].intake);
			pthread_join(d->in[i].thread, NULL);
		}
	if (d->shards)
		shard_set_stop(d->shards);
	for (uint32_t i = 0; i < d->nintake; i++) {
		struct intake_slot *is = &d->in[i];
		/* a spool that was never recovered has nothing of ours to commit */
		if (is->intake && is->recovered)
			intake_drain_outcomes(is->intake);
		else if (is->spool && is->recovered)
			spool_commit(is->spool);
		spool_close(is->spool);
	}
	/* after the last producer: everything emitted reaches its file */
	if (d->acct)
		acct_writer_stop(d->acct);
	acct_writer_free(d->acct);
	for (uint32_t i = 0; i < d->nintake; i++) {
		struct intake_slot *is = &d->in[i];
		for (size_t k = 0; !is->intake && is->listen_fds && k < d->nlisten; k++)
			if (is->listen_fds[k] >= 0)
				close(is->listen_fds[k]);
		intake_free(is->intake);
		free(is->listen_fds);
		free(is->spool_dir);
	}
	free(d->in);
	/* after the intakes (readers) and the writer (its sink) are gone */
	fbl_free(d->fbl);
	shard_set_free(d->shards);
	domain_map_free(d->map);
	sb_free(&d->made_dirs);
	tls_ctx_free(d->tls);
	tls_ctx_free(d->tls_client);
	cfg_unref(d->live);
	cfg_free(d->cfg);
	tls_global_cleanup();
}

/*
 * dir_writable - whether the user this process now runs as may create
 * files in the directory path lives in (is_dir: path itself), and write
 * path if it exists.  Else say which directory and user, and the fix:
 * after the privilege drop a bare EACCES from deep inside says neither.
 */
static int dir_writable(const char *what, const char *path, bool is_dir)
{
	char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	int rc = 0;

	if (!is_dir && !slash) {
		free(dir);
		dir = xstrdup(".");
	} else if (!is_dir) {
		slash[slash == dir] = '\0';
	}
	const char *bad = access(dir, W_OK | X_OK) < 0 ? dir :
			  !is_dir && access(path, W_OK) < 0 && errno != ENOENT ? path : NULL;
	if (bad) {
		rc = -errno;
		struct passwd *pw = getpwuid(geteuid());
		const char *user = pw ? pw->pw_name : "?";
		log_msg(LOG_LEVEL_ERROR, "start", NULL,
			"%s %s: %s %s is not writable by %s (uid %u), the user "
			"coremta runs as: %s; give it to that user (chown %s %s) or choose another "
			"place", what, path, bad == dir ? "directory" : "file", bad, user,
			(unsigned)geteuid(), strerror(-rc), user, bad);
	}
	free(dir);
	return rc;
}

/* check_writable - every file coremta writes, as the user it now is. */
static int check_writable(struct daemon *d)
{
	const struct cfg_global *g = cfg_global(d->cfg);
	int rc = 0;

	for (uint32_t i = 0; i < d->nintake; i++)
		rc |= dir_writable("spool", d->in[i].spool_dir, true);
	if (g->log_file)
		rc |= dir_writable("log-file", g->log_file, false);
	for (size_t k = 0; k < cfg_acct_count(d->cfg); k++) {
		const struct cfg_acct *a = cfg_acct_at(d->cfg, k);
		if (a->is_pipe)
			continue;
		rc |= dir_writable("acct-file", a->path, false);
		if (a->move_to)
			rc |= dir_writable("acct-file move-to", a->move_to, true);
	}
	for (size_t k = 0; k < cfg_rejectlog_count(d->cfg); k++)
		rc |= dir_writable("rejectlog-file", cfg_rejectlog_at(d->cfg, k)->path, false);
	return rc ? -EACCES : 0;
}

/*
 * start_log - from here on every line on fd 2 is stamped, and goes to
 * log-file when the configuration has one.  The file is opened (and its
 * directory made) as the user that started coremta; the writer then
 * becomes the process-user, like the daemon will.
 */
static int start_log(struct daemon *d)
{
	const struct cfg_global *g = d->cfg ? cfg_global(d->cfg) : NULL;
	struct log_params lp = { .out_fd = -1 };
	char err[256];

	if (g)
		log_set_level((enum log_level)g->log_level);
	if (g && g->log_file) {
		make_log_dir(d, g->log_file);
		lp.out_fd = open(g->log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (lp.out_fd < 0) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "log-file %s: %s", g->log_file,
				strerror(errno));
			return -errno;
		}
		lp.path = g->log_file;
		lp.keep = g->log_rotate;
	}
	if (g && g->process_user && geteuid() == 0) {
		struct passwd *pw = getpwnam(g->process_user);
		if (pw) {
			lp.drop = true;
			lp.uid = pw->pw_uid;
			lp.gid = pw->pw_gid;
		}
	}
	int rc = log_writer_start(&lp, &d->log, err, sizeof(err));
	if (rc < 0)
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
	return rc;
}

/*
 * log_listeners - one line per listener with the address it is bound to:
 * the port the kernel chose for "smtp-listener ADDR:0" is known only
 * here, and whoever started us (the tests) reads it from this line.
 */
static void log_listeners(const struct daemon *d)
{
	char addr[INET6_ADDRSTRLEN], fields[INET6_ADDRSTRLEN + 32];

	for (size_t k = 0; k < d->nlisten; k++) {
		int port = intake_listen_addr(d->in[0].listen_fds[k], addr, sizeof(addr));
		if (port < 0)
			continue;
		snprintf(fields, sizeof(fields), "addr=%s port=%d", addr, port);
		log_msg(LOG_LEVEL_NOTICE, "listening", fields, "listening on %s port %d", addr,
			port);
	}
}

/* choose_hostname - the greeting's and DSNs' name (config/hostname.c's rule) */
static void choose_hostname(struct daemon *d)
{
	char system_name[256];

	cfg_system_host_name(system_name, sizeof(system_name));
	snprintf(d->hostname, sizeof(d->hostname), "%s",
		 cfg_host_name(d->cfg, NULL, system_name));
}

/*
 * bind_listeners - each intake thread has its own listening sockets
 * (SO_REUSEPORT lets the kernel spread connections) and its own spool:
 * DIR for the first, DIR/intake-N for the others, so no two threads share
 * one.  Binds before the privilege drop, for ports below 1024.
 */
static int bind_listeners(struct daemon *d, const struct cfg_global *g)
{
	char err[512];
	int rc;

	d->nlisten = g->listener_count;
	d->nintake = g->intake_threads ? g->intake_threads : 1;
	d->in = xcalloc(d->nintake, sizeof(*d->in));
	for (uint32_t i = 0; i < d->nintake; i++) {
		struct intake_slot *is = &d->in[i];
		is->d = d;
		is->index = i;
		is->listen_fds = xcalloc(d->nlisten, sizeof(int));
		for (size_t k = 0; k < d->nlisten; k++)
			is->listen_fds[k] = -1;
		rc = intake_bind_listeners(d->cfg, is->listen_fds, i ? d->in[0].listen_fds : NULL,
					   d->nintake > 1, err, sizeof(err));
		if (rc < 0) {
			free(is->listen_fds);
			is->listen_fds = NULL;
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
			return rc;
		}
		is->spool_dir = i ? xasprintf("%s/intake-%u", g->spool_dir, i)
				  : xstrdup(g->spool_dir);
		if ((rc = mkdir_p(is->spool_dir)) < 0) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "spool directory %s: %s",
				is->spool_dir, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

/*
 * make_log_files - the accounting writer opens its files after the
 * privilege drop: create missing log directories now (drop_privileges
 * hands the new ones over), and the reject logs themselves.
 */
static void make_log_files(struct daemon *d)
{
	for (size_t k = 0; k < cfg_acct_count(d->cfg); k++) {
		const struct cfg_acct *a = cfg_acct_at(d->cfg, k);
		if (!a->is_pipe) {
			make_log_dir(d, a->path);
			if (a->move_to)
				make_dir(d, a->move_to);
		}
	}
	for (size_t k = 0; k < cfg_rejectlog_count(d->cfg); k++) {
		const struct cfg_rejectlog *rl = cfg_rejectlog_at(d->cfg, k);
		make_log_dir(d, rl->path);
		int fd = open(rl->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (fd >= 0)
			close(fd);
	}
}

/* start_server_tls - the library, and STARTTLS's certificate if one is set */
static int start_server_tls(struct daemon *d, const struct cfg_global *g)
{
	char err[512];

	if (tls_global_init() < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "wolfSSL initialisation failed");
		return -EIO;
	}
	if (g->smtp_server_tls_certificate) {
		d->tls = tls_ctx_server_new(g->smtp_server_tls_certificate, NULL,
					    NULL, TLS_VERSION_1_2, 0, err, sizeof(err));
		if (!d->tls) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "smtp-server-tls-certificate: %s", err);
			return -EINVAL;
		}
	}
	return 0;
}

/* open_spools - one per intake thread, as the process-user */
static int open_spools(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nintake; i++) {
		struct strbuf serr = { 0 };
		int rc = spool_open(d->in[i].spool_dir, NULL, &d->in[i].spool, &serr);
		if (rc < 0) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "spool %s: %s", d->in[i].spool_dir,
				sb_str(&serr));
			sb_free(&serr);
			return rc;
		}
		sb_free(&serr);
	}
	return 0;
}

/*
 * plan_shards - how many shards, which domains each owns, and the core
 * of each: *cpus is the caller's to free (NULL after an error).
 */
static int plan_shards(struct daemon *d, uint32_t *nshards, int **cpus)
{
	char err[512];
	int rc;

	*cpus = NULL;
	if ((rc = affinity_shard_count(d->cfg, nshards, err, sizeof(err))) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
		return rc;
	}
	struct diag_list dl = { 0 };
	rc = domain_map_new(d->cfg, *nshards, &d->map, &dl);
	log_diags(&dl);
	diag_free(&dl);
	if (rc < 0)
		return rc;
	*cpus = xcalloc(*nshards, sizeof(int));
	if ((rc = affinity_shard_cpus(d->cfg, *nshards, *cpus, err, sizeof(err))) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
		free(*cpus);
		*cpus = NULL;
		return rc;
	}
	return 0;
}

/*
 * start_accounting - outbound TLS (opportunistic: encrypt, verify and
 * record, never refuse, so its absence is only a warning), the
 * suppression store and report processors, and the accounting writer.
 */
static int start_accounting(struct daemon *d, const struct cfg_global *g,
			    uint32_t nshards)
{
	char err[512];
	int rc;

	d->tls_client = tls_ctx_client_new(false, NULL, err, sizeof(err));
	if (!d->tls_client)
		log_msg(LOG_LEVEL_WARNING, "start", NULL, "outbound TLS unavailable: %s", err);
	if ((rc = fbl_new(d->cfg, d->nintake, &d->fbl, err, sizeof(err))) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
		return rc;
	}
	struct acct_params ap = {
		.spill_dir = g->spool_dir,
		.on_error = acct_error,
	};
	/* the writer also feeds b records to the suppression store */
	fbl_acct_params(d->fbl, &ap);
	/* producers: the intake threads (r, reject lines), then the shards */
	if ((rc = acct_writer_new(d->cfg, &ap, d->nintake + nshards, &d->acct, err,
				  sizeof(err))) < 0 ||
	    (rc = acct_writer_start(d->acct)) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
		return rc;
	}
	fbl_set_acct(d->fbl, d->acct);
	return 0;
}

/* start_shards - the delivery threads, each pinned to its core */
static int start_shards(struct daemon *d, uint32_t nshards, int *cpus)
{
	char err[512];
	struct shard_set_params sp = {
		.cfg = d->cfg,
		.nshards = nshards,
		.nintake = d->nintake,
		.ring_size = RING_JOBS,
		.tls_client = d->tls_client,
		.cpus = cpus,
		.log_fd = STDERR_FILENO,
		.acct = d->acct,
		.acct_producer_base = d->nintake,
		.body_cache_size = cfg_global(d->cfg)->body_cache_size,
	};
	const char **dirs = xcalloc(d->nintake, sizeof(char *));
	for (uint32_t i = 0; i < d->nintake; i++)
		dirs[i] = d->in[i].spool_dir;
	sp.spool_dirs = dirs;
	/* without it an idle shard would keep what a burst freed */
	int rc = affinity_background_purge();
	if (rc < 0 && rc != -ENOTSUP)
		log_msg(LOG_LEVEL_WARNING, "start", NULL,
			"jemalloc background purging: %s; freed memory stays resident longer",
			strerror(-rc));
	rc = shard_set_new(&sp, &d->shards, err, sizeof(err));
	free(dirs);
	if (rc < 0 || (rc = shard_set_start(d->shards, err, sizeof(err))) < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
		return rc;
	}
	return 0;
}

/*
 * recover_spools - an intake per spool, its spool's recovery begun: the
 * intake thread queues the messages a previous run left while it takes
 * new mail (intake_recover_begin).
 */
static int recover_spools(struct daemon *d, const struct cfg_global *g)
{
	char err[512];
	int rc;

	for (uint32_t i = 0; i < d->nintake; i++) {
		struct intake_slot *is = &d->in[i];
		struct intake_params ip = {
			.cfg = d->cfg,
			.index = i,
			.listen_fds = is->listen_fds,
			.spool = is->spool,
			.shards = d->shards,
			.map = d->map,
			.tls = d->tls,
			.acct = d->acct,
			.min_free_space = g->min_free_space,
			.hostname = d->hostname,
			.fbl = d->fbl,
		};
		if ((rc = intake_new(&ip, &is->intake, err, sizeof(err))) < 0) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "%s", err);
			return rc;
		}
		/* the intake thread recovers the spool while it takes mail */
		if ((rc = intake_recover_begin(is->intake)) < 0)
			return rc;
		is->recovered = true;
	}
	return 0;
}

/* start_intake - the threads that accept mail */
static int start_intake(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nintake; i++) {
		int rc = pthread_create(&d->in[i].thread, NULL, intake_main, &d->in[i]);
		if (rc != 0) {
			log_msg(LOG_LEVEL_ERROR, "start", NULL, "intake thread: %s", strerror(rc));
			return -rc;
		}
		d->in[i].started = true;
	}
	return 0;
}

/*
 * start - bring the daemon up on d->cfg, one stage after another; the
 * order is the contract.  Sockets are bound and directories made while
 * still root, then privileges drop; the spools open as the
 * process-user; accounting runs before the shards and intakes that
 * produce its records; spool recovery begins before the intake threads
 * start, and they finish it while taking new mail.  On failure the caller runs teardown(), which
 * undoes the stages that completed.
 */
static int start(struct daemon *d)
{
	const struct cfg_global *g = cfg_global(d->cfg);
	uint32_t nshards;
	int *cpus;
	int rc;

	choose_hostname(d);
	if ((rc = bind_listeners(d, g)) < 0)
		return rc;
	make_log_files(d);
	if ((rc = drop_privileges(d->cfg, g->spool_dir, &d->made_dirs)) < 0)
		return rc;
	if ((rc = check_writable(d)) < 0)
		return rc;
	if ((rc = start_server_tls(d, g)) < 0)
		return rc;
	if ((rc = open_spools(d)) < 0)
		return rc;
	if ((rc = plan_shards(d, &nshards, &cpus)) < 0)
		return rc;
	rc = start_accounting(d, g, nshards);
	if (rc == 0)
		rc = start_shards(d, nshards, cpus);
	free(cpus);
	if (rc < 0)
		return rc;
	if ((rc = recover_spools(d, g)) < 0)
		return rc;
	if ((rc = start_intake(d)) < 0)
		return rc;
	/* before the management port: from then on a reload may swap the sockets */
	log_listeners(d);
	if ((rc = start_mgmt(d)) < 0)
		return rc;
	char fields[96];
	snprintf(fields, sizeof(fields), "version=%s intakes=%u shards=%u", COREMTA_VERSION,
		 d->nintake, nshards);
	log_msg(LOG_LEVEL_NOTICE, "started", fields,
		"coremta %s: configuration %s loaded: %zu listener%s (first %s), spool %s, %u intake thread%s, %u shard%s",
		COREMTA_VERSION, cfg_path(d->cfg), g->listener_count,
		g->listener_count == 1 ? "" : "s", g->listeners[0].text, g->spool_dir,
		d->nintake, d->nintake == 1 ? "" : "s", nshards, nshards == 1 ? "" : "s");
	return 0;
}

static bool str_differ(const char *a, const char *b)
{
	return !a != !b || (a && strcmp(a, b) != 0);
}

static bool list_differ(const struct cfg_strlist *a, const struct cfg_strlist *b)
{
	if (a->count != b->count)
		return true;
	for (size_t i = 0; i < a->count; i++)
		if (strcmp(a->items[i], b->items[i]) != 0)
			return true;
	return false;
}

/*
 * restart_only - say which settings of next differ from those the daemon
 * started on and are not swapped live: they take effect at a restart.
 */
static void restart_only(const struct cfg *boot, const struct cfg *next)
{
	const struct cfg_global *a = cfg_global(boot), *b = cfg_global(next);
	const char *what[12];
	size_t n = 0;

	if (str_differ(a->spool_dir, b->spool_dir))
		what[n++] = "disk-queue/<spool>";
	if (a->intake_threads != b->intake_threads)
		what[n++] = "intake-threads";
	if (a->shard_count != b->shard_count)
		what[n++] = "shards";
	if (str_differ(a->log_file, b->log_file) || a->log_rotate != b->log_rotate)
		what[n++] = "log-file/log-rotate";
	if (list_differ(&a->name_servers, &b->name_servers))
		what[n++] = "name-server";
	if (a->min_free_space != b->min_free_space)
		what[n++] = "min-free-space";
	if (str_differ(a->process_user, b->process_user))
		what[n++] = "process-user";
	if (str_differ(a->smtp_server_tls_certificate, b->smtp_server_tls_certificate))
		what[n++] = "smtp-server-tls-certificate";
	for (size_t i = 0; i < n; i++)
		log_msg(LOG_LEVEL_WARNING, "reload", NULL,
			"%s changed: it takes effect at the next restart", what[i]);
}

/* reload_pending - whether a thread has not taken the last reload yet. */
static bool reload_pending(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nintake; i++)
		if (intake_reload_pending(d->in[i].intake))
			return true;
	return shard_set_reload_pending(d->shards);
}

/* wait_taken - until every thread took the last reload (true), or 5 s. */
static bool wait_taken(struct daemon *d)
{
	for (int i = 0; i < 500 && reload_pending(d); i++)
		usleep(10 * 1000);
	return !reload_pending(d);
}

static bool same_addr(const struct cfg_sockaddr *a, const struct cfg_sockaddr *b)
{
	return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/*
 * reload_listeners - for each intake thread, one listening socket per
 * listener of next (fds[intake][k]): the running one for an address it
 * already listens on, else a new one bound now (as the process-user: a
 * port under 1024 needs a restart as root).  0, or -errno with the
 * sockets bound here closed and the error in sb.
 */
static int reload_listeners(struct daemon *d, const struct cfg *next, int **fds,
			    struct strbuf *sb)
{
	const struct cfg_global *cur = cfg_global(d->live ? d->live : d->cfg);
	const struct cfg_global *g = cfg_global(next);
	char err[512];

	for (uint32_t i = 0; i < d->nintake; i++) {
		fds[i] = xcalloc(g->listener_count + 1, sizeof(int));
		for (size_t k = 0; k < g->listener_count; k++) {
			size_t j = 0;
			while (j < cur->listener_count &&
			       !same_addr(&cur->listeners[j].addr, &g->listeners[k].addr))
				j++;
			if (j < cur->listener_count) {
				fds[i][k] = d->in[i].listen_fds[j];
				continue;
			}
			int fd = intake_bind_listener(&g->listeners[k], i ? fds[0][k] : -1,
						      d->nintake > 1, err, sizeof(err));
			if (fd >= 0) {
				fds[i][k] = fd;
				continue;
			}
			sb_printf(sb, "%s\n", err);
			/* undo: close what this reload bound, for every thread so far */
			for (uint32_t x = 0; x <= i; x++) {
				for (size_t y = 0; y < (x < i ? g->listener_count : k); y++) {
					bool ours = true;
					for (size_t z = 0; z < cur->listener_count; z++)
						ours &= fds[x][y] != d->in[x].listen_fds[z];
					if (ours)
						close(fds[x][y]);
				}
				free(fds[x]);
				fds[x] = NULL;
			}
			return fd;
		}
	}
	return 0;
}

int engine_reload(struct daemon *d, char **errors)
{
	struct diag_list dl = { 0 };
	struct strbuf sb = { 0 };
	struct cfg *next = NULL;
	int **fds = NULL;

	*errors = NULL;
	pthread_mutex_lock(&d->reload_lock);
	int rc = load(d->path, &next, &dl);
	bool loaded = rc == 0;
	log_diags(&dl);
	for (size_t i = 0; rc < 0 && i < dl.count; i++) {
		if (dl.items[i].severity != DIAG_ERROR)
			continue;
		diag_format(&dl.items[i], &sb);
		sb_add(&sb, "\n", 1);
	}
	diag_free(&dl);
	if (rc == 0 && !wait_taken(d)) {
		sb_printf(&sb, "a thread has not taken the previous configuration yet\n");
		rc = -EBUSY;
	}
	if (rc == 0) {
		fds = xcalloc(d->nintake, sizeof(*fds));
		rc = reload_listeners(d, next, fds, &sb);
	}
	if (rc < 0) {
		if (!sb.len)
			sb_add(&sb, "configuration has errors\n", 25);
		/* the log has the file's diagnostics; the other errors go there too */
		for (const char *l = sb_str(&sb), *nl; loaded && *l; l = *nl ? nl + 1 : nl) {
			nl = strchrnul(l, '\n');
			if (nl > l)
				log_msg(LOG_LEVEL_ERROR, "reload", NULL, "%.*s", (int)(nl - l), l);
		}
		*errors = sb_detach(&sb);
		log_msg(LOG_LEVEL_ERROR, "reload", NULL,
			"reload of %s failed; the running configuration is unchanged",
			d->path ? d->path : "<embedded>");
		free(fds);
		cfg_free(next);
		pthread_mutex_unlock(&d->reload_lock);
		return -1;
	}
	restart_only(d->cfg, next);
	/* each thread takes its own reference; ours is d->live */
	shard_set_reload(d->shards, next);
	for (uint32_t i = 0; i < d->nintake; i++) {
		rc = intake_reload(d->in[i].intake, next, fds[i]);
		BUG_ON(rc < 0);		/* wait_taken() saw nothing pending */
		free(d->in[i].listen_fds);
		d->in[i].listen_fds = fds[i];
	}
	free(fds);
	d->nlisten = cfg_global(next)->listener_count;
	cfg_unref(d->live);
	d->live = next;
	log_set_level((enum log_level)cfg_global(next)->log_level);
	bool taken = wait_taken(d);
	log_msg(LOG_LEVEL_NOTICE, "reload", NULL, "configuration %s reloaded%s", cfg_path(next),
		taken ? "" : " (some threads take it late)");
	log_listeners(d);
	pthread_mutex_unlock(&d->reload_lock);
	return 0;
}

int engine_run(const char *path)
{
	struct daemon d = { .path = path, .reload_lock = PTHREAD_MUTEX_INITIALIZER };
	int status = 0;
	sigset_t set;
	siginfo_t info;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGPIPE);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
		perror("coremta: sigprocmask");
		return 1;
	}
	struct diag_list dl = { 0 };
	int lrc = load(path, &d.cfg, &dl);
	/* the configuration names the log file: its own diagnostics go there too */
	if (start_log(&d) < 0) {
		log_diags(&dl);
		diag_free(&dl);
		cfg_free(d.cfg);
		sb_free(&d.made_dirs);
		return 1;
	}
	log_diags(&dl);
	diag_free(&dl);
	if (lrc < 0) {
		log_msg(LOG_LEVEL_ERROR, "start", NULL, "configuration %s has errors; not starting",
			path ? path : "<embedded>");
		log_writer_finish(d.log, LOG_DRAIN_MS);
		return 1;
	}
	if (start(&d) < 0) {
		teardown(&d);
		log_writer_finish(d.log, LOG_DRAIN_MS);
		return 1;
	}
	for (;;) {
		int sig = sigwaitinfo(&set, &info);
		if (sig < 0) {
			if (errno == EINTR)
				continue;
			perror("coremta: sigwaitinfo");
			break;
		}
		if (sig == SIGPIPE)
			continue;
		if (sig == SIGUSR1) {
			log_msg(LOG_LEVEL_NOTICE, "signal", "signal=SIGUSR1",
				"SIGUSR1 received: reopening the log file");
			log_writer_reopen(d.log);
			continue;
		}
		if (sig == SIGHUP) {
			char *errors;
			log_msg(LOG_LEVEL_NOTICE, "signal", "signal=SIGHUP", "SIGHUP received: reloading %s",
				path ? path : "<embedded>");
			engine_reload(&d, &errors);	/* errors were logged */
			free(errors);
			continue;
		}
		log_msg(LOG_LEVEL_NOTICE, "signal", sig == SIGTERM ? "signal=SIGTERM" : "signal=SIGINT",
			"%s received, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		break;
	}
	/* the intake threads' results, before teardown frees them */
	for (uint32_t i = 0; i < d.nintake; i++)
		if (d.in[i].started) {
			intake_stop(d.in[i].intake);
			pthread_join(d.in[i].thread, NULL);
			d.in[i].started = false;
			status |= d.in[i].rc < 0;
		}
	teardown(&d);
	log_writer_finish(d.log, LOG_DRAIN_MS);
	return status;
}
