/*
 * Log and event callbacks: the expected events arrive (mapping added, connected,
 * stopped), log lines reach the host, and stopping the engine from inside its own
 * event callback does not deadlock. The server peer names its client in a
 * CLIENT_STATE event, and its stats JSON lists that client under "clients".
 */
#include "stunfwd.h"
#include "common.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

static atomic_int log_lines = 0;
static atomic_int saw_mapping_added = 0, saw_connected = 0, saw_stopped = 0;
static atomic_int stop_rc = -1;
static stunfwd_engine *volatile client_engine = NULL;
static atomic_int server_saw_client = 0;
static char client_message[128];

static void on_server_event(void *user_data, const stunfwd_event *event) {
  (void)user_data;
  if (event->kind == STUNFWD_EVENT_KIND_CLIENT_STATE && strstr(event->message, ": connected") != NULL &&
      strstr(event->json, "\"client_state\"") != NULL && !atomic_load(&server_saw_client)) {
    snprintf(client_message, sizeof client_message, "%s", event->message);
    atomic_store(&server_saw_client, 1);
  }
}

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
  CHECK(stunfwd_engine_start(cfg, on_server_event, NULL, &server));
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
  for (int i = 0; i < 100 && !atomic_load(&server_saw_client); i++) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  char *server_stats = NULL;
  CHECK(stunfwd_engine_stats_json(server, &server_stats));

  int failures = 0;
  /* "client <32 hex>: connected", and the same id in the server's stats. */
  char id[33] = {0};
  if (!atomic_load(&server_saw_client) || sscanf(client_message, "client %32[0-9a-f]:", id) != 1 || strlen(id) != 32) {
    fprintf(stderr, "FAIL: no client-state event naming the client (got \"%s\")\n", client_message);
    failures++;
  } else if (strstr(server_stats, "\"clients\":[{\"id\":") == NULL || strstr(server_stats, id) == NULL) {
    fprintf(stderr, "FAIL: the server's stats do not list client %s: %s\n", id, server_stats);
    failures++;
  }
  stunfwd_string_free(server_stats);
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
  printf("callbacks: %d log lines; events mapping-added/connected/stopped seen; server event \"%s\"\n",
         atomic_load(&log_lines), client_message);
  printf("callbacks: %d passed, %d failed\n", 7 - failures, failures);
  return failures == 0 ? 0 : 1;
}
