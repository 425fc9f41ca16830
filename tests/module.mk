# tests/ - shared test helpers (tests/lib) linked into the Criterion binary.
TEST_SRCS += \
	tests/lib/testlib.c \
	tests/lib/smtp_peer.c \
	tests/lib/test_smtp_peer.c \
	tests/lib/test_tools.c \
	tests/util/test_tls.c
