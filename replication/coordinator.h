#pragma once

// The replicator's coordination half (issue 5): runs this region's LeaseManager and RightsManager
// (replication/lease.h, rights.h) against the real world:
//   - their messages travel as frames on the peer streams (LeaseFrame, RightsFrame), sent through
//     the replicator's live session with each peer and received from it;
//   - the lease acceptor's records live in the region's global database (RegionControl);
//   - the region learns its leases (SetLeases, which also raises its PostgreSQL fences) every
//     tick, reports checkouts' demand and waiting units (a long poll), executes grants
//     (TransferRights), and hears peers' acknowledgements for sync-peer checkouts;
//   - a new lease owner syncs the group's orders from every peer (GroupSyncRequest/Reply frames,
//     the peers raising their fences first) before the lease becomes usable;
//   - order changes for orders another region owns are forwarded to the owner's replicator
//     (Replication.ForwardOrder over mTLS) and run there by its region (MutateOrder);
//   - operators get an HTTP API: status (peers, leases), handback.
// Thread-safe. Time comes from a Clock (steady in production); the logic it drives is the same
// code the simulator in tests/sim runs.

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "region/control.grpc.pb.h"
#include "replication/config.h"
#include "replication/replication.grpc.pb.h"

namespace meridian::replication {

namespace pb = ::meridian::replication::v1;

class Coordinator {
 public:
  // Sends a frame on the live stream with `peer`; false when there is none (the frame is
  // dropped: every protocol here tolerates loss and retries).
  using SendFn = std::function<bool(RegionId peer, pb::Frame frame)>;

  struct Tls {
    std::string ca, cert, key;
  };

  Coordinator(const ReplicatorConfig& config, std::shared_ptr<grpc::Channel> region, Tls tls,
              SendFn send);
  ~Coordinator();

  // Loads the acceptor records, starts the tick, demand and sync threads, and the control and
  // admin servers when configured.
  [[nodiscard]] absl::Status Start();
  void Stop();

  // Any frame from `peer`: it is alive.
  void Heard(RegionId peer);
  // A lease, rights or sync frame from `peer`. InvalidArgument for a malformed one (the session
  // rejects the stream, as for any bad frame).
  [[nodiscard]] absl::Status OnFrame(RegionId peer, const pb::Frame& frame);
  // The checks of OnFrame that need neither the region nor any state: the stream's reader runs
  // them before it queues a frame whose handling calls the region, so a malformed one ends the
  // stream at once. InvalidArgument naming what is wrong.
  [[nodiscard]] static absl::Status CheckFrame(RegionId peer, const pb::Frame& frame);
  // A stream with `peer` is up: declarations of it as lost (if any) are sent to it.
  void OnPeerUp(RegionId peer);
  // The stream with `peer` ended (and no newer one replaced it): no rights go to it until it is
  // up again.
  void OnPeerDown(RegionId peer);
  // Called (from the coordinator's tick, no lock held) once per takeover of a region's group by
  // a region other than its home, here or at a peer: that region is gone, and the survivors
  // should exchange their documents. Set before Start().
  void OnRegionTakenOver(std::function<void(RegionId group)> fn);
  // The peers whose survivors' exchange about region `lost` is not done here (their records of it
  // may not all be here yet): declare-lost waits for them. Set before Start().
  void SurvivorsExchangePending(std::function<std::vector<RegionId>(RegionId lost)> fn);
  // The peer acknowledged our `stream` through `seq` (for sync-peer checkouts).
  void OnAck(RegionId peer, const std::string& stream, int64_t seq);
  // Replication.ForwardOrder from a peer: run the change at our region.
  grpc::Status ForwardIncoming(RegionId from, const pb::ForwardOrderRequest& req,
                               pb::ForwardOrderResponse* out);
  // Replication.FindAccount from a peer: whether our region holds the account (validated).
  grpc::Status FindAccountIncoming(const pb::FindAccountRequest& req, pb::FindAccountResponse* out);

  [[nodiscard]] uint16_t control_port() const;
  [[nodiscard]] uint16_t admin_port() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::replication
