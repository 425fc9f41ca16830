/*
 * util/uring.h - one way to set up an io_uring ring: the set-up flags a
 * thread wants, dropped one at a time where the kernel refuses them, and a
 * probe of the opcodes it needs.
 *
 * The caller learns what it got (the flags in force) and a short text
 * saying what fell back, to log once at start; a missing opcode is an
 * error, never a silent degradation.  The ring belongs to the calling
 * thread (IORING_SETUP_SINGLE_ISSUER binds it to its creator); any thread
 * may set up its own.  The caller frees the ring with io_uring_queue_exit.
 *
 * Also a ring of provided receive buffers (struct uring_bufs): receives
 * armed with IOSQE_BUFFER_SELECT take a buffer only when data arrives, so
 * a thousand idle connections cost no buffer each.  Same thread as the
 * ring it is registered with.
 */
#ifndef COREMTA_UTIL_URING_H
#define COREMTA_UTIL_URING_H

#include <stddef.h>
#include <stdint.h>

struct io_uring;

/*
 * The set-up flags of a ring one thread submits to and reaps from: the
 * kernel may skip its locking.  DEFER_TASKRUN was measured (bench/run
 * relay, A/B) and gave no gain here.
 */
#define URING_ONE_THREAD (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN)

struct uring_want {
	unsigned entries;
	/*
	 * IORING_SETUP_* wanted.  Refused ones are dropped newest first:
	 * DEFER_TASKRUN (6.1), SINGLE_ISSUER (6.0), TASKRUN_FLAG, then
	 * COOP_TASKRUN (5.19); any other flag refused is an error.
	 */
	unsigned flags;
	const uint8_t *ops;		/* IORING_OP_* the caller submits */
	size_t nops;
};

/*
 * uring_setup - set up <ring> as <want> asks.  Returns 0 or -errno.
 * *got: the set-up flags in force.  note: "" when everything was as
 * asked, else what was dropped ("without DEFER_TASKRUN"); on error, why
 * ("kernel lacks IORING_OP_MSG_RING").  The ring is left unset on error.
 */
int uring_setup(struct io_uring *ring, const struct uring_want *want,
		unsigned *got, char *note, size_t notelen);

/*
 * Provided receive buffers: <count> (a power of two, at most 32768) of
 * <size> bytes each, buffer group <group>.  Fill in those three, then
 * uring_bufs_register() on the ring; the memory is allocated once and
 * outlives uring_bufs_unmap() (a thread that re-creates its ring registers
 * it again).  A completion with IORING_CQE_F_BUFFER names buffer
 * cqe->flags >> IORING_CQE_BUFFER_SHIFT: read it at uring_bufs_data(),
 * then give it back with uring_bufs_recycle().  A receive that found none
 * completes with -ENOBUFS and may simply be armed again.
 */
struct uring_bufs {
	unsigned count, size;
	unsigned short group;
	struct io_uring_buf_ring *br;	/* shared with the kernel */
	size_t br_bytes;
	char *mem;
};

/* uring_bufs_register - 0, or -errno with err saying why. */
int uring_bufs_register(struct io_uring *ring, struct uring_bufs *b, char *err,
			size_t errlen);
void uring_bufs_recycle(struct uring_bufs *b, unsigned bid);
/* uring_bufs_unmap - after the ring it was registered with has gone */
void uring_bufs_unmap(struct uring_bufs *b);
/* uring_bufs_free - unmap and free the memory too */
void uring_bufs_free(struct uring_bufs *b);

static inline const char *uring_bufs_data(const struct uring_bufs *b, unsigned bid)
{
	return b->mem + (size_t)bid * b->size;
}

/* uring_op_name - "IORING_OP_MSG_RING" for its value; "opcode N" if unknown. */
const char *uring_op_name(uint8_t op, char *buf, size_t len);

#endif
