/*
 * Page-aligned I/O buffers.  The kernel copies to and from a user buffer
 * that starts mid-page at a lower speed (malloc's blocks of a megabyte
 * and more are mmap'd and start 16 bytes into a page): with such buffers
 * compare spent twice the system time of qemu-img in its reads.  Free
 * with free().
 */
#ifndef QIMG_UTIL_PAGEBUF_H
#define QIMG_UTIL_PAGEBUF_H

#include <stddef.h>
#include <stdlib.h>

#define PAGEBUF_ALIGN 4096

/* A buffer of LEN bytes at a page boundary, or NULL. */
static inline void *pagebuf_alloc(size_t len)
{
    void *buf;
    if (posix_memalign(&buf, PAGEBUF_ALIGN, len) != 0) {
        return NULL;
    }
    return buf;
}

#endif
