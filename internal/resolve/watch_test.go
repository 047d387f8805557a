package resolve

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The API server dies: its watches end as a closed connection would end
// them, without an error, and every request after is refused. That is
// reported once, soon.
func TestWatchReportsAPIServerGone(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}}
	cs := fake.NewClientset(svc)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	var gone atomic.Bool
	var mu sync.Mutex
	var open []*watch.FakeWatcher
	cs.PrependWatchReactor("*", func(k8stesting.Action) (bool, watch.Interface, error) {
		if gone.Load() {
			return true, nil, refused
		}
		mu.Lock()
		defer mu.Unlock()
		w := watch.NewFake()
		open = append(open, w)
		return true, w, nil
	})
	cs.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		if gone.Load() {
			return true, nil, refused
		}
		return false, nil, nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failed := make(chan error, 10)
	a := &API{Client: cs, Credentials: "test", Host: "https://test"}
	go a.Watch(ctx, "shop", "web", func() map[string]string { return svc.Spec.Selector }, func() {}, func(err error) { failed <- err })

	// A watch that ends within a second is a different case to the
	// reflector ("very short watch"), which it does report.
	time.Sleep(1500 * time.Millisecond)
	gone.Store(true)
	mu.Lock()
	if len(open) != 3 {
		t.Errorf("%d watches open, want 3 (Service, EndpointSlices, Pods)", len(open))
	}
	for _, w := range open {
		w.Stop()
	}
	mu.Unlock()
	select {
	case err := <-failed:
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("reported %v, want the refused connection", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no failure reported 10s after the API server went away")
	}
	time.Sleep(2 * time.Second)
	if n := len(failed); n != 0 {
		t.Errorf("%d more reports of one outage, want none", n)
	}
}

// The informers' first lists are the state already gathered: no change is
// reported for them, with no wait for them either; a change after is
// reported once, a burst of them too.
func TestWatchReportsChangesNotTheFirstLists(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}}
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{"app": "web"}}}
	}
	cs := fake.NewClientset(svc, pod("web-1"), pod("web-2"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan struct{}, 10)
	a := &API{Client: cs, Credentials: "test", Host: "https://test"}
	go a.Watch(ctx, "shop", "web", func() map[string]string { return svc.Spec.Selector }, func() { changes <- struct{}{} }, nil)
	select {
	case <-changes:
		t.Fatal("the first lists were reported as a change")
	case <-time.After(time.Second):
	}
	for _, name := range []string{"web-3", "web-4"} {
		if _, err := cs.CoreV1().Pods("shop").Create(ctx, pod(name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		t.Fatal("two new Pods were not reported")
	}
	select {
	case <-changes:
		t.Error("a burst of two changes was reported twice")
	case <-time.After(time.Second):
	}
}
