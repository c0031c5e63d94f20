/*
** fuzz_owner.c -- libFuzzer target: ownership records (format/owner.c),
** which restore, verify and the replica read from the store. Any input is
** refused cleanly or parsed; a parsed record written again (owner_encode)
** parses to the same record.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/owner.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ws_owner a, b;
    static char text[OWNER_RECORD_MAX * 2];
    if (owner_parse(data, size, &a, NULL) != 0) return 0;
    if (a.db_id == 0 || a.nprevious < 0 || a.nprevious > OWNER_PREVIOUS_MAX) abort();
    if (!owner_lineage_has(&a, a.db_id) || owner_lineage_has(&a, 0)) abort();
    size_t n = owner_encode(&a, text, sizeof text);
    if (n == 0) return 0; /* a field that cannot be written back (a newline) */
    if (owner_parse(text, n, &b, NULL) != 0) abort();
    if (a.db_id != b.db_id || a.since_ms != b.since_ms || a.nprevious != b.nprevious ||
        strcmp(a.host, b.host) != 0 || strcmp(a.path, b.path) != 0 ||
        memcmp(a.previous, b.previous, sizeof a.previous) != 0)
        abort();
    return 0;
}
