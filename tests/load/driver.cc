#include "tests/load/driver.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <asio/ip/address.hpp>
#include <asio/signal_set.hpp>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <unordered_set>
#include <vector>

#include "common/files.h"
#include "tests/load/http_connection.h"
#include "tests/load/timeline.h"

namespace meridian::load {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

// Setup retries a request refused with 429/503 or lost to a connection failure this many times:
// the region limits unauthenticated requests per address, and registration is CPU-heavy.
constexpr int kSetupAttempts = 30;
constexpr std::chrono::milliseconds kSetupTimeout{30000};
// Catalog pages read when no operator token seeds a catalog of our own.
constexpr int kCatalogPage = 100;
constexpr int64_t kCatalogMax = 100000;
// Random draws when looking for an idle customer (or one with cart lines) before settling.
constexpr int kCustomerProbes = 8;

struct Product {
  std::string sku;
  std::vector<std::string> words;  // search terms taken from the name, lowercase
};

// The loadgen's view of one customer, refreshed from every cart the region returns.
struct Customer {
  std::string email;
  std::string auth_header;  // "Bearer <token>"
  std::vector<std::pair<std::string, int64_t>> lines;
  int64_t cart_version = -1;
  std::string last_key;  // Idempotency-Key of the latest order made, for replays
  int in_flight = 0;     // this customer's arrivals dispatched and not yet complete
  size_t subnet = 0;     // client subnet (customer index mod the number of subnets)
  int home = 0;          // static region (no DNS): customer index mod the number of regions
};

struct Op {
  OpKind kind = OpKind::kBrowse;
  size_t customer = 0;
  Clock::time_point scheduled;
  bool measured = false;
  std::string sku;    // browse, cart ops, prefill
  std::string query;  // search
  int64_t quantity = 1;
  int64_t offset = 0;  // list
  bool declined = false;
  std::string key;  // checkout
  bool prefill_pending = false;
  bool lag_recorded = false;
  int region = 0;                     // where this arrival is sent (fixed at arrival)
  std::vector<std::string> cleanup;   // after a 409 checkout: lines still to remove
  std::optional<HttpResult> outcome;  // the checkout's own result while cleaning up
};

std::vector<std::string> Words(std::string_view name) {
  std::vector<std::string> out;
  std::string cur;
  auto flush = [&] {
    bool digits = std::all_of(cur.begin(), cur.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (cur.size() >= 3 && !digits) out.push_back(cur);
    cur.clear();
  };
  for (char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      cur += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      flush();
    }
  }
  flush();
  return out;
}

std::string UrlEncode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string Snippet(const std::string& body) {
  std::string s = body.substr(0, 200);
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// The "detail" of an application/problem+json body, else the start of the body.
std::string ProblemDetail(const std::string& body) {
  Json j = Json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("detail") && j["detail"].is_string()) {
    return Snippet(j["detail"].get<std::string>());
  }
  return Snippet(body);
}

// Updates the customer's lines from a cart document, unless an answer to a later mutation has
// already been applied (responses of overlapping requests can arrive out of order).
void ApplyCart(const std::string& body, Customer* c) {
  Json j = Json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("lines") || !j["lines"].is_array()) return;
  int64_t version = j.value("version", int64_t{0});
  if (version < c->cart_version) return;
  c->cart_version = version;
  c->lines.clear();
  for (const Json& l : j["lines"]) {
    if (!l.is_object() || !l.contains("sku") || !l["sku"].is_string()) continue;
    c->lines.emplace_back(l["sku"].get<std::string>(), l.value("quantity", int64_t{1}));
  }
}

// A blocking client for setup: one keep-alive connection on a private io_context.
class SetupClient {
 public:
  SetupClient(const asio::ip::tcp::endpoint& endpoint, std::string host)
      : conn_(io_, endpoint), host_(std::move(host)) {}

  HttpResult Call(std::string_view method, std::string_view path, const std::vector<Header>& h,
                  std::string_view body) {
    HttpResult result;
    bool done = false;
    conn_.Send(BuildRequest(method, path, host_, h, body), kSetupTimeout, [&](HttpResult r) {
      result = std::move(r);
      done = true;
    });
    io_.restart();
    io_.run();
    assert(done);
    return result;
  }

  HttpResult CallRetrying(std::string_view method, std::string_view path,
                          const std::vector<Header>& h, std::string_view body) {
    HttpResult r;
    for (int attempt = 1; attempt <= kSetupAttempts; ++attempt) {
      r = Call(method, path, h, body);
      bool transport = r.error != HttpResult::Error::kNone;
      bool busy = r.status == 429 || r.status == 503;
      if (!transport && !busy) return r;
      if (transport && attempt >= 3) return r;
      int wait_ms = 200;
      if (r.status == 429) {
        int s = std::atoi(r.retry_after.c_str());
        wait_ms = 1000 * std::clamp(s, 1, 5);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
    }
    return r;
  }

 private:
  asio::io_context io_;  // before conn_: the connection is destroyed first
  HttpConnection conn_;
  std::string host_;
};

std::string Describe(const HttpResult& r) {
  if (r.error != HttpResult::Error::kNone) return r.detail;
  return "HTTP " + std::to_string(r.status) + ": " + Snippet(r.body);
}

// One setup client per region, made on first use (each thread owns one set).
class SetupClients {
 public:
  SetupClients(const std::vector<asio::ip::tcp::endpoint>& endpoints,
               const std::vector<std::string>& hosts)
      : endpoints_(endpoints), hosts_(hosts), clients_(endpoints.size()) {}
  SetupClient& operator[](size_t region) {
    if (!clients_[region]) {
      clients_[region] = std::make_unique<SetupClient>(endpoints_[region], hosts_[region]);
    }
    return *clients_[region];
  }

 private:
  const std::vector<asio::ip::tcp::endpoint>& endpoints_;
  const std::vector<std::string>& hosts_;
  std::vector<std::unique_ptr<SetupClient>> clients_;
};

// Runs fn(clients, i) for i in [0, n) on up to `workers` threads, each with its own clients.
// Stops handing out work after the first failure, which it returns.
absl::Status ParallelFor(int n, int workers, const std::vector<asio::ip::tcp::endpoint>& endpoints,
                         const std::vector<std::string>& hosts,
                         const std::function<absl::Status(SetupClients&, int)>& fn) {
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  absl::Status first = absl::OkStatus();
  std::vector<std::thread> threads;
  int count = std::max(1, std::min(workers, n));
  for (int t = 0; t < count; ++t) {
    threads.emplace_back([&] {
      SetupClients clients(endpoints, hosts);
      for (;;) {
        int i = next.fetch_add(1);
        if (i >= n || failed.load()) return;
        absl::Status st = fn(clients, i);
        if (!st.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first.ok()) first = st;
          failed = true;
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  return first;
}

std::string UtcNow() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t UnixMs(std::chrono::system_clock::time_point t = std::chrono::system_clock::now()) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

// A JSON-lines file written as the run goes; a failed write is reported once at the end.
class LinesFile {
 public:
  absl::Status Open(const std::string& path) {
    path_ = path;
    if (path.empty()) return absl::OkStatus();
    // Checked by meridian-loadgen without making its folders, so that a refused run makes none.
    if (absl::Status st = common::MakeParentFolders(path); !st.ok()) {
      return absl::UnavailableError("cannot write " + std::string(st.message()));
    }
    out_.open(path, std::ios::trunc);
    if (!out_) return absl::UnavailableError("cannot write " + path);
    return absl::OkStatus();
  }
  void Write(const nlohmann::ordered_json& j) {
    if (out_.is_open()) out_ << j.dump() << "\n";
  }
  void Flush() {
    if (out_.is_open()) out_.flush();
  }
  absl::Status Close() {
    if (!out_.is_open()) return absl::OkStatus();
    out_.close();
    if (!out_) return absl::UnavailableError("writing " + path_ + " failed");
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace

struct LoadDriver::State {
  explicit State(LoadOptions o) : opt(std::move(o)), rng(opt.seed) {}

  LoadOptions opt;
  std::vector<asio::ip::tcp::endpoint> endpoints;  // per region
  std::vector<std::string> hosts;                  // Host header per region
  std::vector<Product> products;                   // most popular first
  std::vector<Product> scarce;                     // scarce products (uniform choice)
  std::unordered_set<std::string> scarce_skus;
  std::vector<int> initial_regions;  // per subnet, from setup's DNS answers
  std::vector<int> initial_ttls;
  std::vector<Customer> customers;
  std::optional<ZipfSampler> zipf;
  bool seeded = false;
  double setup_s = 0;
  std::mt19937_64 rng;
  std::string run_id;

  // Run state. The io_context is declared first so that it is destroyed last.
  asio::io_context io;
  struct Pool {
    std::vector<std::unique_ptr<HttpConnection>> conns;
    std::vector<size_t> free_conns;
    std::deque<Op> backlog;
  };
  std::vector<Pool> pools;  // per region
  std::optional<asio::steady_timer> tick_timer, progress_timer, drain_timer;
  std::optional<asio::signal_set> signals;
  std::optional<DnsRouter> router;
  std::optional<Timeline> timeline;
  LinesFile timeline_file, acks_file;
  int64_t acked_orders = 0;
  bool stopped_by_signal = false;
  std::optional<ArrivalSchedule> schedule;
  std::optional<double> next_offset_s;
  Clock::time_point t0;
  double window_start_s = 0;
  double window_end_s = 0;
  bool schedule_done = false;
  bool drain_expired = false;
  bool finished = false;
  RunReport report;

  // Progress, per second.
  int64_t sec_arrivals = 0;
  int64_t sec_responses = 0;
  int64_t sec_lag_max_us = 0;
  std::map<std::string, int64_t> sec_errors;
  int progress_ticks = 0;

  int64_t Backlog() const {
    int64_t n = 0;
    for (const Pool& p : pools) n += static_cast<int64_t>(p.backlog.size());
    return n;
  }
  size_t InFlight() const {
    size_t n = 0;
    for (const Pool& p : pools) n += p.conns.size() - p.free_conns.size();
    return n;
  }
  int64_t SecondOf(Clock::time_point t) const {
    return std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::seconds>(t - t0).count());
  }
  int RegionFor(const Customer& c) const { return router ? router->region(c.subnet) : c.home; }
  void Stop(int signal_number);
  void WriteTimeline(bool all);

  double U() {
    double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    return std::min(u, std::nextafter(1.0, 0.0));
  }
  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }
  const Product& ZipfProduct() { return products[zipf->Sample(U())]; }
  std::optional<size_t> PickCustomer(bool with_lines);

  absl::Status SeedProducts(const std::string& prefix, int count, int64_t stock,
                            std::vector<Product>* out);
  absl::Status SeedCatalog();
  absl::Status ResolveSubnets();
  absl::Status ReadCatalog();
  absl::Status PrepareCustomers();

  Op MakeOp(Clock::time_point scheduled, bool measured, int64_t arrival);
  void Tick();
  void Dispatch(Op op);
  void ResolveAtSend(Op& op);
  void StartOp(Op op, size_t conn);
  void OnResult(Op op, size_t conn, HttpResult r);
  void Complete(const Op& op, const HttpResult& r);
  void RecordAck(const Op& op, const HttpResult& r, Clock::time_point now);
  void Release(int region, size_t conn);
  void StartDrain();
  void MaybeFinish();
  void Progress();
};

LoadDriver::LoadDriver(LoadOptions options) : s_(std::make_unique<State>(std::move(options))) {}
LoadDriver::~LoadDriver() = default;

// Products PREFIX-00001.. in every region (the catalog is last-writer-wins, so writing the same
// product in each region is harmless and saves waiting for replication), each restocked with
// `stock` units in every region: a region sells only within its own rights.
absl::Status LoadDriver::State::SeedProducts(const std::string& prefix, int count, int64_t stock,
                                             std::vector<Product>* out) {
  static const char* kAdjectives[] = {"sturdy", "compact", "vintage", "deluxe",
                                      "rustic", "modern",  "classic", "portable"};
  static const char* kNouns[] = {"lamp",   "kettle",  "novel", "spade", "atlas",  "teapot",
                                 "shears", "journal", "mug",   "rake",  "trowel", "blanket",
                                 "candle", "basket",  "clock", "vase"};
  out->resize(static_cast<size_t>(count));
  std::vector<Header> auth = {{"Authorization", "Bearer " + opt.operator_token}};
  const int regions = static_cast<int>(endpoints.size());
  // Restocks are retried on a transport error (the answer may be lost after the commit): each
  // carries a key of its own, unique to this run, so that a retry adds nothing.
  const std::string run = std::to_string(std::random_device{}()) + "-" +
                          std::to_string(std::chrono::system_clock::now().time_since_epoch() /
                                         std::chrono::microseconds(1));
  return ParallelFor(
      count * regions, opt.setup_concurrency, endpoints, hosts,
      [&](SetupClients& clients, int job) -> absl::Status {
        const int i = job / regions;
        const size_t region = static_cast<size_t>(job % regions);
        SetupClient& client = clients[region];
        const std::string& where = opt.regions[region].name;
        char sku[64];
        std::snprintf(sku, sizeof sku, "%s-%05d", prefix.c_str(), i + 1);
        std::string adjective = kAdjectives[i % 8];
        std::string noun = kNouns[(i / 8) % 16];
        Json body = {{"name", "Load " + adjective + " " + noun + " " + std::to_string(i + 1)},
                     {"description", "A " + adjective + " " + noun + " made for load tests"},
                     {"price_cents", 500 + (i * 37) % 5000},
                     {"currency", "USD"}};
        HttpResult r =
            client.CallRetrying("PUT", std::string("/v1/admin/products/") + sku, auth, body.dump());
        if (r.error == HttpResult::Error::kNone && (r.status == 401 || r.status == 403)) {
          return absl::PermissionDeniedError(
              "--operator-token was refused by " + where + " (" + Describe(r) +
              "); use the region's token, e.g. the file DATA/operator_token");
        }
        if (r.error != HttpResult::Error::kNone || (r.status != 200 && r.status != 201)) {
          return absl::InternalError(std::string("seeding product ") + sku + " in " + where + ": " +
                                     Describe(r));
        }
        Json restock = {{"units", stock}};
        std::vector<Header> keyed = auth;
        keyed.emplace_back("Idempotency-Key", "seed-" + run + "-" + where + "-" + sku);
        r = client.CallRetrying("POST", std::string("/v1/admin/inventory/") + sku + "/restock",
                                keyed, restock.dump());
        if (r.error != HttpResult::Error::kNone || r.status != 200) {
          return absl::InternalError(std::string("restocking ") + sku + " in " + where + ": " +
                                     Describe(r));
        }
        if (region == 0) (*out)[static_cast<size_t>(i)] = Product{sku, {adjective, noun}};
        return absl::OkStatus();
      });
}

absl::Status LoadDriver::State::SeedCatalog() {
  absl::Status st = SeedProducts("load", opt.seed_products, opt.seed_stock_units, &products);
  if (!st.ok()) return st;
  seeded = true;
  spdlog::info("event=loadgen_seeded products={} stock_units_each={} regions={}", opt.seed_products,
               opt.seed_stock_units, endpoints.size());
  if (opt.scarce_products > 0) {
    st = SeedProducts(opt.scarce_prefix, opt.scarce_products, opt.scarce_stock_units, &scarce);
    if (!st.ok()) return st;
    for (const Product& p : scarce) scarce_skus.insert(p.sku);
    spdlog::info("event=loadgen_scarce_seeded prefix={} products={} units_per_region={} regions={}",
                 opt.scarce_prefix, opt.scarce_products, opt.scarce_stock_units, endpoints.size());
  }
  return absl::OkStatus();
}

// Where GeoDNS sends each client subnet now: the customers' first region.
absl::Status LoadDriver::State::ResolveSubnets() {
  std::map<std::string, int> region_of;
  for (size_t r = 0; r < opt.regions.size(); ++r) {
    for (const std::string& a : opt.regions[r].dns_addresses) region_of[a] = static_cast<int>(r);
  }
  for (const Ipv4Subnet& subnet : opt.client_subnets) {
    auto answer = ResolveOnce(*opt.dns_server, opt.dns_name, subnet, std::chrono::seconds(2));
    if (!answer.ok()) {
      return absl::UnavailableError("asking DNS for " + opt.dns_name + " from " + subnet.text +
                                    ": " + std::string(answer.status().message()));
    }
    int region = -1;
    for (const std::string& a : answer->addresses) {
      auto it = region_of.find(a);
      if (it != region_of.end()) {
        region = it->second;
        break;
      }
    }
    if (region < 0) {
      std::string got;
      for (const std::string& a : answer->addresses) got += (got.empty() ? "" : ", ") + a;
      return absl::FailedPreconditionError(
          "DNS answered " + opt.dns_name + " for " + subnet.text + " with [" + got + "] (rcode " +
          std::to_string(answer->rcode) +
          "), which names no --region (give each region's DNS address with --region-address)");
    }
    initial_regions.push_back(region);
    initial_ttls.push_back(answer->ttl_s);
    spdlog::info("event=loadgen_dns subnet={} region={} ttl_s={}", subnet.text,
                 opt.regions[static_cast<size_t>(region)].name, answer->ttl_s);
  }
  return absl::OkStatus();
}

absl::Status LoadDriver::State::ReadCatalog() {
  SetupClient client(endpoints[0], hosts[0]);
  for (int64_t offset = 0; offset < kCatalogMax; offset += kCatalogPage) {
    std::string path =
        "/v1/products?limit=" + std::to_string(kCatalogPage) + "&offset=" + std::to_string(offset);
    HttpResult r = client.CallRetrying("GET", path, {}, "");
    if (r.error != HttpResult::Error::kNone || r.status != 200) {
      return absl::InternalError("reading the catalog (" + path + "): " + Describe(r));
    }
    Json j = Json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("items") || !j["items"].is_array()) {
      return absl::InternalError("reading the catalog: the answer has no items array: " +
                                 Snippet(r.body));
    }
    for (const Json& item : j["items"]) {
      if (!item.is_object() || !item.contains("sku") || !item["sku"].is_string()) continue;
      std::string name = item.contains("name") && item["name"].is_string()
                             ? item["name"].get<std::string>()
                             : std::string();
      products.push_back(Product{item["sku"].get<std::string>(), Words(name)});
    }
    if (j["items"].size() < static_cast<size_t>(kCatalogPage)) break;
  }
  spdlog::info("event=loadgen_catalog products={} seeded=false", products.size());
  return absl::OkStatus();
}

absl::Status LoadDriver::State::PrepareCustomers() {
  customers.resize(static_cast<size_t>(opt.customers));
  const std::string password = "loadgen-" + opt.customer_prefix + "-password";
  std::atomic<int> created{0};
  std::atomic<int> lines_removed{0};
  std::unordered_set<std::string> skus;
  for (const Product& p : products) skus.insert(p.sku);
  for (const Product& p : scarce) skus.insert(p.sku);
  const size_t subnets = std::max<size_t>(1, opt.client_subnets.size());
  absl::Status st = ParallelFor(
      opt.customers, opt.setup_concurrency, endpoints, hosts,
      [&](SetupClients& clients, int i) -> absl::Status {
        Customer& c = customers[static_cast<size_t>(i)];
        c.subnet = static_cast<size_t>(i) % subnets;
        c.home = static_cast<int>(static_cast<size_t>(i) % endpoints.size());
        // Registered where the customer is first sent.
        const int region = initial_regions.empty() ? c.home : initial_regions[c.subnet];
        SetupClient& client = clients[static_cast<size_t>(region)];
        c.email = opt.customer_prefix + "-" + std::to_string(i) + "@loadgen.example.com";
        Json user = {{"email", c.email},
                     {"password", password},
                     {"name", "Load customer " + std::to_string(i)},
                     {"residency", opt.residency}};
        HttpResult r = client.CallRetrying("POST", "/v1/users", {}, user.dump());
        if (r.error != HttpResult::Error::kNone || (r.status != 201 && r.status != 409)) {
          return absl::InternalError("registering " + c.email + ": " + Describe(r));
        }
        if (r.status == 201) ++created;
        Json login = {{"email", c.email}, {"password", password}};
        r = client.CallRetrying("POST", "/v1/sessions", {}, login.dump());
        if (r.error == HttpResult::Error::kNone && r.status == 401) {
          return absl::FailedPreconditionError(
              "logging in " + c.email +
              " was refused (the account exists with another password?); pick another "
              "--customer-prefix");
        }
        if (r.error != HttpResult::Error::kNone || r.status != 200) {
          return absl::InternalError("logging in " + c.email + ": " + Describe(r));
        }
        Json session = Json::parse(r.body, nullptr, false);
        if (session.is_discarded() || !session.is_object() || !session.contains("token") ||
            !session["token"].is_string()) {
          return absl::InternalError("logging in " + c.email +
                                     ": no token in the answer: " + Snippet(r.body));
        }
        c.auth_header = "Bearer " + session["token"].get<std::string>();
        r = client.CallRetrying("GET", "/v1/cart", {{"Authorization", c.auth_header}}, "");
        if (r.error != HttpResult::Error::kNone || r.status != 200) {
          return absl::InternalError("reading the cart of " + c.email + ": " + Describe(r));
        }
        ApplyCart(r.body, &c);
        // Lines outside this run's catalog (left by an earlier run on another catalog) go: one
        // sold-out line would otherwise fail every checkout of this customer with 409.
        for (const auto& [sku, qty] : std::vector(c.lines)) {
          if (skus.count(sku)) continue;
          r = client.CallRetrying("DELETE", "/v1/cart/items/" + sku,
                                  {{"Authorization", c.auth_header}}, "");
          if (r.error != HttpResult::Error::kNone || (r.status != 200 && r.status != 404)) {
            return absl::InternalError("emptying the cart of " + c.email + ": " + Describe(r));
          }
          if (r.status == 200) ApplyCart(r.body, &c);
          ++lines_removed;
        }
        return absl::OkStatus();
      });
  if (!st.ok()) return st;
  spdlog::info("event=loadgen_customers ready={} created={} reused={} stale_cart_lines_removed={}",
               opt.customers, created.load(), opt.customers - created.load(), lines_removed.load());
  return absl::OkStatus();
}

absl::Status LoadDriver::Setup() {
  State& s = *s_;
  auto start = Clock::now();
  for (const RegionTarget& region : s.opt.regions) {
    std::error_code ec;
    asio::ip::address address = asio::ip::make_address(region.target.address, ec);
    // ParseTarget already refused anything off this machine; a malformed literal stops here.
    if (ec) {
      return absl::InvalidArgumentError(region.name + ": " + region.target.address +
                                        " is not an IP address");
    }
    s.endpoints.emplace_back(address, region.target.port);
    s.hosts.push_back(region.target.host_header);
    SetupClient probe(s.endpoints.back(), s.hosts.back());
    HttpResult r = probe.Call("GET", "/healthz", {}, "");
    if (r.error != HttpResult::Error::kNone) {
      return absl::UnavailableError("cannot reach " + region.name + " at " + region.url + ": " +
                                    r.detail +
                                    " (is the region up? deploy/meridian up --data DIR)");
    }
    if (r.status != 200) {
      return absl::FailedPreconditionError(region.url + "/healthz answered " + Describe(r) +
                                           ": not a ready Meridian region?");
    }
  }
  if (s.opt.dns_server) {
    absl::Status st = s.ResolveSubnets();
    if (!st.ok()) return st;
  }
  absl::Status st = s.opt.operator_token.empty() ? s.ReadCatalog() : s.SeedCatalog();
  if (!st.ok()) return st;
  if (s.products.empty()) {
    return absl::FailedPreconditionError(
        "the catalog is empty: seed it (deploy/meridian seed --data DIR) or pass --operator-token");
  }
  // Popularity is by a seeded shuffle, not by SKU order, so the hot products are spread out.
  std::shuffle(s.products.begin(), s.products.end(), s.rng);
  s.zipf.emplace(s.products.size(), s.opt.zipf_s);
  st = s.PrepareCustomers();
  if (!st.ok()) return st;
  s.setup_s = std::chrono::duration<double>(Clock::now() - start).count();
  spdlog::info("event=loadgen_setup_done seconds={:.1f}", s.setup_s);
  return absl::OkStatus();
}

// A person does one thing at a time: prefer a customer with nothing in flight, so that the
// loadgen's view of the cart stays true and its requests do not race each other (which would
// show up as 404s and 422s that no real customer causes). Only when the probes find none does a
// customer get overlapping requests, which happens when the region falls behind. With
// `with_lines`, returns an idle customer whose cart has lines, or nothing.
std::optional<size_t> LoadDriver::State::PickCustomer(bool with_lines) {
  size_t first = Pick(customers.size());
  for (int i = 0; i < kCustomerProbes; ++i) {
    size_t c = i == 0 ? first : Pick(customers.size());
    if (customers[c].in_flight == 0 && (!with_lines || !customers[c].lines.empty())) return c;
  }
  // A busy customer with lines would race its own requests: "none" lets the caller fall back.
  if (with_lines) return std::nullopt;
  return first;
}

Op LoadDriver::State::MakeOp(Clock::time_point scheduled, bool measured, int64_t arrival) {
  Op op;
  op.scheduled = scheduled;
  op.measured = measured;
  op.kind = opt.mix.Pick(U());
  op.customer = *PickCustomer(false);
  switch (op.kind) {
    case OpKind::kBrowse:
      op.sku = ZipfProduct().sku;
      break;
    case OpKind::kList: {
      int64_t pages = (static_cast<int64_t>(products.size()) + 19) / 20;
      op.offset = 20 * static_cast<int64_t>(Pick(static_cast<size_t>(pages)));
      break;
    }
    case OpKind::kSearch: {
      const Product& p = ZipfProduct();
      op.query = p.words.empty() ? p.sku : p.words[Pick(p.words.size())];
      break;
    }
    case OpKind::kCartUpdate:
    case OpKind::kCartRemove:
      // The line is chosen when the request goes out (ResolveAtSend), from the cart as it is then;
      // a customer without lines then adds instead.
      if (std::optional<size_t> who = PickCustomer(true)) op.customer = *who;
      op.quantity = static_cast<int64_t>(Pick(4));  // cart_update: 0..3; 0 removes the line
      break;
    case OpKind::kCartAdd:
      if (!scarce.empty() && U() < opt.scarce_fraction) {
        op.sku = scarce[Pick(scarce.size())].sku;
        op.quantity = 1;
        break;
      }
      op.sku = ZipfProduct().sku;
      op.quantity = 1 + static_cast<int64_t>(Pick(3));
      break;
    case OpKind::kGetCart:
      break;
    case OpKind::kCheckout:
    case OpKind::kCheckoutReplay: {
      Customer& c = customers[op.customer];
      if (!c.last_key.empty() && U() < opt.replay_fraction) {
        op.kind = OpKind::kCheckoutReplay;
        op.key = c.last_key;
        break;
      }
      op.kind = OpKind::kCheckout;
      op.key = run_id + "-" + std::to_string(arrival);
      op.declined = U() < opt.declined_fraction;
      op.sku = ZipfProduct().sku;  // the prefill item, if the cart is empty when it goes out
      break;
    }
  }
  return op;
}

void LoadDriver::State::Tick() {
  auto now = Clock::now();
  while (next_offset_s) {
    auto when = t0 + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(*next_offset_s));
    if (when > now) {
      tick_timer->expires_at(when);
      tick_timer->async_wait([this](std::error_code ec) {
        if (!ec) Tick();
      });
      return;
    }
    int64_t arrival = report.arrivals_total;
    bool measured = *next_offset_s >= window_start_s && *next_offset_s < window_end_s;
    Dispatch(MakeOp(when, measured, arrival));
    double next = 0;
    next_offset_s = schedule->Next(&next) ? std::optional<double>(next) : std::nullopt;
  }
  schedule_done = true;
  StartDrain();
}

static bool IsCheckout(OpKind k) { return k == OpKind::kCheckout || k == OpKind::kCheckoutReplay; }

void LoadDriver::State::Dispatch(Op op) {
  ++report.arrivals_total;
  if (op.measured) ++report.arrivals_measured;
  ++sec_arrivals;
  Customer& c = customers[op.customer];
  ++c.in_flight;
  op.region = RegionFor(c);
  if (timeline) timeline->Arrival(SecondOf(op.scheduled), op.region, IsCheckout(op.kind));
  Pool& pool = pools[static_cast<size_t>(op.region)];
  if (!pool.free_conns.empty()) {
    size_t conn = pool.free_conns.back();
    pool.free_conns.pop_back();
    StartOp(std::move(op), conn);
    return;
  }
  if (Backlog() >= opt.max_backlog) {
    ++report.shed;
    --c.in_flight;
    ++sec_errors["shed"];
    if (timeline)
      timeline->Done(SecondOf(op.scheduled), op.region, IsCheckout(op.kind), "shed", -1);
    return;
  }
  pool.backlog.push_back(std::move(op));
  report.backlog_max = std::max<int64_t>(report.backlog_max, Backlog());
}

// What depends on the cart is decided when the request leaves, not at arrival: an arrival may
// wait in the backlog while earlier requests of the same customer change the cart.
void LoadDriver::State::ResolveAtSend(Op& op) {
  const Customer& c = customers[op.customer];
  switch (op.kind) {
    case OpKind::kCartUpdate:
    case OpKind::kCartRemove:
      if (!c.lines.empty()) {
        op.sku = c.lines[Pick(c.lines.size())].first;
        return;
      }
      // Nothing to change: the customer adds something instead.
      ++report.cart_fallbacks;
      op.kind = OpKind::kCartAdd;
      op.sku = ZipfProduct().sku;
      op.quantity = 1 + static_cast<int64_t>(Pick(3));
      return;
    case OpKind::kCheckout:
      op.prefill_pending = c.lines.empty();
      op.quantity = 1;
      return;
    default:
      return;
  }
}

void LoadDriver::State::StartOp(Op op, size_t conn) {
  if (!op.lag_recorded) {
    op.lag_recorded = true;
    ResolveAtSend(op);
    int64_t lag_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - op.scheduled).count();
    if (op.measured) report.lag_us.Record(lag_us);
    sec_lag_max_us = std::max(sec_lag_max_us, lag_us);
  }
  const Customer& c = customers[op.customer];
  std::vector<Header> headers = {{"Authorization", c.auth_header}};
  std::string method = "GET", path, body;
  if (!op.cleanup.empty()) {
    method = "DELETE";
    path = "/v1/cart/items/" + op.cleanup.back();
  } else if (op.prefill_pending) {
    method = "POST";
    path = "/v1/cart/items";
    body = Json{{"sku", op.sku}, {"quantity", op.quantity}}.dump();
  } else {
    switch (op.kind) {
      case OpKind::kBrowse:
        path = "/v1/products/" + op.sku;
        break;
      case OpKind::kList:
        path = "/v1/products?limit=20&offset=" + std::to_string(op.offset);
        break;
      case OpKind::kSearch:
        path = "/v1/search?q=" + UrlEncode(op.query) + "&limit=10";
        break;
      case OpKind::kCartAdd:
        method = "POST";
        path = "/v1/cart/items";
        body = Json{{"sku", op.sku}, {"quantity", op.quantity}}.dump();
        break;
      case OpKind::kCartUpdate:
        method = "PUT";
        path = "/v1/cart/items/" + op.sku;
        body = Json{{"quantity", op.quantity}}.dump();
        break;
      case OpKind::kCartRemove:
        method = "DELETE";
        path = "/v1/cart/items/" + op.sku;
        break;
      case OpKind::kGetCart:
        path = "/v1/cart";
        break;
      case OpKind::kCheckout:
      case OpKind::kCheckoutReplay:
        method = "POST";
        path = "/v1/checkout";
        headers.emplace_back("Idempotency-Key", op.key);
        body = Json{{"card_number", op.declined ? "4000000000000002" : "4242424242424242"}}.dump();
        break;
    }
  }
  ++report.http_requests;
  const size_t region = static_cast<size_t>(op.region);
  pools[region].conns[conn]->Send(BuildRequest(method, path, hosts[region], headers, body),
                                  std::chrono::milliseconds(opt.timeout_ms),
                                  [this, op = std::move(op), conn](HttpResult r) mutable {
                                    OnResult(std::move(op), conn, std::move(r));
                                  });
}

void LoadDriver::State::OnResult(Op op, size_t conn, HttpResult r) {
  Customer& customer = customers[op.customer];
  if (!op.cleanup.empty()) {
    // Removing a line a refused checkout named: whatever happens, the checkout's outcome stands.
    if (r.error == HttpResult::Error::kNone && r.status == 200) ApplyCart(r.body, &customer);
    op.cleanup.pop_back();
    if (!op.cleanup.empty()) {
      StartOp(std::move(op), conn);
      return;
    }
    HttpResult outcome = std::move(*op.outcome);
    Complete(op, outcome);
    Release(op.region, conn);
    return;
  }
  if (op.prefill_pending) {
    op.prefill_pending = false;
    if (r.error == HttpResult::Error::kNone && r.status == 200) {
      ApplyCart(r.body, &customer);
      if (op.measured) ++report.ops[static_cast<size_t>(OpKind::kCheckout)].prefill_adds;
      StartOp(std::move(op), conn);  // the checkout itself, on the same connection
      return;
    }
    // The checkout ends here, with the add's failure as its outcome.
  } else if (op.kind == OpKind::kCheckout && r.error == HttpResult::Error::kNone &&
             r.status == 409) {
    // Out of stock: the customer removes the lines the answer names (or, when it names none of
    // them, the scarce ones), so that later checkouts of theirs are not refused for them.
    std::string detail = ProblemDetail(r.body);
    for (const auto& [sku, qty] : customer.lines) {
      if (detail.find(sku) != std::string::npos) op.cleanup.push_back(sku);
    }
    if (op.cleanup.empty()) {
      for (const auto& [sku, qty] : customer.lines) {
        if (scarce_skus.count(sku)) op.cleanup.push_back(sku);
      }
    }
    if (!op.cleanup.empty()) {
      op.outcome = std::move(r);
      StartOp(std::move(op), conn);
      return;
    }
  }
  Complete(op, r);
  Release(op.region, conn);
}

void LoadDriver::State::RecordAck(const Op& op, const HttpResult& r, Clock::time_point now) {
  Json j = Json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return;
  auto wall = std::chrono::system_clock::now() -
              std::chrono::duration_cast<std::chrono::system_clock::duration>(Clock::now() - now);
  auto scheduled_wall =
      wall - std::chrono::duration_cast<std::chrono::system_clock::duration>(now - op.scheduled);
  nlohmann::ordered_json items = nlohmann::ordered_json::array();
  if (j.contains("items") && j["items"].is_array()) {
    for (const Json& i : j["items"]) {
      if (!i.is_object()) continue;
      items.push_back(
          {{"sku", i.value("sku", std::string())}, {"quantity", i.value("quantity", int64_t{0})}});
    }
  }
  nlohmann::ordered_json ack = {{"order_id", j.value("order_id", std::string())},
                                {"acked_unix_ms", UnixMs(wall)},
                                {"scheduled_unix_ms", UnixMs(scheduled_wall)},
                                {"region", opt.regions[static_cast<size_t>(op.region)].name},
                                {"owner_region", j.value("owner_region", std::string())},
                                {"durability", j.value("durability", std::string())},
                                {"status", j.value("status", std::string())},
                                {"customer", customers[op.customer].email},
                                {"items", items}};
  acks_file.Write(ack);
  ++acked_orders;
  if (timeline) timeline->Acked(SecondOf(op.scheduled));
}

void LoadDriver::State::Complete(const Op& op, const HttpResult& r) {
  auto now = Clock::now();
  OpReport& rep = report.ops[static_cast<size_t>(op.kind)];
  bool response = r.error == HttpResult::Error::kNone;
  std::string error;
  switch (r.error) {
    case HttpResult::Error::kNone:
      if (r.status >= 200 && r.status < 300) break;
      if (r.status == 402 && op.kind == OpKind::kCheckout && op.declined) break;
      if (r.status >= 500) {
        error = "5xx";
      } else if (r.status >= 400) {
        error = "4xx:" + std::to_string(r.status);
      } else {
        error = "http:" + std::to_string(r.status);
      }
      break;
    case HttpResult::Error::kConnect:
      error = "connect";
      break;
    case HttpResult::Error::kIo:
      error = "connection";
      break;
    case HttpResult::Error::kTimeout:
      error = "timeout";
      break;
    case HttpResult::Error::kProtocol:
      error = "protocol";
      break;
    case HttpResult::Error::kAborted:
      error = "drain_abort";
      break;
  }
  double at_s = std::chrono::duration<double>(now - t0).count();
  int64_t latency_us =
      response ? std::chrono::duration_cast<std::chrono::microseconds>(now - op.scheduled).count()
               : -1;
  if (response && at_s >= window_start_s && at_s < window_end_s) ++rep.responses_in_window;
  if (op.measured) {
    ++rep.count;
    if (response) {
      rep.latency_us.Record(latency_us);
      ++rep.statuses[r.status];
      if (r.status == 402 && op.declined) ++rep.expected_declines;
    }
    if (!error.empty() && ++rep.errors[error] == 1) {
      rep.error_examples[error] = response ? ProblemDetail(r.body) : r.detail;
    }
  }
  if (timeline) {
    timeline->Done(SecondOf(op.scheduled), op.region, IsCheckout(op.kind), error, latency_us);
  }
  if (response) ++sec_responses;
  if (!error.empty()) ++sec_errors[error];
  Customer& c = customers[op.customer];
  --c.in_flight;
  assert(c.in_flight >= 0);
  if (!response) return;
  switch (op.kind) {
    case OpKind::kCartAdd:
    case OpKind::kCartUpdate:
    case OpKind::kCartRemove:
    case OpKind::kGetCart:
      if (r.status == 200) {
        ApplyCart(r.body, &c);
      } else if (r.status == 404 && !op.sku.empty()) {
        // The line was gone already (an overlapping request of the same customer).
        std::erase_if(c.lines, [&](const auto& l) { return l.first == op.sku; });
      }
      break;
    case OpKind::kCheckout:
      // An order was made (paid or declined) or there was nothing to order: the cart is empty.
      if (r.status == 201 || r.status == 402 || r.status == 422) c.lines.clear();
      // Replays repeat keys of orders that exist: a key still in flight would race its twin.
      if (r.status == 201 || r.status == 402) c.last_key = op.key;
      if (r.status == 201) RecordAck(op, r, now);
      break;
    default:
      break;
  }
}

void LoadDriver::State::Release(int region, size_t conn) {
  Pool& pool = pools[static_cast<size_t>(region)];
  if (!pool.backlog.empty() && !drain_expired) {
    Op next = std::move(pool.backlog.front());
    pool.backlog.pop_front();
    StartOp(std::move(next), conn);
    return;
  }
  pool.free_conns.push_back(conn);
  MaybeFinish();
}

void LoadDriver::State::StartDrain() {
  MaybeFinish();
  if (finished) return;
  drain_timer->expires_after(std::chrono::milliseconds(opt.timeout_ms) + std::chrono::seconds(1));
  drain_timer->async_wait([this](std::error_code ec) {
    if (ec || finished) return;
    drain_expired = true;
    spdlog::warn("event=loadgen_drain_expired in_flight={} backlog={}", InFlight(), Backlog());
    // Arrivals still waiting for a connection never went out: they count as timeouts.
    HttpResult never;
    never.error = HttpResult::Error::kTimeout;
    never.detail = "never sent: still waiting for a connection when the drain ended";
    for (Pool& pool : pools) {
      while (!pool.backlog.empty()) {
        Op op = std::move(pool.backlog.front());
        pool.backlog.pop_front();
        Complete(op, never);
      }
    }
    for (Pool& pool : pools) {
      for (auto& c : pool.conns) c->Abort();  // each in-flight request completes as drain_abort
    }
    MaybeFinish();
  });
}

void LoadDriver::State::MaybeFinish() {
  if (finished || !schedule_done || Backlog() > 0 || InFlight() > 0) return;
  finished = true;
  tick_timer->cancel();
  progress_timer->cancel();
  drain_timer->cancel();
  if (signals) signals->cancel();
  if (router) router->Stop();
}

// SIGINT/SIGTERM: no more arrivals; what is in flight drains as at the schedule's end.
void LoadDriver::State::Stop(int signal_number) {
  if (schedule_done) return;
  stopped_by_signal = true;
  double now_s = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info("event=loadgen_stopping signal={} at_s={:.1f}", signal_number, now_s);
  window_end_s = std::max(window_start_s, std::min(window_end_s, now_s));
  next_offset_s.reset();
  tick_timer->cancel();
  schedule_done = true;
  StartDrain();
}

void LoadDriver::State::WriteTimeline(bool all) {
  if (!timeline) return;
  for (const auto& line : timeline->TakeFinished(SecondOf(Clock::now()), all)) {
    timeline_file.Write(line);
  }
  timeline_file.Flush();
  acks_file.Flush();
}

void LoadDriver::State::Progress() {
  ++progress_ticks;
  if (opt.progress) {
    std::string errors;
    int64_t total = 0;
    for (const auto& [cls, n] : sec_errors) {
      errors += (errors.empty() ? " (" : " ") + cls + "=" + std::to_string(n);
      total += n;
    }
    if (!errors.empty()) errors += ")";
    std::string where;
    if (pools.size() > 1) {
      std::vector<int64_t> per(pools.size());
      for (const Customer& c : customers) ++per[static_cast<size_t>(RegionFor(c))];
      for (size_t r = 0; r < pools.size(); ++r) {
        where += (where.empty() ? "  customers " : " ") + opt.regions[r].name + "=" +
                 std::to_string(per[r]);
      }
    }
    std::fprintf(stderr,
                 "[%4ds] arrivals %5lld/s  responses %5lld/s  in-flight %3zu  backlog %5lld  "
                 "lag max %7.1f ms  errors %lld%s%s\n",
                 progress_ticks, static_cast<long long>(sec_arrivals),
                 static_cast<long long>(sec_responses), InFlight(),
                 static_cast<long long>(Backlog()), static_cast<double>(sec_lag_max_us) / 1000.0,
                 static_cast<long long>(total), errors.c_str(), where.c_str());
  }
  sec_arrivals = sec_responses = sec_lag_max_us = 0;
  sec_errors.clear();
  WriteTimeline(false);
  if (finished) return;
  progress_timer->expires_at(t0 + std::chrono::seconds(progress_ticks + 1));
  progress_timer->async_wait([this](std::error_code ec) {
    if (!ec) Progress();
  });
}

absl::StatusOr<RunReport> LoadDriver::Run() {
  State& s = *s_;
  assert(s.zipf.has_value() && !s.customers.empty());
  s.tick_timer.emplace(s.io);
  s.progress_timer.emplace(s.io);
  s.drain_timer.emplace(s.io);

  // Open the pools before the clock starts: connecting is not part of the measured run.
  s.pools = std::vector<State::Pool>(
      s.endpoints.size());  // built in place (resize would copy: a deque may throw on move)
  for (size_t region = 0; region < s.endpoints.size(); ++region) {
    State::Pool& pool = s.pools[region];
    int ready = 0;
    std::string last_error;
    for (int i = 0; i < s.opt.connections; ++i) {
      pool.conns.push_back(std::make_unique<HttpConnection>(s.io, s.endpoints[region]));
      pool.conns.back()->Send(BuildRequest("GET", "/healthz", s.hosts[region], {}, ""),
                              std::chrono::milliseconds(s.opt.timeout_ms), [&](HttpResult r) {
                                if (r.error == HttpResult::Error::kNone && r.status == 200) {
                                  ++ready;
                                } else {
                                  last_error = Describe(r);
                                }
                              });
    }
    s.io.restart();
    s.io.run();
    if (ready == 0) {
      return absl::UnavailableError("no connection to " + s.opt.regions[region].url +
                                    " could be opened: " + last_error);
    }
    if (ready < s.opt.connections) {
      spdlog::warn("event=loadgen_pool_short region={} ready={} wanted={} last_error=\"{}\"",
                   s.opt.regions[region].name, ready, s.opt.connections, last_error);
    }
    for (size_t i = 0; i < pool.conns.size(); ++i) {
      pool.free_conns.push_back(pool.conns.size() - 1 - i);
    }
  }

  // Learn where the timeline ends (max_requests may cut it short) from a copy of it.
  s.schedule.emplace(s.opt.rate_per_s, s.opt.duration_s, s.opt.max_requests, s.opt.poisson,
                     s.opt.seed ^ 0x9e3779b97f4a7c15ULL);
  double last = 0, t = 0;
  for (ArrivalSchedule probe = *s.schedule; probe.Next(&t);) last = t;
  s.window_start_s = s.opt.warmup_s;
  s.window_end_s = std::min(s.opt.duration_s, last + 1.0 / s.opt.rate_per_s);

  char id[32];
  std::snprintf(
      id, sizeof id, "lg%llx",
      static_cast<unsigned long long>(std::chrono::system_clock::now().time_since_epoch().count()));
  s.run_id = id;

  RunReport& rep = s.report;
  rep.start_time_utc = UtcNow();
  for (const RegionTarget& r : s.opt.regions) {
    rep.target_url += (rep.target_url.empty() ? "" : " ") +
                      (s.opt.regions.size() > 1 ? r.name + "=" : std::string()) + r.url;
  }
  rep.target_rate_per_s = s.opt.rate_per_s;
  rep.duration_s = s.opt.duration_s;
  rep.warmup_s = s.opt.warmup_s;
  rep.arrivals = s.opt.poisson ? "poisson" : "uniform";
  rep.connections = s.opt.connections;
  rep.customers = s.opt.customers;
  rep.catalog_products = static_cast<int64_t>(s.products.size());
  rep.seeded = s.seeded;
  rep.mix = s.opt.mix.ToString();
  rep.declined_fraction = s.opt.declined_fraction;
  rep.replay_fraction = s.opt.replay_fraction;
  rep.zipf_s = s.opt.zipf_s;
  rep.seed = s.opt.seed;
  rep.setup_s = s.setup_s;
  rep.max_lag_ms = s.opt.max_lag_ms;
  spdlog::info("event=loadgen_run_start rate={} duration_s={} warmup_s={} window_s={:.2f}",
               s.opt.rate_per_s, s.opt.duration_s, s.opt.warmup_s,
               std::max(0.0, s.window_end_s - s.window_start_s));

  double first = 0;
  s.next_offset_s = s.schedule->Next(&first) ? std::optional<double>(first) : std::nullopt;
  auto steady_now = Clock::now();
  auto wall_now = std::chrono::system_clock::now();
  s.t0 = steady_now + std::chrono::milliseconds(20);
  const int64_t t0_unix_ms = UnixMs(wall_now) + 20;
  if (!s.opt.timeline_path.empty()) {
    std::vector<std::string> names;
    for (const RegionTarget& r : s.opt.regions) names.push_back(r.name);
    s.timeline.emplace(t0_unix_ms, std::move(names));
    if (absl::Status st = s.timeline_file.Open(s.opt.timeline_path); !st.ok()) return st;
  }
  if (absl::Status st = s.acks_file.Open(s.opt.acks_path); !st.ok()) return st;
  if (s.opt.dns_server) {
    DnsRouter::Options dns;
    dns.server = *s.opt.dns_server;
    dns.name = s.opt.dns_name;
    dns.subnets = s.opt.client_subnets;
    for (size_t r = 0; r < s.opt.regions.size(); ++r) {
      for (const std::string& a : s.opt.regions[r].dns_addresses) {
        dns.region_of_address[a] = static_cast<int>(r);
      }
    }
    s.router.emplace(s.io, std::move(dns), s.initial_regions, s.initial_ttls);
    s.router->Start();
  }
  s.signals.emplace(s.io, SIGINT, SIGTERM);
  s.signals->async_wait([&s](std::error_code ec, int signal_number) {
    if (!ec) s.Stop(signal_number);
  });
  s.tick_timer->expires_at(s.t0);
  s.tick_timer->async_wait([&s](std::error_code ec) {
    if (!ec) s.Tick();
  });
  s.progress_timer->expires_at(s.t0 + std::chrono::seconds(1));
  s.progress_timer->async_wait([&s](std::error_code ec) {
    if (!ec) s.Progress();
  });
  s.io.restart();
  s.io.run();
  if (s.opt.progress && s.sec_arrivals + s.sec_responses > 0) s.Progress();
  s.WriteTimeline(true);
  absl::Status timeline_st = s.timeline_file.Close();
  absl::Status acks_st = s.acks_file.Close();
  if (!timeline_st.ok()) return timeline_st;
  if (!acks_st.ok()) return acks_st;

  rep.window_s = std::max(0.0, s.window_end_s - s.window_start_s);
  rep.stopped_by_signal = s.stopped_by_signal;
  rep.acked_orders = s.acked_orders;
  if (s.router) {
    rep.dns.enabled = true;
    rep.dns.queries = s.router->stats().queries;
    rep.dns.timeouts = s.router->stats().timeouts;
    rep.dns.failures = s.router->stats().failures;
    for (const auto& sw : s.router->switches()) {
      rep.dns.switches.push_back(
          {sw.at_unix_ms, s.opt.client_subnets[sw.subnet].text,
           sw.from >= 0 ? s.opt.regions[static_cast<size_t>(sw.from)].name : std::string(),
           s.opt.regions[static_cast<size_t>(sw.to)].name});
    }
  }
  for (const State::Pool& pool : s.pools) {
    for (const auto& c : pool.conns) {
      rep.connects += c->connects();
      rep.stale_retries += c->stale_retries();
    }
  }
  rep.Finalize();
  return rep;
}

}  // namespace meridian::load
