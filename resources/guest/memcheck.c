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
 *   memcheck freemap    print, for each 2 MiB of guest-physical memory, how many of its
 *                       4 KiB pages are free in the buddy allocator (KPF_BUDDY in
 *                       /proc/kpageflags, which Linux sets on every page of a free block),
 *                       as "FREEMAP pages=N blocks=B" and then B numbers, 32 a line. The
 *                       benchmark sets them against the host's resident pages of the same
 *                       2 MiB (scripts/bench.sh --only slack). Needs root.
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

#define KPF_BUDDY 10
#define PAGES_PER_BLOCK 512

/* Reads /proc/kpageflags a block at a time: a whole array would take 2 MiB of a 1 GiB
 * guest's memory, and the benchmark reads the host's resident pages right after this. */
static int cmd_freemap(void)
{
    FILE *f = fopen("/proc/kpageflags", "rb");
    if (!f) {
        fprintf(stderr, "memcheck: cannot open /proc/kpageflags: %s\n", strerror(errno));
        return 2;
    }
    static uint64_t flags[PAGES_PER_BLOCK];
    static unsigned short free_pages[1 << 16];
    size_t blocks = 0, pages = 0, got;
    while ((got = fread(flags, sizeof(flags[0]), PAGES_PER_BLOCK, f)) > 0) {
        if (blocks == sizeof(free_pages) / sizeof(free_pages[0])) {
            fprintf(stderr, "memcheck: more than %zu blocks\n", blocks);
            fclose(f);
            return 2;
        }
        unsigned short n = 0;
        for (size_t i = 0; i < got; i++)
            n += (flags[i] >> KPF_BUDDY) & 1;
        free_pages[blocks++] = n;
        pages += got;
        if (got < PAGES_PER_BLOCK)
            break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        fprintf(stderr, "memcheck: cannot read /proc/kpageflags\n");
        return 2;
    }
    printf("FREEMAP pages=%zu blocks=%zu\n", pages, blocks);
    for (size_t b = 0; b < blocks; b++)
        printf("%u%c", free_pages[b], (b % 32 == 31 || b + 1 == blocks) ? '\n' : ' ');
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
    if (argc == 2 && strcmp(argv[1], "freemap") == 0)
        return cmd_freemap();
    fprintf(stderr, "usage: memcheck fill MIB | memcheck verify | memcheck stop | memcheck freemap\n");
    return 2;
}
