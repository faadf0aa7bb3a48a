#pragma once

// The mTLS files of a replicator or witness, checked as its peers will check them, so that
// `--check-config` (which `deploy/meridian up` runs before it starts anything) catches a key of
// another certificate or a certificate of another region, not the start (gRPC's "Invalid private
// key", then "cannot listen") or every peer's handshake after it.

#include <string>

#include "absl/status/status.h"

namespace meridian::replication {

// Checks, in this order, naming the field of the first problem:
// - each file is a regular file holding PEM (common::CheckPemFiles);
// - tls.ca holds at least one certificate, tls.cert's first certificate parses, tls.key holds an
//   unencrypted private key;
// - the key is the certificate's;
// - the certificate (with any further certificates in tls.cert as its chain) verifies against
//   tls.ca now: signed by it, not expired, not yet to come;
// - its common name is `name`, which peers take as the caller's region, and it is valid for the
//   host name `name`, which peers dial it by.
[[nodiscard]] absl::Status CheckTlsIdentity(const std::string& ca_path,
                                            const std::string& cert_path,
                                            const std::string& key_path, const std::string& name);

}  // namespace meridian::replication
