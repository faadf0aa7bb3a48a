#include "common/yaml_reader.h"

#include <gtest/gtest.h>

#include <string>

namespace meridian {
namespace {

std::string Message(const YamlReader& r) { return std::string(r.status().message()); }

TEST(YamlReader, ASectionGivenAsAValueIsRefusedAndReadsAsDefaults) {
  for (const char* text : {"listen: 0.0.0.0:8080", "listen: 5", "listen: [a, b]"}) {
    const YAML::Node root = YAML::Load(text);
    YamlReader r{"t.yaml"};
    YAML::Node listen;
    ASSERT_NO_THROW(listen = r.Map(root, "listen", "listen", true)) << text;
    EXPECT_FALSE(listen) << text;
    EXPECT_FALSE(r.ok());
    EXPECT_NE(Message(r).find("listen: must be a mapping"), std::string::npos) << Message(r);
    // What a parser does next with the section must not throw either.
    EXPECT_NO_THROW(r.OnlyKeys(listen, "listen", {"http"}));
    EXPECT_EQ(r.String(listen, "http", "listen.http", true, "d"), "d");
    EXPECT_EQ(r.Integer<int>(listen, "port", "listen.port", 7, 0, 10), 7);
    EXPECT_EQ(r.Number(listen, "rate", "listen.rate", 1.5, 0, 10), 1.5);
    EXPECT_EQ(r.HostPort(listen, "http", "listen.http", true).port, 0);
    EXPECT_FALSE(r.Map(listen, "tls", "listen.tls", true));
  }
}

TEST(YamlReader, ReadersGiveTheDefaultForAParentThatIsNotAMapping) {
  for (const char* text : {"5", "[1, 2]", "text"}) {
    const YAML::Node scalar = YAML::Load(text);
    YamlReader r{"t.yaml"};
    EXPECT_NO_THROW({
      EXPECT_EQ(r.String(scalar, "k", "k", false, "d"), "d");
      EXPECT_EQ(r.Integer<int>(scalar, "k", "k", 3, 0, 10), 3);
      EXPECT_EQ(r.Number(scalar, "k", "k", 2.5, 0, 10), 2.5);
      EXPECT_FALSE(r.Map(scalar, "k", "k", false));
    }) << text;
  }
}

TEST(YamlReader, AMissingOrNullSectionIsUndefined) {
  const YAML::Node root = YAML::Load("a: 1\nempty:\n");
  YamlReader r{"t.yaml"};
  EXPECT_FALSE(r.Map(root, "missing", "missing", false));
  EXPECT_FALSE(r.Map(root, "empty", "empty", false));
  EXPECT_TRUE(r.ok());
  EXPECT_FALSE(r.Map(root, "missing", "missing", true));
  EXPECT_NE(Message(r).find("missing: missing"), std::string::npos) << Message(r);
}

// yaml-cpp reads 06000 as octal (3072) and 0x0A as hex: a lease TTL written 06000 would run at
// half of what its writer meant. Integers are decimal, with a leading zero just a zero.
TEST(YamlReader, IntegersAreDecimal) {
  const YAML::Node root = YAML::Load(
      "oct: 06000\nquoted: '010'\nsigned: -07\nplus: +5\nhex: 0x0A\nunder: 1_000\n"
      "frac: 1.5\nhuge: 99999999999999999999\nlist: [1]\n");
  auto read = [&](const char* key, std::string* message) {
    YamlReader r{"t.yaml"};
    const int64_t v = r.Integer<int64_t>(root, key, key, -1, -100, 100000);
    *message = r.ok() ? "" : Message(r);
    return v;
  };
  std::string m;
  EXPECT_EQ(read("oct", &m), 6000);
  EXPECT_EQ(m, "");
  EXPECT_EQ(read("quoted", &m), 10);
  EXPECT_EQ(read("signed", &m), -7);
  EXPECT_EQ(read("plus", &m), 5);
  EXPECT_EQ(m, "");
  for (const char* key : {"hex", "under", "frac"}) {
    EXPECT_EQ(read(key, &m), -1) << key;
    EXPECT_NE(m.find(absl::StrCat(key, ": must be an integer (decimal digits), got '")),
              std::string::npos)
        << m;
  }
  EXPECT_EQ(read("huge", &m), -1);
  EXPECT_NE(m.find("huge: must be between -100 and 100000, got 99999999999999999999"),
            std::string::npos)
      << m;
  EXPECT_EQ(read("list", &m), -1);
  EXPECT_NE(m.find("list: must be an integer, got a list"), std::string::npos) << m;
}

TEST(YamlReader, ASwitchSectionLeftEmptyIsRefusedNotOff) {
  const YAML::Node root = YAML::Load("set: {}\nbare:\nnull_: ~\nscalar: 1\n");
  YamlReader r{"t.yaml"};
  EXPECT_FALSE(r.SwitchMap(root, "missing", "missing"));
  EXPECT_TRUE(r.SwitchMap(root, "set", "set"));
  EXPECT_TRUE(r.ok());
  EXPECT_FALSE(r.SwitchMap(root, "bare", "sec.bare"));
  EXPECT_NE(Message(r).find("sec.bare: is empty: write 'bare: {}'"), std::string::npos)
      << Message(r);
  YamlReader r2{"t.yaml"};
  EXPECT_FALSE(r2.SwitchMap(root, "null_", "null_"));
  EXPECT_FALSE(r2.ok());
  YamlReader r3{"t.yaml"};
  EXPECT_FALSE(r3.SwitchMap(root, "scalar", "scalar"));
  EXPECT_NE(Message(r3).find("scalar: must be a mapping"), std::string::npos) << Message(r3);
}

TEST(YamlReader, ARequiredNumberThatIsAbsentOrNullIsMissingNotZero) {
  for (const char* text : {"{}", "lat:", "lat: ~", "lat: null"}) {
    YamlReader r{"t.yaml"};
    EXPECT_EQ(r.RequiredNumber(YAML::Load(text), "lat", "regions[0].lat", -90, 90), 0) << text;
    EXPECT_NE(Message(r).find("regions[0].lat: missing"), std::string::npos) << text;
  }
  YamlReader r{"t.yaml"};
  EXPECT_EQ(r.RequiredNumber(YAML::Load("lat: 0"), "lat", "lat", -90, 90), 0);
  EXPECT_EQ(r.RequiredNumber(YAML::Load("lat: -33.9"), "lat", "lat", -90, 90), -33.9);
  EXPECT_TRUE(r.ok()) << Message(r);
  EXPECT_EQ(r.RequiredNumber(YAML::Load("lat: 91"), "lat", "lat", -90, 90), 0);
  EXPECT_NE(Message(r).find("lat: must be between -90 and 90"), std::string::npos) << Message(r);
  // Bounds and values as written, not in StrCat's six-digit exponent form (3.6e+06).
  YamlReader big{"t.yaml"};
  big.Number(YAML::Load("ms: -1"), "ms", "ms", 1000, 1, 3600000);
  EXPECT_NE(Message(big).find("ms: must be between 1 and 3600000, got -1"), std::string::npos)
      << Message(big);
}

TEST(YamlReader, ANonStringKeyIsAnErrorNotAnException) {
  for (const char* text : {"sec: {[a, b]: 1}", "sec: {{x: 1}: 2}", "sec:\n  ? [a]\n  : 1\n"}) {
    const YAML::Node root = YAML::Load(text);
    YamlReader r{"t.yaml"};
    const YAML::Node sec = r.Map(root, "sec", "sec", true);
    ASSERT_TRUE(sec) << text;
    ASSERT_NO_THROW(r.OnlyKeys(sec, "sec", {"a"})) << text;
    EXPECT_NE(Message(r).find("sec: field names must be strings"), std::string::npos) << Message(r);
  }
  YamlReader top{"t.yaml"};
  ASSERT_NO_THROW(top.OnlyKeys(YAML::Load("? [a]\n: 1\n"), "", {"a"}));
  EXPECT_NE(Message(top).find("(top level): field names must be strings"), std::string::npos)
      << Message(top);
}

TEST(YamlReader, AKeyGivenTwiceIsRefused) {
  const YAML::Node root = YAML::Load("a: 1\nb: 2\na: 3\n");
  YamlReader r{"t.yaml"};
  r.OnlyKeys(root, "", {"a", "b"});
  EXPECT_NE(Message(r).find("a: given twice"), std::string::npos) << Message(r);
  const YAML::Node nested = YAML::Load("limits: {x: 1, x: -5}\n");
  YamlReader n{"t.yaml"};
  n.OnlyKeys(nested["limits"], "limits", {"x"});
  EXPECT_NE(Message(n).find("limits.x: given twice"), std::string::npos) << Message(n);
}

TEST(YamlReader, ARequiredStringGivenEmptyIsMissing) {
  const YAML::Node root = YAML::Load("name: \"\"\naddress: \"\"\nnote: \"\"\n");
  YamlReader r{"t.yaml"};
  EXPECT_EQ(r.String(root, "note", "note", false, "d"), "");  // optional: empty is a value
  EXPECT_TRUE(r.ok());
  r.String(root, "name", "name", true);
  EXPECT_NE(Message(r).find("name: must not be empty"), std::string::npos) << Message(r);
  YamlReader h{"t.yaml"};
  h.HostPort(root, "address", "address", true);
  EXPECT_NE(Message(h).find("address: must not be empty"), std::string::npos) << Message(h);
}

TEST(YamlReader, HostPortTakesDigitsOnlyAndADialedAddressARealPort) {
  const YAML::Node root = YAML::Load(
      "any: \"127.0.0.1:0\"\nv6: \"[::1]:5432\"\nspaced: \"127.0.0.1: 6379\"\n"
      "signed: \"127.0.0.1:+80\"\nblank: \" :6379\"\nbig: \"h:65536\"\n");
  {
    YamlReader r{"t.yaml"};
    EXPECT_EQ(r.HostPort(root, "any", "any", true).port, 0);  // listen: any free port
    Endpoint v6 = r.DialHostPort(root, "v6", "v6", true);
    EXPECT_EQ(v6.host, "[::1]");
    EXPECT_EQ(v6.port, 5432);
    EXPECT_TRUE(r.ok()) << Message(r);
  }
  const std::pair<const char*, const char*> bad[] = {
      {"spaced", "port must be 0..65535, got ' 6379'"},
      {"signed", "port must be 0..65535, got '+80'"},
      {"blank", "host must not hold spaces"},
      {"big", "port must be 0..65535, got '65536'"},
  };
  for (const auto& [key, says] : bad) {
    YamlReader r{"t.yaml"};
    Endpoint e = r.HostPort(root, key, key, true);
    EXPECT_NE(Message(r).find(says), std::string::npos) << key << ": " << Message(r);
    EXPECT_EQ(e.port, 0) << key;
    EXPECT_EQ(e.host, "") << key;
  }
  YamlReader d{"t.yaml"};
  d.DialHostPort(root, "any", "any", true);
  EXPECT_NE(Message(d).find("any: port must be 1..65535, got '0'"), std::string::npos)
      << Message(d);
}

// The HTTP server binds addresses, not names: a name would pass HostPort and fail only at the
// start. IPv6 in brackets loses them (they only delimit the address).
TEST(YamlReader, AnHttpListenAddressIsAnIpAddress) {
  const YAML::Node root = YAML::Load(
      "v4: \"127.0.0.1:0\"\nv6: \"[::1]:8080\"\nbare6: \"::1:8080\"\nname: \"localhost:8080\"\n");
  YamlReader r{"t.yaml"};
  EXPECT_EQ(r.HttpListenHostPort(root, "v4", "v4", true).host, "127.0.0.1");
  Endpoint v6 = r.HttpListenHostPort(root, "v6", "v6", true);
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 8080);
  EXPECT_EQ(r.HttpListenHostPort(root, "bare6", "bare6", true).host, "::1");
  EXPECT_TRUE(r.ok()) << Message(r);
  YamlReader n{"t.yaml"};
  Endpoint e = n.HttpListenHostPort(root, "name", "name", true);
  EXPECT_NE(Message(n).find("name: the host must be an IP address, got 'localhost'"),
            std::string::npos)
      << Message(n);
  EXPECT_EQ(e.host, "");
}

TEST(LoadConfigYaml, OneDocumentWithAMappingAtTheTop) {
  auto ok = LoadConfigYaml("---\na: 1\n", "t.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)["a"].as<int>(), 1);
  auto two = LoadConfigYaml("a: 1\n---\na: 2\n", "t.yaml");
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.status().message().find("t.yaml: holds 2 YAML documents"), std::string::npos)
      << two.status();
  for (const char* text : {"", "5", "[1, 2]"}) {
    auto top = LoadConfigYaml(text, "t.yaml");
    ASSERT_FALSE(top.ok()) << text;
    EXPECT_NE(top.status().message().find("t.yaml: (top level): must be a mapping"),
              std::string::npos)
        << top.status();
  }
  auto bad = LoadConfigYaml("a: [\n", "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("not valid YAML (line"), std::string::npos) << bad.status();
  // Past yaml-cpp's depth guard: said as such (yaml-cpp's own message is "bad file").
  auto deep = LoadConfigYaml("a: " + std::string(5000, '['), "t.yaml");
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("levels deep"), std::string::npos) << deep.status();
}

}  // namespace
}  // namespace meridian
