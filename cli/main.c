/*
** main.c -- the walship command-line tool: dispatch to subcommands.
*/
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "walship.h"

static void usage(FILE *out) {
    fprintf(out,
            "walship %s -- continuous backups and read replicas for SQLite\n"
            "\n"
            "usage: walship COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  version     print the version\n"
            "  help        print this help\n",
            walship_version());
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("walship %s\n", walship_version());
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "walship: unknown command \"%s\"; run \"walship help\"\n", cmd);
    return 2;
}
