package resolve

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Lists go a page at a time, following the continue token (the next page
// is asked for while one is read); a list that fails says what it was
// listing.
func TestListsPageByPage(t *testing.T) {
	var nodes []corev1.Node
	for i := range 3 {
		nodes = append(nodes, corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-" + strconv.Itoa(i)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0." + strconv.Itoa(10+i)}}}})
	}
	cs := fake.NewClientset()
	var pages atomic.Int32 // the pager asks from a goroutine of its own
	cs.PrependReactor("list", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pages.Add(1)
		o := a.(k8stesting.ListActionImpl).ListOptions
		if o.Limit != page {
			t.Errorf("page of %d, want %d", o.Limit, page)
		}
		i, _ := strconv.Atoi(o.Continue)
		l := &corev1.NodeList{Items: nodes[i : i+1]}
		if i+1 < len(nodes) {
			l.Continue = strconv.Itoa(i + 1)
		}
		return true, l, nil
	})
	a := &API{Client: cs, Credentials: "test", Host: "https://api"}
	n, err := a.NodeByIP(context.Background(), netip.MustParseAddr("10.0.0.11"))
	if err != nil || n == nil || n.Name != "node-1" {
		t.Fatalf("node %v, %v; want node-1, on the second page", n, err)
	}
	pages.Store(0)
	if n, err := a.NodeByIP(context.Background(), netip.MustParseAddr("10.0.0.99")); n != nil || err != nil || pages.Load() != 3 {
		t.Errorf("no such node: %v, %v after %d pages; want nothing after all 3", n, err, pages.Load())
	}

	cs.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, context.DeadlineExceeded
	})
	if _, err := a.ServiceNames(context.Background(), "shop", ""); err == nil || !strings.Contains(err.Error(), "cannot reach the Kubernetes API at https://api") {
		t.Errorf("failed list: %v", err)
	}
}

// Where listing every Pod is denied (access to some namespaces only),
// Listed asks for each Service's Pods as the API source does, and they are
// found all the same.
func TestListedWithoutEveryPod(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Status: corev1.PodStatus{PodIP: "10.244.0.5"}}
	cs := fake.NewClientset(pod)
	var everywhere, inShop atomic.Int32
	cs.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() == "" {
			everywhere.Add(1)
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("only shop"))
		}
		inShop.Add(1)
		return false, nil, nil
	})
	l := NewListed(&API{Client: cs, Credentials: "test", Host: "https://api"})
	for range 2 {
		var got []string
		if err := l.Pods(context.Background(), "shop", labels.SelectorFromSet(map[string]string{"app": "web"}), func(p *corev1.Pod) { got = append(got, p.Name) }); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != "web-1" {
			t.Errorf("pods %v, want web-1", got)
		}
	}
	if everywhere.Load() != 1 || inShop.Load() != 2 {
		t.Errorf("lists of every Pod %d, of shop's %d; want one refused, then shop's each time", everywhere.Load(), inShop.Load())
	}
}
