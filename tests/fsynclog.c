/* LD_PRELOAD shim for the durability test: every fsync() and fdatasync() of the program is
 * written to the file FSYNC_LOG as "<CLOCK_MONOTONIC ns> <path of the fd>", then done. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void note(int fd) {
    const char *log = getenv("FSYNC_LOG");
    char link[64], path[4096];
    struct timespec now;
    if (log == NULL) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n < 0 ? 0 : n] = '\0';
    clock_gettime(CLOCK_MONOTONIC, &now);
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (out < 0) return;
    dprintf(out, "%lld %s\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec, path);
    close(out);
}

int fsync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int result = real(fd);
    note(fd);
    return result;
}

int fdatasync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int result = real(fd);
    note(fd);
    return result;
}
