#include "tests/load/target.h"

#include <arpa/inet.h>

#include <bit>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

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

LocalRoutes::LocalRoutes(std::vector<Route> routes, std::set<std::string> virtual_interfaces)
    : routes_(std::move(routes)), virtual_interfaces_(std::move(virtual_interfaces)) {}

LocalRoutes LocalRoutes::FromSystem(const std::string& root) {
  namespace fs = std::filesystem;
  std::vector<Route> routes;
  std::ifstream in(root + "/proc/net/route");
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string iface, dest, gw, flags, refcnt, use, metric, mask;
    if (!(fields >> iface >> dest >> gw >> flags >> refcnt >> use >> metric >> mask)) continue;
    auto hex = [](const std::string& h, uint32_t* out) {
      auto [end, ec] = std::from_chars(h.data(), h.data() + h.size(), *out, 16);
      return ec == std::errc() && end == h.data() + h.size();
    };
    uint32_t d = 0, g = 0, m = 0;
    if (!hex(dest, &d) || !hex(gw, &g) || !hex(mask, &m)) continue;
    // The kernel prints the network-order word as a native integer.
    routes.push_back(Route{ntohl(d), ntohl(m), ntohl(g), iface});
  }
  // Virtual: no hardware device behind the interface; a bridge only if all its members are.
  std::set<std::string> virtual_ifaces;
  std::error_code ec;
  const fs::path net = root + "/sys/class/net";
  auto is_virtual_device = [&](const std::string& name) {
    std::error_code e;
    return fs::exists(net / name, e) && !fs::exists(net / name / "device", e);
  };
  for (const auto& entry : fs::directory_iterator(net, ec)) {
    std::string name = entry.path().filename().string();
    if (name == "lo" || !is_virtual_device(name)) continue;
    std::error_code e;
    if (fs::exists(entry.path() / "bridge", e)) {
      bool all_virtual = true;
      for (const auto& member : fs::directory_iterator(entry.path() / "brif", e)) {
        if (!is_virtual_device(member.path().filename().string())) all_virtual = false;
      }
      if (!all_virtual) continue;
    }
    virtual_ifaces.insert(name);
  }
  return LocalRoutes(std::move(routes), std::move(virtual_ifaces));
}

bool LocalRoutes::StaysOnMachine(uint32_t ipv4, std::string* why) const {
  const Route* best = nullptr;
  for (const Route& r : routes_) {
    if ((ipv4 & r.mask) != (r.destination & r.mask)) continue;
    if (best == nullptr || std::popcount(r.mask) > std::popcount(best->mask)) best = &r;
  }
  if (best == nullptr) {
    *why = "no route to it";
    return false;
  }
  if (best->gateway != 0) {
    *why = "it is routed through a gateway (" + best->interface + ")";
    return false;
  }
  if (!virtual_interfaces_.count(best->interface)) {
    *why = "its route leaves through " + best->interface +
           ", which is not a virtual interface or bridge of virtual interfaces";
    return false;
  }
  return true;
}

absl::StatusOr<Target> ParseTarget(std::string_view url, const LocalRoutes* routes) {
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
  } else if (in_addr v4{}; routes != nullptr && host.size() < 16 &&
                           inet_pton(AF_INET, std::string(host).c_str(), &v4) == 1) {
    std::string why;
    if (!routes->StaysOnMachine(ntohl(v4.s_addr), &why)) {
      return Bad(url, "the host " + std::string(host) + " is not on this machine: " + why +
                          " (load tests send traffic to this machine only)");
    }
    t.address = std::string(host);
  } else {
    return Bad(url,
               "the host must be a loopback address (127.0.0.0/8, ::1 or localhost) or a local "
               "network namespace's IPv4 address: load tests send traffic to this machine only");
  }
  bool v6 = t.address.find(':') != std::string::npos;
  t.host_header = (v6 ? "[" + t.address + "]" : t.address) + ":" + std::to_string(t.port);
  return t;
}

}  // namespace meridian::load
