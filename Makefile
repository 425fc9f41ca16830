# coremta - top-level build (plain GNU make).
#
# Each module lists its own sources, one per line, in its module.mk:
# LIB_SRCS (linked into the daemon and the tests), TEST_SRCS (Criterion
# suites), and module-specific programs.  `make help` lists the targets.

.DEFAULT_GOAL := help
.SUFFIXES:
.DELETE_ON_ERROR:

BUILD   ?= build
CC      ?= gcc
CLANG   ?= clang
V       ?= 0
Q       := $(if $(filter 1,$(V)),,@)

# The user's Debian packages; `make deps` installs the missing ones.
DEB_PKGS := \
	build-essential \
	pkg-config \
	clang \
	libclang-rt-14-dev \
	liburing-dev \
	libwolfssl-dev \
	libhwloc-dev \
	libjemalloc-dev \
	libcriterion-dev \
	libpcre2-dev \
	libc-ares-dev \
	libcrypt-dev \
	python3 \
	openssl \
	swaks \
	postfix \
	dnsmasq-base \
	liblmdb-dev

PKGS      := liburing wolfssl hwloc libpcre2-8 libcares libcrypt lmdb
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	   -Wmissing-prototypes -Wno-unused-parameter
CPPFLAGS_ALL := -D_GNU_SOURCE -I. -include util/poison.h
CFLAGS_ALL   := -std=c17 -g -pthread $(WARN)
OPT     ?= -O2
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer \
	   -fno-sanitize-recover=undefined

VERSION := 0.1.0
CPPFLAGS_ALL += -DCOREMTA_VERSION='"$(VERSION)"'

LIB_SRCS  :=
TEST_SRCS :=
MAIN_SRCS :=
FUZZ_TARGETS :=

include util/module.mk
include config/module.mk
include affinity/module.mk
include services/module.mk
include shards/module.mk
include engine/module.mk
include tests/module.mk
include bench/module.mk

# Release objects (the daemon) and sanitizer objects (the tests).
OBJ       = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
SOBJ      = $(patsubst %.c,$(BUILD)/san/%.o,$(1))

COREMTA   := $(BUILD)/coremta
TESTBIN   := $(BUILD)/coremta-tests
SANBIN    := $(BUILD)/coremta-san

# The writer the spool's kill -9 test runs and kills.
SPOOL_WRITER := $(BUILD)/spool_crash_writer
$(SPOOL_WRITER): $(call SOBJ,util/util.c engine/spool.c tests/engine/spool_crash_writer.c)
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(SAN) -o $@ $^ $(PKG_LIBS) -lm

.PHONY: help
help:
	@echo "coremta $(VERSION) - make targets:"
	@echo "  make deps           install missing Debian packages (apt-get)"
	@echo "  make / make all     build $(COREMTA)"
	@echo "  make run            deps, build, start coremta on the embedded default config"
	@echo "  make test           deps, build with ASan+UBSan, run every test suite"
	@echo "  make fuzz           run each libFuzzer target (FUZZ_SECONDS=$(FUZZ_SECONDS) each)"
	@echo "  make check-headers  compile every header on its own"
	@echo "  make tuning-reference  regenerate tuning.md's directive table"
	@echo "  make bench-deps     install the bench's Debian packages (postfix, gnuplot-nox, ...)"
	@echo "  make bench-tools    build $(BUILD)/coremta-bench (send, sink)"
	@echo "  make bench          bench/run relay: direct, postfix, coremta (BENCH_ARGS=\"--messages 2000 --runs 1\")"
	@echo "  make clean          remove $(BUILD)/"
	@echo "Options: V=1 (show commands), BUILD=dir, FUZZ_SECONDS=n"

.PHONY: deps
deps:
	$(Q)missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

.PHONY: all
all: $(COREMTA)

$(COREMTA): $(call OBJ,$(LIB_SRCS) $(MAIN_SRCS))
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(OPT) -o $@ $^ $(PKG_LIBS) -ljemalloc -lm

$(SANBIN): $(call SOBJ,$(LIB_SRCS) $(MAIN_SRCS))
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(SAN) -o $@ $^ $(PKG_LIBS) -lm

$(TESTBIN): $(call SOBJ,$(LIB_SRCS) $(TEST_SRCS))
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(SAN) -o $@ $^ $(PKG_LIBS) -lcriterion -lm

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(OPT) $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/san/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC san  $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -O1 $(SAN) $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

.PHONY: run
run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(COREMTA)

# The tests find ../shared (the reference configs) beside the checkout, as
# in CI; SHARED_DIR overrides.
SHARED_DIR ?= $(abspath ../shared)
FUZZ_SECONDS ?= 30

.PHONY: test
test: deps
	$(Q)$(MAKE) --no-print-directory $(TESTBIN) $(SANBIN) $(COREMTA) $(SPOOL_WRITER) fuzz-build
	$(Q)cd tests && COREMTA_SHARED=$(SHARED_DIR) COREMTA_BIN=$(abspath $(SANBIN)) \
		COREMTA_SPOOL_WRITER=$(abspath $(SPOOL_WRITER)) \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(abspath $(TESTBIN)) --jobs=2
	$(Q)$(MAKE) --no-print-directory bench-selftest
	$(Q)$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SECONDS)

# libFuzzer targets (clang): each tests/fuzz/fuzz_X.c links the library
# sources it needs, listed in FUZZ_SRCS_X by its module.
FUZZ_FLAGS := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -std=c17 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter

.PHONY: fuzz-build
fuzz-build: $(foreach t,$(FUZZ_TARGETS),$(BUILD)/fuzz/$(t))

$(BUILD)/fuzz/fuzz_spool: engine/spool.c engine/spool.h

.SECONDEXPANSION:
$(BUILD)/fuzz/%: tests/fuzz/%.c $$(FUZZ_SRCS_$$*)
	@mkdir -p $(dir $@)
	@echo "  FUZZ    $@"
	$(Q)$(CLANG) $(CPPFLAGS_ALL) $(FUZZ_CFLAGS) $(FUZZ_FLAGS) $(PKG_CFLAGS) \
		-MMD -MP -MF $@.d -o $@ $< $(FUZZ_SRCS_$*) $(PKG_LIBS) -lm

.PHONY: fuzz
fuzz: fuzz-build
	$(Q)for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/fuzz/corpus-$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
		ASAN_OPTIONS=detect_leaks=1 $(BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) \
			-max_len=4096 -print_final_stats=0 -close_fd_mask=3 \
			$(BUILD)/fuzz/corpus-$$t tests/fuzz/seeds-$$t >$(BUILD)/fuzz/$$t.log 2>&1 \
			|| { tail -n 60 $(BUILD)/fuzz/$$t.log; exit 1; }; \
		grep -E 'Done [0-9]+ runs' $(BUILD)/fuzz/$$t.log || true; \
	done

HEADERS := $(shell find util config affinity services engine shards bench -name '*.h' 2>/dev/null)

.PHONY: check-headers
check-headers:
	$(Q)for h in $(HEADERS); do \
		echo "#include \"$$h\"" | $(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(PKG_CFLAGS) \
			-x c -fsyntax-only - || exit 1; \
	done; echo "check-headers: $(words $(HEADERS)) headers compile on their own"

# tuning.md's directive reference comes from the table in config/directives.c.
.PHONY: tuning-reference
tuning-reference: $(COREMTA)
	$(Q)$(COREMTA) check --reference > $(BUILD)/reference.md
	$(Q)python3 -c 'import sys; \
t = open("tuning.md").read(); r = open(sys.argv[1]).read(); \
a = "<!-- directive-reference:start -->\n"; b = "<!-- directive-reference:end -->"; \
i = t.index(a) + len(a); j = t.index(b); \
open("tuning.md", "w").write(t[:i] + r + t[j:])' $(BUILD)/reference.md
	@echo "tuning.md: directive reference regenerated"

.PHONY: clean
clean:
	rm -rf $(BUILD)
