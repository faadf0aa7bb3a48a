#include "common/strings.h"

#include <gtest/gtest.h>

namespace meridian {
namespace {

TEST(Utf8Prefix, KeepsValidTextAndCutsOnACharacterBoundary) {
  EXPECT_EQ(Utf8Prefix("plain", 300), "plain");
  EXPECT_EQ(Utf8Prefix("plain", 3), "pla");
  EXPECT_EQ(Utf8Prefix("", 3), "");
  // "é" is two bytes, "€" three, "𝄞" four: a cut inside one drops the whole character.
  EXPECT_EQ(Utf8Prefix("xé", 2), "x");
  EXPECT_EQ(Utf8Prefix("xé", 3), "xé");
  EXPECT_EQ(Utf8Prefix("a€", 3), "a");
  EXPECT_EQ(Utf8Prefix("a€", 4), "a€");
  EXPECT_EQ(Utf8Prefix("a\xf0\x9d\x84\x9e", 4), "a");
  EXPECT_EQ(Utf8Prefix("a\xf0\x9d\x84\x9e", 5), "a\xf0\x9d\x84\x9e");
}

TEST(Utf8Prefix, ReplacesEveryByteThatIsNotWellFormedUtf8) {
  EXPECT_EQ(Utf8Prefix("\xff\xfe ok", 10), "?? ok");
  EXPECT_EQ(Utf8Prefix("caf\xe9!", 10), "caf?!");         // Latin-1
  EXPECT_EQ(Utf8Prefix("\xc3", 10), "?");                 // truncated sequence
  EXPECT_EQ(Utf8Prefix("\xc0\xaf", 10), "??");            // overlong "/"
  EXPECT_EQ(Utf8Prefix("\xe0\x80\xaf", 10), "???");       // overlong, three bytes
  EXPECT_EQ(Utf8Prefix("\xed\xa0\x80", 10), "???");       // a surrogate
  EXPECT_EQ(Utf8Prefix("\xf4\x90\x80\x80", 10), "????");  // past U+10FFFF
  EXPECT_EQ(Utf8Prefix("\x80x", 10), "?x");               // a lone continuation byte
  EXPECT_EQ(Utf8Prefix(std::string_view("a\0b", 3), 10), std::string("a\0b", 3));
}

}  // namespace
}  // namespace meridian
