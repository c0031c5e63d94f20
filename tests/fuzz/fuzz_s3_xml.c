/*
** fuzz_s3_xml.c -- libFuzzer target over every S3 XML parser (store/s3_xml.c).
**
** Each input is given to all five parsers, then checked for the promises
** of s3_xml.h: a parser returns 0 or CORRUPT/NOMEM with a message, and what
** it returns is within its caps (keys and tokens NUL-free and shorter than
** S3_XML_TEXT_MAX, codes and messages NUL-terminated within their arrays).
** The escaper must give text that the delete parser reads back unchanged.
** Seeds: tests/fuzz/corpus/fuzz_s3_xml/ (real RGW and AWS answers).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/s3_xml.h"

static void check(int ok) {
    if (!ok) abort();
}

static void check_err(int rc, const wserr *err) {
    if (rc == 0) return;
    check(rc == WALSHIP_ERR_CORRUPT || rc == WALSHIP_ERR_NOMEM);
    check(err->code == rc && err->msg[0] != '\0');
}

static void check_s3err(const s3_xml_error *e) {
    check(memchr(e->code, '\0', sizeof e->code) != NULL);
    check(memchr(e->message, '\0', sizeof e->message) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    wserr err = {0};
    int rc;

    s3_xml_list l = {0};
    rc = s3_xml_parse_list(data, size, &l, &err);
    check_err(rc, &err);
    for (size_t i = 0; rc == 0 && i < l.objs.n; i++)
        check(strlen(l.objs.items[i].key) < S3_XML_TEXT_MAX);
    if (rc == 0 && l.next_token) check(strlen(l.next_token) <= S3_XML_TEXT_MAX);
    s3_xml_list_free(&l);

    s3_xml_error e;
    wserr_clear(&err);
    rc = s3_xml_parse_error(data, size, &e, &err);
    check_err(rc, &err);
    check_s3err(&e);

    char id[128];
    wserr_clear(&err);
    rc = s3_xml_parse_initiate(data, size, id, sizeof id, &err);
    check_err(rc, &err);
    if (rc == 0) check(id[0] != '\0' && strlen(id) < sizeof id);

    int failed = 0;
    wserr_clear(&err);
    rc = s3_xml_parse_complete(data, size, &failed, &e, &err);
    check_err(rc, &err);
    check(rc == 0 || failed == 0);
    check_s3err(&e);

    s3_xml_delete *d = malloc(sizeof *d);
    if (d == NULL) return 0;
    wserr_clear(&err);
    rc = s3_xml_parse_delete(data, size, d, &err);
    check_err(rc, &err);
    if (rc == 0 && d->failed) check(strlen(d->first_key) <= S3_XML_TEXT_MAX);

    /* Escape the input as a key and read it back. */
    size_t n = size < 2000 ? size : 2000;
    char *key = malloc(n + 1);
    wsbuf doc = {0};
    if (key) {
        memcpy(key, data, n);
        key[n] = '\0';
        size_t klen = strlen(key);
        if (klen > 0 && wsbuf_append(&doc, "<DeleteResult><Error><Key>", 26) == 0 &&
            s3_xml_escape(&doc, key, klen) == 0 &&
            wsbuf_append(&doc, "</Key><Code>C</Code></Error></DeleteResult>", 43) == 0) {
            wserr_clear(&err);
            check(s3_xml_parse_delete(doc.p, doc.len, d, &err) == 0);
            check(strcmp(d->first_key, key) == 0);
        }
    }
    wsbuf_free(&doc);
    free(key);
    free(d);
    return 0;
}
