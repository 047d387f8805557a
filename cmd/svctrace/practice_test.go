package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

// deploy/practice.yaml (the Vagrant cluster's seeds) decodes strictly, and
// each Service is broken the way its comment says, no more: a healthy one,
// a selector typo, a wrong targetPort, Pods never Ready, no Pods at all.
func TestPracticeServices(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "practice.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var svcs []*corev1.Service
	var deps []*appsv1.Deployment
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		switch o := obj.(type) {
		case *corev1.Service:
			svcs = append(svcs, o)
		case *appsv1.Deployment:
			deps = append(deps, o)
		}
	}
	// What the Service gets: the Deployment its selector picks, whether
	// its target port is a container port, whether its Pods get Ready.
	type outcome struct{ pods, port, ready bool }
	want := map[string]outcome{
		"web":           {pods: true, port: true, ready: true},
		"web-typo":      {},
		"web-wrongport": {pods: true, ready: true},
		"notready":      {pods: true, port: true},
		"orders":        {port: true},
	}
	for _, s := range svcs {
		var got outcome
		for _, d := range deps {
			if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				continue
			}
			got.pods = *d.Spec.Replicas > 0
			c := d.Spec.Template.Spec.Containers[0]
			tp := s.Spec.Ports[0].TargetPort
			got.port = slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
				return p.Name == tp.StrVal || p.ContainerPort == tp.IntVal
			})
			probe := c.ReadinessProbe
			got.ready = got.pods && probe != nil && probe.HTTPGet != nil && probe.HTTPGet.Port.StrVal == "http"
		}
		if w, ok := want[s.Name]; !ok || got != w {
			t.Errorf("Service %s: %+v, want %+v", s.Name, got, w)
		}
		delete(want, s.Name)
	}
	if len(want) > 0 {
		t.Errorf("Services missing: %v", want)
	}
}
