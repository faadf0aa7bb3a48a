#pragma once

// Faults injected into a real PostgreSQL database with a trigger, for tests of what the code does
// when a statement fails or a COMMIT's outcome is unknown.

#include <pqxx/pqxx>

#include <string>
#include <utility>
#include <vector>

namespace meridian::test_support {

// A fault for the next `times` rows that `event` ("INSERT", "UPDATE", ...) on `table` and `when`
// (a trigger condition on NEW, or "true") match, in every database of `dsns`. kError fails the
// statement with `sqlstate` (40P01 is a deadlock, which PgPool retries); kKillAtCommit ends the
// session during its COMMIT (a deferred trigger terminates its own backend), so that the client
// cannot know whether the transaction committed (libpqxx's in_doubt_error). A sequence counts
// the rows: unlike a table, it is not rolled back with the failed transaction. The trigger and
// the sequence go with the object.
class DbFault {
 public:
  enum class Kind { kError, kKillAtCommit };

  DbFault(std::vector<std::string> dsns, std::string name, Kind kind, const std::string& event,
          std::string table, const std::string& when, int times = 1,
          const std::string& sqlstate = "P0001")
      : dsns_(std::move(dsns)), name_(std::move(name)), table_(std::move(table)) {
    const bool kill = kind == Kind::kKillAtCommit;
    for (const std::string& dsn : dsns_) {
      pqxx::connection c(dsn);
      pqxx::work tx(c);
      tx.exec0(R"sql(
CREATE OR REPLACE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval(TG_ARGV[0]::regclass) <= TG_ARGV[1]::bigint THEN
    IF TG_ARGV[2] = 'kill' THEN
      PERFORM pg_terminate_backend(pg_backend_pid());
    ELSE
      RAISE EXCEPTION 'injected fault %', TG_ARGV[0] USING ERRCODE = TG_ARGV[3];
    END IF;
  END IF;
  RETURN NULL;
END $$)sql");
      tx.exec0("CREATE SEQUENCE " + name_);
      tx.exec0((kill ? "CREATE CONSTRAINT TRIGGER " + name_ + " AFTER " + event + " ON " + table_ +
                           " DEFERRABLE INITIALLY DEFERRED"
                     : "CREATE TRIGGER " + name_ + " AFTER " + event + " ON " + table_) +
               " FOR EACH ROW WHEN (" + when + ") EXECUTE FUNCTION test_fault('" + name_ + "', '" +
               std::to_string(times) + "', '" + (kill ? "kill" : "error") + "', '" + sqlstate +
               "')");
      tx.commit();
    }
  }
  DbFault(const DbFault&) = delete;
  DbFault& operator=(const DbFault&) = delete;
  ~DbFault() {
    for (const std::string& dsn : dsns_) {
      pqxx::connection c(dsn);
      pqxx::work tx(c);
      tx.exec0("DROP TRIGGER " + name_ + " ON " + table_ + "; DROP SEQUENCE " + name_);
      tx.commit();
    }
  }

 private:
  std::vector<std::string> dsns_;
  std::string name_, table_;
};

}  // namespace meridian::test_support
