#include "replication/lease_frames.h"

namespace meridian::replication {

v1::LeaseFrame ToLeaseFrame(const LeaseMessage& m) {
  v1::LeaseFrame out;
  v1::LeaseFrame* l = &out;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        l->set_group(x.group);
        l->set_epoch(x.epoch);
        if constexpr (std::is_same_v<T, LeaseRequest>) {
          l->mutable_request()->set_round(x.round);
          l->mutable_request()->set_renewal(x.renewal);
        } else if constexpr (std::is_same_v<T, LeaseReply>) {
          auto* r = l->mutable_reply();
          r->set_round(x.round);
          r->set_granted(x.granted);
          r->set_known_epoch(x.known_epoch);
          r->set_known_owner(x.known_owner);
        } else if constexpr (std::is_same_v<T, LeaseRelease>) {
          l->mutable_release();
        } else if constexpr (std::is_same_v<T, LeaseHandback>) {
          l->mutable_handback();
        } else if constexpr (std::is_same_v<T, LeaseQuery>) {
          l->mutable_query()->set_query(x.query);
        } else {
          auto* r = l->mutable_record();
          r->set_query(x.query);
          r->set_record_epoch(x.record_epoch);
          r->set_record_owner(x.record_owner);
        }
      },
      m);
  return out;
}

absl::StatusOr<LeaseMessage> FromLeaseFrame(const v1::LeaseFrame& l) {
  if (l.group() == 0 || l.group() > 255 || l.epoch() == 0 || l.epoch() > kMaxEpoch) {
    return absl::InvalidArgumentError(
        "lease frame: group 1..255 and an epoch 1..2^53 are required");
  }
  switch (l.kind_case()) {
    case v1::LeaseFrame::kRequest:
      return LeaseMessage(
          LeaseRequest{l.group(), l.epoch(), l.request().round(), l.request().renewal()});
    case v1::LeaseFrame::kReply:
      if (l.reply().known_owner() > 255 || l.reply().known_epoch() > kMaxEpoch) {
        return absl::InvalidArgumentError("lease reply: owner or known epoch out of range");
      }
      return LeaseMessage(LeaseReply{l.group(), l.epoch(), l.reply().round(), l.reply().granted(),
                                     l.reply().known_epoch(), l.reply().known_owner()});
    case v1::LeaseFrame::kRelease:
      return LeaseMessage(LeaseRelease{l.group(), l.epoch()});
    case v1::LeaseFrame::kHandback:
      return LeaseMessage(LeaseHandback{l.group(), l.epoch()});
    case v1::LeaseFrame::kQuery:
      return LeaseMessage(LeaseQuery{l.group(), l.epoch(), l.query().query()});
    case v1::LeaseFrame::kRecord:
      if (l.record().record_owner() > 255 || l.record().record_epoch() > kMaxEpoch) {
        return absl::InvalidArgumentError("lease record: owner or epoch out of range");
      }
      return LeaseMessage(LeaseRecordAnswer{l.group(), l.epoch(), l.record().query(),
                                            l.record().record_epoch(), l.record().record_owner()});
    default:
      return absl::InvalidArgumentError("lease frame without a kind");
  }
}

}  // namespace meridian::replication
