#include <gtest/gtest.h>

#include <string>

#include "region/app_impl.h"

namespace meridian::region {
namespace {

TEST(IntField, TakesEverySignedValueAndRefusesWhatWouldWrap) {
  const Json body = Json::parse(
      R"({"max":9223372036854775807,"min":-9223372036854775808,"wraps":18446744073709551615,)"
      R"("half":1.5,"text":"3"})");
  EXPECT_EQ(*IntField(body, "max", true, 0), INT64_MAX);
  EXPECT_EQ(*IntField(body, "min", true, 0), INT64_MIN);
  EXPECT_EQ(*IntField(body, "absent", false, 7), 7);
  // 2^64-1 read as int64_t is -1: a caller checking only an upper bound would take it.
  for (const char* field : {"wraps", "half", "text"}) {
    auto v = IntField(body, field, true, 0);
    ASSERT_FALSE(v.ok()) << field << " gave " << *v;
    EXPECT_EQ(ProblemFromStatus(v.status()).status, 422) << field;
    EXPECT_NE(v.status().message().find(field), absl::string_view::npos) << v.status();
  }
}

// A client reads a status's own message, but never a database's text (hosts, tables, values)
// nor an internal error's.
TEST(PublicDetail, KeepsTheDatabasesAndInternalTextsInTheLog) {
  EXPECT_EQ(PublicDetail(absl::FailedPreconditionError("cart is empty")), "cart is empty");
  const std::string db_text =
      "postgres shard0: ERROR: duplicate key value violates \"orders_pkey\"";
  const std::string conflict = PublicDetail(TagDatabaseError(absl::AlreadyExistsError(db_text)));
  EXPECT_EQ(conflict.find("postgres"), std::string::npos) << conflict;
  EXPECT_NE(conflict.find("retry"), std::string::npos) << conflict;
  EXPECT_EQ(PublicDetail(TagDatabaseError(absl::UnavailableError(db_text))),
            "a database of this region is unavailable; retry shortly");
  EXPECT_EQ(PublicDetail(absl::InternalError(db_text)), "internal error");
  EXPECT_EQ(PublicDetail(TagDatabaseError(absl::InternalError(db_text))), "internal error");
  // The problem response says the same.
  HttpResponse r = ProblemFromStatus(TagDatabaseError(absl::AlreadyExistsError(db_text)));
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body.find("postgres"), std::string::npos) << r.body;
}

// Review of 2026-12-05 (control paths), finding 5: a forwarded payment that outlived its
// deadline was still made at the owner, and the customer was told it "could not be reached to
// make this change".
TEST(ForwardFailedProblem, ADeadlineIsInDoubtAndAnUnreachableOwnerIsNot) {
  const std::string id = "o0123456789abcdef01234567";
  for (auto code : {grpc::StatusCode::DEADLINE_EXCEEDED, grpc::StatusCode::CANCELLED,
                    grpc::StatusCode::UNKNOWN, grpc::StatusCode::INTERNAL}) {
    HttpResponse r = ForwardFailedProblem(code, id, "eu-west");
    EXPECT_EQ(r.status, 503);
    EXPECT_NE(r.body.find("may or may not have been made"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("/v1/orders/" + id), std::string::npos) << r.body;
  }
  for (auto code : {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::PERMISSION_DENIED}) {
    HttpResponse r = ForwardFailedProblem(code, id, "eu-west");
    EXPECT_EQ(r.status, 503);
    EXPECT_NE(r.body.find("could not be reached"), std::string::npos) << r.body;
  }
}

}  // namespace
}  // namespace meridian::region
