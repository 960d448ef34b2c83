package corpus

// CopySparse copies a memory image to dst (atomically, fsynced), leaving
// its all-zero pages as holes: the copy reads back byte-identical and zero
// pages take no space (on tmpfs: no DRAM).
func CopySparse(dst, src string) error { return copySparse(dst, src) }
