#include "replication/page_cursor.h"

#include <utility>

namespace meridian::replication {

bool PageCursor::Answers(const std::optional<std::string>& echoed) const {
  if (done_) return false;
  // A replier built before the echo cannot say which page it answers: its reply is taken as
  // before (its peers upgrade to the echo; until then such a reply can still move the cursor).
  return !echoed || *echoed == after_key_;
}

void PageCursor::Applying(int64_t now_ms) {
  last_heard_ms_ = now_ms;
  applying_since_ms_ = now_ms;
}

void PageCursor::NotApplied(int64_t now_ms) {
  last_heard_ms_ = now_ms;
  applying_since_ms_.reset();
}

std::optional<std::string> PageCursor::Advance(std::string last_key, bool done, int64_t now_ms) {
  last_heard_ms_ = now_ms;
  applying_since_ms_.reset();
  done_ = done;
  if (done) return std::nullopt;
  after_key_ = std::move(last_key);
  return after_key_;
}

std::optional<std::string> PageCursor::Reask(int64_t now_ms) {
  if (done_ || (applying_since_ms_ && now_ms - *applying_since_ms_ < kApplyingMaxMs) ||
      (last_heard_ms_ && now_ms - *last_heard_ms_ < kReaskAfterMs)) {
    return std::nullopt;
  }
  last_heard_ms_ = now_ms;
  applying_since_ms_.reset();
  return after_key_;
}

}  // namespace meridian::replication
