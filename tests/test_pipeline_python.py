"""test_pipeline_python.py -- walship.so loaded into Debian's /usr/bin/python3.

The extension is loaded into Python's own sqlite3 module (the system
libsqlite3), which registers the "walship" VFS for the whole process. A
database opened with vfs=walship and a walship_url is written through it;
SELECT walship_flush(ms) must return 1, PRAGMA walship_status must be JSON
with the documented fields, refused journal modes must raise with a message
that mentions walship, and `walship restore` (the CLI) must rebuild a file
byte-identical to the primary after a TRUNCATE checkpoint.

ctest-labels: pipeline
ctest-timeout: 120
"""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.parse


def fail(msg):
    print("FAIL test_pipeline_python.py: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main(tmp):
    ext = os.environ.get("WALSHIP_EXT")
    binary = os.environ.get("WALSHIP_BIN")
    check(ext and binary, "WALSHIP_EXT and WALSHIP_BIN must be set (run through ctest)")
    path = os.path.join(tmp, "app.db")
    store = "file://" + os.path.join(tmp, "store")

    # Loading registers the VFS for the process; it stays loaded after the
    # connection that loaded it is closed.
    loader = sqlite3.connect(":memory:")
    loader.enable_load_extension(True)
    loader.load_extension(ext)
    loader.close()

    uri = "file:%s?vfs=walship&walship_url=%s&walship_ship_interval=0" % (
        urllib.parse.quote(path), urllib.parse.quote(store, safe=""))
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    check(mode == "wal", "journal_mode is %r, not wal" % mode)

    db.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB, s TEXT)")
    for i in range(300):
        if i % 10 == 0:
            db.execute("BEGIN")
        db.execute("INSERT INTO t(v, s) VALUES (randomblob(?), ?)", ((i * 37) % 5000, "row %d" % i))
        if i % 10 == 9:
            db.execute("COMMIT")
    db.execute("UPDATE t SET s = s || '!' WHERE k % 3 = 0")
    db.execute("DELETE FROM t WHERE k % 7 = 0")
    flushed = db.execute("SELECT walship_flush(60000)").fetchone()[0]
    check(flushed == 1, "walship_flush returned %r" % flushed)

    status = json.loads(db.execute("PRAGMA walship_status").fetchone()[0])
    for field, kind in (("generation", str), ("txid", int), ("shipped_txid", int), ("lag_ms", int),
                        ("spool_bytes", int), ("wal_bytes", int), ("last_error", str)):
        check(isinstance(status.get(field), kind), "status field %s: %r" % (field, status.get(field)))
    check(status["shipped_txid"] == status["txid"], "status after a flush: %r" % status)
    check(status["last_error"] == "", "status shows an error: %r" % status)

    for pragma in ("PRAGMA journal_mode=DELETE", "PRAGMA locking_mode=EXCLUSIVE"):
        try:
            db.execute(pragma).fetchall()
        except sqlite3.Error as e:
            check("walship" in str(e), "%s: the error does not mention walship: %s" % (pragma, e))
        else:
            fail("%s through walship succeeded" % pragma)
    check(db.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "journal_mode changed")

    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    flushed = db.execute("SELECT walship_flush(60000)").fetchone()[0]
    check(flushed == 1, "walship_flush after the checkpoint returned %r" % flushed)

    out = os.path.join(tmp, "restored.db")
    r = subprocess.run([binary, "restore", store, "-o", out, "--quiet"], capture_output=True, text=True)
    check(r.returncode == 0, "walship restore failed: %s" % (r.stdout + r.stderr))
    with open(path, "rb") as a, open(out, "rb") as b:
        check(a.read() == b.read(), "the restored database differs from the primary")
    rows = sqlite3.connect(out).execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
    want = db.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
    check(rows == want, "restored rows %r, primary %r" % (rows, want))
    db.close()


def preload_sanitizer_runtime():
    """In a sanitizer build walship.so needs its runtime loaded first: run
    this script again with the runtime it links (found with ldd) preloaded.
    Python itself leaks by design at exit, so leak detection is off."""
    if not os.environ.get("WALSHIP_SANITIZE") or os.environ.get("WALSHIP_PY_PRELOADED"):
        return
    out = subprocess.run(["ldd", os.environ["WALSHIP_EXT"]], capture_output=True, text=True).stdout
    libs = [line.split("=>")[1].split()[0] for line in out.splitlines()
            if "=>" in line and any(n in line for n in ("libasan.so", "libtsan.so"))]
    if not libs:
        return
    env = dict(os.environ, WALSHIP_PY_PRELOADED="1", LD_PRELOAD=":".join(libs))
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


if __name__ == "__main__":
    preload_sanitizer_runtime()
    tmp = tempfile.mkdtemp(prefix="walship-py-")
    ok = False
    try:
        main(tmp)
        ok = True
    finally:
        if ok and not os.environ.get("WALSHIP_TEST_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept test directory %s" % tmp, file=sys.stderr)
