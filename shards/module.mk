# shards/ - the per-core delivery shards: loop, DNS, SMTP client.
LIB_SRCS += \
	shards/shard.c \
	shards/queue.c \
	shards/conn.c \
	shards/body.c \
	shards/outcome.c \
	shards/sched.c \
	shards/caps.c \
	shards/retry.c \
	shards/control.c \
	shards/dns.c \
	shards/warmup.c \
	shards/adapt.c \
	shards/smtp_client.c

TEST_SRCS += \
	tests/shards/test_smtp_client.c \
	tests/shards/test_dns.c \
	tests/shards/test_sched.c \
	tests/shards/test_outcomes.c \
	tests/shards/test_spool_moves.c \
	tests/shards/test_retry.c \
	tests/shards/test_delivery.c \
	tests/shards/test_backoff.c \
	tests/shards/test_routing.c \
	tests/shards/test_warmup.c \
	tests/shards/test_adapt.c \
	tests/lib/dnsmasq.c

FUZZ_TARGETS += fuzz_retry
FUZZ_SRCS_fuzz_retry := util/util.c shards/retry.c

FUZZ_TARGETS += fuzz_smtp_client
FUZZ_SRCS_fuzz_smtp_client := \
	util/util.c \
	shards/smtp_client.c
