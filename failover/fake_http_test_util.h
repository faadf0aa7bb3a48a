#pragma once

// A scripted HttpClient for unit tests: answers by "METHOD URL" (exact), else by URL, else
// "connection refused"; records every call. Thread-safe.

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "failover/http_client.h"

namespace meridian::failover {

class FakeHttp final : public HttpClient {
 public:
  using Responder = std::function<HttpResult(const HttpCall&)>;

  void Set(const std::string& key, HttpResult r) {
    std::lock_guard<std::mutex> l(mu_);
    fixed_[key] = std::move(r);
  }
  void SetJson(const std::string& key, int status, std::string body) {
    Set(key, HttpResult{status, std::move(body), ""});
  }
  void Refuse(const std::string& key) { Set(key, HttpResult{0, "", "connection refused"}); }
  void On(const std::string& key, Responder r) {
    std::lock_guard<std::mutex> l(mu_);
    dynamic_[key] = std::move(r);
  }

  std::vector<HttpResult> Run(const std::vector<HttpCall>& calls, int) override {
    std::vector<HttpResult> out;
    for (const HttpCall& c : calls) {
      std::unique_lock<std::mutex> l(mu_);
      calls_.push_back(c);
      const std::string full = c.method + " " + c.url;
      if (auto d = dynamic_.find(full); d != dynamic_.end()) {
        Responder r = d->second;
        l.unlock();
        out.push_back(r(c));
        continue;
      }
      if (auto it = fixed_.find(full); it != fixed_.end()) {
        out.push_back(it->second);
      } else if (auto it2 = fixed_.find(c.url); it2 != fixed_.end() && c.method == "GET") {
        out.push_back(it2->second);
      } else {
        out.push_back(HttpResult{0, "", "connection refused"});
      }
    }
    return out;
  }

  std::vector<HttpCall> Calls(const std::string& method, const std::string& url_prefix) {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<HttpCall> out;
    for (const auto& c : calls_)
      if (c.method == method && c.url.rfind(url_prefix, 0) == 0) out.push_back(c);
    return out;
  }
  // Every call since the last ClearCalls, in the order they were made.
  std::vector<HttpCall> AllCalls() {
    std::lock_guard<std::mutex> l(mu_);
    return calls_;
  }
  void ClearCalls() {
    std::lock_guard<std::mutex> l(mu_);
    calls_.clear();
  }

 private:
  std::mutex mu_;
  std::map<std::string, HttpResult> fixed_;
  std::map<std::string, Responder> dynamic_;
  std::vector<HttpCall> calls_;
};

}  // namespace meridian::failover
