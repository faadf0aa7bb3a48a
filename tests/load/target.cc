#include "tests/load/target.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "absl/status/status.h"

namespace meridian::load {
namespace {

absl::Status Bad(std::string_view url, std::string_view why) {
  return absl::InvalidArgumentError(std::string("--target '") + std::string(url) +
                                    "': " + std::string(why));
}

}  // namespace

bool IsLoopbackLiteral(std::string_view address) {
  std::string a(address);
  in_addr v4{};
  if (inet_pton(AF_INET, a.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, a.c_str(), &v6) == 1) {
    static const uint8_t kLoopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (std::memcmp(v6.s6_addr, kLoopback, 16) == 0) return true;
    // An IPv4-mapped 127.x.y.z.
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(v6.s6_addr, kMapped, 12) == 0 && v6.s6_addr[12] == 127;
  }
  return false;
}

absl::StatusOr<Target> ParseTarget(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return Bad(url, "must start with http:// (plain HTTP to this machine only)");
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find_first_of("/?#@") != std::string_view::npos) {
    return Bad(url, "no path, query or user part is allowed, only http://HOST:PORT");
  }
  std::string_view host, port_text;
  bool has_port = false;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return Bad(url, "unterminated [IPv6] address");
    host = rest.substr(1, close - 1);
    std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return Bad(url, "expected ':PORT' after the address");
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    size_t colon = rest.rfind(':');
    host = rest.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = rest.substr(colon + 1);
      has_port = true;
    }
  }
  Target t;
  if (has_port) {
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
      return Bad(url, "port must be 1..65535");
    }
    t.port = static_cast<uint16_t>(port);
  }
  if (host == "localhost") {
    // Taken literally rather than resolved: a resolver could map the name elsewhere.
    t.address = "127.0.0.1";
  } else if (IsLoopbackLiteral(host)) {
    t.address = std::string(host);
  } else {
    return Bad(url,
               "the host must be a loopback address (127.0.0.0/8, ::1 or localhost): load tests "
               "send traffic to this machine only");
  }
  bool v6 = t.address.find(':') != std::string::npos;
  t.host_header = (v6 ? "[" + t.address + "]" : t.address) + ":" + std::to_string(t.port);
  return t;
}

}  // namespace meridian::load
