/*
 * The qimg_value tree: booleans, integers, strings, lists and dictionaries
 * shaped like QEMU's QObjects.
 *
 * Dictionaries iterate in QEMU's QDict order, because qemu-img prints
 * QAPI objects by walking a QDict: keys are grouped by bucket
 * (tdb_hash(key) % 512, buckets in increasing order) and, within a bucket,
 * the most recently inserted key comes first (QDict prepends to the
 * bucket's list).  Replacing the value of an existing key keeps the key
 * where it is, as qdict_put_obj() updates the entry in place.
 *
 * Representation of a dictionary: entries[] in insertion order, and
 * order[], a permutation of entry indices in iteration order.  Invariant:
 * order[] is sorted by bucket, and within one bucket by decreasing entry
 * index.  A new key is inserted in order[] in front of the existing keys of
 * its bucket (found by binary search), so iteration, counting and indexed
 * access never allocate and cost O(1); a lookup costs a binary search plus
 * a walk of one bucket.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "qimg/qimg.h"

/* QEMU's QDICT_BUCKET_MAX: the bucket count that decides key order. */
#define VALUE_DICT_BUCKETS 512u
/* Indices into entries[] are 32-bit; no real dictionary comes close. */
#define VALUE_DICT_MAX_ENTRIES (UINT32_MAX / 2)

struct value_dict_entry {
    char *key;
    struct qimg_value *value;
    uint32_t bucket;
};

struct qimg_value {
    enum qimg_value_type type;
    union {
        bool b;
        int64_t i;
        uint64_t u;
        char *s;
        struct {
            struct qimg_value **items;
            size_t count;
            size_t cap;
        } list;
        struct {
            struct value_dict_entry *entries;
            uint32_t *order;
            size_t count;
            size_t cap;
        } dict;
    } u;
};

/*
 * The hash QEMU's QDict uses (tdb_hash from Samba's TDB), computed in
 * 32-bit unsigned arithmetic.  Changing anything here changes key order.
 */
static uint32_t value_tdb_hash(const char *key)
{
    size_t len = strlen(key);
    uint32_t v = 0x238F13AFu * (uint32_t)len;

    for (uint32_t i = 0; key[i]; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return 1103515243u * v + 12345u;
}

static struct qimg_value *value_oom(void)
{
    error_set(ENOMEM, "Out of memory");
    errno = ENOMEM;
    return NULL;
}

static int value_fail(int errnum, const char *msg)
{
    error_set(errnum, "%s", msg);
    errno = errnum;
    return -1;
}

/*
 * A NULL item usually means its constructor failed and recorded why
 * (ENOMEM); keep that message rather than replacing it.
 */
static int value_null_item(void)
{
    int err = qimg_get_errno();

    if (err == 0) {
        return value_fail(EINVAL, "No value given");
    }
    errno = err;
    return -1;
}

static struct qimg_value *value_alloc(enum qimg_value_type type)
{
    struct qimg_value *v = calloc(1, sizeof(*v));

    if (!v) {
        return value_oom();
    }
    v->type = type;
    return v;
}

struct qimg_value *qimg_value_new_bool(bool b)
{
    struct qimg_value *v = value_alloc(QIMG_VALUE_BOOL);

    if (v) {
        v->u.b = b;
    }
    return v;
}

struct qimg_value *qimg_value_new_int(int64_t i)
{
    struct qimg_value *v = value_alloc(QIMG_VALUE_INT);

    if (v) {
        v->u.i = i;
    }
    return v;
}

struct qimg_value *qimg_value_new_uint(uint64_t u)
{
    struct qimg_value *v = value_alloc(QIMG_VALUE_UINT);

    if (v) {
        v->u.u = u;
    }
    return v;
}

struct qimg_value *qimg_value_new_string(const char *s)
{
    if (!s) {
        value_fail(EINVAL, "No string given");
        return NULL;
    }
    char *copy = strdup(s);
    if (!copy) {
        return value_oom();
    }
    struct qimg_value *v = value_alloc(QIMG_VALUE_STRING);
    if (!v) {
        free(copy);
        return NULL;
    }
    v->u.s = copy;
    return v;
}

struct qimg_value *qimg_value_new_list(void)
{
    return value_alloc(QIMG_VALUE_LIST);
}

struct qimg_value *qimg_value_new_dict(void)
{
    return value_alloc(QIMG_VALUE_DICT);
}

int qimg_value_list_append(struct qimg_value *list, struct qimg_value *item)
{
    if (!item) {
        return value_null_item();
    }
    if (list == item) {
        /*
         * The caller still owns the list: freeing it here would leave it
         * with a dangling pointer, so self-insertion frees nothing.
         */
        return value_fail(EINVAL, "A list cannot contain itself");
    }
    if (!list || list->type != QIMG_VALUE_LIST) {
        qimg_value_free(item);
        return value_fail(EINVAL, "Not a list");
    }
    if (list->u.list.count == list->u.list.cap) {
        size_t cap = list->u.list.cap ? list->u.list.cap * 2 : 4;
        struct qimg_value **items = NULL;

        if (cap <= SIZE_MAX / sizeof(*items)) {
            items = realloc(list->u.list.items, cap * sizeof(*items));
        }
        if (!items) {
            qimg_value_free(item);
            value_oom();
            return -1;
        }
        list->u.list.items = items;
        list->u.list.cap = cap;
    }
    list->u.list.items[list->u.list.count++] = item;
    return 0;
}

/* First position in order[] whose bucket is >= bucket (binary search). */
static size_t dict_lower_bound(const struct qimg_value *dict, uint32_t bucket)
{
    size_t lo = 0;
    size_t hi = dict->u.dict.count;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t idx = dict->u.dict.order[mid];

        if (dict->u.dict.entries[idx].bucket < bucket) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* The entry for key, or NULL. */
static struct value_dict_entry *dict_find(const struct qimg_value *dict,
                                          const char *key, uint32_t bucket)
{
    for (size_t pos = dict_lower_bound(dict, bucket); pos < dict->u.dict.count;
         pos++) {
        struct value_dict_entry *e =
            &dict->u.dict.entries[dict->u.dict.order[pos]];

        if (e->bucket != bucket) {
            break;
        }
        if (strcmp(e->key, key) == 0) {
            return e;
        }
    }
    return NULL;
}

static int dict_grow(struct qimg_value *dict)
{
    size_t cap = dict->u.dict.cap ? dict->u.dict.cap * 2 : 8;

    if (cap > VALUE_DICT_MAX_ENTRIES) {
        return -1;
    }
    struct value_dict_entry *entries =
        realloc(dict->u.dict.entries, cap * sizeof(*entries));
    if (!entries) {
        return -1;
    }
    dict->u.dict.entries = entries;
    uint32_t *order = realloc(dict->u.dict.order, cap * sizeof(*order));
    if (!order) {
        return -1;
    }
    dict->u.dict.order = order;
    dict->u.dict.cap = cap;
    return 0;
}

int qimg_value_dict_set(struct qimg_value *dict, const char *key,
                        struct qimg_value *item)
{
    if (!item) {
        return value_null_item();
    }
    if (dict == item) {
        /* As in qimg_value_list_append: the caller keeps the dict. */
        return value_fail(EINVAL, "A dictionary cannot contain itself");
    }
    if (!dict || dict->type != QIMG_VALUE_DICT) {
        qimg_value_free(item);
        return value_fail(EINVAL, "Not a dictionary");
    }
    if (!key) {
        qimg_value_free(item);
        return value_fail(EINVAL, "No dictionary key given");
    }

    uint32_t bucket = value_tdb_hash(key) % VALUE_DICT_BUCKETS;
    struct value_dict_entry *e = dict_find(dict, key, bucket);
    if (e) {
        /* Replacement keeps the key's place, as in QEMU. */
        if (e->value != item) {
            qimg_value_free(e->value);
            e->value = item;
        }
        return 0;
    }

    char *copy = strdup(key);
    if (!copy ||
        (dict->u.dict.count == dict->u.dict.cap && dict_grow(dict) < 0)) {
        free(copy);
        qimg_value_free(item);
        value_oom();
        return -1;
    }

    size_t idx = dict->u.dict.count;
    dict->u.dict.entries[idx] = (struct value_dict_entry){
        .key = copy,
        .value = item,
        .bucket = bucket,
    };
    /*
     * The lower bound is the first key of this bucket (if any): the new
     * key goes in front of it, keeping order[] sorted as documented.
     */
    size_t pos = dict_lower_bound(dict, bucket);
    uint32_t *order = dict->u.dict.order;
    memmove(&order[pos + 1], &order[pos], (idx - pos) * sizeof(*order));
    order[pos] = (uint32_t)idx;
    dict->u.dict.count++;
    return 0;
}

void qimg_value_free(struct qimg_value *v)
{
    if (!v) {
        return;
    }
    switch (v->type) {
    case QIMG_VALUE_STRING:
        free(v->u.s);
        break;
    case QIMG_VALUE_LIST:
        for (size_t i = 0; i < v->u.list.count; i++) {
            qimg_value_free(v->u.list.items[i]);
        }
        free(v->u.list.items);
        break;
    case QIMG_VALUE_DICT:
        for (size_t i = 0; i < v->u.dict.count; i++) {
            free(v->u.dict.entries[i].key);
            qimg_value_free(v->u.dict.entries[i].value);
        }
        free(v->u.dict.entries);
        free(v->u.dict.order);
        break;
    case QIMG_VALUE_BOOL:
    case QIMG_VALUE_INT:
    case QIMG_VALUE_UINT:
        break;
    }
    free(v);
}

/*
 * Deep copy.  A dictionary's arrays are copied as they are, so the copy
 * iterates in exactly the same order as the original.
 */
static struct qimg_value *value_copy_list(const struct qimg_value *v)
{
    struct qimg_value *c = qimg_value_new_list();

    for (size_t i = 0; c && i < v->u.list.count; i++) {
        struct qimg_value *item = qimg_value_copy(v->u.list.items[i]);

        if (!item || qimg_value_list_append(c, item) < 0) {
            qimg_value_free(c);
            return NULL;
        }
    }
    return c;
}

static struct qimg_value *value_copy_dict(const struct qimg_value *v)
{
    struct qimg_value *c = qimg_value_new_dict();
    size_t n = v->u.dict.count;

    if (!c || n == 0) {
        return c;
    }
    c->u.dict.entries = calloc(n, sizeof(*c->u.dict.entries));
    c->u.dict.order = malloc(n * sizeof(*c->u.dict.order));
    if (!c->u.dict.entries || !c->u.dict.order) {
        qimg_value_free(c);
        return value_oom();
    }
    c->u.dict.cap = n;
    memcpy(c->u.dict.order, v->u.dict.order, n * sizeof(*c->u.dict.order));
    for (size_t i = 0; i < n; i++) {
        const struct value_dict_entry *e = &v->u.dict.entries[i];
        char *key = strdup(e->key);
        struct qimg_value *item = key ? qimg_value_copy(e->value) : NULL;

        if (!item) {
            free(key);
            qimg_value_free(c);
            return key ? NULL : value_oom();
        }
        /* count only covers complete entries, so a failure frees them. */
        c->u.dict.entries[i] = (struct value_dict_entry){
            .key = key,
            .value = item,
            .bucket = e->bucket,
        };
        c->u.dict.count = i + 1;
    }
    return c;
}

struct qimg_value *qimg_value_copy(const struct qimg_value *v)
{
    if (!v) {
        value_fail(EINVAL, "No value to copy");
        return NULL;
    }
    switch (v->type) {
    case QIMG_VALUE_BOOL:
        return qimg_value_new_bool(v->u.b);
    case QIMG_VALUE_INT:
        return qimg_value_new_int(v->u.i);
    case QIMG_VALUE_UINT:
        return qimg_value_new_uint(v->u.u);
    case QIMG_VALUE_STRING:
        return qimg_value_new_string(v->u.s);
    case QIMG_VALUE_LIST:
        return value_copy_list(v);
    case QIMG_VALUE_DICT:
        return value_copy_dict(v);
    }
    return NULL;
}

/*
 * Getters.  A getter used on the wrong type returns false, 0 or NULL; the
 * two integer types convert into each other, saturating at the bounds of
 * the requested type.
 */
/* v must not be NULL: there is no type to report for "no value". */
enum qimg_value_type qimg_value_type(const struct qimg_value *v)
{
    return v->type;
}

bool qimg_value_get_bool(const struct qimg_value *v)
{
    return v && v->type == QIMG_VALUE_BOOL && v->u.b;
}

int64_t qimg_value_get_int(const struct qimg_value *v)
{
    if (!v) {
        return 0;
    }
    if (v->type == QIMG_VALUE_INT) {
        return v->u.i;
    }
    if (v->type == QIMG_VALUE_UINT) {
        return v->u.u > INT64_MAX ? INT64_MAX : (int64_t)v->u.u;
    }
    return 0;
}

uint64_t qimg_value_get_uint(const struct qimg_value *v)
{
    if (!v) {
        return 0;
    }
    if (v->type == QIMG_VALUE_UINT) {
        return v->u.u;
    }
    if (v->type == QIMG_VALUE_INT) {
        return v->u.i < 0 ? 0 : (uint64_t)v->u.i;
    }
    return 0;
}

const char *qimg_value_get_string(const struct qimg_value *v)
{
    return v && v->type == QIMG_VALUE_STRING ? v->u.s : NULL;
}

size_t qimg_value_count(const struct qimg_value *v)
{
    if (!v) {
        return 0;
    }
    if (v->type == QIMG_VALUE_LIST) {
        return v->u.list.count;
    }
    if (v->type == QIMG_VALUE_DICT) {
        return v->u.dict.count;
    }
    return 0;
}

const struct qimg_value *qimg_value_item(const struct qimg_value *v, size_t i)
{
    if (!v) {
        return NULL;
    }
    if (v->type == QIMG_VALUE_LIST) {
        return i < v->u.list.count ? v->u.list.items[i] : NULL;
    }
    if (v->type == QIMG_VALUE_DICT && i < v->u.dict.count) {
        return v->u.dict.entries[v->u.dict.order[i]].value;
    }
    return NULL;
}

const char *qimg_value_key(const struct qimg_value *dict, size_t i)
{
    if (!dict || dict->type != QIMG_VALUE_DICT || i >= dict->u.dict.count) {
        return NULL;
    }
    return dict->u.dict.entries[dict->u.dict.order[i]].key;
}

const struct qimg_value *qimg_value_dict_get(const struct qimg_value *dict,
                                             const char *key)
{
    if (!dict || dict->type != QIMG_VALUE_DICT || !key) {
        return NULL;
    }
    const struct value_dict_entry *e =
        dict_find(dict, key, value_tdb_hash(key) % VALUE_DICT_BUCKETS);
    return e ? e->value : NULL;
}
