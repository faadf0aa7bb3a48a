// meridian-netem-nfq: delay and loss for packets that iptables sends to NFQUEUE.
//
// The kernel here has no netem, so region emulation sends inter-region packets to a netfilter
// queue (`iptables ... -j NFQUEUE --queue-num N --queue-bypass`) and this program decides each:
// it matches the packet against rules (queue number, IPv4 source/destination), drops it with the
// rule's loss probability (seeded RNG), or holds it for the rule's delay and then accepts it.
// Held packets stay in the kernel; we keep only their ids in a heap ordered by release time, and
// one thread waits (ppoll with a nanosecond timeout) for the earliest release or the next packet,
// so there is no thread or timer per packet. At most --max-held packets are held; beyond that a
// packet is dropped and counted, as a full router buffer would.
//
// Signals: SIGUSR1 prints a stats line (and rewrites --stats-file); SIGHUP reloads --rules-file
// (a bad file is reported and changes nothing; a good one restarts the per-rule counters, the
// release lateness figures and the held high-water mark); SIGTERM/SIGINT accept every held packet,
// unbind and exit 0. With --queue-bypass on the iptables rule, packets flow undelayed while no
// program is bound to the queue.

#include <arpa/inet.h>
#include <sys/socket.h>
// <linux/netfilter.h> needs the two above first.
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/cli.h"
#include "common/files.h"
#include "deploy/netem/nfq_policy.h"

extern "C" {
#include <libnetfilter_queue/libnetfilter_queue.h>
}

namespace {

using meridian::netem::Clock;
using meridian::netem::Decision;
using meridian::netem::HoldQueue;
using meridian::netem::Policy;
using meridian::netem::Rule;

constexpr const char* kProg = "meridian-netem-nfq";
// Packets copied to us per packet: enough for an IPv4 header, which is all the rules look at.
constexpr uint32_t kCopyBytes = 64;
// Messages read per wake before releasing due packets again, so a flood cannot delay releases.
constexpr int kReadBurst = 256;

struct Options {
  std::vector<uint16_t> queues;
  double delay_ms = 0;
  double loss_pct = 0;
  std::vector<std::string> rules;
  std::string rules_file;
  uint64_t seed = 0;
  bool seed_given = false;
  size_t max_held = 8192;
  double stats_interval_s = 0;
  std::string stats_file;
  bool probe = false;
};

struct Stats {
  uint64_t received = 0;
  uint64_t accepted_now = 0;  // no delay, no loss: verdict at once
  uint64_t held = 0;
  uint64_t released = 0;
  uint64_t lost = 0;
  uint64_t overflow = 0;  // dropped because --max-held packets were already held
  uint64_t enobufs = 0;   // the kernel could not hand us packets (socket buffer full)
  uint64_t verdict_errors = 0;
  uint64_t reloads = 0;
  uint64_t reload_errors = 0;
  int64_t late_us_max = 0;  // how late a release was, worst case
  int64_t late_us_sum = 0;
};

class App;

Rule DefaultRule(const Options& o) {
  Rule r;
  r.delay_ms = o.delay_ms;
  r.loss_pct = o.loss_pct;
  return r;
}

struct Queue {
  App* app = nullptr;
  uint16_t num = 0;
  nfq_q_handle* qh = nullptr;
};

struct HeldPacket {
  Queue* queue;
  uint32_t id;
};

// Kernel counters of a queue, from /proc/net/netfilter/nfnetlink_queue (this netns).
struct KernelQueueStats {
  uint64_t total = 0, dropped = 0, user_dropped = 0;
};

std::map<uint16_t, KernelQueueStats> ReadKernelStats() {
  std::map<uint16_t, KernelQueueStats> out;
  std::ifstream in("/proc/net/netfilter/nfnetlink_queue");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    uint64_t num = 0, portid = 0, total = 0, mode = 0, range = 0, dropped = 0, user = 0;
    if (ss >> num >> portid >> total >> mode >> range >> dropped >> user) {
      out[static_cast<uint16_t>(num)] = {total, dropped, user};
    }
  }
  return out;
}

class App {
 public:
  App(Options o, std::vector<Rule> rules, uint64_t seed)
      : opts_(std::move(o)),
        policy_(std::move(rules), DefaultRule(opts_), seed),
        held_(opts_.max_held),
        seed_(seed) {}

  ~App() { Close(); }

  // Binds every queue; a clear error if one cannot be bound.
  bool Open() {
    h_ = nfq_open();
    if (h_ == nullptr) {
      std::fprintf(stderr,
                   "%s: cannot open the netfilter queue socket: %s (needs root or CAP_NET_ADMIN "
                   "and the nfnetlink_queue kernel module)\n",
                   kProg, std::strerror(errno));
      return false;
    }
    for (uint16_t num : opts_.queues) {
      auto q = std::make_unique<Queue>();
      q->app = this;
      q->num = num;
      q->qh = nfq_create_queue(h_, num, &App::OnPacketThunk, q.get());
      if (q->qh == nullptr) {
        std::fprintf(stderr,
                     "%s: cannot bind queue %u: %s (another program may hold it, or this "
                     "process lacks CAP_NET_ADMIN in its network namespace)\n",
                     kProg, num, std::strerror(errno));
        return false;
      }
      if (nfq_set_mode(q->qh, NFQNL_COPY_PACKET, kCopyBytes) < 0) {
        std::fprintf(stderr, "%s: queue %u: cannot set copy mode: %s\n", kProg, num,
                     std::strerror(errno));
        return false;
      }
      // Room in the kernel for everything we hold plus a burst on its way to us.
      if (nfq_set_queue_maxlen(q->qh, static_cast<uint32_t>(opts_.max_held + 4096)) < 0) {
        std::fprintf(stderr, "%s: queue %u: cannot set the queue length: %s\n", kProg, num,
                     std::strerror(errno));
        return false;
      }
      // Take GSO packets whole: we never touch payloads, so segmenting them is wasted work.
      if (nfq_set_queue_flags(q->qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0) {
        std::fprintf(stderr, "%s: queue %u: kernel does not take NFQA_CFG_F_GSO (%s); going on\n",
                     kProg, num, std::strerror(errno));
      }
      queues_.push_back(std::move(q));
    }
    fd_ = nfq_fd(h_);
    nfnl_rcvbufsiz(nfq_nfnlh(h_), 8u << 20);
    int on = 1;
    // An overrun costs those packets (counted by the kernel), not the socket.
    ::setsockopt(fd_, SOL_NETLINK, NETLINK_NO_ENOBUFS, &on, sizeof on);
    return true;
  }

  // The event loop; returns the exit code.
  int Run() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGTERM, SIGINT, SIGUSR1, SIGHUP}) sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
      std::fprintf(stderr, "%s: signalfd: %s\n", kProg, std::strerror(errno));
      return 1;
    }
    // Release times are kept to the microsecond; the default 50 us timer slack would add to each.
    ::prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    std::fprintf(stderr,
                 "%s: bound queue(s) %s; seed %llu; max held %zu; default delay %g ms loss %g %%\n",
                 kProg, QueueList().c_str(), static_cast<unsigned long long>(seed_), opts_.max_held,
                 opts_.delay_ms, opts_.loss_pct);
    for (const Rule& r : policy_.rules())
      std::fprintf(stderr, "%s: rule %s\n", kProg, r.ToString().c_str());
    WriteStatsFile();

    const auto stats_every = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(opts_.stats_interval_s));
    Clock::time_point next_stats = Clock::now() + stats_every;
    std::vector<char> buf(1 << 16);
    for (;;) {
      Clock::time_point now = Clock::now();
      ReleaseDue(now);
      if (opts_.stats_interval_s > 0 && now >= next_stats) {
        PrintStats();
        WriteStatsFile();
        next_stats = now + stats_every;
      }
      std::optional<Clock::time_point> wake = held_.NextRelease();
      if (opts_.stats_interval_s > 0 && (!wake || next_stats < *wake)) wake = next_stats;
      timespec ts{};
      timespec* timeout = nullptr;
      if (wake) {
        auto ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(*wake - Clock::now()).count();
        if (ns < 0) ns = 0;
        ts.tv_sec = static_cast<time_t>(ns / 1000000000);
        ts.tv_nsec = static_cast<long>(ns % 1000000000);
        timeout = &ts;
      }
      pollfd fds[2] = {{fd_, POLLIN, 0}, {sfd, POLLIN, 0}};
      int n = ::ppoll(fds, 2, timeout, nullptr);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::fprintf(stderr, "%s: ppoll: %s\n", kProg, std::strerror(errno));
        return 1;
      }
      if (fds[1].revents & POLLIN) {
        signalfd_siginfo si{};
        while (::read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
          if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            Shutdown();
            ::close(sfd);
            return 0;
          }
          if (si.ssi_signo == SIGUSR1) {
            PrintStats();
            WriteStatsFile();
          }
          if (si.ssi_signo == SIGHUP) Reload();
        }
      }
      if (fds[0].revents & POLLIN) {
        for (int k = 0; k < kReadBurst; ++k) {
          ssize_t r = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
          if (r < 0) {
            if (errno == ENOBUFS) {
              ++stats_.enobufs;
              continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            std::fprintf(stderr, "%s: recv: %s\n", kProg, std::strerror(errno));
            return 1;
          }
          nfq_handle_packet(h_, buf.data(), static_cast<int>(r));
        }
      }
    }
  }

 private:
  static int OnPacketThunk(nfq_q_handle*, nfgenmsg*, nfq_data* nfa, void* data) {
    auto* q = static_cast<Queue*>(data);
    q->app->OnPacket(*q, nfa);
    return 0;
  }

  void OnPacket(Queue& q, nfq_data* nfa) {
    const nfqnl_msg_packet_hdr* ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == nullptr) return;
    const uint32_t id = ntohl(ph->packet_id);
    unsigned char* payload = nullptr;
    int len = nfq_get_payload(nfa, &payload);
    const auto addrs =
        meridian::netem::ParseIpv4Header(payload, len > 0 ? static_cast<size_t>(len) : 0);
    ++stats_.received;
    if (shutting_down_) {
      ++stats_.accepted_now;
      Verdict(q, id, NF_ACCEPT);
      return;
    }
    const Clock::time_point now = Clock::now();
    const Decision d = policy_.Decide(q.num, addrs, now);
    switch (d.kind) {
      case Decision::Kind::kAccept:
        ++stats_.accepted_now;
        Verdict(q, id, NF_ACCEPT);
        break;
      case Decision::Kind::kDrop:
        ++stats_.lost;
        Verdict(q, id, NF_DROP);
        break;
      case Decision::Kind::kHold:
        if (held_.Push(d.release, HeldPacket{&q, id})) {
          ++stats_.held;
        } else {
          ++stats_.overflow;
          Verdict(q, id, NF_DROP);
        }
        break;
    }
  }

  void Verdict(Queue& q, uint32_t id, uint32_t verdict) {
    if (nfq_set_verdict(q.qh, id, verdict, 0, nullptr) < 0) ++stats_.verdict_errors;
  }

  void ReleaseDue(Clock::time_point now) {
    held_.PopDue(now, [&](const HeldPacket& p, Clock::time_point release) {
      Verdict(*p.queue, p.id, NF_ACCEPT);
      ++stats_.released;
      // How late this release is: timer wake-up plus the verdicts issued before it.
      const int64_t late =
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - release).count();
      stats_.late_us_max = std::max(stats_.late_us_max, late);
      stats_.late_us_sum += late;
      ++late_samples_;
    });
  }

  void Reload() {
    if (opts_.rules_file.empty()) {
      std::fprintf(stderr, "%s: SIGHUP ignored: no --rules-file to reload\n", kProg);
      return;
    }
    auto loaded = meridian::netem::LoadRulesFile(opts_.rules_file);
    if (!loaded.ok()) {
      ++stats_.reload_errors;
      std::fprintf(stderr, "%s: reload failed, rules unchanged: %s\n", kProg,
                   std::string(loaded.status().message()).c_str());
      WriteStatsFile();
      return;
    }
    std::vector<Rule> rules = CommandLineRules();
    rules.insert(rules.end(), loaded->begin(), loaded->end());
    policy_.ReplaceRules(std::move(rules));
    // Per-rule counters restart with the new rules; so do the timing figures, so that each
    // setting's lateness and queue depth can be read on their own.
    stats_.late_us_max = 0;
    stats_.late_us_sum = 0;
    late_samples_ = 0;
    held_.ResetHighWater();
    ++stats_.reloads;
    std::fprintf(stderr, "%s: reloaded %s: %zu rule(s)\n", kProg, opts_.rules_file.c_str(),
                 policy_.rules().size());
    for (const Rule& r : policy_.rules())
      std::fprintf(stderr, "%s: rule %s\n", kProg, r.ToString().c_str());
    WriteStatsFile();
  }

  std::vector<Rule> CommandLineRules() const {
    std::vector<Rule> rules;
    for (const auto& text : opts_.rules) rules.push_back(*meridian::netem::ParseRule(text));
    return rules;
  }

  // Accepts everything, held or on its way, and leaves no packet in the kernel's queue: unbinding
  // a queue makes the kernel DROP whatever is still queued there. So first the queue takes no
  // more packets (length 0 with fail-open: the kernel accepts new ones itself), then we drain
  // what was already sent to us and release what we hold, and only then unbind.
  void Shutdown() {
    shutting_down_ = true;
    for (auto& q : queues_) {
      if (nfq_set_queue_flags(q->qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN) < 0 ||
          nfq_set_queue_maxlen(q->qh, 0) < 0) {
        std::fprintf(stderr,
                     "%s: queue %u: cannot stop queueing (%s); packets that arrive "
                     "during shutdown may be dropped\n",
                     kProg, q->num, std::strerror(errno));
      }
    }
    DrainSocket();
    const size_t n = held_.PopAll([&](const HeldPacket& p, Clock::time_point) {
      Verdict(*p.queue, p.id, NF_ACCEPT);
      ++stats_.released;
    });
    DrainSocket();
    std::fprintf(stderr, "%s: SIGTERM: accepted %zu held packet(s), exiting\n", kProg, n);
    PrintStats();
    WriteStatsFile();
    Close();
  }

  // Handles every message already in the socket (in shutdown, each packet is accepted at once).
  void DrainSocket() {
    std::vector<char> buf(1 << 16);
    for (;;) {
      ssize_t r = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
      if (r < 0 && errno == ENOBUFS) continue;
      if (r <= 0) return;
      nfq_handle_packet(h_, buf.data(), static_cast<int>(r));
    }
  }

  void Close() {
    for (auto& q : queues_) {
      if (q->qh != nullptr) nfq_destroy_queue(q->qh);
      q->qh = nullptr;
    }
    if (h_ != nullptr) nfq_close(h_);
    h_ = nullptr;
  }

  std::string QueueList() const {
    std::string s;
    for (uint16_t q : opts_.queues) s += (s.empty() ? "" : ",") + std::to_string(q);
    return s;
  }

  nlohmann::json StatsJson() const {
    nlohmann::json j = {
        {"queues", opts_.queues},
        {"seed", seed_},
        {"held_now", held_.size()},
        {"held_max", held_.high_water()},
        {"capacity", held_.capacity()},
        {"received", stats_.received},
        {"accepted_now", stats_.accepted_now},
        {"held", stats_.held},
        {"released", stats_.released},
        {"lost", stats_.lost},
        {"overflow", stats_.overflow},
        {"enobufs", stats_.enobufs},
        {"verdict_errors", stats_.verdict_errors},
        {"reloads", stats_.reloads},
        {"reload_errors", stats_.reload_errors},
        {"release_late_us_max", stats_.late_us_max},
        {"release_late_us_mean",
         late_samples_ == 0 ? 0.0 : static_cast<double>(stats_.late_us_sum) / late_samples_},
    };
    auto kernel = ReadKernelStats();
    nlohmann::json kq = nlohmann::json::object();
    for (uint16_t q : opts_.queues) {
      if (auto it = kernel.find(q); it != kernel.end()) {
        kq[std::to_string(q)] = {{"waiting", it->second.total},
                                 {"dropped_queue_full", it->second.dropped},
                                 {"dropped_socket_full", it->second.user_dropped}};
      }
    }
    j["kernel"] = kq;
    nlohmann::json rules = nlohmann::json::array();
    for (size_t i = 0; i < policy_.rules().size(); ++i) {
      rules.push_back({{"rule", policy_.rules()[i].ToString()},
                       {"packets", policy_.counters()[i].packets},
                       {"lost", policy_.counters()[i].lost}});
    }
    rules.push_back({{"rule", "default " + policy_.fallback().ToString()},
                     {"packets", policy_.fallback_counters().packets},
                     {"lost", policy_.fallback_counters().lost}});
    j["rules"] = rules;
    return j;
  }

  void PrintStats() const {
    const nlohmann::json j = StatsJson();
    std::string line = std::string(kProg) + ": stats";
    for (const char* k :
         {"held_now", "held_max", "received", "accepted_now", "held", "released", "lost",
          "overflow", "enobufs", "verdict_errors", "reloads", "release_late_us_max"}) {
      line += std::string(" ") + k + "=" + j[k].dump();
    }
    for (auto& [q, v] : j["kernel"].items()) {
      line += " kernel[" + q + "]: dropped_queue_full=" + v["dropped_queue_full"].dump() +
              " dropped_socket_full=" + v["dropped_socket_full"].dump();
    }
    std::fprintf(stderr, "%s\n", line.c_str());
    for (const auto& r : j["rules"]) {
      std::fprintf(stderr, "%s:   [%s] packets=%s lost=%s\n", kProg,
                   r["rule"].get<std::string>().c_str(), r["packets"].dump().c_str(),
                   r["lost"].dump().c_str());
    }
  }

  void WriteStatsFile() const {
    if (opts_.stats_file.empty()) return;
    // Checked at start; a failure now (a full disk, a folder that cannot be written) is said
    // once, and retried.
    if (absl::Status st =
            meridian::common::ReplaceTextFile(opts_.stats_file, StatsJson().dump() + "\n");
        !st.ok() && !stats_write_failure_said_) {
      stats_write_failure_said_ = true;
      std::fprintf(stderr, "%s: --stats-file: %s\n", kProg, std::string(st.message()).c_str());
    }
  }

  Options opts_;
  Policy policy_;
  HoldQueue<HeldPacket> held_;
  uint64_t seed_;
  Stats stats_;
  int64_t late_samples_ = 0;
  bool shutting_down_ = false;
  mutable bool stats_write_failure_said_ = false;  // WriteStatsFile said it once
  nfq_handle* h_ = nullptr;
  int fd_ = -1;
  std::vector<std::unique_ptr<Queue>> queues_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App cli{
      "meridian-netem-nfq: holds each packet iptables sends to NFQUEUE for a delay and drops a "
      "share of them (region emulation without netem)"};
  cli.add_option("-q,--queue", o.queues, "NFQUEUE queue number(s) to bind (repeat for several)")
      ->required()
      ->check(CLI::Range(0, 65535));
  cli.add_option("--delay-ms", o.delay_ms, "default one-way delay for packets no rule matches")
      ->check(meridian::common::FiniteRange(0.0, meridian::netem::kDelayMsMax));
  cli.add_option("--loss-pct", o.loss_pct, "default loss for packets no rule matches")
      ->check(meridian::common::FiniteRange(0.0, meridian::netem::kLossPctMax));
  cli.add_option("--rule", o.rules,
                 "a rule: [queue=N] [src=CIDR] [dst=CIDR] [delay=MS] [loss=PCT]; first match wins "
                 "(command-line rules come before the file's)");
  cli.add_option("--rules-file", o.rules_file,
                 "rules, one per line (# comments); reloaded on SIGHUP")
      ->check(CLI::ExistingFile);
  auto* seed_opt =
      cli.add_option("--seed", o.seed, "seed of the loss RNG (default: random, printed)")
          // CLI11 reads "-1" into an unsigned as 2^64-1: digits only.
          ->check(CLI::Validator(
              [](std::string& in) {
                uint64_t v = 0;  // SimpleAtoi refuses what overflows (CLI11 would saturate)
                return !in.empty() && in.find_first_not_of("0123456789") == std::string::npos &&
                               absl::SimpleAtoi(in, &v)
                           ? std::string()
                           : "'" + in + "' is not a number 0..2^64-1";
              },
              "UINT64"));
  cli.add_option("--max-held", o.max_held, "packets held at most; beyond that they are dropped")
      ->check(CLI::Range(size_t{1}, size_t{1000000}));
  cli.add_option("--stats-interval-s", o.stats_interval_s,
                 "print a stats line (and rewrite --stats-file) this often; 0: only on SIGUSR1")
      ->check(meridian::common::FiniteRange(0.0, 86400.0));
  cli.add_option("--stats-file", o.stats_file, "write counters here as JSON");
  cli.add_flag("--probe", o.probe, "bind the queues, then exit 0 (can this machine do it?)");
  cli.footer(
      "Signals: SIGUSR1 prints stats; SIGHUP reloads --rules-file; SIGTERM accepts every held "
      "packet and exits.\nExample: iptables -A OUTPUT -d 10.77.0.2 -j NFQUEUE --queue-num 0 "
      "--queue-bypass\n         meridian-netem-nfq --queue 0 --rule 'dst=10.77.0.2 delay=38 "
      "loss=1'");
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;

  if (std::set<uint16_t>(o.queues.begin(), o.queues.end()).size() != o.queues.size()) {
    std::fprintf(stderr, "%s: --queue: a queue number is given twice\n", kProg);
    return 2;
  }
  std::vector<Rule> rules;
  for (const auto& text : o.rules) {
    auto r = meridian::netem::ParseRule(text);
    if (!r.ok()) {
      std::fprintf(stderr, "%s: --rule '%s': %s\n", kProg, text.c_str(),
                   std::string(r.status().message()).c_str());
      return 2;
    }
    rules.push_back(*r);
  }
  if (!o.rules_file.empty()) {
    auto loaded = meridian::netem::LoadRulesFile(o.rules_file);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s: --rules-file %s\n", kProg,
                   std::string(loaded.status().message()).c_str());
      return 2;
    }
    rules.insert(rules.end(), loaded->begin(), loaded->end());
  }
  if (!o.stats_file.empty()) {
    // Written (as a temporary file beside it, then renamed) from the first stats line on: a path
    // that cannot be is a usage error now, not counters silently missing later.
    if (absl::Status st = meridian::common::CheckWritableFile("--stats-file", o.stats_file);
        !st.ok()) {
      std::fprintf(stderr, "%s: %s\n", kProg, std::string(st.message()).c_str());
      return 2;
    }
  }
  o.seed_given = seed_opt->count() > 0;
  const uint64_t seed =
      o.seed_given ? o.seed : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  App app(o, std::move(rules), seed);
  if (!app.Open()) return 1;
  if (o.probe) {
    std::fprintf(stderr, "%s: probe ok: queue(s) bound\n", kProg);
    return 0;
  }
  // The check above made no folders: they are made now that the run starts, so that one that
  // cannot be made stops it here (each stats write makes them again should they go).
  if (!o.stats_file.empty()) {
    if (absl::Status st = meridian::common::MakeParentFolders(o.stats_file); !st.ok()) {
      std::fprintf(stderr, "%s: --stats-file %s\n", kProg, std::string(st.message()).c_str());
      return 1;
    }
  }
  return app.Run();
}
