package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every command has a man page with its synopsis, options and examples,
// and its text never turns into roff requests.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	root := newRoot(os.Stdout, os.Stderr)
	if err := writeManPages(root, dir); err != nil {
		t.Fatal(err)
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		name := strings.ReplaceAll(c.CommandPath(), " ", "-")
		b, err := os.ReadFile(filepath.Join(dir, name+".1"))
		if err != nil {
			t.Errorf("%s: no man page: %v", c.CommandPath(), err)
			return
		}
		page := string(b)
		for _, want := range []string{".SH NAME\n" + name + " - ", ".SH SYNOPSIS\n", ".SH EXAMPLE\n"} {
			if !strings.Contains(page, want) {
				t.Errorf("%s: page lacks %q", name, want)
			}
		}
		if c.Example == "" {
			t.Errorf("%s: --help has no examples", c.CommandPath())
		}
		for _, l := range strings.Split(page, "\n") {
			macro, _, _ := strings.Cut(l, " ")
			if strings.HasPrefix(l, ".") && !slices.Contains([]string{".nh", ".TH", ".SH", ".SS", ".PP", ".EX", ".EE", ".RS", ".RE", ".TP", ".IP"}, macro) {
				t.Errorf("%s: a line turned into a roff request: %q", name, l)
			}
		}
		for _, sub := range c.Commands() {
			if sub.Name() != "completion" && sub.Name() != "help" {
				walk(sub)
			}
		}
	}
	walk(root)
	lab, _ := os.ReadFile(filepath.Join(dir, "svctrace-lab.1"))
	if !strings.Contains(string(lab), "conntrack-invalid") || !strings.Contains(string(lab), `\fB--keep\fP`) {
		t.Errorf("svctrace-lab.1 lacks the scenarios or the options:\n%s", lab)
	}
}
