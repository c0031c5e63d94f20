/*
** fuzz_spoolrec.c -- libFuzzer target: spool records, WAL headers and frame
** checks, and the wal-index header reader.
*/
#include <stdint.h>
#include <string.h>

#include "format/spoolrec.h"
#include "format/wal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t off = 0;
    spool_file_hdr_check(data, size);
    while (off < size) {
        spool_rec r;
        long n = spool_rec_decode(data + off, size - off, &r);
        if (n <= 0) {
            off++;
            continue;
        }
        if (r.type == SPOOL_REC_FRAMES) {
            wal_hdr h;
            memset(&h, 0, sizeof h);
            h.salt1 = r.salt1;
            h.salt2 = r.salt2;
            wal_cksum ck = {0, 0, 0};
            for (uint32_t i = 0; i < r.nframes && i < 16; i++)
                wal_frame_check(&h, &ck, r.frames + (size_t)i * (24 + r.page_size), r.page_size);
        }
        off += (size_t)n;
    }
    wal_hdr h;
    if (size >= WAL_HDR_SIZE) wal_hdr_parse(data, &h);
    if (size >= 2 * WALIDX_HDR_SIZE) {
        walidx_hdr ih;
        walidx_hdr_read(data, &ih);
    }
    return 0;
}
