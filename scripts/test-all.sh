#!/usr/bin/env bash
# Every test of the project, as CI runs it. Installs what it needs (as root, Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings

echo "== tests (release: burn is 15-40x slower unoptimised)"
cargo test --release --workspace

echo "== cuda feature type-checks (burn-cuda's build script skips its LLVM download under DOCS_RS)"
DOCS_RS=1 cargo check --release -p fav-launch --features cuda
