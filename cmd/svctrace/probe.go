package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/svctrace/svctrace/internal/probe"
)

// checkProbeFlags: --from goes with --probe (svctrace check's names a
// client Pod), and --probe takes a known kind.
func (o *serviceOptions) checkProbeFlags(tracing bool) error {
	if !tracing {
		if o.from != "" && !strings.HasPrefix(o.from, "pod/") {
			return fmt.Errorf("invalid --from %q: name a client Pod, pod/NAME or pod/NAMESPACE/NAME", o.from)
		}
		return nil
	}
	if o.probe == "" {
		if o.from != "node" && o.from != "" {
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
