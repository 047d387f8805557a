// Package plugin is kubectl svctrace's work beyond its flags: which nodes
// to trace on, and running svctrace in a debug Pod on each at once, with
// their output merged.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svctrace/svctrace/internal/debugpod"
	"github.com/svctrace/svctrace/internal/logging"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/stitch"
)

// MaxNodes is how many nodes the plugin traces on without being told which:
// each gets a privileged Pod.
const MaxNodes = 5

// Nodes chooses the nodes to trace v's Service on, and says why: asked
// (nodes), the node a client Pod runs on (from, pod/[NAMESPACE/]NAME in
// namespace), or where its endpoints run.
func Nodes(ctx context.Context, api *resolve.API, v *resolve.View, nodes []string, from, namespace string) ([]string, string, error) {
	svc := v.Service.Namespace + "/" + v.Service.Name
	if len(nodes) > 0 {
		for _, n := range nodes {
			if _, err := api.Client.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				return nil, "", fmt.Errorf("node %q not found: kubectl get nodes", n)
			} else if err != nil {
				return nil, "", fmt.Errorf("node %q: %s", n, firstLine(err.Error()))
			}
		}
		return slices.Compact(slices.Sorted(slices.Values(nodes))), "as asked", nil
	}
	if ns, name, ok := resolve.FromPod(from, namespace); ok {
		pod, err := api.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, "", resolve.PodNotFound(ns, name)
		}
		if err != nil {
			return nil, "", fmt.Errorf("pod %s/%s: %s", ns, name, firstLine(err.Error()))
		}
		if pod.Spec.NodeName == "" {
			return nil, "", fmt.Errorf("pod %s/%s is not scheduled to a node yet: nothing of its traffic passes a node", ns, name)
		}
		// And the endpoints' nodes, where its connections go on to.
		all := slices.Compact(slices.Sorted(slices.Values(append(v.EndpointNodes(), pod.Spec.NodeName))))
		if len(all) > 1 && len(all) <= MaxNodes {
			all = append([]string{pod.Spec.NodeName}, slices.DeleteFunc(all, func(n string) bool { return n == pod.Spec.NodeName })...)
			return all, fmt.Sprintf("where pod %s/%s runs, and its endpoints", ns, name), nil
		}
		return []string{pod.Spec.NodeName}, fmt.Sprintf("where pod %s/%s runs", ns, name), nil
	}
	nodes = slices.Sorted(slices.Values(v.EndpointNodes()))
	switch {
	case len(nodes) > MaxNodes:
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

// Run runs svctrace in a debug Pod on each node at once, with their output
// merged onto stdout and stderr (JSON objects when asJSON), or, with
// stitched, their -o parts stitched and printed by it; and deletes the
// Pods; its own messages go to log. It returns logging.ErrReported when a
// Pod's svctrace failed or found a problem, or what went wrong was said.
func Run(ctx context.Context, api *resolve.API, nodes []string, spec debugpod.Spec, startTimeout time.Duration, intro string, log *slog.Logger, stdout, stderr io.Writer, asJSON bool, stitched *Stitched) error {
	r := &debugpod.Runner{Client: api.Client, Stream: api.Streaming(), StartTimeout: startTimeout, Drain: 15 * time.Second,
		Created: func(p *corev1.Pod) {
			log.Info(fmt.Sprintf("debug pod %s/%s on node %s, image %s", p.Namespace, p.Name, p.Spec.NodeName, p.Spec.Containers[0].Image))
		}}
	on := func(node string) debugpod.Spec {
		s := spec
		s.Node = node
		return s
	}
	if err := r.Admit(ctx, on(nodes[0])); err != nil {
		return err
	}
	log.Info(intro)
	m := &merger{stdout: stdout, stderr: stderr, json: asJSON, prefix: len(nodes) > 1, stitched: stitched}
	if stitched != nil {
		done := make(chan struct{})
		defer func() {
			close(done)
			stitched.End()
		}()
		go func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case now := <-t.C:
					stitched.Tick(now)
				case <-done:
					return
				}
			}
		}()
	}
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
				errs[i] = logging.ErrReported // svctrace said why, or found a problem
			}
		}()
	}
	wg.Wait()
	failed := false
	for _, err := range errs {
		if err != nil && !errors.Is(err, logging.ErrReported) {
			log.Error(err.Error())
		}
		failed = failed || err != nil
	}
	if failed {
		return logging.ErrReported
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
	// stitched takes the lines of -o parts; others go to stderr.
	stitched *Stitched
}

func (m *merger) sink(node string) func(string) {
	return func(line string) {
		if m.stitched != nil {
			// Its messages, and anything not -o parts, to stderr.
			if strings.HasPrefix(line, logging.Prefix) || !m.stitched.line(node, line, time.Now()) {
				m.mu.Lock()
				defer m.mu.Unlock()
				fmt.Fprintln(m.stderr, "["+node+"] "+line)
			}
			return
		}
		w := m.stdout
		isObject := strings.HasPrefix(line, "{")
		switch {
		case strings.HasPrefix(line, logging.Prefix), m.json && !isObject:
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

// Plural is what, or whats when n is not 1.
func Plural(n int, what string) string {
	if n == 1 {
		return what
	}
	return what + "s"
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// Stitched prints what the svctrace of several nodes reports (-o parts) as
// connections stitched across the nodes they crossed (internal/stitch),
// on the clock of the first node heard from: the diagnoses as they come,
// each connection once the other nodes had Hold to report theirs of it,
// and the summary at the end.
type Stitched struct {
	mu   sync.Mutex
	p    output.Printer
	live stitch.Live
	sum  output.Summary
	lost map[string]uint64
}

// NewStitched prints with the printer newPrinter makes, holding each
// connection for hold.
func NewStitched(newPrinter func(output.Options) (output.Printer, error), hold time.Duration) (*Stitched, error) {
	s := &Stitched{lost: map[string]uint64{}}
	s.live.Hold = hold
	p, err := newPrinter(output.Options{Wall: s.live.Wall})
	if err != nil {
		return nil, err
	}
	s.p = p
	return s, nil
}

// line takes one line of node's -o parts, come at now; false if it is not
// one (it is then the caller's to show).
func (s *Stitched) line(node, line string, now time.Time) bool {
	part, err := output.ReadPart([]byte(line))
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch part.Kind {
	case "clock":
		s.live.Clock(node, part.Clock, now)
	case "diagnosis":
		if part.Diagnosis != nil {
			s.p.Diagnosis(*part.Diagnosis)
		}
	case "resolution":
		if part.Resolution != nil {
			s.p.Resolution(*part.Resolution)
		}
	case "connection":
		if part.Conn != nil && part.Conn.Conn != nil {
			s.live.Add(node, *part.Conn, now)
		}
	case "lost":
		s.lost[node] = part.Lost
		var total uint64
		for _, n := range s.lost {
			total += n
		}
		s.p.Lost(total)
	case "summary":
		if part.Summary != nil {
			s.sum.Lost += part.Summary.Lost
			s.sum.Orphans += part.Summary.Orphans
		}
	}
	return true
}

// Tick prints the connections ready at now.
func (s *Stitched) Tick(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.print(s.live.Ready(now))
}

// End prints every connection still held, and the summary.
func (s *Stitched) End() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.print(s.live.Flush())
	s.p.Summary(s.sum)
}

func (s *Stitched) print(cs []report.Conn) {
	for _, c := range cs {
		s.sum.Count(c.Conn)
		s.p.Conn(c)
	}
}
