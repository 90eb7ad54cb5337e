#!/usr/bin/env python3
"""qimg against qemu-img 7.2: the whole benchmark suite in one run.

Run it through bench/run.sh (which finds or builds qimg and installs what
is missing); see bench/README.md.  For every row (one qemu-img command
line) both tools run on the same input files, alternating which goes
first, with one untimed run of each first (page cache warm), then N timed
runs each; the table gives the medians of wall time, CPU time (user +
system) and peak RSS, taken from wait4() of the child.  Before every timed
run the outputs of every tool in the row are removed (and its inputs
copied afresh where it changes them) and the machine is synced, all
outside the timing, so no run pays for the writeback or the page cache
of another.  After the timed runs one more untimed run of each tool
leaves both tools' outputs side by side, and they are checked (qemu-img check, qemu-img compare, identical stdout and exit
code, ...): a row whose qimg output is wrong is reported WRONG, not timed.

Inputs are made once into the work directory and reused (a stamp file
per input says it is complete); every guest byte comes from fixed seeds,
and the ext4 image from a sorted walk of /usr with fixed times, UUID and
hash seed, so it is the same on every run on one machine.
"""
import argparse
import fnmatch
import hashlib
import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
GIB = 1 << 30

# Bump when an input's recipe changes, so a reused work dir remakes it.
INPUT_VERSION = "1"
LUKS_SECRET = "secret,id=sec0,data=qimg-bench"

# Fixed identity of the ext4 image (any constants do: they only have to
# stay the same between runs).
FS_UUID = "0b6bd1a7-1f9f-4b41-9a43-7a1c5d0d3f10"
FS_HASH_SEED = "5c3c5b1e-9c2b-4c55-8f3e-0b9f1f1e2a10"
FS_TIME = 1767225600  # 2026-01-01 00:00:00 UTC

GNU_TIME = "/usr/bin/time"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Wrong(Exception):
    """qimg's output is not equivalent to qemu-img's."""


class BenchError(Exception):
    """The bench itself failed (an input, or qemu-img)."""


def run(argv, quiet=True, check=True, capture=False):
    """Run an untimed helper command (input making, verification)."""
    r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE if capture or quiet else None,
                       stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise BenchError("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                               r.stderr.strip()[:500]))
    return r


def allocated(path):
    return os.stat(path).st_blocks * 512


# ---- Deterministic data ------------------------------------------------

WORDS = None


def text_bytes(length, seed):
    """Compressible, text-like bytes: numbered lines of random words."""
    global WORDS
    if WORDS is None:
        r = random.Random(42)
        letters = "abcdefghijklmnopqrstuvwxyz"
        WORDS = ["".join(r.choice(letters) for _ in range(r.randrange(2, 10)))
                 for _ in range(512)]
    rnd = random.Random(seed)
    out = []
    n = 0
    line = 0
    while n < length:
        ws = rnd.choices(WORDS, k=4096)
        chunk = []
        for i in range(0, 4096, 8):
            chunk.append("%08d %s\n" % (line, " ".join(ws[i:i + 8])))
            line += 1
        s = "".join(chunk).encode()
        out.append(s)
        n += len(s)
    return b"".join(out)[:length]


def random_bytes(length, seed):
    rnd = random.Random(seed)
    return b"".join(rnd.randbytes(min(4 * MIB, length - off))
                    for off in range(0, length, 4 * MIB))


def write_layout(path, size, layout):
    """A sparse raw file of SIZE bytes holding LAYOUT's pieces:
    (kind, offset, length, seed) with kind random, text or zeros (explicit
    zero bytes, stored as data); everything else is a hole."""
    with open(path, "wb") as f:
        f.truncate(size)
        for kind, off, length, seed in layout:
            if kind == "random":
                data = random_bytes(length, seed)
            elif kind == "text":
                data = text_bytes(length, seed)
            else:
                data = bytes(length)
            os.pwrite(f.fileno(), data, off)


def synthetic_layout(size, small_step):
    """Random, text and zero-filled extents at fixed fractions of SIZE (in
    units of SIZE/64: 3 random, 2 text, 1 zeros, and a short random
    extent at the end), plus a 4 KiB write every SMALL_STEP bytes."""
    u = size // 64
    layout = [
        ("random", 0, u, 1),
        ("text", 8 * u, u, 2),
        ("random", 16 * u, u, 3),
        ("zeros", 24 * u, u, 0),
        ("text", 32 * u, u, 4),
        ("random", 48 * u, u, 5),
        ("random", size - max(u // 128, 4096), max(u // 128, 4096), 6),
    ]
    for i, off in enumerate(range(small_step // 2, size, small_step)):
        layout.append(("random", off, 4096, 100 + i))
    return layout


# ---- Inputs -----------------------------------------------------------

class Inputs:
    """The input files, made on demand and reused when their stamp is
    there."""

    def __init__(self, w, quick, qemu_img, qemu_io):
        self.dir = os.path.join(w, "in")
        os.makedirs(self.dir, exist_ok=True)
        self.quick = quick
        self.qemu_img = qemu_img
        self.qemu_io = qemu_io
        self.made = set()

    def path(self, name):
        return os.path.join(self.dir, name)

    def need(self, name):
        if name in self.made:
            return
        deps = {
            "tree.qcow2": ["tree.raw"],
            "tree.vdi": ["tree.raw"],
            "tree.vmdk": ["tree.raw"],
            "tree.vhdx": ["tree.raw"],
            "sparse.qcow2": ["sparse.raw"],
            "luks.qcow2": ["luks.raw"],
            "chain": ["tree.qcow2"],
        }
        for d in deps.get(name, []):
            self.need(d)
        stamp = os.path.join(self.dir, "." + name + ".done")
        want = "%s %s\n" % (INPUT_VERSION, "quick" if self.quick else "full")
        if os.path.exists(stamp) and open(stamp).read() == want:
            self.made.add(name)
            return
        log("making input %s" % name)
        t0 = time.time()
        getattr(self, "make_" + name.replace(".", "_"))()
        with open(stamp, "w") as f:
            f.write(want)
        log("  %s: %.1f s" % (name, time.time() - t0))
        self.made.add(name)

    def qemu_convert(self, src, fmt, dst, opts=()):
        tmp = dst + ".tmp"
        run([self.qemu_img, "convert", "-q", "-O", fmt, *opts, src, tmp])
        os.rename(tmp, dst)

    # The ext4 image: a real directory tree (binaries, libraries, text,
    # locales, icons) of about 1 GiB, in a 1.5 GiB file system.
    def make_tree_raw(self):
        dst = self.path("tree.raw")
        if self.quick:
            size = 4 * MIB
            write_layout(dst + ".tmp", size,
                         synthetic_layout(size, 512 * 1024))
            os.rename(dst + ".tmp", dst)
            return
        for tool in ("mkfs.ext4", "debugfs", "e2fsck"):
            if shutil.which(tool) is None:
                raise BenchError("%s is missing (e2fsprogs)" % tool)
        stage = self.path("tree-stage")
        shutil.rmtree(stage, ignore_errors=True)
        os.makedirs(stage)
        # Budgets per source directory, filled in sorted order; a file
        # that does not fit is skipped and the walk goes on.
        total = 0
        for top, budget in (("/usr/lib", 640 * MIB),
                            ("/usr/share", 384 * MIB)):
            used = 0
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                rel = os.path.relpath(dirpath, "/usr")
                for name in sorted(filenames):
                    src = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(src)
                    except OSError:
                        continue
                    d = os.path.join(stage, rel)
                    if stat.S_ISLNK(st.st_mode):
                        os.makedirs(d, exist_ok=True)
                        os.symlink(os.readlink(src), os.path.join(d, name))
                    elif stat.S_ISREG(st.st_mode):
                        if used + st.st_size > budget:
                            continue
                        os.makedirs(d, exist_ok=True)
                        try:
                            shutil.copyfile(src, os.path.join(d, name))
                        except OSError:
                            continue
                        os.chmod(os.path.join(d, name),
                                 stat.S_IMODE(st.st_mode))
                        used += st.st_size
            total += used
        for dirpath, dirnames, filenames in os.walk(stage, topdown=False):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (FS_TIME, FS_TIME),
                         follow_symlinks=False)
        os.utime(stage, (FS_TIME, FS_TIME))
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FS_TIME))
        tmp = dst + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        r = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "qimgbench",
             "-U", FS_UUID, "-E",
             "hash_seed=%s,root_owner=0:0" % FS_HASH_SEED,
             "-d", stage, tmp, "1536M"], env=env, capture_output=True,
            text=True)
        if r.returncode != 0:
            raise BenchError("mkfs.ext4: " + r.stderr.strip())
        # mke2fs -d copies each inode's ctime from the staging copy, which
        # is now; set every inode's ctime to the fixed time as well.
        r = run(["debugfs", "-R", "stats", tmp], capture=True)
        count = 0
        for line in r.stdout.splitlines():
            if line.startswith("Inode count:"):
                count = int(line.split(":")[1])
        if count <= 0:
            raise BenchError("debugfs stats: no inode count")
        cmds = os.path.join(self.dir, "ctime.cmds")
        with open(cmds, "w") as f:
            for ino in range(1, count + 1):
                f.write("sif <%d> ctime @%d\n" % (ino, FS_TIME))
        r = subprocess.run(["debugfs", "-w", "-f", cmds, tmp], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("debugfs: " + r.stderr.strip()[:500])
        os.unlink(cmds)
        run(["e2fsck", "-fn", tmp])
        shutil.rmtree(stage)
        os.rename(tmp, dst)
        # The digest goes into the report: the image depends on what /usr
        # holds, so two runs compare only when it is the same.
        with open(dst + ".sha256", "w") as f:
            f.write(file_sha256(dst) + "\n")
        log("  ext4 tree: %d MiB of files" % (total >> 20))

    def make_tree_qcow2(self):
        self.qemu_convert(self.path("tree.raw"), "qcow2",
                          self.path("tree.qcow2"), ["-f", "raw"])

    def make_tree_vdi(self):
        self.qemu_convert(self.path("tree.raw"), "vdi",
                          self.path("tree.vdi"), ["-f", "raw"])

    def make_tree_vmdk(self):
        self.qemu_convert(self.path("tree.raw"), "vmdk",
                          self.path("tree.vmdk"), ["-f", "raw"])

    def make_tree_vhdx(self):
        self.qemu_convert(self.path("tree.raw"), "vhdx",
                          self.path("tree.vhdx"), ["-f", "raw"])

    # 8 GiB sparse: random, text and zero-filled extents, 4 KiB writes
    # every 16 MiB, holes elsewhere (quick: 32 MiB).
    def make_sparse_raw(self):
        size = 16 * MIB if self.quick else 8 * GIB
        step = 512 * 1024 if self.quick else 16 * MIB
        dst = self.path("sparse.raw")
        write_layout(dst + ".tmp", size, synthetic_layout(size, step))
        os.rename(dst + ".tmp", dst)

    # A LUKS-encrypted qcow2 (QEMU's default cipher and iter-time: the
    # PBKDF2 of its key slot takes qemu-img about 2 s to unlock) over a
    # disk of random, compressible and zero regions.
    def make_luks_raw(self):
        size = 4 * MIB if self.quick else 256 * MIB
        dst = self.path("luks.raw")
        write_layout(dst + ".tmp", size, synthetic_layout(size, size // 16))
        os.rename(dst + ".tmp", dst)

    def make_luks_qcow2(self):
        opts = "encrypt.format=luks,encrypt.key-secret=sec0"
        if self.quick:
            opts += ",encrypt.iter-time=10"
        # qemu-img fails a PBKDF2 trial that its clock saw take 0 ms
        # ("Unable to get accurate CPU usage"), at short iter-times
        # now and then, and on a loaded machine two runs in three: try
        # again (each failure costs milliseconds).
        for attempt in range(40):
            try:
                self.qemu_convert(self.path("luks.raw"), "qcow2",
                                  self.path("luks.qcow2"),
                                  ["--object", LUKS_SECRET, "-o", opts])
                return
            except BenchError as e:
                if "accurate CPU usage" not in str(e) or attempt == 39:
                    raise

    def make_sparse_qcow2(self):
        self.qemu_convert(self.path("sparse.raw"), "qcow2",
                          self.path("sparse.qcow2"), ["-f", "raw"])

    def qemu_io_writes(self, img, writes, tmpdir):
        """writes: (kind, offset, length, seed), kind random (data from a
        seed), pattern (one byte value = seed) or zero (write -z)."""
        cmds = []
        for i, (kind, off, length, seed) in enumerate(writes):
            if kind == "random":
                f = os.path.join(tmpdir, "w%d.bin" % i)
                with open(f, "wb") as fh:
                    fh.write(random_bytes(length, seed))
                cmds += ["-c", "write -q -s %s %d %d" % (f, off, length)]
            elif kind == "pattern":
                cmds += ["-c", "write -q -P %d %d %d" % (seed, off, length)]
            else:
                cmds += ["-c", "write -q -z %d %d" % (off, length)]
        run([self.qemu_io, "-f", "qcow2", *cmds, img])
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))

    def overlay_writes(self, size, seed, big, nbig, nsmall, nzero):
        """NBIG random writes of BIG bytes, NSMALL 4 KiB pattern writes and
        NZERO zeroed ranges of BIG/2, at seeded aligned offsets."""
        rnd = random.Random(seed)
        out = []
        for off in sorted(rnd.sample(range(size // big), nbig)):
            out.append(("random", off * big, big, rnd.randrange(1 << 30)))
        for off in sorted(rnd.sample(range(size // 4096), nsmall)):
            out.append(("pattern", off * 4096, 4096, rnd.randrange(1, 256)))
        for off in sorted(rnd.sample(range(size // big), nzero)):
            out.append(("zero", off * big, big // 2, 0))
        return out

    # A backing chain: base (the tree's qcow2, hard-linked) <- mid <- top,
    # each overlay with big random writes, small writes and zeroed ranges.
    def make_chain(self):
        d = self.path("chain")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        base = os.path.join(d, "base.qcow2")
        try:
            os.link(self.path("tree.qcow2"), base)
        except OSError:
            shutil.copyfile(self.path("tree.qcow2"), base)
        size = os.path.getsize(self.path("tree.raw"))
        tmp = tempfile.mkdtemp(dir=self.dir)
        if self.quick:
            plans = [(256 * 1024, 4, 32, 1), (256 * 1024, 3, 16, 1)]
        else:
            plans = [(2 * MIB, 64, 2048, 8), (2 * MIB, 32, 1024, 4)]
        for name, backing, seed, plan in (("mid", "base", 11, plans[0]),
                                          ("top", "mid", 12, plans[1])):
            img = os.path.join(d, name + ".qcow2")
            run([self.qemu_img, "create", "-q", "-f", "qcow2", "-b",
                 backing + ".qcow2", "-F", "qcow2", img])
            self.qemu_io_writes(img, self.overlay_writes(size, seed, *plan),
                                tmp)
        os.rmdir(tmp)

    # An image with two internal snapshots and different data in each.
    def make_snap_qcow2(self):
        size = 16 * MIB if self.quick else GIB
        big = 256 * 1024 if self.quick else MIB
        dst = self.path("snap.qcow2")
        tmpimg = dst + ".tmp"
        run([self.qemu_img, "create", "-q", "-f", "qcow2", tmpimg,
             str(size)])
        tmp = tempfile.mkdtemp(dir=self.dir)
        phases = [(21, 64, 512, 2), (22, 32, 256, 2), (23, 16, 128, 1)]
        if self.quick:
            phases = [(21, 8, 32, 1), (22, 4, 16, 1), (23, 2, 8, 1)]
        for i, (seed, nbig, nsmall, nzero) in enumerate(phases):
            self.qemu_io_writes(tmpimg, self.overlay_writes(
                size, seed, big, nbig, nsmall, nzero), tmp)
            if i < 2:
                run([self.qemu_img, "snapshot", "-c", "s%d" % (i + 1),
                     tmpimg])
        os.rmdir(tmp)
        os.rename(tmpimg, dst)


# ---- Timing -----------------------------------------------------------

class Sample:
    def __init__(self, wall, cpu, rss, rc):
        self.wall, self.cpu, self.rss, self.rc = wall, cpu, rss, rc


def spawn_timed(argv, out, err):
    """Run ARGV with stdout to OUT and stderr to ERR: wall time, CPU time
    (user + system, all threads) and peak RSS.

    ARGV runs under GNU time, for the peak RSS alone: a process started
    from this one (vfork or fork) has this interpreter's RSS in its own
    ru_maxrss, kept across exec, while GNU time's child starts from a
    small process.  The CPU time is wait4()'s (GNU time's own is about a
    millisecond; its %U/%S have only two decimals)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, out, flags, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, err, flags, 0o644)]
    rss_file = out + ".rss"
    full = [GNU_TIME, "-f", "%M", "-o", rss_file, "--"] + argv
    t0 = time.perf_counter()
    pid = os.posix_spawn(GNU_TIME, full, os.environ, file_actions=actions)
    _, status, ru = os.wait4(pid, 0)
    t1 = time.perf_counter()
    rc = os.waitstatus_to_exitcode(status)
    rss = 0.0
    try:
        with open(rss_file) as f:
            # The last line: before it GNU time may say "Command exited
            # with non-zero status N".
            rss = int(f.read().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    os.unlink(rss_file)
    return Sample(t1 - t0, ru.ru_utime + ru.ru_stime, rss, rc)


class Row:
    """One command line.  argv(d) gives the arguments after the program
    name, with outputs under D (the tool's own directory); prep(d) readies
    D before every run (default: empty it); verify(dirs) checks the
    outputs (dirs: tool name -> directory) and raises Wrong; limit(d) is
    the argv of the copy-limit command for rows that write raw bytes."""

    def __init__(self, key, label, needs, argv, prep=None, verify=None,
                 same_stdout=False, limit=None, rcs=(0,)):
        self.key, self.label, self.needs = key, label, needs
        self.argv, self.prep, self.verify = argv, prep, verify
        self.same_stdout, self.limit, self.rcs = same_stdout, limit, rcs


def empty_dir(d):
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


class Suite:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.qimg = os.environ["QIMG"]
        self.qemu_img = os.environ.get("QEMU_IMG", "qemu-img")
        self.qemu_io = os.environ.get("QEMU_IO", "qemu-io")
        self.w = args.workdir
        self.inp = Inputs(self.w, self.quick, self.qemu_img, self.qemu_io)
        self.outdir = os.path.join(self.w, "out")
        self.results = []
        self.failed = []
        self.loads = []

    def i(self, name):
        return self.inp.path(name)

    # -- verification helpers (untimed, qemu-img as the judge) --

    def check(self, img):
        """qemu-img check of a qcow2 image must be clean; returns its JSON
        (allocated-clusters, compressed-clusters, ...)."""
        r = run([self.qemu_img, "check", "--output=json", "-f", "qcow2",
                 img], check=False, capture=True)
        if r.returncode != 0:
            raise Wrong("qemu-img check %s: exit %d %s" % (
                os.path.basename(img), r.returncode, r.stderr.strip()))
        return json.loads(r.stdout)

    def compare(self, a, b, fa=None, fb=None):
        argv = [self.qemu_img, "compare", "-q"]
        if fa:
            argv += ["-f", fa]
        if fb:
            argv += ["-F", fb]
        r = run(argv + [a, b], check=False)
        if r.returncode != 0:
            raise Wrong("qemu-img compare %s %s: exit %d %s" % (
                a, b, r.returncode, r.stderr.strip()))

    def snapshot_tags(self, img):
        r = run([self.qemu_img, "info", "--output=json", "-U", img],
                capture=True)
        info = json.loads(r.stdout)
        return [(s["id"], s["name"], s["vm-state-size"], s["vm-clock-sec"],
                 s["vm-clock-nsec"]) for s in info.get("snapshots", [])]

    # -- the rows --

    def rows(self):
        i = self.i
        q = self
        rows = []

        def convert(key, label, need, src, sfmt, ofmt, opts=(),
                    limit_src=None, compressed=False):
            out_name = "out." + ofmt

            def argv(d):
                return ["convert", "-f", sfmt, "-O", ofmt, *opts, src,
                        os.path.join(d, out_name)]

            def verify(dirs):
                # qemu-img's own outputs are the reference: only qimg's
                # are judged (here and in every verify below).
                out = os.path.join(dirs["qimg"], out_name)
                ref = os.path.join(dirs["qemu-img"], out_name)
                if ofmt == "qcow2":
                    c = q.check(out)
                    if compressed:
                        want = q.check(ref).get("compressed-clusters", 0)
                        got = c.get("compressed-clusters", 0)
                        if got < want * 0.95 or want == 0:
                            raise Wrong("%d compressed clusters, qemu-img"
                                        " %d" % (got, want))
                q.compare(src, out, sfmt, ofmt)
                qa, ia = allocated(ref), allocated(out)
                # A target much bigger than qemu-img's is a fast wrong
                # answer: zeros written as data, say.
                if ia > qa * 1.05 + 256 * 1024:
                    raise Wrong("qimg's output allocates %d KiB, qemu-img's"
                                " %d KiB" % (ia >> 10, qa >> 10))

            limit = None
            if limit_src:
                def limit(d):
                    return ["cp", "--sparse=always", limit_src,
                            os.path.join(d, out_name)]
            rows.append(Row(key, label, need, argv, verify=verify,
                            limit=limit))

        tree_raw, tree_q = i("tree.raw"), i("tree.qcow2")
        sp_raw, sp_q = i("sparse.raw"), i("sparse.qcow2")
        chain = i("chain")
        top = os.path.join(chain, "top.qcow2")
        mid = os.path.join(chain, "mid.qcow2")
        snap = i("snap.qcow2")
        t = "synthetic" if self.quick else "ext4"
        s = "sparse"

        convert("convert-raw-qcow2", "convert raw -> qcow2 (%s)" % t,
                ["tree.raw"], tree_raw, "raw", "qcow2")
        convert("convert-qcow2-raw", "convert qcow2 -> raw (%s)" % t,
                ["tree.qcow2"], tree_q, "qcow2", "raw", limit_src=tree_raw)
        convert("convert-qcow2-qcow2", "convert qcow2 -> qcow2 (%s)" % t,
                ["tree.qcow2"], tree_q, "qcow2", "qcow2")
        convert("convert-zlib", "convert -c zlib qcow2 -> qcow2 (%s)" % t,
                ["tree.qcow2"], tree_q, "qcow2", "qcow2", ["-c"],
                compressed=True)
        convert("convert-zstd", "convert -c zstd qcow2 -> qcow2 (%s)" % t,
                ["tree.qcow2"], tree_q, "qcow2", "qcow2",
                ["-c", "-o", "compression_type=zstd"], compressed=True)
        for fmt in ("vdi", "vmdk", "vhdx"):
            convert("convert-%s-qcow2" % fmt,
                    "convert %s -> qcow2 (%s)" % (fmt, t), ["tree." + fmt],
                    i("tree." + fmt), fmt, "qcow2")
        convert("convert-sparse-raw-qcow2", "convert raw -> qcow2 (%s)" % s,
                ["sparse.raw"], sp_raw, "raw", "qcow2")
        convert("convert-sparse-qcow2-raw", "convert qcow2 -> raw (%s)" % s,
                ["sparse.qcow2"], sp_q, "qcow2", "raw", limit_src=sp_raw)
        convert("convert-sparse-raw-raw", "convert raw -> raw (%s)" % s,
                ["sparse.raw"], sp_raw, "raw", "raw", limit_src=sp_raw)
        convert("convert-chain-qcow2", "convert chain top -> qcow2",
                ["chain"], top, "qcow2", "qcow2")

        # An encrypted source: the key slot's PBKDF2, then decryption.
        luks_q, luks_raw = i("luks.qcow2"), i("luks.raw")

        def verify_luks(dirs):
            out = os.path.join(dirs["qimg"], "out.raw")
            q.compare(luks_raw, out, "raw", "raw")

        rows.append(Row("convert-luks-raw",
                        "convert qcow2 (LUKS) -> raw",
                        ["luks.qcow2"],
                        lambda d: ["convert", "--object", LUKS_SECRET,
                                   "--image-opts",
                                   "driver=qcow2,file.filename=%s,"
                                   "encrypt.key-secret=sec0" % luks_q,
                                   "-O", "raw", os.path.join(d, "out.raw")],
                        verify=verify_luks))

        # Read-only commands: same stdout and exit code as qemu-img.
        def ro(key, label, need, argv, rcs=(0,)):
            rows.append(Row(key, label, need, lambda d: argv,
                            same_stdout=True, rcs=rcs))

        ro("info-snap", "info (image with snapshots)", ["snap.qcow2"],
           ["info", snap])
        ro("info-chain", "info --backing-chain --output=json (chain)",
           ["chain"], ["info", "--backing-chain", "--output=json", top])
        ro("check-tree", "check (%s qcow2)" % t, ["tree.qcow2"],
           ["check", tree_q])
        ro("check-snap", "check (image with snapshots)", ["snap.qcow2"],
           ["check", snap])
        ro("map-chain", "map --output=json (chain)", ["chain"],
           ["map", "--output=json", top])
        ro("map-sparse", "map (%s qcow2)" % s, ["sparse.qcow2"],
           ["map", sp_q])
        ro("compare-tree", "compare qcow2 raw (%s)" % t, ["tree.qcow2"],
           ["compare", "-f", "qcow2", "-F", "raw", tree_q, tree_raw])
        ro("compare-sparse", "compare qcow2 raw (%s)" % s, ["sparse.qcow2"],
           ["compare", "-f", "qcow2", "-F", "raw", sp_q, sp_raw])
        ro("compare-chain", "compare chain top mid (differ)", ["chain"],
           ["compare", top, mid], rcs=(1,))
        ro("measure-tree", "measure -O qcow2 (%s raw)" % t, ["tree.raw"],
           ["measure", "-O", "qcow2", "-f", "raw", tree_raw])
        ro("measure-chain", "measure -O qcow2 (chain)", ["chain"],
           ["measure", "-O", "qcow2", top])

        # Commands that change an image: fresh copies before every run.
        def copy(src, d, name=None, link=False):
            dst = os.path.join(d, name or os.path.basename(src))
            if link:
                os.symlink(src, dst)
            else:
                run(["cp", "--sparse=always", src, dst])
            return dst

        def prep_chain(copies):
            def prep(d):
                empty_dir(d)
                for n in ("base", "mid", "top"):
                    copy(os.path.join(chain, n + ".qcow2"), d,
                         link=n not in copies)
            return prep

        def verify_commit(dirs):
            d = dirs["qimg"]
            q.check(os.path.join(d, "mid.qcow2"))
            q.check(os.path.join(d, "top.qcow2"))
            # mid now shows what top showed.
            q.compare(top, os.path.join(d, "mid.qcow2"))
            for n in ("mid", "top"):
                q.compare(os.path.join(dirs["qemu-img"], n + ".qcow2"),
                          os.path.join(dirs["qimg"], n + ".qcow2"))

        rows.append(Row("commit", "commit (top into mid)", ["chain"],
                        lambda d: ["commit", os.path.join(d, "top.qcow2")],
                        prep=prep_chain(("mid", "top")),
                        verify=verify_commit, same_stdout=True))

        def verify_rebase(dirs):
            img = os.path.join(dirs["qimg"], "top.qcow2")
            q.check(img)
            # The same disk as before, now over base.
            q.compare(top, img)
            info = json.loads(run([q.qemu_img, "info", "--output=json",
                                   img], capture=True).stdout)
            if info.get("backing-filename") != "base.qcow2":
                raise Wrong("backing file after rebase: %s" %
                            info.get("backing-filename"))

        rows.append(Row("rebase", "rebase -b base (top: mid -> base)",
                        ["chain"],
                        lambda d: ["rebase", "-b", "base.qcow2", "-F",
                                   "qcow2", os.path.join(d, "top.qcow2")],
                        prep=prep_chain(("top",)), verify=verify_rebase,
                        same_stdout=True))

        def prep_snap(d):
            empty_dir(d)
            copy(snap, d)

        def verify_snap(dirs):
            # The same snapshot table (but the dates) and the same disk.
            tags = {tool: q.snapshot_tags(os.path.join(d, "snap.qcow2"))
                    for tool, d in dirs.items()}
            img = os.path.join(dirs["qimg"], "snap.qcow2")
            q.check(img)
            if tags["qemu-img"] != tags["qimg"]:
                raise Wrong("snapshots: qemu-img %s, qimg %s" %
                            (tags["qemu-img"], tags["qimg"]))
            q.compare(os.path.join(dirs["qemu-img"], "snap.qcow2"), img)

        for key, label, opt in (
                ("snapshot-create", "snapshot -c (create)", "-c"),
                ("snapshot-delete", "snapshot -d (delete s1)", "-d"),
                ("snapshot-apply", "snapshot -a (apply s1)", "-a")):
            name = "bench" if opt == "-c" else "s1"
            rows.append(Row(key, label, ["snap.qcow2"],
                            lambda d, opt=opt, name=name: [
                                "snapshot", opt, name,
                                os.path.join(d, "snap.qcow2")],
                            prep=prep_snap, verify=verify_snap,
                            same_stdout=True))

        def create(key, mode, size):
            def verify(dirs):
                imgs = {tool: os.path.join(d, "img.qcow2")
                        for tool, d in dirs.items()}
                got = q.check(imgs["qimg"]).get("allocated-clusters", 0)
                want = q.check(imgs["qemu-img"]).get("allocated-clusters",
                                                     0)
                if got != want:
                    raise Wrong("%s allocated clusters, qemu-img %s" % (
                        got, want))
                if not sparse_same(imgs["qemu-img"], imgs["qimg"]):
                    # Not the same bytes: at least the same disk.
                    q.compare(imgs["qemu-img"], imgs["qimg"])
                if mode == "falloc" and \
                        allocated(imgs["qimg"]) < allocated(imgs["qemu-img"]):
                    raise Wrong("qimg allocated %d MiB, qemu-img %d MiB" % (
                        allocated(imgs["qimg"]) >> 20,
                        allocated(imgs["qemu-img"]) >> 20))
            rows.append(Row(key, "create -o preallocation=%s %s" %
                            (mode, size), [],
                            lambda d: ["create", "-q", "-f", "qcow2", "-o",
                                       "preallocation=" + mode,
                                       os.path.join(d, "img.qcow2"), size],
                            verify=verify))

        create("create-metadata", "metadata", "1G" if self.quick else "100G")
        create("create-falloc", "falloc", "16M" if self.quick else "8G")
        # Quick rows first, then the converts, the compressed ones last
        # (they take longest): a partial table of a long run on a busy
        # machine then has every kind of command.
        def rank(r):
            if r.key in ("convert-zlib", "convert-zstd"):
                return 2
            return 1 if r.key.startswith("convert-") else 0
        return sorted(rows, key=rank)

    # -- running --

    def run_row(self, row):
        # Every timed run starts with only its own inputs and outputs on
        # disk (the other tools' outputs of this row removed) and after a
        # sync.  Keeping the other tools' 1.2 GB outputs cached made the
        # write-heavy rows vary 2-10x on a VM with free page reporting
        # (virtio-balloon): page cache taken from memory the host had
        # reclaimed is faulted back in at about 5 s per GiB, charged as
        # system time to whichever tool allocated it.  With only one
        # output at a time, the same pages are freed and retaken by
        # every run alike.
        for n in row.needs:
            self.inp.need(n)
        tools = [("qemu-img", self.qemu_img), ("qimg", self.qimg)]
        if row.limit:
            tools.append(("cp", None))
        dirs = {}
        for name, _ in tools:
            d = os.path.join(self.outdir, name)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            dirs[name] = d
        samples = {name: [] for name, _ in tools}
        errors = {}

        def once(name, prog, timed, alone=True):
            d = dirs[name]
            if alone:
                # Only this run's files in the page cache: see run_row's
                # comment.
                for other in dirs.values():
                    if other != d:
                        empty_dir(other)
            if row.prep:
                row.prep(d)
            else:
                empty_dir(d)
            if name == "cp":
                argv = row.limit(d)
            else:
                argv = [prog] + row.argv(d)
            if timed and not self.quick:
                os.sync()
            smp = spawn_timed(argv, d + ".stdout", d + ".stderr")
            if smp.rc not in row.rcs:
                with open(d + ".stderr") as f:
                    msg = f.read().strip().splitlines()
                errors[name] = "exit %d: %s" % (smp.rc,
                                                msg[0] if msg else "")
                return False
            if timed:
                samples[name].append(smp)
            return True

        live = list(tools)
        if not self.quick:
            # Warm the page cache, untimed; a failure drops the tool.
            live = [t for t in tools if once(t[0], t[1], False)]
        runs = 1 if self.quick else self.args.runs
        for k in range(runs):
            # Rotate which tool goes first.
            order = live[k % len(live):] + live[:k % len(live)] \
                if live else []
            for name, prog in order:
                if name in errors:
                    continue
                # --quick's single runs are also the ones checked.
                once(name, prog, True, alone=not self.quick)
        if not self.quick:
            # The timed runs each left only their own outputs; make both
            # tools' outputs side by side for the checks below (untimed).
            for name, prog in live:
                if name not in errors and name != "cp":
                    once(name, prog, False, alone=False)
        if "qemu-img" in errors or "cp" in errors:
            raise BenchError("%s: %s" % (row.key, errors))
        status = "ok"
        if "qimg" in errors:
            status = "FAILED (%s)" % errors["qimg"]
        else:
            # Keep only the stdout of the last runs: that is compared.
            try:
                if row.same_stdout:
                    a = open(dirs["qemu-img"] + ".stdout", "rb").read()
                    b = open(dirs["qimg"] + ".stdout", "rb").read()
                    if a != b:
                        raise Wrong("stdout differs from qemu-img's "
                                    "(%d vs %d bytes)" % (len(a), len(b)))
                if row.verify:
                    row.verify({n: dirs[n] for n in ("qemu-img", "qimg")})
            except Wrong as e:
                status = "WRONG (%s)" % e
        if status != "ok":
            self.failed.append((row, status))
        self.results.append((row, samples, status))
        if not self.args.keep:
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
        return status

    def main(self):
        rows = self.rows()
        if self.args.only:
            pats = self.args.only.split(",")
            rows = [r for r in rows if any(
                fnmatch.fnmatch(r.key, p) or p in r.key for p in pats)]
            if not rows:
                raise BenchError("--only %s: no such row" % self.args.only)
        if self.args.make_inputs:
            for row in rows:
                for n in row.needs:
                    self.inp.need(n)
            return 0
        load0 = open("/proc/loadavg").read().split()[:3]
        t0 = time.time()
        self.loads = []
        for n, row in enumerate(rows):
            log("[%d/%d] %s" % (n + 1, len(rows), row.key))
            t1 = time.time()
            self.loads.append(float(open("/proc/loadavg").read().split()[0]))
            status = self.run_row(row)
            log("  %s (%.1f s)" % (status, time.time() - t1))
            if n + 1 < len(rows):
                # A partial table after every row, for long runs.
                self.report(load0, None, time.time() - t0,
                            "partial: %d of %d rows" % (n + 1, len(rows)))
        load1 = open("/proc/loadavg").read().split()[:3]
        self.report(load0, load1, time.time() - t0)
        return 1 if self.failed else 0

    # -- report --

    def machine(self):
        model = "?"
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = 0
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
        fs = run(["findmnt", "-n", "-o", "FSTYPE", "-T", self.w],
                 check=False, capture=True).stdout.strip() or "?"
        return ("nproc %d, CPU \"%s\", %.1f GiB RAM, Linux %s, %s (%s)" % (
            os.cpu_count(), model, mem / GIB, os.uname().release, fs,
            self.w))

    def inputs_line(self):
        parts = []
        for name in sorted(self.inp.made):
            p = self.i(name)
            if name == "chain":
                for n in ("mid", "top"):
                    f = os.path.join(p, n + ".qcow2")
                    parts.append("chain %s %.0f MiB" % (n,
                                                        allocated(f) / MIB))
                continue
            part = "%s %.0f MiB virtual, %.0f MiB allocated" % (
                name, virtual_size(self.qemu_img, p) / MIB,
                allocated(p) / MIB)
            if os.path.exists(p + ".sha256"):
                part += " (sha256 %s...)" % open(p + ".sha256").read()[:16]
            parts.append(part)
        return "; ".join(parts)

    def report(self, load0, load1, elapsed, partial=None):
        runs = 1 if self.quick else self.args.runs
        head = run(["git", "-C", os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "rev-parse", "--short", "HEAD"],
            check=False, capture=True).stdout.strip() or "?"
        qv = run([self.qemu_img, "--version"], capture=True).stdout
        qv = qv.splitlines()[0] if qv else "?"
        lines = []
        lines.append("bench/run.sh%s: %s, qimg at %s vs %s; %s" % (
            " --quick" if self.quick else "",
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), head, qv,
            "one run each (no timing meaning)" if self.quick else
            "median of %d alternating runs each after one untimed run" %
            runs))
        lines.append("")
        lines.append("Machine: " + self.machine() + ".")
        if partial:
            lines.append("(%s)" % partial)
        else:
            lines.append("Load average (1/5/15 min): %s at the start, %s at"
                         " the end; suite wall time %.0f s." % (
                             "/".join(load0), "/".join(load1), elapsed))
        if self.loads:
            lines.append("1-minute load average at the start of each row: "
                         "min %.1f, median %.1f, max %.1f." % (
                             min(self.loads), statistics.median(self.loads),
                             max(self.loads)))
        lines.append("")
        lines.append("Inputs: " + self.inputs_line() + ".")
        lines.append("")
        lines.append("| command | qemu-img (s) | qimg (s) | ratio | "
                     "CPU qemu-img (s) | CPU qimg (s) | CPU ratio | "
                     "RSS qemu-img (MiB) | RSS qimg (MiB) | "
                     "fastest qemu-img / qimg (s) | ratio of fastest |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                     "---:|")
        for row, samples, status in self.results:
            def med(tool, attr):
                v = [getattr(x, attr) for x in samples.get(tool, [])]
                return statistics.median(v) if v else None

            def best(tool):
                v = [x.wall for x in samples.get(tool, [])]
                return min(v) if v else None
            qw, iw = med("qemu-img", "wall"), med("qimg", "wall")
            qc, ic = med("qemu-img", "cpu"), med("qimg", "cpu")
            qr, ir = med("qemu-img", "rss"), med("qimg", "rss")
            if status != "ok":
                lines.append("| %s | %s | %s | | | | | | | | |" % (
                    row.label, fmt(qw, 3), status))
                continue
            qb, ib = best("qemu-img"), best("qimg")
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | "
                         "%s / %s | %s |" % (
                             row.label, fmt(qw, 3), fmt(iw, 3), ratio(qw, iw),
                             fmt(qc, 3), fmt(ic, 3), ratio(qc, ic),
                             fmt(qr, 1), fmt(ir, 1), fmt(qb, 3), fmt(ib, 3),
                             ratio(qb, ib)))
            if row.limit:
                cw, cc = med("cp", "wall"), med("cp", "cpu")
                cr = med("cp", "rss")
                lines.append("| &nbsp;&nbsp;limit: cp --sparse=always of "
                             "the same raw bytes | | %s | | | %s | | | %s |"
                             " %s | |" % (fmt(cw, 3), fmt(cc, 3), fmt(cr, 1),
                                         fmt(best("cp"), 3)))
        lines.append("")
        lines.append("ratio = qemu-img / qimg (above 1: qimg is faster), "
                     "of the medians; the last two columns are the fastest "
                     "run of each tool, which filters noise that only ever "
                     "adds time (on a VM: page cache faulted back in from "
                     "the host, see run_row). "
                     "The limit lines time cp --sparse=always copying the "
                     "raw file holding the same bytes (what the page cache "
                     "allows for a raw target).")
        if self.failed:
            lines.append("")
            for row, status in self.failed:
                lines.append("- %s: %s" % (row.key, status))
        text = "\n".join(lines) + "\n"
        if not partial:
            print(text, end="")
        with open(os.path.join(self.w, "results.md"), "w") as f:
            f.write(text)


def fmt(v, digits):
    return "—" if v is None else "%.*f" % (digits, v)


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return "—"
    return "%.2f" % (a / b)


def virtual_size(qemu_img, path):
    r = run([qemu_img, "info", "--output=json", "-U", path], capture=True)
    return json.loads(r.stdout)["virtual-size"]


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                return h.hexdigest()
            h.update(b)


def sparse_same(a, b):
    """The files hold the same bytes; only ranges where either has data
    (SEEK_DATA) are read, everything else is a hole in both."""
    fds = [os.open(p, os.O_RDONLY) for p in (a, b)]
    try:
        sizes = [os.fstat(fd).st_size for fd in fds]
        if sizes[0] != sizes[1]:
            return False
        ranges = []
        for fd in fds:
            off = 0
            while off < sizes[0]:
                try:
                    d = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
                h = os.lseek(fd, d, os.SEEK_HOLE)
                ranges.append((d, h))
                off = h
        for start, end in sorted(ranges):
            off = start
            while off < end:
                n = min(end - off, 4 * MIB)
                if os.pread(fds[0], n, off) != os.pread(fds[1], n, off):
                    return False
                off += n
        return True
    finally:
        for fd in fds:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny inputs, one run per row (checks it works)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", help="comma-separated row keys or patterns")
    ap.add_argument("--list", action="store_true", help="list the rows")
    ap.add_argument("--make-inputs", action="store_true",
                    help="only make the inputs (of the --only rows)")
    ap.add_argument("--workdir", help="inputs and outputs (default: "
                    "$BENCH_TMPDIR/qimg-bench-suite, a new temporary "
                    "directory with --quick)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the outputs (and the --quick work dir)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    tmp_root = os.environ.get("BENCH_TMPDIR", "/var/tmp")
    remove = False
    if args.workdir is None:
        if args.quick:
            args.workdir = tempfile.mkdtemp(prefix="qimg-bench-quick.",
                                            dir=tmp_root)
            remove = not args.keep
        else:
            args.workdir = os.path.join(tmp_root, "qimg-bench-suite")
    os.makedirs(args.workdir, exist_ok=True)
    args.workdir = os.path.abspath(args.workdir)
    suite = Suite(args)
    if args.list:
        for r in suite.rows():
            print("%-26s %s" % (r.key, r.label))
        return 0
    try:
        return suite.main()
    except BenchError as e:
        log("bench error: %s" % e)
        return 1
    finally:
        if remove:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
