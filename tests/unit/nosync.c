/* libqimg_nosync.so: preloaded into the oracles (qemu-img, qemu-io) by
 * tests/functions.sh, it makes fsync and fdatasync return at once.  Each
 * qemu-img create, convert or qemu-io write syncs its files several times;
 * on a busy virtual disk every sync waits tens of milliseconds, and the
 * compat scripts run thousands of them.  A sync changes nothing a later
 * read sees, so the images the oracles make and what they print are the
 * same; only their durability over a host crash, which no test needs, is
 * gone.  qimg itself is never run with it (its syncs are what
 * convert_options checks).  Built without sanitizers: it is loaded into
 * programs that have none. */
int fsync(int fd);
int fdatasync(int fd);

int fsync(int fd)
{
    (void)fd;
    return 0;
}

int fdatasync(int fd)
{
    (void)fd;
    return 0;
}
