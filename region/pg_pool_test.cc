#include "region/pg_pool.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace meridian::region
