#include "geo/prober.h"

#include <curl/curl.h>

#include <chrono>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace meridian::geo {
namespace {

// A readyz body is tiny; a larger one is not what we asked for.
constexpr size_t kBodyBytesMax = 64 * 1024;
// How long ProbeAll waits beyond the per-probe timeout before it gives up on stragglers.
constexpr int kRoundSlackMs = 200;
constexpr int kPollMs = 50;

size_t DiscardBody(char*, size_t size, size_t count, void* user) {
  size_t& received = *static_cast<size_t*>(user);
  received += size * count;
  return received > kBodyBytesMax ? 0 : size * count;  // 0 aborts the transfer
}

void InitCurlOnce() {
  static std::once_flag once;
  // curl_global_init is not thread-safe; do it before any handle exists.
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

struct CurlProbeClient::State {
  struct Target {
    CURL* easy = nullptr;
    std::string url;
    size_t received = 0;
    char error[CURL_ERROR_SIZE] = {};
  };
  CURLM* multi = nullptr;
  std::vector<Target> targets;

  ~State() {
    for (Target& t : targets) {
      if (t.easy) curl_easy_cleanup(t.easy);
    }
    if (multi) curl_multi_cleanup(multi);
  }
};

CurlProbeClient::CurlProbeClient() : state_(std::make_unique<State>()) {
  InitCurlOnce();
  state_->multi = curl_multi_init();
}

CurlProbeClient::~CurlProbeClient() = default;

std::vector<ProbeResult> CurlProbeClient::ProbeAll(const std::vector<std::string>& urls,
                                                   int timeout_ms) {
  std::vector<ProbeResult> results(urls.size());
  if (!state_->multi) {
    for (ProbeResult& r : results) r.error = "curl_multi_init failed";
    return results;
  }
  if (state_->targets.size() != urls.size()) {
    State fresh;
    std::swap(fresh.targets, state_->targets);  // cleaned up with `fresh`
    state_->targets.resize(urls.size());
  }
  std::vector<bool> added(urls.size(), false);
  for (size_t i = 0; i < urls.size(); ++i) {
    State::Target& t = state_->targets[i];
    if (t.easy == nullptr || t.url != urls[i]) {
      if (t.easy) curl_easy_cleanup(t.easy);
      t.easy = curl_easy_init();
      t.url = urls[i];
      if (t.easy == nullptr) {
        results[i].error = "curl_easy_init failed";
        continue;
      }
      curl_easy_setopt(t.easy, CURLOPT_URL, t.url.c_str());
      curl_easy_setopt(t.easy, CURLOPT_NOSIGNAL, 1L);
      curl_easy_setopt(t.easy, CURLOPT_HTTPGET, 1L);
      curl_easy_setopt(t.easy, CURLOPT_FOLLOWLOCATION, 0L);
      curl_easy_setopt(t.easy, CURLOPT_TCP_NODELAY, 1L);
      curl_easy_setopt(t.easy, CURLOPT_USERAGENT, "meridian-geo-probe");
      curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, &DiscardBody);
      curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t.received);
      curl_easy_setopt(t.easy, CURLOPT_ERRORBUFFER, t.error);
      curl_easy_setopt(t.easy, CURLOPT_PRIVATE, reinterpret_cast<void*>(i));
    }
    curl_easy_setopt(t.easy, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
    curl_easy_setopt(t.easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout_ms));
    t.received = 0;
    t.error[0] = '\0';
    if (curl_multi_add_handle(state_->multi, t.easy) == CURLM_OK) {
      added[i] = true;
      results[i].error = absl::StrCat("no result within ", timeout_ms + kRoundSlackMs, " ms");
    } else {
      results[i].error = "curl_multi_add_handle failed";
    }
  }

  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms + kRoundSlackMs);
  int running = 0;
  do {
    if (curl_multi_perform(state_->multi, &running) != CURLM_OK) break;
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(state_->multi, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      void* priv = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
      const size_t i = reinterpret_cast<size_t>(priv);
      if (i >= results.size()) continue;
      State::Target& t = state_->targets[i];
      ProbeResult& r = results[i];
      const CURLcode code = msg->data.result;
      if (code == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
        r.ok = status >= 200 && status < 300;
        r.error = r.ok ? "" : absl::StrCat("HTTP ", status);
      } else if (code == CURLE_OPERATION_TIMEDOUT) {
        r.error = absl::StrCat("timeout after ", timeout_ms, " ms");
      } else if (code == CURLE_WRITE_ERROR && t.received > kBodyBytesMax) {
        r.error = absl::StrCat("body over ", kBodyBytesMax, " bytes");
      } else {
        r.error = t.error[0] != '\0' ? std::string(t.error) : curl_easy_strerror(code);
      }
    }
    if (running == 0 || std::chrono::steady_clock::now() >= deadline) break;
    curl_multi_poll(state_->multi, nullptr, 0, kPollMs, nullptr);
  } while (true);

  for (size_t i = 0; i < urls.size(); ++i) {
    if (added[i]) curl_multi_remove_handle(state_->multi, state_->targets[i].easy);
  }
  return results;
}

ProbeLoop::ProbeLoop(std::vector<std::string> urls, int interval_ms, int timeout_ms,
                     ProbeClient& client, Sink sink)
    : urls_(std::move(urls)),
      interval_ms_(interval_ms),
      timeout_ms_(timeout_ms),
      client_(client),
      sink_(std::move(sink)) {}

ProbeLoop::~ProbeLoop() { Stop(); }

void ProbeLoop::Start() {
  if (thread_.joinable() || urls_.empty()) return;
  thread_ = std::thread([this] { Run(); });
}

void ProbeLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ProbeLoop::RunOnce() {
  const std::vector<ProbeResult> results = client_.ProbeAll(urls_, timeout_ms_);
  for (size_t i = 0; i < results.size() && i < urls_.size(); ++i) sink_(i, results[i]);
}

void ProbeLoop::Run() {
  using std::chrono::steady_clock;
  const auto interval = std::chrono::milliseconds(interval_ms_);
  auto next = steady_clock::now();
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    RunOnce();
    next += interval;
    // A round that overran (a stalled machine) skips the ticks it missed instead of bursting.
    const auto now = steady_clock::now();
    if (next < now) next = now;
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_until(lock, next, [this] { return stopping_; })) return;
  }
}

}  // namespace meridian::geo
