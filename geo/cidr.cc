#include "geo/cidr.h"

#include <arpa/inet.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace meridian::geo {
namespace {

constexpr std::array<uint8_t, 12> kV4MappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

// Longer than any address text; inet_pton needs a NUL-terminated copy.
constexpr size_t kAddressTextMax = 64;

}  // namespace

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(is_v4 ? AF_INET : AF_INET6, bytes.data(), buf, sizeof buf);
  return buf;
}

std::string Cidr::ToString() const { return absl::StrCat(network.ToString(), "/", prefix_len); }

bool Cidr::Contains(const IpAddress& address) const {
  return address.is_v4 == network.is_v4 && MaskAddress(address, prefix_len) == network;
}

absl::StatusOr<IpAddress> ParseIpAddress(std::string_view text) {
  if (text.empty() || text.size() >= kAddressTextMax || text.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", std::string(text.substr(0, kAddressTextMax)), "' is not an IP address"));
  }
  char buf[kAddressTextMax] = {};
  std::memcpy(buf, text.data(), text.size());
  IpAddress out;
  if (inet_pton(AF_INET, buf, out.bytes.data()) == 1) {
    out.is_v4 = true;
    return out;
  }
  if (inet_pton(AF_INET6, buf, out.bytes.data()) == 1) {
    out.is_v4 = false;
    if (std::equal(kV4MappedPrefix.begin(), kV4MappedPrefix.end(), out.bytes.begin())) {
      IpAddress v4;
      std::copy(out.bytes.begin() + 12, out.bytes.end(), v4.bytes.begin());
      return v4;
    }
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", std::string(text), "' is not an IPv4 or IPv6 address"));
}

IpAddress MaskAddress(const IpAddress& address, int prefix_len) {
  IpAddress out = address;
  const int bits = address.bit_count();
  for (int byte = 0; byte < 16; ++byte) {
    const int first_bit = byte * 8;
    if (first_bit >= bits) {
      out.bytes[byte] = 0;
    } else if (first_bit + 8 <= prefix_len) {
      continue;
    } else if (first_bit >= prefix_len) {
      out.bytes[byte] = 0;
    } else {
      const int keep = prefix_len - first_bit;  // 1..7
      out.bytes[byte] &= static_cast<uint8_t>(0xff << (8 - keep));
    }
  }
  return out;
}

absl::StatusOr<Cidr> ParseCidr(std::string_view text, bool strict_host_bits) {
  const size_t slash = text.find('/');
  absl::StatusOr<IpAddress> address = ParseIpAddress(text.substr(0, slash));
  if (!address.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", std::string(text), "' is not a CIDR prefix: ", address.status().message()));
  }
  // The mapped form parsed to IPv4; its prefix length still counts IPv6 bits.
  const bool mapped = address->is_v4 && text.substr(0, slash).find(':') != std::string_view::npos;
  int prefix_len = mapped ? 128 : address->bit_count();
  if (slash != std::string_view::npos) {
    const std::string_view len_text = text.substr(slash + 1);
    int len = -1;
    const auto [end, ec] = std::from_chars(len_text.data(), len_text.data() + len_text.size(), len);
    const int max_len = mapped ? 128 : address->bit_count();
    // Digits only: from_chars takes a sign, and "/-0" is no prefix length.
    if (len_text.empty() || !absl::ascii_isdigit(static_cast<unsigned char>(len_text[0])) ||
        ec != std::errc() || end != len_text.data() + len_text.size() || len < 0 || len > max_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", std::string(text), "': prefix length must be 0..", max_len));
    }
    prefix_len = len;
  }
  if (mapped) {
    if (prefix_len < 96) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", std::string(text), "': an IPv4-mapped prefix must be at least /96"));
    }
    prefix_len -= 96;
  }
  Cidr cidr{MaskAddress(*address, prefix_len), prefix_len};
  if (strict_host_bits && !(cidr.network == *address)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", std::string(text), "' has host bits set; did you mean ", cidr.ToString(), "?"));
  }
  return cidr;
}

absl::Status CidrTable::Insert(const Cidr& cidr, size_t value) {
  Family& family = cidr.network.is_v4 ? v4_ : v6_;
  auto [it, inserted] = family.by_length[cidr.prefix_len].emplace(cidr.network.bytes, value);
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat(cidr.ToString(), " is listed twice"));
  }
  ++size_;
  return absl::OkStatus();
}

std::optional<CidrTable::Match> CidrTable::Lookup(const IpAddress& address) const {
  const Family& family = address.is_v4 ? v4_ : v6_;
  for (const auto& [length, networks] : family.by_length) {
    auto it = networks.find(MaskAddress(address, length).bytes);
    if (it != networks.end()) {
      return Match{it->second, length, ScopeLen(address, length, length)};
    }
  }
  return std::nullopt;
}

namespace {

// Leading bits `a` and `b` share, at most `limit`.
int CommonPrefixLen(const std::array<uint8_t, 16>& a, const std::array<uint8_t, 16>& b, int limit) {
  int n = 0;
  for (size_t i = 0; i < a.size() && n < limit; ++i) {
    const uint8_t diff = a[i] ^ b[i];
    if (diff == 0) {
      n += 8;
      continue;
    }
    return std::min(limit, n + std::countl_zero(diff));
  }
  return std::min(n, limit);
}

}  // namespace

int CidrTable::ScopeLen(const IpAddress& address, int matched_len, int at_least) const {
  // A longer prefix X lies inside the address's /L block when L <= the bits they share (which
  // are fewer than X's length: X does not hold the address, or it would have matched). So the
  // block must be one bit longer than the most the address shares with any such X; a prefix
  // outside the /at_least block shares fewer than at_least bits and asks for nothing more.
  // Of one length's networks, ordered as numbers, the most bits with the address are shared by
  // its neighbours: the first network at or above it and the last below. Two lookups a length,
  // not a pass over every network in the block: a client's short ECS prefix (0.0.0.0/1) made
  // each DNS answer walk half the table.
  const Family& family = address.is_v4 ? v4_ : v6_;
  int scope = at_least;
  for (const auto& [length, networks] : family.by_length) {
    if (length <= matched_len) break;  // by_length runs longest first
    auto it = networks.lower_bound(address.bytes);
    if (it != networks.end()) {
      scope = std::max(scope, CommonPrefixLen(address.bytes, it->first, length) + 1);
    }
    if (it != networks.begin()) {
      scope = std::max(scope, CommonPrefixLen(address.bytes, std::prev(it)->first, length) + 1);
    }
  }
  return std::min(scope, address.bit_count());
}

}  // namespace meridian::geo
