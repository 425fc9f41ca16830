# engine/ - process lifecycle, command line, SMTP intake, spool.
LIB_SRCS += \
	engine/default_config.c \
	engine/check.c \
	engine/spool.c \
	engine/smtp_session.c \
	engine/dsn.c \
	engine/signing.c \
	engine/fbl.c \
	engine/suppress_cmd.c \
	engine/intake.c \
	engine/mgmt.c \
	engine/monitor.c \
	engine/ctl.c \
	engine/daemon.c

MAIN_SRCS += \
	engine/main.c

TEST_SRCS += \
	tests/engine/test_spool.c \
	tests/engine/test_smtp_session.c \
	tests/engine/test_intake.c \
	tests/engine/test_signing.c \
	tests/engine/test_pressure.c \
	tests/engine/test_bodies.c \
	tests/engine/test_recovery.c \
	tests/engine/test_soak.c \
	tests/engine/test_dsn_delivery.c \
	tests/engine/test_cli.c \
	tests/engine/test_dsn.c \
	tests/engine/test_fbl.c \
	tests/engine/test_reload.c \
	tests/engine/test_mgmt.c \
	tests/engine/test_commit.c

FUZZ_TARGETS += fuzz_dsn
FUZZ_SRCS_fuzz_dsn := util/util.c engine/dsn.c

FUZZ_TARGETS += fuzz_spool
FUZZ_SRCS_fuzz_spool := util/util.c util/spoolrec.c engine/spool.c

FUZZ_TARGETS += fuzz_smtp_session
FUZZ_SRCS_fuzz_smtp_session := \
	$(CONFIG_FUZZ_SRCS) \
	engine/smtp_session.c
