/*
** fuzz_segment.c -- libFuzzer target: segment parsing and the full body walk.
** Any input must be rejected cleanly or walked to the end without reading
** out of bounds, leaking or crashing.
*/
#include <stdint.h>
#include <stdlib.h>

#include "format/objfmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    seg_header h;
    seg_parse(data, size, &h, NULL);
    seg_parse_header(data, size, &h, NULL);
    seg_iter *it = NULL;
    if (seg_iter_open(data, size, &it, NULL) != 0) return 0;
    for (int i = 0; i < 1000000; i++) {
        seg_event ev;
        if (seg_iter_next(it, &ev, NULL) != 0 || ev.type == SEG_EV_END) break;
        if (ev.type == SEG_EV_PAGE) {
            volatile uint8_t sink = ev.page[0] ^ ev.page[seg_iter_header(it)->page_size - 1];
            (void)sink;
        }
    }
    seg_iter_free(it);
    return 0;
}
