#pragma once

// What every Meridian binary's main() shares when parsing its command line: one exit code for a
// usage error (2, as failover/README.md and failover/DRILL.md promise, instead of CLI11's own
// 105, 106, 109...), integer flags read as decimal, and a range validator for floating-point flags
// that also refuses NaN and infinities (CLI11 2.1.2's Range lets NaN through: `val < min ||
// val > max` is false for it).
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

// CLI11 2.1.2 reads an integer flag with strtoll's base 0, so `--seed 010` was 8 and
// `--queue 0x10` 16, where every number in a config file is decimal (common/yaml_reader.h).
// ParseFlags puts this in front of every integer flag's checks: decimal digits with an optional
// sign only, leading zeros dropped so that CLI11 reads what a person wrote.
inline std::string DecimalInteger(std::string& value) {
  const size_t digits = value.empty() || (value[0] != '+' && value[0] != '-') ? 0 : 1;
  if (digits == value.size() ||
      value.find_first_not_of("0123456789", digits) != std::string::npos) {
    return "'" + value + "' is not a decimal integer";
  }
  const size_t first = value.find_first_not_of('0', digits);
  value.erase(digits, (first == std::string::npos ? value.size() - 1 : first) - digits);
  return {};
}

// Every flag (of `app` and its subcommands) that takes integers reads them as decimal.
inline void MakeIntegerFlagsDecimal(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    const std::string type = option->get_type_name();
    const std::string base = type.substr(0, type.find(':'));
    if (base == "INT" || base == "UINT") option->transform(CLI::Validator(DecimalInteger, ""));
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    MakeIntegerFlagsDecimal(*sub);
  }
}

// Parses argv into `app`. Returns nullopt when main should go on; otherwise the code main must
// return: 0 after --help or --version (printed to stdout), kUsageExitCode after a usage error
// (CLI11's message, which names the flag, printed to stderr). Usage:
//   if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
[[nodiscard]] inline std::optional<int> ParseFlags(CLI::App& app, int argc,
                                                   const char* const* argv) {
  MakeIntegerFlagsDecimal(app);
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
