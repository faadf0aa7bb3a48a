#include "region/internal_service.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "crdt/codec.h"
#include "region/app_impl.h"
#include "region/internal.grpc.pb.h"
#include "services/domain.h"

namespace meridian::region {
namespace {

namespace pb = ::meridian::region::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      code = grpc::StatusCode::INVALID_ARGUMENT;
      break;
    case absl::StatusCode::kNotFound:
      code = grpc::StatusCode::NOT_FOUND;
      break;
    case absl::StatusCode::kUnavailable:
      code = grpc::StatusCode::UNAVAILABLE;
      break;
    case absl::StatusCode::kFailedPrecondition:
      code = grpc::StatusCode::FAILED_PRECONDITION;
      break;
    default:
      break;
  }
  return grpc::Status(code, std::string(s.message()));
}

void SetNow(google::protobuf::Timestamp* t, int64_t unix_ms) {
  t->set_seconds(unix_ms / 1000);
  t->set_nanos(static_cast<int32_t>((unix_ms % 1000) * 1000000));
}

pb::OutboxKind KindOf(const std::string& kind) {
  if (kind == "cart") return pb::OUTBOX_KIND_CART;
  if (kind == "inventory") return pb::OUTBOX_KIND_INVENTORY;
  if (kind == "order") return pb::OUTBOX_KIND_ORDER;
  if (kind == "product") return pb::OUTBOX_KIND_PRODUCT;
  return pb::OUTBOX_KIND_UNSPECIFIED;
}

class Service final : public pb::RegionInternal::Service {
 public:
  explicit Service(RegionApp::Impl& app) : app_(app) {}

  grpc::Status GetStatus(grpc::ServerContext*, const pb::GetStatusRequest*,
                         pb::GetStatusResponse* out) override {
    out->set_region(app_.config.name);
    out->set_jurisdiction(app_.config.jurisdiction);
    out->set_replica_id(app_.config.replica_id);
    out->set_durability(app_.config.durability == Durability::kSyncPeer ? pb::DURABILITY_SYNC_PEER
                                                                        : pb::DURABILITY_ASYNC);
    out->set_redis_reachable(app_.redis->Ping().ok());
    auto describe = [&](PgPool& pool) {
      pb::DatabaseStatus* d = out->add_databases();
      d->set_name(pool.name());
      d->set_pool_size(pool.size());
      d->set_pool_in_use(pool.in_use());
      absl::Status st = pool.Run([&](pqxx::work& tx) {
        pqxx::row r = tx.exec1("SELECT count(*), coalesce(max(seq), 0) FROM outbox");
        d->set_outbox_rows(r[0].as<int64_t>());
        d->set_outbox_max_seq(r[1].as<int64_t>());
      });
      d->set_reachable(st.ok());
    };
    describe(*app_.global);
    for (auto& s : app_.shards) describe(*s);
    SetNow(out->mutable_now(), UnixNowMs());
    return grpc::Status::OK;
  }

  grpc::Status GetInventoryRights(grpc::ServerContext*, const pb::GetInventoryRightsRequest* req,
                                  pb::GetInventoryRightsResponse* out) override {
    if (auto st = services::ValidateSku(req->sku()); !st.ok()) return ToGrpc(st);
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      pqxx::result r = tx.exec("SELECT state FROM inventory WHERE sku = " + tx.quote(req->sku()));
      if (r.empty()) throw AbortTx{absl::NotFoundError("no stock record for " + req->sku())};
      pqxx::binarystring bytes(r[0][0]);
      auto inv = crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()));
      if (!inv.ok()) throw AbortTx{inv.status()};
      out->set_sku(req->sku());
      out->set_available(inv->Available(req->sku()));
      if (const crdt::BoundedCounter* c = inv->Find(req->sku())) {
        for (crdt::ReplicaId id : c->Replicas()) {
          pb::ReplicaRights* rr = out->add_rights();
          rr->set_replica_id(id);
          rr->set_units(c->Rights(id));
        }
      }
    });
    return ToGrpc(st);
  }

  grpc::Status ReadOutbox(grpc::ServerContext*, const pb::ReadOutboxRequest* req,
                          pb::ReadOutboxResponse* out) override {
    PgPool* pool = nullptr;
    if (req->database() == "global") pool = app_.global.get();
    for (auto& s : app_.shards)
      if (s->name() == req->database()) pool = s.get();
    if (!pool) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "database: 'global' or 'shard-N', got '" + req->database() + "'");
    }
    int limit = req->limit() == 0 ? 1000 : req->limit();
    if (limit < 1 || limit > 10000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "limit: 1..10000");
    }
    if (req->after_seq() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "after_seq: >= 0");
    }
    absl::Status st = pool->Run([&](pqxx::work& tx) {
      for (const auto& r :
           tx.exec("SELECT seq, origin, kind, key, payload, residency, "
                   "(extract(epoch from created_at) * 1000)::bigint FROM outbox WHERE seq > " +
                   tx.quote(req->after_seq()) + " ORDER BY seq LIMIT " + tx.quote(limit))) {
        pb::OutboxRecord* rec = out->add_records();
        rec->set_seq(r[0].as<int64_t>());
        rec->set_origin(r[1].as<uint32_t>());
        rec->set_kind(KindOf(r[2].as<std::string>()));
        rec->set_key(r[3].as<std::string>());
        pqxx::binarystring payload(r[4]);
        rec->set_payload(payload.str());
        rec->set_residency(r[5].as<std::string>());
        SetNow(rec->mutable_created_at(), r[6].as<int64_t>());
      }
    });
    return ToGrpc(st);
  }

 private:
  RegionApp::Impl& app_;
};

}  // namespace

struct InternalServer::Impl {
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

InternalServer::InternalServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InternalServer::~InternalServer() { Stop(); }

absl::StatusOr<std::unique_ptr<InternalServer>> InternalServer::Start(RegionApp::Impl& app,
                                                                      const std::string& host,
                                                                      uint16_t port) {
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<Service>(app);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(),
                           &impl->port);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("grpc: cannot listen on ", host, ":", port));
  }
  spdlog::info("event=grpc_started address={}:{}", host, impl->port);
  return std::unique_ptr<InternalServer>(new InternalServer(std::move(impl)));
}

uint16_t InternalServer::port() const { return static_cast<uint16_t>(impl_->port); }

void InternalServer::Stop() {
  if (impl_ && impl_->server) {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    impl_->server.reset();
  }
}

}  // namespace meridian::region
