/*
 * util/uring.c - io_uring set-up with step-by-step fallback and an opcode
 * probe (see uring.h).  Any thread, for the ring it will own.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <liburing.h>

#include "util/uring.h"
#include "util/util.h"

/* The flags that may go, newest kernel first: the likeliest refusals. */
static const struct {
	unsigned flag;
	const char *name;
} droppable[] = {
	{ IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN" },
	{ IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER" },
	{ IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG" },
	{ IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN" },
};

static const char *const op_names[] = {
	[IORING_OP_NOP] = "IORING_OP_NOP",
	[IORING_OP_READV] = "IORING_OP_READV",
	[IORING_OP_WRITEV] = "IORING_OP_WRITEV",
	[IORING_OP_FSYNC] = "IORING_OP_FSYNC",
	[IORING_OP_POLL_ADD] = "IORING_OP_POLL_ADD",
	[IORING_OP_POLL_REMOVE] = "IORING_OP_POLL_REMOVE",
	[IORING_OP_SENDMSG] = "IORING_OP_SENDMSG",
	[IORING_OP_RECVMSG] = "IORING_OP_RECVMSG",
	[IORING_OP_TIMEOUT] = "IORING_OP_TIMEOUT",
	[IORING_OP_ACCEPT] = "IORING_OP_ACCEPT",
	[IORING_OP_ASYNC_CANCEL] = "IORING_OP_ASYNC_CANCEL",
	[IORING_OP_LINK_TIMEOUT] = "IORING_OP_LINK_TIMEOUT",
	[IORING_OP_CONNECT] = "IORING_OP_CONNECT",
	[IORING_OP_CLOSE] = "IORING_OP_CLOSE",
	[IORING_OP_READ] = "IORING_OP_READ",
	[IORING_OP_WRITE] = "IORING_OP_WRITE",
	[IORING_OP_SEND] = "IORING_OP_SEND",
	[IORING_OP_RECV] = "IORING_OP_RECV",
	[IORING_OP_PROVIDE_BUFFERS] = "IORING_OP_PROVIDE_BUFFERS",
	[IORING_OP_MSG_RING] = "IORING_OP_MSG_RING",
	[IORING_OP_SEND_ZC] = "IORING_OP_SEND_ZC",
};

const char *uring_op_name(uint8_t op, char *buf, size_t len)
{
	if (op < ARRAY_SIZE(op_names) && op_names[op])
		return op_names[op];
	snprintf(buf, len, "opcode %u", (unsigned)op);
	return buf;
}

/* probe_ops - 0 if the ring supports every wanted opcode, else -EOPNOTSUPP. */
static int probe_ops(struct io_uring *ring, const struct uring_want *want, char *note,
		     size_t notelen)
{
	if (!want->nops)
		return 0;
	struct io_uring_probe *p = io_uring_get_probe_ring(ring);
	if (!p) {
		snprintf(note, notelen, "kernel cannot list its io_uring opcodes (5.6+ needed)");
		return -EOPNOTSUPP;
	}
	int rc = 0;
	for (size_t i = 0; i < want->nops && rc == 0; i++) {
		if (io_uring_opcode_supported(p, want->ops[i]))
			continue;
		char buf[24];
		snprintf(note, notelen, "kernel lacks %s",
			 uring_op_name(want->ops[i], buf, sizeof(buf)));
		rc = -EOPNOTSUPP;
	}
	io_uring_free_probe(p);
	return rc;
}

int uring_setup(struct io_uring *ring, const struct uring_want *want,
		unsigned *got, char *note, size_t notelen)
{
	unsigned flags = want->flags;
	size_t next = 0;
	int rc;

	note[0] = '\0';
	for (;;) {
		struct io_uring_params up = { .flags = flags };
		rc = io_uring_queue_init_params(want->entries, ring, &up);
		if (rc != -EINVAL)
			break;
		while (next < ARRAY_SIZE(droppable) && !(flags & droppable[next].flag))
			next++;
		if (next == ARRAY_SIZE(droppable))
			break;
		flags &= ~droppable[next].flag;
		size_t used = strlen(note);
		snprintf(note + used, notelen - used, "%s%s", used ? "," : "without ",
			 droppable[next].name);
	}
	if (rc < 0) {
		snprintf(note, notelen, "io_uring_queue_init (flags %#x): %s", flags,
			 strerror(-rc));
		return rc;
	}
	char why[128];
	rc = probe_ops(ring, want, why, sizeof(why));
	if (rc < 0) {
		io_uring_queue_exit(ring);
		snprintf(note, notelen, "%s", why);
		return rc;
	}
	*got = flags;
	return 0;
}

int uring_bufs_register(struct io_uring *ring, struct uring_bufs *b, char *err,
			size_t errlen)
{
	struct io_uring_buf_reg reg = { 0 };
	unsigned mask = b->count - 1;

	BUG_ON(!b->count || (b->count & mask) || b->count > 32768 || !b->size);
	b->br_bytes = b->count * sizeof(struct io_uring_buf);
	b->br = mmap(NULL, b->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
		     -1, 0);
	if (b->br == MAP_FAILED) {
		b->br = NULL;
		snprintf(err, errlen, "buffer ring: %s", strerror(errno));
		return -errno;
	}
	if (!b->mem)
		b->mem = xmalloc((size_t)b->count * b->size);
	reg.ring_addr = (uint64_t)(uintptr_t)b->br;
	reg.ring_entries = b->count;
	reg.bgid = b->group;
	int rc = io_uring_register_buf_ring(ring, &reg, 0);
	if (rc < 0) {
		snprintf(err, errlen, "io_uring_register_buf_ring: %s (kernel 5.19+ needed)",
			 strerror(-rc));
		uring_bufs_unmap(b);
		return rc;
	}
	io_uring_buf_ring_init(b->br);
	for (unsigned i = 0; i < b->count; i++)
		io_uring_buf_ring_add(b->br, b->mem + (size_t)i * b->size, b->size,
				      (unsigned short)i, (int)mask, (int)i);
	io_uring_buf_ring_advance(b->br, (int)b->count);
	return 0;
}

void uring_bufs_recycle(struct uring_bufs *b, unsigned bid)
{
	io_uring_buf_ring_add(b->br, b->mem + (size_t)bid * b->size, b->size,
			      (unsigned short)bid, (int)(b->count - 1), 0);
	io_uring_buf_ring_advance(b->br, 1);
}

void uring_bufs_unmap(struct uring_bufs *b)
{
	if (b->br)
		munmap(b->br, b->br_bytes);
	b->br = NULL;
}

void uring_bufs_free(struct uring_bufs *b)
{
	uring_bufs_unmap(b);
	free(b->mem);
	b->mem = NULL;
}
