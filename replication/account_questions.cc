#include "replication/account_questions.h"

#include <condition_variable>
#include <memory>
#include <mutex>

#include "services/auth.h"

namespace meridian::replication {
namespace {

struct Call {
  size_t index = 0;  // into the answers
  grpc::ClientContext ctx;
  pb::FindAccountResponse resp;
  grpc::Status status;
};

// Makes every call of `calls` (to the stub of its peer) at once with `q`, and waits for all.
void AskAll(const std::vector<AccountPeer>& peers, std::vector<std::unique_ptr<Call>>& calls,
            const pb::FindAccountRequest& q, std::chrono::milliseconds deadline) {
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  for (auto& c : calls) {
    c->ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    c->ctx.set_wait_for_ready(true);  // a peer heard from lately: its channel may be reconnecting
    Call* call = c.get();
    // The callback runs once for every call, on success, error or deadline alike.
    peers[call->index].stub->async()->FindAccount(&call->ctx, &q, &call->resp,
                                                  [&, call](grpc::Status s) {
                                                    std::lock_guard<std::mutex> l(mu);
                                                    call->status = std::move(s);
                                                    ++done;
                                                    cv.notify_all();
                                                  });
  }
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return done == calls.size(); });
}

std::vector<std::unique_ptr<Call>> CallsTo(const std::vector<size_t>& indexes) {
  std::vector<std::unique_ptr<Call>> calls;
  for (size_t i : indexes) {
    calls.push_back(std::make_unique<Call>());
    calls.back()->index = i;
  }
  return calls;
}

}  // namespace

std::vector<AccountQuestion> AskWhoHoldsAccount(const std::vector<AccountPeer>& peers,
                                                std::string_view user_id, bool named_to_older_peers,
                                                std::chrono::milliseconds deadline) {
  std::vector<AccountQuestion> out(peers.size());
  auto record = [&](const Call& c, bool named) {
    AccountQuestion& q = out[c.index];
    q.status = c.status;
    q.named = named;
    q.answer = {.peer = peers[c.index].peer,
                .jurisdiction = peers[c.index].jurisdiction,
                .answered = c.status.ok(),
                .found = c.status.ok() && c.resp.found(),
                .residency = c.status.ok() ? c.resp.residency() : ""};
  };
  const services::BlindAccountQuery blind = services::BlindAccountId(user_id);
  pb::FindAccountRequest q;
  q.set_id_prefix(blind.prefix);
  q.set_key(blind.key);
  q.set_blinded_id(blind.blinded);
  std::vector<size_t> all(peers.size());
  for (size_t i = 0; i < peers.size(); ++i) all[i] = i;
  std::vector<std::unique_ptr<Call>> calls = CallsTo(all);
  AskAll(peers, calls, q, deadline);
  std::vector<size_t> older;
  for (const auto& c : calls) {
    record(*c, false);
    if (named_to_older_peers && c->status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      older.push_back(c->index);
    }
  }
  if (older.empty()) return out;
  pb::FindAccountRequest named;
  named.set_user_id(std::string(user_id));
  calls = CallsTo(older);
  AskAll(peers, calls, named, deadline);
  for (const auto& c : calls) record(*c, true);
  return out;
}

}  // namespace meridian::replication
