#pragma once

// Which region checks a login's password when the region the customer logs in at holds no account
// for the e-mail. The replicator asks every peer whether it holds the account (the user id, a hash
// of the e-mail); this decides, from their answers, which holder is asked to check the password,
// and whether the password may go to it at all.
//
// Two accounts can share an e-mail: a registration goes ahead while a peer cannot be asked (a
// region must be able to register while another is down), so an e-mail registered pinned to eu at
// eu-west can be registered again, say with residency `any`, at ap-south. A login at eu-north must
// then not send the eu customer's password to ap-south to be checked against the other account:
// while the holder that answered is in another jurisdiction and a peer of the asking region's own
// jurisdiction did not answer, the password goes nowhere and the lookup is incomplete (the region
// answers 503, retry shortly). Pure: no I/O.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::replication {

struct AccountAnswer {
  uint32_t peer = 0;         // replica id
  std::string jurisdiction;  // the peer region's
  bool answered = false;     // false: unreachable, or no answer within the deadline
  bool found = false;        // it holds the account
  std::string residency;     // the account's, when found
};

struct AccountHolder {
  uint32_t peer = 0;
  std::string residency;
  // The password may be sent there to be checked: no peer that went unanswered could hold the
  // account the customer means ahead of it.
  bool may_check_password = false;
};

// The holder a login's password goes to: among the peers that answered and hold the account, one
// of `own_jurisdiction` first, then the lowest replica id. nullopt when none answered holding it.
[[nodiscard]] std::optional<AccountHolder> ChooseAccountHolder(
    const std::vector<AccountAnswer>& answers, std::string_view own_jurisdiction);

}  // namespace meridian::replication
