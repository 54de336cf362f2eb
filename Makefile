# tenure — make targets. `make demo` and `make test` are the two that matter; see README.md.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

# Pinned code generators (buf works offline with local plugins).
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

MODULES := ./proto/... ./pkg/... ./services/intake/... ./services/approval/... ./services/provisioner/... ./services/ledger/... ./cmd/... ./test/e2e/... ./examples/connector-inventory/...
TESTFLAGS ?= -shuffle=on -count=1 -timeout=20m

.PHONY: model governance all build deps tools proto lint test fuzz bench demo dev clean

all: build

# `tenure version` names the commit it was built from (a tag when there is one; -dirty when
# the tree had changes).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/tenure ./cmd/tenure
	$(GO) build -o $(BIN)/tenurectl ./cmd/tenurectl

# System and npm packages the tests need (PostgreSQL, slapd, ldap-utils, node/npm): installs
# what is missing when it can (root or sudo), else prints the one command to run. Idempotent.
deps:
	./scripts/deps.sh

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc

# Regenerate the Go code beside the protos (committed).
proto: tools
	$(BIN)/buf generate

# Fails when buf lint complains, generated code is stale, code is not gofmt'ed or vet objects.
lint: tools
	$(BIN)/buf lint
	@before=$$(find proto -name '*.pb.go' | sort | xargs sha256sum); \
	$(BIN)/buf generate; \
	after=$$(find proto -name '*.pb.go' | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then echo "generated code was stale: regenerated it; review and commit proto/"; exit 1; fi
	@bad=$$(gofmt -l pkg services cmd test); if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet $(MODULES)

# Every test: real PostgreSQL (started by the tests), embedded nats-server, real slapd and a
# SCIM server from npm; then a brief fuzzing run of the webhook verifiers and HRIS adapters.
# From a fresh clone on Debian with Go: `deps` installs the rest first.
test: deps lint
	$(GO) test $(TESTFLAGS) $(MODULES)
	$(MAKE) fuzz

FUZZTIME ?= 3s
FUZZ_INTAKE := FuzzStandardWebhooksVerify FuzzBambooHRVerify FuzzHiBobVerify FuzzCanonicalDecode \
	FuzzBambooHRDecode FuzzHiBobDecode FuzzWorkdayDecode FuzzRoster FuzzFormToJSON
fuzz:
	@for f in $(FUZZ_INTAKE); do \
		echo "fuzz $$f ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./services/intake/ >/tmp/tenure-fuzz.log 2>&1 \
			|| { cat /tmp/tenure-fuzz.log; exit 1; }; \
	done

# Benchmarks: leaver fan-out latency end to end, revocation → SSF SET push latency (end to
# end and the transmitter alone), durable webhook accepts, and the ledger's append/verify
# rates. Figures are per run; compare medians (BENCHCOUNT runs each).
BENCHCOUNT ?= 3
bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -count $(BENCHCOUNT) -timeout 150m ./test/e2e/ | tee bench.out
	$(GO) test -run '^$$' -bench WebhookAccept -benchtime 3000x -count $(BENCHCOUNT) -timeout 30m ./services/intake/ | tee -a bench.out
	$(GO) test -run '^$$' -bench . -count $(BENCHCOUNT) -timeout 30m ./services/ledger/... | tee -a bench.out

# Starts tenure dev, sends a signed joiner and a termination, prints the case and the
# ledger entries, then stops. `make dev` keeps it running.
demo: build
	./scripts/demo.sh

dev: build
	$(BIN)/tenure dev

clean:
	rm -rf $(BIN) .tenure bench.out

# The model-based test of HR event meaning (test/e2e/hr_model_test.go; `make test` runs 20
# sequences): random HR timelines delivered with duplicates, re-sends and shuffling through
# the real services; MODEL_CHECKS sequences, the seed printed on failure (-rapid.seed=N).
MODEL_CHECKS ?= 1000
model:
	TENURE_MODEL_CHECKS=$(MODEL_CHECKS) $(GO) test -count=1 -timeout 60m -run TestHRLifecycleModel ./test/e2e/


# The model-based test of governance (test/e2e/governance_model_test.go): random sequences of
# hires, moves, requests, approvals and denials, JIT, break-glass, reviews and terminations
# through the real services and a PostgreSQL-role target. `make test` runs 6 sequences;
# this runs GOVERNANCE_CHECKS of up to GOVERNANCE_STEPS steps, the seed printed on failure.
GOVERNANCE_CHECKS ?= 200
GOVERNANCE_STEPS ?= 30
governance:
	TENURE_GOVERNANCE_CHECKS=$(GOVERNANCE_CHECKS) TENURE_GOVERNANCE_STEPS=$(GOVERNANCE_STEPS) $(GO) test -count=1 -timeout 60m -run TestGovernanceModel ./test/e2e/
