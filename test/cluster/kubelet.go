package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"syscall"
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
	// Run, when set, is the container instead: started with the Pod, its
	// output lines (stdout and stderr) are the log, its exit status the
	// container's; deleting the Pod interrupts it (SIGINT).
	Run *exec.Cmd
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
	// A running container's (Run) output so far, and whether it exited.
	mu     sync.Mutex
	more   *sync.Cond
	out    []string
	exited bool
}

// start runs the container's command, keeping its output lines.
func (fp *fakePod) start() error {
	fp.more = sync.NewCond(&fp.mu)
	r, w := io.Pipe()
	fp.Run.Stdout, fp.Run.Stderr = w, w
	if err := fp.Run.Start(); err != nil {
		return err
	}
	go func() {
		err := fp.Run.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			fp.Exit = int32(ee.ExitCode())
		} else if err != nil {
			fp.Exit = 128
		}
		w.Close() // after Exit: the output's end says it is set
	}()
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			fp.mu.Lock()
			fp.out = append(fp.out, sc.Text())
			fp.mu.Unlock()
			fp.more.Broadcast()
		}
		io.Copy(io.Discard, r)
		fp.mu.Lock()
		fp.exited = true
		fp.mu.Unlock()
		fp.more.Broadcast()
	}()
	return nil
}

// follow writes the running container's output as it comes, until it
// exited (true) or ctx ended.
func (fp *fakePod) follow(ctx context.Context, write func([]string)) bool {
	stop := context.AfterFunc(ctx, func() { fp.more.Broadcast() })
	defer stop()
	for i := 0; ; {
		fp.mu.Lock()
		for i == len(fp.out) && !fp.exited && ctx.Err() == nil {
			fp.more.Wait()
		}
		lines, exited := fp.out[i:], fp.exited
		fp.mu.Unlock()
		write(lines)
		i += len(lines)
		if ctx.Err() != nil {
			return false
		}
		if exited && len(lines) == 0 {
			return true
		}
	}
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
	// On the first node, and on the node with a data path (JoinNode),
	// which the API server reaches at its own address.
	namespaces := []nf.NetNS{c.Node}
	if c.data != nil {
		namespaces = append(namespaces, c.data.NS)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, ns := range namespaces {
		var l net.Listener
		err := nf.InNetNS(ns, func() (err error) {
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
		t.Cleanup(func() {
			srv.CloseClientConnections()
			srv.Close()
		})
	}
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
			if fp.Run != nil {
				if err := fp.start(); err != nil {
					fp.Waiting = "RunContainerError"
				}
			}
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
				if fp.Run != nil && fp.Run.Process != nil {
					fp.Run.Process.Signal(syscall.SIGINT)
				}
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
	if fp.Run != nil {
		if !fp.follow(r.Context(), write) {
			return
		}
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
