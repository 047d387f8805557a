package resolve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/netpol"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // cloud logins (exec, OIDC, …) in kubeconfigs
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/pager"
)

// API reads objects from the Kubernetes API server.
type API struct {
	// Client's requests each end after ConnectOptions.Timeout.
	Client kubernetes.Interface
	// Stream is for requests that last: watches, following logs. The same
	// credentials, without the timeout (an http.Client's Timeout cuts a
	// response body too). nil: Client.
	Stream kubernetes.Interface
	// Credentials says which credentials are used, e.g. "kubeconfig
	// /root/.kube/config (context dev)".
	Credentials string
	Host        string
}

// page is how many objects a List returns at a time.
const page = 500

func (a *API) Describe() string { return a.Credentials }

// Streaming is the client for requests that last.
func (a *API) Streaming() kubernetes.Interface {
	if a.Stream != nil {
		return a.Stream
	}
	return a.Client
}

func (a *API) Service(ctx context.Context, ns, name string) (*corev1.Service, error) {
	s, err := a.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, a.explain(err, "get", "services", ns)
	}
	return s, err
}

// each lists a page at a time with list (client-go's pager: a continue
// token that expired meanwhile becomes a whole list) and calls fn with each
// item; errStop from fn ends the listing early, without an error. Other
// errors say what failed to list (verb "list" of resource in ns).
func each[T runtime.Object](ctx context.Context, a *API, resource, ns string, opts metav1.ListOptions,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error), fn func(T) error) error {
	p := pager.New(list)
	// One page asked for while the last is read; not ten: NodeByIP stops
	// early.
	p.PageSize, p.PageBufferSize = page, 1
	err := p.EachListItem(ctx, opts, func(o runtime.Object) error { return fn(o.(T)) })
	switch {
	case errors.Is(err, errStop):
		return nil
	case err != nil:
		return a.explain(err, "list", resource, ns)
	}
	return nil
}

// errStop, from each's fn: nothing more is needed.
var errStop = errors.New("stop listing")

func (a *API) ServiceNames(ctx context.Context, ns, name string) ([]types.NamespacedName, error) {
	var opts metav1.ListOptions
	if name != "" {
		opts.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	}
	var out []types.NamespacedName
	err := each(ctx, a, "services", ns, opts, a.listServices(ns), func(s *corev1.Service) error {
		if name == "" || s.Name == name {
			out = append(out, types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
		}
		return nil
	})
	return out, err
}

func (a *API) listServices(ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return a.Client.CoreV1().Services(ns).List(ctx, o)
	}
}

func (a *API) EndpointSlices(ctx context.Context, ns, service string) ([]discoveryv1.EndpointSlice, error) {
	l, err := a.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service}).String()})
	if err != nil {
		return nil, a.explain(err, "list", "endpointslices", ns)
	}
	return l.Items, nil
}

func (a *API) Pods(ctx context.Context, ns string, sel labels.Selector, fn func(*corev1.Pod)) error {
	list := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return a.Client.CoreV1().Pods(ns).List(ctx, o)
	}
	return each(ctx, a, "pods", ns, metav1.ListOptions{LabelSelector: sel.String()}, list, func(p *corev1.Pod) error {
		if sel.Matches(labels.Set(p.Labels)) {
			fn(p)
		}
		return nil
	})
}

func (a *API) PodsByIP(ctx context.Context, ip netip.Addr) ([]corev1.Pod, error) {
	// status.podIP is one of the few field selectors Pods support; the API
	// server filters, so this costs one small answer.
	l, err := a.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("status.podIP", ip.String()).String()})
	if err != nil {
		return nil, a.explain(err, "list", "pods", "")
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if podHasIP(&p, ip) {
			out = append(out, p)
		}
	}
	return out, nil
}

func (a *API) Node(ctx context.Context, name string) (*corev1.Node, error) {
	n, err := a.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, a.explain(err, "get", "nodes", "")
	}
	return n, err
}

// NodeByIP pages through the Nodes (no field selector covers addresses),
// keeping none but the match.
func (a *API) NodeByIP(ctx context.Context, ip netip.Addr) (*corev1.Node, error) {
	list := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return a.Client.CoreV1().Nodes().List(ctx, o)
	}
	var found *corev1.Node
	err := each(ctx, a, "nodes", "", metav1.ListOptions{}, list, func(n *corev1.Node) error {
		if slices.Contains(NodeAddrs(n), ip) {
			found = n
			return errStop
		}
		return nil
	})
	return found, err
}

func (a *API) NetworkPolicies(ctx context.Context, ns string) ([]networkingv1.NetworkPolicy, error) {
	l, err := a.Client.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, a.explain(err, "list", "networkpolicies", ns)
	}
	return l.Items, nil
}

func (a *API) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	n, err := a.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, a.explain(err, "get", "namespaces", "")
	}
	return n, err
}

// AdminPolicies reads the two cluster-scoped kinds through the client's
// REST interface: the typed clientset has no client for them, and most
// clusters have no such CRDs installed (404: none).
func (a *API) AdminPolicies(ctx context.Context) ([]netpol.AdminNetworkPolicy, *netpol.BaselineAdminNetworkPolicy, error) {
	rc := a.Client.Discovery().RESTClient()
	if rc == nil || reflect.ValueOf(rc).IsNil() { // a fake clientset
		return nil, nil, nil
	}
	var anps struct{ Items []netpol.AdminNetworkPolicy }
	var banps struct {
		Items []netpol.BaselineAdminNetworkPolicy
	}
	for _, r := range []struct {
		resource string
		into     any
	}{{"adminnetworkpolicies", &anps}, {"baselineadminnetworkpolicies", &banps}} {
		raw, err := rc.Get().AbsPath("/apis/" + netpol.AdminNetworkPolicyGroup + "/" + r.resource).Do(ctx).Raw()
		if apierrors.IsNotFound(err) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, a.explain(err, "list", r.resource+"."+strings.Split(netpol.AdminNetworkPolicyGroup, "/")[0], "")
		}
		if err := json.Unmarshal(raw, r.into); err != nil {
			return nil, nil, fmt.Errorf("reading %s: %v", r.resource, err)
		}
	}
	var b *netpol.BaselineAdminNetworkPolicy
	if len(banps.Items) > 0 {
		b = &banps.Items[0]
	}
	return anps.Items, b, nil
}

// RBACHint is the minimal access svctrace needs, for error messages.
const RBACHint = "svctrace needs get, list and watch on services, endpointslices, pods and nodes, and get on namespaces and list on networkpolicies (see deploy/rbac.yaml)"

// offlineHint is the way around an API that cannot be used.
const offlineHint = "or work offline: kubectl get svc,endpointslices,pods,nodes,namespaces,networkpolicies -A -o yaml > dump.yaml, then svctrace … --objects dump.yaml"

// APIError is an API failure, explained in one line with the next step.
type APIError struct {
	Err error
	msg string
	// Denied: the credentials were rejected or lack permission (another set
	// of credentials may work).
	Denied bool
}

func (e *APIError) Error() string { return e.msg }
func (e *APIError) Unwrap() error { return e.Err }

func (a *API) explain(err error, verb, resource, ns string) error {
	var ae *APIError
	if errors.As(err, &ae) || errors.Is(err, context.Canceled) {
		return err
	}
	where := ""
	if ns != "" {
		where = fmt.Sprintf(" in namespace %q", ns)
	}
	switch {
	case apierrors.IsForbidden(err):
		return &APIError{Err: err, Denied: true, msg: fmt.Sprintf("%s: not allowed to %s %s%s: %s; %s",
			a.Credentials, verb, resource, where, RBACHint, offlineHint)}
	case apierrors.IsUnauthorized(err):
		return &APIError{Err: err, Denied: true, msg: fmt.Sprintf("%s: the API server at %s rejected these credentials (expired or wrong cluster?); pick others with --kubeconfig/--context, %s",
			a.Credentials, a.Host, offlineHint)}
	}
	msg := oneLine(err)
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return &APIError{Err: err, msg: fmt.Sprintf("cannot reach the Kubernetes API at %s (%s): %s; check --kubeconfig, --context or --server, %s",
			a.Host, a.Credentials, msg, offlineHint)}
	}
	return &APIError{Err: err, msg: fmt.Sprintf("%s %s%s: %s", verb, resource, where, msg)}
}

// ConnectOptions say which credentials to use.
type ConnectOptions struct {
	// Config is the kubeconfig as kubectl's flags shape it
	// (genericclioptions.ConfigFlags.ToRawKubeConfigLoader); nil: the
	// default loading rules alone.
	Config clientcmd.ClientConfig
	// Explicit: the flags named the credentials (--kubeconfig, --context,
	// --server, --token, …): they are the only candidate.
	Explicit bool
	// Context is --context, to say which context was used.
	Context string
	// Impersonate applies to every candidate (--as, --as-group, --as-uid).
	Impersonate rest.ImpersonationConfig
	// HostRoot is where the node's root filesystem is mounted ("/host" in
	// kubectl debug node/…); kubelet credentials are looked for under it and
	// under /.
	HostRoot string
	// Timeout bounds each API request (--request-timeout); 0: 15 s.
	Timeout time.Duration
}

// Candidate is one set of credentials to try.
type Candidate struct {
	Describe string
	Config   *rest.Config
}

// Candidates lists the credentials to try, best first, resolved like
// kubectl: --kubeconfig, $KUBECONFIG, ~/.kube/config (with --context), then
// the in-cluster service account, then the node's own kubelet credentials.
// An explicit --kubeconfig or --context is the only candidate.
func Candidates(opts ConnectOptions) ([]Candidate, error) {
	var out []Candidate
	cc := opts.Config
	if cc == nil {
		cc = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{})
	}
	files := cc.ConfigAccess().GetLoadingPrecedence()
	if f := cc.ConfigAccess().GetExplicitFile(); f != "" {
		files = []string{f}
	}
	found := existing(files)
	if found != "" || opts.Explicit {
		cfg, err := cc.ClientConfig()
		switch {
		case err == nil:
			raw, _ := cc.RawConfig()
			ctxName := opts.Context
			if ctxName == "" {
				ctxName = raw.CurrentContext
			}
			what := fmt.Sprintf("kubeconfig %s (context %q)", found, ctxName)
			if found == "" {
				what = "the credentials given on the command line, for " + cfg.Host
			}
			out = append(out, Candidate{Describe: what + impersonating(cfg.Impersonate), Config: cfg})
		case opts.Explicit || !clientcmd.IsEmptyConfig(err):
			return nil, kubeconfigError(err)
		}
	}
	if opts.Explicit {
		return out, nil
	}
	if cfg, err := rest.InClusterConfig(); err == nil {
		cfg.Impersonate = opts.Impersonate
		out = append(out, Candidate{Describe: "the pod's service account (in-cluster)" + impersonating(cfg.Impersonate), Config: cfg})
	}
	for _, root := range []string{opts.HostRoot, "/"} {
		if root == "" {
			continue
		}
		for _, p := range []string{"etc/kubernetes/kubelet.conf", "var/lib/kubelet/kubeconfig"} {
			path := filepath.Join(root, p)
			if cfg, err := kubeletConfig(path, root); err == nil {
				cfg.Impersonate = opts.Impersonate
				out = append(out, Candidate{Describe: "the node's kubelet credentials " + path + impersonating(cfg.Impersonate), Config: cfg})
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no Kubernetes credentials found (no --kubeconfig, $KUBECONFIG or ~/.kube/config, not in a pod, no kubelet kubeconfig under %s): pass --kubeconfig, %s",
			orRoot(opts.HostRoot), offlineHint)
	}
	return out, nil
}

// impersonating says whom requests impersonate: " as alice (groups
// dev)", or "".
func impersonating(im rest.ImpersonationConfig) string {
	s := ""
	if im.UserName != "" {
		s = " as " + im.UserName
	}
	if len(im.Groups) > 0 {
		s += " (groups " + strings.Join(im.Groups, ", ") + ")"
	}
	return s
}

func orRoot(r string) string {
	if r == "" {
		return "/"
	}
	return r + " or /"
}

func existing(files []string) string {
	var ok []string
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			ok = append(ok, f)
		}
	}
	return strings.Join(ok, ":")
}

// kubeconfigError says in one line why the kubeconfig could not be used; a
// file that is not a kubeconfig at all is said so, not with the parser's
// words about Go types.
func kubeconfigError(err error) error {
	msg := oneLine(err)
	if file, _, ok := strings.Cut(strings.TrimPrefix(msg, `error loading config file "`), `": `); ok && strings.HasPrefix(msg, "error loading config file") &&
		(strings.Contains(msg, "couldn't get version/kind") || strings.Contains(msg, "yaml:") || strings.Contains(msg, "json")) {
		return fmt.Errorf("kubeconfig %s is not a kubeconfig file (YAML with apiVersion: v1 and kind: Config, as kubectl config view shows): pass another with --kubeconfig", file)
	}
	return fmt.Errorf("kubeconfig: %s", msg)
}

// kubeletConfig loads a kubelet kubeconfig found under root: the absolute
// paths in it (certificates, CA) are the node's, so they move under root too.
func kubeletConfig(path, root string) (*rest.Config, error) {
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return nil, err
	}
	move := func(p *string) {
		if *p != "" && filepath.IsAbs(*p) && root != "/" && !strings.HasPrefix(*p, root+"/") {
			*p = filepath.Join(root, *p)
		}
	}
	for _, ai := range cfg.AuthInfos {
		move(&ai.ClientCertificate)
		move(&ai.ClientKey)
		move(&ai.TokenFile)
	}
	for _, c := range cfg.Clusters {
		move(&c.CertificateAuthority)
	}
	return clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{}).ClientConfig()
}

// Connect picks the first candidate whose credentials the API server
// accepts for reading Services in ns, and says which it took; logf hears
// about the ones passed over.
func Connect(ctx context.Context, opts ConnectOptions, ns string, logf func(string, ...any)) (*API, error) {
	cands, err := Candidates(opts)
	if err != nil {
		return nil, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = 15 * time.Second
	}
	var firstErr error
	for _, c := range cands {
		cfg := rest.CopyConfig(c.Config)
		cfg.Timeout = opts.Timeout
		cfg.UserAgent = "svctrace"
		// client-go's default of 5 requests a second made svctrace -A
		// wait 0.8 s for each failing Service's few narrow reads; the
		// API server's priority and fairness still keeps it in line.
		if cfg.QPS == 0 {
			cfg.QPS, cfg.Burst = 50, 100
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %s", c.Describe, oneLine(err))
		}
		scfg := rest.CopyConfig(cfg)
		scfg.Timeout = 0
		stream, err := kubernetes.NewForConfig(scfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %s", c.Describe, oneLine(err))
		}
		a := &API{Client: cs, Stream: stream, Credentials: c.Describe, Host: cfg.Host}
		// Cheap calls that need the access svctrace needs anyway. A node's
		// kubelet credentials read Services but not EndpointSlices (the
		// Node authorizer's rules): the next credentials may.
		resource := "services"
		_, err = cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err == nil {
			resource = "endpointslices"
			_, err = cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{Limit: 1})
		}
		if err == nil {
			return a, nil
		}
		err = a.explain(err, "list", resource, ns)
		if firstErr == nil {
			firstErr = err
		}
		var ae *APIError
		if !errors.As(err, &ae) || !ae.Denied {
			return nil, err
		}
		logf("%s", err)
	}
	return nil, firstErr
}
