package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// serverEnv carries a server's configuration to a re-executed copy of the
// running binary (svctrace or a test binary): see ServeIfChild.
const serverEnv = "SVCTRACE_LAB_SERVER"

// Server modes.
const (
	ModeHTTP = "http" // answers HTTP, and UDP datagrams, on every port
	// ModeHTTP4 is ModeHTTP on IPv4 only, as a server bound to 0.0.0.0.
	ModeHTTP4 = "http4"
	ModeHung  = "hung" // listens but never accepts; its accept queue is full
	// ModeLoopback is ModeHTTP on 127.0.0.1 only: a server that listens,
	// but not on the Pod's address.
	ModeLoopback = "loopback"
	// ModeStall accepts connections and never reads them, with a small
	// receive buffer: a client that sends more than it holds meets a
	// closed window.
	ModeStall = "stall"
	// ModeDNS answers DNS over UDP and TCP, standing in for CoreDNS in
	// the lab (no API server): the cluster domain's names in DNSZone, and
	// NXDOMAIN for every other.
	ModeDNS = "dns"
)

// DNSZone are the names the lab's DNS server answers, as CoreDNS would
// for the lab's Services: Service web of namespace lab.
var DNSZone = map[string]string{"web." + Namespace + ".svc.cluster.local.": "10.96.0.10"}

type serverSpec struct {
	NetNS string `json:"netns"` // namespace path
	Name  string `json:"name"`  // pod name, in responses
	Mode  string `json:"mode"`
	Ports []int  `json:"ports"`
	// WatchStdin: exit when stdin closes, i.e. when the lab process that
	// started the server is gone (unless the lab was kept).
	WatchStdin bool `json:"watchStdin"`
	// Etc are files of /etc the server sees in place of the node's
	// (resolv.conf, hosts), by name: as a container runtime mounts a Pod's,
	// in a mount namespace of the server's own.
	Etc map[string]string `json:"etc,omitempty"`
}

// ServeIfChild runs a lab pod server and exits if this process was started
// as one; otherwise it returns at once. Binaries that start labs call it first
// thing in main (tests: in TestMain).
func ServeIfChild() {
	raw := os.Getenv(serverEnv)
	if raw == "" {
		return
	}
	var spec serverSpec
	err := json.Unmarshal([]byte(raw), &spec)
	if err == nil {
		err = serve(spec)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lab server: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serve(spec serverSpec) error {
	if err := mountEtc(spec.Etc); err != nil {
		return err
	}
	// Sockets belong to the namespace of the thread that creates them.
	runtime.LockOSThread()
	ns, err := netns.GetFromPath(spec.NetNS)
	if err != nil {
		return err
	}
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("entering %s: %w", spec.NetNS, err)
	}
	switch spec.Mode {
	case ModeHTTP, ModeHTTP4, ModeLoopback:
		tcp, udp, host := "tcp", "udp", ""
		switch spec.Mode {
		case ModeHTTP4:
			tcp, udp = "tcp4", "udp4"
		case ModeLoopback:
			tcp, udp, host = "tcp4", "udp4", "127.0.0.1"
		}
		for _, port := range spec.Ports {
			ln, err := net.Listen(tcp, fmt.Sprintf("%s:%d", host, port))
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: handler(spec.Name), ReadHeaderTimeout: 5 * time.Second}
			go srv.Serve(ln)
			pc, err := net.ListenPacket(udp, fmt.Sprintf("%s:%d", host, port))
			if err != nil {
				return err
			}
			go echo(pc, spec.Name)
		}
	case ModeHung:
		for _, port := range spec.Ports {
			if err := hungListener(port); err != nil {
				return err
			}
		}
	case ModeStall:
		for _, port := range spec.Ports {
			if err := stallListener(port); err != nil {
				return err
			}
		}
	case ModeDNS:
		for _, port := range spec.Ports {
			if err := dnsServer(port); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown mode %q", spec.Mode)
	}
	fmt.Println("ready")
	if spec.WatchStdin {
		io.Copy(io.Discard, os.Stdin)
		return nil
	}
	// A kept lab's server runs until it is killed (svctrace lab cleanup)
	// or told to stop. Waiting on a signal, not on nothing: a server with
	// no goroutine of its own (the hung one) would otherwise be all asleep,
	// which the runtime ends as a deadlock.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	return nil
}

// echo answers every datagram with a greeting.
func echo(pc net.PacketConn, name string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte("hello from "+name+"\n"), from)
	}
}

// handler answers "/" with a greeting and "/bytes/N" with N bytes of a
// fixed pattern (for checking that tracing changes no byte).
func handler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	mux.HandleFunc("/bytes/", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/"))
		if err != nil || n < 0 || n > 64<<20 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, 4096)
		for i := range buf {
			buf[i] = byte(i*7 + i/256)
		}
		for n > 0 {
			k := min(n, len(buf))
			w.Write(buf[:k])
			n -= k
		}
	})
	return mux
}

// hungListener listens on port with a backlog of one and never accepts, then
// fills the accept queue from inside the pod. The pod's kernel now drops every
// further SYN without answering: a server that stopped accepting, seen from
// the network as an endpoint that does not reply.
func hungListener(port int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		return fmt.Errorf("binding :%d: %w", port, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return err
	}
	// With backlog 1 the queue is full once it holds two connections.
	for i := 0; i < 2; i++ {
		if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err != nil {
			return fmt.Errorf("filling the accept queue: %w", err)
		}
	}
	return nil
}

// stallListener accepts on port and never reads what it accepted. The
// receive buffer is set on the listener, before the handshake, so that the
// window it advertises is small from the start.
func stallListener(port int) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		return err
	}}
	ln, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	go func() {
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return nil
}

// dnsServer answers DNS on port, over UDP and TCP, from DNSZone.
func dnsServer(port int) error {
	answer := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		if len(q.Question) == 0 {
			w.WriteMsg(m.SetRcode(q, dns.RcodeFormatError))
			return
		}
		qs := q.Question[0]
		addr, ok := DNSZone[strings.ToLower(qs.Name)]
		switch {
		case !ok:
			m.SetRcode(q, dns.RcodeNameError)
		case qs.Qtype == dns.TypeA:
			rr, err := dns.NewRR(fmt.Sprintf("%s 30 IN A %s", qs.Name, addr))
			if err == nil {
				m.Answer = []dns.RR{rr}
			}
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	go (&dns.Server{PacketConn: pc, Handler: answer}).ActivateAndServe()
	go (&dns.Server{Listener: ln, Handler: answer}).ActivateAndServe()
	return nil
}

// Server is a running pod server: this binary started again inside a pod's
// network namespace.
type Server struct {
	cmd *exec.Cmd
	// stdin is held open for the server's lifetime: it exits when it closes.
	stdin io.WriteCloser
}

// Stop kills the server.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

// StartServer starts a server in ns that serves mode on ports, and waits
// until it listens. name is what its HTTP answers say. It stops by itself when
// this process exits.
func StartServer(ns nf.NetNS, name, mode string, ports []int) (*Server, error) {
	return StartPodServer(ns, name, mode, ports, nil)
}

// StartPodServer is StartServer for a server that sees etc's files in
// /etc (a Pod's resolv.conf and hosts), by name, in place of the node's.
func StartPodServer(ns nf.NetNS, name, mode string, ports []int, etc map[string]string) (*Server, error) {
	return startServer(serverSpec{NetNS: ns.Path, Name: name, Mode: mode, Ports: ports, WatchStdin: true, Etc: etc})
}

// mountEtc puts etc's files over /etc's in this process's own mount
// namespace (startServer made it): each written to a file of its own,
// bound over the node's, then unlinked (the mount holds it).
func mountEtc(etc map[string]string) error {
	for name, text := range etc {
		f, err := os.CreateTemp("", "svctrace-etc-")
		if err != nil {
			return err
		}
		_, err = f.WriteString(text)
		f.Close()
		if err == nil {
			err = unix.Mount(f.Name(), filepath.Join("/etc", name), "", unix.MS_BIND, "")
		}
		os.Remove(f.Name())
		if err != nil {
			return fmt.Errorf("mounting the Pod's /etc/%s: %w", name, err)
		}
	}
	return nil
}

// startServer starts a pod server and waits until it listens.
func startServer(spec serverSpec) (*Server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(spec)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), serverEnv+"="+string(raw))
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if len(spec.Etc) > 0 {
		// A mount namespace of its own (its mounts private to it) for
		// the Pod's /etc files.
		cmd.SysProcAttr.Unshareflags = unix.CLONE_NEWNS
	}
	s := &Server{cmd: cmd}
	if spec.WatchStdin {
		cmd.Stderr = os.Stderr
		if s.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Started from a thread inside the pod's namespace, every thread of the
	// server is in it from the start, as a Pod's processes are: its
	// /proc/PID/ns/net names the pod's namespace (what --from pod/NAME and
	// svctrace's socket reading look for), whichever thread serve locks.
	start := func() error { return cmd.Start() }
	if spec.NetNS != "" {
		start = func() error {
			return nf.InNetNS(nf.NetNS{Spec: spec.NetNS, Path: spec.NetNS}, func() error { return cmd.Start() })
		}
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("starting server %s: %w", spec.Name, err)
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("not ready after 10s")
	}
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("server %s: %w", spec.Name, err)
	}
	return s, nil
}
