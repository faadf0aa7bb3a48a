#include "failover/http_client.h"

#include <curl/curl.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace meridian::failover {

namespace {

struct Transfer {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  HttpResult* out = nullptr;
  bool too_big = false;
};

size_t OnData(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (t->out->body.size() + bytes > kMaxBodyBytes) {
    t->too_big = true;
    return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
  }
  t->out->body.append(data, bytes);
  return bytes;
}

std::string CurlError(CURLcode code, int timeout_ms, bool too_big) {
  if (too_big) return absl::StrCat("response larger than ", kMaxBodyBytes, " bytes");
  switch (code) {
    case CURLE_COULDNT_CONNECT:
      return "connection refused";
    case CURLE_OPERATION_TIMEDOUT:
      return absl::StrCat("timeout after ", timeout_ms, " ms");
    case CURLE_GOT_NOTHING:
      return "empty reply";
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
      return "connection reset";
    default:
      return curl_easy_strerror(code);
  }
}

class CurlHttpClient final : public HttpClient {
 public:
  CurlHttpClient() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  }

  std::vector<HttpResult> Run(const std::vector<HttpCall>& calls, int timeout_ms) override {
    std::vector<HttpResult> results(calls.size());
    if (calls.empty()) return results;
    CURLM* multi = curl_multi_init();
    std::vector<Transfer> transfers(calls.size());
    for (size_t i = 0; i < calls.size(); ++i) {
      const HttpCall& c = calls[i];
      Transfer& t = transfers[i];
      t.out = &results[i];
      t.easy = curl_easy_init();
      curl_easy_setopt(t.easy, CURLOPT_URL, c.url.c_str());
      curl_easy_setopt(t.easy, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(t.easy, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
      curl_easy_setopt(t.easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout_ms));
      curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, &OnData);
      curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t);
      curl_easy_setopt(t.easy, CURLOPT_PROTOCOLS_STR, "http,https");
      curl_easy_setopt(t.easy, CURLOPT_TCP_NODELAY, 1L);
      if (!c.bearer.empty()) {
        t.headers =
            curl_slist_append(t.headers, absl::StrCat("Authorization: Bearer ", c.bearer).c_str());
      }
      if (c.method != "GET") {
        curl_easy_setopt(t.easy, CURLOPT_CUSTOMREQUEST, c.method.c_str());
        curl_easy_setopt(t.easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(c.body.size()));
        curl_easy_setopt(t.easy, CURLOPT_COPYPOSTFIELDS, c.body.c_str());
        t.headers = curl_slist_append(t.headers, "Content-Type: application/json");
        t.headers = curl_slist_append(t.headers, "Expect:");
      }
      if (t.headers != nullptr) curl_easy_setopt(t.easy, CURLOPT_HTTPHEADER, t.headers);
      curl_easy_setopt(t.easy, CURLOPT_PRIVATE, &t);
      curl_multi_add_handle(multi, t.easy);
    }
    int running = 0;
    do {
      curl_multi_perform(multi, &running);
      if (running > 0) curl_multi_poll(multi, nullptr, 0, 50, nullptr);
      int left = 0;
      while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
        if (m->msg != CURLMSG_DONE) continue;
        Transfer* t = nullptr;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
        if (m->data.result == CURLE_OK) {
          long code = 0;
          curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
          t->out->status = static_cast<int>(code);
        } else {
          t->out->error = CurlError(m->data.result, timeout_ms, t->too_big);
          t->out->body.clear();
        }
      }
    } while (running > 0);
    for (Transfer& t : transfers) {
      curl_multi_remove_handle(multi, t.easy);
      curl_easy_cleanup(t.easy);
      curl_slist_free_all(t.headers);
    }
    curl_multi_cleanup(multi);
    return results;
  }
};

}  // namespace

std::unique_ptr<HttpClient> MakeCurlHttpClient() { return std::make_unique<CurlHttpClient>(); }

}  // namespace meridian::failover
