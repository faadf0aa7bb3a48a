#pragma once

// Typed YAML field access for config files, with errors that name the field
// ("postgres.shards[1]: must not be empty"). Shared by every process's config parser.

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace meridian {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

// Reads typed fields and records the first error with the field's path; every accessor returns a
// usable default after an error so parsing can go on to the end without branching everywhere.
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

  YAML::Node Map(const YAML::Node& parent, const std::string& key, const std::string& path,
                 bool required) {
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) {
      if (required) Fail(path, "missing (a mapping is required)");
      // Undefined, so `if (node)` is false for a missing section (a default YAML::Node is a
      // defined null, which is true).
      return YAML::Node(YAML::NodeType::Undefined);
    }
    if (!n.IsMap()) Fail(path, "must be a mapping");
    return n;
  }

  std::string String(const YAML::Node& parent, const std::string& key, const std::string& path,
                     bool required, std::string def = "") {
    if (!parent) return def;
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) {
      if (required) Fail(path, "missing");
      return def;
    }
    if (!n.IsScalar()) {
      Fail(path, "must be a string");
      return def;
    }
    return n.Scalar();
  }

  template <class Int>
  Int Integer(const YAML::Node& parent, const std::string& key, const std::string& path, Int def,
              Int min, Int max) {
    if (!parent) return def;
    YAML::Node n = parent[key];
    if (!n || n.IsNull()) return def;
    long long v = 0;
    try {
      v = n.as<long long>();
    } catch (const YAML::Exception&) {
      Fail(path, absl::StrCat("must be an integer, got '", n.IsScalar() ? n.Scalar() : "?", "'"));
      return def;
    }
    if (v < static_cast<long long>(min) || v > static_cast<long long>(max)) {
      Fail(path, absl::StrCat("must be between ", min, " and ", max, ", got ", v));
      return def;
    }
    return static_cast<Int>(v);
  }

  double Number(const YAML::Node& parent, const std::string& key, const std::string& path,
                double def, double min, double max) {
    if (!parent) return def;
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
      Fail(path, absl::StrCat("must be between ", min, " and ", max, ", got ", v));
      return def;
    }
    return v;
  }

  Endpoint HostPort(const YAML::Node& parent, const std::string& key, const std::string& path,
                    bool required) {
    std::string s = String(parent, key, path, required);
    Endpoint e;
    if (s.empty()) return e;
    auto colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      Fail(path, absl::StrCat("must be host:port, got '", s, "'"));
      return e;
    }
    e.host = s.substr(0, colon);
    std::string port = s.substr(colon + 1);
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
      Fail(path, absl::StrCat("port must be 0..65535, got '", port, "'"));
      return e;
    }
    e.port = static_cast<uint16_t>(p);
    return e;
  }

  // Keys not in `known` are errors: a typo must not silently fall back to a default.
  void OnlyKeys(const YAML::Node& n, const std::string& path, std::set<std::string> known) {
    if (!n || !n.IsMap()) return;
    for (const auto& kv : n) {
      std::string k = kv.first.as<std::string>();
      if (!known.count(k)) Fail(path.empty() ? k : absl::StrCat(path, ".", k), "unknown field");
    }
  }

 private:
  std::string source_;
  std::string error_;
};

}  // namespace meridian
