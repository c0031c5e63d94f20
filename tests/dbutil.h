/*
** dbutil.h -- database helpers shared by the pipeline and replica tests:
** opening through walship, logical content hashes, byte comparisons,
** restores, and child processes.
*/
#ifndef WS_TEST_DBUTIL_H
#define WS_TEST_DBUTIL_H

#include <sqlite3.h>
#include <stdint.h>
#include <sys/types.h>

/* Registers walship once (walship_register(NULL, 0)). */
void db_register(void);

/* Opens path through the walship VFS shipping to url; extra is appended to
** the URI query ("walship_ship_interval=0&..."), may be NULL. Fails the test
** on error. */
sqlite3 *db_open_walship(const char *path, const char *url, const char *extra);
/* Opens path with the default VFS (no walship). */
sqlite3 *db_open_plain(const char *path, int readonly);

/* Runs SQL, failing the test on error. */
void db_exec(sqlite3 *db, const char *sql);
/* Runs SQL; returns the SQLite result code (no failure). */
int db_try_exec(sqlite3 *db, const char *sql);
/* First column of the first row as an integer (-1 if no row). */
int64_t db_int(sqlite3 *db, const char *sql);

/* A hash of the logical content: every table (by name) and its rows (by
** rowid), every column's type and bytes, plus the schema. */
uint64_t db_content_hash(sqlite3 *db);

/* The first line of PRAGMA integrity_check ("ok" when intact), in a static
** buffer (or the error that stopped it). */
const char *db_integrity(sqlite3 *db);

/* The store's latest restore (into out) has exactly the content of the
** database at db_path, passes integrity_check, and holds table t's seq
** 1..n without a hole for some n >= acked. Fails the test, naming `what`. */
void db_check_latest_restore(const char *db_path, const char *url, const char *out, uint64_t acked,
                             const char *what);

/* 1 if the two files have identical bytes. */
int files_equal(const char *a, const char *b);

/* Restores url into out (replacing it) as of the latest state (kind 0),
** txid (1) or time_ms (2). Returns the walship error code; the message is
** copied into msg (if not NULL). */
int db_restore(const char *url, const char *out, int kind, uint64_t txid, int64_t time_ms,
               char *msg, size_t msglen);

/* The TXID range [first, last] restorable from the newest generation. */
void db_txid_range(const char *url, uint64_t *first, uint64_t *last);

/* Runs this test program again as a child process (clean: no threads or
** walship state inherited) with the given arguments (NULL-terminated; the
** program name is added). Returns its pid. */
pid_t child_spawn(const char *const args[]);

/* Called first thing by a child started with child_spawn: it is killed
** when the test process dies (a failed check must not leave it running). */
void child_die_with_parent(void);

/* Forks a child running fn(arg); returns its pid. The child exits with
** fn's return value (and never returns from here). */
pid_t child_start(int (*fn)(void *), void *arg);
/* Waits for a child; returns its exit status, or 128+signal. */
int child_wait(pid_t pid);

/* ---- spool, status and the command line (pipeline tests) ------------------ */

/* The spool directory of db_path at its default place, "<db_path>-walship". */
void db_spool_dir(const char *db_path, char *out, size_t n);

/* Takes the shipper election lock of a spool (an exclusive OFD lock on byte
** 1 of <spool_dir>/ctl), retrying until timeout_ms passes:
** while the caller holds it no process is elected, so nothing ships.
** Returns the descriptor (close it to release the lock) or -1 on timeout. */
int db_hold_ship_lock(const char *spool_dir, int timeout_ms);

/* Waits (up to 20 s) until this process no longer has a shipper for
** db_path: its connections are closed and it has shipped everything, so the
** next open starts a new one (with the options it names). */
void db_wait_shipper_retired(const char *db_path);

/* The JSON of PRAGMA walship_status on db, as a malloc'ed string (free()). */
char *db_status_json(sqlite3 *db);

/* walship_flush(path, timeout_ms) == 1; otherwise says so with the status
** on stderr ("<who>: walship_flush returned N; status {...}") and returns 0.
** For child processes, whose exit code carries the outcome. */
int db_flush_or_say(const char *path, sqlite3 *db, int timeout_ms, const char *who);
/* json_extract(json, '$.<field>') as an integer (-1 if absent or not a
** number), or as text copied into out ("" if absent). */
int64_t db_json_int(const char *json, const char *field);
void db_json_text(const char *json, const char *field, char *out, size_t n);

/* Polls PRAGMA walship_status on db (up to 20 s) until the text member
** `field` contains needle; returns that status JSON (free() it). Fails the
** test otherwise, showing the last status. */
char *db_wait_status(sqlite3 *db, const char *field, const char *needle);

/* Size of a file in bytes, or -1 if it does not exist. */
int64_t db_file_size(const char *path);

/* Runs a shell command with stdout and stderr captured into out (truncated
** to n-1 bytes, NUL-terminated). Returns its exit status, or -1. */
int db_capture(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The number of generations the store at url holds. */
size_t db_generation_count(const char *url);

/* The generations the store at url holds, oldest first: their ids and the
** TXID range restorable in each (first = oldest snapshot). Fills at most
** max entries; returns the number of generations. */
size_t db_generation_list(const char *url, uint64_t *ids, uint64_t *first, uint64_t *last,
                          size_t max);

/* db_restore restricted to one generation (0: whichever fits). */
int db_restore_in(const char *url, const char *out, uint64_t generation, int kind, uint64_t txid,
                  char *msg, size_t msglen);

#endif
