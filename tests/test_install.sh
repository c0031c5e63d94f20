#!/usr/bin/env bash
# test_install.sh -- the artefacts as users consume them:
#   * `cmake --install` into a temporary prefix, then a C program built with
#     `pkg-config --cflags --libs walship` links and runs against it;
#   * walship.so reaches SQLite only through the extension routine table:
#     it has no undefined sqlite3_* symbols and links no libsqlite3;
#   * the extension loads into the sqlite3 shell and registers the VFS: a
#     database opened through it ships a transaction to a file:// store
#     (walship_flush, PRAGMA walship_status, the snapshot object), and one
#     opened with no destination is refused by walship itself (not "no
#     such vfs", which is what an extension that never loaded gives).
#     The shell opens its database before it runs -cmd, so the extension is
#     loaded into :memory: first and the database opened with .open.
# ctest-labels: unit
# ctest-timeout: 120
set -euo pipefail
: "${WALSHIP_BUILD_DIR:?run through ctest}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$WALSHIP_BUILD_DIR" --prefix "$tmp/prefix" >/dev/null
pc=$(find "$tmp/prefix" -name walship.pc | head -1)
[[ -n $pc ]] || { echo "no walship.pc installed"; exit 1; }
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")
cat >"$tmp/use.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <sqlite3.h>
#include <walship.h>
int main(void) {
    if (walship_version_number() != WALSHIP_VERSION_NUMBER) return 1;
    if (strcmp(walship_strerror(WALSHIP_ERR_CORRUPT), "corrupt data") != 0) return 2;
    if (walship_register(NULL, 0) != SQLITE_OK) return 3;
    if (sqlite3_vfs_find("walship") == NULL) return 4;
    printf("walship %s\n", walship_version());
    return 0;
}
C
# A sanitizer build's library needs the sanitizer runtime in the program
# too, and first in line for anything that loads walship.so.
san=()
preload=
if [[ -n ${WALSHIP_SANITIZE:-} ]]; then
    san=(-fsanitize="$WALSHIP_SANITIZE")
    case $WALSHIP_SANITIZE in
    *address*) preload=$(gcc -print-file-name=libasan.so) ;;
    *thread*) preload=$(gcc -print-file-name=libtsan.so) ;;
    esac
    export ASAN_OPTIONS=detect_leaks=0
fi
# shellcheck disable=SC2046
cc "${san[@]}" -o "$tmp/use" "$tmp/use.c" $(pkg-config --cflags --libs walship)
LD_LIBRARY_PATH=$(dirname "$(find "$tmp/prefix" -name 'libwalship.so' | head -1)") "$tmp/use" | grep -q '^walship 0\.'

ext=$(find "$tmp/prefix" -name walship.so | head -1)
[[ -n $ext ]] || { echo "walship.so not installed"; exit 1; }
if nm -D --undefined-only "$ext" | grep -q ' sqlite3_'; then
    echo "walship.so calls SQLite directly:"; nm -D --undefined-only "$ext" | grep ' sqlite3_'; exit 1
fi
if ldd "$ext" | grep -q libsqlite3; then echo "walship.so links libsqlite3"; exit 1; fi
nm -D --defined-only "$ext" | grep -q ' sqlite3_walship_init$'

# shell SCRIPT -- runs SCRIPT (lines) in the sqlite3 shell with walship.so
# loaded first, stopping at the first error; stdout and stderr together.
shell() {
    printf '.load %s\n%s\n' "$ext" "$1" | (cd "$tmp" && LD_PRELOAD=$preload sqlite3 -bail :memory: 2>&1)
}
out=$(shell '.vfslist') || { echo "loading walship.so failed: $out"; exit 1; }
grep -q '^vfs.zName *= "walship"$' <<<"$out" || { echo "walship.so registered no walship VFS: $out"; exit 1; }
# Used: a transaction through the VFS reaches the store.
out=$(shell ".open file:$tmp/x.db?vfs=walship&walship_url=file://$tmp/store
CREATE TABLE t(x); INSERT INTO t VALUES (42);
SELECT 'flushed=' || walship_flush(30000);
PRAGMA walship_status;") || { echo "shipping through walship.so failed: $out"; exit 1; }
grep -q '^flushed=1$' <<<"$out" || { echo "walship_flush did not report the upload: $out"; exit 1; }
grep -Eq '"shipped_txid":[1-9]' <<<"$out" || { echo "PRAGMA walship_status: $out"; exit 1; }
ls "$tmp"/store/generations/*/snapshots/*.snap >/dev/null 2>&1 ||
    { echo "nothing reached the store:"; find "$tmp/store"; exit 1; }
# A database opened through the VFS with no destination is refused, loudly,
# by walship (the VFS exists: the refusal is not "no such vfs").
# (The shell's exit status says nothing here: a failed .open does not stop it.)
out=$(shell ".open file:$tmp/y.db?vfs=walship
CREATE TABLE t(x);") || true
if ! grep -qi "unable to open" <<<"$out" || grep -qi "no such vfs" <<<"$out" ||
    [[ -s $tmp/y.db ]]; then
    echo "expected walship to refuse a database with no destination, got: $out"
    exit 1
fi
echo "install, pkg-config and extension checks passed"
