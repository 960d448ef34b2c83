"""Aquifer corpus guest runner.

Runs inside the guest as PID 1 (after switch_root), or natively on the host in
a chroot of the same root filesystem for timing calibration.

Guest protocol on the serial console (one line each):
  guest -> host  AQ-READY <init_ns>             init() done: the snapshot point
  host -> guest  AQ-INVOKE <input>              run handle(input)
  guest -> host  AQ-START <input>               the input arrived (the guest's first output)
  guest -> host  AQ-OUT <input> <text>          handle()'s result, ascii(), at most 200 characters
  guest -> host  AQ-DONE <input> <ns> <digest>  handle() returned; digest of repr(result)
  guest -> host  AQ-FATAL <message>             anything went wrong

Native mode (--native INPUT): init() then one handle(INPUT), prints
  AQ-NATIVE <input> <init_ns> <handle_ns> <digest>
"""
import hashlib
import importlib.util
import os
import sys
import time
import traceback

FUNCTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "functions")


# The trace window's end marker: a page at a fixed virtual address that the
# runner stores to when an invocation's output is out, just before it says
# AQ-DONE (so the host never pauses the guest before the store); the capture's
# TCG plugin (corpus/plugin/aqtrace.c, AQ_MARK_VADDR) stops recording at that
# store, so a trace ends where the invocation did, not when the host got round
# to pausing the guest. Mapped, touched and wrapped in a memoryview after
# init(), before the snapshot: the store itself is one buffer write of the
# interpreter, no foreign call.
MARK_VADDR = 0x5A5A00000000
_mark = None


def map_marker():
    global _mark
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE
        addr = libc.mmap(MARK_VADDR, 4096, 0x3, 0x02 | 0x20 | 0x100000, -1, 0)
        if addr != MARK_VADDR:
            print("aq-runner: no trace end marker (mmap at %#x failed)" % MARK_VADDR, flush=True)
            return
        view = memoryview((ctypes.c_char * 4096).from_address(addr)).cast("B")
        view[0] = 0  # fault it in now, not at the marker store
        _mark = view
    except Exception as e:  # a guest without ctypes: the host's pause ends the window
        print("aq-runner: no trace end marker (%s)" % e, flush=True)


def mark():
    if _mark is not None:
        _mark[0] = 0  # the same byte: the page's content never changes


def digest(out):
    return hashlib.sha256(repr(out).encode()).hexdigest()[:16]


def calibrate():
    """A fixed mixed workload (interpreter loop, dict/str work, json) used to
    calibrate guest instructions to native time when a handler is too short
    to time on its own."""
    import json
    acc = 0
    for i in range(200000):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    d = {"k%d" % i: [i, str(i), i * 0.5] for i in range(3000)}
    return acc, len(json.loads(json.dumps(d)))


def run(mod, arg):
    if arg == "@calibrate":
        return calibrate()
    return mod.handle(arg)


def main():
    args = sys.argv[1:]
    native = None
    if len(args) >= 3 and args[1] == "--native":
        native = args[2]
    name = args[0] if args else ""
    try:
        # Load by path under a private name: a function may share its name
        # with the library it wraps (pyaes, chameleon).
        spec = importlib.util.spec_from_file_location("aqfn_" + name, os.path.join(FUNCTIONS, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t0 = time.perf_counter_ns()
        mod.init()
        init_ns = time.perf_counter_ns() - t0
    except BaseException:
        print("AQ-FATAL init of %r failed: %s" % (name, traceback.format_exc().replace("\n", " | ")), flush=True)
        return 1
    if native is not None:
        t = time.perf_counter_ns()
        out = run(mod, native)
        dt = time.perf_counter_ns() - t
        print("AQ-NATIVE %s %d %d %s" % (native, init_ns, dt, digest(out)), flush=True)
        return 0
    # After init(), which then runs exactly as it would without the marker
    # (a module that exhausts the guest's memory fails there as before), and
    # before AQ-READY, the snapshot point.
    map_marker()
    print("AQ-READY %d" % init_ns, flush=True)
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 2 or parts[0] != "AQ-INVOKE":
            continue
        print("AQ-START %s" % parts[1], flush=True)
        try:
            t = time.perf_counter_ns()
            out = run(mod, parts[1])
            dt = time.perf_counter_ns() - t
            print("AQ-OUT %s %s" % (parts[1], ascii(out)[:200]), flush=True)
            line = "AQ-DONE %s %d %s" % (parts[1], dt, digest(out))
            mark()
            print(line, flush=True)
        except BaseException:
            print("AQ-FATAL handle(%r) failed: %s" % (parts[1], traceback.format_exc().replace("\n", " | ")), flush=True)
    return 0


if __name__ == "__main__":
    rc = main()
    if os.getpid() == 1:
        # PID 1 must not exit; idle so the host can still pause and inspect.
        while True:
            time.sleep(3600)
    sys.exit(rc)
