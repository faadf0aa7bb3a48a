#pragma once

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "region/http/http_types.h"

namespace meridian::region::http {

// Maps (method, path pattern) to a Handler. A pattern is '/'-separated segments, each either a
// literal or a whole-segment parameter "{name}": "/v1/carts/{user_id}/items/{sku}".
//
// Matching is on the percent-encoded path split at '/' (so "%2F" stays inside a segment); each
// segment is then percent-decoded and compared with literals or captured into
// HttpRequest::params. Segment counts must be equal (no wildcards; "/a/" and "/a" differ). When
// several patterns match, the most specific wins: at the first segment where they differ, a
// literal beats a parameter.
//
// Thread-safety: Add only during setup; after that Handle is const and may run concurrently
// (HttpServer calls it from all its threads).
class Router {
 public:
  // REQUIRES: `pattern` starts with '/'; every "{...}" segment has a non-empty name unique within
  // the pattern and no other '{' or '}'; (method, pattern) was not added before. A violation is a
  // programming error in the route table: it is logged and the process aborts.
  void Add(std::string method, std::string pattern, Handler handler);

  // Fills `request.params` and calls the matching handler (exceptions from it propagate: the
  // server turns them into 500s). Without a match: 404 problem when no pattern matches the path;
  // 405 problem with an `Allow` header listing the path's methods when some do, but not for
  // this method.
  // `matched_pattern` (optional) receives the pattern that matched the path, for metrics labels
  // (bounded cardinality, unlike the path); it is set to "" on a 404.
  HttpResponse Handle(HttpRequest& request, std::string* matched_pattern = nullptr) const;

  // The pattern Handle would report for this request, without calling anything: for the metrics
  // of a request answered before routing (a 429). "" when no pattern matches the path.
  std::string PatternFor(const HttpRequest& request) const;

 private:
  struct Segment {
    std::string text;  // the literal, or the parameter's name
    bool is_param = false;
  };
  struct Route {
    std::string pattern;
    std::vector<Segment> segments;
    std::vector<std::pair<std::string, Handler>> methods;  // a few per pattern: a vector is enough
  };

  // What matches a request: the most specific route for its path (any method) and for its path
  // and method, with that method's handler, and every method the path allows.
  struct Match {
    const Route* path_match = nullptr;
    const Route* method_match = nullptr;
    const Handler* handler = nullptr;
    std::set<std::string> allowed;
  };
  // Match for the decoded `segments` of a path and `method`.
  Match Find(const std::vector<std::string>& segments, const std::string& method) const;
  // The percent-decoded segments of an origin-form path; false for any other request target.
  static bool Segments(const std::string& path, std::vector<std::string>* out);

  static bool Matches(const Route& route, const std::vector<std::string>& segments);
  // True when `a` should win over `b`; both must match the same path.
  static bool MoreSpecific(const Route& a, const Route& b);

  std::vector<Route> routes_;
};

}  // namespace meridian::region::http
