/*
 * The C boundary under concurrency and misuse (issue #14, finding 4), meant to run
 * under valgrind and ASan too:
 *  1. an out-of-range log level is refused, not undefined behaviour;
 *  2. after stunfwd_set_log_callback(NULL) returns, the old callback is not running
 *     and is not called again (its user_data may be freed);
 *  3. the signal-server functions may run on several threads at once;
 *  4. freeing an engine inside its own event callback: no callback runs after free
 *     returns; a thread blocked in wait_connected while another frees the engine gets
 *     STUNFWD_RESULT_STOPPED (not a use after free);
 *  5. a log callback running on an engine's only worker thread may call back into the
 *     engine (add_mapping) without deadlocking;
 *  6. stunfwd_engine_cancel_waits ends a wait blocked on another thread
 *     (STUNFWD_RESULT_CANCELLED) and the engine runs on.
 * Prints "soundness: N passed, 0 failed" and exits 0 only if every check held.
 */
#include "stunfwd.h"
#include "common.h"

#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>

static int passes = 0, failures = 0;

#define EXPECT(cond, ...)                                                         \
  do {                                                                            \
    if (cond) {                                                                   \
      passes++;                                                                   \
    } else {                                                                      \
      failures++;                                                                 \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);             \
      fprintf(stderr, __VA_ARGS__);                                               \
      fprintf(stderr, "\n");                                                      \
    }                                                                             \
  } while (0)

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void on_timeout(int sig) {
  (void)sig;
  static const char msg[] = "soundness: timed out (a deadlock?)\n";
  ssize_t n = write(2, msg, sizeof msg - 1);
  (void)n;
  _exit(2);
}

/* ---- 2. a slow log callback, and the proof that none runs after it was cleared */
static atomic_int log_active = 0, log_calls = 0;

static void slow_log(void *user_data, stunfwd_log_level level, const char *message) {
  (void)level;
  (void)message;
  int *alive = (int *)user_data;
  atomic_fetch_add(&log_active, 1);
  atomic_fetch_add(&log_calls, 1);
  sleep_ms(20);
  if (*alive != 1) abort(); /* user_data used after the host freed it */
  atomic_fetch_sub(&log_active, 1);
}

/* ---- 5. a log callback that calls back into the engine from a worker thread */
static stunfwd_engine *volatile reentrant_engine = NULL;
static atomic_int reentered = 0, reentrant_rc = -1;

static void reentrant_log(void *user_data, stunfwd_log_level level, const char *message) {
  (void)user_data;
  (void)level;
  (void)message;
  stunfwd_engine *e = reentrant_engine;
  char name[32] = {0};
  prctl(PR_GET_NAME, name, 0, 0, 0);
  /* Only from the engine's (single) runtime worker: the case that could deadlock. */
  if (e == NULL || strncmp(name, "stunfwd-worker", 14) != 0) return;
  if (atomic_exchange(&reentered, 1) != 0) return;
  uint64_t id = 0;
  atomic_store(&reentrant_rc, (int)stunfwd_engine_add_mapping(e, "tcp:127.0.0.1:0:127.0.0.1:9", &id));
}

/* ---- 3. signal server from several threads */
static void *server_worker(void *arg) {
  stunfwd_signal_server *s = (stunfwd_signal_server *)arg;
  for (int i = 0; i < 50; i++) {
    char *url = NULL;
    if (stunfwd_signal_server_url(s, &url) == STUNFWD_RESULT_OK) stunfwd_string_free(url);
    if (i == 25) stunfwd_signal_server_stop(s, 500);
  }
  return NULL;
}

/* ---- 4. events after free, and wait_connected during free */
struct freeing {
  stunfwd_engine *volatile engine;
  atomic_int freed;
  atomic_int after_free;
};

static void free_in_callback(void *user_data, const stunfwd_event *event) {
  struct freeing *f = (struct freeing *)user_data;
  if (atomic_load(&f->freed)) {
    atomic_fetch_add(&f->after_free, 1);
    return;
  }
  stunfwd_engine *e = f->engine;
  if (e != NULL && event->kind == STUNFWD_EVENT_KIND_MAPPING_ADDED) {
    stunfwd_engine_free(e);
    atomic_store(&f->freed, 1);
  }
}

/* 4c/4d: free from the callback while main stops; a callback blocked in a call while
 * main frees. */
struct racing {
  stunfwd_engine *volatile engine;
  atomic_int freed_in_callback;
  atomic_int wait_rc;
  atomic_int waiting;
};

static void free_on_stopped(void *user_data, const stunfwd_event *event) {
  struct racing *r = (struct racing *)user_data;
  stunfwd_engine *e = r->engine;
  if (e != NULL && event->kind == STUNFWD_EVENT_KIND_STATE && event->state == STUNFWD_STATE_STOPPED &&
      !atomic_exchange(&r->freed_in_callback, 1))
    stunfwd_engine_free(e);
}

static void wait_in_callback(void *user_data, const stunfwd_event *event) {
  struct racing *r = (struct racing *)user_data;
  stunfwd_engine *e = r->engine;
  if (e != NULL && event->kind == STUNFWD_EVENT_KIND_MAPPING_ADDED && !atomic_exchange(&r->waiting, 1))
    atomic_store(&r->wait_rc, (int)stunfwd_engine_wait_connected(e, 15000));
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct waiter {
  stunfwd_engine *engine;
  int rc;
};

static void *wait_worker(void *arg) {
  struct waiter *w = (struct waiter *)arg;
  w->rc = (int)stunfwd_engine_wait_connected(w->engine, 20000);
  return NULL;
}

static void config(char *out, size_t n, const char *mode, const char *room, const char *url,
                   const char *stun, const char *extra) {
  snprintf(out, n,
           "{\"mode\":\"%s\",\"room\":\"%s\",\"secret\":\"soundness\",\"signalUrl\":\"%s\","
           "\"stunServers\":[\"%s\"],\"bind\":\"127.0.0.1:0\"%s}",
           mode, room, url, stun, extra);
}

int main(void) {
  signal(SIGALRM, on_timeout);
  alarm(120);

  /* 1. Log levels from C are integers, checked. */
  EXPECT(stunfwd_set_log_callback(NULL, NULL, 0) == STUNFWD_RESULT_INVALID_ARGUMENT, "level 0");
  EXPECT(stunfwd_set_log_callback(NULL, NULL, 6) == STUNFWD_RESULT_INVALID_ARGUMENT, "level 6");
  EXPECT(stunfwd_set_log_callback(NULL, NULL, -1) == STUNFWD_RESULT_INVALID_ARGUMENT, "level -1");
  EXPECT(strstr(stunfwd_last_error_message(), "max_level") != NULL, "%s", stunfwd_last_error_message());

  stunfwd_signal_server *rendezvous = NULL;
  CHECK(stunfwd_signal_server_start("127.0.0.1:0", "127.0.0.1:0", &rendezvous));
  char *url = NULL, *stun = NULL;
  CHECK(stunfwd_signal_server_url(rendezvous, &url));
  CHECK(stunfwd_signal_server_stun_addr(rendezvous, &stun));
  char cfg[1024];

  /* 2. Clearing the log callback waits for calls in flight. */
  int *alive = malloc(sizeof *alive);
  *alive = 1;
  CHECK(stunfwd_set_log_callback(slow_log, alive, STUNFWD_LOG_LEVEL_TRACE));
  config(cfg, sizeof cfg, "client", "soundness-log", url, stun, "");
  stunfwd_engine *logger = NULL;
  CHECK(stunfwd_engine_start(cfg, NULL, NULL, &logger));
  for (int i = 0; i < 500 && atomic_load(&log_active) == 0; i++) sleep_ms(2);
  EXPECT(atomic_load(&log_active) > 0, "no log callback was running to race with");
  CHECK(stunfwd_set_log_callback(NULL, NULL, STUNFWD_LOG_LEVEL_TRACE));
  EXPECT(atomic_load(&log_active) == 0, "%d log callbacks still running after it was cleared",
         atomic_load(&log_active));
  *alive = 0;
  free(alive);
  int calls = atomic_load(&log_calls);
  sleep_ms(300);
  EXPECT(atomic_load(&log_calls) == calls, "the cleared callback was called again");
  stunfwd_engine_free(logger);

  /* 5. Calling back in from the log callback on the engine's single worker. */
  CHECK(stunfwd_set_log_callback(reentrant_log, NULL, STUNFWD_LOG_LEVEL_TRACE));
  config(cfg, sizeof cfg, "client", "soundness-reenter", url, stun, ",\"performance\":{\"workers\":1}");
  stunfwd_engine *reentrant = NULL;
  CHECK(stunfwd_engine_start(cfg, NULL, NULL, &reentrant));
  reentrant_engine = reentrant;
  for (int i = 0; i < 1000 && atomic_load(&reentrant_rc) == -1; i++) sleep_ms(5);
  EXPECT(atomic_load(&reentrant_rc) == STUNFWD_RESULT_OK, "add_mapping from the log callback: %d",
         atomic_load(&reentrant_rc));
  CHECK(stunfwd_set_log_callback(NULL, NULL, STUNFWD_LOG_LEVEL_TRACE));
  reentrant_engine = NULL;
  stunfwd_engine_free(reentrant);

  /* 4a. Free inside the engine's own event callback: nothing after free returned. */
  struct freeing f = {NULL, 0, 0};
  config(cfg, sizeof cfg, "client", "soundness-free", url, stun, "");
  stunfwd_engine *self_freeing = NULL;
  CHECK(stunfwd_engine_start(cfg, free_in_callback, &f, &self_freeing));
  f.engine = self_freeing;
  uint64_t mapping = 0;
  /* Its mapping-added event makes the callback free the engine. */
  CHECK(stunfwd_engine_add_mapping(self_freeing, "tcp:127.0.0.1:0:127.0.0.1:9", &mapping));
  for (int i = 0; i < 1000 && !atomic_load(&f.freed); i++) sleep_ms(5);
  sleep_ms(500);
  EXPECT(atomic_load(&f.freed) == 1, "the callback never freed the engine");
  EXPECT(atomic_load(&f.after_free) == 0, "%d events after free returned", atomic_load(&f.after_free));

  /* 4b. wait_connected on one thread, free on another. */
  config(cfg, sizeof cfg, "client", "soundness-wait", url, stun, "");
  struct waiter w = {NULL, -1};
  CHECK(stunfwd_engine_start(cfg, NULL, NULL, &w.engine));
  pthread_t waiter;
  pthread_create(&waiter, NULL, wait_worker, &w);
  sleep_ms(300);
  stunfwd_engine_free(w.engine);
  pthread_join(waiter, NULL);
  EXPECT(w.rc == STUNFWD_RESULT_STOPPED, "wait_connected returned %d", w.rc);

  /* 6. A wait blocked on another thread, cancelled from this one. */
  config(cfg, sizeof cfg, "client", "soundness-cancel", url, stun, "");
  struct waiter c = {NULL, -1};
  CHECK(stunfwd_engine_start(cfg, NULL, NULL, &c.engine));
  pthread_create(&waiter, NULL, wait_worker, &c);
  sleep_ms(300);
  double cancelled_at = now_s();
  EXPECT(stunfwd_engine_cancel_waits(c.engine) == STUNFWD_RESULT_OK, "cancel_waits");
  pthread_join(waiter, NULL);
  EXPECT(c.rc == STUNFWD_RESULT_CANCELLED, "wait_connected returned %d", c.rc);
  EXPECT(now_s() - cancelled_at < 2.0, "the wait ended %.1f s after cancel_waits", now_s() - cancelled_at);
  stunfwd_state st = STUNFWD_STATE_STOPPED;
  CHECK(stunfwd_engine_state(c.engine, &st));
  EXPECT(st != STUNFWD_STATE_STOPPED, "the engine stopped");
  EXPECT(stunfwd_engine_wait_connected(c.engine, 50) == STUNFWD_RESULT_TIMEOUT, "a later wait");
  stunfwd_engine_free(c.engine);

  /* 4c. The callback frees the engine on `stopped` while this thread is inside stop. */
  struct racing r1 = {NULL, 0, -1, 0};
  config(cfg, sizeof cfg, "client", "soundness-stop-free", url, stun, "");
  stunfwd_engine *stopping = NULL;
  CHECK(stunfwd_engine_start(cfg, free_on_stopped, &r1, &stopping));
  r1.engine = stopping;
  sleep_ms(300);
  double t0 = now_s();
  EXPECT(stunfwd_engine_stop(stopping, 1000) == STUNFWD_RESULT_OK, "stop while the callback frees");
  EXPECT(now_s() - t0 < 5.0, "stop took %.1f s", now_s() - t0);
  for (int i = 0; i < 200 && !atomic_load(&r1.freed_in_callback); i++) sleep_ms(5);
  EXPECT(atomic_load(&r1.freed_in_callback) == 1, "the callback did not free the engine");
  sleep_ms(300); /* the helper thread releases it */

  /* 4d. A callback blocked in wait_connected while this thread frees the engine: free
   * wakes it (STOPPED) instead of waiting for its 15 s timeout. */
  struct racing r2 = {NULL, 0, -1, 0};
  config(cfg, sizeof cfg, "client", "soundness-free-wait", url, stun, "");
  stunfwd_engine *blocked = NULL;
  CHECK(stunfwd_engine_start(cfg, wait_in_callback, &r2, &blocked));
  r2.engine = blocked;
  CHECK(stunfwd_engine_add_mapping(blocked, "tcp:127.0.0.1:0:127.0.0.1:9", &mapping));
  for (int i = 0; i < 200 && !atomic_load(&r2.waiting); i++) sleep_ms(5);
  sleep_ms(200);
  t0 = now_s();
  stunfwd_engine_free(blocked);
  double took = now_s() - t0;
  EXPECT(took < 5.0, "free took %.1f s while a callback was blocked", took);
  EXPECT(atomic_load(&r2.wait_rc) == STUNFWD_RESULT_STOPPED, "the callback's wait returned %d",
         atomic_load(&r2.wait_rc));

  /* 3. The signal-server functions from four threads at once, stop among them. */
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, server_worker, rendezvous);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  char *again = NULL;
  EXPECT(stunfwd_signal_server_url(rendezvous, &again) == STUNFWD_RESULT_OK, "url after stop");
  stunfwd_string_free(again);
  EXPECT(stunfwd_signal_server_stop(rendezvous, 500) == STUNFWD_RESULT_OK, "stop twice");

  stunfwd_string_free(url);
  stunfwd_string_free(stun);
  stunfwd_signal_server_free(rendezvous);
  printf("soundness: %d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}
