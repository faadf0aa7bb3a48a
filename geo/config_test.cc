#include "geo/config.h"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace meridian::geo {
namespace {

constexpr char kValid[] = R"(
listen: 127.0.0.1:0
answer_ttl_s: 5
zone:
  name: Shop.Example.Test
  nameservers:
    - name: ns1.shop.example.test.
      addresses: [127.0.0.1]
regions:
  - name: us-east
    addresses: [10.1.0.1, "2001:db8::1"]
    lat: 39.0
    lon: -77.5
    readyz: http://127.0.0.1:1/readyz
  - name: eu-west
    addresses: [10.2.0.1]
    lat: 53.3
    lon: -6.3
locations:
  - cidr: 192.0.2.0/24
    region: eu-west
  - cidr: 198.51.100.0/24
    lat: 1.35
    lon: 103.8
default_location:
  region: us-east
operator_token: operator-token-0123456789
)";

std::string With(const std::string& from, const std::string& to) {
  std::string s = kValid;
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

// The error message, which must name the field.
std::string Error(const std::string& yaml) {
  absl::StatusOr<GeoConfig> c = ParseConfig(yaml, "geo.yaml");
  EXPECT_FALSE(c.ok()) << yaml;
  return c.ok() ? "" : std::string(c.status().message());
}

TEST(GeoConfig, ParsesTheValidConfigWithDefaults) {
  absl::StatusOr<GeoConfig> c = ParseConfig(kValid, "geo.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen.port, 0);
  EXPECT_EQ(c->dns_path, "/dns");
  EXPECT_EQ(c->zone.name, "shop.example.test.");
  EXPECT_EQ(c->zone.service_name, "shop.example.test.");
  EXPECT_EQ(c->zone.soa_primary, "ns1.shop.example.test.");
  EXPECT_EQ(c->zone.soa_hostmaster, "hostmaster.shop.example.test.");
  ASSERT_EQ(c->regions.size(), 2u);
  EXPECT_EQ(c->regions[0].addresses.size(), 2u);
  EXPECT_FALSE(c->regions[0].addresses[1].is_v4);
  EXPECT_EQ(c->regions[1].readyz_url, "");
  EXPECT_EQ(c->probe_interval_ms, 500);
  EXPECT_EQ(c->probe_timeout_ms, 400);
  EXPECT_EQ(c->health.fall, 3);
  EXPECT_EQ(c->health.rise, 5);
  EXPECT_EQ(c->health.initial, Health::kUp);
  // Probe detection bound with the defaults: fall rounds plus one timeout, within 2 s.
  EXPECT_LE(c->health.fall * c->probe_interval_ms + c->probe_timeout_ms, 2000);
  EXPECT_EQ(c->last_resort, LastResort::kAllRegions);
  EXPECT_EQ(c->last_resort_ttl_s, 1u);
  ASSERT_EQ(c->locations.size(), 2u);
  EXPECT_EQ(c->locations[0].region, 1u);
  EXPECT_FALSE(c->locations[1].region.has_value());
  EXPECT_DOUBLE_EQ(c->locations[1].point.lat_deg, 1.35);
  EXPECT_EQ(c->default_region, 0u);
  EXPECT_DOUBLE_EQ(c->default_location.lon_deg, -77.5);
  EXPECT_EQ(c->operator_token, "operator-token-0123456789");
}

TEST(GeoConfig, EveryErrorNamesItsField) {
  const std::pair<std::string, std::string> cases[] = {
      {With("lat: 39.0", "lat: 123"), "geo.yaml: regions[0].lat: must be between -90 and 90"},
      {With("lon: -6.3", "lon: east"), "regions[1].lon: must be a number"},
      {With("    lon: -6.3\n", ""), "regions[1].lon: missing"},
      {With("lat: 39.0", "lat:"), "regions[0].lat: missing"},  // a null, not latitude 0
      {With("addresses: [10.2.0.1]", "addresses: [10.2.0.999]"), "regions[1].addresses[0]"},
      {With("addresses: [10.2.0.1]", "addresses: []"), "regions[1].addresses: must not be empty"},
      {With("addresses: [10.2.0.1]", "addresses: [10.2.0.1, 10.2.0.1]"),
       "regions[1].addresses[1]: 10.2.0.1 is listed twice"},
      {With("name: eu-west", "name: us-east"), "regions[1].name: 'us-east' is listed twice"},
      {With("name: eu-west", "name: EU_West"), "regions[1].name: 'EU_West'"},
      {With("readyz: http://127.0.0.1:1/readyz", "readyz: 127.0.0.1:1/readyz"),
       "regions[0].readyz: '127.0.0.1:1/readyz' must be an http:// or https:// URL"},
      {With("readyz: http://127.0.0.1:1/readyz", "readyz: http://"),
       "regions[0].readyz: 'http://' must be an http:// or https:// URL with a host"},
      {With("readyz: http://127.0.0.1:1/readyz", "readyz: http://127.0.0.1:99999/readyz"),
       "regions[0].readyz: 'http://127.0.0.1:99999/readyz' must be"},
      {With("    region: eu-west\n", "    region: mars\n"),
       "locations[0].region: 'mars' is not a region in regions"},
      {With("cidr: 192.0.2.0/24", "cidr: 192.0.2.1/24"),
       "locations[0].cidr: '192.0.2.1/24' has host bits set; did you mean 192.0.2.0/24?"},
      {With("cidr: 198.51.100.0/24", "cidr: 192.0.2.0/24"),
       "locations[1].cidr: 192.0.2.0/24 is listed twice"},
      {With("    lat: 1.35\n", ""), "locations[1]: needs region, or both lat and lon"},
      {With("  region: us-east\noperator", "  region: us-east\n  lat: 1\noperator"),
       "default_location: give either region or lat/lon, not both"},
      {With("name: Shop.Example.Test", "name: shop..test"),
       "zone.name: 'shop..test' is not a DNS name"},
      {With("name: Shop.Example.Test", "name: shop.example.test\n  service_name: www.other.test"),
       "zone.service_name: 'www.other.test.' is not inside zone 'shop.example.test.'"},
      {With("    - name: ns1.shop.example.test.\n      addresses: [127.0.0.1]\n",
            "    - name: ns1.elsewhere.test.\n      addresses: [127.0.0.1]\n"),
       "zone.nameservers[0].addresses: glue addresses are only for names inside the zone"},
      {With("    - name: ns1.shop.example.test.\n",
            "    - name: shop.example.test.\n"),  // the apex, the default service name
       "zone.nameservers[0].name: 'shop.example.test.' is the service name: a name server with "
       "glue addresses needs a name of its own"},
      {With("operator_token: operator-token-0123456789", "operator_token: short"),
       "operator_token: the token must be at least 16 bytes"},
      {With("operator_token: operator-token-0123456789", ""),
       "operator_token: give exactly one of operator_token or operator_token_file"},
      {With("operator_token: operator-token-0123456789", "operator_token_file: /nonexistent/t"),
       "operator_token_file: cannot read '/nonexistent/t'"},
      {With("answer_ttl_s: 5", "answer_ttl_s: -1"), "answer_ttl_s: must be between 0 and 86400"},
      {With("answer_ttl_s: 5", "answer_tll_s: 5"), "answer_tll_s: unknown field"},
      {With("listen: 127.0.0.1:0", "listen: localhost:53"),
       "listen: the host must be an IP address, got 'localhost'"},
      {With("listen: 127.0.0.1:0", "listen: 127.0.0.1:0\ndns_path: /v1/regions"), "dns_path:"},
      {With("listen: 127.0.0.1:0",
            "listen: 127.0.0.1:0\nhealth: {probe_interval_ms: 100, "
            "probe_timeout_ms: 200}"),
       "health.probe_timeout_ms: must not exceed health.probe_interval_ms (100)"},
      {With("listen: 127.0.0.1:0", "listen: 127.0.0.1:0\nhealth: {fall: 0}"),
       "health.fall: must be between 1 and 100"},
      {With("listen: 127.0.0.1:0", "listen: 127.0.0.1:0\nhealth: {initial_state: maybe}"),
       "health.initial_state: must be up or down, got 'maybe'"},
      {With("listen: 127.0.0.1:0", "listen: 127.0.0.1:0\nlast_resort: {mode: region}"),
       "last_resort.region: missing"},
      {With("listen: 127.0.0.1:0", "listen: 127.0.0.1:0\nlast_resort: {mode: region, region: x}"),
       "last_resort.region: 'x' is not a region in regions"},
      {With("listen: 127.0.0.1:0", "listen: 127.0.0.1:0\nlast_resort: {mode: random}"),
       "last_resort.mode: must be all or region, got 'random'"},
      {"regions: [", "not valid YAML (line 1)"},
      {"zone: a.test\n---\nzone: b.test\n", "holds 2 YAML documents"},
      {"- a\n- b\n", "(top level): must be a mapping"},
      {"", "(top level): must be a mapping"},
  };
  for (const auto& [yaml, expected] : cases) {
    const std::string error = Error(yaml);
    EXPECT_NE(error.find(expected), std::string::npos)
        << "expected '" << expected << "' in '" << error << "'";
  }
}

TEST(GeoConfig, ListenTakesIpv6WithOrWithoutBrackets) {
  for (const char* listen : {"\"[::1]:8053\"", "\"::1:8053\""}) {
    absl::StatusOr<GeoConfig> c =
        ParseConfig(With("listen: 127.0.0.1:0", std::string("listen: ") + listen));
    ASSERT_TRUE(c.ok()) << listen << ": " << c.status();
    EXPECT_EQ(c->listen.host, "::1");
    EXPECT_EQ(c->listen.port, 8053);
  }
}

TEST(GeoConfig, LastResortRegionAndTokenFileRelativeToTheConfig) {
  const std::string dir = ::testing::TempDir() + "/geo-config-test-" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  {
    std::ofstream token(dir + "/geo-token");
    token << "file-token-0123456789abcdef\n";
  }
  const std::string yaml = With(
      "operator_token: operator-token-0123456789",
      "operator_token_file: geo-token\nlast_resort: {mode: region, region: eu-west, ttl_s: 2}");
  {
    std::ofstream config(dir + "/geo-config.yaml");
    config << yaml;
  }
  absl::StatusOr<GeoConfig> c = LoadConfigFile(dir + "/geo-config.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->operator_token, "file-token-0123456789abcdef");  // newline trimmed
  EXPECT_EQ(c->last_resort, LastResort::kFixedRegion);
  EXPECT_EQ(c->last_resort_region, 1u);
  EXPECT_EQ(c->last_resort_ttl_s, 2u);
  std::remove((dir + "/geo-token").c_str());
  std::remove((dir + "/geo-config.yaml").c_str());
  ::rmdir(dir.c_str());
}

TEST(GeoConfig, TheShippedExampleIsValid) {
  absl::StatusOr<GeoConfig> c = LoadConfigFile(std::string(MERIDIAN_GEO_EXAMPLES) + "/geo.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->regions.size(), 3u);
}

TEST(NormalizeDnsName, LowercasesAndAddsTheDot) {
  EXPECT_EQ(NormalizeDnsName("Shop.Example.Test"), "shop.example.test.");
  EXPECT_EQ(NormalizeDnsName("shop.example.test."), "shop.example.test.");
  EXPECT_EQ(NormalizeDnsName("_dmarc.x"), "_dmarc.x.");
  EXPECT_EQ(NormalizeDnsName("."), ".");
  for (const std::string& bad :
       std::vector<std::string>{"", "..", "a..b", ".a", "a b", "a/b", std::string(64, 'a') + ".x",
                                std::string(254, 'a'), "caf\xc3\xa9.test"}) {
    EXPECT_FALSE(NormalizeDnsName(bad)) << bad;
  }
}

}  // namespace
}  // namespace meridian::geo
