#include "replication/accounts.h"

#include <gtest/gtest.h>

namespace meridian::replication {
namespace {

AccountAnswer Holds(uint32_t peer, std::string jurisdiction, std::string residency) {
  return {peer, std::move(jurisdiction), true, true, std::move(residency)};
}
AccountAnswer HoldsNothing(uint32_t peer, std::string jurisdiction) {
  return {peer, std::move(jurisdiction), true, false, ""};
}
AccountAnswer Unanswered(uint32_t peer, std::string jurisdiction) {
  return {peer, std::move(jurisdiction), false, false, ""};
}

TEST(ChooseAccountHolder, NobodyHoldingItIsNoHolder) {
  EXPECT_FALSE(ChooseAccountHolder({}, "eu").has_value());
  EXPECT_FALSE(ChooseAccountHolder({HoldsNothing(1, "us"), Unanswered(2, "eu")}, "eu"));
  // A peer that did not answer holds nothing as far as anyone knows.
  EXPECT_FALSE(ChooseAccountHolder({{3, "ap", false, true, "any"}}, "eu"));
}

TEST(ChooseAccountHolder, AHolderOfTheAskingJurisdictionComesFirstThenTheLowestReplicaId) {
  auto h = ChooseAccountHolder({Holds(1, "us", "any"), Holds(4, "eu", "eu"), Holds(2, "eu", "any")},
                               "eu");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->peer, 2u);
  EXPECT_EQ(h->residency, "any");
  EXPECT_TRUE(h->may_check_password);
  h = ChooseAccountHolder({Holds(3, "ap", "any"), Holds(1, "us", "us")}, "eu");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->peer, 1u);
  EXPECT_EQ(h->residency, "us");
  EXPECT_TRUE(h->may_check_password);
}

// Residency review, finding 4: the eu customer's account is at eu-west, which cannot be asked;
// ap-south holds another account of the same e-mail. The login at eu-north must not send the
// password to ap-south.
TEST(ChooseAccountHolder, NoPasswordGoesAbroadWhileAHomePeerIsUnanswered) {
  auto h = ChooseAccountHolder({Unanswered(2, "eu"), HoldsNothing(1, "us"), Holds(3, "ap", "any")},
                               "eu");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->peer, 3u);
  EXPECT_FALSE(h->may_check_password);
}

TEST(ChooseAccountHolder, AnUnansweredPeerElsewhereDoesNotHoldTheLoginUp) {
  // A customer pinned to ap logs in at us-east while eu-west is down: the password goes to
  // ap-south, which holds the account, and the customer is sent home.
  auto h = ChooseAccountHolder({Unanswered(2, "eu"), Holds(3, "ap", "ap")}, "us");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->peer, 3u);
  EXPECT_TRUE(h->may_check_password);
  // A holder at home is asked even while another home peer is down.
  h = ChooseAccountHolder({Unanswered(4, "eu"), Holds(2, "eu", "eu"), Holds(1, "us", "any")}, "eu");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->peer, 2u);
  EXPECT_TRUE(h->may_check_password);
}

}  // namespace
}  // namespace meridian::replication
