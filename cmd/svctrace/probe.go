package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/svctrace/svctrace/internal/probe"
)

// checkProbeFlags: --from goes with --probe, and --probe takes a known kind.
func (o *serviceOptions) checkProbeFlags() error {
	if o.probe == "" {
		if o.from != "node" && o.from != "" { // svctrace check has no --from
			return errors.New("--from says where --probe connects from: add --probe")
		}
		return nil
	}
	if _, err := probe.ParseKind(o.probe); err != nil {
		return err
	}
	if o.from != "node" && !strings.HasPrefix(o.from, "pod/") {
		return fmt.Errorf("invalid --from %q: use node or pod/NAME", o.from)
	}
	return nil
}
