package resolve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Objects are Kubernetes objects held in memory: what `--objects` read from
// `kubectl get … -o yaml|json` output, or what a recording carries.
type Objects struct {
	Services []corev1.Service
	Slices   []discoveryv1.EndpointSlice
	Pods     []corev1.Pod
	Nodes    []corev1.Node
}

// ReadObjects reads path: a file, or every *.yaml, *.yml and *.json file in
// a directory. Each file holds one or more YAML documents or JSON objects,
// each a single object or a List. Kinds svctrace does not use are skipped.
func ReadObjects(path string) (*Objects, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--objects: %w", err)
	}
	files := []string{path}
	if st.IsDir() {
		files = nil
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("--objects: %w", err)
		}
		for _, e := range entries {
			switch filepath.Ext(e.Name()) {
			case ".yaml", ".yml", ".json":
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("--objects %s: no .yaml, .yml or .json file in this directory", path)
		}
	}
	o := &Objects{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--objects: %w", err)
		}
		if err := o.Add(b); err != nil {
			return nil, fmt.Errorf("--objects %s: %w", f, err)
		}
	}
	if len(o.Services) == 0 {
		return nil, fmt.Errorf("--objects %s: no Service in it; save them with: kubectl get svc,endpointslices,pods,nodes -A -o yaml > dump.yaml", path)
	}
	return o, nil
}

// Add decodes a stream of YAML documents or JSON objects and adds the
// objects in it.
func (o *Objects) Add(b []byte) error {
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for n := 1; ; n++ {
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("document %d: %v", n, oneLine(err))
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		if err := o.addRaw(raw); err != nil {
			return fmt.Errorf("document %d: %v", n, err)
		}
	}
	return nil
}

func (o *Objects) addRaw(raw json.RawMessage) error {
	var meta struct {
		Kind  string
		Items []json.RawMessage
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return fmt.Errorf("not a Kubernetes object: %v", oneLine(err))
	}
	if meta.Kind == "List" || strings.HasSuffix(meta.Kind, "List") {
		for i, item := range meta.Items {
			if err := o.addRaw(item); err != nil {
				return fmt.Errorf("item %d: %v", i, err)
			}
		}
		return nil
	}
	var err error
	switch meta.Kind {
	case "Service":
		err = appendDecoded(raw, &o.Services)
	case "EndpointSlice":
		err = appendDecoded(raw, &o.Slices)
	case "Pod":
		err = appendDecoded(raw, &o.Pods)
	case "Node":
		err = appendDecoded(raw, &o.Nodes)
	case "":
		return errors.New("not a Kubernetes object (no kind)")
	}
	if err != nil {
		return fmt.Errorf("%s: %v", meta.Kind, oneLine(err))
	}
	return nil
}

// appendDecoded decodes one object onto list.
func appendDecoded[T any](raw json.RawMessage, list *[]T) error {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*list = append(*list, v)
	return nil
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }
