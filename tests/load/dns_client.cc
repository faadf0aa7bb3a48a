#include "tests/load/dns_client.h"

#include <ares.h>
#include <arpa/inet.h>

#include <algorithm>
#include <asio/error.hpp>
#include <charconv>
#include <random>

#include "absl/status/status.h"

namespace meridian::load {
namespace {

constexpr uint16_t kTypeA = 1;
constexpr uint16_t kTypeOpt = 41;
constexpr uint16_t kClassIn = 1;
constexpr uint16_t kOptionEcs = 8;
constexpr uint16_t kUdpPayload = 1232;
constexpr int kMaxAddresses = 64;

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Put16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v & 0xff));
}

}  // namespace

absl::StatusOr<Ipv4Subnet> ParseIpv4Subnet(std::string_view cidr) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError("client subnet '" + std::string(cidr) +
                                      "': " + std::string(why));
  };
  size_t slash = cidr.find('/');
  if (slash == std::string_view::npos) return bad("expected A.B.C.D/LEN");
  std::string addr(cidr.substr(0, slash));
  std::string_view len = cidr.substr(slash + 1);
  in_addr a{};
  if (addr.size() > 15 || inet_pton(AF_INET, addr.c_str(), &a) != 1) {
    return bad("not an IPv4 address");
  }
  int prefix = -1;
  auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), prefix);
  if (ec != std::errc() || end != len.data() + len.size() || prefix < 0 || prefix > 32) {
    return bad("the prefix length must be 0..32");
  }
  uint32_t host = ntohl(a.s_addr);
  uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  if ((host & ~mask) != 0) return bad("host bits must be zero");
  return Ipv4Subnet{host, prefix, std::string(cidr)};
}

absl::StatusOr<std::string> EncodeAQuery(uint16_t id, std::string_view name,
                                         const Ipv4Subnet* subnet) {
  std::string_view n = name;
  if (!n.empty() && n.back() == '.') n.remove_suffix(1);
  if (n.empty() || n.size() > 253) {
    return absl::InvalidArgumentError("DNS name '" + std::string(name) + "': 1..253 characters");
  }
  std::string out;
  Put16(&out, id);
  Put16(&out, 0x0000);  // a standard query, RD=0
  Put16(&out, 1);       // QDCOUNT
  Put16(&out, 0);       // ANCOUNT
  Put16(&out, 0);       // NSCOUNT
  Put16(&out, 1);       // ARCOUNT: the OPT record
  size_t start = 0;
  while (start <= n.size()) {
    size_t dot = n.find('.', start);
    if (dot == std::string_view::npos) dot = n.size();
    std::string_view label = n.substr(start, dot - start);
    if (label.empty() || label.size() > 63) {
      return absl::InvalidArgumentError("DNS name '" + std::string(name) +
                                        "': labels must be 1..63 bytes");
    }
    out.push_back(static_cast<char>(label.size()));
    out.append(label);
    start = dot + 1;
  }
  out.push_back('\0');
  Put16(&out, kTypeA);
  Put16(&out, kClassIn);
  // OPT: root owner, type 41, class = UDP payload size, TTL = extended rcode/version/flags 0.
  out.push_back('\0');
  Put16(&out, kTypeOpt);
  Put16(&out, kUdpPayload);
  Put16(&out, 0);
  Put16(&out, 0);
  if (subnet == nullptr) {
    Put16(&out, 0);  // RDLENGTH
    return out;
  }
  // ECS: family 1 (IPv4), source prefix, scope 0, the address cut to whole prefix bytes.
  const int addr_bytes = (subnet->prefix + 7) / 8;
  Put16(&out, static_cast<uint16_t>(4 + 4 + addr_bytes));  // RDLENGTH
  Put16(&out, kOptionEcs);
  Put16(&out, static_cast<uint16_t>(4 + addr_bytes));
  Put16(&out, 1);
  out.push_back(static_cast<char>(subnet->prefix));
  out.push_back('\0');
  for (int i = 0; i < addr_bytes; ++i) {
    out.push_back(static_cast<char>((subnet->address >> (24 - 8 * i)) & 0xff));
  }
  return out;
}

absl::StatusOr<DnsAnswer> DecodeAAnswer(std::string_view packet) {
  if (packet.size() < 12) return absl::InvalidArgumentError("DNS reply: shorter than a header");
  const auto* p = reinterpret_cast<const unsigned char*>(packet.data());
  if ((p[2] & 0x80) == 0) return absl::InvalidArgumentError("DNS reply: QR bit not set");
  DnsAnswer answer;
  answer.id = static_cast<uint16_t>(p[0] << 8 | p[1]);
  answer.rcode = p[3] & 0x0f;
  const int ancount = p[6] << 8 | p[7];
  if (answer.rcode != 0 || ancount == 0) return answer;
  std::array<ares_addrttl, kMaxAddresses> ttls{};
  int n = kMaxAddresses;
  int rc = ares_parse_a_reply(p, static_cast<int>(packet.size()), nullptr, ttls.data(), &n);
  if (rc == ARES_ENODATA) return answer;  // answers, but none of type A (e.g. only a CNAME)
  if (rc != ARES_SUCCESS) {
    return absl::InvalidArgumentError(std::string("DNS reply: ") + ares_strerror(rc));
  }
  int ttl = -1;
  for (int i = 0; i < n; ++i) {
    char text[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &ttls[static_cast<size_t>(i)].ipaddr, text, sizeof text);
    answer.addresses.emplace_back(text);
    int t = std::max(0, ttls[static_cast<size_t>(i)].ttl);
    ttl = ttl < 0 ? t : std::min(ttl, t);
  }
  answer.ttl_s = std::max(ttl, 0);
  return answer;
}

absl::StatusOr<DnsAnswer> ResolveOnce(const asio::ip::udp::endpoint& server, std::string_view name,
                                      const Ipv4Subnet& subnet, std::chrono::milliseconds timeout) {
  const auto id = static_cast<uint16_t>(std::random_device{}());
  auto query = EncodeAQuery(id, name, &subnet);
  if (!query.ok()) return query.status();
  asio::io_context io;
  asio::ip::udp::socket socket(io);
  std::error_code ec;
  socket.open(server.protocol(), ec);
  if (ec) return absl::UnavailableError("DNS: opening a UDP socket: " + ec.message());
  std::optional<absl::StatusOr<DnsAnswer>> result;
  std::array<char, 4096> buf{};
  asio::ip::udp::endpoint from;
  asio::steady_timer timer(io);
  std::function<void()> receive = [&] {
    socket.async_receive_from(asio::buffer(buf), from, [&](std::error_code e, size_t n) {
      if (e) {
        if (!result) result = absl::UnavailableError("DNS: " + e.message());
        timer.cancel();
        return;
      }
      auto a = DecodeAAnswer(std::string_view(buf.data(), n));
      if (from != server || (a.ok() && a->id != id)) {  // not ours: keep listening
        receive();
        return;
      }
      result = std::move(a);
      timer.cancel();
    });
  };
  socket.async_send_to(asio::buffer(*query), server, [&](std::error_code e, size_t) {
    if (e && !result) {
      result = absl::UnavailableError("DNS: sending to " + server.address().to_string() + ": " +
                                      e.message());
      socket.close();
      timer.cancel();
    }
  });
  receive();
  timer.expires_after(timeout);
  timer.async_wait([&](std::error_code e) {
    if (e) return;
    if (!result) {
      result = absl::DeadlineExceededError("DNS: no reply from " + server.address().to_string() +
                                           ":" + std::to_string(server.port()) + " within " +
                                           std::to_string(timeout.count()) + " ms");
    }
    socket.close();
  });
  io.run();
  return *result;
}

DnsRouter::DnsRouter(asio::io_context& io, Options options, std::vector<int> initial_regions,
                     std::vector<int> initial_ttls_s)
    : io_(io),
      opt_(std::move(options)),
      socket_(io),
      next_id_(static_cast<uint16_t>(std::random_device{}())) {
  subnets_.resize(opt_.subnets.size());
  for (size_t i = 0; i < subnets_.size(); ++i) {
    subnets_[i].region = initial_regions[i];
    subnets_[i].timer = std::make_unique<asio::steady_timer>(io_);
  }
  initial_ttls_ = std::move(initial_ttls_s);
}

void DnsRouter::Start() {
  std::error_code ec;
  socket_.open(opt_.server.protocol(), ec);
  Receive();
  for (size_t i = 0; i < subnets_.size(); ++i) {
    Schedule(i, std::chrono::milliseconds(1000LL * initial_ttls_[i]));
  }
}

void DnsRouter::Stop() {
  stopped_ = true;
  for (auto& s : subnets_) s.timer->cancel();
  std::error_code ec;
  socket_.close(ec);
}

void DnsRouter::Schedule(size_t subnet, std::chrono::milliseconds after) {
  after = std::clamp(after, opt_.min_refresh, opt_.max_refresh);
  Subnet& s = subnets_[subnet];
  s.timer->expires_after(after);
  s.timer->async_wait([this, subnet](std::error_code ec) {
    if (!ec && !stopped_) Ask(subnet);
  });
}

void DnsRouter::Ask(size_t subnet) {
  Subnet& s = subnets_[subnet];
  if (s.pending_id != 0) pending_.erase(s.pending_id);
  uint16_t id = ++next_id_;
  if (id == 0) id = ++next_id_;
  auto query = EncodeAQuery(id, opt_.name, &opt_.subnets[subnet]);
  if (!query.ok()) {  // the name was checked at setup; counted, never expected
    ++stats_.failures;
    Schedule(subnet, opt_.retry);
    return;
  }
  s.pending_id = id;
  pending_[id] = subnet;
  ++stats_.queries;
  auto buffer = std::make_shared<std::string>(*std::move(query));
  socket_.async_send_to(asio::buffer(*buffer), opt_.server,
                        [buffer](std::error_code, size_t) {});  // a lost send times out
  s.timer->expires_after(opt_.timeout);
  s.timer->async_wait([this, subnet, id](std::error_code ec) {
    if (ec || stopped_ || subnets_[subnet].pending_id != id) return;
    ++stats_.timeouts;
    pending_.erase(id);
    subnets_[subnet].pending_id = 0;
    Schedule(subnet, opt_.retry);
  });
}

void DnsRouter::Receive() {
  socket_.async_receive_from(asio::buffer(buf_), from_, [this](std::error_code ec, size_t n) {
    if (stopped_ || ec == asio::error::operation_aborted) return;
    if (!ec && from_ == opt_.server) {
      auto answer = DecodeAAnswer(std::string_view(buf_.data(), n));
      if (answer.ok()) {
        auto it = pending_.find(answer->id);
        if (it != pending_.end()) {
          size_t subnet = it->second;
          pending_.erase(it);
          subnets_[subnet].pending_id = 0;
          OnAnswer(subnet, answer);
        }
      } else {
        ++stats_.failures;  // its subnet times out and retries
      }
    }
    Receive();
  });
}

void DnsRouter::OnAnswer(size_t subnet, const absl::StatusOr<DnsAnswer>& answer) {
  Subnet& s = subnets_[subnet];
  std::vector<int> known;
  for (const std::string& a : answer->addresses) {
    auto it = opt_.region_of_address.find(a);
    if (it == opt_.region_of_address.end()) {
      ++stats_.unknown_addresses[a];
    } else {
      known.push_back(it->second);
    }
  }
  if (known.empty()) {
    ++stats_.failures;
    Schedule(subnet, opt_.retry);
    return;
  }
  int next = std::find(known.begin(), known.end(), s.region) != known.end() ? s.region : known[0];
  if (next != s.region) {
    switches_.push_back(Switch{UnixMs(), subnet, s.region, next});
    s.region = next;
  }
  Schedule(subnet, std::chrono::milliseconds(1000LL * answer->ttl_s));
}

}  // namespace meridian::load
