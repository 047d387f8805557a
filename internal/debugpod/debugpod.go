// Package debugpod runs svctrace on a chosen node from afar, as kubectl
// debug node/NAME --profile=sysadmin would: a privileged Pod bound to the
// node, in its network, PID and IPC namespaces, with the node's root
// filesystem at /host. It creates the Pod, waits for it to start, streams its
// output, and deletes it whatever happens.
package debugpod

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// Container is the debug Pod's one container.
	Container = "svctrace"
	// ManagedBy is the value of the Pods' app.kubernetes.io/managed-by
	// label: kubectl delete pod -A -l app.kubernetes.io/managed-by=kubectl-svctrace
	// finds any left behind.
	ManagedBy = "kubectl-svctrace"
	// HostRoot is where the node's root filesystem is mounted, as in
	// kubectl debug's sysadmin profile.
	HostRoot = "/host"
	// gracePeriod is how long svctrace has to detach after SIGTERM; it
	// needs well under a second.
	gracePeriod = 15
)

// Spec says which debug Pod to run.
type Spec struct {
	Namespace string
	Node      string
	Image     string
	// Args are svctrace's arguments.
	Args []string
	// ServiceAccount, if set, is the Pod's service account, whose token
	// svctrace then uses. Unset, no token is mounted and svctrace reads the
	// API with the node's kubelet credentials under /host.
	ServiceAccount string
	// Deadline ends the Pod after this long, should nobody be left to
	// delete it; 0: no deadline.
	Deadline time.Duration
	// Env is added to the container's environment.
	Env map[string]string
}

// Pod is the debug Pod for s: kubectl debug's node debugging Pod with the
// sysadmin profile (k8s.io/kubectl/pkg/cmd/debug: generateNodeDebugPod,
// profileSysadmin), plus what svctrace wants: its node's name in NODE_NAME,
// no service account token unless asked for, a deadline, and the last log
// lines as the termination message when svctrace fails.
func Pod(s Spec) *corev1.Pod {
	yes := true
	env := []corev1.EnvVar{{Name: "NODE_NAME", Value: s.Node}}
	for _, k := range slices.Sorted(maps.Keys(s.Env)) {
		env = append(env, corev1.EnvVar{Name: k, Value: s.Env[k]})
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			// The API server shortens the prefix to fit its random suffix.
			GenerateName: "svctrace-" + strings.TrimSuffix(s.Node, ".") + "-",
			Namespace:    s.Namespace,
			Labels: map[string]string{
				"app.kubernetes.io/managed-by": ManagedBy,
				"app.kubernetes.io/name":       "svctrace",
			},
		},
		Spec: corev1.PodSpec{
			NodeName:      s.Node,
			RestartPolicy: corev1.RestartPolicyNever,
			// Whatever taints the node has: the node is the point.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			HostNetwork: true,
			HostPID:     true,
			HostIPC:     true,
			Containers: []corev1.Container{{
				Name:                     Container,
				Image:                    s.Image,
				Command:                  append([]string{"svctrace"}, s.Args...),
				Env:                      env,
				SecurityContext:          &corev1.SecurityContext{Privileged: &yes},
				VolumeMounts:             []corev1.VolumeMount{{Name: "host-root", MountPath: HostRoot}},
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
			Volumes: []corev1.Volume{{Name: "host-root", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}},
			ServiceAccountName:            s.ServiceAccount,
			AutomountServiceAccountToken:  boolPtr(s.ServiceAccount != ""),
			EnableServiceLinks:            boolPtr(false),
			TerminationGracePeriodSeconds: int64Ptr(gracePeriod),
		},
	}
	if s.Deadline > 0 {
		p.Spec.ActiveDeadlineSeconds = int64Ptr(int64(s.Deadline.Round(time.Second) / time.Second))
	}
	return p
}

func boolPtr(b bool) *bool    { return &b }
func int64Ptr(n int64) *int64 { return &n }

// CheckSysadmin says what p lacks of the sysadmin profile svctrace needs:
// privileged, the node's network, PID and IPC namespaces, the node's root
// at /host, pinned to its node, never restarted. A mutating admission
// webhook may have taken some away from the Pod asked for.
func CheckSysadmin(p *corev1.Pod) error {
	s := p.Spec
	var lacks []string
	if s.NodeName == "" {
		lacks = append(lacks, "no node")
	}
	if !s.HostNetwork || !s.HostPID || !s.HostIPC {
		lacks = append(lacks, "not in the node's network, PID and IPC namespaces")
	}
	if s.RestartPolicy != corev1.RestartPolicyNever {
		lacks = append(lacks, "restartPolicy "+string(s.RestartPolicy))
	}
	if !slices.ContainsFunc(s.Tolerations, func(t corev1.Toleration) bool { return t.Operator == corev1.TolerationOpExists && t.Key == "" }) {
		lacks = append(lacks, "does not tolerate every taint")
	}
	i := slices.IndexFunc(s.Containers, func(c corev1.Container) bool { return c.Name == Container })
	if i < 0 {
		return fmt.Errorf("no %s container", Container)
	}
	c := s.Containers[i]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		lacks = append(lacks, "not privileged")
	}
	root := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.MountPath == HostRoot && slices.ContainsFunc(s.Volumes, func(v corev1.Volume) bool {
			return v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == "/"
		})
	})
	if !root {
		lacks = append(lacks, "the node's / is not mounted at "+HostRoot)
	}
	if len(lacks) > 0 {
		return errors.New(strings.Join(lacks, ", "))
	}
	return nil
}
