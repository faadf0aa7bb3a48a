#pragma once

// What every Meridian binary's main() shares when parsing its command line: one exit code for a
// usage error (2, as failover/README.md and failover/DRILL.md promise, instead of CLI11's own
// 105, 106, 109...) and a range validator for floating-point flags that also refuses NaN and
// infinities (CLI11 2.1.2's Range lets NaN through: `val < min || val > max` is false for it).
// Header-only; the binary links meridian_cli (CLI11). Output paths: common/files.h.

#include <CLI/CLI.hpp>

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace meridian::common {

// The exit code of a usage error: an unknown flag, a bad value, a missing required flag.
inline constexpr int kUsageExitCode = 2;

// Parses argv into `app`. Returns nullopt when main should go on; otherwise the code main must
// return: 0 after --help or --version (printed to stdout), kUsageExitCode after a usage error
// (CLI11's message, which names the flag, printed to stderr). Usage:
//   if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
[[nodiscard]] inline std::optional<int> ParseFlags(CLI::App& app, int argc,
                                                   const char* const* argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::RequiredError& e) {
    // CLI11 checks required flags before it reports unknown arguments, so a typo of a required
    // flag (`--confg x`) would be reported as "--config is required". Name the unknown first.
    if (std::vector<std::string> extras = app.remaining(true);
        !extras.empty() && !app.get_allow_extras()) {
      app.exit(CLI::ExtrasError(std::move(extras)));
      return kUsageExitCode;
    }
    return app.exit(e) == 0 ? 0 : kUsageExitCode;
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kUsageExitCode;
  }
  return std::nullopt;
}

// A CLI11 validator for floating-point flags: the value must be a finite number within
// [min, max]. CLI::Range alone lets NaN through. Usage:
//   app.add_option("--ratio", ratio)->check(meridian::common::FiniteRange(0.0, 1.0));
class FiniteRange : public CLI::Validator {
 public:
  FiniteRange(double min, double max) : CLI::Validator(Describe(min, max)) {
    func_ = [min, max](std::string& input) -> std::string {
      double v = 0;
      if (!CLI::detail::lexical_cast(input, v) || !std::isfinite(v)) {
        return "'" + input + "' is not a finite number";
      }
      if (v < min || v > max) {
        std::ostringstream out;
        out << "'" << input << "' is outside " << min << ".." << max;
        return out.str();
      }
      return {};
    };
  }

 private:
  static std::string Describe(double min, double max) {
    std::ostringstream out;
    out << "FINITE in " << min << ".." << max;
    return out.str();
  }
};

}  // namespace meridian::common
