#include "replication/accounts.h"

#include <algorithm>
#include <tuple>

namespace meridian::replication {

std::optional<AccountHolder> ChooseAccountHolder(const std::vector<AccountAnswer>& answers,
                                                 std::string_view own_jurisdiction) {
  auto rank = [&](const AccountAnswer& a) {
    return std::make_tuple(a.jurisdiction != own_jurisdiction, a.peer);
  };
  const AccountAnswer* best = nullptr;
  for (const AccountAnswer& a : answers) {
    if (a.answered && a.found && (best == nullptr || rank(a) < rank(*best))) best = &a;
  }
  if (best == nullptr) return std::nullopt;
  const bool home_unanswered = std::any_of(
      answers.begin(), answers.end(),
      [&](const AccountAnswer& a) { return !a.answered && a.jurisdiction == own_jurisdiction; });
  return AccountHolder{best->peer, best->residency,
                       best->jurisdiction == own_jurisdiction || !home_unanswered};
}

}  // namespace meridian::replication
