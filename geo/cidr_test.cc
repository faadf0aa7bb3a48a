#include "geo/cidr.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <chrono>
#include <string>
#include <vector>

namespace meridian::geo {
namespace {

IpAddress Ip(const char* text) {
  absl::StatusOr<IpAddress> ip = ParseIpAddress(text);
  EXPECT_TRUE(ip.ok()) << ip.status();
  return ip.ok() ? *ip : IpAddress{};
}

Cidr Prefix(const char* text) {
  absl::StatusOr<Cidr> c = ParseCidr(text, /*strict_host_bits=*/true);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : Cidr{};
}

IpAddress V4(uint32_t bits) {
  IpAddress a;
  for (int i = 0; i < 4; ++i) a.bytes[i] = static_cast<uint8_t>(bits >> (24 - 8 * i));
  return a;
}

uint32_t BitsOf(const IpAddress& a) {
  return uint32_t{a.bytes[0]} << 24 | uint32_t{a.bytes[1]} << 16 | uint32_t{a.bytes[2]} << 8 |
         a.bytes[3];
}

// A table of RapidCheck's random IPv4 prefixes; *inserted: those it took (a repeat is refused),
// each with its index as its value.
CidrTable RandomV4Table(std::vector<Cidr>* inserted) {
  const auto prefixes = *rc::gen::container<std::vector<std::pair<uint32_t, int>>>(
      rc::gen::pair(rc::gen::arbitrary<uint32_t>(), rc::gen::inRange(0, 33)));
  CidrTable table;
  for (const auto& [bits, len] : prefixes) {
    Cidr c{MaskAddress(V4(bits), len), len};
    if (table.Insert(c, inserted->size()).ok()) inserted->push_back(c);
  }
  return table;
}

TEST(IpAddress, ParsesBothFamiliesAndUnmapsV4MappedV6) {
  EXPECT_TRUE(Ip("10.1.2.3").is_v4);
  EXPECT_EQ(Ip("10.1.2.3").ToString(), "10.1.2.3");
  EXPECT_FALSE(Ip("2001:db8::1").is_v4);
  EXPECT_EQ(Ip("2001:db8::1").ToString(), "2001:db8::1");
  EXPECT_EQ(Ip("::ffff:10.1.2.3"), Ip("10.1.2.3"));
}

TEST(IpAddress, RejectsGarbage) {
  for (const std::string& bad :
       std::vector<std::string>{"", "10.1.2", "10.1.2.256", "1.2.3.4 ", "::g", "localhost",
                                "1.2.3.4/24", std::string(100, '1'), std::string("1.2.3.4\0", 8)}) {
    EXPECT_FALSE(ParseIpAddress(bad).ok()) << bad;
  }
}

TEST(Cidr, ParsesAndChecksHostBits) {
  EXPECT_EQ(Prefix("10.1.0.0/16").ToString(), "10.1.0.0/16");
  EXPECT_EQ(Prefix("10.1.2.3").prefix_len, 32);
  EXPECT_EQ(Prefix("2001:db8::/32").ToString(), "2001:db8::/32");
  EXPECT_EQ(Prefix("0.0.0.0/0").prefix_len, 0);
  EXPECT_EQ(Prefix("::ffff:10.1.0.0/112").ToString(), "10.1.0.0/16");

  absl::StatusOr<Cidr> typo = ParseCidr("10.1.2.3/16", /*strict_host_bits=*/true);
  ASSERT_FALSE(typo.ok());
  EXPECT_NE(std::string(typo.status().message()).find("did you mean 10.1.0.0/16"),
            std::string::npos)
      << typo.status();
  // pdns's real-remote carries the client's address with the ECS length: host bits are cleared.
  absl::StatusOr<Cidr> loose = ParseCidr("10.1.2.3/16", /*strict_host_bits=*/false);
  ASSERT_TRUE(loose.ok());
  EXPECT_EQ(loose->ToString(), "10.1.0.0/16");
}

TEST(Cidr, RejectsBadLengths) {
  for (const char* bad : {"10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/-0", "10.0.0.0/+8", "10.0.0.0/",
                          "10.0.0.0/1x", "::/129", "::ffff:10.0.0.0/95", "/8", "10.0.0.0/8/8"}) {
    EXPECT_FALSE(ParseCidr(bad, false).ok()) << bad;
  }
}

TEST(Cidr, MaskAddressClearsPartialBytes) {
  EXPECT_EQ(MaskAddress(Ip("10.255.255.255"), 9).ToString(), "10.128.0.0");
  EXPECT_EQ(MaskAddress(Ip("10.255.255.255"), 0).ToString(), "0.0.0.0");
  EXPECT_EQ(MaskAddress(Ip("2001:db8:ffff::1"), 35).ToString(), "2001:db8:e000::");
  EXPECT_TRUE(Prefix("10.0.0.0/8").Contains(Ip("10.9.9.9")));
  EXPECT_FALSE(Prefix("10.0.0.0/8").Contains(Ip("11.0.0.1")));
  EXPECT_FALSE(Prefix("::/0").Contains(Ip("10.0.0.1")));  // families never mix
}

TEST(CidrTable, LongestPrefixWinsAndFamiliesStayApart) {
  CidrTable t;
  ASSERT_TRUE(t.Insert(Prefix("10.0.0.0/8"), 1).ok());
  ASSERT_TRUE(t.Insert(Prefix("10.1.0.0/16"), 2).ok());
  ASSERT_TRUE(t.Insert(Prefix("10.1.2.0/24"), 3).ok());
  ASSERT_TRUE(t.Insert(Prefix("::/0"), 4).ok());
  EXPECT_FALSE(t.Insert(Prefix("10.1.0.0/16"), 9).ok());  // duplicate
  EXPECT_EQ(t.size(), 4u);

  auto m = t.Lookup(Ip("10.1.2.3"));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->value, 3u);
  EXPECT_EQ(m->prefix_len, 24);
  EXPECT_EQ(t.Lookup(Ip("10.1.3.3"))->value, 2u);
  EXPECT_EQ(t.Lookup(Ip("10.2.3.3"))->value, 1u);
  EXPECT_FALSE(t.Lookup(Ip("11.0.0.1")));
  EXPECT_EQ(t.Lookup(Ip("2001:db8::1"))->value, 4u);
  EXPECT_EQ(t.Lookup(Ip("2001:db8::1"))->prefix_len, 0);
}

// The table agrees with a brute-force scan: the longest prefix that contains the address.
RC_GTEST_PROP(CidrTable, MatchesBruteForce, ()) {
  std::vector<Cidr> inserted;
  const CidrTable table = RandomV4Table(&inserted);
  const IpAddress probe = V4(*rc::gen::arbitrary<uint32_t>());
  int best_len = -1;
  size_t best = 0;
  for (size_t i = 0; i < inserted.size(); ++i) {
    if (inserted[i].Contains(probe) && inserted[i].prefix_len > best_len) {
      best_len = inserted[i].prefix_len;
      best = i;
    }
  }
  const auto m = table.Lookup(probe);
  if (best_len < 0) {
    RC_ASSERT(!m.has_value());
  } else {
    RC_ASSERT(m.has_value());
    RC_ASSERT(m->value == best);
    RC_ASSERT(m->prefix_len == best_len);
  }
}

// The scope is exact: every address of the probe's /scope block has the probe's match (checked
// at random addresses of the block and at every inserted network inside it), and one bit less
// would take in an address that matches otherwise (or the scope is the matched length).
RC_GTEST_PROP(CidrTable, ScopeHoldsOnlyAddressesWithTheSameMatch, ()) {
  std::vector<Cidr> inserted;
  const CidrTable table = RandomV4Table(&inserted);
  const IpAddress probe = V4(*rc::gen::arbitrary<uint32_t>());
  const auto m = table.Lookup(probe);
  RC_PRE(m.has_value());
  RC_ASSERT(m->scope_len >= m->prefix_len);
  RC_ASSERT(m->scope_len <= 32);
  const Cidr block{MaskAddress(probe, m->scope_len), m->scope_len};
  auto same = [&](const IpAddress& a) {
    auto other = table.Lookup(a);
    return other.has_value() && other->value == m->value;
  };
  const uint32_t host_mask = m->scope_len == 32 ? 0 : ~uint32_t{0} >> m->scope_len;
  for (int i = 0; i < 20; ++i) {
    const uint32_t a = BitsOf(block.network) | (*rc::gen::arbitrary<uint32_t>() & host_mask);
    RC_ASSERT(same(V4(a)));
  }
  for (const Cidr& c : inserted) {
    if (block.Contains(c.network)) RC_ASSERT(same(c.network));
  }
  if (m->scope_len > m->prefix_len) {
    // The block one bit wider holds an inserted network that matches otherwise.
    const Cidr wider{MaskAddress(probe, m->scope_len - 1), m->scope_len - 1};
    bool found = false;
    for (const Cidr& c : inserted) found = found || (wider.Contains(c.network) && !same(c.network));
    RC_ASSERT(found);
  }
}

// ScopeLen, which looks only at each length's neighbours of the address, gives what a pass over
// every longer prefix inside the /at_least block gives, for matched and unmatched addresses and
// any at_least (a client's ECS prefix on the unmatched path).
RC_GTEST_PROP(CidrTable, ScopeLenMatchesAPassOverTheBlock, ()) {
  std::vector<Cidr> inserted;
  const CidrTable table = RandomV4Table(&inserted);
  // Near an inserted network half the time, so that long shared prefixes come up.
  uint32_t bits = *rc::gen::arbitrary<uint32_t>();
  if (!inserted.empty() && *rc::gen::arbitrary<bool>()) {
    const Cidr& near = inserted[*rc::gen::inRange<size_t>(0, inserted.size())];
    bits = BitsOf(near.network) ^ (bits & 0xffu);
  }
  const IpAddress probe = V4(bits);
  const auto m = table.Lookup(probe);
  const int matched_len = m ? m->prefix_len : -1;
  const int at_least = m ? matched_len : *rc::gen::inRange(0, 33);
  int expected = at_least;
  const Cidr block{MaskAddress(probe, at_least), at_least};
  for (const Cidr& c : inserted) {
    if (c.prefix_len <= matched_len || !block.Contains(c.network)) continue;
    int shared = 0;
    while (shared < c.prefix_len &&
           MaskAddress(probe, shared + 1) == MaskAddress(c.network, shared + 1))
      ++shared;
    expected = std::max(expected, shared + 1);
  }
  RC_ASSERT(table.ScopeLen(probe, matched_len, at_least) == std::min(expected, 32));
}

// A short client prefix over a large table costs lookups, not a pass over the table: 0.0.0.0/1
// held half of these 262,144 networks, each DNS answer walking them.
TEST(CidrTable, AShortClientPrefixDoesNotWalkTheTable) {
  CidrTable table;
  for (uint32_t i = 1; i <= (1u << 18); ++i) {  // 0.0.1.0/24, 0.0.2.0/24, ... 4.0.0.0/24
    ASSERT_TRUE(table.Insert({V4(i << 8), 24}, i).ok());
  }
  auto zero = ParseIpAddress("0.0.0.0");
  ASSERT_TRUE(zero.ok());
  ASSERT_FALSE(table.Lookup(*zero).has_value());
  const auto start = std::chrono::steady_clock::now();
  int scope = 0;
  for (int i = 0; i < 20000; ++i) scope = table.ScopeLen(*zero, -1, 1);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(scope, 24);  // 0.0.1.0/24 lies inside 0.0.0.0/23
  EXPECT_LT(seconds, 2.0) << "20,000 scopes of 0.0.0.0/1 took " << seconds << " s";
}

}  // namespace
}  // namespace meridian::geo
