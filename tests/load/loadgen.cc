// meridian-loadgen: drives Meridian regions on this machine with open-loop customer traffic and
// reports per-operation throughput, latency percentiles and errors. See tests/load/README.md.
//
// This file only parses flags and wires the driver; the work is in driver.cc.

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/cli.h"
#include "common/config_files.h"
#include "common/files.h"
#include "common/strings.h"
#include "tests/load/driver.h"
#include "tests/load/target.h"
#include "tests/load/workload.h"

namespace {

constexpr const char* kDefaultMix =
    "browse=40,search=10,cart_add=25,cart_remove=5,checkout=15,get_cart=5";

// The command line as run, with secrets replaced: it is written into the results file.
std::string CommandLine(int argc, char** argv) {
  std::string out;
  bool hide_next = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (hide_next) {
      arg = "<redacted>";
      hide_next = false;
    } else if (arg == "--operator-token") {
      hide_next = true;
    } else if (arg.rfind("--operator-token=", 0) == 0) {
      arg = "--operator-token=<redacted>";
    }
    out += (i ? " " : "") + arg;
  }
  return out;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "meridian-loadgen: %s\n", message.c_str());
  return 2;
}

bool ValidName(const std::string& name) {
  return !name.empty() && name.size() <= 63 &&
         name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") == std::string::npos;
}

// "NAME=VALUE" with a valid region name.
bool SplitPair(const std::string& spec, std::string* name, std::string* value) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos) return false;
  *name = spec.substr(0, eq);
  *value = spec.substr(eq + 1);
  return ValidName(*name) && !value->empty();
}

}  // namespace

int main(int argc, char** argv) {
  namespace load = meridian::load;
  CLI::App app{"meridian-loadgen: open-loop load against a Meridian region on this machine"};
  load::LoadOptions opt;
  std::string target_url, mix_spec = kDefaultMix, out_path = "results/load.json";
  std::string operator_token_file, arrivals = "uniform", dns_spec;
  std::vector<std::string> region_specs, region_address_specs, subnet_specs;
  bool no_progress = false;
  auto* target_opt = app.add_option(
      "--target", target_url,
      "one region's URL on this machine: http://127.0.0.1:PORT (or a local namespace address)");
  app.add_option("--region", region_specs,
                 "NAME=URL, repeatable: several regions, each with its own connection pool")
      ->excludes(target_opt);
  app.add_option("--region-address", region_address_specs,
                 "NAME=IP, repeatable: an address GeoDNS answers for region NAME (default: the "
                 "host of its URL)");
  app.add_option("--dns", dns_spec,
                 "GeoDNS server 127.0.0.1:PORT: customers go where it answers for their client "
                 "subnet, asked again when the answer's TTL runs out");
  app.add_option("--dns-name", opt.dns_name, "the service name to ask for (with --dns)");
  app.add_option("--client-subnet", subnet_specs,
                 "A.B.C.D/LEN, repeatable (with --dns): customer i sends the i-th mod n subnet "
                 "as its EDNS Client Subnet");
  app.add_option("--residency", opt.residency,
                 "residency of newly registered customers: any, or a jurisdiction (us, eu, ...)")
      ->capture_default_str();
  app.add_option("--scarce-products", opt.scarce_products,
                 "extra products with little stock, for oversell checks (with a token)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  app.add_option("--scarce-stock", opt.scarce_stock_units,
                 "units of each scarce product restocked in every region")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1'000'000'000}));
  app.add_option("--scarce-fraction", opt.scarce_fraction,
                 "share of cart_add operations that add a scarce product")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.0, 1.0));
  app.add_option("--scarce-prefix", opt.scarce_prefix,
                 "SKU prefix of the scarce products (PREFIX-00001...); pick a fresh one per run "
                 "to know exactly what was stocked")
      ->capture_default_str();
  app.add_option("--timeline-out", opt.timeline_path,
                 "per-second timeline, JSON lines, written while the run goes");
  app.add_option("--acks-out", opt.acks_path,
                 "acknowledged orders (201 to a checkout), JSON lines, written while the run goes");
  app.add_option("--rate", opt.rate_per_s, "arrivals (requests) per second, all customers")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.1, 100000.0));
  app.add_option("--duration-s", opt.duration_s, "length of the schedule, warmup included")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(1.0, 3600.0));
  app.add_option("--warmup-s", opt.warmup_s, "first seconds excluded from the figures")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.0, 3600.0));
  app.add_option("--max-requests", opt.max_requests, "stop scheduling after this many arrivals")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100'000'000}));
  app.add_option("--customers", opt.customers, "customers registered and logged in at setup")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--connections", opt.connections, "keep-alive connections in the pool")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  auto* token_opt = app.add_option("--operator-token", opt.operator_token,
                                   "operator token: seed --seed-products products with stock");
  app.add_option("--operator-token-file", operator_token_file,
                 "read the operator token from this file (keeps it out of ps and the results)")
      ->check(CLI::ExistingFile)
      ->excludes(token_opt);
  app.add_option("--seed-products", opt.seed_products, "products to seed (with a token)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--seed-stock", opt.seed_stock_units, "units restocked per seeded product")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000'000}));
  app.add_option("--mix", mix_spec,
                 "operation weights: browse, list, search, cart_add, "
                 "cart_update, cart_remove, get_cart, checkout")
      ->capture_default_str();
  app.add_option("--declined-fraction", opt.declined_fraction,
                 "share of checkouts paid with the declined test card (HTTP 402)")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.0, 1.0));
  app.add_option("--replay-fraction", opt.replay_fraction,
                 "share of checkouts that repeat the customer's previous Idempotency-Key")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.0, 1.0));
  app.add_option("--zipf-s", opt.zipf_s, "Zipf exponent of product popularity (0 = uniform)")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.0, 10.0));
  app.add_option("--out", out_path, "results file (JSON)")->capture_default_str();
  app.add_option("--timeout-ms", opt.timeout_ms, "per-request timeout")
      ->capture_default_str()
      ->check(CLI::Range(10, 600000));
  app.add_option("--seed", opt.seed, "random seed for the workload's choices")
      ->capture_default_str()
      // Up to 2^63-1, as meridian-sim: CLI11 reads -1 into an unsigned flag as 2^64-1.
      ->check(CLI::Range(uint64_t{0}, uint64_t{std::numeric_limits<int64_t>::max()}));
  app.add_option("--arrivals", arrivals, "arrival timeline: uniform or poisson")
      ->capture_default_str()
      ->check(CLI::IsMember({"uniform", "poisson"}));
  app.add_option("--max-backlog", opt.max_backlog,
                 "arrivals that may wait for a connection; more are shed (and counted)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000}));
  app.add_option("--customer-prefix", opt.customer_prefix,
                 "customer e-mails are PREFIX-N@loadgen.example.com (reused across runs)")
      ->capture_default_str();
  app.add_option("--max-lag-ms", opt.max_lag_ms,
                 "send-lag p99 above which the run does not count as sustained")
      ->capture_default_str()
      ->check(meridian::common::FiniteRange(0.1, 60000.0));
  app.add_option("--setup-concurrency", opt.setup_concurrency, "parallel requests during setup")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_flag("--no-progress", no_progress, "no per-second progress lines on stderr");
  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;

  const load::LocalRoutes routes = load::LocalRoutes::FromSystem();
  if (target_url.empty() && region_specs.empty()) return Fail("give --target or --region");
  if (!target_url.empty()) region_specs.push_back("target=" + target_url);
  for (const std::string& spec : region_specs) {
    load::RegionTarget region;
    if (!SplitPair(spec, &region.name, &region.url)) {
      return Fail("--region '" + spec + "': expected NAME=URL, NAME of a-z, 0-9 and '-'");
    }
    for (const auto& other : opt.regions) {
      if (other.name == region.name) return Fail("--region: '" + region.name + "' given twice");
    }
    auto target = load::ParseTarget(region.url, &routes);
    if (!target.ok()) return Fail(std::string(target.status().message()));
    region.target = *target;
    region.dns_addresses.push_back(target->address);
    opt.regions.push_back(std::move(region));
  }
  for (const std::string& spec : region_address_specs) {
    std::string name, address;
    if (!SplitPair(spec, &name, &address)) return Fail("--region-address '" + spec + "': NAME=IP");
    auto it = std::find_if(opt.regions.begin(), opt.regions.end(),
                           [&](const load::RegionTarget& r) { return r.name == name; });
    if (it == opt.regions.end()) return Fail("--region-address: no --region named '" + name + "'");
    it->dns_addresses.push_back(address);
  }
  if (!dns_spec.empty()) {
    size_t colon = dns_spec.rfind(':');
    std::string host = dns_spec.substr(0, colon);
    // The whole port, digits only: atoi would read "53x" as 53.
    int port = 0;
    if (colon == std::string::npos ||
        !meridian::ParseInt(std::string_view(dns_spec).substr(colon + 1), &port)) {
      port = 0;
    }
    if (colon == std::string::npos || !load::IsLoopbackLiteral(host) || port < 1 || port > 65535) {
      return Fail("--dns '" + dns_spec +
                  "': expected 127.0.0.1:PORT (a DNS server on this machine)");
    }
    std::error_code ec;
    opt.dns_server =
        asio::ip::udp::endpoint(asio::ip::make_address(host, ec), static_cast<uint16_t>(port));
    if (ec) return Fail("--dns '" + dns_spec + "': " + ec.message());
    if (opt.dns_name.empty()) return Fail("--dns needs --dns-name (e.g. shop.example.test)");
    if (!load::EncodeAQuery(1, opt.dns_name, nullptr).ok()) {
      return Fail("--dns-name '" + opt.dns_name + "' is not a DNS name");
    }
    if (subnet_specs.empty()) return Fail("--dns needs at least one --client-subnet");
  } else if (!subnet_specs.empty() || !opt.dns_name.empty()) {
    return Fail("--client-subnet and --dns-name go with --dns");
  }
  for (const std::string& spec : subnet_specs) {
    auto subnet = load::ParseIpv4Subnet(spec);
    if (!subnet.ok()) return Fail(std::string(subnet.status().message()));
    opt.client_subnets.push_back(*subnet);
  }
  if (opt.residency != "any" &&
      (opt.residency.size() < 2 || opt.residency.size() > 16 ||
       opt.residency.find_first_not_of("abcdefghijklmnopqrstuvwxyz") != std::string::npos)) {
    return Fail("--residency: 'any' or a jurisdiction of 2..16 letters a-z");
  }
  if (!ValidName(opt.scarce_prefix) || opt.scarce_prefix.size() > 40) {
    return Fail("--scarce-prefix: 1..40 characters of a-z, 0-9 and '-'");
  }
  auto mix = load::Mix::Parse(mix_spec);
  if (!mix.ok()) return Fail(std::string(mix.status().message()));
  opt.mix = *mix;
  if (opt.warmup_s >= opt.duration_s) {
    return Fail("--warmup-s must be shorter than --duration-s");
  }
  if (opt.customer_prefix.empty() || opt.customer_prefix.size() > 40 ||
      opt.customer_prefix.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") !=
          std::string::npos) {
    return Fail("--customer-prefix: 1..40 characters of a-z, 0-9, '-' and '_'");
  }
  // The same rules as the daemons' (a region would refuse any other token with 403 mid-run).
  if (!operator_token_file.empty()) {
    auto token = meridian::common::ReadOperatorTokenFile(operator_token_file);
    if (!token.ok()) return Fail("--operator-token-file: " + std::string(token.status().message()));
    opt.operator_token = *std::move(token);
  } else if (!opt.operator_token.empty()) {
    if (absl::Status st = meridian::common::CheckOperatorToken(opt.operator_token); !st.ok()) {
      return Fail("--operator-token: " + std::string(st.message()));
    }
  }
  if (opt.scarce_products > 0 && opt.operator_token.empty()) {
    return Fail("--scarce-products needs the operator token (they are seeded and restocked)");
  }
  opt.poisson = arrivals == "poisson";
  opt.progress = !no_progress;
  // The results are written after the whole run: an --out that cannot be written is a usage
  // error now, not a lost run at the end. The timeline and acks files are written during it.
  const std::pair<const char*, const std::string*> outputs[] = {
      {"--out", &out_path}, {"--timeline-out", &opt.timeline_path}, {"--acks-out", &opt.acks_path}};
  for (const auto& [flag, path] : outputs) {
    if (path->empty() && path != &out_path) continue;  // the other two are optional
    if (absl::Status st = meridian::common::CheckWritableFile(flag, *path); !st.ok()) {
      return Fail(std::string(st.message()));
    }
  }

  // Logs go to stderr beside the progress lines; stdout carries only the result table.
  auto logger = spdlog::stderr_color_mt("loadgen");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);

  load::LoadDriver driver(opt);
  if (absl::Status st = driver.Setup(); !st.ok()) {
    std::fprintf(stderr, "meridian-loadgen: setup failed: %s\n", st.ToString().c_str());
    return 1;
  }
  auto report = driver.Run();
  if (!report.ok()) {
    std::fprintf(stderr, "meridian-loadgen: %s\n", report.status().ToString().c_str());
    return 1;
  }
  report->command_line = CommandLine(argc, argv);
  std::cout << "\n" << report->ToTable() << std::flush;

  // Its folders are made only now: a run refused or failed before this leaves none behind.
  if (absl::Status st = meridian::common::MakeParentFolders(out_path); !st.ok()) {
    std::fprintf(stderr, "meridian-loadgen: could not write %s\n",
                 std::string(st.message()).c_str());
    return 1;
  }
  std::ofstream file(out_path);
  file << report->ToJson().dump(2) << "\n";
  file.close();
  if (!file) {
    std::fprintf(stderr, "meridian-loadgen: could not write %s\n", out_path.c_str());
    return 1;
  }
  std::fprintf(stderr, "meridian-loadgen: results written to %s\n", out_path.c_str());
  return 0;
}
