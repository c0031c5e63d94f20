/*
** fuzz_objkey.c -- libFuzzer target: the classification of listed keys
** (objkey_classify), which decides what restore and the replica consider
** at all. Invariants: a key classified as a segment or snapshot has
** possible TXIDs (1 <= first <= last < 2^63), a generation in (0, 2^63),
** and is exactly the key the writers would give it; a BAD key says why.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/objfmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char key[1100], again[128];
    if (size >= sizeof key) return 0;
    memcpy(key, data, size);
    key[size] = '\0';
    objkey k;
    objkey_classify(key, &k);
    switch (k.kind) {
    case OBJKEY_SEGMENT:
    case OBJKEY_SNAPSHOT:
        if (k.first == 0 || k.first > k.last || k.last >= WS_TXID_LIMIT || k.gen == 0 ||
            k.gen >= WS_TXID_LIMIT)
            abort();
        if (k.kind == OBJKEY_SEGMENT)
            seg_key(again, sizeof again, k.gen, k.first, k.last);
        else
            snap_key(again, sizeof again, k.gen, k.first);
        if (strcmp(again, key) != 0) abort();
        break;
    case OBJKEY_BAD:
        if (k.why == NULL || k.name_len > strlen(key)) abort();
        break;
    case OBJKEY_MARKER:
    case OBJKEY_OTHER: break;
    default: abort();
    }
    return 0;
}
