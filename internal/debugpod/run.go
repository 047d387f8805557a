package debugpod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// Runner runs debug Pods.
type Runner struct {
	// Client's requests each end after a timeout; Stream's last (watches,
	// following the logs).
	Client, Stream kubernetes.Interface
	// StartTimeout bounds the wait for the Pod to run (image pull
	// included).
	StartTimeout time.Duration
	// Drain is how long the output is still read after an interruption
	// deleted the Pod: svctrace prints its summary as it stops.
	Drain time.Duration
	// Created hears of each Pod created.
	Created func(*corev1.Pod)
}

// Result is how a debug Pod's svctrace ended.
type Result struct {
	Pod string // namespace/name
	// ExitCode is svctrace's exit status; -1 when unknown (interrupted, or
	// the Pod went away first).
	ExitCode int
}

// Run creates the debug Pod for s, waits for it to start, passes each line
// of its output to line, and deletes the Pod, on every path out. The
// returned error is one line with the next step to take.
func (r *Runner) Run(ctx context.Context, s Spec, line func(string)) (res Result, err error) {
	res.ExitCode = -1
	pods := r.Client.CoreV1().Pods(s.Namespace)
	pod, err := pods.Create(ctx, Pod(s), metav1.CreateOptions{})
	if err != nil {
		return res, createError(err, s)
	}
	res.Pod = s.Namespace + "/" + pod.Name
	if r.Created != nil {
		r.Created(pod)
	}
	deleted := false
	defer func() {
		if !deleted {
			err = errors.Join(err, r.delete(s.Namespace, pod.Name))
		}
	}()
	if err := CheckSysadmin(pod); err != nil {
		return res, fmt.Errorf("the API server changed the debug pod %s (an admission webhook or policy?): %v; svctrace cannot trace the node without it: kubectl get pod -n %s %s -o yaml",
			res.Pod, err, s.Namespace, pod.Name)
	}
	if err := r.waitStarted(ctx, pod); err != nil || ctx.Err() != nil {
		return res, err // interrupted: nil, and the Pod is deleted
	}
	// The output is read with its own context: an interruption deletes the
	// Pod, and the output goes on to its end (svctrace's summary) for up to
	// Drain.
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	finished := make(chan struct{})
	defer close(finished)
	interrupted := make(chan error, 1)
	go func() {
		select {
		case <-finished:
			return
		case <-ctx.Done():
		}
		interrupted <- r.delete(s.Namespace, pod.Name)
		select {
		case <-finished:
		case <-time.After(r.Drain):
			stop()
		}
	}()
	if err := r.follow(sctx, pod, line); err != nil && ctx.Err() == nil {
		return res, err
	}
	if ctx.Err() != nil {
		deleted = true
		return res, <-interrupted
	}
	res.ExitCode, err = r.exitCode(ctx, pod)
	if ctx.Err() != nil {
		return res, nil
	}
	return res, err
}

// follow passes each line of the Pod's output to line, until it ends.
func (r *Runner) follow(ctx context.Context, pod *corev1.Pod, line func(string)) error {
	rc, err := r.Stream.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: Container, Follow: true}).Stream(ctx)
	if err != nil {
		return fmt.Errorf("reading the output of debug pod %s/%s on node %s: %s (is the node's kubelet reachable from the API server? kubectl logs -n %s %s)",
			pod.Namespace, pod.Name, pod.Spec.NodeName, oneLine(err.Error()), pod.Namespace, pod.Name)
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 64<<20) // a connection with 200 steps is one long JSON line
	for sc.Scan() {
		line(sc.Text())
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading the output of debug pod %s/%s: %s", pod.Namespace, pod.Name, oneLine(err.Error()))
	}
	return nil
}

// exitCode waits a little for the kubelet to report how svctrace ended:
// its output can end before the Pod's status says so.
func (r *Runner) exitCode(ctx context.Context, pod *corev1.Pod) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	code := -1
	_, err := r.until(ctx, pod, func(p *corev1.Pod) (bool, error) {
		if t := terminated(p); t != nil {
			code = int(t.ExitCode)
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return -1, fmt.Errorf("debug pod %s/%s: svctrace's output ended, but its exit status did not come: %s", pod.Namespace, pod.Name, oneLine(err.Error()))
	}
	return code, nil
}

// waitStarted waits until svctrace runs, or ran, in the Pod.
func (r *Runner) waitStarted(ctx context.Context, pod *corev1.Pod) error {
	wctx, cancel := context.WithTimeout(ctx, r.StartTimeout)
	defer cancel()
	last := pod
	_, err := r.until(wctx, pod, func(p *corev1.Pod) (bool, error) {
		last = p
		return started(p)
	})
	if err == nil || ctx.Err() != nil {
		return nil
	}
	var se *StartError
	if errors.As(err, &se) {
		return err
	}
	if wctx.Err() != nil {
		return fmt.Errorf("debug pod %s/%s did not start on node %s within %s (%s): is the node Ready? kubectl describe pod -n %s %s, or wait longer with --pod-running-timeout",
			pod.Namespace, pod.Name, pod.Spec.NodeName, r.StartTimeout, describe(last), pod.Namespace, pod.Name)
	}
	return fmt.Errorf("waiting for debug pod %s/%s: %s", pod.Namespace, pod.Name, oneLine(err.Error()))
}

// until watches the Pod until cond holds (or fails), from its state now.
func (r *Runner) until(ctx context.Context, pod *corev1.Pod, cond func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	byName := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", pod.Name).String()
	}
	pods := r.Client.CoreV1().Pods(pod.Namespace)
	watching := r.Stream.CoreV1().Pods(pod.Namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			byName(&o)
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			byName(&o)
			return watching.Watch(ctx, o)
		},
	}
	ev, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || p.Name != pod.Name {
			return false, nil
		}
		if ev.Type == watch.Deleted {
			return false, &StartError{Pod: p, msg: fmt.Sprintf("debug pod %s/%s was deleted (by someone else?) before svctrace ended", p.Namespace, p.Name)}
		}
		return cond(p)
	})
	if err != nil {
		return nil, err
	}
	p, _ := ev.Object.(*corev1.Pod)
	return p, nil
}

// StartError: the debug Pod cannot run svctrace, and waiting will not help.
type StartError struct {
	Pod *corev1.Pod
	msg string
}

func (e *StartError) Error() string { return e.msg }

// started says whether svctrace runs or ran in p, or an error when it
// never will.
func started(p *corev1.Pod) (bool, error) {
	where := fmt.Sprintf("debug pod %s/%s on node %s", p.Namespace, p.Name, p.Spec.NodeName)
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil {
			return true, nil
		}
		w := cs.State.Waiting
		if w == nil {
			continue
		}
		switch w.Reason {
		case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull":
			return false, &StartError{Pod: p, msg: fmt.Sprintf("node %s cannot pull image %s (%s: %s): build it from the Dockerfile, push it where the nodes can pull it, and pass --image (or set SVCTRACE_IMAGE)",
				p.Spec.NodeName, cs.Image, w.Reason, oneLine(w.Message))}
		case "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
			return false, &StartError{Pod: p, msg: fmt.Sprintf("%s cannot start svctrace (%s: %s): kubectl describe pod -n %s %s",
				where, w.Reason, oneLine(w.Message), p.Namespace, p.Name)}
		}
	}
	if p.Status.Phase == corev1.PodFailed {
		// Failed before its container ran: the kubelet refused the Pod.
		return false, &StartError{Pod: p, msg: fmt.Sprintf("the kubelet of node %s refused debug pod %s/%s (%s): kubectl describe pod -n %s %s",
			p.Spec.NodeName, p.Namespace, p.Name, describe(p), p.Namespace, p.Name)}
	}
	return false, nil
}

// terminated is the svctrace container's end, or nil.
func terminated(p *corev1.Pod) *corev1.ContainerStateTerminated {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == Container && cs.State.Terminated != nil {
			return cs.State.Terminated
		}
	}
	return nil
}

// describe says where a Pod is on its way to running, for messages.
func describe(p *corev1.Pod) string {
	parts := []string{string(p.Status.Phase)}
	if p.Status.Phase == "" {
		parts[0] = "Pending"
	}
	if p.Status.Reason != "" {
		parts = append(parts, p.Status.Reason)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			parts = append(parts, w.Reason)
		}
	}
	if len(p.Status.ContainerStatuses) == 0 && p.Status.Phase == "" {
		parts = append(parts, "no status from the node's kubelet yet")
	}
	if p.Status.Message != "" {
		parts = append(parts, oneLine(p.Status.Message))
	}
	return strings.Join(parts, ", ")
}

// delete deletes the Pod, even when the caller's context has ended.
func (r *Runner) delete(ns, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := r.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err == nil || apierrors.IsNotFound(err) {
		return nil
	}
	return fmt.Errorf("debug pod %s/%s could not be deleted (%s): delete it yourself: kubectl delete pod -n %s %s", ns, name, oneLine(err.Error()), ns, name)
}

// Admit asks the API server whether it would create the debug Pod for s
// (a dry run: admission and authorization, nothing stored), so that a
// refusal is one error before any Pod exists.
func (r *Runner) Admit(ctx context.Context, s Spec) error {
	_, err := r.Client.CoreV1().Pods(s.Namespace).Create(ctx, Pod(s), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return createError(err, s)
	}
	return nil
}

// podSecurityLevel finds the level in Pod Security admission's refusal:
// violates PodSecurity "baseline:latest": ….
var podSecurityLevel = regexp.MustCompile(`violates PodSecurity "([^"]+)"`)

// createError explains why the API server refused the debug Pod.
func createError(err error, s Spec) error {
	msg := oneLine(err.Error())
	switch {
	case apierrors.IsForbidden(err) && strings.Contains(msg, "PodSecurity"):
		level := "a level below privileged"
		if m := podSecurityLevel.FindStringSubmatch(msg); m != nil {
			level = fmt.Sprintf("%q", m[1])
		}
		return fmt.Errorf("namespace %s does not allow privileged Pods (Pod Security admission enforces %s there): run the debug pods in a namespace labelled pod-security.kubernetes.io/enforce=privileged, with --pod-namespace (docs/debug-node.md)", s.Namespace, level)
	case apierrors.IsForbidden(err) && strings.Contains(msg, "error looking up service account"):
		return fmt.Errorf("service account %s/%s not found: name another with --service-account (deploy/rbac.yaml lets namespace svctrace's default one read what svctrace needs)", s.Namespace, s.ServiceAccount)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("not allowed to create the debug pod in namespace %s (%s): kubectl svctrace needs create, get, list, watch and delete on pods and get on pods/log there (deploy/rbac.yaml: Role svctrace-debugger), or use --pod-namespace", s.Namespace, msg)
	case apierrors.IsInvalid(err) && strings.Contains(msg, "privileged") && strings.Contains(msg, "disallowed by cluster policy"):
		return fmt.Errorf("this cluster allows no privileged containers (kube-apiserver --allow-privileged=false), and svctrace needs one on the node: run svctrace on the node itself (README: on a node)")
	case apierrors.IsNotFound(err):
		return fmt.Errorf("namespace %s not found: create it with kubectl apply -f deploy/rbac.yaml (a namespace for privileged debug pods, with the svctrace service account), or pick one with --pod-namespace", s.Namespace)
	}
	return fmt.Errorf("creating the debug pod on node %s in namespace %s: %s", s.Node, s.Namespace, msg)
}

// oneLine is a message on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
