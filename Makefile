# stigg: Stigg entitlements and usage metering inside PostgreSQL.
#
#   make && make install      build and install with PGXS
#   make check                install what is missing, build, install, then
#                             run pg_regress and the TAP tests against a
#                             throwaway cluster and the dev sidecar
#   make demo / demo-stop     a throwaway cluster and dev sidecar to play with
#   make bench                benchmarks (ratios against baselines)

EXTENSION = stigg
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" stigg.control)

PG_CONFIG ?= pg_config

# pg_regress tests (sql/, expected/); TAP tests are test/t/*.pl
REGRESS = input_validation entitlements deny_reasons usage

# Targets that drive a whole run (packages, cluster, sidecar). They must work
# before pg_config exists, so PGXS is only read for the build targets.
DRIVER_GOALS := deps check demo demo-stop bench
ifneq ($(filter $(DRIVER_GOALS),$(MAKECMDGOALS)),)

.PHONY: $(DRIVER_GOALS)
deps:
	test/scripts/deps.sh
check: deps
	$(MAKE) all
	$(MAKE) install
	REGRESS="$(REGRESS)" test/scripts/check.sh
demo: deps
	$(MAKE) all
	$(MAKE) install
	test/scripts/demo.sh start
demo-stop:
	test/scripts/demo.sh stop
bench: deps
	$(MAKE) all
	$(MAKE) install
	bench/run.sh

else

GEN = src/gen
PROTO_C = $(GEN)/sidecar.pb-c.c \
	$(GEN)/google/protobuf/empty.pb-c.c \
	$(GEN)/google/protobuf/struct.pb-c.c \
	$(GEN)/google/protobuf/timestamp.pb-c.c
PROTO_H = $(PROTO_C:.c=.h)
PROTO_INCLUDE = /usr/include

MODULE_big = stigg
OBJS = \
	src/stigg.o \
	src/guc.o \
	src/curlio.o \
	src/transport.o \
	src/sidecar.o \
	src/pbjson.o \
	src/args.o \
	src/cache.o \
	src/access.o \
	src/entitlements.o \
	src/triggers.o \
	src/fallback.o \
	src/stats.o \
	src/api.o \
	src/queue.o \
	src/worker.o \
	$(PROTO_C:.c=.o)

DATA = $(wildcard stigg--*.sql)
PGFILEDESC = "stigg - Stigg entitlements and usage metering"

REGRESS_OPTS = --inputdir=.

PG_CPPFLAGS = -I$(GEN) -Isrc -std=gnu99
SHLIB_LINK = -lcurl -lprotobuf-c
EXTRA_CLEAN = $(GEN) test/sidecar/gen results regression.diffs regression.out tmp_check

# Debian's server is built with LLVM; we ship no bitcode (see transport notes).
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Generated protobuf code: C for the extension, Python for the dev sidecar.
$(GEN)/sidecar.pb-c.c $(GEN)/sidecar.pb-c.h: proto/sidecar.proto
	@mkdir -p $(GEN)
	protoc-c -Iproto -I$(PROTO_INCLUDE) --c_out=$(GEN) $<

$(GEN)/google/protobuf/%.pb-c.c $(GEN)/google/protobuf/%.pb-c.h: $(PROTO_INCLUDE)/google/protobuf/%.proto
	@mkdir -p $(GEN)
	protoc-c -I$(PROTO_INCLUDE) --c_out=$(GEN) $<

# PGXS tracks no header dependencies: every object depends on every header,
# or a changed struct leaves stale objects behind.
$(OBJS): $(PROTO_H) $(wildcard src/*.h)

all: test/sidecar/gen/sidecar_pb2.py

test/sidecar/gen/sidecar_pb2.py: proto/sidecar.proto
	@mkdir -p test/sidecar/gen
	protoc -Iproto -I$(PROTO_INCLUDE) --python_out=test/sidecar/gen $<

endif
