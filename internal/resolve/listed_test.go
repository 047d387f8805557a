package resolve_test

import (
	"context"
	"net/netip"
	"reflect"
	"testing"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/netpol"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// counted counts the reads asked of its Source.
type counted struct {
	resolve.Source
	n map[string]int
}

func (c *counted) Pods(ctx context.Context, ns string, sel labels.Selector, fn func(*corev1.Pod)) error {
	c.n["pods"]++
	return c.Source.Pods(ctx, ns, sel, fn)
}

func (c *counted) PodsByIP(ctx context.Context, ip netip.Addr) ([]corev1.Pod, error) {
	c.n["pods by ip"]++
	return c.Source.PodsByIP(ctx, ip)
}

func (c *counted) Node(ctx context.Context, name string) (*corev1.Node, error) {
	c.n["node "+name]++
	return c.Source.Node(ctx, name)
}

func (c *counted) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	c.n["namespace "+name]++
	return c.Source.Namespace(ctx, name)
}

func (c *counted) NetworkPolicies(ctx context.Context, ns string) ([]networkingv1.NetworkPolicy, error) {
	c.n["policies of "+ns]++
	return c.Source.NetworkPolicies(ctx, ns)
}

func (c *counted) AdminPolicies(ctx context.Context) ([]netpol.AdminNetworkPolicy, *netpol.BaselineAdminNetworkPolicy, error) {
	c.n["admin policies"]++
	return c.Source.AdminPolicies(ctx)
}

// Every Service's view gathered through Listed is the view gathered
// from the source itself, and each read is made once: every Pod listed
// once, each Node, namespace, namespace's policies and the admin
// policies read once, however many Services ask.
func TestListedReadsOnce(t *testing.T) {
	ctx := context.Background()
	src := resolve.FileSource{Objects: lab.Objects(), Path: "lab"}
	svcs, sls, err := src.ServicesAndSlices(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	bySvc := resolve.SlicesByService(sls)
	local := resolve.LocalNode{Name: lab.NodeName}
	c := &counted{Source: src, n: map[string]int{}}
	listed := resolve.NewListed(c)
	if len(svcs) < 5 {
		t.Fatalf("the lab has %d Services", len(svcs))
	}
	for _, svc := range svcs {
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		want, err := resolve.GatherFrom(ctx, src, svc, bySvc[key], local)
		if err != nil {
			t.Fatal(err)
		}
		got, err := resolve.GatherFrom(ctx, listed, svc, bySvc[key], local)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: the view through Listed differs:\n%+v\nwant\n%+v", key, got, want)
		}
	}
	for what, n := range c.n {
		if n != 1 {
			t.Errorf("%s read %d times for %d Services, want once", what, n, len(svcs))
		}
	}
	if c.n["pods"] != 1 || c.n["pods by ip"] != 0 || c.n["admin policies"] != 1 || c.n["node "+lab.NodeName] != 1 {
		t.Errorf("reads %v: want every Pod listed once, the admin policies and the node read once", c.n)
	}
}
