package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/test/cluster"
)

// TestHoldCluster is the subprocess of TestInterruptTearsDown: it brings a
// cluster up, says so, and waits to be interrupted.
func TestHoldCluster(t *testing.T) {
	if os.Getenv("SVCTRACE_HOLD_CLUSTER") != "1" {
		t.Skip("run by TestInterruptTearsDown")
	}
	c := cluster.Up(t, cluster.Options{Mode: cluster.IPTables})
	os.Stdout.WriteString("up " + c.ID + "\n")
	time.Sleep(time.Minute)
}

// Ctrl-C on `go test` leaves no cluster behind.
func TestInterruptTearsDown(t *testing.T) {
	cluster.RequireBinaries(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHoldCluster$", "-test.v")
	cmd.Env = append(os.Environ(), "SVCTRACE_HOLD_CLUSTER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id := ""
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "up "); ok {
			id = rest
			break
		}
	}
	if id == "" {
		cmd.Wait()
		t.Fatal("the cluster did not come up")
	}
	if n := topo.List(cluster.Prefix + id + "-"); len(n) < 3 {
		t.Fatalf("namespaces of cluster %s: %v", id, n)
	}
	cmd.Process.Signal(syscall.SIGINT)
	go func() {
		for sc.Scan() { // keep the pipe drained
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("still running 30s after SIGINT")
	}
	if left := topo.List(cluster.Prefix + id + "-"); len(left) > 0 {
		t.Errorf("left behind after SIGINT: %v", left)
	}
}
