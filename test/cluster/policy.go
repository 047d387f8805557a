package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// KubeRouterVersion is the kube-router whose NetworkPolicy firewall the
// policy stories run (github.com/cloudnativelabs/kube-router/v2): iptables
// and ipset, which this kernel has (kube-network-policies needs nftables'
// queue, which it lacks). `make k8s-bins` builds it next to the Kubernetes
// binaries, as a module of its own.
const KubeRouterVersion = "v2.1.0"

// RequirePolicyEngine skips the test when kube-router or ipset is missing,
// or fails it with SVCTRACE_REQUIRE_E2E=1 (make e2e, CI).
func RequirePolicyEngine(t testing.TB) {
	t.Helper()
	RequireBinaries(t)
	var missing []string
	if _, err := os.Stat(filepath.Join(BinDir(), "kube-router")); err != nil {
		missing = append(missing, fmt.Sprintf("kube-router %s in %s (make k8s-bins)", KubeRouterVersion, BinDir()))
	}
	if _, err := exec.LookPath("ipset"); err != nil {
		missing = append(missing, "ipset (apt-get install ipset)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "the NetworkPolicy engine cannot run: missing " + strings.Join(missing, ", ")
	if os.Getenv("SVCTRACE_REQUIRE_E2E") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// startKubeRouter runs kube-router's NetworkPolicy firewall alone in the
// node's namespace, with the admin credentials, and waits for its chains.
func (c *Cluster) startKubeRouter(ctx context.Context) error {
	kr, err := start(c.Node, c.Dir, "kube-router", c.bin("kube-router"), nil,
		"--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
		"--kubeconfig="+c.Kubeconfig, "--hostname-override="+NodeName,
		"--service-cluster-ip-range="+ServiceCIDR, "--health-port=0", "--metrics-port=0",
		"--iptables-sync-period=5s", "--v=2")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kr)
	return c.waitFirewall(ctx, "its firewall", "KUBE-ROUTER-FORWARD")
}

// WaitPolicy waits until kube-router runs the traffic of a Pod on this
// node through NetworkPolicy ns/name (its Pod firewall chain's "run
// through nw policy NAME" rule).
func (c *Cluster) WaitPolicy(ctx context.Context, ns, name string) error {
	return c.waitFirewall(ctx, "NetworkPolicy "+ns+"/"+name, "run through nw policy "+name)
}

// waitFirewall waits until kube-router's rules (iptables-nft, whatever
// kube-proxy's mode) hold text.
func (c *Cluster) waitFirewall(ctx context.Context, what, text string) error {
	found, err := pollRules(ctx, func() (string, error) { return c.Exec("iptables-nft-save") },
		func(rules string) bool { return strings.Contains(rules, text) })
	if !found {
		return fmt.Errorf("kube-router did not enforce %s (no %q in its rules): %v", what, text, err)
	}
	return nil
}
