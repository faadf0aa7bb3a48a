#pragma once

// LoadDriver: runs one loadgen session against one or more Meridian regions on this machine.
//
//   Setup()  — not measured: checks the region answers, seeds products with large stock when an
//              operator token is given, registers and logs in the customer pool (accounts from
//              an earlier run with the same prefix are reused), and reads each customer's cart.
//   Run()    — measured: arrivals on a fixed open-loop timeline (see ArrivalSchedule), each one
//              operation of a random customer, over a fixed pool of keep-alive connections.
//              An arrival that finds every connection busy waits in a bounded FIFO backlog; its
//              latency still counts from its scheduled time, so a slow server cannot hide its
//              queueing (no coordinated omission). Stops by itself at the schedule's end plus at
//              most one request timeout of draining.
//
// Several regions: every region gets its own pool of --connections. Each customer belongs to a
// client subnet (customer i to subnet i mod n); with a DNS server, every subnet is sent where
// GeoDNS answers for it (EDNS Client Subnet), asked again when the answer's TTL runs out, so
// customers follow a failover as real ones would (late by up to a TTL). Without DNS, customer i
// stays with region i mod n. Setup seeds and restocks in every region (each region sells within
// its own rights) and registers each customer in the region it is first sent to.
//
// For drills: a per-second timeline (see timeline.h) and the acknowledged orders (every 201 to a
// checkout: order id, wall-clock time, the region that answered, durability, items) are written
// as JSON lines while the run goes on (flushed every second); SIGINT/SIGTERM end the schedule
// early and the run drains and reports as usual.
//
// Not thread-safe; call Setup() then Run(), once each, from one thread. Setup uses a few
// threads of its own; Run uses the calling thread only.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/load/dns_client.h"
#include "tests/load/report.h"
#include "tests/load/target.h"
#include "tests/load/workload.h"

namespace meridian::load {

struct RegionTarget {
  std::string name;  // "target" for a single --target
  std::string url;
  Target target;
  std::vector<std::string> dns_addresses;  // what GeoDNS answers for it (default: its host)
};

struct LoadOptions {
  std::vector<RegionTarget> regions;  // at least one
  // Routing: with dns_server, customers follow GeoDNS answers for their client subnet.
  std::optional<asio::ip::udp::endpoint> dns_server;  // loopback
  std::string dns_name;                               // e.g. shop.example.test
  std::vector<Ipv4Subnet> client_subnets;             // required with dns_server
  std::string residency = "us";                       // of newly registered customers
  // Scarce products (oversell checks): `scarce_products` products PREFIX-0001.., each restocked
  // with `scarce_stock_units` in every region; a cart_add picks one with `scarce_fraction`. A
  // checkout refused 409 (out of stock) then removes the lines it names from the cart, as a
  // customer would (part of the checkout operation, like a prefill).
  int scarce_products = 0;
  int64_t scarce_stock_units = 0;
  double scarce_fraction = 0;
  std::string scarce_prefix = "scarce";
  std::string timeline_path;  // JSON lines, one per second; empty: none
  std::string acks_path;      // JSON lines, one per acknowledged order; empty: none
  double rate_per_s = 200;
  double duration_s = 30;
  double warmup_s = 3;
  int64_t max_requests = 1'000'000;
  int customers = 200;
  int connections = 32;
  std::string operator_token;  // empty: no seeding, the workload uses the existing catalog
  int seed_products = 100;
  int64_t seed_stock_units = 1'000'000;
  Mix mix;
  double declined_fraction = 0.1;
  double replay_fraction = 0.02;
  double zipf_s = 1.1;
  int timeout_ms = 5000;
  uint64_t seed = 1;
  bool poisson = false;
  int64_t max_backlog = 10000;
  std::string customer_prefix = "loadgen";
  double max_lag_ms = 50;
  int setup_concurrency = 8;
  bool progress = true;  // a line on stderr every second
};

class LoadDriver {
 public:
  // REQUIRES: options validated (positive rate, duration > warmup, counts >= 1).
  explicit LoadDriver(LoadOptions options);
  ~LoadDriver();
  LoadDriver(const LoadDriver&) = delete;
  LoadDriver& operator=(const LoadDriver&) = delete;

  // Fails with a message that says what to fix (region down, operator token refused, a customer
  // that cannot log in, an empty catalog).
  [[nodiscard]] absl::Status Setup();

  // REQUIRES: Setup() succeeded. Request errors are figures in the report, not failures.
  [[nodiscard]] absl::StatusOr<RunReport> Run();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace meridian::load
