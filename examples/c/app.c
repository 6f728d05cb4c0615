/* The smallest program against an installed libstunfwd (used by the install tests). */
#include <stdio.h>
#include <string.h>
#include <stunfwd.h>

int main(void) {
  stunfwd_signal_server *server = NULL;
  if (stunfwd_signal_server_start("127.0.0.1:0", NULL, &server) != STUNFWD_RESULT_OK) {
    fprintf(stderr, "start: %s\n", stunfwd_last_error_message());
    return 1;
  }
  char *url = NULL;
  stunfwd_result rc = stunfwd_signal_server_url(server, &url);
  int ok = rc == STUNFWD_RESULT_OK && strncmp(url, "http://127.0.0.1:", 17) == 0 &&
           strcmp(stunfwd_version(), STUNFWD_VERSION) == 0;
  printf("libstunfwd %s, rendezvous %s: %s\n", stunfwd_version(), url ? url : "?", ok ? "ok" : "FAILED");
  stunfwd_string_free(url);
  stunfwd_signal_server_free(server);
  return ok ? 0 : 1;
}
