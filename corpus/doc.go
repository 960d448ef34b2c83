// Package corpus owns Aquifer's workload corpus: real snapshot memory images
// and page-access traces of nine built-in serverless functions and of any
// function an operator brings, captured from real Linux guests under QEMU
// TCG, plus a calibrated synthetic stand-in for machines without QEMU.
//
// # What a capture does
//
// For each function (see Functions) the pipeline
//
//  1. builds a Firecracker-like guest from Debian packages: the cloud kernel
//     (apt-get download + dpkg -x), a small initramfs (busybox-static and the
//     kernel's virtio modules, written as a newc cpio) and a read-only ext4
//     root filesystem (mkfs.ext4 -d) holding python3, the function's
//     libraries and the helper files embedded from corpus/guest;
//  2. boots it with qemu-system-x86_64 -accel tcg, guest RAM being a shared
//     memory-backend-file under /dev/shm, waits on the serial console for the
//     runner's AQ-READY marker (init() done), pauses the VM over QMP, saves
//     the device state (migrate with x-ignore-shared) and copies the RAM file:
//     that copy is the snapshot memory image, byte-compatible with a
//     Firecracker memory file of one region; the device state is kept beside
//     it (format 2), so the pair restores the guest;
//  3. restores the snapshot once per invocation (a fresh copy of the image,
//     -incoming), with the aqtrace TCG plugin (corpus/plugin, built here with
//     gcc) armed from the host through its control file just before the vCPU
//     resumes, sends the input over the serial console, pauses when the
//     runner prints AQ-DONE and converts the plugin's first-touch log to a
//     wset.Trace;
//  4. times the same handler natively on the host (chroot into the same root
//     filesystem) to calibrate guest instructions to native nanoseconds.
//
// An operator's own function (LoadFunction: a module with init() and
// handle(arg), the built-ins' interface) is captured the same way, in a
// guest root of its own holding python3, the Debian packages it names, the
// runner and its module, into the same corpus; the workload keeps the
// module (FunctionFile, Meta.FunctionFile), so FunctionOf and
// EnsureRestorable can capture it again. Unpacked packages are cached per
// package set and hard-linked into each guest.
//
// The expected output of every input is recorded (Meta.Outputs). The package
// also builds the aqshim LD_PRELOAD shim (corpus/shim, BuildShim) and exports
// the QEMU runner of its guests (StartVM, VM, WaitInvocation), with which
// package realvm restores them through Aquifer's serving paths.
//
// Everything downloaded or built is kept in a cache directory (CacheDir) and
// reused. The corpus layout on disk, the calibration and the synthetic model
// are described in docs/corpus.md; Open reads a corpus for consumers.
//
// # Boundaries
//
// This package drives external tools (apt-get, dpkg, cp, mkfs.ext4, gcc, QEMU)
// as child processes and writes only below its cache and output directories
// and /dev/shm files it created. It must not touch the serving path: it
// imports wset for the trace format and nothing else of Aquifer, and the
// benchmark consumes its output only through Open.
package corpus
