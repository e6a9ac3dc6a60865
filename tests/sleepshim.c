/* In front of Debian's libfaketime (LD_PRELOAD=this.so:libfaketime.so.1): every
 * clock_nanosleep on a clock but CLOCK_REALTIME goes straight to the kernel. libfaketime
 * 0.9.10 shifts them even with FAKETIME_DONT_FAKE_MONOTONIC=1, so Python's time.sleep()
 * fails with EINVAL and its timed waits hang; the program's wall clock stays faked. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request,
                    struct timespec *remain) {
    if (clock != CLOCK_REALTIME) {
        long done = syscall(SYS_clock_nanosleep, clock, flags, request, remain);
        return done == 0 ? 0 : errno;
    }
    int (*next)(clockid_t, int, const struct timespec *, struct timespec *) =
        (int (*)(clockid_t, int, const struct timespec *, struct timespec *))
            dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock, flags, request, remain);
}
