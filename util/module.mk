# util/ - allocation, strings, arena, diagnostics.
LIB_SRCS += \
	util/util.c
