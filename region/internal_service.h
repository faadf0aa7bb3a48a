#pragma once

// The region's gRPC internal API (region/internal.proto), served on listen.grpc. Thread-safe.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "region/app.h"

namespace meridian::region {

class InternalServer {
 public:
  // Starts serving the region's internal API on host:port (port 0 picks a free one). `app` must
  // outlive Stop().
  static absl::StatusOr<std::unique_ptr<InternalServer>> Start(RegionApp::Impl& app,
                                                               const std::string& host,
                                                               uint16_t port);
  ~InternalServer();
  [[nodiscard]] uint16_t port() const;
  void Stop();

  struct Impl;

 private:
  explicit InternalServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::region
