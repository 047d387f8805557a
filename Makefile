# svctrace - see README.md. Targets:
#   build            bin/svctrace, pure Go with the BPF objects embedded
#   generate         rebuild the committed bpf2go outputs from bpf/ (clang, bpftool, libbpf-dev)
#   check-generated  fail if the committed bpf2go outputs differ from bpf/
#   test             all tests; the privileged ones (root) skip when not root
#   test-privileged  only the packages with privileged tests, failing if not root
#   lint             gofmt and go vet
#   bench            Go benchmarks
#   fixtures         re-record internal/flow/testdata/lab.jsonl from a lab run (root)

GO      ?= go
BIN     ?= bin/svctrace
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Packages whose tests need root.
PRIVILEGED := ./internal/lab/... ./internal/tracer/... ./cmd/...

.PHONY: build generate check-generated test test-privileged lint bench fixtures clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/svctrace

# vmlinux.h comes from the BTF of the machine that runs `make generate`; it is
# not committed. CO-RE relocates the objects to whatever kernel loads them.
build/vmlinux.h:
	@mkdir -p build
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@

generate: build/vmlinux.h
	$(GO) generate ./internal/tracer

check-generated: generate
	@git diff --exit-code --stat -- internal/tracer/bpf_bpfel.go internal/tracer/bpf_bpfel.o || \
	  { echo "the committed bpf2go outputs are stale: run 'make generate' and commit them"; exit 1; }

# -p 1: test packages run one after another, so privileged tests of different
# packages do not share the kernel (netfilter hooks, BPF links) at once.
test:
	$(GO) test -p 1 -count=1 ./...

test-privileged:
	SVCTRACE_REQUIRE_ROOT=1 $(GO) test -p 1 -count=1 $(PRIVILEGED)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "not gofmt'ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

fixtures:
	$(GO) test -count=1 ./internal/lab -run 'TestScenarios$$' -update-fixtures

clean:
	rm -rf bin build
