#!/bin/sh
# tests/fuzz/long.sh - `make fuzz-long`: every libFuzzer target for SECONDS
# each, growing the corpus kept in the repo (tests/fuzz/corpus-TARGET;
# commit what it adds), then one summary line.  Not part of make test.
#
# usage: long.sh FUZZ_BUILD_DIR SECONDS TARGET...
set -u
dir=$1 secs=$2
shift 2
runs=0 crashes=0 before=0 after=0 n=0 failed=""
for t in "$@"; do
	corpus=tests/fuzz/corpus-$t
	mkdir -p "$corpus"
	b=$(ls "$corpus" | wc -l)
	log=$dir/$t.long.log
	ASAN_OPTIONS=detect_leaks=1 "$dir/$t" -max_total_time="$secs" -max_len=4096 \
		-print_final_stats=1 -close_fd_mask=3 -artifact_prefix="$dir/$t-" \
		"$corpus" "tests/fuzz/seeds-$t" >"$log" 2>&1
	rc=$?
	r=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	runs=$((runs + ${r:-0}))
	if [ "$rc" -ne 0 ]; then
		crashes=$((crashes + 1))
		failed="$failed $t"
		tail -n 40 "$log" >&2
	fi
	# keep the repo's copy small: only inputs that add coverage
	if [ "$rc" -eq 0 ]; then
		rm -rf "$dir/$t.min" && mkdir -p "$dir/$t.min" &&
		"$dir/$t" -merge=1 -max_len=4096 "$dir/$t.min" "$corpus" >>"$log" 2>&1 &&
		rm -rf "$corpus" && mv "$dir/$t.min" "$corpus"
	fi
	a=$(ls "$corpus" | wc -l)
	before=$((before + b)) after=$((after + a)) n=$((n + 1))
done
delta=$((after - before))
[ "$delta" -ge 0 ] && delta="+$delta"
echo "fuzz-long: $n targets x ${secs}s: $runs runs, $crashes crashed${failed:+ ($failed )}, corpus $after inputs ($delta) in tests/fuzz/corpus-*"
[ "$crashes" -eq 0 ]
