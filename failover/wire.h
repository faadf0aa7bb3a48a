#pragma once

// The JSON form of an Observation, as controllers exchange it over POST /v1/observations:
//   {"from":"us-east","incarnation":"9f2c0a1b3d4e5f60","seq":42,
//    "regions":{"eu-west":{"healthy":false,"caught_up":false,"fail_streak":3,"ok_streak":0,
//                          "reason":"readyz: connection refused"}, ...}}
// `incarnation` is 16 hex digits (a JSON number cannot carry 64 bits safely). Unknown fields,
// wrong types, out-of-range numbers, more than 64 regions and reasons over 256 bytes are refused
// with InvalidArgument naming the field; nothing partial is returned.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "failover/decision.h"

namespace meridian::failover {

inline constexpr size_t kMaxObservationBytes = 64 * 1024;
inline constexpr size_t kMaxReasonBytes = 256;

[[nodiscard]] std::string ObservationToJson(const Observation& o);
[[nodiscard]] absl::StatusOr<Observation> ObservationFromJson(std::string_view body);

// key=value log formatting: a value is quoted (with \" and \\ escaped, control bytes as \xNN)
// when it is empty or holds anything but [A-Za-z0-9._:/,@+-]; so values that came from the
// network cannot forge fields or lines.
[[nodiscard]] std::string LogValue(std::string_view v);

}  // namespace meridian::failover
