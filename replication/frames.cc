#include "replication/frames.h"

#include <zlib.h>

#include "absl/strings/str_cat.h"

namespace meridian::replication {

bool ValidDatabaseName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

pb::DeltaBatch EncodeBatch(uint32_t origin, const std::string& origin_database, int64_t first_seq,
                           int64_t last_seq, const pb::RecordList& records, int64_t now_unix_ms,
                           BatchKind kind) {
  pb::DeltaBatch b;
  b.set_state(kind == BatchKind::kState);
  b.set_origin(origin);
  b.set_origin_database(origin_database);
  b.set_first_seq(first_seq);
  b.set_last_seq(last_seq);
  b.set_sent_unix_ms(now_unix_ms);
  std::string raw = records.SerializeAsString();
  b.set_uncompressed_bytes(static_cast<uint32_t>(raw.size()));
  if (raw.size() >= 256) {
    uLongf n = compressBound(raw.size());
    std::string z(n, '\0');
    if (compress2(reinterpret_cast<Bytef*>(z.data()), &n,
                  reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 1) == Z_OK &&
        n + n / 8 < raw.size()) {
      z.resize(n);
      b.set_compression(pb::COMPRESSION_ZLIB);
      b.set_payload(std::move(z));
      return b;
    }
  }
  b.set_compression(pb::COMPRESSION_NONE);
  b.set_payload(std::move(raw));
  return b;
}

absl::StatusOr<pb::RecordList> DecodeBatch(const pb::DeltaBatch& b, uint32_t expected_origin) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (b.origin() != expected_origin) {
    return bad("batch origin ", b.origin(), " is not the stream's peer ", expected_origin);
  }
  if (!ValidDatabaseName(b.origin_database())) return bad("batch origin_database: malformed");
  if (b.state() ? (b.first_seq() != 0 || b.last_seq() < 0)
                : (b.first_seq() < 1 || b.last_seq() < b.first_seq())) {
    return bad("batch seq range [", b.first_seq(), ", ", b.last_seq(), "] is not valid");
  }
  if (b.last_seq() > kMaxSeq) return bad("batch last_seq ", b.last_seq(), " is above ", kMaxSeq);
  // The queue lag is measured from it (sent minus committed): a time like the records' own.
  if (b.sent_unix_ms() < 0 || b.sent_unix_ms() > kMaxCommittedUnixMs) {
    return bad("batch sent_unix_ms ", b.sent_unix_ms(), " is not a time");
  }
  if (b.uncompressed_bytes() > kMaxBatchBytes) {
    return bad("batch of ", b.uncompressed_bytes(), " bytes exceeds the limit of ", kMaxBatchBytes);
  }
  std::string raw;
  switch (b.compression()) {
    case pb::COMPRESSION_NONE:
      if (b.payload().size() != b.uncompressed_bytes()) {
        return bad("batch payload is ", b.payload().size(), " bytes, header says ",
                   b.uncompressed_bytes());
      }
      raw = b.payload();
      break;
    case pb::COMPRESSION_ZLIB: {
      raw.resize(b.uncompressed_bytes());
      uLongf n = raw.size();
      int rc = uncompress(reinterpret_cast<Bytef*>(raw.data()), &n,
                          reinterpret_cast<const Bytef*>(b.payload().data()), b.payload().size());
      if (rc != Z_OK || n != raw.size()) {
        return bad("batch payload does not inflate to the ", b.uncompressed_bytes(),
                   " bytes its header says (zlib ", rc, ")");
      }
      break;
    }
    default:
      return bad("batch compression ", static_cast<int>(b.compression()), " is unknown");
  }
  pb::RecordList list;
  if (!list.ParseFromString(raw)) return bad("batch payload is not a record list");
  if (list.records_size() > kMaxBatchRecords) {
    return bad("batch of ", list.records_size(), " records exceeds ", kMaxBatchRecords);
  }
  if (b.state() && b.last_seq() != 0 && list.records_size() != 0) {
    return bad("the last batch of a state transfer carries no records");
  }
  int64_t prev = b.first_seq() - 1;
  for (const pb::Record& r : list.records()) {
    if (b.state()) {
      if (r.seq() != 0) return bad("a state transfer's records carry seq 0");
    } else if (r.seq() <= prev || r.seq() > b.last_seq()) {
      return bad("record seq ", r.seq(), " is out of order or outside the batch's range");
    }
    prev = r.seq();
    if (r.kind() < pb::RECORD_KIND_CART || r.kind() > pb::RECORD_KIND_USER) {
      return bad("record ", r.seq(), ": unknown kind");
    }
    if (r.key().empty() || r.key().size() > 128) return bad("record ", r.seq(), ": key 1..128");
    if (r.committed_unix_ms() < 0 || r.committed_unix_ms() > kMaxCommittedUnixMs) {
      return bad("record ", r.seq(), ": committed_unix_ms ", r.committed_unix_ms(),
                 " is not a time");
    }
    if (r.residency().empty() || r.residency().size() > 16) {
      return bad("record ", r.seq(), ": residency 1..16 characters");
    }
  }
  return list;
}

}  // namespace meridian::replication
