#!/bin/bash
# Alternating A/B timing of the fused masked cross-attention (M = 4 and M = 8 in one process,
# see kernels/examples/xattn_speed.rs) under two sets of environment variables, e.g.
#   scripts/xattn_ab.sh "A=1" "FLAMINGO_XATTN_DIRECT=0" 4
# prints one line per run: fwd+bwd median ms (forward median ms) for M = 4, then M = 8.
# Build first: cargo build --release -p flamingo-kernels --example xattn_speed
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: $0 'ENV_A' 'ENV_B' ROUNDS   (ENV like \"A=1\" or \"FLAMINGO_XATTN_PREFETCH=0\")" >&2
    exit 2
fi
bin="$(dirname "$0")/../target/release/examples/xattn_speed"
[ -x "$bin" ] || { echo "$bin not built: cargo build --release -p flamingo-kernels --example xattn_speed" >&2; exit 1; }
for _ in $(seq 1 "$3"); do
    for spec in "$1" "$2"; do
        echo -n "[$spec] "
        # shellcheck disable=SC2086
        env $spec XATTN_SKIP_NAIVE=1 "$bin" 2>&1 | grep fused |
            sed -E 's/.*M=([0-9]+).*fwd\+bwd +([0-9.]+) ms \(fwd ([0-9.]+).*/M\1 \2 (f \3)/' | tr '\n' ' '
        echo
    done
done
