# services/ - what both the intake and the shards use, below both: the
# suppression store, the inbound report parser.
LIB_SRCS += \
	services/suppress.c

TEST_SRCS += \
	tests/services/test_suppress.c
