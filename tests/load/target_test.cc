#include "tests/load/target.h"

#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace meridian::load {
namespace {

TEST(ParseTargetTest, AcceptsLoopback) {
  auto t = ParseTarget("http://127.0.0.1:8080");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->address, "127.0.0.1");
  EXPECT_EQ(t->port, 8080);
  EXPECT_EQ(t->host_header, "127.0.0.1:8080");

  t = ParseTarget("http://localhost:9000/");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->address, "127.0.0.1");

  t = ParseTarget("http://[::1]:7000");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->address, "::1");
  EXPECT_EQ(t->host_header, "[::1]:7000");

  t = ParseTarget("http://127.8.9.10");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->port, 80);
}

TEST(ParseTargetTest, RefusesAnythingOffThisMachine) {
  for (const char* url :
       {"http://10.0.0.1:80", "http://192.168.1.2:8080", "http://8.8.8.8:80", "http://example.com",
        "http://0.0.0.0:80", "http://[2001:db8::1]:80", "http://[::ffff:10.0.0.1]:80",
        "http://128.0.0.1:80", "http://127.0.0.1.example.com:80"}) {
    EXPECT_FALSE(ParseTarget(url).ok()) << url;
  }
}

TEST(ParseTargetTest, RefusesMalformed) {
  for (const char* url : {"https://127.0.0.1:443", "127.0.0.1:80", "http://127.0.0.1:0",
                          "http://127.0.0.1:70000", "http://127.0.0.1:80/v1", "http://u@127.0.0.1",
                          "http://127.0.0.1:", "http://[::1", "http://127.0.0.1:8x"}) {
    EXPECT_FALSE(ParseTarget(url).ok()) << url;
  }
}

LocalRoutes FakeMachine() {
  // 10.77.0.0/24 over a bridge of veths (deploy/meridian's namespaces), a LAN on eth0, a default
  // route through a gateway, and a bridge that has a physical NIC in it.
  return LocalRoutes({{0x0A4D0000, 0xFFFFFF00, 0, "mer-br"},
                      {0xC0A80100, 0xFFFFFF00, 0, "eth0"},
                      {0, 0, 0xC0A80101, "eth0"},
                      {0x0A580000, 0xFFFF0000, 0, "br-lan"},
                      {0x0A4D0080, 0xFFFFFF80, 0, "veth9"}},
                     {"mer-br", "veth9"});
}

TEST(ParseTargetTest, AcceptsNamespaceAddressesOnVirtualLinks) {
  LocalRoutes machine = FakeMachine();
  auto t = ParseTarget("http://10.77.0.2:8080", &machine);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->address, "10.77.0.2");
  EXPECT_EQ(t->host_header, "10.77.0.2:8080");
  // Without a view of the machine, only loopback is accepted.
  EXPECT_FALSE(ParseTarget("http://10.77.0.2:8080").ok());
  // The longest prefix wins: 10.77.0.200 goes over veth9, also virtual.
  EXPECT_TRUE(ParseTarget("http://10.77.0.200:80", &machine).ok());
}

TEST(ParseTargetTest, RefusesRoutesThatLeaveTheMachine) {
  LocalRoutes machine = FakeMachine();
  for (const char* url : {"http://192.168.1.7:80",    // a physical LAN
                          "http://8.8.8.8:80",        // via the gateway
                          "http://10.88.3.4:80",      // a bridge with a physical member
                          "http://[2001:db8::1]:80",  // IPv6 is loopback-only
                          "http://example.com:80"}) {
    auto t = ParseTarget(url, &machine);
    EXPECT_FALSE(t.ok()) << url;
  }
  LocalRoutes empty({}, {});
  EXPECT_FALSE(ParseTarget("http://10.77.0.2:80", &empty).ok());
}

TEST(LocalRoutesTest, ReadsProcAndSysTrees) {
  namespace fs = std::filesystem;
  fs::path root = fs::temp_directory_path() / ("loadgen-routes-" + std::to_string(::getpid()) +
                                               "-" + std::to_string(std::rand()));
  fs::create_directories(root / "proc/net");
  std::ofstream(root / "proc/net/route")
      << "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
      << "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
      << "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
      << "mer-br\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
      << "br-lan\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
  fs::create_directories(root / "sys/class/net/eth0/device");
  fs::create_directories(root / "sys/class/net/mer-br/bridge");
  fs::create_directories(root / "sys/class/net/mer-br/brif/veth1");
  fs::create_directories(root / "sys/class/net/veth1");
  fs::create_directories(root / "sys/class/net/br-lan/bridge");
  fs::create_directories(root / "sys/class/net/br-lan/brif/eth1");
  fs::create_directories(root / "sys/class/net/eth1/device");
  LocalRoutes machine = LocalRoutes::FromSystem(root.string());
  std::string why;
  EXPECT_TRUE(machine.StaysOnMachine(0x0A4D0003, &why)) << why;  // 10.77.0.3
  EXPECT_FALSE(machine.StaysOnMachine(0xC0A80105, &why));        // 192.168.1.5 on eth0
  EXPECT_NE(why.find("eth0"), std::string::npos);
  EXPECT_FALSE(machine.StaysOnMachine(0x0A580102, &why));  // br-lan holds eth1
  EXPECT_FALSE(machine.StaysOnMachine(0x08080808, &why));  // default route via a gateway
  EXPECT_NE(why.find("gateway"), std::string::npos);
  fs::remove_all(root);
}

TEST(IsLoopbackLiteralTest, Cases) {
  EXPECT_TRUE(IsLoopbackLiteral("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackLiteral("127.255.255.254"));
  EXPECT_TRUE(IsLoopbackLiteral("::1"));
  EXPECT_TRUE(IsLoopbackLiteral("::ffff:127.0.0.1"));
  EXPECT_FALSE(IsLoopbackLiteral("localhost"));  // names are not literals
  EXPECT_FALSE(IsLoopbackLiteral("::"));
  EXPECT_FALSE(IsLoopbackLiteral("172.16.0.1"));
}

}  // namespace
}  // namespace meridian::load
