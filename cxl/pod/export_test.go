package pod

// Hooks for the external tests (package pod_test). They take their control
// plane from podtest, which imports this package, so they cannot live
// inside it; these give them the protocol internals they check.

// Bugs removes protocol steps (see bugs): the simulator tests show that
// each step is necessary.
type Bugs struct {
	NoWriterFlush, NoWriterFence, NoReaderInvalidate, NoValidation, NoGracePeriod bool
}

// SetBugs switches protocol steps off for p.
func (p *Pod) SetBugs(b Bugs) {
	p.bugs = bugs{noWriterFlush: b.NoWriterFlush, noWriterFence: b.NoWriterFence,
		noReaderInvalidate: b.NoReaderInvalidate, noValidation: b.NoValidation, noGracePeriod: b.NoGracePeriod}
}

// Enter and Exit bracket a read section (as Get does around its copy).
func (p *Pod) Enter() { p.enter() }
func (p *Pod) Exit()  { p.exit() }

// ChunkToken is the fencing token under which p owns chunk, and DescGen the
// current generation of descriptor i of that chunk.
func (p *Pod) ChunkToken(chunk int) uint64 { return p.owned[chunk].token }
func (p *Pod) DescGen(chunk, i int) uint64 { return p.owned[chunk].gens[i] }

// DescOffset and ChunkOffset are region offsets of a descriptor and a chunk.
func (g Geometry) DescOffset(desc int) int64   { return g.descOff(desc) }
func (g Geometry) ChunkOffset(chunk int) int64 { return g.chunkOff(chunk) }

// StoreDesc and LoadDesc write and read a descriptor line in the region.
var (
	StoreDesc = storeDesc
	LoadDesc  = loadDesc
)
