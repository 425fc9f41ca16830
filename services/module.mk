# services/ - what both the intake and the shards use, below both: the
# suppression store, the inbound report parser.
LIB_SRCS += \
	services/suppress.c \
	services/report.c

TEST_SRCS += \
	tests/services/test_suppress.c \
	tests/services/test_report.c

FUZZ_TARGETS += fuzz_report
FUZZ_SRCS_fuzz_report := \
	util/util.c \
	config/values.c \
	config/syntax.c \
	config/directives.c \
	config/model.c \
	config/lint.c \
	services/report.c
