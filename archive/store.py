"""`ArchiveStore`: the SQLite file that keeps everything a search does (contract: `STORE_CONTRACT.md`).

Tables: `runs`, `candidates` (every proposal: evaluated, rejected or failed), `scores` (one row per
(task, dataset, seed), search or fresh seeds), `exchanges` (every LLM prompt and answer), `state` (opaque
per-run resume state, JSON or bytes) and `schema_version`.  Structured columns hold JSON text; nothing is
pickled, so an archive can be read by any SQLite client and never runs code when opened.

Durability and concurrency:

* journal_mode=WAL + synchronous=FULL: a committed transaction survives SIGKILL (and power loss); an
  uncommitted one leaves no trace.
* One writer, any number of readers: readers (`discover archive list` while a run writes) see the last
  committed state and never block the writer or wait for it.  Writes use BEGIN IMMEDIATE, so a second
  writer waits up to `BUSY_TIMEOUT_S` for the lock instead of failing half-way.
* `transaction()` nests: the outermost one is BEGIN IMMEDIATE ... COMMIT; an inner one is a SAVEPOINT,
  so it commits nothing by itself (the outer one decides) but an exception that leaves it rolls back only
  its own writes.  Every write method runs in `transaction()`, so each is atomic on its own and becomes
  part of the caller's transaction when there is one.
* One connection per store, guarded by a lock: threads may share a store (a transaction holds the lock
  until it ends).
* One writer per run: `lock_run` records the writing process in the run's state (so the lock survives
  SIGKILL); a second process gets an ArchiveError naming the holder, and a lock whose process is gone is
  taken over.
* `readonly=True` never writes anything, not even SQLite's -shm/-wal files: without a -wal file (no writer,
  or the last one closed cleanly) the file is opened immutable, which also works on a read-only file
  system; with one, it is read through the WAL (mode=ro) to see what a running writer committed.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, NotRequired, Sequence, TypedDict

from archive.rejections import RejectionGroup, group_rejections
from grammar.identity import Identity, identify

if TYPE_CHECKING:
    from grammar.objective import Objective

BUSY_TIMEOUT_S = 30.0
LOCK_KEY = "lock"  # state key of the run lock
BASELINE_ORIGIN = "zoo"  # origin of the published baselines a run evaluates first (generation 0)
REPORT_KEY = "final_report"  # state key of a run's final report (discovery.report)
PI_REF_KEY = "pi_ref"  # state key of pi_ref's fitness on the search protocol (generation 0)
RACING_KEY = "racing"  # state key: seed units trained for found candidates, and what the cap for all would take
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
CANDIDATE_STATUSES = ("evaluated", "screened", "rejected", "failed")  # screened: trained with fewer PO steps only
ORDER_COLUMNS = ("id", "fitness", "fresh_fitness", "complexity", "generation", "created")
SCORE_FIELDS = ("task", "dataset", "seed", "score", "returns", "stop_reason")

_CANDIDATES = """CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    created TEXT NOT NULL,
    generation INTEGER NOT NULL,
    origin TEXT NOT NULL,
    parents TEXT NOT NULL,               -- JSON list of candidate ids
    objective TEXT NOT NULL,             -- JSON: Objective.to_dict()
    formula TEXT NOT NULL,               -- grammar text of the whole loss
    structure_hash TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    complexity REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('evaluated', 'screened', 'rejected', 'failed')),
    reason TEXT NOT NULL,
    fitness REAL,
    ci95 REAL,
    fresh_fitness REAL,
    fresh_ci95 REAL,
    descriptors TEXT NOT NULL,           -- JSON object name -> value
    exchange_id INTEGER REFERENCES exchanges(id),
    seconds REAL,
    behaviour TEXT,                      -- gradient fingerprint (grammar.validity), NULL when not checked
    units INTEGER,                       -- seed units behind fitness (raced: more for promising candidates)
    controlled INTEGER                   -- 1: fitness counts what the labels add (twins trained), 0: an upper bound
)"""
_CANDIDATE_INDEXES = """CREATE INDEX candidates_run ON candidates (run_id, id);
CREATE INDEX candidates_dedupe ON candidates (run_id, dedupe_key);
CREATE INDEX candidates_behaviour ON candidates (run_id, behaviour)"""

_MIGRATIONS = {  # version -> statements that bring an archive of that version to the next one
    1: ["ALTER TABLE exchanges ADD COLUMN rejections TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE exchanges ADD COLUMN answer_shape TEXT"],
    2: ["ALTER TABLE candidates ADD COLUMN behaviour TEXT", "ALTER TABLE candidates ADD COLUMN units INTEGER",
        "CREATE INDEX candidates_behaviour ON candidates (run_id, behaviour)"],
    3: ["ALTER TABLE candidates ADD COLUMN controlled INTEGER"],
    4: [_CANDIDATES.format(name="candidates_v5"),  # the status 'screened': SQLite rebuilds a table to change a CHECK
        "INSERT INTO candidates_v5 SELECT * FROM candidates", "DROP TABLE candidates",
        "ALTER TABLE candidates_v5 RENAME TO candidates", *_CANDIDATE_INDEXES.split(";")],
}

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    config TEXT NOT NULL,                -- JSON object
    seed INTEGER NOT NULL,
    code_version TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'failed'))
);
CREATE TABLE exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    created TEXT NOT NULL,
    proposer TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    system TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT,
    error TEXT,
    usage TEXT,                          -- JSON object or NULL
    seconds REAL NOT NULL,
    rejections TEXT NOT NULL DEFAULT '[]',  -- JSON list of [snippet, reason]: proposals of the answer refused
    answer_shape TEXT                    -- how the answer was laid out (see discovery.llm_parse), NULL: no answer
);
{candidates};
CREATE TABLE scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate_id INTEGER NOT NULL REFERENCES candidates(id),
    fresh INTEGER NOT NULL CHECK (fresh IN (0, 1)),
    task TEXT NOT NULL,
    dataset TEXT NOT NULL,
    seed INTEGER NOT NULL,
    score REAL,                          -- NULL stands for NaN (SQLite stores NaN as NULL)
    returns TEXT NOT NULL,               -- JSON list
    stop_reason TEXT NOT NULL,
    extra TEXT NOT NULL                  -- JSON object: any other keys of the row
);
CREATE INDEX scores_candidate ON scores (candidate_id, fresh);
CREATE TABLE state (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('json', 'bytes')),
    value BLOB NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
""".replace("{candidates}", f"{_CANDIDATES.format(name='candidates')};\n{_CANDIDATE_INDEXES}")


class ArchiveError(Exception):
    """A missing, damaged or incompatible archive file, or an unknown id; the message says which."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


class RunRecord(TypedDict):
    id: int
    created: str
    updated: str
    config: dict  # SearchConfig.to_dict()
    seed: int
    code_version: str
    status: str  # running, interrupted, failed, finished


class CandidateRecord(TypedDict):
    """One candidate as the store returns it (`objective` only when asked ``with_objective``)."""

    id: int
    run_id: int
    created: str
    name: str
    constants: dict[str, float]
    objective: NotRequired[Objective]
    generation: int
    origin: str  # BASELINE_ORIGIN, or "<proposer>:<what made it>"
    parents: list[int]
    formula: str
    structure_hash: str
    complexity: float
    status: str  # evaluated, failed or rejected
    reason: str
    fitness: float | None
    ci95: float | None
    fresh_fitness: float | None
    fresh_ci95: float | None
    descriptors: dict[str, float]
    exchange_id: int | None
    seconds: float | None
    behaviour: str | None  # gradient fingerprint
    units: int | None  # seed units behind the fitness
    controlled: bool | None  # fitness counts only what the labels add (True) or is an upper bound (False)
    depth: NotRequired[int]  # lineage only: 0 for the candidate, 1 for its parents, ...


class ArchiveStore:
    SCHEMA_VERSION = 5

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        """Open (and, unless `readonly`, create) the archive at `path`.

        `readonly=True` (for browsing) never creates or changes any file and raises ArchiveError when
        the archive does not exist.  A writer first checks an existing file read-only, so a damaged or
        foreign file is refused before SQLite creates anything beside it.
        """
        self.path = os.fspath(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting level
        self._conn: sqlite3.Connection | None = None
        if readonly and not os.path.isfile(self.path):
            raise ArchiveError(f"no archive at {self.path}")
        if os.path.isdir(self.path):
            raise ArchiveError(f"{self.path} is a directory, not an archive file")
        if not readonly and os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            ArchiveStore(self.path, readonly=True).close()
        try:
            if readonly:
                self._conn = self._connect_readonly()
            else:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                             check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not readonly:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal" and self.path != ":memory:":
                    raise ArchiveError(f"{self.path}: cannot switch to WAL journal mode (got {mode!r})")
                self._conn.execute("PRAGMA synchronous = FULL")
            self._check_schema(tables)
        except sqlite3.DatabaseError as e:
            self.close()
            raise ArchiveError(f"{self.path} is not a readable archive ({e})") from None
        except OSError as e:
            self.close()
            raise ArchiveError(f"cannot open archive {self.path}: {e}") from None
        except ArchiveError:
            self.close()
            raise

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = Path(self.path).resolve().as_uri()
        modes = ["mode=ro", "immutable=1"] if os.path.exists(self.path + "-wal") else ["immutable=1"]
        for i, mode in enumerate(modes):
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                   check_same_thread=False)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                conn.close()
                if i == len(modes) - 1:  # a -wal we cannot read through (read-only file system): the main file
                    raise
        raise AssertionError("unreachable")

    def _check_schema(self, tables: set[str]) -> None:
        if "schema_version" not in tables:
            if tables:
                raise ArchiveError(f"{self.path} is an SQLite file but not an MPO Discover archive")
            if self.readonly:
                raise ArchiveError(f"{self.path} is an empty file, not an archive")
            with self.transaction():  # re-check under the write lock: another process may have won
                if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchall():
                    for statement in _SCHEMA.split(";"):  # not executescript(): it would COMMIT first
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (self.SCHEMA_VERSION,))
        version = self._version()
        if version > self.SCHEMA_VERSION:
            raise ArchiveError(f"{self.path} has archive schema version {version}, written by a newer MPO "
                               f"Discover; this one reads up to version {self.SCHEMA_VERSION}")
        if version < self.SCHEMA_VERSION and not self.readonly:  # a reader copes with the missing columns
            self._conn.execute("PRAGMA foreign_keys = OFF")  # a rebuilt table (4 -> 5) is dropped while referenced
            try:
                with self.transaction():
                    for v in range(self._version(), self.SCHEMA_VERSION):
                        for statement in _MIGRATIONS[v]:
                            self._conn.execute(statement)
                    if self._conn.execute("PRAGMA foreign_key_check").fetchall():
                        raise ArchiveError(f"{self.path}: dangling references found while migrating (damaged archive)")
                    self._conn.execute("UPDATE schema_version SET version = ?", (self.SCHEMA_VERSION,))
            finally:
                self._conn.execute("PRAGMA foreign_keys = ON")

    def _version(self) -> int:
        version = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if version is None:
            raise ArchiveError(f"{self.path}: the schema version is missing (damaged archive)")
        return int(version)

    # ------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ArchiveStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ArchiveError(f"the archive {self.path} is closed")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on exception; nested: a SAVEPOINT (see the module doc)."""
        if self.readonly:
            raise ArchiveError(f"the archive {self.path} is open read-only")
        with self._lock:
            conn = self.conn
            depth = self._depth
            try:
                conn.execute(f"SAVEPOINT s{depth}" if depth else "BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise ArchiveError(f"cannot write to {self.path}: {e}") from None
            self._depth += 1
            try:
                yield
                if not depth:
                    conn.execute("COMMIT")
            except BaseException:
                if depth:
                    conn.execute(f"ROLLBACK TO s{depth}")
                    conn.execute(f"RELEASE s{depth}")
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = depth
            if depth:
                conn.execute(f"RELEASE s{depth}")

    def _write(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
        with self.transaction():
            return self.conn.execute(sql, params)

    def _rows(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence, what: str) -> sqlite3.Row:
        rows = self._rows(sql, params)
        if not rows:
            raise ArchiveError(f"unknown {what} in {self.path}")
        return rows[0]

    # ------------------------------------------------------------------------------------------ runs
    def create_run(self, config: dict, seed: int, code_version: str) -> int:
        now = _now()
        return self._write("INSERT INTO runs (created, updated, config, seed, code_version, status) "
                           "VALUES (?, ?, ?, ?, ?, 'running')",
                           (now, now, _dumps(dict(config)), int(seed), str(code_version))).lastrowid

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> RunRecord:
        return {"id": row["id"], "created": row["created"], "updated": row["updated"],
                "config": json.loads(row["config"]), "seed": row["seed"], "code_version": row["code_version"],
                "status": row["status"]}

    def run(self, run_id: int) -> RunRecord:
        return self._run_dict(self._one("SELECT * FROM runs WHERE id = ?", (run_id,), f"run {run_id}"))

    def runs(self) -> list[RunRecord]:
        return [self._run_dict(r) for r in self._rows("SELECT * FROM runs ORDER BY id")]

    def latest_run(self) -> RunRecord | None:
        rows = self._rows("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        return self._run_dict(rows[0]) if rows else None

    def set_run_status(self, run_id: int, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ArchiveError(f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}")
        with self.transaction():
            self.run(run_id)
            self.conn.execute("UPDATE runs SET status = ?, updated = ? WHERE id = ?", (status, _now(), run_id))

    def _touch_run(self, run_id: int) -> None:
        if self.conn.execute("UPDATE runs SET updated = ? WHERE id = ?", (_now(), run_id)).rowcount != 1:
            raise ArchiveError(f"unknown run {run_id} in {self.path}")

    # ------------------------------------------------------------------------------------ candidates
    def add_candidate(self, run_id: int, *, objective: Objective, origin: str, generation: int,
                      parents: Sequence[int] = (), status: str, reason: str = "",
                      fitness: float | None = None, ci95: float | None = None,
                      descriptors: Mapping[str, float] | None = None, scores: Sequence[Mapping] = (),
                      exchange_id: int | None = None, seconds: float | None = None,
                      behaviour: str | None = None, units: int | None = None,
                      controlled: bool | None = None, identity: Identity | None = None) -> int:
        """Store one proposal and its search-seed scores; returns its id.  An "evaluated" candidate needs a
        finite fitness, a "screened" one (trained with fewer PO steps only) has none; parents and the exchange
        must already be in the archive.  `identity`: the objective's (`grammar.identity.identify`), when the
        caller has it already."""

        if status not in CANDIDATE_STATUSES:
            raise ArchiveError(f"unknown candidate status {status!r}; use one of {', '.join(CANDIDATE_STATUSES)}")
        if status == "evaluated" and (fitness is None or not math.isfinite(fitness)):
            raise ArchiveError(f"an evaluated candidate needs a finite fitness, got {fitness!r}")
        if status == "screened" and fitness is not None:
            raise ArchiveError(f"a screened candidate has no fitness (its scores had fewer PO steps), got {fitness!r}")
        parents = [int(p) for p in parents]
        identity = identity or identify(objective)
        record = (_dumps(objective.to_dict()), identity.formula, identity.structure_hash, identity.dedupe_key,
                  identity.complexity)
        with self.transaction():
            self._touch_run(run_id)
            for p in parents:
                self._one("SELECT id FROM candidates WHERE id = ?", (p,), f"parent candidate {p}")
            if exchange_id is not None:
                self.exchange(exchange_id)
            candidate_id = self.conn.execute(
                "INSERT INTO candidates (run_id, created, generation, origin, parents, objective, formula, "
                "structure_hash, dedupe_key, complexity, status, reason, fitness, ci95, descriptors, "
                "exchange_id, seconds, behaviour, units, controlled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?, ?)",
                (run_id, _now(), int(generation), str(origin), _dumps(parents), *record, status, str(reason),
                 _optional_float(fitness), _optional_float(ci95),
                 _dumps({str(k): float(v) for k, v in (descriptors or {}).items()}), exchange_id,
                 _optional_float(seconds), behaviour, None if units is None else int(units),
                 None if controlled is None else int(controlled))).lastrowid
            self._insert_scores(candidate_id, scores, fresh=False)
        return candidate_id

    def _insert_scores(self, candidate_id: int, scores: Sequence[Mapping], fresh: bool) -> None:
        rows = []
        for row in scores:
            missing = [k for k in ("task", "dataset", "seed", "score") if k not in row]
            if missing:
                raise ArchiveError(f"score row {dict(row)} lacks {', '.join(missing)}")
            extra = {k: v for k, v in row.items() if k not in SCORE_FIELDS}
            rows.append((candidate_id, int(fresh), str(row["task"]), str(row["dataset"]), int(row["seed"]),
                         _optional_float(row["score"]), json.dumps([float(r) for r in row.get("returns", ())]),
                         str(row.get("stop_reason") or ""), _dumps(extra)))
        self.conn.executemany("INSERT INTO scores (candidate_id, fresh, task, dataset, seed, score, returns, "
                              "stop_reason, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def set_fresh(self, candidate_id: int, fitness: float, ci95: float, scores: Sequence[Mapping]) -> None:
        """Record the final re-evaluation on fresh seeds (replacing an earlier one)."""
        with self.transaction():
            self._candidate_row(candidate_id)
            self.conn.execute("UPDATE candidates SET fresh_fitness = ?, fresh_ci95 = ? WHERE id = ?",
                              (_optional_float(fitness), _optional_float(ci95), candidate_id))
            self.conn.execute("DELETE FROM scores WHERE candidate_id = ? AND fresh = 1", (candidate_id,))
            self._insert_scores(candidate_id, scores, fresh=True)

    def _candidate_row(self, candidate_id: int) -> sqlite3.Row:
        return self._one("SELECT * FROM candidates WHERE id = ?", (candidate_id,), f"candidate {candidate_id}")

    def _candidate_dict(self, row: sqlite3.Row, with_objective: bool = True) -> CandidateRecord:
        from grammar.language import GrammarError
        from grammar.objective import Objective

        data = json.loads(row["objective"])
        out = {"id": row["id"], "run_id": row["run_id"], "created": row["created"], "name": data["name"],
               "constants": dict(data.get("constants", {}))}
        if with_objective:
            try:
                out["objective"] = Objective.from_dict(data)
            except (GrammarError, KeyError, TypeError, ValueError) as e:
                raise ArchiveError(f"candidate {row['id']}: its stored objective does not load ({e})") from None
        return {**out, "generation": row["generation"], "origin": row["origin"], "parents": json.loads(row["parents"]),
                "formula": row["formula"], "structure_hash": row["structure_hash"],
                "complexity": row["complexity"], "status": row["status"], "reason": row["reason"],
                "fitness": row["fitness"], "ci95": row["ci95"], "fresh_fitness": row["fresh_fitness"],
                "fresh_ci95": row["fresh_ci95"], "descriptors": json.loads(row["descriptors"]),
                "exchange_id": row["exchange_id"], "seconds": row["seconds"],
                **{k: row[k] if k in row.keys() else None for k in ("behaviour", "units")},  # older readers
                "controlled": None if "controlled" not in row.keys() or row["controlled"] is None
                else bool(row["controlled"])}

    def candidate(self, candidate_id: int) -> CandidateRecord:
        return self._candidate_dict(self._candidate_row(candidate_id))

    def candidates(self, run_id: int | None = None, status: str | None = None, origin_prefix: str | None = None,
                   order_by: str = "id", descending: bool = False, limit: int | None = None, *,
                   with_objective: bool = True) -> list[CandidateRecord]:
        """Candidates matching the filters.  Rows without a value in the `order_by` column come last;
        ties are broken by id.  `with_objective=False` leaves out the parsed `objective` (about 0.6 ms a
        row) for callers that need only numbers, `name` and `formula`."""
        if order_by not in ORDER_COLUMNS:
            raise ArchiveError(f"cannot order candidates by {order_by!r}; use one of {', '.join(ORDER_COLUMNS)}")
        where, params = [], []
        for clause, value in (("run_id = ?", run_id), ("status = ?", status)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if origin_prefix:
            where.append("substr(origin, 1, ?) = ?")
            params += [len(origin_prefix), origin_prefix]
        sql = "SELECT * FROM candidates" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {order_by} IS NULL, {order_by} {'DESC' if descending else 'ASC'}, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._candidate_dict(r, with_objective) for r in self._rows(sql, params)]

    def scores(self, candidate_id: int, fresh: bool | None = None) -> list[dict]:
        """Score rows in insertion order, each {task, dataset, seed, score, returns, stop_reason, fresh}."""
        self._candidate_row(candidate_id)
        sql, params = "SELECT * FROM scores WHERE candidate_id = ?", [candidate_id]
        if fresh is not None:
            sql += " AND fresh = ?"
            params.append(int(fresh))
        return [{**json.loads(r["extra"]), "task": r["task"], "dataset": r["dataset"], "seed": r["seed"],
                 "score": math.nan if r["score"] is None else r["score"], "returns": json.loads(r["returns"]),
                 "stop_reason": r["stop_reason"], "fresh": bool(r["fresh"])}
                for r in self._rows(sql + " ORDER BY id", params)]

    def best_baseline(self, run_id: int) -> CandidateRecord | None:
        """The fittest evaluated baseline of the run (origin `BASELINE_ORIGIN`), or None."""
        rows = self.candidates(run_id, status="evaluated", origin_prefix=BASELINE_ORIGIN, order_by="fitness",
                               descending=True)
        return next((c for c in rows if c["origin"] == BASELINE_ORIGIN), None)

    def best_found(self, run_id: int) -> CandidateRecord | None:
        """The fittest evaluated candidate of the run that is not a baseline, or None."""
        for c in self.candidates(run_id, status="evaluated", order_by="fitness", descending=True):
            if c["origin"] != BASELINE_ORIGIN:
                return c
        return None

    def seen(self, run_id: int, objective: Objective | Identity) -> int | None:
        """Id of the earliest candidate of the run with the same dedupe key, any status."""
        identity = objective if isinstance(objective, Identity) else identify(objective)
        rows = self._rows("SELECT min(id) FROM candidates WHERE run_id = ? AND dedupe_key = ?",
                          (run_id, identity.dedupe_key))
        return rows[0][0]

    def seen_behaviour(self, run_id: int, behaviour: str) -> int | None:
        """Id of the earliest candidate of the run with this gradient fingerprint."""
        return self._rows("SELECT min(id) FROM candidates WHERE run_id = ? AND behaviour = ?",
                          (run_id, behaviour))[0][0]

    def lineage(self, candidate_id: int) -> list[CandidateRecord]:
        """The candidate and all its ancestors, nearest first (breadth-first; each once).  Each dict also
        has `depth`: 0 for the candidate, 1 for its parents, ..."""
        out, queue, done = [], [(candidate_id, 0)], set()
        while queue:
            cid, depth = queue.pop(0)
            if cid in done:
                continue
            done.add(cid)
            c = {**self.candidate(cid), "depth": depth}
            out.append(c)
            queue += [(p, depth + 1) for p in c["parents"]]
        return out

    def rejections(self, run_id: int) -> list[tuple[str, str, str]]:
        """(source, reason, snippet) of every refusal of the run, oldest first: rejected candidates (source:
        their origin before ':') and the proposals refused inside LLM answers (source 'llm')."""
        self.run(run_id)
        rows = [(origin.split(":")[0], reason, formula) for origin, reason, formula in self._rows(
            "SELECT origin, reason, formula FROM candidates WHERE run_id = ? AND status = 'rejected' ORDER BY id",
            (run_id,))]
        if "rejections" in self._columns("exchanges"):
            for (text,) in self._rows("SELECT rejections FROM exchanges WHERE run_id = ? ORDER BY id", (run_id,)):
                rows += [("llm", reason, snippet) for snippet, reason in json.loads(text)]
        return rows

    def rejection_groups(self, run_id: int) -> list[RejectionGroup]:
        """The run's refusals grouped by kind (duplicate, non-finite loss, g increasing, parse error, ...),
        most frequent first, each with its latest example."""
        return group_rejections(self.rejections(run_id))

    def status_counts(self, run_id: int) -> dict[str, int]:
        """Number of candidates of the run per status (every status present, 0 when none)."""
        counts = dict(self._rows("SELECT status, count(*) FROM candidates WHERE run_id = ? GROUP BY status",
                                 (run_id,)))
        return {s: counts.get(s, 0) for s in CANDIDATE_STATUSES}

    def last_generation(self, run_id: int) -> int:
        value = self._rows("SELECT max(generation) FROM candidates WHERE run_id = ?", (run_id,))[0][0]
        return -1 if value is None else int(value)

    # ------------------------------------------------------------------------------------- exchanges
    def add_exchange(self, run_id: int, *, proposer: str, model: str, prompt_version: str, system: str,
                     prompt: str, answer: str | None, error: str | None, usage: Mapping | None,
                     seconds: float, rejections: Sequence[tuple[str, str]] = (),
                     answer_shape: str | None = None) -> int:
        """Store one LLM exchange; `rejections` are the (snippet, reason) of the proposals its answer held
        that were refused before they became candidates."""
        with self.transaction():
            self._touch_run(run_id)
            return self.conn.execute(
                "INSERT INTO exchanges (run_id, created, proposer, model, prompt_version, system, prompt, "
                "answer, error, usage, seconds, rejections, answer_shape) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, _now(), proposer, model, prompt_version, system, prompt, answer, error,
                 None if usage is None else _dumps(dict(usage)), float(seconds),
                 json.dumps([[str(a), str(b)] for a, b in rejections]), answer_shape)).lastrowid

    @staticmethod
    def _exchange_dict(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["usage"] = None if d["usage"] is None else json.loads(d["usage"])
        d["rejections"] = [tuple(r) for r in json.loads(d.get("rejections") or "[]")]  # absent in version 1
        d.setdefault("answer_shape", None)
        return d

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self._rows(f"PRAGMA table_info({table})")}

    def exchange(self, exchange_id: int) -> dict:
        return self._exchange_dict(self._one("SELECT * FROM exchanges WHERE id = ?", (exchange_id,),
                                             f"exchange {exchange_id}"))

    def exchanges(self, run_id: int) -> list[dict]:
        return [self._exchange_dict(r) for r in
                self._rows("SELECT * FROM exchanges WHERE run_id = ? ORDER BY id", (run_id,))]

    # ----------------------------------------------------------------------------------------- state
    def put_state(self, run_id: int, key: str, value: dict | list | bytes) -> None:
        """Store (replace) opaque resume state: bytes as they are, a dict or list as JSON."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            kind, data = "bytes", bytes(value)
        elif isinstance(value, (dict, list)):
            kind, data = "json", json.dumps(value)
        else:
            raise TypeError(f"state {key!r}: store a dict, list or bytes, not {type(value).__name__}")
        with self.transaction():
            self._touch_run(run_id)
            self.conn.execute("INSERT OR REPLACE INTO state (run_id, key, kind, value, updated) "
                              "VALUES (?, ?, ?, ?, ?)", (run_id, str(key), kind, data, _now()))

    def delete_state(self, run_id: int, key: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM state WHERE run_id = ? AND key = ?", (run_id, str(key)))

    def get_state(self, run_id: int, key: str, default=None):
        rows = self._rows("SELECT kind, value FROM state WHERE run_id = ? AND key = ?", (run_id, str(key)))
        if not rows:
            return default
        kind, value = rows[0]
        return bytes(value) if kind == "bytes" else json.loads(value)

    # ------------------------------------------------------------------------------------- run lock
    def lock_run(self, run_id: int) -> None:
        """Make this process the run's only writer, or raise ArchiveError naming the process that is.
        The lock lives in the run's state, so it survives SIGKILL; one held by a process that is gone
        (or by this process) is taken over."""
        with self.transaction():
            holder = self.get_state(run_id, LOCK_KEY)
            if holder is not None and not _is_me(holder) and _alive(holder):
                raise ArchiveError(f"run {run_id} in {self.path} is being written by process {holder['pid']} on "
                                   f"{holder['host']} (since {holder['since'][:19]}); wait for it to end or stop it")
            self.put_state(run_id, LOCK_KEY, {**_process(), "since": _now()})

    def unlock_run(self, run_id: int) -> None:
        """Release the run lock if this process holds it."""
        with self.transaction():
            holder = self.get_state(run_id, LOCK_KEY)
            if holder is not None and _is_me(holder):
                self.delete_state(run_id, LOCK_KEY)


def _process() -> dict:
    """This process as the run lock records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited


def _is_me(holder: Mapping) -> bool:
    return {k: holder.get(k) for k in ("host", "pid", "start")} == _process()


def _alive(holder: Mapping) -> bool:
    """Whether the process recorded in a run lock still runs (another host's process is assumed to)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return holder.get("start") is None or _start_time(pid) == holder["start"]
