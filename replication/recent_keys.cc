#include "replication/recent_keys.h"

#include <algorithm>

namespace meridian::replication {

void RecentKeys::Applied(const std::string& stream, int64_t first_seq, int64_t through_seq,
                         std::vector<Record> records) {
  std::lock_guard<std::mutex> l(mu_);
  Stream& s = streams_[stream];
  if (!s.known || first_seq > s.last + 1) {
    s.known = true;
    s.records.clear();
    s.floor = s.last = std::max<int64_t>(0, first_seq - 1);
  }
  for (Record& r : records) {
    if (r.seq <= s.last) continue;
    s.last = r.seq;
    s.records.push_back(std::move(r));
  }
  s.last = std::max(s.last, through_seq);
  while (s.records.size() > per_stream_) {
    s.floor = s.records.front().seq;
    s.records.pop_front();
  }
}

void RecentKeys::StateApplied(const std::string& stream, int64_t through_seq) {
  std::lock_guard<std::mutex> l(mu_);
  Stream& s = streams_[stream];
  s.records.clear();
  s.known = through_seq > 0;
  s.floor = s.last = std::max<int64_t>(0, through_seq);
}

bool RecentKeys::KeysBetween(const std::string& stream, int64_t after, int64_t through,
                             std::vector<std::pair<uint32_t, std::string>>* out) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return after >= through;
  const Stream& s = it->second;
  if (after >= through) return true;
  if (!s.known || after < s.floor || through > s.last) return false;
  auto from = std::upper_bound(s.records.begin(), s.records.end(), after,
                               [](int64_t seq, const Record& r) { return seq < r.seq; });
  for (auto r = from; r != s.records.end() && r->seq <= through; ++r)
    out->emplace_back(r->kind, r->key);
  return true;
}

}  // namespace meridian::replication
