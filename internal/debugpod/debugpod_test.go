package debugpod

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestPodIsKubectlDebugSysadmin(t *testing.T) {
	p := Pod(Spec{Namespace: "debug", Node: "w1", Image: "registry.example/svctrace:v1",
		Args: []string{"web", "-n", "shop"}, Deadline: 90 * time.Minute, Env: map[string]string{"CLICOLOR_FORCE": "1"}})
	if err := CheckSysadmin(p); err != nil {
		t.Fatal(err)
	}
	s := p.Spec
	if s.NodeName != "w1" || p.Namespace != "debug" || !strings.HasPrefix(p.GenerateName, "svctrace-w1-") {
		t.Errorf("placed %s/%s on %q, want debug/svctrace-w1-… on w1", p.Namespace, p.GenerateName, s.NodeName)
	}
	c := s.Containers[0]
	if want := []string{"svctrace", "web", "-n", "shop"}; !slices.Equal(c.Command, want) {
		t.Errorf("command %q, want %q", c.Command, want)
	}
	if c.Image != "registry.example/svctrace:v1" {
		t.Errorf("image %q", c.Image)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["NODE_NAME"] != "w1" || env["CLICOLOR_FORCE"] != "1" {
		t.Errorf("env %v, want NODE_NAME=w1 and CLICOLOR_FORCE=1", env)
	}
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		t.Error("a service account token is mounted though none was asked for: svctrace would try it before the kubelet's credentials")
	}
	if s.ActiveDeadlineSeconds == nil || *s.ActiveDeadlineSeconds != 5400 {
		t.Errorf("activeDeadlineSeconds %v, want 5400", s.ActiveDeadlineSeconds)
	}
	if p.Labels["app.kubernetes.io/managed-by"] != ManagedBy {
		t.Errorf("labels %v", p.Labels)
	}
	withSA := Pod(Spec{Node: "w1", ServiceAccount: "svctrace"}).Spec
	if withSA.ServiceAccountName != "svctrace" || withSA.AutomountServiceAccountToken == nil || !*withSA.AutomountServiceAccountToken {
		t.Errorf("with a service account: name %q, automount %v", withSA.ServiceAccountName, withSA.AutomountServiceAccountToken)
	}
	if Pod(Spec{Node: "w1"}).Spec.ActiveDeadlineSeconds != nil {
		t.Error("a deadline without one asked for")
	}
}

// kubelet plays the node's kubelet in a fake clientset: each Pod created
// gets the statuses in turn.
func kubelet(t *testing.T, statuses ...corev1.PodStatus) *fake.Clientset {
	cs := fake.NewClientset()
	n := 0
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		if p.Name == "" { // the fake does not generate names
			n++
			p.Name = fmt.Sprintf("%sx%04d", p.GenerateName, n)
		}
		return false, nil, nil
	})
	w, err := cs.CoreV1().Pods("").Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type != "ADDED" {
				continue
			}
			for _, st := range statuses {
				time.Sleep(20 * time.Millisecond)
				p.Status = st
				if p, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
					return
				}
			}
		}
	}()
	return cs
}

func container(state corev1.ContainerState) corev1.PodStatus {
	phase := corev1.PodPending
	switch {
	case state.Running != nil:
		phase = corev1.PodRunning
	case state.Terminated != nil:
		phase = corev1.PodSucceeded
		if state.Terminated.ExitCode != 0 {
			phase = corev1.PodFailed
		}
	}
	return corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{{Name: Container, Image: "registry.example/svctrace:v1", State: state}}}
}

func runner(cs *fake.Clientset) *Runner {
	return &Runner{Client: cs, Stream: cs, StartTimeout: 2 * time.Second, Drain: time.Second}
}

// left lists the debug Pods still there.
func left(t *testing.T, cs *fake.Clientset) []string {
	l, err := cs.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range l.Items {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	return names
}

var spec = Spec{Namespace: "debug", Node: "w1", Image: "registry.example/svctrace:v1", Args: []string{"web", "-n", "shop"}, ServiceAccount: "svctrace"}

func TestRunStreamsOutputAndExitStatus(t *testing.T) {
	cs := kubelet(t,
		container(corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}),
		container(corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}))
	var lines []string
	res, err := runner(cs).Run(context.Background(), spec, func(l string) { lines = append(lines, l) })
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 1 || !strings.HasPrefix(res.Pod, "debug/svctrace-w1-") {
		t.Errorf("result %+v, want svctrace's exit status 1 from debug/svctrace-w1-…", res)
	}
	if !slices.Equal(lines, []string{"fake logs"}) { // what the fake's logs say
		t.Errorf("output %q", lines)
	}
	if l := left(t, cs); len(l) > 0 {
		t.Errorf("debug pods left behind: %v", l)
	}
}

func TestRunExplainsWhyThePodDoesNotStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status []corev1.PodStatus
		want   string
	}{
		{"image", []corev1.PodStatus{container(corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "rpc error: not found"}})},
			"node w1 cannot pull image registry.example/svctrace:v1 (ErrImagePull: rpc error: not found): build it from the Dockerfile"},
		{"refused", []corev1.PodStatus{{Phase: corev1.PodFailed, Reason: "OutOfpods", Message: "Node didn't have enough resource: pods"}},
			"the kubelet of node w1 refused debug pod debug/svctrace-w1-x0001 (Failed, OutOfpods, Node didn't have enough resource: pods)"},
		{"silent", nil, "did not start on node w1 within 2s (Pending, no status from the node's kubelet yet): is the node Ready?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := kubelet(t, tc.status...)
			_, err := runner(cs).Run(context.Background(), spec, func(string) { t.Error("output from a Pod that never ran") })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to say %q", err, tc.want)
			}
			if l := left(t, cs); len(l) > 0 {
				t.Errorf("debug pods left behind: %v", l)
			}
		})
	}
}

func TestRunInterruptedWhileStartingDeletes(t *testing.T) {
	cs := kubelet(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	if _, err := runner(cs).Run(ctx, spec, func(string) {}); err != nil {
		t.Errorf("interrupted: %v, want no error", err)
	}
	if l := left(t, cs); len(l) > 0 {
		t.Errorf("debug pods left behind: %v", l)
	}
}

func TestCreateRefusals(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{apierrors.NewForbidden(gr, "", fmt.Errorf(`violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)`)),
			`namespace debug does not allow privileged Pods (Pod Security admission enforces "baseline:latest" there)`},
		{apierrors.NewForbidden(gr, "", fmt.Errorf(`User "dev" cannot create resource "pods"`)),
			"not allowed to create the debug pod in namespace debug"},
		{apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "svctrace-w1-x", field.ErrorList{field.Forbidden(field.NewPath("spec", "containers").Index(0).Child("securityContext", "privileged"), "disallowed by cluster policy")}),
			"this cluster allows no privileged containers (kube-apiserver --allow-privileged=false)"},
		{apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "debug"), "namespace debug not found: create it with kubectl apply -f deploy/rbac.yaml"},
		{apierrors.NewForbidden(gr, "svctrace-w1-x", fmt.Errorf(`error looking up service account debug/svctrace: serviceaccount "svctrace" not found`)),
			"service account debug/svctrace not found: name another with --service-account"},
	} {
		cs := fake.NewClientset()
		cs.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, tc.err })
		_, err := runner(cs).Run(context.Background(), spec, func(string) {})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want it to say %q", err, tc.want)
		}
	}
}

func TestRunRefusesAPodAWebhookDefanged(t *testing.T) {
	cs := kubelet(t, container(corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}))
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		p.Spec.Containers[0].SecurityContext = nil
		p.Spec.HostPID = false
		return false, nil, nil
	})
	_, err := runner(cs).Run(context.Background(), spec, func(string) { t.Error("output from a Pod that cannot trace") })
	want := "the API server changed the debug pod debug/svctrace-w1-x0001 (an admission webhook or policy?): not in the node's network, PID and IPC namespaces, not privileged"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want it to say %q", err, want)
	}
	if l := left(t, cs); len(l) > 0 {
		t.Errorf("debug pods left behind: %v", l)
	}
}
