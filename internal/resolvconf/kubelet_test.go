package resolvconf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeProc lays out /proc/PID/{comm,cmdline,root/…} for one process.
func fakeProc(t *testing.T, proc, pid, comm string, args []string, files map[string]string) {
	t.Helper()
	dir := filepath.Join(proc, pid)
	for path, text := range files {
		p := filepath.Join(dir, "root", path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "cmdline"), []byte(strings.Join(args, "\x00")+"\x00"), 0o644)
}

func TestKubelet(t *testing.T) {
	const config = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
`
	for _, tc := range []struct {
		name      string
		args      []string
		want      Cluster
		from, err string
	}{
		{"kubeadm's", []string{"/usr/bin/kubelet", "--config=/var/lib/kubelet/config.yaml", "--kubeconfig", "/etc/kubernetes/kubelet.conf"},
			Cluster{DNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Domain: "cluster.local"}, "kubelet (pid 42: /var/lib/kubelet/config.yaml)", ""},
		{"flags win", []string{"kubelet", "--config", "/var/lib/kubelet/config.yaml", "--cluster-dns=10.0.0.10,fd00::10", "--cluster-domain=corp.example."},
			Cluster{DNS: []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")}, Domain: "corp.example"},
			"kubelet (pid 42: /var/lib/kubelet/config.yaml, --cluster-dns, --cluster-domain)", ""},
		{"a config that is not there", []string{"kubelet", "--config=/etc/kubelet.yaml"}, Cluster{}, "", "reading its --config /etc/kubelet.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := t.TempDir()
			fakeProc(t, proc, "1", "systemd", []string{"/sbin/init"}, nil)
			fakeProc(t, proc, "42", "kubelet", tc.args, map[string]string{"var/lib/kubelet/config.yaml": config})
			got, from, err := Kubelet(proc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || from != tc.from || got.Domain != tc.want.Domain || !slices.Equal(got.DNS, tc.want.DNS) {
				t.Errorf("got %+v from %q (%v), want %+v from %q", got, from, err, tc.want, tc.from)
			}
		})
	}
	proc := t.TempDir()
	fakeProc(t, proc, "1", "systemd", []string{"/sbin/init"}, nil)
	if _, _, err := Kubelet(proc); !errors.Is(err, ErrNoKubelet) {
		t.Errorf("no kubelet: %v", err)
	}
}

func TestHosts(t *testing.T) {
	h, err := ParseHosts(strings.NewReader(`# Kubernetes-managed hosts file.
127.0.0.1	localhost
10.244.0.7	client-5d9f
# Entries added by HostAliases.
10.0.0.99	web.shop web.shop.svc.cluster.local # stale
not-an-address	web
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Lookup("WEB.shop."); len(got) != 1 || got[0].Addr != netip.MustParseAddr("10.0.0.99") || got[0].Line != 5 {
		t.Errorf("web.shop: %+v", got)
	}
	if got := h.Lookup("web"); len(got) != 0 {
		t.Errorf("web is not in the file as a name with an address: %+v", got)
	}
}

func TestOptions(t *testing.T) {
	c := parse(t, kubelet+"options timeout:2 attempts:3 single-request-reopen\n")
	if c.Timeout != 2 || c.Attempts != 3 || !c.Option("single-request-reopen") || !c.Option("ndots:5") || c.Option("use-vc") {
		t.Errorf("parsed %+v", c)
	}
}
