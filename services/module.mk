# services/ - what both the intake and the shards use, below both: the
# accounting writer, the suppression store, the inbound report parser,
# the sent index that matches reports to what was delivered.
LIB_SRCS += \
	services/acct.c \
	services/lmdb_env.c \
	services/suppress.c \
	services/report.c \
	services/sentidx.c

TEST_SRCS += \
	tests/services/test_acct.c \
	tests/services/test_suppress.c \
	tests/services/test_report.c \
	tests/services/test_sentidx.c

FUZZ_TARGETS += fuzz_report
FUZZ_SRCS_fuzz_report := \
	$(CONFIG_FUZZ_SRCS) \
	services/report.c

# suppress-bench: the store at N entries (insert rate, disk per entry,
# RCPT-time lookup cost); not a test, a measurement: make suppress-bench.
SUPPRESS_BENCH := $(BUILD)/suppress-bench
# (explicit objects: OBJ is defined after the modules are included)
$(SUPPRESS_BENCH): $(BUILD)/obj/util/util.o $(BUILD)/obj/services/lmdb_env.o $(BUILD)/obj/services/suppress.o \
		   $(BUILD)/obj/services/suppress_bench.o
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(OPT) -o $@ $^ $(PKG_LIBS) -lm

.PHONY: suppress-bench
suppress-bench: $(SUPPRESS_BENCH)
	$(Q)d=$$(mktemp -d)/store; $(SUPPRESS_BENCH) $$d $(SUPPRESS_BENCH_N); rm -rf $$(dirname $$d)
SUPPRESS_BENCH_N ?= 10000000
