#include "replication/page_cursor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <optional>
#include <set>
#include <string>

namespace meridian::replication {
namespace {

TEST(PageCursorTest, AsksTheFirstPageAtOnceThenNothingUntilQuietForASecond) {
  PageCursor c;
  EXPECT_EQ(c.Reask(5000), std::optional<std::string>(""));
  EXPECT_EQ(c.Reask(5999), std::nullopt);
  EXPECT_EQ(c.Reask(6000), std::optional<std::string>(""));  // the first page, lost
}

TEST(PageCursorTest, AReaskAsksTheOutstandingPageNotTheFirst) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  ASSERT_TRUE(c.Answers(std::string("")));
  EXPECT_EQ(c.Advance("o500", false, 100), std::optional<std::string>("o500"));
  EXPECT_EQ(c.Reask(1099), std::nullopt);
  EXPECT_EQ(c.Reask(1100), std::optional<std::string>("o500"));
}

TEST(PageCursorTest, OnlyTheReplyToTheOutstandingPageIsTaken) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  ASSERT_TRUE(c.Answers(std::string("")));
  ASSERT_EQ(c.Advance("o500", false, 100), std::optional<std::string>("o500"));
  // The first page again (a re-ask's duplicate): taking it would move the cursor back to o500's
  // page's start and start a second chain of pages.
  EXPECT_FALSE(c.Answers(std::string("")));
  EXPECT_FALSE(c.Answers(std::string("o1000")));  // a page not asked (yet)
  EXPECT_TRUE(c.Answers(std::string("o500")));
  EXPECT_EQ(c.after_key(), "o500");
}

TEST(PageCursorTest, AStaleDuplicateDoesNotMoveTheCursorBack) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  ASSERT_TRUE(c.Advance("o500", false, 10));
  ASSERT_EQ(c.Reask(1010), std::optional<std::string>("o500"));  // quiet: asked again
  ASSERT_TRUE(c.Answers(std::string("o500")));                   // the first answer
  ASSERT_EQ(c.Advance("o1000", false, 1100), std::optional<std::string>("o1000"));
  EXPECT_FALSE(c.Answers(std::string("o500")));  // the re-ask's duplicate is dropped
  EXPECT_EQ(c.after_key(), "o1000");
}

TEST(PageCursorTest, TheLastPageEndsThePull) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  EXPECT_EQ(c.Advance("o42", true, 100), std::nullopt);
  EXPECT_TRUE(c.done());
  EXPECT_FALSE(c.Answers(std::string("")));
  EXPECT_FALSE(c.Answers(std::nullopt));
  EXPECT_EQ(c.Reask(10000), std::nullopt);
}

TEST(PageCursorTest, NoReaskWhileTheAnswerIsBeingApplied) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  ASSERT_TRUE(c.Answers(std::string("")));
  c.Applying(900);
  EXPECT_EQ(c.Reask(2500), std::nullopt);  // a slow apply, not a quiet peer
  ASSERT_EQ(c.Advance("o500", false, 2600), std::optional<std::string>("o500"));
  EXPECT_EQ(c.Reask(3599), std::nullopt);
  EXPECT_EQ(c.Reask(3600), std::optional<std::string>("o500"));
}

TEST(PageCursorTest, AnAnswerNotAppliedIsAskedAgainASecondLater) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  ASSERT_TRUE(c.Advance("o500", false, 100));
  c.Applying(200);
  c.NotApplied(5000);  // the region unavailable
  EXPECT_EQ(c.Reask(5999), std::nullopt);
  EXPECT_EQ(c.Reask(6000), std::optional<std::string>("o500"));
}

TEST(PageCursorTest, AnApplyThatNeverReportsHoldsReasksBackForABoundedTime) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  c.Applying(100);
  EXPECT_EQ(c.Reask(100 + PageCursor::kApplyingMaxMs - 1), std::nullopt);
  EXPECT_EQ(c.Reask(100 + PageCursor::kApplyingMaxMs), std::optional<std::string>(""));
}

TEST(PageCursorTest, AReplierThatDoesNotEchoIsTakenAsBefore) {
  PageCursor c;
  ASSERT_TRUE(c.Reask(0));
  EXPECT_TRUE(c.Answers(std::nullopt));
  ASSERT_TRUE(c.Advance("o500", false, 10));
  EXPECT_TRUE(c.Answers(std::nullopt));
}

// One peer's takeover sync (or catch-up), as the coordinator runs it, in simulated time: the
// asker's tick every 50 ms re-asks through Reask; its coordination thread takes replies one at a
// time, checks Answers, applies the page (apply_ms, the region's ApplyOrderStates), then Advance
// and asks the next page; the replier's coordination thread reads a page (read_ms) per request in
// arrival order, dropping a request identical to one still queued (SamePage). Frames take
// one_way_ms; every lose_every-th reply is lost (0: none). Returns the time the last page was
// applied, or nullopt when it was not by limit_ms; `reads` and `applies` count page reads at the
// replier and applies at the asker.
struct SyncRun {
  std::optional<int64_t> done_ms;
  int reads = 0;
  int applies = 0;
  std::set<int> applied;  // order numbers applied
};

std::string Key(int n) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "o%06d", n);
  return buf;
}

SyncRun RunSync(int orders, int page, int64_t apply_ms, int64_t limit_ms, int lose_every = 0) {
  constexpr int64_t kTickMs = 50, kOneWayMs = 50, kReadMs = 100;
  struct Request {
    int64_t at_ms;
    std::string after_key;
  };
  struct Reply {
    int64_t at_ms;
    std::string after_key;    // echoed
    int first = 0, last = 0;  // orders (first, last]
    bool done = false;
  };
  SyncRun run;
  PageCursor cursor;
  std::deque<Request> to_replier;  // in arrival order
  std::deque<Reply> to_asker;
  int64_t replier_free_ms = 0, asker_free_ms = 0, next_tick_ms = 0;
  std::optional<Reply> applying;  // the page the asker's coordination thread is applying
  auto ask = [&](int64_t at_ms, const std::string& key) {
    for (const Request& q : to_replier) {
      if (q.after_key == key) return;  // SamePage: the same request still waits there
    }
    to_replier.push_back({at_ms + kOneWayMs, key});
  };
  for (int64_t now = 0; now <= limit_ms; now += 10) {
    if (now >= next_tick_ms) {
      next_tick_ms += kTickMs;
      if (std::optional<std::string> key = cursor.Reask(now)) ask(now, *key);
    }
    if (replier_free_ms <= now && !to_replier.empty() && to_replier.front().at_ms <= now) {
      Request q = to_replier.front();
      to_replier.pop_front();
      ++run.reads;
      const int first = q.after_key.empty() ? 0 : std::stoi(q.after_key.substr(1));
      const int last = std::min(orders, first + page);
      replier_free_ms = now + kReadMs;
      if (lose_every > 0 && run.reads % lose_every == 0) continue;  // lost with a stream
      to_asker.push_back({replier_free_ms + kOneWayMs, q.after_key, first, last, last == orders});
    }
    if (applying && asker_free_ms <= now) {
      const Reply r = *applying;
      applying.reset();
      if (cursor.Answers(r.after_key)) {  // checked again after the apply, as the coordinator
        if (std::optional<std::string> next = cursor.Advance(Key(r.last), r.done, now)) {
          ask(now, *next);
        } else {
          run.done_ms = now;
          return run;
        }
      }
    }
    if (!applying && !to_asker.empty() && to_asker.front().at_ms <= now) {
      Reply r = to_asker.front();
      to_asker.pop_front();
      if (!cursor.Answers(r.after_key)) continue;  // dropped unapplied
      cursor.Applying(now);
      ++run.applies;
      for (int n = r.first + 1; n <= r.last; ++n) run.applied.insert(n);
      applying = r;
      asker_free_ms = now + apply_ms;
    }
  }
  return run;
}

// The review of 2026-12-05 (finding 3) measured 1,067 ms for ApplyOrderStates of 500 new orders
// of 20 lines each on this machine. Before, a re-ask restarted the scan at page 1 and every reply
// led to the next page of its own chain: once a round took over a second, scans piled up (its
// model: 1,125 s for 10 pages, 1,024 scans). With one cursor, each page is read and applied once
// (a re-ask waits while an answer is being applied).
TEST(PageCursorTest, ASyncWhosePagesTakeOverASecondToApplyFinishes) {
  for (int64_t apply_ms : {300, 900, 1100, 1500, 2500}) {
    SCOPED_TRACE(apply_ms);
    const int pages = 10;
    SyncRun run = RunSync(pages * 500, 500, apply_ms, 600000);
    ASSERT_TRUE(run.done_ms.has_value()) << "not done in 10 minutes; page reads " << run.reads;
    // A round is the reply's read, two crossings and the apply, plus up to a tick.
    EXPECT_LE(*run.done_ms, pages * (apply_ms + 100 + 2 * 50 + 50) + 1000);
    EXPECT_EQ(run.applies, pages) << "a page applied twice: a duplicate was taken";
    EXPECT_EQ(run.reads, pages) << "a page read again for nothing";
    EXPECT_EQ(run.applied.size(), static_cast<size_t>(pages * 500)) << "a page was skipped";
  }
}

// A reply lost with a stream: the page outstanding is asked again after a second of quiet, and
// the pull goes on from there, not from the first page.
TEST(PageCursorTest, ALostReplyIsAskedAgainAndThePullGoesOnFromThere) {
  for (int64_t apply_ms : {300, 1100}) {
    SCOPED_TRACE(apply_ms);
    const int pages = 10;
    SyncRun run = RunSync(pages * 500, 500, apply_ms, 600000, /*lose_every=*/3);
    ASSERT_TRUE(run.done_ms.has_value()) << "not done in 10 minutes; page reads " << run.reads;
    EXPECT_EQ(run.applies, pages);
    EXPECT_LE(run.reads, pages + pages / 2 + 1);  // each lost one read once more
    EXPECT_EQ(run.applied.size(), static_cast<size_t>(pages * 500));
  }
}

}  // namespace
}  // namespace meridian::replication
