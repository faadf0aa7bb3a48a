#include "services/domain.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "crdt/bounded_counter.h"

namespace meridian::services {

int32_t JumpHash(uint64_t key, int32_t buckets) {
  int64_t b = -1, j = 0;
  while (j < buckets) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = static_cast<int64_t>(
        (b + 1) * (static_cast<double>(1LL << 31) / static_cast<double>((key >> 33) + 1)));
  }
  return static_cast<int32_t>(b);
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

namespace {
absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(AbslView(field), ": ", AbslView(why)));
}
}  // namespace

TextProblem CheckText(std::string_view value) {
  // Strict UTF-8 (common/strings.h): PostgreSQL rejects the same sequences, so a string that
  // passes here can always be quoted and stored.
  for (size_t i = 0; i < value.size();) {
    uint32_t cp = 0;
    const size_t n = Utf8Sequence(value, i, &cp);
    if (n == 0) return TextProblem::kInvalidUtf8;
    // C0 controls except tab and newline, DEL, and the C1 controls U+0080..U+009F.
    if ((cp < 0x20 && cp != '\n' && cp != '\t') || (cp >= 0x7F && cp <= 0x9F)) {
      return TextProblem::kControl;
    }
    i += n;
  }
  return TextProblem::kNone;
}

absl::Status ValidateSku(std::string_view sku) {
  if (sku.empty() || sku.size() > 64) return Bad("sku", "must be 1..64 characters");
  // A URL path step, which clients resolve away before sending: such a product could never be
  // reached by its path.
  if (sku == "." || sku == "..") return Bad("sku", "'.' and '..' are path steps, not SKUs");
  for (char c : sku) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return Bad("sku", "only letters, digits, '-', '_' and '.'");
    }
  }
  return absl::OkStatus();
}

bool ValidReclaimedItem(std::string_view sku, uint64_t units, uint64_t received) {
  using crdt::BoundedCounter;
  return ValidateSku(sku).ok() && units > 0 && units <= BoundedCounter::kMaxUnits &&
         (received == 0 || (received >= units && received <= BoundedCounter::kMaxTotal));
}

absl::Status ValidateEmail(std::string_view email) {
  if (email.size() < 3 || email.size() > 254) return Bad("email", "must be 3..254 characters");
  size_t at = email.find('@');
  if (at == std::string_view::npos || at == 0 || at + 1 >= email.size() ||
      email.find('@', at + 1) != std::string_view::npos) {
    return Bad("email", "not an e-mail address");
  }
  // The domain: two labels at least, none of them empty ("a@.", "a@b." and "a@b..io" are no
  // addresses anyone could receive mail at).
  const std::string_view domain = email.substr(at + 1);
  if (domain.find('.') == std::string_view::npos || domain.front() == '.' || domain.back() == '.' ||
      domain.find("..") != std::string_view::npos) {
    return Bad("email", "not an e-mail address (the part after '@' needs labels like b.io)");
  }
  const TextProblem problem = CheckText(email);
  if (problem == TextProblem::kInvalidUtf8) return Bad("email", "must be valid UTF-8");
  if (problem == TextProblem::kControl || std::any_of(email.begin(), email.end(), [](char c) {
        return std::isspace(static_cast<unsigned char>(c)) != 0;
      })) {
    return Bad("email", "must not contain spaces or control characters");
  }
  return absl::OkStatus();
}

absl::Status ValidatePassword(std::string_view password) {
  if (password.size() < 8 || password.size() > 256) {
    return Bad("password", "must be 8..256 characters");
  }
  return absl::OkStatus();
}

absl::Status ValidateResidency(std::string_view r) {
  if (r == "any") return absl::OkStatus();
  if (r.size() < 2 || r.size() > 16) return Bad("residency", "'any' or a jurisdiction like 'eu'");
  for (char c : r) {
    if (!std::islower(static_cast<unsigned char>(c))) {
      return Bad("residency", "'any' or a jurisdiction like 'eu'");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCurrency(std::string_view c) {
  if (c.size() != 3) return Bad("currency", "three capital letters (ISO 4217)");
  for (char ch : c)
    if (!std::isupper(static_cast<unsigned char>(ch))) {
      return Bad("currency", "three capital letters (ISO 4217)");
    }
  return absl::OkStatus();
}

absl::Status ValidateIdempotencyKey(std::string_view key) {
  if (key.empty() || key.size() > 128) return Bad("Idempotency-Key", "1..128 characters");
  for (char c : key)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
          c == ':')) {
      return Bad("Idempotency-Key", "letters, digits and -_.: only");
    }
  return absl::OkStatus();
}

absl::Status ValidateCategoryId(std::string_view id) {
  if (id.empty() || id.size() > 64) return Bad("category", "must be 1..64 characters");
  for (char c : id)
    if (!(std::islower(static_cast<unsigned char>(c)) ||
          std::isdigit(static_cast<unsigned char>(c)) || c == '-')) {
      return Bad("category", "only a-z, 0-9 and '-'");
    }
  if (std::all_of(id.begin(), id.end(), [](char c) { return c == '-'; })) {
    return Bad("category", "needs a letter or digit, not only '-'");
  }
  return absl::OkStatus();
}

absl::Status ValidateText(std::string_view field, std::string_view value, size_t min_len,
                          size_t max_len) {
  if (value.size() < min_len || value.size() > max_len) {
    return Bad(field, absl::StrCat("must be ", min_len, "..", max_len, " bytes"));
  }
  switch (CheckText(value)) {
    case TextProblem::kNone:
      return absl::OkStatus();
    case TextProblem::kInvalidUtf8:
      return Bad(field, "must be valid UTF-8");
    case TextProblem::kControl:
      return Bad(field, "must not contain control characters (tab and newline are allowed)");
  }
  return Bad(field, "must be valid UTF-8");
}

absl::Status ValidateCardNumber(std::string_view number) {
  // Digits first: a number of other characters (full-width digits, say) is told so, not that
  // its byte count is off.
  if (!std::all_of(number.begin(), number.end(),
                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; })) {
    return Bad("card_number", "digits 0-9 only");
  }
  if (number.size() < 12 || number.size() > 19) return Bad("card_number", "12..19 digits");
  int sum = 0;
  bool dbl = false;
  for (auto it = number.rbegin(); it != number.rend(); ++it) {
    int d = *it - '0';
    if (dbl) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    dbl = !dbl;
  }
  if (sum % 10 != 0) return Bad("card_number", "fails the Luhn check");
  return absl::OkStatus();
}

CardDecision SandboxDecision(std::string_view card_number) {
  return card_number == "4000000000000002" ? CardDecision::kDeclined : CardDecision::kApproved;
}

std::string ChargeIdPrefix(uint32_t replica_id) { return absl::StrCat("ch", replica_id, "_"); }

bool ChargeTakenElsewhere(std::string_view charge_id, uint32_t replica_id) {
  if (!charge_id.starts_with("ch")) return false;
  const char* first = charge_id.data() + 2;
  const char* end = charge_id.data() + charge_id.size();
  uint32_t taken_by = 0;
  auto [after, ec] = std::from_chars(first, end, taken_by);
  if (ec != std::errc() || after == first || after == end || *after != '_') return false;
  return taken_by != replica_id;
}

std::vector<Mismatch> Reconcile(const std::vector<ProviderCharge>& charges,
                                const std::vector<OrderPayment>& orders, uint32_t replica_id) {
  std::vector<Mismatch> out;
  std::map<std::string, const OrderPayment*> by_ref;
  for (const auto& o : orders)
    if (!o.payment_ref.empty()) by_ref[o.payment_ref] = &o;
  std::map<std::string, const ProviderCharge*> by_id;
  for (const auto& c : charges) {
    by_id[c.charge_id] = &c;
    if (c.status == "declined") continue;
    auto it = by_ref.find(c.charge_id);
    // A refunded charge no order took is a payment given back when its order could not be
    // marked paid (cancelled meanwhile, or moved to a newer owner): settled, not a mismatch.
    if (it == by_ref.end() && c.status == "refunded") continue;
    if (it == by_ref.end()) {
      out.push_back({"charge_without_order", c.order_id, c.charge_id,
                     absl::StrCat("provider ", c.status, " ", c.amount_cents, " cents")});
      continue;
    }
    const OrderPayment& o = *it->second;
    if (o.total_cents != c.amount_cents) {
      out.push_back({"amount_differs", o.order_id, c.charge_id,
                     absl::StrCat("order ", o.total_cents, " vs charge ", c.amount_cents)});
    }
    bool order_paid = o.status == "paid";
    bool order_refunded = o.status == "refunded";
    if ((c.status == "captured" && !order_paid) || (c.status == "refunded" && !order_refunded)) {
      out.push_back({"status_differs", o.order_id, c.charge_id,
                     absl::StrCat("order ", o.status, " vs charge ", c.status)});
    }
  }
  for (const auto& o : orders) {
    if ((o.status == "paid" || o.status == "refunded") &&
        (o.payment_ref.empty() ||
         (!by_id.count(o.payment_ref) && !ChargeTakenElsewhere(o.payment_ref, replica_id)))) {
      out.push_back({"paid_order_without_charge", o.order_id, o.payment_ref,
                     absl::StrCat("order ", o.status, " but the provider has no such charge")});
    }
  }
  return out;
}

}  // namespace meridian::services
