#!/usr/bin/env bash
# Bounded fuzzing of everything that parses guest-controlled data.
#
#   bash tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-fuzz if it is missing, builds every target (libFuzzer, no
# sanitizer: Rust is memory-safe, the findings are panics, hangs and
# unbounded memory), replays every input under regressions/<target>/ once,
# then fuzzes each target for SECONDS_PER_TARGET (default 20) from its seed
# corpus. Fails on the first crash, hang or OOM and prints the input that
# caused it. New corpus entries and artifacts go under target/fuzz-work/,
# never into the tree. See README.md here.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
shift || true

# cargo-fuzz needs nightly flags (-Zsanitizer, sancov passes); the one
# toolchain here is stable, which accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Every target file must be a [[bin]] of Cargo.toml, or it would be skipped.
all=()
for f in fuzz_targets/*.rs; do
    t="$(basename "$f" .rs)"
    if ! grep -q "^path = \"fuzz_targets/$t.rs\"" Cargo.toml; then
        echo "fuzz: $f has no [[bin]] in tests/fuzz/Cargo.toml; add it (cargo fuzz add $t does):" >&2
        printf '\n[[bin]]\nname = "%s"\npath = "fuzz_targets/%s.rs"\ntest = false\ndoc = false\nbench = false\n' "$t" "$t" >&2
        exit 1
    fi
    all+=("$t")
done
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# The root workspace's `cargo fmt --all` does not reach this one.
cargo fmt --check

start=$(date +%s)
echo "fuzz: building ${#all[@]} targets"
cargo fuzz build --sanitizer none --release --debug-assertions --codegen-units 16
built=$(date +%s)
echo "fuzz: built in $((built - start)) s"

mkdir -p target/fuzz-work
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="target/$triple/release"
work="target/fuzz-work"

# The options a target asks for on its `//! run.sh:` line (e.g. -max_len).
target_opts() {
    sed -n 's|^//! run.sh: *||p' "fuzz_targets/$1.rs" | head -n 1
}

common=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1)

# Every crash ever found stays fixed.
for t in "${targets[@]}"; do
    dir="regressions/$t"
    [ -d "$dir" ] || continue
    inputs=("$dir"/*)
    [ -e "${inputs[0]}" ] || continue
    echo "fuzz: $t: replaying ${#inputs[@]} regression inputs"
    # shellcheck disable=SC2046
    if ! "$bin_dir/$t" "${common[@]}" $(target_opts "$t") "${inputs[@]}" >"$work/$t-replay.log" 2>&1; then
        tail -n 40 "$work/$t-replay.log" >&2
        echo "fuzz: $t: a regression input fails again (log: tests/fuzz/$work/$t-replay.log)" >&2
        exit 1
    fi
done

for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    seeds=()
    [ -d "corpus/$t" ] && seeds=("corpus/$t")
    log="$work/$t.log"
    echo "fuzz: $t: ${seconds} s"
    # shellcheck disable=SC2046
    if ! "$bin_dir/$t" "$work/corpus/$t" "${seeds[@]}" "${common[@]}" $(target_opts "$t") \
        -max_total_time="$seconds" -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t FAILED; the input that did it:" >&2
        ls -1 "$PWD/$work/artifacts/$t/"* >&2 || true
        echo "fuzz: reproduce: tests/fuzz/$bin_dir/$t $(target_opts "$t") ARTIFACT" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$log" | tr '\n' ' ' | sed "s/^/fuzz: $t: /"
    echo
done
echo "fuzz: all ${#targets[@]} targets clean ($(($(date +%s) - start)) s in all)"
