#!/usr/bin/env python3
"""Randomly damaged images through every qimg command: a campaign tool.

  mutate.py [--seconds N | --runs N | --run I] [--seed S] [--jobs N]
            [--findings DIR] [FORMAT...]

The hostile corpus (make_hostile.py) damages each field on purpose, and
the libFuzzer targets (tests/fuzz) drive the library's open, read and
write paths.  This covers what lies between: the commands themselves
(measure, compare, dd, commit, rebase, snapshot -l, resize, check -r,
convert to several formats...) on images that qemu-img and qemu-io
made and that a few random edits then broke: bytes, and 16-, 32- and
64-bit fields set to edge values (0, all ones, powers of two, the file's
size), in either byte order, mostly in the first 64 KiB where headers
and tables live.  vpc footers get their checksum fixed after the edits,
so that the damage reaches past it.

Each run must pass run_hostile.py's rules (verdict(): an exit in time,
one clear error line, no signal, no sanitizer report, peak RSS under
256 MiB).  A run that does not is a finding: its image, the backing
file and the command line go to --findings DIR (default
/var/tmp/qimg-mutate-findings), one folder each, and the run goes on.
Runs are reproducible from --seed: run i of seed S makes the same image
and command on any machine (the seed images' own random bytes, such as
UUIDs, aside).  --runs N does exactly N runs (the meson test
hostile-mutate: a fixed seed and count); else it runs for --seconds
(default 60); --run I does run I of the seed alone (to replay a
finding; FORMAT... must be as in the run that found it).  QIMG names the binary (an ASan+UBSan build
finds the most: set QIMG_SANITIZED=1 with it).  Prints one line per
finding and a closing "N runs, M findings".
"""
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hostile  # noqa: E402
import run_hostile  # noqa: E402

QEMU_IMG = make_hostile.QEMU_IMG
QEMU_IO = make_hostile.QEMU_IO
M = 1 << 20


def sh(*argv):
    make_hostile.run(*argv)


def make_seeds(d):
    """{name: (format, path, backing path or None)} for images qemu made."""
    seeds = {}

    def add(name, fmt, size, create_opts=(), writes=(), backing=None):
        path = os.path.join(d, name)
        argv = [QEMU_IMG, 'create', '-q', '-f', fmt]
        for o in create_opts:
            argv += ['-o', o]
        if backing:
            argv += ['-b', os.path.basename(backing), '-F', 'qcow2']
        sh(*(argv + [path, str(size)]))
        if writes:
            sh(QEMU_IO, '-f', fmt, *sum((['-c', w] for w in writes), []),
               path)
        seeds[name] = (fmt, path, backing)

    data = ['write -P 0x5a 0 64k', 'write -P 0x11 300k 5k',
            'write -z 512k 64k', 'write -P 0x22 1020k 4k']
    add('base.qcow2', 'qcow2', 2 * M, ['cluster_size=4096'],
        data + ['write -c -P 0x33 1536k 4k'])
    sh(QEMU_IMG, 'snapshot', '-c', 's1', seeds['base.qcow2'][1])
    sh(QEMU_IMG, 'bitmap', '--add', seeds['base.qcow2'][1], 'b0')
    sh(QEMU_IO, '-c', 'write -P 0x44 8k 8k', seeds['base.qcow2'][1])
    add('small.qcow2', 'qcow2', M, ['cluster_size=512,refcount_bits=1'],
        data)
    add('zstd.qcow2', 'qcow2', M,
        ['cluster_size=65536,compression_type=zstd,extended_l2=on'],
        data + ['write -c -P 0x66 128k 64k'])
    add('over.qcow2', 'qcow2', 2 * M, [], ['write -P 0x77 64k 4k'],
        backing=seeds['base.qcow2'][1])
    add('v2.qcow2', 'qcow2', M, ['compat=0.10'], data)
    add('img.qcow', 'qcow', M, [], data)
    add('img.qed', 'qed', M, ['cluster_size=4096'], data)
    add('img.vdi', 'vdi', 2 * M, [], data)
    add('img.vhd', 'vpc', 2 * M, [], data)
    add('img.vhdx', 'vhdx', 4 * M, ['block_size=1048576'], data)
    add('sparse.vmdk', 'vmdk', M, [], data)
    add('stream.vmdk', 'vmdk', M, ['subformat=streamOptimized'])
    sh(QEMU_IMG, 'convert', '-O', 'vmdk', '-o',
       'subformat=streamOptimized', seeds['sparse.vmdk'][1],
       seeds['stream.vmdk'][1])
    add('img.prl', 'parallels', 2 * M, ['cluster_size=4096'], data)
    return seeds


WRITABLE = ('qcow2', 'qcow', 'qed', 'vdi', 'vpc', 'vhdx', 'vmdk',
            'parallels')


def commands(fmt):
    """(name, argv builder) pairs that apply to fmt; IMG, OUT, F below."""
    c = [('info', ['info', '-f', 'F', 'IMG']),
         ('info-json-chain', ['info', '--output=json', '--backing-chain',
                              'IMG']),
         ('check', ['check', '-f', 'F', 'IMG']),
         ('check-json', ['check', '--output=json', '-f', 'F', 'IMG']),
         ('map', ['map', '--output=json', '-f', 'F', 'IMG']),
         ('convert-raw', ['convert', '-f', 'F', '-O', 'raw', 'IMG', 'OUT']),
         ('convert-qcow2-c', ['convert', '-c', '-f', 'F', '-O', 'qcow2',
                              'IMG', 'OUT']),
         ('convert-vmdk', ['convert', '-f', 'F', '-O', 'vmdk', 'IMG',
                           'OUT']),
         ('convert-vdi', ['convert', '-f', 'F', '-O', 'vdi', 'IMG', 'OUT']),
         ('measure', ['measure', '-f', 'F', '-O', 'qcow2', 'IMG']),
         ('compare', ['compare', '-f', 'F', '-F', 'F', 'IMG', 'IMG']),
         ('dd', ['dd', '-f', 'F', '-O', 'raw', 'bs=64k', 'count=20',
                 'if=IMG', 'of=OUT'])]
    if fmt in WRITABLE:
        c += [('bench-w', ['bench', '-w', '-c', '16', '-s', '4k', '-S',
                           '68k', '-f', 'F', 'IMG'])]
    if fmt in ('qcow2', 'qed', 'vdi', 'parallels', 'vhdx'):
        c += [('check-r', ['check', '-r', 'all', '-f', 'F', 'IMG'])]
    if fmt in ('qcow2', 'qed', 'raw', 'vdi', 'vpc', 'vhdx'):
        c += [('resize', ['resize', '-f', 'F', 'IMG', '+1M'])]
    if fmt == 'qcow2':
        c += [('snapshot-l', ['snapshot', '-l', 'IMG']),
              ('snapshot-c', ['snapshot', '-c', 'new', 'IMG']),
              ('snapshot-a', ['snapshot', '-a', 's1', 'IMG']),
              ('snapshot-d', ['snapshot', '-d', 's1', 'IMG']),
              ('amend', ['amend', '-f', 'F', '-o', 'compat=0.10', 'IMG']),
              ('amend-refcount', ['amend', '-f', 'F', '-o',
                                  'refcount_bits=4', 'IMG']),
              ('bitmap', ['bitmap', '--add', '--merge', 'b0', '-f', 'F',
                          'IMG', 'b1']),
              ('commit', ['commit', '-f', 'F', 'IMG']),
              ('rebase', ['rebase', '-f', 'F', '-b', '', 'IMG']),
              ('convert-bitmaps', ['convert', '--bitmaps', '-f', 'F',
                                   '-O', 'qcow2', 'IMG', 'OUT'])]
    return c


EDGES = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x1ff, 0x200, 0xfff, 0x1000,
         0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000,
         0xffffffff, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63,
         (1 << 64) - 1]


def mutate(rng, data):
    b = bytearray(data)
    size = len(b)
    for _ in range(rng.randint(1, 8)):
        hot = min(size, 65536)
        off = rng.randrange(hot) if rng.random() < 0.8 else \
            rng.randrange(size)
        kind = rng.random()
        if kind < 0.3:
            b[off] = rng.randrange(256)
            continue
        width = rng.choice((2, 4, 8))
        off -= off % width if rng.random() < 0.7 else 0
        if off + width > size:
            continue
        v = rng.choice(EDGES + [size, size - 512, size + 512,
                                rng.randrange(1 << (8 * width))])
        v &= (1 << (8 * width)) - 1
        order = '<>'[rng.randrange(2)]
        b[off:off + width] = struct.pack(order + {2: 'H', 4: 'I',
                                                  8: 'Q'}[width], v)
    return bytes(b)


def one_run(qimg, sanitized, seeds, names, seed, i, work, findings):
    rng = random.Random('%d/%d' % (seed, i))
    name = rng.choice(names)
    fmt, path, backing = seeds[name]
    cmd, argv = rng.choice(commands(fmt))
    scratch = os.path.join(work, 'run%d' % i)
    os.makedirs(scratch)
    img = os.path.join(scratch, name)
    with open(path, 'rb') as f:
        data = mutate(rng, f.read())
    if fmt == 'vpc':
        data = bytes(make_hostile.vpc_fix(bytearray(data)))
    with open(img, 'wb') as f:
        f.write(data)
    if backing:
        shutil.copyfile(backing, os.path.join(scratch,
                                              os.path.basename(backing)))
    full = [qimg] + [{'IMG': img, 'OUT': os.path.join(scratch, 'out'),
                      'F': fmt}.get(a, a) for a in argv]
    res = run_hostile.run_one(full, scratch, sanitized)
    why = run_hostile.verdict(cmd, res)
    if why and cmd == 'compare' and res['code'] == 1 and not res['err']:
        why = None  # different contents: exit 1, said on stdout
    if why:
        # The input as it was made (the command may have grown the copy
        # in scratch to terabytes), and what the run did.
        keep = os.path.join(findings, '%d-%d-%s-%s' % (seed, i, name, cmd))
        shutil.rmtree(keep, ignore_errors=True)
        os.makedirs(keep)
        with open(os.path.join(keep, name), 'wb') as f:
            f.write(data)
        if backing:
            shutil.copyfile(backing, os.path.join(
                keep, os.path.basename(backing)))
        with open(os.path.join(keep, 'command'), 'w') as f:
            f.write('%s\n# %s (exit %d, %.2f s cpu, %d MiB)\n%s' % (
                ' '.join(full), why, res['code'], res['cpu'],
                res['rss'] >> 20, res['err']))
    shutil.rmtree(scratch, ignore_errors=True)
    return name, cmd, why


def main(argv):
    seconds, seed, jobs, runs_max, only = 60, int(time.time()), 1, None, None
    findings = '/var/tmp/qimg-mutate-findings'
    formats = []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ('--seconds', '--seed', '--jobs', '--findings', '--runs',
                 '--run'):
            v = argv[i + 1]
            i += 1
            if a == '--seconds':
                seconds = float(v)
            elif a == '--seed':
                seed = int(v)
            elif a == '--jobs':
                jobs = int(v)
            elif a == '--runs':
                runs_max = int(v)
            elif a == '--run':
                only = int(v)
            else:
                findings = v
        else:
            formats.append(a)
        i += 1
    qimg = os.environ.get('QIMG')
    if not qimg:
        sys.exit('QIMG must point at the qimg binary')
    sanitized = os.environ.get('QIMG_SANITIZED', '0') == '1'
    os.makedirs(findings, exist_ok=True)
    work = tempfile.mkdtemp(prefix='qimg-mutate.')
    try:
        os.makedirs(os.path.join(work, 'seeds'))
        seeds = make_seeds(os.path.join(work, 'seeds'))
        names = sorted(n for n, s in seeds.items()
                       if not formats or s[0] in formats)
        print('seed %d, %d images, %d jobs' % (seed, len(names), jobs))
        if only is not None:
            name, cmd, why = one_run(qimg, sanitized, seeds, names, seed,
                                     only, work, findings)
            print('run %d: %s %s: %s' % (only, name, cmd, why or 'ok'))
            return 1 if why else 0
        deadline = time.monotonic() + seconds
        runs = found = 0
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            while (runs < runs_max if runs_max is not None
                   else time.monotonic() < deadline):
                k = jobs * 4
                if runs_max is not None:
                    k = min(k, runs_max - runs)
                batch = [ex.submit(one_run, qimg, sanitized, seeds, names,
                                   seed, runs + j, work, findings)
                         for j in range(k)]
                runs += len(batch)
                for fut in batch:
                    name, cmd, why = fut.result()
                    if why:
                        found += 1
                        print('finding: %s %s: %s' % (name, cmd, why))
                        sys.stdout.flush()
        print('%d runs, %d findings' % (runs, found))
        return 1 if found else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main(sys.argv))
