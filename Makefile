# shardproxy: the two commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# The suite starts real PostgreSQL servers; keep it well inside CI's budget.
TEST_TIMEOUT ?= 20m

.PHONY: all build demo test test-short bench bench-go lint fuzz clean

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

# Fuzz the wire reader and the startup path for FUZZTIME each.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./wire -run '^$$' -fuzz FuzzReader -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzParseSessionSets -fuzztime $(FUZZTIME)
	$(GO) test ./router -short -run '^$$' -fuzz FuzzAnalyze -fuzztime $(FUZZTIME)
	$(GO) test ./merge -short -run '^$$' -fuzz FuzzAdd -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME)
	$(GO) test ./shard -short -run '^$$' -fuzz '^FuzzHash$$' -fuzztime $(FUZZTIME)
	$(GO) test ./shard -short -run '^$$' -fuzz FuzzSlotOfText -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzCopySplitter -fuzztime $(FUZZTIME)

clean:
	rm -rf $(BIN)
