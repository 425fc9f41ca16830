# bench/ - the throughput harness: coremta-bench (send, sink), the peer
# comparison (bench/run) and its self-test.  Included by the top Makefile,
# which defines BUILD, CC, Q, CPPFLAGS_ALL, CFLAGS_ALL and OPT.

BENCH_SRCS := \
	bench/main.c \
	bench/send.c \
	bench/sink.c \
	bench/common.c \
	bench/smtp_wire.c \
	bench/tls.c \
	bench/dkim.c

BENCH_BIN  := $(BUILD)/coremta-bench
BENCH_PKGS := liburing wolfssl

# Debian packages the harness needs beyond the build's own: the Postfix
# peer (and its smtp-source/smtp-sink), OpenDKIM (the dkim scenario's milter), gnuplot for the charts, lscpu and
# hwloc for the host facts, openssl for the STARTTLS test certificate, postal
# (postal and bhm, the postal scenario's sender and receiver).
BENCH_DEB_PKGS := \
	postfix \
	opendkim \
	postal \
	gnuplot-nox \
	python3 \
	util-linux \
	hwloc \
	openssl \
	liburing-dev \
	libwolfssl-dev \
	pkg-config

# Bench objects live apart from the daemon's so their flags never mix.
BENCH_OBJS := $(patsubst %.c,$(BUILD)/bench-obj/%.o,$(BENCH_SRCS))

$(BUILD)/bench-obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(OPT) \
		$(shell pkg-config --cflags $(BENCH_PKGS)) -MMD -MP -c -o $@ $<

$(BENCH_BIN): $(BENCH_OBJS) $(BUILD)/bench-obj/util/util.o $(BUILD)/bench-obj/util/hash.o \
		$(BUILD)/bench-obj/util/dkim.o $(BUILD)/bench-obj/util/uring.o
	@echo "  LD      $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(OPT) -o $@ $^ $(shell pkg-config --libs $(BENCH_PKGS)) -lm

.PHONY: bench-tools
bench-tools: $(BENCH_BIN)

# bench-deps - install the missing packages without questions.  Postfix's
# installer asks what kind of mail system this is: answer "No
# configuration" first so it neither prompts nor starts a system instance.
.PHONY: bench-deps
bench-deps:
	$(Q)missing=""; for p in $(BENCH_DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "bench-deps: installing$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

# bench - the relay scenario against every peer (BENCH_ARGS passes
# options through, e.g. BENCH_ARGS="--messages 2000 --runs 1").
BENCH_SCENARIO ?= relay
BENCH_ARGS ?=

# The coremta peer reports itself "not available" when the daemon does
# not build, does not accept mail, or (relay, tls) accepts but delivers
# nothing to the sink, so its build may fail here.
# BENCH_SCENARIO=intake measures durable 250s/s with delivery paused;
# drain, isolation, scaling, memory and tls are the other scenarios
# (bench/README.md), e.g. make bench BENCH_SCENARIO=drain BENCH_ARGS=--full.
.PHONY: bench
bench: bench-deps
	$(Q)$(MAKE) --no-print-directory $(BENCH_BIN)
	$(Q)$(MAKE) --no-print-directory $(COREMTA) || \
		echo "bench: $(COREMTA) did not build; the coremta peer will be reported not available"
	$(Q)python3 bench/run $(BENCH_SCENARIO) --build $(BUILD) $(BENCH_ARGS)

# bench-selftest - send against sink for a few seconds, counts must agree.
.PHONY: bench-selftest
bench-selftest: $(BENCH_BIN)
	$(Q)BENCH_BIN=$(abspath $(BENCH_BIN)) python3 bench/selftest.py
