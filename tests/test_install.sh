#!/usr/bin/env bash
# test_install.sh -- the artefacts as users consume them:
#   * `cmake --install` into a temporary prefix, then a C program built with
#     `pkg-config --cflags --libs walship` links and runs against it;
#   * walship.so reaches SQLite only through the extension routine table:
#     it has no undefined sqlite3_* symbols and links no libsqlite3;
#   * the extension loads into the sqlite3 shell and registers the VFS.
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

out=$(printf '.load %s\nSELECT name FROM pragma_function_list WHERE 0;\n' "${ext%.so}" |
      LD_PRELOAD=$preload sqlite3 :memory: 2>&1) || { echo "$out"; exit 1; }
# A database opened through the VFS with no destination is refused, loudly.
err=$(LD_PRELOAD=$preload sqlite3 -cmd ".load ${ext%.so}" "file:$tmp/x.db?vfs=walship" "CREATE TABLE t(x)" 2>&1 || true)
echo "$err" | grep -qi "unable to open" || { echo "expected a refusal, got: $err"; exit 1; }
echo "install, pkg-config and extension checks passed"
