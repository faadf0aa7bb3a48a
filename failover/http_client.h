#pragma once

// The one seam through which meridian-failover and meridianctl talk HTTP: a batch of requests run
// concurrently, each bounded by a timeout. Tests replace it with a scripted fake.

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace meridian::failover {

struct HttpCall {
  std::string method = "GET";
  std::string url;     // http://host:port/path
  std::string body;    // sent with Content-Type: application/json when non-empty
  std::string bearer;  // "Authorization: Bearer <bearer>" when non-empty
};

struct HttpResult {
  int status = 0;     // the HTTP status; 0 when there was no response (see error)
  std::string body;   // at most kMaxBodyBytes
  std::string error;  // empty when a response arrived: "connection refused", "timeout after 400 ms"
  [[nodiscard]] bool responded() const { return error.empty(); }
  [[nodiscard]] bool ok() const { return error.empty() && status >= 200 && status < 300; }
  // "HTTP 503" or the transport error, for reasons and messages. (Inline: the pure core's probe
  // rules use it without the curl client.)
  [[nodiscard]] std::string Describe() const {
    return error.empty() ? "HTTP " + std::to_string(status) : error;
  }
};

inline constexpr size_t kMaxBodyBytes = 8 << 20;

class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // Runs every call concurrently and returns one result per call, in order, within about
  // `timeout_ms` (each call is bounded by it). Thread-safe: several threads may call at once.
  [[nodiscard]] virtual std::vector<HttpResult> Run(const std::vector<HttpCall>& calls,
                                                    int timeout_ms) = 0;
  [[nodiscard]] HttpResult Do(const HttpCall& call, int timeout_ms) {
    return Run({call}, timeout_ms).front();
  }
};

// libcurl (multi interface): one fresh connection per call (loopback and management networks:
// the cost is negligible, and a dead peer is seen at once as refused or timed out).
std::unique_ptr<HttpClient> MakeCurlHttpClient();

}  // namespace meridian::failover
