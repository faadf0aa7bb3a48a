#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/support/ports.h"
#include "tests/support/process.h"

namespace meridian::test_support {

// A real redis-server for integration tests, on a free 127.0.0.1 port, with no persistence
// (`--save '' --appendonly no`), its working directory and log in a fresh temporary directory.
// The server is a child Process, so it dies with the test (see Process).
//
// Binary: $MERIDIAN_REDIS_SERVER if set, else `redis-server` from PATH. Set
// MERIDIAN_KEEP_TEST_DIRS=1 to keep the directory (and redis.log) after the test.
//
// Start() is thread-safe; one RedisServer is driven by one thread at a time.
class RedisServer {
 public:
  struct Options {
    // Used in the directory name and in error messages.
    std::string name = "redis";
  };

  // Starts a server and returns once it answers PING. If the port is taken between choosing and
  // binding it, retries with a new one (bounded). Errors quote the server log tail.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisServer>> Start(Options options);
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisServer>> Start();

  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;
  // Kills the server if it runs and removes the directory.
  ~RedisServer();

  // The TCP port; the same across Restart().
  [[nodiscard]] uint16_t port() const { return port_; }

  // SIGTERM and wait (SIGKILL after a grace period). With no persistence nothing is saved.
  // OK if already stopped.
  [[nodiscard]] absl::Status Stop();
  // SIGKILL, as a crash would. OK if already stopped.
  [[nodiscard]] absl::Status Kill9();
  // Stops the server if it runs, then starts a new one on the same port. The data is gone (no
  // persistence). Retries for a few seconds while the port is still bound.
  [[nodiscard]] absl::Status Restart();

  [[nodiscard]] bool running();
  [[nodiscard]] const std::string& name() const { return options_.name; }
  [[nodiscard]] const std::string& directory() const { return directory_; }
  [[nodiscard]] std::string log_path() const { return directory_ + "/redis.log"; }

 private:
  RedisServer(Options options, std::string binary, std::string directory)
      : options_(std::move(options)),
        binary_(std::move(binary)),
        directory_(std::move(directory)) {}

  using Outcome = PortStart;
  Outcome StartOnce(std::string* error);

  Options options_;
  std::string binary_;
  std::string directory_;
  uint16_t port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace meridian::test_support
