package flow

// Verdict is the outcome of one connection, from a fixed vocabulary
// (documented for users in README.md, "Verdicts").
type Verdict string

const (
	// Answered: the destination replied and the reply was translated back to
	// the client.
	Answered Verdict = "answered"
	// Rejected: the node itself answered with an ICMP error or a TCP RST,
	// e.g. kube-proxy's REJECT for a Service without endpoints.
	Rejected Verdict = "rejected"
	// Dropped: a packet of the connection was discarded on the node - before
	// any answer, or after it with nothing answered since.
	Dropped Verdict = "dropped"
	// Reset: the endpoint answered with a TCP RST (for UDP: ICMP port
	// unreachable) - nothing listens on the target port.
	Reset Verdict = "reset"
	// NoReply: forwarded to the endpoint, nothing came back before the timeout.
	NoReply Verdict = "no-reply"
	// NotTranslated: a packet to a watched Service address left the node
	// without DNAT (also after an answer: a packet conntrack found INVALID).
	NotTranslated Verdict = "not-translated"
)

// Verdicts lists the vocabulary.
var Verdicts = []Verdict{Answered, Rejected, Dropped, Reset, NoReply, NotTranslated}
