#include "tests/support/ports.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"

namespace meridian::test_support {
namespace {

constexpr int kLowest = 10000;      // below: well-known and registered services' ports
constexpr int kRoomMin = 1000;      // fewer candidates than this: fall back to bind(0)
constexpr int kAttemptsMax = 2000;  // random picks before giving up
constexpr const char* kClaimDir = "/tmp/meridian-test-ports";

std::mutex g_mutex;

// First port of the kernel's ephemeral range; 32768 where it cannot be read.
int FirstEphemeralPort() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int lo = 0, hi = 0;
  if (in >> lo >> hi && lo > 0) return lo;
  return 32768;
}

// Binds 127.0.0.1:port (0: any) without SO_REUSEADDR, so a port with a listener or with
// connections in TIME_WAIT counts as taken. Returns the bound port, 0 on failure.
uint16_t BindAndClose(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  socklen_t len = sizeof(addr);
  uint16_t bound = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    bound = ntohs(addr.sin_port);
  }
  close(fd);
  return bound;
}

// Takes the cross-process claim on `port`; the descriptor stays open (and the lock held) until
// the process exits. flock locks belong to the open file description, so a second claim of the
// same port from this process fails as well.
bool Claim(uint16_t port) {
  static const bool dir_ready = [] {
    mkdir(kClaimDir, 01777);
    chmod(kClaimDir, 01777);  // whoever made it first, every user's tests can claim ports
    return true;
  }();
  (void)dir_ready;
  std::string path = std::string(kClaimDir) + "/" + std::to_string(port);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) return false;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return false;
  }
  return true;  // fd deliberately kept open: it is the claim
}

}  // namespace

uint16_t FreeTcpPort() {
  std::lock_guard<std::mutex> lock(g_mutex);
  static std::mt19937 rng{std::random_device{}()};
  const int end = FirstEphemeralPort();  // exclusive
  if (end - kLowest < kRoomMin) {
    for (int attempt = 0; attempt < kAttemptsMax; ++attempt) {
      uint16_t port = BindAndClose(0);
      if (port == 0) return 0;
      if (Claim(port)) return port;
    }
    return 0;
  }
  std::uniform_int_distribution<int> pick(kLowest, end - 1);
  for (int attempt = 0; attempt < kAttemptsMax; ++attempt) {
    auto port = static_cast<uint16_t>(pick(rng));
    if (!Claim(port)) continue;
    if (BindAndClose(port) == port) return port;
    // Someone else's listener (or TIME_WAIT): keep the claim, so we do not try it again.
  }
  return 0;
}

absl::Status StartOnAFreePort(std::string_view what, int attempts, uint16_t* port,
                              const std::function<PortStart(std::string*)>& start_once) {
  std::string last_error;
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    *port = FreeTcpPort();
    if (*port == 0) return absl::UnavailableError("FreeTcpPort: no free loopback port");
    switch (start_once(&last_error)) {
      case PortStart::kReady:
        return absl::OkStatus();
      case PortStart::kPortInUse:
        continue;  // lost the race for the port: pick another
      case PortStart::kFailed:
        return absl::InternalError(last_error);
    }
  }
  return absl::UnavailableError(absl::StrCat(std::string(what), ": ", attempts,
                                             " ports in a row were taken; last: ", last_error));
}

}  // namespace meridian::test_support
