package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/test/cluster"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// The cluster-wide policies, served by the real API server from their
// upstream CRDs: svctrace reads them through the API and names the admin
// rule that denies a client before any NetworkPolicy is looked at. No
// engine enforces them here: this holds what `check` says.
func TestAdminPolicies(t *testing.T) {
	c := cluster.Up(t, cluster.Options{Mode: cluster.IPTables})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc := c.Client.Discovery().RESTClient()
	for _, f := range []string{"policy.networking.k8s.io_adminnetworkpolicies.yaml", "policy.networking.k8s.io_baselineadminnetworkpolicies.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", "network-policy-api", f))
		if err != nil {
			t.Fatal(err)
		}
		crd, err := yaml.YAMLToJSON(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Post().AbsPath("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").Body(crd).Do(ctx).Error(); err != nil {
			t.Fatalf("installing %s: %v", f, err)
		}
	}
	const group = "/apis/policy.networking.k8s.io/v1alpha1/"
	create := func(resource string, obj any) {
		b, _ := json.Marshal(obj)
		var last error
		for ctx.Err() == nil {
			if last = rc.Post().AbsPath(group + resource).Body(b).Do(ctx).Error(); last == nil {
				return
			}
			// Until the CRD is established, its resource is not served.
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("creating a %s: %v", resource, last)
	}
	create("adminnetworkpolicies", map[string]any{"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
		"metadata": map[string]any{"name": "no-guests"},
		"spec": map[string]any{"priority": 10, "subject": map[string]any{"namespaces": map[string]any{}},
			"ingress": []any{map[string]any{"name": "guests", "action": "Deny",
				"from": []any{map[string]any{"namespaces": map[string]any{"matchLabels": map[string]string{"guest": "true"}}}}}}}})
	create("baselineadminnetworkpolicies", map[string]any{"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
		"metadata": map[string]any{"name": "default"},
		"spec": map[string]any{"subject": map[string]any{"namespaces": map[string]any{}},
			"ingress": []any{map[string]any{"name": "members", "action": "Allow",
				"from": []any{map[string]any{"namespaces": map[string]any{"matchLabels": map[string]string{"member": "true"}}}}}}}})

	if _, err := c.AddPod(ctx, pod(shop, "web-1", "web", lab.ModeHTTP, true)); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CreateService(ctx, service("web", "10.96.4.10", map[string]string{"app": "web"}, intstr.FromString("http")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPod(ctx, pod("guests", "guest-1", "guest", "", true)); err != nil {
		t.Fatal(err)
	}
	ns, err := c.Client.CoreV1().Namespaces().Get(ctx, "guests", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["guest"] = "true"
	if _, err := c.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEndpoints(ctx, svc, 1); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command("ip", "netns", "exec", filepath.Base(c.Node.Path), svctrace(t), "check", "web", "-n", shop, "--node", cluster.NodeName,
		"--kubeconfig", c.Kubeconfig, "--from", "pod/guests/guest-1", "-o", "json").Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("svctrace check: %v\n%s", err, out)
	}
	var d struct{ Findings []report.Finding }
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `AdminNetworkPolicy no-guests (priority 10) ingress rule "guests" (Deny) denies Pod guests/guest-1's connections to the endpoint Pods of shop/web:http (web-1) on 8080/TCP: the ingress of the endpoint Pods`
	for _, f := range d.Findings {
		if f.Code == report.PolicyDenies && f.Summary == want && f.Severity == report.Problem {
			return
		}
	}
	t.Errorf("findings %+v;\nwant a problem %s: %s", d.Findings, report.PolicyDenies, want)
}
