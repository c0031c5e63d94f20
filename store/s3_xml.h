/*
** s3_xml.h -- the few XML documents the S3 API sends back, parsed with
** expat, and the escaping needed to send two of them.
**
** Every parser takes the whole response body (doc, len), treats it as
** hostile, and returns 0 or WALSHIP_ERR_CORRUPT (malformed, truncated,
** wrong root element, a field out of range) or WALSHIP_ERR_NOMEM, with a
** sentence in err. Nothing is read past len; no parser keeps more than one
** element's text (capped, see below) besides what it returns. DTDs are
** refused outright, so no entity can expand.
**
** Element names are matched on their local part ("s3:Key" and "Key" are the
** same); S3 puts everything in one default namespace. Unknown elements are
** skipped, so servers may add fields.
*/
#ifndef WS_S3_XML_H
#define WS_S3_XML_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Largest document any parser accepts. A ListObjectsV2 page of 1000 keys
** is at most ~5 MiB even with 1024-byte url-encoded keys. */
#define S3_XML_DOC_MAX ((size_t)16 << 20)

/* Longest text kept for one element; longer text is refused as CORRUPT,
** except <Message>, which is cut (it is only shown to people). 4 KiB holds
** any S3 key (1024 bytes) url-encoded (x3). */
#define S3_XML_TEXT_MAX 4096

/* An S3 <Error> document (or one <Error> entry of a DeleteResult). */
#define S3_XML_CODE_MAX    64
#define S3_XML_MESSAGE_MAX 256
typedef struct s3_xml_error {
    char code[S3_XML_CODE_MAX];       /* "NoSuchKey"; "" if absent */
    char message[S3_XML_MESSAGE_MAX]; /* server's sentence, cut to fit; may be "" */
} s3_xml_error;

/* Parses <Error><Code/><Message/>...</Error>. Other roots are CORRUPT.
** Only Code and Message are kept: AWS also echoes the StringToSign and the
** signature it expected, which must never reach a message or a log. */
int s3_xml_parse_error(const void *doc, size_t len, s3_xml_error *out, wserr *err);

/* One page of a ListObjectsV2 result (<ListBucketResult>). objs holds the
** keys exactly as listed (already url-decoded when the server honoured
** encoding-type=url, which it says in <EncodingType>), in document order.
** next_token is malloc'd (NULL when absent). Zero-initialise; release with
** s3_xml_list_free. */
typedef struct s3_xml_list {
    store_objlist objs;
    int truncated;    /* <IsTruncated>true</IsTruncated> */
    char *next_token; /* <NextContinuationToken> */
} s3_xml_list;
int s3_xml_parse_list(const void *doc, size_t len, s3_xml_list *out, wserr *err);
void s3_xml_list_free(s3_xml_list *l);

/* <InitiateMultipartUploadResult>: copies the non-empty <UploadId> into
** upload_id (cap bytes including the NUL; too long is CORRUPT). */
int s3_xml_parse_initiate(const void *doc, size_t len, char *upload_id, size_t cap, wserr *err);

/* CompleteMultipartUpload answers 200 and may still have failed: the body
** is then an <Error>. Sets *failed to 0 for <CompleteMultipartUploadResult>,
** or to 1 and fills e for <Error>. Any other root is CORRUPT. */
int s3_xml_parse_complete(const void *doc, size_t len, int *failed, s3_xml_error *e, wserr *err);

/* <DeleteResult> of DeleteObjects. Counts the <Deleted> and <Error>
** entries; NoSuchKey errors count as deleted (deleting a missing key
** succeeds). The first other error is kept in first_key / first. */
typedef struct s3_xml_delete {
    size_t deleted;
    size_t failed;
    char first_key[S3_XML_TEXT_MAX + 1];
    s3_xml_error first;
} s3_xml_delete;
int s3_xml_parse_delete(const void *doc, size_t len, s3_xml_delete *out, wserr *err);

/* Appends s[0..n) to out, escaped as XML 1.0 character data. \t \n \r are
** written as character references so the server's parser cannot normalise
** them. Returns WALSHIP_ERR_INVALID if s holds a byte XML 1.0 cannot carry
** at all (other C0 controls, NUL), WALSHIP_ERR_NOMEM if out cannot grow. */
int s3_xml_escape(wsbuf *out, const char *s, size_t n);

#endif
