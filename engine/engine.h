/*
 * engine - the coremta process: command line, configuration lifecycle
 * and (as they land) intake, spool and the hand-off to the shards.
 *
 * Called from main() on the main thread only.
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
 * engine_run - the daemon in the foreground until SIGTERM or SIGINT;
 * path NULL runs the embedded configuration.  Returns the exit status.
 */
int engine_run(const char *path);

/*
 * engine_ctl_main - `coremta ctl ...`: talk to a running coremta's
 * management port.  Returns the exit status: 0 done, 1 the daemon
 * refused or failed the request, 2 it could not be reached, 64 usage.
 */
int engine_ctl_main(int argc, char **argv);

#endif
