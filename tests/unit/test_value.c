/*
 * The qimg_value tree and its JSON form against QEMU 7.2.
 *
 * Key order: dictionaries filled in QAPI schema order must iterate in the
 * order qemu-img prints (the emitted orders listed in QEMU-REFERENCE.md
 * section 2.4, themselves read from qemu-img output).
 * JSON: a tree built like qemu-img builds ImageInfo must serialise to the
 * exact bytes of "qemu-img info --output=json --backing-chain" of a real
 * image chain (made with qemu-img 7.2.22: a qcow2 overlay with three
 * internal snapshots, one with a hostile name, and two bitmaps, over a
 * qcow2 base).  The escaping table comes from the same source: each input
 * was used as a snapshot name and read back from qemu-img's JSON.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg/qimg.h"
#include "tap.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Key order ---------------------------------------------------------- */

/*
 * Insert keys (all with integer values) in the given order and return the
 * iteration order joined with ','.  Static buffer: one use at a time.
 */
static const char *order_of(const char *const *keys, size_t n)
{
    static char out[1024];
    struct qimg_value *d = qimg_value_new_dict();

    for (size_t i = 0; i < n; i++) {
        qimg_value_dict_set(d, keys[i], qimg_value_new_int((int64_t)i));
    }
    out[0] = '\0';
    for (size_t i = 0; i < qimg_value_count(d); i++) {
        if (i) {
            strcat(out, ",");
        }
        strcat(out, qimg_value_key(d, i));
    }
    qimg_value_free(d);
    return out;
}

static void test_qapi_orders(void)
{
    /* ImageInfo, 7.2 schema order (qapi/block-core.json). */
    static const char *const image_info[] = {
        "filename",
        "format",
        "dirty-flag",
        "actual-size",
        "virtual-size",
        "cluster-size",
        "encrypted",
        "compressed",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "snapshots",
        "backing-image",
        "format-specific",
    };
    tap_eq_str(order_of(image_info, ARRAY_SIZE(image_info)),
               "backing-image,compressed,backing-filename-format,"
               "snapshots,virtual-size,filename,cluster-size,format,"
               "actual-size,format-specific,full-backing-filename,"
               "encrypted,backing-filename,dirty-flag",
               "ImageInfo order");

    /*
     * BlockGraphInfo (8.0+) adds "children" after the ImageInfo fields;
     * it shares a bucket with backing-filename-format and, inserted
     * later, comes first.  Inserted earlier it would come second.
     */
    static const char *const graph_info[] = {
        "filename",
        "format",
        "dirty-flag",
        "actual-size",
        "virtual-size",
        "cluster-size",
        "encrypted",
        "compressed",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "snapshots",
        "format-specific",
        "children",
    };
    tap_eq_str(order_of(graph_info, ARRAY_SIZE(graph_info)),
               "compressed,children,backing-filename-format,snapshots,"
               "virtual-size,filename,cluster-size,format,actual-size,"
               "format-specific,full-backing-filename,encrypted,"
               "backing-filename,dirty-flag",
               "BlockGraphInfo order");
    static const char *const same_bucket[] = {
        "children",
        "backing-filename-format",
    };
    tap_eq_str(order_of(same_bucket, 2), "backing-filename-format,children",
               "same bucket: most recent first");

    static const char *const qcow2[] = {
        "compat",         "data-file",        "data-file-raw", "extended-l2",
        "lazy-refcounts", "corrupt",          "refcount-bits", "encrypt",
        "bitmaps",        "compression-type",
    };
    tap_eq_str(order_of(qcow2, ARRAY_SIZE(qcow2)),
               "compat,compression-type,lazy-refcounts,bitmaps,"
               "refcount-bits,data-file,encrypt,data-file-raw,corrupt,"
               "extended-l2",
               "ImageInfoSpecificQCow2 order");

    static const char *const check[] = {
        "filename",
        "format",
        "check-errors",
        "image-end-offset",
        "corruptions",
        "leaks",
        "corruptions-fixed",
        "leaks-fixed",
        "total-clusters",
        "allocated-clusters",
        "fragmented-clusters",
        "compressed-clusters",
    };
    tap_eq_str(order_of(check, ARRAY_SIZE(check)),
               "image-end-offset,compressed-clusters,total-clusters,"
               "corruptions,corruptions-fixed,check-errors,leaks,"
               "leaks-fixed,allocated-clusters,filename,format,"
               "fragmented-clusters",
               "ImageCheck order");

    static const char *const snapshot[] = {
        "id",        "name",         "vm-state-size", "date-sec",
        "date-nsec", "vm-clock-sec", "vm-clock-nsec", "icount",
    };
    tap_eq_str(order_of(snapshot, ARRAY_SIZE(snapshot)),
               "icount,vm-clock-nsec,name,date-sec,date-nsec,vm-clock-sec,"
               "id,vm-state-size",
               "SnapshotInfo order");

    static const char *const measure[] = {
        "required",
        "fully-allocated",
        "bitmaps",
    };
    tap_eq_str(order_of(measure, ARRAY_SIZE(measure)),
               "bitmaps,required,fully-allocated", "BlockMeasureInfo order");

    static const char *const bitmap[] = {"name", "granularity", "flags"};
    tap_eq_str(order_of(bitmap, ARRAY_SIZE(bitmap)), "flags,name,granularity",
               "Qcow2BitmapInfo order");

    static const char *const specific[] = {"type", "data"};
    tap_eq_str(order_of(specific, 2), "type,data", "ImageInfoSpecific order");

    static const char *const child[] = {"name", "info"};
    tap_eq_str(order_of(child, 2), "name,info", "BlockChildInfo order");
}

/* An independent tdb_hash, to check the order of many keys. */
static uint32_t ref_hash(const char *s)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(s);

    for (uint32_t i = 0; s[i]; i++) {
        v += (uint32_t)(unsigned char)s[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512u;
}

static void test_many_keys(void)
{
    enum { N = 5000 };
    struct qimg_value *d = qimg_value_new_dict();
    char key[32];
    bool ok = true;

    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        ok = ok && qimg_value_dict_set(d, key, qimg_value_new_int(i)) == 0;
    }
    TAP_OK(ok);
    tap_eq_u64(qimg_value_count(d), N, "5000 keys counted");

    /* Buckets ascending; within a bucket, later insertions first. */
    ok = true;
    for (size_t i = 1; i < N; i++) {
        const char *a = qimg_value_key(d, i - 1);
        const char *b = qimg_value_key(d, i);
        uint32_t ha = ref_hash(a);
        uint32_t hb = ref_hash(b);
        int64_t ia = qimg_value_get_int(qimg_value_item(d, i - 1));
        int64_t ib = qimg_value_get_int(qimg_value_item(d, i));

        if (ha > hb || (ha == hb && ia < ib)) {
            ok = false;
        }
    }
    tap_ok(ok, "5000 keys in QDict order");

    ok = true;
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        const struct qimg_value *v = qimg_value_dict_get(d, key);
        ok = ok && v && qimg_value_get_int(v) == i;
    }
    tap_ok(ok, "5000 keys found");
    TAP_OK(qimg_value_dict_get(d, "key-5000") == NULL);
    qimg_value_free(d);
}

static void test_replace(void)
{
    static const char *const keys[] = {
        "children",
        "backing-filename-format",
        "filename",
        "format",
    };
    struct qimg_value *d = qimg_value_new_dict();

    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        qimg_value_dict_set(d, keys[i], qimg_value_new_int((int64_t)i));
    }
    char before[256] = "";
    for (size_t i = 0; i < qimg_value_count(d); i++) {
        strcat(before, qimg_value_key(d, i));
    }
    /* Replacing keeps the position (children stays second in its bucket). */
    TAP_OK(qimg_value_dict_set(d, "children", qimg_value_new_string("x")) == 0);
    char after[256] = "";
    for (size_t i = 0; i < qimg_value_count(d); i++) {
        strcat(after, qimg_value_key(d, i));
    }
    tap_eq_str(after, before, "replace keeps order");
    tap_eq_u64(qimg_value_count(d), 4, "replace keeps count");
    tap_eq_str(qimg_value_get_string(qimg_value_dict_get(d, "children")), "x",
               "replaced value");

    /* Setting the value a key already holds is a no-op, not a free. */
    struct qimg_value *same =
        (struct qimg_value *)qimg_value_dict_get(d, "format");
    TAP_OK(qimg_value_dict_set(d, "format", same) == 0);
    TAP_OK(qimg_value_get_int(qimg_value_dict_get(d, "format")) == 3);
    qimg_value_free(d);
}

static void test_accessors(void)
{
    struct qimg_value *v;

    v = qimg_value_new_bool(true);
    TAP_OK(qimg_value_type(v) == QIMG_VALUE_BOOL && qimg_value_get_bool(v));
    TAP_OK(qimg_value_get_int(v) == 0 && qimg_value_get_string(v) == NULL);
    TAP_OK(qimg_value_count(v) == 0 && qimg_value_item(v, 0) == NULL);
    qimg_value_free(v);

    v = qimg_value_new_int(-5);
    TAP_OK(qimg_value_type(v) == QIMG_VALUE_INT);
    TAP_OK(qimg_value_get_int(v) == -5 && qimg_value_get_uint(v) == 0);
    qimg_value_free(v);

    v = qimg_value_new_uint(UINT64_MAX);
    TAP_OK(qimg_value_type(v) == QIMG_VALUE_UINT);
    TAP_OK(qimg_value_get_uint(v) == UINT64_MAX);
    TAP_OK(qimg_value_get_int(v) == INT64_MAX);
    TAP_OK(!qimg_value_get_bool(v));
    qimg_value_free(v);

    v = qimg_value_new_string("abc");
    tap_eq_str(qimg_value_get_string(v), "abc", "string value");
    qimg_value_free(v);

    v = qimg_value_new_list();
    for (int i = 0; i < 100; i++) {
        qimg_value_list_append(v, qimg_value_new_int(i));
    }
    TAP_OK(qimg_value_count(v) == 100);
    TAP_OK(qimg_value_get_int(qimg_value_item(v, 0)) == 0);
    TAP_OK(qimg_value_get_int(qimg_value_item(v, 99)) == 99);
    TAP_OK(qimg_value_item(v, 100) == NULL);
    TAP_OK(qimg_value_key(v, 0) == NULL);
    TAP_OK(qimg_value_dict_get(v, "x") == NULL);
    qimg_value_free(v);

    v = qimg_value_new_dict();
    TAP_OK(qimg_value_key(v, 0) == NULL && qimg_value_item(v, 0) == NULL);
    TAP_OK(qimg_value_dict_get(v, NULL) == NULL);
    qimg_value_free(v);
    qimg_value_free(NULL);
}

static void test_errors(void)
{
    struct qimg_value *list = qimg_value_new_list();
    struct qimg_value *dict = qimg_value_new_dict();

    /* Wrong container: the item is freed (ASan checks) and EINVAL set. */
    TAP_OK(qimg_value_list_append(dict, qimg_value_new_int(1)) == -1);
    TAP_OK(qimg_get_errno() == EINVAL && errno == EINVAL);
    TAP_OK(qimg_value_dict_set(list, "k", qimg_value_new_int(1)) == -1);
    TAP_OK(qimg_get_errno() == EINVAL);
    TAP_OK(qimg_value_dict_set(dict, NULL, qimg_value_new_int(1)) == -1);
    TAP_OK(qimg_value_list_append(NULL, qimg_value_new_int(1)) == -1);
    /* A container cannot hold itself; the caller keeps ownership. */
    TAP_OK(qimg_value_list_append(list, list) == -1 && errno == EINVAL);
    TAP_OK(qimg_value_dict_set(dict, "self", dict) == -1);
    TAP_OK(qimg_value_count(list) == 0 && qimg_value_count(dict) == 0);

    /* A NULL item keeps the error its constructor recorded. */
    TAP_OK(qimg_value_new_string(NULL) == NULL && errno == EINVAL);
    TAP_OK(qimg_value_list_append(list, NULL) == -1 && errno == EINVAL);
    TAP_OK(qimg_value_dict_set(dict, "k", NULL) == -1 && errno == EINVAL);
    TAP_OK(qimg_value_count(list) == 0 && qimg_value_count(dict) == 0);

    TAP_OK(qimg_value_to_json(NULL) == NULL && errno == EINVAL);
    qimg_value_free(list);
    qimg_value_free(dict);
}

/* ---- JSON --------------------------------------------------------------- */

static char *json_of(struct qimg_value *v)
{
    char *s = qimg_value_to_json(v);
    qimg_value_free(v);
    return s;
}

static void check_json(struct qimg_value *v, const char *want, const char *name)
{
    char *got = json_of(v);
    tap_eq_str(got, want, name);
    free(got);
}

static void test_json_scalars(void)
{
    check_json(qimg_value_new_int(0), "0", "json 0");
    check_json(qimg_value_new_int(INT64_MIN), "-9223372036854775808",
               "json INT64_MIN");
    check_json(qimg_value_new_uint(UINT64_MAX), "18446744073709551615",
               "json UINT64_MAX");
    check_json(qimg_value_new_bool(true), "true", "json true");
    check_json(qimg_value_new_bool(false), "false", "json false");
    check_json(qimg_value_new_string(""), "\"\"", "json empty string");
    check_json(qimg_value_new_list(), "[\n]", "json empty list");
    check_json(qimg_value_new_dict(), "{\n}", "json empty dict");

    struct qimg_value *d = qimg_value_new_dict();
    struct qimg_value *l = qimg_value_new_list();
    qimg_value_list_append(l, qimg_value_new_list());
    qimg_value_list_append(l, qimg_value_new_dict());
    qimg_value_dict_set(d, "a", l);
    check_json(d,
               "{\n"
               "    \"a\": [\n"
               "        [\n"
               "        ],\n"
               "        {\n"
               "        }\n"
               "    ]\n"
               "}",
               "json nested empty containers");

    d = qimg_value_new_dict();
    qimg_value_dict_set(d, "k\"\n", qimg_value_new_int(1));
    check_json(d, "{\n    \"k\\\"\\n\": 1\n}", "json key escaping");
}

struct escape_case {
    const char *in;
    const char *out;
};

/* Input bytes and QEMU's JSON for them, read from qemu-img 7.2. */
static const struct escape_case escape_cases[] = {
    {"plain", "plain"},
    {"\001\037 ~\177", "\\u0001\\u001F ~\\u007F"},
    {"\042\134/", "\\\"\\\\/"},
    {"\010\014\012\015\011\013", "\\b\\f\\n\\r\\t\\u000B"},
    {"\303\251", "\\u00E9"},
    {"\342\202\254", "\\u20AC"},
    {"\360\237\230\200", "\\uD83D\\uDE00"},
    {"\364\217\277\275", "\\uDBFF\\uDFFD"},
    {"\360\220\200\200", "\\uD800\\uDC00"},
    {"\364\217\277\277", "\\uFFFD"},
    {"\357\277\276", "\\uFFFD"},
    {"\357\267\220", "\\uFFFD"},
    {"\357\267\257", "\\uFFFD"},
    {"\357\267\260", "\\uFDF0"},
    {"\300\200", "\\u0000"},
    {"\301\277", "\\uFFFD"},
    {"\340\200\200", "\\uFFFD"},
    {"\340\237\277", "\\uFFFD"},
    {"\340\240\200", "\\u0800"},
    {"\360\217\277\277", "\\uFFFD"},
    {"\364\220\200\200", "\\uFFFD"},
    {"\355\240\200", "\\uFFFD"},
    {"\355\277\277", "\\uFFFD"},
    {"\355\237\277", "\\uD7FF"},
    {"\356\200\200", "\\uE000"},
    {"\200", "\\uFFFD"},
    {"\277", "\\uFFFD"},
    {"\376", "\\uFFFD"},
    {"\377", "\\uFFFD"},
    {"\303", "\\uFFFD"},
    {"\342\202", "\\uFFFD"},
    {"\360\237\230", "\\uFFFD"},
    {"a\303b", "a\\uFFFDb"},
    {"\342\202x", "\\uFFFDx"},
    {"\370\210\200\200\200", "\\uFFFD"},
    {"\374\204\200\200\200\200", "\\uFFFD"},
    {"\370\210\200", "\\uFFFD"},
    {"\375\277\277\277\277\277", "\\uFFFD"},
    {"\302\200", "\\u0080"},
    {"\302\237", "\\u009F"},
    {"\302\240", "\\u00A0"},
    {"\337\277", "\\u07FF"},
    {"\357\277\275", "\\uFFFD"},
    {"\303\251\303", "\\u00E9\\uFFFD"},
    {"\360\237\230\200\360\237\230", "\\uD83D\\uDE00\\uFFFD"},
    {"\367\277\277\277", "\\uFFFD"},
    {"\365\200\200\200", "\\uFFFD"},
    {"x\340\200", "x\\uFFFD"},
};

static void test_json_escapes(void)
{
    char want[128];
    char name[64];

    for (size_t i = 0; i < ARRAY_SIZE(escape_cases); i++) {
        snprintf(want, sizeof(want), "\"%s\"", escape_cases[i].out);
        snprintf(name, sizeof(name), "escape case %zu", i);
        check_json(qimg_value_new_string(escape_cases[i].in), want, name);
    }
}

/* Builders in QAPI visit order, as qemu-img's output visitor fills QDicts. */
static struct qimg_value *snapshot(const char *id, const char *name,
                                   int64_t date_sec, int64_t date_nsec)
{
    struct qimg_value *s = qimg_value_new_dict();

    qimg_value_dict_set(s, "id", qimg_value_new_string(id));
    qimg_value_dict_set(s, "name", qimg_value_new_string(name));
    qimg_value_dict_set(s, "vm-state-size", qimg_value_new_int(0));
    qimg_value_dict_set(s, "date-sec", qimg_value_new_int(date_sec));
    qimg_value_dict_set(s, "date-nsec", qimg_value_new_int(date_nsec));
    qimg_value_dict_set(s, "vm-clock-sec", qimg_value_new_int(0));
    qimg_value_dict_set(s, "vm-clock-nsec", qimg_value_new_int(0));
    qimg_value_dict_set(s, "icount", qimg_value_new_uint(0));
    return s;
}

static struct qimg_value *bitmap(const char *name, int64_t granularity,
                                 bool is_auto)
{
    struct qimg_value *b = qimg_value_new_dict();
    struct qimg_value *flags = qimg_value_new_list();

    if (is_auto) {
        qimg_value_list_append(flags, qimg_value_new_string("auto"));
    }
    qimg_value_dict_set(b, "name", qimg_value_new_string(name));
    qimg_value_dict_set(b, "granularity", qimg_value_new_int(granularity));
    qimg_value_dict_set(b, "flags", flags);
    return b;
}

static struct qimg_value *qcow2_specific(struct qimg_value *bitmaps)
{
    struct qimg_value *spec = qimg_value_new_dict();
    struct qimg_value *data = qimg_value_new_dict();

    qimg_value_dict_set(data, "compat", qimg_value_new_string("1.1"));
    qimg_value_dict_set(data, "extended-l2", qimg_value_new_bool(false));
    qimg_value_dict_set(data, "lazy-refcounts", qimg_value_new_bool(false));
    qimg_value_dict_set(data, "corrupt", qimg_value_new_bool(false));
    qimg_value_dict_set(data, "refcount-bits", qimg_value_new_int(16));
    if (bitmaps) {
        qimg_value_dict_set(data, "bitmaps", bitmaps);
    }
    qimg_value_dict_set(data, "compression-type",
                        qimg_value_new_string("zlib"));
    qimg_value_dict_set(spec, "type", qimg_value_new_string("qcow2"));
    qimg_value_dict_set(spec, "data", data);
    return spec;
}

static struct qimg_value *image_info(const char *filename, int64_t actual_size,
                                     const char *backing,
                                     struct qimg_value *snapshots,
                                     struct qimg_value *specific)
{
    struct qimg_value *info = qimg_value_new_dict();

    qimg_value_dict_set(info, "filename", qimg_value_new_string(filename));
    qimg_value_dict_set(info, "format", qimg_value_new_string("qcow2"));
    qimg_value_dict_set(info, "dirty-flag", qimg_value_new_bool(false));
    qimg_value_dict_set(info, "actual-size", qimg_value_new_int(actual_size));
    qimg_value_dict_set(info, "virtual-size", qimg_value_new_int(67108864));
    qimg_value_dict_set(info, "cluster-size", qimg_value_new_int(65536));
    if (backing) {
        qimg_value_dict_set(info, "backing-filename",
                            qimg_value_new_string(backing));
        qimg_value_dict_set(info, "full-backing-filename",
                            qimg_value_new_string(backing));
        qimg_value_dict_set(info, "backing-filename-format",
                            qimg_value_new_string("qcow2"));
    }
    if (snapshots) {
        qimg_value_dict_set(info, "snapshots", snapshots);
    }
    qimg_value_dict_set(info, "format-specific", specific);
    return info;
}

static const char chain_json[] =
    "[\n"
    "    {\n"
    "        \"backing-filename-format\": \"qcow2\",\n"
    "        \"snapshots\": [\n"
    "            {\n"
    "                \"icount\": 0,\n"
    "                \"vm-clock-nsec\": 0,\n"
    "                \"name\": \"snap1\",\n"
    "                \"date-sec\": 1795329133,\n"
    "                \"date-nsec\": 212678000,\n"
    "                \"vm-clock-sec\": 0,\n"
    "                \"id\": \"1\",\n"
    "                \"vm-state-size\": 0\n"
    "            },\n"
    "            {\n"
    "                \"icount\": 0,\n"
    "                \"vm-clock-nsec\": 0,\n"
    "                \"name\": \"snap two\",\n"
    "                \"date-sec\": 1795329133,\n"
    "                \"date-nsec\": 243355000,\n"
    "                \"vm-clock-sec\": 0,\n"
    "                \"id\": \"2\",\n"
    "                \"vm-state-size\": 0\n"
    "            },\n"
    "            {\n"
    "                \"icount\": 0,\n"
    "                \"vm-clock-nsec\": 0,\n"
    "                \"name\": \"x\\t\\\"\\\\/\\u00E9\\uD83D\\uDE00\\u007F"
    "\\uFFFD\\u0000\\uFFFD\\uFFFD\\uFFFD\\u0001\\b\\f\\n\\r\\u001B end\",\n"
    "                \"date-sec\": 1795329138,\n"
    "                \"date-nsec\": 148639000,\n"
    "                \"vm-clock-sec\": 0,\n"
    "                \"id\": \"3\",\n"
    "                \"vm-state-size\": 0\n"
    "            }\n"
    "        ],\n"
    "        \"virtual-size\": 67108864,\n"
    "        \"filename\": \"ov.qcow2\",\n"
    "        \"cluster-size\": 65536,\n"
    "        \"format\": \"qcow2\",\n"
    "        \"actual-size\": 245760,\n"
    "        \"format-specific\": {\n"
    "            \"type\": \"qcow2\",\n"
    "            \"data\": {\n"
    "                \"compat\": \"1.1\",\n"
    "                \"compression-type\": \"zlib\",\n"
    "                \"lazy-refcounts\": false,\n"
    "                \"bitmaps\": [\n"
    "                    {\n"
    "                        \"flags\": [\n"
    "                            \"auto\"\n"
    "                        ],\n"
    "                        \"name\": \"bm0\",\n"
    "                        \"granularity\": 65536\n"
    "                    },\n"
    "                    {\n"
    "                        \"flags\": [\n"
    "                        ],\n"
    "                        \"name\": \"bm1\",\n"
    "                        \"granularity\": 131072\n"
    "                    }\n"
    "                ],\n"
    "                \"refcount-bits\": 16,\n"
    "                \"corrupt\": false,\n"
    "                \"extended-l2\": false\n"
    "            }\n"
    "        },\n"
    "        \"full-backing-filename\": \"base.qcow2\",\n"
    "        \"backing-filename\": \"base.qcow2\",\n"
    "        \"dirty-flag\": false\n"
    "    },\n"
    "    {\n"
    "        \"virtual-size\": 67108864,\n"
    "        \"filename\": \"base.qcow2\",\n"
    "        \"cluster-size\": 65536,\n"
    "        \"format\": \"qcow2\",\n"
    "        \"actual-size\": 200704,\n"
    "        \"format-specific\": {\n"
    "            \"type\": \"qcow2\",\n"
    "            \"data\": {\n"
    "                \"compat\": \"1.1\",\n"
    "                \"compression-type\": \"zlib\",\n"
    "                \"lazy-refcounts\": false,\n"
    "                \"refcount-bits\": 16,\n"
    "                \"corrupt\": false,\n"
    "                \"extended-l2\": false\n"
    "            }\n"
    "        },\n"
    "        \"dirty-flag\": false\n"
    "    }\n"
    "]";

static void test_json_chain(void)
{
    struct qimg_value *snaps = qimg_value_new_list();
    qimg_value_list_append(snaps,
                           snapshot("1", "snap1", 1795329133, 212678000));
    qimg_value_list_append(snaps,
                           snapshot("2", "snap two", 1795329133, 243355000));
    qimg_value_list_append(snaps,
                           snapshot("3",
                                    "x\t\"\\/\303\251\360\237\230\200\177"
                                    "\377\300\200\355\240\200\357\277\277"
                                    "\342\202\001\b\f\n\r\033 end",
                                    1795329138, 148639000));

    struct qimg_value *bitmaps = qimg_value_new_list();
    qimg_value_list_append(bitmaps, bitmap("bm0", 65536, true));
    qimg_value_list_append(bitmaps, bitmap("bm1", 131072, false));

    struct qimg_value *chain = qimg_value_new_list();
    qimg_value_list_append(chain, image_info("ov.qcow2", 245760, "base.qcow2",
                                             snaps, qcow2_specific(bitmaps)));
    qimg_value_list_append(chain, image_info("base.qcow2", 200704, NULL, NULL,
                                             qcow2_specific(NULL)));

    char *got = qimg_value_to_json(chain);
    tap_eq_str(got, chain_json, "json equals qemu-img info --backing-chain");
    free(got);

    /* A deep copy prints the same and is independent of the original. */
    struct qimg_value *copy = qimg_value_copy(chain);
    got = qimg_value_to_json(copy);
    tap_eq_str(got, chain_json, "copy prints the same");
    free(got);
    struct qimg_value *first = (struct qimg_value *)qimg_value_item(copy, 0);
    TAP_OK(qimg_value_dict_set(first, "filename",
                               qimg_value_new_string("other")) == 0);
    tap_eq_str(qimg_value_get_string(
                   qimg_value_dict_get(qimg_value_item(chain, 0), "filename")),
               "ov.qcow2", "original unchanged");
    qimg_value_free(copy);
    TAP_OK(qimg_value_copy(NULL) == NULL && errno == EINVAL);
    copy = qimg_value_copy(qimg_value_item(chain, 1));
    TAP_OK(copy && qimg_value_type(copy) == QIMG_VALUE_DICT);
    TAP_OK(qimg_value_get_int(qimg_value_dict_get(copy, "actual-size")) ==
           200704);
    qimg_value_free(copy);

    /* The first element alone is the plain "info" document, re-indented. */
    const struct qimg_value *top = qimg_value_item(chain, 0);
    static const char head[] = "{\n    \"backing-filename-format\": "
                               "\"qcow2\",\n    \"snapshots\": [\n";
    got = qimg_value_to_json(top);
    TAP_OK(got && strncmp(got, head, sizeof(head) - 1) == 0);
    TAP_OK(got && got[strlen(got) - 1] == '}');
    free(got);
    qimg_value_free(chain);
}

int main(void)
{
    test_qapi_orders();
    test_many_keys();
    test_replace();
    test_accessors();
    test_errors();
    test_json_scalars();
    test_json_escapes();
    test_json_chain();
    return tap_done();
}
