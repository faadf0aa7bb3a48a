#pragma once

// The loadgen's DNS, as customers meet it: A queries for the service name carrying an EDNS
// Client Subnet (RFC 7871), so that GeoDNS (pdns_server + meridian-geo) answers each group of
// emulated customers as it would answer their resolver, and answers honoured for their TTL.
//
//   EncodeAQuery / DecodeAAnswer — the wire format (pure; the reply is parsed by c-ares).
//   ResolveOnce                  — one blocking exchange over UDP, for setup.
//   DnsRouter                    — during the run: each client subnet's current answer, asked
//                                  again when its TTL runs out, on the run's io_context.

#include <array>
#include <asio/io_context.hpp>
#include <asio/ip/udp.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace meridian::load {

struct Ipv4Subnet {
  uint32_t address = 0;  // host byte order, host bits zero
  int prefix = 0;        // 0..32
  std::string text;      // "198.18.1.0/24"
};

// "A.B.C.D/LEN" with the host bits zero; anything else is InvalidArgument.
[[nodiscard]] absl::StatusOr<Ipv4Subnet> ParseIpv4Subnet(std::string_view cidr);

// A query for `name` (A, IN, recursion not desired: the server is authoritative) with an OPT
// record (UDP size 1232) carrying an ECS option for `subnet` when it is given.
// InvalidArgument for a name that is not a valid DNS name (labels 1..63 bytes, 255 in all).
[[nodiscard]] absl::StatusOr<std::string> EncodeAQuery(uint16_t id, std::string_view name,
                                                       const Ipv4Subnet* subnet);

struct DnsAnswer {
  uint16_t id = 0;
  int rcode = 0;                       // 0 NOERROR, 3 NXDOMAIN, ...
  std::vector<std::string> addresses;  // A records, in answer order
  int ttl_s = 0;                       // the smallest TTL of them (0 without addresses)
};

// Parses a reply. A reply without A records is OK with no addresses (rcode says why); a packet
// that is not a DNS reply is InvalidArgument. Never reads outside `packet`.
[[nodiscard]] absl::StatusOr<DnsAnswer> DecodeAAnswer(std::string_view packet);

// Sends one query to `server` and waits up to `timeout` for the reply with its id.
[[nodiscard]] absl::StatusOr<DnsAnswer> ResolveOnce(const asio::ip::udp::endpoint& server,
                                                    std::string_view name, const Ipv4Subnet& subnet,
                                                    std::chrono::milliseconds timeout);

// Keeps, for every client subnet, the region its latest DNS answer named, and asks again when
// that answer's TTL runs out (at least every `min_refresh`, at most `max_refresh` apart; after a
// failed or unusable exchange, `retry` later, keeping the previous region meanwhile, as a
// resolver serving stale data would). Answers name regions by address: `region_of_address` maps
// each address a region may be answered with to its index. When an answer holds several known
// addresses (GeoDNS's last resort answers them all), the subnet keeps its current region if it is
// among them, else takes the first.
//
// Thread-safety: none; everything runs on the io_context's thread. The io_context must outlive
// the router; call Stop() before it stops running for good.
class DnsRouter {
 public:
  struct Options {
    asio::ip::udp::endpoint server;
    std::string name;
    std::vector<Ipv4Subnet> subnets;
    std::map<std::string, int> region_of_address;
    std::chrono::milliseconds timeout{1000};
    std::chrono::milliseconds min_refresh{200};
    std::chrono::milliseconds max_refresh{30000};
    std::chrono::milliseconds retry{250};
  };
  struct Switch {
    int64_t at_unix_ms = 0;
    size_t subnet = 0;
    int from = -1;
    int to = -1;
  };
  struct Stats {
    int64_t queries = 0;
    int64_t timeouts = 0;
    int64_t failures = 0;  // bad replies, error rcodes, no usable address
    std::map<std::string, int64_t> unknown_addresses;
  };

  // REQUIRES: initial_regions.size() == options.subnets.size(), every entry a region index.
  DnsRouter(asio::io_context& io, Options options, std::vector<int> initial_regions,
            std::vector<int> initial_ttls_s);
  DnsRouter(const DnsRouter&) = delete;
  DnsRouter& operator=(const DnsRouter&) = delete;

  // Schedules each subnet's next query at the end of its initial TTL.
  void Start();
  // Cancels every timer and pending query; the router asks nothing more.
  void Stop();

  int region(size_t subnet) const { return subnets_[subnet].region; }
  const std::vector<Switch>& switches() const { return switches_; }
  const Stats& stats() const { return stats_; }

 private:
  struct Subnet {
    int region = -1;
    uint16_t pending_id = 0;  // 0: no query in flight
    std::unique_ptr<asio::steady_timer> timer;
  };

  void Schedule(size_t subnet, std::chrono::milliseconds after);
  void Ask(size_t subnet);
  void Receive();
  void OnAnswer(size_t subnet, const absl::StatusOr<DnsAnswer>& answer);

  asio::io_context& io_;
  Options opt_;
  asio::ip::udp::socket socket_;
  std::vector<Subnet> subnets_;
  std::vector<int> initial_ttls_;
  std::map<uint16_t, size_t> pending_;  // query id -> subnet
  uint16_t next_id_;
  std::array<char, 4096> buf_{};
  asio::ip::udp::endpoint from_;
  std::vector<Switch> switches_;
  Stats stats_;
  bool stopped_ = false;
};

}  // namespace meridian::load
