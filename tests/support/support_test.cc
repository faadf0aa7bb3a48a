#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <set>
#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/support/ports.h"
#include "tests/support/postgres_server.h"
#include "tests/support/process.h"
#include "tests/support/redis_server.h"
#include "tests/support/temp_dir.h"

namespace meridian::test_support {
namespace {

// Runs `sql` in its own transaction and returns the single value it yields, or the error text.
std::string QueryOne(const std::string& conninfo, const std::string& sql) {
  try {
    pqxx::connection conn(conninfo);
    pqxx::work tx(conn);
    pqxx::row row = tx.exec1(sql);
    tx.commit();
    return row[0].as<std::string>();
  } catch (const std::exception& e) {
    return std::string("error: ") + e.what();
  }
}

void Exec(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::work tx(conn);
  tx.exec0(sql);
  tx.commit();
}

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

TEST(FreeTcpPortTest, DistinctAndBindable) {
  std::set<uint16_t> seen;
  for (int i = 0; i < 20; ++i) {
    uint16_t port = FreeTcpPort();
    ASSERT_NE(port, 0);
    EXPECT_TRUE(seen.insert(port).second) << "port " << port << " handed out twice";
  }
  uint16_t port = FreeTcpPort();
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
}

// Outgoing connections take source ports from the ephemeral range; a listener port from there can
// be taken before the server binds it (CI: "cannot listen on 127.0.0.1:37561").
TEST(FreeTcpPortTest, BelowTheEphemeralRange) {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int lo = 0, hi = 0;
  ASSERT_TRUE(in >> lo >> hi);
  if (lo - 10000 < 1000) GTEST_SKIP() << "ephemeral range starts at " << lo << ": no room below";
  for (int i = 0; i < 50; ++i) {
    uint16_t port = FreeTcpPort();
    ASSERT_NE(port, 0);
    EXPECT_GE(port, 10000);
    EXPECT_LT(port, lo);
  }
}

// Another process (a concurrent ctest job) cannot be handed a port this one holds: the port's
// claim file is locked for as long as this process lives.
TEST(FreeTcpPortTest, ClaimIsHeldAgainstOtherProcesses) {
  uint16_t port = FreeTcpPort();
  ASSERT_NE(port, 0);
  std::string path = "/tmp/meridian-test-ports/" + std::to_string(port);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int fd = open(path.c_str(), O_RDWR);
    if (fd < 0) _exit(2);
    _exit(flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : 1);  // 1: the claim held, as it should
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << "2: no claim file " << path << "; 0: the claim was free";
}

TEST(ProcessTest, ExitStatusAndLog) {
  std::string log = std::filesystem::temp_directory_path() / "meridian-process-test.log";
  std::filesystem::remove(log);
  auto process =
      Process::Spawn({.argv = {"sh", "-c", "echo out; echo err >&2; exit 3"}, .log_path = log});
  ASSERT_TRUE(process.ok()) << process.status();
  absl::StatusOr<int> status = (*process)->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 3);
  EXPECT_EQ(FileTail(log), "out\nerr\n");
  std::filesystem::remove(log);
}

TEST(ProcessTest, SignalWaitAndErrors) {
  auto process = Process::Spawn({.argv = {"sleep", "100"}});
  ASSERT_TRUE(process.ok()) << process.status();
  EXPECT_TRUE((*process)->Running());
  EXPECT_FALSE((*process)->Wait(absl::Milliseconds(20)).ok());
  ASSERT_TRUE((*process)->Signal(SIGTERM).ok());
  absl::StatusOr<int> status = (*process)->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFSIGNALED(*status));
  EXPECT_EQ(WTERMSIG(*status), SIGTERM);
  EXPECT_FALSE((*process)->Signal(SIGTERM).ok());

  auto missing = Process::Spawn({.argv = {"/nonexistent/meridian-binary"}});
  EXPECT_FALSE(missing.ok());
  EXPECT_FALSE(Process::Run({.argv = {"false"}}, absl::Seconds(10)).ok());
  EXPECT_TRUE(Process::Run({.argv = {"true"}}, absl::Seconds(10)).ok());
}

// The child must die with the process that spawned it, even when that one exits without running
// any destructor.
TEST(ProcessTest, ChildDiesWithParent) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t middle = fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    close(fds[0]);
    auto process = Process::Spawn({.argv = {"sleep", "100"}});
    pid_t pid = process.ok() ? (*process)->Pid() : -1;
    ssize_t n = write(fds[1], &pid, sizeof(pid));
    _exit(n == sizeof(pid) ? 0 : 1);
  }
  close(fds[1]);
  pid_t grandchild = -1;
  ASSERT_EQ(read(fds[0], &grandchild, sizeof(grandchild)), static_cast<ssize_t>(sizeof(pid_t)));
  close(fds[0]);
  ASSERT_GT(grandchild, 0);
  int status = 0;
  ASSERT_EQ(waitpid(middle, &status, 0), middle);
  // Dead means gone or a zombie waiting for its new parent to reap it.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  bool dead = false;
  while (!dead && absl::Now() < deadline) {
    std::ifstream stat("/proc/" + std::to_string(grandchild) + "/stat");
    std::string pid, comm, state;
    dead = !(stat >> pid >> comm >> state) || state == "Z" || comm != "(sleep)";
    if (!dead) absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(dead) << "sleep " << grandchild << " outlived its parent";
  if (!dead) kill(grandchild, SIGKILL);
}

// A directory left by a process that died without cleaning up is swept; a live owner's is not.
TEST(TempDirTest, SweepRemovesOnlyDirectoriesOfDeadProcesses) {
  absl::StatusOr<std::string> mine = MakeTempDir("sweep-live", "");
  ASSERT_TRUE(mine.ok()) << mine.status();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<std::string> dir = MakeTempDir("sweep-dead", "");
    char path[256] = {};
    if (dir.ok()) dir->copy(path, sizeof(path) - 1);
    ssize_t n = write(fds[1], path, sizeof(path));
    _exit(n == sizeof(path) ? 0 : 1);
  }
  close(fds[1]);
  char path[256] = {};
  ASSERT_EQ(read(fds[0], path, sizeof(path)), static_cast<ssize_t>(sizeof(path)));
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  const std::string dead(path);
  ASSERT_FALSE(dead.empty());
  ASSERT_TRUE(std::filesystem::exists(dead));
  SweepStaleTempDirs();
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(*mine));
  RemoveTempDir(*mine);
  EXPECT_FALSE(std::filesystem::exists(*mine));
}

// A directory handed to another process lives as long as that process, not its creator.
TEST(TempDirTest, HandedDirectoryLivesAsLongAsItsNewOwner) {
  pid_t holder = fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    pause();
    _exit(0);
  }
  absl::StatusOr<std::string> dir = MakeTempDir("handed", "");
  ASSERT_TRUE(dir.ok()) << dir.status();
  ASSERT_TRUE(HandTempDirTo(*dir, holder).ok());
  SweepStaleTempDirs();
  EXPECT_TRUE(std::filesystem::exists(*dir)) << "swept while its owner runs";
  kill(holder, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(holder, &status, 0), holder);
  SweepStaleTempDirs();
  EXPECT_FALSE(std::filesystem::exists(*dir)) << "kept after its owner died";
  // No such process: refused, and the directory keeps its owner.
  absl::StatusOr<std::string> mine = MakeTempDir("handed-to-none", "");
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(HandTempDirTo(*mine, holder).code(), absl::StatusCode::kNotFound);
  SweepStaleTempDirs();
  EXPECT_TRUE(std::filesystem::exists(*mine));
  RemoveTempDir(*mine);
}

// With $MERIDIAN_TEST_PG_TEMPLATE_FILE naming a shared template (what ctest's pg_template_make
// sets up), Start() copies that one; a file naming no cluster is a clear error, not an initdb.
TEST(PostgresServerTest, SharedTemplateIsUsedWhenNamed) {
  const char* before = getenv("MERIDIAN_TEST_PG_TEMPLATE_FILE");
  const std::string saved = before == nullptr ? "" : before;
  absl::StatusOr<std::string> root = PostgresServer::MakeSharedTemplate(getpid());
  ASSERT_TRUE(root.ok()) << root.status();
  absl::StatusOr<std::string> files = MakeTempDir("template-file", "");
  ASSERT_TRUE(files.ok()) << files.status();
  const std::string file = *files + "/template.path";
  auto name = [&](const std::string& text) { std::ofstream(file) << text; };
  setenv("MERIDIAN_TEST_PG_TEMPLATE_FILE", file.c_str(), 1);

  name(*root + "\n");
  {
    auto pg = PostgresServer::Start({.name = "from-shared"});
    ASSERT_TRUE(pg.ok()) << pg.status();
    EXPECT_EQ(QueryOne((*pg)->ConnectionString(), "SELECT 1"), "1");
  }
  EXPECT_TRUE(std::filesystem::exists(*root + "/data/PG_VERSION")) << "an instance changed it";
  RemoveTempDir(*root);  // now the named template is gone: no silent initdb instead
  auto gone = PostgresServer::Start({.name = "from-gone"});
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(gone.status().message().find("no " + *root + "/data/PG_VERSION"), std::string::npos)
      << gone.status();
  name("relative/path\n");
  auto relative = PostgresServer::Start({.name = "from-relative"});
  ASSERT_FALSE(relative.ok());
  EXPECT_NE(relative.status().message().find("MERIDIAN_TEST_PG_TEMPLATE_FILE="), std::string::npos)
      << relative.status();

  if (saved.empty()) {
    unsetenv("MERIDIAN_TEST_PG_TEMPLATE_FILE");
  } else {
    setenv("MERIDIAN_TEST_PG_TEMPLATE_FILE", saved.c_str(), 1);
  }
  RemoveTempDir(*files);
}

TEST(PostgresServerTest, StartTimes) {
  auto t0 = std::chrono::steady_clock::now();
  auto cold = PostgresServer::Start();
  auto t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(cold.ok()) << cold.status();
  std::printf("PostgresServer::Start, cold (initdb of the template + copy + start): %.1f ms\n",
              Ms(t1 - t0));
  constexpr int kWarmStarts = 5;
  double total_ms = 0;
  double max_ms = 0;
  for (int i = 0; i < kWarmStarts; ++i) {
    auto start = std::chrono::steady_clock::now();
    auto warm = PostgresServer::Start();
    double ms = Ms(std::chrono::steady_clock::now() - start);
    ASSERT_TRUE(warm.ok()) << warm.status();
    total_ms += ms;
    max_ms = std::max(max_ms, ms);
    auto stop_start = std::chrono::steady_clock::now();
    warm->reset();
    if (i == 0) {
      std::printf("PostgresServer destructor (immediate stop + rm -r): %.1f ms\n",
                  Ms(std::chrono::steady_clock::now() - stop_start));
    }
  }
  std::printf("PostgresServer::Start, warm template cache: mean %.1f ms, max %.1f ms (%d starts)\n",
              total_ms / kWarmStarts, max_ms, kWarmStarts);
}

TEST(PostgresServerTest, TwoServersCreateDatabaseKill9Restart) {
  // Started side by side, each with its own options.
  auto both = PostgresServer::StartAll({{.name = "pg-a"}, {.name = "pg-b", .max_connections = 20}});
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->size(), 2u);
  std::unique_ptr<PostgresServer>* a = &(*both)[0];
  PostgresServer& pa = *(*both)[0];
  PostgresServer& pb = *(*both)[1];
  EXPECT_EQ(pa.name(), "pg-a");
  EXPECT_EQ(QueryOne(pa.ConnectionString(), "SHOW max_connections"), "100");
  EXPECT_NE(pa.port(), pb.port());
  EXPECT_EQ(pa.ConnectionString("x"),
            "host=127.0.0.1 port=" + std::to_string(pa.port()) + " user=postgres dbname=x");
  EXPECT_EQ(QueryOne(pb.ConnectionString(), "SHOW max_connections"), "20");
  EXPECT_EQ(QueryOne(pb.ConnectionString(), "SHOW fsync"), "off");

  ASSERT_TRUE(pa.CreateDatabase("meridian").ok());
  // Names that need quoting, both in SQL and in the connection string.
  ASSERT_TRUE(pa.CreateDatabase("odd name's \\db").ok());
  EXPECT_EQ(QueryOne(pa.ConnectionString("odd name's \\db"), "SELECT current_database()"),
            "odd name's \\db");
  EXPECT_FALSE(pa.CreateDatabase("meridian").ok()) << "duplicate CREATE DATABASE must fail";
  const std::string db = pa.ConnectionString("meridian");
  Exec(db, "CREATE TABLE t (k int PRIMARY KEY, v text)");
  Exec(db, "INSERT INTO t VALUES (1, 'committed before the crash')");
  EXPECT_EQ(QueryOne(db, "SELECT v FROM t WHERE k = 1"), "committed before the crash");
  // The other server is independent.
  EXPECT_NE(QueryOne(pb.ConnectionString("meridian"), "SELECT 1").rfind("error:", 0),
            std::string::npos);

  // Through libpq, not pqxx: libpqxx 6.4 leaks a PGresult when a query fails on a connection whose
  // server died (LeakSanitizer reports 2264 bytes; see lsan_libpqxx.supp).
  PGconn* survivor = PQconnectdb(db.c_str());
  ASSERT_EQ(PQstatus(survivor), CONNECTION_OK);
  ASSERT_TRUE(pa.Kill9().ok());
  EXPECT_FALSE(pa.running());
  EXPECT_EQ(QueryOne(db, "SELECT 1").rfind("error:", 0), 0u) << "no server should answer";

  auto restart_start = std::chrono::steady_clock::now();
  ASSERT_TRUE(pa.Restart().ok());
  std::printf("PostgresServer::Restart after Kill9 (crash recovery): %.1f ms\n",
              Ms(std::chrono::steady_clock::now() - restart_start));
  EXPECT_TRUE(pa.running());
  EXPECT_EQ(QueryOne(db, "SELECT v FROM t WHERE k = 1"), "committed before the crash");
  EXPECT_EQ(QueryOne(pb.ConnectionString(), "SELECT 41 + 1"), "42");

  // A connection from before the crash is broken, not silently reconnected.
  PGresult* result = PQexec(survivor, "SELECT 1");
  EXPECT_NE(PQresultStatus(result), PGRES_TUPLES_OK);
  EXPECT_NE(PQstatus(survivor), CONNECTION_OK);
  PQclear(result);
  PQfinish(survivor);

  ASSERT_TRUE(pa.Stop().ok());
  ASSERT_TRUE(pa.Stop().ok()) << "Stop is idempotent";
  ASSERT_TRUE(pa.Restart().ok());
  EXPECT_EQ(QueryOne(db, "SELECT count(*) FROM t"), "1");

  const std::string dir = pa.directory();
  EXPECT_TRUE(std::filesystem::exists(dir));
  ASSERT_TRUE(pa.Kill9().ok());
  a->reset();  // Destructor after Kill9: waits for orphans, drops shared memory, removes the dir.
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(PostgresServerTest, ExtraSettingsAndBadSettingError) {
  auto ok = PostgresServer::Start({.extra_settings = {{"wal_level", "logical"}}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(QueryOne((*ok)->ConnectionString(), "SHOW wal_level"), "logical");

  auto bad = PostgresServer::Start({.name = "pg-bad", .shared_buffers = "lots"});
  ASSERT_FALSE(bad.ok());
  std::printf("Error for a bad setting, as callers will see it:\n%s\n",
              std::string(bad.status().message()).c_str());
  EXPECT_NE(bad.status().message().find("shared_buffers"), std::string::npos);
}

// hiredis, for the test only: one command, the reply as text ("(nil)", "error: ...").
std::string Command(redisContext* ctx, const char* format, const char* a = nullptr,
                    const char* b = nullptr) {
  auto* reply = static_cast<redisReply*>(redisCommand(ctx, format, a, b));
  if (reply == nullptr) return std::string("error: ") + ctx->errstr;
  std::string out;
  switch (reply->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      out.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_NIL:
      out = "(nil)";
      break;
    case REDIS_REPLY_ERROR:
      out = std::string("error: ") + reply->str;
      break;
    default:
      out = "(other)";
  }
  freeReplyObject(reply);
  return out;
}

redisContext* Connect(uint16_t port) {
  redisContext* ctx = redisConnectWithTimeout("127.0.0.1", port, timeval{2, 0});
  if (ctx != nullptr && ctx->err == 0) redisSetTimeout(ctx, timeval{2, 0});
  return ctx;
}

TEST(RedisServerTest, SetGetKill9Restart) {
  auto start = std::chrono::steady_clock::now();
  auto server = RedisServer::Start();
  std::printf("RedisServer::Start: %.1f ms\n", Ms(std::chrono::steady_clock::now() - start));
  ASSERT_TRUE(server.ok()) << server.status();
  RedisServer& redis = **server;
  const uint16_t port = redis.port();

  redisContext* ctx = Connect(port);
  ASSERT_TRUE(ctx != nullptr && ctx->err == 0);
  EXPECT_EQ(Command(ctx, "SET %s %s", "k", "v1"), "OK");
  EXPECT_EQ(Command(ctx, "GET %s", "k"), "v1");

  ASSERT_TRUE(redis.Kill9().ok());
  EXPECT_FALSE(redis.running());
  std::string after_kill = Command(ctx, "GET %s", "k");
  EXPECT_EQ(after_kill.rfind("error:", 0), 0u) << after_kill;
  EXPECT_NE(ctx->err, 0) << "hiredis reports the broken connection";
  redisFree(ctx);

  start = std::chrono::steady_clock::now();
  ASSERT_TRUE(redis.Restart().ok());
  std::printf("RedisServer::Restart after Kill9: %.1f ms\n",
              Ms(std::chrono::steady_clock::now() - start));
  EXPECT_EQ(redis.port(), port);
  ctx = Connect(port);
  ASSERT_TRUE(ctx != nullptr && ctx->err == 0);
  EXPECT_EQ(Command(ctx, "GET %s", "k"), "(nil)") << "no persistence: the data is gone";
  EXPECT_EQ(Command(ctx, "SET %s %s", "k", "v2"), "OK");
  EXPECT_EQ(Command(ctx, "GET %s", "k"), "v2");
  redisFree(ctx);

  // A graceful stop and restart keep the port too.
  ASSERT_TRUE(redis.Stop().ok());
  ASSERT_TRUE(redis.Restart().ok());
  ctx = Connect(port);
  ASSERT_TRUE(ctx != nullptr && ctx->err == 0);
  EXPECT_EQ(Command(ctx, "PING"), "PONG");
  redisFree(ctx);

  const std::string dir = redis.directory();
  server->reset();
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(RedisServerTest, TwoServersAreIndependent) {
  auto a = RedisServer::Start({.name = "redis-a"});
  auto b = RedisServer::Start({.name = "redis-b"});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE((*a)->port(), (*b)->port());
  redisContext* ca = Connect((*a)->port());
  redisContext* cb = Connect((*b)->port());
  ASSERT_TRUE(ca != nullptr && ca->err == 0 && cb != nullptr && cb->err == 0);
  EXPECT_EQ(Command(ca, "SET %s %s", "k", "a"), "OK");
  EXPECT_EQ(Command(cb, "GET %s", "k"), "(nil)");
  redisFree(ca);
  redisFree(cb);
}

}  // namespace
}  // namespace meridian::test_support
