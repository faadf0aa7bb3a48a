#pragma once

// The shared secret between a region server and its replicator on their gRPC APIs: the region's
// internal API (RegionInternal, RegionControl; the replicator calls it) and the replicator's
// control port (OrderForwarder; the region calls it). These APIs move orders, stock rights and
// holds; nobody but the pair may call them. With a token configured every call carries
// `authorization: Bearer <token>` and the server refuses one without it (UNAUTHENTICATED, and the
// handler does not run). Without one the configs allow only a loopback listener. Plaintext: the
// pair runs on one host or one private network (peer regions talk over mTLS, replication/).
//
// Header-only; users link gRPC themselves.

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/status.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config_files.h"

namespace meridian::common {

namespace internal {
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;  // owned by the factory, which the channel outlives
};
class BearerTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenInterceptorFactory(const std::string& token) : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(header_);
  }

 private:
  const std::string header_;
};
}  // namespace internal

// A plaintext channel to `target` on which every call carries the bearer token (a plain channel
// when `token` is empty).
inline std::shared_ptr<grpc::Channel> ChannelWithBearerToken(
    const std::string& target, const std::string& token, const grpc::ChannelArguments& args = {}) {
  if (token.empty()) {
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<internal::BearerTokenInterceptorFactory>(token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, grpc::InsecureChannelCredentials(), args, std::move(factories));
}

// OK when `token` is empty or the call carries it; UNAUTHENTICATED otherwise, naming `what`
// (the config field that holds the token) but never the token.
inline grpc::Status CheckBearerToken(const grpc::ServerContext& ctx, const std::string& token,
                                     std::string_view what) {
  if (token.empty()) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  std::string_view presented;
  if (it != md.end()) presented = std::string_view(it->second.data(), it->second.size());
  if (std::optional<std::string_view> bearer = BearerToken(presented);
      bearer && TokenEquals(*bearer, token)) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      std::string(it == md.end() ? "no bearer token: this API needs "
                                                 : "wrong bearer token: this API needs ") +
                          std::string(what));
}

}  // namespace meridian::common
