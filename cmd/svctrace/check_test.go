package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const cartDump = `apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.3.3
  selector: {app: cart}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {apps: cart}}
spec: {containers: [{name: app, image: x}]}
`

// svctrace check with saved objects: the diagnosis, its exit status, and
// the error for a Service that is not there.
func TestCheckWithObjects(t *testing.T) {
	dump := filepath.Join(t.TempDir(), "dump.yaml")
	os.WriteFile(dump, []byte(cartDump), 0o644)
	out, _, err := run(context.Background(), "check", "cart", "-n", "shop", "--objects", dump, "--node", "node-1", "-o", "json")
	if !errors.Is(err, errSilent) {
		t.Errorf("a problem found: err %v, want exit status 1 without a message", err)
	}
	var d struct {
		Source   string
		Findings []struct {
			Code, Object string
			Evidence     []string
		}
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if d.Source != "objects from "+dump || len(d.Findings) == 0 || d.Findings[0].Code != "selector-matches-no-pod" ||
		d.Findings[0].Object != "Service shop/cart" || !strings.Contains(strings.Join(d.Findings[0].Evidence, "\n"), "pod shop/cart-1 has apps=cart") {
		t.Errorf("diagnosis %+v", d)
	}

	_, _, err = run(context.Background(), "check", "kart", "-n", "shop", "--objects", dump)
	if err == nil || err.Error() != `service "kart" not found in namespace "shop"; did you mean "cart"?` {
		t.Errorf("unknown Service: %v", err)
	}
}

// svctrace check --from pod/NAMESPACE/NAME judges the NetworkPolicies for
// that client: testdata/policies.yaml isolates web-1 with a policy whose
// namespace label is one value off the client's.
func TestCheckFromPodJudgesPolicies(t *testing.T) {
	dump := filepath.Join("testdata", "policies.yaml")
	out, _, err := run(context.Background(), "check", "web", "-n", "shop", "--objects", dump, "--node", "node-1", "--from", "pod/front/front-1", "-o", "json")
	if !errors.Is(err, errSilent) {
		t.Errorf("a client denied: err %v, want exit status 1 without a message", err)
	}
	var d struct {
		Findings []struct {
			Code, Object, Summary string
			Evidence              []string
		}
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	found := false
	for _, f := range d.Findings {
		if f.Code == "network-policy-denies" {
			found = true
			text := f.Summary + "\n" + strings.Join(f.Evidence, "\n")
			for _, want := range []string{"Pod front/front-1", "shop/default-deny, shop/from-frontend", "namespace front has label team=frontend; the selector wants team=fronted"} {
				if !strings.Contains(text, want) {
					t.Errorf("does not say %q:\n%s", want, text)
				}
			}
		}
	}
	if !found {
		t.Errorf("no network-policy-denies in %+v", d.Findings)
	}
	for _, bad := range []string{"node", "front-1"} {
		_, _, err := run(context.Background(), "check", "web", "-n", "shop", "--objects", dump, "--from", bad)
		if err == nil || !strings.Contains(err.Error(), "name a client Pod, pod/NAME") {
			t.Errorf("--from %s: %v", bad, err)
		}
	}
	_, _, err = run(context.Background(), "check", "web", "-n", "shop", "--objects", dump, "--from", "pod/front/nobody")
	if err == nil || !strings.Contains(err.Error(), "pod front/nobody not found") {
		t.Errorf("--from a missing Pod: %v", err)
	}
}
