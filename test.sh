#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (warnings are errors), unit
# tests, the tiny test-guest VM tests and the real guest-kernel tests (among
# them the CRI ones through containerd, tests/tests/cri_*.rs: cri_runc,
# cri_boundary, cri_qos for kubelet's QoS-class resources), then a
# bounded fuzz run of every guest-data parser (HUSK_FUZZ_SECONDS per target,
# default 20; 0 skips it). Builds the guest image first (cached). VM tests
# skip, saying so, only where /dev/kvm is absent.
set -euo pipefail
cd "$(dirname "$0")"
bash guest-image/build.sh
cargo fmt --all -- --check
cargo clippy -q --workspace --all-targets -- -D warnings
cargo test --workspace
if [ "${HUSK_FUZZ_SECONDS:-20}" != 0 ]; then
    bash tests/fuzz/run.sh "${HUSK_FUZZ_SECONDS:-20}"
fi
