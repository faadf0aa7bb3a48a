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

}  // namespace
}  // namespace meridian::services
