package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/tracer"
)

func newKernelSupport(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "kernel-support",
		Aliases: []string{"kernel"},
		Short:   "Show what this kernel lets svctrace do and which backend it would use",
		Long: `Probe this kernel: load (and where harmless, attach) a minimal program for each capability
svctrace can use, and say which backend would be chosen. Needs root, like tracing itself.`,
		Example: `  sudo svctrace kernel-support
  sudo svctrace kernel-support -o json | jq .backend`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s := tracer.Probe()
			if g.format == output.FormatJSON {
				b, _ := json.MarshalIndent(s, "", "  ")
				fmt.Fprintln(g.stdout, string(b))
			} else {
				fmt.Fprintf(g.stdout, "kernel %s\n", s.Kernel)
				for _, f := range s.Features {
					mark := "✗"
					if f.OK {
						mark = "✓"
					}
					fmt.Fprintf(g.stdout, "  %s %-26s %s\n", mark, f.Name, f.Detail)
				}
				backend := s.Backend
				if backend == "" {
					backend = "none"
				}
				fmt.Fprintf(g.stdout, "backend: %s: %s\n", backend, s.Why)
			}
			if s.Backend == "" {
				return errSilent
			}
			return nil
		},
	}
}
