package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/session"
)

// serviceOptions are the flags of `svctrace SERVICE` and `svctrace check`.
type serviceOptions struct {
	*globals
	kube      *kubeFlags
	namespace string // -n, or the kubeconfig context's, once source ran
	objects   string
	node      string
	netns     string
	hostRoot  string
	duration  time.Duration
	count     int
	timeout   time.Duration
	rec       recordFlags
	probe     string // --probe: "", connect or http
	from      string // --probe's source: node or pod/[NAMESPACE/]NAME
	dnsQs     bool   // --dns-questions
	// -A: every Service of every namespace (and -n without a Service:
	// every Service of that one).
	allNamespaces bool
	allVerdicts   bool          // --all-verdicts
	summaryEvery  time.Duration // --summary-every
}

const serviceExamples = `  # on a node: diagnose Service web in namespace shop, then trace its connections
  sudo svctrace web -n shop

  # only the diagnosis, as JSON
  sudo svctrace check web -n shop -o json

  # does the name resolve from Pod frontend-1 (web, web.shop, the FQDN), through kube-dns to which CoreDNS Pod, and then connect
  sudo svctrace web -n shop --probe=dns --from pod/web/frontend-1

  # ... and whether the NetworkPolicies let Pod frontend-1 of namespace web through
  sudo svctrace check web -n shop --from pod/web/frontend-1

  # which Service is failing here? Every Service crossing this node, failing connections only
  sudo svctrace -A
  # ... of one namespace, every connection, a table per Service port each minute
  sudo svctrace -n shop --all-verdicts --summary-every 1m

  # the cluster DNS itself: each query's name, type and answer code, and the CoreDNS Pod it went to
  sudo svctrace kube-dns -n kube-system

  # inside kubectl debug node/NODE -it --profile=sysadmin --image=… (uses the node's kubelet credentials)
  svctrace web -n shop

  # without API access: objects saved elsewhere with
  #   kubectl get svc,endpointslices,pods,nodes,namespaces,networkpolicies -A -o yaml > dump.yaml
  sudo svctrace web -n shop --objects dump.yaml`

func (o *serviceOptions) addFlags(cmd *cobra.Command, tracing bool) {
	f := cmd.Flags()
	o.kube = addKubeFlags(f, "the Service's namespace (default: the kubeconfig context's, else \"default\")")
	f.StringVar(&o.objects, "objects", "", "read objects from this file or directory (kubectl get … -o yaml|json) instead of the API")
	f.StringVar(&o.node, "node", "", "this node's name (default: $NODE_NAME, else the host name, else the Node with one of this host's addresses)")
	f.StringVar(&o.netns, "netns", "", "the node's network namespace: name, path or PID (default: svctrace's own)")
	f.StringVar(&o.hostRoot, "host-root", "/host", "where the node's root filesystem is mounted (kubectl debug node); kubelet credentials are looked for there")
	if tracing {
		f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "trace every Service of every namespace whose traffic can cross this node (-n NAMESPACE without a Service: every Service of that namespace), printing only connections that were not answered, and a table per Service port at the end")
		f.BoolVar(&o.allVerdicts, "all-verdicts", false, "with -A (or -n without a Service): print answered connections too (without it, the kernel only counts them: cheaper)")
		f.DurationVar(&o.summaryEvery, "summary-every", 0, "with -A (or -n without a Service): print the table per Service port this often, not only at the end (e.g. 30s)")
		f.DurationVar(&o.duration, "duration", 0, "stop after this long (default: until Ctrl-C)")
		f.IntVar(&o.count, "count", 0, "stop after this many connections")
		f.DurationVar(&o.timeout, "timeout", 5*time.Second, "report a connection as no-reply after this long without an answer")
		f.StringVar(&o.probe, "probe", "", "open a test connection to each of the Service's ClusterIP ports, trace it and stop: a TCP connect or a UDP datagram; --probe=http sends GET /; --probe=dns first resolves the Service's name as the Pod's resolver does (its resolv.conf and /etc/hosts; from the node, as a Pod of the namespace with dnsPolicy ClusterFirst), tracing each query through the cluster DNS Service, then connects to the address it got")
		f.Lookup("probe").NoOptDefVal = string(probe.Connect)
		f.StringVar(&o.from, "from", "node", "where --probe connects from: node, or pod/NAME (a Pod on this node; pod/NAMESPACE/NAME for one outside -n)")
		f.BoolVar(&o.dnsQs, "dns-questions", true, "when the cluster's DNS Service is traced (svctrace kube-dns -n kube-system, --probe=dns), read each query's name, type and answer code in the kernel from the DNS header and first question of its port-53 packets: the one exception to headers only, never payload (--dns-questions=false: headers only)")
		o.rec.add(f)
	} else {
		f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "check every Service of every namespace (-n NAMESPACE without a Service: every Service of that namespace): one line per Service with a problem")
		f.StringVar(&o.from, "from", "", "a client Pod to judge the network policies for: pod/NAME (pod/NAMESPACE/NAME outside -n)")
	}
}

func newCheck(g *globals) *cobra.Command {
	o := &serviceOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "check (SERVICE [-n NAMESPACE] | -A | -n NAMESPACE)",
		Short: "Diagnose a Service from its objects and this node's kube-proxy rules, without tracing",
		Long: `Look at a Service, its EndpointSlices and Pods, and the rules kube-proxy wrote on this node,
and report the classic reasons a Service does not work: a selector that matches no Pod (with
near misses), Pods that are not Ready, Pods in another namespace, a targetPort no container
exposes, missing or stale kube-proxy rules, traffic policy Local without a local endpoint,
NetworkPolicies that isolate the endpoints (what their rules admit, whether the node and a
client named by --from get through, and the nearest miss when not). Each finding comes with
its evidence and the next command to run.

With -A (every namespace) or -n NAMESPACE and no Service, it checks every Service there
and prints one line for each with a problem: its first finding (svctrace check SERVICE
gives the evidence and next steps).

Exits 1 when a problem was found. Reading kube-proxy's rules needs root; without it, only
the objects are checked.`,
		Example: serviceExamples + `

  # every Service of the cluster with a problem on this node, one line each
  sudo svctrace check -A`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.dispatch(cmd, args, false)
		},
	}
	o.addFlags(cmd, false)
	return cmd
}

// dispatch runs the command on one Service, or on every Service of the
// scope: -A, or -n without a Service.
func (o *serviceOptions) dispatch(cmd *cobra.Command, args []string, tracing bool) error {
	nsGiven := cmd.Flags().Changed("namespace")
	switch {
	case len(args) == 1 && o.allNamespaces:
		return fmt.Errorf("-A is every Service of every namespace: name no Service (svctrace %s-A), or drop -A (svctrace %s%s -n NAMESPACE)", checkWord(tracing), checkWord(tracing), args[0])
	case len(args) == 1:
		if o.summaryEvery != 0 || o.allVerdicts {
			return fmt.Errorf("--all-verdicts and --summary-every go with -A or -n NAMESPACE without a Service: svctrace %s prints every connection of its Service", args[0])
		}
		return o.run(cmd.Context(), args[0], tracing)
	case o.allNamespaces && nsGiven:
		return fmt.Errorf("-A is every namespace: it does not go with -n (svctrace %s-n %s for that namespace alone)", checkWord(tracing), *o.kube.Namespace)
	case o.allNamespaces || nsGiven:
		return o.runAll(cmd.Context(), tracing)
	case !tracing:
		return fmt.Errorf("name one Service (svctrace check web -n shop), or check every Service with -A or -n NAMESPACE")
	}
	return cmd.Help()
}

func checkWord(tracing bool) string {
	if tracing {
		return ""
	}
	return "check "
}

// runAll is svctrace -A and check -A (or -n without a Service).
func (o *serviceOptions) runAll(ctx context.Context, tracing bool) error {
	if tracing {
		switch {
		case o.probe != "":
			return fmt.Errorf("--probe connects to one Service: name it (svctrace web -n shop --probe)")
		case o.rec.path != "":
			return fmt.Errorf("-w records one Service's trace; -A and -n without a Service record nothing yet: record the failing Service's (svctrace SERVICE -n NAMESPACE -w FILE)")
		case o.summaryEvery < 0:
			return fmt.Errorf("--summary-every %s: want a positive interval such as 30s, or 0 for the end only", o.summaryEvery)
		}
		if err := checkStops(o.count, o.duration, o.timeout); err != nil {
			return err
		}
	} else if o.from != "" {
		return fmt.Errorf("--from judges the network policies of one Service for a client: name the Service (svctrace check web -n shop --from %s)", o.from)
	}
	on, err := o.open(ctx)
	if err != nil {
		return err
	}
	scope := o.namespace
	if o.allNamespaces {
		scope = ""
	}
	return session.ServeAll(ctx, session.All{Namespace: scope, Source: on.src, Node: on.ns, Local: on.local, Trace: on.trace,
		Tracing: tracing, AllVerdicts: o.allVerdicts, SummaryEvery: o.summaryEvery})
}

// opened is what a run starts from: the node's network namespace, the
// objects' source, this node, the trace's settings.
type opened struct {
	ns    nf.NetNS
	src   resolve.Source
	local resolve.LocalNode
	trace session.Trace
}

// open checks the recording flags, then finds the node's namespace and
// the objects.
func (o *serviceOptions) open(ctx context.Context) (opened, error) {
	if err := o.rec.validate(o.reads()...); err != nil {
		return opened{}, err
	}
	ns, err := nf.ResolveNetNS(o.netns)
	if err != nil {
		return opened{}, err
	}
	src, err := o.source(ctx)
	if err != nil {
		return opened{}, err
	}
	return opened{ns: ns, src: src, local: resolve.LocalNode{Name: resolve.NodeName(o.node, o.hostRoot), Addrs: resolve.LocalAddrs(ns)},
		trace: session.Trace{IO: o.io(), NetNS: o.netns, Backend: o.backend, Duration: o.duration, Count: o.count, Timeout: o.timeout,
			Snaplen: o.rec.snaplen, EveryPacket: o.rec.everyPacket}}, nil
}

func (o *serviceOptions) run(ctx context.Context, name string, tracing bool) error {
	if err := o.checkProbeFlags(tracing); err != nil {
		return err
	}
	if tracing {
		if err := checkStops(o.count, o.duration, o.timeout); err != nil {
			return err
		}
	}
	on, err := o.open(ctx)
	if err != nil {
		return err
	}
	s := session.Service{Namespace: o.namespace, Name: name, Source: on.src, Node: on.ns, Local: on.local, Trace: on.trace, Tracing: tracing}
	s.DNSQuestions = o.dnsQs
	if o.probe != "" {
		kind, _ := probe.ParseKind(o.probe)
		s.Probe = &session.Probe{Kind: kind, From: o.from}
	}
	if strings.HasPrefix(o.from, "pod/") {
		s.Client = o.from
	}
	if tracing {
		if s.Rec, err = o.rec.create(); err != nil {
			return err
		}
	}
	return session.Serve(ctx, s)
}

// source opens the objects: --objects, else the API with the first
// credentials that work.
func (o *serviceOptions) source(ctx context.Context) (resolve.Source, error) {
	o.namespace = *o.kube.Namespace
	if o.objects != "" {
		if given := o.kube.given(); len(given) > 0 {
			return nil, fmt.Errorf("--objects reads saved objects: it does not go with %s", strings.Join(given, ", "))
		}
		objs, err := resolve.ReadObjects(o.objects)
		if err != nil {
			return nil, err
		}
		if o.namespace == "" {
			o.namespace = "default"
		}
		return resolve.FileSource{Objects: objs, Path: o.objects}, nil
	}
	if o.namespace == "" {
		o.namespace = o.kube.namespace()
	}
	hostRoot := o.hostRoot
	if _, err := os.Stat(hostRoot); err != nil {
		hostRoot = ""
	}
	api, err := o.kube.connect(ctx, o.namespace, hostRoot, o.logf)
	if err != nil {
		return nil, err
	}
	o.logf("objects from %s", api.Describe())
	return api, nil
}

// reads are the files the run reads its objects or credentials from.
func (o *serviceOptions) reads() []string {
	if o.objects != "" {
		return []string{o.objects}
	}
	return o.kube.files()
}
