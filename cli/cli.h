/*
** cli.h -- shared pieces of the walship command-line tool.
** Each command is `int cmd_NAME(int argc, char **argv)` with argv[0] the
** command name; it returns the process exit status (0 ok, 1 failed, 2 usage).
*/
#ifndef WS_CLI_H
#define WS_CLI_H

#include <stdint.h>

#include "common/err.h"

int cmd_restore(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_generations(int argc, char **argv);
int cmd_ship(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_replica(int argc, char **argv);

/* Prints "walship: <msg>" to stderr and returns 1. */
int cli_fail(const wserr *err);
/* Prints a usage error for a command and returns 2. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Option values: s must be decimal digits only (no sign, space, or
** anything after them) for a value in [min, max]; overflow is out of range.
** Sets *out and returns 0, or prints a usage error naming opt and returns 2
** (*out untouched). cli_u64 is the range 0..UINT64_MAX. */
int cli_u64_range(const char *cmd, const char *opt, const char *s, uint64_t min, uint64_t max,
                  uint64_t *out);
int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);

#endif
