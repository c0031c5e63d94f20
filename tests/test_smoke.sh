#!/usr/bin/env bash
# test_smoke.sh -- the walship CLI runs: `walship version` prints
# "walship 0.x.y" and exits 0; an unknown command exits 2 (usage error).
#
# Environment: WALSHIP_BIN, the CLI under test (set by tests/CMakeLists.txt).
# ctest-labels: cli
# ctest-timeout: 30
set -euo pipefail

: "${WALSHIP_BIN:?WALSHIP_BIN is not set; run this test through ctest}"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

out=$("$WALSHIP_BIN" version) || fail "'walship version' exited $?"
[[ $out == "walship 0."* ]] || fail "'walship version' printed '$out'"

rc=0
err=$("$WALSHIP_BIN" frobnicate 2>&1 >/dev/null) || rc=$?
((rc == 2)) || fail "'walship frobnicate' exited $rc, want 2"
[[ -n $err ]] || fail "'walship frobnicate' printed no error message"

echo "ok: $out"
