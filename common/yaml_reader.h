#pragma once

// Typed YAML field access for config files, with errors that name the field
// ("postgres.shards[1]: must not be empty"). Shared by every process's config parser.

#include <arpa/inet.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"

namespace meridian {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

// Reads typed fields and records the first error with the field's path; every accessor returns a
// usable default after an error so parsing can go on to the end without branching everywhere.
// No accessor throws: a parent that is not a mapping (a section given as a value or a list, already
// refused by Map) yields the default, so a config parser never subscripts a scalar node.
// Runs `parse` (a config parser: returns absl::StatusOr<Config>) and turns a YAML::Exception that
// escapes it into InvalidArgument naming `source`, so that no config file, however malformed,
// ends a process with an uncaught exception. YamlReader's accessors do not throw; this is for the
// parser's own node accesses.
template <class Parse>
auto CatchYamlErrors(std::string_view source, Parse&& parse) -> decltype(parse()) {
  try {
    return parse();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(absl::string_view(source.data(), source.size()),
                                                   ": cannot be read as a config: ", e.what()));
  }
}

class YamlReader {
 public:
  explicit YamlReader(std::string source) : source_(std::move(source)) {}

  bool ok() const { return error_.empty(); }
  absl::Status status() const {
    return ok() ? absl::OkStatus()
                : absl::InvalidArgumentError(absl::StrCat(source_, ": ", error_));
  }
  void Fail(const std::string& path, const std::string& what) {
    if (error_.empty()) error_ = absl::StrCat(path, ": ", what);
  }

  // The mapping at parent[key], or an undefined node (`if (node)` is false) when it is missing or
  // is not a mapping (then the error is recorded): a section given as a scalar or a list
  // (`listen: 0.0.0.0:8080` where a mapping belongs) must not reach `node[key]`, which throws for
  // a scalar. A parent that is not a mapping (a section already refused) yields undefined too.
  YAML::Node Map(const YAML::Node& parent, const std::string& key, const std::string& path,
                 bool required) {
    // Undefined, not a default YAML::Node: that one is a defined null, which is true.
    const YAML::Node undefined(YAML::NodeType::Undefined);
    if (!parent || !parent.IsMap()) return undefined;
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) {
      if (required) Fail(path, "missing (a mapping is required)");
      return undefined;
    }
    if (!n.IsMap()) {
      Fail(path, absl::StrCat("must be a mapping of fields, got ", Kind(n)));
      return undefined;
    }
    return n;
  }

  // Map() for an optional section whose presence turns a feature on (region.yaml's
  // `replication`, replicator.yaml's `coordination`): `key:` with nothing after it is refused,
  // not read as absent. YAML makes `key:` a null and `key: {}` an empty mapping, and a reader
  // who wrote the first to turn the feature on with its defaults would otherwise get it off.
  YAML::Node SwitchMap(const YAML::Node& parent, const std::string& key, const std::string& path) {
    if (parent && parent.IsMap() && parent[key] && parent[key].IsNull()) {
      Fail(path, absl::StrCat("is empty: write '", key,
                              ": {}' to turn it on with its defaults, or leave the key out"));
      return YAML::Node(YAML::NodeType::Undefined);
    }
    return Map(parent, key, path, false);
  }

  std::string String(const YAML::Node& parent, const std::string& key, const std::string& path,
                     bool required, std::string def = "") {
    if (!parent || !parent.IsMap()) return def;
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) {
      if (required) Fail(path, "missing");
      return def;
    }
    if (!n.IsScalar()) {
      Fail(path, "must be a string");
      return def;
    }
    // A required field given as "" is as missing as an absent one (an empty address would
    // otherwise reach a connect, an empty name a message).
    if (required && n.Scalar().empty()) {
      Fail(path, "must not be empty");
      return def;
    }
    return n.Scalar();
  }

  template <class Int>
  Int Integer(const YAML::Node& parent, const std::string& key, const std::string& path, Int def,
              Int min, Int max) {
    if (!parent || !parent.IsMap()) return def;
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) return def;
    if (!n.IsScalar()) {
      Fail(path, absl::StrCat("must be an integer, got ", Kind(n)));
      return def;
    }
    // Decimal only: yaml-cpp's as<long long>() reads 010 as octal 8 and 0x0A as hex 10, where
    // nobody writing a TTL of 06000 means 3072 (a number with a fraction reads 010 as 10).
    const std::string& text = n.Scalar();
    int64_t v = 0;
    if (!absl::SimpleAtoi(text, &v)) {
      const size_t digits_from = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
      const bool digits = text.size() > digits_from &&
                          text.find_first_not_of("0123456789", digits_from) == std::string::npos;
      Fail(path, digits ? absl::StrCat("must be between ", min, " and ", max, ", got ", text)
                        : absl::StrCat("must be an integer (decimal digits), got '", text, "'"));
      return def;
    }
    if (v < static_cast<int64_t>(min) || v > static_cast<int64_t>(max)) {
      Fail(path, absl::StrCat("must be between ", min, " and ", max, ", got ", v));
      return def;
    }
    return static_cast<Int>(v);
  }

  // A number that has no default: absent or null (`lat:` with no value) fails as "missing"
  // rather than reading as 0.
  double RequiredNumber(const YAML::Node& parent, const std::string& key, const std::string& path,
                        double min, double max) {
    if (!parent || !parent.IsMap() || !parent[key] || parent[key].IsNull()) {
      Fail(path, "missing (a number is required)");
      return 0;
    }
    return Number(parent, key, path, 0, min, max);
  }

  double Number(const YAML::Node& parent, const std::string& key, const std::string& path,
                double def, double min, double max) {
    if (!parent || !parent.IsMap()) return def;
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) return def;
    double v = 0;
    try {
      v = n.as<double>();
    } catch (const YAML::Exception&) {
      Fail(path, "must be a number");
      return def;
    }
    if (!(v >= min && v <= max)) {
      // %.15g: a bound of 3600000 reads as that, not as StrCat's 3.6e+06.
      Fail(path, absl::StrFormat("must be between %.15g and %.15g, got %.15g", min, max, v));
      return def;
    }
    return v;
  }

  // host:port for an address to listen on: port 0 takes any free port. The host must not be
  // empty or hold spaces; the port is decimal digits only.
  Endpoint HostPort(const YAML::Node& parent, const std::string& key, const std::string& path,
                    bool required) {
    return ParseHostPort(parent, key, path, required, 0);
  }
  // host:port for the HTTP server (region/http/http_server.h) to listen on: as HostPort, and the
  // host is an IPv4 or IPv6 address ("[::1]:8080": the brackets only delimit it, and are
  // dropped), since the server binds no names: `localhost:8080` would pass HostPort and fail only
  // at the start.
  Endpoint HttpListenHostPort(const YAML::Node& parent, const std::string& key,
                              const std::string& path, bool required) {
    Endpoint e = ParseHostPort(parent, key, path, required, 0);
    if (e.host.size() > 2 && e.host.front() == '[' && e.host.back() == ']') {
      e.host = e.host.substr(1, e.host.size() - 2);
    }
    in_addr a4{};
    in6_addr a6{};
    if (!e.host.empty() && inet_pton(AF_INET, e.host.c_str(), &a4) != 1 &&
        inet_pton(AF_INET6, e.host.c_str(), &a6) != 1) {
      Fail(path, absl::StrCat("the host must be an IP address, got '", e.host, "'"));
      return {};
    }
    return e;
  }
  // host:port for an address this process connects to: the port is 1..65535 (port 0 could
  // never be reached, and would fail only at the first connect, far from the config).
  Endpoint DialHostPort(const YAML::Node& parent, const std::string& key, const std::string& path,
                        bool required) {
    return ParseHostPort(parent, key, path, required, 1);
  }

  // Keys not in `known` are errors: a typo must not silently fall back to a default. So is a key
  // given twice, of which every accessor would read the first and ignore the other.
  void OnlyKeys(const YAML::Node& n, const std::string& path, std::set<std::string> known) {
    if (!n || !n.IsMap()) return;
    std::set<std::string> seen;
    for (const auto& kv : n) {
      // `? [a, b]: 1` or `{x: 1}: 2` has a key that is not a string: as<std::string>() would throw.
      if (!kv.first.IsScalar()) {
        Fail(path.empty() ? "(top level)" : path,
             absl::StrCat("field names must be strings, got ", Kind(kv.first)));
        continue;
      }
      const std::string& k = kv.first.Scalar();
      const std::string field = path.empty() ? k : absl::StrCat(path, ".", k);
      if (!known.count(k)) Fail(field, "unknown field");
      if (!seen.insert(k).second) Fail(field, "given twice");
    }
  }

  // "a mapping", "a list", "a value", "nothing": what a node is, for errors.
  static const char* Kind(const YAML::Node& n) {
    if (!n || n.IsNull()) return "nothing";
    if (n.IsMap()) return "a mapping";
    if (n.IsSequence()) return "a list";
    return "a value";
  }

 private:
  Endpoint ParseHostPort(const YAML::Node& parent, const std::string& key, const std::string& path,
                         bool required, uint16_t min_port) {
    std::string s = String(parent, key, path, required);
    Endpoint e;
    if (s.empty()) return e;
    auto colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      Fail(path, absl::StrCat("must be host:port, got '", s, "'"));
      return e;
    }
    std::string host = s.substr(0, colon);
    if (host.find_first_of(" \t\r\n") != std::string::npos) {
      Fail(path, absl::StrCat("host must not hold spaces, got '", host, "'"));
      return e;
    }
    std::string port = s.substr(colon + 1);
    uint16_t p = 0;
    if (!ParseInt(port, &p) || p < min_port) {
      Fail(path, absl::StrCat("port must be ", min_port, "..65535, got '", port, "'"));
      return e;
    }
    e.host = std::move(host);
    e.port = p;
    return e;
  }

  std::string source_;
  std::string error_;
};

// Parses a config file's text: exactly one YAML document (a second one after "---" is refused,
// not ignored) with a mapping at the top. Errors name `source` and, for bad YAML, the line.
[[nodiscard]] inline absl::StatusOr<YAML::Node> LoadConfigYaml(std::string_view yaml,
                                                               std::string_view source) {
  const absl::string_view src(source.data(), source.size());
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(std::string(yaml));
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp's own message for this is "bad file".
    return absl::InvalidArgumentError(absl::StrCat(src, ": not valid YAML (line ", e.mark.line + 1,
                                                   "): nested more than ", e.depth() - 1,
                                                   " levels deep"));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": not valid YAML (line ", e.mark.line + 1, "): ", e.msg));
  }
  if (docs.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        src, ": holds ", docs.size(), " YAML documents (separated by '---'); a config is one"));
  }
  if (docs.empty() || !docs.front().IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": (top level): must be a mapping of fields, got ",
                     YamlReader::Kind(docs.empty() ? YAML::Node() : docs.front())));
  }
  return docs.front();
}

}  // namespace meridian
