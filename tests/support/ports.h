#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace meridian::test_support {

// Returns a TCP port on 127.0.0.1 for a test's listener, or 0 if none could be found.
//
// Where from: below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
// default), in [10000, first ephemeral port). Outgoing connections take their source ports from
// the ephemeral range, and a test machine makes thousands of them (connection pools, gRPC
// channels, HTTP clients); a listener port picked inside that range by bind(0) could be taken
// as a source port before the server bound it (CI saw a replicator fail "cannot listen" on
// such a port). Below the range only another listener can hold it.
//
// No two callers get the same port while the first one lives, across processes too: a port is
// claimed with an exclusive flock(2) on /tmp/meridian-test-ports/<port>, held until this process
// exits (the kernel drops it even on kill -9), so concurrent ctest processes never pick the same
// port. A claimed port is also checked bindable (no listener, no TIME_WAIT) at the time of the
// call; a listener of another program may still take it before ours binds, so PostgresServer and
// RedisServer retry on "address in use".
//
// Falls back to bind(0) (an ephemeral port) where the ephemeral range leaves no room below it.
// Thread-safe.
[[nodiscard]] uint16_t FreeTcpPort();

// How one try to start a server on a port ended.
enum class PortStart { kReady, kPortInUse, kFailed };

// Tries `start_once` (which starts the server on `*port`, or says why not in `*error`) on a new
// FreeTcpPort each time another program held the port, at most `attempts` times. OK once ready;
// else the error names `what`.
[[nodiscard]] absl::Status StartOnAFreePort(
    std::string_view what, int attempts, uint16_t* port,
    const std::function<PortStart(std::string*)>& start_once);

}  // namespace meridian::test_support
