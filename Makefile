# svctrace - see README.md. Targets:
#   build            bin/svctrace, pure Go with the BPF objects embedded
#   man              man pages of every command into build/man (man -l build/man/svctrace.1)
#   generate         rebuild the committed bpf2go outputs from bpf/ (clang, libbpf-dev)
#   vmlinux          refresh bpf/vmlinux.h from this machine's kernel BTF (bpftool)
#   check-generated  fail if the committed bpf2go outputs differ from bpf/
#   test             all tests; the privileged ones (root) skip when not root
#   test-privileged  only the packages with privileged tests, failing if not root
#   lint             gofmt and go vet
#   bench            measure the cost (data path, start-up, pipeline, scale, memory, flood) into BENCHMARKS.md (root)
#   fixtures         re-record internal/flow/testdata/lab.jsonl from a lab run (root)
#   k8s-bins         build etcd, kube-apiserver, kube-controller-manager, kube-proxy (test/k8s), kube-router and CoreDNS, cached
#   e2e              end-to-end tests against the real control plane and kube-proxy (root)
#   k8s-fixtures     capture the real kube-proxy's rulesets into internal/kubeproxy/testdata (root)
#   test-kernels     the privileged tests on Debian's 6.1 and 6.12 kernels under QEMU (test/kernels)

GO      ?= go
BIN     ?= bin/svctrace
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Packages whose tests need root.
PRIVILEGED := ./internal/lab/... ./internal/tracer/... ./cmd/...
# The end-to-end tests have their own target: they need the Kubernetes binaries.
UNIT := $(shell $(GO) list ./... | grep -v /test/e2e)

# The real Kubernetes, built by the separate module test/k8s. Versions come
# from its go.mod; the binaries are cached per version, so only the first
# run builds (~6 min on 2 cores).
K8S_VERSION  := $(shell awk '{sub(/^require /, "")} $$1=="k8s.io/kubernetes" {print $$2}' test/k8s/go.mod)
ETCD_VERSION := $(shell awk '{sub(/^require /, "")} $$1=="go.etcd.io/etcd/server/v3" {print $$2}' test/k8s/go.mod)
K8S_BIN      ?= $(HOME)/.cache/svctrace/k8s-$(K8S_VERSION)-etcd-$(ETCD_VERSION)
K8S_MINOR    := $(word 2,$(subst ., ,$(K8S_VERSION)))
K8S_LDFLAGS  := -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(K8S_MINOR) \
	-X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION)
E2E_ENV      := SVCTRACE_K8S_BIN=$(K8S_BIN) SVCTRACE_REQUIRE_E2E=1 SVCTRACE_REQUIRE_ROOT=1
# The NetworkPolicy engine of the policy stories: kube-router's firewall,
# built from its own module (go install: its dependencies are its own).
KUBE_ROUTER_VERSION := $(shell awk -F'"' '/KubeRouterVersion = /{print $$2}' test/cluster/policy.go)
# The cluster DNS of the DNS stories: CoreDNS, built the same way.
COREDNS_VERSION := $(shell awk -F'"' '/CoreDNSVersion = /{print $$2}' test/cluster/dns.go)

.PHONY: build man vmlinux generate check-generated test test-privileged lint bench fixtures k8s-bins e2e k8s-fixtures test-kernels clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/svctrace

man: build
	$(BIN) man build/man

# bpf/vmlinux.h (the kernel's types, from one kernel's BTF) is committed, so
# the generated objects do not depend on the kernel of the machine that runs
# `make generate`: CO-RE relocates them to whatever kernel loads them.
# `make vmlinux` refreshes it from this machine's BTF, on purpose only.
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

generate:
	$(GO) generate ./internal/tracer

check-generated: generate
	@git diff --exit-code --stat -- internal/tracer/bpf_x86_bpfel.go internal/tracer/bpf_x86_bpfel.o || \
	  { echo "the committed bpf2go outputs are stale: run 'make generate' and commit them"; exit 1; }

# -p 1: test packages run one after another, so privileged tests of different
# packages do not share the kernel (netfilter hooks, BPF links) at once.
test:
	$(GO) test -p 1 -count=1 $(UNIT)

test-privileged:
	SVCTRACE_REQUIRE_ROOT=1 $(GO) test -p 1 -count=1 $(PRIVILEGED)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "not gofmt'ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Measures data path, start-up, event pipeline, scale, memory against a real
# API server and a connection flood; writes BENCHMARKS.md (root; needs wrk,
# tcpdump, nft, conntrack, and the Kubernetes binaries).
bench: k8s-bins
	$(GO) run ./test/bench -out BENCHMARKS.md -k8s-bin $(K8S_BIN)

fixtures:
	$(GO) test -count=1 ./internal/lab -run 'TestScenarios$$' -update-fixtures

k8s-bins: $(K8S_BIN)/.complete $(K8S_BIN)/.kube-router-$(KUBE_ROUTER_VERSION) $(K8S_BIN)/.coredns-$(COREDNS_VERSION)

$(K8S_BIN)/.coredns-$(COREDNS_VERSION): test/cluster/dns.go
	@mkdir -p $(K8S_BIN)
	CGO_ENABLED=0 GOBIN=$(K8S_BIN) $(GO) install -trimpath github.com/coredns/coredns@$(COREDNS_VERSION)
	touch $@

$(K8S_BIN)/.kube-router-$(KUBE_ROUTER_VERSION): test/cluster/policy.go
	@mkdir -p $(K8S_BIN)
	CGO_ENABLED=0 GOBIN=$(K8S_BIN) $(GO) install -trimpath github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$(KUBE_ROUTER_VERSION)
	touch $@

$(K8S_BIN)/.complete: test/k8s/go.mod test/k8s/go.sum test/k8s/etcd/main.go
	@mkdir -p $(K8S_BIN)
	cd test/k8s && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $(K8S_BIN)/ \
	  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	  k8s.io/kubernetes/cmd/kube-proxy ./etcd
	touch $@

e2e: k8s-bins
	$(E2E_ENV) $(GO) test -p 1 -count=1 -timeout 40m -v ./test/e2e/...

# Kernels are cached under ~/.cache/svctrace/kernels; the report goes to
# build/kernels/report.md, or KERNELS_REPORT=docs/kernels.md to refresh the
# committed one. KERNELS=5.10 tries Debian 11's kernel (not passing yet).
KERNELS_REPORT ?= build/kernels/report.md
test-kernels:
	$(GO) run ./test/kernels -report $(KERNELS_REPORT) $(if $(KERNELS),-kernels $(KERNELS))

k8s-fixtures: k8s-bins
	$(E2E_ENV) $(GO) test -count=1 ./test/e2e -run 'TestCaptureFixtures$$' -update-fixtures

clean:
	rm -rf bin build
