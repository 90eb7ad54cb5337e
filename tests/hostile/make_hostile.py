#!/usr/bin/env python3
"""Write the hostile image corpus: malformed images of every format qimg
reads, each a small valid image (made by qemu-img/qemu-io, or built from
the published layout by tests/compat/roformats_tool.py) with one field
corrupted.

  make_hostile.py DIR            write every image into DIR, print the list
  make_hostile.py DIR NAME...    only the cases NAME (format/case)

Each case is (format, name, description, main file, extra commands).  The
list printed is one JSON object per line, read by run_hostile.py.  Only
test input: the fields are poked at the offsets the formats' documents
give (lib/formats/* cite them).
"""
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
COMPAT = os.path.join(HERE, '..', 'compat')
QEMU_IMG = os.environ.get('QEMU_IMG', 'qemu-img')
QEMU_IO = os.environ.get('QEMU_IO', 'qemu-io')

K = 1024
M = 1024 * 1024


def run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def create(fmt, path, size, *extra):
    # In the image's folder: a data file it names is created there.
    subprocess.run([QEMU_IMG, 'create', '-q', '-f', fmt, *extra,
                    os.path.abspath(path), str(size)], check=True,
                   stdout=subprocess.DEVNULL, cwd=os.path.dirname(
                       os.path.abspath(path)))


def qio(fmt, path, *cmds):
    argv = [QEMU_IO, '-f', fmt]
    for c in cmds:
        argv += ['-c', c]
    run(*argv, path)


def load(path):
    with open(path, 'rb') as f:
        return bytearray(f.read())


def qcow2_ext(d, ext_type):
    """Offset of the data of the qcow2 header extension ext_type (the
    extensions follow the 112-byte v3 header), or None."""
    p = 112
    while p + 8 <= 4096:
        t, n = struct.unpack_from('>II', d, p)
        if t == 0:
            return None
        if t == ext_type:
            return p + 8
        p += 8 + ((n + 7) & ~7)
    return None


def save(path, data):
    """Write data, leaving 64 KiB runs of zeros as holes (tiny on disk)."""
    with open(path, 'wb') as f:
        f.truncate(len(data))
        step = 64 * K
        for off in range(0, len(data), step):
            chunk = bytes(data[off:off + step])
            if chunk.count(0) != len(chunk):
                f.seek(off)
                f.write(chunk)


class Corpus:
    def __init__(self, root):
        self.root = root
        self.cases = []
        self.only = None

    def path(self, fmt, name):
        d = os.path.join(self.root, fmt)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, name)

    def add(self, fmt, name, desc, data=None, path=None, cmds=(),
            probe=True, only=None, key=None, cpu=None):
        """Record a case; write data (bytes) to its file unless path is
        given (files the builder wrote itself).  cpu: the seconds of CPU
        time its runs may take, for the few cases whose expected work is
        a whole named budget (run_hostile.CPU_TIMEOUT otherwise)."""
        if path is None:
            path = self.path(fmt, name + '.' + fmt)
            save(path, data)
        self.cases.append({'format': fmt, 'name': fmt + '/' + name,
                           'desc': desc, 'path': path,
                           'cmds': list(cmds), 'probe': probe,
                           'only': only, 'key': key, 'cpu': cpu})


def poke(d, off, fmt, val):
    """A copy of d with struct fmt (with its byte order) val at off."""
    d = bytearray(d)
    if isinstance(val, (bytes, bytearray)):
        if len(d) < off + len(val):
            d += bytes(off + len(val) - len(d))
        d[off:off + len(val)] = val
    else:
        need = off + struct.calcsize(fmt)
        if len(d) < need:
            d += bytes(need - len(d))
        struct.pack_into(fmt, d, off, val)
    return d


def pokes(d, *edits):
    for e in edits:
        d = poke(d, *e)
    return d


# ---------------------------------------------------------------- qcow2

def qcow2_cases(c):
    base = c.path('qcow2', 'base.qcow2')
    create('qcow2', base, 1 * M, '-o', 'cluster_size=4096')
    qio('qcow2', base, 'write -P 0x11 0 8k', 'write -c -P 0x22 64k 4k')
    run(QEMU_IMG, 'snapshot', '-c', 's1', base)
    run(QEMU_IMG, 'bitmap', '--add', base, 'b0')
    d = load(base)
    be = '>'
    l1_off = struct.unpack_from('>Q', d, 40)[0]
    rt_off = struct.unpack_from('>Q', d, 48)[0]
    snap_off = struct.unpack_from('>Q', d, 64)[0]
    l2_off = struct.unpack_from('>Q', d, l1_off)[0] & 0x00fffffffffffe00
    comp_e = l2_off + 16 * 8  # guest 64 KiB: the compressed cluster
    bm_ext = qcow2_ext(d, 0x23852875)  # the bitmaps extension
    bm_dir = struct.unpack_from('>Q', d, bm_ext + 16)[0]

    def add(name, desc, *edits, **kw):
        c.add('qcow2', name, desc, pokes(d, *edits), **kw)

    add('cluster-bits-8', 'cluster_bits 8 (below 512-byte clusters)',
        (20, '>I', 8))
    add('cluster-bits-22', 'cluster_bits 22 (above 2 MiB clusters)',
        (20, '>I', 22))
    add('cluster-bits-255', 'cluster_bits 255 (shift out of range)',
        (20, '>I', 255))
    add('header-length-huge', 'header_length 0xffffffff',
        (100, '>I', 0xffffffff))
    add('header-length-odd', 'header_length 105 (not a multiple of 8)',
        (100, '>I', 105))
    add('header-length-short', 'header_length 72 in a v3 image',
        (100, '>I', 72))
    add('version-4', 'version 4', (4, '>I', 4))
    add('incompat-unknown', 'unknown incompatible feature bit 40',
        (72, '>Q', 1 << 40))
    add('incompat-extl2-small', 'extended L2 bit with 4 KiB clusters',
        (72, '>Q', 1 << 4))
    add('incompat-datafile-none', 'external data file bit, no name',
        (72, '>Q', 1 << 2))
    add('refcount-order-7', 'refcount_order 7 (128-bit refcounts)',
        (96, '>I', 7))
    add('size-huge', 'virtual size 2^63-1 with a one-entry L1',
        (24, '>Q', (1 << 63) - 1))
    add('l1-size-huge', 'l1_size 0x7fffffff entries',
        (36, '>I', 0x7fffffff))
    add('l1-size-4m', 'l1_size 4 Mi entries (32 MiB), table past EOF',
        (36, '>I', 4 * M))
    add('l1-past-eof', 'active L1 offset 256 MiB, past EOF',
        (40, '>Q', 256 * M))
    add('l1-unaligned', 'active L1 offset not cluster-aligned',
        (40, '>Q', l1_off + 512))
    add('l1-on-header', 'active L1 table at offset 0 (the header)',
        (40, '>Q', 0))
    add('reftable-huge', 'refcount_table_clusters 0xffffffff',
        (56, '>I', 0xffffffff))
    add('reftable-past-eof', 'refcount table offset 1 TiB, past EOF',
        (48, '>Q', 1 << 40))
    add('reftable-zero', 'refcount_table_clusters 0', (56, '>I', 0))
    add('refblock-self', 'refcount table entry 0 points at the table',
        (rt_off, '>Q', rt_off))
    add('refblock-on-header', 'refcount block at offset 0 (the header)',
        (rt_off, '>Q', 0x200))
    add('refblock-past-eof', 'refcount block 1 TiB past EOF',
        (rt_off, '>Q', 1 << 40))
    # -r all grows the file to a block past its end (as QEMU): at 600 GiB
    # the counts of that file took 300 MiB (a mutate.py finding).
    add('refblock-far-repair', 'refcount block 600 GiB past EOF, repaired',
        (rt_off + 8, '>Q', 600 << 30), cmds=['check -r all'])
    add('snapshots-many', 'nb_snapshots 65536, table past EOF',
        (60, '>I', 65536))
    add('snapshots-count-huge', 'nb_snapshots 0xffffffff',
        (60, '>I', 0xffffffff))
    add('snapshots-past-eof', 'snapshot table offset past EOF',
        (64, '>Q', 1 << 40))
    add('snapshots-unaligned', 'snapshot table offset unaligned',
        (64, '>Q', snap_off + 8))
    add('snapshot-l1-huge', 'snapshot L1 size 0x10000000',
        (snap_off + 8, '>I', 0x10000000))
    add('snapshot-l1-past-eof', 'snapshot L1 offset past EOF',
        (snap_off, '>Q', 1 << 40))
    add('snapshot-extra-huge', 'snapshot extra_data_size 0xffffffff',
        (snap_off + 36, '>I', 0xffffffff))
    add('snapshot-name-huge', 'snapshot id and name sizes 0xffff',
        (snap_off + 12, '>H', 0xffff), (snap_off + 14, '>H', 0xffff))
    add('l2-past-eof', 'L1 entry: L2 table 1 TiB past EOF',
        (l1_off, '>Q', (1 << 63) | (1 << 40)))
    add('l2-on-reftable', 'L1 entry: L2 table is the refcount table',
        (l1_off, '>Q', (1 << 63) | rt_off))
    add('l1-reserved-bits', 'L1 entry with reserved bits 56-62',
        (l1_off, '>Q', (0x7f << 56) | l2_off))
    add('l2-reserved-bits', 'L2 entry with reserved bits 56-61',
        (l2_off, '>Q', struct.unpack_from('>Q', d, l2_off)[0] |
         (0x3f << 56)))
    add('l2-data-on-header', 'L2 entry: data cluster at offset 0',
        (l2_off, '>Q', (1 << 63) | 0))
    add('l2-data-unaligned', 'L2 entry: data offset not aligned',
        (l2_off, '>Q', (1 << 63) | 0x5200))
    add('l2-data-past-eof', 'L2 entry: data cluster past EOF (56 bits)',
        (l2_off, '>Q', (1 << 63) | 0x00fffffffffff000))
    # 4 KiB clusters: 62-(12-8) = 58 offset bits, 4 size bits.
    add('compressed-size-past-eof', 'compressed cluster of 16 sectors '
        'starting 100 bytes before EOF',
        (comp_e, '>Q', (1 << 62) | (15 << 58) | (len(d) - 100)))
    add('compressed-offset-past-eof', 'compressed offset 2^56-1',
        (comp_e, '>Q', (1 << 62) | ((1 << 56) - 1)))
    add('compressed-on-header', 'compressed data at offset 0',
        (comp_e, '>Q', (1 << 62) | (15 << 58)))
    add('bitmaps-count-huge', 'bitmaps extension: nb_bitmaps 0xffffffff',
        (bm_ext, '>I', 0xffffffff))
    add('bitmap-dir-huge', 'bitmap directory size 2^40',
        (bm_ext + 8, '>Q', 1 << 40))
    add('bitmap-dir-past-eof', 'bitmap directory offset past EOF',
        (bm_ext + 16, '>Q', 1 << 40))
    add('bitmap-table-huge', 'bitmap table size 0x7fffffff entries',
        (bm_dir + 8, '>I', 0x7fffffff))
    add('bitmap-table-past-eof', 'bitmap table offset past EOF',
        (bm_dir, '>Q', 1 << 40))
    add('bitmap-granularity-63', 'bitmap granularity bits 63',
        (bm_dir + 15, '>B', 63))
    add('backing-offset-past-cluster', 'backing_file_offset 1 MiB',
        (8, '>Q', M), (16, '>I', 8))
    add('backing-size-huge', 'backing_file_size 0xffffffff',
        (8, '>Q', 2048), (16, '>I', 0xffffffff))
    c.add('qcow2', 'truncated-header', 'file cut to 100 bytes', d[:100])
    add('l1-overlaps-l2', 'active L1 table is its own L2 table',
        (l1_off, '>Q', (1 << 63) | l1_off))
    # A valid image: its 2 MiB header cluster is all empty extensions of
    # an unknown type (QEMU keeps them).  Kept in an array grown by one
    # per extension, they took minutes of CPU under ASan.
    many = c.path('qcow2', 'header-exts-many.qcow2')
    create('qcow2', many, 1 * M, '-o', 'cluster_size=2M')
    m = load(many)
    p = 112
    while p + 16 <= 2 * M:
        struct.pack_into('>II', m, p, 0x7e57e575, 0)
        p += 8
    struct.pack_into('>II', m, p, 0, 0)
    c.add('qcow2', 'header-exts-many', '262,128 empty unknown header '
          'extensions in a 2 MiB header cluster', m)
    # 64 KiB clusters: the last of the refcount table's 8192 entries names
    # the first block again, so refcounts reach cluster 2^28 (16 TiB of
    # file).  A change of refcount width held 8 bytes per cluster up to
    # there: 2 GiB (a mutate.py finding).
    far = c.path('qcow2', 'refcounts-far.qcow2')
    create('qcow2', far, 1 * M)
    qio('qcow2', far, 'write -P 0x11 0 64k')
    f = load(far)
    ft = struct.unpack_from('>Q', f, 48)[0]
    struct.pack_into('>Q', f, ft + 8191 * 8, struct.unpack_from('>Q', f, ft)[0])
    c.add('qcow2', 'refcounts-far', 'refcount table entry 8191 names '
          'block 0 again (refcounts up to 16 TiB)', f)
    qcow2_backing_cases(c)


def set_backing(d, name):
    """The backing name of a qcow2 image made with -b (name in cluster 0)."""
    bfo = struct.unpack_from('>Q', d, 8)[0]
    d = bytearray(d)
    d[bfo:512] = bytes(512 - bfo)
    if name is None:
        struct.pack_into('>QI', d, 8, 0, 0)
        return d
    raw = name.encode()
    assert bfo + len(raw) <= 512, name
    d[bfo:bfo + len(raw)] = raw
    struct.pack_into('>I', d, 16, len(raw))
    return d


def qcow2_backing_cases(c):
    tmpl = c.path('qcow2', 'backing-template.qcow2')
    create('qcow2', tmpl, 1 * M, '-o', 'cluster_size=512', '-u',
           '-b', 'x' * 40, '-F', 'qcow2')
    t = load(tmpl)
    chain = ['info --backing-chain', 'convert-raw']
    names = [
        ('backing-nbd', 'backing file nbd://127.0.0.1:1/x',
         'nbd://127.0.0.1:1/x'),
        ('backing-nbd-colon', 'backing file nbd:127.0.0.1:1',
         'nbd:127.0.0.1:1'),
        ('backing-http', 'backing file http://127.0.0.1:1/base.qcow2',
         'http://127.0.0.1:1/base.qcow2'),
        ('backing-file-opts', 'backing file "file:base.qcow2,locking=off"',
         'file:base.qcow2,locking=off'),
        ('backing-json', 'backing file json:{"driver":"file",...}',
         'json:{"driver":"file","filename":"/etc/passwd"}'),
        ('backing-json-null', 'backing file json:{"driver":"null-co"}',
         'json:{"driver":"null-co","size":1048576}'),
        ('backing-etc-passwd', 'backing file /etc/passwd (probed raw)',
         '/etc/passwd'),
        ('backing-missing', 'backing file that does not exist',
         'no-such-file.qcow2'),
    ]
    for n, desc, name in names:
        c.add('qcow2', n, desc, set_backing(t, name), cmds=chain)
    # Loops: a -> a, a -> b -> a.
    d = c.path('qcow2', 'loop')
    os.makedirs(d, exist_ok=True)
    save(os.path.join(d, 'self.qcow2'), set_backing(t, 'self.qcow2'))
    c.add('qcow2', 'backing-loop-self', 'backing file is itself',
          path=os.path.join(d, 'self.qcow2'), cmds=chain)
    save(os.path.join(d, 'a.qcow2'), set_backing(t, 'b.qcow2'))
    save(os.path.join(d, 'b.qcow2'), set_backing(t, 'a.qcow2'))
    c.add('qcow2', 'backing-loop-ab', 'backing chain a -> b -> a',
          path=os.path.join(d, 'a.qcow2'), cmds=chain)
    # The same file under another name: a -> ./b-link -> a.
    save(os.path.join(d, 'c.qcow2'), set_backing(t, 'c-link.qcow2'))
    os.symlink('c.qcow2', os.path.join(d, 'c-link.qcow2'))
    c.add('qcow2', 'backing-loop-symlink', 'backing file is a symlink '
          'to the image itself', path=os.path.join(d, 'c.qcow2'),
          cmds=chain)
    # A chain 1,000 images deep (each 2.5 KiB).
    d = c.path('qcow2', 'deep')
    os.makedirs(d, exist_ok=True)
    n = 1000
    for i in range(n):
        name = None if i == n - 1 else 'd%04d.qcow2' % (i + 1)
        save(os.path.join(d, 'd%04d.qcow2' % i), set_backing(t, name))
    c.add('qcow2', 'backing-chain-1000', 'backing chain 1,000 images deep',
          path=os.path.join(d, 'd0000.qcow2'), cmds=chain)
    # A data file name that is a protocol (CVE-2024-4467).
    df = c.path('qcow2', 'datafile-template.qcow2')
    create('qcow2', df, 1 * M, '-o',
           'cluster_size=4096,data_file=' + 'y' * 40)
    dd = load(df)
    p = 112
    while True:
        ty, ln = struct.unpack_from('>II', dd, p)
        if ty == 0x44415441:
            break
        p += 8 + ((ln + 7) & ~7)
    for n, desc, name in (
            ('datafile-nbd', 'data file nbd:127.0.0.1:1', 'nbd:127.0.0.1:1'),
            ('datafile-json', 'data file json:{"driver":"null-co"}',
             'json:{"driver":"null-co"}'),
            ('datafile-etc', 'data file /etc/passwd', '/etc/passwd')):
        x = bytearray(dd)
        raw = name.encode().ljust(40, b'\0')[:40]
        x[p + 8:p + 48] = raw
        struct.pack_into('>I', x, p + 4, len(name))
        c.add('qcow2', n, desc, x, cmds=['convert-raw'])


# ----------------------------------------------------------------- qcow

def qcow_cases(c):
    base = c.path('qcow', 'base.qcow')
    create('qcow', base, 1 * M)
    qio('qcow', base, 'write -P 0x11 0 8k', 'write -c -P 0x22 64k 4k')
    d = load(base)
    l1_off = struct.unpack_from('>Q', d, 40)[0]
    l2_off = struct.unpack_from('>Q', d, l1_off)[0]
    cb = d[32]
    comp = l2_off + 8 * ((64 * K) >> cb)

    def add(name, desc, *edits, **kw):
        c.add('qcow', name, desc, pokes(d, *edits), **kw)

    add('cluster-bits-8', 'cluster_bits 8', (32, 'B', 8))
    add('cluster-bits-17', 'cluster_bits 17', (32, 'B', 17))
    add('cluster-bits-255', 'cluster_bits 255', (32, 'B', 255))
    add('l2-bits-5', 'l2_bits 5', (33, 'B', 5))
    add('l2-bits-14', 'l2_bits 14 (CVE-2014-0222)', (33, 'B', 14))
    add('l2-bits-255', 'l2_bits 255', (33, 'B', 255))
    add('size-huge', 'size 2^63-1 (L1 size overflows)',
        (24, '>Q', (1 << 63) - 1))
    add('size-zero', 'size 0', (24, '>Q', 0))
    add('size-64t', 'size 64 TiB: a huge L1 over a tiny file',
        (24, '>Q', 64 << 40))
    add('l1-past-eof', 'L1 offset past EOF', (40, '>Q', 1 << 40))
    add('l1-unaligned', 'L1 offset odd', (40, '>Q', l1_off + 3))
    add('l1-offset-wraps', 'L1 offset 2^64-8', (40, '>Q', (1 << 64) - 8))
    add('l2-past-eof', 'L1 entry past EOF', (l1_off, '>Q', 1 << 40))
    add('l2-on-header', 'L1 entry: L2 table at offset 0', (l1_off, '>Q', 0x8))
    add('l2-wraps', 'L1 entry 2^64-512', (l1_off, '>Q', (1 << 64) - 512))
    add('data-past-eof', 'L2 entry past EOF', (l2_off, '>Q', 1 << 40))
    add('compressed-size-past-eof', 'compressed cluster running past EOF',
        (comp, '>Q', (1 << 63) | ((4095) << (63 - cb)) | (len(d) - 10)))
    add('compressed-offset-huge', 'compressed offset near 2^(63-cb)',
        (comp, '>Q', (1 << 63) | ((1 << (63 - cb)) - 16)))
    add('crypt-2', 'crypt_method 2', (36, '>I', 2))
    add('crypt-aes', 'crypt_method 1 (AES) with no key', (36, '>I', 1))
    add('backing-size-huge', 'backing_file_size 0xffffffff',
        (8, '>Q', 48), (16, '>I', 0xffffffff))
    add('backing-past-eof', 'backing name past EOF',
        (8, '>Q', 1 << 40), (16, '>I', 16))
    c.add('qcow', 'truncated', 'file cut to 40 bytes', d[:40])
    # Backing names.
    tmpl = c.path('qcow', 'backing-template.qcow')
    create('qcow', tmpl, 1 * M, '-u', '-b', 'x' * 64, '-F', 'qcow')
    t = load(tmpl)
    for n, desc, name in (
            ('backing-nbd', 'backing file nbd:127.0.0.1:1',
             'nbd:127.0.0.1:1'),
            ('backing-json', 'backing file json:{"driver":"null-co"}',
             'json:{"driver":"null-co"}'),
            ('backing-self', 'backing file is itself',
             'backing-self.qcow')):
        x = bytearray(t)
        x[48:48 + 64] = name.encode().ljust(64, b'\0')
        struct.pack_into('>I', x, 16, len(name))
        c.add('qcow', n, desc, x, cmds=['info --backing-chain',
                                        'convert-raw'])


# ------------------------------------------------------------------ qed

def qed_cases(c):
    base = c.path('qed', 'base.qed')
    create('qed', base, 1 * M, '-o', 'cluster_size=4096')
    qio('qed', base, 'write -P 0x11 0 8k')
    d = load(base)
    l1_off = struct.unpack_from('<Q', d, 40)[0]
    l2_off = struct.unpack_from('<Q', d, l1_off)[0]

    def add(name, desc, *edits, **kw):
        c.add('qed', name, desc, pokes(d, *edits), **kw)

    add('cluster-size-0', 'cluster_size 0', (4, '<I', 0))
    add('cluster-size-odd', 'cluster_size 4097', (4, '<I', 4097))
    add('cluster-size-2g', 'cluster_size 2 GiB', (4, '<I', 1 << 31))
    add('table-size-0', 'table_size 0', (8, '<I', 0))
    add('table-size-17', 'table_size 17', (8, '<I', 17))
    add('table-size-huge', 'table_size 0xffffffff', (8, '<I', 0xffffffff))
    add('header-size-0', 'header_size 0 clusters', (12, '<I', 0))
    add('header-size-huge', 'header_size 0xffffffff clusters',
        (12, '<I', 0xffffffff))
    add('features-unknown', 'unknown feature bit 20', (16, '<Q', 1 << 20))
    add('need-check', 'need-check feature set', (16, '<Q', 2))
    add('l1-past-eof', 'L1 offset past EOF', (40, '<Q', 1 << 40))
    add('l1-unaligned', 'L1 offset unaligned', (40, '<Q', l1_off + 8))
    add('l1-on-header', 'L1 table at offset 0', (40, '<Q', 0))
    add('size-huge', 'image size 2^63', (48, '<Q', 1 << 63))
    add('size-unaligned', 'image size 1 MiB + 1', (48, '<Q', M + 1))
    add('l2-past-eof', 'L1 entry past EOF', (l1_off, '<Q', 1 << 40))
    add('l2-is-l1', 'L1 entry points at the L1 table', (l1_off, '<Q', l1_off))
    add('l2-unaligned', 'L1 entry unaligned', (l1_off, '<Q', l2_off + 1))
    add('data-past-eof', 'L2 entry past EOF', (l2_off, '<Q', 1 << 40))
    add('data-on-header', 'L2 entry: data at offset 0 (header)',
        (l2_off, '<Q', 4096 * 0 + 0))
    add('data-wraps', 'L2 entry 2^64-4096', (l2_off, '<Q', (1 << 64) - 4096))
    add('backing-past-eof', 'backing name offset past EOF',
        (16, '<Q', 1), (56, '<I', 0x7ffff000), (60, '<I', 100))
    add('backing-size-huge', 'backing name size 0xffffffff',
        (16, '<Q', 1), (56, '<I', 64), (60, '<I', 0xffffffff))
    c.add('qed', 'truncated', 'file cut to 60 bytes', d[:60])
    tmpl = c.path('qed', 'backing-template.qed')
    create('qed', tmpl, 1 * M, '-o', 'cluster_size=4096',
           '-u', '-b', 'x' * 64, '-F', 'qed')
    t = load(tmpl)
    bo, bs = struct.unpack_from('<II', t, 56)
    for n, desc, name in (
            ('backing-nbd', 'backing file nbd:127.0.0.1:1',
             'nbd:127.0.0.1:1'),
            ('backing-json', 'backing file json:{"driver":"null-co"}',
             'json:{"driver":"null-co"}'),
            ('backing-self', 'backing file is itself', 'backing-self.qed')):
        x = bytearray(t)
        x[bo:bo + bs] = name.encode().ljust(bs, b'\0')
        struct.pack_into('<I', x, 60, len(name))
        c.add('qed', n, desc, x, cmds=['info --backing-chain',
                                       'convert-raw'])


# ------------------------------------------------------------------ vdi

def vdi_cases(c):
    base = c.path('vdi', 'base.vdi')
    create('vdi', base, 2 * M)
    qio('vdi', base, 'write -P 0x11 0 4k')
    d = load(base)
    bmap = struct.unpack_from('<I', d, 0x154)[0]

    def add(name, desc, *edits, **kw):
        c.add('vdi', name, desc, pokes(d, *edits), **kw)

    add('version-2', 'version 2.0', (0x44, '<I', 0x00020000))
    add('header-size-0', 'header size 0', (0x48, '<I', 0))
    add('header-size-huge', 'header size 0xffffffff', (0x48, '<I', 0xffffffff))
    add('image-type-7', 'image type 7', (0x4c, '<I', 7))
    add('bmap-past-eof', 'block map offset past EOF', (0x154, '<I', 1 << 31))
    add('bmap-unaligned', 'block map offset 513', (0x154, '<I', 513))
    add('bmap-at-0', 'block map at offset 0 (the header)', (0x154, '<I', 0))
    add('data-at-0', 'data offset 0 (blocks over the header)',
        (0x158, '<I', 0))
    add('data-huge', 'data offset 0xfffffe00', (0x158, '<I', 0xfffffe00))
    add('sector-size-4096', 'sector size 4096', (0x168, '<I', 4096))
    add('disk-size-huge', 'disk size 2^62', (0x170, '<Q', 1 << 62))
    add('disk-size-past-blocks', 'disk size 1 TiB, two blocks',
        (0x170, '<Q', 1 << 40))
    add('block-size-0', 'block size 0', (0x178, '<I', 0))
    add('block-size-odd', 'block size 3', (0x178, '<I', 3))
    add('block-size-2g', 'block size 2 GiB', (0x178, '<I', 1 << 31))
    add('block-extra-huge', 'block extra 0xffffffff', (0x17c, '<I', 0xffffffff))
    add('blocks-huge', 'blocks in image 0xffffffff, map past EOF',
        (0x180, '<I', 0xffffffff))
    add('blocks-2g-entries', 'blocks in image 0x1fffff80 (largest), '
        'disk size to match', (0x180, '<I', 0x1fffff80),
        (0x170, '<Q', 0x1fffff80 << 20))
    add('blocks-allocated-huge', 'blocks allocated > blocks in image',
        (0x184, '<I', 0xffffffff))
    add('bmap-entry-past-eof', 'block map entry 0x7ffffff0',
        (bmap, '<I', 0x7ffffff0))
    add('bmap-entry-dup', 'block map entries 0 and 1 both block 0',
        (bmap + 4, '<I', 0))
    add('bmap-entry-odd', 'block map entry 0xfffffffd', (bmap, '<I', 0xfffffffd))
    add('parent-uuid', 'parent UUID set (differencing image)',
        (0x1b8, '16s', b'\x01' * 16))
    c.add('vdi', 'truncated', 'file cut to 0x180 bytes', d[:0x180])


# ------------------------------------------------------------------ vpc

def vpc_checksum(b, ck):
    b = bytearray(b)
    b[ck:ck + 4] = bytes(4)
    return (~sum(b)) & 0xffffffff


def vpc_fix(d):
    d = bytearray(d)
    for off in (0, len(d) - 512):
        if d[off:off + 8] == b'conectix':
            struct.pack_into('>I', d, off + 64,
                             vpc_checksum(d[off:off + 512], 64))
    return d


def vpc_cases(c):
    base = c.path('vpc', 'base.vhd')
    create('vpc', base, 4 * M)
    qio('vpc', base, 'write -P 0x11 0 4k')
    d = load(base)
    end = len(d) - 512
    dyn = struct.unpack_from('>Q', d, 16)[0]
    bat = struct.unpack_from('>Q', d, dyn + 16)[0]

    def footer(name, desc, off, fmt, val, **kw):
        x = poke(poke(d, off, fmt, val), end + off, fmt, val)
        c.add('vpc', name, desc, vpc_fix(x), **kw)

    def dynh(name, desc, off, fmt, val):
        x = poke(d, dyn + off, fmt, val)
        x[dyn + 36:dyn + 40] = struct.pack(
            '>I', vpc_checksum(x[dyn:dyn + 1024], 36))
        c.add('vpc', name, desc, x)

    footer('data-offset-past-eof', 'dynamic header offset past EOF',
           16, '>Q', 1 << 40)
    footer('data-offset-wraps', 'dynamic header offset 2^64-512',
           16, '>Q', (1 << 64) - 512)
    footer('size-huge', 'current size 2^63', 48, '>Q', 1 << 63)
    footer('geometry-zero', 'CHS geometry 0/0/0', 56, '>I', 0)
    footer('disk-type-diff', 'disk type 4 (differencing)', 60, '>I', 4)
    footer('disk-type-7', 'disk type 7', 60, '>I', 7)
    c.add('vpc', 'bad-checksum', 'footer checksums wrong',
          poke(poke(d, 64, '>I', 1), end + 64, '>I', 1))
    dynh('bat-past-eof', 'BAT offset past EOF', 16, '>Q', 1 << 40)
    dynh('bat-unaligned', 'BAT offset 1537', 16, '>Q', 1537)
    dynh('bat-at-0', 'BAT at offset 0 (the footer copy)', 16, '>Q', 0)
    dynh('max-entries-huge', 'max table entries 0xffffffff',
         28, '>I', 0xffffffff)
    dynh('max-entries-1g', 'max table entries 0x1fffffff (BAT 2 GiB)',
         28, '>I', 0x1fffffff)
    dynh('max-entries-0', 'max table entries 0', 28, '>I', 0)
    dynh('block-size-0', 'block size 0', 32, '>I', 0)
    dynh('block-size-odd', 'block size 3', 32, '>I', 3)
    dynh('block-size-2g', 'block size 2^31', 32, '>I', 1 << 31)
    dynh('block-size-4g-1', 'block size 0xffffffff', 32, '>I', 0xffffffff)
    dynh('bad-cookie', 'dynamic header cookie wrong', 0, '8s', b'xxsparse')
    c.add('vpc', 'bat-entry-past-eof', 'BAT entry 0x7ffffff0 sectors',
          poke(d, bat, '>I', 0x7ffffff0))
    c.add('vpc', 'bat-entries-same', 'BAT entries 0 and 1 the same block',
          poke(d, bat + 4, '>I', struct.unpack_from('>I', d, bat)[0]))
    c.add('vpc', 'bat-entry-header', 'BAT entry 0 at sector 0',
          poke(d, bat, '>I', 0))
    c.add('vpc', 'bat-entry-wraps', 'BAT entry 0xfffffffe',
          poke(d, bat, '>I', 0xfffffffe))
    # A fixed VHD: only the footer, at the end.
    fixed = c.path('vpc', 'fixed-base.vhd')
    create('vpc', fixed, 1 * M, '-o', 'subformat=fixed')
    f = load(fixed)
    fe = len(f) - 512
    c.add('vpc', 'fixed-size-huge', 'fixed VHD with current size 2^62',
          vpc_fix(poke(f, fe + 48, '>Q', 1 << 62)))
    c.add('vpc', 'fixed-data-offset', 'fixed VHD with a data offset',
          vpc_fix(poke(f, fe + 16, '>Q', 512)))
    c.add('vpc', 'truncated', 'file cut to 700 bytes', d[:700])


# ----------------------------------------------------------------- vhdx

def vhdx_tool():
    """The helpers of tests/compat/vhdx_tool.py (crc32c, log entries)."""
    src = open(os.path.join(COMPAT, 'vhdx_tool.py')).read()
    src = src.rsplit('\nmain()', 1)[0]
    ns = {'__name__': 'vhdx_tool'}
    exec(compile(src, 'vhdx_tool.py', 'exec'), ns)
    return ns


BAT_GUID = bytes.fromhex('6677c22d23f600429d64115e9bfd4a08')
META_GUID = bytes.fromhex('06a27c8b90479a4bb8fe575f050f886e')
FILE_PARAMS = bytes.fromhex('3767a1ca36fa434db3b633f0aa44e76b')
DISK_SIZE = bytes.fromhex('2442a52f1bcd7648b2115dbed83bf4b8')
LOGICAL_SS = bytes.fromhex('1dbf41816fa90947ba47f233a8faab5f')


def vhdx_cases(c):
    vt = vhdx_tool()
    base = c.path('vhdx', 'base.vhdx')
    create('vhdx', base, 8 * M, '-o', 'block_size=1M')
    qio('vhdx', base, 'write -P 0x11 0 4k')
    d = load(base)
    R = 0x30000

    def hdr_fix(x):
        for h in (0x10000, 0x20000):
            vt['fix'](x, h, 4096)
        return x

    def reg_fix(x):
        for r in (0x30000, 0x40000):
            vt['fix'](x, r, 65536)
        return x

    def region(x, guid):
        n = struct.unpack_from('<I', x, R + 8)[0]
        for i in range(min(n, 2047)):
            e = R + 16 + 32 * i
            if x[e:e + 16] == guid:
                return e
        raise KeyError(guid)

    def both_headers(off, fmt, val):
        x = bytearray(d)
        for h in (0x10000, 0x20000):
            struct.pack_into(fmt, x, h + off, val)
        return hdr_fix(x)

    def both_regions(edit):
        x = bytearray(d)
        for r in (0x30000, 0x40000):
            edit(x, r)
        return reg_fix(x)

    bat_e = region(d, BAT_GUID)
    meta_e = region(d, META_GUID)
    bat = struct.unpack_from('<Q', d, bat_e + 16)[0]
    meta = struct.unpack_from('<Q', d, meta_e + 16)[0]

    def meta_item(guid):
        for i in range(struct.unpack_from('<H', d, meta + 10)[0]):
            e = meta + 32 + 32 * i
            if d[e:e + 16] == guid:
                return meta + struct.unpack_from('<I', d, e + 16)[0], e
        raise KeyError(guid)

    def add(name, desc, x, **kw):
        c.add('vhdx', name, desc, x, **kw)

    add('headers-bad-crc', 'both headers with a wrong checksum',
        pokes(d, (0x10004, '<I', 1), (0x20004, '<I', 1)))
    add('header-version-2', 'header version 2', both_headers(66, '<H', 2))
    add('log-version-1', 'log version 1', both_headers(64, '<H', 1))
    add('log-length-huge', 'log length 0xfff00000',
        both_headers(68, '<I', 0xfff00000))
    add('log-offset-past-eof', 'log offset past EOF',
        both_headers(72, '<Q', 1 << 40))
    add('log-offset-unaligned', 'log offset 1 MiB + 512',
        both_headers(72, '<Q', M + 512))
    add('log-on-header', 'log at offset 0 (the headers)',
        both_headers(72, '<Q', 0))
    add('regions-bad-crc', 'both region tables with a wrong checksum',
        pokes(d, (0x30004, '<I', 1), (0x40004, '<I', 1)))

    def set_count(n):
        return lambda x, r: struct.pack_into('<I', x, r + 8, n)
    add('regions-count-huge', 'region table entry count 0xffffffff',
        both_regions(set_count(0xffffffff)))
    add('regions-count-2048', 'region table entry count 2048 (too many)',
        both_regions(set_count(2048)))

    def reg_field(e_off, field, fmt, val):
        def f(x, r):
            struct.pack_into(fmt, x, r + (e_off - R) + field, val)
        return f
    add('bat-region-past-eof', 'BAT region offset past EOF',
        both_regions(reg_field(bat_e, 16, '<Q', 1 << 40)))
    add('bat-region-on-header', 'BAT region at offset 0',
        both_regions(reg_field(bat_e, 16, '<Q', 0)))
    add('bat-region-huge', 'BAT region length 0xfff00000',
        both_regions(reg_field(bat_e, 24, '<I', 0xfff00000)))
    add('bat-region-overlaps-meta', 'BAT region is the metadata region',
        both_regions(reg_field(bat_e, 16, '<Q', meta)))
    add('meta-region-past-eof', 'metadata region offset past EOF',
        both_regions(reg_field(meta_e, 16, '<Q', 1 << 40)))
    add('meta-count-huge', 'metadata table entry count 0xffff',
        poke(d, meta + 10, '<H', 0xffff))
    fp, fpe = meta_item(FILE_PARAMS)
    add('block-size-0', 'block size 0', poke(d, fp, '<I', 0))
    add('block-size-odd', 'block size 3 MiB', poke(d, fp, '<I', 3 * M))
    add('block-size-huge', 'block size 2 GiB', poke(d, fp, '<I', 1 << 31))
    add('has-parent', 'has-parent flag (differencing)',
        poke(d, fp + 4, '<I', 2))
    ds, _ = meta_item(DISK_SIZE)
    add('disk-size-huge', 'virtual disk size 2^63', poke(d, ds, '<Q', 1 << 63))
    add('disk-size-64t', 'virtual disk size 64 TiB (BAT past EOF)',
        poke(d, ds, '<Q', 64 << 40))
    ls, _ = meta_item(LOGICAL_SS)
    add('sector-size-1000', 'logical sector size 1000',
        poke(d, ls, '<I', 1000))
    add('meta-item-past-region', 'file parameters item offset 2 GiB',
        poke(d, fpe + 16, '<I', 1 << 31))
    add('meta-item-len-huge', 'file parameters item length 0xffffffff',
        poke(d, fpe + 20, '<I', 0xffffffff))
    b0 = struct.unpack_from('<Q', d, bat)[0]
    add('bat-entry-past-eof', 'BAT entry 0: block 1 TiB past EOF',
        poke(d, bat, '<Q', (1 << 40) | 6))
    add('bat-entry-on-header', 'BAT entry 0: block at offset 0',
        poke(d, bat, '<Q', 6))
    add('bat-entry-state-5', 'BAT entry 0 with state 5',
        poke(d, bat, '<Q', (b0 & ~7) | 5))
    add('bat-entry-wraps', 'BAT entry 0 offset field all ones',
        poke(d, bat, '<Q', (0xfffffffffff << 20) | 6))
    # Logs.
    for spec, desc in (('chain', 'a valid log that needs replay'),
                       ('badcrc', 'a log whose newest entry has a bad crc'),
                       ('short', 'a log entry flushing past EOF')):
        p = c.path('vhdx', 'log-' + spec + '.vhdx')
        save(p, d)
        vt['mklog'](p, spec)
        c.add('vhdx', 'log-' + spec, desc, path=p,
              cmds=['check -r all'])
    # A log that replays forever: entries whose tails point at each other.
    h = 0x20000 if struct.unpack_from('<Q', d, 0x20008)[0] > \
        struct.unpack_from('<Q', d, 0x10008)[0] else 0x10000
    log_len, log_off = struct.unpack_from('<IQ', d, h + 68)
    guid = bytes(range(0x10, 0x20))
    size = len(d)

    def with_log(entries, name, desc, **kw):
        x = bytearray(d)
        log = bytearray(log_len)
        for at, e in entries:
            log[at:at + len(e)] = e
        x[log_off:log_off + log_len] = log
        x[h + 48:h + 64] = guid
        vt['fix'](x, h, 4096)
        c.add('vhdx', name, desc, x, cmds=['check -r all'], **kw)

    # Two entries, each the other's tail, sequence numbers going on.
    e1 = vt['entry'](30, 4096, guid, [('zero', size, 4096)], size, size)
    e2 = vt['entry'](31, 0, guid, [('zero', size, 4096)], size, size)
    with_log([(0, e1), (4096, e2)], 'log-loop',
             'log entries whose tails point at each other')
    # One entry that is its own tail.
    e = vt['entry'](40, 0, guid, [('zero', size, 4096)], size, size)
    with_log([(0, e)], 'log-self-tail', 'log entry that is its own tail')
    # A huge entry: entry length 0xfffff000, descriptor count 0xffffffff.
    big = bytearray(vt['entry'](50, 0, guid, [('zero', size, 4096)],
                                size, size))
    struct.pack_into('<I', big, 8, 0xfffff000)
    with_log([(0, big)], 'log-entry-huge', 'log entry length 0xfffff000')
    big = bytearray(vt['entry'](51, 0, guid, [('zero', size, 4096)],
                                size, size))
    struct.pack_into('<I', big, 24, 0xffffffff)
    vt['fix'](big, 0, len(big))
    with_log([(0, big)], 'log-descriptors-huge',
             'log entry descriptor count 0xffffffff (crc fixed)')
    # Zero descriptor of length 2^63 at offset 0.
    z = vt['entry'](60, 0, guid, [('zero', 0, 1 << 62)], size, size)
    with_log([(0, z)], 'log-zero-huge', 'log zero descriptor of 2^62 bytes '
             'over the headers')
    # A data descriptor writing over the headers.
    w = vt['entry'](61, 0, guid, [('data', 0x10000, bytes(4096))],
                    size, size)
    with_log([(0, w)], 'log-write-header', 'log entry that overwrites '
             'header 1 with zeros')
    c.add('vhdx', 'truncated', 'file cut to 70 KiB', d[:70 * K])


# ----------------------------------------------------------------- vmdk

def vmdk_cases(c):
    base = c.path('vmdk', 'base.vmdk')
    create('vmdk', base, 1 * M)
    qio('vmdk', base, 'write -P 0x11 0 8k')
    d = load(base)
    gd = struct.unpack_from('<Q', d, 56)[0] * 512
    rgd = struct.unpack_from('<Q', d, 48)[0] * 512
    gt = struct.unpack_from('<I', d, gd)[0] * 512
    desc_off = struct.unpack_from('<Q', d, 28)[0] * 512

    def add(name, desc, *edits, **kw):
        c.add('vmdk', name, desc, pokes(d, *edits), **kw)

    add('version-4', 'version 4', (4, '<I', 4))
    add('granularity-0', 'grain size 0', (20, '<Q', 0))
    add('granularity-odd', 'grain size 3 sectors', (20, '<Q', 3))
    add('granularity-huge', 'grain size 2^40 sectors', (20, '<Q', 1 << 40))
    add('capacity-huge', 'capacity 2^62 sectors', (12, '<Q', 1 << 62))
    add('capacity-8g', 'capacity 8 GiB: the grain directory runs over '
        'tables and data', (12, '<Q', (8 << 30) // 512))
    add('gtes-0', 'grain table entries 0', (44, '<I', 0))
    add('gtes-huge', 'grain table entries 0xffffffff', (44, '<I', 0xffffffff))
    add('gd-past-eof', 'grain directory past EOF', (56, '<Q', 1 << 40),
        (48, '<Q', 1 << 40))
    add('gd-wraps', 'grain directory offset 2^64-2 sectors',
        (56, '<Q', (1 << 64) - 2), (48, '<Q', (1 << 64) - 2))
    add('gd-on-header', 'grain directory at sector 0', (56, '<Q', 0),
        (48, '<Q', 0))
    add('gt-past-eof', 'grain table past EOF', (gd, '<I', 0x7ffffff0),
        (rgd, '<I', 0x7ffffff0))
    add('gt-on-header', 'grain table at sector 0', (gd, '<I', 0),
        (rgd, '<I', 0))
    add('grain-past-eof', 'grain past EOF', (gt, '<I', 0x7ffffff0))
    add('grain-on-header', 'grain at sector 1 (the descriptor)',
        (gt, '<I', 1))
    add('desc-size-huge', 'descriptor size 2^40 sectors',
        (36, '<Q', 1 << 40))
    add('desc-past-eof', 'descriptor offset past EOF', (28, '<Q', 1 << 40))
    add('compress-7', 'compression algorithm 7 with the compressed flag',
        (8, '<I', 0x10003), (77, '<H', 7))
    add('flags-unknown', 'all flag bits set', (8, '<I', 0xffffffff))
    # Embedded descriptor: parentCID and hint of a protocol.
    text = d[desc_off:desc_off + 10 * 512].split(b'\0')[0].decode()
    for n, desc, repl in (
            ('parent-hint-nbd', 'parentFileNameHint nbd:127.0.0.1:1',
             'parentCID=ffffffff\nparentFileNameHint="nbd:127.0.0.1:1"\n'),
            ('parent-hint-json', 'parentFileNameHint json:{...}',
             'parentCID=ffffffff\nparentFileNameHint='
             '"json:{\\"driver\\":\\"null-co\\"}"\n'),
            ('parent-hint-self', 'parentFileNameHint names itself',
             'parentCID=ffffffff\nparentFileNameHint="parent-hint-self'
             '.vmdk"\n')):
        t2 = text.replace('parentCID=ffffffff\n', repl.replace(
            'parentCID=ffffffff', 'parentCID=12345678'))
        t2 = t2.replace('createType="monolithicSparse"',
                        'createType="monolithicSparse"')
        x = bytearray(d)
        x[desc_off:desc_off + 10 * 512] = t2.encode().ljust(10 * 512, b'\0')
        c.add('vmdk', n, desc, x, cmds=['info --backing-chain',
                                        'convert-raw'])
    c.add('vmdk', 'truncated', 'file cut to 60 bytes', d[:60])
    vmdk_stream_cases(c)
    vmdk_desc_cases(c)
    vmdk_sesparse_cases(c)


def vmdk_stream_cases(c):
    raw = c.path('vmdk', 'stream-src.raw')
    save(raw, bytes([0x33]) * 8 * K + bytes(1 * M - 8 * K))
    base = c.path('vmdk', 'stream-base.vmdk')
    run(QEMU_IMG, 'convert', '-f', 'raw', '-O', 'vmdk', '-o',
        'subformat=streamOptimized', raw, base)
    d = load(base)
    gd = struct.unpack_from('<Q', d, 56)[0]
    # Find the grain marker: the first grain after the header/descriptor.
    grain = struct.unpack_from('<Q', d, 64)[0] * 512
    while grain < len(d) and struct.unpack_from('<Q', d, grain)[0] == 0 \
            and struct.unpack_from('<I', d, grain + 8)[0] == 0:
        grain += 512
    c.add('vmdk', 'stream-grain-size-huge', 'stream grain marker size '
          '0xffffffff', poke(d, grain + 8, '<I', 0xffffffff))
    c.add('vmdk', 'stream-grain-lba-huge', 'stream grain marker LBA 2^62',
          poke(d, grain, '<Q', 1 << 62))
    c.add('vmdk', 'stream-grain-bad-zlib', 'stream grain with broken '
          'deflate data', poke(d, grain + 12, '8s', b'\xff' * 8))
    c.add('vmdk', 'stream-gd-at-end-no-footer', 'gd_offset GD_AT_END, '
          'footer cut off', poke(d[:len(d) - 1024], 56, '<Q', (1 << 64) - 1))
    c.add('vmdk', 'stream-compress-2', 'stream compression algorithm 2',
          poke(d, 77, '<H', 2))
    c.add('vmdk', 'stream-gd-past-eof', 'stream grain directory past EOF',
          poke(d, 56, '<Q', 1 << 40))
    # The footer (second-to-last sector before EOS): its gd_offset.
    foot = len(d) - 1024 + 512 - 512
    if d[foot + 512 - 512:foot + 4] == b'KDMV':
        c.add('vmdk', 'stream-footer-gd-huge', 'stream footer gd offset '
              '2^60', poke(poke(d, 56, '<Q', (1 << 64) - 1),
                           foot + 56, '<Q', 1 << 60))


def vmdk_desc_cases(c):
    d = c.path('vmdk', 'desc')
    os.makedirs(d, exist_ok=True)
    flat = os.path.join(d, 'flat.img')
    save(flat, bytes([0x44]) * 4096 + bytes(M - 4096))
    head = ('# Disk DescriptorFile\nversion=1\nCID=12345678\n'
            'parentCID=ffffffff\ncreateType="%s"\n\n'
            '# Extent description\n')
    tail = ('\n# The Disk Data Base\n#DDB\n\n'
            'ddb.virtualHWVersion = "4"\nddb.geometry.cylinders = "2"\n'
            'ddb.geometry.heads = "16"\nddb.geometry.sectors = "63"\n'
            'ddb.adapterType = "ide"\n')

    def desc(name, what, extents, ctype='monolithicFlat', extra='',
             only=None):
        text = head % ctype + extents + tail + extra
        p = os.path.join(d, name + '.vmdk')
        with open(p, 'w') as f:
            f.write(text)
        c.add('vmdk', 'desc-' + name, what, path=p, only=only)

    desc('valid', 'a valid flat descriptor (control)',
         'RW 2048 FLAT "flat.img" 0\n')
    # The extent array once grew by one per extent: under ASan a
    # conversion of the 4,000 took 10 s of CPU.
    desc('extents-5000', '5,000 extents over one flat file (too many)',
         'RW 1 FLAT "flat.img" 0\n' * 5000)
    desc('extents-4000', '4,000 extents over one flat file',
         ''.join('RW 1 FLAT "flat.img" %d\n' % i for i in range(4000)))
    desc('extent-etc-passwd', 'extent /etc/passwd (absolute path)',
         'RW 1 FLAT "/etc/passwd" 0\n')
    desc('extent-dotdot', 'extent ../../../../../../etc/passwd',
         'RW 1 FLAT "../../../../../../../../etc/passwd" 0\n')
    desc('extent-nbd', 'extent nbd:127.0.0.1:1',
         'RW 2048 FLAT "nbd:127.0.0.1:1" 0\n')
    desc('extent-json', 'extent json:{"driver":"null-co"}',
         'RW 2048 FLAT "json:{\\"driver\\":\\"null-co\\"}" 0\n')
    desc('extent-file-opts', 'extent file:flat.img,locking=off',
         'RW 2048 FLAT "file:flat.img,locking=off" 0\n')
    desc('extent-sectors-huge', 'extent of 2^62 sectors',
         'RW 4611686018427387904 FLAT "flat.img" 0\n')
    desc('extent-sectors-overflow', 'extent sectors 2^64 (overflow)',
         'RW 18446744073709551616 FLAT "flat.img" 0\n')
    desc('extents-sum-overflow', 'two extents summing past 2^64 bytes',
         'RW 9223372036854775807 FLAT "flat.img" 0\n'
         'RW 9223372036854775807 FLAT "flat.img" 0\n')
    desc('extent-offset-huge', 'flat extent offset 2^60 sectors',
         'RW 2048 FLAT "flat.img" 1152921504606846976\n')
    desc('extent-type-unknown', 'extent type BOGUS',
         'RW 2048 BOGUS "flat.img" 0\n')
    desc('extent-self', 'flat extent naming the descriptor itself',
         'RW 2048 FLAT "extent-self.vmdk" 0\n')
    desc('extent-self-sparse', 'sparse extent naming the descriptor itself',
         'RW 2048 SPARSE "extent-self-sparse.vmdk"\n', 'monolithicSparse')
    desc('extent-missing', 'extent that does not exist',
         'RW 2048 FLAT "missing.img" 0\n')
    desc('extent-dir', 'extent naming a directory', 'RW 2048 FLAT "." 0\n')
    desc('extents-none', 'descriptor with no extents', '')
    desc('create-type-bogus', 'createType "bogus"',
         'RW 2048 FLAT "flat.img" 0\n', 'bogus')
    desc('line-huge', 'extent line of 1 MiB',
         'RW 2048 FLAT "' + 'a' * (M - 200) + '" 0\n')
    desc('zero-sectors', 'extent of 0 sectors', 'RW 0 FLAT "flat.img" 0\n')
    desc('parent-loop', 'parentFileNameHint names itself',
         'RW 2048 FLAT "flat.img" 0\n', extra='')
    # The last one gets a parent: rewrite parentCID/hint.
    p = os.path.join(d, 'parent-loop.vmdk')
    t = open(p).read().replace(
        'parentCID=ffffffff', 'parentCID=12345678\n'
        'parentFileNameHint="parent-loop.vmdk"')
    open(p, 'w').write(t)
    c.cases[-1]['cmds'] = ['info --backing-chain', 'convert-raw']


def vmdk_sesparse_cases(c):
    """seSparse extents (ESXi), one damaged 64-bit field each: each case
    is a descriptor se-NAME.vmdk naming its own extent se-NAME-sesparse.vmdk
    (the layout tests/compat/sesparse_tool.py writes)."""
    src = open(os.path.join(COMPAT, 'sesparse_tool.py')).read()
    ns = {'__name__': 'sesparse_tool'}
    exec(compile(src, 'sesparse_tool.py', 'exec'), ns)
    d = c.path('vmdk', 'se')
    os.makedirs(d, exist_ok=True)
    raw = os.path.join(d, 'src.raw')
    save(raw, bytes([0x5e]) * 8 * K + bytes(56 * K) + bytes([0x61]) * 4 * K)
    base = os.path.join(d, 'base.vmdk')
    ns['build'](base, raw, grain_base=0)
    text = open(base).read()
    ext = load(os.path.join(d, 'base-sesparse.vmdk'))
    gd = struct.unpack_from('<Q', ext, 128)[0] * 512
    gt = struct.unpack_from('<Q', ext, 144)[0] * 512

    def add(name, what, *edits, data=None):
        x = pokes(ext, *edits) if data is None else data
        save(os.path.join(d, 'se-%s-sesparse.vmdk' % name), x)
        p = os.path.join(d, 'se-%s.vmdk' % name)
        with open(p, 'w') as f:
            f.write(text.replace('"base-sesparse.vmdk"',
                                 '"se-%s-sesparse.vmdk"' % name))
        c.add('vmdk', 'se-' + name, 'seSparse: ' + what, path=p)

    add('valid', 'a valid extent (control)')
    add('magic', 'const header magic 0x1234', (0, '<Q', 0x1234))
    add('version', 'version 0x300000001', (8, '<Q', 0x300000001))
    add('grain-size', 'grain size 16 sectors', (24, '<Q', 16))
    add('gt-size', 'grain table size 128 sectors', (32, '<Q', 128))
    add('flags', 'flags 1', (40, '<Q', 1))
    add('reserved', 'a reserved field set', (72, '<Q', 5))
    add('capacity-huge', 'capacity 2^63 - 1 sectors',
        (16, '<Q', (1 << 63) - 1))
    add('volatile-offset-wraps', 'volatile header at 2^55 + 1 sectors '
        '(wraps)', (80, '<Q', (1 << 55) + 1))
    add('volatile-offset-past-eof', 'volatile header past the end',
        (80, '<Q', 4000000))
    add('volatile-magic', 'volatile header magic 0', (512, '<Q', 0))
    add('dirty-journal', 'journal to replay', (512 + 24, '<Q', 1))
    add('gd-size-huge', 'directory of 2^26 sectors (2^32 entries)',
        (136, '<Q', 1 << 26))
    add('gd-size-max-entries', 'directory of 2^31 entries',
        (136, '<Q', 1 << 22))
    add('gd-offset-huge', 'directory at 2^54 sectors', (128, '<Q', 1 << 54))
    add('gd-entry-type', 'directory entry of type 2',
        (gd, '<Q', 0x2000000000000000))
    add('gd-entry-index-huge', 'directory entry naming table 2^32 - 1',
        (gd, '<Q', 0x10000000ffffffff))
    add('gt-offset-huge', 'grain tables at 2^32 - 1 sectors',
        (144, '<Q', 0xffffffff))
    add('gt-entry-type', 'grain table entry of type 7',
        (gt, '<Q', 0x7000000000000000))
    add('gt-entry-index-wraps', 'grain index whose offset wraps 2^64',
        (gt, '<Q', 0x3000800000000000))
    add('gt-entry-index-huge', 'grain index 2^32', (gt, '<Q',
                                                     0x3000000100000000))
    add('grains-offset-huge', 'grains at 2^62 sectors', (192, '<Q', 1 << 62))
    add('truncated', 'extent cut to 600 bytes', data=ext[:600])


# ---------------------------------------------------------------- bochs

def roformats():
    src = open(os.path.join(COMPAT, 'roformats_tool.py')).read()
    ns = {'__name__': 'roformats_tool'}
    exec(compile(src, 'roformats_tool.py', 'exec'), ns)
    return ns


def bochs_cases(c):
    rt = roformats()
    raw = c.path('bochs', 'src.raw')
    save(raw, bytes([0x55]) * 8 * K + bytes(56 * K))
    base = c.path('bochs', 'base.bochs')
    rt['bochs'](base, raw)
    d = load(base)

    def add(name, desc, *edits):
        c.add('bochs', name, desc, pokes(d, *edits))

    add('version-3', 'version 3', (64, '<I', 0x30000))
    add('header-size-0', 'header size 0', (68, '<I', 0))
    add('header-size-huge', 'header size 0xfffffe00', (68, '<I', 0xfffffe00))
    add('catalog-0', 'catalog of 0 entries', (72, '<I', 0))
    add('catalog-huge', 'catalog of 0xffffffff entries', (72, '<I', 0xffffffff))
    add('bitmap-0', 'bitmap size 0', (76, '<I', 0))
    add('bitmap-huge', 'bitmap size 0xffffffff', (76, '<I', 0xffffffff))
    add('extent-0', 'extent size 0', (80, '<I', 0))
    add('extent-odd', 'extent size 1000', (80, '<I', 1000))
    add('extent-huge', 'extent size 0xffffffff', (80, '<I', 0xffffffff))
    add('disk-huge', 'disk size 2^63', (88, '<Q', 1 << 63))
    add('disk-past-catalog', 'disk size 1 TiB, 16 catalog entries',
        (88, '<Q', 1 << 40))
    add('catalog-entry-past-eof', 'catalog entry 0x7fffffff',
        (512, '<I', 0x7fffffff))
    add('catalog-entry-huge', 'catalog entry 0xfffffffe',
        (512, '<I', 0xfffffffe))
    c.add('bochs', 'truncated', 'file cut to 100 bytes', d[:100])


# ---------------------------------------------------------------- cloop

def cloop_cases(c):
    rt = roformats()
    raw = c.path('cloop', 'src.raw')
    save(raw, bytes([0x66]) * 8 * K + bytes(56 * K))
    base = c.path('cloop', 'base.cloop')
    rt['cloop'](base, raw)
    d = load(base)
    n = struct.unpack_from('>I', d, 132)[0]

    def add(name, desc, *edits):
        c.add('cloop', name, desc, pokes(d, *edits))

    add('block-size-0', 'block size 0', (128, '>I', 0))
    add('block-size-odd', 'block size 1000', (128, '>I', 1000))
    add('block-size-huge', 'block size 0xfffffe00', (128, '>I', 0xfffffe00))
    add('blocks-0', '0 blocks', (132, '>I', 0))
    add('blocks-huge', '0xffffffff blocks', (132, '>I', 0xffffffff))
    add('blocks-512m', '0x1fffffff blocks (table past EOF)',
        (132, '>I', 0x1fffffff))
    add('offset-past-eof', 'block 1 offset past EOF',
        (136 + 8, '>Q', 1 << 40))
    add('offset-backwards', 'block offsets going backwards',
        (136 + 8, '>Q', 100))
    add('offset-wraps', 'last offset 2^64-1', (136 + 8 * n, '>Q',
                                               (1 << 64) - 1))
    add('block-len-huge', 'block 0 compressed length 1 GiB',
        (136 + 8, '>Q', 1 << 30))
    add('bad-zlib', 'block 0 not zlib', (136 + 8 * (n + 1), '8s',
                                         b'\xff' * 8))
    add('block-len-0', 'block 0 of length 0',
        (136 + 8, '>Q', struct.unpack_from('>Q', d, 136)[0]))
    # A block that inflates to more than block_size.
    big = zlib.compress(bytes(64 * K))
    x = bytearray(d[:136 + 8 * (n + 1)]) + big
    struct.pack_into('>II', x, 128, 4096, 1)
    struct.pack_into('>QQ', x, 136, 136 + 16, 136 + 16 + len(big))
    c.add('cloop', 'inflate-too-much', 'a block inflating to 64 KiB with '
          '4 KiB blocks', x[:136 + 16] + big)
    c.add('cloop', 'truncated', 'file cut to 140 bytes', d[:140])


# ------------------------------------------------------------------ dmg

def dmg_cases(c):
    rt = roformats()
    raw = c.path('dmg', 'src.raw')
    save(raw, bytes(range(256)) * 32 + bytes(24 * K) + b'dmg ' * 8192)
    base = c.path('dmg', 'base.dmg')
    rt['dmg'](base, raw, chunk=16)
    d = load(base)
    koly = len(d) - 512

    def add(name, desc, *edits):
        c.add('dmg', name, desc, pokes(d, *edits))

    def gen(name, desc, **opts):
        path = c.path('dmg', name + '.dmg')
        rt['dmg'](path, raw, chunk=16, **opts)
        c.add('dmg', name, desc, path=path)

    add('data-fork-past-trailer', 'data fork offset past the trailer',
        (koly + 0x18, '>Q', koly + 1))
    add('rsrc-at-trailer', 'resource fork at the trailer',
        (koly + 0x28, '>Q', koly), (koly + 0x30, '>Q', 1))
    add('rsrc-huge', 'resource fork of 2^63 bytes',
        (koly + 0x30, '>Q', 1 << 63))
    add('plist-at-0', 'property list at offset 0 (qemu-img 7.2 crashes)',
        (koly + 0xd8, '>Q', 0))
    add('plist-empty', 'property list of length 0', (koly + 0xe0, '>Q', 0))
    add('plist-past-trailer', 'property list running into the trailer',
        (koly + 0xe0, '>Q', koly))
    add('sectors-2^63', 'sector count 2^63', (koly + 0x1ec, '>Q', 1 << 63))
    add('sectors-2^54', 'sector count 2^54 (8 EiB)',
        (koly + 0x1ec, '>Q', 1 << 54))
    add('sectors-1t', 'sector count 1 TiB past the chunks',
        (koly + 0x1ec, '>Q', 1 << 31))
    add('no-trailer', 'no koly magic', (koly, '4s', b'kolx'))
    c.add('dmg', 'truncated', 'file cut to 511 bytes', d[:511])
    c.add('dmg', 'trailer-only', 'only the 512-byte trailer', d[koly:])
    gen('count-over-max', 'a chunk of 131073 sectors', bad_count=131073)
    gen('zero-count-huge', 'an ignore chunk of 2^64-1 sectors',
        bad_count=(1 << 64) - 1, bad_type=2)
    gen('length-over-max', 'a chunk stored in 64 MiB + 1', bad_length=(64 << 20) + 1)
    gen('length-64m', 'a chunk stored in 64 MiB (past EOF)',
        bad_length=64 << 20)
    gen('offset-past-eof', 'a chunk stored at 1 TiB', bad_offset=1 << 40)
    gen('offset-wraps', 'a chunk offset of 2^64-1', bad_offset=(1 << 64) - 1,
        fork=100)
    gen('raw-short', 'a raw chunk stored in 100 bytes', codec=1,
        bad_length=100)
    gen('zlib-not-zlib', 'a zlib chunk holding raw bytes', codec=1,
        bad_type=0x80000005)
    gen('bzip2-not-bzip2', 'a bzip2 chunk holding raw bytes', codec=1,
        bad_type=0x80000006)
    gen('unknown-types', 'ADC chunks', codec=0x80000004)
    gen('rsrc-fork', 'a resource fork with two tables', rsrc=1, split=1)
    # Many tables: 100,000 <data> elements of one chunk each.
    one = rt['dmg_mish'](0, [(1, 0, 1, 0, 512)], 1, 0)
    blob = base64.b64encode(one).decode()
    xml = ('<plist>' + ('<data>%s</data>' % blob) * 100000 +
           '</plist>').encode()
    x = bytearray(512) + xml
    t = bytearray(d[koly:])
    struct.pack_into('>QQQ', t, 0x18, 0, 512, 0)
    struct.pack_into('>QQ', t, 0xd8, 512, len(xml))
    struct.pack_into('>Q', t, 0x1ec, 1)
    c.add('dmg', 'tables-100k', '100,000 one-chunk tables',
          bytes(x) + bytes(t))


# ----------------------------------------------------------------- luks

SECRET = ['--object', 'secret,id=sec0,data=abc']


def create_keyed(argv):
    """qemu-img create with a secret; qemu-img fails to time PBKDF2 now
    and then ("Unable to get accurate CPU usage": a 0 ms trial): retry."""
    for t in [10] * 60:
        r = subprocess.run([QEMU_IMG, 'create', '-q'] + SECRET +
                           [x.replace('ITER', str(t)) for x in argv],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode == 0:
            return
        if 'accurate CPU usage' not in r.stderr:
            raise RuntimeError(r.stderr)
    raise RuntimeError(r.stderr)


def qio_keyed(opts, *cmds):
    argv = [QEMU_IO] + SECRET + ['--image-opts']
    for x in cmds:
        argv += ['-c', x]
    run(*argv, opts)


# What run_hostile.py adds to open an image with the key (the password
# the containers were made with): the driver and its key option.
LUKS_KEY = {'driver': 'luks', 'opt': 'key-secret'}
QCOW2_KEY = {'driver': 'qcow2', 'opt': 'encrypt.key-secret'}


# CPU seconds for a case whose runs spend a whole named budget (see
# slot-iters-at-limit).
BUDGET_CPU = 30


def luks_slot(i, field):
    return 208 + 48 * i + field


def luks_cases(c):
    base = c.path('luks', 'base.luks')
    create_keyed(['-f', 'luks', '-o', 'key-secret=sec0,iter-time=ITER',
                  base, '64k'])
    qio_keyed('driver=luks,file.filename=%s,key-secret=sec0' % base,
              'write -P 0x11 0 8k', 'write -P 0x22 32k 4k')
    d = load(base)
    payload = struct.unpack_from('>I', d, 104)[0]
    key0 = struct.unpack_from('>I', d, luks_slot(0, 40))[0]
    key1 = struct.unpack_from('>I', d, luks_slot(1, 40))[0]
    sectors = len(d) // 512

    def add(name, desc, *edits, **kw):
        c.add('luks', name, desc, pokes(d, *edits), key=LUKS_KEY, **kw)

    def name32(off, text):
        return (off, None, text.encode().ljust(32, b'\0'))

    c.add('luks', 'valid', 'the unmodified container (keyed runs succeed)',
          d, key=LUKS_KEY)
    add('magic', 'magic LUKS\\xba\\xbf', (5, 'B', 0xbf))
    add('version-2', 'version 2', (6, '>H', 2))
    add('version-0', 'version 0', (6, '>H', 0))
    add('payload-huge', 'payload offset 0xffffffff sectors',
        (104, '>I', 0xffffffff))
    add('payload-past-eof', 'payload offset 1 TiB, past EOF',
        (104, '>I', 1 << 31))
    add('payload-after-eof', 'payload offset just past EOF',
        (104, '>I', sectors + 8))
    add('payload-in-header', 'payload offset 1 (the header)',
        (104, '>I', 1))
    add('payload-in-keys', 'payload offset inside slot 0 key material',
        (104, '>I', key0 + 8))
    add('keys-past-eof', 'slot 0 key material 1 TiB past EOF (payload '
        'after it)', (luks_slot(0, 40), '>I', 1 << 31),
        (104, '>I', (1 << 31) + 1024))
    add('keys-overlap', 'slots 0 and 1 share key material',
        (luks_slot(1, 40), '>I', key0))
    add('keys-on-header', 'slot 0 key material at sector 0',
        (luks_slot(0, 40), '>I', 0))
    add('keys-wrap', 'slot 7 key material at 0xfffffff0 (wraps)',
        (luks_slot(7, 40), '>I', 0xfffffff0))
    add('slot-iters-0', 'slot 0 iterations 0', (luks_slot(0, 4), '>I', 0))
    add('slot-iters-huge', 'slot 0 iterations 0xffffffff',
        (luks_slot(0, 4), '>I', 0xffffffff))
    add('slot-iters-2-27', 'slot 0 iterations 2^27 - 1 (minutes of sha256)',
        (luks_slot(0, 4), '>I', (1 << 27) - 1))
    # The most one unlock may spend (LUKS1_MAX_UNLOCK_COST, 3 * 2^24
    # sha256 units; a 64-byte key is two blocks): the worst case that
    # runs, about 3.3x the PBKDF2 of QEMU's own default (iter-time 2 s).
    # On the idle 2-core EPYC of bench/RESULTS.md it takes 2.8 s of CPU
    # with the SHA extensions (kdf.c), 7.1 s with nettle's sha256 alone,
    # which a CPU without them gets; a CI machine running other suites
    # on the same cores took over 10 s for the latter (CPU time grows
    # when a core's sibling is busy), so the two cases that spend the
    # whole budget may take 30 s.  A bound broken by design (no limit)
    # still fails: it spends minutes.
    mk = struct.unpack_from('>I', d, 164)[0]
    add('slot-iters-at-limit', 'slot 0 iterations just inside the '
        'unlock budget', (luks_slot(0, 4), '>I',
                          ((3 << 24) - mk) // 2 - 1000), cpu=BUDGET_CPU)
    add('slot-iters-ripemd', 'slot 0 iterations 2^24 with ripemd160 '
        '(a slow hash, four blocks a key)', name32(72, 'ripemd160'),
        (luks_slot(0, 4), '>I', 1 << 24))
    edits = []
    for i in range(8):
        edits += [(luks_slot(i, 0), '>I', 0x00ac71f3),
                  (luks_slot(i, 4), '>I', 1 << 23)]
    # Each slot fits the unlock budget, all eight do not.
    add('slots-all-expensive', 'eight active slots of 2^23 iterations',
        *edits, cpu=BUDGET_CPU)
    add('slot-active-bad', 'slot 3 state 0x12345678',
        (luks_slot(3, 0), '>I', 0x12345678))
    add('mk-iters-0', 'master key digest iterations 0', (164, '>I', 0))
    add('mk-iters-huge', 'master key digest iterations 0xffffffff',
        (164, '>I', 0xffffffff))
    add('mk-iters-2-27', 'master key digest iterations 2^27 - 1',
        (164, '>I', (1 << 27) - 1))
    add('stripes-1', 'slot 0 stripes 1', (luks_slot(0, 44), '>I', 1))
    add('stripes-huge', 'slot 2 stripes 0xffffffff',
        (luks_slot(2, 44), '>I', 0xffffffff))
    add('key-bytes-0', 'key bytes 0', (108, '>I', 0))
    add('key-bytes-odd', 'key bytes 33', (108, '>I', 33))
    add('key-bytes-huge', 'key bytes 0xffffffff', (108, '>I', 0xffffffff))
    add('key-bytes-wraps', 'key bytes 2^30 (key bytes * stripes wraps)',
        (108, '>I', 1 << 30))
    add('key-bytes-32', 'key bytes 32 (aes-128-xts, wrong key)',
        (108, '>I', 32))
    add('cipher-unknown', 'cipher name des', name32(8, 'des'))
    add('cipher-empty', 'cipher name empty', name32(8, ''))
    add('mode-unknown', 'cipher mode gcm-plain64', name32(40, 'gcm-plain64'))
    add('mode-no-ivgen', 'cipher mode xts (no IV generator)',
        name32(40, 'xts'))
    add('ivgen-unknown', 'cipher mode xts-benbi', name32(40, 'xts-benbi'))
    add('hash-unknown', 'hash spec whirlpool', name32(72, 'whirlpool'))
    add('essiv-no-hash', 'cipher mode cbc-essiv (no hash)',
        name32(40, 'cbc-essiv'), (108, '>I', 32))
    add('essiv-bad-hash', 'cipher mode cbc-essiv:whirlpool',
        name32(40, 'cbc-essiv:whirlpool'), (108, '>I', 32))
    add('essiv-size', 'aes-256-cbc-essiv:sha512 (no AES-512)',
        name32(40, 'cbc-essiv:sha512'), (108, '>I', 32))
    add('essiv-md5', 'aes-256-cbc-essiv:md5 (valid names, wrong key)',
        name32(40, 'cbc-essiv:md5'), (108, '>I', 32))
    add('cast5-essiv', 'cast5-128-cbc-essiv:sha256',
        name32(8, 'cast5'), name32(40, 'cbc-essiv:sha256'),
        (108, '>I', 16))
    add('ecb', 'aes-256-ecb (valid names, wrong key)', name32(40, 'ecb'),
        (108, '>I', 32))
    add('ecb-plain', 'cipher mode ecb-plain (wrong key)',
        name32(40, 'ecb-plain'), (108, '>I', 32))
    add('name-unterminated', 'cipher name: 32 bytes, no NUL',
        (8, None, b'a' * 32))
    add('mode-unterminated', 'cipher mode: 32 bytes, no NUL',
        (40, None, b'x' * 32))
    add('hash-unterminated', 'hash spec: 32 bytes, no NUL',
        (72, None, b's' * 32))
    add('uuid-unterminated', 'uuid: 40 bytes, no NUL',
        (168, None, b'u' * 40))
    add('digest-bad', 'master key digest flipped (wrong key)',
        (112, 'B', d[112] ^ 1))
    add('keys-zero', 'slot 0 key material zeroed (wrong key)',
        (key0 * 512, None, bytes(4096)))
    for n, desc, cut in (
            ('truncated-100', 'file cut to 100 bytes', 100),
            ('truncated-header', 'file cut to the 592-byte header', 592),
            ('truncated-keys', 'file cut inside slot 0 key material',
             key0 * 512 + 1000),
            ('truncated-slot1', 'file cut at slot 1 key material',
             key1 * 512),
            ('truncated-payload', 'file cut 1000 bytes into the payload',
             payload * 512 + 1000),
            ('truncated-odd', 'payload cut to an odd length',
             len(d) - 7)):
        c.add('luks', n, desc, d[:cut], key=LUKS_KEY)

    # qcow2 with LUKS encryption: the LUKS header sits in clusters the
    # full disk encryption header extension (0x0537be77) names.
    q = c.path('qcow2', 'base-luks.qcow2')
    create_keyed(['-f', 'qcow2', '-o', 'encrypt.format=luks,'
                  'encrypt.key-secret=sec0,encrypt.iter-time=ITER,'
                  'cluster_size=4096', q, '1M'])
    qio_keyed('driver=qcow2,file.filename=%s,encrypt.key-secret=sec0' % q,
              'write -P 0x33 0 8k')
    d = load(q)
    ext = qcow2_ext(d, 0x0537be77)  # the full disk encryption extension
    hdr = struct.unpack_from('>Q', d, ext)[0]

    def qadd(name, desc, *edits):
        c.add('qcow2', name, desc, pokes(d, *edits), key=QCOW2_KEY)

    qadd('luks-valid', 'LUKS-encrypted image, unmodified')
    qadd('luks-hdr-past-eof', 'LUKS header offset 1 TiB, past EOF',
         (ext, '>Q', 1 << 40))
    qadd('luks-hdr-len-huge', 'LUKS header length 2^62',
         (ext + 8, '>Q', 1 << 62))
    qadd('luks-hdr-len-0', 'LUKS header length 0', (ext + 8, '>Q', 0))
    qadd('luks-hdr-unaligned', 'LUKS header offset not cluster-aligned',
         (ext, '>Q', hdr + 512))
    qadd('luks-hdr-on-header', 'LUKS header at offset 0 (the qcow2 header)',
         (ext, '>Q', 0))
    qadd('luks-magic', 'LUKS magic broken', (hdr, 'B', 0))
    qadd('luks-slot-iters-huge', 'LUKS slot 0 iterations 0xffffffff',
         (hdr + luks_slot(0, 4), '>I', 0xffffffff))
    qadd('luks-slot-iters-2-27', 'LUKS slot 0 iterations 2^27 - 1',
         (hdr + luks_slot(0, 4), '>I', (1 << 27) - 1))
    qadd('luks-mk-iters-huge', 'LUKS master key digest iterations '
         '0xffffffff', (hdr + 164, '>I', 0xffffffff))
    qadd('luks-keys-past-eof', 'LUKS slot 0 key material past EOF',
         (hdr + luks_slot(0, 40), '>I', 1 << 31),
         (hdr + 104, '>I', (1 << 31) + 1024))
    qadd('luks-key-bytes-huge', 'LUKS key bytes 0xffffffff',
         (hdr + 108, '>I', 0xffffffff))
    qadd('luks-cipher-unknown', 'LUKS cipher name des',
         (hdr + 8, None, b'des'.ljust(32, b'\0')))
    qadd('luks-method-aes', 'crypt_method 1 (AES) over a LUKS image',
         (32, '>I', 1))


# ------------------------------------------------------------ parallels

def parallels_cases(c):
    base = c.path('parallels', 'base.parallels')
    create('parallels', base, 4 * M, '-o', 'cluster_size=64k')
    qio('parallels', base, 'write -P 0x11 0 4k')
    d = load(base)

    def add(name, desc, *edits):
        c.add('parallels', name, desc, pokes(d, *edits))

    add('version-3', 'version 3', (16, '<I', 3))
    add('tracks-0', 'tracks 0 (cluster size 0)', (28, '<I', 0))
    add('tracks-huge', 'tracks 0xffffffff', (28, '<I', 0xffffffff))
    # A write allocates one such cluster: in pieces, not one 2 GiB buffer.
    add('tracks-2g', 'tracks 4186100 (QEMU\'s largest, 2 GiB clusters), '
        'cluster 0 unallocated', (28, '<I', 4186100), (64, '<I', 0))
    add('bat-entries-huge', 'BAT entries 0xffffffff', (32, '<I', 0xffffffff))
    add('bat-entries-0', 'BAT entries 0', (32, '<I', 0))
    add('sectors-huge', 'sector count 2^62', (36, '<Q', 1 << 62))
    add('sectors-past-bat', 'sector count 1 TiB', (36, '<Q', 1 << 31))
    add('inuse', 'in-use (dirty) magic', (44, '<I', 0x746F6E59))
    add('data-off-huge', 'data offset 0xffffffff', (48, '<I', 0xffffffff))
    add('data-off-0', 'data offset 0', (48, '<I', 0))
    add('ext-off-past-eof', 'extension offset past EOF',
        (56, '<Q', 1 << 40))
    add('bat-entry-past-eof', 'BAT entry 0 past EOF', (64, '<I', 0x7ffffff0))
    add('bat-entry-header', 'BAT entry 0 at the header', (64, '<I', 0))
    add('bat-entries-dup', 'BAT entries 0 and 1 the same',
        (68, '<I', struct.unpack_from('<I', d, 64)[0]))
    add('bat-entry-huge', 'BAT entry 0xffffffff', (64, '<I', 0xffffffff))
    c.add('parallels', 'truncated', 'file cut to 50 bytes', d[:50])


# ------------------------------------------------------------------ raw

def raw_cases(c):
    c.add('raw', 'empty', 'empty file', b'')
    c.add('raw', 'one-byte', 'one byte', b'\x01')
    c.add('raw', 'odd-size', '511 bytes', bytes([7]) * 511)
    # A raw disk whose content looks like other formats: -f raw must not
    # follow what the content names.
    q = load(c.path('qcow2', 'backing-nbd.qcow2'))
    c.add('raw', 'qcow2-inside', 'raw disk holding a qcow2 header naming '
          'an nbd backing file', q)
    desc = open(c.path('vmdk', os.path.join('desc', 'extent-etc-passwd'
                                            '.vmdk')), 'rb').read()
    c.add('raw', 'vmdk-desc-inside', 'raw disk holding a VMDK descriptor '
          'naming /etc/passwd', desc)


BUILDERS = [
    ('qcow2', qcow2_cases),
    ('qcow', qcow_cases),
    ('qed', qed_cases),
    ('vdi', vdi_cases),
    ('vpc', vpc_cases),
    ('vhdx', vhdx_cases),
    ('vmdk', vmdk_cases),
    ('bochs', bochs_cases),
    ('cloop', cloop_cases),
    ('parallels', parallels_cases),
    ('dmg', dmg_cases),
    ('raw', raw_cases),
    ('luks', luks_cases),
]


def build(root):
    c = Corpus(root)
    for _, b in BUILDERS:
        b(c)
    return c.cases


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cases = build(argv[1])
    want = set(argv[2:])
    for x in cases:
        if not want or x['name'] in want:
            print(json.dumps(x))


if __name__ == '__main__':
    main(sys.argv)
