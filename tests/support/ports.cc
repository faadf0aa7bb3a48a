#include "tests/support/ports.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <set>

namespace meridian::test_support {
namespace {

// Ports already handed out by this process. The kernel may return a just-closed port again on the
// next bind(0); a second server would then collide with the first one.
std::mutex g_mutex;
std::set<uint16_t>& HandedOut() {
  static auto* ports = new std::set<uint16_t>();
  return *ports;
}

uint16_t BindAndReadBack() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace

uint16_t FreeTcpPort() {
  // Bounded: the ephemeral range holds thousands of ports, so a handful of repeats means the
  // kernel keeps offering ports we already used; give the caller one rather than spin.
  constexpr int kAttemptsMax = 64;
  std::lock_guard<std::mutex> lock(g_mutex);
  uint16_t port = 0;
  for (int attempt = 0; attempt < kAttemptsMax; ++attempt) {
    port = BindAndReadBack();
    if (port == 0) return 0;
    if (HandedOut().insert(port).second) return port;
  }
  return port;
}

}  // namespace meridian::test_support
