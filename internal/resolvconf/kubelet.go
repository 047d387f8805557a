package resolvconf

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// ErrNoKubelet: no kubelet process runs where Kubelet looked.
var ErrNoKubelet = errors.New("no kubelet process found")

// Kubelet reads the cluster's DNS as this node's kubelet writes it into
// Pods: clusterDNS and clusterDomain from its configuration file (--config,
// read through the process's own root), overridden by its --cluster-dns and
// --cluster-domain flags, as the kubelet itself does. procRoot is /proc
// (the host's, inside kubectl debug node/…). from says where the values
// came from, for evidence.
func Kubelet(procRoot string) (cl Cluster, from string, err error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return Cluster{}, "", err
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		if comm, err := os.ReadFile(filepath.Join(dir, "comm")); err != nil || strings.TrimSpace(string(comm)) != "kubelet" {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue
		}
		return kubeletArgs(dir, strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
	}
	return Cluster{}, "", ErrNoKubelet
}

// kubeletArgs reads the DNS settings of the kubelet process at dir
// (/proc/PID) started with args.
func kubeletArgs(dir string, args []string) (Cluster, string, error) {
	flags := map[string]string{}
	for i := 1; i < len(args); i++ {
		name, value, ok := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") {
			continue
		}
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			value = args[i+1]
			i++
		}
		flags[name] = value
	}
	pid := filepath.Base(dir)
	var cl Cluster
	var from []string
	if path := flags["config"]; path != "" {
		file := filepath.Join(dir, "root", path)
		if !filepath.IsAbs(path) {
			file = filepath.Join(dir, "cwd", path)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			return Cluster{}, "", fmt.Errorf("kubelet (pid %s): reading its --config %s: %w", pid, path, err)
		}
		var conf struct {
			ClusterDNS    []string `json:"clusterDNS"`
			ClusterDomain string   `json:"clusterDomain"`
		}
		if err := yaml.Unmarshal(bytes.TrimSpace(raw), &conf); err != nil {
			return Cluster{}, "", fmt.Errorf("kubelet (pid %s): reading its --config %s: %w", pid, path, err)
		}
		if cl.DNS, err = addrs(conf.ClusterDNS); err != nil {
			return Cluster{}, "", fmt.Errorf("kubelet (pid %s): %s: clusterDNS: %w", pid, path, err)
		}
		cl.Domain = conf.ClusterDomain
		from = append(from, path)
	}
	if v, ok := flags["cluster-dns"]; ok {
		var err error
		if cl.DNS, err = addrs(strings.Split(v, ",")); err != nil {
			return Cluster{}, "", fmt.Errorf("kubelet (pid %s): --cluster-dns: %w", pid, err)
		}
		from = append(from, "--cluster-dns")
	}
	if v, ok := flags["cluster-domain"]; ok {
		cl.Domain = v
		from = append(from, "--cluster-domain")
	}
	cl.Domain = strings.TrimSuffix(cl.Domain, ".")
	if len(from) == 0 {
		from = []string{"no --config, no DNS flags"}
	}
	return cl, fmt.Sprintf("kubelet (pid %s: %s)", pid, strings.Join(from, ", ")), nil
}

func addrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
