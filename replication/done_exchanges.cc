#include "replication/done_exchanges.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "replication/frames.h"

namespace meridian::replication {
namespace {

constexpr char kHeader[] = "meridian-done-exchanges 1";

}  // namespace

absl::Status DoneExchanges::Load(const std::string& path, std::string* warning) {
  std::lock_guard<std::mutex> l(mu_);
  path_ = path;
  done_.clear();
  if (path.empty()) return absl::OkStatus();
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  std::set<Entry> loaded;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (n == 1) {
      if (line != kHeader) {
        *warning = absl::StrCat(path, ": not a file of done exchanges (its first line is not '",
                                kHeader, "'); the exchanges run again");
        return absl::OkStatus();
      }
      continue;
    }
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    uint32_t lost = 0, peer = 0;
    if (f.size() != 3 || !absl::SimpleAtoi(f[0], &lost) || !absl::SimpleAtoi(f[1], &peer) ||
        lost == 0 || peer == 0 || !ValidDatabaseName(f[2])) {
      *warning = absl::StrCat(path, ", line ", n, ", is damaged ('", line.substr(0, 80),
                              "'); the exchanges it lists run again");
      return absl::OkStatus();
    }
    loaded.emplace(lost, peer, f[2]);
  }
  if (in.bad()) {
    return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  done_ = std::move(loaded);
  return absl::OkStatus();
}

bool DoneExchanges::Covers(uint32_t lost, uint32_t peer,
                           const std::vector<std::string>& streams) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const std::string& s : streams) {
    if (!done_.count({lost, peer, s})) return false;
  }
  return !streams.empty();
}

absl::Status DoneExchanges::Record(uint32_t lost, uint32_t peer,
                                   const std::set<std::string>& streams) {
  std::lock_guard<std::mutex> l(mu_);
  bool fresh = false;
  for (const std::string& s : streams) fresh = done_.emplace(lost, peer, s).second || fresh;
  if (!fresh || path_.empty()) return absl::OkStatus();
  std::string text = absl::StrCat(kHeader, "\n");
  for (const auto& [l_lost, l_peer, stream] : done_) {
    absl::StrAppend(&text, l_lost, " ", l_peer, " ", stream, "\n");
  }
  return common::ReplaceTextFile(path_, text);
}

}  // namespace meridian::replication
