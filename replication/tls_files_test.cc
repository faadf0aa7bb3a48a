#include "replication/tls_files.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "tests/support/process.h"
#include "tests/support/temp_dir_test.h"

namespace meridian::replication {
namespace {

// Real certificates from deploy/make-certs.sh: us-east and eu-west under one CA, and us-east
// again under another CA, as a deployment that mixed two certs folders would have them.
class TlsIdentity : public test_support::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    for (const auto& [folder, names] :
         {std::pair<std::string, std::vector<std::string>>{"certs", {"us-east", "eu-west"}},
          {"other", {"us-east"}}}) {
      std::vector<std::string> argv = {
          "bash", std::string(MERIDIAN_SOURCE_DIR) + "/deploy/make-certs.sh", dir_ + "/" + folder};
      argv.insert(argv.end(), names.begin(), names.end());
      ASSERT_TRUE(test_support::Process::Run({.argv = argv, .log_path = dir_ + "/certs.log"},
                                             absl::Seconds(60))
                      .ok());
    }
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  // The first line of the check's error, "" when it passes.
  std::string Check(const std::string& ca, const std::string& cert, const std::string& key,
                    const std::string& name) const {
    absl::Status st = CheckTlsIdentity(Path(ca), Path(cert), Path(key), name);
    return st.ok() ? "" : std::string(st.message());
  }
};

TEST_F(TlsIdentity, APeerReadyIdentityPasses) {
  EXPECT_EQ(Check("certs/ca.pem", "certs/us-east.pem", "certs/us-east.key", "us-east"), "");
  EXPECT_EQ(Check("certs/ca.pem", "certs/eu-west.pem", "certs/eu-west.key", "eu-west"), "");
}

// gRPC would say "Invalid private key" and the replicator "cannot listen": the check names it.
TEST_F(TlsIdentity, AKeyOfAnotherCertificateIsRefused) {
  const std::string m = Check("certs/ca.pem", "certs/us-east.pem", "certs/eu-west.key", "us-east");
  EXPECT_EQ(m.rfind("tls.key: '" + Path("certs/eu-west.key") + "' is not the key of tls.cert", 0),
            0u)
      << m;
  // A key file given as the certificate, and a certificate given as the key.
  EXPECT_EQ(Check("certs/ca.pem", "certs/us-east.key", "certs/us-east.key", "us-east")
                .rfind("tls.cert: '" + Path("certs/us-east.key") + "' holds no certificate", 0),
            0u);
  EXPECT_EQ(Check("certs/ca.pem", "certs/us-east.pem", "certs/us-east.pem", "us-east")
                .rfind("tls.key: '" + Path("certs/us-east.pem") + "' holds no private key", 0),
            0u);
}

// Peers would accept the handshake only under the name the certificate carries.
TEST_F(TlsIdentity, ACertificateOfAnotherRegionIsRefused) {
  const std::string m = Check("certs/ca.pem", "certs/eu-west.pem", "certs/eu-west.key", "us-east");
  EXPECT_EQ(m.rfind("tls.cert: '" + Path("certs/eu-west.pem") +
                        "' has the common name 'eu-west', not 'us-east'",
                    0),
            0u)
      << m;
}

TEST_F(TlsIdentity, ACertificateOfAnotherCaIsRefused) {
  const std::string m = Check("certs/ca.pem", "other/us-east.pem", "other/us-east.key", "us-east");
  EXPECT_EQ(
      m.rfind("tls.cert: '" + Path("other/us-east.pem") + "' does not verify against tls.ca", 0),
      0u)
      << m;
  EXPECT_NE(m.find("unable to get local issuer certificate"), std::string::npos) << m;
  // A CA file that holds a key, not a certificate.
  EXPECT_EQ(Check("certs/ca.key", "certs/us-east.pem", "certs/us-east.key", "us-east")
                .rfind("tls.ca: '" + Path("certs/ca.key") + "' holds no certificate", 0),
            0u);
}

TEST_F(TlsIdentity, AMissingOrNonPemFileNamesItsField) {
  EXPECT_EQ(Check("certs/ca.pem", "certs/nowhere.pem", "certs/us-east.key", "us-east")
                .rfind("tls.cert: cannot read", 0),
            0u);
  std::ofstream(Path("junk.pem")) << "not pem\n";
  EXPECT_EQ(Check("certs/ca.pem", "certs/us-east.pem", "junk.pem", "us-east").rfind("tls.key:", 0),
            0u);
}

}  // namespace
}  // namespace meridian::replication
