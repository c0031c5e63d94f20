/*
** test_s3_xml.c -- the S3 XML parsers and encoders (store/s3_xml.c and the
** helpers in store/s3_http.c), without a server.
**
** Each parser gets valid documents as AWS and Ceph RGW send them, then
** malformed, truncated, wrong-root, over-long and hostile ones: every bad
** document must give WALSHIP_ERR_CORRUPT with a sentence, never a crash
** (this runs under ASan/UBSan in scripts/test), and a truncation at every
** byte of a valid document must be refused.
*/
/* ctest-labels: unit */
#include "harness.h"
#include "store/s3_http.h"
#include "store/s3_xml.h"

#define DOC(s) (s), (sizeof(s) - 1)

static const char list_rgw[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult "
    "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><EncodingType>url</EncodingType>"
    "<Name>wstest</Name><Prefix>enc/</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</"
    "IsTruncated><Contents><Key>enc%2Fa%2Bb%20c%25d%3Fe~f</Key><LastModified>2026-11-26T12:26:"
    "46.649Z</LastModified><ETag>&quot;764efa883dda1e11db47671c4a3bbd9e&quot;</ETag><Size>3</"
    "Size><StorageClass>STANDARD</StorageClass><Type>Normal</Type></Contents><KeyCount>1</"
    "KeyCount></ListBucketResult>";

/* AWS: EncodingType after the Contents, spaces as '+', a continuation token. */
static const char list_aws[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n"
    "  <Name>bucket</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>\n"
    "  <IsTruncated>true</IsTruncated>\n"
    "  <Contents><Key>p/a+b%2Bc</Key><LastModified>2009-10-12T17:50:30.000Z</LastModified>"
    "<Size>434234</Size></Contents>\n"
    "  <Contents><Key>p/z%E2%82%AC</Key><Size>18446744073709551615</Size>"
    "<LastModified>not a date</LastModified></Contents>\n"
    "  "
    "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>\n"
    "  <EncodingType>url</EncodingType>\n"
    "</ListBucketResult>\n";

static void expect_corrupt(int rc, const wserr *err, const char *needle) {
    CHECK_EQ(rc, WALSHIP_ERR_CORRUPT);
    CHECK_EQ(err->code, WALSHIP_ERR_CORRUPT);
    CHECK(err->msg[0] != '\0');
    if (needle) CHECK_CONTAINS(err->msg, needle);
}

static void test_list_valid(void) {
    wserr err_ = {0}, *err = &err_;
    s3_xml_list l = {0};
    CHECK_OK(s3_xml_parse_list(DOC(list_rgw), &l, err), err);
    CHECK_EQ(l.objs.n, 1);
    CHECK_STREQ(l.objs.items[0].key, "enc/a+b c%d?e~f");
    CHECK_EQ(l.objs.items[0].size, 3);
    CHECK_EQ(l.objs.items[0].mtime_ms, 1795696006649LL);
    CHECK_EQ(l.truncated, 0);
    CHECK(l.next_token == NULL);
    s3_xml_list_free(&l);

    CHECK_OK(s3_xml_parse_list(DOC(list_aws), &l, err), err);
    CHECK_EQ(l.objs.n, 2);
    CHECK_STREQ(l.objs.items[0].key, "p/a b+c");
    CHECK_EQ(l.objs.items[0].size, 434234);
    CHECK_EQ(l.objs.items[0].mtime_ms, 1255369830000LL);
    CHECK_STREQ(l.objs.items[1].key, "p/z\xe2\x82\xac");
    CHECK_U64_EQ(l.objs.items[1].size, UINT64_MAX);
    CHECK_EQ(l.objs.items[1].mtime_ms, 0); /* unreadable date: unknown */
    CHECK_EQ(l.truncated, 1);
    CHECK_STREQ(l.next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
    s3_xml_list_free(&l);

    /* Without EncodingType keys are taken literally ('+' stays). */
    static const char plain[] =
        "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a+b%20</Key>"
        "<Size>0</Size></Contents></ListBucketResult>";
    CHECK_OK(s3_xml_parse_list(DOC(plain), &l, err), err);
    CHECK_STREQ(l.objs.items[0].key, "a+b%20");
    s3_xml_list_free(&l);

    /* A prefixed namespace and unknown elements are fine; empty listing. */
    static const char empty[] =
        "<s3:ListBucketResult xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<s3:Unknown><s3:Deeper>x</s3:Deeper></s3:Unknown><s3:IsTruncated>false</s3:IsTruncated>"
        "</s3:ListBucketResult>";
    CHECK_OK(s3_xml_parse_list(DOC(empty), &l, err), err);
    CHECK_EQ(l.objs.n, 0);
    s3_xml_list_free(&l);
}

static void test_list_bad(void) {
    static const struct {
        const char *doc;
        const char *needle;
    } bad[] = {
        {"", "empty"},
        {"<ListBucketResult><Contents><Key>a</Key>", "not well-formed"},
        {"<ListBucketResult><Contents><Key>a</Key><Size>1</Size></Contents>", "not well-formed"},
        {"<Error><Code>AccessDenied</Code></Error>", "root element <Error>"},
        {"<html><body>502 Bad Gateway</body></html>", "root element <html>"},
        {"Bad Gateway", "not well-formed"},
        {"<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
         "without <Key>"},
        {"<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>",
         "without <Size>"},
        {"<ListBucketResult><Contents><Key>a</Key><Size>12a</Size></Contents></ListBucketResult>",
         "invalid <Size>"},
        {"<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>",
         "invalid <Size>"},
        {"<ListBucketResult><Contents><Key>a</Key><Size>18446744073709551616</Size></Contents>"
         "</ListBucketResult>",
         "invalid <Size>"},
        {"<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>", "<IsTruncated>"},
        {"<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>a%G1</Key><Size>1</Size>"
         "</Contents></ListBucketResult>",
         "url-encoded"},
        {"<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>a%00b</Key><Size>1</"
         "Size>"
         "</Contents></ListBucketResult>",
         "url-encoded"},
        {"<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>a%4</Key><Size>1</Size>"
         "</Contents></ListBucketResult>",
         "url-encoded"},
        {"<ListBucketResult><Contents><Key>a&#0;</Key><Size>1</Size></Contents></ListBucketResult>",
         "not well-formed"},
        {"<ListBucketResult><Contents><Key>&undefined;</Key><Size>1</Size></Contents></"
         "ListBucketResult>",
         "not well-formed"},
        /* entity expansion is refused at the DOCTYPE, before any entity exists */
        {"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 "
         "\"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">]><ListBucketResult><Contents>"
         "<Key>&lol2;</Key><Size>1</Size></Contents></ListBucketResult>",
         "DOCTYPE"},
        {"<!DOCTYPE x SYSTEM \"file:///etc/passwd\"><ListBucketResult/>", "DOCTYPE"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wserr err_ = {0}, *err = &err_;
        s3_xml_list l = {0};
        fprintf(stderr, "   bad list %zu\n", i);
        expect_corrupt(s3_xml_parse_list(bad[i].doc, strlen(bad[i].doc), &l, err), err,
                       bad[i].needle);
        s3_xml_list_free(&l);
    }
}

/* Every proper prefix of a valid document is refused, never half-read. */
static void test_truncations(void) {
    for (size_t n = 0; n < sizeof list_aws - 1; n++) {
        wserr err_ = {0}, *err = &err_;
        s3_xml_list l = {0};
        int rc = s3_xml_parse_list(list_aws, n, &l, err);
        /* Trailing whitespace after the root end tag may be cut harmlessly. */
        if (rc == 0) {
            CHECK(strstr(list_aws + n, "</ListBucketResult>") == NULL);
        } else {
            expect_corrupt(rc, err, NULL);
        }
        s3_xml_list_free(&l);
    }
}

static void test_huge_text(void) {
    wserr err_ = {0}, *err = &err_;
    s3_xml_list l = {0};
    wsbuf doc = {0};
    /* A key longer than the cap */
    const char *open = "<ListBucketResult><Contents><Key>";
    CHECK_OK(wsbuf_append(&doc, open, strlen(open)), err);
    for (int i = 0; i < S3_XML_TEXT_MAX + 10; i++)
        CHECK_OK(wsbuf_append(&doc, "k", 1), err);
    const char *close = "</Key><Size>1</Size></Contents></ListBucketResult>";
    CHECK_OK(wsbuf_append(&doc, close, strlen(close)), err);
    expect_corrupt(s3_xml_parse_list(doc.p, doc.len, &l, err), err, "longer than");
    s3_xml_list_free(&l);

    /* A key of exactly the cap minus one (4095) is fine. */
    doc.len = 0;
    CHECK_OK(wsbuf_append(&doc, open, strlen(open)), err);
    for (int i = 0; i < S3_XML_TEXT_MAX - 1; i++)
        CHECK_OK(wsbuf_append(&doc, "k", 1), err);
    CHECK_OK(wsbuf_append(&doc, close, strlen(close)), err);
    CHECK_OK(s3_xml_parse_list(doc.p, doc.len, &l, err), err);
    CHECK_EQ(strlen(l.objs.items[0].key), S3_XML_TEXT_MAX - 1);
    s3_xml_list_free(&l);

    /* Huge text in an element nobody reads is skipped without growing memory. */
    doc.len = 0;
    const char *o2 = "<ListBucketResult><Junk>";
    CHECK_OK(wsbuf_append(&doc, o2, strlen(o2)), err);
    for (int i = 0; i < 1 << 20; i++)
        CHECK_OK(wsbuf_append(&doc, "j", 1), err);
    const char *c2 = "</Junk><IsTruncated>false</IsTruncated></ListBucketResult>";
    CHECK_OK(wsbuf_append(&doc, c2, strlen(c2)), err);
    CHECK_OK(s3_xml_parse_list(doc.p, doc.len, &l, err), err);
    s3_xml_list_free(&l);

    /* Deep nesting is counted, not stored. */
    doc.len = 0;
    CHECK_OK(wsbuf_append(&doc, "<ListBucketResult>", 18), err);
    for (int i = 0; i < 5000; i++)
        CHECK_OK(wsbuf_append(&doc, "<a>", 3), err);
    for (int i = 0; i < 5000; i++)
        CHECK_OK(wsbuf_append(&doc, "</a>", 4), err);
    CHECK_OK(wsbuf_append(&doc, "</ListBucketResult>", 19), err);
    CHECK_OK(s3_xml_parse_list(doc.p, doc.len, &l, err), err);
    s3_xml_list_free(&l);

    /* Beyond the document cap: refused before parsing. */
    s3_xml_error e;
    expect_corrupt(s3_xml_parse_error(doc.p, S3_XML_DOC_MAX + 1, &e, err), err, "bytes");
    wsbuf_free(&doc);
}

static void test_error_doc(void) {
    wserr err_ = {0}, *err = &err_;
    s3_xml_error e;
    static const char rgw[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message></"
        "Message><BucketName>nobucket</BucketName><RequestId>tx0</RequestId><HostId>x</HostId></"
        "Error>";
    CHECK_OK(s3_xml_parse_error(DOC(rgw), &e, err), err);
    CHECK_STREQ(e.code, "NoSuchBucket");
    CHECK_STREQ(e.message, "");

    /* AWS echoes what it signed; none of it may be kept. */
    static const char aws[] =
        "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated "
        "does not match the signature you provided. Check your key and signing method.</Message>"
        "<AWSAccessKeyId>AKIDEXAMPLE</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256\n2026"
        "</StringToSign><SignatureProvided>deadbeefsignature</SignatureProvided>"
        "<CanonicalRequest>GET /x</CanonicalRequest></Error>";
    CHECK_OK(s3_xml_parse_error(DOC(aws), &e, err), err);
    CHECK_STREQ(e.code, "SignatureDoesNotMatch");
    CHECK_CONTAINS(e.message, "Check your key");
    CHECK(strstr(e.message, "deadbeef") == NULL);

    /* A long message is cut, a long code refused. */
    wsbuf doc = {0};
    CHECK_OK(wsbuf_append(&doc, "<Error><Code>X</Code><Message>", 30), err);
    for (int i = 0; i < 10000; i++)
        CHECK_OK(wsbuf_append(&doc, "m", 1), err);
    CHECK_OK(wsbuf_append(&doc, "</Message></Error>", 18), err);
    CHECK_OK(s3_xml_parse_error(doc.p, doc.len, &e, err), err);
    CHECK_EQ(strlen(e.message), S3_XML_MESSAGE_MAX - 1);
    doc.len = 0;
    CHECK_OK(wsbuf_append(&doc, "<Error><Code>", 13), err);
    for (int i = 0; i < 100; i++)
        CHECK_OK(wsbuf_append(&doc, "C", 1), err);
    CHECK_OK(wsbuf_append(&doc, "</Code></Error>", 15), err);
    expect_corrupt(s3_xml_parse_error(doc.p, doc.len, &e, err), err, "<Code>");
    wsbuf_free(&doc);

    expect_corrupt(s3_xml_parse_error(DOC("<Error><Code>X</Code>"), &e, err), err,
                   "error response");
    expect_corrupt(s3_xml_parse_error(DOC("<ListBucketResult/>"), &e, err), err, "root element");
    expect_corrupt(s3_xml_parse_error(DOC("<Error><Code>X</Code></Error><Error/>"), &e, err), err,
                   "not well-formed");
}

static void test_initiate(void) {
    wserr err_ = {0}, *err = &err_;
    char id[64];
    static const char ok[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult xmlns=\"http://"
        "s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><Key>k</Key><UploadId>2~4kaYFh_"
        "x60M_0ZbBA71HHKBfAd7B18_</UploadId></InitiateMultipartUploadResult>";
    CHECK_OK(s3_xml_parse_initiate(DOC(ok), id, sizeof id, err), err);
    CHECK_STREQ(id, "2~4kaYFh_x60M_0ZbBA71HHKBfAd7B18_");
    expect_corrupt(s3_xml_parse_initiate(ok, sizeof ok - 1, id, 16, err), err, "longer than");
    expect_corrupt(s3_xml_parse_initiate(DOC("<InitiateMultipartUploadResult><Key>k</Key>"
                                             "</InitiateMultipartUploadResult>"),
                                         id, sizeof id, err),
                   err, "no <UploadId>");
    expect_corrupt(s3_xml_parse_initiate(DOC("<InitiateMultipartUploadResult><UploadId></UploadId>"
                                             "</InitiateMultipartUploadResult>"),
                                         id, sizeof id, err),
                   err, "no <UploadId>");
    expect_corrupt(
        s3_xml_parse_initiate(DOC("<Error><Code>AccessDenied</Code></Error>"), id, sizeof id, err),
        err, "root element");
}

static void test_complete(void) {
    wserr err_ = {0}, *err = &err_;
    s3_xml_error e;
    int failed = -1;
    static const char ok[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult xmlns=\"http://"
        "s3.amazonaws.com/doc/2006-03-01/\"><Location>http://h/b/k</Location><Bucket>b</Bucket>"
        "<Key>k</Key><ETag></ETag></CompleteMultipartUploadResult>";
    CHECK_OK(s3_xml_parse_complete(DOC(ok), &failed, &e, err), err);
    CHECK_EQ(failed, 0);
    /* AWS: a 200 whose body is an error, with whitespace before it. */
    static const char in200[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<Error><Code>InternalError</Code>"
        "<Message>We encountered an internal error. Please try again.</Message></Error>";
    CHECK_OK(s3_xml_parse_complete(DOC(in200), &failed, &e, err), err);
    CHECK_EQ(failed, 1);
    CHECK_STREQ(e.code, "InternalError");
    CHECK_CONTAINS(e.message, "try again");
    expect_corrupt(s3_xml_parse_complete(DOC("<Other/>"), &failed, &e, err), err, "root element");
    CHECK_EQ(failed, 0);
    expect_corrupt(s3_xml_parse_complete(ok, 40, &failed, &e, err), err, NULL);
}

static void test_delete(void) {
    wserr err_ = {0}, *err = &err_;
    s3_xml_delete d;
    static const char doc[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult xmlns=\"http://s3.amazonaws.com/"
        "doc/2006-03-01/\"><Deleted><Key>a</Key></Deleted><Error><Key>gone</Key><Code>NoSuchKey"
        "</Code><Message>The specified key does not exist.</Message></Error><Error><Key>p/x&amp;y"
        "</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error><Error><Key>z</Key>"
        "<Code>InternalError</Code></Error></DeleteResult>";
    CHECK_OK(s3_xml_parse_delete(DOC(doc), &d, err), err);
    CHECK_EQ(d.deleted, 2); /* a, and gone (missing counts as deleted) */
    CHECK_EQ(d.failed, 2);
    CHECK_STREQ(d.first_key, "p/x&y");
    CHECK_STREQ(d.first.code, "AccessDenied");
    CHECK_STREQ(d.first.message, "Access Denied");
    /* Quiet mode: an empty result. */
    CHECK_OK(s3_xml_parse_delete(DOC("<DeleteResult/>"), &d, err), err);
    CHECK_EQ(d.deleted + d.failed, 0);
    expect_corrupt(s3_xml_parse_delete(DOC("<DeleteResult><Error><Key>a</Key>"), &d, err), err,
                   "DeleteObjects result");
    expect_corrupt(s3_xml_parse_delete(DOC("<Error><Code>MalformedXML</Code></Error>"), &d, err),
                   err, "root element");
}

/* Escaped text must come back byte for byte through an XML parser. */
static void roundtrip(const char *s) {
    wserr err_ = {0}, *err = &err_;
    wsbuf doc = {0};
    s3_xml_delete d;
    const char *open = "<DeleteResult><Error><Key>";
    CHECK_OK(wsbuf_append(&doc, open, strlen(open)), err);
    CHECK_OK(s3_xml_escape(&doc, s, strlen(s)), err);
    const char *close = "</Key><Code>X</Code></Error></DeleteResult>";
    CHECK_OK(wsbuf_append(&doc, close, strlen(close)), err);
    CHECK_OK(s3_xml_parse_delete(doc.p, doc.len, &d, err), err);
    CHECK_STREQ(d.first_key, s);
    wsbuf_free(&doc);
}

static void test_escape(void) {
    wserr err_ = {0}, *err = &err_;
    wsbuf b = {0};
    CHECK_OK(s3_xml_escape(&b, DOC("a&b<c>d\"e'f")), err);
    CHECK_OK(wsbuf_append(&b, "", 1), err);
    CHECK_STREQ((const char *)b.p, "a&amp;b&lt;c&gt;d&quot;e&apos;f");
    b.len = 0;
    CHECK_RC(s3_xml_escape(&b, DOC("a\x01"
                                   "b")),
             WALSHIP_ERR_INVALID, err);
    CHECK_RC(s3_xml_escape(&b, DOC("a\x7f\x80")), WALSHIP_ERR_INVALID, err); /* lone continuation */
    CHECK_RC(s3_xml_escape(&b, DOC("\xc0\xaf")), WALSHIP_ERR_INVALID, err);  /* overlong '/' */
    CHECK_RC(s3_xml_escape(&b, DOC("\xed\xa0\x80")), WALSHIP_ERR_INVALID, err);     /* surrogate */
    CHECK_RC(s3_xml_escape(&b, DOC("\xef\xbf\xbe")), WALSHIP_ERR_INVALID, err);     /* U+FFFE */
    CHECK_RC(s3_xml_escape(&b, DOC("\xf4\x90\x80\x80")), WALSHIP_ERR_INVALID, err); /* > U+10FFFF */
    CHECK_RC(s3_xml_escape(&b, DOC("\xe2\x82")), WALSHIP_ERR_INVALID, err);         /* cut short */
    wsbuf_free(&b);
    roundtrip("plain/key.seg");
    roundtrip("tab\there\nnew\r\nline\rcr");
    roundtrip("x&y<z>\"q'");
    roundtrip("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

static void test_encoders(void) {
    wserr err_ = {0}, *err = &err_;
    wsbuf b = {0};
    CHECK_OK(s3_uri_encode(&b, DOC("a b/c~d+e%\xc3\xa9-_."), 1), err);
    CHECK_OK(wsbuf_append(&b, "", 1), err);
    CHECK_STREQ((const char *)b.p, "a%20b/c~d%2Be%25%C3%A9-_.");
    b.len = 0;
    CHECK_OK(s3_uri_encode(&b, DOC("a/b=c&d"), 0), err);
    CHECK_OK(wsbuf_append(&b, "", 1), err);
    CHECK_STREQ((const char *)b.p, "a%2Fb%3Dc%26d");
    wsbuf_free(&b);

    char hex[65], md5[25];
    s3_sha256_hex("", 0, hex);
    CHECK_STREQ(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    s3_sha256_hex("abc", 3, hex);
    CHECK_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    s3_md5_base64("", 0, md5);
    CHECK_STREQ(md5, "1B2M2Y8AsgTpgAmY7PhCfg==");
    s3_md5_base64("abc", 3, md5);
    CHECK_STREQ(md5, "kAFQmDzST7DWlj99KOF/cg==");
}

static void test_redact(void) {
    s3_conf c = {.secret_key = "wJalrXUtnFEMI/K7MDENG",
                 .token_header = "x-amz-security-token: TOKEN123456"};
    char msg[200] =
        "server said wJalrXUtnFEMI/K7MDENG and TOKEN123456 twice: wJalrXUtnFEMI/K7MDENG";
    s3_redact(&c, msg);
    CHECK(strstr(msg, "wJalrXUtnFEMI") == NULL);
    CHECK(strstr(msg, "TOKEN123456") == NULL);
    CHECK_CONTAINS(msg, "[redacted]");
    s3_conf shortsecret = {.secret_key = "abcdefg"};
    char m2[64] = "xabcdefgx";
    s3_redact(&shortsecret, m2);
    CHECK_STREQ(m2, "x*******x");
    s3_conf stars = {.secret_key = "*****"}; /* must not loop on its own mask */
    char m3[64] = "a*****b******";
    s3_redact(&stars, m3);
    CHECK_STREQ(m3, "a*****b******");
}

int main(void) {
    RUN(test_list_valid);
    RUN(test_list_bad);
    RUN(test_truncations);
    RUN(test_huge_text);
    RUN(test_error_doc);
    RUN(test_initiate);
    RUN(test_complete);
    RUN(test_delete);
    RUN(test_escape);
    RUN(test_encoders);
    RUN(test_redact);
    return 0;
}
