#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/support/ports.h"
#include "tests/support/process.h"

namespace meridian::test_support {

// A real pgbouncer for integration tests, on a free 127.0.0.1 port, in front of one PostgreSQL
// server (every database name passes through, user `postgres`, trust auth), in transaction
// pooling: a client's connection is lent a server connection for each transaction only, so it
// stays open when the server behind restarts (a failover, a restore). Its config and log are in
// a fresh temporary directory. The pooler is a child Process, so it dies with the test; as root
// it runs as `postgres` (pgbouncer refuses root).
//
// Binary: $MERIDIAN_PGBOUNCER if set, else /usr/sbin/pgbouncer (Debian's package `pgbouncer`).
// Set MERIDIAN_KEEP_TEST_DIRS=1 to keep the directory (and pgbouncer.log) after the test.
class PgBouncer {
 public:
  struct Options {
    std::string name = "pgbouncer";  // in the directory name and in error messages
    uint16_t server_port = 0;        // the PostgreSQL server's, on 127.0.0.1. REQUIRES: set.
  };

  // Starts the pooler and returns once it listens. If the port is taken between choosing and
  // binding it, retries with a new one (bounded). Errors quote the log.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PgBouncer>> Start(Options options);

  PgBouncer(const PgBouncer&) = delete;
  PgBouncer& operator=(const PgBouncer&) = delete;
  // Kills the pooler and removes the directory.
  ~PgBouncer();

  [[nodiscard]] uint16_t port() const { return port_; }
  // "host=127.0.0.1 port=P user=postgres dbname=D", through the pooler.
  [[nodiscard]] std::string ConnectionString(std::string_view dbname) const;
  [[nodiscard]] std::string log_path() const { return directory_ + "/pgbouncer.log"; }

 private:
  PgBouncer(Options options, std::string binary, std::string directory)
      : options_(std::move(options)),
        binary_(std::move(binary)),
        directory_(std::move(directory)) {}

  PortStart StartOnce(std::string* error);

  Options options_;
  std::string binary_;
  std::string directory_;
  uint16_t port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace meridian::test_support
