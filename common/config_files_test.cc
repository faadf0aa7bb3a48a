#include "common/config_files.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <string>

#include "tests/support/temp_dir_test.h"

namespace meridian::common {
namespace {

TEST(ConfigDir, IsTheFolderThatHoldsTheFile) {
  EXPECT_EQ(ConfigDir("r.yaml"), "");  // the working directory
  EXPECT_EQ(ConfigDir("etc/r.yaml"), "etc");
  EXPECT_EQ(ConfigDir("/etc/meridian/r.yaml"), "/etc/meridian");
  EXPECT_EQ(ConfigDir("/r.yaml"), "/");  // not "", which would mean the working directory
}

TEST(ResolveConfigPath, RelativePathsGoUnderTheConfigFolder) {
  EXPECT_EQ(ResolveConfigPath("/etc/m", "certs/ca.pem"), "/etc/m/certs/ca.pem");
  EXPECT_EQ(ResolveConfigPath("/", "ca.pem"), "/ca.pem");
  EXPECT_EQ(ResolveConfigPath("etc", "ca.pem"), "etc/ca.pem");
  EXPECT_EQ(ResolveConfigPath("", "ca.pem"), "ca.pem");
  EXPECT_EQ(ResolveConfigPath("/etc/m", "/pki/ca.pem"), "/pki/ca.pem");
  EXPECT_EQ(ResolveConfigPath("/etc/m", ""), "");  // an unset path stays unset
  EXPECT_EQ(ResolveConfigPath(ConfigDir("/r.yaml"), "t"), "/t");
}

TEST(ValidHttpUrl, AHostAfterTheSchemeAndARealPortWhenGiven) {
  for (const char* ok : {"http://10.77.0.1:4000", "https://a.example/readyz", "http://a",
                         "http://[::1]:8080/x", "http://[::1]", "http://h:65535/", "http://h?x=1",
                         "http://[::ffff:127.0.0.1]:80", "http://my_host.local"}) {
    EXPECT_TRUE(ValidHttpUrl(ok)) << ok;
  }
  for (const char* bad : {"", "ftp://x", "127.0.0.1:1/readyz", "http://", "https:///x",
                          "http://:80", "http://h:0", "http://h:99999", "http://h:", "http://h:x/",
                          "http://x:y:z", "http://a b", "http://a\tb", "http://[::1]:0",
                          // an unclosed or empty IPv6 literal, stray brackets, a user part
                          // (meridianctl took these, and failed on every request)
                          "http://[::1", "http://[::1:80", "http://[]:80", "http://[::g]",
                          "http://[::1]x", "http://a]b", "http://u@h", "http://h:80@x"}) {
    EXPECT_FALSE(ValidHttpUrl(bad)) << bad;
  }
}

// The scheme is case-insensitive (RFC 9110 11.1); the token is what follows it, as sent.
TEST(BearerToken, TheSchemeInAnyCaseAndNothingElse) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("bearer abc"), "abc");
  EXPECT_EQ(BearerToken("BEARER Abc"), "Abc");
  EXPECT_EQ(BearerToken("Basic abc"), std::nullopt);
  EXPECT_EQ(BearerToken("Bearer "), std::nullopt);
  EXPECT_EQ(BearerToken("Bearer"), std::nullopt);
  EXPECT_EQ(BearerToken("Bearerabc"), std::nullopt);
  EXPECT_EQ(BearerToken(""), std::nullopt);
}

TEST(CheckOperatorToken, NamesTheRuleThatFailed) {
  EXPECT_TRUE(CheckOperatorToken("0123456789abcdef").ok());
  EXPECT_NE(CheckOperatorToken("0123456789abcde").message().find("at least 16"), std::string::npos);
  EXPECT_NE(CheckOperatorToken("0123456789 abcdef").message().find("without spaces"),
            std::string::npos);
  EXPECT_FALSE(CheckOperatorToken(std::string("0123456789abcdef\x01", 17)).ok());
  EXPECT_FALSE(CheckOperatorToken("0123456789abcdef\xc3\xa9").ok());
}

class TokenFile : public test_support::TempDirTest {
 protected:
  std::string Write(const std::string& text) {
    const std::string path = dir_ + "/token";
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
};

TEST_F(TokenFile, TrailingWhitespaceIsNotTheToken) {
  auto t = ReadOperatorTokenFile(Write("operator-token-0123456789\r\n\n"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "operator-token-0123456789");
}

TEST_F(TokenFile, AShortOrSpacedTokenNamesTheFile) {
  const std::string path = Write("short\n");
  auto t = ReadOperatorTokenFile(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find(path), std::string::npos) << t.status();
  EXPECT_FALSE(ReadOperatorTokenFile(Write("operator token 0123456789\n")).ok());
  EXPECT_FALSE(ReadOperatorTokenFile(Write("")).ok());
}

TEST_F(TokenFile, AFolderIsNotATokenFile) {
  auto t = ReadOperatorTokenFile(dir_);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("is a folder"), std::string::npos) << t.status();
}

TEST_F(TokenFile, AMissingFileIsNotFound) {
  auto t = ReadOperatorTokenFile(dir_ + "/none");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("cannot read '" + dir_ + "/none'"), std::string::npos);
}

class RegularFile : public test_support::TempDirTest {};

TEST_F(RegularFile, AFifoIsRefusedWithoutWaitingForAWriter) {
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A blocking open would wait here for a writer that never comes.
  auto text = ReadRegularFile(fifo, "config file");
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(text.status().message().find("not a regular file"), std::string::npos) << text.status();
  EXPECT_FALSE(ReadOperatorTokenFile(fifo).ok());
  EXPECT_FALSE(ReadPemFile("tls.ca", fifo).ok());
}

TEST_F(RegularFile, ADeviceAFolderAndAFileTooLargeAreRefused) {
  EXPECT_NE(
      ReadRegularFile("/dev/zero", "config file").status().message().find("not a regular file"),
      std::string::npos);
  EXPECT_NE(ReadRegularFile(dir_, "config file").status().message().find("is a folder"),
            std::string::npos);
  const std::string big = dir_ + "/big";
  std::ofstream(big) << std::string(2000, 'x');
  auto text = ReadRegularFile(big, "config file", 1000);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("larger than 1000 bytes"), std::string::npos)
      << text.status();
  auto fits = ReadRegularFile(big, "config file", 2000);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->size(), 2000u);
}

TEST_F(RegularFile, APemFileMustHoldABlock) {
  const std::string pem = dir_ + "/ca.pem";
  std::ofstream(pem) << "not a certificate\n";
  auto text = ReadPemFile("tls.ca", pem);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("tls.ca: '" + pem + "' holds no PEM block"),
            std::string::npos)
      << text.status();
  EXPECT_NE(ReadPemFile("tls.key", "").status().message().find("tls.key: no file named"),
            std::string::npos);
  std::ofstream(pem) << "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  EXPECT_TRUE(ReadPemFile("tls.ca", pem).ok());
}

}  // namespace
}  // namespace meridian::common
