#include "replication/done_exchanges.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "replication/frames.h"

namespace meridian::replication {
namespace {

constexpr char kHeader[] = "meridian-done-exchanges 2";

// A region's life as a hello names it: 1 to 64 stream names joined by ",".
bool ValidLife(const std::string& life) {
  std::vector<std::string> streams = absl::StrSplit(life, ',');
  if (streams.size() > 64) return false;
  for (const std::string& s : streams)
    if (!ValidDatabaseName(s)) return false;
  return true;
}

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
        lost == 0 || peer == 0 || !ValidLife(f[2])) {
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

bool DoneExchanges::Done(uint32_t lost, uint32_t peer, const std::string& life) const {
  std::lock_guard<std::mutex> l(mu_);
  return done_.count({lost, peer, life}) > 0;
}

absl::Status DoneExchanges::Record(uint32_t lost, uint32_t peer, const std::string& life) {
  if (lost == 0 || peer == 0 || !ValidLife(life)) {
    return absl::InvalidArgumentError(absl::StrCat("not a region's life: '", life, "'"));
  }
  std::lock_guard<std::mutex> l(mu_);
  if (!done_.emplace(lost, peer, life).second || path_.empty()) return absl::OkStatus();
  std::string text = absl::StrCat(kHeader, "\n");
  for (const auto& [l_lost, l_peer, l_life] : done_) {
    absl::StrAppend(&text, l_lost, " ", l_peer, " ", l_life, "\n");
  }
  return common::ReplaceTextFile(path_, text, 0600);
}

}  // namespace meridian::replication
