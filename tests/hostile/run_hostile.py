#!/usr/bin/env python3
"""Run qimg over the hostile corpus (make_hostile.py) and print TAP.

  run_hostile.py [--keep DIR] [--jobs N] [--oracle] [CASE...]

QIMG names the binary (as in every test here).  Each image is run
through info (with -f and probed), check, map and convert (-O raw and
-O qcow2, into a scratch file), plus the commands its case adds (info
--backing-chain, check -r all on a copy); encrypted images (a case with
a 'key') also convert -O raw, map and check opened with their key
(--object secret + --image-opts); qcow2 images also resize, snapshot
-c, amend (compat=0.10; refcount_bits=4), bitmap (--add; --add --merge
--clear --disable; --remove),
bench -w, convert --bitmaps and rebase -u, and images of every other
format qimg writes bench -w (WRITE_CMDS, each on a copy).
One TAP line per image and command.  A run passes when the child:

  * ends by itself within CPU_TIMEOUT seconds of CPU time (a case's
    own 'cpu' where its work is a whole named budget) and WALL_TIMEOUT
    of real time, not by a signal;
  * prints no sanitizer report (ASan, UBSan, LeakSanitizer);
  * peaks below RSS_MAX resident memory (wait4's ru_maxrss);
  * exits 0, or exits non-zero with exactly one line on stderr, of the
    form "qimg: <what failed>: <why>"; check may also exit 2 or 3
    (corruptions, leaks: its report goes to stdout, its "ERROR" lines
    to stderr as qemu-img's do).

CASE names (format/case, e.g. qcow2/l1-past-eof) select cases; --keep
DIR keeps the images (and prints the command lines); --oracle runs
qemu-img too and prints its exit status and first stderr line.
"""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hostile  # noqa: E402

CPU_TIMEOUT = 10
WALL_TIMEOUT = 120
RSS_MAX = 256 * 1024 * 1024
SANITIZER = ('ERROR: AddressSanitizer', 'runtime error:',
             'ERROR: LeakSanitizer', 'SUMMARY: UndefinedBehaviorSanitizer')
DEFAULT_CMDS = ['info', 'info-probe', 'check', 'map', 'convert-raw',
                'convert-qcow2']
# Encrypted images also run opened with the key they were made with
# (make_hostile.py: the case's 'key' names the driver and its option):
# unlocking, key material and payload reads are hostile input too.
KEYED_CMDS = ['keyed-convert-raw', 'keyed-map', 'keyed-check']
# qcow2 images also go through the commands that change an image in
# place (each on a copy): a hostile table must not corrupt memory on the
# way to a write either.
# Every other format qimg writes takes guest writes on a copy (bench -w,
# what qemu-io or a guest does to an image it is given).
WRITE_CMDS = {'qcow2': ['resize', 'snapshot -c', 'amend',
                        'amend refcount_bits', 'bitmap --add',
                        'bitmap --merge', 'bitmap --remove', 'bench -w',
                        'convert --bitmaps',
                        'rebase -u']}
for _fmt in ('qcow', 'qed', 'vdi', 'vpc', 'vhdx', 'vmdk', 'parallels', 'luks',
             'raw'):
    WRITE_CMDS[_fmt] = ['bench -w']
SECRET = ['--object', 'secret,id=sec0,data=abc']


def keyed_argv(tool, case, cmd, scratch):
    key = case['key']
    spec = 'driver=%s,file.filename=%s,%s=sec0' % (
        key['driver'], case['path'], key['opt'])
    opts = SECRET + ['--image-opts', spec]
    if cmd == 'keyed-convert-raw':
        return [tool, 'convert'] + opts + ['-O', 'raw',
                                           os.path.join(scratch, 'out')]
    return [tool, cmd.split('-')[1]] + opts


def argv_for(tool, case, cmd, scratch):
    if cmd.startswith('keyed-'):
        return keyed_argv(tool, case, cmd, scratch)
    fmt = ['-f', case['format']]
    path = case['path']
    if cmd == 'info':
        return [tool, 'info'] + fmt + [path]
    if cmd == 'info-probe':
        return [tool, 'info', path]
    if cmd == 'info --backing-chain':
        return [tool, 'info', '--backing-chain'] + fmt + [path]
    if cmd == 'check':
        return [tool, 'check'] + fmt + [path]
    if cmd == 'check -r all':
        # Repair writes: work on a copy.
        copy = os.path.join(scratch, 'repair')
        shutil.copyfile(path, copy)
        return [tool, 'check', '-r', 'all'] + fmt + [copy]
    if cmd == 'map':
        return [tool, 'map'] + fmt + [path]
    if cmd in WRITE_CMDS.get(case['format'], ()):
        copy = os.path.join(scratch, 'copy')
        shutil.copyfile(path, copy)
        return {'resize': [tool, 'resize'] + fmt + [copy, '+1M'],
                # snapshot takes no -f (as in qemu-img): probed.
                'snapshot -c': [tool, 'snapshot', '-c', 's1', copy],
                'amend': [tool, 'amend'] + fmt + ['-o', 'compat=0.10',
                                                   copy],
                # A change of refcount width rewrites every refcount.
                'amend refcount_bits': [tool, 'amend'] + fmt +
                ['-o', 'refcount_bits=4', copy],
                'bitmap --add': [tool, 'bitmap', '--add'] + fmt +
                [copy, 'b1'],
                # The base images' bitmap is b0 (make_hostile.py).
                'bitmap --merge': [tool, 'bitmap', '--add', '--merge', 'b0',
                                   '--clear', '--disable'] + fmt +
                [copy, 'b1'],
                'bitmap --remove': [tool, 'bitmap', '--remove'] + fmt +
                [copy, 'b0'],
                # Guest writes (qcow2's bitmaps record them), within the
                # 1 MiB most cases' disks hold, partly unaligned to
                # clusters.
                'bench -w': [tool, 'bench', '-w', '-c', '8', '-s', '4k',
                             '-S', '96k'] + fmt + [copy],
                'convert --bitmaps': [tool, 'convert', '--bitmaps'] + fmt +
                ['-O', 'qcow2', copy, copy + '.out'],
                'rebase -u': [tool, 'rebase', '-u', '-b', ''] + fmt +
                [copy]}[cmd]
    if cmd in ('convert-raw', 'convert-qcow2'):
        out = os.path.join(scratch, 'out')
        return [tool, 'convert'] + fmt + ['-O', cmd.split('-')[1], path,
                                          out]
    raise ValueError(cmd)


def limit_child(sanitized, cpu):
    def f():
        os.setpgrp()
        # The time limit is CPU time (SIGXCPU), so that a loaded machine
        # does not fail a run that merely waited for a core.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        if not sanitized:
            # A sanitizer build reserves terabytes of shadow memory; the
            # others get a 1 GiB address space, so a runaway allocation
            # fails there rather than swapping.
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return f


def tail(path, limit=1 << 16):
    with open(path, 'rb') as f:
        f.seek(0, 2)
        n = f.tell()
        f.seek(max(0, n - limit))
        return f.read().decode('utf-8', 'replace')


def run_one(argv, scratch, sanitized, cpu=CPU_TIMEOUT):
    """A dict: code (exit status or -signal), out and err (text; the
    last 64 KiB), rss (peak, bytes), cpu and secs (seconds), timed_out
    (killed at the wall-clock limit)."""
    os.makedirs(scratch, exist_ok=True)
    outpath = os.path.join(scratch, 'stdout')
    errpath = os.path.join(scratch, 'stderr')
    env = dict(os.environ)
    if sanitized:
        # One allocation above the RSS budget is a finding too: ASan
        # reports it ("allocation-size-too-big") instead of serving it.
        # Freed memory waits in ASan's quarantine (256 MiB by default),
        # resident: a small one keeps the RSS figure the program's own.
        extra = ('max_allocation_size_mb=256:detect_leaks=1:'
                 'quarantine_size_mb=16')
        env['ASAN_OPTIONS'] = (env.get('ASAN_OPTIONS', '') + ':' +
                               extra).lstrip(':')
    with open(outpath, 'wb') as out, open(errpath, 'wb') as err:
        start = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                             stdout=out, stderr=err, env=env, cwd=scratch,
                             preexec_fn=limit_child(sanitized, cpu))
        timed_out = []

        def kill():
            timed_out.append(True)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        timer = threading.Timer(WALL_TIMEOUT, kill)
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        timer.cancel()
        p.returncode = 0  # reaped here; keep Popen from waiting again
        secs = time.monotonic() - start
    if os.WIFSIGNALED(status):
        code = -os.WTERMSIG(status)
    else:
        code = os.WEXITSTATUS(status)
    res = {'code': code, 'out': tail(outpath), 'err': tail(errpath),
           'rss': ru.ru_maxrss * 1024, 'cpu': ru.ru_utime + ru.ru_stime,
           'secs': secs, 'timed_out': bool(timed_out), 'cpu_max': cpu}
    for name in ('out', 'repair', 'copy', 'stdout', 'stderr'):
        try:
            os.unlink(os.path.join(scratch, name))
        except FileNotFoundError:
            pass
    return res


CLEAR = re.compile(r'^qimg: \S.*\S$')
WARNING = 'qimg: warning: '
PROBED_RAW = ('WARNING: Image format was not specified for ',
              '         Automatically detecting the format is dangerous',
              "         Specify the 'raw' format explicitly")
# qemu-img's own continuation lines after some errors (a hint how to
# repair); allowed after the one error line.
HINTS = ('You can force-remove', 'To replay the log, run:',
         'qemu-img check -r all', "Try the 'qcow2' driver instead.")


def clear(line):
    return bool(CLEAR.match(line)) and '(null)' not in line and \
        not line.endswith(('Success', ': '))


def verdict(cmd, r):
    """None if the run is acceptable, else why not."""
    code, out, err, rss, cpu = r['code'], r['out'], r['err'], r['rss'], \
        r['cpu']
    if r['timed_out']:
        return 'no exit within %d s of wall-clock time' % WALL_TIMEOUT
    if code == -signal.SIGXCPU or code == -signal.SIGKILL and \
            cpu >= r['cpu_max']:
        return 'used more than %d s of CPU time' % r['cpu_max']
    if code < 0:
        return 'killed by signal %d' % -code
    for s in SANITIZER:
        if s in err:
            return 'sanitizer report'
    if rss >= RSS_MAX:
        return 'peak RSS %d MiB' % (rss >> 20)
    if code == 0:
        return None
    lines = err.splitlines()
    if cmd.startswith(('check', 'keyed-check')):
        # Exit 2 and 3 report corruptions and leaks (stdout, with
        # "ERROR ..." lines on stderr, as in qemu-img); exit 1 with
        # "internal errors" likewise; else the last line says why.
        if code in (2, 3) or 'internal errors have occurred' in out:
            return None
        while lines and lines[-1].startswith(HINTS):
            lines.pop()
        if lines and clear(lines[-1]):
            return None
        return 'check exit %d without a closing error line' % code
    lines = [x for x in lines if not x.startswith(WARNING)]
    # qemu-img's three-line warning for a probed raw image, word for word.
    lines = [x for x in lines if not x.startswith(PROBED_RAW)]
    errors = [x for x in lines if not x.startswith(HINTS)]
    if len(errors) != 1:
        return 'exit %d with %d error lines, want one' % (code,
                                                          len(errors))
    if not clear(errors[0]) or lines[0] != errors[0]:
        return 'exit %d with an unclear message' % code
    return None


def main(argv):
    keep = None
    jobs = max(1, min(4, os.cpu_count() or 1))
    oracle = False
    names = []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == '--keep':
            keep = argv[i + 1]
            i += 1
        elif a == '--jobs':
            jobs = int(argv[i + 1])
            i += 1
        elif a == '--oracle':
            oracle = True
        else:
            names.append(a)
        i += 1
    qimg = os.environ.get('QIMG')
    if not qimg:
        sys.exit('QIMG must point at the qimg binary')
    sanitized = os.environ.get('QIMG_SANITIZED', '0') == '1'
    if not shutil.which(make_hostile.QEMU_IMG):
        print('1..0 # SKIP qemu-img is not installed')
        return 0
    root = keep or tempfile.mkdtemp(prefix='qimg-hostile.')
    try:
        cases = make_hostile.build(os.path.join(root, 'corpus'))
        if names:
            cases = [c for c in cases if c['name'] in names]

        def work(c):
            """Run the case's commands in turn: [(cmd, argv, res, want)].
            Converting to qcow2 goes the same way as to raw up to the
            writes: it runs only when that conversion succeeded."""
            done = []
            cmds = c['only'] or DEFAULT_CMDS + [x for x in c['cmds']
                                                if x not in DEFAULT_CMDS]
            if c.get('key'):
                cmds = cmds + KEYED_CMDS
            if not c['only']:
                cmds = cmds + WRITE_CMDS.get(c['format'], [])
            scratch = tempfile.mkdtemp(dir=os.path.join(root, 'run'))
            for cmd in cmds:
                if cmd == 'convert-qcow2' and done and \
                        done[-1][0] == 'convert-raw' and \
                        done[-1][2]['code'] != 0:
                    continue
                argv = argv_for(qimg, c, cmd, scratch)
                res = run_one(argv, scratch, sanitized,
                              c.get('cpu') or CPU_TIMEOUT)
                want = None
                if oracle:
                    qargv = argv_for(make_hostile.QEMU_IMG, c, cmd, scratch)
                    want = run_one(qargv, scratch, False)
                done.append((cmd, argv, res, want))
            shutil.rmtree(scratch, ignore_errors=True)
            return done

        os.makedirs(os.path.join(root, 'run'), exist_ok=True)
        failed = 0
        n = 0
        # The plan comes last (TAP allows it): how many runs there are
        # depends on their results.
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            for c, done in zip(cases, ex.map(work, cases)):
                for cmd, argv, r, want in done:
                    n += 1
                    why = verdict(cmd, r)
                    ok = 'ok' if why is None else 'not ok'
                    print('%s %d - %s [%s]: %s' % (ok, n, c['name'], cmd,
                                                   c['desc']))
                    if why is not None:
                        failed += 1
                        print('# %s' % why)
                        for line in r['err'].splitlines()[:20]:
                            print('#   ' + line)
                    if keep or oracle:
                        first = r['err'].splitlines()[:1] or ['']
                        print('#   qimg exit %d, %.2f s cpu, %d MiB: %s' %
                              (r['code'], r['cpu'], r['rss'] >> 20,
                               first[0]))
                        if keep:
                            print('#   ' + ' '.join(argv))
                    if want is not None:
                        first = want['err'].splitlines()[:1] or ['']
                        print('#   qemu-img exit %d, %.2f s cpu, %d MiB%s: '
                              '%s' % (want['code'], want['cpu'],
                                      want['rss'] >> 20,
                                      ' (timeout)' if want['timed_out']
                                      else '', first[0]))
                    sys.stdout.flush()
        print('1..%d' % n)
        return 1 if failed else 0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main(sys.argv))
