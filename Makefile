# Aquifer build and test entry points. `make test` is what CI runs.
GO ?= go

.PHONY: all build test vet fmtcheck layering unit rdmabuild modelcheck

all: build

build:
	$(GO) build -o bin/aquifer ./cmd/aquifer

# test: everything CI checks — formatting, vet, the unit/integration suite,
# the cgo RDMA build and the coherence model checks.
test: fmtcheck vet layering rdmabuild modelcheck unit

fmtcheck:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# The package layering written down in docs/architecture.md.
layering:
	$(GO) test -count=1 ./internal/arch

unit:
	$(GO) test -count=1 -timeout 15m ./...

# The verbs backend (cgo, libibverbs) must build and vet; its device-less
# path is tested (no RDMA NIC exists on the project's machines).
rdmabuild:
	CGO_ENABLED=1 $(GO) build -tags rdma ./...
	CGO_ENABLED=1 $(GO) vet -tags rdma ./rdma/... ./memnode/
	CGO_ENABLED=1 $(GO) test -count=1 -tags rdma ./rdma/verbs/

# SPIN model of the CXL coherence protocol: passes, and each negative
# variant (a protocol step removed) must produce a counterexample.
modelcheck:
	bash cxl/model/check.sh
