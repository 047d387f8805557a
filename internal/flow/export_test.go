package flow

// Sizes are the assembler's indexes and holdings, for the tests that bound
// them.
type Sizes struct{ ByOrig, ByAny, Ended, Conns, Held int }

// Held is counted from the connections followed, not taken from the
// assembler's own count.
func (a *Assembler) Sizes() Sizes {
	held := 0
	for _, c := range a.conns {
		if !c.done {
			held += cap(c.Steps)
		}
	}
	return Sizes{len(a.byOrig), len(a.byAny), len(a.ended), len(a.conns), held}
}

// StepsAtFirst is the room a new connection gets for its steps.
const StepsAtFirst = stepsAtFirst
