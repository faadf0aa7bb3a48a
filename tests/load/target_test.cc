#include "tests/load/target.h"

#include <gtest/gtest.h>

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
