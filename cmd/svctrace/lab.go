package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/session"
)

type labOptions struct {
	*globals
	keep    bool
	timeout time.Duration
	rec     recordFlags
}

// scenarioList is the lab's scenarios for --help, one a line: name,
// expected verdict, what is wrong.
func scenarioList() string {
	var b strings.Builder
	for _, s := range lab.Scenarios() {
		fmt.Fprintf(&b, "    %-17s → %-15s %s\n", s.Name, s.Expect, s.Title)
	}
	return b.String()
}

func newLab(g *globals) *cobra.Command {
	o := &labOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build a throwaway node in network namespaces and trace the classic Service failures",
		Long: `Build a small Kubernetes-like node out of network namespaces - a dual-stack node with a
bridge and kube-proxy-style iptables and ip6tables rules, pods serving HTTP and UDP, a
client - and trace one connection to each of its Services, each set up to fail in a classic
way (or not at all). Each Service is diagnosed and each connection explained from the lab's
Kubernetes objects and the node's rules, as svctrace SERVICE does on a real node:

` + scenarioList() + `
Everything is removed at the end and on Ctrl-C. Nothing leaves the lab: its addresses exist
only in its own namespaces. Exits non-zero if a scenario gives an unexpected verdict, so it
doubles as a self-test of svctrace on this kernel.`,
		Example: `  sudo svctrace lab
  sudo svctrace lab -o json
  sudo svctrace lab --keep        # leave it up and trace it by hand
  sudo svctrace lab -w lab.svctrace && svctrace analyze lab.svctrace -o pcapng > lab.pcapng
  sudo svctrace lab cleanup       # remove labs left behind`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	cmd.Flags().BoolVar(&o.keep, "keep", false, "leave the lab up afterwards and print how to trace and remove it")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 1500*time.Millisecond, "how long the client and the tracer wait for an answer")
	o.rec.add(cmd.Flags())
	cmd.AddCommand(&cobra.Command{
		Use:   "cleanup [ID]",
		Short: "Remove a lab left up with --keep (or by a crash); without ID, every lab not in use",
		Long: `Remove a lab left up with svctrace lab --keep, or by a crash: stop its Pod servers and delete
its network namespaces. A lab whose svctrace is still running is left alone. Without ID,
every lab not in use is removed.`,
		Example: `  sudo svctrace lab cleanup          # every lab not in use
  sudo svctrace lab cleanup 4f2a9c   # the lab whose id svctrace lab --keep printed`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0] // Cleanup checks it is a lab id
			}
			removed, err := lab.Cleanup(id)
			for _, n := range removed {
				fmt.Fprintf(g.stdout, "removed network namespace %s\n", n)
			}
			if len(removed) == 0 && err == nil {
				fmt.Fprintln(g.stdout, "no lab to remove")
			}
			if err != nil {
				// One line per lab that could not be removed.
				return errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
			}
			return nil
		},
	})
	return cmd
}

func (o *labOptions) run(ctx context.Context) error {
	if err := o.rec.validate(); err != nil {
		return err
	}
	if err := checkStops(0, 0, o.timeout); err != nil {
		return err
	}
	w, err := o.rec.create()
	if err != nil {
		return err
	}
	return session.RunLab(ctx, session.Lab{IO: o.io(), Keep: o.keep, Timeout: o.timeout, Backend: o.backend,
		Rec: w, Snaplen: o.rec.snaplen, EveryPacket: o.rec.everyPacket})
}
