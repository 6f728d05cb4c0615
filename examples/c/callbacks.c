/*
 * Log and event callbacks: the expected events arrive (mapping added, connected,
 * stopped), log lines reach the host, and stopping the engine from inside its own
 * event callback does not deadlock.
 */
#include "stunfwd.h"
#include "common.h"

#include <stdatomic.h>
#include <time.h>

static atomic_int log_lines = 0;
static atomic_int saw_mapping_added = 0, saw_connected = 0, saw_stopped = 0;
static atomic_int stop_rc = -1;
static stunfwd_engine *volatile client_engine = NULL;

static void on_log(void *user_data, stunfwd_log_level level, const char *message) {
  (void)user_data;
  if (level <= STUNFWD_LOG_LEVEL_INFO && message != NULL && message[0] != 0) atomic_fetch_add(&log_lines, 1);
}

static void on_event(void *user_data, const stunfwd_event *event) {
  int *tag = (int *)user_data;
  if (*tag != 42) return; /* user data arrives intact */
  if (event->kind == STUNFWD_EVENT_KIND_MAPPING_ADDED) atomic_store(&saw_mapping_added, 1);
  if (event->kind == STUNFWD_EVENT_KIND_STATE && event->state == STUNFWD_STATE_CONNECTED) {
    atomic_store(&saw_connected, 1);
    /* Stop our own engine from inside its event callback. */
    atomic_store(&stop_rc, (int)stunfwd_engine_stop(client_engine, 2000));
  }
  if (event->kind == STUNFWD_EVENT_KIND_STATE && event->state == STUNFWD_STATE_STOPPED)
    atomic_store(&saw_stopped, 1);
}

int main(void) {
  CHECK(stunfwd_set_log_callback(on_log, NULL, STUNFWD_LOG_LEVEL_INFO));
  stunfwd_signal_server *rendezvous = NULL;
  CHECK(stunfwd_signal_server_start("127.0.0.1:0", "127.0.0.1:0", &rendezvous));
  char *url = NULL, *stun = NULL;
  CHECK(stunfwd_signal_server_url(rendezvous, &url));
  CHECK(stunfwd_signal_server_stun_addr(rendezvous, &stun));
  char cfg[1024];
  int tag = 42;

  snprintf(cfg, sizeof cfg,
           "{\"mode\":\"server\",\"room\":\"c-callbacks\",\"secret\":\"c callbacks\",\"signalUrl\":\"%s\","
           "\"stunServers\":[\"%s\"],\"bind\":\"127.0.0.1:0\"}", url, stun);
  stunfwd_engine *server = NULL;
  CHECK(stunfwd_engine_start(cfg, NULL, NULL, &server));
  snprintf(cfg, sizeof cfg,
           "{\"mode\":\"client\",\"room\":\"c-callbacks\",\"secret\":\"c callbacks\",\"signalUrl\":\"%s\","
           "\"stunServers\":[\"%s\"],\"bind\":\"127.0.0.1:0\",\"mappings\":[\"tcp:0:22\"]}",
           url, stun);
  stunfwd_engine *client = NULL;
  CHECK(stunfwd_engine_start(cfg, on_event, &tag, &client));
  client_engine = client;

  /* Wait (bounded) for the callback to have stopped the engine. */
  stunfwd_state state = STUNFWD_STATE_STARTING;
  for (int i = 0; i < 400 && !atomic_load(&saw_stopped); i++) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  CHECK(stunfwd_engine_state(client, &state));

  int failures = 0;
  if (!atomic_load(&saw_mapping_added)) { fprintf(stderr, "FAIL: no mapping-added event\n"); failures++; }
  if (!atomic_load(&saw_connected)) { fprintf(stderr, "FAIL: no connected event\n"); failures++; }
  if (atomic_load(&stop_rc) != STUNFWD_RESULT_OK) { fprintf(stderr, "FAIL: stop from callback returned %d\n", atomic_load(&stop_rc)); failures++; }
  if (!atomic_load(&saw_stopped)) { fprintf(stderr, "FAIL: no stopped event\n"); failures++; }
  if (state != STUNFWD_STATE_STOPPED) { fprintf(stderr, "FAIL: state %d after stop\n", (int)state); failures++; }
  if (atomic_load(&log_lines) == 0) { fprintf(stderr, "FAIL: no log lines reached the callback\n"); failures++; }

  stunfwd_engine_free(client);
  stunfwd_engine_free(server);
  stunfwd_signal_server_free(rendezvous);
  stunfwd_string_free(url);
  stunfwd_string_free(stun);
  CHECK(stunfwd_set_log_callback(NULL, NULL, STUNFWD_LOG_LEVEL_INFO));
  printf("callbacks: %d log lines; events mapping-added/connected/stopped seen\n", atomic_load(&log_lines));
  printf("callbacks: %d passed, %d failed\n", 6 - failures, failures);
  return failures == 0 ? 0 : 1;
}
