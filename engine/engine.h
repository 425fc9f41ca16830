/*
 * engine - the coremta process: command line, configuration lifecycle
 * and (as they land) intake, spool and the hand-off to the shards.
 *
 * Called from main() on the main thread only, but for engine_reload().
 */
#ifndef COREMTA_ENGINE_H
#define COREMTA_ENGINE_H

#include <stdio.h>

/* The configuration coremta runs without -c (engine/default_config.c). */
extern const char engine_default_config[];

/*
 * engine_check_main - `coremta check ...`: load a configuration, print
 * its diagnostics and lint findings to out/err, answer --show, --source,
 * --shards and --reference.  Returns the exit status: 0 clean, 1 errors,
 * 2 warnings under --strict, 64 bad usage.
 */
int engine_check_main(int argc, char **argv, FILE *out, FILE *err);

/*
 * engine_suppress_main - `coremta suppress VERB ...`: add, remove, show,
 * import, export or purge entries of the suppression store the
 * configuration names, while the daemon runs or not.  Returns 0 done, 1
 * not suppressed / no such entry, 64 bad usage, 65 bad data, 69 store
 * error, 78 configuration error.
 */
int engine_suppress_main(int argc, char **argv, FILE *out, FILE *err);

/*
 * engine_run - the daemon in the foreground until SIGTERM or SIGINT;
 * path NULL runs the embedded configuration.  Returns the exit status.
 */
int engine_run(const char *path);

/* The running daemon (engine/daemon.c): what engine_run() serves. */
struct daemon;

/*
 * engine_reload - load the daemon's configuration file again, check it,
 * and swap it in: every shard and intake thread switches at its next
 * loop boundary (within a second); queues keep their recipients and take
 * the new limits, rates and virtual-mta settings; open connections
 * finish their transaction under the old ones.  What needs a restart
 * (spool, listeners, thread and shard counts, log file, ...) is logged
 * and keeps its running value.  Returns 0, or -1 with nothing changed
 * and *errors a malloc'd list of every "file:line: error: text", one a
 * line (the caller frees it; NULL on success).  Diagnostics also go to
 * the log.
 *
 * Threads: any thread, e.g. the management thread, while the daemon
 * runs: after engine_run() started the shards and intake threads and
 * before it tears them down (the management thread is stopped first).
 * Concurrent calls are serialised; the calling thread does the load and
 * check itself (file I/O, DKIM keys: never on the delivery path), and
 * the hand-over is lock-free (config.h: struct cfg_mailbox).
 */
int engine_reload(struct daemon *d, char **errors);
/*
 * engine_ctl_main - `coremta ctl ...`: talk to a running coremta's
 * management port.  Returns the exit status: 0 done, 1 the daemon
 * refused or failed the request, 2 it could not be reached, 64 usage.
 */
int engine_ctl_main(int argc, char **argv);

#endif
