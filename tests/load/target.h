#pragma once

// Parsing of the loadgen's --target URL, restricted to this machine: traffic from a load test must
// never leave the loopback interface, so only literal loopback addresses (127.0.0.0/8, ::1) and the
// name "localhost" (taken as 127.0.0.1, never resolved) are accepted.

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace meridian::load {

struct Target {
  std::string address;  // a loopback IP literal: "127.0.0.1", "::1"
  uint16_t port = 80;
  std::string host_header;  // what to send as Host: "127.0.0.1:8080", "[::1]:8080"
};

// Accepts "http://HOST[:PORT][/]" where HOST is a loopback literal or "localhost".
// Anything else (https, a path, a user, another host, a name to resolve) is InvalidArgument.
[[nodiscard]] absl::StatusOr<Target> ParseTarget(std::string_view url);

// True for a literal 127.0.0.0/8 or ::1 address (also ::ffff:127.x.y.z).
[[nodiscard]] bool IsLoopbackLiteral(std::string_view address);

}  // namespace meridian::load
