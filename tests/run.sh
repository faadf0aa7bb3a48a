#!/usr/bin/env bash
# The whole pass/fail suite, from a clean checkout: installs dependencies, builds, runs every test
# (ctest) in a Release build (GCC) and again in a sanitizer build (clang: AddressSanitizer +
# UndefinedBehaviorSanitizer, with the libFuzzer targets; it builds while the release tests run, at
# idle priority), then runs that build's two libFuzzer targets side by side for 60 s: the decoders
# of peer input (CRDT documents, replication frames, the region's ApplyDeltas checks) and the
# region's HTTP server and router (a client's bytes over loopback). Exit status 0 only if all of it
# passed.
#
# Environment: FUZZ_SECONDS (default 60; 0 skips fuzzing), JOBS (default: nproc),
#              SKIP_ASAN=1 to skip the sanitizer pass and the fuzzing (local iteration only; CI
#              runs both), SAN_ALL=1 to run in the sanitizer pass the 31 cluster tests it leaves to
#              the Release pass (tests/integration/CMakeLists.txt says which and why).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-$(nproc)}
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
# run_ctest DIR [ENV=VALUE...]: every test of build tree DIR, with the clusters of regions that
# tests/ctest-resources.json lets run at a time: two in the Release tree, one in the sanitizer
# tree, which is bound by CPU (tests/integration/CMakeLists.txt). On a failure its last lines (all
# a CI page may show) repeat each failed test's name and its assertions' first lines, which ctest
# printed further up among the output of everything that passed.
run_ctest() {
  local dir=$1 rc=0
  shift
  env "$@" ctest --test-dir "$dir" --output-on-failure -j "$JOBS" \
    --resource-spec-file "$PWD/tests/ctest-resources.json" || rc=$?
  ((rc == 0)) && return 0
  echo "-- what failed in $dir (whole output: $dir/Testing/Temporary/LastTest.log)"
  awk '/^[0-9]+\/[0-9]+ Testing: / { test = $3 }
       /: Failure$|^\[  FAILED  \] [A-Za-z]|Sanitizer|runtime error/ { left = 4; print "[" test "]" }
       left > 0 { print "  " $0; left-- }' "$dir/Testing/Temporary/LastTest.log" | tail -n 40
  exit "$rc"
}

step "dependencies"
bash deploy/install-deps.sh

export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/meridian-ccache}

step "release build"
# Unity batches (MERIDIAN_UNITY_BUILD, see CMakeLists.txt): the heavy headers are parsed once per
# batch of 16 files instead of once per file. The tests' own code is built -O1
# (MERIDIAN_TEST_CODE_OPTIONS); the code they test is built -O3, as it ships.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMERIDIAN_UNITY_BUILD=ON \
  -DMERIDIAN_TEST_CODE_OPTIONS=-O1 >/dev/null
cmake --build build -j "$JOBS"

san_build=""
if [[ "${SKIP_ASAN:-0}" != 1 ]]; then
  # clang -O0 compiles a heavy file 3.3x faster than GCC -O1 with the same sanitizers (25 s against
  # 84 s for region/internal_service.cc), and the optimizer is not what this pass tests: the
  # release pass runs -O3. The CPU-bound code (MERIDIAN_HOT_CODE_OPTIONS, see CMakeLists.txt) is
  # built -O1, or its properties and the simulator run up to 8x slower. MERIDIAN_FUZZ builds the
  # fuzz targets (decoders, HTTP server) in the same tree.
  CC=clang CXX=clang++ cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DMERIDIAN_SANITIZE=ON -DMERIDIAN_FUZZ=ON -DMERIDIAN_BENCH=OFF -DMERIDIAN_UNITY_BUILD=ON \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O0 -g1 -DNDEBUG" -DMERIDIAN_HOT_CODE_OPTIONS=-O1 \
    "-DMERIDIAN_SANITIZER_ALL_TESTS=$([[ ${SAN_ALL:-0} == 1 ]] && echo ON || echo OFF)" >/dev/null
  # The sanitizer tree builds beside the release tests, at idle priority (SCHED_IDLE: it runs only
  # on a core the tests leave idle, about a third of the time while they run), so its build costs
  # little wall time of its own. ninja itself, not `cmake --build`, so that the trap's SIGTERM
  # reaches the compilers too.
  idle=(chrt --idle 0)
  "${idle[@]}" true 2>/dev/null || idle=(nice -n 19)
  san_started=$(date +%s)
  "${idle[@]}" ninja -C build-san -j "$JOBS" >build-san/build.log 2>&1 &
  san_build=$!
  trap '[[ -n $san_build ]] && kill $san_build 2>/dev/null' EXIT
fi

step "release tests${san_build:+ (the sanitizer tree builds beside them at idle priority)}"
run_ctest build

if [[ -n $san_build ]]; then
  step "sanitizer build (clang -O0, ASan+UBSan, libFuzzer targets): waiting for it to finish"
  if ! wait "$san_build"; then
    san_build=""
    tail -n 40 build-san/build.log
    echo "the sanitizer build failed (whole log: build-san/build.log)" >&2
    exit 1
  fi
  san_build=""
  echo "sanitizer build done, $(($(date +%s) - san_started)) s after it started"
  step "sanitizer tests"
  run_ctest build-san ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1 \
    LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"

  if [[ "$FUZZ_SECONDS" -gt 0 ]]; then
    step "fuzzing for ${FUZZ_SECONDS} s (libFuzzer, ASan+UBSan): the decoders of peer input and the HTTP server, side by side"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # fuzz TARGET CORPUS: runs build-san's TARGET on a copy of CORPUS; its output in $work/TARGET.log.
    # A crash leaves crash-* in build-san and fails this script.
    fuzz() {
      mkdir "$work/$1" && cp "$2"/* "$work/$1"/
      (cd build-san && "./tests/fuzz/$1" -max_total_time="$FUZZ_SECONDS" -max_len=4096 \
        -print_final_stats=1 "$work/$1" >"$work/$1.log" 2>&1)
    }
    fuzz crdt_decode_fuzz tests/fuzz/corpus &
    crdt_fuzz=$!
    fuzz http_request_fuzz tests/fuzz/http_corpus &
    http_fuzz=$!
    failed=()
    wait "$crdt_fuzz" || failed+=(crdt_decode_fuzz)
    wait "$http_fuzz" || failed+=(http_request_fuzz)
    for target in crdt_decode_fuzz http_request_fuzz; do
      echo "-- $target"
      if [[ " ${failed[*]} " == *" $target "* ]]; then
        tail -n 60 "$work/$target.log"
      else
        grep -E '^(Done|stat::)' "$work/$target.log" || true
      fi
    done
    if ((${#failed[@]})); then
      echo "fuzzing failed: ${failed[*]} (the crash input is build-san/crash-*)" >&2
      exit 1
    fi
    echo "fuzz: ${FUZZ_SECONDS} s without a crash, each target"
  fi
fi

step "all tests passed"
