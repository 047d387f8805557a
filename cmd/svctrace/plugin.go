package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/debugpod"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/plugin"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/resolve"
)

// pluginName is the name kubectl finds its plugin by: `kubectl svctrace`
// runs kubectl-svctrace, this binary under that name (a copy or a link).
const pluginName = "kubectl-svctrace"

// isPlugin says whether svctrace was started as the kubectl plugin.
func isPlugin(argv0 string) bool {
	base := filepath.Base(argv0)
	return base == pluginName || base == pluginName+".exe"
}

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
	dnsQs        bool // --dns-questions
	// -A, and what goes with it (see svctrace -A).
	allNamespaces bool
	allVerdicts   bool
	summaryEvery  time.Duration
}

const pluginExamples = `  # trace Service web in namespace shop on the nodes its endpoints run on
  kubectl svctrace web -n shop

  # on the node of a failing client Pod, and let svctrace connect from it
  kubectl svctrace web -n shop --from pod/frontend-7d4b9 --probe

  # on given nodes, for 10 minutes, as JSON (each line names the node in "traced_on")
  kubectl svctrace web -n shop --node w1,w2 --duration 10m -o json

  # only the diagnosis, on the nodes its endpoints run on
  kubectl svctrace check web -n shop

  # which Service is failing on node w2? Every Service crossing it, failing connections only
  kubectl svctrace -A --node w2

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
the Service address is translated) and its endpoints' nodes, else the nodes the Service's
endpoints run on. On several nodes, each connection is printed once, stitched across the
nodes it crossed: every step with its node (the DNAT on the client's, the overlay packet
carrying it, the endpoint's node taking it in), one verdict, and the node it died on or the
two it was lost between; each waits --timeout + 5s for the other nodes' report of it.

With -A (or -n NAMESPACE and no Service) and --node, svctrace -A runs on those nodes: every
Service crossing each one, its failing connections, and a table per Service port.

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
		RunE:          func(cmd *cobra.Command, args []string) error { return o.dispatch(cmd, args, false) },
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
	f.StringVar(&o.probe, "probe", "", "open a test connection to each of the Service's ClusterIP ports from the node (or --from's Pod), trace it and stop; --probe=http sends GET /; --probe=dns resolves the Service's name first, as the Pod does")
	f.Lookup("probe").NoOptDefVal = string(probe.Connect)
	pf.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "every Service of every namespace (-n NAMESPACE without a Service: of that namespace) on the --node nodes: failing connections and a table per Service port (check -A: one line per Service with a problem)")
	f.BoolVar(&o.allVerdicts, "all-verdicts", false, "with -A: print answered connections too (without it, the kernel only counts them: cheaper)")
	f.DurationVar(&o.summaryEvery, "summary-every", 0, "with -A: print the table per Service port this often, not only at the end")
	f.BoolVar(&o.dnsQs, "dns-questions", true, "when the cluster's DNS Service is traced, read each query's name, type and answer code from its DNS header and first question (--dns-questions=false: headers only)")
	check := &cobra.Command{
		Use:   "check (SERVICE [-n NAMESPACE] | -A --node NODE)",
		Short: "Diagnose a Service on the nodes that matter, without tracing",
		Long: `Run svctrace check in a debug Pod on each node: the Service's objects and the kube-proxy
rules on that node, with each finding's evidence and the next step; with -A and --node,
every Service on those nodes, one line per Service with a problem. Exits 1 when a problem
was found.`,
		Example: "  kubectl svctrace check web -n shop\n  kubectl svctrace check web -n shop --node w2 -o json\n  kubectl svctrace check -A --node w2",
		Args:    cobra.MaximumNArgs(1),
		RunE:    func(cmd *cobra.Command, args []string) error { return o.dispatch(cmd, args, true) },
	}
	root.AddCommand(check, newVersion(g))
	return root
}

// stitchSlack is how much longer than --timeout the plugin holds one
// node's report of a connection for the others': their Pods' output
// reaches it through the API server, seconds apart on a busy cluster.
const stitchSlack = 5 * time.Second

// defaultImage is the image of this release.
func defaultImage() string {
	tag := version
	if tag == "dev" {
		tag = "latest"
	}
	return "ghcr.io/svctrace/svctrace:" + tag
}

// dispatch runs on one Service's nodes, or svctrace -A on --node's.
func (o *pluginOptions) dispatch(cmd *cobra.Command, args []string, check bool) error {
	nsGiven := cmd.Flags().Changed("namespace")
	switch {
	case len(args) == 1 && o.allNamespaces:
		return fmt.Errorf("-A is every Service of every namespace: name no Service, or drop -A")
	case len(args) == 1:
		return o.run(cmd.Context(), args[0], check)
	case o.allNamespaces && nsGiven:
		return fmt.Errorf("-A is every namespace: it does not go with -n")
	case o.allNamespaces || nsGiven:
		return o.runAll(cmd.Context(), check)
	case check:
		return fmt.Errorf("name one Service (kubectl svctrace check web -n shop), or check every Service with -A --node NODE")
	}
	return cmd.Help()
}

// runAll runs svctrace -A (or check -A) on the nodes --node names.
func (o *pluginOptions) runAll(ctx context.Context, check bool) error {
	switch {
	case len(o.nodes) == 0:
		return fmt.Errorf("-A traces the nodes you name: add --node NODE (kubectl get nodes lists them)")
	case o.probe != "" || o.from != "":
		return fmt.Errorf("--probe and --from are about one Service: name it (kubectl svctrace web -n shop --from pod/NAME)")
	}
	if o.namespace = *o.kube.Namespace; o.namespace == "" {
		o.namespace = o.kube.namespace()
	}
	api, err := o.kube.connect(ctx, o.namespace, "", o.logf)
	if err != nil {
		return err
	}
	o.logf("objects from %s", api.Describe())
	scope := "every Service of namespace " + o.namespace
	if o.allNamespaces {
		scope = "every Service of every namespace"
	}
	intro := fmt.Sprintf("%s on %s %s (--node)", scope, plugin.Plural(len(o.nodes), "node"), strings.Join(o.nodes, ", "))
	return plugin.Run(ctx, api, o.nodes, o.podSpec("", check), o.startTimeout, intro, o.logger(), o.stdout, o.stderr, o.format == output.FormatJSON, nil)
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
	nodes, why, err := plugin.Nodes(cctx, api, v, o.nodes, o.from, o.namespace)
	if err != nil {
		return err
	}
	intro := fmt.Sprintf("%s/%s on %s %s (%s)", o.namespace, name, plugin.Plural(len(nodes), "node"), strings.Join(nodes, ", "), why)
	spec := o.podSpec(name, check)
	var stitched *plugin.Stitched
	if !check && len(nodes) > 1 {
		// Each connection once, across the nodes it crossed: the Pods
		// report in full (-o parts) and are stitched here, each held
		// until the other nodes had the time to report it.
		spec.Args = o.podArgs(name, check, output.FormatParts)
		if stitched, err = plugin.NewStitched(o.printer, o.timeout+stitchSlack); err != nil {
			return err
		}
		intro += "; each connection stitched across them"
	}
	return plugin.Run(ctx, api, nodes, spec, o.startTimeout, intro, o.logger(), o.stdout, o.stderr, o.format == output.FormatJSON, stitched)
}

// podSpec is the debug Pods' spec, but for the node.
func (o *pluginOptions) podSpec(name string, check bool) debugpod.Spec {
	s := debugpod.Spec{Namespace: o.podNamespace, Image: o.image, Args: o.podArgs(name, check, o.format), ServiceAccount: o.account, Env: map[string]string{}}
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
	if o.format == output.FormatText && output.UseColor(o.noColor, isTerminal(o.stdout)) {
		s.Env[output.ForceColor] = "1"
	}
	return s
}

// podArgs is svctrace's command line in the debug Pods; name "": every
// Service (-A, or -n alone).
func (o *pluginOptions) podArgs(name string, check bool, format output.Format) []string {
	args := []string{name, "-n", o.namespace, "-o", string(format)}
	switch {
	case name == "" && o.allNamespaces:
		args = []string{"-A", "-o", string(format)}
	case name == "":
		args = args[1:]
	}
	if check {
		args = append([]string{"check"}, args...)
	} else {
		if name == "" {
			if o.allVerdicts {
				args = append(args, "--all-verdicts")
			}
			if o.summaryEvery > 0 {
				args = append(args, "--summary-every", o.summaryEvery.String())
			}
		}
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
		if !o.dnsQs {
			args = append(args, "--dns-questions=false")
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
