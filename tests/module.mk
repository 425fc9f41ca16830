# tests/ - shared test helpers (tests/lib) linked into the Criterion binary.
TEST_SRCS += \
	tests/lib/testlib.c
