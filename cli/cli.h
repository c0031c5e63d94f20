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

/* Option value helpers: parse or print a usage error (returning nonzero). */
int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);

#endif
