package tracer

// bpf_x86_bpfel.{go,o} are generated from bpf/ and committed, so `go build`
// needs no clang. `make generate` rebuilds them (it first writes
// build/vmlinux.h from this machine's BTF). The target is amd64, not plain
// bpfel: the kprobe programs read arguments from the architecture's
// registers (pt_regs).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I../../build -I../../bpf" -target amd64 -type event -type tuple -type target_key bpf ../../bpf/svctrace.c
