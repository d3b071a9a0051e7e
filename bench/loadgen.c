/*
 * lockstep's benchmark load generator and backends, compiled at bench time with `cc -O2`
 * (bench/native.ts). One binary, five modes; every mode reports on stdout as one JSON line
 * (`serve` prints its ports, then nothing). CPU figures are getrusage(RUSAGE_SELF), so the
 * runner can show the client was not the bottleneck (its CPU time is a fraction of wall time).
 *
 *   loadgen serve NPORTS            listen on NPORTS free loopback ports (printed as JSON);
 *                                   per connection, a first byte 'S' makes it a sink (reads and
 *                                   drops, closes after the client's FIN), anything else an echo.
 *   loadgen lat PORT SIZE N WARMUP  one connection, closed loop: SIZE bytes out, SIZE bytes back,
 *                                   N times after WARMUP untimed ones; p50/p99/p99.9 in µs.
 *   loadgen bulk PORT BYTES         one connection: 'S' then BYTES bytes in 256 KiB writes,
 *                                   shutdown(SHUT_WR), wait for the server's close; MB/s.
 *   loadgen conns PORT N            open N connections (at most 256 handshakes in flight), do
 *                                   one 16-byte echo exchange on each, print {"ready":N}, hold
 *                                   them until stdin closes or says anything, then close all.
 *   loadgen rate PORT K SECONDS SIZE
 *                                   connection rate: K threads, each looping connect, write SIZE
 *                                   bytes, read the SIZE-byte echo, close, for SECONDS; counts
 *                                   connections completed per second and failures by kind (a
 *                                   failed connection is counted and the loop goes on), and the
 *                                   p50/p99 of one whole connect..close in µs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BULK_CHUNK_BYTES (256 * 1024)
#define READ_BUF_BYTES (256 * 1024)
#define CONNS_HANDSHAKES_IN_FLIGHT 256
#define CONNS_EXCHANGE_BYTES 16
#define RATE_IO_TIMEOUT_S 5

static void die(const char *what) { fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno)); exit(1); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

static int connect_blocking(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in a = loopback(port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) { if (errno == EINTR) continue; die("write"); }
    p += w; n -= (size_t)w;
  }
}

static void read_exactly(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0) { if (errno == EINTR) continue; die("read"); }
    if (r == 0) { fprintf(stderr, "loadgen: connection closed early\n"); exit(1); }
    p += r; n -= (size_t)r;
  }
}

static void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* ---------- serve ---------- */

enum { KIND_UNKNOWN = 0, KIND_ECHO, KIND_SINK };

struct conn {
  int kind;
  int listening;
  char *pending;      /* echo bytes the socket would not take yet */
  size_t pending_len;
};

static __attribute__((noreturn)) void serve(int nports) {
  int ep = epoll_create1(0);
  if (ep < 0) die("epoll_create1");
  size_t cap = 1 << 16;
  struct conn *conns = calloc(cap, sizeof *conns);
  printf("{\"ports\":[");
  for (int i = 0; i < nports; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(0);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    set_nonblocking(fd);
    if ((size_t)fd >= cap) die("fd table");
    conns[fd].listening = 1;
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    printf("%s%d", i ? "," : "", ntohs(a.sin_port));
  }
  printf("]}\n");
  fflush(stdout);
  static char buf[READ_BUF_BYTES];
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      struct conn *c = &conns[fd];
      if (c->listening) {
        for (;;) {
          int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
          if (cfd < 0) break;
          if ((size_t)cfd >= cap) {
            size_t ncap = cap * 2;
            while ((size_t)cfd >= ncap) ncap *= 2;
            conns = realloc(conns, ncap * sizeof *conns);
            memset(conns + cap, 0, (ncap - cap) * sizeof *conns);
            cap = ncap;
            c = &conns[fd];
          }
          int one = 1;
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          memset(&conns[cfd], 0, sizeof conns[cfd]);
          struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = cfd };
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);
        }
        continue;
      }
      int closing = 0;
      if (events[i].events & EPOLLOUT && c->pending_len > 0) {
        ssize_t w = write(fd, c->pending, c->pending_len);
        if (w > 0) {
          memmove(c->pending, c->pending + w, c->pending_len - (size_t)w);
          c->pending_len -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN) closing = 1;
        if (c->pending_len == 0) {
          struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = fd };
          epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
      }
      while (!closing && c->pending_len == 0 && (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) { if (errno == EAGAIN) break; closing = 1; break; }
        if (r == 0) { closing = 1; break; }
        if (c->kind == KIND_UNKNOWN) c->kind = buf[0] == 'S' ? KIND_SINK : KIND_ECHO;
        if (c->kind == KIND_SINK) continue;
        ssize_t w = write(fd, buf, (size_t)r);
        if (w < 0) { if (errno != EAGAIN) { closing = 1; break; } w = 0; }
        if (w < r) {
          c->pending = realloc(c->pending, (size_t)(r - w));
          memcpy(c->pending, buf + w, (size_t)(r - w));
          c->pending_len = (size_t)(r - w);
          struct epoll_event ev = { .events = EPOLLOUT, .data.fd = fd };
          epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
        if (r < (ssize_t)sizeof buf) break;
      }
      if (closing) {
        free(c->pending);
        memset(c, 0, sizeof *c);
        close(fd);
      }
    }
  }
}

/* ---------- lat ---------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double p) {
  long i = (long)(p / 100.0 * (double)n);
  if (i >= n) i = n - 1;
  return sorted[i];
}

static int lat(int port, long size, long count, long warmup) {
  int fd = connect_blocking(port);
  char *out = malloc((size_t)size), *in = malloc((size_t)size);
  memset(out, 'E', (size_t)size);
  double *us = malloc(sizeof(double) * (size_t)count);
  for (long i = 0; i < warmup; i++) { write_all(fd, out, (size_t)size); read_exactly(fd, in, (size_t)size); }
  double cpu0 = cpu_s(), wall0 = now_s();
  for (long i = 0; i < count; i++) {
    double t0 = now_s();
    write_all(fd, out, (size_t)size);
    read_exactly(fd, in, (size_t)size);
    us[i] = (now_s() - t0) * 1e6;
  }
  double wall = now_s() - wall0, cpu = cpu_s() - cpu0;
  close(fd);
  double sum = 0;
  for (long i = 0; i < count; i++) sum += us[i];
  qsort(us, (size_t)count, sizeof(double), cmp_double);
  printf("{\"p50\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"mean\":%.2f,\"max\":%.2f,\"count\":%ld,\"wall_s\":%.4f,\"cpu_s\":%.4f}\n",
         pct(us, count, 50), pct(us, count, 99), pct(us, count, 99.9), sum / (double)count, us[count - 1], count, wall, cpu);
  return 0;
}

/* ---------- bulk ---------- */

static int bulk(int port, long long bytes) {
  int fd = connect_blocking(port);
  char *chunk = malloc(BULK_CHUNK_BYTES);
  memset(chunk, 'S', BULK_CHUNK_BYTES);
  double cpu0 = cpu_s(), wall0 = now_s();
  long long left = bytes;
  while (left > 0) {
    size_t n = left < BULK_CHUNK_BYTES ? (size_t)left : BULK_CHUNK_BYTES;
    write_all(fd, chunk, n);
    left -= (long long)n;
  }
  double wrote = now_s() - wall0;
  shutdown(fd, SHUT_WR);
  char sink[4096];
  long long back = 0;
  for (;;) {
    ssize_t r = read(fd, sink, sizeof sink);
    if (r < 0) { if (errno == EINTR) continue; die("read"); }
    if (r == 0) break;
    back += r;
  }
  double wall = now_s() - wall0, cpu = cpu_s() - cpu0;
  close(fd);
  printf("{\"bytes\":%lld,\"wall_s\":%.4f,\"write_s\":%.4f,\"mb_s\":%.2f,\"cpu_s\":%.4f,\"reply_bytes\":%lld}\n",
         bytes, wall, wrote, (double)bytes / 1e6 / wall, cpu, back);
  return 0;
}

/* ---------- conns ---------- */

static int conns_mode(int port, long n) {
  int ep = epoll_create1(0);
  int *fds = calloc((size_t)n, sizeof(int));
  long *got = calloc((size_t)n, sizeof(long));
  char msg[CONNS_EXCHANGE_BYTES];
  memset(msg, 'E', sizeof msg);
  long opened = 0, connected = 0, answered = 0, inflight = 0;
  double cpu0 = cpu_s(), wall0 = now_s();
  struct epoll_event events[512];
  char buf[256];
  while (answered < n) {
    while (opened < n && inflight < CONNS_HANDSHAKES_IN_FLIGHT) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      if (fd < 0) die("socket (raise RLIMIT_NOFILE?)");
      struct sockaddr_in a = loopback(port);
      if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) die("connect");
      fds[opened] = fd;
      struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = (uint64_t)opened };
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      opened++; inflight++;
    }
    int k = epoll_wait(ep, events, 512, 10000);
    if (k == 0) { fprintf(stderr, "loadgen: conns stuck at %ld connected, %ld answered of %ld\n", connected, answered, n); exit(1); }
    for (int i = 0; i < k; i++) {
      long idx = (long)events[i].data.u64;
      int fd = fds[idx];
      if (events[i].events & (EPOLLERR | EPOLLHUP)) { fprintf(stderr, "loadgen: connection %ld failed\n", idx); exit(1); }
      if (events[i].events & EPOLLOUT) {
        connected++; inflight--;
        write_all(fd, msg, sizeof msg);
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)idx };
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
      } else if (events[i].events & EPOLLIN) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) { if (r < 0 && errno == EAGAIN) continue; fprintf(stderr, "loadgen: connection %ld closed\n", idx); exit(1); }
        got[idx] += r;
        if (got[idx] >= CONNS_EXCHANGE_BYTES) { answered++; epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); }
      }
    }
  }
  printf("{\"ready\":%ld,\"open_s\":%.4f,\"cpu_s\":%.4f}\n", n, now_s() - wall0, cpu_s() - cpu0);
  fflush(stdout);
  read(0, buf, sizeof buf); /* hold until told (or stdin closes) */
  for (long i = 0; i < n; i++) close(fds[i]);
  return 0;
}

/* ---------- rate ---------- */

/* Why a connection of the rate loop failed. */
enum { F_CONNECT = 0, F_ADDR, F_RESET, F_EOF, F_TIMEOUT, F_OTHER, F_KINDS };
static const char *const FAIL_NAMES[F_KINDS] = { "connect", "no_local_port", "reset", "closed_early", "timeout", "other" };

struct rate_thread {
  pthread_t tid;
  int port;
  long size;
  double deadline;
  long ok;
  long failed[F_KINDS];
  double *us;       /* connect..close of each completed connection, µs */
  long n_us, cap_us;
};

static int classify(int err) {
  if (err == ECONNRESET || err == EPIPE) return F_RESET;
  if (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT) return F_TIMEOUT;
  return F_OTHER;
}

/* One connection: connect, write SIZE bytes, read SIZE bytes back, close. -1 on success, else why. */
static int rate_once(struct rate_thread *t, const char *out, char *in) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return F_OTHER;
  /* A stuck connection must not stall the loop: SO_SNDTIMEO also bounds connect(). */
  struct timeval tv = { .tv_sec = RATE_IO_TIMEOUT_S, .tv_usec = 0 };
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = loopback(t->port);
  int why = -1;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    why = errno == EADDRNOTAVAIL ? F_ADDR : (errno == EINPROGRESS || errno == ETIMEDOUT) ? F_TIMEOUT : F_CONNECT;
    goto done;
  }
  for (long off = 0; off < t->size;) {
    ssize_t w = write(fd, out + off, (size_t)(t->size - off));
    if (w < 0) { if (errno == EINTR) continue; why = classify(errno); goto done; }
    off += w;
  }
  for (long got = 0; got < t->size;) {
    ssize_t r = read(fd, in + got, (size_t)(t->size - got));
    if (r < 0) { if (errno == EINTR) continue; why = classify(errno); goto done; }
    if (r == 0) { why = F_EOF; goto done; }
    got += r;
  }
done:
  close(fd);
  return why;
}

static void *rate_thread_main(void *arg) {
  struct rate_thread *t = arg;
  char *out = malloc((size_t)t->size), *in = malloc((size_t)t->size);
  memset(out, 'E', (size_t)t->size);
  for (;;) {
    double t0 = now_s();
    if (t0 >= t->deadline) break;
    int why = rate_once(t, out, in);
    if (why >= 0) {
      t->failed[why]++;
      if (why == F_ADDR || why == F_CONNECT) usleep(1000); /* do not spin on a refusing port */
      continue;
    }
    t->ok++;
    if (t->n_us == t->cap_us) {
      t->cap_us = t->cap_us ? t->cap_us * 2 : 4096;
      t->us = realloc(t->us, sizeof(double) * (size_t)t->cap_us);
    }
    t->us[t->n_us++] = (now_s() - t0) * 1e6;
  }
  free(out); free(in);
  return NULL;
}

static int rate_mode(int port, int k, double seconds, long size) {
  if (k < 1 || size < 1 || seconds <= 0) { fprintf(stderr, "loadgen: rate needs K >= 1, SECONDS > 0, SIZE >= 1\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  struct rate_thread *ts = calloc((size_t)k, sizeof *ts);
  double cpu0 = cpu_s(), wall0 = now_s();
  for (int i = 0; i < k; i++) {
    ts[i].port = port; ts[i].size = size; ts[i].deadline = wall0 + seconds;
    if (pthread_create(&ts[i].tid, NULL, rate_thread_main, &ts[i]) != 0) die("pthread_create");
  }
  long ok = 0, failed[F_KINDS] = { 0 }, n = 0;
  for (int i = 0; i < k; i++) {
    pthread_join(ts[i].tid, NULL);
    ok += ts[i].ok;
    for (int f = 0; f < F_KINDS; f++) failed[f] += ts[i].failed[f];
    n += ts[i].n_us;
  }
  double wall = now_s() - wall0, cpu = cpu_s() - cpu0;
  double *us = malloc(sizeof(double) * (size_t)(n ? n : 1));
  long m = 0;
  for (int i = 0; i < k; i++) { memcpy(us + m, ts[i].us, sizeof(double) * (size_t)ts[i].n_us); m += ts[i].n_us; }
  qsort(us, (size_t)n, sizeof(double), cmp_double);
  long nfailed = 0;
  for (int f = 0; f < F_KINDS; f++) nfailed += failed[f];
  printf("{\"clients\":%d,\"size\":%ld,\"ok\":%ld,\"failed\":%ld,\"failures\":{", k, size, ok, nfailed);
  for (int f = 0; f < F_KINDS; f++) printf("%s\"%s\":%ld", f ? "," : "", FAIL_NAMES[f], failed[f]);
  printf("},\"conns_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"wall_s\":%.4f,\"cpu_s\":%.4f}\n",
         (double)ok / wall, n ? pct(us, n, 50) : 0.0, n ? pct(us, n, 99) : 0.0, wall, cpu);
  return 0;
}

int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the runner, even if it dies */
  if (argc >= 3 && !strcmp(argv[1], "serve")) serve(atoi(argv[2]));
  if (argc >= 6 && !strcmp(argv[1], "lat")) return lat(atoi(argv[2]), atol(argv[3]), atol(argv[4]), atol(argv[5]));
  if (argc >= 4 && !strcmp(argv[1], "bulk")) return bulk(atoi(argv[2]), atoll(argv[3]));
  if (argc >= 4 && !strcmp(argv[1], "conns")) return conns_mode(atoi(argv[2]), atol(argv[3]));
  if (argc >= 6 && !strcmp(argv[1], "rate")) return rate_mode(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), atol(argv[5]));
  fprintf(stderr, "usage: loadgen serve NPORTS | lat PORT SIZE N WARMUP | bulk PORT BYTES | conns PORT N | rate PORT K SECONDS SIZE\n");
  return 2;
}
