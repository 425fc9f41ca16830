# util/ - allocation, strings, arena, diagnostics, SPSC rings.
LIB_SRCS += \
	util/util.c \
	util/hash.c \
	util/intern.c \
	util/log.c \
	util/ring.c \
	util/tls.c \
	util/dkim.c \
	util/slots.c \
	util/spoolrec.c \
	util/timer_wheel.c \
	util/uring.c

TEST_SRCS += \
	tests/util/test_hash.c \
	tests/util/test_intern.c \
	tests/util/test_log.c \
	tests/util/test_ring.c \
	tests/util/ring_stress.c \
	tests/util/test_dkim.c \
	tests/util/test_slots.c \
	tests/util/test_timer_wheel.c \
	tests/util/test_uring.c

FUZZ_TARGETS += fuzz_dkim
FUZZ_SRCS_fuzz_dkim := util/util.c util/dkim.c
