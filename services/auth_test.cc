#include "services/auth.h"

#include <gtest/gtest.h>

namespace meridian::services {
namespace {

TEST(Auth, PasswordHashVerifies) {
  std::string h = HashPassword("correct horse", 1000);
  EXPECT_TRUE(VerifyPassword("correct horse", h));
  EXPECT_FALSE(VerifyPassword("correct hose", h));
  EXPECT_NE(HashPassword("correct horse", 1000), h);  // salted
  EXPECT_FALSE(VerifyPassword("x", "garbage"));
  EXPECT_FALSE(VerifyPassword("x", "pbkdf2-sha256$0$00$00"));
}

TEST(Auth, TokensRoundTripAndRejectForgery) {
  TokenClaims c{"u123", "eu", 2000, AccountStamp(1234567, 2)};
  EXPECT_EQ(c.account, "1234567-2");
  std::string t = IssueToken(c, "secret-secret-secret-secret-secret");
  auto ok = VerifyToken(t, "secret-secret-secret-secret-secret", 1000);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->user_id, "u123");
  EXPECT_EQ(ok->residency, "eu");
  EXPECT_EQ(ok->account, "1234567-2");
  EXPECT_EQ(ok->expires_unix_s, 2000);
  EXPECT_FALSE(VerifyToken(t, "another-secret-another-secret-xx", 1000).ok());
  EXPECT_FALSE(VerifyToken(t, "secret-secret-secret-secret-secret", 2000).ok());  // expired
  std::string forged = t;
  forged[1] = '9';
  EXPECT_FALSE(VerifyToken(forged, "secret-secret-secret-secret-secret", 1000).ok());
  EXPECT_FALSE(VerifyToken("", "s", 0).ok());
}

TEST(Auth, UserIdIsStableAndCaseInsensitive) {
  EXPECT_EQ(UserIdForEmail("Ann@Example.com"), UserIdForEmail("ann@example.com"));
  EXPECT_NE(UserIdForEmail("ann@example.com"), UserIdForEmail("bob@example.com"));
  EXPECT_EQ(UserIdForEmail("a@b.c").size(), 25u);
  EXPECT_TRUE(IsUserId(UserIdForEmail("a@b.c")));
  EXPECT_FALSE(IsUserId(""));
  EXPECT_FALSE(IsUserId("u0123456789abcdef0123456"));   // 23 hex digits
  EXPECT_FALSE(IsUserId("u0123456789ABCDEF01234567"));  // upper case
  EXPECT_FALSE(IsUserId("x0123456789abcdef01234567"));  // no leading u
  EXPECT_FALSE(IsUserId("u0123456789abcdef0123456'"));  // not hex
  const std::string id = UserIdForEmail("a@b.c");
  EXPECT_TRUE(ValidateAccountQuery(id, "").ok());
  EXPECT_TRUE(ValidateAccountQuery(id, std::string(kMaxPasswordBytes, 'p')).ok());
  EXPECT_TRUE(
      absl::IsInvalidArgument(ValidateAccountQuery(id, std::string(kMaxPasswordBytes + 1, 'p'))));
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateAccountQuery("u1", "")));
}

// The question every peer gets names no account: a prefix one id in 4,096 shares and an HMAC
// under a key of its own, which only the id it was made from matches.
TEST(Auth, ABlindAccountQueryMatchesOnlyItsIdAndNeverRepeats) {
  const std::string id = UserIdForEmail("ann@example.com");
  const BlindAccountQuery q = BlindAccountId(id);
  EXPECT_EQ(q.prefix, id.substr(0, 4));
  EXPECT_EQ(q.prefix.size(), 1 + kAccountPrefixDigits);
  EXPECT_EQ(q.blinded.find(id.substr(4)), std::string::npos);
  EXPECT_TRUE(ValidateBlindAccountQuery(q).ok());
  EXPECT_EQ(BlindedAccountId(q.key, id), q.blinded);
  // Another id with the same prefix does not match.
  std::string neighbour = id;
  neighbour.back() = neighbour.back() == '0' ? '1' : '0';
  EXPECT_NE(BlindedAccountId(q.key, neighbour), q.blinded);
  // A new question, a new key: two questions about one id cannot be linked by their HMAC.
  const BlindAccountQuery again = BlindAccountId(id);
  EXPECT_NE(again.key, q.key);
  EXPECT_NE(again.blinded, q.blinded);
  EXPECT_EQ(BlindedAccountId(again.key, id), again.blinded);

  auto with = [&](auto change) {
    BlindAccountQuery bad = q;
    change(bad);
    return ValidateBlindAccountQuery(bad);
  };
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.prefix = id.substr(0, 5); })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.prefix = "u%%%"; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.prefix = "x" + id.substr(1, 3); })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.key = ""; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.key[0] = 'G'; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.blinded.pop_back(); })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([&](auto& b) { b.blinded[3] = '\''; })));

  // A peer asks blind, or names the account with a login's password; nothing in between.
  EXPECT_TRUE(ValidatePeerAccountQuestion("", "", q).ok());
  EXPECT_TRUE(ValidatePeerAccountQuestion(id, "password", {}).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(ValidatePeerAccountQuestion(id, "", {})));
  // During a rolling upgrade (replicator.yaml coordination.account_questions: blind-or-named).
  EXPECT_TRUE(ValidatePeerAccountQuestion(id, "", {}, true).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(ValidatePeerAccountQuestion("u12", "", {}, true)));
  EXPECT_TRUE(absl::IsInvalidArgument(ValidatePeerAccountQuestion(id, "", q, true)));
  EXPECT_TRUE(absl::IsInvalidArgument(ValidatePeerAccountQuestion("", "password", q)));
  EXPECT_TRUE(absl::IsInvalidArgument(ValidatePeerAccountQuestion(id, "password", q)));
  EXPECT_TRUE(absl::IsInvalidArgument(ValidatePeerAccountQuestion("", "", {})));
  EXPECT_TRUE(absl::IsInvalidArgument(
      ValidatePeerAccountQuestion(id, std::string(kMaxPasswordBytes + 1, 'p'), {})));
}

}  // namespace
}  // namespace meridian::services
