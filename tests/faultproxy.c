/*
** faultproxy.c -- see faultproxy.h.
**
** IMPLEMENTATION NOTES
**
** One thread runs a poll(2) loop over: the read end of a control pipe, the
** listening socket (absent while refusing), and both sockets of each
** connection. A connection's behaviour (pass, blackhole, truncate, respond)
** is fixed when it is accepted, from the mode at that moment.
**
** Forwarding: each connection has two bounded buffers (client to server,
** server to client). A side is polled for input only while its buffer has
** room and for output only while the other direction has bytes waiting, so
** memory stays at 2 x FP_BUF per connection. End of file is passed on as a
** half-close (shutdown SHUT_WR) once the buffer drains; a connection is
** closed when both directions are done, or on any error.
**
** Canned answers (FP_RESPOND): the client's bytes are read and dropped
** until the end of the request headers ("\r\n\r\n"); the answer is then
** queued as if the server had sent it and the write side is half-closed
** after it. Input is still drained until the client closes, so the kernel
** never answers unread input with a reset that could destroy the answer
** before the client reads it.
**
** Mode changes go through the control pipe: fp_set_mode stores the command
** under fp->mu, writes one byte to wake the thread, and waits on fp->cv
** until the thread has applied it and bumped fp->done_seq.
**
** Connecting upstream is a blocking connect(2) from the proxy thread: the
** target is a server on 127.0.0.1, so it completes or is refused at once.
*/
#include "faultproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FP_BUF          65536
#define FP_MAX_CONNS    64
#define FP_RESPONSE_MAX (60 * 1024)

static const char request_mark[] = " HTTP/1.1\r\n";
#define MARK_LEN (sizeof request_mark - 1)

/* Bytes in flight one way. */
typedef struct fp_dir {
    uint8_t buf[FP_BUF];
    size_t off, len; /* pending bytes are buf[off, off+len) */
    int eof;         /* the source is done */
    int shut;        /* the half-close was passed on */
} fp_dir;

typedef struct fp_conn {
    int kind;             /* FP_KIND_PASS, _BLACKHOLE, _TRUNCATE or _RESPOND */
    int cfd, ufd;         /* client and upstream sockets; ufd -1 unless forwarding */
    fp_dir up;            /* client -> upstream */
    fp_dir down;          /* upstream (or canned answer) -> client */
    uint64_t budget;      /* FP_KIND_TRUNCATE: response bytes still to forward */
    int hdr_state;        /* FP_KIND_RESPOND: progress through "\r\n\r\n" */
    int answered;         /* FP_KIND_RESPOND: the answer is queued */
    char carry[MARK_LEN]; /* end of the last client read, for request counting */
    size_t carry_len;
} fp_conn;

enum { CMD_NONE, CMD_MODE, CMD_STOP };

struct faultproxy {
    pthread_t thread;
    int ctl[2]; /* control pipe; [0] read by the thread */
    int port;   /* listening port, constant */
    struct sockaddr_in target;

    pthread_mutex_t mu; /* protects cmd, cmd_mode, cmd_seq, done_seq, cmd_rc */
    pthread_cond_t cv;
    int cmd;
    fp_mode cmd_mode; /* cmd_mode.response is borrowed from the caller */
    uint64_t cmd_seq, done_seq;
    int cmd_rc;

    /* Owned by the proxy thread (and by fp_start / fp_stop around it). */
    int lfd;      /* -1 while refusing */
    fp_mode mode; /* mode.response is owned (a copy) */
    size_t response_len;
    unsigned remaining; /* connections left for a FP_NEXT mode */
    fp_conn *conns[FP_MAX_CONNS];

    _Atomic uint64_t accepted;
    _Atomic uint64_t requests;
};

/* ---- sockets ----------------------------------------------------------------- */

/* A non-blocking listening socket on 127.0.0.1:port (0 = ephemeral). */
static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A connected, non-blocking socket to the target, or -1. */
static int connect_upstream(const faultproxy *fp) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (connect(fd, (const struct sockaddr *)&fp->target, sizeof fp->target) != 0) {
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void conn_close(faultproxy *fp, int i) {
    fp_conn *c = fp->conns[i];
    if (c == NULL) return;
    close(c->cfd);
    if (c->ufd >= 0) close(c->ufd);
    free(c);
    fp->conns[i] = NULL;
}

static void close_all(faultproxy *fp) {
    for (int i = 0; i < FP_MAX_CONNS; i++)
        conn_close(fp, i);
}

/* Counts request lines in a client's bytes, also those split across reads. */
static void count_requests(faultproxy *fp, fp_conn *c, const uint8_t *p, size_t n) {
    uint8_t win[2 * MARK_LEN];
    size_t head = n < MARK_LEN - 1 ? n : MARK_LEN - 1;
    memcpy(win, c->carry, c->carry_len);
    memcpy(win + c->carry_len, p, head);
    size_t wlen = c->carry_len + head;
    /* A match starting in the carried bytes spans the joint. */
    for (size_t i = 0; i < c->carry_len && i + MARK_LEN <= wlen; i++)
        if (memcmp(win + i, request_mark, MARK_LEN) == 0) atomic_fetch_add(&fp->requests, 1);
    for (size_t i = 0; i + MARK_LEN <= n; i++)
        if (memcmp(p + i, request_mark, MARK_LEN) == 0) atomic_fetch_add(&fp->requests, 1);
    /* Carry the last MARK_LEN-1 bytes seen (win holds all of p when n is short). */
    if (n >= MARK_LEN - 1) {
        memcpy(c->carry, p + n - (MARK_LEN - 1), MARK_LEN - 1);
        c->carry_len = MARK_LEN - 1;
    } else {
        size_t keep = wlen < MARK_LEN - 1 ? wlen : MARK_LEN - 1;
        memcpy(c->carry, win + wlen - keep, keep);
        c->carry_len = keep;
    }
}

/* Counts a connection against a FP_NEXT mode; reverts to FP_PASS after the last. */
static void count_down_mode(faultproxy *fp) {
    if (fp->mode.count > 0 && --fp->remaining == 0) {
        free((char *)fp->mode.response);
        fp->mode = FP_PASS;
    }
}

static void accept_all(faultproxy *fp) {
    for (;;) {
        int cfd = accept4(fp->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd < 0) return; /* EAGAIN, or a transient error: poll again */
        atomic_fetch_add(&fp->accepted, 1);
        int slot = -1;
        for (int i = 0; i < FP_MAX_CONNS && slot < 0; i++)
            if (fp->conns[i] == NULL) slot = i;
        fp_conn *c = slot >= 0 ? calloc(1, sizeof *c) : NULL;
        if (c == NULL) {
            close(cfd);
            continue;
        }
        fp_mode m = fp->mode;
        c->kind = m.kind;
        c->cfd = cfd;
        c->ufd = -1;
        if (c->kind == FP_KIND_RESPOND) /* copied now: the mode may revert before it is sent */
            memcpy(c->down.buf, m.response, fp->response_len); /* queued once the request is in */
        if (c->kind == FP_KIND_PASS || c->kind == FP_KIND_TRUNCATE) {
            c->ufd = connect_upstream(fp);
            if (c->ufd < 0) { /* the target is down: so are we */
                close(cfd);
                free(c);
                continue;
            }
        }
        c->budget = m.n;
        count_down_mode(fp);
        fp->conns[slot] = c;
    }
}

/* Reads from fd into d (at most `limit` bytes). Returns bytes read, 0 at
** EOF (d->eof set), -1 on error, -2 if nothing was ready or no room. */
static ssize_t dir_fill(fp_dir *d, int fd, size_t limit) {
    if (d->off > 0 && d->off + d->len == FP_BUF) {
        memmove(d->buf, d->buf + d->off, d->len);
        d->off = 0;
    }
    size_t room = FP_BUF - d->off - d->len;
    if (room > limit) room = limit;
    if (room == 0) return -2;
    ssize_t r = recv(fd, d->buf + d->off + d->len, room, 0);
    if (r == 0) {
        d->eof = 1;
        return 0;
    }
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -2 : -1;
    d->len += (size_t)r;
    return r;
}

/* Writes what d holds to fd; passes on the half-close once drained.
** Returns -1 on error. */
static int dir_drain(fp_dir *d, int fd) {
    if (d->len > 0) {
        ssize_t w = send(fd, d->buf + d->off, d->len, MSG_NOSIGNAL);
        if (w < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
        d->off += (size_t)w;
        d->len -= (size_t)w;
        if (d->len == 0) d->off = 0;
    }
    if (d->len == 0 && d->eof && !d->shut) {
        shutdown(fd, SHUT_WR);
        d->shut = 1;
    }
    return 0;
}

/* Reads and drops client input (blackhole, canned answer); watches for the
** end of the request headers. Returns -1 when the client is gone. */
static int swallow_client(faultproxy *fp, fp_conn *c) {
    static const char end[] = "\r\n\r\n";
    c->up.off = c->up.len = 0;
    ssize_t r = dir_fill(&c->up, c->cfd, FP_BUF);
    if (r == 0 || r == -1) return -1;
    if (r < 0) return 0;
    count_requests(fp, c, c->up.buf, (size_t)r);
    for (ssize_t i = 0; i < r && c->hdr_state < 4; i++) {
        char b = (char)c->up.buf[i];
        c->hdr_state = b == end[c->hdr_state] ? c->hdr_state + 1 : b == '\r' ? 1 : 0;
    }
    c->up.len = 0;
    return 0;
}

/* Moves bytes for connection i after poll; closes it when done. */
static void conn_step(faultproxy *fp, int i, short crev, short urev) {
    fp_conn *c = fp->conns[i];
    if ((crev | urev) & (POLLNVAL | POLLERR)) goto close;
    if (c->kind == FP_KIND_BLACKHOLE || c->kind == FP_KIND_RESPOND) {
        if ((crev & (POLLIN | POLLHUP)) && swallow_client(fp, c) != 0) goto close;
        if (c->kind == FP_KIND_RESPOND && c->hdr_state == 4 && !c->answered) {
            c->answered = 1;
            c->down.len = fp->response_len;
            c->down.eof = 1; /* half-close after the answer */
        }
        if (c->kind == FP_KIND_RESPOND && dir_drain(&c->down, c->cfd) != 0) goto close;
        return;
    }
    if (crev & (POLLIN | POLLHUP)) {
        ssize_t r = dir_fill(&c->up, c->cfd, FP_BUF);
        if (r == -1) goto close;
        if (r > 0) count_requests(fp, c, c->up.buf + c->up.off + c->up.len - (size_t)r, (size_t)r);
    }
    if (urev & (POLLIN | POLLHUP)) {
        size_t limit = FP_BUF;
        if (c->kind == FP_KIND_TRUNCATE && c->budget < limit) limit = (size_t)c->budget;
        ssize_t r = dir_fill(&c->down, c->ufd, limit);
        if (r == -1) goto close;
        if (r > 0 && c->kind == FP_KIND_TRUNCATE) c->budget -= (uint64_t)r;
    }
    if (dir_drain(&c->up, c->ufd) != 0 || dir_drain(&c->down, c->cfd) != 0) goto close;
    if (c->kind == FP_KIND_TRUNCATE && c->budget == 0 && c->down.len == 0) goto close; /* cut */
    if (c->up.shut && c->down.shut) goto close;
    return;
close:
    conn_close(fp, i);
}

/* Applies a mode; returns 0, or -1 (see fp_set_mode). */
static int apply_mode(faultproxy *fp, fp_mode m) {
    char *copy = NULL;
    size_t len = 0;
    if (m.kind == FP_KIND_RESPOND) {
        len = m.response ? strlen(m.response) : 0;
        if (len == 0 || len > FP_RESPONSE_MAX || (copy = strdup(m.response)) == NULL) return -1;
    }
    close_all(fp);
    free((char *)fp->mode.response);
    fp->mode = FP_PASS;
    if (m.kind == FP_KIND_REFUSE) {
        free(copy);
        if (fp->lfd >= 0) close(fp->lfd);
        fp->lfd = -1;
        fp->mode = FP_REFUSE;
        return 0;
    }
    if (fp->lfd < 0) {
        fp->lfd = listen_on(fp->port);
        if (fp->lfd < 0) { /* stays refusing */
            free(copy);
            fp->mode = FP_REFUSE;
            return -1;
        }
    }
    m.response = copy;
    fp->mode = m;
    fp->response_len = len;
    fp->remaining = m.count;
    return 0;
}

/* Poll events for a connection's two sockets. */
static void conn_events(const fp_conn *c, short *ce, short *ue) {
    *ce = *ue = 0;
    if (!c->up.eof && c->up.off + c->up.len < FP_BUF) *ce |= POLLIN;
    if (c->down.len > 0) *ce |= POLLOUT;
    if (c->ufd < 0) return;
    if (!c->down.eof && c->down.off + c->down.len < FP_BUF &&
        !(c->kind == FP_KIND_TRUNCATE && c->budget == 0))
        *ue |= POLLIN;
    if (c->up.len > 0) *ue |= POLLOUT;
}

static void *proxy_main(void *arg) {
    faultproxy *fp = arg;
    struct pollfd pfd[2 + 2 * FP_MAX_CONNS];
    int who[2 + 2 * FP_MAX_CONNS]; /* connection index of each pair's first entry */
    for (;;) {
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = fp->ctl[0], .events = POLLIN};
        int listening = fp->lfd >= 0;
        if (listening) pfd[n++] = (struct pollfd){.fd = fp->lfd, .events = POLLIN};
        int first_conn = n;
        for (int i = 0; i < FP_MAX_CONNS; i++) {
            const fp_conn *c = fp->conns[i];
            if (c == NULL) continue;
            short ce, ue;
            conn_events(c, &ce, &ue);
            who[n] = i;
            pfd[n++] = (struct pollfd){.fd = c->cfd, .events = ce};
            pfd[n++] = (struct pollfd){.fd = c->ufd, .events = ue}; /* poll skips fd -1 */
        }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            perror("faultproxy: poll");
            break;
        }
        if (pfd[0].revents) {
            char drain[64];
            while (read(fp->ctl[0], drain, sizeof drain) > 0) {
            }
            pthread_mutex_lock(&fp->mu);
            int cmd = fp->cmd;
            if (cmd == CMD_MODE) fp->cmd_rc = apply_mode(fp, fp->cmd_mode);
            if (cmd != CMD_NONE) {
                fp->cmd = CMD_NONE;
                fp->done_seq = fp->cmd_seq;
                pthread_cond_broadcast(&fp->cv);
            }
            pthread_mutex_unlock(&fp->mu);
            if (cmd == CMD_STOP) break;
            continue; /* the sockets may have changed */
        }
        if (listening && pfd[1].revents) accept_all(fp);
        for (int k = first_conn; k < n; k += 2) {
            int i = who[k];
            if (fp->conns[i] && (pfd[k].revents || pfd[k + 1].revents))
                conn_step(fp, i, pfd[k].revents, pfd[k + 1].revents);
        }
    }
    return NULL;
}

/* ---- API ------------------------------------------------------------------------ */

faultproxy *fp_start(const char *target_host, int target_port) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char portstr[16];
    faultproxy *fp = calloc(1, sizeof *fp);
    if (fp == NULL) {
        fprintf(stderr, "faultproxy: out of memory\n");
        return NULL;
    }
    fp->ctl[0] = fp->ctl[1] = fp->lfd = -1;
    snprintf(portstr, sizeof portstr, "%d", target_port);
    int gai = getaddrinfo(target_host, portstr, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "faultproxy: cannot resolve %s: %s\n", target_host, gai_strerror(gai));
        goto fail;
    }
    memcpy(&fp->target, ai->ai_addr, sizeof fp->target);
    freeaddrinfo(ai);
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    fp->lfd = listen_on(0);
    if (fp->lfd < 0 || getsockname(fp->lfd, (struct sockaddr *)&a, &alen) != 0) {
        perror("faultproxy: listen");
        goto fail;
    }
    fp->port = ntohs(a.sin_port);
    if (pipe2(fp->ctl, O_CLOEXEC | O_NONBLOCK) != 0) {
        perror("faultproxy: pipe");
        goto fail;
    }
    fp->mode = FP_PASS;
    pthread_mutex_init(&fp->mu, NULL);
    pthread_cond_init(&fp->cv, NULL);
    if (pthread_create(&fp->thread, NULL, proxy_main, fp) != 0) {
        fprintf(stderr, "faultproxy: cannot start its thread\n");
        pthread_mutex_destroy(&fp->mu);
        pthread_cond_destroy(&fp->cv);
        goto fail;
    }
    return fp;
fail:
    if (fp->lfd >= 0) close(fp->lfd);
    if (fp->ctl[0] >= 0) close(fp->ctl[0]);
    if (fp->ctl[1] >= 0) close(fp->ctl[1]);
    free(fp);
    return NULL;
}

int fp_port(const faultproxy *fp) { return fp->port; }

uint64_t fp_connections(const faultproxy *fp) { return atomic_load(&((faultproxy *)fp)->accepted); }

uint64_t fp_requests(const faultproxy *fp) { return atomic_load(&((faultproxy *)fp)->requests); }

/* Hands a command to the thread and waits until it has been carried out. */
static int send_cmd(faultproxy *fp, int cmd, fp_mode m) {
    pthread_mutex_lock(&fp->mu);
    while (fp->cmd != CMD_NONE)
        pthread_cond_wait(&fp->cv, &fp->mu);
    fp->cmd = cmd;
    fp->cmd_mode = m;
    uint64_t seq = ++fp->cmd_seq;
    char one = 1;
    /* The pipe is non-blocking: if it is full, a wake-up is pending anyway. */
    if (write(fp->ctl[1], &one, 1) < 0 && errno != EAGAIN) perror("faultproxy: write");
    while (fp->done_seq < seq)
        pthread_cond_wait(&fp->cv, &fp->mu);
    int rc = fp->cmd_rc;
    fp->cmd_rc = 0;
    pthread_mutex_unlock(&fp->mu);
    return rc;
}

int fp_set_mode(faultproxy *fp, fp_mode mode) { return send_cmd(fp, CMD_MODE, mode); }

void fp_stop(faultproxy *fp) {
    if (fp == NULL) return;
    send_cmd(fp, CMD_STOP, FP_PASS);
    pthread_join(fp->thread, NULL);
    close_all(fp);
    free((char *)fp->mode.response);
    if (fp->lfd >= 0) close(fp->lfd);
    close(fp->ctl[0]);
    close(fp->ctl[1]);
    pthread_mutex_destroy(&fp->mu);
    pthread_cond_destroy(&fp->cv);
    free(fp);
}
