# shardproxy: the two commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# The suite starts real PostgreSQL servers; keep it well inside CI's budget.
TEST_TIMEOUT ?= 20m

.PHONY: all build demo test test-short bench bench-go lint fuzz clean compat soak

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/shardproxy ./cmd/shardproxy
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/shardctl ./cmd/shardctl

# Starts 2 shards with 1 streaming replica each and the proxy on 127.0.0.1:6432.
demo: build
	$(BIN)/shardproxy dev --spares 1 $(DEMO_FLAGS)

# The end-to-end packages run one at a time: each loads the two cores with
# real servers and pgbench, and timing-sensitive checks (replica spread,
# write pauses) should not compete with another package's load.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /e2e)
	$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./e2e/...
	$(MAKE) compat

# The same scripted scenario through a 2-shard `shardproxy dev` with psql,
# pgbench, pgx, lib/pq, node-postgres, psycopg2 and the PostgreSQL JDBC
# driver (compat/README.md).
compat: build
	bash compat/run.sh

# Minutes of mixed pgbench load through 2 shards while replicas are killed
# and restarted at random: throughput over time, errors, proxy memory.
# Not part of make test. SOAK_MINUTES (default 10).
soak: build
	bash bench/soak.sh

# Unit tests only: no PostgreSQL servers.
test-short:
	$(GO) test -short -count=1 ./...

bench:
	bash bench/run.sh

# Rows/second of `shardctl rebalance start --even --wait` moving pgbench rows
# to an added shard, against a plain psql \copy pipe of the same rows between
# the same nodes (SCALE, default 20).
.PHONY: bench-rebalance
bench-rebalance:
	bash bench/rebalance.sh

# Go benchmarks of the per-statement work: planning (router cache hit and
# miss on pgbench's statements), key hashing and location, merging.
bench-go:
	$(GO) test -short -run '^$$' -bench . -benchmem ./router ./shard ./merge

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# Every fuzz target for FUZZTIME each (FUZZFLAGS e.g. -parallel=1). The
# seed corpora (testdata/fuzz) also run in make test.
FUZZTIME ?= 30s
FUZZFLAGS ?=
FUZZ_TARGETS := ./wire:FuzzReader ./proxy:FuzzSession ./proxy:FuzzRoute ./proxy:FuzzParseSessionSets \
	./proxy:FuzzCopySplitter ./router:FuzzAnalyze ./merge:FuzzAdd ./config:FuzzLoad \
	./shard:FuzzHash ./shard:FuzzSlotOfText
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $${t%%:*} $${t##*:} for $(FUZZTIME)"; \
		$(GO) test $${t%%:*} -run '^$$' -fuzz "^$${t##*:}$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS); \
	done

clean:
	rm -rf $(BIN)
