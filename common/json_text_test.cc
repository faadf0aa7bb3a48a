#include "common/json_text.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace meridian::common {
namespace {

using Json = nlohmann::json;

TEST(ParseJsonText, TakesWholeObjectsAndNestedOnes) {
  const Json j = ParseJsonText<Json>(R"({"a":1,"b":{"a":2,"c":[{"a":3},{"a":4}]}})");
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["b"]["c"][1]["a"], 4);  // the same key in different objects is fine
  EXPECT_TRUE(ParseJsonText<Json>("[1,2]").is_array());
}

TEST(ParseJsonText, RefusesANulByteAndWhatFollowsIt) {
  EXPECT_TRUE(ParseJsonText<Json>(std::string("{\"a\":1}\0junk", 12)).is_discarded());
  EXPECT_TRUE(ParseJsonText<Json>("{\"a\":").is_discarded());
}

// Before, the last copy of a repeated key won silently: {"state":"down","state":"up"} set a
// GeoDNS override to up (probe, 2026-12-04).
TEST(ParseJsonText, RefusesAnObjectThatNamesAKeyTwice) {
  EXPECT_TRUE(ParseJsonText<Json>(R"({"state":"down","state":"up"})").is_discarded());
  EXPECT_TRUE(ParseJsonText<Json>(R"({"x":{"a":1,"b":2,"a":3}})").is_discarded());
  EXPECT_TRUE(ParseJsonText<Json>(R"([{"a":1},{"a":1,"a":1}])").is_discarded());
  EXPECT_FALSE(ParseJsonText<Json>(R"({"a":{"a":{"a":1}}})").is_discarded());
}

}  // namespace
}  // namespace meridian::common
