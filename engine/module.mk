# engine/ - process lifecycle, command line, SMTP intake, spool.
LIB_SRCS += \
	engine/default_config.c \
	engine/check.c \
	engine/spool.c

MAIN_SRCS += \
	engine/main.c

TEST_SRCS += \
	tests/engine/test_spool.c \
	tests/engine/test_cli.c

FUZZ_TARGETS += fuzz_spool
# the target #includes engine/spool.c to reach its static decoder
FUZZ_SRCS_fuzz_spool := util/util.c
