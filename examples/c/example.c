/*
 * stunfwd from C: host a rendezvous server, start a server-role and a client-role
 * engine on loopback, forward a TCP port, check that an echo round-trips, print the
 * stats and stop cleanly. Exits 0 only if everything worked.
 */
#include "stunfwd.h"
#include "common.h"

int main(void) {
  printf("libstunfwd %s\n", stunfwd_version());

  stunfwd_signal_server *rendezvous = NULL;
  CHECK(stunfwd_signal_server_start("127.0.0.1:0", "127.0.0.1:0", &rendezvous));
  char *url = NULL, *stun = NULL;
  CHECK(stunfwd_signal_server_url(rendezvous, &url));
  CHECK(stunfwd_signal_server_stun_addr(rendezvous, &stun));
  printf("rendezvous %s, stun %s\n", url, stun);

  int echo_listener;
  pthread_t echo;
  unsigned short echo_port = start_echo(&echo_listener, &echo);

  char server_cfg[1024], client_cfg[1024];
  snprintf(server_cfg, sizeof server_cfg,
           "{\"mode\":\"server\",\"room\":\"c-example\",\"secret\":\"c secret\","
           "\"signalUrl\":\"%s\",\"stunServers\":[\"%s\"],\"bind\":\"127.0.0.1:0\"}",
           url, stun);
  snprintf(client_cfg, sizeof client_cfg,
           "{\"mode\":\"client\",\"room\":\"c-example\",\"secret\":\"c secret\","
           "\"signalUrl\":\"%s\",\"stunServers\":[\"%s\"],\"bind\":\"127.0.0.1:0\"}",
           url, stun);

  stunfwd_engine *server = NULL, *client = NULL;
  CHECK(stunfwd_engine_start(server_cfg, NULL, NULL, &server));
  CHECK(stunfwd_engine_start(client_cfg, NULL, NULL, &client));

  char spec[64];
  uint64_t id = 0;
  uint16_t local_port = 0;
  snprintf(spec, sizeof spec, "tcp:0:%u", (unsigned)echo_port);
  CHECK(stunfwd_engine_add_mapping(client, spec, &id));
  CHECK(stunfwd_engine_mapping_port(client, id, &local_port));
  printf("mapping %llu: 127.0.0.1:%u -> peer's 127.0.0.1:%u\n", (unsigned long long)id,
         (unsigned)local_port, (unsigned)echo_port);

  CHECK(stunfwd_engine_wait_connected(client, 20000));
  stunfwd_state state;
  CHECK(stunfwd_engine_state(client, &state));
  printf("connected (state %d)\n", (int)state);

  int ok = echo_round_trip(local_port, 65536) == 0;
  printf("tcp echo through the tunnel: %s\n", ok ? "intact" : "FAILED");

  /* The sending side counts right after each write; give its last count a moment. */
  stunfwd_stats stats;
  for (int i = 0; i < 100; i++) {
    CHECK(stunfwd_engine_stats(client, &stats));
    if (stats.bytes_received >= 65536) break;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  printf("stats: connections %llu, bytes sent %llu, received %llu, rtt %.3f ms\n",
         (unsigned long long)stats.connections_opened, (unsigned long long)stats.bytes_sent,
         (unsigned long long)stats.bytes_received, stats.rtt_ms);
  ok = ok && stats.connections_opened == 1 && stats.bytes_sent == 65536 &&
       stats.bytes_received == 65536 && stats.state == STUNFWD_STATE_CONNECTED;
  char *json = NULL;
  CHECK(stunfwd_engine_stats_json(client, &json));
  printf("stats json: %.120s...\n", json);
  stunfwd_string_free(json);

  CHECK(stunfwd_engine_stop(client, 2000));
  CHECK(stunfwd_engine_stop(client, 2000)); /* twice is harmless */
  CHECK(stunfwd_engine_state(client, &state));
  ok = ok && state == STUNFWD_STATE_STOPPED;
  stunfwd_engine_free(client);
  stunfwd_engine_free(server);
  CHECK(stunfwd_signal_server_stop(rendezvous, 1000));
  stunfwd_signal_server_free(rendezvous);
  stunfwd_string_free(url);
  stunfwd_string_free(stun);
  stop_echo(echo_listener, echo);

  printf("%s\n", ok ? "example OK" : "example FAILED");
  return ok ? 0 : 1;
}
