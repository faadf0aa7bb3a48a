#include "services/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace meridian::services {
namespace {

std::string Hex(const unsigned char* p, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

// `digits` lowercase hex digits, nothing else.
bool IsLowerHex(std::string_view s, size_t digits) {
  return s.size() == digits && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool Unhex(std::string_view s, std::vector<unsigned char>* out) {
  if (s.size() % 2) return false;
  out->clear();
  for (size_t i = 0; i < s.size(); i += 2) {
    auto v = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int hi = v(s[i]), lo = v(s[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<unsigned char>(hi * 16 + lo));
  }
  return true;
}

std::string Pbkdf2(std::string_view password, const unsigned char* salt, size_t salt_len,
                   int iterations) {
  unsigned char out[32];
  PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt,
                    static_cast<int>(salt_len), iterations, EVP_sha256(), sizeof out, out);
  return Hex(out, sizeof out);
}

std::string Hmac(std::string_view data, std::string_view secret) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  return Hex(mac, len);
}

}  // namespace

bool SecretsEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void RandomBytes(unsigned char* out, size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) {
    std::fprintf(stderr, "meridian: OpenSSL's random generator failed (RAND_bytes); aborting\n");
    std::abort();
  }
}

std::string HashPassword(std::string_view password, int iterations) {
  unsigned char salt[16];
  RandomBytes(salt, sizeof salt);
  return absl::StrCat("pbkdf2-sha256$", iterations, "$", Hex(salt, sizeof salt), "$",
                      Pbkdf2(password, salt, sizeof salt, iterations));
}

bool VerifyPassword(std::string_view password, std::string_view stored) {
  std::vector<std::string_view> parts = Split(stored, '$');
  if (parts.size() != 4 || parts[0] != "pbkdf2-sha256") return false;
  int iterations = 0;
  if (!ParseInt(parts[1], &iterations) || iterations < 1 || iterations > 10'000'000) {
    return false;
  }
  std::vector<unsigned char> salt;
  if (!Unhex(parts[2], &salt)) return false;
  return SecretsEqual(Pbkdf2(password, salt.data(), salt.size(), iterations), parts[3]);
}

std::string UserIdForEmail(std::string_view email) {
  std::string lower(email);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(lower.data()), lower.size(), digest);
  return "u" + Hex(digest, 12);
}

bool IsUserId(std::string_view id) {
  return !id.empty() && id[0] == 'u' && IsLowerHex(id.substr(1), 24);
}

absl::Status ValidateAccountQuery(std::string_view user_id, std::string_view password) {
  if (!IsUserId(user_id)) {
    return absl::InvalidArgumentError("user_id must be \"u\" and 24 lowercase hex digits");
  }
  if (password.size() > kMaxPasswordBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("password longer than ", kMaxPasswordBytes, " bytes"));
  }
  return absl::OkStatus();
}

BlindAccountQuery BlindAccountId(std::string_view user_id) {
  unsigned char key[16];
  RandomBytes(key, sizeof key);
  BlindAccountQuery q{.prefix = std::string(user_id.substr(0, 1 + kAccountPrefixDigits)),
                      .key = Hex(key, sizeof key),
                      .blinded = ""};
  q.blinded = BlindedAccountId(q.key, user_id);
  return q;
}

std::string BlindedAccountId(std::string_view key, std::string_view user_id) {
  return Hmac(user_id, key);
}

absl::Status ValidateBlindAccountQuery(const BlindAccountQuery& q) {
  if (q.prefix.empty() || q.prefix[0] != 'u' ||
      !IsLowerHex(std::string_view(q.prefix).substr(1), kAccountPrefixDigits)) {
    return absl::InvalidArgumentError(absl::StrCat("id_prefix must be \"u\" and ",
                                                   kAccountPrefixDigits, " lowercase hex digits"));
  }
  if (!IsLowerHex(q.key, 32)) {
    return absl::InvalidArgumentError("key must be 32 lowercase hex digits");
  }
  if (!IsLowerHex(q.blinded, 64)) {
    return absl::InvalidArgumentError("blinded_id must be 64 lowercase hex digits");
  }
  return absl::OkStatus();
}

absl::Status ValidatePeerAccountQuestion(std::string_view user_id, std::string_view password,
                                         const BlindAccountQuery& blind, bool without_password_ok) {
  if (user_id.empty()) {
    if (!password.empty()) {
      return absl::InvalidArgumentError("a password goes only with the user id, to its holder");
    }
    return ValidateBlindAccountQuery(blind);
  }
  if (!blind.prefix.empty() || !blind.key.empty() || !blind.blinded.empty()) {
    return absl::InvalidArgumentError("a question names the user id or blinds it, not both");
  }
  if (password.empty() && !without_password_ok) {
    return absl::InvalidArgumentError(
        "a question that names the account carries a login's password; without one, ask by "
        "id_prefix, key and blinded_id");
  }
  return ValidateAccountQuery(user_id, password);
}

std::string AccountStamp(int64_t hlc, int64_t origin) { return absl::StrCat(hlc, "-", origin); }

std::string IssueToken(const TokenClaims& claims, std::string_view secret) {
  std::string body = absl::StrCat(claims.user_id, ".", claims.residency, ".", claims.account, ".",
                                  claims.expires_unix_s);
  return absl::StrCat(body, ".", Hmac(body, secret));
}

absl::StatusOr<TokenClaims> VerifyToken(std::string_view token, std::string_view secret,
                                        int64_t now_unix_s) {
  if (token.size() > 512) return absl::UnauthenticatedError("token too long");
  size_t last = token.rfind('.');
  if (last == std::string_view::npos) return absl::UnauthenticatedError("malformed token");
  std::string_view body = token.substr(0, last);
  if (!SecretsEqual(Hmac(body, secret), token.substr(last + 1))) {
    return absl::UnauthenticatedError("invalid token signature");
  }
  std::vector<std::string_view> parts = Split(body, '.');
  // A token of the three-part form from before accounts were named is refused here: its holder
  // logs in again.
  if (parts.size() != 4) return absl::UnauthenticatedError("malformed token (log in again)");
  TokenClaims c;
  c.user_id = std::string(parts[0]);
  c.residency = std::string(parts[1]);
  c.account = std::string(parts[2]);
  if (!ParseInt(parts[3], &c.expires_unix_s)) {
    return absl::UnauthenticatedError("malformed token");
  }
  if (c.expires_unix_s <= now_unix_s) return absl::UnauthenticatedError("token expired");
  return c;
}

}  // namespace meridian::services
