#pragma once

// meridian-witness: the third lease vote of a two-region deployment. It runs only the acceptor
// half of the lease protocol (replication/lease.h): it never holds a group, it answers the
// regions' lease requests (LeaseWitness.Lease over mutual TLS) and keeps its records in a file,
// written atomically and fsync'd before a grant is answered. With two regions and a witness a
// majority is two of three, so one region (or the witness) may be lost.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/yaml_reader.h"
#include "replication/lease.h"

namespace meridian::replication {

struct WitnessConfig {
  std::string name;  // the CN of its certificate
  uint32_t replica_id = 0;
  Endpoint listen;
  std::string tls_ca, tls_cert, tls_key;
  std::string store_path;  // the acceptor's records (JSON)
  struct Region {
    std::string name;
    uint32_t replica_id = 0;
  };
  std::vector<Region> regions;
  LeaseConfig leases;  // must match the regions' (ttl, drift)
};

// Parses and validates; never throws. `source` names the file in errors; relative paths (tls.*,
// store) resolve from `base_dir`, the config file's folder (common::ConfigDir). Of the lease timing
// the witness config sets only leases.ttl_ms and leases.max_drift; ttl_ms must be at least
// LeaseConfig::MinTtlMs() (2143 with the default max_drift 0.01).
[[nodiscard]] absl::StatusOr<WitnessConfig> ParseWitnessConfig(std::string_view yaml,
                                                               std::string_view source,
                                                               std::string_view base_dir = "");
[[nodiscard]] absl::StatusOr<WitnessConfig> LoadWitnessConfig(const std::string& path);

// What the witness takes from a region: a request, a release or a query, of a group that is a
// region of the deployment (`regions`). Anything else is InvalidArgument naming it: the witness
// sends no requests, so a reply or a record answer to it is not an answer to anything (before,
// it took a reply's record as a claim, letting a region move its epochs at will), it is no
// group's home (a handback), and a group it does not know is a misconfigured peer.
[[nodiscard]] absl::Status CheckWitnessFrame(const LeaseMessage& message,
                                             const std::vector<RegionId>& regions);

// The acceptor's records in a file: Save writes a temporary file, fsyncs it, renames it over the
// old one and fsyncs the folder, so a crash leaves the old records or the new ones.
class FileLeaseStore final : public LeaseStore {
 public:
  explicit FileLeaseStore(std::string path) : path_(std::move(path)) {}
  // Reads the file. Missing: a first start, and the empty store is written at once (an error if
  // it cannot be). Unreadable (or not a regular file): an error, never taken for a first start.
  // InvalidArgument for a corrupt file.
  [[nodiscard]] absl::Status Open();
  // What Open would refuse, found without writing anything (--check-config): a file that is not
  // a readable lease store, or, before a first start, a folder the store cannot be made in.
  [[nodiscard]] absl::Status Check() const;
  std::map<RegionId, AcceptorRecord> Load() override { return records_; }
  absl::Status Save(RegionId group, const AcceptorRecord& record) override;

 private:
  // Writes `next` durably (temporary file, fsync, rename, fsync of the folder); on success it
  // becomes the records.
  absl::Status Write(std::map<RegionId, AcceptorRecord> next);
  // The records in the file, or nullopt when there is none (a first start).
  absl::StatusOr<std::optional<std::map<RegionId, AcceptorRecord>>> Read() const;

  std::string path_;
  std::map<RegionId, AcceptorRecord> records_;
};

class Witness {
 public:
  static absl::StatusOr<std::unique_ptr<Witness>> Start(WitnessConfig config);
  ~Witness();
  [[nodiscard]] uint16_t port() const;
  void Stop();

  struct Impl;

 private:
  explicit Witness(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::replication
