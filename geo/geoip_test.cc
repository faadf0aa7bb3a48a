// MaxMind database (a real .mmdb made by testdata/make_test_mmdb.pl with Debian's
// MaxMind::DB::Writer) and the client locator's order: GeoIP, then the CIDR table, then default.

#include "geo/geoip.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "geo/config.h"
#include "geo/locator.h"

namespace meridian::geo {
namespace {

const std::string kTestDb = std::string(MERIDIAN_GEO_TESTDATA) + "/test-city.mmdb";

IpAddress Ip(const char* text) { return *ParseIpAddress(text); }
Cidr Net(const char* text) { return *ParseCidr(text, false); }

TEST(MaxMindDatabase, MissingFileIsNotFoundNamingThePath) {
  auto db = MaxMindDatabase::Open("/nonexistent/GeoLite2-City.mmdb");
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(db.status().message()).find("/nonexistent/GeoLite2-City.mmdb"),
            std::string::npos);
}

TEST(MaxMindDatabase, AFileThatIsNotAnMmdbIsInvalid) {
  const std::string path =
      ::testing::TempDir() + "/not-a-database-" + std::to_string(::getpid()) + ".mmdb";
  {
    std::ofstream out(path, std::ios::binary);
    out << "this is not a MaxMind DB file, just some bytes\n";
  }
  auto db = MaxMindDatabase::Open(path);
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(db.status().message()).find(path), std::string::npos);
  std::remove(path.c_str());
}

// A FIFO would block MMDB_open until a writer came (with the stop signals blocked already).
TEST(MaxMindDatabase, AFifoOrAFolderIsRefusedWithoutOpeningIt) {
  const std::string fifo = ::testing::TempDir() + "/fifo-" + std::to_string(::getpid()) + ".mmdb";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto db = MaxMindDatabase::Open(fifo);
  std::remove(fifo.c_str());
  ASSERT_FALSE(db.ok());
  EXPECT_NE(std::string(db.status().message()).find("is not a regular file"), std::string::npos)
      << db.status();
  auto dir = MaxMindDatabase::Open(::testing::TempDir());
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(std::string(dir.status().message()).find("is a folder"), std::string::npos)
      << dir.status();
}

TEST(MaxMindDatabase, LooksUpIpv4AndIpv6WithTheirNetworkPrefix) {
  auto db = MaxMindDatabase::Open(kTestDb);
  ASSERT_TRUE(db.ok()) << db.status();

  auto frankfurt = (*db)->Lookup(Ip("203.0.113.77"));
  ASSERT_TRUE(frankfurt.ok()) << frankfurt.status();
  ASSERT_TRUE(frankfurt->point);
  EXPECT_DOUBLE_EQ(frankfurt->point->lat_deg, 50.11);
  EXPECT_DOUBLE_EQ(frankfurt->point->lon_deg, 8.68);
  EXPECT_EQ(frankfurt->prefix_len, 24);  // the IPv6 tree's /120, in IPv4 terms

  auto singapore = (*db)->Lookup(Ip("2001:db8:1::5"));
  ASSERT_TRUE(singapore.ok());
  ASSERT_TRUE(singapore->point);
  EXPECT_DOUBLE_EQ(singapore->point->lat_deg, 1.35);
  EXPECT_EQ(singapore->prefix_len, 48);

  auto no_location = (*db)->Lookup(Ip("198.51.100.1"));
  ASSERT_TRUE(no_location.ok());
  EXPECT_FALSE(no_location->point);

  auto absent = (*db)->Lookup(Ip("8.8.8.8"));
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->point);
  // A miss next to a network the database holds: the empty block around it stops short of it.
  auto next_door = (*db)->Lookup(Ip("203.0.114.1"));
  ASSERT_TRUE(next_door.ok());
  EXPECT_FALSE(next_door->point);
  EXPECT_EQ(next_door->prefix_len, 23);  // 203.0.114.0/23: 203.0.113.0/24 lies next to it
}

GeoConfig LocatorConfig() {
  GeoConfig c;
  c.regions = {RegionConfig{"us-east", {Ip("10.1.0.1")}, {38.9, -77.0}, ""},
               RegionConfig{"eu-west", {Ip("10.2.0.1")}, {53.3, -6.3}, ""}};
  c.locations = {LocationConfig{Net("203.0.113.0/24"), 0, {}},   // overridden by GeoIP
                 LocationConfig{Net("198.51.100.0/24"), 1, {}},  // GeoIP has no location
                 LocationConfig{Net("100.64.0.0/10"), std::nullopt, {-33.9, 151.2}}};
  c.default_location = {38.9, -77.0};
  return c;
}

TEST(ClientLocator, GeoIpFirstThenTheTableThenTheDefault) {
  auto db = MaxMindDatabase::Open(kTestDb);
  ASSERT_TRUE(db.ok()) << db.status();
  const GeoConfig config = LocatorConfig();
  ClientLocator locator(config, *std::move(db));

  ClientLocation geoip = locator.Locate(Net("203.0.113.0/24"));
  EXPECT_EQ(geoip.source, LocationSource::kGeoIp);
  EXPECT_DOUBLE_EQ(geoip.point.lat_deg, 50.11);
  EXPECT_EQ(geoip.scope_prefix_len, 24);

  ClientLocation table = locator.Locate(Net("198.51.100.0/24"));
  EXPECT_EQ(table.source, LocationSource::kCidrTable);
  EXPECT_DOUBLE_EQ(table.point.lat_deg, 53.3);  // eu-west's coordinates
  EXPECT_EQ(table.scope_prefix_len, 25);        // the database's record without a location: a /25
  EXPECT_EQ(table.table_row, 1u);

  ClientLocation point = locator.Locate(Net("100.64.7.0/24"));
  EXPECT_EQ(point.source, LocationSource::kCidrTable);
  EXPECT_DOUBLE_EQ(point.point.lon_deg, 151.2);
  EXPECT_EQ(point.scope_prefix_len, 10);

  ClientLocation fallback = locator.Locate(Net("8.8.8.0/24"));
  EXPECT_EQ(fallback.source, LocationSource::kDefault);
  EXPECT_DOUBLE_EQ(fallback.point.lat_deg, 38.9);
  EXPECT_EQ(fallback.scope_prefix_len, 24);  // the client's own prefix
}

// A table row wider than a database network: a client the database misses gets the row's region,
// scoped to the database's empty block around it, not the row, which holds a network the database
// places elsewhere. Before, 203.0.114.0/24 was answered for all of 203.0.0.0/16, and a resolver
// handed that answer to 203.0.113.0/24, which the database places in Frankfurt (probe, 2026-12-04).
TEST(ClientLocator, AnAnswerPastAGeoIpMissIsScopedToTheDatabasesEmptyBlock) {
  auto db = MaxMindDatabase::Open(kTestDb);
  ASSERT_TRUE(db.ok()) << db.status();
  GeoConfig config = LocatorConfig();
  config.locations = {LocationConfig{Net("203.0.0.0/16"), 0, {}},
                      LocationConfig{Net("2001:db8::/32"), 0, {}}};
  ClientLocator locator(config, *std::move(db));
  ClientLocation v4 = locator.Locate(Net("203.0.114.0/24"));
  EXPECT_EQ(v4.source, LocationSource::kCidrTable);
  EXPECT_EQ(v4.scope_prefix_len, 23) << "203.0.114.0/23 holds no database network";
  ClientLocation v6 = locator.Locate(Net("2001:db8::/32"));
  EXPECT_EQ(v6.source, LocationSource::kCidrTable);
  EXPECT_GE(v6.scope_prefix_len, 48) << "2001:db8:1::/48 is Singapore's";
  ClientLocation fallback = locator.Locate(Net("203.1.0.0/16"));
  EXPECT_EQ(fallback.source, LocationSource::kDefault);
  EXPECT_GE(fallback.scope_prefix_len, 16);
  ClientLocation geoip = locator.Locate(Net("203.0.113.0/24"));
  EXPECT_EQ(geoip.source, LocationSource::kGeoIp);
  EXPECT_EQ(geoip.scope_prefix_len, 24);
}

// A database that fails: the locator reports the error and uses its table.
class FailingDatabase : public GeoIpDatabase {
 public:
  absl::StatusOr<GeoIpLookup> Lookup(const IpAddress&) const override {
    return absl::InternalError("corrupt search tree");
  }
};

TEST(ClientLocator, AGeoIpErrorFallsThroughToTheTable) {
  const GeoConfig config = LocatorConfig();
  ClientLocator locator(config, std::make_unique<FailingDatabase>());
  absl::Status error;
  ClientLocation where = locator.Locate(Net("198.51.100.0/24"), &error);
  EXPECT_EQ(where.source, LocationSource::kCidrTable);
  EXPECT_EQ(error.code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace meridian::geo
