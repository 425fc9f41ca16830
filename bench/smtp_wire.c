/*
 * bench/smtp_wire.c - io_uring plumbing shared by send and sink: ring
 * set-up, SMTP line and reply parsing, the end-of-DATA scanner, and one
 * connection's buffered, optionally TLS-wrapped I/O (struct bench_conn).
 *
 * Called only from the thread that owns the ring and the connection.
 * A buffer named in a submitted request belongs to the kernel until its
 * completion: `out` is never appended to while a send is busy, and `in`
 * or `rx` is never moved while a recv is busy.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#include "bench/bench.h"
#include "util/uring.h"

/* TLS records are at most 16 KB; a landing buffer of that size suffices. */
#define RX_CAP (17 * 1024)
/* Stop reading ciphertext while this much is waiting to be decrypted. */
#define TLS_BACKLOG_MAX (256 * 1024)

/* bench_ring_init - see bench.h. */
int bench_ring_init(struct io_uring *ring, unsigned entries)
{
	/* what both sides submit (send also connects, sink also accepts) */
	static const uint8_t ops[] = { IORING_OP_RECV, IORING_OP_SEND };
	struct uring_want w = {
		.entries = entries,
		.flags = URING_ONE_THREAD,
		.ops = ops,
		.nops = sizeof(ops),
	};
	unsigned got;
	char note[160];
	int rc = uring_setup(ring, &w, &got, note, sizeof(note));

	if (rc < 0)
		return rc;
	/* Timed waits without spending an SQE need ext-arg (5.11+). */
	if (!(ring->features & IORING_FEAT_EXT_ARG)) {
		io_uring_queue_exit(ring);
		return -EOPNOTSUPP;
	}
	return 0;
}

struct io_uring_sqe *bench_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	BUG_ON(!sqe);
	return sqe;
}

/* bench_wait - see bench.h; a timeout or a signal is not an error. */
int bench_wait(struct io_uring *ring, uint64_t timeout_ns)
{
	struct __kernel_timespec ts = {
		.tv_sec = (long long)(timeout_ns / 1000000000ULL),
		.tv_nsec = (long long)(timeout_ns % 1000000000ULL),
	};
	struct io_uring_cqe *cqe;
	int rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);

	if (rc == -ETIME || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY)
		return 0;
	return rc < 0 ? rc : 0;
}

size_t bench_line_len(const char *buf, size_t len)
{
	const char *nl = memchr(buf, '\n', len);

	return nl ? (size_t)(nl - buf) + 1 : 0;
}

int bench_reply_parse(const char *line, size_t len, int *code, bool *last)
{
	if (len < 3 || line[0] < '1' || line[0] > '5' || line[1] < '0' ||
	    line[1] > '9' || line[2] < '0' || line[2] > '9')
		return -EPROTO;
	*code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	*last = len == 3 || line[3] != '-';
	return 0;
}

/* States of the end-of-DATA scanner. */
enum { DOT_BOL, DOT_MID, DOT_DOT, DOT_DOT_CR };

void bench_dot_reset(struct bench_dot *d)
{
	d->state = DOT_BOL;
}

/* bench_dot_scan - see bench.h; LF ends a line, with or without CR. */
size_t bench_dot_scan(struct bench_dot *d, const char *p, size_t len, bool *done)
{
	size_t i = 0;

	*done = false;
	while (i < len) {
		if (d->state == DOT_MID) {
			/* Most bytes are mid-line: skip to the next LF fast. */
			const char *nl = memchr(p + i, '\n', len - i);

			if (!nl)
				return len;
			i = (size_t)(nl - p) + 1;
			d->state = DOT_BOL;
			continue;
		}
		char ch = p[i++];

		switch (d->state) {
		case DOT_BOL:
			d->state = ch == '.' ? DOT_DOT : ch == '\n' ? DOT_BOL : DOT_MID;
			break;
		case DOT_DOT:
			if (ch == '\n') {
				*done = true;
				return i;
			}
			d->state = ch == '\r' ? DOT_DOT_CR : DOT_MID;
			break;
		case DOT_DOT_CR:
			if (ch == '\n') {
				*done = true;
				return i;
			}
			d->state = DOT_MID;
			break;
		default:
			BUG("unknown dot state %d", (int)d->state);
		}
	}
	return len;
}

/* bench_conn_init - a fresh connection in slot idx; gen survives reuse. */
void bench_conn_init(struct bench_conn *c, int fd, uint32_t idx, size_t in_cap)
{
	uint32_t gen = c->gen;

	memset(c, 0, sizeof(*c));
	c->gen = gen;
	c->fd = fd;
	c->idx = idx;
	c->in_cap = in_cap;
	c->in = xmalloc(in_cap);
	c->last_io = bench_now_ns();
}

int bench_conn_write(struct bench_conn *c, const char *p, size_t n)
{
	if (c->tls)
		return bench_tls_write(c->tls, p, n);
	sb_add(&c->pend, p, n);
	return 0;
}

void bench_conn_writes(struct bench_conn *c, const char *s)
{
	bench_conn_write(c, s, strlen(s));
}

/* bench_conn_flush - see bench.h. */
void bench_conn_flush(struct io_uring *ring, struct bench_conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->send_busy || c->shut)
		return;
	if (c->out_sent == c->out.len) {
		struct strbuf t;

		if (!c->pend.len)
			return;
		t = c->out;
		c->out = c->pend;
		c->pend = t;
		sb_reset(&c->pend);
		c->out_sent = 0;
	}
	sqe = bench_sqe(ring);
	io_uring_prep_send(sqe, c->fd, c->out.buf + c->out_sent,
			   c->out.len - c->out_sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, bench_ud(BENCH_OP_SEND, c->idx, c->gen));
	c->send_busy = true;
}

/* pull_plain - move decrypted bytes into `in`; 1 if any, or -errno. */
static int pull_plain(struct bench_conn *c)
{
	int got = 0;

	if (!c->tls || !c->tls_ready)
		return 0;
	/* With TLS the socket lands in rx, so `in` may move at any time. */
	if (c->in_off && (c->in_len == c->in_cap || c->in_off == c->in_len)) {
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	while (c->in_len < c->in_cap) {
		int n = bench_tls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len);

		if (n < 0)
			return n;
		if (n == 0)
			break;
		c->in_len += (size_t)n;
		got = 1;
	}
	return got;
}

/* bench_conn_arm_recv - see bench.h. */
void bench_conn_arm_recv(struct io_uring *ring, struct bench_conn *c)
{
	struct io_uring_sqe *sqe;
	char *dst;
	size_t room;

	if (c->recv_busy || c->eof || c->shut)
		return;
	if (c->tls) {
		if (!c->rx) {
			c->rx_cap = RX_CAP;
			c->rx = xmalloc(c->rx_cap);
		}
		dst = c->rx;
		room = c->rx_cap;
		/* Unread plaintext is back-pressure: stop reading the socket. */
		if (c->in_len == c->in_cap && c->in_off == 0)
			return;
	} else {
		if (c->in_off == c->in_len) {
			c->in_off = c->in_len = 0;
		} else if (c->in_off && (c->in_len == c->in_cap || c->in_off > c->in_cap / 2)) {
			memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
			c->in_len -= c->in_off;
			c->in_off = 0;
		}
		dst = c->in + c->in_len;
		room = c->in_cap - c->in_len;
		if (!room)
			return;	/* the owner consumes first; a full line never fits */
	}
	c->rx_dst = dst;
	sqe = bench_sqe(ring);
	io_uring_prep_recv(sqe, c->fd, dst, room, 0);
	io_uring_sqe_set_data64(sqe, bench_ud(BENCH_OP_RECV, c->idx, c->gen));
	c->recv_busy = true;
}

/* bench_conn_on_recv - see bench.h. */
int bench_conn_on_recv(struct io_uring *ring, struct bench_conn *c, int res)
{
	int rc;

	c->recv_busy = false;
	c->last_io = bench_now_ns();
	if (res <= 0) {
		c->eof = true;
		if (res < 0 && !c->err)
			c->err = res;
		return res < 0 ? res : -ENOTCONN;
	}
	c->bytes_in += (uint64_t)res;
	if (!c->tls) {
		c->in_len += (size_t)res;
		return 1;
	}
	/* A recv armed before STARTTLS took effect landed in `in`: rx_dst knows. */
	bench_tls_feed(c->tls, c->rx_dst, (size_t)res);
	if (!c->tls_ready) {
		rc = bench_tls_handshake(c->tls);
		bench_conn_flush(ring, c);
		if (rc <= 0) {
			if (rc < 0)
				c->eof = true;
			return rc;
		}
		c->tls_ready = true;
	}
	rc = pull_plain(c);
	bench_conn_flush(ring, c);
	if (rc < 0)
		c->eof = true;
	return rc;
}

/* bench_conn_on_send - see bench.h. */
int bench_conn_on_send(struct io_uring *ring, struct bench_conn *c, int res)
{
	c->send_busy = false;
	c->last_io = bench_now_ns();
	if (res < 0) {
		c->eof = true;
		if (!c->err)
			c->err = res;
		return res;
	}
	c->bytes_out += (uint64_t)res;
	c->out_sent += (size_t)res;
	if (c->out_sent == c->out.len) {
		sb_reset(&c->out);
		c->out_sent = 0;
	}
	bench_conn_flush(ring, c);
	return 0;
}

/*
 * bench_conn_consume - drop n bytes of input.  The buffer is compacted
 * only in bench_conn_arm_recv(): a recv may be landing at in_len now.
 */
void bench_conn_consume(struct bench_conn *c, size_t n)
{
	BUG_ON(n > c->in_len - c->in_off);
	c->in_off += n;
}

/*
 * bench_conn_refill - for TLS, pull more decrypted input after the owner
 * consumed some: 1 if new input arrived, 0 if none, -errno if dead.
 */
int bench_conn_refill(struct bench_conn *c)
{
	int rc = pull_plain(c);

	if (rc < 0)
		c->eof = true;
	return rc;
}

int bench_conn_start_tls(struct io_uring *ring, struct bench_conn *c, bool server)
{
	int rc;

	c->in_off = c->in_len = 0;
	c->tls = bench_tls_new(server, &c->pend);
	if (!c->tls)
		return -ENOMEM;
	if (server)
		return 0;
	rc = bench_tls_handshake(c->tls);	/* queues the ClientHello */
	bench_conn_flush(ring, c);
	return rc < 0 ? rc : 0;
}

void bench_conn_abort(struct bench_conn *c)
{
	if (!c->shut && c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
	c->shut = true;
	c->eof = true;
}

bool bench_conn_idle(const struct bench_conn *c)
{
	return c->shut && !c->recv_busy && !c->send_busy;
}

void bench_conn_release(struct bench_conn *c)
{
	BUG_ON(c->recv_busy || c->send_busy);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->in);
	c->in = NULL;
	free(c->rx);
	c->rx = NULL;
	sb_free(&c->out);
	sb_free(&c->pend);
	bench_tls_free(c->tls);
	c->tls = NULL;
	c->gen = (c->gen + 1) & 0xffffff;
}
