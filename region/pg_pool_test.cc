#include "region/pg_pool.h"

#include <gtest/gtest.h>

#include "region/app_impl.h"

namespace meridian::region {
namespace {

TEST(StatusFromPqxx, ArgumentErrorIsTheClientsMistake) {
  // libpqxx throws argument_error when it refuses a value before the server sees it (quoting text
  // that is not valid UTF-8): the validators should catch that first, but it must never be a 500.
  absl::Status st =
      StatusFromPqxx(pqxx::argument_error("invalid byte sequence"), "postgres global");
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("postgres global"), std::string::npos) << st;
}

TEST(StatusFromPqxx, OtherFailuresKeepTheirMapping) {
  EXPECT_TRUE(absl::IsUnavailable(StatusFromPqxx(pqxx::broken_connection("gone"), "c")));
  EXPECT_TRUE(absl::IsInternal(StatusFromPqxx(std::runtime_error("bug"), "c")));
}

TEST(StatusFromPqxx, TheDatabasesTextIsLoggedNotSentToTheClient) {
  absl::Status dup = StatusFromPqxx(
      pqxx::unique_violation("ERROR:  duplicate key value violates unique constraint "
                             "\"users_email_key\"\nDETAIL:  Key (email)=(a@b.c) already exists."),
      "postgres shard-0");
  ASSERT_TRUE(IsDatabaseError(dup));
  EXPECT_NE(dup.message().find("users_email_key"), std::string::npos);  // for the log
  HttpResponse conflict = ProblemFromStatus(dup);
  EXPECT_EQ(conflict.status, 409);
  EXPECT_EQ(conflict.body.find("users_email_key"), std::string::npos) << conflict.body;
  EXPECT_EQ(conflict.body.find("a@b.c"), std::string::npos) << conflict.body;

  HttpResponse down = ProblemFromStatus(StatusFromPqxx(
      pqxx::broken_connection("connection to server at \"10.1.2.3\", port 5433 failed"),
      "postgres global"));
  EXPECT_EQ(down.status, 503);
  EXPECT_EQ(down.body.find("10.1.2.3"), std::string::npos) << down.body;
  EXPECT_NE(down.body.find("unavailable"), std::string::npos) << down.body;

  // A status of our own (not from the database) keeps its detail.
  HttpResponse ours = ProblemFromStatus(absl::FailedPreconditionError("order o1 is paid"));
  EXPECT_NE(ours.body.find("order o1 is paid"), std::string::npos) << ours.body;
}

}  // namespace
}  // namespace meridian::region
