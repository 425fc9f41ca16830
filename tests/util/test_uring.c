/*
 * tests/util/test_uring.c - ring set-up: the flags asked for, the
 * fallback a refusal causes and what it says, the opcode probe; the
 * provided receive buffers.
 *
 * A combination every kernel refuses (DEFER_TASKRUN without
 * SINGLE_ISSUER) stands in for an old kernel, so the fallback path runs
 * here for real.  Without io_uring at all the suite skips.
 */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <liburing.h>

#include "util/uring.h"

static void need_uring(void)
{
	struct io_uring r;

	if (io_uring_queue_init(4, &r, 0) < 0)
		cr_skip_test("no io_uring here");
	io_uring_queue_exit(&r);
}

Test(uring, as_asked_says_nothing)
{
	static const uint8_t ops[] = { IORING_OP_READ, IORING_OP_SEND, IORING_OP_TIMEOUT };
	struct uring_want w = { .entries = 8, .flags = IORING_SETUP_SINGLE_ISSUER,
				.ops = ops, .nops = 3 };
	struct io_uring r;
	unsigned got = 0;
	char note[160] = "stale";

	need_uring();
	int rc = uring_setup(&r, &w, &got, note, sizeof(note));
	if (rc == 0 && !(got & IORING_SETUP_SINGLE_ISSUER))
		cr_skip_test("kernel before 6.0: %s", note);
	cr_assert_eq(rc, 0, "%s", note);
	cr_expect_eq(got, IORING_SETUP_SINGLE_ISSUER);
	cr_expect_str_empty(note);
	io_uring_queue_exit(&r);
}

Test(uring, refused_flag_is_dropped_and_named)
{
	/* DEFER_TASKRUN needs SINGLE_ISSUER: every kernel refuses this */
	struct uring_want w = { .entries = 8,
				.flags = IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN };
	struct io_uring r;
	unsigned got = 0;
	char note[160];

	need_uring();
	cr_assert_eq(uring_setup(&r, &w, &got, note, sizeof(note)), 0, "%s", note);
	cr_expect_eq(got & IORING_SETUP_DEFER_TASKRUN, 0);
	cr_expect_str_eq(note, "without DEFER_TASKRUN");
	/* the ring works: a NOP comes back */
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r);
	cr_assert_not_null(sqe);
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data64(sqe, 7);
	cr_assert_eq(io_uring_submit(&r), 1);
	struct io_uring_cqe *cqe;
	cr_assert_eq(io_uring_wait_cqe(&r, &cqe), 0);
	cr_expect_eq(cqe->user_data, 7);
	io_uring_cqe_seen(&r, cqe);
	io_uring_queue_exit(&r);
}

Test(uring, unknown_flag_fails_with_reason)
{
	struct uring_want w = { .entries = 8, .flags = 1u << 31 };
	struct io_uring r;
	unsigned got = 0;
	char note[160];

	need_uring();
	cr_expect_eq(uring_setup(&r, &w, &got, note, sizeof(note)), -EINVAL);
	cr_expect(strstr(note, "io_uring_queue_init") != NULL, "%s", note);
}

Test(uring, missing_opcode_fails_with_its_name)
{
	/* 250: far past any opcode a kernel has, so the probe says no */
	static const uint8_t ops[] = { IORING_OP_READ, 250 };
	struct uring_want w = { .entries = 8, .ops = ops, .nops = 2 };
	struct io_uring r;
	unsigned got = 0;
	char note[160];

	need_uring();
	cr_expect_eq(uring_setup(&r, &w, &got, note, sizeof(note)), -EOPNOTSUPP);
	cr_expect_str_eq(note, "kernel lacks opcode 250");
}

Test(uring, op_names)
{
	char buf[24];

	cr_expect_str_eq(uring_op_name(IORING_OP_MSG_RING, buf, sizeof(buf)), "IORING_OP_MSG_RING");
	cr_expect_str_eq(uring_op_name(250, buf, sizeof(buf)), "opcode 250");
}

/* recv_on - arm a buffer-selecting receive on fd, tagged with tag */
static void recv_on(struct io_uring *r, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(r);

	io_uring_prep_recv(sqe, fd, NULL, 64, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 7;
	io_uring_sqe_set_data64(sqe, tag);
}

/*
 * Provided buffers (the shards' and the intake's receives): a receive
 * takes one only when data comes; with none left it fails with ENOBUFS
 * and, armed again once one is given back, gets its data, nothing lost.
 */
Test(uring, provided_buffers_run_out_and_come_back)
{
	struct io_uring r;
	struct uring_bufs b = { .count = 2, .size = 64, .group = 7 };
	int sp[3][2];
	char err[160];
	int nobufs = 0, got[3] = { 0 };
	unsigned held[2], nheld = 0;
	char seen[3][16] = { { 0 } };

	need_uring();
	cr_assert_eq(io_uring_queue_init(16, &r, 0), 0);
	cr_assert_eq(uring_bufs_register(&r, &b, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]), 0);
		recv_on(&r, sp[i][0], (uint64_t)i);
	}
	io_uring_submit(&r);
	for (int i = 0; i < 3; i++) {
		char msg[16];
		snprintf(msg, sizeof(msg), "msg%d", i);
		cr_assert_eq(write(sp[i][1], msg, 4), 4);
	}
	/* three receives, two buffers: one of them must wait for a buffer */
	for (int done = 0; done < 3;) {
		struct io_uring_cqe *cqe;
		cr_assert_eq(io_uring_wait_cqe(&r, &cqe), 0);
		int i = (int)io_uring_cqe_get_data64(cqe);
		if (cqe->res == -ENOBUFS) {
			nobufs++;
			cr_assert_not(cqe->flags & IORING_CQE_F_BUFFER);
			io_uring_cqe_seen(&r, cqe);
			while (nheld)
				uring_bufs_recycle(&b, held[--nheld]);
			recv_on(&r, sp[i][0], (uint64_t)i);
			io_uring_submit(&r);
			continue;
		}
		cr_assert_eq(cqe->res, 4, "receive %d: %d", i, cqe->res);
		cr_assert(cqe->flags & IORING_CQE_F_BUFFER);
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		cr_assert_lt(bid, 2);
		memcpy(seen[i], uring_bufs_data(&b, bid), 4);
		got[i]++;
		io_uring_cqe_seen(&r, cqe);
		/* kept until the third one failed: then given back */
		if (nobufs)
			uring_bufs_recycle(&b, bid);
		else if (nheld < 2)
			held[nheld++] = bid;
		done++;
	}
	cr_expect_geq(nobufs, 1, "two buffers served three receives at once");
	for (int i = 0; i < 3; i++) {
		char msg[16];
		snprintf(msg, sizeof(msg), "msg%d", i);
		cr_expect_eq(got[i], 1);
		cr_expect_str_eq(seen[i], msg);
		close(sp[i][0]);
		close(sp[i][1]);
	}
	io_uring_queue_exit(&r);
	uring_bufs_free(&b);
}

/*
 * A multishot receive (the intake's and the shards'): one completion per
 * arrival, each with IORING_CQE_F_MORE while it stays armed; with no
 * buffer left it ends (ENOBUFS, no F_MORE), and armed again once one is
 * given back it gets what waited, in order.  The drivers re-arm only on
 * a completion without F_MORE: this is what they rely on.
 */
Test(uring, multishot_receive_ends_without_buffers_and_resumes)
{
	struct io_uring r;
	struct uring_bufs b = { .count = 2, .size = 64, .group = 7 };
	int sp[2];
	char err[160], seen[64] = "";
	unsigned held[2], nheld = 0;
	int ended = 0;

	need_uring();
	cr_assert_eq(io_uring_queue_init(16, &r, 0), 0);
	cr_assert_eq(uring_bufs_register(&r, &b, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r);
	io_uring_prep_recv_multishot(sqe, sp[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 7;
	io_uring_submit(&r);
	for (int i = 0; i < 3; i++) {
		char msg[4] = { 'm', (char)('0' + i), ';', '\0' };
		cr_assert_eq(write(sp[1], msg, 3), 3);
		/* one arrival at a time: each is its own completion */
		struct io_uring_cqe *cqe;
		cr_assert_eq(io_uring_wait_cqe(&r, &cqe), 0);
		if (cqe->res == -ENOBUFS) {
			cr_assert_not(cqe->flags & IORING_CQE_F_MORE, "ENOBUFS left it armed");
			ended++;
			io_uring_cqe_seen(&r, cqe);
			while (nheld)
				uring_bufs_recycle(&b, held[--nheld]);
			sqe = io_uring_get_sqe(&r);
			io_uring_prep_recv_multishot(sqe, sp[0], NULL, 0, 0);
			sqe->flags |= IOSQE_BUFFER_SELECT;
			sqe->buf_group = 7;
			io_uring_submit(&r);
			cr_assert_eq(io_uring_wait_cqe(&r, &cqe), 0);
		}
		cr_assert_eq(cqe->res, 3, "arrival %d: %d", i, cqe->res);
		cr_assert(cqe->flags & IORING_CQE_F_MORE, "arrival %d ended the receive", i);
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		strncat(seen, uring_bufs_data(&b, bid), 3);
		held[nheld++] = bid;	/* kept: the third arrival finds none */
		io_uring_cqe_seen(&r, cqe);
	}
	cr_expect_eq(ended, 1, "two buffers, three arrivals held: one ENOBUFS");
	cr_expect_str_eq(seen, "m0;m1;m2;");
	/* EOF ends it for good: no F_MORE */
	while (nheld)
		uring_bufs_recycle(&b, held[--nheld]);
	close(sp[1]);
	struct io_uring_cqe *cqe;
	cr_assert_eq(io_uring_wait_cqe(&r, &cqe), 0);
	cr_expect_eq(cqe->res, 0);
	cr_expect_not(cqe->flags & IORING_CQE_F_MORE);
	io_uring_cqe_seen(&r, cqe);
	close(sp[0]);
	io_uring_queue_exit(&r);
	uring_bufs_free(&b);
}
