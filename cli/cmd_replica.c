/*
** cmd_replica.c -- `walship replica` (placeholder until the replica lands).
*/
#include <stdio.h>

#include "cli.h"

int cmd_replica(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "walship replica: not built yet\n");
    return 1;
}
