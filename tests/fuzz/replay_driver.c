/*
** replay_driver.c -- runs a libFuzzer target without libFuzzer, as a test.
**
** Usage: fuzz_NAME CORPUS_DIR
** Feeds every file in CORPUS_DIR (if it exists), then mutations of each
** (truncations, bit flips, byte runs) and random inputs, all from a fixed
** seed, to LLVMFuzzerTestOneInput. A crash or sanitizer report fails the
** test; finishing is a pass. Real fuzzing: build with -DWALSHIP_FUZZ=ON.
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint64_t next(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static void run_mutations(const uint8_t *seed, size_t n) {
    LLVMFuzzerTestOneInput(seed, n);
    uint8_t *buf = malloc(n + 64);
    if (buf == NULL) return;
    for (int round = 0; round < 200; round++) {
        memcpy(buf, seed, n);
        size_t len = n;
        int kind = (int)(next() % 4);
        if (kind == 0 && n > 0) {
            len = (size_t)(next() % n); /* truncation */
        } else if (kind == 1 && n > 0) {
            for (int k = 0; k < 4; k++) buf[next() % n] ^= (uint8_t)(1u << (next() % 8));
        } else if (kind == 2 && n > 0) {
            size_t at = (size_t)(next() % n);
            size_t run = 1 + (size_t)(next() % 16);
            uint8_t v = (uint8_t)next();
            for (size_t i = at; i < n && i < at + run; i++) buf[i] = v;
        } else {
            size_t extra = (size_t)(next() % 64);
            for (size_t i = 0; i < extra; i++) buf[n + i] = (uint8_t)next();
            len = n + extra;
        }
        LLVMFuzzerTestOneInput(buf, len);
    }
    free(buf);
}

int main(int argc, char **argv) {
    int files = 0;
    if (argc > 1) {
        DIR *d = opendir(argv[1]);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
            FILE *f = fopen(path, "rb");
            if (!f) continue;
            uint8_t *buf = malloc(1 << 22);
            size_t n = buf ? fread(buf, 1, 1 << 22, f) : 0;
            fclose(f);
            if (buf) run_mutations(buf, n);
            free(buf);
            files++;
        }
        if (d) closedir(d);
    }
    uint8_t buf[4096];
    for (int i = 0; i < 2000; i++) {
        size_t len = (size_t)(next() % sizeof buf);
        for (size_t k = 0; k < len; k++) buf[k] = (uint8_t)next();
        LLVMFuzzerTestOneInput(buf, len);
    }
    fprintf(stderr, "replayed %d corpus files with mutations and 2000 random inputs\n", files);
    return 0;
}
