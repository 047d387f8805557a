package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svctrace/svctrace/internal/resolve"
)

// kubeFlags are kubectl's own flags for reaching the API server
// (genericclioptions.ConfigFlags: -n, --kubeconfig, --context, --as,
// --token, --server, --request-timeout, …). The rarely used ones are
// accepted but hidden from --help.
type kubeFlags struct {
	*genericclioptions.ConfigFlags
	own *pflag.FlagSet // the flags above, added to the command's
}

// hiddenKubeFlags are accepted, not listed.
var hiddenKubeFlags = []string{"cache-dir", "certificate-authority", "client-certificate", "client-key", "tls-server-name",
	"insecure-skip-tls-verify", "username", "password", "cluster", "user", "as-uid", "disable-compression"}

// credentialFlags name the credentials to use: given any, svctrace uses
// them alone, without falling back to in-cluster or kubelet credentials.
var credentialFlags = []string{"kubeconfig", "context", "cluster", "user", "server", "token", "client-certificate", "client-key", "username", "password"}

func addKubeFlags(fs *pflag.FlagSet, nsUsage string) *kubeFlags {
	k := &kubeFlags{ConfigFlags: genericclioptions.NewConfigFlags(false), own: pflag.NewFlagSet("kube", pflag.ContinueOnError)}
	k.AddFlags(k.own)
	for name, usage := range map[string]string{
		"namespace":       nsUsage,
		"kubeconfig":      "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster, then the node's kubelet credentials)",
		"context":         "kubeconfig context to use",
		"as":              "user to impersonate in API requests (a user, or system:serviceaccount:NAMESPACE:NAME)",
		"as-group":        "group to impersonate in API requests (repeat for several)",
		"server":          "the API server's address (with --token, no kubeconfig is needed)",
		"token":           "bearer token for the API server",
		"request-timeout": "how long to wait for each API request (e.g. 5s, 1m; 0: svctrace's default, 15s)",
	} {
		k.own.Lookup(name).Usage = usage
	}
	for _, n := range hiddenKubeFlags {
		if f := k.own.Lookup(n); f != nil {
			f.Hidden = true
		}
	}
	fs.AddFlagSet(k.own)
	return k
}

// given are the flags other than -n that were set (Changed is the
// command's flag set's: it holds these very flags): what --objects does not
// go with.
func (k *kubeFlags) given() []string {
	var out []string
	k.own.VisitAll(func(f *pflag.Flag) {
		if f.Changed && f.Name != "namespace" {
			out = append(out, "--"+f.Name)
		}
	})
	return out
}

// namespace is -n, else the kubeconfig context's, else "default", as
// kubectl does.
func (k *kubeFlags) namespace() string {
	ns, _, err := k.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}

// connectOptions are what resolve.Connect needs from the flags.
func (k *kubeFlags) connectOptions(hostRoot string) (resolve.ConnectOptions, error) {
	opts := resolve.ConnectOptions{Config: k.ToRawKubeConfigLoader(), HostRoot: hostRoot, Context: *k.Context}
	for _, n := range credentialFlags {
		if f := k.own.Lookup(n); f != nil && f.Changed {
			opts.Explicit = true
		}
	}
	opts.Impersonate = rest.ImpersonationConfig{UserName: *k.Impersonate, UID: *k.ImpersonateUID, Groups: *k.ImpersonateGroup}
	if t := *k.Timeout; t != "" && t != "0" {
		d, err := clientcmd.ParseTimeout(t)
		if err != nil {
			return opts, fmt.Errorf("--request-timeout %q: want a duration such as 5s or 1m, or 0", t)
		}
		opts.Timeout = d
	}
	return opts, nil
}

// connect reaches the API server with the first credentials that work.
func (k *kubeFlags) connect(ctx context.Context, ns, hostRoot string, logf func(string, ...any)) (*resolve.API, error) {
	opts, err := k.connectOptions(hostRoot)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return resolve.Connect(cctx, opts, ns, logf)
}

// files are the kubeconfig files a run reads: what -w must not write over.
func (k *kubeFlags) files() []string {
	if *k.KubeConfig != "" {
		return []string{*k.KubeConfig}
	}
	return append(filepath.SplitList(os.Getenv(clientcmd.RecommendedConfigPathEnvVar)), clientcmd.RecommendedHomeFile)
}
