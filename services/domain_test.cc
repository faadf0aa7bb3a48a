#include "services/domain.h"

#include <gtest/gtest.h>

#include <string>

namespace meridian::services {
namespace {

TEST(Domain, JumpHashIsStableAndMovesLittle) {
  int moved = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string id = "user-" + std::to_string(i);
    int a = ShardForUser(id, 4);
    int b = ShardForUser(id, 5);
    EXPECT_GE(a, 0);
    EXPECT_LT(a, 4);
    EXPECT_EQ(a, ShardForUser(id, 4));
    if (a != b) {
      ++moved;
      EXPECT_EQ(b, 4);  // a key only ever moves to the new shard
    }
  }
  EXPECT_NEAR(moved, 2000, 300);  // about 1/5
}

TEST(Domain, TextMustBeUtf8WithoutControlCharacters) {
  EXPECT_TRUE(ValidateText("q", "copper kettle", 1, 200).ok());
  EXPECT_TRUE(ValidateText("q", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", 1, 200).ok());
  EXPECT_TRUE(ValidateText("q", "line\nnext\tcol", 1, 200).ok());
  EXPECT_TRUE(ValidateText("q", "\xC2\xA0\xEF\xBF\xBD\xF4\x8F\xBF\xBF", 1, 200)
                  .ok());  // U+00A0 U+FFFD U+10FFFF
  // Not UTF-8: a lone lead byte, a stray continuation, bytes never used, overlong forms,
  // surrogates, above U+10FFFF, a truncated sequence.
  for (const char* bad : {"\xC3", "\xFF",
                          "a\x80"
                          "b",
                          "\xC0\xAF", "\xE0\x80\xAF", "\xF0\x80\x80\xAF", "\xED\xA0\x80",
                          "\xF4\x90\x80\x80", "\xE2\x82", "\xF5\x80\x80\x80"}) {
    absl::Status st = ValidateText("q", bad, 1, 200);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << bad;
    EXPECT_EQ(st.message(), "q: must be valid UTF-8") << bad;
  }
  // Controls: C0 except tab and newline, DEL, C1 (U+0080..U+009F, encoded C2 80..C2 9F).
  for (std::string bad : {std::string("a\rb"), std::string(1, '\0'), std::string("\x1B[2J"),
                          std::string("\x7F"), std::string("\xC2\x80"), std::string("\xC2\x9F")}) {
    absl::Status st = ValidateText("name", bad, 1, 200);
    EXPECT_TRUE(absl::IsInvalidArgument(st));
    EXPECT_NE(st.message().find("control characters"), std::string::npos) << st.message();
  }
  EXPECT_FALSE(ValidateText("q", "", 1, 200).ok());
  EXPECT_FALSE(ValidateText("q", std::string(201, 'a'), 1, 200).ok());
  EXPECT_FALSE(ValidateEmail("a\xFF@b.io").ok());
  EXPECT_FALSE(ValidateEmail("a\xC2\x85@b.io").ok());
  EXPECT_TRUE(ValidateEmail("j\xC3\xB6rg@b.io").ok());
}

TEST(Domain, Validators) {
  EXPECT_TRUE(ValidateSku("sku-0001").ok());
  EXPECT_FALSE(ValidateSku("").ok());
  EXPECT_FALSE(ValidateSku("a b").ok());
  EXPECT_TRUE(ValidateEmail("a@b.io").ok());
  EXPECT_FALSE(ValidateEmail("ab.io").ok());
  EXPECT_FALSE(ValidateEmail("a@b@c.io").ok());
  EXPECT_TRUE(ValidateResidency("eu").ok());
  EXPECT_TRUE(ValidateResidency("any").ok());
  EXPECT_FALSE(ValidateResidency("EU").ok());
  EXPECT_TRUE(ValidateCurrency("EUR").ok());
  EXPECT_FALSE(ValidateCurrency("eur").ok());
  EXPECT_TRUE(ResidencyAllows("any", "us"));
  EXPECT_FALSE(ResidencyAllows("eu", "us"));
}

// Found by the 2026-12-03 probe: these passed before and made records nobody could use (a
// product at the path step "..", an address no mail reaches, a category named "-").
TEST(Domain, PathStepSkusEmptyDomainLabelsAndDashOnlyCategoriesAreRefused) {
  for (const char* sku : {".", ".."}) {
    absl::Status st = ValidateSku(sku);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << sku;
    EXPECT_NE(st.message().find("path steps"), std::string::npos) << st.message();
  }
  EXPECT_TRUE(ValidateSku("...").ok());
  EXPECT_TRUE(ValidateSku(".hidden").ok());
  EXPECT_TRUE(ValidateSku("v1.2").ok());
  for (const char* email : {"a@.", "a@b.", "a@.io", "a@b..io", "a@bio", "a@b.io."}) {
    absl::Status st = ValidateEmail(email);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << email;
  }
  EXPECT_TRUE(ValidateEmail("a@b.c.io").ok());
  EXPECT_TRUE(ValidateEmail("first.last@example.co.uk").ok());
  EXPECT_FALSE(ValidateCategoryId("-").ok());
  EXPECT_FALSE(ValidateCategoryId("--").ok());
  EXPECT_TRUE(ValidateCategoryId("-a").ok());
  EXPECT_TRUE(ValidateCategoryId("home-garden").ok());
}

TEST(Domain, ReclaimedItems) {
  constexpr uint64_t kMaxUnits = uint64_t{1} << 40;
  EXPECT_TRUE(ValidReclaimedItem("vase", 5));
  EXPECT_TRUE(ValidReclaimedItem("vase", 5, 5));
  EXPECT_TRUE(ValidReclaimedItem("vase", kMaxUnits, kMaxUnits * 256));
  EXPECT_FALSE(ValidReclaimedItem("..", 5));
  EXPECT_FALSE(ValidReclaimedItem("vase", 0));
  EXPECT_FALSE(ValidReclaimedItem("vase", kMaxUnits + 1));
  EXPECT_FALSE(ValidReclaimedItem("vase", 5, 4));  // reclaimed more than it had received
  EXPECT_FALSE(ValidReclaimedItem("vase", 5, kMaxUnits * 256 + 1));
}

TEST(Domain, SandboxCards) {
  EXPECT_TRUE(ValidateCardNumber("4242424242424242").ok());
  EXPECT_FALSE(ValidateCardNumber("4242424242424241").ok());
  EXPECT_FALSE(ValidateCardNumber("42424242abcd4242").ok());
  // Full-width digits (3 bytes each: 48 bytes, over 19) are named as what they are.
  const auto wide = ValidateCardNumber(
      "\uFF14\uFF12\uFF14\uFF12\uFF14\uFF12\uFF14\uFF12\uFF14\uFF12\uFF14\uFF12\uFF14\uFF12\uFF14"
      "\uFF12");
  ASSERT_FALSE(wide.ok());
  EXPECT_NE(wide.message().find("digits 0-9 only"), absl::string_view::npos) << wide;
  EXPECT_EQ(SandboxDecision("4242424242424242"), CardDecision::kApproved);
  EXPECT_EQ(SandboxDecision("4000000000000002"), CardDecision::kDeclined);
  EXPECT_TRUE(ValidateCardNumber("4000000000000002").ok());
}

TEST(Domain, ReconcileFindsEveryKindOfMismatch) {
  std::vector<ProviderCharge> charges = {{"c1", "o1", "captured", 100},
                                         {"c2", "o2", "captured", 200},
                                         {"c3", "o3", "captured", 300},
                                         {"c4", "o9", "captured", 50},
                                         {"c5", "o5", "declined", 10},
                                         // a payment given back: its order was cancelled
                                         {"c6", "o6", "refunded", 70},
                                         // refunded, but its order still says paid
                                         {"c7", "o7", "refunded", 80}};
  std::vector<OrderPayment> orders = {{"o1", "paid", "c1", 100},      {"o2", "paid", "c2", 250},
                                      {"o3", "cancelled", "c3", 300}, {"o4", "paid", "c404", 10},
                                      {"o6", "cancelled", "", 70},    {"o7", "paid", "c7", 80}};
  auto m = Reconcile(charges, orders, 1);
  std::vector<std::string> kinds;
  for (const auto& x : m) kinds.push_back(x.kind + ":" + x.order_id);
  EXPECT_EQ(kinds.size(), 5u);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "status_differs:o7"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "amount_differs:o2"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "status_differs:o3"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "charge_without_order:o9"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "paid_order_without_charge:o4"), kinds.end());
}

// An order paid (or refunded) with a charge another region took is reconciled there: its charge
// is not in this region's provider. One of this region's, or of an id without a region, is.
TEST(Domain, ReconcileLeavesChargesOfOtherRegionsToThem) {
  EXPECT_EQ(ChargeIdPrefix(2), "ch2_");
  EXPECT_TRUE(ChargeTakenElsewhere("ch2_00aa", 1));
  EXPECT_FALSE(ChargeTakenElsewhere("ch1_00aa", 1));
  EXPECT_FALSE(ChargeTakenElsewhere("ch00aa11", 1));  // from before ids named their region
  EXPECT_FALSE(ChargeTakenElsewhere("chx_00aa", 1));
  std::vector<OrderPayment> orders = {{"o1", "paid", "ch2_aa", 100},
                                      {"o2", "refunded", "ch3_bb", 100},
                                      {"o3", "paid", "ch1_cc", 100},
                                      {"o4", "paid", "chdd", 100}};
  auto m = Reconcile({}, orders, 1);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].order_id, "o3");
  EXPECT_EQ(m[1].order_id, "o4");
}

}  // namespace
}  // namespace meridian::services
