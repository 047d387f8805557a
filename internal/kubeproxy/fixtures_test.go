package kubeproxy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/resolve"
)

// The fixtures under testdata/kube-proxy-<version>/<mode> are what the real
// kube-proxy programmed for a set of Service shapes, with the objects it saw
// (make k8s-fixtures). These tests hold svctrace's knowledge of kube-proxy's
// naming against them.

type objects struct{ *resolve.Objects }

func readObjects(t *testing.T, dir string) objects {
	t.Helper()
	o, err := resolve.ReadObjects(filepath.Join(dir, "objects.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Slices) == 0 {
		t.Fatalf("%s: no endpoint slices", dir)
	}
	return objects{o}
}

// servicePorts pairs each Service port with the endpoints kube-proxy uses,
// as svctrace's own Service model reads them.
func (o objects) servicePorts() map[*ServicePort]string {
	src := resolve.FileSource{Objects: o.Objects}
	out := map[*ServicePort]string{}
	for i := range o.Services {
		svc := &o.Services[i]
		sl, _ := src.EndpointSlices(context.Background(), svc.Namespace, svc.Name)
		model := resolve.NewService(&resolve.View{Service: svc, Slices: sl})
		for _, p := range model.Ports {
			sp := &ServicePort{Namespace: svc.Namespace, Name: svc.Name, PortName: p.Name,
				Protocol: p.Protocol.String(), ClusterIP: model.ClusterIPs[0], Port: p.Port}
			for _, e := range p.Ready() {
				sp.Endpoints = append(sp.Endpoints, e.Addr)
			}
			out[sp] = string(svc.Spec.Type)
		}
	}
	return out
}

func fixtureDirs(t *testing.T, mode string) []string {
	dirs, _ := filepath.Glob(filepath.Join("testdata", "kube-proxy-*", mode))
	if len(dirs) == 0 {
		t.Fatalf("no %s fixtures (make k8s-fixtures)", mode)
	}
	return dirs
}

func TestNamesMatchRealIPTablesRules(t *testing.T) {
	for _, mode := range []string{"iptables", "iptables-legacy"} {
		for _, dir := range fixtureDirs(t, mode) {
			b, err := os.ReadFile(filepath.Join(dir, "iptables-save.txt"))
			if err != nil {
				t.Fatal(err)
			}
			rules := string(b)
			for sp := range readObjects(t, dir).servicePorts() {
				var want []string
				if len(sp.Endpoints) == 0 {
					want = append(want, fmt.Sprintf("-d %s/32 -p tcp -m comment --comment %q -m tcp --dport %d -j REJECT", sp.ClusterIP, sp.NoEndpointsComment(), sp.Port))
				} else {
					want = append(want, ":"+sp.SvcChain()+" - [0:0]",
						fmt.Sprintf("-d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport %d -j %s", sp.ClusterIP, sp, sp.Port, sp.SvcChain()))
					for _, ep := range sp.Endpoints {
						want = append(want, "-A "+sp.SepChain(ep)+" -p tcp -m comment --comment \""+sp.String()+"\" ")
						want = append(want, "--to-destination "+ep.String())
					}
				}
				for _, w := range want {
					if !strings.Contains(rules, w) {
						t.Errorf("%s %s: no %q in iptables-save", dir, sp, w)
					}
				}
			}
		}
	}
}

func TestNamesMatchRealNFTablesRules(t *testing.T) {
	for _, dir := range fixtureDirs(t, "nftables") {
		b, err := os.ReadFile(filepath.Join(dir, "nft.txt"))
		if err != nil {
			t.Fatal(err)
		}
		rules := string(b)
		var svcChains []string
		for sp := range readObjects(t, dir).servicePorts() {
			var want []string
			if len(sp.Endpoints) == 0 {
				want = append(want, fmt.Sprintf("%s . tcp . %d comment %q : goto reject-chain", sp.ClusterIP, sp.Port, sp.String()))
			} else {
				want = append(want, "chain "+sp.NFTServiceChain()+" {")
				svcChains = append(svcChains, sp.NFTServiceChain())
				for _, ep := range sp.Endpoints {
					want = append(want, "chain "+sp.NFTEndpointChain(ep)+" {", "dnat to "+ep.String())
				}
			}
			for _, w := range want {
				if !strings.Contains(rules, w) {
					t.Errorf("%s %s: no %q in nft list ruleset", dir, sp, w)
				}
			}
		}
		if !slices.ContainsFunc(svcChains, func(c string) bool { return strings.Contains(c, "fixtures/multi/tcp/metrics") }) {
			t.Error("the multi-port Service's second port is missing from the fixture")
		}
	}
}
