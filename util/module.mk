# util/ - allocation, strings, arena, diagnostics, SPSC rings.
LIB_SRCS += \
	util/util.c \
	util/log.c \
	util/ring.c \
	util/tls.c \
	util/slots.c \
	util/timer_wheel.c

TEST_SRCS += \
	tests/util/test_log.c \
	tests/util/test_ring.c \
	tests/util/test_slots.c \
	tests/util/test_timer_wheel.c
