package tracer

// bpf_x86_bpfel.{go,o} are generated from bpf/ and committed, so `go build`
// needs no clang. `make generate` rebuilds them, with the kernel types of
// the committed bpf/vmlinux.h (make vmlinux refreshes it). The target is amd64, not plain
// bpfel: the kprobe programs read arguments from the architecture's
// registers (pt_regs).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I../../bpf" -target amd64 -type event -type packet_path -type path_step -type tuple -type target_key -type held_key bpf ../../bpf/svctrace.c
