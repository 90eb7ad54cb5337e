/*
 * qimg_opts: the "-o" option list parser.  The expected results follow
 * QEMU 7.2's QemuOpts parser; the cases marked "qemu-img" were checked
 * with qemu-img create (the value it printed or the parameter it named in
 * its error).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg/qimg.h"
#include "tap.h"

/* "k=v;k=v" of the whole list in order, into a static buffer. */
static const char *dump(const struct qimg_opts *o)
{
    static char out[8192];

    out[0] = '\0';
    for (size_t i = 0; i < qimg_opts_count(o); i++) {
        const char *k = qimg_opts_key(o, i);
        if (i) {
            strcat(out, ";");
        }
        strcat(out, k);
        strcat(out, "=");
        strcat(out, qimg_opts_get(o, k));
    }
    return out;
}

struct parse_case {
    const char *text;
    const char *want;
};

static const struct parse_case cases[] = {
    {"", ""},
    {"size=1M", "size=1M"},
    /* qemu-img: later values win. */
    {"size=2M,size=1M", "size=1M"},
    {"size=1M,cluster_size=4k,size=2M", "size=2M;cluster_size=4k"},
    /* qemu-img: ",," is a comma inside a value. */
    {"cluster_size=4k,,x,size=1M", "cluster_size=4k,x;size=1M"},
    {"size=1M,,2", "size=1M,2"},
    {"size=1M,,,cluster_size=4k", "size=1M,;cluster_size=4k"},
    {"a=1,,", "a=1,"},
    {"a=,,,,", "a=,,"},
    /* qemu-img: bare flags, and "no" prefixes. */
    {"lazy_refcounts", "lazy_refcounts=on"},
    {"nolazy_refcounts", "lazy_refcounts=off"},
    {"lazy_refcounts=on,nolazy_refcounts", "lazy_refcounts=off"},
    {"nocow", "cow=off"},
    {"no", "=off"},
    {"n", "n=on"},
    /* "id" is kept (qemu-img create would ignore it; the caller's job). */
    {"id=foo", "id=foo"},
    {"id=foo,size=1M", "id=foo;size=1M"},
    {"noid,size=1M", "id=off;size=1M"},
    {"ids=1", "ids=1"},
    /* qemu-img: "help" and "?" ask for help. */
    {"help", "help=on"},
    {"?", "help=on"},
    {"size=1M,help", "size=1M;help=on"},
    {"help=on", "help=on"},
    {"nohelp", "help=off"},
    /* qemu-img: an empty name ("Invalid parameter ''"). */
    {"=5", "=5"},
    {",size=1M", "=on;size=1M"},
    {"a,,b=1", "a=on;=on;b=1"},
    /* Values run to a single comma, '=' included. */
    {"a=b=c", "a=b=c"},
    {"a=", "a="},
    {"a=1,", "a=1"},
    {"b=1,a=2,b=3", "b=3;a=2"},
    {"k=v w,x= y ", "k=v w;x= y "},
};

static void test_parse(void)
{
    char name[128];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct qimg_opts *o = qimg_opts_new();
        int ret = qimg_opts_parse(o, cases[i].text);

        snprintf(name, sizeof(name), "parse \"%s\"", cases[i].text);
        tap_ok(ret == 0, name);
        tap_eq_str(dump(o), cases[i].want, name);
        qimg_opts_free(o);
    }
}

static void test_accumulate(void)
{
    struct qimg_opts *o = qimg_opts_new();

    /* Repeated -o: later strings override, first positions stay. */
    TAP_OK(qimg_opts_parse(o, "size=1M,compat=0.10") == 0);
    TAP_OK(qimg_opts_parse(o, "size=2M") == 0);
    tap_eq_str(dump(o), "size=2M;compat=0.10", "accumulate");
    TAP_OK(qimg_opts_set(o, "backing_file", "a,b") == 0);
    tap_eq_str(qimg_opts_get(o, "backing_file"), "a,b", "set with comma");
    TAP_OK(qimg_opts_unset(o, "size") == 0);
    tap_eq_str(dump(o), "compat=0.10;backing_file=a,b", "unset");
    TAP_OK(qimg_opts_unset(o, "nothing") == 0);
    TAP_OK(qimg_opts_get(o, "size") == NULL);
    TAP_OK(qimg_opts_key(o, 2) == NULL);
    tap_eq_u64(qimg_opts_count(o), 2, "count");
    qimg_opts_free(o);
    qimg_opts_free(NULL);
}

static void test_limits(void)
{
    struct qimg_opts *o = qimg_opts_new();
    size_t n = 4096;
    char *big = malloc(n + 2);
    char *text = malloc(2 * n + 16);

    memset(big, 'k', n + 1);
    big[n] = '\0';
    TAP_OK(qimg_opts_set(o, big, "v") == 0);
    TAP_OK(qimg_opts_set(o, "v", big) == 0);
    big[n] = 'k';
    big[n + 1] = '\0';
    TAP_OK(qimg_opts_set(o, big, "v") == -1 && errno == EINVAL);
    TAP_OK(qimg_get_errno() == EINVAL);
    TAP_OK(qimg_opts_set(o, "v", big) == -1 && errno == EINVAL);

    /* A rejected string changes nothing. */
    qimg_opts_free(o);
    o = qimg_opts_new();
    snprintf(text, 2 * n + 16, "a=1,b=%s", big);
    TAP_OK(qimg_opts_parse(o, text) == -1 && errno == EINVAL);
    tap_eq_u64(qimg_opts_count(o), 0, "rejected parse adds nothing");
    snprintf(text, 2 * n + 16, "a=1,%s", big);
    TAP_OK(qimg_opts_parse(o, text) == -1 && errno == EINVAL);

    /* The limit applies to the unescaped value: 4096 commas are fine. */
    strcpy(text, "a=");
    for (size_t i = 0; i < n; i++) {
        strcat(text + 2 * i, ",,");
    }
    TAP_OK(qimg_opts_parse(o, text) == 0);
    tap_eq_u64(strlen(qimg_opts_get(o, "a")), n, "4096 commas");

    TAP_OK(qimg_opts_parse(o, NULL) == -1 && errno == EINVAL);
    TAP_OK(qimg_opts_set(o, "k", NULL) == -1 && errno == EINVAL);
    TAP_OK(qimg_opts_parse(NULL, "a=1") == -1 && errno == EINVAL);
    free(big);
    free(text);
    qimg_opts_free(o);
}

int main(void)
{
    test_parse();
    test_accumulate();
    test_limits();
    return tap_done();
}
