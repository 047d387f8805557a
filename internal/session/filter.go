package session

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/flow"
)

// Filter keeps the connections from clientFlag, to endpointFlag (IP or
// IP:PORT; "": any), with one of verdicts (none: any): svctrace analyze's
// --client, --endpoint and --verdict.
func Filter(clientFlag, endpointFlag string, verdicts []string) (func(*flow.Conn) bool, error) {
	match := func(flag, s string) (func(netip.AddrPort) bool, error) {
		if s == "" {
			return func(netip.AddrPort) bool { return true }, nil
		}
		if ap, err := netip.ParseAddrPort(s); err == nil {
			return func(a netip.AddrPort) bool { return a == ap }, nil
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid --%s %q: want an IP or IP:PORT", flag, s)
		}
		return func(a netip.AddrPort) bool { return a.Addr() == ip }, nil
	}
	client, err := match("client", clientFlag)
	if err != nil {
		return nil, err
	}
	endpoint, err := match("endpoint", endpointFlag)
	if err != nil {
		return nil, err
	}
	for _, v := range verdicts {
		if !slices.Contains(flow.Verdicts, flow.Verdict(v)) {
			return nil, fmt.Errorf("unknown --verdict %q: use %s", v, VerdictNames())
		}
	}
	return func(c *flow.Conn) bool {
		return client(c.Client) && endpoint(c.Endpoint) &&
			(len(verdicts) == 0 || slices.Contains(verdicts, string(c.Verdict)))
	}, nil
}

// VerdictNames lists the verdicts: "answered, rejected, …".
func VerdictNames() string {
	var s []string
	for _, v := range flow.Verdicts {
		s = append(s, string(v))
	}
	return strings.Join(s, ", ")
}
