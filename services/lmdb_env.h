/*
 * lmdb_env - the LMDB plumbing the suppression store and the sent index
 * share: opening an environment in a directory, LMDB's codes as errno,
 * and a reader's reusable read transaction.
 *
 * Threads: any; each call works on what the caller owns.
 */
#ifndef COREMTA_SERVICES_LMDB_ENV_H
#define COREMTA_SERVICES_LMDB_ENV_H

#include <lmdb.h>
#include <stddef.h>
#include <stdint.h>

/* lmdb_errno - 0, or LMDB's code as the nearest -errno */
int lmdb_errno(int rc);

/*
 * lmdb_env_open_dir - dir (created 0750) as an environment of map_size
 * bytes and max_readers reader slots, opened with flags (MDB_NOTLS is
 * added: readers reset and renew one transaction), its unnamed database
 * in *dbi; reader slots of processes killed -9 are freed.  0, or -errno
 * with "what dir: reason" in err.
 */
int lmdb_env_open_dir(const char *what, const char *dir, uint64_t map_size,
		      unsigned max_readers, unsigned flags, MDB_env **env,
		      MDB_dbi *dbi, char *err, size_t errlen);

/* lmdb_read_txn_new - a read transaction, begun and reset, for a reader
 * to renew per lookup.  0 or -errno. */
int lmdb_read_txn_new(MDB_env *env, MDB_txn **out);

#endif
