#pragma once

// RegionControl (region/control.proto): the API the region's own replicator uses for leases,
// fences, the lease acceptor's records, takeover syncs, inventory rights and sync-peer acks, and
// through which an order change forwarded from another region runs here. Registered on the
// region's internal gRPC server. Thread-safe.

#include <grpcpp/impl/codegen/service_type.h>

#include <memory>

#include "region/app_impl.h"

namespace meridian::region {

std::unique_ptr<grpc::Service> MakeRegionControlService(RegionApp::Impl& app);

// Connects the region to its replicator's OrderForwarder (when replication.replicator is set).
void ConnectForwarder(RegionApp::Impl& app);

}  // namespace meridian::region
