# coremta - top-level build (plain GNU make).
#
# Each module lists its own sources, one per line, in its module.mk:
# LIB_SRCS (linked into the daemon and the tests), TEST_SRCS (Criterion
# suites), and module-specific programs.  `make help` lists the targets.

# Plain `make` builds the daemon, as in nearly every C project.
.DEFAULT_GOAL := all
.SUFFIXES:
.DELETE_ON_ERROR:

BUILD   ?= build
CC      ?= gcc
CLANG   ?= clang
V       ?= 0
Q       := $(if $(filter 1,$(V)),,@)

# The Debian packages the build and every test need; `make deps` installs
# the missing ones.  apt-get runs with --no-install-recommends, so a tool's
# optional modules are listed here by name: swaks speaks STARTTLS and
# implicit TLS only with Net::SSLeay and IO::Socket::SSL.  Tools the tests
# run: swaks, smtp-source and a private Postfix (postfix), dnsmasq
# (dnsmasq-base), openssl, python3 (standard library only); the `tools`
# suite (tests/lib/test_tools.c) fails naming the package when one is
# missing.  The management plane: libmicrohttpd, jansson, libcurl (coremta
# ctl); its web monitor is tested in headless chromium.
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
	libnet-ssleay-perl \
	libio-socket-ssl-perl \
	postfix \
	dnsmasq-base \
	python3-dkim \
	python3-nacl \
	opendkim-tools \
	util-linux \
	postal \
	liblmdb-dev \
	libmicrohttpd-dev \
	libjansson-dev \
	libcurl4-openssl-dev \
	chromium

PKGS      := liburing wolfssl hwloc libpcre2-8 libcares libcrypt lmdb libmicrohttpd jansson libcurl
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

# The first target: plain `make` builds the daemon.
.PHONY: all
all: $(COREMTA)

# The writer the spool's kill -9 test runs and kills.
SPOOL_WRITER := $(BUILD)/spool_crash_writer
$(SPOOL_WRITER): $(call SOBJ,util/util.c util/hash.c util/spoolrec.c engine/spool.c tests/engine/spool_crash_writer.c)
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(SAN) -o $@ $^ $(PKG_LIBS) -lm

.PHONY: help
help:
	@echo "coremta $(VERSION) - make targets:"
	@echo "  make / make all     build $(COREMTA)"
	@echo "  make deps           install missing Debian packages (apt-get)"
	@echo "  make run            deps, build coremta and coremta-bench, start coremta in the"
	@echo "                      foreground (CONFIG=examples/sink.conf; default: embedded config)"
	@echo "  make check          build and run the Criterion suites only (SUITES='cli/*')"
	@echo "  make test           what CI runs: deps, every Criterion suite under ASan+UBSan,"
	@echo "                      the unit check, the bench self-test and the fuzzers"
	@echo "  make install        install binary, example config, systemd unit; create the"
	@echo "                      coremta user (PREFIX=$(PREFIX) DESTDIR= SYSCONFDIR=$(SYSCONFDIR))"
	@echo "  make check-unit     systemd-analyze verify the unit (skipped without systemd-analyze)"
	@echo "  make check-install  make install into a scratch DESTDIR and check what landed"
	@echo "  make fuzz           run each libFuzzer target (FUZZ_SECONDS=$(FUZZ_SECONDS) each)"
	@echo "  make fuzz-long      every fuzz target for an hour (FUZZ_LONG_SECONDS), corpus kept"
	@echo "  make soak           kill -9 rounds, a disk-full cycle, hostile connections (SOAK_ROUNDS)"
	@echo "  make tsan           ThreadSanitizer: the ring stress run, then the daemon driven by"
	@echo "                      the relay/reload/backoff/mgmt suites"
	@echo "  make suppress-bench suppression store: insert rate, lookups, bytes per entry"
	@echo "  make check-headers  compile every header on its own"
	@echo "  make check-layers   fail on an #include that points up a layer"
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

# run - README's quick start also needs the sink: build both.
CONFIG ?=
.PHONY: run
run: deps
	$(Q)$(MAKE) --no-print-directory all $(BENCH_BIN)
	$(COREMTA)$(if $(CONFIG), -c $(CONFIG))

# The tests find ../shared (extra reference configs) beside the checkout
# when it is there; SHARED_DIR overrides.
SHARED_DIR ?= $(abspath ../shared)
FUZZ_SECONDS ?= 30
# make test runs each fuzzer briefly, as a smoke test that keeps make test
# under 15 minutes on 2 cores; make fuzz (FUZZ_SECONDS) is the longer run.
TEST_FUZZ_SECONDS ?= 15

# The environment the Criterion binary runs in (from tests/).
TEST_ENV = COREMTA_SHARED=$(SHARED_DIR) COREMTA_BIN=$(abspath $(SANBIN)) \
	COREMTA_RELEASE_BIN=$(abspath $(COREMTA)) \
	COREMTA_SPOOL_WRITER=$(abspath $(SPOOL_WRITER)) \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# check - the fast inner loop: no apt-get, no fuzzing, no bench.
# SUITES narrows it (a Criterion --filter glob, e.g. SUITES='cli/*').
SUITES ?=
.PHONY: check
check: check-layers
	$(Q)$(MAKE) --no-print-directory $(TESTBIN) $(SANBIN) $(SPOOL_WRITER) $(COREMTA)
	$(Q)cd tests && $(TEST_ENV) $(abspath $(TESTBIN)) --jobs=2 \
		$(if $(SUITES),--filter '$(SUITES)')

# tsan - ThreadSanitizer, twice over.  First the ring stress run (two
# threads through an SPSC ring with the sleeping-consumer wake-ups) as a
# plain program: Criterion cannot start under TSan (its inheritable
# arena, Snaipe/Criterion#274), so the Criterion suites stay ASan.  Then
# the daemon built with TSan (its threads: intake, shards, accounting
# writer, the rings between them, the hand-off of messages to the shards,
# the configuration hand-over) driven by the suites that relay, reload
# and back off through it.  Not in make test: a second full build.
TSAN       := -fsanitize=thread -fno-omit-frame-pointer -g
TSOBJ      = $(patsubst %.c,$(BUILD)/tsan/%.o,$(1))
TSANBIN    := $(BUILD)/coremta-tsan
TSAN_RING  := $(BUILD)/tsan_ring
TSAN_SUITES ?= @(delivery|intake|reload|backoff|mgmt)/*
TSAN_ENV   := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

$(TSANBIN): $(call TSOBJ,$(LIB_SRCS) $(MAIN_SRCS))
	@echo "  LD tsan $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(TSAN) -o $@ $^ $(PKG_LIBS) -lm

$(TSAN_RING): $(call TSOBJ,util/util.c util/ring.c tests/util/ring_stress.c tests/util/tsan_ring.c)
	@echo "  LD tsan $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(TSAN) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tsan/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC tsan $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -O1 $(TSAN) $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

.PHONY: tsan
tsan:
	$(Q)$(MAKE) --no-print-directory $(TESTBIN) $(TSANBIN) $(TSAN_RING) $(SPOOL_WRITER)
	$(Q)$(TSAN_ENV) $(TSAN_RING)
	$(Q)cd tests && $(TEST_ENV) COREMTA_BIN=$(abspath $(TSANBIN)) $(TSAN_ENV) \
		$(abspath $(TESTBIN)) --jobs=2 --filter '$(TSAN_SUITES)'

.PHONY: test
test: deps
	$(Q)$(MAKE) --no-print-directory check-layers
	$(Q)$(MAKE) --no-print-directory $(TESTBIN) $(SANBIN) $(COREMTA) $(SPOOL_WRITER) fuzz-build
	$(Q)cd tests && $(TEST_ENV) $(abspath $(TESTBIN)) --jobs=2
	$(Q)$(MAKE) --no-print-directory check-unit check-install
	$(Q)$(MAKE) --no-print-directory bench-selftest
	$(Q)$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

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

# Layers point down: an include of a layer above fails, with file:line.
.PHONY: check-layers
check-layers:
	$(Q)tests/check_layers.sh

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

# ---- install ---------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=] [SYSCONFDIR=/etc]: the
# daemon, an example configuration (the live one only when none exists:
# an operator's file is never overwritten), the systemd unit, and, on a
# real install (no DESTDIR), the coremta user that process-user names
# and the spool and log directories it must be able to write.
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SPOOLDIR   ?= /var/spool/coremta
LOGDIR     ?= /var/log/coremta
COREMTA_USER ?= coremta

UNIT_SED = -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

$(BUILD)/coremta.service: examples/coremta.service.in Makefile
	@mkdir -p $(dir $@)
	$(Q)sed $(UNIT_SED) $< > $@

.PHONY: install
install: $(COREMTA) $(BUILD)/coremta.service
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/coremta $(DESTDIR)$(UNITDIR)
	install -m 0755 $(COREMTA) $(DESTDIR)$(SBINDIR)/coremta
	install -m 0644 examples/coremta.conf $(DESTDIR)$(SYSCONFDIR)/coremta/config.example
	$(Q)if [ -e $(DESTDIR)$(SYSCONFDIR)/coremta/config ]; then \
		echo "install: keeping $(DESTDIR)$(SYSCONFDIR)/coremta/config (the example is config.example)"; \
	else \
		echo "install -m 0644 examples/coremta.conf $(DESTDIR)$(SYSCONFDIR)/coremta/config"; \
		install -m 0644 examples/coremta.conf $(DESTDIR)$(SYSCONFDIR)/coremta/config; \
	fi
	install -m 0644 $(BUILD)/coremta.service $(DESTDIR)$(UNITDIR)/coremta.service
	install -d -m 0750 $(DESTDIR)$(SPOOLDIR) $(DESTDIR)$(LOGDIR)
	$(Q)if [ -n "$(DESTDIR)" ]; then \
		echo "install: DESTDIR set: create the system user $(COREMTA_USER) and chown $(SPOOLDIR) $(LOGDIR) to it at package install"; \
	else \
		getent passwd $(COREMTA_USER) >/dev/null || { \
			echo "useradd --system --user-group --home-dir $(SPOOLDIR) --shell /usr/sbin/nologin $(COREMTA_USER)"; \
			useradd --system --user-group --home-dir $(SPOOLDIR) --no-create-home \
				--shell /usr/sbin/nologin --comment "coremta MTA" $(COREMTA_USER); \
		} && \
		echo "chown $(COREMTA_USER): $(SPOOLDIR) $(LOGDIR)" && \
		chown $(COREMTA_USER): $(SPOOLDIR) $(LOGDIR) && \
		{ ! command -v systemctl >/dev/null || systemctl daemon-reload 2>/dev/null || true; } && \
		echo "install: done; start it with: systemctl enable --now coremta"; \
	fi

# check-install - make install into a scratch DESTDIR: every file lands,
# the unit starts the installed binary on the installed config, and that
# config loads without errors or warnings.
INSTALL_CHECK := $(abspath $(BUILD))/destdir
.PHONY: check-install
check-install: $(COREMTA) $(BUILD)/coremta.service
	$(Q)rm -rf $(INSTALL_CHECK)
	$(Q)$(MAKE) --no-print-directory install DESTDIR=$(INSTALL_CHECK) >/dev/null
	$(Q)for f in $(SBINDIR)/coremta $(SYSCONFDIR)/coremta/config \
		$(SYSCONFDIR)/coremta/config.example $(UNITDIR)/coremta.service; do \
		test -s $(INSTALL_CHECK)$$f || { echo "check-install: $$f not installed"; exit 1; }; \
	done
	$(Q)grep -qx 'ExecStart=$(SBINDIR)/coremta -c $(SYSCONFDIR)/coremta/config' \
		$(INSTALL_CHECK)$(UNITDIR)/coremta.service || \
		{ echo "check-install: the unit does not start $(SBINDIR)/coremta"; exit 1; }
	$(Q)$(INSTALL_CHECK)$(SBINDIR)/coremta check -c $(INSTALL_CHECK)$(SYSCONFDIR)/coremta/config \
		| grep -q ': 0 errors, 0 warnings' || \
		{ echo "check-install: the installed config does not load clean"; exit 1; }
	$(Q)rm -rf $(INSTALL_CHECK)
	@echo "check-install: binary, config, unit in place; the config loads clean"

# check-unit - the unit as installed, through systemd's own checker.  Its
# ExecStart names this build's binary so verify can look at a real file.
# verify exits 0 on a directive it ignores: any output is a failure.
.PHONY: check-unit
check-unit: $(COREMTA)
	$(Q)if ! command -v systemd-analyze >/dev/null; then \
		echo "check-unit: skipped: systemd-analyze is not installed (package systemd)"; \
	else \
		mkdir -p $(BUILD)/unit && \
		sed -e 's|@SBINDIR@|$(abspath $(BUILD))|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
			examples/coremta.service.in > $(BUILD)/unit/coremta.service && \
		out=$$(systemd-analyze verify $(BUILD)/unit/coremta.service 2>&1); rc=$$?; \
		if [ $$rc != 0 ] || [ -n "$$out" ]; then \
			echo "$$out"; echo "check-unit: coremta.service has problems (above)"; exit 1; \
		fi; \
		echo "check-unit: systemd-analyze verify: coremta.service is valid"; \
	fi
# ---- long runs, not in `make test` (issue 18); one summary line each ----

# fuzz-long: every fuzz target FUZZ_LONG_SECONDS each (an hour by default),
# the corpus kept in the repo under tests/fuzz/corpus-TARGET.
FUZZ_LONG_SECONDS ?= 3600

.PHONY: fuzz-long
fuzz-long: fuzz-build
	$(Q)tests/fuzz/long.sh $(BUILD)/fuzz $(FUZZ_LONG_SECONDS) $(FUZZ_TARGETS)

# soak: SOAK_ROUNDS rounds of kill -9 under load, the full-disk cycle, and
# 2,000 hostile connections while the relay source keeps sending.
SOAK_ROUNDS ?= 20

.PHONY: soak
soak: deps
	$(Q)$(MAKE) --no-print-directory $(TESTBIN) $(SANBIN)
	$(Q)cd tests && COREMTA_SOAK=1 COREMTA_SOAK_ROUNDS=$(SOAK_ROUNDS) \
		COREMTA_SHARED=$(SHARED_DIR) COREMTA_BIN=$(abspath $(SANBIN)) \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(abspath $(TESTBIN)) --jobs=1 \
		--filter '@(soak/*|intake/kill9*|pressure/full_spool*)' \
		>$(abspath $(BUILD))/soak.log 2>&1; rc=$$?; \
	hostile=$$(sed -n 's/^soak: hostile: //p' $(abspath $(BUILD))/soak.log | tail -n 1); \
	synth=$$(sed -n 's/.*Synthesis: //p' $(abspath $(BUILD))/soak.log | tail -n 1); \
	[ $$rc -eq 0 ] || grep -v '^\[SKIP\]' $(abspath $(BUILD))/soak.log | tail -n 40; \
	echo "soak: kill -9 x $(SOAK_ROUNDS) rounds, disk-full cycle, hostile: $${hostile:-not run}: $${synth:-no result} (log: $(BUILD)/soak.log)"; \
	exit $$rc
