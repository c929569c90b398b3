#!/usr/bin/env bash
# Generates the Rust code for codecs/schema/*.fbs into codecs/src/generated/, with the pinned
# flatc, formatted by rustfmt so that `cargo fmt --all --check` accepts the committed files.
#
#   codecs/gen.sh           regenerate and write codecs/src/generated/*_generated.rs
#   codecs/gen.sh --check   regenerate into a temporary directory and fail, printing a diff,
#                           when the committed code differs (CI runs this)
#
# FLATC names the compiler (default: <repo>/.tools/venv/bin/flatc, installed by `make flatc`);
# its version must match the flatbuffers runtime crate pinned in the root Cargo.toml.
set -euo pipefail

codecs_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$codecs_dir/.." && pwd)"
schema_dir="$codecs_dir/schema"
out_dir="$codecs_dir/src/generated"
flatc="${FLATC:-$repo_dir/.tools/venv/bin/flatc}"
flatc_version_expected="25.12.19"

mode="write"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [[ ! -x "$flatc" ]]; then
  echo "gen.sh: flatc not found at $flatc (run \`make flatc\` or set FLATC)" >&2
  exit 1
fi
flatc_version="$("$flatc" --version | awk '{print $3}')"
if [[ "$flatc_version" != "$flatc_version_expected" ]]; then
  echo "gen.sh: $flatc is version $flatc_version, expected $flatc_version_expected" >&2
  exit 1
fi

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

shopt -s nullglob
schemas=("$schema_dir"/*.fbs)
if [[ ${#schemas[@]} -eq 0 ]]; then
  echo "gen.sh: no schemas in $schema_dir" >&2
  exit 1
fi

# Each schema becomes <name>_generated.rs; schemas do not include each other (flatc's Rust
# output for includes assumes the files sit at the crate root).
"$flatc" --rust -o "$work_dir" "${schemas[@]}"

# Format with the repository's rustfmt settings, as `cargo fmt` would.
rustfmt_args=(--edition 2021)
for config in "$repo_dir/rustfmt.toml" "$repo_dir/.rustfmt.toml"; do
  if [[ -f "$config" ]]; then
    rustfmt_args+=(--config-path "$config")
  fi
done
rustfmt "${rustfmt_args[@]}" "$work_dir"/*_generated.rs

if [[ "$mode" == "write" ]]; then
  mkdir -p "$out_dir"
  rm -f "$out_dir"/*_generated.rs
  cp "$work_dir"/*_generated.rs "$out_dir"/
  echo "gen.sh: wrote $(cd "$work_dir" && ls *_generated.rs | tr '\n' ' ')to $out_dir"
  exit 0
fi

# --check: the set of files and every file's content must match.
status=0
for generated in "$work_dir"/*_generated.rs; do
  name="$(basename "$generated")"
  if ! diff -u "$out_dir/$name" "$generated"; then
    status=1
  fi
done
for committed in "$out_dir"/*_generated.rs; do
  if [[ ! -f "$work_dir/$(basename "$committed")" ]]; then
    echo "gen.sh: $committed has no schema any more (remove it or rerun codecs/gen.sh)"
    status=1
  fi
done
if [[ $status -ne 0 ]]; then
  echo "gen.sh: generated code is stale; run codecs/gen.sh (or make codegen) and commit" >&2
  exit 1
fi
echo "gen.sh: generated code is up to date"
