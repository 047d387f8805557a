package cause

import "github.com/svctrace/svctrace/internal/nf"

// Refusal is what an ICMP error or a reset that answered a connection
// means: the class of the refusal and what its sender decided.
type Refusal struct {
	Class Class
	// Cause completes "SENDER answered …: …".
	Cause   string
	Confirm Fact
}

// ICMP classifies an ICMP (or ICMPv6) error of type typ and code.
func ICMP(p nf.Proto, typ, code uint8) Refusal {
	if p == nf.ICMPv6 {
		switch {
		case typ == 1 && code == 0:
			return Refusal{Routing, "it has no route to the destination", Route}
		case typ == 1 && (code == 1 || code == 5 || code == 6):
			return Refusal{Netfilter, "a rule or a reject route there refuses the destination (administratively prohibited)", Rules}
		case typ == 1 && code == 3:
			return Refusal{Neighbour, "the destination's address did not answer NDP on its link: nothing holds it", Neighbours}
		case typ == 1 && code == 4:
			return Refusal{Socket, "nothing listens on that port", Sockets}
		case typ == 2:
			return Refusal{Size, "the packet is larger than the next link's MTU", MTU}
		case typ == 3:
			return Refusal{Routing, "the packet's hop limit ran out on the way: a routing loop, or a path too long", Route}
		}
		return Refusal{Other, "an ICMPv6 error svctrace does not classify", NoFact}
	}
	switch {
	case typ == 3 && (code == 0 || code == 6 || code == 11):
		return Refusal{Routing, "it has no route to the destination network", Route}
	case typ == 3 && (code == 1 || code == 7 || code == 12):
		return Refusal{Neighbour, "the destination host did not answer on its link (no ARP answer), or it has no route to it", Neighbours}
	case typ == 3 && code == 2:
		return Refusal{Socket, "nothing there handles the packet's protocol", NoFact}
	case typ == 3 && code == 3:
		return Refusal{Socket, "nothing listens on that port", Sockets}
	case typ == 3 && code == 4:
		return Refusal{Size, "the packet is larger than the next link's MTU and may not be fragmented (DF)", MTU}
	case typ == 3 && (code == 9 || code == 10 || code == 13):
		return Refusal{Netfilter, "a rule there refuses it (administratively prohibited: a REJECT)", Rules}
	case typ == 11:
		return Refusal{Routing, "the packet's TTL ran out on the way: a routing loop, or a path too long", Route}
	case typ == 12:
		return Refusal{Malformed, "its IP header is bad (parameter problem)", NoFact}
	}
	return Refusal{Other, "an ICMP error svctrace does not classify", NoFact}
}

// Reset classifies a TCP reset answering a connection's first packet:
// from the endpoint, nothing listened there (or the listener was going
// away); from the node, a rule's REJECT with tcp-reset, or a local port
// nothing listens on.
func Reset(fromNode bool) Refusal {
	if fromNode {
		return Refusal{Netfilter, "a REJECT --reject-with tcp-reset rule, or a port on the node nothing listens on", Rules}
	}
	return Refusal{Socket, "no socket listens on that address and port", Sockets}
}
