/*
 * Misuse test: every function with NULL or garbage arguments returns its documented
 * code, sets a message, and nothing crashes.
 */
#include "stunfwd.h"

#include <stdio.h>
#include <string.h>

static int failures = 0, passes = 0;

#define EXPECT(call, want)                                                          \
  do {                                                                              \
    stunfwd_result got_ = (call);                                                   \
    if (got_ != (want)) {                                                           \
      fprintf(stderr, "FAIL %s: got %d, want %d (%s)\n", #call, (int)got_,          \
              (int)(want), stunfwd_last_error_message());                           \
      failures++;                                                                   \
    } else if ((want) != STUNFWD_RESULT_OK && stunfwd_last_error_message()[0] == 0) { \
      fprintf(stderr, "FAIL %s: no error message\n", #call);                        \
      failures++;                                                                   \
    } else {                                                                        \
      passes++;                                                                     \
    }                                                                               \
  } while (0)

int main(void) {
  stunfwd_engine *engine = NULL;
  stunfwd_signal_server *server = NULL;
  uint64_t id = 0;
  uint16_t port = 0;
  stunfwd_state state;
  stunfwd_stats stats;
  char *str = NULL;
  const char bad_utf8[] = {'{', (char)0xff, (char)0xfe, '}', 0};

  /* Version and messages are always available. */
  if (strlen(stunfwd_version()) == 0) failures++;

  /* Engine start. */
  EXPECT(stunfwd_engine_start(NULL, NULL, NULL, &engine), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_start("{}", NULL, NULL, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_start(bad_utf8, NULL, NULL, &engine), STUNFWD_RESULT_INVALID_UTF8);
  EXPECT(stunfwd_engine_start("not json", NULL, NULL, &engine), STUNFWD_RESULT_CONFIG);
  EXPECT(stunfwd_engine_start("{\"mode\":\"client\"}", NULL, NULL, &engine), STUNFWD_RESULT_CONFIG);
  if (strstr(stunfwd_last_error_message(), "room") == NULL) {
    fprintf(stderr, "FAIL: config error does not name the missing key: %s\n",
            stunfwd_last_error_message());
    failures++;
  }
  /* A server without a secret refuses to start, naming `secret` and the opt-out. */
  EXPECT(stunfwd_engine_start("{\"mode\":\"server\",\"room\":\"r\",\"signalUrl\":\"http://127.0.0.1:1/\"}",
                              NULL, NULL, &engine),
         STUNFWD_RESULT_CONFIG);
  if (strstr(stunfwd_last_error_message(), "secret") == NULL ||
      strstr(stunfwd_last_error_message(), "\"insecure\": true") == NULL) {
    fprintf(stderr, "FAIL: a server without a secret is not refused clearly: %s\n",
            stunfwd_last_error_message());
    failures++;
  }
  EXPECT(stunfwd_engine_start("{\"mode\":\"client\",\"room\":\"r\",\"signalUrl\":\"ftp://x\"}",
                              NULL, NULL, &engine),
         STUNFWD_RESULT_CONFIG);
  if (engine != NULL) {
    fprintf(stderr, "FAIL: out-parameter written on failure\n");
    failures++;
  }

  /* Every engine function with a NULL engine. */
  EXPECT(stunfwd_engine_add_mapping(NULL, "tcp:1:2", &id), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_remove_mapping(NULL, 1), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_mapping_port(NULL, 1, &port), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_state(NULL, &state), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_wait_connected(NULL, 10), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_cancel_waits(NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_stats(NULL, &stats), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_stats_json(NULL, &str), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_stop(NULL, 10), STUNFWD_RESULT_NULL_ARGUMENT);
  stunfwd_engine_free(NULL);
  stunfwd_string_free(NULL);

  /* Rendezvous with bad arguments. */
  EXPECT(stunfwd_signal_server_start(NULL, NULL, &server), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_signal_server_start("127.0.0.1:0", NULL, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_signal_server_start("nonsense", NULL, &server), STUNFWD_RESULT_CONFIG);
  if (strstr(stunfwd_last_error_message(), "`http`") == NULL) {
    fprintf(stderr, "FAIL: the address error does not name `http`: %s\n", stunfwd_last_error_message());
    failures++;
  }
  EXPECT(stunfwd_signal_server_start("127.0.0.1:0", "nonsense", &server), STUNFWD_RESULT_CONFIG);
  EXPECT(stunfwd_signal_server_start(bad_utf8, NULL, &server), STUNFWD_RESULT_INVALID_UTF8);
  EXPECT(stunfwd_signal_server_url(NULL, &str), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_signal_server_stun_addr(NULL, &str), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_signal_server_stop(NULL, 10), STUNFWD_RESULT_NULL_ARGUMENT);
  stunfwd_signal_server_free(NULL);

  /* A real server and engine, then bad arguments on them. */
  EXPECT(stunfwd_signal_server_start("127.0.0.1:0", NULL, &server), STUNFWD_RESULT_OK);
  EXPECT(stunfwd_signal_server_url(server, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_signal_server_stun_addr(server, &str), STUNFWD_RESULT_INVALID_ARGUMENT);
  EXPECT(stunfwd_signal_server_url(server, &str), STUNFWD_RESULT_OK);
  char cfg[512];
  snprintf(cfg, sizeof cfg,
           "{\"mode\":\"client\",\"room\":\"misuse\",\"signalUrl\":\"%s\",\"bind\":\"127.0.0.1:0\"}",
           str);
  stunfwd_string_free(str);
  str = NULL;
  EXPECT(stunfwd_engine_start(cfg, NULL, NULL, &engine), STUNFWD_RESULT_OK);
  EXPECT(stunfwd_engine_add_mapping(engine, NULL, &id), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_add_mapping(engine, "tcp:1:2", NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_add_mapping(engine, bad_utf8, &id), STUNFWD_RESULT_INVALID_UTF8);
  EXPECT(stunfwd_engine_add_mapping(engine, "sctp:1:2", &id), STUNFWD_RESULT_CONFIG);
  EXPECT(stunfwd_engine_add_mapping(engine, "tcp:70000:22", &id), STUNFWD_RESULT_CONFIG);
  EXPECT(stunfwd_engine_add_mapping(engine, "tcp:0:22", &id), STUNFWD_RESULT_OK);
  EXPECT(stunfwd_engine_mapping_port(engine, id, &port), STUNFWD_RESULT_OK);
  {
    /* The same port again: in use, and the message names the port. */
    char again[64], want[16];
    snprintf(again, sizeof again, "tcp:%u:22", (unsigned)port);
    snprintf(want, sizeof want, "%u", (unsigned)port);
    EXPECT(stunfwd_engine_add_mapping(engine, again, &id), STUNFWD_RESULT_ADDR_IN_USE);
    if (strstr(stunfwd_last_error_message(), want) == NULL) {
      fprintf(stderr, "FAIL: in-use error does not name port %s\n", want);
      failures++;
    }
  }
  EXPECT(stunfwd_engine_mapping_port(engine, 9999, &port), STUNFWD_RESULT_NO_SUCH_MAPPING);
  EXPECT(stunfwd_engine_mapping_port(engine, 1, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_remove_mapping(engine, 9999), STUNFWD_RESULT_NO_SUCH_MAPPING);
  EXPECT(stunfwd_engine_state(engine, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_stats(engine, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_stats_json(engine, NULL), STUNFWD_RESULT_NULL_ARGUMENT);
  EXPECT(stunfwd_engine_wait_connected(engine, 50), STUNFWD_RESULT_TIMEOUT);
  EXPECT(stunfwd_engine_stop(engine, 1000), STUNFWD_RESULT_OK);
  EXPECT(stunfwd_engine_stop(engine, 1000), STUNFWD_RESULT_OK);
  EXPECT(stunfwd_engine_add_mapping(engine, "tcp:0:22", &id), STUNFWD_RESULT_STOPPED);
  EXPECT(stunfwd_engine_remove_mapping(engine, id), STUNFWD_RESULT_STOPPED);
  EXPECT(stunfwd_engine_wait_connected(engine, 50), STUNFWD_RESULT_STOPPED);
  EXPECT(stunfwd_engine_state(engine, &state), STUNFWD_RESULT_OK);
  if (state != STUNFWD_STATE_STOPPED) failures++;
  /* The final figures stay readable after stop. */
  EXPECT(stunfwd_engine_stats(engine, &stats), STUNFWD_RESULT_OK);
  if (stats.state != STUNFWD_STATE_STOPPED || stats.signaling_requests == 0) {
    fprintf(stderr, "FAIL: stats after stop: state %d, %llu signaling requests\n", (int)stats.state,
            (unsigned long long)stats.signaling_requests);
    failures++;
  }
  stunfwd_engine_free(engine);
  EXPECT(stunfwd_signal_server_stop(server, 1000), STUNFWD_RESULT_OK);
  EXPECT(stunfwd_signal_server_stop(server, 1000), STUNFWD_RESULT_OK);
  stunfwd_signal_server_free(server);

  /* A message from a failure is cleared by the next successful call. */
  EXPECT(stunfwd_engine_state(NULL, &state), STUNFWD_RESULT_NULL_ARGUMENT);
  (void)stunfwd_set_log_callback(NULL, NULL, STUNFWD_LOG_LEVEL_INFO);
  if (stunfwd_last_error_message()[0] != 0) {
    fprintf(stderr, "FAIL: message not cleared after success\n");
    failures++;
  }

  printf("misuse: %d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}
