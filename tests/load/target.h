#pragma once

// Parsing of the loadgen's --target / --region URLs, restricted to this machine: traffic from a
// load test must never leave it. Accepted hosts:
//   - literal loopback addresses (127.0.0.0/8, ::1) and the name "localhost" (taken as
//     127.0.0.1, never resolved);
//   - with a LocalRoutes view of the machine: an IPv4 literal whose route is directly connected
//     (no gateway) through an interface that is virtual (no hardware device behind it), or a
//     bridge whose every member is virtual — the network namespaces and veth bridge that
//     deploy/meridian's netns links make (10.77.0.0/24 over mer-br). A bridge with a physical NIC
//     in it, a route through a gateway, or a physical interface is refused.

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace meridian::load {

struct Target {
  std::string address;  // an IP literal: "127.0.0.1", "::1", "10.77.0.2"
  uint16_t port = 80;
  std::string host_header;  // what to send as Host: "127.0.0.1:8080", "[::1]:8080"
};

// The IPv4 routing table of the main namespace and which interfaces have no hardware behind
// them. Immutable after construction; thread-compatible.
class LocalRoutes {
 public:
  struct Route {
    uint32_t destination = 0;  // host byte order
    uint32_t mask = 0;         // host byte order
    uint32_t gateway = 0;      // 0: directly connected
    std::string interface;
  };

  LocalRoutes(std::vector<Route> routes, std::set<std::string> virtual_interfaces);

  // Reads ROOT/proc/net/route and ROOT/sys/class/net (ROOT is "" on a live system; tests point
  // it at a copy). An unreadable table gives a view that accepts nothing.
  static LocalRoutes FromSystem(const std::string& root = "");

  // True when `ipv4` (host byte order) is sent over a directly connected route through a virtual
  // interface (see the file comment); otherwise false with the reason in *why.
  bool StaysOnMachine(uint32_t ipv4, std::string* why) const;

 private:
  std::vector<Route> routes_;
  std::set<std::string> virtual_interfaces_;
};

// Accepts "http://HOST[:PORT][/]" where HOST is a loopback literal, "localhost", or (only when
// `routes` is given) an IPv4 literal that LocalRoutes::StaysOnMachine accepts. Anything else
// (https, a path, a user, another host, a name to resolve) is InvalidArgument.
[[nodiscard]] absl::StatusOr<Target> ParseTarget(std::string_view url,
                                                 const LocalRoutes* routes = nullptr);

// True for a literal 127.0.0.0/8 or ::1 address (also ::ffff:127.x.y.z).
[[nodiscard]] bool IsLoopbackLiteral(std::string_view address);

}  // namespace meridian::load
