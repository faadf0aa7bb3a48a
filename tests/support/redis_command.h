#pragma once

// One Redis command from a test, its reply as text: a string as it is, nil as "(nil)", an
// integer in decimal, no reply at all as "(error)". Header-only; link hiredis.

#include <hiredis/hiredis.h>

#include <string>

namespace meridian::test_support {

inline std::string RedisCommandText(redisContext* c, const std::string& cmd) {
  auto* r = static_cast<redisReply*>(redisCommand(c, cmd.c_str()));
  std::string out = r == nullptr                    ? "(error)"
                    : r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len)
                    : r->type == REDIS_REPLY_NIL    ? "(nil)"
                                                    : std::to_string(r->integer);
  if (r) freeReplyObject(r);
  return out;
}

// The one key that matches `pattern` (KEYS: a test's small Redis only), or "" when none or
// several do. A cart's hot copy is "cart:<database actor>:<user id>": `cart:*:<user id>`.
inline std::string RedisOnlyKey(redisContext* c, const std::string& pattern) {
  auto* r = static_cast<redisReply*>(redisCommand(c, "KEYS %s", pattern.c_str()));
  std::string out;
  if (r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
      r->element[0]->type == REDIS_REPLY_STRING) {
    out.assign(r->element[0]->str, r->element[0]->len);
  }
  if (r) freeReplyObject(r);
  return out;
}

}  // namespace meridian::test_support
