/* store_file.c -- placeholder; being written. */
#include "store_impl.h"
int store_file_open(const char *url, store **out, wserr *err) {
    (void)url;
    *out = NULL;
    return wserr_set(err, WALSHIP_ERR_UNSUPPORTED, "the file backend is not built yet");
}
