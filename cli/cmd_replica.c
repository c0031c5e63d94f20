/*
** cmd_replica.c -- `walship replica URL PATH`: keep a read-only replica of
** the database shipped to URL at PATH, until SIGINT or SIGTERM.
**
** USAGE
**   walship replica s3://bucket/app /var/lib/app/replica.db \
**       [--poll-ms 200] [--metrics 127.0.0.1:9464] [--checkpoint-frames 1000]
**       [--parallel 4] [--no-sync]
**   Applications read PATH with any SQLite: file:replica.db?mode=ro.
**   `walship status PATH` shows the replica's position and lag;
**   GET http://127.0.0.1:9464/metrics gives the same in Prometheus text
**   format (GET /status: JSON).
**
** IMPLEMENTATION NOTES
**   The replica runs in the main thread (replica/replica.h). The metrics
**   endpoint is one more thread: a small poll()-based responder that only
**   listens on the loopback address, reads a request line, answers from a
**   copy of the replica's status and closes the connection. A self-pipe
**   stops it.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"
#include "common/log.h"
#include "common/util.h"
#include "replica/replica.h"
#include "store/store.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* ---- metrics endpoint ------------------------------------------------------------ */
#define MAX_CLIENTS 16
#define REQ_MAX 8192

typedef struct metrics_server {
    replica *r;
    int listen_fd;
    int wake[2]; /* self-pipe: a byte means stop */
    pthread_t thread;
    int running;
} metrics_server;

typedef struct client {
    int fd;
    char buf[REQ_MAX];
    size_t len;
    int64_t deadline;
} client;

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void respond(metrics_server *m, client *c) {
    static char body[65536];
    const char *type = "text/plain; version=0.0.4; charset=utf-8";
    int code = 200;
    replica_status st;
    int is_get = strncmp(c->buf, "GET ", 4) == 0 || strncmp(c->buf, "HEAD ", 5) == 0;
    const char *target = strchr(c->buf, ' ');
    target = target ? target + 1 : "";
    if (is_get && (strncmp(target, "/metrics ", 9) == 0 || strncmp(target, "/metrics?", 9) == 0)) {
        replica_status_get(m->r, &st);
        replica_metrics_text(&st, body, sizeof body);
    } else if (is_get && strncmp(target, "/status ", 8) == 0) {
        replica_status_get(m->r, &st);
        replica_status_to_json(&st, body, sizeof body - 1);
        strcat(body, "\n");
        type = "application/json";
    } else {
        code = is_get ? 404 : 405;
        snprintf(body, sizeof body, "%s\n",
                 is_get ? "not found: try /metrics or /status" : "only GET is served");
    }
    char head[256];
    size_t blen = strlen(body);
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Method Not Allowed",
                      type, blen);
    send_all(c->fd, head, (size_t)hn);
    if (strncmp(c->buf, "HEAD ", 5) != 0) send_all(c->fd, body, blen);
}

static void *metrics_main(void *arg) {
    metrics_server *m = arg;
    client cl[MAX_CLIENTS];
    int ncl = 0;
    for (;;) {
        struct pollfd pf[MAX_CLIENTS + 2];
        pf[0] = (struct pollfd){m->wake[0], POLLIN, 0};
        pf[1] = (struct pollfd){m->listen_fd, ncl < MAX_CLIENTS ? POLLIN : 0, 0};
        for (int i = 0; i < ncl; i++) pf[2 + i] = (struct pollfd){cl[i].fd, POLLIN, 0};
        int n = poll(pf, (nfds_t)(2 + ncl), 1000);
        if (n < 0 && errno != EINTR) break;
        if (pf[0].revents) break;
        int64_t now = ws_mono_ms();
        int polled = ncl; /* clients accepted below have no pollfd this round */
        if (pf[1].revents & POLLIN) {
            int fd = accept4(m->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) cl[ncl++] = (client){.fd = fd, .len = 0, .deadline = now + 5000};
        }
        for (int i = 0; i < ncl;) {
            int done = 0;
            if (i < polled && pf[2 + i].revents) {
                ssize_t got = recv(cl[i].fd, cl[i].buf + cl[i].len, REQ_MAX - 1 - cl[i].len, 0);
                if (got > 0) {
                    cl[i].len += (size_t)got;
                    cl[i].buf[cl[i].len] = '\0';
                    if (strstr(cl[i].buf, "\r\n\r\n") || strstr(cl[i].buf, "\n\n")) {
                        respond(m, &cl[i]);
                        done = 1;
                    } else if (cl[i].len >= REQ_MAX - 1) {
                        done = 1; /* request too large: drop it */
                    }
                } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                    done = 1;
                }
            }
            if (!done && now > cl[i].deadline) done = 1;
            /* pf[] is indexed by position; keep it aligned by swapping in
            ** the last client only after this round */
            if (done) {
                close(cl[i].fd);
                cl[i] = cl[--ncl];
                if (ncl < polled) {
                    pf[2 + i] = pf[2 + ncl];
                    polled--;
                } else if (i < polled) {
                    /* the client moved here was not polled */
                    pf[2 + i].revents = 0;
                }
            } else {
                i++;
            }
        }
    }
    for (int i = 0; i < ncl; i++) close(cl[i].fd);
    return NULL;
}

/* Parses "127.0.0.1:9464", "localhost:9464" or "9464"; only loopback. */
static int parse_metrics_addr(const char *s, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const char *colon = strrchr(s, ':');
    const char *port = colon ? colon + 1 : s;
    if (colon) {
        size_t hl = (size_t)(colon - s);
        char host[64];
        if (hl >= sizeof host) return -1;
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (hl > 0 && strcmp(host, "localhost") != 0) {
            struct in_addr a;
            if (inet_pton(AF_INET, host, &a) != 1) return -1;
            if ((ntohl(a.s_addr) >> 24) != 127) return -2;
            sa->sin_addr = a;
        }
    }
    /* digits only (no sign, space or junk), at most 65535 */
    size_t nd = strspn(port, "0123456789");
    if (nd == 0 || nd > 5 || port[nd] != '\0') return -1;
    long p = strtol(port, NULL, 10);
    if (p > 65535) return -1;
    sa->sin_port = htons((uint16_t)p);
    return 0;
}

static int metrics_start(metrics_server *m, replica *r, const char *addr) {
    memset(m, 0, sizeof *m);
    m->r = r;
    m->listen_fd = -1;
    m->wake[0] = m->wake[1] = -1;
    struct sockaddr_in sa;
    int prc = parse_metrics_addr(addr, &sa);
    if (prc == -2) {
        fprintf(stderr,
                "walship replica: --metrics %s: the metrics endpoint only listens on the "
                "loopback address (127.0.0.1)\n",
                addr);
        return -1;
    }
    if (prc != 0) {
        fprintf(stderr, "walship replica: --metrics needs 127.0.0.1:PORT, not \"%s\"\n", addr);
        return -1;
    }
    m->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (m->listen_fd < 0 ||
        setsockopt(m->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(m->listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(m->listen_fd, 16) != 0) {
        fprintf(stderr, "walship replica: cannot listen on %s: %s\n", addr, strerror(errno));
        if (m->listen_fd >= 0) close(m->listen_fd);
        return -1;
    }
    socklen_t sl = sizeof sa;
    getsockname(m->listen_fd, (struct sockaddr *)&sa, &sl);
    char shown[64], ip[32];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(shown, sizeof shown, "%s:%u", ip, (unsigned)ntohs(sa.sin_port));
    if (pipe2(m->wake, O_CLOEXEC) != 0 ||
        pthread_create(&m->thread, NULL, metrics_main, m) != 0) {
        fprintf(stderr, "walship replica: cannot start the metrics endpoint: %s\n",
                strerror(errno));
        close(m->listen_fd);
        return -1;
    }
    m->running = 1;
    replica_set_metrics_addr(r, shown);
    fprintf(stderr, "walship replica: metrics on http://%s/metrics\n", shown);
    return 0;
}

static void metrics_stop(metrics_server *m) {
    if (!m->running) return;
    ssize_t w = write(m->wake[1], "x", 1);
    (void)w;
    pthread_join(m->thread, NULL);
    close(m->listen_fd);
    close(m->wake[0]);
    close(m->wake[1]);
    m->running = 0;
}

/* ---- the command ---------------------------------------------------------------- */
int cmd_replica(int argc, char **argv) {
    const char *url = NULL, *path = NULL, *metrics = NULL;
    replica_opts o;
    memset(&o, 0, sizeof o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        int takes_value = strcmp(a, "--poll-ms") == 0 || strcmp(a, "--metrics") == 0 ||
                          strcmp(a, "--checkpoint-frames") == 0 || strcmp(a, "--parallel") == 0;
        if (takes_value && i + 1 >= argc) return cli_usage("replica", "%s needs a value", a);
        if (strcmp(a, "--poll-ms") == 0) {
            if (cli_u64_range("replica", a, argv[++i], 1, 3600000, &v)) return 2;
            o.poll_ms = (int64_t)v;
        } else if (strcmp(a, "--metrics") == 0) {
            metrics = argv[++i];
        } else if (strcmp(a, "--checkpoint-frames") == 0) {
            if (cli_u64_range("replica", a, argv[++i], 16, 1000000, &v)) return 2;
            o.ckpt_frames = (uint32_t)v;
        } else if (strcmp(a, "--parallel") == 0) {
            if (cli_u64_range("replica", a, argv[++i], 1, 64, &v)) return 2;
            o.parallel = (int)v;
        } else if (strcmp(a, "--no-sync") == 0) {
            o.no_sync = 1;
        } else if (a[0] == '-' && a[1] != '\0') {
            return cli_usage("replica", "unknown option %s", a);
        } else if (url == NULL) {
            url = a;
        } else if (path == NULL) {
            path = a;
        } else {
            return cli_usage("replica", "unexpected argument \"%s\"", a);
        }
    }
    if (url == NULL || path == NULL)
        return cli_usage("replica",
                         "usage: walship replica URL PATH [--poll-ms N] [--metrics 127.0.0.1:PORT] "
                         "[--checkpoint-frames N] [--parallel N] [--no-sync]");
    if (getenv("WALSHIP_LOG") == NULL) ws_log_set_stderr_level(WS_LOG_INFO);
    static const replica_sqlite api = REPLICA_SQLITE_LINKED;
    o.url = url;
    o.path = path;
    o.sql = &api;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (metrics) {
        struct sockaddr_in probe;
        int prc = parse_metrics_addr(metrics, &probe);
        if (prc == -2) {
            fprintf(stderr,
                    "walship replica: --metrics %s: the metrics endpoint only listens on the "
                    "loopback address (127.0.0.1)\n",
                    metrics);
            return 2;
        }
        if (prc != 0) return cli_usage("replica", "--metrics needs 127.0.0.1:PORT, not \"%s\"", metrics);
    }
    wserr err = {0};
    /* The URL is checked before anything is created on disk (replica_open
    ** makes the state directory): a bad URL leaves nothing behind. */
    store *probe = NULL;
    if (store_open(url, &probe, &err) != 0) return cli_fail(&err);
    store_free(probe);
    replica *r = NULL;
    if (replica_open(&o, &r, &err) != 0) return cli_fail(&err);
    metrics_server ms;
    memset(&ms, 0, sizeof ms);
    if (metrics && metrics_start(&ms, r, metrics) != 0) {
        replica_close(r);
        return 1;
    }
    char shown[1024];
    ws_redact_url(shown, sizeof shown, url);
    fprintf(stderr, "walship replica: following %s into %s\n", shown, path);
    int rc = replica_run(r, &stop_requested, &err);
    metrics_stop(&ms);
    replica_close(r);
    if (rc) return cli_fail(&err);
    return 0;
}

/* `walship status PATH` for a replica (called from cmd_status). Returns -1
** if PATH is not a replica, else the exit status. */
int cmd_replica_status(const char *path, int json);
int cmd_replica_status(const char *path, int json) {
    char out[16384];
    if (replica_status_json(path, out, sizeof out) != 0) return -1;
    if (json) {
        printf("%s\n", out);
        return 0;
    }
    /* Human form: one "key: value" line per JSON member (flat object). */
    const char *p = out + 1;
    while (*p && *p != '}') {
        const char *colon = strstr(p, "\":");
        if (colon == NULL || *p != '"') break;
        int in_str = colon[2] == '"';
        const char *v = colon + 2 + in_str;
        const char *end = v;
        while (*end && (in_str ? (*end != '"' || end[-1] == '\\') : (*end != ',' && *end != '}')))
            end++;
        printf("%-20.*s %.*s\n", (int)(colon - p - 1), p + 1, (int)(end - v), v);
        p = end + in_str;
        if (*p == ',') p++;
    }
    return 0;
}
