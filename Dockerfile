# svctrace in a container, for `kubectl debug node/NAME --profile=sysadmin`
# (docs/debug-node.md): the static binary, and the tools it reads a node's
# kube-proxy rules with in iptables mode - iptables-save of both backends,
# nft and legacy (nftables mode is read over netlink, no tool needed) - plus
# conntrack and ip for looking further by hand.
#
#   docker build -t svctrace --build-arg VERSION=$(git describe --tags --always) .
#
# The BPF objects are committed (bpf2go), so the build needs neither clang
# nor kernel headers.
FROM golang:1.25-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/svctrace ./cmd/svctrace

FROM debian:trixie-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables nftables conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/svctrace /usr/local/bin/svctrace
# kubectl debug passes the command line: svctrace SERVICE -n NAMESPACE.
ENTRYPOINT []
CMD ["svctrace", "--help"]
