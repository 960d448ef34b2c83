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
            print("AQ-DONE %s %d %s" % (parts[1], dt, digest(out)), flush=True)
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
