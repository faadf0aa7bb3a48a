#pragma once

// The cursor of one paged pull of a group's orders from one peer: a takeover sync (the group's
// new owner asks each peer for its orders of the group) or a catch-up (a survivor asks the new
// owner for a dead region's orders). Pages are asked one at a time, in key order: the request
// outstanding is always the page after `after_key()` ("" = the first page).
//
// Contract:
//   - A reply is used only if it answers the outstanding request, i.e. it echoes that request's
//     after_key (GroupSyncReply.after_key). A reply to any other request (the duplicate of a
//     re-ask, a page that crossed a re-ask, a page of an earlier chain) is dropped: it neither
//     moves the cursor back nor starts a chain of pages of its own. Before 2026-12-05 every reply
//     led to the next page of its own chain, and a re-ask restarted at page 1: once a page round
//     took over a second, scans piled up on the coordination thread and the sync never finished.
//   - A pull quiet for kReaskAfterMs is asked again for the outstanding page, never from the
//     first page. It is not quiet while the answer to that page is being applied (which can take
//     over a second: a page of 500 new orders took 1,067 ms on the shared 2-core machine): a
//     re-ask then would only make the peer read the page again for a duplicate to drop.
//   - The cursor only moves forward through Advance, by the reply that answered it.
//
// Pure: no I/O, no clock of its own (times come in, in milliseconds of one monotonic clock).
// Not thread-safe: the coordinator calls it under its lock.

#include <cstdint>
#include <optional>
#include <string>

namespace meridian::replication {

class PageCursor {
 public:
  // A pull with no reply for this long since its last ask or reply is asked again.
  static constexpr int64_t kReaskAfterMs = 1000;
  // An answer being applied for longer than this no longer holds re-asks back (a bound, should
  // a caller fail to report its end: an apply's region call has a 10 s deadline).
  static constexpr int64_t kApplyingMaxMs = 30000;

  // The key the outstanding request starts after ("" = the first page).
  [[nodiscard]] const std::string& after_key() const { return after_key_; }
  // The last page came: nothing more is asked.
  [[nodiscard]] bool done() const { return done_; }

  // Whether a reply answers the outstanding request. `echoed`: the after_key of the request the
  // reply answers, as the replier echoes it; absent when the replier is older than the echo, and
  // then the reply is taken, as every reply was before (false only once done).
  [[nodiscard]] bool Answers(const std::optional<std::string>& echoed) const;

  // A reply that Answers() came at `now_ms` and is being applied: no re-ask until Advance or
  // NotApplied (or kApplyingMaxMs).
  void Applying(int64_t now_ms);
  // The reply being applied could not be (the region unavailable): the outstanding page is asked
  // again once quiet for kReaskAfterMs from `now_ms`.
  void NotApplied(int64_t now_ms);

  // The reply that answered the outstanding request is applied. Returns the after_key of the next
  // request, which the caller sends (recorded as asked at `now_ms`), or nullopt when that reply
  // was the last page (done).
  // REQUIRES: Answers() of that reply's echo, checked under the same lock as this call.
  std::optional<std::string> Advance(std::string last_key, bool done, int64_t now_ms);

  // Whether the outstanding page is to be asked (again) at `now_ms`: not done, no answer being
  // applied, and never asked or quiet for kReaskAfterMs. If so, records the ask and returns the
  // after_key to ask with (the outstanding page's, never the first page's once it has moved on);
  // otherwise nullopt.
  std::optional<std::string> Reask(int64_t now_ms);

 private:
  std::string after_key_;
  bool done_ = false;
  std::optional<int64_t> last_heard_ms_;      // the last ask or answering reply; none: never asked
  std::optional<int64_t> applying_since_ms_;  // an answer is being applied since
};

}  // namespace meridian::replication
