package flow

// Sizes are the assembler's indexes and holdings, for the tests that bound
// them.
type Sizes struct{ ByOrig, ByAny, Ended, Conns, Held int }

func (a *Assembler) Sizes() Sizes {
	return Sizes{len(a.byOrig), len(a.byAny), len(a.ended), len(a.conns), a.held}
}
