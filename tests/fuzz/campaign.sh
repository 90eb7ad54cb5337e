#!/bin/bash
# A long fuzzing campaign: every libFuzzer target in turn, SECONDS each,
# ROUNDS times, with a corpus kept between runs (and between campaigns)
# under WORK, so time spent adds up:
#   campaign.sh BUILD_DIR WORK [SECONDS [ROUNDS [TARGET...]]]
# BUILD_DIR is a -Dfuzzing=true build (see tests/fuzz/README.md).  Each run
# appends one line to WORK/campaign.log: date, target, seconds, executions,
# corpus size and the result (ok, or finding with the artifact's name);
# a finding does not stop the campaign.  nice it when the machine is shared.
# Never pause it (SIGSTOP) to free the machine: libFuzzer's per-input
# timer runs on while stopped, and the input it was on is saved as a
# timeout (two such "findings" replayed in 25 and 290 ms).  Stop it and
# start again later instead: the corpus under WORK carries over.
set -uo pipefail

build=${1:?usage: campaign.sh BUILD_DIR WORK [SECONDS [ROUNDS [TARGET...]]]}
work=${2:?usage: campaign.sh BUILD_DIR WORK [SECONDS [ROUNDS [TARGET...]]]}
seconds=${3:-3600}
rounds=${4:-1}
shift $(( $# < 4 ? $# : 4 ))
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$build" && pwd)
mkdir -p "$work"
work=$(cd "$work" && pwd)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in "$build"/tests/fuzz/fuzz_*; do
        [ -f "$f" ] && [ -x "$f" ] && targets+=("${f##*/fuzz_}")
    done
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "campaign.sh: no fuzz_* executables in $build/tests/fuzz" >&2
    exit 1
fi

export QIMG_SRCDIR=$src QIMG_FUZZ_WORK=$work FUZZ_SECONDS=$seconds
for ((round = 1; round <= rounds; round++)); do
    for t in "${targets[@]}"; do
        out=$(bash "$src/tests/fuzz/run_fuzzer.sh" \
            "$build/tests/fuzz/fuzz_$t" "$t" 2>/dev/null)
        status=$?
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' <<<"$out")
        units=$(find "$work/$t/corpus" -type f | wc -l)
        result=ok
        if [ $status -ne 0 ]; then
            result="finding $(ls -t "$work/$t/artifacts" | head -1)"
        fi
        printf '%s %s %ss execs=%s corpus=%s %s\n' "$(date -u +%FT%TZ)" \
            "$t" "$seconds" "${execs:-?}" "$units" "$result" |
            tee -a "$work/campaign.log"
    done
done
