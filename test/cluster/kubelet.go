package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/topo"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/retry"
)

// Container is what a fake kubelet's container does.
type Container struct {
	// Waiting: the container never starts; its state is waiting, for this
	// reason (ErrImagePull, …).
	Waiting string
	// Lines are its output. Then it exits with Exit, or, with Hold, runs
	// until the Pod is deleted and writes Final as it stops.
	Lines []string
	Exit  int32
	Hold  bool
	Final []string
}

// Kubelet plays the kubelet of every node for the Pods it is given, enough
// for a client that creates a Pod, waits for it to run, follows its logs and
// deletes it: it reports the container's state, serves its logs through the
// API server, and completes deletions.
type Kubelet struct {
	c   *Cluster
	run func(*corev1.Pod) Container
	// Created has each Pod as it was created.
	Created chan *corev1.Pod

	mu   sync.Mutex
	pods map[string]*fakePod // by namespace/name
}

type fakePod struct {
	Container
	deleted chan struct{}
	once    sync.Once
}

// StartKubelet starts a fake kubelet for the Pods with the label selector:
// run says what each Pod's one container does. The API server reaches it at
// every node's address, port 10250 (other nodes' addresses are added to the
// node's loopback device); it stops when the test ends.
func (c *Cluster) StartKubelet(t testing.TB, selector string, run func(*corev1.Pod) Container) *Kubelet {
	t.Helper()
	k := &Kubelet{c: c, run: run, Created: make(chan *corev1.Pod, 16), pods: map[string]*fakePod{}}
	c.mu.Lock()
	var remote []string
	for _, r := range c.remote {
		remote = append(remote, r.ip.String()+"/32")
	}
	c.mu.Unlock()
	for _, a := range remote {
		if _, err := topo.Run(c.Node, "", "ip", "addr", "add", a, "dev", "lo"); err != nil {
			t.Fatal(err)
		}
	}
	var l net.Listener
	err := nf.InNetNS(c.Node, func() (err error) {
		l, err = net.Listen("tcp", ":10250")
		return err
	})
	if err != nil {
		t.Fatalf("fake kubelet: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(k.logs))
	srv.Listener.Close()
	srv.Listener = l
	srv.StartTLS() // the API server does not check a kubelet's certificate without --kubelet-certificate-authority
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		srv.CloseClientConnections()
		srv.Close()
	})
	w, err := c.Client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatalf("fake kubelet: %v", err)
	}
	go k.serve(ctx, w)
	return k
}

// serve follows the Pods: starts them, and ends them when deleted.
func (k *Kubelet) serve(ctx context.Context, w watch.Interface) {
	defer w.Stop()
	for ev := range w.ResultChan() {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			continue
		}
		key := p.Namespace + "/" + p.Name
		switch {
		case ev.Type == watch.Added:
			fp := &fakePod{Container: k.run(p), deleted: make(chan struct{})}
			k.mu.Lock()
			k.pods[key] = fp
			k.mu.Unlock()
			k.Created <- p.DeepCopy()
			state := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
			phase := corev1.PodRunning
			if fp.Waiting != "" {
				state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: fp.Waiting, Message: "fake kubelet: " + fp.Waiting}}
				phase = corev1.PodPending
			}
			k.setStatus(ctx, p, phase, state)
		case ev.Type == watch.Modified && p.DeletionTimestamp != nil:
			k.mu.Lock()
			fp := k.pods[key]
			k.mu.Unlock()
			if fp == nil {
				continue
			}
			fp.once.Do(func() {
				close(fp.deleted)
				// As a kubelet does once the containers are stopped.
				go func() {
					time.Sleep(200 * time.Millisecond) // the logs' last lines first
					zero := int64(0)
					k.c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
				}()
			})
		}
	}
}

// setStatus sets the Pod's phase and its (first) container's state.
func (k *Kubelet) setStatus(ctx context.Context, p *corev1.Pod, phase corev1.PodPhase, state corev1.ContainerState) {
	pods := k.c.Client.CoreV1().Pods(p.Namespace)
	retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Phase = phase
		c := cur.Spec.Containers[0]
		cur.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: c.Image, State: state}}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// logs serves GET /containerLogs/NAMESPACE/POD/CONTAINER?follow=true.
func (k *Kubelet) logs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	k.mu.Lock()
	fp := k.pods[parts[0]+"/"+parts[1]]
	k.mu.Unlock()
	if fp == nil {
		http.Error(w, fmt.Sprintf("fake kubelet: no pod %s/%s", parts[0], parts[1]), http.StatusNotFound)
		return
	}
	write := func(lines []string) {
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		w.(http.Flusher).Flush()
	}
	write(fp.Lines)
	if fp.Hold {
		select {
		case <-fp.deleted:
			write(fp.Final)
		case <-r.Context().Done():
		}
		return
	}
	// The status says how it ended before its output ends, as with a real
	// kubelet more often than not.
	phase := corev1.PodSucceeded
	if fp.Exit != 0 {
		phase = corev1.PodFailed
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: parts[0], Name: parts[1]}}
	k.setStatus(r.Context(), p, phase, corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: fp.Exit, FinishedAt: metav1.Now()}})
}
