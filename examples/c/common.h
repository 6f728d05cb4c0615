/* Small helpers shared by the C examples and tests: a loopback TCP echo service. */
#ifndef STUNFWD_EXAMPLE_COMMON_H
#define STUNFWD_EXAMPLE_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                               \
  do {                                                                            \
    stunfwd_result check_rc_ = (call);                                            \
    if (check_rc_ != STUNFWD_RESULT_OK) {                                         \
      fprintf(stderr, "%s:%d: %s failed (%d): %s\n", __FILE__, __LINE__, #call,   \
              (int)check_rc_, stunfwd_last_error_message());                      \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

static inline void *echo_thread(void *arg) {
  int listener = *(int *)arg;
  for (;;) {
    int c = accept(listener, NULL, NULL);
    if (c < 0) break;
    char buf[16384];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) {
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = write(c, buf + off, (size_t)(n - off));
        if (w <= 0) break;
        off += w;
      }
    }
    close(c);
  }
  return NULL;
}

/* Starts a TCP echo service on 127.0.0.1 and returns its port. */
static inline unsigned short start_echo(int *listener_out, pthread_t *thread_out) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0 ||
      getsockname(s, (struct sockaddr *)&a, &len) != 0) {
    perror("echo service");
    exit(1);
  }
  *listener_out = s;
  pthread_create(thread_out, NULL, echo_thread, listener_out);
  return ntohs(a.sin_port);
}

static inline void stop_echo(int listener, pthread_t thread) {
  shutdown(listener, SHUT_RDWR);
  close(listener);
  pthread_join(thread, NULL);
}

/* Connects to 127.0.0.1:port, sends len bytes, reads them back; 0 if identical. */
static inline int echo_round_trip(unsigned short port, size_t len) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("connect to mapping");
    return -1;
  }
  unsigned char *out = (unsigned char *)malloc(len), *in = (unsigned char *)malloc(len);
  for (size_t i = 0; i < len; i++) out[i] = (unsigned char)(i * 31 + 7);
  size_t sent = 0, got = 0;
  int rc = 0;
  while (got < len) {
    if (sent < len) {
      size_t chunk = len - sent < 8192 ? len - sent : 8192;
      ssize_t w = write(s, out + sent, chunk);
      if (w <= 0) { rc = -1; break; }
      sent += (size_t)w;
    }
    ssize_t r = read(s, in + got, len - got < 8192 ? len - got : 8192);
    if (r <= 0) { rc = -1; break; }
    got += (size_t)r;
  }
  if (rc == 0 && memcmp(in, out, len) != 0) rc = -1;
  free(out);
  free(in);
  close(s);
  return rc;
}

#endif
