package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/svctrace/svctrace/internal/debugpod"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// pluginName is the name kubectl finds its plugin by: `kubectl svctrace`
// runs kubectl-svctrace, this binary under that name (a copy or a link).
const pluginName = "kubectl-svctrace"

// isPlugin says whether svctrace was started as the kubectl plugin.
func isPlugin(argv0 string) bool {
	base := filepath.Base(argv0)
	return base == pluginName || base == pluginName+".exe"
}

// maxNodes is how many nodes the plugin traces on without being told which:
// each gets a privileged Pod.
const maxNodes = 5

// pluginOptions are the flags of kubectl svctrace.
type pluginOptions struct {
	*globals
	kube         *kubeFlags
	namespace    string // -n, or the kubeconfig context's, once run began
	nodes        []string
	from         string
	image        string
	podNamespace string
	account      string
	startTimeout time.Duration
	duration     time.Duration
	count        int
	timeout      time.Duration
	probe        string
}

const pluginExamples = `  # trace Service web in namespace shop on the nodes its endpoints run on
  kubectl svctrace web -n shop

  # on the node of a failing client Pod, and let svctrace connect from it
  kubectl svctrace web -n shop --from pod/frontend-7d4b9 --probe

  # on given nodes, for 10 minutes, as JSON (each line names the node in "traced_on")
  kubectl svctrace web -n shop --node w1,w2 --duration 10m -o json

  # only the diagnosis, on the nodes its endpoints run on
  kubectl svctrace check web -n shop

  # once per cluster: the namespace for the debug pods, and the roles
  kubectl apply -f deploy/rbac.yaml

  # with your own image
  kubectl svctrace web -n shop --image registry.example.com/svctrace:v1`

func newPlugin(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	o := &pluginOptions{globals: g}
	root := &cobra.Command{
		Use:   pluginName + " SERVICE [-n NAMESPACE]",
		Short: "Trace a Service on the nodes that matter, from your own machine",
		Long: `kubectl svctrace runs svctrace where a Service's traffic goes, without logging in to a node.
For each node it creates a debug Pod like kubectl debug node/NAME --profile=sysadmin does
(privileged, in the node's network, PID and IPC namespaces, the node's / at /host), streams
svctrace's output, and deletes the Pod when svctrace ends, fails, or you press Ctrl-C.

The nodes: --node, else the node --from's Pod runs on (a failing client: its node is where
the Service address is translated), else the nodes the Service's endpoints run on.

Set up once: kubectl apply -f deploy/rbac.yaml. It creates namespace svctrace, where Pod
Security admission lets the debug Pods run privileged, and lets its default service account
read what svctrace in the Pods needs. You need to read the Service, its EndpointSlices, Pods
and Nodes, and to create, watch and delete Pods and read their logs in namespace svctrace:
the file's bindings show how to grant it.

The image: $SVCTRACE_IMAGE or --image, built from svctrace's Dockerfile.`,
		Example:       pluginExamples,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl svctrace"},
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return o.run(cmd.Context(), args[0], false)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentPreRunE = g.checkOutput
	pf := root.PersistentFlags()
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json (one object per line)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "say what the plugin does, and run svctrace with --verbose")
	pf.BoolVar(&g.noColor, "no-color", false, "no colors in text output (also: NO_COLOR; never when not a terminal)")
	pf.StringVar(&g.backend, "backend", "", "force svctrace's kernel backend: netfilter-link, fentry or kprobe")
	o.kube = addKubeFlags(pf, "the Service's namespace (default: the kubeconfig context's, else \"default\")")
	pf.Lookup("kubeconfig").Usage = "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)"
	pf.StringSliceVar(&o.nodes, "node", nil, "run on these nodes (comma-separated or repeated)")
	pf.StringVar(&o.from, "from", "", "pod/NAME (pod/NAMESPACE/NAME outside -n): run on the node this client Pod runs on; with --probe, connect from it")
	pf.StringVar(&o.image, "image", "", "the svctrace image (default: $SVCTRACE_IMAGE, else "+defaultImage()+")")
	pf.StringVar(&o.podNamespace, "pod-namespace", "svctrace", "where to create the debug Pods: a namespace that allows privileged Pods (deploy/rbac.yaml creates svctrace)")
	pf.StringVar(&o.account, "service-account", "default", "the debug Pods' service account, whose token svctrace reads the Service with (\"\": none, the node's kubelet credentials, which cannot read EndpointSlices)")
	pf.DurationVar(&o.startTimeout, "pod-running-timeout", 2*time.Minute, "how long to wait for a debug Pod to start (image pull included)")
	f := root.Flags()
	f.DurationVar(&o.duration, "duration", time.Hour, "stop after this long; the debug Pods end then too, should kubectl svctrace be killed (0: until Ctrl-C)")
	f.IntVar(&o.count, "count", 0, "stop after this many connections on each node")
	f.DurationVar(&o.timeout, "timeout", 5*time.Second, "report a connection as no-reply after this long without an answer")
	f.StringVar(&o.probe, "probe", "", "open a test connection to each of the Service's ClusterIP ports from the node (or --from's Pod), trace it and stop; --probe=http sends GET /")
	f.Lookup("probe").NoOptDefVal = string(probe.Connect)
	check := &cobra.Command{
		Use:   "check SERVICE [-n NAMESPACE]",
		Short: "Diagnose a Service on the nodes that matter, without tracing",
		Long: `Run svctrace check in a debug Pod on each node: the Service's objects and the kube-proxy
rules on that node, with each finding's evidence and the next step. Exits 1 when a problem
was found.`,
		Example: "  kubectl svctrace check web -n shop\n  kubectl svctrace check web -n shop --node w2 -o json",
		Args:    exactlyOneService,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args[0], true)
		},
	}
	root.AddCommand(check, newVersion(g))
	return root
}

// defaultImage is the image of this release.
func defaultImage() string {
	tag := version
	if tag == "dev" {
		tag = "latest"
	}
	return "ghcr.io/svctrace/svctrace:" + tag
}

func (o *pluginOptions) run(ctx context.Context, name string, check bool) error {
	if o.probe != "" {
		if _, err := probe.ParseKind(o.probe); err != nil {
			return err
		}
	}
	if o.from != "" && !strings.HasPrefix(o.from, "pod/") {
		return fmt.Errorf("invalid --from %q: use pod/NAME or pod/NAMESPACE/NAME", o.from)
	}
	if o.namespace = *o.kube.Namespace; o.namespace == "" {
		o.namespace = o.kube.namespace()
	}
	api, err := o.kube.connect(ctx, o.namespace, "", o.logf)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	o.logf("objects from %s", api.Describe())
	v, err := resolve.Gather(cctx, api, o.namespace, name, resolve.LocalNode{})
	if err != nil {
		return err
	}
	nodes, why, err := o.pickNodes(cctx, api, v)
	if err != nil {
		return err
	}
	intro := fmt.Sprintf("%s/%s on %s %s (%s)", o.namespace, name, plural(len(nodes), "node"), strings.Join(nodes, ", "), why)
	return o.runOn(ctx, api, nodes, o.podSpec(name, check), intro)
}

// podSpec is the debug Pods' spec, but for the node.
func (o *pluginOptions) podSpec(name string, check bool) debugpod.Spec {
	s := debugpod.Spec{Namespace: o.podNamespace, Image: o.image, Args: o.podArgs(name, check), ServiceAccount: o.account, Env: map[string]string{}}
	if s.Image == "" {
		s.Image = os.Getenv("SVCTRACE_IMAGE")
	}
	if s.Image == "" {
		s.Image = defaultImage()
	}
	// The Pods end themselves should nobody be left to delete them.
	switch {
	case check:
		s.Deadline = o.startTimeout + 5*time.Minute
	case o.duration > 0:
		s.Deadline = o.duration + o.startTimeout + 2*time.Minute
	}
	if o.output == "text" && output.UseColor(o.noColor, isTerminal(o.stdout)) {
		s.Env[output.ForceColor] = "1"
	}
	return s
}

// pickNodes chooses the nodes, and says why.
func (o *pluginOptions) pickNodes(ctx context.Context, api *resolve.API, v *resolve.View) ([]string, string, error) {
	svc := v.Service.Namespace + "/" + v.Service.Name
	if len(o.nodes) > 0 {
		for _, n := range o.nodes {
			if _, err := api.Client.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				return nil, "", fmt.Errorf("node %q not found: kubectl get nodes", n)
			} else if err != nil {
				return nil, "", fmt.Errorf("node %q: %s", n, firstLine(err.Error()))
			}
		}
		return slices.Compact(slices.Sorted(slices.Values(o.nodes))), "as asked", nil
	}
	if ns, name, ok := fromPod(o.from, o.namespace); ok {
		pod, err := api.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, "", podNotFound(ns, name)
		}
		if err != nil {
			return nil, "", fmt.Errorf("pod %s/%s: %s", ns, name, firstLine(err.Error()))
		}
		if pod.Spec.NodeName == "" {
			return nil, "", fmt.Errorf("pod %s/%s is not scheduled to a node yet: nothing of its traffic passes a node", ns, name)
		}
		return []string{pod.Spec.NodeName}, fmt.Sprintf("where pod %s/%s runs", ns, name), nil
	}
	nodes := slices.Sorted(slices.Values(v.EndpointNodes()))
	switch {
	case len(nodes) > maxNodes:
		return nil, "", fmt.Errorf("the endpoints of %s run on %d nodes: rather than a privileged Pod on each, pick with --node (comma-separated), or follow one client with --from pod/NAME",
			svc, len(nodes))
	case len(nodes) > 0:
		return nodes, "where its endpoints run", nil
	}
	// No endpoint on a node: a client's packets are translated (or turned
	// away) on its own node, and every node does it alike.
	l, err := api.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 100})
	if err != nil {
		return nil, "", fmt.Errorf("listing nodes: %s; name one with --node", firstLine(err.Error()))
	}
	node := readyNode(l.Items)
	if node == "" {
		return nil, "", fmt.Errorf("%s has no endpoints and no node is Ready: name a node with --node", svc)
	}
	why := "it has no endpoints, and every node turns clients away alike"
	if hasEndpoints(v) {
		why = "its endpoints are on no node, and every node sends clients to them alike"
	}
	return []string{node}, why + ": name the node of a failing client with --from pod/NAME or --node", nil
}

func hasEndpoints(v *resolve.View) bool {
	return slices.ContainsFunc(v.Slices, func(sl discoveryv1.EndpointSlice) bool { return len(sl.Endpoints) > 0 })
}

// readyNode is the first Ready, schedulable node by name, or "".
func readyNode(nodes []corev1.Node) string {
	slices.SortFunc(nodes, func(a, b corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range nodes {
		if n.Spec.Unschedulable {
			continue
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return n.Name
			}
		}
	}
	return ""
}

// podArgs is svctrace's command line in the debug Pods.
func (o *pluginOptions) podArgs(name string, check bool) []string {
	args := []string{name, "-n", o.namespace, "-o", o.output}
	if check {
		args = append([]string{"check"}, args...)
	} else {
		args = append(args, "--timeout", o.timeout.String())
		if o.duration > 0 {
			args = append(args, "--duration", o.duration.String())
		}
		if o.count > 0 {
			args = append(args, "--count", strconv.Itoa(o.count))
		}
		if o.probe != "" {
			args = append(args, "--probe="+o.probe)
			if o.from != "" {
				args = append(args, "--from", o.from)
			}
		}
	}
	if o.backend != "" {
		args = append(args, "--backend", o.backend)
	}
	if o.verbose {
		args = append(args, "--verbose")
	}
	return args
}

// runOn runs svctrace in a debug Pod on each node at once, with their
// output merged, and deletes the Pods.
func (o *pluginOptions) runOn(ctx context.Context, api *resolve.API, nodes []string, spec debugpod.Spec, intro string) error {
	r := &debugpod.Runner{Client: api.Client, Stream: api.Streaming(), StartTimeout: o.startTimeout, Drain: 15 * time.Second,
		Created: func(p *corev1.Pod) {
			fmt.Fprintf(o.stderr, "svctrace: debug pod %s/%s on node %s, image %s\n", p.Namespace, p.Name, p.Spec.NodeName, p.Spec.Containers[0].Image)
		}}
	on := func(node string) debugpod.Spec {
		s := spec
		s.Node = node
		return s
	}
	if err := r.Admit(ctx, on(nodes[0])); err != nil {
		return err
	}
	fmt.Fprintf(o.stderr, "svctrace: %s\n", intro)
	m := &merger{stdout: o.stdout, stderr: o.stderr, json: o.output == "json", prefix: len(nodes) > 1}
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Run(ctx, on(node), m.sink(node))
			switch {
			case err != nil:
				errs[i] = err
			case res.ExitCode > 0:
				errs[i] = errSilent // svctrace said why, or found a problem
			}
		}()
	}
	wg.Wait()
	failed := false
	for _, err := range errs {
		if err != nil && !errors.Is(err, errSilent) {
			fmt.Fprintf(o.stderr, "svctrace: %v\n", err)
		}
		failed = failed || err != nil
	}
	if failed {
		return errSilent
	}
	return nil
}

// merger writes the debug Pods' output: svctrace's messages to stderr, the
// rest to stdout, each line whole. With several nodes, text lines start
// with the node's name; JSON objects always name it in "traced_on".
type merger struct {
	mu             sync.Mutex
	stdout, stderr io.Writer
	json, prefix   bool
}

func (m *merger) sink(node string) func(string) {
	return func(line string) {
		w := m.stdout
		isObject := strings.HasPrefix(line, "{")
		switch {
		case strings.HasPrefix(line, "svctrace: "), m.json && !isObject:
			w = m.stderr
		case m.json:
			if rest := strings.TrimPrefix(line, "{"); strings.HasPrefix(strings.TrimSpace(rest), "}") {
				line = fmt.Sprintf("{\"traced_on\":%q}", node)
			} else {
				line = fmt.Sprintf("{\"traced_on\":%q,%s", node, rest)
			}
		}
		if m.prefix && (w == m.stderr || !m.json) {
			line = "[" + node + "] " + line
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		fmt.Fprintln(w, line)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return what
	}
	return what + "s"
}
