package flow

import (
	"time"

	"github.com/svctrace/svctrace/internal/nf"
)

// decide gives a finished connection its verdict and the outcome that
// explains it. Order matters: an answer from the node or the destination
// settles it; then a drop on the node; then where the packets went.
func (a *Assembler) decide(c *Conn, now uint64) {
	st := &c.st
	nodeDrop, otherDrop := lastDrops(c.Drops)
	o := &c.Outcome

	switch {
	case st.reject != nil && (st.reply == nil || st.reject.start < st.reply.start):
		c.Verdict, o.Kind, o.Answer = Rejected, NodeRejected, st.reject.answer
		c.Drop = firstDrop(c.Drops, Original)

	case st.reply != nil && st.reply.isRefusal():
		c.Verdict, o.Kind, o.Answer = Reset, Refused, st.reply.answer

	case st.reply != nil && st.troubled > st.replyPassed:
		o.Answer = st.reply.answer
		if st.broke != 0 {
			c.Verdict, o.Kind, c.Drop = Dropped, BrokeDropped, &c.Drops[st.broke-1]
			o.Packet = c.Drop.Packet
		} else {
			c.Verdict, o.Kind = NotTranslated, BrokeUntranslated
			o.Packet, o.Iface = st.strayed.n, a.ifName(st.strayed.last.OutIf)
		}

	case st.reply != nil && (st.replyOut || replyDrop(c.Drops) == nil):
		c.Verdict, o.Kind, o.Answer = Answered, Translated, st.reply.answer

	case st.reply != nil:
		c.Verdict, o.Kind, o.Answer = Dropped, ReplyDropped, st.reply.answer
		c.Drop = replyDrop(c.Drops)

	case nodeDrop != nil && !st.leftUntranslated:
		c.Verdict, o.Kind, c.Drop = Dropped, Discarded, nodeDrop

	case st.leftUntranslated:
		c.Verdict, o.Kind, o.Iface = NotTranslated, Untranslated, a.ifName(st.outIf)

	case otherDrop != nil:
		c.Verdict, o.Kind, c.Drop = Dropped, Discarded, otherDrop

	case st.leftOut || st.delivered:
		c.Verdict, o.Kind = NoReply, Unanswered
		o.Waited, o.Local = time.Duration(now-c.Start).Round(100*time.Millisecond), st.delivered

	default:
		c.Verdict, o.Kind = Dropped, Vanished
		for i := len(c.Steps) - 1; i >= 0; i-- {
			if s := c.Steps[i]; s.Kind == nf.KindHook {
				o.Last, o.Seen = nf.GapAfter(s.Hook, s.Stage), true
				break
			}
		}
	}
}

// PacketName names packet n of the connection by what it was ("SYN"), from
// its first step, or "packet".
func (c *Conn) PacketName(n int) string {
	for _, s := range c.Steps {
		if s.Packet == n && s.Kind == nf.KindHook && s.Flags != "" {
			return s.Flags
		}
	}
	return "packet"
}

// lastDrops returns the last drop on the node and the last elsewhere.
func lastDrops(ds []Drop) (node, other *Drop) {
	for i := range ds {
		if ds[i].InNode {
			node = &ds[i]
		} else {
			other = &ds[i]
		}
	}
	return node, other
}

func firstDrop(ds []Drop, d Dir) *Drop {
	for i := range ds {
		if ds[i].Dir == d && ds[i].InNode {
			return &ds[i]
		}
	}
	return nil
}

func replyDrop(ds []Drop) *Drop {
	for i := range ds {
		if ds[i].Dir == Reply {
			return &ds[i]
		}
	}
	return nil
}
