#pragma once

// A test's stand-in for a peer replicator (a buggy or compromised one): it opens a replication
// stream to a region's meridian-replicator with a region's certificate and sends whatever frames
// the test forges (malformed, out of order, breaking residency), then reports how the real
// replicator ended the stream. Header-only; link gRPC, meridian_replication_core and meridian_crdt.

#include <grpcpp/grpcpp.h>
#include <pqxx/pqxx>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "crdt/cart.h"
#include "crdt/codec.h"
#include "replication/frames.h"
#include "replication/replication.grpc.pb.h"
#include "tests/support/cluster.h"

namespace meridian::test_support {

namespace forged_peer_detail {
inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace forged_peer_detail

// Speaks as region `as` (its certificate from `cert_dir`, the cluster's by default) to region
// `to`'s replicator. The stream has a deadline of `deadline` (15 s by default).
class ForgedPeer {
 public:
  using Frame = ::meridian::replication::v1::Frame;
  ForgedPeer(const Cluster& c, size_t as, size_t to, const std::string& cert_dir = "",
             std::chrono::seconds deadline = std::chrono::seconds(15)) {
    const std::string dir = cert_dir.empty() ? c.cert_dir() : cert_dir;
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = forged_peer_detail::ReadFileOrEmpty(c.cert_dir() + "/ca.pem");
    tls.pem_private_key = forged_peer_detail::ReadFileOrEmpty(dir + "/" + c.spec(as).name + ".key");
    tls.pem_cert_chain = forged_peer_detail::ReadFileOrEmpty(dir + "/" + c.spec(as).name + ".pem");
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(c.spec(to).name);
    args.SetMaxSendMessageSize(64 << 20);
    args.SetMaxReceiveMessageSize(32 << 20);  // a replicator's frame limit (kMaxFrameBytes)
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(c.replication_port(to)),
                                         grpc::SslCredentials(tls), args);
    stub_ = ::meridian::replication::v1::Replication::NewStub(channel_);
    ctx_.set_deadline(std::chrono::system_clock::now() + deadline);
    rw_ = stub_->Stream(&ctx_);
    spec_ = c.spec(as);
  }

  // Sends our hello (with `applied` as our resume points, and `streams` as our databases' stream
  // names) and reads the peer's; false when the stream never came up.
  bool Hello(const std::vector<std::pair<std::string, int64_t>>& applied = {},
             const std::vector<std::string>& streams = {}) {
    Frame f;
    f.mutable_hello()->set_region(spec_.name);
    f.mutable_hello()->set_jurisdiction(spec_.jurisdiction);
    f.mutable_hello()->set_replica_id(spec_.replica_id);
    f.mutable_hello()->set_protocol_version(::meridian::replication::v1::PROTOCOL_VERSION_1);
    for (const auto& [db, seq] : applied) {
      ::meridian::replication::v1::AckedSeq* a = f.mutable_hello()->add_applied();
      a->set_origin_database(db);
      a->set_seq(seq);
    }
    for (const std::string& stream : streams) f.mutable_hello()->add_streams(stream);
    if (!rw_->Write(f)) return false;
    Frame in;
    if (rw_->Read(&in) && in.has_hello()) return true;
    if (in.body_case() != 0) {
      std::fprintf(stderr, "ForgedPeer::Hello: a frame other than a hello came back: %s\n",
                   in.ShortDebugString().c_str());
    } else {
      const grpc::Status st = Finish();
      std::fprintf(stderr, "ForgedPeer::Hello: the stream ended: %d %s\n",
                   static_cast<int>(st.error_code()), st.error_message().c_str());
    }
    return false;
  }

  // Sends one frame and keeps the stream open; false once the stream is gone.
  bool Write(const Frame& f) { return rw_->Write(f); }

  // Reads until a frame for which `wanted` is true arrives; returns it (an empty frame when the
  // stream ended first).
  template <class Pred>
  Frame Next(Pred wanted) {
    Frame in;
    while (rw_->Read(&in))
      if (wanted(in)) return in;
    return {};
  }

  // A unary call with this peer's certificate (Replication.FindAccount), 5 s deadline.
  grpc::Status FindAccount(const ::meridian::replication::v1::FindAccountRequest& req,
                           ::meridian::replication::v1::FindAccountResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return stub_->FindAccount(&ctx, req, out);
  }

  // A stream still open is cut (a NextAsync's read ends with it).
  ~ForgedPeer() {
    ctx_.TryCancel();
    if (reading_.valid()) reading_.wait();
  }

  // Next on another thread; wait for its frame with BeatUntil. One read at a time: the last
  // NextAsync must be over (its future ready) before any other read.
  template <class Pred>
  std::shared_future<Frame> NextAsync(Pred wanted) {
    if (reading_.valid() &&
        reading_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      std::fprintf(stderr, "ForgedPeer::NextAsync: the last NextAsync is still reading\n");
      std::abort();
    }
    reading_ = std::async(std::launch::async, [this, wanted] { return Next(wanted); }).share();
    return reading_;
  }

  // Next, with a heartbeat every 500 ms meanwhile, for at most `timeout`: an empty frame when the
  // stream ended first or time ran out (the stream is cut then).
  template <class Pred>
  Frame NextBeating(Pred wanted, std::chrono::milliseconds timeout) {
    std::shared_future<Frame> next = NextAsync(std::move(wanted));
    if (BeatUntil(next, timeout)) return next.get();
    ctx_.TryCancel();
    next.wait();
    return {};
  }

  // Waits up to `timeout` for `next` (from NextAsync), with a heartbeat every 500 ms so that
  // the peer does not take the wait for a dead stream; whether it is ready (the frame came, or
  // the stream ended).
  bool BeatUntil(const std::shared_future<Frame>& next, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (next.wait_for(std::chrono::milliseconds(500)) != std::future_status::ready) {
      if (std::chrono::steady_clock::now() >= end) return false;
      Frame beat;
      beat.mutable_heartbeat();
      (void)rw_->Write(beat);
    }
    return true;
  }

  // Reads until the peer ships a batch; returns it (an empty one when the stream ended first).
  ::meridian::replication::v1::DeltaBatch NextBatch() {
    return Next([](const Frame& f) { return f.has_batch(); }).batch();
  }

  // How the stream ended; call once Next or NextBatch found it ended. gRPC allows one Finish per
  // call (a second aborts the process), so the status is kept and later calls return it.
  grpc::Status Finish() {
    if (!finished_) finished_ = rw_->Finish();
    return *finished_;
  }

  // Breaks the stream off, as a lost connection would (frames in flight are lost), and returns
  // how it ended.
  grpc::Status Cut() {
    if (finished_) return *finished_;
    ctx_.TryCancel();
    if (reading_.valid()) reading_.wait();  // a NextAsync still reading: one read at a time
    return DrainAndFinish();
  }

  // Sends `frames`, half-closes, and reads until the stream ends; returns how it ended.
  grpc::Status SendAllAndFinish(const std::vector<Frame>& frames) {
    if (finished_) return *finished_;  // a Hello that failed finished the call already
    for (const Frame& f : frames) (void)rw_->Write(f);
    (void)rw_->WritesDone();
    return DrainAndFinish();
  }

  // Sends `f`, half-closes, and reads until the stream ends; returns how it ended.
  grpc::Status SendAndFinish(const Frame& f) { return SendAllAndFinish({f}); }

 private:
  // Reads what is left until the stream ends; how it ended.
  grpc::Status DrainAndFinish() {
    Frame in;
    while (rw_->Read(&in)) {
    }
    return Finish();
  }

  RegionSpec spec_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<::meridian::replication::v1::Replication::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<Frame, Frame>> rw_;
  std::shared_future<Frame> reading_;     // the last NextAsync
  std::optional<grpc::Status> finished_;  // the stream's status, once Finish was called
};

// A catch-up sync request for `group`'s orders at epoch 1 (read-only: no fence moves), the page
// after `after_key`.
inline ::meridian::replication::v1::Frame CatchUpRequest(uint32_t group,
                                                         const std::string& after_key = "") {
  ::meridian::replication::v1::Frame f;
  f.mutable_sync_request()->set_group(group);
  f.mutable_sync_request()->set_epoch(1);
  f.mutable_sync_request()->set_catch_up(true);
  f.mutable_sync_request()->set_after_key(after_key);
  return f;
}

// A new owner's takeover sync request for `group`'s orders at `epoch` (the receiver, once the win
// is vouched for, raises its fence and learns the new owner: a takeover it has seen).
inline ::meridian::replication::v1::Frame TakeoverSyncRequest(uint32_t group, uint64_t epoch) {
  ::meridian::replication::v1::Frame f;
  f.mutable_sync_request()->set_group(group);
  f.mutable_sync_request()->set_epoch(epoch);
  return f;
}

// A candidate's request for `group`'s lease at a new `epoch` (an acquisition: the acceptor grants
// it once no other region holds a promise from it), round `round`.
inline ::meridian::replication::v1::Frame LeaseAcquisition(uint32_t group, uint64_t epoch,
                                                           uint64_t round) {
  ::meridian::replication::v1::Frame f;
  f.mutable_lease()->set_group(group);
  f.mutable_lease()->set_epoch(epoch);
  f.mutable_lease()->mutable_request()->set_round(round);
  return f;
}

// A holder's renewal of `group`'s lease at `epoch` (receivers learn who holds the group from it,
// once vouched for: the receiver granted it that epoch, or a majority's records show it).
inline ::meridian::replication::v1::Frame LeaseRenewal(uint32_t group, uint64_t epoch) {
  ::meridian::replication::v1::Frame f;
  f.mutable_lease()->set_group(group);
  f.mutable_lease()->set_epoch(epoch);
  f.mutable_lease()->mutable_request()->set_round(1);
  f.mutable_lease()->mutable_request()->set_renewal(true);
  return f;
}

// A batch of one cart record from `origin`'s database `origin_database` at `seq`: sku-1 x3 for
// `user_id`, pinned to `residency` ("any" for none). As a state batch (`kind` kState) it is a
// document of a state transfer or a survivors' exchange: no seq, and `seq` must be 0.
inline ::meridian::replication::v1::Frame CartBatch(
    uint32_t origin, const std::string& user_id, const std::string& residency, int64_t seq,
    replication::BatchKind kind = replication::BatchKind::kDeltas,
    const std::string& origin_database = "shard-0") {
  namespace rpb = ::meridian::replication::v1;
  crdt::Cart cart(origin);
  crdt::Cart delta = cart.Add("sku-1", 3);
  rpb::RecordList list;
  rpb::Record* r = list.add_records();
  r->set_seq(seq);
  r->set_kind(rpb::RECORD_KIND_CART);
  r->set_key(user_id);
  r->set_payload(crdt::Encode(delta));
  r->set_residency(residency);
  r->set_committed_unix_ms(1);
  rpb::Frame f;
  *f.mutable_batch() = replication::EncodeBatch(origin, origin_database, seq, seq, list, 1, kind);
  return f;
}

// A hello's `applied` that claims every stream of `region` (global, shard-0, shard-1, as its
// replicator names them) through the last seq there can be (replication::kMaxSeq).
inline std::vector<std::pair<std::string, int64_t>> ClaimEveryStream(const Cluster& c,
                                                                     size_t region) {
  std::vector<std::pair<std::string, int64_t>> claim;
  for (auto [pool, db] : {std::pair{"global", "global"}, std::pair{"shard-0", "shard0"},
                          std::pair{"shard-1", "shard1"}}) {
    pqxx::connection conn(c.Dsn(region, db));
    pqxx::work tx(conn);
    claim.emplace_back(
        std::string(pool) + "-" + tx.exec1("SELECT id FROM outbox_stream")[0].as<std::string>(),
        replication::kMaxSeq);
  }
  return claim;
}

}  // namespace meridian::test_support
