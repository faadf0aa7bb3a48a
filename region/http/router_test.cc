#include "region/http/router.h"

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "region/http/http_types.h"

namespace meridian::region::http {
namespace {

HttpRequest Request(std::string method, std::string path, std::string query = "") {
  HttpRequest request;
  request.method = std::move(method);
  request.path = std::move(path);
  request.query = std::move(query);
  request.target = request.path + (request.query.empty() ? "" : "?" + request.query);
  return request;
}

Handler Named(std::string name) {
  return [name](HttpRequest&) { return HttpResponse::Json(200, name); };
}

std::optional<std::string> HeaderOf(const HttpResponse& response, std::string_view name) {
  for (const auto& [n, v] : response.headers) {
    if (n == name) return v;
  }
  return std::nullopt;
}

TEST(RouterTest, ExtractsPercentDecodedPathParams) {
  Router router;
  router.Add("PUT", "/v1/carts/{user_id}/items/{sku}", [](HttpRequest& request) {
    return HttpResponse::Json(200, request.params.at("user_id") + "|" + request.params.at("sku"));
  });
  HttpRequest request = Request("PUT", "/v1/carts/u%401/items/a%2Fb+c");
  std::string pattern;
  const HttpResponse response = router.Handle(request, &pattern);
  EXPECT_EQ(response.status, 200);
  // %2F stays inside its segment; '+' is literal in a path.
  EXPECT_EQ(response.body, "u@1|a/b+c");
  EXPECT_EQ(pattern, "/v1/carts/{user_id}/items/{sku}");
}

// PatternFor labels a request without serving it (a 429 answered before routing): the pattern
// Handle would report, "" for a path no pattern matches.
TEST(RouterTest, PatternForNamesWhatHandleWouldMatchWithoutCallingIt) {
  Router router;
  int calls = 0;
  router.Add("GET", "/v1/carts/{user_id}", [&calls](HttpRequest&) {
    ++calls;
    return HttpResponse::Json(200, "param");
  });
  router.Add("GET", "/v1/carts/summary", Named("literal"));
  EXPECT_EQ(router.PatternFor(Request("GET", "/v1/carts/u1")), "/v1/carts/{user_id}");
  EXPECT_EQ(router.PatternFor(Request("GET", "/v1/carts/summary")), "/v1/carts/summary");
  EXPECT_EQ(router.PatternFor(Request("POST", "/v1/carts/u1")), "/v1/carts/{user_id}");  // a 405
  EXPECT_EQ(router.PatternFor(Request("GET", "/v1/nothing")), "");
  EXPECT_EQ(router.PatternFor(Request("GET", "*")), "");
  EXPECT_EQ(calls, 0);
  for (const char* path : {"/v1/carts/u1", "/v1/carts/summary", "/v1/nothing"}) {
    HttpRequest request = Request("GET", path);
    std::string handled;
    (void)router.Handle(request, &handled);
    EXPECT_EQ(router.PatternFor(Request("GET", path)), handled) << path;
  }
}

TEST(RouterTest, LiteralSegmentBeatsParameter) {
  Router router;
  router.Add("GET", "/v1/carts/{user_id}", Named("param"));
  router.Add("GET", "/v1/carts/summary", Named("literal"));
  HttpRequest summary = Request("GET", "/v1/carts/summary");
  EXPECT_EQ(router.Handle(summary).body, "literal");
  HttpRequest user = Request("GET", "/v1/carts/u1");
  EXPECT_EQ(router.Handle(user).body, "param");
  EXPECT_EQ(user.params.at("user_id"), "u1");
}

TEST(RouterTest, FallsBackToParameterRouteForOtherMethods) {
  Router router;
  router.Add("GET", "/v1/carts/summary", Named("literal"));
  router.Add("DELETE", "/v1/carts/{user_id}", Named("delete"));
  HttpRequest request = Request("DELETE", "/v1/carts/summary");
  std::string pattern;
  EXPECT_EQ(router.Handle(request, &pattern).body, "delete");
  EXPECT_EQ(pattern, "/v1/carts/{user_id}");
}

TEST(RouterTest, UnknownPathIs404Problem) {
  Router router;
  router.Add("GET", "/v1/carts/{user_id}", Named("cart"));
  for (const char* path : {"/v1/carts", "/v1/carts/u1/", "/v1/cart/u1", "/", "*"}) {
    HttpRequest request = Request("GET", path);
    std::string pattern = "stale";
    const HttpResponse response = router.Handle(request, &pattern);
    EXPECT_EQ(response.status, 404) << path;
    EXPECT_EQ(response.content_type, "application/problem+json");
    EXPECT_EQ(pattern, "") << path;
    EXPECT_EQ(nlohmann::json::parse(response.body)["status"], 404);
  }
}

TEST(RouterTest, WrongMethodIs405WithAllow) {
  Router router;
  router.Add("GET", "/v1/carts/{user_id}", Named("get"));
  router.Add("DELETE", "/v1/carts/{user_id}", Named("delete"));
  router.Add("POST", "/v1/carts/checkout", Named("checkout"));
  HttpRequest request = Request("PATCH", "/v1/carts/u1");
  std::string pattern;
  const HttpResponse response = router.Handle(request, &pattern);
  EXPECT_EQ(response.status, 405);
  EXPECT_EQ(HeaderOf(response, "Allow"), "DELETE, GET");
  EXPECT_EQ(pattern, "/v1/carts/{user_id}");

  // Both patterns match "/v1/carts/checkout": Allow lists the methods of both.
  HttpRequest checkout = Request("PUT", "/v1/carts/checkout");
  const HttpResponse response2 = router.Handle(checkout, &pattern);
  EXPECT_EQ(response2.status, 405);
  EXPECT_EQ(HeaderOf(response2, "Allow"), "DELETE, GET, POST");
  EXPECT_EQ(pattern, "/v1/carts/checkout");
}

TEST(RouterTest, RootPattern) {
  Router router;
  router.Add("GET", "/", Named("root"));
  HttpRequest request = Request("GET", "/");
  EXPECT_EQ(router.Handle(request).body, "root");
}

TEST(RouterTest, HandlerSeesDecodedQueryParams) {
  Router router;
  router.Add("GET", "/search", [](HttpRequest& request) {
    return HttpResponse::Json(200, request.QueryParam("q").value_or("<none>") + "|" +
                                       request.QueryParam("flag").value_or("<none>") + "|" +
                                       request.QueryParam("missing").value_or("<none>"));
  });
  HttpRequest request = Request("GET", "/search", "q=a+b%26c%3D&flag&x=%zz");
  EXPECT_EQ(router.Handle(request).body, "a b&c=||<none>");
}

TEST(RouterDeathTest, BadPatternAborts) {
  Router router;
  EXPECT_DEATH(router.Add("GET", "no-slash", Named("x")), "must start");
  EXPECT_DEATH(router.Add("GET", "/a/{}", Named("x")), "empty parameter");
  EXPECT_DEATH(router.Add("GET", "/a/{id}/{id}", Named("x")), "repeated");
  EXPECT_DEATH(router.Add("GET", "/a/x{id}", Named("x")), "outside");
  router.Add("GET", "/a", Named("x"));
  EXPECT_DEATH(router.Add("GET", "/a", Named("y")), "added twice");
}

TEST(HttpTypesTest, QueryParamAndHeader) {
  HttpRequest request;
  request.query = "a=1&b=two%20words&a=2&c%5B%5D=x&&e=";
  request.headers = {{"content-type", "text/plain"}, {"x-k", "1"}, {"x-k", "2"}};
  EXPECT_EQ(request.QueryParam("a"), "1");
  EXPECT_EQ(request.QueryParam("b"), "two words");
  EXPECT_EQ(request.QueryParam("c[]"), "x");
  EXPECT_EQ(request.QueryParam("e"), "");
  EXPECT_EQ(request.QueryParam("z"), std::nullopt);
  EXPECT_EQ(request.Header("x-k"), "1");
  EXPECT_EQ(request.Header("content-type"), "text/plain");
  EXPECT_EQ(request.Header("accept"), std::nullopt);
}

TEST(HttpTypesTest, PercentDecode) {
  EXPECT_EQ(PercentDecode("a%2fb%2F%41", false), "a/b/A");
  EXPECT_EQ(PercentDecode("100%", false), "100%");
  EXPECT_EQ(PercentDecode("%4", false), "%4");
  EXPECT_EQ(PercentDecode("%g1", false), "%g1");
  EXPECT_EQ(PercentDecode("a+b", false), "a+b");
  EXPECT_EQ(PercentDecode("a+b", true), "a b");
}

TEST(HttpTypesTest, ProblemIsEscapedJson) {
  const HttpResponse response =
      HttpResponse::Problem(422, "Bad \"input\"", "line1\nline2 \\ \xff end");
  EXPECT_EQ(response.status, 422);
  EXPECT_EQ(response.content_type, "application/problem+json");
  const nlohmann::json body = nlohmann::json::parse(response.body);
  EXPECT_EQ(body["type"], "about:blank");
  EXPECT_EQ(body["title"], "Bad \"input\"");
  EXPECT_EQ(body["status"], 422);
  EXPECT_EQ(body["detail"], "line1\nline2 \\ \xEF\xBF\xBD end");  // invalid byte -> U+FFFD
}

TEST(HttpTypesTest, Json) {
  const HttpResponse response = HttpResponse::Json(201, R"({"ok":true})");
  EXPECT_EQ(response.status, 201);
  EXPECT_EQ(response.content_type, "application/json");
  EXPECT_EQ(response.body, R"({"ok":true})");
}

}  // namespace
}  // namespace meridian::region::http
