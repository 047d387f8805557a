package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/test/cluster"
)

// everyService runs svctrace -A on the node with every story's Service
// alive at once, while each story's client connects: it prints exactly
// the connections that were not answered, each with its story's verdict
// and blame, and a table that counts every story's Service port; then
// svctrace check -A lists exactly the Services whose first finding is a
// problem.
func everyService(t *testing.T, c *cluster.Cluster, ss []*story) {
	var traced []*story
	for _, s := range ss {
		if s.expect != "" {
			traced = append(traced, s)
		}
	}
	const timeout = 1500 * time.Millisecond
	out := tracing(t, c, []string{"-A", "--kubeconfig", c.Kubeconfig, "-o", "json", "--duration", "10s", "--timeout", timeout.String()}, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for _, s := range traced {
			wg.Go(func() { s.get(ctx, c, dest(c, s), timeout) })
		}
		wg.Wait()
	})
	type conn struct {
		Kind    string
		Verdict flow.Verdict
		VIP     string
		Service string
		Blame   string
	}
	var conns []conn
	var table struct {
		Final    bool
		Services []output.ServiceRow
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var k struct{ Kind string }
		if json.Unmarshal(sc.Bytes(), &k) != nil {
			t.Fatalf("not JSON: %s", sc.Text())
		}
		switch k.Kind {
		case "connection":
			var cn conn
			json.Unmarshal(sc.Bytes(), &cn)
			conns = append(conns, cn)
		case "services":
			json.Unmarshal(sc.Bytes(), &table)
		}
	}
	if !table.Final {
		t.Fatalf("no final table of Service ports:\n%s", out)
	}
	for _, cn := range conns {
		if cn.Verdict == flow.Answered {
			t.Errorf("an answered connection printed without --all-verdicts: %+v", cn)
		}
	}
	for _, s := range traced {
		dst := dest(c, s).String()
		var mine []conn
		for _, cn := range conns {
			if cn.VIP == dst {
				mine = append(mine, cn)
			}
		}
		port := s.svc.Namespace + "/" + s.svc.Name
		if n := s.svc.Spec.Ports[0].Name; n != "" {
			port += ":" + n
		}
		i := slices.IndexFunc(table.Services, func(r output.ServiceRow) bool { return r.Port == port })
		if i < 0 {
			t.Errorf("%s: no row for %s in the table", s.name, port)
			continue
		}
		row := table.Services[i]
		if s.expect == flow.Answered {
			if len(mine) > 0 || row.Conns == 0 || row.Answered != row.Conns {
				t.Errorf("%s: answered, yet %d connection(s) printed; row %+v", s.name, len(mine), row)
			}
			continue
		}
		ok := func(v flow.Verdict) bool { return v == s.expect || (s.orExpect != "" && v == s.orExpect) }
		if len(mine) == 0 || !ok(mine[0].Verdict) {
			t.Errorf("%s: printed %+v; want a %s connection to %s", s.name, mine, s.expect, dst)
			continue
		}
		if s.blame != "" && !strings.Contains(mine[0].Blame, s.blame) {
			t.Errorf("%s: blame %q\nwant %q", s.name, mine[0].Blame, s.blame)
		}
		if row.Conns < len(mine) || !slices.ContainsFunc(row.Failing, func(f output.FailingRow) bool { return ok(f.Verdict) && f.Conns > 0 }) {
			t.Errorf("%s: row %+v for %d printed connection(s)", s.name, row, len(mine))
		}
	}
	if t.Failed() {
		t.Logf("svctrace -A printed:\n%s", out)
	}

	// check -A: one line per broken Service, exit 1.
	args := []string{"netns", "exec", filepath.Base(c.Node.Path), svctrace(t), "check", "-A", "--kubeconfig", c.Kubeconfig, "--node", cluster.NodeName, "-o", "json"}
	got, err := exec.Command("ip", args...).Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("check -A: %v, want exit 1", err)
	}
	listed := map[string]string{}
	sc = bufio.NewScanner(strings.NewReader(string(got)))
	for sc.Scan() {
		var l output.ServiceCheck
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("check -A: %v: %s", err, sc.Text())
		}
		if l.Service == "" {
			t.Errorf("check -A: a problem of node %s: %+v", l.Node, l.Finding)
		}
		listed[l.Service] = string(l.Finding.Code)
	}
	for _, s := range ss {
		key := s.svc.Namespace + "/" + s.svc.Name
		code, ok := listed[key]
		delete(listed, key)
		switch broken := mark(s.finding) == "✗"; {
		case s.orExpect != "":
			// Its finding's severity may differ with the verdict (an ICMP
			// error that may not come, a neighbour entry that failed).
		case broken && !ok:
			t.Errorf("check -A: %s (%s) not listed", key, s.finding)
		case !broken && ok:
			t.Errorf("check -A: %s listed with %s; its first finding is %s", key, code, s.finding)
		}
	}
	for key, code := range listed {
		t.Errorf("check -A: %s listed (%s), no story's Service", key, code)
	}
	if t.Failed() {
		t.Logf("check -A printed:\n%s", got)
	}
}
