#pragma once

// Customer credentials and tokens.
// - Passwords: PBKDF2-HMAC-SHA256 (OpenSSL), 16-byte random salt, stored as
//   "pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>"; verification is constant-time.
// - Tokens: "<user_id>.<residency>.<account>.<expiry unix s>.<hex HMAC-SHA256 of the first
//   four>", signed with the region's token secret. A token names the user and the user's
//   residency so that a region can route and refuse without a database read, and the account:
//   the stamp of the registration it was issued for (AccountStamp), which tells apart two
//   accounts that one e-mail got in two regions that could not see each other (one user id).
// - User ids derive from the normalized e-mail (so a login finds the user's shard without a
//   global index): "u" + the first 24 hex digits of SHA-256(lowercased e-mail).
// Thread-safe (no state).

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace meridian::services {

inline constexpr int kPasswordIterations = 100'000;

std::string HashPassword(std::string_view password, int iterations = kPasswordIterations);
bool VerifyPassword(std::string_view password, std::string_view stored);

std::string UserIdForEmail(std::string_view email);
// True for an id UserIdForEmail can make ("u" and 24 lowercase hex digits).
bool IsUserId(std::string_view id);
// The longest password an account can have (registration takes 8..256 characters).
inline constexpr size_t kMaxPasswordBytes = 256;
// A question about an account from another process (the region's own LocateAccount):
// InvalidArgument unless `user_id` IsUserId and `password` (empty: none) is at most
// kMaxPasswordBytes.
absl::Status ValidateAccountQuery(std::string_view user_id, std::string_view password);

// The question a region asks every peer when it holds no row of an account (a customer pinned
// to another jurisdiction, or one registered moments ago elsewhere), without giving them the
// id: the id's first kAccountPrefixDigits hex digits, which one id in 4,096 shares, and an
// HMAC-SHA256 of the whole id under a key made for this one question. A peer that holds the
// account finds it among its ids with that prefix; any other peer learns 12 bits of an id it
// cannot match to anyone. The id itself (and a login's password) then goes to the one peer
// that holds the account, where it lives anyway.
inline constexpr size_t kAccountPrefixDigits = 3;
struct BlindAccountQuery {
  std::string prefix;   // "u" and kAccountPrefixDigits lowercase hex digits
  std::string key;      // 32 lowercase hex digits (16 random bytes), new for each question
  std::string blinded;  // BlindedAccountId(key, id): 64 lowercase hex digits
};
// REQUIRES: IsUserId(user_id).
BlindAccountQuery BlindAccountId(std::string_view user_id);
std::string BlindedAccountId(std::string_view key, std::string_view user_id);
// InvalidArgument unless the three parts have the forms above.
absl::Status ValidateBlindAccountQuery(const BlindAccountQuery& q);
// A peer's question (FindAccount) in one of its two forms, else InvalidArgument: blind (no
// user id, no password, `blind` valid) or named (`blind` empty, ValidateAccountQuery, and a
// password: only a login names the account, to the region that holds it). With
// `without_password_ok` a named question needs no password: a replicator from before blind
// questions asks every peer so (replication/account_questions.h, rolling upgrades).
absl::Status ValidatePeerAccountQuestion(std::string_view user_id, std::string_view password,
                                         const BlindAccountQuery& blind,
                                         bool without_password_ok = false);

struct TokenClaims {
  std::string user_id;
  std::string residency;
  int64_t expires_unix_s = 0;
  std::string account;  // AccountStamp of the registration; never holds '.'
};

// The stamp of one registration of an account: its profile's HLC and origin region.
std::string AccountStamp(int64_t hlc, int64_t origin);

std::string IssueToken(const TokenClaims& claims, std::string_view secret);
// Unauthenticated for a malformed, forged or expired token.
absl::StatusOr<TokenClaims> VerifyToken(std::string_view token, std::string_view secret,
                                        int64_t now_unix_s);

// Constant-time comparison of two secrets (operator token checks).
bool SecretsEqual(std::string_view a, std::string_view b);

// Fills out[0..n) from OpenSSL's generator. Should it fail, the process aborts: a salt or an id
// made of whatever the buffer held could repeat.
void RandomBytes(unsigned char* out, size_t n);

}  // namespace meridian::services
