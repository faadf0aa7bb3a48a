#include "replication/frames.h"

#include <gtest/gtest.h>

#include <limits>

#include "replication/coordinator.h"
#include "replication/lease_frames.h"

namespace meridian::replication {
namespace {

pb::RecordList Records(int n, int64_t first_seq, std::string residency = "any") {
  pb::RecordList list;
  for (int i = 0; i < n; ++i) {
    pb::Record* r = list.add_records();
    r->set_seq(first_seq + i);
    r->set_kind(pb::RECORD_KIND_CART);
    r->set_key("user-" + std::to_string(i % 7));
    r->set_payload(std::string(40, static_cast<char>('a' + i % 3)));
    r->set_residency(residency);
    r->set_committed_unix_ms(1700000000000 + i);
  }
  return list;
}

// A declarer's write-off frame may say what it restocked of a SKU, never more than it reclaimed:
// the region that comes back would owe the difference (rights_debt).
TEST(Frames, AWriteOffSaysItRestockedAtMostWhatItReclaimed) {
  pb::Frame f;
  pb::RightsRetire* r = f.mutable_rights()->mutable_retire();
  r->set_declaration_id("d-1");
  r->set_declared_by(2);
  pb::RetiredSku* item = r->add_items();
  item->set_sku("vase");
  item->set_units(30);
  EXPECT_TRUE(Coordinator::CheckFrame(2, f).ok());
  item->set_restocked(30);
  EXPECT_TRUE(Coordinator::CheckFrame(2, f).ok());
  item->set_restocked(31);
  EXPECT_EQ(Coordinator::CheckFrame(2, f).code(), absl::StatusCode::kInvalidArgument);
  item->set_restocked(0);
  EXPECT_TRUE(Coordinator::CheckFrame(2, f).ok());
  EXPECT_EQ(Coordinator::CheckFrame(3, f).code(), absl::StatusCode::kInvalidArgument)
      << "a write-off is its sender's own declaration";
}

TEST(Frames, RoundTripCompressesLargeBatches) {
  pb::RecordList list = Records(200, 10);
  pb::DeltaBatch b = EncodeBatch(3, "shard-0", 10, 215, list, 1, BatchKind::kDeltas);
  EXPECT_EQ(b.compression(), pb::COMPRESSION_ZLIB);
  EXPECT_LT(b.payload().size(), list.ByteSizeLong() / 2);
  auto back = DecodeBatch(b, 3);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), list.SerializeAsString());
}

TEST(Frames, SmallAndEmptyBatchesGoUncompressed) {
  pb::DeltaBatch b = EncodeBatch(3, "global", 1, 5, pb::RecordList(), 1, BatchKind::kDeltas);
  EXPECT_EQ(b.compression(), pb::COMPRESSION_NONE);
  auto back = DecodeBatch(b, 3);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->records_size(), 0);
}

TEST(Frames, StateTransferBatchesKeepTheirKind) {
  pb::RecordList docs = Records(3, 0);
  for (pb::Record& r : *docs.mutable_records()) r.set_seq(0);  // full documents carry seq 0
  pb::DeltaBatch b = EncodeBatch(3, "shard-0", 0, 0, docs, 1, BatchKind::kState);
  EXPECT_TRUE(b.state());
  auto back = DecodeBatch(b, 3);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), docs.SerializeAsString());
  // The last batch of a transfer: no records, last_seq = where shipping goes on.
  pb::DeltaBatch end = EncodeBatch(3, "shard-0", 0, 42, pb::RecordList(), 1, BatchKind::kState);
  EXPECT_TRUE(DecodeBatch(end, 3).ok());
  // The same documents sent as deltas are refused: seq 0 is no place in an outbox.
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "shard-0", 0, 0, docs, 1, BatchKind::kDeltas), 3).ok());
  // And a state batch may not carry outbox records.
  EXPECT_FALSE(
      DecodeBatch(EncodeBatch(3, "shard-0", 0, 0, Records(2, 5), 1, BatchKind::kState), 3).ok());
}

TEST(Frames, RejectsLiesAndDamage) {
  pb::DeltaBatch good = EncodeBatch(3, "shard-1", 10, 215, Records(200, 10), 1, BatchKind::kDeltas);
  EXPECT_FALSE(DecodeBatch(good, 4).ok()) << "origin is not the stream's peer";

  pb::DeltaBatch b = good;
  b.set_origin_database("Shard 1; DROP");
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_last_seq(100);  // records beyond the range
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_first_seq(0);
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_payload(b.payload().substr(0, b.payload().size() / 2));  // truncated
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_uncompressed_bytes(b.uncompressed_bytes() + 1);
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_uncompressed_bytes(kMaxBatchBytes + 1);  // a zip bomb announces itself or fails
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_compression(pb::COMPRESSION_UNSPECIFIED);
  EXPECT_FALSE(DecodeBatch(b, 3).ok());

  b = good;
  b.set_compression(pb::COMPRESSION_NONE);
  b.set_payload(std::string(b.uncompressed_bytes(), '\xff'));
  EXPECT_FALSE(DecodeBatch(b, 3).ok()) << "garbage is not a record list";
}

TEST(Frames, RejectsBadRecords) {
  pb::RecordList list = Records(3, 10);
  list.mutable_records(1)->set_seq(10);  // not ascending
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas), 3).ok());
  list = Records(3, 10);
  list.mutable_records(2)->set_kind(static_cast<pb::RecordKind>(99));
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas), 3).ok());
  list = Records(3, 10);
  list.mutable_records(0)->clear_key();
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas), 3).ok());
  list = Records(3, 10, "");
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas), 3).ok());
  list = Records(3, 10);
  list.mutable_records(1)->set_committed_unix_ms(-1);  // lag would be measured from before 1970
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas), 3).ok());
  list.mutable_records(1)->set_committed_unix_ms(kMaxCommittedUnixMs + 1);
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas), 3).ok());
  // Nor may the batch's send time be out of range: the queue lag is sent minus committed.
  list = Records(3, 10);
  for (int64_t sent : {int64_t{-1}, kMaxCommittedUnixMs + 1, std::numeric_limits<int64_t>::min()}) {
    pb::DeltaBatch b = EncodeBatch(3, "global", 10, 20, list, 1, BatchKind::kDeltas);
    b.set_sent_unix_ms(sent);
    auto decoded = DecodeBatch(b, 3);
    EXPECT_FALSE(decoded.ok()) << sent;
    EXPECT_NE(decoded.status().message().find("sent_unix_ms"), std::string::npos) << sent;
  }
}

TEST(Frames, RejectsSeqsNearTheLimit) {
  // seq + 1 must never overflow, wherever a peer's seq is used.
  EXPECT_TRUE(
      DecodeBatch(
          EncodeBatch(3, "global", kMaxSeq, kMaxSeq, pb::RecordList(), 1, BatchKind::kDeltas), 3)
          .ok());
  EXPECT_FALSE(
      DecodeBatch(EncodeBatch(3, "global", 1, kMaxSeq + 1, pb::RecordList(), 1, BatchKind::kDeltas),
                  3)
          .ok());
  EXPECT_FALSE(DecodeBatch(EncodeBatch(3, "global", 0, std::numeric_limits<int64_t>::max(),
                                       pb::RecordList(), 1, BatchKind::kState),
                           3)
                   .ok());
}

TEST(LeaseFrames, RejectEpochsBeyondTheLimit) {
  // An epoch near 2^64 would wrap to 0 at the next takeover (epoch + 1) and lock the group.
  v1::LeaseFrame f = ToLeaseFrame(LeaseReply{3, kMaxEpoch, 1, false, kMaxEpoch, 2});
  EXPECT_TRUE(FromLeaseFrame(f).ok());
  f.set_epoch(kMaxEpoch + 1);
  EXPECT_FALSE(FromLeaseFrame(f).ok());
  f.set_epoch(5);
  f.mutable_reply()->set_known_epoch(~uint64_t{0});
  EXPECT_FALSE(FromLeaseFrame(f).ok());
  f = ToLeaseFrame(LeaseRequest{3, ~uint64_t{0}, 1, true});
  EXPECT_FALSE(FromLeaseFrame(f).ok());
}

TEST(LeaseFrames, RecordQueriesRoundTripAndRecordsAreChecked) {
  for (const LeaseMessage& m :
       {LeaseMessage(LeaseQuery{3, 7, 42}), LeaseMessage(LeaseRecordAnswer{3, 7, 42, 6, 2}),
        LeaseMessage(LeaseRecordAnswer{3, 7, 43, 0, kNoRegion})}) {
    auto back = FromLeaseFrame(ToLeaseFrame(m));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, m);
  }
  v1::LeaseFrame f = ToLeaseFrame(LeaseRecordAnswer{3, 7, 42, 6, 2});
  f.mutable_record()->set_record_owner(256);
  EXPECT_FALSE(FromLeaseFrame(f).ok());
  f.mutable_record()->set_record_owner(2);
  f.mutable_record()->set_record_epoch(kMaxEpoch + 1);
  EXPECT_FALSE(FromLeaseFrame(f).ok());
}

}  // namespace
}  // namespace meridian::replication
