#!/usr/bin/env bash
# gap-ab.sh: two builds of the pager daemon side by side, in the same
# minutes, restoring the same captured workloads alternately (the order of
# the builds rotated every round), so that a change to the serving path is
# measured against the code before it without the machine's drift between
# two benchmark runs. Used for docs/evaluation.md, "The gap to warm".
#
#   docs/results/gap-ab.sh BEFORE_BIN AFTER_BIN ROUNDS OUT.jsonl [WORKLOAD...]
#
# GUEST_BIN (default AFTER_BIN) is the binary whose guest emulator restores
# every VM, for both builds: set it to compare two daemons with a guest that
# times what a newer guest times (since the bench-clock change the restore
# includes the PUT /v1/vms). BEFORE_GUEST_BIN (default GUEST_BIN) restores
# BEFORE_BIN's VMs instead: set it to compare two guests (two ways of
# driving the same daemon). TRACES (default "eval-1") are the traces
# replayed, one per round in turn: TRACES="eval-1 eval-2" alternates the two
# inputs as the benchmark does (a daemon that learns from its restores then
# meets the input it did not see every other round).
#
# Each build runs the benchmark's pod (aquifer serve --embedded, emulated
# CXL and RDMA tiers, the flags of bench.StartPoolPod); the VMs are the
# benchmark's guest emulator (aquifer guest run, AFTER_BIN's, the same for
# both) restoring through the daemon and replaying the eval-1 trace; every
# byte is verified. One JSON line per restore: workload, build, round,
# end-to-end, resume wait, the daemon's pre-install time and pages, the
# first touches that stalled (> 5 µs: faults that waited) and their sum,
# the daemon's cold faults and cold read time.
# docs/results/gap-ab-summary.py prints the table with bootstrap intervals.
set -euo pipefail
before=$1 after=$2 rounds=$3 out=$4
guest=${GUEST_BIN:-$after}
guest_before=${BEFORE_GUEST_BIN:-$guest}
read -r -a traces <<<"${TRACES:-eval-1}"
shift 4
corpus=${AQUIFER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aquifer}/corpus/captured
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(chameleon helloworld image_rotate json_serdes pyaes)
work=$(mktemp -d /tmp/gap-ab.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -f /dev/shm/gap-ab-$$-*
	rm -rf "$work"
}
trap cleanup EXIT

start() { # name bin
	local d=$work/$1
	mkdir -p "$d"
	"$2" serve --embedded --data-dir "$d/pod" --api "$d/api.sock" --socket-dir "$d/vms" \
		--cxl-path "/dev/shm/gap-ab-$$-$1" --cxl-size 4GiB --cxl-chunk 256MiB --rdma emu \
		--log-level warn 2>"$d/serve.log" &
	pids+=($!)
	for _ in $(seq 600); do [ -S "$d/api.sock" ] && return; sleep 0.1; done
	echo "daemon $1 did not start: $(tail -3 "$d/serve.log")" >&2
	exit 1
}
start before "$before"
start after "$after"
for w in "${workloads[@]}"; do
	"$after" convert --mem "$corpus/$w/mem" --ws "$corpus/$w/record.ws" --out "$work/$w.img" >/dev/null
	for b in before after; do
		"$after" publish "$work/$w.img" --name "$w" --api "$work/$b/api.sock" >/dev/null
	done
done
: >"$out"
n=0
for r in $(seq "$rounds"); do
	order=(before after)
	[ $((r % 2)) -eq 0 ] && order=(after before)
	tr=${traces[$(((r - 1) % ${#traces[@]}))]}
	for w in "${workloads[@]}"; do
		for b in "${order[@]}"; do
			n=$((n + 1))
			id="ab$n"
			api=$work/$b/api.sock
			g=$guest
			[ "$b" = before ] && g=$guest_before
			rep=$("$g" guest run --json --mem "$corpus/$w/mem" --ref "$corpus/$w/mem" --trace "$corpus/$w/$tr.ws" \
				--vcpus 2 --think-scale 1 --log-level warn --touch-times --backend uffd \
				--pager-api "$api" --vm "$id" --snapshot "$w")
			for _ in $(seq 100); do # the report is the daemon's once it saw the VM exit
				vm=$(curl -s --max-time 10 --unix-socket "$api" "http://pager/v1/vms/$id")
				case $vm in *'"state":"exited"'* | *'"state":"failed"'*) break ;; esac
				sleep 0.02
			done
			python3 -c '
import json, sys
g = json.loads(sys.argv[1]); v = json.loads(sys.argv[2])
r = v.get("report") or {}
print(json.dumps({"workload": sys.argv[3], "build": sys.argv[4], "round": int(sys.argv[5]),
    "e2e_ns": g["end_to_end_ns"], "resume_wait_ns": g.get("resume_wait_ns", 0), "verified": g["verified_pages"],
    "mismatches": g.get("mismatches", 0), "preinstall_ns": r.get("preinstall_ns", 0),
    "preinstall_pages": r.get("preinstall_pages", 0), "ready_ns": v.get("ready_ns", 0),
    "stall_ns": sum(t["ns"] for t in g.get("touches", []) if t["ns"] > 5000),
    "stalls": sum(1 for t in g.get("touches", []) if t["ns"] > 5000),
    "cold_faults": r.get("cold_faults", 0), "cold_read_ns": r.get("cold_read_ns", 0)}))
' "$rep" "$vm" "$w" "$b" "$r" >>"$out"
			curl -s --max-time 10 -X DELETE --unix-socket "$api" "http://pager/v1/vms/$id" >/dev/null || true
		done
	done
done
echo "$n restores in $out" >&2
