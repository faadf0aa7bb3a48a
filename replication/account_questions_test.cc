#include "replication/account_questions.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "services/auth.h"

namespace meridian::replication {
namespace {

constexpr const char* kHeld = "u0123456789abcdef01234567";
constexpr const char* kOther = "u0123456789abcdef01234568";  // the same prefix

// A peer's FindAccount, as a replicator of this code answers it (blind, or named with a login's
// password) or, with `older`, as one from before blind questions did: the id alone, and a
// question without one refused as malformed. It holds kHeld when `holds`, and keeps every id it
// was sent.
class FakePeer final : public pb::Replication::Service {
 public:
  FakePeer(bool older, bool holds) : older_(older), holds_(holds) {}

  grpc::Status FindAccount(grpc::ServerContext*, const pb::FindAccountRequest* req,
                           pb::FindAccountResponse* out) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!req->user_id().empty()) ids_.push_back(req->user_id());
    if (older_) {
      if (!services::ValidateAccountQuery(req->user_id(), req->password()).ok()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "FindAccount: user_id must be \"u\" and 24 lowercase hex digits");
      }
      out->set_found(holds_ && req->user_id() == kHeld);
    } else {
      const services::BlindAccountQuery blind{
          .prefix = req->id_prefix(), .key = req->key(), .blinded = req->blinded_id()};
      if (!services::ValidatePeerAccountQuestion(req->user_id(), req->password(), blind).ok()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "FindAccount: malformed");
      }
      out->set_found(holds_ && services::BlindedAccountId(blind.key, kHeld) == blind.blinded);
    }
    if (out->found()) out->set_residency("eu");
    return grpc::Status::OK;
  }

  std::vector<std::string> ids() {
    std::lock_guard<std::mutex> l(mu_);
    return ids_;
  }

 private:
  const bool older_, holds_;
  std::mutex mu_;
  std::vector<std::string> ids_;
};

// Real gRPC in the process: each peer a server, reached through its in-process channel.
class AccountQuestionsTest : public ::testing::Test {
 protected:
  AccountPeer Serve(uint32_t id, std::string jurisdiction, FakePeer* peer) {
    grpc::ServerBuilder b;
    b.RegisterService(peer);
    servers_.push_back(b.BuildAndStart());
    stubs_.push_back(
        pb::Replication::NewStub(servers_.back()->InProcessChannel(grpc::ChannelArguments())));
    return {.peer = id, .jurisdiction = std::move(jurisdiction), .stub = stubs_.back().get()};
  }
  void TearDown() override {
    for (auto& s : servers_) s->Shutdown();
  }

  std::vector<std::unique_ptr<grpc::Server>> servers_;
  std::vector<std::unique_ptr<pb::Replication::Stub>> stubs_;
};

TEST_F(AccountQuestionsTest, EveryPeerIsAskedBlindAndNoneLearnsTheId) {
  FakePeer holder(false, true), other(false, false);
  std::vector<AccountPeer> peers = {Serve(2, "eu", &holder), Serve(3, "ap", &other)};
  for (bool named_to_older : {false, true}) {
    std::vector<AccountQuestion> q =
        AskWhoHoldsAccount(peers, kHeld, named_to_older, std::chrono::milliseconds(2000));
    ASSERT_EQ(q.size(), 2u);
    EXPECT_TRUE(q[0].status.ok()) << q[0].status.error_message();
    EXPECT_TRUE(q[0].answer.answered && q[0].answer.found);
    EXPECT_EQ(q[0].answer.peer, 2u);
    EXPECT_EQ(q[0].answer.residency, "eu");
    EXPECT_TRUE(q[1].answer.answered);
    EXPECT_FALSE(q[1].answer.found);
    EXPECT_FALSE(q[0].named || q[1].named);
  }
  // An id of the same prefix is not the holder's.
  std::vector<AccountQuestion> q =
      AskWhoHoldsAccount(peers, kOther, true, std::chrono::milliseconds(2000));
  EXPECT_FALSE(q[0].answer.found);
  EXPECT_TRUE(holder.ids().empty());
  EXPECT_TRUE(other.ids().empty());
}

// A rolling upgrade: ap-south still runs a replicator from before blind questions. By default it
// goes unanswered (the caller's lookup is incomplete, and it never gets the id); with
// blind-or-named it is asked again with the id, as that code asked, and its answer counts.
TEST_F(AccountQuestionsTest, APeerFromBeforeBlindQuestionsIsAskedByIdOnlyWhenAllowed) {
  FakePeer newer(false, false), older(true, true);
  std::vector<AccountPeer> peers = {Serve(2, "eu", &newer), Serve(3, "ap", &older)};
  std::vector<AccountQuestion> q =
      AskWhoHoldsAccount(peers, kHeld, false, std::chrono::milliseconds(2000));
  EXPECT_EQ(q[1].status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_FALSE(q[1].answer.answered);
  EXPECT_FALSE(q[1].named);
  EXPECT_TRUE(older.ids().empty()) << "the id went to a peer without blind-or-named";

  q = AskWhoHoldsAccount(peers, kHeld, true, std::chrono::milliseconds(2000));
  EXPECT_TRUE(q[1].status.ok()) << q[1].status.error_message();
  EXPECT_TRUE(q[1].named);
  EXPECT_TRUE(q[1].answer.answered && q[1].answer.found);
  EXPECT_EQ(q[1].answer.residency, "eu");
  EXPECT_EQ(older.ids(), std::vector<std::string>{kHeld});
  EXPECT_TRUE(q[0].status.ok());
  EXPECT_FALSE(q[0].named);
  EXPECT_TRUE(newer.ids().empty()) << "a peer that answers blind was sent the id";
}

// Only a refusal as malformed is asked again: a peer that cannot be reached is not.
TEST_F(AccountQuestionsTest, AnUnreachablePeerIsNotAskedAgain) {
  // Nothing listens on port 1 of loopback: every connection is refused, and a call waiting for a
  // ready channel ends at its deadline.
  auto channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  stubs_.push_back(pb::Replication::NewStub(channel));
  std::vector<AccountPeer> peers = {{.peer = 3, .jurisdiction = "ap", .stub = stubs_.back().get()}};
  std::vector<AccountQuestion> q =
      AskWhoHoldsAccount(peers, kHeld, true, std::chrono::milliseconds(300));
  EXPECT_EQ(q[0].status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << q[0].status.error_message();
  EXPECT_FALSE(q[0].named);
  EXPECT_FALSE(q[0].answer.answered);
}

}  // namespace
}  // namespace meridian::replication
