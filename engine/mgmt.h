/*
 * mgmt - the management plane: an HTTP server (libmicrohttpd) on
 * http-mgmt-port with the JSON API coremta ctl talks to, /metrics for
 * Prometheus and the web monitor page.
 *
 * It runs one thread of its own, the only one that sends commands to the
 * shards (shards.h: the control ring) and the only reader of what they
 * answer; intake and shard counters it reads are relaxed atomics.  It
 * never touches a shard's queues.
 *
 * Threads: mgmt_start and mgmt_stop on the main thread; the hooks are
 * called on the management thread.  mgmt_stop joins the thread and frees
 * everything mgmt_start made.
 */
#ifndef COREMTA_ENGINE_MGMT_H
#define COREMTA_ENGINE_MGMT_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "shards/shards.h"

struct intake;

/* What the daemon supplies for the requests only it can answer. */
struct mgmt_hooks {
	/*
	 * reload - load the configuration file, check it and swap it in.
	 * Returns 0, or -1 with every file:line error, newline separated,
	 * in *errors_out (malloc'd; the management thread frees it).
	 * NULL: POST /reload answers 503.
	 */
	int (*reload)(void *ctx, char **errors_out);
	void *ctx;
};

struct mgmt_params {
	const struct cfg *cfg;		/* outlives the mgmt */
	const char *config_path;	/* the file the daemon runs; NULL: embedded */
	struct shard_set *shards;
	struct intake *const *intakes;
	uint32_t nintake;
	struct mgmt_hooks hooks;
};

struct mgmt;

/*
 * mgmt_start - listen on http-mgmt-port and start the thread.  *out is
 * NULL (and 0 returned) when nothing should listen: port 0, or no
 * http-access line grants more than none.  -errno with err on failure
 * (the port is taken, the certificate cannot be read).
 */
int mgmt_start(const struct mgmt_params *p, struct mgmt **out, char *err, size_t errlen);
/* mgmt_port - the port it listens on. */
uint16_t mgmt_port(const struct mgmt *m);
/* mgmt_stop - stop the thread and free it.  NULL ok. */
void mgmt_stop(struct mgmt *m);

/* The web monitor page (engine/monitor.c): self-contained HTML. */
extern const char mgmt_monitor_html[];

#endif
