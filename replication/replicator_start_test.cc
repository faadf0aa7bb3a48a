#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "replication/replicator.h"
#include "tests/support/ports.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir_test.h"

namespace meridian::replication {
namespace {

namespace fs = std::filesystem;

// A replicator whose start fails (here: its listen port is held by another program) leaves no
// state_dir it made behind; one that was there before is left as it was.
class ReplicatorStart : public test_support::TempDirTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(TempDirTest::SetUp());
    ASSERT_TRUE(test_support::Process::Run(
                    {.argv = {"bash", std::string(MERIDIAN_SOURCE_DIR) + "/deploy/make-certs.sh",
                              dir_ + "/certs", "us-east", "eu-west"},
                     .log_path = dir_ + "/certs.log"},
                    absl::Seconds(60))
                    .ok());
    // Held without SO_REUSEPORT, so gRPC's bind (which sets it) fails.
    held_ = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(held_, 0);
    const uint16_t port = test_support::FreeTcpPort();
    ASSERT_NE(port, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(held_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(held_, 1), 0);

    config_.region = "us-east";
    config_.jurisdiction = "us";
    config_.replica_id = 1;
    config_.region_grpc = {"127.0.0.1", test_support::FreeTcpPort()};  // never dialled
    config_.listen = {"127.0.0.1", port};
    config_.tls_ca = dir_ + "/certs/ca.pem";
    config_.tls_cert = dir_ + "/certs/us-east.pem";
    config_.tls_key = dir_ + "/certs/us-east.key";
    config_.peers.push_back(
        {.name = "eu-west", .jurisdiction = "eu", .replica_id = 2, .address = {"127.0.0.1", 9}});
  }
  void TearDown() override {
    if (held_ >= 0) ::close(held_);
    TempDirTest::TearDown();
  }
  std::string StartError() {
    auto r = Replicator::Start(config_);
    return r.ok() ? "" : std::string(r.status().message());
  }
  int held_ = -1;
  ReplicatorConfig config_;
};

TEST_F(ReplicatorStart, AFailedListenRemovesTheStateDirItMade) {
  config_.state_dir = dir_ + "/var/lib/replicator";
  const std::string error = StartError();
  EXPECT_NE(error.find("cannot listen on 127.0.0.1:"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(dir_ + "/var")) << "the folders the start made are left behind";
}

TEST_F(ReplicatorStart, AFailedListenLeavesAStateDirThatWasThere) {
  config_.state_dir = dir_ + "/state";
  fs::create_directories(config_.state_dir);
  std::ofstream(config_.state_dir + "/kept") << "an operator's file\n";
  const std::string error = StartError();
  EXPECT_NE(error.find("cannot listen on 127.0.0.1:"), std::string::npos) << error;
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(config_.state_dir)) {
    left.push_back(e.path().filename().string());
  }
  EXPECT_EQ(left, std::vector<std::string>{"kept"}) << "the start's recent-keys files stay";
}

}  // namespace
}  // namespace meridian::replication
