package resolve

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/svctrace/svctrace/internal/netpol"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// Objects are Kubernetes objects held in memory: what `--objects` read from
// `kubectl get … -o yaml|json` output, or what a recording carries.
type Objects struct {
	Services             []corev1.Service
	Slices               []discoveryv1.EndpointSlice
	Pods                 []corev1.Pod
	Nodes                []corev1.Node
	Namespaces           []corev1.Namespace
	NetworkPolicies      []networkingv1.NetworkPolicy
	AdminNetworkPolicies []netpol.AdminNetworkPolicy
	Baselines            []netpol.BaselineAdminNetworkPolicy
}

// MaxObjectsFile bounds each file --objects reads. A dump of a whole large
// cluster can exceed it: save the Service's namespace and the Nodes instead
// (kubectl get svc,endpointslices,pods,networkpolicies -n NS -o yaml; kubectl get nodes,namespaces -o yaml).
const MaxObjectsFile = 512 << 20

// maxObjectsFile is MaxObjectsFile; tests lower it.
var maxObjectsFile int64 = MaxObjectsFile

// maxObject bounds one object (one YAML document, or one item of a List).
const maxObject = 64 << 20

// ReadObjects reads path: a file, or every *.yaml, *.yml and *.json file in
// a directory. Each file holds one or more YAML documents or JSON objects,
// each a single object or a List, and is read as a stream: a List's items
// one at a time, at most MaxObjectsFile bytes. What is not YAML or JSON text
// is refused from its first bytes. Kinds svctrace does not use are skipped.
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
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--objects: %w", err)
		}
		err = o.Read(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("--objects %s: %w", name, err)
		}
	}
	if len(o.Services) == 0 {
		return nil, fmt.Errorf("--objects %s: no Service in it; save them with: kubectl get svc,endpointslices,pods,nodes,namespaces,networkpolicies -A -o yaml > dump.yaml", path)
	}
	return o, nil
}

// errTooLarge: a file larger than MaxObjectsFile.
var errTooLarge = fmt.Errorf("larger than %d MiB, the bound for an object file: save only the Service's namespace and the Nodes (kubectl get svc,endpointslices,pods,networkpolicies -n NAMESPACE -o yaml; kubectl get nodes,namespaces -o yaml)", MaxObjectsFile>>20)

// bounded fails once more than its bound was read.
type bounded struct {
	r    io.Reader
	left int64
}

func (b *bounded) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// Read decodes a stream of YAML documents or JSON values and adds the
// objects in it.
func (o *Objects) Read(r io.Reader) error {
	br := bufio.NewReaderSize(&bounded{r: r, left: maxObjectsFile + 1}, 64<<10)
	first, err := sniff(br)
	if err != nil {
		return err
	}
	if first == '{' || first == '[' {
		return o.readJSON(br)
	}
	return o.readYAML(br)
}

// sniff checks that the stream starts as YAML or JSON text does, and
// returns its first significant byte.
func sniff(br *bufio.Reader) (byte, error) {
	head, err := br.Peek(4096)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return 0, err
	}
	if bytes.HasPrefix(head, []byte("\xef\xbb\xbf")) { // a UTF-8 byte order mark
		br.Discard(3)
		head = head[3:]
	}
	if len(head) == 0 {
		return 0, errors.New("empty: no object in it")
	}
	text := head
	if len(head) == 4096 {
		// The peek may end inside a character.
		for i := 0; i < 3 && len(text) > 0 && !utf8.Valid(text); i++ {
			text = text[:len(text)-1]
		}
	}
	if i := bytes.IndexFunc(text, func(r rune) bool {
		return r == utf8.RuneError || (r < 0x20 && r != '\t' && r != '\n' && r != '\r')
	}); i >= 0 || !utf8.Valid(text) {
		return 0, fmt.Errorf("not YAML or JSON: binary data at byte %d; want the output of kubectl get … -o yaml (or -o json)", max(i, 0))
	}
	for _, line := range strings.Split(string(text), "\n") {
		l := strings.TrimSpace(line)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "%") || l == "---" || l == "...":
			continue
		case l[0] == '{' || l[0] == '[':
			return l[0], nil
		case strings.HasPrefix(l, "- ") || l == "-" || yamlKey.MatchString(l):
			return l[0], nil
		}
		return 0, fmt.Errorf("not YAML or JSON: it starts with %q; want the output of kubectl get … -o yaml (or -o json)", truncate(l, 40))
	}
	return ' ', nil // only comments so far
}

// yamlKey is a line that starts a YAML mapping: "apiVersion: v1", "kind:".
var yamlKey = regexp.MustCompile(`^("[^"]*"|'[^']*'|[A-Za-z_][-A-Za-z0-9_./]*)\s*:(\s|$)`)

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// readJSON decodes JSON values one after another; a List's items (any
// object with an "items" array) are decoded one at a time.
func (o *Objects) readJSON(r io.Reader) error {
	d := json.NewDecoder(r)
	for n := 1; ; n++ {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("JSON value %d: %v", n, oneLine(err))
		}
		switch tok {
		case json.Delim('['):
			err = o.jsonItems(d)
		case json.Delim('{'):
			err = o.jsonObject(d)
		default:
			err = fmt.Errorf("%v is not a Kubernetes object", tok)
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("the file ends inside it")
		}
		if err != nil {
			return fmt.Errorf("JSON value %d: %v", n, oneLine(err))
		}
	}
}

// jsonItems decodes the rest of an array, item by item.
func (o *Objects) jsonItems(d *json.Decoder) error {
	for i := 0; d.More(); i++ {
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			return fmt.Errorf("item %d: %v", i, err)
		}
		if err := o.addRaw(raw); err != nil {
			return fmt.Errorf("item %d: %v", i, err)
		}
	}
	_, err := d.Token() // ]
	return err
}

// jsonObject decodes the rest of an object: a List's items as they come,
// anything else whole.
func (o *Objects) jsonObject(d *json.Decoder) error {
	fields := map[string]json.RawMessage{}
	list := false
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if key == "items" {
			if tok, err := d.Token(); err != nil || tok != json.Delim('[') {
				return errors.New(`"items" is not an array`)
			}
			list = true
			if err := o.jsonItems(d); err != nil {
				return err
			}
			continue
		}
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return err
		}
		fields[key] = v
	}
	if _, err := d.Token(); err != nil { // }
		return err
	}
	if list {
		return nil
	}
	raw, _ := json.Marshal(fields)
	return o.addRaw(raw)
}

// readYAML decodes YAML documents one after another. A List laid out as
// kubectl writes it (items: then one "- " entry per object) is decoded item
// by item; anything else a document at a time.
func (o *Objects) readYAML(br *bufio.Reader) error {
	var doc, item bytes.Buffer
	docLine, itemLine, line := 1, 0, 0
	itemIndent := -1 // the items' "- " column, once in a List's items
	inItems, itemsLine := false, ""
	flushItem := func() error {
		if item.Len() == 0 {
			return nil
		}
		var one []json.RawMessage
		if err := yaml.Unmarshal(item.Bytes(), &one); err != nil || len(one) != 1 {
			if err == nil {
				err = errors.New("not one object")
			}
			return fmt.Errorf("line %d: %v", itemLine, oneLine(err))
		}
		item.Reset()
		if err := o.addRaw(one[0]); err != nil {
			return fmt.Errorf("line %d: %v", itemLine, err)
		}
		return nil
	}
	flushDoc := func() error {
		if err := flushItem(); err != nil {
			return err
		}
		defer doc.Reset()
		raw, err := yaml.YAMLToJSON(doc.Bytes())
		if err != nil {
			return fmt.Errorf("line %d: %v", docLine, oneLine(err))
		}
		if len(raw) == 0 || string(raw) == "null" {
			return nil
		}
		if err := o.addRaw(raw); err != nil {
			return fmt.Errorf("line %d: %v", docLine, err)
		}
		return nil
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if l == "" && err != nil {
			return flushDoc()
		}
		line++
		text := strings.TrimRight(l, "\r\n")
		indent := len(text) - len(strings.TrimLeft(text, " "))
		blank := strings.TrimSpace(text) == "" || strings.HasPrefix(strings.TrimSpace(text), "#")
		switch {
		case text == "---" || strings.HasPrefix(text, "--- ") || text == "...":
			if err := flushDoc(); err != nil {
				return err
			}
			inItems, itemIndent, docLine = false, -1, line+1
			continue
		case inItems && blank:
			if item.Len() > 0 {
				item.WriteString(l)
			}
			continue
		case inItems && (itemIndent < 0 || indent == itemIndent) && (strings.HasPrefix(text[indent:], "- ") || text[indent:] == "-"):
			if err := flushItem(); err != nil {
				return err
			}
			itemIndent, itemLine = indent, line
			item.WriteString(l)
			continue
		case inItems && itemIndent >= 0 && indent > itemIndent:
			item.WriteString(l)
			if item.Len() > maxObject {
				return fmt.Errorf("line %d: an object of more than %d MiB", itemLine, maxObject>>20)
			}
			continue
		case inItems:
			if err := flushItem(); err != nil {
				return err
			}
			if itemIndent < 0 {
				doc.WriteString(itemsLine) // not a sequence: the document's own
			}
			inItems = false
		case indent == 0 && strings.TrimSpace(strings.SplitN(text, "#", 2)[0]) == "items:":
			inItems, itemIndent, itemsLine = true, -1, l
			continue
		}
		doc.WriteString(l)
		if doc.Len() > maxObject {
			return fmt.Errorf("line %d: a document of more than %d MiB", docLine, maxObject>>20)
		}
	}
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
	case "Namespace":
		err = appendDecoded(raw, &o.Namespaces)
	case "NetworkPolicy":
		err = appendDecoded(raw, &o.NetworkPolicies)
	case "AdminNetworkPolicy":
		err = appendDecoded(raw, &o.AdminNetworkPolicies)
	case "BaselineAdminNetworkPolicy":
		err = appendDecoded(raw, &o.Baselines)
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
