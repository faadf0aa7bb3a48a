#pragma once

// Whether this build runs under AddressSanitizer (tests/run.sh's sanitizer pass: clang -O0, 3 to
// 10 times slower). A test of a product's time target prints its figure in both builds and holds
// it to the target in the Release build, to a wider bound here.

namespace meridian::test_support {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

}  // namespace meridian::test_support
