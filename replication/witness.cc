#include "replication/witness.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/config_files.h"
#include "common/files.h"
#include "common/json_text.h"
#include "replication/clock.h"
#include "replication/lease_frames.h"
#include "replication/replication.grpc.pb.h"

namespace meridian::replication {
namespace {

using Json = nlohmann::json;

bool FsyncPath(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) return false;
  bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

absl::StatusOr<WitnessConfig> ParseUnguarded(std::string_view yaml, std::string_view source,
                                             std::string_view base_dir) {
  auto loaded = LoadConfigYaml(yaml, source);
  if (!loaded.ok()) return loaded.status();
  const YAML::Node root = *std::move(loaded);
  YamlReader r{std::string(source)};
  r.OnlyKeys(root, "", {"name", "replica_id", "listen", "tls", "store", "regions", "leases"});
  WitnessConfig c;
  c.name = r.String(root, "name", "name", true);
  // Names are matched against the regions' certificates' common names (and the witness's own).
  if (r.ok() && !common::ValidRegionName(c.name)) r.Fail("name", "1..32 of [A-Za-z0-9-]");
  c.replica_id = r.Integer<uint32_t>(root, "replica_id", "replica_id", 0, 1, 255);
  if (r.ok() && c.replica_id == 0) r.Fail("replica_id", "missing (1..255)");
  c.listen = r.HostPort(root, "listen", "listen", true);
  YAML::Node tls = r.Map(root, "tls", "tls", true);
  r.OnlyKeys(tls, "tls", {"ca", "cert", "key"});
  c.tls_ca = common::ResolveConfigPath(base_dir, r.String(tls, "ca", "tls.ca", true));
  c.tls_cert = common::ResolveConfigPath(base_dir, r.String(tls, "cert", "tls.cert", true));
  c.tls_key = common::ResolveConfigPath(base_dir, r.String(tls, "key", "tls.key", true));
  c.store_path = common::ResolveConfigPath(base_dir, r.String(root, "store", "store", true));
  YAML::Node regions = root["regions"];
  if (!regions || !regions.IsSequence() || regions.size() < 2) {
    r.Fail("regions", "a list of at least two regions is required");
  } else {
    std::set<uint32_t> ids{c.replica_id};
    std::set<std::string> names{c.name};
    for (size_t i = 0; i < regions.size(); ++i) {
      std::string path = absl::StrCat("regions[", i, "]");
      if (!regions[i].IsMap()) {
        r.Fail(path, "must be a mapping {name, replica_id}");
        break;
      }
      r.OnlyKeys(regions[i], path, {"name", "replica_id"});
      WitnessConfig::Region reg;
      reg.name = r.String(regions[i], "name", path + ".name", true);
      if (r.ok() && !common::ValidRegionName(reg.name)) {
        r.Fail(path + ".name", "1..32 of [A-Za-z0-9-]");
      }
      reg.replica_id =
          r.Integer<uint32_t>(regions[i], "replica_id", path + ".replica_id", 0, 1, 255);
      if (r.ok() && (reg.replica_id == 0 || !ids.insert(reg.replica_id).second)) {
        r.Fail(path + ".replica_id", "1..255, unique, not the witness's own");
      }
      if (r.ok() && !names.insert(reg.name).second) {
        r.Fail(path + ".name", absl::StrCat("'", reg.name, "' is named twice (or is the witness)"));
      }
      c.regions.push_back(reg);
    }
  }
  YAML::Node l = r.Map(root, "leases", "leases", false);
  r.OnlyKeys(l, "leases", {"ttl_ms", "max_drift"});
  c.leases.ttl_ms =
      r.Integer<int64_t>(l, "ttl_ms", "leases.ttl_ms", 6000, kLeaseTtlMsMin, kLeaseTtlMsMax);
  c.leases.max_drift = r.Number(l, "max_drift", "leases.max_drift", 0.01, 0, 0.1);
  // The witness sets only ttl_ms and max_drift; its other lease timings keep LeaseConfig's
  // defaults, so the one thing to report is the ttl_ms those defaults need.
  if (const int64_t ttl_ms_min = c.leases.MinTtlMs(); r.ok() && c.leases.ttl_ms < ttl_ms_min) {
    r.Fail("leases.ttl_ms",
           absl::StrCat("must be at least ", ttl_ms_min, " with max_drift ", c.leases.max_drift,
                        " (the witness keeps the default renewal timing, which needs "
                        "ttl_ms * (1 - 2 * max_drift) - ",
                        c.leases.margin_ms, " >= ", 2 * c.leases.renew_interval_ms, "), got ",
                        c.leases.ttl_ms));
  }
  if (!r.ok()) return r.status();
  return c;
}

}  // namespace

absl::StatusOr<WitnessConfig> ParseWitnessConfig(std::string_view yaml, std::string_view source,
                                                 std::string_view base_dir) {
  return CatchYamlErrors(source, [&] { return ParseUnguarded(yaml, source, base_dir); });
}

absl::StatusOr<WitnessConfig> LoadWitnessConfig(const std::string& path) {
  auto text = common::ReadRegularFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseWitnessConfig(*text, path, common::ConfigDir(path));
}

absl::StatusOr<std::optional<std::map<RegionId, AcceptorRecord>>> FileLeaseStore::Read() const {
  std::error_code ec;
  if (std::filesystem::symlink_status(path_, ec).type() == std::filesystem::file_type::not_found) {
    return std::nullopt;
  }
  // Any other failure to read is an error, never a first start: granting with the records
  // forgotten could grant an epoch twice.
  auto text = common::ReadRegularFile(path_, "lease store");
  if (!text.ok()) return text.status();
  Json j = common::ParseJsonText<Json>(*text);
  if (!j.is_object() || !j.contains("records") || !j["records"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": not a lease store"));
  }
  std::map<RegionId, AcceptorRecord> records;
  for (const auto& r : j["records"]) {
    if (!r.is_object() || !r.value("group", Json()).is_number_unsigned() ||
        !r.value("epoch", Json()).is_number_unsigned() ||
        !r.value("owner", Json()).is_number_unsigned()) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": malformed record"));
    }
    records[r["group"].get<uint32_t>()] =
        AcceptorRecord{r["epoch"].get<uint64_t>(), r["owner"].get<uint32_t>()};
  }
  return records;
}

absl::Status FileLeaseStore::Open() {
  auto read = Read();
  if (!read.ok()) return read.status();
  records_.clear();
  // A first start: the empty store is written now, so that a store that cannot be written fails
  // the start, not the first grant.
  if (!read->has_value()) return Write(records_);
  records_ = **std::move(read);
  return absl::OkStatus();
}

absl::Status FileLeaseStore::Check() const {
  auto read = Read();
  if (!read.ok()) return read.status();
  if (read->has_value()) return absl::OkStatus();
  // A first start writes the store (a temporary file beside it, then a rename) in a folder that
  // must be there already. Nothing is created here.
  return common::CheckWritableFileInExistingFolder("lease store", path_);
}

absl::Status FileLeaseStore::Save(RegionId group, const AcceptorRecord& record) {
  auto next = records_;
  next[group] = record;
  return Write(std::move(next));
}

absl::Status FileLeaseStore::Write(std::map<RegionId, AcceptorRecord> next) {
  Json j{{"records", Json::array()}};
  for (const auto& [g, r] : next) {
    j["records"].push_back(Json{{"group", g}, {"epoch", r.epoch}, {"owner", r.owner}});
  }
  const std::string tmp = path_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << "\n";
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  if (!FsyncPath(tmp, O_RDONLY) || ::rename(tmp.c_str(), path_.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot replace ", path_));
  }
  const size_t slash = path_.rfind('/');
  (void)FsyncPath(slash == std::string::npos ? "." : path_.substr(0, slash),
                  O_RDONLY | O_DIRECTORY);
  records_ = std::move(next);
  return absl::OkStatus();
}

absl::Status CheckWitnessFrame(const LeaseMessage& message, const std::vector<RegionId>& regions) {
  return std::visit(
      [&](const auto& m) -> absl::Status {
        using T = std::decay_t<decltype(m)>;
        if (std::find(regions.begin(), regions.end(), m.group) == regions.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat("group ", m.group, " is not a region of this deployment"));
        }
        if constexpr (std::is_same_v<T, LeaseRequest> || std::is_same_v<T, LeaseRelease> ||
                      std::is_same_v<T, LeaseQuery>) {
          return absl::OkStatus();
        } else if constexpr (std::is_same_v<T, LeaseHandback>) {
          return absl::InvalidArgumentError("a handback goes to the group's home, not the witness");
        } else {
          return absl::InvalidArgumentError(
              "the witness asks nothing: a reply or a record answer to it answers nothing");
        }
      },
      message);
}

struct Witness::Impl final : public v1::LeaseWitness::Service {
  WitnessConfig config;
  SteadyClock clock;
  std::unique_ptr<FileLeaseStore> store;
  std::mutex mu;
  std::unique_ptr<LeaseManager> lm;
  std::vector<RegionId> regions;      // the regions' replica ids: the groups
  std::optional<LeaseMessage> reply;  // what lm answered to the request being handled
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  grpc::Status Lease(grpc::ServerContext* ctx, const v1::LeaseFrame* req,
                     v1::LeaseFrame* out) override {
    std::string cn;
    for (const auto& v : ctx->auth_context()->FindPropertyValues("x509_common_name")) {
      cn.assign(v.data(), v.size());
    }
    RegionId from = kNoRegion;
    for (const auto& r : config.regions)
      if (r.name == cn) from = r.replica_id;
    if (from == kNoRegion) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "no configured region has this certificate's name");
    }
    auto m = FromLeaseFrame(*req);
    if (!m.ok())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(m.status().message()));
    if (absl::Status st = CheckWitnessFrame(*m, regions); !st.ok()) {
      spdlog::warn("event=witness_frame_refused from={} error=\"{}\"", cn,
                   std::string(st.message()));
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(st.message()));
    }
    std::lock_guard<std::mutex> l(mu);
    reply.reset();
    lm->OnMessage(from, *m);
    if (reply) *out = ToLeaseFrame(*reply);
    return grpc::Status::OK;
  }
};

Witness::Witness(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Witness::~Witness() { Stop(); }
uint16_t Witness::port() const { return static_cast<uint16_t>(impl_->port); }

void Witness::Stop() {
  if (impl_ && impl_->server) {
    impl_->server->Shutdown();
    impl_->server.reset();
  }
}

absl::StatusOr<std::unique_ptr<Witness>> Witness::Start(WitnessConfig config) {
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  Impl* w = impl.get();
  w->store = std::make_unique<FileLeaseStore>(w->config.store_path);
  if (absl::Status st = w->store->Open(); !st.ok()) return st;
  for (const auto& r : w->config.regions) w->regions.push_back(r.replica_id);
  w->lm = std::make_unique<LeaseManager>(
      w->config.replica_id, w->regions, std::vector<RegionId>{w->config.replica_id},
      w->config.leases, w->store.get(), &w->clock,
      [w](RegionId, const LeaseMessage& m) { w->reply = m; },
      [](const LeaseEvent& e) {
        if (e.kind == LeaseEvent::Kind::kStaleRefused) {
          spdlog::info("event={} group={} epoch={} from={}", LeaseEventName(e.kind), e.group,
                       e.epoch, e.owner);
        }
      });
  if (absl::Status st = w->lm->Start(); !st.ok()) return st;
  std::string ca, cert, key;
  for (auto [field, path, dst] : {std::tuple{"tls.ca", &w->config.tls_ca, &ca},
                                  std::tuple{"tls.cert", &w->config.tls_cert, &cert},
                                  std::tuple{"tls.key", &w->config.tls_key, &key}}) {
    auto text = common::ReadPemFile(field, *path);
    if (!text.ok()) return text.status();
    *dst = *std::move(text);
  }
  grpc::SslServerCredentialsOptions tls(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  tls.pem_root_certs = ca;
  tls.pem_key_cert_pairs.push_back({key, cert});
  grpc::ServerBuilder b;
  b.AddListeningPort(absl::StrCat(w->config.listen.host, ":", w->config.listen.port),
                     grpc::SslServerCredentials(tls), &w->port);
  b.RegisterService(w);
  w->server = b.BuildAndStart();
  if (!w->server || w->port == 0) {
    return absl::UnavailableError(absl::StrCat("witness: cannot listen on ", w->config.listen.host,
                                               ":", w->config.listen.port));
  }
  spdlog::info("event=witness_started name={} port={} regions={}", w->config.name, w->port,
               w->config.regions.size());
  return std::unique_ptr<Witness>(new Witness(std::move(impl)));
}

}  // namespace meridian::replication
