#include "region/http/router.h"

#include <cstdio>
#include <cstdlib>
#include <set>
#include <string_view>

#include <spdlog/spdlog.h>

namespace meridian::region::http {
namespace {

// "/a/b" -> {"a", "b"}; "/" -> {""}. REQUIRES: path starts with '/'.
std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  std::string_view rest = path.substr(1);
  for (;;) {
    const size_t slash = rest.find('/');
    out.push_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) break;
    rest = rest.substr(slash + 1);
  }
  return out;
}

[[noreturn]] void BadRoute(std::string_view method, std::string_view pattern,
                           std::string_view why) {
  spdlog::critical("event=http_router_bad_route method={} pattern=\"{}\" reason=\"{}\"", method,
                   pattern, why);
  spdlog::default_logger()->flush();
  // Also straight to stderr: the logger may write elsewhere, and this is the process's last word.
  std::fprintf(stderr, "http router: bad route %.*s %.*s: %.*s\n", static_cast<int>(method.size()),
               method.data(), static_cast<int>(pattern.size()), pattern.data(),
               static_cast<int>(why.size()), why.data());
  std::abort();
}

}  // namespace

void Router::Add(std::string method, std::string pattern, Handler handler) {
  if (pattern.empty() || pattern.front() != '/') BadRoute(method, pattern, "must start with '/'");
  if (method.empty()) BadRoute(method, pattern, "empty method");
  if (!handler) BadRoute(method, pattern, "empty handler");

  std::vector<Segment> segments;
  std::set<std::string_view> names;
  for (std::string_view part : SplitPath(pattern)) {
    Segment segment;
    if (part.size() >= 2 && part.front() == '{' && part.back() == '}') {
      segment.is_param = true;
      segment.text = part.substr(1, part.size() - 2);
      if (segment.text.empty()) BadRoute(method, pattern, "empty parameter name");
      if (!names.insert(part).second) BadRoute(method, pattern, "repeated parameter name");
    } else {
      segment.text = part;
    }
    if (segment.text.find_first_of("{}") != std::string::npos) {
      BadRoute(method, pattern, "'{' or '}' outside a whole-segment parameter");
    }
    segments.push_back(std::move(segment));
  }

  for (Route& route : routes_) {
    if (route.pattern != pattern) continue;
    for (const auto& entry : route.methods) {
      if (entry.first == method) BadRoute(method, pattern, "added twice");
    }
    route.methods.emplace_back(std::move(method), std::move(handler));
    return;
  }
  Route route;
  route.pattern = std::move(pattern);
  route.segments = std::move(segments);
  route.methods.emplace_back(std::move(method), std::move(handler));
  routes_.push_back(std::move(route));
}

bool Router::Matches(const Route& route, const std::vector<std::string>& segments) {
  if (route.segments.size() != segments.size()) return false;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (!route.segments[i].is_param && route.segments[i].text != segments[i]) return false;
  }
  return true;
}

bool Router::MoreSpecific(const Route& a, const Route& b) {
  for (size_t i = 0; i < a.segments.size() && i < b.segments.size(); ++i) {
    if (a.segments[i].is_param != b.segments[i].is_param) return !a.segments[i].is_param;
  }
  return false;
}

bool Router::Segments(const std::string& path, std::vector<std::string>* out) {
  // Origin-form targets always start with '/'; anything else ("*", a bare authority) has no
  // route.
  if (path.empty() || path.front() != '/') return false;
  out->clear();
  for (std::string_view raw : SplitPath(path)) {
    out->push_back(PercentDecode(raw, /*plus_as_space=*/false));
  }
  return true;
}

Router::Match Router::Find(const std::vector<std::string>& segments,
                           const std::string& method) const {
  Match m;
  for (const Route& route : routes_) {
    if (!Matches(route, segments)) continue;
    if (m.path_match == nullptr || MoreSpecific(route, *m.path_match)) m.path_match = &route;
    for (const auto& [route_method, route_handler] : route.methods) {
      m.allowed.insert(route_method);
      if (route_method != method) continue;
      if (m.method_match == nullptr || MoreSpecific(route, *m.method_match)) {
        m.method_match = &route;
        m.handler = &route_handler;
      }
    }
  }
  return m;
}

std::string Router::PatternFor(const HttpRequest& request) const {
  std::vector<std::string> segments;
  if (!Segments(request.path, &segments)) return "";
  const Match m = Find(segments, request.method);
  if (m.method_match != nullptr) return m.method_match->pattern;
  return m.path_match != nullptr ? m.path_match->pattern : "";
}

HttpResponse Router::Handle(HttpRequest& request, std::string* matched_pattern) const {
  if (matched_pattern != nullptr) matched_pattern->clear();
  request.params.clear();
  std::vector<std::string> segments;
  if (!Segments(request.path, &segments)) {
    return HttpResponse::Problem(404, "Not Found", "no route for this request target");
  }
  Match m = Find(segments, request.method);
  if (m.method_match != nullptr) {
    for (size_t i = 0; i < segments.size(); ++i) {
      if (m.method_match->segments[i].is_param) {
        request.params[m.method_match->segments[i].text] = std::move(segments[i]);
      }
    }
    if (matched_pattern != nullptr) *matched_pattern = m.method_match->pattern;
    return (*m.handler)(request);
  }
  if (m.path_match != nullptr) {
    if (matched_pattern != nullptr) *matched_pattern = m.path_match->pattern;
    std::string allow;
    for (const std::string& method : m.allowed) {
      if (!allow.empty()) allow += ", ";
      allow += method;
    }
    HttpResponse response = HttpResponse::Problem(
        405, "Method Not Allowed", request.method + " is not allowed here; allowed: " + allow);
    response.headers.emplace_back("Allow", std::move(allow));
    return response;
  }
  return HttpResponse::Problem(404, "Not Found", "no route for " + request.path);
}

}  // namespace meridian::region::http
