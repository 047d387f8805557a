package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newMan writes a man page per command with cobra's generator:
// svctrace.1, svctrace-lab.1, …, kubectl-svctrace.1. Hidden: packagers run
// it, `make man` does.
func newMan(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:         "man DIR",
		Short:       "Write the man pages into DIR",
		Hidden:      true,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{outputsKey: "text"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			if err := writeManPages(cmd.Root(), args[0]); err != nil {
				return err
			}
			return writeManPages(newPlugin(g.stdout, g.stderr), args[0])
		},
	}
}

func writeManPages(cmd *cobra.Command, dir string) error {
	cmd.DisableAutoGenTag = true // the pages do not change with the day they are made
	return doc.GenManTree(cmd, &doc.GenManHeader{Title: "", Section: "1", Source: "svctrace " + version, Manual: "svctrace manual"}, dir)
}
