/*
 * faultshim: a deterministic fault injector for real recsink processes.
 *
 * Loaded with LD_PRELOAD; it interposes fsync, fdatasync, link, linkat, rename and renameat
 * (the libc entry points libpython calls: os.fsync -> fsync, os.fdatasync -> fdatasync,
 * os.link -> link, or linkat with a dir_fd or follow_symlinks=False; os.rename/os.replace
 * -> rename, or renameat with a dir_fd). Every rule is off unless its variable is set:
 *
 *   RECSINK_FAULT_FSYNC_DIR=<trigger file>:<path prefix>
 *       While <trigger file> exists, fsync()/fdatasync() of a descriptor that is a directory
 *       whose path (readlink of /proc/self/fd/<fd>) starts with <path prefix> fails with EIO
 *       without reaching the kernel. Other descriptors are never touched. The trigger ends at
 *       the first ':', so it cannot contain one; the prefix can.
 *
 *   RECSINK_FAULT_LINK=<substring>:<action>[:<n>]
 *       After the n-th (default: the 1st) SUCCESSFUL link/linkat whose new path, made
 *       absolute (relative to the dirfd's or the working directory's path), contains
 *       <substring>, do <action>, once; the rule is inert afterwards. Actions:
 *         kill          raise(SIGKILL) at once;
 *         pause=<file>  create <file>.reached (atomically, holding the new path), wait while
 *                       <file> exists (polling every 5 ms), then return normally;
 *         fail          unlink the new path again, return -1 with errno EIO.
 *
 *   RECSINK_FAULT_RENAME=<substring>:<action>[:<n>]
 *       The same for rename/renameat, matched on the new path; kill and pause act after a
 *       successful rename, but fail returns EIO WITHOUT renaming (both names as they were),
 *       and counts matching calls rather than successful ones.
 *
 * Each firing writes one line to stderr, "faultshim: pid <pid>: <call> <path>: <what>" (a
 * pause a second one, "...: resumed", when it ends); nothing else is ever written, except
 * for a malformed rule, which is reported the same way before the process exits with status
 * 86 at load time (a rule that silently did nothing would let a fault test pass vacuously).
 * Paths are the kernel's (symlinks resolved), so give prefixes and substrings resolved too.
 * The rules are inherited by child processes (LD_PRELOAD and the variables are), each with
 * its own counts.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BAD_RULE_STATUS 86

typedef int (*fsync_fn)(int);
typedef int (*link_fn)(const char *, const char *);
typedef int (*linkat_fn)(int, const char *, int, const char *, int);
typedef int (*rename_fn)(const char *, const char *);
typedef int (*renameat_fn)(int, const char *, int, const char *);

static fsync_fn real_fsync, real_fdatasync;
static link_fn real_link;
static linkat_fn real_linkat;
static rename_fn real_rename;
static renameat_fn real_renameat;

enum action { ACT_NONE, ACT_KILL, ACT_PAUSE, ACT_FAIL };

struct rule {
    const char *name;     /* the variable, for messages */
    char *substring;      /* NULL: rule off */
    enum action action;
    char *pause_file;
    long nth;             /* fire on this matching call (1-based) */
    atomic_long matches;  /* matching calls so far */
};

static char *fsync_trigger; /* NULL: rule off */
static char *fsync_prefix;
static size_t fsync_prefix_len;
static struct rule link_rule = {.name = "RECSINK_FAULT_LINK"};
static struct rule rename_rule = {.name = "RECSINK_FAULT_RENAME"};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* One line on stderr with a single write(2): no stdio buffer to lose on SIGKILL. */
static void say(const char *fmt, ...)
{
    char line[2 * PATH_MAX + 128];
    int n = snprintf(line, sizeof line, "faultshim: pid %ld: ", (long)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t written = write(STDERR_FILENO, line, len);
    (void)written;
}

static void bad_rule(const char *name, const char *value, const char *why)
{
    say("bad %s=%s: %s", name, value, why);
    _exit(BAD_RULE_STATUS);
}

static void *resolve(const char *symbol)
{
    void *fn = dlsym(RTLD_NEXT, symbol);
    if (fn == NULL) {
        say("cannot find the real %s: %s", symbol, dlerror());
        _exit(BAD_RULE_STATUS);
    }
    return fn;
}

/* dlsym's object pointer into a function pointer, the way POSIX allows (ISO C has no cast). */
#define RESOLVE(var, symbol)                                                                   \
    do {                                                                                       \
        void *fn_ = resolve(symbol);                                                           \
        memcpy(&(var), &fn_, sizeof(var));                                                     \
    } while (0)

static char *copy(const char *s, size_t len, const char *name, const char *value)
{
    char *out = strndup(s, len);
    if (out == NULL)
        bad_rule(name, value, "out of memory");
    return out;
}

static void parse_fsync_dir(void)
{
    const char *name = "RECSINK_FAULT_FSYNC_DIR";
    const char *value = getenv(name);
    if (value == NULL || *value == '\0')
        return;
    const char *colon = strchr(value, ':');
    if (colon == NULL || colon == value || colon[1] == '\0')
        bad_rule(name, value, "expected <trigger file>:<path prefix>");
    fsync_trigger = copy(value, (size_t)(colon - value), name, value);
    fsync_prefix = copy(colon + 1, strlen(colon + 1), name, value);
    fsync_prefix_len = strlen(fsync_prefix);
}

/* <substring>:<action>[:<n>], action = kill | fail | pause=<file> (the file may hold ':'). */
static void parse_rule(struct rule *rule)
{
    const char *value = getenv(rule->name);
    if (value == NULL || *value == '\0')
        return;
    const char *colon = strchr(value, ':');
    if (colon == NULL || colon == value)
        bad_rule(rule->name, value, "expected <substring>:<action>[:<n>]");
    const char *act = colon + 1;
    size_t act_len = strlen(act);
    rule->nth = 1;
    const char *last = strrchr(act, ':');
    if (last != NULL && last[1] != '\0' && strspn(last + 1, "0123456789") == strlen(last + 1)) {
        char *end;
        errno = 0;
        long n = strtol(last + 1, &end, 10);
        if (errno != 0 || n < 1)
            bad_rule(rule->name, value, "the count must be a whole number >= 1");
        rule->nth = n;
        act_len = (size_t)(last - act);
    }
    if (act_len == 4 && strncmp(act, "kill", 4) == 0) {
        rule->action = ACT_KILL;
    } else if (act_len == 4 && strncmp(act, "fail", 4) == 0) {
        rule->action = ACT_FAIL;
    } else if (act_len > 6 && strncmp(act, "pause=", 6) == 0) {
        rule->action = ACT_PAUSE;
        rule->pause_file = copy(act + 6, act_len - 6, rule->name, value);
    } else {
        bad_rule(rule->name, value, "the action must be kill, fail or pause=<file>");
    }
    rule->substring = copy(value, (size_t)(colon - value), rule->name, value);
}

static void init(void)
{
    RESOLVE(real_fsync, "fsync");
    RESOLVE(real_fdatasync, "fdatasync");
    RESOLVE(real_link, "link");
    RESOLVE(real_linkat, "linkat");
    RESOLVE(real_rename, "rename");
    RESOLVE(real_renameat, "renameat");
    parse_fsync_dir();
    parse_rule(&link_rule);
    parse_rule(&rename_rule);
}

__attribute__((constructor)) static void faultshim_init(void)
{
    pthread_once(&init_once, init);
}

static void ensure_init(void)
{
    pthread_once(&init_once, init);
}

/* The kernel's path of an open descriptor (or of the working directory, for AT_FDCWD). */
static int fd_path(int fd, char *out, size_t size)
{
    char link[64];
    if (fd == AT_FDCWD)
        snprintf(link, sizeof link, "/proc/self/cwd");
    else
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0)
        return -1;
    out[n] = '\0';
    return 0;
}

/* `path` made absolute against `dirfd` (as given if that cannot be resolved). */
static void full_path(int dirfd, const char *path, char *out, size_t size)
{
    char dir[PATH_MAX];
    if (path[0] != '/' && fd_path(dirfd, dir, sizeof dir) == 0) {
        int n = snprintf(out, size, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", path);
        if (n >= 0 && (size_t)n < size)
            return;
    }
    snprintf(out, size, "%s", path);
}

static int fsync_should_fail(int fd, const char *call)
{
    if (fsync_trigger == NULL)
        return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    char path[PATH_MAX];
    if (fd_path(fd, path, sizeof path) != 0 || strncmp(path, fsync_prefix, fsync_prefix_len) != 0)
        return 0;
    if (access(fsync_trigger, F_OK) != 0)
        return 0;
    say("%s(%d) of directory %s fails with EIO", call, fd, path);
    return 1;
}

int fsync(int fd)
{
    ensure_init();
    if (fsync_should_fail(fd, "fsync")) {
        errno = EIO;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    ensure_init();
    if (fsync_should_fail(fd, "fdatasync")) {
        errno = EIO;
        return -1;
    }
    return real_fdatasync(fd);
}

/* Whether this call (new path `newpath` under `dirfd`) is the one the rule fires on; the
 * absolute path is left in `full`. Counts the match atomically, so exactly one call fires
 * however many threads race. */
static int rule_fires(struct rule *rule, int dirfd, const char *newpath, char *full, size_t size)
{
    if (rule->substring == NULL || atomic_load(&rule->matches) >= rule->nth)
        return 0;
    full_path(dirfd, newpath, full, size);
    if (strstr(full, rule->substring) == NULL)
        return 0;
    return atomic_fetch_add(&rule->matches, 1) + 1 == rule->nth;
}

static void pause_at(const struct rule *rule, const char *what, const char *full)
{
    char reached[PATH_MAX + 16], tmp[PATH_MAX + 32];
    snprintf(reached, sizeof reached, "%s.reached", rule->pause_file);
    snprintf(tmp, sizeof tmp, "%s.reached.%ld", rule->pause_file, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t written = write(fd, full, strlen(full));
        (void)written;
        close(fd);
        real_rename(tmp, reached);
    }
    say("%s %s: paused while %s exists", what, full, rule->pause_file);
    const struct timespec tick = {.tv_sec = 0, .tv_nsec = 5 * 1000 * 1000};
    while (access(rule->pause_file, F_OK) == 0)
        nanosleep(&tick, NULL);
    say("%s %s: resumed", what, full);
}

/* The action after a successful call; returns what the call returns to its caller. */
static int after_success(const struct rule *rule, const char *what, const char *full,
                         int dirfd, const char *newpath)
{
    switch (rule->action) {
    case ACT_KILL:
        say("%s %s: SIGKILL", what, full);
        raise(SIGKILL);
        break;
    case ACT_PAUSE:
        pause_at(rule, what, full);
        break;
    case ACT_FAIL:
        unlinkat(dirfd, newpath, 0);
        say("%s %s: undone, fails with EIO", what, full);
        errno = EIO;
        return -1;
    case ACT_NONE:
        break;
    }
    return 0;
}

int link(const char *oldpath, const char *newpath)
{
    ensure_init();
    int rc = real_link(oldpath, newpath);
    char full[PATH_MAX];
    if (rc != 0 || !rule_fires(&link_rule, AT_FDCWD, newpath, full, sizeof full))
        return rc;
    return after_success(&link_rule, "link", full, AT_FDCWD, newpath);
}

int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
    ensure_init();
    int rc = real_linkat(olddirfd, oldpath, newdirfd, newpath, flags);
    char full[PATH_MAX];
    if (rc != 0 || !rule_fires(&link_rule, newdirfd, newpath, full, sizeof full))
        return rc;
    return after_success(&link_rule, "linkat", full, newdirfd, newpath);
}

static int do_rename(const char *what, int olddirfd, const char *oldpath, int newdirfd,
                     const char *newpath)
{
    char full[PATH_MAX];
    int fires = rule_fires(&rename_rule, newdirfd, newpath, full, sizeof full);
    if (fires && rename_rule.action == ACT_FAIL) {
        say("%s %s: not done, fails with EIO", what, full);
        errno = EIO;
        return -1;
    }
    int rc = real_renameat(olddirfd, oldpath, newdirfd, newpath);
    if (rc != 0 || !fires)
        return rc;
    return after_success(&rename_rule, what, full, newdirfd, newpath);
}

int rename(const char *oldpath, const char *newpath)
{
    ensure_init();
    if (rename_rule.substring == NULL)
        return real_rename(oldpath, newpath);
    return do_rename("rename", AT_FDCWD, oldpath, AT_FDCWD, newpath);
}

int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    ensure_init();
    return do_rename("renameat", olddirfd, oldpath, newdirfd, newpath);
}
