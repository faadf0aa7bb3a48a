#pragma once

// IP addresses, CIDR prefixes and a longest-prefix-match table, for mapping a DNS client's subnet
// to a location. Pure values: no I/O, no clock.

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meridian::geo {

// An IPv4 or IPv6 address. An IPv4-mapped IPv6 address ("::ffff:1.2.3.4") is stored as the IPv4
// address it maps, so both spellings of one client match the same IPv4 table entries.
// Value type.
struct IpAddress {
  bool is_v4 = true;
  std::array<uint8_t, 16> bytes{};  // network order; an IPv4 address uses bytes[0..3]

  [[nodiscard]] int bit_count() const { return is_v4 ? 32 : 128; }
  [[nodiscard]] std::string ToString() const;
  friend bool operator==(const IpAddress&, const IpAddress&) = default;
};

// A prefix: the network address (host bits zero) and its length.
struct Cidr {
  IpAddress network;
  int prefix_len = 0;  // 0..32 (IPv4) or 0..128 (IPv6)

  [[nodiscard]] std::string ToString() const;  // "10.1.0.0/16"
  [[nodiscard]] bool Contains(const IpAddress& address) const;
  friend bool operator==(const Cidr&, const Cidr&) = default;
};

// "1.2.3.4", "2001:db8::1", "::ffff:1.2.3.4". InvalidArgument otherwise (names the text).
[[nodiscard]] absl::StatusOr<IpAddress> ParseIpAddress(std::string_view text);

// "10.1.0.0/16", "2001:db8::/32"; a bare address means a full-length prefix. With
// `strict_host_bits`, set host bits are an error (config files: "10.1.2.3/16" is a typo);
// without, they are cleared (pdns's real-remote "1.2.3.4/24" is the client's subnet).
// An IPv4-mapped IPv6 prefix of length >= 96 becomes the IPv4 prefix (length - 96).
[[nodiscard]] absl::StatusOr<Cidr> ParseCidr(std::string_view text, bool strict_host_bits);

// `address` with every bit after the first `prefix_len` cleared. REQUIRES: 0 <= prefix_len <=
// address.bit_count().
[[nodiscard]] IpAddress MaskAddress(const IpAddress& address, int prefix_len);

// Longest-prefix match from CIDR prefixes to values (indexes into the caller's table).
// IPv4 addresses only match IPv4 prefixes, IPv6 only IPv6. Lookup costs one map probe per
// distinct prefix length in the table (at most 33 or 129).
//
// Thread-safety: Insert during setup only; Lookup is const and may run concurrently.
class CidrTable {
 public:
  struct Match {
    size_t value = 0;
    int prefix_len = 0;  // the matched prefix's length
    // The shortest prefix of the address over which every address gets this same match: the
    // matched prefix's length, or longer when more specific prefixes lie inside it (an EDNS
    // client-subnet scope: a resolver reuses the answer for that whole block).
    int scope_len = 0;
  };

  // AlreadyExists when the same prefix was inserted before.
  [[nodiscard]] absl::Status Insert(const Cidr& cidr, size_t value);
  [[nodiscard]] std::optional<Match> Lookup(const IpAddress& address) const;
  // The shortest prefix length L >= `at_least` such that no prefix of the table longer than
  // `matched_len` lies inside the address's /L block (-1: the address matched nothing). Costs
  // two ordered lookups per prefix length longer than `matched_len`.
  // REQUIRES: 0 <= at_least <= address.bit_count().
  [[nodiscard]] int ScopeLen(const IpAddress& address, int matched_len, int at_least) const;
  [[nodiscard]] size_t size() const { return size_; }

 private:
  struct Family {
    // prefix length -> masked network bytes -> value
    std::map<int, std::map<std::array<uint8_t, 16>, size_t>, std::greater<int>> by_length;
  };
  Family v4_;
  Family v6_;
  size_t size_ = 0;
};

}  // namespace meridian::geo
