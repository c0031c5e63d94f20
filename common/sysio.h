/*
** sysio.h -- the system calls that make walship's own files durable, with
** fault injection for tests.
**
** Every write, sync, create, rename, link and truncate walship does on its
** local files (the spool's logs, state, queue, identity and work files)
** goes through these functions, or through ws_write_all/ws_pwrite_all
** (common/util.h), which use the same checks. Normally they are the plain
** system calls plus one relaxed atomic load.
**
** FAULTS. With WALSHIP_FAULTS set in the environment (read once, at the
** first call), matching calls fail the way a sick or full disk fails:
**
**   WALSHIP_FAULTS = RULE[;RULE...]
**   RULE  = OP:ERR[,path=SUBSTR][,after=N][,count=N][,while=FILE]
**   OP    = write | sync | create | rename | truncate | short | any
**           (short: a write that stores half its bytes, then fails)
**   ERR   = ENOSPC | EIO | EDQUOT | EROFS (a full disk, ENOSPC or EDQUOT,
**           fails only what needs room: creating, renaming, syncing,
**           writing past a file's end, growing it)
**   path=SUBSTR  only calls on files whose path contains SUBSTR
**   after=N      the first N matching calls succeed
**   count=N      at most N calls fail, then the rule is spent
**   while=FILE   only while FILE exists (a test creates and removes it, in
**                any process, to make the disk full and free again)
**
** POWER LOSS. With WALSHIP_POWERLOSS_DIR=DIR, every successful fdatasync or
** fsync of a file under DIR also copies the file's bytes to "<file>.ws-synced".
** ws_powerloss_apply(DIR) then does what losing power would: every file
** reverts to its last synced bytes, and a file never synced disappears
** (directory changes are treated as durable). Tests only.
**
** Thread-safety: all functions may be called from any thread.
*/
#ifndef WS_SYSIO_H
#define WS_SYSIO_H

#include <sys/types.h>

/* open(2) for walship's own files (O_CREAT counts as "create"). */
int ws_sys_open(const char *path, int flags, mode_t mode);
int ws_sys_fdatasync(int fd);
int ws_sys_fsync(int fd);
int ws_sys_rename(const char *from, const char *to);
int ws_sys_link(const char *from, const char *to);
int ws_sys_ftruncate(int fd, off_t len);

/* For common/util.c's write loops: 0 to go on, or -1 with errno set when a
** fault rule says this write of n bytes at off (-1: the file position) fails.
** *short_len is set (> 0) when only that many bytes must be written before
** the failure. */
int ws_sys_write_fault(int fd, size_t n, off_t off, size_t *short_len);

/* Tests: makes every file under dir what a power failure would leave
** (see POWER LOSS). Returns the number of files changed, or -1. */
int ws_powerloss_apply(const char *dir);

/* KILL POINTS. With WALSHIP_KILL_AT=POINT[:N], the Nth time (default the
** first) this process reaches ws_kill_point(POINT) it SIGKILLs itself, so a
** test can stop walship exactly between a record and the action it
** announces (the points are listed in docs/ARCHITECTURE.md section 3.2).
** WALSHIP_STOP_AT=POINT[:N] (when WALSHIP_KILL_AT is unset) SIGSTOPs the
** process there instead, so a test can act in exactly that window and then
** SIGCONT it. Unset, it costs one relaxed atomic load. */
void ws_kill_point(const char *point);

#endif
