/*
 * services/lmdb_env.c - the shared LMDB plumbing (services/lmdb_env.h).
 *
 * Threads: any.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "services/lmdb_env.h"

int lmdb_errno(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_READERS_FULL:
		return -EAGAIN;
	default:
		return rc > 0 && rc < 4096 ? -rc : -EIO;
	}
}

int lmdb_env_open_dir(const char *what, const char *dir, uint64_t map_size,
		      unsigned max_readers, unsigned flags, MDB_env **env,
		      MDB_dbi *dbi, char *err, size_t errlen)
{
	MDB_txn *txn = NULL;
	int rc;

	*env = NULL;
	if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
		rc = -errno;
		snprintf(err, errlen, "%s %s: %s", what, dir, strerror(errno));
		return rc;
	}
	if ((rc = mdb_env_create(env)) ||
	    (rc = mdb_env_set_mapsize(*env, (size_t)map_size)) ||
	    (rc = mdb_env_set_maxreaders(*env, max_readers)) ||
	    (rc = mdb_env_open(*env, dir, flags | MDB_NOTLS, 0640)) ||
	    (rc = mdb_txn_begin(*env, NULL, 0, &txn)) ||
	    (rc = mdb_dbi_open(txn, NULL, 0, dbi)) ||
	    (rc = mdb_txn_commit(txn))) {
		snprintf(err, errlen, "%s %s: %s", what, dir, mdb_strerror(rc));
		if (txn && rc)
			mdb_txn_abort(txn);
		if (*env)
			mdb_env_close(*env);
		*env = NULL;
		return lmdb_errno(rc);
	}
	int dead = 0;
	mdb_reader_check(*env, &dead);
	return 0;
}

int lmdb_read_txn_new(MDB_env *env, MDB_txn **out)
{
	int rc = lmdb_errno(mdb_txn_begin(env, NULL, MDB_RDONLY, out));

	if (!rc)
		mdb_txn_reset(*out);
	return rc;
}
