package report

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The data flows one way, and the layers hold it: the printers format
// reports and know nothing of where names and blames come from; only the
// tracer, and what runs it, loads BPF.
func TestLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "github.com/svctrace/svctrace/...").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	const mod = "github.com/svctrace/svctrace/"
	deps := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		deps[strings.TrimPrefix(f[0], mod)] = f[1:]
	}
	for _, bad := range []string{mod + "internal/diagnose", mod + "internal/resolve", "k8s.io/client-go/kubernetes"} {
		if slices.Contains(deps["internal/output"], bad) {
			t.Errorf("internal/output depends on %s: printers only format reports", bad)
		}
	}
	loaders := []string{"internal/tracer", "internal/session", "internal/lab", "cmd/svctrace", "internal/testutil", "test/bench", "test/cluster"}
	for pkg, ds := range deps {
		if slices.Contains(ds, "github.com/cilium/ebpf") && !slices.Contains(loaders, pkg) {
			t.Errorf("%s loads BPF (depends on cilium/ebpf): speak internal/nf instead of internal/tracer", pkg)
		}
	}
}
