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

TEST(Domain, SandboxCards) {
  EXPECT_TRUE(ValidateCardNumber("4242424242424242").ok());
  EXPECT_FALSE(ValidateCardNumber("4242424242424241").ok());
  EXPECT_FALSE(ValidateCardNumber("42424242abcd4242").ok());
  EXPECT_EQ(SandboxDecision("4242424242424242"), CardDecision::kApproved);
  EXPECT_EQ(SandboxDecision("4000000000000002"), CardDecision::kDeclined);
  EXPECT_TRUE(ValidateCardNumber("4000000000000002").ok());
}

TEST(Domain, ReconcileFindsEveryKindOfMismatch) {
  std::vector<ProviderCharge> charges = {{"c1", "o1", "captured", 100},
                                         {"c2", "o2", "captured", 200},
                                         {"c3", "o3", "captured", 300},
                                         {"c4", "o9", "captured", 50},
                                         {"c5", "o5", "declined", 10}};
  std::vector<OrderPayment> orders = {{"o1", "paid", "c1", 100},
                                      {"o2", "paid", "c2", 250},
                                      {"o3", "cancelled", "c3", 300},
                                      {"o4", "paid", "c404", 10}};
  auto m = Reconcile(charges, orders);
  std::vector<std::string> kinds;
  for (const auto& x : m) kinds.push_back(x.kind + ":" + x.order_id);
  EXPECT_EQ(kinds.size(), 4u);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "amount_differs:o2"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "status_differs:o3"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "charge_without_order:o9"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "paid_order_without_charge:o4"), kinds.end());
}

}  // namespace
}  // namespace meridian::services
