#!/usr/bin/env bash
# Coverage-guided fuzzing of every target on *stable* Rust: the same instrumentation cargo-fuzz
# uses (SanitizerCoverage via -Cpasses=sancov-module, all stable codegen flags) without
# AddressSanitizer, which needs nightly. The codecs are safe Rust, so ASan would add little.
#
#   codecs/fuzz/run-stable.sh [seconds per target, default 15] [target ...]
#
# New inputs go to a scratch directory (printed), not into corpus/: the committed corpus is the
# seed set that codecs/tests/corpus_replay.rs generates. A crash leaves its input beside the
# scratch corpus and makes this script fail.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${1:-15}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  # Every target there is (one file each under fuzz_targets/), so a new one is never left out.
  for file in "$fuzz_dir"/fuzz_targets/*.rs; do
    targets+=("$(basename "$file" .rs)")
  done
fi

host="$(rustc -vV | awk '/^host:/ {print $2}')"
# --target keeps RUSTFLAGS off build scripts and proc macros, which must not be instrumented.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
(cd "$fuzz_dir" && cargo build --release --target "$host" --bins)

scratch="$(mktemp -d /tmp/icn-codecs-fuzz.XXXXXX)"
echo "run-stable.sh: new inputs and crashes under $scratch"
status=0
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  if "$fuzz_dir/target/$host/release/$target" "$scratch/$target" "$fuzz_dir/corpus/$target" \
      -max_total_time="$seconds" -max_len=4096 -artifact_prefix="$scratch/$target-" \
      >"$scratch/$target.log" 2>&1; then
    echo "$target: ok ($(grep -E '^#[0-9]+.*DONE' "$scratch/$target.log" | tail -1 | awk '{print $1 " runs, coverage " $4}' | tr -d '#'))"
  else
    echo "$target: FAILED, see $scratch/$target.log"
    status=1
  fi
done
exit $status
