package kubeproxy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/yaml"
)

// The fixtures under testdata/kube-proxy-<version>/<mode> are what the real
// kube-proxy programmed for a set of Service shapes, with the objects it saw
// (make k8s-fixtures). These tests hold svctrace's knowledge of kube-proxy's
// naming against them.

type objects struct {
	services []corev1.Service
	slices   []discoveryv1.EndpointSlice
}

func readObjects(t *testing.T, dir string) objects {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "objects.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Items []json.RawMessage }
	if err := yaml.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	var o objects
	for _, raw := range list.Items {
		var meta struct{ Kind string }
		json.Unmarshal(raw, &meta)
		switch meta.Kind {
		case "Service":
			var s corev1.Service
			json.Unmarshal(raw, &s)
			o.services = append(o.services, s)
		case "EndpointSlice":
			var s discoveryv1.EndpointSlice
			json.Unmarshal(raw, &s)
			o.slices = append(o.slices, s)
		}
	}
	if len(o.services) == 0 || len(o.slices) == 0 {
		t.Fatalf("%s: %d services, %d endpoint slices", dir, len(o.services), len(o.slices))
	}
	return o
}

// servicePorts pairs each Service port with its ready endpoints.
func (o objects) servicePorts() map[*ServicePort]string {
	out := map[*ServicePort]string{}
	for _, svc := range o.services {
		for _, p := range svc.Spec.Ports {
			sp := &ServicePort{Namespace: svc.Namespace, Name: svc.Name, PortName: p.Name,
				Protocol: strings.ToLower(string(p.Protocol)), ClusterIP: netip.MustParseAddr(svc.Spec.ClusterIP), Port: uint16(p.Port)}
			for _, sl := range o.slices {
				if sl.Labels[discoveryv1.LabelServiceName] != svc.Name {
					continue
				}
				for _, sliceport := range sl.Ports {
					if *sliceport.Name != p.Name {
						continue
					}
					for _, ep := range sl.Endpoints {
						if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
							sp.Endpoints = append(sp.Endpoints, netip.AddrPortFrom(netip.MustParseAddr(ep.Addresses[0]), uint16(*sliceport.Port)))
						}
					}
				}
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
