package probe

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
)

// Two nodes each with a Pod of the same IP (nested nodes, two test beds at
// once): the Pod found is the one wired to the node asked about.
func TestPodNetNSPicksThePodOfThisNode(t *testing.T) {
	testutil.RequireRoot(t)
	ip := netip.MustParseAddr("10.250.0.5")
	prefix := fmt.Sprintf("svctrace-probetest-%d-", os.Getpid())
	var names []string
	t.Cleanup(func() { topo.Remove(names) })
	create := func(name string) nf.NetNS {
		names = append(names, prefix+name)
		ns, err := topo.CreateNetNS(prefix + name)
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	var nodes, pods []nf.NetNS
	for i := range 2 {
		node, pod := create(fmt.Sprint("node", i)), create(fmt.Sprint("pod", i))
		if err := topo.Veth(node, "veth0", pod, "eth0", ""); err != nil {
			t.Fatal(err)
		}
		if err := (topo.Iface{NS: pod, Name: "eth0", Addrs: []netip.Prefix{netip.PrefixFrom(ip, 24)}}).Configure(); err != nil {
			t.Fatal(err)
		}
		// A process in the Pod's namespace, as a container's would be.
		sleep := exec.Command("ip", "netns", "exec", pod.Spec, "sleep", "60")
		if err := sleep.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
		// ip netns exec enters the namespace after it started.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			ns, err := nf.ResolveNetNS(fmt.Sprintf("/proc/%d/ns/net", sleep.Process.Pid))
			if err == nil && ns.Inode == pod.Inode {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sleep did not enter %s", pod.Spec)
			}
		}
		nodes, pods = append(nodes, node), append(pods, pod)
	}
	for i := range 2 {
		got, err := PodNetNS(ip, nodes[i], "")
		if err != nil {
			t.Fatal(err)
		}
		if got.Inode != pods[i].Inode {
			t.Errorf("node %d: found namespace %d, want its pod's %d", i, got.Inode, pods[i].Inode)
		}
	}
}
