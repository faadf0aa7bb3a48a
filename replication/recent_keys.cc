#include "replication/recent_keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace meridian::replication {

namespace {

// The file: kMagic, then entries {u32 body length, u32 crc32 of the body, body}, host byte order.
// Body: u8 'A', u32 stream length, stream, i64 first_seq, i64 through_seq, u32 n, then n times
// {i64 seq, u32 kind, u32 key length, key} (an Applied call); or u8 'S' (a StateApplied call
// within a transfer; before 2026-12-03 also its end when through_seq > 0) or 'E' (one that ended
// it), u32 stream length, stream, i64 through_seq.
constexpr std::string_view kMagic = "MERIDIAN-RECENT-KEYS 1\n";
constexpr size_t kMaxBody = size_t{64} << 20;
// The file's weight is its records plus its entries (an entry without records, a range of records
// residency kept from us or a state transfer's, still takes room). It is rewritten once that is
// more than twice the listing's records plus this many.
constexpr size_t kRewriteSlack = 10000;
// A rewrite writes a stream's listing in entries of at most this many records (an entry's body
// must stay within kMaxBody: keys are up to 128 bytes, and up to 10,000,000 may be listed).
constexpr size_t kRecordsPerEntry = 10000;

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof v);
}
void PutBytes(std::string* out, std::string_view bytes) {
  Put<uint32_t>(out, static_cast<uint32_t>(bytes.size()));
  out->append(bytes);
}

// Appends an entry to *out: its header, then the body `write_body` appends, then the header's
// length and checksum filled in.
template <typename F>
void AppendEntry(std::string* out, F write_body) {
  const size_t at = out->size();
  out->append(8, '\0');
  write_body(out);
  const uint32_t len = static_cast<uint32_t>(out->size() - at - 8);
  const uint32_t crc = static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(out->data() + at + 8), static_cast<uInt>(len)));
  std::memcpy(out->data() + at, &len, 4);
  std::memcpy(out->data() + at + 4, &crc, 4);
}

template <typename It>
void AppendApplied(std::string* out, const std::string& stream, int64_t first_seq,
                   int64_t through_seq, It begin, It end) {
  AppendEntry(out, [&](std::string* body) {
    *body += 'A';
    PutBytes(body, stream);
    Put<int64_t>(body, first_seq);
    Put<int64_t>(body, through_seq);
    Put<uint32_t>(body, static_cast<uint32_t>(end - begin));
    for (It r = begin; r != end; ++r) {
      Put<int64_t>(body, r->seq);
      Put<uint32_t>(body, r->kind);
      PutBytes(body, r->key);
    }
  });
}

// Reads a body; false when it is malformed.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (s_.size() < sizeof(T)) return false;
    std::memcpy(v, s_.data(), sizeof(T));
    s_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetBytes(std::string* out) {
    uint32_t n = 0;
    if (!Get(&n) || s_.size() < n) return false;
    out->assign(s_.data(), n);
    s_.remove_prefix(n);
    return true;
  }
  bool done() const { return s_.empty(); }

 private:
  std::string_view s_;
};

bool WriteAll(int fd, std::string_view data, std::string* why) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *why = n < 0 ? std::strerror(errno) : "short write";
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// The first `bytes` of the file at `path` (all of it when it is shorter).
bool ReadPrefix(const std::string& path, size_t bytes, std::string* out, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    *why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return false;
  }
  bytes = std::min(bytes, static_cast<size_t>(st.st_size));
  out->resize(bytes);
  size_t got = 0;
  while (got < bytes) {
    // In pieces: a read of the file holds up the appends to it for as long as it takes.
    const size_t piece = std::min<size_t>(bytes - got, 256 << 10);
    ssize_t n = ::pread(fd, out->data() + got, piece, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = std::strerror(errno);
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  out->resize(got);
  ::close(fd);
  return true;
}

}  // namespace

RecentKeys::~RecentKeys() {
  if (rewriter_.joinable()) rewriter_.join();
  if (fd_ >= 0) ::close(fd_);
}

size_t RecentKeys::Replay(std::string_view data, size_t* entries) {
  size_t at = kMagic.size();
  *entries = 0;
  while (at < data.size()) {
    uint32_t len = 0, crc = 0;
    if (data.size() - at < 8) break;
    std::memcpy(&len, data.data() + at, 4);
    std::memcpy(&crc, data.data() + at + 4, 4);
    if (len == 0 || len > kMaxBody || data.size() - at - 8 < len) break;
    std::string_view body(data.data() + at + 8, len);
    if (crc != crc32(0, reinterpret_cast<const Bytef*>(body.data()), len)) break;
    Reader r(body.substr(1));
    std::string stream;
    int64_t first = 0, through = 0;
    if (body[0] == 'A') {
      uint32_t n = 0;
      if (!r.GetBytes(&stream) || !r.Get(&first) || !r.Get(&through) || !r.Get(&n)) break;
      std::vector<Record> records;
      bool ok = true;
      for (uint32_t i = 0; i < n && ok; ++i) {
        Record rec;
        ok = r.Get(&rec.seq) && r.Get(&rec.kind) && r.GetBytes(&rec.key);
        records.push_back(std::move(rec));
      }
      if (!ok || !r.done()) break;
      file_weight_ += n + 1;
      ApplyLocked(stream, first, through, std::move(records));
    } else if (body[0] == 'S' || body[0] == 'E') {
      if (!r.GetBytes(&stream) || !r.Get(&through) || !r.done()) break;
      file_weight_ += 1;
      StateLocked(stream, through, body[0] == 'E' || through > 0);
    } else {
      break;
    }
    at += 8 + len;
    ++*entries;
  }
  return at;
}

absl::Status RecentKeys::Persist(const std::string& path, std::string* warning,
                                 std::function<void(const std::string&)> on_write_error) {
  std::lock_guard<std::mutex> l(mu_);
  if (per_stream_ == 0 || fd_ >= 0) return absl::OkStatus();
  std::string data, why;
  if (::access(path.c_str(), F_OK) == 0 &&
      !ReadPrefix(path, std::numeric_limits<size_t>::max(), &data, &why)) {
    return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", why));
  }
  size_t good = 0;  // bytes of the file that were loaded
  if (!data.empty() && data.substr(0, kMagic.size()) != kMagic) {
    const std::string aside = path + ".bad";
    if (::rename(path.c_str(), aside.c_str()) != 0) {
      return absl::UnavailableError(absl::StrCat(
          path, " is not a recent-keys file and cannot be set aside: ", std::strerror(errno)));
    }
    *warning = absl::StrCat(path, " is not a recent-keys file: set aside as ", aside,
                            "; the listing starts empty");
  } else if (!data.empty()) {
    size_t entries = 0;
    good = Replay(data, &entries);
    if (good < data.size()) {
      *warning = absl::StrCat(path, ": a damaged entry at byte ", good, " (of ", data.size(),
                              "): loaded the ", entries, " entries before it and cut the rest");
    }
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(good)) != 0 || ::lseek(fd, 0, SEEK_END) < 0 ||
      (good == 0 && !WriteAll(fd, kMagic, &why))) {
    if (why.empty()) why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", why));
  }
  path_ = path;
  fd_ = fd;
  file_bytes_ = std::max(good, kMagic.size());
  on_write_error_ = std::move(on_write_error);
  return absl::OkStatus();
}

void RecentKeys::Applied(const std::string& stream, int64_t first_seq, int64_t through_seq,
                         std::vector<Record> records) {
  std::lock_guard<std::mutex> l(mu_);
  if (fd_ >= 0) {
    std::string entry;
    AppendApplied(&entry, stream, first_seq, through_seq, records.begin(), records.end());
    Log(entry, records.size());
  }
  ApplyLocked(stream, first_seq, through_seq, std::move(records));
  RewriteIfDue();
}

void RecentKeys::StateApplied(const std::string& stream, int64_t through_seq, bool ended) {
  std::lock_guard<std::mutex> l(mu_);
  if (fd_ >= 0) {
    std::string entry;
    AppendEntry(&entry, [&](std::string* body) {
      *body += ended ? 'E' : 'S';
      PutBytes(body, stream);
      Put<int64_t>(body, through_seq);
    });
    Log(entry, 0);
  }
  StateLocked(stream, through_seq, ended);
  RewriteIfDue();
}

void RecentKeys::ApplyLocked(const std::string& stream, int64_t first_seq, int64_t through_seq,
                             std::vector<Record> records) {
  Stream& s = streams_[stream];
  if (!s.known || first_seq > s.last + 1) {
    s.known = true;
    listed_records_ -= s.records.size();
    s.records.clear();
    s.floor = s.last = std::max<int64_t>(0, first_seq - 1);
  }
  for (Record& r : records) {
    if (r.seq <= s.last) continue;
    s.last = r.seq;
    s.records.push_back(std::move(r));
    ++listed_records_;
  }
  s.last = std::max(s.last, through_seq);
  while (s.records.size() > per_stream_) {
    s.floor = s.records.front().seq;
    s.records.pop_front();
    --listed_records_;
  }
}

void RecentKeys::StateLocked(const std::string& stream, int64_t through_seq, bool ended) {
  Stream& s = streams_[stream];
  listed_records_ -= s.records.size();
  s.records.clear();
  s.known = ended;
  s.floor = s.last = std::max<int64_t>(0, through_seq);
}

void RecentKeys::Log(const std::string& entry, size_t records) {
  std::string why;
  if (!WriteAll(fd_, entry, &why)) {
    ::close(fd_);
    fd_ = -1;
    Failed(absl::StrCat("cannot write ", path_, ": ", why));
    return;
  }
  file_bytes_ += entry.size();
  file_weight_ += records + 1;
  if (rewriting_) {
    since_ += entry;
    since_weight_ += records + 1;
  }
}

void RecentKeys::Failed(const std::string& why) {
  if (on_write_error_) on_write_error_(why);
}

void RecentKeys::WaitForRewrite() {
  std::thread rewriter;
  {
    std::lock_guard<std::mutex> l(mu_);
    rewriter = std::move(rewriter_);
  }
  if (rewriter.joinable()) rewriter.join();
}

void RecentKeys::RewriteIfDue() {
  if (fd_ < 0 || rewriting_ || file_weight_ <= 2 * listed_records_ + kRewriteSlack) return;
  if (rewriter_.joinable()) rewriter_.join();  // the last one, done (rewriting_ is false)
  rewriting_ = true;
  since_.clear();
  since_weight_ = 0;
  rewriter_ = std::thread([this, bytes = file_bytes_] { RewriteFile(bytes); });
}

// Replays the file's first `bytes` (what it held when the rewrite started) into a listing of its
// own, which equals ours as it was then, and writes that beside the file: per listed stream,
// Applied entries of contiguous ranges from floor + 1 to last (replayed on an empty listing, they
// give the same floor, last and records). Then, under the lock, the entries logged since, and the
// rename.
void RecentKeys::RewriteFile(size_t bytes) {
  std::string data, why;
  RecentKeys then(per_stream_);
  size_t entries = 0;
  bool ok = ReadPrefix(path_, bytes, &data, &why);
  if (ok && then.Replay(data, &entries) != bytes) {
    ok = false;
    why = "it no longer replays as written";
  }
  const std::string tmp = path_ + ".new";
  int fd = -1;
  size_t weight = then.listed_records_;
  if (ok) {
    data.assign(kMagic);
    for (const auto& [name, st] : then.streams_) {
      if (!st.known) continue;
      int64_t first = st.floor + 1;
      auto from = st.records.begin();
      do {
        const auto to = st.records.end() - from > static_cast<std::ptrdiff_t>(kRecordsPerEntry)
                            ? from + kRecordsPerEntry
                            : st.records.end();
        const int64_t through = to == st.records.end() ? st.last : (to - 1)->seq;
        AppendApplied(&data, name, first, through, from, to);
        ++weight;
        first = through + 1;
        from = to;
      } while (from != st.records.end());
    }
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) why = std::strerror(errno);
    ok = fd >= 0 && WriteAll(fd, data, &why);
  }
  // The replaced file is closed after the lock: that frees its blocks, which takes a while.
  std::unique_lock<std::mutex> l(mu_);
  if (ok && fd_ >= 0 && WriteAll(fd, since_, &why)) {
    if (::rename(tmp.c_str(), path_.c_str()) == 0) {
      const int old_fd = std::exchange(fd_, fd);  // the new file, positioned at its end
      file_bytes_ = data.size() + since_.size();
      file_weight_ = weight + since_weight_;
      rewriting_ = false;
      l.unlock();
      ::close(old_fd);
      return;
    }
    why = std::strerror(errno);
  }
  if (fd >= 0) ::close(fd);
  ::unlink(tmp.c_str());
  rewriting_ = false;
  if (fd_ < 0) return;  // persisting stopped meanwhile (and said why)
  // The file still holds a true listing: go on appending to it, and try again once its weight has
  // grown by the listing's records plus kRewriteSlack.
  file_weight_ = listed_records_;
  Failed(absl::StrCat("cannot rewrite ", path_, ": ", why));
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
