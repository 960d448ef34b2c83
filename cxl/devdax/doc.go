// Package devdax maps a real CXL (or other) memory device exposed by Linux
// as a device-DAX character device, /dev/daxX.Y, and returns it as a
// [cxl.Region] using the CLWB/CLFLUSHOPT/CLFLUSH and SFENCE/MFENCE
// primitives of package cxl.
//
// Offsets and lengths of mappings and protection changes must be multiples
// of the device alignment read from /sys/bus/dax/devices/daxX.Y/align
// (usually 2 MiB), which is why the pool layout sizes host slots and
// sections by the region's Align.
//
// Never online shared CXL memory as system-ram (Linux zeroes it); configure
// it with `daxctl reconfigure-device --mode=devdax`, which destroys contents.
// This package owns only the device mapping; the pool layout is package
// cxl/pod.
package devdax
