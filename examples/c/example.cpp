// stunfwd from C++17: RAII wrappers over the C API, a smaller version of example.c.
#include "stunfwd.h"

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

namespace {

void check(stunfwd_result rc, const char *what) {
  if (rc != STUNFWD_RESULT_OK)
    throw std::runtime_error(std::string(what) + ": " + stunfwd_last_error_message());
}

struct EngineDeleter {
  void operator()(stunfwd_engine *e) const { stunfwd_engine_free(e); }
};
struct ServerDeleter {
  void operator()(stunfwd_signal_server *s) const { stunfwd_signal_server_free(s); }
};
using Engine = std::unique_ptr<stunfwd_engine, EngineDeleter>;
using Server = std::unique_ptr<stunfwd_signal_server, ServerDeleter>;

std::string take(char *s) {
  std::string out = s ? s : "";
  stunfwd_string_free(s);
  return out;
}

Engine start(const std::string &json) {
  stunfwd_engine *e = nullptr;
  check(stunfwd_engine_start(json.c_str(), nullptr, nullptr, &e), "engine start");
  return Engine(e);
}

}  // namespace

int main() try {
  stunfwd_signal_server *raw = nullptr;
  check(stunfwd_signal_server_start("127.0.0.1:0", "127.0.0.1:0", &raw), "rendezvous");
  Server rendezvous(raw);
  char *s = nullptr;
  check(stunfwd_signal_server_url(rendezvous.get(), &s), "url");
  std::string url = take(s);
  check(stunfwd_signal_server_stun_addr(rendezvous.get(), &s), "stun");
  std::string stun = take(s);
  std::string common = "\"room\":\"cpp\",\"secret\":\"c++ example\",\"signalUrl\":\"" + url + "\",\"stunServers\":[\"" + stun +
                       "\"],\"bind\":\"127.0.0.1:0\"";
  Engine server = start("{\"mode\":\"server\"," + common + "}");
  Engine client = start("{\"mode\":\"client\"," + common + "}");
  check(stunfwd_engine_wait_connected(client.get(), 20000), "connect");
  stunfwd_stats stats{};
  check(stunfwd_engine_stats(client.get(), &stats), "stats");
  std::printf("c++: connected, path %d, rtt %.3f ms\n", static_cast<int>(stats.path), stats.rtt_ms);
  check(stunfwd_engine_stop(client.get(), 2000), "stop");
  bool ok = stats.state == STUNFWD_STATE_CONNECTED && stats.path == STUNFWD_PATH_LAN;
  std::printf("%s\n", ok ? "c++ example OK" : "c++ example FAILED");
  return ok ? 0 : 1;
} catch (const std::exception &e) {
  std::fprintf(stderr, "c++ example: %s\n", e.what());
  return 1;
}
