/*
 * write_random: a seeded randomized differential test of an image's write
 * path through the public API only.
 *
 *   write_random [-f FMT] [-o OPTS] [-s SIZE] [-b BASE.raw] [-n OPS]
 *                [-r SEED] [-m MIRROR.raw] [-e] [-u] [-d] [-v] IMAGE
 *
 * Creates IMAGE (qimg_create_prepare + qimg_create, format FMT, default
 * qcow2, options OPTS, virtual size SIZE), then runs OPS random requests
 * on it: writes, zero writes (with and without QIMG_ZERO_MAY_UNMAP),
 * discards, compressed cluster writes, flushes, close + reopen cycles and
 * reads, and mirrors every change into an in-memory copy of the guest
 * disk.  Reads at random points, near each request's edges, after each
 * reopen (the whole disk every fourth time) and of the whole disk at the
 * end (read-only) must equal the mirror.  The
 * final mirror is written to MIRROR.raw for qimg/qemu-img compare.
 *
 * -e uses an existing IMAGE instead (OPTS and SIZE are ignored): the
 * mirror starts from what qimg reads in it.
 *
 * The qcow2 version and extended L2 come from qimg_get_info.
 *
 * BASE.raw is the guest content of the backing file named in OPTS (as a
 * raw file, shorter than SIZE means zeros after it): the mirror starts
 * from it.
 *
 * Mirror semantics (what the test demands of the format):
 *   - writes and zero writes change exactly their range;
 *   - a compressed write replaces its whole cluster;
 *   - raw: a discard makes its whole range read as zero (hole punch);
 *   - qcow2 v3 (compat=1.1): every cluster wholly inside a discarded
 *     range reads as zero (the image's last cluster counts as whole when
 *     the range reaches the end of the image); partial clusters at the
 *     edges are unchanged;
 *   - qcow2 v2 (compat=0.10): without a backing file those clusters read
 *     as zero; over a backing file a discard changes nothing (QEMU
 *     refuses it there, having no zero flag to hide the backing data);
 *   - parallels: a discard changes nothing (QEMU 7.2's driver has none).
 *
 * The seed (-r, else QIMG_SEED, else time and pid) is printed first as
 * "seed=N"; the same seed and arguments replay the same requests.  On a
 * mismatch or a failed request the last requests are printed.  -v prints
 * every request.  -u opens the image with QIMG_OPEN_CACHE_UNSAFE: flushes
 * and closes still write the library's caches back to the file but skip
 * the host syncs, which would take most of the time.  -d opens it with
 * QIMG_OPEN_CACHE_DIRECT (cache mode none: O_DIRECT for 4 KiB aligned
 * requests, which the request buffers are), where new clusters are zeroed
 * on the host rather than written padded.  Exit 0 when every
 * check passed, 1 on a failure, 2 on a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qimg/qimg.h"

/* ---- PRNG: xoshiro256** seeded by splitmix64 (any seed is fine) ------ */

static uint64_t rng_s[4];

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        rng_s[i] = splitmix64(&seed);
    }
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    uint64_t result = rotl(rng_s[1] * 5, 7) * 9;
    uint64_t t = rng_s[1] << 17;
    rng_s[2] ^= rng_s[0];
    rng_s[3] ^= rng_s[1];
    rng_s[1] ^= rng_s[2];
    rng_s[0] ^= rng_s[3];
    rng_s[2] ^= t;
    rng_s[3] = rotl(rng_s[3], 45);
    return result;
}

/* Uniform in [0, n); n > 0.  The modulo bias is irrelevant here. */
static uint64_t rnd(uint64_t n)
{
    return rng_next() % n;
}

/* Uniform in [lo, hi]. */
static uint64_t rnd_range(uint64_t lo, uint64_t hi)
{
    return lo + rnd(hi - lo + 1);
}

/* ---- State ------------------------------------------------------------ */

enum discard_mode {
    DISCARD_EXACT_ZERO,     /* raw: the whole range reads as zero */
    DISCARD_CLUSTER_ZERO,   /* qcow2 v3 */
    DISCARD_NONE            /* qcow2 v2 over a backing file */
};

enum op_kind {
    OP_WRITE,
    OP_ZERO,
    OP_ZERO_UNMAP,
    OP_DISCARD,
    OP_COMPRESSED,
    OP_READ,
    OP_FLUSH,
    OP_REOPEN,
};

static const char *const op_names[] = {
    "write", "zero", "zero-unmap", "discard", "compressed", "read",
    "flush", "reopen",
};

struct op_record {
    uint64_t index;
    enum op_kind kind;
    uint64_t off, len;
    int pattern;
};

/* The longest request is 4 clusters, but at least this long. */
#define BIG_MIN (1024u * 1024)

/* How far around a request's edges it is read back. */
#define EDGE (256u * 1024)

/* The last requests, printed when something fails. */
#define HISTORY 32

static struct {
    const char *path, *format;
    struct qimg_image *img;
    uint64_t size;
    uint64_t cluster;    /* allocation unit (4096 for formats without) */
    uint64_t subcluster; /* cluster / 32 with extended L2, else cluster */
    bool has_compress;
    enum discard_mode discard;
    uint8_t *mirror;
    uint8_t *base; /* backing content, size bytes (zeros past its end) */
    uint8_t *buf, *rbuf;
    size_t buf_len;
    uint64_t hot;        /* a cluster that requests crowd around */
    uint64_t big;        /* the longest request: 4 clusters, >= 1 MiB */
    struct op_record history[HISTORY];
    uint64_t nops;
    bool verbose;
    unsigned open_flags; /* extra QIMG_OPEN_* flags */
    uint64_t seed;
    /* Counts for the summary line. */
    uint64_t counts[8];
    uint64_t bytes_verified;
} S;

static void print_history(void)
{
    uint64_t first = S.nops > HISTORY ? S.nops - HISTORY : 0;
    fprintf(stderr, "last requests (seed=%" PRIu64 "):\n", S.seed);
    for (uint64_t i = first; i < S.nops; i++) {
        const struct op_record *r = &S.history[i % HISTORY];
        fprintf(stderr, "  #%" PRIu64 " %s off=%" PRIu64 " len=%" PRIu64
                " pattern=%d\n", r->index, op_names[r->kind], r->off,
                r->len, r->pattern);
    }
}

static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "write_random: FAIL (seed=%" PRIu64 "): ", S.seed);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    print_history();
    exit(1);
}

static void die_api(const char *what)
{
    die("%s: %s (errno %d)", what, qimg_get_error(), qimg_get_errno());
}

static void record(enum op_kind kind, uint64_t off, uint64_t len,
                   int pattern)
{
    struct op_record *r = &S.history[S.nops % HISTORY];
    r->index = S.nops;
    r->kind = kind;
    r->off = off;
    r->len = len;
    r->pattern = pattern;
    S.nops++;
    S.counts[kind]++;
    if (S.verbose) {
        fprintf(stderr, "#%" PRIu64 " %s off=%" PRIu64 " len=%" PRIu64
                " pattern=%d\n", r->index, op_names[kind], off, len,
                pattern);
    }
}

/* ---- Requests --------------------------------------------------------- */

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Offsets crowd onto cluster and subcluster boundaries and a hot spot. */
static uint64_t pick_offset(void)
{
    uint64_t nclusters = (S.size + S.cluster - 1) / S.cluster;
    uint64_t c = rnd(2) ? (S.hot + nclusters + rnd(9) - 4) % nclusters
                        : rnd(nclusters);
    uint64_t base = c * S.cluster;
    uint64_t off;
    switch (rnd(10)) {
    case 0:
    case 1:
    case 2:
        off = base;
        break;
    case 3:
    case 4:
        off = base + rnd(S.cluster / S.subcluster) * S.subcluster;
        break;
    case 5:
        off = base + rnd(S.cluster / 512) * 512;
        break;
    case 6:
        /* Just before or after a boundary. */
        off = base + S.cluster * rnd(2);
        off = rnd(2) ? off + rnd_range(1, 3) : off - min_u64(off,
                                                             rnd_range(1, 3));
        break;
    default:
        off = base + rnd(S.cluster);
        break;
    }
    return off >= S.size ? S.size - 1 : off;
}

static uint64_t pick_length(void)
{
    if (rnd(50) == 0) {
        /* Now and then a long one, across many small clusters. */
        return rnd_range(1, S.big);
    }
    switch (rnd(10)) {
    case 0:
        return rnd_range(1, 16);
    case 1:
        return rnd_range(1, S.subcluster);
    case 2:
        return 512 * rnd_range(1, min_u64(2 * S.cluster / 512, 64));
    case 3:
        return S.subcluster * rnd_range(1, 4);
    case 4:
    case 5:
        return S.cluster * rnd_range(1, 4);
    case 6:
        return S.cluster * rnd_range(1, 3) + rnd_range(1, 3);
    case 7:
        return S.cluster * rnd_range(1, 3) - rnd_range(1, 3);
    default:
        return rnd_range(1, 4 * S.cluster);
    }
}

/* A request [off, off + len) inside the image, len >= 1. */
static void pick_range(uint64_t *off, uint64_t *len)
{
    uint64_t l = pick_length();
    uint64_t o;
    if (rnd(8) == 0) {
        /* End on a boundary instead of starting on one. */
        uint64_t end = pick_offset();
        end = end - end % S.subcluster;
        if (end < l) {
            end = min_u64(S.size, l);
        }
        o = end - min_u64(end, l);
    } else {
        o = pick_offset();
    }
    *off = o;
    *len = min_u64(l, S.size - o);
}

/*
 * Fill buf with one of several kinds of data: random (incompressible), a
 * repeated byte, text-like (compressible), all zeros, or a mix of zero and
 * random sectors.
 */
static void fill(uint8_t *buf, uint64_t len, int pattern)
{
    switch (pattern) {
    case 0:
        for (uint64_t i = 0; i < len; i += 8) {
            uint64_t v = rng_next();
            memcpy(buf + i, &v, min_u64(8, len - i));
        }
        break;
    case 1:
        memset(buf, (int)rnd_range(1, 255), len);
        break;
    case 2: {
        /* Text-like: a phrase from a random start, repeated by copies. */
        static const char words[] = "qimg cluster refcount guest host l2 ";
        uint64_t period = sizeof(words) - 1, shift = rnd(period);
        uint64_t n = min_u64(len, period);
        for (uint64_t i = 0; i < n; i++) {
            buf[i] = (uint8_t)words[(i + shift) % period];
        }
        while (n < len) {
            uint64_t k = min_u64(n, len - n);
            memcpy(buf + n, buf, k);
            n += k;
        }
        break;
    }
    case 3:
        memset(buf, 0, len);
        break;
    default:
        for (uint64_t i = 0; i < len; i += 512) {
            uint64_t n = min_u64(512, len - i);
            if (rnd(2)) {
                memset(buf + i, 0, n);
            } else {
                fill(buf + i, n, 0);
            }
        }
        break;
    }
}

/* Compare [off, off + len) of the image with the mirror. */
static void verify(uint64_t off, uint64_t len, const char *why)
{
    while (len > 0) {
        uint64_t n = min_u64(len, S.buf_len);
        if (qimg_pread(S.img, S.rbuf, (size_t)n, off) < 0) {
            die_api("qimg_pread");
        }
        if (memcmp(S.rbuf, S.mirror + off, n) != 0) {
            uint64_t i = 0;
            while (S.rbuf[i] == S.mirror[off + i]) {
                i++;
            }
            uint64_t j = i;
            while (j < n && S.rbuf[j] != S.mirror[off + j]) {
                j++;
            }
            die("%s: guest byte %" PRIu64 " reads 0x%02x, mirror has 0x%02x"
                " (%" PRIu64 " differing bytes from there; cluster %" PRIu64
                " + %" PRIu64 ")", why, off + i, S.rbuf[i],
                S.mirror[off + i], j - i, (off + i) / S.cluster,
                (off + i) % S.cluster);
        }
        S.bytes_verified += n;
        off += n;
        len -= n;
    }
}

/* Read the whole disk in chunks of varying size that cross clusters. */
static void verify_all(const char *why)
{
    uint64_t off = 0;
    while (off < S.size) {
        uint64_t n = min_u64(S.size - off, rnd_range(1, S.buf_len));
        verify(off, n, why);
        off += n;
    }
}

static void open_image(void)
{
    S.img = qimg_open(S.path, S.format, QIMG_OPEN_RDWR | S.open_flags);
    if (!S.img) {
        die_api("qimg_open");
    }
    if (S.size != 0 && qimg_get_size(S.img) != (int64_t)S.size) {
        die("qimg_open: size %" PRId64 ", created with %" PRIu64,
            qimg_get_size(S.img), S.size);
    }
}

static void close_image(void)
{
    if (qimg_close(S.img) < 0) {
        S.img = NULL;
        die_api("qimg_close");
    }
    S.img = NULL;
}

/* The range whole clusters of [off, off + len) cover, for discard. */
static void whole_clusters(uint64_t off, uint64_t len, uint64_t *first,
                           uint64_t *end)
{
    uint64_t cs = S.cluster;
    uint64_t f = (off + cs - 1) / cs * cs;
    uint64_t e = (off + len) / cs * cs;
    if (off + len == S.size) {
        /* The image's last, partial cluster is whole to the end. */
        e = S.size;
    }
    if (f > S.size) {
        /* off is inside the last, partial cluster: nothing whole. */
        f = S.size;
    }
    *first = f;
    *end = e > f ? e : f;
}


/*
 * A compressed cluster write, through qimg_pwrite_compressed or, every
 * other time, its two halves (qimg_compress_cluster, then
 * qimg_pwrite_compressed_data or a plain write when it does not shrink).
 */
static int write_compressed(uint64_t off, uint64_t len)
{
    if (rnd(2)) {
        return qimg_pwrite_compressed(S.img, S.buf, (size_t)len, off);
    }
    uint8_t *z = malloc((size_t)S.cluster);
    if (!z) {
        die("out of memory");
    }
    int64_t n = qimg_compress_cluster(S.img, S.buf, (size_t)len, off, z,
                                      (size_t)S.cluster);
    int ret = n < 0    ? -1
              : n == 0 ? qimg_pwrite(S.img, S.buf, (size_t)len, off)
                       : qimg_pwrite_compressed_data(S.img, z, (size_t)n,
                                                     (size_t)len, off);
    free(z);
    return ret;
}

static void do_op(enum op_kind kind)
{
    uint64_t off = 0, len = 0;
    int pattern = -1;
    switch (kind) {
    case OP_WRITE:
        pick_range(&off, &len);
        pattern = (int)rnd(5);
        record(kind, off, len, pattern);
        fill(S.buf, len, pattern);
        if (qimg_pwrite(S.img, S.buf, (size_t)len, off) < 0) {
            die_api("qimg_pwrite");
        }
        memcpy(S.mirror + off, S.buf, len);
        break;
    case OP_ZERO:
    case OP_ZERO_UNMAP:
        pick_range(&off, &len);
        record(kind, off, len, pattern);
        if (qimg_pwrite_zeroes(S.img, off, len,
                               kind == OP_ZERO_UNMAP ? QIMG_ZERO_MAY_UNMAP
                                                     : 0) < 0) {
            die_api("qimg_pwrite_zeroes");
        }
        memset(S.mirror + off, 0, len);
        break;
    case OP_DISCARD: {
        pick_range(&off, &len);
        record(kind, off, len, pattern);
        if (qimg_discard(S.img, off, len) < 0) {
            die_api("qimg_discard");
        }
        uint64_t first, end;
        switch (S.discard) {
        case DISCARD_EXACT_ZERO:
            memset(S.mirror + off, 0, len);
            break;
        case DISCARD_CLUSTER_ZERO:
            whole_clusters(off, len, &first, &end);
            memset(S.mirror + first, 0, end - first);
            break;
        case DISCARD_NONE:
            break;
        }
        break;
    }
    case OP_COMPRESSED: {
        uint64_t nclusters = (S.size + S.cluster - 1) / S.cluster;
        uint64_t c = rnd(2) ? (S.hot + nclusters + rnd(5) - 2) % nclusters
                            : rnd(nclusters);
        off = c * S.cluster;
        len = min_u64(S.cluster, S.size - off);
        /* Mostly compressible; random data is stored uncompressed. */
        static const int patterns[] = {1, 2, 2, 3, 4, 0};
        pattern = patterns[rnd(6)];
        record(kind, off, len, pattern);
        fill(S.buf, len, pattern);
        int ret = write_compressed(off, len);
        if (!S.has_compress) {
            if (ret == 0 || qimg_get_errno() != ENOTSUP) {
                die("qimg_pwrite_compressed on %s: want ENOTSUP, got %d "
                    "(%s)", S.format, ret, qimg_get_error());
            }
            break;
        }
        if (ret < 0) {
            die_api("qimg_pwrite_compressed");
        }
        memcpy(S.mirror + off, S.buf, len);
        break;
    }
    case OP_READ:
        pick_range(&off, &len);
        record(kind, off, len, pattern);
        verify(off, len, "random read");
        break;
    case OP_FLUSH:
        record(kind, 0, 0, pattern);
        if (qimg_flush(S.img) < 0) {
            die_api("qimg_flush");
        }
        break;
    case OP_REOPEN:
        record(kind, 0, 0, pattern);
        close_image();
        open_image();
        /*
         * Everything must have reached the file: read it all back every
         * fourth time, else a sample (the final pass reads everything).
         */
        if (S.counts[OP_REOPEN] % 4 == 1) {
            verify_all("after reopen");
        } else {
            for (int i = 0; i < 16; i++) {
                pick_range(&off, &len);
                verify(off, len, "after reopen");
            }
        }
        break;
    }
    if (kind != OP_READ && kind != OP_FLUSH && kind != OP_REOPEN &&
        len > 0 && rnd(4) == 0) {
        /*
         * Around the request's edges, where copy-on-write and partial
         * (sub)clusters are: a cluster each side, at most EDGE bytes.
         */
        uint64_t w = min_u64(S.cluster, EDGE);
        uint64_t lo = off - min_u64(off, w);
        uint64_t end = off + len;
        uint64_t hi = min_u64(S.size, end + w);
        if (hi - lo <= 4 * w) {
            verify(lo, hi - lo, "read after the request");
        } else {
            verify(lo, 2 * w, "read after the request");
            verify(end - w, hi - (end - w), "read after the request");
        }
    }
}

static enum op_kind pick_op(void)
{
    unsigned r = (unsigned)rnd(1000);
    if (r < 420) {
        return OP_WRITE;
    } else if (r < 520) {
        return OP_ZERO;
    } else if (r < 620) {
        return OP_ZERO_UNMAP;
    } else if (r < 720) {
        return OP_DISCARD;
    } else if (r < 820) {
        return OP_COMPRESSED;
    } else if (r < 965) {
        return OP_READ;
    } else if (r < 990) {
        return OP_FLUSH;
    }
    return OP_REOPEN;
}

/* ---- Setup ------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: write_random [-f FMT] [-o OPTS] [-s SIZE] "
            "[-b BASE.raw] [-n OPS] [-r SEED] [-m MIRROR.raw] [-e] [-u] "
            "[-d] [-v] IMAGE\n");
    exit(2);
}

/* qcow2: version 2, and extended L2 entries, from the image's info. */
static void qcow2_layout(bool *v2, bool *ext_l2)
{
    struct qimg_image_info *info = qimg_get_info(S.img);
    if (!info) {
        die_api("qimg_get_info");
    }
    const struct qimg_value *data =
        info->format_specific ? qimg_value_dict_get(info->format_specific,
                                                    "data")
                              : NULL;
    const struct qimg_value *compat =
        data ? qimg_value_dict_get(data, "compat") : NULL;
    const struct qimg_value *ext =
        data ? qimg_value_dict_get(data, "extended-l2") : NULL;
    if (!compat || qimg_value_type(compat) != QIMG_VALUE_STRING) {
        die("qimg_get_info: no qcow2 compat level");
    }
    *v2 = strcmp(qimg_value_get_string(compat), "0.10") == 0;
    *ext_l2 = ext && qimg_value_type(ext) == QIMG_VALUE_BOOL &&
              qimg_value_get_bool(ext);
    qimg_image_info_free(info);
}

static void load_base(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        die("cannot open %s: %s", path, strerror(errno));
    }
    size_t n = fread(S.base, 1, (size_t)S.size, f);
    if (ferror(f)) {
        die("cannot read %s", path);
    }
    (void)n; /* a shorter base reads as zero after its end */
    fclose(f);
}

static void write_mirror(const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(S.mirror, 1, (size_t)S.size, f) != S.size ||
        fclose(f) != 0) {
        die("cannot write the mirror %s", path);
    }
}

int main(int argc, char **argv)
{
    const char *opts_text = "", *size_text = "64M", *base = NULL;
    const char *mirror_path = NULL, *seed_text = getenv("QIMG_SEED");
    bool existing = false;
    uint64_t nops = 2000;
    S.format = "qcow2";
    int c;
    while ((c = getopt(argc, argv, "f:o:s:b:n:r:m:eudv")) != -1) {
        switch (c) {
        case 'f':
            S.format = optarg;
            break;
        case 'o':
            opts_text = optarg;
            break;
        case 's':
            size_text = optarg;
            break;
        case 'b':
            base = optarg;
            break;
        case 'n':
            nops = strtoull(optarg, NULL, 0);
            break;
        case 'r':
            seed_text = optarg;
            break;
        case 'm':
            mirror_path = optarg;
            break;
        case 'e':
            existing = true;
            break;
        case 'u':
            S.open_flags |= QIMG_OPEN_CACHE_UNSAFE;
            break;
        case 'd':
            S.open_flags |= QIMG_OPEN_CACHE_DIRECT;
            break;
        case 'v':
            S.verbose = true;
            break;
        default:
            usage();
        }
    }
    if (optind + 1 != argc) {
        usage();
    }
    S.path = argv[optind];
    if (seed_text && *seed_text) {
        S.seed = strtoull(seed_text, NULL, 0);
    } else {
        S.seed = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid();
    }
    printf("seed=%" PRIu64 "\n", S.seed);
    fflush(stdout);
    rng_seed(S.seed);

    struct qimg_opts *opts = qimg_opts_new();
    if (!opts || qimg_opts_parse(opts, opts_text) < 0 ||
        qimg_opts_set(opts, "size", size_text) < 0) {
        die_api("options");
    }
    if (!existing) {
        unlink(S.path);
        if (qimg_create_prepare(S.path, S.format, opts, 0) < 0) {
            die_api("qimg_create_prepare");
        }
        if (qimg_create(S.path, S.format, opts) < 0) {
            die_api("qimg_create");
        }
    }

    open_image();
    bool v2 = false, ext_l2 = false;
    if (strcmp(S.format, "qcow2") == 0) {
        qcow2_layout(&v2, &ext_l2);
    }
    S.size = (uint64_t)qimg_get_size(S.img);
    if (S.size == 0) {
        die("the image is empty");
    }
    S.cluster = qimg_get_cluster_size(S.img);
    S.has_compress = S.cluster != 0 && strcmp(S.format, "raw") != 0;
    if (S.cluster == 0) {
        S.cluster = 4096;
    }
    S.subcluster = ext_l2 ? S.cluster / 32 : S.cluster;
    if (strcmp(S.format, "qcow2") == 0) {
        S.discard = v2 && base ? DISCARD_NONE : DISCARD_CLUSTER_ZERO;
    } else if (strcmp(S.format, "parallels") == 0) {
        S.discard = DISCARD_NONE;
    } else {
        S.discard = DISCARD_EXACT_ZERO;
    }
    /* Requests reach S.big and a few bytes; reads use the same. */
    S.big = 4 * S.cluster > BIG_MIN ? 4 * S.cluster : BIG_MIN;
    S.buf_len = (size_t)(S.big + 4096);
    S.mirror = calloc(1, (size_t)S.size);
    S.base = calloc(1, (size_t)S.size);
    /* Page-aligned, so that requests at aligned offsets can go O_DIRECT. */
    void *wbuf = NULL, *rbuf = NULL;
    if (posix_memalign(&wbuf, 4096, S.buf_len) != 0 ||
        posix_memalign(&rbuf, 4096, S.buf_len) != 0) {
        die("out of memory");
    }
    S.buf = wbuf;
    S.rbuf = rbuf;
    if (!S.mirror || !S.base) {
        die("out of memory");
    }
    if (base) {
        load_base(base);
    }
    if (existing) {
        /* The image as it is; requests below are checked against it. */
        for (uint64_t off = 0; off < S.size; off += S.buf_len) {
            uint64_t n = min_u64(S.buf_len, S.size - off);
            if (qimg_pread(S.img, S.mirror + off, (size_t)n, off) < 0) {
                die_api("qimg_pread");
            }
        }
    } else {
        memcpy(S.mirror, S.base, (size_t)S.size);
        verify_all("fresh image");
    }

    for (uint64_t i = 0; i < nops; i++) {
        if (i % 64 == 0) {
            S.hot = rnd((S.size + S.cluster - 1) / S.cluster);
        }
        do_op(pick_op());
    }
    close_image();

    /* What is on disk after the last close, read-only this time. */
    S.img = qimg_open(S.path, S.format, 0);
    if (!S.img) {
        die_api("qimg_open (read-only, at the end)");
    }
    verify_all("final read-only pass");
    close_image();
    if (mirror_path) {
        write_mirror(mirror_path);
    }
    printf("ok: %" PRIu64 " requests (write %" PRIu64 ", zero %" PRIu64
           ", zero-unmap %" PRIu64 ", discard %" PRIu64 ", compressed %"
           PRIu64 ", read %" PRIu64 ", flush %" PRIu64 ", reopen %" PRIu64
           "), %" PRIu64 " MiB verified\n", S.nops, S.counts[OP_WRITE],
           S.counts[OP_ZERO], S.counts[OP_ZERO_UNMAP], S.counts[OP_DISCARD],
           S.counts[OP_COMPRESSED], S.counts[OP_READ], S.counts[OP_FLUSH],
           S.counts[OP_REOPEN], S.bytes_verified >> 20);
    qimg_opts_free(opts);
    free(S.mirror);
    free(S.base);
    free(S.buf);
    free(S.rbuf);
    return 0;
}
