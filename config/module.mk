# config/ - PowerMTA-style configuration: syntax, values, model, lint.
LIB_SRCS += \
	config/values.c \
	config/syntax.c \
	config/directives.c \
	config/model.c \
	config/load.c \
	config/special.c \
	config/resolve.c \
	config/lookup.c \
	config/show.c \
	config/lint.c \
	config/hostname.c

TEST_SRCS += \
	tests/config/test_values.c \
	tests/config/test_syntax.c \
	tests/config/test_model.c \
	tests/config/test_hostname.c \
	tests/config/test_lint.c \
	tests/config/test_reference_configs.c \
	tests/config/test_bounce_corpus.c \
	tests/config/test_acted.c \
	tests/config/test_refcount.c

# What a fuzz target needs to load a configuration (keys load with it).
CONFIG_FUZZ_SRCS := \
	util/util.c \
	util/dkim.c \
	config/values.c \
	config/syntax.c \
	config/directives.c \
	config/model.c \
	config/load.c \
	config/special.c \
	config/resolve.c \
	config/lookup.c \
	config/show.c \
	config/lint.c \
	config/hostname.c

FUZZ_TARGETS += fuzz_config
FUZZ_SRCS_fuzz_config := $(CONFIG_FUZZ_SRCS)
