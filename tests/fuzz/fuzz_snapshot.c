/*
** fuzz_snapshot.c -- libFuzzer target: snapshot footer, index and chunk
** decoding, as restore does it (footer from the tail, index, then chunks).
*/
#include <stdint.h>
#include <stdlib.h>

#include "format/objfmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    snap_footer f;
    if (snap_parse_footer(data, size, size, &f, NULL) != 0) return 0;
    uint64_t ilen = (uint64_t)f.index_count * SNAP_INDEX_ENTRY_SIZE;
    if (f.index_off + ilen > size) return 0;
    snap_chunk *c = NULL;
    if (snap_parse_index(data + f.index_off, (size_t)ilen, &f, size, &c, NULL) != 0) return 0;
    wsbuf out = {0};
    for (uint32_t i = 0; i < f.index_count && i < 64; i++)
        snap_decode_chunk(&c[i], data + c[i].offset, c[i].clen, f.page_size, &out, NULL);
    wsbuf_free(&out);
    free(c);
    return 0;
}
