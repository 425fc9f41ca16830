# engine/ - process lifecycle, command line, (later) intake and spool.
LIB_SRCS += \
	engine/default_config.c \
	engine/check.c

MAIN_SRCS += \
	engine/main.c

TEST_SRCS += \
	tests/engine/test_cli.c
