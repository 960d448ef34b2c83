#!/usr/bin/env bash
# check.sh: model-check the CXL coherence protocol (coherence.pml) with SPIN.
#
# The full protocol must verify with no errors (exhaustive safety search).
# Every negative variant -- one protocol step removed -- must produce a
# counterexample, so the check is known to be able to fail. CHECK_ACCEPTS must
# also fail: it shows the reader really does accept copies in the model.
# Exits non-zero if any expectation is not met.
#
# Needs: spin (Debian package "spin") and a C compiler. Runtime ~15 s.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
model="$here/coherence.pml"
for tool in spin cc; do
	command -v "$tool" >/dev/null || { echo "check.sh: $tool not found (apt-get install -y spin gcc)" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$model" "$work/"
cd "$work"

fail=0
# run VARIANT EXPECT: EXPECT is "pass" (0 errors, search completed) or
# "counterexample" (an assertion violation found).
run() {
	local variant=$1 expect=$2 def=()
	[[ -n $variant ]] && def=("-D$variant")
	rm -f pan pan.* ./*.trail
	spin "${def[@]}" -a coherence.pml >/dev/null
	cc -O2 -DSAFETY -DMEMLIM=4096 -o pan pan.c
	local out
	out=$(./pan -m2000000 2>&1) || true
	local errors states
	errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' <<<"$out" | tail -1)
	states=$(sed -n 's/^ *\([0-9]*\) states, stored.*/\1/p' <<<"$out" | tail -1)
	local name=${variant:-full protocol}
	case $expect in
	pass)
		if [[ $errors == 0 ]] && ! grep -q "depth too small\|Search not completed" <<<"$out"; then
			printf 'ok    %-22s verified: 0 errors, %s states\n' "$name" "$states"
		else
			printf 'FAIL  %-22s expected to verify, got errors=%s\n%s\n' "$name" "${errors:-?}" "$out"
			fail=1
		fi ;;
	counterexample)
		if [[ -n $errors && $errors != 0 ]] && grep -q "assertion violated" <<<"$out"; then
			printf 'ok    %-22s counterexample found: %s\n' "$name" "$(grep -m1 'assertion violated' <<<"$out" | sed 's/^pan:1: //')"
		else
			printf 'FAIL  %-22s expected a counterexample, got errors=%s\n%s\n' "$name" "${errors:-?}" "$out"
			fail=1
		fi ;;
	esac
}

run "" pass
for v in NO_WRITER_FLUSH NO_WRITER_FENCE NO_READER_INVALIDATE NO_VALIDATION INVALIDATE_EARLY CHECK_ACCEPTS; do
	run "$v" counterexample
done
if [[ $fail != 0 ]]; then
	echo "modelcheck: FAILED" >&2
	exit 1
fi
echo "modelcheck: all expectations met"
