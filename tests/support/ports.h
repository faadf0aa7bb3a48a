#pragma once

#include <cstdint>

namespace meridian::test_support {

// Returns a TCP port on 127.0.0.1 that was free a moment ago, or 0 if no socket could be bound.
//
// How: bind a socket to 127.0.0.1:0, read back the port the kernel chose, close the socket.
// The race: between this call and the caller's own bind, another process (or an outgoing
// connection picking an ephemeral source port) may take the port. It is rare but real, so callers
// that bind the port must retry with a fresh FreeTcpPort() when the bind fails with "address in
// use" (PostgresServer and RedisServer do). Within one process the same port is never returned
// twice, so two servers started back to back cannot be handed the same port.
//
// Thread-safe.
[[nodiscard]] uint16_t FreeTcpPort();

}  // namespace meridian::test_support
