// meridian-netem proxy: a userspace TCP link emulator. Listens on one address and forwards every
// connection to a target, holding the bytes of each direction for a fixed one-way delay (so the
// round trip through it is twice the delay). SIGUSR1 partitions the link (every byte on every
// connection is dropped, new connections are held and never reach the target); SIGUSR2 heals it
// (the connections that lived through the partition are closed, as a real one would time out,
// and new ones flow). It writes its bound port to --port-file and byte counters to --stats-file
// (JSON, every 200 ms), for benchmarks that count bytes on the wire.
//
// This is the fallback of the emulation tooling: it works without network namespaces or root.

#include <CLI/CLI.hpp>
#include <asio.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <list>
#include <memory>
#include <string>

#include "common/cli.h"
#include "common/files.h"

namespace {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Stats {
  uint64_t bytes_forward = 0;   // client -> target
  uint64_t bytes_backward = 0;  // target -> client
  uint64_t connections = 0;
  uint64_t dropped_bytes = 0;
};

struct Link;

// One direction of one connection: reads from `from`, delivers to `to` after the delay.
class Pump : public std::enable_shared_from_this<Pump> {
 public:
  Pump(asio::io_context& io, std::shared_ptr<Link> link, bool forward,
       std::chrono::microseconds delay);

  void Start() { Read(); }

 private:
  struct Chunk {
    Clock::time_point due;
    std::string data;
  };

  void Read();
  void Deliver();

  asio::steady_timer timer_;
  std::shared_ptr<Link> hold_;  // the pump keeps its connection alive
  Link& link_;
  tcp::socket& from_;
  tcp::socket& to_;
  std::chrono::microseconds delay_;
  uint64_t& counter_;
  std::array<char, 64 * 1024> buf_{};
  std::deque<Chunk> queue_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool reading_ = false;
};

struct Link : std::enable_shared_from_this<Link> {
  tcp::socket client, target;
  bool blackholed = false;
  bool closed = false;
  Link(asio::io_context& io) : client(io), target(io) {}
  void Close() {
    if (closed) return;
    closed = true;
    asio::error_code ec;
    client.close(ec);
    target.close(ec);
  }
};

Stats g_stats;
std::atomic<bool> g_partitioned{false};

Pump::Pump(asio::io_context& io, std::shared_ptr<Link> link, bool forward,
           std::chrono::microseconds delay)
    : timer_(io),
      hold_(link),
      link_(*link),
      from_(forward ? link->client : link->target),
      to_(forward ? link->target : link->client),
      delay_(delay),
      counter_(forward ? g_stats.bytes_forward : g_stats.bytes_backward) {}

void Pump::Read() {
  if (link_.closed || queued_bytes_ > (16u << 20)) return;  // backpressure: resume on delivery
  reading_ = true;
  auto self = shared_from_this();
  from_.async_read_some(asio::buffer(buf_), [this, self](asio::error_code ec, size_t n) {
    reading_ = false;
    if (ec) {
      link_.Close();
      return;
    }
    if (link_.blackholed) {
      g_stats.dropped_bytes += n;
    } else {
      queue_.push_back(Chunk{Clock::now() + delay_, std::string(buf_.data(), n)});
      queued_bytes_ += n;
      if (!writing_) Deliver();
    }
    Read();
  });
}

void Pump::Deliver() {
  if (queue_.empty() || link_.closed) {
    writing_ = false;
    return;
  }
  writing_ = true;
  auto self = shared_from_this();
  timer_.expires_at(queue_.front().due);
  timer_.async_wait([this, self](asio::error_code) {
    if (link_.closed) return;
    if (link_.blackholed) {
      for (auto& c : queue_) g_stats.dropped_bytes += c.data.size();
      queue_.clear();
      queued_bytes_ = 0;
      writing_ = false;
      return;
    }
    asio::async_write(to_, asio::buffer(queue_.front().data),
                      [this, self](asio::error_code ec, size_t n) {
                        if (ec) {
                          link_.Close();
                          return;
                        }
                        counter_ += n;
                        queued_bytes_ -= queue_.front().data.size();
                        queue_.pop_front();
                        if (!reading_) Read();
                        Deliver();
                      });
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"meridian-netem proxy: a TCP link with one-way delay and partitions on demand"};
  std::string listen = "127.0.0.1:0", target, port_file, stats_file;
  double delay_ms = 0;
  cli.add_option("--listen", listen,
                 "host:port to listen on (port 0: any free port; write it with --port-file)")
      ->capture_default_str();
  cli.add_option("--target", target, "host:port to forward to")->required();
  cli.add_option("--delay-ms", delay_ms, "one-way delay, each direction")
      ->check(meridian::common::FiniteRange(0.0, 60000.0));
  cli.add_option("--port-file", port_file, "write the bound port here");
  cli.add_option("--stats-file", stats_file, "write byte counters here (JSON)");
  cli.footer("Signals: SIGUSR1 partitions the link, SIGUSR2 heals it.");
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  // host:port with a decimal port from `min_port` to 65535 (the resolver would take a port
  // past it modulo 65536, or a service name).
  auto split = [](const std::string& hp, std::string& host, std::string& port, int min_port) {
    auto c = hp.rfind(':');
    if (c == std::string::npos) return false;
    host = hp.substr(0, c);
    port = hp.substr(c + 1);
    if (host.empty() || port.empty() || port.size() > 5) return false;
    for (char ch : port)
      if (ch < '0' || ch > '9') return false;
    const int p = std::stoi(port);
    return p >= min_port && p <= 65535;
  };
  std::string lhost, lport, thost, tport;
  if (!split(listen, lhost, lport, 0)) {
    std::fprintf(stderr,
                 "meridian-netem proxy: --listen '%s' must be host:port (port 0..65535, 0: any "
                 "free one)\n",
                 listen.c_str());
    return 2;
  }
  if (!split(target, thost, tport, 1)) {
    std::fprintf(stderr, "meridian-netem proxy: --target '%s' must be host:port (port 1..65535)\n",
                 target.c_str());
    return 2;
  }
  for (const auto& [flag, path] :
       {std::pair{"--port-file", &port_file}, std::pair{"--stats-file", &stats_file}}) {
    if (path->empty()) continue;
    if (absl::Status st = meridian::common::CheckWritableFile(flag, *path); !st.ok()) {
      std::fprintf(stderr, "meridian-netem proxy: %s\n", std::string(st.message()).c_str());
      return 2;
    }
  }
  try {
    asio::io_context io;
    tcp::resolver resolver(io);
    tcp::endpoint lep = *resolver.resolve(lhost, lport).begin();
    tcp::endpoint tep = *resolver.resolve(thost, tport).begin();
    tcp::acceptor acceptor(io, lep);
    if (!port_file.empty()) {
      // The check at start made no folders; they are made for the file written now.
      if (absl::Status st = meridian::common::ReplaceTextFile(
              port_file, absl::StrCat(acceptor.local_endpoint().port(), "\n"));
          !st.ok()) {
        std::fprintf(stderr, "meridian-netem proxy: --port-file: %s\n",
                     std::string(st.message()).c_str());
        return 1;
      }
    }
    const auto delay = std::chrono::microseconds(static_cast<int64_t>(delay_ms * 1000.0));
    std::list<std::weak_ptr<Link>> links;

    asio::signal_set signals(io, SIGUSR1, SIGUSR2);
    std::function<void()> wait_signal = [&] {
      signals.async_wait([&](asio::error_code ec, int sig) {
        if (ec) return;
        if (sig == SIGUSR1) {
          g_partitioned = true;
          for (auto& w : links)
            if (auto l = w.lock()) l->blackholed = true;
          std::fprintf(stderr, "netem: partitioned\n");
        } else {
          g_partitioned = false;
          for (auto& w : links)
            if (auto l = w.lock(); l && l->blackholed) l->Close();
          std::fprintf(stderr, "netem: healed\n");
        }
        wait_signal();
      });
    };
    wait_signal();
    asio::signal_set stop(io, SIGINT, SIGTERM);
    stop.async_wait([&](asio::error_code, int) { io.stop(); });

    std::function<void()> accept = [&] {
      auto link = std::make_shared<Link>(io);
      acceptor.async_accept(link->client, [&, link](asio::error_code ec) {
        if (!ec) {
          ++g_stats.connections;
          links.remove_if([](const std::weak_ptr<Link>& w) { return w.expired(); });
          links.push_back(link);
          link->client.set_option(tcp::no_delay(true));
          if (g_partitioned) {
            link->blackholed = true;  // held: its bytes are dropped, it never reaches the target
            std::make_shared<Pump>(io, link, true, delay)->Start();
          } else {
            link->target.async_connect(tep, [&, link](asio::error_code cec) {
              if (cec) {
                link->Close();
                return;
              }
              link->target.set_option(tcp::no_delay(true));
              std::make_shared<Pump>(io, link, true, delay)->Start();
              std::make_shared<Pump>(io, link, false, delay)->Start();
            });
          }
        }
        accept();
      });
    };
    accept();

    asio::steady_timer tick(io);
    std::function<void()> write_stats = [&] {
      if (!stats_file.empty()) {
        const std::string json =
            absl::StrCat("{\"bytes_forward\": ", g_stats.bytes_forward,
                         ", \"bytes_backward\": ", g_stats.bytes_backward,
                         ", \"connections\": ", g_stats.connections,
                         ", \"dropped_bytes\": ", g_stats.dropped_bytes,
                         ", \"partitioned\": ", g_partitioned ? "true" : "false", "}\n");
        // Checked at start; a failure now (a full disk, a folder that cannot be written) is said
        // once, and retried.
        static bool said = false;
        if (absl::Status st = meridian::common::ReplaceTextFile(stats_file, json);
            !st.ok() && !said) {
          said = true;
          std::fprintf(stderr, "meridian-netem proxy: --stats-file: %s\n",
                       std::string(st.message()).c_str());
        }
      }
      tick.expires_after(std::chrono::milliseconds(200));
      tick.async_wait([&](asio::error_code ec) {
        if (!ec) write_stats();
      });
    };
    if (!stats_file.empty()) {
      if (absl::Status st = meridian::common::MakeParentFolders(stats_file); !st.ok()) {
        std::fprintf(stderr, "meridian-netem proxy: cannot write --stats-file %s\n",
                     std::string(st.message()).c_str());
        return 1;
      }
    }
    write_stats();
    io.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meridian-netem proxy: %s\n", e.what());
    return 1;
  }
  return 0;
}
