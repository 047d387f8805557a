package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The cluster size of make bench's memory figure: 10,000 Services of 10
// endpoints each.
const (
	scaleServices   = 10000
	scaleNamespaces = 100
	scaleEndpoints  = 10
)

// BenchmarkTraceAgainstAPIAtScale measures the memory of `svctrace
// SERVICE` tracing one Service against an API server that holds 10,000
// other Services and 100,000 endpoints, next to the same run against an
// API server holding only that Service. make bench runs it once
// (-benchtime 1x) and reports the metrics.
//
// The other Services carry kube-proxy's service-proxy-name label, so this
// node's kube-proxy leaves them to another proxy: the API server holds
// them, but the node's ruleset stays small (ruleset parsing at that scale
// is measured on its own, in test/bench).
func BenchmarkTraceAgainstAPIAtScale(b *testing.B) {
	c := cluster.Up(b, cluster.Options{Mode: cluster.IPTables})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := healthy(ctx, b, c)
	b.ResetTimer()
	one := []string{s.svc.Name, "-n", shop}
	// -A watches every Service and EndpointSlice and traces all their
	// addresses; --all-verdicts prints the answered connections counted.
	all := []string{"-A", "--all-verdicts"}
	for range b.N {
		small := traceRSS(b, c, s, one)
		b.StopTimer()
		start := time.Now()
		if err := fillAPI(ctx, c); err != nil {
			b.Fatal(err)
		}
		b.Logf("created %d Services and EndpointSlices of %d endpoints in %s", scaleServices, scaleEndpoints, time.Since(start).Round(time.Second))
		b.StartTimer()
		large := traceRSS(b, c, s, one)
		every := traceRSS(b, c, s, all)
		churn := churnCPU(ctx, b, c, all)
		b.ReportMetric(churn, "pct-core-all-churn")
		checked, lines := checkAll(b, c)
		b.ReportMetric(checked, "s-check-all-large-API")
		b.ReportMetric(float64(lines), "check-all-lines")
		b.ReportMetric(every.peak, "MB-peak-RSS-all-large-API")
		b.ReportMetric(every.rss, "MB-RSS-all-large-API")
		b.ReportMetric(every.anon, "MB-anon-all-large-API")
		b.ReportMetric(every.ready, "s-to-tracing-all-large-API")
		b.ReportMetric(small.peak, "MB-peak-RSS-small-API")
		b.ReportMetric(large.peak, "MB-peak-RSS-large-API")
		b.ReportMetric(small.rss, "MB-RSS-small-API")
		b.ReportMetric(large.rss, "MB-RSS-large-API")
		b.ReportMetric(small.anon, "MB-anon-small-API")
		b.ReportMetric(large.anon, "MB-anon-large-API")
		b.ReportMetric(small.ready, "s-to-tracing-small-API")
		b.ReportMetric(large.ready, "s-to-tracing-large-API")
		b.ReportMetric(scaleServices+1, "Services")
		b.ReportMetric(scaleServices*scaleEndpoints, "endpoints")
	}
}

// traced is what one traced run of `svctrace SERVICE` cost, in MB and
// seconds.
type traced struct {
	peak float64 // the process's peak resident set (while loading), VmHWM
	// rss is the resident set while tracing, after the connections; anon
	// is the part of it that is the process's own memory: not pages of the
	// executable file, not the ring buffer shared with the kernel.
	rss, anon float64
	ready     float64 // from exec to tracing (API latency included)
}

// traceRSS runs svctrace with what (`SERVICE -n NS`, or -A) against the
// API server for a few seconds while the client makes 20 connections to
// s, and returns the command's peak RSS. The connections must all be
// answered in its output.
func traceRSS(b *testing.B, c *cluster.Cluster, s *story, what []string) traced {
	b.Helper()
	const conns = 20
	args := append([]string{"netns", "exec", filepath.Base(c.Node.Path), svctrace(b)}, what...)
	cmd := exec.Command("ip", append(args, "--node", cluster.NodeName, "--kubeconfig", c.Kubeconfig,
		"--count", strconv.Itoa(conns), "--duration", "60s", "--timeout", "1s")...)
	var stdout strings.Builder
	var stderr syncBuilder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Process.Kill()
	ready := untilTracing(b, &stderr, start)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var status []byte
	for i := range conns {
		if i == conns-1 { // the last one ends the run: read before it
			var err error
			if status, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := c.Get(ctx, dest(c, s), "/", time.Second); err != nil {
			b.Fatal(err)
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("svctrace: %v\n%s", err, stderr.String())
	}
	if n := strings.Count(stdout.String(), "✓ answered"); n != conns {
		b.Fatalf("%d connections answered in svctrace's output, want %d:\n%s", n, conns, stdout.String())
	}
	// ip netns exec execs svctrace in its own process. VmHWM, not
	// getrusage: ru_maxrss keeps the high-water mark from before exec.
	return traced{peak: testutil.StatusMB(status, "VmHWM"), rss: testutil.StatusMB(status, "VmRSS"), anon: testutil.StatusMB(status, "RssAnon"), ready: ready.Seconds()}
}

// untilTracing waits until the svctrace writing stderr says it traces,
// at most a minute from start, and returns how long that took.
func untilTracing(b *testing.B, stderr *syncBuilder, start time.Time) time.Duration {
	b.Helper()
	for !strings.Contains(stderr.String(), "Ctrl-C to stop") {
		if time.Since(start) > time.Minute {
			b.Fatalf("svctrace did not start tracing in a minute:\n%s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// churnRate and churnFor: how many EndpointSlices a second churnCPU
// changes, and how long.
const (
	churnRate = 20
	churnFor  = 20 * time.Second
)

// churnCPU runs svctrace what (-A) against the API server filled by
// fillAPI while churnRate of its EndpointSlices a second change (an
// endpoint's readiness flips, as Pods come and go in a busy cluster), and
// returns the CPU svctrace used meanwhile, in % of one core.
func churnCPU(ctx context.Context, b *testing.B, c *cluster.Cluster, what []string) float64 {
	b.Helper()
	cs, err := scaleClient(c)
	if err != nil {
		b.Fatal(err)
	}
	args := append([]string{"netns", "exec", filepath.Base(c.Node.Path), svctrace(b)}, what...)
	cmd := exec.Command("ip", append(args, "--node", cluster.NodeName, "--kubeconfig", c.Kubeconfig, "--duration", "2m")...)
	var stderr syncBuilder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	untilTracing(b, &stderr, time.Now())
	time.Sleep(2 * time.Second) // start-up's garbage collected, the first change taken up
	cpu := func() float64 {
		ns, ok := testutil.RunNanos(cmd.Process.Pid)
		if !ok {
			b.Fatalf("svctrace's CPU time: not readable\n%s", stderr.String())
		}
		return ns
	}
	before, start := cpu(), time.Now()
	tick := time.NewTicker(time.Second / churnRate)
	defer tick.Stop()
	for i := 0; time.Since(start) < churnFor; i++ {
		<-tick.C
		ns, name := fmt.Sprintf("scale-%d", i%scaleNamespaces), fmt.Sprintf("svc-%d-1", i%scaleServices)
		sl, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ready := !*sl.Endpoints[0].Conditions.Ready
		sl.Endpoints[0].Conditions.Ready = &ready
		if _, err := cs.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	used := cpu() - before
	return 100 * used / float64(time.Since(start).Nanoseconds())
}

// checkAll runs svctrace check -A against the API server filled by
// fillAPI: how long it took (exec to exit), and how many Services it
// found a problem with (its JSON lines).
func checkAll(b *testing.B, c *cluster.Cluster) (float64, int) {
	b.Helper()
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(c.Node.Path), svctrace(b), "check", "-A", "-o", "json",
		"--node", cluster.NodeName, "--kubeconfig", c.Kubeconfig)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 1) { // 1: problems found
		b.Fatalf("svctrace check -A: %v\n%s", err, stderr.String())
	}
	return took.Seconds(), strings.Count(string(out), "\n")
}

// scaleClient is a client of c's API server without a client-side rate
// limit.
func scaleClient(c *cluster.Cluster) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Dial = c.DialContext
	cfg.QPS, cfg.Burst = -1, 0
	return kubernetes.NewForConfig(cfg)
}

// fillAPI creates scaleServices Services without selectors, each with an
// EndpointSlice of scaleEndpoints ready endpoints, spread over
// scaleNamespaces namespaces, with many requests in flight.
func fillAPI(ctx context.Context, c *cluster.Cluster) error {
	cs, err := scaleClient(c)
	if err != nil {
		return err
	}
	for i := range scaleNamespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%d", i)}}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := createScaled(ctx, cs, i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range scaleServices {
		select {
		case work <- i:
		case err := <-errs:
			close(work)
			wg.Wait()
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func createScaled(ctx context.Context, cs kubernetes.Interface, i int) error {
	ns, name := fmt.Sprintf("scale-%d", i%scaleNamespaces), fmt.Sprintf("svc-%d", i)
	portName, proto, port := "http", corev1.ProtocolTCP, int32(8080)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{"service.kubernetes.io/service-proxy-name": "elsewhere"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: portName, Port: 80, Protocol: proto}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating Service %s/%s: %w", ns, name, err)
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "svctrace-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &port}},
	}
	for j := range scaleEndpoints {
		ok := true
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 128+j, i>>8, i&0xff)},
			Conditions: discoveryv1.EndpointConditions{Ready: &ok}})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating EndpointSlice %s/%s: %w", ns, sl.Name, err)
	}
	return nil
}
