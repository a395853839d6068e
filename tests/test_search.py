"""The search loop end to end: recording, determinism, Ctrl-C, SIGKILL + resume, LLM degradation, CLI."""

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx2 as httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from archive.store import ArchiveStore
from discovery import cli
from discovery.cli import app
from discovery.llm import LLMConfig
from discovery.report import LABEL_USE, VERDICTS
from discovery.proposers import REGISTRY, Asked, Proposed, Proposer, register
from discovery.proposers.llm import prompt_context
from discovery.search import Search, SearchConfig
from evaluators.datasets import DatasetConfig
from evaluators.fitness import FitnessConfig, label_score
from evaluators.po_trainer import TrainConfig
from evaluators.reference import BCConfig
from grammar.objective import Objective
from grammar.zoo import baseline

BASELINES = ("dpo", "sft", "ipo", "hinge")
# Small enough for a 2-core CI machine; the same numbers as TINY_CLI below.
TINY = SearchConfig(
    fitness=FitnessConfig(seeds=2, episodes=1, dataset=DatasetConfig(n_pairs=64, segment_length=20, max_prefix=40),
                          train=TrainConfig(steps=10, batch_pairs=16, curve_points=2), reference=BCConfig(steps=100),
                          batch=4),
    seed=0, max_evaluations=12, max_seconds=None, baselines=BASELINES, top_k=2, fresh_seeds=2,
    weights={"gp": 0.6, "es": 0.4, "llm": 0.0}, max_seeds=4, report_baselines="default")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cache"))
    old = os.environ.get("MPO_DISCOVER_CACHE")
    os.environ["MPO_DISCOVER_CACHE"] = path
    yield path
    if old is None:
        del os.environ["MPO_DISCOVER_CACHE"]
    else:
        os.environ["MPO_DISCOVER_CACHE"] = old


def _trace(store: ArchiveStore, run_id: int) -> list[tuple]:
    """What a run produced, in order, without timestamps."""
    return [(c["generation"], c["origin"], c["formula"], c["status"], c["reason"],
             None if c["fitness"] is None else round(c["fitness"], 6), tuple(c["parents"]))
            for c in store.candidates(run_id)]


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run") / "archive.db")
    store = ArchiveStore(path)
    search = Search.start(store, TINY)
    generations = search.run()
    report = search.final_report()
    return store, search, generations, report


def test_a_run_records_every_candidate_with_scores_descriptors_and_lineage(finished):
    store, search, generations, rows = finished
    run = store.run(search.run_id)
    assert run["status"] == "finished" and run["seed"] == 0 and run["code_version"]
    assert SearchConfig.from_dict(run["config"]) == TINY
    cands = store.candidates(search.run_id)
    zoo = [c for c in cands if c["origin"] == "zoo"]
    assert sorted(c["objective"].name for c in zoo) == sorted(BASELINES)
    assert all(c["generation"] == 0 for c in zoo)
    assert search.evaluations() == TINY.max_evaluations  # a generation trains no more than the budget has left
    proposers = {g.proposer for g in generations}
    assert "gp" in proposers, proposers
    for c in cands:
        if c["status"] == "evaluated":
            scores = store.scores(c["id"], fresh=False)
            task = TINY.fitness.tasks[0]
            seeds = {s["seed"] for s in scores}
            # every baseline at the racing cap; a found loss at rung 0 (seeds 0, 1) or raced on (0-3)
            assert seeds == {0, 1, 2, 3} if c["origin"] == "zoo" else seeds in ({0, 1}, {0, 1, 2, 3})
            assert {(s["task"], s["dataset"]) for s in scores} == {(task, "noisy:0.2")}
            assert {s["rung"] for s in scores} == {0, 1} if len(seeds) == 4 else {0}
            # fitness counts what the labels add where the shuffled twins were trained (all yardsticks, and every
            # found loss that could enter the elites); else it is the plain score, an upper bound
            assert c["controlled"] == all("shuffled" in s for s in scores) and (c["controlled"] or c["origin"] != "zoo")
            assert c["units"] == len(seeds) and np.isclose(np.mean([label_score(s) for s in scores]), c["fitness"])
            assert c["fitness"] <= np.mean([s["score"] for s in scores]) + 1e-9
            assert (c["ci95"] is None) == (len(seeds) < 3), "no CI from fewer than 3 seeds"
            assert set(c["descriptors"]) == {"complexity", "saturation"}
        elif c["status"] == "rejected":
            assert c["reason"], "a rejection always says why"
        if c["origin"].startswith(("gp:", "es:")):
            assert c["parents"] and all(p < c["id"] for p in c["parents"])
    child = next(c for c in cands if c["origin"].startswith("gp:"))
    assert store.lineage(child["id"])[0]["id"] == child["id"]
    assert search.qd.coverage > 0 and search.qd.best is not None


def test_final_report_has_controls_baselines_and_verdicts(finished):
    store, search, _, report = finished
    kinds = [r["kind"] for r in report["rows"]]
    assert kinds[:2] == ["pi_ref", "oracle"]
    started = [f"{n} (default)" for n in BASELINES]  # what the run started from, then finalists' other zoo origins
    assert [r["label"] for r in report["rows"] if r["kind"] == "baseline"][:len(BASELINES)] == started
    assert report["best_baseline"] in started
    assert sum(r["best_baseline"] for r in report["rows"]) == 1
    finalists = [r for r in report["rows"] if r["kind"] == "finalist"]
    assert 1 <= len(finalists) <= TINY.top_k
    assert report["data_seeds"] == [1, 2] and report["columns"] == ["halfcheetah noisy:0.2"]
    for r in finalists:
        assert r["verdict"] in VERDICTS and r["label_use"] in LABEL_USE
        assert r["shuffled"] and r["minus_shuffled"] and "p_holm" in r and r["p_holm"] >= r["p"]
        assert r["detectable"] > 0 and r["label_use_detectable"] > 0
        assert store.candidate(r["id"])["controlled"], "a finalist's fitness counts only what the labels add"
        assert r["origin"] in BASELINES or r["zoo_structure"]
        fresh = store.scores(r["id"], fresh=True)
        assert len(fresh) == 2 * TINY.fresh_seeds and {s["seed"] for s in fresh}.isdisjoint(range(4))
        assert {s["data_seed"] for s in fresh} == {1, 2}
        assert np.isclose(store.candidate(r["id"])["fresh_fitness"], r["fresh"][0])
    assert store.get_state(search.run_id, "final_report") == json.loads(json.dumps(report))
    racing = report["racing"]
    assert 0 < racing["units"] < racing["at_cap"], "racing trains fewer seed units than the cap for all"


def test_every_proposed_loss_is_screened_as_a_preference_loss(cache, tmp_path):
    search = Search.start(ArchiveStore(str(tmp_path / "s.db")), TINY)
    ipo = baseline("ipo")  # published, not monotone: a baseline, never a proposal
    assert search.screen([Proposed(ipo, "zoo")], published=True)[0].reason == ""
    reason = search.screen([Proposed(ipo.replace(name="child"), "gp:point")])[0].reason
    assert "non-increasing in the margin" in reason or "increases with logp_w" in reason
    wide = Search.start(ArchiveStore(str(tmp_path / "w.db")), dataclasses.replace(TINY, allow_non_monotone=True))
    assert wide.screen([Proposed(ipo.replace(name="child"), "gp:point")])[0].reason == ""
    assert wide.cfg.space != search.cfg.space
    imitation = Objective.mpo("imitation", g="t", imitation="lam", constants={"lam": 1.0})
    assert search.screen([Proposed(imitation, "gp:point")])[0].reason.startswith("label-blind")
    dpo = baseline("dpo")
    shifted = dpo.replace(name="shifted", g=dpo.g + 1)
    screened = search.screen([Proposed(dpo, "gp:point"), Proposed(shifted, "gp:point")])
    assert [s.reason for s in screened] == ["", "duplicate of dpo in the same generation (same gradients)"]
    assert screened[0].descriptors and screened[0].behaviour and screened[1].descriptors is None


class BetaSweep(Proposer):
    """A proposer written in this test file alone: DPO at a larger beta every generation."""

    name = "test-beta-sweep"

    def initial_state(self):
        return {"asked": 0}

    def ask(self, state, view, rng):
        beta = 0.2 * (state["asked"] + 1)
        dpo = baseline("dpo").replace(name=f"sweep{view.generation}", constants={"beta": beta})
        return Asked([Proposed(dpo, f"{self.name}:beta", [])], {"asked": state["asked"] + 1}, f"beta {beta:g}")

    def tell(self, state, results):
        return {**state, "told": [None if ev is None else ev.fitness for ev in results]}


@pytest.fixture
def beta_sweep():
    register(BetaSweep)
    yield BetaSweep.name
    del REGISTRY[BetaSweep.name]


def test_a_new_proposer_is_one_class_and_one_registry_entry(cache, tmp_path, beta_sweep):
    cfg = dataclasses.replace(TINY, weights={beta_sweep: 1.0}, max_evaluations=2, baselines=("dpo",))
    with ArchiveStore(str(tmp_path / "p.db")) as store:
        with Search.start(store, cfg) as search:
            generations = search.run()
        assert [g.proposer for g in generations] == ["zoo", beta_sweep, beta_sweep]
        assert [g.note for g in generations[1:]] == ["beta 0.2", "beta 0.4"]
        found = [c for c in store.candidates(search.run_id) if c["generation"] > 0]
        assert [c["origin"] for c in found] == [f"{beta_sweep}:beta"] * 2
        assert [c["objective"].constants["beta"] for c in found] == [0.2, 0.4]
        state = store.get_state(search.run_id, f"proposer:{beta_sweep}")
        assert state == {"asked": 2, "told": [found[1]["fitness"]]}, "the state told is committed"
    with pytest.raises(ValueError, match="unknown proposer"):
        dataclasses.replace(TINY, weights={"nobody": 1.0}).validate()


def test_same_seed_gives_the_same_archive(finished, tmp_path):
    store, search, _, _ = finished
    again = Search.start(ArchiveStore(str(tmp_path / "again.db")), TINY)
    again.run()
    assert _trace(again.store, again.run_id) == _trace(store, search.run_id)


def test_a_screening_rung_trains_only_the_best_third_with_full_steps(cache, tmp_path):
    cfg = dataclasses.replace(TINY, first_rung_steps=4)
    search = Search.start(ArchiveStore(str(tmp_path / "screened.db")), cfg)
    search.run()
    store, run = search.store, search.run_id
    found = [c for c in store.candidates(run) if c["status"] in ("evaluated", "screened") and c["origin"] != "zoo"]
    assert search.evaluations() == cfg.max_evaluations == len(found), "a screened-out candidate was judged"
    by_generation: dict[int, list] = {}
    for c in found:
        by_generation.setdefault(c["generation"], []).append(c)
        rows = store.scores(c["id"], fresh=False)
        screen = [r for r in rows if r["rung"] == -1]
        full = [r for r in rows if r["rung"] != -1]
        assert all("steps" not in r for r in full)
        if c["status"] == "screened":
            assert c["fitness"] is None and c["units"] == 0 and "after 4 PO steps" in c["reason"]
            assert full == [] and {r["seed"] for r in screen} == {0, 1} and {r["steps"] for r in screen} == {4}
        else:
            assert np.isclose(c["fitness"], np.mean([label_score(r) for r in full])) and c["units"] == len(full)
            assert {r["seed"] for r in full} in ({0, 1}, {0, 1, 2, 3})
            assert not screen or {r["seed"] for r in screen} == {0, 1}
    for g, members in by_generation.items():
        if len(members) > 1:  # a lone candidate skips the screening rung
            assert sum(c["status"] == "evaluated" for c in members) == -(-len(members) // 3), g
    assert any(c["status"] == "screened" for c in found)
    screened = {c["id"] for c in found if c["status"] == "screened"}
    elites = {e.candidate_id for e in search.qd.elites()} | {e.candidate_id for e in search.hall.front()}
    assert not screened & elites and not screened & {c["id"] for c in search.finalists()}
    racing = store.get_state(run, "racing")
    assert racing["screen_units"] == sum(len([r for r in store.scores(i, fresh=False) if r["rung"] == -1])
                                         for i in (c["id"] for c in found))
    result = CliRunner().invoke(app, ["archive", "list", "--archive", str(tmp_path / "screened.db")])
    assert result.exit_code == 0 and "screened" in result.output, result.output
    again = Search.start(ArchiveStore(str(tmp_path / "again.db")), cfg)
    again.run()
    assert _trace(again.store, again.run_id) == _trace(store, run), "the same seed gives the same archive"


def test_ctrl_c_drops_only_the_generation_in_flight(cache, tmp_path, monkeypatch):
    store = ArchiveStore(str(tmp_path / "a.db"))
    search = Search.start(store, TINY)
    search.step()  # generation 0 (baselines)
    search.step()
    committed = _trace(store, search.run_id)

    def interrupted(*args, **kwargs):  # Ctrl-C while the next generation is being screened
        raise KeyboardInterrupt

    monkeypatch.setattr("discovery.screening.check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search.run()
    assert store.run(search.run_id)["status"] == "interrupted"
    assert _trace(store, search.run_id) == committed


def _wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


TINY_CLI = ["run", "--seed", "0", "--baseline", "dpo", "--baseline", "sft", "--baseline", "ipo", "--baseline", "hinge",
            "--budget-evals", "12", "--budget-minutes", "0", "--seeds", "2", "--episodes", "1", "--steps", "10",
            "--pairs", "64", "--segment-length", "20", "--reference-steps", "100", "--batch", "4", "--top-k", "2",
            "--fresh-seeds", "2", "--max-seeds", "4", "--report-baselines", "default"]


def test_sigkill_mid_generation_loses_nothing_committed_and_resume_continues(cache, tmp_path):
    path = str(tmp_path / "killed.db")
    env = {**os.environ, "MPO_DISCOVER_CACHE": cache, "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "discovery.cli", *TINY_CLI, "--archive", path], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def generations_committed():
        if not os.path.exists(path):
            return 0
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
                return db.execute("select count(distinct generation) from candidates").fetchone()[0]
        except sqlite3.Error:
            return 0

    try:
        assert _wait_for(lambda: generations_committed() >= 2 or proc.poll() is not None, 400), "no progress"
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.5)  # into the next generation's training
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(path) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    store = ArchiveStore(path)
    run = store.latest_run()
    before = _trace(store, run["id"])
    assert run["status"] == "running", "SIGKILL leaves no chance to mark the run"
    last = store.last_generation(run["id"])
    assert last >= 1
    assert {g for g, *_ in before} == set(range(last + 1)), "only whole generations are committed"
    store.close()

    result = CliRunner().invoke(app, [*TINY_CLI, "--archive", path, "--resume"], env=env)
    assert result.exit_code == 0, result.output
    assert "resuming run" in result.output
    assert f"generation {last + 1} " in result.output and " trained, " in result.output  # a line per generation
    store = ArchiveStore(path)
    after = _trace(store, run["id"])
    assert after[:len(before)] == before
    assert store.last_generation(run["id"]) > last
    assert store.run(run["id"])["status"] == "finished"
    assert "final report" in result.output and "oracle" in result.output
    stem = tmp_path / "plots" / f"run{run['id']}"
    report = json.loads((stem.parent / f"{stem.name}-report.json").read_text())
    assert report == store.get_state(run["id"], "final_report")
    assert "| pi_ref |" in (stem.parent / f"{stem.name}-report.md").read_text()
    finalist = next(r for r in report["rows"] if r["kind"] == "finalist")
    shown = CliRunner().invoke(app, ["archive", "show", str(finalist["id"]), "--archive", path, "--no-plot"], env=env)
    assert shown.exit_code == 0 and "final report" in shown.output and "oracle" in shown.output, shown.output
    # killed and resumed, the run is the one an uninterrupted run with the same seed produces
    reference = Search.start(ArchiveStore(str(tmp_path / "reference.db")), SearchConfig.from_dict(run["config"]))
    reference.run()
    assert _trace(reference.store, reference.run_id) == after


def _chat_answer(content: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}


LLM_WEIGHTS = {"gp": 0.0, "es": 0.0, "llm": 1.0}


def _llm_search(tmp_path, handler, name):
    cfg = SearchConfig(**{**TINY.__dict__, "weights": LLM_WEIGHTS, "max_evaluations": 4,
                          "llm": LLMConfig(provider="openai-compatible", base_url="http://llm.test/v1", model="test-model",
                                           max_retries=0)})
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return Search.start(ArchiveStore(str(tmp_path / name)), cfg, llm_http_client=client)


def test_llm_answers_become_candidates_with_their_exchange(cache, tmp_path):
    answer = json.dumps({"objectives": [
        {"shape": "mpo", "g": "softplus(-z) + 0.1*relu(-z)", "rationale": "DPO with a margin term"},
        {"shape": "free", "loss": "__import__('os').system('true')"},
    ]})
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=_chat_answer(answer))

    search = _llm_search(tmp_path, handler, "llm.db")
    search.step()
    g = search.step()
    assert g.proposer == "llm"
    cands = [c for c in search.store.candidates(search.run_id) if c["origin"].startswith("llm:")]
    assert len(cands) == 1 and cands[0]["exchange_id"] is not None
    ex = search.store.exchange(cands[0]["exchange_id"])
    assert ex["answer"] == answer and ex["error"] is None and ex["answer_shape"] == "wrapper"
    prompt = json.dumps(seen[0])
    assert "dpo" in prompt.lower() and "softplus" in prompt
    assert [reason for _, reason in ex["rejections"]] == ["objective 2: loss: only plain function names can be "
                                                          "called (no attributes or expressions) at column 1"]
    groups = search.store.rejection_groups(search.run_id)
    assert any(g.kind == "parse error" and g.sources == ("llm",) for g in groups)

    # the stored exchanges replay the run without any endpoint
    replayed = Search.start(ArchiveStore(str(tmp_path / "replay.db")), search.cfg,
                            llm_replay=search.store.exchanges(search.run_id))
    replayed.step()
    replayed.step()
    assert _trace(replayed.store, replayed.run_id) == _trace(search.store, search.run_id)


def test_a_dead_llm_endpoint_degrades_to_gp_and_is_recorded(cache, tmp_path):
    def handler(request):
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    search = _llm_search(tmp_path, handler, "dead.db")
    search.step()
    g = search.step()
    assert g.proposer == "gp" and "LLM call failed" in g.note
    assert g.evaluated + g.rejected > 0
    exchanges = search.store.exchanges(search.run_id)
    assert len(exchanges) == 1 and exchanges[0]["error"]


def test_run_cli_rejects_bad_config_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "--task", "pendulum", "--archive", str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["run", "--descriptors", "nonsense", "--archive", str(tmp_path / "y.db")])
    assert result.exit_code == 2 and "unknown descriptor" in result.output
    result = CliRunner().invoke(app, ["run", "--steps", "50", "--first-rung-steps", "50", "--archive",
                                      str(tmp_path / "z.db")])
    assert result.exit_code == 2 and "--first-rung-steps: must be 0 (off) or below --steps (50)" in result.output
    assert not (tmp_path / "z.db").exists()


# ------------------------------------------------------------------ resume, budget, feedback (no training)
def test_resume_keeps_the_stored_config_unless_a_resumable_setting_is_changed(tmp_path):
    store = ArchiveStore(str(tmp_path / "r.db"))
    cfg = dataclasses.replace(TINY, max_evaluations=64)
    with Search.start(store, cfg) as search:
        run_id = search.run_id
    with Search.resume(store, run_id) as search:
        assert search.cfg == cfg
    with Search.resume(store, run_id, changes={"max_evaluations": 100, "max_seconds": 60.0}) as search:
        assert (search.cfg.max_evaluations, search.cfg.max_seconds) == (100, 60.0)
    with Search.resume(store, run_id) as search:  # the change is kept
        assert (search.cfg.max_evaluations, search.cfg.max_seconds) == (100, 60.0)
        assert dataclasses.replace(search.cfg, max_evaluations=64, max_seconds=None) == cfg
    with pytest.raises(ValueError, match="--task: a resumed run keeps its stored setting"):
        Search.resume(store, run_id, changes={"fitness.tasks": ["walker2d"]})


def test_cli_resume_without_budget_options_keeps_the_stored_budget_and_says_what_changed(tmp_path, monkeypatch):
    path = str(tmp_path / "a.db")
    with ArchiveStore(path) as store:
        Search.start(store, dataclasses.replace(TINY, max_evaluations=64)).close()
    used = []
    monkeypatch.setattr(cli, "_search", lambda search, archive: used.append(search.cfg))
    result = CliRunner().invoke(app, ["run", "--resume", "--archive", path])
    assert result.exit_code == 0, result.output
    assert (used[-1].max_evaluations, used[-1].max_seconds) == (64, None)
    result = CliRunner().invoke(app, ["run", "--resume", "--archive", path, "--budget-evals", "100",
                                      "--seeds", str(TINY.fitness.seeds)])  # an option equal to the stored one is fine
    assert result.exit_code == 0, result.output
    assert "--budget-evals 64 -> 100" in result.output and used[-1].max_evaluations == 100
    with ArchiveStore(path, readonly=True) as store:
        assert store.get_state(1, "lock") is None, "the run lock is released"


def test_llm_feedback_is_a_few_grouped_reasons_per_proposer(tmp_path):
    store = ArchiveStore(str(tmp_path / "f.db"))
    search = Search.start(store, TINY)
    refused = [(f'{{"g": "eval({i})"}}', f"objective {i}: g: unknown function 'eval'") for i in range(1, 17)]
    refused.append(("...", "objectives 17-500: beyond the limit of 16 objectives per answer"))
    store.add_exchange(search.run_id, proposer="llm/openai", model="m", prompt_version="propose_v1", system="s",
                       prompt="p", answer="[...]", error=None, usage={"total_tokens": 10}, seconds=1.0,
                       rejections=refused)
    for i in range(5):
        store.add_candidate(search.run_id, objective=baseline("sft").replace(name=f"s{i}"), origin="gp:point",
                            generation=1, status="rejected",
                            reason=f"g must be non-increasing in the margin but increases at z={i}, t=0")
        store.add_candidate(search.run_id, objective=baseline("ipo").replace(name=f"i{i}"), origin="gp:point",
                            generation=1, status="rejected", reason=f"duplicate of #{i + 1}")
    lines = prompt_context(search.view()).rejections
    assert lines == [
        "[gp] g increasing: 5 of the last 10; e.g. " + store.candidates(search.run_id)[-2]["formula"]
        + " -> g must be non-increasing in the margin but increases at z=4, t=0",
        "[llm] parse error: 16 of the last 17; e.g. {\"g\": \"eval(16)\"} -> objective 16: g: unknown function 'eval'",
        "[llm] too many proposals: 1 of the last 17; e.g. ... -> objectives 17-500: beyond the limit of 16 "
        "objectives per answer"]
    search.close()


def test_a_time_budget_spent_by_generation_0_still_runs_one_search_generation(cache, tmp_path):
    cfg = dataclasses.replace(TINY, max_evaluations=None, max_seconds=1e-3, baselines=("dpo",))
    with ArchiveStore(tmp_path / "a.db") as store:
        with Search.start(store, cfg) as search:
            generations = search.run()
        assert [g.index for g in generations] == [0, 1]
        assert {c["generation"] for c in store.candidates(search.run_id)} == {0, 1}


def test_front_door_runs_a_search_and_exports_a_loss(cache, tmp_path):
    import discovery
    from discovery import api

    cfg = dataclasses.replace(TINY, max_evaluations=2, baselines=("dpo",), weights={"gp": 1.0})
    out = api.search(str(tmp_path / "api.db"), cfg, final_report=False)
    assert out["generations"][0].proposer == "zoo" and out["report"] is None
    assert {g.proposer for g in out["generations"][1:]} == {"gp"}
    with ArchiveStore(str(tmp_path / "api.db"), readonly=True) as store:
        assert store.best_baseline(out["run_id"])["name"] == "dpo"
        assert store.best_found(out["run_id"])["origin"].startswith("gp:")
    assert "import torch" in discovery.export("dpo", "torch")
    with pytest.raises(ValueError, match="unknown bench preset"):
        discovery.bench("huge")
