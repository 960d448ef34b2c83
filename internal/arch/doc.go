// Package arch holds no code: its test enforces the package layering that
// docs/architecture.md writes down (the block between the layering
// markers). A package may import only packages of lower layers, never one
// of its own layer or a higher one, and never a package a "deny" line
// forbids it; every package of the module must have a layer.
package arch
