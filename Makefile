# Aquifer build and test entry points. `make test` is what CI runs.
GO ?= go

.PHONY: all build test vet fmtcheck unit rdmabuild modelcheck

all: build

build:
	$(GO) build -o bin/aquifer ./cmd/aquifer

# test: everything CI checks — formatting, vet, the unit/integration suite,
# the cgo RDMA build and the coherence model checks.
test: fmtcheck vet rdmabuild unit modelcheck

fmtcheck:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 15m ./...

rdmabuild:
	@if [ -d rdma ]; then CGO_ENABLED=1 $(GO) build -tags rdma ./... ; fi

modelcheck:
	@if [ -f cxl/model/check.sh ]; then bash cxl/model/check.sh; else echo "modelcheck: no model yet"; fi
