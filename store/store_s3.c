/* store_s3.c -- placeholder; being written. */
#include "store_impl.h"
int store_s3_open(const char *url, store **out, wserr *err) {
    (void)url;
    *out = NULL;
    return wserr_set(err, WALSHIP_ERR_UNSUPPORTED, "the s3 backend is not built yet");
}
