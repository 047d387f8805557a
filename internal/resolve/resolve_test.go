package resolve

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const dump = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.1.10
    clusterIPs: [10.96.1.10, fd00::10]
    type: NodePort
    externalIPs: [203.0.113.7]
    selector: {app: web}
    ports: [{name: http, port: 80, protocol: TCP, targetPort: http, nodePort: 30080}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored, namespace: shop}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.0.11]
  conditions: {ready: true}
  nodeName: node-1
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: [10.244.0.12]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-2
`

const policies = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: web}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other-ingress, namespace: other}
spec: {podSelector: {}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: no-guests}
spec:
  priority: 10
  subject: {namespaces: {}}
  ingress: [{name: guests, action: Deny, from: [{namespaces: {matchLabels: {guest: "true"}}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
`

func TestReadObjectsAndModel(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(dump), 0o644)
	os.WriteFile(filepath.Join(dir, "b.json"), []byte(`{"kind":"Node","apiVersion":"v1","metadata":{"name":"node-1"},"status":{"addresses":[{"type":"InternalIP","address":"10.99.0.1"}]}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "c.yaml"), []byte(policies), 0o644)
	o, err := ReadObjects(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Services) != 1 || len(o.Slices) != 1 || len(o.Nodes) != 1 {
		t.Fatalf("read %d services, %d slices, %d nodes", len(o.Services), len(o.Slices), len(o.Nodes))
	}
	v, err := Gather(context.Background(), FileSource{Objects: o, Path: dir}, "shop", "web", LocalNode{Addrs: []netip.Addr{netip.MustParseAddr("10.99.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if v.LocalNode != "node-1" {
		t.Errorf("local node %q, want node-1 (found by address)", v.LocalNode)
	}
	if p := v.Policies; len(p.Network) != 1 || p.Network[0].Name != "web-ingress" || p.Namespaces["shop"]["team"] != "web" ||
		len(p.Admin) != 1 || p.Admin[0].Spec.Priority != 10 || p.Admin[0].Spec.Ingress[0].Action != "Deny" || p.Baseline == nil {
		t.Errorf("policies %+v", p)
	}
	s := NewService(v)
	if len(s.ClusterIPs) != 2 || s.Ports[0].NodePort != 30080 || s.Ports[0].TargetPort != intstr.FromString("http") {
		t.Fatalf("model %+v", s)
	}
	eps := s.Ports[0].Endpoints
	if len(eps) != 2 || eps[0].Addr.String() != "10.244.0.11:8080" || eps[0].Pod.String() != "shop/web-1" || eps[1].State() != "terminating, still serving" {
		t.Fatalf("endpoints %+v", eps)
	}
	if r := s.Ports[0].Ready(); len(r) != 1 || r[0].Node != "node-1" {
		t.Errorf("ready %+v", r)
	}
	var got []string
	for _, tg := range s.Targets([]netip.Addr{netip.MustParseAddr("10.99.0.1")}) {
		got = append(got, tg.String())
	}
	want := "10.96.1.10:80/tcp [fd00::10]:80/tcp 203.0.113.7:80/tcp 10.99.0.1:30080/tcp 10.244.0.11:8080/tcp 10.244.0.12:8080/tcp"
	if strings.Join(got, " ") != want {
		t.Errorf("targets\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
}

func TestReadObjectsErrors(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"corrupt.yaml": "kind: Service\n  bad: [indent\n",
		"foreign.json": `{"hello": "world"}`,
		"empty.yaml":   "apiVersion: v1\nkind: List\nitems: []\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		_, err := ReadObjects(p)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want one line naming the file", name, err)
		}
	}
}

// The API source asks narrowly and explains refusals with the RBAC needed.
func TestAPISource(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.1.10", Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	web := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Status: corev1.PodStatus{PodIP: "10.244.0.11"}}
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-1", Labels: map[string]string{"app": "db"}}}
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}}
	cs := fake.NewClientset(svc, web, other, sl)
	a := &API{Client: cs, Credentials: "test", Host: "https://test"}
	v, err := Gather(context.Background(), a, "shop", "web", LocalNode{})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Pods) != 1 || v.Pods[0].Name != "web-1" || len(v.Slices) != 1 {
		t.Errorf("gathered %d pods, %d slices", len(v.Pods), len(v.Slices))
	}
	for _, act := range cs.Actions() {
		if l, ok := act.(k8stesting.ListAction); ok && act.GetResource().Resource == "pods" && l.GetListRestrictions().Labels.Empty() {
			t.Errorf("pods listed without a label selector: %v", act)
		}
	}
	if _, err := Gather(context.Background(), a, "shop", "wbe", LocalNode{}); err == nil || !strings.Contains(err.Error(), `did you mean "web"?`) {
		t.Errorf("typo: %v", err)
	}

	cs.PrependReactor("get", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "web", errors.New("no"))
	})
	_, err = Gather(context.Background(), a, "shop", "web", LocalNode{})
	var ae *APIError
	if !errors.As(err, &ae) || !ae.Denied || !strings.Contains(err.Error(), RBACHint) || !strings.Contains(err.Error(), "--objects") {
		t.Errorf("forbidden: %v", err)
	}
}

// The Service namespace's NetworkPolicies and labels come with the View;
// access denied to them is said, not fatal.
func TestGatherPolicies(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.1.10"}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "web"}}}
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "default-deny"}}
	elsewhere := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "default-deny"}}
	cs := fake.NewClientset(svc, ns, deny, elsewhere)
	a := &API{Client: cs, Credentials: "test", Host: "https://test"}
	v, err := Gather(context.Background(), a, "shop", "web", LocalNode{})
	if err != nil {
		t.Fatal(err)
	}
	p := v.Policies
	if len(p.Network) != 1 || p.Network[0].Namespace != "shop" || p.Namespaces["shop"]["team"] != "web" || len(p.Unread) != 0 {
		t.Fatalf("policies %+v", p)
	}
	cs.PrependReactor("list", "networkpolicies", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "networking.k8s.io", Resource: "networkpolicies"}, "", errors.New("no"))
	})
	v, err = Gather(context.Background(), a, "shop", "web", LocalNode{})
	if err != nil {
		t.Fatalf("denied policies failed the gathering: %v", err)
	}
	if len(v.Policies.Unread) != 1 || !strings.Contains(v.Policies.Unread[0], "not allowed to list networkpolicies") {
		t.Errorf("unread %q", v.Policies.Unread)
	}
}

func TestKubeletCredentialsUnderHostRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/kubernetes"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/kubernetes/kubelet.conf"), []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443", certificate-authority: /etc/kubernetes/pki/ca.crt}}]
users: [{name: u, user: {client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem, client-key: /var/lib/kubelet/pki/kubelet-client-current.pem}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600)
	for _, f := range []string{"etc/kubernetes/pki/ca.crt", "var/lib/kubelet/pki/kubelet-client-current.pem"} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755)
		os.WriteFile(filepath.Join(root, f), nil, 0o600)
	}
	t.Setenv("KUBECONFIG", filepath.Join(root, "none"))
	t.Setenv("HOME", root)
	cands, err := Candidates(ConnectOptions{HostRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	c := cands[len(cands)-1]
	if !strings.Contains(c.Describe, "kubelet credentials "+root+"/etc/kubernetes/kubelet.conf") {
		t.Fatalf("candidate %q", c.Describe)
	}
	if c.Config.CertFile != root+"/var/lib/kubelet/pki/kubelet-client-current.pem" || c.Config.CAFile != root+"/etc/kubernetes/pki/ca.crt" {
		t.Errorf("paths not moved under the host root: %s %s", c.Config.CertFile, c.Config.CAFile)
	}
}

func TestNearMiss(t *testing.T) {
	pod := func(labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "p", Labels: labels}}
	}
	for _, tc := range []struct {
		sel, labels map[string]string
		near        bool
		have        string
	}{
		{map[string]string{"app": "web-service"}, map[string]string{"app": "web-servce"}, true, "app=web-servce"}, // value typo
		{map[string]string{"app": "web"}, map[string]string{"ap": "web"}, true, "ap=web"},                         // key typo
		{map[string]string{"app": "nobody"}, map[string]string{"app": "checkout"}, false, ""},                     // another app
		{map[string]string{"app": "web", "tier": "fe"}, map[string]string{"app": "web", "tier": "be"}, true, "tier=be"},
		{map[string]string{"app": "web", "tier": "fe"}, map[string]string{"app": "web"}, true, ""}, // one key missing
		{map[string]string{"app": "web", "tier": "fe"}, map[string]string{"app": "api", "tier": "be"}, false, ""},
		{map[string]string{"app": "web"}, map[string]string{"app": "web"}, false, ""}, // a match
	} {
		m, ok := nearMiss(tc.sel, pod(tc.labels))
		if ok != tc.near || (ok && m.Have != tc.have) {
			t.Errorf("selector %v, labels %v: near miss %v %+v, want %v %q", tc.sel, tc.labels, ok, m, tc.near, tc.have)
		}
	}
}

// kube-proxy serves a single-stack Service's NodePorts on the node's
// addresses of that family only; a dual-stack one's on both.
func TestNodePortAddressesFollowTheServicesFamilies(t *testing.T) {
	node := []netip.Addr{netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("fd00:10:99::1")}
	for _, c := range []struct {
		clusterIPs []string
		want       string
	}{
		{[]string{"10.96.1.10"}, "10.99.0.1:30080"},
		{[]string{"fd00:10:96::10"}, "[fd00:10:99::1]:30080"},
		{[]string{"10.96.1.10", "fd00:10:96::10"}, "10.99.0.1:30080 [fd00:10:99::1]:30080"},
	} {
		s := &Service{Ports: []Port{{Port: 80, NodePort: 30080}}}
		for _, ip := range c.clusterIPs {
			s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(ip))
		}
		var got []string
		for _, a := range s.Addresses(node) {
			if a.Kind == "NodePort" {
				got = append(got, a.Addr.String())
			}
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("ClusterIPs %v: NodePorts on %v, want %s", c.clusterIPs, got, c.want)
		}
	}
}

// What is not YAML or JSON text is refused from its first bytes, whatever
// its size; a file over the bound is refused once it is passed; never more
// than one line.
func TestReadObjectsRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	random := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{1}).Read(random)
	for name, tc := range map[string]struct {
		content []byte
		want    string
	}{
		"random.bin": {random, "not YAML or JSON: binary data at byte"},
		"zeros.yaml": {make([]byte, 1<<20), "not YAML or JSON: binary data at byte 0"},
		"empty.yaml": {nil, "empty: no object in it"},
		"prose.txt":  {[]byte("Hello,\nthis is not a dump.\n"), `not YAML or JSON: it starts with "Hello,"`},
		"html.yaml":  {[]byte("<html><body>403 Forbidden</body></html>\n"), `it starts with "<html>`},
		"bad.json":   {[]byte(`{"kind": "Service", "metadata": `), "JSON value 1: the file ends inside it"},
		"bad.yaml":   {[]byte("apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: [\n"), "line 4: "},
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, tc.content, 0o644)
		start := time.Now()
		_, err := ReadObjects(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want one line with %q", name, err, tc.want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: refused after %s", name, d)
		}
	}
	if _, err := os.Stat("/dev/zero"); err == nil {
		if _, err := ReadObjects("/dev/zero"); err == nil || !strings.Contains(err.Error(), "binary data at byte 0") {
			t.Errorf("/dev/zero: %v", err)
		}
	}
	defer func(n int64) { maxObjectsFile = n }(maxObjectsFile)
	maxObjectsFile = 4096
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, []byte(strings.Repeat("# a comment of a large dump\n", 400)+dump), 0o644)
	if _, err := ReadObjects(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a file over the bound: %v", err)
	}
}

// kubectl's Lists are read item by item, in every layout it and others
// write: YAML items at column 0 or indented, CRLF line ends, block scalars
// with blank lines, JSON Lists and streams of objects.
func TestReadObjectsStreamsLists(t *testing.T) {
	// The List's items two columns in, as yq and others write them.
	var indented strings.Builder
	inItems := false
	for _, l := range strings.SplitAfter(dump, "\n") {
		switch {
		case l == "items:\n":
			inItems = true
		case inItems && (strings.HasPrefix(l, "- ") || strings.HasPrefix(l, "  ")):
			l = "  " + l
		default:
			inItems = false
		}
		indented.WriteString(l)
	}
	withScalar := strings.Replace(dump, "  metadata: {name: web, namespace: shop}\n",
		"  metadata:\n    name: web\n    namespace: shop\n    annotations:\n      note: |\n        first\n\n        - not an item\n", 1)
	jsonList := `{"apiVersion":"v1","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop"},"spec":{"clusterIP":"10.96.1.10","ports":[{"port":80}]}},{"kind":"ConfigMap","metadata":{"name":"x"}}],"kind":"List","metadata":{"resourceVersion":""}}
{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-x","namespace":"shop"},"addressType":"IPv4","endpoints":[{"addresses":["10.244.0.11"]}]}`
	for name, content := range map[string]string{
		"column0.yaml":  dump,
		"indented.yaml": indented.String(),
		"crlf.yaml":     strings.ReplaceAll(dump, "\n", "\r\n"),
		"scalar.yaml":   withScalar,
		"list.json":     jsonList,
		"bom.yaml":      "\xef\xbb\xbf# saved by hand\n" + dump,
	} {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, []byte(content), 0o644)
		o, err := ReadObjects(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(o.Services) != 1 || o.Services[0].Name != "web" || len(o.Slices) != 1 || o.Slices[0].Endpoints[0].Addresses[0] != "10.244.0.11" {
			t.Errorf("%s: %d services %v, %d slices", name, len(o.Services), o.Services, len(o.Slices))
		}
		if name == "scalar.yaml" && o.Services[0].Annotations["note"] != "first\n\n- not an item\n" {
			t.Errorf("%s: annotation %q", name, o.Services[0].Annotations["note"])
		}
	}
}

// failingSource is saved objects whose Pod lookups by address fail, and
// counts them.
type failingSource struct {
	FileSource
	asked int
}

func (s *failingSource) PodsByIP(context.Context, netip.Addr) ([]corev1.Pod, error) {
	s.asked++
	return nil, errors.New("the API server is gone")
}

// Peers asks once per address, a failure included (each may wait 2 s), and
// an address no Pod or Node holds is outside the cluster.
func TestPeers(t *testing.T) {
	a := netip.MustParseAddr("10.99.0.2")
	src := &failingSource{FileSource: FileSource{Objects: &Objects{}}}
	peers := Peers(src, nil)
	for range 3 {
		if _, ok := peers(a); ok {
			t.Fatal("a failed lookup said who the client is")
		}
	}
	if src.asked != 1 {
		t.Errorf("asked %d times, want once", src.asked)
	}
	var learned []netip.Addr
	peers = Peers(FileSource{Objects: &Objects{}}, func(a netip.Addr, _ Peer) { learned = append(learned, a) })
	p, ok := peers(a)
	peers(a)
	if !ok || p.Pod != nil || p.Node != "" || p.IP != a || len(learned) != 1 {
		t.Errorf("peer %+v %v, learned %v; want an address outside the cluster, learned once", p, ok, learned)
	}
}
