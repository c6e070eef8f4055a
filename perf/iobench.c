/* iobench: one small, static I/O benchmark run the same way on the host and
 * in the guest (through `husk agent exec`), so the numbers compare.
 *
 *   iobench MODE FILE SIZE_MIB BLOCK_KIB SECONDS [direct]
 *
 * MODE: seqwrite | seqread | randwrite | randread.
 * seqwrite writes SIZE_MIB in BLOCK_KIB blocks and fsyncs (the fsync is
 * timed); the other modes need the file to exist (run seqwrite first).
 * Random modes do aligned BLOCK_KIB operations at random offsets for
 * SECONDS (or until SIZE_MIB*4 have moved), randwrite fsyncs at the end.
 * "direct" opens with O_DIRECT (falls back to the page cache with a note
 * when the file system refuses it). Prints one JSON line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void die(const char *what)
{
    fprintf(stderr, "iobench: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: iobench MODE FILE SIZE_MIB BLOCK_KIB SECONDS [direct]\n");
        return 2;
    }
    const char *mode = argv[1], *path = argv[2];
    uint64_t size = strtoull(argv[3], NULL, 10) << 20;
    size_t bs = (size_t)strtoull(argv[4], NULL, 10) << 10;
    double seconds = atof(argv[5]);
    int direct = argc > 6 && strcmp(argv[6], "direct") == 0;
    int write_mode = strstr(mode, "write") != NULL;
    int random_mode = strncmp(mode, "rand", 4) == 0;
    if (!size || !bs || size < bs || seconds <= 0) {
        fprintf(stderr, "iobench: bad sizes\n");
        return 2;
    }
    int flags = write_mode ? O_RDWR : O_RDONLY;
    if (strcmp(mode, "seqwrite") == 0)
        flags |= O_CREAT | O_TRUNC;
    int fd = open(path, flags | (direct ? O_DIRECT : 0), 0644);
    int direct_used = direct;
    if (fd < 0 && direct && errno == EINVAL) {
        direct_used = 0;
        fd = open(path, flags, 0644);
    }
    if (fd < 0)
        die(path);
    void *buf;
    if (posix_memalign(&buf, 4096, bs))
        die("memalign");
    memset(buf, 0xa5, bs);
    uint64_t blocks = size / bs, ops = 0, moved = 0;
    double t0 = now(), deadline = t0 + seconds;
    if (!random_mode) {
        for (uint64_t i = 0; i < blocks; i++) {
            ssize_t n = write_mode ? pwrite(fd, buf, bs, i * bs) : pread(fd, buf, bs, i * bs);
            if (n < 0)
                die(write_mode ? "pwrite" : "pread");
            if (n == 0)
                break;
            moved += n;
            ops++;
        }
    } else {
        while (now() < deadline && moved < size * 4) {
            for (int k = 0; k < 64; k++) {
                uint64_t off = (next_rand() % blocks) * bs;
                ssize_t n = write_mode ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
                if (n < 0)
                    die(write_mode ? "pwrite" : "pread");
                moved += n;
                ops++;
            }
        }
    }
    if (write_mode && fsync(fd) != 0)
        die("fsync");
    double secs = now() - t0;
    close(fd);
    printf("{\"mode\":\"%s\",\"block_kib\":%zu,\"bytes\":%llu,\"ops\":%llu,\"secs\":%.6f,"
           "\"mib_s\":%.3f,\"iops\":%.1f,\"direct\":%s}\n",
           mode, bs >> 10, (unsigned long long)moved, (unsigned long long)ops, secs,
           moved / 1048576.0 / secs, ops / secs, direct_used ? "true" : "false");
    return 0;
}
