# scalegate build. Targets: all run test bench fuzz clean format
#   make            release build: build/release/scalegate
#   make run        install missing packages, build, start the demo
#   make test       install missing packages, ASan+UBSan build, unit + integration tests
#   make bench      side-by-side benchmark against nginx and HAProxy
#   make fuzz       libFuzzer harnesses under ASan (FUZZ_SECONDS each, default 600)

CC       ?= cc
PKGS     := libuv yaml-0.1 jansson hiredis
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -std=gnu11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wformat=2 -Wundef -Wpointer-arith -Wvla -Wnull-dereference -Werror
CPPFLAGS_ALL := -Isrc -D_GNU_SOURCE $(PKG_CFLAGS)

REL_CFLAGS  := -O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong
REL_LDFLAGS := -Wl,-z,now,-z,relro
SAN_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=all -DSG_DEBUG=1
SAN_LDFLAGS := -fsanitize=address,undefined

LIB_SRC  := $(sort $(wildcard src/*/*.c))
MAIN_SRC := src/main.c
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
DEMO_SRC := examples/demo-backend.c

FUZZ_SECONDS ?= 600
PYTEST := /usr/bin/python3 -m pytest

# build/<flavour>/... ; flavour is release or asan
REL := build/release
SAN := build/asan

.PHONY: all run test unit integration bench fuzz clean format deps-run deps-test demo
all: $(REL)/scalegate $(REL)/demo-backend

define flavour
$(1)/obj/%.o: %.c
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CPPFLAGS_ALL) $$(WARN) $(2) -MMD -MP -c $$< -o $$@
-include $$(patsubst %.c,$(1)/obj/%.d,$$(LIB_SRC) $$(MAIN_SRC))
$(1)/libscalegate.a: $$(patsubst %.c,$(1)/obj/%.o,$$(LIB_SRC))
	@rm -f $$@
	ar rcs $$@ $$^
$(1)/scalegate: $(1)/obj/src/main.o $(1)/libscalegate.a
	$$(CC) $(3) -o $$@ $$^ $$(PKG_LIBS) -lm -lpthread
$(1)/demo-backend: $(DEMO_SRC)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CPPFLAGS_ALL) $$(WARN) $(2) $(3) -o $$@ $$< $$(PKG_LIBS) -lm -lpthread
endef
$(eval $(call flavour,$(REL),$(REL_CFLAGS),$(REL_LDFLAGS)))
$(eval $(call flavour,$(SAN),$(SAN_CFLAGS),$(SAN_LDFLAGS)))

# Unit tests: one binary per tests/unit/test_*.c, linked against the ASan library.
UNIT_BINS := $(patsubst tests/unit/%.c,$(SAN)/unit/%,$(UNIT_SRC))
$(SAN)/unit/%: tests/unit/%.c $(SAN)/libscalegate.a $(wildcard src/*/*.h src/*/*.c tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(WARN) -Wno-missing-prototypes $(SAN_CFLAGS) -o $@ $< \
	    $(SAN)/libscalegate.a $(SAN_LDFLAGS) $(PKG_LIBS) $(shell pkg-config --libs cmocka) -lm -lpthread

deps-run:
	@scripts/deps.sh run
deps-test:
	@scripts/deps.sh test

run: deps-run
	@$(MAKE) --no-print-directory all
	@scripts/run-demo.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: $(SAN)/scalegate $(SAN)/demo-backend
	SCALEGATE_BIN=$(CURDIR)/$(SAN)/scalegate DEMO_BACKEND_BIN=$(CURDIR)/$(SAN)/demo-backend \
	    $(PYTEST) -q -p no:cacheprovider tests/integration

test: deps-test
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	/usr/bin/python3 bench/bench.py --scalegate $(REL)/scalegate --backend $(REL)/demo-backend

FUZZ_TARGETS := $(patsubst fuzz/%.c,build/fuzz/%,$(sort $(wildcard fuzz/fuzz_*.c)))
build/fuzz/%: fuzz/%.c $(LIB_SRC) $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	clang $(CPPFLAGS_ALL) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	    -o $@ $< $(LIB_SRC) $(PKG_LIBS) -lm -lpthread
fuzz:
	@scripts/deps.sh fuzz
	@$(MAKE) --no-print-directory $(FUZZ_TARGETS)
	@set -e; for f in $(FUZZ_TARGETS); do n=$$(basename $$f); \
	    mkdir -p fuzz/corpus-run/$$n; \
	    echo "== $$n for $(FUZZ_SECONDS)s"; \
	    $$f -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/$$n.dict -print_final_stats=1 \
	        fuzz/corpus-run/$$n fuzz/corpus/$$n; done

format:
	clang-format -i $(LIB_SRC) $(MAIN_SRC) $(wildcard src/*/*.h) $(UNIT_SRC) $(DEMO_SRC) $(wildcard fuzz/*.c)

clean:
	rm -rf build fuzz/corpus-run
