# affinity/ - domain-to-shard map (consistent hash + operator pins), hwloc.
LIB_SRCS += \
	affinity/arena.c \
	affinity/domain_map.c

TEST_SRCS += \
	tests/affinity/test_domain_map.c
