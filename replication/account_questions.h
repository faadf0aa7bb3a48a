#pragma once

// Asking the peer regions whether they hold an account (Replication.FindAccount), for a login or
// registration at a region that has no row of it. Every peer is asked blind
// (services::BlindAccountId: the id's first digits and an HMAC of it under a key made for that
// question), so only a region that holds the account learns whose it is; the id and a login's
// password go afterwards to the one holder chosen (accounts.h), by the coordinator.
//
// Rolling upgrades: a replicator from before blind questions (2026-12-07) refuses them as
// malformed (INVALID_ARGUMENT: "user_id must be ..."), and asks with the id alone, which a newer
// one refuses. replicator.yaml's `coordination.account_questions: blind-or-named`, meant for the
// length of the upgrade, asks such a peer again with the id, as the code before asked every peer,
// and answers its questions (replicator.cc). The default, `blind`, never sends the id to a peer
// that may not hold the account.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "replication/accounts.h"
#include "replication/replication.grpc.pb.h"

namespace meridian::replication {

namespace pb = ::meridian::replication::v1;

struct AccountPeer {
  uint32_t peer = 0;         // replica id
  std::string jurisdiction;  // the peer region's
  pb::Replication::StubInterface* stub = nullptr;
};

struct AccountQuestion {
  AccountAnswer answer;
  grpc::Status status;  // the last call's: not OK means unanswered
  bool named = false;   // asked again with the id (a peer from before blind questions)
};

// Asks every peer at once, blind, and waits for every answer (each call `deadline`, waiting for a
// reconnecting channel). With `named_to_older_peers`, a peer that refused the blind question as
// malformed is asked again, all such at once, with the id. In the order of `peers`.
[[nodiscard]] std::vector<AccountQuestion> AskWhoHoldsAccount(const std::vector<AccountPeer>& peers,
                                                              std::string_view user_id,
                                                              bool named_to_older_peers,
                                                              std::chrono::milliseconds deadline);

}  // namespace meridian::replication
