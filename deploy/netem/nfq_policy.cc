#include "deploy/netem/nfq_policy.h"

#include <arpa/inet.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace meridian::netem {
namespace {

// Debian's Abseil has its own absl::string_view (not std::string_view), so absl::StrCat and
// StrSplit do not take ours; these few helpers avoid conversions everywhere.
template <typename... Parts>
std::string Cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::string_view(message.data(), message.size()));
}

std::string_view Strip(std::string_view s) {
  const char* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Fields separated by any of `seps`, empty ones skipped.
std::vector<std::string_view> Fields(std::string_view s, std::string_view seps) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    const size_t b = s.find_first_not_of(seps, i);
    if (b == std::string_view::npos) break;
    size_t e = s.find_first_of(seps, b);
    if (e == std::string_view::npos) e = s.size();
    out.push_back(s.substr(b, e - b));
    i = e;
  }
  return out;
}

absl::StatusOr<double> ParseNumber(std::string_view key, std::string_view value, double max) {
  double v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size() || !std::isfinite(v)) {
    return Invalid(Cat(key, "=", value, ": not a number"));
  }
  if (v < 0 || v > max) {
    return Invalid(Cat(key, "=", value, ": must be between 0 and ", max));
  }
  return v;
}

std::string FormatNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

std::string Ipv4Net::ToString() const {
  in_addr a{htonl(addr)};
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &a, buf, sizeof buf);
  int len = 0;
  for (uint32_t m = mask; m != 0; m <<= 1) ++len;
  return Cat(buf, "/", len);
}

std::string Rule::ToString() const {
  std::vector<std::string> parts;
  if (queue) parts.push_back(Cat("queue=", *queue));
  if (src) parts.push_back(Cat("src=", src->ToString()));
  if (dst) parts.push_back(Cat("dst=", dst->ToString()));
  parts.push_back(Cat("delay=", FormatNumber(delay_ms)));
  parts.push_back(Cat("loss=", FormatNumber(loss_pct)));
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : " ") + p;
  return out;
}

absl::StatusOr<Ipv4Net> ParseIpv4Net(std::string_view text) {
  std::string_view host = text;
  int len = 32;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    std::string_view l = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(l.data(), l.data() + l.size(), len);
    if (l.empty() || ec != std::errc() || end != l.data() + l.size() || len < 0 || len > 32) {
      return Invalid(Cat("'", text, "': prefix length must be 0..32"));
    }
  }
  in_addr a{};
  if (::inet_pton(AF_INET, std::string(host).c_str(), &a) != 1) {
    return Invalid(Cat("'", text, "': not an IPv4 address"));
  }
  Ipv4Net net;
  net.mask = len == 0 ? 0 : ~uint32_t{0} << (32 - len);
  net.addr = ntohl(a.s_addr);
  if ((net.addr & ~net.mask) != 0) {
    return Invalid(Cat("'", text, "': address has bits set beyond the prefix length"));
  }
  return net;
}

absl::StatusOr<Rule> ParseRule(std::string_view text) {
  Rule rule;
  bool any = false;
  bool seen_queue = false, seen_src = false, seen_dst = false, seen_delay = false,
       seen_loss = false;
  for (std::string_view field : Fields(text, " ,\t")) {
    auto eq = field.find('=');
    if (eq == std::string_view::npos) {
      return Invalid(Cat("'", field, "': expected key=value (queue, src, dst, delay, loss)"));
    }
    std::string_view key = field.substr(0, eq), value = field.substr(eq + 1);
    auto once = [&](bool& seen) -> absl::Status {
      if (seen) return Invalid(Cat(key, " given twice"));
      seen = true;
      return absl::OkStatus();
    };
    absl::Status st;
    if (key == "queue") {
      if (st = once(seen_queue); !st.ok()) return st;
      uint32_t q = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), q);
      if (value.empty() || ec != std::errc() || end != value.data() + value.size() || q > 65535) {
        return Invalid(Cat("queue=", value, ": must be a queue number 0..65535"));
      }
      rule.queue = static_cast<uint16_t>(q);
    } else if (key == "src" || key == "dst") {
      if (st = once(key == "src" ? seen_src : seen_dst); !st.ok()) return st;
      auto net = ParseIpv4Net(value);
      if (!net.ok()) return Invalid(Cat(key, "=", net.status().message()));
      (key == "src" ? rule.src : rule.dst) = *net;
    } else if (key == "delay") {
      if (st = once(seen_delay); !st.ok()) return st;
      auto v = ParseNumber(key, value, kDelayMsMax);
      if (!v.ok()) return v.status();
      rule.delay_ms = *v;
    } else if (key == "loss") {
      if (st = once(seen_loss); !st.ok()) return st;
      auto v = ParseNumber(key, value, kLossPctMax);
      if (!v.ok()) return v.status();
      rule.loss_pct = *v;
    } else {
      return Invalid(Cat("unknown key '", key, "' (queue, src, dst, delay, loss)"));
    }
    any = true;
  }
  if (!any) return Invalid("empty rule");
  if (!seen_delay && !seen_loss) {
    return Invalid("a rule needs delay= or loss= (or both)");
  }
  return rule;
}

absl::StatusOr<std::vector<Rule>> ParseRules(std::string_view text) {
  std::vector<Rule> rules;
  int line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = Strip(line);
    if (line.empty()) continue;
    auto rule = ParseRule(line);
    if (!rule.ok()) {
      return Invalid(Cat("line ", line_no, ": ", rule.status().message()));
    }
    rules.push_back(*rule);
  }
  return rules;
}

absl::StatusOr<std::vector<Rule>> LoadRulesFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Invalid(Cat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  auto rules = ParseRules(ss.str());
  if (!rules.ok()) {
    return Invalid(Cat(path, ": ", rules.status().message()));
  }
  return rules;
}

std::optional<PacketAddrs> ParseIpv4Header(const uint8_t* data, size_t len) {
  if (data == nullptr || len < 20 || (data[0] >> 4) != 4) return std::nullopt;
  auto word = [&](size_t at) {
    return uint32_t{data[at]} << 24 | uint32_t{data[at + 1]} << 16 | uint32_t{data[at + 2]} << 8 |
           uint32_t{data[at + 3]};
  };
  return PacketAddrs{word(12), word(16)};
}

Policy::Policy(std::vector<Rule> rules, Rule fallback, uint64_t seed)
    : rules_(std::move(rules)),
      fallback_(std::move(fallback)),
      counters_(rules_.size()),
      rng_(seed) {}

int Policy::Match(uint16_t queue, const std::optional<PacketAddrs>& addrs) const {
  for (size_t i = 0; i < rules_.size(); ++i) {
    const Rule& r = rules_[i];
    if (r.queue && *r.queue != queue) continue;
    if ((r.src || r.dst) && !addrs) continue;
    if (r.src && !r.src->Contains(addrs->src)) continue;
    if (r.dst && !r.dst->Contains(addrs->dst)) continue;
    return static_cast<int>(i);
  }
  return -1;
}

bool Policy::Lost(double loss_pct) {
  if (loss_pct <= 0) return false;
  if (loss_pct >= 100) return true;
  // Compare a raw 64-bit draw against p * 2^64: exact and the same on every standard library.
  const auto threshold = static_cast<uint64_t>(std::ldexp(loss_pct / 100.0, 64));
  return rng_() < threshold;
}

Decision Policy::Decide(uint16_t queue, const std::optional<PacketAddrs>& addrs,
                        Clock::time_point now) {
  Decision d;
  d.rule = Match(queue, addrs);
  const Rule& r = d.rule < 0 ? fallback_ : rules_[static_cast<size_t>(d.rule)];
  RuleCounters& c = d.rule < 0 ? fallback_counters_ : counters_[static_cast<size_t>(d.rule)];
  ++c.packets;
  if (Lost(r.loss_pct)) {
    ++c.lost;
    d.kind = Decision::Kind::kDrop;
  } else if (r.delay_ms > 0) {
    d.kind = Decision::Kind::kHold;
    d.release = now + std::chrono::duration_cast<Clock::duration>(
                          std::chrono::duration<double, std::milli>(r.delay_ms));
  }
  return d;
}

void Policy::ReplaceRules(std::vector<Rule> rules) {
  rules_ = std::move(rules);
  counters_.assign(rules_.size(), RuleCounters{});
}

}  // namespace meridian::netem
