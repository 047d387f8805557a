// The Go runtime re-reads the CPU limit every second by default (GOMAXPROCS
// follows a container's limit as it changes): half of what svctrace cost
// while it waited with nothing to follow. It is read once, at start.
//
//go:debug updatemaxprocs=0

// Command svctrace shows where connections to a Kubernetes Service die on a
// node, and why: it follows each connection through conntrack, DNAT, the
// filter table and SNAT with eBPF.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/klog/v2"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/logging"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/outstream"
	"github.com/svctrace/svctrace/internal/session"
)

// Set with -ldflags "-X main.version=…".
var version = "dev"

// errSilent is returned by commands that already said what went wrong.
var errSilent = session.ErrReported

// exitBrokenPipe is the exit status when standard output was closed (svctrace
// … | head): what the shell reports for a process SIGPIPE killed, only
// after svctrace has detached and removed what it set up.
const exitBrokenPipe = 128 + int(syscall.SIGPIPE)

func main() {
	// A lab pod server is this binary started again in a pod's namespace.
	lab.ServeIfChild()

	// A closed pipe (svctrace … | head) must not kill svctrace before it has
	// detached and removed what it set up: let the write fail instead, and
	// stop as on Ctrl-C (stdout).
	signal.Ignore(syscall.SIGPIPE)
	// client-go logs its retries through klog on stderr; svctrace says
	// what matters itself, once (a watch that fails, with --verbose more).
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(ctx)
	out := outstream.New(os.Stdout, cancel)
	root := newRoot(out, os.Stderr)
	if isPlugin(os.Args[0]) {
		root = newPlugin(out, os.Stderr)
	}
	stopProfile := startProfile()
	err := root.ExecuteContext(ctx)
	stopProfile()
	stop()
	cancel()
	if werr := out.Err(); werr != nil {
		if errors.Is(werr, syscall.EPIPE) {
			os.Exit(exitBrokenPipe) // the reader is gone: nobody to tell
		}
		fmt.Fprintf(os.Stderr, logging.Prefix+"writing the output: %v\n", werr)
		os.Exit(1)
	}
	if err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintf(os.Stderr, logging.Prefix+"%v\n", err)
		}
		os.Exit(1)
	}
}

// globals are the flags every command has.
type globals struct {
	output  string        // -o as given
	format  output.Format // -o, once checkOutput parsed it
	log     *slog.Logger  // see logger
	verbose bool
	backend string
	noColor bool
	stdout  io.Writer
	stderr  io.Writer
}

// outputsKey is the annotation that lists the -o formats a command writes;
// without it, text and json.
const outputsKey = "svctrace/outputs"

// checkOutput parses -o into format, refusing a format the command does
// not write, before it starts: the one place -o is checked.
func (g *globals) checkOutput(cmd *cobra.Command, _ []string) error {
	formats := "text,json"
	if f, ok := cmd.Annotations[outputsKey]; ok {
		formats = f
	}
	list := strings.Split(formats, ",")
	if slices.Contains(list, g.output) {
		g.format = output.Format(g.output)
		return nil
	}
	if len(list) == 1 {
		return fmt.Errorf("unknown output format %q: %s writes -o %s only", g.output, cmd.CommandPath(), list[0])
	}
	for i := range list {
		list[i] = "-o " + list[i]
	}
	return fmt.Errorf("unknown output format %q: use %s or %s", g.output, strings.Join(list[:len(list)-1], ", "), list[len(list)-1])
}

// printer is the -o printer on stdout; text in color on a terminal.
func (g *globals) printer(opts output.Options) (output.Printer, error) {
	opts.Color = output.UseColor(g.noColor, isTerminal(g.stdout))
	return output.New(g.format, g.stdout, opts)
}

// io is where a session writes, and how it prints.
func (g *globals) io() session.IO {
	return session.IO{Stdout: g.stdout, Stderr: g.stderr, Printer: g.printer, Text: g.format == output.FormatText,
		Packets: g.format == output.FormatPcapNG, Status: isTerminal(g.stderr), Log: g.logger()}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// logger is where messages go: stderr, each line "svctrace: …"; details
// with --verbose.
func (g *globals) logger() *slog.Logger {
	if g.log == nil {
		g.log = logging.New(g.stderr, g.verbose)
	}
	return g.log
}

// logf prints progress and details with --verbose.
func (g *globals) logf(format string, args ...any) { logging.Printf(g.logger())(format, args...) }

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "svctrace (SERVICE [-n NAMESPACE] | -A | -n NAMESPACE)",
		Short: "Show where connections to a Kubernetes Service die on this node, and why",
		Long: `svctrace follows connections to a Service through the node's packet path with eBPF:
conntrack, the DNAT from the Service address to a Pod, the filter table, SNAT/MASQUERADE,
and the reply's way back. For every connection it prints a timeline and one verdict:

    answered        the destination replied and the reply was translated back
    rejected        the node answered itself (ICMP unreachable or TCP RST), e.g. no endpoints
    dropped         the node discarded a packet: hook, netfilter stage, reason, location
    reset           the endpoint answered with a TCP RST: nothing listens on the target port
    no-reply        forwarded to the endpoint, nothing came back
    not-translated  a packet to a Service address left the node without DNAT

First it diagnoses the Service from its objects (API or --objects) and kube-proxy's rules
on this node, then it traces, naming the Service port, Pod, Node and rule behind each step.

    Try it without a cluster:  sudo svctrace lab
    Which Service is failing:  sudo svctrace -A (every Service crossing the node; failing connections)
    Only the diagnosis:        svctrace check SERVICE -n NAMESPACE
    Trace addresses yourself:  sudo svctrace trace --addr 10.96.0.10:80
    From your own machine:     kubectl svctrace SERVICE -n NAMESPACE (this binary named kubectl-svctrace)`,
		Example:       serviceExamples,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.MaximumNArgs(1),
		// parts: what kubectl svctrace asks of its debug Pods to stitch
		// several nodes' connections.
		Annotations: map[string]string{outputsKey: "text,json,parts"},
	}
	o := &serviceOptions{globals: g}
	o.addFlags(root, true)
	root.RunE = func(cmd *cobra.Command, args []string) error { return o.dispatch(cmd, args, true) }
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentPreRunE = g.checkOutput
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output format: text or json (one object per line; analyze also pcapng)")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "show attach details, timings and verifier logs")
	root.PersistentFlags().BoolVar(&g.noColor, "no-color", false, "no colors in text output (also: the NO_COLOR environment variable; never when not a terminal)")
	root.PersistentFlags().StringVar(&g.backend, "backend", "", "force a kernel backend: netfilter-link, fentry or kprobe (default: the first that works; see kernel-support)")
	root.AddCommand(newCheck(g), newTrace(g), newLab(g), newAnalyze(g), newKernelSupport(g), newVersion(g), newMan(g))
	return root
}

func newVersion(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version",
		Example: "  svctrace version\n  svctrace version -o json",
		Args:    cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			if g.format == output.FormatJSON {
				b, _ := json.Marshal(map[string]string{"version": version, "go": runtime.Version(), "platform": runtime.GOOS + "/" + runtime.GOARCH})
				fmt.Fprintln(g.stdout, string(b))
				return
			}
			fmt.Fprintf(g.stdout, "svctrace %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}

// startProfile writes a CPU profile to $SVCTRACE_CPUPROFILE while svctrace
// runs, for make bench and for developers (go tool pprof); it returns what
// ends it.
func startProfile() func() {
	path := os.Getenv("SVCTRACE_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, logging.Prefix+"SVCTRACE_CPUPROFILE: %v (no profile written)\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
