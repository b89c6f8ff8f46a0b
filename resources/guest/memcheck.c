/*
 * memcheck: keeps a block of guest memory filled with a known pattern and checks it on
 * demand, so a test can show that balloon operations never lose or mix up memory the
 * guest is using.
 *
 *   memcheck fill MIB   allocate MIB MiB, write the pattern, then wait in the background:
 *                       SIGUSR1 verifies (result printed and kept for `memcheck verify`),
 *                       SIGTERM or SIGINT ends it.
 *   memcheck verify     ask the running filler to verify; prints its result line and
 *                       exits 0 if the memory is intact, 1 if not, 2 on a usage error.
 *   memcheck stop       end the running filler.
 *
 * Typical use from a test's guest shell:
 *   memcheck fill 256 >/tmp/memcheck.log 2>&1 &
 *   ... wait for "MEMCHECK FILLED" in the log, inflate/deflate the balloon ...
 *   memcheck verify          -> "MEMCHECK OK mib=256"
 *
 * The filler's pid and its last result live in $MEMCHECK_DIR (default /run).
 * The pattern depends on each word's offset, so a page that is zeroed, stale or moved to
 * the wrong place is caught, not only a page that is lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)

static volatile sig_atomic_t verify_requested;
static volatile sig_atomic_t stop_requested;

static const char *state_dir(void)
{
    const char *dir = getenv("MEMCHECK_DIR");
    return dir && *dir ? dir : "/run";
}

static void state_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/memcheck.%s", state_dir(), name);
}

/* splitmix64: a cheap, well-mixed function of the word's index. */
static uint64_t pattern(uint64_t index)
{
    uint64_t z = index + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill(uint64_t *words, size_t count)
{
    for (size_t i = 0; i < count; i++)
        words[i] = pattern(i);
}

/* Checks every word; writes the one-line verdict into `line`; returns 1 if intact. */
static int verify(const uint64_t *words, size_t count, unsigned long mib, char *line, size_t len)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < count; i++) {
        if (words[i] != pattern(i)) {
            if (bad == 0)
                first = i;
            bad++;
        }
    }
    if (bad == 0) {
        snprintf(line, len, "MEMCHECK OK mib=%lu\n", mib);
        return 1;
    }
    snprintf(line, len,
             "MEMCHECK BAD offset=0x%zx expected=0x%016llx got=0x%016llx bad_words=%zu mib=%lu\n",
             first * sizeof(uint64_t), (unsigned long long)pattern(first),
             (unsigned long long)words[first], bad, mib);
    return 0;
}

static int write_file_atomic(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fputs(text, f);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

static void on_verify(int sig)
{
    (void)sig;
    verify_requested = 1;
}

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int cmd_fill(const char *arg)
{
    char *end;
    unsigned long mib = strtoul(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || mib == 0) {
        fprintf(stderr, "memcheck: fill needs a size in MiB greater than 0, got '%s'\n", arg);
        return 2;
    }
    size_t bytes = mib * MIB, count = bytes / sizeof(uint64_t);
    uint64_t *words = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (words == MAP_FAILED) {
        fprintf(stderr, "memcheck: cannot map %lu MiB: %s\n", mib, strerror(errno));
        return 1;
    }

    /* Signals wait blocked and are taken only inside sigsuspend, so none is missed. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigdelset(&waiting, SIGUSR1);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    struct sigaction sa = { 0 };
    sa.sa_handler = on_verify;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    fill(words, count);

    char pid_path[4096], result_path[4096], line[256];
    state_path(pid_path, sizeof(pid_path), "pid");
    state_path(result_path, sizeof(result_path), "result");
    unlink(result_path);
    snprintf(line, sizeof(line), "%d\n", (int)getpid());
    if (write_file_atomic(pid_path, line) != 0) {
        fprintf(stderr, "memcheck: cannot write %s: %s\n", pid_path, strerror(errno));
        return 1;
    }
    printf("MEMCHECK FILLED mib=%lu pid=%d\n", mib, (int)getpid());
    fflush(stdout);

    while (!stop_requested) {
        sigsuspend(&waiting);
        if (verify_requested) {
            verify_requested = 0;
            verify(words, count, mib, line, sizeof(line));
            fputs(line, stdout);
            fflush(stdout);
            if (write_file_atomic(result_path, line) != 0)
                fprintf(stderr, "memcheck: cannot write %s: %s\n", result_path, strerror(errno));
        }
    }
    unlink(pid_path);
    return 0;
}

static pid_t filler_pid(void)
{
    char path[4096];
    state_path(path, sizeof(path), "pid");
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
        fprintf(stderr, "memcheck: no running filler (%s missing): start `memcheck fill MIB` first\n", path);
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    return pid;
}

static int cmd_verify(void)
{
    pid_t pid = filler_pid();
    if (pid < 0)
        return 2;
    char path[4096];
    state_path(path, sizeof(path), "result");
    unlink(path);
    if (kill(pid, SIGUSR1) != 0) {
        fprintf(stderr, "memcheck: cannot signal filler %d: %s\n", (int)pid, strerror(errno));
        return 2;
    }
    /* The filler may take long under nested virtualisation; it is alive as long as
     * kill(pid, 0) succeeds, so wait for it rather than for a fixed time. */
    const struct timespec tick = { 0, 20 * 1000 * 1000 };
    for (;;) {
        FILE *f = fopen(path, "r");
        if (f) {
            char line[256] = "";
            if (!fgets(line, sizeof(line), f))
                line[0] = '\0';
            fclose(f);
            fputs(line, stdout);
            return strncmp(line, "MEMCHECK OK", 11) == 0 ? 0 : 1;
        }
        if (kill(pid, 0) != 0) {
            fprintf(stderr, "memcheck: filler %d exited before reporting\n", (int)pid);
            return 1;
        }
        nanosleep(&tick, NULL);
    }
}

static int cmd_stop(void)
{
    pid_t pid = filler_pid();
    if (pid < 0)
        return 2;
    if (kill(pid, SIGTERM) != 0) {
        fprintf(stderr, "memcheck: cannot signal filler %d: %s\n", (int)pid, strerror(errno));
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "fill") == 0)
        return cmd_fill(argv[2]);
    if (argc == 2 && strcmp(argv[1], "verify") == 0)
        return cmd_verify();
    if (argc == 2 && strcmp(argv[1], "stop") == 0)
        return cmd_stop();
    fprintf(stderr, "usage: memcheck fill MIB | memcheck verify | memcheck stop\n");
    return 2;
}
